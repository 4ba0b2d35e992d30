"""Keras objects: layers' and models' weights as variables, named attributes (`layer.kernel`),
`model.layers` in Keras 3's order; compared with real Keras 3 where it has an answer."""

from __future__ import annotations

import numpy as np
import pytest

from unity_legion import keras

from keras_oracle import build, real_keras

L = keras.layers

BRANCHY = '''
def branchy(keras):
    L = keras.layers
    x = keras.Input((6, 6, 3), name="x")
    a = L.Conv2D(4, 3, padding="same", name="a1")(x)
    a = L.BatchNormalization(name="a_bn")(a)
    b = L.Conv2D(2, 1, name="b1")(L.MaxPooling2D(3, 1, padding="same", name="b_pool")(x))
    c = L.Conv2D(3, 1, name="c1")(x)
    c = L.Conv2D(3, 3, padding="same", name="c2")(c)
    c = L.Conv2D(3, 3, padding="same", name="c3")(c)
    h = L.Concatenate(name="cat")([a, b, c])
    h = L.GlobalAveragePooling2D(name="gap")(h)
    e = L.Dense(4, name="side")(h)
    out = L.Dense(2, name="out")(L.Add(name="sum")([L.Dense(4, name="main")(h), e]))
    model = keras.Model(x, out)
    model.get_layer("side").trainable = False
    return model
'''

ORACLE = BRANCHY + '''
model = branchy(keras)
def describe(vs):
    return [[v.path, v.name, list(v.shape), str(v.dtype), bool(v.trainable)] for v in vs]
out["layers"] = [l.name for l in model.layers]
out["weights"] = describe(model.weights)
out["trainable"] = describe(model.trainable_weights)
out["non_trainable"] = describe(model.non_trainable_weights)
bn = model.get_layer("a_bn")
out["bn_weights"] = describe(bn.weights)
out["bn_trainable"] = describe(bn.trainable_weights)
out["bn_non_trainable"] = describe(bn.non_trainable_weights)
out["side_trainable"] = describe(model.get_layer("side").trainable_weights)
out["side_non_trainable"] = describe(model.get_layer("side").non_trainable_weights)
out["kernel"] = [model.get_layer("a1").kernel.path, model.get_layer("a_bn").moving_mean.path]
out["params"] = model.count_params()
mha_in = keras.Input((3, 4))
mha = L = keras.layers.MultiHeadAttention(2, 2, name="att")
keras.Model(mha_in, mha(mha_in, mha_in))
out["mha"] = describe(mha.weights)
'''


def describe(vs):
    return [[v.path, v.name, list(v.shape), str(v.dtype), bool(v.trainable)] for v in vs]


@pytest.mark.slow
def test_layers_weights_and_paths_match_keras(tmp_path):
    k = real_keras(ORACLE, tmp_path)
    model = build(BRANCHY, "branchy", keras)
    assert [l.name for l in model.layers] == k["layers"]
    assert model.count_params() == k["params"]
    assert describe(model.weights) == k["weights"]
    assert describe(model.trainable_weights) == k["trainable"]
    assert describe(model.non_trainable_weights) == k["non_trainable"]
    bn = model.get_layer("a_bn")
    assert describe(bn.weights) == k["bn_weights"]
    assert describe(bn.trainable_weights) == k["bn_trainable"]
    assert describe(bn.non_trainable_weights) == k["bn_non_trainable"]
    assert describe(model.get_layer("side").trainable_weights) == k["side_trainable"]
    assert describe(model.get_layer("side").non_trainable_weights) == k["side_non_trainable"]
    assert [model.get_layer("a1").kernel.path, bn.moving_mean.path] == k["kernel"]
    inp = keras.Input((3, 4))
    mha = L.MultiHeadAttention(2, 2, name="att")
    keras.Model(inp, mha(inp, inp))
    assert describe(mha.weights) == k["mha"]


def mlp() -> keras.Model:
    return keras.Sequential([keras.Input((4,)), L.Dense(3, activation="relu"), L.Dense(2)])


def test_named_attributes_are_variables_that_write_through():
    model = mlp()
    dense = model.layers[0]
    assert dense.kernel.shape == (4, 3) and dense.bias.shape == (3,)
    assert dense.kernel.dtype == "float32" and dense.kernel.trainable
    assert dense.kernel.path == f"{dense.name}/kernel" and dense.kernel.name == "kernel"
    np.testing.assert_array_equal(dense.kernel.numpy(), model.get_weights()[0])
    assert dense.weights == [dense.kernel, dense.bias]
    new = np.arange(12, dtype=np.float32).reshape(4, 3)
    dense.kernel.assign(new)
    np.testing.assert_array_equal(model.get_weights()[0], new)
    np.testing.assert_array_equal(np.asarray(dense.kernel), new)
    model.weights[3].assign(np.ones(2))
    np.testing.assert_array_equal(model.layers[1].bias.numpy(), np.ones(2, np.float32))


