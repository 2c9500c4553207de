"""Face detection: whole frames in, face boxes out (``detect_faces``).

Detectors are registered by name in ``DETECTORS``; each is a ``Detector`` backend (one file
per backend) loaded once per (name, device) from the converted weights committed under
``exe_stream/assets/models/<name>/``. The default, ``blazeface-full``, is MediaPipe's
full-range BlazeFace: it still finds faces of 30-60 pixels on a 720p frame (film
distances), where the short-range model finds none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from ..options import check_range
from ..types import FaceBatch, FrameBatch

# Registry: detector name -> backend module (under exe_stream.detect).
DETECTORS: dict[str, str] = {
    "blazeface-short": "blazeface",
    "blazeface-full": "blazeface",
}
DEFAULT_DETECTOR = "blazeface-full"
# Each model's own score threshold, the one MediaPipe 0.10.21's graphs apply: its Python
# FaceDetection ignores min_detection_confidence (google-ai-edge/mediapipe#3896), so these are
# the thresholds MediaPipe really uses. DetectorOptions(min_score=None) means this value.
MODEL_MIN_SCORE: dict[str, float] = {"blazeface-short": 0.5, "blazeface-full": 0.6}
# Where the converted detector weights live (one directory per registered name).
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "models"


def check_detector_name(name: str) -> str:
    """Return ``name`` if it is registered; else raise ValueError naming it and the allowed ones."""
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; available: {', '.join(sorted(DETECTORS))}")
    return name


@dataclass(frozen=True)
class DetectorOptions:
    """Which face detector runs and how its detections are filtered."""

    # Registry name (a key of DETECTORS).
    name: str = DEFAULT_DETECTOR
    # Minimum detection score (0..1); None = the model's own MediaPipe threshold (MODEL_MIN_SCORE).
    min_score: float | None = None
    # Weighted-NMS suppression threshold: boxes overlapping a better one by IoU above this merge into it.
    nms_iou: float = 0.3
    # Keep at most this many faces per frame, largest box first (0 = all).
    max_faces: int = 0

    def __post_init__(self) -> None:
        check_detector_name(self.name)
        if self.min_score is not None:
            check_range("min_score", self.min_score, lo=0.0, hi=1.0)
        check_range("nms_iou", self.nms_iou, lo=0.0, hi=1.0)
        check_range("max_faces", self.max_faces, lo=0, integer=True)

    @property
    def threshold(self) -> float:
        """The score threshold in force: ``min_score``, or the model's MediaPipe threshold."""
        return MODEL_MIN_SCORE[self.name] if self.min_score is None else self.min_score


class Detector(Protocol):
    """A loaded detector backend on one device."""

    # Network input (height, width); frames are letterboxed to it.
    input_size: tuple[int, int]
    # Per-channel mean/std applied to [0, 1] RGB before the network.
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def letterbox_rois(self, num_frames: int, height: int, width: int) -> torch.Tensor:
        """ROIs float32 [num_frames, 5] (frame row, x0, y0, x1, y1) in source pixel edge
        coordinates that ``roi.resample`` turns into this detector's input."""
        ...

    def detect(self, letterboxed: torch.Tensor, frame_hw: tuple[int, int], opts: DetectorOptions) -> FaceBatch:
        """letterboxed: float32 [B, 3, h, w] normalised network input on the detector's device;
        frame_hw: the displayed frame size the letterbox was made from. Returns CPU FaceBatch."""
        ...


def get_detector(name: str, device: torch.device | str = "cpu") -> Detector:
    """The detector ``name`` loaded on ``device`` (cached: loaded once per name and device)."""
    check_detector_name(name)
    backend = DETECTORS[name]
    if backend == "blazeface":
        from .blazeface import load_blazeface

        return load_blazeface(name, torch.device(device))
    raise AssertionError(f"registered detector {name!r} has unknown backend {backend!r}")


def detect_faces(frames: FrameBatch, opts: DetectorOptions) -> FaceBatch:
    """Find faces in every frame of the batch with one network forward.

    frames: FrameBatch of YUV 4:2:0 planes on any device; the detector runs there. Each frame
    is letterboxed whole (aspect kept, centred, zero padding) by ``roi.roi_resample`` on the
    detector's ROIs (``Detector.letterbox_rois``).
    Returns a FaceBatch on the CPU, sorted by frame, then by box area (face_index 0 =
    largest); boxes/keypoints normalised to the displayed frame.
    """
    from ..roi import roi_resample

    det = get_detector(opts.name, frames.device)
    if len(frames) == 0:
        return FaceBatch.empty()
    rois = det.letterbox_rois(len(frames), frames.height, frames.width)
    x = roi_resample(frames, rois, det.input_size, "rgb", det.mean, det.std)
    return det.detect(x, (frames.height, frames.width), opts)


def detect_faces_rgb(images: torch.Tensor, opts: DetectorOptions) -> FaceBatch:
    """``detect_faces`` for RGB images: float32 [B, 3, H, W] in [0, 1] (NCHW, any device).

    Returns a CPU FaceBatch as ``detect_faces`` does (frame_row = image index).
    """
    from ..roi import resample

    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be float32 [B, 3, H, W] in [0, 1], got {tuple(images.shape)}")
    det = get_detector(opts.name, images.device)
    if images.shape[0] == 0:
        return FaceBatch.empty()
    h, w = int(images.shape[2]), int(images.shape[3])
    rois = det.letterbox_rois(int(images.shape[0]), h, w)
    x = resample(images.to(torch.float32), rois, det.input_size, "rgb", det.mean, det.std)
    return det.detect(x, (h, w), opts)


__all__ = [
    "DEFAULT_DETECTOR", "DETECTORS", "Detector", "DetectorOptions", "check_detector_name",
    "detect_faces", "detect_faces_rgb", "get_detector",
]
