"""roi.py against independently computed values: colour conversion, bilinear sampling, borders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exe_stream.roi import letterbox_rois, resample, roi_resample, yuv_to_rgb
from exe_stream.types import FrameBatch


def _frames(y: np.ndarray, u: np.ndarray, v: np.ndarray, matrix="bt601", full_range=False) -> FrameBatch:
    b = y.shape[0]
    return FrameBatch(
        y=torch.from_numpy(y), u=torch.from_numpy(u), v=torch.from_numpy(v),
        frame_index=torch.arange(b, dtype=torch.int64),
        pts_seconds=torch.zeros(b, dtype=torch.float64),
        is_keyframe=torch.ones(b, dtype=torch.bool),
        matrix=matrix, full_range=full_range,
    )


def _flat(h, w, yv, uv, vv):
    y = np.full((1, h, w), yv, np.uint8)
    u = np.full((1, (h + 1) // 2, (w + 1) // 2), uv, np.uint8)
    v = np.full((1, (h + 1) // 2, (w + 1) // 2), vv, np.uint8)
    return y, u, v


@pytest.mark.parametrize(
    "yuv, matrix, full, rgb",
    [
        ((235, 128, 128), "bt601", False, (1.0, 1.0, 1.0)),  # limited-range white
        ((16, 128, 128), "bt709", False, (0.0, 0.0, 0.0)),  # limited-range black
        ((126, 128, 128), "bt601", False, (110 / 219,) * 3),  # grey: (126-16)/219
        ((255, 128, 128), "bt601", True, (1.0, 1.0, 1.0)),
        # BT.601 limited red/green/blue primaries from the standard's 8-bit table.
        ((81, 90, 240), "bt601", False, (1.0, 0.0, 0.0)),
        ((145, 54, 34), "bt601", False, (0.0, 1.0, 0.0)),
        ((41, 240, 110), "bt601", False, (0.0, 0.0, 1.0)),
        # BT.709 limited primaries (ITU-R BT.709 8-bit coding).
        ((63, 102, 240), "bt709", False, (1.0, 0.0, 0.0)),
        ((173, 42, 26), "bt709", False, (0.0, 1.0, 0.0)),
        ((32, 240, 118), "bt709", False, (0.0, 0.0, 1.0)),
    ],
)
def test_colour_conversion_matches_standard_values(yuv, matrix, full, rgb):
    out = yuv_to_rgb(*(torch.from_numpy(p) for p in _flat(4, 6, *yuv)), matrix, full)
    assert out.shape == (1, 3, 4, 6)
    np.testing.assert_allclose(out[0, :, 1, 1].numpy(), rgb, atol=2.5 / 255)


def test_bt601_and_bt709_differ_on_colour():
    planes = [torch.from_numpy(p) for p in _flat(2, 2, 81, 90, 240)]
    a = yuv_to_rgb(*planes, "bt601", False)[0, :, 0, 0]
    b = yuv_to_rgb(*planes, "bt709", False)[0, :, 0, 0]
    assert (a - b).abs().max() > 0.05


def test_chroma_upsampling_is_bilinear_half_pixel():
    # One chroma row [0, 224] -> luma positions 0..3 see 0, 0.25, 0.75, 1 of the step (edges clamp).
    y = np.full((1, 2, 4), 126, np.uint8)
    u = np.full((1, 1, 2), 128, np.uint8)
    v = np.array([[[128 - 56, 128 + 56]]], np.uint8)
    rgb = yuv_to_rgb(*(torch.from_numpy(p) for p in (y, u, v)), "bt601", False)
    pr = np.array([-56, -56 + 112 * 0.25, -56 + 112 * 0.75, 56]) / 224.0
    expected_r = np.clip(110 / 219 + 2 * (1 - 0.299) * pr, 0, 1)
    np.testing.assert_allclose(rgb[0, 0, 0].numpy(), expected_r, atol=1e-5)


def _bilinear_reference(img: np.ndarray, roi, oh, ow) -> np.ndarray:
    """Straightforward loop implementation of the spec's sampling (C, H, W) -> (C, oh, ow)."""
    c, h, w = img.shape
    x0, y0, x1, y1 = roi
    out = np.zeros((c, oh, ow), np.float64)

    def px(i, j):
        return img[:, i, j] if 0 <= i < h and 0 <= j < w else np.zeros(c)

    for r in range(oh):
        for q in range(ow):
            sx = x0 + (q + 0.5) * (x1 - x0) / ow - 0.5  # to pixel-centre units
            sy = y0 + (r + 0.5) * (y1 - y0) / oh - 0.5
            j0, i0 = int(np.floor(sx)), int(np.floor(sy))
            fx, fy = sx - j0, sy - i0
            out[:, r, q] = (
                px(i0, j0) * (1 - fx) * (1 - fy) + px(i0, j0 + 1) * fx * (1 - fy)
                + px(i0 + 1, j0) * (1 - fx) * fy + px(i0 + 1, j0 + 1) * fx * fy
            )
    return out


