"""The optimizer's state in Keras 3's weights files: group `optimizer/vars/<i>`.

Keras' order: 0 the step counter (iterations), 1 the learning rate, then for each trainable
weight in `model.trainable_weights` order its slots in the rule's order (Adam: m, v; SGD with
momentum: its velocity; RMSprop: its velocity). Our slots hold the same quantities as Keras'
(the update rules are Keras'), so they map one to one.

Written when the model has trained (Keras builds its optimizer at the first step). Read into a
compiled model whose optimizer keeps the same number of variables; otherwise skipped with a
warning, as Keras does (the weights still load).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np

WeightKey = tuple[int, str]


def _trainable_keys(model: Any) -> list[WeightKey]:
    frozen = set(model._frozen_weight_keys())
    return [k for k in model._weight_keys() if k not in frozen and model._spec(k).trainable]


def _slot_names(model: Any) -> tuple[str, ...]:
    return tuple(model.optimizer.rule().slots)


def keras_arrays(model: Any) -> tuple[str, list[np.ndarray]] | None:
    """(the optimizer's name, its variables in Keras' order), or None before any step."""
    opt = getattr(model, "optimizer", None)
    if opt is None or not getattr(model, "compiled", False) or model._executor is None \
            or opt.iterations == 0:
        return None
    slots = _slot_names(model)
    have = model._executor.slot_values()
    arrays = [np.asarray(opt.iterations, np.int64), np.asarray(opt.learning_rate, np.float32)]
    for key in _trainable_keys(model):
        spec = model._spec(key)
        for s in slots:   # a weight not updated yet has zeros, as Keras' fresh slots
            arrays.append(np.asarray(have.get((key, s), np.zeros(spec.shape.dims)),
                                     spec.shape.dtype.numpy))
    return type(opt).__name__.lower(), arrays


def write(f: Any, model: Any) -> None:
    found = keras_arrays(model)
    if found is None:
        return
    name, arrays = found
    group = f.create_group("optimizer").create_group("vars")
    group.attrs["name"] = name
    for i, arr in enumerate(arrays):
        group.create_dataset(str(i), data=arr)


def read(model: Any, f: Any, filepath: str) -> Callable[[], None] | None:
    """Check the file's optimizer group against the model; returns what sets it (or None)."""
    import h5py

    group = f.get("optimizer/vars")
    if not isinstance(group, h5py.Group) or not len(group):
        return None
    opt = getattr(model, "optimizer", None)
    if opt is None or not getattr(model, "compiled", False):
        return None   # as Keras: a model without an optimizer takes the weights only
    if len(group) == 2 and "0" in group and int(np.asarray(group["0"][()])) == 0:
        return None   # Keras' optimizer before its first step: nothing to restore
    slots = _slot_names(model)
    keys = _trainable_keys(model)
    want = 2 + len(slots) * len(keys)
    if set(group.keys()) != {str(i) for i in range(len(group))} or len(group) != want:
        warnings.warn(f"load_weights: {filepath}: skipping the optimizer's state: the file has "
                      f"{len(group)} optimizer variables, {type(opt).__name__} keeps {want} for "
                      f"this model", stacklevel=3)
        return None
    values: dict[tuple[WeightKey, str], np.ndarray] = {}
    i = 2
    for key in keys:
        shape = tuple(model._spec(key).shape.dims)
        for s in slots:
            arr = np.asarray(group[str(i)][()])
            if arr.shape != shape or arr.dtype.kind not in "biuf" or not np.all(np.isfinite(arr)):
                raise ValueError(f"load_weights: {filepath}: optimizer variable {i} ({s} of "
                                 f"{model._graph.nodes[key[0]].name}/{key[1]}) has shape "
                                 f"{arr.shape} and dtype {arr.dtype}; the model needs finite "
                                 f"numbers of shape {shape}")
            values[(key, s)] = arr
            i += 1
    iterations = int(np.asarray(group["0"][()]))
    lr = float(np.asarray(group["1"][()]))
    if iterations < 0 or not np.isfinite(lr) or lr < 0:
        raise ValueError(f"load_weights: {filepath}: optimizer step {iterations} / learning "
                         f"rate {lr} are not valid")

    def apply() -> None:
        model._executor.set_slot_values(slots, values)
        opt.iterations = iterations
        if not callable(opt._learning_rate):   # a schedule is a function of iterations
            opt.learning_rate = lr
    return apply
