"""TFLite models without TFLite: a flatbuffer reader and a torch executor of the graph.

Three layers, each usable alone:

1. ``read_tflite(path) -> TFLiteModel``: parses the flatbuffer (schema ``tflite`` "TFL3":
   Model, SubGraph, Tensor, Buffer, Operator, OperatorCode, QuantizationParameters,
   SparsityParameters) with bounds checks; constant buffers come back as numpy arrays in the
   tensor's own dtype (float16 stays float16), sparse constants densified
   (``TFLiteModel.constant``).
2. ``export_graph(model) -> (graph, constants)``: a JSON-serialisable description of the main
   subgraph plus its constants as numpy arrays in TFLite layout (float32; float16 where the
   file stores float16 weights, which is exact; int32 for shapes and paddings). Constant
   subgraphs (``DENSIFY`` of sparse weights, ``DEQUANTIZE`` of float16 or int8 weights) are
   folded, so the description holds only ops that touch activations. ``save_graph`` /
   ``load_graph`` store it as ``graph.json`` + ``weights.safetensors``; nothing needs the
   ``.tflite`` at run time.
3. ``TFLiteGraph(graph, constants)``: an ``nn.Module`` that runs the description in torch on
   any device, float32. Rank-4 activations are NCHW tensors (TFLite is NHWC) stored
   channels-last, which is TFLite's memory order and the fastest for convolutions; every op
   maps its axes accordingly. TF "SAME" padding is reproduced exactly (the odd extra
   row/column goes after). Zero PADs that feed one VALID convolution become its padding.

Weight-only ("hybrid") quantised models run with their int8 weights dequantised; TFLite's
hybrid kernels also quantise the activations on the fly, so their outputs differ from ours by
that rounding (about 1e-2 on softmax outputs). Fully integer-quantised models are refused.

Errors: ``TFLiteError`` (a ``ModelError``) names the file and, for unsupported content, the op
or tensor type and the supported ones.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .atomic import atomic_write, atomic_write_text
from .errors import ModelError

GRAPH_FORMAT = "exe-stream/tflite-graph"
GRAPH_VERSION = 1
GRAPH_FILE = "graph.json"
WEIGHTS_FILE = "weights.safetensors"


class TFLiteError(ModelError):
    """A .tflite file (or an exported graph) is unreadable or uses something unsupported."""


# --------------------------------------------------------------------------------------------
# Schema facts (tensorflow/compiler/mlir/lite/schema/schema.fbs)
# --------------------------------------------------------------------------------------------

# TensorType -> (name, numpy dtype or None when there is no numpy equivalent).
TENSOR_TYPES: dict[int, tuple[str, Any]] = {
    0: ("FLOAT32", np.float32), 1: ("FLOAT16", np.float16), 2: ("INT32", np.int32),
    3: ("UINT8", np.uint8), 4: ("INT64", np.int64), 5: ("STRING", None), 6: ("BOOL", np.bool_),
    7: ("INT16", np.int16), 8: ("COMPLEX64", np.complex64), 9: ("INT8", np.int8),
    10: ("FLOAT64", np.float64), 11: ("COMPLEX128", np.complex128), 12: ("UINT64", np.uint64),
    13: ("RESOURCE", None), 14: ("VARIANT", None), 15: ("UINT32", np.uint32),
    16: ("UINT16", np.uint16), 17: ("INT4", None), 18: ("BFLOAT16", None),
}

# BuiltinOperator codes this module knows by name (the rest are reported by number).
BUILTIN_OPS: dict[int, str] = {
    0: "ADD", 1: "AVERAGE_POOL_2D", 2: "CONCATENATION", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D",
    5: "DEPTH_TO_SPACE", 6: "DEQUANTIZE", 8: "FLOOR", 9: "FULLY_CONNECTED", 11: "L2_NORMALIZATION",
    14: "LOGISTIC", 17: "MAX_POOL_2D", 18: "MUL", 19: "RELU", 20: "RELU_N1_TO_1", 21: "RELU6",
    22: "RESHAPE", 23: "RESIZE_BILINEAR", 25: "SOFTMAX", 26: "SPACE_TO_DEPTH", 28: "TANH",
    32: "CUSTOM", 34: "PAD", 36: "GATHER", 39: "TRANSPOSE", 40: "MEAN", 41: "SUB", 42: "DIV",
    43: "SQUEEZE", 45: "STRIDED_SLICE", 47: "EXP", 49: "SPLIT", 50: "LOG_SOFTMAX", 53: "CAST",
    54: "PRELU", 55: "MAXIMUM", 57: "MINIMUM", 60: "PADV2", 65: "SLICE", 67: "TRANSPOSE_CONV",
    70: "EXPAND_DIMS", 74: "SUM", 75: "SQRT", 76: "RSQRT", 82: "REDUCE_MAX", 83: "PACK",
    88: "UNPACK", 97: "RESIZE_NEAREST_NEIGHBOR", 98: "LEAKY_RELU", 100: "MIRROR_PAD",
    102: "SPLIT_V", 114: "QUANTIZE", 117: "HARD_SWISH", 124: "DENSIFY", 126: "BATCH_MATMUL",
    150: "GELU",
}

_PADDING = {0: "SAME", 1: "VALID"}
_ACTIVATION = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}

# Builtin options tables, field by field in schema order: (name, kind, default).
# Kinds: "i32", "u8"/"bool" (one byte), "f32", "padding", "act" (enums stored as a byte),
# "[i32]" (vector of int).
_OPTION_FIELDS: dict[str, list[tuple[str, str, Any]]] = {
    "CONV_2D": [("padding", "padding", "SAME"), ("stride_w", "i32", 0), ("stride_h", "i32", 0),
                ("fused_activation_function", "act", "NONE"), ("dilation_w_factor", "i32", 1),
                ("dilation_h_factor", "i32", 1)],
    "DEPTHWISE_CONV_2D": [("padding", "padding", "SAME"), ("stride_w", "i32", 0),
                          ("stride_h", "i32", 0), ("depth_multiplier", "i32", 0),
                          ("fused_activation_function", "act", "NONE"),
                          ("dilation_w_factor", "i32", 1), ("dilation_h_factor", "i32", 1)],
    "AVERAGE_POOL_2D": [("padding", "padding", "SAME"), ("stride_w", "i32", 0),
                        ("stride_h", "i32", 0), ("filter_width", "i32", 0),
                        ("filter_height", "i32", 0), ("fused_activation_function", "act", "NONE")],
    "FULLY_CONNECTED": [("fused_activation_function", "act", "NONE"), ("weights_format", "u8", 0),
                        ("keep_num_dims", "bool", False),
                        ("asymmetric_quantize_inputs", "bool", False)],
    "SOFTMAX": [("beta", "f32", 0.0)],
    "CONCATENATION": [("axis", "i32", 0), ("fused_activation_function", "act", "NONE")],
    "ADD": [("fused_activation_function", "act", "NONE")],
    "SUB": [("fused_activation_function", "act", "NONE")],
    "MUL": [("fused_activation_function", "act", "NONE")],
    "DIV": [("fused_activation_function", "act", "NONE")],
    "RESHAPE": [("new_shape", "[i32]", None)],
    "RESIZE_BILINEAR": [("new_height", "i32", 0), ("new_width", "i32", 0),
                        ("align_corners", "bool", False), ("half_pixel_centers", "bool", False)],
    "RESIZE_NEAREST_NEIGHBOR": [("align_corners", "bool", False),
                                ("half_pixel_centers", "bool", False)],
    "DEPTH_TO_SPACE": [("block_size", "i32", 0)],
    "SPACE_TO_DEPTH": [("block_size", "i32", 0)],
    "MEAN": [("keep_dims", "bool", False)],
    "SUM": [("keep_dims", "bool", False)],
    "REDUCE_MAX": [("keep_dims", "bool", False)],
    "SQUEEZE": [("squeeze_dims", "[i32]", None)],
    "LEAKY_RELU": [("alpha", "f32", 0.0)],
    "TRANSPOSE_CONV": [("padding", "padding", "SAME"), ("stride_w", "i32", 0),
                       ("stride_h", "i32", 0), ("fused_activation_function", "act", "NONE")],
}
_OPTION_FIELDS["MAX_POOL_2D"] = _OPTION_FIELDS["AVERAGE_POOL_2D"]


# --------------------------------------------------------------------------------------------
# Flatbuffer access with bounds checks
# --------------------------------------------------------------------------------------------


class _Buf:
    """Bounds-checked little-endian reads from the file's bytes."""

    def __init__(self, data: bytes, path: str) -> None:
        self.data = data
        self.path = path

    def fail(self, what: str) -> TFLiteError:
        return TFLiteError(f"{self.path}: not a valid TFLite flatbuffer ({what})")

    def read(self, fmt: str, pos: int) -> Any:
        size = struct.calcsize(fmt)
        if pos < 0 or pos + size > len(self.data):
            raise self.fail(f"read of {size} bytes at offset {pos} past the end of the "
                            f"{len(self.data)}-byte file; truncated?")
        return struct.unpack_from(fmt, self.data, pos)[0]

    def table(self, pos: int) -> "_Table":
        vt = pos - self.read("<i", pos)
        vt_size = self.read("<H", vt)
        if vt_size < 4 or vt_size % 2:
            raise self.fail(f"bad vtable at offset {vt}")
        return _Table(self, pos, vt, vt_size)


