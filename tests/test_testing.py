"""The fakes shipped in ``kiosk.testing`` (ScriptedSource, ManualClock, FlakyStage), alone and driving the real
``Camera`` and ``DoorLoop``, and the loop's ``decider=`` / ``on_frame=`` injection points they are used with."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest

from kiosk.config import CameraConfig, Config, parse_config
from kiosk.door.camera import Camera, Frame, FrameSource
from kiosk.door.decide import Decider
from kiosk.door.loop import DoorLoop
from kiosk.door.relay import open_door
from kiosk.errors import HardwareError, InputError
from kiosk.recognition.pipeline import Pipeline, Thresholds
from kiosk.testing import FlakyStage, ManualClock, ScriptedSource
from tests.helpers import no_new_threads

FAST = CameraConfig(stall_timeout_s=0.2, reconnect_min_s=0.01, reconnect_max_s=0.02, replay_realtime=False)


def img(value: int) -> np.ndarray:
    return np.full((4, 6, 3), value, np.uint8)


def value(image: np.ndarray | None) -> int | None:
    return None if image is None else int(image[0, 0, 0])


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    with no_new_threads(join_timeout=2.0):
        yield


# -- ManualClock -----------------------------------------------------------------------------------------------------


def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(1000.0)
    assert clock() == clock.now == 1000.0
    assert clock() == 1000.0, "reading it does not move it"
    assert clock.advance(0.5) == 1000.5 and clock() == 1000.5
    assert clock.advance(0) == 1000.5
    assert clock.advance_to(1002.0) == 1002.0
    assert clock.advance_to(1002.0) == 1002.0, "standing still is allowed"
    assert ManualClock()() == 0.0


@pytest.mark.parametrize("move", [lambda c: c.advance(-0.1), lambda c: c.advance_to(9.0), lambda c: c.sleep(-1)])
def test_manual_clock_never_goes_back(move: Any) -> None:
    clock = ManualClock(10.0)
    with pytest.raises(ValueError, match=r"cannot go back|non-negative"):
        move(clock)
    with pytest.raises(ValueError):
        clock.advance(math.nan)
    assert clock() == 10.0 and clock.sleeps == []


def test_manual_clock_sleep_advances_and_records() -> None:
    clock = ManualClock(5.0)
    clock.sleep(0.5)
    clock.sleep(2.0)
    clock.sleep(0)
    assert clock() == 7.5
    assert clock.sleeps == [0.5, 2.0, 0]


def test_manual_clock_is_safe_across_threads() -> None:
    clock = ManualClock()

    def tick() -> None:
        for _ in range(1000):
            clock.advance(1)

    threads = [threading.Thread(target=tick) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock() == 4000


def test_manual_clock_drives_a_door() -> None:
    """It is the clock type the doors, ``Camera`` and ``DoorLoop`` take: the simulated door's timeline is on it."""
    clock = ManualClock(100.0)
    cfg = parse_config({"door": {"driver": "simulated", "pulse_s": 0.05}})
    with open_door(cfg.door, clock=clock) as door:
        clock.advance(3.0)
        door.off()
    assert door.timeline[0][0] == 100.0


# -- ScriptedSource --------------------------------------------------------------------------------------------------


def test_scripted_source_is_a_frame_source() -> None:
    src: FrameSource = ScriptedSource([img(1)], name="door cam", fps=10.0)
    assert (src.name, src.live, src.ended, src.fps) == ("door cam", False, False, 10.0)
    assert ScriptedSource(live=True).live


def test_scripted_source_plays_frames_gaps_and_failures_then_ends() -> None:
    src = ScriptedSource([img(1), None, HardwareError("read failed (unplugged)"), img(2)])
    src.open()
    assert value(src.read()) == 1
    assert src.read() is None and not src.ended, "a gap: no frame now"
    with pytest.raises(HardwareError, match="unplugged"):
        src.read()
    assert value(src.read()) == 2
    assert src.read() is None and src.ended, "a replay ends when its script does"
    assert src.read() is None and src.ended
    assert src.frames == 2


def test_a_live_scripted_source_stalls_at_the_end() -> None:
    src = ScriptedSource([img(1)], live=True)
    src.open()
    assert value(src.read()) == 1
    assert [src.read(), src.read()] == [None, None] and not src.ended
    ended = ScriptedSource([], live=True, at_end="end")
    ended.open()
    assert ended.read() is None and ended.ended


def test_scripted_source_takes_iterators_image_stacks_and_files(tmp_path: Path) -> None:
    gen = ScriptedSource(img(v) for v in (3, 4))
    gen.open()
    assert [value(gen.read()), value(gen.read()), gen.read()] == [3, 4, None]
    stack = ScriptedSource(np.stack([img(5), img(6)]))  # an (N, H, W, 3) array is a sequence of frames
    stack.open()
    assert [value(stack.read()), value(stack.read())] == [5, 6]
    path = tmp_path / "f.png"
    assert cv2.imwrite(str(path), img(7))
    files = ScriptedSource([path, str(path), tmp_path / "missing.png"])
    files.open()
    assert value(files.read()) == value(files.read()) == 7
    with pytest.raises(InputError):
        files.read()


