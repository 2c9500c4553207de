"""``--shots codec``: shot boundaries from the encoder's own decisions, read from the bitstream,
with a short exact decode only where the bitstream leaves a doubt.

Finding cuts in pixels needs every frame decoded, while a CPU scan that samples every 100th
frame decodes a small part of the film (``benchmarks/shots_cost.py``: ``--shots content``
makes such a scan ~3x slower). But the encoder has looked at every frame already: x264, x265,
libvpx and FFmpeg's MPEG-4 encoder start an intra picture where a frame cannot be predicted
from the ones before it (their scene-cut decision, made on the full-resolution frames). This
detector reads those decisions:

1. One demux pass (``decode.index.demux_index(picture_types=True)``, no decoding): each
   frame's packet size and picture type (H.264: from the slice header; other codecs: the
   container's keyframe flag), in presentation order, and the encoder's settings string
   (x264/x265: ``keyint``, ``scenecut``).
2. Intra pictures. A stream whose encoder marks no scene change (its settings say
   ``scenecut=0`` or x264's ``intra_refresh=1``, or, without settings, every keyframe lies on
   its interval) is handed to the
   content detector: under rate control the packets at a cut are not larger than the others
   (measured on a 1080p x264 film at 6 Mbit/s without scene-cut keyframes: no P picture at any
   of its cuts reached 2.3x its neighbours), so the bitstream does not show its cuts. Otherwise,
   an intra picture that the keyframe interval forced (a keyframe exactly ``keyint``
   frames after the keyframe before it; ``keyint`` from the settings string, else the largest
   keyframe spacing when it occurs at least twice; every keyframe when neither tells) is
   *unsure*. Every other intra picture after the first frame is a cut: the encoder's scene-cut
   decision, taken as it is (a flash or a very fast change can make one too).
3. Inter pictures, when no settings string says the encoder marks scene changes itself (as
   x264's and x265's ``scenecut=40`` default does), e.g. FFmpeg's MPEG-4 encoder, whose scene
   detection is weaker: a packet at least ``SPIKE``
   times the median of its neighbours of the same picture type (±``WINDOW`` frames; P or B
   where the type is known) is an *unsure* cut somewhere between the reference picture before
   it and itself.
4. Unsure cuts are decoded exactly around the candidate (``PyAVDecoder`` with picked frames:
   from the keyframe before, skipping frames nothing refers to), scaled to 256x144
   (``thumbs.frames_thumbnails``, as the shots pass on a GPU decoder) and scored
   with PySceneDetect's content score between successive frames, as ``--shots content`` does;
   the cut is kept, on the frame of the highest score, when that score reaches the threshold
   (27 by default, the content detector's).

Cuts closer than ``min_shot_frames`` to the cut before are dropped. Cost: one demux pass plus
the decodes of step 4, which for encoders that mark scene changes (x264's and x265's
defaults) happen only at keyframes forced inside long shots. Misses: gradual transitions
(dissolves, fades: use TransNetV2), and cuts an encoder neither marks nor spends bits on.
Streams whose timestamps are missing or repeated (no presentation order before decoding) are
handed to the content detector too (both with a warning).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..decode import bitstream
from ..decode.index import demux_index

log = logging.getLogger(__name__)

# An inter picture whose packet is at least SPIKE times the median packet of its neighbours of
# the same type (within +-WINDOW frames) is a candidate cut (step 3 of the module doc).
SPIKE = 2.5
WINDOW = 12
# Size of the frames the content score is computed on (width, height), as --shots content.
SCORE_SIZE = (256, 144)


@dataclass
class CodecCuts:
    """What the bitstream says of one film, in presentation order.

    cuts: first frames of new shots; scores: float32 [N], each frame's packet size over the
    median of its neighbours of the same picture type (intra pictures: over the inter ones);
    pts: float64 [N] seconds; keyint: the keyframe interval used (None: unknown); scenecut:
    whether the encoder is known to mark scene changes (then inter pictures are not checked);
    verified: {candidate: content score of its best frame} for the unsure candidates decoded.
    """

    cuts: list[int]
    scores: np.ndarray
    pts: np.ndarray
    keyint: int | None
    scenecut: bool
    verified: dict[int, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _keyint(keys: np.ndarray, encoder: dict) -> int | None:
    """The keyframe interval: the encoder's setting, else the largest spacing of keyframes
    (presentation indices ``keys``) when it recurs."""
    if encoder.get("keyint", 0) > 0:
        return int(encoder["keyint"])
    gaps = np.diff(keys)
    if len(gaps) >= 2:
        top = int(gaps.max())
        if int((gaps == top).sum()) >= 2:
            return top
    return None


def _size_ratios(size: np.ndarray, pict: np.ndarray) -> np.ndarray:
    """float32 [N]: each packet over the median of its neighbours (+-WINDOW) of the same kind
    (intra / P / B / unknown inter; intra pictures against the inter ones)."""
    n = len(size)
    out = np.zeros(n, np.float32)
    if n < 2:
        return out
    kind = np.where(pict == bitstream.PICT_I, -1, pict).astype(np.int64)
    # Windows of +-WINDOW around every frame (NaN-padded at the ends); a frame's own packet and
    # packets of another kind are masked out, then the median of what is left.
    pad = np.concatenate([np.full(WINDOW, np.nan), size.astype(np.float64), np.full(WINDOW, np.nan)])
    kpad = np.concatenate([np.full(WINDOW, -9), kind, np.full(WINDOW, -9)])
    win = np.lib.stride_tricks.sliding_window_view(pad, 2 * WINDOW + 1)
    kwin = np.lib.stride_tricks.sliding_window_view(kpad, 2 * WINDOW + 1)
    same = np.where(kind[:, None] >= 0, kwin == kind[:, None], kwin >= 0)
    same[:, WINDOW] = False
    vals = np.where(same, win, np.nan)
    has = same.any(axis=1)
    med = np.full(n, np.nan)
    med[has] = np.nanmedian(vals[has], axis=1)
    out[has] = (size[has] / np.maximum(med[has], 1.0)).astype(np.float32)
    return out


def read_cuts(path: str | Path, threshold: float, min_gap: int) -> CodecCuts:
    """The cuts of the film at ``path`` (see the module doc). Raises DecodeError (naming the
    file) for a film that cannot be read; ValueError saying why for a film whose stream has no
    presentation order or whose encoder marks no scene change (the caller uses the content
    detector)."""
    path = Path(path)
    index = demux_index(path, picture_types=True)
    if not index.ordered:
        raise ValueError(f"{path}: the codec detector needs the frames' presentation order "
                         f"before decoding ({index.fallback})")
    order = index.order
    size, pict, key = index.size[order], index.pict[order], index.keyframe[order]
    pts = index.pts[order].astype(np.float64) * float(index.time_base)
    n = len(order)
    encoder = index.encoder or {}
    keys = np.flatnonzero(key)
    keyint = _keyint(keys, encoder)
    intra = np.flatnonzero(pict == bitstream.PICT_I)
    unknown_interval = keyint is None
    forced: set[int] = set()  # keyframes the interval may have forced: decoded to be sure
    prev_key = None
    for k in intra:
        if key[k] and k > 0 and (unknown_interval or (prev_key is not None and k - prev_key == keyint)):
            forced.add(int(k))
        if key[k]:
            prev_key = int(k)
    sure = [int(k) for k in intra if k > 0 and int(k) not in forced]
    why = ""
    if encoder.get("scenecut", 1) == 0:
        why = "its encoder settings say scenecut=0"
    elif encoder.get("intra_refresh", 0):
        why = "its encoder settings say intra_refresh=1"
    elif not unknown_interval and not sure and "scenecut" not in encoder:
        why = "no keyframe lies off its keyframe interval"
    if why:
        raise ValueError(f"{path}: the encoder put no keyframe at scene changes ({why}), so the "
                         "bitstream does not show the cuts")
    # Whether the encoder is known to mark scene changes (its settings say so): then an inter
    # picture is not a cut, else its size is checked too.
    scenecut = bool(encoder.get("scenecut", 0))
    ratios = _size_ratios(size, pict)
    unsure: dict[int, list[int]] = {k: [k - 1, k] for k in sorted(forced)}
    if not scenecut:
        anchors = np.flatnonzero(pict != bitstream.PICT_B)  # references (unknown inter included)
        for k in np.flatnonzero((pict != bitstream.PICT_I) & (ratios >= SPIKE)):
            k = int(k)
            before = anchors[anchors < k]
            start = int(before[-1]) if len(before) else max(0, k - 1)
            if pict[k] == bitstream.PICT_B:
                start = max(0, k - 1)  # a B picture: the cut is on it (the one before is shown)
            unsure.setdefault(k, list(range(start, k + 1)))
    result = CodecCuts(cuts=[], scores=ratios, pts=pts, keyint=keyint, scenecut=scenecut)
    found = set(sure)
    if unsure:
        found |= _verify(path, unsure, threshold, n, result)
    last = None
    for k in sorted(found):
        if 0 < k < n and (last is None or k - last >= min_gap):
            result.cuts.append(k)
            last = k
    return result


def _verify(path: Path, windows: dict[int, list[int]], threshold: float, n: int,
            result: CodecCuts) -> set[int]:
    """Decode every window's frames exactly and keep, per window, the frame after the largest
    content score when it reaches ``threshold``."""
    from ..decode.pyav import PyAVDecoder
    from ..errors import DecodeError
    from ..sampling import PickedFrames
    from . import content_detector
    from .thumbs import frames_thumbnails

    wanted = sorted({f for w in windows.values() for f in w if 0 <= f < n})
    thumbs: dict[int, np.ndarray] = {}
    try:
        for batch in PyAVDecoder().frames(path, PickedFrames(indices=tuple(wanted)), batch_size=16):
            (chunk,) = frames_thumbnails([batch], SCORE_SIZE)  # picked frames: not consecutive
            thumbs.update(zip(batch.frame_index.tolist(), chunk.rgb))
    except DecodeError as e:  # a damaged stretch: what was decoded is still scored
        result.problems.append(f"codec shots: verifying candidate cuts: {e.reason}")
    kept: set[int] = set()
    for cand, frames in windows.items():
        have = [f for f in frames if f in thumbs]
        if len(have) < 2:
            continue
        det = content_detector(threshold, 1)
        best, best_at = -1.0, None
        for i, f in enumerate(have):
            det.process_frame(i, np.ascontiguousarray(thumbs[f][..., ::-1]))
            score = float(det._frame_score or 0.0) if i else 0.0  # the score it compared
            if i and score > best:
                best, best_at = score, f
        result.verified[cand] = best
        if best_at is not None and best >= threshold:
            kept.add(best_at)
    return kept
