"""``exe-stream demo``: the main job on the bundled clips and built-in models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import Quiet
from .compare import print_stats
from .scan import print_problems, print_summary, run_scan


def demo_cmd(
    out: Annotated[Path, typer.Option("-o", "--out", help="Where the demo writes its outputs.")] = Path("exe-stream-demo"),
    quiet: Quiet = False,
) -> None:
    """Scan the bundled clips with both built-in models, compare them, write the report."""
    from ..demo import demo

    result = demo(out, quiet=quiet, run=run_scan, summary=print_summary, show_stats=print_stats)
    print_problems(result.scan)
    raise typer.Exit(0 if result.ok else 1)
