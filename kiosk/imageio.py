"""Read images defensively: every path gives either an HxWx3 uint8 BGR array or one ``InputError`` line.

Handled: missing/empty/unreadable files, non-images, truncated JPEG/PNG (OpenCV would silently decode a grey
remainder), decompression bombs (dimensions read from the header before decoding), grayscale, 16-bit and alpha
images (converted to 8-bit BGR by ``IMREAD_COLOR``, which also applies EXIF orientation, in JPEG, PNG and WebP).
HEIC/HEIF photos are decoded only where pillow-heif is installed; elsewhere they get a clear "unsupported" line.
"""

from __future__ import annotations

import importlib
import os
import re
import stat
import struct
from pathlib import Path

import cv2
import numpy as np

from kiosk.errors import ImageTooLargeError, InputError
from kiosk.types import Image

MAX_FILE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
FORMATS = "JPEG, PNG, BMP, WebP or PNM"  # the formats whose size is read from the header before decoding

_PNG = b"\x89PNG\r\n\x1a\n"
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}


def _jpeg_scan(data: bytes) -> tuple[tuple[int, int] | None, int]:
    """Walk the JPEG markers: ((width, height) of the frame header or None, offset of the first scan or -1)."""
    size: tuple[int, int] | None = None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return size, -1
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker (allowed by the standard)
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if length < 2:
            return size, -1
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and size is None:
            if i + 9 > len(data):
                return size, -1
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            size = (w, h)
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            return size, i + 2 + length
        i += 2 + length
    return size, -1


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    return _jpeg_scan(data)[0]


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 26:
        return None
    (dib,) = struct.unpack("<I", data[14:18])
    if dib == 12:  # OS/2 BITMAPCOREHEADER: 16-bit width and height
        w, h = struct.unpack("<HH", data[18:22])
    else:
        w, h = struct.unpack("<ii", data[18:26])  # height < 0: stored top-down
    return abs(int(w)), abs(int(h))


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        (bits,) = struct.unpack("<I", data[21:25])
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8X" and len(data) >= 30:
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    return None


def _pnm_size(data: bytes) -> tuple[int, int] | None:
    tokens = re.sub(rb"#[^\n]*", b" ", data[:1024]).split()  # magic, width, height (comments allowed between)
    if len(tokens) < 3 or not all(t.isdigit() and len(t) <= 9 for t in tokens[1:3]):
        return None
    return int(tokens[1]), int(tokens[2])


def _format(data: bytes) -> str | None:
    if data[:8] == _PNG:
        return "png"
    if data[:2] == b"\xff\xd8":
        return "jpeg"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if len(data) >= 2 and data[0:1] == b"P" and data[1:2] in b"123456":
        return "pnm"
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return "heif"
    return None


def image_format(data: bytes) -> str | None:
    """The format named by the file's first bytes (jpeg, png, bmp, webp, pnm, heif), whatever its name says."""
    return _format(data)


