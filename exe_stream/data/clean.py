"""``exe-stream data clean``: drop near-duplicate, conflicting, tiny and blurry face crops.

Input: ``DATA/faces.arrow`` and its crops (``exe-stream data extract``). Output:
``DATA/clean.arrow`` = every faces row, plus ``phash`` (16 hex digits), ``blur`` (Laplacian
variance), ``group`` (near-duplicate group id), ``duplicate_of`` (the crop kept in its place,
"" otherwise), ``keep`` (bool) and ``drop_reason`` ("" when kept); and
``DATA/clean_report.json``, the class balance before and after (``CleanResult.report``).

Rules, in this order of precedence for ``drop_reason``:

1. ``unreadable``: the crop file is missing or cannot be decoded.
2. ``label_conflict``: the same picture under two emotions, dropped from both classes. Either
   the pull found the very image under another label (a ``DATA/raw_duplicates.arrow`` row
   whose ``duplicate_of_source``/``duplicate_of_id`` is this photo and whose ``label``
   differs: the pull keeps one copy, so this is the only trace of the other), or crops fall in
   one near-duplicate group holding more than one label (groups: connected components of the
   graph linking two crops whose perceptual hashes differ in at most ``hash_distance`` of 64
   bits). Either way the whole near-duplicate group goes.
3. ``small_face``: the face's longer side in the original photo (``face_size_px``) is below
   ``min_face_size`` pixels.
4. ``blurry``: the crop's blur score is below ``blur_threshold`` (0 = no blur filter).
5. ``duplicate``: within a single-label group, one crop is kept (the largest face among those
   that passed 3 and 4; ties: the first row) and the others are dropped, ``duplicate_of``
   naming the one kept.

Perceptual hash (``phash``, the DCT hash): the grey crop is reduced to 32 x 32 (Pillow's box
filter), transformed with a 2-D DCT-II (``scipy.fft.dctn``, orthonormal), and the 8 x 8
lowest frequencies are compared with their median (the DC term left out of the median): 64
bits, row-major, bit 63 first. Re-compression, resizing and small shifts change few bits;
different faces differ in about half.

Blur score (``blur_score``): the variance of the 4-neighbour Laplacian of the grey crop
(0..255) reduced to 128 x 128 (box filter), so the threshold means the same at any crop size.
Sharp face crops from 512-pixel photos score 300-1700 (tests/data); a Gaussian blur of
radius 2 divides that by 8-16 (43-104), an upscaled small face lands in between (150-450).
Something like 60-100 drops visibly blurred faces; the filter is off by default.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
import pyarrow as pa

from .tables import read_stage_table
from ..atomic import atomic_write_text
from ..errors import ExeStreamError
from ..shards import read_table, shard_metadata, write_table
from .extract import FACES_FILE, RAW_FILE, SKIPPED_FILE

if TYPE_CHECKING:
    from .recipe import Recipe

CLEAN_FILE = "clean.arrow"
# The pull's record of hits that repeated a kept image (exe_stream.data.pull.DUPLICATES_FILE).
DUPLICATES_FILE = "raw_duplicates.arrow"
REPORT_FILE = "clean_report.json"
# Side of the grey image the DCT hash is computed on, and of the low-frequency block kept.
HASH_SIZE = 32
HASH_LOW = 8
# Side of the grey image the blur score is computed on.
BLUR_SIZE = 128
# drop_reason values, in order of precedence ("" = kept).
DROP_REASONS = ("unreadable", "label_conflict", "small_face", "blurry", "duplicate")
# faces.arrow columns that cleaning needs.
FACES_REQUIRED = ("image_sha256", "label", "path", "face_size_px")
# Bits set in each byte value (popcount lookup table).
_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


class CleanError(ExeStreamError):
    """Cleaning cannot start: no faces.arrow, missing columns, bad options."""


@dataclass(frozen=True)
class CleanOptions:
    """What counts as a duplicate, too small or too blurry."""

    # Two crops whose 64-bit perceptual hashes differ in at most this many bits are the same picture (0..32).
    hash_distance: int = 8
    # Faces whose box's longer side in the original photo is below this many pixels are dropped (0 = keep all).
    min_face_size: float = 48.0
    # Crops whose blur score (Laplacian variance at 128 x 128) is below this are dropped (0 = no blur filter).
    blur_threshold: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.hash_distance, int) and 0 <= self.hash_distance <= 32):
            raise CleanError(f"hash_distance must be an integer in [0, 32], got {self.hash_distance!r}")
        if not (isinstance(self.min_face_size, (int, float)) and self.min_face_size >= 0):
            raise CleanError(f"min_face_size must be >= 0 pixels, got {self.min_face_size!r}")
        if not (isinstance(self.blur_threshold, (int, float)) and self.blur_threshold >= 0):
            raise CleanError(f"blur_threshold must be >= 0 (0 = no blur filter), got {self.blur_threshold!r}")


    @classmethod
    def from_recipe(cls, recipe: "Recipe", **overrides: Any) -> "CleanOptions":
        """Options from a recipe's ``[clean]`` table (keys ``RECIPE_KEYS``), then ``overrides``
        (command-line values; None = not given). Errors name the recipe file and the key."""
        from .recipe import RecipeError, check_keys, get_value

        table = recipe.section("clean")
        w = recipe.where("clean")
        check_keys(table, RECIPE_KEYS, w)
        kinds = {"hash_distance": int, "min_face_size": float, "blur_threshold": float}
        kwargs = {k: get_value(table, k, kinds[k], w) for k in RECIPE_KEYS if k in table}
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**kwargs)
        except CleanError as e:
            raise RecipeError(f"{w}: {e}") from e


# Keys a recipe's [clean] table may hold.
RECIPE_KEYS = ("hash_distance", "min_face_size", "blur_threshold")


# --------------------------------------------------------------------------- measures


def _grey(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] RGB or [H, W] grey -> float64 [size, size] grey 0..255 (box filter)."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(image))
    if im.mode != "L":
        im = im.convert("L")  # ITU-R 601-2 luma: L = R * 299/1000 + G * 587/1000 + B * 114/1000
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BOX)
    return np.asarray(im, dtype=np.float64)


def phash(image: np.ndarray) -> int:
    """64-bit DCT perceptual hash of an image (module docstring).

    image: uint8 [H, W, 3] RGB or [H, W] grey. Returns an int in [0, 2**64).
    """
    from scipy.fft import dctn

    d = dctn(_grey(image, HASH_SIZE), type=2, norm="ortho")
    low = d[:HASH_LOW, :HASH_LOW].ravel()
    bits = low > np.median(low[1:])
    return int(np.packbits(bits).view(">u8")[0])


def hamming(a: int | np.ndarray, b: int | np.ndarray) -> np.ndarray:
    """Bits that differ between 64-bit hashes (broadcasting): int64 array of the broadcast shape."""
    x = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    flat = np.ascontiguousarray(x.reshape(-1))
    return _POP8[flat.view(np.uint8)].reshape(-1, 8).sum(axis=1, dtype=np.int64).reshape(x.shape)


def blur_score(image: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the grey image at 128 x 128 (0..255 scale).

    image: uint8 [H, W, 3] RGB or [H, W] grey. Low values mean blurry.
    """
    g = _grey(image, BLUR_SIZE)
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def near_duplicate_groups(hashes: np.ndarray, max_distance: int, chunk: int = 1024) -> np.ndarray:
    """Connected components of "Hamming distance <= max_distance".

    hashes: uint64 [N]. Returns int64 [N] group ids (0..G-1); equal ids = one near-duplicate
    group. Pairwise distances are computed in chunks of ``chunk`` rows (memory O(chunk * N)).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    h = np.asarray(hashes, dtype=np.uint64)
    n = h.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rows, cols = [], []
    for s in range(0, n, chunk):
        d = hamming(h[s : s + chunk, None], h[None, :])
        i, j = np.nonzero(d <= max_distance)
        i = i + s
        upper = j > i
        rows.append(i[upper])
        cols.append(j[upper])
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(r.shape[0], dtype=np.int8), (r, c)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


# --------------------------------------------------------------------------- the stage


@dataclass
class CleanResult:
    """What ``clean`` kept and dropped; ``report`` is what clean_report.json holds."""

    data_dir: Path
    table: pa.Table                  # clean.arrow's rows (faces columns + phash, blur, group, duplicate_of, keep, drop_reason)
    report: dict[str, Any]           # class balance before/after, drops per reason and label, options
    seconds: float = 0.0

    @property
    def clean_path(self) -> Path:
        return self.data_dir / CLEAN_FILE

    @property
    def report_path(self) -> Path:
        return self.data_dir / REPORT_FILE

    @property
    def kept(self) -> int:
        return int(self.report["total_after"])


def _read_faces(data: Path) -> pa.Table:
    return read_stage_table(data / FACES_FILE, FACES_REQUIRED, "exe-stream data extract", CleanError)


def _counts(labels: list[str], mask: np.ndarray | None = None) -> dict[str, int]:
    c = Counter(lbl for i, lbl in enumerate(labels) if mask is None or mask[i])
    return {k: c[k] for k in sorted(c)}


def _imbalance(counts: Mapping[str, int]) -> float | None:
    """Largest class over smallest (None with fewer than one non-empty class)."""
    v = [n for n in counts.values() if n > 0]
    return float(max(v) / min(v)) if v else None


def _optional_counts(path: Path, status: str | None = None) -> dict[str, int] | None:
    """Per-label row counts of raw.arrow (content duplicates left out) or faces_skipped.arrow."""
    if not path.is_file():
        return None
    t = read_table(path)
    rows = t.to_pylist()
    if "duplicate_of" in t.column_names:
        rows = [r for r in rows if not r.get("duplicate_of")]
    if status is not None:
        rows = [r for r in rows if r.get("status") == status]
    return _counts([str(r.get("label")) for r in rows])


def _pull_duplicate_labels(data: Path) -> dict[tuple[str, str], set[str]]:
    """(source, id) of a kept raw.arrow photo -> the labels under which the pull found it again
    (``raw_duplicates.arrow``); empty when there is no such file."""
    path = data / DUPLICATES_FILE
    if not path.is_file():
        return {}
    t = read_table(path)
    need = ("label", "duplicate_of_source", "duplicate_of_id")
    missing = [c for c in need if c not in t.column_names]
    if missing:
        raise CleanError(f"{path} lacks columns {missing}; needs {list(need)}, has {t.column_names}")
    out: dict[tuple[str, str], set[str]] = {}
    for r in t.select(list(need)).to_pylist():
        out.setdefault((str(r["duplicate_of_source"]), str(r["duplicate_of_id"])), set()).add(str(r["label"]))
    return out


def clean(
    data_dir: str | os.PathLike,
    opts: CleanOptions = CleanOptions(),
    on_progress: Callable[[int, int], None] | None = None,
) -> CleanResult:
    """Mark every crop of ``DATA/faces.arrow`` kept or dropped (module docstring).

    Writes ``DATA/clean.arrow`` and ``DATA/clean_report.json`` (atomically) and returns them.
    on_progress(done, total) is called while crops are read.
    """
    from .extract import ImageReadError, read_image_rgb

    t0 = time.perf_counter()
    data = Path(data_dir)
    faces = _read_faces(data)
    n = faces.num_rows
    labels = [str(v) for v in faces.column("label").to_pylist()]
    paths = [str(v) for v in faces.column("path").to_pylist()]
    size = np.asarray(faces.column("face_size_px").to_numpy(zero_copy_only=False), dtype=np.float64)
    hashes = np.zeros(n, dtype=np.uint64)
    blur = np.full(n, np.nan)
    readable = np.zeros(n, dtype=bool)
    for i, p in enumerate(paths):
        try:
            img = read_image_rgb(data / p)
        except ImageReadError:
            pass
        else:
            hashes[i] = np.uint64(phash(img))
            blur[i] = blur_score(img)
            readable[i] = True
        if on_progress is not None:
            on_progress(i + 1, n)

    reason = np.array([""] * n, dtype=object)
    duplicate_of = np.array([""] * n, dtype=object)
    group = np.full(n, -1, dtype=np.int64)
    reason[~readable] = "unreadable"
    idx = np.flatnonzero(readable)
    group[idx] = near_duplicate_groups(hashes[idx], opts.hash_distance)
    # The pull's duplicates: the same image found again under another label.
    pull_conflict = np.zeros(n, dtype=bool)
    other_labels = _pull_duplicate_labels(data)
    if other_labels and "source" in faces.column_names and "id" in faces.column_names:
        keys = zip(faces.column("source").to_pylist(), faces.column("id").to_pylist())
        for i, k in enumerate(keys):
            pull_conflict[i] = bool(other_labels.get((str(k[0]), str(k[1])), set()) - {labels[i]})
    members: dict[int, list[int]] = {}
    for i in idx:
        members.setdefault(int(group[i]), []).append(int(i))
    # Groups under more than one label, or holding a photo the pull also found under another
    # label: the same picture found by two emotions' keywords. Every copy goes.
    for g, rows in members.items():
        if len({labels[i] for i in rows}) > 1 or pull_conflict[rows].any():
            for i in rows:
                reason[i] = "label_conflict"
    for i in idx:
        if reason[i]:
            continue
        if size[i] < opts.min_face_size:
            reason[i] = "small_face"
        elif opts.blur_threshold > 0 and blur[i] < opts.blur_threshold:
            reason[i] = "blurry"
    # One crop per single-label group: the largest face among those still kept.
    for g, rows in members.items():
        alive = [i for i in rows if not reason[i]]
        if len(alive) < 2:
            continue
        best = max(alive, key=lambda i: (size[i], -i))
        for i in alive:
            if i != best:
                reason[i] = "duplicate"
                duplicate_of[i] = paths[best]
    keep = np.array([not r for r in reason], dtype=bool)

    table = faces
    extra = [
        ("phash", pa.string(), [f"{int(h):016x}" if ok else "" for h, ok in zip(hashes, readable)]),
        ("blur", pa.float32(), blur.astype(np.float32)),
        ("group", pa.int64(), group),
        ("duplicate_of", pa.string(), duplicate_of.tolist()),
        ("keep", pa.bool_(), keep),
        ("drop_reason", pa.string(), reason.tolist()),
    ]
    for name, typ, values in extra:
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.append_column(pa.field(name, typ), pa.array(values, typ))
    options = asdict(opts)
    meta = dict(faces.schema.metadata or {})
    meta.update(shard_metadata(clean_options=options))
    table = table.replace_schema_metadata(meta)

    before, after = _counts(labels), _counts(labels, keep)
    report: dict[str, Any] = {
        "options": options,
        "pulled": _optional_counts(data / RAW_FILE),
        "no_face": _optional_counts(data / SKIPPED_FILE, "no_face"),
        "before": before,
        "after": {k: after.get(k, 0) for k in before},
        "dropped": {r: _counts(labels, reason == r) for r in DROP_REASONS},
        "total_before": int(n),
        "total_after": int(keep.sum()),
        "imbalance_before": _imbalance(before),
        "imbalance_after": _imbalance(after),
    }
    write_table(data / CLEAN_FILE, table)
    atomic_write_text(data / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return CleanResult(data_dir=data, table=table, report=report, seconds=time.perf_counter() - t0)


__all__ = [
    "CLEAN_FILE", "DROP_REASONS", "RECIPE_KEYS", "REPORT_FILE", "CleanError", "CleanOptions", "CleanResult",
    "blur_score", "clean", "hamming", "near_duplicate_groups", "phash",
]
