"""Door relay control, fail-secure: the strike is locked unless a pulse is running, and every pulse ends by itself.

Drivers, chosen by ``door.driver``: ``simulated`` (logs, and records a timeline for tests and the demo), ``gpiozero``
(Raspberry Pi; the pin factory is injected, named in config, or gpiozero's default) and ``jetson`` (Jetson.GPIO).
They share one base class for the timer, the cap and the input logic; only pin I/O differs. Hardware libraries are
imported inside their driver. ``osdp`` (kiosk.door.osdp) drives no relay: it reports card reads to an access panel,
which owns the lock. Optional inputs: a door contact (``door_forced_open``, ``door_held_open``,
``door_closed`` events) and a request-to-exit button (``exit_request``; it also pulses the door).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import threading
import time
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

from kiosk.config import DoorConfig
from kiosk.door.osdp import OsdpReader
from kiosk.errors import ConfigError, HardwareError

log = logging.getLogger("kiosk.door.relay")

EventCallback = Callable[[str, dict[str, Any]], None]
Clock = Callable[[], float]

# NOTE: a door opened within this long after the relay locked again is not "forced": people push the door just as the
# strike re-engages, and contacts report a little late. Longer would hide real forced entries.
OPEN_GRACE_S = 1.0
BOUNCE_S = 0.05
PI_EXTRA = "pip install 'face-kiosk[pi]'"
JETSON_EXTRA = "pip install 'face-kiosk[jetson]'"
PIN_FACTORIES = {
    "lgpio": ("gpiozero.pins.lgpio", "LGPIOFactory"),
    "rpigpio": ("gpiozero.pins.rpigpio", "RPiGPIOFactory"),
    "pigpio": ("gpiozero.pins.pigpio", "PiGPIOFactory"),
    "native": ("gpiozero.pins.native", "NativeFactory"),
    "mock": ("gpiozero.pins.mock", "MockFactory"),
}


class Door(Protocol):
    unlocked: bool  # the level last commanded (True = relay on = strike released); read it, never set it

    def pulse(self, seconds: float | None = None) -> float: ...
    def off(self) -> None: ...
    def force_off(self, timeout_s: float = ...) -> bool: ...
    def check(self) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Door: ...
    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None: ...


class RelayDoor:
    """Pulse cap, off-timer and contact/exit-button logic shared by every driver. Drivers implement only pin I/O:
    ``_setup(pin_factory)``, ``_write(on, detail)`` and ``_release()`` (which must cope with a half-done setup)."""

    driver = "base"

    def __init__(
        self,
        cfg: DoorConfig,
        *,
        pin_factory: object | None = None,
        on_event: EventCallback | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.on_event = on_event
        self.clock = clock
        self.backend = self.driver
        self.unlocked = False
        self.door_open: bool | None = None  # None: no contact input configured
        self._lock = threading.RLock()
        self._closed = False
        self._gen = 0  # bumped by every pulse/off/close, so a timer that lost the race to cancel() does nothing
        self._relay_timer: threading.Timer | None = None
        self._held_timer: threading.Timer | None = None
        self._granted_until = -math.inf
        self._opened_at: float | None = None
        self._authorized_open = False
        self._held_reported = False
        self.fault: HardwareError | None = None  # the off-timer could not lock the relay: check() raises it
        try:
            self._setup(pin_factory)
            # NOTE: every driver drives the relay off as soon as it owns the pin, whatever a crashed run left on it.
            self._set(False, "startup")
        except BaseException:
            with contextlib.suppress(Exception):  # the original error is the one worth reporting
                self._release()
            raise

    def _setup(self, pin_factory: object | None) -> None: ...  # driver hooks: claim the pins, drive one, release all
    def _write(self, on: bool, detail: str) -> None: ...
    def _release(self) -> None: ...

    def _set(self, on: bool, detail: str) -> None:
        was = self.unlocked
        try:
            self._write(on, detail)
        except Exception as exc:
            msg = f"door relay pin {self.cfg.relay_pin} ({self.backend}): cannot switch {'on' if on else 'off'}: {exc}"
            if not on:
                log.critical(msg)
            raise HardwareError(msg) from exc
        self.unlocked = on
        if on:
            log.info("door: UNLOCK for %s", detail)
        elif was:
            log.info("door: LOCKED")

    def pulse(self, seconds: float | None = None) -> float:
        """Unlock for ``seconds`` (default ``pulse_s``), capped at ``max_pulse_s``; returns the length applied.
        A pulse while unlocked re-arms the off-timer from now."""
        length = self.cfg.pulse_s if seconds is None else float(seconds)
        if math.isnan(length) or length <= 0:
            raise ValueError(f"door pulse must be longer than 0 s, got {seconds!r}")
        # NOTE: the cap lives here, next to the relay, so no caller, CLI flag or config typo can hold the door open.
        length = min(length, self.cfg.max_pulse_s)
        with self._lock:
            if self._closed:
                raise HardwareError(f"door relay pin {self.cfg.relay_pin} is closed: cannot unlock")
            self._cancel_relay_timer()
            self._gen += 1
            gen = self._gen
            # NOTE: the off-timer is its own thread, started *before* the relay goes on: a caller that stalls, or a
            # thread that cannot be created, can never leave the strike released. Not a daemon thread, so the
            # interpreter waits for it (at most max_pulse_s) and locks the door before a normal exit.
            timer = threading.Timer(length, self._expire, args=(gen,))
            timer.name = "door-relay-off"
            timer.start()
            self._relay_timer = timer
            try:
                self._set(True, f"{round(length, 2)} s")
            except BaseException:
                self._cancel_relay_timer()
                self._set(False, "pulse failed")
                raise
            if gen != self._gen:
                # NOTE: a signal handler (same thread, so the RLock let it in) ran off() while this pulse was half
                # done: its off() won, so lock again now rather than leave the relay on with its timer cancelled.
                self._cancel_relay_timer()
                self._set(False, "off during pulse")
                return length
            self._granted_until = self.clock() + length + OPEN_GRACE_S
        return length

    def _expire(self, gen: int) -> None:
        with self._lock:
            if gen == self._gen and not self._closed:
                self._relay_timer = None
                try:
                    self._set(False, "timer")
                except HardwareError as exc:  # logged as CRITICAL; the loop's next check() raises it
                    self.fault = exc

    def _cancel_relay_timer(self) -> None:
        if self._relay_timer is not None:
            self._relay_timer.cancel()
            self._relay_timer = None

    def off(self) -> None:
        """Lock now and cancel the pending off-timer. Safe at any time, also after close()."""
        with self._lock:
            self._gen += 1
            self._cancel_relay_timer()
            if not self._closed:  # close() already drove the relay off and released the pin
                self._set(False, "off")

    def force_off(self, timeout_s: float = 1.0) -> bool:
        """Lock from a thread that must not hang (the watchdog, a crash hook): take the relay lock for at most
        ``timeout_s``, else write the pin directly without it (the thread holding it may be the stalled one).
        Never raises; returns whether the relay is known to be off."""
        if self._lock.acquire(timeout=timeout_s):
            try:
                self._gen += 1
                self._cancel_relay_timer()
                if self._closed:
                    return True
                self._set(False, "forced off")
                return True
            except Exception as exc:
                log.critical("door: forcing the relay off failed: %s", exc)
                return False
            finally:
                self._lock.release()
        log.critical("door: relay lock still held after %g s; writing the relay pin without it", timeout_s)
        if self._closed:
            return True
        self._gen += 1  # a timer that fires later finds a newer generation and does nothing
        try:
            self._write(False, "forced off (lock held)")
        except Exception as exc:
            log.critical("door: writing the relay pin off failed: %s", exc)
            return False
        self.unlocked = False
        return True

    def close(self) -> None:
        """Lock, then release the pins. Safe to call twice; pulse() raises afterwards."""
        failure: HardwareError | None = None
        with self._lock:
            if self._closed:
                return
            self._closed, self._gen = True, self._gen + 1
            timers = [t for t in (self._relay_timer, self._held_timer) if t is not None]
            for t in timers:
                t.cancel()
            self._relay_timer = self._held_timer = None
            try:
                self._set(False, "close")
            except HardwareError as exc:
                failure = exc
        # NOTE: pins are released outside the lock: a GPIO library may wait for its callback thread, which may be
        # waiting for this lock. Callbacks that still arrive see _closed and do nothing.
        try:
            self._release()
        except Exception:
            log.exception("door: releasing the pins failed")
        for t in timers:
            if t is not threading.current_thread():
                t.join(timeout=1.0)
        if failure is not None:
            raise failure

    def __enter__(self) -> RelayDoor:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        # NOTE: close() locks first, so an exception escaping a `with open_door(...)` block leaves the door locked.
        self.close()

    def contact_changed(self, is_open: bool) -> None:
        """The door contact changed (drivers call this from their input threads; the simulator from tests)."""
        events: list[tuple[str, dict[str, Any]]] = []
        with self._lock:
            if self._closed or is_open == self.door_open:
                return
            now = self.clock()
            self.door_open = is_open
            if is_open:
                self._opened_at, self._held_reported = now, False
                self._authorized_open = self.unlocked or now <= self._granted_until
                if self._authorized_open:
                    self._held_timer = threading.Timer(self.cfg.held_open_s + 0.01, self.check)
                    self._held_timer.name, self._held_timer.daemon = "door-held-open", True
                    self._held_timer.start()
                else:
                    events.append(("door_forced_open", {}))
            else:
                if self._held_timer is not None:
                    self._held_timer.cancel()
                    self._held_timer = None
                opened, self._opened_at = self._opened_at, None
                events.append(("door_closed", {"open_s": None if opened is None else round(now - opened, 3)}))
        for kind, detail in events:
            self._emit(kind, detail)

    def check(self) -> None:
        """Raise ``door_held_open`` once the door has been open ``held_open_s`` after an unlock, by ``clock``.
        A timer calls this; a loop with its own clock may call it every frame. Raises the off-timer's
        ``HardwareError`` if it could not lock the relay: the loop then exits, so systemd's ``ExecStopPost=door
        off`` gets a fresh process to try, and the service restarts."""
        if self.fault is not None:
            raise self.fault
        with self._lock:
            opened, now = self._opened_at, self.clock()
            open_s = 0.0 if opened is None else now - opened
            due = opened is not None and self._authorized_open and not self._held_reported
            due = due and open_s >= self.cfg.held_open_s
            self._held_reported |= due
        if due:
            self._emit("door_held_open", {"open_s": round(open_s, 3), "held_open_s": self.cfg.held_open_s})

    def exit_requested(self) -> None:
        """The request-to-exit button was pressed: unlock (a grant like any other), then report it."""
        try:
            applied = self.pulse()
        except HardwareError as exc:
            log.error("door: exit request ignored: %s", exc)
            return
        self._emit("exit_request", {"pulse_s": applied})

    def _emit(self, kind: str, detail: dict[str, Any]) -> None:
        alarm = kind in ("door_forced_open", "door_held_open")
        log.log(logging.WARNING if alarm else logging.DEBUG, "door event %s %s", kind, detail)
        if self.on_event is not None:
            try:
                self.on_event(kind, detail)
            except Exception:  # NOTE: a broken event sink must not break the door's input thread
                log.exception("door: event callback failed for %s", kind)


class SimulatedDoor(RelayDoor):
    """No hardware: logs each switch and records ``timeline = [(clock(), "unlock" | "lock", detail)]``."""

    driver = "simulated"

    def _setup(self, pin_factory: object | None) -> None:
        self.timeline: list[tuple[float, str, str]] = []

    def _write(self, on: bool, detail: str) -> None:
        self.timeline.append((self.clock(), "unlock" if on else "lock", detail))

    def _release(self) -> None:
        pass


def _gpiozero_factory(gpiozero: Any, cfg: DoorConfig, injected: object | None) -> tuple[Any, str, bool]:
    """(factory or None, name for messages, whether we own it): injected, else cfg.pin_factory, else gpiozero's."""
    if injected is not None:
        return injected, type(injected).__name__, False
    where = f"relay pin {cfg.relay_pin}"
    if cfg.pin_factory is not None:
        module, cls = PIN_FACTORIES[cfg.pin_factory]
        try:
            return getattr(importlib.import_module(module), cls)(), cfg.pin_factory, True
        except Exception as exc:
            msg = f"gpiozero pin factory {cfg.pin_factory!r} for {where} cannot start: {exc}"
            raise HardwareError(f"{msg} (on a Raspberry Pi: {PI_EXTRA})") from exc
    # NOTE: gpiozero's default tries lgpio, rpigpio, pigpio, native in turn (or $GPIOZERO_PIN_FACTORY), warning at
    # each fallback. The warnings are caught here so `kiosk door off` prints nothing on a healthy Pi, and become the
    # error message when nothing works.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            gpiozero.Device.ensure_pin_factory()
        except Exception as exc:
            tried = "; ".join(str(w.message) for w in caught) or str(exc)
            msg = f"no gpiozero pin factory works for {where} ({tried})"
            raise HardwareError(f"{msg}: on a Raspberry Pi {PI_EXTRA}; elsewhere set door.driver: simulated") from exc
    for w in caught:
        log.debug("gpiozero: %s", w.message)
    factory = gpiozero.Device.pin_factory
    return factory, f"{type(factory).__name__} (default)", False


