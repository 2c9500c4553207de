"""The TensorRT engine: a plan built from the network's ONNX export, run on torch CUDA tensors.

UNVERIFIED: TensorRT cannot be installed on the machines this was written on, and no GPU was
available, so this module has never run. What runs without TensorRT is tested: the import
error, the CUDA requirement, the plan file naming and the optimisation-profile shapes, and the
fp16 ONNX export the plan is built from (against torch with onnxruntime on the CPU).

Build (TensorRT 10 / 11 Python API; names from NVIDIA's "Migrating from TensorRT 8.x to 10.x"
Python guide and the Builder / IBuilderConfig / IOptimizationProfile reference):

- the ONNX export in the profile's precision (``onnx_export.export_onnx``; "fp16" exports a
  half network with float16 input and logits) is parsed by ``trt.OnnxParser`` into a
  strongly typed network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``): TensorRT 11
  removed ``BuilderFlag.FP16`` and weak typing (deprecated in 10.12), so precision comes from
  the ONNX file's types on every version that has strong typing (10.0+);
- one optimisation profile on the input: batch min/opt/max from the build profile,
  channels and size from the card (``profile_shapes``);
- workspace limit ``MemoryPoolType.WORKSPACE``; ``build_serialized_network``.

Cache: ``<cache>/<card>-<onnx key>-<gpu>-sm<major><minor>-trt<version>-<settings>.plan``
(``plan_name``): one plan per model export, GPU model and compute capability, TensorRT version
and build settings. Plans are written under a temporary name and renamed; a plan that fails to
deserialise (e.g. a TensorRT upgrade with the same version string) is rebuilt.

Run: input and output are torch CUDA tensors whose ``data_ptr()`` are set as tensor addresses
(``set_tensor_address``), the batch shape set with ``set_input_shape``, and
``execute_async_v3`` enqueued on the engine's own CUDA stream, which waits for torch's current
stream first and which torch's current stream waits for after (events, no host
synchronisation). Not on torch's current stream itself: that is usually the legacy default
stream, on which TensorRT warns of, and adds, extra synchronisation. Batches larger than max_batch run in chunks; chunks
smaller than min_batch are zero-padded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..atomic import atomic_write_bytes
from .onnx_export import export_onnx
from .profile import EngineError, EngineProfile
from .torch_engine import pad_to

if TYPE_CHECKING:
    from ..models import ModelCard


def import_tensorrt() -> ModuleType:
    """The tensorrt module, or EngineError("... TensorRT is not installed ...")."""
    try:
        import tensorrt
    except (ImportError, OSError) as e:  # OSError: the package without its shared libraries
        raise EngineError(
            f"engine 'tensorrt': TensorRT is not installed (cannot import the 'tensorrt' Python package: {e}); "
            "install NVIDIA TensorRT 10 or later for your CUDA version (pip install tensorrt), "
            "or use --engine torch or --engine onnxruntime"
        ) from e
    return tensorrt


def require_cuda(device: torch.device) -> None:
    """EngineError unless ``device`` is a CUDA device (TensorRT runs only there)."""
    if torch.device(device).type != "cuda":
        raise EngineError(
            f"engine 'tensorrt' runs on CUDA only, got device {str(device)!r}; "
            "use --device cuda, or --engine torch or onnxruntime on the CPU"
        )


def profile_shapes(profile: EngineProfile, card: ModelCard) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) input shapes of the plan's optimisation profile: [batch, C, H, W]."""
    chw = (card.channels, *card.input_size)
    return tuple((b, *chw) for b in (profile.min_batch, profile.opt_batch, profile.max_batch))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-.").lower() or "x"


def plan_name(card: ModelCard, onnx_key: str, gpu_name: str, capability: tuple[int, int], trt_version: str,
              profile: EngineProfile) -> str:
    """File name of a plan: model, ONNX export key, GPU, compute capability, TensorRT version,
    and a hash of the build settings (precision, batch range, workspace)."""
    settings = {k: getattr(profile, k) for k in ("precision", "min_batch", "opt_batch", "max_batch", "workspace_mib")}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    return (f"{_slug(card.name)}-{onnx_key}-{_slug(gpu_name)}-sm{capability[0]}{capability[1]}"
            f"-trt{_slug(trt_version)}-{digest}.plan")


