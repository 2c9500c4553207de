"""Crop/resize: the torch reference of the ``roi_resample`` kernel spec (DESIGN.md).

This module *is* the spec the CUDA kernels are checked against:

1. Colour. YUV 4:2:0 planes become RGB in [0, 1] per source pixel. Chroma is upsampled 2x
   with bilinear interpolation, half-pixel centres and edge clamping (chroma sample ``c``
   sits at luma coordinate ``2c + 0.5`` in pixel-centre units). The matrix is BT.601 or
   BT.709; limited range maps Y 16..235 and Cb/Cr 16..240, full range 0..255. The result is
   clamped to [0, 1].
2. Geometry. A ROI is ``(batch_index, x0, y0, x1, y1)`` in source pixel *edge* coordinates:
   the whole W x H image is ``(0, 0, W, H)`` and pixel ``(i, j)`` has its centre at
   ``(j + 0.5, i + 0.5)``. Output pixel ``(r, c)`` of an ``h x w`` crop samples the source at
   ``x = x0 + (c + 0.5) (x1 - x0) / w``, ``y = y0 + (r + 0.5) (y1 - y0) / h``.
3. Sampling. Bilinear between the four nearest pixel centres (``align_corners=False``); taps
   outside the image count as zero, so a ROI reaching past the border fades to black.
4. Output. ``mode="rgb"`` keeps 3 channels; ``mode="gray"`` gives ``0.299 R + 0.587 G +
   0.114 B``. Then ``(x - mean) / std`` per channel.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from . import failsafe
from .roi_checks import Mode, _check_matrix, _check_mode, _check_rois  # noqa: F401 - Mode is public here
from .types import FrameBatch

_GRAY = (0.299, 0.587, 0.114)


def upsample_chroma(plane: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """2x bilinear upsampling of a chroma plane to the luma size.

    plane: float32 [B, 1, (H+1)//2, (W+1)//2] -> float32 [B, 1, H, W] (same device).
    """
    ch, cw = plane.shape[-2:]
    up = F.interpolate(plane, size=(2 * ch, 2 * cw), mode="bilinear", align_corners=False)
    return up[..., :height, :width]


def yuv_to_rgb(
    y: torch.Tensor, u: torch.Tensor, v: torch.Tensor, matrix: str, full_range: bool
) -> torch.Tensor:
    """YUV 4:2:0 planes to RGB.

    y: uint8 [B, H, W]; u, v: uint8 [B, (H+1)//2, (W+1)//2], any device.
    Returns float32 [B, 3, H, W] in [0, 1] (NCHW) on the planes' device.
    """
    b, h, w = y.shape
    cb = upsample_chroma(u.to(torch.float32).unsqueeze(1), h, w).squeeze(1)
    cr = upsample_chroma(v.to(torch.float32).unsqueeze(1), h, w).squeeze(1)
    return ycbcr_to_rgb(y.to(torch.float32), cb, cr, matrix, full_range, dim=1)


def ycbcr_to_rgb(
    y: torch.Tensor, cb: torch.Tensor, cr: torch.Tensor, matrix: str, full_range: bool, dim: int
) -> torch.Tensor:
    """Float Y, Cb, Cr code values (0..255, same shape) to RGB in [0, 1], stacked along ``dim``.

    R = Y' + 2(1 - Kr) Pr, G = Y' - (2 Kb (1 - Kb) / Kg) Pb - (2 Kr (1 - Kr) / Kg) Pr,
    B = Y' + 2(1 - Kb) Pb, with Y' = (Y - 16) / 219 and Pb, Pr = (C - 128) / 224 for limited
    range, Y' = Y / 255 and Pb, Pr = (C - 128) / 255 for full range; clamped to [0, 1]. The
    range scaling is folded into one affine map per channel, written straight into the output.
    """
    kr, kb = _check_matrix(matrix)
    kg = 1.0 - kr - kb
    y_off, y_scale, c_scale = (0.0, 255.0, 255.0) if full_range else (16.0, 219.0, 224.0)
    # Per output channel: (weight of Y, weight of Cb, weight of Cr).
    weights = (
        (1.0 / y_scale, 0.0, 2.0 * (1.0 - kr) / c_scale),
        (1.0 / y_scale, -2.0 * kb * (1.0 - kb) / kg / c_scale, -2.0 * kr * (1.0 - kr) / kg / c_scale),
        (1.0 / y_scale, 2.0 * (1.0 - kb) / c_scale, 0.0),
    )
    d = dim % (y.ndim + 1)
    out = torch.empty((*y.shape[:d], 3, *y.shape[d:]), device=y.device, dtype=y.dtype)
    for c, (wy, wb, wr) in enumerate(weights):
        o = out.select(d, c)
        torch.mul(y, wy, out=o)
        o.add_(-(wy * y_off + (wb + wr) * 128.0))
        if wb:
            o.add_(cb, alpha=wb)
        if wr:
            o.add_(cr, alpha=wr)
    return out.clamp_(0.0, 1.0)


def _finish(out: torch.Tensor, mode: str, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Sampled RGB [K, 3, h, w] -> grey if asked, then (x - mean) / std per channel."""
    if mode == "gray":
        wts = torch.tensor(_GRAY, device=out.device, dtype=out.dtype).view(1, 3, 1, 1)
        out = (out * wts).sum(dim=1, keepdim=True)
    m = torch.tensor(list(mean), device=out.device, dtype=out.dtype).view(1, -1, 1, 1)
    s_ = torch.tensor(list(std), device=out.device, dtype=out.dtype).view(1, -1, 1, 1)
    return (out - m) / s_


def _grid(rois: torch.Tensor, out_hw: tuple[int, int], height: int, width: int) -> torch.Tensor:
    """Sampling grid for grid_sample: float32 [K, h, w, 2] in normalised coordinates."""
    oh, ow = out_hw
    dev = rois.device
    t_x = (torch.arange(ow, device=dev, dtype=torch.float32) + 0.5) / ow
    t_y = (torch.arange(oh, device=dev, dtype=torch.float32) + 0.5) / oh
    x0, y0, x1, y1 = (rois[:, i : i + 1].to(torch.float32) for i in range(1, 5))
    xs = x0 + t_x[None, :] * (x1 - x0)  # [K, w] source x (edge coordinates)
    ys = y0 + t_y[None, :] * (y1 - y0)  # [K, h]
    # align_corners=False: normalised -1 is the left edge of pixel 0, +1 the right edge of W-1.
    gx = (2.0 * xs / width - 1.0)[:, None, :].expand(-1, oh, -1)
    gy = (2.0 * ys / height - 1.0)[:, :, None].expand(-1, -1, ow)
    return torch.stack((gx, gy), dim=-1)


def resample(
    images: torch.Tensor,
    rois: torch.Tensor,
    out_hw: tuple[int, int],
    mode: Mode = "rgb",
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
) -> torch.Tensor:
    """Bilinear crop/resize of ROIs from RGB images, then normalisation (module docstring).

    images: float32 [B, 3, H, W] in [0, 1]; rois: float [K, 5] (batch_index, x0, y0, x1, y1)
    in source pixel edge coordinates. Returns float32 [K, 3 or 1, h, w] on the images' device.
    """
    _check_mode(mode, mean, std)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
    _check_rois(rois, images.shape[0])
    oh, ow = int(out_hw[0]), int(out_hw[1])
    _, _, h, w = images.shape
    rois = rois.to(device=images.device, dtype=torch.float32)
    grid = _grid(rois, (oh, ow), h, w)
    out = images.new_empty((rois.shape[0], 3, oh, ow))
    index = rois[:, 0].long()
    # One grid_sample per source image, with all of its ROIs stacked along the grid's height,
    # so no image is copied once per ROI.
    for b in torch.unique(index).tolist():
        sel = (index == b).nonzero().flatten()
        g = grid[sel].reshape(1, sel.numel() * oh, ow, 2)
        s = F.grid_sample(images[b : b + 1], g, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[sel] = s.reshape(3, sel.numel(), oh, ow).transpose(0, 1)
    return _finish(out, mode, mean, std)


def roi_resample_reference(
    frames: FrameBatch,
    rois: torch.Tensor,
    out_hw: tuple[int, int],
    mode: Mode = "rgb",
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
) -> torch.Tensor:
    """The kernel spec written plainly: whole frames to RGB (``yuv_to_rgb``), then ``resample``.

    Same arguments and result as ``roi_resample``; it converts every pixel of each frame a
    ROI uses, so it is slow and memory-hungry on large frames. Tests hold ``roi_resample``
    (and the CUDA kernel) to it.
    """
    _check_rois(rois, len(frames))
    if rois.shape[0] == 0:
        c = 3 if mode == "rgb" else 1
        return torch.zeros((0, c, int(out_hw[0]), int(out_hw[1])), device=frames.device)
    rois = rois.to(device=frames.device, dtype=torch.float32)
    used, remap = torch.unique(rois[:, 0].long(), return_inverse=True)
    rgb = yuv_to_rgb(frames.y[used], frames.u[used], frames.v[used], frames.matrix, frames.full_range)
    local = torch.cat((remap.to(torch.float32)[:, None], rois[:, 1:]), dim=1)
    return resample(rgb, local, out_hw, mode, mean, std)


def _taps(centre: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear taps along one axis: for sample positions in pixel-centre units [K, n], the two
    neighbouring pixel indices (clamped into the image) and their weights, zero for taps that
    fall outside the image."""
    lo = torch.floor(centre)
    frac = centre - lo
    i0 = lo.long()
    i1 = i0 + 1
    w0 = (1.0 - frac) * ((i0 >= 0) & (i0 < size))
    w1 = frac * ((i1 >= 0) & (i1 < size))
    return i0.clamp(0, size - 1), i1.clamp(0, size - 1), w0, w1


def _chroma_taps(luma: torch.Tensor, csize: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 2x chroma upsampling of ``upsample_chroma`` at luma indices: two chroma indices and
    weights (half-pixel centres, edge clamping, as F.interpolate does it)."""
    src = ((luma.to(torch.float32) + 0.5) * 0.5 - 0.5).clamp(min=0.0)
    c0 = torch.floor(src)
    lam = src - c0
    c0 = c0.long().clamp(max=csize - 1)
    c1 = (c0 + 1).clamp(max=csize - 1)
    return c0, c1, 1.0 - lam, lam


def _inside_span(centre: torch.Tensor, size: int) -> tuple[int, int]:
    """[lo, hi): the outputs along one axis (sample positions [K, n] in pixel-centre units)
    with a tap inside the image in at least one ROI; outside it every tap weight is zero."""
    touching = ((centre > -1.0) & (centre < size)).any(dim=0)
    idx = torch.nonzero(touching).flatten()
    if idx.numel() == 0:
        return 0, 0
    return int(idx[0]), int(idx[-1]) + 1


def _sample_rgb(frames: FrameBatch, b: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Bilinear RGB samples [K, 3, h, w] at positions xs [K, w], ys [K, h] (pixel-centre units)
    of frame rows b [K]: each tap converted to RGB and clamped, then blended."""
    dev = frames.device
    h, w = frames.height, frames.width
    ch, cw = frames.u.shape[1], frames.u.shape[2]
    k, oh, ow = xs.shape[0], ys.shape[1], xs.shape[1]
    c0, c1, wx0, wx1 = _taps(xs, w)
    r0, r1, wy0, wy1 = _taps(ys, h)
    # The tap grid: rows (r0_0, r1_0, r0_1, r1_1, ...) x columns likewise -> [K, 2h, 2w].
    rows = torch.stack((r0, r1), dim=2).reshape(k, 2 * oh)
    cols = torch.stack((c0, c1), dim=2).reshape(k, 2 * ow)
    cr0, cr1, lr0, lr1 = _chroma_taps(rows, ch)
    cc0, cc1, lc0, lc1 = _chroma_taps(cols, cw)
    lum = torch.empty((k, 2 * oh, 2 * ow), device=dev, dtype=torch.uint8)
    cb = torch.empty((k, 2 * oh, 2 * ow), device=dev, dtype=torch.float32)
    cr = torch.empty_like(cb)
    # Per ROI, one flat gather per plane of exactly the samples needed (as uint8).
    for i, f in enumerate(b.flatten().tolist()):
        lum[i] = frames.y[f].reshape(-1).take(rows[i, :, None] * w + cols[i, None, :])
        crows, ccols = torch.cat((cr0[i], cr1[i])), torch.cat((cc0[i], cc1[i]))
        flat = crows[:, None] * cw + ccols[None, :]
        for plane, dst in ((frames.u[f], cb), (frames.v[f], cr)):
            # The four chroma neighbours of each luma tap, then their upsampling blend.
            g = plane.reshape(-1).take(flat).to(torch.float32)
            up = g[: 2 * oh] * lr0[i, :, None] + g[2 * oh :] * lr1[i, :, None]
            dst[i] = up[:, : 2 * ow] * lc0[i] + up[:, 2 * ow :] * lc1[i]
    rgb = ycbcr_to_rgb(lum.to(torch.float32), cb, cr, frames.matrix, frames.full_range, dim=1)  # [K, 3, 2h, 2w]
    # Bilinear blend of each 2x2 tap group, separably: rows, then columns.
    rgb = rgb[:, :, 0::2] * wy0[:, None, :, None] + rgb[:, :, 1::2] * wy1[:, None, :, None]  # [K, 3, h, 2w]
    return rgb[..., 0::2] * wx0[:, None, None, :] + rgb[..., 1::2] * wx1[:, None, None, :]  # [K, 3, h, w]


def roi_resample(
    frames: FrameBatch,
    rois: torch.Tensor,
    out_hw: tuple[int, int],
    mode: Mode = "rgb",
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
) -> torch.Tensor:
    """The kernel spec, computed from the taps it needs: ROIs of YUV 4:2:0 frames to
    normalised NCHW crops.

    frames: FrameBatch (uint8 planes, any device); rois: float [K, 5] (frame row in the batch,
    x0, y0, x1, y1) in source pixel edge coordinates. Returns float32 [K, 3 or 1, h, w] on the
    frames' device, equal to ``roi_resample_reference`` (to float rounding).

    Like the CUDA kernel, it never converts a whole frame: it gathers the 2h x 2w grid of luma
    samples that the bilinear taps touch and the chroma samples their upsampling uses, converts
    that grid to RGB (clamped), and blends each 2x2 tap group. Work and memory scale with the
    output, not with the frame, so letterboxing a 1080p frame to 192x192 is cheap.

    Frames on a CUDA device go to the CUDA kernel (``kernels.roi_resample_cuda``, same result
    to the spec's tolerance) when its library loads and can run there; else this torch code.
    """
    kernel = _cuda_kernel(frames)
    if kernel is None:
        return _roi_resample_torch(frames, rois, out_hw, mode, mean, std)
    # The kernel is an accelerated component: checked against this torch code on its first
    # batch (the spec's tolerance, 1/255 in [0, 1] units, in normalised units), switched off on
    # an error or a mismatch (exe_stream.failsafe).
    _check_mode(mode, mean, std)
    _check_rois(rois, len(frames))  # bad arguments are the caller's, not the kernel's, failure
    tolerance = (1.0 / 255.0 + 1e-6) / max(min(abs(float(s)) for s in std), 1e-12)
    return failsafe.current().run(
        "kernels",
        lambda: kernel(frames, rois, out_hw, mode, mean, std),
        lambda: _roi_resample_torch(frames, rois, out_hw, mode, mean, std),
        failsafe.max_abs_diff, tolerance,
    )


def _cuda_kernel(frames: FrameBatch) -> Callable[..., torch.Tensor] | None:
    """The CUDA kernel's entry point (``kernels.roi_resample_cuda``) when the frames are on a
    CUDA device where its library loads and can run, else None."""
    if frames.device.type != "cuda":
        return None
    from . import kernels  # ctypes only; the library itself loads on first use

    return kernels.roi_resample_cuda if kernels.available(frames.device) else None


def _roi_resample_torch(
    frames: FrameBatch,
    rois: torch.Tensor,
    out_hw: tuple[int, int],
    mode: Mode = "rgb",
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
) -> torch.Tensor:
    """``roi_resample`` in torch, on any device (the verified path of the CUDA kernel)."""
    channels = _check_mode(mode, mean, std)
    _check_rois(rois, len(frames))
    oh, ow = int(out_hw[0]), int(out_hw[1])
    dev = frames.device
    if rois.shape[0] == 0:
        return torch.zeros((0, channels, oh, ow), device=dev)
    _check_matrix(frames.matrix)
    rois = rois.to(device=dev, dtype=torch.float32)
    h, w = frames.height, frames.width
    k = rois.shape[0]
    b = rois[:, 0].long()
    x0, y0, x1, y1 = (rois[:, i : i + 1] for i in range(1, 5))
    # Sample positions in pixel-centre units (pixel j's centre is j).
    xs = x0 + (torch.arange(ow, device=dev, dtype=torch.float32) + 0.5) / ow * (x1 - x0) - 0.5  # [K, w]
    ys = y0 + (torch.arange(oh, device=dev, dtype=torch.float32) + 0.5) / oh * (y1 - y0) - 0.5  # [K, h]
    # Output rows/columns whose taps all fall outside the frame (e.g. the letterbox's padding)
    # are zeros: only the span that touches the frame in some ROI is computed.
    r_lo, r_hi = _inside_span(ys, h)
    c_lo, c_hi = _inside_span(xs, w)
    out = torch.zeros((k, 3, oh, ow), device=dev, dtype=torch.float32)
    if r_lo < r_hi and c_lo < c_hi:
        out[:, :, r_lo:r_hi, c_lo:c_hi] = _sample_rgb(frames, b, xs[:, c_lo:c_hi], ys[:, r_lo:r_hi])
    return _finish(out, mode, mean, std)


def letterbox_rois(num_frames: int, height: int, width: int) -> torch.Tensor:
    """ROIs that letterbox whole frames into a square: the centred square of side max(H, W).

    Returns float32 [num_frames, 5]. Resampled to S x S, the frame keeps its aspect ratio and
    the padding (outside the frame) is zero before normalisation, as MediaPipe's
    ImageToTensor does it.
    """
    side = float(max(height, width))
    x0 = (width - side) / 2.0
    y0 = (height - side) / 2.0
    rois = torch.empty((num_frames, 5), dtype=torch.float32)
    rois[:, 0] = torch.arange(num_frames, dtype=torch.float32)
    rois[:, 1:] = torch.tensor([x0, y0, x0 + side, y0 + side])
    return rois
