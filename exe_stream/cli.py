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
        film_tasks: dict = {}  # film id -> its bar (several with --films-at-once)

        def start(film_id, path, i):
            film_tasks[film_id] = progress.add_task(f"  {film_id}", total=None)

        def frames(film_id, done, total):
            progress.update(film_tasks[film_id], completed=done, total=total)

        def end(res):
            task = film_tasks.pop(res.film_id, None)
            if task is not None:
                progress.remove_task(task)
            progress.advance(overall)

        from .decode import find_videos

        progress.update(overall, total=len(find_videos(paths)))
        return scan(paths, out, opts, metadata=metadata, on_film_start=start, on_film_end=end,
                    on_film_frames=frames)


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
    engine_profile: str = typer.Option(
        "default", "--engine-profile", help="Engine build profile: a name in engines/ or a .toml file."),
    min_face_score: Optional[float] = typer.Option(
        None, "--min-face-score", help="Detector score threshold (default: the model's MediaPipe one, 0.6 full / 0.5 short)."),
    max_faces: int = typer.Option(0, "--max-faces", help="Keep at most N faces per frame, largest first (0 = all)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Sampled frames per batch."),
    films_at_once: int = typer.Option(
        0, "--films-at-once", help="Films decoded at once (0 = one per NVDEC engine with --decoder nvdec on CUDA, else 1)."),
    metadata: Optional[Path] = typer.Option(None, "--metadata", help="film_id/title/genre CSV or JSON."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip films already scanned identically."),
    embeddings: bool = typer.Option(
        False, "--embeddings", help="Also store each face's penultimate-layer embedding per model (OUT/embeddings/, for cluster)."),
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
                           decoder=decoder, engine=engine, batch_size=batch_size, resume=resume,
                           engine_profile=engine_profile, embeddings=embeddings,
                           films_at_once=films_at_once)
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


# Options shared by `stats` and `report` (the per-film measure and the comparison).
_MEASURE_OPT = typer.Option("label", "--measure", help="label (share of faces with that top label) | prob (mean probability)")
_PER_OPT = typer.Option("faces", "--per", help="faces | frames: the denominator of each film's measure.")
_MIN_CONFIDENCE_OPT = typer.Option(0.0, "--min-confidence", help="Drop faces whose top-class probability is below this.")
_MIN_FACE_AREA_OPT = typer.Option(0.0, "--min-face-area", help="Drop faces whose box covers less than this fraction of the frame.")
_LARGEST_ONLY_OPT = typer.Option(False, "--largest-only", help="Count only the largest face of each frame.")
_CORRECTION_OPT = typer.Option("holm", "--correction", help="holm | bh: p-value correction across emotions.")
_BOOTSTRAP_OPT = typer.Option(10000, "--bootstrap", help="Bootstrap resamples for the 95% interval (0: none).")
_SEED_OPT = typer.Option(0, "--seed", help="Bootstrap seed.")
_BY_OPT = typer.Option(None, "--by", help="Also compare within each group of this metadata column (e.g. genre).")
_METADATA_OPT = typer.Option(None, "--metadata", help="film_id/title/genre CSV or JSON (adds to the scan's).")


