"""MultiHeadAttention vs PyTorch (explicit einsums with the same weights): self- and
cross-attention, T != S, masks (boolean, integer, broadcast, fully masked rows), with and without
biases, value_dim != key_dim, output_shape, a rank-4 query, odd batches and forced splits;
attention dropout against torch with the same keep mask; the Keras layer in a model; bad input."""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable

import numpy as np
import pytest
import torch

from op_check import FixedSplitExecutor, assert_close, check_op, randn, run_op
from unity_legion import keras
from unity_legion.keras.layers import Input
from unity_legion.keras.layers.multi_head_attention import MultiHeadAttention
from unity_legion.operators import attention
from unity_legion.operators.attention import MultiHeadAttention as MHA
from unity_legion.operators.attention import keep_scale
from unity_legion.operators.base import OperatorError
from unity_legion.types import DataType, TensorShape

SEED = 4242


def _weights(op: MHA, shapes: dict[str, tuple[int, ...]], rng: np.random.Generator
             ) -> dict[str, np.ndarray]:
    """Weights of moderate size (logits of order 1: the softmax is neither flat nor one-hot)."""
    h, kd, vd = op.num_heads, op.key_dim, op.value_dim
    out = op.output_shape or (shapes["query"][-1],)
    dims = {"query": kd, "key": kd, "value": vd}
    ws = {}
    for name in ("query", "key", "value"):
        ws[f"{name}_kernel"] = 0.5 * randn(rng, shapes[name][-1], h, dims[name])
        if op.use_bias:
            ws[f"{name}_bias"] = 0.5 * randn(rng, h, dims[name])
    ws["output_kernel"] = 0.5 * randn(rng, h, vd, *out)
    if op.use_bias:
        ws["output_bias"] = randn(rng, *out)
    return ws


def torch_mha(op: MHA, pick: Callable[[tuple[Any, ...]], tuple[Any, Any, Any, Any]],
              keep: np.ndarray | None = None) -> Callable[..., torch.Tensor]:
    """The Keras computation written out in torch; `pick` maps the torch inputs to
    (query, value, key or None, mask or None)."""

    def ref(*ins: torch.Tensor, **wt: torch.Tensor) -> torch.Tensor:
        query, value, key, mask = pick(ins)
        key = value if key is None else key
        b = query.shape[0]
        tq, sv = query.shape[1:-1], value.shape[1:-1]

        def proj(src: torch.Tensor, name: str) -> torch.Tensor:
            out = torch.einsum("bld,dhk->blhk", src.reshape(b, -1, src.shape[-1]),
                               wt[f"{name}_kernel"])
            return out + wt[f"{name}_bias"] if op.use_bias else out

        q = proj(query, "query") / math.sqrt(op.key_dim)
        k, v = proj(key, "key"), proj(value, "value")
        logits = torch.einsum("bthk,bshk->bhts", q, k)
        if mask is not None:
            attend = torch.broadcast_to(mask != 0, (b,) + tuple(tq) + tuple(sv))
            attend = attend.reshape(b, 1, logits.shape[2], logits.shape[3])
            logits = torch.where(attend, logits, torch.tensor(-1e9))
        p = torch.softmax(logits, dim=-1)
        if keep is not None:
            p = p * torch.tensor(keep, dtype=p.dtype)
        ctx = torch.einsum("bhts,bshv->bthv", p, v)
        wo = wt["output_kernel"]
        out = torch.einsum("bthv,hvo->bto", ctx, wo.reshape(wo.shape[0], wo.shape[1], -1))
        if op.use_bias:
            out = out + wt["output_bias"].reshape(-1)
        return out.reshape((b,) + tuple(tq) + tuple(wo.shape[2:]))

    return ref


def _split(degree: int) -> Callable[..., Any]:
    return partial(FixedSplitExecutor, degree=degree)


@pytest.mark.parametrize("batch,degree,use_bias", [(1, 1, True), (3, 2, True), (7, 3, False),
                                                   (13, 5, True)])
def test_self_attention(batch: int, degree: int, use_bias: bool) -> None:
    rng = np.random.default_rng(batch)
    op = MHA(num_heads=3, key_dim=4, use_bias=use_bias)
    xq = randn(rng, batch, 5, 6)
    w = _weights(op, {"query": xq.shape, "key": xq.shape, "value": xq.shape}, rng)
    # one tensor fed as query and value: its gradient sums both uses
    run = check_op(op, [xq], torch_mha(op, lambda t: (t[0], t[0], None, None)), w,
                   input_ids=[0, 0], executor=_split(degree))
    assert run.outputs[0].shape == (batch, 5, 6)
    assert set(run.weight_grads) == set(w)


