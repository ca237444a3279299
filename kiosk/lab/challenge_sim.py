"""Challenge sequences against real eyes: how long a genuine person takes, and how often a replayed recording passes.

The active layer's rules (``kiosk.liveness.active.Challenge``) are run frame by frame on *measures* (eye openness, head
yaw, mesh presence) taken from the real blink recordings by the kiosk's own detector and face mesh. Nothing here
renders images: a session is a stream of ``Measures`` at a camera's frame rate.

- **A genuine person** (``Person``) is a recording played back (their real eyelids, glasses, head motion and natural
  blinks) who answers each prompt after a reaction time: a blink by moving the playback so that one of the
  recording's *labelled* blinks begins then (so the detector must find a real blink), a turn by adding a head-turn
  yaw profile (a minimum-jerk move of ``turn_amp_deg`` over ``turn_s``) to the recording's own yaw, and a return to
  the camera when told to hold still. The recordings hold no prompted turns, so the turn's shape is modelled; its
  noise is the recording's.
- **Replays** (non-reactive): ``natural`` plays a recording from a random point (a video of the person blinking
  naturally, shown to the camera); ``recorded`` replays a genuine session recorded against one challenge (its
  prompts and holds) against a fresh challenge, the attacker starting it exactly when the first prompt appears (the
  best an attacker watching the screen can do); after the recording's end its last frame stays.

What is assumed rather than measured is in ``PersonModel`` (reaction times, the turn's size and speed); the JSON
records it. Tests: tests/test_challenge_sim.py; the figures: ``python -m tools challenge-sim``.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from kiosk.liveness.active import (
    BLINK,
    HOLD,
    PASS,
    PENDING,
    PROMPTS,
    TURN_LEFT,
    Challenge,
    Measures,
    draw_sequence,
)

_KIND_OF = {text: kind for kind, text in PROMPTS.items()}
MAX_SESSION_S = 60.0


@dataclass(frozen=True)
class Trace:
    """One recording's per-frame measures: ``t`` seconds from its first frame; ``onsets``: the capture times of its
    labelled blinks' first closed frames."""

    name: str
    t: npt.NDArray[np.float64]
    openness: npt.NDArray[np.float64]
    yaw: npt.NDArray[np.float64]
    presence: npt.NDArray[np.float64]
    onsets: npt.NDArray[np.float64]

    @property
    def duration(self) -> float:
        return float(self.t[-1])

    def at(self, pos: float) -> Measures:
        """The measures of the frame nearest ``pos`` seconds into the recording (clamped to its ends). A frame without
        a face has presence 0 (it does not count)."""
        i = int(np.clip(np.searchsorted(self.t, pos), 0, len(self.t) - 1))
        if i > 0 and abs(self.t[i - 1] - pos) < abs(self.t[i] - pos):
            i -= 1
        o, y, p = float(self.openness[i]), float(self.yaw[i]), float(self.presence[i])
        if not (math.isfinite(o) and math.isfinite(y) and math.isfinite(p)):
            return Measures(float("nan"), 0.0, 0.0)
        return Measures(o, y, p)


@dataclass(frozen=True)
class PersonModel:
    """What the simulation assumes about a person answering prompts (not measured here; see the module docstring)."""

    reaction_median_s: float = 0.7  # prompt shown -> response begins (reading a short prompt, choosing a side)
    reaction_sigma: float = 0.35  # log-normal spread (5th-95th percentile 0.39-1.24 s at 0.7)
    display_latency_s: float = 0.08  # frame captured -> prompt on the screen
    turn_amp_deg: tuple[float, float] = (20.0, 35.0)  # how far people turn when asked, uniform
    turn_s: tuple[float, float] = (0.35, 0.7)  # how long the turn takes, uniform
    blink_lead_s: float = 0.4  # playback jumps this long before the chosen blink's onset

    def reaction(self, rng: random.Random) -> float:
        return self.display_latency_s + self.reaction_median_s * math.exp(rng.gauss(0.0, self.reaction_sigma))


def _minjerk(x: float) -> float:
    x = min(max(x, 0.0), 1.0)
    return x * x * x * (10.0 - 15.0 * x + 6.0 * x * x)


@dataclass
class _Move:
    start: float
    duration: float
    frm: float
    to: float

    def at(self, s: float) -> float:
        return self.frm + (self.to - self.frm) * _minjerk((s - self.start) / self.duration)


