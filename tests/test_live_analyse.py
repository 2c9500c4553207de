"""live.analyse: one frame at a time gives scan's probabilities; smoothing over time."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from exe_stream.live.analyse import LiveAnalyser, LiveOptions, Smoother
from exe_stream.models import ModelCard, build_network, load_model, save_model
from exe_stream.pipeline import ScanOptions, scan
from exe_stream.sampling import SamplingOptions
from exe_stream.shards import read_faces
from media import clip_frames

CLIP = Path(__file__).parent.parent / "exe_stream" / "assets" / "clips" / "carphone_pristine.mp4"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[str, ...]:
    """The two built-in models and an ensemble of fer2013-minixception with a second network
    that has its own crop (RGB, 64x64, another margin; seeded random weights)."""
    d = tmp_path_factory.mktemp("models") / "xc-rgb"
    fer = load_model("fer2013-minixception")
    card = ModelCard(name="xc-rgb", architecture="mini_xception", labels=fer.labels, input_size=(64, 64),
                     colour="rgb", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_margin=0.3,
                     source="test", license="none")
    torch.manual_seed(0)
    save_model(d, card, build_network(card).state_dict())
    return ("fer2013-minixception", "facex", f"ens:fer2013-minixception+{d}")


@pytest.fixture(scope="module")
def analyser(models) -> LiveAnalyser:
    return LiveAnalyser(LiveOptions(models=models, smooth=0.0, device="cpu"))


def test_one_frame_gives_what_scan_gives(analyser, models, tmp_path):
    """Same detector, crop rule and models as scan: frames 0, 40 and 80 of the clip, one at a
    time, have scan's boxes and probabilities (scan batches them with the rest)."""
    scan([CLIP], tmp_path, ScanOptions(sampling=SamplingOptions(every=40), models=models, device="cpu"))
    frames = clip_frames(CLIP, [0, 40, 80])
    for row in range(3):
        one = frames.__class__(
            y=frames.y[row:row + 1], u=frames.u[row:row + 1], v=frames.v[row:row + 1],
            frame_index=frames.frame_index[row:row + 1] * 0 + 40 * row,
            pts_seconds=frames.pts_seconds[row:row + 1], is_keyframe=frames.is_keyframe[row:row + 1])
        result, faces, probs = analyser.analyse(one)
        assert len(result.faces) == 1  # a single talking face in every frame
        for m in models:
            t = read_faces(tmp_path, m).to_pydict()
            i = t["frame_index"].index(40 * row)
            ref_box = [t[k][i] for k in ("x0", "y0", "x1", "y1")]
            ref_probs = [t[c][i] for c in t if c.startswith("prob_")]
            assert np.allclose(result.faces[0].box, ref_box, atol=1e-5)
            # To float rounding: a batch of one face sums the convolutions in another order
            # than scan's batch of three (measured up to ~3e-5).
            assert np.allclose(result.faces[0].probs[m], ref_probs, atol=1e-4)
            assert np.allclose(probs[m][0].numpy(), result.faces[0].probs[m])


def test_result_message_has_top_two_in_order(analyser):
    result, _, _ = analyser.analyse(clip_frames(CLIP, [10]))
    msg = result.to_message(analyser.models)
    face = msg["faces"][0]
    for m in analyser.models:
        top = face["models"][m.model_id]["top"]
        smooth = face["models"][m.model_id]["smooth"]
        assert len(top) == 2 and top[0][1] >= top[1][1]
        assert top[0] == [m.labels[int(np.argmax(smooth))], max(smooth)]
        assert math.isclose(sum(face["models"][m.model_id]["probs"]), 1.0, abs_tol=1e-5)


def test_analyse_takes_one_frame():
    a = LiveAnalyser(LiveOptions(device="cpu"))
    with pytest.raises(ValueError, match="one frame at a time, got a batch of 2"):
        a.analyse(clip_frames(CLIP, [0, 1]))


def test_smoother_is_an_exponential_window_per_face():
    s = Smoother(tau=0.5)
    box = np.array([[0.1, 0.1, 0.4, 0.4]], np.float32)
    p0, p1 = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    assert np.allclose(s(0.0, box, [{"m": p0}])[0]["m"], p0)  # a new face starts from itself
    out = s(0.1, box + 0.01, [{"m": p1}])[0]["m"]  # the same face, 0.1 s later
    alpha = 1 - math.exp(-0.1 / 0.5)
    assert np.allclose(out, p0 + alpha * (p1 - p0))
    # A face elsewhere (no overlap) is a new face: not smoothed with the first.
    far = np.array([[0.6, 0.6, 0.9, 0.9]], np.float32)
    assert np.allclose(s(0.2, far, [{"m": p0}])[0]["m"], p0)


def test_smoother_with_tau_zero_shows_each_frame():
    s = Smoother(tau=0.0)
    box = np.array([[0.1, 0.1, 0.4, 0.4]], np.float32)
    s(0.0, box, [{"m": np.array([1.0, 0.0], np.float32)}])
    assert np.allclose(s(0.1, box, [{"m": np.array([0.2, 0.8], np.float32)}])[0]["m"], [0.2, 0.8])


@pytest.mark.parametrize("kwargs,match", [
    ({"models": ()}, "models must name at least one model"),
    ({"smooth": -1.0}, r"smooth must be in \[0, 3600\] seconds, got -1.0"),
    ({"device": "tpu"}, "device must be one of auto, cpu, cuda; got 'tpu'"),
    ({"threads": -2}, "threads must be >= 0, got -2"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LiveOptions(**kwargs)


def test_warm_up_runs_every_model(analyser, monkeypatch):
    calls = []
    for m in analyser.models:
        monkeypatch.setattr(m, "predict", lambda crops, _id=m.model_id: calls.append((_id, [c.shape for c in crops])))
    analyser.warm_up(48, 64)  # a face-less frame through the detector, blank crops through each model
    assert [c[0] for c in calls] == [m.model_id for m in analyser.models]
    assert calls[2][1] == [(1, 1, 64, 64), (1, 3, 64, 64)]  # the ensemble: each member's own crop
