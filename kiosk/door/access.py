"""Who may open which door when: an immutable snapshot of the gallery's access rules, and its verdicts.

``AccessPolicy.load(gallery)`` reads the people, groups, schedules and rules once (``Gallery.access_tables``) and
precomputes, per person, the rules of their groups in id order; ``decide(person_id, door_id, now)`` is then pure
and does no I/O, so the door loop asks it on every grant. On a door in a fleet the gallery is the door's replica of
the hub's tables, so the door decides alone when the hub is unreachable.

Semantics: a person who is unknown, disabled or outside their validity window is refused whatever the rules say. A
site without any rule lets every such admitted person in (``rule`` None), so a single door works as it did before
rules existed. Once one rule exists only a rule grants: its group holds the person, its doors are ``*`` or name
``door_id``, and its schedule is None (always) or has a window holding ``now`` in the schedule's time zone. When
several rules allow, the verdict names the one with the lowest id (the oldest), so the choice is deterministic.

Time zones and DST: windows are local wall-clock times. ``now`` (an aware datetime; a naive one is taken as UTC) is
converted to the schedule's zone and its weekday and time of day are compared with the windows. On the day clocks go
forward the skipped hour never happens, so a window inside it does not open that day and one spanning it is an hour
shorter; on the day they go back the repeated hour happens twice and a window holding it is open both times.

A stored schedule that cannot be read (bad JSON or unknown zone, e.g. a replica written by a newer version) never
opens: its rules grant nothing, and the policy says so in ``problems`` rather than failing the door.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from zoneinfo import ZoneInfo

from kiosk.errors import InputError
from kiosk.gallery.access import AccessTables
from kiosk.gallery.schedules import DAYS, Window, check_tz, windows_from_json

log = logging.getLogger(__name__)

NO_RULES = "no access rules: any enrolled person"


@dataclass(frozen=True)
class AccessVerdict:
    allowed: bool
    rule: str | None  # the rule that allowed; None for a deny, or when the site has no rules
    reason: str


@dataclass(frozen=True)
class _Schedule:
    name: str
    tz: ZoneInfo | None  # None: unreadable, never open
    by_day: tuple[tuple[tuple[int, int], ...], ...]  # per weekday (Monday = 0): (start, end) in seconds of the day

    def open_at(self, now: datetime) -> bool:
        if self.tz is None:
            return False
        local = now.astimezone(self.tz)
        second = local.hour * 3600 + local.minute * 60 + local.second
        return any(start <= second < end for start, end in self.by_day[local.weekday()])


@dataclass(frozen=True)
class _Rule:
    id: int
    name: str
    doors: frozenset[str] | None  # None: every door
    schedule: _Schedule | None  # None: always

    def why_not(self, door_id: str, now: datetime) -> str | None:
        """None when this rule allows at ``door_id`` at ``now``; else a few words saying why not."""
        if self.doors is not None and door_id not in self.doors:
            return f"{self.name} (doors {', '.join(sorted(self.doors))})"
        if self.schedule is not None and not self.schedule.open_at(now):
            state = "not now" if self.schedule.tz is not None else "unreadable"
            return f"{self.name} (schedule {self.schedule.name}: {state})"
        return None


@dataclass(frozen=True)
class _Person:
    name: str
    enabled: bool
    valid_from: str | None  # UTC ISO, as stored (compared as text, like the matcher's query)
    valid_until: str | None
    groups: tuple[str, ...]
    rules: tuple[_Rule, ...]  # the rules of their groups, by id


class _HasAccessTables(Protocol):
    def access_tables(self) -> AccessTables: ...


def _schedule(row: dict[str, object], problems: list[str]) -> _Schedule:
    name = str(row["name"])
    try:
        tz = check_tz(str(row["tz"]))
        windows: Sequence[Window] = windows_from_json(str(row["windows"]))
    except InputError as err:
        problems.append(f"schedule {name!r} cannot be read and never opens: {err}")
        return _Schedule(name, None, ((),) * 7)
    by_day = tuple(
        tuple(sorted((w.start * 60, w.end * 60) for w in windows if day in w.days)) for day in range(len(DAYS))
    )
    return _Schedule(name, tz, by_day)


class AccessPolicy:
    """An immutable snapshot of the access rules; ``decide`` is pure. Build with ``AccessPolicy.load(gallery)``."""

    def __init__(self, tables: AccessTables) -> None:
        problems: list[str] = []
        schedules = {int(r["id"]): _schedule(r, problems) for r in tables.schedules}
        group_names = {int(r["id"]): str(r["name"]) for r in tables.groups}
        rules_of_group: dict[int, list[_Rule]] = {}
        for r in sorted(tables.rules, key=lambda r: int(r["id"])):
            doors = str(r["doors"]).strip()
            door_set = None if doors == "*" else frozenset(d.strip() for d in doors.split(",") if d.strip())
            sid = r["schedule_id"]
            schedule = None if sid is None else schedules.get(int(sid), _Schedule(f"#{sid}", None, ((),) * 7))
            rules_of_group.setdefault(int(r["group_id"]), []).append(
                _Rule(int(r["id"]), str(r["name"]), door_set, schedule)
            )
        self.rule_count = len(tables.rules)
        groups_of: dict[int, list[int]] = {}
        for m in tables.members:
            groups_of.setdefault(int(m["person_id"]), []).append(int(m["group_id"]))
        self._people: dict[int, _Person] = {}
        for p in tables.people:
            gids = groups_of.get(int(p["id"]), [])
            rules = sorted((rule for g in gids for rule in rules_of_group.get(g, [])), key=lambda rule: rule.id)
            self._people[int(p["id"])] = _Person(
                name=str(p["name"]),
                enabled=bool(p["enabled"]),
                valid_from=p["valid_from"],
                valid_until=p["valid_until"],
                groups=tuple(sorted(group_names.get(g, f"#{g}") for g in gids)),
                rules=tuple(rules),
            )
        self.problems = tuple(problems)  # stored schedules that cannot be read (they never open)
        for problem in problems:
            log.warning("access rules: %s", problem)

    @classmethod
    def load(cls, gallery: _HasAccessTables) -> AccessPolicy:
        """The gallery's rules as they are now (one consistent read)."""
        return cls(gallery.access_tables())

    def decide(self, person_id: int, door_id: str, now: datetime) -> AccessVerdict:
        """May ``person_id`` open ``door_id`` at ``now``? The verdict names the deciding rule, or says why not."""
        now = now.replace(tzinfo=UTC) if now.tzinfo is None else now
        person = self._people.get(int(person_id))
        if person is None:
            return AccessVerdict(False, None, f"person {person_id} is not in the gallery")
        if not person.enabled:
            return AccessVerdict(False, None, f"{person.name} is disabled")
        stamp = now.astimezone(UTC).isoformat(timespec="seconds")
        if person.valid_from is not None and stamp < person.valid_from:
            return AccessVerdict(False, None, f"{person.name} is admitted only from {person.valid_from}")
        if person.valid_until is not None and stamp >= person.valid_until:
            return AccessVerdict(False, None, f"{person.name} was admitted only until {person.valid_until}")
        if self.rule_count == 0:
            return AccessVerdict(True, None, NO_RULES)
        refusals = []
        for rule in person.rules:
            why = rule.why_not(door_id, now)
            if why is None:
                groups = ", ".join(person.groups)
                return AccessVerdict(True, rule.name, f"rule {rule.name} allows {person.name} ({groups}) at {door_id}")
            refusals.append(why)
        if not person.groups:
            return AccessVerdict(False, None, f"no rule allows {person.name} at {door_id}: they are in no group")
        if not refusals:
            groups = ", ".join(person.groups)
            return AccessVerdict(
                False, None, f"no rule allows {person.name} at {door_id}: no rule for their groups ({groups})"
            )
        return AccessVerdict(
            False, None, f"no rule allows {person.name} at {door_id} now; rules for their groups: {'; '.join(refusals)}"
        )
