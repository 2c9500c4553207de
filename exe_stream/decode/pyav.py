"""CPU decoding with PyAV (FFmpeg): sampled frames as I420 planes with their real timestamps.

How a film is read (``PyAVDecoder.frames``):

1. A demux-only pass (no decoding, no packet data kept) learns every frame's pts, dts and
   keyframe flag in decode order. Sorting by pts gives the presentation order;
   ``select_frames`` picks the sampled presentation indices from it. ``probe`` runs the same
   pass (and decodes the first frame for rotation and colour); ``frames`` reuses its result
   when the file has not changed.
2. The needed packets are grouped into *runs*, each starting at a keyframe:
   - exact mode: a sampled frame needs the packets from the last keyframe at or before it
     (in decode order, with a pts not after the frame's, so open-GOP leading pictures start
     one GOP earlier) up to its own packet. Runs that overlap are merged, and with a single
     decoder (below) runs that touch too; where the next run's
     keyframe lies beyond the current run's end, the packets in between (the tail of a GOP,
     or whole GOPs with no sample) are never decoded. Inside a run, packets of frames that
     are not sampled are sent with ``skip_frame = "NONREF"``: the decoder drops them if no
     other frame refers to them (B-frames), and decodes them otherwise.
   - keyframe mode: only the sampled keyframes' packets are sent (as they are: with
     ``skip_frame = "NONKEY"`` FFmpeg's H.264 decoder would drop a container keyframe that is
     a non-IDR I-frame without a recovery point, and nothing else is sent anyway).
   Between runs the decoder is drained and flushed; a gap of at least
   ``PyAVOptions.seek_min_packets`` packets is crossed with a container seek (checked: a seek
   that lands after the wanted keyframe falls back to reading from the start), a shorter one
   by reading packets without decoding them. Decoding a run from its keyframe after a flush
   is what a full decode does from there, so the sampled planes are bit-identical to a plain
   full decode (tested).
   Runs are independent, so they are decoded at once by ``PyAVOptions.run_workers`` threads
   (default: one per core, at most 4), each with its own container and single-threaded
   decoder (FFmpeg releases the GIL while it demuxes and decodes); their sampled frames are
   handed back in run order, a bounded number waiting. A frame-threaded decoder would restart
   its pipeline at every run: on 2 cores (1080p H.264, one sample every 100 frames) the
   workers are 1.6x faster. Dense sampling (more sampled frames per run than may wait), a
   single run, or ``run_workers = 1`` uses one decoder threaded as the options say.
3. Only sampled frames are converted: planes are read straight from the decoder's buffers
   (line padding cut off); other pixel formats (4:4:4, 4:2:2, 10-bit, NV12, gray...) are
   reformatted to 8-bit yuv420p by swscale without changing matrix or range; the display
   matrix (rotation and mirroring) is applied to the planes; the colour matrix and range
   come from the frame, else the stream, else the defaults (BT.601 below 720 lines, BT.709
   from 720 up; limited range).

Damaged films (the reason always names the file; ``frames_decoded`` counts the sampled
frames yielded before the error, so > 0 means a partial film):

- not found / not a file / empty / not a media file / header missing / no video stream:
  ``DecodeError`` from ``probe`` and ``frames`` before any frame.
- corrupt packets in the middle: the decoder's error on that packet is recorded and
  decoding goes on (the codec resynchronises at the next keyframe at the latest); every
  sampled frame that could not be decoded is recorded in ``last_stats.missing`` and, after
  everything decodable has been yielded, ``DecodeError`` reports how many were lost and
  where. Frames are never substituted, so no sample is silently dropped or moved.
- truncated files (fewer packets than the header announces, or the demuxer failing): the
  frames that exist are sampled and yielded, then ``DecodeError`` says where the file ends.
- streams whose pts are missing or repeated cannot be put in presentation order before
  decoding: they are decoded fully, in the decoder's output order (index = output ordinal),
  with the same sampling rules applied on the fly (recorded in ``last_stats.fallback``).
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Literal

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

from ..errors import DecodeError
from .index import (
    _NOPTS, DemuxIndex, IndexCache, _colour, _display_ops, _open, film_info, sampled_frames,
)
from ..sampling import PickedFrames, SamplingOptions
from ..types import FilmInfo, FrameBatch, Matrix

# 4:2:0 8-bit formats whose planes are used as they are (the j ones are full range).
_I420 = {"yuv420p": False, "yuvj420p": True}


@dataclass(frozen=True)
class PyAVOptions:
    """How the PyAV decoder uses FFmpeg."""

    # FFmpeg threading of a film's single decoder (see run_workers): "AUTO" (frame and slice
    # threads), "FRAME", "SLICE" or "NONE". Frame threads stay bit-exact with per-packet
    # skip_frame and the drains between runs (tested); on 2 idle cores they decode 720p H.264
    # about 1.4x faster than one thread.
    thread_type: Literal["AUTO", "FRAME", "SLICE", "NONE"] = "AUTO"
    # Decoder threads; 0 lets FFmpeg pick (one per core).
    threads: int = 0
    # Exact mode: send packets of frames that are not sampled with skip_frame NONREF, so the
    # decoder drops the ones no other frame refers to.
    skip_nonref: bool = True
    # A gap of at least this many packets between runs is crossed by seeking, a shorter one by
    # reading (not decoding) the packets.
    seek_min_packets: int = 64
    # Exact and keyframe modes: runs decoded at once, each worker thread with its own demuxer
    # and single-threaded decoder (runs start at keyframes, so they are independent; restarting
    # a frame-threaded decoder at every run wastes its threads). 0 = one per core, at most 4;
    # 1 = one decoder for all runs, threaded as ``thread_type`` and ``threads`` say.
    run_workers: int = 0

    def __post_init__(self) -> None:
        if self.thread_type not in ("AUTO", "FRAME", "SLICE", "NONE"):
            raise ValueError(
                f"thread_type must be 'AUTO', 'FRAME', 'SLICE' or 'NONE', got {self.thread_type!r}"
            )
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0 = automatic), got {self.threads}")
        if self.seek_min_packets < 1:
            raise ValueError(f"seek_min_packets must be >= 1, got {self.seek_min_packets}")
        if self.run_workers < 0:
            raise ValueError(f"run_workers must be >= 0 (0 = automatic), got {self.run_workers}")


@dataclass
class DecodeStats:
    """Counters of the last ``frames`` call (for benchmarks and profiling)."""

    packets: int = 0  # video packets in the film (demux pass)
    packets_read: int = 0  # packets read while decoding (read, whether decoded or not)
    packets_fed: int = 0  # packets sent to the decoder
    frames_decoded: int = 0  # frames the decoder returned
    frames_skipped: int = 0  # frames never decoded: packets - frames_decoded
    frames_sampled: int = 0  # frames yielded
    runs: int = 0  # decoded stretches (each starts at a keyframe after a flush)
    workers: int = 0  # threads that decoded runs, each with its own decoder (1: one decoder)
    seeks: int = 0  # container seeks
    seeks_failed: int = 0  # seeks that missed (then the film is read through from the start)
    bad_packets: int = 0  # packets the decoder rejected as corrupt
    missing: list[int] = field(default_factory=list)  # sampled indices that did not decode
    fallback: str = ""  # why the film was decoded fully in output order, if it was
    index_seconds: float = 0.0  # demux pass (0 when probe's pass was reused)
    decode_seconds: float = 0.0  # reading, decoding, converting (wall time in frames(), without
    #                              the time the consumer spent between batches)
    convert_seconds: float = 0.0  # plane extraction, reformatting, rotation, batching (summed
    #                               over the workers)

    def add(self, other: DecodeStats) -> None:
        """Add the counters of ``other`` (a worker's, for one run) to these."""
        for f in ("packets_read", "packets_fed", "frames_decoded", "runs", "seeks",
                  "seeks_failed", "bad_packets", "convert_seconds"):
            setattr(self, f, getattr(self, f) + getattr(other, f))


# Opening -------------------------------------------------------------------------------


def _configure(stream: av.video.VideoStream, opts: PyAVOptions) -> None:
    cc = stream.codec_context
    cc.thread_type = opts.thread_type
    cc.thread_count = opts.threads


# Orientation and colour ----------------------------------------------------------------


def _apply_ops(a: np.ndarray, ops: tuple[str, ...]) -> np.ndarray:
    """Apply display operations to a plane [H, W] (views, no copy)."""
    for op in ops:
        if op == "cclock":
            a = np.rot90(a, 1)
        elif op == "clock":
            a = np.rot90(a, -1)
        elif op == "transpose":
            a = a.T
        elif op == "antitranspose":
            a = a[::-1, ::-1].T
        elif op == "hflip":
            a = a[:, ::-1]
        elif op == "vflip":
            a = a[::-1, :]
    return a


def _plane(p: av.video.plane.VideoPlane) -> np.ndarray:
    """A uint8 [height, width] view of a plane (padding at the end of each line cut off)."""
    a = np.frombuffer(p, np.uint8, count=p.line_size * p.height)
    return a.reshape(p.height, p.line_size)[:, : p.width]


@dataclass
class _Sample:
    index: int
    pts_seconds: float
    keyframe: bool
    planes: tuple[np.ndarray, np.ndarray, np.ndarray]  # views, displayed orientation
    matrix: Matrix
    full_range: bool
    frame: av.VideoFrame  # keeps the buffers the views point into alive


class _Converter:
    """Turns decoded frames into samples; one swscale context reused for the whole film."""

    def __init__(self, stream_colorspace: int, stream_range: int) -> None:
        self.colorspace, self.range = stream_colorspace, stream_range
        self.reformatter = VideoReformatter()
        # Display operations by the frame's rotation in degrees. Reading ``frame.side_data``
        # makes a reference cycle in PyAV (the frame caches a container that points back at
        # it), so such a frame and its decoder buffer (3 MiB at 1080p) live until a full
        # garbage collection: read per frame, that grew memory by one frame per sample.
        # ``frame.rotation`` reads the same display matrix without the cycle, so the whole
        # matrix (which also says whether the picture is mirrored) is read once per rotation.
        self._ops: dict[int, tuple[str, ...]] = {}

    def display_ops(self, frame: av.VideoFrame) -> tuple[str, ...]:
        rotation = frame.rotation
        if rotation not in self._ops:
            self._ops[rotation] = _display_ops(frame)
        return self._ops[rotation]

    def __call__(self, frame: av.VideoFrame, index: int, pts_seconds: float,
                 keyframe: bool) -> _Sample:
        return _sample(frame, index, pts_seconds, keyframe, self)


def _sample(frame: av.VideoFrame, index: int, pts_seconds: float, keyframe: bool,
            conv: _Converter) -> _Sample:
    matrix, full, _ = _colour(frame, conv.colorspace, conv.range)
    src = frame
    if frame.format.name not in _I420:
        # Chroma subsampling and bit depth only: matrix and range are left as they are.
        src = conv.reformatter.reformat(frame, format="yuv420p")
    ops = conv.display_ops(frame)
    planes = tuple(_apply_ops(_plane(p), ops) for p in src.planes[:3])
    return _Sample(index, pts_seconds, keyframe, planes, matrix, full, src)


class _Batcher:
    """Collects samples into FrameBatches of at most ``size`` frames with one shape,
    matrix and range."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: list[_Sample] = []

    def add(self, s: _Sample) -> Iterator[FrameBatch]:
        if self.items:
            first = self.items[0]
            if (first.planes[0].shape != s.planes[0].shape or first.matrix != s.matrix
                    or first.full_range != s.full_range):
                yield from self.flush()
        self.items.append(s)
        if len(self.items) >= self.size:
            yield from self.flush()

    def flush(self) -> Iterator[FrameBatch]:
        if not self.items:
            return
        items, self.items = self.items, []
        y, u, v = (torch.from_numpy(np.stack([s.planes[i] for s in items])) for i in range(3))
        yield FrameBatch(
            y=y, u=u, v=v,
            frame_index=torch.tensor([s.index for s in items], dtype=torch.int64),
            pts_seconds=torch.tensor([s.pts_seconds for s in items], dtype=torch.float64),
            is_keyframe=torch.tensor([s.keyframe for s in items], dtype=torch.bool),
            matrix=items[0].matrix, full_range=items[0].full_range,
        )


# Reading packets -----------------------------------------------------------------------


class _Reader:
    """Packets of the video stream in decode order, identified by their decode index, with
    ``goto`` to position at a packet by seeking (verified) or reading through. ``goto`` only
    moves forward. Readers of one film share ``seek_missed``: once a seek has missed, every
    reader reads through instead."""

    def __init__(self, path: Path, index: DemuxIndex, opts: PyAVOptions, stats: DecodeStats,
                 dec_of_pts: dict[int, int], seek_missed: threading.Event) -> None:
        self.path, self.index, self.opts, self.stats = path, index, opts, stats
        self.dec_of_pts = dec_of_pts
        self.seek_missed = seek_missed
        self.error = ""  # the demuxer's error, if reading stopped on one
        self.container: av.container.InputContainer | None = None
        self._open()

    def _open(self) -> None:
        if self.container is not None:
            self.container.close()
        self.container = _open(self.path)
        self.stream = self.container.streams[self.index.stream_index]
        _configure(self.stream, self.opts)
        self._it = self._packets()
        self._ahead: tuple[int, av.Packet] | None = None
        self.pos = 0  # decode index of the next packet (before a seek: exact)

    @property
    def codec(self) -> av.video.VideoCodecContext:
        return self.stream.codec_context

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None

    def _packets(self) -> Iterator[tuple[int, av.Packet]]:
        try:
            for pkt in self.container.demux(self.stream):
                if pkt.size == 0 or pkt.pts is None:
                    continue
                d = self.dec_of_pts.get(int(pkt.pts))
                if d is not None:
                    self.stats.packets_read += 1
                    yield d, pkt
        except av.FFmpegError as e:
            self.error = str(e)

    def push_back(self, item: tuple[int, av.Packet]) -> None:
        self._ahead, self.pos = item, item[0]

    def next(self) -> tuple[int, av.Packet] | None:
        if self._ahead is not None:
            item, self._ahead = self._ahead, None
        else:
            item = next(self._it, None)
        if item is not None:
            self.pos = item[0] + 1
        return item

    def _seek(self, d: int) -> bool:
        """Seek to at or before packet ``d`` (a keyframe). Demuxers index by pts (MP4,
        Matroska) or dts, so both are tried; a seek that lands after ``d`` is a miss."""
        for ts in dict.fromkeys(int(t) for t in (self.index.pts[d], self.index.dts[d]) if t != _NOPTS):
            try:
                self.container.seek(ts, stream=self.stream, backward=True)
            except av.FFmpegError:
                return False
            self.stats.seeks += 1
            self._it = self._packets()
            self._ahead = next(self._it, None)
            if self._ahead is not None and self._ahead[0] <= d:
                return True
        return False

    def goto(self, d: int) -> None:
        """Make ``next`` return the packet with decode index ``d`` (or the first after it).
        Only called between runs (the decoder is drained and flushed)."""
        if self._ahead is not None and self._ahead[0] >= d:
            return
        if not self.seek_missed.is_set() and d - self.pos >= self.opts.seek_min_packets:
            if not self._seek(d):
                self.stats.seeks_failed += 1
                self.seek_missed.set()  # read through from the start instead, from now on
                self._open()
        while True:
            item = self.next()
            if item is None or item[0] >= d:
                self._ahead = item
                return


@dataclass
class _Run:
    start: int  # decode index of the keyframe the run starts at
    end: int  # decode index of the last packet the run needs
    feed_all: bool  # exact mode: feed every packet in [start, end]; keyframe: only targets


def _exact_runs(index: DemuxIndex, target_dec: list[int], merge_touching: bool) -> list[_Run]:
    """The union of the stretches [keyframe, target] the targets need, in decode order.
    Overlapping stretches are merged; touching ones too if ``merge_touching`` (one decoder:
    a flush fewer), else they stay apart (runs decoded at once)."""
    keys = np.flatnonzero(index.keyframe)
    needs = []
    for d in target_dec:
        j = int(np.searchsorted(keys, d, side="right")) - 1
        while j >= 0 and index.pts[keys[j]] > index.pts[d]:
            j -= 1  # open-GOP leading picture: start at the keyframe before
        needs.append((int(keys[j]) if j >= 0 else 0, d))
    runs: list[_Run] = []
    for start, d in sorted(needs):
        if runs and start <= runs[-1].end + (1 if merge_touching else 0):
            runs[-1].end = max(runs[-1].end, d)
        else:
            runs.append(_Run(start, d, True))
    return runs


def _keyframe_runs(target_dec: list[int], gap: int) -> list[_Run]:
    runs: list[_Run] = []
    for d in sorted(target_dec):
        if runs and d - runs[-1].end < gap:
            runs[-1].end = d
        else:
            runs.append(_Run(d, d, False))
    return runs


# Decoding runs -------------------------------------------------------------------------

# Threading of each worker's decoder when runs are decoded at once: measured on 2 cores
# (1080p H.264), one thread per decoder is fastest; frame threads only add pipeline
# restarts at every run.
_WORKER_THREADING: tuple[Literal["AUTO", "FRAME", "SLICE", "NONE"], int] = ("NONE", 1)
# Bytes of sampled frames of one run that may wait for the consumer (as frames: 1080p 16,
# capped at 32). Runs are decoded at once only when they average at most that many sampled
# frames: a worker whose run does not fit waits for the consumer, which leaves one decoder
# working, single-threaded (measured: 1.6x slower than one frame-threaded decoder).
_RUN_BYTES = 48 << 20


def _cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _decode(cc: av.video.VideoCodecContext, pkt: av.Packet | None,
            stats: DecodeStats) -> list[av.VideoFrame]:
    """Send one packet (None: drain) and return the frames that came out; a packet the
    decoder rejects is counted in ``stats.bad_packets``."""
    try:
        return cc.decode(pkt)
    except av.error.EOFError:
        return []
    except av.FFmpegError:
        stats.bad_packets += 1
        return []


@dataclass
class _Plan:
    """The runs of one film and the targets each needs. Read (never written) by the threads
    decoding runs, except ``container_error``, which only the consuming thread sets."""

    path: Path
    index: DemuxIndex
    options: PyAVOptions
    runs: list[_Run]
    run_targets: list[list[int]]  # per run: its sampled presentation indices, ascending
    is_target: np.ndarray  # bool [N], by decode index
    pres_of_dec: np.ndarray  # int64 [N], decode -> presentation index
    keys: np.ndarray  # int64, decode indices of the keyframes
    dec_of_pts: dict[int, int]
    seek_missed: threading.Event = field(default_factory=threading.Event)
    container_error: str = ""  # the demuxer's first error (in run order), if any

    def reader(self, stats: DecodeStats, single_decoder: bool) -> _Reader:
        """A reader with its own container and decoder: threaded as the options say for the
        only decoder of a film, else as ``_WORKER_THREADING`` says."""
        opts = self.options
        if not single_decoder:
            opts = replace(opts, thread_type=_WORKER_THREADING[0], threads=_WORKER_THREADING[1])
        return _Reader(self.path, self.index, opts, stats, self.dec_of_pts, self.seek_missed)


def _decode_run(plan: _Plan, k: int, reader: _Reader,
                convert: _Converter) -> Iterator[tuple[int, _Sample | None]]:
    """Decode run ``k`` from its keyframe, then drain and flush the decoder. Yields
    (presentation index, sample) for each of the run's targets, in presentation order, with
    None for a target that could not be decoded. Counters go to ``reader.stats``."""
    run, wanted = plan.runs[k], plan.run_targets[k]
    index, stats, skip_nonref = plan.index, reader.stats, plan.options.skip_nonref
    pending: dict[int, _Sample] = {}  # decoded, not handed back yet
    done: set[int] = set()  # handed back, or lost
    damaged: list[tuple[int, int]] = []  # decode-index ranges [lo, hi) not to be trusted
    nxt = 0  # position in ``wanted`` of the next target to hand back
    fed_max = -1  # highest decode index sent to the decoder
    pres_fed_max = -1  # highest presentation index sent to the decoder
    stats.runs += 1
    reader.goto(run.start)
    cc = reader.codec

    def damage(d: int) -> None:
        # The decoder rejected a packet (reported up to thread_count packets late): the
        # frames from there to the next keyframe may refer to the lost one.
        slack = max(1, cc.thread_count)
        nextkey = plan.keys[np.searchsorted(plan.keys, d, side="right"):]
        lo, hi = max(0, d - slack), int(nextkey[0]) if len(nextkey) else index.n
        if damaged and lo <= damaged[-1][1]:
            lo, hi = min(lo, damaged[-1][0]), max(hi, damaged.pop()[1])
        damaged.append((lo, hi))
        for p in [p for p in pending if lo <= index.order[p] < hi]:
            del pending[p]
            done.add(p)

    def take(frames: list[av.VideoFrame]) -> None:
        for f in frames:
            stats.frames_decoded += 1
            if f.pts is None or (d := plan.dec_of_pts.get(int(f.pts))) is None:
                continue
            p = int(plan.pres_of_dec[d])
            if plan.is_target[d] and p not in done and p not in pending:
                if any(lo <= d < hi for lo, hi in damaged):
                    done.add(p)
                else:
                    tc = time.perf_counter()
                    pending[p] = convert(f, p, float(f.pts * index.time_base),
                                         bool(index.keyframe[d]))
                    stats.convert_seconds += time.perf_counter() - tc
            # Output is in presentation order within a run: targets before p whose packet
            # was sent and which did not come out will not come out.
            i = nxt
            while i < len(wanted) and wanted[i] < p and wanted[i] <= pres_fed_max:
                t = wanted[i]
                if t not in pending and index.order[t] <= fed_max:
                    done.add(t)
                i += 1

    def ready() -> Iterator[tuple[int, _Sample | None]]:
        nonlocal nxt
        while nxt < len(wanted):
            t = wanted[nxt]
            if t in pending:
                done.add(t)
                yield t, pending.pop(t)
            elif t in done:
                yield t, None
            else:
                return
            nxt += 1

    while (item := reader.next()) is not None:
        d, pkt = item
        if d > run.end:
            reader.push_back(item)
            break
        if run.feed_all or plan.is_target[d]:
            cc.skip_frame = "NONREF" if skip_nonref and not plan.is_target[d] else "NONE"
            fed_max = max(fed_max, d)
            pres_fed_max = max(pres_fed_max, int(plan.pres_of_dec[d]))
            stats.packets_fed += 1
            bad = stats.bad_packets
            frames = _decode(cc, pkt, stats)
            if stats.bad_packets > bad:
                damage(d)
            take(frames)
            yield from ready()
        if d >= run.end:
            break
    bad = stats.bad_packets
    frames = _decode(cc, None, stats)
    if stats.bad_packets > bad:
        damage(fed_max)
    take(frames)
    cc.flush_buffers()
    done.update(t for t in wanted[nxt:] if t not in pending)  # nothing more will come out
    yield from ready()


def _runs_in_sequence(plan: _Plan, stats: DecodeStats) -> Iterator[tuple[int, _Sample | None]]:
    """All runs, one after the other, on one reader (threaded as the options say)."""
    reader = plan.reader(stats, single_decoder=True)
    try:
        convert = _Converter(reader.codec.colorspace, reader.codec.color_range)
        for k in range(len(plan.runs)):
            yield from _decode_run(plan, k, reader, convert)
    finally:
        plan.container_error = plan.container_error or reader.error
        reader.close()


class _Stopped(Exception):
    """Raised in a worker thread when the consumer has stopped."""


@dataclass
class _RunDone:
    """The last item of a run's queue: the run's counters, and what went wrong, if anything."""

    stats: DecodeStats
    container_error: str
    failure: BaseException | None


class _RunWorkers:
    """Decodes the runs of a plan on ``n`` threads, each with its own reader (container and
    decoder), and hands their results back in run order (``results``) as they come.

    Workers take runs in order; at most ``n + 1`` runs are in flight, each with at most
    ``depth`` results waiting, so memory stays bounded. A failure in a run is raised by
    ``results`` after everything before it. The threads start with ``results`` and are
    stopped and joined when it ends or is closed.
    """

    def __init__(self, plan: _Plan, stats: DecodeStats, n: int, depth: int) -> None:
        self.plan, self.stats, self.n = plan, stats, n
        self.queues = [queue.Queue(maxsize=depth) for _ in plan.runs]
        self.cond = threading.Condition()
        self.next_run = 0  # the next run a worker takes
        self.done_runs = 0  # runs handed back completely
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._work, name=f"exe-stream-run-{i}",
                                         daemon=True) for i in range(n)]

    def _take(self) -> int | None:
        with self.cond:
            while (not self.stop.is_set() and self.next_run < len(self.queues)
                   and self.next_run > self.done_runs + self.n):
                self.cond.wait()
            if self.stop.is_set() or self.next_run >= len(self.queues):
                return None
            self.next_run += 1
            return self.next_run - 1

    def _put(self, k: int, item: object) -> None:
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                self.queues[k].put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _work(self) -> None:
        reader: _Reader | None = None
        try:
            while (k := self._take()) is not None:
                run_stats = DecodeStats()
                failure: BaseException | None = None
                try:
                    if reader is None:
                        reader = self.plan.reader(run_stats, single_decoder=False)
                        convert = _Converter(reader.codec.colorspace, reader.codec.color_range)
                    reader.stats = run_stats
                    for item in _decode_run(self.plan, k, reader, convert):
                        self._put(k, item)
                except _Stopped:
                    raise
                except BaseException as e:  # raised by ``results``, in the consumer
                    failure = e
                self._put(k, _RunDone(run_stats, reader.error if reader else "", failure))
                if failure is not None:
                    return
        except _Stopped:
            pass
        finally:
            if reader is not None:
                reader.close()

    def results(self) -> Iterator[tuple[int, _Sample | None]]:
        """What ``_decode_run`` yields for every run, in run order."""
        try:
            for t in self.threads:
                t.start()
            for k, q in enumerate(self.queues):
                while not isinstance(item := q.get(), _RunDone):
                    yield item
                self.stats.add(item.stats)
                self.plan.container_error = self.plan.container_error or item.container_error
                if item.failure is not None:
                    raise item.failure
                with self.cond:
                    self.done_runs = k + 1
                    self.cond.notify_all()
        finally:
            self.close()

    def close(self) -> None:
        self.stop.set()
        with self.cond:
            self.cond.notify_all()
        for t in self.threads:
            if t.ident is not None:
                t.join()


# The decoder ---------------------------------------------------------------------------


class PyAVDecoder:
    """Decoder backend "pyav": CPU decoding with PyAV, yielding CPU uint8 FrameBatches.

    ``last_stats`` holds the counters of the latest ``frames`` call (updated while it runs).
    """

    name = "pyav"

    def __init__(self, options: PyAVOptions | None = None) -> None:
        self.options = options or PyAVOptions()
        self.last_stats = DecodeStats()
        self._indexes = IndexCache()

    # Probe -------------------------------------------------------------------------------

    def probe(self, path: str | Path) -> FilmInfo:
        """Demux pass plus one decoded frame: frame count, displayed size, rotation, colour
        (``index.film_info``).

        A truncated film is probed without error (``extra["warning"]`` says so); ``frames``
        then yields what exists and raises. Raises DecodeError for files that cannot be read.
        """
        return film_info(path, self._index(Path(path), decode_first=True))

    def _index(self, path: Path, decode_first: bool = False) -> DemuxIndex:
        return self._indexes.get(path, decode_first)

    # Frames ------------------------------------------------------------------------------

    def frames(
        self, path: str | Path, sampling: SamplingOptions, batch_size: int
    ) -> Iterator[FrameBatch]:
        """Yield the sampled frames of ``path`` in presentation order (see the module doc).

        Returns FrameBatches of uint8 CPU tensors: y [B, H, W], u/v [B, ceil(H/2), ceil(W/2)]
        as displayed; frame_index int64 [B] (presentation index of the frame decoded),
        pts_seconds float64 [B] (container pts x time base), is_keyframe bool [B].
        Raises DecodeError (``frames_decoded`` = sampled frames yielded before it).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        path = Path(path)
        stats = DecodeStats()
        self.last_stats = stats
        t0 = time.perf_counter()
        index = self._index(path)
        stats.index_seconds = time.perf_counter() - t0
        stats.packets = index.n
        batcher = _Batcher(batch_size)
        yielded = 0
        t0 = time.perf_counter()
        outside = 0.0  # time the consumer held the generator between batches
        problem = ""
        if index.ordered:
            samples = self._ordered(path, index, sampling, stats)
        else:
            stats.fallback, stats.workers = index.fallback, 1
            samples = self._in_output_order(path, index, sampling, stats)
        def pending_batches() -> Iterator[Iterator[FrameBatch]]:
            # The batches each sample completes, then the last partial batch.
            for s in samples:
                yield batcher.add(s)
            yield batcher.flush()

        try:
            for made in pending_batches():
                tc = time.perf_counter()
                batches = list(made)
                stats.convert_seconds += time.perf_counter() - tc
                for b in batches:
                    yielded += len(b)
                    stats.frames_sampled = yielded
                    ty = time.perf_counter()
                    yield b
                    outside += time.perf_counter() - ty
        except DecodeError as e:
            raise DecodeError(path, e.reason, yielded) from e
        finally:
            samples.close()  # stops the threads decoding runs, closes the containers
            stats.frames_skipped = max(0, stats.packets - stats.frames_decoded)
            stats.decode_seconds = time.perf_counter() - t0 - outside
        if stats.missing:
            problem = self._missing_reason(index, stats)
            if not index.truncated:
                problem = f"corrupted data: {problem}"
        if index.truncated:
            problem = f"{index.truncated}; {problem}" if problem else index.truncated
        elif not problem and index.n == 0:
            problem = "the video stream holds no frames"
        if problem:
            raise DecodeError(path, problem, yielded)

    @staticmethod
    def _missing_reason(index: DemuxIndex, stats: DecodeStats) -> str:
        missing = sorted(stats.missing)
        pres_pts = index.pts[index.order]
        a, b = (float(pres_pts[i] * index.time_base) for i in (missing[0], missing[-1]))
        rejected = f"; the decoder rejected {stats.bad_packets} packet(s)" if stats.bad_packets else ""
        return (f"{len(missing)} sampled frame(s) between {a:.2f} s and {b:.2f} s could not be "
                f"decoded{rejected}")

    def _ordered(self, path: Path, index: DemuxIndex, sampling: SamplingOptions,
                 stats: DecodeStats) -> Iterator[_Sample]:
        """Sampled frames of a film whose presentation order is known from the demux pass."""
        pres_of_dec = np.empty(index.n, dtype=np.int64)
        pres_of_dec[index.order] = np.arange(index.n)
        targets = sampled_frames(path, index, sampling)
        if not targets:
            return
        target_dec = sorted(int(index.order[p]) for p in targets)
        is_target = np.zeros(index.n, dtype=bool)
        is_target[target_dec] = True
        workers = self.options.run_workers or min(4, _cores())
        depth = max(2, min(32, _RUN_BYTES // (3 * (index.pixels or 1920 * 1080) // 2)))
        if sampling.mode == "keyframe":
            runs = _keyframe_runs(target_dec, self.options.seek_min_packets)
        else:
            runs = _exact_runs(index, target_dec, merge_touching=False)
        if len(targets) > depth * len(runs):
            # Dense sampling: a worker would wait for the consumer most of the time with its
            # run's frames in memory; one frame-threaded decoder is faster.
            workers = 1
        if workers == 1 and sampling.mode == "exact":
            runs = _exact_runs(index, target_dec, merge_touching=True)
        workers = min(workers, len(runs))
        starts = np.array([r.start for r in runs])
        run_targets: list[list[int]] = [[] for _ in runs]
        for p, d in zip(targets, (int(index.order[p]) for p in targets)):
            run_targets[int(np.searchsorted(starts, d, side="right")) - 1].append(p)
        plan = _Plan(path, index, self.options, runs, run_targets, is_target, pres_of_dec,
                     np.flatnonzero(index.keyframe), dict(zip(index.pts.tolist(), range(index.n))))
        stats.workers = workers
        if workers > 1:
            results = _RunWorkers(plan, stats, workers, depth).results()
        else:
            results = _runs_in_sequence(plan, stats)
        # Runs hand back their targets in presentation order; across runs, the order is
        # restored here (an open-GOP leading picture can come before an earlier run's target).
        waiting: dict[int, _Sample | None] = {}
        nxt = 0  # position in targets of the next sample to emit
        try:
            for p, sample in results:
                if sample is None:
                    stats.missing.append(p)
                waiting[p] = sample
                while nxt < len(targets) and targets[nxt] in waiting:
                    sample = waiting.pop(targets[nxt])
                    nxt += 1
                    if sample is not None:
                        yield sample
        finally:
            results.close()
            if plan.container_error and not index.truncated:
                index.truncated = f"damaged container: {plan.container_error}"
        assert nxt == len(targets), "every target belongs to one run"

    def _in_output_order(self, path: Path, index: DemuxIndex, sampling: SamplingOptions,
                         stats: DecodeStats) -> Iterator[_Sample]:
        """Fallback when the demux pass cannot give the presentation order: decode everything,
        number the frames in the decoder's output order and apply the sampling rules as frames
        come out. Timestamps: the frames' pts where they are real ("pts repeated"), else
        ordinal / average frame rate."""
        rate = Fraction(index.average_rate) if index.average_rate else Fraction(25)
        tb = index.time_base
        use_pts = index.fallback == "pts repeated"
        interval = Fraction(repr(float(sampling.interval))) if sampling.interval else None
        keyframe_mode = sampling.mode == "keyframe"
        picked = set(sampling.indices) if isinstance(sampling, PickedFrames) else set()
        count = 0
        t_first: Fraction | None = None
        next_t = Fraction(0)
        last_key: tuple | None = None  # (frame, ordinal, seconds) of the latest keyframe
        emitted_key = -1
        want_key = False
        with _open(path) as container:
            stream = container.streams[index.stream_index]
            _configure(stream, self.options)
            cc = stream.codec_context
            convert = _Converter(cc.colorspace, cc.color_range)
            packets = (p for p in container.demux(stream) if p.size)
            for pkt in [*packets, None]:
                if pkt is not None:
                    stats.packets_read += 1
                    stats.packets_fed += 1
                for f in _decode(cc, pkt, stats):
                    stats.frames_decoded += 1
                    i = count
                    count += 1
                    t = Fraction(f.pts) * tb if use_pts and f.pts is not None else i / rate
                    if isinstance(sampling, PickedFrames):
                        wanted = i in picked
                    elif sampling.every is not None:
                        wanted = i % sampling.every == 0
                    else:
                        if t_first is None:
                            t_first, next_t = t, t
                        wanted = t >= next_t
                        if wanted:
                            next_t = t_first + (math.floor((t - t_first) / interval) + 1) * interval
                    if not keyframe_mode:
                        if wanted:
                            yield convert(f, i, float(t), bool(f.key_frame))
                        continue
                    if f.key_frame:
                        last_key = (f, i, t)
                        if want_key:
                            want_key = False
                            emitted_key = i
                            yield convert(f, i, float(t), True)
                            continue
                    if wanted:
                        if last_key is None:
                            want_key = True
                        elif last_key[1] != emitted_key:
                            emitted_key = last_key[1]
                            yield convert(last_key[0], last_key[1], float(last_key[2]), True)
