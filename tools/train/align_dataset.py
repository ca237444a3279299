"""``python -m tools align-dataset SRC DST``: a folder of identity photos aligned exactly as the door aligns faces.

SRC holds one sub-folder per person with their photos (jpg/jpeg/png/bmp/webp, any case). Each photo is read by the
kiosk's own reader (``kiosk.imageio.read_image``), its faces found by the configured detector with the door's score
thresholds (``Pipeline.detect``), and the chosen face warped onto the recogniser's landmark template
(``kiosk.recognition.align.align``; arcface_112 → 112x112 for the default sface, ``--recognizer ID`` takes that
manifest model's template, inline ones included). Written: ``DST/<identity>/<stem>.jpg`` (JPEG ``--quality``, 95),
``DST/labels.csv`` (``path,identity``, paths relative to DST: what ``kiosk eval --labels`` and training read) and
``DST/align_report.json``.

Policies (each drop is listed in the report with its reason, paths relative to SRC):

- ``several_faces``: with ``--multi largest`` (default) the largest face is used and the photo counted in
  ``counts.several_faces``; with ``--multi drop`` the photo is dropped.
- ``no_face``: the detector found nothing at the door's thresholds.
- ``unreadable`` / ``too_large``: refused by the kiosk's reader (corrupt, truncated, not an image, a FIFO,
  above ``--max-pixels``, default the config's ``enroll.max_image_pixels``).
- ``face_too_small``: the detector box's shorter side is below ``--min-face`` px (default 40; the same measure as
  the enrolment gate's ``quality.min_face_px``, which is 48): below it the crop is mostly upsampled blur.
- ``quality``: only with ``--quality-gate``: the kiosk's enrolment quality check refused the face (its reasons kept).
- ``duplicate``: a file with the same sha256 as one already taken (in SRC's sorted order): the first is kept, the
  rest dropped, and each (kept identity, dropped identity) pair is counted in ``duplicates`` — a pair across two
  identities usually means a mislabelled photo, worth a look.
- ``too_few_images``: an identity left with fewer than ``--min-images`` (default 2) faces is dropped whole (a single
  photo gives no genuine pair and no margin to learn); its photos are listed with this reason.
- ``bad_name``: a photo whose name would not survive a labels CSV (not UTF-8, control characters, outer spaces).

Ignored, counted and listed under ``ignored``: hidden files and folders, files that are not photos by extension,
sub-folders inside an identity, files at SRC's top level. Identity folders whose names are unsafe (not UTF-8, control
characters, separators, leading/trailing spaces) are refused and listed under ``refused_identities``.

DST must not be SRC, inside it, or hold it. An existing, non-empty DST is refused unless ``--resume`` (photos already
recorded in its report with the same settings and the same sha256 are not detected again; a change of settings is
refused; crops of photos gone from SRC are removed) or ``--force`` (the crops, labels and report a previous run
recorded are removed first; other files are left alone). Every file is written atomically (temporary file + rename);
labels.csv and the report are written at the end and on Ctrl-C, covering the identities finished so far (exit 130).
Nothing in SRC is ever written.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2

from kiosk.config import Config, load_config
from kiosk.errors import ImageTooLargeError, KioskError
from kiosk.imageio import MAX_FILE_BYTES, display, read_image
from kiosk.recognition.align import align
from kiosk.recognition.detect import select_faces
from kiosk.recognition.pipeline import Pipeline
from kiosk.types import Image
from tools import ROOT
from tools.errors import ToolError, run_tool

EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
LABELS, REPORT = "labels.csv", "align_report.json"
DEFAULT_MIN_FACE = 40
DEFAULT_MIN_IMAGES = 2
DEFAULT_JPEG_QUALITY = 95
FACE = "face"  # a photo's outcome when it gave an aligned face
# Per-photo reasons: recorded with the photo's sha256, so --resume can carry them over without detecting again.
PHOTO_REASONS = ("unreadable", "too_large", "no_face", "several_faces", "face_too_small", "quality")


class AlignError(ToolError):
    """A one-line reason align-dataset refused to run: SRC, DST or an option to fix (exit status 2)."""

    code = 2


class AlignWriteError(AlignError):
    """DST could not be written (disk full, permissions): exit status 1."""

    code = 1


@dataclass(frozen=True)
class Options:
    src: Path
    dst: Path
    config: Path | None = None
    manifest: Path | None = None
    detector: str | None = None
    recognizer: str | None = None
    multi: str = "largest"
    min_face: float = DEFAULT_MIN_FACE
    min_images: int = DEFAULT_MIN_IMAGES
    quality_gate: bool = False
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    max_pixels: int | None = None
    resume: bool = False
    force: bool = False
    progress: bool = True


@dataclass
class Photo:
    identity: str
    rel: str  # relative to SRC, with "/"
    path: Path
    out: str  # relative to DST, with "/"


@dataclass
class Outcome:
    photo: Photo
    sha256: str | None
    status: str  # FACE or a drop reason
    detail: str = ""
    faces: int | None = None  # faces the detector found (None: not detected)
    crop: Image | None = field(default=None, repr=False)
    carried: bool = False  # taken from the previous run's report (--resume)


# ------------------------------------------------------------------------------------------------ scanning SRC


def name_problem(name: str) -> str | None:
    """Why a folder or file name cannot become a label path (None: it can)."""
    if name in ("", ".", ".."):
        return "not a name"
    if any(c in name for c in ("/", "\\", "\0")):
        return "holds a path separator"
    if any("\udc80" <= c <= "\udcff" for c in name):  # undecodable bytes, kept by Python as lone surrogates
        return "is not valid UTF-8"
    if not name.isprintable():
        return "holds a control character"
    if name != name.strip():
        return "has leading or trailing spaces"
    return None


def _out_name(stem: str, ext: str, used: set[str]) -> str:
    """``<stem>.jpg``; if two photos share a stem: ``<stem>_<ext>.jpg``, then ``<stem>_N.jpg``."""
    candidates = [f"{stem}.jpg", f"{stem}_{ext.lstrip('.').lower()}.jpg"]
    candidates += [f"{stem}_{i}.jpg" for i in range(2, 10_000)]
    for name in candidates:
        if name.casefold() not in used:
            used.add(name.casefold())
            return name
    raise AlignError(f"too many photos named {stem!r} in one identity")  # pragma: no cover (10,000 same stems)


@dataclass
class Scan:
    identities: dict[str, list[Photo]]
    ignored: list[dict[str, str]]
    refused: list[dict[str, str]]
    bad_names: list[Photo]


def scan(src: Path) -> Scan:
    """Identity folders and their photos, sorted; everything else sorted into ignored / refused with a reason."""
    identities: dict[str, list[Photo]] = {}
    ignored: list[dict[str, str]] = []
    refused: list[dict[str, str]] = []
    bad: list[Photo] = []
    for entry in sorted(src.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            ignored.append({"path": entry.name, "reason": "hidden"})
            continue
        if not entry.is_dir():
            ignored.append({"path": entry.name, "reason": "not in an identity folder"})
            continue
        problem = name_problem(entry.name)
        if problem is not None:
            refused.append({"name": entry.name, "reason": f"identity folder name {problem}"})
            continue
        photos: list[Photo] = []
        used: set[str] = set()
        for f in sorted(entry.iterdir(), key=lambda p: p.name):
            rel = f"{entry.name}/{f.name}"
            if f.name.startswith("."):
                ignored.append({"path": rel, "reason": "hidden"})
            elif f.is_dir():
                ignored.append({"path": rel, "reason": "sub-folder"})
            elif f.suffix.lower() not in EXTS:
                ignored.append({"path": rel, "reason": "not a photo (extension)"})
            elif name_problem(f.stem) is not None:
                bad.append(Photo(entry.name, rel, f, ""))
            else:
                photos.append(Photo(entry.name, rel, f, f"{entry.name}/{_out_name(f.stem, f.suffix, used)}"))
        identities[entry.name] = photos
    return Scan(identities, ignored, refused, bad)


def sha256_of(path: Path) -> str | None:
    """The file's sha256, or None for anything that is not a regular file within the reader's size limit."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE_BYTES:
            return None
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    except OSError:
        return None


