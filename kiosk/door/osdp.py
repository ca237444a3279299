"""The door as a card reader of an access panel: an OSDP peripheral device (PD, IEC 60839-11-5) with Secure Channel.

``door.driver: osdp``. The kiosk drives no relay: on a grant it reports a card read of the person's credential to the
panel (the control panel, CP), which decides and drives the lock itself. libosdp (the ``osdp`` extra) speaks the
protocol; this module owns the key, the channel (a serial RS-485 adapter, or ``pipe_pair()`` in-process for tests),
the card formats, and what is recorded when the panel is not listening. docs/osdp.md has the wiring and the trade-offs.

A card read is sent only while the panel polls this reader, over Secure Channel unless
``door.osdp.insecure_install_mode``; it is never queued for later (a card read delivered minutes late would open the
door for someone long gone). ``present()`` waits at most ``ack_timeout_s`` for libosdp to report the read delivered,
else withdraws it, and says which happened, for the event's ``door_action``. Card numbers and the key are never
logged.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from kiosk.config import DoorConfig, OsdpConfig
from kiosk.errors import ConfigError, HardwareError, InputError, UnsupportedError

log = logging.getLogger("kiosk.door.osdp")

OSDP_EXTRA = "pip install 'face-kiosk[osdp]'"
SCBK_BYTES = 16
REFRESH_S = 0.02  # libosdp wants refresh() at least every 50 ms
EventCallback = Callable[[str, dict[str, Any]], None]
# libosdp's osdp_event_cardread format codes (osdp.h); fixed by the protocol, so no import is needed to name them.
_FMT_RAW_UNSPECIFIED, _FMT_RAW_WIEGAND = 0, 1
_EVENT_CARDREAD = 1
_COMPLETION_OK = 0
_CMD_KEYSET = 5
_FLAG_ENFORCE_SECURE = 0x10000
_CAP_CARD_DATA_FORMAT, _CAP_READERS = 3, 13
_LOG_ERROR = 3  # libosdp prints to stderr itself; above ERROR it may dump packets


class CredentialError(InputError):
    """A person's credential cannot be sent in the configured card format (too large for it)."""


@runtime_checkable
class CardReader(Protocol):
    """A door that reports card reads to an access panel instead of pulsing a relay (``DoorLoop`` checks for it)."""

    def present(self, credential: str, who: str) -> str: ...


# -- card formats --------------------------------------------------------------------------------------------------


def _wiegand26(number: int, cfg: OsdpConfig) -> tuple[bytes, int, int]:
    """HID H10301: even parity over the first 12 data bits, 8-bit facility code, 16-bit card number, odd parity
    over the last 12. Sent MSB first, as read off the wire."""
    payload = (cfg.facility_code << 16) | number
    even = bin(payload >> 12).count("1") & 1  # makes the first 13 bits even
    odd = 1 - (bin(payload & 0xFFF).count("1") & 1)  # makes the last 13 bits odd
    word = (even << 25) | (payload << 1) | odd
    return (word << 6).to_bytes(4, "big"), 26, _FMT_RAW_WIEGAND


def _raw(number: int, cfg: OsdpConfig) -> tuple[bytes, int, int]:
    """The number itself in ``bits`` bits, MSB first, no parity (OSDP's "raw, format not specified")."""
    nbytes = (cfg.bits + 7) // 8
    return (number << (nbytes * 8 - cfg.bits)).to_bytes(nbytes, "big"), cfg.bits, _FMT_RAW_UNSPECIFIED


CARD_FORMATS: dict[str, tuple[Callable[[int, OsdpConfig], tuple[bytes, int, int]], Callable[[OsdpConfig], int]]] = {
    "wiegand26": (_wiegand26, lambda cfg: 0xFFFF),
    "raw": (_raw, lambda cfg: (1 << cfg.bits) - 1),
}


def encode_card(credential: str, cfg: OsdpConfig, who: str) -> tuple[bytes, int, int]:
    """(data, bit length, OSDP format code) of a card read of ``credential``; CredentialError naming ``who`` when
    it does not fit ``door.osdp.format`` (the number itself is never put in the message)."""
    encode, largest = CARD_FORMATS[cfg.format]
    text = credential.strip()
    if not (text.isascii() and text.isdecimal()):
        raise CredentialError(f"{who}: the credential is not a card number (digits only); set it again")
    number, top = int(text), largest(cfg)
    if number > top:
        raise CredentialError(
            f"{who}: the credential does not fit door.osdp.format {cfg.format} (card numbers 0..{top}); "
            "give them a smaller card number or change the format"
        )
    return encode(number, cfg)


