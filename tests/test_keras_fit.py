"""compile / fit / evaluate / predict: History, validation, shuffling, batching, freezing."""

from __future__ import annotations

import numpy as np
import pytest

from unity_legion import keras

L = keras.layers


def relu(z):
    return np.maximum(z, 0.0)


def numpy_forward(model, x):
    k1, b1, k2, b2 = model.get_weights()
    return relu(x @ k1 + b1) @ k2 + b2


def numpy_ce(logits, y):
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(y)), y]


class StepCounter(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches, self.sizes = 0, []

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1


# ---------------------------------------------------------------------- History
def test_fit_returns_history_with_per_epoch_logs(compiled_mlp, cls_data):
    x, y = cls_data
    model = compiled_mlp()
    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    assert isinstance(history, keras.callbacks.History)
    assert model.history is history and history.model is model
    assert history.epoch == [0, 1, 2]
    assert list(history.history) == ["loss", "accuracy"]
    assert all(len(v) == 3 and all(np.isfinite(v)) for v in history.history.values())
    assert all(0.0 <= a <= 1.0 for a in history.history["accuracy"])
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.params == {"epochs": 3, "steps": 5, "verbose": 0}


def test_epoch_loss_is_the_loss_before_the_update(compiled_mlp, cls_data):
    """One batch per epoch: the epoch's loss/accuracy are those of the weights it started with."""
    x, y = cls_data
    model = compiled_mlp()
    before = model.evaluate(x, y, verbose=0, return_dict=True)
    history = model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, shuffle=False)
    np.testing.assert_allclose(history.history["loss"][0], before["loss"], rtol=1e-6)
    np.testing.assert_allclose(history.history["accuracy"][0], before["accuracy"])


def test_validation_split_uses_the_last_samples(compiled_mlp, cls_data):
    x, y = cls_data
    model = compiled_mlp()
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, validation_split=0.2)
    assert list(history.history) == ["loss", "accuracy", "val_loss", "val_accuracy"]
    cut = int(len(x) * 0.8)                      # Keras: the last 20%, taken before shuffling
    val = model.evaluate(x[cut:], y[cut:], verbose=0, return_dict=True)
    np.testing.assert_allclose(history.history["val_loss"][-1], val["loss"], rtol=1e-6)
    np.testing.assert_allclose(history.history["val_accuracy"][-1], val["accuracy"])
    # training saw only the first `cut` samples: 29 samples, batch 8 -> 4 steps per epoch
    assert model.optimizer.iterations == 2 * 4


def test_validation_data_and_validation_freq(compiled_mlp, cls_data):
    x, y = cls_data
    xv, yv = x[:11] * 0.5, (y[:11] + 1) % 3
    model = compiled_mlp()
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, validation_data=(xv, yv))
    val = model.evaluate(xv, yv, verbose=0)
    np.testing.assert_allclose(history.history["val_loss"][-1], val[0], rtol=1e-6)
    np.testing.assert_allclose(history.history["val_accuracy"][-1], val[1])
    assert len(history.history["val_loss"]) == 2

    model = compiled_mlp()
    history = model.fit(x, y, batch_size=16, epochs=4, verbose=0, validation_data=(xv, yv),
                        validation_freq=2)
    assert len(history.history["loss"]) == 4 and len(history.history["val_loss"]) == 2


# ---------------------------------------------------------------------- shuffling, epochs
def test_shuffle_determinism(compiled_mlp, cls_data, weights_equal):
    x, y = cls_data

    def run(shuffle):
        model = compiled_mlp()
        return model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=shuffle).history, \
            model.get_weights()

    h1, w1 = run(True)
    h2, w2 = run(True)
    assert h1 == h2                       # same seed: same batches, same history
    weights_equal(w1, w2)
    h3, w3 = run(False)
    h4, w4 = run(False)
    assert h3 == h4
    weights_equal(w3, w4)
    assert h1["loss"] != h3["loss"]       # shuffling changes the batches
    assert not np.array_equal(w1[0], w3[0])


def test_shuffle_false_follows_data_order(compiled_mlp, cls_data, weights_equal):
    """shuffle=False with batch 8 equals training by hand on x[0:8], x[8:16], ... in order."""
    x, y = cls_data
    model = compiled_mlp()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    by_hand = compiled_mlp()
    for start in range(0, len(x), 8):
        by_hand.fit(x[start:start + 8], y[start:start + 8], batch_size=8, epochs=1, verbose=0,
                    shuffle=False)
    weights_equal(model.get_weights(), by_hand.get_weights())


def test_initial_epoch(compiled_mlp, cls_data, capsys):
    x, y = cls_data
    model = compiled_mlp()
    history = model.fit(x, y, batch_size=16, epochs=5, initial_epoch=3, verbose=2)
    assert history.epoch == [3, 4]
    assert len(history.history["loss"]) == 2
    assert model.optimizer.iterations == 2 * 3
    out = capsys.readouterr().out
    assert "Epoch 4/5" in out and "Epoch 5/5" in out and "Epoch 1/5" not in out
    assert model.fit(x, y, epochs=2, initial_epoch=2, verbose=0).history == {}


def test_verbose_2_prints_one_line_per_epoch_and_verbose_0_nothing(compiled_mlp, cls_data, capsys):
    x, y = cls_data
    model = compiled_mlp()
    model.fit(x, y, batch_size=16, epochs=2, verbose=2)
    out = capsys.readouterr().out
    assert "Epoch 1/2" in out and "Epoch 2/2" in out
    assert "3/3" in out and "loss:" in out and "accuracy:" in out
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    model.evaluate(x, y, verbose=0)
    model.predict(x, verbose=0)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("batch_size,steps", [(10, 4), (1, 37), (37, 1), (100, 1), (None, 2)])
