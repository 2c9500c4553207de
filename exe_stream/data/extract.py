"""``exe-stream data extract``: the largest face of every pulled photo, cropped as ``scan`` crops.

Input (written by ``exe-stream data pull``): ``DATA/raw.arrow``, one row per distinct photo
with at least ``source, id, label, sha256, path`` (``path`` relative to DATA); the pull's
repeats of a photo are in ``raw_duplicates.arrow``, which ``data clean`` reads. Each content
hash is extracted once (and rows with a non-empty ``duplicate_of`` column, should a table
carry one, are skipped).

For each photo (decoded with Pillow, EXIF orientation applied, RGB; photos whose longer side
exceeds ``max_side`` are first reduced to it, as a film frame of that size would be):

1. **Detect** with the same detector and threshold as ``scan`` (``detect_faces_rgb``,
   ``DetectorOptions``); only the largest box (``face_index`` 0) is kept, the count of faces
   found is recorded (``n_faces``).
2. **Crop** with ``scan``'s face rule (``classify.face_rois``): the square centred on the box
   with side ``max(w, h) * (1 + 2 * margin)``, resampled bilinearly with half-pixel centres
   and zeros outside the photo (``roi.resample``, the RGB form of ``roi_resample``), to
   ``crop_size`` x ``crop_size`` RGB. A crop from a photo and ``make_crops`` on a film frame
   holding the same pixels give the same values for the same box and margin (tested).
3. **Save** as ``DATA/faces/<label>/<sha256 of the PNG file[:16]>.png`` (written under a
   temporary name and renamed).

Outputs:

- ``DATA/faces.arrow``: one row per photo with a face (``FACES_SCHEMA``): image_sha256,
  source, id, label, path (the crop, relative to DATA), image_path, x0, y0, x1, y1 (the box,
  normalised to the photo), det_score, face_area_rel, face_size_px (the box's longer side in
  the original photo's pixels), n_faces, crop_size, crop_margin, crop_sha256.
- ``DATA/faces_skipped.arrow``: one row per photo without a crop (``SKIPPED_SCHEMA``):
  status ``no_face`` (nothing above the threshold) or ``error`` (missing file, undecodable
  image, ...), and a reason naming the file.

Both files carry the extraction options in their schema metadata
(``exe_stream.extract_options``) and are rewritten atomically after every ``flush_every``
photos, so an interrupted run loses at most that many photos of work. A re-run with the same
options skips every photo already in ``faces.arrow`` or skipped as ``no_face``, and retries
``error`` rows (a re-pulled file may now be readable). A re-run with other options redoes
every photo and removes the crops listed in the old ``faces.arrow``.

Margin and the model that will be trained: ``crop_margin`` is written in every row, and the
trainer writes it into the trained model's card, so ``scan`` crops film faces for that model
exactly as its training faces were cropped. The default, ``DEFAULT_MARGIN`` = 0.15, is the
margin of the bundled ``fer2013-minixception`` card.

Device: ``device="cuda"`` runs the same torch code on the GPU. Its test cases are skipped
without CUDA and have not been run on a GPU yet (unverified); the CPU path is tested.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping

import numpy as np
import pyarrow as pa
import torch

from .tables import read_stage_table
from ..atomic import atomic_write_bytes
from ..detect import DEFAULT_DETECTOR, DETECTORS, MODEL_MIN_SCORE, DetectorOptions
from ..errors import ExeStreamError
from ..shards import read_table, shard_metadata, write_table

if TYPE_CHECKING:
    from .recipe import Recipe

RAW_FILE = "raw.arrow"
FACES_FILE = "faces.arrow"
SKIPPED_FILE = "faces_skipped.arrow"
FACES_DIR = "faces"
# Crop margin used when none is given: the bundled fer2013-minixception card's.
DEFAULT_MARGIN = 0.15
# Side of the saved square crops in pixels (ResNet-style input; the trainer resizes as it needs).
DEFAULT_CROP_SIZE = 224
# Photos are reduced to this longer side before detection and cropping (a 1080p frame's width).
DEFAULT_MAX_SIDE = 1920
# Columns of raw.arrow that extraction needs.
RAW_REQUIRED = ("source", "id", "label", "sha256", "path")

FACES_SCHEMA = pa.schema(
    [
        ("image_sha256", pa.string()),
        ("source", pa.string()),
        ("id", pa.string()),
        ("label", pa.string()),
        ("path", pa.string()),
        ("image_path", pa.string()),
        ("x0", pa.float32()),
        ("y0", pa.float32()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
        ("det_score", pa.float32()),
        ("face_area_rel", pa.float32()),
        ("face_size_px", pa.float32()),
        ("n_faces", pa.int16()),
        ("crop_size", pa.int32()),
        ("crop_margin", pa.float32()),
        ("crop_sha256", pa.string()),
    ]
)
SKIPPED_SCHEMA = pa.schema(
    [
        ("image_sha256", pa.string()),
        ("source", pa.string()),
        ("id", pa.string()),
        ("label", pa.string()),
        ("image_path", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
    ]
)
SKIP_STATUSES = ("no_face", "error")


class ExtractError(ExeStreamError):
    """Extraction cannot start: no raw.arrow, missing columns, bad options."""


class ImageReadError(ExeStreamError):
    """An image file cannot be read; ``path`` names it, ``reason`` says why."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class ExtractOptions:
    """How faces are found and cropped (all but ``device``/``flush_every`` are part of the resume key)."""

    # Face detector registry name (a key of exe_stream.detect.DETECTORS), as scan's --detector.
    detector: str = DEFAULT_DETECTOR
    # Detector score threshold; None = the model's own MediaPipe threshold, as in scan.
    min_face_score: float | None = None
    # Square crop side = max(w, h) * (1 + 2 * margin) around the box (the model card's crop_margin).
    margin: float = DEFAULT_MARGIN
    # Side of the saved square RGB crops in pixels.
    crop_size: int = DEFAULT_CROP_SIZE
    # Photos with a longer side above this are reduced to it before detection (0 = never).
    max_side: int = DEFAULT_MAX_SIDE
    # Where detection and cropping run: "auto" (CUDA when available), "cpu" or "cuda".
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Rewrite faces.arrow / faces_skipped.arrow after this many photos (interruption loses at most these).
    flush_every: int = 50

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ExtractError(f"unknown detector {self.detector!r}; available: {', '.join(sorted(DETECTORS))}")
        if self.min_face_score is not None and not 0.0 <= self.min_face_score <= 1.0:
            raise ExtractError(f"min_face_score must be in [0, 1], got {self.min_face_score}")
        if not (isinstance(self.margin, (int, float)) and 0.0 <= self.margin <= 2.0):
            raise ExtractError(f"margin must be in [0, 2], got {self.margin!r}")
        if not (isinstance(self.crop_size, int) and 16 <= self.crop_size <= 1024):
            raise ExtractError(f"crop_size must be an integer in [16, 1024], got {self.crop_size!r}")
        if not (isinstance(self.max_side, int) and (self.max_side == 0 or self.max_side >= 64)):
            raise ExtractError(f"max_side must be 0 (never reduce) or >= 64, got {self.max_side!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ExtractError(f"device must be one of auto, cpu, cuda; got {self.device!r}")
        if self.flush_every < 1:
            raise ExtractError(f"flush_every must be >= 1, got {self.flush_every}")

    @property
    def detector_options(self) -> DetectorOptions:
        """The DetectorOptions scan would use for the same --detector / --min-face-score."""
        return DetectorOptions(name=self.detector, min_score=self.min_face_score)

    def resume_key(self) -> dict[str, Any]:
        """What decides the crops: a re-run with a different key redoes every photo."""
        return {
            "detector": self.detector,
            "threshold": MODEL_MIN_SCORE[self.detector] if self.min_face_score is None else self.min_face_score,
            "nms_iou": self.detector_options.nms_iou,
            "margin": float(self.margin),
            "crop_size": self.crop_size,
            "max_side": self.max_side,
        }

    @classmethod
    def from_recipe(cls, recipe: "Recipe", **overrides: Any) -> "ExtractOptions":
        """Options from a recipe's ``[extract]`` table (keys ``RECIPE_KEYS``), then ``overrides``
        (command-line values; None = not given). Errors name the recipe file and the key."""
        from .recipe import RecipeError, check_keys, get_value

        table = recipe.section("extract")
        w = recipe.where("extract")
        check_keys(table, RECIPE_KEYS, w)
        kinds = {"detector": str, "min_face_score": float, "margin": float, "crop_size": int, "max_side": int,
                 "device": str}
        kwargs = {k: get_value(table, k, kinds[k], w) for k in RECIPE_KEYS if k in table}
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**kwargs)
        except ExtractError as e:
            raise RecipeError(f"{w}: {e}") from e


