"""Plain SGD updates an embedding's looked-up rows only (Operator.sparse_sgd_update): the same
weights as the dense gradient and update, under every strategy; other optimizers stay dense."""

from __future__ import annotations

import numpy as np
import pytest

from unity_legion import keras


def _model(combiner: str | None, rows: int = 50) -> keras.Model:
    bag = 3 if combiner else 1
    x = keras.Input((bag,), dtype="int32")
    e = keras.layers.Embedding(rows, 8, combiner=combiner)(x)
    if combiner is None:
        e = keras.layers.Flatten()(e)
    h = keras.layers.Dense(4)(e)
    return keras.Model(x, h)


def _table(model: keras.Model) -> np.ndarray:
    (layer,) = [l for l in model.layers if isinstance(l, keras.layers.Embedding)]
    return layer.get_weights()[0]


def _train(combiner: str | None, strategy: str, sparse: bool, optimizer: object,
           steps: int = 4) -> tuple[list[np.ndarray], list[float]]:
    keras.utils.set_random_seed(3)
    model = _model(combiner)
    model.compile(optimizer=optimizer, loss="mse", strategy=strategy)
    ex = model._executor
    ex.sparse_updates = sparse
    rng = np.random.default_rng(0)
    # few distinct rows, repeated within a batch and within a bag: sums of several lookups
    x = rng.integers(0, 12, size=(16, 3 if combiner else 1)).astype(np.int32)
    y = rng.standard_normal((16, 4)).astype(np.float32)
    losses = [float(model.train_on_batch(x, y)) for _ in range(steps)]
    # the sparse path formed no dense gradient of the table
    table_grads = [k for k in ex.grads if k[1] == "embeddings"]
    assert (table_grads == []) == sparse
    return [_table(model)] + model.get_weights(), losses


@pytest.mark.parametrize("combiner", [None, "mean", "sum"])
@pytest.mark.parametrize("strategy", ["data_parallel", "search"])
def test_sparse_sgd_equals_the_dense_update(combiner, strategy) -> None:
    dense_w, dense_l = _train(combiner, strategy, False, keras.optimizers.SGD(0.1))
    sparse_w, sparse_l = _train(combiner, strategy, True, keras.optimizers.SGD(0.1))
    np.testing.assert_allclose(sparse_l, dense_l, rtol=1e-6)
    for a, b in zip(sparse_w, dense_w):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # rows nobody looked up kept their initial values, and the used ones moved
    keras.utils.set_random_seed(3)
    initial = _table(_model(combiner))
    assert np.array_equal(sparse_w[0][12:], initial[12:])
    assert not np.allclose(sparse_w[0][:12], initial[:12])


def test_only_plain_sgd_updates_sparsely() -> None:
    keras.utils.set_random_seed(3)
    model = _model(None)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", strategy="data_parallel")
    ex = model._executor
    from unity_legion.operators.optimizers import AdamRule, SGDRule
    (key,) = [k for k, _ in ex.weight_specs() if k[1] == "embeddings"]
    assert ex._sparse_weights(SGDRule(), 16) == {key}
    assert ex._sparse_weights(SGDRule(momentum=0.9), 16) == frozenset()
    assert ex._sparse_weights(SGDRule(weight_decay=0.01), 16) == frozenset()
    assert ex._sparse_weights(AdamRule(), 16) == frozenset()
    ex.sparse_updates = False
    assert ex._sparse_weights(SGDRule(), 16) == frozenset()


def test_a_frozen_table_is_not_updated() -> None:
    keras.utils.set_random_seed(3)
    model = _model("sum")
    (layer,) = [l for l in model.layers if isinstance(l, keras.layers.Embedding)]
    layer.trainable = False
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", strategy="data_parallel")
    before = _table(model)
    x = np.arange(48, dtype=np.int32).reshape(16, 3) % 50
    model.train_on_batch(x, np.ones((16, 4), np.float32))
    assert np.array_equal(_table(model), before)
