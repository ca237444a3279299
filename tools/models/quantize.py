"""``python -m tools quantize MODEL_ID``: static int8 quantisation with calibration on real faces and an accuracy gate.

1. **Calibration faces**: real photos detected and aligned by the kiosk's own pipeline (the same detector, template
   and ``Embedder.preprocess`` that run at the door), from a folder, or by default from the LFW public images under
   ``$KIOSK_TEST_DATA/lfw`` — a deterministic sample of people who do *not* appear in the pairs file used by the gate.
2. **Quantisation**: onnxruntime's ``quant_pre_process`` (shape inference and graph optimisation: BatchNormalization
   folded into the convolutions), then ``quantize_static`` — QDQ, per-channel weights by default — keeping the named
   nodes and op types in fp32. Each recogniser family has a default recipe (``RECIPES``); options override it.
3. **The gate**: fp32 and int8 are evaluated on a pairs CSV with ``kiosk.lab.evaluate`` (same detector, alignment and
   preprocessing; embeddings cached by pipeline fingerprint exactly as ``kiosk eval`` does). When TAR at FAR 1e-3
   drops by more than ``--max-drop`` points the int8 model is refused: non-zero exit, nothing registered.
4. **Report**: file size, per-face latency (median of interleaved batch-1 runs of both models, onnxruntime, the
   kiosk's own runner), accuracy and TAR at FAR 1e-2 / 1e-3, as a table and JSON. On success the model is registered
   (``tools.models.registry.register``) with the fp32 entry's preprocessing, alignment and metric; its thresholds are
   measured with the all-pairs protocol when ``--labels`` is given, otherwise inherited from the fp32 entry (and the
   provenance says so).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from kiosk.config import Config, parse_config
from kiosk.errors import KioskError
from kiosk.imageio import read_image
from kiosk.lab.cache import EmbeddingCache, default_cache_path
from kiosk.lab.evaluate import EmbedFn, embed_images, evaluate_labels, evaluate_pairs, read_labels, read_pairs
from kiosk.lab.machine import cpu_name, has_vnni, read_cpuinfo
from kiosk.models.backends import Runner, RuntimeOptions, load_runner
from kiosk.models.manifest import ModelSpec, load_manifest, sha256_file
from kiosk.recognition.detect import select_faces
from kiosk.recognition.embed import Embedder
from kiosk.recognition.pipeline import Pipeline, runtime_options
from kiosk.stats import interleaved_ms, median, percentile
from kiosk.types import Image
from tools import ROOT
from tools.errors import ToolError, run_tool
from tools.models.build import recompose_prelu, set_nodes
from tools.models.registry import default_models_dir, read_manifest, register, tool_versions

F32 = npt.NDArray[np.float32]
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
SELECT = "central"  # as `kiosk eval` (LFW photos are centred on the labelled face)
GATE_FAR = "1e-3"
ACCEPT_FMR, LIKELY_FMR = "1e-5", "1e-3"  # the fp32 SFace entry's convention (tools/models/build.py)


class QuantizeError(ToolError):
    """A one-line, user-facing reason the tool stopped (exit 2)."""

    code = 2


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the int8 model, recorded verbatim in the manifest provenance."""

    format: str = "qdq"  # qdq | qoperator
    activation_type: str = "u8"  # u8 | s8
    weight_type: str = "s8"
    per_channel: bool = True
    # NOTE 7-bit weights, on by default: the int8 file is built once and run on whatever CPU the door has. On x86
    # without VNNI (AVX2, AVX-512 without VNNI) onnxruntime's U8S8 kernel multiplies with VPMADDUBSW, which adds two
    # u8 x s8 products into a saturating int16: 255 x 127 x 2 overflows it, 255 x 63 x 2 cannot. Measured on an AMD
    # EPYC (AVX2 only), onnxruntime 1.32.0, the same packages that gave a 0.985 mean fp32/int8 cosine on a VNNI Xeon:
    # 8-bit weights 0.933 (min 0.752), 7-bit 0.992 (min 0.987) over the test's 53 LFW faces. ARM and VNNI kernels
    # never saturate; there the 7th bit costs ~0.002 of cosine.
    reduce_range: bool = True
    method: str = "minmax"  # minmax | entropy | percentile
    exclude_nodes: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    fold_batchnorm: bool = True  # fold the embedding head's BatchNorms into its Gemm before quantising
    rewrite_prelu: bool = True  # PRelu -> Min/Mul/Add (same values; fast, and quantisable)
    calib_count: int = 300


# Default recipe per recogniser family (chosen by measurement, see docs/results/quantize-*.json and the report).
RECIPES: dict[str, Recipe] = {
    "arcface": Recipe(),
}


def test_data_dir() -> Path:
    """``$KIOSK_TEST_DATA``, else ``../shared/data/faces`` next to the checkout (as the tests find it)."""
    env = os.environ.get("KIOSK_TEST_DATA")
    return Path(env) if env else (ROOT / ".." / "shared" / "data" / "faces").resolve()


