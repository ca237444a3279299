"""``kiosk bench``: per-stage latency, the real loop's speed, decision latency, 1:N match, cold start, peak RSS."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kiosk.config import Config

DEFAULT_SIZES = "1000,10000,100000"


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"gallery sizes must be 1 or more: {text!r}")
    return sizes


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="measure speed on real faces: stages, end to end, decision latency, 1:N match, cold start, memory",
        description=cmd_bench.__doc__,
        epilog="Faces: --faces DIR, else $KIOSK_TEST_DATA, else <project>/../shared/data/faces (needs "
        "lfw/labels.csv); or --source FILE|DIR. Timings depend on the machine's load: the JSON records the load "
        "average at the start and the end.",
    )
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the full report as JSON here")
    p.add_argument("--frames", type=_positive, default=200, help="frames to measure on (default 200)")
    p.add_argument("--faces", type=Path, metavar="DIR", help="face data folder holding lfw/ (default $KIOSK_TEST_DATA)")
    p.add_argument(
        "--source", type=Path, metavar="FILE|DIR", help="replay this video file or image folder instead of LFW"
    )
    p.add_argument("--threads", type=_positive, help="inference threads (runtime.intra_op_threads, tflite_threads)")
    p.add_argument(
        "--backend",
        choices=("onnx", "tflite"),
        help="use each model's variant for this backend when the manifest has one (sface → sface_tflite)",
    )
    p.add_argument("--detector", metavar="ID", help="detector model id (overrides models.detector)")
    p.add_argument("--recognizer", metavar="ID", help="recogniser model id (overrides models.recognizer)")
    p.add_argument(
        "--gallery-sizes",
        type=_sizes,
        default=_sizes(DEFAULT_SIZES),
        metavar="N,N,...",
        help=f"synthetic gallery sizes for the 1:N match timing (default {DEFAULT_SIZES})",
    )
    p.add_argument("--skip-cold-start", action="store_true", help="do not launch the cold-start process")
    p.add_argument("--seed", type=int, default=0, help="selects the LFW people and the jitter (default 0)")
    p.add_argument(
        "--viewer",
        action="store_true",
        help="also measure the door loop's fps without and with one door-screen preview client (JSON key viewer)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    # The cold-start child (launched by the bench itself): load, warm up, decide on one frame, print timestamps.
    p.add_argument("--cold-start-child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child-data", type=Path, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_bench)


def _overrides(args: argparse.Namespace) -> tuple[str, ...]:
    out: list[str] = []
    for flag, value in (
        ("--threads", args.threads),
        ("--backend", args.backend),
        ("--detector", args.detector),
        ("--recognizer", args.recognizer),
    ):
        if value is not None:
            out += [flag, str(value)]
    return tuple(out)


def cmd_bench(args: argparse.Namespace, cfg: Config) -> int:
    """Measure face-kiosk on this machine, on real faces: LFW public photos composed onto 640x480 frames (one
    face each) or a --source replay. Reports median and p95 of each stage (decode, detect, quality, align, embed,
    match, liveness), the door loop's end-to-end ms per frame and fps, decision latency (face appears → door
    pulse, simulated door), 1:N match time over synthetic galleries, cold start of a fresh process (launch → models
    warm → first decision) and peak RSS. Prints a table; --json writes every figure with the machine, versions and
    configuration."""
    from kiosk.lab import bench

    def measured(data: Path) -> Config:
        return bench.bench_config(
            cfg, data, threads=args.threads, backend=args.backend, detector=args.detector, recognizer=args.recognizer
        )

    if args.cold_start_child is not None:
        data = args.child_data or args.cold_start_child.parent
        child = bench.cold_start_child(measured(data), args.cold_start_child)
        print(json.dumps(child), flush=True)
        return 0
    opts = bench.BenchOptions(
        frames=args.frames,
        faces=args.faces,
        source=args.source,
        gallery_sizes=args.gallery_sizes,
        skip_cold_start=args.skip_cold_start,
        seed=args.seed,
        config_file=None if cfg.origin is None else Path(cfg.origin),
        overrides=_overrides(args),
        viewer=args.viewer,
    )

    def progress(text: str) -> None:
        if not args.quiet:
            print(f"[kiosk bench] {text}", file=sys.stderr, flush=True)

    report = bench.run_bench(measured(cfg.data_dir), opts, progress)
    print(format_table(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"  JSON: {args.json}")
    return 0


# -- output --------------------------------------------------------------------------------------------------------


def _ms(d: Any) -> str:
    if not isinstance(d, dict):
        return f"{d:>10} {'':>10}"
    if d.get("median") is None:
        return f"{'-':>10} {'-':>10}"
    return f"{d['median']:>10.3f} {d['p95']:>10.3f}"


def format_table(r: dict[str, Any]) -> str:
    """The report as a table a person reads first (the JSON has everything)."""
    m, c, lp, fr = r["machine"], r["config"], r["loop"], r["frames"]
    models = c["models"]
    rt = c["runtime"]
    lines = [
        f"kiosk bench — {fr['count']} frames {fr['size'][0]}x{fr['size'][1]} from {fr['origin']}",
        f"  machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['flags']) or 'no listed SIMD flags'}), "
        f"load {m['loadavg_start']} → {m['loadavg_end']}",
        f"  models: {models['detector']['id']} ({models['detector']['format']}) at {c['detection']['input_size']}, "
        f"{models['recognizer']['id']} ({models['recognizer']['format']}); threads intra {rt['intra_op_threads']}, "
        f"inter {rt['inter_op_threads']}, tflite {rt['tflite_threads']}; liveness {c['liveness']}",
        "",
        f"  {'stage (ms)':28}{'median':>10} {'p95':>10} {'n':>6}",
    ]
    for stage, d in r["stages_ms"].items():
        lines.append(f"  {stage:28}{_ms(d)} {d['n'] if isinstance(d, dict) else '':>6}")
    by = r["end_to_end_ms_by_frame"]
    off = r["end_to_end_ms_liveness_off"]
    lines += [
        f"  {'end to end, face frames':28}{_ms(by['face'])} {by['face']['n']:>6}   door loop, liveness "
        f"{lp['liveness']}",
        *(
            f"  {label:28}{_ms(by[key])} {by[key]['n']:>6}"
            for key, label in (("face_embedded", "  recogniser ran"), ("face_not_embedded", "  tracked, not embedded"))
            if key in by
        ),
        f"  {'end to end, empty frames':28}{_ms(by['empty'])} {by['empty']['n']:>6}",
        f"  {'end to end, all frames':28}{_ms(by['all'])} {by['all']['n']:>6}   {r['fps']} fps",
    ]
    if off is not None:
        lines.append(f"  {'  face frames, liveness off':28}{_ms(off['face'])} {off['face']['n']:>6}")
    lines += [
        f"  {'decision: face → pulse':28}{_ms(r['decision_latency_ms'])} {r['decision_latency_ms']['n']:>6}   "
        f"liveness {r['decision_latency_ms']['liveness']}",
        "",
        f"  {'1:N match (ms)':28}{'median':>10} {'p95':>10}",
    ]
    for size, d in r["match_ms"].items():
        lines.append(f"  {int(size):>12,} templates{'':5}{_ms(d)}")
    floor = r.get("recognizer_floor")
    if floor:
        lines.append(
            f"  recogniser floor: {floor['gflop_per_face']} GFLOP / ({floor['core_peak_gflops']} GFLOP/s x "
            f"{floor['threads']}) = {floor['floor_ms']:.2f} ms; embed median {floor['embed_ms_median']:.2f} ms = "
            f"{floor['ratio']:.2f}x"
        )
    cold = r["cold_start"]
    lines.append("")
    if cold is None:
        lines.append("  cold start: skipped")
    else:
        s = cold["since_launch_s"]
        lines.append(
            f"  cold start: {r['cold_start_s']:.2f} s to the first decision (models warm at {s['models_warm']:.2f} s; "
            f"{cold['frames_shown']} frames shown; child peak RSS {cold['peak_rss_mb']} MB)"
        )
    lines.append(f"  peak RSS (door loop process): {r['peak_rss_mb']} MB")
    v = r.get("viewer")
    if v:
        drop = "-" if v["relative_drop"] is None else f"{100 * v['relative_drop']:.1f} %"
        lines.append(
            f"  screen viewer: {v['fps_without']} fps without, {v['fps_with']} fps with one preview client "
            f"(drop {drop}; preview {v['preview']['width']} px, at most {v['preview']['fps_max']:g} fps, encode "
            f"median {v['encode_ms']['median'] if v['encode_ms'] else '-'} ms)"
        )
    return "\n".join(line.rstrip() for line in lines)
