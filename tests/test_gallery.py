"""Tests for kiosk.gallery: migrations, people, model-tagged templates, the matrix, events, failure paths."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from kiosk.errors import (
    DuplicateError,
    GalleryCorruptError,
    GalleryError,
    GalleryLockedError,
    InputError,
    PersonNotFoundError,
)
from kiosk.gallery import MIGRATIONS, Gallery, GalleryMatrix, TemplateIn, _migrate_initial, _migrate_security

M1, SHA_A, SHA_B = "sface", "a" * 64, "b" * 64
ALL_MIGRATIONS = ["0001_initial", "0002_security", "0003_access"]
RNG = np.random.default_rng(1234)


def emb(dim: int = 8, seed: int | None = None) -> np.ndarray:
    rng = RNG if seed is None else np.random.default_rng(seed)
    return rng.standard_normal(dim).astype(np.float32)


def tpl(e: np.ndarray | None = None, model: str = M1, sha: str = SHA_A, source: str = "camera") -> TemplateIn:
    return TemplateIn(emb() if e is None else e, model, sha, 0.9, source)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "kiosk" / "gallery.db"


def scalar(path: Path, sql: str, params: tuple[object, ...] = ()) -> object:
    """First value of a query through an independent raw connection, bypassing Gallery entirely."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchone()[0]
    finally:
        conn.close()


def count(path: Path, sql: str, params: tuple[object, ...] = ()) -> int:
    return int(str(scalar(path, sql, params)))


# -- opening, file, migrations -------------------------------------------------------------------------------


def test_new_file_is_private_in_wal_mode_with_pragmas(db_path: Path) -> None:
    with Gallery(db_path) as g:
        g.enroll("alice", [tpl()])
        assert g._db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert g._db.execute("PRAGMA secure_delete").fetchone()[0] == 1
        assert g._db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
        wal = Path(f"{db_path}-wal")
        assert wal.exists()
        assert stat.S_IMODE(wal.stat().st_mode) == 0o600
    assert db_path.parent.is_dir()
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    assert scalar(db_path, "PRAGMA journal_mode") == "wal"


