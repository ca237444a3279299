"""MediaPipe face mesh: 468 3-D landmarks of one detected face, and the eye and head measures active liveness reads.

The mesh model sees a square crop around the face, rotated so that the eye line is level (MediaPipe's
``face_landmark_front`` graph): side = ``scale`` x the detector box's longer side, centre = the box centre moved
``shift_y`` x side down the face, rotation = the angle of the line from the subject's right eye to their left eye.
Both landmark schemes the detectors produce ("5pt", "blazeface6") start with those two eyes. ``scale`` and
``shift_y`` depend on the detector's box, so the manifest gives them per landmark scheme (``params.roi``); they were
measured as the crop MediaPipe's own tracking settles on (the landmarks' bounds x 1.5): a YuNet or MTCNN box is
taller than a BlazeFace box and starts higher on the forehead. YuNet's eyes barely follow a rolled head, so when
the mesh's own eye line disagrees with the crop's by more than ``reroll_deg`` it runs once more on a crop rolled to
match (a 25°-rolled photo: median point error 4.0 px before, 1.2 px after, on a face ~70 px between the eyes).
The model answers with 468 (x, y, z) points in crop
pixels (z: depth in the same units as x, smaller = nearer the camera) and a face-presence logit; here the points are
mapped back into image pixels (z scaled like x) and the logit becomes a 0..1 probability.

The mesh's eyelids barely move when the eyes close (on LFW photos with the eyes warped shut its eye aspect ratio fell
by 0-10 %, and it missed a real blink in a video): its eye region follows a face-shape prior. So, like MediaPipe's
refined mesh, the eye contours (16 points per eye) are replaced by those of the iris model (``EyeContours``), run on
a 64x64 crop around each eye (side = 2.3 x the eye-corner span, rotated by the corner line, the subject's left eye
mirrored); its eye aspect ratio falls by half or more on the same warped photos.

Preprocessing (size, colour order, mean/std, layout) comes from the manifest, and outputs are found by name (the
manifest's ``params.outputs``) or else by size, so a TFLite file and an ONNX conversion of it are used the same way
through ``kiosk.models.backends.load_runner``.

Mesh indices (MediaPipe's canonical face mesh; "right" = the subject's right, the image's left on a frontal face):

* EAR, subject's right eye: 33 (outer corner), 160, 158 (upper lid), 133 (inner corner), 153, 144 (lower lid).
* EAR, subject's left eye: 362 (inner corner), 385, 387 (upper lid), 263 (outer corner), 373, 380 (lower lid).
* Yaw: 234 and 454 (the face outline beside the right and left eye).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from kiosk.errors import InputError, ModelError
from kiosk.models.backends import Runner, RuntimeOptions, load_runner
from kiosk.models.manifest import Manifest, ModelSpec
from kiosk.types import Face, FloatArray, Image

NUM_LANDMARKS = 468
NUM_EYE_CONTOUR = 71
DEFAULT_PRESENCE_THRESHOLD = 0.5
DEFAULT_EYE_ROI_SCALE = 2.3

# Soukupová & Čech's six eye points (p1..p6): corner, upper lid x2, other corner, lower lid x2; p2-p6 and p3-p5 face
# each other across the eye.
RIGHT_EYE = (33, 160, 158, 133, 153, 144)
LEFT_EYE = (362, 385, 387, 263, 373, 380)
RIGHT_CHEEK, LEFT_CHEEK = 234, 454

# The mesh points the iris model's first 16 contour points stand for: lower lid corner to corner, then the upper lid
# between the corners. The subject's left eye is mirrored for the model, so its list starts at the outer corner too.
RIGHT_EYE_CONTOUR = (33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173)
LEFT_EYE_CONTOUR = (263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398)

Affine = npt.NDArray[np.float64]  # 2x3, continuous crop coordinates -> continuous image coordinates


@dataclass(frozen=True)
class MeshResult:
    """One face's mesh: ``points`` (468, 3) float32, x and y in image pixels, z relative depth in pixels."""

    points: FloatArray
    presence: float  # 0..1: how sure the model is that its crop holds a face
    refined: bool = False  # the eye contours come from the iris model


@dataclass(frozen=True)
class Roi:
    """How the face crop is placed on a detector's box (see the module docstring)."""

    scale: float
    shift_y: float = 0.0


def _eye_ratio(points: npt.NDArray[np.float64], idx: tuple[int, ...]) -> float:
    p = points[list(idx), :2]
    width = float(np.linalg.norm(p[0] - p[3]))
    if width < 1e-6:
        return 0.0
    return float(np.linalg.norm(p[1] - p[5]) + np.linalg.norm(p[2] - p[4])) / (2.0 * width)


