"""ctypes bindings of the CUDA kernels in ``kernels/`` (C ABI: ``kernels/exe_stream_kernels.h``).

``roi_resample_cuda`` is the GPU implementation of the crop/resize kernel spec
(``exe_stream.roi.roi_resample``, DESIGN.md): YUV 4:2:0 frames on the device, I420 planes or
the strided U/V views of an NV12 plane, straight to normalised float32/float16 NCHW crops,
one launch for all ROIs of a batch (face crops and whole-frame letterboxes alike).
``roi.roi_resample`` dispatches to it when the frames are on a CUDA device and the library
loads and has a kernel image for that device.

UNVERIFIED ON A GPU: the kernel launch (``roi_resample_cuda``, ``exs_roi_resample``) has been
compiled (sm_80, sm_90 + compute_90 PTX) but never run here; its tests are marked ``cuda``
and skip without a device. What runs without a GPU is tested: the argument checks, the plane
descriptors (I420 and NV12 views), and the kernel's own per-pixel code, which the library also
exports as a CPU loop (``roi_resample_host``) that is held to the torch reference.

The library is found, in this order, at ``$EXE_STREAM_KERNELS`` (a file or a directory; when
set, the only place looked), ``exe_stream/_lib/``, and ``build/`` of a source checkout. Build
it with ``cmake -S . -B build && cmake --build build -j`` (README, "GPU path").
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path
from typing import Sequence

import torch

from .errors import ExeStreamError
from .roi_checks import Mode, _check_matrix, _check_mode, _check_rois
from .types import FrameBatch

LIBRARY_NAME = "libexe_stream_kernels.so"
ENV_VAR = "EXE_STREAM_KERNELS"
ABI_VERSION = 1  # EXS_ABI_VERSION of exe_stream_kernels.h
MAX_OUT_SIDE = 65535  # kMaxOutSide of roi_resample.cu
BUILD_HINT = "build it with: cmake -S . -B build && cmake --build build -j"

# Enumerations of exe_stream_kernels.h.
_MATRIX = {"bt601": 0, "bt709": 1}
_MODE = {"rgb": 0, "gray": 1}
_DTYPE = {torch.float32: 0, torch.float16: 1}
_INT32_MAX = 2**31 - 1


class KernelError(ExeStreamError):
    """The kernel library is missing, does not load, is of another ABI, or a call failed."""


class Plane(ctypes.Structure):
    """``exs_plane``: byte address of sample (b, row, col) is
    ``data + b * batch_stride + row * row_stride + col * col_stride``."""

    _fields_ = [
        ("data", ctypes.c_void_p),
        ("batch_stride", ctypes.c_int64),
        ("row_stride", ctypes.c_int64),
        ("col_stride", ctypes.c_int64),
    ]


class Frames(ctypes.Structure):
    """``exs_frames``: the three planes of a batch of YUV 4:2:0 frames and their format."""

    _fields_ = [
        ("y", Plane),
        ("u", Plane),
        ("v", Plane),
        ("batch", ctypes.c_int32),
        ("height", ctypes.c_int32),
        ("width", ctypes.c_int32),
        ("chroma_height", ctypes.c_int32),
        ("chroma_width", ctypes.c_int32),
        ("matrix", ctypes.c_int32),
        ("full_range", ctypes.c_int32),
    ]


def candidate_paths() -> list[Path]:
    """Where ``load_library`` looks, in order: ``$EXE_STREAM_KERNELS`` alone when it is set
    (a file, or a directory holding libexe_stream_kernels.so), else the package's ``_lib/``
    and the source checkout's ``build/``."""
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env).expanduser()
        return [p / LIBRARY_NAME if p.is_dir() else p]
    here = Path(__file__).resolve().parent
    return [here / "_lib" / LIBRARY_NAME, here.parent / "build" / LIBRARY_NAME]


def load_library(path: str | Path | None = None) -> ctypes.CDLL:
    """The kernel library, loaded once per path (``path``, or the first of ``candidate_paths``
    that exists), with its functions' argument types set and its ABI version checked.

    Loading needs no GPU (the CUDA runtime is linked statically and starts on first use).
    Raises KernelError naming every place looked when none holds the library.
    """
    if path is not None:
        return _load(str(Path(path).expanduser().resolve()))
    tried = candidate_paths()
    for p in tried:
        if p.is_file():
            return _load(str(p.resolve()))
    where = ", ".join(str(p) for p in tried)
    raise KernelError(f"{LIBRARY_NAME} not found (looked in: {where}; set {ENV_VAR} to its path, or {BUILD_HINT})")


