"""1-D convolution and pooling (Keras Conv1D, MaxPooling1D, AveragePooling1D,
GlobalAveragePooling1D, GlobalMaxPooling1D) as their 2-D operators on one-row images.

A (batch, length, channels) tensor is a (batch, 1, length, channels) image (channels_first:
(batch, channels, length) is (batch, channels, 1, length)), and a Conv1D kernel
(k, channels / groups, filters) is a (1, k, channels / groups, filters) one. Each 1-D operator
names its 2-D operator (`plane`) and asks it for everything: shapes, weights, flops, parallel
dims and launches. Its launches are the 2-D operator's with the row dim dropped from every image
store's split (and the first dim from the kernel's), the "width" axis renamed "length", run by
kernels that see their rank-3 pieces as one-row images through zero-copy views (`lifted`). So a
length split's halo reads, "same" and "causal" padding, strides, dilation and groups are the
2-D code's, defined once (a one-row image offers no height axis).

Parallel forms: Conv1D "sample", "out" (PARAMETER), "in" (REDUCTION: groups == 1 and no fused
activation), "length" (ATTRIBUTE, the output's positions; each point reads its tile's window
plus the halo); pooling "sample", "channels", "length"; global pooling "sample", "channels".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from . import activation as act
from .base import (Arg, Kernel, Launch, Operator, OperatorError, ParallelDim, PieceOrigin, RefKind,
                   SavedSpec, TensorShape, WeightSpec)
from .conv2d import HEIGHT, WIDTH, Conv2D
from .global_max_pool import GlobalMaxPool2D
from .pooling import GlobalAvgPool2D, Pool2D
from .spatial import Windowed, check_data_format

LENGTH = "length"  # launch axis: the output's positions along the length
_KERNEL_PARAMS = ("kernel", "dkernel")  # kernel parameters that hold a convolution kernel


def _rename(axis: str | None) -> str | None:
    return LENGTH if axis == WIDTH else axis


def _row_dim(channels_first: bool) -> int:
    """Where a one-row image has its row dim (of extent 1)."""
    return 2 if channels_first else 1


# ---------------------------------------------------------------------------------------------
# Kernels: the 2-D ones on one-row views of the pieces
# ---------------------------------------------------------------------------------------------

def _lift_piece(name: str, a: np.ndarray, channels_first: bool) -> tuple[np.ndarray, int | None]:
    """A rank-3 piece as its rank-4 view and where the inserted dim is (None: left as it is)."""
    if name in _KERNEL_PARAMS:
        return a[None], 0
    if a.ndim == 3:
        d = _row_dim(channels_first)
        return np.expand_dims(a, d), d
    return a, None


def _lift_origin(origin: Any, first: str, at: dict[str, int | None]) -> Any:
    def up(t: Sequence[int], d: int | None) -> tuple[int, ...]:
        t = tuple(int(v) for v in t)
        return t if d is None else t[:d] + (0,) + t[d:]

    of = getattr(origin, "of", None)
    if of is None:
        return up(origin, at[first])
    return PieceOrigin(up(origin, at[first]), {n: up(o, at.get(n)) for n, o in of.items()})


@lru_cache(maxsize=None)
def lifted(k: Kernel) -> Kernel:
    """2-D kernel `k` run on rank-3 pieces (and rank-3 convolution kernels) viewed as one-row
    images; every 2-D spatial kernel takes `channels_first`, which says where the row goes."""
    first = k.stores[0][0]

    def run(**kw: Any) -> None:
        cf = bool(kw.get("channels_first", False))
        at: dict[str, int | None] = {}
        for name, _role in k.stores:
            kw[name], at[name] = _lift_piece(name, kw[name], cf)
        if k.wants_origin:
            kw["origin"] = _lift_origin(kw["origin"], first, at)
        k.fn(**kw)

    run.__name__ = run.__qualname__ = k.fn.__name__
    return Kernel(f"one_d.{k.name}", run, k.stores, k.scalars, k.wants_origin)


# ---------------------------------------------------------------------------------------------
# The operators
# ---------------------------------------------------------------------------------------------

def single(value: Any, what: str, op: str, minimum: int = 1) -> int:
    """An int or a 1-sequence of ints (Keras' forms of a 1-D size), at least `minimum`."""
    v = value
    if isinstance(v, (tuple, list)) and len(v) == 1:
        v = v[0]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise OperatorError(f"{op}: {what} must be a positive integer or a tuple of 1 positive "
                            f"integer, got {value!r}")
    return int(v)


class OneD(Operator):
    """Base of the 1-D operators: frozen dataclasses with a `data_format` that name their 2-D
    operator (`plane`); everything else is derived here."""

    data_format: str

    def plane(self) -> Operator:
        raise NotImplementedError

    def _adopt_plane(self) -> None:
        """Check the 2-D operator this one runs as and take its normalised padding; its errors
        name this operator."""
        try:
            plane = self.plane()
        except OperatorError as exc:
            raise OperatorError(f"{self.op_type}: {str(exc).split(': ', 1)[-1]}") from None
        object.__setattr__(self, "padding", plane.padding)

    @property
    def channels_first(self) -> bool:
        return self.data_format == "channels_first"

    def _up(self, s: TensorShape) -> TensorShape:
        if s.rank != 3:
            dims = "channels, length" if self.channels_first else "length, channels"
            raise OperatorError(f"{self.op_type}: expects a rank-3 input (batch, {dims}), got {s}")
        d = _row_dim(self.channels_first)
        return s.with_dims(s.dims[:d] + (1,) + s.dims[d:])

    def _down(self, s: TensorShape) -> TensorShape:
        if s.rank != 4:
            return s
        d = _row_dim(self.channels_first)
        return s.with_dims(s.dims[:d] + s.dims[d + 1:])

    def _ask(self, rule: Callable[..., Any], inputs: Sequence[TensorShape], *args: Any) -> Any:
        """rule(one-row inputs, *args), its errors reworded for the 1-D operator."""
        self.check_inputs(inputs)
        up = [self._up(s) for s in inputs]
        try:
            return rule(up, *args)
        except OperatorError as exc:
            text = str(exc).split(": ", 1)[-1].replace(" width", " size")
            for lifted_shape, shape in zip(up, inputs):  # name the shapes the user gave
                text = text.replace(str(lifted_shape), str(shape))
            raise OperatorError(f"{self.op_type}: {text}") from None

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        return tuple(self._down(o) for o in self._ask(self.plane().infer_outputs, inputs))

    def weights(self, inputs: Sequence[TensorShape]) -> tuple[WeightSpec, ...]:
        out = []
        for spec in self._ask(self.plane().weights, inputs):
            if spec.name == "kernel":  # (1, k, C / groups, filters) -> (k, C / groups, filters)
                spec = dataclasses.replace(spec, shape=spec.shape.with_dims(spec.shape.dims[1:]))
            out.append(spec)
        return tuple(out)

    def saved(self, inputs: Sequence[TensorShape]) -> tuple[SavedSpec, ...]:
        return tuple(dataclasses.replace(s, shape=self._down(s.shape))
                     for s in self._ask(self.plane().saved, inputs))

    def flops(self, inputs: Sequence[TensorShape]) -> int:
        return self._ask(self.plane().flops, inputs)

    def bytes_accessed(self, inputs: Sequence[TensorShape]) -> int:
        return self._ask(self.plane().bytes_accessed, inputs)

    def parallel_dims(self, inputs: Sequence[TensorShape]) -> tuple[ParallelDim, ...]:
        return tuple(ParallelDim(_rename(pd.axis), pd.kind, pd.size)
                     for pd in self._ask(self.plane().parallel_dims, inputs) if pd.axis != HEIGHT)

    def _arg(self, arg: Arg) -> Arg:
        """A 2-D launch's argument over the rank-3 store: the row dim (the kernel's first dim)
        dropped from its split and windows, width renamed length."""
        row = _row_dim(self.channels_first)
        split = arg.split
        if arg.ref.kind in (RefKind.WEIGHT, RefKind.GRAD_WEIGHT) and arg.ref.key == "kernel":
            split = split[1:]
        elif len(split) == 4:
            split = split[:row] + split[row + 1:]
        split = tuple(_rename(a) for a in split)
        if isinstance(arg, Windowed):
            windows = tuple((d - (d > row), _rename(axis), reach)
                            for d, axis, reach in arg.windows if d != row)
            return Windowed(arg.ref, split, windows)
        return Arg(arg.ref, split)

    def _launches(self, launches: Sequence[Launch]) -> list[Launch]:
        return [Launch(lifted(la.kernel), {n: self._arg(a) for n, a in la.args.items()},
                       dict(la.scalars)) for la in launches]

    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        return self._launches(self._ask(self.plane().forward, inputs, training))

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        return self._launches(self._ask(self.plane().backward, inputs, needs_input_grad))


@dataclass(frozen=True)
class Conv1D(OneD):
    """Keras Conv1D: kernel (kernel_size, C / groups, filters), bias (filters,); padding
    "valid", "same" (TF's rule) or "causal" ((kernel_size - 1) * dilation_rate before)."""

    filters: int
    kernel_size: Any
    strides: Any = 1
    padding: str = "valid"
    data_format: str = "channels_last"
    dilation_rate: Any = 1
    groups: int = 1
    activation: str = "linear"
    use_bias: bool = True
    kernel_initializer: str = "glorot_uniform"
    bias_initializer: str = "zeros"

    op_type = "conv1d"
    num_inputs = 1
    cost_family = Conv2D.cost_family      # the same kernels
    flops_efficiency = Conv2D.flops_efficiency

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls(4, 3), (TensorShape((2, 8, 3)),)),
        )

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("kernel_size", single(self.kernel_size, "kernel_size", self.op_type))
        set_("strides", single(self.strides, "strides", self.op_type))
        set_("dilation_rate", single(self.dilation_rate, "dilation_rate", self.op_type))
        set_("data_format", check_data_format(self.data_format, self.op_type))
        set_("activation", act.check_activation(self.activation))
        self._adopt_plane()

    @cached_property
    def _plane(self) -> Conv2D:
        return Conv2D(self.filters, (1, self.kernel_size), (1, self.strides), self.padding,
                      self.data_format, (1, self.dilation_rate), self.groups, self.activation,
                      self.use_bias, self.kernel_initializer, self.bias_initializer)

    def plane(self) -> Conv2D:
        return self._plane


