"""Fail-secure door (issue #6, part 2): the relay is off on every exception, signal and exit; a pulse never outlives
door.max_pulse_s even with the loop stalled; the internal watchdog locks the door and exits WATCHDOG (15) when the
frame loop stops making progress; systemd watchdog pings stop with the loop; per-frame errors are contained.

Every relay assertion reads gpiozero's MockFactory pin history (``MockPin.states``: each entry holds the level and
the time since the previous change, on time.monotonic). The loop-level tests drive ``DoorLoop`` with a fake camera and
a face-less pipeline made flaky by ``kiosk.testing.FlakyStage`` (the faults here are in the loop, not in recognition);
``run_kiosk`` tests use the real models.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiosk.config import Config, parse_config
from kiosk.door.camera import Frame
from kiosk.door.decide import Decision
from kiosk.door.loop import DoorLoop, FrameErrorsExceeded
from kiosk.door.notify import Notifier
from kiosk.door.relay import RelayDoor, open_door
from kiosk.door.service import ThreadCrashedError, run_kiosk, watchdog_limit
from kiosk.door.watchdog import Watchdog
from kiosk.errors import (
    ConfigError,
    ExitCode,
    GalleryError,
    InsecureStorageError,
    KioskError,
    ModelError,
    ModelIntegrityError,
    TemplateKeyError,
)
from kiosk.recognition.pipeline import Thresholds
from kiosk.testing import FlakyStage
from tests.helpers import no_new_threads, wait_until

gpiozero = pytest.importorskip("gpiozero", reason="gpiozero (dev extra) is needed for the mock relay")
from gpiozero.pins.mock import MockFactory, MockPin  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RELAY = 17
LONG = 5.0  # a pulse that, if anything but the fail-secure path ended it, would show up as ~5 s on the pin
SLACK = 0.5  # scheduling jitter on a loaded 2-core machine
WALL = np.full((48, 64, 3), 110, np.uint8)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    with no_new_threads(join_timeout=LONG + 2):
        yield


def cfg_of(tmp_path: Path, **sections: dict[str, object]) -> Config:
    data: dict[str, object] = {
        "data_dir": str(tmp_path / "data"),
        "door": {"driver": "gpiozero", "relay_pin": RELAY, "pulse_s": LONG, "max_pulse_s": 2 * LONG},
        "gallery": {"busy_timeout_s": 0.1},
        "liveness": {"mode": "off"},
        "safety": {"watchdog_s": 60.0},
    }
    data.update(sections)
    return parse_config(data)


def states(pin: MockPin) -> list[bool]:
    return [bool(s.state) for s in pin.states]


def on_time(pin: MockPin) -> float:
    """How long the relay stayed on in its only pulse (``states`` must be [.., True, False])."""
    levels = states(pin)
    assert levels.count(True) == 1 and levels[-1] is False, levels
    return float(pin.states[levels.index(True) + 1].timestamp)


class FakeCamera:
    """``frames`` blank frames, then ended; ``forever`` keeps delivering."""

    def __init__(self, frames: int = 10**9) -> None:
        self.left, self.index = frames, 0

    def latest(self, timeout: float) -> Frame | None:
        if self.left <= 0:
            return None
        self.left -= 1
        self.index += 1
        time.sleep(0.002)
        return Frame(WALL, self.index, time.monotonic())

    def status(self) -> dict[str, Any]:
        return {"state": "ended" if self.left <= 0 else "ok", "source": "fake"}


class NoFaces:
    """Enough of ``Pipeline`` for a loop that never sees a face."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        # The loop derives its decider's continuity allowance from the recogniser's thresholds.
        self.thresholds = Thresholds(accept=0.47, likely=0.36, duplicate=0.47)

    def detect(self, image: np.ndarray) -> list[Any]:
        return []


def fake_pipeline(cfg: Config, stage: Callable[[int], None]) -> FlakyStage[NoFaces]:
    """A face-less pipeline whose detector runs ``stage(frame_number)`` first, inside process() (it may raise)."""
    return FlakyStage(NoFaces(cfg), "detect", stage)


