"""A step's losses and metrics posted to the host by its own tasks (executor/posted.py; over
several ranks each rank's, shared) instead of read back from their stores: the same numbers, no
store read during fit or evaluate, every box closed after each call; and the simulator ends such
a step with a fence (RuntimeSpec.posted_sync) instead of a read."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from unity_legion import keras
from unity_legion.executor import executor as executor_mod
from unity_legion.executor import posted
from unity_legion.pcg.pipeline import PipelineSpec, Stage
from unity_legion.strategy import Strategy
from unity_legion.types import MachineView, OpConfig


def _trained(make_mlp, x, y, monkeypatch, posts: bool, strategy: Any, group: int):
    """`strategy`: compile's, or a function of the model that makes it."""
    monkeypatch.setenv("UNITY_LEGION_POSTED", "1" if posts else "0")
    keras.utils.set_random_seed(3)
    model = make_mlp()
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], strategy=strategy(model) if callable(strategy)
                  else strategy, steps_per_execution=group)
    reads = []
    real_read = executor_mod.read

    def counted(*args, **kwargs):
        reads.append(args[0])
        return real_read(*args, **kwargs)

    monkeypatch.setattr(executor_mod, "read", counted)
    # 37 samples, batch 4: the last batch of each epoch has one sample (a shorter launch)
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0, validation_split=0.2)
    evaluated = model.evaluate(x, y, batch_size=5, verbose=0)
    monkeypatch.setattr(executor_mod, "read", real_read)
    assert model._executor.posts is posts
    assert posted.open_boxes() == 0
    return model, history, evaluated, len(reads)


@pytest.mark.parametrize("strategy", ["serial", "data_parallel"])
@pytest.mark.parametrize("group", [1, 3])
def test_posted_losses_and_metrics_equal_the_read_ones(make_mlp, cls_data, monkeypatch,
                                                       strategy: str, group: int) -> None:
    x, y = cls_data
    post, h_post, ev_post, reads_post = _trained(make_mlp, x, y, monkeypatch, True, strategy,
                                                 group)
    read, h_read, ev_read, reads_read = _trained(make_mlp, x, y, monkeypatch, False, strategy,
                                                 group)
    assert h_post.history == h_read.history          # the same float64 values, bit for bit
    assert ev_post == ev_read
    for a, b in zip(post.get_weights(), read.get_weights()):
        np.testing.assert_array_equal(a, b)
    # posted: nothing read back (read: a loss and a metric per step)
    assert reads_post == 0 < reads_read


def _two_stages(model: keras.Model) -> Strategy:
    """The first Dense on processor 0, the rest on processor 1, 3 micro-batches (1F1B)."""
    names = [n.name for n in model.graph.nodes]
    spec = PipelineSpec((Stage("front", tuple(names[:1]), (0,)),
                         Stage("back", tuple(names[1:]), (1,))), 3, "1f1b")
    cfgs = {n: OpConfig.of({}, MachineView("cpu", 0 if i < 1 else 1, (1,), (1,)))
            for i, n in enumerate(names)}
    return Strategy.for_graph(model, cfgs, devices=2, pipeline=spec)


