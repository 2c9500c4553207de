"""Training data: face crops with labels, a deterministic split, augmentation, imbalance.

Sources (``load_data``):

- a data directory ``DATA`` holding ``DATA/clean.arrow`` (``exe-stream data clean``): the rows
  with ``keep == true``; ``path`` is relative to DATA, ``crop_sha256`` is the crop file's
  hash and ``image_sha256`` the hash of the photo it was cut from; ``crop_margin`` (one value
  for the whole table) goes to the trained model's card;
- any image folder ``DIR/<label>/*.{png,jpg,jpeg}`` (one level, file names sorted): each
  image is a face crop; its hash is the sha256 of the file.

Split (``split_samples``): stratified by label and deterministic. Every sample has a group key
(the source photo's sha256 for DATA crops, so crops of one photo never straddle the split;
the file's sha256 for folders); each label's groups are ordered by
``sha256(f"{seed}:{group}")`` and the first ``round(val_fraction * groups)`` (at least one,
at most all but one) are held out. The split depends only on the contents and the seed, not
on file names, listing order or the machine.

Images are read with Pillow (EXIF orientation applied), centre-cropped to a square when they
are not square, and resized (bilinear) to the input size: uint8 [C, S, S]. Augmentation
levels (``augmentation``) are ``torchvision.transforms.v2`` pipelines on those uint8 tensors
(v2 transforms take plain [C, H, W] tensors, https://pytorch.org/vision/stable/transforms.html):

- ``none``: nothing;
- ``light``: horizontal flip;
- ``mid``: flip, affine (rotation 10 degrees, shift 5 %, scale 0.95-1.05), brightness and
  contrast jitter 0.2;
- ``high``: flip, affine (20 degrees, 10 %, 0.9-1.1), brightness/contrast 0.4 and saturation
  0.3 jitter, 10 % greyscale (RGB only), random erasing (p = 0.25).

Then pixels are scaled to [0, 1] and normalised with the card's mean and std, as ``scan``'s
``roi_resample`` does. Imbalance: ``class_weights`` (inverse class frequency, mean 1 over the
training samples) for the loss, or ``balanced_sampler`` (each class drawn equally often).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from .config import TrainError

CLEAN_FILE = "clean.arrow"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Columns of clean.arrow that training needs.
CLEAN_REQUIRED = ("path", "label", "keep")


@dataclass(frozen=True)
class Sample:
    """One labelled face crop."""

    # The image file (absolute).
    path: Path
    # Its class name.
    label: str
    # sha256 (hex) of the image file's bytes.
    sha256: str
    # Split key: samples with the same group are always on the same side of the split.
    group: str


@dataclass(frozen=True)
class TrainData:
    """Labelled crops and the classes, in output order."""

    samples: tuple[Sample, ...]
    labels: tuple[str, ...]
    # Where they came from, for the model card and the run record.
    source: str
    # The crops' margin (DATA/clean.arrow's crop_margin), None for an image folder.
    crop_margin: float | None = None

    def __post_init__(self) -> None:
        missing = sorted(set(self.labels) - {s.label for s in self.samples})
        if missing:
            raise TrainError(f"{self.source}: no images for label(s) {missing}")
        if len(self.labels) < 2:
            raise TrainError(f"{self.source}: training needs at least 2 labels, found {list(self.labels)}")

    def counts(self, indices: Sequence[int] | None = None) -> dict[str, int]:
        """Images per label (of ``indices`` when given), in label order."""
        c = Counter(self.samples[i].label for i in (range(len(self.samples)) if indices is None else indices))
        return {lbl: c.get(lbl, 0) for lbl in self.labels}

    def __repr__(self) -> str:
        return f"TrainData({len(self.samples)} images, labels={list(self.labels)}, source={self.source!r})"


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _select(samples: list[Sample], labels: Sequence[str], source: str) -> tuple[tuple[Sample, ...], tuple[str, ...]]:
    found = sorted({s.label for s in samples})
    if not labels:
        return tuple(samples), tuple(found)
    unknown = [lbl for lbl in labels if lbl not in found]
    if unknown:
        raise TrainError(f"{source}: no images for label(s) {unknown}; labels found: {found}")
    return tuple(s for s in samples if s.label in labels), tuple(labels)


def _from_clean(data_dir: Path, labels: Sequence[str]) -> TrainData:
    from ..shards import read_table

    path = data_dir / CLEAN_FILE
    try:
        table = read_table(path)
    except Exception as e:  # pyarrow raises several error types
        raise TrainError(f"cannot read {path}: {e}") from e
    missing = [c for c in CLEAN_REQUIRED if c not in table.column_names]
    if missing:
        raise TrainError(f"{path} lacks column(s) {missing}; re-run exe-stream data clean")
    rows = table.to_pylist()
    kept = [r for r in rows if r["keep"]]
    if not kept:
        raise TrainError(f"{path}: no rows with keep = true ({len(rows)} rows, all dropped)")
    margins = sorted({round(float(r["crop_margin"]), 6) for r in kept if r.get("crop_margin") is not None})
    if len(margins) > 1:
        raise TrainError(f"{path}: crops were cut with different margins {margins}; re-run exe-stream data extract")
    samples = []
    for r in kept:
        p = data_dir / r["path"]
        if not p.is_file():
            raise TrainError(f"{path}: crop {p} does not exist; re-run exe-stream data extract and clean")
        sha = r.get("crop_sha256") or file_sha256(p)
        samples.append(Sample(p.resolve(), str(r["label"]), sha, r.get("image_sha256") or sha))
    chosen, labels = _select(samples, labels, f"{path}")
    return TrainData(chosen, labels, f"{path} ({len(chosen)} kept crops)", margins[0] if margins else None)


def _from_folder(root: Path, labels: Sequence[str]) -> TrainData:
    samples = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(d.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                sha = file_sha256(f)
                samples.append(Sample(f.resolve(), d.name, sha, sha))
    if not samples:
        raise TrainError(
            f"{root} holds neither {CLEAN_FILE} (exe-stream data clean) nor an image folder "
            f"{root}/<label>/*{{{','.join(IMAGE_SUFFIXES)}}}"
        )
    chosen, labels = _select(samples, labels, f"image folder {root}")
    return TrainData(chosen, labels, f"image folder {root} ({len(chosen)} images)")


def load_data(path: str | os.PathLike, labels: Sequence[str] = ()) -> TrainData:
    """Labelled crops from a data directory with ``clean.arrow``, a ``clean.arrow`` file, or an
    image folder ``DIR/<label>/*.png|jpg``. ``labels`` selects and orders the classes (other
    labels' images are left out); empty = every label found, sorted."""
    p = Path(path)
    if p.is_file() and p.name == CLEAN_FILE:
        return _from_clean(p.parent, labels)
    if not p.is_dir():
        raise TrainError(f"training data {p} does not exist (give a data directory or an image folder)")
    if (p / CLEAN_FILE).is_file():
        return _from_clean(p, labels)
    return _from_folder(p, labels)


def _order_key(seed: int, group: str) -> str:
    return hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()


def split_samples(data: TrainData, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, validation indices) into ``data.samples``, each sorted; see the module
    docstring. Every label keeps at least one group on each side when it has two or more."""
    if not 0 < val_fraction < 1:
        raise TrainError(f"val_fraction must be in (0, 1), got {val_fraction}")
    # A group belongs to the label of its first sample (clean drops photos under two labels).
    group_label: dict[str, str] = {}
    for s in data.samples:
        group_label.setdefault(s.group, s.label)
    val_groups: set[str] = set()
    for lbl in data.labels:
        groups = sorted((g for g, l in group_label.items() if l == lbl), key=lambda g: _order_key(seed, g))
        if len(groups) < 2:
            raise TrainError(
                f"label {lbl!r} has {len(groups)} distinct image(s); a train/validation split needs at least 2"
            )
        n_val = min(max(1, round(val_fraction * len(groups))), len(groups) - 1)
        val_groups.update(groups[:n_val])
    train = [i for i, s in enumerate(data.samples) if s.group not in val_groups]
    val = [i for i, s in enumerate(data.samples) if s.group in val_groups]
    return train, val


def fraction_per_class(data: TrainData, indices: Sequence[int], fraction: float, seed: int) -> list[int]:
    """A deterministic, stratified subset of ``indices``: ``ceil(fraction * n)`` samples of each
    label (at least one), chosen by ``sha256(f"{seed}:labelled:{sha256}")``."""
    if fraction >= 1.0:
        return sorted(indices)
    chosen: list[int] = []
    for lbl in data.labels:
        idx = sorted((i for i in indices if data.samples[i].label == lbl),
                     key=lambda i: _order_key(seed, "labelled:" + data.samples[i].sha256))
        chosen += idx[: max(1, int(np.ceil(fraction * len(idx))))]
    return sorted(chosen)


def load_image(path: str | os.PathLike, size: int, colour: str) -> torch.Tensor:
    """An image file as uint8 [C, size, size] (C = 3 for "rgb", 1 for "gray"; CPU): EXIF
    orientation applied, centre square crop when not square, bilinear resize."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im = im.convert("RGB" if colour == "rgb" else "L")
    except (OSError, UnidentifiedImageError) as e:
        raise TrainError(f"cannot read image {path}: {e}") from e
    w, h = im.size
    if w != h:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        im = im.crop((left, top, left + s, top + s))
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    a = np.array(im, dtype=np.uint8)  # a writable copy
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(a))


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [..., C, H, W] -> float32 ``(x / 255 - mean) / std`` per channel."""
    m = torch.tensor(mean, dtype=torch.float32, device=images.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=images.device).view(-1, 1, 1)
    return (images.to(torch.float32) / 255.0 - m) / s


def augmentation(level: str, colour: str = "rgb") -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The augmentation of a level (see the module docstring) for uint8 [C, H, W] tensors;
    None for "none". Random draws use torch's global generator."""
    from torchvision.transforms import v2

    if level == "none":
        return None
    steps: list = [v2.RandomHorizontalFlip()]
    if level == "light":
        return v2.Compose(steps)
    if level == "mid":
        steps += [
            v2.RandomAffine(degrees=10, translate=(0.05, 0.05), scale=(0.95, 1.05)),
            v2.ColorJitter(brightness=0.2, contrast=0.2),
        ]
    elif level == "high":
        steps += [
            v2.RandomAffine(degrees=20, translate=(0.1, 0.1), scale=(0.9, 1.1)),
            v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.3 if colour == "rgb" else 0.0),
        ]
        if colour == "rgb":
            steps.append(v2.RandomGrayscale(p=0.1))
        steps.append(v2.RandomErasing(p=0.25, scale=(0.02, 0.15), value=0))
    else:
        raise TrainError(f"augmentation must be one of none, light, mid, high; got {level!r}")
    return v2.Compose(steps)


class CropDataset(Dataset):
    """Samples as (float32 [C, S, S] normalised image, int64 label index), CPU.

    Decoded and resized images are kept in memory (``cache``) after their first use, so only
    the first epoch reads files; augmentation runs on every access.
    """

    def __init__(
        self, samples: Sequence[Sample], labels: Sequence[str], size: int, colour: str,
        mean: Sequence[float], std: Sequence[float],
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None, cache: bool = True,
    ) -> None:
        self.samples = list(samples)
        self.index = {lbl: i for i, lbl in enumerate(labels)}
        self.size, self.colour, self.mean, self.std = size, colour, tuple(mean), tuple(std)
        self.augment = augment
        self.cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, i: int) -> torch.Tensor:
        """Sample i's image before augmentation: uint8 [C, S, S]."""
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        img = load_image(self.samples[i].path, self.size, self.colour)
        if self.cache is not None:
            self.cache[i] = img
        return img

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.image(i)
        if self.augment is not None:
            img = self.augment(img)
        return normalise(img, self.mean, self.std), self.index[self.samples[i].label]


def class_weights(targets: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency loss weights, float32 [num_classes]: ``N / (num_classes * n_c)``, so a
    balanced set gets all ones. Classes absent from ``targets`` get 0."""
    counts = np.bincount(np.asarray(targets, np.int64), minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, len(targets) / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def balanced_sampler(targets: Sequence[int], generator: torch.Generator) -> WeightedRandomSampler:
    """Draws len(targets) indices with replacement, every class equally likely."""
    t = np.asarray(targets, np.int64)
    counts = np.bincount(t)
    weights = torch.tensor(1.0 / counts[t], dtype=torch.float64)
    return WeightedRandomSampler(weights, num_samples=len(t), replacement=True, generator=generator)
