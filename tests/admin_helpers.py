"""Helpers for the admin page tests: services with a scripted door link (``kiosk.web.scripted.ScriptedLink``, the loop
up), accounts, people in the gallery, logging in through the login form, and reading the CSRF token off a page."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from kiosk.config import Config, parse_config
from kiosk.gallery.records import TemplateIn
from kiosk.web.i18n import I18n
from kiosk.web.services import WebServices
from kiosk.web.templating import make_templates
from tests.web_helpers import PASSWORD, make_services

ADMIN, VIEWER = "ada", "vic"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def admin_config(tmp_path: Path, **sections: Any) -> Config:
    return parse_config({"data_dir": str(tmp_path / "data"), **sections})


def admin_services(tmp_path: Path, cfg: Config | None = None, **kw: Any) -> WebServices:
    """Services on tmp_path with an admin ``ada`` and a viewer ``vic`` (password PASSWORD) and a ScriptedLink."""
    services = make_services(tmp_path, cfg or admin_config(tmp_path), **kw)
    services.i18n = I18n()
    services.templates = make_templates(services)
    services.accounts.add(ADMIN, "admin", PASSWORD)
    services.accounts.add(VIEWER, "viewer", PASSWORD)
    return services


def add_person(services: WebServices, name: str, templates: int = 2, seed: int = 0) -> int:
    """A person with random unit templates (these tests are about pages, not recognition)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(templates):
        v = rng.standard_normal(128).astype(np.float32)
        rows.append(TemplateIn(v / np.linalg.norm(v), "test-model", "0" * 64, 0.8, "test photo"))
    with services.gallery() as g:
        return g.enroll(name, rows).id


def page_login(client: TestClient, name: str, password: str = PASSWORD, next_path: str = "/") -> Any:
    """Log in through the login form (not the API); returns the response (a 303 on success)."""
    return client.post(
        "/login", data={"username": name, "password": password, "next": next_path}, follow_redirects=False
    )


def csrf_of(client: TestClient, path: str = "/") -> str:
    """The CSRF token a page's forms carry."""
    r = client.get(path)
    assert r.status_code == 200, r.text
    found = CSRF_RE.search(r.text)
    assert found, f"no CSRF field on {path}"
    return found.group(1)


def capture_reply(frames: int = 5, seed: int = 5) -> dict[str, Any]:
    """A ``capture-result`` reply as the loop sends it: the configured recogniser, one face seen ``frames`` times
    (a unit vector with a little noise per frame)."""
    import base64

    from kiosk.models.manifest import load_manifest

    spec = load_manifest().get("sface")
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(spec.output_dim or 128)
    out = []
    for _ in range(frames):
        v = (base + 0.05 * rng.standard_normal(base.size)).astype("<f4")
        v /= np.linalg.norm(v)
        out.append({"embedding": base64.b64encode(v.tobytes()).decode(), "quality": {"score": 0.8, "sharpness": 90.0}})
    return {"ok": True, "state": "done", "model": {"id": spec.id, "sha256": spec.sha256}, "frames": out}
