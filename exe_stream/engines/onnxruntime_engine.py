"""The onnxruntime engine: the network's fp32 ONNX export run by an ``InferenceSession``.

CPU: ``CPUExecutionProvider`` with as many intra-op threads as torch has when the engine is
built (a scan sets torch's thread count so that inference and decoding share the cores);
crops go in as numpy views of the CPU tensors, logits come back as tensors.

CUDA (UNVERIFIED: no GPU was available where this was written): needs an onnxruntime build
with ``CUDAExecutionProvider`` (the ``onnxruntime-gpu`` package). Input and output are bound
to torch CUDA tensors with I/O binding (``bind_input``/``bind_output`` with ``buffer_ptr``, as
in onnxruntime's Python API summary, "IOBinding"), so nothing is copied through the host.
onnxruntime runs on its own CUDA stream: torch's current stream is synchronised before the
run (the input is complete) and the outputs after it (``synchronize_outputs``). Passing torch's
stream as ``user_compute_stream`` is not done: torch's default stream is handle 0, which
onnxruntime treats as "no stream" (onnxruntime PR #19229's follow-up notes this).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .onnx_export import export_onnx
from .profile import EngineError, EngineProfile

if TYPE_CHECKING:
    from ..models import ModelCard


def import_onnxruntime() -> ModuleType:
    """The onnxruntime module, or EngineError saying how to install it."""
    try:
        import onnxruntime
    except ImportError as e:
        raise EngineError(
            f"engine 'onnxruntime': onnxruntime is not installed ({e}); install it with "
            "pip install 'exe-stream[onnx]' (onnxruntime-gpu for CUDA), or use --engine torch"
        ) from e
    return onnxruntime


def providers_for(ort: ModuleType, device: torch.device) -> list[Any]:
    """Execution providers for ``device``: the CPU provider, or the CUDA provider on the
    device's index followed by the CPU provider (for ops the CUDA provider lacks)."""
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type != "cuda":
        raise EngineError(f"engine 'onnxruntime' runs on 'cpu' or 'cuda', got device {str(device)!r}")
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise EngineError(
            f"engine 'onnxruntime' on CUDA needs onnxruntime's CUDAExecutionProvider, but this onnxruntime "
            f"has only {available}; install onnxruntime-gpu, or use --device cpu or --engine torch"
        )
    index = device.index if device.index is not None else torch.cuda.current_device()
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


class OnnxRuntimeEngine:
    """``network``'s ONNX export (cached, fp32, dynamic batch) in an onnxruntime session."""

    name = "onnxruntime"

    def __init__(
        self, network: nn.Module, card: ModelCard, device: torch.device, profile: EngineProfile,
        cache: str | os.PathLike | None = None,
    ) -> None:
        ort = import_onnxruntime()
        self.device = torch.device(device)
        providers = providers_for(ort, self.device)
        self.export = export_onnx(network, card, opset=profile.opset, precision="fp32", cache=cache)
        self.n_classes = len(card.labels)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        if self.device.type == "cpu":
            options.intra_op_num_threads = torch.get_num_threads()
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.export.path), sess_options=options, providers=providers)
        except Exception as e:  # onnxruntime raises its own error types
            raise EngineError(f"onnxruntime cannot load {str(self.export.path)!r}: {e}") from e
        if self.device.type == "cuda":
            # get_available_providers() lists CUDA whenever the build has it, even where its
            # libraries (CUDA, cuDNN) fail to load; the session then quietly runs on the CPU and
            # binding CUDA buffers fails (onnxruntime issues #17801, #23059). The session says
            # which providers it really has.
            active = list(self.session.get_providers())
            if "CUDAExecutionProvider" not in active:
                raise EngineError(
                    f"engine 'onnxruntime' on CUDA: the session has only {active} (onnxruntime's CUDA "
                    "provider did not load: check its CUDA and cuDNN libraries, and that the CPU "
                    "package onnxruntime does not shadow onnxruntime-gpu); use --engine torch"
                )
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.device_id = providers[0][1]["device_id"] if self.device.type == "cuda" else 0

    @property
    def path(self) -> Path:
        """The ONNX file the session runs."""
        return self.export.path

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """float32/float16 [K, C, H, W] -> float32 logits [K, n_classes] on ``device``."""
        k = int(x.shape[0])
        if k == 0:
            return torch.zeros((0, self.n_classes), dtype=torch.float32, device=self.device)
        x = x.detach()
        if self.device.type == "cpu":
            arr = x.to("cpu", torch.float32).contiguous().numpy()
            try:
                out = self.session.run([self.output_name], {self.input_name: arr})[0]
            except Exception as e:
                raise EngineError(f"onnxruntime failed on input {tuple(x.shape)}: {e}") from e
            return torch.from_numpy(out)
        return self._run_cuda(x.to(self.device, torch.float32).contiguous(), k)

    def _run_cuda(self, x: torch.Tensor, k: int) -> torch.Tensor:
        out = torch.empty((k, self.n_classes), dtype=torch.float32, device=self.device)
        binding = self.session.io_binding()
        binding.bind_input(self.input_name, "cuda", self.device_id, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(self.output_name, "cuda", self.device_id, np.float32, tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()
        try:
            self.session.run_with_iobinding(binding)
        except Exception as e:
            raise EngineError(f"onnxruntime (CUDA) failed on input {tuple(x.shape)}: {e}") from e
        binding.synchronize_outputs()
        return out

    def __repr__(self) -> str:
        return f"OnnxRuntimeEngine({self.device}, {self.export.path.name})"
