"""CPU benchmark: `exe-stream scan` (exact and keyframe sampling) against the reference
study's method, side by side in one run, on long 1080p H.264 films made from the bundled clips.

    python benchmarks/cpu_scan.py [--minutes 10 --short-minutes 5 --long-minutes 20 --every 100] [--write]

Each measured command runs in its own process; its wall time and peak resident memory
(getrusage of the child) are recorded. With --write the table is appended to
benchmarks/RESULTS.md together with the machine's description.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_film import make_film  # noqa: E402


def measure(cmd: list[str]) -> dict:
    """Run ``cmd`` in a fresh process; wall seconds, peak RSS (MiB) of that process, stdout."""
    t = time.perf_counter()
    # A tiny launcher reports its own child's peak, so each command's peak is its own.
    launcher = (
        "import resource,subprocess,sys,json;"
        "p=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
        "print(json.dumps({'rc':p.returncode,'maxrss_kb':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
        "'stdout':p.stdout[-4000:],'stderr':p.stderr[-4000:]}))"
    )
    out = subprocess.run([sys.executable, "-c", launcher, *cmd], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
    rec = json.loads(out.stdout)
    return {"wall_s": wall, "peak_mib": rec["maxrss_kb"] / 1024, "rc": rec["rc"],
            "stdout": rec["stdout"], "stderr": rec["stderr"]}


def exe_stream_cmd() -> list[str]:
    exe = shutil.which("exe-stream") or str(Path(sys.executable).with_name("exe-stream"))
    return [exe]


def scan_run(film: Path, out: Path, every: int, mode: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    r = measure(exe_stream_cmd() + ["scan", str(film), "-o", str(out), "--every", str(every),
                                    "--sampling", mode, "--device", "cpu", "-q", "--no-resume"])
    if r["rc"] != 0:
        raise SystemExit(f"scan failed ({r['rc']}): {r['stderr']}")
    m = json.loads((out / "manifest.json").read_text())
    (entry,) = m["films"].values()
    r.update(frames_sampled=entry["frames_sampled"], faces=entry["faces"], timings=entry["timings"])
    return r


def baseline_run(film: Path, every: int) -> dict:
    r = measure([sys.executable, str(HERE / "baseline_reference.py"), str(film), "--every", str(every)])
    if r["rc"] != 0:
        raise SystemExit(f"baseline failed ({r['rc']}): {r['stderr']}")
    r.update(json.loads(r["stdout"].strip().splitlines()[-1]))
    return r


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import av
    import torch
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}, PyAV {av.__version__} "
            f"(FFmpeg {av.library_versions['libavcodec']})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--short-minutes", type=float, default=5.0)
    ap.add_argument("--long-minutes", type=float, default=20.0,
                    help="a third, longer film, scanned only (peak memory across three lengths)")
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--work", type=Path, default=HERE / "work")
    ap.add_argument("--write", action="store_true", help="append the results to benchmarks/RESULTS.md")
    a = ap.parse_args()

    films = {}
    for minutes in (a.short_minutes, a.minutes, a.long_minutes):
        films[minutes] = make_film(a.work / f"film-{minutes:g}min.mp4", minutes)
        print("film", films[minutes], flush=True)
    long_film = Path(films[a.minutes]["path"])
    rows = []

    def add(name, minutes, r):
        media_s = films[minutes]["seconds"]
        rows.append({"run": name, "minutes": minutes, "wall_s": r["wall_s"], "realtime": media_s / r["wall_s"],
                     "peak_mib": r["peak_mib"], "sampled": r.get("frames_sampled"), "faces": r.get("faces"),
                     "detail": r.get("timings") or {k: r[k] for k in ("frames_read", "classify_s") if k in r}})
        print(json.dumps(rows[-1]), flush=True)

    add("baseline (OpenCV every frame + MediaPipe + 1-face classify)", a.minutes, baseline_run(long_film, a.every))
    for minutes in (a.minutes, a.short_minutes, a.long_minutes):
        film = Path(films[minutes]["path"])
        add("exe-stream scan --sampling exact", minutes, scan_run(film, a.work / "out-exact", a.every, "exact"))
        add("exe-stream scan --sampling keyframe", minutes, scan_run(film, a.work / "out-key", a.every, "keyframe"))
    # The fixed cost of a scan process (interpreter, torch import, model loading, first
    # inference): a scan of the shortest bundled clip, one sampled frame.
    from exe_stream.demo import bundled_clips

    tiny = min(bundled_clips(), key=lambda p: p.stat().st_size)
    shutil.rmtree(a.work / "out-tiny", ignore_errors=True)
    fixed = measure(exe_stream_cmd() + ["scan", str(tiny), "-o", str(a.work / "out-tiny"), "--every", "1000",
                                        "--device", "cpu", "-q", "--no-resume"])
    print(json.dumps({"run": "fixed cost", "wall_s": fixed["wall_s"]}), flush=True)
    base_rt = rows[0]["realtime"]
    lines = [
        f"### CPU scan vs the reference method — {time.strftime('%Y-%m-%d')}",
        "",
        f"Machine: {machine()}",
        "",
        f"Command: `python benchmarks/cpu_scan.py --minutes {a.minutes:g} --short-minutes {a.short_minutes:g} "
        f"--long-minutes {a.long_minutes:g} --every {a.every} --write`",
        "",
        f"Films: 1920x1080 H.264 (x264 medium, keyint 250, 3 B-frames, ~6 Mbit/s, 24 fps) made by "
        f"`benchmarks/make_film.py` from the bundled clips; {films[a.minutes]['frames']} frames "
        f"({films[a.minutes]['seconds']:.0f} s), {films[a.short_minutes]['frames']} frames "
        f"({films[a.short_minutes]['seconds']:.0f} s) and {films[a.long_minutes]['frames']} frames "
        f"({films[a.long_minutes]['seconds']:.0f} s). Every {a.every}th frame sampled. One run each.",
        "",
        "| run | film | wall s | realtime x | vs baseline | peak MiB | frames sampled | faces |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        speed = r["realtime"] / base_rt  # realtime factors compare runs on films of different lengths
        lines.append(
            f"| {r['run']} | {r['minutes']:g} min | {r['wall_s']:.1f} | {r['realtime']:.1f} | "
            f"{speed:.2f}x | {r['peak_mib']:.0f} | {r['sampled'] if r['sampled'] is not None else '-'} | "
            f"{r['faces'] if r['faces'] is not None else '-'} |"
        )
    lines += [
        "",
        f"Fixed cost of one scan process (start-up, torch import, model loading, first inference), "
        f"measured as a scan of `{tiny.name}` with one sampled frame: {fixed['wall_s']:.1f} s. "
        "Without it, vs the baseline's whole run: "
        + ", ".join(f"{r['run'].removeprefix('exe-stream scan ')} ({r['minutes']:g} min) "
                    f"{rows[0]['wall_s'] / max(r['wall_s'] - fixed['wall_s'], 1e-9) * films[r['minutes']]['seconds'] / films[a.minutes]['seconds']:.1f}x"
                    for r in rows[1:]) + ".",
    ]
    lines += ["", "Stage timings (seconds, from the manifest / the baseline's own counters):", ""]
    lines += [f"- {r['run']} ({r['minutes']:g} min): `{json.dumps(r['detail'])}`" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.write:
        res = HERE / "RESULTS.md"
        head = "" if res.exists() else "# Benchmark results\n\nEvery figure here was measured by the command beside it, on the machine named.\n\n"
        with open(res, "a") as fh:
            fh.write(head + text + "\n")


if __name__ == "__main__":
    main()
