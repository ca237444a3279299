"""Blink detection: one track's eye openness, frame by frame, against that person's own open-eye level.

``eye_openness`` is the per-frame measure (the eye aspect ratio of the iris-refined eye contours,
``kiosk.liveness.mesh.eye_aspect_ratio``); ``BlinkDetector`` turns a track's sequence of them into blink events.
Both are pure: every call takes the frame's capture time ``t`` in seconds.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Any

import numpy as np
import numpy.typing as npt

from kiosk.liveness.mesh import eye_aspect_ratio


def eye_openness(points: npt.NDArray[np.floating[Any]]) -> float:
    """How open the eyes are in one frame of a mesh (``(468, 2|3)`` points): larger = wider open."""
    return eye_aspect_ratio(points)


class BlinkDetector:
    """Finds complete blinks (open -> closed -> open) in one track's eye aspect ratios.

    The open-eye baseline is the median of the last ``history`` open-eye frames; no blink is reported before
    ``baseline_frames`` of them were seen. A closure that lasts longer than ``max_closed_s`` (eyes shut, looking
    down, a lost face) is not a blink.
    """

    def __init__(
        self,
        *,
        close_ratio: float = 0.65,
        open_ratio: float = 0.85,
        max_closed_s: float = 0.5,
        baseline_frames: int = 3,
        history: int = 15,
    ) -> None:
        if not 0.0 < close_ratio < open_ratio <= 1.0:
            raise ValueError(f"need 0 < close_ratio < open_ratio <= 1, got {close_ratio} and {open_ratio}")
        if max_closed_s <= 0.0 or baseline_frames < 1 or history < baseline_frames:
            raise ValueError("need max_closed_s > 0 and 1 <= baseline_frames <= history")
        self.close_ratio = close_ratio
        self.open_ratio = open_ratio
        self.max_closed_s = max_closed_s
        self.baseline_frames = baseline_frames
        self._open: deque[float] = deque(maxlen=history)
        self._closed_since: float | None = None  # time of the first closed frame of the current closure
        self._too_long = False
        self.blinks = 0
        self.last_onset: float | None = None  # time of the first closed frame of the latest completed blink
        self.min_ratio: float | None = None  # the lowest ear / baseline seen: how far the eyes closed

    @property
    def baseline(self) -> float | None:
        """The open-eye EAR of this track, once ``baseline_frames`` open frames were seen."""
        if len(self._open) < self.baseline_frames:
            return None
        return statistics.median(self._open)

    def update(self, ear: float, t: float) -> bool:
        """Feed one frame's EAR; True on the frame a full blink completes."""
        if not math.isfinite(ear):
            return False
        base = self.baseline
        if base is None or base <= 0.0:
            self._open.append(ear)
            return False
        ratio = ear / base
        self.min_ratio = ratio if self.min_ratio is None else min(self.min_ratio, ratio)
        if self._closed_since is None:
            if ratio < self.close_ratio:
                self._closed_since, self._too_long = t, False
            elif ratio >= self.open_ratio:
                self._open.append(ear)
            return False
        if ratio < self.open_ratio:
            # Still closed. The closure is timed over its closed frames only: the frame that shows the eyes open
            # again may come a whole frame interval later on a slow camera, and that gap is not part of the blink.
            if t - self._closed_since > self.max_closed_s:
                self._too_long = True
            return False
        # Eyes open again: a blink unless the closure ran too long.
        blink = not self._too_long
        if blink:
            self.last_onset = self._closed_since
        self._closed_since, self._too_long = None, False
        self._open.append(ear)
        if blink:
            self.blinks += 1
        return blink
