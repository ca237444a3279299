"""``kiosk check``, ``kiosk models``, ``kiosk eval``, ``kiosk demo``."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kiosk.checks import check_results, model_list
from kiosk.cli._output import emit_json, table
from kiosk.config import Config
from kiosk.errors import ExitCode, InputError, KioskError
from kiosk.imageio import read_image

if TYPE_CHECKING:
    pass


def register(sub: Any) -> None:
    p = sub.add_parser("check", help="validate config, model hashes and the gallery", description=cmd_check.__doc__)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("models", help="list the models in the manifest", description=cmd_models.__doc__)
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("eval", help="measure accuracy on labelled photos", description=cmd_eval.__doc__)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--pairs", type=Path, help="CSV with columns path1,path2,same[,fold]")
    mode.add_argument("--labels", type=Path, help="CSV with columns path,identity (all-pairs protocol)")
    p.add_argument("--root", type=Path, help="folder the CSV paths are relative to (default: the CSV's folder)")
    p.add_argument("--json", type=Path, dest="json_out", metavar="OUT", help="write the full report as JSON here")
    p.add_argument("--plot", type=Path, metavar="OUT.png", help="write score histograms and the ROC as a PNG")
    p.add_argument("--threshold", type=float, help="also report accuracy, FMR and FNMR at this threshold")
    p.add_argument(
        "--select",
        choices=["largest", "central"],
        default="central",
        help="which face to use when a photo has several (default: central, as in LFW)",
    )
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    p.add_argument(
        "--calibrate",
        type=Path,
        metavar="FIT.csv",
        help="--pairs: also report a calibrated P(same person), fitted on this other pairs or labels CSV",
    )
    p.add_argument(
        "--calibration-features",
        choices=["cosine", "embedding"],
        default="cosine",
        help="what P(same) is fitted on: the cosine (Platt scaling, default) or the product of the two embeddings",
    )
    p.add_argument("--calibration-root", type=Path, metavar="DIR", help="folder FIT.csv's paths are relative to")
    p.add_argument(
        "--scores", type=Path, metavar="OUT.csv", help="--pairs: write path1,path2,same,cosine,p_same per pair"
    )
    p.add_argument("--detector", metavar="ID", help="detector model id from the manifest (default: models.detector)")
    p.add_argument(
        "--recognizer", metavar="ID", help="recogniser model id from the manifest (default: models.recognizer)"
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="enrol and identify on built-in public-domain images", description=cmd_demo.__doc__)
    p.add_argument("--source", help="run the loop on this camera/file instead of the built-in clip (e.g. 0)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument(
        "--web",
        action="store_true",
        help="replay the clip on a loop with the door screen and the admin app (kiosk web) running; prints the URLs",
    )
    p.add_argument(
        "--fleet",
        action="store_true",
        help="a site on this machine: a hub and two doors (own processes); enrol and remove at the hub",
    )
    p.add_argument("--data-dir", type=Path, help="--web: the demo's folder (default ~/.local/share/face-kiosk-demo)")
    p.add_argument("--listen", metavar="HOST:PORT", help="--web: where kiosk web listens (default 127.0.0.1:8080)")
    p.set_defaults(func=cmd_demo)


def cmd_models(args: argparse.Namespace, cfg: Config) -> int:
    """List the models in the manifest with their task, format, licence and hash status."""
    out = model_list(cfg)
    rows = [
        [
            m["id"] + (" *" if m["active"] else ""),
            m["task"],
            m["format"],
            m["licence"],
            m["sha256"][:12],
            "ok" if m["status"] == "ok" else "BAD",
        ]
        for m in out
    ]
    if args.json:
        emit_json(out)
    else:
        print(table(rows, ["model (* = configured)", "task", "format", "licence", "sha256", "file"]))
    return 0


def cmd_check(args: argparse.Namespace, cfg: Config) -> int:
    """Validate the config, the configured models' hashes, the gallery (PRAGMA integrity_check, stale templates),
    its permissions, its encryption against the configured key and its event hash chain, the camera source and
    the relay driver (neither is opened). Exits non-zero when anything is wrong."""
    checks = check_results(cfg)
    ok = all(c["ok"] for c in checks)
    if args.json:
        emit_json({"ok": ok, "checks": checks})
    else:
        for c in checks:
            print(f"{'ok  ' if c['ok'] else 'FAIL'}  {c['check']}: {c['detail']}")
    return 0 if ok else int(ExitCode.FAILURE)


def cmd_eval(args: argparse.Namespace, cfg: Config) -> int:
    """Measure accuracy on labelled photos. --pairs: verification accuracy (10-fold when the CSV has folds),
    TAR at FAR 1e-2..1e-4, ROC AUC. --labels: all-pairs FNMR at FMR 1e-3..1e-6, rank-1 and open-set DIR.
    --calibrate FIT.csv (with --pairs): a logistic P(same) fitted on another set, applied to this one.
    Embeddings are cached per (image sha256, pipeline fingerprint)."""
    from kiosk.lab.cache import EmbeddingCache, default_cache_path
    from kiosk.lab.evaluate import evaluate_labels, evaluate_pairs, fit_calibration_csv
    from kiosk.models.manifest import sha256_file
    from kiosk.recognition.pipeline import Pipeline

    csv_path: Path = args.pairs or args.labels
    if not csv_path.is_file():
        raise InputError(f"{csv_path}: file not found")
    if args.labels and (args.calibrate or args.scores):
        raise InputError("--calibrate and --scores work on a --pairs evaluation (a labels file lists no pairs)")
    if args.calibrate:
        if not args.calibrate.is_file():
            raise InputError(f"{args.calibrate}: file not found")
        if sha256_file(args.calibrate) == sha256_file(csv_path):
            raise InputError(
                f"{args.calibrate}: same content as the evaluated {csv_path}; fit the calibration on another set than "
                "the one it is measured on"
            )
    cfg = dataclasses.replace(
        cfg,
        models=dataclasses.replace(
            cfg.models,
            detector=args.detector or cfg.models.detector,
            recognizer=args.recognizer or cfg.models.recognizer,
        ),
    )
    pipeline = Pipeline.from_config(cfg)

    def embed(path: Path) -> tuple[np.ndarray | None, str | None]:
        try:
            image = read_image(path, max_pixels=cfg.enroll.max_image_pixels)
        except KioskError as exc:
            return None, str(exc)
        faces = pipeline.analyze(image, select=args.select)
        if not faces or faces[0].embedding is None:
            return None, "no face found"
        return faces[0].embedding, None

    cache = EmbeddingCache(None if args.no_cache else default_cache_path())
    common: dict[str, Any] = dict(
        root=args.root,
        embed=embed,
        # The face-selection policy and the pixel limit change which embedding an image gets: part of the key.
        fingerprint=f"{pipeline.fingerprint}:{args.select}:{cfg.enroll.max_image_pixels}",
        cache=cache,
        models=pipeline.models,
        plot=args.plot,
    )
    with cache:
        if args.pairs:
            calibration = None
            if args.calibrate:
                calibration = fit_calibration_csv(
                    args.calibrate,
                    features=args.calibration_features,
                    root=args.calibration_root,
                    **{k: common[k] for k in ("embed", "fingerprint", "cache")},
                )
            report = evaluate_pairs(
                csv_path, threshold=args.threshold, calibration=calibration, scores_csv=args.scores, **common
            )
            if calibration is not None:
                report["calibration"]["p_same_at"] = calibration.p_same_at(pipeline.embedder.spec.thresholds)
        else:
            report = evaluate_labels(csv_path, **common)
    report["config"] = {
        "detector": cfg.models.detector,
        "recognizer": cfg.models.recognizer,
        "select": args.select,
    }
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    _print_eval(report)
    return 0


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * float(v):.2f} %"


def _print_eval(r: dict[str, Any]) -> None:
    if "n_pairs" in r:
        std = "" if r.get("accuracy_std") is None else f" ± {_pct(r['accuracy_std'])}"
        print(f"pairs {r['n_pairs']}, images without a usable face {r['n_failed']}")
        acc = f"accuracy {_pct(r['accuracy_mean'])}{std}"
        print(f"{acc}   best threshold {r['threshold']:.3f}   ROC AUC {r['roc_auc']:.4f}")
        for far, v in r["tar_at_far"].items():
            print(
                f"TAR @ FAR {far}: "
                + (
                    "n/a (too few impostor pairs)"
                    if v is None
                    else f"{_pct(v['tar'])} (threshold {v['threshold']:.3f})"
                )
            )
        if "at_threshold" in r:
            a = r["at_threshold"]
            rates = f"accuracy {_pct(a['accuracy'])}, FMR {_pct(a['fmr'])}, FNMR {_pct(a['fnmr'])}"
            print(f"at threshold {a['threshold']:.3f}: {rates}")
        if "calibration" in r:
            _print_calibration(r["calibration"])
    else:
        print(f"images {r['n_images']} ({r['n_identities']} identities), without a usable face {r['n_failed']}")
        print(f"genuine pairs {r['n_genuine']:,}, impostor pairs {r['n_impostor']:,}")
        for fmr, v in r["fnmr_at_fmr"].items():
            print(
                f"FNMR @ FMR {fmr}: " + ("n/a" if v is None else f"{_pct(v['fnmr'])} (threshold {v['threshold']:.3f})")
            )
        print(f"closed-set rank-1 {_pct(r['rank1'])}   open-set DIR @ FPIR 1e-2 {_pct(r['dir_at_fpir_1e-2'])}")
    print(f"{r['seconds']:.1f} s")


def _print_calibration(c: dict[str, Any]) -> None:
    fitted, applied = c["fitted_on"], c["applied"]
    model = (
        f"P(same) = σ({c['coefficients'][0]:.2f}·cos {'-' if c['intercept'] < 0 else '+'} {abs(c['intercept']):.2f})"
        if c["features"] == "cosine"
        else f"P(same) over a⊙b: {c['n_coefficients']} weights, norm {c['coefficient_norm']:.1f}"
    )
    counts = f"{fitted['n_genuine']} genuine, {fitted['n_impostor']} impostor"
    print(f"calibration: {model}, fitted on {fitted['file']} ({counts})")
    on_fit = c["fit"]["metrics"]
    if applied.get("n_pairs"):
        print(
            f"  log-loss {applied['log_loss']:.3f} here ({on_fit['log_loss']:.3f} on the fit set)   "
            f"accuracy at p≥0.5 {_pct(applied['accuracy_at_0.5'])} ({_pct(on_fit['accuracy_at_0.5'])})   "
            f"Brier {applied['brier']:.4f}   ECE {applied['ece']:.3f}"
        )
    if c.get("p_same_at"):
        print(
            "  " + "   ".join(f"P(same | {k} {v['cosine']:.3f}) {v['p_same']:.3f}" for k, v in c["p_same_at"].items())
        )


def cmd_demo(args: argparse.Namespace, cfg: Config) -> int:
    """Enrol the astronaut from scikit-image's public-domain photos into a throwaway gallery, then replay a clip
    built from those photos (empty frames, the astronaut moving under changing light, the cameraman as a
    stranger) through the real door loop with the simulated door, printing every decision and door pulse.
    With --source 0 the same loop drives a webcam. With --web the clip plays on a loop with the door screen and
    the admin app beside it, nobody enrolled, until Ctrl-C (make demo). With --fleet: a hub and two doors as their
    own processes; the astronaut is enrolled, then removed, at the hub, and both doors follow."""
    from kiosk.lab.demo import run_demo, run_web_demo

    if args.fleet:
        from kiosk.lab.fleet_demo import run_fleet_demo

        code, record = run_fleet_demo(cfg, as_json=args.json, keep=args.data_dir)
        if args.json:
            emit_json(record)
        return code
    if args.web:
        return run_web_demo(cfg, data_dir=args.data_dir, listen=args.listen)
    code, record = run_demo(cfg, source=args.source, as_json=args.json)
    if args.json:
        emit_json(record)
    return code
