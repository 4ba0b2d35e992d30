"""Training steps re-issued from a recording (executor/replay.py) equal steps issued by walking
the graph, bit for bit, and the recording is dropped whenever a store it names is replaced."""

from __future__ import annotations

import numpy as np
import pytest

from unity_legion import keras
from unity_legion.executor.executor import GraphExecutor, Objective
from unity_legion.executor.replay import _uniform_piece
from unity_legion.executor.tasks import Access
from unity_legion.operators.batch_norm import BatchNorm
from unity_legion.operators.dropout import Dropout
from unity_legion.operators.linear import Linear
from unity_legion.operators.losses import SparseCategoricalCrossentropy
from unity_legion.operators.optimizers import AdamRule, SGDRule
from unity_legion.pcg.graph import ComputationGraph
from unity_legion.types import MachineView, OpConfig, TensorShape

OBJ = Objective((SparseCategoricalCrossentropy(from_logits=True),), ((),))


def _executor(replay: bool, plan: str = "default") -> tuple[GraphExecutor, int]:
    g = ComputationGraph()
    x = g.add_input(TensorShape((None, 12)), "x")
    (h,) = g.add_node(Linear(16, activation="relu"), [x], "d1")
    (h,) = g.add_node(BatchNorm(), [h], "bn")
    (h,) = g.add_node(Dropout(0.25), [h], "drop")
    (h,) = g.add_node(Linear(16, activation="tanh"), [h], "d2")
    (o,) = g.add_node(Linear(5), [h], "out")
    ex = GraphExecutor(g, [o], seed=3)
    ex.replay = replay
    if plan == "serial":   # every operator on one processor: one-point groups
        ex.set_plan({n.id: OpConfig.of({}, MachineView.contiguous("cpu", 0, 1)) for n in ex.nodes})
    rng = np.random.default_rng(0)
    for key, spec in ex.weight_specs():
        value = 0.3 * rng.standard_normal(spec.shape.dims).astype(np.float32)
        ex.set_weight(key, np.abs(value) + 0.5 if "variance" in key[1] else value)
    return ex, x


