"""Faults survived (issue #6, part 1), each injected into a running kiosk: camera unplugged or stalled, gallery locked
by another writer, disk full while writing events, kill -9 in the middle of an enrolment, a model file altered, the
system clock jumping a day either way.

Recognition runs on the real models and real LFW photos (``faces_dir``); the relay is gpiozero's MockFactory, whose
pin history is on time.monotonic. Frames are either fed to ``DoorLoop.process`` with their capture times (exact and
independent of this machine's speed) or delivered by a scripted live source through the real ``Camera`` thread.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from kiosk.cli import main
from kiosk.config import Config, parse_config
from kiosk.context import Context
from kiosk.door.camera import Camera, Frame
from kiosk.door.decide import Decision
from kiosk.door.loop import DoorLoop
from kiosk.door.relay import open_door
from kiosk.door.watchdog import Watchdog
from kiosk.enroll import enroll
from kiosk.errors import ExitCode, GalleryError, HardwareError
from kiosk.gallery import Gallery, TemplateIn
from kiosk.testing import ManualClock, ScriptedSource, ScriptItem
from kiosk.types import Image
from tests.helpers import wait_until

gpiozero = pytest.importorskip("gpiozero", reason="gpiozero (dev extra) is needed for the mock relay")
from gpiozero import Device  # noqa: E402
from gpiozero.pins.mock import MockFactory, MockPin  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
W, H = 640, 480
RELAY = 17
PULSE_S = 0.3
SLACK = 0.5
FPS = 10.0


def cfg_of(tmp_path: Path, **sections: dict[str, object]) -> Config:
    data: dict[str, object] = {
        "data_dir": str(tmp_path / "data"),
        "door": {"driver": "gpiozero", "relay_pin": RELAY, "pulse_s": PULSE_S, "max_pulse_s": 1.0},
        "decision": {"frames_needed": 3, "window": 5, "cooldown_s": 0.0, "track_max_age_s": 0.4},
        "camera": {"stall_timeout_s": 0.3, "reconnect_min_s": 0.05, "reconnect_max_s": 0.2},
        "gallery": {"busy_timeout_s": 0.2},
        "liveness": {"mode": "off"},  # still photos: liveness has its own tests
    }
    data.update(sections)
    return parse_config(data)


def scene(photo: Image | None, i: int = 0) -> Image:
    canvas = np.full((H, W, 3), 110, np.uint8)
    if photo is None:
        return canvas
    img = cv2.resize(photo, None, fx=1.4, fy=1.4)
    h, w = img.shape[:2]
    x, y = (W - w) // 2 + (i % 5), (H - h) // 2
    canvas[y : y + h, x : x + w] = img
    return canvas


@pytest.fixture()
def photos(faces_dir: Path) -> dict[str, Path]:
    lfw = faces_dir / "lfw" / "images"
    colin = sorted((lfw / "Colin_Powell").glob("*.jpg"))
    return {
        "enrol1": colin[0],
        "enrol2": colin[1],
        "colin": colin[3],
        "stranger": lfw / "Abel_Pacheco/Abel_Pacheco_0001.jpg",
    }


def states(pin: MockPin) -> list[bool]:
    return [bool(s.state) for s in pin.states]


def enrolled(cfg: Config, photos: dict[str, Path]) -> Context:
    ctx = Context(cfg)
    enroll(ctx.pipeline, ctx.gallery, "Colin Powell", [photos["enrol1"], photos["enrol2"]])
    return ctx


class Feeder:
    """Feeds ``DoorLoop.process`` frames at 10 fps of capture time: a person for ``n`` frames, then empty wall long
    enough for the track to end."""

    def __init__(self, loop: DoorLoop) -> None:
        self.loop, self.i = loop, 0

    def show(self, photo: Image | None, n: int) -> list[Decision]:
        out: list[Decision] = []
        for k in range(n):
            out += self.loop.process_contained(Frame(scene(photo, k), self.i, 100.0 + self.i / FPS))
            self.i += 1
        return out

    def visit(self, photo: Image) -> list[Decision]:
        return self.show(photo, 8) + self.show(None, 6)


# -- camera unplugged or stalled -----------------------------------------------------------------------------------


class CameraView:
    """What a live camera sees, switched by the test between ``wall``, ``face`` and ``down`` (``how`` it is down:
    unplugged, open and read raise; stalled, read returns nothing), as the script of a ``ScriptedSource``."""

    def __init__(self, face: Image, how: str) -> None:
        self.face, self.how, self.mode, self.n = face, how, "wall", 0
        self.tries_while_down = 0

    def frames(self) -> Iterator[ScriptItem]:
        while True:
            if self.mode == "down":
                self.tries_while_down += 1
                yield HardwareError("read failed (device gone)") if self.how == "unplugged" else None
            else:
                self.n += 1
                yield scene(self.face if self.mode == "face" else None, self.n)

    def opens(self) -> Iterator[bool | BaseException]:
        while True:
            if self.mode == "down" and self.how == "unplugged":
                self.tries_while_down += 1
                yield HardwareError("cannot open /dev/video0: no such device")
            else:
                yield True

    def source(self) -> ScriptedSource:
        """The camera: each read takes 0.04 s, then shows what the view is at that moment."""
        return ScriptedSource(self.frames(), name="scripted", live=True, opens=self.opens(), read_delay_s=0.04)


def run_scripted(loop: DoorLoop, camera: Camera, script: Callable[[], None]) -> None:
    """Run the loop in this thread (SQLite objects stay in their thread, as in run_kiosk) while ``script`` drives
    the scene from another; the loop stops when the script ends, and the script's failure is raised here."""
    failure: list[BaseException] = []

    def drive() -> None:
        try:
            script()
        except BaseException as exc:
            failure.append(exc)
        finally:
            loop.stop()

    camera.start()
    driver = threading.Thread(target=drive, name="script")
    driver.start()
    try:
        loop.run()
    finally:
        loop.stop()
        driver.join(60)
        camera.close()
    if failure:
        raise failure[0]


