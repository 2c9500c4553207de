"""``scan --ray``: a film library across a Ray cluster's GPUs and machines.

A film is one unit of work. The driver (the process that runs ``scan_ray``) lists the films,
gives each its id and fingerprint, skips what the manifest already has (resume), and hands the
rest to worker actors, each holding one ``pipeline.FilmScanner`` (decoder, detector, models and
engine loaded once per actor). Workers write a film's shards (atomically: temporary name, then
rename) and return its manifest entry; only the driver writes the manifest, one entry as each
film finishes, so a driver killed and started again resumes like a local scan.

Placement: on a node with GPUs, ``films_per_gpu`` actors per GPU (each asks for
``1/films_per_gpu`` of a GPU; by default as many as the GPU has NVDEC engines, as
``--films-at-once`` does locally); on a node without GPUs, one actor per ``cpus_per_film``
CPUs. Actors are pinned to their node; when a node goes, its actors go with it and the driver
places actors on the nodes that are left (and on nodes that join).

Failures: a film that fails in the scanner (a broken file) comes back ``failed`` with its
reason after one attempt and is not retried. A transient failure (the worker process killed,
its node removed, the worker killed for memory) is retried on another actor up to
``max_attempts`` attempts in all; each lost attempt is recorded in the film's manifest entry
(``attempts``), and a film that runs out of attempts is ``failed`` with them as its reason.

Shots, tracks and characters (``ScanOptions.shots``, ``characters``, ``cast``): workers write
the shots shard with the film's other shards; the driver declares the columns and datasets they
add in the union schemas (``_common_metadata``) before any film, and reads the ``--cast`` CSV
and photos once, handing their content (``identity.CastFiles``) to every worker.

Ray is an optional dependency (the ``ray`` extra), imported when a Ray scan starts.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from . import storage
from .decode import VIDEO_EXTENSIONS, find_videos
from .embeddings import EMBEDDINGS_DIR, embeddings_path
from .errors import ExeStreamError
from .identity import CastFiles, read_cast
from .options import check_range
from .pipeline import (
    FilmResult, FilmScanner, ScanOptions, ScanResult, _added_schemas, _finish_entry, _fingerprint, _is_done,
    _local_shards_exist, _open_output, _skipped,
)
from .shards import (
    COMMON_SCHEMA_FILE, DATASETS, Manifest, faces_path, frames_path, remove_film_temporaries,
)
from .shots import shots_path

log = logging.getLogger(__name__)


class RayScanError(ExeStreamError):
    """A Ray scan cannot start or go on (Ray missing, no cluster, no capacity)."""


@dataclass(frozen=True)
class RayOptions:
    """Where and how a scan runs on Ray (ScanOptions say what it computes)."""

    # "auto": join the running cluster (RAY_ADDRESS, or one started with `ray start` on this
    # machine), else start a local one; "local": always start a local one; "host:port" joins
    # that cluster's head (GCS); "ray://host:port" connects through Ray Client.
    address: str = "auto"
    # CPUs one film takes on a node without GPUs (one actor per this many CPUs; also the
    # actor's torch threads).
    cpus_per_film: float = 1.0
    # Films at once per GPU; 0 = ScanOptions.films_at_once when set, else the NVDEC engines
    # of the GPU (probed on a GPU node) with the nvdec decoder, else 1.
    films_per_gpu: int = 0
    # Attempts a film gets when its worker is lost (killed, node removed, out of memory):
    # 1 means no retry. Failures inside the scanner (a broken film) are never retried.
    max_attempts: int = 3
    # Seconds to wait for the cluster to offer any worker before giving up.
    start_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if not self.address:
            raise ValueError("ray address must be 'auto', 'local', 'host:port' or 'ray://host:port', got ''")
        check_range("cpus_per_film", self.cpus_per_film, lo=0, lo_open=True)
        check_range("films_per_gpu", self.films_per_gpu, lo=0, integer=True)
        check_range("max_attempts", self.max_attempts, lo=1, integer=True)
        check_range("start_timeout_s", self.start_timeout_s, lo=0, lo_open=True)


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise RayScanError("scan --ray needs Ray: pip install 'exe-stream[ray]'") from e
    return ray


def _connect(ray, address: str) -> bool:
    """Connect this process to a cluster (``RayOptions.address``). True when this call started
    the connection (and so must end it), False when the process was connected already."""
    if ray.is_initialized():
        return False
    kw: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    try:
        if address == "local":
            ray.init(address="local", **kw)
        elif address == "auto":
            try:
                ray.init(address="auto", **kw)
            except ConnectionError:  # no running cluster: start one on this machine
                ray.init(address="local", **kw)
        else:
            ray.init(address=address, **kw)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise RayScanError(f"cannot connect to the Ray cluster at {address!r}: {e}") from e
    return True


class _FilmWorker:
    """A Ray actor around one FilmScanner (made remote in ``_actor_class``)."""

    def __init__(self, opts: ScanOptions, device: str, threads: int, cast: CastFiles | None = None) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        # A setup error (a model that does not load) is kept and raised by describe(), so the
        # driver gets the error itself rather than an actor that died in its constructor.
        self.setup_error: Exception | None = None
        try:
            # ``cast``: the --cast CSV and photos as the driver read them (this node may not
            # see the driver's files, nor resolve a relative path from the same directory).
            self.scanner = FilmScanner(opts, device, cast)
        except Exception as e:
            self.setup_error = e

    def describe(self) -> dict[str, Any]:
        """The scanner's resume key and scan record, and where this actor runs."""
        import ray

        if self.setup_error is not None:
            raise self.setup_error

        return {"key": self.scanner.key, "record": self.scanner.scan_record(0), "pid": os.getpid(),
                "node": ray.get_runtime_context().get_node_id()}

    def failsafe_report(self) -> dict[str, Any]:
        """This worker's accelerated components and their verdicts (exe_stream.failsafe)."""
        from . import failsafe

        return failsafe.current().report()

    def scan(self, path: str, film_id: str, out: str, progress: Any,
             fingerprint: str = "") -> tuple[FilmResult, dict[str, Any]]:
        """Scan one film; its frame counts go to the ``progress`` actor as they come. A film in
        object storage is staged to local scratch first (size and ``fingerprint`` checked); an
        output in object storage gets the film's shards once they are written locally."""
        import ray

        last = [0.0]
        node = ray.get_runtime_context().get_node_id()

        def on_frames(done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] >= 0.5 or done >= total:  # at most two updates a second
                last[0] = now
                progress.update.remote(film_id, done, total, os.getpid(), node)

        with tempfile.TemporaryDirectory(prefix="exe-stream-film-") as scratch:
            local_out = Path(scratch) / "out" if storage.is_uri(out) else Path(out)
            try:
                local = storage.stage(path, Path(scratch), fingerprint) if storage.is_uri(path) else Path(path)
            except storage.StorageError as e:
                res = FilmResult(film_id, path, "failed", str(e))
                entry = {"path": path, "status": "failed", "reason": str(e), "frames_sampled": 0, "faces": 0,
                         "options_key": self.scanner.key}
            else:
                res, entry = self.scanner(local, film_id, local_out, on_frames)
                if storage.is_uri(out):  # each object appears complete or not at all
                    files = sorted(p for p in local_out.rglob("*") if p.is_file())
                    storage.put_tree(local_out, files, out)
                    # As a local scan does: no shots shard of an earlier scan stays beside
                    # shards written without shots (or a film of which nothing decoded).
                    shots_rel = shots_path(Path(), film_id)
                    if not (local_out / shots_rel).exists():
                        storage.remove(storage.join(out, shots_rel.as_posix()))
            if storage.is_uri(path):
                res.path = entry["path"] = path
        entry["worker"] = {"node": node, "pid": os.getpid(), "device": str(self.scanner.device)}
        return res, entry


