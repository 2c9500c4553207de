"""Face tracks: faces on successive sampled frames of one shot linked into tracks (``link_faces``).

A small tracker written here (a tracking library such as ByteTrack expects dense video at its
frame rate and detector-score bands; a scan samples sparsely and already keeps only confident
faces): frame by frame within a shot, every live track predicts its box with constant velocity
(from its last two boxes), and tracks and the frame's faces are matched one-to-one by the
Hungarian method (``assign``, written here: the matrices are a few faces square, and scans
skip importing ``scipy.optimize``, which takes longer than tracking a film) on the cost
``1 - IoU``; a pair is
allowed when its IoU is at least ``min_iou``, or when its centres are closer than
``max_shift`` times the track box's side and the box sizes differ by less than ``max_scale``
(a face that moved between sparse samples). A face without a match starts a track; a track
unmatched for more than ``max_missed`` sampled frames ends. Tracks never cross a shot boundary.

Track ids are per film, numbered 0, 1, ... in order of first appearance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa
import torch

from .types import FaceBatch, FrameBatch


# The column tracks add to the faces dataset (scans with shots on).
TRACK_FIELDS = pa.schema([("track_id", pa.int32())])


@dataclass(frozen=True)
class TrackOptions:
    """How faces are linked into tracks."""

    # Boxes overlapping at least this much (IoU) may continue a track.
    min_iou: float = 0.2
    # Or: centres closer than this many track-box sides (after the motion prediction) ...
    max_shift: float = 0.75
    # ... and box sides within this factor of each other.
    max_scale: float = 1.5
    # Sampled frames a track may miss (face not found) and still continue.
    max_missed: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.min_iou <= 1.0:
            raise ValueError(f"min_iou must be in (0, 1], got {self.min_iou}")
        if self.max_shift < 0 or self.max_scale < 1:
            raise ValueError(f"max_shift must be >= 0 and max_scale >= 1, got {self.max_shift}, {self.max_scale}")
        if self.max_missed < 0:
            raise ValueError(f"max_missed must be >= 0, got {self.max_missed}")


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a [P, 4] and b [Q, 4] (x0, y0, x1, y1) -> [P, Q] (0 where both are empty)."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


@dataclass
class _Track:
    id: int
    box: np.ndarray  # last matched box
    velocity: np.ndarray  # box change per sampled frame
    missed: int = 0

    def predicted(self) -> np.ndarray:
        return self.box + self.velocity * (1 + self.missed)


def assign(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost one-to-one assignment (the Hungarian method with row and column
    potentials, O(n^2 m)): cost float [n, m] (finite). Returns (rows, cols), int64 [min(n, m)]
    each, rows ascending, such that cost[rows, cols].sum() is the least possible: what
    ``scipy.optimize.linear_sum_assignment`` returns (tested against it)."""
    cost = np.asarray(cost, np.float64)
    if cost.ndim != 2:
        raise ValueError(f"cost must be a 2-D matrix, got shape {cost.shape}")
    if not np.isfinite(cost).all():
        raise ValueError("cost matrix has non-finite entries")
    flip = cost.shape[0] > cost.shape[1]
    c = cost.T if flip else cost
    n, m = c.shape
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    match = np.zeros(m + 1, np.int64)  # match[j]: 1-based row assigned to column j (0: none)
    way = np.zeros(m + 1, np.int64)
    for i in range(1, n + 1):
        match[0] = i
        j0 = 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, bool)
        while True:  # grow an alternating tree from row i until it reaches a free column
            used[j0] = True
            i0 = match[j0]
            free = ~used[1:]
            cur = c[i0 - 1] - u[i0] - v[1:]
            better = free & (cur < minv[1:])
            minv[1:][better] = cur[better]
            way[1:][better] = j0
            cand = np.where(free, minv[1:], np.inf)
            j1 = int(np.argmin(cand)) + 1
            delta = cand[j1 - 1]
            u[match[used]] += delta
            v[used] -= delta
            minv[~used] -= delta
            j0 = j1
            if match[j0] == 0:
                break
        while j0:  # flip the alternating path
            j1 = way[j0]
            match[j0] = match[j1]
            j0 = j1
    cols = np.flatnonzero(match[1:]).astype(np.int64)
    rows = match[1:][cols] - 1
    if flip:
        rows, cols = cols, rows
    order = np.argsort(rows, kind="stable")
    return rows[order].astype(np.int64), cols[order].astype(np.int64)


