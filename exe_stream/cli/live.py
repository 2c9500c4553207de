"""``exe-stream live``: the webcam self-feedback page, or a headless session from a recording."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..live.analyse import ETHICS
from ._common import Quiet, say, warn

HELP = f"""See what your own face is saying: a local page with your webcam, each face boxed with
its top two emotions (the same detector, crops and models as scan), a timeline of the
session and a summary at the end; Save writes the session as shards (stats and report read
them). With --source, a video file or a V4L2 camera is analysed in real time without a browser.

{ETHICS}
"""


def live_cmd(
    model: Annotated[List[str], typer.Option(
        "--model", "-m", help="Model name or directory; repeat for several; 'ens:a+b' averages probabilities.")
    ] = ["fer2013-minixception"],  # noqa: B006 - Typer reads the default
    smooth: Annotated[float, typer.Option(
        "--smooth", help="Time constant of the overlay's exponential smoothing, in seconds (0 = none).")] = 0.5,
    out: Annotated[Path, typer.Option("-o", "--out", help="Where Save (and --source) write session shards.")
                   ] = Path("live-sessions"),
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1 (0 = a free one).")] = 0,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Print the URL; do not open a browser.")] = False,
    source: Annotated[Optional[str], typer.Option(
        "--source", help="A video file or a camera (/dev/videoN) to analyse without a browser.")] = None,
    every_frame: Annotated[bool, typer.Option(
        "--every-frame", help="With a --source file: analyse every frame as fast as possible instead of in real time.")
    ] = False,
    max_seconds: Annotated[float, typer.Option(
        "--max-seconds", help="With --source: stop after this many seconds of it (0 = until it ends or Ctrl-C).")] = 0.0,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
    detector: Annotated[str, typer.Option("--detector", help="blazeface-full | blazeface-short")] = "blazeface-full",
    min_score: Annotated[Optional[float], typer.Option(
        "--min-face-score", help="Detector score threshold (default: the model's MediaPipe one).")] = None,
    max_faces: Annotated[int, typer.Option("--max-faces", help="Keep at most N faces per frame, largest first (0 = all).")] = 0,
    quiet: Quiet = False,
) -> None:
    from ..detect import DetectorOptions
    from ..live import LiveAnalyser, LiveOptions

    opts = LiveOptions(models=tuple(model), detector=DetectorOptions(name=detector, min_score=min_score,
                                                                     max_faces=max_faces),
                       smooth=smooth, device=device)
    if source is None and (every_frame or max_seconds):
        raise ValueError("--every-frame and --max-seconds apply to --source only")
    if source is not None:
        from ..live import SourceOptions

        src = SourceOptions(realtime=not every_frame, max_seconds=max_seconds)  # checked before models load
        _headless(source, LiveAnalyser(opts), src, out, quiet)
        return
    from ..live import LiveServer, ServerOptions

    server_opts = ServerOptions(port=port, out=out)
    _serve(LiveServer(LiveAnalyser(opts), server_opts), no_browser, quiet)


live_cmd.__doc__ = HELP


def _serve(server, no_browser: bool, quiet: bool) -> None:
    import importlib.util

    if importlib.util.find_spec("websockets") is None:
        raise ValueError("exe-stream live needs the live extra (websockets): pip install 'exe-stream[live]'")
    from ..live import ServerThread

    running = ServerThread(server)
    say(f"exe-stream live: {running.url}  (Ctrl-C to stop)")
    if not quiet:
        say(ETHICS)
    if not no_browser:
        import webbrowser

        if not webbrowser.open(running.url):
            warn(f"no browser could be opened; open {running.url} yourself")
    try:
        while running.thread.is_alive():
            running.thread.join(timeout=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        running.stop()


def _headless(source: str, analyser, src, out: Path, quiet: bool) -> None:
    from ..live import run_source

    stop = threading.Event()
    last = [time.monotonic()]

    def on_result(r) -> None:
        if quiet or time.monotonic() - last[0] < 1.0:
            return
        last[0] = time.monotonic()
        m = analyser.models[0]
        if r.faces:
            top = r.faces[0].smooth[m.model_id]
            order = top.argsort()[::-1][:2]
            said = ", ".join(f"{m.labels[i]} {100 * top[i]:.0f}%" for i in order)
        else:
            said = "no face"
        say(f"{r.pts_seconds:7.1f} s  {said}")

    if not quiet:
        say(ETHICS)
    try:
        timeline = run_source(source, analyser, src, on_result=on_result, stop=stop)
    except KeyboardInterrupt:  # pragma: no cover - interactive
        stop.set()
        raise
    timeline.save(out)
    if not quiet:
        say(timeline.summary().text())
        say(f"{timeline.frames} frames analysed, {timeline.dropped} skipped to keep up; "
            f"saved session {timeline.session_id} to {out}")
    if timeline.error:
        warn(f"{source}: the source ended early: {timeline.error}")
        raise typer.Exit(1)
