"""Option checks shared by the option dataclasses: one error type that names the field.

``OptionError`` is a ``ValueError`` whose message starts with the field's name
(``every must be >= 1, got 0``); the CLI's error handler replaces that name with the option
the user typed (``--every must be >= 1, got 0``), so library callers and CLI users each read
the name they wrote.
"""

from __future__ import annotations

from typing import Any, Iterable


class OptionError(ValueError):
    """A bad option value. ``field`` is the option's (dataclass field / parameter) name and
    ``problem`` the rest of the message, e.g. ``must be >= 1, got 0``."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field} {problem}")

    def renamed(self, name: str) -> str:
        """The message with the field called ``name`` (e.g. the CLI flag)."""
        return f"{name} {self.problem}"


def check_choice(field: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raise OptionError unless ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise OptionError(field, f"must be one of {', '.join(map(str, allowed))}; got {value!r}")


def check_range(field: str, value: Any, lo: float | None = None, hi: float | None = None,
                integer: bool = False, unit: str = "", lo_open: bool = False) -> None:
    """Raise OptionError unless ``value`` is a number (an integer if ``integer``) within
    [lo, hi] (``lo_open``: > lo). ``unit`` follows the bound in the message."""
    kinds = (int,) if integer else (int, float)
    try:
        import numpy as np

        kinds = kinds + ((np.integer,) if integer else (np.integer, np.floating))
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    what = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise OptionError(field, f"must be {what}, got {value!r}")
    suffix = f" {unit}" if unit else ""
    nan = value != value
    if lo is not None and hi is not None:
        bad = nan or (value <= lo if lo_open else value < lo) or value > hi
        bound = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
    elif lo is not None:
        bad = nan or (value <= lo if lo_open else value < lo)
        bound = f"{'>' if lo_open else '>='} {lo:g}"
    else:
        bad = nan or (hi is not None and value > hi)
        bound = f"<= {hi:g}" if hi is not None else "a number"
    if bad:
        raise OptionError(field, f"must be {bound}{suffix}, got {value!r}")
