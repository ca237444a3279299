"""Blink events against hand labels: ``kiosk eval-liveness --blinks``.

A labelled blink is a run of eyes-closed frames (``blinks.csv``: ``video,start_frame,end_frame,start_s,end_s``,
0-based inclusive frames, seconds from the video's first frame). A detection is the closure onset a
``BlinkDetector`` reports (``last_onset``, the capture time of the blink's first closed frame); it matches a label
when it falls within ``[start_s - tolerance, end_s + tolerance]`` (tolerance 0.1 s), each label at most once
(detections in time order, each taking the earliest-ending open label that holds it); unmatched detections are false
blinks. ``every`` N simulates an N times slower camera: each of the N phases (frames ``phase, phase + N, ...``) is
run as its own video, and a label counts only when one of its closed frames was sampled (a label made at that frame
rate would not contain it otherwise): ``visible``. Recall = found / visible over all phases; false blinks per
minute over all phases' minutes.

The face detector, tracker and mesh run once per frame (``trace_video``); the phases reuse those frames (the mesh sees
each frame on its own, so a sampled frame's openness is the same as at full rate). Tracks are followed per phase.

Results (docs/results/liveness/blinks-*.json; the detector and how it was tuned: ``kiosk.liveness.blink``):

    camera             mahie_test_1 (tuned)   mahie_test_2 + 3 (held out)   all 3 (incl. tuning)
    30 fps (every 1)   8/8, 0 false           19/19, 0 false                27/27, 0 false
    15 fps (every 2)   16/16, 0 false         38/38, 0 false                54/54, 0 false
    10 fps (every 3)   23/24, 0 false         57/57, 0 false                80/81, 0 false
    7.5 fps (every 4)  30/32, 0 false         74/75, 1 false (0.13/min)     104/107, 1 false (0.08/min)

(found / visible labelled blinks over all phases). A run decodes and meshes every frame: ~1 min per 60 s recording
on 2 cores (AMD EPYC).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from kiosk.door.track import Tracker
from kiosk.errors import InputError
from kiosk.imageio import display
from kiosk.lab.evaluate import _read_csv, _short, check_path
from kiosk.types import Face, Image

TOLERANCE_S = 0.1


@dataclass(frozen=True)
class LabelledBlink:
    video: str  # path relative to the root folder
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float


@dataclass
class VideoTrace:
    """Per frame of one video: capture time (s from frame 0), eye openness (NaN: no face or no mesh) and the
    detected face the tracker follows (None: no face; ``faces`` None: one face throughout, no tracking)."""

    times: list[float]
    openness: list[float]
    faces: list[Face | None] | None = None


def read_blinks(csv_path: Path) -> list[LabelledBlink]:
    """Rows of a blinks CSV; a bad number, an end before its start or a path outside the root is an InputError."""
    out = []
    name = display(csv_path)
    for line, row in _read_csv(csv_path, ("video", "start_frame", "end_frame", "start_s", "end_s")):
        if not row["video"]:
            raise InputError(f"{name}:{line}: empty video path")
        check_path(csv_path, line, row["video"])
        try:
            a, b = int(row["start_frame"]), int(row["end_frame"])
        except ValueError as err:
            bad = row["start_frame"] if not row["start_frame"].lstrip("-").isdigit() else row["end_frame"]
            raise InputError(f"{name}:{line}: frame numbers must be whole numbers, got {_short(bad)}") from err
        try:
            s, e = float(row["start_s"]), float(row["end_s"])
        except ValueError as err:
            raise InputError(f"{name}:{line}: start_s and end_s must be numbers of seconds") from err
        if a < 0 or b < a or not (math.isfinite(s) and math.isfinite(e)) or e < s:
            raise InputError(f"{name}:{line}: need 0 <= start_frame <= end_frame and start_s <= end_s")
        out.append(LabelledBlink(row["video"], a, b, s, e))
    return out


def read_timestamps(path: Path) -> list[float] | None:
    """Capture times in seconds from the first frame, from a JSON list of ``"YYYY-MM-DD HH:MM:SS.ffffff"``;
    None when the file does not exist."""
    if not path.is_file():
        return None
    try:
        stamps = json.loads(path.read_text(encoding="utf-8"))
        t = [datetime.fromisoformat(str(s)) for s in stamps]
    except (OSError, ValueError, TypeError) as err:
        raise InputError(f"{display(path)}: not a JSON list of timestamps ({' '.join(str(err).split())})") from err
    if not t:
        raise InputError(f"{display(path)}: no timestamps")
    return [(x - t[0]).total_seconds() for x in t]


def match(
    detections: Sequence[float], labels: Sequence[tuple[float, float]], tolerance: float = TOLERANCE_S
) -> list[int | None]:
    """For each detection (time order), the index of the label it matches, or None (a false blink)."""
    used: set[int] = set()
    out: list[int | None] = []
    for d in detections:
        hold = [i for i, (s, e) in enumerate(labels) if i not in used and s - tolerance <= d <= e + tolerance]
        best = min(hold, key=lambda i: (labels[i][1], i)) if hold else None
        if best is not None:
            used.add(best)
        out.append(best)
    return out


def visible(blink: LabelledBlink, every: int, phase: int) -> bool:
    """A labelled blink is seen at 1/``every`` of the frame rate when one of its closed frames is sampled."""
    first = blink.start_frame + (phase - blink.start_frame) % every
    return first <= blink.end_frame


Detector = Callable[[], Any]  # makes an object with update(value, t) -> bool and last_onset


def run_detector(
    trace: VideoTrace, frames: Iterable[int], make: Detector, tracker: Tracker | None = None
) -> list[float]:
    """Onset times of the blinks found on ``frames`` of ``trace``: one detector per track (with ``tracker`` and
    ``trace.faces``; else one for the whole video), as the door loop keeps one per tracked face."""
    detectors: dict[int, Any] = {}
    onsets = []
    for i in frames:
        key = 0
        if tracker is not None and trace.faces is not None:
            face = trace.faces[i]
            tracks, _ = tracker.update([face] if face is not None else [], trace.times[i])
            key = tracks[0].id if tracks else 0
        if not math.isfinite(trace.openness[i]):
            continue
        det = detectors.get(key)
        if det is None:
            det = detectors[key] = make()
        if det.update(trace.openness[i], trace.times[i]):
            onsets.append(float(det.last_onset))
    return onsets


def score_video(
    trace: VideoTrace,
    labels: Sequence[LabelledBlink],
    every: int,
    make: Detector,
    name: str,
    new_tracker: Callable[[], Tracker] | None = None,
) -> dict[str, Any]:
    """Per-phase and summed figures of one video (see the module docstring). Its length is the span of its
    capture times plus one mean frame interval."""
    n = len(trace.times)
    duration = trace.times[-1] - trace.times[0] + (trace.times[-1] - trace.times[0]) / max(n - 1, 1)
    phases = []
    for phase in range(every):
        tracker = new_tracker() if new_tracker is not None else None
        onsets = run_detector(trace, range(phase, n, every), make, tracker)
        seen = [b for b in labels if visible(b, every, phase)]
        got = match(onsets, [(b.start_s, b.end_s) for b in seen])
        phases.append(
            {
                "phase": phase,
                "visible": len(seen),
                "found": sum(1 for g in got if g is not None),
                "false": sum(1 for g in got if g is None),
                "first_blink_s": round(onsets[0], 3) if onsets else None,
                "onsets_s": [round(d, 3) for d in onsets],
                "false_at_s": [round(d, 3) for d, g in zip(onsets, got, strict=True) if g is None],
                "missed_start_s": [b.start_s for i, b in enumerate(seen) if i not in set(got)],
            }
        )
    return {"video": name, "frames": n, "duration_s": round(duration, 3), "fps": round((n - 1) / duration, 2)} | (
        _totals(phases, duration * every / 60.0, len(labels))
        | {"first_labelled_blink_s": min((b.start_s for b in labels), default=None), "phases": phases}
    )


def _totals(phases: Sequence[dict[str, Any]], minutes: float, n_blinks: int) -> dict[str, Any]:
    vis = sum(p["visible"] for p in phases)
    found = sum(p["found"] for p in phases)
    false = sum(p["false"] for p in phases)
    return {
        "n_blinks": n_blinks,
        "visible": vis,
        "found": found,
        "blink_recall": round(found / vis, 4) if vis else None,
        "false_blinks": false,
        "minutes": round(minutes, 3),
        "false_blinks_per_min": round(false / minutes, 3) if minutes > 0 else None,
    }


def summarise(videos: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Totals over videos (all their phases)."""
    phases = [p for v in videos for p in v["phases"]]
    minutes = sum(v["minutes"] for v in videos)
    out = _totals(phases, minutes, sum(v["n_blinks"] for v in videos))
    firsts = [p["first_blink_s"] for p in phases if p["first_blink_s"] is not None]
    out["first_blink_s_median"] = round(sorted(firsts)[len(firsts) // 2], 3) if firsts else None
    return out


# -- running the pipeline on videos ------------------------------------------------------------------------------


def trace_video(
    path: Path,
    detect: Callable[[Image], Face | None],
    openness: Callable[[Image, Face], float | None],
    progress: Callable[[int], None] | None = None,
) -> VideoTrace:
    """Decode ``path`` frame by frame (a 60 s recording is 1.6 GB decoded: nothing is kept) and measure each frame:
    the face ``detect`` finds and the eye openness ``openness`` reads on it (None: no usable mesh). Times come from
    ``<video stem>_timestamps.txt`` beside the video when there is one, else frame index / the container's fps."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise InputError(f"{display(path)}: cannot open as a video")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        faces: list[Face | None] = []
        values: list[float] = []
        while True:
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            image = np.ascontiguousarray(frame, dtype=np.uint8)
            face = detect(image)
            value = openness(image, face) if face is not None else None
            faces.append(face)
            values.append(float("nan") if value is None else value)
            if progress is not None:
                progress(len(values))
    finally:
        cap.release()
    if not values:
        raise InputError(f"{display(path)}: no frames could be decoded")
    stamps = read_timestamps(path.with_name(f"{path.stem}_timestamps.txt"))
    if stamps is not None:
        if len(stamps) < len(values):
            raise InputError(f"{display(path)}: {len(values)} frames but only {len(stamps)} timestamps")
        times = stamps[: len(values)]
    else:
        if fps <= 0.0:
            raise InputError(f"{display(path)}: no frame rate in the file and no {path.stem}_timestamps.txt beside it")
        times = [i / fps for i in range(len(values))]
    return VideoTrace(times, values, faces)


def evaluate_blinks(
    labels: Sequence[LabelledBlink],
    root: Path,
    every: int,
    measure: Callable[[Path], VideoTrace],
    make: Detector,
    new_tracker: Callable[[], Tracker] | None = None,
) -> dict[str, Any]:
    """Every video the labels name (in first-mention order), measured once and scored at 1/``every`` of its rate."""
    names = list(dict.fromkeys(b.video for b in labels))
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise InputError(f"video not found: {display(root / missing[0])} (paths are relative to --root)")
    videos = []
    for name in names:
        trace = measure(root / name)
        mine = [b for b in labels if b.video == name]
        beyond = [b for b in mine if b.end_frame >= len(trace.times)]
        if beyond:
            raise InputError(f"{name}: a blink ends at frame {beyond[0].end_frame}, the video has {len(trace.times)}")
        videos.append(score_video(trace, mine, every, make, name, new_tracker))
    return summarise(videos) | {"every": every, "phases_run": every, "tolerance_s": TOLERANCE_S, "videos": videos}


def print_report(r: dict[str, Any]) -> None:
    fps = [v["fps"] for v in r["videos"]]
    rate = sum(fps) / len(fps) / r["every"]
    print(
        f"{r['n_blinks']} labelled blinks in {len(r['videos'])} videos, every {r['every']} frame(s) (about "
        f"{rate:.1f} fps, all {r['phases_run']} phases), match tolerance ±{r['tolerance_s']:.2f} s"
    )
    head = f"  {'video':<24} {'fps':>5} {'blinks':>6} {'visible':>7} {'found':>5} {'recall':>8} {'false':>5}"
    print(head + f" {'false/min':>9} {'first blink':>11}")
    for v in [*r["videos"], r | {"video": "total", "fps": None}]:
        recall = "n/a" if v["blink_recall"] is None else f"{100.0 * v['blink_recall']:.1f} %"
        firsts = [p["first_blink_s"] for p in v.get("phases", []) if p["first_blink_s"] is not None]
        first = f"{max(firsts):.2f} s" if firsts else ("" if v["video"] == "total" else "none")
        print(
            f"  {v['video']:<24} {'' if v['fps'] is None else format(v['fps'], '.1f'):>5} {v['n_blinks']:>6} "
            f"{v['visible']:>7} {v['found']:>5} {recall:>8} {v['false_blinks']:>5} "
            f"{v['false_blinks_per_min']:>9.2f} {first:>11}"
        )
    print("  (first blink: the latest, over the phases, onset of the first blink found)")
