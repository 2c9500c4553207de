"""``exe-stream train --grid GRID``: train a list of variants of one recipe and tabulate them.

A grid file is a recipe (``exe_stream.data.recipe``) with a ``[grid]`` table::

    data_dir = "data/emotions-stock"      # optional, as in any recipe (--data overrides)

    [train]                               # the base every variant starts from
    architecture = "resnet18"
    epochs = 15

    [grid]
    recipe = "../recipes/emotions-stock.toml"   # optional: take its [train] (and data_dir) as the
                                                # base, under this file's own [train]
    [[grid.variants]]
    name = "v01-head-only"                # required, unique: the variant's output directory
    trainable_blocks = 0                  # any [train] key
    [[grid.variants]]
    name = "v02-last-two-blocks"
    trainable_blocks = 2
    lr = 1e-4

Each variant trains into ``OUT/<name>/`` with ``exe_stream.train.train`` (so an interrupted
grid started again skips the finished variants and resumes the one that was running), and
after every variant ``OUT/results.csv`` and ``OUT/results.md`` are rewritten: one row per
variant with what it changes, its best epoch and that epoch's validation accuracy, macro-F1
and loss, and its training time. A variant that fails is recorded with the reason and the
grid goes on.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ..atomic import atomic_write_text
from ..data.recipe import RecipeError, load_recipe
from .config import TrainConfig, TrainError, config_from_table
from .loop import EpochMetrics, RunRecord, train

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
GRID_KEYS = ("recipe", "variants")
COLUMNS = ("variant", "changes", "status", "best_epoch", "epochs", "val_accuracy", "val_macro_f1",
           "val_loss", "train_minutes", "reason")


@dataclass(frozen=True)
class Variant:
    """One row of a grid: a name, the [train] keys it changes, the resulting configuration."""

    name: str
    overrides: Mapping[str, Any]
    config: TrainConfig


@dataclass(frozen=True)
class Grid:
    """A parsed grid file."""

    path: Path
    name: str
    # The data directory named by the grid (or its base recipe); None when neither names one.
    data_dir: Path | None
    base: TrainConfig
    variants: tuple[Variant, ...]


@dataclass
class GridResult:
    """What a grid run did: one row per variant (``COLUMNS``), the table files."""

    out_dir: Path
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r["status"] == "done" for r in self.rows)

    @property
    def csv_path(self) -> Path:
        return self.out_dir / RESULTS_CSV

    @property
    def markdown_path(self) -> Path:
        return self.out_dir / RESULTS_MD


def load_grid(path: str | Path) -> Grid:
    """Parse a grid file (see the module docstring). Errors name the file, the table and the key."""
    recipe = load_recipe(path)
    where = recipe.where("grid")
    table = recipe.section("grid")
    if not table:
        raise RecipeError(f"{recipe.where()}: a grid needs a [grid] table with [[grid.variants]]")
    unknown = [k for k in table if k not in GRID_KEYS]
    if unknown:
        raise RecipeError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(GRID_KEYS)}")
    base_table: dict[str, Any] = {}
    data_dir = Path(recipe["data_dir"]).expanduser() if recipe.get("data_dir") else None
    if "recipe" in table:
        if not isinstance(table["recipe"], str):
            raise RecipeError(f"{where}: recipe must be a string (a path relative to the grid file)")
        base_path = (recipe.path.parent / table["recipe"]).resolve()
        base_recipe = load_recipe(base_path)
        config_from_table(base_recipe.section("train"), base_recipe.where("train"))  # its own errors first
        base_table.update(base_recipe.section("train"))
        if data_dir is None and base_recipe.get("data_dir"):
            data_dir = Path(base_recipe["data_dir"]).expanduser()
    base_table.update(recipe.section("train"))
    base = config_from_table(base_table, recipe.where("train"))
    variants_raw = table.get("variants")
    if not isinstance(variants_raw, list) or not variants_raw or not all(isinstance(v, dict) for v in variants_raw):
        raise RecipeError(f"{where}: variants must be a non-empty array of tables ([[grid.variants]])")
    variants: list[Variant] = []
    for i, raw in enumerate(variants_raw, 1):
        vwhere = f"{recipe.where('grid', 'variants')} #{i}"
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise RecipeError(f"{vwhere}: name must be a string of letters, digits, '.', '_', '-' "
                              f"(the variant's directory), got {name!r}")
        if any(v.name == name for v in variants):
            raise RecipeError(f"{vwhere}: name {name!r} is used twice")
        overrides = {k: v for k, v in raw.items() if k != "name"}
        config = config_from_table({**base_table, **overrides}, vwhere)
        variants.append(Variant(name, overrides, config))
    return Grid(recipe.path, recipe.name, data_dir, base, tuple(variants))


def _changes(overrides: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "(base)"


def _row(variant: Variant, record: RunRecord | None, reason: str = "") -> dict[str, Any]:
    row: dict[str, Any] = {c: "" for c in COLUMNS}
    row.update(variant=variant.name, changes=_changes(variant.overrides), epochs=variant.config.epochs)
    if record is None:
        row.update(status="failed", reason=reason)
        return row
    best: EpochMetrics = record.best
    row.update(status="done", best_epoch=record.best_epoch, val_accuracy=round(best.val_accuracy, 4),
               val_macro_f1=round(best.val_macro_f1, 4), val_loss=round(best.val_loss, 4),
               train_minutes=round(record.timings.get("total_s", 0.0) / 60.0, 2))
    return row


def results_markdown(rows: list[dict[str, Any]], title: str) -> str:
    """The results as a markdown table (best values of each metric in bold)."""
    done = [r for r in rows if r["status"] == "done"]
    best = {k: max((r[k] for r in done), default=None) for k in ("val_accuracy", "val_macro_f1")}
    lines = [f"# {title}", "",
             "| variant | changes | best epoch | val accuracy | val macro-F1 | val loss | minutes |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if r["status"] != "done":
            lines.append(f"| {r['variant']} | {r['changes']} | failed: {r['reason']} | | | | |")
            continue
        cells = [f"**{r[k]:.4f}**" if r[k] == best[k] else f"{r[k]:.4f}" for k in ("val_accuracy", "val_macro_f1")]
        lines.append(f"| {r['variant']} | {r['changes']} | {r['best_epoch']}/{r['epochs']} | {cells[0]} | "
                     f"{cells[1]} | {r['val_loss']:.4f} | {r['train_minutes']:.2f} |")
    return "\n".join(lines) + "\n"


def _write_tables(result: GridResult, title: str) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    w.writeheader()
    w.writerows(result.rows)
    for path, text in ((result.csv_path, buf.getvalue()), (result.markdown_path, results_markdown(result.rows, title))):
        atomic_write_text(path, text)


def run_grid(
    grid: Grid | str | Path,
    data: str | Path | None,
    out_dir: str | Path,
    *,
    device: str | None = None,
    epochs: int | None = None,
    on_variant: Callable[[Variant, int, int], None] | None = None,
    on_epoch_end: Callable[[EpochMetrics], None] | None = None,
) -> GridResult:
    """Train every variant of ``grid`` on ``data`` (default: the grid's data_dir) into
    ``out_dir/<variant>/`` and write the results tables after each; ``epochs`` overrides every
    variant's epochs. Returns the rows (variants that failed carry the reason)."""
    g = grid if isinstance(grid, Grid) else load_grid(grid)
    data_path = Path(data) if data is not None else g.data_dir
    if data_path is None:
        raise RecipeError(f"recipe {g.path}: no data_dir; add data_dir = \"DIR\" or give --data DIR")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = GridResult(out)
    for i, v in enumerate(g.variants):
        if on_variant is not None:
            on_variant(v, i, len(g.variants))
        config = v.config if epochs is None else v.config.with_overrides(epochs=epochs)
        try:
            record = train(config, data_path, out / v.name, device=device, recipe=g.path, on_epoch_end=on_epoch_end)
            result.rows.append(_row(v, record))
        except TrainError as e:
            result.rows.append(_row(v, None, str(e)))
        _write_tables(result, f"{g.name}: {len(g.variants)} variants, validation metrics of the best epoch")
    return result
