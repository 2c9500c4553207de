"""The CLI's one error handler: known errors are caught once, at the top, and printed as one
escaped line on stderr with a chosen exit status (no traceback); everything else is a bug and
keeps its traceback.

Exit statuses: 0 success, 1 some work failed (films, sources, variants), 2 bad arguments or
input (``ValueError``, the package's errors), 3 the output disk is full (``DiskFullError``:
what is written is complete, a re-run resumes), 130 interrupted.
"""

from __future__ import annotations

import typer
from typer.core import TyperCommand, TyperGroup

from ..errors import DiskFullError, ExeStreamError
from ..options import OptionError
from ._common import error

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DISK_FULL = 3
EXIT_INTERRUPTED = 130


def _flag(command: TyperCommand, field: str) -> str | None:
    """The option the user types for the parameter named ``field`` (its longest flag)."""
    for p in command.params:
        if p.name == field and p.param_type_name == "option":
            return max(p.opts, key=len)
    return None


class CliCommand(TyperCommand):
    """A command whose option errors name the flag the user typed (``--every``), not the
    library's field name (``every``)."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except OptionError as e:
            flag = _flag(self, e.field)
            if flag is None:
                raise
            raise OptionError(flag, e.problem) from e


class CliGroup(TyperGroup):
    """The root group: runs a command and turns the package's known errors into one line."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except DiskFullError as e:
            error(str(e))
            ctx.exit(EXIT_DISK_FULL)
        except (ExeStreamError, ValueError) as e:
            error(str(e))
            ctx.exit(EXIT_USAGE)
        except OSError as e:
            # A file the user named could not be read or written (permissions, a directory
            # where a file was expected, ...): one line, the file and the reason.
            where = f"{e.filename}: " if e.filename else ""
            error(f"{where}{e.strerror or e}")
            ctx.exit(EXIT_FAILED)
