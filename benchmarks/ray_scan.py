"""Ray's overhead: the same films scanned locally and with `scan --ray`, in one run.

Makes ``--films`` 1080p H.264 films (benchmarks/make_film.py, lengths spread from
``--min-minutes`` to ``--max-minutes``) and times, each in a fresh process:

1. ``exe-stream scan FILMS -o OUT --device cpu`` (local, one film after another);
2. ``exe-stream scan ... --ray local`` (the command starts a Ray instance on this machine and
   stops it: what a one-off `--ray auto` costs where no cluster runs);
3. ``exe-stream scan ... --ray HOST:PORT`` against a cluster started beforehand with
   ``ray start --head`` (the per-scan cost of joining a running cluster).

Every case runs ``--repeats`` times (alternating, fresh output each time) and the minimum
wall time is reported; the overhead is each Ray case's minimum over the local minimum,
minus one. The shards of every Ray run are checked against the local run's.

    python benchmarks/ray_scan.py [--films 10 --min-minutes 0.3 --max-minutes 0.6 --every 50 --repeats 2] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_film import make_film  # noqa: E402

EXE = [str(Path(sys.executable).with_name("exe-stream"))]


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return wall


def same_shards(a: Path, b: Path) -> bool:
    from exe_stream.shards import read_faces, read_frames

    return (read_frames(a).equals(read_frames(b)) and read_faces(a).equals(read_faces(b)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--films", type=int, default=10)
    ap.add_argument("--min-minutes", type=float, default=0.3)
    ap.add_argument("--max-minutes", type=float, default=0.6)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "exe-stream-ray-bench")
    ap.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args()

    films_dir = args.work / "films"
    films_dir.mkdir(parents=True, exist_ok=True)
    step = (args.max_minutes - args.min_minutes) / max(1, args.films - 1)
    total_frames = 0
    for i in range(args.films):
        path = films_dir / f"film-{i:02d}.mp4"
        minutes = args.min_minutes + i * step
        if not path.exists():
            make_film(path, minutes, segment=args.work / "segment-1080p.mp4")
        total_frames += round(minutes * 60 * 24)
    common = [str(films_dir), "--device", "cpu", "--every", str(args.every), "-q"]

    port = 6391
    # Token authentication off for this loopback-only benchmark: since Ray 2.59 a local instance
    # (`--ray local`) turns it on and writes its own token over the default token file, which
    # then no longer matches the running head's (connections fail with InvalidAuthToken).
    os.environ["RAY_AUTH_MODE"] = "disabled"
    # The head runs in the foreground (--block) as this script's child and is stopped by its pid:
    # `ray stop` would stop every Ray instance on the machine, other users' too.
    head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                             f"--port={port}", "--num-cpus", str(os.cpu_count() or 2),
                             "--include-dashboard=false", "--disable-usage-stats"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(15)  # the head's start (GCS, raylet) on a loaded 2-core machine
    if head.poll() is not None:
        raise SystemExit(f"ray start --head exited with {head.returncode}")
    runs: dict[str, list[float]] = {"local": [], "ray local (starts Ray)": [], "ray running cluster": []}
    try:
        for r in range(args.repeats):
            for k, case in enumerate(runs):
                out = args.work / f"out-{k}-{r}"
                shutil.rmtree(out, ignore_errors=True)
                extra = [] if case == "local" else ["--ray", "local" if "starts" in case else f"127.0.0.1:{port}"]
                wall = timed([*EXE, "scan", *common, "-o", str(out), *extra])
                runs[case].append(wall)
                print(f"{case:24s} repeat {r}: {wall:7.1f} s", flush=True)
                if case != "local":
                    local_out = args.work / f"out-0-{r}"
                    if not same_shards(local_out, out):
                        raise SystemExit(f"{out}: shards differ from the local scan's")
    finally:
        head.send_signal(signal.SIGTERM)
        head.wait(timeout=60)

    base = min(runs["local"])
    rows = []
    for case, walls in runs.items():
        best = min(walls)
        rows.append({"case": case, "min_s": round(best, 1), "all_s": [round(w, 1) for w in walls],
                     "overhead_pct": round(100 * (best / base - 1), 1),
                     "films_per_hour": round(args.films / best * 3600)})
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, no GPU"
    print(json.dumps({"films": args.films, "frames": total_frames, "every": args.every, "machine": machine,
                      "rows": rows}, indent=1))
    table = ["| case | wall s (min of %d) | all runs s | overhead vs local | films/h |" % args.repeats,
             "| --- | ---: | --- | ---: | ---: |"]
    for row in rows:
        table.append(f"| {row['case']} | {row['min_s']} | {', '.join(map(str, row['all_s']))} | "
                     f"{row['overhead_pct']:+.1f}% | {row['films_per_hour']} |")
    print("\n".join(table))
    if args.write:
        with open(HERE / "RESULTS.md", "a") as fh:
            fh.write(f"\n### scan --ray vs local ({time.strftime('%Y-%m-%d')})\n\n"
                     f"`python benchmarks/ray_scan.py --films {args.films} --min-minutes {args.min_minutes} "
                     f"--max-minutes {args.max_minutes} --every {args.every} --repeats {args.repeats}` on {machine}; "
                     f"{args.films} films of 1080p H.264 (~{total_frames} frames in all), exact sampling.\n\n"
                     + "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
