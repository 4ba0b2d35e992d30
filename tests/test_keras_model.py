"""keras.Sequential / keras.Model: building, layers, summary, weights and weight files."""

from __future__ import annotations

import numpy as np
import pytest

from unity_legion import keras

L = keras.layers


def relu(z):
    return np.maximum(z, 0.0)


# ---------------------------------------------------------------------- Sequential
def test_sequential_with_input_is_built(make_mlp):
    model = make_mlp()
    assert model.built
    assert [type(l).__name__ for l in model.layers] == ["Dense", "Dense"]   # no InputLayer
    assert model.input_shape == (None, 6)
    assert model.output_shape == (None, 3)
    assert [w.shape for w in model.get_weights()] == [(6, 8), (8,), (8, 3), (3,)]
    assert model.count_params() == 6 * 8 + 8 + 8 * 3 + 3


def test_sequential_add_and_pop():
    model = keras.Sequential()
    assert not model.built and model.get_weights() == []
    model.add(keras.Input(shape=(5,)))
    first = L.Dense(4, name="first")
    model.add(first)
    model.add(L.Dense(7, name="second"))
    assert model.built and model.count_params() == (5 * 4 + 4) + (4 * 7 + 7)
    assert model.output_shape == (None, 7)
    kept = first.get_weights()

    popped = model.pop()
    assert popped.name == "second"
    assert [l.name for l in model.layers] == ["first"]
    assert model.output_shape == (None, 4)
    assert model.count_params() == 5 * 4 + 4
    for a, b in zip(first.get_weights(), kept):   # the remaining layer keeps its weights
        np.testing.assert_array_equal(a, b)

    model.add(L.Dense(2, use_bias=False))
    assert model.output_shape == (None, 2) and model.count_params() == 24 + 8
    with pytest.raises(ValueError, match="first item"):
        model.add(keras.Input(shape=(3,)))
    with pytest.raises(ValueError, match="already in the model"):
        model.add(L.Dense(3, name="first"))


def test_pop_empty_sequential_raises():
    with pytest.raises(TypeError, match="no layers"):
        keras.Sequential().pop()


def test_sequential_build_input_shape():
    model = keras.Sequential([L.Dense(4, activation="tanh"), L.Dense(2)])
    assert not model.built
    with pytest.raises(ValueError, match="not been built"):
        model.count_params()
    model.build((None, 3))
    assert model.built and model.input_shape == (None, 3) and model.output_shape == (None, 2)
    assert model.count_params() == (3 * 4 + 4) + (4 * 2 + 2)
    x = np.random.default_rng(3).normal(size=(5, 3)).astype(np.float32)
    k1, b1, k2, b2 = model.get_weights()
    np.testing.assert_allclose(model.predict(x, verbose=0), np.tanh(x @ k1 + b1) @ k2 + b2,
                               rtol=1e-5, atol=1e-6)


