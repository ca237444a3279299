"""The people list (search as you type) and a person's page: templates, rename, enable/disable, validity window,
delete a template, remove. Viewers see everything and change nothing (no buttons, and the routes answer 403)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from kiosk.errors import KioskError, PersonNotFoundError
from kiosk.web import people as people_service
from kiosk.web import security
from kiosk.web.accounts import Session
from kiosk.web.pages.common import (
    AdminChange,
    PageSession,
    error_text,
    notice_of,
    render,
    see_other,
    services_of,
    tr,
)

router = APIRouter()

MAX_ID = 2**63 - 1


@router.get("/people", response_class=HTMLResponse)
def people_list(request: Request, current: PageSession, q: str = "") -> Response:
    q = q[:200]
    people = people_service.list_people(services_of(request), q)
    if request.headers.get("hx-request") == "true" and request.headers.get("hx-target") == "people-rows":
        return render(request, "admin/_people_rows.html", current, people=people, q=q)
    return render(
        request, "admin/people.html", current, section="people", people=people, q=q, notice=notice_of(request)
    )


def input_value(iso: str | None) -> str:
    """A stored time (ISO 8601, UTC) as a ``datetime-local`` value: ``2026-12-06T10:00``."""
    if not iso:
        return ""
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%dT%H:%M")
    except ValueError:
        return ""


def window_value(text: str) -> str | None:
    """A ``datetime-local`` value (UTC, as the page says) as ISO 8601 with its zone; empty means no bound."""
    text = text.strip()
    return f"{text}+00:00" if text else None


def _detail(request: Request, person_id: int) -> dict[str, Any]:
    if not 1 <= person_id <= MAX_ID:
        raise HTTPException(404, f"no person with id {person_id}")
    try:
        return people_service.person_detail(services_of(request), person_id)
    except PersonNotFoundError as exc:
        raise HTTPException(404, error_text(exc)) from None


def _person_page(
    request: Request, current: Session, person: dict[str, Any], *, error: str | None = None, status_code: int = 200
) -> Response:
    return render(
        request,
        "admin/person.html",
        current,
        status_code=status_code,
        section="people",
        person=person,
        valid_from_input=input_value(person.get("valid_from")),
        valid_until_input=input_value(person.get("valid_until")),
        notice=notice_of(request),
        error=error,
    )


@router.get("/people/{person_id}", response_class=HTMLResponse)
def person_page(request: Request, person_id: int, current: PageSession) -> Response:
    return _person_page(request, current, _detail(request, person_id))


def _change(request: Request, current: Session, person_id: int, changes: dict[str, Any], done: str) -> Response:
    """One change through the service layer, the account named as its actor; a refused change re-shows the page."""
    person = _detail(request, person_id)
    try:
        with security.acting(request, current.account):
            people_service.update_person(services_of(request), person["id"], changes)
    except PersonNotFoundError as exc:
        raise HTTPException(404, error_text(exc)) from None
    except KioskError as exc:
        return _person_page(request, current, person, error=error_text(exc), status_code=422)
    return see_other(f"/people/{person['id']}?done={done}")


@router.post("/people/{person_id}/rename")
def rename(
    request: Request, person_id: int, current: AdminChange, name: Annotated[str, Form(max_length=400)]
) -> Response:
    return _change(request, current, person_id, {"name": name}, "renamed")


@router.post("/people/{person_id}/enabled")
def set_enabled(request: Request, person_id: int, current: AdminChange, enabled: Annotated[str, Form()]) -> Response:
    if enabled not in ("true", "false"):
        raise HTTPException(422, "enabled: true or false")
    on = enabled == "true"
    return _change(request, current, person_id, {"enabled": on}, "enabled" if on else "disabled")


@router.post("/people/{person_id}/validity")
def set_validity(
    request: Request,
    person_id: int,
    current: AdminChange,
    valid_from: Annotated[str, Form(max_length=40)] = "",
    valid_until: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    changes = {"valid_from": window_value(valid_from), "valid_until": window_value(valid_until)}
    return _change(request, current, person_id, changes, "validity")


@router.post("/people/{person_id}/templates/{template_id}/delete")
def delete_template(request: Request, person_id: int, template_id: int, current: AdminChange) -> Response:
    person = _detail(request, person_id)
    if not 1 <= template_id <= MAX_ID:
        raise HTTPException(404, f"no template {template_id}")
    try:
        with security.acting(request, current.account):
            people_service.delete_template(services_of(request), person["id"], template_id)
    except PersonNotFoundError as exc:
        raise HTTPException(404, error_text(exc)) from None
    return see_other(f"/people/{person['id']}?done=template-deleted")


@router.post("/people/{person_id}/remove")
def remove(
    request: Request, person_id: int, current: AdminChange, confirm: Annotated[str, Form(max_length=10)] = ""
) -> Response:
    person = _detail(request, person_id)
    if confirm != "yes":
        return _person_page(
            request, current, person, error=tr(request, "admin.person.remove_unconfirmed"), status_code=422
        )
    try:
        with security.acting(request, current.account):
            removal = people_service.remove_person(services_of(request), person["id"])
    except PersonNotFoundError as exc:
        raise HTTPException(404, error_text(exc)) from None
    # Removed from the gallery either way; a backup it could not be erased from is named in the log.
    return see_other("/people?done=" + ("removed-backups" if getattr(removal, "failed", None) else "removed"))