# -- the key -------------------------------------------------------------------------------------------------------


def load_scbk(path: Path) -> bytes:
    """The Secure Channel base key: 16 raw bytes or 32 hex characters (a trailing newline allowed), in a regular
    file only its owner can read. ConfigError naming ``door.osdp.scbk_file`` otherwise; the key is never shown."""
    key = "door.osdp.scbk_file"
    from kiosk.gallery.keys import read_secret_file

    data = read_secret_file(
        path, what=f"{key}:", error=ConfigError, follow_symlinks=False, hint="make one: docs/osdp.md#the-key"
    )
    if len(data) == SCBK_BYTES:
        return data
    text = data.strip()
    if len(text) == 2 * SCBK_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise ConfigError(
        f"{key}: {path} is not a key: it must hold {SCBK_BYTES} raw bytes or {2 * SCBK_BYTES} hex characters, "
        f"it holds {len(data)} bytes"
    )


# -- channels ------------------------------------------------------------------------------------------------------


class SerialChannel:
    """An RS-485 adapter through pyserial, non-blocking. A read or write error (adapter unplugged) is kept in
    ``fault``: the reader's ``check()`` raises it, the loop exits and systemd restarts the service."""

    id = 0  # libosdp reads it (a channel id for multi-drop sharing)

    def __init__(self, port: str, baud: int) -> None:
        try:
            serial = importlib.import_module("serial")
        except ImportError as exc:
            raise HardwareError(f"door.driver osdp needs pyserial: {OSDP_EXTRA}") from exc
        try:
            self._dev = serial.Serial(port, baud, timeout=0, write_timeout=0.5)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise HardwareError(f"door.osdp.port: cannot open {port} at {baud} baud: {exc}") from exc
        self.port = port
        self.fault: str | None = None

    def read(self, max_bytes: int) -> bytes:
        try:
            return bytes(self._dev.read(max_bytes))
        except Exception as exc:  # NOTE: raised into libosdp's C code it would only be printed; keep it for check()
            self.fault = self.fault or f"{self.port}: read failed: {exc}"
            return b""

    def write(self, buf: bytes) -> int:
        try:
            return int(self._dev.write(buf) or 0)
        except Exception as exc:
            self.fault = self.fault or f"{self.port}: write failed: {exc}"
            return 0

    def flush(self) -> None:
        try:
            self._dev.reset_input_buffer()
        except Exception as exc:
            self.fault = self.fault or f"{self.port}: flush failed: {exc}"

    def close(self) -> None:
        self._dev.close()


class _Wire:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.buffers = (bytearray(), bytearray())
        self.cut = False


class PipeEnd:
    """One end of an in-process, full-duplex byte pipe (``pipe_pair()``): a panel in the same process, for tests
    and demos. ``cut()`` drops everything from then on, like a pulled RS-485 cable; ``splice()`` reconnects."""

    id = 0

    def __init__(self, wire: _Wire, side: int) -> None:
        self._wire, self._side = wire, side

    def read(self, max_bytes: int) -> bytes:
        with self._wire.lock:
            buf = self._wire.buffers[self._side]
            out = bytes(buf[:max_bytes])
            del buf[:max_bytes]
            return out

    def write(self, buf: bytes) -> int:
        with self._wire.lock:
            if not self._wire.cut:
                self._wire.buffers[1 - self._side].extend(buf)
            return len(buf)

    def flush(self) -> None:
        with self._wire.lock:
            self._wire.buffers[self._side].clear()

    def cut(self) -> None:
        with self._wire.lock:
            self._wire.cut = True
            for b in self._wire.buffers:
                b.clear()

    def splice(self) -> None:
        with self._wire.lock:
            self._wire.cut = False

    def close(self) -> None:
        pass


def pipe_pair() -> tuple[PipeEnd, PipeEnd]:
    """(reader end, panel end) of one in-process pipe."""
    wire = _Wire()
    return PipeEnd(wire, 0), PipeEnd(wire, 1)


# -- the reader ----------------------------------------------------------------------------------------------------


def _libosdp() -> Any:
    try:
        return importlib.import_module("osdp_sys")
    except ImportError as exc:
        raise HardwareError(f"door.driver osdp needs libosdp: {OSDP_EXTRA}") from exc


