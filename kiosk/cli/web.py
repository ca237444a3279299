"""``kiosk web`` (serve the door screen and the admin app) and ``kiosk web user add | passwd | role | remove | list``.

Passwords are never arguments (they would show in ``ps`` and shell history): asked twice on a terminal, else read as
one line from standard input, so scripts can make accounts (``printf '%s\\n' "$PW" | kiosk web user add ...``). Every
account change is an admin event in the gallery's hash chain naming who made it; passwords and hashes never leave
the accounts database.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import UTC, datetime
from typing import Any

from kiosk.cli._output import emit_json, table
from kiosk.config import Config
from kiosk.errors import InputError, KioskError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "web",
        help="serve the door screen and the admin app; manage web accounts",
        description="Serve the door screen (/door) and the admin app on the configured listeners (web.listen, "
        "web.door_listen, web.admin_listen): plain HTTP on loopback addresses only, TLS on every other.",
    )
    p.add_argument(
        "--listen",
        action="append",
        metavar="HOST:PORT",
        help="serve the door screen and the admin app here instead of web.listen (repeatable; [::1]:8080 for IPv6)",
    )
    p.set_defaults(func=cmd_serve)
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    u = verbs.add_parser("user", help="manage web accounts (admin command)", description="Manage web accounts.")
    actions = u.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    a = actions.add_parser(
        "add",
        help="add an account (password from the terminal or one line of stdin)",
        description="Add a web account. The password is asked twice on a terminal, else read as one line from "
        "standard input; at least 10 characters.",
    )
    a.add_argument("name", help="login name: letters, digits, '.', '_' or '-', at most 64")
    a.add_argument("--role", required=True, choices=("admin", "viewer"), help="admin: every change; viewer: read")
    a.set_defaults(func=cmd_add)
    a = actions.add_parser(
        "passwd", help="set a new password (ends the account's sessions)", description=cmd_passwd.__doc__
    )
    a.add_argument("name")
    a.set_defaults(func=cmd_passwd)
    a = actions.add_parser("role", help="change an account's role (ends its sessions)", description=cmd_role.__doc__)
    a.add_argument("name")
    a.add_argument("role", choices=("admin", "viewer"))
    a.set_defaults(func=cmd_role)
    a = actions.add_parser("remove", help="remove an account and end its sessions", description=cmd_remove.__doc__)
    a.add_argument("name")
    a.set_defaults(func=cmd_remove)
    a = actions.add_parser("list", help="list the accounts", description=cmd_list.__doc__)
    a.add_argument("--json", action="store_true", help="print as JSON")
    a.set_defaults(func=cmd_list)


def cmd_serve(args: argparse.Namespace, cfg: Config) -> int:
    """Serve until stopped (SIGTERM, Ctrl-C); prints the URLs served."""
    from kiosk.web.server import serve

    return serve(cfg, args.listen, announce=lambda line: print(f"kiosk web: {line}", file=sys.stderr, flush=True))


def read_password(stdin: Any = None) -> str:
    """The new password: asked twice on a terminal, else one line of standard input (its line ending removed)."""
    from kiosk.web.accounts import MAX_PASSWORD

    stdin = stdin or sys.stdin
    try:
        if stdin.isatty():
            first = getpass.getpass("new password: ")
            if getpass.getpass("new password again: ") != first:
                raise InputError("the two passwords differ: nothing changed")
            return first
        line: str = stdin.readline(MAX_PASSWORD + 2)
    except EOFError:
        raise InputError("no password given: nothing changed") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read the password from standard input ({err}): nothing changed") from None
    if not line:
        raise InputError("no password on standard input: give it as one line (nothing changed)")
    return line.removesuffix("\n").removesuffix("\r")


def _audit(cfg: Config, action: str, name: str, **detail: Any) -> None:
    """An admin event in the gallery's hash chain: who (the CLI's actor), what, which account. Never a password."""
    from kiosk.gallery.open import open_gallery

    with open_gallery(cfg, need_key=False) as g:
        g.add_event("admin", action, detail={"by": g.actor, "account": name, **detail})


def _change(cfg: Config, action: str, name: str, change: Any, **detail: Any) -> Any:
    """Run ``change(accounts)`` and record it; the gallery is checked first, so a change is never left unaudited
    because the gallery was unreachable."""
    from kiosk.gallery.open import open_gallery
    from kiosk.web.accounts import Accounts

    with open_gallery(cfg, need_key=False):
        pass
    with Accounts(cfg.web_db_path, cfg.web) as accounts:
        result = change(accounts)
    try:
        _audit(cfg, action, name, **detail)
    except KioskError as exc:
        err = KioskError(f"{action} {name!r} done, but its audit event could not be written: {exc}")
        err.exit_code = exc.exit_code
        raise err from exc
    return result


def cmd_add(args: argparse.Namespace, cfg: Config) -> int:
    """Add a web account."""
    from kiosk.web.accounts import check_name, check_password

    check_name(args.name)
    password = check_password(read_password())
    _change(cfg, "web account added", args.name, lambda a: a.add(args.name, args.role, password), role=args.role)
    print(f"web account {args.name!r} added ({args.role})")
    return 0


def cmd_passwd(args: argparse.Namespace, cfg: Config) -> int:
    """Set a new password for a web account; every session of the account ends."""
    from kiosk.web.accounts import Accounts, check_password

    with Accounts(cfg.web_db_path, cfg.web) as accounts:
        accounts.get(args.name)  # an unknown name is reported before the password is asked for
    password = check_password(read_password())
    n = _change(cfg, "web password changed", args.name, lambda a: a.set_password(args.name, password))
    print(f"new password for {args.name!r}; {n} session(s) ended")
    return 0


def cmd_role(args: argparse.Namespace, cfg: Config) -> int:
    """Change a web account's role; every session of the account ends."""
    n = _change(cfg, "web role changed", args.name, lambda a: a.set_role(args.name, args.role), role=args.role)
    print(f"{args.name!r} is now {args.role}; {n} session(s) ended")
    return 0


def cmd_remove(args: argparse.Namespace, cfg: Config) -> int:
    """Remove a web account and end its sessions."""
    _change(cfg, "web account removed", args.name, lambda a: a.remove(args.name))
    print(f"web account {args.name!r} removed")
    return 0


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cmd_list(args: argparse.Namespace, cfg: Config) -> int:
    """List the web accounts: name, role, when made, when the password last changed, live sessions."""
    from kiosk.web.accounts import Accounts

    with Accounts(cfg.web_db_path, cfg.web) as accounts:
        found = accounts.list_accounts()
    if args.json:
        emit_json(
            [
                {
                    "name": a.name,
                    "role": a.role,
                    "created": _when(a.created),
                    "password_changed": _when(a.password_changed),
                    "sessions": a.sessions,
                }
                for a in found
            ]
        )
        return 0
    if not found:
        print("no web accounts yet: kiosk web user add NAME --role admin")
        return 0
    rows = [[a.name, a.role, _when(a.created), _when(a.password_changed), str(a.sessions)] for a in found]
    print(table(rows, ["name", "role", "created", "password changed", "sessions"]))
    return 0
