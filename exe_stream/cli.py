"""The ``exe-stream`` command line: a thin Typer layer over the library functions."""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import __version__
from .errors import ExeStreamError

app = typer.Typer(
    name="exe-stream",
    help="Facial-expression timelines from films: scan, compare models, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Emotion models: list the built-in ones.", no_args_is_help=True)
app.add_typer(models_app, name="models")
data_app = typer.Typer(
    help="Training data: pull stock photos by emotion keywords, extract faces, clean.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")

console = Console(stderr=True)
out_console = Console()


def _fail_usage(message: str) -> None:
    console.print(f"[red]error:[/] {message}")
    raise typer.Exit(2)


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


def print_summary(result, models: list[str]) -> None:
    """Summary table: per film status, frames, faces and each model's top emotions."""
    from .shards import read_faces

    ids = {f.film_id for f in result.films}
    shares: dict[str, Counter] = {}
    for m in models:
        try:
            t = read_faces(result.out, m)
        except FileNotFoundError:
            shares[m] = Counter()
            continue
        film = t.column("film_id").to_pylist()
        shares[m] = Counter(lbl for fid, lbl in zip(film, t.column("label").to_pylist()) if fid in ids)
    table = Table(title=f"exe-stream scan -> {result.out}", show_lines=False)
    for col in ("film", "status", "frames", "faces", "seconds"):
        table.add_column(col, justify="right" if col in ("frames", "faces", "seconds") else "left")
    for f in result.films:
        colour = {"done": "green", "skipped": "cyan", "partial": "yellow", "failed": "red"}[f.status]
        table.add_row(escape(f.film_id), f"[{colour}]{f.status}[/]", str(f.frames), str(f.faces), f"{f.seconds:.1f}")
    out_console.print(table)
    total_frames = sum(f.frames for f in result.films)
    total_faces = sum(f.faces for f in result.films)
    out_console.print(f"films: {len(result.films)}  frames sampled: {total_frames}  faces: {total_faces}")
    for m, c in shares.items():
        n = sum(c.values())
        top = ", ".join(f"{lbl} {100 * k / n:.0f}%" for lbl, k in c.most_common()) if n else "no faces"
        out_console.print(escape(f"emotion shares [{m}]: {top}"))
    bad = [f for f in result.films if f.status in ("failed", "partial")]
    for f in bad:
        out_console.print(f"[{'red' if f.status == 'failed' else 'yellow'}]{f.status}[/] {escape(f.reason)}")


def run_scan(paths: list[Path], out: Path, opts, metadata=None, quiet: bool = False):
    """Run ``pipeline.scan`` with progress bars (overall and per film) unless quiet."""
    from .pipeline import scan

    if quiet:
        return scan(paths, out, opts, metadata=metadata)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    ) as progress:
        overall = progress.add_task("films", total=None)
        film_task = progress.add_task("", total=None)

        def start(film_id, path, i):
            progress.update(overall, completed=i)
            progress.reset(film_task, description=f"  {film_id}", total=None)

        def frames(done, total):
            progress.update(film_task, completed=done, total=total)

        def end(res):
            progress.advance(overall)

        from .decode import find_videos

        progress.update(overall, total=len(find_videos(paths)))
        return scan(paths, out, opts, metadata=metadata, on_film_start=start, on_frames=frames, on_film_end=end)


