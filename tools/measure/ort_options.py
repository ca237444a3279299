"""``python -m tools ort-options``: onnxruntime session options measured one at a time on the kiosk's own models.

Each variant differs from the kiosk's baseline (``ORT_ENABLE_ALL``, CPU arena on, per-session pools of
``--threads`` intra-op threads, spinning off, plain ``run``) in one setting: graph optimisation level, memory arena,
memory pattern, pre-allocated I/O binding, thread count, denormals as zero, a fixed batch dimension. The
inputs are the tensors the kiosk itself feeds the model (a real LFW face aligned by the pipeline for the
recogniser, a 640x480 frame for the detector) when the face data is there, else a fixed pseudo-random image (said
so in the JSON). Variants run interleaved, one call each per round, so machine load hits them alike; the JSON has
the median and p95 of each and its ratio to the baseline, with the machine and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiosk.config import load_config
from kiosk.errors import KioskError
from kiosk.lab.machine import describe, loadavg, versions
from kiosk.models.manifest import ModelSpec, load_manifest
from kiosk.stats import dist, interleaved_ms

BASELINE = "baseline"


@dataclass(frozen=True)
class Variant:
    """One session configuration: ``level`` (onnxruntime GraphOptimizationLevel name), config ``entries``."""

    name: str
    what: str
    level: str = "ORT_ENABLE_ALL"
    arena: bool = True
    mem_pattern: bool = True
    threads: int | None = None  # None: --threads
    entries: dict[str, str] = field(default_factory=dict)
    io_binding: bool = False
    fixed_batch: bool = False


def variants(threads: int) -> list[Variant]:
    """The baseline and one change each. Spinning stays off everywhere: a spinning pool keeps its cores busy after
    its run and slows whatever runs next, so it can only be judged in the real loop (``kiosk bench`` with
    ``runtime.allow_spinning: true``), not interleaved here."""
    other = 1 if threads != 1 else 2
    return [
        Variant(BASELINE, f"the kiosk's session: ORT_ENABLE_ALL, arena on, {threads} threads, spinning off"),
        Variant("baseline_copy", "the baseline again, a control: how far apart two identical sessions measure"),
        Variant("opt_basic", "graph optimisation ORT_ENABLE_BASIC", level="ORT_ENABLE_BASIC"),
        Variant(
            "opt_extended", "graph optimisation ORT_ENABLE_EXTENDED (no layout transforms)", level="ORT_ENABLE_EXTENDED"
        ),
        Variant("no_arena", "CPU memory arena off", arena=False),
        Variant("no_mem_pattern", "memory pattern planning off", mem_pattern=False),
        Variant(
            "io_binding", "input and output OrtValues allocated once and bound (run_with_iobinding)", io_binding=True
        ),
        Variant("fixed_batch", "batch dimension fixed to 1 (free dimension override)", fixed_batch=True),
        Variant("denormal_zero", "flush-to-zero / denormals-as-zero", entries={"session.set_denormal_as_zero": "1"}),
        Variant(f"threads_{other}", f"{other} intra-op thread(s)", threads=other),
    ]


def _session(path: Path, v: Variant, threads: int, batch_dims: list[str]) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = v.threads or threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, v.level)
    so.enable_cpu_mem_arena = v.arena
    so.enable_mem_pattern = v.mem_pattern
    entries = {"session.intra_op.allow_spinning": "0", **v.entries}
    for key, value in entries.items():
        so.add_session_config_entry(key, value)
    if v.fixed_batch:
        for dim in batch_dims:
            so.add_free_dimension_override_by_name(dim, 1)
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def _bind(sess: Any, feed: dict[str, np.ndarray]) -> tuple[Any, list[np.ndarray]]:
    """An I/O binding of ``sess`` to ``feed`` and to output buffers allocated once (returned, zeroed)."""
    import onnxruntime as ort

    binding = sess.io_binding()
    for name, array in feed.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array))
    outs = [np.zeros_like(value) for value in sess.run(None, feed)]
    for out, buf in zip(sess.get_outputs(), outs, strict=True):
        binding.bind_ortvalue_output(out.name, ort.OrtValue.ortvalue_from_numpy(buf))
    return binding, outs


def _variant_session(path: Path, v: Variant, threads: int) -> Any:
    import onnxruntime as ort

    probe = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch_dims = sorted({str(i.shape[0]) for i in probe.get_inputs() if i.shape and isinstance(i.shape[0], str)})
    return _session(path, v, threads, batch_dims)


def runner(path: Path, v: Variant, threads: int, feed: dict[str, np.ndarray]) -> Callable[[], object]:
    """A no-argument call running one inference of ``path`` under ``v`` on ``feed``."""
    sess = _variant_session(path, v, threads)
    if not v.io_binding:
        names = [o.name for o in sess.get_outputs()]
        return lambda: sess.run(names, feed)
    binding, _ = _bind(sess, feed)
    return lambda: sess.run_with_iobinding(binding)


def last_outputs(path: Path, v: Variant, threads: int, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``v`` once through its pre-allocated binding and read the bound outputs (a check that binding
    changes speed only, not results)."""
    sess = _variant_session(path, v, threads)
    binding, outs = _bind(sess, feed)
    sess.run_with_iobinding(binding)
    return outs