def test_sequential_without_input_builds_on_first_fit():
    """As in Keras 3: compile() before the input shape is known, fit() builds from the data."""
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(12, 5)).astype(np.float32), rng.integers(0, 2, 12)
    # softmax: the loss takes probabilities (raw outputs summing to ~0 made a step's loss
    # non-finite, and that step was skipped, for some initial weights)
    model = keras.Sequential([L.Dense(4, activation="relu"), L.Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    assert not model.built
    history = model.fit(x, y, epochs=2, batch_size=5, verbose=0)
    assert model.built and model.input_shape == (None, 5)
    assert set(history.history) == {"loss", "accuracy"} and len(history.history["loss"]) == 2
    assert model.optimizer.iterations == 2 * 3


def test_sequential_without_input_rejects_bad_first_data():
    model = keras.Sequential([L.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="cannot build the model"):
        model.fit(np.array(["a", "b"]), np.zeros((2, 2)), verbose=0)
    with pytest.raises(ValueError, match="x is required"):
        model.fit(None, np.zeros((2, 2)), verbose=0)
    assert not model.built
    model.fit(np.ones((3, 4)), np.zeros((3, 2)), verbose=0)      # good data still builds it
    assert model.input_shape == (None, 4)


def test_sequential_without_input_builds_on_predict():
    model = keras.Sequential([L.Dense(3)])
    out = model.predict(np.ones((4, 7), np.float32), verbose=0)
    assert out.shape == (4, 3) and model.input_shape == (None, 7)


# ---------------------------------------------------------------------- functional
def test_functional_model_layers_and_shapes():
    inp = keras.Input(shape=(4,), name="features")
    h = L.Dense(6, activation="relu", name="hidden")(inp)
    out = L.Dense(2, activation="softmax", name="probs")(h)
    model = keras.Model(inp, out, name="clf")
    assert model.name == "clf"
    assert [l.name for l in model.layers] == ["features", "hidden", "probs"]   # as Keras 3
    assert model.input_names == ["features"] and model.output_names == ["probs"]
    assert model.input_shape == (None, 4) and model.output_shape == (None, 2)
    assert model.count_params() == (4 * 6 + 6) + (6 * 2 + 2)
    probs = model.predict(np.random.default_rng(0).normal(size=(9, 4)), verbose=0)
    assert probs.shape == (9, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


def test_functional_two_inputs_two_outputs_without_merge():
    a, b = keras.Input(shape=(4,), name="a"), keras.Input(shape=(3,), name="b")
    oa = L.Dense(3, name="head_a")(L.Dense(5, activation="relu", name="trunk_a")(a))
    ob = L.Dense(2, name="head_b")(b)
    model = keras.Model([a, b], [oa, ob])
    assert model.input_shape == [(None, 4), (None, 3)]
    assert model.output_shape == [(None, 3), (None, 2)]
    assert model.count_params() == (4 * 5 + 5) + (5 * 3 + 3) + (3 * 2 + 2)
    rng = np.random.default_rng(1)
    xa, xb = rng.normal(size=(6, 4)), rng.normal(size=(6, 3))
    pa, pb = model.predict([xa, xb], verbose=0)
    pa2, pb2 = model.predict({"b": xb, "a": xa}, verbose=0)   # dict by input name
    np.testing.assert_array_equal(pa, pa2)
    np.testing.assert_array_equal(pb, pb2)
    kb, bb = model.get_layer("head_b").get_weights()
    np.testing.assert_allclose(pb, xb.astype(np.float32) @ kb + bb, rtol=1e-5, atol=1e-6)


def _merge_model():
    a, b = keras.Input(shape=(4,), name="a"), keras.Input(shape=(3,), name="b")
    joined = L.Concatenate(name="join")([L.Dense(5, activation="relu", name="da")(a),
                                         L.Dense(5, activation="relu", name="db")(b)])
    trunk = L.Dense(6, activation="relu", name="trunk")(joined)
    cls = L.Dense(3, name="cls")(trunk)
    reg = L.Dense(2, name="reg")(trunk)
    return keras.Model([a, b], [cls, reg])


@pytest.fixture
def two_in_two_out_data():
    rng = np.random.default_rng(7)
    xa, xb = rng.normal(size=(21, 4)).astype(np.float32), rng.normal(size=(21, 3)).astype(np.float32)
    ya, yb = rng.integers(0, 3, 21), rng.normal(size=(21, 2)).astype(np.float32)
    return [xa, xb], [ya, yb]


def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def test_multi_input_multi_output_losses_weights_and_metric_names(two_in_two_out_data):
    x, y = two_in_two_out_data
    model = _merge_model()
    assert model.count_params() == (4 * 5 + 5) + (3 * 5 + 5) + (10 * 6 + 6) + (6 * 3 + 3) + (6 * 2 + 2)
    model.compile(optimizer=keras.optimizers.SGD(0.05),
                  loss=[keras.losses.SparseCategoricalCrossentropy(from_logits=True), "mse"],
                  loss_weights=[1.0, 0.25], metrics=[["accuracy"], ["mae"]])
    # The total loss is the weighted sum of the per-output losses (checked with numpy).
    logits, reg = model.predict(x, verbose=0)
    ce = -_log_softmax(logits.astype(np.float64))[np.arange(21), y[0]].mean()
    mse = ((reg.astype(np.float64) - y[1]) ** 2).mean()
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    # Keras 3 names a multi-output model's metrics "<output>_<metric>".
    assert set(logs) == {"loss", "cls_accuracy", "reg_mae"}
    np.testing.assert_allclose(logs["loss"], ce + 0.25 * mse, rtol=1e-5)
    np.testing.assert_allclose(logs["cls_accuracy"], np.mean(logits.argmax(1) == y[0]))
    np.testing.assert_allclose(logs["reg_mae"], np.abs(reg - y[1]).mean(), rtol=1e-5)

    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, validation_data=(x, y))
    assert set(history.history) == {"loss", "cls_accuracy", "reg_mae", "val_loss",
                                    "val_cls_accuracy", "val_reg_mae"}


def test_loss_weight_zero_leaves_that_head_untouched(two_in_two_out_data):
    x, y = two_in_two_out_data
    model = _merge_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss={"cls": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                        "reg": "mse"},
                  loss_weights={"cls": 1.0, "reg": 0.0})
    reg0, trunk0 = model.get_layer("reg").get_weights(), model.get_layer("trunk").get_weights()
    model.fit(x, {"cls": y[0], "reg": y[1]}, batch_size=7, epochs=1, verbose=0)
    for a, b in zip(model.get_layer("reg").get_weights(), reg0):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(model.get_layer("trunk").get_weights()[0], trunk0[0])


def test_add_subtract_multiply_merge_forward():
    a, b = keras.Input(shape=(3,)), keras.Input(shape=(3,))
    outs = [L.Add()([a, b]), L.Subtract()([a, b]), L.Multiply()([a, b])]
    model = keras.Model([a, b], outs)
    assert model.count_params() == 0 and model.get_weights() == []
    rng = np.random.default_rng(2)
    xa, xb = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    s, d, p = model.predict([xa, xb], verbose=0)
    np.testing.assert_allclose(s, xa + xb, rtol=1e-6)
    np.testing.assert_allclose(d, xa - xb, rtol=1e-6)
    np.testing.assert_allclose(p, xa * xb, rtol=1e-6)


def test_embedding_flatten_reshape_model_forward_and_weights():
    inp = keras.Input(shape=(3,), dtype="int64")
    emb = L.Embedding(10, 4, name="emb")
    h = L.Flatten()(emb(inp))                                     # (None, 12)
    out = L.Dense(2, name="out")(L.Reshape((12,))(L.Reshape((3, 4))(h)))
    model = keras.Model(inp, out)
    assert [type(l).__name__ for l in model.layers] == ["InputLayer", "Embedding", "Flatten",
                                                         "Reshape", "Reshape", "Dense"]
    assert model.count_params() == 10 * 4 + 12 * 2 + 2
    table, k, b = model.get_weights()
    assert table.shape == (10, 4)
    idx = np.array([[0, 9, 3], [5, 5, 1]])
    np.testing.assert_allclose(model.predict(idx, verbose=0), table[idx].reshape(2, 12) @ k + b,
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="emb"):                  # indices out of range
        model.predict(np.array([[0, 10, 1]]), verbose=0)


def test_layer_cannot_be_called_twice_or_shared():
    dense = L.Dense(2)
    inp = keras.Input(shape=(3,))
    dense(inp)
    with pytest.raises(ValueError, match="already used"):
        dense(keras.Input(shape=(3,)))
    with pytest.raises(TypeError, match="symbolic"):
        L.Dense(2)(np.ones((1, 3)))


def test_model_output_must_depend_on_its_inputs():
    a, b = keras.Input(shape=(2,)), keras.Input(shape=(2,))
    out = L.Dense(1)(b)
    with pytest.raises(ValueError, match="not among the model's inputs"):
        keras.Model(a, out)


# ---------------------------------------------------------------------- summary, get_layer
def test_summary_lists_layers_and_param_counts(make_mlp):
    model = make_mlp()
    lines: list[str] = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    for layer in model.layers:
        assert f"{layer.name} (Dense)" in text
    assert "(None, 8)" in text and "(None, 3)" in text
    assert "Total params: 83" in text
    assert "Trainable params: 83" in text and "Non-trainable params: 0" in text
    model.layers[0].trainable = False
    lines.clear()
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "Total params: 83" in text
    assert "Trainable params: 27" in text and "Non-trainable params: 56" in text


def test_summary_prints_to_stdout(make_mlp, capsys):
    make_mlp().summary()
    out = capsys.readouterr().out
    assert 'Model: "sequential' in out and "Total params: 83" in out


def test_count_params_exact_without_bias():
    model = keras.Sequential([keras.Input(shape=(10,)), L.Dense(7, use_bias=False), L.Dense(1)])
    assert model.count_params() == 70 + 8
    assert [l.count_params() for l in model.layers] == [70, 8]
    assert [w.shape for w in model.get_weights()] == [(10, 7), (7, 1), (1,)]


def test_get_layer_by_name_and_index(make_mlp):
    model = make_mlp()
    first, last = model.layers
    assert model.get_layer(first.name) is first
    assert model.get_layer(index=0) is first
    assert model.get_layer(index=-1) is last
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        model.get_layer("nope")
    with pytest.raises(ValueError, match="out of range"):
        model.get_layer(index=2)
    with pytest.raises(ValueError, match="exactly one"):
        model.get_layer()


# ---------------------------------------------------------------------- weights
def test_weights_keras_layout_and_forward(make_mlp):
    model = make_mlp()
    kernel, bias = model.layers[0].get_weights()
    assert kernel.shape == (6, 8) and bias.shape == (8,)          # Dense kernel (in, out)
    assert kernel.dtype == np.float32 and np.all(bias == 0)       # zeros bias initializer
    limit = np.sqrt(6.0 / (6 + 8))                                  # glorot_uniform
    assert np.all(np.abs(kernel) <= limit) and kernel.std() > limit / 4
    x = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    k1, b1, k2, b2 = model.get_weights()
    np.testing.assert_allclose(model.predict(x, verbose=0), relu(x @ k1 + b1) @ k2 + b2,
                               rtol=1e-5, atol=1e-6)


def test_set_weights_round_trip_and_effect(make_mlp):
    model = make_mlp()
    rng = np.random.default_rng(5)
    new = [rng.normal(size=w.shape) for w in model.get_weights()]          # float64 in
    model.set_weights(new)
    got = model.get_weights()
    assert all(g.dtype == np.float32 for g in got)
    for g, n in zip(got, new):
        np.testing.assert_array_equal(g, n.astype(np.float32))
    x = rng.normal(size=(4, 6)).astype(np.float32)
    k1, b1, k2, b2 = got
    np.testing.assert_allclose(model.predict(x, verbose=0), relu(x @ k1 + b1) @ k2 + b2,
                               rtol=1e-5, atol=1e-6)
    # A layer's own set_weights, after compile (weights then live in the executor).
    model.compile(optimizer="sgd", loss="mse")
    model.layers[1].set_weights([np.ones((8, 3)), np.full(3, 0.5)])
    np.testing.assert_array_equal(model.get_weights()[2], np.ones((8, 3), np.float32))
    np.testing.assert_array_equal(model.layers[1].get_weights()[1], np.full(3, 0.5, np.float32))
    np.testing.assert_array_equal(model.get_weights()[0], k1)


def test_get_weights_returns_copies(make_mlp):
    model = make_mlp()
    w = model.get_weights()
    w[0][...] = 123.0
    assert not np.any(model.get_weights()[0] == 123.0)


def test_save_and_load_weights_round_trip(make_mlp, tmp_path, weights_equal):
    model = make_mlp()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(10, 6)), rng.integers(0, 3, 10), epochs=1, verbose=0)
    saved = model.get_weights()
    path = tmp_path / "sub" / "mlp.weights.npz"
    model.save_weights(path)
    with np.load(path, allow_pickle=False) as data:       # plain numpy, no pickle
        assert sorted(data.files) == ["dense/bias", "dense/kernel", "dense_1/bias", "dense_1/kernel"]
        np.testing.assert_array_equal(data["dense/kernel"], saved[0])
    model.set_weights([np.zeros_like(w) for w in saved])
    model.load_weights(path)
    weights_equal(model.get_weights(), saved)
    # A model of the same architecture built afresh (its layers get other names) loads it,
    # before compile and after.
    fresh = make_mlp()
    assert fresh.layers[0].name != model.layers[0].name
    fresh.load_weights(str(path))
    weights_equal(fresh.get_weights(), saved)
    x = rng.normal(size=(3, 6)).astype(np.float32)
    np.testing.assert_array_equal(fresh.predict(x, verbose=0), model.predict(x, verbose=0))