@pytest.mark.parametrize("group", [1, 3])
def test_a_pipelined_step_posts_each_micro_batchs_losses(make_mlp, cls_data, monkeypatch,
                                                         group: int) -> None:
    # (every micro-batch's loss and metric to the step's box: the values read back before,
    # nothing read; a last batch of one sample: one micro-batch)
    x, y = cls_data
    post, h_post, ev_post, reads_post = _trained(make_mlp, x, y, monkeypatch, True,
                                                 _two_stages, group)
    read, h_read, ev_read, reads_read = _trained(make_mlp, x, y, monkeypatch, False,
                                                 _two_stages, group)
    assert post._executor.pipeline is not None
    assert h_post.history == h_read.history and ev_post == ev_read
    for a, b in zip(post.get_weights(), read.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert reads_post == 0 < reads_read


def test_a_box_left_unfilled_once_every_task_has_run_is_an_error(make_mlp, cls_data,
                                                                 monkeypatch) -> None:
    # (the host takes a box once every task of the step has run; one still short then names
    # what is missing)
    x, y = cls_data
    model, *_ = _trained(make_mlp, x, y, monkeypatch, True, "serial", 1)
    ex = model._executor
    posts = next(t.posts for t in ex._traces.values() if t.posts)   # a recorded step's
    store = next(st for st, _key in posts.values())
    box = posted.open_box()
    ex._box_posts[box.number] = posts
    try:
        with pytest.raises(RuntimeError, match="did not post every loss and metric"):
            ex._take_posted(box, [store], 4)
    finally:
        posted.close_box(box)


def test_the_executor_keeps_no_posted_store_of_a_step_it_does_not_replay(
        make_mlp, cls_data, monkeypatch) -> None:
    # (steps walked every time, replay off: each makes new loss and metric stores; a map of
    # posted stores kept for the executor's life held every one of them)
    monkeypatch.setenv("UNITY_LEGION_REPLAY", "0")
    x, y = cls_data
    model, history, _ev, reads = _trained(make_mlp, x, y, monkeypatch, True, "data_parallel", 1)
    ex = model._executor
    assert not ex.replay and reads == 0
    _holds_the_last_calls_posts_only(ex)
    monkeypatch.setenv("UNITY_LEGION_REPLAY", "1")
    replayed, h_replayed, *_ = _trained(make_mlp, x, y, monkeypatch, True, "data_parallel", 1)
    assert history.history == h_replayed.history
    _holds_the_last_calls_posts_only(replayed._executor)


def _holds_the_last_calls_posts_only(ex) -> None:
    # (the last call's boxes are dropped when the next call starts; a step posts a loss and a
    # metric)
    assert set(ex._box_posts) <= {box.number for box in ex._boxes}
    assert sum(len(p) for p in ex._box_posts.values()) <= 2 * len(ex._boxes) <= 2 * 8


def test_a_box_counts_each_piece_once_and_orders_them_by_row() -> None:
    box = posted.open_box()
    try:
        assert not box.holds({7: 5})
        box.put(7, 3, np.array([3.0, 4.0]))
        box.put(7, 0, np.array([0.0, 1.0, 2.0]))
        box.put(7, 3, np.array([3.0, 4.0]))   # a replicated launch posts its rows again
        assert box.holds({7: 5})
        np.testing.assert_array_equal(box.value(7, 5), [0.0, 1.0, 2.0, 3.0, 4.0])
        assert not box.holds({7: 5, 8: 1})
    finally:
        posted.close_box(box)
    assert posted.open_boxes() == 0


def test_a_post_to_a_closed_box_is_dropped() -> None:
    box = posted.open_box()
    posted.close_box(box)
    posted.post_rows.fn(np.ones(3), box.number, 0, (0,))
    assert not box.holds({0: 3})


def test_the_simulator_ends_a_posted_step_with_a_fence() -> None:
    from unity_legion.cost import MachineError, Simulator, preset
    from unity_legion.cost.machine import RuntimeSpec
    from unity_legion.operators.linear import Linear
    from unity_legion.pcg.graph import ComputationGraph
    from unity_legion.types import MachineView, OpConfig, TensorShape

    g = ComputationGraph()
    t = g.add_input(TensorShape((None, 32)), "x")
    (t,) = g.add_node(Linear(16), [t], "fc")
    g.set_outputs([t])
    serial = OpConfig.of({"sample": 1}, MachineView.contiguous("cpu", 0, 1))
    base = preset("local")

    def step(**runtime) -> float:
        m = replace(base, runtime=replace(base.runtime, **runtime))
        return Simulator(m, optimizer_slots=0).simulate(g, 64, {}, None, serial).step_time

    read = step(sync=0.05)
    assert step(sync=0.05, posted_sync=0.0) == pytest.approx(read - 0.05)
    assert step(sync=0.05, posted_sync=0.01) == pytest.approx(read - 0.04)
    with pytest.raises(MachineError, match="posted_sync must be a number >= 0 or null"):
        RuntimeSpec(posted_sync=-1.0)


_TWO_RANKS = r"""
import os
import sys
import numpy as np
from unity_legion import keras
from unity_legion.executor import executor as executor_mod, posted
from unity_legion.runtime import machine_info
sys.path.insert(0, TESTS)
from test_posted import _two_stages
from unity_legion.strategy import Strategy
from unity_legion.types import MachineView, OpConfig

rng = np.random.default_rng(0)
x = rng.normal(size=(37, 6)).astype(np.float32)
y = rng.integers(0, 3, size=37)
reads = []
real_read = executor_mod.read
def counted(*args, **kwargs):
    reads.append(args[0])
    return real_read(*args, **kwargs)
executor_mod.read = counted

def on(device):
    def strategy(model):
        view = MachineView("cpu", device, (1,), (1,))
        return Strategy.for_graph(model, {n.name: OpConfig.of({}, view)
                                          for n in model.graph.nodes}, devices=2)
    return strategy

cases = {"data_parallel": lambda model: "data_parallel", "on_rank1": on(1), "pipe": _two_stages}
for name, strategy_of in cases.items():
    for group in (1, 3):
        runs = {}
        for posts in ("1", "0"):
            os.environ["UNITY_LEGION_POSTED"] = posts
            keras.utils.set_random_seed(3)
            model = keras.Sequential([keras.Input(shape=(6,)),
                                      keras.layers.Dense(8, activation="relu"),
                                      keras.layers.Dense(3)])
            model.compile(optimizer=keras.optimizers.SGD(0.05),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          metrics=["accuracy"], strategy=strategy_of(model),
                          steps_per_execution=group)
            del reads[:]
            h = model.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False)
            ev = model.evaluate(x, y, batch_size=5, verbose=0)
            n = len(reads)
            runs[posts] = (h.history, ev, model.get_weights(), n)
            assert posted.open_boxes() == 0
        (h1, e1, w1, r1), (h0, e0, w0, r0) = runs["1"], runs["0"]
        assert h1 == h0 and e1 == e0, (name, group, h1, h0, e1, e0)
        for a, b in zip(w1, w0):
            np.testing.assert_array_equal(a, b)
        assert r1 == 0 < r0, (name, r1, r0)
        if machine_info().rank == 0:
            print("POSTED-OK", name, group, flush=True)
"""


@pytest.mark.slow
def test_two_ranks_post_their_own_rows_and_share_them(tmp_path) -> None:
    # (2 ranks x 1 CPU over loopback: each rank's tasks post to that rank's box, the ranks
    # exchange what they hold; the samples split over both ranks, everything on rank 1's
    # processor, a stage on each rank: the values read back before, nothing read)
    import sys
    from pathlib import Path

    from launch import REPO, run_with_env

    script = tmp_path / "posted_two_ranks.py"
    script.write_text(_TWO_RANKS.replace("TESTS", repr(str(Path(__file__).parent))))
    mpirun = Path(sys.prefix) / "bin" / "mpirun"
    proc = run_with_env([str(mpirun), "-np", "2", "--oversubscribe", "--bind-to", "none",
                         sys.executable, str(script)], REPO, "--cpus 1 --sysmem 1000", 900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    oks = [ln.split()[1:] for ln in proc.stdout.splitlines() if ln.startswith("POSTED-OK")]
    assert oks == [[name, g] for name in ("data_parallel", "on_rank1", "pipe")
                   for g in ("1", "3")], out[-4000:]
