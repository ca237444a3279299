"""Face tracking across frames: greedy IoU association, so the door loop can vote over one person's frames.

Pure and clock-injected: every call takes the frame time ``t`` (monotonic seconds). A handful of faces per frame,
so plain Python beats vectorising.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kiosk.types import Face, FloatArray

Box = Sequence[float] | FloatArray

# A decided track's face whose quality score beats the best embedded frame of its track by this much is embedded again
# even inside ``embed_interval_s``: a sharper, more frontal frame is worth a new vote.
QUALITY_GAIN = 0.1


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (x1, y1, x2, y2); 0.0 when they do not overlap or either is empty."""
    ax1, ay1, ax2, ay2 = (float(v) for v in a)
    bx1, by1, bx2, by2 = (float(v) for v in b)
    iw = min(ax2, bx2) - max(ax1, bx1)
    ih = min(ay2, by2) - max(ay1, by1)
    if iw <= 0.0 or ih <= 0.0:
        return 0.0
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0.0 else 0.0


@dataclass
class Track:
    """One face followed across frames. ``best_quality`` is the quality score of its best embedded frame so far."""

    id: int
    face: Face
    first_seen: float
    last_seen: float
    hits: int = 1
    last_embedded: float | None = None
    best_quality: float = 0.0


class Tracker:
    """Associates each frame's faces with live tracks by IoU; ends tracks unseen for more than ``max_age_s``."""

    def __init__(self, iou_threshold: float, max_age_s: float, *, quality_gain: float = QUALITY_GAIN) -> None:
        self.iou_threshold = float(iou_threshold)
        self.max_age_s = float(max_age_s)
        self.quality_gain = float(quality_gain)
        self._tracks: list[Track] = []
        self._next_id = 1

    @property
    def tracks(self) -> list[Track]:
        """The live tracks, oldest first (a copy)."""
        return list(self._tracks)

    def update(self, faces: list[Face], t: float) -> tuple[list[Track], list[Track]]:
        """Feed one frame. Returns (the track of each face, in the order of ``faces``; tracks that ended now).

        Tracks unseen for more than ``max_age_s`` end *before* association, so a face that reappears after the gap
        starts a new track. Pairs are taken greedily by IoU, highest first; a pair needs IoU >= ``iou_threshold``
        and some overlap at all. Each track takes at most one face; an unmatched face starts a new track.
        """
        ended = [tr for tr in self._tracks if t - tr.last_seen > self.max_age_s]
        if ended:
            self._tracks = [tr for tr in self._tracks if t - tr.last_seen <= self.max_age_s]

        pairs = [
            (score, ti, fi)
            for ti, tr in enumerate(self._tracks)
            for fi, face in enumerate(faces)
            if (score := iou(tr.face.box, face.box)) > 0.0 and score >= self.iou_threshold
        ]
        # Highest IoU first; ties go to the older track and the earlier face, so the result is deterministic.
        pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
        assigned: list[Track | None] = [None] * len(faces)
        taken: set[int] = set()
        for _, ti, fi in pairs:
            if ti in taken or assigned[fi] is not None:
                continue
            tr = self._tracks[ti]
            tr.face, tr.last_seen, tr.hits = faces[fi], t, tr.hits + 1
            assigned[fi] = tr
            taken.add(ti)

        active: list[Track] = []
        for face, found in zip(faces, assigned, strict=True):
            if found is None:
                found = Track(id=self._next_id, face=face, first_seen=t, last_seen=t)
                self._next_id += 1
                self._tracks.append(found)
            active.append(found)
        return active, ended

    def flush(self) -> list[Track]:
        """End every live track (loop shutdown), so the caller can close them out like ended ones."""
        ended, self._tracks = self._tracks, []
        return ended

    def should_embed(
        self, track: Track, t: float, quality_score: float, embed_interval_s: float, need: str = "refresh"
    ) -> bool:
        """Whether this frame of ``track`` is worth an embedding, given the decider's ``need`` for it.

        ``"every_frame"`` (a new or undecided track): always. ``"none"`` (granted): never. ``"refresh"`` (denied or in
        cooldown): when never embedded, when ``embed_interval_s`` has passed since its last embedding (0 = every
        frame), or when ``quality_score`` beats the best embedded frame by at least ``quality_gain`` (default 0.1).
        """
        if need == "every_frame":
            return True
        if need == "none":
            return False
        if track.last_embedded is None:
            return True
        if t - track.last_embedded >= embed_interval_s:
            return True
        return quality_score >= track.best_quality + self.quality_gain

    def mark_embedded(self, track: Track, t: float, quality_score: float) -> None:
        """Record that ``track`` was embedded at ``t`` with a frame of ``quality_score``."""
        first = track.last_embedded is None
        track.last_embedded = t
        track.best_quality = quality_score if first else max(track.best_quality, quality_score)
