"""models: cards, model directories, content hashes, pickle refusal, architectures, ensembles."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import pytest
import torch

import exe_stream.models as models
from exe_stream.errors import ModelError
from exe_stream.models import (
    ARCHITECTURES,
    ModelCard,
    build_network,
    builtin_models_dir,
    builtin_names,
    content_hash,
    list_models,
    load_card,
    load_model,
    save_model,
)
from exe_stream.models.card import load_weights

LABELS3 = ("negative", "neutral", "positive")
FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def _card(**kw) -> ModelCard:
    base = dict(
        name="tiny", architecture="resnet18", labels=LABELS3, input_size=(32, 32), colour="rgb",
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_margin=0.2,
        source="tests", license="Apache-2.0",
    )
    base.update(kw)
    return ModelCard(**base)


def _make(directory: Path, seed: int = 0, **kw) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    """Write a randomly initialised model directory; returns its card and state dict."""
    card = _card(**kw)
    torch.manual_seed(seed)
    state = build_network(card).state_dict()
    save_model(directory, card, state)
    return card, state


# Cards and directories ----------------------------------------------------------------


def test_card_round_trip_and_weights(tmp_path):
    card, state = _make(tmp_path / "m", extra={"trained_on": "stock photos"})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "weights.safetensors"]
    loaded = load_card(tmp_path / "m")
    assert loaded == card
    assert loaded.labels == LABELS3 and loaded.input_size == (32, 32) and loaded.extra["trained_on"] == "stock photos"
    data = json.loads((tmp_path / "m" / "model.json").read_text())
    assert data["labels"] == list(LABELS3) and data["task"] == "emotion" and data["colour"] == "rgb"
    weights = load_weights(tmp_path / "m")
    assert weights.keys() == state.keys()
    assert all(torch.equal(weights[k], state[k]) for k in state)


def test_license_file_is_written(tmp_path):
    save_model(tmp_path / "m", _card(), build_network(_card()).state_dict(), license_text="MIT License\n...")
    assert (tmp_path / "m" / "LICENSE").read_text().startswith("MIT License")


def test_content_hash_follows_weights_and_card_not_formatting(tmp_path):
    card, state = _make(tmp_path / "m")
    h0 = content_hash(tmp_path / "m")
    assert len(h0) == 64
    # Reformatting model.json (indentation, key order) keeps the hash.
    path = tmp_path / "m" / "model.json"
    path.write_text(json.dumps(dict(reversed(list(json.loads(path.read_text()).items())))))
    assert content_hash(tmp_path / "m") == h0
    # One changed weight changes it.
    state = {k: v.clone() for k, v in state.items()}
    state["fc.bias"][0] += 1e-3
    assert save_model(tmp_path / "m", card, state) != h0
    # So does a changed card field with the same weights.
    _, state1 = _make(tmp_path / "a", seed=1)
    save_model(tmp_path / "b", dataclasses.replace(card, crop_margin=0.3), state1)
    assert content_hash(tmp_path / "a") != content_hash(tmp_path / "b")


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(colour="bgr"), r"colour must be one of \['rgb', 'gray'\], got 'bgr'"),
        (dict(colour="gray"), r"colour 'gray' needs 1 mean and std values, got mean=\[0.485, 0.456, 0.406\]"),
        (dict(labels=("a", "a")), r"labels must be unique, got \['a', 'a'\]"),
        (dict(labels=()), r"labels must be a non-empty list of names, got \[\]"),
        (dict(input_size=(0, 32)), r"input_size must be \[height, width\] > 0, got \[0, 32\]"),
        (dict(std=(0.2, 0.0, 0.2)), r"std must be > 0, got \[0.2, 0.0, 0.2\]"),
        (dict(crop_margin=-0.1), r"crop_margin must be >= 0, got -0.1"),
        (dict(name=""), r"model card name must be a non-empty string, got ''"),
    ],
)
def test_invalid_cards_are_refused(change, message):
    with pytest.raises(ModelError, match=message):
        _card(**change)


def test_model_json_with_unknown_or_missing_keys_is_refused(tmp_path):
    _make(tmp_path / "m")
    path = tmp_path / "m" / "model.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "colour_space": "srgb"}))
    with pytest.raises(ModelError, match=r"unknown keys \['colour_space'\]; allowed: .*put others in 'extra'"):
        load_card(tmp_path / "m")
    del data["labels"]
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match=r"missing keys \['labels'\]"):
        load_card(tmp_path / "m")
    path.write_text("[1, 2]")
    with pytest.raises(ModelError, match=r"model.json: expected a JSON object, got list"):
        load_card(tmp_path / "m")
    path.write_text("{not json")
    with pytest.raises(ModelError, match=r"model.json' is not valid JSON"):
        load_card(tmp_path / "m")


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(ModelError, match=r"model directory '.*nowhere' does not exist"):
        load_card(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"model directory '.*empty' has no model.json"):
        load_card(tmp_path / "empty")
    _make(tmp_path / "m")
    (tmp_path / "m" / "weights.safetensors").unlink()
    with pytest.raises(ModelError, match=r"has no weights.safetensors"):
        load_model(str(tmp_path / "m"))
    (tmp_path / "m" / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelError, match=r"cannot read .*weights.safetensors' as safetensors"):
        load_model(str(tmp_path / "m"))


# Pickle refusal -----------------------------------------------------------------------


class _Payload:
    """Unpickling this touches a marker file: proof that the loader ran pickled code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_checkpoints_are_refused_unopened(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    evil.write_bytes(pickle.dumps({"fc.weight": _Payload(marker)}))
    # Nothing may unpickle: make both loaders fail loudly if called.
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("pickle.load called"))
    with pytest.raises(ModelError, match=r"model.pt' is a pickled checkpoint; .* refused"):
        load_model(str(evil))
    # A model directory with a card but pickled weights only.
    card, _ = _make(tmp_path / "d")
    (tmp_path / "d" / "weights.safetensors").unlink()
    (tmp_path / "d" / "weights.pth").write_bytes(evil.read_bytes())
    with pytest.raises(ModelError, match=r"weights.pth' is a pickled checkpoint; .* refused"):
        load_model(str(tmp_path / "d"))
    assert not marker.exists()


