"""GraphExecutor: gradient accumulation over several consumers, skipped non-finite steps, the
row-split optimizer update, and batches smaller than the processor count; PyTorch as oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import unity_legion.executor.executor as exmod
from grad_capture import CaptureGrads, captured_grads
from unity_legion.executor.executor import GraphExecutor, Objective
from unity_legion.executor.launcher import effective_degree
from unity_legion.operators.base import SAMPLE
from unity_legion.operators.linear import Linear
from unity_legion.operators.losses import (CategoricalCrossentropy, MeanSquaredError,
                                           SparseCategoricalCrossentropy)
from unity_legion.operators.optimizers import ROWS, AdamRule, SGDRule
from unity_legion.pcg import ComputationGraph
from unity_legion.runtime import machine_info
from unity_legion.types import TensorShape

RTOL = 1e-4
CE = SparseCategoricalCrossentropy(from_logits=True)


def set_random_weights(ex: GraphExecutor, seed: int, scale: float = 0.7) -> dict:
    rng = np.random.default_rng(seed)
    weights = {}
    for key, spec in ex.weight_specs():
        weights[key] = (rng.normal(size=spec.shape.dims) * scale).astype(np.float32)
        ex.set_weight(key, weights[key])
    return weights


def tparams(weights: dict) -> dict:
    return {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in weights.items()}


def dense(tw: dict, node: int, x: torch.Tensor) -> torch.Tensor:
    return x @ tw[(node, "kernel")] + tw[(node, "bias")]


def assert_grads(ex: GraphExecutor, tw: dict) -> None:
    """The gradients the last train_step (run with CaptureGrads) computed, against torch's."""
    grads = captured_grads(ex)
    assert set(grads) == set(tw)
    for key, t in tw.items():
        np.testing.assert_allclose(grads[key], t.grad.numpy(), rtol=RTOL, atol=1e-6,
                                   err_msg=f"gradient of {key}")


@pytest.fixture
def launches(monkeypatch):
    """Records (kernel name, degrees) of every launch the executor submits."""
    seen: list[tuple[str, dict]] = []
    real = exmod.GraphExecutor._issue

    def spy(self, launch, stores, degrees, *rest):
        seen.append((launch.kernel.name, dict(degrees)))
        return real(self, launch, stores, degrees, *rest)

    monkeypatch.setattr(exmod.GraphExecutor, "_issue", spy)
    return seen


# ---------------------------------------------------------------------------------------------
# gradient accumulation
# ---------------------------------------------------------------------------------------------

def test_hidden_tensor_with_two_consumers() -> None:
    """x -> h (relu) -> a and h -> b, each output with its own loss: dL/dh is the sum of both
    consumers' contributions, so the first layer's gradient needs both."""
    g = ComputationGraph()
    xin = g.add_input(TensorShape((None, 4)), "x")
    (h,) = g.add_node(Linear(5, activation="relu"), [xin], "h")
    (a,) = g.add_node(Linear(3), [h], "a")
    (b,) = g.add_node(Linear(2), [h], "b")
    ex = GraphExecutor(g, [a, b])
    weights = set_random_weights(ex, 0)
    rng = np.random.default_rng(1)
    batch = 9
    xs = rng.normal(size=(batch, 4)).astype(np.float32)
    lab = rng.integers(0, 3, batch)
    yb = rng.normal(size=(batch, 2)).astype(np.float32)
    obj = Objective((CE, MeanSquaredError()), ((), ()), loss_weights=(1.0, 0.5))
    res = ex.train_step({xin: xs}, [lab, yb], obj, CaptureGrads(), 0.0, 1)

    tw = tparams(weights)
    th = torch.relu(dense(tw, 0, torch.tensor(xs, dtype=torch.float64)))
    la = torch.nn.functional.cross_entropy(dense(tw, 1, th), torch.tensor(lab), reduction="none")
    lb = ((dense(tw, 2, th) - torch.tensor(yb, dtype=torch.float64)) ** 2).mean(-1)
    per = la + 0.5 * lb
    per.mean().backward()
    np.testing.assert_allclose(res.loss, per.detach().numpy(), rtol=RTOL)
    assert_grads(ex, tw)
    # the first layer's gradient is not what either branch alone gives
    tw_a = tparams(weights)
    th_a = torch.relu(dense(tw_a, 0, torch.tensor(xs, dtype=torch.float64)))
    torch.nn.functional.cross_entropy(dense(tw_a, 1, th_a), torch.tensor(lab)).backward()
    assert not np.allclose(captured_grads(ex)[(0, "kernel")], tw_a[(0, "kernel")].grad.numpy(),
                           rtol=1e-3)


