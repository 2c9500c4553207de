"""exe_stream.train.harvest and ``exe-stream data harvest``: a scan's faces cut from its films again
as unlabelled crops, exactly as scan crops them, for autoencoder pretraining."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from exe_stream.classify import make_crops
from exe_stream.cli import app
from exe_stream.models import CropSpec
from exe_stream.pipeline import ScanOptions, scan
from exe_stream.sampling import SamplingOptions
from exe_stream.shards import read_faces
from exe_stream.train import TrainError
from exe_stream.train.harvest import harvest_faces
from exe_stream.types import FaceBatch
from media import clip_frames

FER = "fer2013-minixception"
runner = CliRunner()


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, clips):
    d = tmp_path_factory.mktemp("h")
    film = shutil.copy(clips / "carphone_pristine.mp4", d / "carphone.mp4")
    out = d / "scan"
    scan([film], out, ScanOptions(sampling=SamplingOptions(every=30), device="cpu", models=(FER,)))
    return out, Path(film)


def test_harvested_crops_are_scans_crops(scanned, tmp_path):
    out, film = scanned
    res = harvest_faces(out, tmp_path / "crops", size=48, margin=0.2)
    faces = read_faces(out, FER)
    assert res.written == faces.num_rows >= 3 and res.existing == 0 and res.films == 1
    files = sorted((tmp_path / "crops" / "carphone").glob("*.png"))
    assert len(files) == faces.num_rows
    # Each crop is make_crops on the same frame (decoded independently) and the stored box.
    rows = faces.to_pylist()
    frames = clip_frames(film, sorted({r["frame_index"] for r in rows}))
    index = frames.frame_index.tolist()
    batch = FaceBatch(
        frame_row=torch.tensor([index.index(r["frame_index"]) for r in rows]),
        face_index=torch.tensor([r["face_index"] for r in rows], dtype=torch.int16),
        boxes=torch.tensor([[r["x0"], r["y0"], r["x1"], r["y1"]] for r in rows]),
        scores=torch.ones(len(rows)), keypoints=torch.zeros(len(rows), 6, 2),
    )
    ref = make_crops(frames, batch, CropSpec((48, 48), "rgb", (0.0,) * 3, (1.0,) * 3, 0.2))
    ref = (ref.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for r, expected in zip(rows, ref):
        got = np.asarray(Image.open(tmp_path / "crops" / "carphone" / f"f{r['frame_index']}-{r['face_index']}.png"))
        assert got.shape == (48, 48, 3)
        assert np.array_equal(got, expected)
    # Again: nothing is cut twice.
    again = harvest_faces(out, tmp_path / "crops", size=48, margin=0.2)
    assert again.written == 0 and again.existing == faces.num_rows
    # Only large faces.
    big = harvest_faces(out, tmp_path / "big", min_face_area=1.0)
    assert big.written == 0


def test_harvest_errors_and_cli(scanned, tmp_path):
    out, film = scanned
    with pytest.raises(TrainError, match=r"is not a scan output directory \(no manifest.json\)"):
        harvest_faces(tmp_path, tmp_path / "c")
    with pytest.raises(TrainError, match=r"size must be >= 8 and margin >= 0, got 4, 0.15"):
        harvest_faces(out, tmp_path / "c", size=4)
    r = runner.invoke(app, ["data", "harvest", str(out), "-o", str(tmp_path / "cli"), "--size", "32"])
    assert r.exit_code == 0, r.output
    assert "crops written" in r.output and len(list((tmp_path / "cli").rglob("*.png"))) >= 3
    # The film changed since the scan: skipped with a note.
    moved = out.parent / "moved"
    shutil.copytree(out, moved)
    film.rename(film.with_suffix(".bak"))
    try:
        res = harvest_faces(moved, tmp_path / "none")
        assert res.written == 0 and "is gone or changed since the scan; skipped" in res.notes[0]
    finally:
        film.with_suffix(".bak").rename(film)
