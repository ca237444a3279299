"""Enrolment from images: keep the good faces, reject the rest with a reason, store all-or-nothing.

Rejected: unreadable images, no face, several faces (unless the caller picks one), failed quality checks, a face
that already matches a *different* enrolled person, and an image that does not look like the others being enrolled
for this person (a wrong photo in the batch). The person and templates are written in one transaction.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from kiosk.config import Config
from kiosk.errors import DuplicateError, FaceError, InputError, KioskError, PersonNotFoundError
from kiosk.gallery import Gallery, Person, TemplateIn, clean_name
from kiosk.imageio import read_image
from kiosk.models.manifest import Manifest, ModelSpec, load_manifest
from kiosk.recognition.match import Matcher
from kiosk.recognition.pipeline import FaceResult, Pipeline, Thresholds
from kiosk.types import FloatArray, Image

log = logging.getLogger(__name__)


class _Recogniser(Protocol):
    @property
    def spec(self) -> ModelSpec: ...


class EnrolmentModel(Protocol):
    """What storing an enrolment reads of the pipeline (``check_batch``, ``write_templates``, ``store``): the config,
    the thresholds and the recogniser's manifest entry, never its session. ``Pipeline`` is one; ``enrolment_model``
    builds one without loading any model (the web process, whose models live in ``kiosk.web.worker``)."""

    @property
    def cfg(self) -> Config: ...

    @property
    def thresholds(self) -> Thresholds: ...

    @property
    def embedder(self) -> _Recogniser: ...


@dataclass(frozen=True)
class RecogniserSpec:
    spec: ModelSpec


@dataclass(frozen=True)
class ModelFacts:
    """An ``EnrolmentModel`` read from the manifest alone."""

    cfg: Config
    thresholds: Thresholds
    embedder: RecogniserSpec


def enrolment_model(cfg: Config, manifest: Manifest | None = None) -> ModelFacts:
    """The configured recogniser's facts, its file's sha256 checked as a load would check it (so templates are
    never tagged with a model that is not the one on disk), without loading it."""
    manifest = manifest or load_manifest(cfg.models.manifest)
    spec = manifest.get(cfg.models.recognizer, task="embed")
    spec.verify()
    return ModelFacts(cfg, Pipeline.thresholds_for(cfg, spec), RecogniserSpec(spec))


@dataclass
class ImageVerdict:
    source: str
    accepted: bool
    reason: str
    quality: dict[str, float] = field(default_factory=dict)
    embedding: FloatArray | None = None
    unreadable: bool = False  # the file itself was refused (missing, corrupt, not an image): an input error
    # Why, as a code: ok | unreadable | no-face | several-faces | quality | looks-like | inconsistent | too-many
    code: str = "ok"
    looks_like: tuple[int, str, float] | None = None  # (person id, name, score) of the enrolled look-alike

    def as_dict(self) -> dict[str, object]:
        return {"source": self.source, "accepted": self.accepted, "reason": self.reason}


@dataclass
class EnrollReport:
    person: Person | None
    stored: int
    verdicts: list[ImageVerdict]


def left_to_right(results: list[FaceResult]) -> list[FaceResult]:
    """Faces in the order ``face_index`` counts them: 0 is the leftmost."""
    return sorted(results, key=lambda r: (r.face.box[0], r.face.box[1]))


def _pick_face(results: list[FaceResult], face_index: int | None, select: str | None) -> FaceResult | str:
    if not results:
        return "no face found"
    if len(results) == 1:
        return results[0]
    if face_index is not None:
        if not 0 <= face_index < len(results):
            return f"{len(results)} faces found; --face {face_index} is out of range (0..{len(results) - 1})"
        return left_to_right(results)[face_index]
    if select in ("largest", "central"):
        return results[0]
    return f"{len(results)} faces found; pass --face N (0 = leftmost) or --select largest"


def assess_frame(
    pipeline: Pipeline, image: Image, source: str, *, face_index: int | None = None, select: str | None = None
) -> ImageVerdict:
    """Detect, pick the face, quality-check and embed one image (from a file or a camera frame)."""
    policy = select if select in ("largest", "central") else "all"
    results = pipeline.analyze(image, select=policy, embed_rejected=False)
    picked = _pick_face(results, face_index, select)
    if isinstance(picked, str):
        return ImageVerdict(source, False, picked, code="several-faces" if results else "no-face")
    return judge_face(picked, source)


def judge_face(picked: FaceResult, source: str) -> ImageVerdict:
    """The verdict on the one face chosen in an image: its quality checks, and its embedding when they pass."""
    if not picked.quality.ok:
        return ImageVerdict(source, False, "; ".join(picked.quality.reasons), picked.quality.metrics, code="quality")
    return ImageVerdict(source, True, "ok", picked.quality.metrics, picked.embedding)


def assess_images(
    pipeline: Pipeline,
    images: list[Path],
    *,
    face_index: int | None = None,
    select: str | None = None,
    max_pixels: int,
) -> list[ImageVerdict]:
    """Per image: read, then ``assess_frame``. Never raises for a bad image."""
    verdicts: list[ImageVerdict] = []
    for path in images:
        try:
            image = read_image(path, max_pixels=max_pixels)
        except KioskError as exc:
            reason = str(exc).replace(str(path) + ": ", "")
            unreadable = isinstance(exc, InputError)
            verdicts.append(ImageVerdict(path.name, False, reason, unreadable=unreadable, code="unreadable"))
            continue
        verdicts.append(assess_frame(pipeline, image, path.name, face_index=face_index, select=select))
    return verdicts


def _check_consistency(verdicts: list[ImageVerdict], likely: float) -> None:
    """Reject accepted images that do not resemble the majority of the batch (a wrong photo among several)."""
    good = [v for v in verdicts if v.accepted and v.embedding is not None]
    if len(good) < 3:
        if len(good) == 2:
            a, b = good[0].embedding, good[1].embedding
            assert a is not None and b is not None
            if float(a @ b) < likely:
                for v in good:
                    v.accepted, v.code = False, "inconsistent"
                    v.reason = f"the two images do not look like the same person ({a @ b:.2f})"
        return
    emb = np.stack([v.embedding for v in good if v.embedding is not None])
    sims = emb @ emb.T
    np.fill_diagonal(sims, np.nan)
    median = np.nanmedian(sims, axis=1)
    for v, m in zip(good, median, strict=True):
        if m < likely:
            v.accepted, v.code = False, "inconsistent"
            v.reason = f"does not look like the other images of this person ({m:.2f})"


def existing_person(gallery: Gallery, name: str, append: bool) -> Person | None:
    """The enrolled person called ``name`` (for --append), or None; DuplicateError when taken without --append."""
    existing: Person | None = None
    with contextlib.suppress(PersonNotFoundError):
        existing = gallery.get_person(name)
    if existing is not None and existing.name.casefold() != name.casefold():
        existing = None  # a digits-only name that is somebody's id, not their name
    if existing is not None and not append:
        raise DuplicateError(f"'{existing.name}' is already enrolled; use --append to add images to them")
    return existing


def enroll(
    pipeline: Pipeline,
    gallery: Gallery,
    name: str,
    images: list[Path],
    *,
    append: bool = False,
    face_index: int | None = None,
    select: str | None = None,
    allow_duplicate: bool = False,
) -> EnrollReport:
    """Enrol ``name`` from image files. Raises InputError when no image could be read, FaceError when none was
    usable for another reason (nothing is stored then), InputError for a name the gallery would refuse (before any
    image is looked at)."""
    name = clean_name(name)
    existing_person(gallery, name, append)
    verdicts = assess_images(
        pipeline, images, face_index=face_index, select=select, max_pixels=pipeline.cfg.enroll.max_image_pixels
    )
    return store(pipeline, gallery, name, verdicts, append=append, allow_duplicate=allow_duplicate)


def store(
    pipeline: EnrolmentModel,
    gallery: Gallery,
    name: str,
    verdicts: list[ImageVerdict],
    *,
    append: bool = False,
    allow_duplicate: bool = False,
) -> EnrollReport:
    """Apply the batch checks (consistency, duplicates, template cap) and write the good templates atomically."""
    name = clean_name(name)
    good = check_batch(pipeline, gallery, name, verdicts, append=append, allow_duplicate=allow_duplicate)
    return write_templates(pipeline, gallery, name, verdicts, good, append=append)


def write_templates(
    pipeline: EnrolmentModel,
    gallery: Gallery,
    name: str,
    verdicts: list[ImageVerdict],
    good: list[ImageVerdict],
    *,
    append: bool = False,
) -> EnrollReport:
    """Store ``good`` (what ``check_batch`` kept of ``verdicts``) in one transaction: all of them or none."""
    if not good:
        reasons = "; ".join(f"{v.source}: {v.reason}" for v in verdicts)
        # Only unreadable files: the input is at fault (exit INPUT); a photo without a usable face: exit NO_FACE.
        error = InputError if verdicts and all(v.unreadable for v in verdicts) else FaceError
        raise error(f"nothing enrolled for {name!r}: {reasons}")
    spec = pipeline.embedder.spec
    templates = [
        TemplateIn(
            embedding=v.embedding,
            model_id=spec.id,
            model_sha256=spec.sha256,
            quality=float(v.quality.get("score", 0.0)),
            source=v.source,
        )
        for v in good
        if v.embedding is not None
    ]
    person = gallery.enroll(name, templates, append=append)
    log.info("enrolled person_id=%s templates=%d rejected=%d", person.id, len(templates), len(verdicts) - len(good))
    return EnrollReport(person=person, stored=len(templates), verdicts=verdicts)


def check_batch(
    pipeline: EnrolmentModel,
    gallery: Gallery,
    name: str | None,
    verdicts: list[ImageVerdict],
    *,
    append: bool = False,
    allow_duplicate: bool = False,
) -> list[ImageVerdict]:
    """The batch checks, before anything is stored: consistency within the batch, a face already enrolled as
    somebody else, the template cap. Marks the verdicts that fail; returns the ones to store, best first.
    ``name`` None: a new person whose name is not known yet (a preview)."""
    cfg = pipeline.cfg
    existing = None if name is None else existing_person(gallery, clean_name(name), append)
    _check_consistency(verdicts, pipeline.thresholds.likely)
    spec = pipeline.embedder.spec
    m = gallery.matrix(spec.id, spec.sha256, include_disabled=True)
    others = m.person_ids != (existing.id if existing else -1)
    matcher = Matcher(
        m.embeddings[others],
        m.person_ids[others],
        [n for n, keep in zip(m.names, others, strict=True) if keep],
        threshold=pipeline.thresholds.duplicate,
        margin=0.0,
    )
    for v in verdicts:
        if not v.accepted or v.embedding is None or allow_duplicate:
            continue
        result = matcher.match(v.embedding)
        if result.accepted and result.person_id is not None and result.name is not None:
            score = float(result.score or 0.0)
            v.accepted, v.code, v.looks_like = False, "looks-like", (result.person_id, result.name, score)
            v.reason = f"already enrolled as '{result.name}' (score {score:.2f})"
    good = sorted((v for v in verdicts if v.accepted), key=lambda v: -v.quality.get("score", 0.0))
    room = cfg.enroll.max_templates - (existing.templates if existing else 0)
    for v in good[max(room, 0) :]:
        v.accepted, v.code = False, "too-many"
        v.reason = f"person already has the maximum of {cfg.enroll.max_templates} templates"
    return good[: max(room, 0)]