@app.command("stats")
def stats_cmd(
    out: Path = typer.Argument(..., help="A scan's output directory."),
    a: Optional[str] = typer.Option(None, "--a", help="Model A (default: the first of the scan's two models)."),
    b: Optional[str] = typer.Option(None, "--b", help="Model B (default: the second of the scan's two models)."),
    measure: str = _MEASURE_OPT,
    per: str = _PER_OPT,
    min_confidence: float = _MIN_CONFIDENCE_OPT,
    min_face_area: float = _MIN_FACE_AREA_OPT,
    largest_only: bool = _LARGEST_ONLY_OPT,
    correction: str = _CORRECTION_OPT,
    bootstrap: int = _BOOTSTRAP_OPT,
    seed: int = _SEED_OPT,
    by: Optional[str] = _BY_OPT,
    metadata: Optional[Path] = _METADATA_OPT,
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
    measure: str = _MEASURE_OPT,
    per: str = _PER_OPT,
    min_confidence: float = _MIN_CONFIDENCE_OPT,
    min_face_area: float = _MIN_FACE_AREA_OPT,
    largest_only: bool = _LARGEST_ONLY_OPT,
    correction: str = _CORRECTION_OPT,
    bootstrap: int = _BOOTSTRAP_OPT,
    seed: int = _SEED_OPT,
    by: Optional[str] = _BY_OPT,
    metadata: Optional[Path] = _METADATA_OPT,
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


@models_app.command("export")
def models_export(
    model: List[str] = typer.Argument(..., help="Model names or directories; an ensemble exports each member."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | fp16"),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (18 or later)."),
    out: Optional[Path] = typer.Option(
        None, "-o", "--out", help="Directory for the .onnx files (default: the engine cache, see README)."),
) -> None:
    """Export models to ONNX with a dynamic batch axis (what the onnxruntime and tensorrt engines run)."""
    from .engines.onnx_export import export_models

    try:
        results = export_models(model, precision=precision, opset=opset, cache=out)
    except (ValueError, ExeStreamError) as e:
        _fail_usage(str(e))
        return
    for name, exp in results:
        out_console.print(escape(f"{name}: {exp.path} ({'exported' if exp.exported else 'cached'})"), soft_wrap=True)


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


def _stage_data_dir(recipe: Optional[Path], data: Optional[Path]):
    """(Recipe or None, data directory) from an optional recipe file and --data."""
    from .data.recipe import load_recipe

    if recipe is None:
        if data is None:
            raise ValueError("give a recipe (its data_dir) or --data DIR")
        return None, data
    r = load_recipe(recipe)
    return r, r.data_dir(data)


def _stage_progress(quiet: bool, label: str):
    """(context manager, on_progress callback) showing a progress bar unless quiet."""
    import contextlib

    if quiet:
        return contextlib.nullcontext(), None
    progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=True)
    task = progress.add_task(label, total=None)
    return progress, lambda done, total: progress.update(task, completed=done, total=total)


def _pull_logging(quiet: bool, verbose: bool):
    """Show the pull's warnings (pauses, retries, skipped images) above the progress bar; -v adds
    the info lines (why each keyword stopped). Returns the handler to remove afterwards."""
    from rich.logging import RichHandler

    logger = logging.getLogger("exe_stream.data")
    handler = RichHandler(console=console, show_path=False, show_time=False, markup=False)
    handler.setLevel(logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING)
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > handler.level:
        logger.setLevel(handler.level)
    return handler


def print_pull(result, opts, verbose: bool) -> None:
    """Images per emotion before/after, requests, downloads, duplicates, stopped keywords, errors."""
    import os

    from .data.sources import get_source

    table = Table(title=escape(f"exe-stream data pull -> {result.data_dir}"), box=box.SIMPLE_HEAD)
    for col in ("emotion", "images before", "after", "new"):
        table.add_column(col, justify="left" if col == "emotion" else "right")
    for label, (before, after) in result.per_label.items():
        table.add_row(escape(label), str(before), str(after), str(after - before))
    out_console.print(table)
    if result.dry_run:
        left = [s for s in result.streams if not s.stop]
        out_console.print(escape(f"dry run: {len(left)} of {len(result.streams)} keyword/source searches have pages "
                                 f"left (at most {opts.max_pages} pages of {opts.per_page} each); nothing was fetched"))
        for s in result.streams:
            state = f"stopped: {s.stop}" if s.stop else f"next page {s.next_page}"
            out_console.print(escape(f"  {s.label:<10} {s.source:<8} {s.query!r}  {state}"), highlight=False)
        for name in opts.sources:
            src, so = get_source(name), opts.source_opts(name)
            have = "set" if os.environ.get(src.env_var) else "NOT SET"
            out_console.print(escape(f"  {name}: {so.base_url} (image size {so.image}); {src.env_var} {have}"),
                              highlight=False)
        return
    searches = ", ".join(f"{s} {n}" for s, n in result.requests.items())
    out_console.print(escape(f"images: {result.images} in raw.arrow, {result.new} new; downloads: {result.downloads}"
                             + (f" (+{result.adopted} found on disk from an interrupted run)" if result.adopted else "")
                             + f"; duplicates recorded: {result.duplicates}; search requests: {searches}"),
                      soft_wrap=True)
    shown = result.streams if verbose else [s for s in result.streams if s.pages]
    for s in shown:
        out_console.print(escape(f"  {s.label:<10} {s.source:<8} {s.query!r}: {s.pages} page(s), {s.new} new"
                                 + (f"; stopped: {s.stop}" if s.stop else "")), highlight=False)
    for err in result.errors:
        out_console.print(f"[red]error:[/] {escape(err)}", soft_wrap=True)
    if result.failed_sources:
        out_console.print("[yellow]some sources stopped early; run the same command again to resume[/]")


