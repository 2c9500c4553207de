"""The NVDEC decoder (exe_stream/decode/nvdec.py).

Its decoding needs a GPU and PyNvVideoCodec: those cases are CUDA-marked and skipped without
them (they compare NVDEC's frames and a scan's shards with PyAV's). The pure helpers (engine
counts, NV12 surfaces, frame numbering) and the errors run everywhere.
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

import media
from exe_stream.decode import get_decoder
from exe_stream.decode import nvdec as nvdec_module
from exe_stream.decode.nvdec import (
    NvdecOptions, engines_for_gpu_name, frame_numbers, nvdec_engines, stack_surfaces,
)
from exe_stream.decode.planes import nv12_views
from exe_stream.decode.index import demux_index
from exe_stream.decode.pyav import PyAVDecoder
from exe_stream.errors import DecodeError
from exe_stream.sampling import SamplingOptions

HAVE_NVDEC = torch.cuda.is_available() and importlib.util.find_spec("PyNvVideoCodec") is not None


def needs_nvdec(test):
    """CUDA-marked, skipped without a CUDA device and PyNvVideoCodec."""
    return pytest.mark.cuda(pytest.mark.skipif(not HAVE_NVDEC, reason="needs a CUDA device and PyNvVideoCodec")(test))


# Engine counts ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,engines", [
    ("NVIDIA H100 80GB HBM3", 7), ("NVIDIA H100 PCIe", 7), ("NVIDIA H200", 7),
    ("NVIDIA GH200 480GB", 7), ("NVIDIA A100-SXM4-40GB", 5), ("NVIDIA L40S", 3),
    ("NVIDIA L40", 3), ("NVIDIA L4", 4), ("Tesla T4", 2), ("NVIDIA A10", 2),
    ("NVIDIA GeForce RTX 3090", None), ("NVIDIA A10G", None),
])
def test_engines_by_gpu_name(name, engines):
    assert engines_for_gpu_name(name) == engines


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback without CUDA")
def test_engine_count_without_a_gpu_is_one(films):
    assert nvdec_engines(films.h264_bframes) == 1
    assert nvdec_engines() == 1


# NV12 surfaces and frame numbering -------------------------------------------------------


def test_stack_surfaces_pitched_and_p016():
    h, w = 5, 6
    rows = h + 3
    a = torch.arange(rows * 8, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(rows, 8)
    b = (a.to(torch.int32) * 256 + 17).to(torch.int16)  # P016: the 8 bits are the high byte
    out = stack_surfaces([a, b[..., None]], h, w)
    assert out.shape == (2, rows, w) and out.dtype == torch.uint8
    assert torch.equal(out[0], a[:, :w]) and torch.equal(out[1], a[:, :w])
    y, u, v = nv12_views(out, h, w)
    assert y.shape == (2, 5, 6) and u.shape == v.shape == (2, 3, 3)
    assert torch.equal(u[0], a[h:, 0:6:2]) and torch.equal(v[0], a[h:, 1:6:2])


def test_stack_surfaces_wrong_shape():
    with pytest.raises(ValueError, match=r"not an NV12 surface of 6x5 \(needs uint8 \[>= 8, >= 6\]\): uint8 \(5, 6\)"):
        stack_surfaces([torch.zeros(5, 6, dtype=torch.uint8)], 5, 6)


def test_frame_numbering_is_detected(films):
    index = demux_index(films.h264_bframes)  # B-frames: decode != presentation order
    assert not np.array_equal(index.pts, index.pts[index.order])
    assert frame_numbers(index.pts[index.order].tolist(), index.pts, index.order) == "presentation"
    assert frame_numbers(index.pts.tolist(), index.pts, index.order) == "decode"
    assert frame_numbers(index.pts[:-1].tolist(), index.pts, index.order) == ""
    assert frame_numbers(index.pts[::-1].tolist(), index.pts, index.order) == ""


# Errors ----------------------------------------------------------------------------------


def test_missing_pynvvideocodec_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", None)
    with pytest.raises(ImportError, match=r"decoder 'nvdec' needs PyNvVideoCodec.*pip install pynvvideocodec"):
        nvdec_module.import_nvc()
    with pytest.raises(ValueError, match=r"install it with: pip install pynvvideocodec"):
        get_decoder("nvdec")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_no_cuda_device(monkeypatch):
    monkeypatch.setattr(nvdec_module, "import_nvc", lambda: object())  # as if installed
    with pytest.raises(ValueError, match=r"decoder 'nvdec' needs a CUDA device, and torch sees none; "
                       r"use --decoder pyav \(or dali\) on the CPU"):
        get_decoder("nvdec")


def test_options_errors():
    with pytest.raises(ValueError, match=r"device_id must be >= 0, got -1"):
        NvdecOptions(device_id=-1)
    with pytest.raises(ValueError, match=r"decoder_cache_size must be >= 1, got 0"):
        NvdecOptions(decoder_cache_size=0)


def _cpu_nvdec(monkeypatch):
    """An NvdecDecoder made without CUDA, for the checks made before any decoding."""
    monkeypatch.setattr(nvdec_module, "import_nvc", lambda: object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return nvdec_module.NvdecDecoder()


def test_yuv444_is_refused(films, monkeypatch):
    with pytest.raises(DecodeError, match=r"yuv444_177x99.mp4: the NVDEC path reads 4:2:0 films only, "
                       r"this one is yuv444p; use --decoder pyav"):
        next(_cpu_nvdec(monkeypatch).frames(films.yuv444, SamplingOptions(every=5), 4))


def test_films_without_timestamps_are_refused(films, monkeypatch):
    with pytest.raises(DecodeError, match=r"raw.h264: NVDEC frame access needs the container's timestamps"):
        next(_cpu_nvdec(monkeypatch).frames(films.raw_h264, SamplingOptions(every=5), 4))


def test_not_a_film(films, monkeypatch):
    with pytest.raises(DecodeError, match=r"notes.mp4: not a media file \(it holds text\)"):
        next(_cpu_nvdec(monkeypatch).frames(films.text_as_mp4, SamplingOptions(every=5), 4))


# On a GPU (skipped here) -----------------------------------------------------------------


@pytest.mark.parametrize("sampling", [
    SamplingOptions(every=7), SamplingOptions(every=None, interval=0.3),
    SamplingOptions(every=10, mode="keyframe"),
], ids=lambda s: s.describe())
@pytest.mark.parametrize("film", ["h264_bframes", "vfr", "rotated", "odd_dims", "hevc10"])
@needs_nvdec
def test_nvdec_frames_match_pyav(films, film, sampling):
    path = getattr(films, film)
    dec = get_decoder("nvdec")
    got = list(dec.frames(path, sampling, 4))
    want = list(PyAVDecoder().frames(path, sampling, 4))
    cat = lambda bs, n: torch.cat([getattr(b, n).cpu() for b in bs])
    assert cat(got, "frame_index").tolist() == cat(want, "frame_index").tolist()
    assert cat(got, "pts_seconds").tolist() == cat(want, "pts_seconds").tolist()
    assert cat(got, "is_keyframe").tolist() == cat(want, "is_keyframe").tolist()
    assert all(b.device.type == "cuda" for b in got)
    for plane in ("y", "u", "v"):  # decoder rounding only (10-bit: high byte vs swscale)
        assert (cat(got, plane).int() - cat(want, plane).int()).abs().max() <= 1
    if film != "rotated":  # the pictures carry their frame number (stored orientation)
        assert [media.read_counter(p.numpy()) for p in cat(got, "y")] == cat(got, "frame_index").tolist()


@needs_nvdec
def test_nvdec_scan_shards_match_pyav(clips, tmp_path):
    from exe_stream.pipeline import ScanOptions, scan
    from exe_stream.shards import faces_path, frames_path, read_table

    out = {}
    for decoder in ("nvdec", "pyav"):
        opts = ScanOptions(sampling=SamplingOptions(every=10), device="cuda", decoder=decoder, engine="torch")
        res = scan([clips / "carphone_pristine.mp4"], tmp_path / decoder, opts)
        film = res.films[0].film_id
        out[decoder] = (read_table(frames_path(tmp_path / decoder, film)),
                        read_table(faces_path(tmp_path / decoder, film, "fer2013-minixception")))
    cols = ["frame_index", "pts_seconds", "is_keyframe", "n_faces"]
    assert out["nvdec"][0].select(cols).equals(out["pyav"][0].select(cols))
    for c in ("x0", "y0", "x1", "y1", "confidence"):
        a = np.asarray(out["nvdec"][1].column(c)); b = np.asarray(out["pyav"][1].column(c))
        assert np.allclose(a, b, atol=0.01)


# Predicted failures of issue 10, reproduced with stand-ins (tests/fakes.py) --------------


def _decode_all(path, sampling=SamplingOptions(every=3), batch=4):
    return list(nvdec_module.NvdecDecoder().frames(path, sampling, batch))


def _pyav_all(path, sampling=SamplingOptions(every=3), batch=4):
    return list(PyAVDecoder().frames(path, sampling, batch))


def test_an_installed_pynvvideocodec_that_cannot_load_is_not_picked_by_auto(tmp_path, monkeypatch):
    # PyNvVideoCodec 2.2.4's __init__ asks libnvidia-encode for the driver version and raises
    # RuntimeError where it cannot load it (checked against the real wheel: issue-10 note).
    pkg = tmp_path / "PyNvVideoCodec"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        'raise RuntimeError("Failed to load NVENC library: libnvidia-encode.so.1: cannot open shared '
        'object file: No such file or directory\\n\\n=== TROUBLESHOOTING STEPS ===")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "PyNvVideoCodec", raising=False)
    with pytest.raises(ImportError, match=r"PyNvVideoCodec is installed but cannot load \(RuntimeError: Failed to "
                       r"load NVENC library: libnvidia-encode.so.1.*NVIDIA_DRIVER_CAPABILITIES.*'video'"):
        nvdec_module.import_nvc()
    assert nvdec_module.nvdec_usable(torch.device("cuda", 0))[0] is False
    from exe_stream.pipeline import ScanOptions, _resolve_backends

    assert _resolve_backends(ScanOptions(decoder="auto"), torch.device("cuda", 0)) == "pyav"
    with pytest.raises(ValueError, match=r"cannot load"):
        get_decoder("nvdec")


def test_synthesized_scanned_pts_make_the_film_unsupported_not_wrong(tmp_path, monkeypatch):
    # PyNvVideoCodec 2.2.4's scanned pts are 0, d, 2d... whatever the container says (measured
    # with the real wheel: an MP4 starting at pts 998 scanned as 0, 512, 1024...).
    from fakes import FakeNvc, fake_cuda, write_offset_film
    from exe_stream.errors import UnsupportedByBackend

    film = write_offset_film(tmp_path / "offset.mp4")
    fake_cuda(monkeypatch, FakeNvc(scanned="synthesized"))
    with pytest.raises(UnsupportedByBackend, match=r"offset.mp4: PyNvVideoCodec's frame numbering matches neither"):
        _decode_all(film)
    fake_cuda(monkeypatch, FakeNvc(scanned="container"))  # the same film with real pts decodes
    got, want = _decode_all(film), _pyav_all(film)
    assert [b.frame_index.tolist() for b in got] == [b.frame_index.tolist() for b in want]


@pytest.mark.parametrize("film", ["odd_dims", "h264_bframes", "vfr", "rotated"])
def test_nvdec_surfaces_give_pyavs_planes(films, film, monkeypatch):
    # Odd sizes: NVDEC rounds the width up to even (the last chroma pair is in the surface);
    # the luma and chroma planes must come out as PyAV's, rotation applied.
    from fakes import FakeNvc, fake_cuda

    fake_cuda(monkeypatch, FakeNvc())
    path = getattr(films, film)
    got, want = _decode_all(path), _pyav_all(path)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert torch.equal(g.frame_index, w.frame_index)
        torch.testing.assert_close(g.pts_seconds, w.pts_seconds)
        for name in ("y", "u", "v"):
            assert torch.equal(getattr(g, name), getattr(w, name)), name


def test_an_odd_height_surface_cut_short_is_unsupported_not_a_crash(films, monkeypatch):
    from fakes import FakeNvc, fake_cuda
    from exe_stream.errors import UnsupportedByBackend

    fake_cuda(monkeypatch, FakeNvc(rows="floor"))
    with pytest.raises(UnsupportedByBackend, match=r"odd_177x99.webm: NVDEC's surface cannot be read: not an NV12 "
                       r"surface of 177x99 \(needs uint8 \[>= 149, >= 178\]\): uint8 \(148, 186\)"):
        _decode_all(films.odd_dims)


@pytest.mark.parametrize("export", ["uint16", "bytes"])
def test_p016_surfaces_give_the_high_byte_of_each_sample(films, monkeypatch, export):
    from fakes import FakeNvc, fake_cuda

    fake_cuda(monkeypatch, FakeNvc(high_bit_depth=export))
    got, want = _decode_all(films.hevc10), _pyav_all(films.hevc10)
    for g, w in zip(got, want):
        for name in ("y", "u", "v"):  # PyAV rounds 10 -> 8 bits (swscale), NVDEC truncates
            d = (getattr(g, name).to(torch.int16) - getattr(w, name).to(torch.int16)).abs()
            assert int(d.max()) <= 1, name


def test_batches_made_on_the_side_stream_are_handed_to_the_consumers_stream(films, monkeypatch):
    from fakes import FakeNvc, fake_cuda

    fake_cuda(monkeypatch, FakeNvc())
    handed = []
    monkeypatch.setattr(nvdec_module, "hand_over", lambda tensors, stream: handed.append((len(tensors), stream)))
    batches = _decode_all(films.h264_bframes)
    assert len(handed) == len(batches) and all(n == 4 for n, _ in handed)


def test_hand_over_records_cuda_tensors_on_the_stream():
    recorded = []

    class CudaTensor:
        device = torch.device("cuda", 0)

        def record_stream(self, stream):
            recorded.append(stream)

    nvdec_module.hand_over([CudaTensor(), torch.zeros(1)], "consumer")
    assert recorded == ["consumer"]