@functools.lru_cache(maxsize=None)
def _load(path: str) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise KernelError(f"cannot load {path}: {e}") from e
    try:
        lib.exs_abi_version.restype = ctypes.c_int
        lib.exs_abi_version.argtypes = []
        version = lib.exs_abi_version()
        common = [ctypes.POINTER(Frames), ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32,
                  ctypes.c_int32, ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_float), ctypes.c_int32,
                  ctypes.c_void_p]
        lib.exs_roi_resample.restype = ctypes.c_int
        lib.exs_roi_resample.argtypes = [*common, ctypes.c_int32, ctypes.c_void_p]
        lib.exs_roi_resample_host.restype = ctypes.c_int
        lib.exs_roi_resample_host.argtypes = common
        lib.exs_check_device.restype = ctypes.c_int
        lib.exs_check_device.argtypes = [ctypes.c_int32]
        lib.exs_error_string.restype = ctypes.c_char_p
        lib.exs_error_string.argtypes = [ctypes.c_int]
    except AttributeError as e:
        raise KernelError(f"{path} is not an exe-stream kernel library: {e}") from e
    if version != ABI_VERSION:
        raise KernelError(
            f"{path} has kernel ABI {version}, this exe_stream needs {ABI_VERSION}; rebuild it ({BUILD_HINT})"
        )
    return lib


def _check_call(lib: ctypes.CDLL, name: str, rc: int) -> None:
    if rc != 0:
        msg = lib.exs_error_string(rc)
        raise KernelError(f"{name} failed with CUDA error {rc}: {msg.decode() if msg else 'unknown'}")


@functools.lru_cache(maxsize=None)
def _device_ok(path: str, index: int) -> bool:
    with torch.cuda.device(index):  # so the library finds that device current and switches nothing
        return _load(path).exs_check_device(index) == 0


def available(device: torch.device | str | int | None = None) -> bool:
    """True when the library loads and holds a kernel image that the CUDA ``device`` (default:
    the current one) can run; False otherwise (no library, no CUDA, an older GPU)."""
    if not torch.cuda.is_available():
        return False
    d = torch.device("cuda", device) if isinstance(device, int) else torch.device(device or "cuda")
    if d.type != "cuda":
        return False
    try:
        lib = load_library()
    except KernelError:
        return False
    return _device_ok(lib._name, torch.cuda.current_device() if d.index is None else d.index)


def plane_descriptor(plane: torch.Tensor) -> Plane:
    """The ``exs_plane`` of a uint8 [B, rows, cols] tensor, any device: its data pointer
    (storage offset included) and its strides in bytes.

    Works for contiguous I420 planes and for strided views, e.g. the U and V planes of an NV12
    frame, ``uv[..., 0::2]`` and ``uv[..., 1::2]`` (column stride 2, pointers one byte apart,
    row stride the interleaved plane's pitch) or a display transpose (row stride 1, column
    stride the height): no copy is made, so the tensor must stay alive
    (and unmodified) until the work that uses the descriptor has run.
    """
    if plane.dtype != torch.uint8 or plane.ndim != 3:
        raise ValueError(f"a plane must be uint8 [B, rows, cols], got {str(plane.dtype).removeprefix('torch.')} "
                         f"{tuple(plane.shape)}")
    # uint8: element strides are byte strides (torch strides are never negative).
    return Plane(plane.data_ptr(), *plane.stride())


def frames_descriptor(frames: FrameBatch) -> Frames:
    """The ``exs_frames`` of a FrameBatch (planes on any device; see ``plane_descriptor``)."""
    _check_matrix(frames.matrix)
    b, h, w = frames.y.shape
    ch, cw = (h + 1) // 2, (w + 1) // 2
    for name, p in (("u", frames.u), ("v", frames.v)):
        if tuple(p.shape) != (b, ch, cw):
            raise ValueError(f"plane {name} must be [{b}, {ch}, {cw}] for luma [{b}, {h}, {w}], got {tuple(p.shape)}")
    if max(b, h, w) > _INT32_MAX:
        raise ValueError(f"frames too large for the kernel: {(b, h, w)}")
    return Frames(
        plane_descriptor(frames.y), plane_descriptor(frames.u), plane_descriptor(frames.v),
        b, h, w, ch, cw, _MATRIX[frames.matrix], int(bool(frames.full_range)),
    )


