"""Template protection in kiosk.gallery (issue #6): encryption at rest, rekeying, the event hash chain, admin
events, erasure that leaves no bytes behind, online backups and validated restores.

Every test works on real SQLite files in tmp_path and looks at the raw bytes on disk where a promise is about them.
The cipher is a small AES-GCM one defined here, so these tests depend only on the gallery's cipher protocol.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kiosk.errors import (
    DuplicateError,
    GalleryCorruptError,
    GalleryError,
    InputError,
    PersonNotFoundError,
    TamperedError,
    TemplateKeyError,
)
from kiosk.gallery import (
    GENESIS_HASH,
    EventChainReport,
    Gallery,
    TemplateCipher,
    TemplateIn,
    erase_from_backup,
    event_hash,
)
from tests.helpers import no_new_threads

MODEL, SHA = "sface", "c" * 64
DIM = 16


class TestCipher:
    """AES-256-GCM as the protocol asks: nonce(12) || ciphertext || tag(16), TemplateKeyError on failure."""

    __test__ = False  # not a pytest class

    def __init__(self, key: bytes, key_id: str | None = None) -> None:
        self._aead = AESGCM(key)
        self.key_id = key_id or hashlib.sha256(b"test key id" + key).hexdigest()[:16]
        self.encrypted = 0

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        self.encrypted += 1
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        try:
            return self._aead.decrypt(blob[:12], blob[12:], aad)
        except InvalidTag:
            raise TemplateKeyError(f"template does not authenticate with key {self.key_id}") from None


class FailingCipher(TestCipher):
    """Fails on its n-th encryption: a rekey must then leave every template as it was."""

    __test__ = False

    def __init__(self, key: bytes, fail_at: int) -> None:
        super().__init__(key)
        self.fail_at = fail_at

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        if self.encrypted + 1 == self.fail_at:
            raise OSError("injected encryption failure")
        return super().encrypt(plaintext, aad)


KEY_A, KEY_B = bytes(range(32)), bytes(range(100, 132))


@pytest.fixture
def key_a() -> TestCipher:
    return TestCipher(KEY_A)


@pytest.fixture
def key_b() -> TestCipher:
    return TestCipher(KEY_B)


def test_test_cipher_satisfies_the_protocol(key_a: TestCipher) -> None:
    cipher: TemplateCipher = key_a  # mypy-checked shape; at run time: the round trip and the failure
    blob = cipher.encrypt(b"x" * 8, b"aad")
    assert len(blob) == 12 + 8 + 16 and cipher.decrypt(blob, b"aad") == b"x" * 8
    with pytest.raises(TemplateKeyError):
        cipher.decrypt(blob, b"other aad")


def marker(tag: bytes, dim: int = DIM) -> np.ndarray:
    """An embedding whose bytes spell ``tag`` over and over: easy to find in a file (finite float32 values)."""
    raw = (tag * (4 * dim // len(tag) + 1))[: 4 * dim]
    vec = np.frombuffer(raw, dtype="<f4").copy()
    assert np.isfinite(vec).all()
    return vec


def tpl(vec: np.ndarray) -> TemplateIn:
    return TemplateIn(vec, MODEL, SHA, 0.9, "test")


def rand(seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def on_disk(path: Path) -> bytes:
    """The main file and its -wal together: everything SQLite keeps of the gallery."""
    wal = Path(f"{path}-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def dump(path: Path) -> list[str]:
    """The whole database as SQL text, through an independent connection."""
    conn = raw(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "gallery.db"


# -- encryption at rest ----------------------------------------------------------------------------------------


def test_encrypted_templates_round_trip(path: Path, key_a: TestCipher) -> None:
    vectors = {"alice": [rand(1), rand(2)], "bob": [rand(3)]}
    with Gallery(path, cipher=key_a) as g:
        for name, vecs in vectors.items():
            g.enroll(name, [tpl(v) for v in vecs])
        m = g.matrix(MODEL, SHA)
        assert m.names == ["alice", "alice", "bob"]
        assert m.embeddings.tobytes() == np.stack([*vectors["alice"], *vectors["bob"]]).tobytes()
        assert g.encryption_status() == {key_a.key_id: 3}
    conn = raw(path)
    rows = conn.execute("SELECT key_id, length(embedding), dim FROM templates").fetchall()
    conn.close()
    assert rows == [(key_a.key_id, 12 + 4 * DIM + 16, DIM)] * 3
    with Gallery(path, cipher=TestCipher(KEY_A)) as g:  # the same key loaded again: a new cipher object
        assert g.matrix(MODEL, SHA).embeddings.tobytes() == np.stack([*vectors["alice"], *vectors["bob"]]).tobytes()


def test_plaintext_embedding_bytes_never_reach_disk_when_encrypted(tmp_path: Path, key_a: TestCipher) -> None:
    secret = marker(b"ENCRYPTME-PLEASE")
    for encrypted in (False, True):
        path = tmp_path / f"{encrypted}" / "gallery.db"
        with Gallery(path, cipher=key_a if encrypted else None) as g:
            g.enroll("alice", [tpl(secret)])
            g.add_templates("alice", [tpl(secret)])
            found_open = b"ENCRYPTME-PLEASE" in on_disk(path)
        found_closed = b"ENCRYPTME-PLEASE" in on_disk(path)
        # plaintext: the marker is there (so this test can see it); encrypted: neither in the file nor the WAL
        assert (found_open, found_closed) == (not encrypted, not encrypted)


def test_missing_key_is_refused_naming_the_key_and_rotate(path: Path, key_a: TestCipher) -> None:
    with Gallery(path, cipher=key_a) as g:
        g.enroll("alice", [tpl(rand(1))])
    with Gallery(path) as g, pytest.raises(TemplateKeyError) as info:
        g.matrix(MODEL, SHA)
    message = str(info.value)
    assert key_a.key_id in message and "kiosk keys rotate" in message and "\n" not in message


def test_wrong_key_is_refused_naming_both_keys(path: Path, key_a: TestCipher, key_b: TestCipher) -> None:
    with Gallery(path, cipher=key_a) as g:
        g.enroll("alice", [tpl(rand(1))])
    with Gallery(path, cipher=key_b) as g, pytest.raises(TemplateKeyError) as info:
        g.matrix(MODEL, SHA, include_disabled=True)
    message = str(info.value)
    assert key_a.key_id in message and key_b.key_id in message and "kiosk keys rotate" in message
    impostor = TestCipher(KEY_B, key_id=key_a.key_id)  # claims A's id, holds another key: fails to authenticate
    with Gallery(path, cipher=impostor) as g, pytest.raises(TemplateKeyError, match="does not authenticate"):
        g.matrix(MODEL, SHA)


def _flip_bit(conn: sqlite3.Connection, template_id: int, offset: int) -> None:
    blob = bytearray(conn.execute("SELECT embedding FROM templates WHERE id = ?", [template_id]).fetchone()[0])
    blob[offset] ^= 0x01
    conn.execute("UPDATE templates SET embedding = ? WHERE id = ?", [bytes(blob), template_id])


@pytest.mark.parametrize(
    "tamper",
    [
        "UPDATE templates SET person_id = (SELECT id FROM people WHERE name = 'bob') WHERE id = 1",
        "UPDATE templates SET embedding = (SELECT embedding FROM templates WHERE id = 1) WHERE id = 2",
        "UPDATE templates SET model_sha256 = 'd' || substr(model_sha256, 2) WHERE id = 1",
        "flip",
    ],
    ids=["moved-to-bob", "copied-onto-bob", "other-model", "bit-flipped"],
)
def test_a_template_swapped_or_altered_fails_to_authenticate(path: Path, key_a: TestCipher, tamper: str) -> None:
    with Gallery(path, cipher=key_a) as g:
        g.enroll("alice", [tpl(rand(1))])
        g.enroll("bob", [tpl(rand(2))])
        assert g.matrix(MODEL, SHA).names == ["alice", "bob"]
    conn = raw(path)
    if tamper == "flip":
        _flip_bit(conn, 1, 20)
    else:
        conn.execute(tamper)
    conn.close()
    with Gallery(path, cipher=key_a) as g, pytest.raises(TemplateKeyError, match="does not authenticate"):
        m = g.matrix(MODEL, SHA) if "model_sha256" not in tamper else g.matrix(MODEL, "d" + SHA[1:])
        pytest.fail(f"a tampered template was accepted as {m.names}")


# -- rekeying --------------------------------------------------------------------------------------------------


def _templates(path: Path) -> list[tuple[Any, ...]]:
    conn = raw(path)
    try:
        return conn.execute("SELECT id, person_id, embedding, key_id FROM templates ORDER BY id").fetchall()
    finally:
        conn.close()


def test_rekey_from_one_key_to_another(path: Path, key_a: TestCipher, key_b: TestCipher) -> None:
    vectors = [rand(1), rand(2), rand(3)]
    with Gallery(path, cipher=key_a, actor="root (uid 0)") as g:
        g.enroll("alice", [tpl(v) for v in vectors[:2]])
        g.enroll("bob", [tpl(vectors[2])])
        before = _templates(path)
        assert g.rekey(key_b) == 3
        assert g.cipher is key_b and g.encryption_status() == {key_b.key_id: 3}
        assert g.matrix(MODEL, SHA).embeddings.tobytes() == np.stack(vectors).tobytes()
        event = g.events()[-1]
    after = _templates(path)
    assert [r[3] for r in after] == [key_b.key_id] * 3
    assert all(a[2] != b[2] for a, b in zip(before, after, strict=True))  # every blob re-encrypted
    assert (event["kind"], event["outcome"]) == ("admin", "rekeyed")
    assert event["detail"] == {"by": "root (uid 0)", "templates": 3, "from": [key_a.key_id], "to": key_b.key_id}
    with Gallery(path, cipher=key_a) as g, pytest.raises(TemplateKeyError):
        g.matrix(MODEL, SHA)  # the old key no longer opens them
    with Gallery(path, cipher=key_b) as g:
        assert g.matrix(MODEL, SHA).embeddings.tobytes() == np.stack(vectors).tobytes()
        assert g.verify_events().ok


def test_rekey_encrypts_a_plaintext_gallery_and_leaves_no_plaintext(path: Path, key_a: TestCipher) -> None:
    secret = marker(b"PLAINBEFOREKEYS!")
    with Gallery(path) as g:
        g.enroll("alice", [tpl(secret), tpl(rand(1))])
        assert g.encryption_status() == {None: 2}
        assert b"PLAINBEFOREKEYS!" in on_disk(path)
        assert g.rekey(key_a) == 2
        assert g.encryption_status() == {key_a.key_id: 2}
        assert b"PLAINBEFOREKEYS!" not in on_disk(path)  # the old rows are overwritten, the WAL emptied
        assert g.matrix(MODEL, SHA).embeddings[0].tobytes() == secret.tobytes()
        assert g.events()[-1]["detail"] == {"by": None, "templates": 2, "from": ["plaintext"], "to": key_a.key_id}


def test_rekey_to_plaintext_decrypts_every_template(path: Path, key_a: TestCipher) -> None:
    vectors = [rand(1), rand(2)]
    with Gallery(path, cipher=key_a) as g:
        g.enroll("alice", [tpl(v) for v in vectors])
        assert g.rekey(None) == 2
        assert g.cipher is None and g.encryption_status() == {None: 2}
    assert [r[2] for r in _templates(path)] == [v.tobytes() for v in vectors]
    with Gallery(path) as g:
        assert g.matrix(MODEL, SHA).embeddings.tobytes() == np.stack(vectors).tobytes()


def test_rekey_is_all_or_nothing(path: Path, key_a: TestCipher) -> None:
    with Gallery(path, cipher=key_a) as g:
        g.enroll("alice", [tpl(rand(i)) for i in range(4)])
        before, events_before = _templates(path), g.events()
        with pytest.raises(OSError, match="injected"):
            g.rekey(FailingCipher(KEY_B, fail_at=3))  # two templates re-encrypted, then a failure
        assert _templates(path) == before and g.events() == events_before
        assert g.cipher is key_a and g.encryption_status() == {key_a.key_id: 4}
        assert len(g.matrix(MODEL, SHA)) == 4  # still readable with the old key
    conn = raw(path)  # a template the current key cannot authenticate stops the rekey before anything changes
    _flip_bit(conn, 4, 30)
    conn.close()
    tampered = _templates(path)
    with Gallery(path, cipher=key_a) as g, pytest.raises(TemplateKeyError, match="template 4"):
        g.rekey(None)
    assert _templates(path) == tampered


# -- the event hash chain --------------------------------------------------------------------------------------


def _log(g: Gallery) -> list[int]:
    t0 = datetime(2025, 6, 1, 8, tzinfo=UTC)
    ids = [
        g.add_event("access", "granted", ts=t0, person_id=1, person_name="Zoë", score=np.float32(0.71), frames=3),
        g.add_event("access", "denied", score=0.2, runner_up=float("nan"), detail={"why": ["score"]}),
        g.add_event("door", "forced_open", detail="text, not JSON"),
        g.add_event("admin", "renamed", person_name="bob", detail={"by": "root", "from": "bobby"}),
        g.add_event("access", "granted", latency_ms=42.5, threshold=0.5, liveness="pass", door_action="pulse"),
        g.add_event("access", "denied", track_id=9),
    ]
    return ids


def test_an_untouched_log_verifies(path: Path) -> None:
    with Gallery(path) as g:
        assert g.verify_events() == EventChainReport(True, 0, None, None, None, None)
        ids = _log(g)
        report = g.verify_events()
    conn = raw(path)
    rows = conn.execute("SELECT id, prev_hash, hash FROM events ORDER BY id").fetchall()
    conn.close()
    assert report == EventChainReport(True, 6, None, None, ids[-1], rows[-1][2])
    assert rows[0][1] == GENESIS_HASH
    assert [r[1] for r in rows[1:]] == [r[2] for r in rows[:-1]]  # each event carries its predecessor's hash
    with Gallery(path) as g:  # reopening changes nothing
        assert g.verify_events() == report


def _forge(conn: sqlite3.Connection, event_id: int) -> None:
    """Alter an event and recompute its own hash, as someone who knows the scheme but cannot rewrite the rest."""
    conn.execute("UPDATE events SET outcome = 'granted' WHERE id = ?", [event_id])
    cols = ", ".join(("id", "ts", "kind", "track_id", "person_id", "person_name", "score", "runner_up", "threshold",
                      "frames", "liveness", "latency_ms", "outcome", "door_action", "detail"))  # fmt: skip
    cur = conn.execute(f"SELECT {cols}, prev_hash FROM events WHERE id = ?", [event_id])
    names = [d[0] for d in cur.description]
    row = dict(zip(names, cur.fetchone(), strict=True))
    conn.execute("UPDATE events SET hash = ? WHERE id = ?", [event_hash(row["prev_hash"], row), event_id])


TAMPERING: dict[str, tuple[Callable[[sqlite3.Connection], object], int]] = {
    # name: (what is done to the 6-event log, the first event reported broken)
    "edit-outcome": (lambda c: c.execute("UPDATE events SET outcome = 'granted' WHERE id = 2"), 2),
    "edit-score": (lambda c: c.execute("UPDATE events SET score = 0.99 WHERE id = 5"), 5),
    "edit-detail-by": (lambda c: c.execute('UPDATE events SET detail = \'{"by":"eve"}\' WHERE id = 4'), 4),
    "delete-middle": (lambda c: c.execute("DELETE FROM events WHERE id = 3"), 4),
    "delete-first": (lambda c: c.execute("DELETE FROM events WHERE id = 1"), 2),
    "reorder-swap-ids": (
        lambda c: c.executescript(
            "UPDATE events SET id = 100 WHERE id = 2; UPDATE events SET id = 2 WHERE id = 5; "
            "UPDATE events SET id = 5 WHERE id = 100;"
        ),
        2,
    ),
    "reorder-swap-timestamps": (
        lambda c: c.execute("UPDATE events SET ts = CASE id WHEN 3 THEN '2020-01-01T00:00:00+00:00' ELSE ts END"),
        3,
    ),
    "forged-hash": (lambda c: c.execute(f"UPDATE events SET hash = '{'f' * 64}' WHERE id = 3"), 3),
    "forged-recomputed-hash": (lambda c: _forge(c, 3), 4),
    "inserted-without-hash": (
        lambda c: c.execute(
            "INSERT INTO events (ts, kind, outcome) VALUES ('2025-06-01T09:00:00+00:00', 'admin', 'x')"
        ),
        7,
    ),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_tampering_reports_the_first_broken_event(path: Path, case: str) -> None:
    with Gallery(path) as g:
        assert _log(g) == [1, 2, 3, 4, 5, 6]
    tamper, broken = TAMPERING[case]
    conn = raw(path)
    tamper(conn)
    conn.close()
    with Gallery(path) as g:
        report = g.verify_events()
    conn = raw(path)
    intact_before = conn.execute("SELECT count(*) FROM events WHERE id < ?", [broken]).fetchone()[0]
    conn.close()
    assert not report.ok
    assert report.first_broken_id == broken, report.reason
    assert report.checked == intact_before
    assert report.reason is not None and report.reason.startswith(f"event {broken}:") and "\n" not in report.reason


def test_concurrent_writers_keep_one_chain(path: Path) -> None:
    Gallery(path).close()

    def write(tag: str) -> None:
        with Gallery(path, busy_timeout_s=30) as g:
            for i in range(40):
                g.add_event("access", "denied", detail={"writer": tag, "i": i})

    threads = [threading.Thread(target=write, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    with Gallery(path) as g:
        report = g.verify_events()
        writers = [e["detail"]["writer"] for e in g.events()]
    assert report.ok and report.checked == 80 and sorted(writers) == ["a"] * 40 + ["b"] * 40


# -- migration from a gallery made before 0002 -----------------------------------------------------------------

OLD_SCHEMA = """
CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    created TEXT NOT NULL, enabled INTEGER NOT NULL DEFAULT 1, valid_from TEXT, valid_until TEXT, note TEXT);
CREATE TABLE templates (id INTEGER PRIMARY KEY,
    person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE, embedding BLOB NOT NULL,
    dim INTEGER NOT NULL, model_id TEXT NOT NULL, model_sha256 TEXT NOT NULL, quality REAL, source TEXT,
    created TEXT NOT NULL);
