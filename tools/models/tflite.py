"""Convert an ONNX recogniser from the manifest to TFLite, fp32 or full int8, and register it.

``python -m tools tflite sface`` writes ``models/sface_tflite.tflite``; ``--int8`` writes ``sface_tflite_int8.tflite``
with int8 weights *and* activations (float32 input and output, so the kiosk's Embedder feeds it unchanged),
calibrated on real faces detected and aligned by the kiosk's own pipeline and preprocessed by its own Embedder.

How: constant sub-graphs left by ``build_models``' DequantizeLinear folding (``Reshape`` of a weight) are folded with
``onnx.reference``, the batch is fixed to 1 (the TFLite runner resizes it), onnx2tf builds a Keras graph with NHWC
input (so the manifest says ``layout: nhwc``), and TensorFlow's TFLite converter writes builtin ops only (no Flex
ops, which ai-edge-litert cannot run). onnx2tf wants sample input for its internal checks and would download a
sample from GitHub; it is handed the real aligned faces instead, so nothing is downloaded.

The new model is checked against the ONNX source on held-out real faces before it is registered: fp32 must agree to
``--fp32-atol`` (raw embedding, max abs) and int8 must keep a cosine of at least ``--int8-min-cosine`` to fp32 on
every face. Thresholds are inherited from the source model (fp32: identical outputs; int8: see the check). Needs the
``tools`` extra (tensorflow, onnx2tf); the kiosk runs the result with ai-edge-litert only.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import importlib
import importlib.metadata as md
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from kiosk.config import parse_config
from kiosk.imageio import read_image
from kiosk.models.backends import Runner, RuntimeOptions, load_runner
from kiosk.models.manifest import ModelSpec, load_manifest
from kiosk.recognition.detect import select_faces
from kiosk.recognition.pipeline import Pipeline
from kiosk.stats import median_ms
from kiosk.types import FloatArray, Image
from tools import ROOT
from tools.models.build import recompose_prelu
from tools.models.registry import default_models_dir, read_manifest, register, tool_versions

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Ops whose output is a constant when all their inputs are: folded before onnx2tf sees the graph.
FOLDABLE = frozenset({"Constant", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Cast", "Identity"})
FP32_ATOL = 1e-4  # raw (un-normalised) embedding, max abs difference to the ONNX source
INT8_MIN_COSINE = 0.95  # every held-out face, int8 vs fp32: catches a broken conversion; accuracy is for `kiosk eval`
# source sha256 -> (Keras model, fp32 TFLite): converting twice in one process (fp32, then --int8) reuses the first.
_CONVERTED: dict[str, tuple[Any, bytes]] = {}


# --------------------------------------------------------------------------------------------------- ONNX -> Keras
def fold_constants(model: Any) -> tuple[Any, int]:
    """Replace nodes computing constants (e.g. ``Reshape(weight, shape)``) by initializers. Returns (model, count)."""
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    kept, folded = [], 0
    for node in graph.node:
        inputs = [x for x in node.input if x]
        if node.op_type not in FOLDABLE or not all(x in consts and x not in graph_inputs for x in inputs):
            kept.append(node)
            continue
        outs = [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output]
        inits = [numpy_helper.from_array(consts[x], x) for x in inputs]
        sub = helper.make_model(helper.make_graph([node], "fold", [], outs, initializer=inits))
        del sub.opset_import[:]
        sub.opset_import.extend(model.opset_import)
        for name, value in zip(node.output, ReferenceEvaluator(sub).run(None, {}), strict=True):
            consts[name] = np.asarray(value)
        folded += 1
    used = {x for n in kept for x in n.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items() if k in used)
    return model, folded


def prepare_onnx(path: Path) -> tuple[Any, int]:
    """Load, fold constants, fix every graph input's batch dimension to 1 and infer shapes (onnx2tf needs them)."""
    import onnx

    # The shipped SFace has its PRelus decomposed for onnxruntime; onnx2tf and TFLite want the PRelu op back.
    model = onnx.load(str(path))
    recompose_prelu(model)
    model, folded = fold_constants(model)
    for inp in model.graph.input:
        dim = inp.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = 1
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True), folded


