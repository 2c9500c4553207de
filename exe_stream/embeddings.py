"""Face embeddings: each face's penultimate-layer activations, captured during classification.

``scan --embeddings`` stores them beside the shards, in a separate dataset that leaves the
shard contract untouched (layout as the faces dataset, see ``shards``)::

    OUT/embeddings/<model_id>/<film_id>.parquet   (model id URI-encoded; schema 1 scans:
                                                   embeddings/film_id=<id>/model_id=<model>/part-0.arrow)

columns ``film_id`` (string), ``frame_index`` (int64), ``face_index`` (int16) and ``embedding``
(fixed_size_list<float32>[D]); one row per row of the matching faces shard, in the same order.
Schema metadata: ``exe_stream.schema`` and the model id, hash and embedding layer.

The embedding of a network is the input of its output layer: the last ``nn.Linear`` in module
order (flattened), or, for all-convolutional networks such as mini-Xception, the global
average of the input of the last ``nn.Conv2d``. An ensemble's embedding is its members'
embeddings side by side, in member order. ``exe-stream cluster`` reads this dataset.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from .models import EmotionModel
from .shards import READABLE_VERSIONS, find_shards, read_table, shard_metadata, shard_path, write_table

EMBEDDINGS_DIR = "embeddings"


def embedding_layer(net: nn.Module) -> tuple[str, nn.Module]:
    """(qualified name, module) of the layer whose input is the network's embedding: the last
    ``nn.Linear`` in module order, else the last ``nn.Conv2d``."""
    named = list(net.named_modules())
    for kind in (nn.Linear, nn.Conv2d):
        hits = [(n, m) for n, m in named if isinstance(m, kind)]
        if hits:
            return hits[-1]
    raise ValueError(f"{type(net).__name__} has no Linear or Conv2d layer to take an embedding from")


class _Capture:
    """Collects the embedding layer's inputs of every member, one chunk per forward pass."""

    def __init__(self, model: EmotionModel) -> None:
        self.parts: list[list[torch.Tensor]] = [[] for _ in model.networks]
        self.layers = [embedding_layer(net)[0] for net in model.networks]

    def hook(self, member: int):
        def pre_hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            x = x.flatten(1) if isinstance(module, nn.Linear) else x.float().mean(dim=(2, 3))
            self.parts[member].append(x.to("cpu", torch.float32))

        return pre_hook

    def result(self) -> torch.Tensor:
        """float32 [K, D] on the CPU: every member's embeddings side by side."""
        members = [torch.cat(p) if p else torch.zeros((0, 0)) for p in self.parts]
        return torch.cat(members, dim=1) if len(members) > 1 else members[0]


@contextlib.contextmanager
def capture_embeddings(model: EmotionModel) -> Iterator[_Capture]:
    """While active, every ``model.predict`` also records each face's embedding; read them
    with ``.result()`` (float32 [K, D], CPU, rows in the order the faces were predicted)."""
    cap = _Capture(model)
    handles = [
        embedding_layer(net)[1].register_forward_pre_hook(cap.hook(i)) for i, net in enumerate(model.networks)
    ]
    try:
        yield cap
    finally:
        for h in handles:
            h.remove()


def embeddings_path(out: str | os.PathLike, film_id: str, model_id: str) -> Path:
    return shard_path(Path(out), EMBEDDINGS_DIR, film_id, model_id)


def embeddings_table(
    film_id: str, frame_index: np.ndarray, face_index: np.ndarray, embeddings: np.ndarray,
    metadata: dict[bytes, bytes],
) -> pa.Table:
    """One film's embeddings for one model. frame_index int64 [N], face_index int16 [N],
    embeddings float32 [N, D]."""
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(frame_index) or len(face_index) != len(frame_index):
        raise ValueError(
            f"embeddings must be [N, D] with N = {len(frame_index)} faces, got {emb.shape} "
            f"and face_index of {len(face_index)}"
        )
    n, d = emb.shape
    schema = pa.schema([
        ("film_id", pa.string()), ("frame_index", pa.int64()), ("face_index", pa.int16()),
        ("embedding", pa.list_(pa.float32(), d)),
    ]).with_metadata(metadata)
    values = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), d)
    return pa.Table.from_arrays([
        pa.array([film_id] * n, pa.string()), pa.array(np.asarray(frame_index, np.int64)),
        pa.array(np.asarray(face_index, np.int16)), values,
    ], schema=schema)


def write_embeddings(
    out: Path, film_id: str, model: EmotionModel, frame_index: np.ndarray, face_index: np.ndarray,
    embeddings: np.ndarray,
) -> None:
    """Write one film's embeddings shard for ``model`` (atomically)."""
    layers = [embedding_layer(net)[0] for net in model.networks]
    meta = shard_metadata(model_id=model.model_id, model_hash=model.content_hash, embedding_layers=layers)
    if embeddings.size == 0:
        embeddings = np.zeros((len(frame_index), 0), np.float32)
    write_table(embeddings_path(out, film_id, model.model_id),
                embeddings_table(film_id, frame_index, face_index, embeddings, meta))


def remove_embeddings(out: Path, film_id: str) -> None:
    """Delete every embeddings shard of a film."""
    for s in find_shards(Path(out), EMBEDDINGS_DIR, film_id=film_id):
        s.path.unlink(missing_ok=True)


def read_embeddings(out: str | os.PathLike, model_id: str) -> tuple[pa.Table, np.ndarray]:
    """Every film's embeddings for one model: (table of film_id, frame_index, face_index;
    float32 [N, D] array), films in id order."""
    paths = [s.path for s in find_shards(Path(out), EMBEDDINGS_DIR, model_id=model_id)]
    if not paths:
        raise FileNotFoundError(
            f"no embeddings for model {model_id!r} under {out}; scan with --embeddings first"
        )
    tables = [read_table(p) for p in paths]
    for p, t in zip(paths, tables):
        if (t.schema.metadata or {}).get(b"exe_stream.schema", b"").decode() not in READABLE_VERSIONS:
            raise ValueError(f"{p}: not an exe-stream embeddings shard (schema {', '.join(READABLE_VERSIONS)})")
    # Films without faces carry no rows (and, written before any face was seen, size 0).
    tables = [t for t in tables if t.num_rows] or tables[:1]
    dims = {t.schema.field("embedding").type.list_size for t in tables}
    if len(dims) != 1:
        raise ValueError(f"embeddings of {model_id!r} under {out} have different sizes {sorted(dims)}")
    d = dims.pop()
    arrays = [
        t.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, d)
        if t.num_rows else np.zeros((0, d), np.float32)
        for t in tables
    ]
    meta = pa.concat_tables([t.drop_columns(["embedding"]).replace_schema_metadata(None) for t in tables])
    return meta, np.concatenate(arrays).astype(np.float32, copy=False)
