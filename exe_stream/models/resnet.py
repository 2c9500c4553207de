"""torchvision backbones (ResNet-18/50, EfficientNet-B0, MobileNetV2) as emotion classifiers.

The networks are torchvision's own, built without pretrained weights and with
``num_classes = len(card.labels)``, so their state-dict keys are torchvision's and a
torchvision checkpoint (saved as safetensors) loads unchanged. For "gray" cards the first
convolution takes 1 input channel instead of 3 (same shape otherwise). All return logits.
"""

from __future__ import annotations

from torch import nn

# Architectures built by the torchvision constructor of the same name. torchvision is imported
# only when one is built: importing it costs seconds, which a scan with no such model saves.
TORCHVISION_ARCHITECTURES: tuple[str, ...] = ("resnet18", "resnet50", "efficientnet_b0", "mobilenet_v2")


def _first_conv_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding the first convolution, and its attribute name."""
    if name.startswith("resnet"):
        return model, "conv1"
    return model.features[0], "0"  # efficientnet / mobilenet: features[0] = Conv-BN-act


def build_torchvision(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """A torchvision classifier: input float32 [K, in_channels, H, W] -> logits [K, num_classes]."""
    if name not in TORCHVISION_ARCHITECTURES:
        raise ValueError(f"unknown torchvision architecture {name!r}; expected one of {sorted(TORCHVISION_ARCHITECTURES)}")
    import torchvision.models as tvm

    model = getattr(tvm, name)(weights=None, num_classes=num_classes)
    if in_channels != 3:
        parent, attr = _first_conv_parent(model, name)
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
    return model
