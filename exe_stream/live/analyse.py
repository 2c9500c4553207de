"""Live analysis: one frame at a time through scan's detector, crop rule and models.

``LiveAnalyser`` loads the detector and the emotion models once (the same ``load_model`` and
``detect_faces`` / ``classify_faces`` a scan uses, so a frame gets the probabilities ``scan``
gives it), analyses one ``FrameBatch`` of one frame at a time, smooths each face's
probabilities over time (``Smoother``, an exponential window) and adds the frame to a
``Timeline`` kept in memory. Frames themselves are never kept.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..tracks import box_iou
from ..classify import classify_faces
from ..detect import DetectorOptions, detect_faces
from ..options import OptionError, check_choice, check_range
from ..models import EmotionModel, load_model, resolve_device
from ..types import FaceBatch, FrameBatch

# The study's ethics line: shown on the page and in ``exe-stream live --help``.
ETHICS = ("For self-feedback only: see what your own face communicates and practise. "
          "Not for reading other people. Nothing leaves this machine.")


@dataclass(frozen=True)
class LiveOptions:
    """What a live session analyses and how it shows it."""

    # Emotion models: built-in names, model directories, or "ens:a+b" ensembles (as scan's --model).
    models: tuple[str, ...] = ("fer2013-minixception",)
    # Face detector and its thresholds (as scan's).
    detector: DetectorOptions = field(default_factory=DetectorOptions)
    # Time constant of the exponential smoothing of each face's probabilities, in seconds
    # (0 = no smoothing: the overlay shows each frame's own probabilities).
    smooth: float = 0.5
    # Where detection and classification run; "auto" picks CUDA when available.
    device: str = "auto"
    # torch CPU threads while a frame is analysed; 0 = half the cores, as scan does (the
    # server's receive loop or the source's decoder shares the machine; on 2 busy cores two
    # threads made a 176x144 frame 13x slower than one, measured).
    threads: int = 0

    def __post_init__(self) -> None:
        if not self.models:
            raise OptionError("models", "must name at least one model")
        check_range("smooth", self.smooth, 0.0, 3600.0, unit="seconds")
        check_choice("device", self.device, ("auto", "cpu", "cuda"))
        check_range("threads", self.threads, 0, integer=True)


@dataclass
class FaceResult:
    """One face of one analysed frame.

    box: (x0, y0, x1, y1) normalised to the displayed frame; score: detector confidence;
    probs / smooth: model_id -> float32 [C] (this frame's / smoothed), in the model's label order.
    """

    box: tuple[float, float, float, float]
    score: float
    probs: dict[str, np.ndarray]
    smooth: dict[str, np.ndarray]


@dataclass
class FrameResult:
    """One analysed frame: its number and time in the session, its faces, and what it cost."""

    frame_index: int
    pts_seconds: float
    faces: list[FaceResult]
    # Seconds spent in detection + classification (wall clock).
    analyse_seconds: float

    def to_message(self, models: Sequence[EmotionModel], top: int = 2) -> dict[str, Any]:
        """The JSON-able result the page draws: per face its box and, per model, the top
        ``top`` (label, smoothed probability) pairs plus the raw and smoothed probabilities."""
        faces = []
        for f in self.faces:
            per_model = {}
            for m in models:
                s = f.smooth[m.model_id]
                order = np.argsort(-s, kind="stable")[:top]
                per_model[m.model_id] = {
                    "top": [[m.labels[i], float(s[i])] for i in order],
                    "probs": [float(x) for x in f.probs[m.model_id]],
                    "smooth": [float(x) for x in s],
                }
            faces.append({"box": [float(x) for x in f.box], "score": f.score, "models": per_model})
        return {"type": "result", "frame_index": self.frame_index, "pts_seconds": self.pts_seconds,
                "faces": faces, "analyse_ms": round(1000.0 * self.analyse_seconds, 2)}


class Smoother:
    """Exponential smoothing of each face's probabilities over time.

    A face continues the previous frame's face it overlaps most (IoU >= ``min_iou``, greedy,
    best pairs first); a new face starts from its own probabilities. With time constant
    ``tau`` seconds, a frame ``dt`` seconds after the last one gets weight
    ``1 - exp(-dt / tau)`` (``tau`` = 0: no smoothing).
    """

    def __init__(self, tau: float, min_iou: float = 0.3) -> None:
        self.tau = tau
        self.min_iou = min_iou
        self._boxes = np.zeros((0, 4), np.float32)
        self._state: list[dict[str, np.ndarray]] = []
        self._t: float | None = None

    def __call__(self, t: float, boxes: np.ndarray, probs: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """t: seconds; boxes float32 [N, 4]; probs: per face model_id -> [C]. Returns the
        smoothed probabilities, per face in the same order."""
        dt = 0.0 if self._t is None else max(0.0, t - self._t)
        alpha = 1.0 if self.tau == 0 else 1.0 - math.exp(-dt / self.tau)
        match: dict[int, int] = {}
        if len(boxes) and len(self._boxes):
            iou = box_iou(boxes, self._boxes)
            for flat in np.argsort(-iou, axis=None, kind="stable"):
                i, j = divmod(int(flat), iou.shape[1])
                if iou[i, j] < self.min_iou:
                    break
                if i not in match and j not in match.values():
                    match[i] = j
        out = []
        for i, p in enumerate(probs):
            if i in match:
                prev = self._state[match[i]]
                out.append({k: (prev[k] + alpha * (v - prev[k])).astype(np.float32) for k, v in p.items()})
            else:
                out.append({k: v.astype(np.float32) for k, v in p.items()})
        self._boxes, self._state, self._t = boxes.astype(np.float32), out, t
        return out


_issued: set[str] = set()


def session_id(now: float | None = None) -> str:
    """A session's film id: ``live-YYYYmmdd-HHMMSS`` (local time), with ``-2``, ``-3``, ...
    when this process already gave that id to a session started in the same second."""
    base = "live-" + time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    sid, n = base, 1
    while sid in _issued:
        n += 1
        sid = f"{base}-{n}"
    _issued.add(sid)
    return sid


@contextlib.contextmanager
def _cpu_threads(device: torch.device, threads: int) -> Iterator[None]:
    """torch's CPU thread count for one analysis (``LiveOptions.threads``), then back."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    want = threads or max(1, (os.cpu_count() or 2) // 2)
    if want != before:
        torch.set_num_threads(want)
    try:
        yield
    finally:
        if want != before:
            torch.set_num_threads(before)


