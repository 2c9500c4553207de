"""``exe-stream cluster``: k-means on the face embeddings of a scan, clusters named by a labelled set.

The unsupervised half of issue 5's study. Input: a scan made with ``--embeddings`` (each
face's penultimate-layer embedding, ``exe_stream.embeddings``) and a labelled image folder
``DIR/<label>/*.{png,jpg}`` of face crops, embedded here by the same model.

1. Embeddings of the scan's faces and of the labelled crops are L2-normalised (``normalise``)
   and clustered together with k-means (``kmeans``: k-means++ seeding, Lloyd iterations,
   the best of ``n_init`` starts by inertia; numpy, seeded). k defaults to the number of
   labels.
2. Clusters are mapped to labels with the Hungarian algorithm on the labelled crops'
   contingency table (``scipy.optimize.linear_sum_assignment`` with ``maximize=True``, which
   also takes rectangular tables); with more clusters than labels, the unmatched clusters take
   the majority label of their labelled members (clusters without labelled members: the most
   common label overall).
3. Accuracy: the share of labelled crops whose cluster maps to their own label (the usual
   clustering accuracy). Each film face gets its cluster and mapped label.

Outputs: ``OUT/clusters/model_id=<model>/part-0.arrow`` (film_id, frame_index, face_index,
cluster int32, label) and ``OUT/clusters/model_id=<model>/summary.json`` (``ClusterResult``).
"""

from __future__ import annotations

import json
import os
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import torch

from .errors import ExeStreamError


class ClusterError(ExeStreamError, ValueError):
    """Clustering cannot run: no embeddings, no labelled images, bad options."""


