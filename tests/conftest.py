"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import media

import exe_stream

# Whether this machine has a CUDA device.
HAS_CUDA = torch.cuda.is_available()
# Marks of every CUDA case: ``pytest -m cuda`` selects them all; they skip without a device.
NEEDS_CUDA = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]
# The device parameter of tests that run on the CPU and on CUDA (``from conftest import DEVICES``).
DEVICES = ["cpu", pytest.param("cuda", marks=NEEDS_CUDA)]

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


@pytest.fixture(scope="session")
def engine_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for exported ONNX files and plans, shared by every test that exports
    (an export of a bundled model takes seconds)."""
    return tmp_path_factory.mktemp("engine-cache")
