"""Subclassed layers and models, keras.ops and Python operators on symbolic tensors, traced into
the graph: checked against real Keras 3 (torch backend, in a subprocess, tests/keras_oracle.py)
on the same weights; keras-io's text-classification Transformer run through both; what cannot
be traced fails at model construction with a message naming the layer, the op and what to use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keras_oracle import build, real_keras
from unity_legion import keras
from unity_legion.keras import layers, ops
from unity_legion.keras.layers.tracing import TracingError

# ---------------------------------------------------------------------------------------------
# One source, built by both APIs
# ---------------------------------------------------------------------------------------------

# A layer with its own weights (build + add_weight, one of them frozen), a sublayer, and most
# keras.ops and Python operators: matmul/@, + - * / and unary -, slicing of the last axes,
# softmax, transpose, mean/sum/max, sqrt/exp/square, relu/gelu/tanh/sigmoid, concatenate,
# stack, reshape, expand_dims/squeeze, where with a comparison, cast.
OPS_SOURCE = '''
def ops_model(keras):
    layers, ops = keras.layers, keras.ops

    class Mixer(layers.Layer):
        def __init__(self, units, **kwargs):
            super().__init__(**kwargs)
            self.units = units
            self.proj = layers.Dense(units)

        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1], self.units),
                                     initializer="glorot_uniform", name="w")
            self.b = self.add_weight(shape=(self.units,), initializer="zeros", name="b")
            self.scale = self.add_weight(shape=(self.units,), initializer="ones",
                                         trainable=False, name="scale")

        def call(self, x, training=None):
            h = ops.matmul(x, self.w) + self.b                      # (B, T, units)
            g = ops.gelu(self.proj(x)) * self.scale
            h = ops.relu(h) - g / 2.0
            first = h[:, :, 0:4]
            last = h[..., 1]                                        # (B, T)
            att = ops.softmax(ops.matmul(first, ops.transpose(first, (0, 2, 1))) * 0.5)
            mixed = ops.matmul(att, first)                          # (B, T, 4)
            pooled = ops.mean(mixed, axis=1) + ops.max(h, axis=1)[:, 0:4]
            s = ops.sum(ops.exp(-ops.square(last)), axis=-1, keepdims=True)
            z = ops.concatenate([pooled, ops.sqrt(s + 1.0),
                                 ops.tanh(ops.expand_dims(last[:, 0], -1))], axis=-1)
            z = ops.where(z > 0, z, ops.sigmoid(z) - 0.5)
            z = ops.reshape(ops.stack([z, -z], axis=1), (-1, 12))
            z = ops.squeeze(ops.expand_dims(z, 1), 1)
            return ops.cast(z, "float32") / 3.0

    inputs = keras.Input(shape=(5, 3))
    outputs = keras.layers.Dense(2)(Mixer(6)(inputs))
    return keras.Model(inputs, outputs)


def subclassed_model(keras):
    layers, ops = keras.layers, keras.ops

    class Net(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.d1 = layers.Dense(8, activation="tanh")
            self.norm = layers.LayerNormalization()
            self.d2 = layers.Dense(3)

        def call(self, x, training=None):
            h = self.d1(x)
            h = self.norm(h * 2.0 - ops.mean(h, axis=-1, keepdims=True))
            return self.d2(h)

    return Net()
'''

TRAIN_CODE = '''
exec(source, globals())
model = globals()[builder](keras)
if builder == "subclassed_model":
    model(x[:2])
model.set_weights([weights[k] for k in sorted(weights, key=int)])
out["pred"] = model.predict(x, verbose=0)
model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="mse")
h = model.fit(x, y, batch_size=len(x), epochs=3, shuffle=False, verbose=0)
out["loss"] = json.loads(json.dumps([float(v) for v in h.history["loss"]]))
for i, w in enumerate(model.get_weights()):
    out[f"w{i}"] = w
out["n_layers"] = len(model.layers)
out["params"] = int(model.count_params())
'''


def _compare_with_keras(model, builder: str, x: np.ndarray, y: np.ndarray, tmp_path: Path) -> None:
    """Same weights in real Keras: equal predictions, equal losses over 3 SGD steps, equal
    weights after them (every weight got its gradient and its update, in Keras' order)."""
    initial = model.get_weights()
    weights = {str(i): w for i, w in enumerate(initial)}
    # arrays travel as .npz by name: pass them flat and regroup them on the other side
    code = ("import json\nweights = {k[2:]: v for k, v in dict(globals()).items() "
            "if k.startswith('w_')}\n" + TRAIN_CODE)
    theirs = real_keras(code, tmp_path, source=OPS_SOURCE, builder=builder, x=x, y=y,
                        **{f"w_{k}": v for k, v in weights.items()})
    np.testing.assert_allclose(model.predict(x, verbose=0), theirs["pred"], rtol=1e-5, atol=1e-6)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="mse")
    h = model.fit(x, y, batch_size=len(x), epochs=3, shuffle=False, verbose=0)
    np.testing.assert_allclose(h.history["loss"], theirs["loss"], rtol=1e-5)
    after = model.get_weights()
    assert len(after) == len(initial)
    for i, w in enumerate(after):
        np.testing.assert_allclose(w, theirs[f"w{i}"], rtol=1e-5, atol=1e-6, err_msg=f"weight {i}")
    assert len(model.layers) == theirs["n_layers"]
    assert model.count_params() == theirs["params"]