# Architectures ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch, colour",
    [("mini_xception", "gray"), ("mini_xception", "rgb"), ("resnet18", "rgb"), ("resnet18", "gray"),
     ("resnet50", "rgb"), ("efficientnet_b0", "gray"), ("mobilenet_v2", "gray"), ("vgg16", "gray"),
     ("conv_autoencoder", "rgb"), ("conv_autoencoder", "gray")],
)
def test_architectures_give_logits_per_label(arch, colour):
    card = _card(architecture=arch, colour=colour, mean=(0.5,) * (3 if colour == "rgb" else 1),
                 std=(0.25,) * (3 if colour == "rgb" else 1))
    net = build_network(card).eval()
    with torch.no_grad():
        out = net(torch.randn(2, card.channels, 32, 32))
    assert out.shape == (2, 3)


@pytest.mark.parametrize("colour", ["gray", "rgb"])
def test_facex_architecture_takes_200px_crops(colour):
    # A flatten + dense head: the input size is fixed at 200 x 200.
    c = 3 if colour == "rgb" else 1
    card = _card(architecture="facex_mobilenet_v2", colour=colour, input_size=(200, 200), mean=(0.0,) * c, std=(1.0,) * c)
    net = build_network(card).eval()
    with torch.no_grad():
        assert net(torch.rand(2, c, 200, 200)).shape == (2, 3)
    with pytest.raises(ValueError, match=rf"expects float32 \[K, {c}, 200, 200\], got \(2, {c}, 32, 32\)"):
        net(torch.rand(2, c, 32, 32))


