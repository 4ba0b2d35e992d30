"""Optimizer update rules against an independent numpy re-implementation of Keras 3's formulas
and against torch.optim, over several steps.

Keras 3 (keras.optimizers.SGD / Adam, `weight_decay` decoupled and applied first):
  decay:     w -= lr * wd * w
  SGD:       v = momentum * v - lr * g;  w += v   (nesterov: w += momentum * v - lr * g)
             (momentum 0: w -= lr * g)
  Adam:      lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t);  m += (g - m)(1 - b1);
             v += (g^2 - v)(1 - b2);  w -= lr_t * m / (sqrt(v) + eps)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unity_legion.executor.executor import GraphExecutor, Objective
from unity_legion.operators import optimizers as O
from unity_legion.operators.linear import Linear
from unity_legion.operators.losses import SparseCategoricalCrossentropy
from unity_legion.pcg import ComputationGraph
from unity_legion.types import TensorShape


class KerasRef:
    """Keras 3's update, in float64, one variable at a time."""

    def __init__(self, kind: str, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7) -> None:
        self.kind, self.lr, self.momentum, self.nesterov = kind, lr, momentum, nesterov
        self.wd, self.b1, self.b2, self.eps = weight_decay, beta_1, beta_2, epsilon
        self.state: dict = {}

    def update(self, key, w: np.ndarray, g: np.ndarray, t: int) -> np.ndarray:
        w = w.astype(np.float64)
        g = g.astype(np.float64)
        lr = self.lr
        if self.wd:
            w = w - lr * self.wd * w
        if self.kind == "sgd":
            if not self.momentum:
                return w - lr * g
            v = self.state.get(key, np.zeros_like(w))
            v = self.momentum * v - lr * g
            self.state[key] = v
            return w + (self.momentum * v - lr * g if self.nesterov else v)
        m, v = self.state.get(key, (np.zeros_like(w), np.zeros_like(w)))
        lr_t = lr * np.sqrt(1 - self.b2 ** t) / (1 - self.b1 ** t)
        m = m + (g - m) * (1 - self.b1)
        v = v + (g * g - v) * (1 - self.b2)
        self.state[key] = (m, v)
        return w - lr_t * m / (np.sqrt(v) + self.eps)


CONFIGS = {
    "sgd": (O.SGDRule(), dict(kind="sgd", lr=0.1)),
    "sgd_wd": (O.SGDRule(weight_decay=0.05), dict(kind="sgd", lr=0.1, weight_decay=0.05)),
    "momentum": (O.SGDRule(momentum=0.9), dict(kind="sgd", lr=0.1, momentum=0.9)),
    "momentum_wd": (O.SGDRule(momentum=0.8, weight_decay=0.02),
                    dict(kind="sgd", lr=0.1, momentum=0.8, weight_decay=0.02)),
    "nesterov": (O.SGDRule(momentum=0.9, nesterov=True),
                 dict(kind="sgd", lr=0.1, momentum=0.9, nesterov=True)),
    "nesterov_wd": (O.SGDRule(momentum=0.7, nesterov=True, weight_decay=0.1),
                    dict(kind="sgd", lr=0.05, momentum=0.7, nesterov=True, weight_decay=0.1)),
    "adam": (O.AdamRule(), dict(kind="adam", lr=0.01)),
    "adam_custom": (O.AdamRule(beta_1=0.8, beta_2=0.95, epsilon=1e-3),
                    dict(kind="adam", lr=0.02, beta_1=0.8, beta_2=0.95, epsilon=1e-3)),
    "adamw": (O.AdamRule(weight_decay=0.1), dict(kind="adam", lr=0.01, weight_decay=0.1)),
}


