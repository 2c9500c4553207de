"""The README's one-liners that read a scan, run as written: pyarrow, pandas, polars, DuckDB.

The scan has numeric film ids (``2019.mp4``, ``2020.mp4``: a path-guessing reader would make
them integers) and two models with different label sets (a reader that takes the first
file's schema would drop the other model's ``prob_`` columns). Each line must return every
face of both models with every column, film ids as strings, and the values ``read_faces``
gives.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from exe_stream.models import ModelCard, build_network, save_model
from exe_stream.pipeline import ScanOptions, scan
from exe_stream.sampling import SamplingOptions
from exe_stream.shards import read_faces

README = Path(__file__).resolve().parents[1] / "README.md"
OTHER_LABELS = ["happy", "sad", "contempt"]


def readme_readers() -> dict[str, str]:
    """tool -> its one-liner, from the README block between the readers markers."""
    text = README.read_text()
    block = text[text.index("<!-- readers:begin -->"):text.index("<!-- readers:end -->")]
    lines = [ln for ln in block.splitlines() if ln.startswith("faces = ")]
    return {ln.rsplit("# ", 1)[1].strip(): ln.split("  # ")[0] for ln in lines}


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, clips) -> Path:
    root = tmp_path_factory.mktemp("readers")
    for year in ("2019", "2020"):
        shutil.copy(clips / "carphone_pristine.mp4", root / f"{year}.mp4")
    card = ModelCard(name="three", architecture="resnet18", labels=OTHER_LABELS, input_size=(32, 32), colour="rgb",
                     mean=(0.5,) * 3, std=(0.25,) * 3, crop_margin=0.2, source="test", license="test")
    torch.manual_seed(0)
    save_model(root / "three", card, build_network(card).state_dict())
    opts = ScanOptions(sampling=SamplingOptions(every=40), models=("fer2013-minixception", str(root / "three")))
    res = scan([root / "2019.mp4", root / "2020.mp4"], root / "out", opts)
    assert [f.status for f in res.films] == ["done", "done"] and all(f.faces > 0 for f in res.films)
    return root


def test_the_readme_has_one_line_per_tool():
    assert sorted(readme_readers()) == ["DuckDB", "pandas", "polars", "pyarrow"]


def _rows(faces) -> list[dict]:
    """Any reader's result as sorted plain rows (None for null/NaN)."""
    if hasattr(faces, "to_pylist"):
        rows = faces.to_pylist()
    elif hasattr(faces, "to_dicts"):
        rows = faces.to_dicts()
    else:
        rows = faces.to_dict("records")
    clean = lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else v  # noqa: E731
    rows = [{k: clean(v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in rows]
    return sorted(rows, key=lambda r: (r["model_id"], r["film_id"], r["frame_index"], r["face_index"]))


@pytest.mark.parametrize("tool", ["pyarrow", "pandas", "polars", "DuckDB"])
def test_readme_one_liner_reads_every_face_of_every_model(scanned, tool, monkeypatch):
    import duckdb  # noqa: F401 - the one-liners name these modules
    import pandas  # noqa: F401
    import polars  # noqa: F401
    import pyarrow.dataset  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    monkeypatch.chdir(scanned)
    scope: dict = {}
    exec(readme_readers()[tool], {**globals(), **locals()}, scope)
    got = _rows(scope["faces"])
    want = _rows(read_faces(scanned / "out"))
    assert len(got) == len(want) > 0
    assert {r["film_id"] for r in got} == {"2019", "2020"}
    assert all(isinstance(r["film_id"], str) for r in got)
    assert set(got[0]) == set(want[0])  # no column dropped, none added
    prob_cols = [c for c in want[0] if c.startswith("prob_")]
    assert {"prob_contempt", "prob_angry", "prob_neutral"} <= set(prob_cols)
    for g, w in zip(got, want):
        assert (g["model_id"], g["film_id"], g["frame_index"], g["label"]) == \
            (w["model_id"], w["film_id"], w["frame_index"], w["label"])
        for c in prob_cols:
            assert (g[c] is None) == (w[c] is None), (c, g, w)
            if w[c] is not None:
                assert g[c] == pytest.approx(w[c], abs=1e-6)
    three = [r for r in got if r["model_id"].endswith("three")]
    assert three and all(r["prob_angry"] is None and r["prob_contempt"] is not None for r in three)


def test_read_faces_keeps_each_models_probabilities_summing_to_one(scanned):
    t = read_faces(scanned / "out").to_pandas()
    for model, rows in t.groupby("model_id"):
        cols = [c for c in t.columns if c.startswith("prob_") and rows[c].notna().all()]
        assert len(cols) == (3 if model.endswith("three") else 7)
        np.testing.assert_allclose(rows[cols].sum(axis=1), 1.0, atol=1e-4)
    assert not re.search(r"film_id=", "".join(str(p) for p in (scanned / "out").rglob("*")))
