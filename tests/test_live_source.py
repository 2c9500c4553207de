"""live.source: a headless session from a video file (real time, and every frame)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from exe_stream.errors import DecodeError
from exe_stream.live.analyse import LiveAnalyser, LiveOptions
from exe_stream.live.source import Latest, SourceOptions, is_camera, run_source
from exe_stream.pipeline import ScanOptions, scan
from exe_stream.sampling import SamplingOptions
from exe_stream.shards import read_faces, read_frames

CLIP = Path(__file__).parent.parent / "exe_stream" / "assets" / "clips" / "carphone_pristine.mp4"


@pytest.fixture(scope="module")
def analyser() -> LiveAnalyser:
    return LiveAnalyser(LiveOptions(smooth=0.0, device="cpu"))


def _probs(out: Path, model: str) -> dict[int, np.ndarray]:
    t = read_faces(out, model).to_pydict()
    cols = [c for c in t if c.startswith("prob_")]
    return {fi: np.array([t[c][i] for c in cols]) for i, fi in enumerate(t["frame_index"]) if t["face_index"][i] == 0}


def test_every_frame_of_a_file_matches_scan(analyser, tmp_path):
    tl = run_source(CLIP, analyser, SourceOptions(realtime=False, max_seconds=1.0))
    assert tl.frames == 30 and tl.dropped == 0  # 0 .. 1.0 s at 29.97 fps
    tl.save(tmp_path / "live")
    scan([CLIP], tmp_path / "scan", ScanOptions(sampling=SamplingOptions(every=3), device="cpu"))
    live, ref = _probs(tmp_path / "live", "fer2013-minixception"), _probs(tmp_path / "scan", "fer2013-minixception")
    assert sorted(live) == list(range(30))
    for fi in range(0, 30, 3):  # the frames both sampled
        assert np.allclose(live[fi], ref[fi], atol=1e-4), fi
    frames = read_frames(tmp_path / "live").to_pydict()
    assert frames["film_id"] == [tl.session_id] * 30
    assert np.allclose(frames["pts_seconds"][::3], read_frames(tmp_path / "scan").to_pydict()["pts_seconds"][:10])


def test_real_time_skips_frames_it_cannot_keep_up_with(analyser, monkeypatch):
    """Analysis slowed to 0.1 s a frame on a 30 fps clip: about every third frame is analysed,
    always the newest one, and the session takes (at least) the clip's own duration."""
    real = analyser.analyse

    def slow(frames):
        time.sleep(0.1)
        return real(frames)

    monkeypatch.setattr(analyser, "analyse", slow)
    start = time.perf_counter()
    tl = run_source(CLIP, analyser, SourceOptions(max_seconds=2.0))
    took = time.perf_counter() - start
    assert took > 1.9  # paced by the clip's timestamps, not as fast as possible
    idx = np.concatenate(tl._rows.frames["frame_index"])
    # At most one frame per 0.1 s (fewer on a busy machine); every frame is analysed or dropped.
    assert 2 <= tl.frames <= 21 and tl.frames + tl.dropped == 60
    # In order, skipping frames; only the last step may be 1 (the source ended while the
    # analysis was busy, and its last frame waited alone).
    assert np.all(np.diff(idx) >= 1) and np.all(np.diff(idx)[:-1] >= 2)


def test_stop_ends_a_session(analyser):
    stop = threading.Event()
    seen = []

    def on_result(r):
        seen.append(r.frame_index)
        if len(seen) == 3:
            stop.set()

    tl = run_source(CLIP, analyser, SourceOptions(realtime=False), on_result=on_result, stop=stop)
    assert tl.frames == 3 and seen == [0, 1, 2]


def test_missing_file_is_named(analyser, tmp_path):
    with pytest.raises(DecodeError, match=f"{tmp_path / 'nope.mp4'}: no such video file"):
        run_source(tmp_path / "nope.mp4", analyser)


def test_camera_must_be_real_time(analyser):
    assert is_camera("/dev/video0") and not is_camera("clip.mp4")
    with pytest.raises(ValueError, match="a camera is always read in real time"):
        run_source("/dev/video0", analyser, SourceOptions(realtime=False))


def test_latest_mailbox_counts_what_it_replaces():
    box = Latest()
    box.put(1)
    box.put(2)
    assert box.get() == 2 and box.dropped == 1
    box.close()
    assert box.get() is None
