"""``python -m tools screenshots [--out docs/img] [--only NAME ...]``: the door screen's states (and, as helper
pages are added to ``PAGES``, the admin pages) rendered in headless Debian Chromium into PNGs for the docs.

The door screen runs in the real app (``kiosk.web.app.create_app``) over a ``ScriptedLink`` that plays one state per
shot; the preview is the scikit-image astronaut photo (NASA, public domain), mirrored as the loop would. The page's
clock is frozen (Playwright's clock), so the countdown reads the same on every run.

To add pages: append a ``Shot`` to ``PAGES``; ``app`` names an entry of ``ENVIRONMENTS`` (a context manager that
serves the app for a language and yields an object the shot's ``setup`` drives: the door's is ``DoorScene``).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.errors import ToolError
from tools.measure.admin_screens import ADMIN_SHOTS, admin_environment
from tools.measure.browser import LiveServer, launch_chromium

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "docs" / "img"
# where the detector finds the astronaut's face in the preview below (x, y, w, h in 0..1 of the mirrored frame)
ASTRONAUT_BOX = [0.355, 0.235, 0.258, 0.417]


@dataclass(frozen=True)
class Shot:
    """One screenshot: ``name``.png of ``path`` served by ``ENVIRONMENTS[app]`` in ``language`` at ``viewport``.
    The page is opened, ``loaded`` awaited, ``setup(scene, page)`` brings it into the state to show, and ``ready``
    says it is there."""

    name: str
    path: str
    setup: Callable[[Any, Any], None] | None = None
    ready: str = "body"
    app: str = "door"
    viewport: tuple[int, int] = (1024, 600)
    language: str = "en"
    loaded: str = "body"


DOOR_LOADED = "body[data-view='idle'] #preview:not([hidden])"


def door_shot(name: str, setup: Callable[[Any, Any], None] | None, ready: str, **kw: Any) -> Shot:
    return Shot(name, "/door", setup, ready, app="door", loaded=DOOR_LOADED, **kw)


def astronaut_preview() -> bytes:
    """A 640x480 JPEG, the astronaut photo cropped around the face and mirrored, as the loop would publish it."""
    import cv2
    import numpy as np

    from kiosk.lab.demo import skimage_image

    img = skimage_image("astronaut")
    crop = np.ascontiguousarray(cv2.resize(img[0:270, 40:400][:, ::-1], (640, 480), interpolation=cv2.INTER_AREA))
    ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise ToolError("could not encode the preview frame")
    return bytes(buf)


@dataclass
class DoorScene:
    """The door screen's app over a scripted link: ``show`` publishes a state, ``decide`` a decision."""

    base_url: str
    link: Any
    seq: int = 1
    decisions: int = 0

    def show(self, service: str = "ok", **parts: Any) -> None:
        from kiosk.web.scripted import door_state

        self.seq += 1
        self.link.publish(door_state(service, seq=self.seq, **parts))

    def decide(self, outcome: str, name: str | None = None, **parts: Any) -> None:
        self.decisions += 1
        result = {"seq": self.decisions, "outcome": outcome, "name": name, "reason": "", "t": time.time()}
        self.show(result=result, **parts)

    def face(self, state: str) -> list[dict[str, Any]]:
        return [{"track": 1, "box": ASTRONAUT_BOX, "state": state}]


@contextlib.contextmanager
def door_environment(language: str) -> Iterator[DoorScene]:
    from kiosk.config import parse_config
    from kiosk.web.scripted import ScriptedLink, ScriptedServices, door_app, door_state

    link = ScriptedLink(door_state("ok", seq=1))
    link.publish_frame(astronaut_preview())
    services = ScriptedServices(parse_config({"screen": {"language": language, "result_s": 60.0}}), link)
    server = LiveServer(door_app(services))
    try:
        yield DoorScene(server.start(), link)
    finally:
        server.stop()


ENVIRONMENTS: dict[str, Callable[[str], contextlib.AbstractContextManager[Any]]] = {
    "door": door_environment,
    "admin": admin_environment,
    "admin-hub": lambda language: admin_environment(language, hub=True),  # a site hub's app: the Doors page
}


def _blink(scene: DoorScene, page: Any) -> None:
    scene.show(faces=scene.face("challenge"), prompt={"track": 1, "code": "blink", "remaining_s": 3.6, "total_s": 5.0})


PAGES: list[Shot] = [
    door_shot("door-idle", None, DOOR_LOADED),
    door_shot("door-checking", lambda s, p: s.show(faces=s.face("checking")), ".face[data-state='checking']"),
    door_shot("door-blink", _blink, "#countdown:not([hidden])"),
    door_shot("door-welcome", lambda s, p: s.decide("granted", "Eileen", faces=s.face("granted")), "#result"),
    door_shot("door-denied", lambda s, p: s.decide("denied", faces=s.face("denied")), "#result"),
    door_shot("door-not-recognised", lambda s, p: s.decide("unknown", faces=s.face("unknown")), "#result"),
    door_shot("door-out-of-service", lambda s, p: s.show("down"), "body[data-view='down']"),
    door_shot("door-blink-800x480", _blink, "#countdown:not([hidden])", viewport=(800, 480)),
    door_shot(
        "door-welcome-zh-Hans",
        lambda s, p: s.decide("granted", "李华", faces=s.face("granted")),
        "#result",
        language="zh-Hans",
    ),
    *(Shot(**shot) for shot in ADMIN_SHOTS),
]


def take(shots: list[Shot], out: Path) -> list[Path]:
    """Render ``shots`` into ``out``; one environment per (app, language), one browser context per shot."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with contextlib.ExitStack() as stack:
        scenes: dict[tuple[str, str], Any] = {}
        pw = stack.enter_context(sync_playwright())
        browser = launch_chromium(pw)
        stack.callback(browser.close)
        for shot in shots:
            if shot.app not in ENVIRONMENTS:
                raise ToolError(f"shot {shot.name}: no environment {shot.app!r} (known: {', '.join(ENVIRONMENTS)})")
            key = (shot.app, shot.language)
            if key not in scenes:
                scenes[key] = stack.enter_context(ENVIRONMENTS[shot.app](shot.language))
            scene = scenes[key]
            if hasattr(scene, "show"):
                scene.show()  # back to a plain state between shots
            width, height = shot.viewport
            context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1)
            try:
                page = context.new_page()
                page.clock.install()  # frozen: countdowns and result timers stand still
                page.goto(scene.base_url + shot.path, wait_until="domcontentloaded")
                page.wait_for_selector(shot.loaded)
                if shot.setup is not None:
                    shot.setup(scene, page)
                page.wait_for_selector(shot.ready, state="attached")
                page.wait_for_function("() => document.fonts.ready.then(() => true)")
                path = out / f"{shot.name}.png"
                page.screenshot(path=str(path), animations="disabled")
                written.append(path)
                print(f"{path}  {width}x{height} {shot.language}")
            finally:
                context.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools screenshots", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the PNGs (default docs/img)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these shots (names as in PAGES)")
    args = parser.parse_args(argv)
    shots = PAGES
    if args.only:
        unknown = sorted(set(args.only) - {s.name for s in PAGES})
        if unknown:
            raise ToolError(f"unknown shots: {', '.join(unknown)} (known: {', '.join(s.name for s in PAGES)})", code=2)
        shots = [s for s in PAGES if s.name in args.only]
    take(shots, args.out)
    return 0


if __name__ == "__main__":
    from tools.errors import run_tool

    raise SystemExit(run_tool("screenshots", lambda: main()))
