"""``exe-stream stats`` and ``exe-stream report``: compare two models film by film."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from ..metadata import load_metadata
from ._common import (Bootstrap, By, Correction, LargestOnly, Measure, Unit, MetadataFile, MinConfidence, MinFaceArea,
                      Per, ScanOut, Seed, escape, note, say, wide)


def _resolve_models(out: Path, a: Optional[str], b: Optional[str]) -> tuple[str, str]:
    """--a/--b, defaulting to the scan's two models when it holds exactly two."""
    from ..stats import available_models

    if a and b:
        return a, b
    avail = available_models(out)
    if len(avail) == 2:
        if a is None and b is None:
            return avail[0], avail[1]
        given = a or b
        if given in avail:
            other = avail[1] if given == avail[0] else avail[0]
            return (given, other) if a else (other, given)
    listing = ", ".join(avail) if avail else "none"
    raise ValueError(f"give both --a and --b (the scan {out} holds {len(avail)} models: {listing})")


def _fmt(v: float, spec: str = ".3f") -> str:
    return "-" if v is None or v != v else format(v, spec)


def _fmt_p(p: float) -> str:
    return "-" if p != p else ("<0.001" if p < 0.001 else f"{p:.3f}")


def _marker(p: float) -> str:
    return "" if p != p else "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


def print_stats(result) -> None:
    """Terminal table of a ``stats.StatsResult``: one row per (group, emotion), then the
    dominant-emotion counts and the notes."""
    o = result.options
    by = bool(o.by)
    title = (f"{result.a} (A) vs {result.b} (B): {o.measure} per {o.per}, "
             f"{len(result.film_ids)} paired films")
    table = Table(title=escape(title), box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                  caption=f"diff = A - B, 95% CI by bootstrap; p of the paired t and Wilcoxon tests adjusted "
                  f"across emotions ({o.correction}); * < 0.05, ** < 0.01, *** < 0.001 on p_t adj")
    cols = (["group"] if by else []) + ["emotion", "n", "mean A", "mean B", "diff", "95% CI",
                                         "t", "p_t adj", "W", "p_w adj", "d_z", ""]
    for c in cols:
        table.add_column(c, justify="left" if c in ("group", "emotion", "") else "right", no_wrap=True)
    for r in result.records:
        row = ([escape(r["group"])] if by else []) + [
            escape(r["emotion"]), str(r["n_films"]), _fmt(r["mean_a"]), _fmt(r["mean_b"]),
            _fmt(r["mean_diff"], "+.3f"), f"{_fmt(r['ci_low'], '+.3f')},{_fmt(r['ci_high'], '+.3f')}",
            _fmt(r["t"], ".2f"), _fmt_p(r["p_t_adj"]), _fmt(r["w"], "g"), _fmt_p(r["p_w_adj"]),
            _fmt(r["d_z"], ".2f"), _marker(r["p_t_adj"]),
        ]
        table.add_row(*row)
    # Wider than a pipe's default 80 columns: the table is about 100 wide.
    wide(110).print(table)
    for side, model, counts in (("A", result.a, result.dominant_a), ("B", result.b, result.dominant_b)):
        top = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]) if v)
        say(f"dominant emotion per film, {side} ({model}): {top or 'none'}")
    for n in result.notes:
        note(n)


def _stats_options(measure, per, min_confidence, min_face_area, largest_only, correction, n_boot, seed, by,
                   unit="film"):
    from ..stats import StatsOptions

    return StatsOptions(measure=measure, per=per, min_confidence=min_confidence, min_face_area=min_face_area,
                        largest_only=largest_only, correction=correction, n_boot=n_boot, seed=seed, by=by,
                        unit=unit)


