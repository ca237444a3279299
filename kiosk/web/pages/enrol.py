"""Enrolment from the admin app: uploaded photos judged one by one before anything is saved (the face picker for a
photo with several faces), then stored; or a guided capture at the door camera.

Uploaded photos wait for the decision in memory only (``UploadStore``: bound to the session that sent them, gone
after ``KEEP_S``), never on disk and never in the gallery; only the templates of the photos stored are kept.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from kiosk.enroll import ImageVerdict, store
from kiosk.errors import InputError, KioskError, PersonNotFoundError
from kiosk.gallery.records import clean_name
from kiosk.web import people as people_service
from kiosk.web import security
from kiosk.web.accounts import Session
from kiosk.web.pages.common import AdminChange, AdminPage, error_text, render, see_other, services_of, tr
from kiosk.web.services import WebServices

router = APIRouter()

KEEP_S = 600.0  # how long uploaded photos wait for "store"
PER_SESSION = 3  # uploads one session may hold at once (the oldest goes first)
CAPTURE_TARGET = 5
CAPTURE_TIMEOUT_S = 60
_IMAGE_TYPES = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"))


@dataclass
class Upload:
    """Photos (or a door-camera capture) waiting for the admin's decision."""

    owner: str
    name: str
    person_id: int | None
    photos: list[tuple[str, bytes]] = field(default_factory=list)
    capture_id: str | None = None
    created: float = 0.0


