"""The door relay: fail-secure rules on gpiozero's MockFactory (whole pin timelines), a fake Jetson.GPIO, the
simulated driver, input events with an injected clock, errors that name the pin and the fix, and ``kiosk door``."""

from __future__ import annotations

import argparse
import importlib.abc
import logging
import math
import subprocess
import sys
import threading
import time
import types
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from gpiozero import Device, OutputDevice
from gpiozero.exc import BadPinFactory, PinFactoryFallback
from gpiozero.pins.mock import MockFactory, MockPin

from kiosk.cli import door as door_cli
from kiosk.config import Config, DoorConfig
from kiosk.door.relay import DOOR_DRIVERS, GpiozeroDoor, RelayDoor, SimulatedDoor, open_door
from kiosk.errors import ConfigError, HardwareError
from kiosk.testing import ManualClock
from tests.helpers import no_new_threads

RELAY, CONTACT, EXIT = 17, 27, 22
PULSE, MAX = 0.1, 0.2
# Scheduling jitter allowed on a loaded CI machine. The off-timer starts just *before* the relay goes on (fail-secure),
# so the measured on-time can also come out a little short of the pulse, never meaningfully long.
SLACK = 0.15
EARLY = 0.05


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Every timer a test starts must be over when the test ends."""
    with no_new_threads(join_timeout=2.0):
        yield


@pytest.fixture(autouse=True)
def isolated_default_factory(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # gpiozero keeps its default factory in a class attribute; no test may leave one behind.
    monkeypatch.setattr(Device, "pin_factory", None)
    yield
    if Device.pin_factory is not None:
        Device.pin_factory.close()


def door_cfg(**kw: Any) -> DoorConfig:
    return DoorConfig(**({"driver": "gpiozero", "relay_pin": RELAY, "pulse_s": PULSE, "max_pulse_s": MAX} | kw))


def wait_locked(door: Any, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while door.unlocked and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not door.unlocked, "relay still on"


def states(pin: MockPin) -> list[bool]:
    return [s.state for s in pin.states]


def on_time(pin: MockPin) -> float:
    """How long the pin stayed in its last-but-one state (each PinState holds the time since the previous change)."""
    return float(pin.states[-1].timestamp)


# -- fail-secure rules, on MockFactory pin timelines ------------------------------------------------------------------


def test_relay_driven_off_at_construction_even_if_left_on(factory: MockFactory) -> None:
    pin = factory.pin(RELAY)
    pin.output_with_state(True)  # a crashed run left the strike released
    pin.clear_states()
    with open_door(door_cfg(), pin_factory=factory) as door:
        assert states(pin) == [True, False]
        assert not door.unlocked


def test_pulse_is_ended_by_the_timer(factory: MockFactory) -> None:
    pin = factory.pin(RELAY)
    with open_door(door_cfg(), pin_factory=factory) as door:
        assert door.pulse() == PULSE
        assert door.unlocked and pin.state
        wait_locked(door)
        assert len(pin.states) == 3  # assert_states_and_times zips, so it would not notice a missing "off"
        pin.assert_states_and_times([(0.0, False), (0.0, True), (PULSE, False)])
        assert PULSE - EARLY <= on_time(pin) < PULSE + SLACK


def test_stalled_caller_cannot_hold_the_door_open(factory: MockFactory) -> None:
    pin = factory.pin(RELAY)
    pulsed, release = threading.Event(), threading.Event()
    with open_door(door_cfg(), pin_factory=factory) as door:

        def caller() -> None:
            door.pulse()
            pulsed.set()
            release.wait(5.0)  # the caller hangs after unlocking (stuck camera read, deadlock, ...)

        t = threading.Thread(target=caller)
        t.start()
        try:
            assert pulsed.wait(2.0)
            wait_locked(door, timeout=PULSE + 1.0)
            assert t.is_alive(), "the caller is still stalled, yet the relay is off"
        finally:
            release.set()
            t.join()
        assert states(pin) == [False, True, False]
        assert on_time(pin) < PULSE + SLACK


def test_pulse_is_capped_at_max_pulse_s(factory: MockFactory) -> None:
    pin = factory.pin(RELAY)
    with open_door(door_cfg(), pin_factory=factory) as door:
        assert door.pulse(999) == MAX
        wait_locked(door)
        assert states(pin) == [False, True, False]
        assert MAX - EARLY <= on_time(pin) < MAX + SLACK


def test_repulse_rearms_but_never_exceeds_max_from_the_latest_request(factory: MockFactory) -> None:
    pin = factory.pin(RELAY)
    with open_door(door_cfg(), pin_factory=factory) as door:
        door.pulse(MAX)
        time.sleep(0.1)
        t_last = time.monotonic()
        assert door.pulse(999) == MAX  # re-armed from now, still capped
        wait_locked(door)
        locked_after = time.monotonic() - t_last
        assert states(pin) == [False, True, False]  # one continuous unlock, no flicker
        assert MAX - 0.005 <= locked_after < MAX + SLACK
        assert 0.1 + MAX - EARLY <= on_time(pin) < 0.1 + MAX + SLACK


def test_off_locks_now_and_cancels_the_timer(factory: MockFactory) -> None:
    pin = factory.pin(RELAY)
    with open_door(door_cfg(), pin_factory=factory) as door:
        door.pulse(MAX)
        door.off()
        assert not door.unlocked and not pin.state
        assert on_time(pin) < 0.05
        time.sleep(MAX + 0.05)  # the cancelled timer must not touch the pin again
        assert states(pin) == [False, True, False]


def test_close_locks_releases_and_is_safe_twice(factory: MockFactory) -> None:
    pin = factory.pin(RELAY)
    door = open_door(door_cfg(), pin_factory=factory)
    door.pulse(MAX)
    door.close()
    assert states(pin) == [False, True, False] and on_time(pin) < 0.05
    door.close()
    door.off()  # harmless after close (runners call it in `finally`)
    with pytest.raises(HardwareError, match="closed"):
        door.pulse()
    OutputDevice(RELAY, pin_factory=factory).close()  # the pin was released


def test_exception_in_with_block_locks_at_once(factory: MockFactory) -> None:
    pin = factory.pin(RELAY)
    with pytest.raises(RuntimeError, match="boom"), open_door(door_cfg(), pin_factory=factory) as door:
        door.pulse(MAX)
        raise RuntimeError("boom")
    assert states(pin) == [False, True, False]
    assert on_time(pin) < 0.05  # locked by __exit__, not by the timer


def test_active_low_inverts_the_level(factory: MockFactory) -> None:
    pin = factory.pin(RELAY)
    with open_door(door_cfg(active_high=False), pin_factory=factory) as door:
        assert pin.state  # off = HIGH on an active-low relay board
        door.pulse()
        assert not pin.state
        wait_locked(door)
    assert states(pin) == [False, True, False, True]


@pytest.mark.parametrize("bad", [0, -1, math.nan])
def test_nonsense_pulse_lengths_are_refused(factory: MockFactory, bad: float) -> None:
    pin = factory.pin(RELAY)
    with open_door(door_cfg(), pin_factory=factory) as door:
        with pytest.raises(ValueError, match="longer than 0"):
            door.pulse(bad)
        assert states(pin) == [False]


# -- gpiozero: factory choice and errors -------------------------------------------------------------------------------


def test_named_mock_factory_is_owned_and_closed() -> None:
    with open_door(door_cfg(pin_factory="mock")) as door:
        assert isinstance(door, GpiozeroDoor) and door.backend == "gpiozero (mock)"
        door.pulse()
        wait_locked(door)


def test_gpiozero_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gpiozero", None)
    with pytest.raises(HardwareError, match=r"pip install 'face-kiosk\[pi\]'"):
        open_door(door_cfg())


def test_named_factory_that_cannot_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lgpio", None)
    monkeypatch.delitem(sys.modules, "gpiozero.pins.lgpio", raising=False)
    with pytest.raises(HardwareError, match=r"'lgpio' for relay pin 17.*face-kiosk\[pi\]"):
        open_door(door_cfg(pin_factory="lgpio"))


def test_env_factory_that_does_not_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "nosuchfactory")
    with pytest.raises(HardwareError, match=r"relay pin 17.*nosuchfactory.*face-kiosk\[pi\]") as err:
        open_door(door_cfg())
    assert isinstance(err.value.__cause__, BadPinFactory)


def test_default_factory_fallback_warnings_become_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    def off_a_pi() -> None:
        warnings.warn(PinFactoryFallback("Falling back from lgpio: No module named 'lgpio'"), stacklevel=1)
        raise BadPinFactory("Unable to load any default pin factory!")

    monkeypatch.setattr(Device, "_default_pin_factory", staticmethod(off_a_pi))
    # filterwarnings=error: a PinFactoryFallback escaping open_door would fail this test instead of HardwareError.
    with pytest.raises(HardwareError, match=r"Falling back from lgpio.*door.driver: simulated"):
        open_door(door_cfg())


def test_default_factory_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    with open_door(door_cfg()) as door:
        assert door.backend == "gpiozero (MockFactory (default))"
        assert isinstance(Device.pin_factory, MockFactory)


def test_invalid_pin_names_pin_and_factory(factory: MockFactory) -> None:
    with pytest.raises(HardwareError, match=r"relay pin 999 with gpiozero \(MockFactory\)"):
        open_door(door_cfg(relay_pin=999), pin_factory=factory)


def test_pin_in_use_is_a_hardware_error(factory: MockFactory) -> None:
    with open_door(door_cfg(), pin_factory=factory) as first:
        with pytest.raises(HardwareError, match="relay pin 17"):
            open_door(door_cfg(), pin_factory=factory)
        first.pulse()
        wait_locked(first)


def test_failed_setup_releases_the_relay(factory: MockFactory) -> None:
    pin = factory.pin(RELAY)
    pin.output_with_state(True)
    with pytest.raises(HardwareError, match="contact pin 999"):
        open_door(door_cfg(contact_pin=999), pin_factory=factory)
    assert not pin.state
    OutputDevice(RELAY, pin_factory=factory).close()  # released again


# -- inputs: contact and exit button, with an injected clock -----------------------------------------------------------


@pytest.fixture()
def inputs(factory: MockFactory) -> Iterator[tuple[RelayDoor, ManualClock, list[tuple[str, dict[str, Any]]]]]:
    clock, events = ManualClock(1000.0), []
    cfg = door_cfg(contact_pin=CONTACT, exit_button_pin=EXIT, held_open_s=5.0)
    door = open_door(cfg, pin_factory=factory, on_event=lambda k, d: events.append((k, d)), clock=clock)
    assert isinstance(door, RelayDoor)
    factory.pin(CONTACT).drive_low()  # the pull-up reads "open" until the mock contact is closed
    events.clear()
    yield door, clock, events
    door.close()


def test_contact_opened_while_locked_is_forced_open(factory: MockFactory, inputs: Any) -> None:
    door, clock, events = inputs
    factory.pin(CONTACT).drive_high()
    clock.advance(7.0)
    factory.pin(CONTACT).drive_low()
    assert events == [("door_forced_open", {}), ("door_closed", {"open_s": 7.0})]
    door.check()
    assert [k for k, _ in events] == ["door_forced_open", "door_closed"]


def test_open_after_a_grant_is_not_forced_but_can_be_held_open(factory: MockFactory, inputs: Any) -> None:
    door, clock, events = inputs
    door.pulse()
    clock.advance(0.5)
    factory.pin(CONTACT).drive_high()
    wait_locked(door)
    clock.advance(4.0)
    door.check()
    assert events == []
    clock.advance(1.5)
    door.check()
    door.check()  # reported once per opening
    assert events == [("door_held_open", {"open_s": 5.5, "held_open_s": 5.0})]
    factory.pin(CONTACT).drive_low()
    assert events[-1] == ("door_closed", {"open_s": 5.5})


def test_open_just_after_relock_is_within_the_grace(factory: MockFactory, inputs: Any) -> None:
    door, clock, events = inputs
    door.pulse()
    wait_locked(door)
    clock.advance(PULSE + 0.5)
    factory.pin(CONTACT).drive_high()
    assert events == []
    clock.advance(10)
    factory.pin(CONTACT).drive_low()
    factory.pin(CONTACT).drive_high()
    assert [k for k, _ in events] == ["door_closed", "door_forced_open"]  # the next opening is forced


def test_exit_button_pulses_and_reports(factory: MockFactory, inputs: Any) -> None:
    door, _, events = inputs
    relay = factory.pin(RELAY)
    factory.pin(EXIT).drive_low()  # pressed (pull-up button)
    assert events == [("exit_request", {"pulse_s": PULSE})]
    assert relay.state
    factory.pin(EXIT).drive_high()
    wait_locked(door)
    assert states(relay) == [False, True, False]


def test_contact_open_is_low_and_a_broken_event_sink(factory: MockFactory, caplog: pytest.LogCaptureFixture) -> None:
    def sink(kind: str, detail: dict[str, Any]) -> None:
        raise RuntimeError("database gone")

    cfg = door_cfg(contact_pin=CONTACT, contact_open_is_high=False)
    with open_door(cfg, pin_factory=factory, on_event=sink) as door:
        assert door.door_open is True  # pulled down: open until the contact closes
        factory.pin(CONTACT).drive_high()
        assert door.door_open is False
        factory.pin(CONTACT).drive_low()  # forced open; the sink raises, the door carries on
        assert "event callback failed for door_forced_open" in caplog.text
        door.pulse()
        wait_locked(door)


# -- simulated ---------------------------------------------------------------------------------------------------------


def test_simulated_logs_and_records_a_timeline(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kiosk.door.relay")
    clock = ManualClock(1000.0)
    with open_door(door_cfg(driver="simulated", pulse_s=0.05), clock=clock) as door:
        assert isinstance(door, SimulatedDoor)
        door.pulse()
        wait_locked(door)
        door.pulse(999)
        door.off()
    assert [(what, detail) for _, what, detail in door.timeline] == [
        ("lock", "startup"),
        ("unlock", "0.05 s"),
        ("lock", "timer"),
        ("unlock", "0.2 s"),
        ("lock", "off"),
        ("lock", "close"),
    ]
    assert {t for t, _, _ in door.timeline} == {1000.0}
    assert caplog.messages.count("door: LOCKED") == 2
    assert "door: UNLOCK for 0.2 s" in caplog.messages


def test_driver_table_and_unknown_driver() -> None:
    assert set(DOOR_DRIVERS) == {"simulated", "gpiozero", "jetson", "osdp"}
    with pytest.raises(ConfigError, match=r"door\.driver"):
        open_door(DoorConfig(driver="relayboard9000"))


def test_door_module_imports_no_hardware_or_model_library() -> None:
    heavy = "{'gpiozero', 'numpy', 'cv2', 'onnxruntime', 'Jetson', 'osdp_sys', 'serial'}"
    code = f"import sys, kiosk.door.relay; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


# -- jetson, with a fake Jetson.GPIO -----------------------------------------------------------------------------------


class FakeGPIO(types.ModuleType):
    BCM, OUT, IN, LOW, HIGH, BOTH, FALLING = "BCM", "out", "in", 0, 1, "both", "falling"

    def __init__(self) -> None:
        super().__init__("Jetson.GPIO")
        self.calls: list[tuple[Any, ...]] = []
        self.levels: dict[int, int] = {}
        self.callbacks: dict[int, Any] = {}
        self.fail_setup: Exception | None = None

    def setwarnings(self, flag: bool) -> None:
        self.calls.append(("setwarnings", flag))

    def setmode(self, mode: str) -> None:
        self.calls.append(("setmode", mode))

    def setup(self, pin: int, mode: str, initial: int | None = None) -> None:
        if self.fail_setup is not None and pin != RELAY:
            raise self.fail_setup
        self.calls.append(("setup", pin, mode, initial))
        if initial is not None:
            self.levels[pin] = initial

    def output(self, pin: int, level: int) -> None:
        self.calls.append(("output", pin, level))
        self.levels[pin] = level

    def input(self, pin: int) -> int:
        return self.levels[pin]

    def add_event_detect(self, pin: int, edge: str, callback: Any, bouncetime: int) -> None:
        self.callbacks[pin] = callback

    def remove_event_detect(self, pin: int) -> None:
        self.calls.append(("remove_event_detect", pin))

    def cleanup(self, pin: int) -> None:
        self.calls.append(("cleanup", pin))

    def set_input(self, pin: int, level: int) -> None:
        self.levels[pin] = level
        self.callbacks[pin](pin)


@pytest.fixture()
def fake_gpio(monkeypatch: pytest.MonkeyPatch) -> FakeGPIO:
    gpio = FakeGPIO()
    package = types.ModuleType("Jetson")
    package.GPIO = gpio
    monkeypatch.setitem(sys.modules, "Jetson", package)
    monkeypatch.setitem(sys.modules, "Jetson.GPIO", gpio)
    return gpio


@pytest.mark.parametrize(("active_high", "on", "off"), [(True, 1, 0), (False, 0, 1)])
def test_jetson_shares_the_pulse_logic(fake_gpio: FakeGPIO, active_high: bool, on: int, off: int) -> None:
    fake_gpio.levels[RELAY] = on  # left on by a crash
    door = open_door(door_cfg(driver="jetson", active_high=active_high))
    assert fake_gpio.calls[:3] == [("setwarnings", False), ("setmode", "BCM"), ("setup", RELAY, "out", off)]
    assert fake_gpio.levels[RELAY] == off
    assert door.pulse(999) == MAX
    assert fake_gpio.levels[RELAY] == on
    wait_locked(door)
    assert fake_gpio.levels[RELAY] == off
    door.close()
    door.close()
    outputs = [c[2] for c in fake_gpio.calls if c[0] == "output"]
    assert outputs == [off, on, off, off]  # startup, pulse, timer, close
    assert fake_gpio.calls[-1] == ("cleanup", RELAY)


def test_jetson_inputs(fake_gpio: FakeGPIO) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    fake_gpio.levels.update({CONTACT: 0, EXIT: 1})
    cfg = door_cfg(driver="jetson", contact_pin=CONTACT, exit_button_pin=EXIT)
    with open_door(cfg, on_event=lambda k, d: events.append((k, d)), clock=ManualClock(1000.0)) as door:
        fake_gpio.set_input(CONTACT, 1)
        fake_gpio.set_input(EXIT, 0)
        wait_locked(door)
        fake_gpio.set_input(CONTACT, 0)
    assert [k for k, _ in events] == ["door_forced_open", "exit_request", "door_closed"]
    assert ("remove_event_detect", CONTACT) in fake_gpio.calls and ("cleanup", EXIT) in fake_gpio.calls


def test_jetson_setup_error_releases_the_relay(fake_gpio: FakeGPIO) -> None:
    fake_gpio.fail_setup = RuntimeError("channel 27 is not a GPIO on this board")
    with pytest.raises(HardwareError, match=r"channel 27.*face-kiosk\[jetson\]"):
        open_door(door_cfg(driver="jetson", contact_pin=CONTACT))
    assert ("cleanup", RELAY) in fake_gpio.calls


class _NotAJetson(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name.startswith("Jetson"):
            raise RuntimeError("Could not determine Jetson model")


@pytest.mark.parametrize("how", ["missing", "not a jetson"])
def test_jetson_import_errors_name_the_extra(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    if how == "missing":
        monkeypatch.setitem(sys.modules, "Jetson", None)
    else:
        monkeypatch.delitem(sys.modules, "Jetson", raising=False)
        monkeypatch.delitem(sys.modules, "Jetson.GPIO", raising=False)
        monkeypatch.setattr(sys, "meta_path", [_NotAJetson(), *sys.meta_path])
    with pytest.raises(HardwareError, match=r"Jetson.GPIO.*pip install 'face-kiosk\[jetson\]'"):
        open_door(door_cfg(driver="jetson"))


# -- kiosk door --------------------------------------------------------------------------------------------------------


def run_cli(argv: list[str], door: DoorConfig) -> int:
    parser = argparse.ArgumentParser(prog="kiosk")
    door_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    code: int = args.func(args, Config(door=door))
    return code


def test_cli_verbs_have_help_and_descriptions() -> None:
    parser = argparse.ArgumentParser(prog="kiosk")
    sub = parser.add_subparsers()
    door_cli.register(sub)
    door_parser = sub.choices["door"]
    assert door_parser.description
    verbs = next(a for a in door_parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in verbs._choices_actions}
    assert set(verbs.choices) == {"test", "on-pulse", "off"}
    for name, p in verbs.choices.items():
        assert helps[name] and p.description, name


def test_cli_door_test(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["door", "test"], door_cfg(pin_factory="mock", pulse_s=0.05)) == 0
    out = capsys.readouterr().out
    assert "driver gpiozero (mock), relay pin 17 (active high), pulse 0.05 s (max 0.2 s)" in out
    assert "locked again after" in out


def test_cli_on_pulse_is_capped(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["door", "on-pulse", "--seconds", "99"], door_cfg(driver="simulated", active_high=False)) == 0
    out = capsys.readouterr().out
    assert "unlocked for 0.2 s (capped at door.max_pulse_s)" in out and "(active low)" in out


def test_cli_on_pulse_rejects_nonsense(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run_cli(["door", "on-pulse", "--seconds", "nan"], door_cfg(driver="simulated"))
    assert "above 0" in capsys.readouterr().err


def test_cli_door_off(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["door", "off"], door_cfg(pin_factory="mock")) == 0
    assert "relay off (locked)" in capsys.readouterr().out


def test_a_relay_that_cannot_be_locked_by_the_timer_stops_the_loop(
    factory: MockFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the off-timer's write fails, check() (called by the loop every frame) raises, so the process exits and
    systemd's ExecStopPost=door off gets a fresh process to lock the door."""
    from kiosk.errors import HardwareError

    with open_door(door_cfg(), pin_factory=factory) as door:
        door.check()  # healthy: nothing raised
        door.pulse()
        real_write = door._write

        def broken(on: bool, detail: str) -> None:
            if not on and detail == "timer":
                raise OSError("GPIO chip gone")
            real_write(on, detail)

        monkeypatch.setattr(door, "_write", broken)
        deadline = time.monotonic() + 2.0
        while door.fault is None and time.monotonic() < deadline:
            time.sleep(0.005)
        with pytest.raises(HardwareError, match="cannot switch off"):
            door.check()
        monkeypatch.setattr(door, "_write", real_write)
