"""What every operator declares, once: shapes, weights, costs and its kernels.

An operator is a frozen dataclass of attributes. Its kernels are plain numpy functions whose
parameters are annotated with the roles below; the executor turns each kernel into a Legate task
(this module never imports legate, so the graph, search and cost model can use operators freely).
A kernel receives the local piece of each store as a writable numpy array (indexed from 0).
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence

from unity_legion.types import DataType, TensorShape


# ---------------------------------------------------------------------------------------------
# Kernel parameter roles
# ---------------------------------------------------------------------------------------------

class Role(enum.Enum):
    INPUT = "input"        # read-only piece
    OUTPUT = "output"      # write-only piece
    INOUT = "inout"        # read-write piece (updated in place)
    SUM = "sum"            # ADD-reduction: the kernel adds its contribution into a zeroed piece

    __hash__ = object.__hash__   # by identity (C speed): see RefKind


class In:
    """Annotation: a store the kernel reads."""


class Out:
    """Annotation: a store the kernel writes."""


class InOut:
    """Annotation: a store the kernel reads and updates in place."""


class Sum:
    """Annotation: a store the kernel accumulates into (ADD reduction over launch points)."""


class Origin:
    """Annotation: the global index of element 0 of the kernel's first store piece. The
    executor passes a `PieceOrigin` (a tuple) that also knows every other store's origin."""


class PieceOrigin(tuple):
    """The origin of a kernel's first store piece (a plain tuple of ints), with `of`: store
    parameter name -> the origin of that store's piece (e.g. the output tile's position in a
    kernel whose first store, its input, is read whole along the tiled dims)."""

    of: Mapping[str, tuple[int, ...]]

    def __new__(cls, first: Sequence[int], of: Mapping[str, tuple[int, ...]]) -> "PieceOrigin":
        self = super().__new__(cls, tuple(first))
        self.of = of   # (the task body's is lazy: a piece's origin is looked up when asked)
        return self


def origin_of(origin: Sequence[int], name: str, rank: int) -> tuple[int, ...]:
    """The global origin of store `name`'s piece from a kernel's `origin` argument (zeros when
    the kernel is called directly on whole arrays with a plain tuple)."""
    of = getattr(origin, "of", None)
    if of is not None and name in of:
        return tuple(of[name])
    return (0,) * rank


_ROLE_OF = {In: Role.INPUT, Out: Role.OUTPUT, InOut: Role.INOUT, Sum: Role.SUM}
_SCALAR_TYPES = (int, float, bool, str)


@dataclass(frozen=True)
class Kernel:
    """A numpy function with declared store parameters and scalar parameters, in order."""

    name: str
    fn: Callable[..., None]
    stores: tuple[tuple[str, Role], ...]
    scalars: tuple[tuple[str, type], ...]
    wants_origin: bool
    # INOUT parameters the kernel leaves zeroed (an update's consumed gradient): where a guard
    # skips the kernel (tasks.Step.guards) the task zeroes them all the same, so the next step
    # accumulates from zero whether or not this one was applied
    consumes: tuple[str, ...] = ()

    def __hash__(self) -> int:
        # computed once: every fused task's program is looked up by a hash over its kernels
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.name, self.fn, self.stores, self.scalars, self.wants_origin,
                      self.consumes))
            object.__setattr__(self, "_hash", h)
        return h

    def __call__(self, **kwargs: Any) -> None:
        """Run the kernel directly on numpy arrays (tests, and a serial reference)."""
        self.fn(**kwargs)

    def role(self, param: str) -> Role:
        return dict(self.stores)[param]


def kernel(fn: Callable[..., None]) -> Kernel:
    """Declare a numpy kernel; its annotations (In/Out/InOut/Sum/Origin/scalar type) say what
    each parameter is."""
    stores: list[tuple[str, Role]] = []
    scalars: list[tuple[str, type]] = []
    wants_origin = False
    hints = fn.__annotations__
    for name in inspect.signature(fn).parameters:
        ann = hints.get(name)
        if isinstance(ann, str):  # postponed annotations: resolve against this module's names
            ann = {"In": In, "Out": Out, "InOut": InOut, "Sum": Sum, "Origin": Origin, "int": int,
                   "float": float, "bool": bool, "str": str}.get(ann, ann)
        if ann in _ROLE_OF:
            stores.append((name, _ROLE_OF[ann]))
        elif ann is Origin:
            wants_origin = True
        elif ann in _SCALAR_TYPES:
            scalars.append((name, ann))
        else:
            raise TypeError(f"kernel {fn.__qualname__}: parameter {name!r} needs an annotation "
                            f"In, Out, Sum, Origin or a scalar type, got {ann!r}")
    if not stores:
        raise TypeError(f"kernel {fn.__qualname__} has no store parameter")
    return Kernel(f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}", fn, tuple(stores),
                  tuple(scalars), wants_origin)


