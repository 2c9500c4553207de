"""``exe-stream demo``: the main job on the bundled sample clips and built-in models."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Callable

from .models import list_models
from .sampling import SamplingOptions

# The bundled clips are seconds long, so the demo samples every 10th frame instead of the
# reference study's every 100th (which would give two frames per clip).
DEMO_EVERY = 10


def bundled_clips() -> list[Path]:
    """The sample clips shipped inside the package (see assets/clips/LICENSE.md)."""
    root = resources.files("exe_stream") / "assets" / "clips"
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith((".mp4", ".webm", ".mkv")))


def demo(out: Path, quiet: bool = False, run: Callable | None = None, summary: Callable | None = None):
    """Scan the bundled clips with every built-in emotion model into ``out``; return the ScanResult."""
    from .pipeline import ScanOptions, scan

    models = tuple(card.name for card in list_models())
    opts = ScanOptions(sampling=SamplingOptions(every=DEMO_EVERY), models=models)
    clips = bundled_clips()
    result = run(clips, out, opts, quiet=quiet) if run else scan(clips, out, opts)
    if summary and not quiet:
        summary(result, list(models))
    if not quiet:
        print(f"\nshards:   {Path(out) / 'frames'}  and  {Path(out) / 'faces'}")
        print(f"manifest: {Path(out) / 'manifest.json'}")
    return result
