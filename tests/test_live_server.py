"""live.server: the page over HTTP, the WebSocket protocol, and bad input that must not stop it."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("websockets", reason="the [live] extra (websockets) is not installed")
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from exe_stream.live.analyse import LiveAnalyser, LiveOptions  # noqa: E402
from exe_stream.live.server import BUSY_CODE, LiveServer, ServerOptions, ServerThread  # noqa: E402
from exe_stream.live.wire import encode_frame, i420_payload  # noqa: E402
from exe_stream.shards import read_frames  # noqa: E402
from media import clip_frames  # noqa: E402

CLIP = Path(__file__).parent.parent / "exe_stream" / "assets" / "clips" / "carphone_pristine.mp4"


@pytest.fixture(scope="module")
def frames():
    return clip_frames(CLIP, list(range(0, 12)))


@pytest.fixture(scope="module")
def analyser() -> LiveAnalyser:
    return LiveAnalyser(LiveOptions(smooth=0.0, device="cpu"))


@pytest.fixture()
def server(analyser, tmp_path):
    srv = ServerThread(LiveServer(analyser, ServerOptions(out=tmp_path / "sessions", max_message=256 * 1024)))
    yield srv
    srv.stop()


def _ws(srv: ServerThread):
    return connect(srv.url.replace("http://", "ws://") + "ws", origin=srv.url.rstrip("/"), open_timeout=10)


def _frame(frames, i: int, seq: int | None = None) -> bytes:
    one = frames.__class__(y=frames.y[i:i + 1], u=frames.u[i:i + 1], v=frames.v[i:i + 1],
                           frame_index=frames.frame_index[i:i + 1], pts_seconds=frames.pts_seconds[i:i + 1],
                           is_keyframe=frames.is_keyframe[i:i + 1])
    return encode_frame(i if seq is None else seq, 1000.0 * i / 30, "I420", frames.width, frames.height,
                        i420_payload(one))


def _until(ws, kind: str, timeout: float = 20.0) -> dict:
    end = time.monotonic() + timeout
    while True:
        msg = json.loads(ws.recv(timeout=max(0.01, end - time.monotonic())))
        if msg["type"] == kind:
            return msg


def test_serves_the_page_on_localhost_only(server):
    assert server.url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(server.url) as r:
        body = r.read().decode()
        csp = r.headers["Content-Security-Policy"]
    assert "Not for reading other people" in body and "/live.js" in body
    assert "default-src 'self'" in csp
    with urllib.request.urlopen(server.url + "live.js") as r:
        assert r.headers["Content-Type"].startswith("text/javascript")
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(server.url + "secret.txt")


def test_another_origin_cannot_connect(server):
    with pytest.raises(InvalidStatus, match="403"):
        connect(server.url.replace("http://", "ws://") + "ws", origin="http://evil.example", open_timeout=10)


def test_frames_get_results_and_the_session_saves(server, frames, tmp_path):
    with _ws(server) as ws:
        hello = _until(ws, "hello")
        assert hello["models"][0]["id"] == "fer2013-minixception" and "Not for reading" in hello["ethics"]
        for i in range(3):
            ws.send(_frame(frames, i))
            msg = _until(ws, "result")
            assert msg["seq"] == i and msg["t"] == pytest.approx(1000.0 * i / 30)
            assert len(msg["faces"]) == 1 and len(msg["faces"][0]["models"]["fer2013-minixception"]["top"]) == 2
        ws.send(json.dumps({"type": "end"}))
        summary = _until(ws, "summary")
        assert summary["frames"] == 3 and summary["frames_with_face"] == 3
        ws.send(json.dumps({"type": "save"}))
        saved = _until(ws, "saved")
    assert saved["session_id"] == hello["session_id"] and saved["frames"] == 3
    t = read_frames(Path(saved["out"])).to_pydict()
    assert t["film_id"] == [hello["session_id"]] * 3 and t["frame_index"] == [0, 1, 2]
    assert t["pts_seconds"] == pytest.approx([0, 1 / 30, 2 / 30])


def test_an_empty_session_is_not_saved(server, tmp_path):
    with _ws(server) as ws:
        _until(ws, "hello")
        ws.send(json.dumps({"type": "save"}))
        assert "Nothing to save yet" in _until(ws, "error")["message"]
    assert not (tmp_path / "sessions").exists()


def test_malformed_messages_are_rejected_and_the_session_goes_on(server, frames):
    with _ws(server) as ws:
        _until(ws, "hello")
        ws.send(b"\x00\x01garbage")
        assert "not a frame message" in _until(ws, "rejected")["reason"]
        ws.send(encode_frame(0, 0.0, "I420", 176, 144, b"\x00" * 10))
        assert "a 176x144 I420 frame has 38016 bytes of pixels, got 10" in _until(ws, "rejected")["reason"]
        ws.send("{\"type\": \"delete everything\"}")
        assert "unknown command" in _until(ws, "rejected")["reason"]
        ws.send(_frame(frames, 5))
        ws.send(_frame(frames, 4))  # older than the last: rejected
        assert "frame seq must increase: got 4 after 5" in _until(ws, "rejected")["reason"]
        ws.send(_frame(frames, 6))
        res = _until(ws, "result")
        assert res["rejected"] == 4 and res["seq"] in (5, 6)


def test_an_oversized_message_closes_that_connection_only(server, frames):
    with _ws(server) as ws:
        _until(ws, "hello")
        ws.send(b"EXF1" + b"\x00" * (300 * 1024))  # over max_message (256 KiB)
        with pytest.raises(ConnectionClosed) as e:
            _until(ws, "never")
        assert e.value.rcvd.code == 1009  # message too big
    with _ws(server) as ws:  # the server is still there, with a new session
        _until(ws, "hello")
        ws.send(_frame(frames, 0))
        assert _until(ws, "result")["seq"] == 0


def test_a_new_session_starts_a_new_timeline(server, frames):
    with _ws(server) as ws:
        first = _until(ws, "hello")["session_id"]
        ws.send(_frame(frames, 0))
        _until(ws, "result")
        ws.send(json.dumps({"type": "new"}))
        second = _until(ws, "hello")["session_id"]
        assert second != first  # even within the same second
        ws.send(_frame(frames, 1, seq=0))  # the page's numbering may go on or restart
        _until(ws, "result")
        ws.send(json.dumps({"type": "save"}))
        saved = _until(ws, "saved")
    assert saved["session_id"] == second and saved["frames"] == 1


def test_a_second_page_is_told_and_the_first_keeps_its_session(server, frames):
    with _ws(server) as first:
        _until(first, "hello")
        with _ws(server) as second:
            busy = _until(second, "busy")
            assert "Another page is already using exe-stream live" in busy["message"]
            with pytest.raises(ConnectionClosed) as e:
                second.recv(timeout=10)
            assert e.value.rcvd.code == BUSY_CODE
        first.send(_frame(frames, 1))
        assert _until(first, "result")["seq"] == 1
    with _ws(server) as third:  # once the first page has gone, a new one gets the session
        _until(third, "hello")


def test_the_latest_frame_wins(server, frames):
    """Frames sent faster than they are analysed: the ones still waiting when a newer one
    arrives are dropped (and reported), never queued; the last frame sent is analysed."""
    with _ws(server) as ws:
        _until(ws, "hello")
        for i in range(12):
            ws.send(_frame(frames, i))
        seen, dropped = [], []
        while 11 not in seen:
            msg = json.loads(ws.recv(timeout=20))
            if msg["type"] == "result":
                seen.append(msg["seq"])
            elif msg["type"] == "dropped":
                dropped.append(msg["seq"])
    assert seen == sorted(seen) and dropped
    assert sorted(seen + dropped) == list(range(12))  # each frame analysed or dropped, once


def test_stopping_says_goodbye(analyser, tmp_path):
    srv = ServerThread(LiveServer(analyser, ServerOptions(out=tmp_path)))
    with _ws(srv) as ws:
        _until(ws, "hello")
        srv.stop()
        assert _until(ws, "bye")["message"] == "exe-stream live has stopped."
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)


def test_bad_server_options():
    with pytest.raises(ValueError, match=r"port must be in \[0, 65535\], got 70000"):
        ServerOptions(port=70000)
