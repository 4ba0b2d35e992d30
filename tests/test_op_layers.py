"""What every layer of this family shares: Keras argument checking and a runnable operator."""

from __future__ import annotations

from typing import Any

import pytest

from unity_legion.keras import layers as L

LAYERS: list[tuple[type, tuple[Any, ...]]] = [
    (L.Activation, ("relu",)), (L.Dropout, (0.5,)), (L.Flatten, ()), (L.Reshape, ((2,),)),
    (L.Add, ()), (L.Subtract, ()), (L.Multiply, ()), (L.Concatenate, ()), (L.Embedding, (3, 2)),
]


@pytest.mark.parametrize("cls,args", LAYERS, ids=[c.__name__ for c, _ in LAYERS])
def test_unknown_kwargs_raise(cls: type, args: tuple[Any, ...]) -> None:
    with pytest.raises(TypeError, match=f"{cls.__name__}: unknown argument\\(s\\) 'bogus'"):
        cls(*args, bogus=1)


@pytest.mark.parametrize("cls,args", LAYERS, ids=[c.__name__ for c, _ in LAYERS])
def test_name_and_config(cls: type, args: tuple[Any, ...]) -> None:
    layer = cls(*args, name=f"my_{cls.__name__.lower()}")
    config = layer.get_config()
    assert config["name"] == f"my_{cls.__name__.lower()}"
    assert layer.num_inputs == (None if cls in (L.Add, L.Subtract, L.Multiply, L.Concatenate) else 1)


def test_merge_layer_in_a_chain() -> None:
    a, b = L.Input((2, 3)), L.Input((2, 3))
    s = L.Add()([a, b])
    h = L.Flatten()(L.Dropout(0.1)(L.Activation("tanh")(s)))
    c = L.Concatenate()([h, L.Reshape((6,))(L.Multiply()([a, L.Subtract()([a, b])]))])
    e = L.Embedding(7, 3)(L.Input((4,), dtype="int64"))
    assert c.shape == (None, 12)
    assert e.shape == (None, 4, 3)
