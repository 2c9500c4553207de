"""Stock-photo search APIs by name: one module per API implementing ``StockSource``."""

from __future__ import annotations

from . import pexels, pixabay
from .base import ApiRequest, Hit, SearchPage, SourceOptions, StockSource

#: Every source by registry name.
SOURCES: dict[str, StockSource] = {"pexels": pexels, "pixabay": pixabay}

__all__ = ["SOURCES", "ApiRequest", "Hit", "SearchPage", "SourceOptions", "StockSource", "get_source"]


def get_source(name: str) -> StockSource:
    """The source called ``name``; ``ValueError`` naming the allowed ones otherwise."""
    try:
        return SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown source {name!r}; allowed: {', '.join(SOURCES)}") from None
