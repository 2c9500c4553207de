"""The whole training loop through the command line, on a loopback fake of both stock-photo APIs
serving real face photos (tests/fake_stock_api.py):

    exe-stream data pull -> data extract -> data clean -> train -> evaluate -> scan --model <trained>

Each stage's outputs are checked, the trained card scans a real clip, and the key never shows.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from exe_stream.cli import app
from exe_stream.models import load_card
from exe_stream.shards import read_faces, read_frames, read_table
from fake_stock_api import Catalog, FakeStockAPI, write_recipe

CLIP = Path(__file__).parent.parent / "exe_stream" / "assets" / "clips" / "carphone_pristine.mp4"
EMOTIONS = {"happy": ["happy", "smiling"], "sad": ["sad", "crying"]}
runner = CliRunner()

TRAIN_TABLES = """
[extract]
device = "cpu"

[clean]
hash_distance = 0

[train]
architecture = "resnet18"
weights = "none"
input_size = 32
epochs = 2
batch_size = 8
augmentation = "light"
val_fraction = 0.3
device = "cpu"
mlflow = "off"
"""


def _invoke(args: list[str]):
    r = runner.invoke(app, args)
    assert r.exit_code == 0, f"exe-stream {' '.join(args)} -> {r.exit_code}\n{r.output}"
    return r


@pytest.mark.slow
def test_pull_extract_clean_train_evaluate_scan(tmp_path, monkeypatch):
    data = tmp_path / "data"
    catalog = Catalog.for_emotions(EMOTIONS, per_query=4)
    with FakeStockAPI(catalog) as api:
        for k, v in api.env().items():
            monkeypatch.setenv(k, v)
        recipe = write_recipe(tmp_path / "recipe.toml", EMOTIONS, api, data_dir=data)
        recipe.write_text(recipe.read_text() + TRAIN_TABLES)

        # 1. Pull: every distinct photo once, weakly labelled by its keyword's emotion.
        r = _invoke(["data", "pull", str(recipe)])
        assert api.keys["pexels"] not in r.output and api.keys["pixabay"] not in r.output
        raw = read_table(data / "raw.arrow")
        assert raw.num_rows == len(set(raw.column("sha256").to_pylist())) > 0
        assert set(raw.column("label").to_pylist()) == set(EMOTIONS)
        assert all((data / p).is_file() for p in raw.column("path").to_pylist())
        downloads = sum(api.image_downloads.values())
        # Pulled again: nothing new, nothing downloaded twice.
        _invoke(["data", "pull", str(recipe)])
        assert read_table(data / "raw.arrow").num_rows == raw.num_rows
        assert sum(api.image_downloads.values()) == downloads
    for f in data.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".arrow", ".toml", ".txt"):
            text = f.read_bytes()
            assert api.keys["pexels"].encode() not in text and api.keys["pixabay"].encode() not in text, f

    # 2. Extract: the largest face of every photo (they are all real faces).
    _invoke(["data", "extract", str(recipe), "-q"])
    faces = read_table(data / "faces.arrow")
    assert faces.num_rows >= 0.8 * raw.num_rows
    assert all((data / p).is_file() for p in faces.column("path").to_pylist())

    # 3. Clean: a keep flag per face and the class balance report.
    _invoke(["data", "clean", str(recipe), "-q"])
    clean = read_table(data / "clean.arrow")
    assert clean.num_rows == faces.num_rows
    kept = [r for r in clean.to_pylist() if r["keep"]]
    report = json.loads((data / "clean_report.json").read_text())
    assert sum(report["after"].values()) == len(kept)
    assert {r["label"] for r in kept} == set(EMOTIONS)

    # 4. Train on the kept crops: a model card, a run record, the training hashes.
    model = tmp_path / "runs" / "stock-resnet"
    r = _invoke(["train", str(recipe), "-o", str(model)])
    assert "best epoch" in r.output
    card = load_card(model)
    assert card.labels == ("happy", "sad") and card.crop_margin == pytest.approx(kept[0]["crop_margin"])
    run = json.loads((model / "run.json").read_text())
    assert len(run["epochs"]) == 2 and sum(run["data"]["train"].values()) + sum(run["data"]["val"].values()) == len(kept)
    hashes = (model / "train_hashes.txt").read_text()
    train_crops = [r for r in kept if r["crop_sha256"] in hashes]
    assert len(train_crops) == sum(run["data"]["train"].values())

    # 5. Evaluate: on the training crops themselves the leakage check refuses; on held-out crops
    #    (the validation split) it evaluates.
    r = runner.invoke(app, ["evaluate", str(model), "--data", str(data / "faces"), "-o", str(tmp_path / "ev0"), "-q"])
    assert r.exit_code == 2, r.output
    assert "are in the training data of model 'stock-resnet'" in " ".join(r.output.split())
    held_out = tmp_path / "held_out"
    for row in kept:
        if row["crop_sha256"] not in hashes:
            (held_out / row["label"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(data / row["path"], held_out / row["label"])
    r = _invoke(["evaluate", str(model), "--data", str(held_out), "-o", str(tmp_path / "ev"), "-q"])
    ev = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert "stock-resnet" in json.dumps(ev)

    # 6. The trained model scans a real clip.
    out = tmp_path / "scan"
    _invoke(["scan", str(CLIP), "-o", str(out), "--model", str(model), "--every", "30", "--device", "cpu", "-q"])
    frames = read_frames(out)
    faces_t = read_faces(out, "stock-resnet")
    assert frames.num_rows == 4 and faces_t.num_rows >= 3
    assert {"prob_happy", "prob_sad"} <= set(faces_t.column_names)
    assert set(faces_t.column("label").to_pylist()) <= {"happy", "sad"}
