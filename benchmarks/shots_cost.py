"""What shot detection adds to a CPU scan: `exe-stream scan --every N` with `--shots off`,
`--shots content` and `--shots transnet`, on one 1080p H.264 film made from the bundled clips,
each command in its own process, interleaved and repeated (the minimum of the repeats is
reported, with every run's figure), in one run.

    python benchmarks/shots_cost.py [--minutes 2 --every 100 --repeats 2 --no-transnet] [--write]

The shots pass decodes every frame of the film (the sampled pass decodes only what its samples
need), so its cost is mostly that decode. With --write the table is appended to
benchmarks/RESULTS.md with the machine's description.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

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
    r.update(timings=entry["timings"], frames_sampled=entry["frames_sampled"])
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-transnet", action="store_true", help="skip TransNetV2 (slow on a CPU)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/exe-stream-bench"))
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    film = a.work / f"film-{a.minutes:g}min.mp4"
    if not film.exists():
        print(make_film(film, a.minutes))
    methods = ["off", "content"]
    runs: dict[str, list[dict]] = {m: [] for m in methods + ([] if a.no_transnet else ["transnet"])}
    for _ in range(a.repeats):  # interleaved, so load changes hit every method alike
        for m in methods:
            runs[m].append(run(film, a.work / f"out-{m}", a.every, m))
            print(m, round(runs[m][-1]["wall_s"], 2), runs[m][-1]["timings"], flush=True)
    if not a.no_transnet:
        runs["transnet"].append(run(film, a.work / "out-transnet", a.every, "transnet"))
        print("transnet", round(runs["transnet"][-1]["wall_s"], 2), runs["transnet"][-1]["timings"], flush=True)
    base = min(r["wall_s"] for r in runs["off"])
    lines = [
        f"### Shot detection cost on a CPU scan — {time.strftime('%Y-%m-%d')}", "",
        f"Machine: {machine()}", "",
        f"Command: `python benchmarks/shots_cost.py --minutes {a.minutes:g} --every {a.every} "
        f"--repeats {a.repeats}{' --no-transnet' if a.no_transnet else ''} --write`", "",
        f"Film: 1920x1080 H.264 made by `benchmarks/make_film.py`, {a.minutes:g} min; every {a.every}th "
        f"frame sampled (exact). Wall time of the whole `exe-stream scan` process; minimum of the runs "
        f"(all runs in brackets).", "",
        "| --shots | wall s | vs off | shots_s (manifest) | frames sampled |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for m, rs in runs.items():
        best = min(rs, key=lambda r: r["wall_s"])
        every = ", ".join(f"{r['wall_s']:.1f}" for r in rs)
        lines.append(f"| {m} | {best['wall_s']:.1f} ({every}) | {best['wall_s'] / base:.2f}x | "
                     f"{best['timings'].get('shots_s', 0):.1f} | {best['frames_sampled']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.write:
        with open(HERE / "RESULTS.md", "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
