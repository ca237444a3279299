"""Active liveness: a challenge (blink, or turn the head left or right) the person must answer within a time limit.

A printed photo or a still on a screen cannot blink or turn on request, and with more than one configured challenge
a random choice means a replayed clip answers the right one only by chance (a replayed video of someone blinking
still passes a blink: that attack is the passive layer's). Everything here is pure and clock-injected: every call takes
``t``, monotonic seconds, and only frames *after* a challenge started count as its answer.

``BlinkDetector`` judges eye aspect ratios (``kiosk.liveness.mesh.eye_aspect_ratio``) against a running open-eye
baseline of the same track, so it does not depend on how wide one person's eyes are: a blink is a fall below
``close_ratio`` x baseline and a return above ``open_ratio`` x baseline (hysteresis) within ``max_closed_s``.

Defaults from measurements on 200 LFW photos at 640x480, iris-refined eye contours (tests/test_liveness_active.py
builds the clips): replayed as 6 s still clips at 15 fps with camera jitter, the lowest EAR / baseline in any clip
was 0.76 (5th percentile 0.87), so ``close_ratio`` 0.65 gave no false blink in 200 clips; with the eyes warped shut
the median EAR fell to 0.48 of open, and 84 % of simulated blink clips passed (0.70 would give 88 %, with less
margin over the still clips). No real blink has been measured yet.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from kiosk.errors import ConfigError
from kiosk.liveness.blink import BlinkDetector, eye_openness
from kiosk.liveness.mesh import FaceMesh, MeshResult, head_yaw_deg
from kiosk.types import Face, Image, LivenessResult

log = logging.getLogger(__name__)

BLINK, TURN_LEFT, TURN_RIGHT = "blink", "turn_left", "turn_right"
KINDS = (BLINK, TURN_LEFT, TURN_RIGHT)
CHOICES = (*KINDS, "turn")  # "turn" = left or right at random
PENDING, PASS, FAIL = "pending", "pass", "fail"
PROMPTS = {
    BLINK: "please blink",
    TURN_LEFT: "please turn your head to your left",
    TURN_RIGHT: "please turn your head to your right",
}


class Chooser(Protocol):
    """What picks a challenge: ``random.Random`` / ``secrets.SystemRandom`` (the default), or a test's fake."""

    def choice(self, seq: Sequence[str], /) -> str: ...


@dataclass
class _Turn:
    start_yaw: float | None = None
    best: float = 0.0  # furthest yaw change in the asked direction so far, degrees
    streak: int = 0  # consecutive frames beyond ``turn_deg``


class Challenge:
    """One challenge for one track: ``kind`` in ``KINDS``, started at ``started``, answered within ``timeout_s``.

    A blink passes on the frame a blink completes. A turn passes when the yaw (``head_yaw_deg``: positive = the
    subject's own left) has moved ``turn_deg`` or more in the asked direction from the yaw of the challenge's first
    frame, on ``hold_frames`` consecutive frames. Frames at or before ``started``, after the timeout, or with a mesh
    presence below ``min_presence`` (no face) do not count.
    """

    def __init__(
        self,
        kind: str,
        started: float,
        timeout_s: float = 6.0,
        *,
        turn_deg: float = 15.0,
        hold_frames: int = 2,
        min_presence: float = 0.5,
        blink: BlinkDetector | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"challenge kind must be one of {KINDS}, got {kind!r}")
        if timeout_s <= 0.0 or turn_deg <= 0.0 or hold_frames < 1:
            raise ValueError("need timeout_s > 0, turn_deg > 0 and hold_frames >= 1")
        self.kind = kind
        self.started = float(started)
        self.timeout_s = float(timeout_s)
        self.turn_deg = float(turn_deg)
        self.hold_frames = hold_frames
        self.min_presence = float(min_presence)
        self.blink = blink if blink is not None else BlinkDetector()
        self._turn = _Turn()
        self.frames = 0  # frames that counted
        self.passed_at: float | None = None
        self._now = self.started  # the latest time this challenge was told about (update or status)

    @property
    def deadline(self) -> float:
        return self.started + self.timeout_s

    @property
    def prompt(self) -> str:
        """What to tell the person."""
        return PROMPTS[self.kind]

    @property
    def direction(self) -> str:
        return "left" if self.kind == TURN_LEFT else "right"

    def update(self, mesh: MeshResult, t: float) -> None:
        """Feed one frame's mesh of this track's face."""
        self._now = max(self._now, t)
        if self.passed_at is not None or t <= self.started or t >= self.deadline or mesh.presence < self.min_presence:
            return
        self.frames += 1
        if self.kind == BLINK:
            if self.blink.update(eye_openness(mesh.points), t):
                self.passed_at = t
            return
        yaw = head_yaw_deg(mesh.points)
        turn = self._turn
        if turn.start_yaw is None:
            turn.start_yaw = yaw
            return
        moved = (yaw - turn.start_yaw) * (1.0 if self.kind == TURN_LEFT else -1.0)
        turn.best = max(turn.best, moved)
        turn.streak = turn.streak + 1 if moved >= self.turn_deg else 0
        if turn.streak >= self.hold_frames:
            self.passed_at = t

    def status(self, t: float) -> str:
        """ "pass" once answered, "fail" from the deadline on (inclusive), else "pending"."""
        self._now = max(self._now, t)
        if self.passed_at is not None:
            return PASS
        return FAIL if t >= self.deadline else PENDING

    @property
    def score(self) -> float | None:
        """Blink: the lowest EAR / open-eye baseline seen (lower = closed further); turn: degrees turned as asked."""
        if self.kind == BLINK:
            return self.blink.min_ratio
        return self._turn.best if self._turn.start_yaw is not None else None

    def reason_at(self, t: float) -> str:
        status = self.status(t)
        if self.kind == BLINK:
            if status == PASS:
                assert self.passed_at is not None
                deepest = self.blink.min_ratio if self.blink.min_ratio is not None else float("nan")
                return f"blinked after {self.passed_at - self.started:.1f} s (eyes closed to {deepest:.2f} of open)"
            what = f"no blink within {self.timeout_s:.1f} s"
        else:
            if status == PASS:
                assert self.passed_at is not None
                return (
                    f"turned {self._turn.best:.0f}° to the {self.direction} after {self.passed_at - self.started:.1f} s"
                )
            best = f"best {self._turn.best:.0f}° of {self.turn_deg:.0f}°"
            what = f"no head turn to the {self.direction} within {self.timeout_s:.1f} s ({best})"
        if status == PENDING:
            return f"waiting: {self.prompt} ({max(t - self.started, 0.0):.1f} of {self.timeout_s:.1f} s)"
        return what if self.frames else f"{what}: no face seen by the face mesh"

    @property
    def reason(self) -> str:
        """Why the status is what it is, as of the latest ``update`` or ``status`` call (``reason_at`` for any t)."""
        return self.reason_at(self._now)


