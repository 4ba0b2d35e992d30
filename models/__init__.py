"""The model zoo: one function per model, each returning a unity_legion.keras.Model.

The seven networks of the Unity evaluation at full paper size by default (keyword arguments scale
them down), plus the demo's plain MLP; `ZOO` indexes them by name (see `zoo.py`).
"""

from unity_legion.models.bert import bert_large
from unity_legion.models.candle_uno import candle_uno
from unity_legion.models.dlrm import dlrm
from unity_legion.models.inception import inception_v3
from unity_legion.models.mlp import mlp
from unity_legion.models.mlp_unify import mlp_unify
from unity_legion.models.resnext import resnext50
from unity_legion.models.xdl import xdl
from unity_legion.models.zoo import ZOO, ZooEntry

__all__ = ["ZOO", "ZooEntry", "bert_large", "candle_uno", "dlrm", "inception_v3", "mlp",
           "mlp_unify", "resnext50", "xdl"]
