"""Frame sources for the door loop, and ``Camera``: a reader thread that always holds the newest frame.

``open_source(spec, cfg)`` picks a source from ``camera.source`` by an explicit table (first match wins):

    picamera                         PiCameraSource    picamera2, imported only in open()
    "0", "1", ...  /dev/videoN       OpenCVSource      V4L2, with the requested size/fps/fourcc (also /dev/v4l/...)
    rtsp(s)://  http(s)://  tcp://  udp://  OpenCVSource  FFMPEG, live
    dir/frame_%04d.png               ImageDirSource    the files matching the pattern, in number order
    an existing folder               ImageDirSource    its .jpg/.jpeg/.png/.bmp/.webp files, in natural order
    an existing file                 VideoFileSource   replayed at the file's own fps

``Camera`` survives a camera that fails, stalls or disappears: it closes and reopens the source with exponential
backoff, forever, logging each transition once; the loop meanwhile sees ``latest() -> None`` (door stays locked).
"""

from __future__ import annotations

import importlib
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import cv2
import numpy as np

from kiosk.config import CameraConfig
from kiosk.errors import ConfigError, HardwareError, InputError
from kiosk.imageio import as_bgr, read_image
from kiosk.types import Image

log = logging.getLogger(__name__)

STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https", "tcp", "udp")
VIDEO_EXTS = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".mjpg", ".mjpeg", ".m4v", ".mpg", ".mpeg", ".ts"}
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
DEFAULT_REPLAY_FPS = 10.0
OPEN_TIMEOUT_S = 5.0  # FFMPEG connect timeout for network streams (never below the stall timeout)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_PRINTF = re.compile(r"%0?\d*d")
EXPECTED = (
    "a camera index (0), /dev/videoN, an rtsp/http(s)/tcp/udp URL, a video file, an image folder, "
    "a frame_%04d.png pattern, or picamera"
)


@dataclass(frozen=True, eq=False)  # NOTE: eq=False: identity equality; comparing pixel arrays is never wanted
class Frame:
    """One captured image, its running number (across reconnects) and its monotonic capture time."""

    image: Image = field(repr=False)
    index: int
    t: float


class FrameSource(Protocol):
    """What ``Camera`` reads from. ``read()`` returns None when there is no frame now (or a replay ended) and raises
    ``HardwareError`` when the source failed; it must not block much longer than ``camera.stall_timeout_s``."""

    name: str  # for logs; never contains credentials
    live: bool
    ended: bool
    fps: float | None

    def open(self) -> None: ...
    def read(self) -> Image | None: ...
    def close(self) -> None: ...


def _bgr(img: np.ndarray) -> Image:
    return img if img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8 else as_bgr(img)


