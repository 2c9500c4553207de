"""A loopback fake of the Pexels and Pixabay search APIs, serving real face photos.

Standard library only (``http.server`` in threads, port 0). It answers as the public API
documentation describes (``exe_stream/data/sources/pexels.py`` and ``pixabay.py`` sum it up):

- Pexels: ``GET /v1/search?query=&page=&per_page=`` (1-80) with ``Authorization: <key>``;
  ``{"page", "per_page", "total_results", "photos": [{"id", "width", "height", "url",
  "photographer", "photographer_url", "photographer_id", "avg_color", "src": {...}, "alt"}],
  "next_page"}`` (``next_page`` left out on the last page); ``X-Ratelimit-Limit``,
  ``-Remaining`` and ``-Reset`` (UNIX time) on successful answers only; 401 for a bad key,
  429 with no rate-limit headers when the quota is spent.
- Pixabay: ``GET /api/?key=&q=&page=&per_page=`` (3-200); ``{"total", "totalHits", "hits":
  [{"id", "pageURL", "type", "tags", "previewURL", "webformatURL", "largeImageURL",
  "imageWidth", "imageHeight", "user_id", "user", "userImageURL", ...}]}``;
  ``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset`` (seconds to the window's end) on every
  answer; ``400 [ERROR 400] ...`` text for a bad key, a bad ``per_page`` or a page past the
  results; 429 when the window's requests are spent.
- Images come from a third server (the "CDN": ``/pexels/photos/<id>/pexels-photo-<id>.jpeg``,
  ``/pixabay/get/<hash>_1280.jpg``), without a key, like the real image hosts. Every size
  of a photo is the same bytes here.

Use::

    photos = face_photos(24)                         # real faces, all different bytes
    catalog = Catalog.for_emotions({"happy": ["happy", "smiling"], "sad": ["sad"]}, photos)
    with FakeStockAPI(catalog) as api:               # or api = FakeStockAPI(catalog).start()
        api.base_urls                                # {"pexels": "http://127.0.0.1:P/v1/", "pixabay": ...}
        api.keys                                     # the keys it accepts; set them as PEXELS_API_KEY / PIXABAY_API_KEY
        write_recipe(path, {"happy": [...]}, api, data_dir=tmp / "data")   # a recipe pointing at the fake
        ...
        api.search_requests["pexels"]                # search requests received (failures included)
        api.image_downloads                          # Counter: CDN path -> times served
        api.fail("pixabay", 503, times=2)            # the next 2 searches answer 503 (times=None: forever;
                                                     # after=N: from the N+1-th on; retry_after=, body=)
        api.fail_images(500, times=1)                # the next image answers 500
        api.set_rate_limit("pexels", limit=3, window=60)   # 3 requests per 60 s of api.clock()
        api.delay("pexels", 0.5)                     # answer searches 0.5 s late (real time)
        api.redirect_searches("pexels")              # searches answer 302 to the CDN host

Photo ``i`` of the catalog is id ``PEXELS_ID0 + i`` on Pexels and ``PIXABAY_ID0 + i`` on
Pixabay: the same photo under two queries of one site is the same id; on both sites it is
the same bytes under two ids. The photos are the test images in ``tests/data`` (public-domain
portraits and an aligned face crop; see tests/data/LICENSE.md) and frames of the bundled
``carphone_pristine.mp4``, varied by mirroring, crops and brightness; BlazeFace (full range)
finds a face in every one (tests/test_data_pull.py checks the first 33).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Mapping, Sequence

DATA = Path(__file__).parent / "data"
CARPHONE = Path(__file__).parent.parent / "exe_stream" / "assets" / "clips" / "carphone_pristine.mp4"
PEXELS_ID0, PIXABAY_ID0 = 100000, 900000
PEXELS_KEY = "pexels-test-key-5up3r-53cr3t"
PIXABAY_KEY = "12345678-pixabaytestkey5ecret"


# -- photos ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FakePhoto:
    """One served picture."""

    data: bytes          # encoded file (JPEG)
    width: int
    height: int
    photographer: str    # credited author
    origin: str          # what it was made from (for test messages)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@lru_cache(maxsize=1)
def _base_pictures() -> tuple[tuple[str, object], ...]:
    """(name, PIL RGB image) of the real face pictures: 3 still images + 8 carphone frames."""
    import av
    from PIL import Image

    bases = []
    for name in ("astronaut.png", "grace_hopper_512x512.jpg"):
        bases.append((name, Image.open(DATA / name).convert("RGB").resize((320, 320), Image.BILINEAR)))
    # The aligned 112x112 face crop fills its picture (no detector finds a face that touches
    # every edge): framed in a plain 320x320 photo, as a portrait would be.
    face = Image.open(DATA / "Tom_Hanks_54745.png").convert("RGB").resize((192, 192), Image.BILINEAR)
    framed = Image.new("RGB", (320, 320), (128, 120, 112))
    framed.paste(face, (64, 64))
    bases.append(("Tom_Hanks_54745.png", framed))
    with av.open(str(CARPHONE)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i % 15 == 0:
                im = frame.to_image().convert("RGB")  # 176x144
                bases.append((f"carphone#{i}", im.resize((352, 288), Image.BILINEAR)))
            if len(bases) >= 11:
                break
    return tuple(bases)


@lru_cache(maxsize=8)
def face_photos(n: int) -> tuple[FakePhoto, ...]:
    """``n`` JPEG photos of real faces, all with different bytes: the base pictures, then the
    same again mirrored, cropped (keeping the face) and brightened in turn."""
    from PIL import Image, ImageEnhance

    bases = _base_pictures()
    photos: list[FakePhoto] = []
    seen: set[str] = set()
    k = 0
    while len(photos) < n:
        name, im = bases[k % len(bases)]
        variant = k // len(bases)
        k += 1
        w, h = im.size
        if variant % 2 == 1:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        shrink = 0.04 * ((variant + 1) // 2 % 5)           # 0 .. 16 % off each side pair
        if shrink:
            dx, dy = int(w * shrink / 2), int(h * shrink / 2)
            im = im.crop((dx, dy, w - dx, h - dy))
        if variant >= 2:
            im = ImageEnhance.Brightness(im).enhance(1.0 + 0.05 * (variant - 1))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        data = buf.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        if sha in seen:  # pragma: no cover - the variants differ by construction
            continue
        seen.add(sha)
        photos.append(FakePhoto(data=data, width=im.size[0], height=im.size[1],
                                photographer=f"Photographer {len(photos)}", origin=f"{name} v{variant}"))
    return tuple(photos)


# -- catalog --------------------------------------------------------------------------


@dataclass
class Catalog:
    """What each API finds: ``results[api][query]`` = photo indices, in result order."""

    photos: Sequence[FakePhoto]
    results: dict[str, dict[str, list[int]]] = field(default_factory=lambda: {"pexels": {}, "pixabay": {}})

    @classmethod
    def for_emotions(
        cls,
        emotions: Mapping[str, Sequence[str]],
        photos: Sequence[FakePhoto] | None = None,
        *,
        per_query: int = 3,
        template: str = "{keyword} face",
        shared_across_sources: int = 1,
        shared_across_keywords: int = 1,
    ) -> "Catalog":
        """Each query (``template`` per keyword) finds ``per_query`` photos on each API.

        Pexels' photos of a query are all fresh; Pixabay's first ``shared_across_sources``
        are Pexels' first photos of the same query (same bytes, other id: content
        duplicates), the rest fresh; each keyword after an emotion's first repeats
        ``shared_across_keywords`` photos of the emotion's first keyword on both APIs (same
        id on one site: id duplicates). ``photos`` default: ``face_photos`` of the number
        needed.
        """
        queries = [(label, kw) for label, kws in emotions.items() for kw in kws]
        need = len(queries) * per_query * 2
        photos = list(photos) if photos is not None else list(face_photos(need))
        cat = cls(photos=photos)
        nxt = iter(range(len(photos)))

        def fresh() -> int:
            try:
                return next(nxt)
            except StopIteration:
                raise ValueError(f"Catalog.for_emotions needs more than {len(photos)} photos") from None

        for label, kws in emotions.items():
            first_px: list[int] = []
            first_pb: list[int] = []
            for j, kw in enumerate(kws):
                q = template.format(keyword=kw, label=label)
                reuse_px = first_px[:shared_across_keywords] if j else []
                reuse_pb = first_pb[:shared_across_keywords] if j else []
                px = reuse_px + [fresh() for _ in range(per_query - len(reuse_px))]
                shared = [i for i in px if i not in reuse_px][:shared_across_sources]
                pb = reuse_pb + shared
                pb += [fresh() for _ in range(per_query - len(pb))]
                cat.results["pexels"][q] = px
                cat.results["pixabay"][q] = pb
                if j == 0:
                    first_px, first_pb = px, pb
        return cat

    def distinct_photos(self, apis: Sequence[str] = ("pexels", "pixabay"), queries: Sequence[str] | None = None) -> set[int]:
        """Photo indices reachable through ``apis`` (and ``queries``, default all)."""
        out: set[int] = set()
        for api in apis:
            for q, idx in self.results[api].items():
                if queries is None or q in queries:
                    out.update(idx)
        return out


# -- server ---------------------------------------------------------------------------


@dataclass
class _Limit:
    limit: int
    window: float
    remaining: int = -1
    window_end: float = 0.0


@dataclass
class _Failure:
    status: int
    times: int | None        # None: forever
    retry_after: str | None
    body: str | None
    echo_url: bool
    after: int = 0           # requests let through before the failures start


@dataclass
class Received:
    """One request as the fake saw it."""

    api: str                 # "pexels", "pixabay" or "cdn"
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    status: int = 0


class FakeStockAPI:
    """Three loopback HTTP servers: the Pexels API, the Pixabay API and an image host."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        keys: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.catalog = catalog
        self.keys = dict(keys or {"pexels": PEXELS_KEY, "pixabay": PIXABAY_KEY})
        self.clock = clock
        self.lock = threading.Lock()
        self.search_requests: Counter[str] = Counter()
        self.image_downloads: Counter[str] = Counter()
        self.received: list[Received] = []
        self._failures: dict[str, list[_Failure]] = {"pexels": [], "pixabay": [], "cdn": []}
        self._delay: dict[str, float] = {"pexels": 0.0, "pixabay": 0.0, "cdn": 0.0}
        self._redirect: set[str] = set()
        self._limits = {"pexels": _Limit(20000, 30 * 86400.0), "pixabay": _Limit(100, 60.0)}
        self._servers: dict[str, ThreadingHTTPServer] = {}
        self._threads: list[threading.Thread] = []
        self.base_urls: dict[str, str] = {}
        self.cdn_url = ""

    # -- life cycle

    def start(self) -> "FakeStockAPI":
        """Start the servers on free loopback ports; fills ``base_urls`` and ``cdn_url``."""
        for api in ("pexels", "pixabay", "cdn"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler(api))
            server.daemon_threads = True
            t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, name=f"fake-{api}",
                                 daemon=True)
            t.start()
            self._servers[api] = server
            self._threads.append(t)
        host = lambda api: f"http://127.0.0.1:{self._servers[api].server_address[1]}"  # noqa: E731
        self.base_urls = {"pexels": host("pexels") + "/v1/", "pixabay": host("pixabay") + "/api/"}
        self.cdn_url = host("cdn")
        return self

    def stop(self) -> None:
        """Shut the servers down."""
        for server in self._servers.values():
            server.shutdown()
            server.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> "FakeStockAPI":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- switches

    def fail(self, api: str, status: int, times: int | None = 1, *, after: int = 0, retry_after: str | None = None,
             body: str | None = None, echo_url: bool = False) -> None:
        """After ``after`` more searches on ``api``, the next ``times`` (None: all) answer
        ``status`` with ``body`` and ``Retry-After: retry_after``; ``echo_url`` puts the request
        URL (key and all) into the body, as a careless server might."""
        with self.lock:
            self._failures[api].append(_Failure(status, times, retry_after, body, echo_url, after))

    def fail_images(self, status: int, times: int | None = 1) -> None:
        """The next ``times`` image requests answer ``status``."""
        self.fail("cdn", status, times)

    def clear_failures(self) -> None:
        with self.lock:
            for v in self._failures.values():
                v.clear()
            self._redirect.clear()

    def set_rate_limit(self, api: str, limit: int, window: float) -> None:
        """``limit`` searches per ``window`` seconds of ``clock()`` (starting now)."""
        with self.lock:
            self._limits[api] = _Limit(limit, window, remaining=limit, window_end=self.clock() + window)

    def delay(self, api: str, seconds: float) -> None:
        """Answer ``api`` requests ``seconds`` late (real time)."""
        self._delay[api] = seconds

    def redirect_searches(self, api: str) -> None:
        """Searches on ``api`` answer 302 to the image host (another host:port)."""
        with self.lock:
            self._redirect.add(api)

    # -- helpers for tests

    def photo_id(self, api: str, index: int) -> str:
        return str((PEXELS_ID0 if api == "pexels" else PIXABAY_ID0) + index)

    def photo_index(self, api: str, photo_id: str | int) -> int:
        return int(photo_id) - (PEXELS_ID0 if api == "pexels" else PIXABAY_ID0)

    def image_path(self, api: str, index: int) -> str:
        i = self.photo_id(api, index)
        if api == "pexels":
            return f"/pexels/photos/{i}/pexels-photo-{i}.jpeg"
        return f"/pixabay/get/{hashlib.md5(i.encode()).hexdigest()[:16]}-{i}_1280.jpg"

    def env(self) -> dict[str, str]:
        """Environment variables holding the accepted keys."""
        return {"PEXELS_API_KEY": self.keys["pexels"], "PIXABAY_API_KEY": self.keys["pixabay"]}

    # -- request handling

    def _next_failure(self, api: str) -> _Failure | None:
        with self.lock:
            queue = self._failures[api]
            while queue:
                f = queue[0]
                if f.after > 0:
                    f.after -= 1
                    return None
                if f.times is None:
                    return f
                if f.times > 0:
                    f.times -= 1
                    if f.times == 0:
                        queue.pop(0)
                    return f
                queue.pop(0)
        return None

    def _take_quota(self, api: str) -> tuple[bool, dict[str, str]]:
        """(allowed, rate-limit headers) for one search."""
        with self.lock:
            lim = self._limits[api]
            now = self.clock()
            if lim.remaining < 0 or now >= lim.window_end:
                lim.remaining, lim.window_end = lim.limit, now + lim.window
            ok = lim.remaining > 0
            if ok:
                lim.remaining -= 1
            reset = (str(int(lim.window_end)) if api == "pexels"
                     else str(max(0, math.ceil(lim.window_end - now))))
            return ok, {"X-Ratelimit-Limit": str(lim.limit), "X-Ratelimit-Remaining": str(lim.remaining),
                        "X-Ratelimit-Reset": reset}

    def _handler(self, api: str):
        return _make_handler(self, api)

    def _serve_search(self, api: str, h, rec: Received) -> None:
        with self.lock:
            self.search_requests[api] += 1
        full_url = f"http://127.0.0.1:{self._servers[api].server_address[1]}{h.path}"
        if api in self._redirect:
            _reply(h, rec, 302, b"", "text/plain", {"Location": f"{self.cdn_url}/redirected{h.path}"})
            return
        failure = self._next_failure(api)
        if failure is not None:
            body = failure.body if failure.body is not None else (
                '{"error": "Internal Server Error"}' if api == "pexels" else f"[ERROR {failure.status}] Server error.")
            if failure.echo_url:
                body += f" while answering {full_url}"
            headers = {"Retry-After": failure.retry_after} if failure.retry_after is not None else {}
            _reply(h, rec, failure.status, body.encode(), "text/plain", headers)
            return
        if api == "pexels":
            self._pexels(h, rec)
        else:
            self._pixabay(h, rec)

    def _hits(self, api: str, query: str) -> list[int]:
        return list(self.catalog.results.get(api, {}).get(query, []))

    def _pexels(self, h, rec: Received) -> None:
        if rec.path.rstrip("/") != "/v1/search":
            _reply(h, rec, 404, b'{"error": "Not found"}', "application/json")
            return
        if h.headers.get("Authorization") != self.keys["pexels"]:
            _reply(h, rec, 401, b'{"error": "Unauthorized"}', "application/json")
            return
        ok, rate = self._take_quota("pexels")
        if not ok:  # the docs: rate-limit headers come with successful answers only
            _reply(h, rec, 429, b'{"error": "Too Many Requests"}', "application/json")
            return
        p = rec.params
        query = p.get("query", "")
        page = max(1, int(p.get("page", 1)))
        per_page = max(1, min(80, int(p.get("per_page", 15))))
        idx = self._hits("pexels", query)
        chunk = idx[(page - 1) * per_page: page * per_page]
        photos = []
        for i in chunk:
            ph = self.catalog.photos[i]
            pid = self.photo_id("pexels", i)
            img = f"{self.cdn_url}{self.image_path('pexels', i)}"
            photos.append({
                "id": int(pid), "width": ph.width, "height": ph.height,
                "url": f"https://www.pexels.com/photo/face-{pid}/",
                "photographer": ph.photographer, "photographer_url": f"https://www.pexels.com/@p{i}",
                "photographer_id": 5000 + i, "avg_color": "#7E7E7E",
                "src": {"original": img, "large2x": img + "?auto=compress&cs=tinysrgb&dpr=2&h=650&w=940",
                        "large": img + "?auto=compress&cs=tinysrgb&h=650&w=940",
                        "medium": img + "?auto=compress&cs=tinysrgb&h=350",
                        "small": img + "?auto=compress&cs=tinysrgb&h=130",
                        "portrait": img + "?auto=compress&cs=tinysrgb&fit=crop&h=1200&w=800",
                        "landscape": img + "?auto=compress&cs=tinysrgb&fit=crop&h=627&w=1200",
                        "tiny": img + "?auto=compress&cs=tinysrgb&dpr=1&fit=crop&h=200&w=280"},
                "liked": False, "alt": f"{query} photo",
            })
        doc = {"page": page, "per_page": per_page, "photos": photos, "total_results": len(idx)}
        if page * per_page < len(idx):
            doc["next_page"] = (f"{self.base_urls['pexels']}search/?"
                                + urllib.parse.urlencode({"page": page + 1, "per_page": per_page, "query": query}))
        if page > 1:
            doc["prev_page"] = (f"{self.base_urls['pexels']}search/?"
                                + urllib.parse.urlencode({"page": page - 1, "per_page": per_page, "query": query}))
        _reply(h, rec, 200, json.dumps(doc).encode(), "application/json", rate)

    def _pixabay(self, h, rec: Received) -> None:
        if rec.path.rstrip("/") != "/api":
            _reply(h, rec, 404, b"Not found", "text/plain")
            return
        p = rec.params
        if "key" not in p:
            _reply(h, rec, 400, b'[ERROR 400] "key" is missing.', "text/plain")
            return
        if p["key"] != self.keys["pixabay"]:
            _reply(h, rec, 400, b"[ERROR 400] Invalid API key. Note: This value is case-sensitive.", "text/plain")
            return
        ok, rate = self._take_quota("pixabay")
        if not ok:
            _reply(h, rec, 429, b"[ERROR 429] Too many requests.", "text/plain", rate)
            return
        per_page = int(p.get("per_page", 20))
        if not 3 <= per_page <= 200:
            _reply(h, rec, 400, b'[ERROR 400] "per_page" is out of valid range.', "text/plain", rate)
            return
        page = int(p.get("page", 1))
        idx = self._hits("pixabay", p.get("q", ""))
        if page < 1 or (page > 1 and (page - 1) * per_page >= len(idx)):
            _reply(h, rec, 400, b'[ERROR 400] "page" is out of valid range.', "text/plain", rate)
            return
        hits = []
        for i in idx[(page - 1) * per_page: page * per_page]:
            ph = self.catalog.photos[i]
            pid = self.photo_id("pixabay", i)
            img = f"{self.cdn_url}{self.image_path('pixabay', i)}"
            hits.append({
                "id": int(pid), "pageURL": f"https://pixabay.com/photos/face-{pid}/", "type": "photo",
                "tags": "face, portrait, emotion",
                "previewURL": img.replace("_1280", "_150"), "previewWidth": 150, "previewHeight": 150,
                "webformatURL": img.replace("_1280", "_640"), "webformatWidth": 640, "webformatHeight": 640,
                "largeImageURL": img, "imageWidth": ph.width, "imageHeight": ph.height,
                "imageSize": len(ph.data), "views": 10, "downloads": 5, "collections": 0, "likes": 1,
                "comments": 0, "user_id": 7000 + i, "user": f"user{i}",
                "userImageURL": "https://cdn.pixabay.com/user/x_250x250.jpg",
            })
        doc = {"total": len(idx) + 1000, "totalHits": min(len(idx), 500), "hits": hits}
        _reply(h, rec, 200, json.dumps(doc).encode(), "application/json", rate)

    def _serve_image(self, h, rec: Received) -> None:
        if rec.path.startswith("/redirected"):
            _reply(h, rec, 401, b'{"error": "Unauthorized"}', "application/json")
            return
        failure = self._next_failure("cdn")
        if failure is not None:
            _reply(h, rec, failure.status, b"error", "text/plain")
            return
        for api in ("pexels", "pixabay"):
            prefix = f"/{api}/"
            if rec.path.startswith(prefix):
                tail = rec.path.rsplit("/", 1)[-1]
                digits = tail.split("pexels-photo-")[-1].split(".")[0] if api == "pexels" else tail.split("-")[-1].split("_")[0]
                try:
                    i = self.photo_index(api, digits)
                except ValueError:
                    break
                if 0 <= i < len(self.catalog.photos) and rec.path == self.image_path(api, i):
                    with self.lock:
                        self.image_downloads[rec.path] += 1
                    _reply(h, rec, 200, self.catalog.photos[i].data, "image/jpeg")
                    return
        _reply(h, rec, 404, b"not found", "text/plain")


