"""exe-stream live end to end in a real browser: headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium) with a fake camera playing a y4m of the bundled
talking-face clip.

- the page shows a box and two emotion labels within a few seconds;
- the probabilities it gets are scan's on the same frames with the same models;
- End shows the summary, Save writes shards that ``stats`` reads;
- a second page, the server stopping, no camera and a denied permission each give a clear
  message on the page.

``EXE_STREAM_LIVE_SCREENSHOT=PATH`` also saves the page's screenshot there (the README's).
.ci/run installs Chromium and the driver; without them these tests are skipped.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from exe_stream.decode import get_decoder
from exe_stream.live.analyse import LiveAnalyser, LiveOptions
from exe_stream.live.server import LiveServer, ServerOptions, ServerThread
from exe_stream.pipeline import ScanOptions, scan
from exe_stream.sampling import SamplingOptions
from exe_stream.shards import read_faces, read_frames

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the test extra) is not installed")
pytest.importorskip("websockets", reason="websockets (the live extra) is not installed")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                       reason="needs Debian's chromium and chromium-driver (.ci/run installs them)"),
]

CLIP = Path(__file__).parent.parent / "exe_stream" / "assets" / "clips" / "carphone_pristine.mp4"
MODELS = ("fer2013-minixception", "facex")


def write_y4m(clip: Path, path: Path) -> int:
    """The clip's frames, decoded by scan's own decoder, as an uncompressed y4m (I420): what
    the fake camera plays. Returns the number of frames."""
    frames = list(get_decoder("pyav").frames(clip, SamplingOptions(every=1), 1))
    f0 = frames[0]
    with open(path, "wb") as fh:
        fh.write(f"YUV4MPEG2 W{f0.width} H{f0.height} F30000:1001 Ip A1:1 C420jpeg\n".encode())
        for f in frames:
            fh.write(b"FRAME\n")
            for plane in (f.y, f.u, f.v):
                fh.write(plane[0].numpy().tobytes())
    return len(frames)


def chromium(*flags: str):
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1320,860", *flags):
        opts.add_argument(a)
    return webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))


def wait_for(driver, script: str, timeout: float, what: str):
    """Poll ``script`` (JavaScript returning a value) until it is truthy; returns it."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    state = driver.execute_script(
        "return window.exeLive && [window.exeLive.state, window.exeLive.conn, window.exeLive.messages]")
    raise AssertionError(f"{what} did not happen within {timeout} s (page state: {state})")


@pytest.fixture(scope="module")
def y4m(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("camera") / "carphone.y4m"
    write_y4m(CLIP, path)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, dict]:
    """scan's every-frame output of the clip with the same models: model -> column -> values."""
    out = tmp_path_factory.mktemp("scan")
    scan([CLIP], out, ScanOptions(sampling=SamplingOptions(every=1), models=MODELS, device="cpu"))
    return {m: read_faces(out, m).to_pydict() for m in MODELS}


@pytest.fixture(scope="module")
def analyser() -> LiveAnalyser:
    # No smoothing: the overlay then shows each frame's own probabilities.
    return LiveAnalyser(LiveOptions(models=MODELS, smooth=0.0, device="cpu"))


def _scan_row(ref: dict, box: list[float]) -> int | None:
    """The row of scan's output whose box is this one (the frame the page sent)."""
    boxes = np.stack([ref[k] for k in ("x0", "y0", "x1", "y1")], axis=1)
    d = np.abs(boxes - np.asarray(box)).max(axis=1)
    i = int(d.argmin())
    return i if d[i] < 1e-5 else None