class GpiozeroDoor(RelayDoor):
    """Raspberry Pi relay through gpiozero: ``OutputDevice`` for the relay, optional contact and exit button."""

    driver = "gpiozero"

    def _setup(self, pin_factory: object | None) -> None:
        cfg = self.cfg
        self._devices: list[Any] = []
        self._own_factory = False
        try:
            gpiozero = importlib.import_module("gpiozero")
        except ImportError as exc:
            raise HardwareError(f"door.driver gpiozero needs the gpiozero package: {PI_EXTRA}") from exc
        self._factory, name, self._own_factory = _gpiozero_factory(gpiozero, cfg, pin_factory)
        self.backend = f"gpiozero ({name})"
        # NOTE: initial_value=False drives the relay off in the same call that claims the pin.
        self._relay = self._open(gpiozero.OutputDevice, cfg.relay_pin, "relay", active_high=cfg.active_high,
                                 initial_value=False)  # fmt: skip
        if cfg.contact_pin is not None:
            # NOTE: pulled towards the "open" level, so a cut sensor wire reads as open (an alarm), never as closed.
            contact = self._open(gpiozero.DigitalInputDevice, cfg.contact_pin, "contact",
                                 pull_up=cfg.contact_open_is_high, bounce_time=BOUNCE_S)  # fmt: skip
            self.door_open = not contact.is_active  # with that pull, "active" means closed either way
            contact.when_activated = lambda: self.contact_changed(False)
            contact.when_deactivated = lambda: self.contact_changed(True)
        if cfg.exit_button_pin is not None:
            button = self._open(gpiozero.Button, cfg.exit_button_pin, "exit button", pull_up=True, bounce_time=BOUNCE_S)
            button.when_pressed = self.exit_requested

    def _open(self, cls: Any, pin: int, role: str, **kwargs: Any) -> Any:
        try:
            device = cls(pin, pin_factory=self._factory, **kwargs)
        except Exception as exc:
            hint = f" ({PI_EXTRA})" if isinstance(exc, ImportError) else ""
            raise HardwareError(f"cannot open door {role} pin {pin} with {self.backend}: {exc}{hint}") from exc
        self._devices.append(device)
        return device

    def _write(self, on: bool, detail: str) -> None:
        if on:
            self._relay.on()
        else:
            self._relay.off()

    def _release(self) -> None:
        for device in reversed(self._devices):
            try:
                device.close()
            except Exception as exc:
                log.warning("door: closing %r failed: %s", device, exc)
        self._devices.clear()
        if self._own_factory:
            self._own_factory = False
            self._factory.close()


