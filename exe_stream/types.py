"""Typed batches passed between the pipeline stages.

Every batch checks its shapes in ``__post_init__`` and prints shapes, not data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

Matrix = Literal["bt601", "bt709"]
Device = Literal["auto", "cpu", "cuda"]


def _shape(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')} {t.device}"


@dataclass
class FrameBatch:
    """Sampled frames of one film as YUV 4:2:0 planes, already rotated for display.

    y: uint8 [B, H, W]; u, v: uint8 [B, (H + 1) // 2, (W + 1) // 2] (I420 from PyAV; an NV12
    source is split into u and v by its decoder). All planes live on the same device.
    frame_index: int64 [B], presentation order, 0-based. pts_seconds: float64 [B], from the
    container's timestamps. is_keyframe: bool [B].
    matrix / full_range: the colour matrix and range of the stream (unspecified streams get
    BT.601 below 720 lines and BT.709 from 720 lines up, limited range).
    """

    y: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    frame_index: torch.Tensor
    pts_seconds: torch.Tensor
    is_keyframe: torch.Tensor
    matrix: Matrix = "bt601"
    full_range: bool = False

    def __post_init__(self) -> None:
        assert self.y.dtype == torch.uint8 and self.y.ndim == 3, _shape(self.y)
        b, h, w = self.y.shape
        ch = ((h + 1) // 2, (w + 1) // 2)
        for p in (self.u, self.v):
            assert p.dtype == torch.uint8 and tuple(p.shape) == (b, *ch), (_shape(p), ch)
            assert p.device == self.y.device
        assert tuple(self.frame_index.shape) == (b,) and self.frame_index.dtype == torch.int64
        assert tuple(self.pts_seconds.shape) == (b,) and self.pts_seconds.dtype == torch.float64
        assert tuple(self.is_keyframe.shape) == (b,) and self.is_keyframe.dtype == torch.bool
        assert self.matrix in ("bt601", "bt709"), self.matrix

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def height(self) -> int:
        return int(self.y.shape[1])

    @property
    def width(self) -> int:
        return int(self.y.shape[2])

    @property
    def device(self) -> torch.device:
        return self.y.device

    def __repr__(self) -> str:
        return (
            f"FrameBatch(y={_shape(self.y)}, u/v={_shape(self.u)}, {self.matrix}, "
            f"{'full' if self.full_range else 'limited'} range)"
        )


@dataclass
class FaceBatch:
    """Faces found in a FrameBatch, sorted by frame, then by box area (largest first).

    frame_row: int64 [N], the row of the face's frame in its FrameBatch.
    face_index: int16 [N], 0 = largest box of its frame.
    boxes: float32 [N, 4] (x0, y0, x1, y1) normalised to the displayed frame (may reach
    slightly outside [0, 1] for faces cut by the border).
    scores: float32 [N], detector confidence.
    keypoints: float32 [N, K, 2] normalised (x, y); K = 6 for BlazeFace.
    All on the CPU (only boxes come back to the host on the GPU path).
    """

    frame_row: torch.Tensor
    face_index: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor
    keypoints: torch.Tensor

    def __post_init__(self) -> None:
        n = int(self.frame_row.shape[0])
        assert self.frame_row.dtype == torch.int64 and self.frame_row.shape == (n,)
        assert self.face_index.dtype == torch.int16 and self.face_index.shape == (n,)
        assert self.boxes.dtype == torch.float32 and self.boxes.shape == (n, 4)
        assert self.scores.dtype == torch.float32 and self.scores.shape == (n,)
        assert self.keypoints.dtype == torch.float32 and self.keypoints.ndim == 3
        assert self.keypoints.shape[0] == n and self.keypoints.shape[2] == 2

    def __len__(self) -> int:
        return int(self.frame_row.shape[0])

    @staticmethod
    def empty(num_keypoints: int = 6) -> "FaceBatch":
        return FaceBatch(
            frame_row=torch.zeros(0, dtype=torch.int64),
            face_index=torch.zeros(0, dtype=torch.int16),
            boxes=torch.zeros(0, 4),
            scores=torch.zeros(0),
            keypoints=torch.zeros(0, num_keypoints, 2),
        )

    def __repr__(self) -> str:
        return f"FaceBatch(n={len(self)}, boxes={_shape(self.boxes)})"


@dataclass
class FilmInfo:
    """What a demux pass learns about a film before any frame is decoded."""

    path: str
    codec: str
    width: int  # displayed width (rotation applied)
    height: int  # displayed height (rotation applied)
    rotation: int  # degrees counter-clockwise that the decoded picture is turned for display
    num_frames: int  # frames in presentation order (packets with a timestamp)
    duration_seconds: float
    average_fps: float
    pix_fmt: str
    matrix: Matrix
    full_range: bool
    extra: dict[str, str] = field(default_factory=dict)
