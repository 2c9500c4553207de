"""The PyAV decoder, the decoder registry and film discovery, on generated and bundled films.

Every sampled frame's picture carries its frame number (tests/media.py), so the tests check
which frame came out, not only its index; exactness is checked against a plain full decode.
"""

from __future__ import annotations

import gc
import threading
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch

import media
from exe_stream.decode import VIDEO_EXTENSIONS, Decoder, find_videos, get_decoder
from exe_stream.decode.pyav import PyAVDecoder, PyAVOptions
from exe_stream.decode.pyav import _exact_runs as pyav_exact_runs
from exe_stream.errors import DecodeError
from exe_stream.sampling import SamplingOptions, select_frames
from exe_stream.types import FrameBatch


def full_decode(path: Path) -> dict[int, tuple[np.ndarray, ...]]:
    """Plain PyAV decode of every frame: pts -> planes (numpy, padding cut off, as stored)."""
    out = {}
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            dtype = np.uint16 if f.format.name.endswith("10le") else np.uint8
            planes = []
            for p in f.planes:
                a = np.frombuffer(p, np.uint8, count=p.line_size * p.height).reshape(p.height, p.line_size)
                planes.append(a.view(dtype)[:, : p.width].copy())
            out[f.pts] = tuple(planes)
    return out


def collect(decoder: PyAVDecoder, path: Path, sampling: SamplingOptions, batch_size: int = 8):
    """All batches of a film, concatenated: dict of index, pts, key, y, u, v, batches."""
    batches = list(decoder.frames(path, sampling, batch_size))
    for b in batches:
        assert isinstance(b, FrameBatch) and 0 < len(b) <= batch_size and b.device.type == "cpu"
    cat = lambda name: torch.cat([getattr(b, name) for b in batches]) if batches else torch.zeros(0)
    return {
        "index": cat("frame_index").tolist(),
        "pts": cat("pts_seconds").tolist(),
        "key": cat("is_keyframe").tolist(),
        "y": cat("y").numpy(), "u": cat("u").numpy(), "v": cat("v").numpy(),
        "batches": batches,
    }


def counters(y: np.ndarray) -> list[int]:
    return [media.read_counter(plane) for plane in y]


