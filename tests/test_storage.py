"""Opening the gallery safely (permissions, key, integrity), backups, and erasure (issue #6 parts 1 and 4).

Fast path: synthetic embeddings straight into a Gallery, the CLI run in-process (``main`` returns the exit code).
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kiosk.config import Config, parse_config
from kiosk.errors import ExitCode, GalleryError, TemplateKeyError
from kiosk.gallery import Gallery, TemplateIn
from kiosk.gallery.backup import backup_gallery, list_backups
from kiosk.gallery.keys import AesGcmCipher
from kiosk.gallery.open import open_gallery
from kiosk.gallery.permissions import permission_problems
from tests.helpers import config_file, run_cli

MODEL, SHA = "sface", "5" * 64
NOBODY = 65534


def vec(seed: int, dim: int = 128) -> np.ndarray:
    v: np.ndarray = np.random.default_rng(seed).standard_normal(dim).astype("<f4")
    unit: np.ndarray = (v / np.linalg.norm(v)).astype("<f4")
    return unit


def enrol(path: Path, name: str, seeds: list[int], cipher: AesGcmCipher | None = None) -> list[bytes]:
    """Enrol ``name`` with one synthetic template per seed; returns the templates' float32 bytes."""
    vecs = [vec(s) for s in seeds]
    with Gallery(path, cipher=cipher) as g:
        g.enroll(name, [TemplateIn(v, MODEL, SHA, 1.0, "synthetic") for v in vecs])
    return [v.tobytes() for v in vecs]


def cfg_of(tmp_path: Path, **gallery: object) -> Config:
    return parse_config({"data_dir": str(tmp_path / "data"), "gallery": gallery})


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_gallery_is_private_from_the_start(tmp_path: Path) -> None:
    old = os.umask(0)  # a careless umask must not widen anything
    try:
        cfg = cfg_of(tmp_path)
        with open_gallery(cfg) as g:
            assert g.list_people() == []
    finally:
        os.umask(old)
    assert mode(cfg.gallery_path.parent) == 0o700 and mode(cfg.gallery_path) == 0o600
    assert permission_problems(cfg) == []


@pytest.mark.parametrize("target", ["folder", "gallery", "wal"])
def test_open_gallery_refuses_a_gallery_others_can_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    cfg = config_file(tmp_path)
    db = tmp_path / "data" / "gallery.db"
    enrol(db, "Ada", [1])
    holder = sqlite3.connect(db)  # like the running kiosk: keeps the -wal file in place
    try:
        holder.execute("SELECT count(*) FROM people").fetchall()
        path = {"folder": db.parent, "gallery": db, "wal": Path(f"{db}-wal")}[target]
        assert path.exists()
        path.chmod(0o755 if target == "folder" else 0o644)
        code, out, err = run_cli(cfg, capsys, "people", "list")
        assert code == ExitCode.INSECURE, err
        assert err.count("\n") == 1 and str(path) in err and "chmod" in err and out == ""
        assert ("0755" if target == "folder" else "0644") in err
        # The admin may turn the check off (a deliberate choice, e.g. a read-only image): then it opens.
        cfg.write_text(cfg.read_text() + "gallery:\n  check_permissions: false\n")
        assert run_cli(cfg, capsys, "people", "list")[0] == 0
    finally:
        holder.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root (CI runs as root)")
