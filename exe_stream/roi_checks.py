"""Argument checks of ``roi_resample`` shared by the torch spec (``roi``) and the CUDA kernel's
loader (``kernels``), so that neither imports the other for them."""

from __future__ import annotations

from typing import Literal, Sequence

import torch

Mode = Literal["rgb", "gray"]

# (Kr, Kb) luma coefficients of each matrix.
_LUMA = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}


def _check_matrix(matrix: str) -> tuple[float, float]:
    if matrix not in _LUMA:
        raise ValueError(f"unknown colour matrix {matrix!r}; expected one of {sorted(_LUMA)}")
    return _LUMA[matrix]


def _check_mode(mode: str, mean: Sequence[float], std: Sequence[float]) -> int:
    """Validate the output mode and its mean/std; returns the output channel count."""
    if mode not in ("rgb", "gray"):
        raise ValueError(f"mode must be 'rgb' or 'gray', got {mode!r}")
    channels = 3 if mode == "rgb" else 1
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mode {mode!r} needs {channels} mean/std values, got {len(mean)}/{len(std)}")
    return channels


def _check_rois(rois: torch.Tensor, batch: int) -> None:
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be [K, 5] (batch_index, x0, y0, x1, y1), got {tuple(rois.shape)}")
    if rois.shape[0] and (rois[:, 0].min() < 0 or rois[:, 0].max() >= batch):
        raise ValueError(f"roi batch_index outside 0..{batch - 1}")
    if rois.shape[0] and bool(((rois[:, 3] <= rois[:, 1]) | (rois[:, 4] <= rois[:, 2])).any()):
        raise ValueError("every roi needs x1 > x0 and y1 > y0")
