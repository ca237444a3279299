"""Access rules (#18): groups, schedules and rules in the gallery; ``AccessPolicy`` verdicts; the door loop refusing a
recognised person the rules do not allow; the ``kiosk access`` commands."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock
from zoneinfo import ZoneInfo

import cv2
import numpy as np
import pytest

from kiosk.config import Config, load_config, parse_config
from kiosk.context import Context
from kiosk.door.access import NO_RULES, AccessPolicy
from kiosk.door.camera import Frame
from kiosk.door.decide import DENIED, GRANTED, NOT_REQUIRED, Decision
from kiosk.door.loop import DoorLoop
from kiosk.door.relay import open_door
from kiosk.enroll import enroll
from kiosk.errors import DuplicateError, ExitCode, GalleryError, InputError, PersonNotFoundError, RecordNotFoundError
from kiosk.gallery import Gallery, TemplateIn, erase_from_backup
from kiosk.gallery.access import AccessTables
from kiosk.gallery.open import open_gallery
from kiosk.gallery.schedules import parse_days, parse_doors, parse_window_spec, window, windows_from_json, windows_json
from kiosk.recognition.pipeline import Thresholds
from kiosk.screen.state import outcome_of, reason_code
from kiosk.types import Image
from tests.helpers import config_file, run_cli, run_main

gpiozero = pytest.importorskip("gpiozero", reason="gpiozero (dev extra) is needed for the mock relay")
from gpiozero.pins.mock import MockFactory  # noqa: E402

PARIS = ZoneInfo("Europe/Paris")
# 2026-12-07 is a Monday.
MON_10 = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


@pytest.fixture()
def g() -> Iterator[Gallery]:
    with Gallery(":memory:", actor="test") as gallery:
        for name in ("Ada", "Bob", "Cy"):
            gallery.add_person(name)
        yield gallery


def spec(*texts: str) -> list[Any]:
    return [w for t in texts for w in parse_window_spec(t)]


# -- the schedule format -----------------------------------------------------------------------------------------


def test_window_text_forms() -> None:
    assert parse_days("mon-fri") == frozenset(range(5))
    assert parse_days("fri-mon") == frozenset({4, 5, 6, 0})
    assert parse_days("sat,Sunday") == frozenset({5, 6})
    assert parse_days("daily") == frozenset(range(7))
    [w] = parse_window_spec("mon-fri 8:00-18:30")
    assert (w.start, w.end, str(w)) == (480, 1110, "mon-fri 08:00-18:30")
    assert [str(w) for w in parse_window_spec("fri,sun 22:00-06:00")] == ["fri,sun 22:00-24:00", "mon,sat 00:00-06:00"]
    assert [str(w) for w in parse_window_spec("sun 22:00-00:00")] == ["sun 22:00-24:00"]
    assert [str(w) for w in parse_window_spec("daily 00:00-24:00")] == ["daily 00:00-24:00"]


@pytest.mark.parametrize(
    "text",
    ["mon-fri", "funday 08:00-09:00", "mon 8-9", "mon 08:00-08:00", "mon 25:00-26:00", "mon 08:60-09:00", "mon 24:01-"],
)
def test_bad_window_text_is_refused(text: str) -> None:
    with pytest.raises(InputError):
        parse_window_spec(text)


def test_stored_windows_round_trip_and_are_checked() -> None:
    windows = spec("mon-fri 08:00-18:00", "sat 10:00-24:00")
    stored = windows_json(windows)
    assert json.loads(stored)[1] == {"days": ["sat"], "end": "24:00", "start": "10:00"}
    assert windows_from_json(stored) == windows
    for bad in (
        "[]",
        "not json",
        '[{"days": ["mon"], "start": "18:00", "end": "08:00"}]',  # crosses midnight: stored windows never do
        '[{"days": [], "start": "08:00", "end": "09:00"}]',
        '[{"days": ["mon"], "start": "08:00"}]',
        '[{"days": "mon", "start": "08:00", "end": "09:00"}]',
        '[{"days": ["mon"], "start": "08:00", "end": "09:00", "extra": 1}]',
    ):
        with pytest.raises(InputError):
            windows_from_json(bad)
    with pytest.raises(InputError):
        window({0}, 600, 600)


def test_doors() -> None:
    assert parse_doors("*") == "*"
    assert parse_doors(" front, back ,front") == "back,front"
    assert parse_doors(["lab-2"]) == "lab-2"
    for bad in ("", "Front", "-x", "a b", "*,front", "x" * 64):
        with pytest.raises(InputError):
            parse_doors(bad)


# -- storage -------------------------------------------------------------------------------------------------------


def test_groups_and_members(g: Gallery) -> None:
    g.add_group("Staff")
    with pytest.raises(DuplicateError):
        g.add_group("staff")
    g.add_member("staff", "ada")
    g.add_member("STAFF", 2)
    with pytest.raises(DuplicateError):
        g.add_member("staff", "Ada")
    with pytest.raises(PersonNotFoundError):
        g.add_member("staff", "nobody")
    with pytest.raises(RecordNotFoundError):
        g.add_member("no such group", "Ada")
    assert g.group("staff").members == ("Ada", "Bob")
    assert g.groups_of(1) == ["Staff"] and g.groups_of(3) == []
    g.remove_member("staff", "Bob")
    with pytest.raises(RecordNotFoundError):
        g.remove_member("staff", "Bob")
    assert [(x.name, x.members) for x in g.list_groups()] == [("Staff", ("Ada",))]
    g.remove("Ada")  # removing a person removes their memberships
    assert g.group("staff").members == ()
    assert g.remove_group("staff") == 0 and g.list_groups() == []
    with pytest.raises(RecordNotFoundError):
        g.remove_group("staff")
    for bad in ("", " ", "a,b", "x" * 65, "tab\there"):
        with pytest.raises(InputError):
            g.add_group(bad)


def test_schedules(g: Gallery) -> None:
    s = g.add_schedule("Office", spec("mon-fri 08:00-18:00"), tz="Europe/Paris")
    assert (s.name, s.tz, [str(w) for w in s.windows]) == ("Office", "Europe/Paris", ["mon-fri 08:00-18:00"])
    with pytest.raises(DuplicateError):
        g.add_schedule("office", spec("sat 08:00-09:00"))
    for tz in ("Mars/Olympus", "", "../etc/passwd", "/etc/localtime", " UTC"):
        with pytest.raises(InputError):
            g.add_schedule("bad tz", spec("sat 08:00-09:00"), tz=tz)
    with pytest.raises(InputError):
        g.add_schedule("empty", [])
    with pytest.raises(InputError):
        g.add_schedule("too many", spec("mon 08:00-09:00") * 65)
    assert [x.name for x in g.list_schedules()] == ["Office"]


def test_rules_and_a_schedule_or_group_in_use(g: Gallery) -> None:
    g.add_group("staff")
    g.add_schedule("office", spec("mon-fri 08:00-18:00"))
    rule = g.add_rule("staff-office", "staff", doors="front,back", schedule="OFFICE")
    assert (rule.group, rule.doors, rule.schedule) == ("staff", "back,front", "office")
    assert g.add_rule("staff-any", "staff").doors == "*"
    with pytest.raises(DuplicateError):
        g.add_rule("Staff-Any", "staff")
    with pytest.raises(RecordNotFoundError):
        g.add_rule("x", "nobody-group")
    with pytest.raises(RecordNotFoundError):
        g.add_rule("x", "staff", schedule="nights")
    with pytest.raises(InputError):
        g.add_rule("x", "staff", doors="Front Door")
    with pytest.raises(InputError, match=r"used by rule.*staff-office"):
        g.remove_schedule("office")
    with pytest.raises(InputError, match=r"used by rule.*staff-any, staff-office"):
        g.remove_group("staff")
    assert [r.name for r in g.list_rules()] == ["staff-office", "staff-any"]
    g.remove_rule("staff-office")
    g.remove_schedule("office")
    with pytest.raises(RecordNotFoundError):
        g.remove_rule("staff-office")


def test_every_change_is_audited_in_its_transaction(g: Gallery) -> None:
    before = g.last_event_id()
    g.add_group("staff")
    g.add_member("staff", "Ada")
    g.add_schedule("office", spec("mon 08:00-09:00"))
    g.add_rule("r", "staff", schedule="office")
    with pytest.raises(InputError):
        g.remove_schedule("office")  # refused: no change, no event
    g.remove_rule("r")
    g.remove_schedule("office")
    g.remove_member("staff", "Ada")
    g.remove_group("staff")
    events = [e for e in g.events() if e["id"] > before]
    assert [e["outcome"] for e in events] == [
        "group added",
        "group member added",
        "schedule added",
        "rule added",
        "rule removed",
        "schedule removed",
        "group member removed",
        "group removed",
    ]
    assert all(e["kind"] == "admin" and e["detail"]["by"] == "test" for e in events)
    assert events[1]["person_name"] == "Ada" and events[1]["detail"]["group"] == "staff"
    assert g.verify_events().ok


# -- evaluation ----------------------------------------------------------------------------------------------------


def test_no_rules_lets_every_admitted_person_in(g: Gallery) -> None:
    policy = AccessPolicy.load(g)
    v = policy.decide(1, "front", MON_10)
    assert (v.allowed, v.rule, v.reason) == (True, None, NO_RULES)
    assert not policy.decide(99, "front", MON_10).allowed
    g.set_enabled("Bob", False)
    g.set_validity("Cy", None, MON_10)
    policy = AccessPolicy.load(g)
    assert policy.decide(2, "front", MON_10).reason == "Bob is disabled"
    assert not policy.decide(3, "front", MON_10).allowed
    assert policy.decide(3, "front", MON_10 - timedelta(seconds=1)).allowed


def test_groups_doors_and_the_rule_named(g: Gallery) -> None:
    for name in ("staff", "cleaners", "empty"):
        g.add_group(name)
    g.add_member("staff", "Ada")
    g.add_member("cleaners", "Ada")
    g.add_member("cleaners", "Bob")
    g.add_schedule("never-now", spec("sun 03:00-04:00"))
    g.add_rule("cleaners-back", "cleaners", doors="back")
    g.add_rule("staff-front", "staff", doors="front,lab")
    g.add_rule("staff-anywhere-sunday", "staff", schedule="never-now")
    g.add_rule("cleaners-all", "cleaners")
    policy = AccessPolicy.load(g)
    # Several rules allow: the lowest id is named.
    assert policy.decide(1, "back", MON_10).rule == "cleaners-back"
    assert policy.decide(1, "front", MON_10).rule == "staff-front"
    assert policy.decide(2, "front", MON_10).rule == "cleaners-all"
    v = policy.decide(3, "front", MON_10)
    assert not v.allowed and v.rule is None and v.reason == "no rule allows Cy at front: they are in no group"
    g.remove_rule("cleaners-all")
    policy = AccessPolicy.load(g)
    v = policy.decide(2, "front", MON_10)
    assert v.reason == "no rule allows Bob at front now; rules for their groups: cleaners-back (doors back)"
    g.add_member("empty", "Cy")
    assert "no rule for their groups (empty)" in AccessPolicy.load(g).decide(3, "front", MON_10).reason
    v = AccessPolicy.load(g).decide(1, "garage", MON_10)
    assert v.reason == (
        "no rule allows Ada at garage now; rules for their groups: cleaners-back (doors back); "
        "staff-front (doors front, lab); staff-anywhere-sunday (schedule never-now: not now)"
    )


def _one_rule(g: Gallery, windows: list[str], tz: str = "UTC") -> AccessPolicy:
    g.add_group("staff")
    g.add_member("staff", "Ada")
    g.add_schedule("s", spec(*windows), tz=tz)
    g.add_rule("r", "staff", schedule="s")
    return AccessPolicy.load(g)


def test_weekday_and_end_of_day_edges(g: Gallery) -> None:
    policy = _one_rule(g, ["mon-fri 08:00-18:00", "fri 22:00-24:00"])

    def at(day: int, hh: int, mm: int, ss: int = 0) -> bool:
        return policy.decide(1, "front", datetime(2026, 12, 7 + day, hh, mm, ss, tzinfo=UTC)).allowed

    assert not at(0, 7, 59, 59) and at(0, 8, 0) and at(0, 17, 59, 59) and not at(0, 18, 0)  # start in, end out
    assert at(4, 12, 0) and not at(5, 12, 0) and not at(6, 12, 0)  # Friday yes, the weekend no
    assert at(4, 23, 59, 59) and not at(5, 0, 0)  # 24:00 is the end of Friday, not Saturday
    naive = datetime(2026, 12, 7, 9, 0)  # naive = UTC
    assert policy.decide(1, "front", naive).rule == "r"


def test_overnight_window_from_text(g: Gallery) -> None:
    policy = _one_rule(g, ["fri 22:00-06:00"])
    fri_23 = datetime(2026, 12, 11, 23, 0, tzinfo=UTC)
    assert policy.decide(1, "x", fri_23).allowed
    assert policy.decide(1, "x", fri_23 + timedelta(hours=6, minutes=59)).allowed  # Saturday 05:59
    assert not policy.decide(1, "x", fri_23 + timedelta(hours=7)).allowed  # Saturday 06:00
    assert not policy.decide(1, "x", fri_23 - timedelta(days=1)).allowed  # Thursday


def test_schedule_time_zone(g: Gallery) -> None:
    policy = _one_rule(g, ["mon 08:00-09:00"], tz="Europe/Paris")
    # Paris is UTC+1 in winter: 08:00 there is 07:00 UTC.
    assert policy.decide(1, "x", datetime(2026, 12, 7, 7, 0, tzinfo=UTC)).allowed
    assert not policy.decide(1, "x", datetime(2026, 12, 7, 8, 0, tzinfo=UTC)).allowed
    # Any aware datetime is converted: 08:30 in New York is 14:30 in Paris.
    ny = ZoneInfo("America/New_York")
    assert not policy.decide(1, "x", datetime(2026, 12, 7, 8, 30, tzinfo=ny)).allowed
    # The weekday is Paris's: Sunday 23:30 UTC is Monday 00:30 in Paris.
    g2 = _one_rule_in(["mon 00:00-01:00"], "Europe/Paris")
    assert g2.decide(1, "x", datetime(2026, 12, 6, 23, 30, tzinfo=UTC)).allowed


def _one_rule_in(windows: list[str], tz: str) -> AccessPolicy:
    with Gallery(":memory:") as other:
        other.add_person("Ada")
        return _one_rule(other, windows, tz)


def test_dst_transition_days() -> None:
    # Europe/Paris, 2026-03-29 (a Sunday): 02:00 local jumps to 03:00 (01:00 UTC).
    policy = _one_rule_in(["sun 01:00-04:00", "sun 02:15-02:45"], "Europe/Paris")
    spring = datetime(2026, 3, 29, 0, 0, tzinfo=UTC)  # 01:00 local, UTC+1
    open_minutes = [m for m in range(0, 240) if policy.decide(1, "x", spring + timedelta(minutes=m)).allowed]
    # 01:00-02:00 local (UTC+1) then 03:00-04:00 local (UTC+2): two real hours, the 02:15-02:45 window never opens.
    assert open_minutes == list(range(0, 120))
    # 2026-10-25 (a Sunday): 03:00 local goes back to 02:00 (01:00 UTC); 02:00-03:00 local happens twice.
    policy = _one_rule_in(["sun 02:15-02:45"], "Europe/Paris")
    autumn = datetime(2026, 10, 24, 23, 0, tzinfo=UTC)  # 01:00 local, UTC+2
    open_minutes = [m for m in range(0, 240) if policy.decide(1, "x", autumn + timedelta(minutes=m)).allowed]
    assert open_minutes == list(range(75, 105)) + list(range(135, 165))  # open both times, 30 minutes each


def test_an_unreadable_stored_schedule_never_opens(g: Gallery) -> None:
    policy = _one_rule(g, ["daily 00:00-24:00"])
    assert policy.decide(1, "x", MON_10).allowed and not policy.problems
    # A replica row written by something else: the door must not fail, and must not open.
    with g._write() as db:
        db.execute("UPDATE schedules SET tz = 'Mars/Olympus'")
    policy = AccessPolicy.load(g)
    v = policy.decide(1, "x", MON_10)
    assert not v.allowed and "schedule s: unreadable" in v.reason and policy.problems
    with g._write() as db:
        db.execute("UPDATE schedules SET tz = 'UTC', windows = '[{\"days\": 1}]'")
    assert not AccessPolicy.load(g).decide(1, "x", MON_10).allowed


def test_matcher_still_refuses_disabled_and_expired_people(g: Gallery) -> None:
    """The rules never widen who the matcher admits: disabled or expired people have no templates in its matrix."""
    vec = np.ones(8, np.float32)
    t = TemplateIn(vec, "m", "sha", 1.0, "test")
    g.add_templates("Ada", [t])
    g.add_templates("Bob", [t])
    g.add_templates("Cy", [t])
    g.add_group("all")
    for who in ("Ada", "Bob", "Cy"):
        g.add_member("all", who)
    g.add_rule("all-always", "all")
    g.set_enabled("Bob", False)
    g.set_validity("Cy", None, MON_10)
    assert sorted(set(g.matrix("m", "sha", at=MON_10).names)) == ["Ada"]
    policy = AccessPolicy.load(g)
    assert [policy.decide(i, "x", MON_10).allowed for i in (1, 2, 3)] == [True, False, False]


# -- the door loop -------------------------------------------------------------------------------------------------

RELAY = 17
W, H, FPS = 640, 480, 10.0


def loop_cfg(tmp_path: Path, **sections: dict[str, object]) -> Config:
    data: dict[str, object] = {
        "data_dir": str(tmp_path / "data"),
        "door": {"driver": "gpiozero", "relay_pin": RELAY, "pulse_s": 0.3, "max_pulse_s": 1.0},
        "decision": {"frames_needed": 3, "window": 5, "cooldown_s": 0.0, "track_max_age_s": 0.4},
        "liveness": {"mode": "off"},  # still photos: liveness has its own tests
    }
    data.update(sections)
    return parse_config(data)


class NoFaces:
    """Enough of ``Pipeline`` to build a ``DoorLoop`` whose decisions the test hands to it."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.thresholds = Thresholds(accept=0.47, likely=0.36, duplicate=0.47)


