"""Film metadata files (``--metadata``): film_id/title/genre as CSV or JSON."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


def load_metadata(path: Path) -> dict[str, dict[str, Any]]:
    """Film metadata from CSV (header with film_id or file, title, genre, ...) or JSON
    (a list of records, or a mapping film_id -> record). Keys are film ids or file names."""
    if not path.exists():
        raise ValueError(f"metadata file {path} does not exist")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            records = list(data.values()) if isinstance(data, dict) else data
            if isinstance(data, dict):
                for k, rec in data.items():
                    rec.setdefault("film_id", k)
        else:
            with open(path, newline="") as fh:
                records = list(csv.DictReader(fh))
    except (json.JSONDecodeError, csv.Error, UnicodeDecodeError, AttributeError) as e:
        raise ValueError(f"metadata file {path} is not valid CSV/JSON: {e}") from e
    table: dict[str, dict[str, Any]] = {}
    for rec in records:
        key = rec.get("film_id") or rec.get("file")
        if not key:
            raise ValueError(f"metadata file {path}: every record needs a 'film_id' or 'file' field")
        table[str(key)] = dict(rec)
    return table