def _batches(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [(rng.standard_normal((10, 12)).astype(np.float32), rng.integers(0, 5, 10))
            for _ in range(n)]


def _weights(ex: GraphExecutor) -> dict:
    return {k: ex.get_weight(k) for k, _ in ex.weight_specs()}


@pytest.mark.parametrize("rule", [AdamRule(), SGDRule(momentum=0.9)], ids=["adam", "momentum"])
@pytest.mark.parametrize("plan", ["default", "serial"])
def test_replayed_steps_equal_walked_steps(rule, plan: str) -> None:
    """Six steps with dropout (fresh seeds each step), batch statistics, a learning rate that
    changes every step and Adam's step count: losses, weights and optimizer state equal the
    walked run's (to the last bits Legion's mapping can move), the dropout stream and the
    tasks exactly, and from the third step on steps are replayed."""
    runs = []
    for replay in (False, True):
        ex, x = _executor(replay, plan)
        losses, replayed = [], []
        for s, (xs, ys) in enumerate(_batches(6), start=1):
            losses.append(ex.train_step({x: xs}, [ys], OBJ, rule, 0.05 / s, s).mean_loss)
            replayed.append(ex.replayed)
        runs.append((losses, _weights(ex), ex.slot_values(), ex.random_state, replayed,
                     ex._queue.tasks))
    (l0, w0, s0, r0, rep0, t0), (l1, w1, s1, r1, rep1, t1) = runs
    # The same walked step in two executors can differ in the last bit (seen once in a full
    # run: step 2, which both runs walk, 2.1561831807 vs ...1813; likely a piece's alignment,
    # which Legion's mapping decides and vectorised sums group elements by). A
    # replay that got anything wrong (a seed, the learning rate, the step count, a store)
    # moves the loss by far more than 1e-6.
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    for k in w0:
        np.testing.assert_allclose(w0[k], w1[k], rtol=1e-6, atol=1e-7)
    for k in s0:
        np.testing.assert_allclose(s0[k], s1[k], rtol=1e-6, atol=1e-7)
    assert r0 == r1
    assert rep0 == [False] * 6 and rep1 == [False, False] + [True] * 4
    assert t0 == t1   # a replayed step counts the tasks it submits


def test_a_replaced_weight_drops_the_recording() -> None:
    """set_weight between steps: the next step walks the graph again (the recording named the
    old store) and trains from the new values, as a walked run does."""
    runs = []
    for replay in (False, True):
        ex, x = _executor(replay)
        batches = _batches(5)
        losses = [ex.train_step({x: xs}, [ys], OBJ, AdamRule(), 0.01, s).mean_loss
                  for s, (xs, ys) in enumerate(batches[:3], start=1)]
        assert ex.replayed is replay
        key, spec = ex.weight_specs()[0]
        ex.set_weight(key, np.full(spec.shape.dims, 0.1, np.float32))
        losses.append(ex.train_step({x: batches[3][0]}, [batches[3][1]], OBJ, AdamRule(), 0.01,
                                    4).mean_loss)
        assert not ex.replayed
        losses.append(ex.train_step({x: batches[4][0]}, [batches[4][1]], OBJ, AdamRule(), 0.01,
                                    5).mean_loss)
        runs.append((losses, _weights(ex)))
    assert runs[0][0] == runs[1][0]
    for k in runs[0][1]:
        np.testing.assert_array_equal(runs[0][1][k], runs[1][1][k])


def test_a_step_of_another_kind_is_recorded_apart() -> None:
    """Another batch size, a metric, or the walk between (evaluation) each make or find their
    own recording; alternating kinds replays each and trains as the walked run does."""
    runs = []
    for replay in (False, True):
        ex, x = _executor(replay)
        rng = np.random.default_rng(2)
        out = []
        for s in range(1, 9):
            n = 10 if s % 2 else 6
            xs = rng.standard_normal((n, 12)).astype(np.float32)
            ys = rng.integers(0, 5, n)
            out.append(ex.train_step({x: xs}, [ys], OBJ, SGDRule(), 0.02, s).mean_loss)
            if s == 5:
                out.append(ex.evaluate_step({x: xs}, [ys], OBJ).mean_loss)
        runs.append((out, _weights(ex), ex.replayed))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    for k in runs[0][1]:
        np.testing.assert_array_equal(runs[0][1][k], runs[1][1][k])
    assert runs[1][2]   # the last step (batch 6, its fourth) was replayed


def test_a_bad_batch_after_recording_fails_before_anything_runs() -> None:
    """A step whose batch does not fit the model, after steps were recorded, is refused with
    the error a first step gets, and the weights are those of the steps before."""
    keras.utils.set_random_seed(6)
    inp = keras.Input((12,))
    h = keras.layers.Dense(16, activation="relu")(inp)
    out = keras.layers.Dense(3)(h)
    model = keras.Model(inp, out)
    model.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    for _ in range(3):
        model.train_on_batch(rng.standard_normal((8, 12)).astype(np.float32),
                             rng.integers(0, 3, 8))
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match="12"):
        model.train_on_batch(np.zeros((8, 13), np.float32), np.zeros(8, np.int64))
    with pytest.raises(ValueError):
        model.train_on_batch(np.zeros((8, 12), np.float32), np.full(8, 7, np.int64))
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_fit_with_a_schedule_and_validation_equals_the_walked_run(monkeypatch) -> None:
    """keras fit (staged batches, a learning rate halved each epoch, dropout, validation)
    trains the same with recordings as without, and predicts the same; training, evaluation
    and prediction steps after the first two of a kind are replayed."""
    histories = []
    for replay in ("0", "1"):
        monkeypatch.setenv("UNITY_LEGION_REPLAY", replay)
        keras.utils.set_random_seed(4)
        inp = keras.Input((20,))
        h = keras.layers.Dense(32, activation="relu")(inp)
        h = keras.layers.Dropout(0.3)(h)
        out = keras.layers.Dense(4, activation="softmax")(h)
        model = keras.Model(inp, out)
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.5),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        rng = np.random.default_rng(0)
        x = rng.standard_normal((96, 20)).astype(np.float32)
        y = rng.integers(0, 4, 96)
        halve = keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr * 0.5)
        hist = model.fit(x, y, batch_size=16, epochs=3, validation_split=0.25, verbose=0,
                         callbacks=[halve])
        ex = model._executor
        inner = getattr(ex, "inner", ex)
        fit_replayed = inner.replayed
        preds, replayed = [], []
        for _ in range(3):
            preds.append(model.predict(x[:16], verbose=0))
            replayed.append(inner.replayed)
        histories.append((hist.history, [w.copy() for w in model.get_weights()], fit_replayed,
                          np.stack(preds), replayed if replay == "1" else None))
    assert histories[0][0] == histories[1][0]
    for a, b in zip(histories[0][1], histories[1][1]):
        np.testing.assert_array_equal(a, b)
    assert histories[1][2] and not histories[0][2]
    # predict and evaluate are recorded and replayed too: the same outputs, call after call
    np.testing.assert_array_equal(histories[0][3], histories[1][3])
    # (fit made the stores of a 16-sample batch: the first predict call is already recorded)
    assert histories[1][4] == [False, True, True]


