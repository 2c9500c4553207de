"""BlazeFace (exe_stream.detect) against MediaPipe 0.10.21, plus its parts on hand-built cases.

Parity: same number of faces, IoU >= 0.9 and score within 0.02 of
``mediapipe.solutions.face_detection.FaceDetection`` on the test images, on carphone frames
(through the FrameBatch path) and on a generated group photo at film distances.

MediaPipe 0.10.21's Python FaceDetection ignores ``min_detection_confidence``
(google-ai-edge/mediapipe#3896): its graphs keep their built-in thresholds, 0.5 for short
range and 0.6 for full range (``test_mediapipe_ignores_min_detection_confidence``). Parity
runs therefore use those thresholds on our side.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import av
import cv2
import mediapipe as mp
import numpy as np
import pytest
from conftest import DEVICES
import torch
from safetensors.numpy import load_file

from exe_stream.detect import (
    DEFAULT_DETECTOR, DETECTORS, DetectorOptions, detect_faces, detect_faces_rgb, get_detector,
)
from exe_stream.detect import convert as conv
from exe_stream.detect.blazeface import (
    MODEL_OPTIONS, box_iou, decode, load_blazeface, remove_letterbox, ssd_anchors, weighted_nms,
)
from exe_stream.types import FaceBatch, FrameBatch

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent
CLIPS = ROOT / "exe_stream" / "assets" / "clips"
ASSETS = ROOT / "exe_stream" / "assets" / "models"
# MediaPipe model_selection and its effective score threshold per detector.
MP = {"blazeface-short": (0, 0.5), "blazeface-full": (1, 0.6)}



def load_rgb(name: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(DATA / name)), cv2.COLOR_BGR2RGB)


def to_tensor(*images: np.ndarray, device: str = "cpu") -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(device).float() / 255.0


def carphone(every: int = 10) -> tuple[FrameBatch, list[np.ndarray]]:
    """Every n-th carphone frame as a FrameBatch (I420 planes) and as rgb24 arrays."""
    ys, us, vs, rgbs = [], [], [], []
    with av.open(str(CLIPS / "carphone_pristine.mp4")) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i % every:
                continue
            h, w = f.height, f.width
            a = f.to_ndarray(format="yuv420p")
            ys.append(a[:h])
            us.append(a[h : h + h // 4].reshape(h // 2, w // 2))
            vs.append(a[h + h // 4 :].reshape(h // 2, w // 2))
            rgbs.append(f.to_ndarray(format="rgb24"))
    n = len(ys)
    frames = FrameBatch(
        y=torch.from_numpy(np.stack(ys)), u=torch.from_numpy(np.stack(us)), v=torch.from_numpy(np.stack(vs)),
        frame_index=torch.arange(0, n * every, every, dtype=torch.int64),
        pts_seconds=torch.zeros(n, dtype=torch.float64), is_keyframe=torch.zeros(n, dtype=torch.bool),
        matrix="bt601", full_range=False,
    )
    return frames, rgbs


def mediapipe_faces(images: list[np.ndarray], name: str) -> list[list[tuple[float, np.ndarray]]]:
    """MediaPipe's detections per image: (score, box (x0, y0, x1, y1) normalised)."""
    sel, thr = MP[name]
    out = []
    with mp.solutions.face_detection.FaceDetection(model_selection=sel, min_detection_confidence=thr) as fd:
        for img in images:
            res = fd.process(img)
            faces = []
            for d in res.detections or []:
                bb = d.location_data.relative_bounding_box
                faces.append((d.score[0], np.array([bb.xmin, bb.ymin, bb.xmin + bb.width, bb.ymin + bb.height])))
            out.append(faces)
    return out


def iou(a, b) -> float:
    return float(box_iou(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)[None])[0])


