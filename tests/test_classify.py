"""classify: crop geometry, shared crops, batching, and the crops the models are fed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import exe_stream.classify as classify
from exe_stream.classify import classify_faces, face_rois
from exe_stream.models import EmotionModel, ModelCard, build_network, load_model, save_model
from exe_stream.types import FaceBatch, FrameBatch
from media import clip_frames

CLIP = Path(__file__).parent.parent / "exe_stream" / "assets" / "clips" / "carphone_pristine.mp4"
LABELS = ("a", "b", "c")


def _faces(boxes, rows) -> FaceBatch:
    n = len(rows)
    return FaceBatch(
        frame_row=torch.tensor(rows, dtype=torch.int64),
        face_index=torch.zeros(n, dtype=torch.int16),
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
        scores=torch.ones(n),
        keypoints=torch.zeros(n, 6, 2),
    )


def _frames(y: np.ndarray, u: np.ndarray | None = None, v: np.ndarray | None = None, full_range=True) -> FrameBatch:
    b, h, w = y.shape
    ch = (b, (h + 1) // 2, (w + 1) // 2)
    u = np.full(ch, 128, np.uint8) if u is None else u
    v = np.full(ch, 128, np.uint8) if v is None else v
    return FrameBatch(
        y=torch.from_numpy(y), u=torch.from_numpy(u), v=torch.from_numpy(v),
        frame_index=torch.arange(b, dtype=torch.int64), pts_seconds=torch.zeros(b, dtype=torch.float64),
        is_keyframe=torch.ones(b, dtype=torch.bool), full_range=full_range,
    )


class _Spy(nn.Module):
    """Records every input batch; returns fixed logits (class 0 most likely)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return torch.arange(self.n, 0, -1, dtype=torch.float32).expand(x.shape[0], -1)


def _spy_model(model_id: str, **card) -> EmotionModel:
    base = dict(name=model_id, architecture="resnet18", labels=LABELS, input_size=(16, 16), colour="gray",
                mean=(0.25,), std=(0.5,), crop_margin=0.0, source="test", license="none")
    base.update(card)
    c = ModelCard(**base)
    return EmotionModel(model_id, (c,), (_Spy(len(LABELS)),), "0" * 64, c.labels, torch.device("cpu"))


def _bilinear(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, oh: int, ow: int) -> np.ndarray:
    """Independent reference: [H, W] image -> [oh, ow] crop; half-pixel centres, zeros outside."""
    h, w = img.shape
    out = np.zeros((oh, ow))
    for r in range(oh):
        for c in range(ow):
            sx = x0 + (c + 0.5) * (x1 - x0) / ow - 0.5  # in pixel-centre units
            sy = y0 + (r + 0.5) * (y1 - y0) / oh - 0.5
            jx, iy = int(np.floor(sx)), int(np.floor(sy))
            fx, fy = sx - jx, sy - iy
            acc = 0.0
            for di, wy in ((0, 1 - fy), (1, fy)):
                for dj, wx in ((0, 1 - fx), (1, fx)):
                    i, j = iy + di, jx + dj
                    if 0 <= i < h and 0 <= j < w:
                        acc += wy * wx * img[i, j]
            out[r, c] = acc
    return out


# face_rois ------------------------------------------------------------------------------


