"""exe_stream.evaluate and ``exe-stream evaluate``: metrics against hand-computed values, test-set
readers (image folders, FER2013 CSV), label mapping, the training-data overlap check, the
comparison table and the confusion-matrix PNGs, with the bundled FER model on real faces."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import DEVICES
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from exe_stream.cli import app
from exe_stream.data.extract import crop_faces, read_image_rgb, to_tensor
from exe_stream.evaluate import (
    FER2013_LABELS, SUMMARY_FIELDS, EvaluateError, EvaluateOptions, Evaluation, common_label, compute_metrics,
    evaluate, file_sha256, load_label_map, load_test_set, pixel_hash, plot_confusion, training_hashes,
)
from exe_stream.models import builtin_models_dir, load_model

DATA = Path(__file__).parent / "data"
FER = "fer2013-minixception"
# Face boxes (normalised) that blazeface-full finds in the test photos.
BOXES = {
    "astronaut.png": (0.3391, 0.1323, 0.5423, 0.3355),
    "grace_hopper_512x512.jpg": (0.3198, 0.2181, 0.7212, 0.6195),
    "Tom_Hanks_54745.png": (0.0709, 0.1077, 0.9016, 0.9385),
}
runner = CliRunner()


def face_crop(name: str, size: int = 96) -> np.ndarray:
    c = crop_faces(to_tensor(read_image_rgb(DATA / name)), torch.tensor([BOXES[name]]),
                   torch.zeros(1, dtype=torch.int64), 0.15, size)[0]
    return (c * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def faces() -> dict[str, np.ndarray]:
    return {n: face_crop(n) for n in BOXES}


@pytest.fixture(scope="module")
def folder(faces, tmp_path_factory) -> Path:
    """DIR/<label>/*.png: three real faces (and a mirrored one) under dataset-style label names."""
    root = tmp_path_factory.mktemp("testset") / "faces"
    items = [("Happiness", "astronaut.png", False), ("Sadness", "grace_hopper_512x512.jpg", False),
             ("Anger", "Tom_Hanks_54745.png", False), ("Happiness", "Tom_Hanks_54745.png", True),
             ("contempt", "astronaut.png", True)]
    for i, (label, name, mirror) in enumerate(items):
        (root / label).mkdir(parents=True, exist_ok=True)
        img = faces[name][:, ::-1] if mirror else faces[name]
        Image.fromarray(np.ascontiguousarray(img)).save(root / label / f"{i}.png")
    return root


def grey48(img: np.ndarray) -> np.ndarray:
    return np.array(Image.fromarray(img).convert("L").resize((48, 48), Image.Resampling.BOX))


def write_fer_csv(path: Path, rows: list[tuple[int, np.ndarray | str, str]], header=("emotion", "pixels", "Usage")) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for code, px, usage in rows:
            text = px if isinstance(px, str) else " ".join(str(int(v)) for v in px.ravel())
            w.writerow([code, text, usage][: len(header)])
    return path


@pytest.fixture(scope="module")
def fer_csv(faces, tmp_path_factory) -> Path:
    g = {n: grey48(v) for n, v in faces.items()}
    rows = [(3, g["astronaut.png"], "Training"), (4, g["grace_hopper_512x512.jpg"], "PublicTest"),
            (0, g["Tom_Hanks_54745.png"], "PrivateTest"), (6, g["astronaut.png"][:, ::-1], "PrivateTest"),
            (3, g["Tom_Hanks_54745.png"][:, ::-1], "PrivateTest")]
    return write_fer_csv(tmp_path_factory.mktemp("fer") / "fer2013.csv", rows)


def model_copy(dst: Path, hashes: list[str] = (), extra_lines: str = "") -> Path:
    shutil.copytree(builtin_models_dir() / FER, dst)
    if hashes or extra_lines:
        (dst / "train_hashes.txt").write_text(extra_lines + "".join(h + "\n" for h in hashes))
    return dst


# --------------------------------------------------------------------------- metrics


def test_metrics_against_hand_computed_values():
    # true a a a b b c c c c / pred a b a b b c a c b
    m = compute_metrics([0, 0, 0, 1, 1, 2, 2, 2, 2], [0, 1, 0, 1, 1, 2, 0, 2, 1], ["a", "b", "c"])
    np.testing.assert_array_equal(m.confusion, [[2, 1, 0], [0, 2, 0], [1, 1, 2]])
    np.testing.assert_allclose(m.precision, [2 / 3, 2 / 4, 2 / 2])
    np.testing.assert_allclose(m.recall, [2 / 3, 2 / 2, 2 / 4])
    np.testing.assert_allclose(m.f1, [2 / 3, 2 / 3, 2 / 3])
    np.testing.assert_array_equal(m.support, [3, 2, 4])
    assert m.accuracy == pytest.approx(6 / 9)
    assert m.balanced_accuracy == pytest.approx((2 / 3 + 1 + 0.5) / 3)
    assert m.macro_f1 == pytest.approx(2 / 3) and m.weighted_f1 == pytest.approx(2 / 3)
    assert m.macro_precision == pytest.approx((2 / 3 + 0.5 + 1) / 3)


def test_metrics_with_extra_predicted_class_and_empty_class():
    # Model class "d" is not in the test set; class "c" has no test images and is never predicted.
    m = compute_metrics([0, 0, 1, 1], [0, 3, 3, 1], ["a", "b", "c"], ["a", "b", "c", "d"])
    np.testing.assert_array_equal(m.confusion, [[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 0, 0]])
    np.testing.assert_allclose(m.precision, [1.0, 1.0, 0.0])
    np.testing.assert_allclose(m.recall, [0.5, 0.5, 0.0])
    assert m.accuracy == pytest.approx(0.5)
    assert m.macro_f1 == pytest.approx(2 / 3)  # mean over a and b: c has no support
    with pytest.raises(ValueError, match=r"predicted_classes must start with classes"):
        compute_metrics([0], [0], ["a", "b"], ["b", "a"])


def test_metrics_match_an_independent_count():
    rng = np.random.default_rng(7)
    true = rng.integers(0, 5, 400)
    pred = np.where(rng.random(400) < 0.6, true, rng.integers(0, 6, 400))
    m = compute_metrics(true, pred, list("abcde"), list("abcdef"))
    for c in range(5):
        tp = sum(1 for t, p in zip(true, pred) if t == c and p == c)
        fp = sum(1 for t, p in zip(true, pred) if t != c and p == c)
        fn = sum(1 for t, p in zip(true, pred) if t == c and p != c)
        prec, rec = tp / (tp + fp), tp / (tp + fn)
        assert m.precision[c] == pytest.approx(prec)
        assert m.recall[c] == pytest.approx(rec)
        assert m.f1[c] == pytest.approx(2 * prec * rec / (prec + rec))
    assert m.accuracy == pytest.approx(np.mean(true == pred))
    assert m.confusion.sum() == 400 and m.confusion[:, 5].sum() == np.sum(pred == 5)


# --------------------------------------------------------------------------- labels


def test_common_labels_and_maps(tmp_path):
    assert [common_label(x) for x in ("Anger", "HAPPINESS", "sadness", "Surprised", "fearful", "neutral")] == \
        ["angry", "happy", "sad", "surprise", "fear", "neutral"]
    assert common_label("Contempt") == "contempt" and common_label("smirk") == "smirk"
    assert common_label("contempt", {"Contempt": "Disgusted"}) == "disgust"
    assert common_label("contempt", {"contempt": ""}) == ""
    (tmp_path / "m.json").write_text(json.dumps({"contempt": "disgust"}))
    (tmp_path / "m.toml").write_text('contempt = "disgust"\n"joy" = "happy"\n')
    (tmp_path / "m.csv").write_text("from,to\ncontempt,disgust\n")
    assert load_label_map(tmp_path / "m.json") == (("contempt", "disgust"),)
    assert dict(load_label_map(tmp_path / "m.toml")) == {"contempt": "disgust", "joy": "happy"}
    assert load_label_map(tmp_path / "m.csv") == (("contempt", "disgust"),)


@pytest.mark.parametrize(("name", "text", "message"), [
    ("m.json", "[1, 2]", r"must map label names to label names"),
    ("m.json", "{bad", r"m.json is not valid JSON"),
    ("m.csv", "a,b,c\n", r"every row needs two columns \(from,to\); rows \[1\] do not"),
    ("m.txt", "a=b", r"unknown format '.txt'; use .json, .toml or .csv"),
    ("m.toml", "a = = b", r"m.toml is not valid TOML"),
])
def test_bad_label_maps(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(EvaluateError, match=message):
        load_label_map(tmp_path / name)
    with pytest.raises(EvaluateError, match=r"label map .*nope.json does not exist"):
        load_label_map(tmp_path / "nope.json")


# --------------------------------------------------------------------------- test sets


def test_folder_test_set(folder):
    ts = load_test_set(folder)
    assert ts.kind == "folder" and ts.name == "faces" and len(ts) == 5
    assert sorted(set(ts.labels)) == ["Anger", "Happiness", "Sadness", "contempt"]
    assert ts.image(0).shape == (96, 96, 3)


def test_fer2013_csv(fer_csv, faces):
    ts = load_test_set(fer_csv)
    assert ts.kind == "fer2013" and len(ts) == 5 and ts.pixels.shape == (5, 48, 48)
    assert ts.labels == ["happy", "sad", "angry", "neutral", "happy"]
    np.testing.assert_array_equal(ts.pixels[1], grey48(faces["grace_hopper_512x512.jpg"]))
    img = ts.image(1)
    assert img.shape == (48, 48, 3) and (img[..., 0] == img[..., 2]).all()
    test = load_test_set(fer_csv, usage=["PrivateTest"])
    assert test.labels == ["angry", "neutral", "happy"] and test.name == "fer2013-PrivateTest"
    assert FER2013_LABELS == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def test_fer2013_csv_errors(tmp_path, fer_csv):
    px = np.zeros((48, 48), np.uint8)
    cases = [
        ([(9, px, "Training")], None, r"line 2: emotion must be 0..6 \(FER2013 codes\), got '9'"),
        ([(1, " ".join(["7"] * 2303), "Training")], None, r"line 2: pixels must be 2304 values in 0..255 \(48 x 48\), got 2303"),
        ([(1, "1 2 x", "Training")], None, r"line 2: pixels must be space-separated integers"),
        ([(1, px, "Training")], ("label", "pixels", "Usage"), r"not in the FER2013 CSV layout: no column\(s\) \['emotion'\]"),
    ]
    for rows, header, message in cases:
        f = write_fer_csv(tmp_path / "bad.csv", rows, header or ("emotion", "pixels", "Usage"))
        with pytest.raises(EvaluateError, match=message):
            load_test_set(f)
    f = write_fer_csv(tmp_path / "nousage.csv", [(1, px, "")], ("emotion", "pixels"))
    assert len(load_test_set(f)) == 1
    with pytest.raises(EvaluateError, match=r"has no Usage column, so --usage PublicTest cannot select rows"):
        load_test_set(f, usage=["PublicTest"])
    with pytest.raises(EvaluateError, match=r"no rows with Usage in \['Test'\]; Usage values: PrivateTest, PublicTest, Training"):
        load_test_set(fer_csv, usage=["Test"])


def test_test_set_errors(tmp_path):
    with pytest.raises(EvaluateError, match=r"test set .*missing does not exist"):
        load_test_set(tmp_path / "missing")
    (tmp_path / "empty" / "happy").mkdir(parents=True)
    with pytest.raises(EvaluateError, match=r"holds no images in class sub-folders; expected .*empty/<label>/\*"):
        load_test_set(tmp_path / "empty")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(EvaluateError, match=r"neither a folder of class sub-folders .* nor a FER2013 .csv"):
        load_test_set(tmp_path / "x.txt")


# --------------------------------------------------------------------------- hashes


def test_pixel_hash_ignores_format_and_grey_channels(tmp_path, faces):
    g = grey48(faces["astronaut.png"])
    Image.fromarray(g).save(tmp_path / "g.png")
    Image.fromarray(np.repeat(g[:, :, None], 3, axis=2)).save(tmp_path / "rgb.bmp")
    assert pixel_hash(read_image_rgb(tmp_path / "g.png")) == pixel_hash(read_image_rgb(tmp_path / "rgb.bmp")) == pixel_hash(g)
    assert file_sha256(tmp_path / "g.png") != file_sha256(tmp_path / "rgb.bmp")
    assert pixel_hash(g) != pixel_hash(g[:, ::-1])


def test_training_hashes(tmp_path):
    d = model_copy(tmp_path / "m", ["A" * 64], extra_lines="# crops of run 1\n\n")
    card = json.loads((d / "model.json").read_text())
    card["extra"]["train_sha256"] = ["b" * 64]
    (d / "model.json").write_text(json.dumps(card))
    assert training_hashes(d) == {"a" * 64, "b" * 64}
    assert training_hashes(builtin_models_dir() / FER) == set()
    card["extra"]["train_sha256"] = ["xyz"]
    (d / "model.json").write_text(json.dumps(card))
    with pytest.raises(EvaluateError, match=r"model.json: extra.train_sha256 holds 'xyz', not a sha256"):
        training_hashes(d)
    card["extra"]["train_sha256"] = "b" * 64
    (d / "model.json").write_text(json.dumps(card))
    with pytest.raises(EvaluateError, match=r"extra.train_sha256 must be a list of sha256 strings"):
        training_hashes(d)
    (d / "train_hashes.txt").write_text("c" * 64 + "\nnot-a-hash\n")
    with pytest.raises(EvaluateError, match=r"train_hashes.txt:2: expected a sha256 \(64 hex digits\), got 'not-a-hash'"):
        training_hashes(d)


# --------------------------------------------------------------------------- evaluate


def _reference_predictions(images: list[np.ndarray]) -> np.ndarray:
    """The FER model's top class per square image, preprocessed by hand: bilinear resize of the
    whole image (half-pixel centres), grey 0.299/0.587/0.114, (x - 0.5) / 0.5."""
    model = load_model(FER, "cpu")
    x = torch.stack([torch.from_numpy(im.copy()).permute(2, 0, 1).float() / 255 for im in images])
    x = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False, antialias=False)
    grey = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return model.predict((grey - 0.5) / 0.5).argmax(1).numpy()


@pytest.mark.parametrize("device", DEVICES)
def test_evaluate_folder_against_reference_predictions(folder, tmp_path, device):
    report = evaluate([FER], [folder], EvaluateOptions(device=device), out_dir=tmp_path / "out")
    ev = report.get(FER, "faces")
    ts = load_test_set(folder)
    keep = [i for i, lbl in enumerate(ts.labels) if lbl != "contempt"]
    pred = _reference_predictions([ts.image(i) for i in keep])
    true_names = [common_label(ts.labels[i]) for i in keep]
    pred_names = [FER2013_LABELS[p] for p in pred]
    m = ev.metrics
    assert m.n == 4 and ev.excluded == {"contempt": 1}
    assert set(m.classes) == {"angry", "happy", "sad"}
    assert m.accuracy == pytest.approx(np.mean([t == p for t, p in zip(true_names, pred_names)]))
    for t, p in zip(true_names, pred_names):  # every image is in its confusion cell
        assert m.confusion[m.classes.index(t), m.predicted_classes.index(p)] >= 1
    assert m.predicted_classes[:3] == m.classes and set(m.predicted_classes) == set(FER2013_LABELS)
    assert ev.overlap_checked is False
    assert any("records no training-image hashes" in n for n in report.notes)


def test_restrict_predicts_among_test_classes(folder):
    report = evaluate([FER], [folder], EvaluateOptions(device="cpu", restrict=True))
    m = report.get(FER, "faces").metrics
    assert m.confusion[:, len(m.classes):].sum() == 0 and m.n == 4


def test_label_map_file_merges_model_classes(folder):
    # Mapping the dataset's contempt to disgust brings the fifth image in.
    report = evaluate([FER], [folder], EvaluateOptions(device="cpu", label_map=(("contempt", "disgust"),)))
    ev = report.get(FER, "faces")
    assert ev.metrics.n == 5 and ev.excluded == {} and "disgust" in ev.metrics.classes
    # Two model outputs mapped to one name are summed: angry+disgust as "negative".
    both = (("angry", "negative"), ("disgust", "negative"), ("Anger", "negative"), ("contempt", ""))
    ev2 = evaluate([FER], [folder], EvaluateOptions(device="cpu", label_map=both)).get(FER, "faces")
    assert "negative" in ev2.metrics.classes and "angry" not in ev2.metrics.predicted_classes
    assert len(ev2.metrics.predicted_classes) == 6


def test_comparison_table_across_models_and_test_sets(folder, fer_csv, tmp_path):
    other = model_copy(tmp_path / "fer-copy")
    out = tmp_path / "out"
    report = evaluate([FER, str(other)], [folder, fer_csv], EvaluateOptions(device="cpu", usage=("PrivateTest",)),
                      out_dir=out)
    rows = report.comparison()
    assert [(r["model"], r["dataset"]) for r in rows] == [
        (FER, "faces"), ("fer-copy", "faces"), (FER, "fer2013-PrivateTest"), ("fer-copy", "fer2013-PrivateTest")]
    # The copy has the same weights: the same numbers.
    assert rows[0]["accuracy"] == rows[1]["accuracy"] and rows[2]["accuracy"] == rows[3]["accuracy"]
    assert rows[2]["n"] == 3
    with open(out / "comparison.csv") as fh:
        table = list(csv.DictReader(fh))
    assert tuple(table[0]) == SUMMARY_FIELDS and len(table) == 4
    assert float(table[2]["accuracy"]) == pytest.approx(rows[2]["accuracy"], abs=1e-6)
    data = json.loads((out / "evaluation.json").read_text())
    assert len(data["evaluations"]) == 4 and data["options"]["usage"] == ["PrivateTest"]
    assert np.array(data["evaluations"][0]["confusion"]).sum() == 4
    with open(out / "per_class.csv") as fh:
        per = list(csv.DictReader(fh))
    assert {r["class"] for r in per if r["dataset"] == "faces"} == {"angry", "happy", "sad"}
    pngs = sorted(p.name for p in out.glob("confusion-*.png"))
    assert pngs == ["confusion-fer-copy--faces.png", "confusion-fer-copy--fer2013-PrivateTest.png",
                    "confusion-fer2013-minixception--faces.png", "confusion-fer2013-minixception--fer2013-PrivateTest.png"]
    with Image.open(out / pngs[0]) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200


def test_confusion_png(tmp_path):
    m = compute_metrics([0, 1, 1], [0, 1, 0], ["a", "b"])
    path = plot_confusion(Evaluation("m", "d", m, {}), tmp_path / "c" / "x.png")
    with Image.open(path) as im:
        assert im.format == "PNG"
        a = np.asarray(im.convert("RGB"))
    assert (a.std(axis=(0, 1)) > 10).all()  # a drawn figure, not a blank canvas


def test_detect_crop_mode_leaves_faceless_images_out(tmp_path):
    root = tmp_path / "photos"
    (root / "happy").mkdir(parents=True)
    shutil.copy(DATA / "astronaut.png", root / "happy" / "a.png")
    Image.new("RGB", (200, 150), (30, 90, 200)).save(root / "happy" / "sky.png")
    ev = evaluate([FER], [root], EvaluateOptions(device="cpu", crop="detect")).get(FER, "photos")
    assert ev.no_face == 1 and ev.metrics.n == 1
    assert any("1 images without a detected face were left out" in n for n in ev.notes)


# --------------------------------------------------------------------------- leakage


def test_overlap_with_training_data_is_refused(folder, tmp_path):
    leaked = model_copy(tmp_path / "leaky", [file_sha256(folder / "Sadness" / "1.png")])
    with pytest.raises(EvaluateError, match=(
            r"1 of 5 test images of 'faces' are in the training data of model 'leaky' \(e.g. .*Sadness/1.png\)\. "
            r"Evaluating a model on its own training images overstates its accuracy; .* --allow-overlap")):
        evaluate([str(leaked)], [folder], EvaluateOptions(device="cpu"))
    report = evaluate([str(leaked)], [folder], EvaluateOptions(device="cpu", allow_overlap=True))
    ev = report.get("leaky", "faces")
    assert ev.overlap == 1 and ev.overlap_checked and report.comparison()[0]["overlap"] == 1
    assert any(n.startswith("WARNING: 1 of 5 test images are in the model's training data") for n in ev.notes)


def test_overlap_by_pixels_on_fer_csv(fer_csv, tmp_path):
    ts = load_test_set(fer_csv)
    leaked = model_copy(tmp_path / "leaky", [pixel_hash(ts.pixels[2]), pixel_hash(ts.pixels[4])])
    with pytest.raises(EvaluateError, match=r"2 of 5 test images of 'fer2013' are in the training data .*row 3, .*row 5"):
        evaluate([str(leaked)], [fer_csv], EvaluateOptions(device="cpu"))
    clean = model_copy(tmp_path / "clean", ["0" * 64])
    ev = evaluate([str(clean)], [fer_csv], EvaluateOptions(device="cpu")).get("clean", "fer2013")
    assert ev.overlap == 0 and ev.overlap_checked


# --------------------------------------------------------------------------- errors


def test_evaluate_errors(folder, tmp_path):
    with pytest.raises(EvaluateError, match=r"unknown model 'nope'"):
        evaluate(["nope"], [folder], EvaluateOptions(device="cpu"))
    root = tmp_path / "odd"
    (root / "smirk").mkdir(parents=True)
    Image.new("RGB", (48, 48)).save(root / "smirk" / "a.png")
    with pytest.raises(EvaluateError, match=r"share no class: .*test labels \['smirk'\]; give --map FILE"):
        evaluate([FER], [root], EvaluateOptions(device="cpu"))
    for kwargs, message in (
        ({"crop": "face"}, r"crop must be one of none, detect; got 'face'"),
        ({"device": "gpu"}, r"device must be one of auto, cpu, cuda; got 'gpu'"),
        ({"batch_size": 0}, r"batch_size must be >= 1, got 0"),
        ({"detector": "yolo"}, r"unknown detector 'yolo'; available: blazeface-full, blazeface-short"),
        ({"min_face_score": 2.0}, r"min_face_score must be in \[0, 1\], got 2.0"),
    ):
        with pytest.raises(EvaluateError, match=message):
            EvaluateOptions(**kwargs)
    with pytest.raises(EvaluateError, match=r"give at least one model"):
        evaluate([], [folder])
    with pytest.raises(EvaluateError, match=r"give at least one test set \(--data DIR_OR_CSV\)"):
        evaluate([FER], [])
    with pytest.raises(EvaluateError, match=r"models must be distinct"):
        evaluate([FER, FER], [folder])
    (root / "smirk" / "b.png").write_bytes(b"not a png")
    with pytest.raises(EvaluateError, match=r"test set odd: .*smirk/b.png: cannot decode image"):
        evaluate([FER], [root], EvaluateOptions(device="cpu", label_map=(("smirk", "happy"),)))


# --------------------------------------------------------------------------- CLI


def test_cli_evaluate(folder, tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(app, ["evaluate", FER, "--data", str(folder), "-o", str(out), "--device", "cpu", "-q"])
    assert res.exit_code == 0, res.output
    assert "fer2013-minixception" in res.output and "not checked" in res.output
    assert (out / "comparison.csv").is_file() and (out / "confusion-fer2013-minixception--faces.png").is_file()
    leaked = model_copy(tmp_path / "leaky", [file_sha256(next((folder / "Anger").iterdir()))])
    res = runner.invoke(app, ["evaluate", str(leaked), "--data", str(folder), "-o", str(out), "-q"])
    assert res.exit_code == 2
    assert "are in the training data of model 'leaky'" in " ".join(res.output.split())
    res = runner.invoke(app, ["evaluate", str(leaked), "--data", str(folder), "-o", str(out), "-q", "--allow-overlap"])
    assert res.exit_code == 0 and "WARNING: 1 of 5 test images" in " ".join(res.output.split())
    (tmp_path / "map.json").write_text('{"contempt": "disgust"}')
    res = runner.invoke(app, ["evaluate", FER, "--data", str(folder), "-o", str(out), "-q", "--map", str(tmp_path / "map.json")])
    assert res.exit_code == 0
    assert json.loads((out / "evaluation.json").read_text())["evaluations"][0]["n"] == 5
