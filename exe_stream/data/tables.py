"""Reading the tables one data stage hands the next (raw.arrow, faces.arrow, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pyarrow as pa

from ..shards import read_table


def read_stage_table(path: Path, required: Sequence[str], made_by: str, error: type[Exception]) -> pa.Table:
    """The table at ``path``, which the command ``made_by`` writes, with at least the columns
    ``required``; else ``error`` naming the file and what to do."""
    if not path.is_file():
        raise error(f"{path} does not exist; run `{made_by}` first (or give --data DIR)")
    try:
        table = read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise error(f"{path} is not a readable Arrow file: {e}") from e
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise error(f"{path} lacks columns {missing}; needs {list(required)}, has {table.column_names}")
    return table