def test_batch_sizes(compiled_mlp, cls_data, batch_size, steps):
    x, y = cls_data
    model = compiled_mlp()
    counter = StepCounter()
    history = model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, callbacks=[counter])
    assert counter.batches == steps and model.optimizer.iterations == steps
    assert history.params["steps"] == steps
    assert np.isfinite(history.history["loss"][0])


def test_epoch_loss_is_sample_weighted_over_uneven_batches(compiled_mlp, cls_data):
    """With lr=0 the weights never change, so the epoch loss must equal the full-data loss even
    though the batches (16, 16, 5) have different sizes."""
    x, y = cls_data
    model = compiled_mlp(optimizer=keras.optimizers.SGD(0.0))
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    expected = numpy_ce(model.predict(x, verbose=0), y).mean()
    np.testing.assert_allclose(history.history["loss"][0], expected, rtol=1e-5)


def test_fit_twice_continues_training(compiled_mlp, cls_data):
    x, y = cls_data
    model = compiled_mlp()
    h1 = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    h2 = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert h2.epoch == [0, 1]
    assert model.optimizer.iterations == 4 * 5
    assert h2.history["loss"][0] < h1.history["loss"][0]


# ---------------------------------------------------------------------- evaluate
def test_evaluate_return_types(make_mlp, cls_data):
    x, y = cls_data
    model = make_mlp()
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    loss = model.evaluate(x, y, verbose=0)
    assert isinstance(loss, float)
    np.testing.assert_allclose(loss, numpy_ce(model.predict(x, verbose=0), y).mean(), rtol=1e-5)
    assert model.evaluate(x, y, verbose=0, return_dict=True) == {"loss": loss}

    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy", "sparse_categorical_accuracy"])
    result = model.evaluate(x, y, batch_size=5, verbose=0)
    assert isinstance(result, list) and len(result) == 3
    np.testing.assert_allclose(result[0], loss, rtol=1e-6)        # batching does not matter
    accuracy = np.mean(model.predict(x, verbose=0).argmax(axis=1) == y)
    np.testing.assert_allclose(result[1:], [accuracy, accuracy])
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert list(logs) == ["loss", "accuracy", "sparse_categorical_accuracy"]
    np.testing.assert_allclose(list(logs.values()), result, rtol=1e-6)


def test_evaluate_does_not_change_weights(compiled_mlp, cls_data, weights_equal):
    x, y = cls_data
    model = compiled_mlp()
    before = model.get_weights()
    model.evaluate(x, y, verbose=0)
    model.predict(x, verbose=0)
    weights_equal(model.get_weights(), before)
    assert model.optimizer.iterations == 0


def test_mse_and_mae_metric(make_mlp, reg_data):
    x, y = reg_data
    model = make_mlp(classes=2)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", metrics=["mae"])
    pred = model.predict(x, verbose=0).astype(np.float64)
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["loss"], ((pred - y) ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(logs["mae"], np.abs(pred - y).mean(), rtol=1e-5)
    history = model.fit(x, y, batch_size=7, epochs=4, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


# ---------------------------------------------------------------------- predict
def test_predict_matches_numpy_forward(compiled_mlp, cls_data):
    x, y = cls_data
    model = compiled_mlp()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    out = model.predict(x, verbose=0)
    assert out.shape == (37, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, numpy_forward(model, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model.predict(x, batch_size=1, verbose=0), out)
    np.testing.assert_array_equal(model.predict(x[:1], verbose=0), out[:1])


def test_predict_softmax_output_and_integer_input(make_mlp):
    model = keras.Sequential([keras.Input(shape=(4,)), L.Dense(5, activation="softmax")])
    x = np.arange(12).reshape(3, 4)                   # integers: cast to the input's float32
    probs = model.predict(x, verbose=0)
    k, b = model.get_weights()
    z = x.astype(np.float32) @ k + b
    expected = np.exp(z - z.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------- trainable
def test_trainable_false_freezes_a_layer(compiled_mlp, cls_data, weights_equal):
    x, y = cls_data
    model = compiled_mlp()
    frozen, free = model.layers
    frozen.trainable = False
    f0, g0 = frozen.get_weights(), free.get_weights()
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    weights_equal(frozen.get_weights(), f0)
    assert not np.array_equal(free.get_weights()[0], g0[0])
    assert not np.array_equal(free.get_weights()[1], g0[1])
    frozen.trainable = True                            # unfreezing takes effect on the next fit
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert not np.array_equal(frozen.get_weights()[0], f0[0])


def test_model_trainable_false_freezes_every_layer(compiled_mlp, cls_data, weights_equal):
    x, y = cls_data
    model = compiled_mlp()
    before = model.get_weights()
    model.trainable = False
    assert not model.trainable and not any(l.trainable for l in model.layers)
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    weights_equal(model.get_weights(), before)
    assert np.isfinite(history.history["loss"]).all()
    lines = []
    model.summary(print_fn=lines.append)
    assert " Trainable params: 0" in lines and " Non-trainable params: 83" in lines


def test_dropout_only_in_training(cls_data):
    x, y = cls_data
    model = keras.Sequential([keras.Input(shape=(6,)), L.Dense(8, activation="relu"),
                              L.Dropout(0.5), L.Dense(3)])
    out = model.predict(x, verbose=0)
    k1, b1, k2, b2 = model.get_weights()
    np.testing.assert_allclose(out, relu(x @ k1 + b1) @ k2 + b2, rtol=1e-5, atol=1e-6)
    model.compile(optimizer=keras.optimizers.SGD(0.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    train_loss = model.fit(x, y, batch_size=len(x), epochs=1, verbose=0).history["loss"][0]
    assert train_loss != pytest.approx(model.evaluate(x, y, verbose=0), rel=1e-6)
