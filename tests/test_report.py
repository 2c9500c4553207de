"""report: numeric helpers of the timelines, the plots, the self-contained page, the CLI."""

from __future__ import annotations

import html
import re

import numpy as np
import pytest
from scipy import stats as st
from typer.testing import CliRunner

from exe_stream.cli import app
from exe_stream.errors import StatsError
from exe_stream.report import (
    choose_models, emotion_colours, emotion_order, face_mask, fmt_num, fmt_p, frame_label_counts,
    report, rolling_counts, rolling_shares, wilson_interval,
)
from exe_stream.shards import (
    Manifest, faces_path, faces_table, frames_path, frames_table, shard_metadata, write_table,
)
from exe_stream.stats import StatsOptions, stats

LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
A, B = "model-a", "model/b"  # "/" checks the URL-quoted directory names
OPTS = StatsOptions(n_boot=400, seed=1, by="genre")
TITLES = {
    "f1": 'Tom & Jerry <i>"Cat"</i>',
    "f2": "Brief Encounter",
    "f3": "The Third Man",
    "f4": "Some Like It Hot",
    "f5": "Rashomon",
}
GENRES = {"f1": "comedy", "f2": "drama", "f3": "drama", "f4": "comedy", "f5": "drama"}


def _probs(rng: np.random.Generator, top: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities whose argmax is ``top`` (0.6 on it, the rest spread at random)."""
    rest = rng.dirichlet(np.ones(n_classes), size=len(top)) * 0.4
    rest[np.arange(len(top)), top] = 0.6
    return (rest / rest.sum(1, keepdims=True)).astype(np.float32)


def _film(out, fid, rng, models, n_frames=40):
    """Write one film: n_frames sampled frames (0.4 s apart), 0-2 faces each, per model a
    top-label distribution (model -> (labels, class weights))."""
    fi = np.arange(n_frames, dtype=np.int64) * 10
    pts = fi / 25.0
    n_faces = rng.integers(0, 3, n_frames)
    meta = shard_metadata(sampling={"every": 10})
    write_table(frames_path(out, fid), frames_table(fid, fi, pts, fi % 50 == 0, n_faces, meta))
    rows = np.repeat(np.arange(n_frames), n_faces)
    face_index = np.concatenate([np.arange(k) for k in n_faces]).astype(np.int16)
    area = np.exp(rng.uniform(np.log(0.002), np.log(0.2), len(rows))).astype(np.float32)
    side = np.sqrt(area)
    cols = {
        "frame_index": fi[rows], "pts_seconds": pts[rows], "face_index": face_index,
        "x0": np.zeros(len(rows), np.float32), "y0": np.zeros(len(rows), np.float32),
        "x1": side, "y1": side, "det_score": np.full(len(rows), 0.9, np.float32), "face_area_rel": area,
    }
    for m, (labels, weights) in models.items():
        top = rng.choice(len(labels), size=len(rows), p=np.asarray(weights) / np.sum(weights))
        t = faces_table(fid, m, labels, cols, _probs(rng, top, len(labels)),
                        shard_metadata(model_id=m, labels=list(labels)))
        write_table(faces_path(out, fid, m), t)
    return int(n_frames), int(len(rows))


def _scan(out, models, titles=TITLES, failed=True):
    """A hand-made scan: films f1.. with the given models, plus a failed film without shards."""
    rng = np.random.default_rng(7)
    manifest = Manifest(out)
    for fid, title in titles.items():
        frames, faces = _film(out, fid, rng, models)
        manifest.films[fid] = {"path": f"/films/{fid}.mp4", "status": "done", "reason": "",
                               "frames_sampled": frames, "faces": faces,
                               "metadata": {"title": title, "genre": GENRES.get(fid, "")}}
    if failed:
        manifest.films["broken"] = {"path": "/films/broken.mp4", "status": "failed",
                                    "reason": "/films/broken.mp4: moov atom not found", "metadata": {}}
    manifest.scans.append({"models": {m: {"labels": list(lbls)} for m, (lbls, _) in models.items()}})
    manifest.save()
    return out


# Model A sees mostly happy faces, model B mostly neutral ones: a planted difference.
TWO = {A: (LABELS, [1, 1, 1, 24, 2, 2, 4]), B: (LABELS, [1, 1, 1, 3, 2, 2, 24])}


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    out = _scan(tmp_path_factory.mktemp("scan2"), TWO)
    res = report(out, out / "rep", opts=OPTS)
    return out, res, res.html.read_text()


# ---------------------------------------------------------------------------- numeric helpers


def test_frame_label_counts_and_rolling_window_by_hand():
    frames = np.array([0, 10, 20, 30, 40])
    counts = frame_label_counts(frames, np.array([0, 0, 10, 30, 40, 40]), np.array([0, 1, 1, 0, 1, 1]), 2)
    np.testing.assert_array_equal(counts, [[1, 1], [0, 1], [0, 0], [1, 0], [0, 2]])
    # Window 3: frames i-1..i+1, cut at the ends.
    k, n = rolling_counts(counts, 3)
    np.testing.assert_array_equal(k, [[1, 2], [1, 2], [1, 1], [1, 2], [1, 2]])
    np.testing.assert_array_equal(n, [3, 3, 2, 3, 3])
    share, n = rolling_shares(counts, 3)
    np.testing.assert_allclose(share[:, 0], [1 / 3, 1 / 3, 1 / 2, 1 / 3, 1 / 3])
    np.testing.assert_allclose(share.sum(1), 1.0)
    # Window 2 covers i..i+1 (even windows lean forward); window 1 is the frame itself.
    k2, _ = rolling_counts(counts, 2)
    np.testing.assert_array_equal(k2[:, 1], [2, 1, 0, 2, 2])
    share1, n1 = rolling_shares(counts, 1)
    assert np.isnan(share1[2]).all() and n1[2] == 0
    with pytest.raises(ValueError, match=r"window must be >= 1 sampled frame\(s\), got 0"):
        rolling_counts(counts, 0)
    with pytest.raises(ValueError, match="not among the sampled frames"):
        frame_label_counts(frames, np.array([5]), np.array([0]), 2)


def test_wilson_interval_matches_hand_values_and_scipy():
    low, high = wilson_interval(np.array([0, 1, 3, 7, 10]), np.array([10, 10, 10, 10, 10]))
    for i, k in enumerate([0, 1, 3, 7, 10]):
        ci = st.binomtest(k, 10).proportion_ci(confidence_level=0.95, method="wilson")
        assert low[i] == pytest.approx(ci.low, abs=1e-9) and high[i] == pytest.approx(ci.high, abs=1e-9)
    # By hand, k = 5 of n = 20: centre (0.25 + z^2/40) / (1 + z^2/20) = 0.2945...
    z = 1.959963984540054
    centre = (0.25 + z * z / 40) / (1 + z * z / 20)
    half = z / (1 + z * z / 20) * np.sqrt(0.25 * 0.75 / 20 + z * z / 1600)
    lo, hi = wilson_interval(5, 20)
    assert lo == pytest.approx(centre - half) and hi == pytest.approx(centre + half)
    assert lo == pytest.approx(0.1119, abs=5e-5) and hi == pytest.approx(0.4687, abs=5e-5)  # published table
    lo0, hi0 = wilson_interval(np.array([0]), np.array([0]))
    assert np.isnan(lo0[0]) and np.isnan(hi0[0])


def test_face_mask_keeps_the_largest_remaining_face_per_frame():
    conf = np.array([0.9, 0.9, 0.3, 0.9, 0.9])
    area = np.array([0.01, 0.05, 0.2, 0.001, 0.02])
    frame = np.array([0, 0, 0, 10, 10])
    face = np.array([1, 0, 2, 0, 1])
    o = StatsOptions
    np.testing.assert_array_equal(face_mask(conf, area, frame, face, o()), [1, 1, 1, 1, 1])
    np.testing.assert_array_equal(face_mask(conf, area, frame, face, o(min_confidence=0.5)), [1, 1, 0, 1, 1])
    # Largest among the faces left by the filters (face 2 of frame 0 is dropped first).
    np.testing.assert_array_equal(face_mask(conf, area, frame, face, o(min_confidence=0.5, largest_only=True)),
                                  [0, 1, 0, 0, 1])
    np.testing.assert_array_equal(face_mask(conf, area, frame, face, o(min_face_area=0.015, largest_only=True)),
                                  [0, 0, 1, 0, 1])


def test_emotion_order_and_colours_are_consistent_across_models():
    order = emotion_order([["neutral", "happy", "zzz"], ["Happy", "contempt", "angry"]])
    assert order == ("angry", "happy", "neutral", "contempt", "zzz")
    c1, c2 = emotion_colours(order), emotion_colours(["happy", "angry"])
    assert c1["happy"] == c2["happy"] and c1["angry"] == c2["angry"]
    assert len(set(c1.values())) == len(order)


# ---------------------------------------------------------------------------- the report


def _png_ok(path):
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_two_model_report_writes_every_plot(two):
    out, res, _ = two
    assert res.compared and res.models == (A, B)
    expected = {"differences", "shares", "dominant", "face_sizes"} | {f"timeline-f{i}" for i in range(1, 6)}
    assert set(res.plots) == expected
    for name, path in res.plots.items():
        assert path.parent == out / "rep" and path.exists() and _png_ok(path), name
    assert res.html == out / "rep" / "report.html"


def test_page_is_self_contained(two):
    _, res, page = two
    refs = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page, flags=re.I)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs)
    assert len(refs) == len(res.plots)
    assert "<link" not in page and "@import" not in page and "url(" not in page


def test_page_has_titles_statistics_and_notes(two):
    out, _, page = two
    for fid, title in TITLES.items():
        if fid != "f1":
            assert title in page
    # The planted difference: happy is much more frequent with A, neutral with B.
    ref = stats(out, A, B, OPTS)
    happy = next(r for r in ref.records if r["group"] == "all" and r["emotion"] == "happy")
    neutral = next(r for r in ref.records if r["group"] == "all" and r["emotion"] == "neutral")
    assert happy["mean_diff"] > 0.3 and happy["p_t_adj"] < 0.05 and neutral["mean_diff"] < -0.3
    for r in (happy, neutral):
        row = (f'<td class="l">all</td><td class="l">{r["emotion"]}</td><td class="">5</td>'
               f'<td class="">{fmt_num(r["mean_a"])}</td><td class="">{fmt_num(r["mean_b"])}</td>'
               f'<td class="">{fmt_num(r["mean_diff"], "+.3f")}</td>'
               f'<td class="">[{fmt_num(r["ci_low"], "+.3f")}, {fmt_num(r["ci_high"], "+.3f")}]</td>'
               f'<td class="">{fmt_num(r["t"], ".2f")}</td><td class="">{fmt_p(r["p_t_adj"])}')
        assert row in page
    assert '<tr class=sig><td class="l">all</td><td class="l">happy</td>' in page
    # Every note of the statistics (the failed film among them), escaped as the page escapes text.
    assert any("broken" in n for n in ref.notes)
    for note in ref.notes:
        assert html.escape(note, quote=True) in page
    assert "moov atom not found" in page  # the failed film's reason in the scan table
    assert "How to read this" in page and "does not say which model is right" in page
    assert "No comparison" not in page
    # --by genre: one group per genre with at least 2 films.
    assert '<td class="l">comedy</td><td class="l">happy</td><td class="">2</td>' in page
    assert '<td class="l">drama</td><td class="l">happy</td><td class="">3</td>' in page


def test_titles_with_html_characters_are_escaped(two):
    _, _, page = two
    assert "Tom &amp; Jerry &lt;i&gt;&quot;Cat&quot;&lt;/i&gt;" in page
    assert "<i>\"Cat\"</i>" not in page and "Tom & Jerry" not in page


def test_model_choice_errors_name_the_values(tmp_path, two):
    out = two[0]
    with pytest.raises(StatsError, match=r"model 'nope' is not in the scan .*available models: model-a, model/b"):
        report(out, tmp_path / "r", a="nope", opts=OPTS)
    with pytest.raises(ValueError, match="--a and --b are the same model 'model-a'"):
        choose_models(out, A, A)
    assert choose_models(out, b=A) == (B, A)
    with pytest.raises(ValueError, match=r"window must be >= 1 sampled frame\(s\), got 0"):
        report(out, tmp_path / "r", window=0)
    with pytest.raises(ValueError, match="scan output directory .*missing does not exist"):
        report(tmp_path / "missing")


# ---------------------------------------------------------------------------- CLI

runner = CliRunner()


def test_cli_report_of_a_one_model_scan_has_no_comparison_section(tmp_path):
    out = _scan(tmp_path / "scan1", {A: TWO[A]}, titles={"f1": "Only <One>", "f2": "Two"}, failed=False)
    r = runner.invoke(app, ["report", str(out), "-o", str(tmp_path / "rep1"), "--window", "4",
                            "--measure", "prob"])
    assert r.exit_code == 0, r.output
    page_path = tmp_path / "rep1" / "report.html"
    assert f"report: {page_path}" in r.output
    pngs = {p.name for p in (tmp_path / "rep1").glob("*.png")}
    assert pngs == {"shares.png", "dominant.png", "face_sizes.png", "timeline-f1.png", "timeline-f2.png"}
    assert all(_png_ok(tmp_path / "rep1" / p) for p in pngs)
    page = page_path.read_text()
    assert "No comparison" in page and "Only &lt;One&gt;" in page and "Only <One>" not in page
    assert "p_t (adj.)" not in page and "differences.png" not in page
    assert "window of 4 sampled frames" in page and "mean probability of the emotion" in page


@pytest.mark.parametrize("args, message", [
    (["--measure", "bogus"], "measure must be one of label, prob; got 'bogus'"),
    (["--a", "nope"], "model 'nope' is not in the scan"),
    (["--window", "0"], "--window must be >= 1 sampled frame(s), got 0"),
    (["--min-confidence", "2"], "--min-confidence must be in [0, 1], got 2.0"),
])
def test_cli_report_bad_arguments_exit_2(two, tmp_path, args, message):
    r = runner.invoke(app, ["report", str(two[0]), "-o", str(tmp_path / "x"), *args])
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.output.split())


def test_characters_timeline_for_films_scanned_with_characters(tmp_path):
    """A film with character_id gets a characters plot (a row per character); a film without
    (null in the union schema) does not."""
    import pyarrow as pa

    from exe_stream.report import load_scan, report
    from exe_stream.shards import (declare_schema, faces_path, faces_schema, faces_table, frames_path,
                                   frames_table, shard_metadata, write_table, FRAMES_SCHEMA)

    labels = ("happy", "sad")
    declare_schema(tmp_path, "frames", FRAMES_SCHEMA)
    declare_schema(tmp_path, "faces", faces_schema(labels))
    declare_schema(tmp_path, "faces", pa.schema([("character_id", pa.int32())]))
    for film, chars in (("cast", [0, 1, 0, 2, 1, 0]), ("plain", None)):
        fi = np.arange(6)
        write_table(frames_path(tmp_path, film), frames_table(film, fi, fi / 2.0, fi == 0, np.ones(6), shard_metadata()))
        z = np.zeros(6, np.float32)
        cols = dict(frame_index=fi, pts_seconds=fi / 2.0, face_index=np.zeros(6, np.int16), x0=z, y0=z, x1=z + 0.3,
                    y1=z + 0.3, det_score=z + 0.9, face_area_rel=z + 0.09)
        probs = np.array([[0.8, 0.2], [0.3, 0.7]] * 3, np.float32)
        t = faces_table(film, "m", labels, cols, probs, shard_metadata(model_id="m", labels=list(labels)))
        if chars is not None:
            t = t.append_column("character_id", pa.array(np.array(chars, np.int32)))
        write_table(faces_path(tmp_path, film, "m"), t)
    view = load_scan(tmp_path, ["m"])
    assert view.faces["m"]["cast"].character.tolist() == [0, 1, 0, 2, 1, 0]
    assert view.faces["m"]["plain"].character is None
    res = report(tmp_path, out_dir=tmp_path / "report")
    assert "characters-cast" in res.plots and res.plots["characters-cast"].exists()
    assert "characters-plain" not in res.plots and "timeline-plain" in res.plots
    assert "characters of cast" in res.html.read_text()