class UploadStore:
    """Uploads in memory, each readable only by the session that made it, dropped after ``keep_s``."""

    def __init__(
        self, keep_s: float = KEEP_S, per_session: int = PER_SESSION, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.keep_s = keep_s
        self.per_session = per_session
        self.clock = clock
        self._items: dict[str, Upload] = {}
        self._lock = threading.Lock()

    @staticmethod
    def owner_of(current: Session) -> str:
        return hashlib.sha256(current.token.encode()).hexdigest()

    def _prune(self) -> None:
        now = self.clock()
        for key in [k for k, u in self._items.items() if now - u.created >= self.keep_s]:
            del self._items[key]

    def put(self, upload: Upload) -> str:
        with self._lock:
            self._prune()
            mine = [k for k, u in self._items.items() if u.owner == upload.owner]  # oldest first (insertion order)
            for key in mine[: max(0, len(mine) - self.per_session + 1)]:
                del self._items[key]
            token = secrets.token_urlsafe(16)
            upload.created = self.clock()
            self._items[token] = upload
            return token

    def get(self, owner: str, token: str) -> Upload | None:
        with self._lock:
            self._prune()
            upload = self._items.get(token)
            return upload if upload is not None and secrets.compare_digest(upload.owner, owner) else None

    def drop(self, token: str) -> None:
        with self._lock:
            self._items.pop(token, None)

    def drop_owner(self, owner: str) -> int:
        """Forget every upload of a session (at logout); returns how many there were."""
        with self._lock:
            mine = [k for k, u in self._items.items() if u.owner == owner]
            for key in mine:
                del self._items[key]
            return len(mine)

    def __len__(self) -> int:
        with self._lock:
            self._prune()
            return len(self._items)


def uploads_of(request: Request) -> UploadStore:
    store = getattr(request.app.state, "admin_uploads", None)
    if store is None:
        store = request.app.state.admin_uploads = UploadStore()
    assert isinstance(store, UploadStore)
    return store


def _person(request: Request, person: str | None) -> dict[str, Any] | None:
    """The person photos are added to (``?person=<id>``), or None for a new person; 404 for an unknown id."""
    if not person:
        return None
    if not person.isdigit() or not 1 <= int(person) < 2**63:
        raise HTTPException(404, "no such person")
    try:
        return people_service.person_detail(services_of(request), int(person))
    except PersonNotFoundError as exc:
        raise HTTPException(404, error_text(exc)) from None


def _enrol_page(
    request: Request,
    current: Session,
    person: dict[str, Any] | None,
    *,
    name: str = "",
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    web = services_of(request).cfg.web
    return render(
        request,
        "admin/enrol.html",
        current,
        status_code=status_code,
        section="people",
        person=person,
        name=name,
        error=error,
        max_files=web.upload_max_files,
        max_mb=f"{web.upload_max_mb:g}",
    )


@router.get("/people/new", response_class=HTMLResponse)
def enrol_page(request: Request, current: AdminPage, person: str = "") -> Response:
    return _enrol_page(request, current, _person(request, person))


def _text(form: FormData, key: str, limit: int = 400) -> str:
    value = form.get(key)
    return value[:limit] if isinstance(value, str) else ""


def _who(request: Request, form: FormData) -> tuple[str, dict[str, Any] | None]:
    """(the name to enrol under, the existing person or None); InputError for a bad new name."""
    person = _person(request, _text(form, "person"))
    if person is not None:
        return str(person["name"]), person
    return clean_name(_text(form, "name")), None


def _verdicts_page(
    request: Request,
    current: Session,
    token: str,
    upload: Upload,
    person: dict[str, Any] | None,
    verdicts: list[people_service.PhotoVerdict],
    picked: dict[int, int],
    *,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    ok = sum(v.ok for v in verdicts)
    return render(
        request,
        "admin/verdicts.html",
        current,
        status_code=status_code,
        section="people",
        upload=token,
        name=upload.name,
        person=person,
        verdicts=verdicts,
        ok_count=ok,
        storable=ok > 0,
        pickable=any(v.code == "several-faces" or v.faces for v in verdicts),
        picked=picked,
        keep_minutes=round(uploads_of(request).keep_s / 60),
        error=error,
    )


@router.post("/people/new/check", response_class=HTMLResponse)
async def check_photos(request: Request, current: AdminChange) -> Response:
    """A verdict per uploaded photo; nothing is saved. The photos wait in memory for "store"."""
    services = services_of(request)
    web = services.cfg.web
    form = await request.form()
    try:
        name, person = _who(request, form)
    except KioskError as exc:
        return _enrol_page(request, current, None, name=_text(form, "name"), error=error_text(exc), status_code=422)
    files = [f for f in form.getlist("photos") if isinstance(f, UploadFile) and (f.filename or f.size)]
    if not files or len(files) > web.upload_max_files:
        error = tr(request, "admin.enrol.count", n=web.upload_max_files)
        return _enrol_page(request, current, person, name=name, error=error, status_code=422)
    limit = int(web.upload_max_mb * 1024 * 1024)
    photos = [(f.filename or "", await f.read(limit + 1)) for f in files]  # one byte over: the service says too large
    append = person is not None
    try:
        verdicts = await run_in_threadpool(
            lambda: people_service.assess_photos(services, photos, None, name=name, append=append)
        )
    except KioskError as exc:
        return _enrol_page(request, current, person, name=name, error=error_text(exc), status_code=422)
    upload = Upload(UploadStore.owner_of(current), name, person["id"] if person else None, photos)
    token = uploads_of(request).put(upload)
    return _verdicts_page(request, current, token, upload, person, verdicts, {})


def _picked(form: FormData, count: int) -> dict[int, int]:
    """The faces chosen on photos with several (``face_<photo>=<face>``)."""
    out: dict[int, int] = {}
    for i in range(count):
        value = _text(form, f"face_{i}", 8)
        if value.isdigit():
            out[i] = int(value)
    return out


def _waiting(request: Request, current: Session, token: str) -> Upload:
    upload = uploads_of(request).get(UploadStore.owner_of(current), token)
    if upload is None:
        raise HTTPException(410, tr(request, "admin.enrol.expired"))
    return upload


@router.get("/people/new/upload/{token}/{index}")
def uploaded_photo(request: Request, token: str, index: int, current: AdminPage) -> Response:
    """One waiting photo, for its verdict card (only to the session that sent it)."""
    upload = _waiting(request, current, token[:64])
    if not 0 <= index < len(upload.photos):
        raise HTTPException(404, "no such photo")
    data = upload.photos[index][1]
    kind = next((k for magic, k in _IMAGE_TYPES if data.startswith(magic)), None)
    if kind is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        kind = "image/webp"
    if kind is None:
        raise HTTPException(404, "no preview for this kind of file")
    return Response(data, media_type=kind, headers={"Cache-Control": "no-store"})


@router.post("/people/new/store", response_class=HTMLResponse)
async def store_photos(request: Request, current: AdminChange) -> Response:
    """Check again with the faces picked, or store the photos that pass (``action``)."""
    services = services_of(request)
    form = await request.form()
    token = _text(form, "upload", 64)
    upload = _waiting(request, current, token)
    person = _person(request, str(upload.person_id)) if upload.person_id else None
    picked = _picked(form, len(upload.photos))
    append = person is not None
    if _text(form, "action") == "check":
        verdicts = await run_in_threadpool(
            lambda: people_service.assess_photos(services, upload.photos, picked, name=upload.name, append=append)
        )
        return _verdicts_page(request, current, token, upload, person, verdicts, picked)
    try:
        with security.acting(request, current.account):
            stored, verdicts = await run_in_threadpool(
                lambda: people_service.enrol_photos(services, upload.name, upload.photos, picked, append, partial=True)
            )
    except KioskError as exc:
        verdicts = await run_in_threadpool(
            lambda: people_service.assess_photos(services, upload.photos, picked, name=upload.name, append=append)
        )
        return _verdicts_page(
            request, current, token, upload, person, verdicts, picked, error=error_text(exc), status_code=422
        )
    if stored is None:
        error = tr(request, "admin.enrol.nothing_stored")
        return _verdicts_page(request, current, token, upload, person, verdicts, picked, error=error, status_code=422)
    uploads_of(request).drop(token)
    return see_other(f"/people/{stored['id']}?done=enrolled")


# -- the door camera ------------------------------------------------------------------------------------------------


def _actor(request: Request, current: Session) -> str:
    return f"web:{current.account.name} from {security.client_address(request)}"


def capture_verdicts(reply: dict[str, Any], model_id: str, model_sha256: str) -> list[ImageVerdict]:
    """A finished guided capture (``capture-result``) as enrolment verdicts, one per frame the loop kept. InputError
    when the reply is not what docs/screen-protocol.md says, or the loop's recogniser is not this app's."""
    model = reply.get("model")
    frames = reply.get("frames")
    if not isinstance(model, dict) or not isinstance(frames, list) or not frames:
        raise InputError("the door loop returned no frames for this capture")
    if (model.get("id"), model.get("sha256")) != (model_id, model_sha256):
        raise InputError(
            f"the door loop embeds with {model.get('id')!r}, this web app with {model_id!r}: restart both after a "
            "model change"
        )
    out = []
    for i, frame in enumerate(frames):
        try:
            vector = np.frombuffer(base64.b64decode(frame["embedding"], validate=True), dtype="<f4").astype(np.float32)
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise InputError("the door loop returned a malformed embedding") from None
        if vector.size == 0 or not np.isfinite(vector).all():
            raise InputError("the door loop returned a malformed embedding")
        raw = frame.get("quality")
        quality = (
            {k: float(v) for k, v in (raw or {}).items() if isinstance(v, int | float)} if isinstance(raw, dict) else {}
        )
        out.append(ImageVerdict(f"door camera frame {i + 1}", True, "ok", quality, vector))
    return out


def enrol_capture(services: WebServices, name: str, verdicts: list[ImageVerdict], *, append: bool) -> dict[str, Any]:
    """Store a capture's frames under ``name`` through the CLI's enrolment (``kiosk.enroll.store``): the batch
    checks (consistency, a face already enrolled as someone else, the template cap), then one transaction."""
    model = services.enrolment_model()
    with services.gallery() as g:
        report = store(model, g, name, verdicts, append=append)
    assert report.person is not None
    return people_service.person_dict(report.person)


def _capture_of(request: Request, capture_id: str) -> dict[str, Any] | None:
    """The capture's progress from the loop's state, while it is the one running."""
    capture = services_of(request).link.state.get("capture")
    return capture if isinstance(capture, dict) and capture.get("id") == capture_id else None


async def _capture_progress(request: Request, capture_id: str) -> dict[str, Any]:
    capture = _capture_of(request, capture_id)
    if capture is None:  # finished (or the loop restarted): ask the loop how it ended
        try:
            reply = await services_of(request).link.request({"op": "capture-result", "id": capture_id})
        except (KioskError, OSError, TimeoutError):
            reply = {"ok": False}
        state = reply.get("state") if reply.get("ok") else "failed"
        known = state in ("running", "done", "failed", "cancelled")
        capture = {"id": capture_id, "state": state if known else "failed"}
    quality = capture.get("quality")
    return {
        "state": str(capture.get("state") or "running"),
        "done": int(capture.get("done") or 0),
        "target": int(capture.get("target") or CAPTURE_TARGET),
        "hint": capture.get("hint") if isinstance(capture.get("hint"), str) else None,
        "quality": float(quality) if isinstance(quality, int | float) else None,
    }


def _capture_upload(request: Request, current: Session, token: str) -> Upload:
    upload = _waiting(request, current, token[:64])
    if upload.capture_id is None:
        raise HTTPException(404, "no such capture")
    return upload


def _camera_page(
    request: Request, current: Session, token: str, upload: Upload, capture: dict[str, Any], **extra: Any
) -> Response:
    person = _person(request, str(upload.person_id)) if upload.person_id else None
    return render(
        request,
        "admin/camera.html",
        current,
        section="people",
        capture_id=token,
        capture=capture,
        name=upload.name,
        person=person,
        **extra,
    )


@router.post("/people/new/camera", response_class=HTMLResponse)
async def start_capture(request: Request, current: AdminChange) -> Response:
    """Ask the loop for a guided capture; the page then follows its progress in the loop's state."""
    form = await request.form()
    try:
        name, person = _who(request, form)
    except KioskError as exc:
        return _enrol_page(request, current, None, name=_text(form, "name"), error=error_text(exc), status_code=422)
    request_ = {"op": "capture", "target": CAPTURE_TARGET, "timeout_s": CAPTURE_TIMEOUT_S}
    try:
        reply = await services_of(request).link.request(request_ | {"actor": _actor(request, current)})
    except (KioskError, OSError, TimeoutError):
        reply = {"ok": False, "error": "unavailable"}
    if not reply.get("ok") or not isinstance(reply.get("id"), str):
        code = str(reply.get("error") or "unavailable")
        error = tr(request, "admin.camera.refused", detail=str(reply.get("detail") or code))
        return _enrol_page(request, current, person, name=name, error=error, status_code=503)
    upload = Upload(UploadStore.owner_of(current), name, person["id"] if person else None, capture_id=reply["id"])
    token = uploads_of(request).put(upload)
    return _camera_page(request, current, token, upload, await _capture_progress(request, reply["id"]))


@router.get("/people/new/camera/{token}/progress", response_class=HTMLResponse)
async def capture_progress(request: Request, token: str, current: AdminPage) -> Response:
    upload = _capture_upload(request, current, token)
    assert upload.capture_id is not None
    capture = await _capture_progress(request, upload.capture_id)
    return render(request, "admin/_capture.html", current, capture_id=token, capture=capture)


@router.post("/people/new/camera/{token}/cancel", response_class=HTMLResponse)
async def cancel_capture(request: Request, token: str, current: AdminChange) -> Response:
    upload = _capture_upload(request, current, token)
    with contextlib.suppress(KioskError, OSError, TimeoutError):  # the loop is gone: so is its capture
        await services_of(request).link.request({"op": "capture-cancel", "id": upload.capture_id})
    uploads_of(request).drop(token)
    return see_other("/people/new" + (f"?person={upload.person_id}" if upload.person_id else ""))


@router.post("/people/new/camera/{token}/store", response_class=HTMLResponse)
async def store_capture(request: Request, token: str, current: AdminChange) -> Response:
    services = services_of(request)
    upload = _capture_upload(request, current, token)
    try:
        reply = await services.link.request({"op": "capture-result", "id": upload.capture_id})
    except (KioskError, OSError, TimeoutError):
        reply = {"ok": False, "detail": tr(request, "admin.door.unreachable")}
    error = None
    if not reply.get("ok") or reply.get("state") != "done":
        error = tr(request, "admin.camera.not_done", detail=str(reply.get("detail") or reply.get("state") or ""))
    else:
        try:
            spec = (await run_in_threadpool(services.enrolment_model)).embedder.spec
            verdicts = capture_verdicts(reply, spec.id, spec.sha256)
            with security.acting(request, current.account):
                stored = await run_in_threadpool(
                    lambda: enrol_capture(services, upload.name, verdicts, append=upload.person_id is not None)
                )
        except KioskError as exc:
            error = error_text(exc)
    if error is not None:
        assert upload.capture_id is not None
        capture = await _capture_progress(request, upload.capture_id)
        return _camera_page(request, current, token, upload, capture, error=error)
    uploads_of(request).drop(token)
    return see_other(f"/people/{stored['id']}?done=enrolled")
