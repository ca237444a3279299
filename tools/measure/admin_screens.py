"""The admin pages for ``python -m tools screenshots``: a scripted, realistic dataset on a temporary gallery.

No photo of a private person and no test-data face: the only face is scikit-image's astronaut (Eileen Collins,
NASA, public domain), as ``kiosk demo`` uses it; every name is made up. Besides "Alex Rivera" (enrolled from
astronaut photos through the real enrolment), people hold random templates: the pages show names and numbers only.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tools.errors import ToolError

if TYPE_CHECKING:
    from kiosk.web.scripted import ScriptedLink

ADMIN_NAME = "admin"
ADMIN_PASSWORD = "screenshots only, never a real one"
# name, templates, enabled, validity (days from now) — made up
PEOPLE = (
    ("Jordan Lee", 4, True, None),
    ("Priya Natarajan", 3, True, (-30, 60)),
    ("Sam Okafor", 2, False, None),
    ("Chen Wei", 5, True, None),
    ("Maria Costa", 3, True, (-1, 14)),
)


def _jpeg(image: Any) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise ToolError("could not encode a screenshot photo")
    return bytes(buf)


def astronaut_photos() -> dict[str, bytes]:
    """The uploads of the verdicts shot: good, mirrored, too blurry, two faces, and a photo with no face."""
    import cv2
    import numpy as np

    from kiosk.lab.demo import skimage_image

    face = skimage_image("astronaut")
    return {
        "astronaut.jpg": _jpeg(face),
        "astronaut-mirrored.jpg": _jpeg(np.ascontiguousarray(face[:, ::-1])),
        "astronaut-blurred.jpg": _jpeg(cv2.GaussianBlur(face, (0, 0), 6)),
        "two-faces.jpg": _jpeg(np.concatenate([face, face[:, ::-1]], axis=1)),
        "coffee.jpg": _jpeg(skimage_image("coffee")),
    }


def admin_link() -> ScriptedLink:
    """The door loop as the admin pages see it: up, 9.8 fps, the door locked and closed; a scripted link
    (``kiosk.web.scripted.ScriptedLink``) that answers ``status`` and no other control request."""
    from kiosk.screen.control import OPS
    from kiosk.web.scripted import ScriptedLink, door_state

    loop = {"fps": 9.8, "frames": 35280, "granted": 41, "denied": 6, "frame_ms_median": 38.5, "frame_ms_p95": 61.2}
    unavailable = {"ok": False, "error": "unavailable", "detail": "screenshots have no door loop"}
    replies = {op: unavailable for op in OPS}
    replies["status"] = {"ok": True, "loop": loop, "door": {"relay": "locked", "contact": "closed"}, "service": "ok"}
    return ScriptedLink(door_state("ok", seq=1, fps=9.8), replies=replies)


def build_dataset(services: Any) -> dict[str, int]:
    """People, templates and events as an installation a few weeks old would have them; returns ids by name."""
    import numpy as np

    from kiosk import authz
    from kiosk.gallery.records import TemplateIn
    from kiosk.web import people

    token = authz.set_actor(f"web:{ADMIN_NAME} from 192.168.1.20")
    try:
        photos = astronaut_photos()
        alex, verdicts = people.enrol_photos(
            services, "Alex Rivera", [(n, photos[n]) for n in ("astronaut.jpg", "astronaut-mirrored.jpg")]
        )
        if alex is None:
            raise ToolError(
                "screenshots: the astronaut photos were not enrolled: " + "; ".join(v.message for v in verdicts)
            )
        spec = services.enrolment_model().embedder.spec
        rng = np.random.default_rng(16)
        ids = {"Alex Rivera": int(alex["id"])}
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        with services.gallery() as g:
            for name, count, enabled, window in PEOPLE:
                rows = []
                for _ in range(count):
                    v = rng.standard_normal(spec.output_dim or 128).astype(np.float32)
                    q = float(rng.uniform(0.55, 0.9))
                    rows.append(TemplateIn(v / np.linalg.norm(v), spec.id, spec.sha256, q, "photo"))
                person = g.enroll(name, rows)
                ids[name] = person.id
                if not enabled:
                    g.set_enabled(person.id, False)
                if window:
                    g.set_validity(person.id, now + timedelta(days=window[0]), now + timedelta(days=window[1]))
            start = now + timedelta(minutes=1)  # after the enrolments above, so the tables read in order
            script = [
                ("granted", "Jordan Lee", 0.74, "pass", "unlocked"),
                ("granted", "Chen Wei", 0.81, "pass", "unlocked"),
                ("unknown", None, 0.19, "not_checked", "none"),
                ("denied", "Sam Okafor", 0.77, "pass", "none"),
                ("granted", "Alex Rivera", 0.86, "pass", "unlocked"),
                ("denied", "Priya Natarajan", 0.71, "fail", "none"),
                ("granted", "Maria Costa", 0.79, "pass", "unlocked"),
                ("unknown", None, 0.24, "not_checked", "none"),
            ]
            for i, (outcome, who, score, liveness, door) in enumerate(script):
                g.add_event(
                    "access",
                    outcome,
                    ts=start + timedelta(minutes=3 * i),
                    person_id=ids.get(who or ""),
                    person_name=who,
                    score=score,
                    threshold=0.6,
                    liveness=liveness,
                    latency_ms=180 + 11 * i,
                    door_action=door,
                    detail={"reason": "disabled" if who == "Sam Okafor" else ""},
                )
    finally:
        authz.reset_actor(token)
    return ids


# The Doors page of a hub's app: door id, online, gallery changes behind, events not yet at the hub, fps (made up)
DOORS = (
    ("main-entrance", True, 0, 0, 9.8),
    ("loading-dock", True, 2, 3, 9.1),
    ("lab-2", False, 7, 12, None),
)
HUB_SEQ = 48


def _chain(n: int) -> list[dict[str, Any]]:
    """Events 1..n of a door as it sends them to the hub, each linked to the one before."""
    from kiosk.gallery import GENESIS_HASH, event_hash

    prev, rows = GENESIS_HASH, []
    start = datetime.now(UTC) - timedelta(hours=6)
    for i in range(1, n + 1):
        row: dict[str, Any] = {"id": i, "ts": (start + timedelta(minutes=2 * i)).isoformat(), "kind": "access",
                               "outcome": "granted"}  # fmt: skip
        row |= {"prev_hash": prev, "hash": event_hash(prev, row)}
        prev = row["hash"]
        rows.append(row)
    return rows


def build_doors(services: Any) -> None:
    """Make the app a hub's (its broker password, ``kiosk.fleet.secrets``) with ``DOORS`` in its tables: each one's
    last heartbeat and the events the hub holds (``kiosk.fleet.hubdb``), as ``kiosk hub serve`` would keep them."""
    import time

    from kiosk.fleet import hubdb
    from kiosk.fleet.protocol import digest
    from kiosk.fleet.secrets import FleetSecrets
    from kiosk.gallery import utc_iso

    FleetSecrets(services.cfg.fleet_dir).hub_password()
    now = time.time()
    with services.gallery(need_key=False) as g:
        hubdb.install(g)
        with g._write() as db:
            hubdb.set_meta(db, "people_stream_seq", HUB_SEQ)
        in_sync = digest(hubdb.live_revisions(g))
        beats, events = {}, []
        for i, (door, online, behind, outbox, fps) in enumerate(DOORS):
            hubdb.add_door(g, door)
            last = 140 - 37 * i
            seen = now - (4 + i if online else 2 * 3600)
            beat = {"rev": HUB_SEQ - behind, "digest": in_sync if not behind else "older", "outbox_depth": outbox,
                    "last_event": last, "stale_s": round(now - seen + 2.5 + 40 * behind, 1),
                    "loop": {"fps": fps} if fps else {}, "received": seen}  # fmt: skip
            beats[door] = (utc_iso(datetime.fromtimestamp(seen, UTC)), beat)
            events += [(door, e) for e in _chain(last - outbox)]
        hubdb.save_heartbeats(g, beats)
        hubdb.record_events(g, events)


@dataclass
class AdminScene:
    """The admin app over the dataset; ``open`` logs a fresh browser context in and goes to a page."""

    base_url: str
    ids: dict[str, int]
    photo_dir: Path

    def show(self) -> None:
        pass  # nothing to reset between shots

    def open(self, page: Any, path: str) -> None:
        page.fill("#username", ADMIN_NAME)
        page.fill("#password", ADMIN_PASSWORD)
        with page.expect_navigation():
            page.click("button[type=submit]")
        page.goto(self.base_url + path.format(**{k.split()[0].lower(): v for k, v in self.ids.items()}))

    def verdicts(self, page: Any) -> None:
        """Add photos of Alex Rivera: a verdict per photo, one face picked on the photo with two."""
        self.open(page, "/people/new?person={alex}")
        names = ("astronaut.jpg", "astronaut-blurred.jpg", "two-faces.jpg", "coffee.jpg")
        page.set_input_files("#photos", [str(self.photo_dir / n) for n in names])
        with page.expect_navigation(timeout=60_000):
            page.click("form[action='/people/new/check'] button[type=submit]")
        page.click("button.face-box >> nth=0")


@contextlib.contextmanager
def admin_environment(language: str, *, hub: bool = False) -> Iterator[AdminScene]:
    """The admin app over the dataset; ``hub``: a site hub's app, with the doors of ``DOORS``."""
    from kiosk.config import parse_config
    from kiosk.web.accounts import Accounts
    from kiosk.web.app import create_app
    from kiosk.web.i18n import I18n
    from kiosk.web.services import WebServices
    from kiosk.web.templating import make_templates
    from tools.measure.browser import LiveServer

    with tempfile.TemporaryDirectory(prefix="kiosk-screenshots-") as tmp:
        sections: dict[str, Any] = {"data_dir": str(Path(tmp) / "data"), "screen": {"language": language}}
        if hub:
            sections["hub"] = {"heartbeat_timeout_s": 600.0}  # online for the whole run, however long it takes
        cfg = parse_config(sections)
        accounts = Accounts(cfg.web_db_path, cfg.web)
        services = WebServices(cfg=cfg, accounts=accounts, link=admin_link(), i18n=I18n())  # type: ignore[arg-type]
        services.templates = make_templates(services)
        server = None
        try:
            accounts.add(ADMIN_NAME, "admin", ADMIN_PASSWORD)
            ids = build_dataset(services)
            if hub:
                build_doors(services)
            photo_dir = Path(tmp) / "photos"
            photo_dir.mkdir()
            for name, data in astronaut_photos().items():
                (photo_dir / name).write_bytes(data)
            server = LiveServer(create_app(services))
            yield AdminScene(server.start(), ids, photo_dir)
        finally:
            if server is not None:
                server.stop()
            services.close()


