"""The ``kiosk`` command line: one parser, commands in small modules, errors as one line and a named exit code.

Every ``KioskError`` becomes ``kiosk: error: <message>`` on stderr and its ``ExitCode``; ``--debug`` (or
``KIOSK_DEBUG=1``) shows the traceback instead.

The admin boundary lives here, in one table: the commands in ``ADMIN_COMMANDS`` run only for root or members of
``admin.group`` (exit DENIED otherwise), and the gallery records the caller on every change they make.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from kiosk import __version__
from kiosk.authz import drop_to_owner, require_admin, set_actor
from kiosk.config import Config, load_config
from kiosk.errors import ExitCode, KioskError
from kiosk.logs import configure

log = logging.getLogger("kiosk.cli")

# The command modules, in the order `kiosk --help` lists them, and the commands each registers. A command imports
# only its own module: `kiosk door off` is the unit's ExecStopPost, the step that locks the door after a crash, and
# must not wait for the gallery, OpenCV or onnxruntime to load (tests/test_cli_lazy.py holds both to this table).
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "recognize": ("enroll", "verify", "identify"),
    "people": ("people",),
    "access": ("access",),
    "run": ("run", "events"),
    "door": ("door",),
    "admin": ("check", "models", "eval", "demo"),
    "liveness": ("eval-liveness",),
    "data": ("backup", "restore", "keys"),
    "bench": ("bench",),
    "web": ("web",),
    "fleet": ("hub", "fleet"),
}
_MODULE_OF = {command: module for module, commands in COMMAND_MODULES.items() for command in commands}

# Commands that read or change the gallery's people, access rules, templates, events or keys, or that unlock the door
# by hand.
# `door off` (locking is always safe; it is the service's ExecStopPost), `run`, `check`, `verify` (two photos, no
# gallery), `eval`, `demo`, `models` and `web` (serving; its accounts are managed by `web user`) are open to the
# service user and everyone else.
ADMIN_COMMANDS: frozenset[tuple[str, ...]] = frozenset(
    {
        ("enroll",),
        ("people",),
        ("access",),
        ("identify",),
        ("events",),
        ("backup",),
        ("restore",),
        ("keys",),
        ("door", "test"),
        ("door", "on-pulse"),
        ("web", "user"),
        ("hub", "add-door"),
        ("hub", "remove-door"),
        ("fleet", "status"),
        ("fleet", "unlock"),
        ("fleet", "resync"),
        ("fleet", "ping"),
    }
)

EXIT_CODES_HELP = "exit codes: " + ", ".join(f"{c.value}={c.name}" for c in ExitCode)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        message = message.replace("\r", "\\r").replace("\n", "\\n")  # an argument with a newline: still one line
        self.exit(ExitCode.USAGE, f"kiosk: error: {message}\n")


def _add_global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", help="config file (default: $KIOSK_CONFIG, else built-in defaults)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="override logging.level")


def command_word(argv: Sequence[str]) -> str | None:
    """The command in ``argv``, read by argparse with the same global options as the real parser (so an option's
    value, ``--opt=value`` or an abbreviated ``--conf`` is never taken for the command); None when there is none or
    the global options are wrong (the whole parser then reports it)."""
    pre = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    _add_global_options(pre)
    pre.add_argument("command", nargs="?")
    pre.add_argument("rest", nargs=argparse.REMAINDER)
    try:
        word: str | None = pre.parse_known_args(list(argv))[0].command
    except argparse.ArgumentError:
        return None
    return word


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or, for a known ``command``, one with only that command's module loaded."""
    parser = _Parser(
        prog="kiosk",
        description="face-kiosk: face-recognition access control for the edge.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--version", action="version", version=f"face-kiosk {__version__}")
    _add_global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    names = [_MODULE_OF[command]] if command in _MODULE_OF else list(COMMAND_MODULES)
    for name in names:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def admin_command(args: argparse.Namespace) -> str | None:
    """``"people remove"`` when the parsed command is in ADMIN_COMMANDS, else None."""
    words = [args.command, *([args.verb] if isinstance(getattr(args, "verb", None), str) else [])]
    for n in (1, 2):
        if tuple(words[:n]) in ADMIN_COMMANDS:
            return " ".join(words)
    return None


def _authorise(args: argparse.Namespace, cfg: Config, drop_privileges: bool) -> None:
    command = admin_command(args)
    caller = require_admin(cfg.admin.group, command) if command is not None else None
    if drop_privileges and args.command not in ("door", "demo"):
        # Root acts as the data directory's owner, so the files it creates (the gallery's -wal/-shm, backups) stay
        # the service's (see kiosk.authz). The door commands keep root: they touch GPIO, not the data directory.
        drop_to_owner(cfg.gallery_path.parent)
    if caller is not None:
        set_actor(f"{caller.describe()}: kiosk {command}")


def main(argv: Sequence[str] | None = None, *, drop_privileges: bool = False) -> int:
    """Run one command; returns its exit code. ``drop_privileges`` (the installed ``kiosk`` entry point only) lets
    root become the data directory's owner for admin commands; in-process callers such as tests keep their uid."""
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command_word(words))
    args = parser.parse_args(words)
    debug = bool(args.debug or os.environ.get("KIOSK_DEBUG"))
    try:
        cfg = load_config(args.config)
        level = "DEBUG" if debug else (args.log_level or cfg.logging.level)
        # Library chatter (onnxruntime, model loading) stays below WARNING unless asked for.
        configure(level if (debug or args.log_level) else "WARNING", cfg.logging.format)
        _authorise(args, cfg, drop_privileges)
        code: int = args.func(args, cfg)
        return code
    except KioskError as exc:
        if debug:
            traceback.print_exc()
        print(f"kiosk: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("kiosk: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        return int(ExitCode.OK)
    except Exception as exc:
        if debug:
            traceback.print_exc()
        print(
            f"kiosk: internal error: {exc.__class__.__name__}: {exc} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return int(ExitCode.FAILURE)


def entry() -> None:
    sys.exit(main(drop_privileges=True))
