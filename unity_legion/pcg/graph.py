"""The computation graph: operators and the tensors between them, before any parallelism."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from unity_legion.operators.base import Operator, OperatorError, WeightSpec
from unity_legion.types import TensorShape


class GraphError(ValueError):
    """The graph cannot be built as asked (a shape error names the node)."""


@dataclass(frozen=True)
class Tensor:
    id: int
    shape: TensorShape
    producer: int | None      # node id; None for a graph input
    index: int                # which output of the producer
    name: str


@dataclass(frozen=True)
class Node:
    id: int
    name: str
    op: Operator
    inputs: tuple[int, ...]   # tensor ids
    outputs: tuple[int, ...]  # tensor ids
    weights: tuple[WeightSpec, ...]


class ComputationGraph:
    """Append-only: a node can only consume tensors that exist, so insertion order is topological."""

    def __init__(self) -> None:
        self.tensors: dict[int, Tensor] = {}
        self.nodes: list[Node] = []
        self.inputs: list[int] = []
        self._outputs: tuple[int, ...] | None = None   # declared (set_outputs); None: the sinks
        self._names: set[str] = set()

    # --- building -----------------------------------------------------------------------------
    def add_input(self, shape: TensorShape, name: str) -> int:
        name = self._unique(name)
        tid = len(self.tensors)
        self.tensors[tid] = Tensor(tid, shape, None, 0, name)
        self.inputs.append(tid)
        return tid

    def add_node(self, op: Operator, inputs: Sequence[int], name: str) -> tuple[int, ...]:
        for t in inputs:
            if t not in self.tensors:
                raise GraphError(f"node {name!r}: input tensor {t} is not in this graph")
        shapes = [self.tensors[t].shape for t in inputs]
        try:
            outs = op.infer_outputs(shapes)
            weights = op.weights(shapes)
        except OperatorError as exc:
            raise GraphError(f"layer {name!r} ({op.op_type}): {exc}") from None
        name = self._unique(name)
        nid = len(self.nodes)
        out_ids = []
        for i, s in enumerate(outs):
            tid = len(self.tensors)
            self.tensors[tid] = Tensor(tid, s, nid, i, f"{name}:{i}")
            out_ids.append(tid)
        self.nodes.append(Node(nid, name, op, tuple(inputs), tuple(out_ids), tuple(weights)))
        return tuple(out_ids)

    def set_outputs(self, outputs: Iterable[int]) -> None:
        """Declare the graph's outputs (a model's, in its order)."""
        outs = tuple(outputs)
        for t in outs:
            if t not in self.tensors:
                raise GraphError(f"output tensor {t} is not in this graph")
        self._outputs = outs

    @property
    def outputs(self) -> list[int]:
        """The output tensors: those declared (set_outputs), else the tensors nothing consumes,
        in node order."""
        if self._outputs is not None:
            return list(self._outputs)
        return [t for n in self.nodes for t in n.outputs if not self.consumers(t)]

    def _unique(self, name: str) -> str:
        if name in self._names:
            raise GraphError(f"the name {name!r} is used twice in one model")
        self._names.add(name)
        return name

    # --- queries ------------------------------------------------------------------------------
    def input_shapes(self, node: Node) -> list[TensorShape]:
        return [self.tensors[t].shape for t in node.inputs]

    def consumers(self, tensor: int) -> list[Node]:
        return [n for n in self.nodes if tensor in n.inputs]

    def subgraph_nodes(self, outputs: Iterable[int]) -> list[Node]:
        """Nodes needed to compute `outputs`, in topological order."""
        need: set[int] = set()
        stack = list(outputs)
        seen: set[int] = set()
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            prod_ = self.tensors[t].producer
            if prod_ is not None:
                need.add(prod_)
                stack.extend(self.nodes[prod_].inputs)
        return [n for n in self.nodes if n.id in need]

    def bind_batch(self, batch: int) -> dict[int, TensorShape]:
        """Concrete shapes of every tensor for one batch size (re-running shape inference)."""
        shapes: dict[int, TensorShape] = {t: self.tensors[t].shape.with_batch(batch) for t in self.inputs}
        for n in self.nodes:
            outs = n.op.infer_outputs([shapes[t] for t in n.inputs])
            shapes.update(zip(n.outputs, outs))
        return shapes

    def num_params(self) -> int:
        return sum(wt.shape.num_elements() for n in self.nodes for wt in n.weights)
