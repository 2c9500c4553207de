"""HTTP for the stock-photo APIs, standard library only (``urllib``).

``HttpClient.get`` sends one GET and deals with what can go wrong:

- **Rate limits.** After every answer it reads ``X-RateLimit-Remaining`` and
  ``X-RateLimit-Reset`` (what the reset value means is the source's business:
  ``reset_at``). When the last answer said ``min_remaining`` or fewer requests are left, the
  next request first sleeps until the window resets; a window that resets later than
  ``max_wait`` seconds from now (Pexels' monthly quota) raises ``RateLimitError`` instead of
  sleeping for days.
- **Retries.** 429, 500, 502, 503, 504, time-outs and dropped connections are retried
  ``max_retries`` times: after ``Retry-After`` when the answer has one, after the rate-limit
  reset for a 429 when it is known, else after ``backoff * 2**attempt`` seconds (capped at
  ``max_backoff``). Other 4xx answers are not retried.
- **Keys.** Every text this module logs or raises goes through ``redact``, which replaces
  each known secret (raw and URL-encoded) by ``***``: Pixabay's key is part of every request
  URL. A redirect to another host drops the ``Authorization`` header (urllib's default
  handler forwards every header to the new host).

``sleep`` and ``clock`` are injectable so tests run rate-limit pauses and backoffs without
waiting.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from .. import __version__
from ..errors import ExeStreamError

log = logging.getLogger(__name__)

#: Statuses worth another try.
RETRY_STATUSES = (429, 500, 502, 503, 504)
REDACTED = "***"


@dataclass(frozen=True)
class HttpOptions:
    """Time-outs, retries and rate-limit behaviour of one client."""

    timeout: float = 30.0         # seconds to wait for the connection and for each read
    max_retries: int = 4          # retries of a 429, a 5xx or a network error before giving up
    backoff: float = 1.0          # seconds before the first retry, doubled for each further one
    max_backoff: float = 60.0     # longest wait between two tries
    min_remaining: int = 1        # pause before a request when at most this many remain in the window
    max_wait: float = 900.0       # longest rate-limit pause; a longer one raises RateLimitError
    max_bytes: int = 50 * 2**20   # largest answer accepted, in bytes

    def __post_init__(self) -> None:
        for name in ("timeout", "max_backoff", "max_wait"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)!r}")
        if self.backoff < 0:
            raise ValueError(f"backoff must be >= 0 seconds, got {self.backoff!r}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries!r}")
        if self.min_remaining < 0:
            raise ValueError(f"min_remaining must be >= 0, got {self.min_remaining!r}")
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {self.max_bytes!r}")


class HttpError(ExeStreamError):
    """A request failed for good. ``status`` is the last HTTP status (None for a network
    error), ``body`` the start of the last answer's text (redacted). The message never holds
    a secret."""

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class RateLimitError(HttpError):
    """The API's rate-limit window resets later than ``HttpOptions.max_wait``."""


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret, raw or URL-encoded, replaced by ``***``."""
    for s in secrets:
        if not s:
            continue
        for form in {s, urllib.parse.quote(s, safe=""), urllib.parse.quote_plus(s)}:
            text = text.replace(form, REDACTED)
    return text


@dataclass
class Response:
    """One answer: status, headers (case-insensitive lookup), body bytes."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str  # redacted

    def header(self, name: str) -> str | None:
        """Header ``name``, case-insensitively."""
        lname = name.lower()
        for k, v in self.headers.items():
            if k.lower() == lname:
                return v
        return None


@dataclass
class RateLimit:
    """What the API last said about its rate limit (None: unknown)."""

    limit: int | None = None
    remaining: int | None = None
    reset_at: float | None = None  # absolute time on the client's clock