def stats_cmd(
    out: ScanOut,
    a: Annotated[Optional[str], typer.Option("--a", help="Model A (default: the first of the scan's two models).")] = None,
    b: Annotated[Optional[str], typer.Option("--b", help="Model B (default: the second of the scan's two models).")] = None,
    measure: Measure = "label",
    per: Per = "faces",
    min_confidence: MinConfidence = 0.0,
    min_face_area: MinFaceArea = 0.0,
    largest_only: LargestOnly = False,
    unit: Unit = "film",
    correction: Correction = "holm",
    n_boot: Bootstrap = 10000,
    seed: Seed = 0,
    by: By = None,
    metadata: MetadataFile = None,
    fmt: Annotated[str, typer.Option("--format", help="table | csv | json | arrow")] = "table",
    output: Annotated[Optional[Path], typer.Option(
        "-o", "--output", help="Write csv/json/arrow here instead of stdout (with table: the JSON too).")] = None,
) -> None:
    """Compare two models film by film: paired t and Wilcoxon tests per emotion."""
    from ..options import check_choice
    from ..shards import write_table
    from ..stats import stats

    check_choice("fmt", fmt, ("table", "csv", "json", "arrow"))
    if fmt == "arrow" and output is None:
        raise ValueError("--format arrow needs -o FILE")
    from ..storage import is_uri, local_copy

    if not is_uri(out) and not Path(out).is_dir():
        raise ValueError(f"scan output directory {out} does not exist")
    opts = _stats_options(measure, per, min_confidence, min_face_area, largest_only, correction, n_boot, seed, by,
                          unit)
    meta = load_metadata(metadata) if metadata else None
    with local_copy(out) as local:  # a scan in object storage is read from a temporary copy
        model_a, model_b = _resolve_models(local, a, b)
        result = stats(local, model_a, model_b, opts, metadata=meta)
    if fmt == "table":
        print_stats(result)
        if output is not None:
            result.to_json(output)
    elif fmt == "arrow":
        write_table(output, result.to_arrow())
    else:
        text = result.to_json() if fmt == "json" else result.to_csv()
        if output is not None:
            from ..atomic import atomic_write_text

            atomic_write_text(output, text if text.endswith("\n") else text + "\n")
        else:
            typer.echo(text, nl=not text.endswith("\n"))


def report_cmd(
    out: ScanOut,
    out_dir: Annotated[Optional[Path], typer.Option(
        "-o", "--out", help="Where the PNGs and report.html go (default OUT/report).")] = None,
    a: Annotated[Optional[str], typer.Option("--a", help="Model A (default: the scan's models when it holds one or two).")] = None,
    b: Annotated[Optional[str], typer.Option(
        "--b", help="Model B (leave out, with one model in the scan, for a one-model report).")] = None,
    measure: Measure = "label",
    per: Per = "faces",
    min_confidence: MinConfidence = 0.0,
    min_face_area: MinFaceArea = 0.0,
    largest_only: LargestOnly = False,
    unit: Unit = "film",
    correction: Correction = "holm",
    n_boot: Bootstrap = 10000,
    seed: Seed = 0,
    by: By = None,
    metadata: MetadataFile = None,
    window: Annotated[Optional[int], typer.Option(
        "--window", help="Sampled frames per rolling window in the timelines (default: about 1/25 of each film).")] = None,
) -> None:
    """Plots (PNG) and one self-contained HTML page: shares, timelines, face sizes, model differences."""
    from ..report import report
    from ..storage import is_uri, local_copy

    if is_uri(out) and out_dir is None:
        raise ValueError(f"the report of a scan in object storage ({out}) needs -o DIR for its files")
    opts = _stats_options(measure, per, min_confidence, min_face_area, largest_only, correction, n_boot, seed, by,
                          unit)
    meta = load_metadata(metadata) if metadata else None
    with local_copy(out) as local:  # a scan in object storage is read from a temporary copy
        result = report(local, out_dir, a=a, b=b, opts=opts, metadata=meta, window=window)
    say(f"report: {result.html}")
    say(f"plots:  {len(result.plots)} PNG files in {result.out_dir}")
