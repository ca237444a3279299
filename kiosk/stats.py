"""The one statistics rule and the one timer behind every measured figure (``kiosk bench``, the tools' JSON).

**Percentile rule: nearest rank.** ``percentile(values, q)`` is the smallest sample with at least ``q`` % of the
samples at or below it: sort the ``n`` samples and take the one at 1-based rank ``ceil(q / 100 * n)`` (rank 1 for
``q = 0``). The median is ``percentile(values, 50)``: for an even ``n`` the *lower* of the two middle samples, not
their mean. Example: ``[1, 2, 3, 4]`` has median 2 and p95 4 (numpy's default, linear interpolation, gives 2.5
and 3.85).

Why nearest rank: every figure is a sample that was really observed (a p95 of 41 ms is a frame that took 41 ms; a
media-time latency stays a whole number of frames), and it is the rule ``kiosk bench``, ``tools backends``,
``tools ort-options`` and ``tools replay-bench`` already used, so unifying on it changed the fewest published
figures. Interpolated rules invent values between samples and disagree with each other on small samples.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TypedDict


class Dist(TypedDict):
    """Median and p95 (nearest rank) of ``n`` samples; both None when ``n`` is 0."""

    median: float | None
    p95: float | None
    n: int


class Timing(TypedDict):
    """Median and p95 (nearest rank, unrounded) of ``n`` >= 1 timed calls, in milliseconds."""

    median: float
    p95: float
    n: int


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank ``q``-th percentile (0 <= q <= 100) of a non-empty sample: an observed value."""
    v = sorted(values)
    if not v:
        raise ValueError("percentile of an empty sample")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    return v[max(0, math.ceil(q / 100.0 * len(v)) - 1)]


def median(values: Iterable[float]) -> float:
    """``percentile(values, 50)``: the lower middle sample when their number is even."""
    return percentile(values, 50)


def dist(values: Iterable[float], ndigits: int | None = 4) -> Dist:
    """``{median, p95, n}``, rounded to ``ndigits`` (None: unrounded); ``{median: None, p95: None, n: 0}`` when
    nothing was measured."""
    v = sorted(values)
    if not v:
        return {"median": None, "p95": None, "n": 0}
    med, p95 = percentile(v, 50), percentile(v, 95)
    if ndigits is not None:
        med, p95 = round(med, ndigits), round(p95, ndigits)
    return {"median": med, "p95": p95, "n": len(v)}


def time_ms(fn: Callable[[], object], runs: int, warmup: int = 3) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then ``runs`` times (at least once): each call's milliseconds."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(max(runs, 1)):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def timings(fn: Callable[[], object], runs: int, warmup: int = 3) -> Timing:
    """Median and p95 of ``time_ms(fn, runs, warmup)``, unrounded."""
    samples = time_ms(fn, runs, warmup)
    return {"median": percentile(samples, 50), "p95": percentile(samples, 95), "n": len(samples)}


def median_ms(fn: Callable[[], object], runs: int, warmup: int = 3) -> float:
    """The median of ``time_ms(fn, runs, warmup)``: a model tool's "ms per face"."""
    return median(time_ms(fn, runs, warmup))


def interleaved_ms(
    calls: Mapping[str, Callable[[int], object]], rounds: int, warmup: int = 3, gap_s: float = 0.0
) -> dict[str, list[float]]:
    """Time several candidates under the same machine load: ``warmup`` untimed rounds, then ``rounds`` rounds that
    call every candidate once (called with the round number), the order rotated by one each round so none is
    always first; ``gap_s`` of sleep before each call (as a camera paces the kiosk). Milliseconds per call."""
    names = list(calls)
    for i in range(warmup):
        for name in names:
            calls[name](i)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            if gap_s > 0:
                time.sleep(gap_s)
            t0 = time.perf_counter()
            calls[name](r)
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return samples
