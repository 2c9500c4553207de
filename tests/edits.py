"""Test films edited from the bundled real clips at known frames (hard cuts and dissolves).

``make_edit`` scales every source frame to one size (aspect kept, letterboxed), lays the
pieces end to end, blends the last frames of a piece into the first of the next where a
dissolve is asked for, and encodes the result with x264. It returns the film and the true
transitions: for a hard cut, the first frame of the new shot; for a dissolve, the span of
blended frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np


@dataclass(frozen=True)
class Piece:
    """Frames [start, stop) of a clip; ``dissolve`` frames of it cross-fade into the next piece."""

    clip: str
    start: int
    stop: int
    dissolve: int = 0


@dataclass
class Edit:
    path: Path
    num_frames: int
    cuts: list[int]  # first frame of the new shot, for every hard cut
    dissolves: list[tuple[int, int]]  # (first, last) blended frame of every dissolve


def _clip_rgb(path: Path, start: int, stop: int, width: int, height: int) -> list[np.ndarray]:
    out = []
    with av.open(str(path)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i >= stop:
                break
            if i >= start:
                scale = min(width / frame.width, height / frame.height)
                w, h = int(frame.width * scale) // 2 * 2, int(frame.height * scale) // 2 * 2
                rgb = frame.to_ndarray(width=w, height=h, format="rgb24")
                canvas = np.zeros((height, width, 3), np.uint8)
                y0, x0 = (height - h) // 2, (width - w) // 2
                canvas[y0 : y0 + h, x0 : x0 + w] = rgb
                out.append(canvas)
    if len(out) != stop - start:
        raise ValueError(f"{path} has fewer than {stop} frames")
    return out


# The encoder make_edit uses by default: x264 as FFmpeg sets it up (scene-cut keyframes on).
X264 = ("libx264", {"crf": "20", "preset": "veryfast", "g": "50"})


def make_edit(path: Path, clips: Path, pieces: Sequence[Piece], width: int = 320, height: int = 180,
              fps: int = 25, encoder: tuple[str, dict[str, str]] = X264) -> Edit:
    """Write the edit of ``pieces`` (clips named by file name under ``clips``) to ``path``,
    encoded with ``encoder`` (FFmpeg codec name, its options; the container from the suffix)."""
    frames: list[np.ndarray] = []
    cuts: list[int] = []
    dissolves: list[tuple[int, int]] = []
    pending = 0  # frames of the previous piece that fade into this one
    for k, piece in enumerate(pieces):
        rgb = _clip_rgb(clips / piece.clip, piece.start, piece.stop, width, height)
        if k:
            if pending:
                start = len(frames) - pending
                for j in range(pending):
                    a = (j + 1) / (pending + 1)  # weight of the new piece
                    frames[start + j] = np.round((1 - a) * frames[start + j] + a * rgb[j]).astype(np.uint8)
                dissolves.append((start, len(frames) - 1))
                rgb = rgb[pending:]
            else:
                cuts.append(len(frames))
        frames.extend(rgb)
        pending = piece.dissolve
    with av.open(str(path), "w") as out:
        s = out.add_stream(encoder[0], rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.time_base = Fraction(1, fps)
        s.options = dict(encoder[1])
        for rgb in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    return Edit(path, len(frames), cuts, dissolves)


def f1(found: Sequence[int], edit: Edit, tolerance: int = 2) -> tuple[float, int, int, int]:
    """(F1, true positives, false positives, false negatives) of detected shot starts ``found``
    against the edit's transitions: a hard cut at k is found by a start within ``tolerance``
    frames of k; a dissolve (a, b) by a start in [a - tolerance, b + 1 + tolerance]. Each
    detection matches at most one transition."""
    truth = [(k - tolerance, k + tolerance) for k in edit.cuts]
    truth += [(a - tolerance, b + 1 + tolerance) for a, b in edit.dissolves]
    free = sorted(found)
    tp = 0
    for lo, hi in truth:
        hit = next((c for c in free if lo <= c <= hi), None)
        if hit is not None:
            free.remove(hit)
            tp += 1
    fp, fn = len(free), len(truth) - tp
    score = 2 * tp / (2 * tp + fp + fn) if truth or found else 1.0
    return score, tp, fp, fn


def make_two_faces(path: Path, clips: Path, photo: Path, shot_frames: int = 40, shots: int = 3,
                   fps: int = 25, size: int = 220, drift: int = 1) -> list[int]:
    """Two real faces side by side: the carphone clip's talking face and ``photo`` (``size``
    pixels square, moving ``drift`` pixels to the right per frame), swapped left/right at every
    hard cut. Returns the cut frames; in even shots the clip's face is on the left, in odd
    shots on the right."""
    height, half = 270, 320
    clip = _clip_rgb(clips / "carphone_pristine.mp4", 0, 120, half, height)
    with av.open(str(photo)) as c:
        still = next(c.decode(video=0)).to_ndarray(width=size, height=size, format="rgb24")
    frames = []
    for k in range(shot_frames * shots):
        s = k // shot_frames
        right = np.zeros((height, half, 3), np.uint8)
        dx = min(half - size, drift * (k % shot_frames))
        dy = (height - size) // 2
        right[dy : dy + size, dx : dx + size] = still
        left = clip[k % len(clip)]
        frames.append(np.concatenate([left, right] if s % 2 == 0 else [right, left], axis=1))
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=fps)
        st.width, st.height, st.pix_fmt = 2 * half, height, "yuv420p"
        st.options = {"crf": "18", "preset": "veryfast", "g": "50"}
        for rgb in frames:
            for pkt in st.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    return [shot_frames * s for s in range(1, shots)]
