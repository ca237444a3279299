"""People and enrolment for the web app (the JSON API and the admin pages share it).

Uploaded photos are judged one by one before anything is saved (``assess_photos``): unreadable or unsupported,
too large, no face, several faces (their boxes, so the page can let the admin pick one), failed quality with the
measured values, a face that looks like somebody already enrolled, a photo unlike the others of the batch. Storing
goes through ``kiosk.enroll`` (the same checks as ``kiosk enroll``) into one gallery transaction; removal through
``kiosk.gallery.backup.remove_person``, the CLI's erasure. Changes are audited by the gallery under the actor the
caller set (``kiosk.web.security.acting``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, get_args

from kiosk.config import Config
from kiosk.enroll import ImageVerdict, check_batch, judge_face, left_to_right, write_templates
from kiosk.errors import DuplicateError, ImageTooLargeError, InputError, PersonNotFoundError
from kiosk.gallery import Gallery, Person, clean_name
from kiosk.gallery.backup import Removal
from kiosk.gallery.backup import remove_person as remove_everywhere
from kiosk.imageio import decode_image, display, image_format
from kiosk.recognition.pipeline import FaceResult, Pipeline
from kiosk.types import Image

if TYPE_CHECKING:
    from kiosk.web.services import WebServices

log = logging.getLogger(__name__)

# What the web accepts (by content, never by the file name or the declared type); HEIF needs pillow-heif.
UPLOAD_FORMATS = ("jpeg", "png", "webp", "heif")
VerdictCode = Literal[
    "ok",
    "unreadable",
    "too-large",
    "no-face",
    "several-faces",
    "quality",
    "looks-like",
    "inconsistent",
    "too-many",
]
CODES: tuple[str, ...] = get_args(VerdictCode)
MAX_FILENAME = 120


@dataclass
class PhotoVerdict:
    """The verdict on one uploaded photo, before anything is saved."""

    index: int
    filename: str
    ok: bool
    code: str  # one of CODES
    message: str  # one line for a person
    faces: list[list[float]] = field(default_factory=list)  # several-faces: [x, y, w, h] in 0..1, left to right
    measured: dict[str, float] = field(default_factory=dict)  # quality metrics of the face judged
    looks_like: dict[str, Any] | None = None  # {"person_id", "name", "score"}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def safe_filename(name: str | None, index: int) -> str:
    """A client's file name for display only: its last path component, printable, at most MAX_FILENAME long.
    It never names a file on this machine."""
    base = PurePosixPath((name or "").replace("\\", "/")).name
    base = "".join(c for c in base if c.isprintable()).strip()
    return base[:MAX_FILENAME] or f"photo {index + 1}"


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.isoformat()


def person_dict(p: Person) -> dict[str, Any]:
    return {
        "id": p.id,
        "name": p.name,
        "enabled": p.enabled,
        "valid_from": _iso(p.valid_from),
        "valid_until": _iso(p.valid_until),
        "templates": p.templates,
        "created": _iso(p.created),
    }


# -- people ---------------------------------------------------------------------------------------------------------


def list_people(services: WebServices, query: str = "") -> list[dict[str, Any]]:
    """Everyone, by name; ``query`` keeps the names containing it (any case)."""
    needle = query.strip().casefold()
    with services.gallery() as g:
        people = g.list_people()
    return [person_dict(p) for p in people if needle in p.name.casefold()]


def person_detail(services: WebServices, person_id: int) -> dict[str, Any]:
    """A person and their templates (id, quality, created, source, model_id; never the embedding)."""
    with services.gallery() as g:
        person = _person(g, person_id)
        templates = g.templates(person.id)
    rows = [
        {k: t[k] for k in ("id", "quality", "created", "source", "model_id")} | {"model_sha256": t["model_sha256"]}
        for t in templates
    ]
    return person_dict(person) | {"templates": rows}


def _person(g: Gallery, person_id: int) -> Person:
    """By id only (a web route's id is never taken for a name)."""
    if not isinstance(person_id, int) or not 1 <= person_id < 2**63:
        raise PersonNotFoundError(f"no person with id {person_id}")
    try:
        return g.get_person(person_id)
    except PersonNotFoundError:
        raise PersonNotFoundError(f"no person with id {person_id}") from None


def _window_value(value: Any, key: str) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            raise InputError(f"{key}: not an ISO 8601 date and time ({value[:40]!r})") from None
    raise InputError(f"{key}: expected an ISO 8601 date and time or null")


def update_person(services: WebServices, person_id: int, changes: dict[str, Any]) -> dict[str, Any]:
    """Apply ``changes`` (name, enabled, valid_from, valid_until; a missing key is left as is, a null validity bound
    clears it). Every value is checked before the first change is made; each change is one audited transaction."""
    unknown = sorted(set(changes) - {"name", "enabled", "valid_from", "valid_until"})
    if unknown:
        raise InputError(f"unknown field(s): {', '.join(unknown)}; allowed: name, enabled, valid_from, valid_until")
    name = clean_name(changes["name"]) if changes.get("name") is not None else None
    enabled = changes.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise InputError("enabled: expected true or false")
    with services.gallery() as g:
        person = _person(g, person_id)
        window = None
        if "valid_from" in changes or "valid_until" in changes:
            start = _window_value(changes.get("valid_from", person.valid_from), "valid_from")
            end = _window_value(changes.get("valid_until", person.valid_until), "valid_until")
            window = (start, end)
        if name is not None and name != person.name:
            person = g.rename(person.id, name)
        if enabled is not None and enabled != person.enabled:
            person = g.set_enabled(person.id, enabled)
        if window is not None:
            person = g.set_validity(person.id, *window)
    return person_dict(person)


def remove_person(services: WebServices, person_id: int) -> Removal:
    """Remove a person and erase their templates from the gallery and every backup (``kiosk people remove``)."""
    with services.gallery() as g:
        removal = remove_everywhere(services.cfg, g, _person(g, person_id).id)
    if removal.failed:
        log.error("person id=%d removed, but not erased from %d backup(s)", removal.person_id, len(removal.failed))
    return removal


def delete_template(services: WebServices, person_id: int, template_id: int) -> dict[str, Any]:
    """Delete and erase one of a person's templates; returns the person as they are now."""
    with services.gallery() as g:
        person = g.delete_template(_person(g, person_id).id, template_id)
    return person_dict(person)


# -- photos ---------------------------------------------------------------------------------------------------------


def _box(result: FaceResult, image: Image) -> list[float]:
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in result.face.box)
    x1, x2 = max(0.0, min(x1, w)) / w, max(0.0, min(x2, w)) / w
    y1, y2 = max(0.0, min(y1, h)) / h, max(0.0, min(y2, h)) / h
    return [round(x1, 4), round(y1, 4), round(x2 - x1, 4), round(y2 - y1, 4)]


