"""Identity embeddings (exe_stream.identity): the torch port of dlib's face recognition ResNet
against dlib itself on real faces (dlib-bin and its HOG detector and 5-point landmark model
are test dependencies only)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from conftest import NEEDS_CUDA

from exe_stream.identity import SAME_PERSON_DISTANCE, characters, embed_chips, embed_faces, read_dlib_net, weights_file
DATA = Path(__file__).parent / "data"


def _rgb(path: Path, index: int = 0) -> np.ndarray:
    with av.open(str(path)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i == index:
                return np.ascontiguousarray(frame.to_ndarray(format="rgb24"))
    raise ValueError(path)


@pytest.fixture(scope="module")
def dlib_models():
    dlib = pytest.importorskip("dlib")  # dlib-bin, in the test extra (not on the GPU device image)
    models = weights_file().parent
    return (dlib.get_frontal_face_detector(), dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat")),
            dlib.face_recognition_model_v1(str(weights_file())))


def _chips(images, dlib_models):
    import dlib

    det, sp, _ = dlib_models
    chips = []
    for img in images:
        for d in det(img, 1):
            chips.append(dlib.get_face_chip(img, sp(img, d), size=150, padding=0.25))
    return np.stack(chips)


def test_port_matches_dlib_on_real_faces(dlib_models, clips):
    """Photos of three people and three frames of the carphone clip (one person): embeddings
    and every pairwise distance as dlib computes them."""
    images = [_rgb(DATA / n) for n in ("grace_hopper_512x512.jpg", "astronaut.png", "Tom_Hanks_54745.png")]
    images += [_rgb(clips / "carphone_pristine.mp4", i) for i in (0, 50, 100)]
    chips = _chips(images, dlib_models)
    assert len(chips) >= 6
    ref = np.stack([np.array(dlib_models[2].compute_face_descriptor(c)) for c in chips])
    ours = embed_chips(chips)
    assert ours.shape == ref.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    dist = lambda e: np.linalg.norm(e[:, None] - e[None], axis=2)  # noqa: E731
    assert np.abs(dist(ours) - dist(ref)).max() < 1e-3
    # The carphone frames are one person (below dlib's 0.6), the photos are others.
    d = dist(ours)
    clip_rows = np.arange(len(chips) - 3, len(chips))
    assert d[np.ix_(clip_rows, clip_rows)].max() < SAME_PERSON_DISTANCE
    assert d[np.ix_(clip_rows, np.arange(len(chips) - 3))].min() > SAME_PERSON_DISTANCE


def test_the_file_is_read_as_the_expected_network():
    layers = read_dlib_net(weights_file())
    assert layers[0].floats == pytest.approx((122.782, 117.001, 104.298), abs=1e-3)
    assert layers[1].ints == (32, 7, 7, 2, 2, 0, 0)
    assert [x.kind for x in layers].count("add_prev") == 14


def test_bad_files_and_chips_are_named(tmp_path):
    bad = tmp_path / "model.dat"
    bad.write_bytes(b"\x01\x05con_4" + b"\x00" * 8)
    with pytest.raises(ValueError, match="model.dat"):
        read_dlib_net(bad)
    with pytest.raises(ValueError, match=r"uint8 \[B, 150, 150, 3\]"):
        embed_chips(np.zeros((1, 64, 64, 3), np.uint8))


def test_characters_cluster_track_means_at_the_threshold():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=128), rng.normal(size=128)
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)  # two people, ~1.4 apart
    emb = np.stack([a, a + 0.01, b, b, a - 0.01, b + 0.02]).astype(np.float32)
    tracks = np.array([0, 0, 1, 2, 3, 4])
    assert characters(tracks, emb).tolist() == [0, 0, 1, 1, 0, 1]
    assert characters(tracks, emb, threshold=0.01).tolist() == [0, 0, 1, 1, 2, 3]  # only identical tracks merge
    assert characters(np.array([7, 7]), emb[:2]).tolist() == [0, 0]
    assert characters(np.zeros(0, np.int64), np.zeros((0, 128), np.float32)).shape == (0,)


def test_chips_aligned_from_blazeface_keypoints_embed_like_dlibs_chips(dlib_models, clips):
    """Our alignment (BlazeFace keypoints -> dlib's chip layout) against dlib's own chip of the
    same face: the same person by dlib's threshold, and closer to each other than to others."""
    import torch

    from exe_stream.decode.planes import rgb_to_i420
    from exe_stream.detect import DetectorOptions, detect_faces
    from exe_stream.types import FrameBatch

    images = [_rgb(clips / "carphone_pristine.mp4", i) for i in (10, 60)] + [_rgb(DATA / "grace_hopper_512x512.jpg")]
    ours, theirs = [], []
    for img in images:
        y, u, v = rgb_to_i420(torch.from_numpy(img[None]), full_range=True, matrix="bt601")
        fb = FrameBatch(y=y, u=u, v=v, frame_index=torch.zeros(1, dtype=torch.int64),
                        pts_seconds=torch.zeros(1, dtype=torch.float64), is_keyframe=torch.zeros(1, dtype=torch.bool),
                        matrix="bt601", full_range=True)
        faces = detect_faces(fb, DetectorOptions())
        assert len(faces) >= 1
        first = faces.face_index == 0
        from exe_stream.types import FaceBatch

        one = FaceBatch(faces.frame_row[first], faces.face_index[first], faces.boxes[first], faces.scores[first],
                        faces.keypoints[first])
        ours.append(embed_faces(fb, one)[0])
        theirs.append(embed_chips(_chips([img], dlib_models)[:1])[0])
    ours, theirs = np.stack(ours), np.stack(theirs)
    same = np.linalg.norm(ours - theirs, axis=1)
    print("ours vs dlib's chip of the same face:", np.round(same, 3))
    assert (same < SAME_PERSON_DISTANCE).all()
    assert np.linalg.norm(ours[0] - ours[1]) < SAME_PERSON_DISTANCE  # carphone, two frames
    assert np.linalg.norm(ours[:2] - ours[2], axis=1).min() > SAME_PERSON_DISTANCE  # vs Grace Hopper


@pytest.mark.slow
def test_scan_gives_one_character_per_person_across_shots(tmp_path, clips):
    """Two real people side by side, swapped at each of two cuts: six tracks, two characters,
    each character always the same face (the carphone clip's face moves left, right, left)."""
    from edits import make_two_faces

    from exe_stream.pipeline import ScanOptions, scan
    from exe_stream.sampling import SamplingOptions
    from exe_stream.shards import read_faces
    from exe_stream.shots import ShotOptions

    film = tmp_path / "two.mp4"
    cuts = make_two_faces(film, clips, DATA / "grace_hopper_512x512.jpg")
    res = scan([film], tmp_path / "out", ScanOptions(sampling=SamplingOptions(every=10), device="cpu",
                                                      shots=ShotOptions("content"), characters=True))
    assert res.ok
    faces = read_faces(tmp_path / "out")
    fi = faces["frame_index"].to_numpy()
    cx = (faces["x0"].to_numpy() + faces["x1"].to_numpy()) / 2
    shot = np.searchsorted(cuts, fi, side="right")
    clip_side_left = shot % 2 == 0  # where the carphone face is in each shot
    is_clip_face = (cx < 0.5) == clip_side_left
    char = faces["character_id"].to_numpy()
    assert len(set(faces["track_id"].to_pylist())) == 6
    assert set(char[is_clip_face].tolist()) == {0} and set(char[~is_clip_face].tolist()) == {1}


@pytest.mark.slow
def test_cast_names_the_characters_it_has_photos_of(tmp_path, clips):
    """A cast of Grace Hopper (her photo) and Tom Hanks: the photo's character gets her name,
    the carphone man (no photo) none."""
    from edits import make_two_faces

    from exe_stream.pipeline import ScanOptions, scan
    from exe_stream.sampling import SamplingOptions
    from exe_stream.shards import read_faces
    from exe_stream.shots import ShotOptions

    film = tmp_path / "two.mp4"
    make_two_faces(film, clips, DATA / "grace_hopper_512x512.jpg", shots=2)
    cast = tmp_path / "cast.csv"
    cast.write_text(f"name,photo\nGrace Hopper,{DATA / 'grace_hopper_512x512.jpg'}\nTom Hanks,{DATA / 'Tom_Hanks_54745.png'}\n")
    res = scan([film], tmp_path / "out", ScanOptions(sampling=SamplingOptions(every=10), device="cpu",
                                                      shots=ShotOptions("content"), characters=True, cast=str(cast)))
    assert res.ok
    faces = read_faces(tmp_path / "out")
    names = dict(zip(faces["character_id"].to_pylist(), faces["character_name"].to_pylist()))
    assert sorted(names.values(), key=str) == ["Grace Hopper", None]


def test_bad_cast_files_are_named(tmp_path):
    from exe_stream.identity import load_cast
    from exe_stream.pipeline import ScanOptions
    from exe_stream.shots import ShotOptions

    bad = tmp_path / "cast.csv"
    bad.write_text("who,picture\nx,y.png\n")
    with pytest.raises(ValueError, match="cast.csv: a cast file needs the columns name,photo"):
        load_cast(bad)
    bad.write_text("name,photo\nAda,missing.png\n")
    with pytest.raises(ValueError, match=r"cast.csv: line 2: photo 'missing.png' not found"):
        load_cast(bad)
    blank = tmp_path / "blank.png"
    import av

    with av.open(str(blank), "w") as c:
        s = c.add_stream("png", rate=1)
        s.width, s.height, s.pix_fmt = 64, 64, "rgb24"
        for pkt in s.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), 128, np.uint8), format="rgb24")):
            c.mux(pkt)
    bad.write_text("name,photo\nAda,blank.png\n")
    with pytest.raises(ValueError, match="blank.png: no face found in the cast photo"):
        load_cast(bad)
    with pytest.raises(ValueError, match="--cast names characters: it needs --characters"):
        ScanOptions(cast=str(bad), shots=ShotOptions("content"))


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=NEEDS_CUDA)])
def test_the_encoder_on_cuda_agrees_with_the_cpu(device):
    """Three real photos, resized to chips (no dlib needed): CUDA embeddings within the fail
    safe's tolerance of the CPU's, and the component verified."""
    from exe_stream import failsafe
    from exe_stream.identity import CUDA_TOLERANCE

    try:
        weights_file()
    except ValueError as e:  # a device run carries the file: EXE_STREAM_DLIB_WEIGHTS
        pytest.skip(f"dlib encoder weights not installed: {e}")
    chips = np.stack([av.open(str(DATA / n)).decode(video=0).__next__().to_ndarray(
        width=150, height=150, format="rgb24") for n in ("grace_hopper_512x512.jpg", "astronaut.png",
                                                          "Tom_Hanks_54745.png")])
    cpu = embed_chips(chips, "cpu")
    with failsafe.session() as fs:
        gpu = embed_chips(chips, device)
        assert fs.status("identity-cuda") == "verified", fs.state("identity-cuda")
    np.testing.assert_allclose(gpu, cpu, atol=CUDA_TOLERANCE)
