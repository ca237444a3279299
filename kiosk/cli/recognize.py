"""``kiosk enroll``, ``kiosk verify``, ``kiosk identify``."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kiosk.cli._output import emit_json, fmt, table
from kiosk.config import Config
from kiosk.context import Context
from kiosk.enroll import EnrollReport, enroll
from kiosk.errors import ExitCode, FaceError, InputError, NoFaceError
from kiosk.gallery import clean_name
from kiosk.imageio import read_image
from kiosk.recognition.detect import select_faces
from kiosk.recognition.match import cosine
from kiosk.recognition.pipeline import FaceResult, Pipeline


def _when(text: str) -> datetime:
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        msg = f"not an ISO date/time: {text!r} (e.g. 2026-12-31 or 2026-12-31T18:00)"
        raise argparse.ArgumentTypeError(msg) from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def register(sub: Any) -> None:
    p = sub.add_parser("enroll", help="enrol a person from one or more photos", description=cmd_enroll.__doc__)
    p.add_argument("name", help="the person's name (unique, case-insensitive)")
    p.add_argument("images", nargs="*", type=Path, help="photos of the person; bad ones are rejected with a reason")
    p.add_argument("--camera", action="store_true", help="guided capture from the camera instead of photos")
    p.add_argument("--source", help="with --camera: override camera.source (index, device, URL, file)")
    p.add_argument("--frames", type=int, default=5, help="with --camera: good frames to collect (default 5)")
    p.add_argument("--timeout", type=float, default=60.0, help="with --camera: give up after this many seconds")
    p.add_argument("--append", action="store_true", help="add templates to an already enrolled person")
    p.add_argument("--face", type=int, dest="face_index", help="in photos with several faces, use face N (0=leftmost)")
    p.add_argument("--select", choices=["largest", "central"], help="in photos with several faces, pick one this way")
    p.add_argument("--allow-duplicate", action="store_true", help="enrol even if the face matches another person")
    p.add_argument("--valid-from", type=_when, help="access allowed from this date/time (ISO 8601)")
    p.add_argument("--valid-until", type=_when, help="access allowed until this date/time (ISO 8601)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_enroll)

    p = sub.add_parser("verify", help="compare the faces in two photos (1:1)", description=cmd_verify.__doc__)
    p.add_argument("image1", type=Path)
    p.add_argument("image2", type=Path)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "identify", help="find who is in photos (1:N against the gallery)", description=cmd_identify.__doc__
    )
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--all-faces", action="store_true", help="identify every face, not only the selected one")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_identify)


def cmd_enroll(args: argparse.Namespace, cfg: Config) -> int:
    """Enrol NAME from photos. Photos with no face, several faces, poor quality, or a face already enrolled as
    someone else are rejected with their reason; the good ones are stored (all in one transaction)."""
    if args.valid_from and args.valid_until and args.valid_until <= args.valid_from:
        raise InputError("--valid-until must be after --valid-from")
    if bool(args.images) == bool(args.camera):
        raise InputError("give either photos (kiosk enroll NAME IMAGE...) or --camera, not both or neither")
    clean_name(args.name)  # a name the gallery would refuse is refused before the models load
    with Context(cfg) as ctx:
        if args.camera:
            report = _enroll_from_camera(args, cfg, ctx)
        else:
            report = enroll(
                ctx.pipeline,
                ctx.gallery,
                args.name,
                args.images,
                append=args.append,
                face_index=args.face_index,
                select=args.select,
                allow_duplicate=args.allow_duplicate,
            )
        person = report.person
        assert person is not None
        if args.valid_from or args.valid_until:
            ctx.gallery.set_validity(person.id, args.valid_from, args.valid_until)
            person = ctx.gallery.get_person(person.id)
    if args.json:
        emit_json(
            {
                "person": {"id": person.id, "name": person.name, "templates": person.templates},
                "stored": report.stored,
                "images": [v.as_dict() for v in report.verdicts],
            }
        )
    else:
        for v in report.verdicts:
            print(f"  {'ok  ' if v.accepted else 'skip'}  {v.source}: {v.reason}")
        print(
            f"enrolled '{person.name}' (id {person.id}): {report.stored} new template(s), {person.templates} in total"
        )
    return 0


def _enroll_from_camera(args: argparse.Namespace, cfg: Config, ctx: Context) -> EnrollReport:
    """Guided capture: progress on one terminal line, then the same checks and storage as photo enrolment."""
    from kiosk.door.camera import Camera, open_source
    from kiosk.enroll import existing_person, store
    from kiosk.guided import guided_capture

    existing_person(ctx.gallery, args.name, args.append)
    interactive = sys.stderr.isatty()

    def progress(line: str) -> None:
        if interactive:
            sys.stderr.write("\r" + line.ljust(72))
            sys.stderr.flush()

    ctx.pipeline.warmup()
    with Camera(open_source(args.source or cfg.camera.source, cfg.camera), cfg.camera) as cam:
        cam.start()
        good, rejected = guided_capture(
            ctx.pipeline, cam, target=args.frames, timeout_s=args.timeout, progress=progress
        )
    if interactive:
        sys.stderr.write("\n")
    if not good:
        why = ", ".join(f"{n}x {r}" for r, n in sorted(rejected.items(), key=lambda kv: -kv[1])) or "no frames"
        raise FaceError(f"nothing enrolled for '{args.name}': no good frame ({why})")
    return store(ctx.pipeline, ctx.gallery, args.name, good, append=args.append, allow_duplicate=args.allow_duplicate)


def _one_face(pipeline: Pipeline, path: Path, max_pixels: int) -> tuple[FaceResult, int]:
    image = read_image(path, max_pixels=max_pixels)
    faces = pipeline.detect(image)
    if not faces:
        raise NoFaceError(f"{path}: no face found")
    policy = pipeline.cfg.detection.select if pipeline.cfg.detection.select != "all" else "largest"
    chosen = pipeline.analyze_faces(image, select_faces(faces, policy, image.shape))
    return chosen[0], len(faces)


def cmd_verify(args: argparse.Namespace, cfg: Config) -> int:
    """Compare two photos: the cosine score and a verdict — 'the same person' at or above the accept threshold,
    'likely the same person' between the two thresholds, 'not the same person' below the lower one."""
    pipeline = Pipeline.from_config(cfg)
    a, na = _one_face(pipeline, args.image1, cfg.enroll.max_image_pixels)
    b, nb = _one_face(pipeline, args.image2, cfg.enroll.max_image_pixels)
    assert a.embedding is not None and b.embedding is not None
    score = cosine(a.embedding, b.embedding)
    t = pipeline.thresholds
    if score >= t.accept:
        verdict = "the same person"
    elif score >= t.likely:
        verdict = "likely the same person"
    else:
        verdict = "not the same person"
    warnings = [
        f"{p.name}: {n} faces, compared the {cfg.detection.select} one"
        for p, n in ((args.image1, na), (args.image2, nb))
        if n > 1
    ]
    warnings += [
        f"{p.name}: {'; '.join(r.quality.reasons)}" for p, r in ((args.image1, a), (args.image2, b)) if not r.quality.ok
    ]
    if args.json:
        emit_json(
            {
                "score": score,
                "verdict": verdict,
                "thresholds": {"accept": t.accept, "likely": t.likely},
                "warnings": warnings,
                "models": pipeline.models,
            }
        )
    else:
        print(f"score {score:.3f}: {verdict}  (same ≥ {t.accept:.3f}, likely ≥ {t.likely:.3f})")
        for w in warnings:
            print(f"  warning: {w}")
    return 0


def cmd_identify(args: argparse.Namespace, cfg: Config) -> int:
    """Identify the face in each photo against the gallery: the enrolled person, or 'not enrolled', with scores.
    Unreadable photos and photos without a face are reported per photo; the exit status is non-zero if any failed
    (INPUT when every failure was an unreadable file, else NO_FACE)."""
    results: list[dict[str, Any]] = []
    failed = unreadable = 0
    with Context(cfg) as ctx:
        matcher = ctx.matcher()
        stale = ctx.stale_warning()
        for path in args.images:
            try:
                image = read_image(path, max_pixels=cfg.enroll.max_image_pixels)
            except InputError as exc:
                failed += 1
                unreadable += 1
                results.append({"image": str(path), "error": str(exc)})
                continue
            faces = ctx.pipeline.analyze(image, select="all" if args.all_faces else None)
            if not faces:
                failed += 1
                results.append({"image": str(path), "error": "no face found"})
                continue
            for i, fr in enumerate(faces):
                assert fr.embedding is not None
                m = matcher.match(fr.embedding)
                results.append(
                    {
                        "image": str(path),
                        "face": i,
                        "box": [round(float(v), 1) for v in fr.face.box],
                        "match": m.name if m.accepted else None,
                        "score": m.score,
                        "candidate": m.candidate,
                        "runner_up": m.runner_up,
                        "runner_up_score": m.runner_up_score,
                        "threshold": m.threshold,
                        "reason": m.reason,
                        "quality_ok": fr.quality.ok,
                        "quality_reasons": list(fr.quality.reasons),
                    }
                )
    if args.json:
        emit_json({"results": results, "gallery_templates": len(matcher), "stale_warning": stale})
    else:
        rows = []
        for r in results:
            if "error" in r:
                rows.append([Path(r["image"]).name, "-", "error", "-", r["error"]])
                continue
            who = r["match"] or "not enrolled"
            rows.append([Path(r["image"]).name, str(r["face"]), who, fmt(r["score"]), r["reason"]])
        print(table(rows, ["image", "face", "result", "score", "detail"]))
        if stale:
            print(f"warning: {stale}")
    if failed and failed == unreadable:
        return int(ExitCode.INPUT)  # every failure was a file that could not be read
    return int(ExitCode.NO_FACE if failed else ExitCode.OK)
