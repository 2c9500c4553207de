"""``exe-stream bench``: the pipeline's stages timed on one film, against physical limits and
the reference study's method, all measured in the same run on the same device.

Stages (each reported with what it processed, the seconds it took and its rate):

- ``decode``: the decoder alone, every ``every``-th frame, one film; then ``films_at_once``
  copies of it decoded concurrently (one decoder thread each) - aggregate sampled frames/s.
- ``copy``: the device's copy bandwidth, a large uint8 tensor cloned (bytes read + written
  per second): the physical limit ``roi_resample`` is compared with.
- ``roi_resample``: the detector letterbox of the sampled frames, with the bytes it must move
  (the planes' samples it reads at least once plus the float32 output it writes) per second,
  and that rate as a fraction of the copy bandwidth.
- ``detector``: BlazeFace on the letterboxed batch, frames/s.
- ``classifier``: each model through each engine at each batch size, crops/s.
- ``scan``: ``pipeline.scan`` of the film end to end, realtime factor.
- ``reference``: the reference study's method on the same film: every frame read and
  converted to BGR (OpenCV if installed, else PyAV), the classifier on one face crop at a time
  (the face boxes come from exe-stream's detector so both classify the same faces).

Rates are medians of ``repeats`` runs after one warm-up. On CUDA the GPU is synchronised
around every timed call. Nothing here is a target: the targets live in benchmarks/.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .options import OptionError, check_range
from .classify import face_rois, make_crops
from .decode import get_decoder
from .detect import DetectorOptions, detect_faces, get_detector
from .models import load_model, resolve_device
from .roi import roi_resample
from .sampling import SamplingOptions
from .types import FrameBatch


@dataclass(frozen=True)
class BenchOptions:
    """What ``bench`` measures."""

    # Sample every N-th frame (the reference study's 100 by default).
    every: int = 100
    # "cpu", "cuda" or "auto".
    device: str = "auto"
    # Decoder backend ("pyav", "nvdec", "dali"; "auto" = pyav on the CPU, nvdec on CUDA).
    decoder: str = "auto"
    # Emotion models to time in the classifier stage.
    models: tuple[str, ...] = ("fer2013-minixception",)
    # Engines to time each model with ("torch", "onnxruntime", "tensorrt").
    engines: tuple[str, ...] = ("torch",)
    # Classifier batch sizes.
    batch_sizes: tuple[int, ...] = (1, 16, 64)
    # Films decoded at once in the aggregate decode measurement (0 = skip it).
    films_at_once: int = 2
    # Timed repeats per measurement (median reported), after one warm-up.
    repeats: int = 3
    # Also run the reference method (reads every frame of the film: slow on long films).
    reference: bool = True

    def __post_init__(self) -> None:
        check_range("every", self.every, lo=1, integer=True)
        check_range("repeats", self.repeats, lo=1, integer=True)
        check_range("films_at_once", self.films_at_once, lo=0, integer=True)
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise OptionError("batch_sizes", f"must be >= 1, got {list(self.batch_sizes)}")
        if not self.models or not self.engines:
            raise ValueError("at least one model and one engine are needed")


@dataclass
class BenchResult:
    """One row per measurement: stage, what, items, seconds, rate (items/s), unit, extra."""

    film: str
    device: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, stage: str, what: str, items: float, seconds: float, unit: str, **extra: Any) -> dict:
        row = {"stage": stage, "what": what, "items": items, "seconds": seconds,
               "rate": items / seconds if seconds > 0 else float("inf"), "unit": unit, **extra}
        self.rows.append(row)
        return row

    def row(self, stage: str, what: str | None = None) -> dict[str, Any]:
        for r in self.rows:
            if r["stage"] == stage and (what is None or r["what"] == what):
                return r
        raise KeyError(f"no {stage!r} row{'' if what is None else f' for {what!r}'}")

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps({"film": self.film, "device": self.device, "rows": self.rows}, indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _decode_all(decoder_name: str, film: Path, sampling: SamplingOptions) -> list[FrameBatch]:
    return list(get_decoder(decoder_name).frames(film, sampling, 16))


def _bytes_moved(frames: FrameBatch, out: torch.Tensor) -> int:
    """Bytes a letterbox must move at least: every plane sample it reads once, its output once.
    (A letterbox of a frame larger than its output reads at most 4 taps per output pixel per
    plane; the planes' size is the bound used when it is smaller.)"""
    taps = 4 * out.shape[-1] * out.shape[-2] * len(frames)
    planes = sum(p[: len(frames)].numel() for p in (frames.y, frames.u, frames.v))
    return min(planes, 3 * taps) + out.numel() * out.element_size()


def bench(film: str | Path, opts: BenchOptions = BenchOptions(), on_row: Callable[[dict], None] | None = None) -> BenchResult:
    """Time every stage on ``film`` (see the module doc). Returns the rows; ``on_row`` sees each
    as it is measured."""
    from .pipeline import ScanOptions, _resolve_backends, scan

    film = Path(film)
    if not film.is_file():
        raise ValueError(f"film {film} does not exist")
    device = resolve_device(opts.device)
    decoder_name = _resolve_backends(ScanOptions(decoder=opts.decoder, device=device.type), device)
    info = get_decoder(decoder_name).probe(film)
    sampling = SamplingOptions(every=opts.every)
    res = BenchResult(str(film), str(device))

    def add(*a, **k):
        row = res.add(*a, **k)
        if on_row:
            on_row(row)

    # Decoding: one film, then several at once.
    batches: list[FrameBatch] = []

    def decode_one() -> None:
        batches[:] = _decode_all(decoder_name, film, sampling)

    t = _timed(decode_one, torch.device("cpu"), opts.repeats)
    n = sum(len(b) for b in batches)
    add("decode", f"{decoder_name}, 1 film", n, t, "sampled frames/s", media_seconds=info.duration_seconds)
    if opts.films_at_once > 1:
        def decode_many() -> None:
            threads = [threading.Thread(target=_decode_all, args=(decoder_name, film, sampling))
                       for _ in range(opts.films_at_once)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()

        t = _timed(decode_many, torch.device("cpu"), opts.repeats)
        add("decode", f"{decoder_name}, {opts.films_at_once} films at once", n * opts.films_at_once, t,
            "sampled frames/s")
    if not batches:
        raise ValueError(f"{film}: no frame was sampled with every={opts.every}")
    frames = batches[0]
    frames = FrameBatch(**{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in _fields(frames).items()})

    # Copy bandwidth, then the letterbox against it.
    blob = torch.empty(256 << 20, dtype=torch.uint8, device=device)
    t = _timed(lambda: blob.clone(), device, opts.repeats)
    copy = res.add("copy", "clone of 256 MiB", 2 * blob.numel() / 1e9, t, "GB/s")
    if on_row:
        on_row(copy)
    del blob
    det = get_detector(DetectorOptions().name, device)
    rois = det.letterbox_rois(len(frames), frames.height, frames.width)
    box = roi_resample(frames, rois, det.input_size, "rgb", det.mean, det.std)
    t = _timed(lambda: roi_resample(frames, rois, det.input_size, "rgb", det.mean, det.std), device, opts.repeats)
    gb = _bytes_moved(frames, box) / 1e9
    add("roi_resample", f"letterbox {frames.width}x{frames.height} -> {det.input_size[1]}x{det.input_size[0]}, "
        f"{len(frames)} frames", gb, t, "GB/s", frames_per_s=len(frames) / t, of_copy=(gb / t) / copy["rate"])

    # Detector, then the classifiers on the faces it found (repeated up to the batch size).
    dopts = DetectorOptions()
    t = _timed(lambda: det.detect(box, (frames.height, frames.width), dopts), device, opts.repeats)
    add("detector", f"{dopts.name}, batch {len(frames)}", len(frames), t, "frames/s")
    faces = detect_faces(frames, dopts)
    for spec in opts.models:
        model = load_model(spec, device)
        crops1 = make_crops(frames, faces, model.cards[0].crop_spec) if len(faces) else None
        if crops1 is None:
            c = model.cards[0]
            crops1 = torch.rand((1, c.channels, *c.input_size), device=device)
        for engine in opts.engines:
            from .engines import attach_engine

            # The engine as a scan runs it (torch on CUDA: fp16, channels_last, CUDA graphs as
            # the default profile says), not the plain module.
            run_model = attach_engine(model, engine)
            for bs in opts.batch_sizes:
                x = crops1.repeat((bs + len(crops1) - 1) // len(crops1), 1, 1, 1)[:bs].contiguous()
                t = _timed(lambda: run_model.predict(x), device, opts.repeats)
                add("classifier", f"{spec}, {engine}, batch {bs}", bs, t, "crops/s")

    # The whole scan, then the reference method.
    out = Path(tempfile.mkdtemp(prefix="exe-stream-bench-"))
    try:
        sopts = ScanOptions(sampling=sampling, models=opts.models[:1], device=device.type,
                            decoder=decoder_name, resume=False)
        t0 = time.perf_counter()
        scan([film], out, sopts)
        t = time.perf_counter() - t0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    add("scan", f"exe-stream scan, every {opts.every}", info.duration_seconds, t, "x realtime")
    if opts.reference:
        t, n_faces = _reference(film, opts, device)
        add("reference", f"every frame read + 1 face at a time ({n_faces} faces)", info.duration_seconds, t,
            "x realtime")
    return res


def _fields(obj: Any) -> dict[str, Any]:
    """A dataclass's fields as a dict without deep-copying tensors."""
    return {f: getattr(obj, f) for f in obj.__dataclass_fields__}


def _reference(film: Path, opts: BenchOptions, device: torch.device) -> tuple[float, int]:
    """The reference study's method: every frame decoded and converted to BGR, the sampled ones
    searched for faces, each face classified on its own. Returns (seconds, faces)."""
    import numpy as np

    model = load_model(opts.models[0], device)
    spec = model.cards[0].crop_spec
    dopts = DetectorOptions()
    try:
        import cv2
    except ImportError:
        cv2 = None
    t0 = time.perf_counter()
    n_faces = 0
    index = 0
    if cv2 is not None:
        cap = cv2.VideoCapture(str(film))
        frames_iter = iter(lambda: cap.read(), (False, None))
        reader = ((ok, f) for ok, f in frames_iter)
    else:
        import av

        container = av.open(str(film))
        reader = ((True, fr.to_ndarray(format="bgr24")) for fr in container.decode(video=0))
    for ok, bgr in reader:
        if not ok:
            break
        if index % opts.every == 0:
            rgb = torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).to(device)
            img = rgb.permute(2, 0, 1).unsqueeze(0).float() / 255.0
            from .detect import detect_faces_rgb
            from .roi import resample

            found = detect_faces_rgb(img, dopts)
            rois = face_rois(found, (img.shape[2], img.shape[3]), spec.crop_margin)
            for r in rois:  # one face at a time
                crop = resample(img, r[None].to(device), spec.out_hw, spec.mode, spec.mean, spec.std)
                model.predict(crop)
                n_faces += 1
        index += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, n_faces


def format_rows(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Table cells: stage, what, rate with its unit, seconds, extra facts."""
    cells = []
    for r in rows:
        extra = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in r.items() if k not in ("stage", "what", "items", "seconds", "rate", "unit"))
        cells.append([r["stage"], r["what"], f"{r['rate']:.4g} {r['unit']}", f"{r['seconds']:.4g}", extra])
    return cells
