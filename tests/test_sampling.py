"""select_frames: every N, interval S (constant and variable frame rate), keyframe mode."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest

from exe_stream.sampling import SamplingOptions, select_frames

TB25 = Fraction(1, 25)


def _interval_reference(pts, tb, seconds):
    """Brute force: for each k the first frame with pts*tb >= pts[0]*tb + k*S, deduplicated."""
    out = []
    k = 0
    t0 = Fraction(pts[0]) * tb
    s = Fraction(repr(seconds))
    while t0 + k * s <= Fraction(pts[-1]) * tb:
        i = next(i for i, p in enumerate(pts) if Fraction(p) * tb >= t0 + k * s)
        if i not in out:
            out.append(i)
        k += 1
    return out


def test_every_n_takes_0_n_2n():
    pts = list(range(10))
    assert select_frames(pts, [False] * 10, TB25, SamplingOptions(every=3)) == [0, 3, 6, 9]
    assert select_frames(pts, [False] * 10, TB25, SamplingOptions(every=1)) == list(range(10))
    assert select_frames(pts, [False] * 10, TB25, SamplingOptions(every=100)) == [0]


def test_empty_film_selects_nothing():
    assert select_frames([], [], TB25, SamplingOptions(every=5)) == []
    assert select_frames([], [], TB25, SamplingOptions(every=None, interval=1.0)) == []


def test_interval_constant_rate():
    # 25 fps for 10 s: one frame per second is every 25th frame.
    pts = list(range(250))
    got = select_frames(pts, [False] * 250, TB25, SamplingOptions(every=None, interval=1.0))
    assert got == list(range(0, 250, 25))


def test_interval_is_measured_from_the_first_pts():
    # Stream starting at 10 s (pts 1000 at 1/100): thresholds are 10.0, 10.5, 11.0 s.
    pts = [1000 + 7 * i for i in range(30)]  # 14.3 fps
    got = select_frames(pts, [False] * 30, Fraction(1, 100), SamplingOptions(every=None, interval=0.5))
    assert got == [0, 8, 15, 22, 29]  # first pts >= 1000, 1050, 1100, 1150, 1200
    assert [pts[i] for i in got] == [1000, 1056, 1105, 1154, 1203]


def test_interval_exact_decimal_thresholds():
    # pts exactly on the threshold are taken (0.1 s is 1/10, not the float just above it).
    pts = list(range(0, 1000, 10))  # 1/1000 time base, one frame per 10 ms
    got = select_frames(pts, [False] * 100, Fraction(1, 1000), SamplingOptions(every=None, interval=0.1))
    assert got == list(range(0, 100, 10))


def test_interval_variable_frame_rate_no_duplicates():
    # Irregular gaps and a 2 s pause: the pause gives one frame, not one per interval.
    pts = [0, 33, 70, 90, 140, 2140, 2160, 2200, 2233, 2290, 2330]  # ms
    opts = SamplingOptions(every=None, interval=0.1)
    got = select_frames(pts, [False] * len(pts), Fraction(1, 1000), opts)
    # thresholds 0 -> 0; 100 -> 140; 200 ... 2100 -> 2140 (once); 2200 -> 2200; 2300 -> 2330
    assert got == [0, 4, 5, 7, 10]
    assert got == _interval_reference(pts, Fraction(1, 1000), 0.1)


def test_interval_matches_brute_force_on_random_vfr():
    rng = random.Random(3)
    for _ in range(50):
        n = rng.randint(1, 80)
        pts = [rng.randint(0, 50)]
        for _ in range(n - 1):
            pts.append(pts[-1] + rng.choice([1, 1, 2, 3, 7, 40]))
        tb = Fraction(1, rng.choice([25, 30, 1000, 90000 // 3000]))
        seconds = rng.choice([0.04, 0.1, 0.25, 1.0, 1 / 3])
        got = select_frames(pts, [False] * n, tb, SamplingOptions(every=None, interval=seconds))
        assert got == _interval_reference(pts, tb, seconds), (pts, tb, seconds)
        assert got == sorted(set(got))


def test_interval_accepts_float_time_base():
    pts = list(range(100))
    got = select_frames(pts, [False] * 100, 0.04, SamplingOptions(every=None, interval=1.0))
    assert got == [0, 25, 50, 75]


def test_keyframe_mode_takes_the_keyframe_at_or_before():
    keys = [i % 10 == 0 for i in range(40)]  # keyframes 0, 10, 20, 30
    pts = list(range(40))
    got = select_frames(pts, keys, TB25, SamplingOptions(every=7, mode="keyframe"))
    # requested 0, 7, 14, 21, 28, 35 -> 0, 0, 10, 20, 20, 30 -> deduplicated
    assert got == [0, 10, 20, 30]
    assert all(keys[i] for i in got)


def test_keyframe_mode_with_interval_and_irregular_gops():
    keys = [i in (0, 3, 17, 18, 40) for i in range(50)]
    pts = [i * 40 for i in range(50)]  # ms, 25 fps
    got = select_frames(pts, keys, Fraction(1, 1000), SamplingOptions(every=None, interval=0.6, mode="keyframe"))
    # requested frames 0, 15, 30, 45 -> keyframes 0, 3, 18, 40
    assert got == [0, 3, 18, 40]


def test_keyframe_mode_before_the_first_keyframe_takes_the_first_keyframe():
    keys = [False, False, True, False, False, False, True, False]
    got = select_frames(list(range(8)), keys, TB25, SamplingOptions(every=5, mode="keyframe"))
    assert got == [2]  # requested 0 -> first keyframe 2; requested 5 -> 2


def test_keyframe_mode_without_keyframes_selects_nothing():
    assert select_frames(list(range(5)), [False] * 5, TB25, SamplingOptions(every=1, mode="keyframe")) == []


def test_select_frames_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="got 3 pts but 2 keyframe flags"):
        select_frames([0, 1, 2], [True, False], TB25, SamplingOptions(every=1))


def test_select_frames_rejects_unordered_pts():
    with pytest.raises(ValueError, match=r"pts must be in presentation order \(non-decreasing\)"):
        select_frames([0, 2, 1], [True, False, False], TB25, SamplingOptions(every=1))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"every": None, "interval": None}, "set exactly one of every"),
        ({"every": 5, "interval": 1.0}, "set exactly one of every"),
        ({"every": 0}, "every must be >= 1, got 0"),
        ({"every": None, "interval": 0.0}, "interval must be > 0 seconds, got 0.0"),
        ({"every": None, "interval": math.nan}, "interval must be > 0 seconds, got nan"),
        ({"mode": "fast"}, "mode must be one of exact, keyframe; got 'fast'"),
    ],
)
def test_sampling_options_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingOptions(**kwargs)


def test_sampling_options_describe():
    assert SamplingOptions(every=10).describe() == "every=10,exact"
    assert SamplingOptions(every=None, interval=0.5, mode="keyframe").describe() == "interval=0.5s,keyframe"
