"""Autoencoder pretraining for the semi-supervised study (``[train.autoencoder]``).

``pretrain`` trains ``exe_stream.models.conv_autoencoder.ConvAutoencoder`` to reconstruct
unlabelled face crops (mean squared error on the normalised crops, Adam, horizontal flips),
then hands its encoder to ``train``, which fine-tunes the ``conv_autoencoder`` classifier
(encoder + Linear head; ``trainable_blocks = 0`` trains the head only) on the labelled
fraction of the training split (``labelled_fraction``). The result is an ordinary model card.

Unlabelled crops: a directory searched recursively for .png/.jpg/.jpeg (for instance
``DATA/faces`` from ``exe-stream data extract``, whose weak labels are then ignored), or the
whole training split. Validation images are never used for pretraining: files of the
directory with the same content as a validation image are left out.

Files under ``OUT/autoencoder/``: ``state.json`` (fingerprint, per-epoch loss, timings) and
per-epoch ``ae-NNN.safetensors`` / ``ae-optim-NNN.safetensors`` while it runs (an interrupted
pretraining resumes after its last finished epoch), then ``encoder.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..models.conv_autoencoder import ConvAutoencoder
from .checkpoint import epoch_seed, optimizer_from_safetensors, optimizer_to_safetensors, save_tensors, write_json
from .config import TrainConfig, TrainError
from .data import IMAGE_SUFFIXES, Sample, augmentation, file_sha256, load_image, normalise

ENCODER_FILE = "encoder.safetensors"
STATE_FILE = "state.json"


class _Images(Dataset):
    """Images as normalised float32 [C, S, S] (CPU), cached after the first read."""

    def __init__(self, paths: Sequence[Path], size: int, colour: str, mean, std, augment) -> None:
        self.paths, self.size, self.colour, self.mean, self.std = list(paths), size, colour, mean, std
        self.augment = augment
        self.cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        if i not in self.cache:
            self.cache[i] = load_image(self.paths[i], self.size, self.colour)
        img = self.cache[i]
        return normalise(self.augment(img) if self.augment is not None else img, self.mean, self.std)


def unlabelled_images(directory: str | Path) -> list[Path]:
    """Every .png/.jpg/.jpeg under ``directory`` (recursively), sorted."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise TrainError(f"autoencoder.unlabelled: {root} is not a directory of face crops")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise TrainError(f"autoencoder.unlabelled: no {', '.join(IMAGE_SUFFIXES)} images under {root}")
    return paths


def pretrain(
    config: TrainConfig, train_samples: Sequence[Sample], out_dir: str | Path, device: torch.device,
    exclude: frozenset[str] | set[str] = frozenset(),
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Pretrain the autoencoder of ``config.autoencoder`` into ``out_dir`` (resuming or reusing
    what is there). ``exclude``: sha256 of images never to use (the validation split).
    Returns (the encoder's state dict, keys ``encoder.*`` as in ``ConvAEClassifier``; a record:
    images, images left out, per-epoch loss, seconds)."""
    from safetensors.torch import load_file, save_file

    ae_cfg = config.autoencoder
    assert ae_cfg is not None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    left_out = 0
    if ae_cfg.unlabelled:
        found = [(p, file_sha256(p)) for p in unlabelled_images(ae_cfg.unlabelled)]
        kept = [(p, h) for p, h in found if h not in exclude]
        left_out = len(found) - len(kept)
        if not kept:
            raise TrainError(f"autoencoder.unlabelled: every image under {ae_cfg.unlabelled} is a validation image")
        paths, hashes = [p for p, _ in kept], [h for _, h in kept]
        source = str(ae_cfg.unlabelled)
    else:
        paths = [s.path for s in train_samples]
        hashes = [s.sha256 for s in train_samples]
        source = "the training split (labels unused)"
    fingerprint = hashlib.sha256(json.dumps({
        "autoencoder": vars(ae_cfg), "size": config.input_size, "colour": config.colour, "seed": config.seed,
        "images": sorted(hashes),
    }, sort_keys=True).encode()).hexdigest()
    state_path = out / STATE_FILE
    state: dict[str, Any] = {"fingerprint": fingerprint, "epochs": [], "seconds": 0.0}
    if state_path.is_file():
        old = json.loads(state_path.read_text())
        if old.get("fingerprint") == fingerprint:
            state = old
        # Another configuration or other images: start the pretraining over.
    record = {"images": len(paths), "validation_left_out": left_out, "source": source, "epochs": state["epochs"],
              "seconds": state["seconds"]}
    if state.get("finished") and (out / ENCODER_FILE).is_file():
        return load_file(str(out / ENCODER_FILE)), record

    t0 = time.perf_counter()
    earlier = float(state["seconds"])
    torch.manual_seed(config.seed)
    ae = ConvAutoencoder(in_channels=3 if config.colour == "rgb" else 1).to(device)
    opt = torch.optim.Adam(ae.parameters(), lr=ae_cfg.lr)
    done = len(state["epochs"])
    if done:
        ae.load_state_dict(load_file(str(out / f"ae-{done:03d}.safetensors")))
        opt.load_state_dict(optimizer_from_safetensors(
            {k: v.to(device) for k, v in load_file(str(out / f"ae-optim-{done:03d}.safetensors")).items()},
            state["optimizer"]))
    ds = _Images(paths, config.input_size, config.colour, config.mean, config.std, augmentation("light"))
    for epoch in range(done + 1, ae_cfg.epochs + 1):
        torch.manual_seed(epoch_seed(config.seed, epoch, 7))
        gen = torch.Generator().manual_seed(epoch_seed(config.seed, epoch, 8))
        loader = DataLoader(ds, batch_size=ae_cfg.batch_size, shuffle=True, generator=gen,
                            drop_last=len(ds) % ae_cfg.batch_size == 1, num_workers=config.num_workers)
        t = time.perf_counter()
        ae.train()
        total, count = 0.0, 0
        for x in loader:
            x = x.to(device, non_blocking=True)
            loss = nn.functional.mse_loss(ae(x), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(x)
            count += len(x)
        state["epochs"].append({"epoch": epoch, "loss": total / max(count, 1), "seconds": time.perf_counter() - t})
        save_tensors(out / f"ae-{epoch:03d}.safetensors", ae.state_dict())
        tensors, meta = optimizer_to_safetensors(opt.state_dict())
        save_tensors(out / f"ae-optim-{epoch:03d}.safetensors", tensors)
        state.update(optimizer=meta, seconds=earlier + time.perf_counter() - t0)
        write_json(state_path, state)
        for f in out.glob("ae-*.safetensors"):
            if not f.name.endswith(f"-{epoch:03d}.safetensors"):
                f.unlink()
    encoder = {k: v for k, v in ae.state_dict().items() if k.startswith("encoder.")}
    save_file({k: v.detach().cpu().contiguous() for k, v in encoder.items()}, str(out / ENCODER_FILE))
    state.update(finished=True, seconds=earlier + time.perf_counter() - t0)
    state.pop("optimizer", None)
    write_json(state_path, state)
    for f in out.glob("ae-*.safetensors"):
        f.unlink()
    record.update(epochs=state["epochs"], seconds=state["seconds"])
    return load_file(str(out / ENCODER_FILE)), record