@dataclass
class _Table:
    buf: _Buf
    pos: int
    vt: int
    vt_size: int

    def _off(self, field_index: int) -> int:
        slot = 4 + 2 * field_index
        if slot >= self.vt_size:
            return 0
        return self.buf.read("<H", self.vt + slot)

    def has(self, i: int) -> bool:
        return self._off(i) != 0

    def scalar(self, i: int, fmt: str, default: Any = 0) -> Any:
        o = self._off(i)
        return default if o == 0 else self.buf.read(fmt, self.pos + o)

    def _target(self, i: int) -> int | None:
        o = self._off(i)
        if o == 0:
            return None
        p = self.pos + o
        return p + self.buf.read("<I", p)

    def table(self, i: int) -> "_Table | None":
        t = self._target(i)
        return None if t is None else self.buf.table(t)

    def string(self, i: int) -> str | None:
        t = self._target(i)
        if t is None:
            return None
        n = self.buf.read("<I", t)
        if t + 4 + n > len(self.buf.data):
            raise self.buf.fail("string past the end of the file")
        return self.buf.data[t + 4 : t + 4 + n].decode("utf-8", errors="replace")

    def vector(self, i: int, dtype: Any) -> np.ndarray | None:
        """A vector of scalars as a (copied) numpy array, or None when absent."""
        t = self._target(i)
        if t is None:
            return None
        n = self.buf.read("<I", t)
        dt = np.dtype(dtype).newbyteorder("<")
        end = t + 4 + n * dt.itemsize
        if end > len(self.buf.data):
            raise self.buf.fail(f"vector of {n} x {dt.itemsize} bytes past the end of the file")
        return np.frombuffer(self.buf.data, dtype=dt, count=n, offset=t + 4).astype(dt.newbyteorder("="))

    def tables(self, i: int) -> list["_Table"]:
        t = self._target(i)
        if t is None:
            return []
        n = self.buf.read("<I", t)
        out = []
        for k in range(n):
            p = t + 4 + 4 * k
            out.append(self.buf.table(p + self.buf.read("<I", p)))
        return out


# --------------------------------------------------------------------------------------------
# The parsed model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quantization:
    """Affine quantisation of a tensor: real = scale * (q - zero_point) along ``axis``."""

    # float32 [C] (C = 1 for per-tensor quantisation).
    scale: np.ndarray
    # int64 [C].
    zero_point: np.ndarray
    # The dimension the per-channel scales run along (0 for per-tensor).
    axis: int


@dataclass(frozen=True)
class DimensionMetadata:
    """One dimension of a sparse tensor in traversal order (TACO / CSR format)."""

    # "DENSE" or "SPARSE_CSR".
    format: str
    # Size of a dense dimension (unused for sparse ones).
    dense_size: int
    # CSR row pointers and column indices of a sparse dimension (None for dense ones).
    segments: np.ndarray | None
    indices: np.ndarray | None


@dataclass(frozen=True)
class Sparsity:
    """How a sparse constant is stored (SparsityParameters)."""

    # Traversal order of the n original (+ k block) dimensions.
    traversal_order: tuple[int, ...]
    # For each block dimension, the original dimension it splits.
    block_map: tuple[int, ...]
    # Per traversal level, the storage of that dimension.
    dim_metadata: tuple[DimensionMetadata, ...]


@dataclass(frozen=True)
class TensorInfo:
    """A tensor of the main subgraph. Shapes are TFLite's (NHWC for images, batch 1)."""

    # Position in the subgraph's tensor list (what operators refer to).
    index: int
    name: str
    shape: tuple[int, ...]
    # TensorType name, e.g. "FLOAT32", "FLOAT16", "INT8".
    dtype: str
    # Index into the model's buffers; 0 means no data (an activation).
    buffer: int
    quantization: Quantization | None
    sparsity: Sparsity | None
    is_variable: bool


@dataclass(frozen=True)
class OperatorInfo:
    """One operator, in execution order."""

    index: int
    # BuiltinOperator name ("CONV_2D"), "CUSTOM:<code>" or "BUILTIN_<n>" for unnamed codes.
    op: str
    # Operator version (from its OperatorCode).
    version: int
    # Tensor indices; -1 marks an omitted optional input.
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    # Decoded builtin options (JSON-serialisable: str/int/float/bool/list).
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class TFLiteModel:
    """A parsed .tflite file: its main subgraph and constant buffers."""

    path: str
    version: int
    description: str
    tensors: list[TensorInfo]
    operators: list[OperatorInfo]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    # Raw bytes of each buffer (b"" when empty).
    buffers: list[bytes]
    num_subgraphs: int = 1

    def __repr__(self) -> str:
        ops: dict[str, int] = {}
        for o in self.operators:
            ops[o.op] = ops.get(o.op, 0) + 1
        ins = [self.tensors[i].shape for i in self.inputs]
        outs = [self.tensors[i].shape for i in self.outputs]
        return f"TFLiteModel({os.path.basename(self.path)}, inputs={ins}, outputs={outs}, ops={ops})"

    def is_constant(self, index: int) -> bool:
        t = self.tensors[index]
        return t.buffer > 0 and len(self.buffers[t.buffer]) > 0

    def raw(self, index: int) -> np.ndarray | None:
        """A constant's stored values as a flat numpy array in its own dtype (None if none)."""
        t = self.tensors[index]
        if not self.is_constant(index):
            return None
        np_dtype = dict(TENSOR_TYPES.values()).get(t.dtype)
        if np_dtype is None:
            raise TFLiteError(f"{self.path}: constant tensor {t.name!r} has type {t.dtype}, "
                              f"which has no numeric representation")
        data = self.buffers[t.buffer]
        dt = np.dtype(np_dtype).newbyteorder("<")
        if len(data) % dt.itemsize:
            raise TFLiteError(f"{self.path}: buffer of tensor {t.name!r} holds {len(data)} bytes, "
                              f"not a multiple of {dt.itemsize} ({t.dtype})")
        return np.frombuffer(data, dtype=dt).astype(dt.newbyteorder("="))

    def constant(self, index: int) -> np.ndarray | None:
        """A constant tensor as a numpy array of its shape, in its stored dtype; sparse
        tensors are densified. None for activations."""
        t = self.tensors[index]
        flat = self.raw(index)
        if flat is None:
            return None
        if t.sparsity is not None:
            return densify(flat, t.shape, t.sparsity, where=f"{self.path}: tensor {t.name!r}")
        n = int(np.prod(t.shape)) if t.shape else 1
        if flat.size != n:
            raise TFLiteError(f"{self.path}: tensor {t.name!r} of shape {list(t.shape)} needs {n} "
                              f"values, its buffer holds {flat.size}")
        return flat.reshape(t.shape)


