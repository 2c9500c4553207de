"""``exe-stream doctor``: what this machine has, and which backends pass their parity check.

``doctor(opts)`` collects

- the system: Python, torch and its CUDA version, the NVIDIA driver (nvidia-smi's release and
  the CUDA driver API version), the GPU's name, compute capability, memory and NVDEC engines;
- one ``Check`` per backend: installed (the package is found), importable (it loads here),
  and its parity check on a bundled clip against the verified path, with the figure and the
  tolerance the scan's fail-safe uses (``exe_stream.failsafe``):

  ============  =========================================================================
  pyav          the verified decoder: decodes the clip's first batch
  dali          first batch against PyAV (mean |difference| / tolerance, <= 1 passes); on
                the CPU on a VP9 copy of the clip (DALI's CPU decoder reads VP8/VP9/MJPEG)
  nvdec         first batch against PyAV (CUDA only)
  kernels       the kernel library's roi_resample against the torch reference (largest
                difference in [0, 1] units, tolerance 1/255): on the CPU the kernel's own
                per-pixel code (``roi_resample_host``), on CUDA the kernel launch
  onnxruntime   the model's ONNX export against the plain torch model (probabilities), on
                the CPU provider, and on CUDA its CUDA provider
  cuda-graphs   the torch engine on CUDA (fp16, channels_last, CUDA graphs), CUDA only
  tensorrt      the TensorRT plan, CUDA only
  ============  =========================================================================

- what ``--decoder auto`` and ``--engine auto`` pick on the default device;
- with ``DoctorOptions.bench``, the ``exe-stream bench`` rows on the same clip.

Without a GPU the CUDA checks say "skipped: no CUDA device" and the rest runs.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import traceback
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Literal

import torch

from . import __version__, failsafe
from .options import OptionError, check_range

Status = Literal["pass", "fail", "skipped", "reference"]

# The clip every check runs on (a talking face, 176x144 H.264, 120 frames).
DEFAULT_CLIP = Path(__file__).resolve().parent / "assets" / "clips" / "carphone_pristine.mp4"
# Packages whose versions are reported (distribution names).
PACKAGES = ("torch", "torchvision", "numpy", "av", "pyarrow", "onnxruntime", "onnxruntime-gpu", "onnx",
            "nvidia-dali-cuda130", "nvidia-dali-cuda120", "pynvvideocodec", "tensorrt", "cupy-cuda13x",
            "cupy-cuda12x")
# Frames of the clip in a check's batch (every 10th of the first 80).
_SAMPLING_EVERY, _BATCH = 10, 8


@dataclass
class Check:
    """One backend on this machine."""

    # Backend name ("pyav", "dali", "nvdec", "kernels", "torch", "onnxruntime", "cuda-graphs", "tensorrt").
    name: str
    # "decoder", "kernel" or "engine".
    kind: str
    # The package (or library) is present.
    installed: bool
    # It loads here (None when not tried).
    importable: bool | None
    # "reference" (the verified path itself), "pass", "fail" or "skipped".
    status: Status
    # What was compared, or why it was skipped or failed.
    detail: str
    # The parity figure (largest difference found) and its tolerance, when compared.
    figure: float | None = None
    tolerance: float | None = None


@dataclass
class DoctorReport:
    """What ``doctor`` found (``to_json`` writes it)."""

    system: dict[str, Any]
    checks: list[Check]
    auto: dict[str, str]
    # The bench rows (None: not asked for), and why the bench stopped ("" when it did not).
    bench: list[dict[str, Any]] | None = None
    bench_error: str = ""

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check named {name!r}; checks: {[c.name for c in self.checks]}")

    def to_dict(self) -> dict[str, Any]:
        return {"system": self.system, "checks": [asdict(c) for c in self.checks], "auto": self.auto,
                "bench": self.bench, "bench_error": self.bench_error}

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, default=str)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text


@dataclass(frozen=True)
class DoctorOptions:
    """What ``doctor`` checks."""

    # The clip the parity checks (and the bench) run on.
    clip: Path = DEFAULT_CLIP
    # Emotion model of the engine checks.
    model: str = "fer2013-minixception"
    # Also run ``exe-stream bench`` (decode one film and several at once, copy bandwidth and the
    # kernel, detector, classifier per engine and batch size, scan, reference method).
    bench: bool = False
    # The bench's film (None: the clip) and its sampling (every N-th frame).
    bench_film: Path | None = None
    bench_every: int = 10
    # The bench's engines (empty: every engine whose check passed) and classifier batch sizes.
    bench_engines: tuple[str, ...] = ()
    bench_batch_sizes: tuple[int, ...] = (1, 16, 64, 256)
    # Films decoded at once in the bench's aggregate decode (0: one per NVDEC engine on CUDA, else 2).
    bench_films_at_once: int = 0
    # Timed repeats of each bench measurement.
    bench_repeats: int = 3

    def __post_init__(self) -> None:
        for name in ("clip", "bench_film"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_file():
                raise OptionError(name, f"must be a film, and {str(value)!r} does not exist")
        check_range("bench_every", self.bench_every, lo=1, integer=True)
        check_range("bench_repeats", self.bench_repeats, lo=1, integer=True)
        check_range("bench_films_at_once", self.bench_films_at_once, lo=0, integer=True)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _driver() -> dict[str, Any]:
    """The NVIDIA driver: nvidia-smi's release and the CUDA driver API version (libcuda)."""
    out: dict[str, Any] = {"nvidia_smi": None, "cuda_driver_api": None}
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            r = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=20)
            out["nvidia_smi"] = r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() \
                else f"failed: {r.stderr.strip()[:200]}"
        except (OSError, subprocess.SubprocessError) as e:
            out["nvidia_smi"] = f"failed: {e}"
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        v = ctypes.c_int()
        if lib.cuDriverGetVersion(ctypes.byref(v)) == 0:
            out["cuda_driver_api"] = f"{v.value // 1000}.{(v.value % 1000) // 10}"
    except (OSError, AttributeError):
        pass
    return out


