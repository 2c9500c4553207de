"""Face crops harvested from a scan: unlabelled training material for autoencoder pretraining.

``harvest_faces(OUT, DEST)`` reads a scan's manifest and shards, decodes the sampled frames
that hold faces again (PyAV, the scan's own sampling options from the frames shard's
metadata) and cuts every face the scan found with ``scan``'s crop rule
(``classify.make_crops``: the square of side ``max(w, h) * (1 + 2 * margin)`` around the box,
bilinear, zeros outside the frame), as RGB ``size`` x ``size`` PNGs::

    DEST/<film_id>/f<frame_index>-<face_index>.png

Films whose file is gone or changed since the scan (fingerprint) are skipped with a note;
crops already in DEST are not cut again. ``[train.autoencoder] unlabelled = "DEST"`` then
pretrains on them.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write_bytes
from ..classify import make_crops
from ..decode import get_decoder
from ..errors import DecodeError
from ..models import CropSpec
from ..sampling import SamplingOptions
from ..shards import Manifest, existing_frames_path, find_shards, fingerprint, read_schema, read_table
from ..types import FaceBatch
from .config import TrainError


@dataclass
class HarvestResult:
    """What ``harvest_faces`` did."""

    dest: Path
    # Crops written now, and crops found already written.
    written: int = 0
    existing: int = 0
    films: int = 0
    notes: list[str] = field(default_factory=list)


def _faces_of(out: Path, film_id: str, min_area: float) -> dict[int, list[tuple[int, list[float]]]]:
    """frame_index -> [(face_index, box)] of the faces with ``face_area_rel >= min_area``, from
    the film's first faces shard (every model of a scan shares the detected faces)."""
    shards = find_shards(out, "faces", film_id=film_id)
    if not shards:
        return {}
    t = read_table(shards[0].path)
    out_rows: dict[int, list[tuple[int, list[float]]]] = {}
    cols = [t.column(c).to_pylist() for c in ("frame_index", "face_index", "face_area_rel", "x0", "y0", "x1", "y1")]
    for fi, k, area, *box in zip(*cols):
        if area >= min_area:
            out_rows.setdefault(int(fi), []).append((int(k), [float(v) for v in box]))
    return out_rows


def harvest_faces(
    out: str | os.PathLike, dest: str | os.PathLike, *, size: int = 64, margin: float = 0.15,
    min_face_area: float = 0.0,
) -> HarvestResult:
    """Cut every face of the scan ``out`` (``face_area_rel >= min_face_area``) from its film
    into ``dest`` (see the module docstring). Returns counts and notes."""
    from PIL import Image

    out, dest = Path(out), Path(dest)
    if not (out / "manifest.json").is_file():
        raise TrainError(f"{out} is not a scan output directory (no manifest.json)")
    if size < 8 or margin < 0:
        raise TrainError(f"size must be >= 8 and margin >= 0, got {size}, {margin}")
    manifest = Manifest.load(out)
    spec = CropSpec((size, size), "rgb", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), margin)
    result = HarvestResult(dest)
    decoder = get_decoder("pyav")
    for film_id, entry in sorted(manifest.films.items()):
        path = Path(entry.get("path", ""))
        frames_file = existing_frames_path(out, film_id)
        if entry.get("status") not in ("done", "partial") or frames_file is None:
            continue
        if not path.is_file() or fingerprint(path) != entry.get("fingerprint"):
            result.notes.append(f"{film_id}: {path} is gone or changed since the scan; skipped")
            continue
        rows = _faces_of(out, film_id, min_face_area)
        meta = read_schema(frames_file).metadata or {}
        sampling = SamplingOptions(**json.loads(meta[b"exe_stream.sampling"]))
        todo = {f: [r for r in rs if not (dest / film_id / f"f{f}-{r[0]}.png").exists()] for f, rs in rows.items()}
        result.existing += sum(len(rs) for rs in rows.values()) - sum(len(rs) for rs in todo.values())
        todo = {f: rs for f, rs in todo.items() if rs}
        result.films += 1
        if not todo:
            continue
        (dest / film_id).mkdir(parents=True, exist_ok=True)
        try:
            for frames in decoder.frames(path, sampling, 16):
                index = frames.frame_index.tolist()
                picked = [(row, f, k, box) for row, f in enumerate(index) for k, box in todo.get(f, [])]
                if not picked:
                    continue
                n = len(picked)
                faces = FaceBatch(
                    frame_row=torch.tensor([p[0] for p in picked], dtype=torch.int64),
                    face_index=torch.tensor([p[2] for p in picked], dtype=torch.int16),
                    boxes=torch.tensor([p[3] for p in picked], dtype=torch.float32),
                    scores=torch.ones(n), keypoints=torch.zeros(n, 6, 2),
                )
                crops = make_crops(frames, faces, spec)
                pixels = (crops.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
                for (_, f, k, _), px in zip(picked, pixels):
                    target = dest / film_id / f"f{f}-{k}.png"
                    buf = io.BytesIO()
                    Image.fromarray(np.ascontiguousarray(px)).save(buf, format="PNG")
                    atomic_write_bytes(target, buf.getvalue(), fsync=False)
                    result.written += 1
        except DecodeError as e:
            result.notes.append(f"{film_id}: {e}; the crops before the error are kept")
    return result
