"""Convert facex's emotion model (``model_optimized.tflite``) into a model directory.

    python -m exe_stream.models.convert_facex [--tflite FILE] [--out DIR]

``--tflite`` is facex's ``model_optimized.tflite`` or a facex wheel
(``pip download --no-deps facex==1.1.0``; the file is read from ``facex/assets/``). Without
it, the file of an installed ``facex`` package is used (found without importing facex, which
imports TensorFlow).

The file is read with exe-stream's own TFLite reader (``exe_stream.tflite``, no TFLite
runtime): ``export_graph`` folds the constant DEQUANTIZE ops and dequantises the 8-bit
weights (the 1x1 convs and the dense layer store symmetric int8 in UINT8 tensors, zero point
0; 15 depthwise kernels store asymmetric uint8 with a zero point); then the graph is checked
op by op against ``FacexMobileNetV2`` (op types, wiring, strides, paddings, activations,
residual adds, weight shapes) and the weights are mapped onto it:

- CONV_2D filter (out, kh, kw, in) -> (out, in, kh, kw)
- DEPTHWISE_CONV_2D filter (1, kh, kw, channels) -> (channels, 1, kh, kw)
- FULLY_CONNECTED weights (classes, 6*6*1280 in NHWC order) -> (classes, 1280*6*6 in NCHW order)
- biases (the folded BatchNorms) unchanged

Storage: tensors that the original keeps as float32 (every bias, the stem conv, block 0's
convs and block 1's depthwise) stay float32; the 8-bit ones stay 8-bit, as ``<key>_q`` (int8
for the symmetric ones, uint8 for the depthwise kernels with a zero point), ``<key>_scale`` and
``<key>_zero_point``, which ``FacexMobileNetV2`` dequantises on loading to exactly the float32
values TFLite's DEQUANTIZE gives. So weights.safetensors is 2.6 MB (float32 would be 10 MB)
and lossless; float16 storage (5 MB) was measured to move the probabilities by up to 0.012,
since this network's logits span about 35 and react strongly to weight rounding. The output
is a pure function of the input file: converting the same file twice gives byte-identical
weights.safetensors.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ._convert import installed_package_file, run_conversion
from ..errors import ModelError
from ..tflite import Quantization, TFLiteError, TFLiteModel, export_graph, read_tflite
from .card import ModelCard, save_model
from .facex_mobilenet import (
    FEATURE_SIZE, HEAD_CHANNELS, INPUT_SIZE, STEM_CHANNELS, FacexMobileNetV2, block_configs, dequantize_state,
)

MODEL_NAME = "facex"
ARCHITECTURE = "facex_mobilenet_v2"
PACKAGE = "facex==1.1.0"
PACKAGE_FILE = "facex/assets/model_optimized.tflite"
SOURCE = "PyPI facex 1.1.0 facex/assets/model_optimized.tflite"
# sha256 of model_optimized.tflite as shipped in the facex 1.1.0 wheel (its RECORD agrees).
SOURCE_SHA256 = "181e9dc6b5b19b7a4a3ee661d8de9969249b72c317b2080d79ac12d2b7027da5"
# facex's class names in the network's output order (facex/core.py, EmotionClassifier).
FACEX_LABELS = ("anger", "disgust", "fear", "happy", "neutral", "sadness", "surprised")
# The same classes under the names fer2013-minixception uses, so the two models' outputs can
# be compared class by class (still in facex's output order).
CANONICAL = {"anger": "angry", "sadness": "sad", "surprised": "surprise"}
LABELS = tuple(CANONICAL.get(n, n) for n in FACEX_LABELS)
# facex classifies the Haar-cascade face box (OpenCV haarcascade_frontalface_default,
# detectMultiScale(grey, 1.1, 4)) cropped exactly. Measured against BlazeFace full range (the
# default detector) on the 18 faces both found (the 3 test images, 15 carphone frames): the
# Haar box side is 1.08x the BlazeFace box's longer side (median; 0.91-1.14) and its centre
# sits 0.08 of the side higher. The square crop's IoU with the Haar box is highest, 0.795 on
# average, at margin 0.04 (0.794 at 0.05, 0.782 at 0, 0.752 at 0.10); hence 0.05 per side,
# a crop 1.1x the BlazeFace box. (Against BlazeFace short range the Haar box is 1.20x and the
# best margin 0.10.) The model's top class follows crop placement closely on small faces: on
# the 176x144 carphone frames, crops around BlazeFace boxes give facex's class on only about a
# third of the frames at any margin from 0 to 0.3 (crops of the Haar boxes themselves: 14/15),
# while the three test images agree at 0.05.
CROP_MARGIN = 0.05
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "assets" / "models" / MODEL_NAME

FACEX_LICENSE = """\
The weights in this directory were converted by exe-stream (exe_stream.models.convert_facex)
from facex's emotion model, facex/assets/model_optimized.tflite in the PyPI facex 1.1.0 wheel
(sha256 181e9dc6b5b19b7a4a3ee661d8de9969249b72c317b2080d79ac12d2b7027da5). The network and its
values are unchanged (8-bit weights are still stored as 8 bits with their scales); only the
layout and file format changed (see exe_stream/models/convert_facex.py).

