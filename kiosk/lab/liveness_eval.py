"""``kiosk eval-liveness``: presentation-attack detection measured in the ISO/IEC 30107-3 vocabulary.

Each CSV row is one presentation (an image, or a video counted once): ``path,label,attack_type`` with label
``bona_fide`` or ``attack``. A presentation's score is the live-face probability of the layer measured; the
presentation is classified bona fide when its score is at least the threshold. Then

- APCER (per attack type) = the fraction of that type's attack presentations classified bona fide;
- BPCER = the fraction of bona fide presentations classified as attacks;
- a presentation where no face could be found (or the file could not be read) is a failure to acquire: it is not in
  either rate and is counted separately, as 30107-3 asks.

Scoring lives in the CLI (it needs the models); this module reads the CSV and does the arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiosk.errors import InputError
from kiosk.imageio import display
from kiosk.lab.evaluate import _plain, _read_csv, _short, check_path, outside_root

BONA_FIDE = "bona_fide"
ATTACK = "attack"
LABELS = (BONA_FIDE, ATTACK)
UNSPECIFIED = "unspecified"
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})
CURVE_STEPS = 101  # thresholds 0.00, 0.01, ..., 1.00
BPCER_AT = {"bpcer20": 0.05, "bpcer100": 0.01}  # BPCER at APCER (worst attack type) <= 5 % and <= 1 %


@dataclass(frozen=True)
class Presentation:
    line: int
    path: str
    label: str
    attack_type: str  # "" for bona fide

    @property
    def is_video(self) -> bool:
        return Path(self.path).suffix.lower() in VIDEO_SUFFIXES


@dataclass
class Scored:
    """One presentation's result: ``score`` is None when it failed to acquire (``reason`` says why)."""

    item: Presentation
    score: float | None
    reason: str = ""
    frames: int = 0  # frames read (1 for an image)
    faces: int = 0  # frames with a face
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.item.path,
            "label": self.item.label,
            "attack_type": self.item.attack_type or None,
            "score": None if self.score is None else round(self.score, 6),
            "frames": self.frames,
            "faces": self.faces,
        }
        if self.reason:
            out["reason"] = self.reason
        out.update(self.extra)
        return out


def read_presentations(csv_path: Path) -> list[Presentation]:
    """Read ``path,label,attack_type``; a bad label, an empty path or a path listed twice names the line."""
    rows = _read_csv(csv_path, ("path", "label"), ("attack_type",))
    seen: dict[str, int] = {}
    out = []
    for line, row in rows:
        path, label, kind = row["path"], row["label"].lower(), row.get("attack_type", "")
        where = f"{display(csv_path)}:{line}"
        if not path:
            raise InputError(f"{where}: empty path")
        check_path(csv_path, line, path)
        if label not in LABELS:
            raise InputError(f"{where}: label must be bona_fide or attack, got {_short(row['label'])}")
        if label == BONA_FIDE and kind:
            raise InputError(f"{where}: a bona fide row has attack_type {_short(kind)} (leave it empty)")
        if path in seen:
            raise InputError(f"{where}: {_plain(path)} is already listed on line {seen[path]}")
        seen[path] = line
        out.append(Presentation(line, path, label, (kind or UNSPECIFIED) if label == ATTACK else ""))
    return out


def rates(scored: Sequence[Scored], threshold: float) -> dict[str, Any]:
    """APCER per attack type, the worst of them, and BPCER at ``threshold`` (fractions; None with no samples)."""
    bona = np.array([s.score for s in scored if s.item.label == BONA_FIDE and s.score is not None], dtype=np.float64)
    apcer: dict[str, float | None] = {}
    for kind in sorted({s.item.attack_type for s in scored if s.item.label == ATTACK}):
        att = np.array(
            [s.score for s in scored if s.item.attack_type == kind and s.score is not None], dtype=np.float64
        )
        apcer[kind] = float(np.mean(att >= threshold)) if att.size else None
    known = [v for v in apcer.values() if v is not None]
    return {
        "threshold": threshold,
        "apcer": apcer,
        "apcer_max": max(known) if known else None,
        "bpcer": float(np.mean(bona < threshold)) if bona.size else None,
    }


def evaluate(scored: Sequence[Scored], threshold: float) -> dict[str, Any]:
    """The report: rates at ``threshold``, counts, failures to acquire, BPCER20/100 and the curve over thresholds."""
    if not any(s.score is not None for s in scored):
        raise InputError("no presentation could be scored (no face found in any of them)")
    n: dict[str, int] = {BONA_FIDE: 0, ATTACK: 0}
    fta: dict[str, int] = {BONA_FIDE: 0, ATTACK: 0}
    per_type: dict[str, int] = {}
    for s in scored:
        if s.score is None:
            fta[s.item.label] += 1
            continue
        n[s.item.label] += 1
        if s.item.label == ATTACK:
            per_type[s.item.attack_type] = per_type.get(s.item.attack_type, 0) + 1
    curve = [rates(scored, round(float(t), 4)) for t in np.linspace(0.0, 1.0, CURVE_STEPS)]
    report: dict[str, Any] = rates(scored, threshold)
    report["n"] = {**n, "attack_types": dict(sorted(per_type.items()))}
    report["failed_to_acquire"] = fta
    for key, limit in BPCER_AT.items():
        ok = [c for c in curve if c["apcer_max"] is not None and c["apcer_max"] <= limit and c["bpcer"] is not None]
        best = min(ok, key=lambda c: (c["bpcer"], c["threshold"])) if ok else None
        report[key] = None if best is None else {"bpcer": best["bpcer"], "threshold": best["threshold"]}
    report["curve"] = curve
    return report


def score_all(
    items: Sequence[Presentation],
    root: Path,
    score: Callable[[Presentation, Path], Scored],
    progress: Callable[[int, int], None] | None = None,
) -> list[Scored]:
    """Score every presentation; a missing file is a failure to acquire with its reason, not a crash. A path that
    is not a relative path inside ``root`` (absolute, ``..``) is an InputError before anything is scored."""
    for item in items:
        if outside_root(item.path):
            raise InputError(
                f"labels line {item.line}: path {_plain(item.path)} is not a relative path inside the root folder "
                f"{display(root)}"
            )
    out = []
    for i, item in enumerate(items):
        full = root / item.path
        if not full.is_file():
            out.append(Scored(item, None, reason="file not found"))
        else:
            out.append(score(item, full))
        if progress is not None:
            progress(i + 1, len(items))
    return out
