"""Atomic file writes: the package's one way of writing a file.

A file is written to a temporary name in its own directory, flushed to disk (``fsync``) and
renamed over the target, so a file that exists is complete whatever happens in between (a
crash, a kill, a full disk). A failed write leaves no temporary file behind. A full disk
(``ENOSPC``, ``EDQUOT``) is raised as ``DiskFullError`` naming the file, which the CLI turns into
one line and its own exit status.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable

from .errors import DiskFullError

# The temporary names atomic_write uses (".<name>.tmp-<pid>"): what an interrupted write leaves.
TMP_GLOB = ".*.tmp-*"

# errno values that mean "no room on this file system".
_FULL = {errno.ENOSPC, errno.EDQUOT}


def atomic_write(path: Path | str, write: Callable[[Path], None], fsync: bool = True) -> None:
    """Create or replace ``path`` with what ``write(tmp)`` writes to the temporary path ``tmp``.

    The parent directory is created if needed. ``fsync``: flush the file's data before the
    rename (shards, manifests, checkpoints); off only for bulk files that are cheap to redo.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # matches TMP_GLOB
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in _FULL:
            raise DiskFullError(str(path)) from e
        raise
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass


def atomic_write_bytes(path: Path | str, data: bytes, fsync: bool = True) -> None:
    """Create or replace ``path`` with ``data`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data), fsync=fsync)


def atomic_write_text(path: Path | str, text: str, fsync: bool = True) -> None:
    """Create or replace ``path`` with ``text`` (UTF-8) atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), fsync=fsync)
