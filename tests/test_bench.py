"""exe-stream bench: every stage measured, rates consistent with their counts, CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from exe_stream.bench import BenchOptions, bench
from exe_stream.cli import app

runner = CliRunner()


def test_bench_measures_every_stage_on_a_real_clip(clips, tmp_path, monkeypatch):
    import exe_stream.engines as engines

    opts = BenchOptions(every=10, device="cpu", batch_sizes=(1, 4), films_at_once=2, repeats=1)
    seen, attached = [], []
    real_attach = engines.attach_engine
    # The classifier rows time the engine a scan runs (torch included), not the plain module.
    monkeypatch.setattr(engines, "attach_engine", lambda m, name, *a, **k: attached.append(name) or real_attach(m, name, *a, **k))
    r = bench(clips / "carphone_pristine.mp4", opts, on_row=seen.append)
    assert attached[0] == "torch"
    assert seen == r.rows
    stages = [row["stage"] for row in r.rows]
    assert stages == ["decode", "decode", "copy", "roi_resample", "detector", "classifier", "classifier",
                      "scan", "reference"]
    # carphone: 120 frames, every 10th -> 12 sampled frames, twice when two films decode at once.
    assert r.row("decode", "pyav, 1 film")["items"] == 12
    assert r.row("decode", "pyav, 2 films at once")["items"] == 24
    for row in r.rows:
        assert row["seconds"] > 0 and row["rate"] == pytest.approx(row["items"] / row["seconds"])
    roi, copy = r.row("roi_resample"), r.row("copy")
    assert roi["of_copy"] == pytest.approx(roi["rate"] / copy["rate"]) and 0 < roi["of_copy"]
    assert [row["items"] for row in r.rows if row["stage"] == "classifier"] == [1, 4]
    assert r.row("detector")["items"] == 12
    # Realtime factors: the clip's duration over the wall time.
    assert r.row("scan")["items"] == pytest.approx(4.0, abs=0.1)
    assert "12 faces" in r.row("reference")["what"]  # a face in every sampled carphone frame
    data = json.loads(r.to_json(tmp_path / "b.json"))
    assert data["rows"] == json.loads((tmp_path / "b.json").read_text())["rows"] and len(data["rows"]) == 9


def test_bench_options_and_inputs_are_checked(tmp_path):
    with pytest.raises(ValueError, match="repeats must be >= 1, got 0"):
        BenchOptions(repeats=0)
    with pytest.raises(ValueError, match=r"batch_sizes must be >= 1, got \[0\]"):
        BenchOptions(batch_sizes=(0,))
    with pytest.raises(ValueError, match="does not exist"):
        bench(tmp_path / "missing.mp4", BenchOptions(device="cpu"))


def test_cli_bench(clips, tmp_path):
    out = tmp_path / "bench.json"
    r = runner.invoke(app, ["bench", str(clips / "carphone_pristine.mp4"), "--every", "40", "--device", "cpu",
                            "--batch-size", "2", "--films-at-once", "0", "--repeats", "1", "--no-reference",
                            "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "crops/s" in r.output and "x realtime" in r.output
    rows = json.loads(out.read_text())["rows"]
    assert [row["stage"] for row in rows] == ["decode", "copy", "roi_resample", "detector", "classifier", "scan"]
    r = runner.invoke(app, ["bench", str(clips / "carphone_pristine.mp4"), "--repeats", "0"])
    assert r.exit_code == 2 and "repeats must be >= 1" in r.output
