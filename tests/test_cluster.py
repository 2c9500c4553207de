"""exe_stream.cluster and ``exe-stream cluster``: k-means, the Hungarian mapping of clusters to
labels, clustering accuracy, and clustering a scan's embeddings with a labelled set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from exe_stream.cli import app
from exe_stream.cluster import (
    ClusterError, ClusterOptions, cluster, clustering_accuracy, contingency, kmeans, map_clusters, normalise,
)
from exe_stream.pipeline import ScanOptions, scan
from exe_stream.sampling import SamplingOptions
from exe_stream.shards import read_faces, read_table

FER = "fer2013-minixception"
runner = CliRunner()


def blobs(n: int = 40, d: int = 16, spread: float = 0.15, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well separated Gaussian blobs in d dimensions; labels 0, 1, 2."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (3, d))
    labels = np.repeat(np.arange(3), n)
    return centres[labels] + rng.normal(0, spread, (3 * n, d)), labels


def test_kmeans_recovers_separable_blobs_and_hungarian_names_them():
    x, y = blobs()
    centroids, assign, inertia = kmeans(x, 3, seed=0)
    assert centroids.shape == (3, 16) and assign.shape == (120,) and inertia > 0
    mapping = map_clusters(assign, y, 3, 3)
    assert sorted(mapping.tolist()) == [0, 1, 2]  # one label per cluster
    assert clustering_accuracy(assign, y, mapping) == 1.0
    # Cluster numbers are arbitrary: relabelling the truth changes the mapping, not the accuracy.
    perm = np.array([2, 0, 1])
    assert clustering_accuracy(assign, perm[y], map_clusters(assign, perm[y], 3, 3)) == 1.0
    # Deterministic for a seed.
    assert np.array_equal(kmeans(x, 3, seed=0)[1], assign)
    # Overlapping blobs: above chance, below perfect.
    xo, yo = blobs(spread=1.2, seed=1)
    _, a, _ = kmeans(xo, 3, seed=0)
    acc = clustering_accuracy(a, yo, map_clusters(a, yo, 3, 3))
    assert 1 / 3 < acc < 1.0


def test_hungarian_mapping_beats_majority_and_handles_other_cluster_counts():
    # Cluster 0: 5 of label 0, 4 of label 1; cluster 1: 4 of label 0. Majority would name both
    # clusters label 0; the best one-to-one mapping is 0 -> 1, 1 -> 0 (8 right instead of 5).
    clusters = np.array([0] * 9 + [1] * 4)
    labels = np.array([0] * 5 + [1] * 4 + [0] * 4)
    assert contingency(clusters, labels, 2, 2).tolist() == [[5, 4], [4, 0]]
    mapping = map_clusters(clusters, labels, 2, 2)
    assert mapping.tolist() == [1, 0] and clustering_accuracy(clusters, labels, mapping) == pytest.approx(8 / 13)
    # More clusters than labels: the extra one takes its majority label.
    m = map_clusters(np.array([0, 0, 1, 1, 2, 2, 3, 3, 3]), np.array([0, 0, 1, 1, 2, 2, 2, 2, 1]), 4, 3)
    assert m[:3].tolist() == [0, 1, 2] and m[3] == 2
    # A cluster without labelled points takes the most common label.
    assert map_clusters(np.array([0, 0, 1]), np.array([1, 1, 0]), 3, 2).tolist() == [1, 0, 1]
    # Fewer clusters than labels.
    m = map_clusters(np.array([0, 0, 1, 1, 1]), np.array([0, 0, 1, 1, 2]), 2, 3)
    assert m.tolist() == [0, 1]


def test_normalise_and_option_errors():
    x = normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert np.allclose(x, [[0.6, 0.8], [0.0, 0.0]])
    with pytest.raises(ClusterError, match=r"k must be 0 \(the number of labels\) or >= 2, got 1"):
        ClusterOptions(k=1)
    with pytest.raises(ClusterError, match=r"k-means needs \[N, D\] points with N >= k = 5, got shape \(3, 2\)"):
        kmeans(np.zeros((3, 2)), 5)


def _labelled(root: Path, n: int = 12) -> Path:
    """Two classes of crops any network tells apart: bright noisy greys and dark noisy reds."""
    rng = np.random.default_rng(0)
    for label, base in (("bright", (220, 220, 220)), ("dark", (60, 10, 10))):
        (root / label).mkdir(parents=True)
        for i in range(n):
            a = np.clip(np.array(base) + rng.normal(0, 12, (48, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / label / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, clips) -> Path:
    out = tmp_path_factory.mktemp("scan")
    scan([clips / "carphone_pristine.mp4"], out,
         ScanOptions(sampling=SamplingOptions(every=10), device="cpu", models=(FER,), embeddings=True))
    return out


def test_cluster_a_scan_with_a_labelled_set(scanned, tmp_path):
    labelled = _labelled(tmp_path / "labelled")
    res = cluster(scanned, FER, labelled, ClusterOptions(k=3, seed=0))
    assert res.labels == ["bright", "dark"] and res.n_labelled == 24 and res.k == 3
    faces = read_faces(scanned, FER)
    assert res.n_faces == faces.num_rows >= 11
    assert res.accuracy == 1.0, res.contingency
    assert sorted(res.mapping.values()).count("bright") >= 1 and "dark" in res.mapping.values()
    assert sum(map(sum, res.contingency)) == 24
    assert sum(res.face_shares.values()) == pytest.approx(1.0)
    t = read_table(Path(res.out_dir) / "part-0.arrow")
    assert t.column("frame_index").to_pylist() == faces.column("frame_index").to_pylist()
    assert set(t.column("label").to_pylist()) <= {"bright", "dark"}
    assert set(t.column("cluster").to_pylist()) <= {0, 1, 2}
    summary = json.loads((Path(res.out_dir) / "summary.json").read_text())
    assert summary["accuracy"] == 1.0 and summary["mapping"] == {str(k): v for k, v in res.mapping.items()}


def test_cli_cluster(scanned, tmp_path):
    labelled = _labelled(tmp_path / "labelled")
    r = runner.invoke(app, ["cluster", str(scanned), "--model", FER, "--labelled", str(labelled), "--k", "3"])
    assert r.exit_code == 0, r.output
    assert "clustering accuracy on the labelled set: 1.000" in r.output
    r = runner.invoke(app, ["cluster", str(tmp_path), "--model", FER, "--labelled", str(labelled)])
    assert r.exit_code == 2 and "scan with --embeddings first" in r.output
    r = runner.invoke(app, ["cluster", str(scanned), "--model", FER, "--labelled", str(tmp_path / "none")])
    assert r.exit_code == 2 and "labelled set: training data" in r.output and "does not exist" in r.output
