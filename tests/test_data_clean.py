"""exe_stream.data.clean and ``exe-stream data clean``: perceptual hash, near-duplicate groups,
label conflicts, minimum face size, blur filter and the class-balance report, on crops of real
face photos (no face detection: the crops are cut at known boxes)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image, ImageFilter
from typer.testing import CliRunner

from exe_stream.cli import app
from exe_stream.data.clean import (
    CLEAN_FILE, REPORT_FILE, CleanError, CleanOptions, blur_score, clean, hamming, near_duplicate_groups, phash,
)
from exe_stream.data.extract import FACES_SCHEMA, crop_faces, read_image_rgb, to_tensor
from exe_stream.data.recipe import RecipeError, load_recipe
from exe_stream.shards import read_table, write_table

DATA = Path(__file__).parent / "data"
# Face boxes (normalised x0, y0, x1, y1) that blazeface-full finds in the test photos.
BOXES = {
    "astronaut.png": (0.3391, 0.1323, 0.5423, 0.3355),
    "grace_hopper_512x512.jpg": (0.3198, 0.2181, 0.7212, 0.6195),
    "Tom_Hanks_54745.png": (0.0709, 0.1077, 0.9016, 0.9385),
}
runner = CliRunner()


def crop_of(image: np.ndarray, box, size: int = 96) -> np.ndarray:
    """uint8 [size, size, 3] crop by scan's rule (margin 0.15)."""
    c = crop_faces(to_tensor(image), torch.tensor([box]), torch.zeros(1, dtype=torch.int64), 0.15, size)[0]
    return (c * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def photo(name: str) -> np.ndarray:
    return read_image_rgb(DATA / name)


def recompressed(image: np.ndarray, scale: float, quality: int = 70) -> np.ndarray:
    """The photo resized by ``scale`` and saved as a JPEG of this quality (a re-posted copy)."""
    im = Image.fromarray(image)
    im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return np.array(Image.open(buf).convert("RGB"))


def blurred(image: np.ndarray, radius: float = 2.0) -> np.ndarray:
    return np.array(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))


def write_faces(data: Path, items: list[tuple[str, str, np.ndarray, float]]) -> list[str]:
    """DATA/faces/<label>/<name>.png and a faces.arrow row per (id, label, crop, face_size_px).
    Returns the crop paths (relative to DATA) in row order."""
    rows, paths = [], []
    for ident, label, crop, size in items:
        rel = f"faces/{label}/{ident}.png"
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(crop).save(buf, format="PNG")
        (data / rel).write_bytes(buf.getvalue())
        digest = hashlib.sha256(buf.getvalue()).hexdigest()
        rows.append({
            "image_sha256": hashlib.sha256(ident.encode()).hexdigest(), "source": "test", "id": ident,
            "label": label, "path": rel, "image_path": f"raw/test-{ident}.jpg", "x0": 0.1, "y0": 0.1, "x1": 0.5,
            "y1": 0.5, "det_score": 0.9, "face_area_rel": 0.16, "face_size_px": size, "n_faces": 1,
            "crop_size": crop.shape[0], "crop_margin": 0.15, "crop_sha256": digest,
        })
        paths.append(rel)
    write_table(data / "faces.arrow", pa.Table.from_pylist(rows, schema=FACES_SCHEMA))
    return paths


@pytest.fixture(scope="module")
def crops() -> dict[str, np.ndarray]:
    a, g, t = (photo(n) for n in BOXES)
    return {
        "astronaut": crop_of(a, BOXES["astronaut.png"]),
        # The same photo re-posted at 60% size as a JPEG: the detector box moves a little.
        "astronaut_copy": crop_of(recompressed(a, 0.6), (0.3377, 0.1306, 0.5430, 0.3360)),
        "hopper": crop_of(g, BOXES["grace_hopper_512x512.jpg"]),
        "hanks": crop_of(t, BOXES["Tom_Hanks_54745.png"]),
    }


