"""Every operator class of the computation graph, in one place.

The tables the rest of the system needs (which class an op type names, which TASO operator type
reads as which class, the cost families, the parallelisation catalogue) are derived from this
list and from each class's traits (`Operator.elementwise`, `taso_names`, `cost_family`,
`examples`, ...), never kept by hand beside it. The order is the catalogue's: it fixes the order
of the parallelisation rules read from it. Importing this module imports every operator module
(numpy and scipy only, no legate).
"""

from __future__ import annotations

from functools import cache
from typing import Mapping

from .activation import Activation
from .attention import MultiHeadAttention
from .base import Operator, TasoName
from .batch_norm import BatchNorm
from .broadcast import Binary, Where
from .concat import Concat
from .conv2d import Conv2D
from .conv2d_transpose import Conv2DTranspose
from .convert import Cast, OneHot
from .dropout import Dropout
from .elementwise import Add, Multiply, Subtract
from .embedding import Embedding
from .global_max_pool import GlobalMaxPool2D
from .layer_norm import LayerNorm
from .linear import Linear
from .matmul import BatchMatmul
from .one_d import Conv1D, GlobalAvgPool1D, GlobalMaxPool1D, Pool1D
from .padding import ZeroPad2D
from .permute import Identity, Permute
from .pooling import GlobalAvgPool2D, Pool2D
from .rectifier import ReLU
from .rescale import Rescale
from .reduce import Reduce
from .reshape import Flatten, Reshape
from .slice import Slice
from .softmax import Softmax
from .source import Parameter, Range
from .split import Split
from .unary import Unary
from .upsampling import UpSampling2D

OPERATORS: tuple[type[Operator], ...] = (
    Linear, Conv2D, Activation, Add, Subtract, Multiply, Concat, Split, Permute, Identity,
    Reshape, Flatten, Dropout, Softmax, LayerNorm, BatchNorm, Embedding, MultiHeadAttention,
    BatchMatmul, Pool2D, GlobalAvgPool2D, ZeroPad2D, GlobalMaxPool2D, Conv1D, Pool1D,
    GlobalAvgPool1D, GlobalMaxPool1D, ReLU, Rescale, UpSampling2D, Conv2DTranspose,
    # keras.ops and Python operators in subclassed layers' call() (keras/layers/tracing.py)
    Binary, Where, Unary, Reduce, Slice, Cast, OneHot, Parameter, Range)


@cache
def by_op_type() -> Mapping[str, type[Operator]]:
    """The class of each op type (what a substitution's `New("linear", ...)` builds)."""
    return {cls.op_type: cls for cls in OPERATORS}


@cache
def by_taso_type() -> Mapping[str, tuple[type[Operator], TasoName]]:
    """The class each TASO / FlexFlow operator type reads as, and what that name pins on it."""
    return {name.type: (cls, name) for cls in OPERATORS for name in cls.taso_names}


def cost_families() -> frozenset[str]:
    """The cost families the operators declare (what a device's fitted tables may name)."""
    return frozenset(cls.cost_family for cls in OPERATORS)
