"""Shared small data sets and model builders for the Keras API tests (tests/test_keras_*.py)."""

from __future__ import annotations

import atexit
import gc
import os
import shutil
import tempfile

import numpy as np
import pytest

from unity_legion import keras

# Measurements (a machine's calibration, operator costs) go to a cache of the session's own: a
# calibration cached by an earlier job on this machine would change what the searches here find.
_CACHE = tempfile.mkdtemp(prefix="unity_legion_test_cache_")
os.environ["UNITY_LEGION_CACHE"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)


@pytest.fixture(scope="session")
def _frozen_heap():
    """Everything imported so far (torch, legate, ...) is moved out of the collector's sight, so
    the collection after each test only scans what the tests made."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(autouse=True)
def _collect_garbage_on_the_main_thread(_frozen_heap):
    """Models are reference cycles (layer._model <-> model.layers) that own Legate stores. If
    Python's cyclic GC happens to run inside a Python task (any allocation in a kernel can start
    it), destroying a store there aborts the process ("LEGION ERROR: Illegal discard operation
    call performed in leaf task"). Until the runtime guards against that, tests run with automatic
    GC off and collect between tests, on the main thread."""
    enabled = gc.isenabled()
    gc.disable()
    yield
    gc.collect()
    if enabled:
        gc.enable()


@pytest.fixture
def cls_data() -> tuple[np.ndarray, np.ndarray]:
    """37 samples, 6 features, 3 classes (37 is prime: no batch size > 1 divides it)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=37)
    return x, y


@pytest.fixture
def reg_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(29, 6)).astype(np.float32)
    y = (x[:, :2] * 0.5 - x[:, 2:4]).astype(np.float32)
    return x, y


@pytest.fixture
def make_mlp():
    """A factory of 6-8-classes MLPs (relu hidden layer, logits out) as a Sequential."""

    def make(classes: int = 3, hidden: int = 8, features: int = 6, **dense_kwargs) -> keras.Model:
        return keras.Sequential([keras.Input(shape=(features,)),
                                 keras.layers.Dense(hidden, activation="relu", **dense_kwargs),
                                 keras.layers.Dense(classes)])
    return make


def sparse_ce_logits() -> keras.losses.Loss:
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture
def compiled_mlp(make_mlp):
    """A compiled classifier (SGD, logits sparse CE, accuracy)."""

    def make(optimizer=None, metrics=("accuracy",), **kwargs) -> keras.Model:
        model = make_mlp(**kwargs)
        model.compile(optimizer=optimizer or keras.optimizers.SGD(0.1), loss=sparse_ce_logits(),
                      metrics=list(metrics))
        return model
    return make


def assert_weights_equal(a, b) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


@pytest.fixture
def weights_equal():
    return assert_weights_equal
