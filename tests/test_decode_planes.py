"""Plane helpers of the GPU-capable decoders (exe_stream/decode/planes.py): display operations,
NV12 views, RGB / YCbCr 4:4:4 to I420. The device is a parameter (CUDA skipped without one)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import DEVICES
import torch

from exe_stream.decode.planes import apply_display_ops, nv12_views, rgb_to_i420, ycbcr444_to_i420
from exe_stream.decode.pyav import _apply_ops as numpy_apply_ops

OPS = ("cclock", "clock", "transpose", "antitranspose", "hflip", "vflip")


@pytest.mark.parametrize("device", DEVICES)
def test_display_ops_match_the_pyav_decoder(device):
    planes = torch.arange(2 * 5 * 7, dtype=torch.int32).reshape(2, 5, 7).to(torch.uint8)
    combos = [()] + [(op,) for op in OPS] + [("hflip", "vflip"), ("cclock", "hflip")]
    for ops in combos:
        got = apply_display_ops(planes.to(device), ops).cpu().numpy()
        want = np.stack([numpy_apply_ops(p, ops) for p in planes.numpy()])
        assert got.shape == want.shape and np.array_equal(got, want), ops


def test_display_ops_unknown_name():
    with pytest.raises(ValueError, match=r"unknown display operation 'spin'; choose from cclock, clock"):
        apply_display_ops(torch.zeros(1, 2, 2), ("spin",))


def _nv12(y: torch.Tensor, u: torch.Tensor, v: torch.Tensor, pitch: int) -> torch.Tensor:
    """An NV12 surface [B, H + ceil(H/2), pitch] holding the planes (junk in the padding)."""
    b, h, w = y.shape
    ch, cw = u.shape[1:]
    s = torch.full((b, h + ch, pitch), 77, dtype=torch.uint8)
    s[:, :h, :w] = y
    s[:, h:, 0 : 2 * cw : 2] = u
    s[:, h:, 1 : 2 * cw : 2] = v
    return s


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("h,w,pitch", [(6, 8, 8), (5, 7, 16), (99, 177, 256)])
def test_nv12_views_are_the_planes_without_a_copy(device, h, w, pitch):
    g = torch.Generator().manual_seed(h * w)
    ch, cw = (h + 1) // 2, (w + 1) // 2
    y = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    u = torch.randint(0, 256, (3, ch, cw), generator=g, dtype=torch.uint8)
    v = torch.randint(0, 256, (3, ch, cw), generator=g, dtype=torch.uint8)
    surface = _nv12(y, u, v, pitch).to(device)
    gy, gu, gv = nv12_views(surface, h, w)
    assert torch.equal(gy.cpu(), y) and torch.equal(gu.cpu(), u) and torch.equal(gv.cpu(), v)
    for view in (gy, gu, gv):  # views into the surface's memory, not copies
        assert view.untyped_storage().data_ptr() == surface.untyped_storage().data_ptr()
    assert gu.stride(-1) == 2 and gv.storage_offset() == gu.storage_offset() + 1


def test_nv12_views_drop_a_trailing_singleton_dimension():
    y = torch.full((1, 4, 4), 9, dtype=torch.uint8)
    u, v = torch.full((1, 2, 2), 3, dtype=torch.uint8), torch.full((1, 2, 2), 5, dtype=torch.uint8)
    gy, gu, gv = nv12_views(_nv12(y, u, v, 4)[..., None], 4, 4)
    assert torch.equal(gy, y) and torch.equal(gu, u) and torch.equal(gv, v)


def test_nv12_views_wrong_surface():
    with pytest.raises(ValueError, match=r"not an NV12 surface of 8x6: expected uint8 \[\.\.\., 9, >=8\], got torch.uint8 \(6, 8\)"):
        nv12_views(torch.zeros(6, 8, dtype=torch.uint8), 6, 8)


def _yuv_to_rgb(y, u, v, full_range: bool, matrix: str) -> torch.Tensor:
    """Reference Y'CbCr (chroma repeated to full size) -> full-range RGB, rounded."""
    kr, kb = (0.299, 0.114) if matrix == "bt601" else (0.2126, 0.0722)
    kg = 1 - kr - kb
    h, w = y.shape[-2:]
    up = lambda c: c.repeat_interleave(2, -1).repeat_interleave(2, -2)[..., :h, :w].double()
    if full_range:
        luma, cb, cr = y.double(), up(u) - 128, up(v) - 128
    else:
        luma, cb, cr = (y.double() - 16) * 255 / 219, (up(u) - 128) * 255 / 224, (up(v) - 128) * 255 / 224
    r = luma + 2 * (1 - kr) * cr
    b = luma + 2 * (1 - kb) * cb
    g = (luma - kr * r - kb * b) / kg
    return torch.stack([r, g, b], -1).round().clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("full_range,matrix", list(itertools.product([False, True], ["bt601", "bt709"])))
def test_rgb_to_i420_inverts_the_conversion_that_made_the_rgb(device, full_range, matrix):
    # Smooth, in-gamut planes (odd size): what comes back is within one level.
    h, w = 33, 47
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    lo, hi = (40, 200) if full_range else (50, 190)
    y = (lo + (hi - lo) * (xx + yy) / (h + w)).round().to(torch.uint8)[None]
    cy, cx = torch.meshgrid(torch.arange(17), torch.arange(24), indexing="ij")
    u = (118 + (cx % 7)).to(torch.uint8)[None]
    v = (122 + (cy % 5)).to(torch.uint8)[None]
    rgb = _yuv_to_rgb(y, u, v, full_range, matrix).to(device)
    gy, gu, gv = rgb_to_i420(rgb, full_range=full_range, matrix=matrix)
    assert gy.device.type == device and gy.shape == (1, h, w) and gu.shape == (1, 17, 24)
    for got, want in ((gy, y), (gu, u), (gv, v)):
        assert (got.cpu().int() - want.int()).abs().max() <= 1
    # The wrong matrix or range gives something else.
    other = rgb_to_i420(rgb, full_range=not full_range, matrix=matrix)[0]
    assert (other.cpu().int() - y.int()).abs().max() > 3


@pytest.mark.parametrize("device", DEVICES)
def test_ycbcr444_to_i420_keeps_luma_and_averages_chroma(device):
    ycbcr = torch.zeros(1, 3, 3, 3, dtype=torch.uint8)
    ycbcr[..., 0] = torch.arange(9, dtype=torch.uint8).reshape(3, 3)
    ycbcr[..., 1] = torch.tensor([[10, 20, 30], [30, 40, 50], [60, 70, 80]], dtype=torch.uint8)
    ycbcr[..., 2] = 200
    y, u, v = ycbcr444_to_i420(ycbcr.to(device))
    assert torch.equal(y.cpu(), ycbcr[..., 0])
    # 2x2 means; the odd last row / column is repeated: [[25, 40], [65, 80]].
    assert u.cpu().tolist() == [[[25, 40], [65, 80]]]
    assert v.cpu().tolist() == [[[200, 200], [200, 200]]]
