"""The 1-D layers, global max pooling, ReLU / LeakyReLU, Rescaling and UpSampling2D against real
Keras 3 (torch backend, in a subprocess): small keras-io-style models written once as source
text and built by both APIs (a Conv1D timeseries classifier, a Conv1D text-style model with
channels_first and groups, a small UpSampling2D autoencoder). With the same weights
(get_weights / set_weights) both must report the same layers and parameter counts, predict the
same (1e-5), and after one SGD training step on the same batch give the same loss and weights;
get_config must carry Keras' argument names and values.
"""

from __future__ import annotations

import numpy as np
import pytest

from unity_legion import keras

from keras_oracle import build, real_keras

TIMESERIES = '''
def timeseries(keras):
    L = keras.layers
    x = keras.Input((21, 2))
    h = L.Conv1D(6, 3, padding="same")(x)
    h = L.BatchNormalization()(h)
    h = L.ReLU()(h)
    h = L.Conv1D(6, 3, padding="causal", dilation_rate=2)(h)
    h = L.LeakyReLU(negative_slope=0.2)(h)
    h = L.MaxPooling1D(pool_size=2)(h)
    h = L.Conv1D(4, 2, strides=2, padding="valid", activation="relu")(h)
    h = L.AveragePooling1D(pool_size=3, strides=1, padding="same")(h)
    h = L.GlobalAveragePooling1D()(h)
    return keras.Model(x, L.Dense(3, activation="softmax")(h))
'''

TEXT = '''
def text(keras):
    L = keras.layers
    x = keras.Input((4, 13))
    h = L.Conv1D(6, 3, groups=2, padding="same", data_format="channels_first")(x)
    h = L.ReLU(max_value=1.0, negative_slope=0.1, threshold=0.2)(h)
    a = L.GlobalMaxPooling1D(data_format="channels_first")(h)
    b = L.GlobalAveragePooling1D(data_format="channels_first")(
        L.MaxPooling1D(3, 2, padding="same", data_format="channels_first")(h))
    h = L.Concatenate()([a, b])
    return keras.Model(x, L.Dense(2)(h))
'''

AUTOENCODER = '''
def autoencoder(keras):
    L = keras.layers
    x = keras.Input((8, 8, 1))
    h = L.Rescaling(1.0 / 2.0, offset=0.25)(x)
    h = L.Conv2D(4, 3, padding="same", activation="relu")(h)
    h = L.MaxPooling2D()(h)
    h = L.Conv2D(3, 3, padding="same")(h)
    h = L.ReLU(max_value=2.0)(h)
    h = L.UpSampling2D((1, 2))(h)
    h = L.Conv2DTranspose(3, 3, strides=(2, 1), padding="same", activation="relu")(h)
    h = L.Conv2DTranspose(2, 2, padding="valid")(h)
    return keras.Model(x, L.Conv2D(1, 2)(h))
'''

POOLED = '''
def pooled(keras):
    L = keras.layers
    x = keras.Input((6, 5, 3))
    h = L.UpSampling2D(size=(1, 2), data_format="channels_last")(x)
    h = L.Conv2D(4, 3)(h)
    h = L.LeakyReLU()(h)
    h = L.Conv2DTranspose(3, 3, strides=2, padding="same", output_padding=1, use_bias=False)(h)
    a = L.GlobalMaxPooling2D()(h)
    b = L.Flatten()(L.GlobalMaxPooling2D(keepdims=True)(h))
    return keras.Model(x, L.Dense(2)(L.Add()([a, b])))
'''

MODELS = {"timeseries": (TIMESERIES, (21, 2), "sparse_categorical_crossentropy"),
          "text": (TEXT, (4, 13), "mse"),
          "autoencoder": (AUTOENCODER, (8, 8, 1), "mse"),
          "pooled": (POOLED, (6, 5, 3), "mse")}

