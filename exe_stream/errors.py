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


class UnsupportedByBackend(DecodeError):
    """A decoder backend cannot read this film (its codec, pixel format, size or timestamps),
    where another backend can: the scan decodes the film with PyAV instead, and the backend
    stays on for the other films (exe_stream.failsafe)."""


class ModelError(ExeStreamError):
    """A model name, directory or card is invalid."""


class StatsError(ExeStreamError):
    """A comparison cannot be made: unknown model, no shared classes, no paired films, ..."""


class DiskFullError(ExeStreamError):
    """The output's file system ran out of space (ENOSPC) while writing ``path``.

    Every file the package writes goes to a temporary name first and is renamed when complete,
    so what exists is whole and a re-run of the same command resumes; the temporary file is
    removed before this is raised.
    """

    def __init__(self, path: str, written: str = "") -> None:
        self.path = str(path)
        self.written = written
        where = f"the disk holding {self.path} is full"
        done = f"; {written}" if written else ""
        super().__init__(f"{where}{done}; nothing written is incomplete: free some space and run the same "
                         "command again to resume")
