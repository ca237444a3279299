"""``kiosk demo``: the real door loop on any machine, with public-domain images from scikit-image.

In a throwaway data folder it enrols the astronaut (Eileen Collins, NASA photo) from one crop, shows that the
enrolment gate refuses the cameraman (head turned ~57°), a photo with no face and a duplicate, then builds a
640x480 clip — frames without a face, the astronaut in other crops with motion and lighting changes, the cameraman
as a stranger — and replays it through ``kiosk run``'s loop with the simulated door, printing every decision and
door pulse. ``--source 0`` drives a real webcam through the same loop instead of the clip.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .config import Config
from .context import Context
from .decide import Decision
from .enroll import enroll
from .errors import BackendUnavailableError, ExitCode, KioskError
from .imageio import as_bgr
from .types import Image

W, H, FPS = 640, 480, 10


def skimage_image(name: str) -> Image:
    """A scikit-image sample image as BGR uint8 (those used here ship inside the wheel; no download)."""
    try:
        from skimage import data
    except ImportError as exc:
        raise BackendUnavailableError("the demo needs scikit-image: pip install 'face-kiosk[demo]'") from exc
    arr = np.asarray(getattr(data, name)())
    return as_bgr(arr[..., ::-1] if arr.ndim == 3 else arr)


def _canvas(shade: int = 90) -> Image:
    """A plain wall with a soft gradient, like a corridor behind the person."""
    ramp = np.linspace(shade - 25, shade + 25, W, dtype=np.float32)
    return np.ascontiguousarray(np.repeat(np.tile(ramp, (H, 1))[..., None], 3, axis=2).astype(np.uint8))


def _paste(canvas: Image, img: Image, size: int, cx: float, cy: float, gain: float) -> Image:
    face = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    face = cv2.convertScaleAbs(face, alpha=gain, beta=0)
    x, y = int(cx - size / 2), int(cy - size / 2)
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + size, W), min(y + size, H)
    out = canvas.copy()
    out[y0:y1, x0:x1] = face[y0 - y : y1 - y, x0 - x : x1 - x]
    return out


def build_clip(path: Path) -> dict[str, int]:
    """Write the demo clip (MJPG .avi, 10 fps) and return the number of frames per segment."""
    astronaut, cameraman = skimage_image("astronaut"), skimage_image("camera")
    empty_scene: Image = np.ascontiguousarray(cv2.resize(skimage_image("coffee"), (W, H)), dtype=np.uint8)
    segments: list[tuple[str, list[Image]]] = [
        ("no face", [_canvas() for _ in range(10)] + [empty_scene] * 10),
        # The astronaut walks in from the left, lights flicker between 0.75x and 1.2x.
        (
            "astronaut",
            [_paste(_canvas(), astronaut, 360, 180 + 8 * i, 230 + 2 * i, 0.75 + 0.45 * (i % 5) / 4) for i in range(30)],
        ),
        ("nobody", [_canvas(120) for _ in range(15)]),
        ("cameraman (stranger)", [_paste(_canvas(), cameraman, 380, 420 - 6 * i, 240, 1.0) for i in range(25)]),
        ("nobody", [_canvas(120) for _ in range(15)]),
    ]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), FPS, (W, H))
    if not writer.isOpened():
        raise KioskError(f"cannot write the demo clip {path}")
    counts: dict[str, int] = {}
    try:
        for name, frames in segments:
            for f in frames:
                writer.write(f)
            counts[name] = counts.get(name, 0) + len(frames)
    finally:
        writer.release()
    return counts


def run_demo(cfg: Config, *, source: str | None = None, as_json: bool = False) -> int:
    from .cli._output import emit_json, fmt
    from .runner import run_kiosk

    out: dict[str, Any] = {"enrolment": [], "decisions": []}

    def say(text: str) -> None:
        if not as_json:
            print(text, flush=True)

    with tempfile.TemporaryDirectory(prefix="kiosk-demo-") as tmp:
        root = Path(tmp)
        cfg = dataclasses.replace(
            cfg,
            data_dir=root,
            gallery=dataclasses.replace(cfg.gallery, path=root / "gallery.db"),
            door=dataclasses.replace(cfg.door, driver="simulated"),
        )
        photos = {
            "astronaut": skimage_image("astronaut")[20:260, 120:360],  # one crop: head and shoulders
            "cameraman": skimage_image("camera"),
            "coffee": skimage_image("coffee"),
        }
        for name, img in photos.items():
            cv2.imwrite(str(root / f"{name}.png"), img)
        say("face-kiosk demo — enrolment (throwaway gallery, simulated door)")
        with Context(cfg) as ctx:
            for step, name, photo, expect_ok in (
                ("enrol astronaut from one crop", "astronaut", "astronaut", True),
                ("enrol cameraman", "cameraman", "cameraman", False),
                ("enrol a photo with no face", "coffee", "coffee", False),
                ("enrol the astronaut again as 'eileen'", "eileen", "astronaut", False),
            ):
                try:
                    r = enroll(ctx.pipeline, ctx.gallery, name, [root / f"{photo}.png"])
                    result, ok = f"enrolled ({r.stored} template)", expect_ok
                except KioskError as exc:
                    result, ok = f"refused: {str(exc).split(': ', 2)[-1]}", not expect_ok
                out["enrolment"].append({"step": step, "result": result, "as_expected": ok})
                say(f"  {'ok   ' if ok else 'WRONG'} {step}: {result}")

        clip = root / "door.avi"
        if source is None:
            counts = build_clip(clip)
            say(f"\nreplaying a {sum(counts.values()) / FPS:.0f} s clip at {FPS} fps through the door loop: "
                + ", then ".join(f"{k} ({v / FPS:.1f} s)" for k, v in counts.items()))  # fmt: skip
        else:
            say(f"\nrunning the door loop on {source} (Ctrl-C to stop)")

        def on_decision(d: Decision, door: str) -> None:
            item = {"outcome": d.outcome, "name": d.name, "score": d.score, "frames": d.frames_used,
                    "latency_ms": round((d.t - d.first_seen) * 1000), "door": door, "reason": d.reason}  # fmt: skip
            out["decisions"].append(item)
            who = d.name or "unknown face"
            say(f"  {d.outcome.upper():8} {who:14} score {fmt(d.score)}  after {item['latency_ms']} ms  door: {door}")

        stats = run_kiosk(cfg, source=source or str(clip), on_decision=on_decision)
    out["stats"] = stats.as_dict()
    granted = [d for d in out["decisions"] if d["outcome"] == "granted"]
    expected = (
        all(e["as_expected"] for e in out["enrolment"])
        and source is None
        and len(granted) == 1
        and granted[0]["name"] == "astronaut"
        and any(d["outcome"] == "denied" for d in out["decisions"])
    )
    out["as_expected"] = expected or source is not None
    if as_json:
        emit_json(out)
    else:
        s = out["stats"]
        say(f"\n{s['frames']} frames, {s['granted']} granted, {s['denied']} denied, {s['door_pulses']} door pulse(s); "
            f"processing {s['fps']} fps")  # fmt: skip
        if source is None:
            say("as expected: the astronaut was let in once, the stranger was refused, empty frames did nothing"
                if expected else "UNEXPECTED decisions: see above")  # fmt: skip
    return 0 if out["as_expected"] else int(ExitCode.FAILURE)
