"""BatchNormalization vs PyTorch: training statistics of the WHOLE batch however it is split,
inference with the moving statistics, every scale/center combination and feature axis; the
moving statistics after fit steps (Keras' rule, biased variance) against a numpy recomputation;
a non-finite step or a frozen layer leaves them untouched; the Keras layer; bad arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from op_check import FixedSplitExecutor, assert_close, randn, run_op, torch_reference
from unity_legion import keras
from unity_legion.executor.executor import GraphExecutor, Objective
from unity_legion.operators.base import OperatorError
from unity_legion.operators.batch_norm import BatchNorm
from unity_legion.operators.linear import Linear
from unity_legion.operators.losses import MeanSquaredError
from unity_legion.operators.optimizers import SGDRule
from unity_legion.pcg.graph import ComputationGraph
from unity_legion.types import DataType, TensorShape


def torch_bn(x: torch.Tensor, gamma: torch.Tensor | None = None, beta: torch.Tensor | None = None,
             moving_mean: torch.Tensor | None = None, moving_variance: torch.Tensor | None = None,
             *, axis: int, epsilon: float, training: bool) -> torch.Tensor:
    """torch's batch_norm with the feature axis moved to 1 and back. In training torch normalises
    with the biased batch variance, as Keras does (only its running_var update differs)."""
    xt = x.movedim(axis, 1)
    rm = None if training else moving_mean.detach()
    rv = None if training else moving_variance.detach()
    out = F.batch_norm(xt, rm, rv, gamma, beta, training=training, eps=epsilon)
    return out.movedim(1, axis)


def _stats_weights(rng: np.random.Generator, c: int) -> dict[str, np.ndarray]:
    return {"gamma": (1 + 0.5 * rng.standard_normal(c)).astype(np.float32),
            "beta": rng.standard_normal(c).astype(np.float32),
            "moving_mean": rng.standard_normal(c).astype(np.float32),
            "moving_variance": rng.uniform(0.5, 2.0, c).astype(np.float32)}


def check_bn(op: BatchNorm, x: np.ndarray, training: bool, degree: int | None = None) -> None:
    rng = np.random.default_rng(x.shape[0])
    c = x.shape[op.axis]
    kw = {} if degree is None else {
        "executor": lambda *a, **k: FixedSplitExecutor(*a, degree=degree, **k)}
    run = run_op(op, [x], _stats_weights(rng, c), training=training, **kw)
    axis = op.axis % x.ndim
    t_out, t_in, t_w = torch_reference(
        lambda x, **ws: torch_bn(x, **ws, axis=axis, epsilon=op.epsilon, training=training), run)
    desc = f"{op.describe()} training={training}"
    assert_close(run.outputs[0], t_out, f"{desc}: output")
    assert_close(run.input_grads[0], t_in[0], f"{desc}: dx")
    expected = {n for n, on in (("gamma", op.scale), ("beta", op.center)) if on}
    assert set(run.weight_grads) == expected          # moving statistics get no gradient
    for name in expected:
        assert_close(run.weight_grads[name], t_w[name], f"{desc}: d {name}")


# (shape, axis, scale, center, degree): degree None lets the executor split over its processors
CASES = [
    ((7, 5), -1, True, True, None),
    ((13, 4), 1, True, True, 3),
    ((3, 5, 4), -1, True, False, 2),
    ((7, 3, 5, 2), -1, True, True, 4),
    ((5, 3, 4, 5), 1, False, True, 3),
    ((9, 4, 3, 3), 2, False, False, 2),
    ((1, 6, 3, 3), -1, True, True, None),
    ((3, 4, 3), -2, True, True, 3),
]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_batch_norm_matches_torch(case: tuple, training: bool) -> None:
    shape, axis, scale, center, degree = case
    rng = np.random.default_rng(len(shape) * 10 + shape[0])
    x = (3.0 + 2.0 * rng.standard_normal(shape)).astype(np.float32)  # mean and scale far from 0/1
    check_bn(BatchNorm(axis, scale=scale, center=center), x, training, degree)


def test_training_statistics_are_whole_batch_under_any_split() -> None:
    """Each split (1, 2, 3, 4 and 7 pieces of a 7-sample batch) normalises with the statistics
    of all 7 samples: the outputs agree with each other and with torch."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((7, 3, 3, 2)) * np.array([1, 5, 0.1]).reshape(1, 3, 1, 1) + 4)
    x = x.astype(np.float32)
    outs = []
    for degree in (1, 2, 3, 4, 7):
        check_bn(BatchNorm(1, epsilon=1e-5), x, True, degree)
        run = run_op(BatchNorm(1, epsilon=1e-5), [x], _stats_weights(rng, 3),
                     executor=lambda *a, **k: FixedSplitExecutor(*a, degree=degree, **k))
        outs.append((run.outputs[0] - run.weights["beta"].reshape(1, 3, 1, 1))
                    / run.weights["gamma"].reshape(1, 3, 1, 1))
    normalised = outs[0]
    np.testing.assert_allclose(normalised.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    var = x.astype(np.float64).var(axis=(0, 2, 3))
    np.testing.assert_allclose(normalised.var(axis=(0, 2, 3)), var / (var + 1e-5), rtol=1e-4)
    for o in outs[1:]:
        np.testing.assert_allclose(o, normalised, rtol=1e-5, atol=1e-5)


def test_repeated_steps_restart_the_statistics() -> None:
    """The saved sums are zeroed before every forward: a second step on other data does not
    accumulate the first step's sums."""
    rng = np.random.default_rng(6)
    g = ComputationGraph()
    xin = g.add_input(TensorShape((None, 4)), "x")
    (out,) = g.add_node(BatchNorm(), [xin], "bn")
    ex = GraphExecutor(g, [out], input_grads=True)
    for key, spec in ex.weight_specs():
        ex.set_weight(key, np.ones(spec.shape.dims, np.float32))
    for shift in (0.0, 10.0, -3.0):
        x = (shift + rng.standard_normal((9, 4))).astype(np.float32)
        outs, _, _ = ex.gradients({xin: x}, [np.ones((9, 4), np.float32)])
        want = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-3) + 1.0
        np.testing.assert_allclose(outs[0], want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# moving statistics: updated only by applied training steps
# ---------------------------------------------------------------------------------------------

def _bn_then_dense(momentum: float) -> tuple[GraphExecutor, int, tuple[int, str], tuple[int, str]]:
    g = ComputationGraph()
    xin = g.add_input(TensorShape((None, 3)), "x")
    (h,) = g.add_node(BatchNorm(momentum=momentum), [xin], "bn")
    (o,) = g.add_node(Linear(2), [h], "dense")
    ex = GraphExecutor(g, [o])
    rng = np.random.default_rng(0)
    for key, spec in ex.weight_specs():
        init = {"moving_mean": np.zeros, "moving_variance": np.ones, "gamma": np.ones}.get(key[1])
        ex.set_weight(key, init(spec.shape.dims) if init else
                      rng.standard_normal(spec.shape.dims).astype(np.float32))
    bn_id = next(n.id for n in g.nodes if n.name == "bn")
    return ex, xin, (bn_id, "moving_mean"), (bn_id, "moving_variance")


def _moving_reference(batches: list[np.ndarray], momentum: float, c: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Keras' update with the biased batch variance (torch would use the unbiased one)."""
    mean, var = np.zeros(c), np.ones(c)
    for b in batches:
        b64 = b.astype(np.float64).reshape(-1, c)
        mean = mean * momentum + b64.mean(0) * (1 - momentum)
        var = var * momentum + b64.var(0) * (1 - momentum)
    return mean, var


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the inf step
def test_moving_statistics_follow_applied_steps_only() -> None:
    rng = np.random.default_rng(1)
    ex, xin, mm, mv = _bn_then_dense(momentum=0.8)
    obj = Objective((MeanSquaredError(),), ((),))
    batches = [(2 + 3 * rng.standard_normal((n, 3))).astype(np.float32) for n in (7, 5, 9)]
    for step, b in enumerate(batches, 1):
        res = ex.train_step({xin: b}, [randn(rng, len(b), 2)], obj, SGDRule(), 0.01, step)
        assert res.applied
    want_mean, want_var = _moving_reference(batches, 0.8, 3)
    np.testing.assert_allclose(ex.get_weight(mm), want_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ex.get_weight(mv), want_var, rtol=1e-5, atol=1e-6)
    # torch's running_var uses the unbiased variance: with its momentum 1 - 0.8 it would differ
    tm, tv = torch.zeros(3), torch.ones(3)
    for b in batches:
        F.batch_norm(torch.tensor(b), tm, tv, training=True, momentum=0.2)
    np.testing.assert_allclose(tm.numpy(), want_mean, rtol=1e-5, atol=1e-6)
    assert not np.allclose(tv.numpy(), want_var, rtol=1e-3)

    # a non-finite step: nothing moves (the weights neither)
    before = {k: ex.get_weight(k) for k, _ in ex.weight_specs()}
    bad = batches[0].copy()
    bad[3, 1] = np.inf
    res = ex.train_step({xin: bad}, [randn(rng, 7, 2)], obj, SGDRule(), 0.01, 4)
    assert res.applied is False
    for k, v in before.items():
        np.testing.assert_array_equal(ex.get_weight(k), v, err_msg=str(k))

    # neither does gradients() (forward and backward in training mode, but no step)
    ex.gradients({xin: batches[1]}, [np.ones((5, 2), np.float32)])
    np.testing.assert_array_equal(ex.get_weight(mm), before[mm])
    np.testing.assert_array_equal(ex.get_weight(mv), before[mv])

    # a frozen layer keeps its moving statistics: state updates never write a frozen weight
    ex.set_frozen([k for k, _ in ex.weight_specs() if k[0] == mm[0]])
    ex.train_step({xin: batches[2]}, [randn(rng, 9, 2)], obj, SGDRule(), 0.01, 5)
    np.testing.assert_array_equal(ex.get_weight(mm), before[mm])
    np.testing.assert_array_equal(ex.get_weight(mv), before[mv])
    ex.set_frozen([])
    ex.train_step({xin: batches[2]}, [randn(rng, 9, 2)], obj, SGDRule(), 0.01, 6)
    want_mean, want_var = _moving_reference(batches + batches[2:], 0.8, 3)
    np.testing.assert_allclose(ex.get_weight(mm), want_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ex.get_weight(mv), want_var, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Keras layer
# ---------------------------------------------------------------------------------------------

def test_batch_normalization_layer_fit_updates_moving_statistics() -> None:
    """BN on the model input: its batch statistics are those of the fed batches (shuffle off),
    so the moving statistics after fit are a numpy recomputation."""
    rng = np.random.default_rng(2)
    n, batch, momentum = 13, 5, 0.9
    x = (np.array([1.0, -2.0, 5.0, 0.0]) + rng.standard_normal((n, 6, 4)) * [1, 2, 3, 0.5])
    x = x.astype(np.float32)
    inp = keras.Input((6, 4))
    bn = keras.layers.BatchNormalization(momentum=momentum)
    dense = keras.layers.Dense(2)
    model = keras.Model(inp, dense(keras.layers.Flatten()(bn(inp))))
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    history = model.fit(x, randn(rng, n, 2), batch_size=batch, epochs=2, shuffle=False, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    gamma, beta, mm, mv = bn.get_weights()
    batches = [x[s:s + batch] for _ in range(2) for s in range(0, n, batch)]
    want_mean, want_var = _moving_reference(batches, momentum, 4)
    np.testing.assert_allclose(mm, want_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mv, want_var, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(gamma, np.ones(4))      # gamma and beta were trained
    # inference (predict) uses the moving statistics
    dk, db = dense.get_weights()
    normed = (x - mm) / np.sqrt(mv + 1e-3) * gamma + beta
    np.testing.assert_allclose(model.predict(x, verbose=0), normed.reshape(n, -1) @ dk + db,
                               rtol=1e-4, atol=1e-4)


def test_batch_normalization_in_a_cnn() -> None:
    rng = np.random.default_rng(3)
    inp = keras.Input((7, 6, 2))
    conv = keras.layers.Conv2D(3, 3, padding="same", use_bias=False)
    bn = keras.layers.BatchNormalization(axis=3, momentum=0.5, epsilon=1e-5, name="bn")
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Activation("relu")(bn(conv(inp))))
    model = keras.Model(inp, keras.layers.Dense(2)(h))
    weights = bn.get_weights()
    assert [w.shape for w in weights] == [(3,)] * 4
    np.testing.assert_array_equal(weights[0], np.ones(3))   # gamma
    np.testing.assert_array_equal(weights[1], np.zeros(3))  # beta
    np.testing.assert_array_equal(weights[2], np.zeros(3))  # moving_mean
    np.testing.assert_array_equal(weights[3], np.ones(3))   # moving_variance
    new = [np.array([1.5, 0.5, 2.0], np.float32), np.array([0.1, -0.2, 0.3], np.float32),
           np.array([0.2, -0.1, 0.0], np.float32), np.array([0.5, 2.0, 1.0], np.float32)]
    bn.set_weights(new)
    x = randn(rng, 9, 7, 6, 2)
    (kernel,) = conv.get_weights()
    dk, db = model.layers[-1].get_weights()
    t = F.conv2d(torch.tensor(x).permute(0, 3, 1, 2), torch.tensor(kernel).permute(3, 2, 0, 1),
                 padding=1)
    t = F.batch_norm(t, torch.tensor(new[2]), torch.tensor(new[3]), torch.tensor(new[0]),
                     torch.tensor(new[1]), training=False, eps=1e-5)
    want = torch.relu(t).mean(dim=(2, 3)).numpy() @ dk + db
    np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-4, atol=1e-5)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    history = model.fit(x, randn(rng, 9, 2), batch_size=4, epochs=3, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert not np.array_equal(bn.get_weights()[2], new[2])   # moving statistics moved
    assert model.count_params() == 3 * 3 * 2 * 3 + 4 * 3 + 3 * 2 + 2


def test_batch_normalization_layer_config_and_no_scale_center() -> None:
    inp = keras.Input((5,))
    bn = keras.layers.BatchNormalization(center=False, scale=False, momentum=0.5,
                                         moving_variance_initializer="zeros")
    model = keras.Model(inp, bn(inp))  # noqa: F841
    mm, mv = bn.get_weights()          # only the moving statistics exist
    np.testing.assert_array_equal(mv, np.zeros(5))
    cfg = bn.get_config()
    assert cfg["axis"] == -1 and cfg["momentum"] == 0.5 and cfg["epsilon"] == 1e-3
    assert cfg["center"] is False and cfg["scale"] is False
    assert cfg["moving_variance_initializer"] == "zeros"


def test_batch_norm_bad_arguments() -> None:
    with pytest.raises(OperatorError, match="axis 4 is out of range for an input of rank 4"):
        BatchNorm(4).infer_outputs([TensorShape((None, 3, 3, 2))])
    with pytest.raises(OperatorError, match="axis -5 is out of range"):
        BatchNorm(-5).infer_outputs([TensorShape((None, 3, 3, 2))])
    with pytest.raises(OperatorError, match="axis 0 is the batch axis"):
        BatchNorm(0).infer_outputs([TensorShape((None, 3))])
    with pytest.raises(OperatorError, match="axis must be an integer"):
        BatchNorm(1.0)
    with pytest.raises(OperatorError, match=r"momentum must be a number in \[0.0, 1.0\]"):
        BatchNorm(momentum=1.5)
    with pytest.raises(OperatorError, match="epsilon must be positive"):
        BatchNorm(epsilon=0.0)
    with pytest.raises(OperatorError, match="expects a floating-point input"):
        BatchNorm().infer_outputs([TensorShape((None, 3), DataType.INT32)])
    with pytest.raises(OperatorError, match="rank >= 2"):
        BatchNorm().infer_outputs([TensorShape((None,))])


def test_batch_normalization_layer_bad_arguments() -> None:
    with pytest.raises(ValueError, match="axis 3 is out of range for an input of rank 3"):
        keras.layers.BatchNormalization(axis=3)(keras.Input((4, 2)))
    with pytest.raises(ValueError, match="axis 0 is the batch axis"):
        keras.layers.BatchNormalization(axis=0)(keras.Input((4,)))
    with pytest.raises(ValueError, match="BatchNormalization: .*momentum must be"):
        keras.layers.BatchNormalization(momentum=-0.1)
    with pytest.raises(ValueError, match="unknown initializer"):
        keras.layers.BatchNormalization(gamma_initializer="bogus")
    with pytest.raises(ValueError, match="beta_regularizer=.* is not supported"):
        keras.layers.BatchNormalization(beta_regularizer="l2")
    with pytest.raises(ValueError, match="axis must be an integer"):
        keras.layers.BatchNormalization(axis=[1, 2])
    with pytest.raises(TypeError, match="BatchNormalization: unknown argument"):
        keras.layers.BatchNormalization(bogus=1)


def test_frozen_batch_normalization_runs_in_inference_mode() -> None:
    """As in Keras 3, a BatchNormalization layer with trainable=False normalises with its moving
    statistics in training steps too (and leaves them alone); the layers around it still train."""
    rng = np.random.default_rng(4)
    x = (3.0 + 2.0 * rng.standard_normal((11, 5))).astype(np.float32)
    inp = keras.Input((5,))
    bn = keras.layers.BatchNormalization()
    dense = keras.layers.Dense(1)
    model = keras.Model(inp, dense(bn(inp)))
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    mean, var = np.full(5, 2.5, np.float32), np.full(5, 4.0, np.float32)
    bn.set_weights([np.ones(5, np.float32), np.zeros(5, np.float32), mean, var])
    bn.trainable = False
    target = randn(rng, 11, 1)
    dk, db = dense.get_weights()
    loss = model.train_on_batch(x, target)
    # the loss of that step used the moving statistics (inference normalisation)
    normed = (x - mean) / np.sqrt(var + 1e-3)
    np.testing.assert_allclose(loss, np.mean((normed @ dk + db - target) ** 2), rtol=1e-4)
    gamma, beta, mm, mv = bn.get_weights()
    np.testing.assert_array_equal(mm, mean)
    np.testing.assert_array_equal(mv, var)
    assert not np.array_equal(dense.get_weights()[0], dk)
