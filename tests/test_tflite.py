"""exe_stream.tflite against the TFLite runtime (ai_edge_litert).

Two kinds of models: MediaPipe's BlazeFace files (from the installed mediapipe package, a test
dependency) on real letterboxed images, and small models written here with the flatbuffers
Builder, one per group of ops, so every op the executor supports is checked against the
runtime on random inputs (odd sizes, stride 2 'SAME' padding, broadcasting, weights stored as
float16 / int8 / sparse).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
import torch
from ai_edge_litert.interpreter import Interpreter

from exe_stream.tflite import (
    TFLiteError, TFLiteGraph, densify, export_graph, load_graph, read_tflite, same_padding, save_graph,
    Sparsity, DimensionMetadata,
)

DATA = Path(__file__).parent / "data"
ASSETS = Path(__file__).parent.parent / "exe_stream" / "assets" / "models"


def mediapipe_file(name: str) -> Path:
    spec = importlib.util.find_spec("mediapipe")
    assert spec is not None and spec.submodule_search_locations, "mediapipe (a test dependency) is not installed"
    return Path(list(spec.submodule_search_locations)[0]) / "modules" / "face_detection" / name


def run_litert(model: bytes | Path, x: np.ndarray) -> list[np.ndarray]:
    """Reference outputs of the TFLite runtime for one NHWC (or plain) float32 input."""
    it = Interpreter(model_content=model) if isinstance(model, bytes) else Interpreter(model_path=str(model))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return [it.get_tensor(o["index"]).copy() for o in it.get_output_details()]


def run_ours(g: TFLiteGraph, x: np.ndarray) -> list[np.ndarray]:
    t = torch.from_numpy(x)
    if t.ndim == 4:
        t = t.permute(0, 3, 1, 2)
    with torch.no_grad():
        return [o.numpy() for o in g(t)]


# ---------------------------------------------------------------------------------------------
# A minimal TFLite writer (schema.fbs field order), for test models
# ---------------------------------------------------------------------------------------------

TYPES = {"FLOAT32": 0, "FLOAT16": 1, "INT32": 2, "INT8": 9}
NP = {"FLOAT32": np.float32, "FLOAT16": np.float16, "INT32": np.int32, "INT8": np.int8}
# BuiltinOperator code, BuiltinOptions union index, operator version.
OPS = {
    "ADD": (0, 11, 1), "AVERAGE_POOL_2D": (1, 5, 1), "CONCATENATION": (2, 10, 1), "CONV_2D": (3, 1, 1),
    "DEPTHWISE_CONV_2D": (4, 2, 2), "DEPTH_TO_SPACE": (5, 94, 1), "DEQUANTIZE": (6, 0, 3),
    "FLOOR": (8, 0, 1), "FULLY_CONNECTED": (9, 8, 1), "LOGISTIC": (14, 0, 1), "MAX_POOL_2D": (17, 5, 1),
    "MUL": (18, 21, 1), "RELU": (19, 0, 1), "RELU6": (21, 0, 1), "RESHAPE": (22, 0, 1),
    "RESIZE_BILINEAR": (23, 15, 3), "SOFTMAX": (25, 9, 1), "TANH": (28, 0, 1), "PAD": (34, 22, 1),
    "TRANSPOSE": (39, 26, 1), "MEAN": (40, 27, 1), "SUB": (41, 28, 1), "DIV": (42, 29, 1),
    "PRELU": (54, 0, 1), "MAXIMUM": (55, 39, 1), "MINIMUM": (57, 39, 1), "TRANSPOSE_CONV": (67, 49, 1),
    "LEAKY_RELU": (98, 75, 1), "HARD_SWISH": (117, 91, 1), "DENSIFY": (124, 0, 1),
}


class ModelWriter:
    """Collects tensors/ops of one subgraph and writes a .tflite flatbuffer."""

    def __init__(self) -> None:
        self.tensors: list[dict] = []
        self.buffers: list[bytes] = [b""]
        self.ops: list[tuple] = []

    def tensor(self, shape, data=None, dtype="FLOAT32", quant=None, sparsity=None) -> int:
        buf = 0
        if data is not None:
            self.buffers.append(np.ascontiguousarray(np.asarray(data, NP[dtype])).tobytes())
            buf = len(self.buffers) - 1
        self.tensors.append(dict(shape=list(shape), dtype=dtype, buffer=buf, quant=quant, sparsity=sparsity))
        return len(self.tensors) - 1

    def const(self, data, dtype="FLOAT32") -> int:
        a = np.asarray(data, NP[dtype])
        return self.tensor(a.shape, a, dtype)

    def op(self, name, inputs, outputs, options=()) -> None:
        """options: (slot, kind, value) with kind 'b' (int8), 'B' (uint8/bool), 'i', 'f', 'vi'."""
        self.ops.append((name, list(inputs), list(outputs), list(options)))

    def build(self, inputs, outputs) -> bytes:
        b = flatbuffers.Builder(1024)

        def ivec(vals, kind="i"):
            b.StartVector(4 if kind in "if" else 8, len(vals), 4 if kind in "if" else 8)
            for v in reversed(list(vals)):
                {"i": b.PrependInt32, "f": b.PrependFloat32, "q": b.PrependInt64}[kind](v)
            return b.EndVector()

        def table(fields):
            # fields: (slot, kind, value) with offsets created beforehand
            b.StartObject(max([f[0] for f in fields], default=-1) + 1)
            for slot, kind, v in fields:
                if kind == "o":
                    b.PrependUOffsetTRelativeSlot(slot, v, 0)
                elif kind == "b":
                    b.PrependInt8Slot(slot, v, -128)
                elif kind == "B":
                    b.PrependUint8Slot(slot, v, 255)
                elif kind == "i":
                    b.PrependInt32Slot(slot, v, -(2**31))
                elif kind == "I":
                    b.PrependUint32Slot(slot, v, 2**32 - 1)
                elif kind == "f":
                    b.PrependFloat32Slot(slot, v, float("nan"))
            return b.EndObject()

        buffers = []
        for data in self.buffers:
            if data:
                vec = b.CreateNumpyVector(np.frombuffer(data, np.uint8))
                buffers.append(table([(0, "o", vec)]))
            else:
                buffers.append(table([]))
        tensors = []
        for t in self.tensors:
            fields = [(0, "o", ivec(t["shape"])), (1, "b", TYPES[t["dtype"]]), (2, "I", t["buffer"])]
            if t["quant"] is not None:
                scale, zp, axis = t["quant"]
                q = table([(2, "o", ivec(scale, "f")), (3, "o", ivec(zp, "q")), (6, "i", axis)])
                fields.append((4, "o", q))
            if t["sparsity"] is not None:
                order, metas = t["sparsity"]
                mtabs = []
                for fmt, size, seg, idx in metas:
                    mf = [(0, "b", fmt), (1, "i", size)]
                    if fmt == 1:
                        sv = table([(0, "o", ivec(seg))])
                        iv = table([(0, "o", ivec(idx))])
                        mf += [(2, "B", 1), (3, "o", sv), (4, "B", 1), (5, "o", iv)]
                    mtabs.append(table(mf))
                b.StartVector(4, len(mtabs), 4)
                for m in reversed(mtabs):
                    b.PrependUOffsetTRelative(m)
                mvec = b.EndVector()
                fields.append((6, "o", table([(0, "o", ivec(order)), (2, "o", mvec)])))
            fields.append((3, "o", b.CreateString(f"t{len(tensors)}")))
            tensors.append(table(fields))
        names = sorted({o[0] for o in self.ops})
        codes = []
        for n in names:
            code, _, ver = OPS[n]
            codes.append(table([(0, "b", min(code, 127)), (2, "i", ver), (3, "i", code)]))
        ops = []
        for name, ins, outs, options in self.ops:
            _, union, _ = OPS[name]
            fields = [(0, "I", names.index(name)), (1, "o", ivec(ins)), (2, "o", ivec(outs))]
            if union:
                made = [(s, "o", ivec(v)) if k == "vi" else (s, k, v) for s, k, v in options]
                fields += [(3, "B", union), (4, "o", table(made))]
            ops.append(table(fields))

        def tvec(items):
            b.StartVector(4, len(items), 4)
            for it in reversed(items):
                b.PrependUOffsetTRelative(it)
            return b.EndVector()

        sg = table([(0, "o", tvec(tensors)), (1, "o", ivec(inputs)), (2, "o", ivec(outputs)), (3, "o", tvec(ops))])
        model = table([(0, "I", 3), (1, "o", tvec(codes)), (2, "o", tvec([sg])), (4, "o", tvec(buffers))])
        b.Finish(model, file_identifier=b"TFL3")
        return bytes(b.Output())


RELU6, SAME, VALID = 3, 0, 1


def conv_opts(stride, pad=SAME, act=0, dil=1):
    return [(0, "b", pad), (1, "i", stride), (2, "i", stride), (3, "b", act), (4, "i", dil), (5, "i", dil)]


def pool_opts(k, s, pad=SAME):
    return [(0, "b", pad), (1, "i", s), (2, "i", s), (3, "i", k), (4, "i", k), (5, "b", 0)]


def m_conv(rng):
    """CONV_2D / DEPTHWISE_CONV_2D, stride 2 'SAME' on odd and even sizes, dilation."""
    w = ModelWriter()
    x = w.tensor([1, 9, 10, 3])
    c1 = w.tensor([1, 5, 5, 8])
    w.op("CONV_2D", [x, w.const(rng.normal(size=(8, 3, 3, 3))), w.const(rng.normal(size=8))], [c1], conv_opts(2, act=RELU6))
    c2 = w.tensor([1, 3, 3, 16])
    w.op("DEPTHWISE_CONV_2D", [c1, w.const(rng.normal(size=(1, 5, 5, 16))), w.const(rng.normal(size=16))], [c2],
         [(0, "b", SAME), (1, "i", 2), (2, "i", 2), (3, "i", 2), (4, "b", 0), (5, "i", 1), (6, "i", 1)])
    c3 = w.tensor([1, 9, 10, 4])
    w.op("CONV_2D", [x, w.const(rng.normal(size=(4, 3, 3, 3))), w.const(rng.normal(size=4))], [c3], conv_opts(1, dil=2))
    c4 = w.tensor([1, 4, 4, 6])
    w.op("CONV_2D", [x, w.const(rng.normal(size=(6, 3, 3, 3))), w.const(rng.normal(size=6))], [c4], conv_opts(2, pad=VALID))
    c5 = w.tensor([1, 5, 5, 8])
    w.op("CONV_2D", [x, w.const(rng.normal(size=(8, 4, 4, 3))), w.const(rng.normal(size=8))], [c5], conv_opts(2))
    return w.build([x], [c2, c3, c4, c5]), (1, 9, 10, 3)


def m_pools(rng):
    """MAX/AVERAGE_POOL_2D 'SAME' (padding excluded from the average) and 'VALID'."""
    w = ModelWriter()
    x = w.tensor([1, 10, 9, 4])
    outs = []
    for name, k, s, pad, shape in [("MAX_POOL_2D", 3, 2, SAME, [1, 5, 5, 4]), ("AVERAGE_POOL_2D", 3, 2, SAME, [1, 5, 5, 4]),
                                   ("AVERAGE_POOL_2D", 2, 2, VALID, [1, 5, 4, 4]), ("MAX_POOL_2D", 2, 2, SAME, [1, 5, 5, 4])]:
        o = w.tensor(shape)
        w.op(name, [x], [o], pool_opts(k, s, pad))
        outs.append(o)
    return w.build([x], outs), (1, 10, 9, 4)


def m_elementwise(rng):
    """Binary ops with broadcast constants, activations, PRELU."""
    w = ModelWriter()
    s = [1, 6, 5, 4]
    x = w.tensor(s)
    chain = [
        ("ADD", [w.const(rng.normal(size=4))], [(0, "b", 0)]),
        ("MUL", [w.const(rng.normal(size=(1, 1, 1, 4)))], [(0, "b", 0)]),
        ("SUB", [w.const(rng.normal(size=(5, 4)))], [(0, "b", 1)]),
        ("DIV", [w.const(rng.uniform(1, 2, size=(6, 1, 1)))], [(0, "b", 0)]),
        ("PRELU", [w.const(rng.normal(size=(1, 1, 4)))], []),
        ("MAXIMUM", [w.const(rng.normal(size=(4,)) * 0.1)], []),
        ("MINIMUM", [w.const(np.full((1,), 2.0))], []),
        ("LEAKY_RELU", [], [(0, "f", 0.2)]),
        ("HARD_SWISH", [], []),
        ("TANH", [], []),
        ("LOGISTIC", [], []),
        ("RELU", [], []),
        ("RELU6", [], []),
    ]
    cur = x
    for name, extra, opts in chain:
        o = w.tensor(s)
        w.op(name, [cur, *extra], [o], opts)
        cur = o
    # An activation-activation op (both operands computed).
    o = w.tensor(s)
    w.op("ADD", [cur, x], [o], [(0, "b", RELU6)])
    return w.build([x], [o]), tuple(s)


def m_shapes(rng):
    """PAD, CONCATENATION, RESHAPE to 2-D/3-D, TRANSPOSE, MEAN, FULLY_CONNECTED, SOFTMAX."""
    w = ModelWriter()
    x = w.tensor([1, 4, 5, 6])
    p = w.tensor([1, 7, 8, 9])
    w.op("PAD", [x, w.const([[0, 0], [1, 2], [2, 1], [0, 3]], "INT32")], [p], [])
    r3 = w.tensor([1, 56, 9])
    w.op("RESHAPE", [p, w.const([1, 56, 9], "INT32")], [r3], [])
    x3 = w.tensor([1, 20, 6])
    w.op("RESHAPE", [x, w.const([1, 20, 6], "INT32")], [x3], [])
    cat3 = w.tensor([1, 20, 15])
    w.op("CONCATENATION", [x3, w.const(rng.normal(size=(1, 20, 9)))], [cat3], [(0, "i", 2), (1, "b", 0)])
    cat4 = w.tensor([1, 4, 5, 12])
    w.op("CONCATENATION", [x, x], [cat4], [(0, "i", -1), (1, "b", 0)])
    cat4h = w.tensor([1, 8, 5, 6])
    w.op("CONCATENATION", [x, x], [cat4h], [(0, "i", 1), (1, "b", 0)])
    tr = w.tensor([1, 5, 4, 6])
    w.op("TRANSPOSE", [x, w.const([0, 2, 1, 3], "INT32")], [tr], [])
    mean = w.tensor([1, 6])
    w.op("MEAN", [x, w.const([1, 2], "INT32")], [mean], [(0, "B", 0)])
    mean_k = w.tensor([1, 4, 1, 6])
    w.op("MEAN", [x, w.const([2], "INT32")], [mean_k], [(0, "B", 1)])
    flat = w.tensor([1, 120])
    w.op("RESHAPE", [x, w.const([1, 120], "INT32")], [flat], [])
    fc = w.tensor([1, 7])
    w.op("FULLY_CONNECTED", [flat, w.const(rng.normal(size=(7, 120)) * 0.1), w.const(rng.normal(size=7))], [fc],
         [(0, "b", 0), (1, "b", 0), (2, "B", 0)])
    sm = w.tensor([1, 7])
    w.op("SOFTMAX", [fc], [sm], [(0, "f", 0.5)])
    fc2 = w.tensor([1, 3])
    w.op("FULLY_CONNECTED", [mean, w.const(rng.normal(size=(3, 6))), w.const(np.zeros(3))], [fc2], [(0, "b", 1)])
    return w.build([x], [r3, cat3, cat4, cat4h, tr, mean, mean_k, sm, fc2]), (1, 4, 5, 6)


def m_resize(rng):
    """RESIZE_BILINEAR in its three coordinate modes, DEPTH_TO_SPACE, TRANSPOSE_CONV."""
    w = ModelWriter()
    x = w.tensor([1, 4, 5, 8])
    outs = []
    for ac, hp in [(0, 0), (1, 0), (0, 1)]:
        o = w.tensor([1, 7, 11, 8])
        w.op("RESIZE_BILINEAR", [x, w.const([7, 11], "INT32")], [o], [(2, "B", ac), (3, "B", hp)])
        outs.append(o)
    d2s = w.tensor([1, 8, 10, 2])
    w.op("DEPTH_TO_SPACE", [x], [d2s], [(0, "i", 2)])
    outs.append(d2s)
    for pad, shape in [(SAME, [1, 8, 10, 3]), (VALID, [1, 9, 11, 3])]:
        tc = w.tensor(shape)
        w.op("TRANSPOSE_CONV", [w.const(shape, "INT32"), w.const(rng.normal(size=(3, 3, 3, 8))), x], [tc],
             [(0, "b", pad), (1, "i", 2), (2, "i", 2)])
        outs.append(tc)
    return w.build([x], outs), (1, 4, 5, 8)


def m_stored_weights(rng):
    """Weights stored as float16, per-channel int8 and sparse float16 (DEQUANTIZE / DENSIFY)."""
    w = ModelWriter()
    x = w.tensor([1, 6, 6, 3])
    w16 = w.tensor([4, 3, 3, 3], rng.normal(size=(4, 3, 3, 3)), "FLOAT16")
    wf = w.tensor([4, 3, 3, 3])
    w.op("DEQUANTIZE", [w16], [wf], [])
    c1 = w.tensor([1, 6, 6, 4])
    w.op("CONV_2D", [x, wf, w.const(rng.normal(size=4))], [c1], conv_opts(1))
    scale = rng.uniform(0.01, 0.05, size=5).astype(np.float32)
    q = rng.integers(-127, 128, size=(5, 1, 1, 4))
    w8 = w.tensor([5, 1, 1, 4], q, "INT8", quant=(scale, [0] * 5, 0))
    w8f = w.tensor([5, 1, 1, 4])
    w.op("DEQUANTIZE", [w8], [w8f], [])
    c2 = w.tensor([1, 6, 6, 5])
    w.op("CONV_2D", [c1, w8f, w.const(np.zeros(5))], [c2], conv_opts(1))
    # A sparse [2, 5] float16 filter of a 1x1 conv: CSR over the last dimension.
    dense = np.array([[0, 1.5, 0, 0, -2], [0.25, 0, 0, 3, 0]], np.float16)
    rows = [np.flatnonzero(r) for r in dense]
    seg = np.cumsum([0] + [len(r) for r in rows])
    idx = np.concatenate(rows)
    vals = dense[dense != 0]
    ws = w.tensor([2, 1, 1, 5], vals, "FLOAT16",
                  sparsity=([0, 1, 2, 3], [(0, 2, None, None), (0, 1, None, None), (0, 1, None, None), (1, 0, seg, idx)]))
    wsd = w.tensor([2, 1, 1, 5], dtype="FLOAT16")
    w.op("DENSIFY", [ws], [wsd], [])
    wsf = w.tensor([2, 1, 1, 5])
    w.op("DEQUANTIZE", [wsd], [wsf], [])
    c3 = w.tensor([1, 6, 6, 2])
    w.op("CONV_2D", [c2, wsf, w.const(np.zeros(2))], [c3], conv_opts(1))
    return w.build([x], [c1, c2, c3]), (1, 6, 6, 3)


MODELS = {"conv": m_conv, "pools": m_pools, "elementwise": m_elementwise, "shapes": m_shapes,
          "resize": m_resize, "stored_weights": m_stored_weights}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_ops_match_the_tflite_runtime(name, tmp_path):
    rng = np.random.default_rng(7)
    content, shape = MODELS[name](rng)
    path = tmp_path / f"{name}.tflite"
    path.write_bytes(content)
    g = TFLiteGraph.from_tflite(path)
    xs = rng.normal(size=(3, *shape[1:])).astype(np.float32)
    ours = run_ours(g, xs)  # one batched run
    for b in range(3):
        ref = run_litert(content, xs[b : b + 1])
        assert len(ref) == len(ours)
        for k, (r, o) in enumerate(zip(ref, ours)):
            assert o.shape[1:] == r.shape[1:], (name, k)
            np.testing.assert_allclose(o[b : b + 1], r, rtol=1e-4, atol=1e-4, err_msg=f"{name} output {k}")


def test_writer_models_round_trip_through_the_reader(tmp_path):
    content, _ = m_stored_weights(np.random.default_rng(0))
    (tmp_path / "m.tflite").write_bytes(content)
    m = read_tflite(tmp_path / "m.tflite")
    assert [o.op for o in m.operators] == ["DEQUANTIZE", "CONV_2D", "DEQUANTIZE", "CONV_2D", "DENSIFY", "DEQUANTIZE", "CONV_2D"]
    sparse = next(t for t in m.tensors if t.sparsity is not None)
    np.testing.assert_array_equal(
        m.constant(sparse.index), np.array([[0, 1.5, 0, 0, -2], [0.25, 0, 0, 3, 0]], np.float16).reshape(2, 1, 1, 5)
    )
    graph, consts = export_graph(m)
    # Constant DEQUANTIZE/DENSIFY are folded away; float16 weights stay float16 (exact).
    assert [o["op"] for o in graph["ops"]] == ["CONV_2D"] * 3
    assert sorted({str(v.dtype) for v in consts.values()}) == ["float16", "float32"]


def test_block_sparse_densify():
    # A 4x4 matrix of 2x2 blocks, block-CSR over the block columns (TFLite's documented example layout).
    dense = np.zeros((4, 4), np.float32)
    dense[0:2, 2:4] = [[1, 2], [3, 4]]
    dense[2:4, 0:2] = [[5, 6], [7, 8]]
    sp = Sparsity(
        traversal_order=(0, 1, 2, 3), block_map=(0, 1),
        dim_metadata=(
            DimensionMetadata("DENSE", 2, None, None),
            DimensionMetadata("SPARSE_CSR", 0, np.array([0, 1, 2]), np.array([1, 0])),
            DimensionMetadata("DENSE", 2, None, None),
            DimensionMetadata("DENSE", 2, None, None),
        ),
    )
    np.testing.assert_array_equal(densify(np.arange(1, 9, dtype=np.float32), (4, 4), sp), dense)


@pytest.mark.parametrize("size, k, s, want", [(128, 3, 2, (0, 1)), (127, 3, 2, (1, 1)), (10, 4, 2, (1, 1)),
                                              (9, 1, 2, (0, 0)), (8, 5, 1, (2, 2)), (64, 2, 2, (0, 0))])
def test_same_padding_is_tf(size, k, s, want):
    assert same_padding(size, k, s) == want


# ---------------------------------------------------------------------------------------------
# MediaPipe's BlazeFace files on real images
# ---------------------------------------------------------------------------------------------


def letterboxed(n: int) -> np.ndarray:
    """Real NHWC inputs in [-1, 1]: the test images letterboxed (black bars) to n x n."""
    import cv2

    out = []
    for f in ("astronaut.png", "grace_hopper_512x512.jpg", "Tom_Hanks_54745.png"):
        img = cv2.cvtColor(cv2.imread(str(DATA / f)), cv2.COLOR_BGR2RGB)
        h, w = img.shape[:2]
        side = max(h, w)
        canvas = np.zeros((side, side, 3), np.uint8)
        canvas[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = img
        out.append(cv2.resize(canvas, (n, n), interpolation=cv2.INTER_AREA).astype(np.float32) / 127.5 - 1.0)
    # A wide one with black bars: the astronaut's top half.
    out.append(out[0].copy())
    out[-1][n // 2 :] = -1.0
    return np.stack(out)


@pytest.mark.parametrize("file, n, asset", [("face_detection_short_range.tflite", 128, "blazeface-short"),
                                            ("face_detection_full_range_sparse.tflite", 192, "blazeface-full")])
def test_blazeface_graphs_match_the_runtime_on_real_images(file, n, asset):
    src = mediapipe_file(file)
    xs = letterboxed(n)
    from_file = TFLiteGraph.from_tflite(src)
    committed = TFLiteGraph.from_directory(ASSETS / asset)
    ours_file = run_ours(from_file, xs)
    ours_committed = run_ours(committed, xs)
    for a, b in zip(ours_file, ours_committed):
        np.testing.assert_array_equal(a, b)
    for i in range(xs.shape[0]):
        ref = run_litert(src, xs[i : i + 1])
        for r, o in zip(ref, ours_file):
            scale = float(np.abs(r).max())
            np.testing.assert_allclose(o[i : i + 1], r, rtol=0, atol=2e-5 * max(scale, 1.0))


def test_reader_sees_the_sparse_fp16_full_range_model():
    m = read_tflite(mediapipe_file("face_detection_full_range_sparse.tflite"))
    ops = {o.op for o in m.operators}
    assert {"DENSIFY", "DEQUANTIZE", "CONV_2D", "DEPTHWISE_CONV_2D", "RESIZE_BILINEAR", "DEPTH_TO_SPACE"} <= ops
    assert m.tensors[m.inputs[0]].shape == (1, 192, 192, 3)
    assert [m.tensors[i].shape for i in m.outputs] == [(1, 2304, 16), (1, 2304, 1)]
    sparse = [t for t in m.tensors if t.sparsity is not None]
    assert sparse and all(t.dtype == "FLOAT16" for t in sparse)
    graph, _ = export_graph(m)
    assert not {o["op"] for o in graph["ops"]} & {"DENSIFY", "DEQUANTIZE"}


def test_save_and_load_graph_round_trip(tmp_path):
    graph, consts = export_graph(read_tflite(mediapipe_file("face_detection_short_range.tflite")))
    save_graph(tmp_path, graph, consts)
    g2, c2 = load_graph(tmp_path)
    assert g2 == graph
    assert sorted(c2) == sorted(consts)
    for k in consts:
        np.testing.assert_array_equal(c2[k], consts[k])


# ---------------------------------------------------------------------------------------------
# Errors name the file and the problem
# ---------------------------------------------------------------------------------------------


def test_truncated_file_names_the_file(tmp_path):
    data = mediapipe_file("face_detection_short_range.tflite").read_bytes()
    p = tmp_path / "cut.tflite"
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(TFLiteError, match=r"cut\.tflite.*(truncated|past the end)"):
        export_graph(read_tflite(p))


def test_not_a_tflite_file_names_the_file(tmp_path):
    p = tmp_path / "notes.tflite"
    p.write_bytes(b"this is not a flatbuffer at all")
    with pytest.raises(TFLiteError, match=r"notes\.tflite.*not a valid TFLite flatbuffer.*TFL3"):
        read_tflite(p)
    with pytest.raises(TFLiteError, match=r"missing\.tflite.*cannot read"):
        read_tflite(tmp_path / "missing.tflite")


def test_unsupported_op_names_the_file_and_op(tmp_path):
    w = ModelWriter()
    x = w.tensor([1, 4])
    y = w.tensor([1, 4])
    w.op("FLOOR", [x], [y])
    p = tmp_path / "floor.tflite"
    p.write_bytes(w.build([x], [y]))
    with pytest.raises(TFLiteError, match=r"floor\.tflite: operator 0 is FLOOR.*supported: ADD"):
        TFLiteGraph.from_tflite(p)


def test_bad_input_shape_is_reported():
    g = TFLiteGraph.from_directory(ASSETS / "blazeface-short")
    with pytest.raises(TFLiteError, match=r"input must be float32 \[B, 3, 128, 128\] \(NCHW\), got \(1, 128, 128, 3\)"):
        g(torch.zeros(1, 128, 128, 3))
