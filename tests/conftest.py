"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

import media

import exe_stream

# Real footage bundled with the package (see exe_stream/assets/clips/LICENSE.md).
CLIPS = Path(exe_stream.__file__).parent / "assets" / "clips"


@pytest.fixture(scope="session")
def films(tmp_path_factory: pytest.TempPathFactory) -> media.FilmSet:
    """Generated test films (tests/media.py), each written on first use:
    ``films.h264_bframes``, ``films.rotated``, ``films.truncated``, ...,
    or ``films.get("rotated", degrees=180)``."""
    return media.FilmSet(tmp_path_factory.mktemp("films"))


@pytest.fixture(scope="session")
def clips() -> Path:
    """Directory of the bundled sample clips (carphone_pristine.mp4, bikes.mp4,
    bigbuckbunny.mp4)."""
    return CLIPS
