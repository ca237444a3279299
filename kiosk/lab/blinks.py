"""The real blink recordings (``$KIOSK_TEST_DATA/liveness/blinks``): frames, capture times and eyes-closed labels.

Internal evaluation data (liveness/README.md there): read in place, never copied. Used by the continuity measurement
(``python -m tools continuity``), the spliced presentations of ``kiosk eval-liveness --splice`` and the tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np

from kiosk.errors import InputError
from kiosk.types import Image

VIDEOS = ("mahie_test_1", "mahie_test_2", "mahie_test_3")


@dataclass(frozen=True)
class BlinkFrame:
    index: int  # in decode order, from 0
    t: float  # capture time, seconds after frame 0
    closed: bool  # eyes closed (the recording's hand label)
    image: Image


@dataclass(frozen=True)
class BlinkVideo:
    """One recording: ``frames[i]`` captured at ``times[i]`` (seconds from frame 0), eyes closed when ``closed[i]``."""

    name: str
    frames: list[Image]
    times: list[float]
    closed: list[bool]

    def __len__(self) -> int:
        return len(self.frames)


def blinks_dir(faces: Path) -> Path:
    return faces / "liveness" / "blinks"


def _labels(faces: Path, name: str) -> tuple[Path, list[float], list[bool]]:
    d = blinks_dir(faces)
    video = d / f"{name}.avi"
    if not video.is_file():
        raise InputError(f"blink recording not found: {video} (set KIOSK_TEST_DATA to the shared faces folder)")
    closed = [line.strip() == "1" for line in (d / f"{name}_ideal.csv").read_text().splitlines() if line.strip()]
    stamps = json.loads((d / f"{name}_timestamps.txt").read_text())
    t0 = datetime.fromisoformat(stamps[0])
    return video, [(datetime.fromisoformat(s) - t0).total_seconds() for s in stamps], closed


def iter_blink_video(faces: Path, name: str, *, start: int = 0, stop: int | None = None) -> Iterator[BlinkFrame]:
    """Decode ``name`` (one of ``VIDEOS``) frame by frame, ``start`` to ``stop`` (a whole recording is 1.6 GB)."""
    video, times, closed = _labels(faces, name)
    cap = cv2.VideoCapture(str(video))
    try:
        i = 0
        while stop is None or i < stop:
            ok, frame = cap.read()
            if not ok or frame is None or i >= len(times):
                break
            if i >= start:
                yield BlinkFrame(i, times[i], closed[i], np.ascontiguousarray(frame, dtype=np.uint8))
            i += 1
    finally:
        cap.release()


def load_blink_video(faces: Path, name: str, *, start: int = 0, stop: int | None = None) -> BlinkVideo:
    """Frames ``start`` to ``stop`` of ``name`` with their times (from frame 0) and labels, in memory."""
    got = list(iter_blink_video(faces, name, start=start, stop=stop))
    return BlinkVideo(name, [f.image for f in got], [f.t for f in got], [f.closed for f in got])
