"""``DoorLink``: fan-out of one connection per socket, down while the loop is gone or silent, reconnect when it is
back, preview only while subscribed, control requests; and end to end on a real kiosk replaying a real face."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import pytest

from kiosk.config import ScreenConfig
from kiosk.context import Context
from kiosk.enroll import enroll
from kiosk.errors import DoorUnavailableError
from kiosk.screen.client import DoorLink, Subscription
from kiosk.screen.publish import ScreenServer
from tests.screen_kit import colin_frames, kiosk_config, running_kiosk, short_dir, write_video

T = TypeVar("T")
TIMEOUT = 15.0


def _state(n: int) -> dict[str, Any]:
    return {"v": 1, "t": 0.0, "service": "ok", "faces": [{"track": n, "box": [0, 0, 1, 1], "state": "checking"}],
            "prompt": None, "result": None, "capture": None, "fps": 9.0}  # fmt: skip


@pytest.fixture()
def rundir() -> Iterator[Path]:
    with short_dir() as d:
        yield d / "run"


async def _next(sub: Subscription[T]) -> T:
    return await asyncio.wait_for(anext(sub), TIMEOUT)


async def _until(sub: Subscription[dict[str, Any]], service: str) -> dict[str, Any]:
    for _ in range(100):
        state = await _next(sub)
        if state["service"] == service:
            return state
    raise AssertionError(f"no state with service {service!r} in 100 changes")


def test_down_until_the_loop_is_up_then_down_again_and_back(rundir: Path) -> None:
    async def scenario() -> None:
        link = DoorLink(rundir)
        await link.start()
        try:
            sub = link.subscribe_state()
            assert (await _next(sub))["service"] == "down" and link.state["faces"] == []
            server = ScreenServer(rundir, ScreenConfig())
            server.update(_state(1))
            server.start()
            up = await _until(sub, "ok")
            assert up["faces"][0]["track"] == 1 and link.up
            other = link.subscribe_state()  # a second subscriber shares the one connection
            assert (await _next(other))["faces"][0]["track"] == 1
            server.update(_state(2))
            assert (await _next(sub))["faces"][0]["track"] == 2
            assert (await _next(other))["faces"][0]["track"] == 2
            assert link.connects == 1
            server.stop()  # the loop goes away
            down = await _until(sub, "down")
            assert down["faces"] == [] and down["prompt"] is None and down["result"] is None and not link.up
            server = ScreenServer(rundir, ScreenConfig())  # a new run of the loop
            server.update(_state(3))
            server.start()
            back = await _until(sub, "ok")
            assert back["faces"][0]["track"] == 3 and link.connects == 2
            server.stop()
            sub.close()
            other.close()
        finally:
            await link.stop()

    asyncio.run(scenario())


def test_a_silent_loop_is_down_after_stale_s(rundir: Path) -> None:
    rundir.mkdir()
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(str(rundir / "state.sock"))
    mute.listen(4)  # accepts (the kernel does), never says anything

    async def scenario() -> None:
        link = DoorLink(rundir, stale_s=0.3)
        await link.start()
        try:
            sub = link.subscribe_state()
            assert (await _next(sub))["service"] == "down"
            await asyncio.sleep(1.0)
            assert link.state["service"] == "down" and link.connects >= 1
        finally:
            await link.stop()

    try:
        asyncio.run(scenario())
    finally:
        mute.close()


def test_preview_only_while_subscribed(rundir: Path) -> None:
    image = np.zeros((240, 320, 3), np.uint8)
    image[:, :160] = 255
    server = ScreenServer(rundir, ScreenConfig(preview_width=160, preview_fps=30.0, mirror=False))
    server.update(_state(1))

    async def scenario() -> None:
        link = DoorLink(rundir)
        await link.start()
        try:
            await asyncio.sleep(0.1)
            assert server.watchers == 0
            sub = link.subscribe_preview()
            for _ in range(200):
                if server.watchers == 1:
                    break
                await asyncio.sleep(0.02)
            assert server.watchers == 1, "one upstream connection for the subscribers"
            second = link.subscribe_preview()
            await asyncio.sleep(0.1)
            assert server.watchers == 1

            async def feed() -> None:
                while True:
                    server.offer_frame(image)
                    await asyncio.sleep(0.04)

            feeder = asyncio.create_task(feed())
            jpeg = await _next(sub)
            assert (await _next(second))[:2] == b"\xff\xd8"
            feeder.cancel()
            preview = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            assert preview.shape == (120, 160, 3) and preview[:, :70].mean() > 220  # not mirrored: as configured
            sub.close()
            second.close()
            for _ in range(200):
                if server.watchers == 0:
                    break
                await asyncio.sleep(0.02)
            assert server.watchers == 0, "nobody subscribes: the loop stops encoding"
        finally:
            await link.stop()

    with server:
        asyncio.run(scenario())


def test_request_answers_and_unavailable(rundir: Path) -> None:
    async def scenario() -> None:
        link = DoorLink(rundir)
        with pytest.raises(DoorUnavailableError, match="cannot reach the door loop"):
            await link.request({"op": "status"})
        with ScreenServer(rundir, ScreenConfig()):  # no loop behind it answers
            reply = await link.request({"op": "status"})
            assert reply == {"ok": False, "error": "unavailable", "detail": "the door loop takes no requests"}
            reply = await link.request({"op": "nope"})
            assert reply["error"] == "bad-request"

    asyncio.run(scenario())


def test_request_times_out_as_unavailable(rundir: Path) -> None:
    rundir.mkdir()
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(str(rundir / "control.sock"))
    mute.listen(4)

    async def scenario() -> None:
        with pytest.raises(DoorUnavailableError, match="did not answer"):
            await DoorLink(rundir).request({"op": "status"}, timeout_s=0.3)

    try:
        asyncio.run(scenario())
    finally:
        mute.close()


# -- end to end ----------------------------------------------------------------------------------------------------


def test_a_real_kiosk_shows_a_face_box_and_a_result(faces_dir: Path, tmp_path: Path) -> None:
    """run_kiosk replaying a video of a real face with the screen on: a DoorLink sees the face's box, the grant and
    the preview."""
    clip = write_video(tmp_path / "door.avi", colin_frames(faces_dir, photos=4)[4:])
    with short_dir() as d:
        # result_s at its longest: the grant may come before the link connects on a slow machine.
        cfg = kiosk_config(
            d / "data",
            d / "run",
            screen={"show_name": "first", "mirror": True, "result_s": 60.0},
            camera={"source": str(clip), "loop_replay": True},
        )
        colin = sorted((faces_dir / "lfw/images/Colin_Powell").glob("*.jpg"))
        with Context(cfg) as ctx:
            enroll(ctx.pipeline, ctx.gallery, "Colin Powell", colin[:2])

        async def watch() -> tuple[dict[str, Any], dict[str, Any], bytes]:
            link = DoorLink(d / "run")
            await link.start()
            try:
                sub = link.subscribe_state()
                preview = link.subscribe_preview()
                face = result = None
                for _ in range(200):  # lines come at least once a second: a bound, never an endless wait
                    if face is not None and result is not None:
                        break
                    state = await _next(sub)
                    if state["faces"] and face is None:
                        face = state
                    if state["result"] is not None:
                        result = state
                assert face is not None and result is not None, "no face box or no result seen"
                jpeg = await _next(preview)
                status = await link.request({"op": "status"})
                assert status["ok"] is True and status["loop"]["granted"] >= 1
                return face, result, jpeg
            finally:
                await link.stop()

        with running_kiosk(cfg) as rk:
            face, result, jpeg = asyncio.run(watch())
            rk.stop()
    box = face["faces"][0]["box"]
    assert face["service"] == "ok" and len(box) == 4 and all(0.0 <= v <= 1.0 for v in box)
    assert 0.2 < box[0] + box[2] / 2 < 0.8, "the face is near the middle of the preview"
    assert result["result"]["outcome"] == "granted" and result["result"]["name"] == "Colin"
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape[1] == cfg.screen.preview_width


def test_a_real_kiosk_shows_a_liveness_prompt_with_its_countdown(faces_dir: Path) -> None:
    """Active liveness on a still photo of a member: the challenge reaches the screen as a code and a countdown."""
    with short_dir() as d:
        cfg = kiosk_config(
            d / "data",
            d / "run",
            liveness={"mode": "active", "active": {"challenges": ["blink"], "steps": 1, "timeout_s": 20.0}},
        )
        colin = sorted((faces_dir / "lfw/images/Colin_Powell").glob("*.jpg"))
        with Context(cfg) as ctx:
            enroll(ctx.pipeline, ctx.gallery, "Colin Powell", colin[:2])
        frames = colin_frames(faces_dir, photos=2)[4:]

        async def watch() -> dict[str, Any]:
            link = DoorLink(d / "run")
            await link.start()
            try:
                sub = link.subscribe_state()
                for _ in range(300):
                    state = await _next(sub)
                    if state["prompt"] is not None and state["prompt"]["code"] == "blink":
                        return state
                raise AssertionError("no blink prompt seen")
            finally:
                await link.stop()

        with running_kiosk(cfg, frames) as rk:
            state = asyncio.run(watch())
            rk.stop()
    prompt = state["prompt"]
    assert prompt["total_s"] == 20.0 and 0.0 < prompt["remaining_s"] <= 20.0
    face = next(f for f in state["faces"] if f["track"] == prompt["track"])
    assert face["state"] == "challenge"
    assert state["result"] is None or state["result"]["outcome"] != "granted", "a still photo cannot blink"


def test_stop_ends_the_link_while_state_lines_keep_arriving(rundir: Path) -> None:
    """A loop that sends state lines without pause: every stop() ends the link's tasks (a cancellation that
    arrives as a read completes is not lost), so `kiosk web` can always shut down."""
    import json
    import threading

    rundir.mkdir(parents=True)
    path = rundir / "state.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)
    done = threading.Event()

    def flood(conn: socket.socket) -> None:
        n = 0
        with conn:
            while not done.is_set():
                n += 1
                try:
                    conn.sendall((json.dumps(_state(n % 7)) + "\n").encode())
                except OSError:
                    return

    def accept() -> None:
        server.settimeout(0.2)
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            threading.Thread(target=flood, args=(conn,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()

    async def cycles() -> None:
        for _ in range(30):
            link = DoorLink(rundir)
            await link.start()
            sub = link.subscribe_state()
            state = await _next(sub)
            while state["service"] != "ok":
                state = await _next(sub)
            async with asyncio.timeout(TIMEOUT):  # a bound on a hang, not a speed test
                await link.stop()
            assert all(t.done() for t in asyncio.all_tasks() if t.get_name().startswith("doorlink"))

    try:
        asyncio.run(cycles())
    finally:
        done.set()
        acceptor.join(5.0)
        server.close()
