"""The file of keras.callbacks.BackupAndRestore: one `.npz` (numpy, no pickle) holding named
arrays, a JSON header and a SHA-256 of both, committed by an atomic rename.

Why one file: a rename replaces one file atomically (POSIX), so after a crash the name holds the
old backup or the new one, whole; the checksum catches what a rename cannot (a file damaged on
disk, or copied half). A file that fails it is never loaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Any, Callable, Mapping

import numpy as np

FORMAT = "unity_legion.BackupAndRestore"
VERSION = 1
_META, _SUM = "__meta__", "__sha256__"
TEMP_SUFFIX = ".tmp"


class BackupError(ValueError):
    """A backup file that is damaged, foreign or of another model."""


def _digest(meta: bytes, arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    h.update(meta)
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        h.update(json.dumps([name, arr.dtype.str, list(arr.shape)]).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def encode(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> bytes:
    """The file's bytes: the arrays, the header (JSON) and their checksum."""
    for name in arrays:
        if name in (_META, _SUM):
            raise ValueError(f"backup: array name {name!r} is reserved")
    header = json.dumps({"format": FORMAT, "version": VERSION, **meta}, sort_keys=True).encode()
    entries = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    entries[_META] = np.frombuffer(header, dtype=np.uint8)
    entries[_SUM] = np.frombuffer(_digest(header, arrays).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **entries)
    return buf.getvalue()


def write_synced(path: str, data: bytes) -> None:
    """`data` into a new file `path`, on disk when this returns."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def commit(data: bytes, path: str, previous: str | None = None,
           write: Callable[[str, bytes], None] = write_synced) -> None:
    """Write the backup `data` to `path` atomically: into a temporary file beside it, synced,
    then renamed over it (the old one kept as `previous` first, if given)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.{os.getpid()}{TEMP_SUFFIX}"
    try:
        write(tmp, data)
        if previous is not None and os.path.exists(path):
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _sync_dir(folder)


def _sync_dir(folder: str) -> None:
    """The renames on disk too (a directory's entries are synced through the directory)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, header) of a backup file; BackupError if it is damaged or not a backup."""
    try:
        with np.load(path, allow_pickle=False) as data:
            entries = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise
    except Exception as exc:  # a torn zip, a foreign file: numpy's errors vary
        raise BackupError(f"backup {path} is damaged or not a backup file ({exc})") from None
    if _META not in entries or _SUM not in entries:
        raise BackupError(f"backup {path} is not a BackupAndRestore file (no header)")
    header = entries.pop(_META).tobytes()
    stored = entries.pop(_SUM).tobytes().decode("ascii", "replace")
    if _digest(header, entries) != stored:
        raise BackupError(f"backup {path} is damaged: its checksum does not match its contents")
    meta = json.loads(header)
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise BackupError(f"backup {path} is of format {meta.get('format')!r} version "
                          f"{meta.get('version')!r}; expected {FORMAT!r} version {VERSION}")
    return entries, meta
