"""The decoder protocol: a demux-only probe, then sampled frames as YUV 4:2:0 batches."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Protocol, runtime_checkable

from ..sampling import SamplingOptions
from ..types import FilmInfo, FrameBatch


@runtime_checkable
class Decoder(Protocol):
    """A decoding backend ("pyav" on the CPU; GPU backends keep frames on their device).

    Both methods raise ``exe_stream.errors.DecodeError(path, reason, frames_decoded)`` for a
    film that cannot be (fully) decoded; ``frames_decoded`` > 0 means batches were yielded
    before the failure (a partial film).
    """

    # Registry name of the backend ("pyav", "nvdec", "dali").
    name: str

    def probe(self, path: str | Path) -> FilmInfo:
        """What a demux pass learns about the film: frame count, size, rotation, colour."""
        ...

    def frames(
        self, path: str | Path, sampling: SamplingOptions, batch_size: int
    ) -> Iterator[FrameBatch]:
        """Yield the sampled frames in presentation order, ``batch_size`` at most per batch.

        Each FrameBatch holds uint8 I420 planes y [B, H, W], u/v [B, ceil(H/2), ceil(W/2)] as
        displayed (rotation applied), on the backend's device, with the presentation index,
        the pts in seconds and the keyframe flag of the frame actually decoded. A batch may be
        shorter than ``batch_size`` where the picture size, colour matrix or range changes.
        """
        ...
