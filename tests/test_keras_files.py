"""Keras 3's weights files (`*.weights.h5`) both ways, against real Keras 3 as the oracle.

Each architecture is written once as source text and built by both APIs. Real Keras (in a
subprocess) loads the file we wrote and predicts; it then sets its own random weights, writes a
file and predicts again; we load that file and must give its predictions (1e-5) and its exact
get_weights() list. Damaged, truncated and foreign files are refused with a named error and
change nothing.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from unity_legion import keras
from unity_legion.keras.saving import WeightsFileError

from keras_oracle import build, real_keras

MLP = '''
def mlp(keras):
    L = keras.layers
    return keras.Sequential([keras.Input((6,)), L.Dense(8, activation="relu"),
                             L.Dense(8, activation="tanh"), L.Dense(3)])
'''

CNN = '''
def cnn(keras):
    L = keras.layers
    x = keras.Input((8, 8, 3))
    h = L.Conv2D(4, 3, padding="same", activation="relu")(x)
    h = L.BatchNormalization()(h)
    h = L.MaxPooling2D()(h)
    h = L.Conv2D(6, 3)(h)
    h = L.BatchNormalization()(h)
    h = L.Flatten()(h)
    return keras.Model(x, L.Dense(2)(h))
'''

ATTENTION = '''
def attention(keras):
    L = keras.layers
    x = keras.Input((5,), dtype="int32")
    h = L.Embedding(12, 8)(x)
    a = L.MultiHeadAttention(num_heads=2, key_dim=4)(h, h)
    h = L.LayerNormalization()(L.Add()([h, a]))
    h = L.Dense(8, activation="relu")(h)
    h = L.LayerNormalization(epsilon=1e-6)(h)
    return keras.Model(x, L.Dense(3)(L.Flatten()(h)))
'''

INCEPTION = '''
def inception(keras):
    L = keras.layers
    x = keras.Input((8, 8, 3), name="img")
    a = L.Conv2D(2, 1, name="a1")(x)
    b = L.Conv2D(2, 3, padding="same", name="b2")(L.Conv2D(3, 1, name="b1")(x))
    c = L.Conv2D(2, 1, name="c2")(L.MaxPooling2D(3, 1, padding="same", name="c1")(x))
    h = L.Concatenate(name="cat")([a, b, c])
    return keras.Model(x, L.Dense(2, name="out")(L.GlobalAveragePooling2D(name="gap")(h)))
'''

TWO_INPUTS = '''
def two_inputs(keras):
    L = keras.layers
    p, q = keras.Input((4,), name="p"), keras.Input((5,), name="q")
    a = L.Dense(3, name="a")(p)
    b = L.Dense(3, name="b2")(L.Dense(4, name="b1")(q))
    s = L.Add(name="sum")([a, b])
    h = L.Concatenate(name="cat")([s, L.Dense(3, name="c")(a)])
    return keras.Model([p, q], L.Dense(2, name="out")(h))
'''

MODELS = {"mlp": MLP, "cnn": CNN, "attention": ATTENTION, "inception": INCEPTION,
          "two_inputs": TWO_INPUTS}


def inputs_for(name: str, rng: np.random.Generator) -> list[np.ndarray]:
    if name == "mlp":
        return [rng.normal(size=(7, 6)).astype(np.float32)]
    if name in ("cnn", "inception"):
        return [rng.normal(size=(7, 8, 8, 3)).astype(np.float32)]
    if name == "attention":
        return [rng.integers(0, 12, size=(7, 5)).astype(np.int32)]
    return [rng.normal(size=(7, 4)).astype(np.float32), rng.normal(size=(7, 5)).astype(np.float32)]


def random_weights(shapes: list[tuple[int, ...]], seed: int) -> list[np.ndarray]:
    """Positive-ish values, so BatchNormalization's moving variances stay valid."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.2, 0.8, size=s).astype(np.float32) * rng.choice([1, -1], size=s)
            if len(s) > 1 else rng.uniform(0.5, 1.5, size=s).astype(np.float32) for s in shapes]