def test_one_script_continues_across_reopens_a_callable_restarts_per_open() -> None:
    along = ScriptedSource([img(1), img(2), img(3)])
    along.open()
    assert value(along.read()) == 1
    along.close()
    along.open()
    assert value(along.read()) == 2, "the camera continues where it was"

    per_open = ScriptedSource(lambda n: [img(10 * n), img(10 * n + 1)])
    per_open.open()
    assert [value(per_open.read()), value(per_open.read())] == [10, 11]
    per_open.close()
    per_open.open()
    assert value(per_open.read()) == 20, "a new connection starts its own script"
    assert (per_open.open_calls, per_open.close_calls) == (2, 1)


def test_scripted_opens_refuse_raise_and_stay_refused_past_the_list() -> None:
    src = ScriptedSource([img(1)], name="cam0", opens=[False, HardwareError("no such device"), True])
    with pytest.raises(HardwareError, match=r"^cannot open cam0: refused$"):
        src.open()
    with pytest.raises(HardwareError, match="no such device"):
        src.open()
    src.open()
    assert value(src.read()) == 1
    src.close()
    with pytest.raises(HardwareError, match="refused"):
        src.open()
    assert src.open_calls == 4


def test_read_needs_open_and_close_is_safe_twice() -> None:
    src = ScriptedSource([img(1)])
    src.close()
    with pytest.raises(HardwareError, match="scripted is not open"):
        src.read()
    src.open()
    src.close()
    src.close()
    with pytest.raises(HardwareError, match="not open"):
        src.read()
    assert src.close_calls == 3


def test_each_read_waits_read_delay_on_the_injected_sleep() -> None:
    clock = ManualClock()
    src = ScriptedSource([img(1), None], read_delay_s=0.1, sleep=clock.sleep)
    src.open()
    src.read()
    src.read()
    src.read()
    assert clock.sleeps == [0.1, 0.1, 0.1]


def test_the_real_camera_hands_out_a_scripted_replay_once_each_then_ends() -> None:
    clock = ManualClock(50.0)

    def script() -> Iterator[np.ndarray]:
        for v in range(20):
            clock.advance(0.1)
            yield img(v)

    with Camera(ScriptedSource(script()), FAST, clock=clock) as cam:
        frames = []
        while (f := cam.latest(2.0)) is not None:
            frames.append(f)
        assert cam.ended and cam.status()["state"] == "ended"
    assert [value(f.image) for f in frames] == list(range(20)), "lockstep: every frame once, in order"
    assert [f.t for f in frames] == pytest.approx([50.0 + 0.1 * (i + 1) for i in range(20)]), "stamped on the clock"


def test_the_real_camera_reconnects_a_scripted_unplug() -> None:
    src = ScriptedSource(
        lambda n: [img(n), None, None, HardwareError("read failed (unplugged)")],  # a frame, then unplugged
        live=True,
        opens=[True, False, True],
        read_delay_s=0.05,  # the consumer, already waiting, takes each frame before the loss makes it stale
    )
    with Camera(src, FAST) as cam:
        first, second = cam.latest(2.0), cam.latest(2.0)
        assert value(first.image if first else None) == 1
        assert value(second.image if second else None) == 3, "open 2 was refused, open 3 delivered"
        assert cam.status()["reconnects"] == 1
    assert src.close_calls >= 2


# -- FlakyStage ------------------------------------------------------------------------------------------------------


class Doubler:
    spec = "a spec"

    def __init__(self) -> None:
        self.seen: list[int] = []

    def run(self, x: int) -> int:
        self.seen.append(x)
        return 2 * x


def test_flaky_stage_fails_on_the_scheduled_calls_only() -> None:
    inner = Doubler()
    flaky = FlakyStage(inner, "run", {2, 3})
    stage = flaky.as_stage()
    assert stage is flaky
    assert stage.run(1) == 2
    for n in (2, 3):
        with pytest.raises(RuntimeError, match=rf"^injected fault in run \(call {n}\)$"):
            stage.run(5)
    assert stage.run(4) == 8
    assert inner.seen == [1, 4], "a failing call never reaches the stage"
    assert (flaky.calls, flaky.failures) == (4, 2)
    assert stage.spec == "a spec" and stage.seen is inner.seen, "everything else is the stage's own"


