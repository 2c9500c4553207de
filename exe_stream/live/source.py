"""``exe-stream live --source FILE|/dev/videoN``: a live session without a browser.

A reader thread decodes the source in real time (a file paced by its timestamps, a V4L2
camera as it delivers) into a one-frame mailbox where the latest frame wins; the analysis
loop takes whatever is newest, so when analysis is slower than the source, frames are
skipped, never queued. The session's timeline is written like a page's Save.

A file is decoded by scan's PyAV decoder (every frame, same planes and colour handling);
a camera is read with PyAV's ``v4l2`` input and converted to I420 (UNVERIFIED on this
project's machines: they have no camera).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..decode import get_decoder
from ..errors import DecodeError
from ..options import check_range
from ..sampling import SamplingOptions
from ..types import FrameBatch
from .analyse import FrameResult, LiveAnalyser, session_id
from .timeline import Timeline


@dataclass(frozen=True)
class SourceOptions:
    """How a headless session reads its source."""

    # Pace a file by its timestamps (as a camera would deliver it) and skip frames the analysis
    # cannot keep up with; False analyses every frame as fast as possible (a file only).
    realtime: bool = True
    # Stop after this many seconds of the source (0 = until it ends / Ctrl-C).
    max_seconds: float = 0.0
    # A camera's requested capture size (V4L2 only).
    camera_size: tuple[int, int] = (640, 480)

    def __post_init__(self) -> None:
        check_range("max_seconds", self.max_seconds, 0.0, unit="seconds")


class Latest:
    """A thread-safe mailbox of one item: ``put`` replaces an untaken item (counted in
    ``dropped``); ``get`` waits for an item or the end (returns None after ``close``)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: object | None = None
        self._closed = False
        self.dropped = 0

    def put(self, item: object) -> None:
        with self._cond:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def get(self) -> object | None:
        with self._cond:
            while self._item is None and not self._closed:
                self._cond.wait()
            item, self._item = self._item, None
            return item


def is_camera(source: str) -> bool:
    """Whether ``source`` names a V4L2 device (``/dev/videoN``)."""
    return source.startswith("/dev/video")


def _file_frames(path: Path) -> Iterator[FrameBatch]:
    return get_decoder("pyav").frames(path, SamplingOptions(every=1), 1)


def _camera_frames(device: str, size: tuple[int, int]) -> Iterator[FrameBatch]:
    import av

    try:
        container = av.open(device, format="v4l2", options={"video_size": f"{size[0]}x{size[1]}"})
    except (av.FFmpegError, OSError) as e:
        raise DecodeError(device, f"cannot open the camera: {e}") from e
    start = time.perf_counter()
    try:
        for i, frame in enumerate(container.decode(video=0)):
            f = frame.reformat(format="yuv420p")
            planes = [np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in f.planes[:3]]
            y, u, v = (torch.from_numpy(np.ascontiguousarray(p))[None] for p in planes)
            yield FrameBatch(y=y, u=u, v=v, frame_index=torch.tensor([i]),
                             pts_seconds=torch.tensor([time.perf_counter() - start], dtype=torch.float64),
                             is_keyframe=torch.tensor([True]),
                             matrix="bt709" if f.height >= 720 else "bt601", full_range=False)
    finally:
        container.close()


def run_source(
    source: str | Path,
    analyser: LiveAnalyser,
    opts: SourceOptions = SourceOptions(),
    on_result: Callable[[FrameResult], None] | None = None,
    stop: threading.Event | None = None,
) -> Timeline:
    """Analyse a video file or a V4L2 camera as a live session; returns its timeline.

    The timeline is in memory; ``Timeline.save(out)`` writes it (film_id = the session id).
    ``on_result`` gets each analysed frame's result; ``stop`` ends the session early (the
    CLI's Ctrl-C; Ctrl-C itself also ends a real-time session, keeping its timeline). Raises
    DecodeError for a source that cannot be opened or read.
    """
    source = str(source)
    camera = is_camera(source)
    if not camera and not Path(source).is_file():
        raise DecodeError(source, "no such video file (or a camera: give /dev/videoN)")
    if camera and not opts.realtime:
        raise ValueError("a camera is always read in real time; realtime=False is for files")
    analyser.reset()
    sid = session_id()
    timeline = Timeline(sid, analyser.models, analyser.opts.detector, source=source,
                        decoder="v4l2" if camera else "pyav")
    stop = stop or threading.Event()
    frames_iter = _camera_frames(source, opts.camera_size) if camera else _file_frames(Path(source))

    def within_limit(frames: FrameBatch) -> bool:
        return not opts.max_seconds or float(frames.pts_seconds[0]) <= opts.max_seconds

    if not opts.realtime:
        for frames in frames_iter:
            if stop.is_set() or not within_limit(frames):
                break
            _analyse_one(analyser, timeline, frames, on_result)
        return timeline

    slot = Latest()
    errors: list[BaseException] = []

    def read() -> None:
        start = time.perf_counter()
        first: float | None = None
        try:
            for frames in frames_iter:
                if stop.is_set() or not within_limit(frames):
                    break
                if not camera:  # a file plays at its own pace
                    pts = float(frames.pts_seconds[0])
                    first = pts if first is None else first
                    wait = (pts - first) - (time.perf_counter() - start)
                    if wait > 0 and stop.wait(wait):
                        break
                slot.put(frames)
        except BaseException as e:  # re-raised by the analysing thread
            errors.append(e)
        finally:
            slot.close()

    reader = threading.Thread(target=read, name="exe-stream-live-source", daemon=True)
    reader.start()
    try:
        while True:
            frames = slot.get()
            if frames is None:
                break
            _analyse_one(analyser, timeline, frames, on_result)
    except KeyboardInterrupt:  # Ctrl-C ends a session; what was analysed is kept
        pass
    finally:
        stop.set()
        reader.join(timeout=5)
    timeline.dropped = slot.dropped
    if errors:
        if timeline.frames == 0:
            raise errors[0]
        timeline.error = str(errors[0])
    return timeline


def _analyse_one(analyser: LiveAnalyser, timeline: Timeline, frames: FrameBatch,
                 on_result: Callable[[FrameResult], None] | None) -> None:
    result, faces, probs = analyser.analyse(frames)
    timeline.add(frames, faces, probs)
    if on_result is not None:
        on_result(result)


__all__ = ["Latest", "SourceOptions", "is_camera", "run_source"]