ORACLE = '''
model = build_src_fn(keras)
xs = [x0] if n_inputs == 1 else [x0, x1]
out["layers"] = [type(l).__name__ for l in model.layers]
out["named"] = [l.name for l in model.layers]
out["params"] = int(model.count_params())
out["shapes"] = [list(w.shape) for w in model.get_weights()]
out["paths"] = [w.path for w in model.weights]
out["trainable"] = [w.path for w in model.trainable_weights]
model.load_weights(ours)
out["pred_ours"] = np.asarray(model.predict(xs, verbose=0))
out["loaded"] = len(model.get_weights())
for i, w in enumerate(model.get_weights()):
    out[f"ours_w{i}"] = w
model.set_weights(theirs_weights)
model.save_weights(theirs)
out["pred_theirs"] = np.asarray(model.predict(xs, verbose=0))
for i, w in enumerate(model.get_weights()):
    out[f"w{i}"] = w
'''


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_weights_files_move_both_ways(name, tmp_path):
    rng = np.random.default_rng(3)
    xs = inputs_for(name, rng)
    ours = build(MODELS[name], name, keras)
    shapes = [w.shape for w in ours.get_weights()]
    ours.set_weights(random_weights(shapes, 1))
    ours.save_weights(tmp_path / "ours.weights.h5")
    want_ours = np.asarray(ours.predict(xs if len(xs) > 1 else xs[0], verbose=0))
    theirs_w = random_weights(shapes, 2)

    code = MODELS[name] + f"\nbuild_src_fn = {name}\n" + ORACLE
    k = _run_oracle(code, tmp_path, xs, theirs_w)

    # the same model, seen by both: layers, parameters, get_weights order
    assert [type(l).__name__ for l in ours.layers] == k["layers"]
    assert ours.count_params() == k["params"]
    assert [list(s) for s in shapes] == k["shapes"]
    if name in ("inception", "two_inputs"):   # explicit names: paths and order comparable
        assert [l.name for l in ours.layers] == k["named"]
        assert [w.path for w in ours.weights] == k["paths"]
        assert [w.path for w in ours.trainable_weights] == k["trainable"]

    # our file, in real Keras: the same weights, the same predictions
    for i, w in enumerate(ours.get_weights()):
        np.testing.assert_array_equal(k[f"ours_w{i}"], w)
    np.testing.assert_allclose(k["pred_ours"], want_ours, rtol=1e-5, atol=1e-5)

    # real Keras' file, here
    fresh = build(MODELS[name], name, keras)
    fresh.load_weights(tmp_path / "theirs.weights.h5")
    for i, w in enumerate(fresh.get_weights()):
        np.testing.assert_array_equal(w, k[f"w{i}"])
    got = np.asarray(fresh.predict(xs if len(xs) > 1 else xs[0], verbose=0))
    np.testing.assert_allclose(got, k["pred_theirs"], rtol=1e-5, atol=1e-5)


def _run_oracle(code: str, tmp_path, xs, theirs_w) -> dict:
    values = {"ours": str(tmp_path / "ours.weights.h5"),
              "theirs": str(tmp_path / "theirs.weights.h5"), "n_inputs": len(xs), "x0": xs[0]}
    if len(xs) > 1:
        values["x1"] = xs[1]
    for i, w in enumerate(theirs_w):
        values[f"tw{i}"] = w
    prelude = f"theirs_weights = [globals()[f'tw{{i}}'] for i in range({len(theirs_w)})]\n"
    return real_keras(prelude + code, tmp_path / "keras", **values)