def consumes(*params: str) -> Callable[[Kernel], Kernel]:
    """Decorate a kernel (above @kernel) that leaves its INOUT `params` zeroed (Kernel.consumes)."""
    def mark(k: Kernel) -> Kernel:
        roles = dict(k.stores)
        for p in params:
            if roles.get(p) is not Role.INOUT:
                raise TypeError(f"kernel {k.name}: consumed parameter {p!r} is not InOut")
        return dataclasses.replace(k, consumes=tuple(params))
    return mark


# ---------------------------------------------------------------------------------------------
# Symbolic references an operator's launches use; the executor binds them to stores
# ---------------------------------------------------------------------------------------------

class RefKind(enum.Enum):
    INPUT = "in"
    OUTPUT = "out"
    WEIGHT = "w"
    SAVED = "saved"            # produced by forward only to be used by backward
    GRAD_INPUT = "d_in"
    GRAD_OUTPUT = "d_out"
    GRAD_WEIGHT = "d_w"

    # Members are singletons: hash by identity (C speed). Enum's own hash is a Python call,
    # and refs are hashed tens of thousands of times per training step.
    __hash__ = object.__hash__


@dataclass(frozen=True)
class Ref:
    kind: RefKind
    key: int | str

    def __str__(self) -> str:
        return f"{self.kind.value}[{self.key}]"


def x(i: int = 0) -> Ref:
    return Ref(RefKind.INPUT, i)


def y(i: int = 0) -> Ref:
    return Ref(RefKind.OUTPUT, i)


def w(name: str) -> Ref:
    return Ref(RefKind.WEIGHT, name)


def saved(name: str) -> Ref:
    return Ref(RefKind.SAVED, name)


def dx(i: int = 0) -> Ref:
    return Ref(RefKind.GRAD_INPUT, i)


def dy(i: int = 0) -> Ref:
    return Ref(RefKind.GRAD_OUTPUT, i)


def dw(name: str) -> Ref:
    return Ref(RefKind.GRAD_WEIGHT, name)


# The launch axis along which data parallelism splits samples; operators name their other axes
# ("out", "in", "heads", "columns", ...) and declare them in `parallel_dims`.
SAMPLE = "sample"
# The ATTRIBUTE axis of operators that are per-position along the last dim of their activations.
FEATURES = "features"


def attribute_axis(dim: int, rank: int) -> str:
    """The name of an ATTRIBUTE axis splitting non-batch dim `dim` of a rank-`rank` activation:
    FEATURES for the last dim, "dim<d>" for another (names are local to one operator)."""
    return FEATURES if dim == rank - 1 else f"dim{dim}"


class DimKind(enum.Enum):
    """What splitting a launch axis means (Unity's forms of parallelism)."""

    SAMPLE = "sample"          # the batch: data parallelism
    ATTRIBUTE = "attribute"    # a non-batch dim of the activations (features, sequence, spatial)
    PARAMETER = "parameter"    # the weights are split too (output features, heads, table columns)
    REDUCTION = "reduction"    # a contracted dim: each point makes a partial sum of the output


@dataclass(frozen=True)
class ParallelDim:
    """A launch axis an operator can split, of what kind, and its extent (the largest degree;
    None for the batch of a graph not yet bound to data)."""

    axis: str
    kind: DimKind
    size: int | None


@dataclass(frozen=True)
class Arg:
    """A store argument of a launch: which tensor, and which launch axis splits each of its dims
    (None: that dim is whole in every point; a store with no split is broadcast, or for Sum
    reduced)."""

    ref: Ref
    split: tuple[str | None, ...] = ()

    @staticmethod
    def by_sample(ref: Ref, rank: int, dims: Mapping[int, str] | None = None) -> "Arg":
        """Split along dim 0 (the batch) by the sample axis, the dims in `dims` (non-batch, a
        negative one counts from the end) by their axes; other dims whole."""
        split: list[str | None] = [SAMPLE] + [None] * (rank - 1)
        for d, axis in (dims or {}).items():
            if not -rank < d < rank or d % rank == 0:
                raise ValueError(f"dim {d} of a rank-{rank} store is not a non-batch dim")
            split[d % rank] = axis
        return Arg(ref, tuple(split))

    @staticmethod
    def by_attribute(ref: Ref, rank: int, dim: int | None) -> "Arg":
        """Split by samples and along non-batch dim `dim` (if not None) by its ATTRIBUTE axis,
        `attribute_axis(dim, rank)`."""
        return Arg.by_sample(ref, rank, None if dim is None else {dim: attribute_axis(dim, rank)})

    @staticmethod
    def by_features(ref: Ref, rank: int) -> "Arg":
        """Split by samples and, above rank 1, along the last dim by FEATURES (the stores of an
        operator that is per position along its last dim)."""
        return Arg.by_attribute(ref, rank, rank - 1 if rank >= 2 else None)