# ---------------------------------------------------------------------------------------------------- calibration


@dataclass
class Calibration:
    crops: list[Image]
    description: str
    files_sha256: str  # sha256 over the sorted sha256s of the files used: names the set, never its paths
    tried: int


def _hash_order(names: list[str]) -> list[str]:
    """A deterministic order that mixes people and folders (sorted by the sha256 of the name)."""
    return sorted(names, key=lambda s: hashlib.sha256(s.encode()).hexdigest())


def _collect(pipeline: Pipeline, cfg: Config, files: Iterator[Path] | list[Path], count: int) -> Calibration:
    crops: list[Image] = []
    hashes: list[str] = []
    tried = 0
    for path in files:
        if len(crops) >= count:
            break
        tried += 1
        try:
            image = read_image(path, max_pixels=cfg.enroll.max_image_pixels)
        except KioskError:
            continue
        faces = select_faces(pipeline.detect(image), SELECT, image.shape)
        if not faces:
            continue
        crops.append(pipeline.prepare(image, faces[:1])[0][0])
        hashes.append(sha256_file(path))
    digest = hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()
    return Calibration(crops, "", digest, tried)


def lfw_calibration(pipeline: Pipeline, cfg: Config, count: int, pairs_csv: Path | None) -> Calibration:
    """``count`` faces from LFW public: people not in ``pairs_csv``, in a fixed hash order."""
    lfw = test_data_dir() / "lfw"
    labels_csv = lfw / "labels.csv"
    if not labels_csv.is_file():
        raise QuantizeError(
            f"LFW calibration images not found ({labels_csv} missing): set KIOSK_TEST_DATA or pass --calibration DIR"
        )
    rows = read_labels(labels_csv)
    excluded: set[str] = set()
    if pairs_csv is not None and pairs_csv.is_file():
        in_pairs = {p for pair in read_pairs(pairs_csv) for p in (pair.path1, pair.path2)}
        excluded = {r.identity for r in rows if r.path in in_pairs}
    candidates = _hash_order([r.path for r in rows if r.identity not in excluded])
    calib = _collect(pipeline, cfg, (lfw / p for p in candidates), count)
    calib.description = (
        f"LFW public images of {len(candidates)} candidates from people not in "
        f"{pairs_csv.name if pairs_csv else 'the pairs file'} (sha256-of-path order)"
    )
    return calib


