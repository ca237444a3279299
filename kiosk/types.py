"""Plain data passed between pipeline stages. No stage imports another stage; they share these."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from kiosk.recognition.match import MatchResult

FloatArray = npt.NDArray[np.float32]
Image = npt.NDArray[np.uint8]  # HxWx3 BGR uint8, contiguous

# Landmark schemes a detector may produce. The aligner maps each scheme onto a model's template.
#   "5pt":        right eye, left eye, nose tip, right mouth corner, left mouth corner (subject's right = image left)
#   "blazeface6": right eye, left eye, nose tip, mouth centre, right ear tragion, left ear tragion
LANDMARK_SCHEMES = ("5pt", "blazeface6")


@dataclass(frozen=True)
class Face:
    """One detected face in image pixel coordinates."""

    box: FloatArray  # (4,) x1, y1, x2, y2
    landmarks: FloatArray  # (K, 2) x, y in the order of ``scheme``
    score: float
    scheme: str = "5pt"

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def center(self) -> tuple[float, float]:
        return float(self.box[0] + self.box[2]) / 2.0, float(self.box[1] + self.box[3]) / 2.0


@dataclass(frozen=True)
class QualityReport:
    """Result of the quality stage: ``ok`` is False when any check failed; ``reasons`` say which and why."""

    ok: bool
    reasons: tuple[str, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def score(self) -> float:
        """A 0..1 summary used to rank templates of one person (higher is better)."""
        return float(self.metrics.get("score", 0.0))


@dataclass(frozen=True)
class Observation:
    """One frame of a track. ``match`` is None when the frame was not embedded or not usable (it is not a vote)."""

    t: float
    match: MatchResult | None
    quality_ok: bool
    quality_reasons: tuple[str, ...] = ()
    latency_ms: float | None = None


@dataclass(frozen=True)
class LivenessResult:
    """Outcome of a liveness check: "pass" | "fail" | "pending" | "unavailable" | "not_required" | "not_checked".

    Only "pass" (or "not_required" when liveness is off) opens the door; "not_checked" marks a deny for which no
    grant was due (a stranger), so liveness was never asked. "pending" means a challenge is running: the
    decider holds the grant and asks again on the next frame. ``method`` says which layers ran (passive, active).
    """

    status: str
    score: float | None = None
    reason: str = ""
    method: str = ""

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"status": self.status}
        if self.method:
            out["method"] = self.method
        if self.score is not None:
            out["score"] = round(self.score, 4)
        if self.reason:
            out["reason"] = self.reason
        return out