def grant(person_id: int, name: str, track_id: int = 1) -> Decision:
    return Decision(
        outcome=GRANTED,
        track_id=track_id,
        person_id=person_id,
        name=name,
        score=0.8,
        runner_up=None,
        runner_up_score=None,
        threshold=0.47,
        frames_used=3,
        liveness=NOT_REQUIRED,
        reason=f"3 of 3 frames matched {name}",
        first_seen=1.0,
        t=1.5,
    )


def pulses(factory: MockFactory) -> int:
    return [bool(s.state) for s in factory.pin(RELAY).states].count(True)


def test_loop_refuses_a_grant_the_rules_do_not_allow_then_grants_once_allowed(
    tmp_path: Path, factory: MockFactory
) -> None:
    cfg = loop_cfg(tmp_path)
    cfg.gallery_path.parent.mkdir(mode=0o700, parents=True)
    with Gallery(cfg.gallery_path) as admin:
        ada = admin.add_person("Ada")
        admin.add_group("staff")
        admin.add_group("night")
        admin.add_schedule("never", spec("sun 03:00-03:01"))
        admin.add_rule("night-front", "night", doors="front", schedule="never")
    with Gallery(cfg.gallery_path) as gallery, open_door(cfg.door, pin_factory=factory) as door:
        loop = DoorLoop(NoFaces(cfg), gallery, None, door, door_id="front")
        refused = loop._act(grant(ada.id, "Ada"), None, None)
        assert refused.outcome == DENIED and refused.person_id == ada.id and pulses(factory) == 0
        assert (
            refused.reason
            == "3 of 3 frames matched Ada; access refused: no rule allows Ada at front: they are in no group"
        )
        # The screen shows a recognised person refused (the existing "denied"/"refused"), never the reason's prose.
        assert (outcome_of(refused), reason_code(refused)) == ("denied", "refused")
        # Another process changes the rules: the loop sees the new data_version at the next grant.
        with Gallery(cfg.gallery_path) as admin:
            admin.add_member("staff", "Ada")
            admin.add_rule("staff-front", "staff", doors="front,back")
        granted = loop._act(grant(ada.id, "Ada", track_id=2), None, None)
        assert granted.outcome == GRANTED and pulses(factory) == 1
        assert (loop.stats.granted, loop.stats.denied) == (1, 1)
        access = [e for e in gallery.events() if e["kind"] == "access"]
    assert [(e["outcome"], e["door_action"]) for e in access] == [("denied", "none"), ("granted", "pulse 0.3s")]
    assert "no rule allows Ada at front" in access[0]["detail"]["reason"] and "rule" not in access[0]["detail"]
    assert access[1]["detail"]["rule"] == "staff-front" and access[1]["person_name"] == "Ada"