def test_existing_file_mode_is_not_widened(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    path.touch(mode=0o600)
    os.chmod(path, 0o640)
    Gallery(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_migrations_applied_once_and_reopen_applies_nothing(db_path: Path) -> None:
    with Gallery(db_path) as g:
        assert g.schema_version() == [name for name, _ in MIGRATIONS] == ALL_MIGRATIONS
        g.add_person("alice")
    stamp = count(db_path, "SELECT count(*) FROM _migrations")
    applied_at = str(scalar(db_path, "SELECT group_concat(applied) FROM _migrations"))
    assert all(datetime.fromisoformat(a).tzinfo is not None for a in applied_at.split(","))
    with Gallery(db_path) as g:
        assert g.schema_version() == ALL_MIGRATIONS
        assert g.get_person("alice").name == "alice"
    assert count(db_path, "SELECT count(*) FROM _migrations") == stamp == len(ALL_MIGRATIONS)
    assert scalar(db_path, "SELECT group_concat(applied) FROM _migrations") == applied_at


def test_migration_steps_are_rerunnable(fresh_db: Gallery) -> None:
    fresh_db.add_person("alice")
    fresh_db.add_event("access", "denied")
    before = fresh_db._db.execute("SELECT * FROM events").fetchall()
    _migrate_initial(fresh_db._db)  # a second run must neither fail nor touch data
    _migrate_security(fresh_db._db)
    assert [p.name for p in fresh_db.list_people()] == ["alice"]
    assert fresh_db._db.execute("SELECT * FROM events").fetchall() == before
    assert fresh_db.verify_events().ok


def test_gallery_from_newer_face_kiosk_is_refused(db_path: Path) -> None:
    Gallery(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute("INSERT INTO _migrations VALUES ('0099_future', '2030-01-01T00:00:00+00:00')")
    conn.commit()
    conn.close()
    with pytest.raises(GalleryError, match="newer face-kiosk") as info:
        Gallery(db_path)
    assert "0099_future" in str(info.value)
    assert type(info.value) is GalleryError


def test_close_is_idempotent_and_use_after_close_is_a_gallery_error() -> None:
    g = Gallery(":memory:")
    g.close()
    g.close()
    with pytest.raises(GalleryError):
        g.list_people()


# -- people --------------------------------------------------------------------------------------------------


def test_person_crud(fresh_db: Gallery) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    alice = fresh_db.add_person("  Alice Smith ")
    assert alice.name == "Alice Smith"
    assert (alice.enabled, alice.templates, alice.valid_from, alice.valid_until) == (True, 0, None, None)
    assert alice.created.tzinfo is not None and before <= alice.created <= datetime.now(UTC)
    assert fresh_db.get_person(alice.id) == alice
    assert fresh_db.get_person("alice SMITH") == alice
    assert fresh_db.get_person(str(alice.id)) == alice

    fresh_db.add_person("bob", enabled=False)
    assert [p.name for p in fresh_db.list_people()] == ["Alice Smith", "bob"]
    assert fresh_db.get_person("BOB").enabled is False
    assert fresh_db.set_enabled("bob", True).enabled is True

    renamed = fresh_db.rename(alice.id, "Alice Jones")
    assert (renamed.id, renamed.name) == (alice.id, "Alice Jones")
    assert fresh_db.rename("alice jones", "ALICE JONES").name == "ALICE JONES"  # same person, new case
    with pytest.raises(DuplicateError, match="bob"):
        fresh_db.rename("ALICE JONES", "Bob")
    with pytest.raises(PersonNotFoundError):
        fresh_db.get_person("Alice Smith")


def test_names_are_unique_case_insensitively(fresh_db: Gallery) -> None:
    fresh_db.add_person("Alice")
    for name in ("alice", "ALICE", " Alice "):
        with pytest.raises(DuplicateError, match="already exists"):
            fresh_db.add_person(name)
    assert len(fresh_db.list_people()) == 1


def test_unicode_names(fresh_db: Gallery) -> None:
    names = ["Zoë Ångström", "李小龙", "Ахмед Ибрагимов", "Siobhán Ó Briain 👋"]
    for name in names:
        fresh_db.add_person(name)
    assert sorted(p.name for p in fresh_db.list_people()) == sorted(names)
    assert fresh_db.get_person("李小龙").name == "李小龙"
    with pytest.raises(DuplicateError):  # decomposed "e + combining diaeresis" is the same name (NFC)
        fresh_db.add_person("Zoe\u0308 Ångström")


@pytest.mark.parametrize("name", ["", "   ", "x" * 201, "bad\nname", "tab\there", "nul\x00", "del\x7f"])
def test_invalid_names_are_rejected(fresh_db: Gallery, name: str) -> None:
    with pytest.raises(InputError):
        fresh_db.add_person(name)
    with pytest.raises(InputError):
        fresh_db.enroll(name, [tpl()])
    assert fresh_db.list_people() == []


def test_name_of_200_characters_is_accepted(fresh_db: Gallery) -> None:
    assert fresh_db.add_person("é" * 200).name == "é" * 200


def test_unknown_person_message_names_ref_and_fix(fresh_db: Gallery) -> None:
    with pytest.raises(PersonNotFoundError) as info:
        fresh_db.get_person("nobody")
    assert "'nobody'" in str(info.value) and "kiosk people list" in str(info.value)
    assert isinstance(info.value, LookupError) and "\n" not in str(info.value)
    for call in (lambda: fresh_db.remove(42), lambda: fresh_db.set_enabled("x", False)):
        with pytest.raises(PersonNotFoundError):
            call()


def test_validity_window_must_be_ordered(fresh_db: Gallery) -> None:
    t = datetime(2025, 1, 1, tzinfo=UTC)
    with pytest.raises(InputError, match="valid_until"):
        fresh_db.add_person("a", valid_from=t, valid_until=t - timedelta(days=1))
    fresh_db.add_person("b")
    with pytest.raises(InputError):
        fresh_db.set_validity("b", t, t)
    assert fresh_db.get_person("b").valid_from is None


# -- templates and the matching matrix -----------------------------------------------------------------------


def test_templates_round_trip_bit_exactly(fresh_db: Gallery) -> None:
    special = np.array([0.0, -0.0, 1e-45, -1e-45, 3.4028235e38, -3.4028235e38, 1 / 3, np.pi], np.float32)
    vectors = [special, emb(), emb()]
    fresh_db.enroll("alice", [tpl(v) for v in vectors])
    m = fresh_db.matrix(M1, SHA_A)
    assert m.embeddings.dtype == np.float32 and m.embeddings.shape == (3, 8)
    assert m.embeddings.tobytes() == np.stack(vectors).tobytes()
    assert np.signbit(m.embeddings[0, 1])  # -0.0 survived
    as_f64 = emb().astype(np.float64)
    fresh_db.add_templates("alice", [tpl(as_f64)])
    assert fresh_db.matrix(M1, SHA_A).embeddings[3].tobytes() == as_f64.astype(np.float32).tobytes()


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 4)),
        np.zeros(0),
        np.array([1.0, np.nan]),
        np.array([np.inf, 1.0]),
        np.array(["a", "b"]),
        np.array([1e39, 0.0]),
    ],
    ids=["2d", "empty", "nan", "inf", "text", "overflows-float32"],
)
def test_bad_embeddings_are_rejected(fresh_db: Gallery, bad: np.ndarray) -> None:
    with pytest.raises(InputError):
        fresh_db.enroll("alice", [tpl(bad)])
    assert fresh_db.list_people() == []


