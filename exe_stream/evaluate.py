"""``exe-stream evaluate``: emotion models against labelled test sets.

For the training code (``exe_stream.train``), the contract this module reads:

    A trained model directory records the content hashes of its training images in
    ``MODEL_DIR/train_hashes.txt``: one lowercase hex sha256 per line (blank lines and lines
    starting with '#' are ignored), each the sha256 of a training image *file's bytes*
    (for crops from ``data extract`` that is the ``crop_sha256`` column of clean.arrow) or
    ``pixel_hash()`` of its decoded pixels (either kind, or both, may be listed). A card's
    ``extra["train_sha256"]`` (a list of such strings) is read as well.
    ``training_hashes(model_dir)`` returns the union.

Test sets (``load_test_set``):

- an image folder ``DIR/<label>/*.{jpg,jpeg,png,bmp,webp,...}`` (one sub-folder per class);
- the FER2013 CSV layout: header ``emotion,pixels[,Usage]``, ``pixels`` 2304 space-separated
  grey values of a 48 x 48 face, ``emotion`` 0..6 in FER2013's order (``FER2013_LABELS``:
  0 angry, 1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral); ``usage`` selects rows
  by their ``Usage`` (Training, PublicTest, PrivateTest).

Every test image is taken as a face crop (``crop="none"``): its centred square of side
max(H, W) (zeros outside the image) is resampled to the model's input as ``scan`` resamples a
face crop (``roi.resample``: bilinear, half-pixel centres, the card's colour mode and
mean/std). With ``crop="detect"`` the largest face is found first (the scan detector) and
cropped by the model card's rule (square of side max(w, h) * (1 + 2 * crop_margin)); images
without a face are counted (``no_face``) and left out.

Label sets: dataset and model labels are compared by a common name: lower-cased, then the
user's map (``label_map``: name -> common name, "" to leave a class out) or else the built-in
synonyms (``SYNONYMS``: anger -> angry, happiness -> happy, ...). Model outputs mapping to the
same name are summed. Test images whose class the model lacks are left out and counted
(``excluded``). The prediction is the model's top class (``restrict=True``: the top class
among the classes the test set has).

Metrics (numpy): accuracy, balanced accuracy (= macro recall), per-class precision, recall,
F1 and support, macro and support-weighted F1, and the confusion matrix (rows: true classes;
columns: the true classes, then the model's other classes). A class never predicted has
precision 0.

Leakage check: before any image is classified, the test images' content hashes (file sha256
and ``pixel_hash``) are compared with each model's ``training_hashes``. Any overlap is an
``EvaluateError`` naming the model, the test set and examples, unless ``allow_overlap``, which
evaluates anyway and records the count and a warning (the reference study's RAF-DB and FER2013
"test" images were its training images).

Device: ``device="cuda"`` runs the same torch code on the GPU. Its test cases are skipped
without CUDA and have not been run on a GPU yet (unverified); the CPU path is tested.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import torch

from .metrics import Metrics, compute_metrics
from .errors import ExeStreamError

TRAIN_HASHES_FILE = "train_hashes.txt"
# Key of a model card's ``extra`` that may also list training-image sha256s.
TRAIN_HASHES_EXTRA_KEY = "train_sha256"
# FER2013's emotion codes 0..6, in order.
FER2013_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER2013_SIZE = 48
# Image file suffixes read from test folders (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
CROPS = ("none", "detect")
# Built-in label synonyms: lower-case name -> common name.
SYNONYMS: dict[str, str] = {
    **dict.fromkeys(("anger", "angry", "mad", "rage", "furious"), "angry"),
    **dict.fromkeys(("disgust", "disgusted", "disgusting"), "disgust"),
    **dict.fromkeys(("fear", "fearful", "afraid", "scared", "fright", "frightened"), "fear"),
    **dict.fromkeys(("happy", "happiness", "joy", "joyful"), "happy"),
    **dict.fromkeys(("sad", "sadness", "sorrow", "unhappy"), "sad"),
    **dict.fromkeys(("surprise", "surprised", "astonished", "astonishment"), "surprise"),
    **dict.fromkeys(("neutral", "neutrality", "no emotion"), "neutral"),
    **dict.fromkeys(("contempt", "contemptuous"), "contempt"),
}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class EvaluateError(ExeStreamError):
    """An evaluation cannot run: unreadable test set, bad label map, training-data overlap, ..."""


@dataclass(frozen=True)
class EvaluateOptions:
    """How test images are prepared, labels matched and overlap handled."""

    # Extra label names -> common names ("" leaves that class out); applied before SYNONYMS.
    label_map: tuple[tuple[str, str], ...] = ()
    # FER2013 CSV rows to use by their Usage column (e.g. ("PrivateTest",)); () = every row.
    usage: tuple[str, ...] = ()
    # "none": each test image is a face crop; "detect": find the largest face and crop it by the card's rule.
    crop: Literal["none", "detect"] = "none"
    # Face detector for crop="detect" (a key of exe_stream.detect.DETECTORS).
    detector: str = "blazeface-full"
    # Detector threshold for crop="detect"; None = the detector's own MediaPipe threshold.
    min_face_score: float | None = None
    # Predict the top class among the test set's classes only (default: among all the model's classes).
    restrict: bool = False
    # Evaluate even when test images are in a model's training data (warn instead of refusing).
    allow_overlap: bool = False
    # Where models run: "auto", "cpu" or "cuda".
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Test images classified per forward pass.
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.crop not in CROPS:
            raise EvaluateError(f"crop must be one of {', '.join(CROPS)}; got {self.crop!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise EvaluateError(f"device must be one of auto, cpu, cuda; got {self.device!r}")
        if self.batch_size < 1:
            raise EvaluateError(f"batch_size must be >= 1, got {self.batch_size}")
        from .detect import DETECTORS

        if self.detector not in DETECTORS:
            raise EvaluateError(f"unknown detector {self.detector!r}; available: {', '.join(sorted(DETECTORS))}")
        if self.min_face_score is not None and not 0.0 <= self.min_face_score <= 1.0:
            raise EvaluateError(f"min_face_score must be in [0, 1], got {self.min_face_score}")


# --------------------------------------------------------------------------- labels


def _norm(name: str) -> str:
    return re.sub(r"[\s_-]+", " ", str(name).strip().lower())


def common_label(name: str, label_map: Mapping[str, str] | None = None) -> str:
    """The common name of a dataset or model label: the user's map (keys compared lower-cased),
    else the built-in synonyms, else the lower-cased name. "" means the class is left out."""
    n = _norm(name)
    user = {_norm(k): v for k, v in (label_map or {}).items()}
    if n in user:
        target = _norm(user[n])
        return SYNONYMS.get(target, target) if target else ""
    return SYNONYMS.get(n, n)


def load_label_map(path: str | os.PathLike) -> tuple[tuple[str, str], ...]:
    """A label map file: JSON object or TOML table ``{"from": "to"}``, or CSV with two columns
    (``from,to``; a header row naming them is skipped). Returns (from, to) pairs."""
    p = Path(path)
    if not p.is_file():
        raise EvaluateError(f"label map {p} does not exist")
    text = p.read_text(encoding="utf-8")
    suffix = p.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix == ".csv":
            rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
            if rows and [c.strip().lower() for c in rows[0][:2]] == ["from", "to"]:
                rows = rows[1:]
            bad = [i + 1 for i, r in enumerate(rows) if len(r) != 2]
            if bad:
                raise EvaluateError(f"label map {p}: every row needs two columns (from,to); rows {bad[:5]} do not")
            data = {r[0].strip(): r[1].strip() for r in rows}
        else:
            raise EvaluateError(f"label map {p}: unknown format {suffix!r}; use .json, .toml or .csv")
    except (json.JSONDecodeError, ValueError, csv.Error) as e:
        if isinstance(e, EvaluateError):
            raise
        raise EvaluateError(f"label map {p} is not valid {suffix[1:].upper()}: {e}") from e
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise EvaluateError(f"label map {p} must map label names to label names (strings), e.g. {{\"anger\": \"angry\"}}")
    return tuple(data.items())


# --------------------------------------------------------------------------- hashes


def pixel_hash(image: np.ndarray) -> str:
    """sha256 (hex) of an image's decoded pixels, independent of the file format.

    image: uint8 [H, W] grey or [H, W, 3] RGB; an RGB image whose three channels are equal
    hashes as its grey version, so a grey PNG and the same pixels saved as RGB match.
    """
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"pixel_hash needs uint8 pixels, got {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 3 and (a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all():
        a = a[..., 0]
    if a.ndim not in (2, 3):
        raise ValueError(f"pixel_hash needs [H, W] or [H, W, 3], got {a.shape}")
    c = 1 if a.ndim == 2 else a.shape[2]
    h = hashlib.sha256(f"{a.shape[0]}x{a.shape[1]}x{c}:".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def training_hashes(model_dir: str | os.PathLike) -> set[str]:
    """The content hashes of a model's training images (module docstring): the lines of
    ``model_dir/train_hashes.txt`` and the card's ``extra["train_sha256"]``; empty when the
    model records none. Raises EvaluateError naming the file and line of a malformed hash."""
    d = Path(model_dir)
    out: set[str] = set()
    f = d / TRAIN_HASHES_FILE
    if f.is_file():
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            s = line.strip().lower()
            if not s or s.startswith("#"):
                continue
            if not _HEX64.match(s):
                raise EvaluateError(f"{f}:{i}: expected a sha256 (64 hex digits), got {line.strip()[:80]!r}")
            out.add(s)
    card = d / "model.json"
    if card.is_file():
        try:
            extra = json.loads(card.read_text(encoding="utf-8")).get("extra") or {}
        except (json.JSONDecodeError, AttributeError) as e:
            raise EvaluateError(f"{card} is not a valid model card: {e}") from e
        listed = extra.get(TRAIN_HASHES_EXTRA_KEY) or []
        if not isinstance(listed, list):
            raise EvaluateError(f"{card}: extra.{TRAIN_HASHES_EXTRA_KEY} must be a list of sha256 strings")
        for v in listed:
            s = str(v).strip().lower()
            if not _HEX64.match(s):
                raise EvaluateError(f"{card}: extra.{TRAIN_HASHES_EXTRA_KEY} holds {str(v)[:80]!r}, not a sha256")
            out.add(s)
    return out


def model_dirs(spec: str) -> list[Path]:
    """The model directories behind a --model spec (a built-in name, a directory, or ``ens:a+b``)."""
    from .models import ENSEMBLE_PREFIX, builtin_models_dir, builtin_names

    spec = str(spec).strip()
    names = spec[len(ENSEMBLE_PREFIX):].split("+") if spec.startswith(ENSEMBLE_PREFIX) else [spec]
    builtins = builtin_names()
    out = []
    for n in (x.strip() for x in names):
        out.append(builtin_models_dir() / n if n in builtins else Path(n))
    return out


# --------------------------------------------------------------------------- test sets


@dataclass
class TestSet:
    """A labelled test set: N images with their (dataset) label names.

    kind "folder": ``files`` holds N image paths. kind "fer2013": ``pixels`` holds uint8
    [N, 48, 48] grey faces. ``labels``: N label names as the dataset spells them.
    """

    __test__ = False  # not a pytest class

    name: str
    kind: Literal["folder", "fer2013"]
    path: Path
    labels: list[str]
    files: list[Path] = field(default_factory=list)
    pixels: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.labels)
        assert (len(self.files) == n) if self.kind == "folder" else (self.pixels is not None and len(self.pixels) == n)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"TestSet({self.name!r}, {self.kind}, n={len(self)}, classes={sorted(set(self.labels))})"

    def image(self, i: int) -> np.ndarray:
        """Image i: uint8 [H, W, 3] RGB (a FER2013 face repeated over three channels)."""
        if self.kind == "fer2013":
            assert self.pixels is not None
            return np.repeat(self.pixels[i][:, :, None], 3, axis=2)
        from .data.extract import ImageReadError, read_image_rgb

        try:
            return read_image_rgb(self.files[i])
        except ImageReadError as e:
            raise EvaluateError(f"test set {self.name}: {e}") from e

    def where(self, i: int) -> str:
        """Human-readable location of image i (file path, or CSV row)."""
        if self.kind == "folder":
            return str(self.files[i])
        return f"{self.path} row {i + 1}"

    def hashes(self, i: int) -> set[str]:
        """Content hashes of image i: file sha256 (folders) and pixel_hash."""
        out = {pixel_hash(self.image(i) if self.kind == "folder" else self.pixels[i])}  # type: ignore[index]
        if self.kind == "folder":
            out.add(file_sha256(self.files[i]))
        return out


def _read_folder(path: Path, name: str) -> TestSet:
    classes = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    files: list[Path] = []
    labels: list[str] = []
    for d in classes:
        for f in sorted(d.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                labels.append(d.name)
    if not files:
        raise EvaluateError(
            f"test folder {path} holds no images in class sub-folders; expected {path}/<label>/*"
            f"{{{','.join(s[1:] for s in IMAGE_SUFFIXES)}}}"
        )
    return TestSet(name=name, kind="folder", path=path, labels=labels, files=files)


def _read_fer2013(path: Path, name: str, usage: Sequence[str]) -> TestSet:
    try:
        fh = open(path, newline="", encoding="utf-8")
    except OSError as e:
        raise EvaluateError(f"cannot read FER2013 CSV {path}: {e}") from e
    with fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        missing = [c for c in ("emotion", "pixels") if c not in header]
        if missing:
            raise EvaluateError(
                f"{path} is not in the FER2013 CSV layout: no column(s) {missing}; "
                f"expected emotion,pixels[,Usage], got {header}"
            )
        if usage and "Usage" not in header:
            raise EvaluateError(f"{path} has no Usage column, so --usage {','.join(usage)} cannot select rows")
        want = set(usage)
        seen_usage: set[str] = set()
        labels: list[str] = []
        faces: list[np.ndarray] = []
        n_px = FER2013_SIZE * FER2013_SIZE
        for line, row in enumerate(reader, start=2):
            u = (row.get("Usage") or "").strip()
            seen_usage.add(u)
            if want and u not in want:
                continue
            try:
                code = int(str(row["emotion"]).strip())
            except ValueError:
                code = -1
            if not 0 <= code < len(FER2013_LABELS):
                raise EvaluateError(f"{path} line {line}: emotion must be 0..6 (FER2013 codes), got {row['emotion']!r}")
            try:
                px = np.array(str(row["pixels"]).split(), dtype=np.int64)
            except ValueError as e:
                raise EvaluateError(f"{path} line {line}: pixels must be space-separated integers: {e}") from e
            if px.size != n_px or px.min() < 0 or px.max() > 255:
                raise EvaluateError(
                    f"{path} line {line}: pixels must be {n_px} values in 0..255 (48 x 48), got {px.size} values"
                )
            labels.append(FER2013_LABELS[code])
            faces.append(px.astype(np.uint8).reshape(FER2013_SIZE, FER2013_SIZE))
    if not labels:
        avail = ", ".join(sorted(s for s in seen_usage if s)) or "none"
        raise EvaluateError(f"{path}: no rows" + (f" with Usage in {sorted(want)}; Usage values: {avail}" if want else ""))
    return TestSet(name=name, kind="fer2013", path=path, labels=labels, pixels=np.stack(faces))


def load_test_set(path: str | os.PathLike, usage: Sequence[str] = (), name: str | None = None) -> TestSet:
    """An image folder (``DIR/<label>/*``) or a FER2013-layout CSV file (module docstring)."""
    p = Path(path)
    if p.is_dir():
        return _read_folder(p, name or p.resolve().name)
    if p.is_file() and p.suffix.lower() == ".csv":
        stem = p.stem + (("-" + "+".join(usage)) if usage else "")
        return _read_fer2013(p, name or stem, usage)
    if not p.exists():
        raise EvaluateError(f"test set {p} does not exist")
    raise EvaluateError(f"test set {p} is neither a folder of class sub-folders (DIR/<label>/*) nor a FER2013 .csv")


# --------------------------------------------------------------------------- results


@dataclass
class Evaluation:
    """One model on one test set."""

    model: str                              # model id (built-in name, directory name, ens: spec)
    dataset: str                            # test set name
    metrics: Metrics
    excluded: dict[str, int]                # dataset label -> images left out (class not in the model)
    no_face: int = 0                        # images without a face (crop="detect"), left out
    overlap: int = 0                        # test images found in the model's training data
    overlap_checked: bool = False           # False when the model records no training hashes
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """One row of the comparison table."""
        m = self.metrics
        return {
            "model": self.model, "dataset": self.dataset, "n": m.n,
            "accuracy": m.accuracy, "balanced_accuracy": m.balanced_accuracy,
            "macro_precision": m.macro_precision, "macro_recall": m.macro_recall,
            "macro_f1": m.macro_f1, "weighted_f1": m.weighted_f1,
            "excluded": int(sum(self.excluded.values())), "no_face": self.no_face,
            "overlap": self.overlap if self.overlap_checked else None,
        }

    def per_class(self) -> list[dict[str, Any]]:
        m = self.metrics
        return [
            {"model": self.model, "dataset": self.dataset, "class": c, "precision": float(m.precision[i]),
             "recall": float(m.recall[i]), "f1": float(m.f1[i]), "support": int(m.support[i])}
            for i, c in enumerate(m.classes)
        ]

    def to_json(self) -> dict[str, Any]:
        m = self.metrics
        return {
            **self.summary(),
            "classes": list(m.classes), "predicted_classes": list(m.predicted_classes),
            "confusion": m.confusion.tolist(), "per_class": self.per_class(),
            "excluded_by_label": dict(self.excluded), "overlap_checked": self.overlap_checked,
            "notes": list(self.notes),
        }


SUMMARY_FIELDS = ("model", "dataset", "n", "accuracy", "balanced_accuracy", "macro_precision", "macro_recall",
                  "macro_f1", "weighted_f1", "excluded", "no_face", "overlap")
PER_CLASS_FIELDS = ("model", "dataset", "class", "precision", "recall", "f1", "support")


def _clean_json(v: Any) -> Any:
    if isinstance(v, float) and v != v:
        return None
    if isinstance(v, dict):
        return {k: _clean_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean_json(x) for x in v]
    return v


@dataclass
class EvaluationReport:
    """Every (model, test set) evaluation, and the files written."""

    evaluations: list[Evaluation]
    options: EvaluateOptions
    out_dir: Path | None = None
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def get(self, model: str, dataset: str) -> Evaluation:
        for e in self.evaluations:
            if e.model == model and e.dataset == dataset:
                return e
        raise KeyError((model, dataset))

    def comparison(self) -> list[dict[str, Any]]:
        """The comparison table: one row per (model, test set), fields SUMMARY_FIELDS."""
        return [e.summary() for e in self.evaluations]

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
        w.writeheader()
        for row in self.comparison():
            w.writerow({k: ("" if v is None else (f"{v:.6f}" if isinstance(v, float) else v)) for k, v in row.items()})
        return buf.getvalue()

    def per_class_csv(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=PER_CLASS_FIELDS, lineterminator="\n")
        w.writeheader()
        for e in self.evaluations:
            for row in e.per_class():
                w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
        return buf.getvalue()

    def to_json(self) -> str:
        opts = asdict(self.options)
        opts["label_map"] = dict(self.options.label_map)
        data = {"options": opts, "evaluations": [e.to_json() for e in self.evaluations], "notes": self.notes}
        return json.dumps(_clean_json(data), indent=2) + "\n"


# --------------------------------------------------------------------------- plots


def plot_confusion(ev: Evaluation, path: str | os.PathLike) -> Path:
    """Confusion matrix PNG: row-normalised colours, counts in the cells."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("exe-stream evaluate needs matplotlib for the confusion matrix: pip install matplotlib") from e
    m = ev.metrics
    cm = m.confusion
    rows = np.maximum(cm.sum(axis=1, keepdims=True), 1)
    share = cm / rows
    k, p = cm.shape
    fig = Figure(figsize=(1.2 + 0.75 * p, 1.4 + 0.6 * k), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(k):
        for j in range(p):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.55 else "black")
    if p > k:  # the model's classes that the test set lacks
        ax.axvline(k - 0.5, color="0.4", linewidth=1.0, linestyle="--")
    ax.set_xticks(range(p), m.predicted_classes, rotation=45, ha="right")
    ax.set_yticks(range(k), m.classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{ev.model} on {ev.dataset}\naccuracy {m.accuracy:.3f}, macro F1 {m.macro_f1:.3f}, n={m.n}",
                 fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05, label="share of the true class")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, facecolor="white")
    return out


# --------------------------------------------------------------------------- the stage


def _square_roi(h: int, w: int) -> list[float]:
    side = float(max(h, w))
    x0, y0 = (w - side) / 2.0, (h - side) / 2.0
    return [x0, y0, x0 + side, y0 + side]


def _crops(images: list[np.ndarray], specs: Sequence[Any], opts: EvaluateOptions, device: torch.device
           ) -> tuple[dict[Any, torch.Tensor], np.ndarray]:
    """Model inputs for a chunk of images: spec -> float32 [K, C, h, w]; and bool [len(images)],
    which images gave a crop (all but the faceless ones with crop="detect")."""
    from .classify import face_rois
    from .data.extract import to_tensor
    from .roi import resample

    ok = np.ones(len(images), dtype=bool)
    per_spec: dict[Any, list[torch.Tensor]] = {s: [] for s in specs}
    same = len({im.shape for im in images}) == 1 and opts.crop == "none"
    if same and images:
        x = torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
        h, w = images[0].shape[:2]
        rois = torch.tensor([[i, *_square_roi(h, w)] for i in range(len(images))], dtype=torch.float32)
        for s in specs:
            per_spec[s].append(resample(x, rois.to(device), s.out_hw, s.mode, s.mean, s.std))
        return {s: torch.cat(v) for s, v in per_spec.items()}, ok
    if opts.crop == "detect":
        from .detect import DetectorOptions, detect_faces_rgb

        det = DetectorOptions(name=opts.detector, min_score=opts.min_face_score)
    for i, im in enumerate(images):
        x = to_tensor(im, device)
        h, w = im.shape[:2]
        if opts.crop == "detect":
            faces = detect_faces_rgb(x, det)
            if len(faces) == 0:
                ok[i] = False
                continue
            from .types import FaceBatch

            largest = FaceBatch(faces.frame_row[:1], faces.face_index[:1], faces.boxes[:1], faces.scores[:1],
                                faces.keypoints[:1])  # sorted by area: row 0 is the largest face
            for s in specs:
                roi = face_rois(largest, (h, w), s.crop_margin).to(device)
                per_spec[s].append(resample(x, roi, s.out_hw, s.mode, s.mean, s.std))
        else:
            roi = torch.tensor([[0.0, *_square_roi(h, w)]], device=device)
            for s in specs:
                per_spec[s].append(resample(x, roi, s.out_hw, s.mode, s.mean, s.std))
    out = {}
    for s, v in per_spec.items():
        out[s] = torch.cat(v) if v else torch.zeros((0, 3 if s.mode == "rgb" else 1, *s.out_hw), device=device)
    return out, ok


def _align(model_labels: Sequence[str], data_labels: Sequence[str], label_map: Mapping[str, str]
           ) -> tuple[list[str], list[str], np.ndarray, dict[str, int], list[int | None]]:
    """Common-name alignment of one model and one test set.

    Returns (classes, predicted_classes, column_groups, excluded, true_index): classes = the
    test set's common names the model has (model order); predicted_classes = classes then the
    model's other common names; column_groups: int64 [len(model_labels)], the predicted-class
    index of each model output (-1 = left out); excluded: dataset label -> images without a
    matching model class; true_index: per image, its class index or None.
    """
    model_common = [common_label(lbl, label_map) for lbl in model_labels]
    names = list(dict.fromkeys(c for c in model_common if c))
    data_common = [common_label(lbl, label_map) for lbl in data_labels]
    present = set(data_common)
    classes = [c for c in names if c in present]
    others = [c for c in names if c not in present]
    pcls = classes + others
    pos = {c: i for i, c in enumerate(pcls)}
    groups = np.array([pos[c] if c else -1 for c in model_common], dtype=np.int64)
    excluded: dict[str, int] = {}
    true_index: list[int | None] = []
    cls_pos = {c: i for i, c in enumerate(classes)}
    for orig, c in zip(data_labels, data_common):
        if c in cls_pos:
            true_index.append(cls_pos[c])
        else:
            excluded[orig] = excluded.get(orig, 0) + 1
            true_index.append(None)
    return classes, pcls, groups, excluded, true_index


def _predict_columns(probs: np.ndarray, groups: np.ndarray, n_pred: int, n_classes: int, restrict: bool) -> np.ndarray:
    """Top predicted-class index per row of model probabilities [N, M] grouped into n_pred columns."""
    merged = np.zeros((probs.shape[0], n_pred), dtype=np.float64)
    for j, g in enumerate(groups):
        if g >= 0:
            merged[:, g] += probs[:, j]
    if restrict:
        merged = merged[:, :n_classes]
    return merged.argmax(axis=1) if merged.shape[1] else np.zeros(probs.shape[0], dtype=np.int64)


def _file_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "x"


def evaluate(
    models: Sequence[str],
    data: Sequence[str | os.PathLike],
    opts: EvaluateOptions = EvaluateOptions(),
    out_dir: str | os.PathLike | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> EvaluationReport:
    """Evaluate every model on every test set (module docstring).

    models: built-in names, model directories or ``ens:a+b`` specs; data: image folders or
    FER2013 CSV files. Writes into ``out_dir`` (when given) ``comparison.csv``,
    ``per_class.csv``, ``evaluation.json`` and one ``confusion-<model>--<test set>.png``
    per pair. on_progress(test set name, images done, images total).
    Raises EvaluateError before classifying anything when a test image is in a model's
    training data (unless ``opts.allow_overlap``).
    """
    from .models import load_model, resolve_device

    t0 = time.perf_counter()
    if not models:
        raise EvaluateError("give at least one model (a built-in name or a model directory)")
    if not data:
        raise EvaluateError("give at least one test set (--data DIR_OR_CSV)")
    if len(set(models)) != len(models):
        raise EvaluateError(f"models must be distinct, got {list(models)}")
    label_map = dict(opts.label_map)
    try:
        device = resolve_device(opts.device)
        loaded = [load_model(m, device) for m in models]
    except (ValueError, ExeStreamError) as e:
        raise EvaluateError(str(e)) from e
    sets: list[TestSet] = []
    names: set[str] = set()
    for d in data:
        ts = load_test_set(d, opts.usage if Path(d).suffix.lower() == ".csv" else ())
        base, k = ts.name, 1
        while ts.name in names:
            k += 1
            ts.name = f"{base}-{k}"
        names.add(ts.name)
        sets.append(ts)

    # Leakage: compare content hashes before classifying anything.
    train = {m.model_id: set().union(*(training_hashes(d) for d in model_dirs(spec))) for m, spec in zip(loaded, models)}
    report = EvaluationReport(evaluations=[], options=opts)
    overlaps: dict[tuple[str, str], list[int]] = {}
    if any(train.values()):
        for ts in sets:
            hashes = [ts.hashes(i) for i in range(len(ts))]
            for m in loaded:
                if train[m.model_id]:
                    hits = [i for i, h in enumerate(hashes) if h & train[m.model_id]]
                    overlaps[(m.model_id, ts.name)] = hits
        bad = [(k, v) for k, v in overlaps.items() if v]
        if bad and not opts.allow_overlap:
            lines = []
            for (mid, dname), hits in bad:
                ts = next(s for s in sets if s.name == dname)
                ex = ", ".join(ts.where(i) for i in hits[:3])
                lines.append(f"{len(hits)} of {len(ts)} test images of {dname!r} are in the training data of "
                             f"model {mid!r} (e.g. {ex})")
            raise EvaluateError(
                "; ".join(lines) + ". Evaluating a model on its own training images overstates its accuracy; "
                "use held-out test images, or --allow-overlap to evaluate anyway with a warning"
            )
    for m in loaded:
        if not train[m.model_id]:
            report.notes.append(f"model {m.model_id!r} records no training-image hashes ({TRAIN_HASHES_FILE}); "
                                "overlap with the test sets was not checked")

    specs = list(dict.fromkeys(s for m in loaded for s in m.crop_specs))
    for ts in sets:
        probs: dict[str, list[np.ndarray]] = {m.model_id: [] for m in loaded}
        kept: list[np.ndarray] = []
        for start in range(0, len(ts), opts.batch_size):
            idx = range(start, min(start + opts.batch_size, len(ts)))
            images = [ts.image(i) for i in idx]
            crops, ok = _crops(images, specs, opts, device)
            kept.append(ok)
            if ok.any():
                for m in loaded:
                    probs[m.model_id].append(m.predict([crops[s] for s in m.crop_specs]).float().cpu().numpy())
            if on_progress is not None:
                on_progress(ts.name, idx.stop, len(ts))
        has_crop = np.concatenate(kept) if kept else np.zeros(0, dtype=bool)
        for m in loaded:
            p = np.concatenate(probs[m.model_id]) if probs[m.model_id] else np.zeros((0, len(m.labels)))
            report.evaluations.append(_score(m.model_id, m.labels, ts, p, has_crop, label_map, opts,
                                             overlaps.get((m.model_id, ts.name)), bool(train[m.model_id])))
    if out_dir is not None:
        _write(report, Path(out_dir))
    report.seconds = time.perf_counter() - t0
    return report


def _score(model_id: str, model_labels: Sequence[str], ts: TestSet, probs: np.ndarray, has_crop: np.ndarray,
           label_map: Mapping[str, str], opts: EvaluateOptions, overlap: list[int] | None, checked: bool) -> Evaluation:
    """The Evaluation of one model's probabilities [n_with_crop, M] on one test set."""
    labels_with_crop = [lbl for lbl, ok in zip(ts.labels, has_crop) if ok]
    classes, pcls, groups, excluded, true_index = _align(model_labels, labels_with_crop, label_map)
    notes: list[str] = []
    if not classes:
        raise EvaluateError(
            f"model {model_id!r} and test set {ts.name!r} share no class: model labels {list(model_labels)}, "
            f"test labels {sorted(set(ts.labels))}; give --map FILE to name their common classes"
        )
    sel = np.array([t is not None for t in true_index], dtype=bool)
    true = np.array([t for t in true_index if t is not None], dtype=np.int64)
    pred = _predict_columns(probs[sel], groups, len(pcls), len(classes), opts.restrict)
    metrics = compute_metrics(true, pred, classes, pcls)
    if excluded:
        notes.append(f"{sum(excluded.values())} images of classes the model lacks were left out: "
                     + ", ".join(f"{k} {v}" for k, v in sorted(excluded.items())))
    no_face = int((~has_crop).sum())
    if no_face:
        notes.append(f"{no_face} images without a detected face were left out")
    n_overlap = len(overlap or [])
    if n_overlap:
        notes.append(f"WARNING: {n_overlap} of {len(ts)} test images are in the model's training data; "
                     "these results overstate its accuracy")
    return Evaluation(model_id, ts.name, metrics, excluded, no_face, n_overlap, checked, notes)


def _write(report: EvaluationReport, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report.out_dir = out
    files = []
    for name, text in (("comparison.csv", report.to_csv()), ("per_class.csv", report.per_class_csv()),
                       ("evaluation.json", report.to_json())):
        (out / name).write_text(text, encoding="utf-8")
        files.append(out / name)
    taken: set[str] = set()
    for ev in report.evaluations:
        base = f"confusion-{_file_part(ev.model)}--{_file_part(ev.dataset)}"
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}-{k}"
        taken.add(name)
        files.append(plot_confusion(ev, out / f"{name}.png"))
    report.files = files


__all__ = [
    "FER2013_LABELS", "SYNONYMS", "TRAIN_HASHES_FILE", "EvaluateError", "EvaluateOptions", "Evaluation",
    "EvaluationReport", "Metrics", "TestSet", "common_label", "compute_metrics", "evaluate", "file_sha256",
    "load_label_map", "load_test_set", "model_dirs", "pixel_hash", "plot_confusion", "training_hashes",
]
