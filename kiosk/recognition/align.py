"""Alignment: a 5-point similarity transform onto a recogniser's landmark template.

Templates are per model (the manifest's ``align_template``). Detectors that produce other landmark schemes are
mapped explicitly: BlazeFace gives eyes, nose tip and mouth *centre* (no corners), so it is aligned on 4 points with
the template's mouth centre taken as the mean of its two mouth corners — no corners are invented.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from kiosk.errors import ModelError
from kiosk.types import Face, FloatArray, Image


@dataclass(frozen=True)
class Template:
    size: tuple[int, int]  # (width, height)
    points: FloatArray  # (5, 2) in the 5pt order


TEMPLATES: dict[str, Template] = {
    # ArcFace / InsightFace 112x112: right eye, left eye, nose tip, right mouth corner, left mouth corner.
    "arcface_112": Template(
        size=(112, 112),
        points=np.array(
            [
                [38.2946, 51.6963],
                [73.5318, 51.5014],
                [56.0252, 71.7366],
                [41.5493, 92.3655],
                [70.7299, 92.2041],
            ],
            dtype=np.float32,
        ),
    ),
}


def template_points(template: Template, scheme: str) -> tuple[FloatArray, list[int]]:
    """Target points for a landmark scheme, and which of the face's landmarks to use."""
    if scheme == "5pt":
        return template.points, [0, 1, 2, 3, 4]
    if scheme == "blazeface6":
        p = template.points
        mouth = (p[3] + p[4]) / 2.0
        return np.stack([p[0], p[1], p[2], mouth]).astype(np.float32), [0, 1, 2, 3]
    raise ModelError(f"no alignment mapping for landmark scheme {scheme!r}")


def similarity_transform(src: FloatArray, dst: FloatArray) -> FloatArray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src to dst (Umeyama 1991)."""
    src = src.astype(np.float64)
    dst = dst.astype(np.float64)
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s_c, d_c = src - mu_s, dst - mu_d
    var_s = (s_c**2).sum() / len(src)
    cov = d_c.T @ s_c / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / var_s if var_s > 0 else 1.0
    m = np.empty((2, 3), dtype=np.float64)
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m.astype(np.float32)


def get_template(ref: str | Mapping[str, Any] | None) -> Template:
    """A named template from ``TEMPLATES``, or an inline one from the manifest: ``{size: [w, h], points: 5x[x, y]}``."""
    if isinstance(ref, Mapping):
        try:
            size = (int(ref["size"][0]), int(ref["size"][1]))
            points = np.asarray(ref["points"], dtype=np.float32)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ModelError(f"inline alignment template is malformed ({exc.__class__.__name__}: {exc})") from None
        if points.shape != (5, 2) or not np.all(np.isfinite(points)) or min(size) < 8:
            raise ModelError(f"inline alignment template needs size [w, h] >= 8 and 5 points, got {points.shape}")
        return Template(size=size, points=points)
    template = TEMPLATES.get(ref or "")
    if template is None:
        raise ModelError(f"unknown alignment template {ref!r} (known: {', '.join(sorted(TEMPLATES))})")
    return template


def align(image: Image, face: Face, template: Template) -> Image:
    """Warp the face onto the template; returns a (height, width, 3) BGR crop."""
    dst, idx = template_points(template, face.scheme)
    matrix = similarity_transform(face.landmarks[idx], dst)
    crop = cv2.warpAffine(image, matrix, template.size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return np.ascontiguousarray(crop)
