"""Synthetic presentations for the demo and the tests: a photo on a wall as a camera sees it, shaken like a
hand-held print, and the same face blinking.

Never used by the door loop. ``close_eyes`` pulls each upper eyelid down to the lower lid (the skin above the eye is
stretched over it, as a real lid is) and darkens the lash line; ``camera_jitter`` makes every frame look like a new
camera frame (shift, scale, rotation, light, sensor noise, JPEG). It needs the face mesh of the image (where the
eyelids are): ``kiosk.liveness.mesh.FaceMesh.landmarks``.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from kiosk.types import Image

W, H = 640, 480

# (corner, upper lid from that corner, other corner, lower lid from the first corner), mesh indices.
_EYES = (
    (33, (246, 161, 160, 159, 158, 157, 173), 133, (7, 163, 144, 145, 153, 154, 155)),
    (263, (466, 388, 387, 386, 385, 384, 398), 362, (249, 390, 373, 374, 380, 381, 382)),
)


# -- clip builders -------------------------------------------


def scene(photo: Image, scale: float = 1.6) -> Image:
    """``photo`` scaled on a plain 640x480 wall, centred: what a kiosk camera sees of a person at the door."""
    canvas = np.full((H, W, 3), 118, np.uint8)
    img = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    h, w = min(img.shape[0], H), min(img.shape[1], W)
    y, x = (H - h) // 2, (W - w) // 2
    canvas[y : y + h, x : x + w] = img[:h, :w]
    return canvas


def close_eyes(image: Image, points: npt.NDArray[np.floating], closure: float = 1.0, lash: float = 0.6) -> Image:
    """``image`` with both eyes shut by ``closure`` (0 = as is, 1 = shut), from the face mesh ``points`` of it.

    Column by column across each eye, the upper lid moves down to 95 % of the way to the lower lid: the rows above
    it are stretched down (skin covers the eye), the rows below the lower lid are stretched up, and a dark lash line
    is drawn where the lids meet (``lash``: how much it darkens). The mesh's lid curves sit a little inside the real
    opening, so the opening is grown first (more at the middle than at the corners). The lash line matters most to
    the models: without it the warp alone moved the refined EAR by ~15 % on 60 LFW photos, with it by ~50 %.
    """
    h, w = image.shape[:2]
    mapx, mapy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    lash_mask = np.zeros((h, w), np.float32)
    pts = np.asarray(points, dtype=np.float64)
    for a, upper_idx, b, lower_idx in _EYES:
        upper = np.vstack([pts[a, :2], pts[list(upper_idx), :2], pts[b, :2]])
        lower = np.vstack([pts[a, :2], pts[list(lower_idx), :2], pts[b, :2]])
        upper, lower = upper[np.argsort(upper[:, 0])], lower[np.argsort(lower[:, 0])]
        x0, x1 = int(np.ceil(upper[0, 0])), int(np.floor(upper[-1, 0]))
        xs = np.arange(max(x0, 0), min(x1 + 1, w))
        if xs.size < 2:
            continue
        yu, yl = np.interp(xs, upper[:, 0], upper[:, 1]), np.interp(xs, lower[:, 0], lower[:, 1])
        gap = float(np.maximum(yl - yu, 0.0).max())
        bump = np.sqrt(np.clip(np.sin(np.pi * (xs - xs[0]) / (xs[-1] - xs[0])), 0.0, 1.0))
        yu, yl = yu - 0.6 * gap * bump, yl + 0.3 * gap * bump
        meet = yu + 0.95 * (yl - yu)
        yu2, yl2 = yu + closure * (meet - yu), yl - closure * (yl - meet)
        reach = max(3.0, 1.5 * float((yl - yu).max()))
        for k, x in enumerate(xs):
            top, bottom = yu[k] - reach, yl[k] + reach
            ys = np.arange(max(int(np.ceil(top)), 0), min(int(np.floor(bottom)) + 1, h))
            y = ys.astype(np.float64)
            src = y.copy()
            above, below = y <= yu2[k], y >= yl2[k]
            src[above] = top + (y[above] - top) * (yu[k] - top) / max(yu2[k] - top, 1e-6)
            src[below] = bottom - (bottom - y[below]) * (bottom - yl[k]) / max(bottom - yl2[k], 1e-6)
            mapy[ys, x] = src
        line = np.stack([xs, yu2], axis=1)
        cv2.polylines(lash_mask, [np.round(line).astype(np.int32)], False, 1.0, max(1, round(0.3 * gap)), cv2.LINE_AA)
    out = cv2.remap(image, mapx, mapy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    out *= 1.0 - lash * closure * cv2.GaussianBlur(lash_mask, (3, 3), 0.7)[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def camera_jitter(image: Image, rng: np.random.Generator) -> Image:
    """One camera frame of a static scene: a few px of shake, ±2 % zoom, ±1° roll, light changes, noise, JPEG."""
    h, w = image.shape[:2]
    m = np.asarray(
        cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-1.0, 1.0), 1.0 + rng.uniform(-0.02, 0.02)), np.float64
    )
    m[:, 2] += rng.uniform(-3.0, 3.0, 2)
    frame = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    out = np.asarray(frame, dtype=np.float32) * rng.uniform(0.9, 1.1) + rng.uniform(-8.0, 8.0)
    out = out + rng.normal(0.0, 2.5, out.shape)
    ok, jpg = cv2.imencode(
        ".jpg", np.clip(out, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(70, 93))]
    )
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return np.asarray(cv2.imdecode(jpg, cv2.IMREAD_COLOR), dtype=np.uint8)


def blink_frames(
    image: Image,
    points: npt.NDArray[np.floating],
    n_open: int = 8,
    n_closed: int = 3,
    n_after: int = 8,
    seed: int = 0,
) -> list[Image]:
    """A jittered clip of ``image`` with one blink: open, half shut, ``n_closed`` shut, half shut, open again.

    ``points`` is the face mesh of ``image`` itself (it says where the eyelids are).
    """
    rng = np.random.default_rng(seed)
    closures = [0.0] * n_open + [0.5] + [1.0] * n_closed + [0.5] + [0.0] * n_after
    shut = {c: close_eyes(image, points, c) for c in (0.5, 1.0)}
    return [camera_jitter(shut[c] if c else image, rng) for c in closures]


def still_frames(image: Image, n: int, seed: int = 0) -> list[Image]:
    """A jittered clip of ``image`` unchanged: a printed photo held up to the camera."""
    rng = np.random.default_rng(seed)
    return [camera_jitter(image, rng) for _ in range(n)]
