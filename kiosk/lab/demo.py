"""``kiosk demo``: the real door loop on any machine, with public-domain images from scikit-image.

In a throwaway data folder it enrols the astronaut (Eileen Collins, NASA photo) from one crop, shows that the
enrolment gate refuses the cameraman (head turned ~57°), a photo with no face and a duplicate, then builds a
640x480 clip — frames without a face, the astronaut's photo held up to the camera (refused by the blink challenge),
the astronaut blinking (let in), the cameraman as a stranger — and replays it through ``kiosk run``'s loop with the
simulated door and active liveness, printing every challenge, decision and door pulse. ``--source 0`` drives a
real webcam through the same loop instead of the clip.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from kiosk.config import Config
from kiosk.context import Context
from kiosk.door.decide import Decision
from kiosk.enroll import enroll
from kiosk.errors import BackendUnavailableError, ExitCode, KioskError
from kiosk.imageio import as_bgr
from kiosk.types import Image

W, H, FPS = 640, 480, 10
DEMO_CHALLENGE_S = 3.0  # liveness.active.timeout_s for the built-in clip


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


def build_clip(path: Path, held_photo: list[Image], blinking: list[Image]) -> dict[str, int]:
    """Write the demo clip (MJPG .avi, 10 fps) and return the number of frames per segment.

    ``held_photo``: the astronaut's photo held up to the camera (it never blinks); ``blinking``: the astronaut at
    the door, blinking once (both from ``kiosk.lab.simulate``).
    """
    cameraman = skimage_image("camera")
    empty_scene: Image = np.ascontiguousarray(cv2.resize(skimage_image("coffee"), (W, H)), dtype=np.uint8)
    segments: list[tuple[str, list[Image]]] = [
        ("no face", [_canvas() for _ in range(10)] + [empty_scene] * 10),
        ("a photo of the astronaut", held_photo),
        ("nobody", [_canvas(120) for _ in range(15)]),
        ("the astronaut herself, who blinks", blinking),
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


def _astronaut_frames(ctx: Context, photo: Image) -> tuple[list[Image], list[Image]]:
    """The astronaut's photo held still before the camera, and the astronaut blinking once (eyelids from the mesh)."""
    from kiosk.lab.simulate import blink_frames, scene, still_frames
    from kiosk.liveness.mesh import load_face_mesh
    from kiosk.recognition.pipeline import runtime_options

    image = scene(photo, 1.4)
    faces = ctx.pipeline.detect(image)
    mesh = load_face_mesh(ctx.manifest, ctx.cfg.liveness.active.model, runtime_options(ctx.cfg))
    result = mesh.landmarks(image, max(faces, key=lambda f: f.area)) if faces else None
    if result is None:
        raise KioskError("demo: the face mesh found no face in the astronaut's photo")
    held = still_frames(image, int((DEMO_CHALLENGE_S + 1.5) * FPS), seed=1)
    return held, blink_frames(image, result.points, n_open=15, n_closed=4, n_after=15, seed=2)