CREATE INDEX idx_templates_model ON templates (model_id, model_sha256);
CREATE INDEX idx_templates_person ON templates (person_id);
CREATE TABLE events (id INTEGER PRIMARY KEY, ts TEXT NOT NULL, kind TEXT NOT NULL,
    track_id INTEGER, person_id INTEGER, person_name TEXT, score REAL, runner_up REAL, threshold REAL,
    frames INTEGER, liveness TEXT, latency_ms REAL, outcome TEXT NOT NULL, door_action TEXT, detail TEXT);
CREATE INDEX idx_events_ts ON events (ts);
CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied TEXT NOT NULL);
INSERT INTO _migrations VALUES ('0001_initial', '2025-01-01T00:00:00+00:00');
INSERT INTO people VALUES (1, 'Ada', '2025-01-01T00:00:00+00:00', 1, NULL, NULL, 'front desk');
INSERT INTO people VALUES (2, 'Grace', '2025-01-02T00:00:00+00:00', 0, NULL, '2030-01-01T00:00:00+00:00', NULL);
INSERT INTO events (ts, kind, outcome, person_id, person_name, score, frames, detail) VALUES
    ('2025-01-03T08:00:00+00:00', 'access', 'granted', 1, 'Ada', 0.8125, 3, '{"why":"ok"}'),
    ('2025-01-03T08:01:00+00:00', 'access', 'denied', NULL, NULL, 0.25, 5, NULL),
    ('2025-01-03T08:02:00+00:00', 'door', 'forced_open', NULL, NULL, NULL, NULL, 'not json');
