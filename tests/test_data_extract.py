"""exe_stream.data.extract and ``exe-stream data extract``: the largest face of each pulled photo,
cropped by scan's rule, with skipped/error rows, resume and option errors, on real face photos."""

from __future__ import annotations

import hashlib
import io
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import DEVICES
import torch
from PIL import Image
from typer.testing import CliRunner

import exe_stream.detect as detect_mod
from exe_stream.classify import make_crops
from exe_stream.cli import app
from exe_stream.data.extract import (
    FACES_FILE, SKIPPED_FILE, ExtractError, ExtractOptions, crop_faces, extract, read_extract_options,
    read_image_rgb, to_tensor,
)
from exe_stream.data.pull import RAW_SCHEMA
from exe_stream.data.recipe import RecipeError, load_recipe
from exe_stream.detect import DetectorOptions, detect_faces, detect_faces_rgb
from exe_stream.models import CropSpec
from exe_stream.roi import yuv_to_rgb
from exe_stream.shards import read_table, write_table
from exe_stream.types import FaceBatch
from media import clip_frames

DATA = Path(__file__).parent / "data"
CLIP = Path(__file__).parent.parent / "exe_stream" / "assets" / "clips" / "carphone_pristine.mp4"
runner = CliRunner()


# --------------------------------------------------------------------------- a pulled data dir


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def group_photo() -> bytes:
    """Two real faces on one canvas: Grace Hopper (larger face, left) and the astronaut (right)."""
    canvas = Image.new("RGB", (1000, 600), (120, 120, 120))
    canvas.paste(Image.open(DATA / "grace_hopper_512x512.jpg").convert("RGB").resize((420, 420)), (30, 90))
    canvas.paste(Image.open(DATA / "astronaut.png").convert("RGB").resize((450, 450)), (520, 100))
    return png_bytes(canvas)


def no_face_photo() -> bytes:
    ramp = np.linspace(0, 255, 640, dtype=np.float64)[None, :, None].repeat(480, 0).repeat(3, 2)
    return png_bytes(Image.fromarray(ramp.astype(np.uint8)))


def write_raw(data: Path, items: list[tuple[str, str, bytes | None]]) -> None:
    """DATA/raw/<name> files and DATA/raw.arrow rows in the pull's schema (None: a row whose file is missing)."""
    rows = []
    for name, label, content in items:
        rel = f"raw/{name}"
        if content is not None:
            (data / "raw").mkdir(parents=True, exist_ok=True)
            (data / rel).write_bytes(content)
        sha = hashlib.sha256(content if content is not None else name.encode()).hexdigest()
        source, ident = name.split(".")[0].split("-", 1)
        rows.append({
            "source": source, "id": ident, "url": f"https://example.test/{name}", "page_url": "",
            "query": f"{label} face", "keyword": label, "label": label, "photographer": "", "photographer_url": "",
            "license": "test", "sha256": sha, "path": rel, "width": 0, "height": 0,
            "fetched_at": datetime(2024, 1, 1, tzinfo=timezone.utc),
        })
    old = read_table(data / "raw.arrow").to_pylist() if (data / "raw.arrow").is_file() else []
    write_table(data / "raw.arrow", pa.Table.from_pylist(old + rows, schema=RAW_SCHEMA))


PHOTOS = [
    ("test-astronaut.png", "happy", (DATA / "astronaut.png").read_bytes()),
    ("test-hopper.jpg", "sad", (DATA / "grace_hopper_512x512.jpg").read_bytes()),
    ("test-hanks.png", "angry", (DATA / "Tom_Hanks_54745.png").read_bytes()),
    ("test-group.png", "happy", group_photo()),
    ("test-ramp.png", "sad", no_face_photo()),
    ("test-broken.jpg", "angry", b"\xff\xd8\xff\xe0 this is not really a jpeg"),
    ("test-gone.jpg", "sad", None),
]


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    data = tmp_path_factory.mktemp("pulled")
    write_raw(data, PHOTOS)
    result = extract(data, ExtractOptions(device="cpu", crop_size=96))
    return data, result


def rows_by_id(data: Path, name: str = FACES_FILE) -> dict[str, dict]:
    return {r["id"]: r for r in read_table(data / name).to_pylist()}


# --------------------------------------------------------------------------- what extract writes