@pytest.mark.parametrize(
    "roi, out_hw",
    [
        ((0.0, 0.0, 9.0, 7.0), (7, 9)),  # identity
        ((1.3, 0.7, 6.1, 5.2), (5, 4)),  # fractional interior crop, upscale/downscale mix
        ((-3.0, -2.0, 5.0, 4.0), (6, 6)),  # reaches past the top-left border: zeros fade in
        ((4.0, 3.0, 12.0, 11.0), (3, 5)),  # past the bottom-right border
        ((0.0, 0.0, 9.0, 7.0), (2, 3)),  # plain downscale
    ],
)
def test_resample_matches_loop_reference(roi, out_hw):
    rng = np.random.default_rng(0)
    img = rng.random((2, 3, 7, 9)).astype(np.float32)
    rois = torch.tensor([[1.0, *roi]])
    out = resample(torch.from_numpy(img), rois, out_hw)
    ref = _bilinear_reference(img[1], roi, *out_hw)
    np.testing.assert_allclose(out[0].numpy(), ref, atol=1e-5)


def test_identity_roi_returns_image_and_outside_is_zero():
    img = torch.rand(1, 3, 5, 6)
    same = resample(img, torch.tensor([[0.0, 0.0, 0.0, 6.0, 5.0]]), (5, 6))
    torch.testing.assert_close(same, img)
    far = resample(img, torch.tensor([[0.0, 20.0, 20.0, 30.0, 30.0]]), (4, 4))
    assert float(far.abs().max()) == 0.0


def test_gray_mode_and_normalisation():
    img = torch.rand(1, 3, 4, 4)
    rois = torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]])
    g = resample(img, rois, (4, 4), "gray", mean=(0.5,), std=(0.25,))
    expected = ((0.299 * img[:, 0] + 0.587 * img[:, 1] + 0.114 * img[:, 2]) - 0.5) / 0.25
    torch.testing.assert_close(g[:, 0], expected, atol=1e-5, rtol=1e-5)
    rgb = resample(img, rois, (4, 4), mean=(0.1, 0.2, 0.3), std=(2.0, 3.0, 4.0))
    torch.testing.assert_close(rgb[0, 2], (img[0, 2] - 0.3) / 4.0, atol=1e-6, rtol=1e-6)


def test_many_rois_over_several_images_keep_their_order():
    img = torch.rand(3, 3, 8, 8)
    rois = torch.tensor([[2.0, 0, 0, 4, 4], [0.0, 1, 1, 5, 7], [2.0, 2, 2, 8, 8], [1.0, 0, 0, 8, 8]])
    batched = resample(img, rois, (3, 3))
    for k in range(4):
        single = resample(img, rois[k : k + 1], (3, 3))
        torch.testing.assert_close(batched[k : k + 1], single)


def test_roi_resample_converts_then_samples_and_odd_sizes_work():
    rng = np.random.default_rng(1)
    h, w = 9, 13  # odd: chroma planes are 5 x 7
    y = rng.integers(16, 236, (2, h, w), dtype=np.uint8)
    u = rng.integers(16, 241, (2, 5, 7), dtype=np.uint8)
    v = rng.integers(16, 241, (2, 5, 7), dtype=np.uint8)
    frames = _frames(y, u, v, "bt709", False)
    rois = torch.tensor([[1.0, 2.5, 1.0, 10.0, 8.5], [0.0, -2.0, -2.0, 6.0, 6.0]])
    out = roi_resample(frames, rois, (6, 5))
    rgb = yuv_to_rgb(frames.y, frames.u, frames.v, "bt709", False).numpy()
    for k in range(2):
        ref = _bilinear_reference(rgb[int(rois[k, 0])], rois[k, 1:].tolist(), 6, 5)
        np.testing.assert_allclose(out[k].numpy(), ref, atol=1e-5)


