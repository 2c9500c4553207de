"""Inference engines: build profiles, bucket padding, ONNX export and its cache, onnxruntime
against torch on every model card, the engine registry and its errors, scans through an engine.

CUDA cases (torch fp16 + channels_last + CUDA graphs, onnxruntime's CUDA provider, TensorRT)
are skipped without a GPU; TensorRT cases also without the tensorrt package.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import DEVICES, NEEDS_CUDA
import torch
from PIL import Image
from typer.testing import CliRunner

import exe_stream.engines as engines
from exe_stream.cli import app
from exe_stream.engines import EngineError, EngineProfile, attach_engine, engine_key, get_engine, load_profile
from exe_stream.engines import resolve_engine
from exe_stream.engines.onnx_export import export_key, export_onnx, network_hash
from exe_stream.engines.onnxruntime_engine import providers_for
from exe_stream.engines.tensorrt_engine import plan_name, profile_shapes
from exe_stream.engines.torch_engine import TorchEngine, bucket_chunks, bucket_for, pad_to, run_bucketed
from exe_stream.models import ARCHITECTURES, ModelCard, build_network, builtin_names, load_model, save_model
from exe_stream.pipeline import ScanOptions, scan
from exe_stream.sampling import SamplingOptions
from exe_stream.shards import faces_path, read_table

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parent.parent
HAS_CUDA = torch.cuda.is_available()
# Probabilities of an fp32 engine must match torch's to this.
TOL = 1e-4
runner = CliRunner()


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def _ort_cuda() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.fixture(scope="module")
def cache(engine_cache) -> Path:
    """The session's engine cache (tests/conftest.py), so each network is exported once."""
    return engine_cache


@pytest.fixture(scope="module")
def resnet_dir(tmp_path_factory) -> Path:
    """A small ResNet18 card (48x48 RGB, the FER labels so it can join fer2013-minixception in an
    ensemble), seeded random weights, BN statistics moved off their defaults so every layer
    matters."""
    torch.manual_seed(0)
    labels = load_model("fer2013-minixception").labels
    card = ModelCard(name="tiny-resnet18", architecture="resnet18", labels=labels,
                     input_size=(48, 48), colour="rgb", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                     crop_margin=0.1, source="test", license="none")
    net = build_network(card)
    for mod in net.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    d = tmp_path_factory.mktemp("models") / "tiny-resnet18"
    save_model(d, card, net.state_dict())
    return d


def _specs(resnet_dir: Path) -> list[str]:
    return builtin_names() + [str(resnet_dir)]