"""


def old_gallery(path: Path, vectors: list[np.ndarray]) -> Path:
    """A gallery exactly as face-kiosk wrote it before migration 0002 (WAL, plaintext templates, no chain)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = raw(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(OLD_SCHEMA)
    for i, vec in enumerate(vectors):
        conn.execute(
            "INSERT INTO templates (person_id, embedding, dim, model_id, model_sha256, quality, source, created) "
            "VALUES (?, ?, ?, ?, ?, 0.9, 'old', '2025-01-01T00:00:00+00:00')",
            [1 + i % 2, vec.tobytes(), vec.size, MODEL, SHA],
        )
    conn.close()
    return path


def test_migration_chains_existing_events_and_keeps_all_data(path: Path) -> None:
    vectors = [rand(1), rand(2), rand(3)]
    old_gallery(path, vectors)
    before = {
        table: raw(path).execute(f"SELECT * FROM {table} ORDER BY id").fetchall() for table in ("people", "events")
    }
    with Gallery(path) as g:
        assert g.schema_version() == ["0001_initial", "0002_security", "0003_access"]
        report = g.verify_events()
        assert report.ok and report.checked == 3 and report.head_id == 3
        assert g.encryption_status() == {None: 3}
        m = g.matrix(MODEL, SHA, include_disabled=True)
        assert m.names == ["Ada", "Grace", "Ada"]
        assert m.embeddings.tobytes() == np.stack(vectors).tobytes()
        assert g.get_person("Ada").note == "front desk" and g.get_person("Grace").enabled is False
        new = g.add_event("access", "denied")
        assert g.verify_events().ok and g.verify_events().head_id == new
    conn = raw(path)
    people = conn.execute("SELECT * FROM people ORDER BY id").fetchall()
    assert [row[:-2] for row in people] == before["people"]  # every old column as it was, 0003's two appended empty
    assert {row[-2:] for row in people} == {(None, None)}
    events = conn.execute("SELECT * FROM events WHERE id <= 3 ORDER BY id").fetchall()
    conn.close()
    assert [row[:-2] for row in events] == before["events"]  # every old column as it was, hashes appended


# -- admin events ----------------------------------------------------------------------------------------------

ACTOR = "alice (uid 1000): kiosk people"


def _admin(g: Gallery) -> list[tuple[str, str | None, dict[str, Any]]]:
    return [(e["outcome"], e["person_name"], e["detail"]) for e in g.events() if e["kind"] == "admin"]


def test_every_change_by_an_actor_is_recorded(path: Path) -> None:
    with Gallery(path, actor=ACTOR) as g:
        g.add_person("Ada", enabled=False)
        g.enroll("Bob", [tpl(rand(1)), tpl(rand(2))])
        g.enroll("bob", [tpl(rand(3))], append=True)
        g.add_templates("Ada", [tpl(rand(4))])
        g.rename("Bob", "Robert")
        g.set_enabled("Ada", True)
        g.set_validity("Ada", None, datetime(2030, 1, 1, tzinfo=UTC))
        assert g.remove("Robert") == 3
        admin = _admin(g)
        assert g.verify_events().ok
    by = {"by": ACTOR}
    assert admin == [
        ("added", "Ada", by | {"enabled": False}),
        ("enrolled", "Bob", by | {"templates": 2}),
        ("templates added", "Bob", by | {"templates": 1}),
        ("templates added", "Ada", by | {"templates": 1}),
        ("renamed", "Robert", by | {"from": "Bob"}),
        ("enabled", "Ada", by),
        ("validity set", "Ada", by | {"valid_from": None, "valid_until": "2030-01-01T00:00:00+00:00"}),
        ("removed", "Robert", by | {"templates": 3}),
    ]


def test_without_an_actor_changes_write_no_admin_events(path: Path) -> None:
    with Gallery(path) as g:
        g.enroll("Bob", [tpl(rand(1))])
        g.rename("Bob", "Robert")
        g.remove("Robert")
        assert _admin(g) == []


def test_a_failing_change_writes_no_admin_event(path: Path) -> None:
    with Gallery(path, actor=ACTOR) as g:
        g.enroll("Ada", [tpl(rand(1))])
        g.enroll("Bob", [tpl(rand(2))])
        bad = [tpl(rand(3)), tpl(np.array([np.nan] * DIM, np.float32))]
        with pytest.raises(InputError, match="NaN"):
            g.enroll("Carol", bad)
        with pytest.raises(InputError, match="NaN"):
            g.add_templates("Ada", bad)
        with pytest.raises(DuplicateError):
            g.rename("Ada", "bob")
        with pytest.raises(PersonNotFoundError):
            g.remove("Carol")
        assert [a[:2] for a in _admin(g)] == [("enrolled", "Ada"), ("enrolled", "Bob")]
        assert g.get_person("Ada").templates == 1


def test_the_admin_event_and_the_change_share_one_transaction(path: Path) -> None:
    """If writing the admin event fails, the enrolment it describes is rolled back with it."""
    with Gallery(path, actor=ACTOR) as g:
        g._db.execute(
            "CREATE TEMP TRIGGER no_audit BEFORE INSERT ON events WHEN NEW.kind = 'admin' "
            "BEGIN SELECT RAISE(ABORT, 'audit log unavailable'); END"
        )
        with pytest.raises(GalleryError, match="audit log unavailable"):
            g.enroll("Ada", [tpl(rand(1))])
        assert g.list_people() == [] and g.encryption_status() == {}
        with pytest.raises(GalleryError, match="audit log unavailable"):
            g.add_person("Bob")
        assert g.list_people() == []


# -- erasure ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [16, 2048], ids=["in-page", "overflow-pages"])
def test_remove_leaves_no_template_bytes_with_other_connections_open(path: Path, dim: int) -> None:
    secret = marker(b"REMOVEMEPLEASE!!", dim)
    with Gallery(path) as g:
        g.enroll("alice", [tpl(secret)])
        g.enroll("bob", [tpl(rand(1, dim))])
    reader = raw(path)  # e.g. `kiosk people list` in another shell
    kiosk = Gallery(path)  # the running door loop
    try:
        assert reader.execute("SELECT count(*) FROM templates").fetchone() == (2,)
        assert len(kiosk.matrix(MODEL, SHA)) == 2
        with Gallery(path) as g:
            assert b"REMOVEMEPLEASE!!" in on_disk(path)
            assert g.remove("alice") == 1
            assert b"REMOVEMEPLEASE!!" not in path.read_bytes()
            assert b"REMOVEMEPLEASE!!" not in Path(f"{path}-wal").read_bytes()
        assert kiosk.matrix(MODEL, SHA).names == ["bob"]
    finally:
        reader.close()
        kiosk.close()
    assert b"REMOVEMEPLEASE!!" not in on_disk(path)


def test_remove_waits_for_a_reader_in_the_middle_of_a_read(path: Path) -> None:
    secret = marker(b"WAITFORTHEREADER")
    with Gallery(path) as g:
        g.enroll("alice", [tpl(secret)])
        g.enroll("bob", [tpl(rand(1))])
    reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM templates").fetchone()  # holds a snapshot: blocks the checkpoint
    release = threading.Timer(0.3, lambda: reader.execute("COMMIT"))
    try:
        with Gallery(path, busy_timeout_s=10) as g:
            release.start()
            g.remove("alice")
            assert b"WAITFORTHEREADER" not in on_disk(path)
    finally:
        release.join()
        reader.close()


def test_remove_warns_when_a_reader_blocks_the_checkpoint_too_long(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = marker(b"STUCKREADERCASE!")
    with Gallery(path) as g:
        g.enroll("alice", [tpl(secret)])
        g.enroll("bob", [tpl(rand(1))])
    reader = raw(path)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM templates").fetchone()
    try:
        with Gallery(path, busy_timeout_s=0.2) as g, caplog.at_level(logging.WARNING, logger="kiosk.gallery"):
            assert g.remove("alice") == 1  # the removal itself is done
            assert any("blocked" in r.getMessage() for r in caplog.records)
            assert b"STUCKREADERCASE!" in on_disk(path)  # the honest state the warning reports
    finally:
        reader.execute("COMMIT")
        reader.close()
    with Gallery(path) as g:  # the next checkpoint (here: the last close) finishes the erasure
        g.list_people()
    assert b"STUCKREADERCASE!" not in on_disk(path)


# -- backups ---------------------------------------------------------------------------------------------------


def _people(path: Path) -> list[tuple[Any, ...]]:
    conn = raw(path)
    try:
        return conn.execute("SELECT id, name FROM people ORDER BY id").fetchall()
    finally:
        conn.close()


def test_backup_is_online_while_another_connection_writes(path: Path, tmp_path: Path) -> None:
    with Gallery(path) as g:
        g.enroll("alice", [tpl(rand(1))])
    writer = raw(path)
    writer.execute("BEGIN IMMEDIATE")  # a writer in the middle of its transaction
    writer.execute("INSERT INTO people (name, created) VALUES ('uncommitted', '2025-01-01T00:00:00+00:00')")
    stop = threading.Event()

    def keep_writing() -> None:
        with Gallery(path, busy_timeout_s=30) as other:
            while not stop.is_set():
                other.add_event("access", "denied")

    try:
        with Gallery(path, busy_timeout_s=0.5) as g:
            g.backup(tmp_path / "during-write.db")  # does not wait for the writer, and does not fail
        writer.execute("COMMIT")
        thread = threading.Thread(target=keep_writing)
        thread.start()
        try:
            with Gallery(path) as g:
                for i in range(3):
                    g.backup(tmp_path / f"while-writing-{i}.db")
        finally:
            stop.set()
            thread.join(30)
    finally:
        writer.close()
    assert [name for _, name in _people(tmp_path / "during-write.db")] == ["alice"]  # one committed snapshot
    for i in range(3):
        with Gallery(tmp_path / f"while-writing-{i}.db") as copy:
            assert copy.integrity_check() == [] and copy.verify_events().ok
            assert [p.name for p in copy.list_people()] == ["alice", "uncommitted"]


def test_backup_file_is_private_single_and_never_overwritten(path: Path, tmp_path: Path, key_a: TestCipher) -> None:
    secret = marker(b"BACKUPCIPHERTEXT")
    dest = tmp_path / "backups" / "g.db"
    dest.parent.mkdir()
    old_umask = os.umask(0)  # even with a permissive umask
    try:
        with Gallery(path, cipher=key_a) as g:
            g.enroll("alice", [tpl(secret)])
            g.backup(dest)
            with pytest.raises(GalleryError, match="already exists"):
                g.backup(dest)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert sorted(p.name for p in dest.parent.iterdir()) == ["g.db"]  # no -wal, -journal or .tmp left
    conn = raw(dest)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert conn.execute("SELECT key_id FROM templates").fetchone() == (key_a.key_id,)
    conn.close()
    assert b"BACKUPCIPHERTEXT" not in dest.read_bytes()  # an encrypted gallery's backup holds ciphertext only
    with Gallery(dest, cipher=key_a) as copy:
        assert copy.matrix(MODEL, SHA).embeddings[0].tobytes() == secret.tobytes()


# -- restore ---------------------------------------------------------------------------------------------------


def _state(g: Gallery) -> tuple[Any, ...]:
    m = g.matrix(MODEL, SHA, include_disabled=True)
    events = [(e["id"], e["kind"], e["outcome"]) for e in g.events()]
    return [(p.id, p.name, p.enabled) for p in g.list_people()], m.names, m.embeddings.tobytes(), events


def test_restore_brings_back_people_templates_and_events(path: Path, tmp_path: Path) -> None:
    with Gallery(path, actor=ACTOR) as g:
        g.enroll("alice", [tpl(rand(1)), tpl(rand(2))])
        g.enroll("bob", [tpl(rand(3))], enabled=False)
        g.add_event("access", "granted", person_name="alice", score=0.8)
        saved = _state(g)
        g.backup(tmp_path / "b.db")
        g.remove("alice")
        g.enroll("mallory", [tpl(rand(4))])
        g.add_event("access", "granted", person_name="mallory")
        assert g.restore_from(tmp_path / "b.db") == 2
        people, names, embeddings, events = _state(g)
        assert (people, names, embeddings) == saved[:3]
        assert events[:-1] == saved[3]  # the backup's log, then the restore itself
        last = g.events()[-1]
        assert (last["kind"], last["outcome"]) == ("admin", "restored")
        assert last["detail"] == {"by": ACTOR, "people": 2, "templates": 3, "source": "b.db"}
        assert g.verify_events().ok and g.integrity_check() == []


def _truncated(src: Path, bad: Path) -> None:
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 2])