class LiveAnalyser:
    """Detector and models loaded once; ``analyse(frame)`` for one frame at a time.

    Not thread-safe: one thread analyses (the server's analysis task or the source loop).
    """

    def __init__(self, opts: LiveOptions = LiveOptions()) -> None:
        self.opts = opts
        self.device = resolve_device(opts.device)
        self.models: list[EmotionModel] = [load_model(spec, self.device) for spec in opts.models]
        ids = [m.model_id for m in self.models]
        if len(set(ids)) != len(ids):
            raise ValueError(f"model ids must be unique, got {ids}")
        self.smoother = Smoother(opts.smooth)

    def warm_up(self, height: int = 480, width: int = 640) -> None:
        """Run the detector on a grey frame and every model on blank crops once, so the
        first real frame does not pay for torch's first calls (about a second on a CPU)."""
        frames = FrameBatch(
            y=torch.full((1, height, width), 128, dtype=torch.uint8, device=self.device),
            u=torch.full((1, (height + 1) // 2, (width + 1) // 2), 128, dtype=torch.uint8, device=self.device),
            v=torch.full((1, (height + 1) // 2, (width + 1) // 2), 128, dtype=torch.uint8, device=self.device),
            frame_index=torch.zeros(1, dtype=torch.int64), pts_seconds=torch.zeros(1, dtype=torch.float64),
            is_keyframe=torch.ones(1, dtype=torch.bool))
        detect_faces(frames, self.opts.detector)
        for m in self.models:
            m.predict([torch.zeros((1, 3 if s.mode == "rgb" else 1, *s.out_hw)) for s in m.crop_specs])

    def reset(self) -> None:
        """Forget the smoothing state (a new session)."""
        self.smoother = Smoother(self.opts.smooth)

    def analyse(self, frames: FrameBatch) -> tuple[FrameResult, FaceBatch, dict[str, torch.Tensor]]:
        """Detect and classify the faces of one frame, as scan does, and smooth them.

        frames: FrameBatch of exactly one frame (CPU or the analyser's device); its
        frame_index and pts_seconds are the frame's number and time in the session.
        Returns the FrameResult and what a Timeline keeps (FaceBatch and model_id -> float32
        [N, C] CPU probabilities, scan's own types).
        """
        if len(frames) != 1:
            raise ValueError(f"analyse takes one frame at a time, got a batch of {len(frames)}")
        with _cpu_threads(self.device, self.opts.threads):
            return self._analyse(frames)

    def _analyse(self, frames: FrameBatch) -> tuple[FrameResult, FaceBatch, dict[str, torch.Tensor]]:
        start = time.perf_counter()
        if frames.device != self.device:
            frames = FrameBatch(
                y=frames.y.to(self.device), u=frames.u.to(self.device), v=frames.v.to(self.device),
                frame_index=frames.frame_index, pts_seconds=frames.pts_seconds,
                is_keyframe=frames.is_keyframe, matrix=frames.matrix, full_range=frames.full_range)
        # 1. Detect faces on the whole frame (scan's detector and letterbox).
        faces = detect_faces(frames, self.opts.detector)
        # 2. Classify every face with every model (scan's crop rule via roi_resample).
        probs = classify_faces(frames, faces, self.models)
        seconds = time.perf_counter() - start
        # 3. Smooth each face over time (display only; the timeline keeps the raw values).
        t = float(frames.pts_seconds[0])
        boxes = faces.boxes.numpy()
        per_face = [{m: p[i].numpy() for m, p in probs.items()} for i in range(len(faces))]
        smooth = self.smoother(t, boxes, per_face)
        result = FrameResult(
            frame_index=int(frames.frame_index[0]), pts_seconds=t, analyse_seconds=seconds,
            faces=[FaceResult(tuple(float(x) for x in boxes[i]), float(faces.scores[i]), per_face[i], smooth[i])
                   for i in range(len(faces))],
        )
        return result, faces, probs


__all__ = ["ETHICS", "FaceResult", "FrameResult", "LiveAnalyser", "LiveOptions", "Smoother", "session_id"]