@pytest.mark.parametrize("batch,degree,use_bias", [(3, 3, True), (7, 2, False), (13, 4, True)])
def test_cross_attention_with_key(batch: int, degree: int, use_bias: bool) -> None:
    """T=5 != S=7, value_dim 3 != key_dim 4, three different feature sizes, output_shape 2."""
    rng = np.random.default_rng(10 + batch)
    op = MHA(2, 4, value_dim=3, use_bias=use_bias, output_shape=2, has_key=True)
    xq, xv, xk = randn(rng, batch, 5, 6), randn(rng, batch, 7, 3), randn(rng, batch, 7, 5)
    w = _weights(op, {"query": xq.shape, "value": xv.shape, "key": xk.shape}, rng)
    run = check_op(op, [xq, xv, xk], torch_mha(op, lambda t: (t[0], t[1], t[2], None)), w,
                   executor=_split(degree))
    assert run.outputs[0].shape == (batch, 5, 2)
    assert w["output_kernel"].shape == (2, 3, 2)


@pytest.mark.parametrize("batch,degree,dtype", [(3, 2, np.bool_), (13, 3, np.int32),
                                                (7, 7, np.int64)])
def test_mask(batch: int, degree: int, dtype: Any) -> None:
    """A random mask with some rows fully masked (zero gradient there, uniform weights)."""
    rng = np.random.default_rng(20 + batch)
    op = MHA(3, 2, value_dim=5, has_mask=True)
    xq, xv = randn(rng, batch, 4, 6), randn(rng, batch, 7, 5)
    mask = rng.random((batch, 4, 7)) < 0.6
    mask[0, 1, :] = False
    mask[-1, 3, :] = False
    w = _weights(op, {"query": xq.shape, "key": xv.shape, "value": xv.shape}, rng)
    run = check_op(op, [xq, xv, mask.astype(dtype)],
                   torch_mha(op, lambda t: (t[0], t[1], None, t[2])), w, executor=_split(degree))
    assert run.input_grads[2] is None
    # masking matters: without the mask the output differs
    plain = run_op(MHA(3, 2, value_dim=5), [xq, xv], w)
    assert not np.allclose(plain.outputs[0], run.outputs[0], atol=1e-3)


def test_mask_broadcast_with_key_and_no_bias() -> None:
    """A (batch, 1, S) integer mask broadcast over query positions; key given; no biases."""
    rng = np.random.default_rng(30)
    batch = 9
    op = MHA(2, 3, use_bias=False, has_key=True, has_mask=True)
    xq, xv, xk = randn(rng, batch, 5, 4), randn(rng, batch, 6, 4), randn(rng, batch, 6, 3)
    mask = (rng.random((batch, 1, 6)) < 0.7).astype(np.int64)
    mask[:, :, 0] = 1
    w = _weights(op, {"query": xq.shape, "value": xv.shape, "key": xk.shape}, rng)
    check_op(op, [xq, xv, xk, mask], torch_mha(op, lambda t: (t[0], t[1], t[2], t[3])), w,
             executor=_split(5))


def test_rank4_query_attends_over_all_positions() -> None:
    """Query (B, 2, 3, D), value (B, 2, 2, D): attention over the 6 x 4 flattened positions,
    mask (B, 2, 3, 2, 2), output_shape (2, 3)."""
    rng = np.random.default_rng(40)
    batch = 5
    op = MHA(2, 3, output_shape=(2, 3), has_mask=True)
    xq, xv = randn(rng, batch, 2, 3, 4), randn(rng, batch, 2, 2, 5)
    mask = rng.random((batch, 2, 3, 2, 2)) < 0.8
    w = _weights(op, {"query": xq.shape, "key": xv.shape, "value": xv.shape}, rng)
    run = check_op(op, [xq, xv, mask], torch_mha(op, lambda t: (t[0], t[1], None, t[2])), w,
                   executor=_split(2))
    assert run.outputs[0].shape == (batch, 2, 3, 2, 3)


# ---------------------------------------------------------------------------------------------
# dropout
# ---------------------------------------------------------------------------------------------

class FixedSeedExecutor(FixedSplitExecutor):
    """Every launch gets the same seed, so a test can rebuild the attention dropout mask."""

    def _next_seed(self) -> int:
        return SEED


def _dropout_case(rng: np.random.Generator, batch: int, rate: float, salt: int = 0
                  ) -> tuple[MHA, list[np.ndarray], dict[str, np.ndarray]]:
    op = MHA(2, 3, value_dim=4, dropout=rate, has_mask=True, salt=salt)
    xq, xv = randn(rng, batch, 5, 4), randn(rng, batch, 6, 3)
    mask = rng.random((batch, 5, 6)) < 0.8
    w = _weights(op, {"query": xq.shape, "key": xv.shape, "value": xv.shape}, rng)
    return op, [xq, xv, mask], w