def test_embedding_dim_must_match_the_model(fresh_db: Gallery) -> None:
    fresh_db.enroll("alice", [tpl(emb(8))])
    with pytest.raises(InputError, match="produces 8"):
        fresh_db.add_templates("alice", [tpl(emb(16))])
    fresh_db.add_templates("alice", [tpl(emb(16), model="arcface")])  # another model may differ
    assert fresh_db.get_person("alice").templates == 2


def test_matrix_matches_model_id_and_sha(fresh_db: Gallery) -> None:
    fresh_db.enroll("alice", [tpl(), tpl(), tpl(sha=SHA_B)])
    fresh_db.enroll("bob", [tpl(model="arcface"), tpl()])
    m = fresh_db.matrix(M1, SHA_A)
    assert isinstance(m, GalleryMatrix) and len(m) == 3
    assert m.names == ["alice", "alice", "bob"]
    assert m.template_ids.dtype == np.int64 and m.person_ids.dtype == np.int64
    alice, bob = fresh_db.get_person("alice").id, fresh_db.get_person("bob").id
    assert m.person_ids.tolist() == [alice, alice, bob]
    assert len(set(m.template_ids.tolist())) == 3
    assert fresh_db.matrix(M1, SHA_B).names == ["alice"]
    assert fresh_db.matrix("arcface", SHA_A).names == ["bob"]
    assert fresh_db.matrix("arcface", SHA_B).embeddings.shape == (0, 0)


def test_empty_matrix_is_correctly_shaped(fresh_db: Gallery) -> None:
    m = fresh_db.matrix(M1, SHA_A)
    assert m.embeddings.shape == (0, 0) and m.embeddings.dtype == np.float32 and m.template_ids.shape == (0,)
    assert m.names == [] and m.person_ids.shape == (0,)
    fresh_db.enroll("alice", [tpl(emb(12))], enabled=False)
    assert fresh_db.matrix(M1, SHA_A).embeddings.shape == (0, 12)  # the known dim of this model


def test_matrix_skips_disabled_people_unless_asked(fresh_db: Gallery) -> None:
    fresh_db.enroll("alice", [tpl()])
    fresh_db.enroll("bob", [tpl()], enabled=False)
    assert fresh_db.matrix(M1, SHA_A).names == ["alice"]
    assert fresh_db.matrix(M1, SHA_A, include_disabled=True).names == ["alice", "bob"]
    fresh_db.set_enabled("alice", False)
    fresh_db.set_enabled("bob", True)
    assert fresh_db.matrix(M1, SHA_A).names == ["bob"]


