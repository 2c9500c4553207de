"""The local web server of ``exe-stream live``: one page, one WebSocket, one session at a time.

The page (``exe_stream/assets/live/``) captures the webcam with getUserMedia and sends its
frames over the WebSocket ``/ws`` (``wire`` format); the server analyses them with a
``LiveAnalyser`` and answers each with a JSON result the page draws as its overlay.

- Binds 127.0.0.1 only, on a free port unless one is given; the page and the WebSocket
  accept only that origin, so no other web page can read a session.
- The latest frame wins: the receive loop keeps reading while a frame is analysed and a newer
  frame replaces the one waiting (the page is told which frame was dropped); nothing queues.
- A malformed or oversized message gets a ``rejected`` answer (oversized: the connection is
  closed with code 1009, as the WebSocket protocol has it); the server goes on.
- A second page gets a ``busy`` message and is closed; the first keeps its session.
- Frames are never stored; the session's timeline (boxes and probabilities) stays in memory
  until the page asks to Save it (shards under ``out``).

Server -> page messages (JSON text): ``hello`` (session id, models and labels, ethics line),
``result`` (per face: box, top two emotions per model, raw and smoothed probabilities; the
frame's ``seq`` and capture time ``t`` echoed; analysed/dropped counts), ``dropped``,
``rejected``, ``summary``, ``saved``, ``error``, ``busy``, ``bye``.
Page -> server text messages: ``{"type": "end"}`` (summary), ``{"type": "save"}``,
``{"type": "new"}`` (a new session).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..options import check_range
from .analyse import ETHICS, LiveAnalyser, session_id
from .timeline import Timeline
from .wire import FORMATS, FrameMessageError, LatestSlot, parse_header, to_frame_batch

log = logging.getLogger(__name__)

PAGE_DIR = Path(__file__).resolve().parent.parent / "assets" / "live"
# The page's files: URL path -> (file name, content type).
PAGE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/live.js": ("live.js", "text/javascript; charset=utf-8"),
    "/live.css": ("live.css", "text/css; charset=utf-8"),
}
# Largest WebSocket message accepted: a 4096x4096 RGBA frame and its header. Larger ones
# close the connection with 1009 (message too big); the server goes on.
MAX_MESSAGE = 4 * 4096 * 4096 + 2048
# Close code sent to a second page (application range 4000-4999).
BUSY_CODE = 4001


@dataclass(frozen=True)
class ServerOptions:
    """Where the server listens and where sessions are saved."""

    # Port on 127.0.0.1; 0 = a free port chosen by the system.
    port: int = 0
    # Directory that Save writes the session shards into (created on first save).
    out: Path = Path("live-sessions")
    # Largest WebSocket message in bytes (see MAX_MESSAGE).
    max_message: int = MAX_MESSAGE

    def __post_init__(self) -> None:
        check_range("port", self.port, 0, 65535, integer=True)
        check_range("max_message", self.max_message, 1024, integer=True, unit="bytes")


class _Session:
    """One connected page: its timeline, its latest-frame slot and its counters."""

    def __init__(self, analyser: LiveAnalyser) -> None:
        self.id = session_id()
        analyser.reset()  # its smoothing state; see LiveServer._analysis_lock
        self.timeline = Timeline(self.id, analyser.models, analyser.opts.detector)
        self.slot: LatestSlot = LatestSlot()
        self.t0: float | None = None
        self.last_seq = -1
        self.received = 0
        self.analysed = 0
        self.rejected = 0


class LiveServer:
    """``exe-stream live``'s server. ``await start()`` binds and returns the page's URL;
    ``await stop()`` says goodbye to the page and closes. ``run()`` does both in a thread of
    its own for a blocking caller (the CLI, tests)."""

    def __init__(self, analyser: LiveAnalyser, opts: ServerOptions = ServerOptions()) -> None:
        self.analyser = analyser
        self.opts = opts
        self.port: int | None = None
        self._server: Any = None
        # The connection that holds the session (one at a time), and each connection's session.
        self._active: Any = None
        self._sessions: dict[Any, _Session] = {}
        # The analyser is used by one thread at a time (a closing connection's last frame may
        # still be in analysis when the next page connects).
        self._analysis_lock = threading.Lock()
        self._page = {path: (PAGE_DIR / name).read_bytes() for path, (name, _) in PAGE_FILES.items()}

    @property
    def url(self) -> str:
        assert self.port is not None, "server not started"
        return f"http://127.0.0.1:{self.port}/"

    def _origins(self) -> set[str]:
        return {f"http://127.0.0.1:{self.port}", f"http://localhost:{self.port}"}

    async def start(self) -> str:
        from websockets.asyncio.server import serve

        await asyncio.to_thread(self.analyser.warm_up)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", self.opts.port))
        except OSError as e:
            sock.close()
            raise OSError(f"cannot listen on 127.0.0.1:{self.opts.port}: {e.strerror or e}") from e
        self.port = sock.getsockname()[1]
        self._server = await serve(
            self._handler, sock=sock, process_request=self._process_request,
            max_size=self.opts.max_message, compression=None,
        )
        return self.url

    async def stop(self) -> None:
        """Tell the connected page the server is stopping, then close everything."""
        if self._active is not None:
            try:
                await self._active.send(json.dumps({"type": "bye", "message": "exe-stream live has stopped."}))
            except Exception:  # the page may be gone already
                pass
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    # HTTP ---------------------------------------------------------------------------------
    def _process_request(self, connection: Any, request: Any) -> Any:
        from websockets.datastructures import Headers
        from websockets.http11 import Response

        path = request.path.split("?", 1)[0]
        if path == "/ws":
            origin = request.headers.get("Origin")
            if origin not in self._origins():
                return connection.respond(403, f"origin {origin!r} is not this page's\n")
            return None  # go on with the WebSocket handshake
        if path not in self._page:
            return connection.respond(404, "not found\n")
        body = self._page[path]
        headers = Headers([
            ("Content-Type", PAGE_FILES[path][1]),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            # Nothing is loaded from, or sent to, anywhere but this server.
            ("Content-Security-Policy",
             f"default-src 'self'; connect-src ws://127.0.0.1:{self.port} ws://localhost:{self.port}; "
             "img-src 'self' data: blob:; media-src 'self' blob: mediastream:"),
        ])
        return Response(200, "OK", headers, body)

    # WebSocket ----------------------------------------------------------------------------
    async def _send(self, ws: Any, message: dict[str, Any]) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            await ws.send(json.dumps(message))
        except ConnectionClosed:
            pass

    async def _handler(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        from websockets.protocol import State

        # A connection that is already closing (e.g. closed for an oversized message) does not
        # hold the session any more, even while its handler is still finishing.
        if self._active is not None and self._active.state is State.OPEN:
            await self._send(ws, {"type": "busy", "message": (
                "Another page is already using exe-stream live. Close it (or its tab) and reload this page.")})
            await ws.close(BUSY_CODE, "another page is connected")
            return
        self._active = ws
        session = self._sessions[ws] = _Session(self.analyser)
        await self._send(ws, self._hello(session))
        worker = asyncio.create_task(self._analyse_loop(ws))
        try:
            async for message in ws:
                if isinstance(message, str):
                    await self._command(ws, message)
                else:
                    await self._frame(ws, message)
        except ConnectionClosed:
            pass
        finally:
            worker.cancel()
            try:
                await worker
            except (asyncio.CancelledError, Exception):
                pass
            self._sessions.pop(ws, None)
            if self._active is ws:
                self._active = None

    def _hello(self, session: _Session) -> dict[str, Any]:
        return {
            "type": "hello", "session_id": session.id, "ethics": ETHICS, "formats": list(FORMATS),
            "smooth": self.analyser.opts.smooth,
            "models": [{"id": m.model_id, "labels": list(m.labels)} for m in self.analyser.models],
            "out": str(self.opts.out),
        }

    async def _frame(self, ws: Any, data: bytes) -> None:
        session = self._sessions.get(ws)
        assert session is not None
        session.received += 1
        try:
            header, payload = parse_header(data)
            if header.seq <= session.last_seq:
                raise FrameMessageError(f"frame seq must increase: got {header.seq} after {session.last_seq}")
        except FrameMessageError as e:
            session.rejected += 1
            await self._send(ws, {"type": "rejected", "reason": str(e)})
            return
        session.last_seq = header.seq
        if session.t0 is None:
            session.t0 = header.t
        old = session.slot.put((header, payload, time.perf_counter()))
        if old is not None:  # the latest frame wins
            await self._send(ws, {"type": "dropped", "seq": old[0].seq, "dropped": session.slot.dropped})

    async def _analyse_loop(self, ws: Any) -> None:
        slot = self._sessions[ws].slot
        while True:
            header, payload, received = await slot.get()
            session = self._sessions.get(ws)
            if session is None:
                return
            pts = (header.t - (header.t if session.t0 is None else session.t0)) / 1000.0
            try:
                result = await asyncio.to_thread(self._analyse, session, header, payload, pts)
            except Exception as e:  # one bad frame never stops the session
                log.debug("analysis of frame %s failed", header.seq, exc_info=True)
                await self._send(ws, {"type": "error", "seq": header.seq,
                                      "message": f"frame {header.seq} could not be analysed: {type(e).__name__}: {e}"})
                continue
            session.analysed += 1
            msg = result.to_message(self.analyser.models)
            msg.update(seq=header.seq, t=header.t, width=header.width, height=header.height,
                       format=header.format, server_ms=round(1000 * (time.perf_counter() - received), 2),
                       analysed=session.analysed, dropped=session.slot.dropped, rejected=session.rejected)
            await self._send(ws, msg)

    def _analyse(self, session: _Session, header: Any, payload: memoryview, pts: float) -> Any:
        frames = to_frame_batch(header, payload, header.seq, pts)
        with self._analysis_lock:
            result, faces, probs = self.analyser.analyse(frames)
        session.timeline.add(frames, faces, probs)
        return result

    async def _command(self, ws: Any, text: str) -> None:
        session = self._sessions.get(ws)
        assert session is not None
        try:
            cmd = json.loads(text)
            kind = cmd.get("type") if isinstance(cmd, dict) else None
        except json.JSONDecodeError:
            kind = None
        if kind == "end":
            await self._send(ws, session.timeline.summary().to_message())
        elif kind == "save":
            if session.timeline.frames == 0:
                await self._send(ws, {"type": "error", "message": "Nothing to save yet: no frame of this session "
                                                                  "has been analysed."})
                return
            try:
                out = await asyncio.to_thread(session.timeline.save, self.opts.out)
            except (OSError, ValueError) as e:
                await self._send(ws, {"type": "error", "message": f"could not save the session to {self.opts.out}: {e}"})
                return
            await self._send(ws, {"type": "saved", "out": str(Path(out).resolve()), "session_id": session.id,
                                  "frames": session.timeline.frames})
        elif kind == "new":
            new = _Session(self.analyser)
            new.slot = session.slot  # the analysis loop waits on it; it reads the session per frame
            self._sessions[ws] = new
            await self._send(ws, self._hello(new))
        else:
            session.rejected += 1
            await self._send(ws, {"type": "rejected", "reason": (
                f"unknown command {text[:80]!r}; accepted: {{\"type\": \"end\"|\"save\"|\"new\"}}")})

    # Blocking use -------------------------------------------------------------------------
    def run_in_thread(self) -> "ServerThread":
        """Start the server on an event loop in a background thread; returns its handle."""
        return ServerThread(self)


class ServerThread:
    """A LiveServer running on its own event loop thread (tests, the benchmark, the CLI)."""

    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self._error: BaseException | None = None

        def main() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(server.start())
            except BaseException as e:
                self._error = e
                started.set()
                return
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, name="exe-stream-live", daemon=True)
        self.thread.start()
        started.wait()
        if self._error is not None:
            raise self._error

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        if not self.loop.is_running():
            return
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


__all__ = ["BUSY_CODE", "LiveServer", "MAX_MESSAGE", "ServerOptions", "ServerThread"]