@app.command("scan")
def scan_cmd(
    paths: List[Path] = typer.Argument(..., help="Films, or directories searched recursively for video files."),
    out: Path = typer.Option(..., "-o", "--out", help="Output directory for shards and manifest."),
    model: List[str] = typer.Option(
        ["fer2013-minixception"], "--model", "-m",
        help="Model name or directory; repeat for several; 'ens:a+b' averages probabilities."),
    every: Optional[int] = typer.Option(None, "--every", help="Sample every N-th frame (default 100)."),
    interval: Optional[float] = typer.Option(None, "--interval", help="Sample every S seconds instead."),
    sampling: str = typer.Option("exact", "--sampling", help="exact | keyframe"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    decoder: str = typer.Option("auto", "--decoder", help="auto | pyav | nvdec | dali"),
    detector: str = typer.Option("blazeface-full", "--detector", help="blazeface-full | blazeface-short"),
    engine: str = typer.Option("auto", "--engine", help="auto | torch | onnxruntime | tensorrt"),
    min_face_score: Optional[float] = typer.Option(
        None, "--min-face-score", help="Detector score threshold (default: the model's MediaPipe one, 0.6 full / 0.5 short)."),
    max_faces: int = typer.Option(0, "--max-faces", help="Keep at most N faces per frame, largest first (0 = all)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Sampled frames per batch."),
    metadata: Optional[Path] = typer.Option(None, "--metadata", help="film_id/title/genre CSV or JSON."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip films already scanned identically."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bars or summary."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Log details (tracebacks of failed films)."),
) -> None:
    """Scan films: sample frames, find faces, classify emotions, write Arrow shards."""
    from .detect import DetectorOptions
    from .pipeline import ScanOptions
    from .sampling import SamplingOptions

    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING)
    try:
        if every is not None and interval is not None:
            raise ValueError("use either --every or --interval, not both")
        s = SamplingOptions(every=every if interval is None else None, interval=interval, mode=sampling) \
            if (every is not None or interval is not None) else SamplingOptions(mode=sampling)
        det = DetectorOptions(name=detector, min_score=min_face_score, max_faces=max_faces)
        opts = ScanOptions(sampling=s, detector=det, models=tuple(model), device=device,
                           decoder=decoder, engine=engine, batch_size=batch_size, resume=resume)
        meta = load_metadata(metadata) if metadata else None
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise ValueError(f"no such file or directory: {', '.join(missing)}")
        result = run_scan(paths, out, opts, metadata=meta, quiet=quiet)
    except (ValueError, ExeStreamError) as e:
        _fail_usage(str(e))
        return
    if not result.films:
        _fail_usage(f"no video files found in {', '.join(map(str, paths))}")
    if not quiet:
        print_summary(result, list(opts.models))
    raise typer.Exit(0 if result.ok else 1)


def _resolve_models(out: Path, a: Optional[str], b: Optional[str]) -> tuple[str, str]:
    """--a/--b, defaulting to the scan's two models when it holds exactly two."""
    from .stats import available_models

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
    Console(width=max(out_console.width, 110), highlight=False).print(table)
    for side, model, counts in (("A", result.a, result.dominant_a), ("B", result.b, result.dominant_b)):
        top = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]) if v)
        out_console.print(escape(f"dominant emotion per film, {side} ({model}): {top or 'none'}"))
    for note in result.notes:
        out_console.print(f"[yellow]note:[/] {escape(note)}")


