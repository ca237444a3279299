"""``kiosk eval-liveness``: presentation-attack detection measured in the ISO/IEC 30107-3 vocabulary.

Each CSV row is one presentation (an image, or a video counted once): ``path,label,attack_type`` with label
``bona_fide`` or ``attack``. A presentation's score is the live-face probability of the layer measured; the
presentation is classified bona fide when its score is at least the threshold. Then

- APCER (per attack type) = the fraction of that type's attack presentations classified bona fide;
- BPCER = the fraction of bona fide presentations classified as attacks;
- a presentation where no face could be found (or the file could not be read) is a failure to acquire: it is not in
  either rate and is counted separately, as 30107-3 asks.

With ``--group-by`` several rows make one presentation (``group_scored``: a video's frames, their scores fused as
the door fuses a track's frames), which is how the door meets a person; ``intervals`` gives Wilson 95 % intervals and
``breakdown`` the rates per value of a detail column (support, light).

Scoring lives in the CLI (it needs the models); this module reads the CSV and does the arithmetic.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
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


# -- presentations of several rows (``--group-by``) ----------------------------------------------------------------


def parse_group_by(text: str) -> str:
    """``dir`` (a row's parent folder) or a positive integer N (the first N folders of its path); else InputError."""
    if text == "dir" or (text.isdigit() and int(text) >= 1):
        return text
    raise InputError(f"--group-by must be 'dir' or a positive number of folders, got {_short(text)}")


def group_key(path: str, group_by: str) -> str:
    """The presentation a row belongs to: its parent folder (``dir``) or its first N folders (``"N"``)."""
    folders = PurePosixPath(path.replace("\\", "/")).parts[:-1]
    depth = len(folders) if group_by == "dir" else int(group_by)
    if depth < 1 or depth > len(folders):
        raise InputError(
            f"--group-by {group_by}: {_plain(path)} has {len(folders)} folder(s), so no presentation to group it into"
        )
    return "/".join(folders[:depth])


def group_scored(scored: Sequence[Scored], group_by: str, rule: str = "mean") -> list[Scored]:
    """One presentation per group of rows (in order of first appearance): its score is ``fuse`` (``rule``) of its
    rows' scores, as the door fuses a track's frames; a group none of whose rows was scored failed to acquire. Rows
    of one group with different labels or attack types are an InputError naming both lines."""
    from kiosk.liveness.passive import fuse  # numpy only; the models are not loaded

    groups: dict[str, list[Scored]] = {}
    for s in scored:
        groups.setdefault(group_key(s.item.path, group_by), []).append(s)
    out = []
    for key, members in groups.items():
        first = members[0].item
        for m in members[1:]:
            if (m.item.label, m.item.attack_type) != (first.label, first.attack_type):
                raise InputError(
                    f"labels lines {first.line} and {m.item.line} are in one presentation ({_plain(key)}) but are "
                    f"labelled {first.label}/{first.attack_type or '-'} and {m.item.label}/{m.item.attack_type or '-'}"
                )
        values = [m.score for m in members if m.score is not None]
        item = Presentation(first.line, key, first.label, first.attack_type)
        extra: dict[str, Any] = {"frame_scores": [None if m.score is None else round(m.score, 6) for m in members]}
        frames, faces = sum(m.frames for m in members), sum(m.faces for m in members)
        if not values:
            reason = f"no frame of {len(members)} scored"
            out.append(Scored(item, None, reason=reason, frames=frames, faces=faces, extra=extra))
        else:
            out.append(Scored(item, fuse(values, rule), frames=frames, faces=faces, extra=extra))
    return out


# -- intervals and breakdowns -------------------------------------------------------------------------------------

Z95 = 1.959964  # two-sided 95 % normal quantile


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for k errors in n presentations (None when n is 0); good at small n and k = 0."""
    if n <= 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def intervals(scored: Sequence[Scored], threshold: float) -> dict[str, Any]:
    """Error counts and Wilson 95 % intervals of APCER per attack type and BPCER at ``threshold`` (the
    presentations are taken as independent: several of one person are not, so read them as a lower bound on the
    uncertainty)."""

    def one(values: list[float], err: Callable[[float], bool]) -> dict[str, Any]:
        k = sum(1 for v in values if err(v))
        ci = wilson(k, len(values))
        return {"errors": k, "n": len(values), "ci95": None if ci is None else [round(ci[0], 4), round(ci[1], 4)]}

    kinds = sorted({s.item.attack_type for s in scored if s.item.label == ATTACK})
    apcer = {
        k: one([s.score for s in scored if s.item.attack_type == k and s.score is not None], lambda v: v >= threshold)
        for k in kinds
    }
    bona = [s.score for s in scored if s.item.label == BONA_FIDE and s.score is not None]
    return {"apcer": apcer, "bpcer": one(bona, lambda v: v < threshold)}


# Replay-Attack names a video's light as the last word of its folder (``..._controlled``, ``..._adverse``).
_LIGHT = re.compile(r"_(controlled|adverse)(?:_\d+)?(?:/|$)")


def read_detail(csv_path: Path) -> dict[str, dict[str, str]]:
    """``path`` plus any columns (``labels_detail.csv``: identity, support): ``{path: {column: value}}``.
    ``label``/``attack_type`` are left out (they come from --labels). A ``light`` column is added from the path
    when the CSV has none and the folder name ends in ``_controlled``/``_adverse`` (Replay-Attack's naming)."""
    try:
        with Path(csv_path).open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise InputError(f"{display(csv_path)}: the detail CSV needs a 'path' column")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{display(csv_path)}: cannot read the detail CSV ({exc})") from None
    out: dict[str, dict[str, str]] = {}
    for row in rows:
        path = (row.get("path") or "").strip()
        attrs = {k: (v or "").strip() for k, v in row.items() if k and k not in ("path", "label", "attack_type")}
        m = _LIGHT.search(path)
        if "light" not in attrs and m:
            attrs["light"] = m.group(1)
        out[path] = attrs
    return out


def group_detail(detail: dict[str, dict[str, str]], group_by: str) -> dict[str, dict[str, str]]:
    """A group's attributes: those every one of its rows shares."""
    out: dict[str, dict[str, str]] = {}
    for path, attrs in detail.items():
        key = group_key(path, group_by)
        if key not in out:
            out[key] = dict(attrs)
        else:
            out[key] = {k: v for k, v in out[key].items() if attrs.get(k) == v}
    return out


BREAKDOWN_SKIP = frozenset({"identity"})  # one value per person: a breakdown by it is a list of 15 tiny rates


def breakdown(scored: Sequence[Scored], detail: dict[str, dict[str, str]], threshold: float) -> dict[str, Any]:
    """Rates at ``threshold`` for each value of each detail column (support: hand/fixed, light: controlled/adverse).
    A value that only attacks carry (support) gives APCERs and no BPCER."""
    columns = sorted({c for attrs in detail.values() for c in attrs} - BREAKDOWN_SKIP)
    out: dict[str, Any] = {}
    for col in columns:
        values = sorted({detail.get(s.item.path, {}).get(col, "") for s in scored} - {""})
        per: dict[str, Any] = {}
        for v in values:
            subset = [s for s in scored if detail.get(s.item.path, {}).get(col) == v]
            r = rates(subset, threshold)
            per[v] = {
                "apcer": r["apcer"],
                "bpcer": r["bpcer"],
                "n": {
                    "bona_fide": sum(1 for s in subset if s.item.label == BONA_FIDE and s.score is not None),
                    "attack": sum(1 for s in subset if s.item.label == ATTACK and s.score is not None),
                },
            }
        if per:
            out[col] = per
    return out
