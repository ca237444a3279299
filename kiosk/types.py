"""Plain data passed between pipeline stages. No stage imports another stage; they share these."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

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