def _random(src: Path, bad: Path) -> None:
    bad.write_bytes(np.random.default_rng(7).bytes(src.stat().st_size))


def _not_a_gallery(src: Path, bad: Path) -> None:
    conn = raw(bad)
    conn.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO people VALUES (1, 'eve')")
    conn.close()


def _tampered_chain(src: Path, bad: Path) -> None:
    bad.write_bytes(src.read_bytes())
    conn = raw(bad)
    conn.execute("UPDATE events SET outcome = 'granted' WHERE id = 1")
    conn.close()


def _newer(src: Path, bad: Path) -> None:
    bad.write_bytes(src.read_bytes())
    conn = raw(bad)
    conn.execute("INSERT INTO _migrations VALUES ('0099_future', '2030-01-01T00:00:00+00:00')")
    conn.close()


def _tampered_template(src: Path, bad: Path) -> None:
    bad.write_bytes(src.read_bytes())
    conn = raw(bad)
    conn.execute("UPDATE templates SET person_id = 2 WHERE person_id = 1")
    conn.close()


BAD_BACKUPS: dict[str, tuple[Callable[[Path, Path], None], type[Exception], str]] = {
    "truncated": (_truncated, GalleryCorruptError, "nothing was restored"),
    "random-bytes": (_random, GalleryCorruptError, "not a readable SQLite database"),
    "not-a-gallery": (_not_a_gallery, TamperedError, "not a face-kiosk gallery"),
    "tampered-chain": (_tampered_chain, TamperedError, "event 1"),
    "newer-version": (_newer, GalleryError, "newer face-kiosk"),
    "template-moved": (_tampered_template, TemplateKeyError, "does not authenticate"),
    "missing": (lambda src, bad: None, GalleryError, "does not exist"),
}