def test_dropout_zero_training_equals_inference() -> None:
    rng = np.random.default_rng(50)
    op, ins, w = _dropout_case(rng, 7, 0.0)
    train = run_op(op, ins, w, training=True, executor=_split(3))
    infer = run_op(op, ins, w, training=False, executor=_split(3))
    np.testing.assert_array_equal(train.outputs[0], infer.outputs[0])
    for a, b in zip(train.input_grads, infer.input_grads):
        if a is not None:
            np.testing.assert_array_equal(a, b)
    # a dropout layer at inference is the same function as one without dropout, backward too
    drop = run_op(MHA(2, 3, value_dim=4, dropout=0.5, has_mask=True), ins, w, training=False)
    assert_close(drop.outputs[0], infer.outputs[0], "inference with dropout 0.5")
    assert_close(drop.input_grads[0], infer.input_grads[0], "d query, inference, dropout 0.5")
    for name, grad in infer.weight_grads.items():
        assert_close(drop.weight_grads[name], grad, f"d {name}, inference, dropout 0.5")


@pytest.mark.parametrize("batch,degree,rate", [(3, 2, 0.3), (7, 3, 0.5)])
def test_dropout_matches_torch_with_the_same_mask(batch: int, degree: int, rate: float) -> None:
    """Training with dropout changes the output; output and every gradient equal torch's with
    the keep mask rebuilt from the (fixed) seed, whatever the split."""
    rng = np.random.default_rng(60 + batch)
    op, ins, w = _dropout_case(rng, batch, rate, salt=3)
    keep = keep_scale((batch, 2, 5, 6), 0, SEED, 3, rate)
    assert 0 < (keep == 0).mean() < 1
    run = check_op(op, ins, torch_mha(op, lambda t: (t[0], t[1], None, t[2]), keep), w,
                   executor=partial(FixedSeedExecutor, degree=degree))
    plain = run_op(op, ins, w, training=False)
    assert not np.allclose(plain.outputs[0], run.outputs[0], atol=1e-3)
    whole = run_op(op, ins, w, executor=partial(FixedSeedExecutor, degree=1))
    np.testing.assert_allclose(whole.outputs[0], run.outputs[0], rtol=1e-6, atol=1e-6)