def test_matrix_respects_the_validity_window(fresh_db: Gallery) -> None:
    start, end = datetime(2025, 3, 1, 8, tzinfo=UTC), datetime(2025, 3, 31, 18, tzinfo=UTC)
    fresh_db.enroll("temp", [tpl()], valid_from=start, valid_until=end)
    fresh_db.enroll("staff", [tpl()])

    def names(at: datetime) -> list[str]:
        return fresh_db.matrix(M1, SHA_A, at=at).names

    assert names(start - timedelta(seconds=1)) == ["staff"]
    assert names(start) == ["temp", "staff"]
    assert names(start + timedelta(days=10)) == ["temp", "staff"]
    assert names(end - timedelta(seconds=1)) == ["temp", "staff"]
    assert names(end) == ["staff"]  # valid_until is exclusive
    assert names(end + timedelta(days=1)) == ["staff"]
    assert names(datetime(2025, 3, 1, 8)) == ["temp", "staff"]  # naive = UTC
    assert names(datetime(2025, 3, 1, 9, tzinfo=timezone(timedelta(hours=2)))) == ["staff"]  # 07:00 UTC
    assert fresh_db.matrix(M1, SHA_A, at=end, include_disabled=True).names == ["temp", "staff"]
    assert names(datetime.now(UTC)) == fresh_db.matrix(M1, SHA_A).names == ["staff"]  # default: now
    stored = fresh_db.set_validity("temp", None, datetime(2999, 1, 1))
    assert stored.valid_until == datetime(2999, 1, 1, tzinfo=UTC) and stored.valid_from is None
    assert fresh_db.matrix(M1, SHA_A).names == ["temp", "staff"]


def test_stale_templates_and_counts(fresh_db: Gallery) -> None:
    fresh_db.enroll("alice", [tpl(), tpl(), tpl(sha=SHA_B)])
    fresh_db.enroll("bob", [tpl(model="arcface"), tpl(model="arcface", sha=SHA_B)])
    fresh_db.enroll("carol", [tpl()])
    assert fresh_db.stale_templates(M1, SHA_A) == {"alice": 1, "bob": 2}
    assert fresh_db.stale_templates("arcface", SHA_A) == {"alice": 3, "bob": 1, "carol": 1}
    counts = {(M1, SHA_A): 3, (M1, SHA_B): 1, ("arcface", SHA_A): 1, ("arcface", SHA_B): 1}
    assert fresh_db.template_counts() == counts
    assert fresh_db.get_person("alice").templates == 3


def test_enroll_and_append(fresh_db: Gallery) -> None:
    p = fresh_db.enroll("alice", [tpl(), tpl()], note="front desk")
    assert (p.templates, p.note) == (2, "front desk")
    with pytest.raises(DuplicateError):
        fresh_db.enroll("ALICE", [tpl()])
    assert fresh_db.enroll("ALICE", [tpl()], append=True).templates == 3
    assert fresh_db.enroll("dave", [tpl()], append=True).templates == 1  # append creates when missing
    assert fresh_db.add_templates(p.id, [tpl(), tpl()]) == 2
    assert fresh_db.get_person("alice").templates == 5
    with pytest.raises(InputError):
        fresh_db.enroll("erin", [])
    with pytest.raises(PersonNotFoundError):
        fresh_db.add_templates("nobody", [tpl()])


def test_enroll_is_atomic_when_a_template_fails_midway(db_path: Path) -> None:
    with Gallery(db_path) as g:
        g.enroll("bob", [tpl()])
        bad = [tpl(), tpl(), tpl(np.array([1.0, np.nan, 0, 0, 0, 0, 0, 0], np.float32)), tpl()]
        with pytest.raises(InputError, match="NaN"):
            g.enroll("alice", bad)
        with pytest.raises(PersonNotFoundError):
            g.get_person("alice")
        with pytest.raises(InputError):
            g.enroll("bob", bad, append=True)
        assert g.get_person("bob").templates == 1
        g.enroll("alice", [tpl()])  # the gallery is still usable, no transaction left open
    assert count(db_path, "SELECT count(*) FROM templates") == 2
    assert count(db_path, "SELECT count(*) FROM people") == 2


