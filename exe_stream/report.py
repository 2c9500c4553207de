"""``report``: PNG plots and one self-contained HTML page about a scan and its statistics.

Reads a scan's shards and manifest (and, when two models are compared, ``stats.stats``) and
writes into ``out_dir`` one PNG per plot and ``report.html``, which embeds the PNGs as
base64 data URIs so the page works on its own. matplotlib is imported lazily and drawn on
its Agg canvas without pyplot's global state, so the rest of the package works without it.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from .options import check_range
from .atomic import atomic_write_text
from . import __version__
from .errors import StatsError
from .shards import Manifest, prob_column, read_faces, read_frames
from .stats import ALL_GROUP, FilmMeasures, StatsOptions, StatsResult, available_models, film_measures, stats

# One colour per emotion in every plot; the common emotion names have fixed colours (and their
# usual spellings the same colour), other labels take the next free colour in order.
EMOTION_COLOURS = {
    "angry": "#d62728", "anger": "#d62728",
    "disgust": "#2ca02c", "disgusted": "#2ca02c",
    "fear": "#9467bd", "fearful": "#9467bd", "scared": "#9467bd",
    "happy": "#f0b400", "happiness": "#f0b400", "joy": "#f0b400",
    "sad": "#1f77b4", "sadness": "#1f77b4",
    "surprise": "#ff7f0e", "surprised": "#ff7f0e",
    "neutral": "#8c8c8c",
    "contempt": "#8c564b",
}
_EXTRA_COLOURS = ("#e377c2", "#17becf", "#bcbd22", "#393b79", "#ad494a", "#637939", "#7b4173", "#3182bd")
# Known emotions come first in this order (FER2013's, then contempt); other labels follow in
# the order the models list them.
_CANONICAL = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral", "contempt")
_CANON_RANK = {
    **{name: i for i, name in enumerate(_CANONICAL)},
    "anger": 0, "disgusted": 1, "fearful": 2, "scared": 2, "happiness": 3, "joy": 3,
    "sadness": 4, "surprised": 5,
}
# A z of 1.96 gives 95% intervals.
Z95 = 1.959963984540054
# Timelines draw the 95% band of this many of a film's most frequent emotions.
BANDS = 3
# Significance level the difference plot marks (on the corrected p-values).
ALPHA = 0.05


@dataclass(frozen=True)
class FilmInfo:
    """One film of the scan as the report names it."""

    film_id: str
    # Metadata title, else the film id.
    title: str
    # Metadata genre, else "".
    genre: str
    # Manifest status (done, partial, failed), "" when the manifest does not list the film.
    status: str
    # Why a film failed or is partial.
    reason: str = ""
    # Sampled frames (rows of its frames shard).
    frames: int = 0
    # Its metadata record (manifest's, updated by the report's metadata).
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class FilmFaces:
    """One model's faces in one film after the face filters: 1-D arrays of length N."""

    frame_index: np.ndarray  # int64 [N]
    pts_seconds: np.ndarray  # float64 [N]
    label: np.ndarray  # int64 [N], index into ScanView.emotions
    face_area_rel: np.ndarray  # float32 [N]
    # int32 [N] character of each face (scans with --characters), else None.
    character: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.frame_index)
        for name in ("pts_seconds", "label", "face_area_rel") + (("character",) if self.character is not None else ()):
            if len(getattr(self, name)) != n:
                raise ValueError(f"FilmFaces.{name} has length {len(getattr(self, name))}, expected {n}")

    def __len__(self) -> int:
        return len(self.frame_index)

    def __repr__(self) -> str:
        return f"FilmFaces(n={len(self)})"


@dataclass
class ScanView:
    """What the plots need from a scan: films, sampled frames, and each model's faces."""

    out: Path
    films: list[FilmInfo]
    # film_id -> (frame_index int64 [F] sorted, pts_seconds float64 [F]) of the sampled frames.
    frames: dict[str, tuple[np.ndarray, np.ndarray]]
    # Models shown, in order (model A first).
    models: tuple[str, ...]
    # Every model's labels in its own order.
    labels: dict[str, tuple[str, ...]]
    # Union of the shown models' labels in the report's order (one colour each).
    emotions: tuple[str, ...]
    # model_id -> film_id -> faces after the filters.
    faces: dict[str, dict[str, FilmFaces]]
    # film_id -> face_area_rel float64 [N] of every detected face (before the filters).
    areas: dict[str, np.ndarray]
    # Faces per model before the filters (all films).
    faces_total: dict[str, int]

    def __repr__(self) -> str:
        return (f"ScanView(films={len(self.films)}, models={list(self.models)}, "
                f"emotions={len(self.emotions)})")


@dataclass
class ReportResult:
    """Paths a report wrote."""

    out_dir: Path
    # The self-contained page.
    html: Path
    # Plot name -> PNG path: shares, timeline-<film_id>..., face_sizes, dominant, differences.
    plots: dict[str, Path]
    # Models shown (A first); two when they were compared.
    models: tuple[str, ...]
    # Whether the page has a model-vs-model comparison (stats table and difference plot).
    compared: bool

    def __repr__(self) -> str:
        return (f"ReportResult(html={str(self.html)!r}, plots={len(self.plots)}, "
                f"models={list(self.models)}, compared={self.compared})")


# --------------------------------------------------------------------------------------------
# Numeric helpers (the spec of what the timeline plots show)


def frame_label_counts(frame_index: np.ndarray, face_frame_index: np.ndarray, face_label: np.ndarray,
                       n_classes: int) -> np.ndarray:
    """Faces per label on each sampled frame.

    frame_index: int64 [F], the sampled frames in ascending order; face_frame_index: int64 [N],
    each face's frame (one of frame_index); face_label: int [N] in [0, n_classes).
    Returns int64 [F, n_classes].
    """
    frame_index = np.asarray(frame_index, np.int64)
    pos = np.searchsorted(frame_index, np.asarray(face_frame_index, np.int64))
    if len(pos) and (pos.max() >= len(frame_index) or np.any(frame_index[pos] != face_frame_index)):
        raise ValueError("faces refer to frames that are not among the sampled frames")
    counts = np.zeros((len(frame_index), n_classes), np.int64)
    np.add.at(counts, (pos, np.asarray(face_label, np.int64)), 1)
    return counts


