"""Show a strategy: `explain` (a text table, one row per operator) and `draw` (a picture of the
PCG). Pure Python; `draw` needs matplotlib and networkx, imported when called."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from unity_legion.pcg.pcg import PCG, PNode

if TYPE_CHECKING:
    from unity_legion.cost.simulator import SimResult

# a predicted forward time per operator of a PCG, in seconds (explain's `cost`)
CostFn = Callable[[PNode, PCG], float]


class Shown(Protocol):
    """What the report reads of a strategy (a strategy.Strategy, which imports this module)."""

    model: str
    source: str
    signature: str
    machine: Any      # strategy.MachineSpec: devices, device_type
    pipeline: Any     # pcg.pipeline.PipelineSpec or None


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # unreachable


def _seconds(s: float) -> str:
    return f"{s * 1e3:.3f} ms" if s < 1 else f"{s:.3f} s"


def _producers(pcg: PCG) -> dict[int, PNode]:
    return {t: n for n in pcg.nodes for t in n.outputs}


def _devices(node: PNode) -> str:
    assert node.config is not None
    return node.config.view.label()


def _degrees(node: PNode) -> str:
    assert node.config is not None
    return " x ".join(f"{a}={d}" for a, d in node.config.degrees) or "serial"


def inserted_before(pcg: PCG, node: PNode) -> list[PNode]:
    """The parallel operators that re-distribute `node`'s inputs for it."""
    prod = _producers(pcg)
    return [prod[t] for t in node.inputs if t in prod and prod[t].is_parallel]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        return "  ".join(cells).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def explain(strategy: Shown, pcg: PCG, batch: int, cost: CostFn | None = None,
            sim: "SimResult | None" = None) -> str:
    """One row per operator: degrees, devices, parameter and activation bytes per device (the
    largest piece of its weights and outputs), predicted forward time (with a cost model), and
    the parallel operators inserted before it; then the totals. With a simulation of one
    training step (`sim`), each row also shows the operator's compute (forward, backward,
    update: one device's share), its communication (the parallel operators feeding it and its
    gradient sums), how long its tasks waited once their inputs were ready (for devices, the
    host's issuing or the runtime's analysis), and the links
    the moves feeding it and its gradient sums used (intra-node: NVLink / NVSwitch or the node's
    own; inter-node: the network; both: a hierarchical collective, or a gather through the
    nodes); the totals
    add the step time, the peak memory and the devices' idle share."""
    rows = []
    total_time = 0.0
    for node in pcg.computations():
        src = node.source
        params = sum(s.piece_bytes() for (nid, _), s in pcg.weights.items() if nid == src)
        acts = sum(pcg.tensors[t].piece_bytes() for t in node.outputs)
        if cost is None:
            time = "-"
        else:
            t = float(cost(node, pcg))
            total_time += t
            time = _seconds(t)
        before = ", ".join(p.op.describe() for p in inserted_before(pcg, node)) or "-"
        row = [node.name, node.op.op_type, _degrees(node), _devices(node),
               human_bytes(params), human_bytes(acts), time]
        if sim is not None:
            br = sim.breakdown.get(node.name)
            if br is None:
                row += ["-", "-", "-", "-"]
            else:
                row += [_seconds(br.compute), _seconds(br.communication), _seconds(br.waited),
                        f"{br.moves or '-'} / {br.grads or '-'}"]
        rows.append(row + [before])
    header = ["operator", "type", "degrees", "devices", "params/dev", "activations/dev",
              "time"]
    if sim is not None:
        header += ["compute", "comm", "waited", "links: moves / grads"]
    header += ["parallel ops before"]
    m = strategy.machine
    lines = [f"strategy {strategy.source!r} for model {strategy.model!r} (signature "
             f"{strategy.signature}) on {m.devices} {m.device_type} device(s), batch {batch}", ""]
    lines += _table(header, rows, right={4, 5, 6} | ({7, 8, 9} if sim is not None else set()))
    prod = _producers(pcg)
    after = [prod[t] for t in pcg.outputs if t in prod and prod[t].is_parallel]
    lines.append("")
    if after:
        lines.append("after the model: " + ", ".join(f"{p.name} = {p.op.describe()}"
                                                     for p in after))
    n_par = len(pcg.parallel_nodes())
    lines.append(f"total: {len(rows)} operators, {n_par} parallel operators moving "
                 f"{human_bytes(pcg.bytes_moved())} ({pcg.bytes_moved()} bytes) per forward"
                 + (f", predicted forward {_seconds(total_time)}" if cost is not None else ""))
    if sim is not None:
        idle = [sim.idle(d) / sim.step_time for d in range(len(sim.busy))] if sim.step_time else []
        lines.append(f"simulated training step: {_seconds(sim.step_time)}, peak memory "
                     f"{human_bytes(int(sim.peak_memory))} per device, devices idle "
                     f"{100 * sum(idle) / max(len(idle), 1):.0f}% of the step on average")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# draw
# ---------------------------------------------------------------------------------------------

_GREY = "#d0d0d0"


def _range_of(node: PNode, consumers: dict[int, list[PNode]]) -> tuple[str, int, int] | None:
    """The device range a node runs on: its view, or for a parallel operator its consumer's
    (it moves data to where the consumer runs); None for the final gathers."""
    if node.config is not None:
        lo, hi = node.config.view.span()
        return node.config.view.device_type, lo, hi
    for c in consumers.get(node.outputs[0], []):
        r = _range_of(c, consumers)
        if r is not None:
            return r
    return None