def compare(ours: FaceBatch, ref: list[list[tuple[float, np.ndarray]]]) -> tuple[float, float]:
    """Assert parity; return (largest IoU deficit 1 - IoU, largest score difference)."""
    worst_iou, worst_score = 0.0, 0.0
    for row, faces in enumerate(ref):
        mine = (ours.frame_row == row).nonzero().flatten().tolist()
        assert len(mine) == len(faces), f"image {row}: {len(mine)} faces, MediaPipe {len(faces)}"
        for score, box in faces:
            best = max(mine, key=lambda j: iou(ours.boxes[j], box))
            o = iou(ours.boxes[best], box)
            ds = abs(float(ours.scores[best]) - score)
            assert o >= 0.9, f"image {row}: IoU {o:.3f} with MediaPipe's box"
            assert ds <= 0.02, f"image {row}: score {float(ours.scores[best]):.3f} vs MediaPipe {score:.3f}"
            worst_iou, worst_score = max(worst_iou, 1 - o), max(worst_score, ds)
    return worst_iou, worst_score


# ---------------------------------------------------------------------------------------------
# Registry and options
# ---------------------------------------------------------------------------------------------


def test_registry_and_default():
    assert sorted(DETECTORS) == ["blazeface-full", "blazeface-short"]
    assert DEFAULT_DETECTOR == DetectorOptions().name == "blazeface-full"


def test_unknown_detector_name_names_it_and_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown detector 'yolo'; available: blazeface-full, blazeface-short"):
        DetectorOptions(name="yolo")
    with pytest.raises(ValueError, match=r"unknown detector 'retina'; available: blazeface-full, blazeface-short"):
        get_detector("retina")


def test_default_threshold_is_the_models_mediapipe_threshold():
    assert DetectorOptions().threshold == 0.6  # blazeface-full, as MediaPipe's graph applies it
    assert DetectorOptions(name="blazeface-short").threshold == 0.5
    assert DetectorOptions(min_score=0.3).threshold == 0.3
    for name, (_, thr) in MP.items():
        assert DetectorOptions(name=name).threshold == thr


@pytest.mark.parametrize("kw, msg", [({"min_score": 1.5}, r"min_score must be in \[0, 1\], got 1.5"),
                                     ({"nms_iou": -0.1}, r"nms_iou must be in \[0, 1\], got -0.1"),
                                     ({"max_faces": -1}, r"max_faces must be >= 0, got -1")])
def test_bad_options_are_refused(kw, msg):
    with pytest.raises(ValueError, match=msg):
        DetectorOptions(**kw)


def test_bad_image_batch_is_refused():
    with pytest.raises(ValueError, match=r"images must be float32 \[B, 3, H, W\] in \[0, 1\], got \(2, 64, 64\)"):
        detect_faces_rgb(torch.zeros(2, 64, 64), DetectorOptions())


def test_models_are_loaded_once_per_name_and_device():
    a = load_blazeface("blazeface-short", "cpu")
    assert a is load_blazeface("blazeface-short", torch.device("cpu"))
    assert a is not load_blazeface("blazeface-full", "cpu")


# ---------------------------------------------------------------------------------------------
# Anchors, decoding, NMS, letterbox
# ---------------------------------------------------------------------------------------------


def test_anchors_match_mediapipe_layout():
    short = ssd_anchors(MODEL_OPTIONS["blazeface-short"][0])
    full = ssd_anchors(MODEL_OPTIONS["blazeface-full"][0])
    assert short.shape == (896, 4) and full.shape == (2304, 4)
    # Short range: 16x16 cells with 2 anchors (stride 8), then 8x8 cells with 6 (three stride-16 layers).
    torch.testing.assert_close(short[0], torch.tensor([0.5 / 16, 0.5 / 16, 1.0, 1.0]))
    torch.testing.assert_close(short[1], short[0])
    torch.testing.assert_close(short[2], torch.tensor([1.5 / 16, 0.5 / 16, 1.0, 1.0]))
    torch.testing.assert_close(short[511], torch.tensor([15.5 / 16, 15.5 / 16, 1.0, 1.0]))
    torch.testing.assert_close(short[512:518], torch.tensor([[0.5 / 8, 0.5 / 8, 1.0, 1.0]] * 6))
    torch.testing.assert_close(short[-1], torch.tensor([7.5 / 8, 7.5 / 8, 1.0, 1.0]))
    # Full range: one anchor per cell of a 48x48 grid (stride 4), row-major.
    torch.testing.assert_close(full[0], torch.tensor([0.5 / 48, 0.5 / 48, 1.0, 1.0]))
    torch.testing.assert_close(full[48], torch.tensor([0.5 / 48, 1.5 / 48, 1.0, 1.0]))
    torch.testing.assert_close(full[-1], torch.tensor([47.5 / 48, 47.5 / 48, 1.0, 1.0]))