def system_info(clip: Path = DEFAULT_CLIP) -> dict[str, Any]:
    """Versions, the driver, and the GPU (name, compute capability, memory, NVDEC engines)."""
    info: dict[str, Any] = {
        "exe_stream": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
        "cpu_cores": os.cpu_count(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(), "driver": _driver(),
        "packages": {p: v for p in PACKAGES if (v := _version(p))},
    }
    if torch.cuda.is_available():
        from .decode.nvdec import nvdec_engines

        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
                       "memory_gib": round(props.total_memory / 2**30, 1), "count": torch.cuda.device_count(),
                       "nvdec_engines": nvdec_engines(clip, 0)}
    else:
        info["gpu"] = None
    return info


def _guard(check: Check, fn: Callable[[], None]) -> Check:
    """Run ``fn`` (which fills ``check``); an exception is a failed check with its reason."""
    try:
        fn()
    except Exception as e:  # every backend failure is a finding, not a crash
        check.status = "fail"
        check.detail = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
        _debug(traceback.format_exc())
    return check


def _debug(text: str) -> None:
    import logging

    logging.getLogger(__name__).debug(text)


def _first_batch(decoder: Any, clip: Path) -> Any:
    from .sampling import SamplingOptions

    return next(iter(decoder.frames(clip, SamplingOptions(every=_SAMPLING_EVERY), _BATCH)))


def _vp9_copy(clip: Path, directory: Path, frames: int = 80) -> Path:
    """The first ``frames`` frames of ``clip`` re-encoded to VP9 in WebM (DALI's CPU decoder
    reads VP8/VP9/MJPEG only)."""
    import av

    out = directory / f"{clip.stem}-vp9.webm"
    with av.open(str(clip)) as src, av.open(str(out), "w") as dst:
        st = src.streams.video[0]
        enc = dst.add_stream("libvpx-vp9", rate=25)
        enc.width, enc.height, enc.pix_fmt = st.codec_context.width, st.codec_context.height, "yuv420p"
        enc.time_base = enc.codec_context.time_base = Fraction(1, 25)
        enc.options = {"deadline": "realtime", "cpu-used": "8", "g": "10"}
        for i, f in enumerate(src.decode(st)):
            if i >= frames:
                break
            g = f.reformat(format="yuv420p")
            g.pts, g.time_base = i, Fraction(1, 25)
            for pkt in enc.encode(g):
                dst.mux(pkt)
        for pkt in enc.encode():
            dst.mux(pkt)
    return out


def _decoder_parity(check: Check, make: Callable[[], Any], clip: Path) -> None:
    from .decode import get_decoder
    from .pipeline import _decoder_difference

    got = _first_batch(make(), clip)
    want = _first_batch(get_decoder("pyav"), clip)
    check.importable = True
    check.figure = round(_decoder_difference(got, want), 6)
    check.tolerance = 1.0
    check.status = "pass" if check.figure <= check.tolerance else "fail"
    check.detail = (f"first batch ({len(got)} frames of {clip.name}) against PyAV on {got.device}: mean |difference| "
                    f"{check.figure:.3g} x the tolerance")