class _Progress:
    """A Ray actor that collects every film's frame counts from the workers; the driver reads
    them for its one progress display."""

    def __init__(self) -> None:
        self.films: dict[str, tuple[int, int, int, str]] = {}  # id -> done, total, pid, node

    def update(self, film_id: str, done: int, total: int, pid: int, node: str) -> None:
        self.films[film_id] = (done, total, pid, node)

    def snapshot(self) -> dict[str, tuple[int, int, int, str]]:
        return dict(self.films)


def _progress_actor(ray) -> Any:
    """The run's ``_Progress`` actor, on the driver's node (which lives as long as the run)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return ray.remote(_Progress).options(num_cpus=0, scheduling_strategy=here).remote()


def _transient_errors(ray) -> tuple[type[BaseException], ...]:
    """Ray's errors for a lost worker: the film is retried elsewhere."""
    ex = ray.exceptions
    names = ("RayActorError", "WorkerCrashedError", "OutOfMemoryError", "NodeDiedError",
             "ObjectLostError", "ActorUnavailableError", "LocalRayletDiedError")
    return tuple(getattr(ex, n) for n in names if hasattr(ex, n))


@dataclass
class _Film:
    """One film waiting for, or running on, a worker."""

    index: int
    path: str | Path
    film_id: str
    fingerprint: str
    attempts: list[dict[str, Any]]

    @property
    def name(self) -> str:  # what the worker opens: a local path or a URI
        return str(self.path)

    @property
    def resolved(self) -> str:  # as the manifest names it
        return str(self.path) if storage.is_uri(self.path) else str(Path(self.path).resolve())