def test_flaky_stage_with_a_callable_schedule_and_error() -> None:
    calls: list[int] = []

    def every_other(n: int) -> bool:
        calls.append(n)
        return n % 2 == 0

    flaky = FlakyStage(Doubler(), "run", every_other, error=lambda n: HardwareError(f"gone at {n}"))
    results: list[int | str] = []
    for x in range(4):
        try:
            results.append(flaky.as_stage().run(x))
        except HardwareError as exc:
            results.append(str(exc))
    assert results == [0, "gone at 2", 4, "gone at 4"] and calls == [1, 2, 3, 4]


def test_a_schedule_may_raise_its_own_error() -> None:
    def injector(n: int) -> None:
        if n == 2:
            raise ValueError("injected by the schedule")

    flaky = FlakyStage(Doubler(), "run", injector)
    assert flaky.as_stage().run(1) == 2
    with pytest.raises(ValueError, match="injected by the schedule"):
        flaky.as_stage().run(1)
    assert (flaky.calls, flaky.failures) == (2, 1)


def test_flaky_stage_needs_a_real_method() -> None:
    with pytest.raises(TypeError, match="Doubler has no method 'detect'"):
        FlakyStage(Doubler(), "detect", {1})
    with pytest.raises(TypeError, match="no method 'spec'"):
        FlakyStage(Doubler(), "spec", {1})
    with pytest.raises(AttributeError):
        _ = FlakyStage(Doubler(), "run", {1}).missing


def test_flaky_detector_in_a_real_pipeline(pipeline: Pipeline, astronaut: np.ndarray) -> None:
    """A flaky stage stands in for the real detector: same spec and thresholds, the pipeline built as usual."""
    flaky = FlakyStage(pipeline.detector, "detect", {1})
    p = Pipeline(pipeline.cfg, flaky.as_stage(), pipeline.embedder, pipeline.template)
    assert (p.score_threshold, p.thresholds) == (pipeline.score_threshold, pipeline.thresholds)
    with pytest.raises(RuntimeError, match="injected fault in detect"):
        p.analyze(astronaut)
    assert len(p.analyze(astronaut)) == 1 and flaky.calls == 2


# -- the door loop's injection points, driven by the fakes -------------------------------------------------------------


def loop_cfg(tmp_path: Path) -> Config:
    return parse_config(
        {
            "data_dir": str(tmp_path / "data"),
            "door": {"driver": "simulated", "pulse_s": 0.05},
            "liveness": {"mode": "off"},
        }
    )


class NoFaces:
    """Enough of ``Pipeline`` for a loop that never sees a face."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        # The loop derives its decider's continuity allowance from the recogniser's thresholds.
        self.thresholds = Thresholds(accept=0.47, likely=0.36, duplicate=0.47)

    def detect(self, image: np.ndarray) -> list[Any]:
        return []


def test_default_decider_is_unchanged_and_an_injected_one_is_used_as_is(tmp_path: Path) -> None:
    cfg = loop_cfg(tmp_path)
    with open_door(cfg.door) as door:
        default = DoorLoop(NoFaces(cfg), None, None, door)
        assert type(default.decider) is Decider and default.on_frame is None
        mine = Decider(cfg.decision)
        assert DoorLoop(NoFaces(cfg), None, None, door, decider=mine).decider is mine


def test_on_frame_sees_every_processed_frame_and_not_a_failed_one(tmp_path: Path) -> None:
    cfg = loop_cfg(tmp_path)
    flaky = FlakyStage(NoFaces(cfg), "detect", {2})
    seen: list[tuple[int, float, float]] = []
    with open_door(cfg.door) as door:
        loop = DoorLoop(
            flaky.as_stage(),
            None,
            None,
            door,
            on_frame=lambda f, ms: seen.append((f.index, f.t, ms)),
        )
        for i in range(4):
            loop.process_contained(Frame(img(i), i, 10.0 + i))
    assert [(i, t) for i, t, _ in seen] == [(0, 10.0), (2, 12.0), (3, 13.0)], "the second call (frame 1) failed"
    assert all(ms >= 0 for *_, ms in seen)
    assert [ms for *_, ms in seen] == list(loop.stats.frame_ms), "the processing time the loop itself keeps"
    assert loop.stats.frame_errors == 1


def test_the_whole_loop_on_a_scripted_replay_and_a_manual_clock(tmp_path: Path) -> None:
    cfg = loop_cfg(tmp_path)
    clock = ManualClock()
    source = ScriptedSource(img(v) for v in range(15))
    seen: list[int] = []
    with open_door(cfg.door, clock=clock) as door, Camera(source, FAST, clock=clock) as camera:
        loop = DoorLoop(
            NoFaces(cfg),
            SimpleNamespace(),  # no face, no decision: the gallery is never used
            camera,
            door,
            clock=clock,
            on_frame=lambda f, _ms: seen.append(f.index),
        )
        stats = loop.run(frame_timeout_s=0.5)
    assert stats.frames == 15 and seen == list(range(15))
    assert camera.status()["state"] == "closed" and source.close_calls >= 1
