"""Active liveness: a random sequence of prompts (blink, turn the head left or right), each answered in a human
reaction window.

A printed photo or a still on a screen cannot blink or turn on request. A replayed *video* can hold a blink or a turn,
so an answer counts only when it fits the prompt it answers:

- **Random sequence.** ``steps`` prompts per attempt, each drawn at random (``secrets.SystemRandom``) from the
  configured challenges; "turn" picks a side at random each time. A recording of someone answering other prompts
  answers these only by chance.
- **Reaction window.** A response must *begin* at least ``min_reaction_s`` after its prompt was shown (nobody reacts
  faster than ~0.2 s to a prompt they read, so a movement already under way is a recording's, not an answer) and
  complete within ``timeout_s`` of it. A blink whose closure began earlier is ignored (people blink anyway); a head
  turn that was already under way fails the step.
- **Wrong way fails.** Turning ``turn_deg`` to the other side than the one asked fails the attempt at once, so a
  recording that turns both ways cannot cover both prompts.
- **Random pauses.** Between two prompts the person is asked to hold still for a random time (``pause_s``), so the
  next prompt's time cannot be known in advance and a recording's next response may fall before its window. The hold
  is counted from when the head faces the camera again (within ``CENTRE_SHARE`` x ``turn_deg`` of where it was at the
  first prompt), so a person coming back from a turn is not read as turning the other way, and the time a recording
  took to come back does not fix when its next prompt comes.

Everything here is pure and clock-injected: every call takes ``t``, monotonic seconds (the frame's capture time), and
only frames *after* a prompt was issued count as its answer. ``Challenge`` is one attempt's sequence for one track;
it can be fed mesh results (``update``) or the measures taken from them (``feed``: eye openness, head yaw, presence),
which is how ``kiosk.lab.challenge_sim`` replays recorded traces against it. ``ActiveLiveness`` runs them per track
for the door loop. The blink detector is ``kiosk.liveness.blink``.
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
HOLD = "hold"  # the pause between two prompts
PENDING, PASS, FAIL = "pending", "pass", "fail"
PROMPTS = {
    BLINK: "please blink",
    TURN_LEFT: "please turn your head to your left",
    TURN_RIGHT: "please turn your head to your right",
    HOLD: "please hold still",
}
MIN_REACTION_S = 0.2  # a response that begins sooner after its prompt was under way before it (see the docstring)
MIN_PAUSE_S = 0.25  # the shortest random pause between two prompts (long enough to be seen)
ONSET_SHARE = 1.0 / 3.0  # a turn has begun once the head moved this share of turn_deg
CENTRE_SHARE = 0.5  # between prompts the head counts as facing the camera within this share of turn_deg of its start


class Chooser(Protocol):
    """What draws prompts and pauses: ``random.Random`` / ``secrets.SystemRandom`` (the default), or a test's fake."""

    def choice(self, seq: Sequence[str], /) -> str: ...

    def uniform(self, a: float, b: float, /) -> float: ...


@dataclass(frozen=True)
class Measures:
    """What a challenge reads from one frame's face mesh."""

    openness: float  # kiosk.liveness.blink.eye_openness
    yaw: float  # kiosk.liveness.mesh.head_yaw_deg: degrees, positive = the subject's own left
    presence: float  # 0..1, the mesh's confidence that its crop holds a face

    @classmethod
    def of(cls, mesh: MeshResult) -> Measures:
        return cls(eye_openness(mesh.points), head_yaw_deg(mesh.points), mesh.presence)


@dataclass
class Step:
    """One prompt of a sequence and how it was answered."""

    kind: str
    prompted: float | None = None  # when the prompt was issued (None: not yet)
    passed_at: float | None = None
    onset: float | None = None  # when the answering response began
    frames: int = 0  # frames that counted for it
    ref_yaw: float | None = None  # turn: the yaw of its first frame
    best: float = 0.0  # turn: the furthest move in the asked direction, degrees
    toward: int = 0  # turn: consecutive frames at or beyond turn_deg in the asked direction ...
    away: int = 0  # ... and in the other one
    toward_since: float | None = None  # turn: the first frame of the current move (>= ONSET_SHARE x turn_deg) asked
    ignored_blinks: int = 0  # blinks that began too soon after the prompt (or before it)

    @property
    def direction(self) -> str:
        return "left" if self.kind == TURN_LEFT else "right"

    @property
    def other(self) -> str:
        return "right" if self.kind == TURN_LEFT else "left"