def check_decoders(clip: Path, device: torch.device) -> list[Check]:
    """pyav (the reference), dali and nvdec on ``clip``."""
    from .decode import get_decoder

    checks = []
    c = Check("pyav", "decoder", True, True, "reference", "")

    def run_pyav() -> None:
        n = len(_first_batch(get_decoder("pyav"), clip))
        c.detail = f"the verified decoder: decoded {n} frames of {clip.name}"

    checks.append(_guard(c, run_pyav))

    dali = Check("dali", "decoder", importlib.util.find_spec("nvidia") is not None
                 and importlib.util.find_spec("nvidia.dali") is not None, None, "skipped", "")

    def run_dali() -> None:
        from .decode.dali import DaliDecoder, DaliOptions, import_dali

        import_dali()
        dali.importable = True
        if device.type == "cuda":
            _decoder_parity(dali, lambda: DaliDecoder(DaliOptions(device="gpu")), clip)
        else:
            with tempfile.TemporaryDirectory(prefix="exe-stream-doctor-") as tmp:
                _decoder_parity(dali, lambda: DaliDecoder(DaliOptions(device="cpu")), _vp9_copy(clip, Path(tmp)))
                dali.detail += " (CPU pipeline, on a VP9 copy of the clip)"

    checks.append(_guard(dali, run_dali) if dali.installed else
                  _skip(dali, "not installed (pip install nvidia-dali-cuda130)"))

    nv = Check("nvdec", "decoder", importlib.util.find_spec("PyNvVideoCodec") is not None, None, "skipped", "")

    def run_nvdec() -> None:
        from .decode.nvdec import NvdecDecoder, import_nvc

        try:
            import_nvc()
        except ImportError as e:
            nv.importable, nv.status, nv.detail = False, "fail", str(e)
            return
        nv.importable = True
        if device.type != "cuda":
            _skip(nv, "no CUDA device")
            return
        _decoder_parity(nv, NvdecDecoder, clip)

    checks.append(_guard(nv, run_nvdec) if nv.installed else _skip(nv, "not installed (pip install pynvvideocodec)"))
    return checks


def _skip(check: Check, why: str) -> Check:
    check.status, check.detail = "skipped", why
    return check


