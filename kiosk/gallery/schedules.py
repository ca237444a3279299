"""The access schedules' stored format: weekly time windows in one IANA time zone, checked before they are stored.

A schedule's ``windows`` column holds a JSON list of windows, each ``{"days": ["mon", ...], "start": "HH:MM",
"end": "HH:MM"}``: the window is open on each listed day from ``start`` (inclusive) to ``end`` (exclusive), in the
schedule's local wall-clock time. ``end`` may be ``"24:00"`` (to the end of the day) and must be after ``start``: a
stored window never crosses midnight, so a day's windows are known from that day alone. The command line's text form
(``"mon-fri 22:00-06:00"``) splits an overnight window in two: 22:00-24:00 on the named days and 00:00-06:00 on the
day after each. The stored JSON is canonical (days in week order, keys sorted), so a replica compares row for row.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from kiosk.errors import InputError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = datetime.weekday()
MAX_WINDOWS = 64
DOOR_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_HHMM = re.compile(r"([01][0-9]|2[0-4]):([0-5][0-9])")
_SPEC = re.compile(r"\s*(\S+)\s+(\d{1,2}:\d{2})\s*-\s*(\d{1,2}:\d{2})\s*")
_ALL_DAYS = {"daily", "*", "all"}
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@dataclass(frozen=True)
class Window:
    """Open on ``days`` (weekday numbers, Monday = 0) from ``start`` to ``end``, in minutes since local midnight."""

    days: frozenset[int]
    start: int
    end: int

    def as_json(self) -> dict[str, Any]:
        return {"days": [DAYS[d] for d in sorted(self.days)], "start": _hhmm(self.start), "end": _hhmm(self.end)}

    def __str__(self) -> str:
        return f"{_days_text(self.days)} {_hhmm(self.start)}-{_hhmm(self.end)}"


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _days_text(days: frozenset[int]) -> str:
    if len(days) == 7:
        return "daily"
    ordered = sorted(days)
    if len(ordered) > 2 and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{DAYS[ordered[0]]}-{DAYS[ordered[-1]]}"
    return ",".join(DAYS[d] for d in ordered)


def _minutes(text: object, what: str) -> int:
    if not isinstance(text, str) or not (m := _HHMM.fullmatch(text.strip().zfill(5))):
        raise InputError(f"{what} must be a time HH:MM from 00:00 to 24:00, got {text!r}")
    minutes = int(m[1]) * 60 + int(m[2])
    if minutes > 24 * 60:
        raise InputError(f"{what} must be a time HH:MM from 00:00 to 24:00, got {text!r}")
    return minutes


def _day(text: object) -> int:
    key = text.strip().lower() if isinstance(text, str) else ""
    for i, (short, full) in enumerate(zip(DAYS, _FULL_DAYS, strict=True)):
        if key in (short, full):
            return i
    raise InputError(f"unknown weekday {text!r}; use {', '.join(DAYS)}")


def parse_days(text: str) -> frozenset[int]:
    """``mon-fri``, ``sat,sun``, ``fri-mon`` (wraps past Sunday), ``mon``, or ``daily``/``*`` → weekday numbers."""
    if text.strip().lower() in _ALL_DAYS:
        return frozenset(range(7))
    days: set[int] = set()
    for part in text.split(","):
        first, sep, last = part.partition("-")
        a = _day(first)
        b = _day(last) if sep else a
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(days)


def window(days: Iterable[int], start: int, end: int) -> Window:
    """A checked window: some days, 0 <= start < end <= 24:00."""
    chosen = frozenset(days)
    if not chosen:
        raise InputError("a schedule window needs at least one weekday")
    if not 0 <= start < end <= 24 * 60:
        raise InputError(
            f"a schedule window must end after it starts, on the same day ({_hhmm(start)}-{_hhmm(end)}); "
            'split a window that crosses midnight in two, or write it as text ("fri 22:00-06:00")'
        )
    return Window(chosen, start, end)


def parse_window_spec(text: str) -> list[Window]:
    """The command line's ``"DAYS HH:MM-HH:MM"``: one window, or two when it crosses midnight (the part after
    midnight falls on the day after each named day). ``00:00-24:00`` is the whole day."""
    m = _SPEC.fullmatch(text)
    if not m:
        raise InputError(f'schedule window {text!r} is not "DAYS HH:MM-HH:MM" (e.g. "mon-fri 08:00-18:00")')
    days, start, end = parse_days(m[1]), _minutes(m[2], "a window's start"), _minutes(m[3], "a window's end")
    if start == end:
        raise InputError(f"schedule window {text!r} is empty: its start and end are the same time")
    if start < end:
        return [window(days, start, end)]
    after = [window(days, start, 24 * 60)]
    if end > 0:
        after.append(window({(d + 1) % 7 for d in days}, 0, end))
    return after


def windows_from_json(value: str | Sequence[Any]) -> list[Window]:
    """The stored form (JSON text, or the list it holds) → windows; InputError saying which window is wrong."""
    try:
        items = json.loads(value) if isinstance(value, str) else value
    except ValueError as err:
        raise InputError(f"schedule windows are not valid JSON: {err}") from None
    if not isinstance(items, list) or not items:
        raise InputError('schedule windows must be a non-empty list of {"days", "start", "end"} objects')
    if len(items) > MAX_WINDOWS:
        raise InputError(f"a schedule has at most {MAX_WINDOWS} windows, got {len(items)}")
    out = []
    for i, item in enumerate(items, 1):
        if not isinstance(item, dict) or set(item) != {"days", "start", "end"}:
            raise InputError(f'schedule window {i} must be an object with exactly "days", "start" and "end"')
        if not isinstance(item["days"], list):
            raise InputError(f'schedule window {i}: "days" must be a list of weekdays ({", ".join(DAYS)})')
        start, end = _minutes(item["start"], f"window {i}'s start"), _minutes(item["end"], f"window {i}'s end")
        out.append(window((_day(d) for d in item["days"]), start, end))
    return out


def windows_json(windows: Sequence[Window]) -> str:
    """The canonical stored form: windows in the order given, days in week order, compact, keys sorted."""
    return json.dumps([w.as_json() for w in windows], separators=(",", ":"), sort_keys=True)


def check_tz(tz: str) -> ZoneInfo:
    """An IANA time zone (``Europe/Paris``, ``UTC``); InputError naming it otherwise."""
    if not isinstance(tz, str) or not tz.strip() or tz != tz.strip() or ".." in tz or tz.startswith("/"):
        raise InputError(f"time zone {tz!r} is not an IANA name such as Europe/Paris or UTC")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InputError(f"unknown time zone {tz!r}: use an IANA name such as Europe/Paris or UTC") from None


def parse_doors(doors: str | Sequence[str]) -> str:
    """``'*'`` (every door) or door ids → the stored form: ``'*'`` or the ids, sorted, comma-separated."""
    parts = doors.split(",") if isinstance(doors, str) else list(doors)
    ids = sorted({p.strip() for p in parts if p.strip()})
    if ids == ["*"]:
        return "*"
    if not ids:
        raise InputError("a rule needs '*' (every door) or at least one door id")
    for door in ids:
        if not DOOR_ID.fullmatch(door):
            raise InputError(
                f"door id {door!r} must be 1-63 lowercase letters, digits and hyphens, starting with a letter or "
                "digit (or '*' alone for every door)"
            )
    return ",".join(ids)
