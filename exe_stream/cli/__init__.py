"""The ``exe-stream`` command line: a thin Typer layer over the library functions.

The root group only registers commands (one module per command group) and runs them under
the one error handler of ``_errors``.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .. import __version__
from ..metadata import load_metadata
from . import bench, compare, data, demo, doctor, live, models, scan, train
from ._errors import CliCommand, CliGroup

__all__ = ["app", "main", "load_metadata"]


def _typer(**kw) -> typer.Typer:
    # rich_markup_mode=None: help texts are plain text ("[train]" stays "[train]").
    return typer.Typer(cls=CliGroup, no_args_is_help=True, add_completion=False,
                       pretty_exceptions_enable=False, rich_markup_mode=None, **kw)


app = _typer(name="exe-stream", help="Facial-expression timelines from films: scan, compare models, report.")


def _show_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_show_version, is_eager=True,
                                                     help="Print the version and exit.")] = None,
) -> None:
    """Facial-expression timelines from films: scan, compare models, report."""


def _add(group: typer.Typer, name: str, fn) -> None:
    group.command(name, cls=CliCommand)(fn)


_add(app, "scan", scan.scan_cmd)
_add(app, "stats", compare.stats_cmd)
_add(app, "report", compare.report_cmd)
_add(app, "demo", demo.demo_cmd)
_add(app, "live", live.live_cmd)
_add(app, "evaluate", train.evaluate_cmd)
_add(app, "train", train.train_cmd)
_add(app, "cluster", train.cluster_cmd)
_add(app, "bench", bench.bench_cmd)
_add(app, "doctor", doctor.doctor_cmd)
_add(app, "version", bench.version_cmd)

models_app = _typer(help="Emotion models: list the built-in ones, export to ONNX.")
_add(models_app, "list", models.list_cmd)
_add(models_app, "export", models.export_cmd)
app.add_typer(models_app, name="models")

data_app = _typer(help="Training data: pull stock photos by emotion keywords, extract faces, clean.")
_add(data_app, "pull", data.pull_cmd)
_add(data_app, "extract", data.extract_cmd)
_add(data_app, "clean", data.clean_cmd)
_add(data_app, "harvest", data.harvest_cmd)
app.add_typer(data_app, name="data")


def main() -> None:  # pragma: no cover - console entry
    app()
