"""Shot-aware sampling: which frames to decode once a film's shots are known.

- ``per_shot_frames``: K frames per shot, the midpoints of K equal parts of the shot's usable
  stretch (its frames less ``guard`` frames at either end and less any transition frames), so
  one sample sits in the middle of the shot and more spread from there; a shot too short for K
  gives the usable frames nearest its middle.
- ``off_cuts``: every requested frame that lies on a transition or within ``guard`` frames of a
  shot boundary moves to the nearest frame that does not (the later one on a tie); moved
  samples that meet are taken once.

Both return presentation indices; the decoder then decodes exactly those frames
(``sampling.PickedFrames``), so every sample's pts is the container's own.
"""

from __future__ import annotations

import numpy as np

from . import Shots


def near_cut(shots: Shots, guard: int) -> np.ndarray:
    """bool [N]: frames on a transition or within ``guard`` frames of a shot's first or last
    frame (the film's own first and last frames are not cuts)."""
    n = shots.num_frames
    bad = shots.transition.copy()
    idx = np.arange(n)
    for first in shots.cuts:  # the frames either side of every boundary
        bad |= (idx >= first - guard) & (idx < first + guard)
    return bad


def per_shot_frames(shots: Shots, k: int, guard: int = 2) -> list[int]:
    """K presentation indices per shot (fewer for a shot shorter than K frames), ascending."""
    if k < 1:
        raise ValueError(f"per-shot samples must be >= 1, got {k}")
    bad = near_cut(shots, guard)
    out: list[int] = []
    for a, b in zip(shots.first.tolist(), shots.last.tolist()):
        usable = np.flatnonzero(~bad[a : b + 1]) + a
        if len(usable) == 0:  # a shot that is all transition or guard: its middle frame
            out.append((a + b) // 2)
            continue
        if len(usable) <= k:
            mid = (a + b) / 2
            out.extend(sorted(usable[np.argsort(np.abs(usable - mid), kind="stable")][:k].tolist()))
            continue
        pos = ((np.arange(k) + 0.5) * len(usable) / k).astype(np.int64)
        out.extend(usable[pos].tolist())
    return sorted(set(out))


def off_cuts(indices: list[int], shots: Shots, guard: int = 2) -> list[int]:
    """``indices`` with each one near a cut moved to the nearest frame that is not."""
    bad = near_cut(shots, guard)
    good = np.flatnonzero(~bad)
    if len(good) == 0:
        return sorted(set(indices))
    out = set()
    for i in indices:
        if 0 <= i < len(bad) and bad[i]:
            j = int(np.searchsorted(good, i))
            after = good[j] if j < len(good) else None
            before = good[j - 1] if j > 0 else None
            if after is None or (before is not None and i - before < after - i):
                i = int(before)
            else:
                i = int(after)
        out.add(int(i))
    return sorted(out)
