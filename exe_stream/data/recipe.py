"""Training recipes: one TOML file, one table per stage.

A recipe holds a few top-level keys and one table per stage::

    name = "emotions-stock"           # optional; default: the file name without .toml
    description = "..."               # optional, free text
    data_dir = "data/emotions-stock"  # where the stages read and write (``--data`` overrides)

    [pull]      # exe_stream.data.pull.PullOptions.from_recipe
    [extract]   # exe_stream.data.extract
    [clean]     # exe_stream.data.clean
    [train]     # exe_stream.train

``load_recipe`` parses the file and checks only the top level: unknown top-level keys and
unknown sections are refused with the allowed names. Each stage checks its own table with
the helpers here (``check_keys``, ``get_value``, ``where``), so every error names the file,
the table and the key, and lists what is allowed.

A relative ``data_dir`` is relative to the directory the command runs in, like every other
path given on the command line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ..errors import ExeStreamError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib

#: Stage tables a recipe may hold.
SECTIONS = ("pull", "extract", "clean", "train", "evaluate", "grid", "cluster")
#: Top-level keys that are not tables.
TOP_LEVEL_KEYS = ("name", "description", "data_dir")

_REQUIRED = object()


class RecipeError(ExeStreamError, ValueError):
    """A recipe file is missing, not TOML, or holds a bad key or value. The message names the
    file, the table and the key, and says what is allowed."""


class Recipe(dict):
    """A parsed recipe: the TOML document as a dict (top-level keys and one dict per section)
    plus the file it came from (``path``)."""

    def __init__(self, data: Mapping[str, Any], path: Path) -> None:
        super().__init__(data)
        self.path = Path(path)

    @property
    def name(self) -> str:
        """The recipe's ``name``, or the file name without its suffix."""
        return str(self.get("name") or self.path.stem)

    def section(self, name: str) -> dict[str, Any]:
        """The table of stage ``name`` (one of ``SECTIONS``), ``{}`` when the recipe has none."""
        if name not in SECTIONS:
            raise ValueError(f"unknown recipe section {name!r}; allowed: {', '.join(SECTIONS)}")
        return dict(self.get(name) or {})

    def where(self, *tables: str) -> str:
        """Prefix for error messages: ``recipe PATH [pull.emotions]``."""
        return where(self.path, *tables)

    def data_dir(self, override: str | Path | None = None) -> Path:
        """The data directory: ``override`` (``--data``) when given, else the recipe's
        ``data_dir``. Raises ``RecipeError`` when neither is set."""
        if override is not None:
            return Path(override)
        value = self.get("data_dir")
        if not value:
            raise RecipeError(f"{self.where()}: no data_dir; add data_dir = \"DIR\" or give --data DIR")
        return Path(value).expanduser()


def where(path: str | Path, *tables: str) -> str:
    """``recipe PATH`` or ``recipe PATH [a.b]``: the start of every recipe error message."""
    return f"recipe {path}" + (f" [{'.'.join(tables)}]" if tables else "")


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe TOML file. Checks the top level only (keys and section names; each
    section is a table); stages check their own tables.

    Raises ``RecipeError`` naming the file: missing file, invalid TOML, unknown top-level key
    or section (with the allowed ones), a section that is not a table, a non-string
    ``name``/``description``/``data_dir``.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as e:
        raise RecipeError(f"recipe {path} does not exist") from e
    except IsADirectoryError as e:
        raise RecipeError(f"recipe {path} is a directory, not a TOML file") from e
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"recipe {path} is not valid TOML: {e}") from e
    allowed = TOP_LEVEL_KEYS + SECTIONS
    for key, value in data.items():
        if key not in allowed:
            raise RecipeError(f"{where(path)}: unknown key {key!r}; allowed: {', '.join(allowed)}")
        if key in SECTIONS and not isinstance(value, dict):
            raise RecipeError(f"{where(path)}: {key} must be a table ([{key}]), got {_show(value)}")
        if key in TOP_LEVEL_KEYS and not isinstance(value, str):
            raise RecipeError(f"{where(path)}: {key} must be a string, got {_show(value)}")
    return Recipe(data, path)


def check_keys(table: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Refuse keys of ``table`` not in ``allowed``: ``<where>: unknown key 'x'; allowed: a, b``."""
    allowed = tuple(allowed)
    for key in table:
        if key not in allowed:
            raise RecipeError(f"{where}: unknown key {key!r}; allowed: {', '.join(allowed)}")


_KINDS: dict[type, str] = {
    str: "a string", int: "an integer", float: "a number", bool: "true or false",
    list: "an array", dict: "a table",
}


def _is_kind(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def get_value(
    table: Mapping[str, Any],
    key: str,
    kind: type,
    where: str,
    default: Any = _REQUIRED,
    check: Callable[[Any], bool] | None = None,
    expect: str = "",
) -> Any:
    """``table[key]`` checked to be of TOML ``kind`` (str, int, float, bool, list, dict; an int
    is accepted as a float, a bool never as a number), else ``default``; a missing key without
    a default is an error. ``check`` is an extra test whose failure reports ``expect``
    (e.g. ``check=lambda v: v >= 1, expect="an integer >= 1"``). Floats come back as float.
    """
    if key not in table:
        if default is _REQUIRED:
            raise RecipeError(f"{where}: missing required key {key!r}")
        return default
    value = table[key]
    if not _is_kind(value, kind) or (check is not None and not check(value)):
        raise RecipeError(f"{where}: {key} must be {expect or _KINDS.get(kind, kind.__name__)}, got {_show(value)}")
    return float(value) if kind is float else value


def get_str_list(table: Mapping[str, Any], key: str, where: str, default: Any = _REQUIRED,
                 allowed: Iterable[str] | None = None) -> tuple[str, ...]:
    """``table[key]`` as a tuple of non-empty strings (a single string is a list of one),
    each in ``allowed`` when given; duplicates are refused."""
    if key not in table and default is not _REQUIRED:
        return default
    value = table.get(key, _REQUIRED)
    if value is _REQUIRED:
        raise RecipeError(f"{where}: missing required key {key!r}")
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise RecipeError(f"{where}: {key} must be a non-empty array of strings, got {_show(value)}")
    items = [v.strip() for v in items]
    allowed = tuple(allowed) if allowed is not None else None
    seen: set[str] = set()
    for v in items:
        if allowed is not None and v not in allowed:
            raise RecipeError(f"{where}: {key} has unknown value {v!r}; allowed: {', '.join(allowed)}")
        if v in seen:
            raise RecipeError(f"{where}: {key} lists {v!r} twice")
        seen.add(v)
    return tuple(items)