ORACLE = '''
model = build_fn(keras)
out["layers"] = [type(l).__name__ for l in model.layers]
out["params"] = int(model.count_params())
out["shapes"] = [list(w.shape) for w in model.get_weights()]
model.set_weights([globals()[f"w{i}"] for i in range(n_weights)])
out["pred"] = np.asarray(model.predict(x, verbose=0))
model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss=loss)
out["loss"] = float(model.train_on_batch(x, y))
out["pred_after"] = np.asarray(model.predict(x, verbose=0))
for i, w in enumerate(model.get_weights()):
    out[f"after{i}"] = w
'''


def _data(name: str, shape: tuple[int, ...], rng: np.random.Generator
          ) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(6,) + shape).astype(np.float32)
    if name == "timeseries":
        return x, rng.integers(0, 3, size=(6,)).astype(np.int32)
    if name == "autoencoder":
        return x, x.copy()
    return x, rng.normal(size=(6, 2)).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_predictions_and_one_training_step_equal_real_keras(name: str, tmp_path) -> None:
    source, shape, loss = MODELS[name]
    rng = np.random.default_rng(11)
    x, y = _data(name, shape, rng)
    ours = build(source, name, keras)
    weights = [(0.5 * rng.normal(size=w.shape)).astype(np.float32) for w in ours.get_weights()]
    if any(type(l).__name__ == "BatchNormalization" for l in ours.layers):
        # a positive moving variance (BN's weights: gamma, beta, moving mean, moving variance)
        bn = [i for i, lyr in enumerate(_flat_weight_layers(ours)) if lyr == "BatchNormalization"]
        weights[bn[3]] = np.abs(weights[bn[3]]) + 0.5
    ours.set_weights(weights)
    values = {"x": x, "y": y, "loss": loss, "n_weights": len(weights)}
    values |= {f"w{i}": w for i, w in enumerate(weights)}
    k = real_keras(source + f"\nbuild_fn = {name}\n" + ORACLE, tmp_path / "keras", **values)

    assert [type(lyr).__name__ for lyr in ours.layers] == k["layers"]
    assert ours.count_params() == k["params"]
    assert [list(w.shape) for w in ours.get_weights()] == k["shapes"]
    np.testing.assert_allclose(ours.predict(x, verbose=0), k["pred"], rtol=1e-5, atol=1e-5)

    ours.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss=loss)
    got_loss = float(ours.train_on_batch(x, y))
    np.testing.assert_allclose(got_loss, k["loss"], rtol=1e-5)
    for i, w in enumerate(ours.get_weights()):
        np.testing.assert_allclose(w, k[f"after{i}"], rtol=1e-4, atol=1e-5,
                                   err_msg=f"weight {i} after one step")
    np.testing.assert_allclose(ours.predict(x, verbose=0), k["pred_after"], rtol=1e-4,
                               atol=1e-5)


def _flat_weight_layers(model) -> list[str]:
    """The layer class of each entry of model.get_weights(), in order."""
    return [type(lyr).__name__ for lyr in model.layers for _ in lyr.get_weights()]


CONFIG = '''
L = keras.layers
layers = [L.Conv1D(4, 3, strides=2, padding="causal", groups=2, activation="relu",
                   use_bias=False), L.MaxPooling1D(3, 1, padding="same"),
          L.AveragePooling1D(2), L.GlobalAveragePooling1D(keepdims=True),
          L.GlobalMaxPooling1D(data_format="channels_first"), L.GlobalMaxPooling2D(),
          L.ReLU(max_value=6.0, negative_slope=0.1, threshold=0.5), L.LeakyReLU(0.2),
          L.Rescaling(0.5, 1.0), L.UpSampling2D((2, 3)),
          L.Conv2DTranspose(3, 3, strides=2, padding="same", output_padding=1,
                            activation="relu"), L.Conv2DTranspose(2, (1, 2), use_bias=False)]
keys = ("filters", "kernel_size", "strides", "padding", "dilation_rate", "groups", "activation",
        "use_bias", "pool_size", "data_format", "keepdims", "max_value", "negative_slope",
        "threshold", "scale", "offset", "size", "interpolation", "output_padding")
for i, lyr in enumerate(layers):
    cfg = lyr.get_config()
    out[f"c{i}"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()
                    if k in keys}
    out[f"n{i}"] = type(lyr).__name__
'''