def test_ops_and_operators_in_a_subclassed_layer_match_real_keras(tmp_path: Path) -> None:
    model = build(OPS_SOURCE, "ops_model", keras)
    mixer = model.layers[1]   # after its InputLayer, as in Keras
    assert type(mixer).__name__ == "Mixer"
    # own weights first (trainable, then not), then the sublayer's: Keras' order
    assert [w.shape for w in mixer.get_weights()] == [(3, 6), (6,), (6,), (3, 6), (6,)]
    assert [v.name for v in mixer.weights[:3]] == ["w", "b", "scale"]
    assert [v.trainable for v in mixer.weights] == [True, True, False, True, True]
    types = {n.op.op_type for n in model.graph.nodes}
    assert {"parameter", "binary", "unary", "slice", "reduce", "batch_matmul", "concatenate",
            "softmax", "where", "permute", "reshape", "linear"} <= types
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 5, 3)).astype(np.float32)
    y = rng.standard_normal((7, 2)).astype(np.float32)
    scale_before = mixer.weights[2].numpy()
    _compare_with_keras(model, "ops_model", x, y, tmp_path)
    np.testing.assert_array_equal(mixer.weights[2].numpy(), scale_before)   # frozen


@pytest.mark.parametrize("strategy", ["search", "data_parallel", "megatron"])
def test_every_strategy_trains_the_traced_nodes_alike(strategy: str) -> None:
    """The traced ops are ordinary graph nodes: the search and the builtin strategies plan
    them, and a planned step gives the unplanned step's losses; the torch twin agrees too."""
    import torch
    from unity_legion.testing.torch_twin import TorchTwin
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 5, 3)).astype(np.float32)
    y = rng.standard_normal((8, 2)).astype(np.float32)
    results = []
    for chosen in ("data_parallel", strategy):
        keras.utils.set_random_seed(11)
        model = build(OPS_SOURCE, "ops_model", keras)
        if chosen == strategy:
            twin = TorchTwin(model).eval()
            with torch.no_grad():
                want = twin(torch.tensor(x))[0].numpy()
            np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="mse",
                      strategy=chosen)
        h = model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
        results.append(h.history["loss"])
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5)


def test_a_model_subclass_built_on_data_matches_real_keras(tmp_path: Path) -> None:
    model = build(OPS_SOURCE, "subclassed_model", keras)
    assert not model.built
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, 4)).astype(np.float32)
    y = rng.standard_normal((9, 3)).astype(np.float32)
    pred = model(x[:2])                      # built by calling it on data
    assert model.built and pred.shape == (2, 3)
    assert [type(l).__name__ for l in model.layers] == ["Dense", "LayerNormalization", "Dense"]
    assert model.name == "net"
    _compare_with_keras(model, "subclassed_model", x, y, tmp_path)


