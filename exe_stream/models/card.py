"""Model cards: a model directory is ``model.json`` + ``weights.safetensors`` (+ ``LICENSE``).

``model.json`` is the card (``ModelCard``): what the network is, what it outputs and how a face
crop is prepared for it. Weights are loaded from safetensors only; pickled checkpoints
(``.pt``, ``.pth``, ``.ckpt``, ``.pkl``, ``.bin``) are refused, since unpickling runs code.

Crop geometry (``crop_margin``): for a detector box of width ``w`` and height ``h`` (displayed
frame pixels), the crop is the square centred on the box with side
``max(w, h) * (1 + 2 * crop_margin)``; margin 0 is the square around the box's longer side.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import torch

from ..atomic import atomic_write, atomic_write_text
from ..errors import ModelError

CARD_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"
LICENSE_FILE = "LICENSE"
# File suffixes of pickled checkpoints, which are never loaded.
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")
COLOURS = ("rgb", "gray")
# The task of an emotion classifier card; other model directories (face detectors) carry
# another task and are not emotion models.
EMOTION_TASK = "emotion"


@dataclass(frozen=True)
class CropSpec:
    """How a face crop is made for a model; models with equal specs share one crop tensor."""

    # Output size (height, width) in pixels.
    out_hw: tuple[int, int]
    # "rgb" (3 channels) or "gray" (1 channel, 0.299 R + 0.587 G + 0.114 B).
    mode: Literal["rgb", "gray"]
    # Per-channel mean and std subtracted/divided after scaling pixels to [0, 1].
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # Fraction of the box's longer side added on each side of the square crop.
    crop_margin: float


@dataclass(frozen=True)
class ModelCard:
    """The contents of ``model.json``.

    Input to the network: float32 [K, C, h, w] NCHW with C = 3 ("rgb") or 1 ("gray"),
    pixels scaled to [0, 1], then ``(x - mean) / std`` per channel.
    """

    # Human-readable model name (the built-in name for bundled models).
    name: str
    # Network family, a key of exe_stream.models.ARCHITECTURES ("mini_xception", "resnet18", ...).
    architecture: str
    # Class names in the order of the network's outputs.
    labels: tuple[str, ...]
    # Network input size (height, width) in pixels.
    input_size: tuple[int, int]
    # Input colour mode: "rgb" or "gray".
    colour: Literal["rgb", "gray"]
    # Per-channel mean and std on [0, 1]-scaled pixels (3 values for rgb, 1 for gray).
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # Square crop around the detector box, side = max(w, h) * (1 + 2 * crop_margin).
    crop_margin: float
    # Where the weights come from (package and file, dataset, training run).
    source: str
    # License of the weights (SPDX identifier or short text); full text in LICENSE if present.
    license: str
    # What the model does; emotion classifiers have "emotion".
    task: str = EMOTION_TASK
    # Free-form extra facts (JSON-serialisable), e.g. the sha256 of an original file.
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Normalise sequences coming from JSON lists to tuples, then validate.
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "crop_margin", float(self.crop_margin))
        object.__setattr__(self, "extra", dict(self.extra))
        where = f"model card {self.name!r}"
        if not self.name or not isinstance(self.name, str):
            raise ModelError(f"model card name must be a non-empty string, got {self.name!r}")
        if not self.labels or not all(isinstance(x, str) and x for x in self.labels):
            raise ModelError(f"{where}: labels must be a non-empty list of names, got {list(self.labels)}")
        if len(set(self.labels)) != len(self.labels):
            raise ModelError(f"{where}: labels must be unique, got {list(self.labels)}")
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise ModelError(f"{where}: input_size must be [height, width] > 0, got {list(self.input_size)}")
        if self.colour not in COLOURS:
            raise ModelError(f"{where}: colour must be one of {list(COLOURS)}, got {self.colour!r}")
        channels = 3 if self.colour == "rgb" else 1
        if len(self.mean) != channels or len(self.std) != channels:
            raise ModelError(
                f"{where}: colour {self.colour!r} needs {channels} mean and std values, "
                f"got mean={list(self.mean)} std={list(self.std)}"
            )
        if min(self.std) <= 0:
            raise ModelError(f"{where}: std must be > 0, got {list(self.std)}")
        if not self.crop_margin >= 0:
            raise ModelError(f"{where}: crop_margin must be >= 0, got {self.crop_margin}")

    @property
    def channels(self) -> int:
        """Input channels: 3 for rgb, 1 for gray."""
        return 3 if self.colour == "rgb" else 1

    @property
    def crop_spec(self) -> CropSpec:
        return CropSpec(self.input_size, self.colour, self.mean, self.std, self.crop_margin)

    def to_json(self) -> dict[str, Any]:
        """The card as a JSON object (lists, not tuples)."""
        d = asdict(self)
        for k in ("labels", "input_size", "mean", "std"):
            d[k] = list(d[k])
        d["extra"] = dict(self.extra)
        return d

    def canonical_json(self) -> bytes:
        """Canonical UTF-8 JSON (sorted keys, no whitespace): what the content hash covers."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @staticmethod
    def from_json(data: Mapping[str, Any], where: str = "model.json") -> "ModelCard":
        """Card from a parsed ``model.json``; unknown top-level keys are refused."""
        if not isinstance(data, Mapping):
            raise ModelError(f"{where}: expected a JSON object, got {type(data).__name__}")
        known = set(ModelCard.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"{where}: unknown keys {unknown}; allowed: {sorted(known)} (put others in 'extra')")
        required = {
            k for k, f in ModelCard.__dataclass_fields__.items() if f.default is MISSING and f.default_factory is MISSING
        }
        missing = sorted(required - set(data))
        if missing:
            raise ModelError(f"{where}: missing keys {missing}")
        try:
            return ModelCard(**data)
        except (TypeError, ValueError) as e:
            raise ModelError(f"{where}: {e}") from e