def rolling_counts(counts: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Label counts summed over a centred window of ``window`` sampled frames.

    counts: int [F, C] per frame. The window around frame i covers frames
    ``i - (window - 1) // 2 .. i + window // 2``, cut at the ends of the film.
    Returns (k int64 [F, C]: faces per label in the window, n int64 [F]: faces in the window).
    """
    check_range("window", window, lo=1, integer=True, unit="sampled frame(s)")
    counts = np.asarray(counts, np.int64)
    f = counts.shape[0]
    cs = np.vstack([np.zeros((1, counts.shape[1]), np.int64), np.cumsum(counts, axis=0)])
    i = np.arange(f)
    lo = np.clip(i - (window - 1) // 2, 0, f)
    hi = np.clip(i + window // 2 + 1, 0, f)
    k = cs[hi] - cs[lo]
    return k, k.sum(axis=1)


def rolling_shares(counts: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Share of each label among the faces in a centred window of sampled frames.

    counts: int [F, C] per frame. Returns (share float64 [F, C], NaN where the window holds
    no face; n int64 [F], faces in the window). See ``rolling_counts`` for the window.
    """
    k, n = rolling_counts(counts, window)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(n[:, None] > 0, k / np.maximum(n, 1)[:, None], np.nan)
    return share, n


def wilson_interval(k: np.ndarray, n: np.ndarray, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion k / n (95% for the default z).

    k, n: arrays of the same shape (broadcastable), 0 <= k <= n. Returns (low, high) float64
    arrays, NaN where n == 0.
    """
    k = np.asarray(k, np.float64)
    n = np.asarray(n, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1.0 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z / denom * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        low = np.where(n > 0, np.clip(centre - half, 0.0, 1.0), np.nan)
        high = np.where(n > 0, np.clip(centre + half, 0.0, 1.0), np.nan)
    return low, high


def default_window(n_frames: int) -> int:
    """Rolling window (sampled frames) for a film: about a 25th of the film, at least 5."""
    return max(5, int(round(n_frames / 25)))


def emotion_order(label_lists: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """Union of the models' labels: known emotions in a fixed order, then the rest in model order."""
    seen: list[str] = []
    keys: set[str] = set()
    for labels in label_lists:
        for lbl in labels:
            if prob_column(lbl) not in keys:  # "Happy" and "happy" are one emotion
                keys.add(prob_column(lbl))
                seen.append(lbl)
    known = sorted((l for l in seen if l.lower() in _CANON_RANK), key=lambda l: _CANON_RANK[l.lower()])
    return tuple(known + [l for l in seen if l.lower() not in _CANON_RANK])


def emotion_colours(emotions: Sequence[str]) -> dict[str, str]:
    """A colour per emotion: fixed for the common names, the next free colour for the rest."""
    colours: dict[str, str] = {}
    extra = iter(_EXTRA_COLOURS * (1 + len(emotions) // len(_EXTRA_COLOURS)))
    for e in emotions:
        colours[e] = EMOTION_COLOURS.get(e.lower()) or next(extra)
    return colours


# --------------------------------------------------------------------------------------------
# Reading the scan


def choose_models(out: Path, a: str | None = None, b: str | None = None) -> tuple[str, ...]:
    """The models a report shows, model A first: ``a`` and ``b`` when both are given; with
    neither, the scan's models when it holds one or two (sorted, as ``stats`` pairs them);
    with one of them, it and the scan's other model when the scan holds two, else it alone.

    Raises ``StatsError`` for a model not in the scan (naming the ones it has) and
    ``ValueError`` when the choice is ambiguous or A and B are the same.
    """
    avail = available_models(out)
    if not avail:
        raise StatsError(f"no faces shards under {out}: not a scan's output directory, or nothing scanned")
    for m in (a, b):
        if m is not None and m not in avail:
            raise StatsError(f"model {m!r} is not in the scan {out}; available models: {', '.join(avail)}")
    if a is not None and b is not None:
        if a == b:
            raise ValueError(f"--a and --b are the same model {a!r}; give two different models")
        return (a, b)
    if a is None and b is None:
        if len(avail) <= 2:
            return tuple(avail)
        raise ValueError(f"the scan {out} holds {len(avail)} models ({', '.join(avail)}); "
                         "choose two with --a and --b, or one with --a")
    given = a if a is not None else b
    assert given is not None
    if len(avail) == 2:
        other = avail[1] if given == avail[0] else avail[0]
        return (given, other) if a is not None else (other, given)
    return (given,)


def _labels_of(table: pa.Table) -> tuple[str, ...]:
    meta = table.schema.metadata or {}
    cols = [c for c in table.column_names if c.startswith("prob_")]
    raw = meta.get(b"exe_stream.labels")
    if raw is not None:
        labels = tuple(str(x) for x in json.loads(raw.decode()))
        if [prob_column(x) for x in labels] == cols:
            return labels
    # Without metadata: the prob_ columns, which are the labels made identifier-safe.
    return tuple(c[len("prob_"):] for c in cols)


def face_mask(confidence: np.ndarray, area: np.ndarray, frame_index: np.ndarray, face_index: np.ndarray,
              opts: StatsOptions) -> np.ndarray:
    """Faces of one film kept by the face filters of ``opts``, as ``stats`` keeps them:
    confidence >= min_confidence and face_area_rel >= min_face_area, then (largest_only) the
    largest remaining face of each frame. All inputs 1-D [N]; returns bool [N]."""
    keep = (np.asarray(confidence) >= opts.min_confidence) & (np.asarray(area) >= opts.min_face_area)
    if opts.largest_only and keep.any():
        sel = np.flatnonzero(keep)
        frame, face = np.asarray(frame_index)[sel], np.asarray(face_index)[sel]
        order = np.lexsort((face, -np.asarray(area, np.float64)[sel], frame))
        first = np.ones(order.size, bool)
        first[1:] = frame[order][1:] != frame[order][:-1]
        keep = np.zeros_like(keep)
        keep[sel[order[first]]] = True
    return keep


def _col(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False)


def load_scan(out: Path, models: Sequence[str], opts: StatsOptions = StatsOptions(),
              metadata: Mapping[str, Mapping[str, Any]] | None = None) -> ScanView:
    """The films, sampled frames and faces (after the face filters of ``opts``) of ``models``.

    ``metadata`` (film id or file name -> record with title, genre, ...) adds to the
    manifest's, as in ``stats``.
    """
    out = Path(out)
    manifest = Manifest.load(out)
    frames_t = read_frames(out)
    fid_col = np.asarray(frames_t.column("film_id").to_pylist(), dtype=object)
    fi_all, pts_all = _col(frames_t, "frame_index"), _col(frames_t, "pts_seconds")
    frames: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for fid in sorted(set(fid_col.tolist())):
        sel = fid_col == fid
        order = np.argsort(fi_all[sel], kind="stable")
        frames[fid] = (fi_all[sel][order], pts_all[sel][order])
    films: list[FilmInfo] = []
    for fid in sorted(set(manifest.films) | set(frames)):
        entry = manifest.films.get(fid, {})
        meta = dict(entry.get("metadata") or {})
        extra = (metadata or {}).get(fid)
        if extra is None and entry.get("path"):
            extra = (metadata or {}).get(Path(entry["path"]).name)
        meta.update(extra or {})
        title = meta.get("title")
        films.append(FilmInfo(
            film_id=fid, title=str(title) if title not in (None, "") else fid,
            genre=str(meta.get("genre") or ""), status=str(entry.get("status", "")),
            reason=str(entry.get("reason", "")),
            frames=int(entry.get("frames_sampled", len(frames[fid][0]) if fid in frames else 0)),
            metadata=meta,
        ))
    tables = {m: read_faces(out, m) for m in models}
    labels = {m: _labels_of(t) for m, t in tables.items()}
    emotions = emotion_order([labels[m] for m in models])
    index = {prob_column(e): i for i, e in enumerate(emotions)}
    faces: dict[str, dict[str, FilmFaces]] = {}
    areas: dict[str, np.ndarray] = {}
    for m, t in tables.items():
        fids = np.asarray(t.column("film_id").to_pylist(), dtype=object)
        fi, pts, area = _col(t, "frame_index"), _col(t, "pts_seconds"), _col(t, "face_area_rel")
        conf, face = _col(t, "confidence"), _col(t, "face_index")
        lab = np.asarray([index[prob_column(x)] for x in t.column("label").to_pylist()], np.int64)
        char = _col(t, "character_id") if "character_id" in t.column_names else None
        faces[m] = {}
        for fid in frames:
            sel = np.flatnonzero(fids == fid)
            if m == models[0]:
                areas[fid] = area[sel].astype(np.float64)
            sel = sel[face_mask(conf[sel], area[sel], fi[sel], face[sel], opts)]
            c = char[sel] if char is not None else None
            if c is not None and (c.dtype == object or np.isnan(c.astype(np.float64)).any()):
                c = None  # a film scanned without --characters (nulls in the union schema)
            faces[m][fid] = FilmFaces(fi[sel], pts[sel], lab[sel], area[sel],
                                      c.astype(np.int32) if c is not None else None)
    return ScanView(out=out, films=films, frames=frames, models=tuple(models), labels=labels,
                    emotions=emotions, faces=faces, areas=areas,
                    faces_total={m: t.num_rows for m, t in tables.items()})


def measure_matrix(fm: FilmMeasures, emotions: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A model's per-film measures with columns in the report's emotion order (0 for an
    emotion the measures do not have): (film ids, float64 [F, E], faces counted int64 [F])."""
    col = {prob_column(x): j for j, x in enumerate(fm.labels)}
    values = np.zeros((len(fm.film_ids), len(emotions)))
    for k, e in enumerate(emotions):
        j = col.get(prob_column(e))
        if j is not None:
            values[:, k] = fm.values[:, j]
    return list(fm.film_ids), values, fm.n_faces


def _dominant_counts(fm: FilmMeasures) -> dict[str, int]:
    dom = fm.dominant()
    return {x: dom.count(x) for x in fm.labels}


# --------------------------------------------------------------------------------------------
# Plots (matplotlib Figure on the Agg canvas; no pyplot state)


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("exe-stream report needs matplotlib: pip install matplotlib") from e
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, facecolor="white")
    return path


def _short(text: str, n: int = 38) -> str:
    return text if len(text) <= n else text[: n - 1].rstrip() + "\u2026"


def _text_colour(hex_colour: str) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"


def _emotion_legend(fig, emotions: Sequence[str], colours: dict[str, str], kind: str = "patch") -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if kind == "line":
        handles = [Line2D([], [], color=colours[e], lw=2.5, label=e) for e in emotions]
    else:
        handles = [Patch(facecolor=colours[e], label=e) for e in emotions]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(emotions), 8), frameon=False,
               title="emotion (top label)", fontsize=9)


def _titles(view: ScanView) -> dict[str, str]:
    return {f.film_id: f.title for f in view.films}


def _colour_of(colours: dict[str, str], emotion: str) -> str:
    if emotion in colours:
        return colours[emotion]
    key = prob_column(emotion)
    return next((c for e, c in colours.items() if prob_column(e) == key), "#333333")


def plot_shares(view: ScanView, path: Path, measures: Mapping[str, tuple[list[str], np.ndarray, np.ndarray]],
                xlabel: str, fraction: bool = True) -> Path:
    """Horizontal stacked bars, one per film with sampled frames, of each emotion's measure;
    a panel per model. ``measures``: model -> (film ids, float [F, E] in ``view.emotions``
    order, faces counted [F]) (see ``measure_matrix``); films missing there show "no faces".
    ``fraction``: the measures of a film sum to 1 (shares), drawn as percentages."""
    from matplotlib.ticker import PercentFormatter

    colours = emotion_colours(view.emotions)
    titles = _titles(view)
    fids = list(view.frames)
    y = np.arange(len(fids))
    totals = [float(v.sum(axis=1).max(initial=0.0)) for _, v, _ in measures.values()]
    xmax = 1.0 if fraction else max(max(totals, default=0.0), 1e-9)
    fig = _figure(1.5 + 5.2 * len(view.models), 1.9 + 0.42 * max(len(fids), 2))
    axes = fig.subplots(1, len(view.models), sharey=True, squeeze=False)[0]
    for ax, model in zip(axes, view.models):
        ids, values, n = measures[model]
        row = {fid: i for i, fid in enumerate(ids)}
        left = np.zeros(len(fids))
        for j, e in enumerate(view.emotions):
            w = np.array([float(values[row[f], j]) if f in row else 0.0 for f in fids])
            w = np.nan_to_num(w)
            ax.barh(y, w, left=left, height=0.72, color=colours[e], edgecolor="white", linewidth=0.6)
            for yi in np.flatnonzero(w >= 0.08 * xmax):
                text = f"{100 * w[yi]:.0f}%" if fraction else f"{w[yi]:.2g}"
                ax.text(left[yi] + w[yi] / 2, yi, text, ha="center", va="center", fontsize=7.5,
                        color=_text_colour(colours[e]))
            left += w
        for yi, f in enumerate(fids):
            k = int(n[row[f]]) if f in row else 0
            ax.text(1.015 * xmax, yi, f"n={k}" if k else "no faces", va="center", fontsize=8, color="#444")
        ax.set_xlim(0, 1.14 * xmax)
        if fraction:
            ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
            ax.xaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_xlabel(xlabel)
        ax.set_title(f"{'AB'[view.models.index(model)]}: {model}" if len(view.models) == 2 else model,
                     fontsize=11)
        ax.spines[["top", "right"]].set_visible(False)
        ax.set_yticks(y, [_short(titles.get(f, f)) for f in fids])
    axes[0].invert_yaxis()
    fig.suptitle("Emotion shares per film" if fraction else "Emotions per film", fontsize=13)
    _emotion_legend(fig, view.emotions, colours)
    return _save(fig, path)


def plot_timeline(view: ScanView, film_id: str, path: Path, window: int | None = None) -> Path:
    """One film over time, a row per model: rolling emotion shares with 95% Wilson bands
    (left) and cumulative faces per emotion (right)."""
    colours = emotion_colours(view.emotions)
    fi, pts = view.frames[film_id]
    w = window or default_window(len(fi))
    minutes = len(pts) > 0 and float(pts.max()) > 180
    t = pts / 60 if minutes else pts
    marker = "." if len(fi) <= 60 else None
    # The last sampled frame stands for one sampling step (so its faces show in the cumulative counts).
    dt = float(np.median(np.diff(t))) if len(t) > 1 else 1.0
    t_end = np.append(t, t[-1] + dt) if len(t) else t
    fig = _figure(12.5, 1.3 + 2.9 * len(view.models))
    axes = fig.subplots(len(view.models), 2, sharex=True, squeeze=False, gridspec_kw={"width_ratios": [3, 2]})
    shown: set[int] = set()
    for r, model in enumerate(view.models):
        faces = view.faces[model].get(film_id)
        counts = frame_label_counts(fi, faces.frame_index, faces.label, len(view.emotions))
        k, n = rolling_counts(counts, w)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(n[:, None] > 0, k / np.maximum(n, 1)[:, None], np.nan)
        low, high = wilson_interval(k, n[:, None])
        present = np.flatnonzero(counts.sum(axis=0) > 0)
        shown.update(present.tolist())
        ax, ax2 = axes[r]
        # Bands for the most frequent emotions only: more would hide each other.
        banded = set(present[np.argsort(-counts.sum(axis=0)[present], kind="stable")][:BANDS].tolist())
        for j in present:
            c = colours[view.emotions[j]]
            if j in banded:
                ax.fill_between(t, low[:, j], high[:, j], color=c, alpha=0.15, linewidth=0)
            ax.plot(t, share[:, j], color=c, lw=1.7, marker=marker, ms=4)
            cum = np.cumsum(counts[:, j])
            ax2.step(t_end, np.append(cum, cum[-1]), where="post", color=c, lw=1.7)
        if not len(present):
            for a in (ax, ax2):
                a.text(0.5, 0.5, "no faces detected", transform=a.transAxes, ha="center", va="center",
                       color="#666")
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("share of faces")
        ax.set_title(f"{model}: share per emotion, rolling window of {w} sampled frames "
                     f"(95% band: top {min(BANDS, len(present)) or BANDS})",
                     fontsize=10, loc="left")
        ax2.set_ylabel("faces so far")
        ax2.set_title(f"{model}: cumulative faces per emotion", fontsize=10, loc="left")
        for a in (ax, ax2):
            a.grid(alpha=0.25)
            a.spines[["top", "right"]].set_visible(False)
    for a in axes[:, 1]:
        a.yaxis.get_major_locator().set_params(integer=True)
    if len(t):
        axes[0, 0].set_xlim(float(t[0]), float(t_end[-1]))
    for a in axes[-1]:
        a.set_xlabel("time (min)" if minutes else "time (s)")
    title = _titles(view).get(film_id, film_id)
    fig.suptitle(f"{title}: emotions over time ({len(fi)} sampled frames)", fontsize=13)
    _emotion_legend(fig, [view.emotions[j] for j in sorted(shown)] or list(view.emotions), colours, "line")
    return _save(fig, path)


def plot_characters(view: ScanView, film_id: str, path: Path) -> Path:
    """One film's characters over time (scans with --characters), a panel per model: a row per
    character, a dot per face at its time, coloured by its top label."""
    colours = emotion_colours(view.emotions)
    fig = _figure(12.5, 1.3 + 0.5 * (1 + max(len(np.unique(view.faces[m][film_id].character)) for m in view.models))
                  * len(view.models))
    axes = fig.subplots(len(view.models), 1, sharex=True, squeeze=False)[:, 0]
    shown: set[int] = set()
    for ax, model in zip(axes, view.models):
        faces = view.faces[model][film_id]
        chars = np.unique(faces.character)
        for j in np.unique(faces.label):
            sel = faces.label == j
            shown.add(int(j))
            ax.scatter(faces.pts_seconds[sel], faces.character[sel], s=14, color=colours[view.emotions[j]],
                       linewidths=0)
        ax.set_yticks(chars, [f"character {c}" for c in chars])
        ax.set_ylim(float(chars.min(initial=0)) - 0.6, float(chars.max(initial=0)) + 0.6)
        ax.invert_yaxis()
        ax.set_title(f"{model}: each face of each character, by its top label", fontsize=10, loc="left")
        ax.grid(alpha=0.25)
        ax.spines[["top", "right"]].set_visible(False)
    axes[-1].set_xlabel("time (s)")
    fig.suptitle(f"{_titles(view).get(film_id, film_id)}: characters over time", fontsize=13)
    _emotion_legend(fig, [view.emotions[j] for j in sorted(shown)] or list(view.emotions), colours, "patch")
    return _save(fig, path)


def plot_face_sizes(view: ScanView, path: Path, areas: dict[str, np.ndarray],
                    min_face_area: float = 0.0) -> Path:
    """Face sizes (share of the frame's area, log scale): histogram over all films (left) and
    a box plot per film (right). ``areas``: film_id -> float [N] of every detected face."""
    titles = _titles(view)
    fids = [f for f in areas]
    allv = np.concatenate([areas[f] for f in fids]) if fids else np.zeros(0)
    allv = allv[allv > 0]
    fig = _figure(12.5, max(3.6, 1.6 + 0.38 * len(fids)))
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.2]})
    if len(allv):
        lo = min(1e-3, float(allv.min()) / 1.2)
        bins = np.geomspace(lo, 1.0, 31)
        ax.hist(allv, bins=bins, color="#4c72b0", edgecolor="white", linewidth=0.5)
        ax2.boxplot([areas[f][areas[f] > 0] for f in fids], orientation="horizontal", widths=0.6,
                    flierprops={"markersize": 3, "alpha": 0.5}, medianprops={"color": "#c44e52"})
        jitter = np.random.default_rng(0)
        for i, f in enumerate(fids, start=1):
            v = areas[f][areas[f] > 0]
            if 0 < len(v) <= 300:  # the faces themselves where they are few enough to see
                ax2.scatter(v, i + jitter.uniform(-0.18, 0.18, len(v)), s=14, color="#2b4f8a", alpha=0.6,
                            linewidths=0, zorder=3)
        ax2.set_yticks(np.arange(1, len(fids) + 1), [
            _short(titles.get(f, f)) + f" (n={int((areas[f] > 0).sum())})" for f in fids])
        ax2.invert_yaxis()
        for a in (ax, ax2):
            a.set_xscale("log")
            a.set_xlim(lo, 1.0)
            if min_face_area > 0:
                a.axvline(min_face_area, color="#c44e52", ls="--", lw=1.2, label=f"--min-face-area {min_face_area:g}")
        if min_face_area > 0:
            ax.legend(fontsize=8, frameon=False, loc="upper left")
    else:
        for a in (ax, ax2):
            a.text(0.5, 0.5, "no faces detected", transform=a.transAxes, ha="center", va="center", color="#666")
    ax.set_title(f"all films ({len(allv)} faces)", fontsize=10)
    ax.set_xlabel("face area / frame area (log scale)")
    ax.set_ylabel("faces")
    ax2.set_title("per film (box: quartiles, red: median, dots: faces)", fontsize=10)
    ax2.set_xlabel("face area / frame area (log scale)")
    for a in (ax, ax2):
        a.grid(alpha=0.25)
        a.spines[["top", "right"]].set_visible(False)
    fig.suptitle("Face sizes (every detected face)", fontsize=13)
    return _save(fig, path)


def plot_dominant(view: ScanView, path: Path, counts: Mapping[str, Mapping[str, int]]) -> Path:
    """Bars: films per dominant emotion, a bar per model (model B hatched).
    ``counts``: model -> emotion -> films (emotions matched to ``view.emotions`` by name)."""
    from matplotlib.patches import Patch

    colours = emotion_colours(view.emotions)
    x = np.arange(len(view.emotions))
    m = len(view.models)
    width = 0.8 / m
    fig = _figure(max(6.5, 1.1 * len(view.emotions) + 1.5), 4.4)
    ax = fig.subplots()
    top = 0
    for i, model in enumerate(view.models):
        by_key = {prob_column(e): v for e, v in counts[model].items()}
        vals = np.array([by_key.get(prob_column(e), 0) for e in view.emotions])
        top = max(top, int(vals.max(initial=0)))
        bars = ax.bar(x + (i - (m - 1) / 2) * width, vals, width * 0.92,
                      color=[colours[e] for e in view.emotions], edgecolor="black", linewidth=0.6,
                      hatch="//" if i == 1 else None, alpha=1.0 if i == 0 else 0.75)
        ax.bar_label(bars, labels=[str(v) if v else "" for v in vals], fontsize=8, padding=2)
    ax.set_xticks(x, view.emotions)
    ax.set_ylim(0, max(1, top) * 1.18)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("films")
    ax.set_xlabel("dominant emotion (largest measure in the film)")
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", alpha=0.25)
    if m > 1:
        ax.legend(handles=[Patch(facecolor="white", edgecolor="black", hatch="//" if i else None,
                                 label=f"{'AB'[i]}: {model}") for i, model in enumerate(view.models)],
                  frameon=False, fontsize=9)
    fig.suptitle("Dominant emotion: films per emotion" + (" and model" if m > 1 else ""), fontsize=13)
    return _save(fig, path)


def plot_differences(result: StatsResult, emotions: Sequence[str], path: Path, xlabel: str) -> Path:
    """Forest plot: per emotion, the mean per-film difference A - B with its bootstrap 95%
    interval; filled dots are significant (paired t-test, corrected p < ALPHA). A panel per
    group (``all`` first, then the ``by`` groups)."""
    from matplotlib.lines import Line2D

    colours = emotion_colours(emotions)
    rank = {prob_column(e): i for i, e in enumerate(emotions)}
    groups = list(result.groups)
    ncols = min(len(groups), 3)
    nrows = math.ceil(len(groups) / ncols)
    n_emo = len(result.labels)
    fig = _figure(1.0 + 5.6 * ncols, 1.3 + nrows * (0.9 + 0.42 * n_emo))
    axes = fig.subplots(nrows, ncols, sharex=True, squeeze=False).ravel()
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    for ax, g in zip(axes, groups):
        recs = sorted(result.group_records(g), key=lambda r: rank.get(prob_column(r["emotion"]), 1 << 30))
        for yi, r in enumerate(recs):
            c = _colour_of(colours, r["emotion"])
            sig = r["p_t_adj"] < ALPHA
            if math.isfinite(r["ci_low"]) and math.isfinite(r["ci_high"]):
                ax.plot([r["ci_low"], r["ci_high"]], [yi, yi], color=c, lw=2.4, solid_capstyle="butt")
            ax.plot([r["mean_diff"]], [yi], "o", ms=8.5, mec=c, mew=2, mfc=c if sig else "white", zorder=3)
            ax.text(1.02, yi, f"p_t={fmt_p(r['p_t_adj'])}{stars(r['p_t_adj'])}\np_W={fmt_p(r['p_w_adj'])}"
                    f"{stars(r['p_w_adj'])}", transform=ax.get_yaxis_transform(), va="center", fontsize=7.5,
                    color="#333")
        ax.axvline(0, color="#555", lw=1, ls="--", zorder=1)
        ax.set_yticks(np.arange(len(recs)), [r["emotion"] for r in recs])
        ax.set_ylim(len(recs) - 0.5, -0.5)
        n = recs[0]["n_films"] if recs else 0
        ax.set_title(f"{g} ({n} films)" if g != ALL_GROUP else f"all paired films ({n})", fontsize=11)
        ax.grid(axis="x", alpha=0.25)
        ax.spines[["top", "right"]].set_visible(False)
    for ax in axes[:len(groups)][-ncols:]:
        ax.set_xlabel(f"A \u2212 B: {xlabel}")
    handles = [
        Line2D([], [], marker="o", ls="", ms=8, mec="#333", mfc="#333",
               label=f"significant: paired t-test, {result.options.correction}-corrected p < {ALPHA}"),
        Line2D([], [], marker="o", ls="", ms=8, mec="#333", mfc="white", label="not significant"),
        Line2D([], [], color="#333", lw=2.4, label="bootstrap 95% interval of the mean difference"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=3 if ncols > 1 else 1, frameon=False,
               fontsize=9)
    fig.suptitle(f"Model differences per emotion: A = {result.a}, B = {result.b}\n"
                 "(p_t, p_W: corrected p-values of the paired t and Wilcoxon tests)", fontsize=12)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# The page


def fmt_num(v: Any, spec: str = ".3f") -> str:
    """A number for the statistics table ("–" for NaN or None)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "\u2013"
    return format(v, spec)


def fmt_p(p: Any) -> str:
    """A p-value: three decimals, "<0.001" below that, "–" for NaN."""
    if p is None or not math.isfinite(p):
        return "\u2013"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def stars(p: Any) -> str:
    """Significance stars of a (corrected) p-value: * < 0.05, ** < 0.01, *** < 0.001."""
    if p is None or not math.isfinite(p):
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


def measure_text(opts: StatsOptions) -> str:
    """What the per-film measure of an emotion is, in words."""
    return {
        ("label", "faces"): "share of the film's faces with the emotion as top label",
        ("prob", "faces"): "mean probability of the emotion over the film's faces",
        ("label", "frames"): "faces with the emotion as top label per sampled frame",
        ("prob", "frames"): "summed probability of the emotion per sampled frame",
    }[(opts.measure, opts.per)]


def _filters_text(opts: StatsOptions) -> str:
    parts = []
    if opts.min_confidence > 0:
        parts.append(f"confidence \u2265 {opts.min_confidence:g}")
    if opts.min_face_area > 0:
        parts.append(f"face area \u2265 {opts.min_face_area:g} of the frame")
    if opts.largest_only:
        parts.append("largest face of each frame only")
    return "; ".join(parts) if parts else "none (every detected face counts)"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.1em}h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.sub{color:#666;margin-top:0}code{background:#f4f4f4;padding:0 .25em}
table{border-collapse:collapse;margin:1em 0;font-size:.88em}
th,td{border-bottom:1px solid #e4e4e4;padding:.3em .6em;text-align:right;vertical-align:top}
th{background:#f4f4f4}.l{text-align:left}tr.sig td{background:#fff5d6}
figure{margin:1.5em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#444;font-size:.92em;margin-top:.4em;max-width:60em}
.note{background:#f6f6f6;border-left:4px solid #bbb;padding:.6em 1em}
"""

_RECORD_HEAD = ("group", "emotion", "films", "mean A", "mean B", "A \u2212 B", "bootstrap 95% CI", "t",
                "p_t (adj.)", "W", "p_W (adj.)", "d_z")


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _figure_html(path: Path, alt: str, caption: str) -> str:
    return (f'<figure><img src="{_data_uri(path)}" alt="{_e(alt)}">'
            f"<figcaption>{_e(caption)} <span class=\"sub\">({_e(path.name)})</span></figcaption></figure>")


def _stats_table(result: StatsResult) -> str:
    rows = ["<table><thead><tr>" + "".join(
        f'<th class="{"l" if h in ("group", "emotion") else ""}">{_e(h)}</th>' for h in _RECORD_HEAD)
        + "</tr></thead><tbody>"]
    for r in result.records:
        sig = r["p_t_adj"] < ALPHA or r["p_w_adj"] < ALPHA
        cells = [
            (r["group"], "l"), (r["emotion"], "l"), (r["n_films"], ""),
            (fmt_num(r["mean_a"]), ""), (fmt_num(r["mean_b"]), ""), (fmt_num(r["mean_diff"], "+.3f"), ""),
            (f"[{fmt_num(r['ci_low'], '+.3f')}, {fmt_num(r['ci_high'], '+.3f')}]", ""),
            (fmt_num(r["t"], ".2f"), ""), (fmt_p(r["p_t_adj"]) + stars(r["p_t_adj"]), ""),
            (fmt_num(r["w"], ".1f"), ""), (fmt_p(r["p_w_adj"]) + stars(r["p_w_adj"]), ""),
            (fmt_num(r["d_z"], ".2f"), ""),
        ]
        rows.append(f'<tr{" class=sig" if sig else ""}>' + "".join(
            f'<td class="{c}">{_e(v)}</td>' for v, c in cells) + "</tr>")
    rows.append("</tbody></table>")
    return "".join(rows)


CORRECTION_NAMES = {"holm": "Holm, family-wise error rate", "bh": "Benjamini-Hochberg, false discovery rate"}


def _how_to_read(result: StatsResult) -> str:
    o = result.options
    n = len(result.film_ids)
    return (
        "<p><b>How to read this.</b> Each film gives one number per emotion and model (the "
        f"{_e(measure_text(o))}); the films are the units, and each film is compared with itself "
        "(a paired design): the paired t-test asks whether the mean of the per-film differences "
        "A \u2212 B is zero, the Wilcoxon signed-rank test asks the same of their median without "
        "assuming normality, d_z is the mean difference in units of its standard deviation, and the "
        "bootstrap interval resamples films. A significant difference says the two models label the "
        "<i>same films</i> differently; it does not say which model is right (neither has been "
        "checked against human judgements here), nor that the films differ in emotion. With few "
        f"films (here {n}) the tests have little power: a non-significant result is not evidence "
        "that the models agree. p-values are corrected across the emotions of each group "
        f"({_e(CORRECTION_NAMES[o.correction])}); "
        "stars: * p &lt; 0.05, ** p &lt; 0.01, *** p &lt; 0.001. Shaded rows are significant by either test.</p>"
    )


def render_html(view: ScanView, opts: StatsOptions, result: StatsResult | None, notes: Sequence[str],
                figures: Sequence[tuple[str, Path | None, str, str]], window_text: str = "") -> str:
    """The report page. ``figures``: (section, PNG path or None for a section without a
    figure, alt text, caption) in page order; PNGs are embedded as data URIs."""
    statuses = Counter(f.status or "no manifest entry" for f in view.films)
    frames_total = sum(len(fi) for fi, _ in view.frames.values())
    kept = {m: sum(len(x) for x in view.faces[m].values()) for m in view.models}
    detected = sum(len(a) for a in view.areas.values())
    p: list[str] = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>exe-stream report: {_e(view.out.name or view.out)}</title><style>{_CSS}</style></head><body>",
        "<h1>exe-stream report</h1>",
        f'<p class="sub">scan <code>{_e(view.out)}</code> \u00b7 exe-stream {_e(__version__)}</p>',
        "<h2>Scan</h2><ul>",
        f"<li>films: {len(view.films)} ("
        + ", ".join(f"{_e(s)} {k}" for s, k in sorted(statuses.items())) + ")</li>",
        f"<li>frames sampled: {frames_total}</li>",
        f"<li>faces detected: {detected}; kept by the face filters: "
        + ", ".join(f"{_e(m)} {kept[m]}" for m in view.models) + "</li>",
        "<li>models: " + "; ".join(
            f"{'AB'[i] + ' = ' if len(view.models) == 2 else ''}<code>{_e(m)}</code> "
            f"({_e(', '.join(view.labels[m]))})" for i, m in enumerate(view.models)) + "</li>",
        f"<li>per-film measure: {_e(measure_text(opts))} (--measure {_e(opts.measure)} --per {_e(opts.per)})</li>",
        f"<li>face filters: {_e(_filters_text(opts))}</li>",
        "</ul>",
    ]
    head = ["film", "film id", "genre", "status", "frames sampled"] + [f"faces {m}" for m in view.models] + ["reason"]
    p.append("<table><thead><tr>" + "".join(
        f'<th class="{"l" if h in ("film", "film id", "genre", "status", "reason") else ""}">{_e(h)}</th>'
        for h in head) + "</tr></thead><tbody>")
    for f in view.films:
        faces = [len(view.faces[m][f.film_id]) if f.film_id in view.faces[m] else "\u2013" for m in view.models]
        cells = [(f.title, "l"), (f.film_id, "l"), (f.genre, "l"), (f.status or "\u2013", "l"),
                 (len(view.frames[f.film_id][0]) if f.film_id in view.frames else 0, "")] \
            + [(k, "") for k in faces] + [(f.reason, "l")]
        p.append("<tr>" + "".join(f'<td class="{c}">{_e(v)}</td>' for v, c in cells) + "</tr>")
    p.append("</tbody></table>")

    p.append("<h2>Model comparison</h2>")
    if result is None:
        p.append(f'<p class="note">No comparison: this report shows one model (<code>{_e(view.models[0])}</code>). '
                 "Scan with two models (<code>-m A -m B</code>) or pass <code>--a</code> and <code>--b</code> "
                 "to compare them film by film.</p>")
    else:
        o = result.options
        p.append(f"<p>A = <code>{_e(result.a)}</code>, B = <code>{_e(result.b)}</code>, "
                 f"{len(result.film_ids)} paired films, emotions compared: {_e(', '.join(result.labels))}; "
                 f"bootstrap {o.n_boot} resamples (seed {o.seed})"
                 + (f"; groups by <code>{_e(o.by)}</code>" if o.by else "") + ".</p>")
        p.append(_how_to_read(result))
        p.append(_stats_table(result))
    p.append("<h3>Notes</h3>")
    if notes:
        p.append("<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    else:
        p.append("<p>none</p>")
    section = None
    for sec, path, alt, caption in figures:
        if sec != section:
            p.append(f"<h2>{_e(sec)}</h2>")
            if sec == "Timelines" and window_text:
                p.append(f"<p>{_e(window_text)}</p>")
            section = sec
        if path is not None:
            p.append(_figure_html(path, alt, caption))
    p.append("</body></html>\n")
    return "\n".join(p)


def _file_name(prefix: str, film_id: str, taken: set[str]) -> str:
    base = f"{prefix}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', film_id).strip('-.') or 'film'}"
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}-{i}"
    taken.add(name)
    return name + ".png"


def report(
    out: str | Path,
    out_dir: str | Path | None = None,
    a: str | None = None,
    b: str | None = None,
    opts: StatsOptions | None = None,
    metadata: Mapping[str, Mapping[str, Any]] | None = None,
    window: int | None = None,
) -> ReportResult:
    """Write PNG plots and ``report.html`` about the scan ``out`` into ``out_dir``
    (default ``out/report``).

    Models: see ``choose_models``; with two, the page compares them with ``stats.stats``
    (table, notes, difference plot); with one, it shows that model alone. ``opts``: the
    statistics options, whose face filters also apply to the plots; ``metadata`` (film id
    or file name -> record) adds titles and genres to the manifest's; ``window``: sampled
    frames per rolling window in the timelines (default: ``default_window`` per film).
    Raises ``ValueError`` or ``StatsError`` naming a bad value.
    """
    out = Path(out)
    if not out.is_dir():
        raise ValueError(f"scan output directory {out} does not exist")
    if window is not None:
        check_range("window", window, lo=1, integer=True, unit="sampled frame(s)")
    opts = opts if opts is not None else StatsOptions()
    out_dir = Path(out_dir) if out_dir is not None else out / "report"
    models = choose_models(out, a, b)
    view = load_scan(out, models, opts, metadata)

    # Statistics: the paired comparison, or the one model's per-film measures.
    result: StatsResult | None = None
    if len(models) == 2:
        result = stats(out, models[0], models[1], opts, metadata=metadata)
        measures = {models[0]: result.measures_a, models[1]: result.measures_b}
        dominant = {models[0]: result.dominant_a, models[1]: result.dominant_b}
        notes = list(result.notes)
    else:
        fm = film_measures(out, models[0], opts, metadata=metadata)
        measures = {models[0]: fm}
        dominant = {models[0]: _dominant_counts(fm)}
        notes = list(fm.notes)
    others = [m for m in available_models(out) if m not in models]
    if others:
        notes.append(f"the scan also holds {', '.join(others)}: not shown (choose with --a/--b)")

    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("timeline-*.png"):  # films of an earlier report of this directory
        old.unlink()
    plots: dict[str, Path] = {}
    figures: list[tuple[str, Path | None, str, str]] = []
    fraction = opts.per == "faces"
    mtext = measure_text(opts)
    pair = "" if result is None else (" Measures as compared by the statistics"
                                      + (" (shared classes only, renormalised)" if result.shared_labels_only else "")
                                      + "; films excluded from a model's measures show \u201cno faces\u201d.")

    # 1. The model differences (two models only).
    if result is not None:
        plots["differences"] = plot_differences(result, view.emotions, out_dir / "differences.png", mtext)
        figures.append(("Model differences", plots["differences"], "model differences per emotion",
                        f"Mean per-film difference A \u2212 B ({mtext}) per emotion with its bootstrap 95% "
                        "interval; a filled dot is significant after correction across emotions (paired "
                        "t-test), an open one is not; the corrected p-values of both tests are printed on "
                        "the right" + (", one panel per group" if result.options.by else "") + "."))
    # 2. Emotion shares per film, a panel per model.
    plots["shares"] = plot_shares(
        view, out_dir / "shares.png", {m: measure_matrix(measures[m], view.emotions) for m in models},
        xlabel=mtext if not fraction else mtext.replace("the emotion", "each emotion"), fraction=fraction)
    figures.append(("Emotions per film", plots["shares"], "emotion shares per film",
                    f"One bar per film: the {mtext}, stacked over the emotions"
                    + (", a panel per model" if len(models) == 2 else "") + "; n is the number of faces "
                    "counted (after the face filters)." + pair))
    # 3. Dominant emotion counts.
    plots["dominant"] = plot_dominant(view, out_dir / "dominant.png", dominant)
    figures.append(("Emotions per film", plots["dominant"], "dominant emotion counts",
                    "Number of films whose largest per-film measure is each emotion"
                    + (" (paired films only, model B hatched)." if result is not None else ".")))
    # 4. A timeline per film with sampled frames.
    taken: set[str] = set()
    faceless = []
    for f in view.films:
        if f.film_id not in view.frames:
            continue
        if not any(len(view.faces[m][f.film_id]) for m in models):
            faceless.append(f.title)
            continue
        fi, pts = view.frames[f.film_id]
        w = window or default_window(len(fi))
        step = float(np.median(np.diff(pts))) if len(pts) > 1 else 0.0
        name = _file_name("timeline", f.film_id, taken)
        plots[name[:-4]] = plot_timeline(view, f.film_id, out_dir / name, w)
        figures.append(("Timelines", plots[name[:-4]], f"timeline of {f.title}",
                        f"{f.title}: left, the share of each emotion among the faces in a centred window of "
                        f"{w} sampled frames (about {w * step:.3g} s), with the 95% Wilson interval (band) of the "
                        f"{BANDS} most frequent emotions; "
                        "right, the cumulative number of faces with each top label. "
                        + ("One row per model." if len(models) == 2 else "")))
        if all(view.faces[m][f.film_id].character is not None and len(view.faces[m][f.film_id])
               for m in models):  # 4b. Characters over time (scans with --characters).
            name = _file_name("characters", f.film_id, taken)
            plots[name[:-4]] = plot_characters(view, f.film_id, out_dir / name)
            figures.append(("Timelines", plots[name[:-4]], f"characters of {f.title}",
                            f"{f.title}: a row per character (face tracks clustered by identity), a dot per "
                            "face at its time, coloured by its top label"
                            + ("; a panel per model." if len(models) == 2 else ".")))
    window_text = (
        "Each timeline uses the faces' top labels (after the face filters). Faces in one window are not "
        "independent (the same face recurs in neighbouring frames), so the bands understate the "
        "uncertainty; gaps mean no face in the window."
        + (f" No timeline for films without faces (after the filters): {', '.join(faceless)}." if faceless else ""))
    if not any(sec == "Timelines" for sec, *_ in figures):
        figures.append(("Timelines", None, "", ""))
    # 5. Face sizes.
    plots["face_sizes"] = plot_face_sizes(view, out_dir / "face_sizes.png", view.areas, opts.min_face_area)
    figures.append(("Face sizes", plots["face_sizes"], "face size distribution",
                    "Face box area as a fraction of the frame area (log scale) for every detected face, "
                    "over all films (histogram) and per film (box plot)"
                    + (f"; the dashed line is --min-face-area {opts.min_face_area:g}." if opts.min_face_area else ".")))

    page = out_dir / "report.html"
    text = render_html(view, opts, result, notes, figures, window_text)
    atomic_write_text(page, text)
    return ReportResult(out_dir=out_dir, html=page, plots=plots, models=models, compared=result is not None)