ALL_LAYERS = '''
def all_layers(keras):
    L = keras.layers
    x = keras.Input((4, 4, 3))
    h = L.Conv2D(2, 3, padding="same", activation="relu")(x)
    h = L.BatchNormalization()(L.AveragePooling2D(2)(L.ZeroPadding2D(1)(h)))
    h = L.Permute((2, 1, 3))(L.Dropout(0.2)(L.Activation("tanh")(h)))
    h = L.Identity()(L.Softmax()(L.Reshape((9, 2))(h)))
    a, b = L.Dense(2)(h), L.Dense(2, activation="relu")(h)
    d = L.Flatten()(L.Dot(axes=2)([a, b]))
    f = L.Flatten()(L.Add()([L.Subtract()([a, b]), L.Multiply()([a, b])]))
    g = L.GlobalAveragePooling2D()(L.MaxPooling2D()(x))
    return keras.Model(x, L.Concatenate()([f, g, d]))
'''

ONE_D = '''
def one_d(keras):
    L = keras.layers
    x = keras.Input((12, 3))
    h = L.Conv1D(4, 3, padding="causal", dilation_rate=2, activation="relu")(x)
    h = L.AveragePooling1D(2, padding="same")(L.MaxPooling1D(2)(h))
    a, b = L.GlobalAveragePooling1D()(h), L.GlobalMaxPooling1D()(h)
    return keras.Model(x, L.Dense(2)(L.Concatenate()([a, b])))
'''

VISION = '''
def vision(keras):
    L = keras.layers
    x = keras.Input((6, 6, 3))
    h = L.Conv2D(4, 3, padding="same")(L.Rescaling(1.0 / 255, offset=-0.5)(x))
    h = L.UpSampling2D(2)(L.LeakyReLU(negative_slope=0.2)(L.ReLU(max_value=6.0)(h)))
    h = L.Conv2DTranspose(2, 3, strides=2, padding="same")(h)
    return keras.Model(x, L.GlobalMaxPooling2D()(h))
'''

# every built-in layer appears in one of these
KERAS_FILE_MODELS = {"mlp": MLP, "cnn": CNN, "attention": ATTENTION, "all_layers": ALL_LAYERS,
                     "one_d": ONE_D, "vision": VISION}

KERAS_FILE_ORACLE = '''
xs = [x0]
theirs = keras.models.load_model(ours_file)
out["pred_ours"] = np.asarray(theirs.predict(xs[0], verbose=0))
out["classes"] = [type(l).__name__ for l in theirs.layers]
model = build_src_fn(keras)
model.set_weights(theirs_weights)
model.compile(optimizer=keras.optimizers.Adam(0.002), loss="mse")
model.save(theirs_file)
out["pred_theirs"] = np.asarray(model.predict(xs[0], verbose=0))
'''


def x_for(name: str, rng: np.random.Generator) -> np.ndarray:
    if name == "all_layers":
        return rng.normal(size=(5, 4, 4, 3)).astype(np.float32)
    if name == "one_d":
        return rng.normal(size=(5, 12, 3)).astype(np.float32)
    if name == "vision":
        return rng.uniform(0, 255, size=(5, 6, 6, 3)).astype(np.float32)
    return inputs_for(name, rng)[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(KERAS_FILE_MODELS))
