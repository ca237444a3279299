"""Open-set thresholds: the impostor tail, FPIR as the gallery grows, the threshold for a target FPIR."""

from __future__ import annotations

import math

import pytest

from kiosk.recognition.openset import ImpostorTail, fpir, threshold_for

SFACE = {"accept": 0.47, "likely": 0.36, "fmr_1e-3": 0.362, "fmr_1e-4": 0.417, "fmr_1e-5": 0.469}


def tail() -> ImpostorTail:
    t = ImpostorTail.from_thresholds(SFACE)
    assert t is not None
    return t


def test_measured_points_are_reproduced_exactly() -> None:
    t = tail()
    for fmr, thr in ((1e-3, 0.362), (1e-4, 0.417), (1e-5, 0.469)):
        assert t.threshold_at(fmr) == pytest.approx(thr)
        assert t.fmr_at(thr) == pytest.approx(fmr)


def test_between_and_beyond_the_points_log_linear() -> None:
    t = tail()
    assert t.threshold_at(10**-4.5) == pytest.approx((0.417 + 0.469) / 2)
    # Beyond the last point: the last decade's slope (0.052 per decade) goes on.
    assert t.threshold_at(1e-7) == pytest.approx(0.469 + 2 * 0.052)
    assert t.threshold_at(1e-2) == pytest.approx(0.362 - 0.055)
    for thr in (0.2, 0.4, 0.5, 0.6, 0.7):
        assert t.threshold_at(t.fmr_at(thr)) == pytest.approx(thr)
    assert t.fmr_at(-1.0) == 1.0  # capped


def test_fpir_grows_with_the_gallery_and_the_threshold_for_it_rises() -> None:
    t = tail()
    assert fpir(t, 1, 0.469) == pytest.approx(1e-5)
    assert fpir(t, 4000, 0.469) == pytest.approx(1 - (1 - 1e-5) ** 4000)
    assert fpir(t, 4000, 0.469) > 30 * fpir(t, 1, 0.469)
    thresholds = [threshold_for(t, n, 1e-3) for n in (1, 10, 100, 1000, 10000)]
    assert thresholds == sorted(thresholds)
    for n in (1, 300, 6000):
        assert fpir(t, n, threshold_for(t, n, 1e-3)) == pytest.approx(1e-3, rel=1e-6)
    # Ten times the templates costs one decade of FMR: one slope step (0.052) on the threshold.
    assert threshold_for(t, 6000, 1e-3) - threshold_for(t, 600, 1e-3) == pytest.approx(0.052, abs=1e-4)
    assert math.isfinite(threshold_for(t, 0, 1e-3))


def test_a_model_without_a_measured_tail_has_none_and_bad_tails_are_refused() -> None:
    assert ImpostorTail.from_thresholds({"accept": 0.47, "likely": 0.36}) is None
    assert ImpostorTail.from_thresholds({"fmr_1e-3": 0.36}) is None
    with pytest.raises(ValueError, match="fall in FMR and rise"):
        ImpostorTail(((1e-3, 0.5), (1e-4, 0.4)))
    with pytest.raises(ValueError, match="at least two"):
        ImpostorTail(((1e-3, 0.5),))