def test_the_profiled_step_is_replayed() -> None:
    """profile_step warms up twice, so the step it measures is re-issued from a recording as
    training's steps are, and says so."""
    keras.utils.set_random_seed(5)
    inp = keras.Input((12,))
    h = keras.layers.Dense(16, activation="relu")(inp)
    out = keras.layers.Dense(3)(h)
    model = keras.Model(inp, out)
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    prof = model.profile_step(rng.standard_normal((32, 12)).astype(np.float32),
                              rng.integers(0, 3, 32), verbose=False)
    assert prof.replayed
    assert "re-issued from its recording" in prof.table()
    assert prof.kernels and prof.tasks >= 1


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "one_task_per_launch"])
def test_a_recording_issued_again_does_the_same_work(fused: bool) -> None:
    """The profiling API's record / reissue (what calibration times a replayed step's host cost
    with): issuing a recording again repeats its launches on the same stores, fused groups and
    lone launches alike; a recording that made a store is refused (None)."""
    from unity_legion.executor.executor import read
    from unity_legion.operators.base import SAMPLE, Ref, RefKind
    from unity_legion.operators.glue import accumulate_launch

    ex = GraphExecutor(ComputationGraph(), [])
    ex.fusion = fused
    total = ex.new_store(TensorShape((8, 4)), 0.0)
    part = ex.new_store(TensorShape((8, 4)), 1.5)
    t, p = Ref(RefKind.OUTPUT, 0), Ref(RefKind.INPUT, 0)

    def three() -> None:
        for _ in range(3):
            ex.launch(accumulate_launch(t, p, 2), {t: total, p: part}, {SAMPLE: 2})

    trace = ex.record(three)
    assert trace is not None and trace.launches == 3
    ex.reissue(trace)
    ex.reissue(trace)
    ex.fence()
    np.testing.assert_array_equal(read(total), np.full((8, 4), 1.5 * 9, np.float32))
    assert ex.record(lambda: ex.new_store(TensorShape((2,)), 0.0)) is None


