"""The model zoo: every model builds at paper size with its published parameter count (graph only,
no weight is allocated), and trains scaled down with a finite, decreasing loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unity_legion import keras
from unity_legion.models import ZOO
from unity_legion.models.zoo import FULL_SIZE_TOTAL_PARAMS, trainable_params
from unity_legion.testing.torch_twin import TorchTwin, torch_loss

# Counts at paper size. Published: BERT-Large with pooler (Devlin et al.), torchvision's
# resnext50_32x4d and inception_v3 (its 27,161,264 less the 3,326,696 of the auxiliary head).
# The others have no published count; the arithmetic below follows their definitions (FlexFlow's
# examples, as the models' docstrings say).
_TABLES = 4 * 1_000_000 * 64
_CANDLE_SUBNET = 7 * 4192 * 4192            # layers 2..8 of a feature sub-network
EXPECTED_TRAINABLE = {
    "mlp_unify": 2 * (1024 * 8192 + 7 * 8192 * 8192),                        # 956,301,312
    "bert_large": 335_141_888,
    "dlrm": _TABLES + 4 * 64 + 64 * 64 + (64 + 4 * 64) * 64 + 64 * 2,
    "xdl": _TABLES + 4 * 64 * 256 + 256 * 256 + 256 * 2,
    "candle_uno": (942 * 4192 + _CANDLE_SUBNET) + 2 * (5270 * 4192 + _CANDLE_SUBNET)
                  + 2 * (2048 * 4192 + _CANDLE_SUBNET)
                  + (5 * 4192 + 2) * 4192 + 3 * 4192 * 4192 + 4192,
    "resnext50": 25_028_904,
    "inception_v3": 23_834_568,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_TRAINABLE))
def test_full_size_parameter_counts(name: str) -> None:
    entry = ZOO[name]
    model = entry.build()
    assert trainable_params(model) == EXPECTED_TRAINABLE[name]
    if entry.published_params is not None:
        assert EXPECTED_TRAINABLE[name] == entry.published_params
    # Keras' count_params() adds the non-trainable batch-norm statistics where there are any.
    assert model.count_params() == FULL_SIZE_TOTAL_PARAMS.get(name, EXPECTED_TRAINABLE[name])


def test_full_size_shapes() -> None:
    assert ZOO["bert_large"].build().outputs[0].shape == (None, 1024)
    assert ZOO["resnext50"].build().outputs[0].shape == (None, 1000)
    assert ZOO["inception_v3"].build().outputs[0].shape == (None, 1000)
    assert ZOO["dlrm"].build().outputs[0].shape == (None, 2)
    assert len(ZOO["candle_uno"].build().inputs) == 7


def _train_steps(name: str, steps: int = 5, batch: int = 12) -> list[float]:
    entry = ZOO[name]
    keras.utils.set_random_seed(3)
    model = entry.build_small()
    xs, ys = entry.synthetic(model, batch, np.random.default_rng(5))
    model.compile(optimizer=keras.optimizers.SGD(0.05 if entry.loss == "mse" else 0.1),
                  loss=entry.loss)
    x = xs if len(xs) > 1 else xs[0]
    y = ys if len(ys) > 1 else ys[0]
    return [float(model.train_on_batch(x, y)) for _ in range(steps)]


@pytest.mark.parametrize("name", ["mlp", "mlp_unify", "dlrm", "xdl", "candle_uno"])
def test_small_model_trains(name: str) -> None:
    losses = _train_steps(name)
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert_large", "resnext50", "inception_v3"])
def test_small_big_model_trains(name: str) -> None:
    losses = _train_steps(name)
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses


def test_synthetic_integer_inputs_stay_in_their_tables() -> None:
    entry = ZOO["dlrm"]
    model = entry.build_small()
    xs, _ = entry.synthetic(model, 50, np.random.default_rng(0))
    rows = entry.small["rows"]
    for ids, n in zip(xs[1:], rows):
        assert ids.min() >= 0 and ids.max() < n


ALL_SMALL = ["mlp", "mlp_unify", "bert_large", "dlrm", "xdl", "candle_uno", "resnext50",
             "inception_v3"]


@pytest.mark.parametrize("name", ALL_SMALL)
def test_small_model_equals_its_torch_twin(name: str) -> None:
    """The whole model, run two ways: unity_legion's predict and one SGD step against the same
    graph in PyTorch from the same weights (the reference bench_models.py times)."""
    entry = ZOO[name]
    keras.utils.set_random_seed(11)
    model = entry.build_small()
    xs, ys = entry.synthetic(model, 7, np.random.default_rng(2))
    twin = TorchTwin(model)
    twin.eval()
    x = xs if len(xs) > 1 else xs[0]
    y = ys if len(ys) > 1 else ys[0]
    with torch.no_grad():
        want = [t.numpy() for t in twin(*[torch.from_numpy(a) for a in xs])]
    got = model.predict(x, batch_size=4, verbose=0)
    got = got if isinstance(got, list) else [got]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    # One training step (no dropout in the small configurations) from the same weights. The
    # reference is the twin in float64; the twin in float32 shows how far float32 rounding alone
    # moves each update (deep CNNs with batch norm over 7 samples amplify it in some layers by
    # orders of magnitude), and unity_legion's update must be as close to float64 as that.
    before = {(n.id, ws.name): model._get_weight((n.id, ws.name)) for n in twin.nodes
              for ws in n.weights if ws.trainable}
    updated = {dtype: _torch_step(twin_of(model, dtype), entry.loss, xs, ys, dtype)
               for dtype in (torch.float32, torch.float64)}
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=entry.loss)
    model.train_on_batch(x, y)
    names = {n.id: n.name for n in twin.nodes}
    for (nid, wname), old in before.items():
        ref = updated[torch.float64][f"n{nid}_{wname}"] - old
        scale = max(np.linalg.norm(ref), 1e-12)
        err = np.linalg.norm(model._get_weight((nid, wname)) - old - ref) / scale
        noise = np.linalg.norm(updated[torch.float32][f"n{nid}_{wname}"] - old - ref) / scale
        assert err <= 2 * noise + 1e-4, (f"{names[nid]}/{wname}: update off by {err:.1e} "
                                         f"(relative), float32 torch by {noise:.1e}")


def twin_of(model: keras.Model, dtype: torch.dtype) -> TorchTwin:
    return TorchTwin(model).to(dtype)


def _torch_step(twin: TorchTwin, loss: str, xs: list[np.ndarray], ys: list[np.ndarray],
                dtype: torch.dtype) -> dict[str, np.ndarray]:
    """One SGD(0.01) step of the twin; its weights afterwards as float64 numpy arrays."""
    twin.train()
    opt = torch.optim.SGD([p for p in twin.parameters() if p.requires_grad], lr=0.01)
    inputs = [torch.from_numpy(a).to(dtype) if a.dtype.kind == "f" else torch.from_numpy(a)
              for a in xs]
    torch_loss(loss, twin(*inputs), [torch.from_numpy(a).to(dtype) if a.dtype.kind == "f"
                                     else torch.from_numpy(a) for a in ys]).backward()
    opt.step()
    return {k: p.detach().double().numpy() for k, p in twin.weights.items()}