def test_output_that_is_also_consumed() -> None:
    """h is a model output (with a loss) and also the input of the next layer."""
    g = ComputationGraph()
    xin = g.add_input(TensorShape((None, 3)), "x")
    (h,) = g.add_node(Linear(4, activation="tanh"), [xin], "h")
    (a,) = g.add_node(Linear(3), [h], "a")
    ex = GraphExecutor(g, [h, a])
    weights = set_random_weights(ex, 2)
    rng = np.random.default_rng(3)
    batch = 13
    xs = rng.normal(size=(batch, 3)).astype(np.float32)
    yh = rng.normal(size=(batch, 4)).astype(np.float32)
    ya = np.eye(3, dtype=np.float32)[rng.integers(0, 3, batch)]
    obj = Objective((MeanSquaredError(), CategoricalCrossentropy(from_logits=True)), ((), ()))
    res = ex.train_step({xin: xs}, [yh, ya], obj, CaptureGrads(), 0.0, 1)

    tw = tparams(weights)
    th = torch.tanh(dense(tw, 0, torch.tensor(xs, dtype=torch.float64)))
    lh = ((th - torch.tensor(yh, dtype=torch.float64)) ** 2).mean(-1)
    la = -(torch.tensor(ya, dtype=torch.float64) * torch.log_softmax(dense(tw, 1, th), -1)).sum(-1)
    (lh + la).mean().backward()
    np.testing.assert_allclose(res.loss, (lh + la).detach().numpy(), rtol=RTOL)
    assert_grads(ex, tw)


def test_same_tensor_as_two_outputs() -> None:
    """One tensor listed twice as an output, with two different losses."""
    g = ComputationGraph()
    xin = g.add_input(TensorShape((None, 3)), "x")
    (a,) = g.add_node(Linear(4), [xin], "a")
    ex = GraphExecutor(g, [a, a])
    weights = set_random_weights(ex, 4)
    rng = np.random.default_rng(5)
    batch = 9
    xs = rng.normal(size=(batch, 3)).astype(np.float32)
    lab = rng.integers(0, 4, batch)
    ya = rng.normal(size=(batch, 4)).astype(np.float32)
    obj = Objective((CE, MeanSquaredError()), ((), ()), loss_weights=(0.3, 2.0))
    res = ex.train_step({xin: xs}, [lab, ya], obj, CaptureGrads(), 0.0, 1)
    tw = tparams(weights)
    z = dense(tw, 0, torch.tensor(xs, dtype=torch.float64))
    per = (0.3 * torch.nn.functional.cross_entropy(z, torch.tensor(lab), reduction="none")
           + 2.0 * ((z - torch.tensor(ya, dtype=torch.float64)) ** 2).mean(-1))
    per.mean().backward()
    np.testing.assert_allclose(res.loss, per.detach().numpy(), rtol=RTOL)
    assert_grads(ex, tw)