def test_page_with_a_fake_camera(y4m, reference, analyser, tmp_path):
    srv = ServerThread(LiveServer(analyser, ServerOptions(out=tmp_path / "sessions")))
    driver = chromium("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                      f"--use-file-for-fake-video-capture={y4m}")
    try:
        start = time.monotonic()
        driver.get(srv.url)
        # 1. A box and two emotion labels per model appear within a few seconds.
        wait_for(driver, f"return document.querySelectorAll('#overlay .face-box').length == 1 && "
                         f"document.querySelectorAll('#overlay .emotion').length == {2 * len(MODELS)}",
                 10, "a face box with two emotion labels per model")
        shown_after = time.monotonic() - start
        assert shown_after < 10
        labels = driver.execute_script(
            "return [...document.querySelectorAll('#overlay .emotion')].map(e => [e.dataset.label, +e.dataset.p, e.textContent])")
        for label, p, text in labels:
            assert text == f"{label}{round(100 * p)}%"

        # 2. The page's probabilities are scan's on the same frames (found by their boxes).
        wait_for(driver, "return window.exeLive.results >= 25", 30, "25 analysed frames")
        history = driver.execute_script("return window.exeLive.history")
        matched = 0
        for msg in history:
            assert (msg["width"], msg["height"], msg["format"]) == (176, 144, "I420")
            if not msg["faces"]:
                continue
            face = msg["faces"][0]
            row = _scan_row(reference[MODELS[0]], face["box"])
            assert row is not None, f"frame {msg['seq']}: box {face['box']} is no frame's box in scan's output"
            for m in MODELS:
                ref = reference[m]
                probs = [ref[c][row] for c in ref if c.startswith("prob_")]
                assert np.allclose(face["models"][m]["probs"], probs, atol=1e-4), (msg["seq"], m)
                top = [lbl for lbl, _ in face["models"][m]["top"]]
                assert top[0] == ref["label"][row]
            matched += 1
        assert matched >= 20

        # 3. The meters: analysed frames/s and capture-to-overlay latency.
        fps = float(driver.find_element("id", "fps").text)
        assert fps > 0
        assert driver.find_element("id", "latency").text.endswith("ms)")

        # 4. The stacked timeline has been drawn (non-blank pixels).
        painted = driver.execute_script(
            "const c = document.getElementById('timeline');"
            "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n")
        assert painted > 1000
        wait_for(driver, "return window.exeLive.results >= 50", 30, "50 analysed frames")
        shot = tmp_path / "live.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("EXE_STREAM_LIVE_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["EXE_STREAM_LIVE_SCREENSHOT"])

        # 5. A second page is told the session is taken; the first goes on.
        first = driver.current_window_handle
        driver.switch_to.new_window("tab")
        driver.get(srv.url)
        wait_for(driver, "return window.exeLive && window.exeLive.conn == 'busy' && "
                         "document.getElementById('message').textContent", 10, "the busy message")
        assert "Another page is already using exe-stream live" in driver.find_element("id", "message").text
        driver.close()
        driver.switch_to.window(first)
        n = driver.execute_script("return window.exeLive.results")
        wait_for(driver, f"return window.exeLive.results > {n}", 10, "results on the first page")

        # 6. End: "what my face said"; Save: shards that stats reads.
        driver.find_element("id", "end").click()
        wait_for(driver, "return !document.getElementById('summary').hidden", 10, "the summary")
        summary = driver.find_element("id", "summary").text
        assert "What my face said" in summary and "mostly" in summary
        driver.find_element("id", "save").click()
        wait_for(driver, "return !document.getElementById('saved').hidden", 20, "the saved message")
        saved = driver.execute_script("return window.exeLive.saved")
        session = driver.execute_script("return window.exeLive.hello.session_id")
        assert saved["session_id"] == session
        frames = read_frames(tmp_path / "sessions").to_pydict()
        assert set(frames["film_id"]) == {session} and len(frames["film_id"]) == saved["frames"] >= 25

        from typer.testing import CliRunner

        from exe_stream.cli import app

        r = CliRunner().invoke(app, ["stats", str(tmp_path / "sessions"), "--a", MODELS[0], "--b", MODELS[1]])
        assert r.exit_code == 0, r.output
        assert "fer2013-minixception" in r.output and "facex" in r.output

        # 7. The server stops: the page says so.
        srv.stop()
        wait_for(driver, "return window.exeLive.conn == 'closed'", 10, "the page noticing the server stopped")
        assert "server has stopped" in driver.find_element("id", "message").text
    finally:
        driver.quit()
        srv.stop()


def test_canvas_capture_path(y4m, analyser, tmp_path):
    """Browsers without MediaStreamTrackProcessor send RGBA read back from a canvas; the
    server converts it to I420 and the overlay appears as well."""
    srv = ServerThread(LiveServer(analyser, ServerOptions(out=tmp_path)))
    driver = chromium("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                      f"--use-file-for-fake-video-capture={y4m}")
    try:
        driver.get(srv.url + "?capture=canvas")
        wait_for(driver, "return window.exeLive.history.filter(m => m.faces.length == 1).length >= 3", 15,
                 "three results with a face")
        last = driver.execute_script("return window.exeLive.last")
        assert (last["format"], last["width"], last["height"]) == ("RGBA", 176, 144)
        assert driver.execute_script("return document.querySelectorAll('#overlay .face-box').length") == 1
    finally:
        driver.quit()
        srv.stop()


@pytest.mark.parametrize("flags,message", [
    (("--use-fake-ui-for-media-stream",), "No camera found"),  # no fake device: no camera at all
    (("--use-fake-device-for-media-stream", "--deny-permission-prompts"), "Camera permission was denied"),
])
def test_no_camera_and_permission_denied(analyser, tmp_path, flags, message):
    srv = ServerThread(LiveServer(analyser, ServerOptions(out=tmp_path)))
    driver = chromium(*flags)
    try:
        driver.get(srv.url)
        text = wait_for(driver, "return window.exeLive && window.exeLive.state == 'no-camera' && "
                                "document.getElementById('message').textContent", 10, "the camera message")
        assert message in text
        assert driver.find_element("id", "message").is_displayed()
    finally:
        driver.quit()
        srv.stop()