def link_faces(frame_index: np.ndarray, boxes: np.ndarray, shot_index: np.ndarray,
               opts: TrackOptions = TrackOptions()) -> np.ndarray:
    """Track id of every face.

    frame_index: int64 [N] (the face's frame, presentation order); boxes: float32 [N, 4]
    normalised (x0, y0, x1, y1); shot_index: int [N], the shot of the face's frame. Faces may
    come in any order. Returns int32 [N], ids 0, 1, ... in order of first appearance.
    """
    n = len(frame_index)
    assert boxes.shape == (n, 4) and shot_index.shape == (n,)
    ids = np.full(n, -1, np.int64)
    order = np.lexsort((np.arange(n), frame_index))
    live: list[_Track] = []
    next_id = 0
    shot = None
    i = 0
    while i < n:
        j = i
        while j < n and frame_index[order[j]] == frame_index[order[i]]:
            j += 1
        rows = order[i:j]
        i = j
        if shot_index[rows[0]] != shot:  # a new shot: no track continues
            shot, live = shot_index[rows[0]], []
        det = boxes[rows].astype(np.float64)
        matched_t: set[int] = set()
        matched_d: set[int] = set()
        if live and len(det):
            pred = np.stack([t.predicted() for t in live])
            iou = box_iou(pred, det)
            side = np.sqrt(np.clip((pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1]), 1e-12, None))
            dside = np.sqrt(np.clip((det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1]), 1e-12, None))
            pc = (pred[:, :2] + pred[:, 2:]) / 2
            dc = (det[:, :2] + det[:, 2:]) / 2
            dist = np.linalg.norm(pc[:, None] - dc[None], axis=2) / side[:, None]
            ratio = np.maximum(side[:, None] / dside[None], dside[None] / side[:, None])
            ok = (iou >= opts.min_iou) | ((dist <= opts.max_shift) & (ratio <= opts.max_scale))
            cost = np.where(ok, 1.0 - iou + 0.01 * dist, 1e6)
            for t, d in zip(*assign(cost)):
                if ok[t, d]:
                    track = live[t]
                    track.velocity = (det[d] - track.box) / (1 + track.missed)
                    track.box, track.missed = det[d], 0
                    ids[rows[d]] = track.id
                    matched_t.add(t)
                    matched_d.add(d)
        for k, track in enumerate(live):
            if k not in matched_t:
                track.missed += 1
        live = [t for t in live if t.missed <= opts.max_missed]
        for d in range(len(det)):
            if d not in matched_d:
                live.append(_Track(next_id, det[d], np.zeros(4)))
                ids[rows[d]] = next_id
                next_id += 1
    # Ids in order of first appearance (faces sorted by frame): renumber to be sure.
    first_seen = {}
    for r in order:
        first_seen.setdefault(int(ids[r]), len(first_seen))
    return np.array([first_seen[int(t)] for t in ids], np.int32) if n else np.zeros(0, np.int32)


# Tracking-only frames (scan --track-every M) ------------------------------------------


def tracking_frames(first: np.ndarray, last: np.ndarray, every: int, sampled: Sequence[int]) -> list[int]:
    """Frames decoded for tracking only: every ``every``-th frame of each shot (from its first),
    less the sampled ones. first, last: int64 [S], each shot's first and last frame."""
    if every < 1:
        raise ValueError(f"--track-every must be >= 1 frame, got {every}")
    taken = set(sampled)
    extra = [int(f) for a, b in zip(first.tolist(), last.tolist()) for f in range(a, b + 1, every)]
    return sorted(set(extra) - taken)


