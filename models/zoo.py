"""The zoo's index: every model by name, its scaled-down size, its loss, and synthetic data for it.

`ZOO[name].build(**kwargs)` builds the model (full paper size without kwargs); `.small` is a size
that trains in seconds on a 2-core machine; `.synthetic(model, n, rng)` makes inputs and targets
that fit the model's inputs and loss (integer inputs stay inside the tables that read them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from unity_legion import keras
from unity_legion.models.bert import bert_large
from unity_legion.models.candle_uno import candle_uno
from unity_legion.models.dlrm import dlrm
from unity_legion.models.inception import inception_v3
from unity_legion.models.mlp import mlp
from unity_legion.models.mlp_unify import mlp_unify
from unity_legion.models.resnext import resnext50
from unity_legion.models.xdl import xdl


@dataclass(frozen=True)
class ZooEntry:
    name: str
    build: Callable[..., keras.Model]
    loss: str                                   # "sparse_categorical_crossentropy" or "mse"
    small: Mapping[str, Any] = field(default_factory=dict)
    # A size for benchmarks: widths of hundreds to a thousand, so kernels, not launches, dominate.
    bench: Mapping[str, Any] = field(default_factory=dict)
    # Published parameter count of the full-size model (trainable weights), where there is one.
    published_params: int | None = None
    # Whether the model classifies images, so that it can train on (resized) digits.
    images: bool = False

    def build_small(self, **overrides: Any) -> keras.Model:
        return self.build(**(dict(self.small) | overrides))

    def build_bench(self, **overrides: Any) -> keras.Model:
        return self.build(**(dict(self.bench or self.small) | overrides))

    def synthetic(self, model: keras.Model, n: int, rng: np.random.Generator
                  ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """`n` samples of random inputs and targets shaped for `model` and this entry's loss."""
        limits = integer_input_limits(model)
        xs = []
        for spec in model.inputs:
            shape = (n,) + tuple(spec.shape[1:])
            if np.dtype(spec.dtype).kind in "iu":
                xs.append(rng.integers(0, limits[spec.name], size=shape).astype(spec.dtype))
            else:
                xs.append(rng.standard_normal(shape).astype(spec.dtype))
        ys = []
        for out in model.outputs:
            shape = (n,) + tuple(out.shape[1:])
            if self.loss == "sparse_categorical_crossentropy":
                ys.append(rng.integers(0, shape[-1], size=shape[:-1]).astype(np.int64))
            else:
                ys.append(rng.uniform(0.0, 1.0, size=shape).astype(np.float32))
        return xs, ys


def integer_input_limits(model: keras.Model) -> dict[str, int]:
    """For each integer input of `model`, the exclusive upper bound of values every layer that
    reads it accepts (the smallest table among the embeddings it feeds)."""
    graph = model.graph
    limits: dict[str, int] = {}
    for spec, tid in zip(model.inputs, model._input_ids):
        if np.dtype(spec.dtype).kind not in "iu":
            continue
        bounds = [getattr(node.op, "input_dim", None) for node in graph.consumers(tid)]
        bounds = [b for b in bounds if b is not None]
        if not bounds:
            raise ValueError(f"model {model.name!r}: integer input {spec.name!r} feeds no layer "
                             f"with a known index range")
        limits[spec.name] = min(bounds)
    return limits


ZOO: dict[str, ZooEntry] = {e.name: e for e in (
    ZooEntry("mlp", mlp, "sparse_categorical_crossentropy",
             dict(input_dim=64, hidden=(48, 32), classes=10), images=False),
    ZooEntry("mlp_unify", mlp_unify, "sparse_categorical_crossentropy",
             dict(input_dim=64, width=48, layers=3),
             bench=dict(input_dim=512, width=1024, layers=4), published_params=956_301_312),
    ZooEntry("bert_large", bert_large, "sparse_categorical_crossentropy",
             dict(vocab_size=97, max_positions=16, seq_len=8, layers=2, hidden=32, heads=4,
                  ffn=64, classes=3, dropout=0.0),
             bench=dict(vocab_size=1000, max_positions=64, seq_len=64, layers=2, hidden=256,
                        heads=4, ffn=1024, classes=2, dropout=0.0),
             published_params=335_141_888),
    ZooEntry("dlrm", dlrm, "mse",
             dict(tables=3, rows=(50, 31, 17), embedding_dim=8, bag_size=3, dense_features=4,
                  bottom=(16, 8), top=(16, 1)),
             bench=dict(tables=4, rows=10_000, embedding_dim=64, bag_size=1, dense_features=4,
                        bottom=(64, 64), top=(64, 2))),
    ZooEntry("xdl", xdl, "mse",
             dict(tables=3, rows=(50, 31, 17), embedding_dim=8, bag_size=2, mlp=(16, 16, 1)),
             bench=dict(tables=4, rows=10_000, embedding_dim=64, bag_size=1, mlp=(256, 256, 2))),
    ZooEntry("candle_uno", candle_uno, "mse",
             dict(feature_layers=(24, 16), dense_layers=(32, 16), rnaseq=20, descriptors=30,
                  fingerprints=24),
             bench=dict(feature_layers=(1024, 1024), dense_layers=(1024, 1024))),
    ZooEntry("resnext50", resnext50, "sparse_categorical_crossentropy",
             dict(image_size=32, blocks=(1, 1, 1, 1), groups=4, width_per_group=4, base_width=8,
                  classes=10),
             bench=dict(image_size=64, blocks=(1, 1, 1, 1), groups=8, width_per_group=4,
                        base_width=32, classes=10),
             published_params=25_028_904, images=True),
    ZooEntry("inception_v3", inception_v3, "sparse_categorical_crossentropy",
             dict(image_size=75, width=0.125, classes=10, dropout=0.0),
             bench=dict(image_size=75, width=0.25, classes=10, dropout=0.0),
             published_params=23_834_568, images=True),
)}

# Keras' count_params() also counts the batch norms' moving statistics (non-trainable weights).
FULL_SIZE_TOTAL_PARAMS = {"resnext50": 25_097_128, "inception_v3": 23_869_000}


def trainable_params(model: keras.Model) -> int:
    """Parameters that training updates (the count papers and torchvision publish)."""
    return sum(ws.shape.num_elements() for n in model.graph.nodes for ws in n.weights
               if ws.trainable)