@dataclass(frozen=True)
class Pool1D(OneD):
    """Keras MaxPooling1D / AveragePooling1D: mode "max" or "avg"; strides None means
    pool_size."""

    mode: str
    pool_size: Any = 2
    strides: Any = None
    padding: str = "valid"
    data_format: str = "channels_last"

    op_type = "pool1d"
    num_inputs = 1
    cost_family = Pool2D.cost_family

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls("max"), (TensorShape((2, 8, 3)),)),
        )

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        if self.mode not in ("max", "avg"):
            raise OperatorError(f"{self.op_type}: mode must be 'max' or 'avg', got {self.mode!r}")
        set_("pool_size", single(self.pool_size, "pool_size", self.op_type))
        set_("strides", self.pool_size if self.strides is None
             else single(self.strides, "strides", self.op_type))
        set_("data_format", check_data_format(self.data_format, self.op_type))
        self._adopt_plane()

    @cached_property
    def _plane(self) -> Pool2D:
        return Pool2D(self.mode, (1, self.pool_size), (1, self.strides), self.padding,
                      self.data_format)

    def plane(self) -> Pool2D:
        return self._plane


@dataclass(frozen=True)
class _GlobalPool1D(OneD):
    data_format: str = "channels_last"
    keepdims: bool = False

    num_inputs = 1
    planes: ClassVar[type[Operator]]

    @classmethod
    def examples(cls) -> tuple[tuple[Operator, tuple[TensorShape, ...]], ...]:
        return (
            (cls(), (TensorShape((2, 8, 3)),)),
        )

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_format", check_data_format(self.data_format, self.op_type))
        if not isinstance(self.keepdims, (bool, np.bool_)):
            raise OperatorError(f"{self.op_type}: keepdims must be a bool, got {self.keepdims!r}")

    def plane(self) -> Operator:
        return self.planes(self.data_format, self.keepdims)


@dataclass(frozen=True)
class GlobalAvgPool1D(_GlobalPool1D):
    """Keras GlobalAveragePooling1D: the mean over the length, (batch, C) or with keepdims
    (batch, 1, C) / (batch, C, 1)."""

    op_type = "global_avg_pool1d"
    cost_family = GlobalAvgPool2D.cost_family
    planes = GlobalAvgPool2D


@dataclass(frozen=True)
class GlobalMaxPool1D(_GlobalPool1D):
    """Keras GlobalMaxPooling1D: the maximum over the length (ties share the gradient)."""

    op_type = "global_max_pool1d"
    cost_family = GlobalMaxPool2D.cost_family
    planes = GlobalMaxPool2D
