"""Shot boundaries: a film in, its shots out (``detect_shots``), and the shots shard.

Detectors are registered by name in ``SHOT_DETECTORS``; ``transnet`` and ``content`` read every
frame of the film as a small RGB thumbnail (one decode pass of its own, before the sampled
frames are decoded: PyAV with FFmpeg's scaler, ``thumbs.thumbnails``, or on a GPU scan the
scan's decoder with the thumbnails made on the device, ``thumbs.frames_thumbnails``) and give a
per-frame transition score; ``codec`` reads the bitstream:

- ``transnet``: TransNetV2 (``shots.transnet``) on 48x27 frames, windows batched on the scan's
  device; a frame whose transition probability exceeds ``threshold`` (default 0.5, the
  network's own) belongs to a transition. Finds hard cuts and gradual ones (dissolves, fades).
- ``content``: PySceneDetect's content detector (HSV and edge change between successive
  frames, default threshold 27, at least 15 frames per shot) on 256x144 frames: light, CPU
  only, finds hard cuts; a slow dissolve changes too little from one frame to the next.
- ``codec`` (``shots.codec``): no pass of its own over the pixels: the cuts the encoder
  marked with intra pictures, read from the bitstream in a demux pass, and the doubtful ones
  (keyframes the interval forced, packet-size spikes) decoded exactly where they are and scored
  like ``content`` (threshold 27). For CPU scans that sample sparsely: finds hard cuts, not
  dissolves.

Shots partition the film: each transition (a run of frames above the threshold; a content cut
is a run of one frame) ends a shot at its most likely frame and the next shot starts on the
frame after it. The frames of a transition are kept (``Shots.transition``) so samplers can stay
away from them.

Shard (an addition to schema 2, written only by scans with shots on)::

    OUT/shots/<film_id>.parquet

one row per shot: film_id, shot_index (int32, 0-based), first_frame, last_frame (int64,
presentation indices, inclusive), first_pts, last_pts (float64 seconds), n_frames (int64);
schema metadata: the detector and its threshold. ``frames`` rows of such a scan get a
``shot_index`` column (int32).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import torch

from ..errors import DecodeError
from ..sampling import PickedFrames, SamplingOptions
from ..shards import find_shards, read_table, shard_path
from ..types import FrameBatch
from .thumbs import ThumbChunk, frames_thumbnails, thumbnails

log = logging.getLogger(__name__)

# Registry: detector name -> (thumbnail size (width, height), default threshold).
SHOT_DETECTORS: dict[str, tuple[tuple[int, int], float]] = {
    "transnet": ((48, 27), 0.5),
    "content": ((256, 144), 27.0),
    "codec": ((256, 144), 27.0),
}
# What --shots accepts: a detector name, or "off".
SHOT_METHODS = ("off", *SHOT_DETECTORS)


@dataclass(frozen=True)
class ShotOptions:
    """Whether and how a scan finds shot boundaries."""

    # "off" (no shot detection; the scan writes what it wrote before), or a SHOT_DETECTORS name.
    method: str = "off"
    # Score above which a frame is in a transition; None = the detector's default
    # (transnet: probability 0.5; content and codec: PySceneDetect's content score 27).
    threshold: float | None = None
    # Fewest frames between two transitions: closer ones are one transition (content: also
    # PySceneDetect's min_scene_len).
    min_shot_frames: int = 15
    # Shot-aware sampling (scan --sampling shots --per-shot K): K frames per shot instead of the
    # scan's every/interval sampling; 0 = off (see shots.sampling).
    per_shot: int = 0
    # scan --skip-cuts: move every/interval samples that land on or next to a cut off it.
    skip_cuts: bool = False
    # Frames either side of a cut that samplers avoid.
    cut_guard: int = 2
    # scan --track-every M: also decode every M-th frame of each shot, for face tracking only
    # (their faces link the sampled faces into tracks; they get no rows); 0 = off.
    track_every: int = 0

    def __post_init__(self) -> None:
        if self.method not in SHOT_METHODS:
            raise ValueError(f"unknown shot detector {self.method!r}; choose one of: {', '.join(SHOT_METHODS)}")
        if self.threshold is not None and not self.threshold > 0:
            raise ValueError(f"shot threshold must be > 0, got {self.threshold}")
        if self.method == "transnet" and self.threshold is not None and not self.threshold < 1:
            raise ValueError(f"transnet's threshold is a probability in (0, 1), got {self.threshold}")
        if self.min_shot_frames < 1:
            raise ValueError(f"min_shot_frames must be >= 1, got {self.min_shot_frames}")
        if self.per_shot < 0:
            raise ValueError(f"per_shot must be >= 1 (0 = not shot sampling), got {self.per_shot}")
        if self.cut_guard < 0:
            raise ValueError(f"cut_guard must be >= 0, got {self.cut_guard}")
        if (self.per_shot or self.skip_cuts) and not self.enabled:
            raise ValueError("shot-aware sampling (--sampling shots, --skip-cuts) needs a shot detector: "
                             f"--shots one of {', '.join(SHOT_DETECTORS)}")
        if self.track_every < 0:
            raise ValueError(f"track_every must be >= 1 frame (0 = off), got {self.track_every}")
        if self.track_every and not self.enabled:
            raise ValueError(f"--track-every links faces within shots and needs --shots one of {', '.join(SHOT_DETECTORS)}")
        if self.per_shot and self.skip_cuts:
            raise ValueError("--skip-cuts applies to --every/--interval sampling; --sampling shots already "
                             "keeps away from cuts")

    @property
    def enabled(self) -> bool:
        return self.method != "off"

    def resolved_threshold(self) -> float:
        return SHOT_DETECTORS[self.method][1] if self.threshold is None else self.threshold


@dataclass
class Shots:
    """The shots of one film (a partition of its frames in presentation order).

    first, last: int64 [S], inclusive presentation indices of each shot's first and last frame
    (first[0] = 0, first[i + 1] = last[i] + 1). first_pts, last_pts: float64 [S] seconds.
    transition: bool [N] per frame, whether it is part of a detected transition.
    scores: float32 [N] per frame, the detector's transition score.
    pts: float64 [N] per frame, seconds (from the shots pass's decode).
    """

    first: np.ndarray
    last: np.ndarray
    first_pts: np.ndarray
    last_pts: np.ndarray
    transition: np.ndarray
    scores: np.ndarray
    method: str
    threshold: float
    pts: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        s = len(self.first)
        assert self.first.dtype == np.int64 and self.last.shape == (s,) and self.first_pts.shape == (s,)
        assert self.transition.dtype == bool and self.scores.shape == self.transition.shape
        if s:
            assert self.first[0] == 0 and np.all(self.first[1:] == self.last[:-1] + 1)

    def __len__(self) -> int:
        return len(self.first)

    @property
    def num_frames(self) -> int:
        return int(self.transition.shape[0])

    @property
    def cuts(self) -> np.ndarray:
        """int64 [S - 1]: the first frame of every shot after the first."""
        return self.first[1:]

    def shot_of(self, frame_index: np.ndarray) -> np.ndarray:
        """int32 shot index of each presentation index (frames past the last shot get the last)."""
        idx = np.searchsorted(self.first, np.asarray(frame_index, np.int64), side="right") - 1
        return np.clip(idx, 0, max(len(self) - 1, 0)).astype(np.int32)

    def __repr__(self) -> str:
        return f"Shots({self.method}, {len(self)} shots over {self.num_frames} frames)"


def shots_from_scores(scores: np.ndarray, above: np.ndarray, pts: np.ndarray, method: str,
                      threshold: float, min_gap: int = 1) -> Shots:
    """Partition frames into shots: scores float32 [N] (transition score per frame), above
    bool [N] (frames in a transition), pts float64 [N]. Runs of ``above`` frames fewer than
    ``min_gap`` frames apart are one transition (a dissolve whose score dips in the middle);
    each transition ends a shot at its highest-scoring frame and the next shot starts on the
    frame after it (a transition ending on the film's last frame starts no shot)."""
    n = len(scores)
    starts = [0]
    edges = np.flatnonzero(np.diff(np.concatenate([[0], above.astype(np.int8), [0]])))
    runs: list[list[int]] = []
    for a, b in zip(edges[::2], edges[1::2]):  # runs [a, b)
        if runs and a - runs[-1][1] < min_gap:
            runs[-1][1] = int(b)
        else:
            runs.append([int(a), int(b)])
    for a, b in runs:
        peak = a + int(np.argmax(scores[a:b]))
        if 0 < peak + 1 < n and peak + 1 > starts[-1]:
            starts.append(peak + 1)
    first = np.array(starts if n else [], np.int64)
    last = np.append(first[1:] - 1, n - 1).astype(np.int64) if n else np.zeros(0, np.int64)
    return Shots(first=first, last=last, first_pts=pts[first] if n else np.zeros(0),
                 last_pts=pts[last] if n else np.zeros(0), transition=above.astype(bool),
                 scores=scores.astype(np.float32), method=method, threshold=threshold,
                 pts=np.asarray(pts, np.float64))


def _transnet(chunks: Iterator[ThumbChunk], opts: ShotOptions, device: torch.device,
              pts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    from .transnet import predict

    def rgb() -> Iterator[np.ndarray]:
        for c in chunks:
            pts.append(c.pts_seconds)
            yield c.rgb

    p = predict(rgb(), device)
    return p, p > opts.resolved_threshold()


def content_detector(threshold: float, min_scene_len: int):
    """A fresh PySceneDetect ContentDetector (ValueError saying what to install when missing)."""
    try:
        from scenedetect.detectors import ContentDetector
    except ImportError as e:
        raise ValueError(
            "--shots content and codec need PySceneDetect with OpenCV: pip install 'exe-stream[shots]'"
        ) from e
    return ContentDetector(threshold=threshold, min_scene_len=min_scene_len)


def _content(chunks: Iterator[ThumbChunk], opts: ShotOptions, device: torch.device,
             pts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    det = content_detector(opts.resolved_threshold(), opts.min_shot_frames)
    scores: list[float] = []
    cuts: list[int] = []
    n = 0
    for c in chunks:
        pts.append(c.pts_seconds)
        for bgr in c.rgb[..., ::-1]:
            cuts.extend(det.process_frame(n, np.ascontiguousarray(bgr)))
            scores.append(float(det._frame_score or 0.0))  # the score it compared (no public getter)
            n += 1
    if n and hasattr(det, "post_process"):
        cuts.extend(det.post_process(n - 1) or [])
    above = np.zeros(n, bool)
    # A cut at frame k: k is the first frame of the new shot; the transition is frame k - 1 -> k,
    # marked on k - 1 so the partition starts the new shot at k.
    for k in cuts:
        if 0 < k < n:
            above[k - 1] = True
    s = np.zeros(n, np.float32)
    s[: max(0, n - 1)] = np.asarray(scores[1:], np.float32)  # score of the change k -> k+1 on k
    return s, above


_BACKENDS: dict[str, Callable[[Iterator[ThumbChunk], ShotOptions, torch.device, list[np.ndarray]],
                              tuple[np.ndarray, np.ndarray]]] = {"transnet": _transnet, "content": _content}
assert set(_BACKENDS) | {"codec"} == set(SHOT_DETECTORS)


def _codec_shots(path: Path, opts: ShotOptions) -> Shots | None:
    """Shots from the bitstream (``shots.codec``); None for a stream without presentation
    order before decoding (the caller falls back to the content detector)."""
    from .codec import read_cuts

    try:
        found = read_cuts(path, opts.resolved_threshold(), opts.min_shot_frames)
    except ValueError as e:
        log.warning("%s; using the content detector", e)
        return None
    for p in found.problems:
        log.warning("%s: %s", path, p)
    n = len(found.scores)
    above = np.zeros(n, bool)
    above[np.asarray(found.cuts, np.int64) - 1] = True  # a cut at k: transition k - 1 -> k
    return shots_from_scores(found.scores, above, found.pts, "codec", opts.resolved_threshold())


def detect_shots(path: str | Path, opts: ShotOptions, device: torch.device | str = "cpu",
                 frames: Iterable[FrameBatch] | None = None) -> Shots:
    """The shots of the film at ``path`` (one decode of every frame, see ``thumbs``; ``codec``
    reads the bitstream instead).

    ``frames``: every frame of the film, decoded by the scan's own decoder (a GPU decoder:
    thumbnails are then made on its device, ``thumbs.frames_thumbnails``); None decodes with
    PyAV (``thumbs.thumbnails``). ``codec`` does not use them.

    Raises ValueError for a detector that is off or not installed, DecodeError (naming the
    file) for a film that cannot be opened or yields no frame. A film whose reading stops
    part-way gets the shots of what was read (frames after it belong to the last shot) and a
    logged warning.
    """
    if not opts.enabled:
        raise ValueError("shot detection is off (ShotOptions.method='off')")
    method = opts.method
    if method == "codec":
        shots = _codec_shots(Path(path), opts)
        if shots is not None:
            return shots
        method = "content"
    size, _ = SHOT_DETECTORS[method]
    pts: list[np.ndarray] = []
    problems: list[str] = []
    chunks = thumbnails(path, size, problems=problems) if frames is None else frames_thumbnails(frames, size)
    scores, above = _BACKENDS[method](chunks, opts, torch.device(device), pts)
    for p in problems:
        log.warning("%s: %s", path, p)
    if len(scores) == 0:
        raise DecodeError(Path(path), "shot detection: no frame could be decoded")
    all_pts = np.concatenate(pts) if pts else np.zeros(0, np.float64)
    n = min(len(scores), len(all_pts))
    return shots_from_scores(scores[:n], above[:n], all_pts[:n], method, opts.resolved_threshold(),
                             min_gap=opts.min_shot_frames)


# Shard ----------------------------------------------------------------------------------

SHOTS_SCHEMA = pa.schema([
    ("film_id", pa.string()),
    ("shot_index", pa.int32()),
    ("first_frame", pa.int64()),
    ("last_frame", pa.int64()),
    ("first_pts", pa.float64()),
    ("last_pts", pa.float64()),
    ("n_frames", pa.int64()),
])


# The column shots add to the frames dataset.
FRAMES_SHOT_FIELDS = pa.schema([("shot_index", pa.int32())])


def shots_path(out: Path, film_id: str) -> Path:
    return shard_path(out, "shots", film_id)


def remove_shots(out: Path, film_id: str) -> None:
    """Delete a film's shots shard if there is one (a rescan without shots leaves none behind)."""
    for s in find_shards(out, "shots", film_id=film_id, per_model=False):
        s.path.unlink(missing_ok=True)


def read_shots(out: Path) -> pa.Table:
    """Every film's shots in one table (empty with SHOTS_SCHEMA when the scan has none)."""
    tables = [read_table(s.path) for s in find_shards(out, "shots", per_model=False)]
    if not tables:
        return SHOTS_SCHEMA.empty_table()
    return pa.concat_tables([t.replace_schema_metadata(None) for t in tables])


def shots_table(film_id: str, shots: Shots, metadata: dict[bytes, bytes]) -> pa.Table:
    """The shots shard of one film: one row per shot."""
    n = len(shots)
    meta = {**metadata, b"exe_stream.shots": json.dumps(
        {"method": shots.method, "threshold": shots.threshold}, sort_keys=True).encode()}
    return pa.Table.from_arrays([
        pa.array([film_id] * n, pa.string()),
        pa.array(np.arange(n, dtype=np.int32)),
        pa.array(shots.first), pa.array(shots.last),
        pa.array(shots.first_pts.astype(np.float64)), pa.array(shots.last_pts.astype(np.float64)),
        pa.array(shots.last - shots.first + 1),
    ], schema=SHOTS_SCHEMA.with_metadata(meta))


def with_shot_index(frames: pa.Table, shots: Shots) -> pa.Table:
    """A frames table with a ``shot_index`` column (int32) appended (schema metadata kept)."""
    fi = frames.column("frame_index").to_numpy()
    return frames.append_column(pa.field("shot_index", pa.int32()), pa.array(shots.shot_of(fi)))


def sampled_frames(shots: Shots, opts: ShotOptions, sampling: SamplingOptions) -> SamplingOptions:
    """The sampling the decoder gets once the shots are known: K per shot, or ``sampling`` with
    its samples moved off cuts (every-N sampling: by index; interval sampling: by the shots
    pass's pts), or ``sampling`` itself when shot sampling is off."""
    from .sampling import off_cuts, per_shot_frames

    if opts.per_shot:
        picked = per_shot_frames(shots, opts.per_shot, opts.cut_guard)
    elif opts.skip_cuts:
        if sampling.mode != "exact":
            raise ValueError("--skip-cuts needs exact sampling (keyframe sampling takes keyframes as they are)")
        picked = off_cuts(explicit_frames(shots, sampling), shots, opts.cut_guard)
    else:
        return sampling
    return PickedFrames(indices=tuple(picked))


def explicit_frames(shots: Shots, sampling: SamplingOptions) -> list[int]:
    """The presentation indices ``sampling`` (exact mode) picks, from the shots pass's frame
    count and pts."""
    if isinstance(sampling, PickedFrames):
        return sorted(set(sampling.indices))
    if sampling.mode != "exact":
        raise ValueError("--track-every and --skip-cuts need exact sampling (keyframe sampling decodes "
                         "keyframes only)")
    if sampling.every is not None:
        return list(range(0, shots.num_frames, sampling.every))
    return _by_seconds(shots.pts, sampling.interval)


def _by_seconds(pts: np.ndarray, interval: float) -> list[int]:
    """For k = 0, 1, ...: the first frame at or after pts[0] + k * interval (float seconds)."""
    if len(pts) == 0:
        return []
    targets = pts[0] + np.arange(0, (pts[-1] - pts[0]) / interval + 1) * interval
    idx = np.searchsorted(pts, targets - 1e-9)
    return sorted(set(int(i) for i in idx if i < len(pts)))


def options_key(opts: ShotOptions) -> dict | None:
    """What the shot options add to a scan's resume key (None when off: older keys stay valid)."""
    return asdict(opts) if opts.enabled else None
