"""Write a file all at once: into a temporary file beside it, then os.replace onto the name.

A crash or an error mid-write leaves the previous file (or none) under the name, never a torn one.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable


def write_atomically(filepath: str, write: Callable[[str], None], overwrite: bool = True) -> None:
    """`write(tmp_path)` creates the file's content at tmp_path; it then replaces `filepath`."""
    filepath = os.fspath(filepath)
    if not overwrite and os.path.exists(filepath):
        raise FileExistsError(f"{filepath} exists and overwrite=False")
    folder = os.path.dirname(os.path.abspath(filepath))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix="-" + os.path.basename(filepath))
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:   # on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, filepath)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