def test_anchor_sizes_without_fixed_size():
    a, _ = MODEL_OPTIONS["blazeface-short"]
    free = ssd_anchors(type(a)(**{**a.__dict__, "fixed_anchor_size": False}))
    # Layer 0: scale 0.1484375 and the interpolated sqrt(0.1484375 * next scale).
    s0, s1 = 0.1484375, 0.1484375 + (0.75 - 0.1484375) / 3
    torch.testing.assert_close(free[0, 2:], torch.tensor([s0, s0]))
    torch.testing.assert_close(free[1, 2:], torch.tensor([(s0 * s1) ** 0.5] * 2))


def test_decode_hand_built_rows():
    _, d = MODEL_OPTIONS["blazeface-short"]
    anchors = torch.tensor([[0.25, 0.5, 1.0, 1.0], [0.75, 0.75, 1.0, 1.0]])
    raw = torch.zeros(1, 2, 16)
    raw[0, 0, :4] = torch.tensor([12.8, -6.4, 25.6, 12.8])  # dx = 0.1, dy = -0.05, w = 0.2, h = 0.1
    raw[0, 0, 4:6] = torch.tensor([-12.8, 12.8])  # first keypoint at anchor + (-0.1, 0.1)
    logits = torch.tensor([[1000.0, 0.0]])
    boxes, kps, scores = decode(raw, logits, anchors, d)
    torch.testing.assert_close(boxes[0, 0], torch.tensor([0.25, 0.40, 0.45, 0.50]))
    torch.testing.assert_close(kps[0, 0, 0], torch.tensor([0.15, 0.60]))
    torch.testing.assert_close(kps[0, 1, 5], torch.tensor([0.75, 0.75]))
    # Clipped at +-100 before the sigmoid; zero logit -> 0.5.
    torch.testing.assert_close(scores, torch.tensor([[1.0, 0.5]]))


def test_weighted_nms_merges_overlaps_and_keeps_the_best_score():
    boxes = torch.tensor([
        [0.10, 0.10, 0.30, 0.30],  # best of cluster A
        [0.12, 0.12, 0.32, 0.32],  # overlaps A (IoU ~0.68): merged
        [0.60, 0.60, 0.80, 0.80],  # cluster B alone
        [0.20, 0.20, 0.40, 0.40],  # IoU with A = 1/7 < 0.3: its own detection
    ])
    scores = torch.tensor([0.9, 0.6, 0.7, 0.8])
    kps = boxes[:, None, :2].repeat(1, 6, 1)
    b, s, k = weighted_nms(boxes, scores, kps, 0.3)
    torch.testing.assert_close(s, torch.tensor([0.9, 0.8, 0.7]))
    want_a = (0.9 * boxes[0] + 0.6 * boxes[1]) / 1.5
    torch.testing.assert_close(b[0], want_a)
    torch.testing.assert_close(k[0, 3], want_a[:2])
    torch.testing.assert_close(b[1], boxes[3])
    torch.testing.assert_close(b[2], boxes[2])
    # A higher threshold keeps both members of A apart; threshold 0 merges everything that touches.
    assert weighted_nms(boxes, scores, kps, 0.7)[0].shape[0] == 4
    assert weighted_nms(boxes, scores, kps, 0.0)[0].shape[0] == 2
    # Nothing in, nothing out.
    e = weighted_nms(boxes[:0], scores[:0], kps[:0], 0.3)
    assert e[0].shape == (0, 4) and e[1].shape == (0,) and e[2].shape == (0, 6, 2)


def test_remove_letterbox_geometry():
    # A 200 x 100 (W x H) frame letterboxed into a square of side 200: the frame spans y 0.25..0.75.
    xy = torch.tensor([[0.0, 0.25, 1.0, 0.75], [0.5, 0.5, 0.25, 0.5]])
    torch.testing.assert_close(remove_letterbox(xy, (100, 200)), torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.25, 0.5]]))
    # A tall frame: bars left and right.
    torch.testing.assert_close(remove_letterbox(torch.tensor([[0.25, 0.0]]), (200, 100)), torch.tensor([[0.0, 0.0]]))