@pytest.mark.parametrize("how", ["unplugged", "stalled"])
def test_camera_down_keeps_the_loop_running_door_locked_then_recognises(
    tmp_path: Path, photos: dict[str, Path], factory: MockFactory, how: str
) -> None:
    cfg = cfg_of(tmp_path)
    view = CameraView(cv2.imread(str(photos["colin"])), how)
    decisions: list[Decision] = []
    with enrolled(cfg, photos) as ctx, open_door(cfg.door, pin_factory=factory) as door:
        camera = Camera(view.source(), cfg.camera)
        loop = DoorLoop(ctx.pipeline, ctx.gallery, camera, door, on_decision=lambda d, _: decisions.append(d))

        def script() -> None:
            assert wait_until(lambda: loop.stats.frames >= 5, 20)
            view.mode = "down"
            assert wait_until(lambda: camera.status()["state"] == "reconnecting", 10)
            time.sleep(0.3)  # a frame taken just before the loss may still be in process()
            frames, beat = loop.stats.frames, loop.heartbeat
            time.sleep(1.0)
            assert loop.heartbeat > beat + 0.5, "the loop keeps iterating"
            assert loop.stats.frames == frames, "no frame while the camera is down"
            assert view.tries_while_down >= 2, "and the camera thread keeps trying"
            assert states(factory.pin(RELAY)) == [False], "locked all along"
            view.mode = "face"
            assert wait_until(lambda: bool(decisions), 20)

        run_scripted(loop, camera, script)
        assert wait_until(lambda: not door.unlocked, 2)
    assert camera.status()["reconnects"] >= 1
    assert [(d.outcome, d.name) for d in decisions] == [("granted", "Colin Powell")]
    assert states(factory.pin(RELAY)) == [False, True, False]


# -- gallery locked by another writer; disk full ------------------------------------------------------------------


def error_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "kiosk.door.loop" and r.levelno >= logging.ERROR]


