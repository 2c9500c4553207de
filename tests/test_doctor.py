"""exe-stream doctor (exe_stream/doctor.py): its CPU part, on this machine.

The CUDA checks (nvdec, cuda-graphs, tensorrt, the kernel launch) report "skipped: no CUDA
device" here; what runs is checked for real: PyAV, DALI's CPU pipeline on a VP9 copy of the
clip, the kernel library's per-pixel code against the torch reference (when the library is
built), onnxruntime against torch, the auto choices, the bench rows, the JSON.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

from exe_stream import kernels
from exe_stream.doctor import DoctorOptions, doctor

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU report (no GPU)")


@pytest.fixture(scope="module")
def report(engine_cache):
    mp = pytest.MonkeyPatch()
    mp.setenv("EXE_STREAM_ENGINE_CACHE", str(engine_cache))
    seen = []
    try:
        r = doctor(DoctorOptions(bench=True, bench_every=40, bench_batch_sizes=(2,), bench_repeats=1),
                   on_check=seen.append)
    finally:
        mp.undo()
    assert seen == r.checks
    return r


def test_system_says_there_is_no_gpu(report):
    s = report.system
    assert s["python"] == sys.version.split()[0] and s["torch"] == torch.__version__
    assert s["cuda_available"] is False and s["gpu"] is None
    assert s["packages"]["av"] and s["packages"]["torch"]


def test_each_backend_is_checked_or_says_why_not(report):
    assert [c.name for c in report.checks] == ["pyav", "dali", "nvdec", "kernels", "torch", "onnxruntime",
                                               "cuda-graphs", "tensorrt"]
    assert report.check("pyav").status == report.check("torch").status == "reference"
    dali = report.check("dali")  # the test extras install DALI: its CPU pipeline runs
    assert dali.status == "pass" and dali.importable and 0 <= dali.figure <= dali.tolerance == 1.0
    assert "VP9 copy" in dali.detail
    ort = report.check("onnxruntime")
    assert ort.status == "pass" and ort.figure <= ort.tolerance == 1e-3
    assert report.check("cuda-graphs").detail == "no CUDA device"
    for name in ("nvdec", "tensorrt"):
        c = report.check(name)
        assert c.status == "skipped" and (c.detail.startswith("not installed") or c.detail == "no CUDA device")


def test_kernel_check_runs_the_kernels_own_code_or_says_where_it_looked(report):
    k = report.check("kernels")
    try:
        kernels.load_library()
    except kernels.KernelError:
        assert k.status == "skipped" and "libexe_stream_kernels.so not found (looked in:" in k.detail
        return
    assert k.status == "pass" and k.figure <= k.tolerance and "per-pixel code on the host" in k.detail


def test_auto_picks_the_cpu_path(report):
    assert report.auto == {"device": "cpu", "decoder": "pyav", "engine": "torch"}


def test_bench_rows_and_json(report, tmp_path):
    stages = [r["stage"] for r in report.bench]
    assert stages[:3] == ["decode", "decode", "copy"] and "classifier" in stages and "scan" in stages
    engines = {r["what"].split(", ")[1] for r in report.bench if r["stage"] == "classifier"}
    assert engines == {"torch", "onnxruntime"}  # every engine whose check passed
    data = json.loads(report.to_json(tmp_path / "d.json"))
    assert data == json.loads((tmp_path / "d.json").read_text())
    assert data["checks"][1]["name"] == "dali" and data["auto"]["decoder"] == "pyav"


def test_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match=r"clip must be a film, and '.*missing.mp4' does not exist"):
        DoctorOptions(clip=tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match=r"bench_every must be >= 1, got 0"):
        DoctorOptions(bench_every=0)


def test_cli_prints_the_report_writes_json_and_fails_on_a_failed_check(report, tmp_path, monkeypatch):
    import dataclasses

    from typer.testing import CliRunner

    import exe_stream.doctor as doctor_module
    from exe_stream.cli import app

    monkeypatch.setattr(doctor_module, "doctor", lambda opts, on_check=None: report)
    assert report.bench  # the fixture's rows; the CLI benches apart from the checks
    monkeypatch.setattr(doctor_module, "add_bench", lambda rep, opts: rep)
    r = CliRunner().invoke(app, ["doctor", "--json", str(tmp_path / "d.json")])
    assert r.exit_code == 0, r.output
    assert "GPU: none (torch sees no CUDA device)" in r.output and "auto picks: device cpu, decoder pyav" in r.output
    assert "onnxruntime" in r.output and "reference" in r.output
    assert json.loads((tmp_path / "d.json").read_text())["auto"] == report.auto
    broken = dataclasses.replace(report, checks=[dataclasses.replace(report.checks[0], status="fail",
                                                                     detail="RuntimeError: [boom]")])
    monkeypatch.setattr(doctor_module, "doctor", lambda opts, on_check=None: broken)
    r = CliRunner().invoke(app, ["doctor"])
    assert r.exit_code == 1 and "RuntimeError: [boom]" in r.output
    r = CliRunner().invoke(app, ["doctor", "--bench-every", "0"])
    assert r.exit_code == 2 and "--bench-every must be >= 1, got 0" in r.output
    r = CliRunner().invoke(app, ["doctor", "--bench-film", str(tmp_path / "nope.mp4")])
    assert r.exit_code == 2 and "--bench-film must be a film, and" in r.output


def test_a_bench_that_stops_is_reported_not_raised(report, monkeypatch):
    import exe_stream.bench as bench_module
    import exe_stream.doctor as doctor_module

    monkeypatch.setattr(doctor_module, "system_info", lambda clip: report.system)
    monkeypatch.setattr(doctor_module, "check_decoders", lambda clip, device: report.checks[:3])
    monkeypatch.setattr(doctor_module, "check_kernels", lambda clip, device: report.checks[3])
    monkeypatch.setattr(doctor_module, "check_engines", lambda clip, device, model: report.checks[4:])
    used = []

    def broken(film, opts, on_row=None):
        used.append(opts)
        raise RuntimeError("cuvidMapVideoFrame failed\nmore")

    monkeypatch.setattr(bench_module, "bench", broken)
    r = doctor(DoctorOptions(bench=True))
    assert r.bench == [] and r.bench_error == "RuntimeError: cuvidMapVideoFrame failed"
    assert used[0].decoder == "pyav" and used[0].engines == ("torch", "onnxruntime")
    assert json.loads(r.to_json())["bench_error"] == r.bench_error
