"""exe_stream.embeddings and ``scan --embeddings``: the penultimate layer of each network, captured
in the same forward pass as the probabilities, stored one row per faces row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import DEVICES
import torch
from typer.testing import CliRunner

from exe_stream.cli import app
from exe_stream.embeddings import (
    capture_embeddings, embedding_layer, embeddings_path, read_embeddings,
)
from exe_stream.models import ModelCard, build_network, load_model, save_model
from exe_stream.pipeline import ScanOptions, scan
from exe_stream.sampling import SamplingOptions
from exe_stream.shards import prob_column, read_faces

FER = "fer2013-minixception"
LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # the FER model's
runner = CliRunner()


def _card(arch: str = "resnet18", colour: str = "rgb", **kw) -> ModelCard:
    c = 3 if colour == "rgb" else 1
    base = dict(name="m", architecture=arch, labels=LABELS, input_size=(32, 32), colour=colour,
                mean=(0.5,) * c, std=(0.25,) * c, crop_margin=0.2, source="test", license="test")
    base.update(kw)
    return ModelCard(**base)


def _save(d: Path, card: ModelCard, seed: int = 0) -> str:
    torch.manual_seed(seed)
    save_model(d, card, build_network(card).state_dict())
    return str(d)


def test_the_embedding_layer_is_the_input_of_the_output_layer():
    assert embedding_layer(build_network(_card()))[0] == "fc"
    assert embedding_layer(build_network(_card("mobilenet_v2")))[0] == "classifier.1"
    assert embedding_layer(build_network(_card(extra={"head_hidden": 8})))[0] == "fc.3"
    assert embedding_layer(build_network(_card("conv_autoencoder")))[0] == "fc"
    # All-convolutional mini-Xception: its last convolution, globally averaged.
    assert embedding_layer(build_network(_card("mini_xception", "gray")))[0] == "head"
    with pytest.raises(ValueError, match=r"ReLU has no Linear or Conv2d layer to take an embedding from"):
        embedding_layer(torch.nn.ReLU())


def test_captured_embeddings_are_the_penultimate_activations(tmp_path):
    m = load_model(_save(tmp_path / "r", _card()))
    x = torch.randn(5, 3, 32, 32)
    with capture_embeddings(m) as cap:
        p = m.predict(x)
    e = cap.result()
    net = m.networks[0]
    assert e.shape == (5, 512) and e.dtype == torch.float32
    # The output layer applied to the embedding gives the probabilities predict returned.
    with torch.no_grad():
        torch.testing.assert_close(torch.softmax(net.fc(e), 1), p)
    # In chunks, the same rows; the hooks are gone afterwards.
    m.max_batch = 2
    with capture_embeddings(m) as cap:
        m.predict(x)
    torch.testing.assert_close(cap.result(), e)
    assert not net.fc._forward_pre_hooks
    # An ensemble: its members' embeddings side by side.
    ens = load_model(f"ens:{tmp_path / 'r'}+{FER}")
    with capture_embeddings(ens) as cap:
        ens.predict([x, torch.randn(5, 1, 64, 64)])
    assert cap.result().shape == (5, 512 + 128)


@pytest.mark.parametrize("device", DEVICES)
def test_scan_with_embeddings_writes_one_row_per_faces_row(tmp_path, clips, device):
    resnet = _save(tmp_path / "tiny-resnet", _card(input_size=(48, 48)))
    out = tmp_path / "scan"
    opts = ScanOptions(sampling=SamplingOptions(every=10), device=device, models=(FER, resnet), embeddings=True)
    res = scan([clips / "carphone_pristine.mp4"], out, opts)
    assert res.ok
    for model_id, dim in ((FER, 128), ("tiny-resnet", 512)):
        meta, emb = read_embeddings(out, model_id)
        faces = read_faces(out, model_id)
        assert faces.num_rows >= 11 and emb.shape == (faces.num_rows, dim)
        for col in ("film_id", "frame_index", "face_index"):
            assert meta.column(col).to_pylist() == faces.column(col).to_pylist()
        assert np.isfinite(emb).all() and np.ptp(emb, axis=0).max() > 0
    # The stored embeddings are those of the forward pass whose probabilities were stored.
    meta, emb = read_embeddings(out, "tiny-resnet")
    faces = read_faces(out, "tiny-resnet")
    fc = load_model(resnet).networks[0].fc
    with torch.no_grad():
        probs = torch.softmax(fc(torch.from_numpy(emb)), 1).numpy()
    stored = np.stack([np.asarray(faces.column(prob_column(lbl))) for lbl in LABELS], 1)
    np.testing.assert_allclose(probs, stored, atol=1e-5)
    path = embeddings_path(out, "carphone_pristine", FER)
    from exe_stream.shards import read_table

    t = read_table(path)
    assert t.schema.metadata[b"exe_stream.schema"] == b"2"
    assert t.schema.field("embedding").type.list_size == 128
    # Without --embeddings: the film is scanned again (other options) and its embeddings go.
    scan([clips / "carphone_pristine.mp4"], out, ScanOptions(sampling=SamplingOptions(every=10), device=device,
                                                            models=(FER, resnet)))
    assert not path.exists()
    with pytest.raises(FileNotFoundError, match=r"no embeddings for model 'fer2013-minixception' under .*; "
                                                r"scan with --embeddings first"):
        read_embeddings(out, FER)


def test_cli_scan_embeddings(tmp_path, clips):
    out = tmp_path / "o"
    r = runner.invoke(app, ["scan", str(clips / "carphone_pristine.mp4"), "-o", str(out), "--every", "40",
                            "--device", "cpu", "--embeddings", "-q"])
    assert r.exit_code == 0, r.output
    meta, emb = read_embeddings(out, FER)
    assert emb.shape[1] == 128 and meta.num_rows == read_faces(out, FER).num_rows >= 2
    # Scanned again with --embeddings: skipped (same options), embeddings kept.
    r = runner.invoke(app, ["scan", str(clips / "carphone_pristine.mp4"), "-o", str(out), "--every", "40",
                            "--device", "cpu", "--embeddings"])
    assert r.exit_code == 0 and "skipped" in r.output
    assert read_embeddings(out, FER)[1].shape == emb.shape
