"""Timeline shards and the scan manifest (DESIGN.md "Shards").

Layout under a scan's output directory, schema version 2 (written since exe-stream 0.2)::

    OUT/manifest.json
    OUT/frames/<film_id>.parquet                 one row per sampled frame
    OUT/faces/<model_id>/<film_id>.parquet       one row per face per model (model id URI-encoded)
    OUT/frames/_common_metadata, OUT/faces/_common_metadata
                                                 the union schema of every file in the dataset

Version 2 keeps version 1's columns and their meaning; only the files changed: Parquet with
zstd (DuckDB, Spark and BigQuery read it natively, and it is smaller than plain Arrow IPC),
and directory names that carry no ``key=value`` (hive) partition, so no reader guesses a type
from a path: a film id ``2019`` stays the string it is in the files, where ``film_id`` and
``model_id`` are ordinary columns. Models with different label sets have different
``prob_<class>`` columns; ``_common_metadata`` holds the union of the dataset's columns, so a
reader given that schema fills the missing ones with nulls instead of dropping them (see
the README's one-liners). Version 1 scans (``film_id=<id>/part-0.arrow``, Arrow IPC) are
still read by every function here.

Every file is written to a temporary name in its directory and renamed (``atomic``), so a shard
or manifest that exists is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from . import __version__

SCHEMA_VERSION = "2"
# Schema versions this module reads (manifest and shards).
READABLE_VERSIONS = ("1", "2")
# The datasets of a scan: frames (one file per film) and faces (one directory per model).
DATASETS = ("frames", "faces")
COMMON_SCHEMA_FILE = "_common_metadata"
FRAME_COLUMNS = ("film_id", "frame_index", "pts_seconds", "is_keyframe", "n_faces")
FACE_BASE_COLUMNS = (
    "film_id", "model_id", "frame_index", "pts_seconds", "face_index",
    "x0", "y0", "x1", "y1", "det_score", "face_area_rel", "label", "confidence",
)

FRAMES_SCHEMA = pa.schema(
    [
        ("film_id", pa.string()),
        ("frame_index", pa.int64()),
        ("pts_seconds", pa.float64()),
        ("is_keyframe", pa.bool_()),
        ("n_faces", pa.int16()),
    ]
)


def prob_column(label: str) -> str:
    """Column name of a class probability: ``prob_<label>`` with the label made identifier-safe."""
    return "prob_" + re.sub(r"[^0-9a-zA-Z_]+", "_", label.strip()).lower()


def faces_schema(labels: Sequence[str]) -> pa.Schema:
    """Schema of a faces shard for a model with these labels (in the model's label order)."""
    fields = [
        ("film_id", pa.string()),
        ("model_id", pa.string()),
        ("frame_index", pa.int64()),
        ("pts_seconds", pa.float64()),
        ("face_index", pa.int16()),
        ("x0", pa.float32()),
        ("y0", pa.float32()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
        ("det_score", pa.float32()),
        ("face_area_rel", pa.float32()),
        ("label", pa.string()),
        ("confidence", pa.float32()),
    ]
    cols = [prob_column(lbl) for lbl in labels]
    if len(set(cols)) != len(cols):
        raise ValueError(f"labels {list(labels)} do not give distinct prob_ column names")
    return pa.schema(fields + [(c, pa.float32()) for c in cols])


def shard_metadata(**values: Any) -> dict[bytes, bytes]:
    """Arrow schema metadata: ``exe_stream.schema``, the package version, and ``values``."""
    meta = {"exe_stream.schema": SCHEMA_VERSION, "exe_stream.version": __version__}
    for key, value in values.items():
        meta[f"exe_stream.{key}"] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return {k.encode(): v.encode() for k, v in meta.items()}


def write_table(path: Path, table: pa.Table) -> None:
    """Write a table atomically: Parquet (zstd) for a ``.parquet`` path, else Arrow IPC."""
    from .atomic import atomic_write

    if Path(path).suffix == ".parquet":
        atomic_write(path, lambda tmp: pq.write_table(table, str(tmp), compression="zstd"))
        return

    def write(tmp: Path) -> None:
        with ipc.new_file(str(tmp), table.schema) as writer:
            writer.write_table(table)

    atomic_write(path, write)


def _model_dir(model_id: str) -> str:
    return urllib.parse.quote(model_id, safe="")


def shard_path(out: Path, dataset: str, film_id: str, model_id: str | None = None) -> Path:
    """Where a (schema 2) shard goes: ``OUT/<dataset>/[<model_id>/]<film_id>.parquet``."""
    base = Path(out) / dataset
    if model_id is not None:
        base = base / _model_dir(model_id)
    return base / f"{film_id}.parquet"


def frames_path(out: Path, film_id: str) -> Path:
    return shard_path(out, "frames", film_id)


def faces_path(out: Path, film_id: str, model_id: str) -> Path:
    return shard_path(out, "faces", film_id, model_id)


@dataclass(frozen=True)
class ShardFile:
    """One shard file found under a scan: its film, model (None for per-film datasets), path
    and the schema version of its layout."""

    film_id: str
    model_id: str | None
    path: Path
    version: str


def find_shards(out: Path, dataset: str, model_id: str | None = None, film_id: str | None = None,
                per_model: bool | None = None) -> list[ShardFile]:
    """Every shard of ``dataset`` under the scan ``out`` (schema 2 and schema 1 layouts), sorted
    by (model, film); ``model_id``/``film_id`` select. ``per_model``: whether the dataset has a
    directory per model (default: every dataset but ``frames``)."""
    root = Path(out) / dataset
    per_model = dataset != "frames" if per_model is None else per_model
    found: list[ShardFile] = []
    if per_model:
        dirs = [root / _model_dir(model_id)] if model_id is not None else sorted(root.glob("*"))
        for d in dirs:
            if not d.is_dir() or d.name.startswith("film_id="):
                continue
            pattern = f"{film_id}.parquet" if film_id is not None else "*.parquet"
            found += [ShardFile(p.stem, urllib.parse.unquote(d.name), p, "2") for p in d.glob(pattern)]
        v1 = root.glob(f"film_id={film_id or '*'}/model_id={_model_dir(model_id) if model_id else '*'}/part-0.arrow")
        found += [ShardFile(p.parent.parent.name.split("=", 1)[1], urllib.parse.unquote(p.parent.name.split("=", 1)[1]),
                            p, "1") for p in v1]
    else:
        found += [ShardFile(p.stem, None, p, "2") for p in root.glob(f"{film_id or '*'}.parquet")]
        found += [ShardFile(p.parent.name.split("=", 1)[1], None, p, "1")
                  for p in root.glob(f"film_id={film_id or '*'}/part-0.arrow")]
    return sorted(found, key=lambda s: (s.model_id or "", s.film_id))


def existing_frames_path(out: Path, film_id: str) -> Path | None:
    """The frames shard of a film in either layout, or None."""
    found = find_shards(out, "frames", film_id=film_id)
    return found[0].path if found else None


_schema_lock = threading.Lock()


def declare_schema(out: Path, dataset: str, schema: pa.Schema) -> None:
    """Add ``schema``'s columns to the dataset's union schema (``OUT/<dataset>/_common_metadata``),
    before files with those columns are written. Readers given that schema see every column of
    every file. Written by one process (the scan's driver); a no-op when nothing is new."""
    path = Path(out) / dataset / COMMON_SCHEMA_FILE
    plain = schema.remove_metadata()
    with _schema_lock:
        old = pq.read_schema(str(path)) if path.exists() else None
        merged = plain if old is None else pa.unify_schemas([old.remove_metadata(), plain])
        if old is not None and merged.equals(old.remove_metadata()):
            return
        merged = merged.with_metadata({b"exe_stream.schema": SCHEMA_VERSION.encode()})
        from .atomic import atomic_write

        atomic_write(path, lambda tmp: pq.write_metadata(merged, str(tmp)))


def common_schema(out: Path, dataset: str) -> pa.Schema | None:
    """The dataset's union schema, or None for a scan without one (schema 1)."""
    path = Path(out) / dataset / COMMON_SCHEMA_FILE
    return pq.read_schema(str(path)) if path.exists() else None


def frames_table(film_id: str, frame_index, pts_seconds, is_keyframe, n_faces, metadata) -> pa.Table:
    """The frames shard of one film: one row per sampled frame, with or without faces."""
    n = len(frame_index)
    arrays = [
        pa.array([film_id] * n, pa.string()),
        pa.array(np.asarray(frame_index, np.int64)),
        pa.array(np.asarray(pts_seconds, np.float64)),
        pa.array(np.asarray(is_keyframe, bool)),
        pa.array(np.asarray(n_faces, np.int16)),
    ]
    return pa.Table.from_arrays(arrays, schema=FRAMES_SCHEMA.with_metadata(metadata))


def faces_table(
    film_id: str,
    model_id: str,
    labels: Sequence[str],
    columns: dict[str, np.ndarray],
    probs: np.ndarray,
    metadata: dict[bytes, bytes],
) -> pa.Table:
    """The faces shard of one film and one model.

    columns: frame_index, pts_seconds, face_index, x0, y0, x1, y1, det_score, face_area_rel
    as 1-D arrays of length N; probs: float32 [N, C] in the model's label order.
    """
    schema = faces_schema(labels).with_metadata(metadata)
    n = probs.shape[0]
    if probs.ndim != 2 or probs.shape[1] != len(labels):
        raise ValueError(f"probs must be [N, {len(labels)}], got {probs.shape}")
    top = probs.argmax(axis=1) if n else np.zeros(0, np.int64)
    data: dict[str, Any] = {
        "film_id": [film_id] * n,
        "model_id": [model_id] * n,
        "label": [labels[i] for i in top],
        "confidence": probs[np.arange(n), top] if n else np.zeros(0, np.float32),
    }
    for name in FACE_BASE_COLUMNS:
        if name not in data:
            data[name] = columns[name]
    for j, lbl in enumerate(labels):
        data[prob_column(lbl)] = probs[:, j]
    arrays = [pa.array(np.asarray(data[f.name]) if f.type != pa.string() else data[f.name], f.type)
              for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def read_table(path: Path) -> pa.Table:
    """Read one shard file (Parquet, or schema 1's Arrow IPC)."""
    if Path(path).suffix == ".parquet":
        return pq.read_table(str(path))
    with ipc.open_file(str(path)) as reader:
        return reader.read_all()


def read_schema(path: Path) -> pa.Schema:
    """The schema (with its metadata) of one shard file, without reading its rows."""
    if Path(path).suffix == ".parquet":
        return pq.read_schema(str(path))
    with ipc.open_file(str(path)) as reader:
        return reader.schema


def _concat(tables: list[pa.Table], empty: pa.Schema) -> pa.Table:
    """Tables of one dataset in one table: the union of their columns (a column a file lacks is
    null there, never dropped), the schema metadata of the first."""
    if not tables:
        return empty.empty_table()
    plain = [t.replace_schema_metadata(None) for t in tables]
    joined = pa.concat_tables(plain, promote_options="permissive")
    return joined.replace_schema_metadata(tables[0].schema.metadata)


def read_frames(out: Path) -> pa.Table:
    """All frames shards of a scan in one table, films in id order."""
    return _concat([read_table(s.path) for s in find_shards(out, "frames")], FRAMES_SCHEMA)


def read_faces(out: Path, model_id: str | None = None) -> pa.Table:
    """All faces shards of a scan in one table (one model's, or every model's when
    ``model_id`` is None), with the union of the models' ``prob_<class>`` columns: a class a
    model does not have is null in its rows. Rows in (model, film) order."""
    shards = find_shards(out, "faces", model_id=model_id)
    if not shards:
        what = f"model {model_id!r}" if model_id is not None else "any model"
        raise FileNotFoundError(f"no faces shards for {what} under {out}")
    return _concat([read_table(s.path) for s in shards], faces_schema(()))


def slugify(name: str) -> str:
    """A stable, filesystem- and URL-safe id from a file name (lowercase a-z, 0-9, '-', '_')."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-_")
    return slug or "film"


def fingerprint(path: Path, chunk: int = 1 << 20) -> str:
    """Content fingerprint: sha256 of the size and three 1 MiB samples (start, middle, end).

    Cheap on films of any length; changes when the file is replaced or re-encoded.
    """
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        for offset in sorted({0, max(0, size // 2 - chunk // 2), max(0, size - chunk)}):
            fh.seek(offset)
            h.update(fh.read(chunk))
    return f"sha256:{h.hexdigest()[:32]}:{size}"


@dataclass
class Manifest:
    """``OUT/manifest.json``: maps film ids to paths, fingerprints, status and timings."""

    out: Path
    films: dict[str, dict[str, Any]] = field(default_factory=dict)
    scans: list[dict[str, Any]] = field(default_factory=list)
    # Schema version of the scan this manifest describes (a new one: SCHEMA_VERSION).
    version: str = SCHEMA_VERSION

    @property
    def path(self) -> Path:
        return Path(self.out) / "manifest.json"

    @classmethod
    def load(cls, out: Path) -> "Manifest":
        p = Path(out) / "manifest.json"
        if not p.exists():
            return cls(Path(out))
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: manifest is not valid JSON ({e})") from e
        version = str(data.get("schema"))
        if version not in READABLE_VERSIONS:
            raise ValueError(f"{p}: manifest schema {data.get('schema')!r}; this version of exe-stream reads "
                             f"{', '.join(READABLE_VERSIONS)}")
        return cls(Path(out), films=data.get("films", {}), scans=data.get("scans", []), version=version)

    def film_id_for(self, path: Path, taken: set[str]) -> str:
        """The film's id: its previous id in this output if any, else a slug of its file name
        (made unique with a short hash of the resolved path when the slug is taken)."""
        from .storage import is_uri

        resolved = str(path) if is_uri(path) else str(Path(path).resolve())  # a URI names itself
        for fid, entry in self.films.items():
            if entry.get("path") == resolved:
                return fid
        used = taken | set(self.films)
        slug = slugify(Path(path).stem)
        if slug not in used:
            return slug
        return f"{slug}-{hashlib.sha1(resolved.encode()).hexdigest()[:8]}"

    def save(self) -> None:
        data = {
            "schema": SCHEMA_VERSION,
            "exe_stream_version": __version__,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "films": self.films,
            "scans": self.scans,
        }
        from .atomic import atomic_write_text

        atomic_write_text(self.path, json.dumps(data, indent=2, sort_keys=True))


def done_shards_exist(out: Path, film_id: str, model_ids: Iterable[str]) -> bool:
    """Whether the frames shard and every requested model's faces shard of a film exist."""
    if not frames_path(out, film_id).exists():
        return False
    return all(faces_path(out, film_id, m).exists() for m in model_ids)


def remove_film_shards(out: Path, film_id: str) -> None:
    """Delete every shard of a film (frames and all models' faces, either layout)."""
    for ds in DATASETS:
        for s in find_shards(out, ds, film_id=film_id):
            s.path.unlink(missing_ok=True)


def remove_film_temporaries(out: Path, film_id: str, datasets: Iterable[str] = DATASETS) -> int:
    """Delete the temporary files a writer killed mid-write left beside a film's shards in
    ``datasets`` (see ``atomic.TMP_GLOB``; complete shards are never touched); the number removed."""
    n = 0
    for ds in datasets:
        root = Path(out) / ds
        for d in [root, *sorted(root.glob("*"))] if root.is_dir() else ():
            for p in d.glob(f".{film_id}.parquet.tmp-*") if d.is_dir() else ():
                p.unlink(missing_ok=True)
                n += 1
    return n
