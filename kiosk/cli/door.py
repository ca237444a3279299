"""``kiosk door test | on-pulse | off``: check the relay wiring, and force it off (systemd ``ExecStopPost=``).

Only the door module is used here: no model, camera or gallery is opened, so ``kiosk door off`` is fast and works
whatever state a crashed ``kiosk run`` left behind.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from kiosk.config import Config, DoorConfig
from kiosk.door.relay import Door, open_door
from kiosk.errors import HardwareError

LOCK_WAIT_SLACK_S = 2.0  # how much longer than the pulse we wait for the off-timer before forcing the relay off


def register(sub: Any) -> None:
    p = sub.add_parser(
        "door", help="test the door relay or force it off", description="Test the door relay or force it off."
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    v = verbs.add_parser("test", help="pulse the relay once with door.pulse_s and report", description=cmd_test.__doc__)
    v.set_defaults(func=cmd_test)
    v = verbs.add_parser("on-pulse", help="unlock once, capped at door.max_pulse_s", description=cmd_on_pulse.__doc__)
    v.add_argument("--seconds", type=_seconds, help="pulse length (default door.pulse_s; capped at door.max_pulse_s)")
    v.set_defaults(func=cmd_on_pulse)
    v = verbs.add_parser("off", help="force the relay off (locked) now", description=cmd_off.__doc__)
    v.set_defaults(func=cmd_off)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text!r}")
    return value


def _describe(door: Door, cfg: DoorConfig) -> str:
    backend = getattr(door, "backend", cfg.driver)
    return f"driver {backend}, relay pin {cfg.relay_pin} (active {'high' if cfg.active_high else 'low'})"


def _pulse_and_wait(door: Door, seconds: float | None) -> tuple[float, float]:
    """Pulse, then wait for the driver's own off-timer to lock again; returns (length applied, seconds until locked)."""
    t0 = time.monotonic()
    applied = door.pulse(seconds)
    deadline = t0 + applied + LOCK_WAIT_SLACK_S
    while door.unlocked:
        if time.monotonic() > deadline:
            door.off()
            raise HardwareError(
                f"the relay did not lock by itself within {applied + LOCK_WAIT_SLACK_S:.1f} s: forced off"
            )
        time.sleep(0.01)
    return applied, time.monotonic() - t0


def cmd_test(args: argparse.Namespace, cfg: Config) -> int:
    """Pulse the relay once for door.pulse_s, wait until its off-timer locks it again, and report what happened."""
    d = cfg.door
    with open_door(d) as door:
        print(f"door test: {_describe(door, d)}, pulse {d.pulse_s:g} s (max {d.max_pulse_s:g} s)", flush=True)
        applied, took = _pulse_and_wait(door, None)
    print(f"door test: unlocked for {applied:g} s, locked again after {took:.2f} s; relay released")
    if d.driver == "simulated":
        print("door test: simulated driver, no relay was switched (set door.driver in the config)")
    return 0


def cmd_on_pulse(args: argparse.Namespace, cfg: Config) -> int:
    """Unlock once for --seconds (default door.pulse_s, never more than door.max_pulse_s) and wait until locked."""
    d = cfg.door
    with open_door(d) as door:
        applied, took = _pulse_and_wait(door, args.seconds)
    capped = " (capped at door.max_pulse_s)" if args.seconds is not None and args.seconds > applied else ""
    print(f"door: unlocked for {applied:g} s{capped}, locked again after {took:.2f} s ({_describe(door, d)})")
    return 0


def cmd_off(args: argparse.Namespace, cfg: Config) -> int:
    """Force the relay off (locked) and release the pin. Run by systemd as ExecStopPost=, also after a crash."""
    d = cfg.door
    if d.driver == "osdp":  # NOTE: nothing to open: the port may be busy, and the panel owns the lock anyway
        print("door: driver osdp has no relay (the access panel owns the lock): nothing to switch off")
        return 0
    # NOTE: opening the driver already drives the relay off; off() and close() repeat it on purpose (belt and braces).
    with open_door(d) as door:
        door.off()
    print(f"door: relay off (locked), {_describe(door, d)}")
    return 0
