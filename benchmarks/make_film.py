"""Make a long 1080p H.264 test film from the bundled real clips (nothing is downloaded).

The clips are upscaled (aspect kept, letterboxed) to 1920x1080, joined into one segment
and encoded once with film-like x264 settings (preset medium, keyint 250, 3 B-frames,
constant bitrate ~ a streaming film's); the segment is then remuxed end to end with shifted
timestamps until the film is long enough. Each segment starts with an IDR frame of a closed
GOP, so the looped film decodes exactly like one long encode.

    python benchmarks/make_film.py OUT.mp4 --minutes 10
"""

from __future__ import annotations

import argparse
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from exe_stream.demo import bundled_clips

WIDTH, HEIGHT, FPS = 1920, 1080, 24


def _upscaled_frames(clip: Path):
    with av.open(str(clip)) as c:
        for frame in c.decode(video=0):
            scale = min(WIDTH / frame.width, HEIGHT / frame.height)
            w, h = int(frame.width * scale) // 2 * 2, int(frame.height * scale) // 2 * 2
            rgb = frame.reformat(width=w, height=h, format="rgb24", interpolation="BICUBIC").to_ndarray()
            canvas = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
            y0, x0 = (HEIGHT - h) // 2, (WIDTH - w) // 2
            canvas[y0 : y0 + h, x0 : x0 + w] = rgb
            yield canvas


def encode_segment(path: Path, bitrate: int, preset: str = "medium", max_frames: int | None = None,
                   scenecut: bool = True) -> int:
    """Encode the bundled clips once, upscaled to 1080p, with x264 ``preset`` (their first
    ``max_frames`` frames when given); ``scenecut=False``: keyframes every 250 frames only (as
    encoders without scene-change keyframes write, e.g. fixed-GOP streaming encodes); returns
    the number of frames."""
    n = 0
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        s.bit_rate = bitrate
        sc = "40" if scenecut else "0"
        s.options = {"preset": preset, "bf": "3", "g": "250", "keyint_min": "25", "sc_threshold": sc}
        s.codec_context.options = {"x264-params": f"keyint=250:min-keyint=25:bframes=3:open-gop=0:scenecut={sc}"}
        s.codec_context.color_primaries = 1
        s.codec_context.color_trc = 1
        s.codec_context.colorspace = 1  # BT.709
        for clip in bundled_clips():
            for rgb in _upscaled_frames(clip):
                if max_frames is not None and n >= max_frames:
                    break
                for pkt in s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                    out.mux(pkt)
                n += 1
        for pkt in s.encode():
            out.mux(pkt)
    return n


def loop_segment(segment: Path, path: Path, minutes: float) -> tuple[int, float]:
    """Remux the segment end to end until ``minutes`` long; returns (frames, seconds)."""
    with av.open(str(segment)) as src:
        ins = src.streams.video[0]
        packets = [p for p in src.demux(ins) if p.size]
        tb = ins.time_base
        seg_frames = len(packets)
        seg_ticks = int(round(seg_frames / FPS / tb))
        loops = max(1, int(np.ceil(minutes * 60 / (seg_frames / FPS))))
        with av.open(str(path), "w") as dst:
            outs = dst.add_stream_from_template(ins)
            for k in range(loops):
                for p in packets:
                    q = av.Packet(bytes(p))
                    q.pts = p.pts + k * seg_ticks
                    q.dts = p.dts + k * seg_ticks
                    q.time_base = tb
                    q.is_keyframe = p.is_keyframe
                    q.stream = outs
                    dst.mux(q)
    return seg_frames * loops, seg_frames * loops / FPS


def make_film(path: Path, minutes: float, bitrate: int = 6_000_000, segment: Path | None = None,
              preset: str = "medium", max_frames: int | None = None, scenecut: bool = True) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    segment = segment or path.with_name("segment-1080p.mp4" if scenecut else "segment-1080p-noscenecut.mp4")
    t = time.perf_counter()
    if not segment.exists():
        encode_segment(segment, bitrate, preset, max_frames, scenecut)
    enc_s = time.perf_counter() - t
    frames, seconds = loop_segment(segment, path, minutes)
    return {"path": str(path), "frames": frames, "seconds": seconds, "segment_encode_s": enc_s,
            "bytes": path.stat().st_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--bitrate", type=int, default=6_000_000)
    ap.add_argument("--preset", default="medium", help="x264 preset (a quick rehearsal: ultrafast)")
    ap.add_argument("--max-frames", type=int, default=None,
                    help="only the clips' first N frames in the looped segment (a quick rehearsal)")
    ap.add_argument("--no-scenecut", action="store_true",
                    help="keyframes every 250 frames only, none at scene changes")
    a = ap.parse_args()
    print(make_film(a.out, a.minutes, a.bitrate, preset=a.preset, max_frames=a.max_frames,
                    scenecut=not a.no_scenecut))


if __name__ == "__main__":
    main()