def test_assign_is_checked_like_set_weights():
    model = mlp()
    kernel = model.layers[0].kernel
    before = kernel.numpy()
    with pytest.raises(ValueError, match=r"expected shape \(4, 3\), got \(3, 4\)"):
        kernel.assign(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        kernel.assign(np.full((4, 3), np.nan))
    np.testing.assert_array_equal(kernel.numpy(), before)


def test_missing_and_unbuilt_attributes_are_clear():
    dense = L.Dense(3, use_bias=False)
    with pytest.raises(AttributeError, match="created when the layer is built"):
        dense.kernel
    assert dense.weights == []
    keras.Sequential([keras.Input((2,)), dense])
    assert dense.kernel.shape == (2, 3)
    with pytest.raises(AttributeError, match="use_bias=False"):
        dense.bias
    with pytest.raises(AttributeError):
        dense.gamma


def test_variables_after_compile_and_fit(tmp_path):
    model = mlp()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 4)).astype(np.float32), rng.normal(size=(16, 2)).astype(np.float32)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert model._executor is not None            # the executor holds the weights now
    for v, w in zip(model.weights, model.get_weights()):
        np.testing.assert_array_equal(v.numpy(), w)
    last = model.layers[1]
    last.kernel.assign(np.zeros((3, 2)))
    last.bias.assign(np.array([1.5, -2.0]))
    np.testing.assert_allclose(model.predict(x, verbose=0), np.tile([1.5, -2.0], (16, 1)))
    before = model.get_weights()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert not np.array_equal(model.layers[1].bias.numpy(), before[3])   # trained on from there


def test_trainable_flags_follow_the_layer():
    model = keras.Sequential([keras.Input((4,)), L.Dense(3), L.BatchNormalization()])
    bn = model.layers[1]
    assert [v.name for v in bn.trainable_weights] == ["gamma", "beta"]
    assert [v.name for v in bn.non_trainable_weights] == ["moving_mean", "moving_variance"]
    assert len(model.trainable_weights) == 4 and len(model.non_trainable_weights) == 2
    model.layers[0].trainable = False
    assert [v.path for v in model.non_trainable_weights][:2] == [
        f"{model.layers[0].name}/kernel", f"{model.layers[0].name}/bias"]
    model.trainable = False
    assert model.trainable_weights == [] and len(model.non_trainable_weights) == 6


def test_model_checkpoint_writes_keras_files(tmp_path):
    model = mlp()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(16, 4)).astype(np.float32), rng.normal(size=(16, 2)).astype(np.float32)
    cbs = [keras.callbacks.ModelCheckpoint(str(tmp_path / "best.weights.h5"), monitor="loss",
                                           save_best_only=True, save_weights_only=True),
           keras.callbacks.ModelCheckpoint(str(tmp_path / "e{epoch}.keras"))]
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=cbs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.weights.h5", "e1.keras", "e2.keras"]
    last = keras.models.load_model(tmp_path / "e2.keras")
    for a, b in zip(last.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    fresh = mlp()
    fresh.load_weights(tmp_path / "best.weights.h5")
    best = 1 + int(np.argmin(history.history["loss"]))
    epoch_model = keras.models.load_model(tmp_path / f"e{best}.keras")
    for a, b in zip(fresh.get_weights(), epoch_model.get_weights()):
        np.testing.assert_array_equal(a, b)


RANDOM_GRAPH = '''
def random_model(keras, seed):
    """A random DAG of Dense and Add layers over 1-3 inputs, with 1 or more outputs (some of
    them also read by other layers)."""
    import random
    r = random.Random(seed)
    L = keras.layers
    n_in = r.randint(1, 3)
    ins = [keras.Input((4,), name=f"in{i}") for i in range(n_in)]
    pool, used = list(ins), set()
    for j in range(r.randint(3, 9)):
        picks = r.sample(range(len(pool)), r.randint(1, min(3, len(pool))))
        used |= set(picks)
        srcs = [pool[p] for p in picks]
        pool.append(L.Dense(4, name=f"d{j}")(srcs[0]) if len(srcs) == 1
                    else L.Add(name=f"a{j}")(srcs))
    unused = [pool[i] for i in range(n_in, len(pool)) if i not in used]
    outs = unused[-r.randint(1, len(unused)):] if unused else [pool[-1]]
    if r.random() < 0.3 and pool[n_in] not in outs:
        outs.append(pool[n_in])
    return keras.Model(ins, outs if len(outs) > 1 else outs[0])
'''


@pytest.mark.slow
def test_layer_order_matches_keras_on_random_graphs(tmp_path):
    seeds = list(range(30))
    code = RANDOM_GRAPH + '''
out["orders"] = {}
for s in seeds:
    try:
        m = random_model(keras, s)
    except ValueError:          # e.g. an input no output depends on
        continue
    out["orders"][str(s)] = [l.name for l in m.layers]
'''
    orders = real_keras(code, tmp_path, seeds=seeds)["orders"]
    assert len(orders) >= 20
    for s, want in orders.items():
        source = RANDOM_GRAPH + f"\ndef graph_{s}(keras):\n    return random_model(keras, {s})\n"
        model = build(source, f"graph_{s}", keras)
        assert [l.name for l in model.layers] == want, f"seed {s}"
