"""MTCNN detector (kiosk/recognition/detect/mtcnn.py, numpy/OpenCV + three ONNX nets) on real LFW photos.

The reference is facenet-pytorch 2.6's ``detect_face`` transliterated below with the torch nets from
tools/models/convert/mtcnn.py, torch's own ``interpolate(mode="area")`` and a torchvision-free NMS with torchvision's
rule (facenet-pytorch itself needs torchvision and torch<2.3, so it is never imported). The kiosk's boxes and
landmarks must match it to 1e-3 px.
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pytest

from kiosk.errors import InputError, ModelError
from kiosk.models.backends import load_runner
from kiosk.models.manifest import ModelSpec, load_manifest
from kiosk.recognition.detect import Detector, build_detector
from kiosk.recognition.detect.mtcnn import MTCNNDetector, area_resize, integral_image, nms_min, pyramid_scales
from kiosk.types import Face, Image

if TYPE_CHECKING:
    from torch import Tensor, nn

torch = pytest.importorskip("torch", reason="the reference pipeline and the export need the tools extra (torch)")
F = torch.nn.functional

PX_TOL = 1e-3
REFERENCE_STEP = 2400  # every 2400th row of lfw/labels.csv: 4 images for the exact comparison
YUNET_STEP = 365  # 27 images for the YuNet sanity check


# --- fixtures -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mtcnn_spec(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    """The registered model from models/ when it is there, else a fresh export into a temporary folder."""
    with contextlib.suppress(Exception):
        spec = load_manifest().get("mtcnn", task="detect")
        spec.verify()
        return spec
    from tools.models.convert import mtcnn

    out = tmp_path_factory.mktemp("mtcnn_models")
    with contextlib.redirect_stdout(io.StringIO()):
        assert mtcnn.main(["--out", str(out)]) == 0
    return load_manifest(out / "manifest.yaml").get("mtcnn", task="detect")


def make_detector(spec: ModelSpec, **kwargs: float) -> MTCNNDetector:
    parts = {name: load_runner(part) for name, part in spec.parts.items()}
    return MTCNNDetector(spec, load_runner(spec), parts=parts, **kwargs)


@pytest.fixture(scope="module")
def detector(mtcnn_spec: ModelSpec) -> MTCNNDetector:
    return make_detector(mtcnn_spec)


@pytest.fixture(scope="module")
def yunet() -> Iterator[Detector]:
    spec = load_manifest().get("yunet", task="detect")
    yield build_detector(spec, load_runner(spec))


def lfw_images(faces_dir: Path, step: int) -> list[tuple[str, np.ndarray]]:
    with (faces_dir / "lfw" / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))[::step]
    out = []
    for row in rows:
        image = cv2.imread(str(faces_dir / "lfw" / row["path"]), cv2.IMREAD_COLOR)
        assert image is not None, row["path"]
        out.append((row["path"], image))
    return out


def resize(image: Image, size: tuple[int, int], interpolation: int = cv2.INTER_LINEAR) -> Image:
    return np.asarray(cv2.resize(image, size, interpolation=interpolation), dtype=np.uint8)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


# --- the reference: facenet-pytorch's detect_face, one image, in torch -------------------------------------------


def _nms(boxes: Tensor, scores: Tensor, thr: float) -> Tensor:
    """torchvision's CPU ``nms``: stable descending order, float IoU without +1, drop when IoU > thr."""
    order = torch.sort(scores, stable=True, descending=True)[1]
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    suppressed = torch.zeros(len(scores), dtype=torch.bool)
    keep = []
    for k in range(len(order)):
        i = int(order[k])
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[k + 1 :]
        iw = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest])).clamp(min=0)
        ih = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest])).clamp(min=0)
        inter = iw * ih
        suppressed[rest[inter / (areas[i] + areas[rest] - inter) > thr]] = True
    kept: Tensor = torch.as_tensor(keep, dtype=torch.long)
    return kept


