"""The page -> server frame message, and the one-slot mailbox where the latest frame wins.

A frame travels as one binary WebSocket message::

    b"EXF1" | uint32 little-endian n | n bytes of UTF-8 JSON header | pixel payload

header: ``{"seq": int, "t": float, "w": int, "h": int, "format": str}`` and optionally
``"matrix": "bt601"|"bt709"`` and ``"full_range": bool`` (the camera's YCbCr; missing means
the decoders' default: BT.601 below 720 lines, BT.709 from 720 up, limited range).
``seq`` numbers the page's frames, ``t`` is the capture time in the page's clock
(milliseconds; echoed back so the page measures capture-to-overlay latency itself).
The payload is the frame's pixels, tightly packed, as WebCodecs' ``VideoFrame.copyTo`` lays
them out: ``I420`` (Y, then U, then V), ``NV12`` (Y, then interleaved UV), or 4 bytes per pixel
``RGBA`` / ``RGBX`` / ``BGRA`` / ``BGRX`` (e.g. a canvas's ``getImageData``). YUV frames go to
the analysis untouched; RGB frames are converted to I420 (BT.601, full range).
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import torch

from ..decode.planes import rgb_to_i420
from ..errors import ExeStreamError
from ..types import FrameBatch

MAGIC = b"EXF1"
# Longest JSON header accepted, in bytes.
MAX_HEADER = 1024
# Frame sizes accepted (each side, pixels).
MIN_SIDE, MAX_SIDE = 16, 4096
# Pixel formats accepted (registry of names: the page's check and the errors come from it).
FORMATS = ("I420", "NV12", "RGBA", "RGBX", "BGRA", "BGRX")


class FrameMessageError(ExeStreamError):
    """A frame message that cannot be read; the message says why (the server answers with it
    and goes on)."""


@dataclass(frozen=True)
class FrameHeader:
    """The header of one frame message (see the module docstring)."""

    seq: int
    t: float
    width: int
    height: int
    format: str
    matrix: str
    full_range: bool


def payload_size(fmt: str, width: int, height: int) -> int:
    """Bytes of a tightly packed frame of this format and size."""
    if fmt in ("I420", "NV12"):
        return width * height + 2 * ((width + 1) // 2) * ((height + 1) // 2)
    return 4 * width * height


def _int(header: dict, key: str, lo: int, hi: int) -> int:
    v = header.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise FrameMessageError(f"frame header field {key!r} must be an integer in {lo}..{hi}, got {v!r}")
    return v


def parse_header(data: bytes) -> tuple[FrameHeader, memoryview]:
    """Split and check a frame message: its header and a view of its payload.

    Raises FrameMessageError naming what is wrong (magic, header, size, format, payload length).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FrameMessageError(f"a frame must be a binary message, got {type(data).__name__}")
    view = memoryview(data)
    if len(view) < 8 or bytes(view[:4]) != MAGIC:
        raise FrameMessageError(f"not a frame message (it must start with {MAGIC!r})")
    (n,) = struct.unpack_from("<I", view, 4)
    if n > MAX_HEADER or 8 + n > len(view):
        raise FrameMessageError(f"frame header length {n} is out of range (at most {MAX_HEADER} "
                                f"bytes, within the {len(view)}-byte message)")
    try:
        header = json.loads(bytes(view[8:8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FrameMessageError(f"frame header is not JSON: {e}") from e
    if not isinstance(header, dict):
        raise FrameMessageError(f"frame header must be a JSON object, got {type(header).__name__}")
    seq = _int(header, "seq", 0, 2**53)
    w = _int(header, "w", MIN_SIDE, MAX_SIDE)
    h = _int(header, "h", MIN_SIDE, MAX_SIDE)
    t = header.get("t")
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not np.isfinite(t):
        raise FrameMessageError(f"frame header field 't' must be a finite number (ms), got {t!r}")
    fmt = header.get("format")
    if fmt not in FORMATS:
        raise FrameMessageError(f"unknown pixel format {fmt!r}; accepted: {', '.join(FORMATS)}")
    matrix = header.get("matrix", "bt709" if h >= 720 else "bt601")
    if matrix not in ("bt601", "bt709"):
        raise FrameMessageError(f"unknown colour matrix {matrix!r}; accepted: bt601, bt709")
    full = header.get("full_range", False)
    if not isinstance(full, bool):
        raise FrameMessageError(f"frame header field 'full_range' must be true or false, got {full!r}")
    payload = view[8 + n:]
    want = payload_size(fmt, w, h)
    if len(payload) != want:
        raise FrameMessageError(f"a {w}x{h} {fmt} frame has {want} bytes of pixels, got {len(payload)}")
    return FrameHeader(seq, float(t), w, h, fmt, matrix, full), payload


def to_frame_batch(header: FrameHeader, payload: memoryview, frame_index: int, pts_seconds: float) -> FrameBatch:
    """The frame as a one-frame CPU FrameBatch (uint8 I420 planes), the type scan analyses.

    YUV payloads are copied plane by plane unchanged; RGB(A) ones go through
    ``decode.planes.rgb_to_i420`` (BT.601, full range).
    """
    w, h = header.width, header.height
    cw, ch = (w + 1) // 2, (h + 1) // 2
    a = np.frombuffer(payload, np.uint8)
    matrix, full = header.matrix, header.full_range
    if header.format == "I420":
        y = a[: w * h].reshape(h, w)
        u = a[w * h: w * h + cw * ch].reshape(ch, cw)
        v = a[w * h + cw * ch:].reshape(ch, cw)
        y, u, v = (torch.from_numpy(p.copy()) for p in (y, u, v))
    elif header.format == "NV12":
        y = torch.from_numpy(a[: w * h].reshape(h, w).copy())
        uv = a[w * h:].reshape(ch, cw, 2)
        u, v = torch.from_numpy(uv[..., 0].copy()), torch.from_numpy(uv[..., 1].copy())
    else:
        px = a.reshape(h, w, 4)
        order = [0, 1, 2] if header.format in ("RGBA", "RGBX") else [2, 1, 0]
        rgb = torch.from_numpy(np.ascontiguousarray(px[..., order]))
        matrix, full = "bt601", True
        y, u, v = rgb_to_i420(rgb, full_range=True, matrix="bt601")
    return FrameBatch(
        y=y[None], u=u[None], v=v[None],
        frame_index=torch.tensor([frame_index], dtype=torch.int64),
        pts_seconds=torch.tensor([pts_seconds], dtype=torch.float64),
        # Each frame arrives whole, like an intra-coded frame.
        is_keyframe=torch.tensor([True]),
        matrix=matrix, full_range=full,
    )


T = TypeVar("T")


class LatestSlot(Generic[T]):
    """A mailbox of one: ``put`` replaces what has not been taken yet (the latest frame
    wins, nothing queues) and returns what it replaced; ``get`` waits for an item.
    Used from one asyncio event loop."""

    def __init__(self) -> None:
        self._item: T | None = None
        self._ready = asyncio.Event()
        self.dropped = 0

    def put(self, item: T) -> T | None:
        old, self._item = self._item, item
        if old is not None:
            self.dropped += 1
        self._ready.set()
        return old

    async def get(self) -> T:
        while self._item is None:
            self._ready.clear()
            await self._ready.wait()
        item, self._item = self._item, None
        return item


def encode_frame(seq: int, t: float, fmt: str, width: int, height: int, payload: bytes,
                 **extra: object) -> bytes:
    """A frame message (what the page sends): for tests, the benchmark and other clients."""
    header = json.dumps({"seq": seq, "t": t, "w": width, "h": height, "format": fmt, **extra}).encode()
    return MAGIC + struct.pack("<I", len(header)) + header + payload


def i420_payload(frames: FrameBatch, row: int = 0) -> bytes:
    """The I420 payload of one frame of a CPU FrameBatch (Y, U, V planes, tightly packed)."""
    return b"".join(p[row].contiguous().numpy().tobytes() for p in (frames.y, frames.u, frames.v))


__all__ = [
    "FORMATS", "FrameHeader", "FrameMessageError", "LatestSlot", "MAGIC", "encode_frame",
    "i420_payload", "parse_header", "payload_size", "to_frame_batch",
]