def densify(values: np.ndarray, shape: Sequence[int], sparsity: Sparsity, where: str = "") -> np.ndarray:
    """Expand a sparse constant (TACO format, optionally block-sparse) to a dense array.

    values: the stored non-zero values, flat. shape: the dense shape (n dims). The sparsity's
    traversal order lists the n dims (and k block dims); each level is dense (positions
    multiply out) or CSR (positions follow segments/indices). Returns values.dtype [shape].
    """
    shape = tuple(int(s) for s in shape)
    n = len(shape)
    order = sparsity.traversal_order
    block_map = sparsity.block_map
    k = len(block_map)
    meta = sparsity.dim_metadata
    if len(order) != n + k or len(meta) != n + k:
        raise TFLiteError(f"{where}: sparsity has {len(order)} traversal dims and {len(meta)} "
                          f"metadata entries for a rank-{n} tensor with {k} block dims")
    # Size of each expanded dimension (block dims split their original dimension).
    block_size = {}
    for j, orig in enumerate(block_map):
        block_size[orig] = meta[order.index(n + j)].dense_size
    expanded = [shape[d] // block_size.get(d, 1) for d in range(n)] + [
        block_size[orig] for orig in block_map
    ]
    pos = np.zeros(1, dtype=np.int64)
    coords = np.zeros((1, n + k), dtype=np.int64)
    for level, dim in enumerate(order):
        m = meta[level]
        if m.format == "DENSE":
            size = m.dense_size if m.dense_size else expanded[dim]
            r = np.arange(size, dtype=np.int64)
            pos = (pos[:, None] * size + r[None, :]).reshape(-1)
            coords = np.repeat(coords, size, axis=0)
            coords[:, dim] = np.tile(r, coords.shape[0] // size)
        else:
            seg = m.segments.astype(np.int64)
            idx = m.indices.astype(np.int64)
            if pos.size and (pos.max() + 1 >= seg.size):
                raise TFLiteError(f"{where}: CSR segments too short at traversal level {level}")
            starts, ends = seg[pos], seg[pos + 1]
            counts = ends - starts
            coords = np.repeat(coords, counts, axis=0)
            offsets = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
            pos = np.repeat(starts, counts) + offsets
            coords[:, dim] = idx[pos]
    if pos.size != values.size:
        raise TFLiteError(f"{where}: sparsity addresses {pos.size} values, the buffer holds {values.size}")
    full = coords[:, :n].copy()
    for j, orig in enumerate(block_map):
        full[:, orig] = full[:, orig] * block_size[orig] + coords[:, n + j]
    dense = np.zeros(shape, dtype=values.dtype)
    dense[tuple(full.T)] = values[pos]
    return dense


def _read_options(op_name: str, t: _Table | None) -> dict[str, Any]:
    fields = _OPTION_FIELDS.get(op_name)
    if fields is None:
        return {}
    out: dict[str, Any] = {}
    for i, (name, kind, default) in enumerate(fields):
        if t is None or not t.has(i):
            out[name] = default
        elif kind == "i32":
            out[name] = int(t.scalar(i, "<i"))
        elif kind == "f32":
            out[name] = float(t.scalar(i, "<f"))
        elif kind == "u8":
            out[name] = int(t.scalar(i, "<B"))
        elif kind == "bool":
            out[name] = bool(t.scalar(i, "<B"))
        elif kind == "padding":
            out[name] = _PADDING.get(int(t.scalar(i, "<b")), "UNKNOWN")
        elif kind == "act":
            out[name] = _ACTIVATION.get(int(t.scalar(i, "<b")), "UNKNOWN")
        elif kind == "[i32]":
            v = t.vector(i, np.int32)
            out[name] = None if v is None else [int(x) for x in v]
    return out


def _read_sparse_vector(t: _Table, type_field: int) -> np.ndarray | None:
    kind = t.scalar(type_field, "<B")
    sub = t.table(type_field + 1)
    if kind == 0 or sub is None:
        return None
    dtype = {1: np.int32, 2: np.uint16, 3: np.uint8}.get(kind)
    if dtype is None:
        raise t.buf.fail(f"unknown SparseIndexVector type {kind}")
    return sub.vector(0, dtype)


def read_tflite(path: str | os.PathLike) -> TFLiteModel:
    """Parse a .tflite file (its first subgraph, the model proper).

    Raises TFLiteError naming the file when it is missing, not a TFLite flatbuffer, or
    truncated.
    """
    path = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise TFLiteError(f"{path}: cannot read the TFLite file: {e}") from e
    buf = _Buf(data, path)
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise buf.fail(f"file identifier {data[4:8]!r} is not b'TFL3'")
    try:
        return _parse(buf)
    except TFLiteError:
        raise
    except (struct.error, ValueError, IndexError, UnicodeDecodeError) as e:
        raise buf.fail(str(e)) from e


def _parse(buf: _Buf) -> TFLiteModel:
    root = buf.table(buf.read("<I", 0))
    version = int(root.scalar(0, "<I"))
    codes: list[tuple[str, int]] = []
    for c in root.tables(1):
        deprecated = int(c.scalar(0, "<b"))
        builtin = int(c.scalar(3, "<i"))
        # builtin_code is authoritative; old files only carry deprecated_builtin_code (< 127).
        code = max(deprecated, builtin)
        custom = c.string(1)
        name = f"CUSTOM:{custom}" if code == 32 and custom else BUILTIN_OPS.get(code, f"BUILTIN_{code}")
        codes.append((name, int(c.scalar(2, "<i", 1))))
    subgraphs = root.tables(2)
    if not subgraphs:
        raise buf.fail("the model has no subgraph")
    description = root.string(3) or ""
    buffers: list[bytes] = []
    for b in root.tables(4):
        offset, size = int(b.scalar(1, "<Q")), int(b.scalar(2, "<Q"))
        if offset > 1:
            if offset + size > len(buf.data):
                raise buf.fail(f"buffer at offset {offset} + {size} bytes past the end of the file")
            buffers.append(bytes(buf.data[offset : offset + size]))
        else:
            v = b.vector(0, np.uint8)
            buffers.append(b"" if v is None else v.tobytes())
    sg = subgraphs[0]
    tensors: list[TensorInfo] = []
    for i, t in enumerate(sg.tables(0)):
        type_code = int(t.scalar(1, "<b"))
        q = t.table(4)
        quant = None
        if q is not None:
            scale = q.vector(2, np.float32)
            zp = q.vector(3, np.int64)
            if scale is not None and scale.size:
                quant = Quantization(
                    scale=scale.astype(np.float32),
                    zero_point=(zp if zp is not None and zp.size else np.zeros_like(scale, np.int64)),
                    axis=int(q.scalar(6, "<i")),
                )
        sp = t.table(6)
        sparsity = None
        if sp is not None:
            metas = []
            for dm in sp.tables(2):
                fmt = "SPARSE_CSR" if dm.scalar(0, "<b") == 1 else "DENSE"
                metas.append(DimensionMetadata(
                    format=fmt, dense_size=int(dm.scalar(1, "<i")),
                    segments=_read_sparse_vector(dm, 2), indices=_read_sparse_vector(dm, 4),
                ))
            to = sp.vector(0, np.int32)
            bm = sp.vector(1, np.int32)
            sparsity = Sparsity(
                traversal_order=tuple(int(x) for x in (to if to is not None else [])),
                block_map=tuple(int(x) for x in (bm if bm is not None else [])),
                dim_metadata=tuple(metas),
            )
        shape = t.vector(0, np.int32)
        buffer_index = int(t.scalar(2, "<I"))
        if buffer_index >= max(len(buffers), 1):
            raise buf.fail(f"tensor {i} refers to buffer {buffer_index} of {len(buffers)}")
        tensors.append(TensorInfo(
            index=i, name=t.string(3) or f"tensor_{i}",
            shape=tuple(int(s) for s in (shape if shape is not None else [])),
            dtype=TENSOR_TYPES.get(type_code, (f"TYPE_{type_code}", None))[0],
            buffer=buffer_index, quantization=quant, sparsity=sparsity,
            is_variable=bool(t.scalar(5, "<B")),
        ))
    operators: list[OperatorInfo] = []
    for i, o in enumerate(sg.tables(3)):
        ci = int(o.scalar(0, "<I"))
        if ci >= len(codes):
            raise buf.fail(f"operator {i} uses opcode index {ci} of {len(codes)}")
        name, ver = codes[ci]
        ins = o.vector(1, np.int32)
        outs = o.vector(2, np.int32)
        for idx in [*(ins if ins is not None else []), *(outs if outs is not None else [])]:
            if idx >= len(tensors):
                raise buf.fail(f"operator {i} ({name}) refers to tensor {idx} of {len(tensors)}")
        operators.append(OperatorInfo(
            index=i, op=name, version=ver,
            inputs=tuple(int(x) for x in (ins if ins is not None else [])),
            outputs=tuple(int(x) for x in (outs if outs is not None else [])),
            options=_read_options(name, o.table(4)),
        ))
    ins = sg.vector(1, np.int32)
    outs = sg.vector(2, np.int32)
    return TFLiteModel(
        path=buf.path, version=version, description=description, tensors=tensors,
        operators=operators, inputs=tuple(int(x) for x in (ins if ins is not None else [])),
        outputs=tuple(int(x) for x in (outs if outs is not None else [])), buffers=buffers,
        num_subgraphs=len(subgraphs),
    )


# --------------------------------------------------------------------------------------------
# Export: fold constant subgraphs, describe the rest as JSON + constants
# --------------------------------------------------------------------------------------------

# Ops TFLiteGraph executes (on activations). DENSIFY/DEQUANTIZE of constants are folded at
# export; DEQUANTIZE of an activation runs.
SUPPORTED_OPS = (
    "ADD", "SUB", "MUL", "DIV", "MAXIMUM", "MINIMUM", "CONV_2D", "DEPTHWISE_CONV_2D",
    "TRANSPOSE_CONV", "FULLY_CONNECTED", "MAX_POOL_2D", "AVERAGE_POOL_2D", "MEAN", "SUM",
    "REDUCE_MAX", "RELU", "RELU6", "RELU_N1_TO_1", "PRELU", "LEAKY_RELU", "LOGISTIC", "TANH",
    "HARD_SWISH", "SOFTMAX", "PAD", "PADV2", "RESHAPE", "SQUEEZE", "TRANSPOSE",
    "CONCATENATION", "RESIZE_BILINEAR", "DEPTH_TO_SPACE", "DEQUANTIZE", "DENSIFY",
)


# numpy dtype of an exported constant -> its TensorType name in graph.json.
_CONST_DTYPES = {np.dtype(np.float16): "FLOAT16", np.dtype(np.float32): "FLOAT32", np.dtype(np.int32): "INT32",
                 np.dtype(np.int64): "INT64", np.dtype(np.bool_): "BOOL"}


def _dequantize(arr: np.ndarray, q: Quantization | None, where: str) -> np.ndarray:
    """Integer constant -> float32 with its (per-tensor or per-channel) scale."""
    if arr.dtype == np.float16:
        return arr.astype(np.float32)
    if q is None:
        raise TFLiteError(f"{where}: integer tensor without quantisation parameters")
    shape = [1] * arr.ndim
    if q.scale.size > 1:
        shape[q.axis] = q.scale.size
    scale = q.scale.reshape(shape).astype(np.float32)
    zp = q.zero_point.reshape(shape).astype(np.float32)
    return ((arr.astype(np.float32) - zp) * scale).astype(np.float32)


def export_graph(model: TFLiteModel) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The model's main subgraph as (graph description, constants).

    Constant-only DENSIFY/DEQUANTIZE ops are evaluated here; quantised integer weights of
    float ops are dequantised to float32. The graph is JSON-serialisable; constants are keyed
    ``"t<tensor index>"`` and are float32 (or int32/int64 for shapes and paddings), in TFLite
    layout. Raises TFLiteError naming the file and the op for anything TFLiteGraph cannot run.
    """
    where = model.path
    consts: dict[int, np.ndarray] = {}
    for t in model.tensors:
        c = model.constant(t.index)
        if c is not None:
            consts[t.index] = c
    ops_out: list[dict[str, Any]] = []
    for op in model.operators:
        if op.op not in SUPPORTED_OPS:
            raise TFLiteError(
                f"{where}: operator {op.index} is {op.op}, which exe_stream.tflite does not "
                f"support; supported: {', '.join(SUPPORTED_OPS)}"
            )
        ins = [i for i in op.inputs if i >= 0]
        if op.op in ("DENSIFY", "DEQUANTIZE") and ins and all(i in consts for i in ins):
            src = model.tensors[ins[0]]
            val = consts[ins[0]]
            if op.op == "DEQUANTIZE" and val.dtype != np.float16:
                # float16 weights stay float16 (exact, half the size); TFLiteGraph widens them.
                val = _dequantize(val, src.quantization, f"{where}: tensor {src.name!r}")
            consts[op.outputs[0]] = val
            continue
        if op.op == "DENSIFY":
            raise TFLiteError(f"{where}: operator {op.index} (DENSIFY) has a non-constant input")
        ops_out.append({"op": op.op, "inputs": list(op.inputs), "outputs": list(op.outputs),
                        "options": dict(op.options)})
    used = {i for o in ops_out for i in o["inputs"] if i >= 0}
    used |= {i for o in ops_out for i in o["outputs"]}
    used |= set(model.inputs) | set(model.outputs)
    constants: dict[str, np.ndarray] = {}
    tensors: dict[str, dict[str, Any]] = {}
    for i in sorted(used):
        t = model.tensors[i]
        entry: dict[str, Any] = {"name": t.name, "shape": list(t.shape), "dtype": t.dtype}
        if i in consts:
            v = consts[i]
            if v.dtype == np.uint8 and t.quantization is not None and not t.quantization.zero_point.any():
                # Legacy hybrid (weight-only quantised) ops store symmetric int8 weights in a
                # UINT8 tensor; the TFLite kernels read the bytes as int8.
                v = v.view(np.int8)
            if v.dtype in (np.int8, np.uint8, np.int16):
                v = _dequantize(v, t.quantization, f"{where}: tensor {t.name!r}")
            elif v.dtype == np.float64:
                v = v.astype(np.float32)
            elif v.dtype not in _CONST_DTYPES:
                raise TFLiteError(f"{where}: constant {t.name!r} has unsupported dtype {v.dtype}")
            entry["dtype"] = _CONST_DTYPES[v.dtype]
            entry["constant"] = f"t{i}"
            constants[f"t{i}"] = np.ascontiguousarray(v)
        elif t.dtype not in ("FLOAT32",) and i not in model.inputs:
            if t.quantization is not None:
                raise TFLiteError(
                    f"{where}: activation {t.name!r} is {t.dtype} with quantisation; fully "
                    f"integer-quantised models are not supported (float and weight-quantised "
                    f"models are)"
                )
        tensors[str(i)] = entry
    for i in model.inputs:
        if model.tensors[i].dtype != "FLOAT32":
            raise TFLiteError(f"{where}: input {model.tensors[i].name!r} is {model.tensors[i].dtype}; "
                              f"only FLOAT32 inputs are supported")
    graph = {
        "format": GRAPH_FORMAT,
        "version": GRAPH_VERSION,
        "inputs": list(model.inputs),
        "outputs": list(model.outputs),
        "input_names": [model.tensors[i].name for i in model.inputs],
        "output_names": [model.tensors[i].name for i in model.outputs],
        "tensors": tensors,
        "ops": ops_out,
    }
    return graph, constants


def save_graph(directory: str | os.PathLike, graph: Mapping[str, Any],
               constants: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> None:
    """Write ``graph.json`` and ``weights.safetensors`` into ``directory`` (temp + rename)."""
    from safetensors.numpy import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.ascontiguousarray(v) for k, v in constants.items()}
    atomic_write(d / WEIGHTS_FILE, lambda tmp: save_file(arrays, str(tmp), metadata=dict(metadata or {})))
    write_graph(d, graph)


def graph_to_json(graph: Mapping[str, Any]) -> str:
    """JSON text of a graph description: one tensor / one op per line (diffable, compact)."""
    parts = []
    for k, v in graph.items():
        if isinstance(v, Mapping) and v:
            inner = ",\n".join(f"  {json.dumps(str(kk))}: {json.dumps(vv)}" for kk, vv in v.items())
            parts.append(f" {json.dumps(k)}: {{\n{inner}\n }}")
        elif isinstance(v, list) and v and isinstance(v[0], Mapping):
            inner = ",\n".join(f"  {json.dumps(x)}" for x in v)
            parts.append(f" {json.dumps(k)}: [\n{inner}\n ]")
        else:
            parts.append(f" {json.dumps(k)}: {json.dumps(v)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def write_graph(directory: str | os.PathLike, graph: Mapping[str, Any]) -> Path:
    """Write ``graph.json`` alone into ``directory`` (temp + rename); returns its path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(d / GRAPH_FILE, graph_to_json(graph))
    return d / GRAPH_FILE


def load_graph(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read ``graph.json`` + ``weights.safetensors`` written by ``save_graph``."""
    from safetensors.numpy import load_file

    d = Path(directory)
    gpath, wpath = d / GRAPH_FILE, d / WEIGHTS_FILE
    try:
        graph = json.loads(gpath.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise TFLiteError(f"{gpath}: cannot read the graph description: {e}") from e
    if graph.get("format") != GRAPH_FORMAT or graph.get("version") != GRAPH_VERSION:
        raise TFLiteError(f"{gpath}: format {graph.get('format')!r} version {graph.get('version')!r} "
                          f"is not {GRAPH_FORMAT!r} version {GRAPH_VERSION}")
    try:
        constants = load_file(str(wpath))
    except Exception as e:  # safetensors raises its own error types
        raise TFLiteError(f"{wpath}: cannot read the weights as safetensors: {e}") from e
    return graph, constants


# --------------------------------------------------------------------------------------------
# Execution in torch
# --------------------------------------------------------------------------------------------

# NHWC axis -> NCHW axis for rank-4 tensors.
_NHWC_TO_NCHW = (0, 2, 3, 1)


def _to_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def _to_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


def _activation(name: str, where: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A fused activation, applied in place (ops fuse it onto a tensor they just created)."""
    if name == "NONE":
        return lambda x: x
    if name == "RELU":
        return torch.relu_
    if name == "RELU6":
        return lambda x: x.clamp_(0.0, 6.0)
    if name == "RELU_N1_TO_1":
        return lambda x: x.clamp_(-1.0, 1.0)
    if name == "TANH":
        return torch.tanh_
    raise TFLiteError(f"{where}: fused activation {name} is not supported; supported: NONE, RELU, "
                      f"RELU6, RELU_N1_TO_1, TANH")


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF 'SAME' padding of one spatial axis: (before, after); the odd extra goes after."""
    out = -(-size // stride)
    eff = (kernel - 1) * dilation + 1
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def _resize_axis(in_size: int, out_size: int, align_corners: bool, half_pixel: bool,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TFLite RESIZE_BILINEAR source taps of one axis: (lower index, upper index, weight)."""
    if align_corners and out_size > 1:
        scale = (in_size - 1) / (out_size - 1)
    else:
        scale = in_size / out_size
    d = torch.arange(out_size, dtype=torch.float32, device=device)
    src = (d + 0.5) * scale - 0.5 if half_pixel else d * scale
    lo_f = torch.floor(src)
    lo = lo_f.clamp(min=0).long()
    hi = torch.ceil(src).clamp(max=in_size - 1).long()
    # TFLite weights the upper tap by (src - lower) with the *clamped* lower index.
    w = src - lo.to(torch.float32)
    return lo.clamp(max=in_size - 1), hi.clamp(min=0), w


class TFLiteGraph(nn.Module):
    """Runs an exported TFLite graph in torch.

    forward(*inputs): one tensor per graph input, float32, any batch size B (TFLite's batch
    1 becomes B). Rank-4 inputs are NCHW ([B, C, H, W]; TFLite's NHWC [1, H, W, C] read
    channels-first). Returns a tuple of the graph outputs in TFLite's layout with batch B
    (rank-4 outputs as NHWC), on the inputs' device. Constants are registered buffers, so
    ``.to(device)`` moves the model.
    """

    def __init__(self, graph: Mapping[str, Any], constants: Mapping[str, np.ndarray | torch.Tensor],
                 where: str = "graph") -> None:
        super().__init__()
        self.where = where
        self.graph = dict(graph)
        tensors = {int(k): v for k, v in graph["tensors"].items()}
        self._shapes = {k: tuple(v["shape"]) for k, v in tensors.items()}
        self.inputs = tuple(int(i) for i in graph["inputs"])
        self.outputs = tuple(int(i) for i in graph["outputs"])
        self._const_np: dict[int, np.ndarray] = {}
        for k, v in tensors.items():
            if "constant" in v:
                c = constants[v["constant"]]
                self._const_np[k] = c.numpy() if isinstance(c, torch.Tensor) else np.asarray(c)
        self._steps: list[Callable[[dict[int, torch.Tensor]], None]] = []
        self._nbuf = 0
        self._readers: dict[int, list[int]] = {}
        for i, op in enumerate(graph["ops"]):
            for t in op["inputs"]:
                self._readers.setdefault(int(t), []).append(i)
        # PAD outputs folded into the padding of the one convolution that reads them:
        # tensor -> (top/bottom, left/right) zero padding.
        self._folded_pad: dict[int, tuple[int, int]] = {}
        for i, op in enumerate(graph["ops"]):
            self._steps.append(self._build(i, op))
        # Activations die after their last reader (keeps peak memory to a few layers).
        last: dict[int, int] = {}
        for i, op in enumerate(graph["ops"]):
            for t in op["inputs"]:
                if t >= 0 and t not in self._const_np:
                    last[t] = i
        self._free: list[list[int]] = [[] for _ in graph["ops"]]
        for t, i in last.items():
            if t not in self.outputs:
                self._free[i].append(t)

    # -- helpers used while building ----------------------------------------------------------

    def _buffer(self, value: np.ndarray | torch.Tensor) -> str:
        name = f"c{self._nbuf}"
        self._nbuf += 1
        t = torch.as_tensor(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
        self.register_buffer(name, t.contiguous(), persistent=False)
        return name

    def _rank(self, idx: int) -> int:
        return len(self._shapes[idx])

    def _const(self, idx: int, what: str, op: str) -> np.ndarray:
        if idx not in self._const_np:
            raise TFLiteError(f"{self.where}: {op} needs a constant {what} (tensor {idx})")
        return self._const_np[idx]

    def _operand(self, idx: int, out_rank: int) -> Callable[[dict[int, torch.Tensor]], torch.Tensor]:
        """A getter for an elementwise operand, brought to the output's internal layout."""
        if idx in self._const_np:
            c = self._const_np[idx].astype(np.float32) if self._const_np[idx].dtype != np.float32 else self._const_np[idx]
            if out_rank == 4:
                c = c.reshape((1,) * (4 - c.ndim) + c.shape).transpose(0, 3, 1, 2)
            name = self._buffer(c)
            return lambda env: getattr(self, name)
        rank = self._rank(idx)
        if out_rank == 4 and rank < 4:
            # A lower-rank operand broadcasts against NHWC's trailing axes.
            return lambda env: env[idx].reshape((1,) * (4 - rank) + tuple(env[idx].shape)).permute(0, 3, 1, 2)
        return lambda env: env[idx]

    def _build(self, i: int, op: Mapping[str, Any]) -> Callable[[dict[int, torch.Tensor]], None]:
        name = op["op"]
        opt = op.get("options", {})
        ins = [int(x) for x in op["inputs"]]
        outs = [int(x) for x in op["outputs"]]
        where = f"{self.where}: op {i} ({name})"
        self._op_index = i
        builder = getattr(self, "_op_" + name.lower(), None) if name in SUPPORTED_OPS else None
        if builder is None:
            raise TFLiteError(f"{self.where}: operator {i} is {name}, which exe_stream.tflite does "
                              f"not support; supported: {', '.join(SUPPORTED_OPS)}")
        return builder(ins, outs, opt, where)

    # -- ops ----------------------------------------------------------------------------------

    def _binary(self, ins, outs, opt, where, f):
        out = outs[0]
        rank = self._rank(out)
        a, b = self._operand(ins[0], rank), self._operand(ins[1], rank)
        act = _activation(opt.get("fused_activation_function", "NONE"), where)

        def step(env):
            env[out] = act(f(a(env), b(env)))
        return step

    def _op_add(self, ins, outs, opt, where):
        return self._binary(ins, outs, opt, where, torch.add)

    def _op_sub(self, ins, outs, opt, where):
        return self._binary(ins, outs, opt, where, torch.sub)

    def _op_mul(self, ins, outs, opt, where):
        return self._binary(ins, outs, opt, where, torch.mul)

    def _op_div(self, ins, outs, opt, where):
        return self._binary(ins, outs, opt, where, torch.div)

    def _op_maximum(self, ins, outs, opt, where):
        return self._binary(ins, outs, opt, where, torch.maximum)

    def _op_minimum(self, ins, outs, opt, where):
        return self._binary(ins, outs, opt, where, torch.minimum)

    def _unary(self, ins, outs, f):
        x, out = ins[0], outs[0]

        def step(env):
            env[out] = f(env[x])
        return step

    def _op_relu(self, ins, outs, opt, where):
        return self._unary(ins, outs, F.relu)

    def _op_relu6(self, ins, outs, opt, where):
        return self._unary(ins, outs, lambda x: x.clamp(0.0, 6.0))

    def _op_relu_n1_to_1(self, ins, outs, opt, where):
        return self._unary(ins, outs, lambda x: x.clamp(-1.0, 1.0))

    def _op_logistic(self, ins, outs, opt, where):
        return self._unary(ins, outs, torch.sigmoid)

    def _op_tanh(self, ins, outs, opt, where):
        return self._unary(ins, outs, torch.tanh)

    def _op_hard_swish(self, ins, outs, opt, where):
        return self._unary(ins, outs, F.hardswish)

    def _op_leaky_relu(self, ins, outs, opt, where):
        alpha = float(opt.get("alpha", 0.0))
        return self._unary(ins, outs, lambda x: torch.where(x >= 0, x, x * alpha))

    def _op_prelu(self, ins, outs, opt, where):
        x, out = ins[0], outs[0]
        alpha = self._operand(ins[1], self._rank(out))

        def step(env):
            v = env[x]
            env[out] = torch.where(v >= 0, v, v * alpha(env))
        return step

    def _op_dequantize(self, ins, outs, opt, where):
        # Non-constant DEQUANTIZE: float16 activations (rare) become float32.
        return self._unary(ins, outs, lambda x: x.to(torch.float32))

    def _op_densify(self, ins, outs, opt, where):
        raise TFLiteError(f"{where}: DENSIFY of a non-constant tensor is not supported")

    def _foldable_pad(self, i: int, out: int, spec: list[int], value: float) -> tuple[int, int] | None:
        """(ph, pw) when PAD op i only pads H and W symmetrically with zeros for one VALID conv."""
        if value != 0.0 or len(spec) != 4 or spec[0] != spec[1] or spec[2] != spec[3]:
            return None
        if out in self.outputs or len(self._readers.get(out, [])) != 1:
            return None
        reader = self.graph["ops"][self._readers[out][0]]
        if reader["op"] not in ("CONV_2D", "DEPTHWISE_CONV_2D") or reader["inputs"][0] != out:
            return None
        if reader["options"].get("padding") != "VALID":
            return None
        return spec[2], spec[0]

    def _conv_padding(self, x: torch.Tensor, padding: str, kh: int, kw: int, sh: int, sw: int,
                      dh: int, dw: int, value: float = 0.0) -> torch.Tensor:
        if padding != "SAME":
            return x
        pt, pb = same_padding(x.shape[2], kh, sh, dh)
        pl, pr = same_padding(x.shape[3], kw, sw, dw)
        if pt or pb or pl or pr:
            x = F.pad(x, (pl, pr, pt, pb), value=value)
        return x

    def _check_padding(self, padding: str, where: str) -> None:
        if padding not in ("SAME", "VALID"):
            raise TFLiteError(f"{where}: padding {padding} is not one of SAME, VALID")

    def _op_conv_2d(self, ins, outs, opt, where):
        x, out = ins[0], outs[0]
        w = self._const(ins[1], "filter", where)  # [O, KH, KW, I]
        o, kh, kw, ci = w.shape
        groups = self._shapes[x][3] // ci if self._shapes[x] and self._shapes[x][3] else 1
        wn = self._buffer(w.transpose(0, 3, 1, 2).astype(np.float32))
        bn = self._buffer(self._const(ins[2], "bias", where).astype(np.float32)) if len(ins) > 2 and ins[2] >= 0 else None
        sh, sw = int(opt["stride_h"]), int(opt["stride_w"])
        dh, dw = int(opt.get("dilation_h_factor", 1)), int(opt.get("dilation_w_factor", 1))
        pad = opt["padding"]
        self._check_padding(pad, where)
        act = _activation(opt["fused_activation_function"], where)
        conv_pad = self._folded_pad.get(x, (0, 0))

        def step(env):
            v = self._conv_padding(env[x], pad, kh, kw, sh, sw, dh, dw)
            b = getattr(self, bn) if bn else None
            env[out] = act(F.conv2d(v, getattr(self, wn), b, (sh, sw), conv_pad, (dh, dw), groups))
        return step

    def _op_depthwise_conv_2d(self, ins, outs, opt, where):
        x, out = ins[0], outs[0]
        w = self._const(ins[1], "filter", where)  # [1, KH, KW, C * M]
        _, kh, kw, co = w.shape
        cin = self._shapes[x][3]
        wn = self._buffer(w.transpose(3, 0, 1, 2).astype(np.float32))  # [C*M, 1, KH, KW]
        bn = self._buffer(self._const(ins[2], "bias", where).astype(np.float32)) if len(ins) > 2 and ins[2] >= 0 else None
        sh, sw = int(opt["stride_h"]), int(opt["stride_w"])
        dh, dw = int(opt.get("dilation_h_factor", 1)), int(opt.get("dilation_w_factor", 1))
        pad = opt["padding"]
        self._check_padding(pad, where)
        act = _activation(opt["fused_activation_function"], where)
        conv_pad = self._folded_pad.get(x, (0, 0))
        if co % cin:
            raise TFLiteError(f"{where}: {co} output channels is not a multiple of {cin} input channels")

        def step(env):
            v = self._conv_padding(env[x], pad, kh, kw, sh, sw, dh, dw)
            b = getattr(self, bn) if bn else None
            env[out] = act(F.conv2d(v, getattr(self, wn), b, (sh, sw), conv_pad, (dh, dw), cin))
        return step

    def _op_transpose_conv(self, ins, outs, opt, where):
        shape_idx, w_idx, x = ins[0], ins[1], ins[2]
        out = outs[0]
        out_shape = [int(s) for s in self._const(shape_idx, "output shape", where)]
        w = self._const(w_idx, "filter", where)  # [O, KH, KW, I]
        _, kh, kw, _ = w.shape
        wn = self._buffer(w.transpose(3, 0, 1, 2).astype(np.float32))  # [I, O, KH, KW]
        bn = self._buffer(self._const(ins[3], "bias", where).astype(np.float32)) if len(ins) > 3 and ins[3] >= 0 else None
        sh, sw = int(opt["stride_h"]), int(opt["stride_w"])
        pad = opt["padding"]
        self._check_padding(pad, where)
        act = _activation(opt.get("fused_activation_function", "NONE"), where)
        oh, ow = out_shape[1], out_shape[2]

        def step(env):
            v = env[x]
            y = F.conv_transpose2d(v, getattr(self, wn), None, (sh, sw))
            if pad == "SAME":
                pt = max((v.shape[2] - 1) * sh + kh - oh, 0) // 2
                pl = max((v.shape[3] - 1) * sw + kw - ow, 0) // 2
            else:
                pt = pl = 0
            y = y[:, :, pt : pt + oh, pl : pl + ow]
            if y.shape[2] < oh or y.shape[3] < ow:
                y = F.pad(y, (0, ow - y.shape[3], 0, oh - y.shape[2]))
            if bn:
                y = y + getattr(self, bn).view(1, -1, 1, 1)
            env[out] = act(y)
        return step

    def _op_fully_connected(self, ins, outs, opt, where):
        x, out = ins[0], outs[0]
        w = self._const(ins[1], "weights", where)  # [O, I]
        if opt.get("weights_format", 0) != 0:
            raise TFLiteError(f"{where}: shuffled FULLY_CONNECTED weights are not supported")
        wn = self._buffer(w.astype(np.float32))
        bn = self._buffer(self._const(ins[2], "bias", where).astype(np.float32)) if len(ins) > 2 and ins[2] >= 0 else None
        act = _activation(opt["fused_activation_function"], where)
        keep = bool(opt.get("keep_num_dims", False))
        rank_in = self._rank(x)
        n_in = w.shape[1]

        def step(env):
            v = env[x]
            if rank_in == 4:
                v = _to_nhwc(v)
            lead = v.shape[:-1]
            y = F.linear(v.reshape(-1, n_in), getattr(self, wn), getattr(self, bn) if bn else None)
            if keep:
                y = y.reshape(*lead, -1)
            y = act(y)
            if keep and y.ndim == 4:
                y = _to_nchw(y)
            env[out] = y
        return step

    def _pool(self, ins, outs, opt, where, kind):
        x, out = ins[0], outs[0]
        kh, kw = int(opt["filter_height"]), int(opt["filter_width"])
        sh, sw = int(opt["stride_h"]), int(opt["stride_w"])
        pad = opt["padding"]
        self._check_padding(pad, where)
        act = _activation(opt["fused_activation_function"], where)

        def step(env):
            v = env[x]
            if kind == "max":
                v = self._conv_padding(v, pad, kh, kw, sh, sw, 1, 1, value=float("-inf"))
                y = F.max_pool2d(v, (kh, kw), (sh, sw))
            else:
                # TF averages over the valid (unpadded) taps only.
                s = F.avg_pool2d(self._conv_padding(v, pad, kh, kw, sh, sw, 1, 1), (kh, kw), (sh, sw))
                ones = torch.ones((1, 1, v.shape[2], v.shape[3]), dtype=v.dtype, device=v.device)
                n = F.avg_pool2d(self._conv_padding(ones, pad, kh, kw, sh, sw, 1, 1), (kh, kw), (sh, sw))
                y = s / n
            env[out] = act(y)
        return step

    def _op_max_pool_2d(self, ins, outs, opt, where):
        return self._pool(ins, outs, opt, where, "max")

    def _op_average_pool_2d(self, ins, outs, opt, where):
        return self._pool(ins, outs, opt, where, "avg")

    def _reduce(self, ins, outs, opt, where, f):
        x, out = ins[0], outs[0]
        axes = [int(a) for a in np.asarray(self._const(ins[1], "axes", where)).reshape(-1)]
        rank = self._rank(x)
        axes = sorted({a % rank for a in axes})
        keep = bool(opt.get("keep_dims", False))
        if rank == 4 and keep:
            dims = [_NHWC_TO_NCHW[a] for a in axes]
            to_native = False
        else:
            dims = axes
            to_native = rank == 4

        def step(env):
            v = env[x]
            if to_native:
                v = _to_nhwc(v)
            env[out] = f(v, dims, keep)
        return step

    def _op_mean(self, ins, outs, opt, where):
        return self._reduce(ins, outs, opt, where, lambda v, d, k: v.mean(dim=d, keepdim=k))

    def _op_sum(self, ins, outs, opt, where):
        return self._reduce(ins, outs, opt, where, lambda v, d, k: v.sum(dim=d, keepdim=k))

    def _op_reduce_max(self, ins, outs, opt, where):
        return self._reduce(ins, outs, opt, where, lambda v, d, k: v.amax(dim=d, keepdim=k))

    def _op_softmax(self, ins, outs, opt, where):
        x, out = ins[0], outs[0]
        beta = float(opt.get("beta", 1.0)) or 1.0
        dim = 1 if self._rank(x) == 4 else -1
        return self._unary(ins, outs, lambda v: torch.softmax(v * beta, dim=dim))

    def _op_pad(self, ins, outs, opt, where):
        x, out = ins[0], outs[0]
        p = np.asarray(self._const(ins[1], "paddings", where)).reshape(-1, 2).astype(int)
        value_idx = ins[2] if len(ins) > 2 and ins[2] >= 0 else None
        value = float(self._const(value_idx, "pad value", where).reshape(-1)[0]) if value_idx is not None else 0.0
        if len(p) == 4:
            order = [2, 1, 3, 0]  # NCHW F.pad order: W, H, C, N (NHWC indices)
        else:
            order = list(range(len(p) - 1, -1, -1))
        spec: list[int] = []
        for a in order:
            spec += [int(p[a][0]), int(p[a][1])]
        while spec and spec[-1] == 0 and spec[-2] == 0:
            spec = spec[:-2]
        if len(p) == 4:
            fold = self._foldable_pad(self._op_index, out, spec, value)
            if fold is not None:
                self._folded_pad[out] = fold

                def alias(env):
                    env[out] = env[x]
                return alias

        def step(env):
            env[out] = F.pad(env[x], spec, value=value) if spec else env[x]
        return step

    def _op_padv2(self, ins, outs, opt, where):
        return self._op_pad(ins, outs, opt, where)

    def _op_reshape(self, ins, outs, opt, where):
        x, out = ins[0], outs[0]
        in_shape, out_shape = self._shapes[x], list(self._shapes[out])
        rank_in, rank_out = len(in_shape), len(out_shape)
        # TFLite's batch (dim 0) is 1 in the file; carry the runtime batch through.
        keep_batch = bool(in_shape) and bool(out_shape) and in_shape[0] == out_shape[0]

        def step(env):
            v = env[x]
            if rank_in == 4:
                v = _to_nhwc(v)
            shape = [v.shape[0], *out_shape[1:]] if keep_batch else out_shape
            y = v.reshape(shape)
            if rank_out == 4:
                y = _to_nchw(y)
            env[out] = y
        return step

    def _op_squeeze(self, ins, outs, opt, where):
        return self._op_reshape(ins, outs, opt, where)

    def _op_transpose(self, ins, outs, opt, where):
        x, out = ins[0], outs[0]
        perm = [int(a) for a in np.asarray(self._const(ins[1], "permutation", where)).reshape(-1)]
        rank_in, rank_out = self._rank(x), self._rank(out)

        def step(env):
            v = env[x]
            if rank_in == 4:
                v = _to_nhwc(v)
            y = v.permute(perm)
            if rank_out == 4:
                y = _to_nchw(y)
            env[out] = y
        return step

    def _op_concatenation(self, ins, outs, opt, where):
        out = outs[0]
        rank = self._rank(out)
        axis = int(opt["axis"]) % rank
        dim = _NHWC_TO_NCHW[axis] if rank == 4 else axis
        getters = [self._operand(i, rank) for i in ins]
        act = _activation(opt.get("fused_activation_function", "NONE"), where)

        def step(env):
            parts = [g(env) for g in getters]
            b = max(p.shape[0] for p in parts)
            parts = [p.expand(b, *p.shape[1:]) if p.shape[0] != b else p for p in parts]
            env[out] = act(torch.cat(parts, dim=dim))
        return step

    def _op_resize_bilinear(self, ins, outs, opt, where):
        x, out = ins[0], outs[0]
        size = [int(s) for s in np.asarray(self._const(ins[1], "size", where)).reshape(-1)]
        ac, hp = bool(opt.get("align_corners", False)), bool(opt.get("half_pixel_centers", False))
        oh, ow = size
        cache: dict[tuple, tuple] = {}

        def taps(h, w, device):
            key = (h, w, str(device))
            if key not in cache:
                cache[key] = (_resize_axis(h, oh, ac, hp, device), _resize_axis(w, ow, ac, hp, device))
            return cache[key]

        def step(env):
            v = _to_nhwc(env[x])  # contiguous for channels_last activations
            (y0, y1, wy), (x0, x1, wx) = taps(v.shape[1], v.shape[2], v.device)
            top = v.index_select(1, y0)
            bot = v.index_select(1, y1)
            rows = torch.lerp(top, bot, wy.view(1, -1, 1, 1))
            left = rows.index_select(2, x0)
            right = rows.index_select(2, x1)
            env[out] = _to_nchw(torch.lerp(left, right, wx.view(1, 1, -1, 1)))
        return step

    def _op_depth_to_space(self, ins, outs, opt, where):
        x, out = ins[0], outs[0]
        bs = int(opt["block_size"])

        def step(env):
            v = _to_nhwc(env[x])
            b, h, w, c = v.shape
            co = c // (bs * bs)
            # TF order: input channel = (i * bs + j) * C_out + c goes to (h * bs + i, w * bs + j).
            y = v.reshape(b, h, w, bs, bs, co).permute(0, 1, 3, 2, 4, 5).reshape(b, h * bs, w * bs, co)
            env[out] = _to_nchw(y)
        return step

    # -- running ------------------------------------------------------------------------------

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.inputs):
            raise TFLiteError(f"{self.where}: expected {len(self.inputs)} inputs, got {len(inputs)}")
        env: dict[int, torch.Tensor] = {}
        for idx, v in zip(self.inputs, inputs):
            shape = self._shapes[idx]
            if len(shape) == 4:
                want = (shape[3], shape[1], shape[2])
                if v.ndim != 4 or tuple(v.shape[1:]) != want:
                    raise TFLiteError(f"{self.where}: input must be float32 [B, {want[0]}, {want[1]}, "
                                      f"{want[2]}] (NCHW), got {tuple(v.shape)}")
            # Channels-last (NHWC in memory, TFLite's own layout) runs convolutions fastest.
            v = v.to(torch.float32)
            env[idx] = v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 else v
        for step, dead in zip(self._steps, self._free):
            step(env)
            for t in dead:
                del env[t]
        res = []
        for idx in self.outputs:
            v = env[idx]
            res.append(_to_nhwc(v).contiguous() if self._rank(idx) == 4 else v)
        return tuple(res)

    @classmethod
    def from_tflite(cls, path: str | os.PathLike) -> "TFLiteGraph":
        """Parse, export and wrap a .tflite file in one go (for tests and conversions)."""
        graph, constants = export_graph(read_tflite(path))
        return cls(graph, constants, where=str(path))

    @classmethod
    def from_directory(cls, directory: str | os.PathLike) -> "TFLiteGraph":
        """Load ``graph.json`` + ``weights.safetensors`` (see ``save_graph``)."""
        graph, constants = load_graph(directory)
        return cls(graph, constants, where=str(directory))
