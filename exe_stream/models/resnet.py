"""torchvision backbones (ResNet-18/50, EfficientNet-B0, MobileNetV2, VGG-16) as emotion classifiers.

The networks are torchvision's own, built without pretrained weights and with
``num_classes = len(card.labels)``, so their state-dict keys are torchvision's and a
torchvision checkpoint (saved as safetensors) loads unchanged. For "gray" cards the first
convolution takes 1 input channel instead of 3 (same shape otherwise). All return logits.

A card may ask for an extra dense layer before the output (``extra["head_hidden"] = H``, set
by ``exe-stream train`` with ``extra_dense``): the final Linear(F, n) becomes
Linear(F, H) -> ReLU -> Dropout -> Linear(H, n) (``set_head``), state-dict keys
``<head>.0.*`` and ``<head>.3.*``.
"""

from __future__ import annotations

from torch import nn

# Architectures built by the torchvision constructor of the same name. torchvision is imported
# only when one is built: importing it costs seconds, which a scan with no such model saves.
TORCHVISION_ARCHITECTURES: tuple[str, ...] = ("resnet18", "resnet50", "efficientnet_b0", "mobilenet_v2", "vgg16")


def first_conv(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """(parent module, attribute name) of the network's first convolution."""
    if name.startswith("resnet"):
        return model, "conv1"
    if name.startswith("vgg"):
        return model.features, "0"  # vgg: features[0] is the convolution itself
    return model.features[0], "0"  # efficientnet / mobilenet: features[0] = Conv-BN-act


def head_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """(parent module, attribute name) of the output layer: ``fc`` for ResNets, the last entry
    of ``classifier`` for EfficientNet, MobileNetV2 and VGG."""
    if name.startswith("resnet"):
        return model, "fc"
    return model.classifier, str(len(model.classifier) - 1)


def set_head(model: nn.Module, name: str, num_classes: int, hidden: int = 0, dropout: float = 0.0) -> nn.Module:
    """Replace the output layer with a fresh Linear(F, num_classes), or with
    Linear(F, hidden) -> ReLU -> Dropout(dropout) -> Linear(hidden, num_classes) when hidden > 0.
    F is the old layer's input width (the embedding size). Returns the new head."""
    parent, attr = head_parent(model, name)
    old = getattr(parent, attr)
    if isinstance(old, nn.Sequential):  # already replaced: its first layer sees the features
        old = old[0]
    assert isinstance(old, nn.Linear), type(old)
    features = old.in_features
    if hidden > 0:
        new: nn.Module = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )
    else:
        new = nn.Linear(features, num_classes)
    setattr(parent, attr, new)
    return new


def build_torchvision(name: str, num_classes: int, in_channels: int = 3, hidden: int = 0) -> nn.Module:
    """A torchvision classifier: input float32 [K, in_channels, H, W] -> logits [K, num_classes].

    hidden > 0 adds a dense layer of that width before the output (``set_head``)."""
    if name not in TORCHVISION_ARCHITECTURES:
        raise ValueError(f"unknown torchvision architecture {name!r}; expected one of {sorted(TORCHVISION_ARCHITECTURES)}")
    import torchvision.models as tvm

    model = getattr(tvm, name)(weights=None, num_classes=num_classes)
    if in_channels != 3:
        parent, attr = first_conv(model, name)
        old = getattr(parent, attr)
        assert isinstance(old, nn.Conv2d), type(old)
        new = nn.Conv2d(
            in_channels,
            old.out_channels,
            old.kernel_size,
            stride=old.stride,
            padding=old.padding,
            bias=old.bias is not None,
        )
        setattr(parent, attr, new)
    if hidden > 0:
        set_head(model, name, num_classes, hidden)
    return model
