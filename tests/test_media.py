"""The test-film generator itself: pictures, counters, markers and the broken files."""

from __future__ import annotations

import av
import numpy as np
import pytest

import media


@pytest.mark.parametrize("width, height", [(128, 96), (177, 99), (96, 720), (80, 128)])
def test_counter_and_marker_read_back_from_the_drawing(width, height):
    for i in (0, 1, 37, 128, 255):
        y, u, v = media.draw_frame(i, width, height)
        assert y.shape == (height, width) and u.shape == v.shape == ((height + 1) // 2, (width + 1) // 2)
        assert media.read_counter(y) == i
        assert media.bright_corner(y) == "tl"
        assert media.bright_corner(np.rot90(y)) == "bl"


def test_counter_survives_coding(films):
    with av.open(str(films.h264_bframes)) as c:
        got = [media.read_counter(f.to_ndarray(format="gray")) for f in c.decode(video=0)]
    assert got == list(range(120))


def test_valid_films_are_what_they_claim(films):
    def video(path):
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            f = next(c.decode(s))
            return s.codec_context.name, f.format.name, f.width, f.height, f.rotation

    assert video(films.h264_bframes) == ("h264", "yuv420p", 160, 96, 0)
    assert video(films.odd_dims) == ("vp9", "yuv420p", 177, 99, 0)
    assert video(films.yuv444) == ("h264", "yuv444p", 177, 99, 0)
    assert video(films.hevc10) == ("hevc", "yuv420p10le", 128, 96, 0)
    assert video(films.vp9_webm)[0] == "vp9" and films.vp9_webm.suffix == ".webm"
    assert video(films.rotated)[4] == 90
    with av.open(str(films.h264_bframes)) as c:
        pkts = [p for p in c.demux(video=0) if p.size]
    decode_order_pts = [p.pts for p in pkts]
    assert decode_order_pts != sorted(decode_order_pts)  # B-frames: reordered
    assert [i for i, p in enumerate(pkts) if p.is_keyframe] == [0, 30, 60, 90]


def test_broken_films_are_broken_as_described(films):
    assert films.empty.stat().st_size == 0
    data = films.no_moov.read_bytes()
    kinds = [k for k, _, _ in media._boxes(data)]
    assert "moov" not in kinds and "mdat" in kinds
    truncated, head_cut, corrupt_middle = films.truncated, films.head_cut, films.corrupt_middle
    whole = (films.directory / ".source_fast.mp4").read_bytes()  # what those three were cut from
    assert truncated.read_bytes() == whole[: len(whole) // 2]
    assert head_cut.read_bytes() == whole[4096:]
    corrupt = corrupt_middle.read_bytes()
    diff = np.flatnonzero(np.frombuffer(corrupt, np.uint8) != np.frombuffer(whole, np.uint8))
    assert len(corrupt) == len(whole) and 0.4 * len(whole) < diff[0] and diff[-1] < 0.6 * len(whole)
    with av.open(str(films.audio_only)) as c:
        assert [s.type for s in c.streams] == ["audio"]