# Keys a recipe's [extract] table may hold.
RECIPE_KEYS = ("detector", "min_face_score", "margin", "crop_size", "max_side", "device")


@dataclass
class ExtractResult:
    """What one ``extract`` run did."""

    data_dir: Path
    images: int = 0          # photos in raw.arrow considered (content duplicates left out)
    already_done: int = 0    # photos skipped because an earlier run with the same options did them
    faces: int = 0           # photos cropped in this run
    no_face: int = 0         # photos without a face above the threshold (this run)
    errors: int = 0          # photos that could not be read (this run)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def faces_path(self) -> Path:
        return self.data_dir / FACES_FILE

    @property
    def skipped_path(self) -> Path:
        return self.data_dir / SKIPPED_FILE


# --------------------------------------------------------------------------- image reading


def read_image_rgb(path: str | os.PathLike, max_side: int = 0) -> np.ndarray:
    """Decode an image file: uint8 [H, W, 3] RGB (HWC), EXIF orientation applied.

    Palette, grey, alpha and CMYK images are converted to RGB (alpha dropped). When
    ``max_side`` > 0 and the longer side is larger, the image is reduced (Pillow's
    antialiased ``reduce`` + Lanczos ``resize``) to that longer side, aspect kept. Raises
    ImageReadError naming the file for a missing or undecodable file.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise ImageReadError(p, "file not found")
    try:
        with Image.open(p) as im:
            if max_side and max(im.size) > max_side:
                # JPEG: decode at 1/2, 1/4 or 1/8 scale, never below the requested size
                # (Pillow's Image.draft; a no-op for other formats).
                im.draft("RGB", (max_side, max_side))
            im = ImageOps.exif_transpose(im)
            im = im.convert("RGB")
            if max_side and max(im.size) > max_side:
                scale = max_side / max(im.size)
                size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
                im = im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
            arr = np.array(im, dtype=np.uint8)  # a writable copy
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise ImageReadError(p, f"cannot decode image: {e}") from e
    if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
        raise ImageReadError(p, f"decoded to an unusable array of shape {arr.shape}")
    return np.ascontiguousarray(arr)


def to_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 [H, W, 3] RGB -> float32 [1, 3, H, W] in [0, 1] (NCHW) on ``device``."""
    arr = np.ascontiguousarray(image)
    t = torch.from_numpy(arr if arr.flags.writeable else arr.copy()).to(device)
    return t.permute(2, 0, 1).unsqueeze(0).to(torch.float32).div_(255.0)


