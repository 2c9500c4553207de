"""live.timeline: a session kept in memory, summarised, and saved as shards stats reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from exe_stream.detect import DetectorOptions
from exe_stream.live.timeline import Timeline
from exe_stream.models import load_model
from exe_stream.shards import Manifest, read_faces, read_frames
from exe_stream.stats import StatsOptions, film_measures
from exe_stream.types import FaceBatch, FrameBatch


@pytest.fixture(scope="module")
def models():
    return [load_model("fer2013-minixception"), load_model("facex")]


def _frame(i: int, t: float) -> FrameBatch:
    z = torch.zeros((1, 16, 16), dtype=torch.uint8)
    c = torch.zeros((1, 8, 8), dtype=torch.uint8)
    return FrameBatch(y=z, u=c, v=c, frame_index=torch.tensor([i]), pts_seconds=torch.tensor([t], dtype=torch.float64),
                      is_keyframe=torch.tensor([True]))


def _faces(n: int) -> FaceBatch:
    return FaceBatch(
        frame_row=torch.zeros(n, dtype=torch.int64), face_index=torch.arange(n, dtype=torch.int16),
        boxes=torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.8, 0.8]])[:n], scores=torch.full((n,), 0.9),
        keypoints=torch.zeros(n, 6, 2))


def _onehot(labels, name: str, n: int = 1, p: float = 0.7) -> torch.Tensor:
    row = torch.full((len(labels),), (1 - p) / (len(labels) - 1))
    row[labels.index(name)] = p
    return row.repeat(n, 1)


def _session(models) -> Timeline:
    """Four frames: happy, happy, neutral (largest face; a second, sad face too), no face."""
    tl = Timeline("live-test", models, DetectorOptions(), source="browser")
    for i, (t, name, n) in enumerate([(0.0, "happy", 1), (0.1, "happy", 1), (0.2, "neutral", 2), (0.3, None, 0)]):
        probs = {}
        for m in models:
            p = _onehot(m.labels, name, n) if n else torch.zeros((0, len(m.labels)))
            if n == 2:
                p[1] = _onehot(m.labels, "sad")[0]
            probs[m.model_id] = p
        tl.add(_frame(i, t), _faces(n), probs)
    return tl


def test_summary_counts_the_largest_face_of_each_frame(models):
    s = _session(models).summary()
    assert (s.frames, s.frames_with_face, s.seconds) == (4, 3, pytest.approx(0.3))
    for m in models:
        shares = {x.label: x for x in s.per_model[m.model_id]}
        assert shares["happy"].top_share == pytest.approx(2 / 3)
        assert shares["neutral"].top_share == pytest.approx(1 / 3)
        assert shares["sad"].top_share == 0  # only the second face was sad
        assert shares["happy"].mean_prob == pytest.approx((0.7 + 0.7 + 0.05) / 3)
        assert s.per_model[m.model_id][0].label == "happy"  # sorted by top share
    assert "happy 67%, neutral 33%" in s.text()
    msg = s.to_message()
    assert msg["type"] == "summary" and json.dumps(msg)


def test_save_writes_shards_that_stats_reads(models, tmp_path):
    tl = _session(models)
    tl.save(tmp_path)
    frames = read_frames(tmp_path).to_pydict()
    assert frames["film_id"] == ["live-test"] * 4
    assert frames["frame_index"] == [0, 1, 2, 3] and frames["n_faces"] == [1, 1, 2, 0]
    faces = read_faces(tmp_path, "facex").to_pydict()
    assert faces["label"] == ["happy", "happy", "neutral", "sad"]
    assert faces["face_index"] == [0, 0, 0, 1]
    entry = Manifest.load(tmp_path).films["live-test"]
    assert entry["status"] == "done" and entry["frames_sampled"] == 4 and entry["info"]["live"]
    fm = film_measures(tmp_path, "fer2013-minixception", StatsOptions(largest_only=True))
    assert fm.film_ids == ("live-test",)
    i = fm.labels.index("happy")
    assert fm.values[0, i] == pytest.approx(2 / 3)


def test_a_saved_session_reads_with_the_documented_pyarrow_line(models, tmp_path):
    import pyarrow.dataset
    import pyarrow.parquet

    _session(models).save(tmp_path)
    out = tmp_path
    faces = pyarrow.dataset.dataset(str(out / "faces"), format="parquet",
                                    schema=pyarrow.parquet.read_schema(str(out / "faces" / "_common_metadata"))).to_table()
    assert set(faces["model_id"].to_pylist()) == {"fer2013-minixception", "facex"}
    assert faces.num_rows == 8 and "prob_happy" in faces.column_names


def test_saving_again_overwrites_with_the_longer_timeline(models, tmp_path):
    tl = _session(models)
    tl.save(tmp_path)
    tl.add(_frame(4, 0.4), _faces(1), {m.model_id: _onehot(m.labels, "angry") for m in models})
    tl.save(tmp_path)
    assert read_frames(tmp_path).num_rows == 5
    m = Manifest.load(tmp_path)
    assert m.films["live-test"]["frames_sampled"] == 5
    assert sum(1 for s in m.scans if s.get("session_id") == "live-test") == 1


def test_two_sessions_in_one_directory(models, tmp_path):
    a, b = _session(models), _session(models)
    b.session_id = "live-test-2"
    a.save(tmp_path)
    b.save(tmp_path)
    fm = film_measures(tmp_path, "facex")
    assert fm.film_ids == ("live-test", "live-test-2")
    assert np.allclose(fm.values[0], fm.values[1])


def test_a_partial_session_says_why(models, tmp_path):
    tl = _session(models)
    tl.error = "camera unplugged"
    tl.save(tmp_path)
    entry = Manifest.load(tmp_path).films["live-test"]
    assert (entry["status"], entry["reason"]) == ("partial", "camera unplugged")
