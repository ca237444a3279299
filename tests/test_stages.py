"""Align, quality, embed and match stages on real models and real faces."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from kiosk.config import QualityConfig
from kiosk.errors import ModelError
from kiosk.recognition.align import TEMPLATES, align, similarity_transform, template_points
from kiosk.recognition.match import Matcher, cosine
from kiosk.recognition.quality import assess, head_pose
from kiosk.types import Face


def test_similarity_transform_recovers_a_known_transform() -> None:
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (5, 2)).astype(np.float32)
    angle, scale, t = np.deg2rad(17.0), 0.8, np.array([12.0, -7.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = (src @ rot.T + t).astype(np.float32)
    m = similarity_transform(src, dst)
    assert np.allclose(m[:, :2], rot, atol=1e-4)
    assert np.allclose(m[:, 2], t, atol=1e-3)


def test_aligned_landmarks_land_on_the_template(pipeline, astronaut) -> None:
    face = pipeline.detect(astronaut)[0]
    tpl = TEMPLATES["arcface_112"]
    crop = align(astronaut, face, tpl)
    assert crop.shape == (112, 112, 3)
    m = similarity_transform(face.landmarks, tpl.points)
    moved = face.landmarks @ m[:, :2].T + m[:, 2]
    assert np.abs(moved - tpl.points).max() < 6.0
    # Detecting again on the upscaled aligned crop puts the eyes near the template's eyes.
    big = cv2.resize(crop, (448, 448))
    again = pipeline.detector.detect(big)
    assert again, "no face found in the aligned crop"
    assert np.abs(again[0].landmarks[:2] / 4.0 - tpl.points[:2]).max() < 6.0


def test_blazeface_scheme_maps_to_four_template_points() -> None:
    tpl = TEMPLATES["arcface_112"]
    pts, idx = template_points(tpl, "blazeface6")
    assert idx == [0, 1, 2, 3]
    assert np.allclose(pts[3], (tpl.points[3] + tpl.points[4]) / 2)
    with pytest.raises(ModelError):
        template_points(tpl, "68pt")


def _face_quality(pipeline, image, cfg=None):
    face = pipeline.detect(image)[0]
    crop = align(image, face, pipeline.template)
    return assess(face, crop, cfg or QualityConfig())


def test_quality_passes_a_good_face(pipeline, astronaut) -> None:
    q = _face_quality(pipeline, astronaut)
    assert q.ok, q.reasons
    assert 0.0 < q.score <= 1.0
    assert abs(q.metrics["yaw_deg"]) < 20 and abs(q.metrics["roll_deg"]) < 10


def test_quality_rejects_blur_dark_bright_small_and_turned(pipeline, astronaut, cameraman) -> None:
    blurred = cv2.GaussianBlur(astronaut, (0, 0), 4)
    q = _face_quality(pipeline, blurred)
    assert not q.ok and any("blurry" in r for r in q.reasons)
    dark = cv2.convertScaleAbs(astronaut, alpha=0.15)
    q = _face_quality(pipeline, dark)
    assert any("too dark" in r for r in q.reasons)
    bright = cv2.convertScaleAbs(astronaut, alpha=1.0, beta=100)
    q = _face_quality(pipeline, bright)
    assert any("too bright" in r for r in q.reasons)
    q = _face_quality(pipeline, astronaut, QualityConfig(min_face_px=400))
    assert any("too small" in r for r in q.reasons)
    q = _face_quality(pipeline, cameraman)  # a three-quarter profile
    assert any("head turned" in r for r in q.reasons)


def test_head_pose_roll_and_yaw_from_landmarks() -> None:
    lm = np.array([[40, 50], [70, 50], [55, 65], [43, 80], [67, 80]], np.float32)
    face = Face(box=np.array([20, 20, 90, 100], np.float32), landmarks=lm, score=0.9)
    yaw, _, roll = head_pose(face)
    assert abs(yaw) < 1 and abs(roll) < 1
    c, s = np.cos(np.deg2rad(30)), np.sin(np.deg2rad(30))
    rolled = (lm - lm[2]) @ np.array([[c, s], [-s, c]], np.float32) + lm[2]
    _, _, roll = head_pose(Face(face.box, rolled.astype(np.float32), 0.9))
    assert abs(abs(roll) - 30) < 1
    turned = lm.copy()
    turned[2, 0] = 70  # nose tip at the left eye: ~45° yaw
    yaw, _, _ = head_pose(Face(face.box, turned, 0.9))
    assert 40 < yaw < 50


def test_embeddings_are_unit_vectors_and_batch_equals_single(pipeline, astronaut, cameraman) -> None:
    crops = [align(im, pipeline.detect(im)[0], pipeline.template) for im in (astronaut, cameraman)]
    batch = pipeline.embedder.embed(crops)
    assert batch.shape == (2, 128)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    single = pipeline.embedder.embed(crops[:1])
    assert np.allclose(single[0], batch[0], atol=1e-5)
    assert pipeline.embedder.embed([]).shape == (0, 128)
    assert cosine(batch[0], batch[1]) < 0.3


def test_same_person_scores_higher_than_different_people(pipeline, faces_dir) -> None:
    from kiosk.imageio import read_image

    def emb(rel: str) -> np.ndarray:
        r = pipeline.analyze(read_image(faces_dir / "lfw" / "images" / rel), select="central")
        assert r and r[0].embedding is not None
        return r[0].embedding

    a1 = emb("Abel_Pacheco/Abel_Pacheco_0001.jpg")
    a4 = emb("Abel_Pacheco/Abel_Pacheco_0004.jpg")
    b = emb("Amber_Tamblyn/Amber_Tamblyn_0001.jpg")
    assert cosine(a1, a4) > pipeline.thresholds.accept
    assert cosine(a1, b) < pipeline.thresholds.likely


def _unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, np.float32)
    return a / np.linalg.norm(a)


def test_matcher_threshold_margin_and_per_person_best() -> None:
    e = np.stack([_unit([1, 0, 0]), _unit([0.9, 0.1, 0]), _unit([0, 1, 0]), _unit([0, 0, 1])])
    m = Matcher(e, np.array([1, 1, 2, 3]), ["ann", "ann", "bob", "cy"], threshold=0.5, margin=0.1)
    r = m.match(_unit([1, 0.05, 0]))
    assert r.accepted and r.name == "ann" and r.person_id == 1
    assert r.runner_up in ("bob", "cy") and r.runner_up_score is not None and r.runner_up_score < 0.1
    r = m.match(_unit([0, 0, -1]))
    assert not r.accepted and r.name is None and r.candidate is not None and "below threshold" in r.reason
    r = m.match(_unit([1, 1, 0]))  # equally close to ann and bob
    assert not r.accepted and "ambiguous" in r.reason
    empty = Matcher(np.zeros((0, 3), np.float32), np.zeros(0, np.int64), [], threshold=0.5, margin=0.1)
    assert not empty.match(_unit([1, 0, 0])).accepted and len(empty) == 0
