from __future__ import annotations

import io
import struct
import sys
import types
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from kiosk.errors import ImageTooLargeError, InputError
from kiosk.imageio import as_bgr, decode_image, header_size, image_format, read_image


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


# -- EXIF orientation, HEIF ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize(("orientation", "white"), [(1, "left"), (6, "top"), (8, "bottom"), (3, "right")])
def test_exif_orientation_is_honoured(fmt: str, orientation: int, white: str) -> None:
    """A phone photo stored sideways with an EXIF orientation tag is decoded upright, in every upload format."""
    from PIL import Image as PILImage

    pixels = np.zeros((60, 120, 3), dtype=np.uint8)
    pixels[:, :30] = 255  # a white band on the left of the stored pixels
    exif = PILImage.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    PILImage.fromarray(pixels).save(buf, fmt, exif=exif.tobytes(), **({"lossless": True} if fmt == "WEBP" else {}))
    image = decode_image(buf.getvalue(), f"photo.{fmt.lower()}")
    assert image.shape[:2] == ((60, 120) if orientation in (1, 3) else (120, 60))
    bands = {
        "left": image[:, :10],
        "right": image[:, -10:],
        "top": image[:10],
        "bottom": image[-10:],
    }
    assert bands[white].mean() > 200
    opposite = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}[white]
    assert bands[opposite].mean() < 50


HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64


def test_heic_without_pillow_heif_is_a_clear_unsupported_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # import fails as when it is not installed
    assert image_format(HEIC) == "heif"
    with pytest.raises(InputError, match=r"^IMG_1.HEIC: unsupported format: HEIC photos need pillow-heif"):
        decode_image(HEIC, "IMG_1.HEIC")


class _FakeHeif:
    """What pillow_heif.open_heif returns, as far as decode_image uses it (size first, pixels on request)."""

    def __init__(self, size: tuple[int, int], pixels: np.ndarray | None) -> None:
        self.size, self._pixels, self.decoded = size, pixels, False

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        self.decoded = True
        if self._pixels is None:
            raise RuntimeError("Invalid input: Unsupported feature")
        return self._pixels


def _fake_pillow_heif(monkeypatch: pytest.MonkeyPatch, heif: _FakeHeif) -> None:
    module = types.ModuleType("pillow_heif")
    setattr(module, "open_heif", lambda data, convert_hdr_to_8bit=True: heif)  # noqa: B010
    monkeypatch.setitem(sys.modules, "pillow_heif", module)


def test_heic_with_pillow_heif_is_decoded_to_bgr(monkeypatch: pytest.MonkeyPatch) -> None:
    rgb = np.zeros((40, 50, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # red
    _fake_pillow_heif(monkeypatch, _FakeHeif((50, 40), rgb))
    image = decode_image(HEIC, "IMG_1.HEIC")
    assert image.shape == (40, 50, 3) and image[0, 0].tolist() == [0, 0, 255]


def test_heic_bomb_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    heif = _FakeHeif((10_000, 8_000), None)
    _fake_pillow_heif(monkeypatch, heif)
    with pytest.raises(ImageTooLargeError, match="10000x8000, above the limit"):
        decode_image(HEIC, "IMG_1.HEIC", max_pixels=40_000_000)
    assert not heif.decoded


def test_corrupt_heic_is_one_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_pillow_heif(monkeypatch, _FakeHeif((50, 40), None))
    with pytest.raises(InputError, match="not a readable image \\(corrupt HEIF"):
        decode_image(HEIC, "IMG_1.HEIC")


def test_size_limits_raise_image_too_large(tmp_path: Path) -> None:
    """Both limits (pixels in the header, bytes of the file) are ImageTooLargeError, an InputError."""
    header = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 9000, 9000) + b"\x08\x02\0\0\0"
    with pytest.raises(ImageTooLargeError):
        decode_image(header + b"\0" * 64, "bomb.png", max_pixels=1_000_000)
    assert issubclass(ImageTooLargeError, InputError)
