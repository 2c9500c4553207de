"""Arrow timeline shards and the scan manifest (schema version 1, DESIGN.md "Shards").

Layout under a scan's output directory::

    OUT/manifest.json
    OUT/frames/film_id=<id>/part-0.arrow
    OUT/faces/film_id=<id>/model_id=<model>/part-0.arrow   (model id URI-encoded)

Every file is written to a temporary name in its directory and renamed, so a shard or
manifest that exists is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from . import __version__

SCHEMA_VERSION = "1"
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


def _atomic_write_bytes(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_table(path: Path, table: pa.Table) -> None:
    """Write an Arrow IPC file atomically (temporary name in the same directory, then rename)."""

    def write(tmp: Path) -> None:
        with ipc.new_file(str(tmp), table.schema) as writer:
            writer.write_table(table)

    _atomic_write_bytes(path, write)


def frames_path(out: Path, film_id: str) -> Path:
    return Path(out) / "frames" / f"film_id={film_id}" / "part-0.arrow"


def faces_path(out: Path, film_id: str, model_id: str) -> Path:
    enc = urllib.parse.quote(model_id, safe="")
    return Path(out) / "faces" / f"film_id={film_id}" / f"model_id={enc}" / "part-0.arrow"


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
    """Read one shard file (Arrow IPC)."""
    with ipc.open_file(str(path)) as reader:
        return reader.read_all()


def read_frames(out: Path) -> pa.Table:
    """All frames shards of a scan, concatenated (schema metadata of the first)."""
    paths = sorted(Path(out).glob("frames/film_id=*/part-0.arrow"))
    if not paths:
        return FRAMES_SCHEMA.empty_table()
    return pa.concat_tables([read_table(p) for p in paths], promote_options="none")


def read_faces(out: Path, model_id: str) -> pa.Table:
    """All faces shards of one model in a scan, concatenated."""
    enc = urllib.parse.quote(model_id, safe="")
    paths = sorted(Path(out).glob(f"faces/film_id=*/model_id={enc}/part-0.arrow"))
    if not paths:
        raise FileNotFoundError(f"no faces shards for model {model_id!r} under {out}")
    return pa.concat_tables([read_table(p) for p in paths])


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
        if str(data.get("schema")) != SCHEMA_VERSION:
            raise ValueError(f"{p}: manifest schema {data.get('schema')!r}, expected {SCHEMA_VERSION!r}")
        return cls(Path(out), films=data.get("films", {}), scans=data.get("scans", []))

    def film_id_for(self, path: Path, taken: set[str]) -> str:
        """The film's id: its previous id in this output if any, else a slug of its file name
        (made unique with a short hash of the resolved path when the slug is taken)."""
        resolved = str(Path(path).resolve())
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
        text = json.dumps(data, indent=2, sort_keys=True)
        _atomic_write_bytes(self.path, lambda tmp: tmp.write_text(text))


def done_shards_exist(out: Path, film_id: str, model_ids: Iterable[str]) -> bool:
    """Whether the frames shard and every requested model's faces shard of a film exist."""
    if not frames_path(out, film_id).exists():
        return False
    return all(faces_path(out, film_id, m).exists() for m in model_ids)


def remove_film_shards(out: Path, film_id: str) -> None:
    """Delete every shard of a film (frames and all models' faces)."""
    for p in [frames_path(out, film_id), *Path(out).glob(f"faces/film_id={film_id}/model_id=*/part-0.arrow")]:
        if p.exists():
            p.unlink()
