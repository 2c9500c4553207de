"""A small convolutional autoencoder and the classifier built on its encoder.

Used by ``exe-stream train`` for the semi-supervised study (``exe_stream.train.autoencoder``):
the autoencoder is pretrained on unlabelled face crops, then its encoder gets a classifier
head fine-tuned on a labelled fraction. The classifier is the architecture
``"conv_autoencoder"`` of ``exe_stream.models.ARCHITECTURES``, so its model card loads and
scans like any other.

Encoder: ``len(WIDTHS)`` blocks, each Conv 3x3 stride 2 -> BN -> ReLU -> Conv 3x3 -> BN ->
ReLU, halving the resolution (64x64 -> 4x4 with the default four blocks). Decoder: the mirror
image with transposed convolutions (stride 2), ending in a 3x3 convolution to the input
channels, no activation (the targets are the normalised crops, not [0, 1] pixels); its output
is resized to the input size when that is not a multiple of 16. Classifier: the encoder,
global average pooling (the ``WIDTHS[-1]``-wide embedding) and one Linear layer.

State-dict keys of the encoder are ``encoder.blocks.<i>.*`` in both networks, so the
pretrained encoder loads into the classifier by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Output channels of the encoder's blocks (each halves the resolution).
WIDTHS: tuple[int, ...] = (32, 64, 128, 256)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _up_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ConvEncoder(nn.Module):
    """float32 [K, in_channels, H, W] -> feature map [K, WIDTHS[-1], ceil(H/16), ceil(W/16)]."""

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__()
        chans = (in_channels, *widths)
        self.blocks = nn.ModuleList(_block(a, b) for a, b in zip(chans[:-1], chans[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class ConvAutoencoder(nn.Module):
    """float32 [K, in_channels, H, W] (normalised crops) -> reconstruction of the same shape."""

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__()
        self.encoder = ConvEncoder(in_channels, widths)
        rev = tuple(reversed(widths))
        self.decoder = nn.Sequential(
            *(_up_block(a, b) for a, b in zip(rev[:-1], rev[1:])),
            _up_block(rev[-1], rev[-1]),
            nn.Conv2d(rev[-1], in_channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.decoder(self.encoder(x))
        if y.shape[-2:] != x.shape[-2:]:
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return y


class ConvAEClassifier(nn.Module):
    """The pretrained encoder + global average pooling + Linear: float32 [K, in_channels, H, W]
    -> logits [K, num_classes]. The Linear's input is the face's embedding (WIDTHS[-1] wide)."""

    def __init__(self, num_classes: int, in_channels: int = 3, widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__()
        self.encoder = ConvEncoder(in_channels, widths)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(x).mean(dim=(2, 3)))