def _prepare(
    frames: FrameBatch,
    rois: torch.Tensor,
    out_hw: tuple[int, int],
    mode: str,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: torch.dtype,
) -> tuple[Frames, torch.Tensor, torch.Tensor, ctypes.Array, ctypes.Array]:
    """Checks shared by the GPU and CPU entry points; returns the frames' descriptor, the rois as
    float32 [K, 5] contiguous on the frames' device, the empty output, and mean/std as floats."""
    channels = _check_mode(mode, mean, std)
    if dtype not in _DTYPE:
        raise ValueError(f"dtype must be torch.float32 or torch.float16, got {dtype}")
    try:
        oh, ow = (int(s) for s in out_hw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"out_hw must be (height, width), got {out_hw!r}") from e
    if not (1 <= oh <= MAX_OUT_SIDE and 1 <= ow <= MAX_OUT_SIDE):
        raise ValueError(f"out_hw must be two sizes in 1..{MAX_OUT_SIDE}, got {(oh, ow)}")
    _check_rois(rois, len(frames))
    if rois.shape[0] > _INT32_MAX:
        raise ValueError(f"too many rois for one call: {rois.shape[0]}")
    desc = frames_descriptor(frames)
    rois = rois.to(device=frames.device, dtype=torch.float32).contiguous()
    out = torch.empty((rois.shape[0], channels, oh, ow), device=frames.device, dtype=dtype)
    c_mean = (ctypes.c_float * 3)(*[float(m) for m in mean])
    c_std = (ctypes.c_float * 3)(*[float(s) for s in std])
    return desc, rois, out, c_mean, c_std


def roi_resample_cuda(
    frames: FrameBatch,
    rois: torch.Tensor,
    out_hw: tuple[int, int],
    mode: Mode = "rgb",
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``roi.roi_resample`` on the GPU with the CUDA kernel (unverified on a GPU: module docstring).

    frames: FrameBatch on a CUDA device (uint8 planes; I420 or strided NV12 U/V views); rois:
    float [K, 5] (frame row, x0, y0, x1, y1) in source pixel edge coordinates, any device.
    Returns ``dtype`` (float32 or float16) [K, 3 or 1, h, w], contiguous NCHW on the frames'
    device, enqueued on the device's current torch stream (asynchronous, like a torch op).
    """
    if frames.device.type != "cuda":
        raise ValueError(f"roi_resample_cuda needs frames on a CUDA device, got {frames.device}")
    desc, rois, out, c_mean, c_std = _prepare(frames, rois, out_hw, mode, mean, std, dtype)
    if rois.shape[0] == 0:
        return out
    lib = load_library()
    index = frames.device.index if frames.device.index is not None else torch.cuda.current_device()
    with torch.cuda.device(index):
        stream = torch.cuda.current_stream(index).cuda_stream  # the raw cudaStream_t, as an int
        rc = lib.exs_roi_resample(ctypes.byref(desc), rois.data_ptr(), rois.shape[0], out.shape[2], out.shape[3],
                                  _MODE[mode], c_mean, c_std, _DTYPE[dtype], out.data_ptr(), index, stream)
    _check_call(lib, "exs_roi_resample", rc)
    return out


def roi_resample_host(
    frames: FrameBatch,
    rois: torch.Tensor,
    out_hw: tuple[int, int],
    mode: Mode = "rgb",
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The CUDA kernel's per-pixel code run on the CPU (``exs_roi_resample_host``): same
    arguments and result as ``roi_resample_cuda`` for frames in host memory. Single-threaded
    and slow; it exists to test the kernel's arithmetic and addressing without a GPU.
    """
    if frames.device.type != "cpu":
        raise ValueError(f"roi_resample_host needs frames in host memory, got {frames.device}")
    desc, rois, out, c_mean, c_std = _prepare(frames, rois, out_hw, mode, mean, std, dtype)
    lib = load_library()
    rc = lib.exs_roi_resample_host(ctypes.byref(desc), rois.data_ptr(), rois.shape[0], out.shape[2], out.shape[3],
                                   _MODE[mode], c_mean, c_std, _DTYPE[dtype], out.data_ptr())
    _check_call(lib, "exs_roi_resample_host", rc)
    return out
