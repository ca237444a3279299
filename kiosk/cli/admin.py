"""``kiosk check``, ``kiosk models``, ``kiosk eval``, ``kiosk demo``."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kiosk.authz import current_caller
from kiosk.cli._output import emit_json, table
from kiosk.config import Config
from kiosk.context import Context
from kiosk.errors import ExitCode, InputError, KioskError
from kiosk.gallery import Gallery
from kiosk.gallery.keys import load_cipher
from kiosk.gallery.open import encryption_problem, open_gallery
from kiosk.gallery.permissions import permission_problems
from kiosk.imageio import read_image
from kiosk.models.manifest import load_manifest

if TYPE_CHECKING:
    from kiosk.recognition.pipeline import Pipeline


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
    p.add_argument("--detector", metavar="ID", help="detector model id from the manifest (default: models.detector)")
    p.add_argument(
        "--recognizer", metavar="ID", help="recogniser model id from the manifest (default: models.recognizer)"
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="enrol and identify on built-in public-domain images", description=cmd_demo.__doc__)
    p.add_argument("--source", help="run the loop on this camera/file instead of the built-in clip (e.g. 0)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_demo)


def model_list(cfg: Config) -> list[dict[str, Any]]:
    """Every model of the manifest: id, task, format, licence, sha256, file, whether configured, hash status."""
    manifest = load_manifest(cfg.models.manifest)
    out = []
    for spec in manifest.models.values():
        try:
            spec.verify()
            status = "ok"
        except KioskError as exc:
            status = str(exc)
        active = spec.id in (cfg.models.detector, cfg.models.recognizer)
        out.append(
            {
                "id": spec.id,
                "task": spec.task,
                "format": spec.format,
                "licence": spec.licence,
                "sha256": spec.sha256,
                "file": str(spec.path),
                "active": active,
                "status": status,
            }
        )
    return out


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


def check_results(cfg: Config, *, pipeline: Pipeline | None = None) -> list[dict[str, Any]]:
    """What ``kiosk check`` checks, as a list of {"check", "ok", "detail", ...}; ``pipeline``: one already loaded
    (the web app's), else the configured models are loaded and hash-checked here."""
    checks: list[dict[str, Any]] = [{"check": "config", "ok": True, "detail": str(cfg.origin or "built-in defaults")}]
    gallery, gallery_error = _open_for_check(cfg)
    with Context(cfg, gallery=gallery, pipeline=pipeline) as ctx:
        try:
            pipeline = ctx.pipeline
            for role, info in pipeline.models.items():
                checks.append(
                    {
                        "check": f"model {role}",
                        "ok": True,
                        "detail": f"{info['id']} sha256 {info['sha256'][:12]}",
                    }
                )
        except KioskError as exc:
            checks.append({"check": "models", "ok": False, "detail": str(exc)})
            pipeline = None
        try:
            live = ctx.liveness
            mode = cfg.liveness.mode
            ok = live is None or not cfg.liveness.passive_required or live.passive is not None
            detail = f"mode {mode}" + ("" if ok else ": no passive model configured, every grant will be refused")
            checks.append({"check": "liveness", "ok": ok, "detail": detail})
        except KioskError as exc:
            checks.append({"check": "liveness", "ok": False, "detail": str(exc)})
        checks.append(_check_permissions(cfg))
        if gallery is None:
            checks.append({"check": "gallery", "ok": False, "detail": gallery_error})
        else:
            try:
                problems = gallery.integrity_check()
                counts = gallery.template_counts()
                n_people = len(gallery.list_people())
                detail = f"{cfg.gallery_path}: {n_people} people, " + (
                    ", ".join(f"{n} templates from {m}" for (m, _), n in counts.items()) or "no templates"
                )
                checks.append({"check": "gallery", "ok": not problems, "detail": "; ".join(problems) or detail})
                checks.append(_check_encryption(cfg, gallery))
                checks.append(_check_event_chain(gallery))
                if pipeline is not None:
                    stale = ctx.stale_warning()
                    checks.append({"check": "stale templates", "ok": stale is None, "detail": stale or "none"})
                    spec = pipeline.embedder.spec
                    checks.append(_check_open_set(cfg, pipeline, n_people, counts.get((spec.id, spec.sha256), 0)))
            except KioskError as exc:
                checks.append({"check": "gallery", "ok": False, "detail": str(exc)})
    checks += [_check_camera(cfg), _check_door(cfg)]
    return checks


def _check_open_set(cfg: Config, pipeline: Pipeline, people: int, templates: int) -> dict[str, Any]:
    """The threshold in force for this gallery's size and the expected false grants per stranger it gives.

    Fails when a fixed ``recognition.threshold`` lets strangers in at more than ten times ``recognition.fpir``."""
    threshold = pipeline.accept_threshold(templates)
    expected = pipeline.expected_fpir(templates)
    target = cfg.recognition.fpir
    if cfg.recognition.threshold is not None:
        how = "fixed by recognition.threshold"
    elif pipeline.tail is None:
        how = f"fixed: model {pipeline.embedder.spec.id} has no measured impostor tail"
    elif threshold > pipeline.thresholds.accept:
        how = f"raised from {pipeline.thresholds.accept:.3f} for the gallery's size to keep recognition.fpir {target:g}"
    else:
        how = f"the model's accept threshold (recognition.fpir {target:g} needs no more at this size)"
    rate = "unknown" if expected is None else f"{expected:.1e} (about 1 in {max(1, round(1 / expected)):,})"
    detail = f"{people} people, {templates} templates: threshold {threshold:.3f}, {how}; expected false grants per "
    detail += f"stranger {rate}"
    ok = expected is None or cfg.recognition.threshold is None or expected <= 10 * target
    return {
        "check": "false grants",
        "ok": ok,
        "detail": detail,
        "people": people,
        "templates": templates,
        "threshold": round(threshold, 4),
        "expected_fpir": expected,
        "target_fpir": target,
    }


def _open_for_check(cfg: Config) -> tuple[Gallery | None, str]:
    """The gallery without the start-up refusals (permissions, key, integrity): `check` reports each on its own."""
    relaxed = dataclasses.replace(cfg, gallery=dataclasses.replace(cfg.gallery, check_permissions=False))
    try:
        return open_gallery(relaxed, check=False, need_key=False), ""
    except KioskError as exc:
        return None, str(exc)


def _check_permissions(cfg: Config) -> dict[str, Any]:
    """The data folder 0700 and the gallery files without group/other bits, owned by this user."""
    problems = permission_problems(cfg)
    where = f"{cfg.gallery_path.parent} and the gallery private to {current_caller().user}"
    if not cfg.gallery.check_permissions:
        detail = "not checked at start (gallery.check_permissions: false)" + (": " if problems else "")
        return {"check": "permissions", "ok": True, "detail": detail + "; ".join(problems)}
    return {"check": "permissions", "ok": not problems, "detail": "; ".join(problems) or where}


def _check_encryption(cfg: Config, gallery: Gallery) -> dict[str, Any]:
    """Templates per key against the configured key (loaded and checked here, never printed)."""
    status = gallery.encryption_status()
    counts = ", ".join(
        f"{n} {'unencrypted' if k is None else 'with key ' + k}" for k, n in sorted(status.items(), key=str) if n
    )
    key: str | None = None
    if cfg.gallery.encrypt:
        try:
            key = load_cipher(cfg).key_id
        except KioskError as exc:
            return {"check": "encryption", "ok": False, "detail": str(exc)}
    problem = encryption_problem(status, key)
    state = f"on, key {key}" if key else "off"
    return {"check": "encryption", "ok": problem is None, "detail": problem or f"{state} ({counts or 'no templates'})"}


def _check_event_chain(gallery: Gallery) -> dict[str, Any]:
    report = gallery.verify_events()
    if report.ok:
        head = f", head {report.head_id}" if report.head_id is not None else ""
        return {"check": "event chain", "ok": True, "detail": f"{report.checked} events, chain intact{head}"}
    return {"check": "event chain", "ok": False, "detail": report.reason or f"broken at {report.first_broken_id}"}


def _check_camera(cfg: Config) -> dict[str, Any]:
    """The camera source spec parses (it is not opened: the running kiosk may hold the device)."""
    from kiosk.door.camera import open_source

    try:
        src = open_source(cfg.camera.source, cfg.camera)
    except KioskError as exc:
        return {"check": "camera", "ok": False, "detail": str(exc)}
    kind = "live" if src.live else "replay"
    return {"check": "camera", "ok": True, "detail": f"{src.name} ({kind}; not opened, the kiosk may be using it)"}


def _check_door(cfg: Config) -> dict[str, Any]:
    """The relay driver's library is importable (the pin is not touched: the running kiosk may hold it)."""
    import importlib.util

    needs = {
        "gpiozero": ("gpiozero", "pip install 'face-kiosk[pi]'"),
        "jetson": ("Jetson", "pip install 'face-kiosk[jetson]'"),
    }
    d = cfg.door
    where = f"{d.driver}, relay pin {d.relay_pin} active-{'high' if d.active_high else 'low'}, pulse {d.pulse_s:g} s"
    if d.driver in needs:
        module, hint = needs[d.driver]
        if importlib.util.find_spec(module) is None:
            return {"check": "door", "ok": False, "detail": f"{where}: {module} is not installed ({hint})"}
    return {
        "check": "door",
        "ok": True,
        "detail": where + ("; use `kiosk door test` to click it" if d.driver != "simulated" else ""),
    }


def cmd_eval(args: argparse.Namespace, cfg: Config) -> int:
    """Measure accuracy on labelled photos. --pairs: verification accuracy (10-fold when the CSV has folds),
    TAR at FAR 1e-2..1e-4, ROC AUC. --labels: all-pairs FNMR at FMR 1e-3..1e-6, rank-1 and open-set DIR.
    Embeddings are cached per (image sha256, pipeline fingerprint)."""
    from kiosk.lab.cache import EmbeddingCache, default_cache_path
    from kiosk.lab.evaluate import evaluate_labels, evaluate_pairs
    from kiosk.recognition.pipeline import Pipeline

    csv_path: Path = args.pairs or args.labels
    if not csv_path.is_file():
        raise InputError(f"{csv_path}: file not found")
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
            report = evaluate_pairs(csv_path, threshold=args.threshold, **common)
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
    else:
        print(f"images {r['n_images']} ({r['n_identities']} identities), without a usable face {r['n_failed']}")
        print(f"genuine pairs {r['n_genuine']:,}, impostor pairs {r['n_impostor']:,}")
        for fmr, v in r["fnmr_at_fmr"].items():
            print(
                f"FNMR @ FMR {fmr}: " + ("n/a" if v is None else f"{_pct(v['fnmr'])} (threshold {v['threshold']:.3f})")
            )
        print(f"closed-set rank-1 {_pct(r['rank1'])}   open-set DIR @ FPIR 1e-2 {_pct(r['dir_at_fpir_1e-2'])}")
    print(f"{r['seconds']:.1f} s")


def cmd_demo(args: argparse.Namespace, cfg: Config) -> int:
    """Enrol the astronaut from scikit-image's public-domain photos into a throwaway gallery, then replay a clip
    built from those photos (empty frames, the astronaut moving under changing light, the cameraman as a
    stranger) through the real door loop with the simulated door, printing every decision and door pulse.
    With --source 0 the same loop drives a webcam."""
    from kiosk.lab.demo import run_demo

    code, record = run_demo(cfg, source=args.source, as_json=args.json)
    if args.json:
        emit_json(record)
    return code