def is_pickle_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in PICKLE_SUFFIXES


def refuse_pickle(path: str | os.PathLike) -> ModelError:
    """The error for a pickled checkpoint (returned, for the caller to raise)."""
    return ModelError(
        f"{str(path)!r} is a pickled checkpoint; pickled files can run code when loaded and are "
        f"refused. Save the state dict as {WEIGHTS_FILE} (safetensors.torch.save_file) next to a "
        f"{CARD_FILE}"
    )


def _check_dir(directory: str | os.PathLike) -> Path:
    d = Path(directory)
    if is_pickle_path(d) and not d.is_dir():
        raise refuse_pickle(d)
    if not d.is_dir():
        raise ModelError(f"model directory {str(d)!r} does not exist")
    if not (d / CARD_FILE).is_file():
        raise ModelError(f"model directory {str(d)!r} has no {CARD_FILE}")
    return d


def load_card(directory: str | os.PathLike) -> ModelCard:
    """Read and validate ``directory/model.json``."""
    d = _check_dir(directory)
    path = d / CARD_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{str(path)!r} is not valid JSON: {e}") from e
    return ModelCard.from_json(data, where=str(path))


def weights_path(directory: str | os.PathLike) -> Path:
    """``directory/weights.safetensors``; refuses a directory that only holds pickled weights."""
    d = _check_dir(directory)
    w = d / WEIGHTS_FILE
    if not w.is_file():
        pickled = sorted(p.name for p in d.iterdir() if is_pickle_path(p))
        if pickled:
            raise refuse_pickle(d / pickled[0])
        raise ModelError(f"model directory {str(d)!r} has no {WEIGHTS_FILE}")
    return w


def load_weights(directory: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The state dict in ``directory/weights.safetensors`` (never unpickles anything)."""
    from safetensors.torch import load_file

    w = weights_path(directory)
    try:
        return load_file(str(w), device=str(device))
    except Exception as e:  # safetensors raises its own error types
        raise ModelError(f"cannot read {str(w)!r} as safetensors: {e}") from e


def content_hash(directory: str | os.PathLike) -> str:
    """sha256 (hex) over the bytes of ``weights.safetensors`` followed by the card's canonical JSON.

    Whitespace or key order in ``model.json`` does not change it; any weight or card field does.
    """
    card = load_card(directory)
    h = hashlib.sha256()
    with open(weights_path(directory), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    h.update(card.canonical_json())
    return h.hexdigest()


def save_model(
    directory: str | os.PathLike,
    card: ModelCard,
    state_dict: Mapping[str, torch.Tensor],
    license_text: str | None = None,
) -> str:
    """Write a model directory (model.json, weights.safetensors, LICENSE if given).

    state_dict tensors may live on any device; they are stored contiguous on the CPU.
    Files are written under temporary names and renamed. Returns the content hash.
    """
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}

    def write_weights(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.chmod(tmp, 0o644)  # safetensors creates the file owner-only

    atomic_write(d / WEIGHTS_FILE, write_weights)
    atomic_write_text(d / CARD_FILE, json.dumps(card.to_json(), indent=2, ensure_ascii=False) + "\n")
    if license_text is not None:
        (d / LICENSE_FILE).write_text(license_text if license_text.endswith("\n") else license_text + "\n")
    return content_hash(d)
