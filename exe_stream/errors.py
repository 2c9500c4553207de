"""Errors raised at the package's public boundaries."""

from __future__ import annotations


class ExeStreamError(Exception):
    """Base class of the package's own errors."""


class DecodeError(ExeStreamError):
    """A film could not be (fully) decoded. ``path`` names the file, ``reason`` says why.

    ``frames_decoded`` counts the sampled frames already yielded before the failure, so the
    caller can tell a film that failed outright from one that is partial.
    """

    def __init__(self, path: str, reason: str, frames_decoded: int = 0) -> None:
        self.path = str(path)
        self.reason = reason
        self.frames_decoded = frames_decoded
        super().__init__(f"{self.path}: {reason}")


class ModelError(ExeStreamError):
    """A model name, directory or card is invalid."""


class StatsError(ExeStreamError):
    """A comparison cannot be made: unknown model, no shared classes, no paired films, ..."""
