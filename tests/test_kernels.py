"""kernels.py and the CUDA library of kernels/: the build, the ctypes loader, the plane
descriptors (I420 and NV12 views), and the kernel's results against the torch reference.

The library is compiled once per session with cmake + nvcc (skipped only where nvcc or cmake
is missing; a compile error fails every test that needs it). The kernel's per-pixel code
also runs on the CPU (``roi_resample_host``), so its arithmetic and addressing are checked
here without a GPU; the launch itself (device "cuda") runs only where CUDA is available.
"""

from __future__ import annotations

import ctypes
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import DEVICES, NEEDS_CUDA
import torch

import media

from exe_stream import kernels, roi
from exe_stream.kernels import ENV_VAR, LIBRARY_NAME, KernelError
from exe_stream.roi import roi_resample_reference
from exe_stream.types import FrameBatch

REPO = Path(__file__).resolve().parents[1]
NVCC = shutil.which("nvcc")
CMAKE = shutil.which("cmake")
CC = shutil.which("cc") or shutil.which("gcc")
HAS_CUDA = torch.cuda.is_available()
EXPORTED = {"exs_roi_resample", "exs_roi_resample_host", "exs_check_device", "exs_abi_version", "exs_error_string"}
# "cpu": the kernel's per-pixel code run on the host (exs_roi_resample_host); "cuda": the kernel.
SPEC_TOL = 1.0 / 255.0  # DESIGN.md: within 1/255 after scaling to [0, 1]


def _cmake_build(src: Path, build: Path, *extra: str) -> tuple[int, str]:
    """Configure and build ``src`` into ``build``; (return code, combined output)."""
    log = []
    for cmd in (
        [CMAKE, "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
         f"-DCMAKE_CUDA_COMPILER={NVCC}", *extra],
        [CMAKE, "--build", str(build), "-j", "2"],
    ):
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        log.append(f"$ {' '.join(cmd)}\n{p.stdout}{p.stderr}")
        if p.returncode:
            return p.returncode, "\n".join(log)
    return 0, "\n".join(log)


@pytest.fixture(scope="session")
def built_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """libexe_stream_kernels.so compiled from this checkout by the top-level CMakeLists.txt."""
    if NVCC is None or CMAKE is None:
        pytest.skip("nvcc and cmake must be on PATH to compile the CUDA kernels")
    build = tmp_path_factory.mktemp("kernels-build")
    rc, log = _cmake_build(REPO, build, "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON")
    if rc:
        pytest.fail(f"the CUDA kernels did not compile:\n{log}")
    return build / LIBRARY_NAME


@pytest.fixture
def kernel_lib(built_library: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The session's build, made the library that kernels.load_library() finds."""
    monkeypatch.setenv(ENV_VAR, str(built_library))
    return built_library


# ----------------------------------------------------------------------------- build


def test_cmake_builds_the_library_with_its_c_abi(built_library: Path) -> None:
    assert built_library.is_file()
    raw = ctypes.CDLL(str(built_library))
    assert all(hasattr(raw, name) for name in EXPORTED)
    if shutil.which("nm"):
        out = subprocess.run(["nm", "-D", "--defined-only", str(built_library)], capture_output=True, text=True).stdout
        exported = {line.split()[-1] for line in out.splitlines() if line.split()[1:2] == ["T"]}
        assert exported == EXPORTED  # hidden visibility: nothing of the static CUDA runtime leaks out
    assert kernels.load_library(built_library).exs_abi_version() == kernels.ABI_VERSION


def test_build_targets_sm80_sm90_and_compute90_ptx(built_library: Path) -> None:
    commands = json.loads((built_library.parent / "compile_commands.json").read_text())
    cmd = next(c["command"] for c in commands if c["file"].endswith("roi_resample.cu"))
    targets = set(re.findall(r"arch=compute_(\d+),code=\[(\w+)\]", cmd))
    assert targets == {("80", "sm_80"), ("90", "sm_90"), ("90", "compute_90")}, cmd


@pytest.mark.skipif(NVCC is None or CMAKE is None, reason="nvcc and cmake must be on PATH")
@pytest.mark.parametrize(
    "old, new",
    [
        ("const float frac = centre - lo;", "const float frac = centre - lo_undeclared;"),  # an error
        ("const float frac = centre - lo;", "const float frac = centre - lo; int unused = 0;"),  # a warning
    ],
    ids=["error", "warning"],
)
def test_a_compile_error_or_warning_fails_the_build(tmp_path: Path, old: str, new: str) -> None:
    src = tmp_path / "src"
    shutil.copytree(REPO / "kernels", src / "kernels")
    shutil.copy(REPO / "CMakeLists.txt", src)
    cu = src / "kernels" / "roi_resample.cu"
    text = cu.read_text()
    assert old in text
    cu.write_text(text.replace(old, new, 1))
    rc, log = _cmake_build(src, tmp_path / "build")
    assert rc != 0 and "roi_resample.cu" in log
    assert not (tmp_path / "build" / LIBRARY_NAME).exists()


# ----------------------------------------------------------------------------- loader


def test_candidate_paths_follow_the_env_var_then_package_then_build(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    pkg = Path(kernels.__file__).resolve().parent
    assert kernels.candidate_paths() == [pkg / "_lib" / LIBRARY_NAME, pkg.parent / "build" / LIBRARY_NAME]
    monkeypatch.setenv(ENV_VAR, str(tmp_path))  # a directory
    assert kernels.candidate_paths() == [tmp_path / LIBRARY_NAME]
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "custom.so"))  # a file, looked at alone
    assert kernels.candidate_paths() == [tmp_path / "custom.so"]