def run_demo(cfg: Config, *, source: str | None = None, as_json: bool = False) -> tuple[int, dict[str, Any]]:
    """Run the demo, printing each step unless ``as_json``; the exit status and the whole record (the CLI prints it
    as JSON with ``--json``)."""
    from kiosk.door.service import run_kiosk

    out: dict[str, Any] = {"enrolment": [], "decisions": [], "prompts": []}

    def say(text: str) -> None:
        if not as_json:
            print(text, flush=True)

    with tempfile.TemporaryDirectory(prefix="kiosk-demo-") as tmp:
        root = Path(tmp)
        cfg = dataclasses.replace(
            cfg,
            data_dir=root,
            gallery=dataclasses.replace(cfg.gallery, path=root / "gallery.db", encrypt=False),  # throwaway
            door=dataclasses.replace(cfg.door, driver="simulated"),
        )
        if source is None:
            # The clip shows the active layer: a held-up photo must be refused, the blinking astronaut let in. A
            # shorter challenge than the default keeps the clip short.
            live = dataclasses.replace(cfg.liveness.active, timeout_s=DEMO_CHALLENGE_S, challenges=("blink",), steps=1)
            cfg = dataclasses.replace(cfg, liveness=dataclasses.replace(cfg.liveness, mode="active", active=live))
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
            held, blinking = _astronaut_frames(ctx, photos["astronaut"]) if source is None else ([], [])

        clip = root / "door.avi"
        if source is None:
            counts = build_clip(clip, held, blinking)
            say(f"\nreplaying a {sum(counts.values()) / FPS:.0f} s clip at {FPS} fps through the door loop: "
                + ", then ".join(f"{k} ({v / FPS:.1f} s)" for k, v in counts.items()))  # fmt: skip
        else:
            say(f"\nrunning the door loop on {source} (Ctrl-C to stop)")

        def on_decision(d: Decision, door: str) -> None:
            item = {"outcome": d.outcome, "name": d.name, "score": d.score, "frames": d.frames_used,
                    "latency_ms": round((d.t - d.first_seen) * 1000), "door": door, "reason": d.reason}  # fmt: skip
            out["decisions"].append(item)
            item["liveness"] = d.liveness.status
            who = d.name or "unknown face"
            score = "-" if d.score is None else f"{d.score:.3f}"
            say(f"  {d.outcome.upper():8} {who:14} score {score}  after {item['latency_ms']} ms  door: {door}"
                f"  ({d.reason})")  # fmt: skip

        def on_prompt(track_id: int, text: str) -> None:
            out["prompts"].append(text)
            say(f"  {'CHECK':8} {'':14} liveness challenge: {text}")

        stats = run_kiosk(cfg, source=source or str(clip), on_decision=on_decision, on_prompt=on_prompt)
    out["stats"] = stats.as_dict()
    granted = [d for d in out["decisions"] if d["outcome"] == "granted"]
    denied = [d for d in out["decisions"] if d["outcome"] == "denied"]
    expected = (
        all(e["as_expected"] for e in out["enrolment"])
        and source is None
        and [(d["name"], d["liveness"]) for d in granted] == [("astronaut", "pass")]
        and any(d["name"] == "astronaut" and d["liveness"] == "fail" for d in denied)  # the held-up photo
        and any(d["name"] is None for d in denied)  # the stranger
    )
    out["as_expected"] = expected or source is not None
    if not as_json:
        s = out["stats"]
        say(f"\n{s['frames']} frames, {s['granted']} granted, {s['denied']} denied, {s['door_pulses']} door pulse(s); "
            f"processing {s['fps']} fps")  # fmt: skip
        if source is None:
            say("as expected: the photo was refused (no blink), the astronaut let in once after blinking, "
                "the stranger refused" if expected else "UNEXPECTED decisions: see above")  # fmt: skip
    return (0 if out["as_expected"] else int(ExitCode.FAILURE)), out


DEMO_DIR = Path("~/.local/share/face-kiosk-demo")
DEMO_LISTEN = "127.0.0.1:8080"


def _demo_config(root: Path, clip: Path, manifest: Path | None) -> dict[str, Any]:
    """The web demo's config file: its own data folder, the simulated door, the clip on a loop, the blink challenge
    shortened as in the one-shot demo, and the caller's own primary group as the admin group, so that
    ``kiosk web user add`` works on this folder without root."""
    import grp
    import os

    return {
        "data_dir": str(root),
        "models": {"manifest": str(manifest)} if manifest else {},
        "door": {"driver": "simulated"},
        "camera": {"source": str(clip), "replay_realtime": True, "loop_replay": True},
        "liveness": {"mode": "active", "active": {"timeout_s": DEMO_CHALLENGE_S, "challenges": ["blink"], "steps": 1}},
        "screen": {"runtime_dir": str(root / "run"), "show_name": "full"},
        "web": {"listen": [DEMO_LISTEN]},
        "admin": {"group": grp.getgrgid(os.getgid()).gr_name},
    }