def _kernel_call(rule: O.UpdateRule, param: np.ndarray, grad: np.ndarray, slots: dict,
                 lr: float, step: int) -> None:
    launch = rule.launch(param.ndim, lr, step)
    stores = {"param": param, "grad": grad} | {s: slots[s] for s in rule.slots}
    launch.kernel(**stores, **launch.scalars)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_update_kernel_matches_keras_formulas(name: str) -> None:
    """The kernels, called on numpy arrays for 6 steps with fresh gradients each step."""
    rule, ref_args = CONFIGS[name]
    ref = KerasRef(**ref_args)
    rng = np.random.default_rng(0)
    param = rng.normal(size=(5, 3)).astype(np.float32)
    initial = param.copy()
    slots = {s: np.zeros_like(param) for s in rule.slots}
    expect = param.astype(np.float64)
    for step in range(1, 7):
        grad = rng.normal(size=param.shape).astype(np.float32)
        grad[0, 0] = 0.0  # a zero gradient (Adam: 0/(0+eps) at step 1)
        consumed = grad.copy()
        _kernel_call(rule, param, consumed, slots, ref_args["lr"], step)
        # the update consumes the gradient: zeroed for the next step's ADD reductions
        assert np.all(consumed == 0)
        expect = ref.update("p", expect, grad, step)
        np.testing.assert_allclose(param, expect, rtol=1e-5, atol=1e-6)
    assert param.dtype == np.float32
    assert np.count_nonzero(param != initial) >= param.size - 1  # all but the zero-grad entry


# ---------------------------------------------------------------------------------------------
# through the executor: a small MLP (Linear relu -> Linear), 5 steps
# ---------------------------------------------------------------------------------------------

D_IN, HIDDEN, CLASSES, BATCH = 6, 5, 3, 9


def make_mlp(seed: int = 0) -> tuple[GraphExecutor, int, dict, np.ndarray, np.ndarray]:
    g = ComputationGraph()
    xin = g.add_input(TensorShape((None, D_IN)), "x")
    (h,) = g.add_node(Linear(HIDDEN, activation="relu"), [xin], "d1")
    (o,) = g.add_node(Linear(CLASSES), [h], "d2")
    ex = GraphExecutor(g, [o])
    rng = np.random.default_rng(seed)
    weights = {}
    for key, spec in ex.weight_specs():
        weights[key] = (rng.normal(size=spec.shape.dims) * 0.7).astype(np.float32)
        ex.set_weight(key, weights[key])
    xs = rng.normal(size=(BATCH, D_IN)).astype(np.float32)
    ys = rng.integers(0, CLASSES, BATCH)
    return ex, xin, weights, xs, ys


OBJ = Objective((SparseCategoricalCrossentropy(from_logits=True),), ((),))


def torch_grads(weights: dict, xs: np.ndarray, ys: np.ndarray) -> dict:
    """Float64 gradients of the MLP's mean loss at `weights` (keys in executor order)."""
    keys = list(weights)
    ps = [torch.tensor(weights[k], dtype=torch.float64, requires_grad=True) for k in keys]
    h = torch.relu(torch.tensor(xs, dtype=torch.float64) @ ps[0] + ps[1])
    torch.nn.functional.cross_entropy(h @ ps[2] + ps[3], torch.tensor(ys)).backward()
    return {k: p.grad.numpy() for k, p in zip(keys, ps)}


@pytest.mark.parametrize("name", ["sgd", "momentum_wd", "nesterov", "adam", "adamw"])
def test_executor_updates_match_keras_formulas(name: str) -> None:
    """Each step, the executor's new weights (and slots) equal the Keras formulas applied to its
    weights before the step, with the gradients torch computes at those weights."""
    rule, ref_args = CONFIGS[name]
    ref = KerasRef(**ref_args)
    ex, xin, weights, xs, ys = make_mlp(1)
    expect = {k: v.astype(np.float64) for k, v in weights.items()}
    for step in range(1, 6):
        before = {k: ex.get_weight(k) for k in expect}
        grads = torch_grads(before, xs, ys)
        res = ex.train_step({xin: xs}, [ys], OBJ, rule, ref_args["lr"], step)
        assert res.applied
        for key in expect:
            expect[key] = ref.update(key, before[key], grads[key], step)
            np.testing.assert_allclose(ex.get_weight(key), expect[key], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name} step {step} weight {key}")
    state = ex.optimizer_state()
    names = {k: f"{ex.graph.nodes[k[0]].name}/{k[1]}" for k in expect}
    for key in expect:
        if ref_args["kind"] == "adam":
            m, v = ref.state[key]
            np.testing.assert_allclose(state[names[key] + "/m"], m, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(state[names[key] + "/v"], v, rtol=1e-5, atol=1e-9)
        elif ref_args.get("momentum"):
            np.testing.assert_allclose(state[names[key] + "/velocity"], ref.state[key],
                                       rtol=1e-5, atol=1e-7)


def torch_train(weights: dict, xs: np.ndarray, ys: np.ndarray, make_opt, steps: int) -> dict:
    keys = list(weights)
    params = [torch.tensor(weights[k], requires_grad=True) for k in keys]
    opt = make_opt(params)
    x = torch.tensor(xs)
    y = torch.tensor(ys)
    for _ in range(steps):
        opt.zero_grad()
        h = torch.relu(x @ params[0] + params[1])
        loss = torch.nn.functional.cross_entropy(h @ params[2] + params[3], y)
        loss.backward()
        opt.step()
    return {k: p.detach().numpy() for k, p in zip(keys, params)}


TORCH_CASES = {
    "sgd": (O.SGDRule(), 0.2, lambda ps: torch.optim.SGD(ps, lr=0.2)),
    "momentum": (O.SGDRule(momentum=0.9), 0.1, lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)),
    "nesterov": (O.SGDRule(momentum=0.9, nesterov=True), 0.1,
                 lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True)),
    "adam": (O.AdamRule(epsilon=1e-12), 0.01,
             lambda ps: torch.optim.Adam(ps, lr=0.01, eps=1e-12)),
    "adamw": (O.AdamRule(epsilon=1e-12, weight_decay=0.1), 0.01,
              lambda ps: torch.optim.AdamW(ps, lr=0.01, eps=1e-12, weight_decay=0.1)),
}