def test_every_architecture_is_tested():
    tested = {"mini_xception", "resnet18", "resnet50", "efficientnet_b0", "mobilenet_v2", "facex_mobilenet_v2",
              "vgg16", "conv_autoencoder"}
    assert set(ARCHITECTURES) == tested


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_extra_dense_head_from_the_card(tmp_path, arch):
    # extra.head_hidden (exe-stream train's extra_dense) rebuilds Linear -> ReLU -> Dropout -> Linear.
    card, state = _make(tmp_path / "m", architecture=arch, extra={"head_hidden": 16})
    head = [k for k in state if k.endswith(".3.weight")][-1]
    assert tuple(state[head].shape) == (3, 16)
    m = load_model(str(tmp_path / "m"))
    assert m.predict(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(ModelError, match=r"extra.head_hidden=16 needs a positive integer and one of .* "
                                         r"got architecture 'mini_xception'"):
        build_network(_card(architecture="mini_xception", extra={"head_hidden": 16}))


def test_unknown_architecture(tmp_path):
    with pytest.raises(ModelError, match=r"unknown architecture 'vgg11'; expected one of \['conv_autoencoder', 'efficientnet_b0', "):
        build_network(_card(architecture="vgg11"))


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    _make(tmp_path / "m")
    path = tmp_path / "m" / "model.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "architecture": "mobilenet_v2"}))
    with pytest.raises(ModelError, match=r"do not fit architecture 'mobilenet_v2'"):
        load_model(str(tmp_path / "m"))


def test_resnet18_with_three_labels_saves_loads_predicts(tmp_path):
    card, state = _make(tmp_path / "three")
    m = load_model(str(tmp_path / "three"), "cpu")
    assert m.model_id == "three" and m.labels == LABELS3 and m.card == card
    assert m.content_hash == content_hash(tmp_path / "three")
    x = torch.randn(5, 3, 32, 32)
    p = m.predict(x)
    assert p.shape == (5, 3) and p.dtype == torch.float32
    torch.testing.assert_close(p.sum(1), torch.ones(5))
    # The same as torchvision's resnet18 with these weights, followed by softmax.
    import torchvision

    ref = torchvision.models.resnet18(num_classes=3)
    ref.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(p, torch.softmax(ref.eval()(x), 1))
    # Chunked prediction gives the same rows.
    m.max_batch = 2
    torch.testing.assert_close(m.predict(x), p)


def test_predict_checks_crop_shape(tmp_path):
    _make(tmp_path / "m")
    m = load_model(str(tmp_path / "m"))
    with pytest.raises(ModelError, match=r"model 'tiny' expects crops \[K, 3, 32, 32\] \(K = 2\), got \(2, 1, 32, 32\)"):
        m.predict(torch.zeros(2, 1, 32, 32))


# Registry ---------------------------------------------------------------------------


def test_builtin_fer_model():
    assert "fer2013-minixception" in builtin_names()
    cards = {c.name: c for c in list_models()}
    card = cards["fer2013-minixception"]
    assert card.labels == FER_LABELS and card.architecture == "mini_xception" and card.colour == "gray"
    # A built-in's name is its directory's, so the listed name loads.
    assert sorted(cards) == builtin_names()
    m = load_model("fer2013-minixception")
    assert m.model_id == "fer2013-minixception"
    p = m.predict(torch.zeros(3, 1, 64, 64))
    assert p.shape == (3, 7)
    torch.testing.assert_close(p.sum(1), torch.ones(3))


def test_registry_skips_detector_directories(tmp_path, monkeypatch):
    _make(tmp_path / "emo")
    det = tmp_path / "blazeface-short"
    det.mkdir()
    (det / "model.json").write_text(json.dumps({"name": "blazeface-short", "task": "face-detection"}))
    (tmp_path / "notes").mkdir()
    monkeypatch.setattr(models, "builtin_models_dir", lambda: tmp_path)
    assert builtin_names() == ["emo"]
    assert [c.name for c in list_models()] == ["tiny"]
    with pytest.raises(ModelError, match=r"unknown model 'blazeface-short'"):
        load_model("blazeface-short")
    # Given as a directory, a card with another task is refused.
    _make(tmp_path / "other", task="face-detection")
    with pytest.raises(ModelError, match=r"has task 'face-detection', not an emotion classifier \('emotion'\)"):
        load_model(str(tmp_path / "other"))


def test_unknown_model_names_the_value_and_the_choices():
    with pytest.raises(ModelError, match=r"unknown model 'nope': .*built-in models: \[.*'fer2013-minixception'.*\]"):
        load_model("nope")


def test_unknown_device():
    with pytest.raises(ModelError, match=r"unknown device 'tpu'; expected one of \['auto', 'cpu', 'cuda'\]"):
        load_model("fer2013-minixception", "tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_without_cuda():
    with pytest.raises(ModelError, match=r"device 'cuda' was requested but CUDA is not available"):
        load_model("fer2013-minixception", "cuda")


# Ensembles ----------------------------------------------------------------------------


def test_ensemble_averages_member_probabilities(tmp_path):
    _make(tmp_path / "a", seed=1)
    # A member with other input handling: gray mini-Xception at 48x48 with another margin.
    _make(tmp_path / "b", seed=2, name="b", architecture="mini_xception", colour="gray", input_size=(48, 48),
          mean=(0.5,), std=(0.5,), crop_margin=0.1)
    spec = f"ens:{tmp_path / 'a'}+{tmp_path / 'b'}"
    ens = load_model(spec)
    a, b = load_model(str(tmp_path / "a")), load_model(str(tmp_path / "b"))
    assert ens.model_id == spec and ens.labels == LABELS3 and len(ens.cards) == 2
    assert ens.crop_specs == (a.card.crop_spec, b.card.crop_spec)
    assert ens.content_hash not in (a.content_hash, b.content_hash)
    xa, xb = torch.randn(4, 3, 32, 32), torch.randn(4, 1, 48, 48)
    p = ens.predict([xa, xb])
    torch.testing.assert_close(p, (a.predict(xa) + b.predict(xb)) / 2)
    torch.testing.assert_close(p.sum(1), torch.ones(4))
    with pytest.raises(ModelError, match=r"is an ensemble of 2 models; use .cards"):
        ens.card
    with pytest.raises(ModelError, match=r"has 2 members but got 1 crop tensors"):
        ens.predict([xa])


def test_ensemble_of_builtin_and_directory(tmp_path):
    _make(tmp_path / "r18", architecture="resnet18", labels=FER_LABELS)
    ens = load_model(f"ens:fer2013-minixception+{tmp_path / 'r18'}")
    p = ens.predict([torch.zeros(2, 1, 64, 64), torch.zeros(2, 3, 32, 32)])
    assert p.shape == (2, 7)


def test_ensemble_refuses_different_labels(tmp_path):
    _make(tmp_path / "three")
    spec = f"ens:fer2013-minixception+{tmp_path / 'three'}"
    with pytest.raises(
        ModelError,
        match=r"members must have the same labels in the same order, got fer2013-minixception: \['angry', .*"
        r"three: \['negative', 'neutral', 'positive'\]",
    ):
        load_model(spec)


@pytest.mark.parametrize("spec", ["ens:fer2013-minixception", "ens:fer2013-minixception+", "ens:"])
def test_ensemble_needs_two_members(spec):
    with pytest.raises(ModelError, match=r"must name two or more models: 'ens:a\+b\[\+c...\]'"):
        load_model(spec)


def test_ensemble_members_cannot_be_ensembles():
    with pytest.raises(ModelError, match=r"members cannot be ensembles themselves"):
        load_model("ens:fer2013-minixception+ens:a+b")


def test_builtin_dir_is_inside_the_package():
    assert builtin_models_dir().parts[-3:] == ("exe_stream", "assets", "models")
