"""control.sock on a real kiosk (models, gallery, simulated door, replayed face): authorisation by peer
credentials, status, reload, a manual unlock pulsed and recorded by the loop, guided capture on a replayed video,
and malformed requests answered without harming the loop."""

from __future__ import annotations

import base64
import logging
import os
import pwd
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiosk.door.relay import SimulatedDoor, open_door
from kiosk.gallery import Gallery
from kiosk.lab.door_thread import LoopThread
from kiosk.screen.control import Authorizer, Peer, parse_request, peer_credentials
from kiosk.screen.loop import LoopScreen
from kiosk.screen.protocol import MAX_REQUEST_BYTES
from tests.helpers import wait_until
from tests.screen_kit import (
    LineReader,
    colin_frames,
    connect,
    control,
    kiosk_config,
    running_kiosk,
    short_dir,
    write_video,
)

FOREIGN_UID = 54321  # no such user: neither the loop's, nor root, nor in admin.group


class Peers:
    """The credentials the server sees: the real ones, or a foreign uid while ``foreign`` is set."""

    def __init__(self) -> None:
        self.foreign = False

    def __call__(self, sock: socket.socket) -> Peer:
        real = peer_credentials(sock)
        return Peer(real.pid, FOREIGN_UID, FOREIGN_UID) if self.foreign else real


@pytest.fixture(scope="module")
def kiosk(faces_dir: Path) -> Iterator[tuple[LoopThread, Path, Peers, SimulatedDoor]]:
    with short_dir() as d:
        cfg = kiosk_config(d / "data", d / "run")
        door = open_door(cfg.door)
        assert isinstance(door, SimulatedDoor)
        peers = Peers()
        frames = colin_frames(faces_dir, photos=2)
        with running_kiosk(cfg, frames, door=door, screen_options={"credentials": peers}) as rk:
            yield rk, d / "run" / "control.sock", peers, door
            rk.stop()


def test_status_reports_loop_door_and_camera(kiosk: tuple[LoopThread, Path, Peers, SimulatedDoor]) -> None:
    rk, sock, _, _ = kiosk
    assert rk.loop is not None and wait_until(lambda: rk.loop is not None and rk.loop.stats.frames > 3, 30)
    reply = control(sock, {"op": "status"})
    assert reply["ok"] is True and reply["service"] == "ok"
    assert reply["loop"]["frames"] > 3 and "frame_ms_median" in reply["loop"]
    assert reply["door"] == {"relay": "locked", "contact": None}
    assert reply["camera"]["state"] == "ok"


def test_a_foreign_uid_is_refused(kiosk: tuple[LoopThread, Path, Peers, SimulatedDoor]) -> None:
    _, sock, peers, door = kiosk
    before = len(door.timeline)
    peers.foreign = True
    try:
        for op in ({"op": "status"}, {"op": "unlock", "reason": "let me in", "actor": "web:mallory"}):
            reply = control(sock, op)
            assert reply["ok"] is False and reply["error"] == "forbidden", reply
    finally:
        peers.foreign = False
    assert len(door.timeline) == before, "the relay was not touched"


def test_unlock_pulses_the_door_and_is_recorded_by_the_loop(
    kiosk: tuple[LoopThread, Path, Peers, SimulatedDoor],
) -> None:
    rk, sock, _, door = kiosk
    assert rk.loop is not None
    before = len(door.timeline)
    reply = control(sock, {"op": "unlock", "reason": "delivery at the door", "actor": "web:alice"})
    assert reply == {"ok": True, "pulse_s": 0.2}
    # The loop pulsed its own relay before it answered; the off-timer locks it again.
    assert [what for _, what, _ in door.timeline[before:]][:1] == ["unlock"]
    assert wait_until(lambda: not door.unlocked, 5)
    with Gallery(rk.loop.gallery.path) as g:
        assert wait_until(lambda: any(e["outcome"] == "manual-unlock" for e in g.events()), 5)
        event = [e for e in g.events() if e["outcome"] == "manual-unlock"][-1]
        assert g.verify_events().ok
    assert event["kind"] == "door" and event["door_action"] == "pulse 0.2s"
    assert event["detail"]["actor"] == "web:alice" and event["detail"]["reason"] == "delivery at the door"
    assert event["detail"]["peer_uid"] == os.getuid() and event["detail"]["peer_pid"] == os.getpid()


