"""Embeddings and images never reach the logs (issue #6 part 4): enrol, identify through the CLI and run the door
loop with every logger at DEBUG, then search everything logged for vectors, pixel arrays and raw template bytes."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from kiosk.cli import main
from kiosk.config import parse_config
from kiosk.context import Context
from kiosk.door.service import run_kiosk
from kiosk.enroll import enroll

# Six or more numbers in a row separated by commas/spaces: the printout of a vector or a pixel row.
NUMBER_RUN = re.compile(r"(?:[-+]?\d*\.?\d+(?:e[-+]?\d+)?[,\s]+){5,}[-+]?\d*\.?\d+", re.IGNORECASE)
# Many high-precision numbers in one message (numpy 2 prints list items as np.float32(-0.98431385)).
PRECISE_NUMBER = re.compile(r"\d\.\d{4,}")
# A long unbroken run of hex or base64: raw template bytes or an encoded image.
BLOB_RUN = re.compile(r"[A-Za-z0-9+/=]{200,}")


def _problems(record: logging.LogRecord, template_bytes: list[bytes]) -> list[str]:
    found = []
    args = record.args if isinstance(record.args, tuple) else (record.args,) if record.args else ()
    for arg in args:
        if isinstance(arg, np.ndarray) and arg.size > 4:
            found.append(f"array argument of shape {arg.shape}")
        if isinstance(arg, bytes | bytearray | memoryview) and len(arg) >= 32:
            found.append(f"{len(arg)} raw bytes as an argument")
    text = record.getMessage()
    if record.exc_text:
        text += record.exc_text
    if m := NUMBER_RUN.search(text):
        found.append(f"a run of numbers: {m.group(0)[:80]!r}")
    if len(PRECISE_NUMBER.findall(text)) >= 6:
        found.append(f"many precise numbers: {text[:80]!r}")
    if m := BLOB_RUN.search(text):
        found.append(f"a blob: {m.group(0)[:40]!r}…")
    for blob in template_bytes:
        if blob.hex()[:32] in text:
            found.append("a stored template's bytes, as hex")
    return found


def test_enrol_identify_and_the_door_loop_log_no_biometrics(
    tmp_path: Path, faces_dir: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    lfw = faces_dir / "lfw" / "images"
    colin = sorted((lfw / "Colin_Powell").glob("*.jpg"))
    data = {
        "data_dir": str(tmp_path / "data"),
        "liveness": {"mode": "off"},
        "decision": {"frames_needed": 2, "window": 3},
        "door": {"pulse_s": 0.05, "max_pulse_s": 0.1},
        "admin": {"group": "root"},
    }
    cfg = parse_config(data)
    with Context(cfg) as ctx:
        enroll(ctx.pipeline, ctx.gallery, "Colin Powell", colin[:2])
        rows = ctx.gallery._rows("SELECT embedding FROM templates")
    template_bytes = [bytes(r["embedding"]) for r in rows]
    assert template_bytes, "nothing was enrolled"

    # The door loop on a short replay of the enrolled person.
    clip = tmp_path / "clip"
    clip.mkdir()
    photo = cv2.imread(str(colin[4]))
    for i in range(8):
        canvas = np.full((480, 640, 3), 110, np.uint8)
        h, w = photo.shape[:2]
        canvas[100 : 100 + h, 180 + i : 180 + i + w] = photo
        cv2.imwrite(str(clip / f"f{i:03d}.png"), canvas)
    stats = run_kiosk(cfg, source=str(clip), realtime=False)
    assert stats.granted == 1, "the replay should grant once, or this test saw no decision logs"

    records = list(caplog.records)
    # The CLI at --log-level DEBUG identifying a photo and listing people and events.
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert main(["-c", str(config_file), "--log-level", "DEBUG", "identify", str(colin[3])]) == 0
    assert main(["-c", str(config_file), "--log-level", "DEBUG", "people", "show", "Colin Powell"]) == 0
    printed = capsys.readouterr()

    assert len(records) > 10, "too few log records: logging was not captured"
    assert any(r.name == "kiosk.door.loop" and "decision" in r.getMessage() for r in records)
    problems = [(r.name, p) for r in records for p in _problems(r, template_bytes)]
    assert not problems, problems[:5]
    assert "kiosk.recognition.pipeline" in printed.err, "the CLI's debug log was not captured"
    for stream in (printed.out, printed.err):
        assert not BLOB_RUN.search(stream)
        assert not NUMBER_RUN.search(stream), NUMBER_RUN.search(stream)
        assert len(PRECISE_NUMBER.findall(stream)) < 6
        assert not any(b.hex()[:32] in stream for b in template_bytes)


def test_the_checker_finds_a_vector_and_a_blob() -> None:
    """The search above can fail: a logged embedding and logged raw bytes are both caught."""
    vec = np.linspace(-1, 1, 128, dtype=np.float32)
    raw = vec.tobytes()
    logger = logging.getLogger("kiosk.test")
    rec1 = logger.makeRecord("kiosk.test", logging.INFO, __file__, 1, "embedding %s", (vec,), None)
    rec2 = logger.makeRecord("kiosk.test", logging.INFO, __file__, 1, "emb=%s", (list(vec[:8]),), None)
    rec3 = logger.makeRecord("kiosk.test", logging.INFO, __file__, 1, "blob %s", (raw.hex(),), None)
    assert _problems(rec1, [raw])
    assert _problems(rec2, [raw])
    assert _problems(rec3, [raw])
    clean = logger.makeRecord(
        "kiosk.test", logging.INFO, __file__, 1, "decision outcome=%s score=%.3f", ("granted", 0.71), None
    )
    assert not _problems(clean, [raw])