def test_gallery_locked_by_another_writer(
    tmp_path: Path, photos: dict[str, Path], factory: MockFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = cfg_of(tmp_path)
    colin = cv2.imread(str(photos["colin"]))
    now = ManualClock(1000.0)
    with enrolled(cfg, photos) as ctx, open_door(cfg.door, pin_factory=factory) as door:
        loop = DoorLoop(ctx.pipeline, ctx.gallery, None, door, clock=now)
        feed = Feeder(loop)
        events_before = len([e for e in ctx.gallery.events() if e["kind"] == "access"])
        other = sqlite3.connect(cfg.gallery_path, timeout=0, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # another writer holds the lock far longer than busy_timeout_s
        try:
            first = feed.visit(colin) + feed.visit(colin)
            assert len(error_lines(caplog)) == 1, "one line per interval, not one per failed write"
            now.advance(61)  # the next interval
            second = feed.visit(colin)
            assert len(error_lines(caplog)) == 2
        finally:
            other.execute("ROLLBACK")
            other.close()
        third = feed.visit(colin)
        events = [e for e in ctx.gallery.events() if e["kind"] == "access"]
    assert [d.outcome for d in first + second + third] == ["granted"] * 4, "the loop kept deciding"
    assert loop.stats.pulses == 4 and states(factory.pin(RELAY))[-1] is False
    assert "is locked by another process" in error_lines(caplog)[0] and "decisions continue" in error_lines(caplog)[0]
    # Nothing is lost: the three decisions made while locked were kept and written, in order, once released.
    assert len(events) - events_before == 4 and [e["outcome"] for e in events[-4:]] == ["granted"] * 4


def test_disk_full_while_writing_events(
    tmp_path: Path, photos: dict[str, Path], factory: MockFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLITE_FULL for real: ``PRAGMA max_page_count`` on the loop's own connection caps the file where it stands,
    then small rows fill the last free space; every later event write fails with 'database or disk is full'."""
    cfg = cfg_of(tmp_path)
    colin = cv2.imread(str(photos["colin"]))
    with enrolled(cfg, photos) as ctx, open_door(cfg.door, pin_factory=factory) as door:
        gallery = ctx.gallery
        gallery.add_event("access", "denied", person_name=None, detail={"note": "before the fault"})
        before = {"people": [p.name for p in gallery.list_people()], "events": gallery.events()}
        before["templates"] = gallery.person_templates("Colin Powell")
        conn = gallery._db.conn
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        assert conn.execute(f"PRAGMA max_page_count = {pages}").fetchone()[0] == pages
        fillers = 0
        with pytest.raises(GalleryError, match="database or disk is full"):
            while fillers < 10_000:
                gallery.add_event("x", "y")
                fillers += 1
        loop = DoorLoop(ctx.pipeline, gallery, None, door)
        feed = Feeder(loop)
        decisions = feed.visit(colin) + feed.visit(colin) + feed.visit(colin)
    assert [d.outcome for d in decisions] == ["granted"] * 3, "the door still opens for an enrolled person"
    assert loop.stats.pulses == 3
    lines = error_lines(caplog)
    assert len(lines) == 1 and "database or disk is full" in lines[0], lines
    with Gallery(cfg.gallery_path) as g:  # a fresh connection, no page cap: what is on disk
        assert g.integrity_check() == []
        assert [p.name for p in g.list_people()] == before["people"]
        assert g.person_templates("Colin Powell") == before["templates"]
        events = g.events()
        assert events[: len(before["events"])] == before["events"], "nothing stored before the fault was lost"
        assert len(events) == len(before["events"]) + fillers, "no access event got in while full"


# -- kill -9 in the middle of an enrolment --------------------------------------------------------------------------

ENROL_CHILD = textwrap.dedent(
    """
    import sys, time
    from collections.abc import Sequence
    import numpy as np
    from kiosk.gallery import Gallery, TemplateIn

    path, n, stop_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    def template(i):
        v = np.random.default_rng(i).normal(size=128).astype(np.float32)
        return TemplateIn(v / np.linalg.norm(v), "test-model", "0" * 64, 0.9, f"photo {i}")

    def pause(i):
        print(f"inside {i}", flush=True)  # the parent kills us now, inside the write transaction
        time.sleep(60)

    class Templates(Sequence):
        def __len__(self):
            return n
        def __getitem__(self, i):
            return template(i)
        def __iter__(self):
            for i in range(n):
                if i == stop_at:
                    pause(i)
                yield template(i)
            if stop_at == n:
                pause(n)

    with Gallery(path) as g:
        g.enroll("Victim", Templates())
    print("done", flush=True)
    """
)
N_TEMPLATES = 20


def _template(i: int) -> TemplateIn:
    v = np.random.default_rng(1000 + i).normal(size=128).astype(np.float32)
    return TemplateIn(v / np.linalg.norm(v), "test-model", "0" * 64, 0.9, f"survivor {i}")


def test_kill_9_in_the_middle_of_an_enrolment_leaves_all_or_nothing(tmp_path: Path) -> None:
    path = tmp_path / "gallery.db"
    with Gallery(path) as g:
        g.enroll("Survivor", [_template(i) for i in range(3)])
        g.add_event("access", "granted", person_name="Survivor")
        events_before = g.events()
    for stop_at in (0, 7, N_TEMPLATES):  # after the person row, mid-way, after the last template (before COMMIT)
        proc = subprocess.Popen(
            [sys.executable, "-c", ENROL_CHILD, str(path), str(N_TEMPLATES), str(stop_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line == f"inside {stop_at}", proc.stderr.read() if proc.stderr else line
            probe = sqlite3.connect(path, timeout=0)
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                probe.execute("BEGIN IMMEDIATE")  # proof: the child is inside its write transaction
            probe.close()
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        with Gallery(path) as g:
            assert g.integrity_check() == [], stop_at
            assert [p.name for p in g.list_people()] == ["Survivor"], f"partial person after a kill at {stop_at}"
            assert sum(g.person_templates("Survivor").values()) == 3
            assert g.events() == events_before
            assert g._rows("SELECT count(*) AS n FROM templates")[0]["n"] == 3, "no orphan templates"
    # The control: left alone, the same child stores the whole person (so the checks above can see one).
    done = subprocess.run(
        [sys.executable, "-c", ENROL_CHILD, str(path), str(N_TEMPLATES), "-1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.stdout.strip() == "done", done.stderr
    with Gallery(path) as g:
        assert g.integrity_check() == []
        assert sorted(p.name for p in g.list_people()) == ["Survivor", "Victim"]
        assert sum(g.person_templates("Victim").values()) == N_TEMPLATES


# -- a model file altered ----------------------------------------------------------------------------------------------


def test_altered_model_refuses_to_start_with_exit_model_and_the_relay_never_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for f in (ROOT / "models").iterdir():
        if f.suffix in (".onnx", ".tflite") and f.name != "sface_2021dec.onnx":
            (models / f.name).symlink_to(f)
    blob = bytearray((ROOT / "models" / "sface_2021dec.onnx").read_bytes())
    blob[len(blob) // 3] ^= 0x01  # one bit of one weight
    (models / "sface_2021dec.onnx").write_bytes(bytes(blob))
    (models / "manifest.yaml").write_text((ROOT / "models" / "manifest.yaml").read_text())
    clip = tmp_path / "clip"
    clip.mkdir()
    cv2.imwrite(str(clip / "frame_0000.png"), scene(None))
    cfg_file = tmp_path / "kiosk.yaml"
    cfg_file.write_text(
        f"data_dir: {tmp_path / 'data'}\nmodels: {{manifest: {models / 'manifest.yaml'}}}\n"
        f"door: {{driver: gpiozero, relay_pin: {RELAY}}}\nliveness: {{mode: 'off'}}\n"
    )
    factory = MockFactory()
    monkeypatch.setattr(Device, "pin_factory", factory)  # gpiozero's default factory: what `kiosk run` will use
    pin = factory.pin(RELAY)
    pin.output_with_state(True)  # left on by whatever ran before
    pin.clear_states()
    try:
        code = main(["--config", str(cfg_file), "run", "--source", str(clip)])
    finally:
        factory.close()
    err = capsys.readouterr().err
    assert code == ExitCode.MODEL == 4, err
    assert "sface" in err and "sha256" in err
    assert states(pin) == [True, False], "driven off at start, never energised"


# -- the system clock jumps ----------------------------------------------------------------------------------------


class Jumpy:
    """time.time() and datetime.now() shifted by ``offset`` seconds (NTP step, RTC battery, a hand-set clock)."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.real = time.time

    def time(self) -> float:
        return self.real() + self.offset

    def datetime(self) -> type[datetime]:
        jumpy = self

        class JumpyDatetime(datetime):
            @classmethod
            def now(cls, tz: Any = None) -> Any:
                return datetime.now(tz) + timedelta(seconds=jumpy.offset)

        return JumpyDatetime


@pytest.mark.slow
def test_clock_jumps_change_no_cooldown_pulse_or_watchdog(
    tmp_path: Path, photos: dict[str, Path], factory: MockFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the real Camera thread and DoorLoop.run: Colin is let in, leaves, the wall clock jumps a day forward
    and he comes back (cooldown 60 s must hold), then it jumps two days back and he comes back again (still held).
    One pulse of pulse_s in all, and a watchdog that never fires."""
    import kiosk.gallery

    jumpy = Jumpy()
    monkeypatch.setattr(time, "time", jumpy.time)
    monkeypatch.setattr(kiosk.gallery, "datetime", jumpy.datetime())
    cfg = cfg_of(tmp_path, decision={"frames_needed": 3, "window": 5, "cooldown_s": 60.0, "track_max_age_s": 0.4})
    view = CameraView(cv2.imread(str(photos["colin"])), "stalled")
    decisions: list[Decision] = []
    fired: list[int] = []
    with enrolled(cfg, photos) as ctx, open_door(cfg.door, pin_factory=factory) as door:
        camera = Camera(view.source(), cfg.camera)
        loop = DoorLoop(ctx.pipeline, ctx.gallery, camera, door, on_decision=lambda d, _: decisions.append(d))

        def script() -> None:
            view.mode = "face"
            assert wait_until(lambda: bool(decisions), 20)
            for offset in (86400.0, -86400.0):
                view.mode = "wall"
                time.sleep(0.8)  # the track ends
                jumpy.offset = offset
                view.mode = "face"
                seen = loop.stats.embeddings
                assert wait_until(lambda seen=seen: loop.stats.embeddings >= seen + 6, 20), "he was looked at again"

        with Watchdog(lambda: loop.heartbeat, door, 1.5, on_stall=fired.append, poll_s=0.05):
            run_scripted(loop, camera, script)
        assert wait_until(lambda: not door.unlocked, 2)
        events = [e for e in ctx.gallery.events() if e["kind"] == "access"]
    assert [(d.outcome, d.name) for d in decisions] == [("granted", "Colin Powell")], "the cooldown held both ways"
    pin = factory.pin(RELAY)
    assert states(pin) == [False, True, False]
    assert PULSE_S - 0.05 <= float(pin.states[2].timestamp) < PULSE_S + SLACK
    assert fired == [], "the watchdog measures real progress, not the wall clock"
    assert len(events) == 1


def test_watchdog_still_catches_a_stall_after_the_clock_jumps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    jumpy = Jumpy()
    monkeypatch.setattr(time, "time", jumpy.time)

    class Relay:
        def force_off(self, timeout_s: float = 1.0) -> bool:
            return True

    fired: list[int] = []
    beat = time.monotonic()
    with Watchdog(lambda: beat, Relay(), 0.3, on_stall=fired.append, poll_s=0.02):
        jumpy.offset = -86400.0  # had it used time.time(), the heartbeat would now be a day in the future
        assert wait_until(lambda: bool(fired), 3)
    fired.clear()
    beat = time.monotonic()
    with Watchdog(lambda: beat, Relay(), 0.6, on_stall=fired.append, poll_s=0.02):
        jumpy.offset = 86400.0  # and a day in the past here: it would fire at once
        time.sleep(0.3)
        assert fired == []
        beat = time.monotonic()


DURATION_MODULES = [
    "door/camera.py", "door/decide.py", "door/relay.py", "door/loop.py", "door/notify.py", "door/service.py",
    "door/track.py", "door/watchdog.py", "liveness",
]  # fmt: skip


def test_duration_code_never_reads_the_wall_clock() -> None:
    """The runtime test above cannot see a wall clock bound as a default argument at import time (``clock=time.time``
    is the real function, unpatched): so the modules that time cooldowns, pulses, tracks, challenges, reconnects and
    the watchdog are also checked for any use of it."""
    import re

    wall = re.compile(r"\btime\.time(_ns)?\b|\bdatetime\.(now|utcnow|today)\b|\bfrom time import\b.*\btime\b")
    hits = []
    for name in DURATION_MODULES:
        path = ROOT / "kiosk" / name
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            for n, line in enumerate(f.read_text().splitlines(), 1):
                if wall.search(line.split("#")[0]):
                    hits.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()}")
    assert hits == []
