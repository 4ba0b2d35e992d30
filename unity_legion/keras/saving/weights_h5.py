"""Keras 3's weights file (`*.weights.h5`), read and written with h5py.

Layout, as Keras 3 writes it: `layers/<member>/vars/<i>` holds the i-th variable of each of the
model's layers (Sequential: its layers; functional: its InputLayers too, in `model.layers`
order). A member is named by its class in snake case, numbered per class in that order
(`dense`, `dense_1`, ...), not by the layer's own name, so the same architecture built again
loads the file. A layer whose Keras twin keeps weights in sublayers (MultiHeadAttention) has
`layers/<member>/<sublayer attribute>/vars/<i>` (Layer._keras_weight_places); a layer may
instead give its whole list with `_keras_h5_groups()`: (sublayer path or "", name, weight keys).
Every `vars` group carries a `name` attribute (the layer's name); the top-level `vars` group
carries the model's. The optimizer's state, once the model has trained, is in an `optimizer`
group (optimizer_h5.py).

Loading reads and checks every array against the model (names, counts, shapes) before it sets
any, so a damaged, truncated or foreign file changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from unity_legion.keras.layers import tracing
from unity_legion.keras.saving import optimizer_h5
from unity_legion.keras.saving.atomic import write_atomically

WeightKey = tuple[int, str]


class WeightsFileError(ValueError):
    """A weights file that cannot be loaded into this model; the message says why."""


@dataclass(frozen=True)
class Group:
    """One `vars` group of the file: where it is and which of the model's weights it holds."""

    path: str                       # e.g. "layers/dense_1" or "layers/mha/query_dense"
    name: str                       # its `name` attribute (the layer's or sublayer's name)
    keys: tuple[WeightKey, ...]     # the model's weights stored as vars/0, vars/1, ...
    layer: str                      # the layer's name, for messages


def layout(model: Any) -> list[Group]:
    """The groups Keras 3 writes for `model`: a functional or Sequential model's layers under
    `layers/` (in Keras' layer order); a subclassed model as a subclassed layer at the root
    (path "": its own variables in the root `vars`, its layer attributes by name)."""
    visited: set[int] = set()
    if tracing.is_composite(model):
        groups = _composite_groups(model, "", visited)
    else:
        groups = [Group("", model.name, (), model.name)] + \
            _members_groups(model._keras_members(), "layers", visited)
    placed = [k for g in groups for k in g.keys]
    unplaced = [k for k in model._weight_keys() if k not in set(placed)]
    if unplaced or len(placed) != len(set(placed)):   # never a file that silently lacks weights
        raise WeightsFileError(f"model {model.name!r}: weights {unplaced[:5]} have no place in "
                               f"Keras' weights layout")
    return groups


def _members_groups(members: list[tuple[str, str, Any]], path: str,
                    visited: set[int]) -> list[Group]:
    """A list of layers (a model's, or a list attribute's): each named by its class, numbered
    in list order; one already saved elsewhere keeps its number but is not saved again."""
    groups: list[Group] = []
    used: dict[str, int] = {}
    for kind, name, layer in members:
        k = used[kind] = used.get(kind, -1) + 1
        base = f"{path}/{kind}" if k == 0 else f"{path}/{kind}_{k}"
        if layer is None:   # an InputLayer: an empty group
            groups.append(Group(base, name, (), name))
        else:
            groups += _object_groups(layer, base, visited)
    return groups


def _object_groups(layer: Any, base: str, visited: set[int]) -> list[Group]:
    if id(layer) in visited:   # Keras saves each object once, where its walk first meets it
        return []
    visited.add(id(layer))
    if hasattr(layer, "_keras_h5_groups"):   # a layer that lays out its own sublayers
        return [Group(f"{base}/{sub}" if sub else base, sub_name, tuple(keys), layer.name)
                for sub, sub_name, keys in layer._keras_h5_groups()]
    if hasattr(layer, "_keras_members"):     # a model inside a subclassed layer
        return [Group(base, layer.name, (), layer.name)] + \
            _members_groups(layer._keras_members(), f"{base}/layers", visited)
    if tracing.is_composite(layer):
        return _composite_groups(layer, base, visited)
    present = layer._present_weights() if layer.weight_names and layer.built else []
    places = layer._keras_weight_places()
    subs: dict[str, str] = {"": layer.name}
    for n in present:
        subs.setdefault(places[n][0], places[n][1])
    for attr, sub_name in layer.keras_weightless_sublayers.items():
        subs.setdefault(attr, sub_name)
    return [Group(f"{base}/{attr}" if attr else base, sub_name,
                  tuple((layer._node_id, n) for n in present if places[n][0] == attr), layer.name)
            for attr, sub_name in subs.items()]


def _composite_groups(layer: Any, base: str, visited: set[int]) -> list[Group]:
    """A subclassed layer or model, as Keras saves one: its own variables (add_weight) in
    `vars`, then its attributes in name order, each layer under the attribute's name and a list
    of layers as a numbered list; a model's `layers` list counts as an attribute too."""
    from unity_legion.keras.layers.layer import Layer
    from unity_legion.keras.models.model import Model

    visited.add(id(layer))
    attrs: dict[str, Any] = {}
    registry = layer.__dict__.get("_tracked_layers")
    for attr, value in vars(layer).items():
        if value is registry or attr in _MODEL_BOOKKEEPING:
            continue
        if isinstance(value, (Layer, Model)):
            attrs[attr] = value
        elif isinstance(value, (list, tuple)) and value and \
                all(isinstance(v, (Layer, Model)) for v in value):
            attrs[attr] = list(value)
    if isinstance(layer, Model):
        attrs.setdefault("layers", list(layer.layers))
    sub_keys = set()
    groups: list[Group] = []
    for attr in sorted(attrs):
        value = attrs[attr]
        where = f"{base}/{attr}" if base else attr
        if isinstance(value, list):
            members = [(_snake_class(v), v.name, v) for v in value]
            found = _members_groups(members, where, visited)
        else:
            found = _object_groups(value, where, visited)
        groups += found
        sub_keys |= {k for g in found for k in g.keys}
    own = tuple(k for k in tracing.weight_keys_of(layer) if k not in sub_keys)
    return [Group(base, layer.name, own, layer.name)] + groups