def test_face_rois_square_margin_and_frame_row():
    h, w = 100, 200
    faces = _faces(
        [
            [0.4, 0.4, 0.6, 0.6],  # 40 x 20 px (wide), centre (100, 50)
            [0.1, 0.2, 0.15, 0.5],  # 10 x 30 px (tall), centre (25, 35)
            [-0.05, 0.9, 0.05, 1.1],  # cut by the border: 20 x 20 px, centre (0, 100)
        ],
        [0, 3, 1],
    )
    rois = face_rois(faces, (h, w), 0.25)
    assert rois.dtype == torch.float32 and rois.shape == (3, 5)
    expected = torch.tensor(
        [
            [0, 100 - 30, 50 - 30, 100 + 30, 50 + 30],  # side 40 * 1.5 = 60
            [3, 25 - 22.5, 35 - 22.5, 25 + 22.5, 35 + 22.5],  # side 30 * 1.5 = 45
            [1, -15, 85, 15, 115],  # side 20 * 1.5 = 30, reaching outside the frame
        ]
    )
    torch.testing.assert_close(rois, expected)
    sides_x, sides_y = rois[:, 3] - rois[:, 1], rois[:, 4] - rois[:, 2]
    torch.testing.assert_close(sides_x, sides_y)
    # Margin 0: the square around the longer side.
    torch.testing.assert_close(face_rois(faces, (h, w), 0.0)[0], torch.tensor([0.0, 80, 30, 120, 70]))


def test_face_rois_empty_and_bad_margin():
    assert face_rois(FaceBatch.empty(), (10, 10), 0.1).shape == (0, 5)
    with pytest.raises(ValueError, match=r"crop_margin must be >= 0, got -0.5"):
        face_rois(FaceBatch.empty(), (10, 10), -0.5)


# classify_faces -------------------------------------------------------------------------


def _hand_frames() -> FrameBatch:
    """Two 40x64 full-range gray frames with distinct patterns (values 20..230)."""
    yy, xx = np.mgrid[0:40, 0:64]
    f0 = 20 + (3 * xx + 5 * yy) % 211
    f1 = 20 + (7 * xx * yy + 11 * xx) % 211
    return _frames(np.stack([f0, f1]).astype(np.uint8))


def test_crops_fed_to_the_models_equal_independent_crops():
    frames = _hand_frames()
    y = frames.y.numpy().astype(np.float64) / 255.0  # gray frame: R = G = B = Y / 255
    # Face 0: exact 16 px square at (10, 4) in frame 1; face 1: 12 x 8 px box in frame 0 near
    # the right border; face 2: frame 1 again, box cut by the top border.
    px = [(1, 10, 4, 26, 20), (0, 50, 20, 62, 28), (1, 30, -3, 40, 7)]
    boxes = [[x0 / 64, y0 / 40, x1 / 64, y1 / 40] for _, x0, y0, x1, y1 in px]
    faces = _faces(boxes, [r for r, *_ in px])
    gray = _spy_model("gray16", crop_margin=0.0)
    rgb = _spy_model("rgb8", colour="rgb", input_size=(8, 10), mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0),
                     crop_margin=0.5)
    out = classify_faces(frames, faces, [gray, rgb])
    assert set(out) == {"gray16", "rgb8"}
    for p in out.values():
        assert p.shape == (3, 3) and p.dtype == torch.float32 and p.device.type == "cpu"
        torch.testing.assert_close(p.sum(1), torch.ones(3))
        assert (p.argmax(1) == 0).all()
    (fed_gray,) = gray.networks[0].inputs
    (fed_rgb,) = rgb.networks[0].inputs
    assert fed_gray.shape == (3, 1, 16, 16) and fed_rgb.shape == (3, 3, 8, 10)
    for k, (row, x0, y0, x1, y1) in enumerate(px):
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        for fed, margin, (oh, ow), mean, std in (
            (fed_gray, 0.0, (16, 16), (0.25,), (0.5,)),
            (fed_rgb, 0.5, (8, 10), (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)),
        ):
            half = max(x1 - x0, y1 - y0) * (1 + 2 * margin) / 2
            crop = _bilinear(y[row], cx - half, cy - half, cx + half, cy + half, oh, ow)
            for ch, (m, s) in enumerate(zip(mean, std)):
                np.testing.assert_allclose(fed[k, ch].numpy(), (crop - m) / s, atol=1e-5)
    # Face 0 in the gray model is an exact pixel copy (scale 1, aligned to pixels).
    np.testing.assert_allclose(fed_gray[0, 0].numpy(), (y[1, 4:20, 10:26] - 0.25) / 0.5, atol=1e-6)


