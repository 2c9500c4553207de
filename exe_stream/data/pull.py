"""``exe-stream data pull``: stock photos found by emotion keywords, weakly labelled by the
emotion whose keyword found them.

For every emotion of the recipe, every keyword and every source, the query
``query_template.format(keyword=..., label=...)`` is searched page by page, round-robin over
the emotion's keywords and sources, and each new image is downloaded into
``DATA/raw/<source>-<id>.<ext>`` with one row in ``DATA/raw.arrow`` (``RAW_SCHEMA``): source,
id, url (the downloaded file), page_url, query, keyword, label, photographer,
photographer_url, license, sha256 (of the file's bytes), path (relative to DATA), width,
height (of the downloaded file), fetched_at.

A keyword/source pair (a *stream*) stops when the API has no further page, after
``max_pages`` pages, when its emotion holds ``max_per_label`` images or the keyword
``max_per_keyword`` (both counted over everything pulled so far, all runs), or when a page
brings too few new images: fewer than ``min_new_fraction`` of its hits (hits already found
by another keyword or source do not count as new).

**Duplicates.** ``raw.arrow`` holds each image once: the first hit to find it is kept. Later
hits of the same image go to ``DATA/raw_duplicates.arrow`` (``DUPLICATE_SCHEMA``: the hit's
own source, id, url, query, keyword, label and credits, the sha256, ``reason`` and the kept
row's ``duplicate_of_source`` / ``duplicate_of_id``): ``reason`` is ``same_id`` for an id the
source already gave for another query (not downloaded again) and ``same_content`` for other
ids whose bytes hash the same (the same photo on both sites; the file is deleted). A
duplicate whose ``label`` differs from the kept row's is an image two emotions' keywords
found; ``clean`` can join on ``duplicate_of_*`` to drop such ambiguous images.

**Resume.** ``raw.arrow``, ``raw_duplicates.arrow`` and ``DATA/pull_state.json`` (per stream:
next page, pages fetched, why it stopped; images to try again) are rewritten atomically after every page and when
the pull ends, also on an exception or Ctrl-C. Images are written atomically by the download
workers before their rows exist; an image file already on disk is adopted instead of being
downloaded again, so even a hard kill between a download and the next checkpoint loses no
download. Running the same recipe again continues each stream at its next page; streams
that stopped because the API ran out or because of too few new images stay stopped; raise
``max_pages`` or a limit to get more.

**Failures.** Retries, backoff and rate-limit pauses are ``exe_stream.data.http``'s. When a
source fails for good (bad key, retries spent, a rate-limit window longer than ``max_wait``,
an answer of the wrong shape), that source stops for this run with the reason in
``PullResult.errors``; the other sources go on. An image that cannot be downloaded or is not
a JPEG/PNG/WebP picture is skipped with a line in ``errors``, remembered in the state file and
tried again at the start of the next run (given up after ``MAX_IMAGE_ATTEMPTS`` runs).

**Keys** come from the environment (``PEXELS_API_KEY``, ``PIXABAY_API_KEY``); they are sent
only to the API host and are redacted from every message; nothing written under DATA holds
them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import pyarrow as pa

from ..atomic import TMP_GLOB, atomic_write_bytes, atomic_write_text
from .. import __version__
from ..errors import ExeStreamError
from ..shards import read_table, write_table
from .http import HttpClient, HttpError, HttpOptions, redact
from .recipe import Recipe, RecipeError, check_keys, get_str_list, get_value
from .sources import SOURCES, ApiRequest, Hit, SourceOptions, StockSource, get_source

log = logging.getLogger(__name__)

RAW_SCHEMA = pa.schema([
    ("source", pa.string()), ("id", pa.string()), ("url", pa.string()), ("page_url", pa.string()),
    ("query", pa.string()), ("keyword", pa.string()), ("label", pa.string()),
    ("photographer", pa.string()), ("photographer_url", pa.string()), ("license", pa.string()),
    ("sha256", pa.string()), ("path", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
    ("fetched_at", pa.timestamp("us", tz="UTC")),
])
DUPLICATE_SCHEMA = pa.schema([
    ("source", pa.string()), ("id", pa.string()), ("url", pa.string()), ("page_url", pa.string()),
    ("query", pa.string()), ("keyword", pa.string()), ("label", pa.string()),
    ("photographer", pa.string()), ("photographer_url", pa.string()), ("license", pa.string()),
    ("sha256", pa.string()), ("reason", pa.string()),
    ("duplicate_of_source", pa.string()), ("duplicate_of_id", pa.string()),
    ("fetched_at", pa.timestamp("us", tz="UTC")),
])
RAW_FILE, DUPLICATES_FILE, STATE_FILE, RAW_DIR = "raw.arrow", "raw_duplicates.arrow", "pull_state.json", "raw"
STATE_VERSION = 1
#: Runs in which a failed image is tried again before it is given up.
MAX_IMAGE_ATTEMPTS = 3
#: Image formats kept, as Pillow names them -> file extension.
IMAGE_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
_LABEL_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_PULL_KEYS = (
    "emotions", "sources", "query_template", "per_page", "max_pages", "max_per_keyword", "max_per_label",
    "min_new_fraction", "download_workers", "timeout", "max_retries", "backoff", "max_backoff",
    "min_remaining", "max_wait", *SOURCES,
)
_SOURCE_KEYS = ("base_url", "image", "params")

# Why a stream stops. EXHAUSTED and FEW_NEW are kept in the state file (a later run does not
# search again); the others are checked afresh by every run.
EXHAUSTED = "no more results"
FEW_NEW = "too few new images"
MAX_PAGES = "max_pages reached"
LABEL_FULL = "max_per_label reached"
KEYWORD_FULL = "max_per_keyword reached"
SOURCE_FAILED = "source failed"


class PullError(ExeStreamError):
    """A pull cannot start (e.g. an API key is missing). Failures during a pull are reported
    in ``PullResult.errors`` instead."""


@dataclass(frozen=True)
class PullOptions:
    """What to search for and how hard to try. ``from_recipe`` reads the recipe's ``[pull]``."""

    emotions: tuple[tuple[str, tuple[str, ...]], ...]  # (label, keywords) in order; the label is the weak label
    sources: tuple[str, ...] = ("pexels", "pixabay")   # APIs to search, in this order (SOURCES names)
    query_template: str = "{keyword} face"              # query per keyword; may use {keyword} and {label}
    per_page: int = 80                                  # results per request, clamped to each API's range
    max_pages: int = 3                                  # pages per keyword and source
    max_per_keyword: int = 0                            # images per keyword over all sources (0: no limit)
    max_per_label: int = 0                              # images per emotion (0: no limit); --limit
    min_new_fraction: float = 0.2                       # stop a keyword/source when a page has fewer new images than this share of its hits
    download_workers: int = 4                           # parallel image downloads (the search requests stay sequential)
    source_options: tuple[tuple[str, SourceOptions], ...] = ()  # per source base_url/image/params; others use defaults
    http: HttpOptions = HttpOptions()                   # time-outs, retries, rate-limit pauses

    def __post_init__(self) -> None:
        if not self.emotions:
            raise ValueError("emotions must name at least one emotion with its keywords")
        seen: dict[str, str] = {}
        for label, keywords in self.emotions:
            if not _LABEL_RE.match(label):
                raise ValueError(f"emotion label {label!r} must be lower-case letters, digits, '-' or '_' "
                                 "(it names a directory)")
            if not keywords:
                raise ValueError(f"emotion {label!r} has no keywords")
            for kw in keywords:
                k = kw.strip().lower()
                if k in seen:
                    where = "twice" if seen[k] == label else f"under both {seen[k]} and {label}"
                    raise ValueError(f"keyword {kw!r} is listed {where}; a keyword must give one weak label")
                seen[k] = label
        if not self.sources:
            raise ValueError(f"sources must name at least one of {', '.join(SOURCES)}")
        for s in self.sources:
            get_source(s)
        if len(set(self.sources)) != len(self.sources):
            raise ValueError(f"sources lists a source twice: {', '.join(self.sources)}")
        for name, so in self.source_options:
            src = get_source(name)
            if so.image not in src.image_sizes:
                raise ValueError(f"{name} image size {so.image!r} is not one of {', '.join(src.image_sizes)}")
            for pname, pvalue in so.params:
                if pname not in src.params:
                    raise ValueError(f"{name} parameter {pname!r} is not one of {', '.join(src.params)}")
                if pvalue not in src.params[pname]:
                    raise ValueError(f"{name} parameter {pname}={pvalue!r} is not one of {', '.join(src.params[pname])}")
            if not so.base_url.startswith(("http://", "https://")):
                raise ValueError(f"{name} base_url must start with http:// or https://, got {so.base_url!r}")
        for label, keywords in self.emotions:
            for kw in keywords:
                try:
                    q = self.query_template.format(keyword=kw, label=label)
                except (KeyError, IndexError, ValueError) as e:
                    raise ValueError(f"query_template {self.query_template!r} may only use {{keyword}} and "
                                     f"{{label}} ({type(e).__name__}: {e})") from e
                for s in self.sources:
                    limit = get_source(s).max_query_length
                    if limit and len(q) > limit:
                        raise ValueError(f"query {q!r} is longer than {s}'s limit of {limit} characters")
        if "{keyword}" not in self.query_template:
            raise ValueError(f"query_template {self.query_template!r} must contain {{keyword}}")
        for name in ("per_page", "max_pages", "download_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("max_per_keyword", "max_per_label"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: no limit), got {getattr(self, name)!r}")
        if not 0.0 <= self.min_new_fraction <= 1.0:
            raise ValueError(f"min_new_fraction must be in [0, 1], got {self.min_new_fraction!r}")

    @property
    def labels(self) -> tuple[str, ...]:
        """The emotion labels in recipe order."""
        return tuple(label for label, _ in self.emotions)

    def source_opts(self, name: str) -> SourceOptions:
        """The ``SourceOptions`` of source ``name`` (its defaults unless the recipe set them)."""
        for n, so in self.source_options:
            if n == name:
                return so
        src = get_source(name)
        return SourceOptions(base_url=src.default_base_url, image=src.image_sizes[0])

    def query(self, label: str, keyword: str) -> str:
        """The search text for one keyword."""
        return self.query_template.format(keyword=keyword, label=label)

    def page_size(self, source: str) -> int:
        """``per_page`` clamped to the source's documented range."""
        lo, hi = get_source(source).per_page_range
        return max(lo, min(hi, self.per_page))

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> "PullOptions":
        """Options from the recipe's ``[pull]`` table; ``RecipeError`` naming the file and key."""
        table = recipe.section("pull")
        w = recipe.where("pull")
        if not table:
            raise RecipeError(f"{recipe.where()}: no [pull] table")
        check_keys(table, _PULL_KEYS, w)
        emotions_t = get_value(table, "emotions", dict, w, expect="a table of emotion = [keywords]")
        if not emotions_t:
            raise RecipeError(f"{recipe.where('pull', 'emotions')}: no emotions; give each emotion its keywords, "
                              'e.g. happy = ["happy", "smiling"]')
        emotions = tuple((label, get_str_list(emotions_t, label, recipe.where("pull", "emotions")))
                         for label in emotions_t)
        http_kw: dict[str, Any] = {}
        for key, kind, check, expect in (
            ("timeout", float, lambda v: v > 0, "a number > 0"),
            ("max_retries", int, lambda v: v >= 0, "an integer >= 0"),
            ("backoff", float, lambda v: v >= 0, "a number >= 0"),
            ("max_backoff", float, lambda v: v > 0, "a number > 0"),
            ("min_remaining", int, lambda v: v >= 0, "an integer >= 0"),
            ("max_wait", float, lambda v: v > 0, "a number > 0"),
        ):
            if key in table:
                http_kw[key] = get_value(table, key, kind, w, check=check, expect=expect)
        source_options = []
        for name, src in SOURCES.items():
            if name not in table:
                continue
            sw = recipe.where("pull", name)
            st = get_value(table, name, dict, w)
            check_keys(st, _SOURCE_KEYS, sw)
            params_t = get_value(st, "params", dict, sw, default={})
            params = []
            for pname, pvalue in params_t.items():
                if pname not in src.params:
                    raise RecipeError(f"{recipe.where('pull', name, 'params')}: unknown key {pname!r}; "
                                      f"allowed: {', '.join(src.params)}")
                if isinstance(pvalue, bool):
                    pvalue = "true" if pvalue else "false"
                allowed = src.params[pname]
                if pvalue not in allowed:
                    raise RecipeError(f"{recipe.where('pull', name, 'params')}: {pname} must be one of "
                                      f"{', '.join(allowed)}, got {pvalue!r}")
                params.append((pname, pvalue))
            image = get_value(st, "image", str, sw, default=src.image_sizes[0],
                              check=lambda v, s=src: v in s.image_sizes,
                              expect=f"one of {', '.join(src.image_sizes)}")
            base_url = get_value(st, "base_url", str, sw, default=src.default_base_url,
                                 check=lambda v: v.startswith(("http://", "https://")),
                                 expect="an http:// or https:// URL")
            source_options.append((name, SourceOptions(base_url=base_url, image=image, params=tuple(params))))
        kw: dict[str, Any] = {}
        for key, kind, check, expect in (
            ("query_template", str, lambda v: "{keyword}" in v, "a string containing {keyword}"),
            ("per_page", int, lambda v: v >= 1, "an integer >= 1"),
            ("max_pages", int, lambda v: v >= 1, "an integer >= 1"),
            ("max_per_keyword", int, lambda v: v >= 0, "an integer >= 0 (0: no limit)"),
            ("max_per_label", int, lambda v: v >= 0, "an integer >= 0 (0: no limit)"),
            ("min_new_fraction", float, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
            ("download_workers", int, lambda v: v >= 1, "an integer >= 1"),
        ):
            if key in table:
                kw[key] = get_value(table, key, kind, w, check=check, expect=expect)
        if "sources" in table:
            kw["sources"] = get_str_list(table, "sources", w, allowed=SOURCES)
        try:
            return cls(emotions=emotions, source_options=tuple(source_options), http=HttpOptions(**http_kw), **kw)
        except ValueError as e:
            raise RecipeError(f"{w}: {e}") from e


@dataclass
class StreamReport:
    """What one keyword/source pair did in this run."""

    source: str
    label: str
    keyword: str
    query: str
    pages: int = 0        # search pages fetched this run
    new: int = 0          # images added this run
    next_page: int = 1    # the page a further run would fetch
    stop: str = ""        # why it stopped or cannot go on ("" when a further run would fetch more)


@dataclass
class PullResult:
    """Outcome of ``pull``. ``per_label`` maps each label to its image count (before, after)."""

    data_dir: Path
    images: int = 0                     # rows in raw.arrow after the run
    new: int = 0                        # images added this run
    duplicates: int = 0                 # duplicate hits recorded this run
    downloads: int = 0                  # image files downloaded this run
    adopted: int = 0                    # image files found on disk from an interrupted run, not downloaded
    requests: dict[str, int] = field(default_factory=dict)  # search requests per source, retries included
    per_label: dict[str, tuple[int, int]] = field(default_factory=dict)
    streams: list[StreamReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)           # sources stopped, images skipped (redacted)
    failed_sources: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.errors


# -- tables and state -----------------------------------------------------------------


def raw_path(data_dir: Path) -> Path:
    """``DATA/raw.arrow``."""
    return Path(data_dir) / RAW_FILE


def read_raw(data_dir: Path) -> pa.Table:
    """``DATA/raw.arrow`` (``RAW_SCHEMA``); ``FileNotFoundError`` when nothing was pulled."""
    return read_table(raw_path(data_dir))


def _table_meta(kind: str) -> dict[bytes, bytes]:
    return {b"exe_stream.table": kind.encode(), b"exe_stream.schema": b"1",
            b"exe_stream.version": __version__.encode()}


def _read_rows(path: Path, schema: pa.Schema) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    t = read_table(path)
    missing = [n for n in schema.names if n not in t.column_names]
    if missing:
        raise PullError(f"{path} lacks columns {', '.join(missing)}; it was not written by exe-stream data pull")
    return t.select(schema.names).to_pylist()


def _write_rows(path: Path, rows: list[dict[str, Any]], schema: pa.Schema, kind: str) -> None:
    table = pa.Table.from_pylist(rows, schema=schema).replace_schema_metadata(_table_meta(kind))
    write_table(path, table)


def _stream_key(source: str, query: str) -> str:
    return f"{source}\t{query}"


@dataclass
class _Stream:
    """One keyword on one source, across runs (an entry of pull_state.json)."""

    source: str
    label: str
    keyword: str
    query: str
    per_page: int
    next_page: int = 1
    pages: int = 0        # all runs
    new: int = 0          # all runs
    done: str = ""        # EXHAUSTED or FEW_NEW once finished for good ("" while open)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _load_state(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(streams, failed images) of ``pull_state.json``; empty when there is none."""
    if not path.exists():
        return {}, {}
    try:
        state = json.loads(path.read_text())
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"version {state.get('version')!r}, expected {STATE_VERSION}")
        return dict(state["streams"]), dict(state.get("failed", {}))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise PullError(f"{path} is not a pull state file ({e}); delete it to start the streams afresh") from e