class JetsonDoor(RelayDoor):
    """Jetson relay through Jetson.GPIO (RPi.GPIO API, BCM numbers). Jetson pins have no software pull resistors:
    wire external ones. ``pin_factory`` is ignored."""

    driver = "jetson"

    def _setup(self, pin_factory: object | None) -> None:
        cfg = self.cfg
        self._pins: list[int] = []
        try:
            gpio = importlib.import_module("Jetson.GPIO")
        except (ImportError, RuntimeError, OSError) as exc:
            raise HardwareError(
                f"door.driver jetson cannot load Jetson.GPIO ({exc}): on a Jetson, {JETSON_EXTRA}"
            ) from exc
        self._gpio, self.backend = gpio, "Jetson.GPIO"
        self._level = {True: gpio.HIGH, False: gpio.LOW} if cfg.active_high else {True: gpio.LOW, False: gpio.HIGH}
        try:
            gpio.setwarnings(False)  # NOTE: "channel already in use" after a crash is expected: we re-drive it off
            gpio.setmode(gpio.BCM)
            self._pins.append(cfg.relay_pin)
            gpio.setup(cfg.relay_pin, gpio.OUT, initial=self._level[False])
            if cfg.contact_pin is not None:
                self._pins.append(cfg.contact_pin)
                gpio.setup(cfg.contact_pin, gpio.IN)
                self.door_open = self._contact_is_open()
                gpio.add_event_detect(
                    cfg.contact_pin,
                    gpio.BOTH,
                    callback=lambda _ch: self.contact_changed(self._contact_is_open()),
                    bouncetime=50,
                )
            if cfg.exit_button_pin is not None:
                self._pins.append(cfg.exit_button_pin)
                gpio.setup(cfg.exit_button_pin, gpio.IN)  # pressed = LOW, as with gpiozero's Button
                gpio.add_event_detect(
                    cfg.exit_button_pin, gpio.FALLING, callback=lambda _ch: self.exit_requested(), bouncetime=50
                )
        except (RuntimeError, ValueError, OSError) as exc:
            raise HardwareError(f"Jetson.GPIO cannot set up door pins {self._pins}: {exc} ({JETSON_EXTRA})") from exc

    def _contact_is_open(self) -> bool:
        return bool(self._gpio.input(self.cfg.contact_pin) == self._gpio.HIGH) == self.cfg.contact_open_is_high

    def _write(self, on: bool, detail: str) -> None:
        self._gpio.output(self.cfg.relay_pin, self._level[on])

    def _release(self) -> None:
        for pin in reversed(self._pins):
            try:
                if pin != self.cfg.relay_pin:
                    self._gpio.remove_event_detect(pin)
                self._gpio.cleanup(pin)
            except Exception as exc:
                log.warning("door: releasing Jetson pin %s failed: %s", pin, exc)
        self._pins.clear()