def eye_aspect_ratio(points: npt.NDArray[np.floating[Any]]) -> float:
    """Mean eye aspect ratio of both eyes (``RIGHT_EYE``, ``LEFT_EYE`` indices): lid gap over eye width.

    Scale and in-plane rotation invariant, so one person's value is comparable across frames, not across people (on
    refined points: about 0.2-0.4 for open eyes on LFW, under half of that with the eyes shut).
    """
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < NUM_LANDMARKS or p.shape[1] < 2:
        raise ValueError(f"eye_aspect_ratio needs ({NUM_LANDMARKS}, 2 or 3) mesh points, got shape {p.shape}")
    return (_eye_ratio(p, RIGHT_EYE) + _eye_ratio(p, LEFT_EYE)) / 2.0


def head_yaw_deg(points: npt.NDArray[np.floating[Any]]) -> float:
    """Head yaw in degrees from the mesh's 3-D face outline: positive = the subject turned to their own left.

    For a camera facing the subject that is towards the image's right: the nose moves right and the subject's left
    cheek (454) moves away from the camera (its z grows). The yaw is the angle of the cheek-to-cheek vector
    (234 -> 454) in the x-z plane, with the in-plane roll of the eye line removed first; the same sign as
    ``kiosk.recognition.quality.head_pose`` (on 200 LFW faces the two correlate at 0.94, this one ~0.7x as large).
    """
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < NUM_LANDMARKS or p.shape[1] < 3:
        raise ValueError(f"head_yaw_deg needs ({NUM_LANDMARKS}, 3) mesh points, got shape {p.shape}")
    d = p[LEFT_CHEEK] - p[RIGHT_CHEEK]
    eyes = p[LEFT_EYE[3]] - p[RIGHT_EYE[0]]  # outer corners: the in-plane roll of the eye line
    roll = math.atan2(eyes[1], eyes[0])
    dx = d[0] * math.cos(roll) + d[1] * math.sin(roll)
    return math.degrees(math.atan2(d[2], dx))


def _square(centre: npt.ArrayLike, side: float, angle: float, size: int) -> Affine:
    """Crop -> image affine of a ``side``-pixel square centred on ``centre``, its x axis at ``angle`` radians."""
    c, s = math.cos(angle), math.sin(angle)
    k = side / size
    m = np.array([[k * c, -k * s, 0.0], [k * s, k * c, 0.0]])
    m[:, 2] = np.asarray(centre, dtype=np.float64) - m[:, :2] @ [size / 2.0, size / 2.0]
    return m