class Person:
    """A genuine person: ``trace`` played from ``start``; ``see`` tells them a prompt appeared; ``at`` is what the
    camera measures at session time ``s``."""

    def __init__(self, trace: Trace, rng: random.Random, model: PersonModel, start: float) -> None:
        self.trace, self.rng, self.model = trace, rng, model
        self.offset = start  # playback position = s + offset
        self.jumps: list[tuple[float, float]] = []  # (from session time, new offset), in time order
        self.moves: list[_Move] = [_Move(0.0, 1.0, 0.0, 0.0)]

    def _yaw(self, s: float) -> float:
        live = [m for m in self.moves if m.start <= s]
        return live[-1].at(s) if live else 0.0

    def _offset(self, s: float) -> float:
        off = self.offset
        for at, new in self.jumps:
            if s >= at:
                off = new
        return off

    def at(self, s: float) -> Measures:
        m = self.trace.at(s + self._offset(s))
        return Measures(m.openness, m.yaw + self._yaw(s), m.presence)

    def see(self, prompt: str, shown: float) -> None:
        kind = _KIND_OF[prompt]
        begin = shown + self.model.reaction(self.rng)
        level = self.moves[-1].to
        if kind == HOLD:
            if level != 0.0:  # back to the camera after a turn
                self.moves.append(_Move(begin, self.rng.uniform(*self.model.turn_s), level, 0.0))
            return
        if kind == BLINK:
            lead = self.model.blink_lead_s
            usable = self.trace.onsets[(self.trace.onsets > lead + 0.1) & (self.trace.onsets < self.trace.duration - 1)]
            onset = float(self.rng.choice(list(usable)))
            self.jumps.append((begin - lead, onset - begin))
            return
        side = 1.0 if kind == TURN_LEFT else -1.0
        amp = self.rng.uniform(*self.model.turn_amp_deg)
        self.moves.append(_Move(begin, self.rng.uniform(*self.model.turn_s), level, side * amp))


@dataclass
class Outcome:
    status: str
    kinds: tuple[str, ...]
    time_s: float | None  # first prompt -> pass
    reason: str
    recording: list[tuple[float, Measures]] = field(default_factory=list)


def run(
    challenge: Challenge,
    source: Callable[[float], Measures],
    fps: float,
    *,
    on_prompt: Callable[[str, float], None] | None = None,
    record: bool = False,
) -> Outcome:
    """Feed ``source`` to ``challenge`` (first prompt at 0) at ``fps`` until it passes or fails; ``on_prompt`` hears
    every prompt when it is issued (the first one at 0)."""
    dt = 1.0 / fps
    shown = challenge.prompt
    if on_prompt is not None:
        on_prompt(shown, 0.0)
    recording: list[tuple[float, Measures]] = []
    k = 0
    while True:
        k += 1
        s = k * dt
        m = source(s)
        challenge.feed(m, s)
        if record:
            recording.append((s, m))
        status = challenge.status(s)
        if status != PENDING or s > MAX_SESSION_S:
            passed = challenge.passed_at
            return Outcome(status, challenge.kinds, passed if status == PASS else None, challenge.reason, recording)
        if challenge.prompt != shown:
            shown = challenge.prompt
            if on_prompt is not None:
                on_prompt(shown, s)


def replayer(recording: Sequence[tuple[float, Measures]]) -> Callable[[float], Measures]:
    """A recorded session as a source: the frame nearest ``s``; after the end, its last frame."""
    times = np.array([s for s, _ in recording])

    def at(s: float) -> Measures:
        i = int(np.clip(np.searchsorted(times, s), 0, len(times) - 1))
        return recording[i][1]

    return at


@dataclass(frozen=True)
class Policy:
    """One configuration of the active layer."""

    name: str
    challenges: tuple[str, ...]
    steps: int
    timeout_s: float
    min_reaction_s: float = 0.2
    pause_s: float = 1.5
    turn_deg: float = 15.0

    def draw(self, rng: random.Random) -> tuple[list[str], list[float]]:
        return draw_sequence(rng, self.challenges, self.steps, self.pause_s)

    def challenge(self, kinds: Sequence[str], pauses: Sequence[float]) -> Challenge:
        return Challenge(
            kinds, 0.0, self.timeout_s, turn_deg=self.turn_deg, min_reaction_s=self.min_reaction_s, pauses=pauses
        )


def _start(trace: Trace, rng: random.Random) -> float:
    return rng.uniform(1.0, trace.duration - 15.0)


def genuine(
    policy: Policy, traces: Sequence[Trace], n: int, fps: float, model: PersonModel, seed: int
) -> tuple[dict[str, Any], list[Outcome]]:
    """``n`` genuine sessions: pass rate and time from the first prompt to the pass."""
    rng = random.Random(seed)
    outs = []
    for _ in range(n):
        trace = rng.choice(list(traces))
        person = Person(trace, rng, model, _start(trace, rng))
        kinds, pauses = policy.draw(rng)
        outs.append(run(policy.challenge(kinds, pauses), person.at, fps, on_prompt=person.see, record=True))
    times = sorted(o.time_s for o in outs if o.time_s is not None)
    passed = len(times)
    fails: dict[str, int] = {}
    for o in outs:
        if o.status != PASS:
            key = o.reason.split(": ", 1)[-1] if o.reason.startswith("prompt ") else o.reason
            key = key.split(" (")[0]
            fails[key] = fails.get(key, 0) + 1
    summary = {
        "sessions": n,
        "pass_rate": passed / n,
        "time_s_median": round(statistics.median(times), 2) if times else None,
        "time_s_p90": round(times[min(int(0.9 * len(times)), len(times) - 1)], 2) if times else None,
        "expected_wait_s": _expected_wait(passed / n, times, policy),
        "failures": dict(sorted(fails.items(), key=lambda kv: -kv[1])),
    }
    return summary, outs


