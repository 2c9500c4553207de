"""``exe-stream scan``: sample frames, find faces, classify emotions, write shards."""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..metadata import load_metadata
from ._common import MetadataFile, Quiet, console, escape, out_console, say
from .ray import RayAddress, RayCpusPerFilm, RayFilmsPerGpu, RayMaxAttempts, ray_options


def print_summary(result, models: list[str]) -> None:
    """Summary table: per film status, frames, faces and each model's top emotions."""
    from ..shards import read_faces
    from ..storage import local_copy

    ids = {f.film_id for f in result.films}
    shares: dict[str, Counter] = {}
    with local_copy(result.out) as local:  # a temporary copy of an output in object storage
        for m in models:
            try:
                t = read_faces(local, m)
            except FileNotFoundError:
                shares[m] = Counter()
                continue
            film = t.column("film_id").to_pylist()
            shares[m] = Counter(lbl for fid, lbl in zip(film, t.column("label").to_pylist()) if fid in ids)
    table = Table(title=escape(f"exe-stream scan -> {result.out}"), show_lines=False)
    for col in ("film", "status", "frames", "faces", "seconds"):
        table.add_column(col, justify="right" if col in ("frames", "faces", "seconds") else "left")
    for f in result.films:
        colour = {"done": "green", "skipped": "cyan", "partial": "yellow", "failed": "red"}[f.status]
        table.add_row(escape(f.film_id), f"[{colour}]{f.status}[/]", str(f.frames), str(f.faces), f"{f.seconds:.1f}")
    out_console.print(table)
    total_frames = sum(f.frames for f in result.films)
    total_faces = sum(f.faces for f in result.films)
    say(f"films: {len(result.films)}  frames sampled: {total_frames}  faces: {total_faces}")
    for m, c in shares.items():
        n = sum(c.values())
        top = ", ".join(f"{lbl} {100 * k / n:.0f}%" for lbl, k in c.most_common()) if n else "no faces"
        say(f"emotion shares [{m}]: {top}")


def print_problems(result) -> None:
    """One line per failed or partial film on stderr (also with -q: quiet is not silent)."""
    for f in result.films:
        if f.status in ("failed", "partial"):
            say(f.reason, prefix=f"{f.status}: ", prefix_style="red" if f.status == "failed" else "yellow", err=True)


def run_scan(paths: list[Path], out: Path, opts, metadata=None, quiet: bool = False, ray=None):
    """Run ``pipeline.scan`` (or, with ``ray`` RayOptions, ``ray_scan.scan_ray``) with one
    progress display unless quiet: an overall bar (films, frames sampled, failures, films per
    hour) and a bar per film being scanned."""
    from ..pipeline import scan

    if ray is not None:
        from ..ray_scan import scan_ray

        def run(**kw):
            return scan_ray(paths, out, opts, ray, metadata=metadata, **kw)
    else:
        def run(**kw):
            return scan(paths, out, opts, metadata=metadata, **kw)
    if quiet:
        return run()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    ) as progress:
        overall = progress.add_task("films", total=None)
        film_tasks: dict = {}  # film id -> its bar (several with --films-at-once or --ray)
        totals = {"frames": 0, "failed": 0, "scanned": 0}
        started = time.monotonic()

        def start(film_id, path, i):
            film_tasks[film_id] = progress.add_task(escape(f"  {film_id}"), total=None)

        def frames(film_id, done, total):
            if film_id in film_tasks:
                progress.update(film_tasks[film_id], completed=done, total=total)

        def end(res):
            task = film_tasks.pop(res.film_id, None)
            if task is not None:
                progress.remove_task(task)
            totals["frames"] += res.frames if res.status != "skipped" else 0
            totals["failed"] += res.status in ("failed", "partial")
            totals["scanned"] += res.status != "skipped"
            hours = (time.monotonic() - started) / 3600
            rate = f"{totals['scanned'] / hours:.0f} films/h" if totals["scanned"] else "-- films/h"
            progress.update(overall, advance=1, description=(
                f"films  frames {totals['frames']}  failed {totals['failed']}  {rate}"))

        from ..ray_scan import list_films

        progress.update(overall, total=len(list_films(paths)))
        return run(on_film_start=start, on_film_end=end, on_film_frames=frames)


