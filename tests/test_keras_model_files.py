"""What a Keras 3 program sees of a model and its `.keras` file, against real Keras 3:

- `model.layers` lists InputLayers where Keras does (functional models, not Sequential), so
  layer counts, names, classes, `get_layer(index=)` and `count_params()` are Keras';
- a `.keras` file carries the compile config (optimizer, loss, metrics) and, once trained, the
  optimizer's state: a model loaded on either side is compiled and its next training step ends
  where the saving side's own next step ends;
- a subclassed keras.Model with get_config (registered) saves to `.keras` and loads both ways.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from unity_legion import keras
from unity_legion.keras.saving import ModelFileError

from keras_oracle import build, real_keras

# ---------------------------------------------------------------------------------------------
# model.layers with InputLayers, as Keras 3 lists them

PROGRAMS = '''
def functional(keras):
    L = keras.layers
    x = keras.Input((6,), name="x")
    h = L.Dense(8, activation="relu", name="h")(x)
    a, b = L.Dense(4, name="a")(h), L.Dense(3, name="b")(h)
    return keras.Model(x, L.Dense(2, name="out")(L.Concatenate(name="cat")([a, b])))


def multi_input(keras):
    L = keras.layers
    p, q, r = keras.Input((4,), name="p"), keras.Input((5,), name="q"), keras.Input((2,), name="r")
    h = L.Dense(3, name="hp")(L.Dense(4, name="hp0")(p))
    s = L.Add(name="sum")([h, L.Dense(3, name="hq")(q)])
    late = L.Concatenate(name="late")([s, r])          # r joins one level below p and q
    return keras.Model([p, q, r], L.Dense(2, name="out")(late))


def sequential_input(keras):
    L = keras.layers
    return keras.Sequential([keras.Input((5,), name="seq_in"), L.Dense(4, name="d1"),
                             L.Dense(2, name="d2")])


def sequential_input_layer(keras):
    L = keras.layers
    return keras.Sequential([L.InputLayer(shape=(5,), name="seq_il"), L.Dense(4, name="e1"),
                             L.Dense(2, name="e2")])
'''
PROGRAM_NAMES = ["functional", "multi_input", "sequential_input", "sequential_input_layer"]

LAYERS_ORACLE = PROGRAMS + '''
for name in names:
    model = globals()[name](keras)
    out[name] = {"layers": [[l.name, type(l).__name__] for l in model.layers],
                 "params": int(model.count_params()),
                 "first": type(model.get_layer(index=0)).__name__,
                 "shapes": [list(w.shape) for w in model.get_weights()],
                 "input_configs": [l.get_config() for l in model.layers
                                   if type(l).__name__ == "InputLayer"]}
'''


@pytest.mark.slow
def test_model_layers_count_and_list_input_layers_as_keras(tmp_path):
    k = real_keras(LAYERS_ORACLE, tmp_path / "keras", names=PROGRAM_NAMES)
    for name in PROGRAM_NAMES:
        model = build(PROGRAMS, name, keras)
        want = k[name]
        assert [[l.name, type(l).__name__] for l in model.layers] == want["layers"], name
        assert len(model.layers) == len(want["layers"])
        assert model.count_params() == want["params"], name
        assert type(model.get_layer(index=0)).__name__ == want["first"], name
        assert [list(w.shape) for w in model.get_weights()] == want["shapes"], name
        inputs = [l for l in model.layers if isinstance(l, keras.layers.InputLayer)]
        assert [json.loads(json.dumps(l.get_config())) for l in inputs] == want["input_configs"]
        for layer in inputs:   # weightless, as Keras'
            assert layer.weights == [] and layer.get_weights() == [] and layer.count_params() == 0
            assert layer.output is model.get_layer(layer.name).output


def test_input_layer_objects():
    x = keras.Input((3,), name="pixels")
    model = keras.Model(x, keras.layers.Dense(2)(x))
    il = model.layers[0]
    assert isinstance(il, keras.layers.InputLayer) and il.name == "pixels" and il.built
    assert il.output is x and il.batch_shape == (None, 3) and model.get_layer("pixels") is il
    with pytest.raises(TypeError, match="InputLayer 'pixels' is not called on tensors"):
        il(x)
    with pytest.raises(ValueError, match="exactly one of shape .* or batch_shape"):
        keras.layers.InputLayer(shape=(3,), batch_shape=(None, 3))
    with pytest.raises(NotImplementedError, match="sparse=True"):
        keras.layers.InputLayer(shape=(3,), sparse=True)
    seq = keras.Sequential([keras.layers.InputLayer(batch_shape=(None, 3)),
                            keras.layers.Dense(2)])
    assert [type(l).__name__ for l in seq.layers] == ["Dense"] and seq.count_params() == 8
    model.trainable = False   # reaches the InputLayer too, harmlessly
    assert model.trainable_weights == [] and len(model.non_trainable_weights) == 2


# ---------------------------------------------------------------------------------------------
# compile config and optimizer state in .keras files

CLASSIFIER = '''
def classifier(keras):
    L = keras.layers
    x = keras.Input((6,))
    h = L.Dense(8, activation="relu")(x)
    return keras.Model(x, L.Dense(3)(h))
'''


def _data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(16, 6)).astype(np.float32), rng.integers(0, 3, 16).astype(np.int32)


def _start_weights(model) -> list[np.ndarray]:
    rng = np.random.default_rng(21)
    return [rng.normal(scale=0.4, size=w.shape).astype(np.float32) for w in model.get_weights()]


OURS_IN_KERAS = '''
model = keras.models.load_model(ours_file)
cc = model.get_compile_config()
out["optimizer"] = type(model.optimizer).__name__
out["lr"] = float(model.optimizer.learning_rate.numpy())
out["iterations"] = int(model.optimizer.iterations.numpy())
out["loss"] = cc["loss"] if isinstance(cc["loss"], str) else cc["loss"]["class_name"]
out["from_logits"] = bool(cc["loss"]["config"]["from_logits"])
out["metrics"] = cc["metrics"]
out["evaluate"] = [float(v) for v in model.evaluate(x, y, batch_size=16, verbose=0)]
model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
for i, w in enumerate(model.get_weights()):
    out[f"after{i}"] = w
'''


@pytest.mark.slow
def test_our_keras_file_loads_compiled_in_keras_and_trains_on_from_our_state(tmp_path):
    x, y = _data(5)
    ours = build(CLASSIFIER, "classifier", keras)
    ours.set_weights(_start_weights(ours))
    ours.compile(optimizer=keras.optimizers.Adam(0.01),
                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                 metrics=["accuracy"])
    ours.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    ours.save(tmp_path / "ours.keras")
    with zipfile.ZipFile(tmp_path / "ours.keras") as z:
        cc = json.loads(z.read("config.json"))["compile_config"]
    assert cc["optimizer"]["class_name"] == "Adam" and cc["metrics"] == ["accuracy"]
    evaluated = ours.evaluate(x, y, batch_size=16, verbose=0)
    ours.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)   # the third step

    k = real_keras(OURS_IN_KERAS, tmp_path / "keras", ours_file=str(tmp_path / "ours.keras"),
                   x=x, y=y)
    assert (k["optimizer"], k["loss"], k["from_logits"], k["metrics"]) == \
        ("Adam", "SparseCategoricalCrossentropy", True, ["accuracy"])
    assert k["lr"] == pytest.approx(0.01) and k["iterations"] == 2
    np.testing.assert_allclose(k["evaluate"], evaluated, rtol=1e-5, atol=1e-6)
    for i, w in enumerate(ours.get_weights()):   # Keras' third step from our file = ours
        np.testing.assert_allclose(k[f"after{i}"], w, rtol=1e-5, atol=1e-6)


KERAS_SAVES = CLASSIFIER + '''
model = classifier(keras)
model.set_weights([globals()[f"sw{i}"] for i in range(4)])
model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy", keras.metrics.SparseCategoricalAccuracy(name="sca")])
model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
model.save(theirs_file)
out["evaluate"] = [float(v) for v in model.evaluate(x, y, batch_size=16, verbose=0)]
model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
for i, w in enumerate(model.get_weights()):
    out[f"after{i}"] = w

reg = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2)])
reg.set_weights([w[:, :2] for w in [sw0]] + [sw1[:2]])
reg.compile(optimizer="rmsprop", loss=keras.losses.MeanSquaredError(),
            metrics=[keras.metrics.MeanAbsoluteError()])
reg.save(reg_file)
out["reg_evaluate"] = [float(v) for v in reg.evaluate(x, yr, batch_size=16, verbose=0)]
'''


@pytest.mark.slow
def test_a_keras_file_with_compile_config_loads_compiled_here_and_trains_on(tmp_path):
    x, y = _data(6)
    yr = np.random.default_rng(7).normal(size=(16, 2)).astype(np.float32)
    start = _start_weights(build(CLASSIFIER, "classifier", keras))
    k = real_keras(KERAS_SAVES, tmp_path / "keras", theirs_file=str(tmp_path / "theirs.keras"),
                   reg_file=str(tmp_path / "reg.keras"), x=x, y=y, yr=yr,
                   **{f"sw{i}": w for i, w in enumerate(start)})

    loaded = keras.models.load_model(tmp_path / "theirs.keras")
    assert loaded.compiled and type(loaded.optimizer).__name__ == "SGD"
    assert loaded.optimizer.momentum == pytest.approx(0.9)
    assert loaded.optimizer.learning_rate == pytest.approx(0.05)
    assert loaded.optimizer.iterations == 2                    # its state came with the file
    got = loaded.evaluate(x, y, batch_size=16, verbose=0)      # fit/evaluate at once
    np.testing.assert_allclose(got, k["evaluate"], rtol=1e-5, atol=1e-6)
    loaded.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for i, w in enumerate(loaded.get_weights()):   # our third step from Keras' file = Keras'
        np.testing.assert_allclose(w, k[f"after{i}"], rtol=1e-5, atol=1e-6)

    reg = keras.models.load_model(tmp_path / "reg.keras")   # loss and metric objects
    assert reg.compiled and type(reg.optimizer).__name__ == "RMSprop"
    np.testing.assert_allclose(reg.evaluate(x, yr, batch_size=16, verbose=0),
                               k["reg_evaluate"], rtol=1e-5, atol=1e-6)
    assert not keras.models.load_model(tmp_path / "reg.keras", compile=False).compiled


def test_compile_config_round_trips_here(tmp_path):
    a = keras.Input((4,))
    h = keras.layers.Dense(5)(a)
    model = keras.Model(a, [keras.layers.Dense(1)(h), keras.layers.Dense(3)(h)])
    model.compile(optimizer=keras.optimizers.AdamW(0.003, weight_decay=0.01),
                  loss=["mse", keras.losses.sparse_categorical_crossentropy],
                  loss_weights=[1.0, 0.5], metrics=[["mae"], ["accuracy"]])
    model.save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as z:
        cc = json.loads(z.read("config.json"))["compile_config"]
    assert cc["loss"][0] == "mse" and cc["loss"][1]["class_name"] == "function"
    assert cc["loss_weights"] == [1.0, 0.5] and cc["metrics"] == [["mae"], ["accuracy"]]
    assert cc["optimizer"]["config"]["weight_decay"] == pytest.approx(0.01)
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer).__name__ == "AdamW" and loaded.optimizer.iterations == 0
    assert loaded.optimizer.weight_decay == pytest.approx(0.01)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, 4)).astype(np.float32)
    ys = [rng.normal(size=(8, 1)).astype(np.float32), rng.integers(0, 3, 8).astype(np.int32)]
    np.testing.assert_allclose(loaded.evaluate(x, ys, verbose=0), model.evaluate(x, ys, verbose=0),
                               rtol=1e-6)
    uncompiled = keras.models.load_model(tmp_path / "m.keras", compile=False)
    assert not uncompiled.compiled

    # a schedule given as a Python function cannot be written: the model saves without it
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    plain.compile(optimizer=keras.optimizers.SGD(lambda step: 0.1), loss="mse")
    with pytest.warns(UserWarning, match="no compile_config.*schedule given as a Python"):
        plain.save(tmp_path / "p.keras")
    assert not keras.models.load_model(tmp_path / "p.keras").compiled


# ---------------------------------------------------------------------------------------------
# subclassed keras.Model in .keras files

SUBCLASSED = '''
@keras.saving.register_keras_serializable(package="tests")
class Tower(keras.Model):
    def __init__(self, units=4, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.hidden = keras.layers.Dense(units, activation="tanh")
        self.norm = keras.layers.LayerNormalization()
        self.head = keras.layers.Dense(2)

    def call(self, x):
        return self.head(self.norm(self.hidden(x)))

    def get_config(self):
        return {**super().get_config(), "units": self.units}
'''

SUBCLASSED_ORACLE = SUBCLASSED + '''
theirs = keras.models.load_model(ours_file)
out["units"] = theirs.units
out["pred_ours"] = np.asarray(theirs.predict(x, verbose=0))
out["iterations"] = int(theirs.optimizer.iterations.numpy())
model = Tower(units=6, name="tower_k")
model(x[:1])
model.set_weights([globals()[f"tw{i}"] for i in range(6)])
model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
model.save(theirs_file)
out["pred_theirs"] = np.asarray(model.predict(x, verbose=0))
model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
out["pred_after"] = np.asarray(model.predict(x, verbose=0))
'''


@pytest.mark.slow
def test_subclassed_model_keras_files_move_both_ways(tmp_path):
    ns = {"keras": keras}
    exec(SUBCLASSED, ns)
    Tower = ns["Tower"]
    rng = np.random.default_rng(8)
    x = rng.normal(size=(8, 5)).astype(np.float32)
    y = rng.normal(size=(8, 2)).astype(np.float32)
    ours = Tower(units=7)
    ours(x[:1])
    ours.compile(optimizer="adam", loss="mse")
    ours.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    ours.save(tmp_path / "ours.keras")
    with zipfile.ZipFile(tmp_path / "ours.keras") as z:
        config = json.loads(z.read("config.json"))
    assert config["class_name"] == "Tower" and config["registered_name"] == "tests>Tower"
    assert config["config"]["units"] == 7 and config["build_config"]["input_shape"] == [None, 5]

    rng_w = np.random.default_rng(9)
    theirs_w = [rng_w.normal(scale=0.5, size=s).astype(np.float32)
                for s in [(5, 6), (6,), (6,), (6,), (6, 2), (2,)]]
    theirs_w[2] = np.abs(theirs_w[2]) + 0.5   # LayerNormalization's gamma
    k = real_keras(SUBCLASSED_ORACLE, tmp_path / "keras", ours_file=str(tmp_path / "ours.keras"),
                   theirs_file=str(tmp_path / "theirs.keras"), x=x, y=y,
                   **{f"tw{i}": w for i, w in enumerate(theirs_w)})
    assert k["units"] == 7 and k["iterations"] == 1
    np.testing.assert_allclose(k["pred_ours"], ours.predict(x, verbose=0), rtol=1e-5, atol=1e-5)

    loaded = keras.models.load_model(tmp_path / "theirs.keras")
    assert type(loaded) is Tower and loaded.units == 6 and loaded.name == "tower_k"
    assert loaded.compiled and loaded.optimizer.iterations == 1
    np.testing.assert_allclose(loaded.predict(x, verbose=0), k["pred_theirs"], rtol=1e-5,
                               atol=1e-5)
    loaded.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)   # on from Keras' state
    np.testing.assert_allclose(loaded.predict(x, verbose=0), k["pred_after"], rtol=1e-5,
                               atol=1e-5)


def test_subclassed_model_files_refuse_what_cannot_be_rebuilt(tmp_path):
    class NoConfig(keras.Model):   # takes an argument, but says nothing of it
        def __init__(self, units):
            super().__init__()
            self.d = keras.layers.Dense(units)

        def call(self, x):
            return self.d(x)

    model = NoConfig(3)
    with pytest.raises(ValueError, match="not built yet"):
        model.save(tmp_path / "a.keras")
    model(np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match=r"NoConfig: its __init__ takes \['units'\].*get_config"):
        model.save(tmp_path / "a.keras")
    assert not (tmp_path / "a.keras").exists()

    class Unregistered(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.d = keras.layers.Dense(2)

        def call(self, x):
            return self.d(x)

    net = Unregistered()
    net(np.zeros((1, 4), np.float32))
    net.save(tmp_path / "u.keras")   # as Keras: saved; loading needs the class
    with pytest.raises(ModelFileError, match="unknown model class 'Unregistered'.*custom_objects"):
        keras.models.load_model(tmp_path / "u.keras")
    again = keras.models.load_model(tmp_path / "u.keras",
                                    custom_objects={"Unregistered": Unregistered})
    np.testing.assert_array_equal(again.get_weights()[0], net.get_weights()[0])
