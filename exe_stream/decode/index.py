"""The demux index of a film: one demux pass (no decoding but the first frame) that learns every
frame's pts, dts, keyframe flag and duration in decode order, the presentation order, and the
first frame's size, pixel format, rotation and colour.

Every decoder backend starts from it: ``pyav`` plans its runs with it, ``nvdec`` and ``dali`` ask
their decoders for frames by the presentation indices it gives and check the frames they get
back against its timestamps. ``sampled_frames`` picks the presentation indices a sampling
option selects from it, and ``film_info`` is the probe (``Decoder.probe``) every backend reports.

Files that cannot be read fail here, before any frame, with a ``DecodeError`` that names the
file and says why (not found, empty, text, MP4 without its 'moov' box, no video stream...).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..errors import DecodeError
from . import bitstream
from ..sampling import SamplingOptions, select_frames
from ..types import FilmInfo, Matrix

__all__ = ["DemuxIndex", "IndexCache", "demux_index", "film_info", "sampled_frames"]

_NOPTS = np.iinfo(np.int64).min

# AVColorSpace values -> the matrix used downstream (BT.2020 and SMPTE 240M get the nearest
# supported one, BT.709; the original name is kept in FilmInfo.extra["colorspace"]).
_MATRIX_OF_COLORSPACE: dict[int, Matrix] = {1: "bt709", 4: "bt601", 5: "bt601", 6: "bt601",
                                            7: "bt709", 9: "bt709", 10: "bt709"}
_COLORSPACE_NAMES = {0: "rgb", 1: "bt709", 2: "unspecified", 4: "fcc", 5: "bt470bg",
                     6: "smpte170m", 7: "smpte240m", 8: "ycgco", 9: "bt2020nc", 10: "bt2020c"}
_RANGE_MPEG, _RANGE_JPEG = 1, 2
_FULL_RANGE_FORMATS = {"yuvj420p", "yuvj422p", "yuvj444p", "yuvj440p", "yuvj411p"}


@dataclass
class DemuxIndex:
    """The result of a film's demux pass (no decoding but the first frame); arrays are in
    decode order, ``order`` maps presentation index -> decode index."""

    key: tuple  # (resolved path, size, mtime_ns): the file this index describes
    stream_index: int
    time_base: Fraction
    pts: np.ndarray  # int64 [N], _NOPTS where missing
    dts: np.ndarray  # int64 [N], _NOPTS where missing
    keyframe: np.ndarray  # bool [N]
    duration: np.ndarray  # int64 [N], packet durations (0 when unknown)
    ordered: bool  # presentation order known before decoding (else: ``fallback`` says why)
    fallback: str
    order: np.ndarray  # int64 [N], presentation -> decode index (identity if not ordered)
    truncated: str  # why the file looks cut short ("" if it does not)
    container_format: str
    codec: str
    average_rate: Fraction | None
    first_frame: dict  # rotation, colour and size from the first decoded frame (probe only)
    pixels: int  # coded width x height from the stream header (0 when unknown)
    # With ``picture_types`` (what ``--shots codec`` reads; None otherwise): packet sizes
    # (int64 [N], bytes), picture types (int8 [N], bitstream.PICT_*: H.264 from the slice header,
    # other codecs I for keyframes and 0 = inter of unknown kind), and the encoder's settings
    # string values (``bitstream.encoder_settings``).
    size: np.ndarray | None = None
    pict: np.ndarray | None = None
    encoder: dict | None = None

    @property
    def n(self) -> int:
        return int(self.pts.shape[0])


# Opening ---------------------------------------------------------------------------------


def _open(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise DecodeError(path, "file not found")
    if not path.is_file():
        raise DecodeError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise DecodeError(path, "empty file (0 bytes)")
    try:
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except av.error.PermissionError as e:
        raise DecodeError(path, "cannot read the file: permission denied") from e
    except av.FFmpegError as e:
        raise DecodeError(path, _why_unopenable(path, e)) from e
    except OSError as e:
        raise DecodeError(path, f"cannot read the file: {e.strerror or e}") from e


_MP4_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"uuid", b"pdin", b"styp"}


def _top_level_boxes(path: Path) -> list[bytes]:
    """Types of the top-level boxes of an MP4/MOV file (box headers only are read)."""
    kinds, pos, size = [], 0, path.stat().st_size
    with open(path, "rb") as f:
        while pos + 8 <= size and len(kinds) < 1000:
            f.seek(pos)
            head = f.read(16)
            n, kind = struct.unpack(">I4s", head[:8])
            if n == 1 and len(head) == 16:
                n = struct.unpack(">Q", head[8:])[0]
            elif n == 0:
                n = size - pos
            if n < 8:
                break
            kinds.append(kind)
            pos += n
    return kinds


def _why_unopenable(path: Path, e: Exception) -> str:
    with open(path, "rb") as f:
        head = f.read(512)
    detail = str(getattr(e, "strerror", None) or e)
    if head[4:8] in _MP4_BOXES and b"moov" not in _top_level_boxes(path):
        return ("header missing: MP4/MOV file without its 'moov' box (the index was never "
                "written or was cut off)")
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head)
    if printable >= 0.95 * len(head):
        return "not a media file (it holds text)"
    return (f"not a recognisable media file, or its header is missing or damaged "
            f"(FFmpeg: {detail})")


def _video_stream(path: Path, container: av.container.InputContainer) -> av.video.VideoStream:
    for s in container.streams.video:
        if s.disposition & av.stream.Disposition.attached_pic:
            continue  # cover art, not a film
        if s.codec_context is None:
            raise DecodeError(path, f"video stream {s.index} uses a codec FFmpeg cannot decode")
        return s
    kinds = sorted({s.type for s in container.streams}) or ["nothing"]
    raise DecodeError(path, f"no video stream (the file holds: {', '.join(kinds)})")


def _file_key(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


# Orientation and colour ----------------------------------------------------------------


def _display_ops(frame: av.VideoFrame) -> tuple[str, ...]:
    """Operations turning the decoded picture into the displayed one, from the frame's
    display matrix: 'cclock' / 'clock' (90 degrees), 'transpose', 'antitranspose', 'hflip',
    'vflip'. Follows FFmpeg's own autorotation (fftools) for the 8 axis-aligned cases."""
    try:
        sd = frame.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX)
    except (KeyError, ValueError):
        sd = None
    if sd is None:
        return ()
    m = struct.unpack("<9i", bytes(sd)[:36])
    sx, sy = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if sx == 0 or sy == 0:
        return ()
    # av_display_rotation_get: counter-clockwise degrees; theta = clockwise in [0, 360).
    theta = round(math.degrees(math.atan2(m[1] / sy, m[0] / sx)))
    theta %= 360
    if abs(theta - 90) < 1:
        return ("transpose",) if m[3] > 0 else ("clock",)
    if abs(theta - 270) < 1:
        return ("antitranspose",) if m[3] < 0 else ("cclock",)
    if abs(theta - 180) < 1:
        return tuple(op for op, neg in (("hflip", m[0] < 0), ("vflip", m[4] < 0)) if neg)
    if theta < 1 or theta > 359:
        return ("vflip",) if m[4] < 0 else ()
    return ()  # not a multiple of 90 degrees: shown as decoded


