"""How a fused task's body calls its kernels: scalars the program holds instead of passing them
with every launch, kernels called by position, and the same numbers either way."""

from __future__ import annotations

import math

import numpy as np
import pytest

import unity_legion.executor.fusion as fusion_mod
from unity_legion.executor.executor import GraphExecutor, Objective
from unity_legion.executor.fusion import FusedGroup
from unity_legion.executor.launcher import BoundArg
from unity_legion.executor.tasks import PASSED, _call_by_position, _Held, fixed_scalars
from unity_legion.operators.base import In, Kernel, Origin, Out, Role, kernel
from unity_legion.operators.conv2d import Conv2D
from unity_legion.operators.dropout import Dropout
from unity_legion.operators.linear import Linear
from unity_legion.operators.losses import SparseCategoricalCrossentropy
from unity_legion.operators.optimizers import SGDRule
from unity_legion.operators.reshape import Flatten
from unity_legion.pcg.graph import ComputationGraph
from unity_legion.types import MachineView, TensorShape


@kernel
def scaled(x: In, y: Out, factor: float, label: str) -> None:
    y[...] = x * factor


def _group(values: list[float], dynamic_first: bool) -> FusedGroup:
    g = FusedGroup((1,), MachineView.contiguous("cpu", 0, 1))
    a, b = object(), object()
    for i, v in enumerate(values):
        bound = [BoundArg("x", Role.INPUT, False, a, None, None),
                 BoundArg("y", Role.OUTPUT, False, b, None, None)]
        dynamic = [(0, "lr")] if dynamic_first and i == 0 else []
        g.add(scaled, bound, frozenset(), [(v, float), (f"step{i}", str)], g.plan(bound),
              dynamic=dynamic)
    return g


def test_a_group_holds_its_scalars_and_passes_only_those_that_change() -> None:
    program, _slots, passed, dynamic = _group([0.5, 2.0], dynamic_first=True).program()
    # the first launch's factor changes from step to step: passed, renumbered among the passed
    assert program.fixed[0] is PASSED and passed == [(0.5, float)] and dynamic == [(0, "lr")]
    assert [f[2] for f in program.fixed[1:]] == ["step0", 2.0, "step1"]
    assert [name for name, _t in program.scalar_params()] == ["k0_factor", "_uid", "_launch"]


def test_equal_values_of_other_types_or_signs_make_other_programs() -> None:
    held = [fixed_scalars([(v, t)], []) for v, t in
            ((1, int), (True, bool), (1.0, float), (0.0, float), (-0.0, float))]
    assert len(set(held)) == len(held)
    assert fixed_scalars([(math.nan, float)], []) == (PASSED,)   # NaN equals no program


def test_a_scalar_that_moves_without_being_dynamic_is_passed_past_the_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fusion_mod, "FIXED_VARIANTS", 3)
    monkeypatch.setattr(fusion_mod, "_FIXED_VARIANTS", {})
    built = [_group([float(i)], dynamic_first=False).program() for i in range(5)]
    assert [b[0].fixed != () for b in built] == [True, True, True, False, False]
    assert built[4][2] == [(4.0, float), ("step0", str)]      # all passed
    # a program already held stays held
    assert _group([1.0], dynamic_first=False).program()[0].fixed != ()


def test_kernels_are_called_by_position_where_their_parameters_allow() -> None:
    got = {}

    @kernel
    def probe(x: In, y: Out, origin: Origin, n: int, tag: str) -> None:
        got.update(x=x, y=y, origin=origin, n=n, tag=tag)

    call = _call_by_position(probe, {"x": 2, "y": 0}, (("n", 1), ("tag", _Held("t"))))
    assert call is not None
    call(["Y", "?", "X"], ("?", 7), (0, 4))
    assert got == {"x": "X", "y": "Y", "origin": (0, 4), "n": 7, "tag": "t"}

    def keyword_only(x: np.ndarray, *, y: np.ndarray) -> None:
        pass

    k = Kernel("keyword_only", keyword_only, (("x", Role.INPUT), ("y", Role.OUTPUT)), (), False)
    assert _call_by_position(k, {"x": 0, "y": 1}, ()) is None


def _model(held: bool, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Losses of five data-parallel steps of a convolution (geometry scalars), dropout (a
    seed that changes every step) and a learning rate that changes every step."""
    monkeypatch.setattr(fusion_mod, "_FIXED_VARIANTS", {})
    monkeypatch.setattr(fusion_mod, "FIXED_VARIANTS", 64 if held else 0)
    g = ComputationGraph()
    x = g.add_input(TensorShape((None, 6, 6, 2)), "x")
    (h,) = g.add_node(Conv2D(3, 3, padding="same", activation="relu"), [x], "conv")
    (h,) = g.add_node(Dropout(0.3), [h], "drop")
    (h,) = g.add_node(Flatten(), [h], "flat")
    (o,) = g.add_node(Linear(4), [h], "out")
    ex = GraphExecutor(g, [o], seed=5)
    rng = np.random.default_rng(0)
    for key, spec in ex.weight_specs():
        ex.set_weight(key, 0.3 * rng.standard_normal(spec.shape.dims).astype(np.float32))
    obj = Objective((SparseCategoricalCrossentropy(from_logits=True),), ((),))
    xs = rng.standard_normal((8, 6, 6, 2)).astype(np.float32)
    ys = rng.integers(0, 4, 8)
    losses = [ex.train_step({x: xs}, [ys], obj, SGDRule(), 0.1 / s, s).mean_loss
              for s in range(1, 6)]
    assert ex.replayed   # (the later steps re-issued from a recording, as training's are)
    variants = [v for vs in fusion_mod._FIXED_VARIANTS.values() for v in vs]
    assert bool(variants) == held
    return losses + [float(v.sum()) for v in (ex.get_weight(k) for k, _ in ex.weight_specs())]


def test_held_scalars_train_exactly_as_passed_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _model(True, monkeypatch) == _model(False, monkeypatch)


def test_points_meet_at_each_gather_and_get_the_sum_in_point_order() -> None:
    """tasks.gathered: every point of a launch gets base + every point's piece, summed in
    point order (the same bits on each), at each of several gathers; the meeting is gone
    once they have all left."""
    import threading

    from unity_legion.executor import tasks

    points, gathers = 3, 5
    number = -12345   # (no launch of this process has a negative number)
    rng = np.random.default_rng(0)
    pieces = rng.standard_normal((gathers, points, 4)).astype(np.float32)
    base = np.ones(4, np.float32)
    got: dict[tuple[int, int], np.ndarray] = {}

    def point(p: int) -> None:
        m = tasks._meeting(number, points)
        for k in range(gathers):
            got[(k, p)] = tasks.gathered(m, k, p, base, pieces[k, p])
        tasks._leave(number, m)

    threads = [threading.Thread(target=point, args=(p,)) for p in range(points)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    for k in range(gathers):
        want = base.copy()
        for p in range(points):
            want += pieces[k, p]
        for p in range(points):
            np.testing.assert_array_equal(got[(k, p)], want)
    assert number not in tasks._MEETINGS


def test_a_point_that_never_comes_ends_the_meeting_with_an_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from unity_legion.executor import tasks

    monkeypatch.setattr(tasks, "MEET_TIMEOUT_S", 0.2)
    m = tasks._Meeting(2)
    with pytest.raises(RuntimeError, match="did not all reach"):
        tasks.gathered(m, 0, 0, np.zeros(2), np.ones(2))