# a model's own lists of its layers, which Keras does not save as attributes
_MODEL_BOOKKEEPING = {"_layers", "_stack"}


def _snake_class(obj: Any) -> str:
    from unity_legion.keras.layers.layer import _snake
    return _snake(type(obj).__name__)


def save(model: Any, filepath: str, overwrite: bool = True) -> None:
    import h5py

    groups = layout(model)
    values = {k: model._get_weight(k) for g in groups for k in g.keys}   # read before writing

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            write_groups(f, groups, values, model.name)
            optimizer_h5.write(f, model)

    write_atomically(filepath, write, overwrite)


def write_groups(f: Any, groups: list[Group], values: dict[WeightKey, np.ndarray],
                 model_name: str) -> None:
    """The layout's groups and arrays into an open h5py file (path "": the root)."""
    if any(g.path.startswith("layers/") for g in groups):
        f.create_group("layers")
    for g in groups:
        vars_group = (f.require_group(g.path) if g.path else f).create_group("vars")
        vars_group.attrs["name"] = g.name
        for i, key in enumerate(g.keys):
            vars_group.create_dataset(str(i), data=values[key])


def load(model: Any, filepath: str) -> None:
    """Every array is read and checked before any is set."""
    import h5py

    try:
        f = h5py.File(filepath, "r")
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise WeightsFileError(f"load_weights: {filepath} is not a readable HDF5 file (damaged, "
                               f"truncated or another format): {exc}") from None
    with f:
        load_from(model, f, filepath)


def load_from(model: Any, f: Any, filepath: str) -> None:
    """From an open h5py file; `filepath` names it in messages. The weights and the optimizer's
    state are both checked before either is set."""
    try:
        values = _read_checked(model, f, filepath)
        set_optimizer = optimizer_h5.read(model, f, filepath)
    except WeightsFileError:
        raise
    except (OSError, KeyError, RuntimeError, ValueError) as exc:   # damaged HDF5 metadata
        raise WeightsFileError(f"load_weights: {filepath} is damaged: {exc}") from None
    model._set_weights(values)
    if set_optimizer is not None:
        set_optimizer()


def _read_checked(model: Any, f: Any, filepath: str) -> dict[WeightKey, np.ndarray]:
    import h5py

    def fail(why: str) -> WeightsFileError:
        return WeightsFileError(f"load_weights: {filepath} does not fit model {model.name!r}: "
                                f"{why}")

    if not isinstance(f.get("vars"), h5py.Group):   # Keras 3 writes the model's own `vars`
        legacy = "model_weights" in f or "layer_names" in f.attrs
        raise WeightsFileError(
            f"load_weights: {filepath} is not a Keras 3 weights file: it has no top-level "
            f"'vars' group" + (" (it looks like a Keras 2 / tf.keras .h5 file; re-save it with "
                               "Keras 3)" if legacy else ""))
    expected = {g.path: g for g in layout(model)}
    in_file: dict[str, Any] = {"": f["vars"]}

    def collect(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Group) and name.rsplit("/", 1)[-1] == "vars" and "/" in name \
                and not name.startswith("optimizer/"):
            in_file[name.rsplit("/", 1)[0]] = obj

    f.visititems(collect)
    for path, vars_group in sorted(in_file.items()):
        if path not in expected and len(vars_group) and not path.endswith("seed_generator"):
            raise fail(f"it holds {len(vars_group)} weight array(s) in {path!r}, a layer the model "
                       f"does not have (its layers, as Keras names them in files: "
                       f"{sorted({p for p in expected if p.count('/') <= 1 and p})})")
    values: dict[WeightKey, np.ndarray] = {}
    for path, g in expected.items():
        vars_group = in_file.get(path)
        if not g.keys:
            if vars_group is not None and len(vars_group):
                raise fail(f"{path!r} holds {len(vars_group)} weight array(s), but layer "
                           f"{g.layer!r} has none there")
            continue
        want = [k[1] for k in g.keys]
        if vars_group is None:
            raise fail(f"it has no weights for layer {g.layer!r} (expected group "
                       f"{path + '/vars'!r} with {want})")
        names = set(vars_group.keys())
        if names != {str(i) for i in range(len(g.keys))}:
            raise fail(f"{path + '/vars'!r} holds arrays {sorted(names)}, layer {g.layer!r} has "
                       f"{len(g.keys)}: {want}")
        for i, key in enumerate(g.keys):
            ds = vars_group[str(i)]
            where = f"weight {key[1]!r} of layer {g.layer!r} ({path}/vars/{i})"
            if not isinstance(ds, h5py.Dataset):
                raise fail(f"{where} is not an array")
            shape = tuple(model._spec(key).shape.dims)
            if tuple(ds.shape) != shape:
                raise fail(f"{where} has shape {tuple(ds.shape)} in the file, {shape} in the model")
            try:
                arr = np.asarray(ds[()])
            except Exception as exc:   # h5py raises several types for damaged data
                raise WeightsFileError(f"load_weights: {filepath} is damaged: cannot read {where} "
                                       f"({exc})") from None
            if arr.dtype.kind not in "biuf":
                raise fail(f"{where} holds {arr.dtype}, not numbers")
            values[key] = arr
    return values
