"""How `Strategy.explain` shows a pipelined strategy: its stages (operators, devices, activations
held per schedule) and, priced on a machine, each stage's time per micro-batch, the boundary
transfers, the bubble and the step. Pure Python."""

from __future__ import annotations

from typing import TYPE_CHECKING

from unity_legion.pcg.pipeline import PipelineSpec

if TYPE_CHECKING:
    from unity_legion.cost.pipeline import PipelineCost


def _ms(s: float) -> str:
    return f"{s * 1e3:.3f} ms"


def _devices(devs: tuple[int, ...]) -> str:
    lo, hi = min(devs), max(devs) + 1
    if list(devs) == list(range(lo, hi)):
        return f"[{lo}:{hi}]"
    return str(list(devs))


def explain_pipeline(spec: PipelineSpec, batch: int, priced: "PipelineCost | None" = None
                     ) -> str:
    m, S = spec.micro_batches, spec.num_stages
    lines = [f"pipeline: {S} stage(s), {m} micro-batches of {batch // m} samples, schedule "
             f"{spec.schedule} (bubble: {spec.bubble_slots()} micro-batch slot(s))"]
    header = ["stage", "devices", "operators", "in flight"]
    if priced is not None:
        header += ["fwd/mb", "bwd/mb", "grad sync", "memory/dev"]
    rows = []
    for i, st in enumerate(spec.stages):
        ops = st.operators
        shown = ops[0] if len(ops) == 1 else f"{ops[0]} .. {ops[-1]} ({len(ops)})"
        row = [st.name, _devices(st.devices), shown, str(spec.in_flight(i))]
        if priced is not None:
            sc = priced.stages[i]
            row += [_ms(sc.forward), _ms(sc.backward), _ms(sc.sync),
                    f"{sc.memory / 2**30:.2f} GiB"]
        rows.append(row)
    widths = [max(len(r[k]) for r in rows + [header]) for k in range(len(header))]
    for r in [header] + rows:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if priced is not None:
        if priced.transfers:
            lines.append("  boundary transfers per micro-batch (each way): " +
                         ", ".join(f"{spec.stages[b].name}->{spec.stages[b + 1].name} {_ms(x)}"
                                   for b, x in enumerate(priced.transfers)))
        lines.append(f"  slowest stage {_ms(priced.slot)} per micro-batch; bubble "
                     f"{_ms(priced.bubble)}; pipelined step {_ms(priced.step_time)}; peak "
                     f"memory {priced.peak_memory / 2**30:.2f} GiB per device")
    return "\n".join(lines)