def test_enroll_rolls_back_when_sqlite_fails_midway(fresh_db: Gallery) -> None:
    fresh_db._db.execute(
        "CREATE TEMP TRIGGER boom BEFORE INSERT ON templates WHEN NEW.source = 'boom' "
        "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
    )
    with pytest.raises(GalleryError, match="injected failure"):
        fresh_db.enroll("alice", [tpl(), tpl(source="boom"), tpl()])
    assert fresh_db.list_people() == []
    assert fresh_db._db.execute("SELECT count(*) FROM templates").fetchone()[0] == 0


def test_remove_erases_person_and_templates(db_path: Path) -> None:
    with Gallery(db_path) as g:
        alice = g.enroll("alice", [tpl(), tpl(), tpl(sha=SHA_B)])
        g.enroll("bob", [tpl()])
        g.add_event("access", "granted", person_id=alice.id, person_name="alice")
        assert g.remove("ALICE") == 3
        with pytest.raises(PersonNotFoundError):
            g.get_person("alice")
        assert g.remove("bob") == 1
        assert g.events()[0]["person_name"] == "alice"  # events outlive people
    assert count(db_path, "SELECT count(*) FROM templates WHERE person_id = ?", (alice.id,)) == 0
    assert count(db_path, "SELECT count(*) FROM templates") == 0
    assert count(db_path, "SELECT count(*) FROM people") == 0


def test_removed_templates_leave_no_bytes_on_disk(db_path: Path) -> None:
    marker = np.frombuffer(b"FACEKIOSKSECRET!" * 4, dtype="<f4").copy()  # 16 finite floats, easy to find
    assert np.isfinite(marker).all()

    def on_disk() -> bytes:
        return b"".join(p.read_bytes() for p in db_path.parent.glob("gallery.db*"))

    with Gallery(db_path) as g:
        g.enroll("alice", [tpl(marker)])
        assert b"FACEKIOSKSECRET!" in on_disk()
        g.remove("alice")
        assert b"FACEKIOSKSECRET!" not in on_disk()


def test_templates_list_without_embeddings(fresh_db: Gallery) -> None:
    alice = fresh_db.enroll("alice", [tpl(source="a.jpg"), tpl(sha=SHA_B, source="b.jpg")])
    fresh_db.enroll("bob", [tpl()])
    rows = fresh_db.templates(alice.id)
    assert [r["source"] for r in rows] == ["a.jpg", "b.jpg"]
    assert set(rows[0]) == {"id", "quality", "created", "source", "model_id", "model_sha256"}
    assert rows[1]["model_sha256"] == SHA_B and rows[0]["quality"] == pytest.approx(0.9)
    with pytest.raises(PersonNotFoundError):
        fresh_db.templates("nobody")


def test_delete_template_is_audited_and_limited_to_its_person(fresh_db: Gallery) -> None:
    alice = fresh_db.enroll("alice", [tpl(), tpl()])
    bob = fresh_db.enroll("bob", [tpl()])
    bobs = fresh_db.templates(bob.id)[0]["id"]
    for wrong in (bobs, 999, 0, -1, 2**70):
        with pytest.raises(PersonNotFoundError, match="no template"):
            fresh_db.delete_template(alice.id, wrong)
    assert fresh_db.get_person(bob.id).templates == 1  # bob's template was not touched through alice
    fresh_db.actor = "web:carol from 127.0.0.1"
    first = fresh_db.templates(alice.id)[0]["id"]
    assert fresh_db.delete_template("alice", first).templates == 1
    assert [r["id"] for r in fresh_db.templates(alice.id)] != [first]
    event = fresh_db.events()[-1]
    assert (event["kind"], event["outcome"], event["person_id"]) == ("admin", "template deleted", alice.id)
    assert event["detail"] == {"by": "web:carol from 127.0.0.1", "template": first, "left": 1}
    assert fresh_db.verify_events().ok