@pytest.mark.slow
def test_get_config_has_keras_names_and_values(tmp_path) -> None:
    k = real_keras(CONFIG, tmp_path / "keras")
    ns = {"keras": keras, "out": {}}
    exec(CONFIG, ns)
    ours = ns["out"]
    assert len(ours) == len(k) == 24
    for i in range(12):
        assert ours[f"n{i}"] == k[f"n{i}"]
        assert ours[f"c{i}"] == k[f"c{i}"], (k[f"n{i}"], ours[f"c{i}"], k[f"c{i}"])


def test_layer_names_and_bad_arguments() -> None:
    assert keras.layers.ReLU().name.startswith("re_lu")
    assert keras.layers.LeakyReLU().name.startswith("leaky_re_lu")
    assert keras.layers.UpSampling2D().name.startswith("up_sampling2d")
    assert keras.layers.GlobalMaxPooling1D().name.startswith("global_max_pooling1d")
    with pytest.raises(ValueError, match="Conv1D: strides > 1 is not supported together with "
                                         "dilation_rate > 1"):
        keras.layers.Conv1D(4, 3, strides=2, dilation_rate=2)
    with pytest.raises(ValueError, match="Conv1D: conv1d: padding must be 'valid' or 'same' "
                                         r"\(or 'causal'\)"):
        keras.layers.Conv1D(4, 3, padding="full")
    with pytest.raises(ValueError, match="Conv2D: padding must be 'valid' or 'same', got "
                                         "'causal'"):
        keras.layers.Conv2D(4, 3, padding="causal")
    with pytest.raises(ValueError, match="MaxPooling1D: pool1d: pool_size must be a positive"):
        keras.layers.MaxPooling1D(0)
    with pytest.raises(ValueError, match="ReLU: max_value must not be negative"):
        keras.layers.ReLU(max_value=-1)
    with pytest.raises(ValueError, match="LeakyReLU: negative_slope must not be negative"):
        keras.layers.LeakyReLU(-0.1)
    with pytest.raises(ValueError, match="Rescaling: scale must be a number"):
        keras.layers.Rescaling([0.5, 0.5])
    with pytest.raises(ValueError, match="UpSampling2D: interpolation 'bilinear' is not "
                                         "supported; use 'nearest'"):
        keras.layers.UpSampling2D(interpolation="bilinear")
    with pytest.raises(ValueError, match=r"Conv2DTranspose: dilation_rate=2 is not supported"):
        keras.layers.Conv2DTranspose(2, 3, dilation_rate=2)
    with pytest.raises(ValueError, match="Conv2DTranspose: .*output_padding .* must be less than"):
        keras.layers.Conv2DTranspose(2, 3, strides=2, output_padding=2)
    with pytest.raises(ValueError, match="Conv2DTranspose: kernel_regularizer='l2' is not"):
        keras.layers.Conv2DTranspose(2, 3, kernel_regularizer="l2")
    x = keras.Input((5, 3))
    with pytest.raises(ValueError, match="conv1d: kernel size 7 is larger than the input"):
        keras.layers.Conv1D(2, 7)(x)


def test_from_config_round_trips() -> None:
    L = keras.layers
    for layer in [L.Conv1D(4, 3, strides=2, padding="causal", groups=2, activation="relu",
                           use_bias=False, data_format="channels_first"),
                  L.MaxPooling1D(3, 1, padding="same"), L.AveragePooling1D(2),
                  L.GlobalAveragePooling1D(keepdims=True), L.GlobalMaxPooling1D(),
                  L.GlobalMaxPooling2D(data_format="channels_first"),
                  L.ReLU(max_value=6.0, negative_slope=0.1, threshold=0.5), L.LeakyReLU(0.2),
                  L.Rescaling(0.5, 1.0), L.UpSampling2D((2, 3)),
                  L.Conv2DTranspose(3, 3, strides=2, padding="same", output_padding=1)]:
        config = layer.get_config()
        again = type(layer).from_config(dict(config, name=config["name"] + "_again"))
        assert dict(again.get_config(), name=config["name"]) == config
        assert again._op == layer._op
