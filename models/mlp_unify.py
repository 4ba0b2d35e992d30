"""The MLP of the Unity evaluation (FlexFlow's examples/cpp/MLP_Unify).

Two inputs of `input_dim` features, each through its own stack of `layers` Dense layers of `width`
units without bias (ReLU after every layer but the last), the two stacks added, then a softmax over
the `width` outputs (trained with sparse categorical cross-entropy, as in the example).

Full size (the default): 2 x 1024 inputs, 2 x 8 x Dense(8192) = 2 x (1024*8192 + 7*8192^2)
= 956,301,312 weights.
"""

from __future__ import annotations

from unity_legion import keras


def mlp_unify(input_dim: int = 1024, width: int = 8192, layers: int = 8,
              name: str = "mlp_unify") -> keras.Model:
    """Inputs [a, b], each (batch, input_dim); output (batch, width) probabilities."""
    if layers < 1:
        raise ValueError(f"mlp_unify: layers must be at least 1, got {layers}")
    inputs, branches = [], []
    for side in ("a", "b"):
        x = inp = keras.Input(shape=(input_dim,), name=f"{name}_input_{side}")
        for i in range(layers):
            x = keras.layers.Dense(width, activation="relu" if i + 1 < layers else None,
                                   use_bias=False, name=f"{name}_{side}_dense_{i}")(x)
        inputs.append(inp)
        branches.append(x)
    x = keras.layers.Add(name=f"{name}_add")(branches)
    outputs = keras.layers.Activation("softmax", name=f"{name}_softmax")(x)
    return keras.Model(inputs, outputs, name=name)
