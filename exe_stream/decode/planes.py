"""Plane helpers shared by the GPU-capable decoders (``dali``, ``nvdec``), all in torch so they
run on the decoder's device: display operations on planes, NV12 views, RGB / YCbCr 4:4:4 to
I420.

Everything here works on CPU and CUDA tensors alike and is tested on the CPU.
"""

from __future__ import annotations

from typing import Literal

import torch

# BT.601 luma weights (Kr, Kb): the matrix DALI's decoders use to make RGB (see rgb_to_i420).
_KR_601, _KB_601 = 0.299, 0.114


def apply_display_ops(planes: torch.Tensor, ops: tuple[str, ...]) -> torch.Tensor:
    """Turn decoded planes into displayed ones: planes [..., H, W] (any dtype, any device),
    ops as ``exe_stream.decode.pyav._display_ops`` names them ('cclock' / 'clock': 90 degrees
    counter-clockwise / clockwise, 'transpose', 'antitranspose', 'hflip', 'vflip').

    Transposes are views; rotations and flips copy (``torch.flip`` always copies)."""
    for op in ops:
        if op == "cclock":
            planes = torch.rot90(planes, 1, dims=(-2, -1))
        elif op == "clock":
            planes = torch.rot90(planes, -1, dims=(-2, -1))
        elif op == "transpose":
            planes = planes.transpose(-2, -1)
        elif op == "antitranspose":
            planes = torch.flip(planes, dims=(-2, -1)).transpose(-2, -1)
        elif op == "hflip":
            planes = torch.flip(planes, dims=(-1,))
        elif op == "vflip":
            planes = torch.flip(planes, dims=(-2,))
        else:
            raise ValueError(
                f"unknown display operation {op!r}; choose from cclock, clock, transpose, "
                "antitranspose, hflip, vflip"
            )
    return planes


def nv12_views(surface: torch.Tensor, height: int, width: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Y, U and V views (no copy) of NV12 surfaces.

    surface: uint8 [..., H + ceil(H/2), W] (a trailing singleton dimension is dropped, as some
    DLPack exporters add one): the luma rows, then ceil(H/2) rows of interleaved U, V pairs.
    Rows may be longer than W (pitch) when the tensor's strides say so.
    Returns y [..., H, W] and u, v [..., ceil(H/2), ceil(W/2)] as strided views of
    ``surface`` (u = uv[..., 0::2], v = uv[..., 1::2]).
    """
    if surface.ndim >= 3 and surface.shape[-1] == 1:
        surface = surface[..., 0]
    ch, cw = (height + 1) // 2, (width + 1) // 2
    if surface.dtype != torch.uint8 or surface.ndim < 2 or surface.shape[-2] < height + ch \
            or surface.shape[-1] < 2 * cw:
        raise ValueError(
            f"not an NV12 surface of {width}x{height}: expected uint8 [..., {height + ch}, "
            f">={2 * cw}], got {surface.dtype} {tuple(surface.shape)}"
        )
    y = surface[..., :height, :width]
    uv = surface[..., height:height + ch, : 2 * cw]
    return y, uv[..., 0::2], uv[..., 1::2]


def _pool_chroma(c: torch.Tensor) -> torch.Tensor:
    """Mean of each 2x2 block of full-resolution chroma float [..., H, W] -> [..., ceil(H/2),
    ceil(W/2)]; an odd last row / column is repeated (edge replicate)."""
    h, w = c.shape[-2:]
    if h % 2:
        c = torch.cat([c, c[..., -1:, :]], dim=-2)
    if w % 2:
        c = torch.cat([c, c[..., :, -1:]], dim=-1)
    return (c[..., 0::2, 0::2] + c[..., 0::2, 1::2] + c[..., 1::2, 0::2] + c[..., 1::2, 1::2]) / 4


def _to_u8(x: torch.Tensor) -> torch.Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)


def ycbcr444_to_i420(ycbcr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """I420 planes from full-resolution Y'CbCr: ycbcr uint8 [..., H, W, 3] (channels-last, as
    DALI's ``image_type=YCbCr`` gives on the GPU). Y is taken as it is; Cb, Cr are the mean of
    each 2x2 block, rounded. Returns uint8 y [..., H, W], u, v [..., ceil(H/2), ceil(W/2)],
    on the input's device."""
    y = ycbcr[..., 0].contiguous()
    cb = _pool_chroma(ycbcr[..., 1].float())
    cr = _pool_chroma(ycbcr[..., 2].float())
    return y, _to_u8(cb), _to_u8(cr)


def rgb_to_i420(rgb: torch.Tensor, full_range: bool,
                matrix: Literal["bt601", "bt709"] = "bt601"
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """I420 planes from RGB: rgb uint8 [..., H, W, 3] (channels-last, full-range RGB).

    The inverse of the YCbCr -> RGB conversion that made ``rgb``: ``matrix`` and
    ``full_range`` name the Y'CbCr it came from (limited range: Y in 16-235, Cb/Cr in 16-240).
    Luma per pixel; chroma computed per pixel, then the mean of each 2x2 block. Values are
    rounded to nearest and clamped. Returns uint8 y [..., H, W], u, v
    [..., ceil(H/2), ceil(W/2)] on the input's device.

    Not lossless: the RGB was rounded and clipped to 0-255, and its chroma was upsampled by the
    converter that made it, so Y comes back within about one level where no channel clipped,
    and chroma is a slightly smoothed version of the original (see the decoders' docs for the
    measured differences).
    """
    kr, kb = (_KR_601, _KB_601) if matrix == "bt601" else (0.2126, 0.0722)
    kg = 1.0 - kr - kb
    x = rgb.float()
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    luma = kr * r + kg * g + kb * b  # 0..255
    cb = (b - luma) / (2 * (1 - kb))  # -127.5..127.5
    cr = (r - luma) / (2 * (1 - kr))
    if full_range:
        y = luma
        cb, cr = cb + 128, cr + 128
    else:
        y = 16 + luma * (219 / 255)
        cb = 128 + cb * (224 / 255)
        cr = 128 + cr * (224 / 255)
    return _to_u8(y), _to_u8(_pool_chroma(cb)), _to_u8(_pool_chroma(cr))
