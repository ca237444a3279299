"""The README's site demo, end to end: `kiosk hub serve` and two `kiosk run` doors as their own processes, an
enrolment at the hub lets the astronaut in at both doors and a removal turns her away at both."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_the_site_demo_enrols_and_removes_at_the_hub() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kiosk", "demo", "--fleet", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    record = json.loads(proc.stdout)
    assert record["as_expected"], record
    phases = record["phases"]
    assert [p["phase"].split(":")[0] for p in phases] == [
        "nobody enrolled",
        "astronaut enrolled at the hub",
        "astronaut removed at the hub",
    ]
    for door in ("front", "back"):
        assert "granted astronaut" in phases[1]["events"][door]
        assert not any(e.startswith("granted") for e in phases[0]["events"][door] + phases[2]["events"][door])
    assert {r["door"]: (r["online"], r["in_sync"], r["lag"]) for r in record["status"]} == {
        "front": (True, True, 0),
        "back": (True, True, 0),
    }
    assert record["exit_codes"] == [0] * 5  # the hub, and each door's loop and fleet agent
