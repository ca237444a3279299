"""Peak memory and page times of ``kiosk web``: the real command, started as a child process, used like an admin would.

``python -m tools web-rss [--rounds N] [--json OUT]``

In a throwaway data directory: an admin account is made with ``kiosk web user add`` (password on stdin), ``kiosk web``
is started on a free loopback port (plain HTTP, or ``--tls`` for HTTPS with its self-signed certificate), the tool
logs in, enrols one person from a photo through ``POST /api/people`` (which starts the model worker,
``kiosk.web.worker``, and loads the detector and the recogniser there), then loads the door screen, the admin pages
and the JSON API ``--rounds`` times. It reads the server's peak resident set size (``VmHWM``) and current RSS from
``/proc/<pid>/status``, the model worker's peak the same way (a child of the server, sampled while it lives), the time
of each request (median and slowest, over the rounds), then stops the server with SIGTERM. A figure, not a test:
nothing here is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kiosk.lab.machine import describe
from tools.errors import ToolError, run_tool
from tools.measure.webproc import child_process

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "measure-web-rss-password"
# Pages and API calls an admin session makes; a route that is not there (404) is still timed and reported.
PATHS = (
    "/door",
    "/",
    "/people",
    "/people/1",
    "/events",
    "/system",
    "/api/session",
    "/api/health",
    "/api/people",
    "/api/events?limit=50",
    "/api/system",
)


def _status(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS of a process, in kB."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            found[key] = int(value.split()[0])
    return found


def _workers(parent: int) -> list[int]:
    """The model workers among ``parent``'s children (multiprocessing's spawned children, not its resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if int(stat.rpartition(")")[2].split()[1]) == parent and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


