"""exe-stream live (cli/live.py): help, the headless --source mode, serving, bad arguments."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request

import pytest
from typer.testing import CliRunner

from exe_stream.cli import app
from exe_stream.live.analyse import ETHICS

runner = CliRunner()


def test_help_carries_the_ethics_line():
    r = runner.invoke(app, ["live", "--help"])
    assert r.exit_code == 0
    flat = " ".join(r.output.split())
    assert ETHICS in flat


def test_source_file_writes_a_session_stats_reads(tmp_path, clips):
    out = tmp_path / "sessions"
    r = runner.invoke(app, ["live", "--source", str(clips / "carphone_pristine.mp4"), "--every-frame",
                            "--max-seconds", "0.5", "-m", "fer2013-minixception", "-m", "facex",
                            "--device", "cpu", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "15 frames analysed, 0 skipped" in r.output  # pts 0 .. 0.467 s at 29.97 fps
    session = re.search(r"saved session (live-\S+) to", r.output).group(1)
    r = runner.invoke(app, ["stats", str(out), "--a", "fer2013-minixception", "--b", "facex"])
    assert r.exit_code == 0, r.output
    assert "dominant emotion per film" in r.output
    assert (out / "manifest.json").read_text().count(session) >= 1


@pytest.mark.parametrize("args,message", [
    (["--smooth", "-1"], "--smooth must be in [0, 3600] seconds, got -1.0"),
    (["--every-frame"], "--every-frame and --max-seconds apply to --source only"),
    (["--source", "/nonexistent/clip.mp4"], "/nonexistent/clip.mp4: no such video file"),
    (["--source", "x.mp4", "--max-seconds", "-3"], "--max-seconds must be >= 0 seconds, got -3.0"),
    (["--port", "99999"], "--port must be in [0, 65535], got 99999"),
    (["--model", "no-such-model"], "no-such-model"),
])
def test_bad_arguments_exit_2_with_a_message(args, message):
    r = runner.invoke(app, ["live", "--device", "cpu", *args])
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.output.split())
    assert "Traceback" not in r.output


def test_serves_until_interrupted(tmp_path):
    """The real command in its own process: prints the URL, serves the page, stops on Ctrl-C."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-c", "from exe_stream.cli import app; app()", "live", "--no-browser",
                          "--device", "cpu", "-o", str(tmp_path)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = p.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url, line
        with urllib.request.urlopen(url.group(0), timeout=10) as r:
            assert "Not for reading other people" in r.read().decode()
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=20) == 0
    finally:
        if p.poll() is None:
            p.kill()
