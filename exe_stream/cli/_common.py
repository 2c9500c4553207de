"""What the CLI's commands share: the consoles, plain-text printers (user text is never read
as Rich markup), progress bars and the ``Annotated`` option aliases used by several commands."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

# Errors, warnings, progress: stderr. Results: stdout. Neither highlights numbers or paths.
console = Console(stderr=True, highlight=False, soft_wrap=True)
out_console = Console(highlight=False, soft_wrap=True)

__all__ = ["console", "out_console", "escape", "say", "error", "warn", "note", "wide", "progress_bar"]


def say(text: str, style: str | None = None, prefix: str = "", prefix_style: str | None = None,
        err: bool = False) -> None:
    """Print ``text`` as plain text (no markup, never wrapped inside a word or a list), with an
    optional styled ``prefix``."""
    line = Text.assemble((prefix, prefix_style or ""), (text, style or "")) if prefix else Text(text, style=style or "")
    (console if err else out_console).print(line, soft_wrap=True)


def error(text: str) -> None:
    """``error: <text>`` on stderr (shown with ``-q`` too)."""
    say(text, prefix="error: ", prefix_style="red", err=True)


def warn(text: str, prefix: str = "warning: ") -> None:
    say(text, prefix=prefix, prefix_style="yellow", err=True)


def note(text: str) -> None:
    say(text, prefix="note: ", prefix_style="yellow")


def wide(min_width: int) -> Console:
    """A stdout console at least ``min_width`` columns wide (tables wider than a pipe's 80)."""
    return Console(width=max(out_console.width, min_width), highlight=False, soft_wrap=True)


def progress_bar(quiet: bool, label: str) -> tuple[contextlib.AbstractContextManager, Optional[Callable[[int, int], None]]]:
    """(context manager, on_progress(done, total) callback) showing one bar unless quiet."""
    if quiet:
        return contextlib.nullcontext(), None
    progress = Progress(TextColumn(escape(label)), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=True)
    task = progress.add_task(escape(label), total=None)
    return progress, lambda done, total: progress.update(task, completed=done, total=total)


# Options shared by several commands.
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="No progress bars or summary; errors still go to stderr.")]
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda")]
MetadataFile = Annotated[Optional[Path], typer.Option("--metadata", help="film_id/title/genre CSV or JSON.")]
# A str, not a Path: stats and report also read a scan in object storage, and Path("s3://b")
# would lose a slash.
ScanOut = Annotated[str, typer.Argument(help="A scan's output directory, or its s3:// or gs:// URI.")]

# Statistics options of `stats` and `report` (the per-film measure and the comparison).
Measure = Annotated[str, typer.Option("--measure", help="label (share of faces with that top label) | prob (mean probability)")]
Per = Annotated[str, typer.Option("--per", help="faces | frames: the denominator of each film's measure.")]
MinConfidence = Annotated[float, typer.Option("--min-confidence", help="Drop faces whose top-class probability is below this.")]
MinFaceArea = Annotated[float, typer.Option("--min-face-area", help="Drop faces whose box covers less than this fraction of the frame.")]
LargestOnly = Annotated[bool, typer.Option("--largest-only", help="Count only the largest face of each frame.")]
Unit = Annotated[str, typer.Option(
    "--unit", help="film | shot | track: a film's measure over its faces, or the mean of each shot's "
                   "(track's) own measure so every shot (track) counts once; shot/track need a scan with --shots.")]
Correction = Annotated[str, typer.Option("--correction", help="holm | bh: p-value correction across emotions.")]
Bootstrap = Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for the 95% interval (0: none).")]
Seed = Annotated[int, typer.Option("--seed", help="Bootstrap seed.")]
By = Annotated[Optional[str], typer.Option("--by", help="Also compare within each group of this metadata column (e.g. genre); 'character': every character of every film is a unit (scans with --characters).")]
