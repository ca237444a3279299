"""What the API tests share: real services on tmp_path (real gallery, the real pipeline from models/, the scripted door
link of ``tests.web_helpers.make_services``), logged-in clients, and real photos from KIOSK_TEST_DATA (LFW faces) with
the bad ones built from them."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from kiosk.config import Config, EventsConfig, WebConfig
from kiosk.web.app import create_app
from kiosk.web.services import WebServices
from tests.conftest import test_data_dir
from tests.web_helpers import login


def api_config(tmp_path: Path, *, snapshots: bool = False) -> Config:
    return Config(
        data_dir=tmp_path / "data",
        web=WebConfig(upload_max_mb=2.0, upload_max_files=8),
        events=EventsConfig(snapshots=snapshots),
    )


def client_for(services: WebServices, who: str | None) -> TestClient:
    """A client (not yet started) logged in as ``who`` with its CSRF token set on every request."""
    client = TestClient(create_app(services), raise_server_exceptions=False)
    if who is not None:
        client.headers["X-CSRF-Token"] = login(client, who)
    return client


# -- photos ----------------------------------------------------------------------------------------------------------


def lfw(name: str, number: int) -> bytes:
    path = test_data_dir() / "lfw" / "images" / name / f"{name}_{number:04d}.jpg"
    if not path.is_file():
        pytest.skip(f"KIOSK_TEST_DATA not found at {test_data_dir()}: the web API tests need the LFW photos")
    return path.read_bytes()


def decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def jpeg(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return buf.tobytes()


def two_faces() -> bytes:
    """Two LFW faces side by side (their centres, so no background face comes along): Powell left, Blair right."""
    a, b = decode(lfw("Colin_Powell", 5))[50:200, 50:200], decode(lfw("Tony_Blair", 3))[50:200, 50:200]
    return jpeg(np.hstack([a, b]))


def blurred() -> bytes:
    return jpeg(cv2.GaussianBlur(decode(lfw("Tony_Blair", 6)), (0, 0), 6))


def no_face() -> bytes:
    path = test_data_dir() / "samples" / "skimage-cc0-samples" / "nonface" / "coffee.png"
    if not path.is_file():
        pytest.skip(f"KIOSK_TEST_DATA not found at {test_data_dir()}: the web API tests need its samples")
    return path.read_bytes()


def corrupt() -> bytes:
    data = lfw("Tony_Blair", 7)
    return data[: len(data) // 2]


def bomb(width: int = 10_000, height: int = 6_000) -> bytes:
    """A PNG whose header says 60 megapixels (a decompression bomb): a few hundred bytes on the wire."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    body = struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = zlib.compress(b"\0" * 1024)
    body += struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    return b"\x89PNG\r\n\x1a\n" + body + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def upload(*photos: tuple[str, bytes], content_type: str = "image/jpeg") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("photos", (name, data, content_type)) for name, data in photos]


def enrol(client: TestClient, name: str, *photos: tuple[str, bytes], **form: Any) -> Any:
    return client.post("/api/people", data={"name": name, **form}, files=upload(*photos))


def powell(*numbers: int) -> list[tuple[str, bytes]]:
    return [(f"powell{n}.jpg", lfw("Colin_Powell", n)) for n in numbers]