def _torch_dtype(trt: ModuleType, dtype: Any) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16}
    if dtype not in table:
        raise EngineError(f"TensorRT plan has I/O type {dtype}; expected float32 or float16")
    return table[dtype]


def build_plan(trt: ModuleType, onnx_path: Path, card: ModelCard, profile: EngineProfile) -> bytes:
    """Serialised plan for the ONNX file (see the module docstring)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse {str(onnx_path)!r}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, profile.workspace_mib << 20)
    opt = builder.create_optimization_profile()
    lo, mid, hi = profile_shapes(profile, card)
    opt.set_shape(network.get_input(0).name, lo, mid, hi)
    config.add_optimization_profile(opt)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build a plan from {str(onnx_path)!r} (see its log above)")
    return bytes(serialized)


class TensorRTEngine:
    """A TensorRT plan of ``network`` (built or loaded from the cache) on a CUDA ``device``."""

    name = "tensorrt"

    def __init__(
        self, network: nn.Module, card: ModelCard, device: torch.device, profile: EngineProfile,
        cache: str | os.PathLike | None = None,
    ) -> None:
        trt = import_tensorrt()
        require_cuda(device)
        self.device = torch.device(device)
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.profile = profile
        self.n_classes = len(card.labels)
        exported = export_onnx(network, card, opset=profile.opset, precision=profile.precision, cache=cache)
        gpu = torch.cuda.get_device_name(self.device)
        cap = torch.cuda.get_device_capability(self.device)
        self.path = exported.path.with_name(plan_name(card, exported.key, gpu, cap, trt.__version__, profile))
        self.built = False
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = None
        with torch.cuda.device(self.device):
            if self.path.is_file():
                engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
            if engine is None:
                plan = build_plan(trt, exported.path, card, profile)
                atomic_write_bytes(self.path, plan)
                self.built = True
                engine = runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise EngineError(f"TensorRT cannot load the plan it built: {str(self.path)!r}")
            self.engine = engine
            self.context = engine.create_execution_context()
            # TensorRT's own stream (see the module docstring, "Run").
            self.stream = torch.cuda.Stream(self.device)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise EngineError(f"TensorRT plan {str(self.path)!r} has inputs {inputs} and outputs {outputs}; expected one each")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = _torch_dtype(trt, engine.get_tensor_dtype(self.input_name))
        self.output_dtype = _torch_dtype(trt, engine.get_tensor_dtype(self.output_name))

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """float32/float16 [K, C, H, W] -> float32 logits [K, n_classes] on ``device``."""
        k = int(x.shape[0])
        if k == 0:
            return torch.zeros((0, self.n_classes), dtype=torch.float32, device=self.device)
        x = x.detach().to(self.device, self.input_dtype).contiguous()
        out = torch.empty((k, self.n_classes), dtype=self.output_dtype, device=self.device)
        current = torch.cuda.current_stream(self.device)
        stream = self.stream.cuda_stream
        step, floor = self.profile.max_batch, self.profile.min_batch
        for s in range(0, k, step):
            n = min(k, s + step) - s
            xin = pad_to(x[s : s + n], max(n, floor))
            oc = out[s : s + n] if n >= floor else torch.empty((floor, self.n_classes), dtype=self.output_dtype,
                                                               device=self.device)
            self.stream.wait_stream(current)  # the input is complete before TensorRT reads it
            for t in (xin, oc):  # made on torch's stream, used on TensorRT's: not reused before
                if t.is_cuda:
                    t.record_stream(self.stream)
            self.context.set_input_shape(self.input_name, tuple(xin.shape))
            self.context.set_tensor_address(self.input_name, xin.data_ptr())
            self.context.set_tensor_address(self.output_name, oc.data_ptr())
            if not self.context.execute_async_v3(stream):
                raise EngineError(f"TensorRT failed to run {str(self.path)!r} on a batch of {tuple(xin.shape)}")
            if n < floor:
                current.wait_stream(self.stream)
                out[s : s + n] = oc[:n]
        current.wait_stream(self.stream)  # torch reads the output after TensorRT wrote it
        return out.float()

    def __repr__(self) -> str:
        return f"TensorRTEngine({self.device}, {self.path.name})"
