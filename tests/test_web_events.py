"""Events through the API (kiosk.web.events): filters, keyset paging, CSV/JSON export, the chain state, snapshots
served by event id only, and new events as they are written (the SSE source)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from kiosk.gallery.open import open_gallery
from kiosk.web import events
from kiosk.web.services import WebServices
from tests.web_helpers import PASSWORD, make_services
from tests.webapi_support import api_config, client_for, jpeg

pytest_plugins = ("tests.webapi_fixtures",)

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def _add(services: WebServices, kind: str, outcome: str, **fields: Any) -> int:
    with open_gallery(services.cfg, need_key=False) as g:
        return g.add_event(kind, outcome, **fields)


def _seed(services: WebServices) -> list[int]:
    return [
        _add(services, "access", "granted", ts=T0, person_id=1, person_name="Ada", liveness="pass", score=0.8),
        _add(services, "access", "denied", ts=T0 + timedelta(hours=1), person_id=1, person_name="Ada", liveness="fail"),
        _add(services, "access", "unknown", ts=T0 + timedelta(hours=2), liveness="pass", score=0.2),
        _add(services, "door", "manual-unlock", ts=T0 + timedelta(hours=3), detail={"by": "web:ada", "reason": "x"}),
        _add(services, "access", "granted", ts=T0 + timedelta(hours=4), person_id=2, person_name="=cmd|' /C calc'!A0"),
    ]


def _ids(r: Any) -> list[int]:
    assert r.status_code == 200, r.text
    return [e["id"] for e in r.json()["events"]]


def test_filters(viewer: TestClient, services: WebServices) -> None:
    ids = _seed(services)
    assert _ids(viewer.get("/api/events")) == ids[::-1]
    assert _ids(viewer.get("/api/events", params={"person": "ada"})) == [ids[1], ids[0]]
    assert _ids(viewer.get("/api/events", params={"person_id": 2})) == [ids[4]]
    assert _ids(viewer.get("/api/events", params={"outcome": "granted"})) == [ids[4], ids[0]]
    assert _ids(viewer.get("/api/events", params={"liveness": "pass"})) == [ids[2], ids[0]]
    assert _ids(viewer.get("/api/events", params={"kind": "door"})) == [ids[3]]
    window = {"since": (T0 + timedelta(hours=1)).isoformat(), "until": (T0 + timedelta(hours=3)).isoformat()}
    assert _ids(viewer.get("/api/events", params=window)) == [ids[2], ids[1]]
    assert _ids(viewer.get("/api/events", params={"person": "nobody"})) == []


def test_keyset_paging(viewer: TestClient, services: WebServices) -> None:
    ids = _seed(services)
    first = viewer.get("/api/events", params={"limit": 2}).json()
    assert [e["id"] for e in first["events"]] == [ids[4], ids[3]] and first["next_before_id"] == ids[3]
    second = viewer.get("/api/events", params={"limit": 2, "before_id": first["next_before_id"]}).json()
    assert [e["id"] for e in second["events"]] == [ids[2], ids[1]]
    last = viewer.get("/api/events", params={"limit": 2, "before_id": second["next_before_id"]}).json()
    assert [e["id"] for e in last["events"]] == [ids[0]] and last["next_before_id"] is None


def test_bad_filters_are_clean_422s(viewer: TestClient, services: WebServices) -> None:
    later, earlier = T0.isoformat(), (T0 - timedelta(days=1)).isoformat()
    bad = [
        {"since": later, "until": earlier},
        {"since": "yesterday"},
        {"limit": 0},
        {"limit": 100_000},
        {"before_id": "x"},
        {"person": "x" * 500},
    ]
    for params in bad:
        r = viewer.get("/api/events", params=params)
        assert r.status_code == 422 and "detail" in r.json(), params
    huge = viewer.get("/api/events", params={"before_id": 2**80, "person_id": -(2**80)})
    assert huge.status_code == 200 and huge.json()["events"] == []


def test_export_csv_and_json(viewer: TestClient, services: WebServices) -> None:
    ids = _seed(services)
    r = viewer.get("/api/events/export", params={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"].startswith('attachment; filename="events-')
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [int(row["id"]) for row in rows] == ids[::-1]
    assert rows[0]["person_name"] == "'=cmd|' /C calc'!A0"  # no formula for a spreadsheet to run
    assert json.loads(rows[1]["detail"]) == {"by": "web:ada", "reason": "x"}
    r = viewer.get("/api/events/export", params={"format": "json", "outcome": "granted"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert [e["id"] for e in body] == [ids[4], ids[0]] and body[1]["score"] == 0.8
    assert viewer.get("/api/events/export", params={"format": "xml"}).status_code == 422


def test_export_streams_every_page(services: WebServices) -> None:
    with open_gallery(services.cfg, need_key=False) as g:
        for i in range(events.EXPORT_PAGE * 2 + 3):
            g.add_event("access", "unknown", ts=T0 + timedelta(seconds=i))
    chunks = list(events.export_events(services, "csv"))
    assert len(chunks) >= 3  # one per page, not one string built in memory
    lines = b"".join(chunks).decode().splitlines()
    assert len(lines) == 1 + events.EXPORT_PAGE * 2 + 3
    assert json.loads(b"".join(events.export_events(services, "json", kind="nothing"))) == []


def test_chain_state_reports_tampering(viewer: TestClient, services: WebServices) -> None:
    ids = _seed(services)
    state = viewer.get("/api/events/chain").json()
    assert state == {"ok": True, "events": 5, "detail": "chain intact", "head_id": ids[-1]}
    with sqlite3.connect(services.cfg.gallery_path) as conn:
        conn.execute("UPDATE events SET outcome = 'granted' WHERE id = ?", [ids[1]])
    state = viewer.get("/api/events/chain").json()
    assert state["ok"] is False and f"event {ids[1]}" in state["detail"] and "altered" in state["detail"]


# -- snapshots ---------------------------------------------------------------------------------------------------


def _snapshot_services(tmp_path: Path, pipeline: Any, snapshots: bool) -> WebServices:
    services = make_services(tmp_path, api_config(tmp_path, snapshots=snapshots))
    services.use_pipeline(pipeline)
    services.accounts.add("vera", "viewer", PASSWORD)
    return services


def test_snapshots_are_served_by_event_id_only(tmp_path: Path, pipeline: Any) -> None:
    import numpy as np

    services = _snapshot_services(tmp_path, pipeline, snapshots=True)
    folder = services.cfg.snapshot_dir
    folder.mkdir(parents=True, mode=0o700)
    picture = jpeg(np.full((40, 40, 3), 128, np.uint8))
    (folder / "20260301T080000_000000Z_granted.jpg").write_bytes(picture)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"not for you")
    os.symlink(secret, folder / "20260301T090000_000000Z_denied.jpg")
    good = _add(services, "access", "granted", detail={"snapshot": "20260301T080000_000000Z_granted.jpg"})
    tricks = [
        _add(services, "access", "denied", detail={"snapshot": "../secret.jpg"}),
        _add(services, "access", "denied", detail={"snapshot": str(secret)}),
        _add(services, "access", "denied", detail={"snapshot": "20260301T090000_000000Z_denied.jpg"}),  # a symlink
        _add(services, "access", "denied", detail={"snapshot": "20260301T100000_000000Z_denied.jpg"}),  # pruned
        _add(services, "access", "denied", detail={"reason": "no snapshot taken"}),
        _add(services, "access", "denied", detail="text, not JSON"),
    ]
    with client_for(services, "vera") as client:
        r = client.get(f"/api/events/{good}/snapshot")
        assert r.status_code == 200 and r.content == picture and r.headers["content-type"] == "image/jpeg"
        listed = {e["id"]: e["snapshot"] for e in client.get("/api/events").json()["events"]}
        assert listed[good] is True and listed[tricks[-2]] is False
        for event_id in [*tricks, 99999, 2**70]:
            r = client.get(f"/api/events/{event_id}/snapshot")
            assert r.status_code == 404 and b"not for you" not in r.content, event_id
        assert client.get("/api/events/..%2F..%2Fsecret.jpg/snapshot").status_code in (404, 422)
    with client_for(services, None) as anonymous:
        assert anonymous.get(f"/api/events/{good}/snapshot").status_code == 401
    services.close()


def test_snapshots_off_serves_none(tmp_path: Path, pipeline: Any) -> None:
    services = _snapshot_services(tmp_path, pipeline, snapshots=False)
    services.cfg.snapshot_dir.mkdir(parents=True, mode=0o700)
    (services.cfg.snapshot_dir / "20260301T080000_000000Z_granted.jpg").write_bytes(b"\xff\xd8 old snapshot")
    event = _add(services, "access", "granted", detail={"snapshot": "20260301T080000_000000Z_granted.jpg"})
    with client_for(services, "vera") as client:
        assert client.get(f"/api/events/{event}/snapshot").status_code == 404
        assert client.get("/api/events").json()["events"][0]["snapshot"] is False
    services.close()


# -- new events ----------------------------------------------------------------------------------------------------


def test_new_events_yields_what_is_written_after_it_started(services: WebServices) -> None:
    before = _add(services, "access", "unknown")

    async def run() -> list[dict[str, Any] | None]:
        stream = events.new_events(services, poll_s=0.01)
        got: list[dict[str, Any] | None] = []
        task = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.05)
        assert not task.done()  # nothing new yet: the old event is not replayed
        await asyncio.to_thread(_add, services, "access", "granted", person_name="Ada")
        got.append(await asyncio.wait_for(task, 10))
        await asyncio.to_thread(_add, services, "access", "denied")
        await asyncio.to_thread(_add, services, "door", "manual-unlock")
        got.append(await asyncio.wait_for(stream.__anext__(), 10))
        got.append(await asyncio.wait_for(stream.__anext__(), 10))
        await stream.aclose()
        return got

    got = asyncio.run(run())
    assert [(e or {}).get("outcome") for e in got] == ["granted", "denied", "manual-unlock"]
    assert all((e or {})["id"] > before for e in got)


def test_new_events_resumes_after_an_id_and_beats_when_quiet(services: WebServices) -> None:
    ids = [_add(services, "access", "unknown") for _ in range(3)]

    async def run() -> list[dict[str, Any] | None]:
        stream = events.new_events(services, after_id=ids[0], poll_s=0.01, heartbeat_s=0.02)
        got = [await asyncio.wait_for(stream.__anext__(), 10) for _ in range(3)]
        await stream.aclose()
        return got

    got = asyncio.run(run())
    assert [(e or {}).get("id") for e in got[:2]] == ids[1:] and got[2] is None


def test_stream_endpoint_sends_server_sent_events(viewer: TestClient, services: WebServices) -> None:
    first = _add(services, "access", "unknown")
    second = _add(services, "access", "granted", person_name="Ada")
    with viewer.stream("GET", "/api/events/stream", params={"after_id": first}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines: list[str] = []
        for line in r.iter_lines():
            lines.append(line)
            if line.startswith("data: "):
                break
    assert f"id: {second}" in lines and "event: event" in lines
    assert json.loads(lines[-1].removeprefix("data: "))["person_name"] == "Ada"


def test_stream_needs_a_login(services: WebServices) -> None:
    with client_for(services, None) as anonymous:
        assert anonymous.get("/api/events/stream").status_code == 401


def test_stream_resumes_from_last_event_id(viewer: TestClient, services: WebServices) -> None:
    first = _add(services, "access", "unknown")
    second = _add(services, "access", "denied")
    with viewer.stream("GET", "/api/events/stream", headers={"Last-Event-ID": str(first)}) as r:
        data = next(line for line in r.iter_lines() if line.startswith("data: "))
    assert json.loads(data.removeprefix("data: "))["id"] == second


def test_stream_ends_when_the_session_does(
    viewer: TestClient, services: WebServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kiosk.web import api

    monkeypatch.setattr(api, "SSE_HEARTBEAT_S", 0.01)
    lines: list[str] = []

    def read() -> None:
        with viewer.stream("GET", "/api/events/stream") as r:
            for line in r.iter_lines():
                lines.append(line)
                if line.startswith("retry:"):
                    services.accounts.logout(str(viewer.cookies.get("kiosk_session")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=30)
    assert not reader.is_alive(), "the stream went on after the session ended"
    assert lines[0] == "retry: 2000" and not any(line.startswith("data:") for line in lines)
