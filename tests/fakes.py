"""Stand-ins for GPU packages, so the code around them runs on the CPU.

``FakeNvc`` plays PyNvVideoCodec's ``SimpleDecoder`` with PyAV underneath: it hands out NV12
(or P016) surfaces laid out as NVDEC lays them out, numbered in presentation order, and its
scanned stream metadata lists the container's pts or, as PyNvVideoCodec 2.2.4 does, pts
synthesized from the frame count (``scanned="synthesized"``). ``fake_cuda`` makes torch's
stream calls no-ops so ``NvdecDecoder`` runs with CPU tensors.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import av
import numpy as np
import torch

from exe_stream.decode import nvdec as nvdec_module


def nv12_surface(y: np.ndarray, u: np.ndarray, v: np.ndarray, rows: Literal["ceil", "floor"] = "ceil",
                 pitch: int = 8, high_bit_depth: Literal["", "uint16", "bytes"] = "") -> torch.Tensor:
    """An NVDEC-like surface of planes y [H, W], u/v [ceil(H/2), ceil(W/2)]: luma rows, then
    interleaved chroma rows; columns rounded up to even, plus ``pitch`` padding columns.
    ``rows="floor"``: only floor(1.5 H) rows, as a surface exported with that height would be.
    ``high_bit_depth``: the planes are 10-bit values, exported as P016 words (value << 6),
    as uint16 [rows, cols] or as their little-endian bytes, uint8 [rows, 2 cols]."""
    h, w = y.shape
    ch, cw = u.shape
    cols = 2 * cw + pitch
    dtype = np.uint16 if high_bit_depth else np.uint8
    s = np.zeros((h + ch, cols), dtype)
    s[:h, :w] = y
    s[h:, 0 : 2 * cw : 2] = u
    s[h:, 1 : 2 * cw : 2] = v
    if high_bit_depth:
        s = (s << 6).astype(np.uint16)
    if rows == "floor":
        s = s[: h + h // 2]
    if high_bit_depth == "bytes":
        s = s.astype("<u2").view(np.uint8).reshape(s.shape[0], 2 * cols)
    t = torch.from_numpy(np.ascontiguousarray(s))
    return t.view(torch.int16) if high_bit_depth == "uint16" else t


def _planes(frame: av.VideoFrame) -> tuple[np.ndarray, ...]:
    out = []
    high = frame.format.name.endswith(("10le", "12le"))
    for p in frame.planes[:3]:
        dt = np.dtype("<u2") if high else np.dtype(np.uint8)
        a = np.frombuffer(p, dt, count=p.line_size * p.height // dt.itemsize)
        out.append(a.reshape(p.height, p.line_size // dt.itemsize)[:, : p.width].copy())
    return tuple(out)


class _Frame:
    def __init__(self, surface: torch.Tensor, pts: int) -> None:
        self.surface, self.pts = surface, pts

    def getPTS(self) -> int:  # noqa: N802 (PyNvVideoCodec's name)
        return self.pts

    def __dlpack__(self, stream=None):
        return self.surface.__dlpack__()

    def __dlpack_device__(self):
        return self.surface.__dlpack_device__()


class FakeNvc:
    """A PyNvVideoCodec module with ``SimpleDecoder`` decoding through PyAV (see the module)."""

    OutputColorType = SimpleNamespace(NATIVE="native")

    def __init__(self, scanned: Literal["container", "synthesized"] = "container",
                 rows: Literal["ceil", "floor"] = "ceil", high_bit_depth: Literal["uint16", "bytes"] = "uint16",
                 fail_at: int | None = None) -> None:
        self.scanned, self.rows, self.high, self.fail_at = scanned, rows, high_bit_depth, fail_at
        self.opened: list[dict] = []
        fake = self

        class SimpleDecoder:
            def __init__(self, path: str, **kwargs) -> None:
                fake.opened.append(kwargs)
                with av.open(path) as c:
                    st = c.streams.video[0]
                    frames = sorted(c.decode(st), key=lambda f: f.pts)
                self.frames = []
                for f in frames:
                    y, u, v = _planes(f)
                    high = fake.high if y.dtype == np.uint16 else ""
                    self.frames.append(_Frame(nv12_surface(y, u, v, fake.rows, high_bit_depth=high), int(f.pts)))
                d = int(frames[1].pts - frames[0].pts) if len(frames) > 1 else 1
                pts = [f.pts for f in self.frames] if fake.scanned == "container" else [i * d for i in range(len(frames))]
                self.meta = SimpleNamespace(pts=pts, num_frames=len(frames))

            def get_scanned_stream_metadata(self):
                return self.meta

            def get_batch_frames_by_index(self, indices):
                if fake.fail_at is not None and any(i >= fake.fail_at for i in indices):
                    raise RuntimeError(f"CUDA_ERROR_ILLEGAL_ADDRESS decoding frame {fake.fail_at}")
                return [self.frames[i] for i in indices]

        self.SimpleDecoder = SimpleDecoder


class FakeStream:
    """torch.cuda.Stream without a device."""

    cuda_stream = 0x5EED

    def __init__(self, *args, **kwargs) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def wait_stream(self, other) -> None:
        pass


def fake_cuda(monkeypatch, nvc: FakeNvc) -> None:
    """NvdecDecoder with ``nvc`` as PyNvVideoCodec and torch's CUDA stream calls as no-ops."""
    monkeypatch.setattr(nvdec_module, "import_nvc", lambda: nvc)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "default_stream", lambda device=None: FakeStream())


def write_offset_film(path: Path, num_frames: int = 30) -> Path:
    """H.264 64x48 at 25 fps whose pts start at 998 (time base 1/12800), as many MP4s cut from
    a longer film do: its pts are not 0, d, 2d..."""
    from fractions import Fraction

    tb = Fraction(1, 12800)
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.time_base = s.codec_context.time_base = tb
        for i in range(num_frames):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), (i * 7) % 255, np.uint8), format="rgb24")
            f = f.reformat(format="yuv420p")
            f.pts, f.time_base = 1000 + i * 512, tb
            for pkt in s.encode(f):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path