def test_keras_model_files_move_both_ways(name, tmp_path):
    source = KERAS_FILE_MODELS[name]
    x = x_for(name, np.random.default_rng(4))
    ours = build(source, name, keras)
    shapes = [w.shape for w in ours.get_weights()]
    ours.set_weights(random_weights(shapes, 5))
    ours.save(tmp_path / "ours.keras")
    want = np.asarray(ours.predict(x, verbose=0))
    theirs_w = random_weights(shapes, 6)
    values = {"ours_file": str(tmp_path / "ours.keras"),
              "theirs_file": str(tmp_path / "theirs.keras"), "x0": x,
              **{f"tw{i}": w for i, w in enumerate(theirs_w)}}
    prelude = f"theirs_weights = [globals()[f'tw{{i}}'] for i in range({len(theirs_w)})]\n"
    k = real_keras(prelude + source + f"\nbuild_src_fn = {name}\n" + KERAS_FILE_ORACLE,
                   tmp_path / "keras", **values)
    assert k["classes"] == [type(l).__name__ for l in ours.layers]
    np.testing.assert_allclose(k["pred_ours"], want, rtol=1e-5, atol=1e-5)

    loaded = keras.models.load_model(tmp_path / "theirs.keras")
    assert [type(l).__name__ for l in loaded.layers] == [type(l).__name__ for l in ours.layers]
    assert loaded.compiled and type(loaded.optimizer).__name__ == "Adam"   # its compile_config
    assert loaded.optimizer.learning_rate == pytest.approx(0.002)
    for got, w in zip(loaded.get_weights(), theirs_w):
        np.testing.assert_array_equal(got, w)
    np.testing.assert_allclose(np.asarray(loaded.predict(x, verbose=0)), k["pred_theirs"],
                               rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# bad files: a named error, and nothing changes
def small_mlp() -> keras.Model:
    return build(MLP, "mlp", keras)


def test_our_h5_round_trip_and_layout(tmp_path):
    model = small_mlp()
    model.set_weights(random_weights([w.shape for w in model.get_weights()], 8))
    path = tmp_path / "m.weights.h5"
    model.save_weights(path)
    with h5py.File(path, "r") as f:
        assert sorted(f["layers"]) == ["dense", "dense_1", "dense_2"]   # named by class, numbered
        np.testing.assert_array_equal(f["layers/dense_1/vars/0"][()],
                                      model.layers[1].kernel.numpy())
        assert f["layers/dense_1/vars"].attrs["name"] == model.layers[1].name
    other = small_mlp()
    other.load_weights(path)
    for a, b in zip(other.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not [p for p in tmp_path.iterdir() if p.name != "m.weights.h5"]   # no temp files left
    model.save(tmp_path / "m.keras")
    third = small_mlp()
    third.load_weights(tmp_path / "m.keras")          # as Keras: the weights of a .keras file
    for a, b in zip(third.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def _unchanged(model, before):
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_truncated_damaged_and_foreign_weights_files_are_refused(tmp_path):
    model = small_mlp()
    good = tmp_path / "good.weights.h5"
    model.save_weights(good)
    target = small_mlp()
    before = target.get_weights()
    data = good.read_bytes()

    truncated = tmp_path / "truncated.weights.h5"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsFileError, match="truncated|damaged"):
        target.load_weights(truncated)

    garbage = tmp_path / "text.weights.h5"
    garbage.write_text("not hdf5 at all")
    with pytest.raises(WeightsFileError, match="not a readable HDF5"):
        target.load_weights(garbage)

    legacy = tmp_path / "legacy.weights.h5"      # a Keras 2 layout
    with h5py.File(legacy, "w") as f:
        f.attrs["layer_names"] = [b"dense"]
        f.create_group("dense").create_dataset("kernel:0", data=np.zeros((6, 8)))
    with pytest.raises(WeightsFileError, match="Keras 2"):
        target.load_weights(legacy)

    cnn = build(CNN, "cnn", keras)
    other = tmp_path / "cnn.weights.h5"
    cnn.save_weights(other)
    with pytest.raises(WeightsFileError, match="conv2d|batch_normalization"):
        target.load_weights(other)

    wrong_shape = tmp_path / "wide.weights.h5"
    wide = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8), keras.layers.Dense(8),
                             keras.layers.Dense(4)])
    wide.save_weights(wrong_shape)
    with pytest.raises(WeightsFileError, match=r"dense_2/vars/0.*\(8, 4\) in the file, \(8, 3\)"):
        target.load_weights(wrong_shape)

    missing = tmp_path / "missing.weights.h5"
    missing.write_bytes(data)
    with h5py.File(missing, "a") as f:   # the last layer's bias is gone
        del f["layers/dense_2/vars/1"]
    with pytest.raises(WeightsFileError, match="dense_2/vars"):
        target.load_weights(missing)
    _unchanged(target, before)               # nothing was set by any of them