def test_deleted_template_leaves_no_bytes_on_disk(db_path: Path) -> None:
    marker = np.frombuffer(b"FACEKIOSKSECRET!" * 4, dtype="<f4").copy()

    def on_disk() -> bytes:
        return b"".join(p.read_bytes() for p in db_path.parent.glob("gallery.db*"))

    with Gallery(db_path) as g:
        alice = g.enroll("alice", [tpl(marker), tpl(emb(16))])
        assert b"FACEKIOSKSECRET!" in on_disk()
        g.delete_template(alice.id, g.templates(alice.id)[0]["id"])
        assert b"FACEKIOSKSECRET!" not in on_disk()


def test_logs_carry_no_embeddings(fresh_db: Gallery, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="kiosk.gallery"):
        fresh_db.enroll("alice", [tpl(), tpl()])
        fresh_db.remove("alice")
    assert any("enrolled" in r.getMessage() for r in caplog.records)
    for record in caplog.records:
        assert not any(isinstance(a, bytes | np.ndarray) for a in (record.args or ()))


# -- events --------------------------------------------------------------------------------------------------


def test_events_insert_and_query(fresh_db: Gallery) -> None:
    t0 = datetime(2025, 5, 1, 12, tzinfo=UTC)
    first = fresh_db.add_event("enroll", "ok", ts=t0, person_name="Alice", detail={"images": 3})
    second = fresh_db.add_event(
        "access",
        "granted",
        ts=t0 + timedelta(minutes=1),
        track_id=7,
        person_id=1,
        person_name="Alice",
        score=np.float32(0.71),
        runner_up=0.2,
        threshold=0.5,
        frames=np.int64(4),
        liveness="pass",
        latency_ms=42.5,
        door_action="unlock",
        detail={"why": ["score", "frames"]},
    )
    fresh_db.add_event("access", "denied", ts=t0 + timedelta(minutes=2), score=0.3, detail="unknown face")
    fresh_db.add_event("admin", "ok", ts=t0 + timedelta(minutes=3), person_name="bob")
    assert second > first

    all_events = fresh_db.events()
    assert [e["kind"] for e in all_events] == ["enroll", "access", "access", "admin"]  # newest last
    e = all_events[1]
    assert (e["id"], e["ts"], e["track_id"], e["frames"], e["door_action"]) == (
        second,
        "2025-05-01T12:01:00+00:00",
        7,
        4,
        "unlock",
    )
    assert e["score"] == pytest.approx(0.71) and e["latency_ms"] == 42.5
    assert e["detail"] == {"why": ["score", "frames"]}
    assert all_events[0]["detail"] == {"images": 3}
    assert all_events[2]["detail"] == "unknown face" and all_events[2]["person_name"] is None

    recent = fresh_db.events(since=t0 + timedelta(minutes=1))
    assert [x["outcome"] for x in recent] == ["granted", "denied", "ok"]
    assert [x["id"] for x in fresh_db.events(person="alice")] == [first, second]
    assert [x["kind"] for x in fresh_db.events(limit=2)] == ["access", "admin"]
    assert [x["id"] for x in fresh_db.events(person="ALICE", limit=1)] == [second]
    assert fresh_db.events(since=t0 + timedelta(hours=1)) == []


