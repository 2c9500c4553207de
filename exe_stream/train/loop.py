"""``train(config, data, out_dir) -> RunRecord``: one training run, resumable, into a model card.

Output directory ``OUT``::

    OUT/model.json, OUT/weights.safetensors   the model card of the best epoch (``scan --model OUT``)
    OUT/run.json                              the run record (recipe, data, per-epoch metrics, timings)
    OUT/train_hashes.txt                      sha256 of every training-split image, one per line
    OUT/checkpoint/state.json                 progress: epochs done, metrics, best epoch
    OUT/checkpoint/model-NNN.safetensors      weights after epoch NNN (the last and the best kept)
    OUT/checkpoint/optim-NNN.safetensors      optimiser tensors after epoch NNN (the last kept)
    OUT/autoencoder/                          autoencoder pretraining (conv_autoencoder runs only)

Each epoch: train on the training split (shuffled, or class-balanced resampling), evaluate on
the validation split (loss, accuracy, macro-F1, per-class recall), write the epoch's weights
and optimiser state (safetensors) and then ``state.json`` (written last, under a temporary
name and renamed: it is the commit point). An interrupted run started again with the same
configuration and data resumes after the last committed epoch and reaches the same result as
an uninterrupted one: the learning rate is a function of the epoch, and every epoch's
shuffling, augmentation and dropout draw from generators seeded with (seed, epoch). A finished
run is not trained again; a directory holding a run of another configuration or data is
refused. Checkpoints never go through pickle: tensors in safetensors, the rest in JSON.

The best epoch (highest validation ``metric``; ties keep the earlier) becomes the model card,
written with ``exe_stream.models.save_model``; its ``extra`` records the run (best epoch,
metric, image counts) and, with ``extra_dense``, ``head_hidden``.

MLflow: with ``mlflow = "auto"`` and the ``mlflow`` package importable, parameters and
per-epoch metrics are logged to the active tracking URI; failures there only warn.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..metrics import Metrics, compute_metrics
from .. import __version__
from ..models import ModelCard, resolve_device, save_model
from .checkpoint import (
    epoch_seed, load_tensors, optimizer_from_safetensors, optimizer_to_safetensors, save_tensors, write_json,
)
from .config import TrainConfig, TrainError
from .data import (
    CropDataset, TrainData, augmentation, balanced_sampler, class_weights, fraction_per_class, load_data,
    split_samples,
)
from .network import build_classifier, freeze, set_train_mode

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
HASHES_FILE = "train_hashes.txt"
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
# Crop margin of the card when neither the config nor the data give one (extract's default).
DEFAULT_CROP_MARGIN = 0.15


@dataclass
class EpochMetrics:
    """What one epoch did (1-based ``epoch``)."""

    epoch: int
    # Mean training loss and accuracy over the epoch's batches (augmented images).
    train_loss: float
    train_accuracy: float
    # Validation loss (unweighted cross-entropy), accuracy, macro-F1 and per-class recall.
    val_loss: float
    val_accuracy: float
    val_macro_f1: float
    val_recall: dict[str, float]
    # Learning rate of the epoch.
    lr: float
    # Wall seconds of the training and validation passes.
    train_seconds: float
    val_seconds: float

    def value(self, metric: str) -> float:
        return self.val_macro_f1 if metric == "macro_f1" else self.val_accuracy


@dataclass
class RunRecord:
    """A training run (``OUT/run.json``)."""

    out_dir: str
    name: str
    config: dict[str, Any]
    labels: list[str]
    # Source, image counts per split and class, crop margin, starting weights.
    data: dict[str, Any]
    epochs: list[EpochMetrics]
    best_epoch: int
    metric: str
    best_value: float
    # Seconds: data loading, autoencoder pretraining, training, total; per session.
    timings: dict[str, Any]
    # One entry per start of the run (a resumed run has several): time, first epoch, device.
    sessions: list[dict[str, Any]]
    model_hash: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)
    autoencoder: dict[str, Any] | None = None
    environment: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> EpochMetrics:
        return self.epochs[self.best_epoch - 1]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> "RunRecord":
        d = dict(data)
        d["epochs"] = [EpochMetrics(**e) for e in d["epochs"]]
        return RunRecord(**d)

    @staticmethod
    def load(out_dir: str | os.PathLike) -> "RunRecord":
        path = Path(out_dir) / RUN_FILE
        try:
            return RunRecord.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise TrainError(f"cannot read the run record {path}: {e}") from e


# Pieces of an epoch ---------------------------------------------------------------------------


def lr_at(config: TrainConfig, epoch: int) -> float:
    """Learning rate of 0-based ``epoch``: constant, cosine from lr to 0 over the epochs
    (epoch 0 at lr), or multiplied by gamma every step_size epochs."""
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / config.epochs))
    if config.schedule == "step":
        return config.lr * config.gamma ** (epoch // config.step_size)
    return config.lr


def make_optimizer(config: TrainConfig, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               nesterov=config.momentum > 0, weight_decay=config.weight_decay)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


def _evaluate(net: nn.Module, loader: DataLoader, labels: Sequence[str], device: torch.device) -> tuple[float, Metrics]:
    net.eval()
    total, count = 0.0, 0
    targets, preds = [], []
    with torch.no_grad():
        for x, y in loader:
            logits = net(x.to(device, non_blocking=True)).float()
            y = y.to(device)
            total += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            count += int(y.numel())
            targets.append(y.cpu().numpy())
            preds.append(logits.argmax(1).cpu().numpy())
    return total / max(count, 1), compute_metrics(np.concatenate(targets), np.concatenate(preds), labels)


class _Mlflow:
    """MLflow logging when wanted and importable; every failure only warns (never required)."""

    def __init__(self, config: TrainConfig, name: str) -> None:
        self.mlflow = None
        if config.mlflow == "off":
            return
        try:
            import mlflow
        except ImportError:
            return
        try:
            mlflow.start_run(run_name=name)
            mlflow.log_params({k: json.dumps(v) if isinstance(v, (list, dict)) or v is None else v
                               for k, v in config.to_dict().items()})
            self.mlflow = mlflow
        except Exception as e:  # a tracking server that is down must not stop training
            log.warning("MLflow logging disabled: %s", e)

    def epoch(self, m: EpochMetrics) -> None:
        if self.mlflow is None:
            return
        try:
            self.mlflow.log_metrics({k: float(getattr(m, k)) for k in (
                "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_f1", "lr")}, step=m.epoch)
        except Exception as e:
            log.warning("MLflow logging failed: %s", e)

    def end(self, status: str = "FINISHED", record: RunRecord | None = None) -> None:
        if self.mlflow is None:
            return
        try:
            if record is not None:
                self.mlflow.log_metrics({"best_epoch": record.best_epoch, f"best_{record.metric}": record.best_value})
            self.mlflow.end_run(status=status)
        except Exception as e:
            log.warning("MLflow logging failed: %s", e)
        self.mlflow = None


# The run ---------------------------------------------------------------------------------------


def _card(config: TrainConfig, name: str, labels: Sequence[str], margin: float, extra: dict[str, Any],
          source: str) -> ModelCard:
    if config.extra_dense:
        extra = {**extra, "head_hidden": config.extra_dense}
    return ModelCard(
        name=name, architecture=config.architecture, labels=tuple(labels),
        input_size=(config.input_size, config.input_size), colour=config.colour,
        mean=config.mean, std=config.std, crop_margin=margin, source=source, license=config.license,
        extra=extra,
    )


def _data_fingerprint(data: TrainData, train_idx: Sequence[int], val_idx: Sequence[int]) -> str:
    h = hashlib.sha256(json.dumps(list(data.labels)).encode())
    for part in (train_idx, val_idx):
        h.update(b"|" + ",".join(sorted(data.samples[i].sha256 + data.samples[i].label for i in part)).encode())
    return h.hexdigest()


def train(
    config: TrainConfig,
    data: TrainData | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    recipe: str | os.PathLike | None = None,
    on_epoch_end: Callable[[EpochMetrics], None] | None = None,
) -> RunRecord:
    """Train ``config`` on ``data`` (a TrainData, a data directory with clean.arrow, or an
    image folder) into ``out_dir``; resume there when it holds an unfinished run of the same
    configuration and data; return the run record without training when it holds a finished one.

    device: overrides ``config.device`` ("auto", "cpu", "cuda" or a torch.device).
    recipe: the recipe file, stored in run.json. on_epoch_end: called after each epoch's
    checkpoint is written (an exception there stops the run; starting again resumes it).
    Raises TrainError (bad data, weights, or an output directory holding another run).
    """
    t_start = time.perf_counter()
    out = Path(out_dir)
    ckpt = out / CHECKPOINT_DIR
    td = data if isinstance(data, TrainData) else load_data(data, config.labels)
    labels = list(td.labels)
    n = len(labels)
    train_idx, val_idx = split_samples(td, config.val_fraction, config.seed)
    if config.autoencoder is not None:
        all_train = train_idx
        train_idx = fraction_per_class(td, train_idx, config.autoencoder.labelled_fraction, config.seed)
    fingerprint = hashlib.sha256(
        (config.fingerprint() + _data_fingerprint(td, train_idx, val_idx)).encode()).hexdigest()

    state: dict[str, Any] | None = None
    if (ckpt / STATE_FILE).is_file():
        state = json.loads((ckpt / STATE_FILE).read_text())
        if state.get("fingerprint") != fingerprint:
            raise TrainError(
                f"{out} holds a run of another configuration or data (the recipe's [train] table, the "
                f"labels or the images changed); give another --out, or delete {out} to start over"
            )
        if state.get("finished") and (out / RUN_FILE).is_file() and (out / "model.json").is_file():
            return RunRecord.load(out)
    dev = resolve_device(device if device is not None else config.device)
    ckpt.mkdir(parents=True, exist_ok=True)
    margin = config.crop_margin if config.crop_margin is not None else (
        td.crop_margin if td.crop_margin is not None else DEFAULT_CROP_MARGIN)
    name = config.name or out.resolve().name
    card = _card(config, name, labels, margin, {}, "exe-stream train")

    # 1. Data: datasets over the split, every image decoded and resized once, kept in memory.
    t = time.perf_counter()
    aug = augmentation(config.augmentation, config.colour)
    samples = td.samples
    train_ds = CropDataset([samples[i] for i in train_idx], labels, config.input_size, config.colour,
                           config.mean, config.std, aug)
    val_ds = CropDataset([samples[i] for i in val_idx], labels, config.input_size, config.colour,
                         config.mean, config.std, None)
    for ds in (train_ds, val_ds):
        for i in range(len(ds)):
            ds.image(i)
    targets = [train_ds.index[s.label] for s in train_ds.samples]
    if min(np.bincount(targets, minlength=n)) == 0:
        raise TrainError(f"the training split lacks label(s) "
                         f"{[labels[i] for i in range(n) if i not in set(targets)]}; add images")
    data_seconds = time.perf_counter() - t

    # 2. Autoencoder pretraining (conv_autoencoder with [train.autoencoder]): its encoder is
    #    the classifier's starting point.
    ae_record: dict[str, Any] | None = None
    start_state = None
    if config.autoencoder is not None:
        from .autoencoder import pretrain

        unlabelled = [samples[i] for i in all_train]
        start_state, ae_record = pretrain(config, unlabelled, out / "autoencoder", dev,
                                          exclude={samples[i].sha256 for i in val_idx})

    # 3. Network, optimiser, loss; the last committed epoch's state when resuming.
    net, weights_report = build_classifier(card, config, start_state)
    frozen = freeze(net, config.architecture, config.trainable_blocks)
    net.to(dev)
    optimizer = make_optimizer(config, [p for p in net.parameters() if p.requires_grad])
    done = 0
    history: list[EpochMetrics] = []
    best_epoch, best_value = 0, -math.inf
    sessions: list[dict[str, Any]] = []
    timings: dict[str, Any] = {"data_s": 0.0, "autoencoder_s": 0.0, "train_s": 0.0, "val_s": 0.0, "total_s": 0.0}
    if state is not None and state.get("epochs_done", 0) > 0:
        done = int(state["epochs_done"])
        history = [EpochMetrics(**e) for e in state["history"]]
        best_epoch, best_value = int(state["best_epoch"]), float(state["best_value"])
        sessions, timings = state["sessions"], state["timings"]
        weights_report = state["weights"]
        net.load_state_dict(load_tensors(ckpt / f"model-{done:03d}.safetensors"))
        optimizer.load_state_dict(optimizer_from_safetensors(
            {k: v.to(dev) for k, v in load_tensors(ckpt / f"optim-{done:03d}.safetensors").items()},
            state["optimizer"]))
    sessions.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "first_epoch": done + 1, "device": str(dev)})
    earlier_s = timings["total_s"]  # wall time of the earlier sessions
    timings["data_s"] += data_seconds
    if ae_record is not None:
        timings["autoencoder_s"] = ae_record.get("seconds", 0.0)
    weights = class_weights(targets, n).to(dev) if config.imbalance == "class_weights" else None
    criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=config.label_smoothing)
    val_loader = DataLoader(val_ds, batch_size=max(config.batch_size, 64), shuffle=False,
                            num_workers=config.num_workers, pin_memory=dev.type == "cuda")
    tracker = _Mlflow(config, name)
    status = "FAILED"
    try:
        for epoch in range(done + 1, config.epochs + 1):
            # 4. One epoch: seeded shuffling/augmentation, the epoch's learning rate.
            lr = lr_at(config, epoch - 1)
            for g in optimizer.param_groups:
                g["lr"] = lr
            torch.manual_seed(epoch_seed(config.seed, epoch))
            gen = torch.Generator().manual_seed(epoch_seed(config.seed, epoch, 1))
            sampler = balanced_sampler(targets, gen) if config.imbalance == "resample" else None
            loader = DataLoader(
                train_ds, batch_size=config.batch_size, shuffle=sampler is None, sampler=sampler,
                generator=gen if sampler is None else None, num_workers=config.num_workers,
                drop_last=len(train_ds) % config.batch_size == 1,  # BatchNorm cannot train on 1 image
                pin_memory=dev.type == "cuda",
            )
            t = time.perf_counter()
            set_train_mode(net, frozen)
            loss_sum, correct, seen = 0.0, 0, 0
            for x, y in loader:
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                logits = net(x)
                loss = criterion(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += float(loss.detach()) * len(y)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
            train_s = time.perf_counter() - t
            # 5. Validation.
            t = time.perf_counter()
            val_loss, vm = _evaluate(net, val_loader, labels, dev)
            val_s = time.perf_counter() - t
            m = EpochMetrics(
                epoch=epoch, train_loss=loss_sum / max(seen, 1), train_accuracy=correct / max(seen, 1),
                val_loss=val_loss, val_accuracy=vm.accuracy if vm.n else 0.0,
                val_macro_f1=vm.macro_f1 if vm.support.any() else 0.0,
                val_recall={labels[i]: float(vm.recall[i]) for i in range(len(labels)) if vm.support[i]},
                lr=lr, train_seconds=train_s, val_seconds=val_s,
            )
            history.append(m)
            timings["train_s"] += train_s
            timings["val_s"] += val_s
            timings["total_s"] = earlier_s + time.perf_counter() - t_start
            # 6. Checkpoint: weights and optimiser state, then state.json (the commit point).
            save_tensors(ckpt / f"model-{epoch:03d}.safetensors", net.state_dict())
            opt_tensors, opt_meta = optimizer_to_safetensors(optimizer.state_dict())
            save_tensors(ckpt / f"optim-{epoch:03d}.safetensors", opt_tensors)
            if m.value(config.metric) > best_value:
                best_epoch, best_value = epoch, m.value(config.metric)
            write_json(ckpt / STATE_FILE, {
                "fingerprint": fingerprint, "epochs_done": epoch, "history": [asdict(h) for h in history],
                "best_epoch": best_epoch, "best_value": best_value, "optimizer": opt_meta,
                "sessions": sessions, "timings": timings, "weights": weights_report, "finished": False,
            })
            keep = {f"model-{epoch:03d}.safetensors", f"model-{best_epoch:03d}.safetensors",
                    f"optim-{epoch:03d}.safetensors"}
            for f in ckpt.glob("*-[0-9][0-9][0-9].safetensors"):
                if f.name not in keep:
                    f.unlink()
            tracker.epoch(m)
            if on_epoch_end is not None:
                on_epoch_end(m)
        status = "FINISHED"
    finally:
        if status != "FINISHED":
            tracker.end("KILLED")

    # 7. The best epoch becomes the model card; the run record and training hashes beside it.
    best_state = load_tensors(ckpt / f"model-{best_epoch:03d}.safetensors")
    timings["total_s"] = earlier_s + time.perf_counter() - t_start
    best = history[best_epoch - 1]
    extra = {"training": {
        "run": RUN_FILE, "best_epoch": best_epoch, "epochs": config.epochs, "metric": config.metric,
        "val_accuracy": round(best.val_accuracy, 6), "val_macro_f1": round(best.val_macro_f1, 6),
        "train_images": len(train_idx), "val_images": len(val_idx), "data": td.source,
    }}
    source = (f"exe-stream {__version__} train ({config.architecture}, weights {weights_report['source']}) on "
              f"{td.source}; best epoch {best_epoch} of {config.epochs}, val {config.metric} {best_value:.3f}")
    card = _card(config, name, labels, margin, extra, source)
    model_hash = save_model(out, card, best_state)
    hashes = sorted({samples[i].sha256 for i in train_idx} | {samples[i].group for i in train_idx})
    (out / HASHES_FILE).write_text(
        "# sha256 of the training split's image files and of the photos they were cut from "
        "(exe-stream evaluate's leakage check)\n" + "".join(h + "\n" for h in hashes))
    recipe_info: dict[str, Any] = {}
    if recipe is not None:
        rp = Path(recipe)
        recipe_info = {"path": str(rp), "text": rp.read_text(encoding="utf-8") if rp.is_file() else ""}
    record = RunRecord(
        out_dir=str(out), name=name, config=config.to_dict(), labels=labels,
        data={
            "source": td.source, "crop_margin": margin, "weights": weights_report,
            "train": td.counts(train_idx), "val": td.counts(val_idx),
            **({"unlabelled_train": len(all_train)} if config.autoencoder is not None else {}),
        },
        epochs=history, best_epoch=best_epoch, metric=config.metric, best_value=best_value, timings=timings,
        sessions=sessions, model_hash=model_hash, recipe=recipe_info, autoencoder=ae_record,
        environment={"exe_stream": __version__, "torch": torch.__version__, "python": platform.python_version(),
                     "device": str(dev), "threads": torch.get_num_threads()},
    )
    write_json(out / RUN_FILE, record.to_json())
    state = json.loads((ckpt / STATE_FILE).read_text())
    state.update(finished=True, timings=timings)
    write_json(ckpt / STATE_FILE, state)
    for f in ckpt.glob("*.safetensors"):  # the card holds the weights now
        f.unlink()
    tracker.end("FINISHED", record)
    return record