def _decode(data: bytes, filename: str, cfg: Config) -> Image | PhotoVerdict:
    """The photo's pixels (EXIF orientation applied), or the verdict that refuses it (index filled in later)."""
    max_bytes = int(cfg.web.upload_max_mb * 1e6)
    if len(data) > max_bytes:
        message = f"file is {len(data) / 1e6:.1f} MB, above the limit of {cfg.web.upload_max_mb:g} MB"
        return PhotoVerdict(0, filename, False, "too-large", message)
    kind = image_format(data)
    if data and kind is not None and kind not in UPLOAD_FORMATS:
        message = f"unsupported format ({kind.upper()}): upload JPEG, PNG or WebP photos"
        return PhotoVerdict(0, filename, False, "unreadable", message)
    try:
        return decode_image(data, filename, cfg.enroll.max_image_pixels)
    except InputError as exc:
        message = str(exc).removeprefix(display(filename) + ": ")
        code = "too-large" if isinstance(exc, ImageTooLargeError) else "unreadable"
        return PhotoVerdict(0, filename, False, code, message)


def _judge(pipeline: Pipeline, image: Image, filename: str, pick: int | None) -> tuple[ImageVerdict, list[list[float]]]:
    """Detect every face; with several, the one ``pick`` names (0 = leftmost) or a several-faces verdict."""
    results = left_to_right(pipeline.analyze(image, select="all", embed_rejected=False))
    boxes = [_box(r, image) for r in results] if len(results) > 1 else []
    if not results:
        return ImageVerdict(filename, False, "no face found", code="no-face"), boxes
    if len(results) == 1:
        return judge_face(results[0], filename), boxes
    if pick is None:
        reason = f"{len(results)} faces found: pick the one to enrol"
        return ImageVerdict(filename, False, reason, code="several-faces"), boxes
    if not 0 <= pick < len(results):
        reason = f"{len(results)} faces found and face {pick} is not one of them (0..{len(results) - 1})"
        return ImageVerdict(filename, False, reason, code="several-faces"), boxes
    return judge_face(results[pick], filename), boxes


Judged = PhotoVerdict | tuple[ImageVerdict, list[list[float]]]


def judge_photo(pipeline: Pipeline, cfg: Config, data: bytes, filename: str, pick: int | None) -> Judged:
    """One uploaded photo: decoded and judged (``_judge``), or the verdict that refuses the file. Runs in the model
    worker (``kiosk.web.worker``), so untrusted image decoding never happens in the web process."""
    decoded = _decode(data, filename, cfg)
    if isinstance(decoded, PhotoVerdict):
        return decoded
    return _judge(pipeline, decoded, filename, pick)


