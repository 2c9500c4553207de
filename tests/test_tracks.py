"""Face tracks (exe_stream.tracks): the linking rules on boxes, and a scan of two real faces
side by side, swapped at each cut."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pytest

from edits import make_two_faces
from exe_stream.pipeline import ScanOptions, scan
from exe_stream.sampling import SamplingOptions
from exe_stream.shards import read_faces, read_frames
from exe_stream.shots import ShotOptions
from exe_stream.tracks import TrackOptions, link_faces, tracking_frames

DATA = __import__("pathlib").Path(__file__).parent / "data"


def _box(cx, cy, side=0.1):
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]


def test_two_faces_moving_apart_keep_their_tracks_and_a_cut_ends_them():
    frames, boxes, shots, who = [], [], [], []
    for f in range(6):
        # Two faces drifting right 0.06 per sample (more than half a box: IoU alone would
        # lose them; the motion prediction keeps them), listed in either order.
        pair = [("a", _box(0.2 + 0.06 * f, 0.5)), ("b", _box(0.6 + 0.06 * f, 0.3))]
        for name, b in pair[:: 1 if f % 2 else -1]:
            frames.append(f)
            boxes.append(b)
            shots.append(0 if f < 4 else 1)
            who.append(name)
    ids = link_faces(np.array(frames), np.array(boxes, np.float32), np.array(shots)).tolist()
    track = {(w, f): i for w, f, i in zip(who, frames, ids)}
    assert {track["b", f] for f in range(4)} == {0} and {track["a", f] for f in range(4)} == {1}
    assert {track["b", f] for f in (4, 5)} == {2} and {track["a", f] for f in (4, 5)} == {3}  # new shot


def test_a_missed_frame_is_bridged_but_a_longer_gap_ends_the_track():
    frames = np.array([0, 1, 3, 6])
    boxes = np.array([_box(0.5, 0.5)] * 4, np.float32)
    shots = np.zeros(4, np.int64)
    # Frame numbers are not sampled frames: what counts is the faces' sequence of frames. A
    # face missing on one sampled frame (max_missed=1) keeps its track.
    frames2 = np.array([0, 1, 2, 4])
    boxes2 = np.array([_box(0.5, 0.5), _box(0.5, 0.5), _box(0.1, 0.1), _box(0.5, 0.5)], np.float32)
    ids = link_faces(frames2, boxes2, np.zeros(4, np.int64), TrackOptions(max_missed=1))
    assert ids.tolist() == [0, 0, 1, 0]
    ids = link_faces(frames2, boxes2, np.zeros(4, np.int64), TrackOptions(max_missed=0))
    assert ids.tolist() == [0, 0, 1, 2]
    assert link_faces(frames, boxes, shots).tolist() == [0, 0, 0, 0]
    assert link_faces(np.zeros(0, np.int64), np.zeros((0, 4), np.float32), np.zeros(0, np.int64)).shape == (0,)


def test_far_or_resized_faces_start_new_tracks():
    frames = np.array([0, 1, 2])
    boxes = np.array([_box(0.2, 0.5), _box(0.8, 0.5), _box(0.8, 0.5, side=0.3)], np.float32)
    assert link_faces(frames, boxes, np.zeros(3, np.int64)).tolist() == [0, 1, 2]


def test_bad_track_options_are_named():
    with pytest.raises(ValueError, match="min_iou must be in"):
        TrackOptions(min_iou=0)
    with pytest.raises(ValueError, match="max_missed must be >= 0"):
        TrackOptions(max_missed=-1)


@pytest.mark.slow
def test_two_real_faces_swapped_at_cuts_get_consistent_tracks(tmp_path, clips):
    film = tmp_path / "two.mp4"
    cuts = make_two_faces(film, clips, DATA / "grace_hopper_512x512.jpg")
    assert cuts == [40, 80]
    res = scan([film], tmp_path / "out", ScanOptions(sampling=SamplingOptions(every=5), device="cpu",
                                                      shots=ShotOptions("content")))
    assert res.ok
    faces = read_faces(tmp_path / "out")
    fi = faces["frame_index"].to_numpy()
    tid = faces["track_id"].to_numpy()
    cx = (faces["x0"].to_numpy() + faces["x1"].to_numpy()) / 2
    assert len(fi) == 48  # both faces on all 24 sampled frames
    shot = np.searchsorted(cuts, fi, side="right")
    seen = []
    for s in range(3):
        ids = set(tid[shot == s].tolist())
        assert len(ids) == 2, (s, ids)  # two faces, two tracks, the whole shot long
        for t in ids:
            side = cx[tid == t] < 0.5
            assert side.all() or not side.any()  # a track stays with one face
        seen.append(ids)
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2])  # tracks end at cuts
    assert sorted(set(tid.tolist())) == list(range(6))
    # Every model's faces carry the same track ids (one detection, one tracking).
    assert pc.min(faces["track_id"]).as_py() == 0


def test_tracking_frames_are_every_mth_frame_of_each_shot_less_the_sampled():
    first, last = np.array([0, 10]), np.array([9, 20])
    assert tracking_frames(first, last, 4, [0, 10, 20]) == [4, 8, 14, 18]
    with pytest.raises(ValueError, match="--track-every must be >= 1 frame, got 0"):
        tracking_frames(first, last, 0, [])
    with pytest.raises(ValueError, match="--track-every links faces within shots and needs --shots"):
        ShotOptions(track_every=4)


@pytest.mark.slow
def test_track_every_keeps_a_fast_face_on_one_track_and_writes_only_sampled_rows(tmp_path, clips):
    """The photo moves 5 px per frame (100 px between samples 20 frames apart: more than its
    face box): sampled frames alone lose it, tracking frames every 4 keep it."""
    film = tmp_path / "fast.mp4"
    make_two_faces(film, clips, DATA / "grace_hopper_512x512.jpg", size=120, drift=5)
    tracks = {}
    for every in (0, 4):
        out = tmp_path / f"out{every}"
        res = scan([film], out, ScanOptions(sampling=SamplingOptions(every=20), device="cpu",
                                            shots=ShotOptions("content", track_every=every)))
        assert res.ok and res.films[0].frames == 6
        assert read_frames(out)["frame_index"].to_pylist() == [0, 20, 40, 60, 80, 100]
        faces = read_faces(out)
        assert set(faces["frame_index"].to_pylist()) <= {0, 20, 40, 60, 80, 100}
        tracks[every] = faces
    sparse, dense = tracks[0], tracks[4]
    # Same faces, same boxes and emotions (to float rounding: the detector's batches differ);
    # only the linking differs.
    assert sparse["frame_index"].equals(dense["frame_index"]) and sparse["face_index"].equals(dense["face_index"])
    for c in sparse.column_names:
        if c.startswith(("prob_", "x", "y", "det_")):
            np.testing.assert_allclose(sparse[c].to_numpy(), dense[c].to_numpy(), atol=1e-4)
    shot = np.searchsorted([40, 80], dense["frame_index"].to_numpy(), side="right")
    for s in range(3):
        assert len(set(dense["track_id"].to_numpy()[shot == s].tolist())) == 2  # two faces, two tracks
    assert len(set(sparse["track_id"].to_pylist())) > len(set(dense["track_id"].to_pylist()))


def test_assign_is_an_optimal_assignment_like_scipys():
    """tracks.assign against scipy.optimize.linear_sum_assignment on random square and
    rectangular matrices, with ties and the tracker's 1e6 'not allowed' entries."""
    from scipy.optimize import linear_sum_assignment

    from exe_stream.tracks import assign

    rng = np.random.default_rng(7)
    for trial in range(600):
        n, m = (int(x) for x in rng.integers(1, 9, 2))
        cost = rng.random((n, m)) if trial % 3 else rng.integers(0, 3, (n, m)).astype(float)
        if trial % 5 == 0:
            cost[cost > 0.6] = 1e6
        rows, cols = assign(cost)
        r2, c2 = linear_sum_assignment(cost)
        assert cost[rows, cols].sum() == pytest.approx(cost[r2, c2].sum(), abs=1e-9)
        assert len(rows) == min(n, m) and len(set(cols.tolist())) == len(cols) and rows.tolist() == sorted(rows.tolist())
    rows, cols = assign(np.array([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]]))
    assert rows.tolist() == [0, 1, 2] and cols.tolist() == [1, 0, 2]  # 1 + 2 + 2
    assert [a.tolist() for a in assign(np.zeros((0, 3)))] == [[], []]
    with pytest.raises(ValueError, match="non-finite"):
        assign(np.array([[np.inf]]))