def test_bad_keras_files_are_refused(tmp_path):
    model = small_mlp()
    good = tmp_path / "good.keras"
    model.save(good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="damaged, truncated or not a zip"):
        keras.models.load_model(truncated)

    import json
    import zipfile
    unknown = tmp_path / "unknown.keras"
    with zipfile.ZipFile(good) as z, zipfile.ZipFile(unknown, "w") as out:
        config = json.loads(z.read("config.json"))
        config["config"]["layers"][1]["class_name"] = "FancyDense"
        out.writestr("config.json", json.dumps(config))
        out.writestr("metadata.json", z.read("metadata.json"))
        out.writestr("model.weights.h5", z.read("model.weights.h5"))
    with pytest.raises(ValueError, match="unknown layer class 'FancyDense'"):
        keras.models.load_model(unknown)
    # the class given by the caller makes it loadable
    loaded = keras.models.load_model(unknown, custom_objects={"FancyDense": keras.layers.Dense})
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)

    not_model = tmp_path / "empty.keras"
    with zipfile.ZipFile(not_model, "w") as out:
        out.writestr("hello.txt", "hi")
    with pytest.raises(ValueError, match=r"lacks \['config.json', 'model.weights.h5'\]"):
        keras.models.load_model(not_model)


def test_unbuilt_sequential_config_round_trips():
    model = keras.Sequential([keras.layers.Dense(4, activation="relu"), keras.layers.Dense(2)])
    again = keras.Sequential.from_config(model.get_config())
    assert not again.built and [l.get_config()["units"] for l in again.layers] == [4, 2]
    again.build((None, 3))
    assert [w.shape for w in again.get_weights()] == [(3, 4), (4,), (4, 2), (2,)]


def test_get_config_from_config_rebuilds_every_model():
    for name, source in {**MODELS, **KERAS_FILE_MODELS}.items():
        model = build(source, name, keras)
        again = type(model).from_config(model.get_config())
        assert [type(l).__name__ for l in again.layers] == [type(l).__name__ for l in model.layers]
        assert [l.get_config() for l in again.layers] == [l.get_config() for l in model.layers]
        assert [w.shape for w in again.get_weights()] == [w.shape for w in model.get_weights()]
        for layer in model.layers:
            clone = type(layer).from_config(layer.get_config())
            assert clone.get_config() == layer.get_config()


SUBCLASSED = '''
def subclassed(keras):
    L = keras.layers

    class Block(keras.layers.Layer):
        def __init__(self, units, **kwargs):
            super().__init__(**kwargs)
            self.d1 = L.Dense(units, activation="relu")
            self.d2 = L.Dense(units)
            self.seq = keras.Sequential([L.Dense(units), L.LayerNormalization()])
            self.parts = [L.Dense(units), L.Dense(units)]

        def build(self, input_shape):
            self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones",
                                         name="scale")

        def call(self, x):
            return (self.scale * x + self.d2(self.d1(x)) + self.seq(x)
                    + self.parts[1](self.parts[0](x)))

    x = keras.Input((4,))
    return keras.Model(x, L.Dense(2)(Block(4)(x)))
'''

SUBCLASSED_ORACLE = SUBCLASSED + '''
model = subclassed(keras)
model.set_weights(theirs_weights)
model.save_weights(theirs_file)
out["pred"] = np.asarray(model.predict(x0, verbose=0))
'''