def test_reload_reloads_the_gallery_on_the_next_frame(
    kiosk: tuple[LoopThread, Path, Peers, SimulatedDoor], caplog: pytest.LogCaptureFixture
) -> None:
    _, sock, _, _ = kiosk
    caplog.set_level(logging.INFO, logger="kiosk.door.loop")
    assert control(sock, {"op": "reload"}) == {"ok": True}
    assert wait_until(lambda: any("gallery loaded" in r.getMessage() for r in caplog.records), 10)


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"this is not json\n", "not one line of JSON"),
        (b"[1, 2]\n", "JSON object"),
        (b'{"op": "open-sesame"}\n', "'op' must be one of"),
        (b'{"op": "unlock", "actor": "web:alice"}\n', "'reason'"),
        (b'{"op": "unlock", "reason": "x"}\n', "'actor'"),
        (b'{"op": "capture", "target": 0}\n', "'target'"),
        (b'{"op": "capture", "target": 2.5}\n', "whole number"),
        (b'{"op": "capture-result"}\n', "'id'"),
        (b"\xff\xfe\n", "not one line of JSON"),
        (b"\n", "empty request"),
        (b'{"op": "status"', "not one line of JSON"),  # no newline, then the client shuts its side
        (b"x" * (MAX_REQUEST_BYTES + 10), "longer than"),
    ],
)
def test_malformed_requests_are_bad_requests(
    kiosk: tuple[LoopThread, Path, Peers, SimulatedDoor], raw: bytes, detail: str
) -> None:
    rk, sock, _, _ = kiosk
    with connect(sock) as s:
        s.sendall(raw)
        if not raw.endswith(b"\n") and len(raw) <= MAX_REQUEST_BYTES:
            s.shutdown(socket.SHUT_WR)
        reply = LineReader(s).next()
    assert reply["ok"] is False and reply["error"] == "bad-request" and detail in reply["detail"], reply
    assert rk.loop is not None and rk.loop.screen_errors == 0
    assert control(sock, {"op": "status"})["ok"] is True, "the loop goes on"


def test_a_silent_client_gets_a_bad_request_after_the_read_timeout(
    kiosk: tuple[LoopThread, Path, Peers, SimulatedDoor],
) -> None:
    _, sock, _, _ = kiosk
    with connect(sock, timeout=10) as s:
        reply = LineReader(s).next()  # sends nothing
    assert reply["error"] == "bad-request" and "no request line" in reply["detail"]


def test_capture_result_for_an_unknown_id(kiosk: tuple[LoopThread, Path, Peers, SimulatedDoor]) -> None:
    _, sock, _, _ = kiosk
    reply = control(sock, {"op": "capture-result", "id": "nope"})
    assert reply == {"ok": False, "error": "bad-request", "detail": "no capture with that id"}


def test_parse_request_keeps_only_known_fields() -> None:
    req = parse_request(b'{"op": "unlock", "reason": "  the  courier ", "actor": "web:alice", "extra": 1}')
    assert req == {"op": "unlock", "actor": "web:alice", "reason": "the courier"}
    assert parse_request(b'{"op": "capture"}') == {"op": "capture", "actor": None, "target": 5, "timeout_s": 60.0}


def test_authorizer_own_uid_root_and_admin_group() -> None:
    own = Authorizer("kiosk-admin", own_uid=4242)
    assert own(Peer(1, 4242, 4242)) and own(Peer(1, 0, 0))
    assert not own(Peer(1, FOREIGN_UID, FOREIGN_UID))
    user = next(p for p in pwd.getpwall() if p.pw_uid not in (0, 4242))
    group_name = __import__("grp").getgrgid(user.pw_gid).gr_name
    assert Authorizer(group_name, own_uid=4242)(Peer(1, user.pw_uid, user.pw_gid)), "a member of admin.group"
    assert not Authorizer("no-such-group-here", own_uid=4242)(Peer(1, user.pw_uid, user.pw_gid))


# -- guided capture on a replayed video of a real face -------------------------------------------------------------


def test_capture_on_a_replayed_video(faces_dir: Path, tmp_path: Path) -> None:
    clip = write_video(tmp_path / "door.avi", colin_frames(faces_dir))
    with short_dir() as d:
        cfg = kiosk_config(d / "data", d / "run", camera={"source": str(clip), "loop_replay": True})
        decided_while_capturing: list[bool] = []
        screens: list[LoopScreen] = []

        def on_decision(_d: Any, _a: str) -> None:
            decided_while_capturing.append(screens[0].capturing() if screens else False)

        with running_kiosk(cfg, on_decision=on_decision) as rk:
            assert rk.loop is not None and isinstance(rk.loop.screen, LoopScreen)
            screens.append(rk.loop.screen)
            sock = d / "run" / "control.sock"
            started = control(sock, {"op": "capture", "target": 2, "timeout_s": 120, "actor": "web:alice"})
            assert started["ok"] is True and isinstance(started["id"], str)
            assert control(sock, {"op": "capture", "target": 2})["error"] == "busy"
            with connect(d / "run" / "state.sock") as s:
                running = LineReader(s).until(lambda st: st["capture"] is not None)
            assert running["capture"]["id"] == started["id"] and running["capture"]["target"] == 2
            assert wait_until(
                lambda: control(sock, {"op": "capture-result", "id": started["id"]})["state"] != "running", 120
            )
            result = control(sock, {"op": "capture-result", "id": started["id"]})
            rk.stop()
    assert result["ok"] is True and result["state"] == "done", result
    spec = rk.loop.pipeline.embedder.spec
    assert result["model"] == {"id": spec.id, "sha256": spec.sha256}
    assert len(result["frames"]) == 2
    for f in result["frames"]:
        v = np.frombuffer(base64.b64decode(f["embedding"]), "<f4")
        assert v.shape == (rk.loop.pipeline.embedder.dim,) and abs(float(np.linalg.norm(v)) - 1.0) < 1e-3
        assert f["quality"]["score"] > 0
    assert not any(decided_while_capturing), "no door decision while a capture runs"