def encode_png(crop: np.ndarray) -> bytes:
    """PNG bytes of a uint8 [h, w, 3] RGB or [h, w] grey array."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- the crop rule


def crop_faces(images: torch.Tensor, boxes: torch.Tensor, rows: torch.Tensor, margin: float,
               crop_size: int) -> torch.Tensor:
    """Square face crops by scan's rule, from RGB images.

    images: float32 [B, 3, H, W] in [0, 1] (NCHW, any device); boxes: float32 [N, 4]
    (x0, y0, x1, y1) normalised to the image; rows: int64 [N], the image of each box.
    Returns float32 [N, 3, crop_size, crop_size] in [0, 1] on the images' device: the square
    of ``classify.face_rois`` (side ``max(w, h) * (1 + 2 * margin)``) resampled by
    ``roi.resample`` (bilinear, half-pixel centres, zeros outside the image).
    """
    from ..classify import face_rois
    from ..roi import resample
    from ..types import FaceBatch

    n = int(boxes.shape[0])
    if boxes.ndim != 2 or boxes.shape[1] != 4 or tuple(rows.shape) != (n,):
        raise ValueError(f"boxes must be [N, 4] and rows [N], got {tuple(boxes.shape)} and {tuple(rows.shape)}")
    faces = FaceBatch(
        frame_row=rows.to(torch.int64).cpu(),
        face_index=torch.zeros(n, dtype=torch.int16),
        boxes=boxes.to(torch.float32).cpu(),
        scores=torch.ones(n),
        keypoints=torch.zeros(n, 6, 2),
    )
    rois = face_rois(faces, (int(images.shape[2]), int(images.shape[3])), margin)
    if n == 0:
        return images.new_zeros((0, 3, crop_size, crop_size))
    return resample(images, rois.to(images.device), (crop_size, crop_size), "rgb").clamp_(0.0, 1.0)


def to_uint8(crop: torch.Tensor) -> np.ndarray:
    """float32 [3, h, w] in [0, 1] -> uint8 [h, w, 3] (rounded)."""
    return (crop.detach().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def safe_label(label: str) -> str:
    """The label as a directory name: anything but letters, digits, '-', '_' and '.' becomes '_'."""
    name = re.sub(r"[^\w.-]+", "_", str(label).strip())
    if name in ("", ".", ".."):
        raise ExtractError(f"label {label!r} cannot name a directory")
    return name


# --------------------------------------------------------------------------- tables


def _raw_rows(data_dir: Path) -> list[dict[str, Any]]:
    """The photos to extract: raw.arrow rows (content duplicates left out), in pull order."""
    table = read_stage_table(data_dir / RAW_FILE, RAW_REQUIRED, "exe-stream data pull", ExtractError)
    rows = table.to_pylist()
    if "duplicate_of" in table.column_names:
        rows = [r for r in rows if not r.get("duplicate_of")]
    return rows


def _table(rows: list[dict[str, Any]], schema: pa.Schema, key: dict[str, Any]) -> pa.Table:
    cols = {f.name: [r[f.name] for r in rows] for f in schema}
    return pa.Table.from_pydict(cols, schema=schema.with_metadata(shard_metadata(extract_options=key)))


def read_extract_options(path: str | os.PathLike) -> dict[str, Any] | None:
    """The resume key stored in a faces.arrow / faces_skipped.arrow (None if absent)."""
    meta = read_table(Path(path)).schema.metadata or {}
    raw = meta.get(b"exe_stream.extract_options")
    return json.loads(raw) if raw else None


def _previous(data_dir: Path, key: dict[str, Any], result: ExtractResult
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows kept from an earlier run with the same options (faces, no_face skips)."""
    fpath, spath = data_dir / FACES_FILE, data_dir / SKIPPED_FILE
    faces: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    if fpath.is_file():
        if read_extract_options(fpath) == key:
            # A row whose crop file has gone (deleted by hand) is redone.
            faces = [r for r in read_table(fpath).to_pylist() if (data_dir / r["path"]).is_file()]
        else:
            old = read_table(fpath).to_pylist()
            result.notes.append(f"extraction options changed; re-extracting every photo (removing {len(old)} old crops)")
            for r in old:
                (data_dir / r["path"]).unlink(missing_ok=True)
    if spath.is_file() and read_extract_options(spath) == key:
        skipped = [r for r in read_table(spath).to_pylist() if r["status"] == "no_face"]
    return faces, skipped


