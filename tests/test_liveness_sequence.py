"""Challenge sequences: random prompts in order, the reaction window, wrong-way turns, the random holds, and what the
policy shows the person at each step. Pure and clock-injected: frames are ``Measures`` at 15 fps."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import pytest

from kiosk.config import ActiveLivenessConfig, LivenessConfig, parse_config
from kiosk.errors import ConfigError
from kiosk.lab.challenge_sim import Outcome, Person, PersonModel, Trace, replayer, run
from kiosk.liveness import Liveness
from kiosk.liveness.active import (
    BLINK,
    HOLD,
    PROMPTS,
    TURN_LEFT,
    TURN_RIGHT,
    ActiveLiveness,
    Challenge,
    Measures,
)
from kiosk.recognition.match import MatchResult
from kiosk.screen.state import prompt_code
from kiosk.types import Observation

FPS = 15.0
OPEN, SHUT = 0.30, 0.08


def frames(t0: float, t1: float) -> list[float]:
    """Frame times strictly after t0 up to t1 at FPS."""
    n = round((t1 - t0) * FPS)
    return [t0 + (k + 1) / FPS for k in range(n)]


def feed(ch: Challenge, script: Sequence[tuple[float, float, float]]) -> None:
    """Feed (t, openness, yaw) frames."""
    for t, ear, yaw in script:
        ch.feed(Measures(ear, yaw, 1.0), t)


def still(t0: float, t1: float, yaw: float = 0.0) -> list[tuple[float, float, float]]:
    return [(t, OPEN, yaw) for t in frames(t0, t1)]


def blink_at(t0: float, yaw: float = 0.0) -> list[tuple[float, float, float]]:
    """Two shut frames, the first at t0, then open again."""
    ts = frames(t0 - 1 / FPS, t0 + 4 / FPS)
    return [(ts[0], SHUT, yaw), (ts[1], SHUT, yaw), (ts[2], OPEN, yaw), (ts[3], OPEN, yaw)]


def turn(t0: float, side: int, deg: float = 25.0, dur: float = 0.4) -> list[tuple[float, float, float]]:
    """A head turn beginning after t0, reaching ``deg`` (``side`` +1 = the subject's left) in ``dur``, held 0.4 s."""
    out = []
    for t in frames(t0, t0 + dur + 0.4):
        share = min((t - t0) / dur, 1.0)
        out.append((t, OPEN, side * deg * share))
    return out


def test_a_sequence_is_asked_in_order_with_a_hold_between_prompts() -> None:
    ch = Challenge((TURN_LEFT, BLINK), started=0.0, timeout_s=4.0, pauses=[0.8])
    assert ch.prompt == PROMPTS[TURN_LEFT] and ch.status(0.0) == "pending"
    feed(ch, still(0.0, 0.6) + turn(0.6, +1))
    passed = ch.steps[0].passed_at
    assert passed is not None and ch.holding and ch.prompt == PROMPTS[HOLD]
    # Still turned: the hold does not even start counting.
    feed(ch, [(t, OPEN, 25.0) for t in frames(passed, passed + 2.0)])
    assert ch.holding and ch.status(passed + 2.0) == "pending"
    # Back to the camera at +2 s; a blink during the hold is not an answer (the blink prompt was not shown yet).
    back = passed + 2.0
    feed(ch, still(back, back + 0.3) + blink_at(back + 0.35))
    assert ch.holding and ch.status(back + 0.6) == "pending"
    feed(ch, still(back + 0.6, back + 1.0))
    assert not ch.holding and ch.prompt == PROMPTS[BLINK]
    prompted = ch.steps[1].prompted
    assert prompted is not None and back + 0.8 <= prompted < back + 0.8 + 2.5 / FPS
    feed(ch, still(prompted, prompted + 0.5) + blink_at(prompted + 0.55))
    assert ch.status(prompted + 1.0) == "pass"
    assert ch.reason.startswith("turned 2") and "° to the left 0.7 s after the prompt; blinked 0.5 s after" in ch.reason


def test_a_head_that_never_comes_back_fails_the_next_prompt() -> None:
    ch = Challenge((TURN_LEFT, TURN_RIGHT), started=0.0, timeout_s=2.0, pauses=[0.5])
    feed(ch, still(0.0, 0.6) + turn(0.6, +1))
    passed = ch.steps[0].passed_at
    assert passed is not None
    feed(ch, [(t, OPEN, 25.0) for t in frames(passed, passed + 3.0)])
    assert ch.status(passed + 3.0) == "fail"
    assert ch.reason == "prompt 2 of 2: did not face the camera again within 2.0 s"


def test_a_blink_that_began_before_the_reaction_window_is_ignored() -> None:
    ch = Challenge(BLINK, started=0.0, timeout_s=3.0, min_reaction_s=0.5)
    feed(ch, still(0.0, 0.2) + blink_at(0.2))  # closure 0.27 s after the prompt: under way before the window opened
    assert ch.status(0.5) == "pending" and ch.steps[0].ignored_blinks == 1
    feed(ch, still(0.5, 1.0) + blink_at(1.0))
    assert ch.status(1.4) == "pass" and ch.steps[0].onset == pytest.approx(1.0)


def test_only_early_blinks_fail_with_the_reason() -> None:
    ch = Challenge(BLINK, started=0.0, timeout_s=1.0, min_reaction_s=0.5)
    feed(ch, still(0.0, 0.2) + blink_at(0.2) + still(0.47, 0.9))
    assert ch.status(1.0) == "fail"
    assert ch.reason == "no blink within 1.0 s (1 began too soon after the prompt)"


def test_a_turn_already_under_way_at_the_prompt_fails() -> None:
    """A recording turning its head as the prompt appears: the move began before anyone could react."""
    ch = Challenge(TURN_RIGHT, started=0.0, timeout_s=3.0)
    feed(ch, turn(0.0, -1, dur=0.25))
    assert ch.status(1.0) == "fail"
    assert ch.reason.startswith("the head was already turning 0.1") and ch.reason.endswith(
        "s after the prompt (a recording?)"
    )


@pytest.mark.parametrize(("asked", "side"), [(TURN_LEFT, -1), (TURN_RIGHT, +1)])
def test_turning_the_wrong_way_fails_at_once(asked: str, side: int) -> None:
    ch = Challenge((asked, BLINK), started=0.0, timeout_s=5.0, pauses=[0.5])
    feed(ch, still(0.0, 0.5) + turn(0.5, side))
    assert ch.status(1.4) == "fail"
    want, other = ("left", "right") if asked == TURN_LEFT else ("right", "left")
    assert ch.reason == f"prompt 1 of 2: turned to the {other}, not the {want}"
    feed(ch, turn(1.4, -side))  # and nothing after a failure changes it
    assert ch.status(3.0) == "fail"


def test_each_prompt_has_its_own_time_limit() -> None:
    ch = Challenge((BLINK, TURN_LEFT), started=0.0, timeout_s=2.0, pauses=[0.5])
    feed(ch, still(0.0, 1.5) + blink_at(1.5))
    passed = ch.steps[0].passed_at
    assert passed is not None and ch.status(passed + 0.1) == "pending"
    # The second prompt is issued after the hold and gets the full 2 s from then.
    feed(ch, still(passed, passed + 2.4))
    assert ch.steps[1].prompted is not None
    deadline = ch.steps[1].prompted + 2.0
    assert ch.status(deadline - 0.01) == "pending" and ch.status(deadline) == "fail"
    assert ch.reason == "prompt 2 of 2: no head turn to the left within 2.0 s (best 0° of 15°)"


def test_bad_sequences_are_refused() -> None:
    with pytest.raises(ValueError, match="kinds"):
        Challenge((), 0.0)
    with pytest.raises(ValueError, match="kinds"):
        Challenge(("smile",), 0.0)
    with pytest.raises(ValueError, match="pauses"):
        Challenge((BLINK, BLINK), 0.0)
    with pytest.raises(ValueError, match="min_reaction_s"):
        Challenge(BLINK, 0.0, min_reaction_s=-1.0)


# -- a recording answering one sequence, replayed against another -----------------------------------------------------


def synthetic_trace() -> Trace:
    """60 s at 30 fps of open eyes facing the camera, a 0.1 s blink every 7 s from 3 s."""
    t = np.arange(0, 60.0, 1 / 30)
    onsets = np.arange(3.0, 57.0, 7.0)
    openness = np.full(t.shape, OPEN)
    for o in onsets:
        openness[(t >= o) & (t < o + 0.1)] = SHUT
    return Trace("synthetic", t, openness, np.zeros_like(t), np.ones_like(t), onsets)


def answer(kinds: Sequence[str], pauses: Sequence[float], seed: int = 0) -> Outcome:
    """A genuine person (kiosk.lab.challenge_sim.Person) answering ``kinds``, recorded."""
    person = Person(synthetic_trace(), random.Random(seed), PersonModel(reaction_sigma=0.0), start=5.0)
    ch = Challenge(kinds, 0.0, 4.0, pauses=pauses)
    return run(ch, person.at, FPS, on_prompt=person.see, record=True)


def replay(recorded: Outcome, kinds: Sequence[str], pauses: Sequence[float]) -> str:
    return run(Challenge(kinds, 0.0, 4.0, pauses=pauses), replayer(recorded.recording), FPS).status


def test_the_recorded_answer_passes_the_prompts_it_answered() -> None:
    kinds, pauses = (TURN_RIGHT, BLINK), [0.9]
    recorded = answer(kinds, pauses)
    assert recorded.status == "pass", recorded.reason
    assert replay(recorded, kinds, pauses) == "pass"


@pytest.mark.parametrize(
    ("recorded", "asked"),
    [
        ((TURN_RIGHT,), (TURN_LEFT,)),
        ((BLINK,), (TURN_RIGHT,)),
        ((TURN_LEFT,), (BLINK,)),
        ((TURN_LEFT, BLINK), (BLINK, TURN_LEFT)),
        ((TURN_LEFT, BLINK), (TURN_RIGHT, BLINK)),
        ((BLINK, TURN_RIGHT), (BLINK, TURN_LEFT)),
    ],
)
def test_a_recorded_answer_replayed_against_other_prompts_fails(
    recorded: tuple[str, ...], asked: tuple[str, ...]
) -> None:
    pauses = [0.8] * (len(recorded) - 1)
    genuine = answer(recorded, pauses)
    assert genuine.status == "pass", genuine.reason
    assert replay(genuine, asked, pauses) == "fail"


def test_a_recorded_answer_fails_when_the_hold_is_longer_than_when_it_was_recorded() -> None:
    """Same prompts, a longer random hold: the recording's turn begins before the second prompt (or within 0.2 s)."""
    kinds = (BLINK, TURN_LEFT)
    genuine = answer(kinds, [0.3])
    assert genuine.status == "pass"
    assert replay(genuine, kinds, [0.3]) == "pass"
    assert replay(genuine, kinds, [1.5]) == "fail"


# -- drawing and the policy ------------------------------------------------------------------------------------------


class FakeMesh:
    eyes = object()
    presence_threshold = 0.5


def test_draws_are_random_sequences_with_holds_in_range() -> None:
    live = ActiveLiveness(FakeMesh(), challenges=("blink", "turn"), steps=3, pause_s=1.2, rng=random.Random(1))
    seqs = set()
    for _ in range(300):
        kinds, pauses = live.draw()
        assert len(kinds) == 3 and len(pauses) == 2 and all(0.25 <= p <= 1.2 for p in pauses)
        seqs.add(tuple(kinds))
    assert len(seqs) == 27  # every sequence of blink / left / right occurs


def test_the_policy_shows_each_prompt_and_the_hold_once() -> None:
    shown: list[str] = []
    mesh = FakeMesh()
    active = ActiveLiveness(mesh, challenges=("blink",), steps=2, pause_s=0.5, rng=random.Random(0))
    live = Liveness(LivenessConfig(mode="active", active=ActiveLivenessConfig(steps=2)), active=active)
    live.on_prompt = lambda tid, text: shown.append(text)
    match = MatchResult(True, 1, "alice", 0.8, "alice", "carol", 0.3, 0.47, 0.05, "match", candidate_id=1)
    assert live(1, Observation(t=0.0, match=match, quality_ok=True)).status == "pending"
    ch = active.challenge(1)
    assert ch is not None
    t = 0.0
    for ts, ear, yaw in still(0.0, 0.6) + blink_at(0.6) + still(1.0, 2.0) + blink_at(2.0) + still(2.4, 2.6):
        ch.feed(Measures(ear, yaw, 1.0), ts)
        live(1, Observation(t=ts, match=match, quality_ok=True))
        t = ts
    assert live(1, Observation(t=t, match=match, quality_ok=True)).status == "pass"
    assert shown == [PROMPTS[BLINK], PROMPTS[HOLD], PROMPTS[BLINK]]
    assert prompt_code(PROMPTS[HOLD]) == "hold-still"


def test_config_keys_for_sequences() -> None:
    a = parse_config({"liveness": {"active": {"steps": 2, "pause_s": 1.0, "min_reaction_s": 0.3}}}).liveness.active
    assert (a.steps, a.pause_s, a.min_reaction_s) == (2, 1.0, 0.3)
    with pytest.raises(ConfigError, match=r"liveness\.active\.steps"):
        parse_config({"liveness": {"active": {"steps": 9}}})
    with pytest.raises(ConfigError, match=r"liveness\.active\.min_reaction_s: must be below"):
        parse_config({"liveness": {"active": {"min_reaction_s": 1.5, "timeout_s": 1.0}}})