class WorkerWatch:
    """Samples the peak RSS (VmHWM) of every model worker ``kiosk web`` starts, until stopped."""

    def __init__(self, parent: int, every_s: float = 0.1) -> None:
        self.parent, self.every_s = parent, every_s
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            for pid in _workers(self.parent):
                with contextlib.suppress(OSError, ValueError):  # it exited between the listing and the read
                    self.peaks[pid] = max(self.peaks.get(pid, 0), _status(pid).get("VmHWM", 0))
            if self._stop.wait(self.every_s):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _kiosk(cfg: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "kiosk", "-c", str(cfg), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def measure(rounds: int, tls: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kiosk-web-rss-") as tmp:
        folder = Path(tmp)
        cfg = folder / "kiosk.yaml"
        scheme = "https" if tls else "http"
        cfg.write_text(f"data_dir: {folder / 'data'}\nweb:\n  listen: ['{scheme}://127.0.0.1:0']\n", encoding="utf-8")
        made = _kiosk(cfg, "web", "user", "add", "admin", "--role", "admin", stdin=PASSWORD + "\n")
        if made.returncode != 0:
            raise ToolError(f"kiosk web user add failed: {made.stderr.strip()}")
        argv = [sys.executable, "-m", "kiosk", "-c", str(cfg), "web"]
        with child_process(argv, os.environ | {"PYTHONPATH": str(ROOT)}) as web:
            m = web.wait_for(r"on https?://127\.0\.0\.1:(\d+)/", timeout_s=120)
            if m is None:
                code = web.proc.poll()
                why = f"stopped with {code}" if code is not None else "did not start within 120 s"
                raise ToolError(f"kiosk web {why}: {web.text().strip()[-500:]}")
            started = _status(web.proc.pid)
            watch = WorkerWatch(web.proc.pid)
            times = _exercise(int(m.group(1)), tls, folder / "data" / "tls" / "cert.pem", rounds)
            final = _status(web.proc.pid)
            watch.stop()
    return {
        "command": "kiosk web" + (" (TLS)" if tls else ""),
        "rounds": rounds,
        "rss_after_start_mb": round(started["VmRSS"] / 1024, 1),
        "rss_end_mb": round(final["VmRSS"] / 1024, 1),
        "peak_rss_mb": round(final["VmHWM"] / 1024, 1),
        "worker_peak_rss_mb": round(max(watch.peaks.values()) / 1024, 1) if watch.peaks else None,
        "workers_started": len(watch.peaks),
        "requests": times,
        "python": sys.version.split()[0],
        "machine": describe(),
    }


def _photo() -> bytes:
    """The public-domain astronaut (scikit-image, as in ``kiosk demo``), head and shoulders, as a JPEG."""
    import cv2

    from kiosk.lab.demo import skimage_image

    ok, jpeg = cv2.imencode(".jpg", skimage_image("astronaut")[20:260, 120:360])
    if not ok:
        raise ToolError("cannot encode the enrolment photo")
    return bytes(jpeg.tobytes())


def _multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "kiosk-web-rss-boundary"
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _exercise(port: int, tls: bool, cert: Path, rounds: int) -> dict[str, dict[str, Any]]:
    conn: http.client.HTTPConnection
    if tls:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", port, context=ssl.create_default_context(cafile=str(cert)), timeout=60
        )
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(
        method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, float, http.client.HTTPResponse, bytes]:
        t0 = time.perf_counter()
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, (time.perf_counter() - t0) * 1000, r, data

    login = json.dumps({"username": "admin", "password": PASSWORD}).encode()
    status, login_ms, response, data = call("POST", "/api/session", login, {"content-type": "application/json"})
    if status != 200:
        raise ToolError(f"login failed with {status}")
    cookie = (response.getheader("set-cookie") or "").split(";")[0]
    csrf = str(json.loads(data)["csrf_token"])
    out = {"POST /api/session": {"status": 200, "median_ms": round(login_ms, 1), "max_ms": round(login_ms, 1)}}
    body, content_type = _multipart({"name": "Eileen"}, {"photos": ("astronaut.jpg", _photo())})
    headers = {"cookie": cookie, "x-csrf-token": csrf, "content-type": content_type}
    status, enrol_ms, _, data = call("POST", "/api/people", body, headers)
    if status != 201:
        raise ToolError(f"enrolment failed with {status}: {data[:300]!r}")
    out["POST /api/people (first enrolment: starts the model worker)"] = {
        "status": status,
        "median_ms": round(enrol_ms, 1),
        "max_ms": round(enrol_ms, 1),
    }
    samples: dict[str, list[float]] = {p: [] for p in PATHS}
    statuses: dict[str, int] = {}
    for _ in range(rounds):
        for path in PATHS:
            status, ms, _, _ = call("GET", path, headers={"cookie": cookie})
            samples[path].append(ms)
            statuses[path] = status
    conn.close()
    for path, values in samples.items():
        out[f"GET {path}"] = {
            "status": statuses[path],
            "median_ms": round(statistics.median(values), 1),
            "max_ms": round(max(values), 1),
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools web-rss", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="times each page and API call is loaded (default 20)")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS with the self-signed certificate")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the figures as JSON")
    args = parser.parse_args(argv)

    def body() -> int:
        if args.rounds < 1:
            raise ToolError("--rounds: must be at least 1", code=2)
        result = measure(args.rounds, args.tls)
        print(
            f"{result['command']}: peak RSS {result['peak_rss_mb']} MB (VmHWM), {result['rss_end_mb']} MB at the end, "
            f"{result['rss_after_start_mb']} MB after start"
        )
        if result["worker_peak_rss_mb"] is not None:
            print(
                f"model worker: peak RSS {result['worker_peak_rss_mb']} MB (VmHWM, "
                f"{result['workers_started']} worker(s) started)"
            )
        width = max(len(k) for k in result["requests"])
        for name, r in result["requests"].items():
            print(f"  {name:<{width}}  {r['status']}  median {r['median_ms']:7.1f} ms  max {r['max_ms']:7.1f} ms")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        return 0

    return run_tool("web-rss", body)


if __name__ == "__main__":
    sys.exit(main())
