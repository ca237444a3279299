"""Read images defensively: every path gives either an HxWx3 uint8 BGR array or one ``InputError`` line.

Handled: missing/empty/unreadable files, non-images, truncated JPEG/PNG (OpenCV would silently decode a grey
remainder), decompression bombs (dimensions read from the header before decoding), grayscale, 16-bit and alpha
images (converted to 8-bit BGR by ``IMREAD_COLOR``, which also applies EXIF orientation).
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError
from .types import Image

MAX_FILE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        i += 2 + length
    return None


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding, or None for other formats."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return int(w), int(h)
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    return None


def _truncated(data: bytes) -> bool:
    if data[:2] == b"\xff\xd8":
        return b"\xff\xd9" not in data[-1024:]
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in data[-32:]
    return False


def decode_image(data: bytes, name: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image:
    """Decode encoded image bytes to BGR uint8, or raise ``InputError`` naming ``name``."""
    if not data:
        raise InputError(f"{name}: empty file")
    size = header_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise InputError(f"{name}: image is {size[0]}x{size[1]}, above the limit of {max_pixels:,} pixels")
    if _truncated(data):
        raise InputError(f"{name}: truncated or corrupt image file")
    buf = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise InputError(f"{name}: not a readable image (corrupt, or a format OpenCV cannot decode)")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise InputError(f"{name}: image is {image.shape[1]}x{image.shape[0]}, above the limit of {max_pixels:,}")
    return np.ascontiguousarray(image)


def read_image(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image:
    """Read an image file to BGR uint8, or raise ``InputError`` with a one-line reason."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InputError(f"{path}: file is {size / 1e6:.0f} MB, above the {MAX_FILE_BYTES // 2**20} MB limit")
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not an image") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return decode_image(data, str(path), max_pixels)


def as_bgr(image: np.ndarray) -> Image:
    """Normalise an in-memory array (gray, BGRA, float 0..1, uint16) to contiguous BGR uint8."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            arr = np.clip(arr * (255.0 if arr.max(initial=0.0) <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        elif arr.dtype == np.uint16:
            arr = (arr >> 8).astype(np.uint8)
        else:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = cv2.cvtColor(arr, cv2.COLOR_GRAY2BGR)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2BGR)
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = cv2.cvtColor(arr, cv2.COLOR_GRAY2BGR)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"image array has unsupported shape {arr.shape}")
    return np.ascontiguousarray(arr)