@data_app.command("pull")
def data_pull_cmd(
    recipe: Path = typer.Argument(..., help="Recipe TOML with a \\[pull] table (e.g. training/recipes/emotions-stock.toml)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Data directory (default: the recipe's data_dir)."),
    source: List[str] = typer.Option([], "--source", help="pexels | pixabay; repeat for both (default: the recipe's sources)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="At most N images per emotion, all runs together (overrides max_per_label; 0 = no limit)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the searches and what is left of them; no network, no files, no keys needed."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress or summary; errors only."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Also say why each keyword stopped."),
) -> None:
    """Search Pexels/Pixabay for every emotion keyword and download the photos (DATA/raw/, DATA/raw.arrow); resumable.

    API keys come from PEXELS_API_KEY and PIXABAY_API_KEY and are never printed or stored.

    Exit 0 when everything worked, 1 when a source or an image failed (the rest is saved), 2 for bad arguments, 130 when interrupted (run again to resume).
    """
    from .data.pull import PullOptions, api_keys_from_env, pull, with_overrides
    from .data.recipe import load_recipe

    try:
        r = load_recipe(recipe)
        opts = with_overrides(PullOptions.from_recipe(r), sources=source or None, limit=limit)
        data_dir = r.data_dir(data)
        keys = None if dry_run else api_keys_from_env(opts.sources)
    except (ValueError, ExeStreamError) as e:
        _fail_usage(escape(str(e)))
        return
    handler = _pull_logging(quiet, verbose)
    progress = None if quiet or dry_run else Progress(
        TextColumn("{task.description}"), TextColumn("{task.completed} new images"), TimeElapsedColumn(),
        console=console, transient=True)
    try:
        if progress is None:
            result = pull(opts, data_dir, keys=keys, dry_run=dry_run)
        else:
            with progress:
                task = progress.add_task("searching", total=None)
                on_page = lambda s: progress.update(  # noqa: E731
                    task, description=escape(f"{s.label}: {s.query!r} on {s.source}, page {s.next_page - 1}"))
                on_image = lambda row: progress.advance(task)  # noqa: E731
                result = pull(opts, data_dir, keys=keys, on_page=on_page, on_image=on_image)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: everything downloaded so far is saved; run the same command again to resume")
        raise typer.Exit(130)
    except (ValueError, ExeStreamError) as e:
        _fail_usage(escape(str(e)))
        return
    finally:
        logging.getLogger("exe_stream.data").removeHandler(handler)
    if not quiet:
        print_pull(result, opts, verbose)
    elif result.errors:
        for err in result.errors:
            console.print(f"[red]error:[/] {escape(err)}", soft_wrap=True)
    raise typer.Exit(0 if result.ok else 1)


@data_app.command("extract")
def data_extract_cmd(
    recipe: Optional[Path] = typer.Argument(None, help="Recipe TOML: its [extract] table and data_dir."),
    data: Optional[Path] = typer.Option(None, "--data", help="Data directory holding raw.arrow (default: the recipe's data_dir)."),
    detector: Optional[str] = typer.Option(None, "--detector", help="blazeface-full (default) | blazeface-short, as scan's --detector."),
    min_face_score: Optional[float] = typer.Option(None, "--min-face-score", help="Detector threshold (default: the model's MediaPipe one, as scan)."),
    margin: Optional[float] = typer.Option(
        None, "--margin", help="Crop margin: square side = max(w, h) * (1 + 2 * margin). Default 0.15 (fer2013-minixception's); "
        "the trained model's card gets the same value, so scan crops its faces the same way."),
    crop_size: Optional[int] = typer.Option(None, "--crop-size", help="Side of the saved crops in pixels (default 224)."),
    max_side: Optional[int] = typer.Option(None, "--max-side", help="Reduce larger photos to this longer side first (default 1920; 0 = never)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto (default) | cpu | cuda"),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar."),
) -> None:
    """Crop the largest face of every pulled photo (DATA/faces/, DATA/faces.arrow); resumable."""
    from .data.extract import ExtractOptions, extract

    try:
        r, data_dir = _stage_data_dir(recipe, data)
        over = dict(detector=detector, min_face_score=min_face_score, margin=margin, crop_size=crop_size,
                    max_side=max_side, device=device)
        opts = ExtractOptions.from_recipe(r, **over) if r is not None else \
            ExtractOptions(**{k: v for k, v in over.items() if v is not None})
        ctx, cb = _stage_progress(quiet, "extract")
        with ctx:
            res = extract(data_dir, opts, on_progress=cb)
    except (ValueError, ExeStreamError) as e:
        _fail_usage(str(e))
        return
    for note in res.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    out_console.print(escape(
        f"extract: {res.images} photos: {res.faces} faces, {res.no_face} without a face, {res.errors} unreadable "
        f"({res.already_done} done before) in {res.seconds:.1f} s -> {res.faces_path}"), soft_wrap=True)
    if res.errors:
        out_console.print(escape(f"unreadable photos are listed in {res.skipped_path}; a re-run retries them"))


@data_app.command("clean")
def data_clean_cmd(
    recipe: Optional[Path] = typer.Argument(None, help="Recipe TOML: its [clean] table and data_dir."),
    data: Optional[Path] = typer.Option(None, "--data", help="Data directory holding faces.arrow (default: the recipe's data_dir)."),
    hash_distance: Optional[int] = typer.Option(None, "--hash-distance", help="Perceptual-hash bits (of 64) within which crops are the same picture (default 8)."),
    min_face_size: Optional[float] = typer.Option(None, "--min-face-size", help="Drop faces smaller than this many pixels in the photo (default 48)."),
    blur_threshold: Optional[float] = typer.Option(None, "--blur-threshold", help="Drop crops whose Laplacian variance is below this (default 0 = off; try 60-100)."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar."),
) -> None:
    """Drop near-duplicates, images under two labels, small and blurry faces; report class balance."""
    from .data.clean import DROP_REASONS, CleanOptions, clean

    try:
        r, data_dir = _stage_data_dir(recipe, data)
        over = dict(hash_distance=hash_distance, min_face_size=min_face_size, blur_threshold=blur_threshold)
        opts = CleanOptions.from_recipe(r, **over) if r is not None else \
            CleanOptions(**{k: v for k, v in over.items() if v is not None})
        ctx, cb = _stage_progress(quiet, "clean")
        with ctx:
            res = clean(data_dir, opts, on_progress=cb)
    except (ValueError, ExeStreamError) as e:
        _fail_usage(str(e))
        return
    rep = res.report
    reasons = [x for x in DROP_REASONS if sum(rep["dropped"][x].values())]
    table = Table(title=escape(f"class balance: {data_dir}"), box=box.SIMPLE_HEAD)
    funnel = [k for k in ("pulled", "no_face") if rep[k] is not None]
    cols = (["label"] + [k.replace("_", " ") for k in funnel] + ["faces", "kept", "share"]
            + [x.replace("_", " ") for x in reasons])
    for c in cols:
        table.add_column(c, justify="left" if c == "label" else "right")
    total_after = max(rep["total_after"], 1)
    for lbl in sorted(set(rep["before"]) | set(rep["pulled"] or {})):
        kept = rep["after"].get(lbl, 0)
        table.add_row(escape(lbl), *[str(rep[k].get(lbl, 0)) for k in funnel],
                      str(rep["before"].get(lbl, 0)), str(kept), f"{100 * kept / total_after:.0f}%",
                      *[str(rep["dropped"][x].get(lbl, 0)) for x in reasons])
    out_console.print(table)
    ratio = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    out_console.print(escape(f"kept {rep['total_after']} of {rep['total_before']} faces; largest/smallest class "
                             f"{ratio(rep['imbalance_before'])} before, {ratio(rep['imbalance_after'])} after"))
    out_console.print(escape(f"-> {res.clean_path}, {res.report_path}"), soft_wrap=True)


@data_app.command("harvest")
def data_harvest_cmd(
    out: Path = typer.Argument(..., help="A scan's output directory: its faces are cut from its films again."),
    dest: Path = typer.Option(..., "-o", "--out", help="Where the crops go: DEST/<film_id>/f<frame>-<face>.png."),
    size: int = typer.Option(64, "--size", help="Side of the square RGB crops in pixels."),
    margin: float = typer.Option(0.15, "--margin", help="Crop margin, as a model card's crop_margin."),
    min_face_area: float = typer.Option(0.0, "--min-face-area", help="Only faces covering at least this fraction of the frame."),
) -> None:
    """Cut the faces a scan found into PNG crops: unlabelled material for autoencoder pretraining."""
    from .train.harvest import harvest_faces

    try:
        res = harvest_faces(out, dest, size=size, margin=margin, min_face_area=min_face_area)
    except (ValueError, ExeStreamError) as e:
        _fail_usage(escape(str(e)))
        return
    for note in res.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    out_console.print(escape(f"harvest: {res.written} crops written, {res.existing} there before, from "
                             f"{res.films} films -> {res.dest}"), soft_wrap=True)


@app.command("evaluate")
def evaluate_cmd(
    models: List[str] = typer.Argument(..., help="Model names or directories (as scan's --model); 'ens:a+b' too."),
    data: List[Path] = typer.Option(..., "--data", "-d", help="Test set: image folder DIR/<label>/* or FER2013 CSV; repeatable."),
    label_map: Optional[Path] = typer.Option(None, "--map", help="Label map (JSON/TOML object or from,to CSV) naming common classes."),
    out: Path = typer.Option(Path("evaluation"), "-o", "--out", help="Where the tables and confusion PNGs go."),
    allow_overlap: bool = typer.Option(False, "--allow-overlap", help="Evaluate even when test images are in a model's training data (warn)."),
    usage: List[str] = typer.Option([], "--usage", help="FER2013 CSV rows to use by Usage (Training, PublicTest, PrivateTest); repeatable."),
    crop: str = typer.Option("none", "--crop", help="none: test images are face crops | detect: crop the largest face by the card's rule."),
    restrict: bool = typer.Option(False, "--restrict", help="Predict among the test set's classes only."),
    detector: str = typer.Option("blazeface-full", "--detector", help="Detector for --crop detect."),
    min_face_score: Optional[float] = typer.Option(None, "--min-face-score", help="Detector threshold for --crop detect."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    batch_size: int = typer.Option(64, "--batch-size", help="Test images per forward pass."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar."),
) -> None:
    """Accuracy, per-class precision/recall/F1 and confusion matrices of models on test sets."""
    from .evaluate import EvaluateOptions, evaluate, load_label_map

    try:
        opts = EvaluateOptions(
            label_map=load_label_map(label_map) if label_map else (), usage=tuple(usage), crop=crop,
            detector=detector, min_face_score=min_face_score, restrict=restrict, allow_overlap=allow_overlap,
            device=device, batch_size=batch_size)
        ctx, cb = _stage_progress(quiet, "evaluate")
        with ctx:
            rep = evaluate(models, data, opts, out_dir=out,
                           on_progress=None if cb is None else (lambda name, done, total: cb(done, total)))
    except (ValueError, ExeStreamError) as e:
        _fail_usage(str(e))
        return
    table = Table(title="evaluation", box=box.SIMPLE_HEAD)
    for c in ("model", "test set", "n", "accuracy", "balanced acc", "macro F1", "left out", "overlap"):
        table.add_column(c, justify="left" if c in ("model", "test set") else "right")
    for row in rep.comparison():
        overlap = "not checked" if row["overlap"] is None else str(row["overlap"])
        table.add_row(escape(row["model"]), escape(row["dataset"]), str(row["n"]), _fmt(row["accuracy"]),
                      _fmt(row["balanced_accuracy"]), _fmt(row["macro_f1"]), str(row["excluded"] + row["no_face"]),
                      f"[red]{overlap}[/]" if row["overlap"] else overlap)
    Console(width=max(out_console.width, 110), highlight=False).print(table)
    for ev in rep.evaluations:
        for note in ev.notes:
            colour = "red" if note.startswith("WARNING") else "yellow"
            out_console.print(f"[{colour}]{escape(ev.model)} on {escape(ev.dataset)}:[/] {escape(note)}", soft_wrap=True)
    for note in rep.notes:
        out_console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    out_console.print(escape(f"-> {rep.out_dir}: comparison.csv, per_class.csv, evaluation.json, "
                             f"{len(rep.evaluations)} confusion PNGs"), soft_wrap=True)


class _EpochPrinter:
    """Prints one line per epoch; '*' marks a new best validation metric."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self.total, self.metric, self.best = quiet, 0, "macro_f1", float("-inf")

    def start(self, total: int, metric: str) -> None:
        self.total, self.metric, self.best = total, metric, float("-inf")

    def __call__(self, m) -> None:
        improved = m.value(self.metric) > self.best
        self.best = max(self.best, m.value(self.metric))
        if not self.quiet:
            out_console.print(escape(
                f"epoch {m.epoch}/{self.total}  train loss {m.train_loss:.3f} acc {m.train_accuracy:.3f}  "
                f"val loss {m.val_loss:.3f} acc {m.val_accuracy:.3f} macro-F1 {m.val_macro_f1:.3f}  "
                f"lr {m.lr:.2e}  {m.train_seconds + m.val_seconds:.1f} s{'  *' if improved else ''}"), highlight=False)


@app.command("train")
def train_cmd(
    recipe: Optional[Path] = typer.Argument(None, help="Recipe TOML: its [train] table and data_dir."),
    grid: Optional[Path] = typer.Option(
        None, "--grid", help="Grid TOML ([train] base + [[grid.variants]]): train every variant, write results.md/.csv."),
    data: Optional[Path] = typer.Option(
        None, "--data", help="Data directory with clean.arrow, or an image folder DIR/<label>/*.png (default: the recipe's data_dir)."),
    out: Optional[Path] = typer.Option(
        None, "-o", "--out", help="The model directory (default runs/<recipe name>); with --grid, one directory per variant inside."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda (default: the recipe's, else auto)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the recipe's epochs."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No per-epoch lines."),
) -> None:
    """Train an emotion model (or a grid of variants) into a model card that scan --model loads; resumable."""
    from .data.recipe import load_recipe
    from .train import load_grid, load_train_config, run_grid, train

    show = _EpochPrinter(quiet)
    try:
        if grid is not None:
            if recipe is not None:
                raise ValueError("give either a RECIPE or --grid GRID (the grid names its own base recipe)")
            g = load_grid(grid)
            target = out or Path("runs") / g.name

            def variant(v, i, n) -> None:
                show.start(epochs or v.config.epochs, v.config.metric)
                out_console.print(escape(f"[{i + 1}/{n}] {v.name}: {', '.join(f'{k}={x}' for k, x in v.overrides.items())}"))

            res = run_grid(g, data, target, device=device, epochs=epochs, on_variant=variant, on_epoch_end=show)
            out_console.print(res.markdown_path.read_text(), markup=False, highlight=False, soft_wrap=True)
            out_console.print(escape(f"-> {res.markdown_path}, {res.csv_path}"), soft_wrap=True)
            for row in res.rows:
                if row["status"] != "done":
                    console.print(f"[red]failed:[/] {escape(row['variant'])}: {escape(row['reason'])}")
            raise typer.Exit(0 if res.ok else 1)
        if recipe is None:
            raise ValueError("give a RECIPE (its [train] table and data_dir) or --grid GRID")
        overrides = {k: v for k, v in (("epochs", epochs), ("device", device)) if v is not None}
        config = load_train_config(recipe, overrides)
        r = load_recipe(recipe)
        target = out or Path("runs") / r.name
        show.start(config.epochs, config.metric)
        record = train(config, r.data_dir(data), target, recipe=recipe, on_epoch_end=show)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: the finished epochs are kept; run the same command again to resume")
        raise typer.Exit(130)
    except (ValueError, ExeStreamError) as e:
        _fail_usage(escape(str(e)))
        return
    b = record.best
    out_console.print(escape(
        f"best epoch {record.best_epoch}/{len(record.epochs)}: val accuracy {b.val_accuracy:.3f}, macro-F1 "
        f"{b.val_macro_f1:.3f} ({sum(record.data['train'].values())} training / {sum(record.data['val'].values())} "
        f"validation images, {record.timings['total_s'] / 60:.1f} min)"), soft_wrap=True)
    out_console.print(escape(f"model: {target}  (exe-stream scan FILMS -o OUT --model {target})"), soft_wrap=True)


@app.command("cluster")
def cluster_cmd(
    out: Path = typer.Argument(..., help="A scan's output directory, scanned with --embeddings."),
    model: str = typer.Option(..., "--model", "-m", help="The model whose embeddings to cluster (as given to scan --model)."),
    labelled: Path = typer.Option(..., "--labelled", help="Labelled face crops DIR/<label>/*.png|jpg that name the clusters."),
    k: int = typer.Option(0, "--k", help="Clusters (default: the number of labels)."),
    seed: int = typer.Option(0, "--seed", help="k-means seed."),
    device: str = typer.Option("cpu", "--device", help="auto | cpu | cuda, for embedding the labelled crops."),
) -> None:
    """k-means on a scan's face embeddings; clusters mapped to labels by a labelled set (Hungarian); accuracy."""
    from .cluster import ClusterOptions, cluster

    try:
        res = cluster(out, model, labelled, ClusterOptions(k=k, seed=seed), device=device)
    except (ValueError, ExeStreamError) as e:
        _fail_usage(escape(str(e)))
        return
    table = Table(title=escape(f"{res.k} clusters of {res.model_id}: {res.n_faces} film faces, {res.n_labelled} labelled"),
                  box=box.SIMPLE_HEAD)
    table.add_column("cluster", justify="right")
    table.add_column("label")
    for lbl in res.labels:
        table.add_column(f"labelled {lbl}", justify="right")
    for j in range(res.k):
        table.add_row(str(j), escape(res.mapping[j]), *[str(v) for v in res.contingency[j]])
    out_console.print(table)
    out_console.print(escape(f"clustering accuracy on the labelled set: {res.accuracy:.3f}"))
    shares = ", ".join(f"{lbl} {100 * v:.0f}%" for lbl, v in res.face_shares.items())
    out_console.print(escape(f"film faces by mapped label: {shares or 'no faces'}"))
    out_console.print(escape(f"-> {res.out_dir}"), soft_wrap=True)


@app.command("bench")
def bench_cmd(
    film: Path = typer.Argument(..., help="A film to time every stage on."),
    every: int = typer.Option(100, "--every", help="Sample every N-th frame."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    decoder: str = typer.Option("auto", "--decoder", help="auto | pyav | dali | nvdec"),
    model: List[str] = typer.Option(["fer2013-minixception"], "-m", "--model", help="Models to time (repeatable)."),
    engine: List[str] = typer.Option(["torch"], "--engine", help="Engines to time (repeatable): torch, onnxruntime, tensorrt."),
    batch_size: List[int] = typer.Option([1, 16, 64], "--batch-size", help="Classifier batch sizes (repeatable)."),
    films_at_once: int = typer.Option(2, "--films-at-once", help="Copies of the film decoded at once (0: skip)."),
    repeats: int = typer.Option(3, "--repeats", help="Timed repeats per measurement (median)."),
    reference: bool = typer.Option(True, "--reference/--no-reference", help="Also time the reference study's method."),
    json_out: Optional[Path] = typer.Option(None, "-o", "--json", help="Write the rows as JSON here."),
) -> None:
    """Time every stage on one film against the copy bandwidth and the reference method."""
    from .bench import BenchOptions, bench, format_rows

    try:
        opts = BenchOptions(every=every, device=device, decoder=decoder, models=tuple(model), engines=tuple(engine),
                            batch_sizes=tuple(batch_size), films_at_once=films_at_once, repeats=repeats,
                            reference=reference)
    except ValueError as e:
        _fail_usage(escape(str(e)))
    try:
        result = bench(film, opts, on_row=lambda r: console.print(f"[dim]{escape(r['stage'])}: {escape(r['what'])}[/]"))
    except (ValueError, ExeStreamError) as e:
        _fail_usage(escape(str(e)))
    table = Table(title=escape(f"exe-stream bench: {film.name} on {result.device}"), box=box.SIMPLE_HEAD)
    for c in ("stage", "what", "rate", "seconds", "notes"):
        table.add_column(c, justify="right" if c in ("rate", "seconds") else "left")
    for cells in format_rows(result.rows):
        table.add_row(*(escape(c) for c in cells))
    Console(width=max(out_console.width, 120)).print(table)
    if json_out is not None:
        result.to_json(json_out)
        out_console.print(f"json: {json_out}")


@app.command("version")
def version_cmd() -> None:
    """Print the package version."""
    out_console.print(__version__)


def main() -> None:  # pragma: no cover - console entry
    app()