# --------------------------------------------------------------------------- the stage


def extract(
    data_dir: str | os.PathLike,
    opts: ExtractOptions = ExtractOptions(),
    on_progress: Callable[[int, int], None] | None = None,
) -> ExtractResult:
    """Crop the largest face of every photo in ``DATA/raw.arrow`` (module docstring).

    Writes ``DATA/faces/<label>/*.png``, ``DATA/faces.arrow`` and ``DATA/faces_skipped.arrow``;
    resumable. on_progress(done, total) is called after each photo. A photo that cannot be
    read becomes an ``error`` row; the others go on.
    """
    from ..models import resolve_device

    t0 = time.perf_counter()
    data = Path(data_dir)
    result = ExtractResult(data_dir=data)
    rows = _raw_rows(data)
    key = opts.resume_key()
    faces, skipped = _previous(data, key, result)
    done = {r["image_sha256"] for r in faces} | {r["image_sha256"] for r in skipped}
    # One photo per content hash, in pull order.
    todo, seen = [], set()
    for r in rows:
        if r["sha256"] in seen:
            continue
        seen.add(r["sha256"])
        todo.append(r)
    result.images = len(todo)
    result.already_done = sum(r["sha256"] in done for r in todo)
    todo = [r for r in todo if r["sha256"] not in done]
    try:
        device = resolve_device(opts.device)
        det_opts = opts.detector_options
    except (ValueError, ExeStreamError) as e:
        raise ExtractError(str(e)) from e

    def flush() -> None:
        write_table(data / FACES_FILE, _table(faces, FACES_SCHEMA, key))
        write_table(data / SKIPPED_FILE, _table(skipped, SKIPPED_SCHEMA, key))

    for i, r in enumerate(todo):
        base = {"image_sha256": r["sha256"], "source": str(r["source"]), "id": str(r["id"]),
                "label": str(r["label"]), "image_path": str(r["path"])}
        try:
            row = _extract_one(data, r, opts, det_opts, device)
        except ImageReadError as e:
            skipped.append({**base, "status": "error", "reason": str(e)})
            result.errors += 1
        else:
            if row is None:
                skipped.append({**base, "status": "no_face",
                                "reason": f"{r['path']}: no face scored >= {key['threshold']} ({opts.detector})"})
                result.no_face += 1
            else:
                faces.append({**base, **row})
                result.faces += 1
        if (i + 1) % opts.flush_every == 0:
            flush()
        if on_progress is not None:
            on_progress(i + 1, len(todo))
    flush()
    result.seconds = time.perf_counter() - t0
    return result


