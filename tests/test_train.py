"""exe_stream.train and ``exe-stream train``: learning on a generated learnable set, the split,
resume after an interruption, starting weights (no pickle, ImageNet offline), freezing,
augmentation, imbalance, the grid, autoencoder pretraining, MLflow, recipe errors."""

from __future__ import annotations

import json
import pickle
import shutil
import sys
import types
import urllib.error
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import DEVICES
import torch
from PIL import Image
from typer.testing import CliRunner

from exe_stream.cli import app
from exe_stream.data.recipe import RecipeError
from exe_stream.models import build_network, load_card, load_model
from exe_stream.shards import write_table
from exe_stream.train import (
    TrainConfig, TrainData, TrainError, config_from_table, load_data, load_grid, load_train_config, run_grid,
    split_samples, train,
)
from exe_stream.train.data import (
    Sample, augmentation, balanced_sampler, class_weights, load_image, normalise,
)
from exe_stream.metrics import compute_metrics
from exe_stream.train.loop import CHECKPOINT_DIR, HASHES_FILE, RUN_FILE, STATE_FILE, lr_at
from exe_stream.train.network import build_classifier, freeze, load_matching

ROOT = Path(__file__).parent.parent
LABELS = ("diagonal", "horizontal", "vertical")
runner = CliRunner()


