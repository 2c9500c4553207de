"""``TrainConfig``: the ``[train]`` table of a recipe (and its ``[train.autoencoder]`` table).

Every key is optional; the defaults train a ResNet-18 from ImageNet weights on 224 x 224 RGB
crops. Example::

    [train]
    architecture = "resnet18"     # resnet18 | resnet50 | efficientnet_b0 | mobilenet_v2 | vgg16 | conv_autoencoder
    weights = "imagenet"          # imagenet | none | path to a .safetensors state dict or a model directory
    trainable_blocks = 2          # the last 2 blocks and the head learn; -1 = all, 0 = head only
    augmentation = "mid"          # none | light | mid | high
    imbalance = "class_weights"   # none | class_weights | resample
    optimizer = "adam"            # adam | adamw | sgd
    lr = 1e-4
    schedule = "cosine"           # none | cosine | step
    epochs = 15
    batch_size = 32
    extra_dense = 256             # a dense layer of 256 units before the output (0 = none)
    metric = "macro_f1"           # the validation metric that picks the best epoch: macro_f1 | accuracy

Unknown keys and bad values are refused with an error naming the recipe file, the key and
what is allowed (``exe_stream.data.recipe.RecipeError``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, Mapping

from ..data.recipe import RecipeError, check_keys, get_value
from ..errors import ExeStreamError

ARCHITECTURES = ("resnet18", "resnet50", "efficientnet_b0", "mobilenet_v2", "vgg16", "conv_autoencoder")
AUGMENTATIONS = ("none", "light", "mid", "high")
IMBALANCE = ("none", "class_weights", "resample")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "cosine", "step")
METRICS = ("macro_f1", "accuracy")
DEVICES = ("auto", "cpu", "cuda")
COLOURS = ("rgb", "gray")
MLFLOW = ("auto", "off")
# Starting weights that are not a file.
NAMED_WEIGHTS = ("imagenet", "none")
# Normalisation of ImageNet-pretrained torchvision networks (torchvision's ImageClassification
# preset); grey inputs use the mean of the three channels.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_MEAN = (0.449,)
GRAY_STD = (0.226,)
# Keys that change how a run goes but not what it computes (left out of the resume check).
RUNTIME_KEYS = ("device", "num_workers", "mlflow")


class TrainError(ExeStreamError, ValueError):
    """Training cannot start or go on: bad configuration, unusable data or starting weights,
    an output directory holding a different run."""


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise TrainError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


@dataclass(frozen=True)
class AutoencoderConfig:
    """``[train.autoencoder]``: pretrain a convolutional autoencoder on unlabelled face crops,
    then fine-tune a classifier head (architecture ``conv_autoencoder``) on a labelled fraction."""

    # Unlabelled crops: a directory searched recursively for .png/.jpg/.jpeg files, or "" for
    # the images of the training split (their labels unused).
    unlabelled: str = ""
    # Passes over the unlabelled crops.
    epochs: int = 10
    # Adam learning rate of the pretraining.
    lr: float = 1e-3
    # Crops per pretraining step.
    batch_size: int = 64
    # Fraction of each class of the training split whose labels the classifier sees (0, 1].
    labelled_fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise TrainError(f"autoencoder.epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise TrainError(f"autoencoder.lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise TrainError(f"autoencoder.batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 < self.labelled_fraction <= 1.0:
            raise TrainError(f"autoencoder.labelled_fraction must be in (0, 1], got {self.labelled_fraction}")


@dataclass(frozen=True)
class TrainConfig:
    """How ``exe-stream train`` trains one model (a recipe's ``[train]`` table)."""

    # Model name written in the card; "" = the output directory's name.
    name: str = ""
    # Network: a torchvision backbone, or "conv_autoencoder" (exe_stream.models.conv_autoencoder).
    architecture: str = "resnet18"
    # Starting weights: "imagenet" (torchvision's, downloaded to the torch hub cache), "none"
    # (random), or a path to a .safetensors state dict or a model directory.
    weights: str = "imagenet"
    # Blocks that learn, counted from the output end (the head always learns); -1 = all, 0 = head only.
    trainable_blocks: int = -1
    # Square network input size in pixels (crops are resized to it).
    input_size: int = 224
    # Input colour mode: "rgb" or "gray".
    colour: Literal["rgb", "gray"] = "rgb"
    # Crop margin written to the card; None = the data's (faces.arrow's crop_margin), else 0.15.
    crop_margin: float | None = None
    # Class names in output order; () = the sorted labels found in the data.
    labels: tuple[str, ...] = ()
    # Augmentation level: none, light (flips), mid (+ small affine, colour jitter), high (+ erasing, more).
    augmentation: Literal["none", "light", "mid", "high"] = "light"
    # Class imbalance: none, class_weights (inverse-frequency loss weights) or resample (balanced sampling).
    imbalance: Literal["none", "class_weights", "resample"] = "class_weights"
    # Optimiser: adam, adamw or sgd (with momentum, Nesterov).
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    # Initial learning rate.
    lr: float = 1e-3
    # L2 weight decay (decoupled for adamw).
    weight_decay: float = 0.0
    # SGD momentum.
    momentum: float = 0.9
    # Learning-rate schedule over epochs: none, cosine (to 0 at the last epoch), step.
    schedule: Literal["none", "cosine", "step"] = "cosine"
    # step schedule: multiply the rate by gamma every step_size epochs.
    step_size: int = 5
    gamma: float = 0.1
    # Passes over the training split.
    epochs: int = 10
    # Crops per optimisation step.
    batch_size: int = 32
    # Width of an extra dense layer before the output (0 = none).
    extra_dense: int = 0
    # Dropout before the output layer of the extra dense head.
    dropout: float = 0.0
    # Label smoothing of the cross-entropy loss.
    label_smoothing: float = 0.0
    # Fraction of each class held out for validation (deterministic, by content hash and seed).
    val_fraction: float = 0.2
    # Seed of the split, the initialisation, the shuffling and the augmentation.
    seed: int = 0
    # Validation metric that picks the best epoch: macro_f1 or accuracy.
    metric: Literal["macro_f1", "accuracy"] = "macro_f1"
    # Where training runs: auto (CUDA when available), cpu, cuda.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # DataLoader worker processes (0 = load in the training process).
    num_workers: int = 0
    # MLflow logging: "auto" logs when mlflow is importable, "off" never.
    mlflow: Literal["auto", "off"] = "auto"
    # License written to the model card (SPDX id or short text).
    license: str = "NOASSERTION"
    # Autoencoder pretraining (architecture conv_autoencoder only); None = none.
    autoencoder: AutoencoderConfig | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        _one_of("architecture", self.architecture, ARCHITECTURES)
        _one_of("colour", self.colour, COLOURS)
        _one_of("augmentation", self.augmentation, AUGMENTATIONS)
        _one_of("imbalance", self.imbalance, IMBALANCE)
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
        _one_of("schedule", self.schedule, SCHEDULES)
        _one_of("metric", self.metric, METRICS)
        _one_of("device", self.device, DEVICES)
        _one_of("mlflow", self.mlflow, MLFLOW)
        if not self.weights:
            raise TrainError("weights must be 'imagenet', 'none' or a path to a .safetensors file or model directory")
        if self.architecture == "conv_autoencoder" and self.weights == "imagenet":
            raise TrainError("architecture 'conv_autoencoder' has no imagenet weights; use weights = 'none' or a file")
        if self.autoencoder is not None and self.architecture != "conv_autoencoder":
            raise TrainError(
                f"[train.autoencoder] pretrains architecture 'conv_autoencoder', but architecture is {self.architecture!r}"
            )
        if self.trainable_blocks < -1:
            raise TrainError(f"trainable_blocks must be -1 (all) or >= 0, got {self.trainable_blocks}")
        if not 16 <= self.input_size <= 1024:
            raise TrainError(f"input_size must be in [16, 1024], got {self.input_size}")
        if self.crop_margin is not None and not 0.0 <= self.crop_margin <= 2.0:
            raise TrainError(f"crop_margin must be in [0, 2], got {self.crop_margin}")
        if len(set(self.labels)) != len(self.labels):
            raise TrainError(f"labels must be unique, got {list(self.labels)}")
        for name in ("lr", "gamma"):
            if not getattr(self, name) > 0:
                raise TrainError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise TrainError(f"weight_decay must be >= 0 and momentum in [0, 1), got {self.weight_decay}, {self.momentum}")
        for name in ("epochs", "batch_size", "step_size"):
            if getattr(self, name) < 1:
                raise TrainError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.extra_dense < 0 or self.num_workers < 0:
            raise TrainError(f"extra_dense and num_workers must be >= 0, got {self.extra_dense}, {self.num_workers}")
        if self.extra_dense and self.architecture == "conv_autoencoder":
            raise TrainError("extra_dense is for the torchvision backbones, not 'conv_autoencoder'")
        if not 0 <= self.dropout < 1 or not 0 <= self.label_smoothing < 1:
            raise TrainError(f"dropout and label_smoothing must be in [0, 1), got {self.dropout}, {self.label_smoothing}")
        if not 0 < self.val_fraction < 1:
            raise TrainError(f"val_fraction must be in (0, 1), got {self.val_fraction}")

    @property
    def mean(self) -> tuple[float, ...]:
        return IMAGENET_MEAN if self.colour == "rgb" else GRAY_MEAN

    @property
    def std(self) -> tuple[float, ...]:
        return IMAGENET_STD if self.colour == "rgb" else GRAY_STD

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-ready values."""
        d = asdict(self)
        d["labels"] = list(self.labels)
        return d

    def fingerprint(self) -> str:
        """sha256 over everything that decides the result (``RUNTIME_KEYS`` left out): a run
        directory is resumed only by a configuration with the same fingerprint."""
        d = {k: v for k, v in self.to_dict().items() if k not in RUNTIME_KEYS}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    def with_overrides(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields replaced (values checked as in the constructor)."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise TrainError(f"unknown train keys {unknown}; allowed: {', '.join(f.name for f in fields(self))}")
        return replace(self, **changes)


# Recipe parsing ---------------------------------------------------------------------------

_KIND: dict[str, type] = {
    "name": str, "architecture": str, "weights": str, "trainable_blocks": int, "input_size": int,
    "colour": str, "crop_margin": float, "labels": list, "augmentation": str, "imbalance": str,
    "optimizer": str, "lr": float, "weight_decay": float, "momentum": float, "schedule": str,
    "step_size": int, "gamma": float, "epochs": int, "batch_size": int, "extra_dense": int,
    "dropout": float, "label_smoothing": float, "val_fraction": float, "seed": int, "metric": str,
    "device": str, "num_workers": int, "mlflow": str, "license": str, "autoencoder": dict,
}
_AE_KIND: dict[str, type] = {
    "unlabelled": str, "epochs": int, "lr": float, "batch_size": int, "labelled_fraction": float,
}
assert set(_KIND) == {f.name for f in fields(TrainConfig)}
assert set(_AE_KIND) == {f.name for f in fields(AutoencoderConfig)}


def _values(table: Mapping[str, Any], kinds: Mapping[str, type], where: str) -> dict[str, Any]:
    check_keys(table, kinds, where)
    return {k: get_value(table, k, kinds[k], where) for k in table}


def config_from_table(table: Mapping[str, Any], where: str = "recipe [train]") -> TrainConfig:
    """TrainConfig from a recipe's ``[train]`` table (``where``: the error prefix naming the
    file and table). Unknown keys, wrong TOML types and bad values raise ``RecipeError``."""
    values = _values(table, _KIND, where)
    if "labels" in values:
        labels = values["labels"]
        if not all(isinstance(v, str) and v for v in labels):
            raise RecipeError(f"{where}: labels must be an array of non-empty strings, got {labels!r}")
        values["labels"] = tuple(labels)
    try:
        if "autoencoder" in values:
            # "recipe P [train]" -> "recipe P [train.autoencoder]"
            ae_where = f"{where[:-1]}.autoencoder]" if where.endswith("]") else f"{where} [autoencoder]"
            values["autoencoder"] = AutoencoderConfig(**_values(values["autoencoder"], _AE_KIND, ae_where))
        return TrainConfig(**values)
    except TrainError as e:
        raise RecipeError(f"{where}: {e}") from e


def load_train_config(path: str, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """The ``[train]`` table of the recipe at ``path`` (missing table: all defaults), with
    ``overrides`` (e.g. from command-line options) applied."""
    from ..data.recipe import load_recipe

    recipe = load_recipe(path)
    config = config_from_table(recipe.section("train"), recipe.where("train"))
    if overrides:
        try:
            config = config.with_overrides(**overrides)
        except TrainError as e:
            raise RecipeError(f"{recipe.where('train')}: {e}") from e
    return config


__all__ = [
    "ARCHITECTURES", "AUGMENTATIONS", "IMBALANCE", "METRICS", "OPTIMIZERS", "SCHEDULES",
    "AutoencoderConfig", "TrainConfig", "TrainError", "config_from_table", "load_train_config",
]
