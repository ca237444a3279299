"""``kiosk people list | show | rename | disable | enable | credential | remove``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from kiosk.cli._output import emit_json, table
from kiosk.config import Config
from kiosk.errors import ExitCode, InputError
from kiosk.gallery import Gallery, Person
from kiosk.gallery.backup import remove_person
from kiosk.gallery.open import open_gallery
from kiosk.gallery.records import clean_credential


def register(sub: Any) -> None:
    p = sub.add_parser("people", help="list and manage enrolled people", description="List and manage enrolled people.")
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    v = verbs.add_parser("list", help="list everyone enrolled", description="List everyone enrolled.")
    v.add_argument("--json", action="store_true", help="print as JSON")
    v.set_defaults(func=cmd_list)
    v = verbs.add_parser("show", help="details of one person", description="Details of one person.")
    v.add_argument("person", help="name or id")
    v.add_argument("--json", action="store_true", help="print as JSON")
    v.set_defaults(func=cmd_show)
    v = verbs.add_parser("rename", help="rename a person", description="Rename a person.")
    v.add_argument("person", help="name or id")
    v.add_argument("new_name")
    v.set_defaults(func=cmd_rename)
    for verb, doc in (
        ("disable", "stop granting access (templates are kept)"),
        ("enable", "grant access again"),
    ):
        v = verbs.add_parser(verb, help=doc, description=doc[0].upper() + doc[1:] + ".")
        v.add_argument("person", help="name or id")
        v.set_defaults(func=cmd_enable, enabled=verb == "enable")
    v = verbs.add_parser(
        "credential", help="set or clear a person's card number for an access panel", description=cmd_credential.__doc__
    )
    v.add_argument("person", help="name or id")
    v.add_argument("number", nargs="?", help="card number, digits only (at most 20)")
    v.add_argument("--clear", action="store_true", help="remove the card number")
    v.set_defaults(func=cmd_credential)
    v = verbs.add_parser("remove", help="remove a person and erase their templates", description=cmd_remove.__doc__)
    v.add_argument("person", help="name or id")
    v.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    v.set_defaults(func=cmd_remove)


def _ref(text: str) -> str | int:
    """A name, or an id when it is a short ASCII number (no int() of "²" or of 5,000 digits)."""
    return int(text) if text.isascii() and text.isdecimal() and len(text) <= 18 else text


def _person_dict(p: Person) -> dict[str, Any]:
    return {
        "id": p.id,
        "name": p.name,
        "created": p.created,
        "enabled": p.enabled,
        "valid_from": p.valid_from,
        "valid_until": p.valid_until,
        "templates": p.templates,
        "credential": p.credential is not None,  # whether one is set; the number is shown nowhere
    }


def _gallery(cfg: Config) -> Gallery:
    """People management never reads or writes templates: it needs no encryption key."""
    return open_gallery(cfg, need_key=False)


def cmd_list(args: argparse.Namespace, cfg: Config) -> int:
    """List everyone enrolled."""
    with _gallery(cfg) as g:
        people = g.list_people()
    if args.json:
        emit_json([_person_dict(p) for p in people])
        return 0
    if not people:
        print("nobody is enrolled yet: kiosk enroll NAME IMAGE...")
        return 0
    rows = [
        [
            str(p.id),
            p.name,
            "yes" if p.enabled else "no",
            str(p.templates),
            str(p.valid_from or "-"),
            str(p.valid_until or "-"),
        ]
        for p in people
    ]
    print(table(rows, ["id", "name", "enabled", "templates", "valid from", "valid until"]))
    return 0


def cmd_show(args: argparse.Namespace, cfg: Config) -> int:
    """Details of one person, including templates per model and stale ones."""
    with _gallery(cfg) as g:
        person = g.get_person(_ref(args.person))
        by_model = g.person_templates(person.id)
    info = _person_dict(person) | {"templates_by_model": by_model}
    if args.json:
        emit_json(info)
    else:
        for k, val in info.items():
            if k == "credential":
                val = "set" if val else None
            if k != "templates_by_model":
                print(f"{k:12} {val if val is not None else '-'}")
        for model, n in by_model.items():
            print(f"{'':12} {n} template(s) from {model}")
    return 0


def cmd_rename(args: argparse.Namespace, cfg: Config) -> int:
    """Rename a person."""
    with _gallery(cfg) as g:
        g.rename(_ref(args.person), args.new_name)
        p = g.get_person(args.new_name)
    print(f"renamed to '{p.name}' (id {p.id})")
    return 0


def cmd_enable(args: argparse.Namespace, cfg: Config) -> int:
    """Enable or disable a person."""
    with _gallery(cfg) as g:
        g.set_enabled(_ref(args.person), args.enabled)
        p = g.get_person(_ref(args.person))
    print(f"'{p.name}' is now {'enabled' if p.enabled else 'disabled'}")
    return 0


def cmd_credential(args: argparse.Namespace, cfg: Config) -> int:
    """Set a person's card number, sent to the access panel when they are recognised (door.driver osdp), or clear
    it with --clear. A person without one is recognised but denied: the panel has nothing to check."""
    if args.clear == (args.number is not None):
        raise InputError("give either a card number or --clear: kiosk people credential NAME NUMBER")
    if args.number is not None and cfg.door.driver == "osdp":
        from kiosk.door.osdp import CredentialError, encode_card

        try:
            encode_card(clean_credential(args.number), cfg.door.osdp, repr(args.person))
        except CredentialError as exc:
            raise InputError(str(exc)) from None
    with _gallery(cfg) as g:
        p = g.set_credential(_ref(args.person), None if args.clear else args.number)
    print(f"'{p.name}' {'now has a card number' if p.credential is not None else 'has no card number now'}")
    return 0


def cmd_remove(args: argparse.Namespace, cfg: Config) -> int:
    """Remove a person and erase all their templates: secure_delete overwrites the freed pages, the WAL is
    truncated, and the person is erased from every backup (*.db) in gallery.backup_dir."""
    with _gallery(cfg) as g:
        p = g.get_person(_ref(args.person))
        if not args.yes:
            if not sys.stdin.isatty():
                raise InputError(f"refusing to remove '{p.name}' without confirmation: pass --yes")
            answer = input(f"remove '{p.name}' and erase {p.templates} template(s)? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing removed")
                return 0
        r = remove_person(cfg, g, p.id)
    erased = f"erased from {r.erased_from} of {r.backups} backup(s)"
    print(f"removed '{p.name}' and erased {r.templates} template(s); {erased}")
    if r.failed:
        print(
            f"kiosk: error: could not erase '{p.name}' from {len(r.failed)} backup(s), delete them: "
            + "; ".join(r.failed),
            file=sys.stderr,
        )
        return int(ExitCode.GALLERY)
    return 0
