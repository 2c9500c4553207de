"""Decoding with NVIDIA DALI: a DALI video-reader pipeline decodes and batches the sampled frames.

Needs ``pip install nvidia-dali-cuda130`` (imported here only, lazily). Two pipelines:

- **CPU** (no CUDA device, or ``DaliOptions.device="cpu"``): ``device_id=None``, the reader on
  the CPU backend (libavcodec). DALI's CPU backend decodes VP8, VP9 and MJPEG only (DALI 2.4
  operator docs); other codecs get a ``DecodeError`` saying so. Tested in CI.
- **GPU** (CUDA present): the reader on the GPU backend (NVDEC) for H.264, HEVC, AV1, MPEG-4,
  VP8, VP9 and MJPEG. UNVERIFIED: no GPU was available when this was written; only the CPU
  pipeline has run.

Which frames, and their timestamps. DALI numbers frames by sorting the packets' pts (and
drops packets with negative pts: DALI ``frames_decoder_base.cc``, ``BuildIndex``), and its
timestamps are relative to the first frame. The demux index (``decode.index.demux_index``, one demux
pass, no decoding) therefore picks the sampled presentation indices with ``select_frames``
exactly as the ``pyav`` decoder does, and gives each frame its container pts and keyframe
flag; DALI is asked for those frames by number, and every frame DALI returns is checked
against the index (its number, and its timestamp relative to the first frame, must match;
otherwise ``DecodeError``). Frame indices, pts and keyframe flags are thus those of ``pyav``.

Pixels. DALI's video reader outputs interleaved RGB or "YCbCr" [F, H, W, 3]; there is no
4:2:0 output. What each pipeline gives and how it becomes the I420 planes of FrameBatch:

- GPU: ``image_type=YCbCr`` makes DALI upsample the decoder's NV12 without a colour matrix
  (Y taken as decoded, chroma bilinear: DALI ``color_space.cu``, ``YUV_UPSAMPLE``); the
  planes keep Y as it is and average each 2x2 chroma block (``ycbcr444_to_i420``), so Y is
  exact and chroma is the original smoothed by DALI's upsampling. No matrix is applied.
- CPU: ``image_type=YCbCr`` fails in DALI 2.4's CPU decoder ("bad dst image pointers" from
  swscale), so RGB is requested. DALI converts with swscale's default matrix, BT.601, and the
  range of the decoded pixel format (full for yuvj*, else limited), whatever the stream is
  tagged (DALI ``frames_decoder_cpu.cc``: ``sws_getContext`` with no colourspace details).
  ``rgb_to_i420`` inverts exactly that conversion, so the planes are the stream's own Y'CbCr
  again (tagged with the stream's matrix and range, as ``pyav`` does). Measured against
  ``pyav`` on VP9 clips: Y identical wherever the picture's colours lie inside the RGB gamut
  (DALI clips the others to 0-255, which cannot be undone); chroma within 0.3 levels on
  average, up to 8 at sharp chroma edges (swscale's chroma interpolation). This is the
  least lossy choice DALI allows without changing FrameBatch (an RGB batch would make every
  downstream stage handle a second layout).

Damaged films: files that cannot be read fail as in ``pyav`` (same messages, from the same
demux pass). A frame DALI cannot decode ends the film: the batch it belongs to is lost (DALI's
pipeline is unusable after an error), the batches before it have been yielded, and the
``DecodeError`` names the frames and DALI's reason (``pyav`` instead skips the damaged stretch
and goes on).

Rotation (display matrix) and colour matrix/range come from the PyAV probe; the display
operations are applied to the planes with torch on the pipeline's device.

DALI's documented pitfalls, and what is done about them:

- Readers loop over their data set: a reader whose sample count is not a multiple of the
  batch size pads the last batch (``pad_last_batch``) and then starts the next epoch from
  the first sample, rewinding the file. Exactly ceil(N / batch) batches are run, the padded
  samples are dropped, and the pipeline is destroyed before it is run again; the reader's own
  prefetch is one batch.
- One decoder per pipeline: each ``frames`` call builds its own pipeline (one reader, one
  film) and destroys it at the end, so films decoded at once (``--films-at-once``) each have
  their own.
- File lists are whitespace-separated: a film whose path holds whitespace is read through a
  symbolic link with a plain name in a temporary directory.
- Frame numbers are not presentation indices for packets with negative pts, and DALI cannot
  order frames without pts: such films get a ``DecodeError`` pointing at ``--decoder pyav``
  (frames with negative pts are shifted out of DALI's numbering and checked, not guessed).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import torch

from ..errors import DecodeError, UnsupportedByBackend
from ..sampling import SamplingOptions
from ..types import FilmInfo, FrameBatch
from .planes import apply_display_ops, rgb_to_i420, ycbcr444_to_i420
from .index import IndexCache, film_info, sampled_frames

INSTALL_HINT = "pip install nvidia-dali-cuda130"

# Codecs each DALI backend decodes (DALI 2.4, fn.experimental.readers.video docs), by FFmpeg
# codec name as the PyAV probe reports it.
CPU_CODECS: tuple[str, ...] = ("vp8", "vp9", "mjpeg")
GPU_CODECS: tuple[str, ...] = ("h264", "hevc", "av1", "mpeg4", "vp8", "vp9", "mjpeg")

# Largest difference between DALI's timestamp of a frame and the index's (seconds): both are
# the same pts times the time base, DALI's in double precision.
_TS_TOLERANCE = 1e-6


def import_dali() -> Any:
    """The ``nvidia.dali`` module, or ImportError saying how to install it."""
    try:
        import nvidia.dali as dali  # noqa: F401
        import nvidia.dali.fn  # noqa: F401
        import nvidia.dali.types  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"decoder 'dali' needs NVIDIA DALI, which is not installed ({e}); "
            f"install it with: {INSTALL_HINT}"
        ) from e
    return dali


@dataclass(frozen=True)
class DaliOptions:
    """How the DALI decoder builds its pipeline."""

    # "auto": the GPU pipeline when torch sees a CUDA device, else the CPU one; "cpu" / "gpu"
    # force one ("gpu" raises without CUDA).
    device: Literal["auto", "cpu", "gpu"] = "auto"
    # CUDA device of the GPU pipeline.
    device_id: int = 0
    # DALI worker threads of the pipeline.
    num_threads: int = 2

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "gpu"):
            raise ValueError(f"DALI device must be 'auto', 'cpu' or 'gpu', got {self.device!r}")
        if self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {self.num_threads}")
        if self.device_id < 0:
            raise ValueError(f"device_id must be >= 0, got {self.device_id}")


def _first_line(e: BaseException) -> str:
    """The informative part of a DALI error (it repeats the pipeline traceback)."""
    text = str(e)
    m = re.search(r"encountered:\s*\n+(.+)", text)
    line = (m.group(1) if m else text.strip().splitlines()[0] if text.strip() else type(e).__name__)
    return re.sub(r'^Assert on ".*?" failed: ', "", line.strip())


class DaliDecoder:
    """Decoder backend "dali": sampled frames decoded and batched by a DALI pipeline.

    FrameBatches are uint8 I420 planes on the CPU (CPU pipeline) or on ``cuda:device_id``
    (GPU pipeline, unverified); see the module doc for how they are made from DALI's output.
    """

    name = "dali"

    def __init__(self, options: DaliOptions | None = None) -> None:
        self.options = options or DaliOptions()
        import_dali()
        if self.options.device == "gpu" and not torch.cuda.is_available():
            raise ValueError("DALI device 'gpu' needs a CUDA device, and torch sees none; "
                             "use device 'cpu' or 'auto'")
        # Demux indexes (exe_stream.decode.index): timestamps, probe, rotation and colour.
        self._indexes = IndexCache()

    @property
    def on_gpu(self) -> bool:
        """Whether the GPU (mixed) pipeline is used."""
        if self.options.device == "auto":
            return torch.cuda.is_available()
        return self.options.device == "gpu"

    def probe(self, path: str | Path) -> FilmInfo:
        """The probe of the demux index (``decode.index.film_info``; a demux pass and one decoded
        frame): DALI reads the same file."""
        return film_info(path, self._indexes.get(path, decode_first=True))

    def frames(
        self, path: str | Path, sampling: SamplingOptions, batch_size: int
    ) -> Iterator[FrameBatch]:
        """Yield the sampled frames of ``path`` in presentation order, ``batch_size`` at most
        per batch: uint8 y [B, H, W], u/v [B, ceil(H/2), ceil(W/2)] as displayed, on the CPU
        (CPU pipeline) or the CUDA device (GPU pipeline); frame_index int64 [B] (presentation
        index), pts_seconds float64 [B] (container pts x time base), is_keyframe bool [B].
        Raises DecodeError (``frames_decoded`` = frames yielded before it).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        path = Path(path)
        index = self._indexes.get(path, decode_first=True)
        first = index.first_frame
        codecs = GPU_CODECS if self.on_gpu else CPU_CODECS
        if index.codec not in codecs:
            where = "GPU (NVDEC)" if self.on_gpu else "CPU"
            raise UnsupportedByBackend(path, f"DALI's {where} decoder cannot decode {index.codec} "
                              f"(it decodes {', '.join(codecs)}); use --decoder pyav")
        if index.n == 0:
            raise DecodeError(path, index.truncated or "the video stream holds no frames")
        if not index.ordered:
            raise UnsupportedByBackend(path, f"DALI needs the container's timestamps to number frames "
                              f"({index.fallback}); use --decoder pyav")
        pres_pts = index.pts[index.order]
        targets = sampled_frames(path, index, sampling)
        if not targets:
            return
        # DALI's frame numbers: presentation order of the packets with pts >= 0.
        shift = int(np.count_nonzero(pres_pts < 0))
        if any(p < shift for p in targets):
            raise UnsupportedByBackend(path, "sampled frames have negative timestamps, which DALI "
                              "skips; use --decoder pyav")
        yielded = 0
        try:
            for batch in self._decode(path, index, targets, shift, batch_size, first):
                yielded += len(batch)
                yield batch
        except DecodeError as e:  # the same kind (UnsupportedByBackend stays one)
            raise type(e)(path, e.reason, yielded) from e
        if index.truncated:
            raise DecodeError(path, index.truncated, yielded)

    def _decode(self, path: Path, index, targets: list[int], shift: int, batch_size: int,
                first: dict) -> Iterator[FrameBatch]:
        dali = import_dali()
        fn, types = dali.fn, dali.types
        tb: Fraction = index.time_base
        pres_pts = index.pts[index.order]
        pres_key = index.keyframe[index.order]
        t0 = int(pres_pts[shift])  # DALI's timestamps count from its first frame
        gpu = self.on_gpu
        ops = tuple(first.get("ops", ()))
        matrix, full_range = first["matrix"], bool(first["full_range"])
        # What DALI's CPU RGB conversion assumed: swscale's default (BT.601) and the range of
        # the decoded pixel format.
        src_full = str(first.get("pix_fmt", "")).startswith("yuvj")
        device = torch.device("cuda", self.options.device_id) if gpu else torch.device("cpu")
        tmp = Path(tempfile.mkdtemp(prefix="exe-stream-dali-"))
        pipe = None
        try:
            source = path.resolve()
            if re.search(r"\s", str(source)):
                link = tmp / f"film{path.suffix}"
                os.symlink(source, link)
                source = link
            file_list = tmp / "frames.txt"
            # One sample per sampled frame: "file label start end" in frame numbers, end
            # exclusive (file_list_include_end=False).
            file_list.write_text("".join(f"{source} 0 {p - shift} {p - shift + 1}\n"
                                         for p in targets))
            n_batch = min(batch_size, len(targets))

            @dali.pipeline_def(batch_size=n_batch, num_threads=self.options.num_threads,
                               device_id=self.options.device_id if gpu else None,
                               prefetch_queue_depth=1)
            def reader():
                video, _label, frame_num, timestamps = fn.experimental.readers.video(
                    device="gpu" if gpu else "cpu", name="reader", file_list=str(file_list),
                    file_list_format="frames", file_list_include_end=False, sequence_length=1,
                    enable_frame_num="sequence", enable_timestamps=True,
                    image_type=types.YCbCr if gpu else types.RGB, random_shuffle=False,
                    pad_last_batch=True, prefetch_queue_depth=1,
                )
                return video, frame_num, timestamps

            try:
                pipe = reader()
                pipe.build()
            except RuntimeError as e:
                raise DecodeError(path, f"DALI cannot open the film: {_first_line(e)}") from e
            done = 0
            while done < len(targets):
                want = targets[done:done + n_batch]
                try:
                    if gpu:
                        # Outputs ready on torch's stream (run's first, positional argument).
                        video, frame_num, timestamps = pipe.run(
                            torch.cuda.current_stream(device).cuda_stream)
                    else:
                        video, frame_num, timestamps = pipe.run()
                except RuntimeError as e:
                    raise DecodeError(path, f"DALI could not decode frames {want[0]} to {want[-1]}: "
                                      f"{_first_line(e)}") from e
                nums = [int(np.asarray(frame_num.as_cpu()[i]).reshape(-1)[0]) for i in range(len(want))]
                secs = [float(np.asarray(timestamps.as_cpu()[i]).reshape(-1)[0]) for i in range(len(want))]
                for p, got, s in zip(want, nums, secs):
                    expected_s = float((int(pres_pts[p]) - t0) * tb)
                    if got != p - shift or abs(s - expected_s) > _TS_TOLERANCE:
                        raise DecodeError(path, f"DALI returned frame {got} at {s:.6f} s where "
                                          f"frame {p - shift} at {expected_s:.6f} s was asked: its "
                                          "frame numbering disagrees with the container's "
                                          "presentation order; use --decoder pyav")
                pixels = self._pixels(video, len(want), gpu, device)
                if gpu:
                    y, u, v = ycbcr444_to_i420(pixels)
                else:
                    y, u, v = rgb_to_i420(pixels, full_range=src_full, matrix="bt601")
                if ops:
                    y, u, v = (apply_display_ops(t, ops).contiguous() for t in (y, u, v))
                yield FrameBatch(
                    y=y, u=u, v=v,
                    frame_index=torch.tensor(want, dtype=torch.int64),
                    pts_seconds=torch.tensor([float(int(pres_pts[p]) * tb) for p in want],
                                             dtype=torch.float64),
                    is_keyframe=torch.tensor([bool(pres_key[p]) for p in want], dtype=torch.bool),
                    matrix=matrix, full_range=full_range,
                )
                done += len(want)
        finally:
            # Destroying the pipeline frees its decoder before the next film (one per pipeline).
            del pipe
            shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _pixels(video, n: int, gpu: bool, device: torch.device) -> torch.Tensor:
        """The first ``n`` samples of DALI's video output [F=1, H, W, 3] as one uint8 tensor
        [n, H, W, 3] that owns its memory (DALI reuses its output buffers on the next run)."""
        if gpu:
            # DLPack view of DALI's GPU buffer, copied on the device (unverified: no GPU here).
            frames = [torch.from_dlpack(video[i])[0] for i in range(n)]
            out = torch.stack(frames).to(device)
            # The copy must be done before the next run lets DALI write these buffers again.
            torch.cuda.current_stream(device).synchronize()
            return out
        return torch.from_numpy(np.stack([np.asarray(video[i])[0] for i in range(n)]))