class OsdpReader:
    """``door.driver: osdp``: a ``Door`` with no relay, and a ``CardReader``. A refresh thread keeps the PD
    answering the panel's polls and reports ``osdp_online``/``osdp_offline`` through ``on_event`` when the panel's
    polling (with Secure Channel where required) starts or stops. ``channel`` replaces the serial port (tests)."""

    driver = "osdp"

    def __init__(
        self,
        cfg: DoorConfig,
        *,
        pin_factory: object | None = None,
        on_event: EventCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
        channel: Any | None = None,
    ) -> None:
        o = self.osdp = cfg.osdp
        self.cfg, self.on_event, self.clock = cfg, on_event, clock
        self.unlocked = False  # never: the panel owns the lock
        self.door_open: bool | None = None
        if o.format not in CARD_FORMATS:
            raise ConfigError(f"door.osdp.format: must be one of {', '.join(CARD_FORMATS)}, got {o.format!r}")
        if not 0 <= o.address <= 126:
            raise ConfigError(f"door.osdp.address: must be within 0..126, got {o.address}")
        if o.scbk_file is None and not o.insecure_install_mode:
            raise ConfigError("door.osdp.scbk_file: required with door.driver osdp (or insecure_install_mode: true)")
        scbk = load_scbk(o.scbk_file) if o.scbk_file is not None else None
        self.secure = not o.insecure_install_mode
        sys_mod = _libosdp()
        if channel is None:
            if not o.port:
                raise ConfigError("door.osdp.port: required with door.driver osdp (the RS-485 adapter)")
            channel = SerialChannel(o.port, o.baud)
        self.channel = channel
        self.backend = f"osdp address {o.address} on {getattr(channel, 'port', type(channel).__name__)}"
        info = {
            "name": f"kiosk-{o.address}",
            "address": o.address,
            # NOTE: without the flag a PD answers a panel that never starts Secure Channel, in clear text.
            "flags": _FLAG_ENFORCE_SECURE if self.secure else 0,
            "scbk": scbk,  # None: install mode (the well-known default key SCBK-D), insecure_install_mode only
            "channel": channel,
            "version": 1,
            "model": 1,
            "vendor_code": 0,
            "serial_number": 0,
            "firmware_version": 0,
        }
        caps = [
            {"function_code": _CAP_CARD_DATA_FORMAT, "compliance_level": 1, "num_items": 1},
            {"function_code": _CAP_READERS, "compliance_level": 0, "num_items": 1},
        ]
        sys_mod.set_loglevel(_LOG_ERROR)
        try:
            self._ctx = sys_mod.PeripheralDevice(info, capabilities=caps)
            self._ctx.set_command_callback(self._on_command)
            self._ctx.set_event_completion_callback(self._on_completion)
        except Exception as exc:
            channel.close()
            raise HardwareError(f"libosdp cannot set up reader address {o.address}: {exc}") from exc
        finally:
            del scbk, info  # NOTE: the key lives on only inside libosdp
        self._lock = threading.Lock()  # libosdp's context is not thread-safe: refresh, submit and flush take it
        self._done = threading.Condition()
        self._waiting: tuple[bytes, int] | None = None
        self._completion: int | None = None
        self._online = False
        self._closed = False
        self.fault: str | None = None  # libosdp's refresh failed: check() raises it
        self._stop = threading.Event()
        # NOTE: a daemon thread: a process that forgot close() still exits (the panel then sees the reader go offline).
        self._thread = threading.Thread(target=self._refresh, name="osdp-pd", daemon=True)
        self._thread.start()

    # -- libosdp's side (the refresh thread) -------------------------------------------------------------------

    def _refresh(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if self._closed:
                    return
                try:
                    self._ctx.refresh()
                    up = bool(self._ctx.is_online()) and (bool(self._ctx.is_sc_active()) or not self.secure)
                except Exception as exc:  # NOTE: once, not every 20 ms: check() stops the loop with it
                    log.exception("door: libosdp refresh failed; the reader stops answering the panel")
                    self.fault = f"libosdp refresh failed: {type(exc).__name__}: {exc}"
                    up = False
                    self._stop.set()
            if up != self._online:
                self._online = up
                self._emit("osdp_online" if up else "osdp_offline", {"address": self.osdp.address})
            self._stop.wait(REFRESH_S)

    def _on_command(self, command: dict[str, Any]) -> tuple[int, Any]:
        """The panel's commands (LED, buzzer, text, ...): acknowledged, nothing to drive. A new key (KEYSET) is
        refused: the key is provisioned in ``door.osdp.scbk_file``, never changed over the wire."""
        if command.get("command") == _CMD_KEYSET:
            log.warning("door: the panel tried to set a new Secure Channel key; refused (see docs/osdp.md#the-key)")
            return -1, None
        log.debug("door: panel command %s ignored", command.get("command"))
        return 0, None

    def _on_completion(self, event: dict[str, Any], status: int) -> None:
        with self._done:
            if self._waiting is not None and (event.get("data"), event.get("length")) == self._waiting:
                self._completion = int(status)
                self._done.notify_all()

    def _emit(self, kind: str, detail: dict[str, Any]) -> None:
        log.log(logging.INFO if kind == "osdp_online" else logging.WARNING, "door: panel %s", kind.split("_")[1])
        if self.on_event is not None:
            try:
                self.on_event(kind, detail)
            except Exception:  # NOTE: a broken event sink must not stop the reader answering the panel
                log.exception("door: event callback failed for %s", kind)

    # -- the loop's side -------------------------------------------------------------------------------------

    def status(self) -> dict[str, bool]:
        with self._lock:
            if self._closed:
                return {"online": False, "secure_channel": False}
            return {"online": bool(self._ctx.is_online()), "secure_channel": bool(self._ctx.is_sc_active())}

    def present(self, credential: str, who: str) -> str:
        """Report a card read of ``credential`` to the panel; returns what happened, for the event's door_action
        (never the number). CredentialError naming ``who`` when it does not fit the card format."""
        data, length, fmt = encode_card(credential, self.osdp, who)
        state = self.status()
        if not state["online"]:
            log.warning("door: card read for %s not sent: the panel is not polling this reader", who)
            return "osdp offline: not sent"
        if self.secure and not state["secure_channel"]:
            log.warning("door: card read for %s not sent: no Secure Channel with the panel (check the key)", who)
            return "osdp no secure channel: not sent"
        clear = "" if state["secure_channel"] else " in clear text"
        event: dict[str, Any] = {"event": _EVENT_CARDREAD, "reader_no": 0, "direction": 0, "format": fmt}
        event.update(length=length, data=data)
        with self._done:
            self._waiting, self._completion = (data, length), None
        with self._lock:
            queued = self._ctx.submit_event(event)
        if queued is False:  # NOTE: libosdp's event queue is full (the panel has not polled for a long while)
            log.warning("door: card read for %s not sent: libosdp's event queue is full", who)
            return "osdp card not sent (queue full)"
        deadline = time.monotonic() + self.osdp.ack_timeout_s
        with self._done:
            while self._completion is None and (left := deadline - time.monotonic()) > 0:
                self._done.wait(left)
            status, self._waiting = self._completion, None
        if status == _COMPLETION_OK:
            log.info("door: card read for %s sent to the panel%s", who, clear)
            return f"osdp card sent{clear}"
        if status is not None:
            log.warning("door: card read for %s not sent (libosdp completion status %d)", who, status)
            return f"osdp card not sent (status {status})"
        with self._lock:
            withdrawn = int(self._ctx.flush_events() or 0)
        if withdrawn:
            wait = self.osdp.ack_timeout_s
            log.warning("door: card read for %s withdrawn: the panel did not take it in %g s", who, wait)
            return f"osdp card not taken in {wait:g}s: withdrawn"
        log.warning("door: card read for %s left the queue unconfirmed", who)
        return "osdp card sent, not confirmed"

    # -- the Door protocol: no relay here --------------------------------------------------------------------

    def pulse(self, seconds: float | None = None) -> float:
        """Refused: the panel owns the lock. A manual unlock is done on the panel (its own audit trail)."""
        raise UnsupportedError("door.driver osdp has no relay: the access panel owns the lock; unlock from the panel")

    def off(self) -> None:
        """Nothing to lock: the panel owns the lock."""

    def force_off(self, timeout_s: float = 1.0) -> bool:
        return True

    def check(self) -> None:
        """Raise HardwareError when the serial adapter failed (unplugged): the loop exits and systemd restarts it."""
        fault = getattr(self.channel, "fault", None)
        if fault:
            raise HardwareError(f"door.osdp.port {fault}")
        if self.fault:
            raise HardwareError(f"door.driver osdp: {self.fault}")

    def close(self) -> None:
        """Stop the refresh thread and release the channel. Safe to call twice."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._ctx = None
        try:
            self.channel.close()
        except Exception as exc:
            log.warning("door: closing the OSDP channel failed: %s", exc)

    def __enter__(self) -> OsdpReader:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