def test_sample_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernels bound their scratch by looping over chunks of samples: one sample per chunk gives
    the same results (dropout indices included)."""
    monkeypatch.setattr(attention, "_CHUNK_ELEMENTS", 1)
    rng = np.random.default_rng(65)
    op, ins, w = _dropout_case(rng, 7, 0.4)
    keep = keep_scale((7, 2, 5, 6), 0, SEED, 0, 0.4)
    check_op(op, ins, torch_mha(op, lambda t: (t[0], t[1], None, t[2]), keep), w,
             executor=partial(FixedSeedExecutor, degree=3))


def test_dropout_mask_differs_per_step() -> None:
    rng = np.random.default_rng(70)
    op, ins, w = _dropout_case(rng, 5, 0.5)
    first = run_op(op, ins, w, seed=1).outputs[0]
    second = run_op(op, ins, w, seed=2).outputs[0]
    assert not np.allclose(first, second)


def test_keep_scale_fraction_and_pieces() -> None:
    whole = keep_scale((6, 4, 30, 40), 0, 7, 1, 0.25)
    assert set(np.unique(whole)) == {0.0, 1.0 / 0.75}
    assert abs((whole == 0).mean() - 0.25) < 0.01                  # 28800 draws
    np.testing.assert_array_equal(keep_scale((2, 4, 30, 40), 4, 7, 1, 0.25), whole[4:])
    assert not np.array_equal(keep_scale((6, 4, 30, 40), 0, 7, 2, 0.25), whole)


# ---------------------------------------------------------------------------------------------
# the Keras layer
# ---------------------------------------------------------------------------------------------

def _layer_reference(layer: MultiHeadAttention, pick: Callable[..., Any]) -> Callable[..., Any]:
    ref = torch_mha(layer.op, pick)
    values = dict(zip(layer._present_weights(), layer.get_weights()))

    def run(*arrays: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return ref(*[torch.tensor(a) for a in arrays],
                       **{k: torch.tensor(v) for k, v in values.items()}).numpy()
    return run


def test_layer_weights_predict_and_fit() -> None:
    rng = np.random.default_rng(80)
    q_in, v_in = Input((5, 6)), Input((7, 4))
    m_in = Input((5, 7), dtype="bool")
    layer = MultiHeadAttention(num_heads=2, key_dim=3, value_dim=5, dropout=0.1, name="mha")
    out = layer(q_in, v_in, attention_mask=m_in)
    assert out.shape == (None, 5, 6)
    model = keras.Model([q_in, v_in, m_in], keras.layers.Flatten()(out))
    shapes = [w.shape for w in layer.get_weights()]
    assert shapes == [(6, 2, 3), (2, 3), (4, 2, 3), (2, 3), (4, 2, 5), (2, 5), (2, 5, 6), (6,)]
    assert layer.count_params() == sum(math.prod(s) for s in shapes)
    xq, xv = randn(rng, 11, 5, 6), randn(rng, 11, 7, 4)
    mask = rng.random((11, 5, 7)) < 0.7
    mask[:, :, 0] = True
    got = model.predict([xq, xv, mask], batch_size=4, verbose=0)
    want = _layer_reference(layer, lambda t: (t[0], t[1], None, t[2]))(xq, xv, mask)
    assert_close(got, want.reshape(11, -1), "predict vs torch")
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    target = randn(rng, 11, 30)
    before = layer.get_weights()
    history = model.fit([xq, xv, mask], target, batch_size=4, epochs=2, verbose=0)
    losses = history.history["loss"]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert all(not np.array_equal(a, b) for a, b in zip(before, layer.get_weights()))


def test_layer_self_attention_in_a_model() -> None:
    """The BERT call pattern: L.MultiHeadAttention(num_heads, key_dim, dropout)(x, x)."""
    rng = np.random.default_rng(81)
    x_in = Input((4, 8))
    h = keras.layers.Dense(8)(x_in)
    a = MultiHeadAttention(num_heads=4, key_dim=2, dropout=0.2)(h, h)
    model = keras.Model(x_in, keras.layers.Dense(3)(keras.layers.Flatten()(a)))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    x, t = randn(rng, 13, 4, 8), randn(rng, 13, 3)
    before = model.evaluate(x, t, verbose=0)
    model.fit(x, t, batch_size=5, epochs=3, verbose=0)
    after = model.evaluate(x, t, verbose=0)
    assert np.isfinite(after) and after < before


def test_shapes_and_costs() -> None:
    op = MHA(4, 3, value_dim=5, output_shape=7, has_key=True)
    q, v, k = TensorShape((2, 6, 8)), TensorShape((2, 9, 10)), TensorShape((2, 9, 11))
    assert op.infer_outputs([q, v, k]) == (TensorShape((2, 6, 7)),)
    assert {sv.name: sv.shape.dims for sv in op.saved([q, v, k])} == {
        "q": (2, 6, 4, 3), "k": (2, 9, 4, 3), "v": (2, 9, 4, 5), "probs": (2, 4, 6, 9),
        "context": (2, 6, 4, 5), "seed": (2,), "grad_q": (2, 6, 4, 3), "grad_k": (2, 9, 4, 3),
        "grad_v": (2, 9, 4, 5)}
    proj = 6 * 8 * 12 + 9 * 11 * 12 + 9 * 10 * 20
    attn = 4 * 6 * 9 * (3 + 5)
    assert op.flops([q, v, k]) == 2 * (2 * (proj + attn + 6 * 20 * 7) + 5 * 4 * 6 * 9)
    assert op.bytes_accessed([q, v, k]) > sum(s.num_bytes() for s in (q, v, k))


def test_layer_config_and_key() -> None:
    layer = MultiHeadAttention(2, 4, output_shape=3, use_bias=False, seed=5, name="att")
    out = layer(Input((5, 6)), Input((7, 2)), key=Input((7, 9)))
    assert out.shape == (None, 5, 3)
    cfg = layer.get_config()
    assert cfg["name"] == "att" and cfg["num_heads"] == 2 and cfg["value_dim"] == 4
    assert cfg["output_shape"] == (3,) and cfg["seed"] == 5
    assert [ws.name for ws in layer.op.weights(layer.input_shapes)] == [
        "query_kernel", "key_kernel", "value_kernel", "output_kernel"]
    ok = MultiHeadAttention(2, 4, attention_axes=(1,))
    assert ok(Input((5, 6)), Input((7, 6))).shape == (None, 5, 6)


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------

def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_heads must be a positive integer, got 0"):
        MultiHeadAttention(0, 4)
    with pytest.raises(ValueError, match="key_dim must be a positive integer, got -2"):
        MultiHeadAttention(2, -2)
    with pytest.raises(ValueError, match="value_dim must be a positive integer"):
        MultiHeadAttention(2, 2, value_dim=2.5)
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\), got 1.0"):
        MultiHeadAttention(2, 2, dropout=1.0)
    with pytest.raises(ValueError, match="output_shape entry must be a positive integer"):
        MultiHeadAttention(2, 2, output_shape=(3, 0))
    with pytest.raises(ValueError, match="unknown initializer 'nope'"):
        MultiHeadAttention(2, 2, kernel_initializer="nope")
    with pytest.raises(ValueError, match="kernel_regularizer='l2' is not supported"):
        MultiHeadAttention(2, 2, kernel_regularizer="l2")
    with pytest.raises(TypeError, match="unknown argument"):
        MultiHeadAttention(2, 2, bogus=1)
    with pytest.raises(OperatorError, match="num_heads must be a positive integer"):
        MHA(0, 2)


def test_bad_calls() -> None:
    q, v = Input((5, 6)), Input((7, 6))
    with pytest.raises(ValueError, match=r"attention_axes=\(2,\) is not supported: only the "
                                         r"default \(None"):
        MultiHeadAttention(2, 2, attention_axes=2)(Input((5, 3, 6)), Input((7, 3, 6)))
    with pytest.raises(ValueError, match="use_causal_mask=True is not supported"):
        MultiHeadAttention(2, 2)(q, v, use_causal_mask=True)
    with pytest.raises(ValueError, match="return_attention_scores=True is not supported"):
        MultiHeadAttention(2, 2)(q, v, return_attention_scores=True)
    with pytest.raises(TypeError, match="call it as layer\\(query, value"):
        MultiHeadAttention(2, 2)(q)
    with pytest.raises(ValueError, match="query must have rank >= 3"):
        MultiHeadAttention(2, 2)(Input((6,)), Input((6,)))
    with pytest.raises(ValueError, match="must have the query's rank 3"):
        MultiHeadAttention(2, 2)(q, Input((7, 2, 6)))
    with pytest.raises(ValueError, match="key .* must match value .* in every dimension except "
                                         "the last"):
        MultiHeadAttention(2, 2)(q, v, key=Input((8, 6)))
    with pytest.raises(ValueError, match="inputs have different dtypes"):
        MultiHeadAttention(2, 2)(q, Input((7, 6), dtype="float64"))
    with pytest.raises(ValueError, match=r"attention_mask \(None, 7, 5\):bool must have shape "
                                         r"\(batch, 5, 7\)"):
        MultiHeadAttention(2, 2)(q, v, attention_mask=Input((7, 5), dtype="bool"))
    with pytest.raises(ValueError, match="attention_mask must be a boolean or integer tensor"):
        MultiHeadAttention(2, 2)(q, v, attention_mask=Input((5, 7)))
    with pytest.raises(ValueError, match="training is decided by fit/predict"):
        MultiHeadAttention(2, 2)(q, v, training=True)


def test_batch_mismatch_and_mask_values() -> None:
    op = MHA(2, 2, has_mask=True)
    q, v = TensorShape((3, 5, 6)), TensorShape((4, 7, 6))
    with pytest.raises(OperatorError, match="batch sizes differ: query \\(3, 5, 6\\), value "
                                            "\\(4, 7, 6\\)"):
        op.infer_outputs([q, v, TensorShape((3, 5, 7), DataType.BOOL)])
    with pytest.raises(OperatorError, match="batch sizes differ"):
        op.infer_outputs([q, TensorShape((3, 7, 6)), TensorShape((2, 5, 7), DataType.BOOL)])
    with pytest.raises(OperatorError, match="takes 3 inputs \\(query, value, attention_mask\\), "
                                            "got 2"):
        op.infer_outputs([q, v])
    op.check_input_values(2, np.array([[0, 1]]))
    op.check_input_values(0, np.array([[5.0]]))
    with pytest.raises(OperatorError, match="attention_mask must hold only 0/1"):
        op.check_input_values(2, np.array([[0, 2]]))


def test_model_rejects_bad_mask_values() -> None:
    q_in, v_in, m_in = Input((2, 3)), Input((4, 3)), Input((2, 4), dtype="int32")
    model = keras.Model([q_in, v_in, m_in], MultiHeadAttention(1, 2)(q_in, v_in,
                                                                      attention_mask=m_in))
    mask = np.full((3, 2, 4), 3, dtype=np.int32)
    with pytest.raises(ValueError, match="attention_mask must hold only 0/1"):
        model.predict([np.zeros((3, 2, 3)), np.zeros((3, 4, 3)), mask], verbose=0)
