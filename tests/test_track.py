"""Tracker: IoU, association across frames, track ageing, and when a frame is worth an embedding."""

from __future__ import annotations

import numpy as np
import pytest

from kiosk.door.track import Track, Tracker, iou
from kiosk.types import Face


def face(x1: float, y1: float, x2: float, y2: float) -> Face:
    return Face(
        box=np.array([x1, y1, x2, y2], dtype=np.float32), landmarks=np.zeros((5, 2), dtype=np.float32), score=0.9
    )


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
        ((0, 0, 10, 10), (5, 0, 15, 10), 50 / 150),
        ((0, 0, 10, 10), (0, 0, 5, 5), 25 / 100),
        ((0, 0, 10, 10), (5, 5, 15, 15), 25 / 175),
        ((0, 0, 10, 10), (10, 0, 20, 10), 0.0),  # touching edges
        ((0, 0, 10, 10), (50, 50, 60, 60), 0.0),
        ((0, 0, 0, 0), (0, 0, 0, 0), 0.0),  # empty boxes
    ],
)
def test_iou(a: tuple[float, ...], b: tuple[float, ...], expected: float) -> None:
    assert iou(a, b) == pytest.approx(expected)
    assert iou(b, a) == pytest.approx(expected)


def test_iou_takes_numpy_boxes() -> None:
    assert iou(face(0, 0, 10, 10).box, face(5, 0, 15, 10).box) == pytest.approx(1 / 3)


def test_slowly_moving_face_keeps_its_track() -> None:
    tracker = Tracker(iou_threshold=0.3, max_age_s=0.5)
    ids = []
    for i in range(20):
        active, ended = tracker.update([face(100 + 4 * i, 50 + i, 200 + 4 * i, 170 + i)], t=i * 0.25)
        assert ended == []
        ids.append(active[0].id)
    assert ids == [1] * 20
    tr = tracker.tracks[0]
    assert (tr.hits, tr.first_seen, tr.last_seen) == (20, 0.0, 4.75)
    assert float(tr.face.box[0]) == 176.0  # the latest face is kept


def test_two_faces_far_apart_are_distinct_and_follow_their_positions() -> None:
    tracker = Tracker(iou_threshold=0.3, max_age_s=1.0)
    left, right = face(0, 0, 100, 100), face(400, 0, 500, 100)
    active, _ = tracker.update([left, right], t=0.0)
    assert [tr.id for tr in active] == [1, 2]
    # Same places, listed the other way round: each face stays with its own track, in the order of the faces.
    active, _ = tracker.update([face(402, 0, 502, 100), face(2, 0, 102, 100)], t=0.1)
    assert [tr.id for tr in active] == [2, 1]
    # The two people swap places (far apart, no overlap between frames): neither inherits the other's track.
    active, ended = tracker.update([face(400, 0, 500, 100), face(0, 0, 100, 100)], t=0.2)
    assert [tr.id for tr in active] == [2, 1]
    active, ended = tracker.update([face(0, 300, 100, 400), face(400, 300, 500, 400)], t=0.3)
    assert [tr.id for tr in active] == [3, 4]
    assert ended == []


def test_each_track_takes_at_most_one_face_and_the_best_overlap_wins() -> None:
    tracker = Tracker(iou_threshold=0.3, max_age_s=1.0)
    tracker.update([face(0, 0, 100, 100)], t=0.0)
    # Both overlap track 1; the second overlaps more, so it keeps the track and the first starts track 2.
    active, _ = tracker.update([face(30, 0, 130, 100), face(5, 0, 105, 100)], t=0.1)
    assert [tr.id for tr in active] == [2, 1]


def test_overlap_below_threshold_starts_a_new_track() -> None:
    tracker = Tracker(iou_threshold=0.5, max_age_s=1.0)
    tracker.update([face(0, 0, 100, 100)], t=0.0)
    active, _ = tracker.update([face(40, 0, 140, 100)], t=0.1)  # IoU 60/140 = 0.43
    assert active[0].id == 2


def test_unseen_track_ends_once_after_max_age() -> None:
    tracker = Tracker(iou_threshold=0.3, max_age_s=1.0)
    tracker.update([face(0, 0, 100, 100)], t=0.0)
    active, ended = tracker.update([], t=1.0)  # exactly max_age_s: still alive
    assert (active, ended) == ([], [])
    active, ended = tracker.update([], t=1.25)
    assert [tr.id for tr in ended] == [1]
    assert tracker.update([], t=2.0) == ([], [])  # reported once
    # The same face back after the gap is a new track.
    active, _ = tracker.update([face(0, 0, 100, 100)], t=2.1)
    assert active[0].id == 2


def test_track_ends_while_another_continues() -> None:
    tracker = Tracker(iou_threshold=0.3, max_age_s=0.5)
    tracker.update([face(0, 0, 100, 100), face(300, 0, 400, 100)], t=0.0)
    for t in (0.25, 0.5, 0.75):
        active, ended = tracker.update([face(300, 0, 400, 100)], t=t)
        assert [tr.id for tr in active] == [2]
        assert [tr.id for tr in ended] == ([1] if t == 0.75 else [])
    assert [tr.id for tr in tracker.flush()] == [2]
    assert tracker.tracks == []


def test_should_embed_rules() -> None:
    tracker = Tracker(iou_threshold=0.3, max_age_s=1.0)
    tr = Track(id=1, face=face(0, 0, 10, 10), first_seen=0.0, last_seen=0.0)
    assert tracker.should_embed(tr, 0.0, quality_score=0.0, embed_interval_s=1.0)  # never embedded
    tracker.mark_embedded(tr, 0.0, 0.5)
    assert (tr.last_embedded, tr.best_quality) == (0.0, 0.5)
    assert not tracker.should_embed(tr, 0.5, quality_score=0.55, embed_interval_s=1.0)
    assert not tracker.should_embed(tr, 0.5, quality_score=0.59, embed_interval_s=1.0)
    assert tracker.should_embed(tr, 0.5, quality_score=0.65, embed_interval_s=1.0)  # clearly better face
    assert tracker.should_embed(tr, 1.0, quality_score=0.1, embed_interval_s=1.0)  # interval passed
    assert tracker.should_embed(tr, 0.01, quality_score=0.1, embed_interval_s=0.0)  # 0 = every frame
    tracker.mark_embedded(tr, 1.0, 0.3)  # a worse frame does not lower the bar
    assert (tr.last_embedded, tr.best_quality) == (1.0, 0.5)
    tracker.mark_embedded(tr, 1.2, 0.8)
    assert tr.best_quality == 0.8
    assert not tracker.should_embed(tr, 1.5, quality_score=0.85, embed_interval_s=1.0)


def test_should_embed_follows_the_deciders_need() -> None:
    tracker = Tracker(iou_threshold=0.3, max_age_s=1.0)
    tr = Track(id=1, face=face(0, 0, 10, 10), first_seen=0.0, last_seen=0.0)
    tracker.mark_embedded(tr, 0.0, 0.5)
    # Undecided: every frame, whatever the interval; granted: never, even a much better face after a long time.
    assert tracker.should_embed(tr, 0.01, quality_score=0.1, embed_interval_s=5.0, need="every_frame")
    assert not tracker.should_embed(tr, 100.0, quality_score=0.99, embed_interval_s=0.0, need="none")
    # Decided (denied or cooling down): the interval and quality-gain rules.
    assert not tracker.should_embed(tr, 0.2, quality_score=0.5, embed_interval_s=0.5, need="refresh")
    assert tracker.should_embed(tr, 0.5, quality_score=0.5, embed_interval_s=0.5, need="refresh")