def test_non_square_frame_equals_explicitly_padded_square():
    """Letterboxing (zero bars) then removing it gives the box of the same face drawn into a
    square frame with black bars, to float precision."""
    img = load_rgb("grace_hopper_512x512.jpg")[96:416]  # 512 x 320 (W x H)
    padded = np.zeros((512, 512, 3), np.uint8)
    padded[96:416] = img
    for name in DETECTORS:
        a = detect_faces_rgb(to_tensor(img), DetectorOptions(name=name))
        b = detect_faces_rgb(to_tensor(padded), DetectorOptions(name=name))
        assert len(a) == len(b) == 1
        px_a = a.boxes[0] * torch.tensor([512, 320, 512, 320])
        px_b = b.boxes[0] * 512 - torch.tensor([0, 96, 0, 96])
        torch.testing.assert_close(px_a, px_b, atol=1e-3, rtol=0)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)


def test_face_moved_in_a_padded_frame_keeps_its_box():
    """The astronaut's face at four places in a 2:1 frame: in pixels, the box moves with it.
    Steps are whole multiples of the short model's largest stride (16 input pixels = 64 frame
    pixels here), so the network sees the same picture, shifted."""
    face = load_rgb("astronaut.png")[30:286, 98:354]  # 256 x 256, the face ~95 px wide
    shifts = [0, 64, 128, 256]
    frames = []
    for dx in shifts:
        f = np.zeros((256, 512, 3), np.uint8)
        f[:, dx : dx + 256] = face
        frames.append(f)
    res = detect_faces_rgb(to_tensor(*frames), DetectorOptions(name="blazeface-short"))
    assert res.frame_row.tolist() == [0, 1, 2, 3]
    px = res.boxes * torch.tensor([512, 256, 512, 256]) - torch.tensor(shifts, dtype=torch.float32)[:, None] * torch.tensor([1, 0, 1, 0])
    torch.testing.assert_close(px, px[:1].expand(4, -1), atol=0.5, rtol=0)


# ---------------------------------------------------------------------------------------------
# Parity with MediaPipe
# ---------------------------------------------------------------------------------------------


def test_mediapipe_ignores_min_detection_confidence():
    img = load_rgb("astronaut.png")
    for sel in (0, 1):
        with mp.solutions.face_detection.FaceDetection(model_selection=sel, min_detection_confidence=0.99) as fd:
            res = fd.process(img)
        assert len(res.detections) == 1 and res.detections[0].score[0] < 0.95


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_parity_with_mediapipe_on_test_images(name):
    imgs = [load_rgb(f) for f in ("astronaut.png", "grace_hopper_512x512.jpg", "Tom_Hanks_54745.png")]
    # Different sizes: one call each (a batch shares one size).
    ref = mediapipe_faces(imgs, name)
    opts = DetectorOptions(name=name, min_score=MP[name][1])
    for img, faces in zip(imgs, ref):
        compare(detect_faces_rgb(to_tensor(img), opts), [faces])
    assert all(len(f) == 1 for f in ref)


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_parity_with_mediapipe_on_carphone_frames(name):
    _, rgbs = carphone(every=2)
    ours = detect_faces_rgb(to_tensor(*rgbs), DetectorOptions(name=name, min_score=MP[name][1]))  # one forward
    compare(ours, mediapipe_faces(rgbs, name))
    assert ours.frame_row.tolist() == list(range(len(rgbs)))  # a face in every frame


@pytest.mark.parametrize("name", sorted(DETECTORS))
@pytest.mark.parametrize("device", DEVICES)
def test_frame_batch_path(name, device):
    """detect_faces on YUV planes = detect_faces_rgb on the project's own RGB conversion.

    Against MediaPipe on PyAV's rgb24 the boxes agree (IoU >= 0.9) but the full-range scores
    can differ by a few hundredths: swscale's YUV->RGB differs from roi.yuv_to_rgb by up to
    29 levels at chroma edges (mean 1.5), and that model reacts to it.
    """
    from exe_stream.roi import yuv_to_rgb

    frames, rgbs = carphone(every=10)
    frames = FrameBatch(**{**frames.__dict__, "y": frames.y.to(device), "u": frames.u.to(device), "v": frames.v.to(device)})
    opts = DetectorOptions(name=name, min_score=MP[name][1])
    ours = detect_faces(frames, opts)  # one batched forward
    assert ours.boxes.device.type == "cpu"
    rgb = detect_faces_rgb(yuv_to_rgb(frames.y, frames.u, frames.v, frames.matrix, frames.full_range), opts)
    assert ours.frame_row.tolist() == rgb.frame_row.tolist() == list(range(len(rgbs)))
    torch.testing.assert_close(ours.boxes, rgb.boxes, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours.scores, rgb.scores, atol=1e-4, rtol=0)
    for row, faces in enumerate(mediapipe_faces(rgbs, name)):
        assert len(faces) == 1 and iou(ours.boxes[row], faces[0][1]) >= 0.9