# --------------------------------------------------------------------------- measures


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II basis, written out (independent of scipy)."""
    k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


def test_phash_matches_a_written_out_dct(crops):
    img = crops["hopper"]
    grey = np.asarray(Image.fromarray(img).convert("L").resize((32, 32), Image.Resampling.BOX), dtype=np.float64)
    m = _dct_matrix(32)
    low = (m @ grey @ m.T)[:8, :8].ravel()
    bits = low > np.median(low[1:])
    expected = int("".join("1" if b else "0" for b in bits), 2)
    assert phash(img) == expected


def test_phash_collapses_copies_and_separates_faces(crops):
    h = {k: phash(v) for k, v in crops.items()}
    assert int(hamming(h["astronaut"], h["astronaut_copy"])) <= 4
    assert int(hamming(h["astronaut"], phash(blurred(crops["astronaut"])))) <= 4
    for a, b in (("astronaut", "hopper"), ("astronaut", "hanks"), ("hopper", "hanks")):
        assert int(hamming(h[a], h[b])) >= 16, (a, b)


def test_hamming_counts_bits():
    assert int(hamming(0b1011, 0)) == 3
    assert int(hamming(2**64 - 1, 0)) == 64
    np.testing.assert_array_equal(hamming(np.array([1, 2, 3], np.uint64), np.uint64(1)), [0, 2, 1])


def test_near_duplicate_groups_are_connected_components():
    hashes = np.array([0b0, 0b1, 0b11, 2**64 - 1, 2**64 - 2], dtype=np.uint64)
    for chunk in (1, 2, 1024):
        g = near_duplicate_groups(hashes, 1, chunk=chunk)
        # 0-1 and 1-3 are within 1 bit (0 and 3 are 2 apart: joined through 1); the last two likewise.
        assert g[0] == g[1] == g[2] and g[3] == g[4] and g[0] != g[3]
    g0 = near_duplicate_groups(hashes, 0)
    assert len(set(g0.tolist())) == 5


def test_blur_score_values(crops):
    assert blur_score(np.full((40, 40, 3), 77, np.uint8)) == 0.0
    # A 128 x 128 checkerboard of 0/255: every interior Laplacian is +-4 * 255.
    board = ((np.indices((128, 128)).sum(axis=0) % 2) * 255).astype(np.uint8)
    assert blur_score(board) == pytest.approx((4 * 255) ** 2)
    sharp = blur_score(crops["astronaut"])
    assert blur_score(blurred(crops["astronaut"])) < sharp / 4


# --------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def cleaned(crops, tmp_path_factory):
    data = tmp_path_factory.mktemp("clean")
    paths = write_faces(data, [
        ("astronaut", "happy", crops["astronaut"], 104.0),
        ("astronaut_copy", "happy", crops["astronaut_copy"], 62.0),  # near-duplicate, smaller face
        ("hopper", "sad", crops["hopper"], 205.0),
        ("hopper_again", "angry", crops["hopper"], 205.0),           # the same picture under another label
        ("hanks", "angry", crops["hanks"], 93.0),
        ("hanks_small", "fear", np.ascontiguousarray(crops["hanks"][:, ::-1]), 30.0),  # mirrored, tiny face
    ])
    result = clean(data, CleanOptions(hash_distance=8, min_face_size=48))
    return data, paths, result


def test_keep_and_drop_reasons(cleaned):
    data, paths, result = cleaned
    rows = {r["id"]: r for r in read_table(data / CLEAN_FILE).to_pylist()}
    got = {k: (r["keep"], r["drop_reason"]) for k, r in rows.items()}
    assert got == {
        "astronaut": (True, ""),
        "astronaut_copy": (False, "duplicate"),
        "hopper": (False, "label_conflict"),
        "hopper_again": (False, "label_conflict"),
        "hanks": (True, ""),
        "hanks_small": (False, "small_face"),
    }
    assert rows["astronaut_copy"]["duplicate_of"] == paths[0]
    assert rows["astronaut"]["group"] == rows["astronaut_copy"]["group"] != rows["hanks"]["group"]
    assert rows["hanks"]["phash"] == f"{phash(read_image_rgb(data / paths[4])):016x}"
    # Every faces.arrow column is carried over unchanged.
    faces = read_table(data / "faces.arrow")
    table = read_table(data / CLEAN_FILE)
    assert table.column_names[: faces.num_columns] == faces.column_names
    assert table.select(faces.column_names).to_pylist() == faces.to_pylist()


def test_balance_report(cleaned):
    data, _, result = cleaned
    rep = json.loads((data / REPORT_FILE).read_text())
    assert rep == json.loads(json.dumps(result.report))
    assert rep["before"] == {"angry": 2, "fear": 1, "happy": 2, "sad": 1}
    assert rep["after"] == {"angry": 1, "fear": 0, "happy": 1, "sad": 0}
    assert rep["dropped"]["label_conflict"] == {"angry": 1, "sad": 1}
    assert rep["dropped"]["duplicate"] == {"happy": 1}
    assert rep["dropped"]["small_face"] == {"fear": 1}
    assert rep["dropped"]["blurry"] == {} and rep["dropped"]["unreadable"] == {}
    assert (rep["total_before"], rep["total_after"]) == (6, 2)
    assert rep["imbalance_before"] == pytest.approx(2.0) and rep["imbalance_after"] == pytest.approx(1.0)
    assert rep["options"] == {"hash_distance": 8, "min_face_size": 48, "blur_threshold": 0.0}
    assert rep["pulled"] is None  # no raw.arrow in this data dir


def test_blur_filter_drops_the_blurred_copy(crops, tmp_path):
    write_faces(tmp_path, [
        ("sharp", "happy", crops["astronaut"], 104.0),
        ("soft", "happy", blurred(crops["astronaut"], 2.5), 104.0),
        ("other", "sad", crops["hanks"], 93.0),
    ])
    sharp = blur_score(crops["astronaut"])
    soft = blur_score(blurred(crops["astronaut"], 2.5))
    res = clean(tmp_path, CleanOptions(blur_threshold=(sharp + soft) / 2))
    reasons = dict(zip(res.table.column("id").to_pylist(), res.table.column("drop_reason").to_pylist()))
    assert reasons == {"sharp": "", "soft": "blurry", "other": ""}
    np.testing.assert_allclose(res.table.column("blur").to_numpy()[:2], [sharp, soft], rtol=1e-5)
    # Without the filter the blurred copy is only a duplicate (same size: the first row is kept).
    res = clean(tmp_path, CleanOptions())
    assert res.table.column("drop_reason").to_pylist() == ["", "duplicate", ""]


def test_pull_duplicates_under_another_label_drop_the_image(crops, tmp_path):
    write_faces(tmp_path, [("hanks", "angry", crops["hanks"], 93.0), ("hopper", "sad", crops["hopper"], 205.0),
                           ("astronaut", "happy", crops["astronaut"], 104.0),
                           ("astronaut_copy", "happy", crops["astronaut_copy"], 62.0)])
    dup = {"label": ["surprise", "sad", "fear"], "duplicate_of_source": ["test"] * 3,
           "duplicate_of_id": ["hanks", "hopper", "astronaut"]}
    write_table(tmp_path / "raw_duplicates.arrow", pa.table(dup))
    res = clean(tmp_path)
    # hanks was also found by a "surprise" keyword; hopper's duplicate carried the same label;
    # the astronaut was also found as "fear", and its re-posted copy goes with it.
    assert res.table.column("drop_reason").to_pylist() == ["label_conflict", "", "label_conflict", "label_conflict"]


def test_unreadable_crop(crops, tmp_path):
    paths = write_faces(tmp_path, [("a", "happy", crops["astronaut"], 104.0), ("b", "sad", crops["hanks"], 93.0)])
    (tmp_path / paths[1]).unlink()
    res = clean(tmp_path)
    assert res.table.column("drop_reason").to_pylist() == ["", "unreadable"]
    assert res.report["dropped"]["unreadable"] == {"sad": 1}


def test_pulled_counts_come_from_raw_table(crops, tmp_path):
    write_faces(tmp_path, [("a", "happy", crops["astronaut"], 104.0)])
    write_table(tmp_path / "raw.arrow", pa.table({"label": ["happy", "happy", "sad"]}))
    write_table(tmp_path / "faces_skipped.arrow", pa.table({"label": ["happy", "sad"], "status": ["no_face", "error"]}))
    rep = clean(tmp_path).report
    assert rep["pulled"] == {"happy": 2, "sad": 1}
    assert rep["no_face"] == {"happy": 1}


# --------------------------------------------------------------------------- errors


def test_missing_faces_table(tmp_path):
    with pytest.raises(CleanError, match=r"faces.arrow does not exist; run `exe-stream data extract` first"):
        clean(tmp_path)


def test_unreadable_tables(crops, tmp_path):
    (tmp_path / "faces.arrow").write_text("not arrow")
    with pytest.raises(CleanError, match=r"faces.arrow is not a readable Arrow file"):
        clean(tmp_path)
    write_faces(tmp_path, [("a", "happy", crops["astronaut"], 104.0)])
    write_table(tmp_path / "raw_duplicates.arrow", pa.table({"label": ["sad"]}))
    with pytest.raises(CleanError, match=r"raw_duplicates.arrow lacks columns \['duplicate_of_source', 'duplicate_of_id'\]"):
        clean(tmp_path)


def test_faces_table_without_needed_columns(tmp_path):
    write_table(tmp_path / "faces.arrow", pa.table({"label": ["a"], "path": ["x.png"]}))
    with pytest.raises(CleanError, match=r"lacks columns \['image_sha256', 'face_size_px'\]"):
        clean(tmp_path)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"hash_distance": 40}, r"hash_distance must be an integer in \[0, 32\], got 40"),
    ({"min_face_size": -1}, r"min_face_size must be >= 0 pixels, got -1"),
    ({"blur_threshold": -5.0}, r"blur_threshold must be >= 0 \(0 = no blur filter\), got -5.0"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(CleanError, match=message):
        CleanOptions(**kwargs)


def test_recipe_section(tmp_path):
    r = tmp_path / "r.toml"
    r.write_text("[clean]\nhash_distance = 6\nblur_threshold = 80\n")
    opts = CleanOptions.from_recipe(load_recipe(r), min_face_size=64.0, hash_distance=None)
    assert (opts.hash_distance, opts.blur_threshold, opts.min_face_size) == (6, 80.0, 64.0)
    r.write_text("[clean]\nmin_size = 3\n")
    with pytest.raises(RecipeError, match=r"\[clean\]: unknown key 'min_size'; allowed: hash_distance, min_face_size"):
        CleanOptions.from_recipe(load_recipe(r))
    r.write_text("[clean]\nhash_distance = 99\n")
    with pytest.raises(RecipeError, match=r"r.toml \[clean\]: hash_distance must be an integer in \[0, 32\]"):
        CleanOptions.from_recipe(load_recipe(r))


# --------------------------------------------------------------------------- CLI


def test_cli_clean(crops, tmp_path):
    write_faces(tmp_path, [("a", "happy", crops["astronaut"], 104.0), ("b", "sad", crops["hanks"], 20.0)])
    res = runner.invoke(app, ["data", "clean", "--data", str(tmp_path), "-q"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "kept 1 of 2 faces" in text and "small face" in text
    assert (tmp_path / CLEAN_FILE).is_file() and (tmp_path / REPORT_FILE).is_file()
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'data_dir = "{tmp_path}"\n[clean]\nmin_face_size = 10\n')
    res = runner.invoke(app, ["data", "clean", str(recipe), "-q"])
    assert res.exit_code == 0 and "kept 2 of 2 faces" in " ".join(res.output.split())
    res = runner.invoke(app, ["data", "clean", "--data", str(tmp_path), "--hash-distance", "50"])
    assert res.exit_code == 2 and "hash_distance must be an integer in [0, 32], got 50" in res.output
    res = runner.invoke(app, ["data", "clean"])
    assert res.exit_code == 2 and "give a recipe (its data_dir) or --data DIR" in res.output
