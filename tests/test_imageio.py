from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from kiosk.errors import InputError
from kiosk.imageio import as_bgr, decode_image, header_size, read_image


def _encode(ext: str, img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def test_reads_color_gray_rgba_and_16bit(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cases = {
        "c.png": rng.integers(0, 255, (40, 30, 3), dtype=np.uint8),
        "g.png": rng.integers(0, 255, (40, 30), dtype=np.uint8),
        "a.png": rng.integers(0, 255, (40, 30, 4), dtype=np.uint8),
        "w.png": rng.integers(0, 65535, (40, 30, 3), dtype=np.uint16),
        "j.jpg": rng.integers(0, 255, (40, 30, 3), dtype=np.uint8),
    }
    for name, img in cases.items():
        (tmp_path / name).write_bytes(_encode(Path(name).suffix, img))
        out = read_image(tmp_path / name)
        assert out.shape == (40, 30, 3), name
        assert out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    gray = read_image(tmp_path / "g.png")
    assert np.array_equal(gray[..., 0], gray[..., 2])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"this is not an image at all", "not a readable image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a readable image|truncated"),
    ],
)
def test_bad_files(tmp_path: Path, content: bytes, message: str) -> None:
    p = tmp_path / "bad.jpg"
    p.write_bytes(content)
    with pytest.raises(InputError, match=message) as err:
        read_image(p)
    assert str(p) in str(err.value)


def test_truncated_jpeg_and_png(tmp_path: Path) -> None:
    img = np.random.default_rng(1).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    for ext in (".jpg", ".png"):
        data = _encode(ext, img)
        p = tmp_path / f"t{ext}"
        p.write_bytes(data[: len(data) // 2])
        with pytest.raises(InputError, match="truncated"):
            read_image(p)


def test_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="directory"):
        read_image(tmp_path)


def _png_with_size(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h (the data is tiny): a decompression bomb stand-in."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    body = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = zlib.compress(b"\x00" * 16)
    body += struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    body += struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + body


def test_huge_image_refused_before_decoding() -> None:
    data = _png_with_size(100_000, 100_000)
    assert header_size(data) == (100_000, 100_000)
    with pytest.raises(InputError, match="above the limit"):
        decode_image(data, "bomb.png")


def test_jpeg_header_size_and_pixel_limit() -> None:
    data = _encode(".jpg", np.zeros((120, 160, 3), np.uint8))
    assert header_size(data) == (160, 120)
    with pytest.raises(InputError, match="above the limit"):
        decode_image(data, "x.jpg", max_pixels=1000)


def test_as_bgr_normalises_arrays() -> None:
    assert as_bgr(np.zeros((5, 6), np.uint8)).shape == (5, 6, 3)
    assert as_bgr(np.zeros((5, 6, 4), np.uint8)).shape == (5, 6, 3)
    f = as_bgr(np.ones((5, 6, 3), np.float32))
    assert f.dtype == np.uint8 and int(f.max()) == 255
    with pytest.raises(InputError):
        as_bgr(np.zeros((5, 6, 2), np.uint8))
    with pytest.raises(InputError):
        as_bgr(np.zeros((0, 6, 3), np.uint8))