class Challenge:
    """One attempt for one track: prompts ``kinds`` in order, the first issued at ``started``, each answered within
    ``timeout_s`` of its own prompt, a hold of ``pauses[i]`` seconds after step i passed before step i + 1 is issued.

    A blink step passes on the frame a blink completes whose closure began at least ``min_reaction_s`` after the
    prompt. A turn step passes when the yaw has moved ``turn_deg`` or more in the asked direction from the step's first
    frame on ``hold_frames`` consecutive frames, and the move began (passed ``ONSET_SHARE`` x ``turn_deg``) at least
    ``min_reaction_s`` after the prompt; the same move the other way, or a move already under way, fails the attempt.
    Frames at or before a prompt, after its deadline, or with a mesh presence below ``min_presence`` do not count.
    The blink detector sees every frame of the attempt from the first prompt on, so its open-eye level is known by
    the time a blink is asked for.
    """

    def __init__(
        self,
        kinds: str | Sequence[str],
        started: float,
        timeout_s: float = 6.0,
        *,
        turn_deg: float = 15.0,
        hold_frames: int = 2,
        min_presence: float = 0.5,
        min_reaction_s: float = MIN_REACTION_S,
        pauses: Sequence[float] = (),
        blink: BlinkDetector | None = None,
    ) -> None:
        seq = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        if not seq or any(k not in KINDS for k in seq):
            raise ValueError(f"challenge kinds must be a non-empty sequence of {KINDS}, got {kinds!r}")
        if timeout_s <= 0.0 or turn_deg <= 0.0 or hold_frames < 1 or min_reaction_s < 0.0:
            raise ValueError("need timeout_s > 0, turn_deg > 0, hold_frames >= 1 and min_reaction_s >= 0")
        if len(pauses) != len(seq) - 1 or any(p < 0.0 for p in pauses):
            raise ValueError(f"need {len(seq) - 1} pauses >= 0 between {len(seq)} prompts, got {list(pauses)}")
        self.steps = [Step(k) for k in seq]
        self.steps[0].prompted = float(started)
        self.started = float(started)
        self.timeout_s = float(timeout_s)
        self.turn_deg = float(turn_deg)
        self.hold_frames = hold_frames
        self.min_presence = float(min_presence)
        self.min_reaction_s = float(min_reaction_s)
        self.pauses = [float(p) for p in pauses]
        self.blink = blink if blink is not None else BlinkDetector()
        self._i = 0  # the current step
        self._hold_until: float | None = None  # set while holding between two prompts
        self._home_yaw: float | None = None  # the yaw of the attempt's first frame: "facing the camera"
        self._centred = 0  # consecutive frames facing the camera (within CENTRE_SHARE x turn_deg of home)
        self._centred_since: float | None = None  # the first frame of that run
        self._hold_s = 0.0  # the current hold's length
        self._failed: str | None = None  # why the attempt failed before a deadline (wrong way, moved too soon)
        self._failed_at: float | None = None
        self._now = self.started  # the latest time this challenge was told about (feed or status)

    # -- what to show ----------------------------------------------------------------------------------------

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(s.kind for s in self.steps)

    @property
    def step(self) -> Step:
        """The step being asked (or the last one, once all passed)."""
        return self.steps[self._i]

    @property
    def kind(self) -> str:
        return self.step.kind

    @property
    def holding(self) -> bool:
        return self._hold_until is not None

    @property
    def prompt(self) -> str:
        """What to tell the person now."""
        return PROMPTS[HOLD] if self.holding else PROMPTS[self.step.kind]

    @property
    def deadline(self) -> float:
        """When the current step fails unanswered (a hold counts towards the next step's time)."""
        if self._hold_until is not None:
            return self._hold_until + self.timeout_s
        assert self.step.prompted is not None
        return self.step.prompted + self.timeout_s

    @property
    def passed_at(self) -> float | None:
        return self.steps[-1].passed_at

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.steps)

    # -- frames ----------------------------------------------------------------------------------------------

    def update(self, mesh: MeshResult, t: float) -> None:
        """Feed one frame's mesh of this track's face."""
        self.feed(Measures.of(mesh), t)

    def feed(self, m: Measures, t: float) -> None:
        """Feed one frame's measures (``Measures.of`` a mesh)."""
        self._now = max(self._now, t)
        if self._done(t) or t <= self.started or m.presence < self.min_presence:
            return
        blinked = self.blink.update(m.openness, t)
        if self._home_yaw is None:
            self._home_yaw = m.yaw
        centred = abs(m.yaw - self._home_yaw) <= CENTRE_SHARE * self.turn_deg
        self._centred = self._centred + 1 if centred else 0
        if not centred:
            self._centred_since = None
        elif self._centred_since is None:
            self._centred_since = t
        self._advance(t)
        step = self.step
        if self.holding or step.prompted is None or t <= step.prompted or t >= self.deadline:
            return
        step.frames += 1
        if step.kind == BLINK:
            onset = self.blink.last_onset
            if blinked and onset is not None:
                if onset >= step.prompted + self.min_reaction_s:
                    self._pass(step, t, onset)
                else:
                    step.ignored_blinks += 1
            return
        self._turn(step, m.yaw, t)

    def _turn(self, step: Step, yaw: float, t: float) -> None:
        assert step.prompted is not None
        if step.ref_yaw is None:
            step.ref_yaw = yaw
            return
        moved = (yaw - step.ref_yaw) * (1.0 if step.kind == TURN_LEFT else -1.0)
        step.best = max(step.best, moved)
        if moved >= ONSET_SHARE * self.turn_deg:
            step.toward_since = t if step.toward_since is None else step.toward_since
        else:
            step.toward_since = None
        step.toward = step.toward + 1 if moved >= self.turn_deg else 0
        step.away = step.away + 1 if -moved >= self.turn_deg else 0
        if step.away >= self.hold_frames:
            self._fail(f"turned to the {step.other}, not the {step.direction}", t)
        elif step.toward >= self.hold_frames:
            assert step.toward_since is not None
            if step.toward_since < step.prompted + self.min_reaction_s:
                began = step.toward_since - step.prompted
                self._fail(f"the head was already turning {began:.2f} s after the prompt (a recording?)", t)
            else:
                self._pass(step, t, step.toward_since)

    def _pass(self, step: Step, t: float, onset: float) -> None:
        step.passed_at, step.onset = t, onset
        if self._i + 1 < len(self.steps):
            self._hold_s = self.pauses[self._i]
            self._hold_until = t + self._hold_s

    def _fail(self, why: str, t: float) -> None:
        self._failed, self._failed_at = why, t

    def _advance(self, t: float) -> None:
        """Issue the next prompt once the head has faced the camera for the hold's length (at the first frame or
        status call at or after that)."""
        if self._hold_until is None or self._centred < self.hold_frames or self._centred_since is None:
            return
        if t >= max(self._hold_until, self._centred_since + self._hold_s):
            self._hold_until = None
            self._i += 1
            self.step.prompted = t

    def _done(self, t: float) -> bool:
        return self._failed is not None or self.passed_at is not None or t >= self.deadline

    # -- outcome ---------------------------------------------------------------------------------------------

    def status(self, t: float) -> str:
        """ "pass" once every prompt was answered, "fail" from a step's deadline on (inclusive) or a wrong answer,
        else "pending"."""
        self._now = max(self._now, t)
        self._advance(t)
        if self.passed_at is not None:
            return PASS
        if self._failed is not None:
            return FAIL
        return FAIL if t >= self.deadline else PENDING

    @property
    def score(self) -> float | None:
        """The current (or failed) step's measure: blink, the lowest eye openness / open level seen (lower = closed
        further); turn, degrees turned as asked."""
        step = self.step
        if step.kind == BLINK:
            return self.blink.min_ratio
        return step.best if step.ref_yaw is not None else None

    def _answered(self, step: Step) -> str:
        assert step.passed_at is not None and step.prompted is not None and step.onset is not None
        after = f"{step.onset - step.prompted:.1f} s after the prompt"
        if step.kind == BLINK:
            deepest = self.blink.min_ratio if self.blink.min_ratio is not None else float("nan")
            return f"blinked {after} (eyes closed to {deepest:.2f} of open)"
        return f"turned {step.best:.0f}° to the {step.direction} {after}"

    def reason_at(self, t: float) -> str:
        status = self.status(t)
        n = len(self.steps)
        if status == PASS:
            return "; ".join(self._answered(s) for s in self.steps)
        step = self.step
        where = f"prompt {self._i + 1} of {n}: " if n > 1 else ""
        if status == PENDING:
            if self.holding:
                return f"waiting: {PROMPTS[HOLD]} ({self._i + 1} of {n} answered)"
            assert step.prompted is not None
            return f"waiting: {where}{PROMPTS[step.kind]} ({max(t - step.prompted, 0.0):.1f} of {self.timeout_s:.1f} s)"
        if self._failed is not None:
            return where + self._failed
        if self.holding:
            return f"prompt {self._i + 2} of {n}: did not face the camera again within {self.timeout_s:.1f} s"
        if step.kind == BLINK:
            what = f"no blink within {self.timeout_s:.1f} s"
            if step.ignored_blinks:
                what += f" ({step.ignored_blinks} began too soon after the prompt)"
        else:
            best = f"best {step.best:.0f}° of {self.turn_deg:.0f}°"
            what = f"no head turn to the {step.direction} within {self.timeout_s:.1f} s ({best})"
        return where + (what if step.frames else f"{what}: no face seen by the face mesh")

    @property
    def reason(self) -> str:
        """Why the status is what it is, as of the latest ``feed`` or ``status`` call (``reason_at`` for any t)."""
        return self.reason_at(self._now)