@pytest.mark.slow
def test_subclassed_layer_weights_file_matches_keras_layout(tmp_path):
    """Keras saves a subclassed layer's own variables in its `vars` and each sublayer under its
    attribute's name (lists numbered by class, a Sequential's layers under `layers`)."""
    ours = build(SUBCLASSED, "subclassed", keras)
    shapes = [w.shape for w in ours.get_weights()]
    theirs_w = random_weights(shapes, 9)
    x = np.random.default_rng(5).normal(size=(6, 4)).astype(np.float32)
    prelude = f"theirs_weights = [globals()[f'tw{{i}}'] for i in range({len(theirs_w)})]\n"
    k = real_keras(prelude + SUBCLASSED_ORACLE, tmp_path / "keras", x0=x,
                   theirs_file=str(tmp_path / "theirs.weights.h5"),
                   **{f"tw{i}": w for i, w in enumerate(theirs_w)})
    ours.load_weights(tmp_path / "theirs.weights.h5")
    for got, want in zip(ours.get_weights(), theirs_w):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(np.asarray(ours.predict(x, verbose=0)), k["pred"], rtol=1e-5,
                               atol=1e-5)
    ours.save_weights(tmp_path / "ours.weights.h5")

    def contents(path):
        found = {}
        with h5py.File(path, "r") as f:
            f.visititems(lambda n, o: found.__setitem__(
                n, o[()] if isinstance(o, h5py.Dataset) else None))
        return found

    theirs, mine = contents(tmp_path / "theirs.weights.h5"), contents(tmp_path / "ours.weights.h5")
    assert sorted(mine) == sorted(theirs)
    for name, value in theirs.items():
        if value is not None:
            np.testing.assert_array_equal(mine[name], value)


OPTIMIZER_ORACLE = MLP + '''
model = mlp(keras)
model.compile(optimizer=make_optimizer(keras), loss="mse")
model.optimizer.build(model.trainable_variables)
model.load_weights(ours_file)                       # weights and optimizer state
out["iterations"] = int(model.optimizer.iterations.numpy())
model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
for i, w in enumerate(model.get_weights()):
    out[f"after_ours{i}"] = w
model = mlp(keras)
model.compile(optimizer=make_optimizer(keras), loss="mse")
model.fit(x, y, batch_size=len(x), epochs=2, shuffle=False, verbose=0)
model.save_weights(theirs_file)
model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
for i, w in enumerate(model.get_weights()):
    out[f"after_theirs{i}"] = w
'''

OPTIMIZERS = {"adam": "keras.optimizers.Adam(0.01)",
              "sgd_momentum": "keras.optimizers.SGD(0.05, momentum=0.9)"}


@pytest.mark.slow
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_optimizer_state_moves_both_ways(opt, tmp_path):
    """After two steps in one library and a file, the third step in the other one ends where
    the first library's own third step ends."""
    make = f"def make_optimizer(keras):\n    return {OPTIMIZERS[opt]}\n"
    ns = {}
    exec(make, ns)
    rng = np.random.default_rng(11)
    x = rng.normal(size=(8, 6)).astype(np.float32)
    y = rng.normal(size=(8, 3)).astype(np.float32)

    ours = small_mlp()
    start = random_weights([w.shape for w in ours.get_weights()], 12)
    ours.set_weights(start)
    ours.compile(optimizer=ns["make_optimizer"](keras), loss="mse")
    ours.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    ours.save_weights(tmp_path / "ours.weights.h5")
    with h5py.File(tmp_path / "ours.weights.h5", "r") as f:
        assert int(f["optimizer/vars/0"][()]) == 2
    ours.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)

    prelude = make + "import numpy as np\n_start = [globals()[f'sw{i}'] for i in range(6)]\n"
    code = prelude + OPTIMIZER_ORACLE.replace(
        "model = mlp(keras)\n", "model = mlp(keras)\nmodel.set_weights(_start)\n")
    k = real_keras(code, tmp_path / "keras", ours_file=str(tmp_path / "ours.weights.h5"),
                   theirs_file=str(tmp_path / "theirs.weights.h5"), x=x, y=y,
                   **{f"sw{i}": w for i, w in enumerate(start)})
    assert k["iterations"] == 2
    for i, w in enumerate(ours.get_weights()):   # Keras' third step from our state = ours
        np.testing.assert_allclose(k[f"after_ours{i}"], w, rtol=1e-5, atol=1e-6)

    fresh = small_mlp()
    fresh.compile(optimizer=ns["make_optimizer"](keras), loss="mse")
    fresh.load_weights(tmp_path / "theirs.weights.h5")
    assert fresh.optimizer.iterations == 2
    fresh.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for i, w in enumerate(fresh.get_weights()):  # our third step from Keras' state = Keras'
        np.testing.assert_allclose(w, k[f"after_theirs{i}"], rtol=1e-5, atol=1e-6)


