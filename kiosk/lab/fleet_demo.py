"""``kiosk demo --fleet``: a site on one machine — a hub and two doors, each its own processes, as on real hardware.

In a throwaway folder it makes the hub's encrypted gallery and site key, registers doors ``front`` and ``back`` with
``kiosk hub add-door``'s own code, starts ``kiosk hub serve`` (which runs nats-server from the fleet extra) and, for
each door, ``kiosk run`` on the demo clip replayed in a loop with a simulated relay and ``kiosk fleet run``, its
agent (the door loop itself has no network). Then, watching the events as the hub
receives them from the doors:

1. nobody is enrolled: both doors turn the astronaut away;
2. the astronaut is enrolled **at the hub**, from one photo: both doors let her in (after her blink);
3. she is removed **at the hub**: both doors turn her away again.

Every process is ended by its own PID at the end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import yaml

from kiosk.config import Config, load_config
from kiosk.errors import ExitCode, KioskError

DOORS = ("front", "back")
START_TIMEOUT_S = 180.0  # the doors load their models: slow on a small machine with three processes starting
PHASE_TIMEOUT_S = 120.0


def _write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _configs(root: Path, cfg: Config, clip: Path, port: int) -> dict[str, Path]:
    from kiosk.gallery.keys import generate_key_file
    from kiosk.lab.demo import DEMO_CHALLENGE_S

    models = {"manifest": str(cfg.models.manifest)} if cfg.models.manifest else {}
    hub_dir = root / "hub"
    hub_dir.mkdir(mode=0o700)
    generate_key_file(hub_dir / "site.key")
    paths = {
        "hub": _write_yaml(
            root / "hub.yaml",
            {
                "data_dir": str(hub_dir),
                "models": models,
                "gallery": {"encrypt": True, "key_file": str(hub_dir / "site.key")},
                # TLS on loopback too: the demo shows the doors pinning the hub's own certificate
                "hub": {"server": f"tls://127.0.0.1:{port}", "heartbeat_timeout_s": 5, "tls": "on"},
                "screen": {"enabled": False},
            },
        )
    }
    for door in DOORS:
        data = root / door
        data.mkdir(mode=0o700)
        paths[door] = _write_yaml(
            root / f"{door}.yaml",
            {
                "data_dir": str(data),
                "models": models,
                "door": {"driver": "simulated"},
                "camera": {"source": str(clip), "replay_realtime": True, "loop_replay": True},
                "liveness": {
                    "mode": "active",
                    "active": {"timeout_s": DEMO_CHALLENGE_S, "challenges": ["blink"], "steps": 1},
                },
                "screen": {"enabled": True},  # the loop's control socket: the fleet agent's reload and unlock
                "fleet": {
                    "enabled": True,
                    "server": f"tls://127.0.0.1:{port}",
                    "credentials_file": str(root / f"{door}.door.json"),
                    "heartbeat_s": 1.0,
                },
            },
        )
    return paths


@contextlib.contextmanager
def _process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait(check: Callable[[], Any], timeout_s: float, what: str, procs: list[subprocess.Popen[bytes]]) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise KioskError(
                    f"demo: process {p.pid} exited with status {p.returncode} (see the logs in the folder)"
                )
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise KioskError(f"demo: timed out after {timeout_s:.0f} s waiting for {what}")


def run_fleet_demo(cfg: Config, *, as_json: bool = False, keep: Path | None = None) -> tuple[int, dict[str, Any]]:
    """Run the site demo; the exit status and its record (``--json``)."""
    from kiosk.context import Context
    from kiosk.enroll import enroll
    from kiosk.fleet import hubdb
    from kiosk.fleet.broker import free_port
    from kiosk.fleet.secrets import write_bundle
    from kiosk.fleet.service import door_ca, hub_secrets, status
    from kiosk.gallery.open import open_gallery
    from kiosk.lab.demo import DEMO_CHALLENGE_S, FPS, _astronaut_frames, build_clip, skimage_image

    out: dict[str, Any] = {"phases": []}

    def say(text: str) -> None:
        if not as_json:
            print(text, flush=True)

    with tempfile.TemporaryDirectory(prefix="kiosk-site-") as tmp:
        root = (keep or Path(tmp)).resolve()
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        photo = skimage_image("astronaut")[20:260, 120:360]
        cv2.imwrite(str(root / "astronaut.png"), photo)
        import dataclasses

        live = dataclasses.replace(cfg.liveness.active, timeout_s=DEMO_CHALLENGE_S, challenges=("blink",), steps=1)
        with Context(
            dataclasses.replace(cfg, liveness=dataclasses.replace(cfg.liveness, mode="active", active=live))
        ) as ctx:
            held, blinking = _astronaut_frames(ctx, photo)
        clip = root / "door.avi"
        clip_s = sum(build_clip(clip, held, blinking).values()) / FPS
        paths = _configs(root, cfg, clip, free_port())
        hub_cfg = load_config(paths["hub"])
        for door in DOORS:  # what `kiosk hub add-door` does
            secret = dataclasses.replace(hub_secrets(hub_cfg).add_door(door), ca_pem=door_ca(hub_cfg))
            write_bundle(root / f"{door}.door.json", secret)
        with open_gallery(hub_cfg, check=False) as g:
            hubdb.install(g)
            for door in DOORS:
                hubdb.add_door(g, door)

        def events(door: str, after: int = 0) -> list[dict[str, Any]]:
            with open_gallery(hub_cfg, check=False, need_key=False) as g:
                rows = g._rows(
                    "SELECT seq, kind, outcome, person_name FROM fleet_events WHERE door = ? AND seq > ? "
                    "AND kind = 'access' ORDER BY seq",
                    [door, after],
                )
            return rows

        def last_seq(door: str) -> int:
            with open_gallery(hub_cfg, check=False, need_key=False) as g:
                rows = g._rows("SELECT max(seq) AS m FROM fleet_events WHERE door = ?", [door])
            return int(rows[0]["m"] or 0)

        def granted(after: dict[str, int]) -> Callable[[], bool]:
            """Both doors let the astronaut in after ``after``."""
            return lambda: all(
                any(e["outcome"] == "granted" and e["person_name"] == "astronaut" for e in events(d, after[d]))
                for d in DOORS
            )

        def in_sync() -> bool:
            with open_gallery(hub_cfg, check=False, need_key=False) as g:
                return all(r["in_sync"] and r["lag"] == 0 for r in status(hub_cfg, g))

        def refused_for_a_whole_clip(after: dict[str, int]) -> Callable[[], bool]:
            """Once both doors hold the hub's gallery: one whole pass of the clip (the astronaut's photo, her blink,
            the stranger) with denials and no grant at either door."""
            start: dict[str, float] = {}

            def check() -> bool:
                if not start:
                    if not in_sync():
                        return False
                    start["t"] = time.monotonic()
                    after.update({d: last_seq(d) for d in DOORS})
                if time.monotonic() - start["t"] < clip_s + 2.0:
                    return False
                seen = {d: events(d, after[d]) for d in DOORS}
                if any(e["outcome"] == "granted" for d in DOORS for e in seen[d]):
                    raise KioskError("demo: a door let someone in who is not enrolled at the hub")
                return all(any(e["outcome"] == "denied" for e in seen[d]) for d in DOORS)

            return check

        kiosk = [sys.executable, "-m", "kiosk", "--config"]
        say(f"face-kiosk site demo: a hub and two doors on this machine (folder {root})")
        with contextlib.ExitStack() as stack:
            hub = stack.enter_context(_process([*kiosk, str(paths["hub"]), "hub", "serve"], root / "hub.log"))
            say(f"  hub        pid {hub.pid}: kiosk hub serve (its nats-server on {hub_cfg.hub.server})")
            procs = [hub]
            for door in DOORS:
                p = stack.enter_context(_process([*kiosk, str(paths[door]), "run"], root / f"{door}.log"))
                a = stack.enter_context(
                    _process([*kiosk, str(paths[door]), "fleet", "run"], root / f"{door}-fleet.log")
                )
                procs += [p, a]
                say(f"  door {door:5} pid {p.pid}: kiosk run, the demo clip on a loop, simulated relay; "
                    f"pid {a.pid}: kiosk fleet run, its agent")  # fmt: skip

            def online() -> bool:
                with open_gallery(hub_cfg, check=False, need_key=False) as g:
                    return all(r["online"] for r in status(hub_cfg, g)) and len(status(hub_cfg, g)) == 2

            _wait(online, START_TIMEOUT_S, "both doors online at the hub", procs)
            say("  both doors are online at the hub\n")

            def nothing() -> None:
                return None

            def enrol() -> None:
                with Context(hub_cfg) as ctx:
                    enroll(ctx.pipeline, ctx.gallery, "astronaut", [root / "astronaut.png"])

            def remove() -> None:
                with open_gallery(hub_cfg, check=False) as g:
                    g.remove("astronaut")

            steps: list[tuple[str, Callable[[], None], Callable[[dict[str, int]], Callable[[], bool]]]] = [
                ("nobody enrolled: both doors turn the astronaut away", nothing, refused_for_a_whole_clip),
                ("astronaut enrolled at the hub: both doors let her in", enrol, granted),
                ("astronaut removed at the hub: both doors turn her away", remove, refused_for_a_whole_clip),
            ]
            for title, action, done in steps:
                action()
                t0 = time.monotonic()
                after = {d: last_seq(d) for d in DOORS}
                _wait(done(after), PHASE_TIMEOUT_S, title, procs)
                took = time.monotonic() - t0
                seen = {d: [f"{e['outcome']} {e['person_name'] or 'unknown face'}" for e in events(d, after[d])]
                        for d in DOORS}  # fmt: skip
                out["phases"].append({"phase": title, "seconds": round(took, 1), "events": seen})
                say(f"  ok  {title} (checked within {took:.0f} s)")
                for d in DOORS:
                    say(f"        {d:5}: " + ", ".join(seen[d]))
            with open_gallery(hub_cfg, check=False, need_key=False) as g:
                out["status"] = status(hub_cfg, g)
                out["chains"] = hubdb.chain_report(g)
        codes = [p.returncode for p in procs]
        out["exit_codes"] = codes
        say("\n" + "  ".join(f"{r['door']}: rev {r['rev']}, in sync {r['in_sync']}, events at hub {r['events_at_hub']}"
                             for r in out["status"]))  # fmt: skip
        intact = all(c["broken_at"] is None for c in out["chains"].values())
        out["as_expected"] = len(out["phases"]) == 3 and intact and all(c == 0 for c in codes)
        say(f"every door's event chain verified at the hub: {intact}; processes stopped: exit codes {codes}")
    return (0 if out["as_expected"] else int(ExitCode.FAILURE)), out
