"""Fail safe (exe_stream/failsafe.py): every accelerated component is checked on its first
batch and switched off, with one warning, on an exception or a wrong result; the scan goes on
with the verified path, records which path each film ran, and writes the shards a CPU scan
writes.

The accelerated components cannot run here (no GPU), so each is stood in for on the CPU by a
faulty one injected where the scan picks it up: the decoder registry (NVDEC, DALI), the CUDA
kernel's dispatch (``roi._cuda_kernel``), and the engine registry (CUDA graphs,
onnxruntime-CUDA, TensorRT).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch

import exe_stream.engines as engines
from exe_stream import decode, failsafe, pipeline, roi
from exe_stream.decode.pyav import PyAVDecoder
from exe_stream.engines.torch_engine import TorchEngine
from exe_stream.errors import UnsupportedByBackend
from exe_stream.pipeline import ScanOptions, scan
from exe_stream.sampling import SamplingOptions
from exe_stream.shards import faces_path, frames_path, read_table
from exe_stream.types import FrameBatch

FER = "fer2013-minixception"
# Batches of 3 of every 20th frame: the carphone clip (120 frames) has 2 batches per film.
OPTS = dict(sampling=SamplingOptions(every=20), device="cpu", batch_size=3, models=(FER,))


# The FailSafe itself ---------------------------------------------------------------------


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "exe_stream.failsafe" and r.levelno == logging.WARNING]


def test_a_matching_first_batch_verifies_and_later_batches_run_fast_only():
    fs, calls = failsafe.FailSafe(), []
    fast = lambda: calls.append("fast") or torch.ones(2)  # noqa: E731
    slow = lambda: calls.append("verified") or torch.ones(2)  # noqa: E731
    assert torch.equal(fs.run("kernels", fast, slow, failsafe.max_abs_diff, 0.0), torch.ones(2))
    assert fs.state("kernels").status == "verified" and fs.state("kernels").figure == 0.0
    fs.run("kernels", fast, slow, failsafe.max_abs_diff, 0.0)
    assert calls == ["fast", "verified", "fast"]


@pytest.mark.parametrize("fault", ["exception", "wrong", "nan", "shape"])
def test_a_failing_first_batch_switches_off_once_with_the_reason(fault, caplog):
    fs = failsafe.FailSafe()
    bad = {"exception": lambda: (_ for _ in ()).throw(RuntimeError("CUDA error: an illegal memory access")),
           "wrong": lambda: torch.full((2,), 3.0), "nan": lambda: torch.full((2,), float("nan")),
           "shape": lambda: torch.ones(3)}[fault]
    for _ in range(3):
        assert torch.equal(fs.run("tensorrt", bad, lambda: torch.ones(2), failsafe.max_abs_diff, 0.01), torch.ones(2))
    st = fs.state("tensorrt")
    assert st.status == "off"
    reason = {"exception": r"RuntimeError on its first batch: CUDA error: an illegal memory access",
              "wrong": r"its first batch differs from the plain torch model by 2 \(tolerance 0.01\)",
              "nan": r"differs from the plain torch model by nan",
              "shape": r"cannot be compared with the plain torch model: shape \(3,\) instead of \(2,\)"}[fault]
    assert re.search(reason, st.reason), st.reason
    (msg,) = _warnings(caplog)
    assert msg.startswith("tensorrt (the TensorRT engine) switched off for the rest of the scan: ")
    assert msg.endswith("; using the plain torch model instead")


def test_a_verified_component_failing_later_is_switched_off_and_the_batch_redone(caplog):
    fs, n = failsafe.FailSafe(), []

    def fast():
        n.append(1)
        if len(n) > 1:
            raise RuntimeError("cudaErrorLaunchFailure")
        return torch.ones(1)

    fs.run("kernels", fast, lambda: torch.ones(1), failsafe.max_abs_diff, 0.0)
    assert torch.equal(fs.run("kernels", fast, lambda: torch.zeros(1), failsafe.max_abs_diff, 0.0), torch.zeros(1))
    assert fs.status("kernels") == "off" and "cudaErrorLaunchFailure" in fs.state("kernels").reason
    assert len(_warnings(caplog)) == 1


def test_component_names_come_from_the_registry():
    with pytest.raises(ValueError, match=r"unknown accelerated component 'tensorRT'; expected one of \['cuda-graphs', "
                       r"'dali', 'identity-cuda', 'kernels', 'nvdec', 'onnxruntime-cuda', 'tensorrt', 'transnet-cuda'\]"):
        failsafe.FailSafe().status("tensorRT")


def test_each_scan_starts_with_every_component_unchecked():
    with failsafe.session() as fs:
        fs.switch_off("nvdec", "test")
        assert failsafe.current() is fs
    with failsafe.session() as fs2:
        assert fs2.status("nvdec") == "unchecked"
    assert failsafe.current() not in (fs, fs2)


# Faulty stand-ins for the accelerated components --------------------------------------------


class FaultyDecoder:
    """PyAV dressed as an accelerated decoder ``name`` that raises or yields wrong pixels."""

    def __init__(self, name: str, fault: str) -> None:
        self.name, self.fault, self._pyav = name, fault, PyAVDecoder()

    def probe(self, path):
        return self._pyav.probe(path)

    def frames(self, path, sampling, batch_size):
        for i, b in enumerate(self._pyav.frames(path, sampling, batch_size)):
            if self.fault == "exception" and i == 1:
                raise RuntimeError("cuvidMapVideoFrame: CUDA_ERROR_MAP_FAILED")
            if self.fault == "unsupported":
                raise UnsupportedByBackend(path, "NVDEC cannot decode this film's codec")
            if self.fault == "wrong":
                b = FrameBatch(y=b.y.clone().add_(40), u=b.u, v=b.v, frame_index=b.frame_index,
                               pts_seconds=b.pts_seconds, is_keyframe=b.is_keyframe, matrix=b.matrix,
                               full_range=b.full_range)
            yield b


class FaultyEngine:
    """The torch engine on the CPU dressed as accelerated engine ``name``."""

    def __init__(self, inner: TorchEngine, name: str, fault: str) -> None:
        self.inner, self.name, self.fault, self.device = inner, name, fault, inner.device

    def run(self, x):
        if self.fault == "exception":
            raise RuntimeError("[TRT] IExecutionContext::enqueueV3: Error Code 1: Cuda Runtime (illegal address)")
        return self.inner.run(x).flip(1) * 3  # logits of the wrong classes


ENGINE_NAMES = {"cuda-graphs": "torch", "onnxruntime-cuda": "onnxruntime", "tensorrt": "tensorrt"}


def inject(monkeypatch, component: str, fault: str) -> dict:
    """Make ``component`` a faulty stand-in; the ScanOptions overrides that select it."""
    if component in ("nvdec", "dali"):
        monkeypatch.setitem(decode.DECODERS, component, lambda: FaultyDecoder(component, fault))
        return {"decoder": component}
    if component == "kernels":
        def kernel(frames, rois, out_hw, mode, mean, std):
            if fault == "exception":
                raise RuntimeError("exs_roi_resample failed with CUDA error 700: an illegal memory access")
            return roi._roi_resample_torch(frames, rois, out_hw, mode, mean, std) + 0.5

        monkeypatch.setattr(roi, "_cuda_kernel", lambda frames: kernel)
        return {}
    name = ENGINE_NAMES[component]
    real = engines.ENGINES["torch"]
    monkeypatch.setitem(engines.ENGINES, name, lambda *a: FaultyEngine(real(*a), name, fault))
    monkeypatch.setattr(engines, "resolve_engine", lambda n, device: n)
    monkeypatch.setattr(pipeline, "resolve_engine", lambda n, device: n)
    monkeypatch.setattr(engines, "accelerated_component",
                        lambda e: component if isinstance(e, FaultyEngine) else None)
    return {"engine": name}


@pytest.fixture(scope="module")
def two_films(clips, tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("two")
    for name in ("a.mp4", "b.mp4"):
        shutil.copy(clips / "carphone_pristine.mp4", d / name)
    return [d / "a.mp4", d / "b.mp4"]


@pytest.fixture(scope="module")
def cpu_scan(two_films, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cpu")
    assert scan(two_films, out, ScanOptions(**OPTS)).ok
    return out


def _tables(out: Path, film_id: str) -> tuple[dict, dict]:
    return (read_table(frames_path(out, film_id)).to_pydict(), read_table(faces_path(out, film_id, FER)).to_pydict())


# TransNetV2 and the face encoder are checked inside their own functions (tests below).
NETWORKS = {"transnet-cuda": ("exe_stream.shots.transnet", "_fast_forward"),
            "identity-cuda": ("exe_stream.identity", "_fast_embed")}


@pytest.mark.parametrize("fault", ["exception", "wrong"])
@pytest.mark.parametrize("component", sorted(set(failsafe.COMPONENTS) - set(NETWORKS)))
def test_a_faulty_component_is_switched_off_and_the_scan_writes_the_cpu_shards(
        component, fault, two_films, cpu_scan, tmp_path, monkeypatch, caplog):
    overrides = inject(monkeypatch, component, fault)
    res = scan(two_films, tmp_path, ScanOptions(**{**OPTS, **overrides}))
    assert res.ok and [f.status for f in res.films] == ["done", "done"]
    # One warning naming the component and why.
    (msg,) = _warnings(caplog)
    assert msg.startswith(f"{component} (") and "switched off for the rest of the scan" in msg
    assert ("RuntimeError" in msg) if fault == "exception" else ("differs from" in msg)
    # The manifest: the scan's verdict, and the path each film ran.
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    verdict = manifest["scans"][-1]["failsafe"][component]
    assert verdict["status"] == "off" and verdict["reason"]
    for f in res.films:
        paths = manifest["films"][f.film_id]["paths"]
        assert paths[component].startswith("off: ")
        assert paths["decoder"] == "pyav"
        # The shards are those of a CPU scan.
        assert _tables(tmp_path, f.film_id) == _tables(cpu_scan, f.film_id)


def test_a_film_the_decoder_cannot_read_is_decoded_by_pyav_and_the_decoder_stays_on(
        two_films, cpu_scan, tmp_path, monkeypatch, caplog):
    inject(monkeypatch, "nvdec", "unsupported")
    res = scan(two_films, tmp_path, ScanOptions(**{**OPTS, "decoder": "nvdec"}))
    assert res.ok and not _warnings(caplog)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["scans"][-1]["failsafe"] == {}
    for f in res.films:
        paths = manifest["films"][f.film_id]["paths"]
        assert paths == {"decoder": "pyav", "nvdec": "not for this film: NVDEC cannot decode this film's codec"}
        assert _tables(tmp_path, f.film_id) == _tables(cpu_scan, f.film_id)


def test_a_working_accelerated_decoder_is_verified_and_recorded(two_films, cpu_scan, tmp_path, monkeypatch):
    inject(monkeypatch, "dali", "none")
    res = scan(two_films, tmp_path, ScanOptions(**{**OPTS, "decoder": "dali"}))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["scans"][-1]["failsafe"]["dali"] == {"status": "verified", "reason": "", "figure": 0.0}
    for f in res.films:
        assert manifest["films"][f.film_id]["paths"] == {"decoder": "dali", "dali": "used"}
        assert _tables(tmp_path, f.film_id)[1] == _tables(cpu_scan, f.film_id)[1]


def test_a_broken_film_is_not_blamed_on_the_decoder(films, tmp_path, monkeypatch, caplog):
    inject(monkeypatch, "nvdec", "none")
    res = scan([films.text_as_mp4], tmp_path, ScanOptions(**{**OPTS, "decoder": "nvdec"}))
    (film,) = res.films
    assert film.status == "failed" and "not a media file" in film.reason
    assert not _warnings(caplog)


def test_engine_auto_falls_back_to_torch_when_the_accelerated_one_cannot_be_built(
        two_films, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(pipeline, "_resolve_engine", lambda opts, device: ("tensorrt", engines.load_profile("default")))
    real = pipeline.attach_engine

    def attach(m, name, profile):
        if name == "tensorrt":
            raise engines.EngineError("TensorRT failed to build a plan from 'x.onnx' (see its log above)")
        return real(m, name, profile)

    monkeypatch.setattr(pipeline, "attach_engine", attach)
    res = scan(two_films[:1], tmp_path, ScanOptions(**OPTS))
    assert res.ok
    (msg,) = _warnings(caplog)
    assert msg.startswith("tensorrt (the TensorRT engine) switched off for the rest of the scan: cannot be built "
                          "here: EngineError: TensorRT failed to build a plan")
    # Asked for by name, the same failure stops the scan before any film.
    with pytest.raises(engines.EngineError, match="failed to build a plan"):
        scan(two_films[:1], tmp_path / "named", ScanOptions(**{**OPTS, "engine": "tensorrt"}))


def test_cuda_graphs_that_cannot_be_captured_give_way_to_the_plain_model(monkeypatch, caplog):
    built = []

    def attach(m, name, profile):
        if profile.cuda_graphs:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        built.append((name, profile.precision, profile.channels_last, profile.cuda_graphs))
        return m

    monkeypatch.setattr(pipeline, "attach_engine", attach)
    with failsafe.session() as fs:
        models, engine, profile = pipeline._attach_engines(["m"], "torch", engines.load_profile("default"),
                                                           auto=False, device=torch.device("cuda", 0))
        assert fs.status("cuda-graphs") == "off"
    assert models == ["m"] and engine == "torch" and built == [("torch", "fp32", False, False)]
    assert profile.precision == "fp32" and not profile.cuda_graphs  # the resume key follows what runs
    (msg,) = _warnings(caplog)
    assert "cuda-graphs (" in msg and "cannot be built here: RuntimeError: CUDA error" in msg
    with pytest.raises(RuntimeError, match="not permitted"):  # on the CPU there is nothing to give way to
        pipeline._attach_engines(["m"], "torch", engines.load_profile("default"), auto=True,
                                 device=torch.device("cpu"))


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["exception", "wrong", "none"])
@pytest.mark.parametrize("component", sorted(NETWORKS))
def test_transnet_and_the_face_encoder_on_cuda_check_their_first_batch(
        component, fault, two_films, tmp_path, monkeypatch, caplog):
    """TransNetV2 (scan --shots transnet) and the dlib encoder (--characters) on CUDA: their
    accelerated path (the CPU network dressed as CUDA here, made to raise or to be wrong) is
    checked against the CPU on the first batch; the scan's shards equal a CPU scan's."""
    import importlib

    from exe_stream.shots import ShotOptions

    module, name = NETWORKS[component]
    mod = importlib.import_module(module)
    extra = {"shots": ShotOptions("transnet")} if component == "transnet-cuda" else {
        "shots": ShotOptions("content"), "characters": True}
    opts = ScanOptions(**{**OPTS, **extra})
    assert scan(two_films[:1], tmp_path / "cpu", opts).ok  # the reference: plain CPU
    real = getattr(mod, name)

    def faulty(net, x):
        if fault == "exception":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        out = real(net, x)
        return out + 0.5 if fault == "wrong" else out

    monkeypatch.setattr(mod, name, faulty)
    monkeypatch.setattr(mod, "_accelerated", lambda device: True)
    res = scan(two_films[:1], tmp_path / "acc", opts)
    assert res.ok
    fid = res.films[0].film_id
    frames, faces = _tables(tmp_path / "acc", fid)
    assert (frames, faces) == _tables(tmp_path / "cpu", fid)
    assert ("shot_index" in frames) and (component != "identity-cuda" or faces["character_id"])
    manifest = json.loads((tmp_path / "acc" / "manifest.json").read_text())
    verdict = manifest["scans"][-1]["failsafe"][component]
    path = manifest["films"][fid]["paths"][component]
    if fault == "none":
        assert verdict == {"status": "verified", "reason": "", "figure": 0.0} and path == "used"
        assert not _warnings(caplog)
    else:
        (msg,) = _warnings(caplog)
        assert msg.startswith(f"{component} (") and "switched off for the rest of the scan" in msg
        assert verdict["status"] == "off" and path.startswith("off: ")
        assert ("RuntimeError" in verdict["reason"]) if fault == "exception" else ("differs from" in verdict["reason"])
