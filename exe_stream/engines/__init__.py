"""Inference engines: run an emotion network on a batch of face crops.

An engine wraps one network (one model card) on one device and maps float32/float16 NCHW
crops to float32 logits (``Engine.run``); ``EmotionModel.predict`` applies the softmax and
averages ensemble members. Backends, one file each, registered by name:

- ``torch`` (``torch_engine``): the reference. On the CPU the plain fp32 module. On CUDA, as the
  build profile says: fp16 (half weights), channels_last, and one CUDA graph per fixed batch
  bucket, inputs padded up to the bucket (the CUDA parts are unverified: no GPU was lent).
- ``onnxruntime`` (``onnxruntime_engine``): the network exported to ONNX (``onnx_export``,
  dynamic batch axis, cached), run by an ``InferenceSession`` with the CPU provider, or the CUDA
  provider with I/O bound to torch CUDA tensors (the CUDA provider path is unverified).
- ``tensorrt`` (``tensorrt_engine``): an fp16 (or fp32) plan built from the ONNX export with a
  dynamic-batch optimisation profile, cached per GPU, compute capability, TensorRT version and
  model, run on torch CUDA tensors on the current stream. Unverified: TensorRT could not be
  installed where this was written.

``auto`` is torch on the CPU, and on CUDA tensorrt when TensorRT (and the ONNX exporter) can be
imported, else torch. Heavy packages (onnxruntime, onnx, onnxscript, tensorrt) are imported
only when their engine is built; a missing one raises ``EngineError`` naming it.

Build profiles (precision, buckets, batch ranges, opset) are ``engines/<name>.toml``
(``profile.load_profile``). Exported ONNX files and plans are cached in ``cache_dir()``:
``$EXE_STREAM_ENGINE_CACHE`` if set, else the repository's ``engines/`` directory when it
exists and is writable (source checkout or editable install; ``*.onnx`` and ``*.plan`` are
git-ignored there), else ``$XDG_CACHE_HOME/exe-stream/engines`` (``~/.cache/exe-stream/engines``),
so a read-only installed package still works.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

import torch
from torch import nn

from .. import failsafe
from .profile import EngineError, EngineProfile, available_profiles, load_profile, profiles_dir

if TYPE_CHECKING:
    from ..models import EmotionModel, ModelCard

__all__ = [
    "ENGINE_NAMES",
    "Engine",
    "EngineError",
    "EngineProfile",
    "attach_engine",
    "available_profiles",
    "cache_dir",
    "engine_key",
    "get_engine",
    "load_profile",
    "resolve_engine",
]

# What --engine accepts; "auto" resolves to one of the others (resolve_engine).
ENGINE_NAMES = ("auto", "torch", "onnxruntime", "tensorrt")
# Environment variable naming the directory for exported ONNX files and TensorRT plans.
CACHE_ENV = "EXE_STREAM_ENGINE_CACHE"


@runtime_checkable
class Engine(Protocol):
    """One network on one device.

    ``run(x)``: x is float32 or float16 [K, C, H, W] NCHW (the card's channels and input size,
    normalised as the card says), on ``device`` (other devices are copied there), any K >= 0.
    Returns float32 logits [K, n_classes] on ``device``, row i for crop i.
    """

    # Registry name: "torch", "onnxruntime" or "tensorrt".
    name: str
    # Where inputs are read and outputs written.
    device: torch.device

    def run(self, x: torch.Tensor) -> torch.Tensor: ...


def cache_dir() -> Path:
    """Where exported ONNX files and TensorRT plans are kept (see the module docstring)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    repo = profiles_dir()
    if repo.is_dir() and os.access(repo, os.W_OK):
        return repo
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "exe-stream" / "engines"


def _importable(*modules: str) -> bool:
    try:
        for m in modules:
            importlib.import_module(m)
    except (ImportError, OSError):  # OSError: a package whose shared libraries are missing
        return False
    return True


def tensorrt_available() -> bool:
    """Whether TensorRT and the ONNX exporter (onnx, onnxscript) can be imported."""
    return _importable("tensorrt", "onnx", "onnxscript")


def resolve_engine(name: str, device: str | torch.device) -> str:
    """The engine that runs on ``device`` for ``--engine name``; fails early and clearly.

    "auto": torch on the CPU; on CUDA tensorrt when ``tensorrt_available()``, else torch.
    "onnxruntime" and "tensorrt" check that their packages import (and tensorrt that the device
    is CUDA) so a scan fails before its first film, not per film. Raises EngineError.
    """
    dev = torch.device(device)
    if name not in ENGINE_NAMES:
        raise EngineError(f"unknown engine {name!r}; expected one of {list(ENGINE_NAMES)}")
    if name == "auto":
        return "tensorrt" if dev.type == "cuda" and tensorrt_available() else "torch"
    if name == "onnxruntime":
        from .onnx_export import require_exporter
        from .onnxruntime_engine import import_onnxruntime, providers_for

        providers_for(import_onnxruntime(), dev)
        require_exporter()
    elif name == "tensorrt":
        from .onnx_export import require_exporter
        from .tensorrt_engine import import_tensorrt, require_cuda

        import_tensorrt()
        require_cuda(dev)
        require_exporter()
    return name