def test_a_model_subclass_builds_on_an_input_and_by_fit() -> None:
    on_input = build(OPS_SOURCE, "subclassed_model", keras)
    out = on_input(keras.Input(shape=(4,)))
    assert out.shape == (None, 3) and on_input.built
    assert on_input.count_params() == 4 * 8 + 8 + 8 + 8 + 8 * 3 + 3

    by_fit = build(OPS_SOURCE, "subclassed_model", keras)
    by_fit.compile(optimizer="adam", loss="mse")     # compile waits for the data
    rng = np.random.default_rng(2)
    x = rng.standard_normal((16, 4)).astype(np.float32)
    h = by_fit.fit(x, x[:, :3] * 2, epochs=4, batch_size=8, verbose=0)
    assert by_fit.built and h.history["loss"][-1] < h.history["loss"][0]
    with pytest.raises(ValueError, match="already built"):
        by_fit(keras.Input(shape=(4,)))


# ---------------------------------------------------------------------------------------------
# keras-io's Text classification with Transformer, through both
# ---------------------------------------------------------------------------------------------

SCRIPT = Path(__file__).with_name("keras_text_transformer.py")
REAL_IMPORTS = "import keras\nfrom keras import layers, ops\n"
OUR_IMPORTS = "from unity_legion import keras\nfrom unity_legion.keras import layers, ops\n"