def test_open_gallery_refuses_a_gallery_owned_by_someone_else(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config_file(tmp_path)
    db = tmp_path / "data" / "gallery.db"
    enrol(db, "Ada", [1])
    # Only the file changes owner: the folder stays root's (the CLI would otherwise act as its owner).
    os.chown(db, NOBODY, NOBODY)
    code, _, err = run_cli(cfg, capsys, "people", "list")
    assert code == ExitCode.INSECURE and err.count("\n") == 1
    assert "chown" in err and str(db) in err
    os.chown(db, 0, 0)
    assert run_cli(cfg, capsys, "people", "list")[0] == 0


def test_encryption_must_match_the_templates(tmp_path: Path) -> None:
    db = tmp_path / "data" / "gallery.db"
    key1, key2 = tmp_path / "k1", tmp_path / "k2"
    for path, byte in ((key1, 1), (key2, 2)):
        path.write_bytes(bytes([byte]) * 32)
        path.chmod(0o600)
    enrol(db, "Ada", [1])  # plaintext
    # Encryption switched on over plaintext templates: refused, with the command that encrypts them.
    with pytest.raises(TemplateKeyError, match="kiosk keys rotate"):
        open_gallery(cfg_of(tmp_path, encrypt=True, key_file=str(key1)))
    # Commands that never touch templates still work without the key.
    with open_gallery(cfg_of(tmp_path, encrypt=True, key_file=str(key1)), need_key=False) as g:
        assert [p.name for p in g.list_people()] == ["Ada"]
    with Gallery(db, cipher=AesGcmCipher(bytes([1]) * 32)) as g:
        g.rekey(g.cipher)
        assert g.encryption_status() == {AesGcmCipher(bytes([1]) * 32).key_id: 1}
    with pytest.raises(TemplateKeyError, match=r"gallery\.encrypt: true"):
        open_gallery(cfg_of(tmp_path))  # encryption off over encrypted templates
    k1, k2 = AesGcmCipher(bytes([1]) * 32).key_id, AesGcmCipher(bytes([2]) * 32).key_id
    with pytest.raises(TemplateKeyError, match=f"{k1}.*{k2}"):
        open_gallery(cfg_of(tmp_path, encrypt=True, key_file=str(key2)))  # another key
    with open_gallery(cfg_of(tmp_path, encrypt=True, key_file=str(key1))) as g:
        m = g.matrix(MODEL, SHA)
        assert np.array_equal(m.embeddings[0], vec(1))


def test_backups_are_private_and_pruned(tmp_path: Path) -> None:
    cfg = cfg_of(tmp_path, backups_keep=2)
    with open_gallery(cfg) as g:
        g.add_event("access", "denied")
        made = [backup_gallery(cfg, g) for _ in range(3)]
    assert len(set(made)) == 3, "backups in the same second get distinct names"
    kept = list_backups(cfg)
    assert kept == made[1:] and not made[0].exists()
    assert mode(cfg.backup_dir) == 0o700 and all(mode(p) == 0o600 for p in kept)
    assert all(re.fullmatch(r"gallery-\d{8}T\d{6}Z(-\d+)?\.db", p.name) for p in kept), kept
    out = tmp_path / "elsewhere.db"
    with open_gallery(cfg) as g:
        assert backup_gallery(cfg, g, out) == out
        before = out.read_bytes()
        with pytest.raises(GalleryError, match="already exists"):
            backup_gallery(cfg, g, out)
    assert out.read_bytes() == before and list_backups(cfg) == kept


def test_backup_dir_open_to_others_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config_file(tmp_path)
    enrol(tmp_path / "data" / "gallery.db", "Ada", [1])
    (tmp_path / "data" / "backups").mkdir(mode=0o700)
    (tmp_path / "data" / "backups").chmod(0o755)
    code, out, err = run_cli(cfg, capsys, "backup")
    assert code == ExitCode.INSECURE and "backups" in err and out == ""
    assert list((tmp_path / "data" / "backups").iterdir()) == []


_WRITER = """
import sys, time
from pathlib import Path
from kiosk.gallery import Gallery
stop = Path(sys.argv[2])
with Gallery(sys.argv[1]) as g:
    n = 0
    print("ready", flush=True)
    while not stop.exists() and n < 20000:
        g.add_event("access", "denied", score=0.1, detail={"n": n})
        n += 1
print(n, flush=True)
"""


def test_backup_while_another_process_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config_file(tmp_path)
    db = tmp_path / "data" / "gallery.db"
    enrol(db, "Ada", [1])
    stop = tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(db), str(stop)], stdout=subprocess.PIPE, text=True, cwd=Path.cwd()
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        paths = []
        for _ in range(3):
            code, out, err = run_cli(cfg, capsys, "backup")
            assert code == 0, err
            paths.append(Path(out.strip()))
        stop.touch()
        written = int(writer.communicate(timeout=60)[0].strip())
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    counts = []
    for path in paths:
        with Gallery(path) as copy:  # each backup is a consistent snapshot: sound, chained, Ada in it
            assert copy.integrity_check() == []
            assert copy.verify_events().ok
            assert [p.name for p in copy.list_people()] == ["Ada"]
            counts.append(len(copy.events()))
    assert counts == sorted(counts) and 0 < counts[0] < counts[-1], counts  # the writer ran throughout
    with Gallery(db) as g:
        assert len(g.events()) >= written and g.verify_events().ok


def _holds(path: Path, needle: bytes) -> bool:
    return path.exists() and needle in path.read_bytes()


def test_people_remove_erases_from_gallery_wal_and_backups(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config_file(tmp_path, "gallery:\n  backups_keep: 5\n")
    db = tmp_path / "data" / "gallery.db"
    ada = enrol(db, "Ada", [1, 2])
    bob = enrol(db, "Bob", [3])
    for _ in range(2):
        assert run_cli(cfg, capsys, "backup")[0] == 0
    backups = sorted((tmp_path / "data" / "backups").glob("gallery-*.db"))
    assert len(backups) == 2
    holder = sqlite3.connect(db)  # the running kiosk's connection keeps the WAL file
    try:
        holder.execute("SELECT count(*) FROM templates").fetchall()
        files = [db, Path(f"{db}-wal"), *backups]
        # Before: every template is in the gallery (file or WAL) and in each backup.
        for needle in ada:
            assert _holds(db, needle) or _holds(files[1], needle)
            assert all(_holds(b, needle) for b in backups)
        code, out, err = run_cli(cfg, capsys, "people", "remove", "Ada", "--yes")
        assert code == 0, err
        assert "erased 2 template(s)" in out and "erased from 2 of 2 backup(s)" in out
        for needle in ada:
            assert not any(_holds(f, needle) for f in files), [str(f) for f in files if _holds(f, needle)]
        for needle in bob:  # the others are untouched
            assert _holds(db, needle) or _holds(files[1], needle)
            assert all(_holds(b, needle) for b in backups)
    finally:
        holder.close()
    for b in backups:
        with Gallery(b) as copy:
            assert [p.name for p in copy.list_people()] == ["Bob"] and copy.integrity_check() == []


def test_restoring_the_oldest_backup_never_prunes_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config_file(tmp_path, "gallery:\n  backups_keep: 2\n")
    db = tmp_path / "data" / "gallery.db"
    enrol(db, "Ada", [1])
    oldest = Path(run_cli(cfg, capsys, "backup")[1].strip())
    enrol(db, "Bob", [2])
    newer = Path(run_cli(cfg, capsys, "backup")[1].strip())
    # The pre-restore backup is the third: the oldest would be pruned, but it is the one being restored.
    code, _, err = run_cli(cfg, capsys, "restore", str(oldest), "--yes")
    assert code == 0, err
    assert oldest.exists() and newer.exists() and len(list(oldest.parent.glob("gallery-*.db"))) == 3
    with Gallery(db) as g:
        assert [p.name for p in g.list_people()] == ["Ada"]
    # The next backup prunes back to two.
    assert run_cli(cfg, capsys, "backup")[0] == 0
    assert len(list(oldest.parent.glob("gallery-*.db"))) == 2 and not oldest.exists()
