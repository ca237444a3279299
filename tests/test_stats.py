"""``kiosk.stats``: the one percentile rule (nearest rank) and the one timer behind every measured figure."""

from __future__ import annotations

import statistics
from collections import deque

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiosk.door.loop import LoopStats
from kiosk.stats import dist, interleaved_ms, median, median_ms, percentile, time_ms, timings


def test_percentile_by_hand() -> None:
    # 100 samples 1..100 (given out of order): the p-th percentile is the p-th smallest, the median the 50th.
    values = [float(v) for v in range(100, 0, -1)]
    assert percentile(values, 95) == 95.0 and percentile(values, 50) == 50.0 and median(values) == 50.0
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 100.0 and percentile(values, 0.5) == 1.0
    assert percentile([7.0], 95) == 7.0
    assert dist(values) == {"median": 50.0, "p95": 95.0, "n": 100}


def test_small_samples_where_the_old_rules_disagreed() -> None:
    four = [4.0, 1.0, 3.0, 2.0]
    # nearest rank: the median is the lower middle sample, p95 the largest (rank ceil(0.95 * 4) = 4)
    assert median(four) == 2.0 and percentile(four, 95) == 4.0
    # what the replaced rules said: the mean of the middle two (statistics / numpy), the upper middle (the loop's
    # stats), p95 at index int(0.95 * (n - 1)) (tools/timing.py) or interpolated (numpy's default)
    assert statistics.median(four) == 2.5 and sorted(four)[len(four) // 2] == 3.0
    assert sorted(four)[int(0.95 * 3)] == 3.0 and float(np.percentile(four, 95)) == pytest.approx(3.85)
    # three samples: p95 is the largest (rank ceil(2.85) = 3); the old index rule took the middle one
    assert percentile([10.0, 20.0, 30.0], 95) == 30.0 and sorted([10.0, 20.0, 30.0])[int(0.95 * 2)] == 20.0


def test_dist_rounds_and_reports_nothing_measured() -> None:
    assert dist([1.23456, 2.34567], ndigits=2) == {"median": 1.23, "p95": 2.35, "n": 2}
    assert dist([1.23456], ndigits=None) == {"median": 1.23456, "p95": 1.23456, "n": 1}
    assert dist([]) == {"median": None, "p95": None, "n": 0}


def test_percentile_refuses_an_empty_sample_and_a_bad_q() -> None:
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile([1.0], 101)


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=60), st.floats(0, 100))
def test_percentile_is_an_observed_value_and_monotone(values: list[float], q: float) -> None:
    p = percentile(values, q)
    assert p in values
    assert percentile(values, 0) <= p <= percentile(values, 100) == max(values)
    # at least q % of the samples are at or below it, and it is the smallest sample for which that holds
    assert sum(v <= p for v in values) >= q / 100 * len(values)
    assert sum(v < p for v in values) < max(q / 100 * len(values), 1)


def test_the_door_loop_stats_use_the_rule() -> None:
    stats = LoopStats()
    stats.frame_ms = deque([4.0, 1.0, 3.0, 2.0])
    stats.grant_latency_ms.extend([300.0, 100.0])
    assert stats.as_dict()["frame_ms_median"] == 2.0 and stats.as_dict()["grant_latency_ms_median"] == 100.0
    assert stats.as_dict()["deny_latency_ms_median"] is None


def test_timer_warms_up_then_times_every_run() -> None:
    calls: list[int] = []
    out = timings(lambda: calls.append(1), runs=20, warmup=3)
    assert len(calls) == 23 and out["n"] == 20
    assert 0.0 <= out["median"] <= out["p95"]
    assert median_ms(lambda: None, runs=5) >= 0.0
    assert len(time_ms(lambda: None, runs=0, warmup=0)) == 1  # at least one timed call


def test_interleaved_rotates_the_order_and_passes_the_round() -> None:
    seen: list[tuple[str, int]] = []
    calls = {n: (lambda r, n=n: seen.append((n, r))) for n in "abc"}
    samples = interleaved_ms(calls, rounds=3, warmup=1)
    warm = [("a", 0), ("b", 0), ("c", 0)]  # one warm-up round, then round 0 in order, 1 and 2 rotated
    assert seen == [*warm, *warm, ("b", 1), ("c", 1), ("a", 1), ("c", 2), ("a", 2), ("b", 2)]
    assert {n: len(v) for n, v in samples.items()} == {"a": 3, "b": 3, "c": 3}
