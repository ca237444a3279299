"""Quality gate: face size, sharpness, brightness and head pose, each rejection with a readable reason.

Pose is a geometric estimate from the landmarks (no 3-D model): roll from the eye line, yaw from how far the nose
tip sits off the eye midpoint (≈ tan(yaw) in half inter-eye distances), pitch from where the nose sits between the
eye line and the mouth compared with a level face. Good enough to refuse profiles and looking-down faces; not a
measurement.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from kiosk.config import QualityConfig
from kiosk.types import Face, Image, QualityReport

# Frontal reference: where the nose tip sits between the eye line (0) and the mouth (1) on a level face. The ArcFace
# template says 0.495; detected landmarks put it lower, so this is the median over LFW (median pitch 0 there).
_FRONTAL_NOSE_RATIO = 0.57


def head_pose(face: Face) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees, estimated from eyes, nose and mouth landmarks."""
    lm = face.landmarks.astype(np.float64)
    eye_r, eye_l, nose = lm[0], lm[1], lm[2]
    mouth = lm[3] if face.scheme == "blazeface6" else (lm[3] + lm[4]) / 2.0
    d = eye_l - eye_r
    eye_dist = float(np.hypot(d[0], d[1]))
    if eye_dist < 1e-6:
        return 90.0, 90.0, 0.0
    roll = math.degrees(math.atan2(d[1], d[0]))
    # Rotate into the upright face frame around the eye midpoint.
    c, s = d[0] / eye_dist, d[1] / eye_dist
    rot = np.array([[c, s], [-s, c]])
    mid = (eye_r + eye_l) / 2.0
    n = rot @ (nose - mid)
    m = rot @ (mouth - mid)
    # The nose tip sits about half an inter-eye distance in front of the eye plane, so its sideways offset in
    # half (foreshortened) eye distances is ~tan(yaw).
    yaw = math.degrees(math.atan(n[0] / (eye_dist / 2.0)))
    ratio = n[1] / m[1] if m[1] > 1e-6 else 0.0
    pitch = math.degrees(math.asin(float(np.clip((_FRONTAL_NOSE_RATIO - ratio) * 2.0, -1.0, 1.0))))
    return yaw, pitch, roll


def sharpness(gray: np.ndarray) -> float:
    """Variance of the Laplacian: low on blurred or defocused faces."""
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def assess(face: Face, aligned: Image, cfg: QualityConfig) -> QualityReport:
    """Check one face; ``aligned`` is its aligned crop (sharpness/brightness are measured there, scale-free)."""
    reasons: list[str] = []
    size = min(face.width, face.height)
    if size < cfg.min_face_px:
        reasons.append(f"face too small: {size:.0f} px < {cfg.min_face_px} px")
    gray = cv2.cvtColor(aligned, cv2.COLOR_BGR2GRAY)
    h, w = gray.shape
    inner = gray[h // 4 : h - h // 8, w // 5 : w - w // 5]  # cheeks, eyes, nose, mouth; little background
    sharp = sharpness(inner)
    bright = float(inner.mean())
    if sharp < cfg.min_sharpness:
        reasons.append(f"too blurry: sharpness {sharp:.0f} < {cfg.min_sharpness:.0f}")
    if bright < cfg.min_brightness:
        reasons.append(f"too dark: brightness {bright:.0f} < {cfg.min_brightness:.0f}")
    if bright > cfg.max_brightness:
        reasons.append(f"too bright: brightness {bright:.0f} > {cfg.max_brightness:.0f}")
    yaw, pitch, roll = head_pose(face)
    if abs(yaw) > cfg.max_yaw_deg:
        reasons.append(f"head turned: yaw {yaw:+.0f}° beyond ±{cfg.max_yaw_deg:.0f}°")
    if abs(pitch) > cfg.max_pitch_deg:
        reasons.append(f"head tilted up/down: pitch {pitch:+.0f}° beyond ±{cfg.max_pitch_deg:.0f}°")
    if abs(roll) > cfg.max_roll_deg:
        reasons.append(f"head rolled: roll {roll:+.0f}° beyond ±{cfg.max_roll_deg:.0f}°")
    score = (
        min(1.0, sharp / max(4.0 * cfg.min_sharpness, 1e-6))
        * max(0.0, 1.0 - abs(yaw) / 90.0)
        * max(0.0, 1.0 - abs(pitch) / 90.0)
        * min(1.0, size / max(2.0 * cfg.min_face_px, 1e-6))
        * max(0.0, min(face.score, 1.0))
    )
    metrics = {
        "size_px": size,
        "sharpness": sharp,
        "brightness": bright,
        "yaw_deg": yaw,
        "pitch_deg": pitch,
        "roll_deg": roll,
        "det_score": float(face.score),
        "score": float(score),
    }
    return QualityReport(ok=not reasons, reasons=tuple(reasons), metrics=metrics)