def test_models_with_equal_crop_specs_share_one_crop(monkeypatch):
    frames = _hand_frames()
    faces = _faces([[0.1, 0.1, 0.4, 0.6], [0.5, 0.2, 0.9, 0.9], [0.2, 0.3, 0.5, 0.8]], [0, 1, 1])
    calls = []
    real = classify.roi_resample

    def counting(frames, rois, out_hw, mode, mean, std):
        calls.append((tuple(out_hw), mode, rois.shape[0]))
        return real(frames, rois, out_hw, mode, mean, std)

    monkeypatch.setattr(classify, "roi_resample", counting)
    a, b = _spy_model("a"), _spy_model("b")  # same spec
    c = _spy_model("c", input_size=(12, 12))
    out = classify_faces(frames, faces, [a, b, c])
    assert sorted(calls) == [((12, 12), "gray", 3), ((16, 16), "gray", 3)]
    assert len(a.networks[0].inputs) == len(c.networks[0].inputs) == 1  # one forward for all faces
    torch.testing.assert_close(a.networks[0].inputs[0], b.networks[0].inputs[0])
    # Chunked: at most 2 faces per crop/forward; same result rows.
    calls.clear()
    a2 = _spy_model("a")
    chunked = classify_faces(frames, faces, [a2], max_batch=2)
    assert [n for *_, n in calls] == [2, 1]
    torch.testing.assert_close(torch.cat(a2.networks[0].inputs), a.networks[0].inputs[0])
    torch.testing.assert_close(chunked["a"], out["a"])


def test_no_faces_gives_empty_rows():
    out = classify_faces(_hand_frames(), FaceBatch.empty(), [_spy_model("a")])
    assert out["a"].shape == (0, 3) and out["a"].dtype == torch.float32


def test_duplicate_model_ids_and_bad_batch():
    with pytest.raises(ValueError, match=r"model ids must be unique, got \['a', 'a'\]"):
        classify_faces(_hand_frames(), FaceBatch.empty(), [_spy_model("a"), _spy_model("a")])
    with pytest.raises(ValueError, match=r"max_batch must be >= 1, got 0"):
        classify_faces(_hand_frames(), FaceBatch.empty(), [_spy_model("a")], max_batch=0)


def _carphone(indices=(0, 60)) -> FrameBatch:
    return clip_frames(CLIP, indices)


def test_real_models_on_a_real_face(tmp_path):
    frames = _carphone()
    # MediaPipe boxes (x, y, w, h) of carphone frames 0 and 60, 176x144.
    px = [(65.2, 47.6, 49.2, 49.2), (53.9, 41.9, 52.5, 52.5)]
    faces = _faces([[x / 176, y / 144, (x + w) / 176, (y + h) / 144] for x, y, w, h in px], [0, 1])
    fer = load_model("fer2013-minixception")
    card = ModelCard(name="r18", architecture="resnet18", labels=fer.labels, input_size=(48, 48), colour="rgb",
                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_margin=0.2, source="test", license="none")
    save_model(tmp_path / "r18", card, build_network(card).state_dict())
    spec = f"ens:fer2013-minixception+{tmp_path / 'r18'}"
    ens, r18 = load_model(spec), load_model(str(tmp_path / "r18"))
    out = classify_faces(frames, faces, [fer, r18, ens])
    assert set(out) == {"fer2013-minixception", "r18", spec}
    for p in out.values():
        assert p.shape == (2, 7)
        torch.testing.assert_close(p.sum(1), torch.ones(2))
    torch.testing.assert_close(out[spec], (out["fer2013-minixception"] + out["r18"]) / 2)
    # The fer model on its own crop equals classify_faces' row.
    crop = classify.make_crops(frames, faces, fer.card.crop_spec)
    torch.testing.assert_close(fer.predict(crop), out["fer2013-minixception"])