def safe_url(url: str) -> str:
    """``url`` for logs: no ``user:pass@``, and the query (which may hold a token) elided."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}{'?...' if parts.query else ''}"


class OpenCVSource:
    """A V4L2 camera or a network stream read through ``cv2.VideoCapture``; a failed read means the source failed."""

    fps: float | None = None
    ended = False
    live = True

    def __init__(self, target: int | str, backend: int, cfg: CameraConfig, name: str) -> None:
        self.target, self.backend, self.cfg, self.name = target, backend, cfg, name
        self._cap: Any = None
        self._described = False

    def _params(self) -> list[int]:
        if self.backend != cv2.CAP_FFMPEG or not self.live:
            return []  # NOTE: V4L2 has its own 10 s select() timeout; a backend may refuse params it does not use
        # NOTE: FFMPEG otherwise waits ~30 s on a silent stream; with these a stall surfaces as a failed read.
        read_ms = int(self.cfg.stall_timeout_s * 1000)
        open_ms = max(read_ms, int(OPEN_TIMEOUT_S * 1000))
        return [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, open_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, read_ms]

    def open(self) -> None:
        self.close()
        cap = cv2.VideoCapture(self.target, self.backend, self._params())
        if not cap.isOpened():
            cap.release()
            why = "no such device, or busy" if self.backend == cv2.CAP_V4L2 else "unreachable, or not a video"
            raise HardwareError(f"cannot open {self.name}: {why}")
        if self.backend == cv2.CAP_V4L2:
            self._configure(cap)
        self._cap = cap

    def _configure(self, cap: Any) -> None:
        """Ask for the configured format, then log what the driver granted: it may silently pick another."""
        c = self.cfg
        if c.fourcc:  # NOTE: before the size: many UVC cameras offer large sizes only in MJPG
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*c.fourcc))
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, c.width), (cv2.CAP_PROP_FRAME_HEIGHT, c.height)):
            if value:
                cap.set(prop, float(value))
        if c.fps:
            cap.set(cv2.CAP_PROP_FPS, float(c.fps))
        code = int(cap.get(cv2.CAP_PROP_FOURCC))
        fourcc = "".join(chr((code >> 8 * i) & 0xFF) for i in range(4)).strip("\x00 ")
        w, h, fps = (cap.get(p) for p in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT, cv2.CAP_PROP_FPS))
        asked = f"{c.width}x{c.height} @ {c.fps or 'default'} fps {c.fourcc or ''}"
        (log.debug if self._described else log.info)(
            "camera %s: %.0fx%.0f @ %g fps %s (asked %s)", self.name, w, h, fps, fourcc, asked.strip()
        )
        self._described = True

    def read(self) -> Image | None:
        if self._cap is None:
            raise HardwareError(f"{self.name} is not open")
        ok, img = self._cap.read()
        if not ok or img is None:
            if not self.live:
                return None
            raise HardwareError("read failed (stream ended, timed out, or device gone)")
        return _bgr(img)

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()


class VideoFileSource(OpenCVSource):
    """Replays a video file at its native fps; ``ended`` after the last frame unless ``cfg.loop_replay``."""

    live = False

    def __init__(self, path: Path, cfg: CameraConfig) -> None:
        super().__init__(str(path), cv2.CAP_FFMPEG, cfg, str(path))
        self.fps = cfg.fps
        self._pass_frames = 0

    def open(self) -> None:
        super().open()
        native = float(self._cap.get(cv2.CAP_PROP_FPS))
        self.fps = native if math.isfinite(native) and 0 < native <= 1000 else self.cfg.fps
        self.ended, self._pass_frames = False, 0

    def read(self) -> Image | None:
        if self.ended:
            return None
        img = super().read()
        if img is None and self.cfg.loop_replay and self._pass_frames:
            self.open()  # NOTE: reopen rather than seek: seeking to frame 0 is exact only for intra-only codecs
            img = super().read()
        if img is None:
            self.ended = True
        else:
            self._pass_frames += 1
        return img


def _natural(p: Path) -> list[Any]:
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", p.name)]


def list_images(path: Path) -> list[Path]:
    """The images a folder or a ``frame_%04d.png`` pattern names, in frame order."""
    m = _PRINTF.search(path.name)
    try:
        if m is None:
            return sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file()), key=_natural)
        rx = re.compile(re.escape(path.name[: m.start()]) + r"(\d+)" + re.escape(path.name[m.end() :]))
        hits = ((rx.fullmatch(p.name), p) for p in path.parent.iterdir())
        return [p for _, p in sorted((int(hit[1]), p) for hit, p in hits if hit)]
    except OSError:  # gone, or not a folder
        return []


class ImageDirSource:
    """Replays an image folder or pattern at ``cfg.fps`` (default 10); unreadable files are skipped and counted."""

    live = False

    def __init__(self, path: Path, cfg: CameraConfig) -> None:
        self.path, self.cfg, self.name = path, cfg, str(path)
        self.fps: float | None = cfg.fps or DEFAULT_REPLAY_FPS
        self.ended = False
        self.skipped = 0
        self._files: list[Path] = []
        self._pos = self._good = 0
        self._warned: set[Path] = set()

    def open(self) -> None:
        self._files = list_images(self.path)
        if not self._files:
            raise HardwareError(f"cannot open {self.name}: no image files found")
        self._pos = self._good = 0
        self.ended = False

    def read(self) -> Image | None:
        while not self.ended:
            if self._pos >= len(self._files):
                if not (self.cfg.loop_replay and self._good):
                    self.ended = True
                    return None
                self._pos = self._good = 0
            path = self._files[self._pos]
            self._pos += 1
            try:
                image = read_image(path)
            except InputError as exc:
                self.skipped += 1
                if path not in self._warned:
                    self._warned.add(path)
                    log.warning("camera %s: skipping unreadable image: %s", self.name, exc)
                continue
            self._good += 1
            return image
        return None

    def close(self) -> None:
        self._files = []


class PiCameraSource:
    """A Raspberry Pi camera through picamera2 (libcamera), which is only importable on Raspberry Pi OS."""

    name = "picamera"
    live = True
    ended = False

    def __init__(self, cfg: CameraConfig) -> None:
        self.cfg = cfg
        self.fps = cfg.fps
        self._cam: Any = None

    def open(self) -> None:
        self.close()
        try:  # NOTE: imported here, never at module level: the package exists only on Raspberry Pi OS
            picamera2 = importlib.import_module("picamera2")
        except ImportError:
            raise HardwareError(
                "the picamera source needs picamera2: sudo apt install python3-picamera2 (Raspberry Pi OS)"
            ) from None
        cam: Any = None
        try:
            cam = picamera2.Picamera2()
            main: dict[str, Any] = {"format": "RGB888"}  # NOTE: libcamera's RGB888 is B,G,R in memory: OpenCV order
            if self.cfg.width and self.cfg.height:
                main["size"] = (self.cfg.width, self.cfg.height)
            controls = {"FrameRate": self.cfg.fps} if self.cfg.fps else {}
            cam.configure(cam.create_video_configuration(main=main, controls=controls))
            cam.start()
        except Exception as exc:  # NOTE: libcamera raises RuntimeError/IndexError/... for a missing or busy camera
            if cam is not None:
                cam.close()
            raise HardwareError(f"cannot start picamera: {exc}") from exc
        self._cam = cam

    def read(self) -> Image | None:
        if self._cam is None:
            raise HardwareError("picamera is not open")
        try:  # a bounded wait: capture_array() alone blocks forever on a wedged camera
            img = self._cam.wait(self._cam.capture_array("main", wait=False), timeout=self.cfg.stall_timeout_s)
        except Exception as exc:
            raise HardwareError(f"read failed ({type(exc).__name__}: {exc})") from exc
        arr = np.asarray(img)
        return _bgr(np.ascontiguousarray(arr[..., :3]) if arr.ndim == 3 and arr.shape[2] == 4 else arr)

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            try:
                cam.stop()
            finally:
                cam.close()


def _v4l2(spec: str, cfg: CameraConfig) -> FrameSource:
    if cfg.fourcc is not None and len(cfg.fourcc) != 4:
        raise ConfigError(f"camera.fourcc: must be 4 characters such as MJPG or YUYV, got {cfg.fourcc!r}")
    if spec.isdigit():  # V4L2 maps index N to /dev/videoN, the name a user finds in ls and in dmesg
        return OpenCVSource(int(spec), cv2.CAP_V4L2, cfg, f"/dev/video{spec}")
    return OpenCVSource(spec, cv2.CAP_V4L2, cfg, spec)


def _images(spec: str, cfg: CameraConfig) -> FrameSource:
    path = Path(spec).expanduser()
    if not list_images(path):
        raise ConfigError(f"camera.source: no {'/'.join(sorted(IMAGE_EXTS))} images found at {spec}")
    return ImageDirSource(path, cfg)


def _video(spec: str, cfg: CameraConfig) -> FrameSource:
    path = Path(spec).expanduser()
    if path.suffix.lower() in IMAGE_EXTS:
        raise ConfigError(f"camera.source: {spec} is a single image; give its folder or a frame_%04d.png pattern")
    if path.suffix.lower() not in VIDEO_EXTS:  # an unknown extension: accept whatever FFMPEG can open
        probe = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        readable = probe.isOpened()
        probe.release()
        if not readable:
            raise ConfigError(f"camera.source: {spec} is not a video OpenCV can read; expected {EXPECTED}")
    return VideoFileSource(path, cfg)


def _scheme(spec: str) -> str | None:
    m = _SCHEME.match(spec)
    return m[1].lower() if m else None


def _is_path(spec: str) -> bool:
    return _scheme(spec) is None


def _stream(spec: str, cfg: CameraConfig) -> FrameSource:
    return OpenCVSource(spec, cv2.CAP_FFMPEG, cfg, safe_url(spec))


# (what, matches(spec), make(spec, cfg)): first match wins; the table in the module docstring
SOURCE_TABLE: list[tuple[str, Callable[[str], bool], Callable[[str, CameraConfig], FrameSource]]] = [
    ("picamera", lambda s: s.lower() == "picamera", lambda s, cfg: PiCameraSource(cfg)),
    ("camera index", str.isdigit, _v4l2),
    ("V4L2 device", lambda s: s.startswith("/dev/"), _v4l2),  # /dev/videoN, /dev/v4l/by-id/...
    ("stream URL", lambda s: _scheme(s) in STREAM_SCHEMES, _stream),
    ("image pattern", lambda s: _is_path(s) and _PRINTF.search(Path(s).name) is not None, _images),
    ("image folder", lambda s: _is_path(s) and Path(s).expanduser().is_dir(), _images),
    ("video file", lambda s: _is_path(s) and Path(s).expanduser().is_file(), _video),
]


def open_source(spec: str, cfg: CameraConfig) -> FrameSource:
    """The source ``spec`` names (not opened yet), or ``ConfigError`` naming ``camera.source`` and what is expected."""
    spec = spec.strip()
    for _, matches, make in SOURCE_TABLE:
        if spec and matches(spec):
            return make(spec, cfg)
    if _scheme(spec) is not None:
        raise ConfigError(f"camera.source: unsupported URL scheme in {safe_url(spec)}; expected {EXPECTED}")
    raise ConfigError(f"camera.source: {spec!r} does not exist; expected {EXPECTED}")


class Camera:
    """Reads ``source`` on a background thread, keeping only the newest frame; reconnects forever on failure.

    A replay with ``replay_realtime`` is paced at its fps and drops frames like a camera; without it, every frame
    is handed out exactly once (the reader waits for the consumer), which makes tests deterministic.
    """

    def __init__(
        self,
        source: FrameSource,
        cfg: CameraConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        self.source, self.cfg, self.clock = source, cfg, clock
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait  # NOTE: the default sleep wakes at once on close()
        self._cond = threading.Condition()  # guards everything below that both threads touch
        self._frame: Frame | None = None
        self._taken = -1  # index of the last frame latest() returned
        self._state, self._closed, self._source_ended = "starting", False, False
        self._frames = self._dropped = self._reconnects = 0
        self._times: deque[float] = deque(maxlen=30)
        self._thread: threading.Thread | None = None
        self._lockstep = not source.live and not cfg.replay_realtime
        # NOTE: the reader may sit in a driver call bounded by the open/read timeouts: wait that long, no longer
        self.join_timeout_s = max(cfg.stall_timeout_s, OPEN_TIMEOUT_S) + 1.0

    def start(self) -> None:
        if self._closed:
            raise RuntimeError(f"camera {self.source.name}: start() after close()")
        if self._thread is None:  # daemon: a driver call that never returns must not keep the process alive
            self._thread = threading.Thread(target=self._run, name=f"camera {self.source.name}", daemon=True)
            self._thread.start()

    def latest(self, timeout: float) -> Frame | None:
        """The newest frame not returned before, waiting up to ``timeout`` s; None at once if ended or closed."""
        deadline = time.monotonic() + timeout  # NOTE: real time: a wait on a condition, not a frame timestamp
        with self._cond:
            while not self._closed:
                frame = self._frame
                if frame is not None and frame.index > self._taken:
                    self._taken = frame.index
                    self._cond.notify_all()  # a lockstep reader waits for this
                    return frame
                remaining = deadline - time.monotonic()
                if self._source_ended or remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return None

    @property
    def ended(self) -> bool:
        """A finite replay reached its end and its last frame has been handed out."""
        with self._cond:
            return self._source_ended and not self._pending()

    def status(self) -> dict[str, Any]:
        with self._cond:
            times = list(self._times)
            state = "closed" if self._closed else "ended" if self._source_ended and not self._pending() else self._state
            span = times[-1] - times[0] if len(times) > 1 else 0.0
            return {
                "state": state,
                "frames": self._frames,
                "dropped": self._dropped,
                "reconnects": self._reconnects,
                "last_frame_age_s": max(0.0, self.clock() - times[-1]) if times else None,
                "source": self.source.name,
                "fps": (len(times) - 1) / span if span > 0 else None,
            }

    def close(self) -> None:
        """Stop and join the reader (bounded wait); the reader closes the source. Safe twice."""
        if self._closed:
            return
        self._stop.set()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is None:
            self.source.close()
            return
        self._thread.join(self.join_timeout_s)
        if self._thread.is_alive():
            log.warning("camera %s: reader stuck in the driver; it closes the source when it returns", self.source.name)

    def __enter__(self) -> Camera:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reader thread: the only thread that calls the source ----------------------------------------------------

    def _pending(self) -> bool:
        return self._frame is not None and self._frame.index > self._taken

    def _run(self) -> None:
        src, cfg = self.source, self.cfg
        delay, attempts, failed, is_open, had_frame = cfg.reconnect_min_s, 0, False, False, False
        since = due = self.clock()  # last progress (open or frame); when the next paced replay frame is due
        try:
            while not self._stop.is_set():
                reason = None
                try:
                    if not is_open:
                        attempts += 1
                        src.open()
                        is_open, since = True, self.clock()
                    image = src.read()
                except Exception as exc:  # NOTE: drivers raise anything (cv2.error, OSError, RuntimeError, ...)
                    image, reason = None, str(exc) if isinstance(exc, HardwareError) else f"{type(exc).__name__}: {exc}"
                if image is not None:
                    if failed:
                        verb = "reconnected" if had_frame else "connected"
                        log.info("camera %s: %s after %d attempts", src.name, verb, attempts)
                        self._reconnects += int(had_frame)
                    attempts, failed, had_frame, delay = 0, False, True, cfg.reconnect_min_s
                    self._publish(image)
                    since = now = self.clock()
                    if not src.live and cfg.replay_realtime:  # deliver at the replay's fps, as a camera would
                        period = 1.0 / (src.fps or cfg.fps or DEFAULT_REPLAY_FPS)
                        due = max(due + period, now - period)  # NOTE: fell behind? carry on, do not burst to catch up
                        if due > now:
                            self._sleep(due - now)
                    continue
                if reason is None and src.ended:
                    log.info("camera %s: replay ended after %d frames", src.name, self._frames)
                    with self._cond:
                        self._source_ended = True
                        self._cond.notify_all()
                    return
                if reason is None and self.clock() - since < cfg.stall_timeout_s:
                    self._sleep(min(0.02, cfg.stall_timeout_s / 10))  # no frame yet: poll
                    continue
                self._lost(reason or f"no frame for {cfg.stall_timeout_s:g} s", attempts, delay, had_frame)
                failed, is_open = True, False
                src.close()
                self._sleep(delay)
                delay = min(delay * 2, cfg.reconnect_max_s)
        finally:
            src.close()
            with self._cond:
                self._cond.notify_all()

    def _publish(self, image: Image) -> None:
        with self._cond:
            while self._lockstep and self._pending() and not self._closed:
                self._cond.wait()
            t = self.clock()  # NOTE: after the lockstep wait, so a replayed frame is stamped when it becomes current
            self._dropped += int(self._pending())
            self._frame = Frame(image, self._frames, t)
            self._frames += 1
            self._times.append(t)
            self._state = "ok"
            self._cond.notify_all()

    def _lost(self, reason: str, attempts: int, delay: float, had_frame: bool) -> None:
        """Log the switch to reconnecting once, at WARNING; the failed attempts after it only at DEBUG."""
        with self._cond:
            first = self._state != "reconnecting"
            self._state = "reconnecting"
            self._dropped += int(self._pending())
            self._frame = None  # NOTE: a frame from before the loss is stale: never hand it out afterwards
        if first:
            what = "lost" if had_frame else "unavailable"
            log.warning("camera %s: %s (%s); reconnecting in %g s", self.source.name, what, reason, delay)
        else:
            log.debug("camera %s: attempt %d failed (%s); next in %g s", self.source.name, attempts, reason, delay)