@dataclass(frozen=True)
class Launch:
    """One task launch of an operator: a kernel, its store arguments by parameter name, scalars."""

    kernel: Kernel
    args: Mapping[str, Arg]
    scalars: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        want = {n for n, _ in self.kernel.stores}
        if set(self.args) != want:
            raise ValueError(f"launch of {self.kernel.name}: arguments {sorted(self.args)} do not "
                             f"match the kernel's store parameters {sorted(want)}")
        swant = {n for n, _ in self.kernel.scalars}
        if set(self.scalars) != swant:
            raise ValueError(f"launch of {self.kernel.name}: scalars {sorted(self.scalars)} do not "
                             f"match the kernel's scalar parameters {sorted(swant)}")

    @property
    def writes_input_grad(self) -> bool:
        """Whether it writes an input's gradient (a backward launch)."""
        return any(a.ref.kind is RefKind.GRAD_INPUT for a in self.args.values())


def last_input_grad(launches: Sequence[Launch]) -> int:
    """The index of the last of a backward pass's launches that writes an input gradient (-1:
    none does)."""
    return max((k for k, launch in enumerate(launches) if launch.writes_input_grad), default=-1)


# ---------------------------------------------------------------------------------------------
# Weights and saved tensors
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WeightSpec:
    """A trainable (or not) parameter of an operator, with its initializer's name and config."""

    name: str
    shape: TensorShape
    initializer: str = "zeros"
    init_args: tuple[tuple[str, Any], ...] = ()
    trainable: bool = True


@dataclass(frozen=True)
class SavedSpec:
    """An extra forward product that backward needs (a dropout mask, softmax statistics...).

    zero: the executor fills it with zeros before the node's forward launches, every step, so
    launches can accumulate into it as a Sum target (e.g. batch statistics summed over the
    pieces of a split batch)."""

    name: str
    shape: TensorShape
    zero: bool = False


# ---------------------------------------------------------------------------------------------
# The operator base
# ---------------------------------------------------------------------------------------------

class OperatorError(ValueError):
    """An operator's attributes or input shapes are invalid."""


@dataclass(frozen=True)
class TasoName:
    """A TASO / FlexFlow JSON operator type and the attributes it pins on our operator (OP_RELU
    is an Activation with fn="relu"; OP_LINEAR pins nothing)."""

    type: str
    pins: tuple[tuple[str, Any], ...] = ()


