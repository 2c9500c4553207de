"""Emotion models: built-in registry, loading by name/directory/ensemble, and prediction.

A model spec (``--model``) is one of

- a built-in name: a directory under ``exe_stream/assets/models/`` whose ``model.json`` has
  ``"task": "emotion"`` (``list_models()``); other directories there (face detectors) are
  skipped;
- a model directory path (``model.json`` + ``weights.safetensors``); its model id is the
  directory's name;
- ``ens:a+b[+c...]``: an ensemble averaging the members' probabilities. Members are built-in
  names or directories (not ensembles) and must have the same labels in the same order; their
  input handling (size, colour, normalisation, crop margin) may differ.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import ModelError
from .card import (
    CARD_FILE,
    EMOTION_TASK,
    CropSpec,
    ModelCard,
    content_hash,
    is_pickle_path,
    load_card,
    load_weights,
    refuse_pickle,
    save_model,
)
from .conv_autoencoder import ConvAEClassifier
from .facex_mobilenet import FacexMobileNetV2
from .mini_xception import MiniXception
from .resnet import TORCHVISION_ARCHITECTURES, build_torchvision, set_head

__all__ = [
    "ARCHITECTURES",
    "CropSpec",
    "EmotionModel",
    "ModelCard",
    "build_network",
    "builtin_models_dir",
    "builtin_names",
    "content_hash",
    "list_models",
    "load_card",
    "load_model",
    "save_model",
]

ENSEMBLE_PREFIX = "ens:"

# Architecture name -> builder(num_classes, in_channels) returning an nn.Module that maps
# float32 [K, in_channels, H, W] to logits [K, num_classes].
ARCHITECTURES: dict[str, Callable[[int, int], nn.Module]] = {
    "mini_xception": lambda n, c: MiniXception(num_classes=n, in_channels=c),
    "facex_mobilenet_v2": lambda n, c: FacexMobileNetV2(num_classes=n, in_channels=c),
    # The encoder of exe-stream train's convolutional autoencoder with a Linear head.
    "conv_autoencoder": lambda n, c: ConvAEClassifier(num_classes=n, in_channels=c),
    **{
        name: (lambda n, c, _name=name: build_torchvision(_name, n, c))
        for name in TORCHVISION_ARCHITECTURES
    },
}


def builtin_models_dir() -> Path:
    """``exe_stream/assets/models/``: one directory per bundled model (emotion or detector)."""
    return Path(__file__).resolve().parent.parent / "assets" / "models"


def builtin_names() -> list[str]:
    """Names of the built-in emotion models: directories under ``builtin_models_dir()`` whose
    model.json has task "emotion" (detector directories and unreadable ones are skipped)."""
    root = builtin_models_dir()
    if not root.is_dir():
        return []
    names = []
    for d in sorted(root.iterdir()):
        try:
            data = json.loads((d / CARD_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("task") == EMOTION_TASK:
            names.append(d.name)
    return names


def list_models() -> list[ModelCard]:
    """Cards of the built-in emotion models, sorted by name (a card's name is its directory's)."""
    return [load_card(builtin_models_dir() / n) for n in builtin_names()]


def build_network(card: ModelCard) -> nn.Module:
    """An untrained network for ``card`` (its architecture, label count and input channels)."""
    if card.architecture not in ARCHITECTURES:
        raise ModelError(
            f"model {card.name!r}: unknown architecture {card.architecture!r}; "
            f"expected one of {sorted(ARCHITECTURES)}"
        )
    net = ARCHITECTURES[card.architecture](len(card.labels), card.channels)
    # An extra dense layer before the output (exe-stream train's extra_dense), torchvision only.
    hidden = card.extra.get("head_hidden", 0)
    if hidden:
        if card.architecture not in TORCHVISION_ARCHITECTURES or not isinstance(hidden, int) or hidden < 1:
            raise ModelError(
                f"model {card.name!r}: extra.head_hidden={hidden!r} needs a positive integer and one of "
                f"{sorted(TORCHVISION_ARCHITECTURES)}, got architecture {card.architecture!r}"
            )
        set_head(net, card.architecture, len(card.labels), hidden)
    return net


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> cuda when available else cpu; "cpu"; "cuda" (must be available); or a torch.device."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ModelError("device 'cuda' was requested but CUDA is not available; use 'cpu' or 'auto'")
        return torch.device("cuda")
    raise ModelError(f"unknown device {device!r}; expected one of ['auto', 'cpu', 'cuda']")


@dataclass
class EmotionModel:
    """A loaded emotion classifier (or an ensemble of several), ready to predict.

    model_id: the name written to shards (built-in name, directory name, or the ``ens:`` spec).
    cards / networks: one per member (one for a single model); networks are in eval mode on
    ``device``. content_hash: ``content_hash(model_dir)`` (sha256 over weights and canonical
    card); for an ensemble, sha256 over "ens:" and the members' hashes joined by "+".
    labels: the output classes, in order.
    """

    model_id: str
    cards: tuple[ModelCard, ...]
    networks: tuple[nn.Module, ...]
    content_hash: str
    labels: tuple[str, ...]
    device: torch.device
    # Most crops per forward pass; larger inputs are split into chunks.
    max_batch: int = 256
    # Inference engines (exe_stream.engines.attach_engine), one per member, each running its
    # member's network; empty: the networks run as plain torch modules.
    engines: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        assert len(self.cards) == len(self.networks) >= 1
        assert len(self.engines) in (0, len(self.networks))
        assert all(c.labels == self.labels for c in self.cards)

    @property
    def card(self) -> ModelCard:
        """The card of a single (non-ensemble) model."""
        if len(self.cards) != 1:
            raise ModelError(f"{self.model_id!r} is an ensemble of {len(self.cards)} models; use .cards")
        return self.cards[0]

    @property
    def engine(self) -> str:
        """Name of the engine the members run in ("torch" when none is attached)."""
        return self.engines[0].name if self.engines else "torch"

    @property
    def crop_specs(self) -> tuple[CropSpec, ...]:
        """The crop each member needs, in member order."""
        return tuple(c.crop_spec for c in self.cards)

    def predict(self, crops: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Class probabilities for K face crops.

        crops: float32 [K, C, h, w] NCHW (normalised as the card says; any device), used by
        every member, or a sequence with one such tensor per member (``crop_specs`` order).
        Returns float32 [K, len(labels)] on ``self.device``, rows summing to 1 (the members'
        softmax outputs, averaged for an ensemble).
        """
        if isinstance(crops, torch.Tensor):
            crops = [crops] * len(self.cards)
        if len(crops) != len(self.cards):
            raise ModelError(f"{self.model_id!r} has {len(self.cards)} members but got {len(crops)} crop tensors")
        k = int(crops[0].shape[0]) if crops[0].ndim else 0
        total = torch.zeros((k, len(self.labels)), dtype=torch.float32, device=self.device)
        for i, (card, net, x) in enumerate(zip(self.cards, self.networks, crops)):
            forward = self.engines[i].run if self.engines else net
            want = (card.channels, *card.input_size)
            if x.ndim != 4 or tuple(x.shape[1:]) != want or x.shape[0] != k:
                raise ModelError(
                    f"model {card.name!r} expects crops [K, {', '.join(map(str, want))}] "
                    f"(K = {k}), got {tuple(x.shape)}"
                )
            with torch.inference_mode():
                for s in range(0, k, self.max_batch):
                    xb = x[s : s + self.max_batch].to(device=self.device, dtype=torch.float32)
                    total[s : s + self.max_batch] += torch.softmax(forward(xb).float(), dim=1)
        return total / len(self.cards) if len(self.cards) > 1 else total

    def __repr__(self) -> str:
        return (f"EmotionModel({self.model_id!r}, {len(self.cards)} member(s), labels={list(self.labels)}, "
                f"{self.device}, engine={self.engine!r})")


