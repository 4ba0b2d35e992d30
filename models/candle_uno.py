"""CANDLE-Uno (drug response regression) as in FlexFlow's examples/cpp/candle_uno, Unity's version.

Inputs, one tensor each, in the example's order: cell.rnaseq (942), dose1 (1), dose2 (1), then per
drug d = 1..`drugs`: drug{d}.descriptors (5270), drug{d}.fingerprints (2048). Every cell/drug input
goes through its own feature sub-network (`feature_layers` Dense layers, ReLU, no bias; each input
has its own weights, as in the FlexFlow example, where the original Keras Uno shares them between
the two drugs); the doses go straight through. All are concatenated on the feature axis, then the
dense tower (`dense_layers`, ReLU, no bias) and a Dense(1) regression output (no bias, linear),
trained with mean squared error.

Full size (the default) follows the FlexFlow example that shipped with Unity: feature sub-networks
of 8 x Dense(4192) and a tower of 4 x Dense(4192). The original CANDLE Uno (and FlexFlow's earlier
example) used 3 x Dense(1000) for both: `candle_uno(feature_layers=(1000,) * 3,
dense_layers=(1000,) * 3)`.
"""

from __future__ import annotations

from typing import Sequence

from unity_legion import keras

RNASEQ, DESCRIPTORS, FINGERPRINTS = 942, 5270, 2048


def candle_uno(feature_layers: Sequence[int] = (4192,) * 8,
               dense_layers: Sequence[int] = (4192,) * 4, drugs: int = 2, rnaseq: int = RNASEQ,
               descriptors: int = DESCRIPTORS, fingerprints: int = FINGERPRINTS,
               name: str = "candle_uno") -> keras.Model:
    """Inputs as listed in the module docstring; output (batch, 1)."""
    if drugs < 1:
        raise ValueError(f"candle_uno: drugs must be at least 1, got {drugs}")
    features: list[tuple[str, int, bool]] = [("cell_rnaseq", rnaseq, True), ("dose1", 1, False),
                                             ("dose2", 1, False)]
    for d in range(1, drugs + 1):
        features += [(f"drug{d}_descriptors", descriptors, True),
                     (f"drug{d}_fingerprints", fingerprints, True)]
    inputs, encoded = [], []
    for feature, width, has_subnet in features:
        x = inp = keras.Input(shape=(width,), name=f"{name}_{feature}")
        if has_subnet:
            for i, units in enumerate(feature_layers):
                x = keras.layers.Dense(units, activation="relu", use_bias=False,
                                       name=f"{name}_{feature}_dense_{i}")(x)
        inputs.append(inp)
        encoded.append(x)
    x = keras.layers.Concatenate(axis=-1, name=f"{name}_concat")(encoded)
    for i, units in enumerate(dense_layers):
        x = keras.layers.Dense(units, activation="relu", use_bias=False, name=f"{name}_dense_{i}")(x)
    outputs = keras.layers.Dense(1, use_bias=False, name=f"{name}_output")(x)
    return keras.Model(inputs, outputs, name=name)
