"""Engine build profiles: ``engines/<name>.toml`` (precision, batch buckets and ranges, opset).

A profile is read with ``load_profile(name_or_path)``. Names are looked up in the repository's
top-level ``engines/`` directory (a source checkout or editable install); a path to any
``.toml`` file works too. The name "default" falls back to ``EngineProfile()``, whose values
are those of ``engines/default.toml`` (a test keeps the two equal), so an installed wheel,
which has no ``engines/`` directory, behaves like a checkout.

File layout (every key optional; unknown keys are refused)::

    precision = "fp16"            # fp16 | fp32, arithmetic on CUDA
    [torch]
    channels_last = true
    cuda_graphs = true
    buckets = [1, 2, 4, ..., 256]
    [onnx]
    opset = 18
    [tensorrt]
    min_batch = 1
    opt_batch = 32
    max_batch = 256
    workspace_mib = 2048
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from ..errors import ExeStreamError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package
    import tomli as tomllib  # type: ignore[no-redef]

PRECISIONS = ("fp16", "fp32")
# Oldest ONNX opset the exporter (torch.onnx.export with dynamo=True) writes.
MIN_OPSET = 18
# TOML table -> the EngineProfile fields it holds ("" is the top level).
SECTIONS: dict[str, tuple[str, ...]] = {
    "": ("precision",),
    "torch": ("channels_last", "cuda_graphs", "buckets"),
    "onnx": ("opset",),
    "tensorrt": ("min_batch", "opt_batch", "max_batch", "workspace_mib"),
}


class EngineError(ExeStreamError):
    """(Re-exported as ``exe_stream.engines.EngineError``.) An inference engine cannot be built or run: unknown name, missing package, no CUDA,
    bad build profile, failed export or build."""


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def profiles_dir() -> Path:
    """The repository's top-level ``engines/`` directory (it exists in a source checkout or an
    editable install, not in an installed wheel)."""
    return Path(__file__).resolve().parents[2] / "engines"


@dataclass(frozen=True)
class EngineProfile:
    """How the engines are built. The CPU always computes in fp32; the rest shapes CUDA engines."""

    # Profile name: the TOML file's stem ("default" for the built-in defaults).
    name: str = "default"
    # Arithmetic on CUDA: "fp16" (torch half weights; TensorRT plan from an fp16 ONNX) or "fp32".
    precision: Literal["fp16", "fp32"] = "fp16"
    # torch on CUDA: weights and inputs in channels_last memory format.
    channels_last: bool = True
    # torch on CUDA: replay one captured CUDA graph per batch bucket.
    cuda_graphs: bool = True
    # torch CUDA graphs: fixed batch sizes, ascending; batches are padded up to the smallest
    # bucket that holds them, and split into chunks of the largest.
    buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    # ONNX opset of exported files (onnxruntime and TensorRT engines), >= MIN_OPSET.
    opset: int = 18
    # TensorRT optimisation profile: smallest, most frequent and largest batch.
    min_batch: int = 1
    opt_batch: int = 32
    max_batch: int = 256
    # TensorRT builder workspace limit in MiB.
    workspace_mib: int = 2048

    def __post_init__(self) -> None:
        object.__setattr__(self, "buckets", tuple(self.buckets))
        where = f"engine profile {self.name!r}"
        if self.precision not in PRECISIONS:
            raise EngineError(f"{where}: precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        for flag in ("channels_last", "cuda_graphs"):
            if not isinstance(getattr(self, flag), bool):
                raise EngineError(f"{where}: {flag} must be true or false, got {getattr(self, flag)!r}")
        b = self.buckets
        if (not b or not all(_is_int(v) and v >= 1 for v in b)
                or any(x >= y for x, y in zip(b, b[1:]))):
            raise EngineError(f"{where}: buckets must be positive integers in ascending order, got {list(b)}")
        if not _is_int(self.opset) or self.opset < MIN_OPSET:
            raise EngineError(f"{where}: opset must be an integer >= {MIN_OPSET}, got {self.opset!r}")
        sizes = (self.min_batch, self.opt_batch, self.max_batch)
        if not all(_is_int(v) and v >= 1 for v in sizes) or not sizes[0] <= sizes[1] <= sizes[2]:
            raise EngineError(
                f"{where}: TensorRT batches must satisfy 1 <= min_batch <= opt_batch <= max_batch, "
                f"got min_batch={self.min_batch!r} opt_batch={self.opt_batch!r} max_batch={self.max_batch!r}"
            )
        if not _is_int(self.workspace_mib) or self.workspace_mib < 1:
            raise EngineError(f"{where}: workspace_mib must be a positive integer, got {self.workspace_mib!r}")

    def settings(self) -> dict[str, Any]:
        """Every field but the name (what an engine's output depends on, for cache keys)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}


def available_profiles() -> list[str]:
    """Names of the profiles in ``profiles_dir()`` (always including "default")."""
    d = profiles_dir()
    names = {p.stem for p in d.glob("*.toml")} if d.is_dir() else set()
    return sorted(names | {"default"})


def profile_from_toml(data: dict[str, Any], name: str, where: str) -> EngineProfile:
    """An EngineProfile from a parsed TOML document (see the module docstring for the layout)."""
    values: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key in SECTIONS and key:
            for sub, v in value.items():
                if sub not in SECTIONS[key]:
                    raise EngineError(f"{where}: unknown key {sub!r} in [{key}]; allowed: {list(SECTIONS[key])}")
                values[sub] = v
        elif key in SECTIONS[""]:
            values[key] = value
        else:
            allowed = list(SECTIONS[""]) + [f"[{s}]" for s in SECTIONS if s]
            raise EngineError(f"{where}: unknown key {key!r}; allowed: {allowed}")
    return EngineProfile(name=name, **values)


def load_profile(spec: str | os.PathLike | EngineProfile = "default") -> EngineProfile:
    """An engine build profile: a name (``engines/<name>.toml``), a path to a TOML file, or an
    EngineProfile (returned as is). "default" without ``engines/default.toml`` gives
    ``EngineProfile()``."""
    if isinstance(spec, EngineProfile):
        return spec
    s = str(spec)
    if isinstance(spec, os.PathLike) or s.endswith(".toml") or os.sep in s:
        path = Path(s)
        if not path.is_file():
            raise EngineError(f"engine profile file {s!r} does not exist")
    else:
        path = profiles_dir() / f"{s}.toml"
        if not path.is_file():
            if s == "default":
                return EngineProfile()
            raise EngineError(
                f"unknown engine profile {s!r}; available: {available_profiles()}, or a path to a .toml file"
            )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise EngineError(f"engine profile {str(path)!r} is not valid TOML: {e}") from e
    return profile_from_toml(data, path.stem, str(path))
