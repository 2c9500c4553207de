"""Load the real PyNvVideoCodec wheel without a GPU and compare its scanned pts with the container's.

PyNvVideoCodec's extension links libcuda and opens libnvcuvid at run time; both are replaced by
stub libraries built here with gcc (every ``cu*`` / ``cuvid*`` symbol it uses returns success;
the device count is 1), which is enough for its FFmpeg side to run: ``CreateSimpleDecoder(...,
need_scanned_stream_metadata=True).get_scanned_stream_metadata()`` scans the packets without
decoding anything. The package's ``__init__`` is bypassed (it asks libnvidia-encode for the
driver version and raises RuntimeError without it: that is issue 10's first finding).

    pip download --no-deps -d /tmp/nvc pynvvideocodec==2.2.4
    python benchmarks/gpu/audit_pynvvideocodec.py /tmp/nvc/pynvvideocodec-2.2.4-*.whl FILM...

Prints, per film, the container's first pts (PyAV, presentation order) and PyNvVideoCodec's
scanned pts and frame count. The wheel's Python tag must match this interpreter's.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import av

_CUDA_SPECIAL = {
    "cuDeviceGetCount": "int cuDeviceGetCount(int*c){*c=1;return 0;}",
    "cuDeviceGet": "int cuDeviceGet(int*d,int o){*d=0;return 0;}",
    "cuCtxCreate_v2": "int cuCtxCreate_v2(void**c,unsigned f,int d){*c=obj;return 0;}",
    "cuDevicePrimaryCtxRetain": "int cuDevicePrimaryCtxRetain(void**c,int d){*c=obj;return 0;}",
    "cuCtxGetDevice": "int cuCtxGetDevice(int*d){*d=0;return 0;}",
    "cuStreamCreate": "int cuStreamCreate(void**s,unsigned f){*s=obj;return 0;}",
    "cuEventCreate": "int cuEventCreate(void**s,unsigned f){*s=obj;return 0;}",
    "cuGetErrorName": 'int cuGetErrorName(int e,const char**s){*s="STUB";return 0;}',
    "cuGetErrorString": 'int cuGetErrorString(int e,const char**s){*s="stub";return 0;}',
}


def _stubs(ext: Path, out: Path) -> None:
    """libcuda.so.1 and libnvcuvid.so.1 stubs for the extension ``ext`` in ``out``."""
    nm = subprocess.run(["nm", "-D", "--undefined-only", str(ext)], capture_output=True, text=True, check=True)
    cu = sorted({m.group(1) for m in re.finditer(r"\bU (cu[A-Z]\w*)", nm.stdout)})
    strings = subprocess.run(["strings", "-n", "5", str(ext)], capture_output=True, text=True, check=True).stdout
    cuvid = sorted({s for s in strings.split() if re.fullmatch(r"cuvid[A-Za-z0-9_]+", s)})
    head = "static char obj[256];\n"
    (out / "cuda.c").write_text(head + "\n".join(_CUDA_SPECIAL.get(n, f"int {n}(void){{return 0;}}") for n in cu))
    (out / "cuvid.c").write_text(head + "\n".join(f"int {n}(void**a){{if(a)*a=obj;return 0;}}" for n in cuvid))
    for src, lib in (("cuda.c", "libcuda.so.1"), ("cuvid.c", "libnvcuvid.so.1")):
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out / lib), str(out / src)], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("wheel", type=Path)
    ap.add_argument("films", type=Path, nargs="+")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    work = Path(os.environ.get("NVC_AUDIT_DIR") or tempfile.mkdtemp(prefix="nvc-audit-"))
    ext = next((work / "PyNvVideoCodec").glob("PyNvVideoCodec_130.*.so"), None)
    if not a.child:
        with zipfile.ZipFile(a.wheel) as z:
            z.extractall(work)
        ext = next((work / "PyNvVideoCodec").glob("PyNvVideoCodec_130.*.so"))
        _stubs(ext, work)
        env = {**os.environ, "LD_LIBRARY_PATH": str(work), "NVC_AUDIT_DIR": str(work)}
        sys.exit(subprocess.run([sys.executable, __file__, "--child", *map(str, [a.wheel, *a.films])], env=env).returncode)
    spec = importlib.util.spec_from_file_location("_PyNvVideoCodec", ext)
    nvc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nvc)
    for film in a.films:
        with av.open(str(film)) as c:
            st = c.streams.video[0]
            pts = sorted(p.pts for p in c.demux(st) if p.size)
            tb = st.time_base
        dec = nvc.CreateSimpleDecoder(str(film), 0, 0, 0, True, 0, 0, True, 1, nvc.OutputColorType.NATIVE, False, False)
        scanned = dec.get_scanned_stream_metadata()
        print(f"{film.name}: container pts {pts[:8]} ({len(pts)} frames, time base {tb}); "
              f"scanned pts {list(scanned.pts)[:8]} ({scanned.num_frames} frames); "
              f"{'match' if list(scanned.pts) == pts else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
