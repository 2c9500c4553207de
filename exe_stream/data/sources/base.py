"""What a stock-photo source is: a search request builder and a response parser.

A source knows one API's documented shape (URL, parameters, where the key goes, the JSON it
answers with, what its rate-limit headers mean); it never opens a connection. The HTTP
client (``exe_stream.data.http``) sends what ``search_request`` builds, handles retries and
rate limits, and hands the decoded JSON to ``parse_search``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol


@dataclass(frozen=True)
class Hit:
    """One search result: an image a query found, with its credits."""

    source: str            # registry name of the API ("pexels", "pixabay")
    id: str                # the API's id of the image (digits), unique within the source
    image_url: str         # the image file to download (the size chosen by SourceOptions.image)
    page_url: str          # the image's page on the source's site
    photographer: str      # credited author name
    photographer_url: str  # author's profile page ("" when the API gives none)
    width: int = 0         # size of the original as the API reports it (0 when unknown)
    height: int = 0


@dataclass(frozen=True)
class SearchPage:
    """One page of search results."""

    hits: tuple[Hit, ...]  # in the API's order
    total: int             # results the API says the query has (reachable through paging)
    has_next: bool         # whether a further page exists


@dataclass(frozen=True)
class ApiRequest:
    """An HTTP GET to send. ``secret`` is the API key the URL or headers carry: the client
    sends it only to this URL's host and redacts it from everything it logs or raises."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    secret: str = ""


@dataclass(frozen=True)
class SourceOptions:
    """Per-source settings from the recipe's ``[pull.<source>]`` table."""

    base_url: str                                 # the search endpoint (tests point it at a loopback fake)
    image: str                                    # which size of each image to download (the source's IMAGE_SIZES)
    params: tuple[tuple[str, str], ...] = ()      # extra documented search parameters (name, value)


class StockSource(Protocol):
    """A stock-photo search API (a module with these names: ``sources/pexels.py``,
    ``sources/pixabay.py``)."""

    name: str                          # registry name
    env_var: str                       # environment variable holding the API key
    key_url: str                       # where a user gets a key
    license: str                       # license of every image it serves, stored per row
    default_base_url: str              # the public search endpoint
    per_page_range: tuple[int, int]    # documented (min, max) of per_page
    image_sizes: tuple[str, ...]       # allowed SourceOptions.image values, default first
    max_query_length: int              # longest query the API takes (0: no documented limit)
    params: Mapping[str, tuple[str, ...]]  # extra parameters the recipe may set -> allowed values
    default_params: tuple[tuple[str, str], ...]  # parameters sent unless the recipe sets them

    def search_request(self, opts: SourceOptions, key: str, query: str, page: int, per_page: int) -> ApiRequest:
        """The GET request for ``page`` (1-based) of ``query`` with ``per_page`` results."""
        ...

    def parse_search(self, payload: Any, opts: SourceOptions, page: int, per_page: int) -> SearchPage:
        """Hits of one decoded JSON response. Raises ``ValueError`` on a payload that does
        not have the documented shape."""
        ...

    def reset_at(self, value: str, now: float) -> float | None:
        """Absolute time (``now``'s clock) at which the rate-limit window of an
        ``X-Ratelimit-Reset`` header value ends; None when it cannot be read."""
        ...

    def classify_error(self, status: int, body: str) -> str:
        """What an error response means: ``"auth"`` (bad or missing key: no use going on),
        ``"end"`` (no more results for this query), or ``"other"``."""
        ...
