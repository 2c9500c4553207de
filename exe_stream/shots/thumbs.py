"""Every frame of a film as a small RGB picture (the input of the shot detectors).

One PyAV decode of the whole film in presentation order (FFmpeg's frame and slice threads),
each frame scaled by swscale (bicubic, as FFmpeg's ``-s`` scaling that TransNetV2's reference
input used) straight from its YUV planes to ``size`` RGB. The picture is taken as stored (a
rotated film's thumbnails are not turned: cuts do not depend on orientation).

A frame's index is its ordinal in the decoder's output, which is presentation order: the same
index the sampled decoders give a frame when the film's timestamps are in order. Packets the
decoder rejects are skipped (the codec resynchronises at the next keyframe), so a damaged film
gives fewer thumbnails; ``Thumbnails.error`` then says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import av
import numpy as np

from ..errors import DecodeError
from ..types import FrameBatch


@dataclass
class ThumbChunk:
    """Consecutive frames of a film: rgb uint8 [n, H, W, 3] (CPU), pts_seconds float64 [n],
    start: presentation index of the first."""

    start: int
    rgb: np.ndarray
    pts_seconds: np.ndarray

    def __post_init__(self) -> None:
        assert self.rgb.dtype == np.uint8 and self.rgb.ndim == 4 and self.rgb.shape[3] == 3, self.rgb.shape
        assert self.pts_seconds.shape == (len(self.rgb),)

    def __repr__(self) -> str:
        return f"ThumbChunk(start={self.start}, rgb={self.rgb.shape})"


def thumbnails(path: str | Path, size: tuple[int, int], chunk: int = 256,
               problems: list[str] | None = None) -> Iterator[ThumbChunk]:
    """Yield the film's frames as ``size`` (width, height) RGB thumbnails, ``chunk`` at a time.

    Raises DecodeError naming the file when it cannot be opened or has no video stream. When
    the demuxer fails part-way, what was decoded is yielded and then the reason is appended to
    ``problems`` (or raised as DecodeError when ``problems`` is None).
    """
    path = Path(path)
    width, height = size
    try:
        container = av.open(str(path), mode="r", metadata_errors="ignore")
    except (av.FFmpegError, OSError) as e:
        raise DecodeError(path, f"shot detection cannot open the film ({e})") from e
    with container:
        streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
        if not streams:
            raise DecodeError(path, "no video stream")
        stream = streams[0]
        stream.codec_context.thread_type = "AUTO"
        tb = float(stream.time_base or 0)
        rgb: list[np.ndarray] = []
        pts: list[float] = []
        start = 0
        error = ""
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.EOFError:
                    frames = []
                except av.FFmpegError:
                    continue  # a corrupt packet: the decoder resynchronises
                for frame in frames:
                    rgb.append(frame.to_ndarray(width=width, height=height, format="rgb24",
                                                interpolation="BICUBIC"))
                    pts.append(frame.pts * tb if frame.pts is not None else float("nan"))
                    if len(rgb) == chunk:
                        yield ThumbChunk(start, np.stack(rgb), np.array(pts, np.float64))
                        start += len(rgb)
                        rgb, pts = [], []
        except av.FFmpegError as e:
            error = str(e)
        if rgb:
            yield ThumbChunk(start, np.stack(rgb), np.array(pts, np.float64))
        if error and problems is not None:
            problems.append(f"shot detection read {start + len(rgb)} frames, then: {error}")
        elif error:
            raise DecodeError(path, f"shot detection: reading stopped after {start + len(rgb)} frames ({error})")


def frames_thumbnails(batches: Iterable[FrameBatch], size: tuple[int, int]) -> Iterator[ThumbChunk]:
    """Thumbnails of decoded frames: what the shots pass uses on a GPU decoder (NVDEC, DALI),
    which decodes every frame on the device instead of PyAV on the CPU.

    batches: FrameBatches of every frame of a film in presentation order (any device). Each is
    converted to RGB on its device (``roi.yuv_to_rgb``) and scaled to ``size`` (width, height)
    by antialiased bicubic interpolation (close to FFmpeg's bicubic scaling that ``thumbnails``
    uses: mean difference 1.6-3.8 levels on the bundled clips, under 4 on the tests' edit, and
    the same cuts); only the thumbnails come to the CPU. A batch's
    frame indices and pts are kept (pictures as displayed, rotation applied).
    """
    import torch
    import torch.nn.functional as F

    from ..roi import yuv_to_rgb

    width, height = size
    for b in batches:
        with torch.no_grad():
            rgb = yuv_to_rgb(b.y, b.u, b.v, b.matrix, b.full_range)  # float32 [B, 3, H, W] in [0, 1]
            small = F.interpolate(rgb, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
            out = (small.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        yield ThumbChunk(int(b.frame_index[0]), np.ascontiguousarray(out), b.pts_seconds.cpu().numpy().astype(np.float64))