def test_missing_library_error_names_where_it_looked(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(KernelError, match=rf"{LIBRARY_NAME} not found \(looked in: .*nowhere; set {ENV_VAR}"):
        kernels.load_library()
    assert kernels.available() is False
    assert kernels.available("cpu") is False


def test_a_file_that_is_not_a_library_is_named(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.so"
    bogus.write_text("not an ELF file")
    with pytest.raises(KernelError, match="cannot load .*bogus.so"):
        kernels.load_library(bogus)


def _fake_library(tmp_path: Path, name: str, body: str) -> Path:
    if CC is None:
        pytest.skip("needs a C compiler to build a fake library")
    src = tmp_path / f"{name}.c"
    src.write_text(body)
    out = tmp_path / f"{name}.so"
    subprocess.run([CC, "-shared", "-fPIC", "-o", str(out), str(src)], check=True)
    return out


def test_a_library_without_the_abi_or_of_another_abi_version_is_refused(tmp_path: Path) -> None:
    lone = _fake_library(tmp_path, "lone", "int exs_abi_version(void) { return 1; }\n")
    with pytest.raises(KernelError, match="is not an exe-stream kernel library"):
        kernels.load_library(lone)
    symbols = "".join(f"int {s}(void) {{ return 0; }}\n" for s in sorted(EXPORTED - {"exs_abi_version"}))
    newer = _fake_library(tmp_path, "newer", symbols + "int exs_abi_version(void) { return 99; }\n")
    with pytest.raises(KernelError, match=r"has kernel ABI 99, this exe_stream needs 1; rebuild it"):
        kernels.load_library(newer)


def test_cuda_errors_are_named(kernel_lib: Path) -> None:
    lib = kernels.load_library()
    with pytest.raises(KernelError, match="exs_roi_resample failed with CUDA error 1: invalid argument"):
        kernels._check_call(lib, "exs_roi_resample", 1)
    kernels._check_call(lib, "exs_roi_resample", 0)  # success raises nothing


# ----------------------------------------------------------------------------- descriptors


def _read(desc: kernels.Plane, b: int, r: int, c: int) -> int:
    """The byte the kernel reads for sample (b, r, c): the C ABI's address formula."""
    address = desc.data + b * desc.batch_stride + r * desc.row_stride + c * desc.col_stride
    return ctypes.c_uint8.from_address(address).value


def _interleave(u: torch.Tensor, v: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An NV12 chroma plane [B, ch, 2 cw + pad] (padding filled with 0xAB) and its U and V views."""
    b, ch, cw = u.shape
    uv = torch.full((b, ch, 2 * cw + pad), 0xAB, dtype=torch.uint8, device=u.device)
    uv[..., 0 : 2 * cw : 2] = u
    uv[..., 1 : 2 * cw : 2] = v
    return uv, uv[..., 0 : 2 * cw : 2], uv[..., 1 : 2 * cw : 2]


def _pitched(y: torch.Tensor, pad: int) -> torch.Tensor:
    """A view of ``y`` inside rows ``pad`` bytes longer (padding filled with 0xCD), as decoders
    hand out surfaces with a pitch."""
    b, h, w = y.shape
    buf = torch.full((b, h, w + pad), 0xCD, dtype=torch.uint8, device=y.device)
    buf[..., :w] = y
    return buf[..., :w]


def test_i420_plane_descriptor_is_pointer_and_byte_strides() -> None:
    y = torch.arange(2 * 5 * 7, dtype=torch.int64).to(torch.uint8).reshape(2, 5, 7)
    d = kernels.plane_descriptor(y)
    assert (d.data, d.batch_stride, d.row_stride, d.col_stride) == (y.data_ptr(), 35, 7, 1)
    sliced = y[1:]  # storage offset: the pointer moves, the strides stay
    assert kernels.plane_descriptor(sliced).data == y.data_ptr() + 35


def test_nv12_views_address_the_interleaved_plane_without_a_copy() -> None:
    rng = np.random.default_rng(3)
    u = torch.from_numpy(rng.integers(0, 256, (2, 3, 5), dtype=np.uint8))
    v = torch.from_numpy(rng.integers(0, 256, (2, 3, 5), dtype=np.uint8))
    uv, uview, vview = _interleave(u, v, pad=6)  # pitch 16 for 10 bytes of samples
    du, dv = kernels.plane_descriptor(uview), kernels.plane_descriptor(vview)
    assert du.data == uv.data_ptr() and dv.data == uv.data_ptr() + 1
    assert (du.batch_stride, du.row_stride, du.col_stride) == (3 * 16, 16, 2)
    assert (dv.batch_stride, dv.row_stride, dv.col_stride) == (3 * 16, 16, 2)
    # Every sample read through the descriptors is the plane's own (never the padding).
    for desc, plane in ((du, u), (dv, v)):
        got = [[[_read(desc, b, r, c) for c in range(5)] for r in range(3)] for b in range(2)]
        assert got == plane.tolist()


def _frames(y, u, v, matrix="bt601", full_range=False) -> FrameBatch:
    b = y.shape[0]
    return FrameBatch(
        y=y, u=u, v=v, frame_index=torch.arange(b, dtype=torch.int64),
        pts_seconds=torch.zeros(b, dtype=torch.float64), is_keyframe=torch.ones(b, dtype=torch.bool),
        matrix=matrix, full_range=full_range,
    )


def test_frames_descriptor_carries_sizes_and_colour_format() -> None:
    y = _pitched(torch.zeros(2, 9, 13, dtype=torch.uint8), pad=3)
    _, u, v = _interleave(torch.zeros(2, 5, 7, dtype=torch.uint8), torch.zeros(2, 5, 7, dtype=torch.uint8), pad=2)
    d = kernels.frames_descriptor(_frames(y, u, v, "bt709", True))
    assert (d.batch, d.height, d.width, d.chroma_height, d.chroma_width) == (2, 9, 13, 5, 7)
    assert (d.matrix, d.full_range) == (1, 1)
    assert (d.y.row_stride, d.u.row_stride, d.u.col_stride) == (16, 16, 2)
    d = kernels.frames_descriptor(_frames(y, u, v, "bt601", False))
    assert (d.matrix, d.full_range) == (0, 0)


def test_bad_planes_are_named() -> None:
    with pytest.raises(ValueError, match=r"a plane must be uint8 \[B, rows, cols\], got float32 \(2, 3\)"):
        kernels.plane_descriptor(torch.zeros(2, 3))
    frames = _frames(*(torch.zeros(s, dtype=torch.uint8) for s in ((1, 4, 6), (1, 2, 3), (1, 2, 3))))
    frames.v = torch.zeros(1, 2, 2, dtype=torch.uint8)  # a decoder handing out the wrong view
    with pytest.raises(ValueError, match=r"plane v must be \[1, 2, 3\] for luma \[1, 4, 6\], got \(1, 2, 2\)"):
        kernels.frames_descriptor(frames)


# ----------------------------------------------------------------------------- argument checks


def _small_frames(device: str = "cpu") -> FrameBatch:
    return _frames(*(torch.full(s, 128, dtype=torch.uint8, device=device) for s in ((2, 4, 6), (2, 2, 3), (2, 2, 3))))


ROIS = torch.tensor([[0.0, 0.0, 0.0, 6.0, 4.0]])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dtype=torch.bfloat16), "dtype must be torch.float32 or torch.float16, got torch.bfloat16"),
        (dict(out_hw=(0, 5)), r"out_hw must be two sizes in 1..65535, got \(0, 5\)"),
        (dict(out_hw=(70000, 5)), r"out_hw must be two sizes in 1..65535, got \(70000, 5\)"),
        (dict(out_hw=(1, 2, 3)), r"out_hw must be \(height, width\), got \(1, 2, 3\)"),
        (dict(mode="hsv"), "mode must be 'rgb' or 'gray', got 'hsv'"),
        (dict(mode="gray"), "mode 'gray' needs 1 mean/std values, got 3/3"),
        (dict(rois=torch.zeros(1, 4)), r"rois must be \[K, 5\]"),
        (dict(rois=torch.tensor([[2.0, 0, 0, 4, 4]])), r"roi batch_index outside 0..1"),
        (dict(rois=torch.tensor([[0.0, 3, 0, 1, 4]])), "every roi needs x1 > x0 and y1 > y0"),
    ],
)
def test_bad_arguments_are_named_before_any_library_is_needed(kwargs, message, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))  # checks come first: no library needed
    args = dict(rois=ROIS, out_hw=(2, 2), mode="rgb", mean=(0.0,) * 3, std=(1.0,) * 3, dtype=torch.float32)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        kernels.roi_resample_host(_small_frames(), **args)


def test_each_entry_point_names_the_device_it_needs() -> None:
    with pytest.raises(ValueError, match="roi_resample_cuda needs frames on a CUDA device, got cpu"):
        kernels.roi_resample_cuda(_small_frames(), ROIS, (2, 2))


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_host_entry_point_refuses_device_memory() -> None:
    with pytest.raises(ValueError, match="roi_resample_host needs frames in host memory, got cuda:0"):
        kernels.roi_resample_host(_small_frames("cuda"), ROIS, (2, 2))


def test_the_c_side_rejects_bad_arguments_itself(kernel_lib: Path) -> None:
    """The library checks what it is handed (other callers than kernels.py may use it)."""
    lib = kernels.load_library()
    frames = _small_frames()
    desc = kernels.frames_descriptor(frames)
    rois = ROIS.clone()
    out = torch.zeros(1, 3, 2, 2)
    mean, std = (ctypes.c_float * 3)(0, 0, 0), (ctypes.c_float * 3)(1, 1, 1)

    def call(frames_arg=ctypes.byref(desc), n=1, oh=2, ow=2, mode=0, dtype=0, out_ptr=out.data_ptr()) -> int:
        return lib.exs_roi_resample_host(frames_arg, rois.data_ptr(), n, oh, ow, mode, mean, std, dtype, out_ptr)

    assert call() == 0 and float(out.abs().sum()) > 0
    assert call(mode=2) == call(dtype=5) == call(oh=0) == call(ow=70000) == call(n=-1) == 1
    assert call(frames_arg=None) == call(out_ptr=None) == 1
    bad = kernels.Frames.from_buffer_copy(desc)
    bad.matrix = 3
    assert call(frames_arg=ctypes.byref(bad)) == 1
    bad = kernels.Frames.from_buffer_copy(desc)
    bad.u.col_stride = -2
    assert call(frames_arg=ctypes.byref(bad)) == 1
    assert lib.exs_error_string(1) == b"invalid argument"


@pytest.mark.skipif(HAS_CUDA, reason="checks the error a launch returns on a machine without a GPU")
def test_a_launch_without_a_gpu_returns_a_cuda_error(kernel_lib: Path) -> None:
    lib = kernels.load_library()
    desc = kernels.frames_descriptor(_small_frames())
    out = torch.zeros(1, 3, 2, 2)
    mean, std = (ctypes.c_float * 3)(0, 0, 0), (ctypes.c_float * 3)(1, 1, 1)
    rc = lib.exs_roi_resample(ctypes.byref(desc), ROIS.data_ptr(), 1, 2, 2, 0, mean, std, 0, out.data_ptr(), 0, None)
    assert rc not in (0, 1)  # a CUDA error (no device / no driver), not a crash and not success
    assert lib.exs_check_device(0) != 0
    assert lib.exs_error_string(rc)


# ----------------------------------------------------------------------------- results


def _need_kernel_image() -> None:
    if not kernels.available("cuda"):
        pytest.skip(f"the library has no kernel image for {torch.cuda.get_device_name()} (built for sm_80+)")


def _run(device: str, frames: FrameBatch, rois, out_hw, mode, mean, std, dtype=torch.float32) -> torch.Tensor:
    if device == "cuda":
        _need_kernel_image()
        out = kernels.roi_resample_cuda(frames, rois, out_hw, mode, mean, std, dtype)
        assert out.device.type == "cuda" and out.is_contiguous()
        return out.cpu()
    return kernels.roi_resample_host(frames, rois, out_hw, mode, mean, std, dtype)


def _to_unit(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalised output back to [0, 1] units, where the spec's tolerance applies."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return x.float().cpu() * s + m


def _assert_matches(out, ref, mean, std, device, dtype) -> None:
    assert out.dtype == dtype and out.shape == ref.shape
    err = float((_to_unit(out, mean, std) - _to_unit(ref, mean, std)).abs().max()) if out.numel() else 0.0
    # The host run of the kernel code must be the spec's arithmetic (float32 rounding apart);
    # the GPU and float16 output are held to the spec's tolerance.
    tol = 1e-4 if (device == "cpu" and dtype == torch.float32) else SPEC_TOL
    assert err <= tol, f"max error {err:.2e} in [0, 1] units > {tol:.2e}"


def _random_frames(rng, b, h, w, matrix, full_range, layout, device) -> FrameBatch:
    ch, cw = (h + 1) // 2, (w + 1) // 2
    y = torch.from_numpy(rng.integers(0, 256, (b, h, w), dtype=np.uint8)).to(device)  # full code range: clamping
    u = torch.from_numpy(rng.integers(0, 256, (b, ch, cw), dtype=np.uint8)).to(device)
    v = torch.from_numpy(rng.integers(0, 256, (b, ch, cw), dtype=np.uint8)).to(device)
    if layout == "nv12":
        y = _pitched(y, pad=5)
        _, u, v = _interleave(u, v, pad=4)
    elif layout == "transposed":  # a display transpose is a view: row stride 1, column stride H
        y, u, v = (p.transpose(1, 2).contiguous().transpose(1, 2) for p in (y, u, v))
        assert y.stride()[1:] == (1, h)
    return _frames(y, u, v, matrix, full_range)


def _random_rois(rng, b, h, w, k=14) -> torch.Tensor:
    x0 = rng.uniform(-0.5 * w, w, k)
    y0 = rng.uniform(-0.5 * h, h, k)
    rois = np.stack([rng.integers(0, b, k), x0, y0, x0 + rng.uniform(0.3, 1.5 * w, k),
                     y0 + rng.uniform(0.3, 1.5 * h, k)], 1)
    special = [
        [b - 1, 0.0, 0.0, w, h],  # identity
        [0, 0.2 * w, 0.3 * h, 0.2 * w + 0.3, 0.3 * h + 0.4],  # tiny: well under a pixel
        [0, -5.0 * w, -5.0 * h, 6.0 * w, 6.0 * h],  # huge: the frame is a speck in the middle
        [0, -0.5 * w, 0.25 * h, 0.5 * w, 1.25 * h],  # half outside, left and bottom
        [b - 1, 2.0 * w, 2.0 * h, 3.0 * w, 3.0 * h],  # wholly outside: zeros
    ]
    return torch.tensor(np.concatenate([rois, np.array(special)]), dtype=torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("layout", ["i420", "nv12", "transposed"])
@pytest.mark.parametrize("h, w", [(9, 13), (1, 1), (37, 20)])
@pytest.mark.parametrize(
    "matrix, full_range, mode",
    [("bt601", False, "rgb"), ("bt709", True, "rgb"), ("bt709", False, "gray"), ("bt601", True, "gray")],
)
def test_kernel_matches_the_reference_on_random_frames(
    kernel_lib, device, dtype, layout, h, w, matrix, full_range, mode
) -> None:
    rng = np.random.default_rng(h * 1000 + w * 10 + len(matrix) + full_range)
    frames = _random_frames(rng, 3, h, w, matrix, full_range, layout, device)
    rois = _random_rois(rng, 3, h, w)
    mean, std = ((0.5,), (0.25,)) if mode == "gray" else ((0.1, 0.2, 0.3), (0.5, 0.6, 0.7))
    out = _run(device, frames, rois, (7, 5), mode, mean, std, dtype)
    cpu = _frames(frames.y.cpu(), frames.u.cpu(), frames.v.cpu(), matrix, full_range)
    ref = roi_resample_reference(cpu, rois, (7, 5), mode, mean, std)
    _assert_matches(out, ref, mean, std, device, dtype)
    # The ROI wholly outside the frame is exactly the normalised zero.
    outside = torch.tensor([(0.0 - m) / s for m, s in zip(mean, std)]).view(-1, 1, 1).expand(len(mean), 7, 5)
    torch.testing.assert_close(out[-1].float(), outside, atol=1e-3 if dtype == torch.float16 else 1e-6, rtol=0.0)


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_matches_the_reference_on_real_frames(kernel_lib, device, clips) -> None:
    from exe_stream.detect import get_detector

    cpu = media.clip_frames(clips / "carphone_pristine.mp4", [0, 50])  # 176 x 144, BT.601 limited
    h, w = cpu.height, cpu.width
    frames = _frames(*(p.to(device) for p in (cpu.y, cpu.u, cpu.v)))
    # The detector's letterbox (one big ROI per frame, upscaled) ...
    det = get_detector("blazeface-full")
    letterbox = det.letterbox_rois(2, h, w)
    for dtype in (torch.float32, torch.float16):
        out = _run(device, frames, letterbox, det.input_size, "rgb", det.mean, det.std, dtype)
        ref = roi_resample_reference(cpu, letterbox, det.input_size, "rgb", det.mean, det.std)
        _assert_matches(out, ref, det.mean, det.std, device, dtype)
    # ... and face crops (many small ROIs, one of them past the border), grey 64 x 64 and RGB 48 x 48.
    crops = torch.tensor([[0, 60.0, 20.0, 120.0, 80.0], [1, 55.5, 18.25, 118.0, 80.75], [1, -10.0, 90.0, 40.0, 150.0],
                          [0, 100.0, 30.0, 104.0, 34.0]])
    for mode, mean, std, size in (("gray", (0.0,), (1.0,), (64, 64)), ("rgb", (0.485, 0.456, 0.406),
                                                                       (0.229, 0.224, 0.225), (48, 48))):
        out = _run(device, frames, crops, size, mode, mean, std)
        ref = roi_resample_reference(cpu, crops, size, mode, mean, std)
        _assert_matches(out, ref, mean, std, device, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_no_rois_give_an_empty_batch(kernel_lib, device) -> None:
    out = _run(device, _small_frames(device), torch.zeros(0, 5), (3, 4), "gray", (0.0,), (1.0,), torch.float16)
    assert out.shape == (0, 1, 3, 4) and out.dtype == torch.float16


def test_roi_resample_on_the_cpu_never_touches_the_library(monkeypatch) -> None:
    def boom(*a, **k):
        raise AssertionError("the CPU path asked for the kernel library")

    monkeypatch.setattr(kernels, "available", boom)
    monkeypatch.setattr(kernels, "load_library", boom)
    out = roi.roi_resample(_small_frames(), ROIS, (2, 3))
    assert out.shape == (1, 3, 2, 3)


# ----------------------------------------------------------------------------- GPU only


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
class TestOnTheGpu:
    def test_roi_resample_dispatches_to_the_kernel(self, kernel_lib, monkeypatch) -> None:
        if torch.cuda.get_device_capability() >= (8, 0):
            assert kernels.available("cuda")  # sm_80 / sm_90 machine code, compute_90 PTX
        _need_kernel_image()
        calls = []
        real = kernels.roi_resample_cuda
        monkeypatch.setattr(kernels, "roi_resample_cuda", lambda *a, **k: calls.append(1) or real(*a, **k))
        rng = np.random.default_rng(11)
        frames = _random_frames(rng, 2, 33, 47, "bt709", False, "nv12", "cuda")
        rois = _random_rois(rng, 2, 33, 47)
        out = roi.roi_resample(frames, rois, (16, 12), "rgb", (0.5,) * 3, (0.5,) * 3)
        assert calls == [1] and out.device.type == "cuda" and out.dtype == torch.float32
        cpu = _frames(frames.y.cpu(), frames.u.cpu(), frames.v.cpu(), "bt709", False)
        _assert_matches(out.cpu(), roi_resample_reference(cpu, rois, (16, 12), "rgb", (0.5,) * 3, (0.5,) * 3),
                        (0.5,) * 3, (0.5,) * 3, "cuda", torch.float32)

    def test_roi_resample_falls_back_to_torch_without_the_library(self, tmp_path, monkeypatch) -> None:
        monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))
        assert not kernels.available("cuda")
        frames = _small_frames("cuda")
        out = roi.roi_resample(frames, ROIS, (2, 3))
        assert out.device.type == "cuda"
        torch.testing.assert_close(out.cpu(), roi.roi_resample(_small_frames(), ROIS, (2, 3)))

    def test_kernel_runs_on_the_current_stream(self, kernel_lib) -> None:
        _need_kernel_image()
        rng = np.random.default_rng(5)
        frames = _random_frames(rng, 2, 64, 80, "bt601", False, "i420", "cuda")
        rois = _random_rois(rng, 2, 64, 80)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            out = kernels.roi_resample_cuda(frames, rois, (32, 32), "rgb", (0.0,) * 3, (1.0,) * 3)
            out = out * 1.0  # a torch op queued behind the kernel on the same stream
        stream.synchronize()
        cpu = _frames(frames.y.cpu(), frames.u.cpu(), frames.v.cpu())
        ref = roi_resample_reference(cpu, rois, (32, 32), "rgb", (0.0,) * 3, (1.0,) * 3)
        _assert_matches(out.cpu(), ref, (0.0,) * 3, (1.0,) * 3, "cuda", torch.float32)

    def test_more_rois_than_one_grid_holds(self, kernel_lib) -> None:
        _need_kernel_image()
        # 70000 ROIs > 65535 blocks along z: the kernel's grid-stride loop covers the rest.
        rng = np.random.default_rng(9)
        frames = _random_frames(rng, 4, 30, 40, "bt601", False, "i420", "cuda")
        rois = _random_rois(rng, 4, 30, 40, k=70000 - 5)
        out = kernels.roi_resample_cuda(frames, rois, (2, 3), "rgb", (0.0,) * 3, (1.0,) * 3).cpu()
        cpu = _frames(frames.y.cpu(), frames.u.cpu(), frames.v.cpu())
        host = kernels.roi_resample_host(cpu, rois, (2, 3), "rgb", (0.0,) * 3, (1.0,) * 3)
        assert float((out - host).abs().max()) <= SPEC_TOL

    def test_large_letterbox_matches(self, kernel_lib) -> None:
        _need_kernel_image()
        rng = np.random.default_rng(13)
        frames = _random_frames(rng, 2, 1080, 1920, "bt709", False, "nv12", "cuda")
        rois = roi.letterbox_rois(2, 1080, 1920)
        out = kernels.roi_resample_cuda(frames, rois, (192, 192), "rgb", (0.5,) * 3, (0.5,) * 3, torch.float16)
        cpu = _frames(frames.y.cpu().contiguous(), frames.u.cpu().contiguous(), frames.v.cpu().contiguous(), "bt709")
        ref = roi.roi_resample(cpu, rois, (192, 192), "rgb", (0.5,) * 3, (0.5,) * 3)
        _assert_matches(out.cpu(), ref, (0.5,) * 3, (0.5,) * 3, "cuda", torch.float16)
