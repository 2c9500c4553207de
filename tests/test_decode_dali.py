"""The DALI decoder (exe_stream/decode/dali.py) against the PyAV decoder.

DALI's CPU pipeline decodes VP9 (not H.264), so the films here are VP9: the generated one
(tests/media.py) and a real clip re-encoded to VP9 with PyAV. The GPU pipeline's cases are
CUDA-marked and skipped without a GPU. The module is skipped where DALI is not installed.
"""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import media

pytest.importorskip("nvidia.dali", reason="DALI not installed (pip install nvidia-dali-cuda130)")

from exe_stream.decode import Decoder, get_decoder  # noqa: E402
from exe_stream.decode import dali as dali_module  # noqa: E402
from exe_stream.decode.dali import DaliDecoder, DaliOptions  # noqa: E402
from exe_stream.decode.index import IndexCache  # noqa: E402
from exe_stream.decode.pyav import PyAVDecoder  # noqa: E402
from exe_stream.errors import DecodeError  # noqa: E402
from exe_stream.sampling import SamplingOptions  # noqa: E402

DEVICES = [
    "cpu",
    pytest.param("gpu", marks=[pytest.mark.cuda, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device")]),
]
SAMPLINGS = [
    SamplingOptions(every=7),
    SamplingOptions(every=None, interval=0.3),
    SamplingOptions(every=4, mode="keyframe"),
]


def reencode_vp9(source: Path, path: Path, num_frames: int = 40, gop: int = 10) -> Path:
    """The first ``num_frames`` frames of ``source`` as VP9 in WebM, a keyframe every ``gop``."""
    with av.open(str(source)) as src:
        frames = [f.reformat(format="yuv420p") for _, f in zip(range(num_frames), src.decode(video=0))]
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libvpx-vp9", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
        stream.codec_context.thread_count = 1
        stream.codec_context.bit_rate = 0
        stream.options = {"deadline": "realtime", "cpu-used": "8", "g": str(gop), "crf": "30"}
        for i, f in enumerate(frames):
            f.pts, f.time_base = i, Fraction(1, 25)
            f.pict_type = av.video.frame.PictureType.NONE
            out.mux(stream.encode(f))
        out.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def real_vp9(clips, tmp_path_factory) -> Path:
    """The bundled carphone clip (176x144, a face), 40 frames, re-encoded to VP9."""
    return reencode_vp9(clips / "carphone_pristine.mp4", tmp_path_factory.mktemp("dali") / "carphone.webm")


def collect(decoder, path: Path, sampling: SamplingOptions, batch_size: int = 4) -> dict:
    batches = list(decoder.frames(path, sampling, batch_size))
    for b in batches:
        assert 0 < len(b) <= batch_size
    cat = lambda name: torch.cat([getattr(b, name).cpu() for b in batches])
    return {"index": cat("frame_index").tolist(), "pts": cat("pts_seconds").tolist(),
            "key": cat("is_keyframe").tolist(), "y": cat("y"), "u": cat("u"), "v": cat("v"),
            "batches": batches}


def corrupt_packets(path: Path, out: Path, packets: list[int]) -> Path:
    """A copy of ``path`` whose packets (decode order) ``packets`` are overwritten with noise,
    the container left intact."""
    data = bytearray(path.read_bytes())
    with av.open(str(path)) as c:
        payloads = [bytes(p) for p in c.demux(video=0) if p.size]
    for k in packets:
        at = data.find(payloads[k])
        assert at > 0
        data[at:at + len(payloads[k])] = np.random.default_rng(k).integers(
            0, 256, len(payloads[k]), dtype=np.uint8).tobytes()
    out.write_bytes(bytes(data))
    return out


def in_gamut(y: torch.Tensor, u: torch.Tensor, v: torch.Tensor, margin: float = 2.0) -> torch.Tensor:
    """bool [B, H, W]: where BT.601 limited-range Y'CbCr maps inside the RGB cube (with a
    margin): there DALI's RGB was not clipped, so its Y can be recovered."""
    h, w = y.shape[-2:]
    up = lambda c: c.float().repeat_interleave(2, -1).repeat_interleave(2, -2)[..., :h, :w]
    yf = (y.float() - 16) * 255 / 219
    cb, cr = (up(u) - 128) * 255 / 224, (up(v) - 128) * 255 / 224
    rgb = torch.stack([yf + 1.402 * cr, yf - 0.344136 * cb - 0.714136 * cr, yf + 1.772 * cb])
    return ((rgb > margin) & (rgb < 255 - margin)).all(0)


# Registry and options ------------------------------------------------------------------


def test_registry_gives_the_dali_decoder():
    d = get_decoder("dali")
    assert isinstance(d, DaliDecoder) and isinstance(d, Decoder) and d.name == "dali"


def test_options_errors():
    with pytest.raises(ValueError, match=r"DALI device must be 'auto', 'cpu' or 'gpu', got 'tpu'"):
        DaliOptions(device="tpu")
    with pytest.raises(ValueError, match=r"num_threads must be >= 1, got 0"):
        DaliOptions(num_threads=0)
    with pytest.raises(ValueError, match=r"device_id must be >= 0, got -1"):
        DaliOptions(device_id=-1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_gpu_pipeline_without_cuda():
    with pytest.raises(ValueError, match=r"DALI device 'gpu' needs a CUDA device, and torch sees none"):
        DaliDecoder(DaliOptions(device="gpu"))


def test_missing_dali_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"decoder 'dali' needs NVIDIA DALI.*pip install nvidia-dali-cuda130"):
        dali_module.import_dali()
    with pytest.raises(ValueError, match=r"install it with: pip install nvidia-dali-cuda130"):
        get_decoder("dali")


def test_batch_size_must_be_positive(films):
    with pytest.raises(ValueError, match=r"batch_size must be >= 1, got 0"):
        next(DaliDecoder().frames(films.vp9_webm, SamplingOptions(every=5), 0))


def test_first_line_of_a_dali_error():
    e = RuntimeError("Critical error in pipeline:\nError in CPU operator `x`,\n\nencountered:\n\n"
                     "Assert on \"ret >= 0\" failed: Failed to send packet\nC++ context: [...]")
    assert dali_module._first_line(e) == "Failed to send packet"


# Frames: indices, timestamps, keyframes --------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sampling", SAMPLINGS, ids=lambda s: s.describe())
def test_same_frames_and_timestamps_as_pyav(films, real_vp9, device, sampling):
    dali = DaliDecoder(DaliOptions(device=device))
    for path in (films.vp9_webm, real_vp9):
        got = collect(dali, path, sampling)
        want = collect(PyAVDecoder(), path, sampling)
        assert got["index"] == want["index"] and len(got["index"]) > 1
        assert got["pts"] == want["pts"] and got["key"] == want["key"]
        assert got["y"].shape == want["y"].shape and got["u"].shape == want["u"].shape
        b = got["batches"][0]
        assert b.device.type == ("cuda" if device == "gpu" else "cpu")
        assert (b.matrix, b.full_range) == (want["batches"][0].matrix, want["batches"][0].full_range)
    # The generated film's pictures carry their frame number: the right frames came out.
    got = collect(dali, films.vp9_webm, sampling)
    assert [media.read_counter(p.numpy()) for p in got["y"]] == got["index"]


def test_odd_size_film(films):
    sampling = SamplingOptions(every=4)
    got = collect(DaliDecoder(), films.odd_dims, sampling)
    want = collect(PyAVDecoder(), films.odd_dims, sampling)
    assert got["index"] == want["index"] == list(range(0, 30, 4))
    assert tuple(got["y"].shape[1:]) == (99, 177) and tuple(got["u"].shape[1:]) == (50, 89)
    assert [media.read_counter(p.numpy()) for p in got["y"]] == got["index"]


def test_path_with_spaces(films, tmp_path):
    spaced = tmp_path / "a dir" / "my film.webm"
    spaced.parent.mkdir()
    spaced.write_bytes(films.vp9_webm.read_bytes())
    got = collect(DaliDecoder(), spaced, SamplingOptions(every=6))
    assert got["index"] == [0, 6, 12, 18, 24]
    assert [media.read_counter(p.numpy()) for p in got["y"]] == got["index"]


def test_rotation_is_applied(tmp_path):
    # VP9 in MP4 carries a display matrix; DALI ignores it, the decoder applies it.
    path = media.write_film(tmp_path / "rot90.mp4", codec="libvpx-vp9", width=128, height=80,
                            num_frames=12, gop=6, rotation=90)
    sampling = SamplingOptions(every=5)
    got = collect(DaliDecoder(), path, sampling)
    want = collect(PyAVDecoder(), path, sampling)
    assert got["index"] == want["index"] == [0, 5, 10]
    assert tuple(got["y"].shape[1:]) == (128, 80) == tuple(want["y"].shape[1:])
    assert [media.bright_corner(p.numpy()) for p in got["y"]] == \
        [media.bright_corner(p.numpy()) for p in want["y"]] == ["bl"] * 3


# Pixels ----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["generated", "real"])
def test_pixels_match_pyav_within_the_documented_rounding(films, real_vp9, which):
    # CPU pipeline: DALI gives RGB (BT.601, clipped); the planes are that conversion inverted.
    # Y is identical wherever the colours lie inside the RGB gamut; chroma is close.
    path = films.vp9_webm if which == "generated" else real_vp9
    sampling = SamplingOptions(every=3)
    got = collect(DaliDecoder(DaliOptions(device="cpu")), path, sampling)
    want = collect(PyAVDecoder(), path, sampling)
    ok = in_gamut(want["y"], want["u"], want["v"])
    assert ok.float().mean() > (0.3 if which == "generated" else 0.9)
    dy = (got["y"].int() - want["y"].int()).abs()
    assert dy[ok].max() <= 1
    h, w = ok.shape[-2:]
    ok_blocks = ok[..., : h // 2 * 2, : w // 2 * 2].unfold(-2, 2, 2).unfold(-2, 2, 2).all(-1).all(-1)
    for c in ("u", "v"):
        d = (got[c].int() - want[c].int()).abs()[..., : h // 2, : w // 2][ok_blocks]
        assert d.float().mean() < 0.5 and d.max() <= 10, (c, d.float().mean(), d.max())


# Broken and unsupported films ------------------------------------------------------------


def test_h264_on_the_cpu_pipeline_is_refused(films):
    with pytest.raises(DecodeError, match=r"h264_bframes.mp4: DALI's CPU decoder cannot decode h264 "
                       r"\(it decodes vp8, vp9, mjpeg\); use --decoder pyav") as e:
        next(DaliDecoder(DaliOptions(device="cpu")).frames(films.h264_bframes, SamplingOptions(every=10), 4))
    assert e.value.frames_decoded == 0


def test_broken_first_packet_fails_naming_the_file(films, tmp_path):
    bad = corrupt_packets(films.vp9_webm, tmp_path / "bad_start.webm", [0])
    with pytest.raises(DecodeError, match=r"bad_start.webm: DALI could not decode frames 0 to 9: .*Invalid data") as e:
        list(DaliDecoder().frames(bad, SamplingOptions(every=3), 4))
    assert e.value.frames_decoded == 0 and e.value.path == str(bad)


def test_broken_middle_gives_a_partial_film(films, tmp_path):
    bad = corrupt_packets(films.vp9_webm, tmp_path / "bad_middle.webm", [20])
    got = []
    # Packet 20 is a keyframe: frame 21 cannot be decoded, and its batch (18, 21) is lost.
    with pytest.raises(DecodeError, match=r"bad_middle.webm: DALI could not decode frames 18 to 21: "
                       r"Failed to send packet to decoder") as e:
        for b in DaliDecoder().frames(bad, SamplingOptions(every=3), 2):
            got += b.frame_index.tolist()
    assert got == [0, 3, 6, 9, 12, 15] and e.value.frames_decoded == len(got)


def test_frames_dali_numbers_differently_are_refused(films, monkeypatch):
    # Every frame DALI returns is checked against the index: a disagreement is an error, not
    # a silently shifted timeline (forced here with a negative tolerance).
    monkeypatch.setattr(dali_module, "_TS_TOLERANCE", -1.0)
    with pytest.raises(DecodeError, match=r"vp9.webm: DALI returned frame 0 at 0.000000 s where frame 0 "
                       r"at 0.000000 s was asked: its frame numbering disagrees with the container's "
                       r"presentation order; use --decoder pyav"):
        next(DaliDecoder().frames(films.vp9_webm, SamplingOptions(every=5), 4))


def test_films_without_timestamps_are_refused(films, monkeypatch):
    real_get = IndexCache.get

    def unordered(self, path, decode_first=False):
        index = real_get(self, path, decode_first)
        index.ordered, index.fallback = False, "pts missing"
        return index

    monkeypatch.setattr(IndexCache, "get", unordered)
    with pytest.raises(DecodeError, match=r"vp9.webm: DALI needs the container's timestamps to number "
                       r"frames \(pts missing\); use --decoder pyav"):
        next(DaliDecoder().frames(films.vp9_webm, SamplingOptions(every=5), 4))


def test_not_a_film(films):
    with pytest.raises(DecodeError, match=r"notes.mp4: not a media file \(it holds text\)"):
        next(DaliDecoder().frames(films.text_as_mp4, SamplingOptions(every=3), 4))


def test_header_only_film(films, tmp_path):
    cut = tmp_path / "cut.webm"
    cut.write_bytes(films.vp9_webm.read_bytes()[:600])
    with pytest.raises(DecodeError, match=r"cut.webm: the video stream holds no frames"):
        next(DaliDecoder().frames(cut, SamplingOptions(every=3), 4))


# In a scan -------------------------------------------------------------------------------


def test_scan_with_dali_writes_the_same_frames_as_pyav(real_vp9, tmp_path):
    from exe_stream.pipeline import ScanOptions, scan
    from exe_stream.shards import frames_path, read_table

    tables = {}
    for decoder in ("dali", "pyav"):
        opts = ScanOptions(sampling=SamplingOptions(every=5), device="cpu", decoder=decoder)
        res = scan([real_vp9], tmp_path / decoder, opts)
        assert [f.status for f in res.films] == ["done"]
        tables[decoder] = read_table(frames_path(tmp_path / decoder, res.films[0].film_id))
    cols = ["frame_index", "pts_seconds", "is_keyframe"]
    assert tables["dali"].select(cols).equals(tables["pyav"].select(cols))
    # The face is found in the same frames (pixels differ only by the documented rounding).
    assert tables["dali"].column("n_faces").to_pylist() == tables["pyav"].column("n_faces").to_pylist()
    assert sum(tables["dali"].column("n_faces").to_pylist()) > 0