def _message(v: ImageVerdict) -> str:
    if v.code == "ok":
        return f"ok (quality {v.quality.get('score', 0.0):.2f})"
    if v.code == "quality":
        return f"failed quality: {v.reason}"
    if v.code == "looks-like" and v.looks_like is not None:
        return f"looks like {v.looks_like[1]} ({v.looks_like[2]:.2f})"
    return v.reason


def _assess(
    services: WebServices,
    g: Gallery,
    photos: list[tuple[str, bytes]],
    faces: dict[int, int] | None,
    name: str | None,
    append: bool,
) -> tuple[list[PhotoVerdict], list[ImageVerdict], list[ImageVerdict]]:
    """(verdicts for the page, the enrol module's verdicts, those of them good to store)."""
    limit = services.cfg.web.upload_max_files
    if not photos:
        raise InputError("no photos: upload at least one")
    if len(photos) > limit:
        raise InputError(f"{len(photos)} photos uploaded; the limit is {limit} (web.upload_max_files)")
    named = [(safe_filename(raw_name, index), data) for index, (raw_name, data) in enumerate(photos)]
    results = services.worker().judge(named, faces or {})
    out: list[PhotoVerdict] = []
    judged: list[tuple[int, ImageVerdict, list[list[float]]]] = []
    for index, ((filename, _), result) in enumerate(zip(named, results, strict=True)):
        if isinstance(result, PhotoVerdict):
            result.index = index
            out.append(result)
            continue
        verdict, boxes = result
        judged.append((index, verdict, boxes))
        out.append(PhotoVerdict(index, filename, False, verdict.code, ""))
    image_verdicts = [v for _, v, _ in judged]
    model = services.enrolment_model()
    good = check_batch(model, g, name, image_verdicts, append=append) if image_verdicts else []
    for index, v, boxes in judged:
        looks = None if v.looks_like is None else dict(zip(("person_id", "name", "score"), v.looks_like, strict=True))
        out[index] = PhotoVerdict(
            index, out[index].filename, v.accepted, v.code, _message(v), boxes, dict(v.quality), looks
        )
    return out, image_verdicts, good


def assess_photos(
    services: WebServices,
    photos: list[tuple[str, bytes]],
    faces: dict[int, int] | None = None,
    *,
    name: str | None = None,
    append: bool = False,
) -> list[PhotoVerdict]:
    """A verdict per photo (``(filename, bytes)``), nothing saved. ``faces`` picks a face in a photo with several
    ({photo index: face index, 0 = leftmost}). With ``name`` (and ``append``) the batch is judged as ``enrol_photos``
    would judge it: the person's own templates are then no look-alikes."""
    with services.gallery() as g:
        return _assess(services, g, photos, faces, clean_name(name) if name else None, append)[0]


def _check_name(g: Gallery, name: str, append: bool) -> None:
    """DuplicateError when ``name`` is taken (without ``append``); PersonNotFoundError when appending to nobody."""
    try:
        existing: Person | None = g.get_person(name)
    except PersonNotFoundError:
        existing = None
    if existing is not None and existing.name.casefold() != name.casefold():
        existing = None  # a digits-only name that matched somebody's id
    if existing is None and append:
        raise PersonNotFoundError(f"nobody called {name!r} is enrolled: there is no one to add the photos to")
    if existing is not None and not append:
        raise DuplicateError(
            f"{existing.name!r} is already enrolled (id {existing.id}): add the photos to them, or choose another name"
        )


def enrol_photos(
    services: WebServices,
    name: str,
    photos: list[tuple[str, bytes]],
    faces: dict[int, int] | None = None,
    append: bool = False,
    *,
    partial: bool = False,
) -> tuple[dict[str, Any] | None, list[PhotoVerdict]]:
    """Judge the photos, then store their templates in one transaction: only when every photo passed, or with
    ``partial`` the ones that did. Returns (the person, or None when nothing was stored; the verdicts).

    InputError for a bad name or too many photos, DuplicateError when the name is taken (without ``append``),
    PersonNotFoundError when appending to nobody; nothing is stored then either."""
    name = clean_name(name)
    with services.gallery() as g:
        _check_name(g, name, append)  # before any photo is looked at
        verdicts, image_verdicts, good = _assess(services, g, photos, faces, name, append)
        if not good or (not partial and not all(v.ok for v in verdicts)):
            log.info("enrolment refused: %d of %d photo(s) rejected", sum(not v.ok for v in verdicts), len(verdicts))
            return None, verdicts
        person = write_templates(services.enrolment_model(), g, name, image_verdicts, good, append=append).person
    return (None if person is None else person_dict(person)), verdicts