def test_optimizer_state_of_another_optimizer_is_skipped_with_a_warning(tmp_path):
    rng = np.random.default_rng(13)
    x, y = rng.normal(size=(8, 6)).astype(np.float32), rng.normal(size=(8, 3)).astype(np.float32)
    model = small_mlp()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    model.save_weights(tmp_path / "adam.weights.h5")
    other = small_mlp()
    other.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")   # keeps no slots
    with pytest.warns(UserWarning, match=r"skipping the optimizer.s state.*14 optimizer "
                                         r"variables, SGD keeps 2"):
        other.load_weights(tmp_path / "adam.weights.h5")
    for a, b in zip(other.get_weights(), model.get_weights()):   # the weights still load
        np.testing.assert_array_equal(a, b)
    assert other.optimizer.iterations == 0


SUBCLASSED_MODEL = '''
def subclassed_model(keras):
    L = keras.layers

    class FileNet(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = L.Dense(5, activation="relu")
            self.norm = L.LayerNormalization()
            self.out = L.Dense(2)

        def call(self, x):
            return self.out(self.norm(self.hidden(x)))

    model = FileNet()
    model(np.zeros((1, 4), np.float32))
    return model
'''

SUBCLASSED_MODEL_ORACLE = SUBCLASSED_MODEL + '''
model = subclassed_model(keras)
model.set_weights(theirs_weights)
model.save_weights(theirs_file)
out["pred"] = np.asarray(model.predict(x0, verbose=0))
'''


@pytest.mark.slow
def test_subclassed_model_weights_file_matches_keras_layout(tmp_path):
    """A subclassed keras.Model is saved as Keras saves one: its layer attributes at the root."""
    ours = build(SUBCLASSED_MODEL, "subclassed_model", keras)
    theirs_w = random_weights([w.shape for w in ours.get_weights()], 14)
    x = np.random.default_rng(6).normal(size=(5, 4)).astype(np.float32)
    prelude = f"theirs_weights = [globals()[f'tw{{i}}'] for i in range({len(theirs_w)})]\n"
    k = real_keras(prelude + SUBCLASSED_MODEL_ORACLE, tmp_path / "keras", x0=x,
                   theirs_file=str(tmp_path / "theirs.weights.h5"),
                   **{f"tw{i}": w for i, w in enumerate(theirs_w)})
    ours.load_weights(tmp_path / "theirs.weights.h5")
    np.testing.assert_allclose(np.asarray(ours.predict(x, verbose=0)), k["pred"], rtol=1e-5,
                               atol=1e-5)
    ours.save_weights(tmp_path / "ours.weights.h5")
    with h5py.File(tmp_path / "theirs.weights.h5", "r") as a, \
            h5py.File(tmp_path / "ours.weights.h5", "r") as b:
        names_a, names_b = [], []
        a.visit(names_a.append)
        b.visit(names_b.append)
        assert sorted(names_a) == sorted(names_b)
        for n in names_a:
            if isinstance(a[n], h5py.Dataset):
                np.testing.assert_array_equal(a[n][()], b[n][()])
    ours.save(tmp_path / "net.keras")   # a subclassed model's whole file (its class by name)
    again = keras.models.load_model(tmp_path / "net.keras",
                                    custom_objects={"FileNet": type(ours)})
    np.testing.assert_allclose(np.asarray(again.predict(x, verbose=0)), k["pred"], rtol=1e-5,
                               atol=1e-5)