class _Output:
    """The scan output as the driver sees it: a local directory, or (``s3://``...) a local
    directory holding the manifest and dataset schemas, each put to object storage when it
    changes, while the workers put the shards."""

    def __init__(self, out: str | Path, opts: ScanOptions) -> None:
        self.uri = str(out) if storage.is_uri(out) else None
        self.local = Path(tempfile.mkdtemp(prefix="exe-stream-out-")) if self.uri else Path(out)
        self.opts = opts
        # The datasets whose union schema (_common_metadata) this scan declares: frames, faces
        # and those --shots and --characters add (shots; their columns go to frames and faces).
        self.datasets = tuple(dict.fromkeys([*DATASETS, *(ds for ds, _ in _added_schemas(opts))]))
        if self.uri:  # resume: what an earlier scan into this output left
            for rel in ("manifest.json", *(f"{ds}/{COMMON_SCHEMA_FILE}" for ds in self.datasets)):
                storage.get_file(storage.join(self.uri, rel), self.local / rel)

    def open(self, label_sets) -> Manifest:
        manifest = _open_output(self.local, label_sets, self.opts)
        if self.uri:
            for ds in self.datasets:
                if (self.local / ds / COMMON_SCHEMA_FILE).exists():
                    storage.put_file(self.local / ds / COMMON_SCHEMA_FILE,
                                     storage.join(self.uri, ds, COMMON_SCHEMA_FILE))
        return manifest

    def save(self, manifest: Manifest) -> None:
        manifest.save()
        if self.uri:
            storage.put_file(manifest.path, storage.join(self.uri, "manifest.json"))

    def shards_exist(self, film_id: str, opts: ScanOptions, model_ids: list[str]) -> bool:
        if not self.uri:
            return _local_shards_exist(self.local, film_id, opts, model_ids)
        rels = [frames_path(Path(), film_id), *(faces_path(Path(), film_id, m) for m in model_ids),
                *(embeddings_path(Path(), film_id, m) for m in model_ids if opts.embeddings),
                *([shots_path(Path(), film_id)] if opts.shots.enabled else [])]
        return all(storage.exists(storage.join(self.uri, r.as_posix())) for r in rels)

    @property
    def target(self) -> str:  # what workers write to
        return self.uri or str(self.local)

    def close(self) -> None:
        if self.uri:
            shutil.rmtree(self.local, ignore_errors=True)


