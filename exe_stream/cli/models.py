"""``exe-stream models``: list the built-in models, export models to ONNX."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ._common import escape, out_console, say


def list_cmd() -> None:
    """List the built-in emotion models with their labels and sources."""
    from ..models import list_models

    table = Table(title="built-in emotion models")
    for col in ("name", "architecture", "input", "labels", "source", "license"):
        table.add_column(col, no_wrap=col in ("name", "architecture"))
    for card in list_models():
        table.add_row(*(escape(c) for c in (card.name, card.architecture, f"{card.input_size[0]}x{card.input_size[1]} {card.colour}",
                                             ", ".join(card.labels), card.source, card.license)))
    out_console.print(table)


def export_cmd(
    model: List[str] = typer.Argument(..., help="Model names or directories; an ensemble exports each member."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | fp16"),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (18 or later)."),
    out: Optional[Path] = typer.Option(
        None, "-o", "--out", help="Directory for the .onnx files (default: the engine cache, see README)."),
) -> None:
    """Export models to ONNX with a dynamic batch axis (what the onnxruntime and tensorrt engines run)."""
    from ..engines.onnx_export import export_models

    results = export_models(model, precision=precision, opset=opset, cache=out)
    for name, exp in results:
        say(f"{name}: {exp.path} ({'exported' if exp.exported else 'cached'})")
