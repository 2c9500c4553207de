"""The exe-stream CLI: exit codes, messages, summary, demo."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from exe_stream.cli import app, load_metadata

runner = CliRunner()


def test_scan_exit_0_summary_and_metadata(tmp_path, clips):
    meta = tmp_path / "meta.csv"
    meta.write_text("film_id,title,genre\ncarphone_pristine,Car Phone,documentary\n")
    out = tmp_path / "out"
    r = runner.invoke(app, ["scan", str(clips / "carphone_pristine.mp4"), "-o", str(out), "--every", "20",
                            "--device", "cpu", "--metadata", str(meta)])
    assert r.exit_code == 0, r.output
    assert "carphone_pristine" in r.output and "done" in r.output
    assert "frames sampled: 6" in r.output and "emotion shares [fer2013-minixception]" in r.output
    entry = json.loads((out / "manifest.json").read_text())["films"]["carphone_pristine"]
    assert entry["metadata"]["genre"] == "documentary"


def test_scan_exit_1_when_a_film_fails_and_others_are_written(tmp_path, clips, films):
    d = tmp_path / "lib"
    d.mkdir()
    shutil.copy(clips / "carphone_pristine.mp4", d / "good.mp4")
    shutil.copy(films.text_as_mp4, d / "notes.mp4")
    out = tmp_path / "out"
    r = runner.invoke(app, ["scan", str(d), "-o", str(out), "--every", "60", "--device", "cpu"])
    assert r.exit_code == 1, r.output
    assert "failed" in r.output and "notes.mp4" in r.output
    assert (out / "frames" / "good.parquet").exists()


def test_quiet_prints_nothing(tmp_path, clips):
    r = runner.invoke(app, ["scan", str(clips / "carphone_pristine.mp4"), "-o", str(tmp_path), "--every", "60",
                            "-q", "--device", "cpu"])
    assert r.exit_code == 0 and r.stdout == ""


@pytest.mark.parametrize(
    "args, message",
    [
        (["--every", "0"], "every must be >= 1 frame, got 0"),
        (["--every", "5", "--interval", "1"], "use either --every or --interval, not both"),
        (["--sampling", "fast"], "sampling mode must be 'exact' or 'keyframe', got 'fast'"),
        (["--model", "no-such-model"], "no-such-model"),
        (["--device", "gpu"], "device must be one of auto, cpu, cuda; got 'gpu'"),
        (["--decoder", "vlc"], "unknown decoder 'vlc'"),
        (["--detector", "haar"], "haar"),
        # Without TensorRT: "engine 'tensorrt': TensorRT is not installed ..."; with it, on the
        # CPU: "engine 'tensorrt' runs on CUDA only ..." (tests/test_engines.py checks both).
        (["--engine", "tensorrt", "--device", "cpu"], "engine 'tensorrt'"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(tmp_path, clips, args, message):
    r = runner.invoke(app, ["scan", str(clips / "carphone_pristine.mp4"), "-o", str(tmp_path), *args])
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.output.split())


def test_missing_path_and_empty_directory_exit_2(tmp_path):
    r = runner.invoke(app, ["scan", str(tmp_path / "nope.mp4"), "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "no such file or directory" in r.output and "nope.mp4" in r.output
    (tmp_path / "empty").mkdir()
    r = runner.invoke(app, ["scan", str(tmp_path / "empty"), "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "no video files found" in r.output


def test_models_list_shows_builtin_emotion_models_only():
    r = runner.invoke(app, ["models", "list"])
    assert r.exit_code == 0
    assert "fer2013-minixcept" in r.output and "blazeface" not in r.output


def test_metadata_errors_name_the_file(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("title\nX\n")
    with pytest.raises(ValueError, match="m.csv: every record needs a 'film_id' or 'file' field"):
        load_metadata(bad)
    with pytest.raises(ValueError, match="does not exist"):
        load_metadata(tmp_path / "missing.json")
    j = tmp_path / "m.json"
    j.write_text(json.dumps({"a": {"genre": "drama"}}))
    assert load_metadata(j) == {"a": {"genre": "drama", "film_id": "a"}}


@pytest.mark.slow
def test_demo_scans_the_bundled_clips(tmp_path):
    out = tmp_path / "demo"
    r = runner.invoke(app, ["demo", "-o", str(out)])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert {v["status"] for v in manifest["films"].values()} == {"done"}
    assert set(manifest["films"]) == {"bigbuckbunny", "bikes", "carphone_pristine"}
    assert manifest["films"]["carphone_pristine"]["faces"] >= 11
    assert manifest["films"]["bigbuckbunny"]["metadata"]["genre"] == "animation"
    assert str(out / "manifest.json") in r.output
    # Both built-in models classified the same faces.
    for model in ("fer2013-minixception", "facex"):
        assert (out / "faces" / model / "carphone_pristine.parquet").exists()
    # The comparison: the terminal table and stats.json (records of the two films with faces).
    assert "fer2013-minixception (A) vs facex (B)" in r.output
    records = json.loads((out / "stats.json").read_text())
    assert {rec["emotion"] for rec in records} == {"angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"}
    assert all(rec["n_films"] == 2 for rec in records)
    # The report embeds its plots and names the clips by their titles.
    html = (out / "report" / "report.html").read_text()
    assert str(out / "report" / "report.html") in r.output
    assert "Carphone (talking head)" in html and html.count("data:image/png;base64,") >= 4