LOGIN_LOADED = "form[action='/login']"


def _page(name: str, path: str, ready: str = "main h1") -> dict[str, Any]:
    return {
        "name": name,
        "path": "/login",
        "setup": lambda scene, page: scene.open(page, path),
        "ready": ready,
        "app": "admin",
        "viewport": (1280, 800),
        "loaded": LOGIN_LOADED,
    }


# Shots for tools/measure/screenshots.py's PAGES (as keyword arguments of its Shot).
ADMIN_SHOTS: list[dict[str, Any]] = [
    {"name": "admin-login", "path": "/login", "app": "admin", "viewport": (1280, 800), "loaded": LOGIN_LOADED},
    _page("admin-dashboard", "/", "#live-status"),
    _page("admin-people", "/people", "#people-rows"),
    _page("admin-person", "/people/{alex}"),
    {
        **_page("admin-enrol-verdicts", "/people/new"),
        "setup": lambda scene, page: scene.verdicts(page),
        "ready": "li.verdict button.face-box[aria-pressed='true']",
        "viewport": (1280, 1100),
    },
    {**_page("admin-events", "/events", "#events-rows"), "viewport": (1280, 1100)},
    _page("admin-door", "/admin/door", "#live-status"),
    _page("admin-system", "/system", "pre.config"),
    {**_page("admin-doors", "/admin/doors", "#doors-rows"), "app": "admin-hub", "viewport": (1280, 1100)},
]
