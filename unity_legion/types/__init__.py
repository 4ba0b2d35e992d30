"""The plain data every layer shares: tensor shapes, parallel tensor shapes, machine views and
operator configurations.

This is the bottom layer of the package: it imports nothing of ours (numpy only), so operators,
the graph, the substitutions, the cost model, the search, the strategies, the executor and the
mappers can all import it without reaching up or around. Pure Python: never imports legate.

    tensor           DataType, TensorShape: a tensor of the computation graph, no parallelism
    parallel_tensor  ParallelTensorShape (shard degree per dim, sum and copy replicas), tiling
    machine_view     MachineView: which devices a launch's points run on
    op_config        OpConfig: one operator's degree per launch axis and its machine view
"""

from unity_legion.types.machine_view import MachineView
from unity_legion.types.op_config import OpConfig
from unity_legion.types.parallel_tensor import (ParallelShapeError, ParallelTensorShape, ReplicaDims,
                                               ShardDim, effective_degree)
from unity_legion.types.tensor import DataType, Dim, TensorShape

__all__ = ["DataType", "Dim", "MachineView", "OpConfig", "ParallelShapeError",
           "ParallelTensorShape", "ReplicaDims", "ShardDim", "TensorShape", "effective_degree"]