class _Slots:
    """The worker actors, one per slot of the cluster's alive nodes (see the module doc)."""

    def __init__(self, ray, opts: ScanOptions, ropts: RayOptions, films_per_gpu: int, cast: Any = None) -> None:
        self.ray = ray
        self.opts = opts
        self.cast = cast  # the --cast files (CastFiles, put in the object store once), or None
        self.ropts = ropts
        self.films_per_gpu = films_per_gpu
        self.actors: dict[Any, tuple[str, str]] = {}  # actor -> (node id, "gpu" | "cpu")
        self.idle: collections.deque = collections.deque()
        self._remote = ray.remote(_FilmWorker)

    def _wanted(self) -> dict[str, tuple[str, int]]:
        """Alive node id -> (kind, actors it takes)."""
        wanted: dict[str, tuple[str, int]] = {}
        for node in self.ray.nodes():
            if not node.get("Alive"):
                continue
            res = node.get("Resources", {})
            gpus = int(res.get("GPU", 0))
            if gpus and self.opts.device != "cpu":
                wanted[node["NodeID"]] = ("gpu", gpus * self.films_per_gpu)
            else:
                wanted[node["NodeID"]] = ("cpu", int(res.get("CPU", 0) // self.ropts.cpus_per_film))
        return wanted

    def reconcile(self) -> int:
        """Start actors on alive nodes with free slots (nodes that joined, actors that died);
        the number started."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        per_node = collections.Counter(node for node, _ in self.actors.values())
        started = 0
        for node_id, (kind, n) in self._wanted().items():
            for _ in range(n - per_node[node_id]):
                strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
                if kind == "gpu":
                    actor = self._remote.options(
                        num_gpus=1 / self.films_per_gpu, num_cpus=0, max_restarts=0,
                        scheduling_strategy=strategy,
                    ).remote(self.opts, "cuda", 1, self.cast)
                else:
                    actor = self._remote.options(
                        num_cpus=self.ropts.cpus_per_film, num_gpus=0, max_restarts=0,
                        scheduling_strategy=strategy,
                    ).remote(self.opts, "cpu", math.ceil(self.ropts.cpus_per_film), self.cast)
                self.actors[actor] = (node_id, kind)
                self.idle.append(actor)
                started += 1
        return started

    def lost(self, actor: Any) -> None:
        """Forget an actor whose worker died (its slot is filled again by ``reconcile``)."""
        self.actors.pop(actor, None)
        try:
            self.idle.remove(actor)
        except ValueError:
            pass
        try:
            self.ray.kill(actor, no_restart=True)
        except Exception:  # already gone
            pass


def _films_per_gpu(ray, opts: ScanOptions, ropts: RayOptions, films: list[Path]) -> int:
    """Films at once per GPU (RayOptions.films_per_gpu)."""
    if ropts.films_per_gpu:
        return ropts.films_per_gpu
    if opts.films_at_once:
        return opts.films_at_once
    if opts.device == "cpu" or not ray.cluster_resources().get("GPU") or not films:
        return 1

    @ray.remote(num_gpus=1)
    def probe(first: str) -> int:  # UNVERIFIED: needs a GPU node
        import torch

        from .pipeline import _films_at_once, _resolve_backends

        device = torch.device("cuda", 0)
        return _films_at_once(opts, _resolve_backends(opts, device), device, [Path(first)])

    return max(1, int(ray.get(probe.remote(str(films[0])))))


def scan_ray(
    paths: Iterable[str | Path],
    out: str | Path,
    opts: ScanOptions = ScanOptions(),
    ropts: RayOptions = RayOptions(),
    metadata: dict[str, dict[str, Any]] | None = None,
    on_film_start: Callable[[str, Path, int], None] | None = None,
    on_film_end: Callable[[FilmResult], None] | None = None,
    on_film_frames: Callable[[str, int, int], None] | None = None,
    on_film_worker: Callable[[str, str, int], None] | None = None,
) -> ScanResult:
    """Scan films on a Ray cluster into ``out``: the same shards and manifest as
    ``pipeline.scan`` with the same options (see the module doc for placement and failures).

    PATHs and ``out`` must be reachable under the same names from every node (a shared file
    system, or object-storage URIs); ``opts.cast`` need not be (this process reads it and sends
    its content to the workers). The callbacks run in the calling thread: ``on_film_start`` when a film is handed
    to a worker (or skipped), ``on_film_frames(film_id, done, total)`` as workers report
    frames, ``on_film_end`` as each film is recorded, ``on_film_worker(film_id, node_id, pid)``
    when a film's worker first reports (where an attempt runs).
    """
    ray = _import_ray()
    films = list_films(paths)
    # The cast is read here, once (a bad file fails before the cluster starts), and its content
    # goes to the workers, which may not see this machine's files.
    cast = read_cast(opts.cast) if opts.cast is not None else None
    output = _Output(out, opts)
    started = _connect(ray, ropts.address)
    try:
        return _scan_ray(ray, films, output, opts, ropts, metadata, on_film_start, on_film_end, on_film_frames,
                         on_film_worker, cast)
    finally:
        output.close()
        if started:
            ray.shutdown()


def list_films(paths: Iterable[str | Path]) -> list[str | Path]:
    """The films named by ``paths`` (local files and directories as ``decode.find_videos``
    finds them, and object-storage URIs: an object, or the video files under a prefix)."""
    films: list[str | Path] = []
    for p in paths:
        if storage.is_uri(p):
            films += storage.list_films(str(p), VIDEO_EXTENSIONS)
        else:
            films += find_videos([Path(p)])
    return films


def _scan_ray(ray, films, output, opts, ropts, metadata, on_film_start, on_film_end, on_film_frames,
              on_film_worker, cast=None) -> ScanResult:
    transient = _transient_errors(ray)
    slots = _Slots(ray, opts, ropts, _films_per_gpu(ray, opts, ropts, films),
                   ray.put(cast) if cast is not None else None)
    if not slots.reconcile():
        raise RayScanError(
            f"the Ray cluster has no room for a film worker (resources: {ray.cluster_resources()}; "
            f"a CPU worker needs {ropts.cpus_per_film} CPU)")
    # The scan's resume keys and record, from one worker of each kind (a model that does not
    # load fails here, before any film).
    kinds: dict[str, Any] = {}
    for actor in list(slots.idle):
        kinds.setdefault(slots.actors[actor][1], actor)
    try:
        described = ray.get([a.describe.remote() for a in kinds.values()], timeout=ropts.start_timeout_s)
    except ray.exceptions.GetTimeoutError as e:
        raise RayScanError(f"no Ray worker started within {ropts.start_timeout_s:.0f} s") from e
    except ray.exceptions.RayTaskError as e:  # the scanner's own setup failed (bad model, ...)
        cause = getattr(e, "cause", None)
        if isinstance(cause, (ValueError, ExeStreamError)):
            raise cause from e
        raise RayScanError(f"the Ray workers could not start: {_first_line(e)}") from e
    keys = [d["key"] for d in described]
    model_labels = {m: tuple(d["labels"]) for m, d in described[0]["record"]["models"].items()}
    model_ids = list(model_labels)

    manifest = output.open(model_labels.values())
    record = dict(described[0]["record"], films=len(films),
                  ray={"address": ropts.address, "workers": len(slots.actors), "keys": keys,
                       "resources": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}})
    manifest.scans.append(record)
    output.save(manifest)
    results: dict[int, FilmResult] = {}

    def finish(film: _Film, res: FilmResult, entry: dict[str, Any] | None) -> None:
        if entry is not None:
            if film.attempts:
                entry["attempts"] = film.attempts
            manifest.films[res.film_id] = _finish_entry(entry, film.fingerprint, res, metadata)
            output.save(manifest)
            if not output.uri:
                # Left by a worker killed mid-write, in any dataset this scan writes.
                remove_film_temporaries(output.local, film.film_id, (*output.datasets, EMBEDDINGS_DIR))
        results[film.index] = res
        if on_film_end:
            on_film_end(res)

    pending: collections.deque[_Film] = collections.deque()
    taken: set[str] = set()
    for i, path in enumerate(films):
        film_id = manifest.film_id_for(path, taken)
        taken.add(film_id)
        fp = _film_fingerprint(path)
        prev = manifest.films.get(film_id, {})
        if _is_done(prev, fp, keys, opts, lambda: output.shards_exist(film_id, opts, model_ids)):
            if on_film_start:
                on_film_start(film_id, path, i)
            finish(_Film(i, path, film_id, fp, []), _skipped(path, film_id, prev), None)
        else:
            pending.append(_Film(i, path, film_id, fp, []))

    progress = _progress_actor(ray)
    running: dict[Any, tuple[_Film, Any]] = {}
    seen_frames: dict[str, tuple[int, int, int]] = {}
    seen_workers: set[tuple[str, int]] = set()
    last_reconcile = time.monotonic()
    stalled_since: float | None = None
    while pending or running:
        # Hand waiting films to idle workers.
        while pending and slots.idle:
            film, actor = pending.popleft(), slots.idle.popleft()
            ref = actor.scan.remote(film.name, film.film_id, output.target, progress, film.fingerprint)
            running[ref] = (film, actor)
            if on_film_start and not film.attempts:
                on_film_start(film.film_id, film.path, film.index)
        if not running:  # films wait and no worker is left: wait for the cluster to offer one
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > ropts.start_timeout_s:
                raise RayScanError(f"no Ray worker left for {len(pending)} films after "
                                   f"{ropts.start_timeout_s:.0f} s (resources: {ray.cluster_resources()})")
            time.sleep(1.0)
            slots.reconcile()
            continue
        stalled_since = None
        done, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
        if on_film_frames or on_film_worker:  # films still running (not those just finished)
            now_running = {f.film_id for ref, (f, _) in running.items() if ref not in done}
            try:
                reports = ray.get(progress.snapshot.remote())
            except transient:  # its node went: the next reports go to a new one
                progress, reports = _progress_actor(ray), {}
            for film_id, (n, total, pid, node) in reports.items():
                if film_id not in now_running or seen_frames.get(film_id) == (n, total, pid):
                    continue
                if on_film_worker and (film_id, pid) not in seen_workers:
                    seen_workers.add((film_id, pid))
                    on_film_worker(film_id, node, pid)
                seen_frames[film_id] = (n, total, pid)
                if on_film_frames:
                    on_film_frames(film_id, n, total)
        for ref in done:
            film, actor = running.pop(ref)
            try:
                res, entry = ray.get(ref)
            except transient as e:
                slots.lost(actor)
                film.attempts.append({"error": f"{type(e).__name__}: {_first_line(e)}",
                                      "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
                log.warning("film %s: worker lost (attempt %d of %d): %s", film.film_id,
                            len(film.attempts), ropts.max_attempts, type(e).__name__)
                if len(film.attempts) < ropts.max_attempts:
                    pending.appendleft(film)
                else:
                    reason = (f"{film.path}: worker lost {len(film.attempts)} times "
                              f"(max_attempts {ropts.max_attempts}): {film.attempts[-1]['error']}")
                    res = FilmResult(film.film_id, str(film.path), "failed", reason)
                    finish(film, res, {"path": film.resolved, "status": "failed", "reason": reason,
                                       "frames_sampled": 0, "faces": 0, "options_key": keys[0]})
                slots.reconcile()
                continue
            except ray.exceptions.RayTaskError as e:  # the worker raised: not a lost worker, no retry
                reason = f"{film.path}: {_first_line(getattr(e, 'cause', None) or e)}"
                res = FilmResult(film.film_id, str(film.path), "failed", reason)
                finish(film, res, {"path": film.resolved, "status": "failed", "reason": reason,
                                   "frames_sampled": 0, "faces": 0, "options_key": keys[0]})
                slots.idle.append(actor)
                continue
            finish(film, res, entry)
            slots.idle.append(actor)
        if time.monotonic() - last_reconcile > 5.0:  # nodes that joined take films too
            slots.reconcile()
            last_reconcile = time.monotonic()
    # The accelerated components' verdicts (exe_stream.failsafe), per worker still alive.
    reports = {}
    for i, (actor, (node, kind)) in enumerate(list(slots.actors.items())):
        try:
            reports[f"{kind}-{i} on node {node[:12]}"] = ray.get(actor.failsafe_report.remote(), timeout=30)
        except Exception as e:  # a worker lost at the very end: its verdicts go with it
            log.debug("no failsafe report from a worker: %s", e)
    manifest.scans[-1]["failsafe"] = reports
    output.save(manifest)
    for actor in list(slots.actors):
        ray.kill(actor, no_restart=True)
    ray.kill(progress, no_restart=True)
    return ScanResult(out=output.uri or output.local, films=[results[i] for i in range(len(films))])


def _film_fingerprint(path: str | Path) -> str:
    if storage.is_uri(path):
        try:
            return storage.fingerprint_uri(str(path))
        except storage.StorageError as e:
            log.debug("cannot fingerprint %s: %s", path, e)
            return ""
    return _fingerprint(Path(path))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
