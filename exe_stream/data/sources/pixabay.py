"""Pixabay image search, as https://pixabay.com/api/docs/ describes it.

- ``GET https://pixabay.com/api/?key=KEY&q=Q&page=P&per_page=N``: the key is a query
  parameter, so every URL of this API is a secret and is redacted before it is logged;
  ``q`` is at most 100 characters; ``per_page`` is 3-200 (default 20); a query reaches at
  most 500 images (``totalHits``), and a page past them answers
  ``400 [ERROR 400] "page" is out of valid range.``; a bad key answers
  ``400 [ERROR 400] Invalid API key...``.
- The answer: ``{"total", "totalHits", "hits": [...]}``; each hit has ``id``, ``pageURL``,
  ``webformatURL`` (at most 640 px, valid for 24 hours), ``largeImageURL`` (at most
  1280 px), ``imageWidth``, ``imageHeight``, ``user_id`` and ``user`` (profile
  ``https://pixabay.com/users/{user}-{user_id}/``).
- Rate limit: 100 requests per 60 seconds by default; ``X-RateLimit-Limit``,
  ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (seconds until the window resets);
  429 when over. Results must be cached for 24 hours and images downloaded, not hotlinked.
- Content is under the Pixabay Content License.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from .base import ApiRequest, Hit, SearchPage, SourceOptions

name = "pixabay"
env_var = "PIXABAY_API_KEY"
key_url = "https://pixabay.com/api/docs/"  # where to get a key
license = "Pixabay Content License (https://pixabay.com/service/license-summary/)"
default_base_url = "https://pixabay.com/api/"
per_page_range = (3, 200)
max_query_length = 100
#: SourceOptions.image -> the hit field holding that size.
IMAGE_FIELDS = {"large": "largeImageURL", "webformat": "webformatURL"}
image_sizes = tuple(IMAGE_FIELDS)
params = {
    "image_type": ("photo", "all", "illustration", "vector"),
    "safesearch": ("true", "false"),
    "orientation": ("all", "horizontal", "vertical"),
    "order": ("popular", "latest"),
    "category": ("people", "feelings", "backgrounds", "fashion", "nature", "science", "education",
                 "health", "religion", "places", "animals", "industry", "computer", "food", "sports",
                 "transportation", "travel", "buildings", "business", "music"),
}
#: Photos only (no illustrations or vectors), suitable for all ages.
default_params: tuple[tuple[str, str], ...] = (("image_type", "photo"), ("safesearch", "true"))


def search_request(opts: SourceOptions, key: str, query: str, page: int, per_page: int) -> ApiRequest:
    """``GET <base>?key=..&q=..&page=..&per_page=..`` plus the recipe's parameters."""
    given = dict(opts.params)
    extra = [(k, v) for k, v in default_params if k not in given] + list(opts.params)
    q = urllib.parse.urlencode([("key", key), ("q", query), ("page", page), ("per_page", per_page), *extra])
    base = opts.base_url if opts.base_url.endswith("/") else opts.base_url + "/"
    return ApiRequest(url=f"{base}?{q}", headers={}, secret=key)


def parse_search(payload: Any, opts: SourceOptions, page: int, per_page: int) -> SearchPage:
    """Hits of one answer; ``ValueError`` when it lacks the documented fields."""
    field = IMAGE_FIELDS[opts.image]
    try:
        total = int(payload.get("totalHits", 0))
        hits = []
        for h in payload["hits"]:
            user, user_id = str(h.get("user") or ""), h.get("user_id")
            profile = f"https://pixabay.com/users/{user}-{int(user_id)}/" if user and user_id is not None else ""
            hits.append(Hit(
                source=name,
                id=str(int(h["id"])),
                image_url=str(h[field]),
                page_url=str(h.get("pageURL") or ""),
                photographer=user,
                photographer_url=profile,
                width=int(h.get("imageWidth") or 0),
                height=int(h.get("imageHeight") or 0),
            ))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"pixabay: unexpected search answer ({type(e).__name__}: {e})") from e
    return SearchPage(hits=tuple(hits), total=total, has_next=len(hits) > 0 and page * per_page < total)


def reset_at(value: str, now: float) -> float | None:
    """Pixabay sends the seconds left until the window resets."""
    try:
        return now + float(value)
    except (TypeError, ValueError):
        return None


def classify_error(status: int, body: str) -> str:
    """400 ``"page" is out of valid range``: past the last page; a 400 about the API key
    (invalid, or ``"key" is missing``), 401 or 403: a bad key."""
    text = body.lower()
    if status == 400 and '"page" is out of valid range' in text:
        return "end"
    if status in (401, 403) or (status == 400 and "api key" in text) or (status == 400 and '"key"' in text):
        return "auth"
    return "other"
