"""tools.measure.screen_latency: pairing the loop's decisions with what the page showed, and its arguments.
(The measurement itself is a benchmark: ``python -m tools screen-latency``.)"""

from __future__ import annotations

from typing import Any

import pytest

from tools.errors import ToolError
from tools.measure import screen_latency


def test_pairs_the_kth_decision_with_result_k_and_takes_out_the_clock_offset() -> None:
    decided = [
        (100.0, ("granted", "a")),
        (101.0, ("denied", None)),
        (102.0, ("granted", "a")),
        (103.0, ("denied", None)),
    ]
    offset = 0.5  # the page's clock runs 500 ms ahead
    shown: list[dict[str, Any]] = [
        {"seq": 1, "outcome": "granted", "dom": 100_510.0},
        {"seq": 2, "outcome": "unknown", "dom": 101_520.0, "frame": 101_530.0},
        {"seq": 4, "outcome": "denied", "dom": 103_504.0},  # 3 never shown (replaced within one update)
    ]
    dom, painted, missed = screen_latency.pair(decided, shown, offset)
    assert dom == pytest.approx([20.0, 4.0]) and painted == pytest.approx([30.0]) and missed == 1


def test_results_out_of_order_are_an_error() -> None:
    decided = [(100.0, ("granted", "a")), (101.0, ("granted", "a"))]
    with pytest.raises(ToolError, match="do not match"):
        screen_latency.pair(decided, [{"seq": 2, "outcome": "denied", "dom": 101_010.0}], 0.0)


def test_fewer_than_50_decisions_is_a_usage_error() -> None:
    with pytest.raises(ToolError, match="at least 50") as info:
        screen_latency.main(["--decisions", "10"])
    assert info.value.code == 2


class FakePage:
    def __init__(self, ahead_s: float) -> None:
        self.ahead_s = ahead_s

    def evaluate(self, _script: str) -> float:
        import time

        return (time.time() + self.ahead_s) * 1000.0


def test_clock_offset_is_measured() -> None:
    offset, err = screen_latency.clock_offset_s(FakePage(2.0))
    assert offset == pytest.approx(2.0, abs=max(err, 0.005))