class Operator:
    """Base of operator attribute types. Subclasses are frozen dataclasses and define the rules.

    Shapes passed to the rules are concrete except possibly dim 0 (the batch), which is None in a
    graph built before data arrives; rules must carry it through.
    """

    op_type: ClassVar[str] = "operator"
    num_inputs: ClassVar[int | None] = 1  # None: variadic (at least one)
    # Keras runs a layer like BatchNormalization in inference mode once all its weights are
    # frozen (layer.trainable = False); operators that behave so say True here.
    inference_when_frozen: ClassVar[bool] = False
    # In training, a sample's output depends on the other samples of its batch (batch norm's
    # batch mean and variance): a pipeline's micro-batches would compute other numbers than the
    # whole batch, so a pipelined strategy refuses such an operator (pcg/pipeline.py).
    batch_statistics: ClassVar[bool] = False

    # --- traits: what the substitutions, strategies, cost model and torch twin ask the operator
    # instead of keeping their own lists of op types ------------------------------------------
    # Each output element depends on the input elements at the same position only: such an
    # operator commutes with concat, split, permute and reshape, and a tensor split by features
    # passes it still split (Megatron). Where an attribute decides (an activation's function),
    # the class overrides `is_elementwise`.
    elementwise: ClassVar[bool] = False
    # The output is the input's data, row-major, under another per-sample shape (no compute).
    reshape_only: ClassVar[bool] = False
    # The TASO / FlexFlow JSON operator types that read as this operator.
    taso_names: ClassVar[tuple[TasoName, ...]] = ()
    # The cost model fits kernel efficiencies and backward ratios per family; a class that names
    # its op_type is its own family unless it states another (see __init_subclass__).
    cost_family: ClassVar[str] = "operator"
    # The analytic cost model's defaults, before any calibration: the fraction of peak FLOP/s a
    # tuned kernel reaches (None: the memory-bound default; dense matrix work says more) and the
    # backward / forward time ratio (None: 2 with weights, one product for the input gradient
    # and one for the weights; 1 without).
    flops_efficiency: ClassVar[float | None] = None
    backward_ratio: ClassVar[float | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "op_type" in vars(cls) and "cost_family" not in vars(cls):
            cls.cost_family = cls.op_type

    def is_elementwise(self) -> bool:
        return self.elementwise

    @classmethod
    def examples(cls) -> tuple[tuple["Operator", tuple[TensorShape, ...]], ...]:
        """Representative instances with input shapes, in the ranks the model zoo uses: what
        the search's parallelisation rules are read from (substitutions.parallel.catalogue)."""
        return ()

    # --- shapes -------------------------------------------------------------------------------
    def check_inputs(self, inputs: Sequence[TensorShape]) -> None:
        if self.num_inputs is not None and len(inputs) != self.num_inputs:
            raise OperatorError(f"{self.op_type} takes {self.num_inputs} input(s), got {len(inputs)}")
        if self.num_inputs is None and not inputs:
            raise OperatorError(f"{self.op_type} needs at least one input")

    def infer_outputs(self, inputs: Sequence[TensorShape]) -> tuple[TensorShape, ...]:
        raise NotImplementedError

    def weights(self, inputs: Sequence[TensorShape]) -> tuple[WeightSpec, ...]:
        return ()

    def saved(self, inputs: Sequence[TensorShape]) -> tuple[SavedSpec, ...]:
        return ()

    def check_input_values(self, index: int, values: Any) -> None:
        """Validate concrete values fed to input `index` before anything is launched (a kernel
        cannot report an error without aborting the process). Default: nothing to check."""

    # --- costs (forward pass; backward is about twice, per operator where it differs) ---------
    def flops(self, inputs: Sequence[TensorShape]) -> int:
        return sum(o.num_elements() for o in self.infer_outputs(inputs))

    def bytes_accessed(self, inputs: Sequence[TensorShape]) -> int:
        outs = self.infer_outputs(inputs)
        ws = self.weights(inputs)
        return (sum(s.num_bytes() for s in inputs) + sum(o.num_bytes() for o in outs)
                + sum(wt.shape.num_bytes() for wt in ws))

    # --- launches -----------------------------------------------------------------------------
    def forward(self, inputs: Sequence[TensorShape], training: bool) -> list[Launch]:
        raise NotImplementedError

    def backward(self, inputs: Sequence[TensorShape], needs_input_grad: Sequence[bool]) -> list[Launch]:
        """Launches writing d_in[i] (where needed) and d_w[name] (as Sum) from d_out."""
        raise NotImplementedError

    def input_grads_share(self, inputs: Sequence[TensorShape],
                          needs_input_grad: Sequence[bool]) -> float:
        """The fraction of its backward pass's time after which every input gradient it
        computes is written: where the launches writing them all come before those writing
        weight gradients alone, a transfer of the input gradient (or the producer's backward
        on other processors) can start while the weight gradients are still computed, as
        Megatron-LM overlaps a tensor-parallel gradient exchange with the weight-gradient
        product. Default: half of a weighted operator's backward (its two products cost the
        same flops) where its launches are in that order, else the whole of it (1)."""
        if not self.weights(inputs) or not any(needs_input_grad):
            return 1.0
        launches = self.backward(inputs, needs_input_grad)
        last = last_input_grad(launches)
        return (0.5 if 0 <= last < len(launches) - 1
                and all(launch.writes_input_grad for launch in launches[:last + 1]) else 1.0)

    # --- parallelism --------------------------------------------------------------------------
    def parallel_dims(self, inputs: Sequence[TensorShape]) -> tuple[ParallelDim, ...]:
        """The launch axes of this operator's launches and what splitting each means. Every
        launch names its arguments' dims by these axes (Arg.split), so a degree per axis is all a
        strategy says: inputs not split by an axis are read whole (replicated), outputs not split
        by an axis of degree > 1 become partial sums. Default: the batch only."""
        return (ParallelDim(SAMPLE, DimKind.SAMPLE, inputs[0].dims[0] if inputs else None),)

    def state_updates(self, inputs: Sequence[TensorShape]) -> list[Launch]:
        """Launches that update non-trainable weights from this step's saved tensors (e.g. batch
        norm's moving statistics). The executor runs them after the optimizer, and only for a
        training step it applies (never after a non-finite loss, nor in gradients()); refs: the
        node's inputs, outputs, weights and saved tensors of the step. A launch that would write
        a frozen weight is skipped. Default: none."""
        return []

    def weight_bytes_touched(self, inputs: Sequence[TensorShape]) -> int | None:
        """Bytes of its weights one pass reads where that is less than the whole weights (a
        lookup gathers only the rows the batch uses; its sparse update writes only those), for
        the cost model; None (default): the whole weights."""
        return None

    def sparse_sgd_update(self, inputs: Sequence[TensorShape], weight: str) -> Launch | None:
        """A launch applying plain SGD (no momentum, no weight decay: `param -= lr * grad`) to
        `weight` straight from this step's inputs and output gradients (refs: the node's
        inputs, weights and `dy`), touching only what the batch used, instead of the dense
        gradient and update; it leaves every other element as the dense update would (the
        changed ones equal too). The executor then skips the backward launches that only
        write that weight's gradient. Its "lr" scalar is set by the executor; the weight is
        split by the launch axis "rows" over the update's points. None: none (default)."""
        return None

    # --- description --------------------------------------------------------------------------
    def describe(self) -> str:
        fields = getattr(self, "__dataclass_fields__", {})
        inner = ", ".join(f"{k}={getattr(self, k)!r}" for k in fields)
        return f"{self.op_type}({inner})"


def free_dim_besides(axis: int, rank: int) -> int | None:
    """The non-batch dim an ATTRIBUTE axis can split when `axis` must stay whole (a concat or
    split axis): the last dim, or the one before it; None if only the batch is left."""
    d = rank - 1 if axis != rank - 1 else rank - 2
    return d if d >= 1 else None


def sample_dim(s: TensorShape) -> ParallelDim:
    """The SAMPLE axis over the batch of `s` (extent None while the batch is unknown)."""
    return ParallelDim(SAMPLE, DimKind.SAMPLE, s.dims[0])


def attribute_dims(s: TensorShape, dim: int | None) -> tuple[ParallelDim, ...]:
    """SAMPLE, and the ATTRIBUTE axis over non-batch dim `dim` of `s` if not None (stores split
    by Arg.by_attribute): the axes of an operator that is per position along that dim."""
    if dim is None:
        return (sample_dim(s),)
    return (sample_dim(s), ParallelDim(attribute_axis(dim, s.rank), DimKind.ATTRIBUTE, s.dims[dim]))


class KeepsAxisWhole:
    """Mixin of operators that must keep one non-batch axis whole (Concat, Split along
    `resolved_axis`): their ATTRIBUTE axis splits another non-batch dim (`free_dim_besides`)."""

    def resolved_axis(self, rank: int) -> int:
        raise NotImplementedError

    def _free_dim(self, rank: int) -> int | None:
        return free_dim_besides(self.resolved_axis(rank), rank)

    def parallel_dims(self, inputs: Sequence[TensorShape]) -> tuple[ParallelDim, ...]:
        return attribute_dims(inputs[0], self._free_dim(inputs[0].rank))

    def _arg(self, ref: Ref, rank: int) -> Arg:
        return Arg.by_attribute(ref, rank, self._free_dim(rank))


def features_dims(s: TensorShape) -> tuple[ParallelDim, ...]:
    """SAMPLE, and FEATURES (ATTRIBUTE, the last dim) above rank 1 (stores split by
    Arg.by_features)."""
    return attribute_dims(s, s.rank - 1 if s.rank >= 2 else None)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def tile_count(size: int, degree: int) -> int:
    """How many pieces tiling `size` by ceil(size / degree) yields (<= degree): the executor's
    rule for a dim of `size` split `degree` ways."""
    if size <= 0 or degree <= 1:
        return 1
    return ceil_div(size, ceil_div(size, min(degree, size)))


def prod(values: Sequence[int]) -> int:
    return math.prod(values)


def normalize_axis(axis: int, rank: int, what: str) -> int:
    """A Python-style axis (negative counts from the end) as a non-negative index, or an error."""
    if not -rank <= axis < rank:
        raise OperatorError(f"{what}: axis {axis} is out of range for a tensor of rank {rank}")
    return axis % rank


def same_float(inputs: Sequence[TensorShape], what: str) -> DataType:
    dtypes = {s.dtype for s in inputs}
    if len(dtypes) != 1:
        raise OperatorError(f"{what}: inputs have different dtypes {sorted(d.value for d in dtypes)}")
    (dt,) = dtypes
    if not dt.is_float:
        raise OperatorError(f"{what}: expects floating-point inputs, got {dt.value}")
    return dt
