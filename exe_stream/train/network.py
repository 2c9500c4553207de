"""The network a training run starts from: architecture, starting weights, trainable blocks.

Starting weights (``TrainConfig.weights``):

- ``"imagenet"``: torchvision's ImageNet weights for the architecture
  (``torchvision.models.get_model_weights(arch).DEFAULT``), fetched with
  ``torch.hub.load_state_dict_from_url(..., check_hash=True, weights_only=True)``: the file
  is downloaded once into the torch hub cache (``$TORCH_HOME/hub/checkpoints``) and read
  without unpickling arbitrary objects. Without network access the cached file must already be
  there (``prefetch_hint`` says how).
- ``"none"``: torchvision's random initialisation.
- a file: a ``.safetensors`` state dict or a model directory (its ``weights.safetensors``).
  Pickled checkpoints (``.pt``, ``.pth``, ``.ckpt``, ``.pkl``, ``.bin``) are refused unopened.

Whatever the source, tensors are matched by name and shape: the output layer (its size is the
label count) and anything else that does not fit are left at their initialisation and listed
in the run record. For a "gray" network, a 3-channel first convolution is summed over its
input channels (a grey pixel g seen as (g, g, g) gives the same response).

Blocks (``blocks``), in input-to-output order, for ``trainable_blocks``: ResNet: stem
(conv1 + bn1), layer1..layer4; EfficientNet-B0 and MobileNetV2: the entries of ``features``;
VGG-16: the five conv stages of ``features`` (each ending in a max pool); conv_autoencoder:
the encoder's blocks. The head (and anything not in a block) always learns. Frozen blocks
keep their BatchNorm statistics (``set_train_mode``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..models import ModelCard, build_network
from ..models.card import is_pickle_path, refuse_pickle
from ..models.resnet import TORCHVISION_ARCHITECTURES, first_conv
from .config import TrainConfig, TrainError


def prefetch_hint(arch: str) -> str:
    """How to get the ImageNet weights of ``arch`` onto a machine without network access."""
    return (
        f"on a machine with network access run: python -c \"import torchvision; "
        f"torchvision.models.{arch}(weights='DEFAULT')\" and copy the file it downloads from "
        f"$TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints) to the same place "
        f"here; or train with weights = \"none\" or a .safetensors file"
    )


def imagenet_state(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet state dict for ``arch`` (downloaded once to the torch hub cache)."""
    if arch not in TORCHVISION_ARCHITECTURES:
        raise TrainError(f"architecture {arch!r} has no imagenet weights; use weights = 'none' or a file")
    import torchvision.models as tvm

    url = tvm.get_model_weights(arch).DEFAULT.url
    try:
        return torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=False, check_hash=True, weights_only=True
        )
    except Exception as e:  # URLError, HTTPError, OSError, RuntimeError (hash mismatch), ...
        raise TrainError(f"cannot get the ImageNet weights of {arch} from {url} ({type(e).__name__}: {e}); "
                         f"{prefetch_hint(arch)}") from e


