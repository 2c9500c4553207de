"""Re-create the committed BlazeFace weights from MediaPipe's original .tflite files.

    python -m exe_stream.detect.convert [--source DIR_OR_FILE] [--out DIR]

``--source`` is a .tflite file (converts the model it is), a directory searched recursively
for the two files, or a mediapipe wheel (``pip download --no-deps mediapipe==0.10.21``).
Without it, the files of the installed ``mediapipe`` package are used. Each model becomes
``<out>/<name>/`` with ``model.json`` (the card: source, sha256 of the original file,
license, anchor/decoder options), ``graph.json`` (the TFLite graph description),
``weights.safetensors`` and ``LICENSE``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from ..errors import ModelError
from ..tflite import GRAPH_FILE, TFLiteError, export_graph, read_tflite, write_graph
from . import ASSETS_DIR
from .blazeface import MODEL_OPTIONS, options_to_json

# Registry name -> file name inside mediapipe/modules/face_detection/.
SOURCE_FILES = {
    "blazeface-short": "face_detection_short_range.tflite",
    "blazeface-full": "face_detection_full_range_sparse.tflite",
}
PACKAGE_DIR = "mediapipe/modules/face_detection"
MEDIAPIPE_VERSION = "0.10.21"

LICENSE_TEXT = """\
The weights in this directory were converted by exe-stream (exe_stream.detect.convert) from
MediaPipe's face detection models (mediapipe/modules/face_detection/*.tflite in the PyPI
mediapipe {version} wheel). Only the storage format changed.

Copyright (c) Google LLC.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use these files except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
""".format(version=MEDIAPIPE_VERSION)


def installed_mediapipe_file(name: str) -> Path | None:
    """Path of the original .tflite of detector ``name`` inside the installed ``mediapipe``
    package, or None when mediapipe is not installed (found without importing it)."""
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        p = Path(root) / "modules" / "face_detection" / SOURCE_FILES[name]
        if p.is_file():
            return p
    return None


def find_sources(source: str | os.PathLike | None, workdir: Path) -> dict[str, Path]:
    """Registry name -> original .tflite path for every model found in ``source``.

    Files inside a wheel are extracted to ``workdir``. Raises ModelError naming the source
    and the expected file names when nothing is found.
    """
    expected = ", ".join(SOURCE_FILES.values())
    if source is None:
        found = {n: p for n in SOURCE_FILES if (p := installed_mediapipe_file(n)) is not None}
        if not found:
            raise ModelError(f"mediapipe is not installed; pass --source with {expected} "
                             f"(or a mediapipe=={MEDIAPIPE_VERSION} wheel)")
        return found
    src = Path(source)
    by_file = {f: n for n, f in SOURCE_FILES.items()}
    if src.is_file() and src.suffix == ".whl":
        found = {}
        with zipfile.ZipFile(src) as z:
            for f, n in by_file.items():
                member = f"{PACKAGE_DIR}/{f}"
                if member in z.namelist():
                    out = workdir / f
                    out.write_bytes(z.read(member))
                    found[n] = out
    elif src.is_file():
        if src.name not in by_file:
            raise ModelError(f"{src}: not one of the BlazeFace files ({expected})")
        found = {by_file[src.name]: src}
    elif src.is_dir():
        found = {}
        for f, n in by_file.items():
            hits = sorted(src.rglob(f))
            if hits:
                found[n] = hits[0]
    else:
        raise ModelError(f"--source {str(src)!r} does not exist")
    if not found:
        raise ModelError(f"{src}: none of {expected} found")
    return found


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def convert_one(name: str, tflite_path: Path, out_dir: Path) -> Path:
    """Convert one original file into ``out_dir/<name>/``; returns that directory."""
    from ..models.card import ModelCard, save_model

    model = read_tflite(tflite_path)
    graph, constants = export_graph(model)
    anchors, decoder = MODEL_OPTIONS[name]
    d = out_dir / name
    graph["source"] = f"mediapipe=={MEDIAPIPE_VERSION}:{PACKAGE_DIR}/{SOURCE_FILES[name]}"
    # graph.json first (the card records its sha256); save_model writes weights, card, LICENSE.
    write_graph(d, graph)
    extra = {
        "source_file": SOURCE_FILES[name],
        "source_package": f"mediapipe=={MEDIAPIPE_VERSION}",
        "source_sha256": sha256_file(tflite_path),
        "graph_file": GRAPH_FILE,
        "graph_sha256": sha256_file(d / GRAPH_FILE),
        "letterbox": True,
        **options_to_json(name),
    }
    card = ModelCard(
        name=name,
        architecture="blazeface",
        labels=("face",),
        input_size=(anchors.input_size_height, anchors.input_size_width),
        colour="rgb",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        crop_margin=0.0,
        source=(f"MediaPipe {MEDIAPIPE_VERSION} (PyPI wheel), {PACKAGE_DIR}/{SOURCE_FILES[name]}, "
                f"converted by exe_stream.detect.convert"),
        license="Apache-2.0",
        task="face-detection",
        extra=extra,
    )
    tensors = {k: torch.from_numpy(v) for k, v in constants.items()}
    save_model(d, card, tensors, license_text=LICENSE_TEXT)
    return d


def convert(source: str | os.PathLike | None = None, out_dir: str | os.PathLike = ASSETS_DIR) -> dict[str, Path]:
    """Convert every BlazeFace model found in ``source`` (see module docstring) into
    ``out_dir``. Returns registry name -> written directory."""
    out = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        found = find_sources(source, Path(tmp))
        return {name: convert_one(name, path, out) for name, path in sorted(found.items())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m exe_stream.detect.convert", description=__doc__.split("\n\n")[0])
    p.add_argument("--source", help="a .tflite file, a directory holding them, or a mediapipe wheel "
                                    "(default: the installed mediapipe package)")
    p.add_argument("--out", default=str(ASSETS_DIR), help=f"output directory (default: {ASSETS_DIR})")
    a = p.parse_args(argv)
    try:
        written = convert(a.source, a.out)
    except (ModelError, TFLiteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, d in written.items():
        size = sum(f.stat().st_size for f in d.iterdir())
        print(f"{name}: {d} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
