"""End-to-end scans on real clips and generated films: invariants, resume, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch

from exe_stream.models.card import ModelCard, save_model
from exe_stream.models import build_network
from exe_stream.pipeline import ScanOptions, scan
from exe_stream.sampling import SamplingOptions
from exe_stream.shards import faces_path, frames_path, read_table

FER = "fer2013-minixception"


def _opts(**kw) -> ScanOptions:
    kw.setdefault("sampling", SamplingOptions(every=10))
    kw.setdefault("device", "cpu")
    return ScanOptions(**kw)


@pytest.fixture(scope="module")
def resnet_card(tmp_path_factory) -> Path:
    """A ResNet18 card with its own 3-label set (random but seeded weights)."""
    d = tmp_path_factory.mktemp("models") / "tiny-resnet"
    torch.manual_seed(0)
    card = ModelCard(name="tiny-resnet", architecture="resnet18", labels=("calm", "joy", "anger"),
                     input_size=(64, 64), colour="rgb", mean=(0.485, 0.456, 0.406),
                     std=(0.229, 0.224, 0.225), crop_margin=0.2, source="test", license="test")
    save_model(d, card, build_network(card).state_dict())
    return d


@pytest.fixture(scope="module")
def carphone_scan(tmp_path_factory, clips, resnet_card):
    out = tmp_path_factory.mktemp("scan")
    res = scan([clips / "carphone_pristine.mp4"], out, _opts(models=(FER, str(resnet_card))))
    return out, res


def test_talking_face_clip_every_sampled_frame_has_a_row_and_nearly_all_a_face(carphone_scan):
    out, res = carphone_scan
    (film,) = res.films
    assert film.status == "done" and res.ok
    frames = read_table(frames_path(out, film.film_id))
    # 120 frames, every 10th -> frames 0, 10, ..., 110
    assert frames.column("frame_index").to_pylist() == list(range(0, 120, 10))
    pts = np.asarray(frames.column("pts_seconds"))
    np.testing.assert_allclose(pts, np.arange(0, 120, 10) / 29.97, atol=2e-3)
    n_faces = np.asarray(frames.column("n_faces"))
    assert (n_faces >= 1).sum() >= 11, n_faces
    assert frames.schema.metadata[b"exe_stream.schema"] == b"2"


def test_every_model_classifies_the_same_faces_and_probabilities_sum_to_one(carphone_scan, resnet_card):
    out, res = carphone_scan
    fid = res.films[0].film_id
    fer = read_table(faces_path(out, fid, FER))
    rn = read_table(faces_path(out, fid, resnet_card.name))
    frames = read_table(frames_path(out, fid))
    assert fer.num_rows == rn.num_rows == int(np.asarray(frames.column("n_faces")).sum()) > 0
    for col in ("frame_index", "face_index", "x0", "y0", "x1", "y1", "det_score"):
        assert fer.column(col).equals(rn.column(col)), col  # one detection pass for both
    for table, labels in ((fer, ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]),
                          (rn, ["calm", "joy", "anger"])):
        probs = np.stack([np.asarray(table.column(f"prob_{lbl}")) for lbl in labels], 1)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        assert table.column("label").to_pylist() == [labels[i] for i in probs.argmax(1)]
        np.testing.assert_allclose(np.asarray(table.column("confidence")), probs.max(1), atol=1e-7)
    x0, x1 = np.asarray(fer.column("x0")), np.asarray(fer.column("x1"))
    assert ((x1 - x0) > 0.1).all()  # the carphone face fills a good part of the frame
    meta = fer.schema.metadata
    assert meta[b"exe_stream.model_id"] == FER.encode() and len(meta[b"exe_stream.model_hash"]) >= 16
    assert json.loads(meta[b"exe_stream.sampling"])["every"] == 10


def test_scan_reads_back_as_a_parquet_dataset(carphone_scan):
    out, _ = carphone_scan
    faces = ds.dataset(out / "faces", format="parquet").to_table()
    assert set(faces.column("model_id").to_pylist()) == {FER, faces.column("model_id")[-1].as_py()}
    manifest = json.loads((out / "manifest.json").read_text())
    (entry,) = manifest["films"].values()
    assert entry["status"] == "done" and entry["frames_sampled"] == 12 and entry["fingerprint"]
    assert set(entry["timings"]) >= {"detect_s", "classify_s", "total_s"}


def test_cartoon_without_humans_gives_no_faces(tmp_path, clips):
    res = scan([clips / "bigbuckbunny.mp4"], tmp_path, _opts())
    frames = read_table(frames_path(tmp_path, res.films[0].film_id))
    assert frames.num_rows == 14  # 132 frames, every 10th
    assert int(np.asarray(frames.column("n_faces")).sum()) == 0


def test_resume_skips_identical_and_redoes_changed(tmp_path, clips):
    films = tmp_path / "films"
    films.mkdir()
    shutil.copy(clips / "carphone_pristine.mp4", films / "a.mp4")
    out = tmp_path / "out"
    first = scan([films], out, _opts(sampling=SamplingOptions(every=40)))
    assert [f.status for f in first.films] == ["done"]
    again = scan([films], out, _opts(sampling=SamplingOptions(every=40)))
    assert [f.status for f in again.films] == ["skipped"]
    other = scan([films], out, _opts(sampling=SamplingOptions(every=30)))
    assert [f.status for f in other.films] == ["done"]
    assert read_table(frames_path(out, "a")).column("frame_index").to_pylist() == [0, 30, 60, 90]
    shutil.copy(clips / "bikes.mp4", films / "a.mp4")  # same name, new content
    changed = scan([films], out, _opts(sampling=SamplingOptions(every=30)))
    assert [f.status for f in changed.films] == ["done"]
    nores = scan([films], out, _opts(sampling=SamplingOptions(every=30), resume=False))
    assert [f.status for f in nores.films] == ["done"]


def test_broken_films_fail_with_reasons_and_the_rest_is_scanned(tmp_path, films, clips):
    d = tmp_path / "library"
    d.mkdir()
    shutil.copy(clips / "carphone_pristine.mp4", d / "good.mp4")
    broken = {
        "empty": films.empty, "text": films.text_as_mp4, "truncated": films.truncated,
        "corrupt": films.corrupt_middle, "audio": films.audio_only, "nomoov": films.no_moov,
        "headcut": films.head_cut,
    }
    for name, src in broken.items():
        shutil.copy(src, d / f"{name}{src.suffix}")
    out = tmp_path / "out"
    res = scan([d], out, _opts())
    by_id = {f.film_id: f for f in res.films}
    assert not res.ok
    assert by_id["good"].status == "done" and by_id["good"].frames == 12
    for name in broken:
        f = by_id[name]
        assert f.status in ("failed", "partial"), (name, f.status)
        assert name in f.reason and f.reason, (name, f.reason)  # the reason names the file
        if f.status == "partial":
            assert f.frames > 0 and frames_path(out, name).exists()
        else:
            assert not frames_path(out, name).exists()
    for name in ("empty", "text", "audio", "nomoov"):
        assert by_id[name].status == "failed", name
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    manifest = json.loads((out / "manifest.json").read_text())
    assert {k: v["status"] for k, v in manifest["films"].items()} == {k: v.status for k, v in by_id.items()}


@pytest.mark.parametrize("name", ["odd_dims", "yuv444", "hevc10", "vfr", "rotated"])
def test_unusual_valid_films_scan(tmp_path, films, name):
    res = scan([getattr(films, name)], tmp_path, _opts(sampling=SamplingOptions(every=5)))
    (f,) = res.films
    assert f.status == "done", f.reason
    frames = read_table(frames_path(tmp_path, f.film_id))
    assert frames.num_rows == f.frames > 0
    assert np.all(np.diff(np.asarray(frames.column("pts_seconds"))) > 0)


def test_keyframe_sampling_records_real_keyframes(tmp_path, films):
    res = scan([films.h264_bframes], tmp_path, _opts(sampling=SamplingOptions(every=10, mode="keyframe")))
    frames = read_table(frames_path(tmp_path, res.films[0].film_id))
    assert all(frames.column("is_keyframe").to_pylist())
    assert frames.num_rows >= 1


def test_unknown_model_and_engine_fail_before_any_work(tmp_path, clips):
    with pytest.raises(Exception, match="nope"):
        scan([clips / "carphone_pristine.mp4"], tmp_path / "o", _opts(models=("nope",)))
    with pytest.raises(Exception, match="engine 'tensorrt'"):  # not installed, or no CUDA
        scan([clips / "carphone_pristine.mp4"], tmp_path / "o", _opts(engine="tensorrt"))
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_every_option_that_is_not_runtime_is_in_the_resume_key():
    """The key is built from ScanOptions' fields: a new field is in it unless declared _runtime."""
    from dataclasses import dataclass

    from exe_stream.detect import DetectorOptions
    from exe_stream.models import load_model
    from exe_stream.pipeline import _options_key

    models = [load_model(FER, torch.device("cpu"))]
    base = _options_key(_opts(), models, "pyav")
    # What changes the output changes the key ...
    assert _options_key(_opts(sampling=SamplingOptions(every=11)), models, "pyav") != base
    assert _options_key(_opts(detector=DetectorOptions(max_faces=1)), models, "pyav") != base
    assert _options_key(_opts(embeddings=True), models, "pyav") != base
    assert _options_key(_opts(), models, "dali") != base
    assert _options_key(_opts(), models, "pyav", {"engine": "onnxruntime"}) != base
    # ... how the scan runs does not.
    assert _options_key(_opts(batch_size=3, resume=False, films_at_once=2, device="cuda"), models, "pyav") == base

    @dataclass(frozen=True)
    class Extended(ScanOptions):
        new_option: int = 0  # a field nobody remembered to add to the key

    assert _options_key(Extended(new_option=1, sampling=SamplingOptions(every=10)), models, "pyav") != \
        _options_key(Extended(new_option=0, sampling=SamplingOptions(every=10)), models, "pyav")


def test_a_scan_does_not_write_into_a_schema_1_output(tmp_path, clips):
    """An output an older exe-stream wrote (schema 1) is read, never mixed with schema 2 files."""
    out = tmp_path / "old"
    (out / "frames" / "film_id=a").mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps({"schema": "1", "films": {"a": {"status": "done"}}}))
    with pytest.raises(ValueError, match=r"holds a schema 1 scan \(an older exe-stream\); scan into a new directory"):
        scan([clips / "carphone_pristine.mp4"], out, _opts())
    assert sorted(p.name for p in out.rglob("*")) == ["film_id=a", "frames", "manifest.json"]