def model_inputs(spec: ModelSpec, faces: Path | None) -> tuple[dict[str, np.ndarray], str]:
    """The tensor the kiosk feeds ``spec`` and where it came from: a real LFW face through the kiosk's own
    preprocessing when ``faces`` holds LFW, else a fixed pseudo-random image."""
    from kiosk.lab import frames
    from kiosk.models.backends import RuntimeOptions, load_runner
    from kiosk.recognition.detect.yunet import YuNetDetector
    from kiosk.recognition.embed import Embedder

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    origin = "pseudo-random 640x480 image (no LFW data found)"
    labels = None if faces is None else faces / "lfw" / "labels.csv"
    if labels is not None and labels.is_file():
        fs = frames.lfw_frames(faces, 1, 10.0, 0, 0)  # type: ignore[arg-type]
        frame = frames.decode(fs.jpegs[0])
        origin = f"LFW face composed onto a 640x480 frame ({fs.enrol[0][0]})"
    run = load_runner(spec, RuntimeOptions())
    if spec.task == "detect":
        if spec.family != "yunet":
            raise KioskError(f"detector family {spec.family!r} is not supported (yunet only)")
        blob, _, _ = YuNetDetector(spec, run, input_size=load_config(None).detection.input_size)._blob(frame)
        return {spec.input.name or run.input_names[0]: blob}, origin
    cfg = load_config(None)
    from kiosk.recognition.pipeline import Pipeline

    pipe = Pipeline.from_config(cfg)
    found = pipe.detect(frame)
    if found:
        crop = pipe.prepare(frame, found[:1])[0][0]
    else:
        w, h = spec.input.size or (112, 112)
        crop = np.asarray(rng.integers(0, 256, (h, w, 3)), dtype=np.uint8)
    if not found:
        origin += "; no face found: a pseudo-random crop"
    return {spec.input.name or run.input_names[0]: Embedder(spec, run).preprocess([crop])}, origin


def _ignore_round(fn: Callable[[], object]) -> Callable[[int], object]:
    return lambda _round: fn()


def report(model_ids: list[str], threads: int, rounds: int, faces: Path | None, gap_ms: float = 5.0) -> dict[str, Any]:
    manifest = load_manifest(load_config(None).models.manifest)
    loadavg_start = loadavg()
    out: dict[str, Any] = {"command": "python -m tools ort-options " + " ".join(sys.argv[1:]), "models": {}}
    for model_id in model_ids:
        spec = manifest.get(model_id)
        if spec.format != "onnx":
            raise KioskError(f"model '{model_id}' is {spec.format}, not onnx")
        feed, origin = model_inputs(spec, faces)
        vs = variants(threads)
        calls = {v.name: runner(spec.path, v, threads, feed) for v in vs}
        # each round calls every variant once, the order rotated, ``gap_ms`` idle before each call as a camera paces
        samples = interleaved_ms({n: _ignore_round(fn) for n, fn in calls.items()}, rounds, 5, gap_s=gap_ms / 1e3)
        base = dist(samples[BASELINE])
        rows = {}
        for v in vs:
            d = dist(samples[v.name])
            ratio = round(d["median"] / base["median"], 3) if d["median"] and base["median"] else None
            rows[v.name] = {**d, "what": v.what, "vs_baseline": ratio}
        out["models"][model_id] = {"sha256": spec.sha256, "input": origin, "rounds": rounds, "variants": rows}
    mach = describe()
    mach["loadavg_start"], mach["loadavg_end"] = loadavg_start, loadavg()
    out.update({"threads": threads, "gap_ms": gap_ms, "machine": mach, "versions": versions()})
    return out


def format_report(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        f"onnxruntime session options — {m['cpu']}, {m['cores']} cores, load {m['loadavg_start']} → {m['loadavg_end']}"
    ]
    for model_id, body in r["models"].items():
        lines += ["", f"  {model_id} ({body['input']}; {body['rounds']} interleaved rounds, {r['threads']} threads)"]
        lines.append(f"    {'variant':16}{'median':>9}{'p95':>9}{'x base':>8}  what")
        for name, row in body["variants"].items():
            lines.append(
                f"    {name:16}{row['median']:>9.2f}{row['p95']:>9.2f}{row['vs_baseline']:>8.2f}  {row['what']}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools ort-options", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", default="sface,yunet", help="ONNX model ids from the manifest (default sface,yunet)"
    )
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of the baseline (default 2)")
    parser.add_argument("--rounds", type=int, default=100, help="interleaved rounds (default 100)")
    parser.add_argument("--gap-ms", type=float, default=5.0, help="idle ms before each call (default 5)")
    parser.add_argument("--faces", type=Path, default=Path(os.environ.get("KIOSK_TEST_DATA", "../shared/data/faces")))
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.rounds < 1:
        print("ort-options: --threads and --rounds must be at least 1", file=sys.stderr)
        return 2
    try:
        result = report([m for m in args.models.split(",") if m], args.threads, args.rounds, args.faces, args.gap_ms)
    except KioskError as exc:
        print(f"ort-options: {exc}", file=sys.stderr)
        return 2
    print(format_report(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