def scan_cmd(
    paths: Annotated[List[str], typer.Argument(
        help="Films, or directories searched recursively for video files (with --ray also s3:// or gs:// URIs).")],
    out: Annotated[str, typer.Option(
        "-o", "--out", help="Output directory for shards and manifest (with --ray also an s3:// or gs:// URI).")],
    model: Annotated[List[str], typer.Option(
        "--model", "-m", help="Model name or directory; repeat for several; 'ens:a+b' averages probabilities.")
    ] = ["fer2013-minixception"],  # noqa: B006 - Typer reads the default
    every: Annotated[Optional[int], typer.Option("--every", help="Sample every N-th frame (default 100).")] = None,
    interval: Annotated[Optional[float], typer.Option("--interval", help="Sample every S seconds instead.")] = None,
    mode: Annotated[str, typer.Option(
        "--sampling", help="exact | keyframe | shots (K frames per shot, see --per-shot; needs --shots)")] = "exact",
    per_shot: Annotated[int, typer.Option(
        "--per-shot", help="With --sampling shots: frames per shot, from the middle out, away from cuts.")] = 3,
    track_every: Annotated[int, typer.Option(
        "--track-every", help="With --shots: also decode every M-th frame of each shot to link faces into tracks "
                              "(those frames get no rows; 0 = sampled frames only).")] = 0,
    characters: Annotated[bool, typer.Option(
        "--characters", help="With --shots: an identity embedding per face (dlib's ResNet encoder); face tracks "
                             "clustered into characters per film (faces get character_id).")] = False,
    cast: Annotated[Optional[Path], typer.Option(
        "--cast", help="With --characters: a CSV of name,photo; characters are named after the nearest photo "
                       "(faces get character_name). With --ray, read here and sent to the workers.")] = None,
    skip_cuts: Annotated[bool, typer.Option(
        "--skip-cuts", help="Move --every/--interval samples that land on or next to a cut off it (needs --shots).")] = False,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
    decoder: Annotated[str, typer.Option("--decoder", help="auto | pyav | nvdec | dali")] = "auto",
    detector: Annotated[str, typer.Option("--detector", help="blazeface-full | blazeface-short")] = "blazeface-full",
    engine: Annotated[str, typer.Option("--engine", help="auto | torch | onnxruntime | tensorrt")] = "auto",
    engine_profile: Annotated[str, typer.Option(
        "--engine-profile", help="Engine build profile: a name in engines/ or a .toml file.")] = "default",
    min_score: Annotated[Optional[float], typer.Option(
        "--min-face-score", help="Detector score threshold (default: the model's MediaPipe one, 0.6 full / 0.5 short).")] = None,
    max_faces: Annotated[int, typer.Option("--max-faces", help="Keep at most N faces per frame, largest first (0 = all).")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Sampled frames per batch.")] = 16,
    films_at_once: Annotated[int, typer.Option(
        "--films-at-once", help="Films decoded at once (0 = one per NVDEC engine with --decoder nvdec on CUDA, else 1).")] = 0,
    metadata: MetadataFile = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Skip films already scanned identically.")] = True,
    embeddings: Annotated[bool, typer.Option(
        "--embeddings", help="Also store each face's penultimate-layer embedding per model (OUT/embeddings/, for cluster).")] = False,
    ray: RayAddress = None,
    ray_cpus_per_film: RayCpusPerFilm = 1.0,
    ray_films_per_gpu: RayFilmsPerGpu = 0,
    ray_max_attempts: RayMaxAttempts = 3,
    shots: Annotated[str, typer.Option(
        "--shots", help="Shot boundaries: off | codec (the encoder's scene-cut keyframes read from the "
                        "bitstream, doubtful ones decoded where they are; nearly free on a CPU) | content "
                        "(PySceneDetect on every frame, CPU) | transnet (TransNetV2, also finds dissolves; "
                        "meant for a GPU); adds shot_index to frames and OUT/shots/.")] = "off",
    quiet: Quiet = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Log details (tracebacks of failed films).")] = False,
) -> None:
    """Scan films: sample frames, find faces, classify emotions, write Arrow shards.

    Exit 0 when every film was scanned, 1 when any failed or is partial (the others are still
    written), 2 for bad arguments, 3 when the output disk is full (run again to resume).
    """
    from ..detect import DetectorOptions
    from ..pipeline import ScanOptions
    from ..sampling import SamplingOptions
    from ..shots import ShotOptions

    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING)
    if every is not None and interval is not None:
        raise ValueError("use either --every or --interval, not both")
    by_shot = mode == "shots"
    if by_shot and (every is not None or interval is not None):
        raise ValueError("--sampling shots takes --per-shot frames from every shot, not --every/--interval")
    if by_shot and per_shot < 1:
        raise ValueError(f"--per-shot must be >= 1, got {per_shot}")
    if by_shot:
        mode = "exact"
    s = SamplingOptions(every=every if interval is None else None, interval=interval, mode=mode) \
        if (every is not None or interval is not None) else SamplingOptions(mode=mode)
    shot_opts = ShotOptions(method=shots, per_shot=per_shot if by_shot else 0, skip_cuts=skip_cuts,
                            track_every=track_every)
    det = DetectorOptions(name=detector, min_score=min_score, max_faces=max_faces)
    opts = ScanOptions(sampling=s, detector=det, models=tuple(model), device=device,
                       decoder=decoder, engine=engine, batch_size=batch_size, resume=resume,
                       engine_profile=engine_profile, embeddings=embeddings,
                       films_at_once=films_at_once, shots=shot_opts, characters=characters,
                       cast=str(cast) if cast is not None else None)
    ropts = ray_options(ray, ray_cpus_per_film, ray_films_per_gpu, ray_max_attempts) if ray is not None else None
    meta = load_metadata(metadata) if metadata else None
    from ..storage import is_uri

    remote = [p for p in [*paths, out] if is_uri(p)]
    if remote and ropts is None:
        raise ValueError(f"films and outputs in object storage ({remote[0]}) need --ray (e.g. --ray auto)")
    missing = [p for p in paths if not is_uri(p) and not Path(p).exists()]
    if missing:
        raise ValueError(f"no such file or directory: {', '.join(missing)}")
    result = run_scan([p if is_uri(p) else Path(p) for p in paths], out if is_uri(out) else Path(out), opts,
                      metadata=meta, quiet=quiet, ray=ropts)
    if not result.films:
        raise ValueError(f"no video files found in {', '.join(map(str, paths))}")
    if not quiet:
        print_summary(result, list(opts.models))
    print_problems(result)
    raise typer.Exit(0 if result.ok else 1)