def _wait_for_web(web: Any, health_url: str, timeout_s: float = 30.0) -> None:
    """Until ``kiosk web`` answers its health check; KioskError when it exits first (port taken, say)."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if web.poll() is not None:
            raise KioskError(f"demo: kiosk web exited with status {web.returncode} before serving (see above)")
        try:
            with urllib.request.urlopen(health_url, timeout=1.0):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise KioskError(f"demo: kiosk web did not answer {health_url} within {timeout_s:.0f} s")


def run_web_demo(cfg: Config, *, data_dir: Path | None = None, listen: str | None = None) -> int:
    """``kiosk demo --web``: the door loop on the demo clip, replayed in a loop, with ``kiosk web`` beside it.

    In ``data_dir`` (default ~/.local/share/face-kiosk-demo; its accounts are kept between runs, its gallery is
    not) it writes a config, the clip and the photos, starts ``kiosk web`` as its own process (as under systemd:
    the web process never touches the door), prints the URLs and runs the loop until Ctrl-C. Nobody is enrolled:
    the door screen says "Not recognised" until you enrol the astronaut from ``astronaut.png`` in the admin app,
    and then lets her in on the next pass of the clip."""
    import os
    import shutil
    import subprocess
    import sys

    import yaml

    from kiosk.config import load_config
    from kiosk.door.service import run_kiosk
    from kiosk.web.accounts import Accounts

    root = (data_dir or DEMO_DIR).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    for stale in ("gallery.db", "gallery.db-wal", "gallery.db-shm", "snapshots", "backups"):
        path = root / stale
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    photos = {
        "astronaut": skimage_image("astronaut")[20:260, 120:360],
        "cameraman": skimage_image("camera"),
        "coffee": skimage_image("coffee"),
    }
    for name, img in photos.items():
        cv2.imwrite(str(root / f"{name}.png"), img)
    clip = root / "door.avi"
    live = dataclasses.replace(cfg.liveness.active, timeout_s=DEMO_CHALLENGE_S, challenges=("blink",), steps=1)
    with Context(
        dataclasses.replace(cfg, liveness=dataclasses.replace(cfg.liveness, mode="active", active=live))
    ) as ctx:
        held, blinking = _astronaut_frames(ctx, photos["astronaut"])
    counts = build_clip(clip, held, blinking)
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(_demo_config(root, clip, cfg.models.manifest), sort_keys=False))
    demo_cfg = load_config(config_path)
    if listen:
        demo_cfg = dataclasses.replace(demo_cfg, web=dataclasses.replace(demo_cfg.web, listen=(listen,)))
    base = f"http://{demo_cfg.web.listen[0]}"
    kiosk = [sys.executable, "-m", "kiosk", "--config", str(config_path)]
    print(f"face-kiosk demo with the door screen and the admin app (data in {root})", flush=True)
    print(f"  the clip ({sum(counts.values()) / FPS:.0f} s, on a loop): " + ", then ".join(counts), flush=True)
    print(f"  door screen:  {base}/door", flush=True)
    print(f"  admin app:    {base}/", flush=True)
    with Accounts(demo_cfg.web_db_path, demo_cfg.web) as accounts:
        have_accounts = bool(accounts.list_accounts())
    if not have_accounts:
        print(f"  make an admin account first:  .venv/bin/kiosk --config {config_path} web user add admin --role admin",
              flush=True)  # fmt: skip
    print(f"  nobody is enrolled: in the admin app, People → Enrol a person, upload {root / 'astronaut.png'} (and "
          f"{root / 'coffee.png'}, which has no face) and watch the door screen let her in", flush=True)  # fmt: skip
    print("  Ctrl-C stops both\n", flush=True)
    web = subprocess.Popen([*kiosk, "web", "--listen", demo_cfg.web.listen[0]], env={**os.environ})
    try:
        _wait_for_web(web, f"{base}/api/health")

        def on_decision(d: Decision, door: str) -> None:
            who = d.name or "unknown face"
            print(f"  {d.outcome.upper():8} {who:14} door: {door}  ({d.reason})", flush=True)

        def on_prompt(track_id: int, text: str) -> None:
            print(f"  {'CHECK':8} {'':14} liveness challenge: {text}", flush=True)

        with contextlib.suppress(KeyboardInterrupt):
            run_kiosk(demo_cfg, on_decision=on_decision, on_prompt=on_prompt)
    finally:
        web.terminate()
        try:
            web.wait(timeout=10)
        except subprocess.TimeoutExpired:
            web.kill()
            web.wait()
    return 0