def test_counts_and_tables(extracted):
    data, result = extracted
    assert (result.images, result.faces, result.no_face, result.errors, result.already_done) == (7, 4, 1, 2, 0)
    faces = rows_by_id(data)
    assert set(faces) == {"astronaut", "hopper", "hanks", "group"}
    assert [faces[k]["label"] for k in ("astronaut", "hopper", "hanks", "group")] == ["happy", "sad", "angry", "happy"]
    assert read_extract_options(data / FACES_FILE)["margin"] == pytest.approx(0.15)
    assert all(r["crop_margin"] == pytest.approx(0.15) and r["crop_size"] == 96 for r in faces.values())


def test_crop_files_are_named_by_their_hash(extracted):
    data, _ = extracted
    for r in rows_by_id(data).values():
        f = data / r["path"]
        assert f.parent == data / "faces" / r["label"]
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        assert digest == r["crop_sha256"] and f.name == digest[:16] + ".png"
        with Image.open(f) as im:
            assert im.size == (96, 96) and im.mode == "RGB"


def test_box_is_the_detectors_and_sizes_are_in_original_pixels(extracted):
    data, _ = extracted
    r = rows_by_id(data)["astronaut"]
    img = read_image_rgb(DATA / "astronaut.png")
    found = detect_faces_rgb(to_tensor(img), DetectorOptions())
    np.testing.assert_allclose([r["x0"], r["y0"], r["x1"], r["y1"]], found.boxes[0].numpy(), atol=1e-6)
    assert r["det_score"] == pytest.approx(float(found.scores[0]), abs=1e-6)
    w, h = (r["x1"] - r["x0"]) * 512, (r["y1"] - r["y0"]) * 512
    assert r["face_size_px"] == pytest.approx(max(w, h), rel=1e-5)
    assert r["face_area_rel"] == pytest.approx((r["x1"] - r["x0"]) * (r["y1"] - r["y0"]), rel=1e-5)


def test_largest_face_is_kept(extracted):
    data, _ = extracted
    r = rows_by_id(data)["group"]
    assert r["n_faces"] == 2
    # Grace Hopper's face (left half, ~0.16 of the width) is the larger one; the astronaut's is on the right.
    assert r["x1"] < 0.5 and (r["x1"] - r["x0"]) > 0.12


def test_skipped_rows_say_why(extracted):
    data, _ = extracted
    skipped = rows_by_id(data, SKIPPED_FILE)
    assert skipped["ramp"]["status"] == "no_face"
    assert "raw/test-ramp.png: no face scored >= 0.6 (blazeface-full)" in skipped["ramp"]["reason"]
    assert skipped["broken"]["status"] == "error"
    assert skipped["broken"]["reason"].startswith("raw/test-broken.jpg: cannot decode image")
    assert skipped["gone"]["status"] == "error"
    assert skipped["gone"]["reason"] == "raw/test-gone.jpg: file not found"


@pytest.mark.parametrize("device", DEVICES)
def test_crop_equals_scans_make_crops(tmp_path, device):
    """A film frame saved as a photo and extracted gives the crop scan's make_crops makes from
    the frame's YUV planes for the same box and margin (to PNG rounding)."""
    frames = clip_frames(CLIP, [40])
    rgb = yuv_to_rgb(frames.y, frames.u, frames.v, frames.matrix, frames.full_range)[0]  # [3, H, W] in [0, 1]
    photo = (rgb * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    write_raw(tmp_path, [("clip-carphone40.png", "neutral", png_bytes(Image.fromarray(photo)))])
    result = extract(tmp_path, ExtractOptions(device=device, margin=0.25, crop_size=64))
    assert result.faces == 1
    r = read_table(tmp_path / FACES_FILE).to_pylist()[0]
    box = torch.tensor([[r["x0"], r["y0"], r["x1"], r["y1"]]], dtype=torch.float32)
    faces = FaceBatch(torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.int16), box, torch.ones(1),
                      torch.zeros(1, 6, 2))
    spec = CropSpec((64, 64), "rgb", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 0.25)
    scan_crop = make_crops(frames, faces, spec)[0].clamp(0, 1)  # [3, 64, 64]
    with Image.open(tmp_path / r["path"]) as im:
        saved = torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255
    # Photo quantisation (<= 0.5/255) plus crop quantisation (<= 0.5/255).
    assert float((saved - scan_crop).abs().max()) <= 1.0 / 255 + 1e-4
    # The float path, before any rounding, is the same resampling.
    direct = crop_faces(rgb[None].to(device), box.to(device), torch.zeros(1, dtype=torch.int64), 0.25, 64)
    torch.testing.assert_close(direct[0].cpu(), scan_crop, atol=2e-5, rtol=0)
    # And the detector found the face scan finds in that frame.
    scan_faces = detect_faces(frames, DetectorOptions())
    np.testing.assert_allclose(box[0].numpy(), scan_faces.boxes[0].numpy(), atol=0.01)