def face_crops(card: ModelCard, device: str = "cpu") -> torch.Tensor:
    """17 real crops for ``card`` from tests/data's photos (whole image, centre squares, a
    mirrored one), resized with antialiasing, grey or RGB, normalised as the card says."""
    crops = []
    for name in ("Tom_Hanks_54745.png", "grace_hopper_512x512.jpg", "astronaut.png"):
        img = torch.from_numpy(np.array(Image.open(DATA / name).convert("RGB"))).permute(2, 0, 1).float() / 255
        h, w = img.shape[1:]
        boxes = [(0, 0, w, h), (w // 8, h // 8, w - w // 8, h - h // 8), (w // 4, h // 8, 3 * w // 4, 5 * h // 8),
                 (w // 5, 0, 4 * w // 5, 3 * h // 5), (0, h // 4, w // 2, 3 * h // 4)]
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            c = img[:, y0:y1, x0:x1]
            crops.append(c.flip(-1) if i == 2 else c)
    crops += [crops[0].flip(-1), crops[5].flip(-2)]
    batch = torch.stack([
        torch.nn.functional.interpolate(c[None], size=card.input_size, mode="bilinear", antialias=True)[0]
        for c in crops
    ])
    if card.colour == "gray":
        batch = (0.299 * batch[:, :1] + 0.587 * batch[:, 1:2] + 0.114 * batch[:, 2:3])
    mean = torch.tensor(card.mean).view(1, -1, 1, 1)
    std = torch.tensor(card.std).view(1, -1, 1, 1)
    return ((batch - mean) / std).to(device)


# --- build profiles -------------------------------------------------------------------------


def test_default_profile_file_equals_the_builtin_defaults():
    # An installed wheel has no engines/ directory and uses EngineProfile(); a checkout reads
    # engines/default.toml: both must be the same profile.
    assert (REPO / "engines" / "default.toml").is_file()
    assert load_profile("default") == EngineProfile()
    assert engines.profiles_dir() == REPO / "engines"


def test_profile_from_a_toml_file(tmp_path):
    p = tmp_path / "fast.toml"
    p.write_text('precision = "fp32"\n[torch]\ncuda_graphs = false\nbuckets = [8, 64]\n'
                 "[tensorrt]\nmin_batch = 2\nopt_batch = 8\nmax_batch = 64\n")
    prof = load_profile(p)
    assert (prof.name, prof.precision, prof.cuda_graphs, prof.buckets) == ("fast", "fp32", False, (8, 64))
    assert (prof.min_batch, prof.opt_batch, prof.max_batch) == (2, 8, 64)
    assert prof.channels_last is True and prof.opset == 18  # unspecified keys keep their defaults
    assert load_profile(str(p)) == prof


@pytest.mark.parametrize("text, message", [
    ('precision = "int8"\n', "precision must be one of ['fp16', 'fp32'], got 'int8'"),
    ("speed = 3\n", "unknown key 'speed'; allowed: ['precision', '[torch]', '[onnx]', '[tensorrt]']"),
    ("[torch]\nbucket = [1]\n", "unknown key 'bucket' in [torch]; allowed: ['channels_last', 'cuda_graphs', 'buckets']"),
    ("[torch]\nbuckets = [4, 2]\n", "buckets must be positive integers in ascending order, got [4, 2]"),
    ("[torch]\nbuckets = []\n", "buckets must be positive integers in ascending order, got []"),
    ("[torch]\ncuda_graphs = 1\n", "cuda_graphs must be true or false, got 1"),
    ("[onnx]\nopset = 13\n", "opset must be an integer >= 18, got 13"),
    ("[tensorrt]\nmin_batch = 8\nopt_batch = 4\n",
     "1 <= min_batch <= opt_batch <= max_batch, got min_batch=8 opt_batch=4 max_batch=256"),
    ("[tensorrt]\nmax_batch = true\n", "got min_batch=1 opt_batch=32 max_batch=True"),
    ("[tensorrt]\nworkspace_mib = 0\n", "workspace_mib must be a positive integer, got 0"),
    ("precision = \n", "is not valid TOML"),
])
def test_bad_profiles_name_the_value(tmp_path, text, message):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(EngineError) as e:
        load_profile(p)
    assert message in str(e.value)


def test_unknown_profile_names_the_available_ones(tmp_path):
    with pytest.raises(EngineError, match=r"unknown engine profile 'nope'; available: \[.*'default'.*\]"):
        load_profile("nope")
    with pytest.raises(EngineError, match="engine profile file .*missing.toml' does not exist"):
        load_profile(tmp_path / "missing.toml")


def test_cache_dir_env_then_checkout_then_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EXE_STREAM_ENGINE_CACHE", str(tmp_path / "env"))
    assert engines.cache_dir() == tmp_path / "env"
    monkeypatch.delenv("EXE_STREAM_ENGINE_CACHE")
    monkeypatch.setattr(engines, "profiles_dir", lambda: tmp_path)  # a writable checkout
    assert engines.cache_dir() == tmp_path
    monkeypatch.setattr(engines, "profiles_dir", lambda: tmp_path / "not-installed")  # a wheel
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert engines.cache_dir() == tmp_path / "xdg" / "exe-stream" / "engines"


# --- torch engine: buckets and padding (the CUDA graph path's logic, on the CPU) ------------------


def test_bucket_for_and_chunks():
    b = (1, 2, 4, 8, 16)
    assert [bucket_for(n, b) for n in (1, 2, 3, 4, 5, 9, 16)] == [1, 2, 4, 4, 8, 16, 16]
    assert bucket_chunks(0, b) == []
    assert bucket_chunks(3, b) == [(0, 3, 4)]
    assert bucket_chunks(16, b) == [(0, 16, 16)]
    assert bucket_chunks(37, b) == [(0, 16, 16), (16, 32, 16), (32, 37, 8)]
    assert bucket_chunks(5, (8, 64)) == [(0, 5, 8)]
    for bad in (0, 17):
        with pytest.raises(ValueError, match=f"batch {bad} is outside the buckets 1..16"):
            bucket_for(bad, b)


def test_pad_to_keeps_rows_dtype_and_memory_format():
    x = torch.randn(3, 2, 4, 4).half().contiguous(memory_format=torch.channels_last)
    p = pad_to(x, 8)
    assert p.shape == (8, 2, 4, 4) and p.dtype == torch.float16
    assert p.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(p[:3], x) and not p[3:].any()
    assert pad_to(x, 3) is x
    with pytest.raises(ValueError, match="cannot pad 3 rows to 2"):
        pad_to(x, 2)


def test_run_bucketed_pads_runs_fixed_sizes_and_returns_each_row_once():
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5)).eval()
    x = torch.randn(23, 1, 8, 8)
    seen = []

    def run_bucket(chunk, bucket):
        padded = pad_to(chunk, bucket)
        seen.append((chunk.shape[0], padded.shape[0]))
        return net(padded)[: chunk.shape[0]]

    with torch.no_grad():
        out = run_bucketed(x, (1, 2, 4, 8), run_bucket)
        ref = net(x)
    assert seen == [(8, 8), (8, 8), (7, 8)]
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_torch_engine_on_the_cpu_is_the_plain_fp32_network():
    m = load_model("fer2013-minixception")
    eng = get_engine("torch", m.networks[0], m.card, "cpu")
    assert isinstance(eng, TorchEngine) and isinstance(eng, engines.Engine)
    assert eng.network is m.networks[0]  # no copy, no half, no channels_last, no graphs
    assert (eng.dtype, eng.channels_last, eng.use_graphs) == (torch.float32, False, False)
    x = face_crops(m.card)
    with torch.no_grad():
        assert torch.equal(eng.run(x), m.networks[0](x))
    assert eng.run(x[:0]).shape == (0, 7)
    with pytest.raises(ValueError, match=r"torch engine expects \[K, 1, 64, 64\], got \(2, 3, 64, 64\)"):
        eng.run(torch.zeros(2, 3, 64, 64))


# --- ONNX export and onnxruntime against torch --------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_onnxruntime_matches_torch_on_every_model_card(device, cache, resnet_dir):
    if device == "cuda" and not _ort_cuda():
        pytest.skip("onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu not installed)")
    specs = _specs(resnet_dir)
    assert {"fer2013-minixception", "facex"} <= set(specs)
    for spec in specs:
        ref = load_model(spec, device)
        ort = attach_engine(ref, "onnxruntime", cache=cache)
        assert ort.engine == "onnxruntime" and ort.engines[0].device.type == device
        crops = face_crops(ref.card, device)
        for k in (1, 3, 17):  # one exported file, any batch size
            p_ref, p_ort = ref.predict(crops[:k]), ort.predict(crops[:k])
            assert p_ort.device.type == device and p_ort.shape == (k, len(ref.labels))
            np.testing.assert_allclose(p_ort.cpu().numpy(), p_ref.cpu().numpy(), rtol=0, atol=TOL, err_msg=spec)
        assert ort.predict(crops[:0]).shape == (0, len(ref.labels))


# Architectures exported and run here besides the built-in cards' (mini_xception,
# facex_mobilenet_v2) and the tiny resnet18 card's (efficientnet_b0 grey: torchvision's 1-channel
# stem too). Left out of the suite for time (~35 s of exports on 2 cores): resnet50 and vgg16,
# made of resnet18's operators (vgg16's classifier alone is ~120M weights), and torchvision's
# mobilenet_v2, made of facex_mobilenet_v2's (depthwise conv, ReLU6, BN, linear).
OTHER_ARCHITECTURES = [("conv_autoencoder", "gray"), ("efficientnet_b0", "gray")]
NOT_EXPORTED_IN_TESTS = {"resnet50", "vgg16", "mobilenet_v2"}


def test_every_architecture_is_exported_here_or_listed_as_left_out():
    covered = {"mini_xception", "facex_mobilenet_v2", "resnet18"} | {a for a, _ in OTHER_ARCHITECTURES}
    assert {load_model(n).card.architecture for n in builtin_names()} <= covered
    assert set(ARCHITECTURES) == covered | NOT_EXPORTED_IN_TESTS


@pytest.mark.slow
@pytest.mark.parametrize("arch, colour", OTHER_ARCHITECTURES)
def test_onnxruntime_matches_torch_on_other_architectures(arch, colour, cache):
    torch.manual_seed(2)
    n_ch = 3 if colour == "rgb" else 1
    card = ModelCard(name=f"tiny-{arch}", architecture=arch, labels=("a", "b", "c", "d"), input_size=(64, 64),
                     colour=colour, mean=(0.5,) * n_ch, std=(0.25,) * n_ch, crop_margin=0.0, source="test",
                     license="none")
    net = build_network(card).eval()
    for mod in net.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    eng = get_engine("onnxruntime", net, card, "cpu", cache=cache)
    x = face_crops(card)
    with torch.no_grad():
        ref = net(x)
    out = eng.run(x)
    assert out.shape == (17, 4) and ref.abs().max() > 0
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    torch.testing.assert_close(eng.run(x[:1]), ref[:1], rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_onnxruntime_ensemble_runs_one_engine_per_member(cache, resnet_dir):
    spec = f"ens:fer2013-minixception+{resnet_dir}"
    ref = load_model(spec)
    ort = attach_engine(ref, "onnxruntime", cache=cache)
    assert [e.path.name.split("-")[0] for e in ort.engines] == ["fer2013", "tiny"]
    crops = [face_crops(c) for c in ref.cards]  # 64x64 grey and 48x48 RGB
    np.testing.assert_allclose(ort.predict(crops).numpy(), ref.predict(crops).numpy(), rtol=0, atol=TOL)


def test_export_is_cached_and_a_changed_model_re_exports(tmp_path, cache, resnet_dir):
    m = load_model(str(resnet_dir))
    first = export_onnx(m.networks[0], m.card, cache=cache)  # exported here or by a test above
    assert first.path.parent == cache and first.path.name == f"tiny-resnet18-{first.key}.onnx"
    mtime = first.path.stat().st_mtime_ns
    again = attach_engine(m, "onnxruntime", cache=cache).engines[0].export
    assert again == type(first)(first.path, first.key, exported=False)
    assert first.path.stat().st_mtime_ns == mtime
    # New weights: a new content hash, key and file; the old file stays for the old model.
    state = {k: v.clone() for k, v in m.networks[0].state_dict().items()}
    state["fc.bias"] += 1.0
    changed_dir = tmp_path / "changed"
    save_model(changed_dir, m.card, state)
    changed = load_model(str(changed_dir))
    assert network_hash(changed.networks[0], changed.card) != network_hash(m.networks[0], m.card)
    second = export_onnx(changed.networks[0], changed.card, cache=cache)
    assert second.exported and second.key != first.key and first.path.is_file() and second.path.is_file()
    third = export_onnx(changed.networks[0], changed.card, cache=cache)
    assert not third.exported and third.path == second.path
    # Each key covers the opset, precision and exporter versions as well.
    base = export_key("0" * 64, m.card, 18, "fp32")
    assert {k: v for k, v in base.items() if k in ("torch", "onnxscript", "exporter")} == {
        "torch": torch.__version__, "onnxscript": __import__("onnxscript").__version__,
        "exporter": "torch.onnx.export(dynamo=True)"}
    assert export_key("0" * 64, m.card, 19, "fp32") != base != export_key("0" * 64, m.card, 18, "fp16")


def test_network_hash_follows_weights_and_card():
    m = load_model("fer2013-minixception")
    net, card = m.networks[0], m.card
    h = network_hash(net, card)
    assert h == network_hash(load_model("fer2013-minixception").networks[0], card)
    renamed = ModelCard(**{**card.to_json(), "labels": [*card.labels[:-1], "calm"]})
    assert network_hash(net, renamed) != h


def test_fp16_export_the_tensorrt_input_runs_and_is_close(cache):
    import onnx
    import onnxruntime

    m = load_model("fer2013-minixception")
    net = m.networks[0]
    exp = export_onnx(net, m.card, precision="fp16", cache=cache)
    # The caller's network is left in fp32 on the CPU.
    assert all(p.dtype == torch.float32 for p in net.parameters())
    model = onnx.load(str(exp.path))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["exe_stream.model"] == "fer2013-minixception"
    assert json.loads(props["exe_stream.precision"]) == "fp16" and json.loads(props["exe_stream.opset"]) == 18
    assert json.loads(props["exe_stream.labels"]) == list(m.labels)
    sess = onnxruntime.InferenceSession(str(exp.path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("input", "tensor(float16)", [1, 64, 64])
    assert isinstance(inp.shape[0], str) and out.type == "tensor(float16)"  # dynamic batch
    x = face_crops(m.card)
    logits = sess.run(None, {"input": x.half().numpy()})[0]
    p16 = torch.softmax(torch.from_numpy(logits).float(), 1)
    p32 = m.predict(x)
    assert (p16 - p32).abs().max() < 2e-2
    assert (p16.argmax(1) == p32.argmax(1)).float().mean() >= 0.9


def test_export_errors(tmp_path, monkeypatch):
    m = load_model("fer2013-minixception")
    with pytest.raises(EngineError, match=r"precision must be one of \['fp32', 'fp16'\], got 'int8'"):
        export_onnx(m.networks[0], m.card, precision="int8", cache=tmp_path)
    with pytest.raises(EngineError, match="ONNX opset must be an integer >= 18, got 11"):
        export_onnx(m.networks[0], m.card, opset=11, cache=tmp_path)
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import fails
    with pytest.raises(EngineError, match=r"ONNX export needs the packages \['onnxscript'\].*exe-stream\[onnx\]"):
        export_onnx(m.networks[0], m.card, cache=tmp_path)


def test_export_and_session_failures_name_the_model_or_file(tmp_path, cache):
    class Unexportable(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.svd(x.flatten(2))[1].flatten(1)  # no ONNX translation of SVD

    card = load_model("fer2013-minixception").card
    with pytest.raises(EngineError, match=r"ONNX export of model 'fer2013-minixception' \(mini_xception\) failed") as e:
        export_onnx(Unexportable(), card, cache=tmp_path)
    assert "\x1b[" not in str(e.value)  # the exporter's terminal colours are stripped
    assert not list(tmp_path.iterdir())  # no partial file left behind
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    m = load_model("fer2013-minixception")
    with pytest.raises(EngineError, match="cannot create the engine cache directory .*a-file"):
        export_onnx(m.networks[0], m.card, cache=blocked / "sub")
    # A damaged cache file is reported by the session that cannot load it.
    good = export_onnx(m.networks[0], m.card, cache=cache).path
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / good.name).write_bytes(b"not an onnx file")
    with pytest.raises(EngineError, match=f"onnxruntime cannot load '.*damaged/{good.name}'"):
        attach_engine(m, "onnxruntime", cache=damaged)


# --- registry, auto, errors --------------------------------------------------------------------


def test_resolve_engine_auto_and_unknown(monkeypatch):
    assert resolve_engine("auto", "cpu") == "torch"
    monkeypatch.setattr(engines, "tensorrt_available", lambda: True)
    assert resolve_engine("auto", "cpu") == "torch"  # TensorRT never runs on the CPU
    assert resolve_engine("auto", torch.device("cuda")) == "tensorrt"
    monkeypatch.setattr(engines, "tensorrt_available", lambda: False)
    assert resolve_engine("auto", torch.device("cuda")) == "torch"
    assert resolve_engine("torch", "cpu") == "torch" and resolve_engine("onnxruntime", "cpu") == "onnxruntime"
    with pytest.raises(EngineError, match=r"unknown engine 'tvm'; expected one of \['auto', 'torch', 'onnxruntime', "
                                          r"'tensorrt'\]"):
        resolve_engine("tvm", "cpu")


def test_tensorrt_not_installed_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert not engines.tensorrt_available()
    with pytest.raises(EngineError, match="engine 'tensorrt': TensorRT is not installed"):
        resolve_engine("tensorrt", "cpu")
    m = load_model("fer2013-minixception")
    with pytest.raises(EngineError, match="TensorRT is not installed.*use --engine torch or --engine onnxruntime"):
        attach_engine(m, "tensorrt")


def test_tensorrt_needs_cuda(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))  # importable
    with pytest.raises(EngineError, match="engine 'tensorrt' runs on CUDA only, got device 'cpu'"):
        resolve_engine("tensorrt", "cpu")


def test_onnxruntime_missing_or_without_cuda_provider(monkeypatch):
    fake = types.SimpleNamespace(get_available_providers=lambda: ["AzureExecutionProvider", "CPUExecutionProvider"])
    assert providers_for(fake, torch.device("cpu")) == ["CPUExecutionProvider"]
    with pytest.raises(EngineError, match=r"needs onnxruntime's CUDAExecutionProvider, but this onnxruntime has only "
                                          r"\['AzureExecutionProvider', 'CPUExecutionProvider'\]; install onnxruntime-gpu"):
        providers_for(fake, torch.device("cuda", 0))
    with pytest.raises(EngineError, match="engine 'onnxruntime' runs on 'cpu' or 'cuda', got device 'meta'"):
        providers_for(fake, torch.device("meta"))
    cuda_fake = types.SimpleNamespace(get_available_providers=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert providers_for(cuda_fake, torch.device("cuda", 1)) == [
        ("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(EngineError, match=r"engine 'onnxruntime': onnxruntime is not installed.*exe-stream\[onnx\]"):
        resolve_engine("onnxruntime", "cpu")


def test_engine_keys_leave_the_fp32_torch_reference_unkeyed():
    prof = EngineProfile()
    assert engine_key("torch", "cpu", prof) is None
    assert engine_key("torch", torch.device("cuda"), EngineProfile(precision="fp32")) is None
    assert engine_key("torch", torch.device("cuda"), prof) == {"engine": "torch", "precision": "fp16"}
    assert engine_key("onnxruntime", "cpu", prof) == {"engine": "onnxruntime", "precision": "fp32", "opset": 18}
    assert engine_key("tensorrt", torch.device("cuda"), prof) == {"engine": "tensorrt", "precision": "fp16",
                                                                  "opset": 18}


def test_tensorrt_plan_names_and_profile_shapes():
    card = load_model("facex").card
    prof = EngineProfile()
    assert profile_shapes(prof, card) == ((1, 1, 200, 200), (32, 1, 200, 200), (256, 1, 200, 200))
    name = plan_name(card, "0123456789abcdef", "NVIDIA H100 80GB HBM3", (9, 0), "10.13.0.35", prof)
    assert name.startswith("facex-0123456789abcdef-nvidia-h100-80gb-hbm3-sm90-trt10.13.0.35-") and name.endswith(".plan")
    others = {
        plan_name(card, "0123456789abcdef", "NVIDIA H100 80GB HBM3", (9, 0), "10.13.0.35", EngineProfile(precision="fp32")),
        plan_name(card, "0123456789abcdef", "NVIDIA H100 80GB HBM3", (9, 0), "10.13.0.35", EngineProfile(max_batch=512)),
        plan_name(card, "0123456789abcdef", "NVIDIA A100-SXM4-40GB", (8, 0), "10.13.0.35", prof),
        plan_name(card, "0123456789abcdef", "NVIDIA H100 80GB HBM3", (9, 0), "11.0.0", prof),
        plan_name(card, "fedcba9876543210", "NVIDIA H100 80GB HBM3", (9, 0), "10.13.0.35", prof),
    }
    assert name not in others and len(others) == 5


# --- scans through an engine ---------------------------------------------------------------------


def test_scan_with_onnxruntime_writes_the_same_labels_as_torch(tmp_path, clips, cache, monkeypatch):
    monkeypatch.setenv("EXE_STREAM_ENGINE_CACHE", str(cache))
    film = clips / "carphone_pristine.mp4"
    outs = {}
    for engine in ("torch", "onnxruntime"):
        outs[engine] = tmp_path / engine
        r = runner.invoke(app, ["scan", str(film), "-o", str(outs[engine]), "--every", "10", "--device", "cpu",
                                "--engine", engine, "-q"])
        assert r.exit_code == 0, r.output
    ref = read_table(faces_path(outs["torch"], "carphone_pristine", "fer2013-minixception"))
    got = read_table(faces_path(outs["onnxruntime"], "carphone_pristine", "fer2013-minixception"))
    assert ref.num_rows >= 10 and got.num_rows == ref.num_rows
    assert got.column("label").to_pylist() == ref.column("label").to_pylist()
    probs = [c for c in ref.column_names if c.startswith("prob_")]
    for c in probs:
        np.testing.assert_allclose(got.column(c).to_numpy(), ref.column(c).to_numpy(), rtol=0, atol=TOL)
    for c in ("x0", "y0", "x1", "y1", "det_score"):
        assert got.column(c).to_pylist() == ref.column(c).to_pylist()  # detection is torch in both
    meta = {k.decode(): v.decode() for k, v in got.schema.metadata.items()}
    assert meta["exe_stream.engine"] == "onnxruntime"
    assert {k.decode(): v.decode() for k, v in ref.schema.metadata.items()}["exe_stream.engine"] == "torch"
    m_ref = json.loads((outs["torch"] / "manifest.json").read_text())
    m_ort = json.loads((outs["onnxruntime"] / "manifest.json").read_text())
    assert m_ort["scans"][-1]["engine"] == "onnxruntime" and m_ref["scans"][-1]["engine"] == "torch"
    # The engine is part of the resume key: an onnxruntime scan does not resume a torch one.
    assert m_ort["films"]["carphone_pristine"]["options_key"] != m_ref["films"]["carphone_pristine"]["options_key"]
    r = runner.invoke(app, ["scan", str(film), "-o", str(outs["onnxruntime"]), "--every", "10", "--device", "cpu",
                            "--engine", "onnxruntime"])
    assert r.exit_code == 0 and "skipped" in r.output


def test_scan_with_tensorrt_missing_fails_before_any_film(tmp_path, clips, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    out = tmp_path / "o"
    r = runner.invoke(app, ["scan", str(clips / "carphone_pristine.mp4"), "-o", str(out), "--device", "cpu",
                            "--engine", "tensorrt"])
    assert r.exit_code == 2, r.output
    assert "engine 'tensorrt': TensorRT is not installed" in " ".join(r.output.split())
    assert not (out / "manifest.json").exists()


def test_scan_option_errors(tmp_path, clips):
    film = clips / "carphone_pristine.mp4"
    r = runner.invoke(app, ["scan", str(film), "-o", str(tmp_path / "o"), "--engine-profile", "nope"])
    assert r.exit_code == 2 and "unknown engine profile 'nope'" in " ".join(r.output.split())
    with pytest.raises(EngineError, match="--embeddings reads the torch networks' layers and needs --engine torch"):
        scan([film], tmp_path / "o", ScanOptions(sampling=SamplingOptions(every=50), device="cpu",
                                                 engine="onnxruntime", embeddings=True))


def test_models_export_command(tmp_path, cache, resnet_dir):
    # (Files exported by the tests above come from the cache; run alone, this exports them.)
    m = load_model("fer2013-minixception")
    want = export_onnx(m.networks[0], m.card, precision="fp16", cache=cache).path
    r = runner.invoke(app, ["models", "export", "fer2013-minixception", "--precision", "fp16", "-o", str(cache)])
    assert r.exit_code == 0, r.output
    assert " ".join(r.output.split()) == f"fer2013-minixception: {want} (cached)"
    r = runner.invoke(app, ["models", "export", f"ens:fer2013-minixception+{resnet_dir}", "-o", str(cache)])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["fer2013-minixception", "tiny-resnet18"]
    assert all(Path(ln.split(": ")[1].split(" (")[0]).is_file() for ln in lines)
    for args, message in ((["--precision", "int8"], "precision must be one of ['fp32', 'fp16'], got 'int8'"),
                          (["--opset", "9"], "ONNX opset must be an integer >= 18, got 9")):
        r = runner.invoke(app, ["models", "export", "fer2013-minixception", *args, "-o", str(tmp_path)])
        assert r.exit_code == 2 and message in " ".join(r.output.split())


# --- CUDA (skipped without a GPU) ---------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("spec", ["fer2013-minixception", "facex"])
def test_torch_engine_cuda_fp16_channels_last_graphs_match_fp32(spec):
    ref = load_model(spec, "cuda")
    eng = get_engine("torch", ref.networks[0], ref.card, "cuda")
    assert (eng.dtype, eng.channels_last, eng.use_graphs) == (torch.float16, True, True)
    assert next(ref.networks[0].parameters()).dtype == torch.float32  # the caller's module is untouched
    crops = face_crops(ref.card, "cuda")
    x = crops.repeat(18, 1, 1, 1)[:300]  # 256 + 44: two chunks, buckets 256 and 64
    with torch.no_grad():
        p_ref = torch.softmax(ref.networks[0](x), 1)
    p = torch.softmax(eng.run(x), 1)
    assert p.dtype == torch.float32 and p.device.type == "cuda"
    assert (p - p_ref).abs().max() < 2e-2
    assert sorted(eng._graphs) == [64, 256]
    # Replays reuse the captured graphs; padding rows left from a larger batch never leak in.
    p3 = torch.softmax(eng.run(x[:3]), 1)
    torch.testing.assert_close(p3, p[:3], rtol=0, atol=1e-3)
    assert sorted(eng._graphs) == [4, 64, 256]


@pytest.mark.cuda
@pytest.mark.skipif(not (HAS_CUDA and _has_tensorrt()), reason="needs a CUDA device and TensorRT")
@pytest.mark.parametrize("spec", ["fer2013-minixception", "facex"])
def test_tensorrt_plan_matches_torch_and_is_cached(spec, cache):
    ref = load_model(spec, "cuda")
    trt = attach_engine(ref, "tensorrt", cache=cache)
    assert trt.engine == "tensorrt" and trt.engines[0].path.suffix == ".plan"
    crops = face_crops(ref.card, "cuda")
    for k in (1, 3, 17):
        assert (trt.predict(crops[:k]) - ref.predict(crops[:k])).abs().max() < 2e-2
    again = attach_engine(ref, "tensorrt", cache=cache).engines[0]
    assert again.built is False and again.path == trt.engines[0].path


# Issue 10: predicted failures on first contact with a GPU, reproduced with stand-ins ------


def _tiny_card_and_net():
    card = ModelCard(name="tiny", architecture="mini_xception", labels=("a", "b"), input_size=(48, 48),
                     colour="gray", mean=(0.0,), std=(1.0,), crop_margin=0.0, source="test", license="test")
    torch.manual_seed(0)
    return card, build_network(card).eval()


def test_cuda_graphs_are_captured_when_the_engine_is_built_not_mid_scan(monkeypatch):
    # Captured lazily, a bucket's graph would be captured while a scan's decoder threads issue
    # CUDA work (torch.cuda.graph's "global" capture mode errors on that).
    card, net = _tiny_card_and_net()
    captured = []
    monkeypatch.setattr(TorchEngine, "_graph", lambda self, b: captured.append(b))
    prof = EngineProfile(precision="fp32", channels_last=False, cuda_graphs=True, buckets=(1, 4, 16))
    TorchEngine(net, card, torch.device("cuda", 0), prof)
    assert captured == [1, 4, 16]


def test_cuda_graphs_are_captured_in_thread_local_mode(monkeypatch):
    from fakes import FakeStream

    card, net = _tiny_card_and_net()
    prof = EngineProfile(precision="fp32", channels_last=False, cuda_graphs=True, buckets=(1, 2))
    eng = TorchEngine(net, card, torch.device("cpu"), prof)  # CPU: nothing captured when built
    modes = []

    class Graph:
        def replay(self):
            pass

    class Capture:
        def __init__(self, graph, **kwargs):
            modes.append(kwargs.get("capture_error_mode", "global"))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    import contextlib

    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeStream())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", Capture)
    eng.capture_all()
    assert modes == ["thread_local", "thread_local"]


def test_onnxruntime_on_cuda_checks_the_sessions_providers(monkeypatch, cache):
    # get_available_providers() lists CUDA even where its libraries fail to load; the session
    # then runs on the CPU (onnxruntime issues #17801, #23059).
    import onnxruntime as real_ort
    from exe_stream.engines import onnxruntime_engine as ort_engine
    from exe_stream.engines.onnxruntime_engine import OnnxRuntimeEngine

    card, net = _tiny_card_and_net()

    class Session:
        def __init__(self, path, sess_options=None, providers=None):
            self.asked = providers

        def get_providers(self):
            return ["CPUExecutionProvider"]

        def get_inputs(self):
            return [types.SimpleNamespace(name="input")]

        get_outputs = get_inputs

    fake = types.SimpleNamespace(get_available_providers=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
                                 SessionOptions=real_ort.SessionOptions, InferenceSession=Session)
    monkeypatch.setattr(ort_engine, "import_onnxruntime", lambda: fake)
    with pytest.raises(EngineError, match=r"engine 'onnxruntime' on CUDA: the session has only \['CPUExecutionProvider'\] "
                       r"\(onnxruntime's CUDA provider did not load"):
        OnnxRuntimeEngine(net, card, torch.device("cuda", 0), EngineProfile(), cache)


def test_tensorrt_runs_on_its_own_stream_not_the_legacy_default(monkeypatch):
    from fakes import FakeStream
    from exe_stream.engines.tensorrt_engine import TensorRTEngine

    streams = []

    class Context:
        def set_input_shape(self, name, shape):
            pass

        def set_tensor_address(self, name, ptr):
            pass

        def execute_async_v3(self, stream):
            streams.append(stream)
            return True

    class Legacy(FakeStream):
        cuda_stream = 0  # torch's default stream is the legacy default stream, handle 0

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Legacy())
    eng = object.__new__(TensorRTEngine)
    eng.device, eng.n_classes, eng.profile, eng.context = torch.device("cpu"), 2, EngineProfile(opt_batch=4, max_batch=4), Context()
    eng.input_name, eng.output_name, eng.input_dtype, eng.output_dtype = "in", "out", torch.float32, torch.float32
    eng.path = Path("x.plan")
    eng.stream = FakeStream()
    out = eng.run(torch.zeros(6, 1, 48, 48))
    assert out.shape == (6, 2) and streams == [FakeStream.cuda_stream] * 2
