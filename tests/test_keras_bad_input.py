"""Bad input: each mistake raises a clear error naming the problem before anything runs, and leaves
the model's weights (and optimizer step count) as they were."""

from __future__ import annotations

import numpy as np
import pytest

from unity_legion import keras

L = keras.layers


class Spy(keras.callbacks.Callback):
    """Fails the test if any hook runs: the error must come before training starts."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __getattribute__(self, name):
        if name.startswith("on_"):
            object.__getattribute__(self, "calls").append(name)
        return object.__getattribute__(self, name)


@pytest.fixture(params=[1, 4], ids=["each-step", "grouped"])
def guarded(request, compiled_mlp, weights_equal):
    """A compiled 6-8-3 classifier (its steps read back one by one, or in groups of 4:
    steps_per_execution); on exit checks that nothing ran and no weight changed."""
    model = compiled_mlp()
    model.steps_per_execution = request.param
    spy = Spy()
    before = model.get_weights()
    yield model, spy
    assert spy.calls == []
    assert model.optimizer.iterations == 0
    weights_equal(model.get_weights(), before)


def _x(n=37, width=6):
    return np.random.default_rng(0).normal(size=(n, width)).astype(np.float32)


def _y(n=37):
    return np.arange(n) % 3


# (what the call changes from a good fit(x, y, batch_size=8, epochs=2), error, message fragment)
FIT_CASES = {
    "x too narrow": (dict(x=_x(width=5)), ValueError, r"expected data of shape \(batch, 6\), got an array of shape \(37, 5\)"),
    "x wrong rank": (dict(x=_x()[:, :, None]), ValueError, r"expected data of shape \(batch, 6\)"),
    "x strings": (dict(x=_x().astype(str)), ValueError, "expected numeric data, got dtype <U"),
    "x objects": (dict(x=_x().astype(object)), ValueError, "expected numeric data, got dtype object"),
    "x ragged": (dict(x=[[1.0] * 6, [1.0] * 5]), ValueError, "cannot be read as an array"),
    "x complex": (dict(x=_x().astype(complex)), ValueError, "expected numeric data"),
    "x missing": (dict(x=None), ValueError, "x is required"),
    "y missing": (dict(y=None), ValueError, "y is required"),
    "x, y lengths": (dict(y=_y(36)), ValueError, r"same number of samples.*x=\[37\], y=\[36\]"),
    "no samples": (dict(x=_x(0), y=_y(0)), ValueError, "no samples"),
    "negative label": (dict(y=np.r_[_y(36), -1]), ValueError, r"labels must be in \[0, 3\).*e\.g\. -1"),
    "label == classes": (dict(y=np.r_[_y(36), 3]), ValueError, r"labels must be in \[0, 3\).*e\.g\. 3"),
    "fractional label": (dict(y=_y() + 0.5), ValueError, "integer class indices"),
    "string labels": (dict(y=_y().astype(str)), ValueError, "labels must be integers"),
    "labels of wrong shape": (dict(y=np.zeros((37, 2, 2), int)), ValueError, "do not fit predictions"),
    "batch_size 0": (dict(batch_size=0), ValueError, "batch_size must be a positive integer, got 0"),
    "batch_size negative": (dict(batch_size=-4), ValueError, "batch_size must be a positive integer, got -4"),
    "batch_size float": (dict(batch_size=2.5), ValueError, "batch_size must be a positive integer"),
    "validation_batch_size 0": (dict(validation_batch_size=0, validation_split=0.2), ValueError, "batch_size"),
    "epochs negative": (dict(epochs=-1), ValueError, "epochs"),
    "initial_epoch negative": (dict(initial_epoch=-2), ValueError, "initial_epoch"),
    "validation_split 1": (dict(validation_split=1.0), ValueError, r"validation_split must be in \[0, 1\)"),
    "validation_split too small": (dict(x=_x(1), y=_y(1), validation_split=0.5), ValueError, "leaves no"),
    "validation_data not a pair": (dict(validation_data=_x()), ValueError, "validation_data must be a tuple"),
    "validation_data x shape": (dict(validation_data=(_x(width=4), _y())), ValueError, r"expected data of shape \(batch, 6\)"),
    "validation_data labels": (dict(validation_data=(_x(), _y() + 1)), ValueError, r"labels must be in \[0, 3\)"),
    "validation_data lengths": (dict(validation_data=(_x(5), _y(4))), ValueError, "same number of samples"),
    "validation_freq 0": (dict(validation_split=0.2, validation_freq=0), ValueError, "validation_freq must be a positive integer"),
    "verbose 3": (dict(verbose=3), ValueError, "verbose must be"),
    "callback not a Callback": (dict(callbacks=[print]), TypeError, "Callback instances"),
    "class_weight": (dict(class_weight={0: 2.0}), NotImplementedError, "class_weight"),
    "unknown argument": (dict(foo=1), TypeError, "foo"),
}


@pytest.mark.parametrize("case", list(FIT_CASES))
def test_bad_fit_arguments(guarded, case):
    model, spy = guarded
    change, error, fragment = FIT_CASES[case]
    kwargs = dict(x=_x(), y=_y(), batch_size=8, epochs=2, verbose=0)
    kwargs |= change
    kwargs["callbacks"] = [spy] + list(kwargs.get("callbacks", []))
    with pytest.raises(error, match=fragment):
        model.fit(**kwargs)


EVALUATE_PREDICT_CASES = {
    "evaluate: x shape": (lambda m, s: m.evaluate(_x(width=7), _y(), verbose=0, callbacks=[s]),
                          ValueError, r"expected data of shape \(batch, 6\)"),
    "evaluate: labels": (lambda m, s: m.evaluate(_x(), _y() + 3, verbose=0, callbacks=[s]),
                         ValueError, r"labels must be in \[0, 3\)"),
    "evaluate: lengths": (lambda m, s: m.evaluate(_x(), _y(30), verbose=0, callbacks=[s]),
                          ValueError, "same number of samples"),
    "evaluate: batch_size": (lambda m, s: m.evaluate(_x(), _y(), batch_size=0, verbose=0,
                                                     callbacks=[s]), ValueError, "batch_size"),
    "predict: x shape": (lambda m, s: m.predict(_x(width=2), verbose=0, callbacks=[s]),
                         ValueError, r"expected data of shape \(batch, 6\)"),
    "predict: strings": (lambda m, s: m.predict(np.full((3, 6), "a"), verbose=0, callbacks=[s]),
                         ValueError, "numeric"),
    "predict: batch_size": (lambda m, s: m.predict(_x(), batch_size=-1, verbose=0, callbacks=[s]),
                            ValueError, "batch_size"),
    "predict: no samples": (lambda m, s: m.predict(_x(0), verbose=0, callbacks=[s]),
                            ValueError, "no samples"),
}


@pytest.mark.parametrize("case", list(EVALUATE_PREDICT_CASES))
def test_bad_evaluate_and_predict_arguments(guarded, case):
    model, spy = guarded
    call, error, fragment = EVALUATE_PREDICT_CASES[case]
    with pytest.raises(error, match=fragment):
        call(model, spy)


def test_fit_and_evaluate_before_compile(make_mlp, weights_equal):
    model = make_mlp()
    before = model.get_weights()
    with pytest.raises(RuntimeError, match="compile"):
        model.fit(_x(), _y(), verbose=0)
    with pytest.raises(RuntimeError, match="compile"):
        model.evaluate(_x(), _y(), verbose=0)
    weights_equal(model.get_weights(), before)
    assert model.predict(_x(), verbose=0).shape == (37, 3)       # predict needs no compile


# ---------------------------------------------------------------------- construction
@pytest.mark.parametrize("make,error,fragment", [
    (lambda: L.Dense(3, foo=1), TypeError, "Dense: unknown argument.*'foo'"),
    (lambda: L.Dense(0), ValueError, "units must be a positive integer"),
    (lambda: L.Dense(3, activation="relux"), ValueError, "unknown activation 'relux'"),
    (lambda: L.Dense(3, activation=len), ValueError, "unsupported activation"),
    (lambda: L.Dense(3, kernel_initializer="nope"), ValueError, "unknown initializer 'nope'"),
    (lambda: L.Dense(3, name=5), TypeError, "name must be a string"),
    (lambda: keras.Input(shape=(0,)), ValueError, "positive integers"),
    (lambda: keras.Input(), ValueError, "shape is required"),
    (lambda: keras.Input(shape=(3,), foo=1), TypeError, "foo"),
    (lambda: keras.Model(np.ones(3), None), TypeError, "keras.Input"),
    (lambda: keras.Sequential([L.Dense(2), "dense"]), TypeError, "expected a layer"),
    (lambda: keras.optimizers.SGD(learning_rate=-1.0), ValueError, "learning_rate"),
    (lambda: keras.optimizers.SGD(momentum=1.5), ValueError, "momentum"),
    (lambda: keras.optimizers.Adam(beta_1=1.0), ValueError, "beta_1"),
    (lambda: keras.optimizers.Adam(foo=1), TypeError, "foo"),
])
def test_bad_constructor_arguments(make, error, fragment):
    with pytest.raises(error, match=fragment):
        make()


def test_dense_input_shape_mismatch_in_functional_graph():
    with pytest.raises(ValueError, match="dense"):
        L.Dense(2)([keras.Input(shape=(3,)), keras.Input(shape=(3,))])


# ---------------------------------------------------------------------- compile
@pytest.mark.parametrize("kwargs,error,fragment", [
    (dict(loss="nope"), ValueError, "unknown loss 'nope'"),
    (dict(loss="mse", metrics=["nope"]), ValueError, "unknown metric 'nope'"),
    (dict(loss="mse", optimizer="nope"), ValueError, "unknown optimizer 'nope'"),
    (dict(loss=None), ValueError, "a loss is required"),
    (dict(loss="mse", foo=1), TypeError, "unknown argument 'foo'"),
    (dict(loss=["mse", "mse"]), ValueError, "2 entries for 1 output"),
])
def test_bad_compile_arguments(make_mlp, kwargs, error, fragment):
    model = make_mlp()
    with pytest.raises(error, match=fragment):
        model.compile(**kwargs)
    assert not model.compiled
    with pytest.raises(RuntimeError, match="compile"):
        model.fit(_x(), _y(), verbose=0)


def test_bad_compile_names_checked_for_a_sequential_without_input():
    model = keras.Sequential([L.Dense(2)])
    with pytest.raises(ValueError, match="unknown loss 'nope'"):
        model.compile(loss="nope")
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        model.compile(loss="mse", metrics=["nope"])
    assert not model.compiled


def test_bad_multi_output_compile_arguments():
    a, b = keras.Input(shape=(3,), name="a"), keras.Input(shape=(2,), name="b")
    model = keras.Model([a, b], [L.Dense(2, name="o1")(a), L.Dense(1, name="o2")(b)])
    with pytest.raises(ValueError, match="loss_weights has 1 entries for 2 output"):
        model.compile(loss=["mse", "mse"], loss_weights=[1.0])
    with pytest.raises(ValueError, match=r"unknown outputs \['zz'\]"):
        model.compile(loss={"o1": "mse", "zz": "mse"})
    model.compile(optimizer="sgd", loss="mse")
    before = model.get_weights()
    xs, ys = [np.ones((4, 3)), np.ones((4, 2))], [np.zeros((4, 2)), np.zeros((4, 1))]
    with pytest.raises(ValueError, match=r"2 input\(s\) \['a', 'b'\], got 1 array"):
        model.fit(xs[0], ys, verbose=0)
    with pytest.raises(ValueError, match="do not match the model's input names"):
        model.fit({"a": xs[0], "c": xs[1]}, ys, verbose=0)
    with pytest.raises(ValueError, match=r"2 target\(s\)"):
        model.fit(xs, ys[0], verbose=0)
    with pytest.raises(ValueError, match="same number of samples"):
        model.fit([xs[0], xs[1][:3]], ys, verbose=0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.fit(xs, [np.full((4, 2), np.nan), ys[1]], verbose=0)
    assert model.optimizer.iterations == 0
    for u, v in zip(model.get_weights(), before):
        np.testing.assert_array_equal(u, v)


# ---------------------------------------------------------------------- weights
def test_set_weights_wrong_shapes_change_nothing(compiled_mlp, weights_equal):
    model = compiled_mlp()
    before = model.get_weights()
    good = [w + 1.0 for w in before]
    with pytest.raises(ValueError, match=r"expected shape \(8, 3\), got \(3, 8\)"):
        model.set_weights(good[:2] + [good[2].T, good[3]])     # the first two are fine
    with pytest.raises(ValueError, match="4 weight arrays, got 3"):
        model.set_weights(good[:3])
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.set_weights(good[:3] + [np.full(3, np.nan)])
    with pytest.raises(ValueError, match="expected numbers"):
        model.set_weights(good[:3] + [np.array(["a", "b", "c"])])
    with pytest.raises(ValueError, match=r"2 weight\(s\).*got 1 array"):
        model.layers[0].set_weights([good[0]])
    with pytest.raises(ValueError, match=r"expected shape \(8,\), got \(3,\)"):
        model.layers[0].set_weights([good[0], good[3]])
    weights_equal(model.get_weights(), before)


def test_weights_file_of_another_model_is_rejected(compiled_mlp, make_mlp, tmp_path,
                                                   weights_equal):
    model = compiled_mlp()
    before = model.get_weights()
    make_mlp(classes=4).save_weights(tmp_path / "four.weights.npz")
    with pytest.raises(ValueError, match=r"does not match model.*'dense_1/kernel'.*\(8, 4\) in the file"):
        model.load_weights(tmp_path / "four.weights.npz")
    np.savez(tmp_path / "renamed.weights.npz", **{f"w{i}": w for i, w in enumerate(before)})
    with pytest.raises(ValueError, match="does not match model.*missing.*unexpected"):
        model.load_weights(tmp_path / "renamed.weights.npz")
    pickled = tmp_path / "pickled.weights.npz"
    np.savez(pickled, **{"dense/kernel": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="not a weights file"):           # no pickle loading
        model.load_weights(pickled)
    weights_equal(model.get_weights(), before)
    assert model.optimizer.iterations == 0
