"""What shot detection adds to a CPU scan: `exe-stream scan --every N` with `--shots off` and
each shot detector (`codec`, `content`, `transnet`), on a 1080p H.264 film made from the
bundled clips, each command in its own process, interleaved and repeated (the minimum and the
median of the repeats are reported, with every run's figure), in one run.

    python benchmarks/shots_cost.py [--minutes 2 --every 100 --repeats 5]
        [--methods off,codec,content,transnet] [--slow-repeats 2] [--no-scenecut] [--write]

`content` and `transnet` decode every frame of the film (the sampled pass decodes only what
its samples need), so their cost is mostly that decode; `codec` reads the encoder's decisions
from the bitstream and decodes only around doubtful candidates. `--no-scenecut` makes the film
with keyframes every 250 frames only (an encoder that marks no scene change: every cut is
then a doubtful candidate for `codec`). With --write the table is appended to
benchmarks/RESULTS.md with the machine's description.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cpu_scan import exe_stream_cmd, machine, measure  # noqa: E402
from make_film import make_film  # noqa: E402


def run(film: Path, out: Path, every: int, shots: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    r = measure(exe_stream_cmd() + ["scan", str(film), "-o", str(out), "--every", str(every), "--device", "cpu",
                                    "-q", "--no-resume", "--shots", shots])
    if r["rc"] != 0:
        raise SystemExit(f"scan --shots {shots} failed ({r['rc']}): {r['stderr']}")
    (entry,) = json.loads((out / "manifest.json").read_text())["films"].values()
    shots_dir = out / "shots"
    n_shots = sum(pq.read_metadata(p).num_rows for p in shots_dir.glob("*.parquet")) if shots_dir.exists() else 0
    r.update(timings=entry["timings"], frames_sampled=entry["frames_sampled"], shots=n_shots)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--methods", default="off,codec,content,transnet",
                    help="comma-separated --shots values; off is always run (the base)")
    ap.add_argument("--slow-repeats", type=int, default=2,
                    help="repeats of content and transnet (they decode every frame; transnet runs once at most)")
    ap.add_argument("--no-scenecut", action="store_true", help="a film without scene-change keyframes")
    ap.add_argument("--work", type=Path, default=Path("/tmp/exe-stream-bench"))
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    suffix = "-noscenecut" if a.no_scenecut else ""
    film = a.work / f"film-{a.minutes:g}min{suffix}.mp4"
    if not film.exists():
        print(make_film(film, a.minutes, scenecut=not a.no_scenecut))
    methods = ["off"] + [m for m in a.methods.split(",") if m and m != "off"]
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for rep in range(a.repeats):  # interleaved, so load changes hit every method alike
        for m in methods:
            if (m == "content" and rep >= a.slow_repeats) or (m == "transnet" and rep >= min(1, a.slow_repeats)):
                continue
            runs[m].append(run(film, a.work / f"out-{m}", a.every, m))
            print(m, round(runs[m][-1]["wall_s"], 2), runs[m][-1]["timings"], flush=True)
    base = min(r["wall_s"] for r in runs["off"])
    base_med = float(np.median([r["wall_s"] for r in runs["off"]]))
    lines = [
        f"### Shot detection cost on a CPU scan{' (film without scene-change keyframes)' if a.no_scenecut else ''}"
        f" — {time.strftime('%Y-%m-%d')}", "",
        f"Machine: {machine()}", "",
        f"Command: `python benchmarks/shots_cost.py --minutes {a.minutes:g} --every {a.every} "
        f"--repeats {a.repeats} --slow-repeats {a.slow_repeats} --methods {','.join(methods)}"
        f"{' --no-scenecut' if a.no_scenecut else ''} --write`", "",
        f"Film: 1920x1080 H.264 made by `benchmarks/make_film.py{' --no-scenecut' if a.no_scenecut else ''}`, "
        f"{a.minutes:g} min; every {a.every}th frame sampled (exact). Wall time of the whole `exe-stream scan` "
        f"process (start-up and model loading included); minimum and median of the runs (all runs in brackets); "
        f"`shots_s` is the shot detection's own time in the manifest.", "",
        "| --shots | wall s, min | vs off (min) | wall s, median | vs off (median) | shots_s | shots found | all runs |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for m, rs in runs.items():
        best = min(rs, key=lambda r: r["wall_s"])
        med = float(np.median([r["wall_s"] for r in rs]))
        every = ", ".join(f"{r['wall_s']:.1f}" for r in rs)
        lines.append(f"| {m} | {best['wall_s']:.2f} | {best['wall_s'] / base:.3f}x | {med:.2f} | {med / base_med:.3f}x | "
                     f"{best['timings'].get('shots_s', 0):.2f} | {best['shots'] if m != 'off' else '-'} | {every} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.write:
        with open(HERE / "RESULTS.md", "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