def test_find_events_filters_and_pages_by_id(fresh_db: Gallery) -> None:
    t0 = datetime(2025, 5, 1, 12, tzinfo=UTC)
    ids = [
        fresh_db.add_event("access", "granted", ts=t0, person_id=1, person_name="Alice", liveness="pass"),
        fresh_db.add_event(
            "access", "denied", ts=t0 + timedelta(minutes=1), person_id=1, person_name="Alice", liveness="fail"
        ),
        fresh_db.add_event("access", "unknown", ts=t0 + timedelta(minutes=2), liveness="pass"),
        fresh_db.add_event(
            "admin", "renamed", ts=t0 + timedelta(minutes=3), person_id=2, person_name="Bob", detail={"by": "web:carol"}
        ),
    ]
    assert [e["id"] for e in fresh_db.find_events()] == ids[::-1]  # newest first
    assert [e["id"] for e in fresh_db.find_events(limit=2)] == [ids[3], ids[2]]
    assert [e["id"] for e in fresh_db.find_events(limit=2, before_id=ids[2])] == [ids[1], ids[0]]
    assert [e["id"] for e in fresh_db.find_events(after_id=ids[1])] == [ids[3], ids[2]]
    assert [e["id"] for e in fresh_db.find_events(person="ALICE")] == [ids[1], ids[0]]
    assert [e["id"] for e in fresh_db.find_events(person=2)] == [ids[3]]
    assert [e["id"] for e in fresh_db.find_events(outcome="denied")] == [ids[1]]
    assert [e["id"] for e in fresh_db.find_events(liveness="pass")] == [ids[2], ids[0]]
    assert [e["id"] for e in fresh_db.find_events(kind="admin")] == [ids[3]]
    window = fresh_db.find_events(since=t0 + timedelta(minutes=1), until=t0 + timedelta(minutes=3))
    assert [e["id"] for e in window] == [ids[2], ids[1]]  # since inclusive, until exclusive
    assert fresh_db.find_events(kind="admin")[0]["detail"] == {"by": "web:carol"}
    # Out-of-range ids and names no stored row can hold are no matches, never errors.
    assert fresh_db.find_events(person=2**80) == [] and fresh_db.find_events(person="\udcff") == []
    assert fresh_db.find_events(before_id=-(2**90)) == [] and len(fresh_db.find_events(before_id=2**90)) == 4
    assert fresh_db.find_events(outcome="\ud800") == []
    assert fresh_db.event(ids[3])["person_name"] == "Bob" and fresh_db.event(ids[3])["detail"] == {"by": "web:carol"}
    assert fresh_db.event(12345) is None and fresh_db.event(2**80) is None
    assert fresh_db.last_event_id() == ids[3]


def test_last_event_id_of_an_empty_log_is_zero(fresh_db: Gallery) -> None:
    assert fresh_db.last_event_id() == 0 and fresh_db.find_events() == []


def test_event_default_timestamp_is_now_utc(fresh_db: Gallery) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    fresh_db.add_event("access", "denied")
    ts = datetime.fromisoformat(fresh_db.events()[0]["ts"])
    assert ts.utcoffset() == timedelta(0) and before <= ts <= datetime.now(UTC)


def test_unknown_event_field_lists_allowed_ones(fresh_db: Gallery) -> None:
    with pytest.raises(ValueError, match="scroe") as info:
        fresh_db.add_event("access", "granted", scroe=0.9)
    assert "allowed:" in str(info.value) and "score" in str(info.value)
    assert fresh_db.events() == []


def test_event_detail_is_stored_as_json(db_path: Path) -> None:
    with Gallery(db_path) as g:
        g.add_event("admin", "ok", detail={"b": 1, "a": [1, 2]})
    assert json.loads(str(scalar(db_path, "SELECT detail FROM events"))) == {"a": [1, 2], "b": 1}


# -- locking, corruption, integrity --------------------------------------------------------------------------


def test_locked_gallery_raises_quickly_and_loses_nothing(db_path: Path) -> None:
    with Gallery(db_path) as g:
        g.enroll("alice", [tpl()])
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with Gallery(db_path, busy_timeout_s=0.2) as g:  # an up-to-date gallery opens read-only
            assert g.get_person("alice").templates == 1  # WAL: reads go on during a write
            started = time.monotonic()
            with pytest.raises(GalleryLockedError) as info:
                g.add_person("bob")
            assert time.monotonic() - started < 3.0  # waited about busy_timeout_s, not the 5 s default
            message = str(info.value)
            assert str(db_path) in message and "locked" in message and "0.2 s" in message
            assert "\n" not in message
            with pytest.raises(GalleryLockedError):
                g.enroll("carol", [tpl()])
            with pytest.raises(GalleryLockedError):
                g.add_event("access", "denied")
            other.execute("ROLLBACK")
            g.add_person("bob")  # works once the lock is gone: no half-open transaction left behind
            assert [p.name for p in g.list_people()] == ["alice", "bob"]
            assert len(g.matrix(M1, SHA_A)) == 1
    finally:
        other.close()
    assert count(db_path, "SELECT count(*) FROM templates") == 1


