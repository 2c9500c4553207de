"""Classify: face crops of a FrameBatch through every requested emotion model.

Each model (or ensemble member) states its crop in its card (``CropSpec``: size, colour,
mean/std, margin). Crops are made once per distinct spec with ``roi.roi_resample`` on the
frames' device and shared by every model that needs that spec; each model then runs one
forward pass per chunk of at most ``max_batch`` faces.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch

from .embeddings import capture_embeddings
from .models import CropSpec, EmotionModel
from .roi import roi_resample
from .types import FaceBatch, FrameBatch

# Most faces cropped and classified at once (bounds the crop tensors' memory).
MAX_BATCH = 256


def face_rois(faces: FaceBatch, frame_hw: tuple[int, int], crop_margin: float) -> torch.Tensor:
    """Square crop boxes around the detected faces.

    faces.boxes: float32 [N, 4] (x0, y0, x1, y1) normalised to the displayed frame;
    frame_hw: (H, W) of the displayed frame in pixels. The crop is the square centred on
    the box with side ``max(w, h) * (1 + 2 * crop_margin)`` (w, h: the box in pixels).
    Returns float32 [N, 5] (frame_row, x0, y0, x1, y1) in source pixel edge coordinates
    (the whole frame is (0, 0, W, H)) on the CPU; crops may reach past the frame.
    """
    if not crop_margin >= 0:
        raise ValueError(f"crop_margin must be >= 0, got {crop_margin}")
    h, w = float(frame_hw[0]), float(frame_hw[1])
    b = faces.boxes.to(torch.float32).cpu()
    cx = (b[:, 0] + b[:, 2]) * (0.5 * w)
    cy = (b[:, 1] + b[:, 3]) * (0.5 * h)
    side = torch.maximum((b[:, 2] - b[:, 0]) * w, (b[:, 3] - b[:, 1]) * h) * (1.0 + 2.0 * crop_margin)
    half = 0.5 * side
    row = faces.frame_row.cpu().to(torch.float32)
    return torch.stack((row, cx - half, cy - half, cx + half, cy + half), dim=1)


def make_crops(frames: FrameBatch, faces: FaceBatch, spec: CropSpec) -> torch.Tensor:
    """Face crops for one crop spec: float32 [N, C, h, w] NCHW, normalised, on the frames' device."""
    rois = face_rois(faces, (frames.height, frames.width), spec.crop_margin)
    return roi_resample(frames, rois.to(frames.device), spec.out_hw, spec.mode, spec.mean, spec.std)


def _rows(faces: FaceBatch, sl: slice) -> FaceBatch:
    return FaceBatch(
        frame_row=faces.frame_row[sl],
        face_index=faces.face_index[sl],
        boxes=faces.boxes[sl],
        scores=faces.scores[sl],
        keypoints=faces.keypoints[sl],
    )


def classify_faces(
    frames: FrameBatch,
    faces: FaceBatch,
    models: Sequence[EmotionModel],
    max_batch: int = MAX_BATCH,
    embeddings: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Emotion probabilities of every face under every model.

    frames: the FrameBatch the faces were found in (any device); faces: FaceBatch (CPU).
    Returns model_id -> float32 [N, len(model.labels)] on the CPU, row i for face i, rows
    summing to 1. Models with the same crop spec share one crop tensor per chunk.
    embeddings: when a dict is given, it is filled with model_id -> float32 [N, D] (CPU), each
    face's penultimate-layer embedding from the same forward pass (``exe_stream.embeddings``).
    """
    ids = [m.model_id for m in models]
    if len(set(ids)) != len(ids):
        raise ValueError(f"model ids must be unique, got {ids}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    n = len(faces)
    # Distinct crop specs over all models and ensemble members, in first-use order.
    specs = list(dict.fromkeys(s for m in models for s in m.crop_specs))
    out: dict[str, list[torch.Tensor]] = {m.model_id: [] for m in models}
    emb: dict[str, list[torch.Tensor]] = {m.model_id: [] for m in models}
    for start in range(0, n, max_batch):
        chunk = _rows(faces, slice(start, start + max_batch))
        crops = {s: make_crops(frames, chunk, s) for s in specs}
        for m in models:
            with capture_embeddings(m) if embeddings is not None else contextlib.nullcontext() as cap:
                out[m.model_id].append(m.predict([crops[s] for s in m.crop_specs]).cpu())
            if cap is not None:
                emb[m.model_id].append(cap.result())
    if embeddings is not None:
        embeddings.update({k: torch.cat(v) if v else torch.zeros((0, 0)) for k, v in emb.items()})
    return {
        m.model_id: torch.cat(out[m.model_id]) if out[m.model_id] else torch.zeros((0, len(m.labels)))
        for m in models
    }