# --------------------------------------------------------------------------- resume


def test_rerun_skips_done_photos_and_retries_errors(extracted, tmp_path, monkeypatch):
    src, _ = extracted
    data = tmp_path / "data"
    shutil.copytree(src, data)
    calls = []
    real = detect_mod.detect_faces_rgb
    monkeypatch.setattr(detect_mod, "detect_faces_rgb", lambda x, o: calls.append(1) or real(x, o))
    again = extract(data, ExtractOptions(device="cpu", crop_size=96))
    assert (again.already_done, again.faces, again.no_face, again.errors) == (5, 0, 0, 2)
    assert calls == []  # nothing was detected again; the two error rows failed before detection
    assert read_table(data / FACES_FILE).num_rows == 4
    assert sorted(r["status"] for r in read_table(data / SKIPPED_FILE).to_pylist()) == ["error", "error", "no_face"]
    # A re-pulled file that is now readable is extracted; the new photo too; nothing else.
    (data / "raw" / "test-broken.jpg").write_bytes((DATA / "Tom_Hanks_54745.png").read_bytes())
    write_raw(data, [("more-hanks2.png", "sad", png_bytes(Image.open(DATA / "Tom_Hanks_54745.png").rotate(3)))])
    third = extract(data, ExtractOptions(device="cpu", crop_size=96))
    assert (third.already_done, third.faces, third.errors) == (5, 2, 1)
    assert len(calls) == 2
    faces = read_table(data / FACES_FILE).to_pylist()
    assert len(faces) == 6 and len({r["image_sha256"] for r in faces}) == 6


def test_interrupted_run_finishes_without_duplicates(tmp_path):
    write_raw(tmp_path, PHOTOS[:3])

    def stop_after_two(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract(tmp_path, ExtractOptions(device="cpu", crop_size=64, flush_every=1), on_progress=stop_after_two)
    assert read_table(tmp_path / FACES_FILE).num_rows == 2  # flushed after every photo
    rest = extract(tmp_path, ExtractOptions(device="cpu", crop_size=64, flush_every=1))
    assert (rest.already_done, rest.faces) == (2, 1)
    faces = read_table(tmp_path / FACES_FILE).to_pylist()
    assert sorted(r["id"] for r in faces) == ["astronaut", "hanks", "hopper"]
    assert len(list((tmp_path / "faces").rglob("*.png"))) == 3


def test_changed_options_redo_everything(tmp_path):
    write_raw(tmp_path, PHOTOS[:1])
    first = extract(tmp_path, ExtractOptions(device="cpu", crop_size=64, margin=0.1))
    old = tmp_path / read_table(tmp_path / FACES_FILE).column("path")[0].as_py()
    assert first.faces == 1 and old.is_file()
    second = extract(tmp_path, ExtractOptions(device="cpu", crop_size=64, margin=0.4))
    assert second.faces == 1 and second.already_done == 0
    assert any("options changed" in n for n in second.notes)
    assert not old.exists()
    assert read_table(tmp_path / FACES_FILE).column("crop_margin")[0].as_py() == pytest.approx(0.4)


# --------------------------------------------------------------------------- image reading


def test_read_image_applies_exif_rotation_and_max_side(tmp_path):
    img = Image.open(DATA / "Tom_Hanks_54745.png").convert("RGB").resize((200, 100))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "r.jpg", exif=exif.tobytes())
    a = read_image_rgb(tmp_path / "r.jpg")
    assert a.shape == (200, 100, 3) and a.dtype == np.uint8
    assert read_image_rgb(tmp_path / "r.jpg", max_side=64).shape == (64, 32, 3)
    Image.new("LA", (30, 20), (90, 128)).save(tmp_path / "grey_alpha.png")
    g = read_image_rgb(tmp_path / "grey_alpha.png")
    assert g.shape == (20, 30, 3) and (g == 90).all()