def _nms_min(boxes: np.ndarray, scores: np.ndarray, thr: float) -> np.ndarray:
    """facenet-pytorch's ``nms_numpy(..., 'Min')`` as written there."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)
    pick = []
    while order.size > 0:
        i = order[-1]
        pick.append(i)
        idx = order[:-1]
        w = np.maximum(0.0, np.minimum(x2[i], x2[idx]) - np.maximum(x1[i], x1[idx]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[idx]) - np.maximum(y1[i], y1[idx]) + 1)
        order = order[np.where(w * h / np.minimum(area[i], area[idx]) <= thr)]
    return np.asarray(pick, dtype=np.int64)


def _rerec(b: Tensor) -> Tensor:
    h = b[:, 3] - b[:, 1]
    w = b[:, 2] - b[:, 0]
    side = torch.max(w, h)
    b[:, 0] = b[:, 0] + w * 0.5 - side * 0.5
    b[:, 1] = b[:, 1] + h * 0.5 - side * 0.5
    b[:, 2:4] = b[:, :2] + side.repeat(2, 1).permute(1, 0)
    return b


def _bbreg(b: Tensor, reg: Tensor) -> Tensor:
    w = b[:, 2] - b[:, 0] + 1
    h = b[:, 3] - b[:, 1] + 1
    b[:, :4] = torch.stack(
        [b[:, 0] + reg[:, 0] * w, b[:, 1] + reg[:, 1] * h, b[:, 2] + reg[:, 2] * w, b[:, 3] + reg[:, 3] * h]
    ).permute(1, 0)
    return b


def _crops(img: Tensor, boxes: Tensor, size: int) -> tuple[Tensor, list[int]]:
    h, w = img.shape[2:]
    b = boxes.trunc().int().numpy()
    x, y = np.maximum(b[:, 0], 1), np.maximum(b[:, 1], 1)
    ex, ey = np.minimum(b[:, 2], w), np.minimum(b[:, 3], h)
    kept = [k for k in range(len(b)) if ey[k] > y[k] - 1 and ex[k] > x[k] - 1]
    data = [F.interpolate(img[:, :, y[k] - 1 : ey[k], x[k] - 1 : ex[k]], size=(size, size), mode="area") for k in kept]
    return (torch.cat(data) - 127.5) * 0.0078125, kept


def reference_detect(
    nets: dict[str, nn.Module], bgr: np.ndarray, minsize: float = 20.0
) -> tuple[np.ndarray, np.ndarray]:
    """facenet-pytorch 2.6 ``detect_face`` (thresholds [0.6, 0.7, 0.7], factor 0.709): (N, 5) boxes+score, (N, 5, 2)."""
    img = torch.as_tensor(np.ascontiguousarray(bgr[..., ::-1])).permute(2, 0, 1).unsqueeze(0).float()
    h, w = img.shape[2:]
    with torch.no_grad():
        per_scale = []
        for scale in pyramid_scales(h, w, minsize, 0.709):
            data = (F.interpolate(img, size=(int(h * scale + 1), int(w * scale + 1)), mode="area") - 127.5) * 0.0078125
            reg, probs = nets["pnet"](data)
            prob = probs[:, 1]
            mask = prob >= 0.6
            inds = mask.nonzero()
            score = prob[mask]
            r = reg.permute(1, 0, 2, 3)[:, mask].permute(1, 0)
            bb = inds[:, 1:].type(r.dtype).flip(1)
            q1 = ((2 * bb + 1) / scale).floor()
            q2 = ((2 * bb + 12) / scale).floor()
            boxes = torch.cat([q1, q2, score.unsqueeze(1), r], dim=1)
            per_scale.append(boxes[_nms(boxes[:, :4], boxes[:, 4], 0.5)])
        boxes = torch.cat(per_scale)
        boxes = boxes[_nms(boxes[:, :4], boxes[:, 4], 0.7)]
        regw, regh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        q = [boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh]
        q += [boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh]
        boxes = _rerec(torch.stack([*q, boxes[:, 4]]).permute(1, 0))
        empty = (np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32))
        if len(boxes) == 0:
            return empty
        data, kept = _crops(img, boxes, 24)
        boxes = boxes[kept]
        reg, prob = nets["rnet"](data)
        ok = prob[:, 1] > 0.7
        boxes, reg = torch.cat([boxes[ok, :4], prob[ok, 1:2]], dim=1), reg[ok]
        pick = _nms(boxes[:, :4], boxes[:, 4], 0.7)
        boxes = _rerec(_bbreg(boxes[pick], reg[pick]))
        if len(boxes) == 0:
            return empty
        data, kept = _crops(img, boxes, 48)
        boxes = boxes[kept]
        reg, marks, prob = nets["onet"](data)
        ok = prob[:, 1] > 0.7
        boxes, reg, marks = torch.cat([boxes[ok, :4], prob[ok, 1:2]], dim=1), reg[ok], marks[ok].permute(1, 0)
        w_i = boxes[:, 2] - boxes[:, 0] + 1
        h_i = boxes[:, 3] - boxes[:, 1] + 1
        px = w_i.repeat(5, 1) * marks[:5, :] + boxes[:, 0].repeat(5, 1) - 1
        py = h_i.repeat(5, 1) * marks[5:10, :] + boxes[:, 1].repeat(5, 1) - 1
        points = torch.stack((px, py)).permute(2, 1, 0)
        boxes = _bbreg(boxes, reg)
        final = _nms_min(boxes[:, :4].numpy(), boxes[:, 4].numpy(), 0.7)
        return boxes[final].numpy(), points[final].numpy()


@pytest.fixture(scope="module")
def torch_nets(mtcnn_spec: ModelSpec) -> dict[str, nn.Module]:
    from tools.models.convert.mtcnn import load_net

    return {name: load_net(name) for name in ("pnet", "rnet", "onet")}


def assert_matches_reference(faces: list[Face], ref: tuple[np.ndarray, np.ndarray], what: str) -> None:
    boxes, points = ref
    assert len(faces) == len(boxes), what
    order = np.argsort(-boxes[:, 4], kind="stable")
    for face, k in zip(faces, order, strict=True):
        assert np.abs(face.box - boxes[k, :4]).max() <= PX_TOL, what
        assert np.abs(face.landmarks - points[k]).max() <= PX_TOL, what
        assert abs(face.score - boxes[k, 4]) <= 1e-5, what


def two_face_canvas(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    canvas = np.full((300, 560, 3), 90, np.uint8)
    canvas[20 : 20 + a.shape[0], 10 : 10 + a.shape[1]] = a
    canvas[30 : 30 + b.shape[0], 290 : 290 + b.shape[1]] = b
    return canvas


def single_face_images(detector: MTCNNDetector, faces_dir: Path, n: int) -> list[np.ndarray]:
    out = [img for _, img in lfw_images(faces_dir, 997) if len(detector.detect(img)) == 1]
    assert len(out) >= n
    return out[:n]


# --- pure functions ------------------------------------------------------------------------------------------------


def test_area_resize_is_torch_area_interpolation() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    integral = integral_image(image)
    src = torch.as_tensor(image).permute(2, 0, 1).unsqueeze(0).float()
    for (y, x, h, w), (oh, ow) in [((0, 0, 37, 53), (26, 38)), ((3, 5, 10, 7), (24, 24)), ((0, 0, 37, 53), (48, 48))]:
        ref = F.interpolate(src[:, :, y : y + h, x : x + w], size=(oh, ow), mode="area")[0].permute(1, 2, 0).numpy()
        got = area_resize(integral, np.array([y]), np.array([x]), np.array([h]), np.array([w]), oh, ow)[0]
        assert np.abs(got - ref).max() < 1e-4
    # several crops at once (the R-net/O-net batch) equal one-at-a-time
    ys, xs, hs, ws = np.array([0, 3, 20]), np.array([0, 5, 30]), np.array([37, 10, 17]), np.array([53, 7, 23])
    batch = area_resize(integral, ys, xs, hs, ws, 24, 24)
    for k in range(3):
        one = area_resize(integral, ys[k : k + 1], xs[k : k + 1], hs[k : k + 1], ws[k : k + 1], 24, 24)
        assert np.array_equal(batch[k], one[0])


def test_pyramid_and_min_nms() -> None:
    assert pyramid_scales(250, 250, 20.0, 0.709)[0] == 0.6
    assert len(pyramid_scales(250, 250, 20.0, 0.709)) == 8
    assert pyramid_scales(19, 400, 20.0, 0.709) == []  # shorter side * 12 / min_face_size < 12: nothing to search
    boxes = np.array([[0, 0, 99, 99], [10, 10, 49, 49], [200, 0, 260, 60]], np.float32)
    assert nms_min(boxes, np.array([0.9, 0.95, 0.8], np.float32), 0.7).tolist() == [1, 2]  # the small box wins
    assert nms_min(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.7).tolist() == []


# --- real models ---------------------------------------------------------------------------------------------------


def test_matches_facenet_pytorch_reference_on_lfw(
    detector: MTCNNDetector, torch_nets: dict[str, nn.Module], faces_dir: Path
) -> None:
    """Boxes, landmarks and scores equal the reference's to 1e-3 px on LFW images and a two-face 560x300 canvas.

    The canvas is longer than input_size (320), so the kiosk searches faces >= 20 * 560 / 320 = 35 px: the reference
    runs with that min_face_size.
    """
    images = lfw_images(faces_dir, REFERENCE_STEP)
    for path, image in images:
        assert max(image.shape[:2]) <= detector.input_size
        assert_matches_reference(detector.detect(image), reference_detect(torch_nets, image), path)
    two = two_face_canvas(images[0][1], images[1][1])
    ref = reference_detect(torch_nets, two, 20.0 * max(two.shape) / detector.input_size)
    assert len(ref[0]) == 2
    assert_matches_reference(detector.detect(two), ref, "two faces")


def test_finds_lfw_faces_with_yunets_landmark_order(detector: MTCNNDetector, yunet: Detector, faces_dir: Path) -> None:
    """On 27 LFW images: the central face is found, overlaps YuNet's, and its 5 points are YuNet's 5 points."""
    found = 0
    for path, image in lfw_images(faces_dir, YUNET_STEP):
        faces = detector.detect(image)
        assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)
        ref = yunet.detect(image)
        if not faces or not ref:
            continue
        centre = np.array([125.0, 125.0])
        ours = min(faces, key=lambda f: float(np.linalg.norm(np.array(f.center) - centre)))
        theirs = min(ref, key=lambda f: float(np.linalg.norm(np.array(f.center) - centre)))
        assert ours.scheme == "5pt" and ours.landmarks.shape == (5, 2)
        lm = ours.landmarks
        assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0], f"{path}: subject's right eye/mouth corner on image left"
        assert lm[:2, 1].max() < lm[2, 1] < lm[3:, 1].min(), f"{path}: eyes above nose above mouth"
        assert iou(ours.box, theirs.box) > 0.5, path
        inter_ocular = float(np.linalg.norm(theirs.landmarks[1] - theirs.landmarks[0]))
        err = np.linalg.norm(lm - theirs.landmarks, axis=1) / inter_ocular
        assert err.max() < 0.5, f"{path}: landmark errors {err.round(2)} of the inter-ocular distance"
        found += 1
    assert found >= 26


def test_mirrored_face_keeps_the_convention(detector: MTCNNDetector, faces_dir: Path) -> None:
    image = lfw_images(faces_dir, 5000)[0][1]
    for img in (image, np.ascontiguousarray(image[:, ::-1])):
        faces = detector.detect(img)
        assert len(faces) >= 1
        lm = faces[0].landmarks
        assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]


def test_two_faces_on_one_canvas(detector: MTCNNDetector, faces_dir: Path) -> None:
    a, b = single_face_images(detector, faces_dir, 2)
    faces = detector.detect(two_face_canvas(a, b))
    assert len(faces) == 2
    left, right = sorted(faces, key=lambda f: f.center[0])
    expect_left = detector.detect(a)[0].box + np.array([10, 20, 10, 20], np.float32)
    expect_right = detector.detect(b)[0].box + np.array([290, 30, 290, 30], np.float32)
    assert iou(left.box, expect_left) > 0.8 and iou(right.box, expect_right) > 0.8


@pytest.mark.parametrize("shape", [(1, 1, 3), (5, 7, 3), (12, 12, 3), (11, 300, 3), (480, 640, 3), (3000, 4000, 3)])
def test_blank_and_tiny_images_give_no_face(detector: MTCNNDetector, shape: tuple[int, ...]) -> None:
    assert detector.detect(np.zeros(shape, np.uint8)) == []
    assert detector.detect(np.full(shape, 128, np.uint8)) == []


def test_huge_and_small_frames(detector: MTCNNDetector, faces_dir: Path) -> None:
    face = single_face_images(detector, faces_dir, 1)[0]
    box = detector.detect(face)[0].box
    # a 4000x3000 photo (downscaled to 4 * input_size first) with the face 8x larger: found, in original pixels
    huge = np.full((3000, 4000, 3), 100, np.uint8)
    huge[500:2500, 1000:3000] = resize(face, (2000, 2000))
    faces = detector.detect(huge)
    assert len(faces) == 1 and iou(faces[0].box, box * 8 + np.array([1000, 500, 1000, 500])) > 0.8
    # a thumbnail, face ~30 px
    small = resize(face, (80, 80), cv2.INTER_AREA)
    faces = detector.detect(small)
    assert len(faces) == 1 and iou(faces[0].box, box * 80 / 250) > 0.6


def test_input_size_sets_the_smallest_face(mtcnn_spec: ModelSpec, faces_dir: Path) -> None:
    image = lfw_images(faces_dir, 5000)[0][1]  # 250x250, face ~110 px
    canvas = np.full((1000, 1000, 3), 100, np.uint8)
    canvas[375:625, 375:625] = image
    assert len(make_detector(mtcnn_spec, input_size=1000).detect(canvas)) >= 1  # looks for faces >= 20 px
    assert make_detector(mtcnn_spec, input_size=64).detect(canvas) == []  # faces >= 312 px only


def test_rejects_invalid_input_and_missing_parts(detector: MTCNNDetector, mtcnn_spec: ModelSpec) -> None:
    for bad in (np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10, 3), np.float32)):
        with pytest.raises(InputError, match="HxWx3 uint8"):
            detector.detect(bad)
    runner = load_runner(mtcnn_spec)
    with pytest.raises(ModelError, match="onet"):
        MTCNNDetector(mtcnn_spec, runner, parts={"rnet": runner})
    with pytest.raises(ModelError, match="parts"):
        MTCNNDetector(mtcnn_spec, runner)
    with pytest.raises(ModelError, match=r"outputs \['landmarks'\] missing"):
        MTCNNDetector(mtcnn_spec, runner, parts={"rnet": runner, "onet": load_runner(mtcnn_spec.parts["rnet"])})
    tuned = make_detector(mtcnn_spec, score_threshold=0.95, nms_iou=0.5)
    assert (tuned.score_threshold, tuned.nms_iou) == (0.95, 0.5)


def test_registered_in_the_detector_table(mtcnn_spec: ModelSpec) -> None:
    """``family: mtcnn`` resolves through kiosk.recognition.detect.DETECTORS, with the R-net and O-net runners as
    parts."""
    parts = {name: load_runner(part) for name, part in mtcnn_spec.parts.items()}
    det = build_detector(mtcnn_spec, load_runner(mtcnn_spec), score_threshold=0.5, parts=parts)
    assert isinstance(det, MTCNNDetector) and det.score_threshold == 0.5 and det.nms_iou == 0.7
