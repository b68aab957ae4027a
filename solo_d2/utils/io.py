"""File writing helpers."""

import os
import tempfile
from contextlib import contextmanager

__all__ = ["atomic_write"]


@contextmanager
def atomic_write(path: str, mode: str = "wb"):
    """Write ``path`` all at once: yields a file object on a temporary file in the same folder,
    which replaces ``path`` (after flush + fsync) only when the block ends without an error. On
    an error the temporary file is removed and ``path`` is left as it was (or absent)."""
    out_dir = os.path.dirname(os.path.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=out_dir, prefix="." + os.path.basename(path) + ".", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
