"""``door.driver: osdp``: the door as a card reader (OSDP PD) of an access panel, against a real libosdp control panel
(CP) in the same process over an in-process pipe, with Secure Channel. Waits are bounded polls, never sleeps."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import osdp
import pytest

from kiosk.config import Config, parse_config
from kiosk.door.decide import Decider, Decision
from kiosk.door.loop import DoorLoop
from kiosk.door.osdp import CredentialError, OsdpReader, encode_card, load_scbk, pipe_pair
from kiosk.door.relay import open_door
from kiosk.errors import ConfigError, HardwareError, InputError, InsecureStorageError, UnsupportedError
from kiosk.gallery import Gallery
from kiosk.gallery.open import open_gallery
from kiosk.types import LivenessResult
from tests.helpers import config_file, no_new_threads, wait_until

KEY = bytes(range(0x40, 0x50))
OTHER_KEY = bytes(range(0x60, 0x70))
ADDRESS = 5
FC = 18
SC_WAIT_S = 10.0
SENT, UNCONFIRMED = "osdp card sent", "osdp card sent, not confirmed"


def _key_file(tmp_path: Path, key: bytes = KEY, mode: int = 0o600, text: str | None = None) -> Path:
    f = tmp_path / "osdp-scbk"
    f.write_text(key.hex() + "\n" if text is None else text)
    f.chmod(mode)
    return f


def _cfg(tmp_path: Path, **osdp_keys: Any) -> Config:
    section: dict[str, Any] = {"port": "/dev/ttyUSB0", "address": ADDRESS, "facility_code": FC, "ack_timeout_s": 0.5}
    if "scbk_file" not in osdp_keys and not osdp_keys.get("insecure_install_mode"):
        section["scbk_file"] = str(_key_file(tmp_path))
    section.update(osdp_keys)
    return parse_config({"data_dir": str(tmp_path / "data"), "door": {"driver": "osdp", "osdp": section}})


class Panel:
    """A libosdp control panel polling one reader at ADDRESS on the panel end of the pipe."""

    def __init__(self, end: Any, key: bytes | None = KEY) -> None:
        flags = [osdp.LibFlag.EnforceSecure] if key is not None else []
        info = osdp.PDInfo(ADDRESS, end, scbk=key, flags=flags)
        self.cp = osdp.ControlPanel([info], log_level=osdp.LogLevel.Emergency)
        self.cp.start()

    def secure(self) -> bool:
        return bool(self.cp.is_sc_active(ADDRESS))

    def card_reads(self, timeout: float) -> list[dict[str, Any]]:
        """Card reads that arrive within ``timeout`` s (other events, such as status reports, are left out)."""
        out = []
        while (event := self.cp.get_event(ADDRESS, timeout=timeout)) is not None:
            if event["event"] == osdp.Event.CardRead:
                out.append(event)
            timeout = 0.05
        return out

    def close(self) -> None:
        if self.cp.thread is not None:
            self.cp.teardown()


@contextmanager
def rig(cfg: Config, panel_key: bytes | None = KEY, *, panel: bool = True) -> Iterator[tuple[OsdpReader, Panel | None]]:
    """Our reader on one end of a pipe and (``panel``) a libosdp CP on the other; both threads end with the block."""
    reader_end, panel_end = pipe_pair()
    with no_new_threads(join_timeout=5.0):
        events: list[tuple[str, dict[str, Any]]] = []
        reader = OsdpReader(cfg.door, channel=reader_end, on_event=lambda k, d: events.append((k, d)))
        reader.events = events
        cp = Panel(panel_end, panel_key) if panel else None
        try:
            yield reader, cp
        finally:
            if cp is not None:
                cp.close()
            reader.close()


def _wiegand26_bits(facility: int, card: int) -> str:
    """H10301 built bit by bit, independently of kiosk.door.osdp: even parity of bits 2-13, 8-bit facility code,
    16-bit card number, odd parity of bits 14-25."""
    data = f"{facility:08b}{card:016b}"
    even = "1" if data[:12].count("1") % 2 else "0"
    odd = "0" if data[12:].count("1") % 2 else "1"
    return even + data + odd


def _bytes_of(bits: str) -> bytes:
    padded = bits + "0" * (-len(bits) % 8)
    return bytes(int(padded[i : i + 8], 2) for i in range(0, len(padded), 8))


# -- card formats ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("facility,card", [(0, 0), (18, 4660), (255, 65535), (1, 1), (123, 40000)])
def test_wiegand26_is_h10301_with_both_parities(facility: int, card: int) -> None:
    cfg = dataclasses.replace(parse_config({}).door.osdp, facility_code=facility)
    data, length, fmt = encode_card(str(card), cfg, "Ada")
    bits = _wiegand26_bits(facility, card)
    assert (data, length, fmt) == (_bytes_of(bits), 26, osdp.CardFormat.Wiegand)
    assert bits[:13].count("1") % 2 == 0 and bits[13:].count("1") % 2 == 1


def test_raw_format_is_the_number_in_the_configured_bits() -> None:
    cfg = dataclasses.replace(parse_config({}).door.osdp, format="raw", bits=37)
    data, length, fmt = encode_card("0123456789", cfg, "Ada")
    assert (data, length, fmt) == (_bytes_of(f"{123456789:037b}"), 37, osdp.CardFormat.Unspecified)


@pytest.mark.parametrize(
    "fmt,bits,credential",
    [("wiegand26", 32, "65536"), ("raw", 8, "256"), ("raw", 64, "18446744073709551616")],
)
def test_a_credential_too_big_for_the_format_is_refused_naming_the_person(fmt: str, bits: int, credential: str) -> None:
    cfg = dataclasses.replace(parse_config({}).door.osdp, format=fmt, bits=bits)
    with pytest.raises(CredentialError) as err:
        encode_card(credential, cfg, "'Ada Lovelace'")
    msg = str(err.value)
    assert msg.startswith("'Ada Lovelace': the credential does not fit door.osdp.format") and "\n" not in msg
    assert credential not in msg  # a card number is a credential: never in a message


# -- against a real control panel --------------------------------------------------------------------------------


class _Pipeline:
    """The loop reads only ``cfg`` from its pipeline when it is given a decider."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg


def _grant(person_id: int, name: str) -> Decision:
    return Decision(
        outcome="granted", track_id=1, person_id=person_id, name=name, score=0.8, runner_up=None,
        runner_up_score=None, threshold=0.47, frames_used=3, liveness=LivenessResult("not_required"),
        reason="match", first_seen=10.0, t=10.4,
    )  # fmt: skip


def _loop(cfg: Config, gallery: Gallery, door: Any) -> DoorLoop:
    return DoorLoop(_Pipeline(cfg), gallery, None, door, decider=Decider(cfg.decision))


def _access_events(gallery: Gallery) -> list[dict[str, Any]]:
    return [e for e in gallery.events() if e["kind"] == "access"]


def test_a_grant_sends_the_credential_as_a_card_read_over_secure_channel(
    tmp_path: Path, fresh_db: Gallery, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _cfg(tmp_path)
    ada = fresh_db.set_credential(fresh_db.add_person("Ada").id, "4660")
    with rig(cfg) as (reader, panel):
        assert panel is not None
        assert wait_until(lambda: reader.status()["secure_channel"], SC_WAIT_S), "no secure channel with the panel"
        loop = _loop(cfg, fresh_db, reader)
        caplog.set_level(logging.DEBUG)
        recorded = loop._act(_grant(ada.id, "Ada"), None, None)
        reads = panel.card_reads(timeout=2.0)
    assert reads == [
        {
            "event": osdp.Event.CardRead, "reader_no": 0, "direction": 0, "format": osdp.CardFormat.Wiegand,
            "length": 26, "data": _bytes_of(_wiegand26_bits(FC, 4660)),
        }
    ]  # fmt: skip
    assert recorded.outcome == "granted"
    [event] = _access_events(fresh_db)
    assert (event["outcome"], event["person_id"], event["door_action"]) == ("granted", ada.id, "osdp card sent")
    assert loop.stats.granted == 1 and loop.stats.pulses == 0
    assert ("osdp_online", {"address": ADDRESS}) in reader.events
    assert not any("4660" in r.getMessage() for r in caplog.records), "the card number was logged"


def test_wrong_key_means_no_secure_channel_and_nothing_is_delivered(tmp_path: Path, fresh_db: Gallery) -> None:
    cfg = _cfg(tmp_path)
    ada = fresh_db.set_credential(fresh_db.add_person("Ada").id, "4660")
    with rig(cfg, panel_key=OTHER_KEY) as (reader, panel):
        assert panel is not None
        # The reader answers the panel's first polls (online), but the key exchange fails: no Secure Channel.
        assert wait_until(lambda: reader.status()["online"], SC_WAIT_S)
        assert not reader.status()["secure_channel"]
        recorded = _loop(cfg, fresh_db, reader)._act(_grant(ada.id, "Ada"), None, None)
        assert panel.card_reads(timeout=1.0) == []
        assert not any(k == "osdp_online" for k, _ in reader.events)
    [event] = _access_events(fresh_db)
    assert event["door_action"] in ("osdp no secure channel: not sent", "osdp offline: not sent")
    assert recorded.outcome == "granted"  # recognised; the panel was never asked, as door_action says


def test_a_person_without_a_credential_is_denied_and_nothing_is_sent(tmp_path: Path, fresh_db: Gallery) -> None:
    cfg = _cfg(tmp_path)
    bob = fresh_db.add_person("Bob")
    with rig(cfg) as (reader, panel):
        assert panel is not None
        assert wait_until(lambda: reader.status()["secure_channel"], SC_WAIT_S)
        loop = _loop(cfg, fresh_db, reader)
        recorded = loop._act(_grant(bob.id, "Bob"), None, None)
        assert panel.card_reads(timeout=0.5) == []
    assert (recorded.outcome, recorded.reason) == ("denied", "no credential")
    [event] = _access_events(fresh_db)
    assert (event["outcome"], event["person_name"]) == ("denied", "Bob")
    assert event["door_action"] == "osdp nothing sent: no credential"
    assert loop.stats.denied == 1 and loop.stats.granted == 0


def test_a_credential_too_big_is_denied_with_a_one_line_error_naming_the_person(
    tmp_path: Path, fresh_db: Gallery, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _cfg(tmp_path)
    big = fresh_db.set_credential(fresh_db.add_person("Grace Hopper").id, "70000")  # wiegand26: at most 65535
    with rig(cfg, panel=False) as (reader, _):
        recorded = _loop(cfg, fresh_db, reader)._act(_grant(big.id, "Grace Hopper"), None, None)
    assert (recorded.outcome, recorded.reason) == ("denied", "credential does not fit the card format")
    [event] = _access_events(fresh_db)
    assert event["door_action"] == "osdp nothing sent: credential does not fit the card format"
    [error] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "'Grace Hopper'" in error and "door.osdp.format wiegand26" in error and "\n" not in error
    assert "70000" not in error


def test_panel_offline_the_card_read_is_not_sent_and_never_delivered_later(tmp_path: Path, fresh_db: Gallery) -> None:
    cfg = _cfg(tmp_path, ack_timeout_s=0.2)
    ada = fresh_db.set_credential(fresh_db.add_person("Ada").id, "4660")
    reader_end, panel_end = pipe_pair()
    with no_new_threads(join_timeout=5.0), OsdpReader(cfg.door, channel=reader_end) as reader:
        loop = _loop(cfg, fresh_db, reader)
        # No panel polls yet: refused at once, not queued.
        assert loop._act(_grant(ada.id, "Ada"), None, None).outcome == "granted"
        panel = Panel(panel_end)
        try:
            # NOTE: both ends: a cut during the key exchange makes libosdp's CP wait 300 s before trying again.
            assert wait_until(lambda: reader.status()["secure_channel"] and panel.secure(), SC_WAIT_S)
            # The cable is cut while the reader still believes the panel is there: the read waits
            # ack_timeout_s, is withdrawn, and is not delivered when the cable is back.
            panel_end.cut()
            loop._act(_grant(ada.id, "Ada"), None, None)
            panel_end.splice()
            # The panel notices the lost replies and sets up Secure Channel again; meanwhile a read may be
            # withdrawn again (honestly recorded). The withdrawn reads never arrive: only the one sent does.
            results: list[str] = []

            def present() -> bool:
                results.append(reader.present("4660", "'Ada'"))
                return results[-1] == SENT

            assert wait_until(present, SC_WAIT_S)
            reads = [e["data"] for e in panel.card_reads(timeout=1.0)]
        finally:
            panel.close()
    assert set(reads) == {_bytes_of(_wiegand26_bits(FC, 4660))}
    # Exactly the reads libosdp handed to the panel arrive (one it took but did not confirm may or may not).
    assert results.count(SENT) <= len(reads) <= results.count(SENT) + results.count(UNCONFIRMED)
    actions = [e["door_action"] for e in _access_events(fresh_db)]
    # NOTE: "sent, not confirmed" when the cut fell between the panel's poll and the reply that carried the read.
    assert actions[0] == "osdp offline: not sent"
    assert actions[1] in ("osdp card not taken in 0.2s: withdrawn", UNCONFIRMED) and len(actions) == 2


def test_insecure_install_mode_sends_in_clear_text_and_says_so(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, insecure_install_mode=True)
    with rig(cfg, panel_key=None) as (reader, panel):
        assert panel is not None
        assert wait_until(lambda: reader.status()["online"], SC_WAIT_S)
        assert reader.present("4660", "'Ada'") == "osdp card sent in clear text"
        assert [e["data"] for e in panel.card_reads(timeout=2.0)] == [_bytes_of(_wiegand26_bits(FC, 4660))]


def test_the_reader_has_no_relay_and_closes_cleanly(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    reader_end, _ = pipe_pair()
    with no_new_threads(join_timeout=5.0):
        door = OsdpReader(cfg.door, channel=reader_end)
        with pytest.raises(UnsupportedError, match="the access panel owns the lock"):
            door.pulse()
        door.off()
        assert door.force_off() and not door.unlocked
        door.check()
        door.close()
        door.close()
    assert door.status() == {"online": False, "secure_channel": False}


def test_manual_unlock_at_an_osdp_door_is_refused_without_stopping_the_loop(tmp_path: Path, fresh_db: Gallery) -> None:
    cfg = _cfg(tmp_path)
    with rig(cfg, panel=False) as (reader, _):
        loop = _loop(cfg, fresh_db, reader)
        with pytest.raises(UnsupportedError):
            loop.manual_unlock("admin", "delivery", 0, 1)
    assert fresh_db.events() == []  # nothing was unlocked, so nothing is recorded as unlocked


# -- configuration -----------------------------------------------------------------------------------------------


def _config_error(fn: Callable[[], object]) -> str:
    with pytest.raises((ConfigError, InsecureStorageError)) as err:
        fn()
    msg = str(err.value)
    assert "\n" not in msg and KEY.hex() not in msg
    return msg


def test_driver_osdp_needs_a_port_and_a_key(tmp_path: Path) -> None:
    base = {"data_dir": str(tmp_path)}
    msg = _config_error(lambda: parse_config({**base, "door": {"driver": "osdp", "osdp": {"scbk_file": "k"}}}))
    assert msg.startswith("door.osdp.port: required with door.driver osdp")
    msg = _config_error(lambda: parse_config({**base, "door": {"driver": "osdp", "osdp": {"port": "/dev/ttyS0"}}}))
    assert msg.startswith("door.osdp.scbk_file: required with door.driver osdp")
    assert "insecure_install_mode" in msg
    insecure = {"port": "/dev/ttyS0", "insecure_install_mode": True}
    assert parse_config({**base, "door": {"driver": "osdp", "osdp": insecure}}).door.osdp.scbk_file is None
    slow = {"port": "/dev/ttyS0", "scbk_file": "k", "ack_timeout_s": 2.0}
    msg = _config_error(
        lambda: parse_config({**base, "door": {"driver": "osdp", "osdp": slow}, "safety": {"watchdog_s": 1}})
    )
    assert msg == "door.osdp.ack_timeout_s: must be below safety.watchdog_s (1.0), got 2.0"
    # The section may sit in a config whose door is a relay: it is checked, not required.
    assert parse_config({**base, "door": {"osdp": {"address": 3}}}).door.driver == "simulated"


@pytest.mark.parametrize(
    "keys,expected",
    [
        ({"address": 127}, "door.osdp.address: must be within 0..126, got 127"),
        ({"address": -1}, "door.osdp.address: must be within 0..126, got -1"),
        ({"baud": 14400}, "door.osdp.baud: must be one of 9600, 19200, 38400, 57600, 115200, 230400, got 14400"),
        ({"format": "wiegand34"}, "door.osdp.format: must be one of wiegand26, raw, got 'wiegand34'"),
        ({"facility_code": 256}, "door.osdp.facility_code: must be within 0..255, got 256"),
        ({"bits": 65}, "door.osdp.bits: must be within 1..64, got 65"),
        ({"ack_timeout_s": 10}, "door.osdp.ack_timeout_s: must be within 0.05..3.0, got 10"),
        ({"scbk": "00"}, "door.osdp.scbk: unknown key (allowed here: ack_timeout_s, address, baud, bits"),
    ],
)
def test_bad_osdp_values_name_the_key(tmp_path: Path, keys: dict[str, Any], expected: str) -> None:
    assert _config_error(lambda: _cfg(tmp_path, **keys)).startswith(expected)


def test_the_key_file_is_checked_and_never_shown(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    msg = _config_error(lambda: OsdpReader(_cfg(tmp_path, scbk_file=str(missing)).door, channel=pipe_pair()[0]))
    assert msg.startswith(f"door.osdp.scbk_file: {missing} does not exist")
    short = _key_file(tmp_path, text=KEY.hex()[:30])
    assert _config_error(lambda: load_scbk(short)).startswith(f"door.osdp.scbk_file: {short} is not a key")
    not_hex = _key_file(tmp_path, text="zz" * 16)
    assert "is not a key" in _config_error(lambda: load_scbk(not_hex))
    lax = _key_file(tmp_path, mode=0o644)
    assert "chmod 600" in _config_error(lambda: load_scbk(lax))
    raw = tmp_path / "raw"
    raw.write_bytes(KEY)
    raw.chmod(0o600)
    assert load_scbk(raw) == KEY == load_scbk(_key_file(tmp_path))
    folder = tmp_path / "dir"
    folder.mkdir(mode=0o700)
    assert "not a regular file" in _config_error(lambda: load_scbk(folder))


def test_open_door_opens_the_serial_port_and_names_it_when_it_cannot(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, port=str(tmp_path / "ttyUSB9"))
    with pytest.raises(HardwareError, match=r"door\.osdp\.port: cannot open .*ttyUSB9 at 9600 baud"):
        open_door(cfg.door)
    assert [t for t in threading.enumerate() if t.name == "osdp-pd"] == []


# -- credentials in the gallery and the CLI --------------------------------------------------------------------


def test_set_credential_validates_normalises_and_audits_without_the_number(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with Gallery(":memory:", actor="root") as g:
        ada = g.add_person("Ada")
        assert ada.credential is None
        assert g.set_credential("ada", " 0012345 ").credential == "12345"
        assert g.get_person(ada.id).credential == "12345"
        for bad in ("12a45", "", " ", "-5", "1.5", "١٢٣", "1" * 21):
            with pytest.raises(InputError) as err:
                g.set_credential(ada.id, bad)
            assert "\n" not in str(err.value) and (not bad.strip() or bad.strip() not in str(err.value))
        assert g.set_credential(ada.id, "9" * 20).credential == "9" * 20
        assert g.set_credential(ada.id, None).credential is None
        audit = [(e["outcome"], e["detail"]) for e in g.events() if e["kind"] == "admin"]
    assert [a for a, _ in audit] == ["added", "credential set", "credential set", "credential cleared"]
    assert "12345" not in str(audit) and "9" * 20 not in str(audit)
    assert not any("12345" in r.getMessage() for r in caplog.records)


def test_cli_people_credential(tmp_path: Path, cli: Callable[..., tuple[int, str, str]]) -> None:
    f = config_file(tmp_path)
    from kiosk.config import load_config

    with open_gallery(load_config(f)) as g:
        g.add_person("Ada Lovelace")
    code, out, _ = cli("--config", str(f), "people", "credential", "Ada Lovelace", "4660")
    assert code == 0 and out.strip() == "'Ada Lovelace' now has a card number" and "4660" not in out
    code, out, _ = cli("--config", str(f), "people", "show", "Ada Lovelace")
    assert code == 0 and "credential   set" in out and "4660" not in out
    code, out, _ = cli("--config", str(f), "people", "show", "Ada Lovelace", "--json")
    assert code == 0 and '"credential": true' in out
    code, _, err = cli("--config", str(f), "people", "credential", "Ada Lovelace", "46x0")
    assert code == 5 and "digits 0-9 only" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("--config", str(f), "people", "credential", "Ada Lovelace")
    assert code == 5 and "--clear" in err
    code, out, _ = cli("--config", str(f), "people", "credential", "Ada Lovelace", "--clear")
    assert code == 0 and "has no card number now" in out
    code, out, _ = cli("--config", str(f), "people", "show", "Ada Lovelace")
    assert "credential   -" in out
    # With an osdp door the number must fit its card format.
    osdp_cfg = config_file(
        tmp_path,
        f"door:\n  driver: osdp\n  osdp:\n    port: /dev/ttyUSB0\n    scbk_file: {_key_file(tmp_path)}\n",
    )
    code, _, err = cli("--config", str(osdp_cfg), "people", "credential", "Ada Lovelace", "65536")
    assert code == 5 and "does not fit door.osdp.format wiegand26" in err and "65536" not in err
    assert cli("--config", str(osdp_cfg), "people", "credential", "Ada Lovelace", "65535")[0] == 0
    with open_gallery(load_config(f)) as g:
        assert g.get_person("Ada Lovelace").credential == "65535"


# -- end to end: real models, a replayed camera, the real loop ---------------------------------------------------


@pytest.mark.slow
def test_the_door_loop_presents_the_recognised_persons_card_to_the_panel(tmp_path: Path, faces_dir: Path) -> None:
    from kiosk.context import Context
    from kiosk.door.service import run_kiosk
    from kiosk.enroll import enroll
    from tests.test_loop import _write_clip

    lfw = faces_dir / "lfw" / "images"
    colin = sorted((lfw / "Colin_Powell").glob("*.jpg"))
    cfg = dataclasses.replace(
        _cfg(tmp_path),
        decision=dataclasses.replace(parse_config({}).decision, cooldown_s=60.0, track_max_age_s=0.6),
        liveness=dataclasses.replace(parse_config({}).liveness, mode="off"),  # still photos: liveness has its tests
        camera=dataclasses.replace(parse_config({}).camera, fps=10, stall_timeout_s=1.0),
    )
    with Context(cfg) as ctx:
        enroll(ctx.pipeline, ctx.gallery, "Colin Powell", colin[:2])
        ctx.gallery.set_credential("Colin Powell", "31337")
    clip = tmp_path / "clip"
    stranger = lfw / "Abel_Pacheco/Abel_Pacheco_0001.jpg"
    _write_clip(clip, [("empty", None, 5), ("colin", colin[3], 12), ("empty", None, 10), ("stranger", stranger, 12)])
    decisions: list[tuple[str, str]] = []
    with rig(cfg) as (reader, panel):
        assert panel is not None
        assert wait_until(lambda: reader.status()["secure_channel"] and panel.secure(), SC_WAIT_S)
        run_kiosk(
            cfg, source=str(clip), door=reader, on_decision=lambda d, action: decisions.append((d.outcome, action))
        )
        reads = panel.card_reads(timeout=1.0)
    assert decisions == [("granted", "osdp card sent"), ("denied", "none")]
    assert [(e["length"], e["data"]) for e in reads] == [(26, _bytes_of(_wiegand26_bits(FC, 31337)))]
    with Context(cfg) as ctx:
        [grant] = [e for e in ctx.gallery.events() if e["kind"] == "access" and e["outcome"] == "granted"]
    assert (grant["person_name"], grant["door_action"]) == ("Colin Powell", "osdp card sent")


def test_door_cli_and_check_at_an_osdp_door(tmp_path: Path, cli: Callable[..., tuple[int, str, str]]) -> None:
    from kiosk.checks import _check_door
    from kiosk.config import load_config

    text = f"door:\n  driver: osdp\n  osdp:\n    port: {tmp_path / 'ttyUSB7'}\n    scbk_file: {_key_file(tmp_path)}\n"
    f = config_file(tmp_path, text)
    code, out, _ = cli("--config", str(f), "door", "off")
    assert code == 0 and "driver osdp has no relay" in out  # systemd's ExecStopPost= works, touching nothing
    code, _, err = cli("--config", str(f), "door", "test")
    assert code == 10 and "door.osdp.port: cannot open" in err  # the adapter is named
    check = _check_door(load_config(f))
    assert check["ok"] and "Secure Channel key readable" in check["detail"]
    _key_file(tmp_path, text="short")
    check = _check_door(load_config(f))
    assert not check["ok"] and "door.osdp.scbk_file" in check["detail"] and "is not a key" in check["detail"]


class _PtyPanelEnd:
    """The panel's end of a pseudo-terminal: the reader opens the other end with pyserial, as it would an adapter."""

    id = 0

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def read(self, max_bytes: int) -> bytes:
        try:
            return os.read(self.fd, max_bytes)
        except OSError:  # nothing to read (non-blocking), or closed
            return b""

    def write(self, buf: bytes) -> int:
        return os.write(self.fd, buf)

    def flush(self) -> None:
        pass


def test_the_serial_port_through_a_pty_and_an_unplugged_adapter_stops_the_loop(tmp_path: Path) -> None:
    master, slave = os.openpty()
    os.set_blocking(master, False)
    port = os.ttyname(slave)
    cfg = _cfg(tmp_path, port=port, baud=115200)
    try:
        with no_new_threads(join_timeout=5.0):
            door = open_door(cfg.door)  # the real driver table, pyserial and all
            assert isinstance(door, OsdpReader) and door.backend == f"osdp address {ADDRESS} on {port}"
            panel = Panel(_PtyPanelEnd(master))
            try:
                assert wait_until(lambda: door.status()["secure_channel"] and panel.secure(), SC_WAIT_S)
                assert door.present("4660", "'Ada'") == SENT
                assert [e["data"] for e in panel.card_reads(timeout=2.0)] == [_bytes_of(_wiegand26_bits(FC, 4660))]
            finally:
                panel.close()
            door.check()
            os.close(master)  # the adapter is pulled out
            master = -1
            assert wait_until(lambda: door.channel.fault is not None)
            with pytest.raises(HardwareError, match=rf"^door\.osdp\.port {port}: read failed"):
                door.check()  # the loop's next check() ends it; systemd restarts the service
            door.close()
    finally:
        if master >= 0:
            os.close(master)
        os.close(slave)