def folder_calibration(pipeline: Pipeline, cfg: Config, folder: Path, count: int) -> Calibration:
    """``count`` faces (the central one of each photo) from the images under ``folder``."""
    if not folder.is_dir():
        raise QuantizeError(f"calibration folder {folder} does not exist")
    files = {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES}
    if not files:
        raise QuantizeError(f"calibration folder {folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    calib = _collect(pipeline, cfg, [files[k] for k in _hash_order(list(files))], count)
    calib.description = f"a folder of {len(files)} images (sha256-of-path order)"
    return calib


# --------------------------------------------------------------------------------------------------- quantisation


class _Reader:
    """onnxruntime CalibrationDataReader over preprocessed batches."""

    def __init__(self, name: str, batches: list[F32]) -> None:
        self._feeds = iter([{name: b} for b in batches])

    def get_next(self) -> dict[str, F32] | None:
        return next(self._feeds, None)

    def rewind(self) -> None:  # pragma: no cover - not used by static MinMax/Entropy/Percentile calibration
        raise NotImplementedError


def _consumers(graph: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def fold_head_batchnorm(model: Any) -> list[str]:
    """Fold inference BatchNormalization layers into the adjacent Gemm of an embedding head, in place.

    The ArcFace/InsightFace output block is BN (4-D) → [Dropout] → Flatten → Gemm → BN (1-D). onnxruntime's optimiser
    folds BN only into a Conv, so quantisation would otherwise quantise the BN outputs separately (the 4-D one is the
    noisiest tensor of SFace's graph); folded, the head is one exact Gemm. Returns the names of the folded nodes.
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    folded: list[str] = []

    def arr(name: str) -> npt.NDArray[np.float64]:
        return numpy_helper.to_array(inits[name]).astype(np.float64)

    def affine(bn: Any) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None:
        if len(bn.input) != 5 or not all(i in inits for i in bn.input[1:]):
            return None
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (arr(i) for i in bn.input[1:])
        scale = gamma / np.sqrt(var + eps)
        return scale, beta - mean * scale

    def attr(node: Any, name: str, default: float) -> float:
        return next((float(a.f if a.type == a.FLOAT else a.i) for a in node.attribute if a.name == name), default)

    def gemm_weights(g: Any) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None:
        """(W as (out, in), bias) of a plain Gemm with constant weights, else None."""
        plain = attr(g, "alpha", 1.0) == 1.0 and attr(g, "beta", 1.0) == 1.0 and attr(g, "transA", 0) == 0
        has_bias = len(g.input) > 2 and bool(g.input[2])
        if not plain or g.input[1] not in inits or (has_bias and g.input[2] not in inits):
            return None
        w = arr(g.input[1]) if attr(g, "transB", 0) == 1 else arr(g.input[1]).T
        return w, arr(g.input[2]) if has_bias else np.zeros(w.shape[0])

    def store(g: Any, w: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> None:
        # new initializer names: the old ones may be shared with other nodes
        names = (f"{g.name}_weight_fold{len(folded)}", f"{g.name}_bias_fold{len(folded)}")
        value = w if attr(g, "transB", 0) == 1 else w.T
        for name, v in zip(names, (value, b), strict=True):
            graph.initializer.append(numpy_helper.from_array(v.astype(np.float32), name))
            inits[name] = graph.initializer[-1]
        while len(g.input) < 3:
            g.input.append("")
        g.input[1], g.input[2] = names

    # BN → Flatten(axis=1) → Gemm: scale the Gemm's input columns channel by channel
    for bn in [n for n in graph.node if n.op_type == "BatchNormalization"]:
        consumers = _consumers(graph)
        aff, nxt = affine(bn), consumers.get(bn.output[0], [])
        if (
            aff is None
            or bn.output[0] in outputs
            or len(nxt) != 1
            or nxt[0].op_type != "Flatten"
            or attr(nxt[0], "axis", 1) != 1
        ):
            continue
        flat = nxt[0]
        gemms = consumers.get(flat.output[0], [])
        if len(gemms) != 1 or gemms[0].op_type != "Gemm" or gemms[0].input[0] != flat.output[0]:
            continue
        wb = gemm_weights(gemms[0])
        if wb is None or flat.output[0] in outputs or wb[0].shape[1] % aff[0].size:
            continue
        (w, b), rep = wb, wb[0].shape[1] // aff[0].size
        scale, shift = np.repeat(aff[0], rep), np.repeat(aff[1], rep)
        store(gemms[0], w * scale[None, :], b + w @ shift)
        flat.input[0] = bn.input[0]
        graph.node.remove(bn)
        folded.append(bn.name)
    # Gemm → BN (2-D): scale the Gemm's output rows
    for bn in [n for n in graph.node if n.op_type == "BatchNormalization"]:
        aff = affine(bn)
        producer = next((n for n in graph.node if bn.input[0] in n.output), None)
        if aff is None or producer is None or producer.op_type != "Gemm" or bn.input[0] in outputs:
            continue
        wb = gemm_weights(producer)
        if wb is None or len(_consumers(graph).get(bn.input[0], [])) != 1 or aff[0].size != wb[0].shape[0]:
            continue
        (w, b), (scale, shift) = wb, aff
        store(producer, w * scale[:, None], b * scale + shift)
        producer.output[0] = bn.output[0]
        graph.node.remove(bn)
        folded.append(bn.name)
    set_nodes(graph, list(graph.node))
    return folded


def rewrite_prelu(model: Any) -> int:
    """Replace each PRelu with a constant slope by ``x + min(x, 0) * (slope - 1)`` (Min, Mul, Add), in place.

    Same values to float rounding (max abs difference ~2e-6 on SFace). onnxruntime's CPU PRelu kernel is ~6x slower
    than Mul + Max on the same tensor and has no quantised form; written this way the Mul and Add run as QLinearMul /
    QLinearAdd in the int8 graph. Returns the number of PRelu nodes rewritten.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes: list[Any] = []
    count = 0
    for node in graph.node:
        if node.op_type != "PRelu" or node.input[1] not in inits:
            nodes.append(node)
            continue
        slope = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        base = node.name or f"prelu_{count}"
        x, y = node.input[0], node.output[0]
        graph.initializer.extend(
            [
                numpy_helper.from_array(slope - np.float32(1.0), f"{base}_slope_minus_1"),
                numpy_helper.from_array(np.zeros((), np.float32), f"{base}_zero"),
            ]
        )
        nodes += [
            helper.make_node("Min", [x, f"{base}_zero"], [f"{base}_neg"], name=f"{base}_min"),
            helper.make_node("Mul", [f"{base}_neg", f"{base}_slope_minus_1"], [f"{base}_negs"], name=f"{base}_mul"),
            helper.make_node("Add", [x, f"{base}_negs"], [y], name=base),
        ]
        count += 1
    set_nodes(graph, nodes)
    return count


@dataclass
class Prepared:
    nodes: list[tuple[str, str]]  # (name, op_type) of the graph that is quantised
    folded: list[str]  # BatchNorm nodes folded into the head's Gemm
    prelu: int  # PRelu nodes rewritten


def preprocess_model(src: Path, dst: Path, recipe: Recipe) -> Prepared:
    """onnxruntime's quant_pre_process, then the recipe's exact graph rewrites (head BatchNorm fold, PRelu)."""
    import onnx
    from onnxruntime.quantization import quant_pre_process

    quant_pre_process(str(src), str(dst))
    model = onnx.load(str(dst))
    recomposed = recompose_prelu(model)  # the shipped SFace's decomposed PRelus, back to one op before quantising
    folded = fold_head_batchnorm(model) if recipe.fold_batchnorm else []
    prelu = rewrite_prelu(model) if recipe.rewrite_prelu else 0
    if recomposed or folded or prelu:
        onnx.checker.check_model(model)
        onnx.save(model, str(dst))
    return Prepared([(n.name, n.op_type) for n in model.graph.node], folded, prelu)


def quantize_file(pre: Path, dst: Path, nodes: list[tuple[str, str]], recipe: Recipe, reader: _Reader) -> list[str]:
    """Static int8 quantisation of the preprocessed model; returns the op types quantised."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    # onnxruntime's own default for QDQ is the union (Add and Mul then run as QLinearAdd / QLinearMul)
    registry = set(QLinearOpsRegistry) | (set(QDQRegistry) if recipe.format == "qdq" else set())
    present = {op for _, op in nodes}
    op_types = sorted((present & registry) - set(recipe.exclude_op_types))
    types = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    quantize_static(
        str(pre),
        str(dst),
        reader,
        quant_format=QuantFormat.QDQ if recipe.format == "qdq" else QuantFormat.QOperator,
        op_types_to_quantize=op_types,
        per_channel=recipe.per_channel,
        reduce_range=recipe.reduce_range,
        activation_type=types[recipe.activation_type],
        weight_type=types[recipe.weight_type],
        nodes_to_exclude=list(recipe.exclude_nodes),
        calibrate_method=methods[recipe.method],
    )
    return op_types


# ------------------------------------------------------------------------------------------------------ measuring


def _embed_fn(pipeline: Pipeline, cfg: Config) -> EmbedFn:
    """The same per-image function as ``kiosk eval`` (read, detect, select the central face, align, embed)."""
    memo: dict[Path, tuple[F32 | None, str | None]] = {}

    def embed(path: Path) -> tuple[F32 | None, str | None]:
        if path not in memo:
            try:
                image = read_image(path, max_pixels=cfg.enroll.max_image_pixels)
            except KioskError as exc:
                memo[path] = (None, str(exc))
            else:
                faces = pipeline.analyze(image, select=SELECT)
                vector = faces[0].embedding if faces else None
                memo[path] = (None, "no face found") if vector is None else (vector, None)
        return memo[path]

    return embed


def _fingerprint(pipeline: Pipeline, cfg: Config) -> str:
    return f"{pipeline.fingerprint}:{SELECT}:{cfg.enroll.max_image_pixels}"  # the key `kiosk eval` uses


@dataclass
class Evaluated:
    pairs: dict[str, Any]
    vectors: dict[str, tuple[F32 | None, str | None]]
    labels: dict[str, Any] | None = None


def evaluate(
    pipeline: Pipeline, cfg: Config, pairs_csv: Path, root: Path | None, cache: EmbeddingCache, labels: Path | None
) -> Evaluated:
    embed, fingerprint = _embed_fn(pipeline, cfg), _fingerprint(pipeline, cfg)
    base = root if root is not None else pairs_csv.parent
    paths = [p for pair in read_pairs(pairs_csv) for p in (pair.path1, pair.path2)]
    vectors = embed_images(paths, root=base, embed=embed, fingerprint=fingerprint, cache=cache)
    common: dict[str, Any] = dict(embed=embed, fingerprint=fingerprint, cache=cache, models=pipeline.models)
    report = evaluate_pairs(pairs_csv, root=root, **common)
    result = Evaluated(report, vectors)
    if labels is not None:
        result.labels = evaluate_labels(labels, root=None, **common)
    return result


def embedding_agreement(a: Evaluated, b: Evaluated) -> dict[str, Any]:
    """Cosine between the fp32 and int8 embeddings of every image both embedded: mean, min and 1st percentile."""
    cos = [
        float(np.dot(va, vb))
        for path, (va, _) in a.vectors.items()
        if va is not None and (vb := b.vectors.get(path, (None, None))[0]) is not None
    ]
    if not cos:
        return {"n": 0, "mean": None, "min": None, "p01": None}
    arr = np.asarray(cos)
    return {"n": len(cos), "mean": float(arr.mean()), "min": float(arr.min()), "p01": percentile(cos, 1)}


def latency_ms(runners: list[Runner], feed: dict[str, F32], runs: int, warmup: int = 20) -> list[float]:
    """Median per-call ms of each runner, calls interleaved (order rotating) so all see the same machine load."""
    calls = {str(i): _run_feed(r, feed) for i, r in enumerate(runners)}
    samples = interleaved_ms(calls, runs, warmup)
    return [median(samples[str(i)]) for i in range(len(runners))]


def _run_feed(runner: Runner, feed: dict[str, F32]) -> Callable[[int], object]:
    return lambda _round: runner.run(feed)


def _tar(report: dict[str, Any], far: str) -> float | None:
    v = report["tar_at_far"].get(far)
    return None if v is None else float(v["tar"])


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f} %"


def summary(spec_id: str, path: Path, lat: float, ev: Evaluated) -> dict[str, Any]:
    r = ev.pairs
    out: dict[str, Any] = {
        "id": spec_id,
        "size_mb": round(path.stat().st_size / 1e6, 3),
        "latency_ms": round(lat, 3),
        "accuracy": r["accuracy_mean"],
        "accuracy_std": r["accuracy_std"],
        "tar_at_far": r["tar_at_far"],
        "roc_auc": r["roc_auc"],
        "n_pairs": r["n_pairs"],
        "n_failed": r["n_failed"],
    }
    if ev.labels is not None:
        out["fnmr_at_fmr"] = ev.labels["fnmr_at_fmr"]
    return out


def print_table(rows: list[dict[str, Any]]) -> None:
    head = f"{'model':<16} {'size MB':>8} {'ms/face':>8} {'accuracy':>9} {'TAR@1e-2':>9} {'TAR@1e-3':>9}"
    print(head)
    for r in rows:
        t2 = _tar({"tar_at_far": r["tar_at_far"]}, "1e-2")
        t3 = _tar({"tar_at_far": r["tar_at_far"]}, GATE_FAR)
        print(
            f"{r['id']:<16} {r['size_mb']:>8.2f} {r['latency_ms']:>8.2f} {_pct(r['accuracy']):>9} "
            f"{_pct(t2):>9} {_pct(t3):>9}"
        )


def round_up(threshold: float, places: int = 2) -> float:
    """``threshold`` rounded up to ``places`` decimals (0.9706 -> 0.98, 0.95 -> 0.95)."""
    scale = 10**places
    return float(math.ceil(round(threshold * scale, 6)) / scale)


def measured_thresholds(labels_report: dict[str, Any]) -> dict[str, float]:
    fnmr = labels_report["fnmr_at_fmr"]
    if fnmr.get(ACCEPT_FMR) is None or fnmr.get(LIKELY_FMR) is None:
        raise QuantizeError(f"--labels has too few impostor pairs to set thresholds at FMR {ACCEPT_FMR}")
    # Rounded up to 0.01, never down: a threshold below the measured one would let more impostors through than the
    # FMR it is named for.
    out = {"accept": round_up(fnmr[ACCEPT_FMR]["threshold"]), "likely": round_up(fnmr[LIKELY_FMR]["threshold"])}
    # The impostor tail the door scales its threshold along (kiosk/recognition/openset.py): FMR 1e-3 … 1e-5 only;
    # below that LFW's label errors dominate its impostor pairs.
    for fmr in ("1e-3", "1e-4", "1e-5"):
        if fnmr.get(fmr) is not None:
            out[f"fmr_{fmr}"] = round(fnmr[fmr]["threshold"], 4)
    return out


# ------------------------------------------------------------------------------------------------------------ CLI


@dataclass
class Options:
    model_id: str
    new_id: str
    models_dir: Path
    recipe: Recipe
    calibration: str
    pairs: Path
    root: Path | None
    labels: Path | None
    max_drop: float
    json_out: Path | None
    force: bool
    detector: str | None
    latency_runs: int
    threads: int
    no_cache: bool
    list_nodes: bool
    extra: dict[str, Any] = field(default_factory=dict)


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m tools quantize",
        description="Static int8 quantisation (onnxruntime, QDQ) of a recogniser in the manifest, calibrated on real "
        "aligned faces, with an accuracy gate: refused (exit 1, nothing registered) when TAR at FAR 1e-3 on the "
        "pairs file drops by more than --max-drop points.",
    )
    p.add_argument("model_id", help="recogniser id in the manifest (e.g. sface)")
    p.add_argument("--out", type=Path, help="models folder with manifest.yaml (default: models/ or $KIOSK_MODELS_DIR)")
    p.add_argument("--id", dest="new_id", help="id of the int8 model (default: MODEL_ID_int8)")
    p.add_argument("--detector", help="detector id used to find and align faces (default: the config default)")
    p.add_argument(
        "--calibration",
        default="lfw",
        metavar="DIR|lfw",
        help="folder of photos to calibrate on, or 'lfw' (default): LFW public under $KIOSK_TEST_DATA, people not in "
        "the pairs file",
    )
    p.add_argument("--calib-count", type=int, help="number of faces to calibrate on (default 300)")
    p.add_argument("--exclude", nargs="+", action="extend", default=[], metavar="NODE", help="keep these nodes fp32")
    p.add_argument(
        "--exclude-op-type", nargs="+", action="extend", default=[], metavar="OP", help="keep these op types fp32"
    )
    p.add_argument("--per-channel", action=argparse.BooleanOptionalAction, help="per-channel weights (default on)")
    p.add_argument("--method", choices=["minmax", "entropy", "percentile"], help="calibration method")
    p.add_argument("--activation-type", choices=["u8", "s8"], help="activation type (default u8)")
    p.add_argument("--weight-type", choices=["u8", "s8"], help="weight type (default s8)")
    p.add_argument("--format", choices=["qdq", "qoperator"], help="quantised graph format (default qdq)")
    p.add_argument(
        "--reduce-range",
        action=argparse.BooleanOptionalAction,
        help="7-bit weights (default on: exact on x86 without VNNI, where 8-bit U8S8 saturates)",
    )
    p.add_argument(
        "--rewrite-prelu",
        action=argparse.BooleanOptionalAction,
        help="rewrite PRelu as x + min(x, 0) * (slope - 1) before quantising (default on)",
    )
    p.add_argument(
        "--fold-batchnorm",
        action=argparse.BooleanOptionalAction,
        help="fold the head's BatchNorms into its Gemm before quantising (default on)",
    )
    p.add_argument("--pairs", type=Path, help="pairs CSV for the gate (default: $KIOSK_TEST_DATA/lfw/pairs.csv)")
    p.add_argument("--root", type=Path, help="folder the CSV paths are relative to (default: the CSV's folder)")
    p.add_argument(
        "--labels",
        type=Path,
        help="labels CSV: measure the int8 thresholds with the all-pairs protocol (accept at FMR 1e-5, likely at "
        "FMR 1e-3); without it they are inherited from the fp32 entry",
    )
    p.add_argument("--max-drop", type=float, default=0.5, help="allowed drop of TAR@FAR 1e-3, in points (0.5)")
    p.add_argument("--json", type=Path, dest="json_out", metavar="OUT", help="write the report as JSON here")
    p.add_argument("--force", action="store_true", help="replace an existing model with the same id")
    p.add_argument("--latency-runs", type=int, default=200, help="batch-1 runs per model for the latency (200)")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads for the latency (2)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    p.add_argument("--list-nodes", action="store_true", help="print the optimised graph's nodes and exit")
    a = p.parse_args(argv)
    models_dir = a.out if a.out is not None else default_models_dir()
    pairs = a.pairs if a.pairs is not None else test_data_dir() / "lfw" / "pairs.csv"
    return Options(
        model_id=a.model_id,
        new_id=a.new_id or f"{a.model_id}_int8",
        models_dir=models_dir,
        recipe=Recipe(),  # filled in by main once the model's family is known
        calibration=a.calibration,
        pairs=pairs,
        root=a.root,
        labels=a.labels,
        max_drop=a.max_drop,
        json_out=a.json_out,
        force=a.force,
        detector=a.detector,
        latency_runs=a.latency_runs,
        threads=a.threads,
        no_cache=a.no_cache,
        list_nodes=a.list_nodes,
        extra={
            "format": a.format,
            "activation_type": a.activation_type,
            "weight_type": a.weight_type,
            "per_channel": a.per_channel,
            "reduce_range": a.reduce_range,
            "fold_batchnorm": a.fold_batchnorm,
            "rewrite_prelu": a.rewrite_prelu,
            "method": a.method,
            "exclude_nodes": tuple(a.exclude) or None,
            "exclude_op_types": tuple(a.exclude_op_type) or None,
            "calib_count": a.calib_count,
        },
    )


def recipe_for(spec: ModelSpec, overrides: dict[str, Any]) -> Recipe:
    base = RECIPES.get(spec.family, Recipe())
    recipe = dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    if recipe.calib_count < 1:
        raise QuantizeError(f"--calib-count must be at least 1, got {recipe.calib_count}")
    return recipe


def recipe_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain YAML/JSON data (lists, not tuples)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(recipe).items()}


def describe(recipe: Recipe) -> str:
    kept = list(recipe.exclude_nodes) + [f"all {op}" for op in recipe.exclude_op_types]
    rewrites = [("head BN folded", recipe.fold_batchnorm), ("PRelu rewritten", recipe.rewrite_prelu)]
    return (
        "".join(f"{text}, " for text, on in rewrites if on)
        + f"{recipe.format.upper()} {recipe.activation_type.upper()}{recipe.weight_type.upper()}, "
        f"{'per-channel' if recipe.per_channel else 'per-tensor'} weights"
        f"{', reduce_range' if recipe.reduce_range else ''}, {recipe.method} calibration on {recipe.calib_count} faces"
        + (f", fp32: {', '.join(kept)}" if kept else "")
    )


def load_pipeline(models_dir: Path, model_id: str, detector: str | None) -> tuple[Config, Pipeline]:
    manifest_path = models_dir / "manifest.yaml"
    models: dict[str, Any] = {"manifest": str(manifest_path), "recognizer": model_id}
    if detector:
        models["detector"] = detector
    cfg = parse_config({"models": models})
    manifest = load_manifest(manifest_path)
    spec = manifest.get(model_id)
    if spec.task != "embed":
        raise QuantizeError(f"model '{model_id}' is a {spec.task} model: this tool quantises recognisers (embed)")
    if spec.format != "onnx":
        raise QuantizeError(f"model '{model_id}' is {spec.format}, not onnx")
    return cfg, Pipeline.from_config(cfg, manifest)


def run(opts: Options) -> int:
    cfg, fp32 = load_pipeline(opts.models_dir, opts.model_id, opts.detector)
    spec = fp32.embedder.spec
    recipe = recipe_for(spec, opts.extra)
    entries = read_manifest(opts.models_dir)["models"]
    target = opts.models_dir / f"{opts.new_id}.onnx"
    if not opts.list_nodes and not opts.force and (opts.new_id in entries or target.exists()):
        raise QuantizeError(f"model '{opts.new_id}' already exists in {opts.models_dir} (use --force to replace it)")
    if not opts.list_nodes and not opts.pairs.is_file():
        raise QuantizeError(f"pairs file {opts.pairs} not found (pass --pairs CSV or set KIOSK_TEST_DATA)")
    if opts.calibration != "lfw" and not Path(opts.calibration).is_dir():
        raise QuantizeError(f"calibration folder {opts.calibration} does not exist")

    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp_name:
        tmp = Path(tmp_name)
        prepared = preprocess_model(spec.path, tmp / "pre.onnx", recipe)
        nodes, folded = prepared.nodes, prepared.folded
        if opts.list_nodes:
            for name, op in nodes:
                print(f"{op:<20} {name}")
            return 0
        if folded:
            print(f"quantize: folded BatchNormalization {', '.join(folded)} into the head's Gemm")
        if prepared.prelu:
            print(f"quantize: rewrote {prepared.prelu} PRelu nodes as x + min(x, 0) * (slope - 1)")
        unknown = [n for n in recipe.exclude_nodes if n not in {name for name, _ in nodes}]
        if unknown:
            raise QuantizeError(f"no node named {', '.join(unknown)} in the optimised graph (see --list-nodes)")

        started = time.perf_counter()
        if opts.calibration == "lfw":
            calib = lfw_calibration(fp32, cfg, recipe.calib_count, opts.pairs)
        else:
            calib = folder_calibration(fp32, cfg, Path(opts.calibration), recipe.calib_count)
        if not calib.crops:
            raise QuantizeError(f"no face found in the {calib.tried} calibration images")
        print(
            f"quantize: calibration: {len(calib.crops)} faces from {calib.description}, "
            f"{time.perf_counter() - started:.1f} s"
        )
        recipe = dataclasses.replace(recipe, calib_count=len(calib.crops))
        input_name = spec.input.name or "data"
        embedder = fp32.embedder
        batches = [embedder.preprocess(calib.crops[i : i + 16]) for i in range(0, len(calib.crops), 16)]
        partial = tmp / f"{opts.new_id}.onnx"
        started = time.perf_counter()
        op_types = quantize_file(tmp / "pre.onnx", partial, nodes, recipe, _Reader(input_name, batches))
        print(f"quantize: {describe(recipe)}; quantised op types {op_types}; {time.perf_counter() - started:.1f} s")

        spec8 = dataclasses.replace(spec, id=opts.new_id, path=partial, sha256=sha256_file(partial))
        options = runtime_options(cfg)
        int8 = Pipeline(cfg, fp32.detector, Embedder(spec8, load_runner(spec8, options)), fp32.template)

        bench = RuntimeOptions(providers=options.providers, intra_op_threads=opts.threads, inter_op_threads=1)
        feed = {input_name: batches[0][:1]}
        # the fp32 graph after the same exact rewrites, so the report separates their gain from int8's
        pre_spec = dataclasses.replace(spec, id=f"{spec.id} (rewritten)", path=tmp / "pre.onnx", sha256="")
        pre_spec = dataclasses.replace(pre_spec, sha256=sha256_file(pre_spec.path))
        runners = [load_runner(spec, bench), load_runner(spec8, bench), load_runner(pre_spec, bench)]
        lat = latency_ms(runners, feed, opts.latency_runs)
        print(
            f"quantize: latency (median of {opts.latency_runs} interleaved batch-1 runs, {opts.threads} threads): "
            f"fp32 {lat[0]:.2f} ms, fp32 rewritten graph {lat[2]:.2f} ms, int8 {lat[1]:.2f} ms"
        )

        cache = open_cache(None if opts.no_cache else default_cache_path())
        with cache:
            print(f"quantize: evaluating {spec.id} (fp32) on {opts.pairs.name}")
            ev32 = evaluate(fp32, cfg, opts.pairs, opts.root, cache, opts.labels)
            print(f"quantize: evaluating {opts.new_id} (int8) on {opts.pairs.name}")
            ev8 = evaluate(int8, cfg, opts.pairs, opts.root, cache, opts.labels)
        rows = [summary(spec.id, spec.path, lat[0], ev32), summary(opts.new_id, partial, lat[1], ev8)]
        print_table(rows)
        agree = embedding_agreement(ev32, ev8)
        if agree["n"]:
            cos = f"mean {agree['mean']:.4f}, min {agree['min']:.4f}"
            print(f"quantize: fp32 vs int8 embedding cosine over {agree['n']} faces: {cos}")

        t32, t8 = _tar(ev32.pairs, GATE_FAR), _tar(ev8.pairs, GATE_FAR)
        if t32 is None or t8 is None:
            n_imp = sum(not p.same for p in read_pairs(opts.pairs))
            raise QuantizeError(f"{opts.pairs.name} has {n_imp} impostor pairs: TAR at FAR {GATE_FAR} needs 1000")
        drop = 100.0 * (t32 - t8)
        gate = {
            "metric": f"TAR@FAR {GATE_FAR}",
            "pairs_file": opts.pairs.name,
            "pairs_sha256": sha256_file(opts.pairs),
            "fp32": t32,
            "int8": t8,
            "drop_points": round(drop, 4),
            "max_drop_points": opts.max_drop,
            "passed": drop <= opts.max_drop,
        }
        cpuinfo = read_cpuinfo()
        report: dict[str, Any] = {
            "source": {"id": spec.id, "sha256": spec.sha256, "file": spec.path.name},
            "id": opts.new_id,
            "recipe": recipe_dict(recipe),
            "quantized_op_types": op_types,
            "folded_batchnorm": folded,
            "rewritten_prelu": prepared.prelu,
            "calibration": {
                "description": calib.description,
                "count": len(calib.crops),
                "files_sha256": calib.files_sha256,
            },
            "latency": {
                "threads": opts.threads,
                "runs": opts.latency_runs,
                "batch": 1,
                "interleaved": True,
                "fp32_rewritten_graph_ms": round(lat[2], 3),
            },
            "machine": {"cpu": cpu_name(cpuinfo), "vnni": has_vnni(cpuinfo)},
            "fp32": rows[0],
            "int8": rows[1],
            "embedding_cosine": agree,
            "gate": gate,
            "registered": False,
            "tools": tool_versions("onnxruntime", "onnx", "numpy"),
        }
        if not gate["passed"]:
            reason = (
                f"refused: TAR@FAR {GATE_FAR} fell from {_pct(t32)} (fp32) to {_pct(t8)} (int8), a drop of "
                f"{drop:.2f} points > --max-drop {opts.max_drop:g}; nothing registered"
            )
            report["refused"] = reason
            _write_json(opts.json_out, report)
            print(f"quantize: {reason}", file=sys.stderr)
            return 1
        print(f"quantize: gate passed: TAR@FAR {GATE_FAR} {_pct(t32)} -> {_pct(t8)} ({drop:+.2f} points drop)")

        if ev8.labels is not None:
            thresholds = measured_thresholds(ev8.labels)
            how = (
                f"measured on {opts.labels.name if opts.labels else ''} (all pairs): accept at FMR {ACCEPT_FMR}, "
                f"likely at FMR {LIKELY_FMR}"
            )
        else:
            thresholds = dict(spec.thresholds)
            how = f"inherited from {spec.id} (not re-measured: pass --labels to measure)"
        report["thresholds"] = {"values": thresholds, "how": how}
        print(f"quantize: thresholds {thresholds} {how}")

        entry = {k: v for k, v in entries[spec.id].items() if k not in ("file", "sha256", "provenance")}
        entry.update(
            file=target.name,
            thresholds=thresholds,
            description=f"{entries[spec.id].get('description', spec.id)}; static int8 ({describe(recipe)})",
            provenance={
                "source_model": spec.id,
                "source_sha256": spec.sha256,
                "source_provenance": dict(entries[spec.id].get("provenance") or {}),
                "transform": f"onnxruntime quant_pre_process + quantize_static: {describe(recipe)}",
                "recipe": recipe_dict(recipe),
                "calibration": report["calibration"],
                "gate": gate,
                "thresholds": how,
                "tools": report["tools"],
                "built_by": "tools/models/quantize.py",
            },
        )
        _move(partial, target)
    register(opts.models_dir, opts.new_id, entry)
    report["registered"] = True
    _write_json(opts.json_out, report)
    return 0


def open_cache(path: Path | None, tries: int = 12, wait_s: float = 5.0) -> EmbeddingCache:
    """The embedding cache; while another evaluation holds its write lock, retry for up to a minute."""
    cache = EmbeddingCache(path)
    for _ in range(tries - 1):
        if path is None or cache.enabled:
            break
        time.sleep(wait_s)
        cache = EmbeddingCache(path)
    return cache


def _move(src: Path, dst: Path) -> None:
    """Copy across filesystems via a temporary name next to ``dst``, then rename (never a half-written model)."""
    import shutil

    part = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    shutil.copyfile(src, part)
    part.replace(dst)


def _write_json(path: Path | None, report: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"quantize: wrote {path}")


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)

    def body() -> int:
        try:
            return run(opts)
        except KioskError as exc:  # a missing model or a bad manifest is a bad argument here: exit 2, as always
            raise QuantizeError(str(exc)) from exc

    return run_tool("quantize", body)


if __name__ == "__main__":
    sys.exit(main())