def onnx_to_keras(model: Any, sample_nhwc: FloatArray, work_dir: Path) -> Any:
    """onnx2tf: ONNX graph -> tf_keras model with NHWC input. ``sample_nhwc`` replaces onnx2tf's downloaded sample."""
    o2t: Any = importlib.import_module("onnx2tf.onnx2tf")
    # NOTE: onnx2tf fetches a sample image batch from GitHub for its dummy-inference checks whenever the input
    # looks like an image; this machine has no network and the tool must never download. Real faces are better.
    o2t.download_test_image_data = lambda: np.ascontiguousarray(sample_nhwc[:20], dtype=np.float32)
    # NOTE: given a file path, onnx2tf rewrites that ONNX file in place (op naming, shape estimation). Only ever
    # hand it the in-memory graph, with op names set here, so the registered source model is never touched.
    for i, node in enumerate(model.graph.node):
        node.name = node.name or f"{node.op_type}_{i}"
    return o2t.convert(
        onnx_graph=model,
        not_use_opname_auto_generate=True,
        output_folder_path=str(work_dir),
        copy_onnx_input_output_names_to_tflite=True,
        not_use_onnxsim=True,
        disable_model_save=True,
        non_verbose=True,
    )


def keras_to_tflite(keras_model: Any, calibration: FloatArray | None = None) -> bytes:
    """TFLite flatbuffer with builtin ops only; with ``calibration`` (N, H, W, C), full int8 (float32 in/out)."""
    tf = importlib.import_module("tensorflow")
    specs = [tf.TensorSpec(t.shape, t.dtype, t.name) for t in keras_model.inputs]
    concrete = tf.function(lambda *xs: keras_model(xs), input_signature=specs).get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], keras_model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if calibration is not None:
        data = calibration

        def representative() -> Iterator[list[FloatArray]]:
            for row in data:
                yield [row[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    result: bytes = converter.convert()
    return result


# ------------------------------------------------------------------------------------------------- real faces
def faces_root() -> Path:
    env = os.environ.get("KIOSK_TEST_DATA")
    return Path(env) if env else (ROOT / ".." / "shared" / "data" / "faces").resolve()


def calibration_paths(source: str, count: int) -> list[Path]:
    """``count`` image paths spread evenly over the source. ``lfw``: LFW public images not used by pairs.csv."""
    if source == "lfw":
        lfw = faces_root() / "lfw"
        if not (lfw / "labels.csv").is_file():
            raise SystemExit(f"tflite: LFW labels not found at {lfw} (set KIOSK_TEST_DATA or pass --calibration DIR)")
        with (lfw / "labels.csv").open(newline="", encoding="utf-8") as f:
            paths = [row["path"] for row in csv.DictReader(f)]
        in_pairs: set[str] = set()
        if (lfw / "pairs.csv").is_file():  # keep calibration faces out of the evaluation pairs
            with (lfw / "pairs.csv").open(newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    in_pairs.update((row["path1"], row["path2"]))
        candidates = [lfw / p for p in paths if p not in in_pairs] or [lfw / p for p in paths]
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise SystemExit(f"tflite: calibration folder {folder} does not exist")
        candidates = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not candidates:
        raise SystemExit(f"tflite: no images in {source}")
    step = max(1, len(candidates) // max(count, 1))
    return candidates[::step]


def aligned_faces(pipeline: Pipeline, paths: list[Path], count: int) -> list[Image]:
    """Detect the largest face in each photo and align it exactly as the kiosk does; stop at ``count`` faces."""
    crops: list[Image] = []
    for path in paths:
        if len(crops) >= count:
            break
        image = read_image(path)
        faces = select_faces(pipeline.detect(image), "largest", image.shape)
        if faces:
            crops.append(pipeline.prepare(image, faces)[0][0])
    return crops


# ------------------------------------------------------------------------------------------------- checks
def run_batch(runner: Runner, name: str, batch: FloatArray) -> FloatArray:
    """Raw outputs, one row per input row, run one at a time (batch 1, like the door loop)."""
    rows = [
        np.asarray(runner.run({name: batch[i : i + 1]})[0], dtype=np.float32).reshape(-1) for i in range(len(batch))
    ]
    return np.stack(rows)


def cosines(a: FloatArray, b: FloatArray) -> FloatArray:
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    result: FloatArray = np.sum(an * bn, axis=1)
    return result


# ------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools tflite",
        description="Convert an ONNX recogniser from the manifest to TFLite (fp32, or full int8 with --int8), check "
        "it against the ONNX model on real faces, and register it in the manifest.",
    )
    p.add_argument("model_id", metavar="MODEL_ID", help="source model id in the manifest (an ONNX recogniser)")
    p.add_argument("--out", type=Path, help="models folder holding the source and the manifest (default: models/)")
    p.add_argument("--id", dest="new_id", help="id of the new model (default: MODEL_ID_tflite[_int8])")
    p.add_argument("--int8", action="store_true", help="full int8: int8 weights and activations, float32 in/out")
    p.add_argument("--calibration", default="lfw", help="folder of face photos, or 'lfw' (default; $KIOSK_TEST_DATA)")
    p.add_argument("--calib-count", type=int, default=200, help="faces for int8 calibration (default 200)")
    p.add_argument("--check-count", type=int, default=32, help="held-out faces for the agreement check (default 32)")
    p.add_argument("--detector", default="yunet", help="detector used to find and align faces (default yunet)")
    p.add_argument("--fp32-atol", type=float, default=FP32_ATOL, help=f"fp32 max abs diff (default {FP32_ATOL})")
    p.add_argument(
        "--int8-min-cosine", type=float, default=INT8_MIN_COSINE, help=f"int8 min cosine (default {INT8_MIN_COSINE})"
    )
    p.add_argument("--bench", type=int, default=50, help="runs for the per-face latency (0: skip; default 50)")
    p.add_argument("--threads", type=int, default=2, help="threads for checks and latency (default 2)")
    return p


def manifest_entry(
    source: dict[str, Any], spec: ModelSpec, new_id: str, input_name: str, int8: bool, extra: dict[str, Any]
) -> dict[str, Any]:
    """The source's entry (preprocessing, template, thresholds, licence) with the TFLite file, layout and provenance."""
    kind = "full int8 (int8 weights and activations, float32 input/output)" if int8 else "fp32"
    src_prov = dict(source.get("provenance") or {})
    prov = {k: v for k, v in src_prov.items() if k not in ("built_by", "registered", "transform")}
    prov.update(
        {
            "source_model": spec.id,
            "source_model_sha256": spec.sha256,
            "transform": f"{src_prov.get('transform', 'ONNX')}; constant Reshapes folded, batch fixed to 1 "
            "(resizable), onnx2tf to NHWC, TFLite builtin ops" + ("; int8 post-training quantisation" if int8 else ""),
            "tools": tool_versions("onnx", "onnx2tf", "tensorflow", "tf-keras", "ai-edge-litert"),
            "built_by": "tools/models/tflite.py",
            **extra,
        }
    )
    replace: dict[str, Any] = {
        "format": "tflite",
        "input": {**source["input"], "name": input_name, "layout": "nhwc"},
        "description": f"{spec.id} converted to TFLite, {kind}; {source.get('description', '')}".rstrip("; "),
        "file": f"{new_id}.tflite",
        "provenance": prov,
    }
    entry = {k: replace.get(k, v) for k, v in source.items() if k != "sha256"}
    entry.update({k: v for k, v in replace.items() if k not in entry})
    return entry


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    models_dir: Path = args.out or default_models_dir()
    manifest_path = models_dir / "manifest.yaml"
    raw = read_manifest(models_dir)["models"]
    if args.model_id not in raw:
        print(f"tflite: {args.model_id!r} is not in {manifest_path} (known: {', '.join(sorted(raw))})", file=sys.stderr)
        return 2
    spec = load_manifest(manifest_path).get(args.model_id)
    if spec.format != "onnx" or spec.task != "embed":
        print(
            f"tflite: {spec.id} is a {spec.format} {spec.task} model; only ONNX recognisers are converted "
            "(the kiosk's TFLite detector is blazeface)",
            file=sys.stderr,
        )
        return 2
    for pkg in ("tensorflow", "onnx2tf", "tf-keras"):
        try:
            md.version(pkg)
        except md.PackageNotFoundError:
            print(f"tflite: {pkg} is not installed: pip install 'face-kiosk[tools]'", file=sys.stderr)
            return 2
    new_id = args.new_id or f"{spec.id}_tflite{'_int8' if args.int8 else ''}"
    t_start = time.perf_counter()

    # Real faces, detected, aligned and preprocessed exactly as the kiosk does with the source model.
    cfg = parse_config(
        {
            "models": {"manifest": str(manifest_path), "detector": args.detector, "recognizer": spec.id},
            "runtime": {"intra_op_threads": args.threads, "tflite_threads": args.threads},
        }
    )
    pipeline = Pipeline.from_config(cfg)
    need = args.check_count + (args.calib_count if args.int8 else 20)
    crops = aligned_faces(pipeline, calibration_paths(args.calibration, need), need)
    if len(crops) < args.check_count + 2:
        print(f"tflite: only {len(crops)} faces found in {args.calibration}", file=sys.stderr)
        return 1
    batch = pipeline.embedder.preprocess(crops)  # (N, C, H, W) when the source is nchw
    nhwc = batch.transpose(0, 2, 3, 1) if spec.input.layout == "nchw" else batch
    check_nhwc, calib_nhwc = nhwc[: args.check_count], nhwc[args.check_count :]
    print(
        f"tflite: {len(crops)} aligned faces from {args.calibration}: {len(check_nhwc)} held out for checks, "
        f"{len(calib_nhwc)} for {'calibration' if args.int8 else 'onnx2tf sample input'}"
    )

    # Convert.
    t0 = time.perf_counter()
    model, folded = prepare_onnx(spec.path)
    if spec.sha256 not in _CONVERTED:
        with tempfile.TemporaryDirectory(prefix="tflite-") as tmp:
            keras_model = onnx_to_keras(model, calib_nhwc, Path(tmp))
        t_keras = time.perf_counter() - t0
        _CONVERTED[spec.sha256] = (keras_model, keras_to_tflite(keras_model))
    else:
        t_keras = 0.0
    keras_model, fp32 = _CONVERTED[spec.sha256]
    t_fp32 = time.perf_counter() - t0 - t_keras
    data = fp32
    if args.int8:
        data = keras_to_tflite(keras_model, calib_nhwc)
    t_convert = time.perf_counter() - t0
    out_path = models_dir / f"{new_id}.tflite"
    tmp_path = out_path.with_suffix(f".tflite.{os.getpid()}.tmp")
    tmp_path.write_bytes(data)
    tmp_path.replace(out_path)
    print(
        f"tflite: converted {spec.path.name} ({spec.path.stat().st_size / 1e6:.1f} MB, {folded} constant nodes folded)"
        f" -> {out_path.name} ({len(data) / 1e6:.1f} MB) in {t_convert:.1f} s "
        f"(onnx2tf {t_keras:.1f} s, fp32 TFLite {t_fp32:.1f} s"
        + (f", int8 TFLite {t_convert - t_keras - t_fp32:.1f} s)" if args.int8 else ")")
    )

    # Check against the source on held-out faces, through the kiosk's own runners.
    opts = RuntimeOptions(intra_op_threads=args.threads, tflite_threads=args.threads)
    src_runner = load_runner(spec, opts)
    interp_cls = importlib.import_module("ai_edge_litert.interpreter").Interpreter
    new_interp = interp_cls(model_content=data, num_threads=args.threads)
    input_name = str(new_interp.get_input_details()[0]["name"])
    src_name = spec.input.name or src_runner.input_names[0]
    ref = run_batch(src_runner, src_name, batch[: args.check_count])
    extra: dict[str, Any] = {"check_faces": len(check_nhwc)}
    failed = False
    with tempfile.TemporaryDirectory(prefix="tflite-check-") as tmp:
        probe = dataclasses.replace(spec, id=new_id, format="tflite")
        fp32_path = Path(tmp) / "fp32.tflite"
        fp32_path.write_bytes(fp32)
        fp32_runner = _unverified_runner(probe, fp32_path, opts)
        got32 = run_batch(fp32_runner, input_name, check_nhwc)
        diff, cos32 = float(np.abs(got32 - ref).max()), float(cosines(got32, ref).min())
        print(f"tflite: fp32 vs ONNX on {len(ref)} real faces: max abs diff {diff:.3g}, min cosine {cos32:.8f}")
        extra["fp32_vs_onnx"] = {"max_abs_diff": float(f"{diff:.3g}"), "min_cosine": round(cos32, 8)}
        if diff > args.fp32_atol:
            print(f"tflite: fp32 disagrees with ONNX beyond {args.fp32_atol}: not registered", file=sys.stderr)
            failed = True
        runners = {"onnx": src_runner, "tflite fp32": fp32_runner}
        if args.int8:
            new_runner = _unverified_runner(probe, out_path, opts)
            got8 = run_batch(new_runner, input_name, check_nhwc)
            c8 = cosines(got8, got32)
            print(
                f"tflite: int8 vs fp32 on {len(ref)} real faces: cosine min {c8.min():.4f}, mean {c8.mean():.4f}"
                f" (int8 vs ONNX min {cosines(got8, ref).min():.4f})"
            )
            extra["int8_vs_fp32"] = {"min_cosine": round(float(c8.min()), 4), "mean_cosine": round(float(c8.mean()), 4)}
            if c8.min() < args.int8_min_cosine:
                print(f"tflite: int8 cosine below {args.int8_min_cosine}: not registered", file=sys.stderr)
                failed = True
            runners["tflite int8"] = new_runner
        if args.bench > 0:
            feeds = {
                name: {src_name: batch[:1]} if name == "onnx" else {input_name: check_nhwc[:1]} for name in runners
            }
            lat = {name: median_ms(functools.partial(r.run, feeds[name]), args.bench) for name, r in runners.items()}
            print(
                f"tflite: per-face latency ({args.threads} threads, median of {args.bench}): "
                + ", ".join(f"{k} {v:.1f} ms" for k, v in lat.items())
            )
    if failed:
        out_path.unlink(missing_ok=True)
        return 1
    entry = manifest_entry(raw[spec.id], spec, new_id, input_name, args.int8, extra)
    if args.int8:
        entry["provenance"]["calibration"] = f"{len(calib_nhwc)} aligned faces from {args.calibration}"
    register(models_dir, new_id, entry)
    print(f"tflite: done in {time.perf_counter() - t_start:.1f} s")
    return 0


def _unverified_runner(spec: ModelSpec, path: Path, opts: RuntimeOptions) -> Runner:
    """The kiosk's TFLite runner on a file not yet in the manifest (no hash to check yet)."""
    from kiosk.models.backends.tflite import TfliteRunner

    return TfliteRunner(dataclasses.replace(spec, path=path), opts)


if __name__ == "__main__":
    sys.exit(main())