@app.command("stats")
def stats_cmd(
    out: Path = typer.Argument(..., help="A scan's output directory."),
    a: Optional[str] = typer.Option(None, "--a", help="Model A (default: the first of the scan's two models)."),
    b: Optional[str] = typer.Option(None, "--b", help="Model B (default: the second of the scan's two models)."),
    measure: str = typer.Option("label", "--measure", help="label (share of faces with that top label) | prob (mean probability)"),
    per: str = typer.Option("faces", "--per", help="faces | frames: the denominator of each film's measure."),
    min_confidence: float = typer.Option(0.0, "--min-confidence", help="Drop faces whose top-class probability is below this."),
    min_face_area: float = typer.Option(0.0, "--min-face-area", help="Drop faces whose box covers less than this fraction of the frame."),
    largest_only: bool = typer.Option(False, "--largest-only", help="Count only the largest face of each frame."),
    correction: str = typer.Option("holm", "--correction", help="holm | bh: p-value correction across emotions."),
    bootstrap: int = typer.Option(10000, "--bootstrap", help="Bootstrap resamples for the 95% interval (0: none)."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    by: Optional[str] = typer.Option(None, "--by", help="Also compare within each group of this metadata column (e.g. genre)."),
    metadata: Optional[Path] = typer.Option(None, "--metadata", help="film_id/title/genre CSV or JSON (adds to the scan's)."),
    fmt: str = typer.Option("table", "--format", help="table | csv | json | arrow"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write csv/json/arrow here instead of stdout (with table: the JSON too)."),
) -> None:
    """Compare two models film by film: paired t and Wilcoxon tests per emotion."""
    from .shards import write_table
    from .stats import StatsOptions, stats

    formats = ("table", "csv", "json", "arrow")
    try:
        if fmt not in formats:
            raise ValueError(f"format must be one of {', '.join(formats)}; got {fmt!r}")
        if fmt == "arrow" and output is None:
            raise ValueError("--format arrow needs -o FILE")
        if not out.is_dir():
            raise ValueError(f"scan output directory {out} does not exist")
        opts = StatsOptions(measure=measure, per=per, min_confidence=min_confidence,
                            min_face_area=min_face_area, largest_only=largest_only,
                            correction=correction, n_boot=bootstrap, seed=seed, by=by)
        meta = load_metadata(metadata) if metadata else None
        model_a, model_b = _resolve_models(out, a, b)
        result = stats(out, model_a, model_b, opts, metadata=meta)
    except (ValueError, ExeStreamError) as e:
        _fail_usage(str(e))
        return
    if fmt == "table":
        print_stats(result)
        if output is not None:
            result.to_json(output)
    elif fmt == "arrow":
        write_table(output, result.to_arrow())
    else:
        text = result.to_json() if fmt == "json" else result.to_csv()
        if output is not None:
            output.write_text(text if text.endswith("\n") else text + "\n")
        else:
            typer.echo(text, nl=not text.endswith("\n"))


@app.command("report")
def report_cmd(
    out: Path = typer.Argument(..., help="A scan's output directory."),
    out_dir: Optional[Path] = typer.Option(None, "-o", "--out", help="Where the PNGs and report.html go (default OUT/report)."),
    a: Optional[str] = typer.Option(None, "--a", help="Model A (default: the scan's models when it holds one or two)."),
    b: Optional[str] = typer.Option(None, "--b", help="Model B (leave out, with one model in the scan, for a one-model report)."),
    measure: str = typer.Option("label", "--measure", help="label (share of faces with that top label) | prob (mean probability)"),
    per: str = typer.Option("faces", "--per", help="faces | frames: the denominator of each film's measure."),
    min_confidence: float = typer.Option(0.0, "--min-confidence", help="Drop faces whose top-class probability is below this."),
    min_face_area: float = typer.Option(0.0, "--min-face-area", help="Drop faces whose box covers less than this fraction of the frame."),
    largest_only: bool = typer.Option(False, "--largest-only", help="Count only the largest face of each frame."),
    correction: str = typer.Option("holm", "--correction", help="holm | bh: p-value correction across emotions."),
    bootstrap: int = typer.Option(10000, "--bootstrap", help="Bootstrap resamples for the 95% interval (0: none)."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    by: Optional[str] = typer.Option(None, "--by", help="Also compare within each group of this metadata column (e.g. genre)."),
    metadata: Optional[Path] = typer.Option(None, "--metadata", help="film_id/title/genre CSV or JSON (adds to the scan's)."),
    window: Optional[int] = typer.Option(None, "--window", help="Sampled frames per rolling window in the timelines (default: about 1/25 of each film)."),
) -> None:
    """Plots (PNG) and one self-contained HTML page: shares, timelines, face sizes, model differences."""
    from .report import report
    from .stats import StatsOptions

    try:
        opts = StatsOptions(measure=measure, per=per, min_confidence=min_confidence,
                            min_face_area=min_face_area, largest_only=largest_only,
                            correction=correction, n_boot=bootstrap, seed=seed, by=by)
        meta = load_metadata(metadata) if metadata else None
        result = report(out, out_dir, a=a, b=b, opts=opts, metadata=meta, window=window)
    except (ValueError, ExeStreamError) as e:
        _fail_usage(str(e))
        return
    out_console.print(f"report: {result.html}", soft_wrap=True)
    out_console.print(f"plots:  {len(result.plots)} PNG files in {result.out_dir}", soft_wrap=True)


@models_app.command("list")
def models_list() -> None:
    """List the built-in emotion models with their labels and sources."""
    from .models import list_models

    table = Table(title="built-in emotion models")
    for col in ("name", "architecture", "input", "labels", "source", "license"):
        table.add_column(col, no_wrap=col in ("name", "architecture"))
    for card in list_models():
        table.add_row(card.name, card.architecture, f"{card.input_size[0]}x{card.input_size[1]} {card.colour}",
                      ", ".join(card.labels), card.source, card.license)
    out_console.print(table)


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("exe-stream-demo"), "-o", "--out", help="Where the demo writes its outputs."),
    quiet: bool = typer.Option(False, "-q", "--quiet"),
) -> None:
    """Scan the bundled clips with both built-in models, compare them, write the report."""
    from .demo import demo

    try:
        result = demo(out, quiet=quiet, run=run_scan, summary=print_summary, show_stats=print_stats)
    except (ExeStreamError, ValueError, OSError) as e:
        console.print(f"[red]error:[/] {escape(str(e))}")
        raise typer.Exit(1) from e
    raise typer.Exit(0 if result.ok else 1)


@app.command("version")
def version_cmd() -> None:
    """Print the package version."""
    out_console.print(__version__)


def main() -> None:  # pragma: no cover - console entry
    app()