def fake_loop(cfg: Config, door: Any, stage: Callable[[int], None], frames: int, **kw: Any) -> DoorLoop:
    return DoorLoop(fake_pipeline(cfg, stage), None, FakeCamera(frames), door, **kw)


# -- exceptions --------------------------------------------------------------------------------------------------------


def test_exception_mid_pulse_is_contained_relay_off_at_once_and_the_loop_goes_on(
    tmp_path: Path, factory: MockFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = cfg_of(tmp_path)
    with open_door(cfg.door, pin_factory=factory) as door:

        def stage(n: int) -> None:
            if n == 3:
                door.pulse()  # a grant was in progress ...
                raise RuntimeError("embedder blew up\nsecond line")  # ... when a stage failed

        loop = fake_loop(cfg, door, stage, frames=10)
        stats = loop.run(frame_timeout_s=0.01)
        pin = factory.pin(RELAY)
        assert on_time(pin) < SLACK, "locked by the error handling, not by the 5 s off-timer"
        assert not door.unlocked
    assert stats.frames == 9, "the failing frame was dropped, the other nine processed"
    assert loop.frame_errors == 0, "a good frame resets the consecutive count"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["frame dropped, relay off: RuntimeError: embedder blew up second line"]
    assert not any(r.exc_info for r in caplog.records), "no traceback spam"


def test_consecutive_frame_errors_stop_the_loop_with_one_log_line(
    tmp_path: Path, factory: MockFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = cfg_of(tmp_path, safety={"max_frame_errors": 5, "watchdog_s": 60.0})
    with open_door(cfg.door, pin_factory=factory) as door:

        def stage(n: int) -> None:
            raise ValueError(f"bad frame {n}")

        loop = fake_loop(cfg, door, stage, frames=100)
        with pytest.raises(FrameErrorsExceeded, match=r"5 consecutive frames failed.*last: ValueError: bad frame 5"):
            loop.run(frame_timeout_s=0.01)
    assert loop.pipeline.calls == 5
    assert FrameErrorsExceeded.exit_code == ExitCode.FAILURE  # non-zero, not in RestartPreventExitStatus
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["frame dropped, relay off: ValueError: bad frame 1"], "rate-limited: one line, not five"


def test_errors_that_are_not_consecutive_never_stop_the_loop(tmp_path: Path, factory: MockFactory) -> None:
    cfg = cfg_of(tmp_path, safety={"max_frame_errors": 3, "watchdog_s": 60.0})
    with open_door(cfg.door, pin_factory=factory) as door:

        def stage(n: int) -> None:
            if n % 3:  # two bad frames, one good, ...
                raise RuntimeError("flaky")

        stats = fake_loop(cfg, door, stage, frames=30).run(frame_timeout_s=0.01)
    assert stats.frames == 10


@pytest.mark.parametrize(
    "fatal",
    [
        ModelIntegrityError("model 'sface': sha256 mismatch"),
        ConfigError("decision.window: must be at least 1"),
        TemplateKeyError("gallery key is wrong"),
        InsecureStorageError("gallery is readable by others"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_fatal_errors_are_not_swallowed_and_run_kiosk_locks_the_door(
    tmp_path: Path, factory: MockFactory, monkeypatch: pytest.MonkeyPatch, fatal: KioskError, empty_clip: Path
) -> None:
    calls = []

    def process(self: DoorLoop, frame: Frame) -> list[Decision]:
        calls.append(frame)
        self.door.pulse()
        raise fatal

    monkeypatch.setattr(DoorLoop, "process", process)
    with pytest.raises(type(fatal), match=str(fatal)):
        run_kiosk(cfg_of(tmp_path), source=str(empty_clip), pin_factory=factory)
    assert len(calls) == 1, "raised on the first frame, not counted as a frame error"
    assert on_time(factory.pin(RELAY)) < SLACK


@pytest.fixture()
def empty_clip(tmp_path: Path) -> Path:
    import cv2

    clip = tmp_path / "clip"
    clip.mkdir()
    for i in range(40):
        cv2.imwrite(str(clip / f"frame_{i:04d}.png"), np.full((120, 160, 3), 110, np.uint8))
    return clip


# -- a stalled loop: the independent timer, systemd pings, the internal watchdog ---------------------------------------


def test_stalled_loop_cannot_hold_the_door_open_past_max_pulse(tmp_path: Path, factory: MockFactory) -> None:
    cfg = cfg_of(tmp_path, door={"driver": "gpiozero", "relay_pin": RELAY, "pulse_s": 0.2, "max_pulse_s": 0.4})
    stalled, release = threading.Event(), threading.Event()
    with open_door(cfg.door, pin_factory=factory) as door:

        def stage(n: int) -> None:
            if n == 2:
                door.pulse(999)  # asks for far more than max_pulse_s
                stalled.set()
                release.wait(10)  # the main thread is stuck inside process()

        loop = fake_loop(cfg, door, stage, frames=4)
        runner = threading.Thread(target=loop.run, kwargs={"frame_timeout_s": 0.01})
        runner.start()
        try:
            assert stalled.wait(5)
            assert wait_until(lambda: not door.unlocked, timeout=0.4 + 2 * SLACK)
            assert runner.is_alive() and not release.is_set(), "the loop is still stalled, yet the relay is off"
            pin = factory.pin(RELAY)
            assert 0.4 - 0.05 <= on_time(pin) < 0.4 + SLACK
        finally:
            release.set()
            runner.join(10)


def test_a_stalled_loop_stops_pinging_the_systemd_watchdog(tmp_path: Path, factory: MockFactory) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify.sock"))
    listener.settimeout(0.02)
    got: list[tuple[float, bytes]] = []
    stalled, release = threading.Event(), threading.Event()
    cfg = cfg_of(tmp_path)

    def stage(n: int) -> None:
        if n == 20:
            stalled.set()
            release.wait(10)

    def pump(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with contextlib.suppress(TimeoutError):
                got.append((time.monotonic(), listener.recv(256)))

    with open_door(cfg.door, pin_factory=factory) as door:
        notifier = Notifier(str(tmp_path / "notify.sock"), watchdog_usec="40000")  # a ping every 20 ms
        loop = fake_loop(cfg, door, stage, frames=40, notifier=notifier)
        runner = threading.Thread(target=loop.run, kwargs={"frame_timeout_s": 0.01})
        runner.start()
        try:
            while not stalled.is_set() and runner.is_alive():
                pump(0.01)
            t_stall = time.monotonic()
            pump(0.6)
            during = [m for t, m in got if t > t_stall + 0.1 and m == b"WATCHDOG=1"]
            before = [m for t, m in got if t <= t_stall and m == b"WATCHDOG=1"]
            release.set()
            pump(0.3)
            after = [m for t, m in got if t > t_stall + 0.6 and m == b"WATCHDOG=1"]
        finally:
            release.set()
            runner.join(10)
            notifier.close()
            listener.close()
    assert len(before) >= 2, "the running loop pings"
    assert during == [], "no thread pings for a stalled loop"
    assert after, "pings resume once the loop makes progress"


class FakeRelay:
    def __init__(self) -> None:
        self.forced: list[float] = []

    def force_off(self, timeout_s: float = 1.0) -> bool:
        self.forced.append(timeout_s)
        return True


def test_watchdog_fires_once_on_a_stale_heartbeat_and_never_on_a_fresh_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    relay, exits = FakeRelay(), list[int]()
    beat = [time.monotonic()]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "n.sock"))
    notifier = Notifier(str(tmp_path / "n.sock"))
    assert notifier.send("STATUS=ok") is True
    dog = Watchdog(lambda: beat[0], relay, 0.3, notifier=notifier, on_stall=exits.append, poll_s=0.02)
    with dog:
        end = time.monotonic() + 0.8
        while time.monotonic() < end:  # a live loop: the heartbeat keeps moving
            beat[0] = time.monotonic()
            time.sleep(0.02)
        assert exits == [] and relay.forced == []
        assert wait_until(lambda: bool(exits), timeout=2.0)  # now it stalls
        time.sleep(0.1)
    assert exits == [ExitCode.WATCHDOG] == [15] and relay.forced
    assert notifier.send("WATCHDOG=1") is False, "silenced"
    notifier.close()
    listener.close()
    msgs = [r.getMessage() for r in caplog.records if r.name == "kiosk.door.watchdog"]
    assert len(msgs) == 1 and "no progress" in msgs[0] and "relay off, exiting 15 (WATCHDOG)" in msgs[0]


class IdleCamera(FakeCamera):
    """A live camera with nobody in front of it half the time: every other latest() waits and returns None."""

    def latest(self, timeout: float) -> Frame | None:
        self.index += 1
        if self.index % 2:
            time.sleep(timeout)
            return None
        return Frame(WALL, self.index, time.monotonic())

    def status(self) -> dict[str, Any]:
        return {"state": "ok", "source": "fake"}


def test_a_healthy_loop_keeps_the_watchdog_quiet_with_or_without_frames(tmp_path: Path, factory: MockFactory) -> None:
    cfg = cfg_of(tmp_path)
    exits: list[int] = []
    with open_door(cfg.door, pin_factory=factory) as door:
        loop = DoorLoop(fake_pipeline(cfg, lambda n: None), None, IdleCamera(), door)
        runner = threading.Thread(target=loop.run, kwargs={"frame_timeout_s": 0.1})
        with Watchdog(lambda: loop.heartbeat, door, 0.3, on_stall=exits.append, poll_s=0.02):
            runner.start()
            time.sleep(1.5)  # five times the limit, half of it in iterations without a frame
            loop.stop()
            runner.join(5)
    assert exits == [], "the heartbeat moves on every iteration"
    assert loop.camera.index >= 8


def test_force_off_does_not_wait_for_a_relay_lock_held_by_the_stalled_thread(
    tmp_path: Path, factory: MockFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = cfg_of(tmp_path)
    held, release = threading.Event(), threading.Event()
    with open_door(cfg.door, pin_factory=factory) as door:
        assert isinstance(door, RelayDoor)
        door.pulse()

        def stuck_in_the_driver() -> None:
            with door._lock:  # e.g. a GPIO write that never returns, inside pulse()
                held.set()
                release.wait(10)

        t = threading.Thread(target=stuck_in_the_driver)
        t.start()
        try:
            assert held.wait(5)
            started = time.monotonic()
            assert door.force_off(0.2) is True
            took = time.monotonic() - started
            assert not factory.pin(RELAY).state and not door.unlocked
            assert 0.2 <= took < 0.2 + SLACK
        finally:
            release.set()
            t.join(5)
        assert states(factory.pin(RELAY)) == [False, True, False]
    assert "relay lock still held after 0.2 s" in caplog.text


def test_run_kiosk_watchdog_locks_the_door_when_the_loop_stalls(
    tmp_path: Path, factory: MockFactory, monkeypatch: pytest.MonkeyPatch, empty_clip: Path
) -> None:
    """In-process, with the watchdog's exit replaced by a recorder: the wiring in run_kiosk."""
    import kiosk.door.watchdog

    exits: list[tuple[int, bool]] = []
    release = threading.Event()

    def fake_exit(code: int) -> None:
        exits.append((code, bool(factory.pin(RELAY).state)))
        release.set()

    monkeypatch.setattr(kiosk.door.watchdog, "_exit", fake_exit)

    def process(self: DoorLoop, frame: Frame) -> list[Decision]:
        if frame.index == 2:
            self.door.pulse()
            release.wait(30)  # stalled inside a stage
        return []

    monkeypatch.setattr(DoorLoop, "process", process)
    cfg = cfg_of(tmp_path, safety={"watchdog_s": 0.5})
    limit = watchdog_limit(cfg)
    assert limit == pytest.approx(0.5), "safety.watchdog_s, exactly"
    started = time.monotonic()
    run_kiosk(cfg, source=str(empty_clip), pin_factory=factory, max_frames=5, realtime=False)
    assert exits == [(ExitCode.WATCHDOG, False)], "relay already off when the watchdog exits"
    assert limit <= time.monotonic() - started < limit + 10
    pin = factory.pin(RELAY)
    assert limit - SLACK <= on_time(pin) < LONG, "locked by the watchdog, before the 5 s off-timer"


WATCHDOG_CHILD = textwrap.dedent(
    """
    import logging, os, sys, time
    from gpiozero import Device
    from kiosk.cli import main
    from kiosk.door.loop import DoorLoop

    cfg_path, record = sys.argv[1], sys.argv[2]
    fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def note(text):
        os.write(fd, (text + "\\n").encode())

    class PinAtWatchdog(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.CRITICAL:
                note(f"watchdog relay={bool(Device.pin_factory.pin(17).state)}")

    logging.getLogger("kiosk.door.watchdog").addHandler(PinAtWatchdog())

    def process(self, frame):
        if frame.index == 3:
            self.door.pulse()
            note(f"stall {time.monotonic()} relay={bool(Device.pin_factory.pin(17).state)}")
            time.sleep(3600)  # blocked forever, in native code
        return []

    DoorLoop.process = process
    sys.exit(main(["--config", cfg_path, "run", "--source", sys.argv[3]]))
    """
)


def test_watchdog_exits_15_with_the_relay_off_in_a_real_process(tmp_path: Path, empty_clip: Path) -> None:
    """The real os._exit path, through `kiosk run`: the loop blocks forever just after unlocking; the child must
    end by itself with WATCHDOG (15), the relay off when the watchdog acts, and no systemd ping after the stall."""
    cfg_file = tmp_path / "kiosk.yaml"
    cfg_file.write_text(
        f"data_dir: {tmp_path / 'data'}\n"
        f"door: {{driver: gpiozero, relay_pin: {RELAY}, pulse_s: {LONG}, max_pulse_s: {2 * LONG}}}\n"
        "gallery: {busy_timeout_s: 0.0}\nsafety: {watchdog_s: 1.0}\nliveness: {mode: 'off'}\n"
        "camera: {loop_replay: true}\n"
    )
    sock_path = tmp_path / "n.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(sock_path))
    listener.settimeout(0.05)
    record = tmp_path / "record.txt"
    env = dict(os.environ, GPIOZERO_PIN_FACTORY="mock", NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="100000")
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", WATCHDOG_CHILD, str(cfg_file), str(record), str(empty_clip)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    got: list[tuple[float, bytes]] = []
    try:
        while proc.poll() is None and time.monotonic() - started < 60:
            with contextlib.suppress(TimeoutError):
                got.append((time.monotonic(), listener.recv(256)))
        took = time.monotonic() - started
        assert proc.poll() is not None, "the watchdog did not end the process"
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        listener.close()
    assert proc.returncode == ExitCode.WATCHDOG == 15, err.decode()
    lines = record.read_text().splitlines()
    assert lines[0].startswith("stall ") and lines[0].endswith("relay=True"), lines
    assert lines[1:] == ["watchdog relay=False"], "the relay was off when the watchdog logged, before exiting"
    t_stall = float(lines[0].split()[1])
    assert b"watchdog: frame loop made no progress" in err
    pings = [t for t, m in got if m == b"WATCHDOG=1"]
    assert any(t < t_stall for t in pings), "the loop pinged while it ran"
    assert not [t for t in pings if t > t_stall + 0.05], "no ping after the loop stalled"
    assert not [m for _, m in got if m.startswith(b"STOPPING")], "silenced: no orderly-stop message"
    assert took < 30


# -- signals, thread crashes, exits ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT], ids=lambda s: s.name)
def test_signals_lock_the_door_at_once_and_stop_gracefully(
    tmp_path: Path,
    factory: MockFactory,
    monkeypatch: pytest.MonkeyPatch,
    empty_clip: Path,
    sig: signal.Signals,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kiosk.run")
    relay_during_stage: list[bool] = []
    seen: list[int] = []

    def process(self: DoorLoop, frame: Frame) -> list[Decision]:
        seen.append(frame.index)
        if frame.index == 2:
            self.door.pulse()
            os.kill(os.getpid(), sig)  # delivered to this (main) thread while the stage is still running
            end = time.monotonic() + 2
            while not self.stop_event.is_set() and time.monotonic() < end:
                time.sleep(0.01)
            relay_during_stage.append(bool(factory.pin(RELAY).state))
        return []

    monkeypatch.setattr(DoorLoop, "process", process)
    previous = signal.getsignal(sig)
    run_kiosk(cfg_of(tmp_path), source=str(empty_clip), pin_factory=factory, realtime=False)
    assert relay_during_stage == [False], "the handler itself locked the door, before the loop unwound"
    assert seen == [0, 1, 2], "stopped gracefully after the current frame"
    assert on_time(factory.pin(RELAY)) < SLACK
    assert f"received {sig.name}: stopping" in caplog.messages
    assert signal.getsignal(sig) is previous, "handlers restored"


def test_signal_in_the_middle_of_pulse_never_leaves_the_relay_on(tmp_path: Path, factory: MockFactory) -> None:
    """A handler that runs inside pulse() (after the timer started, before or after the pin write) must win."""
    cfg = cfg_of(tmp_path)
    for where in ("before the write", "after the write"):
        with open_door(cfg.door, pin_factory=factory) as door:
            assert isinstance(door, RelayDoor)
            real_write = door._write

            def write(on: bool, detail: str, where: str = where, real: Any = real_write, d: Any = door) -> None:
                if on and where == "before the write":
                    d.force_off(1.0)  # what the signal handler does, re-entering the RLock
                real(on, detail)
                if on and where == "after the write":
                    d.force_off(1.0)

            door._write = write
            door.pulse()
            assert not door.unlocked and not factory.pin(RELAY).state, where
            door._write = real_write
        factory.reset()


def test_a_crashed_thread_locks_the_door_and_stops_the_loop(
    tmp_path: Path,
    factory: MockFactory,
    monkeypatch: pytest.MonkeyPatch,
    empty_clip: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hook_before = threading.excepthook

    def process(self: DoorLoop, frame: Frame) -> list[Decision]:
        if frame.index == 2:
            self.door.pulse()

            def helper() -> None:
                raise OSError("I2C bus gone")

            t = threading.Thread(target=helper, name="display")
            t.start()
            t.join()
        return []

    monkeypatch.setattr(DoorLoop, "process", process)
    with pytest.raises(ThreadCrashedError, match=r"thread 'display' died \(OSError: I2C bus gone\)"):
        run_kiosk(cfg_of(tmp_path), source=str(empty_clip), pin_factory=factory, realtime=False)
    assert on_time(factory.pin(RELAY)) < SLACK
    assert any("thread 'display' died" in m and "relay off" in m for m in caplog.messages)
    assert threading.excepthook is hook_before, "hook restored"


EXIT_CHILD = textwrap.dedent(
    """
    import atexit, sys
    from gpiozero.pins.mock import MockFactory
    from kiosk.config import DoorConfig
    from kiosk.door.relay import open_door
    from kiosk.door.service import _fail_secure_hooks

    factory = MockFactory()
    pin = factory.pin(17)
    atexit.register(lambda: print([(round(float(s.timestamp), 3), bool(s.state)) for s in pin.states], flush=True))
    door = open_door(DoorConfig(driver="gpiozero", relay_pin=17, pulse_s=5.0, max_pulse_s=10.0), pin_factory=factory)
    hooks = _fail_secure_hooks(door, lambda: None, [])
    hooks.__enter__()  # never left: only the exit hooks can lock the door now
    door.pulse()
    sys.exit(int(sys.argv[1]))
    """
)


def test_interpreter_exit_locks_the_door_without_waiting_for_the_off_timer() -> None:
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", EXIT_CHILD, "3"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 3, out.stderr
    timeline = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert [s for _, s in timeline] == [False, True, False]
    assert timeline[-1][0] < 1.0, f"locked at exit, not by the 5 s timer: {timeline}"
    assert time.monotonic() - started < 30


ABORT_CHILD = textwrap.dedent(
    """
    import os, signal
    from gpiozero.pins.mock import MockFactory
    from kiosk.config import DoorConfig
    from kiosk.door.relay import open_door
    from kiosk.door.service import _fail_secure_hooks

    factory = MockFactory()
    door = open_door(DoorConfig(driver="gpiozero", relay_pin=17, pulse_s=5.0, max_pulse_s=10.0), pin_factory=factory)
    with _fail_secure_hooks(door, lambda: None, []):
        door.pulse()
        print("pulsed", flush=True)
        os.kill(os.getpid(), signal.SIGABRT)  # what abort() in a native library does
    """
)


def test_sigabrt_cannot_be_caught_so_the_stacks_go_to_the_journal_and_door_off_follows(tmp_path: Path) -> None:
    """SIGABRT (abort() in native code) ends the process whatever Python does: no handler can lock the door, so
    the guarantee is systemd's ExecStopPost=kiosk door off (below) and the next start driving the relay off.
    faulthandler, enabled while the loop runs, leaves the Python stacks in the journal."""
    out = subprocess.run([sys.executable, "-c", ABORT_CHILD], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == -signal.SIGABRT
    assert out.stdout.strip() == "pulsed"
    assert "Fatal Python error: Aborted" in out.stderr and "Current thread" in out.stderr
    code, stdout, _ = door_off(tmp_path, broken=False)
    assert code == 0 and "relay off (locked)" in stdout


# -- kiosk door off (ExecStopPost=) with the gallery and models broken -------------------------------------------------


def door_off(tmp_path: Path, broken: bool) -> tuple[int, str, str]:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True, mode=0o700)
    cfg_file = tmp_path / "door.yaml"
    text = f"data_dir: {data}\ndoor: {{driver: gpiozero, relay_pin: {RELAY}, pin_factory: mock}}\n"
    if broken:
        (data / "gallery.db").write_bytes(b"this is not a database" * 100)
        text += f"models: {{manifest: {tmp_path / 'no-such-manifest.yaml'}}}\n"
    cfg_file.write_text(text)
    out = subprocess.run(
        [sys.executable, "-m", "kiosk", "--config", str(cfg_file), "door", "off"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    return out.returncode, out.stdout, out.stderr


def test_door_off_needs_neither_the_gallery_nor_the_models(tmp_path: Path) -> None:
    code, out, err = door_off(tmp_path, broken=True)
    assert code == 0, err
    assert "door: relay off (locked), driver gpiozero (mock), relay pin 17" in out
    assert (tmp_path / "data" / "gallery.db").read_bytes() == b"this is not a database" * 100, "not even opened"


# -- start-up failures leave the relay off -----------------------------------------------------------------------------


def _bad_model(tmp_path: Path) -> dict[str, object]:
    manifest = ROOT / "models" / "manifest.yaml"
    models = tmp_path / "models"
    models.mkdir()
    for f in (ROOT / "models").iterdir():
        if f.name != "yunet_2023mar.onnx":
            (models / f.name).symlink_to(f)
    blob = bytearray((ROOT / "models" / "yunet_2023mar.onnx").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (models / "yunet_2023mar.onnx").write_bytes(bytes(blob))
    (models / "manifest.yaml").unlink()
    (models / "manifest.yaml").write_text(manifest.read_text())
    return {"models": {"manifest": str(models / "manifest.yaml")}}


def _bad_gallery(tmp_path: Path) -> dict[str, object]:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "gallery.db").write_bytes(b"\x00garbage, not SQLite" * 500)
    (data / "gallery.db").chmod(0o600)
    return {}


@pytest.mark.parametrize(
    ("broken", "error"),
    [(_bad_model, ModelError), (_bad_gallery, GalleryError)],
    ids=["altered model", "corrupt gallery"],
)
def test_a_failed_start_never_energises_the_relay(
    tmp_path: Path,
    factory: MockFactory,
    empty_clip: Path,
    broken: Callable[[Path], dict[str, object]],
    error: type[KioskError],
) -> None:
    pin = factory.pin(RELAY)
    pin.output_with_state(True)  # a crashed run left the strike released
    pin.clear_states()
    cfg = cfg_of(tmp_path, **broken(tmp_path))
    with pytest.raises(error):
        run_kiosk(cfg, source=str(empty_clip), pin_factory=factory)
    assert states(pin) == [True, False], "driven off first thing at start, never on again"