# ------------------------------------------------------------------------------------------------ DST


def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def check_paths(src: Path, dst: Path) -> None:
    if not src.exists():
        raise AlignError(f"SRC {display(src)} not found")
    if not src.is_dir():
        raise AlignError(f"SRC {display(src)} is not a folder (expected one sub-folder per identity)")
    rs, rd = src.resolve(), dst.resolve()
    if _inside(rd, rs) or _inside(rs, rd):
        raise AlignError(f"DST {display(dst)} must be outside SRC {display(src)} (and must not hold it)")
    if dst.exists() and not dst.is_dir():
        raise AlignError(f"DST {display(dst)} exists and is not a folder")


def _read_previous(dst: Path) -> dict[str, Any] | None:
    path = dst / REPORT
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        why = exc.__class__.__name__
        raise AlignError(f"{display(path)} cannot be read ({why}): use --force to start over") from None
    if not isinstance(data, dict) or data.get("tool") != "align-dataset":
        raise AlignError(f"{display(path)} is not an align-dataset report: use --force to start over")
    return data


def _safe_out(dst: Path, rel: Any) -> Path | None:
    """A previous report's output path, only if it is a plain path inside DST (a hand-edited report must not make
    --force delete anything else)."""
    if not isinstance(rel, str) or not rel or "\0" in rel or os.path.isabs(rel) or ".." in rel.split("/"):
        return None
    return dst / rel


