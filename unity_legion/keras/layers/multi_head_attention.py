"""keras.layers.MultiHeadAttention: `layer(query, value, key=None, attention_mask=None)`.

One operator (operators/attention.py) does the projections, the attention and the output
projection. Weights in Keras 3's layouts and get_weights order: query kernel (dim, heads,
key_dim) and bias (heads, key_dim), key kernel/bias, value kernel (dim, heads, value_dim)/bias,
output kernel (heads, value_dim, *out) and bias (*out,); out is output_shape or the query's last
dim. The attention mask (batch, T, S) is a boolean or 0/1 integer tensor, True = attend.

Only the default attention_axes (all axes between the batch and the features) are supported.
Not supported, with a clear error: return_attention_scores, use_causal_mask, query/value/key
Keras masks, regularizers and constraints, and a fixed `training` at call time (the model's
fit/predict decide it). `seed` salts the dropout mask stream, as in Dropout.
"""

from __future__ import annotations

from typing import Any, Sequence

from unity_legion import initializers
from unity_legion.keras.layers.layer import Layer
from unity_legion.operators.attention import MultiHeadAttention as AttentionOp
from unity_legion.operators.base import Operator, OperatorError
from unity_legion.types import TensorShape


class MultiHeadAttention(Layer):
    num_inputs = None  # called with query, value[, key][, attention_mask]
    weight_names = ("query_kernel", "query_bias", "key_kernel", "key_bias", "value_kernel",
                    "value_bias", "output_kernel", "output_bias")

    def __init__(self, num_heads: int, key_dim: int, value_dim: int | None = None,
                 dropout: float = 0.0, use_bias: bool = True,
                 output_shape: int | Sequence[int] | None = None,
                 attention_axes: int | Sequence[int] | None = None,
                 kernel_initializer: str = "glorot_uniform", bias_initializer: str = "zeros",
                 kernel_regularizer: Any = None, bias_regularizer: Any = None,
                 activity_regularizer: Any = None, kernel_constraint: Any = None,
                 bias_constraint: Any = None, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        unsupported = {"kernel_regularizer": kernel_regularizer,
                       "bias_regularizer": bias_regularizer,
                       "activity_regularizer": activity_regularizer,
                       "kernel_constraint": kernel_constraint, "bias_constraint": bias_constraint}
        for arg, value in unsupported.items():
            if value is not None:
                raise ValueError(f"MultiHeadAttention: {arg}={value!r} is not supported")
        try:
            self._probe = AttentionOp(num_heads, key_dim, value_dim, dropout, bool(use_bias),
                                      output_shape, kernel_initializer=initializers.check(
                                          kernel_initializer),
                                      bias_initializer=initializers.check(bias_initializer),
                                      salt=0 if seed is None else seed)
        except OperatorError as exc:
            raise ValueError(f"MultiHeadAttention: {exc}") from None
        if attention_axes is not None:
            axes = (attention_axes,) if isinstance(attention_axes, int) else attention_axes
            try:
                self.attention_axes: tuple[int, ...] | None = tuple(int(a) for a in axes)
            except (TypeError, ValueError):
                raise ValueError(f"MultiHeadAttention: attention_axes must be None or integers, "
                                 f"got {attention_axes!r}") from None
        else:
            self.attention_axes = None
        self.seed = seed
        self._has_key = False
        self._has_mask = False

    # Keras keeps the projections in Dense-like sublayers: files and variable paths name them.
    keras_weightless_sublayers = {"_dropout_layer": "dropout", "_softmax": "softmax"}
    _KERAS_SUBLAYERS = {"query": ("query_dense", "query"), "key": ("key_dense", "key"),
                        "value": ("value_dense", "value"),
                        "output": ("output_dense", "attention_output")}

    def _keras_weight_places(self) -> dict[str, tuple[str, str, str]]:
        places = {}
        for n in self.weight_names:
            part, short = n.split("_")
            attr, sub_name = self._KERAS_SUBLAYERS[part]
            places[n] = (attr, sub_name, short)
        return places

    def _keras_call_args(self, inputs: Sequence[Any]) -> tuple[list[Any], dict[str, Any]]:
        rest = list(inputs[2:])
        kwargs = {}
        if self._has_key:
            kwargs["key"] = rest.pop(0)
        if self._has_mask:
            kwargs["attention_mask"] = rest.pop(0)
        return [inputs[0], inputs[1]], kwargs

    def _keras_build_config(self) -> dict[str, Any]:
        shapes = [list(s.dims) for s in self.input_shapes or []]
        built = {"query_shape": shapes[0], "value_shape": shapes[1]}
        if self._has_key:
            built["key_shape"] = shapes[2]
        return {"shapes_dict": built}

    # --- Keras-style attributes ---------------------------------------------------------------
    num_heads = property(lambda self: self._probe.num_heads)
    key_dim = property(lambda self: self._probe.key_dim)
    value_dim = property(lambda self: self._probe.value_dim)
    dropout = property(lambda self: self._probe.dropout)
    use_bias = property(lambda self: self._probe.use_bias)

    def __call__(self, query: Any, value: Any = None, key: Any = None,  # type: ignore[override]
                 attention_mask: Any = None, return_attention_scores: bool = False,
                 training: Any = None, use_causal_mask: bool = False, **kwargs: Any) -> Any:
        if kwargs:
            raise TypeError(f"layer {self.name!r} (MultiHeadAttention): unsupported call "
                            f"argument(s) {', '.join(repr(k) for k in kwargs)}")
        if value is None:
            raise TypeError(f"layer {self.name!r} (MultiHeadAttention): call it as "
                            f"layer(query, value, key=None, attention_mask=None)")
        if return_attention_scores:
            raise ValueError(f"layer {self.name!r} (MultiHeadAttention): "
                             f"return_attention_scores=True is not supported")
        if use_causal_mask:
            raise ValueError(f"layer {self.name!r} (MultiHeadAttention): use_causal_mask=True is "
                             f"not supported; pass an explicit attention_mask instead")
        if training is not None:
            raise ValueError(f"layer {self.name!r} (MultiHeadAttention): training is decided by "
                             f"fit/predict; leave it None")
        tensors = [query, value] + ([key] if key is not None else []) + \
            ([attention_mask] if attention_mask is not None else [])
        for t in tensors:
            if isinstance(t, (list, tuple)):
                raise TypeError(f"layer {self.name!r} (MultiHeadAttention): query, value, key "
                                f"and attention_mask are separate arguments, got a list")
        self._has_key, self._has_mask = key is not None, attention_mask is not None
        return super().__call__(tensors)

    def make_op(self, input_shapes: Sequence[TensorShape]) -> Operator:
        rank = input_shapes[0].rank
        default = tuple(range(1, rank - 1))
        if self.attention_axes is not None and \
                tuple(a if a >= 0 else rank + a for a in self.attention_axes) != default:
            raise OperatorError(f"attention_axes={self.attention_axes} is not supported: only the "
                                f"default (None, i.e. {default} for a rank-{rank} query: every "
                                f"axis between the batch and the features) is")
        p = self._probe
        return AttentionOp(p.num_heads, p.key_dim, p.value_dim, p.dropout, p.use_bias,
                           p.output_shape, self._has_key, self._has_mask, p.kernel_initializer,
                           p.bias_initializer, p.salt)

    def get_config(self) -> dict[str, Any]:
        p = self._probe
        return super().get_config() | {
            "num_heads": p.num_heads, "key_dim": p.key_dim, "value_dim": p.value_dim,
            "dropout": p.dropout, "use_bias": p.use_bias, "output_shape": p.output_shape,
            "attention_axes": self.attention_axes, "kernel_initializer": p.kernel_initializer,
            "bias_initializer": p.bias_initializer, "seed": self.seed}