def test_save_weights_overwrite_and_extension(make_mlp, tmp_path):
    model = make_mlp()
    path = tmp_path / "m.weights.npz"
    model.save_weights(path)
    with pytest.raises(FileExistsError):
        model.save_weights(path, overwrite=False)
    model.save_weights(path, overwrite=True)
    with pytest.raises(ValueError, match=r"\.weights\.npz"):
        model.save_weights(tmp_path / "m.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.weights.npz"]   # no temp files left


@pytest.mark.parametrize("other", ["wider", "deeper", "shallower"])
def test_load_weights_of_another_model_fails_cleanly(make_mlp, tmp_path, other, weights_equal):
    model = make_mlp()
    if other == "wider":
        source = make_mlp(hidden=9)
        fragment = r"does not match.*'dense/kernel'.*\(6, 9\) in the file, \(6, 8\)"
    elif other == "deeper":
        source = keras.Sequential([keras.Input(shape=(6,)), L.Dense(8), L.Dense(8), L.Dense(3)])
        fragment = r"does not match.*unexpected \['dense_2/bias', 'dense_2/kernel'\]"
    else:
        source = keras.Sequential([keras.Input(shape=(6,)), L.Dense(3)])
        fragment = r"does not match.*missing \['dense_1/bias', 'dense_1/kernel'\]"
    path = tmp_path / "other.weights.npz"
    source.save_weights(path)
    before = model.get_weights()
    with pytest.raises(ValueError, match=fragment):
        model.load_weights(path)
    weights_equal(model.get_weights(), before)


def test_load_weights_not_a_weights_file(make_mlp, tmp_path, weights_equal):
    model = make_mlp()
    before = model.get_weights()
    bad = tmp_path / "junk.weights.npz"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a weights file"):
        model.load_weights(bad)
    with pytest.raises(FileNotFoundError):
        model.load_weights(tmp_path / "missing.weights.npz")
    weights_equal(model.get_weights(), before)
