"""exe-stream live: latency and analysed frame rate at 640x480 with the default model.

Frames: the bundled talking-face clip (carphone, 176x144) decoded by scan's decoder and
scaled to 640x480 (bilinear, per plane), played at the camera's 30 frames/s.

Two measurements, one run:

1. stages: each step of one frame's analysis in-process (wire message -> FrameBatch, detection,
   classification, smoothing + JSON), medians and p95 over the clip, per torch thread count;
   the profile that explains the figures below.
2. browser: headless Chromium with a fake camera playing the 640x480 frames (a y4m) and the
   real page and server: the page's own capture-to-overlay latency (from the moment the page
   gets the camera frame to the overlay drawn) and analysed frames/s, with the page sending
   at most one or two unanswered frames. The browser runs on the same cores, as it would.

Target (issue 12): p95 latency <= 150 ms at >= 10 analysed frames/s.

    python benchmarks/live_latency.py [--seconds 20] [--threads 1 2] [--in-flight 1 2] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from exe_stream.classify import classify_faces
from exe_stream.decode import get_decoder
from exe_stream.detect import DetectorOptions, detect_faces
from exe_stream.live import LiveAnalyser, LiveOptions, LiveServer, ServerOptions, ServerThread
from exe_stream.live.wire import encode_frame, i420_payload, parse_header, to_frame_batch
from exe_stream.sampling import SamplingOptions
from exe_stream.types import FrameBatch

CLIP = Path(__file__).resolve().parent.parent / "exe_stream" / "assets" / "clips" / "carphone_pristine.mp4"
W, H, FPS = 640, 480, 30.0


def frames_640() -> list[FrameBatch]:
    """The clip's frames scaled to 640x480 (Y to 640x480, U and V to 320x240)."""
    out = []
    for f in get_decoder("pyav").frames(CLIP, SamplingOptions(every=1), 1):
        def scale(p: torch.Tensor, h: int, w: int) -> torch.Tensor:
            x = F.interpolate(p[None].float(), size=(h, w), mode="bilinear", align_corners=False)
            return x[0].round().clamp(0, 255).to(torch.uint8)

        out.append(FrameBatch(y=scale(f.y, H, W), u=scale(f.u, H // 2, W // 2), v=scale(f.v, H // 2, W // 2),
                              frame_index=f.frame_index, pts_seconds=f.pts_seconds, is_keyframe=f.is_keyframe,
                              matrix=f.matrix, full_range=f.full_range))
    return out


def q(xs, p: float) -> float:
    return float(np.percentile(np.asarray(xs, np.float64), p)) if len(xs) else float("nan")


def stages(frames: list[FrameBatch], threads: int, detector: str) -> dict:
    a = LiveAnalyser(LiveOptions(device="cpu", threads=threads, detector=DetectorOptions(name=detector)))
    a.warm_up(H, W)
    t = {"wire_ms": [], "detect_ms": [], "classify_ms": [], "smooth_json_ms": [], "total_ms": []}
    torch.set_num_threads(threads)
    for i, f in enumerate(frames):
        msg = encode_frame(i, 0.0, "I420", W, H, i420_payload(f))
        t0 = time.perf_counter()
        fb = to_frame_batch(*parse_header(msg), i, i / FPS)
        t1 = time.perf_counter()
        faces = detect_faces(fb, a.opts.detector)
        t2 = time.perf_counter()
        probs = classify_faces(fb, faces, a.models)
        t3 = time.perf_counter()
        per_face = [{m: p[j].numpy() for m, p in probs.items()} for j in range(len(faces))]
        a.smoother(i / FPS, faces.boxes.numpy(), per_face)
        json.dumps({"faces": [{"box": faces.boxes[j].tolist(), "p": {m: v.tolist() for m, v in pf.items()}}
                              for j, pf in enumerate(per_face)]})
        t4 = time.perf_counter()
        for k, (s, e) in zip(t, [(t0, t1), (t1, t2), (t2, t3), (t3, t4), (t0, t4)]):
            t[k].append(1000 * (e - s))
    return {k: {"median": round(q(v, 50), 2), "p95": round(q(v, 95), 2)} for k, v in t.items()}


def browser(frames: list[FrameBatch], seconds: float, threads: int, in_flight: int, detector: str) -> dict:
    """The real page in headless Chromium with a fake camera playing the 640x480 frames;
    ``in_flight``: the page's limit of unanswered frames (its ``?inflight=`` parameter)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    tmp = Path(tempfile.mkdtemp())
    y4m = tmp / "camera.y4m"
    with open(y4m, "wb") as fh:
        fh.write(f"YUV4MPEG2 W{W} H{H} F30000:1001 Ip A1:1 C420jpeg\n".encode())
        for f in frames:
            fh.write(b"FRAME\n")
            for p in (f.y, f.u, f.v):
                fh.write(p[0].numpy().tobytes())
    analyser = LiveAnalyser(LiveOptions(device="cpu", threads=threads, detector=DetectorOptions(name=detector)))
    srv = ServerThread(LiveServer(analyser, ServerOptions(out=tmp)))
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1320,860",
              "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
              f"--use-file-for-fake-video-capture={y4m}"):
        opts.add_argument(a)
    driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"))
    try:
        driver.get(f"{srv.url}?inflight={in_flight}")
        end = time.monotonic() + 15
        while time.monotonic() < end and not driver.execute_script("return window.exeLive.results > 5"):
            time.sleep(0.2)
        # Collect every latency the page measures from here on (its own list keeps the last 100).
        driver.execute_script(
            "const L = window.exeLive; L.mark = L.results; L.seen = [];"
            "L.poll = setInterval(() => { L.seen.push(...L.latencies.splice(0)); }, 200);")
        n0 = driver.execute_script("return window.exeLive.results")
        t0 = time.monotonic()
        time.sleep(seconds)
        n1 = driver.execute_script("return window.exeLive.results")
        t1 = time.monotonic()
        lat = driver.execute_script("const L = window.exeLive; L.seen.push(...L.latencies.splice(0)); return L.seen")
        dropped = driver.execute_script("return window.exeLive.dropped")
        return {"analysed": n1 - n0, "analysed_fps": round((n1 - n0) / (t1 - t0), 2), "dropped_by_server": dropped,
                "latency_ms": {"median": round(q(lat, 50), 1), "p95": round(q(lat, 95), 1), "max": round(max(lat), 1)},
                "n_latencies": len(lat)}
    finally:
        driver.quit()
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch CPU threads to compare")
    ap.add_argument("--in-flight", type=int, nargs="+", default=[1, 2], help="the page's unanswered-frame limits")
    ap.add_argument("--detector", nargs="+", default=["blazeface-full"],
                    help="detectors to compare (blazeface-full is scan's and live's default)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    frames = frames_640()
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__, "load_before": os.getloadavg()},
        "frame": f"{W}x{H} I420 (carphone scaled), camera {FPS:.0f} fps", "model": "fer2013-minixception",
        "stages": {}, "browser": {},
    }
    for det in args.detector:
        for n in args.threads:
            key = f"{det},threads={n}"
            report["stages"][key] = stages(frames, n, det)
            print(f"{key} stages:", json.dumps(report["stages"][key]), flush=True)
            for k in args.in_flight:
                key = f"{det},threads={n},in_flight={k}"
                report["browser"][key] = browser(frames, args.seconds, n, k, det)
                print(f"{key} browser:", json.dumps(report["browser"][key]), flush=True)
    report["machine"]["load_after"] = os.getloadavg()
    try:
        report["machine"]["cpu_model"] = subprocess.run(
            ["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True,
            text=True).stdout.strip()
    except OSError:
        pass
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
