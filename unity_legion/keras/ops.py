"""keras.ops on symbolic tensors: each call adds a node of an operator of `operators/` to the
graph being built (keras/layers/tracing.py), so it is parallelised and searched like a layer.

Axes are Keras': axis 0 of a batched tensor is the batch (a reduction, transpose or slice across
it cannot be traced, there is one graph per batch piece); a batch-free tensor (a weight, an
arange) has no batch dim in its visible shape. Python numbers mix in as constants; a numpy array
does not (make it a weight with add_weight). `shape` returns Python ints (None for the batch),
as Keras' ops.shape does on symbolic tensors, so sizes may drive Python code; values may not.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from unity_legion.keras.layers import tracing
from unity_legion.keras.layers.layer import KerasTensor
from unity_legion.keras.layers.tracing import LayerVariable, UnsupportedOpError, apply, fail
from unity_legion.operators.activation import Activation
from unity_legion.operators.broadcast import Binary, Where
from unity_legion.operators.concat import Concat
from unity_legion.operators.convert import Cast, OneHot
from unity_legion.operators.elementwise import Add, Multiply, Subtract
from unity_legion.operators.matmul import BatchMatmul
from unity_legion.operators.permute import Permute
from unity_legion.operators.reduce import Reduce
from unity_legion.operators.reshape import Reshape
from unity_legion.operators.slice import Slice
from unity_legion.operators.softmax import Softmax
from unity_legion.operators.source import Range
from unity_legion.operators.unary import Unary
from unity_legion.types import DataType

__all__ = ["abs", "add", "arange", "cast", "concatenate", "divide", "equal", "exp", "expand_dims",
           "gelu", "greater", "greater_equal", "less", "less_equal", "log", "matmul", "max",
           "maximum", "mean", "minimum", "multiply", "negative", "not_equal", "one_hot",
           "power", "relu", "reshape", "shape", "sigmoid", "softmax", "sqrt", "square",
           "squeeze", "stack", "subtract", "sum", "tanh", "transpose", "where"]

# the builtins this module's abs / max / sum shadow
_builtin_max, _builtin_sum = max, sum


# ---------------------------------------------------------------------------------------------
# operands
# ---------------------------------------------------------------------------------------------

def _tensor(v: Any, op: str) -> KerasTensor:
    if isinstance(v, LayerVariable):
        return tracing.tensor_of_variable(v)
    if isinstance(v, KerasTensor):
        return v
    if isinstance(v, np.ndarray) or type(v).__module__.startswith("torch"):
        raise fail(f"keras.ops.{op} with a {type(v).__name__} constant",
                   "array constants are not part of the graph",
                   "a weight (self.add_weight(..., trainable=False)) or a Python number")
    raise fail(f"keras.ops.{op} on {type(v).__name__}", "it is not a symbolic tensor",
               "layers' outputs, keras.Input tensors or weights")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _free(t: KerasTensor) -> bool:
    return bool(getattr(t, "_batch_free", False))


def _user_rank(t: KerasTensor) -> int:
    return len(t.shape)


def _graph_axis(t: KerasTensor, axis: int, op: str) -> int:
    """A Keras axis of `t` as an axis of its graph tensor (batch first)."""
    rank = _user_rank(t)
    if not -rank <= axis < rank:
        raise fail(f"keras.ops.{op} with axis={axis}", f"the tensor has rank {rank} (shape "
                   f"{t.shape})", "an axis within the tensor's rank")
    if _free(t):
        return (axis % rank) + 1
    if axis % rank == 0:
        raise fail(f"keras.ops.{op} along axis 0 (the batch)", "the batch is split across the "
                   "machine; each piece is computed on its own", "an axis other than the batch")
    return axis % rank


def _same_side(ts: Sequence[KerasTensor], op: str) -> None:
    """A batched and a batch-free operand broadcast only if the batch-free one has fewer dims
    (so the batch lines up with nothing of it)."""
    batched = [t for t in ts if not _free(t)]
    free = [t for t in ts if _free(t)]
    if batched and free:
        low = min(_user_rank(t) for t in batched)
        for t in free:
            if _user_rank(t) >= low:
                raise fail(f"keras.ops.{op} of shapes {batched[0].shape} and {t.shape}",
                           "the batch-free operand would line up with the batch axis",
                           "an operand with fewer axes than the batched one")


def _promoted(ts: Sequence[KerasTensor]) -> list[KerasTensor]:
    """The operands cast to their common dtype by Keras 3's type promotion
    (keras.backend.result_type) where a half type meets another float: bfloat16 with float16
    gives float32, a half type with float32 or float64 gives that (a keras.ops.cast node per
    operand that changes). Other mixes are left to the operator (float32 with float64, ints
    with floats: its "different dtypes" error, as before policies existed)."""
    dts = {t.tensor_shape.dtype for t in ts}
    if len(dts) < 2 or not all(d.is_float for d in dts) or not any(d.is_half for d in dts):
        return list(ts)
    target = DataType.FLOAT64 if DataType.FLOAT64 in dts else DataType.FLOAT32
    return [tracing._cast_floats(t, target) for t in ts]


def _named(fn: str, op: Callable[..., Any]) -> Callable[..., Any]:
    """The public keras.ops function `fn` made by one of the shared bodies below."""
    op.__name__ = op.__qualname__ = fn
    return op


def _two_operands(via: Callable[[str, Any, Any], Any], fn: str) -> Callable[[Any, Any], Any]:
    """keras.ops.<fn>(x1, x2) as via(fn, x1, x2) (the arithmetic or the comparisons)."""
    def op(x1: Any, x2: Any) -> Any:
        return via(fn, x1, x2)
    return _named(fn, op)


def _one_operand(via: Callable[[str, Any], Any], fn: str) -> Callable[[Any], Any]:
    """keras.ops.<fn>(x) as via(fn, x) (the unary functions or the activations)."""
    def op(x: Any) -> Any:
        return via(fn, x)
    return _named(fn, op)


# ---------------------------------------------------------------------------------------------
# elementwise arithmetic
# ---------------------------------------------------------------------------------------------

_MERGE = {"add": Add, "subtract": Subtract, "multiply": Multiply}


def _binary(fn: str, a: Any, b: Any) -> KerasTensor:
    if _is_number(a) and _is_number(b):
        return getattr(np, fn)(a, b)
    if _is_number(b):
        return _with_constant(fn, _tensor(a, fn), float(b), reflected=False)
    if _is_number(a):
        return _with_constant(fn, _tensor(b, fn), float(a), reflected=True)
    ta, tb = _promoted([_tensor(a, fn), _tensor(b, fn)])
    _same_side([ta, tb], fn)
    # equal graph shapes: elementwise as stored (a batch-free operand then has one axis less,
    # so it lines up with the batched one's non-batch axes, as the broadcast it stands for)
    same = ta.tensor_shape.dims == tb.tensor_shape.dims
    if fn in _MERGE and same and ta.tensor_shape.dtype.is_float and \
            ta.tensor_shape.dtype == tb.tensor_shape.dtype:
        return apply(_MERGE[fn](), fn, [ta, tb])    # the merge layers' operators
    return apply(Binary(fn), fn, [ta, tb])


def _with_constant(fn: str, t: KerasTensor, c: float, reflected: bool) -> KerasTensor:
    table = {("add", False): ("shift", c), ("add", True): ("shift", c),
             ("subtract", False): ("shift", -c), ("subtract", True): ("rsub", c),
             ("multiply", False): ("scale", c), ("multiply", True): ("scale", c),
             ("divide", True): ("rdiv", c)}
    if (fn, reflected) == ("divide", False):
        if c == 0:
            raise fail("division by the constant 0", "it gives no finite values",
                       "a nonzero divisor")
        return apply(Unary("scale", 1.0 / c), "true_divide", [t])
    if (fn, reflected) in table:
        name, value = table[(fn, reflected)]
        return apply(Unary(name, value), fn, [t])
    raise fail(f"keras.ops.{fn} of a tensor and the number {c}", "only + - * / and ** take a "
               "number", f"keras.ops.{fn} of two tensors")


add = _two_operands(_binary, "add")
subtract = _two_operands(_binary, "subtract")
multiply = _two_operands(_binary, "multiply")
divide = _two_operands(_binary, "divide")
true_divide = divide
maximum = _two_operands(_binary, "maximum")
minimum = _two_operands(_binary, "minimum")


def _compare(fn: str, x1: Any, x2: Any) -> Any:
    if _is_number(x2) and not _is_number(x1):
        return apply(Unary(fn, float(x2)), fn, [_tensor(x1, fn)])
    if _is_number(x1) and not _is_number(x2):
        flipped = {"greater": "less", "less": "greater", "greater_equal": "less_equal",
                   "less_equal": "greater_equal"}.get(fn, fn)
        return apply(Unary(flipped, float(x1)), fn, [_tensor(x2, fn)])
    return _binary(fn, x1, x2)


greater = _two_operands(_compare, "greater")
greater_equal = _two_operands(_compare, "greater_equal")
less = _two_operands(_compare, "less")
less_equal = _two_operands(_compare, "less_equal")
equal = _two_operands(_compare, "equal")
not_equal = _two_operands(_compare, "not_equal")


def power(x1: Any, x2: Any) -> Any:
    if _is_number(x2):
        return apply(Unary("power", float(x2)), "power", [_tensor(x1, "power")])
    raise fail("keras.ops.power with a tensor exponent", "only a number exponent is supported",
               "a Python number as the exponent")


def _unary(fn: str, x: Any) -> KerasTensor:
    return apply(Unary(fn), fn, [_tensor(x, fn)])


negative = _one_operand(_unary, "negative")
abs = _one_operand(_unary, "abs")   # noqa: A001 (keras.ops.abs)
absolute = abs
exp = _one_operand(_unary, "exp")
log = _one_operand(_unary, "log")
sqrt = _one_operand(_unary, "sqrt")
square = _one_operand(_unary, "square")


def where(condition: Any, x1: Any, x2: Any) -> Any:
    c, a, b = (_tensor(v, "where") for v in (condition, x1, x2))
    a, b = _promoted([a, b])
    _same_side([c, a, b], "where")
    return apply(Where(), "where", [c, a, b])


def cast(x: Any, dtype: Any) -> Any:
    t = _tensor(x, "cast")
    dt = DataType.of(dtype)
    if dt == t.tensor_shape.dtype:
        return t
    return apply(Cast(dt), "cast", [t])


# ---------------------------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------------------------

def _activation(fn: str, x: Any) -> KerasTensor:
    return apply(Activation(fn), fn, [_tensor(x, fn)])


relu = _one_operand(_activation, "relu")
tanh = _one_operand(_activation, "tanh")
sigmoid = _one_operand(_activation, "sigmoid")


def gelu(x: Any, approximate: bool = True) -> Any:
    """Keras' default is the tanh approximation; approximate=False is the exact (erf) form."""
    if not approximate:
        return _activation("gelu", x)
    t = _tensor(x, "gelu")
    inner = multiply(add(t, multiply(power(t, 3), 0.044715)), math.sqrt(2.0 / math.pi))
    return multiply(multiply(t, 0.5), add(tanh(inner), 1.0))