def _reply(h: BaseHTTPRequestHandler, rec: Received, status: int, body: bytes, ctype: str,
           headers: Mapping[str, str] | None = None) -> None:
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body)))
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(body)
    rec.status = status


def _make_handler(fake: FakeStockAPI, api: str):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server hook
            parts = urllib.parse.urlsplit(self.path)
            rec = Received(api, parts.path, dict(urllib.parse.parse_qsl(parts.query)), dict(self.headers.items()))
            with fake.lock:
                fake.received.append(rec)
            if fake._delay[api]:
                time.sleep(fake._delay[api])
            try:
                if api == "cdn":
                    fake._serve_image(self, rec)
                else:
                    fake._serve_search(api, self, rec)
            except (BrokenPipeError, ConnectionResetError):
                pass

    return Handler


# -- recipes --------------------------------------------------------------------------


def recipe_text(emotions: Mapping[str, Sequence[str]], api: FakeStockAPI | None, *, data_dir: Path | str | None = None,
                **pull: object) -> str:
    """TOML of a recipe whose ``[pull]`` searches ``emotions`` on the fake (``api``; None:
    the real APIs). ``pull`` adds keys to ``[pull]`` (ints, floats, strings, lists, bools)."""

    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v))

    lines = ['name = "fake-stock"']
    if data_dir is not None:
        lines.append(f"data_dir = {value(str(data_dir))}")
    lines += ["", "[pull]"]
    pull = {"backoff": 0.0, **pull}
    for k, v in pull.items():
        lines.append(f"{k} = {value(v)}")
    lines += ["", "[pull.emotions]"]
    for label, kws in emotions.items():
        lines.append(f"{label} = {value(list(kws))}")
    if api is not None:
        for name, url in api.base_urls.items():
            lines += ["", f"[pull.{name}]", f"base_url = {value(url)}"]
    return "\n".join(lines) + "\n"


def write_recipe(path: Path, emotions: Mapping[str, Sequence[str]], api: FakeStockAPI | None, **kw: object) -> Path:
    """Write ``recipe_text(...)`` to ``path`` and return it."""
    path = Path(path)
    path.write_text(recipe_text(emotions, api, **kw))
    return path