def make_gratings(root: Path, n: int = 30, size: int = 32, seed: int = 0) -> Path:
    """A learnable 3-class set: noisy sine gratings, horizontal / vertical / diagonal stripes with
    random frequency, phase and colour (the class is the orientation only)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for label, a in (("horizontal", 0.0), ("vertical", np.pi / 2), ("diagonal", np.pi / 4)):
        d = root / label
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            g = np.sin(rng.uniform(0.25, 0.5) * (xx * np.sin(a) + yy * np.cos(a)) + rng.uniform(0, 2 * np.pi))
            img = 127 + 100 * g[..., None] * rng.uniform(0.3, 1.0, 3) + rng.normal(0, 10, (size, size, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{label}-{i:03d}.png")
    return root


def tiny(**kw) -> TrainConfig:
    """A small resnet18 from scratch at 32 x 32 (a few hundred ms per epoch on 2 cores)."""
    base = dict(architecture="resnet18", weights="none", input_size=32, epochs=4, batch_size=16, lr=1e-3,
                augmentation="none", schedule="none", device="cpu", mlflow="off")
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The networks here are tiny (32 x 32): one torch thread is about as fast as two on a quiet
    2-core machine, and several times faster when other work shares the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def gratings(tmp_path_factory) -> Path:
    return make_gratings(tmp_path_factory.mktemp("gratings"))


@pytest.fixture(scope="module")
def trained(gratings, tmp_path_factory):
    """(run record, output dir) of an uninterrupted 4-epoch run of ``tiny()``."""
    out = tmp_path_factory.mktemp("runs") / "full"
    return train(tiny(), gratings, out), out


def _val_images(data: TrainData, config: TrainConfig) -> tuple[torch.Tensor, list[str]]:
    _, val = split_samples(data, config.val_fraction, config.seed)
    x = torch.stack([normalise(load_image(data.samples[i].path, config.input_size, config.colour),
                               config.mean, config.std) for i in val])
    return x, [data.samples[i].label for i in val]


# Learning ----------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_training_learns_and_the_card_is_the_best_epoch(gratings, trained, tmp_path, device):
    record, out = trained if device == "cpu" else (train(tiny(device=device), gratings, tmp_path / "gpu"), tmp_path / "gpu")
    # Chance is 1/3: after 4 epochs from random weights the orientation is learnt.
    assert record.best.val_accuracy > 0.8, [e.val_accuracy for e in record.epochs]
    assert record.epochs[-1].train_loss < record.epochs[0].train_loss
    assert len(record.epochs) == 4 and record.labels == list(LABELS)
    assert record.data["train"] == {"diagonal": 24, "horizontal": 24, "vertical": 24}
    assert record.data["val"] == {"diagonal": 6, "horizontal": 6, "vertical": 6}
    # The card scan loads is the best epoch: it classifies the validation images exactly as recorded.
    model = load_model(str(out), "cpu")
    assert model.labels == LABELS and model.card.input_size == (32, 32) and model.card.crop_margin == 0.15
    x, truth = _val_images(load_data(gratings), tiny())
    pred = [LABELS[i] for i in model.predict(x).argmax(1).tolist()]
    acc = float(np.mean([p == t for p, t in zip(pred, truth)]))
    assert acc == pytest.approx(record.best.val_accuracy)
    assert model.card.extra["training"]["best_epoch"] == record.best_epoch
    assert record.best_value == max(e.val_macro_f1 for e in record.epochs)
    # The run record and the checkpoint directory after a finished run.
    saved = json.loads((out / RUN_FILE).read_text())
    assert saved["best_epoch"] == record.best_epoch and len(saved["epochs"]) == 4
    assert saved["timings"]["total_s"] > 0 and saved["timings"]["train_s"] > 0
    assert saved["config"]["architecture"] == "resnet18"
    assert json.loads((out / CHECKPOINT_DIR / STATE_FILE).read_text())["finished"] is True
    assert not list((out / CHECKPOINT_DIR).glob("*.safetensors"))  # the card holds the weights


def test_train_hashes_list_the_training_split_only(gratings, trained):
    record, out = trained
    data = load_data(gratings)
    train_idx, val_idx = split_samples(data, 0.2, 0)
    lines = [ln for ln in (out / HASHES_FILE).read_text().splitlines() if ln and not ln.startswith("#")]
    assert set(lines) == {data.samples[i].sha256 for i in train_idx}
    assert not set(lines) & {data.samples[i].sha256 for i in val_idx}
    # evaluate's leakage check reads the same file.
    from exe_stream.evaluate import training_hashes

    assert training_hashes(out) == set(lines)


def test_metrics():
    # Everything predicted as class 0 (the validation metric of the loop: exe_stream.metrics).
    m = compute_metrics(np.array([0] * 5 + [1] * 5), np.zeros(10, np.int64), ("a", "b"))
    assert m.macro_f1 == pytest.approx((2 * 5 / (10 + 5) + 0) / 2)
    perfect = compute_metrics(np.repeat([0, 1, 2], [3, 4, 5]), np.repeat([0, 1, 2], [3, 4, 5]), ("a", "b", "c"))
    assert perfect.macro_f1 == 1.0


# Split --------------------------------------------------------------------------------------


def test_split_is_deterministic_stratified_and_by_content(gratings, tmp_path):
    data = load_data(gratings)
    train_a, val_a = split_samples(data, 0.2, 0)
    assert split_samples(data, 0.2, 0) == (train_a, val_a)
    assert not set(train_a) & set(val_a) and len(train_a) + len(val_a) == 90
    assert data.counts(val_a) == {"diagonal": 6, "horizontal": 6, "vertical": 6}
    # Renamed files, another folder: the same images land on the same side (by content hash).
    copy = tmp_path / "copy"
    for s in data.samples:
        (copy / s.label).mkdir(parents=True, exist_ok=True)
        shutil.copy(s.path, copy / s.label / f"z{s.sha256[:12]}.png")
    other = load_data(copy)
    _, val_b = split_samples(other, 0.2, 0)
    assert {other.samples[i].sha256 for i in val_b} == {data.samples[i].sha256 for i in val_a}
    # Another seed holds out other images.
    _, val_c = split_samples(data, 0.2, 1)
    assert set(val_c) != set(val_a)
    # Crops of one photo (same group) stay together.
    samples = [Sample(Path(f"/x/{i}.png"), "a" if i < 10 else "b", f"h{i}", f"g{i // 2}") for i in range(20)]
    grouped = TrainData(tuple(samples), ("a", "b"), "test")
    tr, va = split_samples(grouped, 0.3, 0)
    assert {samples[i].group for i in tr}.isdisjoint({samples[i].group for i in va})


def test_split_needs_two_images_per_label():
    samples = (Sample(Path("/a.png"), "a", "h1", "h1"), Sample(Path("/b.png"), "b", "h2", "h2"),
               Sample(Path("/b2.png"), "b", "h3", "h3"))
    with pytest.raises(TrainError, match=r"label 'a' has 1 distinct image\(s\); a train/validation split needs at least 2"):
        split_samples(TrainData(samples, ("a", "b"), "t"), 0.2, 0)


def test_data_from_clean_arrow(gratings, tmp_path):
    data_dir = tmp_path / "DATA"
    shutil.copytree(gratings, data_dir / "faces")
    rows = []
    for i, p in enumerate(sorted((data_dir / "faces").rglob("*.png"))):
        rows.append({"path": str(p.relative_to(data_dir)), "label": p.parent.name, "keep": i % 10 != 0,
                     "image_sha256": f"{i // 3:064x}", "crop_sha256": f"{i + 1000:064x}", "crop_margin": 0.25})
    write_table(data_dir / "clean.arrow", pa.Table.from_pylist(rows))
    data = load_data(data_dir, labels=("vertical", "horizontal"))
    assert data.labels == ("vertical", "horizontal") and data.crop_margin == 0.25
    kept = [r for r in rows if r["keep"] and r["label"] in data.labels]
    assert len(data.samples) == len(kept)
    assert {s.sha256 for s in data.samples} == {r["crop_sha256"] for r in kept}
    # The card takes the crops' margin (scan then crops film faces the same way).
    record = train(tiny(epochs=1, labels=("vertical", "horizontal")), data_dir, tmp_path / "m")
    assert load_card(tmp_path / "m").crop_margin == 0.25 and record.labels == ["vertical", "horizontal"]
    with pytest.raises(TrainError, match=r"no images for label\(s\) \['angry'\]; labels found: "):
        load_data(data_dir, labels=("angry", "vertical"))
    rows[3]["crop_margin"] = 0.5
    write_table(data_dir / "clean.arrow", pa.Table.from_pylist(rows))
    with pytest.raises(TrainError, match=r"crops were cut with different margins \[0.25, 0.5\]"):
        load_data(data_dir)


def test_data_errors(tmp_path):
    with pytest.raises(TrainError, match=r"training data .*nowhere does not exist"):
        load_data(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainError, match=r"holds neither clean.arrow \(exe-stream data clean\) nor an image folder"):
        load_data(tmp_path / "empty")
    (tmp_path / "one" / "happy").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "happy" / "a.png")
    with pytest.raises(TrainError, match=r"training needs at least 2 labels, found \['happy'\]"):
        load_data(tmp_path / "one")
    (tmp_path / "one" / "happy" / "b.png").write_bytes(b"not a png")
    with pytest.raises(TrainError, match=r"cannot read image .*b.png: "):
        load_image(tmp_path / "one" / "happy" / "b.png", 32, "rgb")
    d = tmp_path / "DATA"
    d.mkdir()
    write_table(d / "clean.arrow", pa.Table.from_pylist([{"path": "x.png", "label": "a"}]))
    with pytest.raises(TrainError, match=r"clean.arrow lacks column\(s\) \['keep'\]; re-run exe-stream data clean"):
        load_data(d)
    write_table(d / "clean.arrow", pa.Table.from_pylist([{"path": "x.png", "label": "a", "keep": False}]))
    with pytest.raises(TrainError, match=r"clean.arrow: no rows with keep = true \(1 rows, all dropped\)"):
        load_data(d)
    write_table(d / "clean.arrow", pa.Table.from_pylist([{"path": "x.png", "label": "a", "keep": True}]))
    with pytest.raises(TrainError, match=r"clean.arrow: crop .*x.png does not exist; re-run exe-stream data extract and clean"):
        load_data(d)
    (d / "clean.arrow").write_bytes(b"garbage")
    with pytest.raises(TrainError, match=r"cannot read .*clean.arrow: "):
        load_data(d)


# Resume -------------------------------------------------------------------------------------


class Stop(Exception):
    pass


def test_interrupted_run_resumes_without_lost_or_repeated_epochs(gratings, trained, tmp_path):
    full, full_dir = trained
    out = tmp_path / "run"

    def stop_after_2(m):
        if m.epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        train(tiny(), gratings, out, on_epoch_end=stop_after_2)
    state = json.loads((out / CHECKPOINT_DIR / STATE_FILE).read_text())
    assert state["epochs_done"] == 2 and not state["finished"] and not (out / "model.json").exists()
    seen = []
    record = train(tiny(), gratings, out, on_epoch_end=lambda m: seen.append(m.epoch))
    assert seen == [3, 4]  # nothing redone, nothing skipped
    assert [e.epoch for e in record.epochs] == [1, 2, 3, 4]
    assert [s["first_epoch"] for s in record.sessions] == [1, 3]
    # The same result as the uninterrupted run: same metrics every epoch, same best weights.
    for a, b in zip(record.epochs, full.epochs):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4)
        assert a.val_accuracy == b.val_accuracy
    assert record.best_epoch == full.best_epoch
    wa = load_model(str(out)).networks[0].state_dict()
    wb = load_model(str(full_dir)).networks[0].state_dict()
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-4) for k in wa)


def test_finished_run_is_not_trained_again_and_another_recipe_is_refused(gratings, trained):
    full, out = trained
    called = []
    again = train(tiny(), gratings, out, on_epoch_end=called.append)
    assert called == [] and again.best_epoch == full.best_epoch and again.model_hash == full.model_hash
    # device is not part of the run's identity; the learning rate is.
    assert train(tiny(device="auto"), gratings, out).model_hash == full.model_hash
    with pytest.raises(TrainError, match=r"holds a run of another configuration or data .* give another --out"):
        train(tiny(lr=5e-4), gratings, out)


# Starting weights ---------------------------------------------------------------------------


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_starting_weights_are_refused_unopened(gratings, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    for name in ("start.pt", "start.pth", "start.ckpt", "start.pkl"):
        evil = tmp_path / name
        evil.write_bytes(pickle.dumps({"fc.weight": _Payload(marker)}))
        monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
        monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("pickle.load called"))
        with pytest.raises(TrainError, match=rf"{name}' is a pickled checkpoint; .* refused"):
            train(tiny(weights=str(evil), epochs=1), gratings, tmp_path / "out")
    assert not marker.exists()
    with pytest.raises(TrainError, match=r"starting weights '.*missing.safetensors' do not exist; weights must be "
                                         r"'imagenet', 'none', a .safetensors file or a model directory"):
        train(tiny(weights=str(tmp_path / "missing.safetensors")), gratings, tmp_path / "out")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(TrainError, match=r"w.npz' must be a .safetensors file or a model directory"):
        train(tiny(weights=str(tmp_path / "w.npz")), gratings, tmp_path / "out")


def test_safetensors_starting_weights_load_by_name_and_shape(tmp_path):
    from safetensors.torch import save_file
    import torchvision

    ref = torchvision.models.resnet18(num_classes=10)  # another head size
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "start.safetensors"))
    config = tiny(weights=str(tmp_path / "start.safetensors"), colour="gray")
    card = load_card_for(config)
    net, report = build_classifier(card, config)
    own = net.state_dict()
    assert report["skipped"] == ["fc.bias", "fc.weight"] and set(report["not_loaded"]) == {"fc.bias", "fc.weight"}
    assert torch.equal(own["layer4.1.conv2.weight"], ref.state_dict()["layer4.1.conv2.weight"])
    # A grey network's first convolution is the sum over the three colour channels.
    assert own["conv1.weight"].shape[1] == 1
    assert torch.allclose(own["conv1.weight"], ref.conv1.weight.sum(1, keepdim=True))
    other = {"encoder.x": torch.zeros(3)}
    with pytest.raises(TrainError, match=r"no tensor of the starting weights fits architecture 'resnet18'"):
        load_matching(net, other, "resnet18")


def load_card_for(config: TrainConfig, labels=LABELS):
    from exe_stream.train.loop import _card

    return _card(config, "t", labels, 0.15, {}, "test")


def test_imagenet_weights_come_through_the_hub_cache_without_pickle(monkeypatch):
    import torchvision

    calls = []
    ref = torchvision.models.resnet18()  # 1000 classes, as torchvision's ImageNet file

    def fake_download(url, **kw):
        calls.append((url, kw))
        return ref.state_dict()

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    config = tiny(weights="imagenet")
    net, report = build_classifier(load_card_for(config), config)
    url, kw = calls[0]
    assert url == torchvision.models.ResNet18_Weights.DEFAULT.url
    assert kw["weights_only"] is True and kw["check_hash"] is True
    assert report["source"] == "imagenet" and report["not_loaded"] == ["fc.bias", "fc.weight"]
    assert torch.equal(net.state_dict()["layer1.0.conv1.weight"], ref.state_dict()["layer1.0.conv1.weight"])
    assert net.fc.out_features == 3


def test_imagenet_weights_offline_say_how_to_prefetch(gratings, tmp_path, monkeypatch):
    def offline(url, **kw):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(TrainError, match=r"cannot get the ImageNet weights of mobilenet_v2 from https://.*URLError.*"
                                         r"torchvision.models.mobilenet_v2\(weights='DEFAULT'\).*hub/checkpoints.*"
                                         r"weights = \"none\" or a .safetensors file"):
        train(tiny(architecture="mobilenet_v2", weights="imagenet"), gratings, tmp_path / "m")


# Freezing, augmentation, imbalance, schedules ------------------------------------------------


def test_head_only_training_leaves_the_backbone_untouched(gratings, tmp_path):
    config = tiny(trainable_blocks=0, epochs=1)
    record = train(config, gratings, tmp_path / "m")
    start, _ = build_classifier(load_card_for(config), config)
    after = load_model(str(tmp_path / "m")).networks[0].state_dict()
    before = start.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["fc.bias", "fc.weight"], changed  # BatchNorm statistics included
    assert record.epochs[0].train_loss > 0
    net = build_network(load_card_for(config))
    freeze(net, "resnet18", 1)
    learning = {n.split(".")[0] for n, p in net.named_parameters() if p.requires_grad}
    assert learning == {"layer4", "fc"}
    freeze(net, "resnet18", -1)
    assert all(p.requires_grad for p in net.parameters())


def test_augmentation_levels():
    torch.manual_seed(0)
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    assert augmentation("none") is None
    for level in ("light", "mid", "high"):
        out = augmentation(level)(img)
        assert out.shape == img.shape and out.dtype == torch.uint8
    torch.manual_seed(1)
    outs = [augmentation("high")(img) for _ in range(4)]
    assert any(not torch.equal(o, img) for o in outs)
    assert augmentation("high", "gray")(img[:1]).shape == (1, 32, 32)
    with pytest.raises(TrainError, match=r"augmentation must be one of none, light, mid, high; got 'max'"):
        augmentation("max")


def test_class_weights_and_balanced_resampling():
    w = class_weights([0, 0, 0, 1], 2)
    assert torch.allclose(w, torch.tensor([4 / 6, 2.0]))
    targets = [0] * 90 + [1] * 10
    drawn = list(balanced_sampler(targets, torch.Generator().manual_seed(0)))
    share = np.mean([targets[i] for i in drawn] * 1)
    assert len(drawn) == 100 and 0.35 < share < 0.65  # 10 % of the set, about half the draws


def test_learning_rate_schedules():
    assert lr_at(tiny(schedule="none", lr=0.1), 3) == 0.1
    cos = tiny(schedule="cosine", lr=0.1, epochs=4)
    assert [round(lr_at(cos, e), 6) for e in range(4)] == [0.1, 0.085355, 0.05, 0.014645]
    step = tiny(schedule="step", lr=0.1, step_size=2, gamma=0.5)
    assert [lr_at(step, e) for e in range(5)] == [0.1, 0.1, 0.05, 0.05, 0.025]


def test_extra_dense_sgd_resampling_card_loads(gratings, tmp_path):
    config = tiny(extra_dense=16, dropout=0.2, optimizer="sgd", lr=0.01, schedule="step", step_size=1,
                  imbalance="resample", augmentation="mid", epochs=2, architecture="mobilenet_v2")
    record = train(config, gratings, tmp_path / "m")
    card = load_card(tmp_path / "m")
    assert card.extra["head_hidden"] == 16 and card.architecture == "mobilenet_v2"
    assert [e.lr for e in record.epochs] == [0.01, 0.001]
    m = load_model(str(tmp_path / "m"))
    assert m.predict(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


# Configuration ----------------------------------------------------------------------------


def test_recipe_train_table_errors(tmp_path):
    with pytest.raises(RecipeError, match=r"recipe r.toml \[train\]: unknown key 'optimiser'; allowed: name, "):
        config_from_table({"optimiser": "adam"}, "recipe r.toml [train]")
    with pytest.raises(RecipeError, match=r"\[train\]: augmentation must be one of none, light, mid, high; got 'extreme'"):
        config_from_table({"augmentation": "extreme"}, "recipe r.toml [train]")
    with pytest.raises(RecipeError, match=r"\[train\]: lr must be a number, got '0.1'"):
        config_from_table({"lr": "0.1"}, "recipe r.toml [train]")
    with pytest.raises(RecipeError, match=r"architecture must be one of resnet18, resnet50, efficientnet_b0, "
                                          r"mobilenet_v2, vgg16, conv_autoencoder; got 'vgg19'"):
        config_from_table({"architecture": "vgg19"}, "recipe r.toml [train]")
    with pytest.raises(RecipeError, match=r"\[train.autoencoder\]: unknown key 'epoch'; allowed: unlabelled, "):
        config_from_table({"architecture": "conv_autoencoder", "weights": "none", "autoencoder": {"epoch": 3}},
                          "recipe r.toml [train]")
    with pytest.raises(RecipeError, match=r"\[train.autoencoder\] pretrains architecture 'conv_autoencoder', "
                                          r"but architecture is 'resnet18'"):
        config_from_table({"autoencoder": {"epochs": 3}}, "recipe r.toml [train]")
    with pytest.raises(RecipeError, match=r"has no imagenet weights; use weights = 'none' or a file"):
        config_from_table({"architecture": "conv_autoencoder"}, "recipe r.toml [train]")
    path = tmp_path / "r.toml"
    path.write_text('data_dir = "d"\n[train]\nepochs = 0\n')
    with pytest.raises(RecipeError, match=rf"recipe {path} \[train\]: epochs must be >= 1, got 0"):
        load_train_config(path)
    path.write_text('[train]\nepochs = 3\nlabels = ["a", "b"]\n')
    c = load_train_config(path, {"device": "cpu"})
    assert c.epochs == 3 and c.labels == ("a", "b") and c.device == "cpu" and c.autoencoder is None


@pytest.mark.parametrize("table, message", [
    ({"weights": ""}, r"weights must be 'imagenet', 'none' or a path to a .safetensors file or model directory"),
    ({"trainable_blocks": -2}, r"trainable_blocks must be -1 \(all\) or >= 0, got -2"),
    ({"input_size": 8}, r"input_size must be in \[16, 1024\], got 8"),
    ({"crop_margin": 3.0}, r"crop_margin must be in \[0, 2\], got 3.0"),
    ({"labels": ["a", "a"]}, r"labels must be unique, got \['a', 'a'\]"),
    ({"labels": ["a", ""]}, r"labels must be an array of non-empty strings"),
    ({"lr": 0}, r"lr must be > 0, got 0.0"),
    ({"gamma": -1}, r"gamma must be > 0, got -1.0"),
    ({"momentum": 1.0}, r"weight_decay must be >= 0 and momentum in \[0, 1\), got 0.0, 1.0"),
    ({"batch_size": 0}, r"batch_size must be >= 1, got 0"),
    ({"step_size": 0}, r"step_size must be >= 1, got 0"),
    ({"extra_dense": -1}, r"extra_dense and num_workers must be >= 0, got -1, 0"),
    ({"dropout": 1.0}, r"dropout and label_smoothing must be in \[0, 1\), got 1.0, 0.0"),
    ({"val_fraction": 0.0}, r"val_fraction must be in \(0, 1\), got 0.0"),
    ({"optimizer": "lion"}, r"optimizer must be one of adam, adamw, sgd; got 'lion'"),
    ({"schedule": "linear"}, r"schedule must be one of none, cosine, step; got 'linear'"),
    ({"imbalance": "oversample"}, r"imbalance must be one of none, class_weights, resample; got 'oversample'"),
    ({"metric": "f1"}, r"metric must be one of macro_f1, accuracy; got 'f1'"),
    ({"device": "tpu"}, r"device must be one of auto, cpu, cuda; got 'tpu'"),
    ({"colour": "bgr"}, r"colour must be one of rgb, gray; got 'bgr'"),
    ({"mlflow": "on"}, r"mlflow must be one of auto, off; got 'on'"),
    ({"architecture": "conv_autoencoder", "weights": "none", "extra_dense": 8},
     r"extra_dense is for the torchvision backbones, not 'conv_autoencoder'"),
    ({"architecture": "conv_autoencoder", "weights": "none", "autoencoder": {"epochs": 0}},
     r"autoencoder.epochs must be >= 1, got 0"),
    ({"architecture": "conv_autoencoder", "weights": "none", "autoencoder": {"lr": 0}},
     r"autoencoder.lr must be > 0, got 0.0"),
    ({"architecture": "conv_autoencoder", "weights": "none", "autoencoder": {"batch_size": 0}},
     r"autoencoder.batch_size must be >= 1, got 0"),
    ({"architecture": "conv_autoencoder", "weights": "none", "autoencoder": {"labelled_fraction": 1.5}},
     r"autoencoder.labelled_fraction must be in \(0, 1\], got 1.5"),
])
def test_train_value_errors_name_the_key_and_what_is_allowed(table, message):
    with pytest.raises(RecipeError, match=r"^recipe r.toml \[train\]: " + message):
        config_from_table(table, "recipe r.toml [train]")


def test_autoencoder_unlabelled_folder_errors(gratings, tmp_path):
    from exe_stream.train import AutoencoderConfig

    def cfg(folder):
        return tiny(architecture="conv_autoencoder", autoencoder=AutoencoderConfig(epochs=1, unlabelled=str(folder)))

    with pytest.raises(TrainError, match=r"autoencoder.unlabelled: .*nowhere is not a directory of face crops"):
        train(cfg(tmp_path / "nowhere"), gratings, tmp_path / "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainError, match=r"autoencoder.unlabelled: no .png, .jpg, .jpeg images under "):
        train(cfg(tmp_path / "empty"), gratings, tmp_path / "b")
    data = load_data(gratings)
    _, val = split_samples(data, 0.2, 0)
    (tmp_path / "val").mkdir()
    for i in val:
        shutil.copy(data.samples[i].path, tmp_path / "val")
    with pytest.raises(TrainError, match=r"every image under .*val is a validation image"):
        train(cfg(tmp_path / "val"), gratings, tmp_path / "c")


def test_bundled_recipes_and_grid_parse():
    grid = load_grid(ROOT / "training" / "grids" / "transfer-12.toml")
    assert len(grid.variants) == 12 and len({v.name for v in grid.variants}) == 12
    assert {v.config.augmentation for v in grid.variants} == {"none", "light", "mid", "high"}
    assert {v.config.trainable_blocks for v in grid.variants} >= {0, 1, 2, -1}
    assert {v.config.batch_size for v in grid.variants} == {16, 32, 64}
    assert {v.config.extra_dense for v in grid.variants} == {0, 256}
    assert {v.config.imbalance for v in grid.variants} == {"none", "class_weights"}
    assert len({v.config.lr for v in grid.variants}) >= 3
    for recipe in sorted((ROOT / "training" / "recipes").glob("*.toml")):
        load_train_config(recipe)


# Grid -----------------------------------------------------------------------------------------


def test_grid_trains_variants_resumably_and_writes_the_table(gratings, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(f'''
name = "mini"
data_dir = "{gratings}"
[train]
architecture = "resnet18"
weights = "none"
input_size = 32
epochs = 2
batch_size = 16
augmentation = "none"
device = "cpu"
mlflow = "off"
[grid]
[[grid.variants]]
name = "a-lr3"
lr = 1e-3
[[grid.variants]]
name = "b-light-head"
augmentation = "light"
trainable_blocks = 0
''')
    result = run_grid(grid, None, tmp_path / "out")
    assert result.ok and [r["variant"] for r in result.rows] == ["a-lr3", "b-light-head"]
    csv_text = result.csv_path.read_text().splitlines()
    assert csv_text[0].startswith("variant,changes,status,best_epoch")
    assert len(csv_text) == 3 and "a-lr3,lr=0.001,done" in csv_text[1]
    md = result.markdown_path.read_text()
    assert "| b-light-head | augmentation=light, trainable_blocks=0 |" in md
    for r in result.rows:
        rec = json.loads((tmp_path / "out" / r["variant"] / RUN_FILE).read_text())
        assert r["val_accuracy"] == round(rec["epochs"][rec["best_epoch"] - 1]["val_accuracy"], 4)
        assert load_card(tmp_path / "out" / r["variant"]).labels == LABELS
    # Again: finished variants are not retrained, the table is the same.
    epochs = []
    again = run_grid(grid, None, tmp_path / "out", on_epoch_end=epochs.append)
    assert epochs == [] and again.rows == result.rows
    r = runner.invoke(app, ["train", "--grid", str(grid), "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "[2/2] b-light-head: augmentation=light, trainable_blocks=0" in r.output
    assert "| a-lr3 | lr=0.001 |" in r.output and "results.md" in r.output
    bad = tmp_path / "bad.toml"
    bad.write_text('[train]\n[grid]\n[[grid.variants]]\nname = "x"\n[[grid.variants]]\nname = "x"\n')
    with pytest.raises(RecipeError, match=r"\[grid.variants\] #2: name 'x' is used twice"):
        load_grid(bad)
    bad.write_text('[train]\n[grid]\n[[grid.variants]]\nname = "x"\nlearning_rate = 1\n')
    with pytest.raises(RecipeError, match=r"\[grid.variants\] #1: unknown key 'learning_rate'"):
        load_grid(bad)
    bad.write_text('[train]\n[grid]\n[[grid.variants]]\nname = "a b"\n')
    with pytest.raises(RecipeError, match=r"#1: name must be a string of letters, digits, '.', '_', '-' "
                                          r"\(the variant's directory\), got 'a b'"):
        load_grid(bad)
    bad.write_text('[train]\n[grid]\nrecipes = "x"\n')
    with pytest.raises(RecipeError, match=r"\[grid\]: unknown key 'recipes'; allowed: recipe, variants"):
        load_grid(bad)
    bad.write_text('[train]\n[grid]\nvariants = []\n')
    with pytest.raises(RecipeError, match=r"variants must be a non-empty array of tables \(\[\[grid.variants\]\]\)"):
        load_grid(bad)
    bad.write_text('[train]\n')
    with pytest.raises(RecipeError, match=r"a grid needs a \[grid\] table with \[\[grid.variants\]\]"):
        load_grid(bad)
    bad.write_text('[grid]\n[[grid.variants]]\nname = "x"\n')
    with pytest.raises(RecipeError, match=r"no data_dir; add data_dir = \"DIR\" or give --data DIR"):
        run_grid(bad, None, tmp_path / "o2")


def test_a_failing_variant_is_recorded_and_the_grid_goes_on(gratings, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(f'data_dir = "{gratings}"\n[train]\nweights = "none"\n[grid]\n'
                    f'[[grid.variants]]\nname = "missing"\nweights = "{tmp_path / "w.safetensors"}"\n'
                    f'[[grid.variants]]\nname = "pickled"\nweights = "{tmp_path / "w.pt"}"\n')
    (tmp_path / "w.pt").write_bytes(b"x")
    result = run_grid(grid, None, tmp_path / "out")
    assert not result.ok and [r["status"] for r in result.rows] == ["failed", "failed"]
    assert "do not exist" in result.rows[0]["reason"] and "pickled checkpoint" in result.rows[1]["reason"]
    assert "| missing | weights=" in result.markdown_path.read_text()
    r = runner.invoke(app, ["train", "--grid", str(grid), "-o", str(tmp_path / "out"), "-q"])
    assert r.exit_code == 1 and "failed:" in r.output


# Autoencoder ----------------------------------------------------------------------------------


def test_autoencoder_pretraining_then_head_on_a_labelled_fraction(gratings, tmp_path):
    from safetensors.torch import load_file

    from exe_stream.train import AutoencoderConfig

    config = tiny(architecture="conv_autoencoder", weights="none", trainable_blocks=0, epochs=3, lr=3e-3,
                  autoencoder=AutoencoderConfig(epochs=4, batch_size=16, lr=3e-3, labelled_fraction=0.25))
    record = train(config, gratings, tmp_path / "m")
    losses = [e["loss"] for e in record.autoencoder["epochs"]]
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0]  # it learns to reconstruct
    assert record.autoencoder["images"] == 72  # the whole training split, labels unused
    assert record.data["train"] == {"diagonal": 6, "horizontal": 6, "vertical": 6}  # 25 % labelled
    model = load_model(str(tmp_path / "m"))
    assert model.card.architecture == "conv_autoencoder" and model.labels == LABELS
    # Head only: the classifier's encoder is the pretrained one, unchanged.
    enc = load_file(str(tmp_path / "m" / "autoencoder" / "encoder.safetensors"))
    weights = model.networks[0].state_dict()
    assert enc and all(torch.equal(weights[k], v) for k, v in enc.items())
    # From another folder of unlabelled crops, recursively.
    config2 = config.with_overrides(autoencoder=AutoencoderConfig(epochs=1, unlabelled=str(gratings / "vertical")))
    record2 = train(config2, gratings, tmp_path / "m2")
    # The folder's validation images are left out of pretraining.
    assert record2.autoencoder["images"] == 24 and record2.autoencoder["validation_left_out"] == 6
    assert record2.autoencoder["source"] == str(gratings / "vertical")


# MLflow and the command line -----------------------------------------------------------------


def test_mlflow_logs_when_importable_and_never_stops_training(gratings, tmp_path, monkeypatch):
    calls = []
    fake = types.SimpleNamespace(
        start_run=lambda **kw: calls.append(("start", kw)),
        log_params=lambda p: calls.append(("params", p)),
        log_metrics=lambda m, step=None: calls.append(("metrics", step)),
        end_run=lambda status="FINISHED": calls.append(("end", status)),
    )
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    train(tiny(epochs=1, mlflow="auto"), gratings, tmp_path / "a")
    assert [c[0] for c in calls] == ["start", "params", "metrics", "metrics", "end"]
    assert calls[1][1]["architecture"] == "resnet18" and calls[2][1] == 1 and calls[-1][1] == "FINISHED"
    calls.clear()
    train(tiny(epochs=1, mlflow="off", seed=1), gratings, tmp_path / "b")
    assert calls == []

    def down(**kw):
        raise ConnectionError("tracking server unreachable")

    fake.start_run = down
    record = train(tiny(epochs=1, mlflow="auto", seed=2), gratings, tmp_path / "c")
    assert len(record.epochs) == 1


def test_cli_train_interrupted(gratings, tmp_path, monkeypatch):
    import exe_stream.train as train_pkg

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_pkg, "train", ctrl_c)
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'data_dir = "{gratings}"\n[train]\nweights = "none"\n')
    r = runner.invoke(app, ["train", str(recipe), "-o", str(tmp_path / "m")])
    assert r.exit_code == 130
    assert "interrupted: the finished epochs are kept; run the same command again to resume" in " ".join(r.output.split())


def test_cli_train(gratings, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'name = "grating-model"\ndata_dir = "{gratings}"\n[train]\narchitecture = "resnet18"\n'
                      f'weights = "none"\ninput_size = 32\nbatch_size = 16\nepochs = 9\nmlflow = "off"\n')
    out = tmp_path / "model"
    r = runner.invoke(app, ["train", str(recipe), "-o", str(out), "--epochs", "1", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "epoch 1/1  train loss" in r.output and "best epoch 1/1: val accuracy" in r.output
    assert load_card(out).name == "model"  # the output directory's name
    assert json.loads((out / RUN_FILE).read_text())["recipe"]["text"] == recipe.read_text()
    recipe.write_text('[train]\nlearning_rate = 1\n')
    r = runner.invoke(app, ["train", str(recipe), "--data", str(gratings)])
    assert r.exit_code == 2 and f"{recipe} [train]: unknown key 'learning_rate'; allowed: name," in " ".join(r.output.split())
    r = runner.invoke(app, ["train"])
    assert r.exit_code == 2 and "give a RECIPE" in r.output
    r = runner.invoke(app, ["train", str(recipe), "--grid", str(recipe)])
    assert r.exit_code == 2 and "give either a RECIPE or --grid GRID" in r.output