@pytest.mark.parametrize("name", sorted(TORCH_CASES))
def test_executor_training_matches_torch_optim(name: str) -> None:
    rule, lr, make_opt = TORCH_CASES[name]
    ex, xin, weights, xs, ys = make_mlp(2)
    losses = []
    for step in range(1, 6):
        res = ex.train_step({xin: xs}, [ys], OBJ, rule, lr, step)
        assert res.applied
        losses.append(res.mean_loss)
    ref = torch_train(weights, xs, ys, make_opt, 5)
    for key, value in ref.items():
        got = ex.get_weight(key)
        np.testing.assert_allclose(got, value, rtol=1e-4, atol=1e-5, err_msg=f"{name} {key}")
        assert not np.allclose(got, weights[key]), "training should have moved every weight"
    assert losses[-1] < losses[0]


def test_switching_rules_resets_slots() -> None:
    """A rule with other slots starts from zeroed state; reset_optimizer_state forgets momentum."""
    ex, xin, weights, xs, ys = make_mlp(3)
    ex.train_step({xin: xs}, [ys], OBJ, O.SGDRule(momentum=0.9), 0.1, 1)
    g = torch_grads({k: ex.get_weight(k) for k in weights}, xs, ys)[next(iter(weights))]
    ex.train_step({xin: xs}, [ys], OBJ, O.AdamRule(), 0.01, 1)
    state = ex.optimizer_state()
    assert sorted({k.rsplit("/", 1)[1] for k in state}) == ["m", "v"]
    # after one Adam step from zero: m = 0.1 g, v = 0.001 g^2
    key = next(iter(weights))
    name = f"{ex.graph.nodes[key[0]].name}/{key[1]}"
    np.testing.assert_allclose(state[name + "/m"], 0.1 * g, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(state[name + "/v"], 0.001 * g * g, rtol=1e-4, atol=1e-12)
    # momentum from scratch after a reset: the first step is a plain SGD step
    ex.reset_optimizer_state()
    before = {k: ex.get_weight(k) for k in weights}
    grads = torch_grads(before, xs, ys)
    ex.train_step({xin: xs}, [ys], OBJ, O.SGDRule(momentum=0.9), 0.1, 1)
    for k in weights:
        np.testing.assert_allclose(ex.get_weight(k), before[k] - 0.1 * grads[k],
                                   rtol=1e-5, atol=1e-6)


def test_adam_step_counts_from_one() -> None:
    """Step 0 would make Adam's bias correction 0/0 and every weight NaN: it is refused, and
    the refused step changes no weight."""
    with pytest.raises(ValueError, match="step"):
        O.AdamRule().launch(2, 0.01, 0)
    ex, xin, weights, xs, ys = make_mlp(4)
    with pytest.raises(ValueError, match="step"):
        ex.train_step({xin: xs}, [ys], OBJ, O.AdamRule(), 0.01, 0)
    for k, v in weights.items():
        np.testing.assert_array_equal(ex.get_weight(k), v)
    assert ex.train_step({xin: xs}, [ys], OBJ, O.AdamRule(), 0.01, 1).applied
    assert all(np.all(np.isfinite(ex.get_weight(k))) for k in weights)