def test_capture_cancel(faces_dir: Path) -> None:
    with short_dir() as d:
        cfg = kiosk_config(d / "data", d / "run")
        blank = [np.full((480, 640, 3), 110, np.uint8)]  # no face: the capture cannot finish by itself
        with running_kiosk(cfg, blank) as rk:
            sock = d / "run" / "control.sock"
            cid = control(sock, {"op": "capture", "target": 3, "timeout_s": 60})["id"]
            assert wait_until(lambda: rk.loop is not None and rk.loop.stats.frames > 3, 30)
            state = control(sock, {"op": "capture-result", "id": cid})
            assert state == {"ok": True, "id": cid, "state": "running"}
            assert control(sock, {"op": "capture-cancel", "id": cid}) == {"ok": True}
            assert control(sock, {"op": "capture-result", "id": cid})["state"] == "cancelled"
            with connect(d / "run" / "state.sock") as s:
                st = LineReader(s).until(lambda st: st["capture"] is not None)
            assert st["capture"]["state"] == "cancelled" and st["capture"]["hint"] == "no-face"
            rk.stop()


# -- the loop's side: camera down, a failing screen ----------------------------------------------------------------


def test_camera_down_is_published(faces_dir: Path) -> None:
    from kiosk.errors import HardwareError
    from kiosk.testing import ScriptedSource

    frames = colin_frames(faces_dir, photos=1)
    with short_dir() as d:
        cfg = kiosk_config(d / "data", d / "run", camera={"reconnect_min_s": 0.1, "reconnect_max_s": 0.2})

        def unplugged(_spec: str, _cam: Any) -> ScriptedSource:
            # Some frames, then the camera is unplugged and never comes back.
            return ScriptedSource([*frames, HardwareError("unplugged")], live=True, opens=[True], read_delay_s=0.05)

        with running_kiosk(cfg, open_source=unplugged) as rk, connect(d / "run" / "state.sock", 30) as s:
            lines = LineReader(s)
            seen = lines.until(lambda st: bool(st["faces"]))
            assert seen["service"] == "ok"
            down = lines.until(lambda st: st["service"] == "camera-down")
            assert down["faces"] == [] and down["prompt"] is None
            rk.stop()
            lines.until(lambda st: st["service"] == "stopping")
            with pytest.raises(EOFError):  # then the loop closes the socket; nothing after "stopping" says otherwise
                for _ in range(100):
                    assert lines.next()["service"] == "stopping"
        assert not (d / "run" / "state.sock").exists()


class BrokenScreen:
    """A screen whose every hook raises: the door loop must go on as without it."""

    def __init__(self) -> None:
        self.calls = 0

    def capturing(self) -> bool:
        self.calls += 1
        raise RuntimeError("capturing broke")

    def capture_frame(self, *_a: Any) -> None:
        raise AssertionError("never called: capturing() raised")

    def frame(self, *_a: Any) -> None:
        self.calls += 1
        raise RuntimeError("frame broke")

    def prompt(self, *_a: Any) -> None:
        raise RuntimeError("prompt broke")

    def tick(self, *_a: Any) -> None:
        self.calls += 1
        raise RuntimeError("tick broke")


def test_a_failing_screen_never_stops_or_fails_the_loop(faces_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    from kiosk.context import Context
    from kiosk.door.camera import Camera
    from kiosk.door.loop import DoorLoop
    from kiosk.enroll import enroll
    from kiosk.testing import ScriptedSource

    frames = colin_frames(faces_dir, photos=2)
    with short_dir() as d:
        cfg = kiosk_config(d / "data", d / "run", screen={"enabled": False})
        colin = sorted((faces_dir / "lfw/images/Colin_Powell").glob("*.jpg"))
        with Context(cfg) as ctx:
            enroll(ctx.pipeline, ctx.gallery, "Colin Powell", colin[:2])
            door = open_door(cfg.door)
            camera = Camera(ScriptedSource(frames), dataclasses_replace_realtime(cfg))
            camera.start()
            screen = BrokenScreen()
            loop = DoorLoop(ctx.pipeline, ctx.gallery, camera, door, screen=screen)
            with caplog.at_level(logging.ERROR, logger="kiosk.door.loop"):
                stats = loop.run()
            camera.close()
            door.close()
    assert stats.frames == len(frames) and stats.frame_errors == 0, "every frame processed, none failed"
    assert stats.granted == 1, "the door still decides"
    assert loop.screen_errors >= 2 * len(frames) and screen.calls >= 2 * len(frames)
    logged = [r for r in caplog.records if "screen error" in r.getMessage()]
    assert len(logged) == 1, "logged once, rate-limited"


def dataclasses_replace_realtime(cfg: Any) -> Any:
    import dataclasses

    return dataclasses.replace(cfg.camera, replay_realtime=False)