@pytest.mark.parametrize("case", sorted(BAD_BACKUPS))
def test_a_bad_backup_is_refused_and_changes_nothing(path: Path, tmp_path: Path, key_a: TestCipher, case: str) -> None:
    make, error, words = BAD_BACKUPS[case]
    with Gallery(path, cipher=key_a) as g:
        g.enroll("alice", [tpl(rand(1))])
        g.enroll("bob", [tpl(rand(2))])
        g.add_event("access", "denied")
        g.backup(tmp_path / "good.db")
        g.enroll("carol", [tpl(rand(3))])
    bad = tmp_path / "bad.db"
    make(tmp_path / "good.db", bad)
    before = dump(path)
    kiosk = Gallery(path, cipher=key_a)
    version = kiosk.data_version()
    try:
        with Gallery(path, cipher=key_a, actor=ACTOR) as g, pytest.raises(error) as info:
            g.restore_from(bad)
        assert type(info.value) is error and words in str(info.value) and "\n" not in str(info.value)
        assert kiosk.data_version() == version  # the running kiosk saw no change at all
    finally:
        kiosk.close()
    assert dump(path) == before
    with Gallery(":memory:", cipher=key_a) as scratch:  # `kiosk restore` checks a backup in memory first
        with pytest.raises(error):
            scratch.restore_from(bad)
        assert scratch.restore_from(tmp_path / "good.db") == 2
    with Gallery(path, cipher=key_a) as g:
        assert g.restore_from(tmp_path / "good.db") == 2  # while a sound backup restores


