"""``exe-stream live``: see what your own face is saying, in the browser or from a recording.

- ``analyse``: ``LiveAnalyser`` (scan's detector, crop rule and models, one frame at a time,
  smoothed over time) and ``LiveOptions``.
- ``timeline``: a session's boxes and probabilities in memory; Save writes them as shards
  (film_id = the session) that ``stats`` and ``report`` read.
- ``wire``: the page's frame messages and the latest-frame-wins mailbox.
- ``server``: the local web server (127.0.0.1 only) with the page and its WebSocket.
- ``source``: a headless session from a video file or a V4L2 camera.

For self-feedback only: it shows you what your own face communicates. It is not for reading
other people. Frames never leave the machine and are never stored.
"""

from __future__ import annotations

from .analyse import ETHICS, FrameResult, LiveAnalyser, LiveOptions, session_id
from .server import LiveServer, ServerOptions, ServerThread
from .source import SourceOptions, run_source
from .timeline import Summary, Timeline

__all__ = [
    "ETHICS", "FrameResult", "LiveAnalyser", "LiveOptions", "LiveServer", "ServerOptions",
    "ServerThread", "SourceOptions", "Summary", "Timeline", "run_source", "session_id",
]
