"""Access rules in the gallery (#18): people in groups, groups allowed at doors on schedules.

``AccessStore`` is a part of ``Gallery``: groups and their members, schedules (weekly windows in a time zone, the
format in ``kiosk.gallery.schedules``) and rules (a group, the doors, a schedule or none = always). Every change is
one transaction with its ``admin`` event. Groups, schedules and rules are named, case-insensitively unique; people
are found by id or name as everywhere else. A schedule or group still used by a rule is not removed: the rule would
silently change meaning (the table would cascade or refuse), so the error names the rules to remove first.
``kiosk.door.access.AccessPolicy`` evaluates what is stored here.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from kiosk.errors import DuplicateError, InputError, RecordNotFoundError
from kiosk.gallery.events import EventLog
from kiosk.gallery.records import Person
from kiosk.gallery.schedules import Window, check_tz, parse_doors, windows_from_json, windows_json

logger = logging.getLogger("kiosk.gallery")

MAX_LABEL_LEN = 64


@dataclass(frozen=True)
class Group:
    id: int
    name: str
    members: tuple[str, ...]  # people's names, sorted


@dataclass(frozen=True)
class Schedule:
    id: int
    name: str
    tz: str
    windows: tuple[Window, ...]


@dataclass(frozen=True)
class AccessRule:
    id: int
    name: str
    group: str
    doors: str  # '*' or door ids, comma-separated
    schedule: str | None  # None: always


@dataclass(frozen=True)
class AccessTables:
    """Everything an access decision reads, as rows, from one consistent read (``AccessStore.access_tables``)."""

    people: list[dict[str, Any]]  # id, name, enabled, valid_from, valid_until
    groups: list[dict[str, Any]]  # id, name
    members: list[dict[str, Any]]  # person_id, group_id
    schedules: list[dict[str, Any]]  # id, name, tz, windows (JSON text, as stored)
    rules: list[dict[str, Any]]  # id, name, group_id, doors, schedule_id


def clean_label(kind: str, name: str) -> str:
    """A group, schedule or rule name: stripped, NFC, 1-64 characters, no control characters, no comma."""
    if not isinstance(name, str):
        raise InputError(f"{kind} name must be text, got {type(name).__name__}")
    cleaned = unicodedata.normalize("NFC", name.strip())
    if not cleaned:
        raise InputError(f"{kind} name is empty")
    if len(cleaned) > MAX_LABEL_LEN:
        raise InputError(f"{kind} name is {len(cleaned)} characters long; the limit is {MAX_LABEL_LEN}")
    if "," in cleaned or any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in cleaned):
        raise InputError(f"{kind} name {cleaned!r} contains a comma, control or formatting characters")
    return cleaned


class AccessStore(EventLog):
    """The gallery's access methods (see the module docstring); every write records an ``admin`` event."""

    def get_person(self, ref: str | int) -> Person:
        """Provided by ``Gallery`` (by id or case-insensitive name; PersonNotFoundError)."""
        raise NotImplementedError

    # -- lookups ---------------------------------------------------------------------------------------------

    @staticmethod
    def _find(db: Database, table: str, kind: str, name: str) -> tuple[int, str]:
        """(id, stored name) of a group/schedule/rule by case-insensitive name; RecordNotFoundError otherwise."""
        key = unicodedata.normalize("NFC", name.strip()) if isinstance(name, str) else ""
        row = db.execute(f"SELECT id, name FROM {table} WHERE name = ?", [key]).fetchone()
        if row is None:
            raise RecordNotFoundError(f"no {kind} {name!r}; see `kiosk access {table.replace('access_', '')} list`")
        return int(row[0]), str(row[1])

    @staticmethod
    def _insert_named(db: Database, table: str, kind: str, values: dict[str, Any]) -> int:
        taken = db.execute(f"SELECT id, name FROM {table} WHERE name = ?", [values["name"]]).fetchone()
        if taken:
            raise DuplicateError(f"a {kind} named {taken[1]!r} already exists (id {taken[0]}); choose another name")
        sql = f"INSERT INTO {table} ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})"
        return int(db.execute(sql, list(values.values())).lastrowid or 0)

    @staticmethod
    def _rules_using(db: Database, column: str, row_id: int) -> list[str]:
        sql = f"SELECT name FROM access_rules WHERE {column} = ? ORDER BY name"
        return [str(r[0]) for r in db.execute(sql, [row_id]).fetchall()]

    # -- groups ----------------------------------------------------------------------------------------------

    def add_group(self, name: str) -> Group:
        """Create an empty group; DuplicateError when the name is taken (case-insensitively)."""
        name = clean_label("group", name)
        with self._write() as db:
            group_id = self._insert_named(db, "groups", "group", {"name": name})
            self._audit(db, "group added", detail={"group": name})
        logger.info("gallery: added group id=%d", group_id)
        return self.group(name)

    def remove_group(self, name: str) -> int:
        """Remove a group and its memberships (the people stay); returns how many members it had. A group that a
        rule still grants to is not removed: InputError naming the rules."""
        with self._write() as db:
            group_id, stored = self._find(db, "groups", "group", name)
            if rules := self._rules_using(db, "group_id", group_id):
                raise InputError(
                    f"group {stored!r} is used by rule(s) {', '.join(rules)}; remove those rules first "
                    "(`kiosk access rules remove NAME`)"
                )
            members = int(db.execute("SELECT count(*) FROM person_groups WHERE group_id = ?", [group_id]).fetchone()[0])
            db.execute("DELETE FROM person_groups WHERE group_id = ?", [group_id])
            db.execute("DELETE FROM groups WHERE id = ?", [group_id])
            self._audit(db, "group removed", detail={"group": stored, "members": members})
        return members

    def group(self, name: str) -> Group:
        """One group with its members' names; RecordNotFoundError."""
        with self._guard():
            group_id, stored = self._find(self._db, "groups", "group", name)
        sql = """SELECT p.name FROM person_groups pg JOIN people p ON p.id = pg.person_id WHERE pg.group_id = ?
                 ORDER BY p.name"""
        return Group(group_id, stored, tuple(r["name"] for r in self._rows(sql, [group_id])))

    def list_groups(self) -> list[Group]:
        """Every group with its members, by name."""
        return [self.group(r["name"]) for r in self._rows("SELECT name FROM groups ORDER BY name, id")]

    def add_member(self, group: str, person: str | int) -> Group:
        """Put a person (id or name) in a group; DuplicateError when they already are."""
        p = self.get_person(person)
        with self._write() as db:
            group_id, stored = self._find(db, "groups", "group", group)
            sql = "SELECT 1 FROM person_groups WHERE person_id = ? AND group_id = ?"
            if db.execute(sql, [p.id, group_id]).fetchone():
                raise DuplicateError(f"{p.name!r} is already in group {stored!r}")
            db.execute("INSERT INTO person_groups (person_id, group_id) VALUES (?, ?)", [p.id, group_id])
            self._audit(db, "group member added", p.id, p.name, {"group": stored})
        return self.group(stored)

    def remove_member(self, group: str, person: str | int) -> Group:
        """Take a person out of a group; RecordNotFoundError when they are not in it."""
        p = self.get_person(person)
        with self._write() as db:
            group_id, stored = self._find(db, "groups", "group", group)
            sql = "DELETE FROM person_groups WHERE person_id = ? AND group_id = ?"
            if db.execute(sql, [p.id, group_id]).rowcount != 1:
                raise RecordNotFoundError(f"{p.name!r} is not in group {stored!r}")
            self._audit(db, "group member removed", p.id, p.name, {"group": stored})
        return self.group(stored)

    def groups_of(self, person_id: int) -> list[str]:
        """The names of the groups a person is in, sorted."""
        sql = """SELECT g.name FROM person_groups pg JOIN groups g ON g.id = pg.group_id WHERE pg.person_id = ?
                 ORDER BY g.name"""
        return [str(r["name"]) for r in self._rows(sql, [int(person_id)])]

    # -- schedules -------------------------------------------------------------------------------------------

    def add_schedule(self, name: str, windows: Sequence[Window], *, tz: str = "UTC") -> Schedule:
        """Create a schedule: ``windows`` (see ``kiosk.gallery.schedules``) in the IANA time zone ``tz``."""
        name = clean_label("schedule", name)
        check_tz(tz)
        stored = windows_json(windows)
        windows_from_json(stored)  # the same checks a replica's row gets: non-empty, at most MAX_WINDOWS, each valid
        with self._write() as db:
            schedule_id = self._insert_named(db, "schedules", "schedule", {"name": name, "tz": tz, "windows": stored})
            self._audit(db, "schedule added", detail={"schedule": name, "tz": tz, "windows": [str(w) for w in windows]})
        logger.info("gallery: added schedule id=%d", schedule_id)
        return self.schedule(name)

    def remove_schedule(self, name: str) -> None:
        """Remove a schedule; a schedule that a rule uses is not removed (InputError naming the rules)."""
        with self._write() as db:
            schedule_id, stored = self._find(db, "schedules", "schedule", name)
            if rules := self._rules_using(db, "schedule_id", schedule_id):
                raise InputError(
                    f"schedule {stored!r} is used by rule(s) {', '.join(rules)}; remove those rules first "
                    "(`kiosk access rules remove NAME`)"
                )
            db.execute("DELETE FROM schedules WHERE id = ?", [schedule_id])
            self._audit(db, "schedule removed", detail={"schedule": stored})

    def schedule(self, name: str) -> Schedule:
        """One schedule; RecordNotFoundError."""
        with self._guard():
            schedule_id, _ = self._find(self._db, "schedules", "schedule", name)
        r = self._rows("SELECT id, name, tz, windows FROM schedules WHERE id = ?", [schedule_id])[0]
        return Schedule(int(r["id"]), str(r["name"]), str(r["tz"]), tuple(windows_from_json(r["windows"])))

    def list_schedules(self) -> list[Schedule]:
        """Every schedule, by name."""
        return [self.schedule(r["name"]) for r in self._rows("SELECT name FROM schedules ORDER BY name, id")]

    # -- rules -----------------------------------------------------------------------------------------------

    def add_rule(
        self, name: str, group: str, *, doors: str | Sequence[str] = "*", schedule: str | None = None
    ) -> AccessRule:
        """Allow ``group`` at ``doors`` ('*' = every door, or door ids) during ``schedule`` (None: always)."""
        name, stored_doors = clean_label("rule", name), parse_doors(doors)
        with self._write() as db:
            group_id, group_name = self._find(db, "groups", "group", group)
            schedule_id, schedule_name = None, None
            if schedule is not None:
                schedule_id, schedule_name = self._find(db, "schedules", "schedule", schedule)
            values = {"name": name, "group_id": group_id, "doors": stored_doors, "schedule_id": schedule_id}
            rule_id = self._insert_named(db, "access_rules", "rule", values)
            detail = {"rule": name, "group": group_name, "doors": stored_doors, "schedule": schedule_name}
            self._audit(db, "rule added", detail=detail)
        logger.info("gallery: added access rule id=%d", rule_id)
        return self.rule(name)

    def remove_rule(self, name: str) -> None:
        """Remove a rule; RecordNotFoundError."""
        with self._write() as db:
            rule_id, stored = self._find(db, "access_rules", "rule", name)
            db.execute("DELETE FROM access_rules WHERE id = ?", [rule_id])
            self._audit(db, "rule removed", detail={"rule": stored})

    _RULE_SQL = """SELECT r.id, r.name, g.name AS grp, r.doors, s.name AS schedule FROM access_rules r
                   JOIN groups g ON g.id = r.group_id LEFT JOIN schedules s ON s.id = r.schedule_id"""

    def rule(self, name: str) -> AccessRule:
        """One rule; RecordNotFoundError."""
        with self._guard():
            rule_id, _ = self._find(self._db, "access_rules", "rule", name)
        r = self._rows(self._RULE_SQL + " WHERE r.id = ?", [rule_id])[0]
        return AccessRule(int(r["id"]), str(r["name"]), str(r["grp"]), str(r["doors"]), r["schedule"])

    def list_rules(self) -> list[AccessRule]:
        """Every rule, by id (the order in which ``AccessPolicy`` names the rule that allowed)."""
        rows = self._rows(self._RULE_SQL + " ORDER BY r.id")
        return [AccessRule(int(r["id"]), str(r["name"]), str(r["grp"]), str(r["doors"]), r["schedule"]) for r in rows]

    # -- for the door ----------------------------------------------------------------------------------------

    def access_tables(self) -> AccessTables:
        """The rows an access decision needs, read in one transaction so a concurrent change is all in or all out."""
        queries = (
            "SELECT id, name, enabled, valid_from, valid_until FROM people",
            "SELECT id, name FROM groups",
            "SELECT person_id, group_id FROM person_groups",
            "SELECT id, name, tz, windows FROM schedules",
            "SELECT id, name, group_id, doors, schedule_id FROM access_rules",
        )
        with self._guard():
            self._db.execute("BEGIN")
            try:
                results = [list(self._db.query(sql)) for sql in queries]
            finally:
                self._db.execute("COMMIT")
        return AccessTables(*results)
