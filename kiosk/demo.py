"""``kiosk demo``: the whole recognition path on any machine, with public-domain images from scikit-image.

In a throwaway gallery it enrols the astronaut (Eileen Collins, NASA photo); refuses the cameraman (head turned
~57°: fails the pose check), a photo with no face, and the astronaut again under another name (duplicate); then
identifies altered views (rotated, rescaled, darker, noisier) of both faces — the astronaut as herself, the
cameraman as "not enrolled" — and finds no face in photos without one. The images are written to a temp folder
and go through the same file path as ``kiosk enroll`` / ``kiosk identify``.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .config import Config
from .context import Context
from .enroll import enroll
from .errors import BackendUnavailableError, ExitCode, KioskError
from .imageio import as_bgr, read_image
from .types import Image

FACES = {"astronaut": "astronaut", "cameraman": "camera"}
NO_FACE = ("coffee", "rocket", "coins", "text")


def _skimage_image(name: str) -> Image:
    try:
        from skimage import data
    except ImportError as exc:
        raise BackendUnavailableError("the demo needs scikit-image: pip install 'face-kiosk[demo]'") from exc
    rgb = getattr(data, name)()
    arr = np.asarray(rgb)
    return as_bgr(arr[..., ::-1] if arr.ndim == 3 else arr)


def _u8(a: np.ndarray) -> Image:
    return np.ascontiguousarray(a, dtype=np.uint8)


def _rotate(img: Image, deg: float) -> Image:
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0)
    return _u8(cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT))


def _noisy(img: Image) -> Image:
    noise = np.random.default_rng(0).normal(0.0, 8.0, img.shape)
    return _u8(np.clip(img.astype(np.float32) + noise, 0, 255))


VARIANTS: dict[str, Callable[[Image], Image]] = {
    "rotated 10°": lambda im: _rotate(im, 10.0),
    "70% size": lambda im: _u8(cv2.resize(im, None, fx=0.7, fy=0.7, interpolation=cv2.INTER_AREA)),
    "darker": lambda im: _u8(cv2.convertScaleAbs(im, alpha=0.6, beta=0)),
    "noisy": _noisy,
}


def run_demo(cfg: Config, as_json: bool = False) -> int:
    from .cli._output import emit_json, fmt, table

    with tempfile.TemporaryDirectory(prefix="kiosk-demo-") as tmp:
        root = Path(tmp)
        cfg = dataclasses.replace(cfg, gallery=dataclasses.replace(cfg.gallery, path=root / "gallery.db"))
        files: dict[str, Path] = {}
        for person, name in FACES.items():
            files[person] = root / f"{person}.png"
            cv2.imwrite(str(files[person]), _skimage_image(name))
        probes: list[tuple[str, str, Path]] = []
        for person in FACES:
            base = read_image(files[person])
            for label, fn in VARIANTS.items():
                path = root / f"{person}-{label.replace(' ', '_').replace('%', '')}.png"
                cv2.imwrite(str(path), fn(base))
                probes.append((person, label, path))
        for name in NO_FACE:
            path = root / f"{name}.png"
            cv2.imwrite(str(path), _skimage_image(name))
            probes.append(("(no face)", name, path))

        steps: list[dict[str, Any]] = []
        with Context(cfg) as ctx:
            pipeline = ctx.pipeline

            def identify(expected: str, label: str, path: Path) -> dict[str, Any]:
                faces = pipeline.analyze(read_image(path))
                if not faces or faces[0].embedding is None:
                    return {
                        "probe": f"{expected} ({label})",
                        "result": "no face",
                        "score": None,
                        "correct": expected == "(no face)",
                    }
                m = ctx.matcher().match(faces[0].embedding)
                who = m.name if m.accepted else "not enrolled"
                return {
                    "probe": f"{expected} ({label})",
                    "result": who,
                    "score": m.score,
                    "correct": who == (expected if expected == "astronaut" else "not enrolled"),
                }

            def try_enroll(step: str, name: str, path: Path, expect_ok: bool) -> dict[str, Any]:
                try:
                    r = enroll(pipeline, ctx.gallery, name, [path])
                    return {
                        "step": step,
                        "probe": path.name,
                        "result": f"enrolled ({r.stored} template)",
                        "score": None,
                        "correct": expect_ok,
                    }
                except KioskError as exc:
                    reason = str(exc).split(": ", 2)[-1]
                    return {
                        "step": step,
                        "probe": path.name,
                        "result": f"refused: {reason}",
                        "score": None,
                        "correct": not expect_ok,
                    }

            steps.append(try_enroll("enroll astronaut", "astronaut", files["astronaut"], True))
            steps.append(try_enroll("enroll cameraman", "cameraman", files["cameraman"], False))
            steps.append(try_enroll("enroll a photo with no face", "coffee", root / "coffee.png", False))
            steps.append(try_enroll("enroll astronaut as 'eileen'", "eileen", files["astronaut"], False))
            steps.append({"step": "identify"} | identify("cameraman", "original", files["cameraman"]))
            for expected, label, path in probes:
                steps.append({"step": "identify"} | identify(expected, label, path))
            threshold = pipeline.thresholds.accept

    checks = [s for s in steps if "correct" in s]
    n_ok = sum(bool(s["correct"]) for s in checks)
    if as_json:
        emit_json({"threshold": threshold, "steps": steps, "correct": n_ok, "total": len(checks)})
    else:
        print(f"face-kiosk demo: throwaway gallery, accept threshold {threshold:.3f}\n")
        rows = []
        for s in steps:
            rows.append([s["step"], s["probe"], s["result"], fmt(s["score"]), "ok" if s["correct"] else "WRONG"])
        print(table(rows, ["step", "probe", "result", "score", ""]))
        print(f"\n{n_ok}/{len(checks)} decisions as expected")
    return 0 if n_ok == len(checks) else int(ExitCode.FAILURE)
