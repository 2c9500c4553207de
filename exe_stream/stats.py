"""Paired comparison of two emotion models across films (``exe-stream stats``).

A scan holds, per film, one faces shard per model (DESIGN.md "Shards"). This module turns
each model's faces into one number per film and emotion (``film_measures``) and compares two
models film by film (``stats``): the films are the units, paired by ``film_id``.

Per-film measure of an emotion (``StatsOptions.measure`` / ``per``):

- ``label`` / ``faces``: share of the film's detected faces whose top label is the emotion
  (the reference study's measure);
- ``prob`` / ``faces``: mean probability of the emotion over the film's faces;
- ``label`` / ``frames``: faces with that top label divided by the film's sampled frames;
- ``prob`` / ``frames``: sum of the emotion's probabilities divided by the sampled frames.

Faces are first filtered (``min_confidence`` on the stored top-class probability,
``min_face_area`` on ``face_area_rel``), then optionally reduced to the largest remaining
face of each frame (``largest_only``).

Per emotion, ``stats`` reports the mean of each model, the mean difference A - B, a paired
t-test, a Wilcoxon signed-rank test, Cohen's d_z, a seeded bootstrap 95% percentile interval
of the mean difference, and both p-values corrected across emotions (Holm or
Benjamini-Hochberg), overall (group ``all``) and per metadata group (``by``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import pyarrow as pa

from .options import OptionError, check_choice, check_range
from .errors import StatsError
from .shards import Manifest, existing_frames_path, find_shards, prob_column, read_schema, read_table

MEASURES = ("label", "prob")
PERS = ("faces", "frames")
# What one film's measure averages over: its faces/frames directly, or each shot's or each
# face track's own measure (scans with shots), so that every shot or track counts once.
UNITS = ("film", "shot", "track")
CORRECTIONS = ("holm", "bh")

#: The fields of every record of ``StatsResult.records``, in order.
RECORD_FIELDS = (
    "group", "emotion", "n_films", "mean_a", "mean_b", "mean_diff",
    "t", "p_t", "p_t_adj", "w", "p_w", "p_w_adj", "d_z", "ci_low", "ci_high",
)

#: The group holding every paired film.
ALL_GROUP = "all"


@dataclass(frozen=True)
class StatsOptions:
    """How per-film measures are computed and how two models are compared."""

    # "label": share of faces whose top label is the emotion; "prob": mean probability.
    measure: Literal["label", "prob"] = "label"
    # Denominator: the film's faces (after the filters) or its sampled frames.
    per: Literal["faces", "frames"] = "faces"
    # Faces whose stored confidence (top-class probability over the model's own classes)
    # is below this are dropped; 0 keeps all.
    min_confidence: float = 0.0
    # Faces whose face_area_rel (box area / frame area, in [0, 1]) is below this are
    # dropped; 0 keeps all. A side of s (relative) is an area of about s * s.
    min_face_area: float = 0.0
    # Keep only the largest remaining face of each frame (after the two filters above).
    largest_only: bool = False
    # Multiple-testing correction across emotions: "holm" (family-wise) or "bh"
    # (Benjamini-Hochberg false discovery rate).
    correction: Literal["holm", "bh"] = "holm"
    # Bootstrap resamples of the films for the 95% interval of the mean difference
    # (0 skips it: the interval is NaN).
    n_boot: int = 10000
    # Seed of the bootstrap's random generator (same seed, same interval).
    seed: int = 0
    # Metadata column (e.g. "genre") whose values split the films into groups, each
    # compared separately (groups of at least 2 films); None: group "all" only.
    # "character" (scans with --characters): every character of every film is a unit of its
    # own, named "<film_id>/character-<id>", paired between the two models (group "all").
    by: str | None = None
    # "film": the measure over the film's faces (or frames); "shot" / "track": the measure of
    # each shot / face track of the film, averaged, so a long close-up (many faces, one shot)
    # counts as much as any other shot (needs a scan with --shots; "track" needs per="faces").
    unit: Literal["film", "shot", "track"] = "film"

    def __post_init__(self) -> None:
        check_choice("measure", self.measure, MEASURES)
        check_choice("unit", self.unit, UNITS)
        if self.unit == "track" and self.per != "faces":
            raise OptionError("unit", "'track' averages each track's faces: use it with per 'faces'")
        check_choice("per", self.per, PERS)
        check_choice("correction", self.correction, CORRECTIONS)
        check_range("min_confidence", self.min_confidence, lo=0.0, hi=1.0)
        check_range("min_face_area", self.min_face_area, lo=0.0, hi=1.0)
        check_choice("largest_only", self.largest_only, (True, False))
        check_range("n_boot", self.n_boot, lo=0, integer=True)
        check_range("seed", self.seed, lo=0, integer=True)
        if self.by is not None and (not isinstance(self.by, str) or not self.by.strip()):
            raise OptionError("by", f"must be a metadata column name or None, got {self.by!r}")


# --------------------------------------------------------------------------- shards


def _faces_files(out: Path, model_id: str) -> dict[str, Path]:
    """film_id -> faces shard of ``model_id``."""
    return {s.film_id: s.path for s in find_shards(out, "faces", model_id=model_id)}


def available_models(out: str | Path) -> list[str]:
    """Model ids with at least one faces shard under the scan ``out``, sorted."""
    return sorted({s.model_id for s in find_shards(Path(out), "faces")})


def _check_model(out: Path, model_id: str) -> dict[str, Path]:
    files = _faces_files(out, model_id)
    if not files:
        avail = available_models(out)
        listing = ", ".join(avail) if avail else f"none (no faces shards under {out})"
        raise StatsError(f"model {model_id!r} is not in the scan {out}; available models: {listing}")
    return files


def _labels_of_schema(schema: pa.Schema, path: Path) -> tuple[str, ...]:
    cols = [n for n in schema.names if n.startswith("prob_")]
    raw = (schema.metadata or {}).get(b"exe_stream.labels")
    if raw is not None:
        try:
            labels = tuple(str(x) for x in json.loads(raw.decode()))
        except (ValueError, TypeError) as e:
            raise StatsError(f"{path}: schema metadata 'exe_stream.labels' is not a JSON list ({e})") from e
        if [prob_column(lbl) for lbl in labels] == cols:
            return labels
    if not cols:
        raise StatsError(f"{path}: no prob_<class> columns")
    return tuple(c[len("prob_"):] for c in cols)


def model_labels(out: str | Path, model_id: str) -> tuple[str, ...]:
    """The classes of ``model_id`` in the scan ``out``, in the model's label order
    (from the shards' ``exe_stream.labels`` metadata, else their ``prob_`` columns)."""
    files = _check_model(Path(out), model_id)
    path = files[min(files)]
    return _labels_of_schema(read_schema(path), path)


def _film_metadata(manifest: Manifest, metadata: Mapping[str, Mapping[str, Any]] | None,
                   film_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """film_id -> metadata record: the manifest's, updated by ``metadata`` (keyed by film id
    or by file name)."""
    res: dict[str, dict[str, Any]] = {}
    for fid in film_ids:
        entry = manifest.films.get(fid, {})
        rec = dict(entry.get("metadata") or {})
        if metadata:
            extra = metadata.get(fid)
            if extra is None and entry.get("path"):
                extra = metadata.get(Path(entry["path"]).name)
            if extra:
                rec.update(extra)
        res[fid] = rec
    return res


def _title(rec: Mapping[str, Any]) -> str | None:
    t = rec.get("title")
    return None if t is None or str(t) == "" else str(t)


# --------------------------------------------------------------------------- per-film measures


@dataclass
class FilmMeasures:
    """One model's per-film measure of each emotion (see the module docstring).

    ``values[i, j]`` is film ``film_ids[i]``'s measure of emotion ``labels[j]``
    (float64 [F, C]); films are sorted by id. Films left out (scan failed, no faces after the
    filters with ``per="faces"``, no sampled frames with ``per="frames"``) are in
    ``excluded`` with the reason, not in ``film_ids``.
    """

    model_id: str
    labels: tuple[str, ...]            # C emotions (columns of values)
    film_ids: tuple[str, ...]          # F films (rows of values), sorted
    titles: tuple[str | None, ...]     # F titles from the metadata (None where unknown)
    values: np.ndarray                 # float64 [F, C]
    n_faces: np.ndarray                # int64 [F] faces counted (after filters)
    n_frames: np.ndarray               # int64 [F] sampled frames (rows of the frames shard)
    options: StatsOptions
    renormalised: bool = False         # probabilities renormalised over a subset of the model's classes
    excluded: dict[str, str] = field(default_factory=dict)  # film_id -> reason
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        f, c = len(self.film_ids), len(self.labels)
        if self.values.shape != (f, c):
            raise ValueError(f"values must be [{f}, {c}], got {self.values.shape}")
        if self.n_faces.shape != (f,) or self.n_frames.shape != (f,) or len(self.titles) != f:
            raise ValueError(f"n_faces, n_frames and titles must have {f} entries")

    def __repr__(self) -> str:
        return (f"FilmMeasures(model_id={self.model_id!r}, films={len(self.film_ids)}, "
                f"labels={list(self.labels)}, values=float64{list(self.values.shape)}, "
                f"excluded={len(self.excluded)})")

    def dominant(self) -> list[str | None]:
        """Per film, the emotion with the largest measure (the first in label order on a tie;
        None where every measure is 0, i.e. no faces)."""
        return _dominant(self.values, self.labels)

    def to_arrow(self) -> pa.Table:
        """film_id, title, n_faces, n_frames, dominant, and one float64 column per emotion
        (named as the emotion)."""
        cols: dict[str, Any] = {
            "film_id": pa.array(list(self.film_ids), pa.string()),
            "title": pa.array(list(self.titles), pa.string()),
            "n_faces": pa.array(self.n_faces, pa.int64()),
            "n_frames": pa.array(self.n_frames, pa.int64()),
            "dominant": pa.array(self.dominant(), pa.string()),
        }
        for j, lbl in enumerate(self.labels):
            cols[lbl] = pa.array(self.values[:, j], pa.float64())
        return pa.table(cols)


def _dominant(values: np.ndarray, labels: Sequence[str]) -> list[str | None]:
    if values.shape[0] == 0:
        return []
    top = values.argmax(axis=1)
    return [labels[k] if values[i, k] > 0 else None for i, k in enumerate(top)]


def _film_values(table: pa.Table, cols: Sequence[str], renorm: bool, n_frames: int,
                 opts: StatsOptions, frames: pa.Table | None = None) -> tuple[np.ndarray, int, int]:
    """One film's measures (float64 [C]), faces counted, and faces dropped for having no
    probability on the classes ``cols`` (renormalisation only). ``frames``: the film's
    frames shard (read for ``opts.unit`` "shot")."""
    def col(name: str) -> np.ndarray:
        return table.column(name).to_numpy(zero_copy_only=False)

    probs = np.column_stack([col(c).astype(np.float64) for c in cols]) if table.num_rows \
        else np.zeros((0, len(cols)))
    conf = col("confidence").astype(np.float64)
    area = col("face_area_rel").astype(np.float64)
    keep = (conf >= opts.min_confidence) & (area >= opts.min_face_area)
    dropped_zero = 0
    if renorm:
        total = probs.sum(axis=1)
        zero = keep & ~(total > 0)
        dropped_zero = int(zero.sum())
        keep &= ~zero
        probs = probs / np.where(total > 0, total, 1.0)[:, None]
    sel = np.flatnonzero(keep)
    if opts.largest_only and sel.size:
        frame = col("frame_index")[sel]
        face = col("face_index")[sel]
        # Order by frame, then largest area first, then face index; keep each frame's first.
        order = np.lexsort((face, -area[sel], frame))
        first = np.ones(order.size, bool)
        first[1:] = frame[order][1:] != frame[order][:-1]
        sel = sel[order[first]]
    p = probs[sel]
    if opts.unit != "film":
        units, frames_per_unit = _units(table, frames, opts)
        return _unit_values(p, units[sel], frames_per_unit, len(cols), opts), int(len(p)), dropped_zero
    values = _measure(p, len(p) if opts.per == "faces" else n_frames, len(cols), opts)
    return values, int(len(p)), dropped_zero


def _measure(p: np.ndarray, den: int, c: int, opts: StatsOptions) -> np.ndarray:
    """The measure of faces' probabilities p [n, C] over ``den`` faces or frames -> [C]."""
    if opts.measure == "label":
        num = np.bincount(p.argmax(axis=1), minlength=c).astype(np.float64) if len(p) else np.zeros(c)
    else:
        num = p.sum(axis=0) if len(p) else np.zeros(c)
    return num / den if den > 0 else np.zeros(c)


def _units(faces: pa.Table, frames: pa.Table | None, opts: StatsOptions) -> tuple[np.ndarray, np.ndarray | None]:
    """Each face's unit (int64 [N]: its shot or track) and, for shots, the sampled frames of
    every shot (int64 [S]). Raises StatsError for a scan without shots."""
    if opts.unit == "track":
        if "track_id" not in faces.column_names or faces.column("track_id").null_count:
            raise StatsError("--unit track needs face tracks: scan the films with --shots")
        return faces.column("track_id").to_numpy(zero_copy_only=False).astype(np.int64), None
    if frames is None or "shot_index" not in frames.column_names or frames.column("shot_index").null_count:
        raise StatsError("--unit shot needs shots: scan the films with --shots")
    fi = frames.column("frame_index").to_numpy()
    shot = frames.column("shot_index").to_numpy().astype(np.int64)
    order = np.argsort(fi, kind="stable")
    pos = np.searchsorted(fi[order], faces.column("frame_index").to_numpy())
    return shot[order][np.clip(pos, 0, len(fi) - 1)], np.bincount(shot, minlength=int(shot.max(initial=-1)) + 1)


def _unit_values(p: np.ndarray, units: np.ndarray, frames_per_unit: np.ndarray | None, c: int,
                 opts: StatsOptions) -> np.ndarray:
    """The mean over the film's shots (or tracks) of each one's measure. Per faces, units
    without faces (after the filters) are left out; per frames, a shot's denominator is its
    sampled frames, and shots with sampled frames but no faces count (as zero)."""
    if opts.per == "frames":
        assert frames_per_unit is not None
        ids = np.flatnonzero(frames_per_unit)
    else:
        ids = np.unique(units)
    if len(ids) == 0:
        return np.zeros(c)
    per_unit = [_measure(p[units == u], int((units == u).sum()) if opts.per == "faces" else int(frames_per_unit[u]),
                         c, opts) for u in ids]
    return np.mean(per_unit, axis=0)


# StatsOptions.by value that makes every character of every film a unit of its own.
CHARACTER = "character"


def _by_character(film_id: str, faces: pa.Table) -> list[tuple[str, pa.Table]]:
    """A film's faces split by character: ("<film_id>/character-<id>", its faces) per id."""
    if "character_id" not in faces.column_names or faces.column("character_id").null_count:
        raise StatsError(f"film {film_id!r} has no characters: --by character needs a scan with --characters")
    import pyarrow.compute as pc

    ids = sorted(set(faces.column("character_id").to_pylist()))
    return [(f"{film_id}/character-{c}", faces.filter(pc.equal(faces.column("character_id"), c))) for c in ids]


def film_measures(
    out: str | Path,
    model_id: str,
    opts: StatsOptions = StatsOptions(),
    labels: Sequence[str] | None = None,
    metadata: Mapping[str, Mapping[str, Any]] | None = None,
) -> FilmMeasures:
    """Per-film measure of each emotion for one model of the scan ``out``.

    ``labels`` restricts the emotions to a subset of the model's classes (matched by their
    ``prob_`` column name, so case-insensitively); the probabilities are then renormalised
    over that subset and the top label recomputed among it. ``metadata`` (film id or file
    name -> record) adds to the manifest's per-film metadata (used for titles here).

    Films whose manifest status is ``failed`` are excluded; ``done`` and ``partial`` films,
    and films with shards but no manifest entry, count. Raises ``StatsError`` for a model
    not in the scan (naming the available ones) or a label it does not have.
    """
    out = Path(out)
    files = _check_model(out, model_id)
    manifest = Manifest.load(out)
    model_lbls = model_labels(out, model_id)
    model_cols = [prob_column(x) for x in model_lbls]
    by_key = dict(zip(model_cols, model_lbls))
    if labels is None:
        use = tuple(model_lbls)
    else:
        missing = [x for x in labels if prob_column(x) not in by_key]
        if missing:
            raise StatsError(f"model {model_id!r} has no class {', '.join(map(repr, missing))}; "
                             f"its classes: {', '.join(model_lbls)}")
        use = tuple(labels)
    cols = [prob_column(x) for x in use]
    renorm = set(cols) != set(by_key)

    excluded: dict[str, str] = {}
    for fid, entry in manifest.films.items():
        if entry.get("status") == "failed":
            excluded[fid] = "scan failed"
    rows: list[tuple[str, np.ndarray, int, int]] = []
    zero_total = 0
    for fid in sorted(files):
        if fid in excluded:
            continue
        table = read_table(files[fid])
        lbls = _labels_of_schema(table.schema, files[fid])
        if [prob_column(x) for x in lbls] != model_cols:
            raise StatsError(f"model {model_id!r} has classes {', '.join(lbls)} in film {fid!r} but "
                             f"{', '.join(model_lbls)} elsewhere; rescan with one version of the model")
        fp = existing_frames_path(out, fid)
        n_frames = read_table(fp).num_rows if fp is not None else 0
        if opts.per == "frames" and n_frames == 0:
            excluded[fid] = "no sampled frames"
            continue
        frames = read_table(fp) if (fp is not None and opts.unit == "shot") else None
        for unit_id, part in _by_character(fid, table) if opts.by == CHARACTER else ((fid, table),):
            try:
                values, n_faces, dropped_zero = _film_values(part, cols, renorm, n_frames, opts, frames)
            except StatsError as e:
                raise StatsError(f"film {fid!r}: {e}") from e
            zero_total += dropped_zero
            if opts.per == "faces" and n_faces == 0:
                excluded[unit_id] = "no faces after the filters"
                continue
            rows.append((unit_id, values, n_faces, n_frames))

    notes: list[str] = []
    failed = sorted(f for f, r in excluded.items() if r == "scan failed")
    if failed:
        notes.append(f"failed films not counted: {', '.join(failed)}")
    partial = sorted(f for f, e in manifest.films.items() if e.get("status") == "partial" and f in files)
    if partial:
        notes.append(f"partial films (scan stopped early) counted with the frames they have: {', '.join(partial)}")
    for reason in ("no faces after the filters", "no sampled frames"):
        ids = sorted(f for f, r in excluded.items() if r == reason)
        if ids:
            notes.append(f"[{model_id}] films excluded ({reason}): {', '.join(ids)}")
    if zero_total:
        notes.append(f"[{model_id}] {zero_total} faces with zero probability on the compared classes dropped")

    film_ids = tuple(r[0] for r in rows)
    meta = _film_metadata(manifest, metadata, film_ids)
    return FilmMeasures(
        model_id=model_id,
        labels=use,
        film_ids=film_ids,
        titles=tuple(_title(meta[f]) for f in film_ids),
        values=np.array([r[1] for r in rows], np.float64).reshape(len(rows), len(use)),
        n_faces=np.array([r[2] for r in rows], np.int64),
        n_frames=np.array([r[3] for r in rows], np.int64),
        options=opts,
        renormalised=renorm,
        excluded=excluded,
        notes=notes,
    )


# --------------------------------------------------------------------------- tests and corrections


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (float64 [m], same order as ``p``; NaNs stay NaN
    and are not counted in the family)."""
    p = np.asarray(p, np.float64)
    adj = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m:
        order = ok[np.argsort(p[ok], kind="stable")]
        scaled = (m - np.arange(m)) * p[order]
        adj[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adj


def benjamini_hochberg(p: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (float64 [m], same order as ``p``; NaNs stay
    NaN and are not counted in the family): scipy's ``false_discovery_control`` on the rest."""
    p = np.asarray(p, np.float64)
    adj = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        from scipy.stats import false_discovery_control

        adj[ok] = false_discovery_control(p[ok], method="bh")
    return adj


def _adjust(p: Sequence[float], correction: str) -> np.ndarray:
    return holm(p) if correction == "holm" else benjamini_hochberg(p)


def bootstrap_ci(diffs: np.ndarray, n_boot: int, seed: int, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the mean of each column of ``diffs`` (float64 [n, C]).

    The rows (films) are resampled with replacement, jointly for all columns, ``n_boot``
    times from ``numpy.random.default_rng(seed)``. Returns (low, high), float64 [C] each
    (NaN when ``n_boot`` is 0 or there are no rows).
    """
    n, c = diffs.shape
    if n_boot == 0 or n == 0:
        return np.full(c, np.nan), np.full(c, np.nan)
    rng = np.random.default_rng(seed)
    means = np.empty((n_boot, c))
    chunk = max(1, min(n_boot, (1 << 22) // max(1, n * c)))
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(k, n))
        means[start:start + k] = diffs[idx].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail], axis=0)
    return low, high


def wilcoxon_test(d: np.ndarray) -> tuple[float, float]:
    """Wilcoxon signed-rank test of paired differences ``d`` (float64 [n]): (W, p).

    The same as ``scipy.stats.wilcoxon(d)`` with its defaults (two-sided, zeros dropped,
    method "auto"). Where "auto" picks scipy's exact sign-flip permutation test (n <= 13 with
    tied or zero differences), the 2**m sign flips of the m non-zero differences are
    enumerated here in one array operation instead (scipy evaluates them one by one: about
    a second per test); the p-value is the same.
    """
    from scipy import stats as st

    d = np.asarray(d, np.float64)
    nz = d[d != 0]
    ties = np.unique(np.abs(nz)).size < nz.size
    if d.size > 13 or nz.size == 0 or not (ties or nz.size < d.size):
        res = st.wilcoxon(d)
        return float(res.statistic), float(res.pvalue)
    ranks = st.rankdata(np.abs(nz))
    r_plus, r_minus = float(ranks[nz > 0].sum()), float(ranks[nz < 0].sum())
    m = nz.size
    signs = (np.arange(2 ** m)[:, None] >> np.arange(m)) & 1
    null = signs @ ranks                                  # r_plus under every sign flip
    gamma = abs(np.finfo(np.float64).eps * 100 * r_plus)  # scipy's tie tolerance
    less = np.count_nonzero(null <= r_plus + gamma) / null.size
    greater = np.count_nonzero(null >= r_plus - gamma) / null.size
    return min(r_plus, r_minus), float(np.clip(2 * min(less, greater), 0.0, 1.0))


def _compare(group: str, a: np.ndarray, b: np.ndarray, labels: Sequence[str],
             opts: StatsOptions) -> tuple[list[dict[str, Any]], list[str]]:
    """Records of one group: a, b are float64 [n, C] paired per-film measures."""
    from scipy import stats as st

    n, c = a.shape
    # A canonical film order (by the values, not the ids) so the results, the bootstrap's
    # included, do not depend on how films are named or listed.
    order = np.lexsort(np.concatenate([a, b], axis=1).T[::-1]) if n else np.arange(0)
    a, b = a[order], b[order]
    d = a - b
    notes: list[str] = []
    low, high = bootstrap_ci(d, opts.n_boot, opts.seed)
    recs, all_zero = [], []
    for j, emo in enumerate(labels):
        x, y, dj = a[:, j], b[:, j], d[:, j]
        t = p_t = w = p_w = d_z = math.nan
        if n < 2:
            pass
        elif np.all(dj == 0):
            p_t = p_w = 1.0
            all_zero.append(emo)
        else:
            with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
                warnings.simplefilter("ignore", RuntimeWarning)
                tt = st.ttest_rel(x, y)
                t, p_t = float(tt.statistic), float(tt.pvalue)
                try:
                    # Rounded so that differences equal in exact arithmetic (3/10 - 1/10 and
                    # 4/10 - 2/10) rank as ties, as scipy's documentation advises.
                    w, p_w = wilcoxon_test(np.round(dj, 12))
                except ValueError as e:  # pragma: no cover - scipy versions that raise
                    notes.append(f"{emo} ({group}): Wilcoxon test not possible ({e})")
                d_z = float(dj.mean() / dj.std(ddof=1))
        recs.append({
            "group": group, "emotion": emo, "n_films": int(n),
            "mean_a": float(x.mean()) if n else math.nan,
            "mean_b": float(y.mean()) if n else math.nan,
            "mean_diff": float(dj.mean()) if n else math.nan,
            "t": t, "p_t": p_t, "p_t_adj": math.nan, "w": w, "p_w": p_w, "p_w_adj": math.nan,
            "d_z": d_z, "ci_low": float(low[j]), "ci_high": float(high[j]),
        })
    if n < 2:
        notes.append(f"group {group}: fewer than 2 paired films ({n}); no tests")
    if all_zero:
        notes.append(f"group {group}: every film's difference is 0 for {', '.join(all_zero)}; "
                     "t, W and d_z undefined there, p set to 1")
    for key in ("p_t", "p_w"):
        adj = _adjust([r[key] for r in recs], opts.correction)
        for r, v in zip(recs, adj):
            r[key + "_adj"] = float(v)
    return recs, notes


# --------------------------------------------------------------------------- result


def _finite_or_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


@dataclass
class StatsResult:
    """A paired comparison of models ``a`` and ``b`` across films.

    ``records``: one dict per (group, emotion) with exactly ``RECORD_FIELDS``; group
    ``all`` first (every paired film), then the ``by`` groups sorted. ``values_a`` /
    ``values_b``: float64 [F, C] per-film measures of the paired films ``film_ids`` (sorted)
    over the compared emotions ``labels``. ``groups``: group name -> its film ids.
    """

    a: str                                   # model id A
    b: str                                   # model id B
    labels: tuple[str, ...]                  # C compared emotions (shared classes, A's order and spelling)
    options: StatsOptions
    records: list[dict[str, Any]]            # per (group, emotion), fields RECORD_FIELDS
    film_ids: tuple[str, ...]                # F paired films, sorted
    titles: tuple[str | None, ...]           # F titles (None where unknown)
    values_a: np.ndarray                     # float64 [F, C] per-film measures of A
    values_b: np.ndarray                     # float64 [F, C] per-film measures of B
    n_faces_a: np.ndarray                    # int64 [F] faces counted for A
    n_faces_b: np.ndarray                    # int64 [F] faces counted for B
    n_frames: np.ndarray                     # int64 [F] sampled frames
    groups: dict[str, tuple[str, ...]]       # group -> film ids ("all" first)
    dominant_a: dict[str, int]               # emotion -> paired films where it dominates for A
    dominant_b: dict[str, int]               # emotion -> paired films where it dominates for B
    shared_labels_only: bool                 # label sets differed: shared classes, renormalised
    only_a: tuple[str, ...]                  # films scanned with A only (dropped)
    only_b: tuple[str, ...]                  # films scanned with B only (dropped)
    excluded: dict[str, str]                 # film -> why it is left out (no faces, failed, ...)
    notes: list[str]                         # human-readable notes on everything above
    measures_a: FilmMeasures | None = None   # A's measures of all its films (before pairing)
    measures_b: FilmMeasures | None = None   # B's measures of all its films (before pairing)

    def __post_init__(self) -> None:
        f, c = len(self.film_ids), len(self.labels)
        for name in ("values_a", "values_b"):
            if getattr(self, name).shape != (f, c):
                raise ValueError(f"{name} must be [{f}, {c}], got {getattr(self, name).shape}")

    def __repr__(self) -> str:
        return (f"StatsResult(a={self.a!r}, b={self.b!r}, films={len(self.film_ids)}, "
                f"labels={list(self.labels)}, groups={list(self.groups)}, records={len(self.records)}, "
                f"notes={len(self.notes)})")

    def group_records(self, group: str = ALL_GROUP) -> list[dict[str, Any]]:
        """The records of one group (in label order)."""
        return [r for r in self.records if r["group"] == group]

    def film_table(self) -> pa.Table:
        """Per paired film: film_id, title, group (the ``by`` value, if any), n_frames,
        n_faces_a, n_faces_b, dominant_a, dominant_b, then ``a_<emotion>`` and
        ``b_<emotion>`` float64 columns (emotion as in ``prob_<emotion>``)."""
        group_of = {f: g for g, ids in self.groups.items() if g != ALL_GROUP for f in ids}
        cols: dict[str, Any] = {
            "film_id": pa.array(list(self.film_ids), pa.string()),
            "title": pa.array(list(self.titles), pa.string()),
        }
        if self.options.by:
            cols["group"] = pa.array([group_of.get(f) for f in self.film_ids], pa.string())
        cols["n_frames"] = pa.array(self.n_frames, pa.int64())
        cols["n_faces_a"] = pa.array(self.n_faces_a, pa.int64())
        cols["n_faces_b"] = pa.array(self.n_faces_b, pa.int64())
        cols["dominant_a"] = pa.array(_dominant(self.values_a, self.labels), pa.string())
        cols["dominant_b"] = pa.array(_dominant(self.values_b, self.labels), pa.string())
        for side, vals in (("a", self.values_a), ("b", self.values_b)):
            for j, lbl in enumerate(self.labels):
                cols[f"{side}_{prob_column(lbl)[len('prob_'):]}"] = pa.array(vals[:, j], pa.float64())
        return pa.table(cols)

    def summary(self) -> dict[str, Any]:
        """Everything but the per-film values, JSON-ready (non-finite numbers as None)."""
        return {
            "a": self.a, "b": self.b, "labels": list(self.labels),
            "options": asdict(self.options),
            "n_films": len(self.film_ids),
            "groups": {g: list(ids) for g, ids in self.groups.items()},
            "dominant_a": self.dominant_a, "dominant_b": self.dominant_b,
            "shared_labels_only": self.shared_labels_only,
            "only_a": list(self.only_a), "only_b": list(self.only_b),
            "excluded": self.excluded, "notes": list(self.notes),
            "records": [{k: _finite_or_none(r[k]) for k in RECORD_FIELDS} for r in self.records],
        }

    def to_json(self, path: str | Path | None = None) -> str:
        """The records as JSON text: a list of objects with exactly ``RECORD_FIELDS`` (NaN/inf
        as null); also written to ``path`` if given. ``summary()`` has the rest (options,
        notes, dominant counts)."""
        text = json.dumps(self.summary()["records"], indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    def to_csv(self, path: str | Path | None = None) -> str:
        """The records as CSV (header ``RECORD_FIELDS``; NaN as ``nan``); also written to
        ``path`` if given."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(RECORD_FIELDS)
        for r in self.records:
            writer.writerow([repr(r[k]) if isinstance(r[k], float) else r[k] for k in RECORD_FIELDS])
        text = buf.getvalue()
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_arrow(self) -> pa.Table:
        """The records as an Arrow table (group, emotion: string; n_films: int64; the rest
        float64); the schema metadata holds a, b, labels, options and notes as JSON."""
        types = {"group": pa.string(), "emotion": pa.string(), "n_films": pa.int64()}
        schema = pa.schema([(k, types.get(k, pa.float64())) for k in RECORD_FIELDS])
        meta = {"a": self.a, "b": self.b, "labels": list(self.labels),
                "options": asdict(self.options), "notes": list(self.notes)}
        schema = schema.with_metadata({f"exe_stream.{k}".encode(): json.dumps(v).encode() for k, v in meta.items()})
        return pa.Table.from_pylist([{k: r[k] for k in RECORD_FIELDS} for r in self.records], schema=schema)


# --------------------------------------------------------------------------- stats


def _shared_labels(out: Path, a: str, b: str) -> tuple[tuple[str, ...], bool, str | None]:
    la, lb = model_labels(out, a), model_labels(out, b)
    kb = {prob_column(x) for x in lb}
    shared = tuple(x for x in la if prob_column(x) in kb)
    if not shared:
        raise StatsError(f"models {a!r} and {b!r} share no class: {a} has {', '.join(la)}; "
                         f"{b} has {', '.join(lb)}")
    if len(shared) == len(la) == len(lb):
        return shared, False, None
    note = (f"label sets differ ({a}: {', '.join(la)}; {b}: {', '.join(lb)}): compared on the "
            f"{len(shared)} shared classes ({', '.join(shared)}), probabilities renormalised over them "
            f"and top labels recomputed among them")
    return shared, True, note


def stats(
    out: str | Path,
    a: str,
    b: str,
    opts: StatsOptions = StatsOptions(),
    metadata: Mapping[str, Mapping[str, Any]] | None = None,
) -> StatsResult:
    """Compare models ``a`` and ``b`` of the scan ``out`` film by film.

    Films are paired by ``film_id``; films scanned with only one of the models are reported
    (``only_a``, ``only_b``) and dropped. Models with different label sets are compared on
    their shared classes (renormalised). ``metadata`` (film id or file name -> record, e.g.
    from ``cli.load_metadata``) adds to the manifest's per-film metadata, for ``opts.by``
    and titles. Raises ``StatsError`` for a model not in the scan (naming the available
    ones), models without a shared class, no paired film, or a ``by`` column no film has.
    """
    out = Path(out)
    _check_model(out, a)
    _check_model(out, b)
    labels, renorm, label_note = _shared_labels(out, a, b)
    notes: list[str] = [label_note] if label_note else []
    ma = film_measures(out, a, opts, labels, metadata)
    mb = film_measures(out, b, opts, _labels_as(out, b, labels), metadata)
    for note in ma.notes + mb.notes:
        if note not in notes:
            notes.append(note)

    # Pair by film id (a join on the id, never on position).
    files_a, files_b = set(_faces_files(out, a)), set(_faces_files(out, b))
    failed = {f for f, r in {**ma.excluded, **mb.excluded}.items() if r == "scan failed"}
    only_a = tuple(sorted(files_a - files_b - failed))
    only_b = tuple(sorted(files_b - files_a - failed))
    if only_a:
        notes.append(f"films scanned with {a} only, dropped: {', '.join(only_a)}")
    if only_b:
        notes.append(f"films scanned with {b} only, dropped: {', '.join(only_b)}")
    excluded = {}
    for m, ms in ((b, mb), (a, ma)):
        for f, r in ms.excluded.items():
            excluded[f] = r if r == "scan failed" else f"{r} ({m})"
    ia = {f: i for i, f in enumerate(ma.film_ids)}
    ib = {f: i for i, f in enumerate(mb.film_ids)}
    film_ids = tuple(sorted(set(ia) & set(ib)))
    if not film_ids:
        raise StatsError(f"no film has measures for both {a!r} and {b!r} under {out}"
                         + (f" ({'; '.join(notes)})" if notes else ""))
    ra = np.array([ia[f] for f in film_ids])
    rb = np.array([ib[f] for f in film_ids])
    va, vb = ma.values[ra], mb.values[rb]

    # Groups: every paired film, then one group per value of the `by` column.
    groups: dict[str, tuple[str, ...]] = {ALL_GROUP: film_ids}
    manifest = Manifest.load(out)
    meta = _film_metadata(manifest, metadata, film_ids)
    if opts.by == CHARACTER:
        notes.append(f"units are characters: {len(film_ids)} (film, character) pairs, each compared once")
    elif opts.by:
        values = {f: meta[f].get(opts.by) for f in film_ids}
        values = {f: str(v) for f, v in values.items() if v is not None and str(v) != ""}
        if not values:
            cols = sorted({k for rec in meta.values() for k in rec})
            raise StatsError(f"no paired film has metadata column {opts.by!r}; columns present: "
                             f"{', '.join(cols) if cols else 'none (give --metadata FILE)'}")
        missing = sorted(set(film_ids) - set(values))
        if missing:
            notes.append(f"films without {opts.by!r} (in group all only): {', '.join(missing)}")
        small = []
        for g in sorted(set(values.values())):
            ids = tuple(f for f in film_ids if values.get(f) == g)
            if len(ids) >= 2:
                groups[g] = ids
            else:
                small.append(f"{g} ({len(ids)})")
        if small:
            notes.append(f"{opts.by} groups with fewer than 2 films not compared: {', '.join(small)}")

    records: list[dict[str, Any]] = []
    pos = {f: i for i, f in enumerate(film_ids)}
    for g, ids in groups.items():
        rows = np.array([pos[f] for f in ids])
        recs, group_notes = _compare(g, va[rows], vb[rows], labels, opts)
        records += recs
        notes += group_notes

    dom_a, dom_b = _dominant(va, labels), _dominant(vb, labels)
    none = sum(x is None for x in dom_a) + sum(x is None for x in dom_b)
    if none:
        notes.append(f"{none} film measures are all zero (no faces): no dominant emotion counted for them")
    return StatsResult(
        a=a, b=b, labels=labels, options=opts, records=records,
        film_ids=film_ids, titles=tuple(_title(meta[f]) for f in film_ids),
        values_a=va, values_b=vb,
        n_faces_a=ma.n_faces[ra], n_faces_b=mb.n_faces[rb], n_frames=ma.n_frames[ra],
        groups=groups,
        dominant_a={lbl: dom_a.count(lbl) for lbl in labels},
        dominant_b={lbl: dom_b.count(lbl) for lbl in labels},
        shared_labels_only=renorm, only_a=only_a, only_b=only_b, excluded=excluded,
        notes=notes, measures_a=ma, measures_b=mb,
    )


def _labels_as(out: Path, model_id: str, labels: Sequence[str]) -> tuple[str, ...]:
    """``labels`` spelled as ``model_id`` spells them (matched by ``prob_`` column)."""
    own = {prob_column(x): x for x in model_labels(out, model_id)}
    return tuple(own[prob_column(x)] for x in labels)