def _rotation_of(ops: tuple[str, ...]) -> int:
    return {("cclock",): 90, ("clock",): 270, ("hflip", "vflip"): 180}.get(ops, 0)


def _colour(frame: av.VideoFrame, stream_cs: int, stream_range: int) -> tuple[Matrix, bool, int]:
    """(matrix, full_range, AVColorSpace used) of a decoded frame."""
    cs = frame.colorspace if frame.colorspace in _MATRIX_OF_COLORSPACE else stream_cs
    matrix = _MATRIX_OF_COLORSPACE.get(cs)
    if matrix is None:
        matrix = "bt709" if frame.height >= 720 else "bt601"
    rng = frame.color_range if frame.color_range in (_RANGE_MPEG, _RANGE_JPEG) else stream_range
    full = rng == _RANGE_JPEG or frame.format.name in _FULL_RANGE_FORMATS
    return matrix, full, cs


def _frame_info(frames: list[av.VideoFrame], cc: av.video.VideoCodecContext) -> dict:
    """Displayed size, pixel format, colour and display operations of the first frame."""
    if not frames:
        return {}
    f = frames[0]
    ops = _display_ops(f)
    matrix, full, cs = _colour(f, cc.colorspace, cc.color_range)
    transposed = any(op in ("cclock", "clock", "transpose", "antitranspose") for op in ops)
    w, h = (f.height, f.width) if transposed else (f.width, f.height)
    return {"width": w, "height": h, "pix_fmt": f.format.name, "matrix": matrix,
            "full_range": full, "colorspace": cs, "ops": ops}


# A stream may end this much before the duration its container announces without being
# called truncated: the container's duration covers every stream (audio often runs a little
# longer than the picture) and rounds.
_DURATION_SLACK_S = 0.5


