"""`kiosk hub` and `kiosk fleet` as an installer uses them: doors registered with credentials files, `kiosk hub serve`
as its own process with its embedded broker, doors added and removed while it runs, status and live commands."""

from __future__ import annotations

import asyncio
import json
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kiosk.errors import ExitCode
from kiosk.fleet.broker import free_port
from kiosk.fleet.door import FleetDoor
from kiosk.fleet.secrets import read_bundle
from kiosk.gallery import Gallery
from tests.fleet_site import MODEL, running, until
from tests.helpers import run_cli


def hub_config(tmp_path: Path, port: int, **hub: Any) -> Path:
    data = tmp_path / "hub"
    data.mkdir(mode=0o700)
    key = data / "site.key"
    key.write_text("ab" * 32 + "\n")
    key.chmod(0o600)
    extra = "".join(f"  {k}: {v}\n" for k, v in hub.items())
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(
        f"data_dir: {data}\ngallery:\n  encrypt: true\n  key_file: {key}\n"
        f"hub:\n  server: nats://127.0.0.1:{port}\n  heartbeat_timeout_s: 5\n{extra}screen:\n  enabled: false\n"
    )
    return cfg


def status(cfg: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, Any]]:
    code, out, err = run_cli(cfg, capsys, "fleet", "status", "--json")
    assert code == 0, err
    return {d["door"]: d for d in json.loads(out)["doors"]}


def test_add_door_writes_private_credentials_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = hub_config(tmp_path, free_port())
    out = tmp_path / "front.door.json"
    code, text, _ = run_cli(cfg, capsys, "hub", "add-door", "front", "--out", str(out))
    assert code == 0 and "front.door.json" in text
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    secret = read_bundle(out)
    assert secret.door == "front" and len(secret.door_key) == 32 and secret.ca_pem is None  # loopback: no TLS
    assert secret.password not in text and secret.door_key.hex() not in text  # never printed
    code, _, err = run_cli(cfg, capsys, "hub", "add-door", "front", "--out", str(tmp_path / "again.json"))
    assert code == ExitCode.CONFIG and "already has credentials" in err
    code, _, err = run_cli(cfg, capsys, "hub", "add-door", "Front Door!")
    assert code == ExitCode.CONFIG and "door id" in err
    assert status(cfg, capsys)["front"]["online"] is False
    assert run_cli(cfg, capsys, "hub", "remove-door", "front")[0] == 0
    code, _, err = run_cli(cfg, capsys, "hub", "remove-door", "front")
    assert code != 0 and "no door 'front'" in err


def test_the_hub_needs_the_site_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "plain.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'd'}\n")
    code, _, err = run_cli(cfg, capsys, "hub", "serve")
    assert code == ExitCode.CONFIG and "gallery.encrypt" in err


def test_a_command_to_an_unreachable_site_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = hub_config(tmp_path, free_port())
    code, _, err = run_cli(cfg, capsys, "fleet", "unlock", "front")
    assert code != 0 and "cannot reach the site broker" in err and "Traceback" not in err


def test_hub_serve_with_doors_added_and_removed_while_it_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    cfg = hub_config(tmp_path, port, tls="on")
    assert run_cli(cfg, capsys, "hub", "add-door", "front", "--out", str(tmp_path / "front.json"))[0] == 0
    front = read_bundle(tmp_path / "front.json")
    assert front.ca_pem is not None and "BEGIN CERTIFICATE" in front.ca_pem  # tls: on: the door pins the hub's cert
    log = (tmp_path / "hub.log").open("wb")
    hub = subprocess.Popen([sys.executable, "-m", "kiosk", "--config", str(cfg), "hub", "serve"], stdout=log,
                           stderr=subprocess.STDOUT)  # fmt: skip
    url = f"tls://127.0.0.1:{port}"
    unlocked: list[tuple[str, str]] = []

    def door(secret_path: Path) -> FleetDoor:
        secret = read_bundle(secret_path)
        path = tmp_path / secret.door / "gallery.db"
        path.parent.mkdir(exist_ok=True)

        def unlock(actor: str, reason: str) -> dict[str, Any]:
            unlocked.append((actor, reason))
            return {"pulse_s": 3.0}

        return FleetDoor(secret, lambda: Gallery(path), url=url, state_dir=path.parent / "fleet", model=MODEL,
                         heartbeat_s=0.5, reconnect_s=0.2, on_unlock=unlock)  # fmt: skip

    try:

        async def main() -> None:
            d_front = door(tmp_path / "front.json")
            async with running(d_front):
                await until(lambda: d_front.replica is not None, 60, "front has the site key")
                await until(lambda: status(cfg, capsys)["front"]["online"], 20, "front online at the hub")
                code, out, _ = await asyncio.to_thread(
                    run_cli, cfg, capsys, "fleet", "unlock", "front", "--reason", "delivery"
                )
                assert code == 0 and "unlocked" in out and unlocked and unlocked[-1][1] == "delivery"
                # A door added while the hub runs: the hub reloads its broker's users within seconds.
                assert run_cli(cfg, capsys, "hub", "add-door", "back", "--out", str(tmp_path / "back.json"))[0] == 0
                d_back = door(tmp_path / "back.json")
                async with running(d_back):
                    await until(lambda: d_back.replica is not None, 30, "back connects")
                    assert (await asyncio.to_thread(run_cli, cfg, capsys, "fleet", "ping", "back"))[0] == 0
                assert run_cli(cfg, capsys, "hub", "remove-door", "back")[0] == 0
                d_back = door(tmp_path / "back.json")
                async with running(d_back):
                    await asyncio.sleep(4.0)  # past the hub's check and reload: its user is gone
                    assert d_back.stats.connected is False
                    code, _, err = await asyncio.to_thread(run_cli, cfg, capsys, "fleet", "ping", "back")
                    assert code != 0 and "did not answer" in err

        asyncio.run(asyncio.wait_for(main(), 120))
    finally:
        hub.send_signal(signal.SIGTERM)
        try:
            code = hub.wait(timeout=20)
        except subprocess.TimeoutExpired:
            hub.kill()
            code = hub.wait()
        log.close()
    assert code == 0, (tmp_path / "hub.log").read_text()[-3000:]
    time.sleep(0)