def test_restore_with_a_second_connection_open_is_seen_by_it(path: Path, tmp_path: Path, key_a: TestCipher) -> None:
    with Gallery(path, cipher=key_a) as g:
        g.enroll("alice", [tpl(rand(1))])
        g.backup(tmp_path / "b.db")
        g.remove("alice")
        g.enroll("mallory", [tpl(rand(2))])
    kiosk = Gallery(path, cipher=key_a)  # the door loop's connection, open throughout
    try:
        version = kiosk.data_version()
        assert kiosk.matrix(MODEL, SHA).names == ["mallory"]
        with Gallery(path, cipher=TestCipher(KEY_A)) as admin:
            admin.restore_from(tmp_path / "b.db")
        assert kiosk.data_version() != version  # what makes the door loop reload its templates
        m = kiosk.matrix(MODEL, SHA)
        assert m.names == ["alice"] and m.embeddings.tobytes() == rand(1).tobytes()
        assert kiosk.verify_events().ok
        kiosk.add_event("access", "granted", person_name="alice")  # and it can go on writing
    finally:
        kiosk.close()
    with Gallery(path, cipher=key_a) as g:
        assert g.verify_events().ok and g.integrity_check() == []


def test_restore_refuses_a_backup_encrypted_with_another_key(
    path: Path, tmp_path: Path, key_a: TestCipher, key_b: TestCipher
) -> None:
    with Gallery(tmp_path / "other" / "g.db", cipher=key_b) as other:
        other.enroll("eve", [tpl(rand(9))])
        other.backup(tmp_path / "other.db")
    with Gallery(path, cipher=key_a) as g:
        g.enroll("alice", [tpl(rand(1))])
    before = dump(path)
    with Gallery(path, cipher=key_a) as g, pytest.raises(TemplateKeyError) as info:
        g.restore_from(tmp_path / "other.db")
    assert key_b.key_id in str(info.value)
    assert dump(path) == before