def test_letterbox_rois_centre_the_frame_in_a_square():
    rois = letterbox_rois(2, 100, 300)
    assert rois.shape == (2, 5)
    assert rois[1].tolist() == [1.0, 0.0, -100.0, 300.0, 200.0]
    img = torch.ones(1, 3, 100, 300)
    sq = resample(img, rois[:1], (30, 30))
    # rows 0..9 and 20..29 are padding (zero), the middle band is the frame
    assert float(sq[0, :, :9].abs().max()) == 0.0 and float(sq[0, :, 21:].abs().max()) == 0.0
    torch.testing.assert_close(sq[0, :, 11:19], torch.ones(3, 8, 30))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mode="hsv"), "mode must be 'rgb' or 'gray', got 'hsv'"),
        (dict(mode="gray"), "mode 'gray' needs 1 mean/std values"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resample(torch.rand(1, 3, 4, 4), torch.tensor([[0.0, 0, 0, 4, 4]]), (2, 2), **kwargs)


def test_bad_rois_and_matrix_are_named():
    img = torch.rand(1, 3, 4, 4)
    with pytest.raises(ValueError, match=r"rois must be \[K, 5\]"):
        resample(img, torch.zeros(1, 4), (2, 2))
    with pytest.raises(ValueError, match="batch_index outside 0..0"):
        resample(img, torch.tensor([[1.0, 0, 0, 4, 4]]), (2, 2))
    with pytest.raises(ValueError, match="x1 > x0"):
        resample(img, torch.tensor([[0.0, 3, 0, 1, 4]]), (2, 2))
    planes = [torch.from_numpy(p) for p in _flat(2, 2, 16, 128, 128)]
    with pytest.raises(ValueError, match="unknown colour matrix 'bt2020'"):
        yuv_to_rgb(*planes, "bt2020", False)


@pytest.mark.parametrize("h, w", [(9, 13), (10, 16), (1, 1), (37, 20)])
@pytest.mark.parametrize("matrix, full_range", [("bt601", False), ("bt709", True)])
@pytest.mark.parametrize("mode", ["rgb", "gray"])
def test_gathering_roi_resample_equals_the_whole_frame_reference(h, w, matrix, full_range, mode):
    from exe_stream.roi import roi_resample_reference

    rng = np.random.default_rng(h * 100 + w)
    ch, cw = (h + 1) // 2, (w + 1) // 2
    y = rng.integers(0, 256, (3, h, w), dtype=np.uint8)  # full code range: clamping matters
    u = rng.integers(0, 256, (3, ch, cw), dtype=np.uint8)
    v = rng.integers(0, 256, (3, ch, cw), dtype=np.uint8)
    frames = _frames(y, u, v, matrix, full_range)
    k = 12
    x0 = rng.uniform(-0.5 * w, w, k)
    y0 = rng.uniform(-0.5 * h, h, k)
    rois = torch.tensor(np.stack([rng.integers(0, 3, k), x0, y0,
                                  x0 + rng.uniform(0.3, 1.5 * w, k), y0 + rng.uniform(0.3, 1.5 * h, k)], 1),
                        dtype=torch.float32)
    rois = torch.cat([rois, torch.tensor([[1.0, 0.0, 0.0, float(w), float(h)]])])  # identity crop
    mean, std = ((0.5,), (0.25,)) if mode == "gray" else ((0.1, 0.2, 0.3), (0.5, 0.6, 0.7))
    fast = roi_resample(frames, rois, (7, 5), mode, mean, std)
    ref = roi_resample_reference(frames, rois, (7, 5), mode, mean, std)
    torch.testing.assert_close(fast, ref, atol=2e-5, rtol=1e-5)


def test_gathering_roi_resample_on_a_large_frame_matches_reference_letterbox():
    from exe_stream.roi import roi_resample_reference

    rng = np.random.default_rng(7)
    y = rng.integers(16, 236, (2, 270, 480), dtype=np.uint8)
    u = rng.integers(16, 241, (2, 135, 240), dtype=np.uint8)
    v = rng.integers(16, 241, (2, 135, 240), dtype=np.uint8)
    frames = _frames(y, u, v, "bt709", False)
    rois = letterbox_rois(2, 270, 480)
    torch.testing.assert_close(roi_resample(frames, rois, (64, 64), mean=(0.5,) * 3, std=(0.5,) * 3),
                               roi_resample_reference(frames, rois, (64, 64), mean=(0.5,) * 3, std=(0.5,) * 3),
                               atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("h, w", [(270, 480), (480, 270)])  # landscape and portrait letterbox
def test_rows_and_columns_outside_every_roi_are_zero_and_the_rest_matches(h, w):
    # Only the span of outputs touching the frame in some ROI is sampled; the rest is zeros.
    from exe_stream.roi import roi_resample_reference

    rng = np.random.default_rng(h)
    y = rng.integers(0, 256, (2, h, w), dtype=np.uint8)
    u = rng.integers(0, 256, (2, (h + 1) // 2, (w + 1) // 2), dtype=np.uint8)
    v = rng.integers(0, 256, (2, (h + 1) // 2, (w + 1) // 2), dtype=np.uint8)
    frames = _frames(y, u, v, "bt601", False)
    rois = torch.cat([
        letterbox_rois(2, h, w),
        torch.tensor([[0.0, -3.0 * w, -2.0 * h, -w, -h],             # wholly outside
                      [1.0, w - 1.5, h - 1.5, w + 40.0, h + 40.0]]),  # one pixel inside
    ])
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    fast = roi_resample(frames, rois, (48, 40), "rgb", mean, std)
    # Float rounding only (std 0.5 doubles it); the spec's tolerance is 1/255.
    torch.testing.assert_close(fast, roi_resample_reference(frames, rois, (48, 40), "rgb", mean, std),
                               atol=1e-4, rtol=1e-4)
    assert torch.all(fast[2] == -1.0)  # zeros, normalised
    side = max(h, w)
    pad = (side - min(h, w)) // 2 * 48 // side  # letterbox padding in output pixels, rounded down
    band = fast[0, :, : pad - 1] if h < w else fast[0, :, :, : pad - 1]
    assert pad > 2 and torch.all(band == -1.0)