def softmax(x: Any, axis: int = -1) -> Any:
    t = _tensor(x, "softmax")
    return apply(Softmax((_graph_axis(t, axis, "softmax"),)), "softmax", [t])


# ---------------------------------------------------------------------------------------------
# reductions
# ---------------------------------------------------------------------------------------------

def _reduce(fn: str, x: Any, axis: Any, keepdims: bool) -> KerasTensor:
    t = _tensor(x, fn)
    if axis is None:
        if not _free(t):
            raise fail(f"keras.ops.{fn}(x) over every axis", "that includes the batch axis",
                       f"keras.ops.{fn}(x, axis=...) over the non-batch axes")
        axes = tuple(range(_user_rank(t)))
    else:
        axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return apply(Reduce(fn, tuple(_graph_axis(t, a, fn) for a in axes), keepdims), fn, [t])


def mean(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
    return _reduce("mean", x, axis, keepdims)


def sum(x: Any, axis: Any = None, keepdims: bool = False) -> Any:   # noqa: A001
    return _reduce("sum", x, axis, keepdims)


def max(x: Any, axis: Any = None, keepdims: bool = False, initial: Any = None) -> Any:  # noqa: A001
    if initial is not None:
        raise fail("keras.ops.max with initial=", "it is not supported", "maximum() afterwards")
    return _reduce("max", x, axis, keepdims)


# ---------------------------------------------------------------------------------------------
# shapes and layout
# ---------------------------------------------------------------------------------------------

def shape(x: Any) -> tuple[int | None, ...]:
    if isinstance(x, (KerasTensor, LayerVariable)):
        return tuple(x.shape)
    return tuple(np.shape(x))


def _rest(t: KerasTensor) -> tuple[int, ...]:
    """The graph tensor's dims after the batch."""
    return tuple(t.tensor_shape.dims[1:])


def reshape(x: Any, newshape: Sequence[int | None]) -> Any:
    t = _tensor(x, "reshape")
    dims = tuple(newshape)
    if not _free(t):
        if not dims or dims[0] not in (-1, None):
            raise fail(f"keras.ops.reshape to {dims}", "its first dim would mix samples of the "
                       "batch", "a shape whose first entry is -1 or None (the batch)")
        dims = dims[1:]
    if any(d is None for d in dims):
        raise fail(f"keras.ops.reshape to {tuple(newshape)}", "only the batch may be None",
                   "sizes or a single -1")
    if dims == _rest(t):
        return t
    return apply(Reshape(tuple(int(d) for d in dims)), "reshape", [t])


def transpose(x: Any, axes: Sequence[int] | None = None) -> Any:
    t = _tensor(x, "transpose")
    rank = _user_rank(t)
    perm = tuple(range(rank))[::-1] if axes is None else tuple(int(a) % rank for a in axes)
    if sorted(perm) != list(range(rank)):
        raise fail(f"keras.ops.transpose with axes={axes}", "they are not a permutation of the "
                   f"tensor's {rank} axes", "a permutation of 0..rank-1")
    if not _free(t):
        if perm[0] != 0:
            raise fail(f"keras.ops.transpose with axes={axes}", "it moves the batch axis",
                       "axes that keep 0 first")
        dims = perm[1:]
    else:
        dims = tuple(p + 1 for p in perm)
    if dims == tuple(range(1, len(dims) + 1)):
        return t
    return apply(Permute(dims), "transpose", [t])


def expand_dims(x: Any, axis: int) -> Any:
    t = _tensor(x, "expand_dims")
    vis = list(t.shape)
    a = axis % (len(vis) + 1)
    if not _free(t) and a == 0:
        raise fail("keras.ops.expand_dims at axis 0", "the batch must stay first",
                   "an axis after the batch")
    vis.insert(a, 1)
    new = tuple(vis) if _free(t) else (-1,) + tuple(vis[1:])
    return reshape(t, new)


def squeeze(x: Any, axis: Any = None) -> Any:
    t = _tensor(x, "squeeze")
    vis = list(t.shape)
    first = 0 if _free(t) else 1
    if axis is None:
        drop = [i for i in range(first, len(vis)) if vis[i] == 1]
    else:
        drop = [a % len(vis) for a in ((axis,) if isinstance(axis, int) else axis)]
        for a in drop:
            if a < first or vis[a] != 1:
                raise fail(f"keras.ops.squeeze of axis {a} of shape {t.shape}",
                           "it is not an axis of size 1 after the batch",
                           "an axis of size 1")
    kept = [d for i, d in enumerate(vis) if i not in drop]
    return reshape(t, tuple(kept) if _free(t) else (-1,) + tuple(kept[1:]))


def concatenate(xs: Sequence[Any], axis: int = 0) -> Any:
    ts = _promoted([_tensor(v, "concatenate") for v in xs])
    if len({_free(t) for t in ts}) > 1:
        raise fail("keras.ops.concatenate of batched and batch-free tensors",
                   "they have different ranks in the graph", "tensors that all carry the batch")
    if len(ts) == 1:
        return ts[0]
    return apply(Concat(_graph_axis(ts[0], axis, "concatenate")), "concatenate", ts)


def stack(xs: Sequence[Any], axis: int = 0) -> Any:
    ts = _promoted([_tensor(v, "stack") for v in xs])
    rank = _user_rank(ts[0]) + 1
    a = axis % rank
    return concatenate([expand_dims(t, a) for t in ts], axis=a)


def slice_tensor(x: Any, index: Any) -> Any:
    """x[index] for basic indices: slices with a positive step, integers, `...`, None."""
    t = _tensor(x, "__getitem__")
    items = list(index) if isinstance(index, tuple) else [index]
    for it in items:
        if not (isinstance(it, (slice, int, np.integer)) or it is Ellipsis or it is None) \
                or isinstance(it, bool):
            raise fail(f"indexing a symbolic tensor with {type(it).__name__}",
                       "only basic indexing (slices, integers, ...) can be traced",
                       "slices x[:, a:b] or integers x[..., i]")
    vis_rank = _user_rank(t)
    n_real = _builtin_sum(1 for it in items if it is not None and it is not Ellipsis)
    if items.count(Ellipsis) > 1:
        raise fail("an index with two `...`", "it is ambiguous", "one `...`")
    if Ellipsis in items:
        k = items.index(Ellipsis)
        items = items[:k] + [slice(None)] * (vis_rank - n_real) + items[k + 1:]
    else:
        items += [slice(None)] * (vis_rank - n_real)
    if None in items:
        raise fail("indexing with None (a new axis)", "it is not supported in indexing",
                   "keras.ops.expand_dims")
    if len(items) != vis_rank:
        raise fail(f"an index of {n_real} axes", f"the tensor has {vis_rank} ({t.shape})",
                   "at most one index per axis")
    if not _free(t):
        head = items[0]
        if not (isinstance(head, slice) and head == slice(None)):
            raise fail(f"indexing the batch axis ({head!r})", "the batch is split across the "
                       "machine", "`:` for the first axis (x[:, ...])")
        items = items[1:]
    slices, drop = [], []
    for i, it in enumerate(items, start=1):
        if isinstance(it, slice):
            slices.append((it.start, it.stop, it.step))
        else:
            n = t.tensor_shape.dims[i]
            k = int(it)
            if not -n <= k < n:
                raise fail(f"index {k} of axis {i - (0 if _free(t) else 1)}",
                           f"that axis has size {n}", "an index within the axis")
            k %= n
            slices.append((k, k + 1, 1))
            drop.append(i)
    if not drop and all(s == (None, None, None) for s in slices):
        return t
    return apply(Slice(tuple(slices), tuple(drop)), "slice", [t])


# ---------------------------------------------------------------------------------------------
# matmul, one_hot, arange
# ---------------------------------------------------------------------------------------------

def matmul(x1: Any, x2: Any) -> Any:
    a, b = _promoted([_tensor(x1, "matmul"), _tensor(x2, "matmul")])
    ra, rb = a.tensor_shape.rank, b.tensor_shape.rank   # graph ranks (batch first)
    if _free(a) and not _free(b):
        raise fail("keras.ops.matmul(weight, batched tensor)", "the batch would be a "
                   "contracted or inner axis", "matmul(x, weight) (transpose the weight)")
    if _free(b) and not _free(a) and rb == 3 and ra >= 2:
        # (batch, ..., k) @ (k, n): fold the middle dims into rows, one matrix per sample
        lead = _rest(a)[:-1]
        rows = math.prod(lead) if lead else 1
        a3 = reshape(a, (-1, rows, _rest(a)[-1])) if ra != 3 else a
        out = apply(BatchMatmul(), "matmul", [a3, b])
        return reshape(out, (-1,) + lead + (_rest(b)[-1],)) if ra != 3 else out
    if ra == rb and ra >= 3 and _free(a) == _free(b):
        return apply(BatchMatmul(), "matmul", [a, b])
    raise fail(f"keras.ops.matmul of shapes {a.shape} and {b.shape}", "only (batch, ..., k) @ "
               "(k, n) with a weight, or two tensors of the same rank >= 3 batched alike, are "
               "supported", "reshape or expand_dims to one of those forms")


def one_hot(x: Any, num_classes: int, axis: int = -1, dtype: Any = None, sparse: bool = False
            ) -> Any:
    t = _tensor(x, "one_hot")
    if axis != -1 or sparse:
        raise fail("keras.ops.one_hot with axis != -1 or sparse=True", "only a new last axis "
                   "is supported", "one_hot(x, n) then keras.ops.transpose")
    return apply(OneHot(int(num_classes), DataType.of(dtype or "float32")), "one_hot", [t])


def arange(start: Any, stop: Any = None, step: Any = 1, dtype: Any = None) -> Any:
    """Inside a layer's call(): a batch-free tensor in the graph (broadcast over the batch);
    elsewhere a numpy array, as there is no graph to put it in."""
    if stop is None:
        start, stop = 0, start
    for v in (start, stop, step):
        if not _is_number(v):
            raise fail(f"keras.ops.arange with a {type(v).__name__} bound",
                       "its length must be known when the model is built",
                       "Python numbers, e.g. keras.ops.shape(x)[1]")
    floats = _builtin_any_float(start, stop, step)
    dt = DataType.of(dtype) if dtype is not None else (DataType.FLOAT32 if floats
                                                        else DataType.INT32)
    length = _builtin_max(0, math.ceil((stop - start) / step))
    ref = tracing.batch_ref()
    if ref is None:
        return np.arange(start, stop, step).astype(dt.numpy)
    out = apply(Range(float(start), float(step), int(length), dt), "arange", [ref])
    out._batch_free = True
    return out


def _builtin_any_float(*vs: Any) -> bool:
    return any(isinstance(v, (float, np.floating)) for v in vs)


def __getattr__(name: str) -> Any:
    """keras.ops functions we lack fail by name, with the list of those we have."""
    if name.startswith("__"):
        raise AttributeError(name)
    raise UnsupportedOpError(
        f"{tracing.current_owner_name()}: keras.ops.{name} is not supported by unity_legion "
        f"(no operator computes it). Use one of the supported keras.ops instead: "
        f"{', '.join(__all__)}; or a layer that computes it.")