def draw_sequence(rng: Chooser, challenges: Sequence[str], steps: int, pause_s: float) -> tuple[list[str], list[float]]:
    """``steps`` prompts drawn from ``challenges`` ("turn": a random side each time) and the ``steps - 1`` random holds
    between them, each MIN_PAUSE_S..``pause_s`` (``pause_s`` exactly when it is shorter)."""
    kinds = []
    for _ in range(steps):
        kind = rng.choice(challenges)
        kinds.append(rng.choice((TURN_LEFT, TURN_RIGHT)) if kind == "turn" else kind)
    low = min(MIN_PAUSE_S, pause_s)
    return kinds, [rng.uniform(low, pause_s) for _ in range(steps - 1)]


class ActiveLiveness:
    """Per-track challenges for the door loop: ``start`` after a match, ``observe`` every frame, ``prompt`` for what to
    show now, ``result`` to decide. The face mesh runs only for tracks with a pending challenge, so an idle kiosk pays
    nothing for it."""

    def __init__(
        self,
        mesh: FaceMesh,
        *,
        challenges: tuple[str, ...] | list[str] = (BLINK,),
        steps: int = 1,
        timeout_s: float = 6.0,
        turn_deg: float = 15.0,
        min_reaction_s: float = MIN_REACTION_S,
        pause_s: float = 1.5,
        rng: Chooser | None = None,
        min_presence: float | None = None,
        hold_frames: int = 2,
    ) -> None:
        choices = tuple(challenges)
        bad = [c for c in choices if c not in CHOICES]
        if not choices or bad:
            raise ConfigError(f"liveness.active.challenges must be a non-empty list of {CHOICES}, got {list(choices)}")
        if steps < 1:
            raise ConfigError(f"liveness.active.steps must be at least 1, got {steps}")
        if BLINK in choices and mesh.eyes is None:
            log.warning(
                "liveness: blink challenge without the iris model (the face mesh's params.eye_model): the mesh's own "
                "eyelids barely move, so blinks will rarely be seen; load the mesh with load_face_mesh()"
            )
        self.mesh = mesh
        self.challenges = choices
        self.n_steps = steps
        self.timeout_s = float(timeout_s)
        self.turn_deg = float(turn_deg)
        self.min_reaction_s = float(min_reaction_s)
        self.pause_s = float(pause_s)
        self.rng: Chooser = rng if rng is not None else secrets.SystemRandom()
        self.min_presence = float(min_presence if min_presence is not None else mesh.presence_threshold)
        self.hold_frames = hold_frames
        self._running: dict[int, Challenge] = {}

    def challenge(self, track_id: int) -> Challenge | None:
        return self._running.get(track_id)

    def draw(self) -> tuple[list[str], list[float]]:
        """A random sequence of ``steps`` prompts and the random holds between them."""
        return draw_sequence(self.rng, self.challenges, self.n_steps, self.pause_s)

    def start(self, track_id: int, t: float) -> str:
        """Start a random challenge for ``track_id`` unless one is pending; returns what to tell the person."""
        current = self._running.get(track_id)
        if current is not None and current.status(t) == PENDING:
            return current.prompt
        kinds, pauses = self.draw()
        self._running[track_id] = Challenge(
            kinds,
            t,
            self.timeout_s,
            turn_deg=self.turn_deg,
            hold_frames=self.hold_frames,
            min_presence=self.min_presence,
            min_reaction_s=self.min_reaction_s,
            pauses=pauses,
        )
        log.debug("track %d: challenge %s started (holds %s)", track_id, kinds, [round(p, 2) for p in pauses])
        return PROMPTS[kinds[0]]

    def prompt(self, track_id: int, t: float) -> str | None:
        """What to tell the person on ``track_id`` at ``t``: the current prompt; None when no challenge is pending."""
        ch = self._running.get(track_id)
        if ch is None or ch.status(t) != PENDING:
            return None
        return ch.prompt

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
