"""Writing a file so that a crash or a full disk leaves the previous version or none."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def replace_atomically(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Run ``write(file_object)`` into a temporary file next to ``path``, fsync it, then
    rename it over ``path`` (``os.replace``); on any failure the temporary file is removed and
    the error raised, so ``path`` is never a part of a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
