"""Generated test films: valid unusual ones and broken ones (PyAV only, no ffmpeg binary).

Every picture is drawn by ``draw_frame``: a moving diagonal ramp, the frame number as a row of
black/white cells (``read_counter`` reads it back, also after lossy coding) and a white
marker square in the stored picture's top-left corner (the other corners stay dark), so a
test can tell which frame came out and which way it was turned.

The ``make_*`` functions write one film into a directory and return its path; each takes a
fraction of a second at the small sizes used here.
"""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np
import torch

# Frame-number code: COUNTER_BITS cells of `cell` pixels, least significant bit first.
COUNTER_BITS = 8
DARK, LIGHT = 16, 235


def cell_size(width: int, height: int) -> int:
    """Side of one counter cell / the corner marker, in pixels of the stored picture."""
    return max(4, min(width // (COUNTER_BITS + 2), height // 6))


def draw_frame(index: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Planes of test picture ``index``: y uint8 [H, W], u, v uint8 [ceil(H/2), ceil(W/2)]."""
    c = cell_size(width, height)
    yy, xx = np.mgrid[0:height, 0:width]
    y = (64 + ((xx + yy + 3 * index) % 128)).astype(np.uint8)
    # Dark frame around the code area and all four corners.
    y[: 3 * c, :] = DARK
    y[-c:, :] = DARK
    y[:, :c] = DARK
    y[:, -c:] = DARK
    # Marker: top-left corner of the stored picture.
    y[:c, :c] = LIGHT
    for bit in range(COUNTER_BITS):
        if (index >> bit) & 1:
            x0 = (bit + 1) * c
            y[c : 2 * c, x0 : x0 + c] = LIGHT
    ch, cw = (height + 1) // 2, (width + 1) // 2
    cy, cx = np.mgrid[0:ch, 0:cw]
    u = (96 + ((cx + 2 * index) % 64)).astype(np.uint8)
    v = (96 + ((cy + index) % 64)).astype(np.uint8)
    return y, u, v


def read_counter(y: np.ndarray) -> int:
    """Frame number drawn by ``draw_frame`` from a decoded y plane [H, W] (stored orientation)."""
    h, w = y.shape
    c = cell_size(w, h)
    value = 0
    for bit in range(COUNTER_BITS):
        x0 = (bit + 1) * c
        block = y[c + c // 4 : 2 * c - c // 4, x0 + c // 4 : x0 + c - c // 4]
        if float(block.mean()) > 128:
            value |= 1 << bit
    return value


def bright_corner(y: np.ndarray) -> str:
    """Which corner of a y plane [H, W] holds the marker: 'tl', 'tr', 'bl' or 'br'."""
    h, w = y.shape
    k = max(2, min(h, w) // 20)
    corners = {
        "tl": y[:k, :k],
        "tr": y[:k, -k:],
        "bl": y[-k:, :k],
        "br": y[-k:, -k:],
    }
    return max(corners, key=lambda name: float(corners[name].mean()))


def _video_frame(index: int, width: int, height: int, pix_fmt: str) -> av.VideoFrame:
    y, u, v = draw_frame(index, width, height)
    frame = av.VideoFrame(width, height, "yuv420p")
    for plane, data in zip(frame.planes, (y, u, v)):
        view = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        view[:, : plane.width] = data
    if pix_fmt != "yuv420p":
        frame = frame.reformat(format=pix_fmt)
    return frame


def write_film(
    path: Path,
    *,
    width: int = 128,
    height: int = 96,
    num_frames: int = 60,
    fps: int = 25,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    gop: int = 25,
    bframes: int = 3,
    pts: Sequence[int] | None = None,
    time_base: Fraction | None = None,
    rotation: int = 0,
    hflip: bool = False,
    colorspace: int | None = None,
    color_range: int | None = None,
    faststart: bool = False,
    preset: str = "veryfast",
) -> Path:
    """Encode ``num_frames`` test pictures into ``path`` (container chosen by its extension).

    pts: optional presentation timestamps in ``time_base`` units (variable frame rate);
    otherwise frame i has pts i at 1/fps. rotation / hflip: display matrix, degrees
    counter-clockwise, then a left-right mirror.
    colorspace / color_range: AVColorSpace / AVColorRange values written to the stream.
    """
    path = Path(path)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=options) as container:
        rate = Fraction(fps) if pts is None else None
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        # One encoder thread: the same bitstream on every machine (x264 would otherwise cut
        # each picture into one slice per core).
        stream.codec_context.thread_count = 1
        if pts is not None:
            stream.codec_context.time_base = time_base
            stream.time_base = time_base
        if codec == "libx264":
            stream.options = {
                "preset": preset,
                "crf": "18",
                "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}",
            }
        elif codec == "libx265":
            stream.options = {
                "preset": "ultrafast",
                "x265-params": f"keyint={gop}:min-keyint={gop}:bframes={bframes}:log-level=error",
            }
        elif codec == "libvpx-vp9":
            stream.options = {"deadline": "realtime", "cpu-used": "8", "g": str(gop), "crf": "20"}
            stream.codec_context.bit_rate = 0
        if colorspace is not None:
            stream.codec_context.colorspace = colorspace
        if color_range is not None:
            stream.codec_context.color_range = color_range
        if rotation or hflip:
            stream.set_display_rotation(rotation, hflip=hflip)
        for i in range(num_frames):
            frame = _video_frame(i, width, height, pix_fmt)
            if colorspace is not None:
                frame.colorspace = colorspace
            if color_range is not None:
                frame.color_range = color_range
            if pts is not None:
                frame.pts = int(pts[i])
                frame.time_base = time_base
            else:
                frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


# Valid, unusual films ------------------------------------------------------------------


def make_h264_bframes(directory: Path, name: str = "h264_bframes.mp4", num_frames: int = 120) -> Path:
    """H.264 160x96, 25 fps, B-frames (3, pyramid), closed GOP of 30 frames (keyframes 0, 30...)."""
    return write_film(Path(directory) / name, width=160, height=96, num_frames=num_frames, gop=30)


def make_odd_dims(directory: Path) -> Path:
    """VP9 4:2:0 177x99 in WebM (odd width and height: chroma 89x50), 30 frames, keyframe
    every 10. (libx264 and libx265 refuse odd sizes in 4:2:0.)"""
    return write_film(
        Path(directory) / "odd_177x99.webm", codec="libvpx-vp9", width=177, height=99,
        num_frames=30, gop=10,
    )


def make_yuv444(directory: Path) -> Path:
    """H.264 High 4:4:4 (yuv444p) at an odd size, 177x99, 30 frames, keyframe every 10."""
    return write_film(
        Path(directory) / "yuv444_177x99.mp4", width=177, height=99, pix_fmt="yuv444p",
        num_frames=30, gop=10,
    )


def make_hevc10(directory: Path) -> Path:
    """HEVC Main10 (libx265, yuv420p10le) 128x96, 24 frames, in mp4."""
    return write_film(
        Path(directory) / "hevc10.mp4",
        codec="libx265",
        pix_fmt="yuv420p10le",
        num_frames=24,
        gop=12,
        bframes=2,
    )


# Irregular timestamps (milliseconds): steps of 20-90 ms, a pause of 500 ms after frame 20.
VFR_PTS_MS: tuple[int, ...] = tuple(
    int(t) for t in np.cumsum([0] + [20 + (i * 37) % 71 + (500 if i == 20 else 0) for i in range(59)])
)


def make_vfr(directory: Path) -> Path:
    """H.264 128x96 with variable frame rate: pts ``VFR_PTS_MS`` at time base 1/1000, B-frames."""
    return write_film(
        Path(directory) / "vfr.mp4",
        num_frames=len(VFR_PTS_MS),
        pts=VFR_PTS_MS,
        time_base=Fraction(1, 1000),
        gop=15,
    )


def make_rotated(directory: Path, degrees: int = 90, hflip: bool = False) -> Path:
    """H.264 stored 128x80, 20 frames, with a display matrix (MP4 'tkhd' matrix) that turns it
    ``degrees`` counter-clockwise and then, with ``hflip``, mirrors it left-right (PyAV's
    ``VideoStream.set_display_rotation`` semantics)."""
    return write_film(
        Path(directory) / f"rotated_{degrees}{'_hflip' if hflip else ''}.mp4",
        width=128, height=80, num_frames=20, rotation=degrees, hflip=hflip,
    )


def make_vp9_webm(directory: Path) -> Path:
    """VP9 (libvpx-vp9) 128x96, 30 frames, keyframe every 10, in WebM."""
    return write_film(Path(directory) / "vp9.webm", codec="libvpx-vp9", num_frames=30, gop=10)


def make_bt709_full(directory: Path) -> Path:
    """H.264 128x96 tagged BT.709 matrix, full range (VUI), 10 frames."""
    return write_film(
        Path(directory) / "bt709_full.mp4", num_frames=10, colorspace=1, color_range=2
    )


def make_untagged_720(directory: Path) -> Path:
    """H.264 96x720 with no colour tags (720 lines: the default matrix is BT.709), 4 frames."""
    return write_film(Path(directory) / "untagged_96x720.mp4", width=96, height=720, num_frames=4)


def make_raw_h264(directory: Path) -> Path:
    """A raw H.264 elementary stream (``.h264``: no container, so no pts), B-frames, 40 frames,
    keyframe every 10."""
    return write_film(Path(directory) / "raw.h264", num_frames=40, gop=10)


def make_avi_bframes(directory: Path) -> Path:
    """H.264 with B-frames in AVI (which stores no presentation times), 40 frames, keyframe
    every 10."""
    return write_film(Path(directory) / "bframes.avi", num_frames=40, gop=10)


# Broken files --------------------------------------------------------------------------


def make_empty(directory: Path) -> Path:
    """A zero-byte ``empty.mp4``."""
    path = Path(directory) / "empty.mp4"
    path.write_bytes(b"")
    return path


def make_text_as_mp4(directory: Path) -> Path:
    """A text file named ``notes.mp4``."""
    path = Path(directory) / "notes.mp4"
    path.write_text("These are meeting notes, not a film.\n" * 40)
    return path


def make_audio_only(directory: Path) -> Path:
    """``audio_only.mp4``: one second of AAC audio, no video stream."""
    path = Path(directory) / "audio_only.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        samples_per_frame = 1024
        t = np.arange(16000, dtype=np.float32) / 16000
        wave = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for i in range(0, 16000, samples_per_frame):
            chunk = wave[i : i + samples_per_frame][None, :]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="mono")
            frame.sample_rate = 16000
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _boxes(data: bytes) -> list[tuple[str, int, int]]:
    """Top-level MP4 boxes: (type, offset, size)."""
    out, pos = [], 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
        elif size == 0:
            size = len(data) - pos
        out.append((kind.decode("latin-1"), pos, size))
        pos += size
    return out


def _source(directory: Path, faststart: bool) -> bytes:
    buf = Path(directory) / f".source_{'fast' if faststart else 'plain'}.mp4"
    if not buf.exists():
        write_film(buf, width=128, height=96, num_frames=100, gop=20, faststart=faststart)
    return buf.read_bytes()


def make_truncated(directory: Path) -> Path:
    """``truncated.mp4``: header (moov) first, then cut at half of the file's bytes."""
    data = _source(directory, faststart=True)
    path = Path(directory) / "truncated.mp4"
    path.write_bytes(data[: len(data) // 2])
    return path


def make_corrupt_middle(directory: Path) -> Path:
    """``corrupt_middle.mp4``: 100 frames (keyframes every 20); bytes in the middle of the
    media data (around frames 45-55) overwritten with noise; header and the rest intact."""
    data = bytearray(_source(directory, faststart=True))
    mdat = next((o, s) for kind, o, s in _boxes(bytes(data)) if kind == "mdat")
    start = mdat[0] + int(mdat[1] * 0.48)
    noise = np.random.default_rng(7).integers(0, 256, size=int(mdat[1] * 0.04), dtype=np.uint8)
    data[start : start + len(noise)] = noise.tobytes()
    path = Path(directory) / "corrupt_middle.mp4"
    path.write_bytes(bytes(data))
    return path


def make_no_moov(directory: Path) -> Path:
    """``no_moov.mp4``: an MP4 with its moov (header) box removed; only ftyp + mdat remain."""
    data = _source(directory, faststart=False)
    kept = b"".join(data[o : o + s] for kind, o, s in _boxes(data) if kind != "moov")
    path = Path(directory) / "no_moov.mp4"
    path.write_bytes(kept)
    return path


def make_head_cut(directory: Path) -> Path:
    """``head_cut.mp4``: an MP4 (moov first) whose first 4 KiB are missing."""
    data = _source(directory, faststart=True)
    path = Path(directory) / "head_cut.mp4"
    path.write_bytes(data[4096:])
    return path


# For measurements ----------------------------------------------------------------------


def write_benchmark_film(
    path: Path, source: Path, num_frames: int = 500, *, keyint: int = 250, bframes: int = 3,
    preset: str = "medium", size: tuple[int, int] | None = None,
) -> Path:
    """Re-encode real footage (``source``, played forwards then backwards as often as needed)
    into ``num_frames`` frames of H.264 (x264 ``preset``, closed GOPs of ``keyint``, ``bframes``
    B-frames) at 25 fps, at the source's size or ``size`` (width, height). Takes about half a
    minute per 500 frames of 720p on 2 cores."""
    width, height = size or (None, None)
    with av.open(str(source)) as src:
        frames = [f.reformat(width, height, format="yuv420p") for f in src.decode(video=0)]
    loop = frames + frames[-2:0:-1]
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
        # Frame threads as the x264 command line uses (PyAV's default, slice threads, makes
        # x264 cut pictures into slices and, with this content, drop B-frames).
        stream.codec_context.thread_type = "FRAME"
        stream.options = {
            "preset": preset,
            "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes={bframes}",
        }
        for i in range(num_frames):
            f = loop[i % len(loop)]
            f.pict_type = av.video.frame.PictureType.NONE  # the source's I/P would be forced
            f.pts = i
            f.time_base = Fraction(1, 25)
            out.mux(stream.encode(f))
        out.mux(stream.encode(None))
    return Path(path)


class FilmSet:
    """The generated films of one test session, each written on first use into ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._made: dict[tuple, Path] = {}

    def get(self, name: str, **kwargs) -> Path:
        """The film ``make_<name>(directory, **kwargs)`` writes (made once per arguments)."""
        key = (name, tuple(sorted(kwargs.items())))
        if key not in self._made:
            self._made[key] = globals()[f"make_{name}"](self.directory, **kwargs)
        return self._made[key]

    def __getattr__(self, name: str) -> Path:
        if f"make_{name}" not in globals():
            raise AttributeError(name)
        return self.get(name)


def clip_frames(path: Path, indices: Sequence[int]) -> "FrameBatch":
    """The frames at ``indices`` (presentation order) of a clip with even dimensions, as a
    FrameBatch decoded independently of exe_stream's decoder (BT.601 limited range)."""
    from exe_stream.types import FrameBatch

    wanted = sorted(set(indices))
    ys, us, vs = [], [], []
    with av.open(str(path)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i in wanted:
                a = frame.reformat(format="yuv420p").to_ndarray()
                h, w = frame.height, frame.width
                ys.append(a[:h])
                us.append(a[h : h + h // 4].reshape(h // 2, w // 2))
                vs.append(a[h + h // 4 :].reshape(h // 2, w // 2))
            if i >= wanted[-1]:
                break
    b = len(ys)
    return FrameBatch(
        y=torch.from_numpy(np.stack(ys)), u=torch.from_numpy(np.stack(us)), v=torch.from_numpy(np.stack(vs)),
        frame_index=torch.tensor(wanted, dtype=torch.int64),
        pts_seconds=torch.zeros(b, dtype=torch.float64), is_keyframe=torch.zeros(b, dtype=torch.bool),
    )