def prepare_dst(opts: Options, settings: dict[str, Any]) -> dict[str, Any] | None:
    """Refuse a non-empty DST unless --resume / --force; returns the previous report to resume from."""
    dst = opts.dst
    if not dst.exists() or not any(dst.iterdir()):
        return None
    if opts.force:  # remove what the previous run recorded, nothing else; an unreadable report is just replaced
        try:
            previous = _read_previous(dst)
        except AlignError:
            previous = None
        if previous is not None:
            _remove_stale(dst, previous, set())
        for name in (LABELS, REPORT):
            (dst / name).unlink(missing_ok=True)
        return None
    previous = _read_previous(dst)
    if opts.resume:
        if previous is None:
            raise AlignError(
                f"DST {display(dst)} is not empty and has no {REPORT} to resume from: choose an empty DST or --force"
            )
        old = previous.get("settings")
        old = old if isinstance(old, dict) else {}
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if changed:
            raise AlignError(
                f"DST {display(dst)} was aligned with other settings ({', '.join(changed)}): "
                "re-run with the same ones, or --force to start over"
            )
        return previous
    raise AlignError(f"DST {display(dst)} is not empty: --resume to continue it, --force to replace its outputs")


def _records(report: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The dict entries of a previous report's list ``key`` (a hand-edited report yields what is well formed)."""
    items = report.get(key)
    return [r for r in items if isinstance(r, dict)] if isinstance(items, list) else []


def _rmdir_if_empty(folder: Path, dst: Path) -> None:
    if folder != dst and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _remove_stale(dst: Path, previous: dict[str, Any], kept: set[str]) -> None:
    """Remove the crops a previous run recorded that this run did not write (their photo left SRC)."""
    for rec in _records(previous, "written"):
        rel = rec.get("path")
        out = _safe_out(dst, rel)
        if out is not None and rel not in kept:
            out.unlink(missing_ok=True)
            _rmdir_if_empty(out.parent, dst)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise AlignWriteError(f"cannot write {display(path)}: {exc.strerror or exc}") from None


# ------------------------------------------------------------------------------------------------ aligning


class Aligner:
    """One photo → an aligned crop, or the reason it gives none. The door's detector, thresholds and template."""

    def __init__(self, pipeline: Pipeline, opts: Options, max_pixels: int) -> None:
        self.pipeline, self.opts, self.max_pixels = pipeline, opts, max_pixels

    def process(self, photo: Photo, sha: str | None) -> Outcome:
        try:
            image = read_image(photo.path, max_pixels=self.max_pixels)
        except ImageTooLargeError as exc:
            return Outcome(photo, sha, "too_large", _strip_name(str(exc), photo.path))
        except KioskError as exc:
            return Outcome(photo, sha, "unreadable", _strip_name(str(exc), photo.path))
        faces = self.pipeline.detect(image)
        n = len(faces)
        if n == 0:
            return Outcome(photo, sha, "no_face", faces=0)
        if n > 1 and self.opts.multi == "drop":
            return Outcome(photo, sha, "several_faces", f"{n} faces", faces=n)
        face = select_faces(faces, "largest", image.shape)[0]
        side = min(face.width, face.height)
        if side < self.opts.min_face:
            return Outcome(photo, sha, "face_too_small", f"{side:.0f} px < {self.opts.min_face:g} px", faces=n)
        if self.opts.quality_gate:
            crop, report = self.pipeline.prepare(image, [face])[0]
            if not report.ok:
                return Outcome(photo, sha, "quality", "; ".join(report.reasons), faces=n)
        else:
            crop = align(image, face, self.pipeline.template)
        return Outcome(photo, sha, FACE, faces=n, crop=crop)


def _strip_name(message: str, path: Path) -> str:
    """The reader's message without its leading absolute path (the report names files relative to SRC)."""
    prefix = f"{display(path)}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def encode_jpeg(crop: Image, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover (OpenCV always encodes a uint8 BGR array)
        raise AlignWriteError("OpenCV could not encode a crop as JPEG")
    return bytes(buf.tobytes())


# ------------------------------------------------------------------------------------------------ the run


def load(opts: Options) -> tuple[Config, Pipeline]:
    """The kiosk config (parsed once) with the command line's model choices, and its pipeline."""
    cfg = load_config(opts.config)
    models = cfg.models
    if opts.manifest is not None:
        models = replace(models, manifest=opts.manifest)
    if opts.detector:
        models = replace(models, detector=opts.detector)
    if opts.recognizer:
        models = replace(models, recognizer=opts.recognizer)
    cfg = replace(cfg, models=models)
    return cfg, Pipeline.from_config(cfg)


def settings_of(opts: Options, cfg: Config, pipeline: Pipeline, max_pixels: int) -> dict[str, Any]:
    """Everything that changes one photo's outcome or crop (compared on --resume)."""
    return {
        "detector": pipeline.detector.spec.id,
        "detector_sha256": pipeline.detector.spec.sha256,
        "template_of": pipeline.embedder.spec.id,
        "template_size": list(pipeline.template.size),
        "template_points": [[round(float(v), 4) for v in p] for p in pipeline.template.points],
        "score_threshold": pipeline.score_threshold,
        "retry_threshold": pipeline.retry_threshold,
        "detection_input_size": cfg.detection.input_size,
        "multi": opts.multi,
        "min_face_px": opts.min_face,
        "quality_gate": opts.quality_gate,
        "quality_config": {k: getattr(cfg.quality, k) for k in cfg.quality.__dataclass_fields__}
        if opts.quality_gate
        else None,
        "jpeg_quality": opts.jpeg_quality,
        "max_pixels": max_pixels,
    }


def kiosk_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def _previous_records(previous: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """source path → the previous run's record of it (written or dropped per photo), for --resume."""
    out: dict[str, dict[str, Any]] = {}
    if previous is None:
        return out
    for rec in _records(previous, "written"):
        if isinstance(rec.get("source"), str):
            out[rec["source"]] = {**rec, "status": FACE}
    for rec in _records(previous, "dropped"):
        if not isinstance(rec.get("path"), str):
            continue
        if rec.get("reason") in PHOTO_REASONS:
            out[rec["path"]] = {**rec, "status": rec["reason"]}
        elif rec.get("reason") == "too_few_images":  # the photo itself gave a face; its identity was too small
            out[rec["path"]] = {**rec, "status": FACE}
    return out


class Run:
    """One pass over SRC: per-identity outcomes, crops written identity by identity, then labels and report."""

    def __init__(self, opts: Options, aligner: Aligner, previous: dict[str, Any] | None) -> None:
        self.opts, self.aligner = opts, aligner
        self.previous = _previous_records(previous)
        self.seen: dict[str, str] = {}  # sha256 -> source path kept
        self.pairs: Counter[tuple[str, str]] = Counter()
        self.done: list[Outcome] = []
        self.identities_out: list[str] = []
        self.finished: set[str] = set()
        self.processed = 0

    def outcome(self, photo: Photo) -> Outcome:
        sha = sha256_of(photo.path)
        if sha is not None:
            if sha in self.seen:
                kept = self.seen[sha]
                self.pairs[(kept.split("/", 1)[0], photo.identity)] += 1
                return Outcome(photo, sha, "duplicate", f"same file as {kept}")
            self.seen[sha] = photo.rel
        prev = self.previous.get(photo.rel)
        # sha None (not a regular file, or not readable): the reader refused it before and would again.
        if prev is not None and prev.get("sha256") == sha:
            faces = prev.get("faces")
            return Outcome(
                photo,
                sha,
                str(prev["status"]),
                str(prev.get("detail", "")) if prev["status"] != FACE else "",
                faces=faces if isinstance(faces, int) else None,
                carried=True,
            )
        self.processed += 1
        return self.aligner.process(photo, sha)

    def identity(self, name: str, photos: list[Photo], tick: Callable[[], object]) -> None:
        outcomes: list[Outcome] = []
        for photo in photos:
            outcomes.append(self.outcome(photo))
            tick()
        ok = [o for o in outcomes if o.status == FACE]
        dst = self.opts.dst
        if len(ok) < self.opts.min_images:
            for o in ok:
                o.status, o.detail, o.crop = "too_few_images", f"{len(ok)} < --min-images {self.opts.min_images}", None
                (dst / o.photo.out).unlink(missing_ok=True)  # left by an earlier run with more photos
            _rmdir_if_empty(dst / name, dst)
        else:
            for o in ok:
                target = dst / o.photo.out
                if o.crop is None and target.is_file():
                    continue  # carried over, crop already there
                if o.crop is None:  # carried as a face but its crop is missing: align it again
                    self.processed += 1
                    fresh = self.aligner.process(o.photo, o.sha256)
                    o.status, o.detail, o.faces, o.crop = fresh.status, fresh.detail, fresh.faces, fresh.crop
                    if o.crop is None:
                        continue
                atomic_write(target, encode_jpeg(o.crop, self.opts.jpeg_quality))
                o.crop = None  # written: no need to keep the pixels
            if any(o.status == FACE for o in outcomes):
                self.identities_out.append(name)
        self.done.extend(outcomes)
        self.finished.add(name)


def build_report(
    opts: Options,
    run: Run,
    found: Scan,
    settings: dict[str, Any],
    pipeline: Pipeline,
    seconds: float,
    interrupted: bool,
) -> dict[str, Any]:
    written = [o for o in run.done if o.status == FACE]
    dropped = [o for o in run.done if o.status != FACE] + [
        Outcome(p, None, "bad_name", "file name would not survive a labels CSV") for p in found.bad_names
    ]
    photos_in = sum(len(v) for v in found.identities.values()) + len(found.bad_names)
    return {
        "tool": "align-dataset",
        "src": str(opts.src),
        "kiosk_commit": kiosk_commit(),
        "models": {
            "detector": {"id": pipeline.detector.spec.id, "sha256": pipeline.detector.spec.sha256},
            "template_of": {"id": pipeline.embedder.spec.id, "sha256": pipeline.embedder.spec.sha256},
            "template": pipeline.embedder.spec.align_template
            if isinstance(pipeline.embedder.spec.align_template, str)
            else "inline",
        },
        "settings": settings,
        "min_images": opts.min_images,
        "interrupted": interrupted,
        "seconds": round(seconds, 2),
        "counts": {
            "photos_in": photos_in,
            "faces_written": len(written),
            "dropped": dict(sorted(Counter(o.status for o in dropped).items())),
            "ignored": dict(sorted(Counter(i["reason"] for i in found.ignored).items())),
            "identities_in": len(found.identities),
            "identities_out": len(run.identities_out),
            "identities_refused": len(found.refused),
            "several_faces": sum(1 for o in run.done if (o.faces or 0) > 1),
            "detected_this_run": run.processed,
            "carried_over": sum(1 for o in run.done if o.carried),
        },
        "duplicates": [{"kept": a, "dropped": b, "count": n} for (a, b), n in sorted(run.pairs.items())],
        "refused_identities": found.refused,
        "written": [
            {
                "path": o.photo.out,
                "identity": o.photo.identity,
                "source": o.photo.rel,
                "sha256": o.sha256,
                "faces": o.faces,
            }
            for o in written
        ],
        "dropped": [
            {
                "path": o.photo.rel,
                "identity": o.photo.identity,
                "reason": o.status,
                "detail": o.detail,
                "sha256": o.sha256,
                "faces": o.faces,
            }
            for o in dropped
        ],
        "ignored": found.ignored,
    }


def write_outputs(dst: Path, report: dict[str, Any]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "identity"])
    for rec in sorted(report["written"], key=lambda r: r["path"]):
        w.writerow([rec["path"], rec["identity"]])
    atomic_write(dst / LABELS, buf.getvalue().encode("utf-8"))
    try:
        text = json.dumps(report, indent=1, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not UTF-8 (a lone surrogate): escape every non-ASCII character
        text = json.dumps(report, indent=1).encode("ascii")
    atomic_write(dst / REPORT, text + b"\n")


def summary(report: dict[str, Any], dst: Path) -> str:
    c = report["counts"]
    lines = [
        f"align-dataset: {c['photos_in']} photos of {c['identities_in']} identities -> {c['faces_written']} faces of "
        f"{c['identities_out']} identities in {display(dst)} ({report['seconds']:.1f} s; "
        f"detected {c['detected_this_run']}, carried over {c['carried_over']})"
    ]
    dropped = ", ".join(f"{k} {v}" for k, v in c["dropped"].items()) or "none"
    lines.append(f"  dropped: {dropped}")
    if c["ignored"]:
        lines.append("  ignored: " + ", ".join(f"{k} {v}" for k, v in c["ignored"].items()))
    if c["several_faces"]:
        lines.append(f"  photos with several faces: {c['several_faces']} (--multi {report['settings']['multi']})")
    for d in report["duplicates"]:
        lines.append(f"  duplicate files: {d['count']} of {display(d['kept'])} again under {display(d['dropped'])}")
    for r in report["refused_identities"]:
        lines.append(f"  refused identity {display(r['name'])}: {r['reason']}")
    if report["interrupted"]:
        lines.append("  interrupted: labels.csv and the report cover the identities finished; --resume continues")
    return "\n".join(lines)


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm  # type: ignore[import-untyped]

    return tqdm(total=total, unit="photo", file=sys.stderr, disable=not (enabled and sys.stderr.isatty()))


def run(opts: Options) -> tuple[dict[str, Any], int]:
    """Align SRC into DST; returns the report and the exit status (0, or 130 when interrupted)."""
    check_paths(opts.src, opts.dst)
    found = scan(opts.src)
    if not found.identities:
        why = f" ({len(found.refused)} refused: unsafe names)" if found.refused else ""
        raise AlignError(f"SRC {display(opts.src)} has no identity sub-folders{why}: expected SRC/<person>/<photo>")
    cfg, pipeline = load(opts)
    max_pixels = opts.max_pixels or cfg.enroll.max_image_pixels
    settings = settings_of(opts, cfg, pipeline, max_pixels)
    previous = prepare_dst(opts, settings)
    opts.dst.mkdir(parents=True, exist_ok=True)
    job = Run(opts, Aligner(pipeline, opts, max_pixels), previous)
    t0 = time.monotonic()
    interrupted = False
    bar = _progress(sum(len(v) for v in found.identities.values()), opts.progress)
    try:
        for name, photos in found.identities.items():
            job.identity(name, photos, lambda: bar.update(1))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    if interrupted:  # the report covers the identities finished; the unfinished one is not listed
        found = replace(
            found,
            identities={k: v for k, v in found.identities.items() if k in job.finished},
            bad_names=[p for p in found.bad_names if p.identity in job.finished],
        )
    report = build_report(opts, job, found, settings, pipeline, time.monotonic() - t0, interrupted)
    if previous is not None and not interrupted:  # --resume: crops of photos gone from SRC since
        _remove_stale(opts.dst, previous, {r["path"] for r in report["written"]})
    write_outputs(opts.dst, report)
    print(summary(report, opts.dst))
    if interrupted:
        return report, 130
    if not report["counts"]["faces_written"]:
        raise AlignError(
            f"no identity kept --min-images {opts.min_images} aligned faces: nothing written "
            f"(reasons in {display(opts.dst / REPORT)})",
            code=1,
        )
    return report, 0


# ------------------------------------------------------------------------------------------------ command line


def parse_args(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m tools align-dataset",
        description="Align a folder of identity photos (SRC/<person>/<photo>) with the kiosk's own detector and "
        "template into DST/<person>/<photo>.jpg, DST/labels.csv and DST/align_report.json.",
    )
    p.add_argument("src", type=Path, help="one sub-folder per identity, holding that person's photos")
    p.add_argument("dst", type=Path, help="output folder (empty or new; see --resume / --force)")
    p.add_argument("--config", type=Path, help="kiosk config (detector, thresholds, quality); default $KIOSK_CONFIG")
    p.add_argument("--manifest", type=Path, help="model manifest; default the config's (models/manifest.yaml)")
    p.add_argument("--detector", help="detector model id (default: the config's)")
    p.add_argument("--recognizer", help="align onto this recogniser's template (default: the config's recogniser)")
    p.add_argument("--multi", choices=("largest", "drop"), default="largest", help="a photo with several faces")
    p.add_argument(
        "--min-face",
        type=float,
        default=DEFAULT_MIN_FACE,
        metavar="PX",
        help=f"drop faces whose detector box's shorter side is below PX (default {DEFAULT_MIN_FACE})",
    )
    p.add_argument(
        "--min-images",
        type=int,
        default=DEFAULT_MIN_IMAGES,
        metavar="N",
        help=f"drop identities left with fewer than N faces (default {DEFAULT_MIN_IMAGES})",
    )
    p.add_argument("--quality-gate", action="store_true", help="drop faces the kiosk's enrolment check refuses")
    p.add_argument("--quality", type=int, default=DEFAULT_JPEG_QUALITY, help="JPEG quality 1..100 (default 95)")
    p.add_argument("--max-pixels", type=int, help="refuse larger images (default: the config's enroll limit)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run into the same DST")
    p.add_argument("--force", action="store_true", help="replace a previous run's outputs in DST")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if a.resume and a.force:
        raise AlignError("--resume and --force exclude each other")
    if not 1 <= a.quality <= 100:
        raise AlignError(f"--quality must be within 1..100, got {a.quality}")
    if not a.min_face >= 1:
        raise AlignError(f"--min-face must be at least 1 px, got {a.min_face:g}")
    if a.min_images < 1:
        raise AlignError(f"--min-images must be at least 1, got {a.min_images}")
    if a.max_pixels is not None and a.max_pixels < 1:
        raise AlignError(f"--max-pixels must be at least 1, got {a.max_pixels}")
    return Options(
        src=a.src,
        dst=a.dst,
        config=a.config,
        manifest=a.manifest,
        detector=a.detector,
        recognizer=a.recognizer,
        multi=a.multi,
        min_face=a.min_face,
        min_images=a.min_images,
        quality_gate=a.quality_gate,
        jpeg_quality=a.quality,
        max_pixels=a.max_pixels,
        resume=a.resume,
        force=a.force,
        progress=not a.no_progress,
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    return run_tool("align-dataset", lambda: run(parse_args(args))[1])


if __name__ == "__main__":
    sys.exit(main())
