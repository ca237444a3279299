"""Optional face snapshots on decisions (off by default: they are personal data), bounded in size and age."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from kiosk.types import FloatArray, Image

log = logging.getLogger(__name__)


class SnapshotStore:
    def __init__(
        self,
        folder: Path,
        *,
        max_bytes: int,
        max_age_s: float,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._now = wall_clock
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    def save(self, image: Image, box: FloatArray, outcome: str) -> str | None:
        """Write the face (box plus a margin) as JPEG; returns the file name, or None if it could not be written."""
        h, w = image.shape[:2]
        x1, y1, x2, y2 = (float(v) for v in box)
        mx, my = (x2 - x1) * 0.3, (y2 - y1) * 0.3
        xa, ya = int(max(0, x1 - mx)), int(max(0, y1 - my))
        xb, yb = int(min(w, x2 + mx)), int(min(h, y2 + my))
        if xb <= xa or yb <= ya:
            return None
        crop = np.ascontiguousarray(image[ya:yb, xa:xb])
        stamp = datetime.fromtimestamp(self._now(), tz=UTC).strftime("%Y%m%dT%H%M%S_%fZ")
        path = self.folder / f"{stamp}_{outcome}.jpg"
        try:
            ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 85])
            if not ok:
                return None
            path.write_bytes(buf.tobytes())
            path.chmod(0o600)
            os.utime(path, (self._now(), self._now()))  # ages are measured on the injected clock
        except OSError as exc:
            log.warning("snapshot not written (%s)", exc.strerror or exc)
            return None
        self.prune()
        return path.name

    def prune(self) -> int:
        """Delete snapshots older than the age limit, then the oldest until under the size limit."""
        files = sorted(self.folder.glob("*.jpg"), key=lambda p: p.name)
        now = self._now()
        removed = 0
        sizes = []
        for p in files:
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            if now - st.st_mtime > self.max_age_s:
                p.unlink(missing_ok=True)
                removed += 1
            else:
                sizes.append((p, st.st_size))
        total = sum(s for _, s in sizes)
        for p, s in sizes:
            if total <= self.max_bytes:
                break
            p.unlink(missing_ok=True)
            total -= s
            removed += 1
        return removed
