"""Which frames of a film are sampled (see ``select_frames``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


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
        if self.every is not None and self.every < 1:
            raise ValueError(f"every must be >= 1 frame, got {self.every}")
        if self.interval is not None and not self.interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {self.interval}")
        if self.mode not in ("exact", "keyframe"):
            raise ValueError(f"sampling mode must be 'exact' or 'keyframe', got {self.mode!r}")

    def describe(self) -> str:
        step = f"every={self.every}" if self.every is not None else f"interval={self.interval}s"
        return f"{step},{self.mode}"
