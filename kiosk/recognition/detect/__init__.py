"""Detection stage: image in, ``Face`` list out (boxes and landmarks in the original image's pixels).

Detectors are an explicit table keyed by the manifest's ``family``; the model runner is injected, so importing
this package never imports an inference runtime.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from kiosk.errors import ModelError
from kiosk.models.backends import Runner
from kiosk.models.manifest import ModelSpec
from kiosk.recognition.detect._common import check_image, nms, resolve_threshold
from kiosk.recognition.detect.blazeface import BlazeFaceDetector
from kiosk.recognition.detect.mtcnn import MTCNNDetector
from kiosk.recognition.detect.yunet import YuNetDetector
from kiosk.types import Face, Image

SELECT_POLICIES = ("largest", "central", "all")


class Detector(Protocol):
    """Finds faces in a HxWx3 uint8 BGR image.

    ``detect`` returns faces sorted by score (highest first), in the original image's pixels, and an empty
    list when there is none. Boxes are not clipped: a face cut off by the image edge has a box that extends
    past it.
    """

    spec: ModelSpec
    score_threshold: float
    nms_iou: float

    def detect(self, image: Image) -> list[Face]: ...


def select_faces(faces: list[Face], policy: str, image_shape: tuple[int, ...]) -> list[Face]:
    """The face(s) to act on: the ``largest`` box, the most ``central`` one (ties: larger), or ``all``."""
    if policy not in SELECT_POLICIES:
        raise ValueError(f"face selection policy must be one of {SELECT_POLICIES}, got {policy!r}")
    if policy == "all" or not faces:
        return list(faces)
    if policy == "largest":
        return [max(faces, key=lambda f: f.area)]
    cy, cx = image_shape[0] / 2.0, image_shape[1] / 2.0

    def off_centre(f: Face) -> tuple[float, float]:
        fx, fy = f.center
        return (fx - cx) ** 2 + (fy - cy) ** 2, -f.area

    return [min(faces, key=off_centre)]


class DetectorClass(Protocol):
    """How every detector is constructed: its spec, the main file's runner, thresholds and any part runners."""

    def __call__(
        self,
        spec: ModelSpec,
        runner: Runner,
        *,
        score_threshold: float | None = ...,
        nms_iou: float | None = ...,
        input_size: int = ...,
        parts: Mapping[str, Runner] | None = ...,
    ) -> Detector: ...


DETECTORS: dict[str, DetectorClass] = {
    "yunet": YuNetDetector,
    "blazeface": BlazeFaceDetector,
    "mtcnn": MTCNNDetector,
}


def build_detector(
    spec: ModelSpec,
    runner: Runner,
    *,
    score_threshold: float | None = None,
    nms_iou: float | None = None,
    input_size: int = 320,
    parts: Mapping[str, Runner] | None = None,
) -> Detector:
    """The detector for ``spec.family``; ``None`` thresholds mean the manifest's ``thresholds`` values."""
    if spec.task != "detect":
        raise ModelError(f"model '{spec.id}' is a {spec.task} model, not a detect model")
    cls = DETECTORS.get(spec.family)
    if cls is None:
        known = ", ".join(sorted(DETECTORS))
        raise ModelError(f"model '{spec.id}': no detector for family {spec.family!r} (known: {known})")
    return cls(spec, runner, score_threshold=score_threshold, nms_iou=nms_iou, input_size=input_size, parts=parts)


__all__ = [
    "DETECTORS",
    "SELECT_POLICIES",
    "BlazeFaceDetector",
    "Detector",
    "MTCNNDetector",
    "YuNetDetector",
    "build_detector",
    "check_image",
    "nms",
    "resolve_threshold",
    "select_faces",
]