# The group photo: six real faces, ~100-110 px wide, on a 1280 x 720 canvas (8 % of the frame
# width: a medium-wide film shot). Sources: (image, face box x0, y0, x1, y1 in its pixels).
def group_photo() -> tuple[np.ndarray, np.ndarray]:
    _, car = carphone(every=10)
    sources = [
        (load_rgb("astronaut.png"), (178, 81, 273, 174)),
        (load_rgb("grace_hopper_512x512.jpg"), (164, 124, 367, 326)),
        (load_rgb("Tom_Hanks_54745.png"), (8, 19, 101, 106)),
        (car[0], (60, 42, 115, 97)),
        (car[2], (60, 40, 113, 93)),
        (car[7], (46, 33, 106, 93)),
    ]
    widths = [100, 110, 100, 110, 100, 110]
    centres = [(200, 190), (640, 190), (1080, 190), (200, 500), (640, 500), (1080, 500)]
    rng = np.random.default_rng(0)
    canvas = (110 + rng.integers(0, 20, (720, 1280, 3))).astype(np.uint8)
    truth = []
    for (img, (x0, y0, x1, y1)), width, (cx, cy) in zip(sources, widths, centres):
        s = width / (x1 - x0)
        m = 0.9 * (x1 - x0)  # head-and-shoulders context around the face
        h, w = img.shape[:2]
        cx0, cy0, cx1, cy1 = max(0, int(x0 - m)), max(0, int(y0 - m)), min(w, int(x1 + m)), min(h, int(y1 + 1.5 * m))
        crop = cv2.resize(img[cy0:cy1, cx0:cx1], (round((cx1 - cx0) * s), round((cy1 - cy0) * s)), interpolation=cv2.INTER_AREA)
        px, py = cx - crop.shape[1] // 2, cy - crop.shape[0] // 2
        canvas[py : py + crop.shape[0], px : px + crop.shape[1]] = crop
        truth.append([(x0 - cx0) * s + px, (y0 - cy0) * s + py, (x1 - cx0) * s + px, (y1 - cy0) * s + py])
    return canvas, np.array(truth) / np.array([1280, 720, 1280, 720])


def test_group_photo_needs_the_full_range_model():
    canvas, truth = group_photo()
    counts = {}
    for name in sorted(DETECTORS):
        ref = mediapipe_faces([canvas], name)
        ours = detect_faces_rgb(to_tensor(canvas), DetectorOptions(name=name, min_score=MP[name][1]))
        compare(ours, ref)
        default = detect_faces_rgb(to_tensor(canvas), DetectorOptions(name=name))
        found = sum(any(iou(b, t) > 0.5 for b in default.boxes) for t in truth)
        counts[name] = (len(ref[0]), len(ours), found)
    # MediaPipe short range finds none of the six; full range finds most; ours does the same.
    assert counts["blazeface-short"][:2] == (0, 0) and counts["blazeface-short"][2] == 0
    assert counts["blazeface-full"][0] >= 4 and counts["blazeface-full"][1] == counts["blazeface-full"][0]
    assert counts["blazeface-full"][2] >= 4  # default options (the model's threshold), matched to the faces drawn


# ---------------------------------------------------------------------------------------------
# FaceBatch contract: batching, order, max_faces
# ---------------------------------------------------------------------------------------------


def two_faces() -> np.ndarray:
    """A 640 x 360 frame with a large and a small face."""
    f = np.zeros((360, 640, 3), np.uint8)
    f[30:330, 20:320] = cv2.resize(load_rgb("grace_hopper_512x512.jpg"), (300, 300), interpolation=cv2.INTER_AREA)
    f[80:280, 380:580] = cv2.resize(load_rgb("astronaut.png")[30:286, 98:354], (200, 200), interpolation=cv2.INTER_AREA)
    return f


