"""compile(steps_per_execution=N): fit issues N training steps before it reads their losses
back (one wait for the host instead of N). The steps train exactly as one at a time; a
non-finite batch inside a group changes nothing and the steps after it still apply; batch
callbacks run once per group, as in Keras."""

from __future__ import annotations

import numpy as np
import pytest

from unity_legion import keras
from unity_legion.keras.saving.compile_config import compile_config


def _schedule(iterations: int) -> float:
    return 0.01 / (1.0 + 0.1 * iterations)


class _Batches(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    def on_train_batch_begin(self, batch, logs=None):
        self.calls.append(("begin", batch))

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("end", batch))


def _fit(make_mlp, x, y, steps_per_execution, optimizer=None, **fit_kwargs):
    keras.utils.set_random_seed(3)
    model = make_mlp()
    model.compile(optimizer=optimizer or keras.optimizers.Adam(_schedule),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"],
                  strategy="data_parallel", steps_per_execution=steps_per_execution)
    spy = _Batches()
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[spy], **fit_kwargs)
    return model, history, spy


def test_grouped_steps_train_as_single_steps(make_mlp, cls_data) -> None:
    x, y = cls_data   # 37 samples, batch 4: 10 steps an epoch, the last of one sample
    one, h1, _ = _fit(make_mlp, x, y, 1)
    three, h3, spy = _fit(make_mlp, x, y, 3)
    assert one.optimizer.iterations == three.optimizer.iterations == 20
    for k in ("loss", "accuracy"):
        np.testing.assert_allclose(h3.history[k], h1.history[k], rtol=1e-6)
    for a, b in zip(three.get_weights(), one.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # Keras' hooks per group: begin at its first batch, end at its last
    groups = [(0, 2), (3, 5), (6, 8), (9, 9)]
    want = [c for first, last in groups for c in (("begin", first), ("end", last))] * 2
    assert spy.calls == want


def test_a_non_finite_batch_in_a_group_changes_nothing(make_mlp, cls_data) -> None:
    x, y = cls_data
    bad = x.copy()
    bad[5, 2] = np.inf   # the second batch of each epoch (no shuffling)
    sgd = lambda: keras.optimizers.SGD(0.1)   # noqa: E731 (its step count moves nothing)
    one, h1, _ = _fit(make_mlp, bad, y, 1, optimizer=sgd(), shuffle=False)
    four, h4, _ = _fit(make_mlp, bad, y, 4, optimizer=sgd(), shuffle=False)
    assert one.optimizer.iterations == four.optimizer.iterations == 18
    # (a skipped step stays out of the epoch's means)
    np.testing.assert_allclose(h4.history["loss"], h1.history["loss"], rtol=1e-6)
    for a, b in zip(four.get_weights(), one.get_weights()):
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    keras.utils.set_random_seed(3)
    initial = make_mlp().get_weights()
    assert not np.allclose(four.get_weights()[0], initial[0])   # the other steps applied


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "auto"])
def test_a_bad_steps_per_execution_is_refused_at_compile(make_mlp, value) -> None:
    model = make_mlp()
    with pytest.raises(ValueError, match="steps_per_execution must be a positive integer"):
        model.compile(optimizer="sgd", loss="mse", steps_per_execution=value)
    assert not model.compiled


def test_steps_per_execution_is_part_of_the_compile_config(make_mlp) -> None:
    model = make_mlp()
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=5)
    assert model.steps_per_execution == 5 and compile_config(model)["steps_per_execution"] == 5


def test_grouped_evaluation_equals_one_batch_at_a_time(make_mlp, cls_data) -> None:
    x, y = cls_data
    model, _, _ = _fit(make_mlp, x, y, 1)
    want = model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    model.steps_per_execution = 4
    spy = _Batches()
    spy.on_test_batch_begin = lambda b, logs=None: spy.calls.append(("begin", b))
    spy.on_test_batch_end = lambda b, logs=None: spy.calls.append(("end", b))
    got = model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True, callbacks=[spy])
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-6)
    assert spy.calls == [("begin", 0), ("end", 3), ("begin", 4), ("end", 7), ("begin", 8),
                         ("end", 9)]


def test_terminate_on_nan_sees_a_non_finite_step_inside_a_group(make_mlp, cls_data) -> None:
    x, y = cls_data
    bad = x.copy()
    bad[5, 2] = np.nan   # the second batch, inside the first group of 4
    keras.utils.set_random_seed(3)
    model = make_mlp()
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=4)
    history = model.fit(bad, y, batch_size=4, epochs=3, verbose=0, shuffle=False,
                        callbacks=[keras.callbacks.TerminateOnNaN()])
    assert model.optimizer.iterations == 3 and len(history.epoch) == 1   # stopped after it


def test_grouped_prediction_equals_one_batch_at_a_time(make_mlp, cls_data) -> None:
    x, y = cls_data   # 37 samples, batch 4: 10 batches, the last of one sample
    model, _, _ = _fit(make_mlp, x, y, 1)
    want = model.predict(x, batch_size=4, verbose=0)
    model.steps_per_execution = 4
    spy = _Batches()
    spy.on_predict_batch_begin = lambda b, logs=None: spy.calls.append(("begin", b))
    spy.on_predict_batch_end = lambda b, logs=None: spy.calls.append(("end", b))
    got = model.predict(x, batch_size=4, verbose=0, callbacks=[spy])
    assert got.shape == want.shape == (37, want.shape[1])
    np.testing.assert_array_equal(got, want)   # the same kernels on the same pieces
    assert spy.calls == [("begin", 0), ("end", 3), ("begin", 4), ("end", 7), ("begin", 8),
                         ("end", 9)]