DOOR_DRIVERS: dict[str, type[SimulatedDoor | GpiozeroDoor | JetsonDoor | OsdpReader]] = {
    "simulated": SimulatedDoor,
    "gpiozero": GpiozeroDoor,
    "jetson": JetsonDoor,
    "osdp": OsdpReader,  # no relay: a card reader of an access panel (kiosk.door.osdp)
}


def open_door(
    cfg: DoorConfig,
    *,
    pin_factory: object | None = None,
    on_event: EventCallback | None = None,
    clock: Clock = time.monotonic,
) -> Door:
    """Open the configured driver; the relay is off when this returns. Raises HardwareError naming pin and fix."""
    try:
        cls = DOOR_DRIVERS[cfg.driver]
    except KeyError:
        raise ConfigError(f"door.driver: must be one of {', '.join(DOOR_DRIVERS)}, got {cfg.driver!r}") from None
    return cls(cfg, pin_factory=pin_factory, on_event=on_event, clock=clock)


def door_state(door: Door) -> dict[str, str | None]:
    """Read-only, for a status display: ``relay`` locked/unlocked (the level last commanded) and ``contact``
    open/closed (None without a contact input, or for a door that has none)."""
    is_open = getattr(door, "door_open", None)
    return {
        "relay": "unlocked" if door.unlocked else "locked",
        "contact": None if is_open is None else "open" if is_open else "closed",
    }
