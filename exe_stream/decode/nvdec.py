"""GPU decoding with NVDEC through PyNvVideoCodec: NV12 frames stay on the GPU.

UNVERIFIED: written without a GPU. Only the pure helpers (engine-count table, NV12 views,
display operations, the index mapping) have run, on the CPU; the decoding itself has not.
It needs ``pip install pynvvideocodec`` and a CUDA device; both are checked when the decoder
is made, with errors that say what is missing.

How a film is read (``NvdecDecoder.frames``):

1. The demux index (``decode.index.demux_index``: one demux pass, no decoding) gives every frame's pts
   and keyframe flag; ``select_frames`` picks the sampled presentation indices exactly as the
   ``pyav`` decoder does (exact or keyframe mode, every N frames or every S seconds).
2. PyNvVideoCodec's ``SimpleDecoder`` (random access: it seeks to the keyframe before a
   requested frame and decodes forward; PyNvVideoCodec API reference, "SimpleDecoder") is
   asked for those frames by index, ``batch_size`` at a time, with
   ``get_batch_frames_by_index``. Its frame numbering is checked, not assumed: the scanned
   stream metadata (``need_scanned_stream_metadata``) lists its frames' pts, which must equal
   the index's pts in presentation order (then index = presentation index) or in decode order
   (then the decode index is asked for); and every returned frame's ``getPTS()`` must be the
   pts of the frame asked for. Anything else is a ``DecodeError`` pointing at ``--decoder pyav``.
3. Each frame reaches torch with ``torch.from_dlpack`` (no copy; the decoder's surface is
   NV12: luma rows then interleaved UV rows). The decoder reuses its surfaces, so the batch's
   surfaces are copied once, on the GPU, into one [B, H + ceil(H/2), W] tensor, on a side
   CUDA stream (the one the decoder was given) so the copy overlaps the consumer's work on the
   default stream; the thread waits for that stream before handing the batch over. y is a view
   of the luma rows, u and v are strided views of the UV rows (uv[..., 0::2], uv[..., 1::2]).
   10-bit surfaces (P016, 16-bit words) are reduced to 8 bits by dropping the low byte (pyav
   rounds with swscale: the two can differ by one level); 4:4:4 and 4:2:2 films get a
   ``DecodeError`` (use ``--decoder pyav``).
4. The display matrix (rotation, mirroring) is applied with ``torch.rot90`` / ``flip`` /
   transposes of the planes on the GPU, and the colour matrix and range come from the stream,
   both as the PyAV probe reads them.

One NVDEC session uses one decoder engine, so a scan decodes several films at once
(``--films-at-once``); ``nvdec_engines`` says how many engines the GPU has.

DecodeError semantics follow ``pyav``: files that cannot be read fail before any frame; a
failure part-way reports the frames already yielded (``frames_decoded`` > 0: partial film);
a truncated file yields what exists, then raises.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..errors import DecodeError, UnsupportedByBackend
from ..sampling import SamplingOptions
from ..types import FilmInfo, FrameBatch
from .planes import apply_display_ops, nv12_views
from .index import IndexCache, film_info, sampled_frames

INSTALL_HINT = "pip install pynvvideocodec"

# NVDEC engines per GPU, from NVIDIA's Video Encode and Decode GPU Support Matrix; used when
# PyNvVideoCodec cannot be asked (GetDecoderCaps' "num_decoder_engines"). Matched against the
# CUDA device name, first match wins (so longer names come first).
NVDEC_ENGINES_BY_GPU: tuple[tuple[str, int], ...] = (
    ("GH200", 7), ("H200", 7), ("H100", 7), ("H800", 7), ("B200", 7), ("B100", 7),
    ("A100", 5), ("A800", 5), ("A30", 4), ("L40S", 3), ("L40", 3), ("L4", 4),
    ("A40", 2), ("A10", 2), ("T4", 2),
)

# Codecs NVDEC decodes (FFmpeg names as the PyAV probe reports them).
NVDEC_CODECS: tuple[str, ...] = ("h264", "hevc", "av1", "vp9", "vp8", "mpeg4", "mpeg2video",
                                 "mpeg1video", "mjpeg", "vc1")


def import_nvc() -> Any:
    """The ``PyNvVideoCodec`` module, or ImportError saying what is missing.

    Importing PyNvVideoCodec does more than find a package: its ``__init__`` asks the NVENC
    library (libnvidia-encode) for the driver version and raises RuntimeError where it cannot
    load (a container started without the ``video`` driver capability, no NVIDIA driver), and
    OSError where a shared library is missing. Every such failure means NVDEC cannot be used
    here, so each becomes the same ImportError (first line of the reason kept)."""
    try:
        import PyNvVideoCodec as nvc
    except ImportError as e:
        raise ImportError(
            f"decoder 'nvdec' needs PyNvVideoCodec, which is not installed ({e}); "
            f"install it with: {INSTALL_HINT}"
        ) from e
    except Exception as e:  # RuntimeError from its driver check, OSError from a missing library
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ImportError(
            f"decoder 'nvdec': PyNvVideoCodec is installed but cannot load ({type(e).__name__}: {first}); "
            "it needs the NVIDIA driver's video libraries (in a container: NVIDIA_DRIVER_CAPABILITIES "
            "must include 'video'); use --decoder pyav"
        ) from e
    return nvc


def nvdec_usable(device: torch.device) -> tuple[bool, str]:
    """Whether the nvdec decoder can be made for ``device`` here, and why not: a CUDA device,
    and PyNvVideoCodec importing (``import_nvc``)."""
    if device.type != "cuda":
        return False, f"device {device} is not CUDA"
    if importlib.util.find_spec("PyNvVideoCodec") is None:
        return False, f"PyNvVideoCodec is not installed ({INSTALL_HINT})"
    try:
        import_nvc()
    except ImportError as e:
        return False, str(e)
    return True, ""


def engines_for_gpu_name(name: str) -> int | None:
    """NVDEC engines of the GPU called ``name`` (a CUDA device name such as
    "NVIDIA H100 80GB HBM3") from ``NVDEC_ENGINES_BY_GPU``, or None when it is not listed."""
    for key, n in NVDEC_ENGINES_BY_GPU:
        if re.search(rf"(^|[^A-Za-z0-9]){re.escape(key)}($|[^A-Za-z0-9])", name, re.IGNORECASE):
            return n
    return None


def nvdec_engines(sample: str | Path | None = None, device_id: int = 0) -> int:
    """How many NVDEC engines the CUDA device ``device_id`` has: PyNvVideoCodec's
    ``GetDecoderCaps(...)["num_decoder_engines"]`` for the codec of ``sample`` (a film) when
    PyNvVideoCodec and a film are at hand, else ``NVDEC_ENGINES_BY_GPU`` by device name, else 1.
    Unverified on a GPU."""
    if sample is not None:
        try:
            nvc = import_nvc()
            dmx = nvc.CreateDemuxer(filename=str(sample))
            caps = nvc.GetDecoderCaps(gpuid=device_id, codec=dmx.GetNvCodecId(),
                                      chromaformat=dmx.ChromaFormat(), bitdepth=dmx.BitDepth())
            n = int(caps.get("num_decoder_engines", 0))
            if n > 0:
                return n
        except Exception:  # no PyNvVideoCodec, a film it cannot open, a driver without caps
            pass
    if torch.cuda.is_available():
        n = engines_for_gpu_name(torch.cuda.get_device_name(device_id))
        if n:
            return n
    return 1


def frame_numbers(scanned_pts: Sequence[int], index_pts: np.ndarray,
                  order: np.ndarray) -> str:
    """How a decoder that lists its frames' pts (``scanned_pts``, in its frame-number order)
    numbers frames, given the demux index's pts in decode order (``index_pts``) and
    presentation -> decode map ``order``: "presentation" (frame number = presentation
    index), "decode" (= decode index) or "" (neither: it cannot be used)."""
    got = np.asarray(list(scanned_pts), dtype=np.int64)
    if got.shape != index_pts.shape:
        return ""
    if np.array_equal(got, index_pts[order]):
        return "presentation"
    if np.array_equal(got, index_pts):
        return "decode"
    return ""


def stack_surfaces(surfaces: Sequence[torch.Tensor], height: int, width: int,
                   high_bit_depth: bool = False) -> torch.Tensor:
    """One uint8 tensor [B, H + ceil(H/2), 2 ceil(W/2)] holding B NV12 surfaces, copied on the
    current stream of their device (``nv12_views`` splits it into y [B, H, W] and u, v).

    Each surface is uint8 [>= H + ceil(H/2), >= 2 ceil(W/2)] (rows may be pitched; NVDEC
    rounds an odd width up to even, so the last chroma pair is there), or, for a 10/12-bit film
    (``high_bit_depth``, P016: 16-bit little-endian words), uint16 [rows, >= 2 ceil(W/2)] words
    or uint8 [rows, >= 4 ceil(W/2)] bytes, either reduced to the words' high byte.

    Raises ValueError naming the surface when it cannot hold the frame, e.g. an odd height
    exported with floor(1.5 H) rows (the last chroma row cut off)."""
    rows = height + (height + 1) // 2
    cols = 2 * ((width + 1) // 2)
    out = []
    for s in surfaces:
        if s.ndim == 3 and s.shape[-1] == 1:
            s = s[..., 0]
        if s.dtype == torch.uint16 or s.dtype == torch.int16:
            s = (s.view(torch.int16).to(torch.int32) & 0xFFFF).bitwise_right_shift(8).to(torch.uint8)
        elif high_bit_depth and s.dtype == torch.uint8 and s.ndim == 2:
            if s.shape[1] < 2 * cols:
                raise ValueError(f"a 16-bit (P016) surface of {width}x{height} needs >= {2 * cols} byte "
                                 f"columns, got uint8 {tuple(s.shape)}")
            s = s[:, 1::2]  # the high byte of each little-endian word
        if s.dtype != torch.uint8 or s.ndim != 2 or s.shape[0] < rows or s.shape[1] < cols:
            raise ValueError(f"not an NV12 surface of {width}x{height} (needs uint8 [>= {rows}, >= {cols}]): "
                             f"{str(s.dtype).removeprefix('torch.')} {tuple(s.shape)}")
        out.append(s[:rows, :cols])
    return torch.stack(out)


def hand_over(tensors: Sequence[torch.Tensor], stream: Any) -> None:
    """Tell torch's caching allocator that CUDA ``tensors`` (made on a side stream) are used on
    ``stream`` (the consumer's), so their memory is not reused before that stream is done with
    them (``Tensor.record_stream``). CPU tensors are left alone."""
    for t in tensors:
        if t.device.type == "cuda":
            t.record_stream(stream)


@dataclass(frozen=True)
class NvdecOptions:
    """How the NVDEC decoder uses PyNvVideoCodec."""

    # CUDA device that decodes (and holds the frames).
    device_id: int = 0
    # Decoders PyNvVideoCodec's SimpleDecoder keeps for reuse.
    decoder_cache_size: int = 1

    def __post_init__(self) -> None:
        if self.device_id < 0:
            raise ValueError(f"device_id must be >= 0, got {self.device_id}")
        if self.decoder_cache_size < 1:
            raise ValueError(f"decoder_cache_size must be >= 1, got {self.decoder_cache_size}")


class NvdecDecoder:
    """Decoder backend "nvdec": uint8 NV12 planes on ``cuda:device_id`` (unverified).

    FrameBatch.y is a view of the luma rows, u / v strided views of the interleaved UV rows
    (copies when a display rotation is applied)."""

    name = "nvdec"

    def __init__(self, options: NvdecOptions | None = None) -> None:
        self.options = options or NvdecOptions()
        import_nvc()
        if not torch.cuda.is_available():
            raise ValueError("decoder 'nvdec' needs a CUDA device, and torch sees none; "
                             "use --decoder pyav (or dali) on the CPU")
        self.device = torch.device("cuda", self.options.device_id)
        self._indexes = IndexCache()

    def probe(self, path: str | Path) -> FilmInfo:
        """The probe of the demux index (``decode.index.film_info``): a demux pass and one decoded
        frame (size, rotation, colour)."""
        return film_info(path, self._indexes.get(path, decode_first=True))

    def frames(
        self, path: str | Path, sampling: SamplingOptions, batch_size: int
    ) -> Iterator[FrameBatch]:
        """Yield the sampled frames of ``path`` in presentation order, ``batch_size`` at most
        per batch: uint8 y [B, H, W], u/v [B, ceil(H/2), ceil(W/2)] on the CUDA device, as
        displayed; frame_index int64 [B], pts_seconds float64 [B] (container pts x time base),
        is_keyframe bool [B] (CPU tensors). Raises DecodeError (``frames_decoded`` = frames
        yielded before it)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        path = Path(path)
        index = self._indexes.get(path, decode_first=True)
        first = index.first_frame
        if index.n == 0:
            raise DecodeError(path, index.truncated or "the video stream holds no frames")
        if index.codec not in NVDEC_CODECS:
            raise UnsupportedByBackend(path, f"NVDEC cannot decode {index.codec} (it decodes "
                              f"{', '.join(NVDEC_CODECS)}); use --decoder pyav")
        pix_fmt = str(first.get("pix_fmt", ""))
        if "444" in pix_fmt or "422" in pix_fmt:
            raise UnsupportedByBackend(path, f"the NVDEC path reads 4:2:0 films only, this one is "
                              f"{pix_fmt}; use --decoder pyav")
        if not index.ordered:
            raise UnsupportedByBackend(path, f"NVDEC frame access needs the container's timestamps "
                              f"({index.fallback}); use --decoder pyav")
        targets = sampled_frames(path, index, sampling)
        if not targets:
            return
        yielded = 0
        try:
            for batch in self._decode(path, index, targets, batch_size, first):
                yielded += len(batch)
                yield batch
        except DecodeError as e:  # the same kind (UnsupportedByBackend stays one)
            raise type(e)(path, e.reason, yielded) from e
        if index.truncated:
            raise DecodeError(path, index.truncated, yielded)

    def _decode(self, path: Path, index, targets: list[int], batch_size: int,
                first: dict) -> Iterator[FrameBatch]:
        nvc = import_nvc()
        pres_pts = index.pts[index.order]
        pres_key = index.keyframe[index.order]
        ops = tuple(first.get("ops", ()))
        high_bits = bool(re.search(r"p1[0-6]", str(first.get("pix_fmt", ""))))  # 10/12/16-bit formats
        transposed = any(op in ("cclock", "clock", "transpose", "antitranspose") for op in ops)
        # Stored (decoded) size: the probe reports the displayed one.
        h, w = (first["width"], first["height"]) if transposed else (first["height"], first["width"])
        side = torch.cuda.Stream(self.device)
        try:
            decoder = nvc.SimpleDecoder(
                str(path), gpu_id=self.options.device_id, cuda_stream=side.cuda_stream,
                use_device_memory=True, need_scanned_stream_metadata=True,
                decoder_cache_size=self.options.decoder_cache_size,
                output_color_type=nvc.OutputColorType.NATIVE,
            )
            scanned = decoder.get_scanned_stream_metadata()
        except Exception as e:  # PyNvVideoCodec raises plain Exceptions / RuntimeErrors
            raise DecodeError(path, f"NVDEC cannot open the film: {e}") from e
        numbering = frame_numbers(list(scanned.pts), index.pts, index.order)
        if not numbering:
            # PyNvVideoCodec 2.2 synthesizes the scanned pts (packet count x duration): they
            # match the container's only for pts 0, d, 2d... (offset starts, variable frame
            # rate and most MKVs differ, and its frame count may too). Its numbering cannot be
            # trusted for such a film: PyAV decodes it.
            raise UnsupportedByBackend(path, "PyNvVideoCodec's frame numbering matches neither the "
                                       "presentation nor the decode order of the container's packets")
        for start in range(0, len(targets), batch_size):
            want = targets[start:start + batch_size]
            asked = want if numbering == "presentation" else [int(index.order[p]) for p in want]
            try:
                frames = decoder.get_batch_frames_by_index(asked)
            except Exception as e:
                raise DecodeError(path, f"NVDEC could not decode frames {want[0]} to {want[-1]}: "
                                  f"{e}") from e
            if len(frames) != len(want):
                raise DecodeError(path, f"NVDEC returned {len(frames)} of the {len(want)} frames "
                                  f"asked ({want[0]} to {want[-1]})")
            for p, f in zip(want, frames):
                if int(f.getPTS()) != int(pres_pts[p]):
                    raise DecodeError(path, f"NVDEC returned the frame with pts {f.getPTS()} for "
                                      f"frame {p} (pts {int(pres_pts[p])}); use --decoder pyav")
            with torch.cuda.stream(side):
                try:
                    surface = stack_surfaces([torch.from_dlpack(f) for f in frames], h, w, high_bits)
                except ValueError as e:
                    raise UnsupportedByBackend(path, f"NVDEC's surface cannot be read: {e}") from e
                y, u, v = nv12_views(surface, h, w)
                if ops:
                    y, u, v = (apply_display_ops(t, ops) for t in (y, u, v))
            side.synchronize()  # the consumer (another thread, default stream) may read now
            # Made on the side stream, read on the consumer's (the device's default stream).
            hand_over([surface, y, u, v], torch.cuda.default_stream(self.device))
            yield FrameBatch(
                y=y, u=u, v=v,
                frame_index=torch.tensor(want, dtype=torch.int64),
                pts_seconds=torch.tensor([float(int(pres_pts[p]) * index.time_base) for p in want],
                                         dtype=torch.float64),
                is_keyframe=torch.tensor([bool(pres_key[p]) for p in want], dtype=torch.bool),
                matrix=first["matrix"], full_range=bool(first["full_range"]),
            )