def _save_state(path: Path, streams: Mapping[str, _Stream], failed: Mapping[str, dict[str, Any]]) -> None:
    doc = {"version": STATE_VERSION, "streams": {k: s.to_json() for k, s in streams.items()}, "failed": dict(failed)}
    atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")


# -- images ---------------------------------------------------------------------------


@dataclass
class _Fetched:
    """One image as a download worker left it: stored under ``path``, or ``error``."""

    hit: Hit
    path: Path | None = None
    sha256: str = ""
    width: int = 0
    height: int = 0
    adopted: bool = False
    error: str = ""


def _inspect_image(data: bytes) -> tuple[str, int, int]:
    """(extension, width, height) of a JPEG/PNG/WebP picture; ValueError for anything else,
    truncated files included (the whole picture is decoded)."""
    from PIL import Image, UnidentifiedImageError  # Pillow comes with torchvision

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            im.load()
            w, h = im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"not a readable image ({type(e).__name__}: {e})") from e
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"a {fmt} image, not one of {', '.join(IMAGE_FORMATS)}")
    return IMAGE_FORMATS[fmt], w, h


def _existing_file(raw_dir: Path, hit: Hit) -> Path | None:
    for ext in IMAGE_FORMATS.values():
        p = raw_dir / f"{hit.source}-{hit.id}.{ext}"
        if p.exists():
            return p
    return None


