"""systemd/kiosk.service: ``systemd-analyze verify`` accepts it without a single warning, and the lines that keep the
door safe and stop restart loops are there. ``verify`` only warns on unknown keys and bad values (exit 0), so any
stderr output fails the test."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kiosk.errors import ExitCode

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "kiosk.service"
INSTALLED_KIOSK = "/opt/face-kiosk/.venv/bin/kiosk"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (apt install systemd)"
)


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = re.match(r"^\s*([A-Za-z]+)=(.*)$", line)
        if m:
            found.setdefault(m.group(1), []).append(m.group(2).strip())
    return found


@pytest.fixture(scope="module")
def local_unit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The unit with the installed kiosk path swapped for an executable that exists here (verify checks it)."""
    kiosk = shutil.which("kiosk") or str(Path(sys.executable).with_name("kiosk"))
    if not Path(kiosk).is_file():
        kiosk = sys.executable
    text = UNIT.read_text(encoding="utf-8")
    assert text.count(INSTALLED_KIOSK) == 2, "ExecStart and ExecStopPost should both run the installed kiosk"
    path = tmp_path_factory.mktemp("systemd") / "kiosk.service"
    path.write_text(text.replace(INSTALLED_KIOSK, kiosk), encoding="utf-8")
    return path


def test_unit_has_the_safety_lines() -> None:
    d = directives(UNIT.read_text(encoding="utf-8"))
    assert d["Type"] == ["notify"]
    assert d["NotifyAccess"] == ["main"]
    assert d["WatchdogSec"] == ["10"]
    assert d["Restart"] == ["on-failure"]
    prevent = {int(code) for code in d["RestartPreventExitStatus"][0].split()}
    assert {int(ExitCode.CONFIG), int(ExitCode.MODEL)} <= prevent
    assert d["ExecStart"] == [f"{INSTALLED_KIOSK} --config /etc/face-kiosk/config.yaml run"]
    assert d["ExecStopPost"] == [f"{INSTALLED_KIOSK} --config /etc/face-kiosk/config.yaml door off"]
    assert d["User"] == ["kiosk"] and d["Group"] == ["kiosk"]
    assert d["StateDirectory"] == ["face-kiosk"] and d["StateDirectoryMode"] == ["0700"]
    assert "OMP_NUM_THREADS=2" in d["Environment"]
    for key in ("StartLimitIntervalSec", "StartLimitBurst", "NoNewPrivileges", "ProtectSystem", "ProtectHome"):
        assert key in d, key
    # These would hide /dev/video* or /dev/gpiochip* from the service.
    for key in ("PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectClock"):
        assert key not in d, key


@needs_systemd_analyze
def test_systemd_analyze_verify_is_silent(local_unit: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(local_unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


@needs_systemd_analyze
def test_verify_catches_a_typo(local_unit: Path, tmp_path: Path) -> None:
    """The silence above means something: a misspelt key does produce stderr output."""
    assert SYSTEMD_ANALYZE is not None
    broken = tmp_path / "kiosk.service"
    broken.write_text(local_unit.read_text(encoding="utf-8").replace("WatchdogSec=", "WatchDogSec="), encoding="utf-8")
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(broken)], capture_output=True, text=True, timeout=60, check=False
    )
    assert "WatchDogSec" in result.stderr
