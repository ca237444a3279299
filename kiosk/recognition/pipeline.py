"""The recognition pipeline: detect → select → align → quality → embed, and the one place models are loaded.

``enroll``, ``verify``, ``identify``, ``eval`` and the door loop all go through ``Pipeline.analyze`` so they can
never drift apart in preprocessing or defaults.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from kiosk.config import Config
from kiosk.models.backends import RuntimeOptions, load_runner
from kiosk.models.manifest import Manifest, ModelSpec, load_manifest
from kiosk.recognition.align import Template, align, get_template
from kiosk.recognition.detect import Detector, build_detector, select_faces
from kiosk.recognition.embed import Embedder
from kiosk.recognition.match import Matcher
from kiosk.recognition.openset import ImpostorTail, fpir, threshold_for
from kiosk.recognition.quality import assess
from kiosk.types import Face, FloatArray, Image, QualityReport

if TYPE_CHECKING:
    from kiosk.gallery.records import GalleryMatrix

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaceResult:
    face: Face
    aligned: Image
    quality: QualityReport
    embedding: FloatArray | None  # None when the face was not embedded (quality rejected and embed_rejected off)


@dataclass(frozen=True)
class Thresholds:
    accept: float  # door / "the same person"
    likely: float  # below this: "not the same person"
    duplicate: float  # enrolment: a face this close to someone else is refused


def runtime_options(cfg: Config) -> RuntimeOptions:
    r = cfg.runtime
    extra: dict[str, str] = {}
    # NOTE: idle intra-op threads spinning for work is onnxruntime's default: faster on an otherwise idle CPU, about
    # twice as slow when anything else wants the cores (camera thread, other services), and it burns power on a Pi.
    extra["session.intra_op.allow_spinning"] = "1" if r.allow_spinning else "0"
    return RuntimeOptions(
        providers=r.providers,
        intra_op_threads=r.intra_op_threads,
        inter_op_threads=r.inter_op_threads,
        tflite_threads=r.tflite_threads,
        extra=extra,
    )


class Pipeline:
    def __init__(self, cfg: Config, detector: Detector, embedder: Embedder, template: Template) -> None:
        self.cfg = cfg
        self.detector = detector
        self.embedder = embedder
        self.template = template
        det_thr = detector.spec.thresholds
        self.score_threshold = (
            cfg.detection.score_threshold if cfg.detection.score_threshold is not None else det_thr.get("score", 0.6)
        )
        retry = cfg.detection.retry_score_threshold
        self.retry_threshold = min(retry, self.score_threshold) if retry is not None else None
        self.thresholds = self.thresholds_for(cfg, embedder.spec)
        # The recogniser's measured impostor tail (None when its manifest entry has none): what scales the door's
        # threshold with the gallery's size.
        self.tail = ImpostorTail.from_thresholds(embedder.spec.thresholds)

    @staticmethod
    def thresholds_for(cfg: Config, spec: ModelSpec) -> Thresholds:
        """The thresholds in force for recogniser ``spec`` under ``cfg`` (config overrides, else the manifest's)."""
        accept = cfg.recognition.threshold if cfg.recognition.threshold is not None else spec.thresholds["accept"]
        likely = min(spec.thresholds.get("likely", accept), accept)
        dup = cfg.enroll.duplicate_threshold if cfg.enroll.duplicate_threshold is not None else accept
        return Thresholds(accept=accept, likely=likely, duplicate=dup)

    def accept_threshold(self, templates: int) -> float:
        """The door's threshold for a gallery of ``templates`` templates: the one that keeps the chance of a stranger
        matching anyone at ``recognition.fpir`` (``kiosk.recognition.openset``), never below the model's accept
        threshold. A configured ``recognition.threshold``, or a model without a measured impostor tail, is fixed."""
        accept = self.thresholds.accept
        if self.cfg.recognition.threshold is not None or self.tail is None:
            return accept
        return max(accept, threshold_for(self.tail, templates, self.cfg.recognition.fpir))

    def expected_fpir(self, templates: int) -> float | None:
        """Chance that one stranger clears the threshold in force against some template (None: tail unmeasured)."""
        if self.tail is None:
            return None
        return fpir(self.tail, templates, self.accept_threshold(templates))

    def matcher(self, m: GalleryMatrix) -> Matcher:
        """The door's matcher over the gallery matrix ``m`` (the one place its threshold and margin are set)."""
        threshold = self.accept_threshold(len(m))
        return Matcher(m.embeddings, m.person_ids, m.names, threshold=threshold, margin=self.cfg.recognition.margin)

    @classmethod
    def from_config(cls, cfg: Config, manifest: Manifest | None = None) -> Pipeline:
        """Load and verify both models named in the config (sha256 checked before any byte is parsed)."""
        manifest = manifest or load_manifest(cfg.models.manifest)
        det_spec = manifest.get(cfg.models.detector, task="detect")
        rec_spec = manifest.get(cfg.models.recognizer, task="embed")
        opts = runtime_options(cfg)
        primary = cfg.detection.score_threshold
        if primary is None:
            primary = det_spec.thresholds.get("score", 0.6)
        retry = cfg.detection.retry_score_threshold
        # The detector runs once at the lower of the two thresholds; ``detect`` applies the primary one first.
        floor = min(primary, retry) if retry is not None else primary
        detector = build_detector(
            det_spec,
            load_runner(det_spec, opts),
            score_threshold=floor,
            nms_iou=cfg.detection.nms_iou,
            input_size=cfg.detection.input_size,
            parts={name: load_runner(part, opts) for name, part in det_spec.parts.items()},
        )
        embedder = Embedder(rec_spec, load_runner(rec_spec, opts))
        template = get_template(rec_spec.align_template)
        log.info(
            "pipeline: detector %s (%s), recogniser %s (%s, %s-D)",
            det_spec.id,
            det_spec.format,
            rec_spec.id,
            rec_spec.format,
            rec_spec.output_dim,
        )
        return cls(cfg, detector, embedder, template)

    @property
    def models(self) -> dict[str, dict[str, str]]:
        """Model ids and hashes, for reports and JSON output."""
        return {
            "detector": {"id": self.detector.spec.id, "sha256": self.detector.spec.sha256},
            "recognizer": {"id": self.embedder.spec.id, "sha256": self.embedder.spec.sha256},
        }

    @property
    def fingerprint(self) -> str:
        """Everything that changes an embedding: both models, detection and alignment settings."""
        blob = json.dumps(
            {
                "models": self.models,
                "detection": asdict(self.cfg.detection),
                "score": self.score_threshold,
                "retry": self.retry_threshold,
                "template": self.template.points.tolist(),
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def detect(self, image: Image) -> list[Face]:
        """Faces at the primary score threshold; if none, those at the retry threshold (one inference)."""
        faces = self.detector.detect(image)
        strong = [f for f in faces if f.score >= self.score_threshold]
        if strong or self.retry_threshold is None:
            return strong
        return [f for f in faces if f.score >= self.retry_threshold]

    def prepare(self, image: Image, faces: list[Face]) -> list[tuple[Image, QualityReport]]:
        """Align and quality-check detected faces (cheap); embedding is a separate, costly step."""
        crops = [align(image, f, self.template) for f in faces]
        return [(c, assess(f, c, self.cfg.quality)) for f, c in zip(faces, crops, strict=True)]

    def analyze(self, image: Image, *, select: str | None = None, embed_rejected: bool = True) -> list[FaceResult]:
        """Run every stage on one BGR image. ``select`` overrides ``detection.select`` (largest/central/all)."""
        faces = select_faces(self.detect(image), select or self.cfg.detection.select, image.shape)
        return self.analyze_faces(image, faces, embed_rejected=embed_rejected)

    def analyze_faces(self, image: Image, faces: list[Face], *, embed_rejected: bool = True) -> list[FaceResult]:
        """Align, quality-check and embed faces already detected (and selected) in ``image``."""
        if not faces:
            return []
        prepared = self.prepare(image, faces)
        todo = [i for i, (_, q) in enumerate(prepared) if q.ok or embed_rejected]
        vectors = self.embedder.embed([prepared[i][0] for i in todo])
        embeddings: list[FloatArray | None] = [None] * len(faces)
        for row, i in enumerate(todo):
            embeddings[i] = vectors[row]
        return [
            FaceResult(face=f, aligned=c, quality=q, embedding=e)
            for f, (c, q), e in zip(faces, prepared, embeddings, strict=True)
        ]

    def warmup(self) -> None:
        """One dummy pass through both models so the first real frame is not slow."""
        blank = np.zeros((240, 320, 3), dtype=np.uint8)
        self.detector.detect(blank)
        w, h = self.template.size
        self.embedder.embed([np.zeros((h, w, 3), dtype=np.uint8)])
