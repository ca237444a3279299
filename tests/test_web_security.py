"""The web app's security: sessions through the API, CSRF (token and origin), roles, session fixation, cookies,
security headers on every response, body size limits, and errors that leave as clean JSON."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from kiosk import authz
from kiosk.config import Config, WebConfig
from kiosk.errors import GalleryLockedError, InputError, PersonNotFoundError
from kiosk.web.app import create_app
from kiosk.web.scripted import ScriptedLink
from kiosk.web.security import CHANGING, CSP, SESSION_COOKIE, AdminAccount, ViewerAccount, acting, csrf, login_guard
from kiosk.web.services import WebServices
from tests.web_helpers import PASSWORD, login, make_services

# Test-only routes that use the dependencies the way the real routers do.
probe = APIRouter(prefix="/api/probe")


@probe.post("/admin", dependencies=[Depends(csrf)])
def admin_change(account: AdminAccount) -> dict[str, str]:
    return {"by": account.name}


@probe.post("/form", dependencies=[Depends(csrf)])
async def form_change(request: Request, account: ViewerAccount) -> dict[str, Any]:
    form = await request.form()
    return {"by": account.name, "fields": sorted(form.keys())}


@probe.get("/actor")
def who_acts(request: Request, account: ViewerAccount) -> dict[str, Any]:
    with acting(request, account):
        inside = authz.actor()
    return {"inside": inside, "after": authz.actor()}


@probe.get("/raise/{what}")
def raise_error(what: str) -> None:
    errors: dict[str, Exception] = {
        "input": InputError("bad photo"),
        "missing": PersonNotFoundError("no person 7"),
        "locked": GalleryLockedError("gallery is locked"),
        "bug": RuntimeError("secret internals"),
    }
    raise errors[what]


def _routes(app: FastAPI) -> list[Any]:
    """Every route of the app, those of included routers too (FastAPI includes routers lazily)."""
    return [r for r in iter_route_contexts(app.routes) if getattr(r, "dependant", None) is not None]


@pytest.fixture
def services(tmp_path: Path) -> Iterator[WebServices]:
    cfg = Config(data_dir=tmp_path / "data", web=WebConfig(upload_max_mb=0.1, upload_max_files=2))
    services = make_services(tmp_path, cfg)
    services.accounts.add("ada", "admin", PASSWORD)
    services.accounts.add("vera", "viewer", PASSWORD)
    yield services
    services.close()


def _app(services: WebServices, **kw: Any) -> FastAPI:
    app = create_app(services, **kw)
    app.include_router(probe)
    return app


@pytest.fixture
def client(services: WebServices) -> Iterator[TestClient]:
    with TestClient(_app(services), raise_server_exceptions=False) as c:
        yield c


def test_login_whoami_logout(client: TestClient) -> None:
    r = client.post("/api/session", json={"username": "ada", "password": PASSWORD})
    assert r.status_code == 200
    body = r.json()
    assert body["account"] == {"name": "ada", "role": "admin"} and body["csrf_token"]
    assert "hash" not in r.text and PASSWORD not in r.text
    me = client.get("/api/session").json()
    assert me["csrf_token"] == body["csrf_token"] and me["account"]["name"] == "ada"
    assert client.delete("/api/session", headers={"X-CSRF-Token": body["csrf_token"]}).status_code == 204
    assert client.get("/api/session").status_code == 401


def test_wrong_and_unknown_logins_get_one_401(client: TestClient) -> None:
    a = client.post("/api/session", json={"username": "ada", "password": "wrong password!"})
    b = client.post("/api/session", json={"username": "nobody", "password": PASSWORD})
    assert a.status_code == b.status_code == 401 and a.json() == b.json()
    assert SESSION_COOKIE not in a.headers.get("set-cookie", "")


def test_throttled_logins_get_429_with_retry_after(tmp_path: Path) -> None:
    cfg = Config(data_dir=tmp_path / "data", web=WebConfig(login_attempts=2, login_window_s=120))
    services = make_services(tmp_path, cfg)
    services.accounts.add("ada", "admin", PASSWORD)
    with TestClient(create_app(services)) as c:
        for _ in range(2):
            assert c.post("/api/session", json={"username": "ada", "password": "wrong password!"}).status_code == 401
        r = c.post("/api/session", json={"username": "ada", "password": PASSWORD})
    assert r.status_code == 429
    assert 1 <= int(r.headers["retry-after"]) <= 120 and "too many failed logins" in r.json()["detail"]


def test_a_malformed_login_is_422_without_echoing_the_password(client: TestClient) -> None:
    r = client.post("/api/session", json={"username": "ada", "password": ["hunter2-secret"]})
    assert r.status_code == 422 and "hunter2-secret" not in r.text
    assert (
        client.post("/api/session", content=b"{not json", headers={"content-type": "application/json"}).status_code
        == 422
    )


def test_session_fixation_a_cookie_from_before_login_is_not_the_session_after(
    client: TestClient, services: WebServices
) -> None:
    planted = services.accounts.login("ada", PASSWORD, "attacker")  # a real session the attacker holds
    client.cookies.set(SESSION_COOKIE, planted.token, domain="testserver.local")
    login(client, "vera")
    after = client.cookies.get(SESSION_COOKIE)
    assert after and after != planted.token
    assert services.accounts.session(planted.token) is None  # the planted session ended with the login
    assert client.get("/api/session").json()["account"]["name"] == "vera"
    client.cookies.set(SESSION_COOKIE, "made-up-token", domain="testserver.local")
    login(client, "ada")
    assert client.cookies.get(SESSION_COOKIE) not in ("made-up-token", None)


def test_cookie_flags_without_and_with_tls(services: WebServices) -> None:
    with TestClient(create_app(services)) as c:
        cookie = c.post("/api/session", json={"username": "ada", "password": PASSWORD}).headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie and "Secure" not in cookie
    assert f"Max-Age={round(services.cfg.web.session_max_h * 3600)}" in cookie  # the server ends it when idle
    with TestClient(create_app(services), base_url="https://testserver") as c:
        r = c.post("/api/session", json={"username": "ada", "password": PASSWORD})
    assert "Secure" in r.headers["set-cookie"] and "HttpOnly" in r.headers["set-cookie"]
    assert r.headers["strict-transport-security"].startswith("max-age=")


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 403),
        ({"X-CSRF-Token": "wrong"}, 403),
        ({"X-CSRF-Token": "@token", "Origin": "https://evil.example"}, 403),
        ({"X-CSRF-Token": "@token", "Origin": "null"}, 403),
        ({"X-CSRF-Token": "@token", "Sec-Fetch-Site": "cross-site"}, 403),
        ({"X-CSRF-Token": "@token"}, 200),
        ({"X-CSRF-Token": "@token", "Origin": "http://testserver"}, 200),
    ],
)
def test_csrf_token_and_origin(client: TestClient, headers: dict[str, str], status: int) -> None:
    token = login(client, "ada")
    sent = {k: (token if v == "@token" else v) for k, v in headers.items()}
    r = client.post("/api/probe/admin", headers=sent)
    assert r.status_code == status, r.text
    if status == 200:
        assert r.json() == {"by": "ada"}


def test_csrf_token_in_a_form_field(client: TestClient) -> None:
    token = login(client, "ada")
    assert client.post("/api/probe/form", data={"csrf_token": token, "name": "x"}).json()["fields"] == [
        "csrf_token", "name"]  # fmt: skip
    assert client.post("/api/probe/form", data={"csrf_token": "nope"}).status_code == 403
    r = client.post("/api/probe/form", data={"csrf_token": token}, files={"photos": ("a.jpg", b"123", "image/jpeg")})
    assert r.status_code == 200


def test_login_from_another_origin_is_refused(client: TestClient) -> None:
    r = client.post("/api/session", json={"username": "ada", "password": PASSWORD},
                    headers={"Origin": "https://evil.example"})  # fmt: skip
    assert r.status_code == 403 and SESSION_COOKIE not in r.headers.get("set-cookie", "")


def test_roles_and_no_session(client: TestClient) -> None:
    assert client.post("/api/probe/admin").status_code == 401
    token = login(client, "vera")
    r = client.post("/api/probe/admin", headers={"X-CSRF-Token": token})
    assert r.status_code == 403 and r.json() == {"detail": "this needs an admin account"}


def test_acting_names_the_account_for_the_block_only(client: TestClient) -> None:
    login(client, "vera")
    body = client.get("/api/probe/actor").json()
    assert body["inside"] == "web:vera from testclient"
    assert not str(body["after"]).startswith("web:")  # whatever it was before (the CLI tests may set one)


def test_every_changing_route_checks_csrf_or_is_a_login(services: WebServices) -> None:
    """Whatever routers the app includes (API, pages, door): a changing route without the CSRF check fails here."""

    def deps(d: Dependant) -> set[Any]:
        return {d.call, *(c for sub in d.dependencies for c in deps(sub))}

    changing = [r for r in _routes(create_app(services)) if set(r.methods or ()) & CHANGING]
    assert changing, "no changing route found: the check would be empty"
    unguarded = [f"{sorted(r.methods)} {r.path}" for r in changing if not deps(r.dependant) & {csrf, login_guard}]
    assert unguarded == []


def test_security_headers_on_every_response(client: TestClient) -> None:
    token = login(client, "ada")
    responses = [
        client.get("/api/health"),
        client.get("/api/session"),
        client.get("/no/such/page"),
        client.get("/api/no/such"),
        client.post("/api/probe/admin"),
        client.get("/static/vendor/htmx-2.0.11.min.js"),
        client.post("/api/probe/admin", headers={"X-CSRF-Token": token}, content=b"x" * 70000),
        client.get("/api/probe/raise/bug"),
    ]
    for r in responses:
        assert r.headers["content-security-policy"] == CSP, r.request.url
        assert "frame-ancestors 'none'" in CSP and "script-src 'self'" in CSP and "unsafe-inline" not in CSP
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert "strict-transport-security" not in r.headers  # plain HTTP: no HSTS
    assert [r.headers.get("cache-control") for r in responses[:2]] == ["no-store", "no-store"]
    assert responses[5].status_code == 200 and responses[5].headers.get("cache-control") != "no-store"


def test_a_huge_body_is_413_before_it_is_read(client: TestClient, services: WebServices) -> None:
    token = login(client, "ada")
    h = {"X-CSRF-Token": token}
    # JSON and plain forms: 64 KiB; by Content-Length, and chunked (no length) as it arrives
    assert client.post("/api/probe/admin", headers=h, content=b"x" * 70000).status_code == 413
    chunks = iter([b"x" * 40000, b"x" * 40000, b"x" * 40000])
    r = client.post("/api/session", headers={"content-type": "application/json"}, content=chunks)
    assert "content-length" not in r.request.headers
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    # uploads: upload_max_mb x upload_max_files + slack; under it passes, over it does not
    small = {"photos": ("a.jpg", b"x" * 150_000, "image/jpeg")}
    assert client.post("/api/probe/form", data={"csrf_token": token}, files=small).status_code == 200
    big = {"photos": ("a.jpg", b"x" * (2 * 105_000 + 1024 * 1024 + 10), "image/jpeg")}
    assert client.post("/api/probe/form", data={"csrf_token": token}, files=big).status_code == 413
    assert client.get("/api/session").status_code == 200  # the session is untouched


def test_a_login_body_over_64k_is_413(client: TestClient) -> None:
    r = client.post("/api/session", json={"username": "ada", "password": "x" * 70000})
    assert r.status_code == 413


@pytest.mark.parametrize(("what", "status"), [("input", 422), ("missing", 404), ("locked", 503), ("bug", 500)])
def test_errors_are_clean_json(client: TestClient, what: str, status: int) -> None:
    r = client.get(f"/api/probe/raise/{what}")
    assert r.status_code == status and r.headers["content-type"] == "application/json"
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "Traceback" not in r.text
    if what == "bug":
        assert "secret internals" not in r.text
    else:
        assert detail in ("bad photo", "no person 7", "gallery is locked")


def test_health_needs_no_login_and_says_nothing_personal(tmp_path: Path) -> None:
    services = make_services(tmp_path)
    link = ScriptedLink({"v": 1, "service": "ok", "fps": 9.8, "faces": [{"box": [0, 0, 1, 1]}],
                         "result": {"outcome": "granted", "name": "Ada Lovelace"}})  # fmt: skip
    services.link = link
    with TestClient(create_app(services)) as c:
        r = c.get("/api/health")
        assert r.json() == {"loop": "up", "service": "ok", "camera": "ok", "fps": 9.8}
        link.state = {"v": 1, "service": "camera-down", "fps": None}
        assert c.get("/api/health").json() == {"loop": "up", "service": "camera-down", "camera": "down", "fps": None}
        link.state = {"v": 1, "service": "down", "faces": [], "prompt": None, "result": None}
        assert c.get("/api/health").json()["loop"] == "down"
    assert link.calls == ["start", "stop"]  # the app's lifespan starts and stops the door link


def test_listener_kinds(services: WebServices) -> None:
    def paths(app: FastAPI) -> set[str]:
        return {str(r.path) for r in _routes(app)} | {str(getattr(r, "path", "")) for r in app.routes}

    door_only = paths(create_app(services, door=True, admin=False))
    assert "/api/health" in door_only and "/api/session" not in door_only and "/api/openapi.json" not in door_only
    admin_only = paths(create_app(services, door=False, admin=True))
    assert {"/api/session", "/api/health", "/api/openapi.json"} <= admin_only
