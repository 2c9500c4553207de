"""``exe-stream doctor``: what this machine has and which backends pass their parity check."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from ._common import console, escape, say, wide
from ._errors import EXIT_FAILED


def _figure(c) -> str:
    if c.figure is None:
        return ""
    return f"{c.figure:.3g} (<= {c.tolerance:.3g})" if c.tolerance is not None else f"{c.figure:.3g}"


def doctor_cmd(
    bench: Annotated[bool, typer.Option("--bench", help="Also time every stage (exe-stream bench) on the bench film.")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write everything found here (JSON).")] = None,
    bench_film: Annotated[Optional[Path], typer.Option("--bench-film", help="Film to bench (default: the bundled clip).")] = None,
    bench_every: Annotated[int, typer.Option("--bench-every", help="Bench: sample every N-th frame.")] = 10,
    bench_repeats: Annotated[int, typer.Option("--repeats", help="Bench: timed repeats per measurement (median).")] = 3,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Log each check's traceback.")] = False,
) -> None:
    """Python, torch, CUDA, driver and GPU; each backend installed, importable and passing its
    parity check on a bundled clip (with the figure); what auto picks. Exit 1 if a check (or
    the bench) fails."""
    import dataclasses

    from ..doctor import DoctorOptions, add_bench, doctor

    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING)
    opts = DoctorOptions(bench=bench, bench_film=bench_film, bench_every=bench_every, bench_repeats=bench_repeats)
    report = doctor(dataclasses.replace(opts, bench=False),
                    on_check=lambda c: console.print(f"[dim]checked {escape(c.name)}: {escape(c.status)}[/]"))
    if json_out is not None:  # the checks are kept even if the bench is then cut short
        report.to_json(json_out)
    if bench:
        console.print("[dim]bench...[/]")
        add_bench(report, opts)
    s = report.system
    say(f"exe-stream {s['exe_stream']}, Python {s['python']}, torch {s['torch']} (CUDA {s['torch_cuda'] or 'none'}), "
        f"{s['cpu_cores']} CPU cores, {s['platform']}")
    drv = s["driver"]
    if s["gpu"]:
        g = s["gpu"]
        say(f"GPU: {g['name']} (compute {g['compute_capability']}, {g['memory_gib']} GiB, {g['count']} device(s)), "
            f"NVDEC engines {g['nvdec_engines']}; driver {drv['nvidia_smi'] or '?'} (CUDA driver API "
            f"{drv['cuda_driver_api'] or '?'})")
    else:
        say("GPU: none (torch sees no CUDA device): the CUDA checks are skipped")
    table = Table(title="backends", box=box.SIMPLE_HEAD)
    for col in ("backend", "kind", "installed", "importable", "check", "figure", "detail"):
        table.add_column(col)
    colour = {"pass": "green", "reference": "cyan", "skipped": "yellow", "fail": "red"}
    for c in report.checks:
        imp = "" if c.importable is None else ("yes" if c.importable else "no")
        table.add_row(escape(c.name), c.kind, "yes" if c.installed else "no", imp,
                      f"[{colour[c.status]}]{c.status}[/]", escape(_figure(c)), escape(c.detail))
    wide(140).print(table)
    a = report.auto
    say(f"auto picks: device {a['device']}, decoder {a['decoder']}, engine {a['engine']} "
        "(accelerated ones are checked against the verified path on their first batch in every scan)")
    if report.bench is not None:
        from ..bench import format_rows

        bt = Table(title="bench", box=box.SIMPLE_HEAD)
        for col in ("stage", "what", "rate", "seconds", "notes"):
            bt.add_column(col, justify="right" if col in ("rate", "seconds") else "left")
        for cells in format_rows(report.bench):
            bt.add_row(*(escape(x) for x in cells))
        wide(120).print(bt)
    if report.bench_error:
        say(f"the bench stopped: {report.bench_error}")
    if json_out is not None:
        report.to_json(json_out)
        say(f"json: {json_out}")
    if report.bench_error or any(c.status == "fail" for c in report.checks):
        raise typer.Exit(EXIT_FAILED)