@dataclass
class TrackingRows:
    """Faces found on tracking-only frames: their frame and box, for ``link_faces``."""

    frame_index: list[np.ndarray]
    boxes: list[np.ndarray]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.frame_index:
            return np.zeros(0, np.int64), np.zeros((0, 4), np.float32)
        return np.concatenate(self.frame_index).astype(np.int64), np.concatenate(self.boxes).astype(np.float32)


def split_tracking(frames: FrameBatch, faces: FaceBatch, probs: dict[str, torch.Tensor],
                   embeddings: dict[str, torch.Tensor] | None, sampled: set[int], keep: TrackingRows
                   ) -> tuple[FrameBatch | None, FaceBatch, dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """Split a batch holding sampled and tracking-only frames: the faces of tracking-only frames
    go to ``keep`` (frame index and box), and the batch, faces, probabilities and embeddings of
    the sampled frames are returned (frames None when the batch has no sampled frame)."""
    fi = frames.frame_index.cpu().numpy()
    is_sampled = np.array([int(f) in sampled for f in fi], bool)
    rows = faces.frame_row.numpy()
    on_sampled = is_sampled[rows] if len(rows) else np.zeros(0, bool)
    if (~on_sampled).any():
        keep.frame_index.append(fi[rows[~on_sampled]])
        keep.boxes.append(faces.boxes.numpy()[~on_sampled])
    if is_sampled.all():
        return frames, faces, probs, embeddings
    sel = torch.from_numpy(np.flatnonzero(is_sampled))
    face_sel = torch.from_numpy(np.flatnonzero(on_sampled))
    new_row = np.cumsum(is_sampled) - 1  # old frame row -> row among the sampled frames
    sub_faces = FaceBatch(
        frame_row=torch.from_numpy(new_row[rows[on_sampled]].astype(np.int64)),
        face_index=faces.face_index[face_sel], boxes=faces.boxes[face_sel],
        scores=faces.scores[face_sel], keypoints=faces.keypoints[face_sel],
    )
    sub_probs = {m: p[face_sel.to(p.device)] for m, p in probs.items()}
    sub_emb = None if embeddings is None else {m: e[face_sel] if len(e) else e for m, e in embeddings.items()}
    if not is_sampled.any():
        return None, sub_faces, sub_probs, sub_emb
    dev = sel.to(frames.device)
    sub_frames = FrameBatch(
        y=frames.y[dev], u=frames.u[dev], v=frames.v[dev], frame_index=frames.frame_index[sel.to(frames.frame_index.device)],
        pts_seconds=frames.pts_seconds[sel.to(frames.pts_seconds.device)],
        is_keyframe=frames.is_keyframe[sel.to(frames.is_keyframe.device)],
        matrix=frames.matrix, full_range=frames.full_range,
    )
    return sub_frames, sub_faces, sub_probs, sub_emb


def track_ids(frame_index: np.ndarray, boxes: np.ndarray, shot_of, extra: TrackingRows | None = None,
              opts: TrackOptions = TrackOptions()) -> np.ndarray:
    """Track ids (int32 [N]) of a film's sampled faces, linked together with the faces found on
    its tracking-only frames (``extra``), renumbered 0, 1, ... in order of first appearance
    among the sampled faces. ``shot_of`` maps frame indices to shot indices."""
    xf, xb = extra.arrays() if extra is not None else (np.zeros(0, np.int64), np.zeros((0, 4), np.float32))
    n = len(frame_index)
    fi = np.concatenate([np.asarray(frame_index, np.int64), xf])
    ids = link_faces(fi, np.concatenate([np.asarray(boxes, np.float32), xb]), shot_of(fi), opts)[:n]
    order = np.lexsort((np.arange(n), frame_index[:n]))
    first_seen: dict[int, int] = {}
    for r in order:
        first_seen.setdefault(int(ids[r]), len(first_seen))
    return np.array([first_seen[int(t)] for t in ids], np.int32) if n else np.zeros(0, np.int32)