def _fetch_image(hit: Hit, raw_dir: Path, client: HttpClient) -> _Fetched:
    """Download (or adopt from disk) one image, check it and store it atomically."""
    out = _Fetched(hit)
    existing = _existing_file(raw_dir, hit)
    try:
        if existing is not None:
            data = existing.read_bytes()
            out.adopted = True
        else:
            data = client.get(hit.image_url).body
        ext, out.width, out.height = _inspect_image(data)
    except (HttpError, ValueError, OSError) as e:
        if existing is not None:
            existing.unlink(missing_ok=True)  # a damaged leftover: fetch it again next time
        out.error = f"{hit.source} image {hit.id}: {client.redact(str(e)).removeprefix(client.name + ': ')}"
        return out
    out.sha256 = hashlib.sha256(data).hexdigest()
    out.path = existing if existing is not None else raw_dir / f"{hit.source}-{hit.id}.{ext}"
    if existing is None:
        atomic_write_bytes(out.path, data)
    return out


# -- the pull -------------------------------------------------------------------------


def api_keys_from_env(sources: Sequence[str], env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each source's key from its environment variable; ``PullError`` naming the first
    variable that is unset or empty."""
    env = os.environ if env is None else env
    keys = {}
    for name in sources:
        src = get_source(name)
        value = (env.get(src.env_var) or "").strip()
        if not value:
            others = [s for s in sources if s != name]
            hint = f", or pull from the others only with {' '.join('--source ' + s for s in others)}" if others else ""
            raise PullError(f"{src.env_var} is not set: the {name} source needs an API key (get one at "
                            f"{src.key_url}); export {src.env_var}=...{hint}")
        keys[name] = value
    return keys


def pull(
    opts: PullOptions,
    data_dir: str | Path,
    *,
    keys: Mapping[str, str] | None = None,
    dry_run: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
    on_page: Callable[[StreamReport], None] | None = None,
    on_image: Callable[[dict[str, Any]], None] | None = None,
) -> PullResult:
    """Search every emotion keyword on every source and download the new images into
    ``data_dir`` (layout and rules: module docstring). Resumes what an earlier run left.

    ``keys`` maps source name -> API key (default: the environment variables; ``PullError``
    when one is missing). ``dry_run`` touches neither the network nor the disk: the result
    lists the streams a pull would run (``stop`` says which are already finished) and the
    current counts. ``sleep``/``clock`` drive rate-limit pauses and backoff (tests inject fakes).
    ``on_page`` is called after every search page, ``on_image`` with each new row.
    """
    run = _PullRun(opts, Path(data_dir), clock=clock, on_image=on_image)
    if dry_run:
        return run.plan()
    if keys is None:
        keys = api_keys_from_env(opts.sources)
    missing = [s for s in opts.sources if not keys.get(s)]
    if missing:
        raise PullError(f"no API key for {missing[0]} ({get_source(missing[0]).env_var})")
    run.connect(keys, sleep)
    try:
        with ThreadPoolExecutor(max_workers=opts.download_workers, thread_name_prefix="exe-stream-pull") as pool:
            # 1. images that failed last time, 2. each emotion's streams round-robin, a page each.
            if run.failed:
                run.retry_failed(pool)
                run.checkpoint()
            for group in run.groups:
                progressed = True
                while progressed:
                    progressed = False
                    for st in group:
                        if run.blocked(st):
                            continue
                        run.page(st, pool)
                        run.checkpoint()
                        progressed = True
                        if on_page is not None:
                            on_page(run.reports[id(st)])
    finally:  # also on Ctrl-C: what was fetched is recorded
        run.checkpoint()
    return run.finish()


class _PullRun:
    """The state of one ``pull``: the tables so far, their indexes, the streams and clients."""

    def __init__(self, opts: PullOptions, data_dir: Path, *, clock: Callable[[], float],
                 on_image: Callable[[dict[str, Any]], None] | None) -> None:
        self.opts, self.data_dir, self.clock, self.on_image = opts, data_dir, clock, on_image
        self.raw_dir = data_dir / RAW_DIR
        self.rows = _read_rows(data_dir / RAW_FILE, RAW_SCHEMA)
        self.dups = _read_rows(data_dir / DUPLICATES_FILE, DUPLICATE_SCHEMA)
        saved, self.failed = _load_state(data_dir / STATE_FILE)
        self.result = PullResult(data_dir=data_dir)
        # Indexes: kept rows by (source, id) and by content; duplicates already recorded;
        # ids known to hold a kept image's bytes (never downloaded again); failures of this run.
        self.by_id = {(r["source"], r["id"]): r for r in self.rows}
        self.by_sha = {r["sha256"]: r for r in self.rows}
        self.dup_keys = {(d["source"], d["id"], d["query"]) for d in self.dups}
        self.dup_of: dict[tuple[str, str], dict[str, Any]] = {}
        for d in self.dups:
            kept = self.by_id.get((d["duplicate_of_source"], d["duplicate_of_id"]))
            if kept is not None and d["reason"] == "same_content":
                self.dup_of[(d["source"], d["id"])] = kept
        self.failed_now: set[tuple[str, str]] = set()
        self.label_count: Counter[str] = Counter(r["label"] for r in self.rows)
        self.keyword_count: Counter[tuple[str, str]] = Counter((r["label"], r["keyword"]) for r in self.rows)
        self.before = {label: self.label_count[label] for label in opts.labels}
        # Streams: saved progress where the query, page size and label are unchanged; streams
        # of other sources or older recipes are kept in the state file as they were.
        self.streams: dict[str, _Stream] = {}
        for key, s in saved.items():
            try:
                self.streams[key] = _Stream(**s)
            except TypeError as e:
                raise PullError(f"{data_dir / STATE_FILE}: bad stream entry {key!r} ({e}); delete the file to "
                                "start the streams afresh") from e
        self.groups: list[list[_Stream]] = []
        for label, keywords in opts.emotions:
            group = []
            for kw in keywords:
                for source in opts.sources:
                    q, per_page = opts.query(label, kw), opts.page_size(source)
                    st = self.streams.get(_stream_key(source, q))
                    if st is None or st.per_page != per_page or st.label != label:
                        st = self.streams[_stream_key(source, q)] = _Stream(source, label, kw, q, per_page)
                    group.append(st)
            self.groups.append(group)
        self.reports = {id(st): StreamReport(st.source, st.label, st.keyword, st.query, next_page=st.next_page)
                        for group in self.groups for st in group}
        self.result.streams = [self.reports[id(st)] for group in self.groups for st in group]
        self.clients: dict[str, HttpClient] = {}

    # -- set-up and wrap-up

    def plan(self) -> PullResult:
        """The dry run's result: the streams and why each is (or is not yet) finished."""
        for report_st in (st for group in self.groups for st in group):
            self.reports[id(report_st)].stop = self.blocked(report_st)
        self.result.dry_run = True
        self.result.images = len(self.rows)
        self.result.per_label = {label: (n, n) for label, n in self.before.items()}
        return self.result

    def connect(self, keys: Mapping[str, str], sleep: Callable[[float], None]) -> None:
        """HTTP clients (one per API, one for images) and the image directory."""
        self.keys = dict(keys)
        secrets = [k for k in keys.values() if k]
        self.clients = {
            s: HttpClient(self.opts.http, name=s, secrets=secrets, reset_at=get_source(s).reset_at, sleep=sleep,
                          clock=self.clock)
            for s in self.opts.sources
        }
        self.images = HttpClient(self.opts.http, name="images", secrets=secrets, sleep=sleep, clock=self.clock)
        self.raw_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.raw_dir.glob(TMP_GLOB):  # an interrupted atomic write
            leftover.unlink(missing_ok=True)

    def checkpoint(self) -> None:
        """Rewrite raw.arrow, raw_duplicates.arrow and pull_state.json (atomically, in that order)."""
        _write_rows(self.data_dir / RAW_FILE, self.rows, RAW_SCHEMA, "raw")
        _write_rows(self.data_dir / DUPLICATES_FILE, self.dups, DUPLICATE_SCHEMA, "raw_duplicates")
        _save_state(self.data_dir / STATE_FILE, self.streams, self.failed)

    def finish(self) -> PullResult:
        for st in (st for group in self.groups for st in group):
            r = self.reports[id(st)]
            r.next_page = st.next_page
            r.stop = r.stop or self.blocked(st)
        res = self.result
        res.images = len(self.rows)
        res.per_label = {label: (self.before[label], self.label_count[label]) for label in self.opts.labels}
        res.requests = {s: c.requests for s, c in self.clients.items()}
        return res

    # -- bookkeeping

    def blocked(self, st: _Stream) -> str:
        """Why a stream cannot fetch another page now ("" when it can)."""
        o = self.opts
        if st.done:
            return st.done
        if st.source in self.result.failed_sources:
            return SOURCE_FAILED
        if st.next_page > o.max_pages:
            return MAX_PAGES
        if o.max_per_label and self.label_count[st.label] >= o.max_per_label:
            return LABEL_FULL
        if o.max_per_keyword and self.keyword_count[(st.label, st.keyword)] >= o.max_per_keyword:
            return KEYWORD_FULL
        return ""

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), tz=timezone.utc)

    def _hit_fields(self, hit: Hit, st: _Stream) -> dict[str, Any]:
        return {
            "source": hit.source, "id": hit.id, "url": hit.image_url, "page_url": hit.page_url,
            "query": st.query, "keyword": st.keyword, "label": st.label,
            "photographer": hit.photographer, "photographer_url": hit.photographer_url,
            "license": get_source(hit.source).license,
        }

    def _duplicate(self, hit: Hit, st: _Stream, kept: dict[str, Any], reason: str) -> None:
        """Record that ``hit`` (found by ``st``'s query) repeats the kept row ``kept``."""
        k = (hit.source, hit.id, st.query)
        if k in self.dup_keys:
            return
        self.dup_keys.add(k)
        self.dups.append({**self._hit_fields(hit, st), "sha256": kept["sha256"], "reason": reason,
                          "duplicate_of_source": kept["source"], "duplicate_of_id": kept["id"],
                          "fetched_at": self._now()})
        if reason == "same_content":
            self.dup_of[(hit.source, hit.id)] = kept
        self.result.duplicates += 1

    def _fail_source(self, st: _Stream, message: str) -> None:
        self.result.failed_sources[st.source] = message
        self.result.errors.append(message)
        self.reports[id(st)].stop = SOURCE_FAILED
        log.error("%s", message)

    def _fetch_all(self, pool: ThreadPoolExecutor, hits: Sequence[Hit]) -> Iterator[_Fetched]:
        return pool.map(lambda h: _fetch_image(h, self.raw_dir, self.images), hits)

    def accept(self, got: _Fetched, st: _Stream) -> bool:
        """Record one fetched image: a new row, a content duplicate, or a failure to try again
        next run. True for a new row."""
        hit, res = got.hit, self.result
        fkey = _stream_key(hit.source, hit.id)
        if got.error:
            self.failed_now.add((hit.source, hit.id))
            entry = self.failed.setdefault(fkey, {"hit": dataclasses.asdict(hit), "label": st.label,
                                                  "keyword": st.keyword, "query": st.query, "attempts": 0})
            entry["attempts"] += 1
            entry["error"] = got.error
            if entry["attempts"] >= MAX_IMAGE_ATTEMPTS:
                del self.failed[fkey]
                message = f"{got.error} (gave up after {MAX_IMAGE_ATTEMPTS} runs)"
            else:
                message = f"{got.error} (tried again next run)"
            res.errors.append(message)
            log.warning("%s", message)
            return False
        self.failed.pop(fkey, None)
        if got.adopted:
            res.adopted += 1
        else:
            res.downloads += 1
        assert got.path is not None
        rel = got.path.relative_to(self.data_dir).as_posix()
        kept = self.by_sha.get(got.sha256)
        if kept is not None:
            if kept["path"] != rel:
                got.path.unlink(missing_ok=True)
            self._duplicate(hit, st, kept, "same_content")
            return False
        row = {**self._hit_fields(hit, st), "sha256": got.sha256, "path": rel, "width": got.width,
               "height": got.height, "fetched_at": self._now()}
        self.rows.append(row)
        self.by_id[(hit.source, hit.id)] = row
        self.by_sha[got.sha256] = row
        self.label_count[st.label] += 1
        self.keyword_count[(st.label, st.keyword)] += 1
        st.new += 1
        if id(st) in self.reports:
            self.reports[id(st)].new += 1
        res.new += 1
        if self.on_image is not None:
            self.on_image(row)
        return True

    # -- the work

    def retry_failed(self, pool: ThreadPoolExecutor) -> None:
        """Images that failed in an earlier run, fetched again before any search."""
        todo: list[tuple[Hit, _Stream]] = []
        for fkey, entry in list(self.failed.items()):
            hit = Hit(**entry["hit"])
            if (hit.source, hit.id) in self.by_id or (hit.source, hit.id) in self.dup_of:
                del self.failed[fkey]
                continue
            if hit.source not in self.opts.sources or entry["label"] not in self.opts.labels:
                continue
            if self.opts.max_per_label and self.label_count[entry["label"]] >= self.opts.max_per_label:
                continue
            st = self.streams.get(_stream_key(hit.source, entry["query"])) or _Stream(
                hit.source, entry["label"], entry["keyword"], entry["query"], per_page=0)
            todo.append((hit, st))
        for (_, st), got in zip(todo, self._fetch_all(pool, [h for h, _ in todo])):
            self.accept(got, st)

    def page(self, st: _Stream, pool: ThreadPoolExecutor) -> None:
        """Fetch the stream's next page and its new images; decide whether the stream goes on."""
        o = self.opts
        src: StockSource = get_source(st.source)
        so = o.source_opts(st.source)
        report = self.reports[id(st)]
        page_no = st.next_page
        client = self.clients[st.source]
        req: ApiRequest = src.search_request(so, self.keys[st.source], st.query, page_no, st.per_page)
        try:
            page = src.parse_search(client.get_json(req.url, req.headers), so, page_no, st.per_page)
        except HttpError as e:
            kind = src.classify_error(e.status, e.body) if e.status is not None else "other"
            if kind == "end":  # past the last page
                st.done = report.stop = EXHAUSTED
            elif kind == "auth":
                self._fail_source(st, f"{st.source}: the API refused the key in {src.env_var} (HTTP {e.status}): "
                                      f"{client.redact(e.body) or 'no details'}; stopped this source")
            else:
                self._fail_source(st, f"{client.redact(str(e))}; stopped this source "
                                      f"(query {st.query!r}, page {page_no})")
            return
        except ValueError as e:  # an answer of the wrong shape
            self._fail_source(st, f"{client.redact(str(e))}; stopped this source (query {st.query!r}, page {page_no})")
            return

        # Which hits to fetch: not kept yet, not known duplicates, within the limits, once each.
        # ``fresh`` counts hits new to this stream; one kept before by this very query counts
        # (a page fetched again after an interruption).
        fresh, pending, cut = 0, 0, False
        candidates: list[Hit] = []
        seen: set[str] = set()
        for hit in page.hits:
            if hit.id in seen:
                continue
            seen.add(hit.id)
            kept = self.by_id.get((hit.source, hit.id))
            if kept is not None:
                if kept["query"] == st.query:
                    fresh += 1
                else:
                    self._duplicate(hit, st, kept, "same_id")
                continue
            kept = self.dup_of.get((hit.source, hit.id))
            if kept is not None:
                self._duplicate(hit, st, kept, "same_content")
                continue
            if (hit.source, hit.id) in self.failed_now:
                continue
            if (o.max_per_label and self.label_count[st.label] + pending >= o.max_per_label) or (
                    o.max_per_keyword and self.keyword_count[(st.label, st.keyword)] + pending >= o.max_per_keyword):
                cut = True  # the rest of this page waits for a higher limit
                break
            candidates.append(hit)
            pending += 1
        for got in self._fetch_all(pool, candidates):
            fresh += self.accept(got, st)

        report.pages += 1
        if cut:
            return
        st.pages += 1
        st.next_page = report.next_page = page_no + 1
        if not page.hits or not page.has_next:
            st.done = report.stop = EXHAUSTED
        elif fresh < o.min_new_fraction * len(page.hits):
            st.done = report.stop = FEW_NEW
            log.info("%s %r: page %d had %d new of %d hits; stopping this keyword", st.source, st.query,
                     page_no, fresh, len(page.hits))


def with_overrides(opts: PullOptions, sources: Sequence[str] | None = None, limit: int | None = None) -> PullOptions:
    """``opts`` with the command line's ``--source`` (a subset, in the given order) and
    ``--limit`` (images per emotion) applied."""
    changes: dict[str, Any] = {}
    if sources:
        for s in sources:
            get_source(s)
        changes["sources"] = tuple(dict.fromkeys(sources))
    if limit is not None:
        if limit < 0:
            raise ValueError(f"--limit must be >= 0 (0: no limit), got {limit}")
        changes["max_per_label"] = limit
    return dataclasses.replace(opts, **changes) if changes else opts


__all__ = [
    "DUPLICATE_SCHEMA", "RAW_SCHEMA", "PullError", "PullOptions", "PullResult", "StreamReport",
    "api_keys_from_env", "pull", "raw_path", "read_raw", "with_overrides", "redact",
]
