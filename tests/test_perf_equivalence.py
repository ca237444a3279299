"""Speed-ups that must not change results: SFace's PRelu decomposition (same embeddings on real faces) and the
matcher's per-person reduction (same decisions as the straightforward np.maximum.at + full sort it replaced)."""

from __future__ import annotations

import importlib.metadata as md
import zlib
from pathlib import Path

import numpy as np
import pytest

from kiosk.imageio import read_image
from kiosk.models.backends import RuntimeOptions, load_runner
from kiosk.models.manifest import ModelSpec, load_manifest
from kiosk.recognition.embed import Embedder
from kiosk.recognition.match import Matcher, MatchResult
from kiosk.recognition.pipeline import Pipeline

MAX_ABS_DIFF = 1e-4  # raw (unnormalised) SFace output, values up to ~2
MIN_COSINE = 0.99999


def _run(path: Path, batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    return np.concatenate([np.asarray(session.run(None, {"data": batch[i : i + 1]})[0]) for i in range(len(batch))])


def _op_types(path: Path) -> list[str]:
    onnx = pytest.importorskip("onnx", reason="the model tools need onnx (the build extra)")
    return [n.op_type for n in onnx.load(str(path)).graph.node]


@pytest.mark.slow
def test_decomposed_prelu_sface_gives_the_same_embeddings_on_real_faces(
    tmp_path: Path,
    pipeline: Pipeline,
    faces_dir: Path,
) -> None:
    from tools.models.build import RECIPES, fold_dequantize

    recipe = next(r for r in RECIPES if r["id"] == "sface")
    try:
        dist = md.distribution(recipe["package"])
    except md.PackageNotFoundError:
        pytest.skip(f"{recipe['package']} is not installed (make setup installs it): cannot rebuild the PRelu graph")
    plain = tmp_path / "sface_prelu.onnx"
    folded, decomposed = fold_dequantize(Path(str(dist.locate_file(recipe["source"]))), plain, recipe["dynamic_dims"])
    assert folded > 0 and decomposed == 0
    shipped: ModelSpec = load_manifest().get("sface")
    assert _op_types(plain).count("PRelu") == 27
    assert "PRelu" not in _op_types(shipped.path), "the shipped SFace is built with its PRelu nodes decomposed"

    paths = sorted((faces_dir / "lfw" / "images").glob("B*/*_0001.jpg"))[:24]
    crops = [r.aligned for p in paths for r in pipeline.analyze(read_image(p))[:1]]
    assert len(crops) >= 16
    batch = pipeline.embedder.preprocess(crops)
    ref, got = _run(plain, batch), _run(shipped.path, batch)
    assert ref.shape == got.shape == (len(crops), 128)
    assert float(np.abs(got - ref).max()) < MAX_ABS_DIFF
    cos = np.sum(ref * got, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    assert float(cos.min()) > MIN_COSINE
    # And through the kiosk's own runner: batched embedding equals one face at a time.
    embedder = Embedder(shipped, load_runner(shipped, RuntimeOptions()))
    one_by_one = np.concatenate([embedder.embed([c]) for c in crops[:4]])
    assert np.abs(embedder.embed(crops[:4]) - one_by_one).max() < 1e-5


def test_decompose_prelu_equals_prelu_and_leaves_other_slopes_alone() -> None:
    onnx = pytest.importorskip("onnx", reason="the model tools need onnx (the build extra)")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from tools.models.build import decompose_prelu, recompose_prelu

    rng = np.random.default_rng(3)
    channels = 8
    slope = rng.uniform(-0.5, 1.5, (channels, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("PRelu", ["x", "slope"], ["y"], name="p0"),
            helper.make_node("PRelu", ["y", "scalar"], ["z"], name="p1"),  # one slope for every channel: kept
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", channels, 5, 7])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", channels, 5, 7])],
        [numpy_helper.from_array(slope, "slope"), numpy_helper.from_array(np.array([0.25], np.float32), "scalar")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert decompose_prelu(model) == 1
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu", "Conv", "Add", "PRelu"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((2, channels, 5, 7)).astype(np.float32) * 10
    y = np.where(x >= 0, x, slope * x)
    want = np.where(y >= 0, y, np.float32(0.25) * y)
    got = session.run(None, {"x": x})[0]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    # And back (for the TFLite and int8 tools, which want the PRelu operator): the same graph and values.
    assert recompose_prelu(model) == 1
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["PRelu", "PRelu"]
    back = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.abs(back.run(None, {"x": x})[0] - want).max() <= 1e-5 * np.abs(want).max()


def _reference_match(m: Matcher, probe: np.ndarray) -> tuple[int | None, float, str | None, float | None, bool]:
    """The matcher as it was: one np.maximum.at over every row, then a full sort of the people."""
    people, row_person = np.unique(m.person_ids, return_inverse=True)
    sims = m.embeddings @ probe.astype(np.float32)
    best = np.full(len(people), -np.inf, dtype=np.float32)
    np.maximum.at(best, row_person, sims)
    order = np.argsort(-best)
    ids, scores = people[order], best[order]
    names = dict(zip(m.person_ids.tolist(), m.names, strict=True))
    ru = (names[int(ids[1])], float(scores[1])) if len(ids) > 1 else (None, None)
    accepted = scores[0] >= m.threshold and (ru[1] is None or scores[0] - ru[1] >= m.margin)
    return int(ids[0]), float(scores[0]), ru[0], ru[1], bool(accepted)


@pytest.mark.parametrize(
    "layout", ["one_each_sorted", "one_each_shuffled", "several_grouped", "several_shuffled", "single_person"]
)
def test_matcher_agrees_with_the_unoptimised_reduction(layout: str) -> None:
    rng = np.random.default_rng(zlib.crc32(layout.encode()))
    rows = 1 if layout == "single_person" else 3000
    if layout.startswith("one_each"):
        pids = np.arange(10, 10 + rows) * 7
    else:
        pids = np.sort(rng.integers(100, 100 + rows // 4, rows)) if rows > 1 else np.array([42])
    if layout.endswith("shuffled"):
        pids = rng.permutation(pids)
    emb = rng.standard_normal((rows, 128)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    matcher = Matcher(emb, pids, [f"person{p}" for p in pids], threshold=0.5, margin=0.05)
    seen_accepted = 0
    for k in range(60):
        # Probes near a random template (accepted or ambiguous) and random ones (below threshold).
        noise = rng.standard_normal(128).astype(np.float32) * (0.02 + 0.05 * (k % 5))
        probe = emb[rng.integers(rows)] + noise if k % 3 else rng.standard_normal(128).astype(np.float32)
        got: MatchResult = matcher.match(probe)
        pid, score, ru_name, ru_score, accepted = _reference_match(matcher, probe)
        assert got.score == pytest.approx(score, abs=1e-6)
        assert got.candidate == f"person{pid}"
        assert got.runner_up == ru_name
        assert (got.runner_up_score is None) == (ru_score is None)
        if ru_score is not None:
            assert got.runner_up_score == pytest.approx(ru_score, abs=1e-6)
        assert got.accepted == accepted and (got.person_id == pid if accepted else got.person_id is None)
        seen_accepted += got.accepted
        ids, scores = matcher.person_scores(probe)
        assert int(ids[0]) == pid and len(ids) == len(set(pids.tolist()))
        assert np.all(np.diff(scores) <= 0)
    assert seen_accepted > 0, "the probes must exercise the accept path too"
