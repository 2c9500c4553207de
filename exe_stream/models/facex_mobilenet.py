"""MobileNetV2 as in facex's emotion model (PyPI facex 1.1.0, ``model_optimized.tflite``).

The TFLite graph (which ``convert_facex`` checks op by op before mapping weights) is Keras'
``MobileNetV2`` (alpha 1.0, ImageNet layout) with its BatchNorms folded into the convolutions,
on a 200 x 200 x 3 input, topped by Flatten + Dense(7) + softmax instead of global pooling:

    stem:   pad (0, 1) -> Conv 3x3 stride 2 valid (32) -> ReLU6
    17 inverted residual blocks (t = expansion, c = out channels, n = repeats, s = stride):
            (1, 16, 1, 1) (6, 24, 2, 2) (6, 32, 3, 2) (6, 64, 4, 2) (6, 96, 3, 1)
            (6, 160, 3, 2) (6, 320, 1, 1)
        expand:    Conv 1x1 (c_in * t) -> ReLU6          (absent when t = 1)
        depthwise: 3x3, stride 1 "same" (pad 1, 1), or stride 2: pad (0, 1) then valid -> ReLU6
        project:   Conv 1x1 (c), linear
        out = x + project when stride 1 and c_in = c
    head:   Conv 1x1 (1280) -> ReLU6 -> flatten the 6 x 6 x 1280 map -> Linear (num_classes)

Every convolution has a bias (the folded BatchNorm). Keras pads stride-2 layers by 0 before and
1 after on both axes (``ZeroPadding2D`` from ``correct_pad`` with an unknown input size), not
symmetrically as torchvision's MobileNetV2 does, so this is its own module rather than a
torchvision one. The Linear's inputs are in NCHW flatten order (channel, row, column); the
converter permutes TFLite's NHWC order to it. The network returns logits; the graph's final
softmax is applied by the caller (``EmotionModel.predict``).

Input: float32 [K, in_channels, 200, 200] in [0, 1] (mean 0, std 1), on the module's device.
facex feeds its greyscale face crop replicated into 3 channels; with ``in_channels=1`` the
module takes the grey crop and replicates it itself (exactly what facex does, and 3x less crop
memory), with ``in_channels=3`` it takes RGB. The weights (3-channel stem) are the same either
way, so one weights file serves both cards.

Stored weights: the original keeps most weights as 8 bits with a per-tensor scale and zero
point, and so does the converted ``weights.safetensors`` (``<key>_q`` uint8/int8,
``<key>_scale`` float32 [1], ``<key>_zero_point`` int32 [1], for a parameter ``<key>``): about
half the size of float16 and exact. ``load_state_dict`` turns each triple into the float32
parameter ``(q - zero_point) * scale`` (``dequantize_state``), the same float32 arithmetic as
TFLite's DEQUANTIZE, so the network computes in float32 with exactly the original's values.
A plain float32 state dict (``state_dict()`` of this module) loads too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (expansion t, output channels c, repeats n, first stride s): Keras/torchvision MobileNetV2.
BLOCK_SETTINGS = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# Network input side in pixels, and the side of the final feature map it gives (200 -> 6).
INPUT_SIZE = 200
FEATURE_SIZE = 6
# Suffixes of an 8-bit stored parameter's entries in a state dict (see the module docstring).
QUANT_SUFFIXES = ("_q", "_scale", "_zero_point")
# Keras' stride-2 padding, F.pad order (left, right, top, bottom): nothing before, one after.
STRIDE2_PAD = (0, 1, 0, 1)


def block_configs() -> list[tuple[int, int, int, int]]:
    """(c_in, c_out, stride, expansion) of the 17 blocks, in order (Keras block_0 .. block_16)."""
    out = []
    c = STEM_CHANNELS
    for t, f, n, s in BLOCK_SETTINGS:
        for i in range(n):
            out.append((c, f, s if i == 0 else 1, t))
            c = f
    return out


def dequantize_state(state: dict[str, torch.Tensor], prefix: str = "") -> None:
    """Replace every ``<key>_q`` / ``<key>_scale`` / ``<key>_zero_point`` triple under ``prefix``
    in ``state`` (in place) by the float32 tensor ``<key>`` = ``(q - zero_point) * scale``
    (scale and zero point: one value, or one per index of dim 0). A triple with a part missing
    is left alone, so strict loading then reports its keys."""
    q_suffix, s_suffix, z_suffix = QUANT_SUFFIXES
    for k in [k for k in state if k.startswith(prefix) and k.endswith(q_suffix)]:
        base = k[: -len(q_suffix)]
        if base + s_suffix not in state or base + z_suffix not in state:
            continue
        q = state.pop(k)
        shape = (-1,) + (1,) * (q.ndim - 1)
        scale = state.pop(base + s_suffix).to(torch.float32).reshape(shape)
        zero = state.pop(base + z_suffix).to(torch.float32).reshape(shape)
        state[base] = (q.to(torch.float32) - zero) * scale


def _dequantize_hook(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, *args: object) -> None:
    dequantize_state(state, prefix)


class InvertedResidual(nn.Module):
    """MobileNetV2 block with BatchNorm folded: [expand 1x1 + ReLU6] -> depthwise 3x3 + ReLU6
    -> project 1x1 (linear), plus the input when the shape is unchanged."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.stride = stride
        self.residual = stride == 1 and cin == cout
        self.expand = nn.Conv2d(cin, hidden, 1) if expansion != 1 else None
        self.depthwise = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1 if stride == 1 else 0, groups=hidden)
        self.project = nn.Conv2d(hidden, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.expand is None else F.relu6(self.expand(x))
        if self.stride != 1:
            y = F.pad(y, STRIDE2_PAD)
        y = self.project(F.relu6(self.depthwise(y)))
        return x + y if self.residual else y


class FacexMobileNetV2(nn.Module):
    """facex's emotion network. Input float32 [K, in_channels, 200, 200] in [0, 1]
    (in_channels 1: grey, replicated to 3; or 3: RGB). Returns float32 logits [K, num_classes]."""

    def __init__(self, num_classes: int = 7, in_channels: int = 1) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"FacexMobileNetV2 takes 1 (grey) or 3 (RGB) input channels, got {in_channels}")
        self.in_channels = in_channels
        self.stem = nn.Conv2d(3, STEM_CHANNELS, 3, stride=2)
        self.blocks = nn.Sequential(*(InvertedResidual(*cfg) for cfg in block_configs()))
        self.head = nn.Conv2d(block_configs()[-1][1], HEAD_CHANNELS, 1)
        self.classifier = nn.Linear(HEAD_CHANNELS * FEATURE_SIZE * FEATURE_SIZE, num_classes)
        # 8-bit stored weights (converted files) become float32 parameters on loading.
        self.register_load_state_dict_pre_hook(_dequantize_hook)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels or tuple(x.shape[2:]) != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(
                f"FacexMobileNetV2 expects float32 [K, {self.in_channels}, {INPUT_SIZE}, {INPUT_SIZE}], "
                f"got {tuple(x.shape)}"
            )
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.relu6(self.stem(F.pad(x, STRIDE2_PAD)))
        x = self.blocks(x)
        x = F.relu6(self.head(x))
        return self.classifier(x.flatten(1))