def file_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a model directory; never unpickles."""
    from safetensors.torch import load_file

    from ..models.card import load_weights

    p = Path(path).expanduser()
    if is_pickle_path(p) and not p.is_dir():
        raise TrainError(str(refuse_pickle(p)))
    if p.is_dir():
        try:
            return load_weights(p)
        except Exception as e:
            raise TrainError(f"starting weights {p}: {e}") from e
    if not p.is_file():
        raise TrainError(f"starting weights {str(p)!r} do not exist; weights must be 'imagenet', 'none', "
                         f"a .safetensors file or a model directory")
    if p.suffix.lower() != ".safetensors":
        raise TrainError(f"starting weights {str(p)!r} must be a .safetensors file or a model directory")
    try:
        return load_file(str(p), device="cpu")
    except Exception as e:  # safetensors raises its own error types
        raise TrainError(f"cannot read {str(p)!r} as safetensors: {e}") from e


def _first_conv_key(net: nn.Module, arch: str) -> str | None:
    if arch not in TORCHVISION_ARCHITECTURES:
        return None
    parent, attr = first_conv(net, arch)
    conv = getattr(parent, attr)
    return next(name for name, m in net.named_modules() if m is conv) + ".weight"


def load_matching(net: nn.Module, state: Mapping[str, torch.Tensor], arch: str) -> dict[str, Any]:
    """Copy the tensors of ``state`` that fit ``net`` by name and shape (the first convolution
    of a grey network is summed over 3 input channels). Returns {"loaded": n, "skipped": [...],
    "not_loaded": [...]} (keys of ``state`` left out; keys of ``net`` left at initialisation)."""
    own = net.state_dict()
    state = dict(state)
    conv_key = _first_conv_key(net, arch)
    if conv_key and conv_key in state and conv_key in own:
        w = state[conv_key]
        if w.ndim == 4 and w.shape[1] == 3 and own[conv_key].shape[1] == 1:
            state[conv_key] = w.sum(dim=1, keepdim=True)
    fits = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not any(not k.endswith("num_batches_tracked") for k in fits):
        raise TrainError(f"no tensor of the starting weights fits architecture {arch!r} "
                         f"(first keys: {sorted(state)[:3]}; the network's: {sorted(own)[:3]})")
    own.update({k: v.to(own[k].dtype) for k, v in fits.items()})
    net.load_state_dict(own)
    return {
        "loaded": len(fits),
        "skipped": sorted(set(state) - set(fits)),
        "not_loaded": sorted(set(own) - set(fits)),
    }


def build_classifier(card: ModelCard, config: TrainConfig, start: Mapping[str, torch.Tensor] | None = None
                     ) -> tuple[nn.Module, dict[str, Any]]:
    """The network for ``card`` (built as ``load_model`` will rebuild it) with the starting
    weights of ``config`` (or ``start``, a state dict, when given). Returns (network on the
    CPU, a report of what was loaded)."""
    torch.manual_seed(config.seed)
    net = build_network(card)
    if config.extra_dense and config.dropout:
        head = dict(net.named_modules())[head_name(card.architecture)]
        head[2].p = config.dropout  # Linear -> ReLU -> Dropout -> Linear
    if start is not None:
        source, state = "pretrained encoder", start
    elif config.weights == "none":
        return net, {"source": "none"}
    elif config.weights == "imagenet":
        source, state = "imagenet", imagenet_state(card.architecture)
    else:
        source, state = str(config.weights), file_state(config.weights)
    report = load_matching(net, state, card.architecture)
    if source == "imagenet":
        body = [k for k in report["not_loaded"] if not k.startswith(head_name(card.architecture) + ".")]
        if body:
            raise TrainError(f"torchvision's ImageNet weights of {card.architecture} lack {body[:3]}")
    return net, {"source": source, **report}


def head_name(arch: str) -> str:
    """Qualified name of the output layer (or head Sequential)."""
    if arch.startswith("resnet") or arch == "conv_autoencoder":
        return "fc"
    return {"vgg16": "classifier.6"}.get(arch, "classifier.1")


def blocks(net: nn.Module, arch: str) -> list[list[nn.Module]]:
    """The network's blocks in input-to-output order (each a list of modules)."""
    if arch.startswith("resnet"):
        return [[net.conv1, net.bn1], [net.layer1], [net.layer2], [net.layer3], [net.layer4]]
    if arch in ("efficientnet_b0", "mobilenet_v2"):
        return [[m] for m in net.features]
    if arch == "vgg16":
        out: list[list[nn.Module]] = [[]]
        for m in net.features:
            out[-1].append(m)
            if isinstance(m, nn.MaxPool2d):
                out.append([])
        return [b for b in out if b]
    if arch == "conv_autoencoder":
        return [[m] for m in net.encoder.blocks]
    raise TrainError(f"no block layout for architecture {arch!r}")


def freeze(net: nn.Module, arch: str, trainable_blocks: int) -> list[nn.Module]:
    """Make only the last ``trainable_blocks`` blocks (and the head) learn; -1 = everything.
    Returns the frozen modules (for ``set_train_mode``)."""
    for p in net.parameters():
        p.requires_grad_(True)
    if trainable_blocks < 0:
        return []
    bl = blocks(net, arch)
    frozen = [m for b in bl[: max(0, len(bl) - trainable_blocks)] for m in b]
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)
    return frozen


def set_train_mode(net: nn.Module, frozen: list[nn.Module]) -> None:
    """Training mode, except frozen blocks (their BatchNorm statistics stay as loaded)."""
    net.train()
    for m in frozen:
        m.eval()