def _extract_one(data: Path, r: Mapping[str, Any], opts: ExtractOptions, det_opts: DetectorOptions,
                 device: torch.device) -> dict[str, Any] | None:
    """The faces.arrow fields of one photo's largest face, or None when it has none."""
    from ..detect import detect_faces_rgb

    rel = str(r["path"])
    path = data / rel
    orig = _original_size(path)
    try:
        image = read_image_rgb(path, opts.max_side)
    except ImageReadError as e:
        raise ImageReadError(rel, e.reason) from e
    x = to_tensor(image, device)
    found = detect_faces_rgb(x, det_opts)
    if len(found) == 0:
        return None
    box = found.boxes[:1]  # sorted by area: row 0 is the largest face
    crop = crop_faces(x, box, torch.zeros(1, dtype=torch.int64), opts.margin, opts.crop_size)
    png = encode_png(to_uint8(crop[0]))
    digest = hashlib.sha256(png).hexdigest()
    out_rel = f"{FACES_DIR}/{safe_label(r['label'])}/{digest[:16]}.png"
    out = data / out_rel
    if not out.is_file():
        atomic_write_bytes(out, png, fsync=False)
    b = box[0].numpy()
    clipped = np.clip(b, 0.0, 1.0)
    ow, oh = orig if orig else (image.shape[1], image.shape[0])
    return {
        "path": out_rel,
        "x0": float(b[0]), "y0": float(b[1]), "x1": float(b[2]), "y1": float(b[3]),
        "det_score": float(found.scores[0]),
        "face_area_rel": float((clipped[2] - clipped[0]) * (clipped[3] - clipped[1])),
        "face_size_px": float(max((b[2] - b[0]) * ow, (b[3] - b[1]) * oh)),
        "n_faces": int(len(found)),
        "crop_size": opts.crop_size,
        "crop_margin": float(opts.margin),
        "crop_sha256": digest,
    }


def _original_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of the photo as displayed (EXIF rotation applied), without decoding it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)  # EXIF Orientation tag
    except Exception:  # unreadable files are reported by read_image_rgb
        return None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


__all__ = [
    "DEFAULT_CROP_SIZE", "DEFAULT_MARGIN", "DEFAULT_MAX_SIDE", "FACES_FILE", "FACES_SCHEMA", "RAW_FILE",
    "RECIPE_KEYS", "SKIPPED_FILE", "SKIPPED_SCHEMA", "ExtractError", "ExtractOptions", "ExtractResult",
    "ImageReadError", "crop_faces", "encode_png", "extract", "read_extract_options", "read_image_rgb",
    "to_tensor",
]