@dataclass(frozen=True)
class ClusterOptions:
    """How ``cluster`` clusters."""

    # Number of clusters; 0 = the number of labels in the labelled set.
    k: int = 0
    # Seed of the k-means++ starts.
    seed: int = 0
    # Independent k-means starts; the one with the lowest inertia is kept.
    n_init: int = 10
    # Most Lloyd iterations per start, and the centroid shift that counts as converged.
    max_iter: int = 300
    tol: float = 1e-6
    # L2-normalise embeddings before clustering (cosine geometry).
    normalise: bool = True

    def __post_init__(self) -> None:
        if self.k < 0 or self.k == 1:
            raise ClusterError(f"k must be 0 (the number of labels) or >= 2, got {self.k}")
        if self.n_init < 1 or self.max_iter < 1:
            raise ClusterError(f"n_init and max_iter must be >= 1, got {self.n_init}, {self.max_iter}")


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero): float64 [N, D]."""
    x = np.asarray(x, np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances [N, K]."""
    d = (x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: the first centre uniformly, each next one with probability
    proportional to the squared distance to the nearest centre chosen so far."""
    centres = [x[rng.integers(len(x))]]
    d = _sq_dist(x, centres[0][None])[:, 0]
    for _ in range(1, k):
        total = d.sum()
        i = rng.choice(len(x), p=d / total) if total > 0 else rng.integers(len(x))
        centres.append(x[i])
        d = np.minimum(d, _sq_dist(x, x[i][None])[:, 0])
    return np.stack(centres)


def kmeans(x: np.ndarray, k: int, seed: int = 0, n_init: int = 10, max_iter: int = 300,
           tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray, float]:
    """k-means on float [N, D] points: (centroids float64 [k, D], assignment int64 [N], inertia).

    An empty cluster is re-seeded at the point farthest from its centroid. Deterministic for
    a given seed."""
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or len(x) < k:
        raise ClusterError(f"k-means needs [N, D] points with N >= k = {k}, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    best: tuple[np.ndarray, np.ndarray, float] | None = None
    for _ in range(n_init):
        c = _kmeans_pp(x, k, rng)
        for _ in range(max_iter):
            d = _sq_dist(x, c)
            a = d.argmin(1)
            new = np.stack([x[a == j].mean(0) if (a == j).any() else c[j] for j in range(k)])
            for j in np.flatnonzero(np.bincount(a, minlength=k) == 0):
                new[j] = x[d[np.arange(len(x)), a].argmax()]
            shift = float(((new - c) ** 2).sum())
            c = new
            if shift <= tol:
                break
        d = _sq_dist(x, c)
        a = d.argmin(1)
        inertia = float(d[np.arange(len(x)), a].sum())
        if best is None or inertia < best[2]:
            best = (c, a.astype(np.int64), inertia)
    assert best is not None
    return best


def contingency(clusters: np.ndarray, labels: np.ndarray, k: int, n_labels: int) -> np.ndarray:
    """int64 [k, n_labels]: how many points of each cluster carry each label."""
    return np.bincount(np.asarray(clusters) * n_labels + np.asarray(labels), minlength=k * n_labels).reshape(k, n_labels)


def map_clusters(clusters: np.ndarray, labels: np.ndarray, k: int, n_labels: int) -> np.ndarray:
    """Label index of every cluster, int64 [k]: Hungarian matching on the contingency table
    (maximum agreement, one label per cluster while both last), then the majority label for
    clusters left over (the most common label for clusters without labelled points)."""
    from scipy.optimize import linear_sum_assignment

    table = contingency(clusters, labels, k, n_labels)
    rows, cols = linear_sum_assignment(table, maximize=True)
    mapping = np.full(k, -1, np.int64)
    mapping[rows] = cols
    overall = int(np.bincount(np.asarray(labels), minlength=n_labels).argmax())
    for j in np.flatnonzero(mapping < 0):
        mapping[j] = int(table[j].argmax()) if table[j].sum() else overall
    return mapping


def clustering_accuracy(clusters: np.ndarray, labels: np.ndarray, mapping: np.ndarray) -> float:
    """Share of points whose cluster maps to their label."""
    return float((mapping[np.asarray(clusters)] == np.asarray(labels)).mean()) if len(labels) else float("nan")


@dataclass
class ClusterResult:
    """What ``cluster`` found (``summary.json``)."""

    model_id: str
    k: int
    labels: list[str]
    # Clustering accuracy on the labelled crops, and how many there were.
    accuracy: float
    n_labelled: int
    # Film faces clustered.
    n_faces: int
    # cluster -> label.
    mapping: dict[int, str]
    # Labelled crops per (cluster, label): rows clusters, columns labels.
    contingency: list[list[int]]
    # Film faces per mapped label (share of all film faces).
    face_shares: dict[str, float]
    inertia: float
    options: dict[str, Any] = field(default_factory=dict)
    out_dir: str = ""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["mapping"] = {str(k): v for k, v in self.mapping.items()}
        return d


def clusters_dir(out: str | os.PathLike, model_id: str) -> Path:
    return Path(out) / "clusters" / f"model_id={urllib.parse.quote(model_id, safe='')}"


def embed_images(model, paths: Sequence[Path], batch: int = 64) -> np.ndarray:
    """Embeddings (as ``scan --embeddings`` stores them) of face-crop image files: each file is
    prepared as the model's card says (size, colour, mean/std; the file is taken as the crop).
    Returns float32 [N, D]."""
    from .embeddings import capture_embeddings
    from .train.data import load_image, normalise as norm_pixels

    if any(card.input_size[0] != card.input_size[1] for card in model.cards):
        raise ClusterError(f"model {model.model_id!r} takes non-square crops, which cluster does not prepare")
    parts = []
    for s in range(0, len(paths), batch):
        chunk = paths[s : s + batch]
        crops = [
            torch.stack([norm_pixels(load_image(p, card.input_size[0], card.colour), card.mean, card.std)
                         for p in chunk])
            for card in model.cards
        ]
        with capture_embeddings(model) as cap:
            model.predict(crops)
        parts.append(cap.result().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def cluster(
    out: str | os.PathLike,
    model: str,
    labelled: str | os.PathLike,
    opts: ClusterOptions = ClusterOptions(),
    device: str = "cpu",
) -> ClusterResult:
    """Cluster the embeddings of ``model`` in the scan ``out`` together with the labelled crops
    in ``labelled`` (``DIR/<label>/*.png|jpg``); write the per-face clusters and the summary
    under ``out/clusters/model_id=<model>/``. ``model`` is the spec given to ``scan --model``."""
    from .embeddings import read_embeddings
    from .models import load_model
    from .shards import write_table
    from .train.config import TrainError
    from .train.data import load_data

    m = load_model(model, device)
    try:
        meta, film_emb = read_embeddings(out, m.model_id)
    except FileNotFoundError as e:
        raise ClusterError(str(e)) from e
    try:
        data = load_data(labelled)
    except TrainError as e:
        raise ClusterError(f"labelled set: {e}") from e
    labels = list(data.labels)
    y = np.array([labels.index(s.label) for s in data.samples], np.int64)
    lab_emb = embed_images(m, [s.path for s in data.samples])
    if film_emb.shape[0] and film_emb.shape[1] != lab_emb.shape[1]:
        raise ClusterError(f"the scan's embeddings of {m.model_id!r} have {film_emb.shape[1]} values but the model "
                           f"gives {lab_emb.shape[1]}: was the scan made with another version of the model?")
    k = opts.k or len(labels)
    x = np.concatenate([film_emb.reshape(-1, lab_emb.shape[1]), lab_emb])
    if opts.normalise:
        x = normalise(x)
    centroids, assign, inertia = kmeans(x, k, opts.seed, opts.n_init, opts.max_iter, opts.tol)
    film_c, lab_c = assign[: len(film_emb)], assign[len(film_emb):]
    mapping = map_clusters(lab_c, y, k, len(labels))
    acc = clustering_accuracy(lab_c, y, mapping)
    face_labels = [labels[i] for i in mapping[film_c]]
    n_faces = len(film_c)
    shares = {lbl: (face_labels.count(lbl) / n_faces if n_faces else 0.0) for lbl in labels}
    d = clusters_dir(out, m.model_id)
    d.mkdir(parents=True, exist_ok=True)
    table = pa.table({
        "film_id": meta.column("film_id"), "frame_index": meta.column("frame_index"),
        "face_index": meta.column("face_index"), "cluster": pa.array(film_c.astype(np.int32)),
        "label": pa.array(face_labels, pa.string()),
    })
    write_table(d / "part-0.arrow", table)
    result = ClusterResult(
        model_id=m.model_id, k=k, labels=labels, accuracy=acc, n_labelled=len(y), n_faces=n_faces,
        mapping={j: labels[mapping[j]] for j in range(k)},
        contingency=contingency(lab_c, y, k, len(labels)).tolist(), face_shares=shares, inertia=inertia,
        options=asdict(opts), out_dir=str(d),
    )
    (d / "summary.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result
