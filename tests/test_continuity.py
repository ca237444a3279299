"""Identity continuity through a liveness challenge (issue #15): the decider, with synthetic observations.

A challenge is started for the person whose votes made a grant due; every frame until the grant must still be that
person (best candidate, at or above the continuity threshold), or the track's votes and challenge are dropped, a deny
records why, and the track must earn a fresh match and a fresh challenge. The real pipeline's spliced clips are in
tests/test_continuity_clips.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kiosk.config import DecisionConfig
from kiosk.door.decide import EVERY_FRAME, REFRESH, Decider, LivenessResult, Observation, continuity_allowance
from kiosk.errors import ExitCode
from kiosk.recognition.match import MatchResult
from tests.helpers import config_file

CFG = DecisionConfig(frames_needed=3, window=5, cooldown_s=10.0, deny_interval_s=5.0)
THR, MARGIN = 0.47, 0.05
ALLOWANCE = 0.05  # SFace's: continuity_allowance(0.47, 0.36) rounded; the continuity threshold is 0.42
ALICE, BOB = 1, 2


def seen(pid: int | None, name: str | None, score: float | None, *, accepted: bool | None = None) -> MatchResult:
    """A match whose best candidate is ``pid``/``name`` at ``score`` (accepted when above THR unless told)."""
    ok = accepted if accepted is not None else (score is not None and score >= THR)
    return MatchResult(
        ok,
        pid if ok else None,
        name if ok else None,
        score,
        name,
        "carol",
        0.1,
        THR,
        MARGIN,
        "match" if ok else "below",
        candidate_id=pid,
    )


def alice(score: float = 0.8) -> MatchResult:
    return seen(ALICE, "alice", score)


def bob(score: float = 0.8) -> MatchResult:
    return seen(BOB, "bob", score)


class Check:
    """A liveness check that says "pending" until ``answer_at`` calls were made, then "pass"; records each call."""

    def __init__(self, answer_at: int = 10**6) -> None:
        self.answer_at = answer_at
        self.calls: list[float] = []

    def __call__(self, track_id: int, obs: Observation) -> LivenessResult:
        self.calls.append(obs.t)
        if len(self.calls) >= self.answer_at:
            return LivenessResult("pass", reason="blinked")
        return LivenessResult("pending", reason="please blink")


Outcome = tuple[int, str, str, str | None]


def run(decider: Decider, frames: list[MatchResult | None], t0: float = 0.0, dt: float = 0.1) -> list[Outcome]:
    """Observe track 1 frame by frame; (frame index, outcome, reason, person) for each decision."""
    out = []
    for i, m in enumerate(frames):
        d = decider.observe(1, Observation(t=t0 + i * dt, match=m, quality_ok=True), t0)
        if d is not None:
            out.append((i, d.outcome, d.reason, d.name))
    return out


def decider(check: Check, allowance: float = ALLOWANCE) -> Decider:
    return Decider(CFG, liveness=check, continuity_allowance=allowance)


def test_a_challenge_needs_an_embedding_on_every_frame() -> None:
    d = decider(Check())
    run(d, [alice()] * 3)  # the grant is due at frame 2: challenge pending
    assert d.embedding_need(1) == EVERY_FRAME


def test_the_same_person_with_closed_eyes_keeps_the_challenge_and_is_granted() -> None:
    # Closed eyes drop the score below the accept threshold (not accepted) but not below the continuity threshold.
    check = Check(answer_at=4)  # frames 2, 3, 4 pending; 5 passes
    d = decider(check)
    out = run(d, [alice()] * 3 + [alice(0.45), alice(0.42), alice(0.7)])
    assert [(i, o) for i, o, *_ in out] == [(5, "granted")]
    assert not d.take_restart(1)


def test_someone_else_answering_restarts_the_track_with_a_deny() -> None:
    check = Check(answer_at=5)
    d = decider(check)
    # alice's photo makes the grant due; bob's live face then "answers" the challenge.
    out = run(d, [alice()] * 3 + [bob(), bob(), bob()])
    assert out[0][:2] == (3, "denied")
    assert "identity changed during the liveness challenge" in out[0][2] and "bob (0.80)" in out[0][2]
    assert out[0][3] == "alice"  # the person being claimed is recorded
    assert d.take_restart(1) and not d.take_restart(1)  # once: the loop ends the liveness state
    # bob's frames after the restart are fresh votes for bob; his grant comes from a fresh challenge (a fresh check).
    assert all(o != "granted" or n == "bob" for _, o, _, n in out)


def test_the_decision_records_the_liveness_outcome_and_the_claimed_person() -> None:
    d = decider(Check())
    feed = [alice()] * 3 + [bob()]
    decisions = [d.observe(1, Observation(t=i * 0.1, match=m, quality_ok=True), 0.0) for i, m in enumerate(feed)]
    deny = decisions[-1]
    assert deny is not None and deny.outcome == "denied" and deny.person_id == ALICE
    assert deny.liveness.status == "fail" and deny.liveness.reason == deny.reason
    assert deny.frames_used == 3 and deny.score == 0.8


def test_a_stranger_whose_best_candidate_is_someone_else_restarts() -> None:
    d = decider(Check(answer_at=6))
    carol = seen(3, "carol", 0.30)  # not enrolled as anyone close: best candidate carol, not accepted
    out = run(d, [alice()] * 3 + [carol, alice(), alice()])
    assert [(i, o) for i, o, *_ in out] == [(3, "denied")]
    assert "became carol (0.30), not alice" in out[0][2]


def test_the_claimed_person_below_the_continuity_threshold_restarts() -> None:
    d = decider(Check(answer_at=6))
    out = run(d, [alice()] * 3 + [alice(0.41)])
    assert [(i, o) for i, o, *_ in out] == [(3, "denied")]
    assert "alice scored 0.41, below the continuity threshold 0.42" in out[0][2]


def test_a_frame_that_was_not_identified_restarts() -> None:
    d = decider(Check(answer_at=5))
    frames: list[MatchResult | None] = [alice(), alice(), alice(), None, alice()]
    out = run(d, frames)
    assert [(i, o) for i, o, *_ in out] == [(3, "denied")]
    assert "was not identified" in out[0][2]


def test_an_empty_gallery_match_restarts() -> None:
    empty = MatchResult(False, None, None, None, None, None, None, THR, MARGIN, "gallery is empty")
    d = decider(Check())
    out = run(d, [alice()] * 3 + [empty])
    assert [(i, o) for i, o, *_ in out] == [(3, "denied")] and "became no one" in out[0][2]


def test_a_pass_on_the_intruders_frame_never_grants() -> None:
    # The worst case: the liveness check passes on the very frame bob appears (his blink completes there).
    check = Check(answer_at=2)
    d = decider(check)
    out = run(d, [alice()] * 3 + [bob(0.9)])
    assert [(i, o) for i, o, *_ in out] == [(3, "denied")]
    assert check.calls == [0.2]  # asked once (frame 2), never on bob's frame


def test_after_a_restart_the_track_needs_fresh_votes_and_a_fresh_challenge() -> None:
    check = Check()
    d = decider(check)
    run(d, [alice()] * 3 + [bob(0.2)])  # bob below threshold: restart
    calls = len(check.calls)
    assert calls == 1
    # Two alice frames are not enough for a new grant (3 needed): the liveness check is not asked again...
    out = run(d, [alice(), alice()], t0=1.0)
    assert out == [] and len(check.calls) == calls
    # ...the third one makes a grant due again: a new challenge is asked for.
    run(d, [alice()], t0=2.0)
    assert len(check.calls) == calls + 1


def test_swapping_the_photo_back_after_the_intruders_blink_is_refused() -> None:
    # alice's photo (votes), bob's live face blinks, alice's photo comes back at once. The check would pass on its
    # next call, but the restart on bob's first frame dropped the challenge and the votes: the photo's frames are
    # fresh votes, and a grant would need a fresh challenge, which a photo cannot answer.
    check = Check(answer_at=2)
    d = decider(check)
    out = run(d, [alice()] * 3 + [bob(0.3)] + [alice()] * 2)
    assert [(i, o) for i, o, *_ in out] == [(3, "denied")]
    assert len(check.calls) == 1


def test_a_restart_within_the_deny_interval_is_not_recorded_twice_but_still_restarts() -> None:
    d = decider(Check())
    first = run(d, [alice()] * 3 + [bob(0.3)])
    assert [o for _, o, *_ in first] == ["denied"] and d.take_restart(1)
    # 1 s later (deny_interval_s 5): the same attack again; no second event, but the challenge is dropped again.
    again = run(d, [alice()] * 3 + [bob(0.3)], t0=1.0)
    assert again == [] and d.take_restart(1)
    assert d.embedding_need(1) == REFRESH  # denied: back to refreshes until a grant is due again
    assert d.end_track(1, 3.0) is None  # already denied: nothing more to record


def test_the_continuity_allowance_is_a_share_of_the_recognisers_threshold_gap() -> None:
    assert continuity_allowance(0.47, 0.36) == pytest.approx(0.0495)  # SFace: continuity threshold 0.42
    assert 0.952 - continuity_allowance(0.952, 0.926) == pytest.approx(0.9403, abs=1e-3)  # dlib: its FMR 1e-4 point
    assert continuity_allowance(0.47, 0.47) == 0.0 and continuity_allowance(0.4, 0.47) == 0.0  # never negative


def test_the_continuity_threshold_follows_the_matchers_threshold() -> None:
    strict = MatchResult(False, None, None, 0.55, "alice", "carol", 0.1, 0.6, MARGIN, "below", candidate_id=ALICE)
    out = run(decider(Check()), [alice()] * 3 + [strict])  # threshold 0.6: the floor is 0.55
    assert [(i, o) for i, o, *_ in out] == []
    strict = MatchResult(False, None, None, 0.54, "alice", "carol", 0.1, 0.6, MARGIN, "below", candidate_id=ALICE)
    out = run(decider(Check()), [alice()] * 3 + [strict])
    assert [(i, o) for i, o, *_ in out] == [(3, "denied")] and "threshold 0.55" in out[0][2]


def test_without_an_allowance_every_challenge_frame_must_reach_the_match_threshold() -> None:
    assert Decider(CFG).continuity_allowance == 0.0  # the default: strict
    out = run(decider(Check(), allowance=0.0), [alice()] * 3 + [alice(0.47)])
    assert out == []
    out = run(decider(Check(), allowance=0.0), [alice()] * 3 + [alice(0.46)])
    assert [(i, o) for i, o, *_ in out] == [(3, "denied")] and "threshold 0.47" in out[0][2]


def test_take_restart_is_false_for_unknown_and_untouched_tracks() -> None:
    d = decider(Check())
    assert not d.take_restart(9)
    run(d, [alice()] * 4)
    assert not d.take_restart(1)


# -- kiosk eval-liveness --splice: its input errors (the measurement itself runs in tests/test_continuity_clips.py) --


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--splice", "--labels", "x.csv"], "--splice builds its own presentations: leave out --labels"),
        ([], "eval-liveness needs --labels CSV (or --blinks CSV, or --splice)"),
        (["--splice", "--limit", "0"], "--limit must be at least 1"),
        (["--splice", "--faces", "{tmp}/nowhere"], "--splice needs the blink recordings and LFW under"),
    ],
)
def test_eval_liveness_splice_input_errors(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]], argv: list[str], message: str
) -> None:
    cfg = config_file(tmp_path)
    code, _, err = cli("-c", str(cfg), "eval-liveness", *(a.replace("{tmp}", str(tmp_path)) for a in argv))
    assert code == ExitCode.INPUT and message in err and err.count("\n") == 1, err


class Passive:
    """A passive check: "pass" whenever asked (what a live face's frames would give it); records each call."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, track_id: int, obs: Observation) -> LivenessResult:
        self.calls.append(obs.t)
        return LivenessResult("pass", reason="passive score 0.93")


def test_passive_evidence_from_another_face_holds_the_grant_until_it_is_all_the_voted_person() -> None:
    """Passive liveness averages the track's last frames: a live stranger's frames just before Alice's photo must not
    lend the photo their score. With three evidence frames, the grant waits until the last three are all Alice."""
    frames = [alice(), seen(BOB, "bob", 0.3), seen(BOB, "bob", 0.3), alice(), alice(), alice(), alice()]
    old = Passive()
    assert run(Decider(CFG, liveness=old, continuity_allowance=ALLOWANCE), frames)[0][0] == 4  # votes at 0, 3, 4
    strict = Passive()
    d = Decider(CFG, liveness=strict, continuity_allowance=ALLOWANCE, evidence_frames=3)
    decisions = run(d, frames[:5])
    assert decisions == [] and strict.calls == []  # frame 4: the evidence is (bob, alice, alice): no check, no grant
    assert d.embedding_need(1) == EVERY_FRAME  # until the evidence is all checked frames of Alice
    d2 = Decider(CFG, liveness=Passive(), continuity_allowance=ALLOWANCE, evidence_frames=3)
    assert [(i, o, who) for i, o, _, who in run(d2, frames)] == [(5, "granted", "alice")]


def test_an_unembedded_frame_in_the_evidence_holds_the_grant_and_asks_for_embeddings() -> None:
    d = Decider(CFG, liveness=Passive(), continuity_allowance=ALLOWANCE, evidence_frames=3)
    frames: list[MatchResult | None] = [alice(), alice(), None, alice(), alice(), alice()]
    assert [(i, o) for i, o, _, _ in run(d, frames)] == [(5, "granted")]


def test_the_loop_gives_its_decider_the_passive_layers_frames_as_evidence() -> None:
    from kiosk.config import parse_config
    from kiosk.door.loop import DoorLoop
    from tests.test_failsecure import NoFaces

    for mode, frames in (("passive", 4), ("both", 4), ("active", 1), ("off", 1)):
        cfg = parse_config({"liveness": {"mode": mode, "passive": {"frames": 4}}})
        loop = DoorLoop(NoFaces(cfg), None, None, None)
        assert loop.decider.evidence_frames == frames, mode
