"""Picture types and encoder settings read from packet bytes (exe_stream.decode.bitstream) and
the demux index that records them: checked against FFmpeg's decoder on real streams (MP4 and
MPEG-TS framings of H.264) and on hand-made slice headers."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from exe_stream.decode import bitstream
from exe_stream.decode.index import demux_index

_PICT = {"I": bitstream.PICT_I, "P": bitstream.PICT_P, "B": bitstream.PICT_B}


def _decoded_types(path: Path) -> list[int]:
    """Every frame's picture type as FFmpeg's decoder reports it, in presentation order."""
    with av.open(str(path)) as c:  # AVPictureType numbers: 1 I, 2 P, 3 B
        frames = [(f.pts, int(f.pict_type)) for f in c.decode(video=0)]
    return [t for _, t in sorted(frames)]


def _remux(src: Path, dst: Path) -> None:
    with av.open(str(src)) as i, av.open(str(dst), "w") as o:
        ins = i.streams.video[0]
        outs = o.add_stream_from_template(ins)
        for p in i.demux(ins):
            if p.size:
                p.stream = outs
                o.mux(p)


@pytest.mark.parametrize("clip", ["bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4"])
def test_h264_picture_types_match_the_decoder(clips, clip, tmp_path):
    path = clips / clip
    index = demux_index(path, picture_types=True)
    ours = index.pict[index.order].tolist()
    assert ours == _decoded_types(path)
    assert index.size.tolist() == [p.size for p in av.open(str(path)).demux(video=0) if p.size]
    # The same stream as an Annex B byte stream (start codes instead of lengths).
    ts = tmp_path / "clip.ts"
    _remux(path, ts)
    ts_index = demux_index(ts, picture_types=True)
    assert ts_index.pict[ts_index.order].tolist() == ours


def test_the_bikes_clip_has_every_kind_of_picture_and_x264_settings(clips):
    index = demux_index(clips / "bikes.mp4", picture_types=True)
    kinds = set(index.pict.tolist())
    assert kinds == {bitstream.PICT_I, bitstream.PICT_P, bitstream.PICT_B}  # not a trivial comparison
    # Its intra pictures: the first frame and the clip's own cuts (x264's scene-cut keyframes).
    intra = np.flatnonzero(index.pict[index.order] == bitstream.PICT_I).tolist()
    assert intra == [0, 30, 76, 137, 187, 242]
    assert index.encoder == {"keyint": 250, "min_keyint": 25, "scenecut": 40, "intra_refresh": 0}
    # Without picture_types the index records none of it.
    plain = demux_index(clips / "bikes.mp4")
    assert plain.pict is None and plain.size is None and plain.encoder is None


def test_other_codecs_take_intra_pictures_from_keyframe_flags(tmp_path):
    path = tmp_path / "m.avi"
    with av.open(str(path), "w") as out:
        s = out.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.options = {"g": "10", "qscale": "5"}
        rng = np.random.default_rng(0)
        for _ in range(25):
            img = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    index = demux_index(path, picture_types=True)
    expect = np.where(index.keyframe, bitstream.PICT_I, bitstream.PICT_UNKNOWN)
    np.testing.assert_array_equal(index.pict, expect)
    assert index.keyframe.sum() >= 3 and index.encoder == {}


def _ue(value: int) -> str:
    code = bin(value + 1)[2:]
    return "0" * (len(code) - 1) + code


def _escaped_nal(header: int, bits: str) -> bytes:
    bits += "1"  # rbsp stop bit
    bits += "0" * (-len(bits) % 8)
    raw = bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)) + b"\x00" * 4
    out, zeros = bytearray([header]), 0
    for b in raw:  # emulation prevention, as an encoder writes it
        if zeros >= 2 and b <= 3:
            out.append(3)
            zeros = 0
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


@pytest.mark.parametrize("slice_type,expect", [(0, "P"), (1, "B"), (2, "I"), (5, "P"), (6, "B"), (7, "I"),
                                               (3, "P"), (4, "I")])
def test_slice_headers_with_emulation_prevention(slice_type, expect):
    # first_mb_in_slice = 2^17 - 1 is 17 zero bits, a one, 17 zero bits: the bytes hold
    # 00 00 runs that the encoder escapes with 0x03; read without unescaping, slice_type is wrong.
    nal = _escaped_nal(0x01, _ue(2**17 - 1) + _ue(slice_type))
    assert b"\x00\x00\x03" in nal
    sei = bytes([0x06, 0x05, 0x01, 0xAA, 0x80])  # an SEI before the slice is passed over
    packet = b"".join(len(u).to_bytes(4, "big") + u for u in (sei, nal))
    assert bitstream.h264_picture_type(packet, 4) == _PICT[expect]
    assert bitstream.h264_picture_type(memoryview(packet), 4) == _PICT[expect]
    assert bitstream.h264_picture_type(b"\x00\x00\x01" + sei + b"\x00\x00\x01" + nal, 0) == _PICT[expect]
    # No slice, or a damaged header: unknown, never an exception.
    assert bitstream.h264_picture_type(len(sei).to_bytes(4, "big") + sei, 4) == bitstream.PICT_UNKNOWN
    assert bitstream.h264_picture_type(b"\x00\x00\x00\x02\x01\x00", 4) == bitstream.PICT_UNKNOWN


def test_encoder_settings_strings():
    x264 = (b"\x05\x00x264 - core 164 r3108 - H.264/MPEG-4 AVC codec - options: cabac=1 keyint=48 keyint_min=4 "
            b"scenecut=0 intra_refresh=1 rc=crf")
    assert bitstream.encoder_settings(x264) == {"keyint": 48, "min_keyint": 4, "scenecut": 0, "intra_refresh": 1}
    x265 = b"x265 (build 199) - 3.5 - options: min-keyint=25 keyint=250 no-scenecut bframes=4"
    assert bitstream.encoder_settings(x265) == {"min_keyint": 25, "keyint": 250, "scenecut": 0}
    assert bitstream.encoder_settings(b"\x00\x01Lavc60 mpeg4 no settings") == {}
    assert bitstream.avcc_length_size(b"\x01\x64\x00\x28\xff\xe1\x00") == 4
    assert bitstream.avcc_length_size(b"\x01\x64\x00\x28\xfd\xe1\x00") == 2
    assert bitstream.avcc_length_size(b"\x00\x00\x00\x01\x67") == 0