facex is released under the MIT License (package metadata: "License :: OSI Approved :: MIT
License"; author Hasby Fahrudin, https://github.com/hfahrudin/facex). The LICENSE file in the
package is the MIT template with its copyright line left unfilled ("Copyright (c) [year]
[fullname]"); the author named in the package metadata is given below.

MIT License

Copyright (c) Hasby Fahrudin

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

# Layout changes from TFLite to torch, applied alike to float and 8-bit constants.
_OHWI_TO_OIHW: Callable[[np.ndarray], np.ndarray] = lambda a: a.transpose(0, 3, 1, 2)  # noqa: E731
_SAME: Callable[[np.ndarray], np.ndarray] = lambda a: a  # noqa: E731
# Keras' stride-2 ZeroPadding2D as a TFLite PAD paddings constant (NHWC): 0 before, 1 after.
_STRIDE2_PADDINGS = [[0, 0], [0, 1], [0, 1], [0, 0]]


def _not_facex(path: str, what: str) -> ModelError:
    return ModelError(f"{path}: not facex's MobileNetV2 emotion graph: {what}")


class _Walker:
    """Steps through the exported graph's ops, checking each against what the network needs."""

    def __init__(self, model: TFLiteModel, graph: dict[str, Any], consts: dict[str, np.ndarray]) -> None:
        self.model = model
        self.where = model.path
        self.ops = graph["ops"]
        self.tensors = graph["tensors"]
        self.consts = consts
        self.pos = 0

    def fail(self, what: str) -> ModelError:
        return _not_facex(self.where, what)

    def take(self, op: str, x: int, **options: Any) -> dict[str, Any]:
        """The next op, which must be ``op`` reading activation ``x`` with ``options``."""
        if self.pos >= len(self.ops):
            raise self.fail(f"the graph ends after {self.pos} ops, expected {op}")
        o = self.ops[self.pos]
        where = f"operator {self.pos} ({o['op']})"
        if o["op"] != op:
            raise self.fail(f"operator {self.pos} is {o['op']}, expected {op}")
        if not o["inputs"] or o["inputs"][0] != x:
            raise self.fail(f"{where} reads tensor {o['inputs'][:1]}, expected the previous output {x}")
        for k, want in options.items():
            got = o["options"].get(k)
            if got != want:
                raise self.fail(f"{where} has {k}={got!r}, expected {want!r}")
        self.pos += 1
        return o

    def const(self, o: dict[str, Any], slot: int, shape: tuple[int, ...]) -> tuple[np.ndarray, int]:
        """Constant input ``slot`` of op ``o`` with the expected TFLite shape; and its tensor index."""
        i = o["inputs"][slot] if slot < len(o["inputs"]) else -1
        entry = self.tensors.get(str(i))
        if entry is None or "constant" not in entry:
            raise self.fail(f"operator {o['op']} input {slot} is not a constant")
        v = self.consts[entry["constant"]]
        if tuple(v.shape) != shape:
            raise self.fail(f"constant {entry['name']!r} has shape {list(v.shape)}, expected {list(shape)}")
        return v, i

    def out(self, o: dict[str, Any]) -> int:
        return o["outputs"][0]


def _stored_8bit(model: TFLiteModel, index: int) -> tuple[np.ndarray, Quantization] | None:
    """The 8-bit integers and quantisation behind constant ``index`` (the tensor itself, or the
    input of the constant DEQUANTIZE that produced it), as TFLite's kernels read them: legacy
    UINT8 weights with zero point 0 are symmetric int8 (the same rule as ``export_graph``).
    None when the constant is stored as float."""
    src = index
    for op in model.operators:
        if op.op == "DEQUANTIZE" and op.outputs and op.outputs[0] == index:
            src = op.inputs[0]
    t = model.tensors[src]
    if t.dtype not in ("UINT8", "INT8"):
        return None
    q = model.constant(src)
    if t.quantization is None or t.quantization.scale.size != 1:
        raise ModelError(f"{model.path}: 8-bit tensor {t.name!r} should have one (per-tensor) scale")
    if t.dtype == "UINT8" and src == index and not t.quantization.zero_point.any():
        q = q.view(np.int8)
    return q, t.quantization


def tflite_to_state_dict(source: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read facex's .tflite; return FacexMobileNetV2's state dict (storage dtypes as described
    in the module docstring) and facts about the file: input_size [h, w], channels,
    num_classes, description (the converter that wrote it)."""
    model = read_tflite(source)
    # The input first: another model's graph may hold ops export_graph cannot describe.
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise _not_facex(model.path, f"{len(model.inputs)} inputs and {len(model.outputs)} outputs, expected 1 and 1")
    in_shape = list(model.tensors[model.inputs[0]].shape)
    if in_shape != [1, INPUT_SIZE, INPUT_SIZE, 3]:
        raise _not_facex(model.path, f"input shape {in_shape}, expected [1, {INPUT_SIZE}, {INPUT_SIZE}, 3]")
    graph, consts = export_graph(model)
    w = _Walker(model, graph, consts)

    state: dict[str, torch.Tensor] = {}

    def put(key: str, value: np.ndarray, index: int, layout: Callable[[np.ndarray], np.ndarray]) -> None:
        """Store constant ``index`` (dequantised: ``value``) as ``key`` in torch layout."""
        stored = _stored_8bit(model, index)
        if stored is None:
            state[key] = torch.from_numpy(np.ascontiguousarray(layout(value), dtype=np.float32))
            return
        q, quant = stored
        q = np.ascontiguousarray(layout(q))
        scale = quant.scale.astype(np.float32).reshape(1)
        zero = quant.zero_point.astype(np.int32).reshape(1)
        # The stored triple must give back export_graph's float32 values exactly.
        exact = (q.astype(np.float32) - zero.astype(np.float32)) * scale
        assert np.array_equal(exact, layout(value)), key
        state[key + "_q"] = torch.from_numpy(q)
        state[key + "_scale"] = torch.from_numpy(scale)
        state[key + "_zero_point"] = torch.from_numpy(zero)

    def pad(x: int) -> int:
        o = w.take("PAD", x)
        p, _ = w.const(o, 1, (4, 2))
        if p.tolist() != _STRIDE2_PADDINGS:
            raise w.fail(f"PAD before a stride-2 layer pads {p.tolist()}, expected {_STRIDE2_PADDINGS}")
        return w.out(o)

    def conv1x1(x: int, prefix: str, cin: int, cout: int, act: str) -> int:
        o = w.take("CONV_2D", x, stride_h=1, stride_w=1, fused_activation_function=act,
                   dilation_h_factor=1, dilation_w_factor=1)
        k, ki = w.const(o, 1, (cout, 1, 1, cin))
        b, bi = w.const(o, 2, (cout,))
        put(f"{prefix}.weight", k, ki, _OHWI_TO_OIHW)
        put(f"{prefix}.bias", b, bi, _SAME)
        return w.out(o)

    x = model.inputs[0]
    # Stem: pad (0, 1), 3x3 stride-2 VALID conv, ReLU6.
    o = w.take("CONV_2D", pad(x), padding="VALID", stride_h=2, stride_w=2, fused_activation_function="RELU6",
               dilation_h_factor=1, dilation_w_factor=1)
    k, ki = w.const(o, 1, (STEM_CHANNELS, 3, 3, 3))
    b, bi = w.const(o, 2, (STEM_CHANNELS,))
    put("stem.weight", k, ki, _OHWI_TO_OIHW)
    put("stem.bias", b, bi, _SAME)
    x = w.out(o)
    for j, (cin, cout, stride, t) in enumerate(block_configs()):
        p = f"blocks.{j}"
        block_in = x
        hidden = cin * t
        if t != 1:
            x = conv1x1(x, f"{p}.expand", cin, hidden, "RELU6")
        if stride == 2:
            x = pad(x)
        o = w.take("DEPTHWISE_CONV_2D", x, padding="SAME" if stride == 1 else "VALID", stride_h=stride,
                   stride_w=stride, depth_multiplier=1, fused_activation_function="RELU6",
                   dilation_h_factor=1, dilation_w_factor=1)
        k, ki = w.const(o, 1, (1, 3, 3, hidden))
        b, bi = w.const(o, 2, (hidden,))
        put(f"{p}.depthwise.weight", k, ki, lambda a: a.transpose(3, 0, 1, 2))  # 1HWC -> C1HW
        put(f"{p}.depthwise.bias", b, bi, _SAME)
        x = conv1x1(w.out(o), f"{p}.project", hidden, cout, "NONE")
        if stride == 1 and cin == cout:
            add = w.ops[w.pos] if w.pos < len(w.ops) else None
            if add is None or add["op"] != "ADD" or sorted(add["inputs"]) != sorted([block_in, x]):
                raise w.fail(f"block {j} ({cin} -> {cout} channels, stride 1) should end with an ADD of its "
                             f"input {block_in} and its projection {x}")
            act = add["options"].get("fused_activation_function")
            if act != "NONE":
                raise w.fail(f"operator {w.pos} (ADD) has fused_activation_function={act!r}, expected 'NONE'")
            w.pos += 1
            x = w.out(add)
    x = conv1x1(x, "head", block_configs()[-1][1], HEAD_CHANNELS, "RELU6")
    # Dense over the flattened 6 x 6 x 1280 map (TFLite flattens NHWC; torch flattens NCHW).
    o = w.take("FULLY_CONNECTED", x, fused_activation_function="NONE", weights_format=0)
    fc = w.tensors[str(o["inputs"][1])]
    n = int(fc["shape"][0]) if fc.get("shape") else 0
    feat = HEAD_CHANNELS * FEATURE_SIZE * FEATURE_SIZE
    k, ki = w.const(o, 1, (n, feat))
    b, bi = w.const(o, 2, (n,))
    put("classifier.weight", k, ki,
        lambda a: a.reshape(n, FEATURE_SIZE, FEATURE_SIZE, HEAD_CHANNELS).transpose(0, 3, 1, 2).reshape(n, feat))
    put("classifier.bias", b, bi, _SAME)
    o = w.take("SOFTMAX", w.out(o), beta=1.0)
    if w.out(o) != model.outputs[0] or w.pos != len(w.ops):
        raise w.fail(f"{len(w.ops) - w.pos} ops follow the softmax, or it is not the graph's output")

    # Every parameter of the network is filled, with its shape.
    want = FacexMobileNetV2(num_classes=n, in_channels=3).state_dict()
    floats = dict(state)
    dequantize_state(floats)
    assert sorted(want) == sorted(floats), sorted(set(want) ^ set(floats))
    for key, v in want.items():
        assert tuple(floats[key].shape) == tuple(v.shape), key
    facts = {"input_size": [INPUT_SIZE, INPUT_SIZE], "channels": 3, "num_classes": n,
             "description": model.description}
    return state, facts


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert(source: str | Path, out_dir: str | Path = DEFAULT_OUT, license_text: str = FACEX_LICENSE) -> str:
    """Convert ``source`` (facex's model_optimized.tflite) into the model directory ``out_dir``.

    Returns the content hash of the written directory. Raises ModelError when the file is
    missing, is not a TFLite file, or is not facex's 7-class MobileNetV2 graph.
    """
    source = Path(source)
    if not source.is_file():
        raise ModelError(f"source file {str(source)!r} does not exist")
    try:
        state, facts = tflite_to_state_dict(source)
    except TFLiteError as e:
        raise ModelError(f"{str(source)!r} is not a readable TFLite model: {e}") from e
    if facts["num_classes"] != len(LABELS):
        raise ModelError(
            f"{str(source)!r} has {facts['num_classes']} classes; facex's model has {len(LABELS)} "
            f"{list(FACEX_LABELS)}"
        )
    digest = sha256_file(source)
    src = SOURCE if digest == SOURCE_SHA256 else f"{source.name} (sha256 differs from {SOURCE})"
    card = ModelCard(
        name=MODEL_NAME,
        architecture=ARCHITECTURE,
        labels=LABELS,
        input_size=tuple(facts["input_size"]),
        # facex classifies greyscale (cv2 BGR2GRAY, the same 0.299/0.587/0.114 weights as our
        # "gray") replicated into the 3 input channels; the network does the replication, so
        # the crop is 1 channel. "rgb" would feed it colour it never saw from facex.
        colour="gray",
        # facex feeds skimage.transform.resize of a uint8 crop: floats in [0, 1].
        mean=(0.0,),
        std=(1.0,),
        crop_margin=CROP_MARGIN,
        source=src,
        license="MIT",
        task="emotion",
        extra={
            "source_sha256": digest,
            "source_package": PACKAGE,
            "source_file": PACKAGE_FILE,
            "source_labels": list(FACEX_LABELS),
            "tflite_description": facts["description"],
            "weights_storage": "as in the original: float32, and 8-bit (<key>_q, _scale, _zero_point) "
                               "dequantised to float32 on loading",
            "facex_preprocessing": "Haar-cascade face box of the greyscale frame, resized to 200x200x3 "
                                   "(skimage.transform.resize, anti-aliased), [0, 1]",
            "converted_by": "exe_stream.models.convert_facex",
        },
    )
    return save_model(out_dir, card, state, license_text=license_text)


def _installed_facex_file() -> Path | None:
    """facex/assets/model_optimized.tflite of an installed facex package, found without importing it."""
    return installed_package_file("facex", "assets/model_optimized.tflite")


def _from_wheel(wheel: Path, workdir: Path) -> Path:
    """Extract facex/assets/model_optimized.tflite from a facex wheel into ``workdir``."""
    try:
        with zipfile.ZipFile(wheel) as z:
            if PACKAGE_FILE not in z.namelist():
                raise ModelError(f"{str(wheel)!r} has no {PACKAGE_FILE}; expected a {PACKAGE} wheel")
            out = workdir / Path(PACKAGE_FILE).name
            out.write_bytes(z.read(PACKAGE_FILE))
            return out
    except zipfile.BadZipFile as e:
        raise ModelError(f"{str(wheel)!r} is not a wheel (zip) file: {e}") from e


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m exe_stream.models.convert_facex", description=__doc__.split("\n")[0])
    ap.add_argument("--tflite", type=Path,
                    help="facex's model_optimized.tflite or a facex wheel (default: from an installed facex package)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"model directory to write (default: {DEFAULT_OUT})")
    args = ap.parse_args(argv)

    def from_file_or_wheel(source: Path) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            if source.suffix == ".whl" and source.is_file():
                source = _from_wheel(source, Path(tmp))
            return convert(source, args.out)

    return run_conversion(
        args.tflite or _installed_facex_file(),
        f"no --tflite given and no installed facex package found; run `pip download --no-deps {PACKAGE}` "
        f"and pass --tflite with the wheel or {PACKAGE_FILE} from it",
        from_file_or_wheel, args.out)


if __name__ == "__main__":
    sys.exit(main())
