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
    assert r.exit_code == 0 and r.stdout == "" and r.stderr == ""


def test_quiet_still_names_each_failed_and_partial_film_on_stderr(tmp_path, clips, films):
    """Quiet means no progress bars and no summary, not silent failures."""
    d = tmp_path / "lib"
    d.mkdir()
    shutil.copy(clips / "carphone_pristine.mp4", d / "good.mp4")
    shutil.copy(films.text_as_mp4, d / "notes.mp4")
    shutil.copy(films.truncated, d / "cut.mp4")
    r = runner.invoke(app, ["scan", str(d), "-o", str(tmp_path / "out"), "--every", "10", "-q", "--device", "cpu"])
    assert r.exit_code == 1 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 2, lines
    failed = next(ln for ln in lines if ln.startswith("failed: "))
    partial = next(ln for ln in lines if ln.startswith("partial: "))
    assert str(d / "notes.mp4") in failed and str(d / "cut.mp4") in partial and "truncated" in partial


def test_version_flag_and_command():
    from exe_stream import __version__

    for args in (["--version"], ["version"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0 and r.stdout.strip() == __version__


def test_help_texts_keep_their_brackets():
    r = runner.invoke(app, ["train", "--help"])
    text = " ".join(r.stdout.split())
    assert "its [train] table and data_dir" in text and "([train] base + [[grid.variants]])" in text
    r = runner.invoke(app, ["data", "pull", "--help"])
    assert "a [pull] table" in " ".join(r.stdout.split())


# File names a user may well have: brackets that look like Rich markup, a closing tag (a path
# through a directory "[" into "x] ..."), spaces, non-ASCII letters.
ODD_NAMES = ["[draft] take 2.mp4", "[/x] caf\u00e9 \u00fcber.mp4", "[bold red]loud[.mp4"]


def test_scan_stats_and_report_print_odd_file_names_as_they_are(tmp_path, clips, films):
    lib = tmp_path / "[films] \u00e9t\u00e9"
    lib.mkdir()
    for name in ODD_NAMES[:2]:
        (lib / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(clips / "carphone_pristine.mp4", lib / name)
    shutil.copy(films.text_as_mp4, lib / ODD_NAMES[2])  # fails: its reason names the file
    out = tmp_path / "out [/x]"
    r = runner.invoke(app, ["scan", str(lib), "-o", str(out), "--every", "60", "-m", "fer2013-minixception",
                            "-m", "facex", "--device", "cpu"])
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and "MarkupError" not in r.output
    assert f"failed: {lib / ODD_NAMES[2]}" in r.stderr  # brackets and all
    assert str(out) in r.stdout
    r = runner.invoke(app, ["stats", str(out), "--bootstrap", "10"])
    assert r.exit_code == 0, r.output
    assert "facex (A) vs fer2013-minixception (B): label per faces, 2 paired films" in r.stdout
    r = runner.invoke(app, ["report", str(out)])
    assert r.exit_code == 0, r.output
    assert f"report: {out / 'report' / 'report.html'}" in r.stdout
    # An error message that carries a path with a closing tag: printed, not parsed.
    r = runner.invoke(app, ["stats", str(tmp_path / "[/x] missing")])
    assert r.exit_code == 2 and f"error: scan output directory {tmp_path / '[/x] missing'} does not exist" in r.stderr
    r = runner.invoke(app, ["scan", str(tmp_path / "[/y] gone.mp4"), "-o", str(out)])
    assert r.exit_code == 2 and f"no such file or directory: {tmp_path / '[/y] gone.mp4'}" in r.stderr


def test_messages_do_not_depend_on_terminal_width_or_path_length(tmp_path, monkeypatch):
    """A message is one line whatever the terminal's width: a list in it is never broken."""
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "missing.mp4"
    monkeypatch.setenv("COLUMNS", "40")
    r = runner.invoke(app, ["scan", str(deep), str(deep.with_name("other.mp4")), "-o", str(tmp_path / "o")])
    assert r.exit_code == 2
    assert r.stderr.strip() == f"error: no such file or directory: {deep}, {deep.with_name('other.mp4')}"


def test_full_disk_is_one_line_exit_3_no_temporary_files_and_a_rerun_resumes(tmp_path, clips, monkeypatch):
    """The output's file system fills up mid-scan (a write helper that raises ENOSPC after the
    first film's files): one line naming the disk and what was written, exit 3, nothing
    half-written, and the same command later finishes the rest without redoing the first."""
    import errno

    from exe_stream import atomic

    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("a.mp4", "b.mp4"):
        shutil.copy(clips / "carphone_pristine.mp4", lib / name)
    out = tmp_path / "out"
    real = atomic.os.replace
    budget = {"renames": 0}

    def replace(src, dst):
        budget["renames"] += 1
        if "b.parquet" in str(dst):
            raise OSError(errno.ENOSPC, "No space left on device", str(src))
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    args = ["scan", str(lib), "-o", str(out), "--every", "60", "--device", "cpu"]
    r = runner.invoke(app, args)
    assert r.exit_code == 3, r.output
    assert "Traceback" not in r.output and r.stdout == ""
    (line,) = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert line.startswith(f"error: the disk holding {out / 'frames' / 'b.parquet'} is full; 1 of 2 films finished")
    assert "run the same command again to resume" in line
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert json.loads((out / "manifest.json").read_text())["films"]["a"]["status"] == "done"
    monkeypatch.setattr(atomic.os, "replace", real)
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    status = {f: e["status"] for f, e in json.loads((out / "manifest.json").read_text())["films"].items()}
    assert status == {"a": "done", "b": "done"}
    assert "skipped" in r.stdout  # film a was not scanned again


def test_full_disk_on_a_real_small_file_system(tmp_path, clips):
    """The same on a 48 KiB tmpfs (needs root to mount; the injected test above runs anywhere)."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        lib = tmp_path / "lib"
        lib.mkdir()
        for i in range(12):
            shutil.copy(clips / "carphone_pristine.mp4", lib / f"film{i:02d}.mp4")
        r = runner.invoke(app, ["scan", str(lib), "-o", str(mnt / "out"), "--every", "30", "-q", "--device", "cpu"])
        assert r.exit_code == 3, r.output
        (line,) = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert line.startswith(f"error: the disk holding {mnt / 'out'}") and " is full; " in line
        assert not [p for p in mnt.rglob("*") if ".tmp-" in p.name]
        manifest = json.loads((mnt / "out" / "manifest.json").read_text())
        assert 0 < len(manifest["films"]) < 12
        assert all(e["status"] == "done" for e in manifest["films"].values())
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--every", "0"], "--every must be >= 1, got 0"),
        (["--every", "5", "--interval", "1"], "use either --every or --interval, not both"),
        (["--sampling", "fast"], "--sampling must be one of exact, keyframe; got 'fast'"),
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["--max-faces", "-1"], "--max-faces must be >= 0, got -1"),
        (["--min-face-score", "1.5"], "--min-face-score must be in [0, 1], got 1.5"),
        (["--films-at-once", "-2"], "--films-at-once must be >= 0, got -2"),
        (["--model", "no-such-model"], "no-such-model"),
        (["--device", "gpu"], "--device must be one of auto, cpu, cuda; got 'gpu'"),
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
    (line,) = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert line.startswith("error: ") and message in line and r.stdout == ""


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
