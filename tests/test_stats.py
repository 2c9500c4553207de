"""exe_stream.stats and ``exe-stream stats``: per-film measures, paired tests, corrections,
groups, label-set alignment and the CLI, on hand-built shards (no video decoding)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import scipy.stats as st
from typer.testing import CliRunner

from exe_stream.cli import app
from exe_stream.errors import StatsError
from exe_stream.shards import (
    Manifest, faces_path, faces_table, frames_path, frames_table, read_table, shard_metadata, write_table,
)
from exe_stream.stats import (
    RECORD_FIELDS, StatsOptions, available_models, benjamini_hochberg, film_measures, holm, model_labels, stats,
    wilcoxon_test,
)

FER = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
TINY = ("angry", "happy", "neutral")
runner = CliRunner()


# --------------------------------------------------------------------------- shard builders


def write_frames(out: Path, film_id: str, n_frames: int) -> None:
    fi = np.arange(n_frames)
    write_table(frames_path(out, film_id), frames_table(
        film_id, fi, fi / 25.0, fi % 10 == 0, np.zeros(n_frames), shard_metadata(sampling={"every": 1})))


def write_faces(out: Path, film_id: str, model_id: str, labels, frame_index, face_index, area, probs) -> None:
    """One faces shard; rows given as 1-D arrays and probs [N, C] in ``labels`` order."""
    n = len(frame_index)
    fi = np.asarray(frame_index, np.int64)
    z = np.zeros(n, np.float32)
    cols = dict(frame_index=fi, pts_seconds=fi / 25.0, face_index=np.asarray(face_index, np.int16),
                x0=z, y0=z, x1=z + 0.5, y1=z + 0.5, det_score=z + 0.9,
                face_area_rel=np.asarray(area, np.float32))
    probs = np.asarray(probs, np.float32).reshape(n, len(labels))
    meta = shard_metadata(model_id=model_id, labels=list(labels))
    write_table(faces_path(out, film_id, model_id), faces_table(film_id, model_id, labels, cols, probs, meta))


# The tiny hand-checked film: 4 sampled frames, faces on frames 0, 1 and 3.
#          frame face area  angry happy neutral    top (conf)
F1_ROWS = [(0, 0, 0.20, [0.1, 0.7, 0.2]),        # happy .7
           (0, 1, 0.05, [0.6, 0.3, 0.1]),        # angry .6
           (1, 0, 0.10, [0.2, 0.2, 0.6]),        # neutral .6
           (3, 0, 0.30, [0.3, 0.4, 0.3]),        # happy .4
           (3, 1, 0.02, [0.8, 0.05, 0.15])]      # angry .8


def tiny_scan(out: Path) -> Path:
    """m1 and m2 (labels TINY): f1 as above (m2 = m1), f2 with 4 frames and no faces,
    f3 only scanned with m1, f4 failed (no shards)."""
    rows = list(zip(*F1_ROWS))
    write_frames(out, "f1", 4)
    write_frames(out, "f2", 4)
    write_frames(out, "f3", 2)
    for m in ("m1", "m2"):
        write_faces(out, "f1", m, TINY, rows[0], rows[1], rows[2], np.array(rows[3]))
        write_faces(out, "f2", m, TINY, [], [], [], np.zeros((0, 3)))
    write_faces(out, "f3", "m1", TINY, [0], [0], [0.1], [[0.1, 0.1, 0.8]])
    Manifest(out, films={
        "f1": {"path": "/films/one.mp4", "status": "done", "reason": "", "metadata": {"title": "One"}},
        "f2": {"path": "/films/two.mp4", "status": "partial", "reason": "truncated"},
        "f3": {"path": "/films/three.mp4", "status": "done", "reason": ""},
        "f4": {"path": "/films/four.mp4", "status": "failed", "reason": "not a video"},
    }).save()
    return out


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def synth_scan(out: Path, n_films: int = 24, seed: int = 1, kind: str = "planted", order=None,
               rename=None, genres=None) -> dict[str, dict[str, np.ndarray]]:
    """Synthetic films with models "A" and "B" over FER classes.

    kind: "planted" (B's logits of 'happy' +1.2), "identical" (B = A) or "null" (A and B
    independent noise around the same per-film truth). Returns film_id -> {"A": probs, "B":
    probs} (float32 as stored, all faces). ``order`` permutes the order films are written in,
    ``rename`` maps the film ids, ``genres`` gives each film's manifest genre.
    """
    rng = np.random.default_rng(seed)
    films = []
    for i in range(n_films):
        n_frames = 12
        per_frame = rng.integers(0, 3, n_frames)
        frame = np.repeat(np.arange(n_frames), per_frame)
        face = np.concatenate([np.arange(k) for k in per_frame]) if frame.size else np.zeros(0, int)
        area = 0.3 / (1 + face) * rng.uniform(0.8, 1.0, frame.size)
        truth = rng.normal(0, 1.0, len(FER)) + rng.normal(0, 1.0, (frame.size, len(FER)))
        pa_ = softmax(truth + rng.normal(0, 0.7, truth.shape))
        if kind == "identical":
            pb = pa_
        else:
            shift = np.zeros(len(FER))
            if kind == "planted":
                shift[FER.index("happy")] = 1.2
            pb = softmax(truth + rng.normal(0, 0.7, truth.shape) + shift)
        films.append((f"film{i:02d}", n_frames, frame, face, area, pa_, pb))
    order = range(n_films) if order is None else order
    rename = rename or {}
    manifest = Manifest(out)
    probs = {}
    for k in order:
        fid, n_frames, frame, face, area, pa_, pb = films[k]
        fid = rename.get(fid, fid)
        write_frames(out, fid, n_frames)
        for m, p in (("A", pa_), ("B", pb)):
            write_faces(out, fid, m, FER, frame, face, area, p)
        probs[fid] = {"A": pa_.astype(np.float32), "B": pb.astype(np.float32)}
        manifest.films[fid] = {"path": f"/films/{fid}.mp4", "status": "done", "reason": ""}
        if genres:
            manifest.films[fid]["metadata"] = {"genre": genres[k], "title": fid.upper()}
    manifest.save()
    return probs


def label_shares(probs: dict[str, dict[str, np.ndarray]], model: str) -> dict[str, np.ndarray]:
    """Independent label/faces measure: share of each class among argmax labels."""
    return {f: np.bincount(p[model].argmax(1), minlength=len(FER)) / len(p[model])
            for f, p in probs.items() if len(p[model])}


def same_records(r1: list[dict], r2: list[dict]) -> bool:
    def norm(v):
        return "nan" if isinstance(v, float) and math.isnan(v) else v
    return [{k: norm(v) for k, v in r.items()} for r in r1] == [{k: norm(v) for k, v in r.items()} for r in r2]


# --------------------------------------------------------------------------- per-film measures


@pytest.mark.parametrize(
    "opts, expected",
    [
        (StatsOptions(measure="label", per="faces"), [0.4, 0.4, 0.2]),
        (StatsOptions(measure="label", per="frames"), [0.5, 0.5, 0.25]),
        (StatsOptions(measure="prob", per="faces"), [2.0 / 5, 1.65 / 5, 1.35 / 5]),
        (StatsOptions(measure="prob", per="frames"), [2.0 / 4, 1.65 / 4, 1.35 / 4]),
        (StatsOptions(min_confidence=0.5), [0.5, 0.25, 0.25]),
        (StatsOptions(min_face_area=0.1), [0.0, 2 / 3, 1 / 3]),
        (StatsOptions(largest_only=True), [0.0, 2 / 3, 1 / 3]),
        # Frame 3's largest face (.4 confidence) is dropped: its largest *remaining* face counts.
        (StatsOptions(largest_only=True, min_confidence=0.5), [1 / 3, 1 / 3, 1 / 3]),
        (StatsOptions(largest_only=True, per="frames"), [0.0, 2 / 4, 1 / 4]),
    ],
)
def test_film_measures_by_hand(tmp_path, opts, expected):
    fm = film_measures(tiny_scan(tmp_path), "m1", opts)
    i = fm.film_ids.index("f1")
    np.testing.assert_allclose(fm.values[i], expected, atol=1e-6)
    assert fm.labels == TINY and fm.titles[i] == "One" and fm.n_frames[i] == 4


def test_films_without_faces_excluded_per_faces_and_zeros_per_frames(tmp_path):
    out = tiny_scan(tmp_path)
    fm = film_measures(out, "m1", StatsOptions(per="faces"))
    assert fm.film_ids == ("f1", "f3")
    assert fm.excluded["f2"] == "no faces after the filters" and fm.excluded["f4"] == "scan failed"
    assert "[m1] films excluded (no faces after the filters): f2" in fm.notes, fm.notes
    assert any("failed films not counted: f4" in n for n in fm.notes)
    assert any("partial" in n and "f2" in n for n in fm.notes)
    fm = film_measures(out, "m1", StatsOptions(per="frames"))
    assert fm.film_ids == ("f1", "f2", "f3")
    np.testing.assert_array_equal(fm.values[1], 0.0)
    assert fm.n_faces.tolist() == [5, 0, 1] and fm.dominant()[1] is None
    t = fm.to_arrow()
    assert t.column_names[:5] == ["film_id", "title", "n_faces", "n_frames", "dominant"]
    assert t.column("happy").to_pylist()[0] == pytest.approx(0.5)


def test_mismatched_film_sets_are_reported_and_dropped(tmp_path):
    out = tiny_scan(tmp_path)
    r = stats(out, "m1", "m2", StatsOptions(per="frames", n_boot=100))
    assert r.film_ids == ("f1", "f2")  # f3 only in m1, f4 failed
    assert r.only_a == ("f3",) and r.only_b == ()
    assert any("films scanned with m1 only, dropped: f3" in n for n in r.notes)
    assert r.excluded["f4"] == "scan failed"
    r = stats(out, "m1", "m2", StatsOptions(per="faces", n_boot=100))
    assert r.film_ids == ("f1",) and "f2" in r.excluded
    assert any("fewer than 2 paired films" in n for n in r.notes)
    assert all(math.isnan(x["p_t"]) for x in r.records)


def test_films_are_paired_by_id_not_position(tmp_path):
    probs = synth_scan(tmp_path, n_films=10, seed=2)
    faces_path(tmp_path, "film01", "A").unlink()
    faces_path(tmp_path, "film04", "B").unlink()
    r = stats(tmp_path, "A", "B", StatsOptions(n_boot=10))
    assert r.only_a == ("film04",) and r.only_b == ("film01",) and len(r.film_ids) == 8
    sa, sb = label_shares(probs, "A"), label_shares(probs, "B")
    np.testing.assert_allclose(r.values_a, [sa[f] for f in r.film_ids], atol=1e-12)
    np.testing.assert_allclose(r.values_b, [sb[f] for f in r.film_ids], atol=1e-12)
    j = FER.index("happy")
    tt = st.ttest_rel([sa[f][j] for f in r.film_ids], [sb[f][j] for f in r.film_ids])
    assert r.records[j]["t"] == pytest.approx(tt.statistic, abs=1e-9)


def test_no_paired_film_is_an_error(tmp_path):
    write_frames(tmp_path, "x", 2)
    write_frames(tmp_path, "y", 2)
    write_faces(tmp_path, "x", "m1", TINY, [0], [0], [0.2], [[0.2, 0.5, 0.3]])
    write_faces(tmp_path, "y", "m2", TINY, [0], [0], [0.2], [[0.2, 0.5, 0.3]])
    with pytest.raises(StatsError, match="no film has measures for both 'm1' and 'm2'"):
        stats(tmp_path, "m1", "m2")


# --------------------------------------------------------------------------- statistics


def test_statistics_agree_with_scipy(tmp_path):
    probs = synth_scan(tmp_path, n_films=15, seed=3, kind="planted")
    r = stats(tmp_path, "A", "B", StatsOptions(n_boot=200))
    sa, sb = label_shares(probs, "A"), label_shares(probs, "B")
    films = sorted(set(sa) & set(sb))
    assert r.film_ids == tuple(films)
    xa = np.array([sa[f] for f in films])
    xb = np.array([sb[f] for f in films])
    np.testing.assert_allclose(r.values_a, xa, atol=1e-12)
    recs = r.group_records("all")
    assert [x["emotion"] for x in recs] == list(FER) and [x["group"] for x in r.records] == ["all"] * 7
    checked = 0
    for j, rec in enumerate(recs):
        d = xa[:, j] - xb[:, j]
        assert rec["n_films"] == len(films)
        assert rec["mean_a"] == pytest.approx(xa[:, j].mean(), abs=1e-9)
        assert rec["mean_b"] == pytest.approx(xb[:, j].mean(), abs=1e-9)
        assert rec["mean_diff"] == pytest.approx(d.mean(), abs=1e-9)
        if np.all(d == 0):
            continue
        tt = st.ttest_rel(xa[:, j], xb[:, j])
        wr = st.wilcoxon(np.round(d, 12))  # stats ranks differences rounded to 12 decimals
        assert rec["t"] == pytest.approx(tt.statistic, abs=1e-9)
        assert rec["p_t"] == pytest.approx(tt.pvalue, abs=1e-9)
        assert rec["w"] == pytest.approx(wr.statistic, abs=1e-9)
        assert rec["p_w"] == pytest.approx(wr.pvalue, abs=1e-9)
        assert rec["d_z"] == pytest.approx(d.mean() / d.std(ddof=1), abs=1e-9)
        checked += 1
    assert checked >= 5
    # Holm across the emotions, computed by hand.
    np.testing.assert_allclose([x["p_t_adj"] for x in recs], hand_holm([x["p_t"] for x in recs]), atol=1e-12)
    np.testing.assert_allclose([x["p_w_adj"] for x in recs], hand_holm([x["p_w"] for x in recs]), atol=1e-12)
    rb = stats(tmp_path, "A", "B", StatsOptions(n_boot=200, correction="bh"))
    pw = np.array([x["p_w"] for x in recs])
    assert np.all(np.isfinite(pw))
    np.testing.assert_allclose([x["p_w_adj"] for x in rb.records], st.false_discovery_control(pw), atol=1e-12)


def test_prob_measure_agrees_with_scipy(tmp_path):
    probs = synth_scan(tmp_path, n_films=10, seed=4, kind="planted")
    r = stats(tmp_path, "A", "B", StatsOptions(measure="prob", per="frames", n_boot=0))
    films = sorted(probs)
    xa = np.array([probs[f]["A"].astype(np.float64).sum(0) / 12 for f in films])
    xb = np.array([probs[f]["B"].astype(np.float64).sum(0) / 12 for f in films])
    for j, rec in enumerate(r.records):
        tt = st.ttest_rel(xa[:, j], xb[:, j])
        assert rec["t"] == pytest.approx(tt.statistic, abs=1e-9)
        assert rec["p_t"] == pytest.approx(tt.pvalue, abs=1e-9)
        assert math.isnan(rec["ci_low"]) and math.isnan(rec["ci_high"])  # n_boot=0


def hand_holm(p):
    p = list(p)
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adj = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj


@pytest.mark.parametrize(
    "n, ties",
    [(4, True), (10, True), (13, True), (8, False), (13, False), (14, True), (30, True), (40, False)],
)
def test_wilcoxon_matches_scipy_in_every_branch(n, ties):
    # scipy's "auto": exact (no ties/zeros), sign-flip permutation (n <= 13 with ties or
    # zeros, enumerated here in one array operation), normal approximation (otherwise).
    rng = np.random.default_rng(n)
    d = rng.integers(-4, 5, n) / 9.0 if ties else rng.normal(size=n)
    d[0] = 0.0 if ties else d[0]
    assert (np.unique(np.abs(d)).size < n or np.any(d == 0)) == ties
    res = st.wilcoxon(d)
    assert wilcoxon_test(d) == pytest.approx((res.statistic, res.pvalue), abs=1e-12)


def test_differences_tied_in_exact_arithmetic_rank_as_ties(tmp_path):
    # Films of 10 faces; (happy faces for A, for B). Differences in tenths: 2, 2, 2, 2, -2, -2, 1.
    counts = [(3, 1), (4, 2), (7, 5), (6, 4), (1, 3), (2, 4), (5, 4)]
    for i, (ca, cb) in enumerate(counts):
        fid = f"t{i}"
        write_frames(tmp_path, fid, 10)
        for m, c in (("A", ca), ("B", cb)):
            probs = np.tile([0.1, 0.2, 0.7], (10, 1))
            probs[:c] = [0.1, 0.7, 0.2]
            write_faces(tmp_path, fid, m, TINY, np.arange(10), np.zeros(10), np.full(10, 0.1), probs)
    r = stats(tmp_path, "A", "B", StatsOptions(n_boot=10))
    happy = next(x for x in r.records if x["emotion"] == "happy")
    exact = st.wilcoxon(np.array([2, 2, 2, 2, -2, -2, 1]) / 10)
    assert (happy["w"], happy["p_w"]) == pytest.approx((exact.statistic, exact.pvalue), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_holm_and_bh_against_independent_computations(seed):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 0.2, 9) ** 2
    p[3] = p[5]  # a tie
    np.testing.assert_allclose(holm(p), hand_holm(p), atol=1e-15)
    np.testing.assert_allclose(benjamini_hochberg(p), st.false_discovery_control(p, method="bh"), atol=1e-15)
    q = np.append(p, np.nan)
    np.testing.assert_allclose(holm(q)[:-1], hand_holm(p), atol=1e-15)
    assert math.isnan(holm(q)[-1]) and math.isnan(benjamini_hochberg(q)[-1])


def test_planted_difference_is_found(tmp_path):
    synth_scan(tmp_path, n_films=24, seed=5, kind="planted")
    for measure in ("label", "prob"):
        r = stats(tmp_path, "A", "B", StatsOptions(measure=measure, n_boot=500))
        happy = next(x for x in r.records if x["emotion"] == "happy")
        assert happy["mean_diff"] < 0 and happy["ci_high"] < 0
        assert happy["p_t_adj"] < 0.01 and happy["p_w_adj"] < 0.01
        assert r.dominant_b["happy"] > r.dominant_a["happy"]


def test_identical_models_flag_nothing(tmp_path):
    synth_scan(tmp_path, n_films=20, seed=6, kind="identical")
    for a, b in (("A", "B"), ("A", "A")):
        r = stats(tmp_path, a, b, StatsOptions(n_boot=200))
        assert all(x["p_t_adj"] == 1.0 and x["p_w_adj"] == 1.0 for x in r.records)
        assert all(x["mean_diff"] == 0 and x["ci_low"] == 0 == x["ci_high"] for x in r.records)
        assert all(math.isnan(x["t"]) and math.isnan(x["w"]) and math.isnan(x["d_z"]) for x in r.records)
        assert any("every film's difference is 0" in n for n in r.notes)
        assert r.dominant_a == r.dominant_b


@pytest.mark.parametrize("measure", ["label", "prob"])
def test_independent_noisy_models_without_a_difference_flag_nothing(tmp_path, measure):
    synth_scan(tmp_path, n_films=24, seed=7, kind="null")
    r = stats(tmp_path, "A", "B", StatsOptions(measure=measure, n_boot=200))
    assert all(x["p_t_adj"] >= 0.05 and x["p_w_adj"] >= 0.05 for x in r.records)


def test_film_order_file_order_and_ids_change_nothing(tmp_path):
    genres = ["drama", "comedy"] * 8
    synth_scan(tmp_path / "x", n_films=16, seed=8, genres=genres)
    perm = list(np.random.default_rng(0).permutation(16))
    rename = {f"film{i:02d}": f"{'zq'[i % 2]}-{(7 * i) % 16:02d}" for i in range(16)}
    synth_scan(tmp_path / "y", n_films=16, seed=8, genres=genres, order=perm, rename=rename)
    opts = StatsOptions(n_boot=300, by="genre", seed=3)
    r1, r2 = stats(tmp_path / "x", "A", "B", opts), stats(tmp_path / "y", "A", "B", opts)
    assert same_records(r1.records, r2.records)
    assert r1.dominant_a == r2.dominant_a and r1.dominant_b == r2.dominant_b
    # The per-film values follow the ids through the renaming.
    i1 = r1.film_ids.index("film05")
    i2 = r2.film_ids.index(rename["film05"])
    np.testing.assert_array_equal(r1.values_a[i1], r2.values_a[i2])


def test_bootstrap_is_seeded_and_contains_the_mean_difference(tmp_path):
    synth_scan(tmp_path, n_films=20, seed=9, kind="planted")
    r1 = stats(tmp_path, "A", "B", StatsOptions(n_boot=2000, seed=11))
    r2 = stats(tmp_path, "A", "B", StatsOptions(n_boot=2000, seed=11))
    r3 = stats(tmp_path, "A", "B", StatsOptions(n_boot=2000, seed=12))
    assert same_records(r1.records, r2.records)
    assert [x["ci_low"] for x in r1.records] != [x["ci_low"] for x in r3.records]
    for x in r1.records:
        assert x["ci_low"] <= x["mean_diff"] <= x["ci_high"]
        assert x["ci_low"] < x["ci_high"]


# --------------------------------------------------------------------------- groups, labels, errors


def test_by_genre_groups_with_at_least_two_films(tmp_path):
    genres = ["drama"] * 9 + ["comedy"] * 12 + ["horror"]
    probs = synth_scan(tmp_path, n_films=22, seed=10, genres=genres)
    r = stats(tmp_path, "A", "B", StatsOptions(n_boot=100, by="genre"))
    assert list(r.groups) == ["all", "comedy", "drama"]
    assert len(r.groups["drama"]) == 9 and len(r.groups["comedy"]) == 12 and len(r.groups["all"]) == 22
    assert [x["group"] for x in r.records] == ["all"] * 7 + ["comedy"] * 7 + ["drama"] * 7
    assert any("horror (1)" in n for n in r.notes)
    sa, sb = label_shares(probs, "A"), label_shares(probs, "B")
    drama = r.groups["drama"]
    j = FER.index("happy")
    tt = st.ttest_rel([sa[f][j] for f in drama], [sb[f][j] for f in drama])
    rec = next(x for x in r.group_records("drama") if x["emotion"] == "happy")
    assert rec["n_films"] == 9 and rec["t"] == pytest.approx(tt.statistic, abs=1e-9)
    for rec in r.group_records("drama"):  # n = 9: scipy's permutation branch where there are ties
        j = FER.index(rec["emotion"])
        d = np.array([sa[f][j] - sb[f][j] for f in drama])
        if np.any(d != 0):
            wr = st.wilcoxon(np.round(d, 12))
            assert (rec["w"], rec["p_w"]) == pytest.approx((wr.statistic, wr.pvalue), abs=1e-9)
    assert r.film_table().column("group").to_pylist()[0] == "drama"
    assert r.titles[0] == "FILM00"
    # A metadata mapping (e.g. from --metadata) adds to and overrides the manifest's.
    meta = {f"film{i:02d}": {"genre": "x" if i < 11 else "y"} for i in range(22)}
    r = stats(tmp_path, "A", "B", StatsOptions(n_boot=100, by="genre"), metadata=meta)
    assert list(r.groups) == ["all", "x", "y"]
    with pytest.raises(StatsError, match="no paired film has metadata column 'decade'; columns present: genre, title"):
        stats(tmp_path, "A", "B", StatsOptions(n_boot=10, by="decade"))


def test_different_label_sets_use_shared_classes_renormalised(tmp_path):
    out = tiny_scan(tmp_path)
    rows = list(zip(*F1_ROWS))
    p = np.array(rows[3])  # angry, happy, neutral
    other = ("Happy", "neutral", "sad")
    p4 = np.column_stack([p[:, 1], p[:, 2], np.full(len(p), 0.2)])
    for fid in ("f1", "f3"):
        write_faces(out, fid, "m4", other, rows[0], rows[1], rows[2], p4 / p4.sum(1, keepdims=True))
    assert model_labels(out, "m4") == other
    r = stats(out, "m1", "m4", StatsOptions(measure="label", n_boot=50))
    assert r.labels == ("happy", "neutral") and r.shared_labels_only
    assert any("shared classes (happy, neutral)" in n and "renormalised" in n for n in r.notes)
    i = r.film_ids.index("f1")
    # Among happy/neutral the tops are happy, happy, neutral, happy, neutral.
    np.testing.assert_allclose(r.values_a[i], [0.6, 0.4], atol=1e-6)
    r = stats(out, "m1", "m4", StatsOptions(measure="prob", n_boot=50))
    hn = p[:, 1:] / p[:, 1:].sum(1, keepdims=True)
    np.testing.assert_allclose(r.values_a[i], hn.mean(0), atol=1e-6)
    np.testing.assert_allclose(r.values_b[i], hn.mean(0), atol=1e-6)
    write_faces(out, "f1", "m5", ("sad", "fear"), [0], [0], [0.2], [[0.5, 0.5]])
    with pytest.raises(StatsError, match="models 'm1' and 'm5' share no class: "
                                         "m1 has angry, happy, neutral; m5 has sad, fear"):
        stats(out, "m1", "m5")


def test_unknown_model_names_the_available_ones(tmp_path):
    out = tiny_scan(tmp_path)
    write_faces(out, "f1", "ens:m1+m2", TINY, [0], [0], [0.2], [[0.2, 0.5, 0.3]])
    assert available_models(out) == ["ens:m1+m2", "m1", "m2"]
    with pytest.raises(StatsError, match=r"model 'nope' is not in the scan .*; available models: ens:m1\+m2, m1, m2"):
        stats(out, "m1", "nope")
    with pytest.raises(StatsError, match="model 'm1' has no class 'sad'; its classes: angry, happy, neutral"):
        film_measures(out, "m1", labels=["sad"])
    assert film_measures(out, "ens:m1+m2").film_ids == ("f1",)


def test_malformed_shards_are_named(tmp_path):
    out = tiny_scan(tmp_path)
    write_faces(out, "f3", "m2", ("angry", "happy", "sad"), [0], [0], [0.2], [[0.2, 0.5, 0.3]])
    with pytest.raises(StatsError, match="model 'm2' has classes angry, happy, sad in film 'f3' but "
                                         "angry, happy, neutral elsewhere; rescan with one version of the model"):
        film_measures(out, "m2")
    cols = dict(frame_index=np.zeros(0, np.int64), pts_seconds=np.zeros(0), face_index=np.zeros(0, np.int16),
                **{k: np.zeros(0, np.float32) for k in ("x0", "y0", "x1", "y1", "det_score", "face_area_rel")})
    bad = faces_table("f1", "m6", TINY, cols, np.zeros((0, 3), np.float32), {b"exe_stream.labels": b"angry"})
    write_table(faces_path(out, "f1", "m6"), bad)
    with pytest.raises(StatsError, match="m6.*schema metadata 'exe_stream.labels' is not a JSON list"):
        model_labels(out, "m6")
    write_table(faces_path(out, "f1", "m7"), faces_table("f1", "m7", (), cols, np.zeros((0, 0), np.float32), {}))
    with pytest.raises(StatsError, match=r"m7/f1\.parquet: no prob_<class> columns"):
        model_labels(out, "m7")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(measure="mode"), "measure must be one of label, prob; got 'mode'"),
        (dict(per="film"), "per must be one of faces, frames; got 'film'"),
        (dict(correction="bonferroni"), "correction must be one of holm, bh; got 'bonferroni'"),
        (dict(min_confidence=1.5), r"min_confidence must be in \[0, 1\], got 1.5"),
        (dict(min_face_area=-0.1), r"min_face_area must be in \[0, 1\], got -0.1"),
        (dict(largest_only="yes"), "largest_only must be one of True, False; got 'yes'"),
        (dict(n_boot=-1), "n_boot must be >= 0, got -1"),
        (dict(seed=-2), "seed must be >= 0, got -2"),
        (dict(by=""), "by must be a metadata column name or None, got ''"),
    ],
)
def test_bad_options_name_the_value_and_the_allowed_ones(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StatsOptions(**kwargs)


def test_writers(tmp_path):
    synth_scan(tmp_path, n_films=8, seed=12)
    r = stats(tmp_path, "A", "B", StatsOptions(n_boot=100))
    data = json.loads(r.to_json(tmp_path / "s.json"))
    assert json.loads((tmp_path / "s.json").read_text()) == data
    assert [list(x) for x in data] == [list(RECORD_FIELDS)] * 7
    assert [x["mean_diff"] for x in data] == pytest.approx([x["mean_diff"] for x in r.records], abs=1e-15)
    summary = r.summary()
    assert summary["a"] == "A" and summary["options"]["n_boot"] == 100 and summary["records"] == data
    lines = r.to_csv().splitlines()
    assert lines[0] == ",".join(RECORD_FIELDS) and len(lines) == 8
    t = r.to_arrow()
    assert t.column_names == list(RECORD_FIELDS) and t.num_rows == 7
    assert t.schema.field("n_films").type == pa.int64() and t.schema.field("p_t").type == pa.float64()
    assert t.column("t").to_pylist() == [x["t"] for x in r.records]
    ft = r.film_table()
    assert ft.num_rows == 8 and "a_happy" in ft.column_names and "b_neutral" in ft.column_names
    assert "films=8" in repr(r) and "0." not in repr(r)


# --------------------------------------------------------------------------- CLI


def test_cli_stats_table(tmp_path):
    synth_scan(tmp_path, n_films=12, seed=13)
    r = runner.invoke(app, ["stats", str(tmp_path), "--bootstrap", "200"])  # the scan's two models
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "A (A) vs B (B)" in out and "happy" in out and "p_t adj" in out
    assert "dominant emotion per film, A (A): " in out
    r = runner.invoke(app, ["stats", str(tmp_path), "--a", "B", "--b", "A", "--bootstrap", "50", "--by", "genre"])
    assert r.exit_code == 2 and "no paired film has metadata column 'genre'" in " ".join(r.output.split())


def test_cli_stats_json_csv_arrow(tmp_path):
    synth_scan(tmp_path, n_films=12, seed=14)
    meta = tmp_path / "meta.csv"
    meta.write_text("film_id,genre\n" + "".join(f"film{i:02d},{'ab'[i % 2]}\n" for i in range(12)))
    r = runner.invoke(app, ["stats", str(tmp_path), "--a", "A", "--b", "B", "--format", "json", "--bootstrap", "100",
                            "--measure", "prob", "--correction", "bh", "--by", "genre", "--metadata", str(meta)])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert isinstance(data, list) and all(list(x) == list(RECORD_FIELDS) for x in data)
    assert {x["group"] for x in data} == {"all", "a", "b"}
    r = runner.invoke(app, ["stats", str(tmp_path), "--format", "csv", "--bootstrap", "10",
                            "-o", str(tmp_path / "s.csv")])
    assert r.exit_code == 0 and (tmp_path / "s.csv").read_text().startswith("group,emotion,n_films")
    r = runner.invoke(app, ["stats", str(tmp_path), "--format", "arrow", "--bootstrap", "10",
                            "-o", str(tmp_path / "s.arrow")])
    assert r.exit_code == 0 and read_table(tmp_path / "s.arrow").num_rows == 7


@pytest.mark.parametrize(
    "args, message",
    [
        (["--measure", "mode"], "measure must be one of label, prob; got 'mode'"),
        (["--per", "x"], "per must be one of faces, frames; got 'x'"),
        (["--correction", "x"], "correction must be one of holm, bh; got 'x'"),
        (["--a", "nope", "--b", "A"], "model 'nope' is not in the scan"),
        (["--format", "xml"], "format must be one of table, csv, json, arrow; got 'xml'"),
        (["--format", "arrow"], "--format arrow needs -o FILE"),
        (["--bootstrap", "-5"], "--bootstrap must be >= 0, got -5"),
    ],
)
def test_cli_bad_arguments_exit_2(tmp_path, args, message):
    synth_scan(tmp_path, n_films=3, seed=15)
    r = runner.invoke(app, ["stats", str(tmp_path), *args])
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.output.split())


def test_cli_unknown_model_lists_available_and_defaults_need_two_models(tmp_path):
    out = tiny_scan(tmp_path)
    r = runner.invoke(app, ["stats", str(out), "--a", "m1", "--b", "m9"])
    assert r.exit_code == 2
    assert "model 'm9' is not in the scan" in r.output and "available models: m1, m2" in " ".join(r.output.split())
    write_faces(out, "f1", "m3", TINY, [0], [0], [0.2], [[0.2, 0.5, 0.3]])
    r = runner.invoke(app, ["stats", str(out)])
    assert r.exit_code == 2 and "give both --a and --b" in r.output and "m1, m2, m3" in r.output
    r = runner.invoke(app, ["stats", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "missing does not exist" in " ".join(r.output.split())


# --------------------------------------------------------------------------- units: shot, track


def shots_scan(out: Path, with_shots: bool = True) -> Path:
    """One film, 11 sampled frames: shot 0 = frames 0-7, each with one happy face (track 0);
    shot 1 = frames 8-10, a sad face on 8 and 9 (track 1), none on 10."""
    fi = np.arange(11)
    frames = frames_table("f", fi, fi / 25.0, fi == 0, (fi < 10).astype(np.int16), shard_metadata())
    faces_fi = np.arange(10)
    probs = np.array([[0.1, 0.8, 0.1]] * 8 + [[0.7, 0.2, 0.1]] * 2, np.float32)
    write_faces(out, "f", "m", TINY, faces_fi, np.zeros(10), np.full(10, 0.1), probs)
    if with_shots:
        frames = frames.append_column("shot_index", pa.array((fi >= 8).astype(np.int32)))
        t = read_table(faces_path(out, "f", "m"))
        write_table(faces_path(out, "f", "m"), t.append_column("track_id", pa.array((faces_fi >= 8).astype(np.int32))))
    write_table(frames_path(out, "f"), frames)
    return out


@pytest.mark.parametrize("unit, per, expected", [
    ("film", "faces", [0.2, 0.8, 0.0]),  # 8 happy, 2 angry of 10 faces
    ("shot", "faces", [0.5, 0.5, 0.0]),  # shot 0 all happy, shot 1 all angry: each counts once
    ("track", "faces", [0.5, 0.5, 0.0]),
    ("shot", "frames", [1 / 3, 0.5, 0.0]),  # shot 1: 2 angry faces over its 3 sampled frames
])
def test_shot_and_track_units_count_each_once(tmp_path, unit, per, expected):
    m = film_measures(shots_scan(tmp_path), "m", StatsOptions(unit=unit, per=per))
    np.testing.assert_allclose(m.values[0], expected, atol=1e-12)


def test_units_need_a_scan_with_shots(tmp_path):
    shots_scan(tmp_path, with_shots=False)
    with pytest.raises(StatsError, match=r"film 'f': --unit shot needs shots: scan the films with --shots"):
        film_measures(tmp_path, "m", StatsOptions(unit="shot"))
    with pytest.raises(StatsError, match="--unit track needs face tracks"):
        film_measures(tmp_path, "m", StatsOptions(unit="track"))
    with pytest.raises(ValueError, match="unit"):
        StatsOptions(unit="scene")
    with pytest.raises(ValueError, match="use it with per 'faces'"):
        StatsOptions(unit="track", per="frames")


def test_by_character_makes_each_character_a_paired_unit(tmp_path):
    """Two models over the same faces of one film with two characters: one unit per
    (film, character), measured on that character's faces only."""
    shots_scan(tmp_path)
    char = np.array([0] * 8 + [1] * 2, np.int32)
    probs_b = np.array([[0.2, 0.1, 0.7]] * 10, np.float32)  # model b: all neutral
    write_faces(tmp_path, "f", "n", TINY, np.arange(10), np.zeros(10), np.full(10, 0.1), probs_b)
    for m in ("m", "n"):
        t = read_table(faces_path(tmp_path, "f", m))
        write_table(faces_path(tmp_path, "f", m), t.append_column("character_id", pa.array(char)))
    m = film_measures(tmp_path, "m", StatsOptions(by="character"))
    assert m.film_ids == ("f/character-0", "f/character-1")
    np.testing.assert_allclose(m.values, [[0, 1, 0], [1, 0, 0]])
    assert m.n_faces.tolist() == [8, 2]
    res = stats(tmp_path, "m", "n", StatsOptions(by="character", n_boot=0))
    assert res.film_ids == ("f/character-0", "f/character-1")
    rec = {r["emotion"]: r for r in res.records if r["group"] == "all"}
    assert rec["neutral"]["mean_diff"] == pytest.approx(-1.0) and rec["happy"]["mean_a"] == pytest.approx(0.5)
    # A scan without characters says what it needs.
    shots_scan(tmp_path / "plain")
    with pytest.raises(StatsError, match="needs a scan with --characters"):
        film_measures(tmp_path / "plain", "m", StatsOptions(by="character"))
