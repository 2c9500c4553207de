"""``exe-stream data``: pull stock photos by emotion keywords, extract faces, clean, harvest."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import typer
from rich import box
from rich.progress import Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ._common import console, error, escape, note, out_console, progress_bar, warn
from ._errors import EXIT_INTERRUPTED


def _stage_data_dir(recipe: Optional[Path], data: Optional[Path]):
    """(Recipe or None, data directory) from an optional recipe file and --data."""
    from ..data.recipe import load_recipe

    if recipe is None:
        if data is None:
            raise ValueError("give a recipe (its data_dir) or --data DIR")
        return None, data
    r = load_recipe(recipe)
    return r, r.data_dir(data)


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

    from ..data.sources import get_source

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
        error(err)
    if result.failed_sources:
        warn("some sources stopped early; run the same command again to resume", prefix="")


def pull_cmd(
    recipe: Path = typer.Argument(..., help="Recipe TOML with a [pull] table (e.g. training/recipes/emotions-stock.toml)."),
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
    from ..data.pull import PullOptions, api_keys_from_env, pull, with_overrides
    from ..data.recipe import load_recipe

    r = load_recipe(recipe)
    opts = with_overrides(PullOptions.from_recipe(r), sources=source or None, limit=limit)
    data_dir = r.data_dir(data)
    keys = None if dry_run else api_keys_from_env(opts.sources)
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
        warn("everything downloaded so far is saved; run the same command again to resume", prefix="interrupted: ")
        raise typer.Exit(EXIT_INTERRUPTED)
    finally:
        logging.getLogger("exe_stream.data").removeHandler(handler)
    if not quiet:
        print_pull(result, opts, verbose)
    elif result.errors:
        for err in result.errors:
            error(err)
    raise typer.Exit(0 if result.ok else 1)


def extract_cmd(
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
    from ..data.extract import ExtractOptions, extract

    r, data_dir = _stage_data_dir(recipe, data)
    over = dict(detector=detector, min_face_score=min_face_score, margin=margin, crop_size=crop_size,
                max_side=max_side, device=device)
    opts = ExtractOptions.from_recipe(r, **over) if r is not None else \
        ExtractOptions(**{k: v for k, v in over.items() if v is not None})
    ctx, cb = progress_bar(quiet, "extract")
    with ctx:
        res = extract(data_dir, opts, on_progress=cb)
    for n in res.notes:
        note(n)
    out_console.print(escape(
        f"extract: {res.images} photos: {res.faces} faces, {res.no_face} without a face, {res.errors} unreadable "
        f"({res.already_done} done before) in {res.seconds:.1f} s -> {res.faces_path}"), soft_wrap=True)
    if res.errors:
        out_console.print(escape(f"unreadable photos are listed in {res.skipped_path}; a re-run retries them"))


def clean_cmd(
    recipe: Optional[Path] = typer.Argument(None, help="Recipe TOML: its [clean] table and data_dir."),
    data: Optional[Path] = typer.Option(None, "--data", help="Data directory holding faces.arrow (default: the recipe's data_dir)."),
    hash_distance: Optional[int] = typer.Option(None, "--hash-distance", help="Perceptual-hash bits (of 64) within which crops are the same picture (default 8)."),
    min_face_size: Optional[float] = typer.Option(None, "--min-face-size", help="Drop faces smaller than this many pixels in the photo (default 48)."),
    blur_threshold: Optional[float] = typer.Option(None, "--blur-threshold", help="Drop crops whose Laplacian variance is below this (default 0 = off; try 60-100)."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar."),
) -> None:
    """Drop near-duplicates, images under two labels, small and blurry faces; report class balance."""
    from ..data.clean import DROP_REASONS, CleanOptions, clean

    r, data_dir = _stage_data_dir(recipe, data)
    over = dict(hash_distance=hash_distance, min_face_size=min_face_size, blur_threshold=blur_threshold)
    opts = CleanOptions.from_recipe(r, **over) if r is not None else \
        CleanOptions(**{k: v for k, v in over.items() if v is not None})
    ctx, cb = progress_bar(quiet, "clean")
    with ctx:
        res = clean(data_dir, opts, on_progress=cb)
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


def harvest_cmd(
    out: Path = typer.Argument(..., help="A scan's output directory: its faces are cut from its films again."),
    dest: Path = typer.Option(..., "-o", "--out", help="Where the crops go: DEST/<film_id>/f<frame>-<face>.png."),
    size: int = typer.Option(64, "--size", help="Side of the square RGB crops in pixels."),
    margin: float = typer.Option(0.15, "--margin", help="Crop margin, as a model card's crop_margin."),
    min_face_area: float = typer.Option(0.0, "--min-face-area", help="Only faces covering at least this fraction of the frame."),
) -> None:
    """Cut the faces a scan found into PNG crops: unlabelled material for autoencoder pretraining."""
    from ..train.harvest import harvest_faces

    res = harvest_faces(out, dest, size=size, margin=margin, min_face_area=min_face_area)
    for n in res.notes:
        note(n)
    out_console.print(escape(f"harvest: {res.written} crops written, {res.existing} there before, from "
                             f"{res.films} films -> {res.dest}"), soft_wrap=True)



