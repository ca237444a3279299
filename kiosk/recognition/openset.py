"""Open-set identification: how the size of a gallery changes the chance that a stranger is matched to someone.

A stranger at the door is compared with every template in the gallery, and every comparison is one more chance to
clear the threshold. With T templates and a per-comparison false-match rate f(t) (FMR, what a 1:1 threshold is chosen
by), the chance that at least one clears it, the false-positive identification rate per stranger, is

    FPIR(t) = 1 - (1 - f(t)) ** T        (≈ T · f(t) while small)

so a threshold that lets 1 stranger in 100,000 through at one template lets about 1 in 25 through at 4,000.

The recogniser's manifest entry carries its *impostor tail*: the threshold at FMR 1e-3, 1e-4 and 1e-5 measured on
all pairs of the LFW public images (45 million impostor pairs; ``thresholds.fmr_1e-3`` …). Between measured points
log10(FMR) is interpolated linearly in the threshold (the tail of cosine impostor scores is close to exponential
there); beyond the last point it is extrapolated along the last interval. Lower FMRs are not measured because LFW's
own label errors (one person under two names, a misfiled photo) dominate its impostor pairs below about 3e-6.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

TAIL_PREFIX = "fmr_"


@dataclass(frozen=True)
class ImpostorTail:
    """(FMR, threshold) points of a recogniser, FMR strictly decreasing and threshold strictly increasing."""

    points: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if len(self.points) < 2:
            raise ValueError("an impostor tail needs at least two (fmr, threshold) points")
        for (f0, t0), (f1, t1) in itertools.pairwise(self.points):
            if not (0.0 < f1 < f0 < 1.0 and t1 > t0):
                raise ValueError(f"impostor tail points must fall in FMR and rise in threshold: {self.points}")

    @classmethod
    def from_thresholds(cls, thresholds: Mapping[str, float]) -> ImpostorTail | None:
        """The tail from a manifest ``thresholds`` mapping (``fmr_1e-3: 0.362`` …); None when it has fewer than two
        points (a model whose tail was never measured)."""
        points = sorted(
            ((float(k[len(TAIL_PREFIX) :]), float(v)) for k, v in thresholds.items() if k.startswith(TAIL_PREFIX)),
            reverse=True,
        )
        return cls(tuple(points)) if len(points) >= 2 else None

    def _segment(self, *, fmr: float | None = None, threshold: float | None = None) -> tuple[float, ...]:
        """The two points whose interval holds ``fmr`` (or ``threshold``); the end intervals extend outwards."""
        pts = self.points
        for (f0, t0), (f1, t1) in itertools.pairwise(pts):
            if (fmr is not None and fmr >= f1) or (threshold is not None and threshold <= t1):
                return f0, t0, f1, t1
        (f0, t0), (f1, t1) = pts[-2], pts[-1]
        return f0, t0, f1, t1

    def threshold_at(self, fmr: float) -> float:
        """The threshold whose per-comparison false-match rate is ``fmr`` (0 < fmr < 1)."""
        f0, t0, f1, t1 = self._segment(fmr=fmr)
        slope = (t1 - t0) / (math.log10(f1) - math.log10(f0))
        return t0 + slope * (math.log10(fmr) - math.log10(f0))

    def fmr_at(self, threshold: float) -> float:
        """The per-comparison false-match rate at ``threshold`` (capped at 1)."""
        f0, t0, f1, t1 = self._segment(threshold=threshold)
        slope = (math.log10(f1) - math.log10(f0)) / (t1 - t0)
        return min(1.0, float(10.0 ** (math.log10(f0) + slope * (threshold - t0))))


def fpir(tail: ImpostorTail, templates: int, threshold: float) -> float:
    """Expected chance that one stranger clears ``threshold`` against at least one of ``templates`` templates."""
    f = tail.fmr_at(threshold)
    return -math.expm1(max(templates, 1) * math.log1p(-f)) if f < 1.0 else 1.0


def threshold_for(tail: ImpostorTail, templates: int, target_fpir: float) -> float:
    """The threshold at which a stranger clears some template with probability ``target_fpir`` (0 < it < 1)."""
    per_comparison = -math.expm1(math.log1p(-target_fpir) / max(templates, 1))
    return tail.threshold_at(per_comparison)
