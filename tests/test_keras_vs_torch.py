"""Whole-model equivalence with PyTorch: the same MLP from the same weights, trained on the same
batches, ends with the same weights and reports the same per-epoch losses.

Keras' and torch's SGD-with-momentum differ in form (v = m*v - lr*g; w += v  versus
b = m*b + g; w -= lr*b) but agree for a constant learning rate. Adam differs in where epsilon
enters; with epsilon 1e-10 in both the difference is far below the tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unity_legion import keras

SIZES = (20, 32, 16, 5)
N, BATCH, EPOCHS = 37, 8, 2          # 5 steps per epoch (8, 8, 8, 8, 5): the batch does not divide N


def _data(loss: str):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(N, SIZES[0])).astype(np.float32)
    if loss == "mse":
        y = rng.normal(size=(N, SIZES[-1])).astype(np.float32)
    else:
        y = rng.integers(0, SIZES[-1], size=N)
    return x, y


def _keras_model(output_activation):
    layers = [keras.Input(shape=(SIZES[0],))]
    layers += [keras.layers.Dense(n, activation="relu") for n in SIZES[1:-1]]
    layers.append(keras.layers.Dense(SIZES[-1], activation=output_activation))
    return keras.Sequential(layers)


def _torch_model(weights):
    model = torch.nn.Sequential()
    for i, (fan_in, fan_out) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        lin = torch.nn.Linear(fan_in, fan_out)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(weights[2 * i].T.copy()))   # torch: (out, in)
            lin.bias.copy_(torch.from_numpy(weights[2 * i + 1]))
        model.append(lin)
        if i < len(SIZES) - 2:
            model.append(torch.nn.ReLU())
    return model


def _torch_train(weights, x, y, loss, output_activation, make_optimizer):
    model = _torch_model(weights)
    opt = make_optimizer(model.parameters())
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y)
    epoch_losses = []
    for _ in range(EPOCHS):
        total = 0.0
        for start in range(0, N, BATCH):
            xb, yb = xt[start:start + BATCH], yt[start:start + BATCH]
            out = model(xb)
            if loss == "mse":
                value = F.mse_loss(out, yb)
            elif output_activation == "softmax":     # probabilities in: cross-entropy of log(p)
                value = F.nll_loss(torch.log(torch.softmax(out, dim=1)), yb)
            else:
                value = F.cross_entropy(out, yb)
            opt.zero_grad()
            value.backward()
            opt.step()
            total += value.item() * len(xb)
        epoch_losses.append(total / N)
    out = []
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            out += [layer.weight.detach().numpy().T, layer.bias.detach().numpy()]
    return out, epoch_losses


class KerasAdam(torch.optim.Optimizer):
    """Adam as Keras 3 states it: epsilon is added to sqrt(v) before the bias correction, which
    torch.optim.Adam applies first. The two differ where sqrt(v) is near epsilon (a weight whose
    gradients sum to about zero), by up to the learning rate."""

    def __init__(self, params, lr: float, eps: float, betas=(0.9, 0.999)) -> None:
        super().__init__(params, dict(lr=lr, eps=eps, betas=betas))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                st = self.state[p]
                if not st:
                    st["t"], st["m"], st["v"] = 0, torch.zeros_like(p), torch.zeros_like(p)
                st["t"] += 1
                st["m"].add_((p.grad - st["m"]) * (1 - b1))
                st["v"].add_((p.grad * p.grad - st["v"]) * (1 - b2))
                alpha = group["lr"] * (1 - b2 ** st["t"]) ** 0.5 / (1 - b1 ** st["t"])
                p.sub_(st["m"] * alpha / (st["v"].sqrt() + group["eps"]))


OPTIMIZERS = {
    "sgd": (lambda: keras.optimizers.SGD(learning_rate=0.1),
            lambda p: torch.optim.SGD(p, lr=0.1)),
    "sgd-momentum": (lambda: keras.optimizers.SGD(learning_rate=0.05, momentum=0.9),
                     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    "sgd-nesterov": (lambda: keras.optimizers.SGD(learning_rate=0.05, momentum=0.8, nesterov=True),
                     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, nesterov=True)),
    "adam": (lambda: keras.optimizers.Adam(learning_rate=0.01, epsilon=1e-10),
             lambda p: KerasAdam(p, lr=0.01, eps=1e-10)),
}

CASES = [
    ("sgd", "sce_logits", None),
    ("sgd-momentum", "sce_logits", None),
    ("adam", "sce_logits", None),
    ("sgd", "mse", None),
    ("sgd-momentum", "mse", None),
    ("adam", "mse", None),
    ("sgd-nesterov", "sce_logits", None),
    ("sgd", "sce", "softmax"),
]


@pytest.mark.parametrize("opt_name,loss,output_activation", CASES,
                         ids=[f"{o}-{l}" + (f"-{a}" if a else "") for o, l, a in CASES])
def test_mlp_training_matches_torch(opt_name, loss, output_activation):
    x, y = _data(loss)
    # the initial weights must not depend on which tests ran before (the global seed's state)
    keras.utils.set_random_seed(0)
    model = _keras_model(output_activation)
    keras_loss = {"mse": "mse",
                  "sce_logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  "sce": keras.losses.SparseCategoricalCrossentropy()}[loss]
    make_keras_opt, make_torch_opt = OPTIMIZERS[opt_name]
    model.compile(optimizer=make_keras_opt(), loss=keras_loss)
    initial = model.get_weights()

    history = model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
    expected_weights, expected_losses = _torch_train(initial, x, y, loss, output_activation,
                                                     make_torch_opt)

    assert model.optimizer.iterations == EPOCHS * 5
    np.testing.assert_allclose(history.history["loss"], expected_losses, rtol=1e-5)
    got = model.get_weights()
    for name, g, e, w0 in zip(("k1", "b1", "k2", "b2", "k3", "b3"), got, expected_weights, initial):
        assert g.shape == e.shape
        assert not np.array_equal(g, w0), f"{name} did not train"
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6, err_msg=name)
    # and the trained models agree on new data
    xn = np.random.default_rng(12).normal(size=(6, SIZES[0])).astype(np.float32)
    torch_out = _torch_model(expected_weights)(torch.from_numpy(xn)).detach().numpy()
    if output_activation == "softmax":
        torch_out = torch.softmax(torch.from_numpy(torch_out), dim=1).numpy()
    np.testing.assert_allclose(model.predict(xn, verbose=0), torch_out, rtol=1e-4, atol=1e-5)