def test_graph_input_with_two_consumers_input_grads() -> None:
    """With input_grads=True the gradient of an input read by two layers is the sum."""
    g = ComputationGraph()
    xin = g.add_input(TensorShape((None, 5)), "x")
    (a,) = g.add_node(Linear(3, activation="sigmoid"), [xin], "a")
    (b,) = g.add_node(Linear(2), [xin], "b")
    ex = GraphExecutor(g, [a, b], input_grads=True)
    weights = set_random_weights(ex, 6)
    rng = np.random.default_rng(7)
    batch = 7
    xs = rng.normal(size=(batch, 5)).astype(np.float32)
    ga = rng.normal(size=(batch, 3)).astype(np.float32)
    gb = rng.normal(size=(batch, 2)).astype(np.float32)
    outs, in_grads, w_grads = ex.gradients({xin: xs}, [ga, gb])

    tw = tparams(weights)
    tx = torch.tensor(xs, dtype=torch.float64, requires_grad=True)
    ta = torch.sigmoid(dense(tw, 0, tx))
    tb = dense(tw, 1, tx)
    ((ta * torch.tensor(ga, dtype=torch.float64)).sum()
     + (tb * torch.tensor(gb, dtype=torch.float64)).sum()).backward()
    np.testing.assert_allclose(outs[0], ta.detach().numpy(), rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(outs[1], tb.detach().numpy(), rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(in_grads[xin], tx.grad.numpy(), rtol=RTOL, atol=1e-6)
    for key, t in tw.items():
        np.testing.assert_allclose(w_grads[key], t.grad.numpy(), rtol=RTOL, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# non-finite loss
# ---------------------------------------------------------------------------------------------

def _mlp(seed: int) -> tuple[GraphExecutor, int, dict]:
    g = ComputationGraph()
    xin = g.add_input(TensorShape((None, 4)), "x")
    (h,) = g.add_node(Linear(5, activation="relu"), [xin], "d1")
    (o,) = g.add_node(Linear(3), [h], "d2")
    ex = GraphExecutor(g, [o])
    return ex, xin, set_random_weights(ex, seed)


def _mlp_torch_grads(weights: dict, xs: np.ndarray, ys: np.ndarray) -> dict:
    """Float64 gradients of _mlp's mean sparse CE (from logits) at `weights`."""
    tw = tparams(weights)
    out = dense(tw, 1, torch.relu(dense(tw, 0, torch.tensor(xs, dtype=torch.float64))))
    torch.nn.functional.cross_entropy(out, torch.tensor(ys)).backward()
    return {k: t.grad.numpy() for k, t in tw.items()}


@pytest.mark.parametrize("poison", ["inf_input", "nan_input", "nan_target"])
def test_non_finite_loss_leaves_weights_and_slots_untouched(poison: str) -> None:
    rng = np.random.default_rng(8)
    batch = 9
    x1, x2 = (rng.normal(size=(batch, 4)).astype(np.float32) for _ in range(2))
    y1, y2 = (rng.normal(size=(batch, 3)).astype(np.float32) for _ in range(2))
    obj = Objective((MeanSquaredError(),), ((),))
    rule = AdamRule()

    ex, xin, _ = _mlp(9)
    ex.train_step({xin: x1}, [y1], obj, rule, 0.01, 1)
    before_w = {k: ex.get_weight(k) for k, _ in ex.weight_specs()}
    before_s = ex.optimizer_state()
    bad_x, bad_y = x2.copy(), y2.copy()
    if poison == "inf_input":
        bad_x[4, 1] = np.inf
    elif poison == "nan_input":
        bad_x[8, 0] = np.nan
    else:
        bad_y[0, 2] = np.nan
    if poison == "nan_target":
        # numpy targets are checked before anything launches
        with pytest.raises(ValueError, match="NaN or infinite"):
            ex.train_step({xin: bad_x}, [bad_y], obj, rule, 0.01, 2)
    else:
        res = ex.train_step({xin: bad_x}, [bad_y], obj, rule, 0.01, 2)
        assert res.applied is False
        assert not np.all(np.isfinite(res.loss))
    for k, v in before_w.items():
        np.testing.assert_array_equal(ex.get_weight(k), v)
    after_s = ex.optimizer_state()
    for k, v in before_s.items():
        np.testing.assert_array_equal(after_s[k], v)
    # the skipped step left no trace: the next step equals that of a run that never saw it
    res2 = ex.train_step({xin: x2}, [y2], obj, rule, 0.01, 2)
    assert res2.applied
    clean, cxin, _ = _mlp(9)
    clean.train_step({cxin: x1}, [y1], obj, rule, 0.01, 1)
    clean.train_step({cxin: x2}, [y2], obj, rule, 0.01, 2)
    for k, _ in ex.weight_specs():
        np.testing.assert_array_equal(ex.get_weight(k), clean.get_weight(k))


# ---------------------------------------------------------------------------------------------
# row-split updates and tiny batches
# ---------------------------------------------------------------------------------------------

def test_update_split_by_rows_with_odd_row_counts(launches) -> None:
    """Weights of 5, 3 and 1 rows (kernel (5,3), bias (3,), kernel (3,1), bias (1,)) updated
    with their rows split over the processors; AdamW, 4 steps, against torch."""
    procs = machine_info().processors
    if procs < 2:
        pytest.fail("needs at least 2 processors: run with LEGATE_CONFIG='--cpus 2' (make test does)")
    g = ComputationGraph()
    xin = g.add_input(TensorShape((None, 5)), "x")
    (h,) = g.add_node(Linear(3, activation="relu"), [xin], "d1")
    (o,) = g.add_node(Linear(1), [h], "d2")
    ex = GraphExecutor(g, [o])
    weights = set_random_weights(ex, 10)
    rng = np.random.default_rng(11)
    batch = 11
    xs = rng.normal(size=(batch, 5)).astype(np.float32)
    ys = rng.normal(size=(batch,)).astype(np.float32)
    obj = Objective((MeanSquaredError(),), ((),))
    rule = AdamRule(epsilon=1e-12, weight_decay=0.05)
    for step in range(1, 5):
        assert ex.train_step({xin: xs}, [ys], obj, rule, 0.02, step).applied

    updates = [d[ROWS] for name, d in launches if name == "optimizers.adam_update"]
    # (updates go grouped by layout so that they fuse: compare as multisets)
    assert sorted(updates[:4]) == sorted(effective_degree(r, procs) for r in (5, 3, 3, 1))
    assert sorted(updates[:4]) == [1, 2, 2, 2]  # 3 rows over 2 processors: pieces of 2 and 1

    tw = {k: torch.tensor(v, requires_grad=True) for k, v in weights.items()}
    opt = torch.optim.AdamW(list(tw.values()), lr=0.02, eps=1e-12, weight_decay=0.05)
    tx, ty = torch.tensor(xs), torch.tensor(ys)
    for _ in range(4):
        opt.zero_grad()
        out = dense(tw, 1, torch.relu(dense(tw, 0, tx)))
        ((out[:, 0] - ty) ** 2).mean().backward()
        opt.step()
    for k, t in tw.items():
        np.testing.assert_allclose(ex.get_weight(k), t.detach().numpy(), rtol=RTOL, atol=1e-5,
                                   err_msg=f"weight {k}")


@pytest.mark.parametrize("batch", [1, 3])
def test_train_step_small_batch(batch: int, launches) -> None:
    """Batch 1 (fewer samples than processors) and 3 (uneven): two momentum-SGD steps."""
    ex, xin, weights = _mlp(12)
    rng = np.random.default_rng(13)
    xs = rng.normal(size=(batch, 4)).astype(np.float32)
    ys = rng.integers(0, 3, batch)
    obj = Objective((CE,), ((),))
    results = [ex.train_step({xin: xs}, [ys], obj, SGDRule(momentum=0.9), 0.3, s) for s in (1, 2)]

    sample_degrees = {d[SAMPLE] for name, d in launches if SAMPLE in d}
    assert sample_degrees == {effective_degree(batch, machine_info().processors)}
    if batch == 1:
        assert sample_degrees == {1}

    tw = {k: torch.tensor(v, requires_grad=True) for k, v in weights.items()}
    opt = torch.optim.SGD(list(tw.values()), lr=0.3, momentum=0.9)
    tlosses = []
    for _ in range(2):
        opt.zero_grad()
        per = torch.nn.functional.cross_entropy(
            dense(tw, 1, torch.relu(dense(tw, 0, torch.tensor(xs)))), torch.tensor(ys),
            reduction="none")
        tlosses.append(per.detach().numpy().copy())
        per.mean().backward()
        opt.step()
    for res, tl in zip(results, tlosses):
        assert res.applied and res.batch == batch and res.loss.shape == (batch,)
        np.testing.assert_allclose(res.loss, tl, rtol=RTOL)
    for k, t in tw.items():
        np.testing.assert_allclose(ex.get_weight(k), t.detach().numpy(), rtol=RTOL, atol=1e-6)
        assert not np.array_equal(ex.get_weight(k), weights[k])


def test_frozen_weights_then_unfrozen() -> None:
    """Frozen weights stay put while the rest trains; unfreezing them later (same rule, no
    reset) gives them fresh zero slots instead of failing on missing optimizer state."""
    ex, xin, weights = _mlp(14)
    rng = np.random.default_rng(15)
    xs = rng.normal(size=(9, 4)).astype(np.float32)
    ys = rng.integers(0, 3, 9)
    obj = Objective((CE,), ((),))
    rule = AdamRule()
    first = [(0, "kernel"), (0, "bias")]
    ex.set_frozen(first)
    for step in (1, 2):
        assert ex.train_step({xin: xs}, [ys], obj, rule, 0.01, step).applied
    for k in first:
        np.testing.assert_array_equal(ex.get_weight(k), weights[k])
    for k in [(1, "kernel"), (1, "bias")]:
        assert not np.array_equal(ex.get_weight(k), weights[k])

    ex.set_frozen([])
    before = {k: ex.get_weight(k).astype(np.float64) for k in weights}
    old_state = ex.optimizer_state()
    grads = _mlp_torch_grads(before, xs, ys)
    assert ex.train_step({xin: xs}, [ys], obj, rule, 0.01, 3).applied
    state = ex.optimizer_state()
    for k in weights:
        g = grads[k]
        name = f"{ex.graph.nodes[k[0]].name}/{k[1]}"
        if k in first:  # fresh slots: m = 0.1 g, v = 0.001 g^2 after this step
            m0 = np.zeros_like(g)
            v0 = np.zeros_like(g)
        else:
            m0, v0 = old_state[name + "/m"], old_state[name + "/v"]
        m = m0 + (g - m0) * 0.1
        v = v0 + (g * g - v0) * 0.001
        np.testing.assert_allclose(state[name + "/m"], m, rtol=1e-5, atol=1e-9)
        lr_t = 0.01 * np.sqrt(1 - 0.999 ** 3) / (1 - 0.9 ** 3)
        np.testing.assert_allclose(ex.get_weight(k), before[k] - lr_t * m / (np.sqrt(v) + 1e-7),
                                   rtol=1e-5, atol=1e-6, err_msg=f"weight {k}")


def test_weight_gradients_do_not_leak_between_steps() -> None:
    """Weight gradients are ADD reductions: each step must start them from zero, whatever ran
    before (another step, gradients(), a freeze and unfreeze in between)."""
    ex, xin, _ = _mlp(16)
    rng = np.random.default_rng(17)
    xs = rng.normal(size=(9, 4)).astype(np.float32)
    ys = rng.integers(0, 3, 9)
    obj = Objective((CE,), ((),))

    def step() -> dict:
        assert ex.train_step({xin: xs}, [ys], obj, CaptureGrads(), 0.0, 1).applied
        return captured_grads(ex)

    ref = step()
    assert all(np.any(v != 0) for v in ref.values())
    sequences = {
        "again": lambda: None,
        "after gradients()": lambda: ex.gradients({xin: xs}, [np.ones((9, 3), np.float32)]),
    }
    for what, before in sequences.items():
        before()
        got = step()
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-6, atol=1e-8, err_msg=f"{what} {k}")
    # gradients() leaves every gradient filled; a step with d1 frozen trains (and zeroes) only
    # d2's; once unfrozen, d1's gradient must not start from the gradients() leftovers
    ex.gradients({xin: xs}, [np.ones((9, 3), np.float32)])
    ex.set_frozen([(0, "kernel"), (0, "bias")])
    step()
    ex.set_frozen([])
    got = step()
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-6, atol=1e-8, err_msg=f"unfrozen {k}")


def test_targets_must_match_outputs_and_batch() -> None:
    ex, xin, _ = _mlp(9)
    obj = Objective((MeanSquaredError(),), ((),))
    x = np.zeros((5, 4), np.float32)
    with pytest.raises(ValueError, match="1 output"):
        ex.train_step({xin: x}, [], obj, AdamRule(), 0.01, 1)
    with pytest.raises(ValueError, match="4 samples, the inputs 5"):
        ex.train_step({xin: x}, [np.zeros((4, 3), np.float32)], obj, AdamRule(), 0.01, 1)


def test_tensor_fed_twice_to_one_operator_and_to_another_gets_every_gradient() -> None:
    """h feeds Subtract twice (h - h) and a later Add: the backward of Subtract writes two
    different partial gradients of h (+d, -d) while h already has one from Add; all three must
    be summed (a shared scratch for both partials once lost one of them)."""
    from unity_legion.operators.elementwise import Add, Subtract

    rng = np.random.default_rng(3)
    g = ComputationGraph()
    x_id = g.add_input(TensorShape((None, 4)), "x")
    (h,) = g.add_node(Linear(3, use_bias=False), [x_id], "dense")
    (zero,) = g.add_node(Subtract(), [h, h], "zero")
    (out,) = g.add_node(Add(), [zero, h], "sum")
    ex = GraphExecutor(g, [out], input_grads=True)
    kernel = rng.standard_normal((4, 3)).astype(np.float32)
    ex.set_weight((0, "kernel"), kernel)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    d_out = rng.standard_normal((5, 3)).astype(np.float32)
    _, in_grads, w_grads = ex.gradients({x_id: x}, [d_out])
    tx = torch.tensor(x, requires_grad=True)
    tk = torch.tensor(kernel, requires_grad=True)
    th = tx @ tk
    (th - th + th).backward(torch.tensor(d_out))
    np.testing.assert_allclose(w_grads[(0, "kernel")], tk.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(in_grads[x_id], tx.grad.numpy(), rtol=1e-4, atol=1e-5)



# ---------------------------------------------------------------------------------------------
# the same operations in the same order on every rank
# ---------------------------------------------------------------------------------------------

# Attention split by heads writes two outputs by ADD reduction ("y" and "seed_of"), each zeroed
# first. Prints the kernel arguments whose stores get filled, in order (the stores are stand-ins
# that record fills; submit is stubbed out, nothing is launched).
_FILL_ORDER_SCRIPT = """
import unity_legion.executor.executor as exmod
from legate.core import types as ty
from unity_legion.executor.executor import GraphExecutor
from unity_legion.operators.attention import MultiHeadAttention
from unity_legion.pcg import ComputationGraph
from unity_legion.types import TensorShape

class Recorder:
    def __init__(self, name, shape):
        self.name, self.shape, self.type = name, shape, ty.float32
    def fill(self, value):
        print("FILL", self.name)

exmod.submit = lambda *args, **kwargs: None
op = MultiHeadAttention(num_heads=2, key_dim=4)
g = ComputationGraph()
t = g.add_input(TensorShape((None, 3, 8)), "x")
(out,) = g.add_node(op, [t, t], "attention")
ex = GraphExecutor(g, [out])
x = TensorShape((4, 3, 8))
(launch,) = op.forward([x, x], True)
refs = {}
for name, arg in launch.args.items():
    refs.setdefault(arg.ref, Recorder(name, (4,) + (3,) * (len(arg.split) - 1)))
ex._launch(launch, refs, {"heads": 2})
"""


def test_reduced_outputs_are_zeroed_in_kernel_order_whatever_the_hash_seed(
        tmp_path, monkeypatch) -> None:
    """Ranks are processes with hash seeds of their own: zeroing the reduced outputs in a
    frozenset's order made the 2 ranks of a run fill different stores at the same point about
    half the time (Legion aborted with `Assertion DIM == dim`: attention split by heads). Two
    seeds that order the set differently must both fill in the kernel's order."""
    import subprocess
    import sys

    from launch import REPO, run_with_env
    from unity_legion.operators.attention import mha_forward

    names = ("y", "seed_of")
    code = f"print(list(frozenset({names!r})))"
    orders = {s: subprocess.run([sys.executable, "-c", code], env={"PYTHONHASHSEED": str(s)},
                                capture_output=True, text=True, check=True).stdout
              for s in range(16)}
    seeds = (0, next(s for s in orders if orders[s] != orders[0]))
    script = tmp_path / "fill_order.py"
    script.write_text(_FILL_ORDER_SCRIPT)
    want = [n for n, _ in mha_forward.stores if n in names]
    for seed in seeds:
        monkeypatch.setenv("PYTHONHASHSEED", str(seed))
        proc = run_with_env([sys.executable, str(script)], REPO, "--cpus 1 --sysmem 500", 300)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        fills = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("FILL ")]
        assert fills == want, f"PYTHONHASHSEED={seed}: filled {fills}, want {want}"
