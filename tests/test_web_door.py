"""The door screen's routes without a browser: the page, its config, the SSE and MJPEG streams."""

from __future__ import annotations

import asyncio
import json
import re
from html import unescape
from typing import Any

import pytest
from fastapi.testclient import TestClient

from kiosk.errors import DoorUnavailableError
from kiosk.web.door import BOUNDARY, PART_HEAD, SSE_RETRY_MS, preview_stream, sse_event, state_stream
from kiosk.web.scripted import ScriptedLink, door_state
from tests.door_screen_helpers import scripted_app


def page_config(html: str) -> dict[str, Any]:
    match = re.search(r"data-config='([^']*)'", html)
    assert match, "no data-config on the door page"
    config: dict[str, Any] = json.loads(unescape(match.group(1)))
    return config


@pytest.mark.parametrize(("language", "blink"), [("en", "Please blink"), ("zh-Hans", "请眨眼")])
def test_door_page_carries_its_strings_and_settings(language: str, blink: str) -> None:
    app, _ = scripted_app(ScriptedLink(), language=language, result_s=4.5, sound=True, show_name="none")
    with TestClient(app) as client:
        r = client.get("/door")
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        assert f'<html lang="{language}">' in r.text
        assert "<script>" not in r.text and "style=" not in r.text  # CSP: no inline script or style
        config = page_config(r.text)
        assert config["strings"]["door.prompt.blink"] == blink
        assert (config["lang"], config["result_s"], config["sound"], config["show_name"]) == (
            language,
            4.5,
            True,
            "none",
        )
        assert client.get("/door/config.json").json() == config
        # the versioned static files the page names are served
        for url in re.findall(r'(?:src|href)="(/static/[^"]+)"', r.text):
            assert client.get(unescape(url)).status_code == 200, url


def test_door_page_escapes_names_in_its_config() -> None:
    app, services = scripted_app(ScriptedLink())
    services.i18n.catalogues["en"]["door.idle"] = "it's <b>&"
    with TestClient(app) as client:
        html = client.get("/door").text
    assert "it's <b>" not in html
    assert page_config(html)["strings"]["door.idle"] == "it's <b>&"


async def take(stream: Any, n: int) -> list[Any]:
    out = []
    async for item in stream:
        out.append(item)
        if len(out) == n:
            break
    await stream.aclose()
    return out


def test_state_stream_sends_retry_then_the_current_state_then_changes() -> None:
    link = ScriptedLink(door_state("ok", seq=1))

    async def run() -> list[str]:
        stream = state_stream(link)
        first = [await anext(stream), await anext(stream)]
        link.publish(door_state("down", seq=2))
        link.publish(door_state("ok", seq=3, prompt={"track": 1, "code": "blink", "remaining_s": 2, "total_s": 3}))
        rest = await take(stream, 2)
        assert link.state_subscribers == 0, "closing the stream ends its subscription"
        return first + rest

    chunks = asyncio.run(run())
    assert chunks[0] == f"retry: {SSE_RETRY_MS}\n\n"
    states = [json.loads(c.split("data: ", 1)[1]) for c in chunks[1:]]
    assert [s["service"] for s in states] == ["ok", "down", "ok"]
    assert states[2]["prompt"]["code"] == "blink"
    assert chunks[1].startswith("id: 1\n")


def test_the_scripted_link_records_answers_and_goes_down_like_a_door_link() -> None:
    """``ScriptedLink``, the one stand-in for ``DoorLink``: assigning ``state`` publishes it, requests are recorded
    and answered by op, and while the loop is down (``go_down``) they fail as ``DoorLink``'s do."""
    link = ScriptedLink(door_state("ok", seq=1))

    async def run() -> list[dict[str, Any]]:
        await link.start()
        sub = link.subscribe_state()
        link.state = door_state("camera-down", seq=2)
        assert await link.request({"op": "unlock", "reason": "r"}) == {"ok": True, "pulse_s": 3.0}
        assert (await link.request({"op": "nope"}))["error"] == "bad-request"
        link.go_down()
        with pytest.raises(DoorUnavailableError):
            await link.request({"op": "status"})
        link.come_back(door_state("ok", seq=4))
        assert (await link.request({"op": "status"}))["loop"]["fps"] == 9.5
        await link.stop()
        return [s async for s in sub]

    states = asyncio.run(run())
    assert [s["service"] for s in states] == ["ok", "camera-down", "down", "ok"]
    assert link.state["seq"] == 4 and link.calls == ["start", "stop"]
    assert [q["op"] for q in link.requests] == ["unlock", "nope", "status"]  # the refused one never reached a loop
    link.state = door_state("ok", seq=5)  # after its event loop is closed: nobody to tell, no error


