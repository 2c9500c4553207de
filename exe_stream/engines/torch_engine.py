"""The torch engine: the network itself, plain on the CPU, optimised on CUDA.

CPU: the fp32 module as it is (the reference every other engine is compared with).

CUDA, as the build profile says (UNVERIFIED: no GPU was available where this was written; the
CPU-testable parts, bucket planning and padding, are tested on the CPU):

- ``precision = "fp16"``: a copy of the network with half weights, fed half inputs (float32
  logits are returned);
- ``channels_last``: weights and inputs in channels_last memory format (NHWC strides, what
  cuDNN's fastest convolution kernels read);
- ``cuda_graphs``: one ``torch.cuda.CUDAGraph`` per batch bucket (``profile.buckets``), all
  captured when the engine is built, each after three warm-up runs on a side stream (the
  recipe of the "CUDA Graphs" section of torch's CUDA semantics notes), each with its own
  memory pool and its own static input/output. Capturing at build time, before a scan starts
  its decoder threads, and in ``capture_error_mode="thread_local"``: in torch's default
  "global" mode, CUDA work that another thread issues during a capture (a decoder's prefetch,
  NVDEC or DALI) errors or invalidates the capture (``torch.cuda.graph``'s documentation), and
  a lazy capture would happen mid-scan while they run. A batch of K crops is split into chunks of at most the largest
  bucket (``bucket_chunks``); each chunk is copied into the smallest bucket that holds it,
  the rows past it zeroed (``pad_to`` semantics), the graph replayed, and the first rows of its
  output copied out. Rows never interact (eval-mode networks), so padding does not change
  the real rows.
"""

from __future__ import annotations

import bisect
import copy
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from .profile import EngineProfile

if TYPE_CHECKING:
    from ..models import ModelCard

# Warm-up runs before a CUDA graph capture (lazy initialisation, cuDNN algorithm choice).
WARMUP_RUNS = 3
# cudaStreamCaptureMode of the captures: only this thread's unsafe calls error (module docstring).
CAPTURE_ERROR_MODE = "thread_local"


def bucket_for(n: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket >= n (buckets ascending); n must be in 1..buckets[-1]."""
    if not 1 <= n <= buckets[-1]:
        raise ValueError(f"batch {n} is outside the buckets 1..{buckets[-1]}")
    return buckets[bisect.bisect_left(buckets, n)]


def bucket_chunks(k: int, buckets: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """How K rows run in fixed-size buckets: (start, stop, bucket) per chunk, in order. Chunks
    hold at most the largest bucket; each runs in the smallest bucket that holds it."""
    largest = buckets[-1]
    return [(s, min(k, s + largest), bucket_for(min(k, s + largest) - s, buckets)) for s in range(0, k, largest)]


def pad_to(x: torch.Tensor, rows: int) -> torch.Tensor:
    """x [n, ...] zero-padded to [rows, ...] (rows >= n), same dtype, device and memory format."""
    n = int(x.shape[0])
    if rows < n:
        raise ValueError(f"cannot pad {n} rows to {rows}")
    if rows == n:
        return x
    fmt = torch.channels_last if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format
    out = torch.zeros((rows, *x.shape[1:]), dtype=x.dtype, device=x.device).contiguous(memory_format=fmt)
    out[:n] = x
    return out


def run_bucketed(
    x: torch.Tensor, buckets: tuple[int, ...], run_bucket: Callable[[torch.Tensor, int], torch.Tensor]
) -> torch.Tensor:
    """Run x [K, ...] (K >= 1) chunk by chunk through ``run_bucket(chunk, bucket)``, which gets
    at most ``bucket`` rows, runs the bucket-sized batch, and returns the chunk's own rows."""
    outs = [run_bucket(x[s:e], b) for s, e, b in bucket_chunks(int(x.shape[0]), buckets)]
    return outs[0] if len(outs) == 1 else torch.cat(outs)


class TorchEngine:
    """``network`` (float32 [K, C, H, W] -> logits [K, n], on ``device``, eval mode) run by torch.

    On the CPU the network is used as it is. On CUDA a half and/or channels_last copy is made
    when the profile asks for one (the given module is not modified).
    """

    name = "torch"

    def __init__(self, network: nn.Module, card: ModelCard, device: torch.device, profile: EngineProfile) -> None:
        self.device = torch.device(device)
        self.profile = profile
        self.shape = (card.channels, *card.input_size)
        self.n_classes = len(card.labels)
        cuda = self.device.type == "cuda"
        self.dtype = torch.float16 if cuda and profile.precision == "fp16" else torch.float32
        self.channels_last = cuda and profile.channels_last
        self.use_graphs = cuda and profile.cuda_graphs
        net = network
        if self.dtype != torch.float32 or self.channels_last:
            net = copy.deepcopy(network).to(device=self.device, dtype=self.dtype)
            if self.channels_last:
                net = net.to(memory_format=torch.channels_last)
        self.network = net.eval()
        # bucket -> (graph, static input, static output), all captured now (module docstring).
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        if self.use_graphs:
            self.capture_all()

    def capture_all(self) -> None:
        """Capture the graph of every bucket not captured yet (CUDA; see the module docstring)."""
        for bucket in self.profile.buckets:
            self._graph(bucket)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(device=self.device, dtype=self.dtype, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """float32/float16 [K, C, H, W] -> float32 logits [K, n_classes] on ``device``."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"torch engine expects [K, {', '.join(map(str, self.shape))}], got {tuple(x.shape)}")
        k = int(x.shape[0])
        with torch.inference_mode():
            if k == 0:
                return torch.zeros((0, self.n_classes), dtype=torch.float32, device=self.device)
            x = self._prepare(x)
            if not self.use_graphs:
                return self.network(x).float()
            return run_bucketed(x, self.profile.buckets, self._replay)

    def _replay(self, chunk: torch.Tensor, bucket: int) -> torch.Tensor:
        """CUDA only: copy ``chunk`` into the bucket's static input (zeros after it), replay the
        bucket's graph, return a float32 copy of the chunk's rows of the static output."""
        graph, static_in, static_out = self._graph(bucket)
        n = int(chunk.shape[0])
        static_in[:n].copy_(chunk)
        if n < bucket:
            static_in[n:].zero_()
        graph.replay()
        # A copy: the next replay overwrites static_out.
        return static_out[:n].to(torch.float32, copy=True)

    def _graph(self, bucket: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        if bucket not in self._graphs:
            fmt = torch.channels_last if self.channels_last else torch.contiguous_format
            static_in = torch.zeros((bucket, *self.shape), dtype=self.dtype, device=self.device).contiguous(
                memory_format=fmt)
            side = torch.cuda.Stream(device=self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_RUNS):
                    self.network(static_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode=CAPTURE_ERROR_MODE):
                static_out = self.network(static_in)
            self._graphs[bucket] = (graph, static_in, static_out)
        return self._graphs[bucket]

    def __repr__(self) -> str:
        return (f"TorchEngine({self.device}, {str(self.dtype).replace('torch.', '')}, "
                f"channels_last={self.channels_last}, cuda_graphs={self.use_graphs})")