RETRY_S = 3.0  # a refused person steps back and comes again: a new track, a new match (the loop's 0.3 s), a new try


def _expected_wait(rate: float, times: Sequence[float], policy: Policy) -> float | None:
    """Mean time from the first prompt to the door, counting failed tries (each costing the time a failure took,
    bounded by the policy's limit per prompt, plus ``RETRY_S``) until one passes: geometric retries."""
    if rate <= 0.0 or not times:
        return None
    fail_cost = policy.steps * policy.timeout_s + RETRY_S  # the worst case: pessimistic
    return round(statistics.mean(times) + (1.0 - rate) / rate * fail_cost, 2)


def _playing(trace: Trace, offset: float, loop: bool = False) -> Callable[[float], Measures]:
    def at(s: float) -> Measures:
        pos = s + offset
        return trace.at(pos % trace.duration if loop else pos)

    return at


def replay_still(policy: Policy, stills: Sequence[Trace], n: int, fps: float, seed: int) -> dict[str, Any]:
    """A photo held to the camera (a still clip with hand-held jitter, looped for as long as the attempt lasts)."""
    rng = random.Random(seed)
    passed = 0
    for _ in range(n):
        trace = rng.choice(list(stills))
        kinds, pauses = policy.draw(rng)
        out = run(policy.challenge(kinds, pauses), _playing(trace, rng.uniform(0.0, trace.duration), loop=True), fps)
        passed += out.status == PASS
    return {"sessions": n, "passed": passed, "apcer": passed / n, "clips": len(stills)}


def replay_natural(policy: Policy, traces: Sequence[Trace], n: int, fps: float, seed: int) -> dict[str, Any]:
    """A video of the person (blinking naturally, facing the camera) shown from a random point when the prompt
    appears: how often the policy passes."""
    rng = random.Random(seed)
    passed = 0
    for _ in range(n):
        trace = rng.choice(list(traces))
        offset = _start(trace, rng)
        kinds, pauses = policy.draw(rng)
        out = run(policy.challenge(kinds, pauses), _playing(trace, offset), fps)
        passed += out.status == PASS
    return {"sessions": n, "passed": passed, "apcer": passed / n}


def replay_recorded(policy: Policy, recordings: Sequence[Outcome], n: int, fps: float, seed: int) -> dict[str, Any]:
    """Genuine sessions that passed, recorded, each replayed against a fresh random challenge (started in sync with
    its first prompt): how often it passes, overall and when the fresh prompts happen to be the recorded ones."""
    rng = random.Random(seed)
    usable = [o for o in recordings if o.status == PASS and o.recording]
    if not usable:
        return {"sessions": 0, "passed": 0, "apcer": None}
    passed = same = same_passed = 0
    for _ in range(n):
        rec = rng.choice(usable)
        kinds, pauses = policy.draw(rng)
        out = run(policy.challenge(kinds, pauses), replayer(rec.recording), fps)
        ok = out.status == PASS
        passed += ok
        if tuple(kinds) == rec.kinds:
            same += 1
            same_passed += ok
    return {
        "sessions": n,
        "passed": passed,
        "apcer": passed / n,
        "same_prompts": same,
        "same_prompts_passed": same_passed,
        "apcer_same_prompts": (same_passed / same) if same else None,
    }


def evaluate(
    policies: Sequence[Policy],
    traces: Sequence[Trace],
    *,
    n: int,
    fps_list: Sequence[float],
    model: PersonModel,
    seed: int = 0,
    stills: Sequence[Trace] = (),
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every policy at every frame rate: genuine pass rate and wait, and the replays' pass rates (a held photo too,
    when ``stills`` are given)."""
    rows = []
    for fps in fps_list:
        for policy in policies:
            if progress is not None:
                progress(f"{policy.name} at {fps:g} fps")
            g, outs = genuine(policy, traces, n, fps, model, seed)
            rows.append(
                {
                    "policy": policy.name,
                    "fps": fps,
                    "genuine": g,
                    "replay_natural": replay_natural(policy, traces, n, fps, seed + 1),
                    "replay_recorded": replay_recorded(policy, outs, n, fps, seed + 2),
                }
            )
            if stills:
                rows[-1]["still_photo"] = replay_still(policy, stills, n, fps, seed + 3)
    return {
        "policies": [asdict(p) for p in policies],
        "person_model": asdict(model),
        "retry_s": RETRY_S,
        "recordings": [{"name": tr.name, "seconds": round(tr.duration, 1), "blinks": len(tr.onsets)} for tr in traces],
        "results": rows,
    }