def _real_keras_script(source: str, tmp_path: Path) -> dict:
    runner = tmp_path / "run_real.py"
    runner.write_text(source + "\nimport json\nprint('RESULT ' + json.dumps(result))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEGATE", "REALM"))}
    env.update(KERAS_BACKEND="torch", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(runner)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_text_classification_transformer_runs_as_in_real_keras(tmp_path: Path) -> None:
    source = SCRIPT.read_text()
    assert REAL_IMPORTS in source
    theirs = _real_keras_script(source, tmp_path)
    ns: dict = {"__name__": "keras_text_transformer"}
    exec(compile(source.replace(REAL_IMPORTS, OUR_IMPORTS), str(SCRIPT), "exec"), ns)
    ours = ns["result"]
    print(f"accuracy: ours {ours['accuracy']:.4f}, Keras {theirs['accuracy']:.4f}; "
          f"params {ours['params']}")
    assert ours["params"] == theirs["params"]
    assert ours["layers"] == theirs["layers"] == [
        "InputLayer", "TokenAndPositionEmbedding", "TransformerBlock", "GlobalAveragePooling1D", "Dropout",
        "Dense", "Dropout", "Dense"]
    assert ours["weight_shapes"] == theirs["weight_shapes"]
    assert theirs["accuracy"] > 0.8, theirs
    assert abs(ours["accuracy"] - theirs["accuracy"]) <= 0.05, (ours, theirs)
    # the traced ops are graph nodes the search plans like any layer
    graph = ns["model"].graph
    assert {"range", "embedding", "multi_head_attention", "layer_norm"} <= \
        {n.op.op_type for n in graph.nodes}


# ---------------------------------------------------------------------------------------------
# training=, Sequential inside a layer, weights, Python operators
# ---------------------------------------------------------------------------------------------

def test_training_is_passed_through_and_dropout_obeys_it() -> None:
    seen = []

    class Block(layers.Layer):
        def __init__(self):
            super().__init__()
            self.drop = layers.Dropout(0.5)
            self.keep = layers.Dropout(0.5)
            self.ffn = keras.Sequential([layers.Dense(4, activation="relu"), layers.Dense(3)])

        def call(self, x, training=None):
            seen.append(training)
            x = self.drop(x, training=False)       # identity: no node
            return self.ffn(self.keep(x, training=training))

    inputs = keras.Input(shape=(3,))
    model = keras.Model(inputs, Block()(inputs, training=None))
    assert seen == [None]
    assert [n.op.op_type for n in model.graph.nodes] == ["dropout", "linear", "linear"]
    assert [w.shape for w in model.get_weights()] == [(3, 4), (4,), (4, 3), (3,)]


def test_python_operators_on_symbolic_tensors() -> None:
    x = keras.Input(shape=(3, 8))

    class Ops(layers.Layer):
        def build(self, input_shape):
            self.k = self.add_weight(shape=(8, 2), initializer="ones")

        def call(self, t):
            a = -t[:, :, 0:4]                       # (None, 3, 4)
            b = t[..., 1]                           # (None, 3)
            c = (t @ self.k) * 2 + 1 - t[:, :, 4:6] / 2   # (None, 3, 2)
            return a, b, c, 1.0 - t, 2.0 / (t * t + 1.0), t ** 2, t[:, 0] @ self.k

    outs = Ops()(x)
    assert [o.shape for o in outs] == [(None, 3, 4), (None, 3), (None, 3, 2), (None, 3, 8),
                                       (None, 3, 8), (None, 3, 8), (None, 2)]
    top = outs[0] * 2.0                      # an op outside any layer: a node, not a layer
    model = keras.Model(x, list(outs) + [top])
    assert [type(l).__name__ for l in model.layers] == ["InputLayer", "Ops"]
    data = np.random.default_rng(3).standard_normal((4, 3, 8)).astype(np.float32)
    got = model.predict(data, verbose=0)
    want = [-data[:, :, 0:4], data[..., 1], (data @ np.ones((8, 2))) * 2 + 1 - data[:, :, 4:6] / 2,
            1.0 - data, 2.0 / (data * data + 1.0), data ** 2, data[:, 0] @ np.ones((8, 2)),
            -data[:, :, 0:4] * 2.0]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_one_hot_arange_and_keras_shape() -> None:
    class Hot(layers.Layer):
        def call(self, ids):
            n = ops.shape(ids)[-1]
            assert ops.shape(ids) == (None, 4) and n == 4
            pos = ops.cast(ops.arange(n), "float32")          # batch-free (4,)
            assert pos.shape == (4,)
            hot = ops.one_hot(ops.cast(ids, "int32"), 5)      # (None, 4, 5)
            return ops.sum(hot, axis=1) + ops.mean(pos)       # mean of a batch-free tensor

    inputs = keras.Input(shape=(4,), dtype="int32")
    model = keras.Model(inputs, Hot()(inputs))
    ids = np.array([[0, 1, 1, 4], [2, 2, 2, 2]], dtype=np.int32)
    want = np.stack([np.bincount(r, minlength=5) for r in ids]).astype(np.float32) + 1.5
    np.testing.assert_allclose(model.predict(ids, verbose=0), want)


# ---------------------------------------------------------------------------------------------
# What cannot be traced fails at construction, saying what to use
# ---------------------------------------------------------------------------------------------

def _construct(call):
    class Bad(layers.Layer):
        def call(self, x):
            return call(x)

    inputs = keras.Input(shape=(4, 3))
    return keras.Model(inputs, Bad(name="bad_layer")(inputs))


@pytest.mark.parametrize("call,op,instead", [
    (lambda x: x if x > 0 else -x, r"bool\(\)", "keras.ops.where"),
    (lambda x: x * float(np.mean(x)), "numpy on a symbolic tensor", "keras.ops.mean"),
    (lambda x: x.numpy(), r"\.numpy\(\)", "model.predict"),
    (lambda x: sum(v for v in x), "iterating", "keras.ops"),
    (lambda x: x[0], "indexing the batch axis", "x\\[:, ...\\]"),
    (lambda x: ops.mean(x), "over every axis", "axis="),
    (lambda x: ops.sum(x, axis=0), "axis 0 \\(the batch\\)", "other than the batch"),
    (lambda x: x + np.ones(3), "ndarray constant", "add_weight"),
    (lambda x: ops.transpose(x), "moves the batch axis", "keep 0 first"),
    (lambda x: ops.power(x, x), "tensor exponent", "Python number"),
])
def test_untraceable_calls_fail_at_construction(call, op: str, instead: str) -> None:
    with pytest.raises(TracingError) as info:
        _construct(call)
    msg = str(info.value)
    assert "layer 'bad_layer' (Bad)" in msg
    assert __import__("re").search(op, msg), msg
    assert __import__("re").search(instead, msg), msg


def test_unsupported_ops_and_fixed_training_modes_are_named() -> None:
    with pytest.raises(TracingError, match=r"layer 'bad_layer' \(Bad\): keras.ops.cosh is not "
                                           r"supported.*Use one of the supported keras.ops"):
        _construct(lambda x: ops.cosh(x))
    assert not hasattr(ops, "cosh") and hasattr(ops, "matmul")
    with pytest.raises(TracingError, match="training=False.*trainable = False"):
        _construct(lambda x: layers.BatchNormalization()(x, training=False))
    with pytest.raises(TracingError, match="training=True.*training=None"):
        _construct(lambda x: layers.Dropout(0.2)(x, training=True))


def test_a_frozen_subclassed_layer_keeps_all_its_weights() -> None:
    model = build(OPS_SOURCE, "ops_model", keras)
    mixer = model.layers[1]
    mixer.trainable = False
    before = mixer.get_weights()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 5, 3)).astype(np.float32)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="mse")
    model.fit(x, rng.standard_normal((6, 2)).astype(np.float32), epochs=2, verbose=0)
    for a, b in zip(before, mixer.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert model.layers[2].get_weights()[0].shape == (12, 2)
    assert sum(v.shape[0] * (v.shape[1] if len(v.shape) > 1 else 1)
               for v in model.trainable_weights) == 12 * 2 + 2


def test_a_subclassed_layer_in_a_sequential_keeps_its_weights_when_layers_are_added() -> None:
    class Scale(layers.Layer):
        def build(self, input_shape):
            self.s = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="s")
            super().build(input_shape)

        def call(self, x):
            return x * self.s

    scale = Scale()
    model = keras.Sequential([keras.Input(shape=(3,)), scale])
    scale.set_weights([np.array([1.0, 2.0, 3.0], np.float32)])
    model.add(layers.Dense(2))                   # rebuilds the graph: traced again
    np.testing.assert_array_equal(model.get_weights()[0], [1.0, 2.0, 3.0])
    assert [type(l).__name__ for l in model.layers] == ["Scale", "Dense"]
    x = np.ones((2, 3), np.float32)
    kernel, bias = model.get_weights()[1:]
    np.testing.assert_allclose(model.predict(x, verbose=0), (x * [1, 2, 3]) @ kernel + bias,
                               rtol=1e-5)


