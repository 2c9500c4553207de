"""Films and scan outputs in object storage (``s3://``, ``gs://``, any URI ``pyarrow.fs`` opens).

A film in object storage is staged: copied to local scratch, its size checked against the
listing and its fingerprint against the one the driver computed from the object, then scanned
as a local file (PyAV seeks freely in it). A scan output in object storage is written film by
film: the film's shards are written locally (``atomic.atomic_write``) and each file is then
put under the same relative path in the bucket by ``put_file``. An object store has no rename;
an object becomes visible only when its upload completes, which gives the same guarantee as the
local temporary-name-and-rename: a shard that exists is complete. The manifest is put the same
way after each film. Readers (``stats``, ``report``) work on a local copy (``local_copy``).

Credentials and endpoints come from the usual places (``AWS_*`` environment variables,
``~/.aws``, instance roles); ``AWS_ENDPOINT_URL`` (or ``?endpoint_override=`` in the URI)
points at an S3-compatible server such as MinIO.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import ExeStreamError


class StorageError(ExeStreamError):
    """An object in storage cannot be listed, read or written."""


def is_uri(path: str | os.PathLike) -> bool:
    """Whether ``path`` names object storage (``scheme://...``; ``file://`` is local)."""
    s = str(path)
    return "://" in s and not s.startswith("file://")


def open_uri(uri: str):
    """(pyarrow FileSystem, path inside it) for a storage URI; errors name the URI."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError, pa.ArrowException) as e:
        raise StorageError(f"cannot open {uri}: {e}") from e


def join(uri: str, *parts: str | os.PathLike) -> str:
    """``uri`` with ``parts`` appended as path segments (a query string stays at the end)."""
    base, sep, query = uri.partition("?")
    rel = "/".join(str(p).strip("/") for p in parts if str(p).strip("/") not in ("", "."))
    return base.rstrip("/") + ("/" + rel if rel else "") + (sep + query)


def list_films(uri: str, extensions: frozenset[str]) -> list[str]:
    """The films under ``uri``: the object itself when it is one, else every object below it
    whose extension is in ``extensions`` (sorted)."""
    import pyarrow.fs as pafs

    fs, path = open_uri(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [uri]
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"no such object or prefix: {uri}")
    found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    names = sorted(f.path for f in found if f.type == pafs.FileType.File
                   and Path(f.path).suffix.lower() in extensions)
    base = uri.partition("?")[0].rstrip("/")
    query = uri.partition("?")[2]
    return [base + name[len(path.rstrip("/")):] + (f"?{query}" if query else "") for name in names]


def fingerprint_uri(uri: str, chunk: int = 1 << 20) -> str:
    """``shards.fingerprint`` of an object, read with three ranged reads (the same value as the
    fingerprint of a local copy)."""
    fs, path = open_uri(uri)
    try:
        with fs.open_input_file(path) as fh:
            size = fh.size()
            h = hashlib.sha256(str(size).encode())
            for offset in sorted({0, max(0, size // 2 - chunk // 2), max(0, size - chunk)}):
                h.update(fh.read_at(min(chunk, size - offset), offset))
    except OSError as e:
        raise StorageError(f"cannot read {uri}: {e}") from e
    return f"sha256:{h.hexdigest()[:32]}:{size}"


def stage(uri: str, scratch: Path, expected_fingerprint: str | None = None) -> Path:
    """Copy the film at ``uri`` into the directory ``scratch``; the local path. The copy's size
    and fingerprint must match the object's (``expected_fingerprint``, as the driver saw it)."""
    from .shards import fingerprint

    fs, path = open_uri(uri)
    local = Path(scratch) / Path(path).name
    try:
        with fs.open_input_stream(path) as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
    except OSError as e:
        raise StorageError(f"cannot copy {uri} to {local}: {e}") from e
    if expected_fingerprint:
        got = fingerprint(local)
        if got != expected_fingerprint:
            raise StorageError(f"{uri}: the staged copy does not match the object (fingerprint {got}, "
                               f"expected {expected_fingerprint}; was it replaced during the scan?)")
    return local


def put_file(local: Path, uri: str) -> None:
    """Upload one file to ``uri``. The object appears only once complete (an S3 PUT or a
    completed multipart upload), so a reader never sees a partial shard or manifest."""
    fs, path = open_uri(uri)
    try:
        with open(local, "rb") as src, fs.open_output_stream(path) as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
    except OSError as e:
        raise StorageError(f"cannot write {uri}: {e}") from e


def get_file(uri: str, local: Path) -> bool:
    """Download ``uri`` to ``local``; False when there is no such object."""
    import pyarrow.fs as pafs

    fs, path = open_uri(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return False
    local.parent.mkdir(parents=True, exist_ok=True)
    with fs.open_input_stream(path) as src, open(local, "wb") as dst:
        shutil.copyfileobj(src, dst, 8 << 20)
    return True


def exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = open_uri(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


def remove(uri: str) -> bool:
    """Delete the object at ``uri``; False when there was none."""
    import pyarrow.fs as pafs

    fs, path = open_uri(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return False
    try:
        fs.delete_file(path)
    except OSError as e:
        raise StorageError(f"cannot delete {uri}: {e}") from e
    return True


def put_tree(local_root: Path, files: list[Path], uri: str) -> None:
    """Upload ``files`` (under ``local_root``) to the same relative paths under ``uri``."""
    for f in files:
        put_file(f, join(uri, f.relative_to(local_root).as_posix()))


def download_tree(uri: str, local_root: Path) -> int:
    """Copy every object under ``uri`` to the same relative path under ``local_root``; the
    number of files."""
    import pyarrow.fs as pafs

    fs, path = open_uri(uri)
    try:
        found = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    except OSError as e:
        raise StorageError(f"cannot list {uri}: {e}") from e
    n = 0
    for f in found:
        if f.type != pafs.FileType.File:
            continue
        local = Path(local_root) / f.path[len(path.rstrip("/")) + 1:]
        local.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(f.path) as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
        n += 1
    return n


@contextlib.contextmanager
def local_copy(out: str | os.PathLike) -> Iterator[Path]:
    """A scan output as a local directory: ``out`` itself when local, else a temporary copy of
    the objects under it (shards are small: boxes and probabilities), removed afterwards."""
    if not is_uri(out):
        yield Path(out)
        return
    with tempfile.TemporaryDirectory(prefix="exe-stream-scan-") as tmp:
        if not download_tree(str(out), Path(tmp)) or not (Path(tmp) / "manifest.json").exists():
            raise StorageError(f"no scan output (manifest.json) under {out}")
        yield Path(tmp)
