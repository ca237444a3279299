"""BlinkDetector on synthetic eye-openness traces: the cases the real recordings showed matter (a blink in the first
frames after the prompt, a blink seen in one frame at 7.5 fps, a long closure, frame-to-frame noise)."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from kiosk.liveness.blink import BlinkDetector

OPEN = 0.30


def feed(det: BlinkDetector, values: Sequence[float], fps: float, t0: float = 0.0) -> list[float]:
    """Feed ``values`` at ``fps``; the onsets (``last_onset``) of the blinks found, in order."""
    onsets = []
    for i, v in enumerate(values):
        if det.update(v, t0 + i / fps):
            assert det.last_onset is not None
            onsets.append(det.last_onset)
    return onsets


def test_blink_in_the_first_frames_is_found_and_does_not_poison_the_level() -> None:
    # The prompt's first frame is open, then the person blinks at once (frames 1-4 closed, 30 fps).
    values = [OPEN, 0.12, 0.10, 0.15, 0.24] + [OPEN] * 40 + [0.14, 0.12, 0.25] + [OPEN] * 10
    det = BlinkDetector()
    onsets = feed(det, values, 30.0)
    assert onsets == pytest.approx([1 / 30, 45 / 30])
    assert det.baseline == pytest.approx(OPEN)
    assert det.blinks == 2


def test_blink_before_the_level_is_known_is_reported_when_it_is() -> None:
    det = BlinkDetector(warmup_frames=5)
    got = [det.update(v, i / 30) for i, v in enumerate([OPEN, 0.1, OPEN, OPEN, OPEN, OPEN])]
    assert got == [False, False, False, False, True, False]  # found on the 5th frame, when the level is known
    assert det.last_onset == pytest.approx(1 / 30)


def test_closed_at_the_first_frame_is_no_blink() -> None:
    # The eyes were never seen open: no onset is known, it may be eyes kept shut.
    assert feed(BlinkDetector(), [0.1, 0.1, OPEN, OPEN, OPEN, OPEN], 15.0) == []


def test_single_closed_frame_at_7_fps_is_a_blink() -> None:
    fps = 7.5
    values = [OPEN] * 8 + [0.2] + [OPEN] * 8
    det = BlinkDetector()
    assert feed(det, values, fps) == pytest.approx([8 / fps])
    # ... and a half-open frame after it only delays the report.
    det = BlinkDetector()
    got = [det.update(v, i / fps) for i, v in enumerate([OPEN] * 8 + [0.2, 0.26, OPEN])]
    assert got[-3:] == [False, False, True] and det.last_onset == pytest.approx(8 / fps)


def test_long_closure_is_no_blink() -> None:
    fps = 30.0
    values = [OPEN] * 30 + [0.1] * 30 + [OPEN] * 30  # 1 s shut
    assert feed(BlinkDetector(), values, fps) == []
    # A blink after it is found again.
    assert feed(BlinkDetector(), [*values, 0.1, 0.1, OPEN, OPEN], fps) == pytest.approx([90 / fps])


def test_noise_and_shallow_dips_are_no_blinks() -> None:
    rng = random.Random(0)
    det = BlinkDetector()
    values = [OPEN * (1.0 + rng.uniform(-0.05, 0.05)) for _ in range(1800)]  # 60 s at 30 fps, ±5 %
    values[600:604] = [OPEN * 0.9] * 4  # a dip to 0.9 of open: a glance, not a blink
    assert feed(det, values, 30.0) == []
    assert det.min_ratio is not None and det.min_ratio > 0.85


def test_half_open_does_not_finish_a_blink() -> None:
    det = BlinkDetector()
    values = [OPEN] * 10 + [0.1, 0.25, 0.25, 0.25]  # back to 0.83 of open only: still closing or looking down
    assert feed(det, values, 30.0) == []
    assert det.update(OPEN, 14 / 30) and det.last_onset == pytest.approx(10 / 30)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"close_ratio": 0.9, "open_ratio": 0.8},
        {"max_closed_s": 0.0},
        {"level_window_s": -1.0},
        {"warmup_frames": 0},
        {"level_quantile": 1.5},
    ],
)
def test_bad_parameters_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BlinkDetector(**kwargs)


def test_non_finite_values_are_ignored() -> None:
    det = BlinkDetector()
    assert feed(det, [OPEN] * 5 + [float("nan"), 0.1, float("inf"), OPEN], 30.0) == pytest.approx([6 / 30])
