"""A live session's timeline: boxes and probabilities per analysed frame, in memory.

``Timeline.save(out)`` writes it in the shard schema (DESIGN.md "Shards", v1) with
``film_id`` = the session id, through the same writer a scan uses, and records the session
in ``OUT/manifest.json``, so ``exe-stream stats`` and ``report`` read sessions like films
(e.g. two practice sessions compared). ``Timeline.summary()`` is "what my face said".
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .. import __version__
from ..detect import DetectorOptions
from ..models import EmotionModel
from ..pipeline import ScanOptions, _FilmRows, _open_output, _write_film
from ..sampling import SamplingOptions
from ..types import FaceBatch, FrameBatch


@dataclass
class LabelShare:
    """One emotion in a session summary: the share of analysed frames (with a face) whose
    largest face had it on top, and its mean probability over those faces."""

    label: str
    top_share: float
    mean_prob: float


@dataclass
class Summary:
    """What my face said in a session, per model: emotions sorted by ``top_share``."""

    session_id: str
    seconds: float
    frames: int
    frames_with_face: int
    per_model: dict[str, list[LabelShare]]

    def to_message(self) -> dict[str, Any]:
        return {
            "type": "summary", "session_id": self.session_id, "seconds": round(self.seconds, 3),
            "frames": self.frames, "frames_with_face": self.frames_with_face,
            "models": {m: [{"label": s.label, "top_share": s.top_share, "mean_prob": s.mean_prob} for s in shares]
                       for m, shares in self.per_model.items()},
        }

    def text(self) -> str:
        """A few lines for a terminal."""
        lines = [f"session {self.session_id}: {self.frames} frames analysed over {self.seconds:.1f} s, "
                 f"a face in {self.frames_with_face}"]
        for m, shares in self.per_model.items():
            said = ", ".join(f"{s.label} {100 * s.top_share:.0f}%" for s in shares if s.top_share > 0)
            lines.append(f"  {m}: {said or 'no face seen'}")
        return "\n".join(lines)


class Timeline:
    """The analysed frames of one session (boxes, scores, probabilities; never pixels).

    ``source`` says where the frames came from (``"browser"``, a file path, a device), for the
    manifest; ``decoder`` is the decoder name written in the shards' metadata.
    """

    def __init__(self, session_id: str, models: Sequence[EmotionModel], detector: DetectorOptions,
                 source: str = "browser", decoder: str = "browser") -> None:
        self.session_id = session_id
        self.models = list(models)
        self.detector = detector
        self.source = source
        self.decoder = decoder
        self.started = time.time()
        self._rows = _FilmRows(self.models)
        # add() runs in the analysis thread while the page may ask for a summary or a save.
        self._lock = threading.Lock()
        self.frames = 0
        self.faces = 0
        self.last_pts = 0.0
        # Frames the source delivered but the analysis skipped (the latest frame won).
        self.dropped = 0
        # Why the source ended early, if it did (the session is then saved as "partial").
        self.error = ""

    def add(self, frames: FrameBatch, faces: FaceBatch, probs: dict[str, torch.Tensor]) -> None:
        """Keep one analysed batch: the FrameBatch's indices and times (not its planes), the
        faces and each model's float32 [N, C] probabilities."""
        with self._lock:
            self._rows.add(frames, faces, probs)
            self.frames += len(frames)
            self.faces += len(faces)
            if len(frames):
                self.last_pts = float(frames.pts_seconds[-1])

    def summary(self) -> Summary:
        with self._lock:
            return self._summary()

    def _summary(self) -> Summary:
        frames, faces = self._rows.arrays()
        largest = faces["face_index"] == 0
        per_model: dict[str, list[LabelShare]] = {}
        for m in self.models:
            parts = self._rows.probs[m.model_id]
            probs = np.concatenate(parts) if parts else np.zeros((0, len(m.labels)), np.float32)
            p = probs[largest]
            n = len(p)
            top = np.bincount(p.argmax(axis=1), minlength=len(m.labels)) / n if n else np.zeros(len(m.labels))
            mean = p.mean(axis=0) if n else np.zeros(len(m.labels))
            shares = [LabelShare(lbl, float(top[i]), float(mean[i])) for i, lbl in enumerate(m.labels)]
            per_model[m.model_id] = sorted(shares, key=lambda s: (-s.top_share, -s.mean_prob))
        return Summary(self.session_id, self.last_pts, self.frames, int(largest.sum()), per_model)

    def save(self, out: str | Path) -> Path:
        """Write the session's shards under ``out`` (frames + faces per model, film_id = the
        session id) and its manifest entry; returns ``out``. Saving again overwrites the
        session's shards with the longer timeline."""
        with self._lock:
            return self._save(Path(out))

    def _save(self, out: Path) -> Path:
        opts = ScanOptions(sampling=SamplingOptions(every=1), detector=self.detector,
                           models=tuple(m.model_id for m in self.models), resume=False)
        key = f"live:{self.session_id}"
        manifest = _open_output(out, [m.labels for m in self.models])
        _write_film(out, self.session_id, self._rows, self.models, opts, self.decoder, key)
        manifest.films[self.session_id] = {
            "path": self.source,
            "status": "partial" if self.error else "done",
            "reason": self.error,
            "frames_sampled": self.frames,
            "faces": self.faces,
            "options_key": key,
            "models": {m.model_id: m.content_hash for m in self.models},
            "timings": {"total_s": round(self.last_pts, 3)},
            "dropped_frames": self.dropped,
            "info": {"live": True, "source": self.source,
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started))},
            "fingerprint": "",
            "metadata": {"title": f"live session {self.session_id}"},
        }
        if not any(s.get("session_id") == self.session_id for s in manifest.scans):
            manifest.scans.append({
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
                "exe_stream_version": __version__, "live": True, "session_id": self.session_id,
                "models": {m.model_id: {"hash": m.content_hash, "labels": list(m.labels)} for m in self.models},
                "films": 1,
            })
        manifest.save()
        return out


__all__ = ["LabelShare", "Summary", "Timeline"]
