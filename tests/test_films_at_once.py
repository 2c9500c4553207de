"""Several films decoded at once (ScanOptions.films_at_once / --films-at-once) on the CPU:
the same shards as a sequential scan, failures isolated, resume kept, progress per film."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import media
from exe_stream import pipeline
from exe_stream.cli import app
from exe_stream.pipeline import ScanOptions, _FilmsAtOnce, _InferenceGate, scan
from exe_stream.sampling import SamplingOptions
from exe_stream.shards import faces_path, frames_path, read_table

FER = "fer2013-minixception"
CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")


@pytest.fixture(scope="module")
def library(clips, tmp_path_factory) -> Path:
    """The three bundled clips and a broken file (text named .mp4) in one directory."""
    d = tmp_path_factory.mktemp("library")
    for name in CLIPS:
        shutil.copy(clips / name, d / name)
    media.make_text_as_mp4(d)
    return d


def _opts(n: int, **kw) -> ScanOptions:
    return ScanOptions(sampling=SamplingOptions(every=10), device="cpu", films_at_once=n, **kw)


class Events:
    """Records the scan callbacks and the threads they ran in."""

    def __init__(self) -> None:
        self.items: list[tuple] = []
        self.lock = threading.Lock()

    def add(self, *item) -> None:
        with self.lock:
            self.items.append((*item, threading.current_thread() is threading.main_thread()))

    def callbacks(self) -> dict:
        return dict(
            on_film_start=lambda film_id, path, i: self.add("start", film_id),
            on_film_end=lambda res: self.add("end", res.film_id, res.status),
            on_film_frames=lambda film_id, done, total: self.add("frames", film_id, done, total),
        )


@pytest.fixture(scope="module")
def sequential(library, tmp_path_factory):
    out = tmp_path_factory.mktemp("seq")
    return out, scan([library], out, _opts(1))


@pytest.fixture(scope="module")
def at_once(library, tmp_path_factory):
    out = tmp_path_factory.mktemp("at_once")
    events = Events()
    return out, scan([library], out, _opts(2), **events.callbacks()), events


def test_same_shards_as_a_sequential_scan(sequential, at_once):
    (seq_out, seq), (out, res, _) = sequential, at_once
    assert [(f.film_id, f.status, f.frames, f.faces) for f in res.films] == \
        [(f.film_id, f.status, f.frames, f.faces) for f in seq.films]
    done = [f.film_id for f in res.films if f.status == "done"]
    assert sorted(done) == ["bigbuckbunny", "bikes", "carphone_pristine"]
    for film_id in done:
        a, b = read_table(frames_path(out, film_id)), read_table(frames_path(seq_out, film_id))
        assert a.equals(b)
        fa, fb = read_table(faces_path(out, film_id, FER)), read_table(faces_path(seq_out, film_id, FER))
        assert fa.num_rows == fb.num_rows
        for col in fa.column_names:
            x, y = fa.column(col).to_pylist(), fb.column(col).to_pylist()
            if isinstance(x[0] if x else None, float):
                assert x == pytest.approx(y, abs=1e-5), col
            else:
                assert x == y, col
    assert sum(f.faces for f in res.films) > 0


def test_failure_is_isolated_and_results_keep_input_order(at_once):
    out, res, _ = at_once
    assert [f.film_id for f in res.films] == ["bigbuckbunny", "bikes", "carphone_pristine", "notes"]
    assert not res.ok
    bad = res.films[-1]
    assert bad.status == "failed" and "notes.mp4: not a media file" in bad.reason
    assert not frames_path(out, "notes").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert {k: v["status"] for k, v in manifest["films"].items()} == {
        "bigbuckbunny": "done", "bikes": "done", "carphone_pristine": "done", "notes": "failed"}
    assert all(v["fingerprint"] for v in manifest["films"].values())


def test_progress_callbacks_per_film(at_once):
    _, res, events = at_once
    items = events.items
    starts = [e[1] for e in items if e[0] == "start"]
    ends = [e[1] for e in items if e[0] == "end"]
    assert sorted(starts) == sorted(ends) == ["bigbuckbunny", "bikes", "carphone_pristine", "notes"]
    # Starts and ends in the scanning thread (manifest and progress display live there).
    assert all(e[-1] for e in items if e[0] in ("start", "end"))
    for f in res.films:
        frames = [e for e in items if e[0] == "frames" and e[1] == f.film_id]
        if f.status == "done":
            assert frames[-1][2] == f.frames and all(e[2] <= e[3] for e in frames)
        else:
            assert frames == []
    # Each film's start comes before its frames and its end.
    for film_id in starts:
        pos = [i for i, e in enumerate(items) if e[1] == film_id]
        assert items[pos[0]][0] == "start" and items[pos[-1]][0] == "end"


def test_two_films_really_run_at_once(library, tmp_path):
    events = Events()
    scan([library / "bikes.mp4", library / "carphone_pristine.mp4"], tmp_path, _opts(2), **events.callbacks())
    kinds = [e[0] for e in events.items]
    # Both films start before either ends.
    assert kinds[:2] == ["start", "start"]


def test_resume_with_films_at_once(at_once, library):
    out, _, _ = at_once
    again = scan([library], out, _opts(2))
    assert [f.status for f in again.films] == ["skipped", "skipped", "skipped", "failed"]


def test_films_at_once_option_errors():
    with pytest.raises(ValueError, match=r"films_at_once must be >= 0, got -1"):
        ScanOptions(films_at_once=-1)


def test_automatic_films_at_once(monkeypatch, tmp_path):
    films = [tmp_path / "a.mp4"]
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert pipeline._films_at_once(ScanOptions(), "pyav", cpu, films) == 1
    assert pipeline._films_at_once(ScanOptions(films_at_once=3), "pyav", cpu, films) == 3
    assert pipeline._films_at_once(ScanOptions(), "pyav", cuda, films) == 1
    import exe_stream.decode.nvdec as nvdec

    asked = []
    monkeypatch.setattr(nvdec, "nvdec_engines", lambda sample, device_id: asked.append(sample) or 7)
    assert pipeline._films_at_once(ScanOptions(), "nvdec", cuda, films) == 7 and asked == films


def test_gate_lets_one_film_through_at_a_time():
    gate = _InferenceGate()
    inside, overlaps, order = [0], [0], []

    def film(name: str, fail_at: int | None = None) -> None:
        try:
            for k in gate.wrap(iter(range(4))):
                inside[0] += 1
                overlaps[0] = max(overlaps[0], inside[0])
                time.sleep(0.005)
                order.append(name)
                inside[0] -= 1
                if k == fail_at:
                    raise RuntimeError("boom")
        except RuntimeError:
            pass
        finally:
            gate.release_owned()

    threads = [threading.Thread(target=film, args=("a", 1)), threading.Thread(target=film, args=("b",))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert overlaps[0] == 1  # never two bodies at once
    assert order.count("b") == 4 and order.count("a") == 2  # a failing film frees the gate


def test_runner_reraises_unexpected_errors():
    runner = _FilmsAtOnce(2)

    def boom(gate):
        raise OSError("disk full")

    runner.start(boom, lambda out: None)
    with pytest.raises(OSError, match="disk full"):
        runner.finish()


def test_cli_films_at_once(library, tmp_path):
    cli = CliRunner()
    r = cli.invoke(app, ["scan", str(library / "carphone_pristine.mp4"), str(library / "notes.mp4"),
                         "-o", str(tmp_path / "out"), "--every", "20", "--device", "cpu",
                         "--films-at-once", "2", "-q"])
    assert r.exit_code == 1, r.output
    assert frames_path(tmp_path / "out", "carphone_pristine").exists()
    r = cli.invoke(app, ["scan", str(library), "-o", str(tmp_path / "x"), "--films-at-once", "-1"])
    assert r.exit_code == 2 and "error: --films-at-once must be >= 0, got -1" in r.output
