from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from kiosk.door.notify import Notifier
from kiosk.door.snapshots import SnapshotStore


@pytest.fixture()
def listener(tmp_path: Path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(1.0)
    yield path, sock
    sock.close()


def test_ready_status_stopping_and_rate_limited_watchdog(listener) -> None:
    path, sock = listener
    now = [100.0]
    n = Notifier(str(path), watchdog_usec="2000000", clock=lambda: now[0])  # pings at most every 1 s
    assert n.enabled and n.watchdog_interval_s == 1.0
    n.ready(status="running")
    assert sock.recv(256) == b"READY=1\nSTATUS=running"
    n.watchdog()
    n.watchdog()  # same instant: suppressed
    now[0] += 0.5
    n.watchdog()  # too soon: suppressed
    now[0] += 0.6
    n.watchdog()
    n.status("12.0 fps")
    n.stopping()
    got = [sock.recv(256) for _ in range(4)]
    assert got == [b"WATCHDOG=1", b"WATCHDOG=1", b"STATUS=12.0 fps", b"STOPPING=1"]
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(256)
    n.close()
    n.close()


def test_disabled_without_socket_and_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    n = Notifier()
    assert not n.enabled and n.watchdog_interval_s is None
    assert n.send("READY=1") is False
    broken = Notifier(str(tmp_path / "nobody-listens.sock"))
    assert broken.send("READY=1") is False  # logged once, then disabled
    assert broken.send("WATCHDOG=1") is False
    broken.close()


def test_abstract_socket_address() -> None:
    name = f"kiosk-test-{id(object())}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(1.0)
    try:
        n = Notifier("@" + name)
        n.ready()
        n.close()
        assert sock.recv(64) == b"READY=1"
    finally:
        sock.close()


def test_snapshots_are_bounded_by_size_and_age(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    store = SnapshotStore(tmp_path / "snaps", max_bytes=4000, max_age_s=3600, wall_clock=lambda: now[0])
    img = np.zeros((240, 320, 3), np.uint8)
    img[:, :, 1] = np.arange(320, dtype=np.uint8)[None, :] // 2  # a smooth ramp: small JPEGs
    box = np.array([100, 60, 200, 180], np.float32)
    names = []
    for _ in range(6):
        now[0] += 1
        names.append(store.save(img, box, "granted"))
    files = sorted(p.name for p in (tmp_path / "snaps").glob("*.jpg"))
    assert files and files[-1] == names[-1]
    assert 0 < len(files) < 6, "the size cap must have removed the oldest"
    assert sum((tmp_path / "snaps" / f).stat().st_size for f in files) <= 4000
    assert oct((tmp_path / "snaps" / files[-1]).stat().st_mode & 0o777) == "0o600"
    now[0] += 7200  # everything is now older than an hour
    assert store.prune() == len(files)
    assert store.save(img, np.array([500, 500, 600, 600], np.float32), "denied") is None  # box outside the image