def test_unsupported_call_results_and_shared_layers() -> None:
    with pytest.raises(TracingError, match="returned int"):
        _construct(lambda x: 3)
    block = layers.Dense(2)

    class Twice(layers.Layer):
        def __init__(self):
            super().__init__()
            self.inner = block

        def call(self, x):
            return self.inner(x)

    t = Twice()
    inputs = keras.Input(shape=(3,))
    t(inputs)
    with pytest.raises(ValueError, match="already used"):
        t(keras.Input(shape=(3,)))


def test_subclassed_layer_weights_round_trip_through_files(tmp_path: Path) -> None:
    """.weights.npz back into the same architecture; .weights.h5 into real Keras 3 (its layout
    for a subclassed layer: own variables, then each sublayer under its attribute)."""
    model = build(OPS_SOURCE, "ops_model", keras)
    x = np.random.default_rng(6).standard_normal((4, 5, 3)).astype(np.float32)
    model.set_weights([w + 0.1 for w in model.get_weights()])
    want = model.predict(x, verbose=0)
    model.save_weights(str(tmp_path / "m.weights.npz"))
    again = build(OPS_SOURCE, "ops_model", keras)
    again.load_weights(str(tmp_path / "m.weights.npz"))
    np.testing.assert_allclose(again.predict(x, verbose=0), want, rtol=1e-6)
    model.save_weights(str(tmp_path / "m.weights.h5"))
    theirs = real_keras('''
exec(source, globals())
model = ops_model(keras)
model.load_weights(path)
out["pred"] = model.predict(x, verbose=0)
''', tmp_path / "keras", source=OPS_SOURCE, path=str(tmp_path / "m.weights.h5"), x=x)
    np.testing.assert_allclose(theirs["pred"], want, rtol=1e-5, atol=1e-6)
