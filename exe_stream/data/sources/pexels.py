"""Pexels photo search (API v1), as https://www.pexels.com/api/documentation/ describes it.

- ``GET https://api.pexels.com/v1/search?query=Q&page=P&per_page=N``; the key goes in the
  ``Authorization`` header (never in the URL); ``per_page`` is 1-80 (default 15).
- The answer: ``{"page", "per_page", "total_results", "photos": [...], "next_page"}``, where
  ``next_page`` is left out on the last page; each photo has ``id``, ``width``, ``height``,
  ``url`` (its page), ``photographer``, ``photographer_url`` and ``src`` with one URL per
  size: ``original``, ``large2x``, ``large`` (at most 940x650), ``medium``, ``small``,
  ``portrait``, ``landscape``, ``tiny``.
- Successful answers carry ``X-Ratelimit-Limit``, ``X-Ratelimit-Remaining`` and
  ``X-Ratelimit-Reset``, the last being the UNIX time at which the (monthly) quota rolls
  over; a key over its limit gets 429. Default quota: 200 requests per hour, 20,000 per month.
- Content is free to use under the Pexels License; credit the photographer when possible.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from .base import ApiRequest, Hit, SearchPage, SourceOptions

name = "pexels"
env_var = "PEXELS_API_KEY"
key_url = "https://www.pexels.com/api/"  # where to get a key
license = "Pexels License (https://www.pexels.com/license/)"
default_base_url = "https://api.pexels.com/v1/"
per_page_range = (1, 80)
max_query_length = 0  # no documented limit
image_sizes = ("large", "large2x", "medium", "original")
params = {
    "orientation": ("landscape", "portrait", "square"),
    "size": ("large", "medium", "small"),  # minimum photo size (24 MP, 12 MP, 4 MP)
}
default_params: tuple[tuple[str, str], ...] = ()


def search_request(opts: SourceOptions, key: str, query: str, page: int, per_page: int) -> ApiRequest:
    """``GET <base>/search?query=..&page=..&per_page=..`` with ``Authorization: <key>``."""
    q = urllib.parse.urlencode([("query", query), ("page", page), ("per_page", per_page), *opts.params])
    return ApiRequest(url=f"{opts.base_url.rstrip('/')}/search?{q}", headers={"Authorization": key}, secret=key)


def parse_search(payload: Any, opts: SourceOptions, page: int, per_page: int) -> SearchPage:
    """Hits of one ``/v1/search`` answer; ``ValueError`` when it lacks the documented fields."""
    try:
        photos = payload["photos"]
        total = int(payload.get("total_results", 0))
        hits = tuple(
            Hit(
                source=name,
                id=str(int(p["id"])),
                image_url=str(p["src"][opts.image]),
                page_url=str(p.get("url") or ""),
                photographer=str(p.get("photographer") or ""),
                photographer_url=str(p.get("photographer_url") or ""),
                width=int(p.get("width") or 0),
                height=int(p.get("height") or 0),
            )
            for p in photos
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"pexels: unexpected search answer ({type(e).__name__}: {e})") from e
    has_next = bool(payload.get("next_page")) and len(hits) > 0
    return SearchPage(hits=hits, total=total, has_next=has_next)


def reset_at(value: str, now: float) -> float | None:
    """Pexels sends the UNIX time at which the quota period rolls over."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def classify_error(status: int, body: str) -> str:
    """401/403: the key is wrong or missing; everything else is a plain error."""
    return "auth" if status in (401, 403) else "other"