def draw(strategy: Shown, pcg: PCG, path: str | os.PathLike[str],
         input_names: Sequence[str] = (), output_names: Sequence[str] = ()) -> None:
    """The PCG as a picture (PNG or SVG by the file's extension): computations are boxes,
    parallel operators diamonds, graph inputs and outputs circles; a node's colour is the device
    range it runs on; an edge is labelled with the parallel shape of the tensor it carries."""
    import networkx as nx
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".png", ".svg"):
        raise ValueError(f"draw: the file must end in .png or .svg, got {path!r}")
    g = nx.DiGraph()
    consumers: dict[int, list[PNode]] = {}
    for n in pcg.nodes:
        for t in n.inputs:
            consumers.setdefault(t, []).append(n)
    prod = {t: n.id for n in pcg.nodes for t in n.outputs}
    for i, t in enumerate(pcg.inputs):
        label = input_names[i] if i < len(input_names) else f"input {i}"
        g.add_node(("in", t), kind="io", label=label, range=None)
    stage_of = ({op: st.name for st in strategy.pipeline.stages for op in st.operators}
                if strategy.pipeline is not None else {})
    for n in pcg.nodes:
        label = n.name if not n.is_parallel else n.op.describe()
        if n.name in stage_of:  # a pipelined strategy: each computation names its stage
            label += f"\n({stage_of[n.name]})"
        g.add_node(("op", n.id), kind="parallel" if n.is_parallel else "op", label=label,
                   range=_range_of(n, consumers))
        for t in n.inputs:
            src = ("op", prod[t]) if t in prod else ("in", t)
            g.add_edge(src, ("op", n.id), label=str(pcg.tensors[t]))
    for i, t in enumerate(pcg.outputs):
        label = output_names[i] if i < len(output_names) else f"output {i}"
        g.add_node(("out", i), kind="io", label=label, range=None)
        src = ("op", prod[t]) if t in prod else ("in", t)
        g.add_edge(src, ("out", i), label=str(pcg.tensors[t]))

    # layered layout, top to bottom: one row per topological generation
    pos: dict[Any, tuple[float, float]] = {}
    gens = list(nx.topological_generations(g))
    for depth, layer in enumerate(gens):
        # order a row by where its predecessors sit, so that edges cross less
        def centre(v: Any) -> tuple[float, str]:
            xs = [pos[u][0] for u in g.predecessors(v)]
            return (sum(xs) / len(xs) if xs else 0.0, str(v))

        for i, v in enumerate(sorted(layer, key=centre)):
            pos[v] = (i - (len(layer) - 1) / 2, -depth)
    width = max(len(layer) for layer in gens)
    ranges = sorted({d["range"] for _, d in g.nodes(data=True) if d["range"] is not None})
    palette = ["#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69",
               "#fccde5", "#bc80bd", "#ccebc5", "#ffed6f", "#9ecae1"]
    colour = {r: palette[i % len(palette)] for i, r in enumerate(ranges)}

    size = (4 + 2.6 * width, 2 + 1.1 * len(gens))
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_axis_off()
    for u, v, d in g.edges(data=True):
        (x0, y0), (x1, y1) = pos[u], pos[v]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="-|>", color="#555555", lw=0.8,
                                    shrinkA=12, shrinkB=12), zorder=1)
        ax.text((x0 + x1) / 2, (y0 + y1) / 2, d["label"], fontsize=6, ha="center",
                va="center", color="#333333", zorder=3,
                bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8))
    shapes = {"op": "round,pad=0.3", "parallel": "darrow,pad=0.3", "io": "round4,pad=0.3"}
    for v, d in g.nodes(data=True):
        x, y = pos[v]
        fc = colour.get(d["range"], _GREY)
        ax.text(x, y, d["label"], fontsize=7, ha="center", va="center", zorder=4,
                bbox=dict(boxstyle=shapes[d["kind"]], fc=fc, ec="black",
                          lw=1.2 if d["kind"] == "op" else 0.8,
                          ls="-" if d["kind"] != "parallel" else "--"))
    xs = [p[0] for p in pos.values()]
    ax.set_xlim(min(xs) - 1, max(xs) + 1)
    ax.set_ylim(-len(gens), 1)
    handles = [Patch(fc=colour[r], ec="black", label=f"{r[0]}[{r[1]}:{r[2]}]") for r in ranges]
    handles.append(Patch(fc=_GREY, ec="black", label="inputs / outputs"))
    ax.legend(handles=handles, loc="upper left", fontsize=8, title="devices")
    m = strategy.machine
    ax.set_title(f"{strategy.model}: {strategy.source} strategy on {m.devices} {m.device_type} "
                 f"device(s); boxes compute, arrows re-distribute"
                 + (f"\npipeline: {strategy.pipeline.num_stages} stages, "
                    f"{strategy.pipeline.micro_batches} micro-batches, "
                    f"{strategy.pipeline.schedule}" if strategy.pipeline is not None else ""),
                 fontsize=10)
    # at most about 40 megapixels, however big the model
    dpi = min(100.0, (40e6 / (size[0] * size[1])) ** 0.5)
    fig.savefig(path, format=ext[1:], dpi=dpi)