def test_windowed_launches_replay_with_the_new_batch() -> None:
    """A convolution split by height reads its input through halo windows, one launch per
    spatial tile, each a task of its own (never fused): those are recorded as launches and
    issued again with the step's new batch; training equals the walked run."""
    from unity_legion.operators.conv2d import Conv2D
    from unity_legion.operators.pooling import GlobalAvgPool2D

    runs = []
    for replay in (False, True):
        g = ComputationGraph()
        x = g.add_input(TensorShape((None, 12, 10, 3)), "img")
        (h,) = g.add_node(Conv2D(4, 3, padding="same"), [x], "conv")
        (h,) = g.add_node(GlobalAvgPool2D(), [h], "pool")
        (o,) = g.add_node(Linear(5), [h], "out")
        ex = GraphExecutor(g, [o], seed=3)
        ex.replay = replay
        conv = next(n for n in ex.nodes if n.name == "conv")
        ex.set_plan({conv.id: OpConfig.of({"height": 2}, MachineView.contiguous("cpu", 0, 2))})
        rng = np.random.default_rng(0)
        for key, spec in ex.weight_specs():
            ex.set_weight(key, 0.3 * rng.standard_normal(spec.shape.dims).astype(np.float32))
        losses = []
        for s in range(1, 5):
            xs = rng.standard_normal((6, 12, 10, 3)).astype(np.float32)
            ys = rng.integers(0, 5, 6)
            losses.append(ex.train_step({x: xs}, [ys], OBJ, SGDRule(), 0.05, s).mean_loss)
        runs.append((losses, _weights(ex), ex.replayed,
                     [type(op).__name__ for t in ex._traces.values() for op in t.ops]))
    assert runs[0][0] == runs[1][0]
    for k in runs[0][1]:
        np.testing.assert_array_equal(runs[0][1][k], runs[1][1][k])
    assert runs[1][2] and "_Launch" in runs[1][3]


def _local_slots(ex: GraphExecutor) -> int:
    return sum(a is Access.LOCAL for trace in ex._traces.values() for op in trace.ops
               for a in getattr(op, "access", ()))


@pytest.mark.parametrize("plan,batch", [("default", 10), ("serial", 10), ("default", 9)])
def test_a_tasks_own_temporaries_change_no_result(plan: str, batch: int) -> None:
    """Replays that keep a fused task's own temporaries in the task (Access.LOCAL: no store
    bound) train, evaluate and predict bit for bit as replays that bind every store; the
    losses read back (written and read as guards by the same one-point task) stay stores. A
    batch of 9 over two processors gives pieces of 5 and 4 rows: those stay bound."""
    runs = []
    for local in (False, True):
        ex, x = _executor(True, plan)
        ex.local_temporaries = local
        rng = np.random.default_rng(4)
        out = []
        for s in range(1, 7):
            xs = rng.standard_normal((batch, 12)).astype(np.float32)
            ys = rng.integers(0, 5, batch)
            out.append(ex.train_step({x: xs}, [ys], OBJ, AdamRule(), 0.01, s).mean_loss)
            if s == 4:
                out.append(ex.evaluate_step({x: xs}, [ys], OBJ).mean_loss)
        runs.append((out, _weights(ex), ex.slot_values(), _local_slots(ex)))
    (o0, w0, s0, n0), (o1, w1, s1, n1) = runs
    assert o0 == o1
    for k in w0:
        np.testing.assert_array_equal(w0[k], w1[k])
    for k in s0:
        np.testing.assert_array_equal(s0[k], s1[k])
    # (every temporary of this model is split by samples: none at 5 and 4 rows)
    assert n0 == 0 and (n1 > 0) == (batch % 2 == 0)


def test_only_uniform_pieces_become_temporaries() -> None:
    """A temporary is allocated at one shape on every point: a tiling with a short edge piece
    keeps its store."""
    assert _uniform_piece((10, 12), (5, 12)) == (5, 12)
    assert _uniform_piece((10, 12), None) == (10, 12)
    assert _uniform_piece((10, 12), (16, 12)) == (10, 12)
    assert _uniform_piece((9, 12), (5, 12)) is None


def test_forgetting_the_recordings_frees_their_temporaries() -> None:
    """Each processor thread keeps a task's temporaries from step to step; dropping the
    recordings (a new plan, a replaced weight) frees them."""
    from unity_legion.executor.tasks import LOCAL_BUFFERS

    ex, x = _executor(True)
    for s, (xs, ys) in enumerate(_batches(4), start=1):
        ex.train_step({x: xs}, [ys], OBJ, SGDRule(), 0.05, s)
    programs = [p for trace in ex._traces.values() for p in trace.local_programs()]
    assert programs and all(LOCAL_BUFFERS[p] for p in programs)
    ex.forget_traces()
    assert not any(LOCAL_BUFFERS[p] for p in programs)