def _announced_seconds(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    """The video's duration from the file's header (the stream's, else the container's), from
    the start of the file's timeline; None when the header gives none."""
    if stream.duration and stream.time_base:
        start = stream.start_time or 0
        return float((stream.duration) * stream.time_base) + float(start * stream.time_base) - \
            float((container.start_time or 0) / av.time_base)
    if container.duration and container.duration > 0:
        return container.duration / av.time_base
    return None


def _duration_shortfall(container, stream, pts: list[int], dur: list[int], tb: Fraction, n: int) -> str:
    """Why a file whose header gives no frame count looks cut short ("" if it does not): its
    packets (of any stream) end before the duration the header announces."""
    announced = _announced_seconds(container, stream)
    if announced is None:
        return ""
    start = (container.start_time or 0) / av.time_base
    last = int(np.argmax(pts))
    frame_s = float((dur[last] or 0) * tb) or (1.0 / float(stream.average_rate) if stream.average_rate else 0.0)
    video_end = float(pts[last] * tb) + frame_s - start
    slack = max(_DURATION_SLACK_S, 2 * frame_s)
    if video_end >= announced - slack:
        return ""
    # The picture ends early; a file whose other streams (audio) run on is not truncated.
    end = video_end
    try:
        container.seek(pts[last], stream=stream, backward=True, any_frame=False)
        for pkt in container.demux():
            if pkt.pts is not None and pkt.stream.time_base:
                end = max(end, float((pkt.pts + (pkt.duration or 0)) * pkt.stream.time_base) - start)
    except av.FFmpegError:
        pass
    if end >= announced - slack:
        return ""
    return (f"truncated: the file ends at {video_end:.2f} s of the {announced:.2f} s its header announces "
            f"({n} frames read)")


# The index -------------------------------------------------------------------------------


def _decode_quietly(cc: av.video.VideoCodecContext, pkt: av.Packet | None) -> list[av.VideoFrame]:
    """Send one packet (None: drain) and return the frames that came out; errors give none."""
    try:
        return cc.decode(pkt)
    except av.FFmpegError:  # EOFError included
        return []


def demux_index(path: str | Path, decode_first: bool = False, picture_types: bool = False) -> DemuxIndex:
    """One demux pass over ``path``'s video stream (and, with ``decode_first``, the first
    frame decoded for its size, pixel format, rotation and colour: ``first_frame``; with
    ``picture_types``, every packet's size and picture type read from its bytes, and the
    encoder's settings: ``size``, ``pict``, ``encoder``).

    A damaged or truncated container gives the index of what could be read, ``truncated``
    saying why; a file that cannot be read at all raises DecodeError naming it."""
    path = Path(path)
    with _open(path) as container:
        stream = _video_stream(path, container)
        cc = stream.codec_context
        pts, dts, key, dur = [], [], [], []
        sizes: list[int] = []
        picts: list[int] = []
        encoder: dict = {}
        h264 = cc.name == "h264"
        length_size = bitstream.avcc_length_size(cc.extradata) if h264 else 0
        if picture_types and cc.extradata:
            encoder = bitstream.encoder_settings(bytes(cc.extradata))
        first: dict = {}
        error = ""
        try:
            for pkt in container.demux(stream):
                if pkt.size == 0:
                    continue
                pts.append(_NOPTS if pkt.pts is None else pkt.pts)
                dts.append(_NOPTS if pkt.dts is None else pkt.dts)
                key.append(pkt.is_keyframe)
                dur.append(pkt.duration or 0)
                if picture_types:
                    sizes.append(pkt.size)
                    if len(sizes) == 1 and not encoder:
                        encoder = bitstream.encoder_settings(bytes(pkt))
                    if h264:
                        t = bitstream.h264_picture_type(memoryview(pkt), length_size)
                        picts.append(bitstream.PICT_I if pkt.is_keyframe and t == bitstream.PICT_UNKNOWN else t)
                    else:
                        picts.append(bitstream.PICT_I if pkt.is_keyframe else bitstream.PICT_UNKNOWN)
                if decode_first and not first and len(pts) <= 256:
                    first = _frame_info(_decode_quietly(cc, pkt), cc)
        except av.FFmpegError as e:
            error = str(e)
        if decode_first and not first:
            first = _frame_info(_decode_quietly(cc, None), cc) or {
                "width": cc.width, "height": cc.height, "pix_fmt": cc.pix_fmt or "",
                "matrix": "bt709" if cc.height >= 720 else "bt601",
                "full_range": cc.color_range == _RANGE_JPEG, "colorspace": cc.colorspace,
                "error": "no frame could be decoded while probing",
            }
        n = len(pts)
        announced = stream.frames or 0
        tb = stream.time_base or Fraction(1, 1)
        truncated = ""
        if error:
            truncated = f"damaged container: reading stopped after {n} frames ({error})"
        elif announced > n:
            end = (max(pts) - min(pts)) * tb if n and _NOPTS not in pts else 0
            truncated = (f"truncated: the file ends after {n} of the {announced} frames "
                         f"its header announces (at {float(end):.2f} s)")
        elif n and _NOPTS not in pts:
            # Containers without a frame count in their header (Matroska, WebM, ...) still
            # announce a duration: a file that ends well before it was cut short.
            truncated = _duration_shortfall(container, stream, pts, dur, tb, n)
        pts_a = np.array(pts, dtype=np.int64)
        if n == 0:
            fallback = "no packets"
        elif _NOPTS in pts:
            fallback = "pts missing"
        elif len(set(pts)) != n:
            fallback = "pts repeated"
        elif container.format.name == "avi" and cc.has_b_frames:
            # AVI stores no presentation times: with B-frames its pts are made up.
            fallback = "AVI with B-frames (no real pts)"
        else:
            fallback = ""
        ordered = not fallback
        order = np.lexsort((np.arange(n), pts_a)) if ordered else np.arange(n)
        index = DemuxIndex(
            key=_file_key(path), stream_index=stream.index, time_base=Fraction(tb),
            pts=pts_a, dts=np.array(dts, dtype=np.int64), keyframe=np.array(key, dtype=bool),
            duration=np.array(dur, dtype=np.int64), ordered=ordered, fallback=fallback,
            order=order.astype(np.int64), truncated=truncated,
            container_format=container.format.name, codec=cc.name,
            average_rate=stream.average_rate, first_frame=first,
            pixels=(cc.width or 0) * (cc.height or 0),
            size=np.array(sizes, dtype=np.int64) if picture_types else None,
            pict=np.array(picts, dtype=np.int8) if picture_types else None,
            encoder=encoder if picture_types else None,
        )
    return index


def film_info(path: str | Path, index: DemuxIndex) -> FilmInfo:
    """What a probe reports of a film from its demux index (taken with ``decode_first``):
    frame count, displayed size, rotation, duration, frame rate, colour.

    A truncated film is probed without error (``extra["warning"]`` says so)."""
    ff = index.first_frame
    n = index.n
    if n:
        span = int(index.pts.max() - index.pts.min()) if index.ordered else 0
        last = int(index.duration[index.order[-1]]) if index.ordered else 0
        duration = float((span + last) * index.time_base)
    else:
        duration = 0.0
    if index.average_rate:
        fps = float(index.average_rate)
    else:
        fps = n / duration if duration > 0 else 0.0
    if duration <= 0 and fps > 0:
        duration = n / fps
    extra = {"container": index.container_format, "time_base": str(index.time_base),
             "colorspace": _COLORSPACE_NAMES.get(ff.get("colorspace", 2), "other")}
    if ff.get("ops"):
        extra["display"] = "+".join(ff["ops"])
    if index.truncated:
        extra["warning"] = index.truncated
    if not index.ordered:
        extra["timestamps"] = f"{index.fallback}: decoded fully, in output order"
    if "error" in ff:
        extra["first_frame"] = ff["error"]
    return FilmInfo(
        path=str(path), codec=index.codec, width=ff["width"], height=ff["height"],
        rotation=_rotation_of(ff.get("ops", ())), num_frames=n,
        duration_seconds=duration, average_fps=fps, pix_fmt=ff["pix_fmt"],
        matrix=ff["matrix"], full_range=ff["full_range"], extra=extra,
    )


def sampled_frames(path: Path, index: DemuxIndex, sampling: SamplingOptions) -> list[int]:
    """The presentation indices ``sampling`` picks from a film's demux index (empty when none).
    Raises DecodeError for keyframe sampling of a stream that marks no keyframes."""
    pres_pts = index.pts[index.order]
    pres_key = index.keyframe[index.order]
    targets = select_frames(pres_pts.tolist(), pres_key.tolist(), index.time_base, sampling)
    if not targets and sampling.mode == "keyframe":
        raise DecodeError(path, "keyframe sampling: the stream marks no keyframes; use exact sampling")
    return targets


class IndexCache:
    """The demux index of the film read last (a decoder's probe and its frames share one pass;
    a changed file, by size or modification time, is read again)."""

    def __init__(self) -> None:
        self._cached: DemuxIndex | None = None

    def get(self, path: str | Path, decode_first: bool = False) -> DemuxIndex:
        """``demux_index(path, decode_first)``, reused while the file is unchanged."""
        path = Path(path)
        cached = self._cached
        if cached is not None and path.exists() and cached.key == _file_key(path) and (
            cached.first_frame or not decode_first
        ):
            return cached
        self._cached = demux_index(path, decode_first)
        return self._cached