def check_kernels(clip: Path, device: torch.device) -> Check:
    """The kernel library's roi_resample against the torch reference on the clip's first batch:
    the detector letterbox and off-centre crops reaching past the frame."""
    from . import kernels
    from .decode import get_decoder
    from .roi import _roi_resample_torch, letterbox_rois

    c = Check("kernels", "kernel", False, None, "skipped", "")
    try:
        lib = kernels.load_library()
    except kernels.KernelError as e:
        return _skip(c, str(e))
    c.installed, c.importable = True, True

    def run() -> None:
        frames = _first_batch(get_decoder("pyav"), clip)
        h, w = frames.height, frames.width
        rois = torch.cat([letterbox_rois(len(frames), h, w),
                          torch.tensor([[i % len(frames), -0.3 * w, 0.2 * h, 0.6 * w, 1.3 * h]
                                        for i in range(len(frames))], dtype=torch.float32)])
        args = (rois, (64, 48), "rgb", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        if device.type == "cuda":
            if not kernels.available(device):
                _skip(c, f"{lib._name} has no kernel image for {torch.cuda.get_device_name(device)}")
                return
            from .pipeline import _to_device

            f = _to_device(frames, device)
            got, what = kernels.roi_resample_cuda(f, *args), "the CUDA kernel"
            want = _roi_resample_torch(f, *args)
        else:
            got, what = kernels.roi_resample_host(frames, *args), "the kernel's per-pixel code on the host (no GPU)"
            want = _roi_resample_torch(frames, *args)
        c.figure = round(failsafe.max_abs_diff(got, want), 6)
        c.tolerance = round(1 / 255, 6)
        c.status = "pass" if c.figure <= 1 / 255 + 1e-6 else "fail"
        c.detail = f"{what} against the torch reference, {rois.shape[0]} ROIs: largest |difference| {c.figure:.3g}"

    return _guard(c, run)


def _crops(clip: Path, model: Any) -> torch.Tensor:
    """Face crops of the clip's first batch for ``model`` (CPU float32), at least one."""
    from .classify import make_crops
    from .decode import get_decoder
    from .detect import DetectorOptions, detect_faces

    frames = _first_batch(get_decoder("pyav"), clip)
    faces = detect_faces(frames, DetectorOptions())
    if len(faces):
        return make_crops(frames, faces, model.cards[0].crop_spec)
    card = model.cards[0]
    return torch.rand((4, card.channels, *card.input_size), generator=torch.Generator().manual_seed(0))


def check_engines(clip: Path, device: torch.device, model_spec: str) -> list[Check]:
    """torch (the reference), onnxruntime, cuda-graphs and tensorrt on the clip's face crops."""
    from .engines import PARITY_TOLERANCE, get_engine, load_profile
    from .models import load_model

    checks: list[Check] = []
    model = load_model(model_spec, device)
    net, card = model.networks[0], model.cards[0]
    x = _crops(clip, model).to(device)
    with torch.inference_mode():
        ref = torch.softmax(net(x).float(), dim=1)
    checks.append(Check("torch", "engine", True, True, "reference",
                        f"the plain fp32 {model_spec} on {device}, {len(x)} face crops of {clip.name}"))
    profile = load_profile("default")

    def parity(c: Check, name: str, tol: float) -> Callable[[], None]:
        def run() -> None:
            eng = get_engine(name, net, card, device, profile)
            c.importable = True
            with torch.inference_mode():
                got = torch.softmax(eng.run(x).float(), dim=1)
            c.figure = round(failsafe.max_abs_diff(got, ref), 6)
            c.tolerance = tol
            c.status = "pass" if c.figure <= tol else "fail"
            c.detail = (f"{eng!r} against the plain torch model, {len(x)} crops: largest probability "
                        f"difference {c.figure:.3g}")
        return run

    ort = Check("onnxruntime", "engine", importlib.util.find_spec("onnxruntime") is not None, None, "skipped", "")
    checks.append(_guard(ort, parity(ort, "onnxruntime", PARITY_TOLERANCE["fp32"])) if ort.installed
                  else _skip(ort, "not installed (pip install 'exe-stream[onnx]')"))
    graphs = Check("cuda-graphs", "engine", True, True, "skipped", "")
    checks.append(_guard(graphs, parity(graphs, "torch", PARITY_TOLERANCE[profile.precision]))
                  if device.type == "cuda" else _skip(graphs, "no CUDA device"))
    trt = Check("tensorrt", "engine", importlib.util.find_spec("tensorrt") is not None, None, "skipped", "")
    if not trt.installed:
        checks.append(_skip(trt, "not installed (NVIDIA TensorRT 10+: pip install tensorrt)"))
    elif device.type != "cuda":
        from .engines.tensorrt_engine import import_tensorrt

        checks.append(_guard(trt, lambda: (import_tensorrt(), setattr(trt, "importable", True),
                                           _skip(trt, "no CUDA device"))))
    else:
        checks.append(_guard(trt, parity(trt, "tensorrt", PARITY_TOLERANCE[profile.precision])))
    return checks


def auto_choices(device: torch.device) -> dict[str, str]:
    """What ``--device auto``, ``--decoder auto`` and ``--engine auto`` pick here."""
    from .engines import resolve_engine
    from .pipeline import ScanOptions, _resolve_backends

    out = {"device": str(device), "decoder": _resolve_backends(ScanOptions(), device)}
    try:
        out["engine"] = resolve_engine("auto", device)
    except Exception as e:  # resolve_engine("auto") itself should not fail; said if it does
        out["engine"] = f"error: {e}"
    return out


def doctor(opts: DoctorOptions = DoctorOptions(), on_check: Callable[[Check], None] | None = None) -> DoctorReport:
    """Everything the module docstring lists; ``on_check`` sees each check as it finishes."""
    from .models import resolve_device

    device = resolve_device("auto")
    clip = Path(opts.clip)
    checks: list[Check] = []

    def add(new: Check | list[Check]) -> None:
        for c in new if isinstance(new, list) else [new]:
            checks.append(c)
            if on_check:
                on_check(c)

    system = system_info(clip)
    add(check_decoders(clip, device))
    add(check_kernels(clip, device))
    add(check_engines(clip, device, opts.model))
    report = DoctorReport(system=system, checks=checks, auto=auto_choices(device))
    if opts.bench:
        add_bench(report, opts)
    return report


def add_bench(report: DoctorReport, opts: DoctorOptions) -> DoctorReport:
    """Run ``exe-stream bench`` as ``opts`` says and put its rows into ``report`` (a bench that
    stops leaves its reason in ``bench_error``). Engines: those whose check passed."""
    from .bench import BenchOptions, bench
    from .models import resolve_device

    device = resolve_device("auto")
    checks, system = report.checks, report.system
    engines = opts.bench_engines or tuple(
        {"cuda-graphs": "torch"}.get(c.name, c.name) for c in checks
        if c.kind == "engine" and c.status in ("pass", "reference"))
    at_once = opts.bench_films_at_once or (system["gpu"]["nvdec_engines"] if system.get("gpu") else 2)
    # The decoder auto picks, unless its check failed (the bench decodes without the fail-safe).
    decoder = report.auto["decoder"]
    if any(c.name == decoder and c.status == "fail" for c in checks):
        decoder = "pyav"
    bopts = BenchOptions(every=opts.bench_every, device=device.type, decoder=decoder,
                         engines=tuple(dict.fromkeys(engines)), batch_sizes=opts.bench_batch_sizes,
                         films_at_once=at_once, repeats=opts.bench_repeats)
    try:
        report.bench = bench(Path(opts.bench_film or opts.clip), bopts).rows
    except Exception as e:  # a finding like a failed check: the report is still written
        _debug(traceback.format_exc())
        report.bench = []
        report.bench_error = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
    return report