def test_restore_of_a_pre_0002_backup_migrates_and_chains_it(path: Path, tmp_path: Path) -> None:
    old = old_gallery(tmp_path / "old" / "gallery.db", [rand(1), rand(2)])
    with Gallery(path) as g:
        g.enroll("someone", [tpl(rand(3))])
        assert g.restore_from(old) == 2
        assert g.schema_version() == ["0001_initial", "0002_security", "0003_access"]
        report = g.verify_events()
        assert report.ok and report.checked == 4  # 3 old events + "restored"
        assert [p.name for p in g.list_people()] == ["Ada", "Grace"]


# -- erasing from backups --------------------------------------------------------------------------------------


def test_erase_from_backup_removes_the_persons_bytes(path: Path, tmp_path: Path) -> None:
    secret = marker(b"ERASEFROMBACKUP!", 512)
    backup = tmp_path / "b.db"
    with Gallery(path) as g:
        alice = g.enroll("alice", [tpl(secret), tpl(secret)])
        g.enroll("bob", [tpl(rand(1, 512))])
        g.add_event("access", "granted", person_name="bob")
        g.backup(backup)
    assert b"ERASEFROMBACKUP!" in backup.read_bytes()
    assert erase_from_backup(backup, alice.id) is True
    assert b"ERASEFROMBACKUP!" not in backup.read_bytes()
    assert sorted(p.name for p in tmp_path.glob("b.db*")) == ["b.db"]  # no -wal / -shm / -journal left
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    conn = raw(backup)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    conn.close()
    assert erase_from_backup(backup, alice.id) is False  # already gone
    with Gallery(path) as g:  # the backup is still a sound, restorable gallery without alice
        assert g.restore_from(backup) == 1
        assert [p.name for p in g.list_people()] == ["bob"] and g.verify_events().ok


def test_erase_from_backup_refuses_what_is_not_a_gallery(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    conn = raw(other)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY)")
    conn.close()
    with pytest.raises(TamperedError):
        erase_from_backup(other, 1)
    with pytest.raises(GalleryError, match="does not exist"):
        erase_from_backup(tmp_path / "missing.db", 1)


@pytest.fixture(autouse=True)
def _no_stray_threads() -> Iterator[None]:
    with no_new_threads(join_timeout=0.0):
        yield