def test_state_stream_sends_heartbeats_while_nothing_changes() -> None:
    link = ScriptedLink(door_state("ok", seq=1))

    async def run() -> list[str]:
        return await take(state_stream(link, heartbeat_s=0.01), 4)

    chunks = asyncio.run(run())
    assert chunks[2:] == [": keep-alive\n\n", ": keep-alive\n\n"]


def test_sse_event_is_one_line_of_json_and_keeps_unicode() -> None:
    event = sse_event({"seq": 5, "result": {"name": "李\n雷"}})
    assert event.count("\n") == 3 and event.endswith("\n\n") and "李\\n雷" in event


def test_preview_stream_gives_a_slow_reader_the_newest_frame_only() -> None:
    link = ScriptedLink(door_state("ok"))

    async def run() -> list[bytes]:
        stream = preview_stream(link)
        assert await anext(stream) == f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n\r\n".encode() == PART_HEAD
        link.publish_frame(b"\xff\xd8first")
        first = await anext(stream)
        for n in range(5):  # the reader is busy: five frames arrive, only the last one is kept
            link.publish_frame(b"\xff\xd8frame%d" % n)
        await asyncio.sleep(0)
        second = await anext(stream)
        link.publish(door_state("down"))  # the loop goes down: the stream ends quietly
        rest = [part async for part in stream]
        assert link.preview_subscribers == 0
        return [first, second, *rest]

    parts = asyncio.run(run())
    assert len(parts) == 2
    # each frame is closed by the next part's boundary and headers, so the browser shows it at once
    assert parts == [b"\xff\xd8first\r\n" + PART_HEAD, b"\xff\xd8frame4\r\n" + PART_HEAD]


def test_preview_while_the_loop_is_down_ends_at_once() -> None:
    link = ScriptedLink()  # down

    async def run() -> list[bytes]:
        return [part async for part in preview_stream(link)]

    assert asyncio.run(run()) == [PART_HEAD]


def test_preview_route_is_multipart_mjpeg() -> None:
    link = ScriptedLink()  # down, so the stream ends and the client can read it whole
    app, _ = scripted_app(link)
    with TestClient(app) as client:
        r = client.get("/door/preview.mjpg")
    assert r.status_code == 200
    assert r.headers["content-type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
    assert r.headers["cache-control"] == "no-store"


def test_a_stalled_preview_client_holds_one_frame_and_never_stops_the_others() -> None:
    """A browser that stops reading /door/preview.mjpg: its stream waits in the send, its subscription keeps only the
    newest frame, and another browser keeps getting every new frame."""
    import socket
    import time

    from tools.measure.browser import LiveServer

    link = ScriptedLink(door_state("ok"))
    app, _ = scripted_app(link)
    server = LiveServer(app)
    url = server.start()
    host, port = url.removeprefix("http://").split(":")
    request = f"GET /door/preview.mjpg HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect, so the window stays small
    stalled.connect((host, int(port)))
    reader = socket.create_connection((host, int(port)), timeout=10)
    try:
        deadline = time.monotonic() + 20
        stalled.sendall(request)  # and never reads
        while link.preview_subscribers < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        (stalled_sub,) = link._previews
        reader.sendall(request)
        while link.preview_subscribers < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert link.preview_subscribers == 2
        got = b""

        def read_until(tag: bytes) -> None:
            nonlocal got
            while tag not in got and time.monotonic() < deadline:
                got = got[-64:] + reader.recv(1 << 20)
            assert tag in got, f"the reading client never got {tag!r} while another one stalled"

        def stalled_holds() -> list[bytes]:
            return list(stalled_sub._items)

        # 1 MB frames until the stalled stream is stuck in its send (the socket buffers are full): then a frame
        # stays in its subscription while the reading client gets it
        for n in range(60):
            tag = b"<frame %03d>" % n
            link.publish_frame(b"\xff\xd8" + bytes(1_000_000) + tag)
            read_until(tag)
            if stalled_holds():
                break
        assert stalled_holds(), "the stalled stream never filled its buffers"
        for n in range(10):  # newer frames replace the one waiting; the reading client still gets each
            tag = b"<newer %d>" % n
            link.publish_frame(b"\xff\xd8" + tag)
            read_until(tag)
        assert stalled_holds() == [b"\xff\xd8<newer 9>"], "a stalled stream holds the newest frame only"
    finally:
        stalled.close()
        reader.close()
        server.stop()