class ActiveLiveness:
    """Per-track challenges for the door loop: ``start`` after a match, ``observe`` every frame, ``result`` to decide.

    The face mesh runs only for tracks with a pending challenge, so an idle kiosk pays nothing for it.
    """

    def __init__(
        self,
        mesh: FaceMesh,
        *,
        challenges: tuple[str, ...] | list[str] = (BLINK,),
        timeout_s: float = 6.0,
        turn_deg: float = 15.0,
        rng: Chooser | None = None,
        min_presence: float | None = None,
        hold_frames: int = 2,
        blink_close_ratio: float = 0.65,
        blink_open_ratio: float = 0.85,
        blink_max_closed_s: float = 0.5,
    ) -> None:
        choices = tuple(challenges)
        bad = [c for c in choices if c not in CHOICES]
        if not choices or bad:
            raise ConfigError(f"liveness.active.challenges must be a non-empty list of {CHOICES}, got {list(choices)}")
        if BLINK in choices and mesh.eyes is None:
            log.warning(
                "liveness: blink challenge without the iris model (the face mesh's params.eye_model): the mesh's own "
                "eyelids barely move, so blinks will rarely be seen; load the mesh with load_face_mesh()"
            )
        self.mesh = mesh
        self.challenges = choices
        self.timeout_s = float(timeout_s)
        self.turn_deg = float(turn_deg)
        self.rng: Chooser = rng if rng is not None else secrets.SystemRandom()
        self.min_presence = float(min_presence if min_presence is not None else mesh.presence_threshold)
        self.hold_frames = hold_frames
        self.blink_close_ratio = blink_close_ratio
        self.blink_open_ratio = blink_open_ratio
        self.blink_max_closed_s = blink_max_closed_s
        self._running: dict[int, Challenge] = {}

    def challenge(self, track_id: int) -> Challenge | None:
        return self._running.get(track_id)

    def start(self, track_id: int, t: float) -> str:
        """Start a random challenge for ``track_id`` unless one is pending; returns what to tell the person."""
        current = self._running.get(track_id)
        if current is not None and current.status(t) == PENDING:
            return current.prompt
        kind = self.rng.choice(self.challenges)
        if kind == "turn":
            kind = self.rng.choice((TURN_LEFT, TURN_RIGHT))
        self._running[track_id] = Challenge(
            kind,
            t,
            self.timeout_s,
            turn_deg=self.turn_deg,
            hold_frames=self.hold_frames,
            min_presence=self.min_presence,
            blink=BlinkDetector(
                close_ratio=self.blink_close_ratio,
                open_ratio=self.blink_open_ratio,
                max_closed_s=self.blink_max_closed_s,
            ),
        )
        log.debug("track %d: challenge %s started", track_id, kind)
        return PROMPTS[kind]

    def observe(self, track_id: int, image: Image, face: Face, t: float) -> None:
        """Feed one frame of a track; the mesh runs only while the track's challenge is pending."""
        ch = self._running.get(track_id)
        if ch is None or ch.status(t) != PENDING or t <= ch.started:
            return
        mesh = self.mesh.landmarks(image, face)
        if mesh is not None:
            ch.update(mesh, t)

    def result(self, track_id: int, t: float) -> LivenessResult:
        """The track's challenge outcome at ``t``: "pending" while it runs (or before one started), then pass/fail."""
        ch = self._running.get(track_id)
        if ch is None:
            return LivenessResult(PENDING, reason="no challenge started")
        status = ch.status(t)
        return LivenessResult(status, score=ch.score, reason=ch.reason_at(t))

    def end(self, track_id: int) -> None:
        """Forget a track that left."""
        self._running.pop(track_id, None)

    def reset(self) -> None:
        """Forget every track (a new run of the loop numbers its tracks from 1 again)."""
        self._running.clear()
