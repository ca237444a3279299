"""``kiosk demo --web`` (``make demo``): the demo clip on a loop with ``kiosk web`` beside it, the URLs printed, and
both processes gone after Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import pytest

from tests.mjpeg_server import free_port

pytestmark = pytest.mark.slow


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


def _wait(predicate, timeout_s: float, what: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"demo exited ({proc.returncode}) before {what}:\n{out}")
        try:
            if predicate():
                return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_web_demo_serves_the_door_screen_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    data = tmp_path / "demo"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiosk", "demo", "--web", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:

        def loop_up() -> bool:
            status, body = _get(f"{base}/api/health")
            return status == 200 and json.loads(body).get("loop") == "up"

        _wait(loop_up, 240, "the door loop to be up behind kiosk web", proc)
        status, page = _get(f"{base}/door")
        assert status == 200 and b"door" in page
        assert (data / "config.yaml").is_file() and (data / "astronaut.png").is_file()
        # The newcomer's path: an admin account from the printed command, a login, the astronaut enrolled from
        # the demo's photo (the coffee refused), and the replay lets her in.
        made = subprocess.run(
            [sys.executable, "-m", "kiosk", "--config", str(data / "config.yaml"), "web", "user", "add", "admin",
             "--role", "admin"],
            input="demo-admin-password\n", capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        client = httpx.Client(base_url=base, timeout=60.0)
        login = client.post("/api/session", json={"username": "admin", "password": "demo-admin-password"})
        assert login.status_code == 200, login.text
        token = login.json()["csrf_token"]
        files = [
            ("photos", ("astronaut.png", (data / "astronaut.png").read_bytes(), "image/png")),
            ("photos", ("coffee.png", (data / "coffee.png").read_bytes(), "image/png")),
        ]
        refused = client.post("/api/people", data={"name": "Eileen"}, files=files, headers={"X-CSRF-Token": token})
        assert refused.status_code == 422, refused.text  # all or nothing: the coffee has no face
        codes = [v["code"] for v in refused.json()["verdicts"]]
        assert codes == ["ok", "no-face"], codes
        enrolled = client.post("/api/people", data={"name": "Eileen"}, files=files[:1], headers={"X-CSRF-Token": token})
        assert enrolled.status_code == 201, enrolled.text

        def let_in() -> bool:
            events = client.get("/api/events", params={"outcome": "granted", "limit": 5}).json()["events"]
            return any(e.get("person_name") == "Eileen" for e in events)

        _wait(let_in, 120, "the enrolled astronaut to be let in on the replay", proc)
        client.close()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # this test's own process group, started above
            proc.communicate()
    assert proc.returncode == 0, out
    assert f"door screen:  {base}/door" in out
    assert f"admin app:    {base}/" in out
    assert "web user add admin --role admin" in out
    assert "astronaut.png" in out
    # kiosk web went with it: nothing answers on the port any more.
    with pytest.raises((urllib.error.URLError, OSError)):
        urllib.request.urlopen(f"{base}/api/health", timeout=2.0)
