"""``exe-stream evaluate``, ``train`` and ``cluster``: the models' training loop."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich import box
from rich.table import Table

from ._common import escape, note, out_console, progress_bar, say, warn, wide
from ._errors import EXIT_INTERRUPTED
from .compare import _fmt


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
    from ..evaluate import EvaluateOptions, evaluate, load_label_map

    opts = EvaluateOptions(
        label_map=load_label_map(label_map) if label_map else (), usage=tuple(usage), crop=crop,
        detector=detector, min_face_score=min_face_score, restrict=restrict, allow_overlap=allow_overlap,
        device=device, batch_size=batch_size)
    ctx, cb = progress_bar(quiet, "evaluate")
    with ctx:
        rep = evaluate(models, data, opts, out_dir=out,
                       on_progress=None if cb is None else (lambda name, done, total: cb(done, total)))
    table = Table(title="evaluation", box=box.SIMPLE_HEAD)
    for c in ("model", "test set", "n", "accuracy", "balanced acc", "macro F1", "left out", "overlap"):
        table.add_column(c, justify="left" if c in ("model", "test set") else "right")
    for row in rep.comparison():
        overlap = "not checked" if row["overlap"] is None else str(row["overlap"])
        table.add_row(escape(row["model"]), escape(row["dataset"]), str(row["n"]), _fmt(row["accuracy"]),
                      _fmt(row["balanced_accuracy"]), _fmt(row["macro_f1"]), str(row["excluded"] + row["no_face"]),
                      f"[red]{overlap}[/]" if row["overlap"] else overlap)
    wide(110).print(table)
    for ev in rep.evaluations:
        for n in ev.notes:
            say(n, prefix=f"{ev.model} on {ev.dataset}: ", prefix_style="red" if n.startswith("WARNING") else "yellow")
    for n in rep.notes:
        note(n)
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
    from ..data.recipe import load_recipe
    from ..train import load_grid, load_train_config, run_grid, train

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
                    say(f"{row['variant']}: {row['reason']}", prefix="failed: ", prefix_style="red", err=True)
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
        warn("the finished epochs are kept; run the same command again to resume", prefix="interrupted: ")
        raise typer.Exit(EXIT_INTERRUPTED)
    b = record.best
    out_console.print(escape(
        f"best epoch {record.best_epoch}/{len(record.epochs)}: val accuracy {b.val_accuracy:.3f}, macro-F1 "
        f"{b.val_macro_f1:.3f} ({sum(record.data['train'].values())} training / {sum(record.data['val'].values())} "
        f"validation images, {record.timings['total_s'] / 60:.1f} min)"), soft_wrap=True)
    out_console.print(escape(f"model: {target}  (exe-stream scan FILMS -o OUT --model {target})"), soft_wrap=True)


def cluster_cmd(
    out: Path = typer.Argument(..., help="A scan's output directory, scanned with --embeddings."),
    model: str = typer.Option(..., "--model", "-m", help="The model whose embeddings to cluster (as given to scan --model)."),
    labelled: Path = typer.Option(..., "--labelled", help="Labelled face crops DIR/<label>/*.png|jpg that name the clusters."),
    k: int = typer.Option(0, "--k", help="Clusters (default: the number of labels)."),
    seed: int = typer.Option(0, "--seed", help="k-means seed."),
    device: str = typer.Option("cpu", "--device", help="auto | cpu | cuda, for embedding the labelled crops."),
) -> None:
    """k-means on a scan's face embeddings; clusters mapped to labels by a labelled set (Hungarian); accuracy."""
    from ..cluster import ClusterOptions, cluster

    res = cluster(out, model, labelled, ClusterOptions(k=k, seed=seed), device=device)
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



