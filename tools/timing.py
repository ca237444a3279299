"""Wall-clock timing for the model tools: one warm-up rule and one statistic, so every tool's "ms per face" means
the same thing."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timings(fn: Callable[[], object], runs: int, warmup: int = 3) -> dict[str, float]:
    """Call ``fn`` ``warmup`` times untimed, then ``runs`` times: median and p95 in milliseconds."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(max(runs, 1)):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000.0)
    samples.sort()
    return {"median": statistics.median(samples), "p95": samples[int(0.95 * (len(samples) - 1))], "runs": len(samples)}


def median_ms(fn: Callable[[], object], runs: int, warmup: int = 3) -> float:
    return timings(fn, runs, warmup)["median"]
