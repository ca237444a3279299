"""`kiosk backup`, `kiosk restore`, `kiosk keys` and `kiosk events verify` end to end through the CLI (issue #6)."""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kiosk.errors import ExitCode
from kiosk.gallery import Gallery, TemplateIn
from kiosk.gallery.keys import AesGcmCipher, read_key_file
from kiosk.models.manifest import load_manifest
from tests.helpers import config_file, run_cli

MODEL, SHA = "sface", "5" * 64


def vec(seed: int, dim: int = 128) -> np.ndarray:
    v: np.ndarray = np.random.default_rng(seed).standard_normal(dim).astype("<f4")
    unit: np.ndarray = (v / np.linalg.norm(v)).astype("<f4")
    return unit


def enrol(path: Path, name: str, seeds: list[int]) -> None:
    with Gallery(path) as g:
        g.enroll(name, [TemplateIn(vec(s), MODEL, SHA, 1.0, "synthetic") for s in seeds])


def _people(cfg: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    code, out, err = run_cli(cfg, capsys, "people", "list", "--json")
    assert code == 0, err
    return [p["name"] for p in json.loads(out)]


def test_backup_then_restore_a_healthy_gallery(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config_file(tmp_path)
    db = tmp_path / "data" / "gallery.db"
    enrol(db, "Ada", [1])
    with Gallery(db) as g:
        g.add_event("access", "denied")
    code, out, err = run_cli(cfg, capsys, "backup")
    assert code == 0, err
    backup = Path(out.strip())
    assert backup.parent == tmp_path / "data" / "backups" and stat.S_IMODE(backup.stat().st_mode) == 0o600
    enrol(db, "Bob", [2])
    # Refusals change nothing and save nothing: no confirmation, not a gallery, a tampered event chain.
    code, _, err = run_cli(cfg, capsys, "restore", str(backup))
    assert code == ExitCode.INPUT and "--yes" in err
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    code, _, err = run_cli(cfg, capsys, "restore", str(junk), "--yes")
    assert code == ExitCode.TAMPERED and err.count("\n") == 1
    tampered = tmp_path / "tampered.db"
    tampered.write_bytes(backup.read_bytes())
    with sqlite3.connect(tampered) as conn:
        assert conn.execute("UPDATE events SET outcome = 'granted' WHERE id = 1").rowcount == 1
    conn.close()
    code, _, err = run_cli(cfg, capsys, "restore", str(tampered), "--yes")
    assert code == ExitCode.TAMPERED and "event" in err
    assert _people(cfg, capsys) == ["Ada", "Bob"]
    assert len(list(backup.parent.glob("gallery-*.db"))) == 1
    # A healthy gallery is saved first, then replaced in place.
    code, out, err = run_cli(cfg, capsys, "restore", str(backup), "--yes")
    assert code == 0, err
    assert "restored 1 people" in out
    saved = Path(out.split("saved the current gallery as ")[1].split("\n")[0])
    assert _people(cfg, capsys) == ["Ada"]
    with Gallery(saved) as g:
        assert [p.name for p in g.list_people()] == ["Ada", "Bob"]
    code, out, _ = run_cli(cfg, capsys, "events", "--json")
    assert any(e["kind"] == "admin" and e["outcome"] == "restored" for e in json.loads(out))
    assert run_cli(cfg, capsys, "events", "verify")[0] == 0


_KIOSK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1])
conn.execute("SELECT count(*) FROM people").fetchall()
print("ready", flush=True)
time.sleep(120)
"""


def test_corrupt_gallery_at_start_then_restore(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config_file(tmp_path)
    db = tmp_path / "data" / "gallery.db"
    enrol(db, "Ada", [1])
    code, out, _ = run_cli(cfg, capsys, "backup")
    backup = Path(out.strip())
    enrol(db, "Bob", [2])
    # A kiosk still running on the gallery when it is damaged: its connection holds the WAL open.
    running = subprocess.Popen([sys.executable, "-c", _KIOSK, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert running.stdout is not None and running.stdout.readline().strip() == "ready"
        with db.open("r+b") as f:
            f.write(b"\x00garbage" * 64)
        code, out, err = run_cli(cfg, capsys, "people", "list")
        assert code == ExitCode.GALLERY and err.count("\n") == 1
        assert f"kiosk restore {backup}" in err, err
        code, _, err = run_cli(cfg, capsys, "restore", str(backup), "--yes")
        assert code == ExitCode.GALLERY and "stop the kiosk" in err
        assert not list(db.parent.glob("gallery.db.damaged-*")), "nothing is moved while the kiosk runs"
    finally:
        running.kill()
        running.wait(timeout=30)
        assert running.stdout is not None
        running.stdout.close()
    code, out, err = run_cli(cfg, capsys, "restore", str(backup), "--yes")
    assert code == 0, err
    damaged = list(db.parent.glob("gallery.db.damaged-*"))
    assert damaged and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in damaged)
    assert any(p.name.endswith("-wal") for p in damaged), "the damaged gallery's WAL goes with it"
    (moved,) = (p for p in damaged if not p.name.endswith("-wal"))
    assert moved.read_bytes().startswith(b"\x00garbage"), "the damaged file is kept for inspection"
    assert _people(cfg, capsys) == ["Ada"]
    code, out, _ = run_cli(cfg, capsys, "events", "verify")
    assert code == 0 and "chain intact" in out


def _key_cfg(cfg: Path, data: Path, key: Path | None) -> None:
    text = f"data_dir: {data}\n"
    if key is not None:
        text += f"gallery:\n  encrypt: true\n  key_file: {key}\n"
    cfg.write_text(text)


def test_keys_rotate_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, data = config_file(tmp_path), tmp_path / "data"
    db = data / "gallery.db"
    enrol(db, "Ada", [1, 2])
    enrol(db, "Bob", [3])
    k1, k2 = tmp_path / "keys" / "k1", tmp_path / "keys" / "k2"
    assert run_cli(cfg, capsys, "keys", "generate", str(k1))[0] == 0
    assert run_cli(cfg, capsys, "keys", "generate", str(k2))[0] == 0
    c1, c2 = (AesGcmCipher(read_key_file(k)) for k in (k1, k2))
    # Encryption switched on over plaintext templates: refused with the hint (the models load first).
    _key_cfg(cfg, data, k1)
    code, _, err = run_cli(cfg, capsys, "enroll", "Cy", str(tmp_path / "missing.jpg"))
    assert code == ExitCode.KEY and "kiosk keys rotate" in err and err.count("\n") == 1
    # plaintext -> k1 (the config may already name the key or not: plaintext needs none to read)
    _key_cfg(cfg, data, None)
    code, out, err = run_cli(cfg, capsys, "keys", "rotate", "--new-key", str(k1))
    assert code == 0, err
    assert f"re-encrypted 3 template(s): unencrypted -> key {c1.key_id}" in out
    assert "gallery.encrypt: true" in out and f"gallery.key_file: {k1}" in out
    with Gallery(db) as g:
        assert g.encryption_status() == {c1.key_id: 3}
    # Backups taken now are encrypted with k1.
    code, out, _ = run_cli(cfg, capsys, "backup")
    old_backup = Path(out.strip())
    # k1 -> k2, with k1 configured
    _key_cfg(cfg, data, k1)
    code, out, err = run_cli(cfg, capsys, "keys", "rotate", "--new-key", str(k2))
    assert code == 0, err
    assert f"key {c1.key_id} -> key {c2.key_id}" in out
    assert f"only with the old key {c1.key_id}" in out and "crypto-shred" in out
    # The old key no longer opens the gallery; the new one does, and the templates are the originals.
    code, _, err = run_cli(cfg, capsys, "enroll", "Cy", str(tmp_path / "missing.jpg"))
    assert code == ExitCode.KEY and c2.key_id in err
    with pytest.raises(Exception, match=c2.key_id), Gallery(db, cipher=c1) as g:
        g.matrix(MODEL, SHA)
    with Gallery(db, cipher=c2) as g:
        m = g.matrix(MODEL, SHA)
        assert np.array_equal(m.embeddings, np.stack([vec(1), vec(2), vec(3)]))
    # The backup made under k1 cannot be restored with k2 configured: it is refused, nothing changes.
    _key_cfg(cfg, data, k2)
    code, _, err = run_cli(cfg, capsys, "restore", str(old_backup), "--yes")
    assert code == ExitCode.KEY and c1.key_id in err
    # k2 -> plaintext
    code, out, err = run_cli(cfg, capsys, "keys", "rotate", "--decrypt")
    assert code == 0, err
    assert "gallery.encrypt: false" in out
    with Gallery(db) as g:
        assert g.encryption_status() == {None: 3}
        assert np.array_equal(g.matrix(MODEL, SHA).embeddings[2], vec(3))
    # Rotating from encrypted templates without their key is refused.
    _key_cfg(cfg, data, None)
    assert run_cli(cfg, capsys, "keys", "rotate", "--new-key", str(k1))[0] == 0
    code, _, err = run_cli(cfg, capsys, "keys", "rotate", "--new-key", str(k2))
    assert code == ExitCode.INPUT and c1.key_id in err
    code, out, _ = run_cli(cfg, capsys, "events", "--json")
    rekeyed = [e for e in json.loads(out) if e["kind"] == "admin" and e["outcome"] == "rekeyed"]
    assert len(rekeyed) == 4


def test_events_verify_intact_and_tampered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config_file(tmp_path)
    db = tmp_path / "data" / "gallery.db"
    with Gallery(db) as g:
        for outcome in ("denied", "granted", "denied", "denied"):
            g.add_event("access", outcome, score=0.5)
    with sqlite3.connect(db) as conn:
        head = conn.execute("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
    conn.close()
    code, out, err = run_cli(cfg, capsys, "events", "verify")
    assert code == 0, err
    assert out.strip() == f"4 events, chain intact, head {head[0]} {head[1]}"
    code, out, _ = run_cli(cfg, capsys, "events", "verify", "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    # Someone turns a denial into a grant behind the kiosk's back.
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE events SET outcome = 'granted' WHERE id = 3")
    conn.close()
    code, out, err = run_cli(cfg, capsys, "events", "verify")
    assert code == ExitCode.TAMPERED and out == ""
    assert err.startswith("kiosk: error: event 3: ") and err.count("\n") == 1 and "event 3: event 3" not in err
    # The listing still works on a tampered log (it is evidence).
    code, out, _ = run_cli(cfg, capsys, "events", "--json")
    assert code == 0 and [e["outcome"] for e in json.loads(out)] == ["denied", "granted", "granted", "denied"]
    # A deleted event breaks the link of the one after it.
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE events SET outcome = 'denied' WHERE id = 3")
        conn.execute("DELETE FROM events WHERE id = 2")
    conn.close()
    code, _, err = run_cli(cfg, capsys, "events", "verify")
    assert code == ExitCode.TAMPERED and "event 3: " in err


def test_check_reports_permissions_encryption_and_chain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config_file(tmp_path, "camera:\n  source: 0\nliveness:\n  mode: off\n")
    db = tmp_path / "data" / "gallery.db"
    sface = load_manifest(None).models["sface"]
    with Gallery(db) as g:  # a template of the configured model: not stale
        g.enroll("Ada", [TemplateIn(vec(1), sface.id, sface.sha256, 1.0, "synthetic")])
        g.add_event("access", "granted")
    code, out, _ = run_cli(cfg, capsys, "check", "--json")
    checks = {c["check"]: c for c in json.loads(out)["checks"]}
    assert code == 0, [c for c in checks.values() if not c["ok"]]
    assert checks["permissions"]["ok"] and checks["event chain"]["ok"] and checks["encryption"]["ok"]
    assert "off (1 unencrypted)" in checks["encryption"]["detail"]
    db.chmod(0o644)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE events SET outcome = 'x' WHERE id = (SELECT min(id) FROM events)")
    conn.close()
    key = tmp_path / "k"
    key.write_bytes(bytes(32))
    key.chmod(0o600)
    cfg.write_text(cfg.read_text() + f"gallery:\n  encrypt: true\n  key_file: {key}\n")
    code, out, _ = run_cli(cfg, capsys, "check", "--json")
    failed = {c["check"]: c["detail"] for c in json.loads(out)["checks"] if not c["ok"]}
    assert code == ExitCode.FAILURE
    assert set(failed) == {"permissions", "encryption", "event chain"}, failed
    assert "chmod 600" in failed["permissions"] and "kiosk keys rotate" in failed["encryption"]
