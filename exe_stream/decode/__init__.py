"""Decoding backends (a registry of names) and finding the films to scan."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

from .base import Decoder

__all__ = ["DECODERS", "VIDEO_EXTENSIONS", "Decoder", "find_videos", "get_decoder"]

# File-name extensions (lower case) that find_videos treats as films.
VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".mp4", ".m4v", ".mov", ".qt", ".mkv", ".webm", ".avi", ".wmv", ".asf", ".flv",
        ".mpg", ".mpeg", ".m2v", ".vob", ".ts", ".m2ts", ".mts", ".3gp", ".3g2", ".ogv",
        ".mxf", ".y4m", ".h264", ".264", ".h265", ".265", ".hevc", ".ivf", ".divx",
    }
)


def _pyav() -> Decoder:
    from .pyav import PyAVDecoder

    return PyAVDecoder()


def _dali() -> Decoder:
    from .dali import DaliDecoder

    try:
        return DaliDecoder()
    except ImportError as e:  # DALI not installed: a bad choice of decoder, said plainly
        raise ValueError(str(e)) from e


def _nvdec() -> Decoder:
    from .nvdec import NvdecDecoder

    try:
        return NvdecDecoder()
    except ImportError as e:  # PyNvVideoCodec not installed
        raise ValueError(str(e)) from e


# Backend name -> factory. GPU backends import their heavy packages inside their factory
# (a missing package or CUDA device is a ValueError that says what to install or use).
DECODERS: dict[str, Callable[[], Decoder]] = {"pyav": _pyav, "dali": _dali, "nvdec": _nvdec}


def get_decoder(name: str) -> Decoder:
    """A new decoder of the backend called ``name`` (one of ``DECODERS``)."""
    try:
        factory = DECODERS[name]
    except KeyError:
        raise ValueError(
            f"unknown decoder {name!r}; choose one of: {', '.join(sorted(DECODERS))}"
        ) from None
    return factory()


def find_videos(paths: Iterable[str | Path]) -> list[Path]:
    """The films named by ``paths``: each is a file (kept whatever its extension) or a
    directory searched recursively for files with a ``VIDEO_EXTENSIONS`` extension (hidden
    files and directories skipped). Sorted, without duplicates.

    Raises FileNotFoundError naming a path that does not exist.
    """
    found: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                for f in files:
                    if not f.startswith(".") and Path(f).suffix.lower() in VIDEO_EXTENSIONS:
                        found.add(Path(root) / f)
        elif p.exists():
            found.add(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    return sorted(found)