def _resolve_dir(spec: str) -> tuple[str, Path]:
    """(model_id, directory) of a built-in name or a model directory path."""
    builtins = builtin_names()
    if spec in builtins:
        return spec, builtin_models_dir() / spec
    if is_pickle_path(spec) and not Path(spec).is_dir():
        raise refuse_pickle(spec)
    p = Path(spec)
    if p.is_dir():
        return p.resolve().name, p
    raise ModelError(
        f"unknown model {spec!r}: not a built-in model and not a directory; "
        f"built-in models: {builtins}; or give a directory with {CARD_FILE} and weights.safetensors, "
        f"or 'ens:a+b' for an ensemble"
    )


def _load_single(spec: str, device: torch.device) -> EmotionModel:
    model_id, d = _resolve_dir(spec)
    card = load_card(d)
    if card.task != EMOTION_TASK:
        raise ModelError(f"model {spec!r} has task {card.task!r}, not an emotion classifier ({EMOTION_TASK!r})")
    net = build_network(card)
    state = load_weights(d)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"weights in {str(d)!r} do not fit architecture {card.architecture!r}: {e}") from e
    net.eval().to(device)
    return EmotionModel(model_id, (card,), (net,), content_hash(d), card.labels, device)


def load_model(spec: str, device: str | torch.device = "cpu") -> EmotionModel:
    """Load a built-in name, a model directory, or an ``ens:a+b[+c]`` ensemble onto ``device``.

    device: "auto", "cpu", "cuda" or a torch.device. Raises ModelError for unknown names,
    invalid cards, pickled checkpoints, or ensemble members whose labels differ.
    """
    dev = resolve_device(device)
    spec = str(spec).strip()
    if not spec.startswith(ENSEMBLE_PREFIX):
        return _load_single(spec, dev)
    names = spec[len(ENSEMBLE_PREFIX) :].split("+")
    if len(names) < 2 or any(not n.strip() for n in names):
        raise ModelError(f"ensemble spec {spec!r} must name two or more models: 'ens:a+b[+c...]'")
    if any(n.strip().startswith(ENSEMBLE_PREFIX) for n in names):
        raise ModelError(f"ensemble spec {spec!r}: members cannot be ensembles themselves")
    members = [_load_single(n.strip(), dev) for n in names]
    if any(m.labels != members[0].labels for m in members):
        detail = "; ".join(f"{m.model_id}: {list(m.labels)}" for m in members)
        raise ModelError(f"ensemble {spec!r}: members must have the same labels in the same order, got {detail}")
    digest = hashlib.sha256((ENSEMBLE_PREFIX + "+".join(m.content_hash for m in members)).encode()).hexdigest()
    return EmotionModel(
        model_id=spec,
        cards=tuple(m.cards[0] for m in members),
        networks=tuple(m.networks[0] for m in members),
        content_hash=digest,
        labels=members[0].labels,
        device=dev,
    )

