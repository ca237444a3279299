"""The tools' one error base and the one handler that turns it into a line on stderr and an exit status.

A tool raises ``ToolError`` (or a subclass: ``ExportError``, ``QuantizeError``, ...) with a one-line message that
says what to fix; ``run_tool`` prints ``<tool>: error: <message>`` and returns the error's ``code``. A ``KioskError``
raised by kiosk code a tool calls (a missing model, a bad config) is reported the same way with the kiosk's exit code.
``python -m tools`` dispatches every command through ``run_tool``; a tool's own ``main`` uses it too, so calling
``main(argv)`` from Python returns the same status as the command line.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from kiosk.errors import KioskError


class ToolError(Exception):
    """A one-line, user-facing reason a tool stopped; ``code`` is the exit status (1 by default, 2: usage)."""

    code: int = 1

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


def run_tool(prog: str, body: Callable[[], int]) -> int:
    """Run a tool's body; a ``ToolError`` or ``KioskError`` becomes one line on stderr and its exit status."""
    try:
        return body()
    except ToolError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.code
    except KioskError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
