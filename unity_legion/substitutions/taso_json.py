"""Loading rules in the TASO / FlexFlow JSON format (e.g. FlexFlow's graph_subst_3_v2.json).

Format: {"_t": "RuleCollection", "rule" (or "rules"): [{"_t": "Rule", "name", "srcOp", "dstOp",
"mappedOutput"}]}; an operator is {"type": "OP_...", "input": [{"opId", "tsId"}], "para":
[{"key": "PM_...", "value": int}]}; a negative opId is a pattern input; a MapOutput says which
dst output stands for which src output.

What becomes what:
- operators we have (Linear, Conv2D, activations, identity, add/subtract/multiply, concat; split
  in a pattern only, as the format has no split sizes) -> an algebraic `Rule`. TASO's Linear reads its
  weight as a second input: that input must be a pattern input used by one Linear on each side,
  and the dst Linear is then the matched src Linear with the dst's activation (its kernel and
  bias carried over). Unless both read the same data tensor, it must have no bias (TASO's Linear
  has none, and a bias does not follow every rewrite). OP_CONV2D likewise (one group,
  channels_last, stated as PM_GROUP 1 and without window parameters: a rule for every window;
  a rule's convolutions must agree in window geometry); a dst Conv2D's kernel may
  also be an OP_CONCAT of src kernels, PM_AXIS 3 (output channels: the biases join too) or 2
  (input channels: no bias), which becomes the kernel's weight map.
- one compute op wrapped in parallel ops in dst -> a `ParallelRule` (which launch axis it
  enables; PM_PARALLEL_DIM counts from the innermost dim, FlexFlow's order, so the batch is dim
  PM_NUMDIM - 1 and a Partition/Combine rule needs PM_NUMDIM).
- everything else is listed in `skipped` with the reason.
A malformed file raises TasoFormatError naming the rule and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from unity_legion.operators.base import DimKind, attribute_axis
from unity_legion.operators.registry import by_taso_type

from .parallel import ParallelRule, parallel_rules
from .rule import (AttrEq, Computed, Copy, In, New, OpPattern, OpTemplate, Out, Pred, Rule,
                   SubstitutionError, WeightFrom)


class TasoFormatError(SubstitutionError):
    """The JSON is not a rule collection in the TASO/FlexFlow format."""


@dataclass(frozen=True)
class TasoTensor:
    op: int   # < 0: pattern input
    ts: int


@dataclass(frozen=True)
class TasoOp:
    type: str
    inputs: tuple[TasoTensor, ...]
    params: tuple[tuple[str, int], ...]

    def param(self, key: str, default: int | None = None) -> int | None:
        return dict(self.params).get(key, default)


@dataclass(frozen=True)
class TasoRule:
    name: str
    src: tuple[TasoOp, ...]
    dst: tuple[TasoOp, ...]
    mapped: tuple[tuple[int, int, int, int], ...]  # (srcOpId, srcTsId, dstOpId, dstTsId)


@dataclass(frozen=True)
class LoadResult:
    rules: list[Rule]
    parallel_rules: list[ParallelRule]
    skipped: list[tuple[str, str]]


PARALLEL_TYPES = {"OP_PARTITION", "OP_REPARTITION", "OP_COMBINE", "OP_REPLICATE", "OP_REDUCE",
                  "OP_REDUCTION", "OP_FUSED_PARALLEL", "OP_PIPELINE"}
# PM_ACTI: TASO's ActiMode (0..3) and FlexFlow's (10..14)
ACTI = {0: "linear", 1: "sigmoid", 2: "relu", 3: "tanh",
        10: "linear", 11: "relu", 12: "sigmoid", 13: "tanh", 14: "gelu"}
# The TASO operator types we read, from the operators' own `taso_names`: our op type for each,
# and the attributes the TASO type pins on it (OP_RELU: an activation with fn="relu").
OP_TYPE_OF = {t: cls.op_type for t, (cls, _) in by_taso_type().items()}
PINS = {t: name.pins for t, (_, name) in by_taso_type().items()}
# operators whose second input is their weight (a pattern input): Linear's (in, out) kernel, a
# Conv2D's (kh, kw, in, out) kernel (one group, channels_last, any kernel size, stride, padding)
WEIGHTED = ("OP_LINEAR", "OP_CONV2D")
# a dst Conv2D's kernel may be an OP_CONCAT of src kernels along input (2) or output (3) channels
KERNEL_AXES = {2: 2, 3: 3, -1: 3}
CONV_SAME = ("kernel_size", "strides", "padding", "dilation_rate", "use_bias")
# window parameters this loader does not read: a rule that names them may hold only for them
CONV_WINDOW = ("PM_KERNEL_H", "PM_KERNEL_W", "PM_STRIDE_H", "PM_STRIDE_W", "PM_PAD",
               "PM_PADDING_H", "PM_PADDING_W", "PM_DILATION_H", "PM_DILATION_W")


def _check_conv(o: "TasoOp") -> None:
    """An OP_CONV2D is read only where its rule holds for every window (no window parameter)
    and it states one group (PM_GROUP 1, as the generator writes): a grouped convolution obeys
    other laws, and a file that leaves the group count out may mean either."""
    if o.type != "OP_CONV2D":
        return
    if o.param("PM_GROUP") != 1:
        raise _Skip("OP_CONV2D without PM_GROUP 1 (rules for ungrouped convolutions only)")
    named = [k for k in CONV_WINDOW if o.param(k) is not None]
    if named:
        raise _Skip(f"OP_CONV2D with window parameters {named} (rules for every window only)")


class _Skip(Exception):
    pass


# --- parsing ---------------------------------------------------------------------------------

def _int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TasoFormatError(f"{where}: expected an integer, got {v!r}")
    return v


def _field(d: Any, key: str, where: str, kind: type) -> Any:
    if not isinstance(d, Mapping):
        raise TasoFormatError(f"{where}: expected an object, got {type(d).__name__}")
    if key not in d:
        raise TasoFormatError(f"{where}: missing field {key!r}")
    v = d[key]
    if kind is int:
        return _int(v, f"{where}.{key}")
    if not isinstance(v, kind):
        raise TasoFormatError(f"{where}.{key}: expected {kind.__name__}, got {type(v).__name__}")
    return v


def _parse_op(d: Any, where: str, index: int) -> TasoOp:
    typ = _field(d, "type", where, str)
    inputs = []
    for j, t in enumerate(_field(d, "input", where, list)):
        w = f"{where}.input[{j}]"
        ref = TasoTensor(_field(t, "opId", w, int), _field(t, "tsId", w, int))
        if ref.op >= index:
            raise TasoFormatError(f"{w}: opId {ref.op} is not an earlier operator")
        if ref.ts < 0:
            raise TasoFormatError(f"{w}: tsId {ref.ts} is negative")
        inputs.append(ref)
    params = []
    for j, p in enumerate(d.get("para", [])) if isinstance(d.get("para", []), list) else []:
        w = f"{where}.para[{j}]"
        params.append((_field(p, "key", w, str), _field(p, "value", w, int)))
    if "para" in d and not isinstance(d["para"], list):
        raise TasoFormatError(f"{where}.para: expected list, got {type(d['para']).__name__}")
    return TasoOp(typ, tuple(inputs), tuple(params))


def parse(data: Any) -> list[TasoRule]:
    if not isinstance(data, Mapping):
        raise TasoFormatError(f"rule collection: expected an object, got {type(data).__name__}")
    if data.get("_t", "RuleCollection") != "RuleCollection":
        raise TasoFormatError(f"rule collection: _t is {data.get('_t')!r}, not 'RuleCollection'")
    key = "rule" if "rule" in data else "rules"
    if key not in data:
        raise TasoFormatError("rule collection: missing field 'rule' (or 'rules')")
    items = _field(data, key, "rule collection", list)
    out = []
    for i, r in enumerate(items):
        name = r.get("name") if isinstance(r, Mapping) else None
        where = f"rule {name!r}" if isinstance(name, str) else f"rule #{i}"
        name = _field(r, "name", where, str)
        src = tuple(_parse_op(o, f"{where}: srcOp[{k}]", k)
                    for k, o in enumerate(_field(r, "srcOp", where, list)))
        dst = tuple(_parse_op(o, f"{where}: dstOp[{k}]", k)
                    for k, o in enumerate(_field(r, "dstOp", where, list)))
        mapped = []
        for k, m in enumerate(_field(r, "mappedOutput", where, list)):
            w = f"{where}: mappedOutput[{k}]"
            so, st = _field(m, "srcOpId", w, int), _field(m, "srcTsId", w, int)
            do, dt = _field(m, "dstOpId", w, int), _field(m, "dstTsId", w, int)
            if not 0 <= so < len(src):
                raise TasoFormatError(f"{w}.srcOpId: {so} is not a srcOp index")
            if not 0 <= do < len(dst):
                raise TasoFormatError(f"{w}.dstOpId: {do} is not a dstOp index")
            mapped.append((so, st, do, dt))
        if not src:
            raise TasoFormatError(f"{where}.srcOp: empty")
        out.append(TasoRule(name, src, dst, tuple(mapped)))
    return out


# --- translation -----------------------------------------------------------------------------

def load_rules(source: str | Path | Mapping[str, Any]) -> LoadResult:
    """Rules from a JSON file path or an already-parsed dict."""
    if isinstance(source, Mapping):
        data = source
    else:
        try:
            data = json.loads(Path(source).read_text())
        except json.JSONDecodeError as exc:
            raise TasoFormatError(f"{source}: not JSON: {exc}") from None
    rules, prules, skipped = [], [], []
    known = {(r.op_type, r.axis): r for r in parallel_rules()}
    for tr in parse(data):
        try:
            if all(o.type in PARALLEL_TYPES for o in tr.src + tr.dst):
                raise _Skip("only parallel operators (the chain algebra, algebra.simplify)")
            if any(o.type in PARALLEL_TYPES for o in tr.dst) and not any(
                    o.type in PARALLEL_TYPES for o in tr.src):
                prules.append(_parallel_rule(tr, known))
            else:
                rules.append(_algebraic_rule(tr))
        except _Skip as why:
            skipped.append((tr.name, str(why)))
        except SubstitutionError as exc:
            skipped.append((tr.name, f"not expressible: {exc}"))
    return LoadResult(rules, prules, skipped)


def _parallel_rule(tr: TasoRule, known: Mapping[tuple[str, str], ParallelRule]) -> ParallelRule:
    compute = [o for o in tr.src if o.type not in PARALLEL_TYPES]
    dst_compute = [(i, o) for i, o in enumerate(tr.dst) if o.type not in PARALLEL_TYPES]
    if len(tr.src) != 1 or len(compute) != 1 or len(dst_compute) != 1:
        raise _Skip("not one operator wrapped in parallel operators")
    (op,), ((ci, dop),) = compute, dst_compute
    if dop.type != op.type or dict(dop.params) != dict(op.params):
        raise _Skip("the wrapped operator differs from the source operator")
    if op.type not in OP_TYPE_OF:
        raise _Skip(f"unsupported operator {op.type}")
    _check_conv(op)
    op_type = OP_TYPE_OF[op.type]
    # the parallel op on the data input (input 0) and the one reading the op's output
    pre = dop.inputs[0]
    if pre.op < 0:
        raise _Skip("the data input is not wrapped in a parallel operator")
    before = tr.dst[pre.op]
    after = [o for o in tr.dst if any(t.op == ci for t in o.inputs)]
    if len(after) != 1:
        raise _Skip("the operator's output is not read by exactly one parallel operator")
    b, a = before.type, after[0].type
    numdim = op.param("PM_NUMDIM") or before.param("PM_NUMDIM") or after[0].param("PM_NUMDIM")
    if b == "OP_REPLICATE" and a in ("OP_REDUCE", "OP_REDUCTION"):
        kind = DimKind.REDUCTION
        cands = [r for (t, _), r in known.items() if t == op_type and r.dim_kind is kind]
    elif b == "OP_REPLICATE" and a == "OP_COMBINE":
        kind = DimKind.PARAMETER
        cands = [r for (t, _), r in known.items() if t == op_type and r.dim_kind is kind]
    elif b in ("OP_PARTITION", "OP_REPARTITION") and a == "OP_COMBINE":
        d1, d2 = before.param("PM_PARALLEL_DIM"), after[0].param("PM_PARALLEL_DIM")
        if d1 is None or d1 != d2:
            raise _Skip("partition and combine of different dims")
        if numdim is None:
            raise _Skip("PM_NUMDIM is needed to tell which dim PM_PARALLEL_DIM names")
        logical = numdim - 1 - d1
        if logical == 0:
            cands = [r for (t, _), r in known.items() if t == op_type and r.dim_kind is DimKind.SAMPLE]
        else:
            r = known.get((op_type, attribute_axis(logical, numdim)))
            cands = [r] if r is not None else []
    else:
        raise _Skip(f"{b} -> op -> {a} is not a parallelisation form")
    if len(cands) != 1:
        raise _Skip(f"{op_type} has no single launch axis for this form")
    return cands[0]


def _algebraic_rule(tr: TasoRule) -> Rule:
    for o in tr.src + tr.dst:
        if o.type not in OP_TYPE_OF:
            raise _Skip(f"unsupported operator {o.type}")
        _check_conv(o)
    if any(o.type == "OP_SPLIT" for o in tr.dst):
        raise _Skip("a split in the replacement (the format has no split sizes)")
    # TASO Linear / Conv2D weights: pattern inputs read as the op's second input
    weights: dict[int, int] = {}   # pattern input -> src op index of the Linear reading it
    kernel_cats: set[int] = set()  # dst ops that concatenate src Conv2D kernels (no graph op)
    for side, ops in (("src", tr.src), ("dst", tr.dst)):
        uses: dict[int, int] = {}
        for i, o in enumerate(ops):
            if o.type in WEIGHTED and len(o.inputs) == 2:
                w = o.inputs[1]
                ws = [w]
                if w.op >= 0 and side == "dst" and o.type == "OP_CONV2D" \
                        and ops[w.op].type == "OP_CONCAT" \
                        and all(t.op < 0 for t in ops[w.op].inputs):
                    kernel_cats.add(w.op)
                    ws = list(ops[w.op].inputs)
                elif w.op >= 0:
                    raise _Skip("a Linear weight computed by other operators")
                for t in ws:
                    uses[t.op] = uses.get(t.op, 0) + 1
                    if side == "src":
                        weights[t.op] = i
            elif o.type in WEIGHTED and len(o.inputs) != 1:
                raise _Skip("a Linear with more than two inputs")
        if any(n > 1 for n in uses.values()):
            raise _Skip(f"a weight shared by two Linears in {side}")
        for i, o in enumerate(ops):
            if side == "dst" and i in kernel_cats:   # reads kernels, as kernels
                continue
            data = o.inputs[:1] if o.type in WEIGHTED else o.inputs
            if any(t.op < 0 and t.op in weights for t in data):
                raise _Skip("a weight used as data")
        if side == "dst" and set(uses) - set(weights):
            raise _Skip("a dst Linear weight that no src Linear has")
    for c in kernel_cats:
        if any(tr.src[weights[t.op]].type != "OP_CONV2D" for t in tr.dst[c].inputs):
            raise _Skip("a Conv2D kernel concatenated from a Linear's")
        if any(t.op == c for o in tr.dst if o.type != "OP_CONV2D" for t in o.inputs):
            raise _Skip("a concatenation of kernels used as data")
    data_ids: dict[int, int] = {}
    for o in tr.src:
        for t in (o.inputs[:1] if o.type in WEIGHTED else o.inputs):
            if t.op < 0 and t.op not in data_ids:
                data_ids[t.op] = len(data_ids)

    def ref(t: Any, side: str) -> Any:
        if t.op < 0:
            if t.op not in data_ids:
                raise _Skip(f"{side} reads input {t.op}, which the pattern does not")
            return In(data_ids[t.op])
        return Out(f"{side}{t.op}", t.ts)

    pattern = [_pattern_op(i, o, ref) for i, o in enumerate(tr.src)]
    replacement = [_template(i, o, ref, weights, tr) for i, o in enumerate(tr.dst)
                   if i not in kernel_cats]
    if any(isinstance(x, tuple) for x in replacement):  # a dst Linear that needs no bias
        extra = {lb for x in replacement if isinstance(x, tuple) for lb in x[1]}
        replacement = [x[0] if isinstance(x, tuple) else x for x in replacement]
        pattern = [OpPattern(p.label, p.op_type, p.inputs, p.where + (AttrEq("use_bias", False),))
                   if p.label in extra else p for p in pattern]
    outputs = [(Out(f"src{so}", st), Out(f"dst{do}", dt)) for so, st, do, dt in tr.mapped]
    # one rule's convolutions are one function: the same window geometry (and bias or not)
    convs = [f"src{i}" for i, o in enumerate(tr.src) if o.type == "OP_CONV2D"]
    where = tuple(Pred("same_attrs", (a, b) + CONV_SAME) for a, b in zip(convs, convs[1:]))
    return Rule(tr.name, "taso", "algebraic", tuple(pattern), tuple(replacement), tuple(outputs),
                where)


def _pattern_op(i: int, o: TasoOp, ref: Any) -> OpPattern:
    typ = OP_TYPE_OF[o.type]
    where: list = [AttrEq(attr, value) for attr, value in PINS[o.type]]
    ins = o.inputs
    num_outputs = None
    if o.type in WEIGHTED:
        acti = o.param("PM_ACTI", 0)
        if acti not in ACTI:
            raise _Skip(f"unknown PM_ACTI {acti}")
        where.append(AttrEq("activation", ACTI[acti]))
        ins = o.inputs[:1]
        if o.type == "OP_CONV2D":   # the kernel concats and the channel axis assume these
            where += [AttrEq("groups", 1), AttrEq("data_format", "channels_last")]
    elif o.type in ("OP_CONCAT", "OP_SPLIT"):
        axis = o.param("PM_AXIS")
        if axis is None or axis == 0:
            raise _Skip(f"{o.type} along the batch axis (or without PM_AXIS)")
        where.append(AttrEq("axis", axis))
        if o.type == "OP_SPLIT":
            num_outputs = o.param("PM_NUM_OUTPUTS", 2)
    n = o.param("PM_NUM_INPUTS")
    if n is not None and n != len(ins) and o.type not in WEIGHTED:
        raise _Skip(f"{o.type}: PM_NUM_INPUTS {n} but {len(ins)} inputs")
    return OpPattern(f"src{i}", typ, tuple(ref(t, "src") for t in ins), tuple(where), num_outputs)


def _template(i: int, o: TasoOp, ref: Any, weights: Mapping[int, int], tr: TasoRule) -> Any:
    typ = OP_TYPE_OF[o.type]
    label = f"dst{i}"
    if o.type in WEIGHTED:
        acti = ACTI.get(o.param("PM_ACTI", 0))
        if acti is None:
            raise _Skip(f"unknown PM_ACTI {o.param('PM_ACTI')}")
        if len(o.inputs) != 2:
            raise _Skip("a dst Linear without a weight input")
        if o.inputs[1].op >= 0:
            return _merged_conv(label, o, acti, ref, weights, tr)
        src_i = weights[o.inputs[1].op]
        src_op = tr.src[src_i]
        t = OpTemplate(label, Copy(f"src{src_i}", (("activation", acti),)),
                       (ref(o.inputs[0], "dst"),), name_from=f"src{src_i}")
        if src_op.inputs[0] != o.inputs[0]:  # a different data input: the bias may not follow
            return (t, {f"src{src_i}"})
        return t
    if o.type == "OP_CONCAT":
        axis = o.param("PM_AXIS")
        if axis is None or axis == 0:
            raise _Skip("OP_CONCAT along the batch axis (or without PM_AXIS)")
        build = New(typ, PINS[o.type] + (("axis", axis),))
    else:
        build = New(typ, PINS[o.type])
    return OpTemplate(label, build, tuple(ref(t, "dst") for t in o.inputs))


def _merged_conv(label: str, o: TasoOp, acti: str, ref: Any, weights: Mapping[int, int],
                 tr: TasoRule) -> Any:
    """A dst Conv2D whose kernel concatenates src Conv2D kernels: the first src Conv2D with the
    joined kernel (Keras layout: output channels are axis 3, with the biases joined too; input
    channels axis 2, without biases, which would add up) and the dst's activation."""
    cat = tr.dst[o.inputs[1].op]
    axis = KERNEL_AXES.get(cat.param("PM_AXIS"))
    if axis is None:
        raise _Skip(f"a Conv2D kernel concatenated along PM_AXIS {cat.param('PM_AXIS')}")
    srcs = [f"src{weights[t.op]}" for t in cat.inputs]
    set_: tuple = (("activation", acti),)
    ws = [WeightFrom("kernel", tuple((lb, "kernel") for lb in srcs), axis=axis)]
    if axis == 3:
        set_ += (("filters", Computed("sum_attr", ("filters", *srcs))),)
        ws.append(WeightFrom("bias", tuple((lb, "bias") for lb in srcs), axis=0))
    t = OpTemplate(label, Copy(srcs[0], set_), (ref(o.inputs[0], "dst"),), tuple(ws),
                   name_from=srcs[0])
    same_data = all(tr.src[weights[x.op]].inputs[0] == o.inputs[0] for x in cat.inputs)
    return t if axis == 3 and same_data else (t, set(srcs))