# --------------------------------------------------------------------------- errors


def test_missing_raw_table(tmp_path):
    with pytest.raises(ExtractError, match=r"raw.arrow does not exist; run `exe-stream data pull` first"):
        extract(tmp_path, ExtractOptions(device="cpu"))


def test_raw_table_that_is_not_arrow(tmp_path):
    (tmp_path / "raw.arrow").write_text("not arrow")
    with pytest.raises(ExtractError, match=r"raw.arrow is not a readable Arrow file"):
        extract(tmp_path, ExtractOptions(device="cpu"))


def test_label_that_cannot_name_a_directory():
    from exe_stream.data.extract import safe_label

    assert safe_label("so happy!") == "so_happy_"
    with pytest.raises(ExtractError, match=r"label '\.\.' cannot name a directory"):
        safe_label("..")


def test_raw_table_without_needed_columns(tmp_path):
    write_table(tmp_path / "raw.arrow", pa.table({"source": ["x"], "id": ["1"]}))
    with pytest.raises(ExtractError, match=r"lacks columns \['label', 'sha256', 'path'\]; needs"):
        extract(tmp_path, ExtractOptions(device="cpu"))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"detector": "yolo"}, r"unknown detector 'yolo'; available: blazeface-full, blazeface-short"),
    ({"margin": -0.1}, r"margin must be in \[0, 2\], got -0.1"),
    ({"min_face_score": 1.5}, r"min_face_score must be in \[0, 1\], got 1.5"),
    ({"crop_size": 8}, r"crop_size must be an integer in \[16, 1024\], got 8"),
    ({"max_side": 10}, r"max_side must be 0 \(never reduce\) or >= 64, got 10"),
    ({"device": "tpu"}, r"device must be one of auto, cpu, cuda; got 'tpu'"),
    ({"flush_every": 0}, r"flush_every must be >= 1, got 0"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(ExtractError, match=message):
        ExtractOptions(**kwargs)


def test_recipe_section(tmp_path):
    r = tmp_path / "r.toml"
    r.write_text('data_dir = "d"\n[extract]\nmargin = 0.3\ncrop_size = 128\ndevice = "cpu"\n')
    opts = ExtractOptions.from_recipe(load_recipe(r), detector="blazeface-short", min_face_score=None)
    assert (opts.margin, opts.crop_size, opts.detector, opts.min_face_score) == (0.3, 128, "blazeface-short", None)
    assert opts.device == "cpu"
    r.write_text('[extract]\nmargin = 0.3\nblur = 2\n')
    with pytest.raises(RecipeError, match=r"\[extract\]: unknown key 'blur'; allowed: detector, min_face_score, margin"):
        ExtractOptions.from_recipe(load_recipe(r))
    r.write_text('[extract]\nmargin = 3.0\n')
    with pytest.raises(RecipeError, match=r"r.toml \[extract\]: margin must be in \[0, 2\], got 3.0"):
        ExtractOptions.from_recipe(load_recipe(r))


# --------------------------------------------------------------------------- CLI


def test_cli_extract(tmp_path):
    write_raw(tmp_path, PHOTOS[4:6])  # a photo without a face and an unreadable one
    res = runner.invoke(app, ["data", "extract", "--data", str(tmp_path), "--device", "cpu", "-q"])
    assert res.exit_code == 0, res.output
    assert "0 faces" in res.output and "1 without a face" in res.output and "1 unreadable" in res.output
    # With a recipe: its data_dir and [extract] table; the photos are done already.
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'data_dir = "{tmp_path}"\n[extract]\ndevice = "cpu"\n')
    res = runner.invoke(app, ["data", "extract", str(recipe), "-q"])
    assert res.exit_code == 0, res.output
    assert "2 photos: 0 faces, 0 without a face, 1 unreadable (1 done before)" in " ".join(res.output.split())
    res = runner.invoke(app, ["data", "extract", "--data", str(tmp_path), "--detector", "yolo"])
    assert res.exit_code == 2
    assert "unknown detector 'yolo'" in res.output
    res = runner.invoke(app, ["data", "extract", "--data", str(tmp_path / "nowhere")])
    assert res.exit_code == 2
    assert "nowhere/raw.arrow does not exist; run `exe-stream data pull` first" in " ".join(res.output.split())