def test_loop_without_rules_grants_as_before(tmp_path: Path, factory: MockFactory) -> None:
    cfg = loop_cfg(tmp_path)
    with Gallery(":memory:") as gallery, open_door(cfg.door, pin_factory=factory) as door:
        ada = gallery.add_person("Ada")
        loop = DoorLoop(NoFaces(cfg), gallery, None, door)
        assert loop._act(grant(ada.id, "Ada"), None, None).granted and pulses(factory) == 1
        [event] = [e for e in gallery.events() if e["kind"] == "access"]
    assert event["outcome"] == "granted" and "rule" not in event["detail"]


def test_loop_denies_when_the_rules_cannot_be_read(
    tmp_path: Path, factory: MockFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = loop_cfg(tmp_path)
    with Gallery(":memory:") as gallery, open_door(cfg.door, pin_factory=factory) as door:
        ada = gallery.add_person("Ada")
        loop = DoorLoop(NoFaces(cfg), gallery, None, door)

        def locked() -> AccessTables:
            raise GalleryError("gallery is locked")

        monkeypatch.setattr(gallery, "access_tables", locked)
        d = loop._act(grant(ada.id, "Ada"), None, None)
        assert d.outcome == DENIED and "access rules cannot be read" in d.reason and pulses(factory) == 0
        monkeypatch.undo()
        assert loop._act(grant(ada.id, "Ada", 2), None, None).granted  # loaded now
        monkeypatch.setattr(gallery, "access_tables", locked)
        gallery.add_group("x")  # a change: the loop tries to reload, fails, keeps the rules it has
        assert loop._act(grant(ada.id, "Ada", 3), None, None).granted


def scene(photo: Image | None, i: int = 0) -> Image:
    canvas = np.full((H, W, 3), 110, np.uint8)
    if photo is None:
        return canvas
    img = cv2.resize(photo, None, fx=1.4, fy=1.4)
    h, w = img.shape[:2]
    x, y = (W - w) // 2 + (i % 5), (H - h) // 2
    canvas[y : y + h, x : x + w] = img
    return canvas


def test_recognised_person_not_allowed_now_is_denied_with_no_pulse(
    tmp_path: Path, faces_dir: Path, factory: MockFactory
) -> None:
    """Real models, a real photo: the whole frame path (the decisions process() returns are the ones acted on)."""
    colin = sorted((faces_dir / "lfw" / "images" / "Colin_Powell").glob("*.jpg"))
    cfg = loop_cfg(tmp_path)
    photo = cv2.imread(str(colin[3]))
    with Context(cfg) as ctx, open_door(cfg.door, pin_factory=factory) as door:
        enroll(ctx.pipeline, ctx.gallery, "Colin Powell", colin[:2])
        ctx.gallery.add_group("staff")
        ctx.gallery.add_schedule("office", spec("mon-fri 08:00-18:00"))
        ctx.gallery.add_rule("staff-office", "staff", schedule="office")
        ctx.gallery.add_member("staff", "Colin Powell")
        seen: list[Decision] = []
        loop = DoorLoop(ctx.pipeline, ctx.gallery, None, door, door_id="front", on_decision=lambda d, _: seen.append(d))
        frame_no = 0

        def visit() -> list[Decision]:
            nonlocal frame_no
            out: list[Decision] = []
            for k, photo_k in enumerate([photo] * 8 + [None] * 6):
                out += loop.process_contained(Frame(scene(photo_k, k), frame_no, 100.0 + frame_no / FPS))
                frame_no += 1
            return out

        sunday = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
        monday = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
        with mock.patch("kiosk.door.loop.utc_now", return_value=sunday):
            first = visit()
        with mock.patch("kiosk.door.loop.utc_now", return_value=monday):
            second = visit()
        events = [e for e in ctx.gallery.events() if e["kind"] == "access"]
    assert [(d.outcome, d.name) for d in first] == [("denied", "Colin Powell")] and first == seen[:1]
    assert "access refused: no rule allows Colin Powell at front now" in first[0].reason
    assert [(d.outcome, d.name) for d in second] == [("granted", "Colin Powell")]
    assert pulses(factory) == 1
    assert [e["outcome"] for e in events] == ["denied", "granted"]
    assert "staff-office (schedule office: not now)" in events[0]["detail"]["reason"]
    assert events[1]["detail"]["rule"] == "staff-office"


# -- the command line ----------------------------------------------------------------------------------------------


def test_cli_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = config_file(tmp_path)
    with open_gallery(load_config(cfg_path), need_key=False) as g:
        g.add_person("Ada Lovelace")
        g.add_person("Bob")

    def kiosk(*argv: str) -> tuple[int, str, str]:
        return run_cli(cfg_path, capsys, "access", *argv)

    code, out, _ = kiosk("rules", "list")
    assert code == 0 and "no access rules" in out
    assert kiosk("groups", "add", "staff")[0] == 0
    assert kiosk("groups", "add", "Staff")[0] == ExitCode.DUPLICATE
    assert kiosk("members", "add", "staff", "ada lovelace")[0] == 0
    code, _, err = kiosk("members", "add", "staff", "Nobody")
    assert code == ExitCode.NOT_FOUND and "kiosk people list" in err
    code, _, err = kiosk("members", "add", "nogroup", "Bob")
    assert code == ExitCode.NOT_FOUND and "kiosk access groups list" in err
    code, out, _ = kiosk("schedules", "add", "office", "--tz", "Europe/Paris", "--window", "mon-fri 08:00-18:00",
                         "--window", "sat 22:00-02:00")  # fmt: skip
    assert code == 0 and "sat 22:00-24:00; sun 00:00-02:00" in out
    code, _, err = kiosk("schedules", "add", "bad", "--tz", "Mars/Base", "--window", "mon 08:00-09:00")
    assert code == ExitCode.INPUT and "unknown time zone 'Mars/Base'" in err and "\n" not in err.strip()
    code, _, err = run_main(capsys, "--config", str(cfg_path), "access", "schedules", "add", "x", "--window", "mon",
                            catch_exit=True)  # fmt: skip
    assert code == ExitCode.USAGE and "DAYS HH:MM-HH:MM" in err
    code, out, _ = kiosk("rules", "add", "staff-office", "--group", "staff", "--doors", "front,back", "--schedule",
                         "office")  # fmt: skip
    assert code == 0 and "first rule" in out
    code, _, err = kiosk("schedules", "remove", "office")
    assert code == ExitCode.INPUT and "used by rule(s) staff-office" in err
    code, out, _ = kiosk("rules", "list", "--json")
    assert json.loads(out) == [
        {"id": 1, "name": "staff-office", "group": "staff", "doors": "back,front", "schedule": "office"}
    ]
    code, out, _ = kiosk("groups", "list", "--json")
    assert json.loads(out) == [{"id": 1, "name": "staff", "members": ["Ada Lovelace"]}]
    code, out, _ = kiosk("schedules", "list", "--json")
    assert json.loads(out)[0]["windows"][0] == {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "08:00",
                                                "end": "18:00"}  # fmt: skip
    # Monday 09:00 in Paris is 08:00 UTC.
    code, out, _ = kiosk("check", "Ada Lovelace", "--door", "front", "--at", "2026-12-07T09:00+01:00", "--json")
    verdict = json.loads(out)
    assert code == 0 and verdict["allowed"] and verdict["rule"] == "staff-office" and verdict["groups"] == ["staff"]
    assert verdict["at"] == "2026-12-07T08:00:00+00:00"
    code, out, _ = kiosk("check", "1", "--door", "front", "--at", "2026-12-07T18:30:00")
    assert code == 1 and out.startswith("refused: no rule allows Ada Lovelace at front now")
    code, out, _ = kiosk("check", "Bob", "--door", "garage")
    assert code == 1 and "they are in no group" in out
    assert kiosk("members", "remove", "staff", "Ada Lovelace")[0] == 0
    assert kiosk("rules", "remove", "staff-office")[0] == 0
    assert kiosk("schedules", "remove", "office")[0] == 0
    code, out, _ = kiosk("groups", "remove", "staff")
    assert code == 0 and "removed group" in out
    code, out, _ = kiosk("check", "Bob", "--door", "garage")
    assert code == 0 and out.startswith("allowed: no access rules: any enrolled person")
    # Every change was made by the admin who ran the command, and says so.
    with open_gallery(load_config(cfg_path), need_key=False) as g:
        admin = [e for e in g.events() if e["kind"] == "admin" and e["outcome"] != "added"]
    assert len(admin) == 8 and all(": kiosk access " in e["detail"]["by"] for e in admin)


def test_erasing_a_person_from_a_backup_takes_them_out_of_their_groups(tmp_path: Path) -> None:
    with Gallery(tmp_path / "g.db") as g:
        ada = g.add_person("Ada")
        g.add_group("staff")
        g.add_member("staff", "Ada")
        g.backup(tmp_path / "b.db")
    assert erase_from_backup(tmp_path / "b.db", ada.id)
    with Gallery(tmp_path / "b.db") as b:
        assert b.integrity_check() == [] and b.group("staff").members == ()


class StaleFleet:
    """Enough of ``kiosk.fleet.service.FleetState`` for the loop: a door not in sync with its hub since ``age``."""

    def __init__(self, age: float | None) -> None:
        self.age = age
        self.fleet = self

    def stale_for(self) -> float | None:
        return self.age

    def stale(self) -> bool:
        return self.age is None or self.age > 60.0


@pytest.mark.parametrize(
    ("policy", "age", "granted"),
    [
        ("staff", 7200.0, {"Ada"}),  # stale: staff only
        ("deny", 7200.0, set()),  # stale: no one
        ("continue", 7200.0, {"Ada", "Bob"}),  # stale, but trusted
        ("deny", 30.0, {"Ada", "Bob"}),  # in sync: the policy does not apply
        ("staff", None, {"Ada"}),  # never synced: stale
    ],
)
def test_a_stale_fleet_door_applies_its_stale_policy(
    tmp_path: Path, factory: MockFactory, policy: str, age: float | None, granted: set[str]
) -> None:
    cfg = loop_cfg(tmp_path, fleet={"stale_policy": policy, "stale_after_s": 60.0, "staff_group": "Staff"})
    with Gallery(":memory:") as gallery, open_door(cfg.door, pin_factory=factory) as door:
        people = {name: gallery.add_person(name) for name in ("Ada", "Bob")}
        gallery.add_group("staff")
        gallery.add_member("staff", "Ada")
        loop = DoorLoop(NoFaces(cfg), gallery, None, door, door_id="front")
        loop.fleet = StaleFleet(age)
        decisions = {n: loop._act(grant(p.id, n, track_id=p.id), None, None) for n, p in people.items()}
    assert {n for n, d in decisions.items() if d.granted} == granted
    for d in decisions.values():
        if not d.granted:
            assert "not in sync with the hub" in d.reason or "never synced" in d.reason
            assert ("staff only (group Staff)" in d.reason) == (policy == "staff"), d.reason
