"""Shot-aware sampling (exe_stream.shots.sampling): K frames per shot away from cuts, samples
moved off cuts, exact timestamps in a scan."""

from __future__ import annotations

import numpy as np
import pytest

from exe_stream.pipeline import ScanOptions, scan
from exe_stream.sampling import PickedFrames, SamplingOptions, select_frames
from exe_stream.shards import frames_path, read_table
from exe_stream.shots import ShotOptions, shots_from_scores
from exe_stream.shots.sampling import near_cut, off_cuts, per_shot_frames


def _shots(n=100, cuts=(30, 60), dissolve=(80, 86)):
    """Shots of an n-frame film at 25 fps: hard cuts (first frame of the new shot) and one
    dissolve whose frames are all above the threshold."""
    s = np.zeros(n, np.float32)
    for k in cuts:
        s[k - 1] = 0.99
    a, b = dissolve
    s[a:b + 1] = 0.6
    s[(a + b) // 2] = 0.9
    return shots_from_scores(s, s > 0.5, np.arange(n) / 25.0, "transnet", 0.5)


def test_near_cut_marks_guard_frames_and_transitions():
    shots = _shots()
    assert shots.first.tolist() == [0, 30, 60, 84]
    bad = near_cut(shots, guard=2)
    assert np.flatnonzero(bad[:70]).tolist() == [28, 29, 30, 31, 58, 59, 60, 61]
    assert bad[80:87].all() and not bad[0] and not bad[99]


def test_per_shot_frames_are_spread_inside_each_shot_away_from_cuts():
    shots = _shots()
    bad = near_cut(shots, 2)
    picked = per_shot_frames(shots, 3, guard=2)
    assert len(picked) == 12
    assert not bad[picked].any()
    per = np.bincount(shots.shot_of(np.array(picked)), minlength=len(shots))
    assert per.tolist() == [3, 3, 3, 3]
    assert per_shot_frames(shots, 1, guard=2) == [14, 45, 71, 93]  # the middle of each usable stretch
    # A shot shorter than K usable frames gives what it has, nearest its middle first.
    short = shots_from_scores(np.eye(1, 12, 5, dtype=np.float32)[0], np.eye(1, 12, 5)[0] > 0.5,
                              np.arange(12) / 25.0, "content", 27)
    assert per_shot_frames(short, 4, guard=2) == [0, 1, 2, 3, 8, 9, 10, 11]
    with pytest.raises(ValueError, match="per-shot samples must be >= 1, got 0"):
        per_shot_frames(shots, 0)


def test_off_cuts_moves_samples_to_the_nearest_safe_frame():
    shots = _shots()
    assert off_cuts([0, 10, 30, 60, 83, 99], shots, guard=2) == [0, 10, 32, 62, 87, 99]
    assert off_cuts([28], shots, guard=2) == [27]  # nearer before the cut than after
    assert off_cuts([29, 30], shots, guard=2) == [27, 32]


def test_picked_frames_sampling_and_its_errors():
    opts = PickedFrames(indices=(5, 2, 2, 99))
    assert select_frames(list(range(10)), [True] * 10, 1, opts) == [2, 5]
    with pytest.raises(ValueError, match="decoded exactly"):
        PickedFrames(indices=(1,), mode="keyframe")
    with pytest.raises(ValueError, match="needs a shot detector: --shots one of transnet, content"):
        ShotOptions(per_shot=3)
    with pytest.raises(ValueError, match="--skip-cuts applies to --every"):
        ShotOptions("content", per_shot=2, skip_cuts=True)
    with pytest.raises(ValueError, match="need exact sampling, not --sampling keyframe"):
        ScanOptions(sampling=SamplingOptions(mode="keyframe"), shots=ShotOptions("content", skip_cuts=True))


@pytest.mark.slow
def test_scan_by_shots_and_skip_cuts_on_a_real_clip(tmp_path, clips):
    """bikes.mp4 has cuts at 30, 76, 137, 187, 242 (25 fps)."""
    clip = clips / "bikes.mp4"
    opts = ScanOptions(sampling=SamplingOptions(every=10), device="cpu", batch_size=8,
                       shots=ShotOptions("content", per_shot=2))
    res = scan([clip], tmp_path / "a", opts)
    assert res.ok and res.films[0].frames == 12
    frames = read_table(frames_path(tmp_path / "a", "bikes"))
    fi = np.array(frames.column("frame_index").to_pylist())
    assert np.bincount(frames.column("shot_index").to_numpy()).tolist() == [2] * 6
    cuts = np.array([30, 76, 137, 187, 242])
    assert np.abs(fi[:, None] - cuts[None, :]).min() >= 3
    np.testing.assert_allclose(frames.column("pts_seconds").to_numpy(), fi / 25.0, atol=1e-9)
    # --every 38 --skip-cuts: 76 is a cut, so that sample moves to 78 (76 - 2 = 74 is the
    # guard's first frame, 78 the first frame after it); the others stay.
    opts = ScanOptions(sampling=SamplingOptions(every=38), device="cpu", batch_size=8,
                       shots=ShotOptions("content", skip_cuts=True))
    res = scan([clip], tmp_path / "b", opts)
    fi = read_table(frames_path(tmp_path / "b", "bikes")).column("frame_index").to_pylist()
    assert fi == [0, 38, 78, 114, 152, 190, 228]


def test_cli_sampling_shots(tmp_path, clips):
    from typer.testing import CliRunner

    from exe_stream.cli import app

    runner = CliRunner()
    clip = str(clips / "bikes.mp4")
    for args, message in [
        (["--sampling", "shots"], "needs a shot detector: --shots one of transnet, content"),
        (["--sampling", "shots", "--shots", "content", "--per-shot", "0"], "--per-shot must be >= 1, got 0"),
        (["--sampling", "shots", "--shots", "content", "--every", "5"], "not --every/--interval"),
    ]:
        r = runner.invoke(app, ["scan", clip, "-o", str(tmp_path / "bad"), *args])
        assert r.exit_code == 2 and message in " ".join(r.output.split()), r.output
    r = runner.invoke(app, ["scan", clip, "-o", str(tmp_path / "out"), "--sampling", "shots", "--per-shot", "1",
                            "--shots", "content", "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    fi = read_table(frames_path(tmp_path / "out", "bikes")).column("frame_index").to_pylist()
    assert len(fi) == 6 and all(a < f < b for f, a, b in zip(fi, [0, 30, 76, 137, 187, 242], [30, 76, 137, 187, 242, 250]))
