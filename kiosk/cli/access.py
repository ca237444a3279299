"""``kiosk access groups | members | schedules | rules | check``: who may open which door, and when.

The concepts, the schedule format and time zones are in docs/access-rules.md.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from kiosk.cli._output import emit_json, table
from kiosk.config import Config
from kiosk.door.access import AccessPolicy
from kiosk.errors import ExitCode
from kiosk.gallery import Gallery, utc_iso
from kiosk.gallery.access import AccessRule, Group, Schedule
from kiosk.gallery.open import open_gallery
from kiosk.gallery.schedules import DOOR_ID, Window, parse_window_spec


def register(sub: Any) -> None:
    p = sub.add_parser(
        "access",
        help="access rules: groups, schedules, which group may open which door when",
        description="Access rules: people in groups, groups allowed at doors on schedules (docs/access-rules.md).",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    g = _kind(verbs, "groups", "groups of people")
    v = g.add_parser("list", help="list groups and their members", description="List groups and their members.")
    v.add_argument("--json", action="store_true", help="print as JSON")
    v.set_defaults(func=cmd_groups_list)
    v = g.add_parser("add", help="create a group", description="Create an empty group.")
    v.add_argument("name")
    v.set_defaults(func=cmd_groups_add)
    v = g.add_parser("remove", help="remove a group", description=cmd_groups_remove.__doc__)
    v.add_argument("name")
    v.set_defaults(func=cmd_groups_remove)

    m = _kind(verbs, "members", "people in a group")
    for action, doc in (("add", "put a person in a group"), ("remove", "take a person out of a group")):
        v = m.add_parser(action, help=doc, description=doc[0].upper() + doc[1:] + ".")
        v.add_argument("group")
        v.add_argument("person", help="name or id")
        v.set_defaults(func=cmd_members, add=action == "add")

    s = _kind(verbs, "schedules", "weekly time windows in a time zone")
    v = s.add_parser("list", help="list schedules", description="List schedules and their windows.")
    v.add_argument("--json", action="store_true", help="print as JSON")
    v.set_defaults(func=cmd_schedules_list)
    v = s.add_parser("add", help="create a schedule", description=cmd_schedules_add.__doc__)
    v.add_argument("name")
    v.add_argument("--tz", default="UTC", help="IANA time zone of the windows (default UTC), e.g. Europe/Paris")
    v.add_argument(
        "--window",
        action="append",
        required=True,
        type=_window,
        metavar='"DAYS HH:MM-HH:MM"',
        help='a weekly window, e.g. "mon-fri 08:00-18:00", "sat,sun 10:00-14:00", "daily 22:00-06:00"; repeatable',
    )
    v.set_defaults(func=cmd_schedules_add)
    v = s.add_parser("remove", help="remove a schedule no rule uses", description="Remove a schedule no rule uses.")
    v.add_argument("name")
    v.set_defaults(func=cmd_schedules_remove)

    r = _kind(verbs, "rules", "which group may open which doors when")
    v = r.add_parser("list", help="list rules", description="List access rules, oldest first.")
    v.add_argument("--json", action="store_true", help="print as JSON")
    v.set_defaults(func=cmd_rules_list)
    v = r.add_parser("add", help="allow a group at doors on a schedule", description=cmd_rules_add.__doc__)
    v.add_argument("name")
    v.add_argument("--group", required=True, help="the group allowed")
    v.add_argument("--doors", default="*", help="door ids, comma-separated (default '*': every door)")
    v.add_argument("--schedule", help="when (default: always)")
    v.set_defaults(func=cmd_rules_add)
    v = r.add_parser("remove", help="remove a rule", description="Remove an access rule.")
    v.add_argument("name")
    v.set_defaults(func=cmd_rules_remove)

    v = verbs.add_parser("check", help="may a person open a door now (or at --at)?", description=cmd_check.__doc__)
    v.add_argument("person", help="name or id")
    v.add_argument("--door", required=True, type=_door, help="the door id")
    v.add_argument("--at", type=_at, help="ISO date/time to check at (default now; without an offset: UTC)")
    v.add_argument("--json", action="store_true", help="print as JSON")
    v.set_defaults(func=cmd_check)


def _kind(verbs: Any, name: str, what: str) -> Any:
    p = verbs.add_parser(name, help=f"manage {what}", description=f"Manage {what}.")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    return actions


def _window(text: str) -> list[Window]:
    try:
        return parse_window_spec(text)
    except ValueError as err:  # InputError is a ValueError: argparse reports it as a usage error
        raise argparse.ArgumentTypeError(str(err)) from None


def _door(text: str) -> str:
    if not DOOR_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"a door id is lowercase letters, digits and hyphens, got {text!r}")
    return text


def _at(text: str) -> datetime:
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date/time: {text!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _ref(text: str) -> str | int:
    """A name, or an id when it is a short ASCII number (as ``kiosk people``)."""
    return int(text) if text.isascii() and text.isdecimal() and len(text) <= 18 else text


def _gallery(cfg: Config) -> Gallery:
    """Access rules never read templates: no encryption key is needed."""
    return open_gallery(cfg, need_key=False)


def _group_dict(x: Group) -> dict[str, Any]:
    return {"id": x.id, "name": x.name, "members": list(x.members)}


def _schedule_dict(x: Schedule) -> dict[str, Any]:
    return {"id": x.id, "name": x.name, "tz": x.tz, "windows": [w.as_json() for w in x.windows]}


def _rule_dict(x: AccessRule) -> dict[str, Any]:
    return {"id": x.id, "name": x.name, "group": x.group, "doors": x.doors, "schedule": x.schedule}


def cmd_groups_list(args: argparse.Namespace, cfg: Config) -> int:
    with _gallery(cfg) as g:
        groups = g.list_groups()
    if args.json:
        emit_json([_group_dict(x) for x in groups])
    elif not groups:
        print("no groups yet: kiosk access groups add NAME")
    else:
        print(table([[str(x.id), x.name, ", ".join(x.members) or "-"] for x in groups], ["id", "group", "members"]))
    return 0


def cmd_groups_add(args: argparse.Namespace, cfg: Config) -> int:
    with _gallery(cfg) as g:
        x = g.add_group(args.name)
    print(f"added group '{x.name}' (id {x.id}); add people with: kiosk access members add '{x.name}' PERSON")
    return 0


def cmd_groups_remove(args: argparse.Namespace, cfg: Config) -> int:
    """Remove a group; its members stay enrolled. A group a rule still names is not removed."""
    with _gallery(cfg) as g:
        members = g.remove_group(args.name)
    print(f"removed group '{args.name}' ({members} member(s) taken out of it)")
    return 0


def cmd_members(args: argparse.Namespace, cfg: Config) -> int:
    with _gallery(cfg) as g:
        person = g.get_person(_ref(args.person))
        x = g.add_member(args.group, person.id) if args.add else g.remove_member(args.group, person.id)
    print(f"'{person.name}' {'added to' if args.add else 'removed from'} group '{x.name}' ({len(x.members)} member(s))")
    return 0


def cmd_schedules_list(args: argparse.Namespace, cfg: Config) -> int:
    with _gallery(cfg) as g:
        schedules = g.list_schedules()
    if args.json:
        emit_json([_schedule_dict(x) for x in schedules])
    elif not schedules:
        print('no schedules yet: kiosk access schedules add NAME --tz ZONE --window "mon-fri 08:00-18:00"')
    else:
        rows = [[str(x.id), x.name, x.tz, "; ".join(str(w) for w in x.windows)] for x in schedules]
        print(table(rows, ["id", "schedule", "time zone", "windows"]))
    return 0


def cmd_schedules_add(args: argparse.Namespace, cfg: Config) -> int:
    """Create a schedule: weekly windows of local wall-clock time in one IANA time zone. A window that crosses
    midnight ("fri 22:00-06:00") is stored as two: to 24:00 on the named days, from 00:00 on the days after."""
    windows = [w for spec in args.window for w in spec]
    with _gallery(cfg) as g:
        x = g.add_schedule(args.name, windows, tz=args.tz)
    print(f"added schedule '{x.name}' ({x.tz}): {'; '.join(str(w) for w in x.windows)}")
    return 0


def cmd_schedules_remove(args: argparse.Namespace, cfg: Config) -> int:
    with _gallery(cfg) as g:
        g.remove_schedule(args.name)
    print(f"removed schedule '{args.name}'")
    return 0


def cmd_rules_list(args: argparse.Namespace, cfg: Config) -> int:
    with _gallery(cfg) as g:
        rules = g.list_rules()
    if args.json:
        emit_json([_rule_dict(x) for x in rules])
    elif not rules:
        print("no access rules: every enrolled person may open every door (kiosk access rules add NAME --group G)")
    else:
        rows = [[str(x.id), x.name, x.group, x.doors, x.schedule or "always"] for x in rules]
        print(table(rows, ["id", "rule", "group", "doors", "schedule"]))
    return 0


def cmd_rules_add(args: argparse.Namespace, cfg: Config) -> int:
    """Allow a group at some doors ('*': every door) during a schedule (default: always). Once any rule exists,
    only the rules grant: people in no allowed group are refused at every door."""
    with _gallery(cfg) as g:
        first = not g.list_rules()
        x = g.add_rule(args.name, args.group, doors=args.doors, schedule=args.schedule)
    print(f"added rule '{x.name}': group {x.group} at {x.doors} doors, {x.schedule or 'always'}")
    if first:
        print("note: this is the first rule; from now on only people a rule allows are let in")
    return 0


def cmd_rules_remove(args: argparse.Namespace, cfg: Config) -> int:
    with _gallery(cfg) as g:
        g.remove_rule(args.name)
    print(f"removed rule '{args.name}'")
    return 0


def cmd_check(args: argparse.Namespace, cfg: Config) -> int:
    """Explain whether a person may open a door now, or at --at, by the gallery's rules (exit 0: allowed, 1: not).
    Recognition and liveness are not part of this check."""
    at = args.at or datetime.now(UTC)
    with _gallery(cfg) as g:
        person = g.get_person(_ref(args.person))
        groups = g.groups_of(person.id)
        verdict = AccessPolicy.load(g).decide(person.id, args.door, at)
    info = {
        "person": person.name,
        "door": args.door,
        "at": utc_iso(at),
        "groups": groups,
        "allowed": verdict.allowed,
        "rule": verdict.rule,
        "reason": verdict.reason,
    }
    if args.json:
        emit_json(info)
    else:
        print(f"{'allowed' if verdict.allowed else 'refused'}: {verdict.reason}")
        print(f"  at {info['at']}, groups: {', '.join(groups) or '-'}")
    return 0 if verdict.allowed else int(ExitCode.FAILURE)
