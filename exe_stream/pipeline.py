"""``scan``: films in, Arrow timelines out. Decode once, detect once, classify with every model."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import gc
import hashlib
import json
import logging
import os
import queue
import threading
import time
import traceback
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

import numpy as np
import pyarrow as pa
import torch

from .options import check_choice, check_range
from . import __version__
from .classify import classify_faces
from .decode import find_videos, get_decoder
from .detect import DetectorOptions, detect_faces
from .engines import (
    COMPONENT_OF_ENGINE, EngineError, EngineProfile, attach_engine, engine_key, load_profile, resolve_engine,
)
from . import failsafe
from .errors import DecodeError, DiskFullError, UnsupportedByBackend
from .models import EmotionModel, load_model, resolve_device
from .sampling import PickedFrames, SamplingOptions
from . import shots
from .shots import ShotOptions
from .shards import (
    FRAMES_SCHEMA, SCHEMA_VERSION, Manifest, declare_schema, done_shards_exist, faces_path, faces_schema,
    faces_table, fingerprint, frames_path, frames_table, remove_film_shards, shard_metadata, write_table,
)
from .embeddings import embeddings_path, remove_embeddings, write_embeddings
from .identity import (
    CAST_FIELDS, CHARACTER_FIELDS, Cast, CastFiles, characters, embed_cast, embed_faces, load_cast, name_characters,
    read_cast,
)
from .tracks import TRACK_FIELDS, TrackingRows, split_tracking, tracking_frames
from .tracks import track_ids as link_tracks
from .types import FaceBatch, FrameBatch

log = logging.getLogger(__name__)

Status = Literal["done", "partial", "failed", "skipped"]


def _added(**default: Any) -> Any:
    """A ScanOptions field added after scans were written with the fields before it: in the
    resume key only when it is not at its default (``default=`` or ``default_factory=``), so a
    scan without the new option keeps the key, and writes the shards, it did before."""
    return field(**default, metadata={"added": True})


def _default(f: Any) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


def _runtime(default: Any) -> Any:
    """A ScanOptions field that changes how a scan runs but never what it writes: the one kind
    of field left out of the resume key (``_options_key``). Every other field is in the key."""
    return field(default=default, metadata={"changes_output": False})


@dataclass(frozen=True)
class ScanOptions:
    """How to scan: plain values, so the options travel to Ray workers as they are.

    Every field is part of each film's resume key (``_options_key``) unless it is declared with
    ``_runtime(...)`` (changes how the scan runs, never what it writes).
    """

    # Which frames are sampled (every N frames or every S seconds; exact or keyframe).
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    # Face detector and its thresholds.
    detector: DetectorOptions = field(default_factory=DetectorOptions)
    # Emotion models: built-in names, model directories, or "ens:a+b" ensembles.
    models: tuple[str, ...] = ("fer2013-minixception",)
    # Where detection and classification run; "auto" picks CUDA when available. Not in the key:
    # fp32 torch agrees on CPU and CUDA to float tolerance, and the engine's key carries the
    # device where the engine makes it matter (reduced precision, TensorRT plans).
    device: Literal["auto", "cpu", "cuda"] = _runtime("auto")
    # Decoder backend; "auto" picks PyAV on the CPU path, and NVDEC on CUDA where PyNvVideoCodec
    # loads (else PyAV). An accelerated decoder never fails a film (exe_stream.failsafe).
    decoder: str = "auto"
    # Inference engine: torch, onnxruntime or tensorrt (exe_stream.engines); "auto" is torch on
    # the CPU, and on CUDA tensorrt when it is installed, else torch.
    engine: str = "auto"
    # Engine build profile (precision, batch buckets/ranges): a name in engines/ or a TOML path.
    engine_profile: str = "default"
    # Sampled frames per batch through detection and classification.
    batch_size: int = _runtime(16)
    # Redo nothing that is already done with the same film, options and models.
    resume: bool = _runtime(True)
    # Also store each face's penultimate-layer embedding per model (OUT/embeddings/, see
    # exe_stream.embeddings); the v1 shards are unchanged.
    embeddings: bool = False
    # Films decoded at once, each by its own decoder thread, their detection and classification
    # taking turns (see _FilmsAtOnce); 0 = automatic: one per NVDEC engine with the nvdec
    # decoder on CUDA, else 1. Does not change what is written.
    films_at_once: int = _runtime(0)
    # Shot boundaries (exe_stream.shots): off by default; when on, ``frames`` rows get a
    # shot_index column and OUT/shots/ lists each film's shots.
    shots: ShotOptions = _added(default_factory=ShotOptions)
    # Characters (exe_stream.identity): an identity embedding per face (dlib's ResNet encoder),
    # face tracks clustered into characters per film; ``faces`` rows get character_id. Needs
    # shots (tracks are per shot).
    characters: bool = _added(default=False)
    # A cast CSV (name, photo): characters are named after the nearest reference photo
    # (``faces.character_name``); needs ``characters``. In the key as its rows' and photos' hash.
    cast: str | None = _added(default=None)

    def __post_init__(self) -> None:
        if (self.shots.track_every or self.shots.skip_cuts) and self.sampling.mode != "exact":
            raise ValueError("--track-every and --skip-cuts need exact sampling, not "
                             f"--sampling {self.sampling.mode}")
        if self.cast is not None and not self.characters:
            raise ValueError("--cast names characters: it needs --characters (and --shots)")
        if self.characters and not self.shots.enabled:
            raise ValueError("--characters clusters face tracks, which need --shots transnet or --shots content")
        check_range("films_at_once", self.films_at_once, lo=0, integer=True)
        check_choice("device", self.device, ("auto", "cpu", "cuda"))
        check_choice("engine", self.engine, ("auto", "torch", "onnxruntime", "tensorrt"))
        check_range("batch_size", self.batch_size, lo=1, integer=True)
        if not self.models:
            raise ValueError("at least one model is needed")


@dataclass
class FilmResult:
    """What happened to one film in a scan."""

    film_id: str
    path: str
    status: Status
    reason: str = ""
    frames: int = 0
    faces: int = 0
    seconds: float = 0.0
    media_seconds: float = 0.0


@dataclass
class ScanResult:
    """The outcome of a scan: one FilmResult per film, in input order."""

    out: Path
    films: list[FilmResult]

    @property
    def ok(self) -> bool:
        return all(f.status in ("done", "skipped") for f in self.films)


def _resolve_backends(opts: ScanOptions, device: torch.device | None = None) -> str:
    """The decoder a scan uses: ``opts.decoder``, or for "auto" NVDEC on CUDA where
    PyNvVideoCodec loads (not merely where it is installed: its import can fail for want of
    the driver's video libraries), else PyAV. NVDEC is then checked against PyAV on its first
    batch and gives way to it on any failure (exe_stream.failsafe), so it cannot fail a film."""
    decoder = opts.decoder
    if decoder == "auto":
        from .decode.nvdec import nvdec_usable

        usable, why = nvdec_usable(device) if device is not None else (False, "no device")
        if not usable and device is not None and device.type == "cuda":
            log.info("--decoder auto: PyAV, not NVDEC (%s)", why)
        decoder = "nvdec" if usable else "pyav"
    return decoder


def _films_at_once(opts: ScanOptions, decoder: str, device: torch.device, films: Sequence[Path]) -> int:
    """How many films decode at once: ``opts.films_at_once``, or automatically one per NVDEC
    engine (one decode session uses one engine) with nvdec on CUDA, else 1."""
    if opts.films_at_once:
        return opts.films_at_once
    if decoder == "nvdec" and device.type == "cuda" and films:
        from .decode.nvdec import nvdec_engines

        return nvdec_engines(films[0], device.index or 0)
    return 1


def _resolve_engine(opts: ScanOptions, device: torch.device) -> tuple[str, EngineProfile]:
    """The engine every model runs in, and its build profile. A missing backend (TensorRT not
    installed, no CUDA) fails here, before any film. Embeddings are read from the torch
    networks' layers, so a scan with embeddings runs the plain torch networks."""
    profile = load_profile(opts.engine_profile)
    if opts.embeddings:
        if opts.engine not in ("auto", "torch"):
            raise EngineError(
                f"--embeddings reads the torch networks' layers and needs --engine torch (or auto), "
                f"got {opts.engine!r}"
            )
        return "torch", profile
    return resolve_engine(opts.engine, device), profile


def _attach_engines(models: list[EmotionModel], engine: str, profile: EngineProfile, auto: bool,
                    device: torch.device) -> tuple[list[EmotionModel], str, EngineProfile]:
    """The models with engine ``engine`` attached, the engine and the profile that run. An
    accelerated engine that cannot be built here (TensorRT failing to build its plan, a CUDA
    graph failing to capture, ...) is switched off with one warning and the plain torch model
    runs instead, when the engine is "auto" or "torch"; an engine asked for by name
    (onnxruntime, tensorrt) fails the scan before any film (EngineError)."""
    try:
        return [attach_engine(m, engine, profile) for m in models], engine, profile
    except Exception as e:
        if not (auto or engine == "torch") or (engine == "torch" and device.type != "cuda"):
            raise  # asked for by name, or plain torch on the CPU: nothing to fall back to
        component = COMPONENT_OF_ENGINE.get(engine, COMPONENT_OF_ENGINE["torch"])
        failsafe.current().switch_off(component, f"cannot be built here: {type(e).__name__}: {e}")
        plain = dataclasses.replace(profile, precision="fp32", channels_last=False, cuda_graphs=False)
        return [attach_engine(m, "torch", plain) for m in models], "torch", plain


def _options_key(opts: ScanOptions, models: Sequence[EmotionModel], decoder: str,
                 engine: dict[str, Any] | None = None, cast_source: str | None = None) -> str:
    """Hash of everything that changes a film's shards, built from ``opts``' fields: each field
    not declared ``_runtime`` is in the key, so a new option is in it unless said otherwise
    (an ``_added`` field only when it is not at its default, so earlier scans keep their key).
    Fields named by what they resolve to enter as that: ``models`` as each model's content
    hash, ``decoder`` as the decoder that runs, ``engine`` and ``engine_profile`` as
    ``engines.engine_key`` (None for fp32 torch), ``cast`` as its rows' and photos' hash."""
    resolved: dict[str, Any] = {
        "models": {m.model_id: m.content_hash for m in models},
        "decoder": decoder,
        "engine": engine,
        "engine_profile": None,  # inside the engine's key
        "cast": cast_source,
    }
    key: dict[str, Any] = {"schema": SCHEMA_VERSION}
    for f in fields(opts):
        if not f.metadata.get("changes_output", True):
            continue
        if f.metadata.get("added") and getattr(opts, f.name) == _default(f):
            continue
        value = resolved[f.name] if f.name in resolved else getattr(opts, f.name)
        key[f.name] = asdict(value) if is_dataclass(value) else value
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _prefetch(it: Iterator[FrameBatch], depth: int = 2) -> Iterator[FrameBatch]:
    """Run a decoder iterator in a thread so decoding overlaps detection and classification.

    Exceptions from the decoder are re-raised in the consumer at the point they happened.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def work() -> None:
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(end)
        except BaseException as e:  # re-raised in the consumer
            q.put(e)

    t = threading.Thread(target=work, name="exe-stream-decode", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():  # drain so the worker can finish
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        close = getattr(it, "close", None)
        if close is not None:
            close()


class _FilmRows:
    """Accumulates the rows of one film's shards (small: boxes and probabilities only)."""

    def __init__(self, models: Sequence[EmotionModel]) -> None:
        self.frames: dict[str, list] = {"frame_index": [], "pts_seconds": [], "is_keyframe": [], "n_faces": []}
        self.faces: dict[str, list] = {k: [] for k in (
            "frame_index", "pts_seconds", "face_index", "x0", "y0", "x1", "y1", "det_score", "face_area_rel")}
        self.probs: dict[str, list[np.ndarray]] = {m.model_id: [] for m in models}
        self.embeddings: dict[str, list[np.ndarray]] = {m.model_id: [] for m in models}

    def add(self, frames: FrameBatch, faces: FaceBatch, probs: dict[str, torch.Tensor],
            embeddings: dict[str, torch.Tensor] | None = None) -> None:
        fi = frames.frame_index.cpu().numpy()
        pts = frames.pts_seconds.cpu().numpy()
        rows = faces.frame_row.numpy()
        self.frames["frame_index"].append(fi)
        self.frames["pts_seconds"].append(pts)
        self.frames["is_keyframe"].append(frames.is_keyframe.cpu().numpy())
        self.frames["n_faces"].append(np.bincount(rows, minlength=len(frames)).astype(np.int16))
        boxes = faces.boxes.numpy()
        clipped = np.clip(boxes, 0.0, 1.0)
        area = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
        for name, values in (
            ("frame_index", fi[rows]), ("pts_seconds", pts[rows]),
            ("face_index", faces.face_index.numpy()),
            ("x0", boxes[:, 0]), ("y0", boxes[:, 1]), ("x1", boxes[:, 2]), ("y1", boxes[:, 3]),
            ("det_score", faces.scores.numpy()), ("face_area_rel", area.astype(np.float32)),
        ):
            self.faces[name].append(values)
        for model_id, p in probs.items():
            self.probs[model_id].append(p.detach().to("cpu", torch.float32).numpy())
        for model_id, e in (embeddings or {}).items():
            if len(e):  # a batch without faces has no embedding width
                self.embeddings[model_id].append(e.numpy())

    def arrays(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        def cat(parts, dtype):
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

        frames = {
            "frame_index": cat(self.frames["frame_index"], np.int64),
            "pts_seconds": cat(self.frames["pts_seconds"], np.float64),
            "is_keyframe": cat(self.frames["is_keyframe"], bool),
            "n_faces": cat(self.frames["n_faces"], np.int16),
        }
        faces = {
            "frame_index": cat(self.faces["frame_index"], np.int64),
            "pts_seconds": cat(self.faces["pts_seconds"], np.float64),
            "face_index": cat(self.faces["face_index"], np.int16),
            **{k: cat(self.faces[k], np.float32) for k in ("x0", "y0", "x1", "y1", "det_score", "face_area_rel")},
        }
        return frames, faces


@dataclass
class _FilmRun:
    """One decoding of a film through detection and classification (``_run_film``)."""

    result: FilmResult
    rows: _FilmRows
    timings: dict[str, float]
    info: dict[str, Any]
    # The exception that ended it early (None when every sampled frame was scanned).
    error: BaseException | None = None
    # The film's shots (scans with --shots), faces on tracking-only frames (--track-every) and
    # identity embeddings of the sampled faces, batch by batch (--characters).
    shots: shots.Shots | None = None
    tracking: TrackingRows | None = None
    identity: list[np.ndarray] | None = None


def _run_film(
    path: Path, film_id: str, opts: ScanOptions, models: Sequence[EmotionModel], decoder_name: str,
    device: torch.device, on_frames: Callable[[int, int], None] | None, gate: _InferenceGate | None,
) -> _FilmRun:
    run = _FilmRun(FilmResult(film_id=film_id, path=str(path), status="done"), _FilmRows(models),
                   {"decode_wait_s": 0.0, "detect_s": 0.0, "classify_s": 0.0}, {},
                   identity=[] if opts.characters else None)
    result, timings = run.result, run.timings
    sampled: set[int] = set()
    try:
        decoder = get_decoder(decoder_name)  # in here: a GPU decoder failing to start fails this run only
        # 1. Probe: a demux pass that learns frame count, size, rotation and colour.
        info = decoder.probe(path)
        run.info = {k: v for k, v in asdict(info).items() if k != "path"}
        result.media_seconds = info.duration_seconds
        expected = _expected_samples(info.num_frames, info.duration_seconds, opts.sampling)
        sampling = opts.sampling
        if opts.shots.enabled:  # 1b. Shots: every frame, small, in a decode pass of its own;
            t = time.perf_counter()  # shot-aware sampling then picks the frames to decode.
            every: Iterator[FrameBatch] | None = None
            if decoder_name != "pyav" and opts.shots.method != "codec":
                # A GPU decoder decodes the shots pass too (checked like the sampled pass: a
                # mismatch or an error fails this run and the film is decoded with PyAV).
                all_frames = SamplingOptions(every=1, mode="exact")
                every = _checked_decoder(decoder.frames(path, all_frames, opts.batch_size), decoder_name, path,
                                         dataclasses.replace(opts, sampling=all_frames))
            run.shots = shots.detect_shots(path, opts.shots, device, frames=every)
            sampling = shots.sampled_frames(run.shots, opts.shots, sampling)
            timings["shots_s"] = time.perf_counter() - t
            if sampling is not opts.sampling:
                expected = len(sampling.indices)
            if opts.shots.track_every:  # 1c. Frames decoded for tracking only, within shots.
                sampled = set(shots.explicit_frames(run.shots, sampling))
                extra = tracking_frames(run.shots.first, run.shots.last, opts.shots.track_every, sorted(sampled))
                sampling, expected = PickedFrames(indices=tuple(sorted(sampled.union(extra)))), len(sampled)
                run.tracking = TrackingRows([], [])
        frames_it = decoder.frames(path, sampling, opts.batch_size)
        if decoder_name != "pyav":  # an accelerated decoder checks its first batch against PyAV
            frames_it = _checked_decoder(frames_it, decoder_name, path, dataclasses.replace(opts, sampling=sampling))
        batches = _prefetch(frames_it)
        if gate is not None:  # films at once: this film's detection waits for its turn
            batches = gate.wrap(batches)
        t = time.perf_counter()
        for frames in batches:
            timings["decode_wait_s"] += time.perf_counter() - t
            frames = _to_device(frames, device)
            # 2. Detect faces on the whole batch.
            t = time.perf_counter()
            faces = detect_faces(frames, opts.detector)
            timings["detect_s"] += time.perf_counter() - t
            # 3. Classify every face with every model from the same crops.
            t = time.perf_counter()
            emb: dict[str, torch.Tensor] | None = {} if opts.embeddings else None
            probs = classify_faces(frames, faces, models, embeddings=emb)
            timings["classify_s"] += time.perf_counter() - t
            if run.tracking is not None:  # 3b. Faces on tracking-only frames: kept for tracks only.
                frames, faces, probs, emb = split_tracking(frames, faces, probs, emb, sampled, run.tracking)
            if frames is not None:
                run.rows.add(frames, faces, probs, emb)
                result.frames += len(frames)
                if run.identity is not None:  # 3c. Identity embeddings of the sampled faces.
                    t = time.perf_counter()
                    run.identity.append(embed_faces(frames, faces, device))
                    timings["identity_s"] = timings.get("identity_s", 0.0) + time.perf_counter() - t
            if on_frames:
                on_frames(result.frames, max(expected, result.frames))
            t = time.perf_counter()
    except DecodeError as e:
        run.error = e
        result.status = "partial" if result.frames > 0 else "failed"
        result.reason = str(e)
    except Exception as e:  # one broken film never stops the scan
        log.debug("scan of %s failed:\n%s", path, traceback.format_exc())
        run.error = e
        result.status = "failed"
        result.reason = f"{path}: {type(e).__name__}: {e}"
    return run


# Largest mean absolute difference (code values) between an accelerated decoder's first batch
# and PyAV's, luma and chroma: NVDEC's 8-bit output is bit-exact (conforming decoders agree);
# 10-bit films are reduced to 8 bits by truncation where PyAV rounds (<= 1 level); DALI's
# chroma passes through its own upsampling (up to 8 levels at sharp edges, ~0.3 on average).
DECODER_TOLERANCE = {"y": 1.0, "uv": 2.0}


def _decoder_difference(got: FrameBatch, want: FrameBatch) -> float:
    """Largest of the mean absolute plane differences of two batches (0..255, luma and chroma
    each divided by their tolerance, so <= 1 passes); Mismatch when frames, timestamps,
    keyframe flags, sizes or colour format differ."""
    n = min(len(got), len(want))
    if not torch.equal(got.frame_index[:n].cpu(), want.frame_index[:n].cpu()):
        raise failsafe.Mismatch(f"frames {got.frame_index[:n].tolist()} instead of {want.frame_index[:n].tolist()}")
    if not torch.allclose(got.pts_seconds[:n].cpu(), want.pts_seconds[:n].cpu(), atol=1e-6, rtol=0):
        raise failsafe.Mismatch("timestamps differ")
    if not torch.equal(got.is_keyframe[:n].cpu(), want.is_keyframe[:n].cpu()):
        raise failsafe.Mismatch("keyframe flags differ")
    if (got.matrix, got.full_range) != (want.matrix, want.full_range):
        raise failsafe.Mismatch(f"colour {got.matrix}/{'full' if got.full_range else 'limited'} instead of "
                                f"{want.matrix}/{'full' if want.full_range else 'limited'}")
    worst = 0.0
    for name, tol in (("y", DECODER_TOLERANCE["y"]), ("u", DECODER_TOLERANCE["uv"]), ("v", DECODER_TOLERANCE["uv"])):
        a, b = getattr(got, name)[:n], getattr(want, name)[:n]
        if tuple(a.shape) != tuple(b.shape):
            raise failsafe.Mismatch(f"plane {name} is {tuple(a.shape)} instead of {tuple(b.shape)}")
        diff = (a.to("cpu", torch.float32) - b.to("cpu", torch.float32)).abs().mean()
        worst = max(worst, float(diff) / tol)
    return worst


def _checked_decoder(batches: Iterator[FrameBatch], name: str, path: Path,
                     opts: ScanOptions) -> Iterator[FrameBatch]:
    """The accelerated decoder ``name``'s batches; while it is unchecked in this scan, its first
    batch is compared with PyAV's (``_decoder_difference``): verified when they agree, else
    ``failsafe.Mismatch`` (the scan then decodes the film with PyAV and switches ``name`` off)."""
    fs = failsafe.current()
    first = True
    for batch in batches:
        if first and fs.status(name) == "unchecked":
            reference = next(iter(get_decoder("pyav").frames(path, opts.sampling, len(batch))), None)
            if reference is None:
                raise failsafe.Mismatch("it yielded frames where PyAV yields none")
            try:
                diff = _decoder_difference(batch, reference)
            except failsafe.Mismatch as e:
                raise failsafe.Mismatch(f"its first batch differs from PyAV's: {e}") from e
            if not diff <= 1.0:
                raise failsafe.Mismatch(
                    f"its first batch differs from PyAV's beyond decoder rounding (mean |difference| "
                    f"{diff:.3g} x the tolerance of {DECODER_TOLERANCE['y']} levels luma / "
                    f"{DECODER_TOLERANCE['uv']} chroma)")
            fs.verified(name, diff)
        first = False
        yield batch


def _scan_film(
    path: Path, film_id: str, out: Path, opts: ScanOptions, models: Sequence[EmotionModel],
    decoder_name: str, device: torch.device, key: str, on_frames: Callable[[int, int], None] | None,
    gate: _InferenceGate | None = None, cast: Cast | None = None,
) -> tuple[FilmResult, dict[str, Any]]:
    start = time.perf_counter()
    fs = failsafe.current()
    with failsafe.film_paths() as paths:
        ran = decoder_name
        if ran != "pyav" and fs.status(ran) == "off":
            ran = "pyav"
            paths[decoder_name] = f"off: {fs.state(decoder_name).reason}"
        run = _run_film(path, film_id, opts, models, ran, device, on_frames, gate)
        if ran != "pyav" and run.error is not None:
            # An accelerated decoder never fails a film: PyAV decodes it again. The decoder is
            # switched off when it was at fault (it mismatched, or PyAV reads what it did not);
            # a film it cannot read (UnsupportedByBackend), or one PyAV cannot read either,
            # leaves it on.
            why = run.result.reason.removeprefix(f"{path}: ")
            log.debug("%s: decoder %s failed (%s); decoding with pyav", path, ran, why)
            redo = _run_film(path, film_id, opts, models, "pyav", device, on_frames, gate)
            unsupported = isinstance(run.error, UnsupportedByBackend)
            if isinstance(run.error, failsafe.Mismatch) or (redo.error is None and not unsupported):
                fs.switch_off(ran, why)
                paths[ran] = f"off: {why}"
            else:
                paths[ran] = f"not for this film: {why}"
            run, ran = redo, "pyav"
        elif ran != "pyav":
            paths.setdefault(ran, "used")
    result, rows = run.result, run.rows
    if result.frames > 0 or result.status == "done":
        # 4. Write the shards: frames (every sampled frame) and faces per model.
        _write_film(out, film_id, rows, models, opts, ran, key, run.shots, run.tracking, run.identity, cast)
    else:
        # Nothing decoded: no shards, and none left over from an earlier scan of this id.
        remove_film_shards(out, film_id)
        remove_embeddings(out, film_id)
        shots.remove_shots(out, film_id)
    # The film's last reference cycles (e.g. the probe frame PyAV ties to its side data) go
    # now, with their decoder buffers, and glibc gives the freed pages back.
    gc.collect()
    _malloc_trim()
    faces_per_model = {m: sum(len(p) for p in ps) for m, ps in rows.probs.items()}
    result.faces = max(faces_per_model.values(), default=0)
    result.seconds = time.perf_counter() - start
    entry = {
        "path": str(Path(path).resolve()),
        "status": result.status,
        "reason": result.reason,
        "frames_sampled": result.frames,
        "faces": result.faces,
        "options_key": key,
        "models": {m.model_id: m.content_hash for m in models},
        "timings": {**{k: round(v, 4) for k, v in run.timings.items()}, "total_s": round(result.seconds, 4)},
        "info": run.info,
        # Which path the film actually ran: its decoder, and each accelerated component it
        # used ("used"), or whose verified path ran in its place ("off: why").
        "paths": {"decoder": ran, **dict(sorted(paths.items()))},
    }
    return result, entry


class _InferenceGate:
    """Detection and classification of films scanned at once take turns through this gate.

    ``wrap`` turns a film's batch iterator into one that holds the gate from the moment a batch
    is handed out until the next one is asked for: the body of the film's loop (detect,
    classify, collect rows) runs for one film at a time, films take it as their batches arrive
    (a plain lock: not strictly first come, first served), and no film waits for its decoder
    while holding it. Decoding (each film's own decoder thread) goes on meanwhile, so decoding
    overlaps inference.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: tuple[int, object] | None = None  # (thread, wrapped iterator) holding it
        self._owner_lock = threading.Lock()  # guards _owner against a double release

    def _release(self, holder: tuple[int, object] | None = None) -> None:
        with self._owner_lock:
            if self._owner is not None and (holder is None or self._owner == holder):
                self._owner = None
                self._lock.release()

    def release_owned(self) -> None:
        """Release the gate if the calling thread holds it (a film whose loop body raised)."""
        owner = self._owner
        if owner is not None and owner[0] == threading.get_ident():
            self._release(owner)

    def wrap(self, batches: Iterator[FrameBatch]) -> Iterator[FrameBatch]:
        token = object()
        holder: tuple[int, object] | None = None
        try:
            for frames in batches:
                self._lock.acquire()
                holder = (threading.get_ident(), token)
                self._owner = holder
                yield frames
                self._release(holder)
        finally:
            if holder is not None:
                self._release(holder)  # a no-op unless this film still holds the gate
            close = getattr(batches, "close", None)
            if close is not None:
                close()


class _FilmsAtOnce:
    """Runs films' scans ``n`` at a time, each in its own thread (decoding in the film's
    decoder thread, inference through a shared ``_InferenceGate``), and hands each finished
    film to its ``on_done`` in the calling thread, so the manifest and the callbacks stay in
    one thread. With ``n`` = 1 a film runs in the calling thread, as a plain sequential scan.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.gate = _InferenceGate() if n > 1 else None
        self._done: queue.Queue = queue.Queue()
        self._running = 0

    def wait_for_slot(self) -> None:
        """Hand finished films over until fewer than ``n`` are running."""
        while self._running >= self.n:
            self._collect()

    def start(self, work: Callable[[_InferenceGate | None], Any], on_done: Callable[[Any], None]) -> None:
        """Run ``work(gate)`` (now, or in a thread when films run at once); ``on_done`` gets its
        result in this thread. An exception ``work`` lets through is raised here."""
        if self.gate is None:
            on_done(work(None))
            return
        gate = self.gate

        def run() -> None:
            try:
                out: Any = work(gate)
            except BaseException as e:  # re-raised in the scanning thread
                out = e
            finally:
                gate.release_owned()
            self._done.put((on_done, out))

        self._running += 1
        threading.Thread(target=run, name="exe-stream-film", daemon=True).start()

    def _collect(self) -> None:
        on_done, out = self._done.get()
        self._running -= 1
        if isinstance(out, BaseException):
            raise out
        on_done(out)

    def finish(self) -> None:
        """Hand over every film still running."""
        while self._running:
            self._collect()


def _load_malloc_trim() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)`` where it exists, else a no-op.

    A film's decoders free their frame pools when they close, but glibc keeps the pages;
    trimming after each film returns them, so a library scan does not carry one film's
    decoding memory into the next.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0) and None


