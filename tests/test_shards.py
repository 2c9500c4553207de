"""Shards and manifest: schema, atomic writes, ids, fingerprints."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from exe_stream.shards import (
    Manifest, faces_path, faces_table, fingerprint, frames_path, frames_table, prob_column,
    read_faces, read_frames, read_table, remove_film_shards, shard_metadata, slugify, write_table,
)

LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def _faces_columns(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "frame_index": np.arange(n, dtype=np.int64) * 10,
        "pts_seconds": np.arange(n) * 0.4,
        "face_index": np.zeros(n, np.int16),
        "x0": rng.random(n, dtype=np.float32) * 0.5, "y0": rng.random(n, dtype=np.float32) * 0.5,
        "x1": 0.5 + rng.random(n, dtype=np.float32) * 0.5, "y1": 0.5 + rng.random(n, dtype=np.float32) * 0.5,
        "det_score": rng.random(n, dtype=np.float32), "face_area_rel": rng.random(n, dtype=np.float32),
    }


def test_faces_table_has_contract_columns_label_and_confidence():
    probs = np.random.default_rng(1).dirichlet(np.ones(7), size=5).astype(np.float32)
    meta = shard_metadata(model_id="m", model_hash="abc", detector={"name": "x"})
    t = faces_table("film-a", "m", LABELS, _faces_columns(5), probs, meta)
    assert t.column_names[:13] == [
        "film_id", "model_id", "frame_index", "pts_seconds", "face_index", "x0", "y0", "x1", "y1",
        "det_score", "face_area_rel", "label", "confidence",
    ]
    assert t.column_names[13:] == [f"prob_{lbl}" for lbl in LABELS]
    assert t.schema.field("face_index").type.bit_width == 16
    assert str(t.schema.field("x0").type) == "float"
    assert t.column("label").to_pylist() == [LABELS[i] for i in probs.argmax(1)]
    np.testing.assert_allclose(t.column("confidence").to_numpy(), probs.max(1))
    md = t.schema.metadata
    assert md[b"exe_stream.schema"] == b"2" and md[b"exe_stream.model_hash"] == b"abc"
    assert json.loads(md[b"exe_stream.detector"]) == {"name": "x"}


def test_faces_table_rejects_wrong_prob_width_and_colliding_labels():
    with pytest.raises(ValueError, match=r"probs must be \[N, 7\]"):
        faces_table("f", "m", LABELS, _faces_columns(2), np.zeros((2, 3), np.float32), {})
    with pytest.raises(ValueError, match="distinct prob_ column names"):
        faces_table("f", "m", ["Happy", "happy"], _faces_columns(1), np.zeros((1, 2), np.float32), {})


def test_prob_column_is_identifier_safe():
    assert prob_column("Happy Face!") == "prob_happy_face_"


def test_write_is_atomic_and_layout_has_no_partition_names(tmp_path):
    f = frames_table("a", [0, 10], [0.0, 0.4], [True, False], [1, 0], shard_metadata())
    write_table(frames_path(tmp_path, "a"), f)
    probs = np.full((1, 7), 1 / 7, np.float32)
    write_table(faces_path(tmp_path, "a", "ens:x+y"), faces_table("a", "ens:x+y", LABELS, _faces_columns(1), probs, {}))
    leftovers = [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]
    assert leftovers == []
    assert frames_path(tmp_path, "a") == tmp_path / "frames" / "a.parquet"
    assert faces_path(tmp_path, "a", "ens:x+y") == tmp_path / "faces" / "ens%3Ax%2By" / "a.parquet"
    table = ds.dataset(tmp_path / "faces", format="parquet").to_table()
    assert table.column("model_id").to_pylist() == ["ens:x+y"]
    assert read_frames(tmp_path).num_rows == 2
    assert read_faces(tmp_path, "ens:x+y").num_rows == 1
    with pytest.raises(FileNotFoundError, match="no faces shards for model 'other'"):
        read_faces(tmp_path, "other")
    remove_film_shards(tmp_path, "a")
    assert not frames_path(tmp_path, "a").exists() and not faces_path(tmp_path, "a", "ens:x+y").exists()


def _write_v1_scan(out, film_ids=("a", "b")):
    """A scan as exe-stream 0.1 wrote it: hive directories, Arrow IPC, schema "1"."""
    import pyarrow.ipc as ipc

    def put(path, table):
        path.parent.mkdir(parents=True, exist_ok=True)
        with ipc.new_file(str(path), table.schema) as w:
            w.write_table(table)

    meta = {b"exe_stream.schema": b"1"}
    for fid in film_ids:
        put(out / "frames" / f"film_id={fid}" / "part-0.arrow", frames_table(fid, [0, 10], [0.0, 0.4], [True, False], [1, 0], meta))
        probs = np.eye(7, dtype=np.float32)[[3]]
        put(out / "faces" / f"film_id={fid}" / "model_id=m" / "part-0.arrow",
            faces_table(fid, "m", LABELS, _faces_columns(1), probs, meta))
    (out / "manifest.json").write_text(json.dumps({"schema": "1", "films": {f: {"status": "done"} for f in film_ids}}))


def test_schema_1_scans_are_still_read(tmp_path):
    _write_v1_scan(tmp_path)
    assert read_frames(tmp_path).column("film_id").to_pylist() == ["a", "a", "b", "b"]
    faces = read_faces(tmp_path, "m")
    assert faces.num_rows == 2 and faces.column("label").to_pylist() == ["happy", "happy"]
    assert Manifest.load(tmp_path).version == "1"
    remove_film_shards(tmp_path, "a")
    assert read_frames(tmp_path).column("film_id").to_pylist() == ["b", "b"]


def test_read_faces_unifies_label_sets_and_keeps_every_column(tmp_path):
    """Two models with different classes: one table with the union of the prob_ columns, null
    where a model has no such class (never a dropped column)."""
    other = ["happy", "sad", "contempt"]
    for fid in ("2019", "2020"):
        write_table(faces_path(tmp_path, fid, "seven"), faces_table(
            fid, "seven", LABELS, _faces_columns(2), np.full((2, 7), 1 / 7, np.float32), shard_metadata()))
        write_table(faces_path(tmp_path, fid, "three"), faces_table(
            fid, "three", other, _faces_columns(3), np.full((3, 3), 1 / 3, np.float32), shard_metadata()))
    t = read_faces(tmp_path)
    assert t.num_rows == 10 and t.column("film_id").type == "string"
    assert {"prob_contempt", "prob_angry"} <= set(t.column_names)
    rows = t.to_pylist()
    assert all(r["prob_contempt"] is None for r in rows if r["model_id"] == "seven")
    assert all(r["prob_angry"] is None and r["prob_contempt"] is not None for r in rows if r["model_id"] == "three")


def test_failed_write_leaves_no_file(tmp_path):
    target = tmp_path / "x" / "part-0.arrow"
    with pytest.raises(Exception):
        write_table(target, "not a table")  # type: ignore[arg-type]
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_slug_and_film_ids_are_stable_and_unique(tmp_path):
    assert slugify("My Film (1999).MP4") == "my-film-1999-mp4"
    assert slugify("???") == "film"
    m = Manifest(tmp_path)
    a = tmp_path / "d1" / "Film.mp4"
    b = tmp_path / "d2" / "film.mp4"
    ida = m.film_id_for(a, set())
    idb = m.film_id_for(b, {ida})
    assert ida == "film" and idb.startswith("film-") and idb != ida
    m.films[idb] = {"path": str(b.resolve())}
    # the same path keeps its id in a later scan, whatever else is taken
    assert m.film_id_for(b, set()) == idb


def test_fingerprint_changes_with_content_not_with_name(tmp_path):
    a = tmp_path / "a.bin"
    a.write_bytes(b"x" * 3_000_000)
    b = tmp_path / "b.bin"
    b.write_bytes(b"x" * 3_000_000)
    assert fingerprint(a) == fingerprint(b)
    data = bytearray(b"x" * 3_000_000)
    data[1_500_000] = 0  # middle sample
    b.write_bytes(bytes(data))
    assert fingerprint(a) != fingerprint(b)


def test_manifest_round_trip_and_bad_manifest_errors(tmp_path):
    m = Manifest(tmp_path)
    m.films["a"] = {"path": "/x/a.mp4", "status": "done"}
    m.save()
    again = Manifest.load(tmp_path)
    assert again.films == m.films
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(ValueError, match="manifest.json: manifest is not valid JSON"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema": "9"}))
    with pytest.raises(ValueError, match="manifest schema '9'; this version of exe-stream reads 1, 2"):
        Manifest.load(tmp_path)


def test_read_table_round_trip(tmp_path):
    f = frames_table("a", [5], [0.2], [True], [3], shard_metadata(sampling={"every": 5}))
    for name in ("t.arrow", "t.parquet"):
        write_table(tmp_path / name, f)
        t = read_table(tmp_path / name)
        assert t.equals(f) and t.schema.metadata[b"exe_stream.schema"] == b"2"
        assert t.schema.metadata[b"exe_stream.sampling"] == b'{"every": 5}'
    assert pq.ParquetFile(tmp_path / "t.parquet").metadata.row_group(0).column(0).compression == "ZSTD"
