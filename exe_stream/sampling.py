"""Which frames of a film are sampled (see ``select_frames``)."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal, Sequence

from .options import check_choice, check_range


@dataclass(frozen=True)
class SamplingOptions:
    """How frames are sampled from a film.

    Exactly one of ``every`` and ``interval`` is set.
    """

    # Sample every N-th frame in presentation order (frame 0, N, 2N, ...).
    every: int | None = 100
    # Or sample the first frame at or after each multiple of this many seconds (by pts).
    interval: float | None = None
    # "exact": decode what is needed to get exactly the requested frames;
    # "keyframe": decode keyframes only, taking the keyframe nearest each requested frame.
    mode: Literal["exact", "keyframe"] = "exact"

    def __post_init__(self) -> None:
        if (self.every is None) == (self.interval is None):
            raise ValueError("set exactly one of every (frames) and interval (seconds)")
        if self.every is not None:
            check_range("every", self.every, lo=1, integer=True)
        if self.interval is not None:
            check_range("interval", self.interval, lo=0, lo_open=True, unit="seconds")
        check_choice("mode", self.mode, ("exact", "keyframe"))

    def describe(self) -> str:
        step = f"every={self.every}" if self.every is not None else f"interval={self.interval}s"
        return f"{step},{self.mode}"


@dataclass(frozen=True)
class PickedFrames(SamplingOptions):
    """Exactly these presentation indices, decoded exactly: what a stage that chooses frames
    itself (shot-aware sampling, ``exe_stream.shots.sampling``) hands the decoder. The scan's
    resume key and shard metadata keep the user's SamplingOptions, not this."""

    # Presentation indices (any order; duplicates and indices past the film are dropped).
    indices: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode != "exact":
            raise ValueError(f"picked frames are decoded exactly, got mode {self.mode!r}")

    def describe(self) -> str:
        return f"picked={len(self.indices)},exact"


def select_frames(
    pts: Sequence[int],
    keyframe_flags: Sequence[bool],
    time_base: Fraction | float,
    opts: SamplingOptions,
) -> list[int]:
    """Presentation indices of the frames to sample, ascending and without duplicates.

    pts: the presentation timestamp of every frame of the film in presentation order
    (non-decreasing ints in ``time_base`` units). keyframe_flags: per frame, in the same order,
    whether it is a keyframe (only read in keyframe mode).

    - ``every=N``: frames 0, N, 2N, ...
    - ``interval=S``: for k = 0, 1, 2, ... the first frame whose pts is at or after
      ``pts[0] + k*S`` seconds (exact rational arithmetic; correct for variable frame rate;
      a gap longer than S yields one frame, not duplicates).
    - ``PickedFrames``: its indices, sorted, without duplicates or indices past the film.
    - ``mode="keyframe"``: each of those requested frames is replaced by the nearest keyframe
      at or before it (the first keyframe when none precedes it), deduplicated. The returned
      indices are the keyframes actually decoded. No keyframes at all gives ``[]``.
    """
    n = len(pts)
    if len(keyframe_flags) != n:
        raise ValueError(f"got {n} pts but {len(keyframe_flags)} keyframe flags")
    if n == 0:
        return []
    if any(b < a for a, b in zip(pts, pts[1:])):
        raise ValueError("pts must be in presentation order (non-decreasing)")
    if isinstance(opts, PickedFrames):
        return sorted({i for i in opts.indices if 0 <= i < n})
    if opts.every is not None:
        wanted = list(range(0, n, opts.every))
    else:
        wanted = _by_interval(pts, Fraction(time_base), _exact(opts.interval))
    if opts.mode == "exact":
        return wanted
    keys = [i for i, k in enumerate(keyframe_flags) if k]
    if not keys:
        return []
    chosen = {keys[max(0, bisect.bisect_right(keys, i) - 1)] for i in wanted}
    return sorted(chosen)


def _exact(seconds: float) -> Fraction:
    # The decimal the user wrote (0.1 -> 1/10), not the binary float nearest to it.
    return Fraction(repr(float(seconds)))


def _by_interval(pts: Sequence[int], time_base: Fraction, interval: Fraction) -> list[int]:
    step = interval / time_base  # the interval in pts units (a rational)
    first, last = pts[0], pts[-1]
    out: list[int] = []
    k = 0
    while True:
        threshold = math.ceil(first + k * step)  # pts are ints: pts >= x  <=>  pts >= ceil(x)
        if threshold > last:
            return out
        i = bisect.bisect_left(pts, threshold)
        out.append(i)
        # The next interval whose start lies after this frame's pts (skips empty intervals).
        k = max(k + 1, math.floor((pts[i] - first) / step) + 1)