def _decode_heif(data: bytes, name: str, max_pixels: int) -> Image:
    """A HEIC/HEIF photo through pillow-heif (optional): its size is read before the pixels are decoded."""
    try:
        pillow_heif = importlib.import_module("pillow_heif")
    except ImportError:
        raise InputError(
            f"{name}: unsupported format: HEIC photos need pillow-heif (pip install pillow-heif); "
            "or save the photo as JPEG"
        ) from None
    try:
        heif = pillow_heif.open_heif(data, convert_hdr_to_8bit=True)
        w, h = (int(v) for v in heif.size)
        if w * h > max_pixels:
            raise ImageTooLargeError(f"{name}: image is {w}x{h}, above the limit of {max_pixels:,} pixels")
        rgb = np.asarray(heif)
    except InputError:
        raise
    except Exception as exc:  # pillow-heif raises ValueError/RuntimeError for damaged files
        raise InputError(f"{name}: not a readable image (corrupt HEIF: {str(exc)[:80]})") from None
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4) or rgb.shape[0] * rgb.shape[1] > max_pixels:
        raise InputError(f"{name}: not a readable image (HEIF decoded to shape {rgb.shape})")
    return np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGBA2BGR if rgb.shape[2] == 4 else cv2.COLOR_RGB2BGR))


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG, PNG, BMP, WebP or PNM header without decoding, or None when it cannot be read."""
    kind = _format(data)
    if kind == "png":
        return struct.unpack(">II", data[16:24]) if len(data) >= 24 and data[12:16] == b"IHDR" else None
    if kind == "jpeg":
        return _jpeg_size(data)
    if kind == "bmp":
        return _bmp_size(data)
    if kind == "webp":
        return _webp_size(data)
    if kind == "pnm":
        return _pnm_size(data)
    return None


def _truncated(data: bytes) -> bool:
    if data[:2] == b"\xff\xd8":
        # The end-of-image marker must follow the first scan: an EXIF thumbnail's own marker comes before it, and
        # a marker byte inside the entropy-coded data is always stuffed (FF 00), so only the real end matches.
        scan = _jpeg_scan(data)[1]
        return scan < 0 or data.find(b"\xff\xd9", scan) < 0
    if data[:8] == _PNG:
        return b"IEND" not in data[-32:]
    return False


def display(path: Path | str) -> str:
    """A file name for a one-line message: as is, or repr'd when it holds a newline or another unprintable."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def decode_image(data: bytes, name: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image:
    """Decode encoded image bytes to BGR uint8, or raise ``InputError`` naming ``name``.

    The pixel limit is applied to the size in the header, before anything is decoded: only formats whose header
    is read here are decoded at all (a TIFF, GIF or OpenEXR file could otherwise declare any size)."""
    name = display(name)
    if not data:
        raise InputError(f"{name}: empty file")
    kind = _format(data)
    if kind is None:
        raise InputError(f"{name}: not a readable image (not {FORMATS})")
    if kind == "heif":
        return _decode_heif(data, name, max_pixels)
    size = header_size(data)
    if size is None:
        raise InputError(f"{name}: not a readable image (corrupt {kind.upper()} header)")
    if size[0] * size[1] > max_pixels:
        raise ImageTooLargeError(f"{name}: image is {size[0]}x{size[1]}, above the limit of {max_pixels:,} pixels")
    if _truncated(data):
        raise InputError(f"{name}: truncated or corrupt image file")
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error:  # OpenCV's own checks (size limits, malformed headers) raise instead of returning None
        image = None
    if image is None or image.size == 0:
        raise InputError(f"{name}: not a readable image (corrupt, or a format OpenCV cannot decode)")
    if image.shape[0] * image.shape[1] > max_pixels:
        shape = f"{image.shape[1]}x{image.shape[0]}"
        raise ImageTooLargeError(f"{name}: image is {shape}, above the limit of {max_pixels:,}")
    return np.ascontiguousarray(image)


def _read_regular(path: Path) -> bytes:
    """The bytes of a regular file, at most MAX_FILE_BYTES; a FIFO, device or socket is refused without reading
    (``/dev/zero`` would never end, a FIFO would block), and O_NONBLOCK keeps ``open`` of a FIFO from hanging."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{display(path)}: not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise ImageTooLargeError(
                f"{display(path)}: file is {st.st_size / 1e6:.0f} MB, above the {MAX_FILE_BYTES // 2**20} MB limit"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:  # it grew while we read it
        raise ImageTooLargeError(f"{display(path)}: file is above the {MAX_FILE_BYTES // 2**20} MB limit")
    return data


def read_image(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image:
    """Read an image file to BGR uint8, or raise ``InputError`` with a one-line reason."""
    path = Path(path)
    try:
        data = _read_regular(path)
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{display(path)}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{display(path)}: is a directory, not an image") from None
    except OSError as exc:
        raise InputError(f"{display(path)}: cannot be read ({exc.strerror or exc})") from None
    except ValueError:  # a NUL character in the name
        raise InputError(f"{display(path)}: not a valid file name") from None
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