class _NoCrossHostAuth(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never carry ``Authorization`` to a different host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 - urllib hook
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            old_host = urllib.parse.urlsplit(req.full_url).netloc.lower()
            new_host = urllib.parse.urlsplit(new.full_url).netloc.lower()
            if old_host != new_host:
                for k in list(new.headers):
                    if k.lower() == "authorization":
                        del new.headers[k]
        return new


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """A ``Retry-After`` value (seconds, or an HTTP date) as seconds from ``now``."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


class HttpClient:
    """GETs with retries, rate-limit pauses and redaction (see the module docstring).

    ``name`` prefixes every message (the source name); ``secrets`` are redacted from every
    message; ``reset_at(value, now)`` turns an ``X-RateLimit-Reset`` value into an absolute
    time (None: this client ignores rate-limit headers, e.g. for image downloads).
    """

    def __init__(
        self,
        opts: HttpOptions,
        *,
        name: str,
        secrets: Iterable[str] = (),
        reset_at: Callable[[str, float], float | None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.opts = opts
        self.name = name
        self.secrets = tuple(s for s in secrets if s)
        self.reset_parser = reset_at
        self.sleep = sleep
        self.clock = clock
        self.rate = RateLimit()
        self.requests = 0  # GETs sent, retries included
        self._opener = urllib.request.build_opener(_NoCrossHostAuth())
        self._opener.addheaders = [("User-Agent", f"exe-stream/{__version__} (+https://pypi.org/project/exe-stream/)")]

    def redact(self, text: str) -> str:
        """``text`` without this client's secrets."""
        return redact(text, self.secrets)

    # -- rate limit -------------------------------------------------------------------

    def _update_rate(self, resp_headers: Mapping[str, str]) -> None:
        if self.reset_parser is None:
            return
        lower = {k.lower(): v for k, v in resp_headers.items()}
        remaining = _int(lower.get("x-ratelimit-remaining"))
        if remaining is None:
            return
        reset = lower.get("x-ratelimit-reset")
        self.rate = RateLimit(
            limit=_int(lower.get("x-ratelimit-limit")),
            remaining=remaining,
            reset_at=self.reset_parser(reset, self.clock()) if reset is not None else None,
        )

    def _pause_for_rate_limit(self) -> None:
        r = self.rate
        if r.remaining is None or r.remaining > self.opts.min_remaining:
            return
        now = self.clock()
        if r.reset_at is None or r.reset_at <= now:
            return
        wait = r.reset_at - now + 1.0  # a second's margin past the reset
        if wait > self.opts.max_wait:
            raise RateLimitError(
                f"{self.name}: rate limit: {r.remaining} request(s) left of {r.limit if r.limit is not None else '?'} "
                f"until the window resets in {wait:.0f} s, longer than max_wait ({self.opts.max_wait:.0f} s); "
                "stopping this source (run again later to resume)")
        log.warning("%s: %d request(s) left in this rate-limit window; pausing %.0f s until it resets",
                    self.name, r.remaining, wait)
        self.sleep(wait)
        self.rate = RateLimit()

    # -- requests ---------------------------------------------------------------------

    def _send(self, url: str, headers: Mapping[str, str]) -> Response:
        """One GET. Returns any HTTP answer (errors included); raises OSError-likes for
        network failures and HttpError for an oversized body."""
        req = urllib.request.Request(url, headers=dict(headers), method="GET")
        self.requests += 1
        try:
            with self._opener.open(req, timeout=self.opts.timeout) as resp:
                body = resp.read(self.opts.max_bytes + 1)
                status, hdrs = resp.status, dict(resp.headers.items())
        except urllib.error.HTTPError as e:
            try:
                body = e.read(self.opts.max_bytes + 1)
            except (OSError, http.client.HTTPException):
                body = b""
            status, hdrs = e.code, dict(e.headers.items()) if e.headers is not None else {}
            e.close()
        if len(body) > self.opts.max_bytes:
            raise HttpError(f"{self.name}: answer from {self.redact(url)} is larger than {self.opts.max_bytes} bytes",
                            status=status)
        return Response(status=status, headers=hdrs, body=body, url=self.redact(url))

    def _retry_wait(self, attempt: int, resp: Response | None) -> float:
        now = self.clock()
        if resp is not None:
            after = retry_after_seconds(resp.header("Retry-After"), now)
            if after is not None:
                return after
            if resp.status == 429 and self.rate.reset_at is not None and self.rate.reset_at > now:
                return self.rate.reset_at - now + 1.0
        return min(self.opts.max_backoff, self.opts.backoff * (2 ** attempt))

    def get(self, url: str, headers: Mapping[str, str] | None = None) -> Response:
        """GET ``url``; retries as the module docstring says. Returns a 2xx answer.

        Raises ``HttpError`` (``status`` = the last status, None for a network error) when an
        answer is a non-retryable error or the retries are spent, ``RateLimitError`` when the
        API asks for a longer wait than ``max_wait``. Messages are redacted.
        """
        headers = headers or {}
        shown = self.redact(url)
        attempt = 0
        last_error: BaseException | None = None
        while True:
            self._pause_for_rate_limit()
            resp: Response | None = None
            try:
                resp = self._send(url, headers)
                problem = f"HTTP {resp.status}"
            except (urllib.error.URLError, http.client.HTTPException, socket.timeout, TimeoutError,
                    ConnectionError) as e:
                reason = getattr(e, "reason", None) or e
                last_error = e
                problem = self.redact(f"network error ({type(e).__name__}: {reason})")
            except ValueError as e:  # a malformed URL (its text holds the URL, key and all): not chained
                raise HttpError(f"{self.name}: bad URL {shown}: {self.redact(str(e))}") from None
            if resp is not None:
                self._update_rate(resp.headers)
                if 200 <= resp.status < 300:
                    return resp
                if resp.status not in RETRY_STATUSES:
                    text = self.redact(resp.body[:300].decode("utf-8", "replace")).strip()
                    raise HttpError(f"{self.name}: HTTP {resp.status} from {shown}: {text or '(empty answer)'}",
                                    status=resp.status, body=text)
            if attempt >= self.opts.max_retries:
                status = resp.status if resp is not None else None
                text = self.redact(resp.body[:300].decode("utf-8", "replace")).strip() if resp is not None else ""
                raise HttpError(f"{self.name}: {problem} from {shown}, still failing after "
                                f"{self.opts.max_retries} retries" + (f": {text}" if text else ""),
                                status=status, body=text) from (last_error if resp is None else None)
            wait = self._retry_wait(attempt, resp)
            if wait > self.opts.max_wait:
                raise RateLimitError(f"{self.name}: {problem} from {shown}; the API asks to wait {wait:.0f} s, "
                                     f"longer than max_wait ({self.opts.max_wait:.0f} s); stopping this source "
                                     "(run again later to resume)", status=resp.status if resp else None)
            attempt += 1
            log.warning("%s: %s from %s; retry %d/%d in %.1f s", self.name, problem, shown, attempt,
                        self.opts.max_retries, wait)
            self.sleep(wait)

    def get_json(self, url: str, headers: Mapping[str, str] | None = None) -> Any:
        """``get`` and decode the JSON body; ``HttpError`` when it is not JSON."""
        resp = self.get(url, headers)
        try:
            return json.loads(resp.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise HttpError(f"{self.name}: answer from {resp.url} is not JSON ({type(e).__name__})",
                            status=resp.status) from e
