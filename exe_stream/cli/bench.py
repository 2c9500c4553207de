"""``exe-stream bench`` and ``version``: throughput of every stage; the package version."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich import box
from rich.table import Table

from .. import __version__
from ._common import console, escape, say, wide


def bench_cmd(
    film: Path = typer.Argument(..., help="A film to time every stage on."),
    every: int = typer.Option(100, "--every", help="Sample every N-th frame."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    decoder: str = typer.Option("auto", "--decoder", help="auto | pyav | dali | nvdec"),
    model: List[str] = typer.Option(["fer2013-minixception"], "-m", "--model", help="Models to time (repeatable)."),
    engine: List[str] = typer.Option(["torch"], "--engine", help="Engines to time (repeatable): torch, onnxruntime, tensorrt."),
    batch_sizes: List[int] = typer.Option([1, 16, 64], "--batch-size", help="Classifier batch sizes (repeatable)."),
    films_at_once: int = typer.Option(2, "--films-at-once", help="Copies of the film decoded at once (0: skip)."),
    repeats: int = typer.Option(3, "--repeats", help="Timed repeats per measurement (median)."),
    reference: bool = typer.Option(True, "--reference/--no-reference", help="Also time the reference study's method."),
    json_out: Optional[Path] = typer.Option(None, "-o", "--json", help="Write the rows as JSON here."),
) -> None:
    """Time every stage on one film against the copy bandwidth and the reference method."""
    from ..bench import BenchOptions, bench, format_rows

    opts = BenchOptions(every=every, device=device, decoder=decoder, models=tuple(model), engines=tuple(engine),
                        batch_sizes=tuple(batch_sizes), films_at_once=films_at_once, repeats=repeats,
                        reference=reference)
    result = bench(film, opts, on_row=lambda r: console.print(f"[dim]{escape(r['stage'])}: {escape(r['what'])}[/]"))
    table = Table(title=escape(f"exe-stream bench: {film.name} on {result.device}"), box=box.SIMPLE_HEAD)
    for c in ("stage", "what", "rate", "seconds", "notes"):
        table.add_column(c, justify="right" if c in ("rate", "seconds") else "left")
    for cells in format_rows(result.rows):
        table.add_row(*(escape(c) for c in cells))
    wide(120).print(table)
    if json_out is not None:
        result.to_json(json_out)
        say(f"json: {json_out}")


def version_cmd() -> None:
    """Print the package version."""
    say(__version__)