def engine_key(name: str, device: str | torch.device, profile: EngineProfile) -> dict[str, Any] | None:
    """What, besides the model, decides an engine's outputs; None for the reference (torch in
    fp32), so scans made before engines existed keep their resume keys. ``name`` is resolved."""
    dev = torch.device(device)
    if name == "torch":
        precision = profile.precision if dev.type == "cuda" else "fp32"
        return None if precision == "fp32" else {"engine": "torch", "precision": precision}
    if name == "onnxruntime":
        return {"engine": name, "precision": "fp32", "opset": profile.opset}
    if name == "tensorrt":
        return {"engine": name, "precision": profile.precision, "opset": profile.opset}
    raise EngineError(f"unknown engine {name!r}; expected one of {list(ENGINE_NAMES[1:])}")


def _torch(network: nn.Module, card: ModelCard, device: torch.device, profile: EngineProfile,
           cache: Path | None) -> Engine:
    from .torch_engine import TorchEngine

    return TorchEngine(network, card, device, profile)


def _onnxruntime(network: nn.Module, card: ModelCard, device: torch.device, profile: EngineProfile,
                 cache: Path | None) -> Engine:
    from .onnxruntime_engine import OnnxRuntimeEngine

    return OnnxRuntimeEngine(network, card, device, profile, cache)


def _tensorrt(network: nn.Module, card: ModelCard, device: torch.device, profile: EngineProfile,
              cache: Path | None) -> Engine:
    from .tensorrt_engine import TensorRTEngine

    return TensorRTEngine(network, card, device, profile, cache)


# Engine name -> builder(network, card, device, profile, cache_dir or None).
ENGINES: dict[str, Callable[..., Engine]] = {"torch": _torch, "onnxruntime": _onnxruntime, "tensorrt": _tensorrt}


def get_engine(
    name: str,
    network: nn.Module,
    card: ModelCard,
    device: str | torch.device,
    profile: EngineProfile | str | os.PathLike = "default",
    cache: str | os.PathLike | None = None,
) -> Engine:
    """Build engine ``name`` ("auto" resolved by ``resolve_engine``) for ``network``, the
    network of ``card`` (an nn.Module mapping float32 [K, C, H, W] to logits [K, n_classes],
    in eval mode, on ``device``). ``profile``: an EngineProfile, a profile name or a TOML path.
    ``cache``: directory for ONNX files and plans (default ``cache_dir()``)."""
    dev = torch.device(device)
    resolved = resolve_engine(name, dev)
    prof = load_profile(profile)
    return ENGINES[resolved](network, card, dev, prof, Path(cache) if cache is not None else None)


# Largest difference of the softmax probabilities allowed between an accelerated engine's first
# batch and the plain fp32 torch network (exe_stream.failsafe), by the engine's precision.
PARITY_TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2}
# Engine -> its accelerated component on CUDA (failsafe.COMPONENTS).
COMPONENT_OF_ENGINE = {"torch": "cuda-graphs", "onnxruntime": "onnxruntime-cuda", "tensorrt": "tensorrt"}


def accelerated_component(engine: Engine) -> str | None:
    """The ``failsafe.COMPONENTS`` name of a built engine, or None for the verified path
    itself (anything on the CPU; plain fp32 torch on CUDA)."""
    if engine.device.type != "cuda":
        return None
    if engine.name == "torch":
        plain = not (getattr(engine, "use_graphs", False) or getattr(engine, "channels_last", False)
                     or getattr(engine, "dtype", torch.float32) != torch.float32)
        return None if plain else COMPONENT_OF_ENGINE["torch"]
    return COMPONENT_OF_ENGINE.get(engine.name)


def _probability_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    return failsafe.max_abs_diff(torch.softmax(got.float(), dim=1), torch.softmax(want.float(), dim=1))


class CheckedEngine:
    """An accelerated engine that checks itself against the plain torch network on its first
    batch and gives way to it when it fails or differs (``exe_stream.failsafe``).

    ``run`` has the Engine contract; ``name`` is the wrapped engine's, or "torch" once the
    component is switched off (what then produces the logits)."""

    def __init__(self, engine: Engine, network: nn.Module, component: str, tolerance: float) -> None:
        self.engine = engine
        self.network = network
        self.component = component
        self.tolerance = tolerance
        self.device = engine.device

    @property
    def name(self) -> str:
        return "torch" if failsafe.current().status(self.component) == "off" else self.engine.name

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """float32/float16 [K, C, H, W] -> float32 logits [K, n_classes] on ``device``."""
        return failsafe.current().run(self.component, lambda: self.engine.run(x), lambda: self._reference(x),
                                      _probability_diff, self.tolerance)

    def _reference(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.network(x.to(self.device, torch.float32)).float()

    def __repr__(self) -> str:
        return f"CheckedEngine({self.engine!r}, {self.component})"


def checked(engine: Engine, network: nn.Module, profile: EngineProfile) -> Engine:
    """``engine`` wrapped in a CheckedEngine when it is an accelerated component, else itself."""
    component = accelerated_component(engine)
    if component is None:
        return engine
    precision = profile.precision if engine.name != "onnxruntime" else "fp32"
    return CheckedEngine(engine, network, component, PARITY_TOLERANCE.get(precision, PARITY_TOLERANCE["fp16"]))


def attach_engine(
    model: EmotionModel,
    name: str,
    profile: EngineProfile | str | os.PathLike = "default",
    cache: str | os.PathLike | None = None,
) -> EmotionModel:
    """A copy of ``model`` whose members run through engine ``name`` (one engine per member,
    on ``model.device``); its ``predict`` then uses them. Accelerated engines (``accelerated_component``)
    are wrapped in a CheckedEngine: checked against the plain network on their first batch."""
    prof = load_profile(profile)
    engines = tuple(
        checked(get_engine(name, net, card, model.device, prof, cache), net, prof)
        for card, net in zip(model.cards, model.networks)
    )
    return dataclasses.replace(model, engines=engines)