_malloc_trim = _load_malloc_trim()


def _expected_samples(num_frames: int, duration: float, s: SamplingOptions) -> int:
    if s.every is not None:
        return max(1, -(-num_frames // s.every))
    return max(1, int(duration // s.interval) + 1)


def _to_device(frames: FrameBatch, device: torch.device) -> FrameBatch:
    if frames.device == device:
        return frames
    return FrameBatch(
        y=frames.y.to(device, non_blocking=True), u=frames.u.to(device, non_blocking=True),
        v=frames.v.to(device, non_blocking=True), frame_index=frames.frame_index,
        pts_seconds=frames.pts_seconds, is_keyframe=frames.is_keyframe,
        matrix=frames.matrix, full_range=frames.full_range,
    )


def _write_film(out: Path, film_id: str, rows: _FilmRows, models: Sequence[EmotionModel],
                opts: ScanOptions, decoder_name: str, key: str, film_shots: shots.Shots | None = None,
                tracking: TrackingRows | None = None, identity: list[np.ndarray] | None = None,
                cast: Cast | None = None) -> None:
    frames, faces = rows.arrays()
    common = dict(
        detector=asdict(opts.detector), sampling=asdict(opts.sampling),
        decoder=decoder_name, options_key=key,
        **({"shots": asdict(opts.shots)} if opts.shots.enabled else {}),
    )
    frames_shard = frames_table(film_id, **frames, metadata=shard_metadata(**common))
    shots.remove_shots(out, film_id)
    track_ids = None
    if film_shots is not None:  # shots on: faces linked into tracks within each shot
        boxes = np.stack([faces[k] for k in ("x0", "y0", "x1", "y1")], axis=1)
        track_ids = link_tracks(faces["frame_index"], boxes, film_shots.shot_of, tracking)
    character_ids = None
    character_names = None
    if track_ids is not None and identity is not None:  # tracks clustered into characters
        emb = np.concatenate(identity) if identity else np.zeros((0, 128), np.float32)
        character_ids = characters(track_ids, emb)
        if opts.cast is not None:  # names from the cast photos (embedded once per scan)
            character_names = name_characters(character_ids, emb, cast if cast is not None else load_cast(opts.cast))
    if film_shots is not None:  # shots on: a shot_index per sampled frame, and the shots shard
        frames_shard = shots.with_shot_index(frames_shard, film_shots)
        write_table(shots.shots_path(out, film_id),
                    shots.shots_table(film_id, film_shots, shard_metadata(**common)))
    write_table(frames_path(out, film_id), frames_shard)
    for m in models:
        parts = rows.probs[m.model_id]
        probs = np.concatenate(parts) if parts else np.zeros((0, len(m.labels)), np.float32)
        meta = shard_metadata(model_id=m.model_id, model_hash=m.content_hash, labels=list(m.labels),
                              engine=m.engine, **common)
        table = faces_table(film_id, m.model_id, m.labels, faces, probs.astype(np.float32), meta)
        if track_ids is not None:
            table = table.append_column(pa.field("track_id", pa.int32()), pa.array(track_ids))
        if character_ids is not None:
            table = table.append_column(pa.field("character_id", pa.int32()), pa.array(character_ids))
        if character_names is not None:
            table = table.append_column(pa.field("character_name", pa.string()), pa.array(character_names, pa.string()))
        write_table(faces_path(out, film_id, m.model_id), table)
    # 5. Embeddings (scan --embeddings), in a dataset of their own; stale ones go otherwise.
    remove_embeddings(out, film_id)
    if opts.embeddings:
        for m in models:
            parts = rows.embeddings[m.model_id]
            emb = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
            write_embeddings(out, film_id, m, faces["frame_index"], faces["face_index"], emb)


def scan(
    paths: Iterable[str | Path],
    out: str | Path,
    opts: ScanOptions = ScanOptions(),
    metadata: dict[str, dict[str, Any]] | None = None,
    on_film_start: Callable[[str, Path, int], None] | None = None,
    on_frames: Callable[[int, int], None] | None = None,
    on_film_end: Callable[[FilmResult], None] | None = None,
    on_film_frames: Callable[[str, int, int], None] | None = None,
) -> ScanResult:
    """Scan films (files or directories searched recursively) into shards under ``out``.

    Films whose fingerprint, options and model hashes match a ``done`` entry of the existing
    manifest are skipped when ``opts.resume``; every other film is (re)scanned. A film that
    fails is recorded as ``failed`` (or ``partial`` with what could be decoded) and the scan
    goes on. ``metadata`` maps film ids or file names to extra columns (title, genre, ...)
    stored in the manifest. The callbacks drive progress display: ``on_film_start`` and
    ``on_film_end`` run in the calling thread; ``on_frames(done, total)`` and
    ``on_film_frames(film_id, done, total)`` report a film's progress, from its own thread
    when ``opts.films_at_once`` > 1 (one call at a time).
    """
    out = Path(out)
    films = find_videos([Path(p) for p in paths])
    device = resolve_device(opts.device)
    with _cpu_threads(device, opts.sampling.mode), failsafe.session():
        return _scan(films, out, opts, device, metadata, on_film_start, on_frames, on_film_end,
                     on_film_frames)


@contextlib.contextmanager
def _cpu_threads(device: torch.device, mode: str) -> Iterator[None]:
    """On the CPU, decoding (FFmpeg threads) and inference (torch threads) share the cores:
    give torch half of them for the scan. Measured on 2 cores (5-minute 1080p film): torch's
    default of one thread per core competing with the decoder made detection 4x slower in
    exact sampling; in keyframe sampling (little decoding) two torch threads were not faster
    than one either when anything else ran on the machine (10-minute film: 3.6-4.6 s with one,
    4.2-6.1 s with two). ``mode`` is the sampling mode, kept for tuning per mode."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class FilmScanner:
    """One scan's setup, apart from its per-film work: resolves the decoder and engine, loads
    the models (in their engine) and computes the resume key once; calling it on a film scans
    that film, writes its shards and returns its manifest entry. The callable-class shape Ray's
    ``map_batches`` expects: the local scan and the Ray scan (``exe_stream.ray_scan``) both run
    films through this class, and neither it nor its workers touch the manifest; the caller (the
    driver) records the entries.
    """

    def __init__(self, opts: ScanOptions, device: str | torch.device | None = None,
                 cast: CastFiles | None = None) -> None:
        self.opts = opts
        # Where it runs: ``device``, else ``opts.device`` ("auto" picks CUDA when available).
        self.device = device if isinstance(device, torch.device) else resolve_device(device or opts.device)
        self.decoder = _resolve_backends(opts, self.device)
        get_decoder(self.decoder)  # unknown names fail before any work
        self.engine, self.profile = _resolve_engine(opts, self.device)
        models = [load_model(spec, self.device) for spec in opts.models]
        if not opts.embeddings:  # embeddings hook the plain torch networks (see _resolve_engine)
            models, self.engine, self.profile = _attach_engines(models, self.engine, self.profile,
                                                                opts.engine == "auto", self.device)
        self.models = models
        # A cast (--cast) is read, and its photos embedded, before any film: a bad file fails here.
        # ``cast``: the files of opts.cast as a driver read them, for workers that cannot see
        # them (scan --ray); the same content gives the same resume key.
        self.cast = embed_cast(cast if cast is not None else read_cast(opts.cast)) if opts.cast is not None else None
        self.key = _options_key(opts, models, self.decoder,
                                None if opts.embeddings else engine_key(self.engine, self.device, self.profile),
                                self.cast.source if self.cast is not None else None)

    def __call__(self, path: str | Path, film_id: str, out: str | Path,
                 on_frames: Callable[[int, int], None] | None = None,
                 gate: _InferenceGate | None = None) -> tuple[FilmResult, dict[str, Any]]:
        """Scan one film into ``out`` as ``film_id``: its result and its manifest entry (without
        the fingerprint and metadata, which the driver adds). Never raises for a bad film: a
        film that cannot be scanned comes back ``failed`` (or ``partial``) with its reason."""
        return _scan_film(Path(path), film_id, Path(out), self.opts, self.models, self.decoder,
                          self.device, self.key, on_frames, gate, self.cast)

    def scan_record(self, films: int) -> dict[str, Any]:
        """This scan's entry in the manifest's ``scans`` list."""
        return {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "exe_stream_version": __version__,
            "options": json.loads(json.dumps(_recorded_options(self.opts), default=str)), "options_key": self.key,
            "models": {m.model_id: {"hash": m.content_hash, "labels": list(m.labels)} for m in self.models},
            "device": str(self.device), "engine": self.engine, "engine_profile": self.profile.settings(),
            "films": films,
        }


def _open_output(out: Path, label_sets: Iterable[Sequence[str]], opts: ScanOptions | None = None) -> Manifest:
    """Make a scan's output ready for the shards of models with these label sets (and the
    columns and datasets ``opts``' shots and characters add); its manifest. An output written
    by an older schema is refused (a new directory is needed)."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.load(out)
    if manifest.version != SCHEMA_VERSION and manifest.films:
        raise ValueError(f"{out} holds a schema {manifest.version} scan (an older exe-stream); scan into a new "
                         f"directory (stats and report still read this one)")
    # The union schema of each dataset grows before files with new columns are written.
    declare_schema(out, "frames", FRAMES_SCHEMA)
    for dataset, schema in _added_schemas(opts):
        declare_schema(out, dataset, schema)
    for labels in label_sets:
        declare_schema(out, "faces", faces_schema(labels))
    return manifest


def _added_schemas(opts: ScanOptions | None) -> list[tuple[str, pa.Schema]]:
    """The (dataset, columns) that shots, tracks, characters and a cast add to a scan."""
    if opts is None or not opts.shots.enabled:
        return []
    added = [("frames", shots.FRAMES_SHOT_FIELDS), ("shots", shots.SHOTS_SCHEMA), ("faces", TRACK_FIELDS)]
    if opts.characters:
        added.append(("faces", CHARACTER_FIELDS))
    if opts.cast is not None:
        added.append(("faces", CAST_FIELDS))
    return added


def _is_done(prev: dict[str, Any], fp: str, keys: Iterable[str], opts: ScanOptions,
             shards_exist: Callable[[], bool]) -> bool:
    """Whether a film's previous manifest entry ``prev`` can stand (resume): ``done`` with the
    same fingerprint and one of the scan's option keys, and ``shards_exist()``."""
    return (opts.resume and prev.get("status") == "done" and prev.get("fingerprint") == fp
            and prev.get("options_key") in set(keys) and shards_exist())


def _local_shards_exist(out: Path, film_id: str, opts: ScanOptions, model_ids: Sequence[str]) -> bool:
    """Whether a film's shards (and embeddings and shots, when the scan stores them) are all
    under ``out``."""
    return done_shards_exist(out, film_id, model_ids) and (
        not opts.embeddings or all(embeddings_path(out, film_id, m).exists() for m in model_ids)) and (
        not opts.shots.enabled or shots.shots_path(out, film_id).exists())


def _finish_entry(entry: dict[str, Any], fp: str, res: FilmResult,
                  metadata: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """A worker's manifest entry completed by the driver: the fingerprint, and the film's row
    of ``--metadata`` (by film id or file name) when there is one."""
    entry["fingerprint"] = fp
    meta = (metadata or {}).get(res.film_id) or (metadata or {}).get(Path(res.path).name)
    if meta:
        entry["metadata"] = meta
    return entry


def _skipped(path: Path, film_id: str, prev: dict[str, Any]) -> FilmResult:
    return FilmResult(film_id, str(path), "skipped", "already scanned with the same options",
                      frames=prev.get("frames_sampled", 0), faces=prev.get("faces", 0))


def _fingerprint(path: Path) -> str:
    try:
        return fingerprint(path)
    except OSError as e:
        log.debug("cannot fingerprint %s: %s", path, e)
        return ""


def _scan(films, out, opts, device, metadata, on_film_start, on_frames, on_film_end,
          on_film_frames=None) -> ScanResult:
    scanner = FilmScanner(opts, device)
    manifest = _open_output(out, [m.labels for m in scanner.models], opts)
    manifest.scans.append(scanner.scan_record(len(films)))
    results: dict[int, FilmResult] = {}
    # Several films may decode at once (--films-at-once); each is recorded as it finishes.
    at_once = _FilmsAtOnce(_films_at_once(opts, scanner.decoder, scanner.device, films))

    def record(i: int, res: FilmResult, entry: dict[str, Any] | None, fp: str) -> None:
        if entry is not None:
            manifest.films[res.film_id] = _finish_entry(entry, fp, res, metadata)
            manifest.save()
        results[i] = res
        if on_film_end:
            on_film_end(res)

    try:
        _scan_films(films, out, scanner, manifest, at_once, record, on_film_start, on_frames, on_film_frames)
    except DiskFullError as e:
        finished = sum(r.status in ("done", "partial", "skipped") for r in results.values())
        raise DiskFullError(e.path, f"{finished} of {len(films)} films finished before it and are in "
                                    f"{manifest.path}") from e
    return ScanResult(out=out, films=[results[i] for i in range(len(films))])


def _scan_films(films, out, scanner, manifest, at_once, record, on_film_start, on_frames, on_film_frames) -> None:
    """Scan (or skip, when resuming) each film; ``record`` gets each one as it finishes."""
    model_ids = [m.model_id for m in scanner.models]
    taken: set[str] = set()
    for i, path in enumerate(films):
        at_once.wait_for_slot()
        film_id = manifest.film_id_for(path, taken)
        taken.add(film_id)
        if on_film_start:
            on_film_start(film_id, path, i)
        fp = _fingerprint(path)
        prev = manifest.films.get(film_id, {})
        if _is_done(prev, fp, [scanner.key], scanner.opts,
                    lambda: _local_shards_exist(out, film_id, scanner.opts, model_ids)):
            record(i, _skipped(path, film_id, prev), None, fp)
        else:
            frames_cb = _frames_callback(film_id, on_frames, on_film_frames)
            at_once.start(
                lambda gate, a=(path, film_id, frames_cb): scanner(a[0], a[1], out, a[2], gate),
                lambda done, i=i, fp=fp: record(i, done[0], done[1], fp),
            )
    at_once.finish()
    # The accelerated components' verdicts in this scan (exe_stream.failsafe).
    manifest.scans[-1]["failsafe"] = failsafe.current().report()
    manifest.save()


def _recorded_options(opts: ScanOptions) -> dict[str, Any]:
    """The scan's options as the manifest records them (shots only when on, so a scan without
    them records what it recorded before shots existed)."""
    options = asdict(opts)
    if not opts.shots.enabled:
        options.pop("shots")
    if not opts.characters:
        options.pop("characters")
    if opts.cast is None:
        options.pop("cast")
    return options


def _frames_callback(film_id: str, on_frames: Callable[[int, int], None] | None,
                     on_film_frames: Callable[[str, int, int], None] | None
                     ) -> Callable[[int, int], None] | None:
    """One film's progress callback: ``on_frames(done, total)`` and, with the film's id,
    ``on_film_frames(film_id, done, total)``."""
    if on_film_frames is None:
        return on_frames

    def both(done: int, total: int) -> None:
        if on_frames:
            on_frames(done, total)
        on_film_frames(film_id, done, total)

    return both
