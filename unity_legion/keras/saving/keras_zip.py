"""Keras 3's whole-model file (`*.keras`): a zip of config.json (the model's config, see
serialization.py), metadata.json and model.weights.h5 (the weights file's layout, see
weights_h5.py). JSON and HDF5 only: nothing is unpickled. Written atomically; on loading, the
archive, the config and every weight are checked before the model is returned.
"""

from __future__ import annotations

import datetime
import io
import json
import warnings
import zipfile
from typing import Any

from unity_legion.keras.saving import optimizer_h5, serialization, weights_h5
from unity_legion.keras.saving.atomic import write_atomically
from unity_legion.keras.saving.compile_config import compile_config, compile_from_config
from unity_legion.keras.saving.serialization import ConfigError

# the Keras release whose file format these files follow (metadata.json's keras_version)
KERAS_FORMAT_VERSION = "3.15.1"
_CONFIG, _METADATA, _WEIGHTS = "config.json", "metadata.json", "model.weights.h5"


class ModelFileError(ValueError):
    """A `.keras` file that cannot be loaded; the message says why."""


def save_model(model: Any, filepath: str, overwrite: bool = True) -> None:
    import h5py

    config = serialization.model_config(model)
    try:
        config["compile_config"] = compile_config(model)
    except ConfigError as exc:   # the model itself is still worth saving
        warnings.warn(f"save: {filepath}: the file gets no compile_config, a loaded model will "
                      f"need compile() ({exc})", stacklevel=3)
        config["compile_config"] = None
    metadata = {"keras_version": KERAS_FORMAT_VERSION,
                "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")}
    weights = io.BytesIO()
    groups = weights_h5.layout(model)
    values = {k: model._get_weight(k) for g in groups for k in g.keys}
    with h5py.File(weights, "w") as f:
        weights_h5.write_groups(f, groups, values, model.name)
        optimizer_h5.write(f, model)

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w") as z:
            z.writestr(_METADATA, json.dumps(metadata))
            z.writestr(_CONFIG, json.dumps(config))
            z.writestr(_WEIGHTS, weights.getvalue())

    write_atomically(filepath, write, overwrite)


def _read_archive(filepath: str) -> tuple[bytes, bytes]:
    """config.json's and model.weights.h5's bytes, or a clear error."""
    try:
        with zipfile.ZipFile(filepath) as z:
            names = set(z.namelist())
            missing = [n for n in (_CONFIG, _WEIGHTS) if n not in names]
            if missing:
                raise ModelFileError(f"{filepath} is not a Keras 3 model file: the archive lacks "
                                     f"{missing}")
            return z.read(_CONFIG), z.read(_WEIGHTS)
    except (FileNotFoundError, ModelFileError):
        raise
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, RuntimeError, ValueError) as exc:
        # a bad CRC, a truncated member, not a zip at all
        raise ModelFileError(f"{filepath} is not a readable .keras file (damaged, truncated or "
                             f"not a zip archive): {exc}") from None


def _load_weights_bytes(model: Any, weights: bytes, where: str) -> None:
    import h5py

    try:
        f = h5py.File(io.BytesIO(weights), "r")
    except OSError as exc:
        raise ModelFileError(f"{where} is not readable HDF5 ({exc})") from None
    with f:
        weights_h5.load_from(model, f, where)


def load_weights_from(model: Any, filepath: str) -> None:
    """The weights of a `.keras` file into a built model (Keras' load_weights on `.keras`)."""
    _, weights = _read_archive(str(filepath))
    _load_weights_bytes(model, weights, f"{filepath}/model.weights.h5")


def load_model(filepath: str, custom_objects: dict[str, Any] | None = None,
               compile: bool = True, safe_mode: bool = True) -> Any:
    """The model a `.keras` file describes, with its weights; config and every weight are
    checked first. With `compile` the file's compile_config (optimizer, loss, metrics) is
    applied where it can be, as Keras does. `safe_mode` is accepted for Keras' signature:
    nothing is ever unpickled."""
    filepath = str(filepath)
    try:
        config_text, weights = _read_archive(filepath)
    except ModelFileError as exc:
        raise ModelFileError(f"load_model: {exc}") from None
    try:
        config = json.loads(config_text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"load_model: {filepath}: config.json is not valid JSON ({exc})") \
            from None
    if not isinstance(config, dict):
        raise ModelFileError(f"load_model: {filepath}: config.json does not describe a model")
    try:
        model = serialization.model_from_config(config, custom_objects)
    except ConfigError as exc:
        raise ModelFileError(f"load_model: {filepath}: {exc}") from None
    if compile and config.get("compile_config"):   # first: the file's optimizer state needs it
        try:
            compile_from_config(model, config["compile_config"])
        except ConfigError as exc:
            warnings.warn(f"load_model: {filepath}: the model is returned uncompiled; its "
                          f"compile_config cannot be applied here ({exc})", stacklevel=2)
    _load_weights_bytes(model, weights, f"{filepath}/model.weights.h5")
    return model