@pytest.mark.parametrize("device", DEVICES)
def test_batch_order_and_max_faces(device):
    f = two_faces()
    empty = np.zeros_like(f)
    opts = DetectorOptions(name="blazeface-full")
    res = detect_faces_rgb(to_tensor(f, empty, f[:, ::-1].copy(), device=device), opts)
    assert res.frame_row.tolist() == [0, 0, 2, 2]
    assert res.face_index.tolist() == [0, 1, 0, 1]
    area = (res.boxes[:, 2] - res.boxes[:, 0]) * (res.boxes[:, 3] - res.boxes[:, 1])
    assert area[0] > area[1] and area[2] > area[3]
    assert res.keypoints.shape == (4, 6, 2) and res.scores.dtype == torch.float32
    # Batch invariance: the same frame alone gives the same faces.
    alone = detect_faces_rgb(to_tensor(f, device=device), opts)
    torch.testing.assert_close(alone.boxes, res.boxes[:2], atol=1e-5, rtol=0)
    # The mirrored frame mirrors the boxes.
    torch.testing.assert_close(1 - res.boxes[2:, [2, 0]], res.boxes[:2, [0, 2]], atol=0.01, rtol=0)
    one = detect_faces_rgb(to_tensor(f, empty, f, device=device), DetectorOptions(name="blazeface-full", max_faces=1))
    assert one.frame_row.tolist() == [0, 2] and one.face_index.tolist() == [0, 0]
    torch.testing.assert_close(one.boxes[0], res.boxes[0])


def test_no_faces_and_empty_batches():
    none = detect_faces_rgb(torch.zeros(2, 3, 90, 160), DetectorOptions())
    assert len(none) == 0 and none.keypoints.shape == (0, 6, 2)
    assert len(detect_faces_rgb(torch.zeros(0, 3, 90, 160), DetectorOptions())) == 0


# ---------------------------------------------------------------------------------------------
# The converter reproduces the committed assets from MediaPipe's own files
# ---------------------------------------------------------------------------------------------


def assert_same_model_dir(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "weights.safetensors")), load_file(str(b / "weights.safetensors"))
    assert sorted(wa) == sorted(wb)
    for k in wa:
        assert wa[k].dtype == wb[k].dtype and wa[k].shape == wb[k].shape, k
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
    for f in ("graph.json", "model.json", "LICENSE"):
        assert (a / f).read_text() == (b / f).read_text(), f


def test_converter_reproduces_the_committed_assets(tmp_path):
    written = conv.convert(None, tmp_path)  # the installed mediapipe package's files
    assert sorted(written) == ["blazeface-full", "blazeface-short"]
    for name, d in written.items():
        assert_same_model_dir(d, ASSETS / name)
    card = (ASSETS / "blazeface-full" / "model.json").read_text()
    assert '"license": "Apache-2.0"' in card and conv.sha256_file(conv.installed_mediapipe_file("blazeface-full")) in card
    assert "Copyright (c) Google LLC" in (ASSETS / "blazeface-full" / "LICENSE").read_text()


def test_converter_reads_a_wheel_and_single_files(tmp_path):
    whl = tmp_path / "mediapipe-0.10.21-cp311-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        for name, f in conv.SOURCE_FILES.items():
            z.write(conv.installed_mediapipe_file(name), f"{conv.PACKAGE_DIR}/{f}")
    out = tmp_path / "out"
    assert conv.main(["--source", str(whl), "--out", str(out)]) == 0
    assert_same_model_dir(out / "blazeface-short", ASSETS / "blazeface-short")
    single = conv.convert(conv.installed_mediapipe_file("blazeface-short"), tmp_path / "one")
    assert sorted(single) == ["blazeface-short"]


def test_converter_errors_name_the_source(tmp_path, capsys):
    assert conv.main(["--source", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert "nowhere' does not exist" in capsys.readouterr().err
    bogus = tmp_path / "model.tflite"
    bogus.write_bytes(b"x")
    assert conv.main(["--source", str(bogus), "--out", str(tmp_path)]) == 2
    assert "model.tflite: not one of the BlazeFace files (face_detection_short_range.tflite" in capsys.readouterr().err