def test_write_waits_for_a_short_lock(db_path: Path) -> None:
    """A writer holding the lock briefly (the CLI enrolling while the kiosk runs) only delays an enrolment."""
    Gallery(db_path).close()
    other = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO events (ts, kind, outcome) VALUES ('2025-01-01T00:00:00Z', 'admin', 'ok')")
    release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    try:
        with Gallery(db_path, busy_timeout_s=10) as g:
            release.start()
            assert g.enroll("alice", [tpl()]).templates == 1  # reads, then writes: must wait, not fail
            assert [e["kind"] for e in g.events()] == ["admin"]
    finally:
        release.join()
        other.close()


def test_locked_new_gallery_cannot_migrate(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("PRAGMA journal_mode=wal")
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(GalleryLockedError):
            Gallery(db_path, busy_timeout_s=0.1)
    finally:
        other.close()
    with Gallery(db_path) as g:
        assert g.schema_version() == ALL_MIGRATIONS


@pytest.mark.parametrize("content", ["random", "truncated", "text"])
def test_corrupt_file_raises_on_open(tmp_path: Path, content: str) -> None:
    path = tmp_path / "gallery.db"
    if content == "truncated":
        with Gallery(path) as g:
            g.enroll("alice", [tpl()])
        data = path.read_bytes()[:50]
        for extra in tmp_path.glob("gallery.db-*"):
            extra.unlink()
    else:
        data = os.urandom(8192) if content == "random" else b"name,embedding\nalice,1 2 3\n" * 100
    path.write_bytes(data)
    with pytest.raises(GalleryCorruptError) as info:
        Gallery(path)
    message = str(info.value)
    assert str(path) in message and "backup" in message and "move it away" in message and "\n" not in message
    assert path.read_bytes() == data  # a damaged gallery is never overwritten


def test_integrity_check(db_path: Path) -> None:
    with Gallery(db_path) as g:
        g.enroll("alice", [tpl()])
        assert g.integrity_check() == []
    conn = sqlite3.connect(db_path)  # foreign keys are off by default on a raw connection
    conn.execute(
        "INSERT INTO templates (person_id, embedding, dim, model_id, model_sha256, created) "
        "VALUES (999, x'00000000', 1, 'm', 's', '2025-01-01T00:00:00+00:00')"
    )
    conn.commit()
    conn.close()
    with Gallery(db_path) as g:
        problems = g.integrity_check()
    assert len(problems) == 1 and "templates" in problems[0] and "people" in problems[0]


def test_damaged_embedding_blob_is_reported(fresh_db: Gallery) -> None:
    fresh_db.enroll("alice", [tpl()])
    fresh_db._db.execute("UPDATE templates SET embedding = x'0000'")
    with pytest.raises(GalleryCorruptError, match="re-enrol 'alice'"):
        fresh_db.matrix(M1, SHA_A)


def test_raw_events_after_are_oldest_first_as_stored() -> None:
    with Gallery(":memory:") as g:
        for i in range(5):
            g.add_event("access", "granted", person_id=i, detail={"n": i})
        rows = g.raw_events_after(2, 2)
        assert [r["id"] for r in rows] == [3, 4]
        assert isinstance(rows[0]["detail"], str) and rows[0]["hash"] and rows[0]["prev_hash"]  # as stored
        assert [r["id"] for r in g.raw_events_after(-(2**70), 100)] == [1, 2, 3, 4, 5]
        assert g.raw_events_after(2**70, 10) == [] and g.raw_events_after(0, 0) == []
