"""What the weight converters (``convert_fer``, ``convert_facex``) share: finding the original
file in an installed package, and the command line's last step (convert, report, exit status).
``package_weights`` is how the networks read at run time from a registry package (TransNetV2,
dlib's face encoder) find their file."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Callable

from ..errors import ModelError


def installed_package_file(package: str, relative: str) -> Path | None:
    """``<package dir>/<relative>`` of an installed package, found without importing it (the
    packages these weights come from pull in heavy dependencies); None when absent."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / relative
        if p.is_file():
            return p
    return None


def package_weights(env_var: str, package: str, relative: str, missing: str) -> Path:
    """The weights file ``relative`` of the installed ``package`` (``installed_package_file``),
    or the file named by ``$env_var`` when set (a machine without the package, e.g. a device
    run that carries the file). ValueError: ``missing`` (what to install) when neither is
    there, or the named file does not exist."""
    override = os.environ.get(env_var)
    if override:
        if not Path(override).is_file():
            raise ValueError(f"{override}: no such file ({env_var})")
        return Path(override)
    path = installed_package_file(package, relative)
    if path is None:
        raise ValueError(missing)
    return path


def run_conversion(source: Path | None, missing: str, convert: Callable[[Path], str], out: Path) -> int:
    """Convert ``source`` into ``out`` and report it: exit status 0, 1 (the conversion failed:
    ``ModelError``) or 2 (no source: ``missing`` says what to pass)."""
    if source is None:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    try:
        digest = convert(source)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out} (content hash {digest})")
    return 0