def _warp(image: Image, to_image: Affine, size: int) -> Image:
    """The ``size`` x ``size`` crop that ``to_image`` places on ``image`` (bilinear, edges replicated).

    cv2 samples at pixel centres: the continuous mapping is shifted by half a pixel on both sides.
    """
    a = np.vstack([to_image, [0.0, 0.0, 1.0]])
    half = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    to_image_px = (np.linalg.inv(half) @ a @ half)[:2]
    crop = cv2.warpAffine(
        image,
        to_image_px,
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return np.asarray(crop, dtype=np.uint8)


def _to_image(points: npt.NDArray[np.float64], to_image: Affine) -> npt.NDArray[np.float64]:
    out = np.empty_like(points)
    out[:, :2] = points[:, :2] @ to_image[:, :2].T + to_image[:, 2]
    out[:, 2] = points[:, 2] * math.hypot(to_image[0, 0], to_image[1, 0])
    return out


def _check_image(image: Image) -> None:
    shape = getattr(image, "shape", None)
    if shape is None or len(shape) != 3 or shape[2] != 3 or image.dtype != np.uint8 or 0 in shape:
        raise InputError(f"face mesh input must be a non-empty HxWx3 uint8 BGR image, got shape {shape}")


class _Model:
    """Manifest-driven preprocessing and output lookup shared by the mesh and the iris model."""

    def __init__(self, spec: ModelSpec, runner: Runner, task: str) -> None:
        if spec.task != task:
            raise ModelError(f"model '{spec.id}' is a {spec.task} model, not a {task} model")
        size = spec.input.size
        if size is None or size[0] != size[1]:
            raise ModelError(f"model '{spec.id}': needs a square input size in the manifest, got {size}")
        self.spec = spec
        self.runner = runner
        self.size = size[0]
        self._input = spec.input.name or runner.input_names[0]
        self._mean = np.asarray(spec.input.mean, dtype=np.float32)
        self._inv_std = 1.0 / np.asarray(spec.input.std, dtype=np.float32)
        self._names: dict[str, str] = {str(k): str(v) for k, v in dict(spec.params.get("outputs") or {}).items()}

    def run(self, crop: Image) -> dict[str, np.ndarray]:
        """Run one BGR crop (batch of 1: a converted model may have a fixed batch); outputs by name, flattened."""
        x = crop.astype(np.float32)
        if self.spec.input.color == "rgb":
            x = x[..., ::-1]
        x = (x - self._mean) * self._inv_std
        if self.spec.input.layout == "nchw":
            x = x.transpose(2, 0, 1)
        outs = self.runner.run({self._input: np.ascontiguousarray(x[None], dtype=np.float32)})
        return {
            n: np.asarray(o, dtype=np.float64).reshape(-1) for n, o in zip(self.runner.output_names, outs, strict=True)
        }

    def output(self, outs: dict[str, np.ndarray], key: str, values: int) -> np.ndarray:
        """The output the manifest names for ``key`` (``params.outputs``), else the only one with ``values`` values."""
        name = self._names.get(key)
        got = outs.get(name) if name is not None else None
        if got is None:
            sized = [o for o in outs.values() if o.size == values]
            got = sized[0] if len(sized) == 1 else None
        if got is None or got.size != values:
            have = {n: o.size for n, o in outs.items()}
            raise ModelError(f"model '{self.spec.id}': no {values}-value {key} output (outputs and sizes: {have})")
        return got


class EyeContours:
    """MediaPipe's iris model on both eyes of a mesh: 16-point eye contours that follow the eyelids."""

    def __init__(self, spec: ModelSpec, runner: Runner, *, roi_scale: float | None = None) -> None:
        self._model = _Model(spec, runner, "landmarks")
        self.spec = spec
        self.roi_scale = float(
            roi_scale if roi_scale is not None else spec.params.get("roi_scale", DEFAULT_EYE_ROI_SCALE)
        )

    def _eye(self, points: npt.NDArray[np.float64], a: int, b: int, mirror: bool) -> Affine | None:
        pa, pb = points[a, :2], points[b, :2]
        d = pb - pa
        # MediaPipe: the square around the two corners' bounding box, side = its longer side x roi_scale.
        side = self.roi_scale * max(abs(float(d[0])), abs(float(d[1])))
        if not (np.isfinite(side) and side > 1.0):
            return None
        m = _square((pa + pb) / 2.0, side, math.atan2(d[1], d[0]), self._model.size)
        if mirror:  # crop x -> size - x
            flip = np.array([[-1.0, 0.0, self._model.size], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
            m = m @ flip
        return m

    def refine(self, image: Image, points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64] | None:
        """``points`` with both eyes' 16 contour points replaced (x, y; z kept), or None for degenerate eyes."""
        eyes = [
            (self._eye(points, 33, 133, mirror=False), RIGHT_EYE_CONTOUR),
            (self._eye(points, 362, 263, mirror=True), LEFT_EYE_CONTOUR),
        ]
        out = points.copy()
        for m, idx in eyes:
            if m is None:
                return None
            outs = self._model.run(_warp(image, m, self._model.size))
            contour = self._model.output(outs, "contour", NUM_EYE_CONTOUR * 3).reshape(NUM_EYE_CONTOUR, 3)
            out[list(idx), :2] = _to_image(contour[: len(idx)], m)[:, :2]
        return out


def _roi_table(spec: ModelSpec) -> dict[str, Roi]:
    raw = spec.params.get("roi") or {}
    if not isinstance(raw, dict):
        raise ModelError(f"model '{spec.id}': params.roi must map landmark schemes to {{scale, shift_y}}")
    table = {}
    for scheme, value in raw.items():
        try:
            table[str(scheme)] = Roi(scale=float(value["scale"]), shift_y=float(value.get("shift_y", 0.0)))
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise ModelError(f"model '{spec.id}': params.roi.{scheme} must be {{scale, shift_y}}: {exc}") from exc
    return table


class FaceMesh:
    """Runs the face mesh (and, when given, the iris model) through injected runners on a face a detector found."""

    def __init__(
        self,
        spec: ModelSpec,
        runner: Runner,
        *,
        eyes: EyeContours | None = None,
        roi: Mapping[str, Roi] | None = None,
        presence_threshold: float | None = None,
        reroll_deg: float = 8.0,
    ) -> None:
        self._model = _Model(spec, runner, "landmarks")
        count = int(spec.params.get("landmarks", NUM_LANDMARKS))
        if count != NUM_LANDMARKS:
            raise ModelError(f"model '{spec.id}': {count} landmarks; this code knows the {NUM_LANDMARKS}-point mesh")
        self.spec = spec
        self.runner = runner
        self.eyes = eyes
        self.size = self._model.size
        self.roi = dict(roi) if roi is not None else _roi_table(spec)
        self.reroll_deg = float(reroll_deg)
        self.presence_threshold = float(
            presence_threshold
            if presence_threshold is not None
            else spec.params.get("presence_threshold", DEFAULT_PRESENCE_THRESHOLD)
        )

    def face_roi(self, face: Face, angle: float | None = None) -> Affine | None:
        """Crop -> image affine of the mesh's crop for ``face``; None when its box or eyes are degenerate.

        ``angle`` (radians) overrides the roll taken from the detector's eyes.
        """
        roi = self.roi.get(face.scheme)
        if roi is None:
            raise ModelError(
                f"model '{self.spec.id}': no crop calibration (params.roi) for landmark scheme {face.scheme!r}"
                f" (has: {sorted(self.roi) or 'none'})"
            )
        box = face.box.astype(np.float64)
        lm = face.landmarks.astype(np.float64)
        side = roi.scale * max(float(box[2] - box[0]), float(box[3] - box[1]))
        d = lm[1] - lm[0]  # subject's right eye -> left eye
        if not (np.isfinite(side) and side > 1.0 and np.all(np.isfinite(d))) or float(np.hypot(d[0], d[1])) < 1e-6:
            return None
        if angle is None:
            angle = math.atan2(d[1], d[0])
        # The shift runs down the face (perpendicular to the eye line), so it follows a tilted head.
        down = np.array([-math.sin(angle), math.cos(angle)])
        centre = (box[:2] + box[2:]) / 2.0 + roi.shift_y * side * down
        return _square(centre, side, angle, self.size)

    def crop(self, image: Image, face: Face) -> Image | None:
        """The mesh model's view of ``face`` (BGR), for inspection; None for a degenerate face."""
        _check_image(image)
        m = self.face_roi(face)
        return None if m is None else _warp(image, m, self.size)

    def _run(self, image: Image, to_image: Affine) -> tuple[npt.NDArray[np.float64], float]:
        outs = self._model.run(_warp(image, to_image, self.size))
        raw = self._model.output(outs, "landmarks", NUM_LANDMARKS * 3).reshape(NUM_LANDMARKS, 3)
        logit = float(np.clip(self._model.output(outs, "presence", 1)[0], -100.0, 100.0))
        return _to_image(raw, to_image), 1.0 / (1.0 + math.exp(-logit))

    def landmarks(self, image: Image, face: Face) -> MeshResult | None:
        """The mesh of ``face`` in ``image`` pixels, or None when its box or eyes are degenerate.

        A result is returned whatever its ``presence``; callers treat ``presence < presence_threshold`` as "no face
        in this frame". With an iris model the eye contours are refined (``refined``), except on a frame without a
        face, where the iris model would only read noise.
        """
        _check_image(image)
        m = self.face_roi(face)
        if m is None:
            return None
        points, presence = self._run(image, m)
        # YuNet's eye landmarks hardly follow a rolled head (a 25° roll moved them by 1°), and the mesh is less
        # accurate on a rolled crop: when its own eye line disagrees, run it again on a crop rolled to match.
        d = points[LEFT_EYE[3], :2] - points[RIGHT_EYE[0], :2]
        roll = math.atan2(d[1], d[0])
        drift = (roll - math.atan2(m[1, 0], m[0, 0]) + math.pi) % (2.0 * math.pi) - math.pi
        if presence >= self.presence_threshold and abs(drift) > math.radians(self.reroll_deg):
            m2 = self.face_roi(face, angle=roll)
            if m2 is not None:
                points, presence = self._run(image, m2)
        refined = False
        if self.eyes is not None and presence >= self.presence_threshold:
            better = self.eyes.refine(image, points)
            if better is not None:
                points, refined = better, True
        return MeshResult(points=points.astype(np.float32), presence=presence, refined=refined)


def load_face_mesh(manifest: Manifest, model_id: str, options: RuntimeOptions | None = None) -> FaceMesh:
    """The mesh ``model_id`` with the iris model its ``params.eye_model`` names (if any), hash-checked and loaded."""
    spec = manifest.get(model_id, task="landmarks")
    eyes = None
    eye_id = spec.params.get("eye_model")
    if eye_id:
        eye_spec = manifest.get(str(eye_id), task="landmarks")
        eyes = EyeContours(eye_spec, load_runner(eye_spec, options))
    return FaceMesh(spec, load_runner(spec, options), eyes=eyes)