def pts_of(path: Path) -> tuple[list[int], Fraction]:
    """Presentation-ordered pts of every frame and the time base, from a plain demux."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return sorted(p.pts for p in c.demux(s) if p.size), Fraction(s.time_base)


# Registry and discovery ----------------------------------------------------------------


def test_get_decoder_pyav():
    d = get_decoder("pyav")
    assert isinstance(d, PyAVDecoder) and isinstance(d, Decoder) and d.name == "pyav"


def test_get_decoder_unknown_name():
    with pytest.raises(ValueError, match=r"unknown decoder 'ffmpeg'; choose one of: dali, nvdec, pyav"):
        get_decoder("ffmpeg")


def test_find_videos(tmp_path):
    for rel in ["a/x.mp4", "a/b/y.MKV", "a/b/z.webm", "a/notes.txt", "a/.hidden/h.mp4", "a/.dot.mp4", "c.mov"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    got = find_videos([tmp_path / "a", tmp_path / "c.mov", tmp_path / "a" / "notes.txt", tmp_path / "a"])
    want = ["a/b/y.MKV", "a/b/z.webm", "a/notes.txt", "a/x.mp4", "c.mov"]
    assert got == sorted(tmp_path / w for w in want)
    assert ".mp4" in VIDEO_EXTENSIONS and ".txt" not in VIDEO_EXTENSIONS


def test_find_videos_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.mp4: no such file or directory"):
        find_videos([tmp_path / "nowhere.mp4"])


# Probe ---------------------------------------------------------------------------------


def test_probe(films):
    info = PyAVDecoder().probe(films.h264_bframes)
    assert (info.codec, info.width, info.height, info.rotation) == ("h264", 160, 96, 0)
    assert info.num_frames == 120 and info.average_fps == 25.0
    assert info.duration_seconds == pytest.approx(4.8)
    assert (info.pix_fmt, info.matrix, info.full_range) == ("yuv420p", "bt601", False)
    assert info.path == str(films.h264_bframes)


def test_probe_bundled_clip(clips):
    info = PyAVDecoder().probe(clips / "bigbuckbunny.mp4")  # has an audio stream too
    assert (info.width, info.height, info.num_frames) == (1280, 720, 132)


# Exact sampling ------------------------------------------------------------------------


def test_every_n_gives_indices_pts_keyframes_and_pictures(films):
    got = collect(PyAVDecoder(), films.h264_bframes, SamplingOptions(every=7), batch_size=4)
    want = list(range(0, 120, 7))
    assert got["index"] == want
    assert counters(got["y"]) == want  # the pictures are those frames
    assert got["pts"] == pytest.approx([i / 25 for i in want])
    assert got["key"] == [i % 30 == 0 for i in want]  # keyframes every 30 frames
    assert [len(b) for b in got["batches"]] == [4, 4, 4, 4, 2]
    assert got["y"].shape[1:] == (96, 160) and got["u"].shape[1:] == (48, 80)


EXACT_CASES = [
    # every, seek_min_packets, thread_type
    (1, 64, "AUTO"),
    (7, 64, "AUTO"),
    (29, 64, "SLICE"),
    (29, 1, "AUTO"),
    (45, 1, "NONE"),
    (45, 64, "FRAME"),
    (61, 1, "AUTO"),
]


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("every, seek_min, threads", EXACT_CASES)
def test_exact_sampling_is_bit_identical_to_full_decode(films, every, seek_min, threads, workers):
    path = films.h264_bframes
    ref = full_decode(path)
    pts, tb = pts_of(path)
    dec = PyAVDecoder(PyAVOptions(thread_type=threads, seek_min_packets=seek_min,
                                  run_workers=workers))
    got = collect(dec, path, SamplingOptions(every=every))
    assert got["index"] == list(range(0, 120, every))
    for row, i in enumerate(got["index"]):
        y, u, v = ref[pts[i]]
        assert np.array_equal(got["y"][row], y) and np.array_equal(got["u"][row], u)
        assert np.array_equal(got["v"][row], v)
    stats = dec.last_stats
    assert stats.frames_sampled == len(got["index"]) and not stats.missing
    if every > 1:
        assert stats.frames_decoded < 120 and stats.frames_skipped == 120 - stats.frames_decoded
    if seek_min == 1 and every > 30:
        assert stats.seeks > 0 and stats.packets_read < 120


@pytest.mark.parametrize("name", ["vp9_webm", "hevc10", "odd_dims", "vfr", "yuv444", "rotated"])
@pytest.mark.parametrize("every", [3, 11])
def test_skipping_and_seeking_match_decoding_everything(films, name, every):
    """Other codecs and containers, and HEVC's open GOPs (x265 CRA keyframes whose leading
    pictures refer to the previous GOP): skipping + seeking gives the frames that decoding
    every frame gives."""
    path = getattr(films, name)
    everything = collect(PyAVDecoder(PyAVOptions(skip_nonref=False)), path, SamplingOptions(every=1))
    dec = PyAVDecoder(PyAVOptions(seek_min_packets=1))
    got = collect(dec, path, SamplingOptions(every=every))
    n = len(everything["index"])
    assert got["index"] == list(range(0, n, every)) and not dec.last_stats.missing
    for plane in ("y", "u", "v"):
        assert np.array_equal(got[plane], everything[plane][::every])
    assert got["pts"] == everything["pts"][::every]


def test_exact_sampling_bit_identical_on_real_footage(clips):
    path = clips / "bikes.mp4"
    ref = full_decode(path)
    pts, _ = pts_of(path)
    dec = PyAVDecoder(PyAVOptions(seek_min_packets=1))
    got = collect(dec, path, SamplingOptions(every=13), batch_size=16)
    assert got["index"] == list(range(0, 250, 13))
    for row, i in enumerate(got["index"]):
        assert all(np.array_equal(g, r) for g, r in zip((got["y"][row], got["u"][row], got["v"][row]), ref[pts[i]]))
    assert dec.last_stats.frames_decoded < 250


def test_a_seek_that_misses_falls_back_to_reading_through(films, monkeypatch):
    from exe_stream.decode import pyav

    class OvershootingSeek:
        """A container whose seeks land far after the wanted keyframe."""

        def __init__(self, container):
            self._c = container

        def __getattr__(self, name):
            return getattr(self._c, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._c.close()

        def seek(self, offset, **kwargs):
            self._c.seek(offset + 10**6, **kwargs)

    real_open = pyav._open
    monkeypatch.setattr(pyav, "_open", lambda path: OvershootingSeek(real_open(path)))
    path = films.h264_bframes
    dec = PyAVDecoder(PyAVOptions(seek_min_packets=1))
    got = collect(dec, path, SamplingOptions(every=61))
    assert dec.last_stats.seeks_failed == 1 and got["index"] == [0, 61]
    ref, (pts, _) = full_decode(path), pts_of(path)
    assert all(np.array_equal(got["y"][r], ref[pts[i]][0]) for r, i in enumerate(got["index"]))


def test_skip_nonref_decodes_fewer_frames_for_the_same_output(films):
    path, opts = films.h264_bframes, SamplingOptions(every=4)
    fast, slow = PyAVDecoder(), PyAVDecoder(PyAVOptions(skip_nonref=False))
    a, b = collect(fast, path, opts), collect(slow, path, opts)
    assert np.array_equal(a["y"], b["y"]) and np.array_equal(a["u"], b["u"])
    assert fast.last_stats.frames_decoded < slow.last_stats.frames_decoded


def test_interval_on_variable_frame_rate(films):
    path = films.vfr
    pts, tb = pts_of(path)
    assert [p * tb for p in pts] == [Fraction(ms, 1000) for ms in media.VFR_PTS_MS]
    opts = SamplingOptions(every=None, interval=0.25)
    want = select_frames(pts, [False] * len(pts), tb, opts)
    got = collect(PyAVDecoder(), path, opts)
    assert got["index"] == want and counters(got["y"]) == want
    assert got["pts"] == [media.VFR_PTS_MS[i] / 1000 for i in want]
    # The 500 ms pause after frame 20 is sampled once, by the first frame after it.
    assert 21 in want and len(want) == len(set(want))


# Keyframe sampling ---------------------------------------------------------------------


def test_keyframe_mode_decodes_only_keyframes(films):
    path = films.h264_bframes
    ref = full_decode(path)
    pts, _ = pts_of(path)
    dec = PyAVDecoder()
    got = collect(dec, path, SamplingOptions(every=20, mode="keyframe"))
    # requested 0, 20, ..., 100 -> the keyframes at or before them: 0, 30, 60, 90
    assert got["index"] == [0, 30, 60, 90] and counters(got["y"]) == [0, 30, 60, 90]
    assert got["pts"] == [0.0, 1.2, 2.4, 3.6] and all(got["key"])
    assert dec.last_stats.frames_decoded == 4 and dec.last_stats.packets_fed == 4
    for row, i in enumerate(got["index"]):
        assert np.array_equal(got["y"][row], ref[pts[i]][0])


@pytest.mark.parametrize("name", ["vfr", "vp9_webm", "hevc10", "odd_dims"])
def test_keyframe_mode_real_pts_on_other_films(films, name):
    path = getattr(films, name)
    pts, tb = pts_of(path)
    with av.open(str(path)) as c:
        keys = sorted(p.pts for p in c.demux(video=0) if p.size and p.is_keyframe)
    got = collect(PyAVDecoder(PyAVOptions(seek_min_packets=1)), path,
                  SamplingOptions(every=None, interval=0.3, mode="keyframe"))
    assert got["index"] and all(got["key"])
    assert all(pts[i] in keys for i in got["index"])
    assert got["pts"] == [float(pts[i] * tb) for i in got["index"]]
    assert counters(got["y"]) == got["index"]


@pytest.mark.parametrize("name, kwargs", [("h264_bframes", {}), ("rotated", {"degrees": 90, "hflip": True})])
def test_decoded_frames_are_freed_without_the_garbage_collector(films, name, kwargs):
    # PyAV ties a frame to its side data in a reference cycle; a sampled frame caught in one
    # keeps its decoder buffer until a full collection, so memory grew with the film's length.
    path = films.get(name, **kwargs)
    dec = PyAVDecoder()
    dec.probe(path)
    gc.collect()
    gc.disable()
    try:
        got = collect(dec, path, SamplingOptions(every=1))
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        cyclic = sum(isinstance(o, av.VideoFrame) for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert len(got["index"]) >= 10
    # At most the frames probing and indexing decode to learn the geometry, not one per sample.
    assert cyclic <= 2, f"{cyclic} frames of {len(got['index'])} sampled were left in reference cycles"


# Rotation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "degrees, hflip, corner",
    [(90, False, "bl"), (180, False, "br"), (270, False, "tr"), (0, True, "tr"), (90, True, "br")],
)
def test_display_matrix_is_applied(films, degrees, hflip, corner):
    path = films.get("rotated", degrees=degrees, hflip=hflip)
    dec = PyAVDecoder()
    info = dec.probe(path)
    turned = degrees in (90, 270)
    assert (info.width, info.height) == ((80, 128) if turned else (128, 80))
    if not hflip:
        assert info.rotation == degrees
    got = collect(dec, path, SamplingOptions(every=5))
    assert got["y"].shape[1:] == (info.height, info.width)
    assert got["u"].shape[1:] == ((info.height + 1) // 2, (info.width + 1) // 2)
    # The stored top-left marker shows up where the display transform puts it...
    assert {media.bright_corner(y) for y in got["y"]} == {corner}
    # ...and every plane is the stored one turned counter-clockwise, then mirrored.
    ref = full_decode(path)
    pts, _ = pts_of(path)
    for row, i in enumerate(got["index"]):
        for plane, stored in zip((got["y"][row], got["u"][row], got["v"][row]), ref[pts[i]]):
            want = np.rot90(stored, degrees // 90)
            assert np.array_equal(plane, want[:, ::-1] if hflip else want)
        assert media.read_counter(ref[pts[i]][0]) == i


# Colour --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, matrix, full_range",
    [
        ("bt709_full", "bt709", True),  # tagged in the H.264 VUI
        ("h264_bframes", "bt601", False),  # untagged, 96 lines
        ("untagged_720", "bt709", False),  # untagged, 720 lines
        ("hevc10", "bt601", False),  # range tagged limited, matrix untagged
    ],
)
def test_colour_matrix_and_range(films, name, matrix, full_range):
    path = getattr(films, name)
    dec = PyAVDecoder()
    info = dec.probe(path)
    assert (info.matrix, info.full_range) == (matrix, full_range)
    for b in dec.frames(path, SamplingOptions(every=3), 4):
        assert (b.matrix, b.full_range) == (matrix, full_range)


@pytest.mark.parametrize("clip, matrix", [("carphone_pristine.mp4", "bt601"), ("bigbuckbunny.mp4", "bt709")])
def test_colour_of_bundled_clips(clips, clip, matrix):
    batch = next(PyAVDecoder().frames(clips / clip, SamplingOptions(every=50), 1))
    assert (batch.matrix, batch.full_range) == (matrix, False)


# Sizes and pixel formats ---------------------------------------------------------------


def test_odd_dimensions(films):
    path = films.odd_dims  # VP9 4:2:0 177x99
    ref = full_decode(path)
    pts, _ = pts_of(path)
    got = collect(PyAVDecoder(), path, SamplingOptions(every=4))
    assert got["y"].shape[1:] == (99, 177) and got["u"].shape[1:] == (50, 89)
    assert counters(got["y"]) == got["index"] == list(range(0, 30, 4))
    for row, i in enumerate(got["index"]):
        assert all(np.array_equal(g, r) for g, r in zip((got["y"][row], got["u"][row], got["v"][row]), ref[pts[i]]))


def test_yuv444_is_subsampled_to_420(films):
    path = films.yuv444  # H.264 4:4:4, 177x99
    ref = full_decode(path)
    pts, _ = pts_of(path)
    dec = PyAVDecoder()
    assert dec.probe(path).pix_fmt == "yuv444p"
    got = collect(dec, path, SamplingOptions(every=6))
    assert got["y"].shape[1:] == (99, 177) and got["u"].shape[1:] == (50, 89)
    assert counters(got["y"]) == got["index"]
    for row, i in enumerate(got["index"]):
        y, u, _ = ref[pts[i]]
        assert np.array_equal(got["y"][row], y)  # luma untouched
        mean = u[:98, :176].astype(float).reshape(49, 2, 88, 2).mean(axis=(1, 3))
        # (swscale's chroma filter is not a plain 2x2 mean; they differ only at sharp edges)
        assert np.median(np.abs(got["u"][row][:49, :88] - mean)) <= 1


def test_10bit_hevc_is_reduced_to_8bit(films):
    path = films.hevc10
    ref = full_decode(path)
    pts, _ = pts_of(path)
    dec = PyAVDecoder()
    info = dec.probe(path)
    assert (info.codec, info.pix_fmt) == ("hevc", "yuv420p10le")
    got = collect(dec, path, SamplingOptions(every=5))
    assert got["y"].dtype == np.uint8 and counters(got["y"]) == got["index"] == [0, 5, 10, 15, 20]
    for row, i in enumerate(got["index"]):
        for plane, ten_bit in zip((got["y"][row], got["u"][row]), ref[pts[i]]):
            assert np.abs(plane.astype(int) - ten_bit.astype(int) / 4).max() <= 1


@pytest.mark.parametrize("name, reason", [("raw_h264", "pts missing"), ("avi_bframes", "AVI with B-frames")])
def test_films_without_presentation_times_are_decoded_in_output_order(films, name, reason):
    path = getattr(films, name)
    dec = PyAVDecoder()
    assert reason in dec.probe(path).extra["timestamps"]
    got = collect(dec, path, SamplingOptions(every=7))
    assert dec.last_stats.fallback.startswith(reason)
    assert got["index"] == counters(got["y"]) == list(range(0, 40, 7))
    assert got["pts"] == pytest.approx([i / 25 for i in got["index"]])
    got = collect(dec, path, SamplingOptions(every=7, mode="keyframe"))
    assert got["index"] == counters(got["y"]) == [0, 10, 20, 30] and all(got["key"])


# Broken films --------------------------------------------------------------------------

BROKEN = [
    ("empty", r"empty file \(0 bytes\)"),
    ("text_as_mp4", r"not a media file \(it holds text\)"),
    ("no_moov", r"header missing: MP4/MOV file without its 'moov' box"),
    ("head_cut", r"not a recognisable media file, or its header is missing or damaged"),
    ("audio_only", r"no video stream \(the file holds: audio\)"),
]


@pytest.mark.parametrize("name, message", BROKEN)
def test_broken_films_raise_decode_error(films, name, message):
    path = getattr(films, name)
    dec = PyAVDecoder()
    with pytest.raises(DecodeError, match=message) as e:
        dec.probe(path)
    assert str(e.value).startswith(f"{path}: ") and e.value.frames_decoded == 0
    with pytest.raises(DecodeError, match=message) as e:
        list(dec.frames(path, SamplingOptions(), 8))
    assert e.value.path == str(path) and e.value.frames_decoded == 0


def test_missing_file_and_directory(tmp_path):
    dec = PyAVDecoder()
    with pytest.raises(DecodeError, match=r"gone\.mp4: file not found"):
        dec.probe(tmp_path / "gone.mp4")
    with pytest.raises(DecodeError, match="not a regular file"):
        list(dec.frames(tmp_path, SamplingOptions(), 8))


def test_truncated_film_yields_what_exists_then_fails_partial(films):
    path = films.truncated  # 100 frames announced, cut at half the bytes
    dec = PyAVDecoder()
    assert "truncated" in dec.probe(path).extra["warning"]
    it = dec.frames(path, SamplingOptions(every=3), 4)
    yielded = []
    with pytest.raises(DecodeError, match=r"truncated: the file ends after \d+ of the 100 frames") as e:
        for b in it:
            yielded += b.frame_index.tolist()
            assert counters(b.y.numpy()) == b.frame_index.tolist()
    assert 10 < len(yielded) < 34 and e.value.frames_decoded == len(yielded)
    assert yielded == list(range(0, 3 * len(yielded), 3))


def test_corrupt_middle_skips_the_damaged_stretch_and_reports_it(films):
    path = films.corrupt_middle  # 100 frames, keyframes every 20, noise around frames 45-55
    dec = PyAVDecoder()
    yielded = []
    with pytest.raises(DecodeError, match=r"corrupted data: \d+ sampled frame\(s\) between [\d.]+ s and [\d.]+ s "
                                          r"could not be decoded; the decoder rejected \d+ packet") as e:
        for b in dec.frames(path, SamplingOptions(every=1), 16):
            yielded += b.frame_index.tolist()
            # No damaged (error-concealed) picture is passed on: each shows its own number.
            assert counters(b.y.numpy()) == b.frame_index.tolist()
    missing = dec.last_stats.missing
    assert e.value.frames_decoded == len(yielded) > 0
    assert missing and sorted(yielded + missing) == list(range(100))
    assert all(40 <= m < 60 for m in missing)  # only inside the damaged GOP
    assert dec.last_stats.bad_packets > 0


def test_keyframe_mode_without_keyframes(films):
    dec = PyAVDecoder()
    path = films.h264_bframes
    index = dec._index(path)
    index.keyframe[:] = False  # as if the container flagged none (the cached demux pass is used)
    with pytest.raises(DecodeError, match="keyframe sampling: the stream marks no keyframes"):
        list(dec.frames(path, SamplingOptions(every=10, mode="keyframe"), 8))


# Options, batching, early stop ---------------------------------------------------------


def test_batch_size_must_be_positive(films):
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        list(PyAVDecoder().frames(films.h264_bframes, SamplingOptions(), 0))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"thread_type": "MANY"}, "thread_type must be 'AUTO', 'FRAME', 'SLICE' or 'NONE', got 'MANY'"),
        ({"threads": -1}, r"threads must be >= 0 \(0 = automatic\), got -1"),
        ({"seek_min_packets": 0}, "seek_min_packets must be >= 1, got 0"),
        ({"run_workers": -1}, r"run_workers must be >= 0 \(0 = automatic\), got -1"),
    ],
)
def test_pyav_options_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PyAVOptions(**kwargs)


def test_stopping_early_closes_cleanly(films):
    dec = PyAVDecoder()
    it = dec.frames(films.h264_bframes, SamplingOptions(every=1), 2)
    first = next(it)
    it.close()
    assert first.frame_index.tolist() == [0, 1]
    assert len(list(dec.frames(films.h264_bframes, SamplingOptions(every=60), 2))) == 1


# Runs decoded at once ------------------------------------------------------------------


@pytest.fixture(scope="module")
def many_runs(tmp_path_factory) -> Path:
    """250 frames with B-frames and a keyframe every 10: sparse sampling makes many runs."""
    return media.write_film(tmp_path_factory.mktemp("runs") / "many_runs.mp4", width=160,
                            height=96, num_frames=250, gop=10)


def run_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("exe-stream-run-")]


@pytest.mark.parametrize("sampling", [SamplingOptions(every=13), SamplingOptions(every=37),
                                      SamplingOptions(every=23, mode="keyframe")])
def test_run_workers_give_the_output_of_one_decoder(many_runs, sampling):
    one = PyAVDecoder(PyAVOptions(run_workers=1, seek_min_packets=8))
    three = PyAVDecoder(PyAVOptions(run_workers=3, seek_min_packets=8))
    a, b = collect(one, many_runs, sampling, 4), collect(three, many_runs, sampling, 4)
    assert a["index"] == b["index"] and a["pts"] == b["pts"] and a["key"] == b["key"]
    assert counters(b["y"]) == b["index"]
    assert all(np.array_equal(a[k], b[k]) for k in ("y", "u", "v"))
    assert [len(x) for x in a["batches"]] == [len(x) for x in b["batches"]]
    s1, s3 = one.last_stats, three.last_stats
    assert (s1.workers, s3.workers) == (1, 3) and s3.runs >= 7 and s3.seeks > 0
    assert s1.frames_sampled == s3.frames_sampled == len(a["index"]) and not s3.missing
    if sampling.mode == "keyframe":
        assert s3.frames_decoded == s3.packets_fed == len(a["index"])
    assert not run_threads()


def test_dense_sampling_keeps_one_decoder(many_runs, monkeypatch):
    from exe_stream.decode import pyav

    # At most 2 sampled frames of a run may wait: runs with more are not decoded at once.
    monkeypatch.setattr(pyav, "_RUN_BYTES", 2 * 160 * 96 * 3 // 2)
    dec = PyAVDecoder(PyAVOptions(run_workers=3))
    got = collect(dec, many_runs, SamplingOptions(every=1))
    assert counters(got["y"]) == got["index"] == list(range(250))
    assert dec.last_stats.workers == 1 and dec.last_stats.runs == 1
    got = collect(dec, many_runs, SamplingOptions(every=7))
    assert counters(got["y"]) == got["index"] == list(range(0, 250, 7))
    assert dec.last_stats.workers == 3


def test_stopping_early_stops_the_run_workers_and_closes_their_files(many_runs, monkeypatch):
    from exe_stream.decode import index, pyav

    class Tracked:
        """A container that records whether it was closed."""

        def __init__(self, container):
            self._c, self.closed = container, False
            opened.append(self)

        def __getattr__(self, name):
            return getattr(self._c, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.close()

        def close(self):
            self.closed = True
            self._c.close()

    opened: list[Tracked] = []
    real_open = pyav._open
    monkeypatch.setattr(pyav, "_open", lambda path: Tracked(real_open(path)))  # the workers
    monkeypatch.setattr(index, "_open", lambda path: Tracked(real_open(path)))  # the demux pass
    dec = PyAVDecoder(PyAVOptions(run_workers=3))
    it = dec.frames(many_runs, SamplingOptions(every=7), 2)
    first = next(it)
    assert first.frame_index.tolist() == [0, 7] and run_threads()
    it.close()
    assert not run_threads()
    assert len(opened) >= 2 and all(c.closed for c in opened)  # the demux pass, the workers


@pytest.mark.parametrize("workers", [1, 3])
def test_a_failing_run_comes_after_the_runs_before_it(many_runs, monkeypatch, workers):
    from exe_stream.decode import pyav

    real_run = pyav._decode_run

    def failing_run(plan, k, reader, convert):
        for n, item in enumerate(real_run(plan, k, reader, convert)):
            if k == 5:
                raise DecodeError(plan.path, "cannot read the file: gone")
            yield item

    monkeypatch.setattr(pyav, "_decode_run", failing_run)
    dec = PyAVDecoder(PyAVOptions(run_workers=workers))
    yielded = []
    # every=37, keyframes every 10: one sample per run, and no two runs touch.
    with pytest.raises(DecodeError, match="many_runs.mp4: cannot read the file: gone") as e:
        for b in dec.frames(many_runs, SamplingOptions(every=37), 1):
            yielded += b.frame_index.tolist()
    assert yielded == [0, 37, 74, 111, 148] and e.value.frames_decoded == 5
    assert not run_threads()


def test_runs_cover_open_gop_leading_pictures_and_merge_touching_ones():
    # Decode order: I (pts 0), P 1..9, CRA (pts 12) at 10, its leading pictures (pts 10, 11)
    # at 11 and 12, then P 13...
    pts = np.array([*range(10), 12, 10, 11, *range(13, 20)])
    index = SimpleNamespace(pts=pts, keyframe=np.isin(np.arange(20), [0, 10]))
    run = lambda runs: [(r.start, r.end) for r in runs]
    # A leading picture needs the GOP before, even when the CRA is sampled too.
    assert run(pyav_exact_runs(index, [10, 11], merge_touching=False)) == [(0, 11)]
    assert run(pyav_exact_runs(index, [9, 10], merge_touching=True)) == [(0, 10)]
    assert run(pyav_exact_runs(index, [9, 10], merge_touching=False)) == [(0, 9), (10, 10)]
    assert run(pyav_exact_runs(index, [5, 15], merge_touching=False)) == [(0, 5), (10, 15)]


# --------------------------------------------------------------------------- truncation by container

_CONTAINERS = {
    "mkv": dict(name="film.mkv"),
    "webm": dict(name="film.webm", codec="libvpx-vp9", bframes=0),
    "avi": dict(name="film.avi", codec="mpeg4", bframes=0),
    "mp4-index-first": dict(name="film.mp4", faststart=True),
}


def _intact_and_cut(directory: Path, case: str) -> tuple[Path, Path]:
    kw = dict(_CONTAINERS[case])
    path = directory / kw.pop("name")
    media.write_film(path, num_frames=100, gop=20, **kw)
    cut = path.with_name(f"cut-{path.name}")
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    return path, cut


@pytest.mark.parametrize("case", sorted(_CONTAINERS))
def test_truncated_film_of_every_container_is_partial_with_a_reason(tmp_path, case):
    """A film cut at half its bytes scans as ``partial`` whatever its container: the frames
    read are compared with the frame count or the duration its header announces."""
    from exe_stream.pipeline import ScanOptions, scan

    intact, cut = _intact_and_cut(tmp_path, case)
    assert "warning" not in PyAVDecoder().probe(intact).extra
    warning = PyAVDecoder().probe(cut).extra["warning"]
    assert warning.startswith("truncated: the file ends")
    res = scan([intact, cut], tmp_path / "out", ScanOptions(sampling=SamplingOptions(every=10)))
    status = {Path(f.path).name: (f.status, f.reason, f.frames) for f in res.films}
    assert status[intact.name][0] == "done"
    state, reason, frames = status[cut.name]
    assert state == "partial" and cut.name in reason and "truncated: the file ends" in reason
    assert 0 < frames < 10


def test_mp4_with_its_index_last_cut_fails_naming_the_missing_index(tmp_path):
    path = tmp_path / "film.mp4"
    media.write_film(path, num_frames=100, gop=20)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeError, match=r"film\.mp4: header missing: .*'moov' box"):
        PyAVDecoder().probe(path)


def test_matroska_whose_audio_outlasts_its_picture_is_not_called_truncated(tmp_path):
    """The container's duration covers every stream: a picture that ends a second before the
    sound is a whole film, not a cut one."""
    path = tmp_path / "longer_audio.mkv"
    with av.open(str(path), mode="w") as container:
        v = container.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = 128, 96, "yuv420p"
        a = container.add_stream("aac", rate=16000)
        a.layout = "mono"
        for i in range(50):  # 2 s of picture
            frame = av.VideoFrame.from_ndarray(np.full((96, 128, 3), i * 4, np.uint8), format="rgb24")
            frame.pts = i
            container.mux(v.encode(frame.reformat(format="yuv420p")))
        container.mux(v.encode(None))
        for i in range(0, 16000 * 3, 1024):  # 3 s of sound
            chunk = np.zeros((1, 1024), np.float32)
            af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            af.sample_rate, af.pts = 16000, i
            container.mux(a.encode(af))
        container.mux(a.encode(None))
    info = PyAVDecoder().probe(path)
    assert info.num_frames == 50 and "warning" not in info.extra
    cut = tmp_path / "cut.mkv"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert PyAVDecoder().probe(cut).extra["warning"].startswith("truncated: the file ends")
