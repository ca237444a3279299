"""What the door screen shows, as the loop sees it: faces with a box and a state, one prompt, the latest result.

``ScreenModel`` lives in the loop's thread and turns the loop's own events (tracks and their quality, liveness
prompts, decisions) into the state line of docs/screen-protocol.md. The loop never sends prose: prompts and hints are
codes the screen translates, and a name only as ``screen.show_name`` allows, only for a grant.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kiosk.config import Config
from kiosk.door.decide import GRANTED, Decision
from kiosk.door.track import Track
from kiosk.guided import plain_reason
from kiosk.liveness.active import BLINK, HOLD, PROMPTS, TURN_LEFT, TURN_RIGHT
from kiosk.screen.protocol import VERSION
from kiosk.types import FloatArray, QualityReport

SERVICES = ("ok", "camera-down", "starting", "stopping")
FACE_STATES = ("detected", "checking", "challenge", "granted", "denied", "unknown")
PROMPT_CODES = ("come-closer", "look-at-camera", "blink", "turn-left", "turn-right", "hold-still")
OUTCOMES = ("granted", "denied", "unknown")
# Why a result is what it is, as a code (the decision's own reason may hold a name, and the screen is public).
RESULT_REASONS = ("", "liveness", "refused", "not-recognised")

_CHALLENGE_CODES = {BLINK: "blink", TURN_LEFT: "turn-left", TURN_RIGHT: "turn-right", HOLD: "hold-still"}
_PROSE_TO_CODE = {text: _CHALLENGE_CODES[kind] for kind, text in PROMPTS.items()}
# kiosk.guided.plain_reason's words for a failed quality check → the guidance code shown on the screen.
_GUIDANCE = (
    ("come closer", "come-closer"),
    ("face the camera", "look-at-camera"),
    ("hold it straight", "look-at-camera"),
    ("hold still", "hold-still"),
)
# Guided capture hints (state ``capture.hint``): guidance codes, the pose asked for, or what else is wrong.
CAPTURE_HINTS = (
    *PROMPT_CODES,
    "chin-up",
    "chin-down",
    "too-dark",
    "too-bright",
    "one-person",
    "no-face",
    "done",
)
_CAPTURE_WORDS = (
    ("too dark", "too-dark"),
    ("too bright", "too-bright"),
    ("two faces", "one-person"),
    ("no face in view", "no-face"),
    ("look straight", "look-at-camera"),
    ("to the left", "turn-left"),
    ("to the right", "turn-right"),
    ("lift your chin", "chin-up"),
    ("lower your chin", "chin-down"),
    ("done", "done"),
)


def prompt_code(prompt: str) -> str | None:
    """A liveness challenge's prose prompt (``kiosk.liveness.active.PROMPTS``) → blink / turn-left / turn-right /
    hold-still (the random pause between two prompts of a sequence)."""
    return _PROSE_TO_CODE.get(prompt)


def guidance_code(reasons: Sequence[str]) -> str | None:
    """The first failed quality check that a person can fix, as a prompt code; None for the rest (light, ...)."""
    for reason in reasons:
        plain = plain_reason(reason)
        for words, code in _GUIDANCE:
            if words in plain:
                return code
    return None


def capture_hint(text: str) -> str:
    """A guided capture's hint (kiosk.guided's prompts and plain reasons) → a code in ``CAPTURE_HINTS``."""
    for words, code in (*_GUIDANCE, *_CAPTURE_WORDS):
        if words in text:
            return code
    return "look-at-camera"


def shown_name(name: str | None, show_name: str) -> str | None:
    """The name as ``screen.show_name`` allows: ``full``, the ``first`` word, or None (``none``)."""
    if not name or show_name == "none":
        return None
    return name if show_name == "full" else name.split()[0]


def outcome_of(d: Decision) -> str:
    """``granted``; ``denied`` for a recognised person refused (liveness, ...); ``unknown`` when not recognised."""
    if d.outcome == GRANTED:
        return "granted"
    return "unknown" if d.person_id is None else "denied"


def reason_code(d: Decision) -> str:
    outcome = outcome_of(d)
    if outcome == "granted":
        return ""
    if outcome == "unknown":
        return "not-recognised"
    return "liveness" if d.liveness.status not in ("pass", "not_required", "not_checked") else "refused"


def screen_box(box: FloatArray, shape: tuple[int, ...], mirror: bool) -> list[float]:
    """A face box (x1, y1, x2, y2 in frame pixels) as ``[x, y, w, h]`` in 0..1 of the preview (the whole frame,
    scaled), flipped left-right when ``mirror``; clipped to the image."""
    h, w = float(shape[0]), float(shape[1])
    x1, y1 = min(max(float(box[0]) / w, 0.0), 1.0), min(max(float(box[1]) / h, 0.0), 1.0)
    x2, y2 = min(max(float(box[2]) / w, 0.0), 1.0), min(max(float(box[3]) / h, 0.0), 1.0)
    bw, bh = max(x2 - x1, 0.0), max(y2 - y1, 0.0)
    if mirror:
        x1 = 1.0 - x1 - bw
    return [round(x1, 4), round(y1, 4), round(bw, 4), round(bh, 4)]


@dataclass
class _Challenge:
    code: str
    started: float
    total_s: float | None  # None: a hold between two prompts, no countdown


class ScreenModel:
    """The screen's state, fed from the loop's thread; ``snapshot()`` gives the protocol's state line (without
    ``seq``, which the publisher numbers)."""

    def __init__(self, cfg: Config, *, wall: Callable[[], float] = time.time) -> None:
        self.scfg = cfg.screen
        self.min_face_px = cfg.quality.min_face_px
        self.challenge_s = cfg.liveness.active.timeout_s
        self.wall = wall
        self.service = "starting"
        self.fps: float | None = None
        self.capture: dict[str, Any] | None = None
        self._faces: list[dict[str, Any]] = []
        self._prompt: dict[str, Any] | None = None
        self._result: dict[str, Any] | None = None
        self._result_until = -float("inf")
        self._result_seq = 0
        self._outcomes: dict[int, str] = {}  # track id → the outcome of its latest decision
        self._challenges: dict[int, _Challenge] = {}
        self._now = 0.0

    # -- events from the loop --------------------------------------------------------------------------------

    def challenge(self, track_id: int, prompt: str, t: float) -> None:
        """A liveness challenge began for ``track_id`` at ``t`` (loop clock)."""
        code = prompt_code(prompt)
        if code is not None:
            total = None if code == "hold-still" else self.challenge_s
            self._challenges[track_id] = _Challenge(code, t, total)

    def decided(self, d: Decision, now: float) -> None:
        outcome = outcome_of(d)
        self._outcomes[d.track_id] = outcome
        self._challenges.pop(d.track_id, None)
        self._result_seq += 1
        self._result = {
            "seq": self._result_seq,
            "outcome": outcome,
            "name": shown_name(d.name, self.scfg.show_name) if outcome == "granted" else None,
            "reason": reason_code(d),
            "t": round(self.wall(), 3),
        }
        self._result_until = now + self.scfg.result_s

    def frame(
        self,
        tracks: Sequence[Track],
        quality: Mapping[int, QualityReport],
        decisions: Sequence[Decision],
        shape: tuple[int, ...],
        t: float,
    ) -> None:
        """One processed frame: its live tracks (with their quality, when measured) and the decisions it made."""
        self._now = t
        for d in decisions:
            self.decided(d, t)
        live = {tr.id for tr in tracks}
        for gone in [k for k in self._outcomes if k not in live]:
            del self._outcomes[gone]
        for gone in [k for k in self._challenges if k not in live or self._challenge_over(k, t)]:
            del self._challenges[gone]
        faces: list[dict[str, Any]] = []
        guidance: dict[str, Any] | None = None
        largest = -1.0
        for tr in tracks:
            q = quality.get(tr.id)
            state = self._outcomes.get(tr.id)
            if state is None:
                if tr.id in self._challenges:
                    state = "challenge"
                elif q is None or not q.ok or q.metrics.get("size_px", self.min_face_px) < self.min_face_px:
                    state = "detected"
                else:
                    state = "checking"
            faces.append({"track": tr.id, "box": screen_box(tr.face.box, shape, self.scfg.mirror), "state": state})
            if state == "detected" and q is not None and tr.face.width > largest:
                code = guidance_code(q.reasons)
                if code is not None:
                    largest, guidance = tr.face.width, {"track": tr.id, "code": code}
        self._faces = faces
        challenges = [(k, c) for k, c in self._challenges.items() if k in live]
        if challenges:
            k, c = min(challenges, key=lambda kc: kc[1].started)
            remaining = None if c.total_s is None else round(max(c.started + c.total_s - t, 0.0), 1)
            self._prompt = {"track": k, "code": c.code, "remaining_s": remaining, "total_s": c.total_s}
        elif guidance is not None:
            self._prompt = {**guidance, "remaining_s": None, "total_s": None}
        else:
            self._prompt = None

    def idle(self, t: float) -> None:
        """No frame now (camera gone, stalled): the faces go, a result still expires on time."""
        self._now = t
        self._faces, self._prompt = [], None

    def _challenge_over(self, track_id: int, t: float) -> bool:
        c = self._challenges[track_id]
        return c.total_s is not None and t >= c.started + c.total_s

    # -- the state line --------------------------------------------------------------------------------------

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        now = self._now if now is None else now
        if self._result is not None and now >= self._result_until:
            self._result = None
        return {
            "v": VERSION,
            "t": round(self.wall(), 3),
            "service": self.service,
            "faces": self._faces,
            "prompt": self._prompt,
            "result": self._result,
            "capture": self.capture,
            "fps": None if self.fps is None else round(self.fps, 1),
        }


def content(state: Mapping[str, Any]) -> dict[str, Any]:
    """What makes a state line different from the previous one: everything but its time, number, fps and the
    countdown (sent at least once a second anyway; the screen counts down between lines)."""
    out = {k: v for k, v in state.items() if k not in ("t", "seq", "fps")}
    prompt = out.get("prompt")
    if isinstance(prompt, dict):
        out["prompt"] = {k: v for k, v in prompt.items() if k != "remaining_s"}
    return out
