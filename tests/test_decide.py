"""Decider: K-of-N grants, cooldowns, rate-limited denies, end-of-track denies and the liveness hook."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from kiosk.config import DecisionConfig
from kiosk.door.decide import EVERY_FRAME, NONE, REFRESH, Decider, Decision, LivenessResult, Observation
from kiosk.recognition.match import MatchResult

CFG = DecisionConfig(frames_needed=3, window=5, cooldown_s=10.0, deny_interval_s=5.0)
THR, MARGIN = 0.47, 0.05


def accepted(pid: int = 1, name: str = "alice", score: float = 0.8) -> MatchResult:
    return MatchResult(True, pid, name, score, name, "carol", 0.3, THR, MARGIN, "match", candidate_id=pid)


def alice(score: float = 0.8) -> MatchResult:
    return accepted(1, "alice", score)


def bob(score: float = 0.8) -> MatchResult:
    return accepted(2, "bob", score)


def below(score: float = 0.2) -> MatchResult:
    return MatchResult(
        False, None, None, score, "alice", "bob", 0.1, THR, MARGIN, f"best score {score} below", candidate_id=1
    )


def ambiguous(score: float = 0.6, runner_up_score: float = 0.58) -> MatchResult:
    return MatchResult(
        False, None, None, score, "alice", "bob", runner_up_score, THR, MARGIN, "ambiguous", candidate_id=1
    )


def feed(
    decider: Decider,
    track_id: int,
    matches: Sequence[MatchResult | None],
    *,
    t0: float = 0.0,
    dt: float = 0.25,
    first_seen: float | None = None,
    quality_ok: list[bool] | None = None,
) -> list[tuple[int, Decision]]:
    """Observe one frame per match (times t0, t0+dt, ...); return (frame index, decision) for each decision."""
    out = []
    for i, m in enumerate(matches):
        ok = True if quality_ok is None else quality_ok[i]
        obs = Observation(t=t0 + i * dt, match=m, quality_ok=ok, quality_reasons=() if ok else ("face too small",))
        d = decider.observe(track_id, obs, t0 if first_seen is None else first_seen)
        if d is not None:
            out.append((i, d))
    return out


def test_three_of_five_grants_with_mismatches_interleaved() -> None:
    out = feed(Decider(CFG), 7, [alice(0.6), below(), alice(0.71), ambiguous(), alice(0.65)], first_seen=-0.5)
    assert len(out) == 1
    i, d = out[0]
    assert i == 4
    assert (d.outcome, d.granted, d.track_id, d.person_id, d.name) == ("granted", True, 7, 1, "alice")
    assert (d.score, d.runner_up, d.runner_up_score, d.threshold) == (0.71, "carol", 0.3, THR)
    assert (d.frames_used, d.reason) == (3, "3 of 5 frames matched alice")
    assert (d.first_seen, d.t, d.latency_s) == (-0.5, 1.0, 1.5)
    assert d.liveness == LivenessResult("not_required")


def test_k_minus_one_frames_never_grant() -> None:
    assert feed(Decider(CFG), 1, [alice(), below(), alice(), below()]) == []
    # The votes must fall inside the last `window` frames: the first alice slides out before the third arrives.
    out = feed(Decider(CFG), 2, [alice(), alice(), below(), below(), below(), alice()])
    assert [d.outcome for _, d in out] == ["denied"]


def test_frames_for_two_people_never_add_up() -> None:
    out = feed(Decider(CFG), 1, [alice(), bob(), alice(), bob(), below()])
    assert [(i, d.outcome, d.person_id) for i, d in out] == [(4, "denied", None)]
    assert out[0][1].reason == "only 2 of 5 frames matched alice, 3 needed"


def test_quality_failed_frames_do_not_count() -> None:
    decider = Decider(CFG)
    out = feed(decider, 1, [alice()] * 4, quality_ok=[False, False, True, True])
    assert out == []
    d = decider.observe(1, Observation(t=1.0, match=alice(), quality_ok=True), 0.0)
    assert d is not None and (d.outcome, d.frames_used, d.reason) == ("granted", 3, "3 of 5 frames matched alice")


def test_unembedded_frames_are_not_votes() -> None:
    decider = Decider(CFG)
    out = feed(decider, 1, [alice(), None, None, alice(), None, None, None, alice()])
    assert [(i, d.reason) for i, d in out] == [(7, "3 of 3 frames matched alice")]
    assert feed(decider, 2, [None] * 12) == []
    assert decider.end_track(2, 5.0) is None


def test_grant_happens_once_per_track() -> None:
    decider = Decider(CFG)
    out = feed(decider, 1, [alice()] * 3 + [below()] * 10 + [alice()] * 5, dt=1.0)
    assert [(i, d.outcome) for i, d in out] == [(2, "granted")]
    assert decider.end_track(1, 20.0) is None


def test_cooldown_blocks_the_same_person_on_a_new_track_until_it_passes() -> None:
    decider = Decider(CFG)
    assert [d.t for _, d in feed(decider, 1, [alice()] * 3)] == [0.5]  # alice granted at t=0.5
    decider.end_track(1, 1.0)
    # A new track of alice inside the cooldown: nothing at all, not even a deny, during or at the end of the track.
    assert feed(decider, 2, [alice()] * 8 + [below()] * 8, t0=2.0) == []
    assert decider.end_track(2, 6.5) is None
    # A track that outlives the cooldown grants on its first vote after it (0.5 + 10 s).
    out = feed(decider, 3, [alice()] * 12, t0=8.0, dt=0.5)
    assert [(d.outcome, d.t) for _, d in out] == [("granted", 10.5)]
    # A later track after that grant's cooldown grants again.
    out = feed(decider, 4, [alice()] * 3, t0=21.0)
    assert [(d.outcome, d.person_id, d.t) for _, d in out] == [("granted", 1, 21.5)]


def test_someone_elses_cooldown_does_not_block() -> None:
    decider = Decider(CFG)
    assert len(feed(decider, 1, [alice()] * 3)) == 1
    out = feed(decider, 2, [bob()] * 3, t0=1.0)
    assert [(d.outcome, d.name) for _, d in out] == [("granted", "bob")]


def test_reset_forgets_cooldowns() -> None:
    decider = Decider(CFG)
    feed(decider, 1, [alice()] * 3)
    decider.reset()
    assert [d.outcome for _, d in feed(decider, 2, [alice()] * 3, t0=1.0)] == ["granted"]


def test_deny_after_a_full_window_of_strangers_is_rate_limited() -> None:
    decider = Decider(CFG)
    scores = [0.1, 0.21, 0.15, 0.2, 0.05] + [0.1] * 21
    out = feed(decider, 3, [below(s) for s in scores], dt=0.5)  # t = 0.0 .. 12.5
    assert [d.t for _, d in out] == [2.0, 7.0, 12.0]  # window full at 2.0, then once per deny_interval_s
    d = out[0][1]
    assert (d.outcome, d.person_id, d.name, d.score, d.threshold, d.frames_used) == ("denied", None, None, 0.21, THR, 5)
    assert d.reason == "unknown face: best score 0.21 below threshold 0.47"
    assert d.liveness.status == "not_required"
    assert decider.end_track(3, 13.0) is None  # already denied


def test_deny_reason_is_the_most_common_failure() -> None:
    out = feed(Decider(CFG), 1, [ambiguous(), below(), ambiguous(0.62, 0.6), ambiguous(), below()])
    assert out[0][1].reason == "ambiguous in 3 of 5 frames: alice leads bob by 0.02, margin 0.05 needed"
    out = feed(
        Decider(CFG), 2, [below(), alice(), alice(), alice(), below()], quality_ok=[True, False, False, False, True]
    )
    assert out[0][1].reason == "poor quality in 3 of 5 frames: face too small"


def test_end_track_denies_an_undecided_stranger_once() -> None:
    decider = Decider(CFG)
    assert feed(decider, 5, [below(0.3), below(0.35)], first_seen=-1.0) == []
    d = decider.end_track(5, 2.0)
    assert d is not None
    assert (d.outcome, d.track_id, d.frames_used, d.score, d.t, d.latency_s) == ("denied", 5, 2, 0.35, 2.0, 3.0)
    assert d.reason == "unknown face: best score 0.35 below threshold 0.47"
    assert decider.end_track(5, 2.5) is None
    assert decider.end_track(99, 2.5) is None  # never seen


def test_end_track_emits_nothing_for_a_granted_track() -> None:
    decider = Decider(CFG)
    assert len(feed(decider, 1, [alice()] * 3)) == 1
    assert decider.end_track(1, 3.0) is None


def test_liveness_fail_denies_and_never_opens() -> None:
    calls: list[tuple[int, float]] = []

    def spoof(track_id: int, obs: Observation) -> LivenessResult:
        calls.append((track_id, obs.t))
        return LivenessResult("fail", score=0.1, reason="screen replay")

    decider = Decider(CFG, liveness=spoof)
    out = feed(decider, 4, [alice()] * 30, dt=0.5)  # t = 0 .. 14.5
    assert [(d.outcome, d.t) for _, d in out] == [("denied", 1.0), ("denied", 6.0), ("denied", 11.0)]
    d = out[0][1]
    assert (d.person_id, d.name, d.reason) == (1, "alice", "liveness fail: screen replay")
    assert d.liveness == LivenessResult("fail", score=0.1, reason="screen replay")
    assert calls[0] == (4, 1.0)  # the granting frame is the one judged
    assert decider.end_track(4, 15.0) is None


def test_a_grant_held_back_by_liveness_is_not_also_denied_as_a_stranger() -> None:
    decider = Decider(CFG, liveness=lambda track_id, obs: LivenessResult("fail", reason="mask"))
    out = feed(decider, 1, [alice()] * 3 + [below(0.3)] * 3, dt=3.0)  # t = 0, 3, ... 15
    # At 12 the window is full and the rate limit has passed, but alice still has 3 votes: no stranger deny until
    # her third vote slides out at 15.
    assert [(d.t, d.reason) for _, d in out] == [
        (6.0, "liveness fail: mask"),
        (15.0, "unknown face: best score 0.30 below threshold 0.47"),
    ]


@pytest.mark.parametrize(
    ("check_result", "reason"),
    [
        (LivenessResult("unavailable", reason="no depth camera"), "liveness unavailable: no depth camera"),
        (LivenessResult("not_required"), "liveness not_required"),  # fail secure: only "pass" opens
        (RuntimeError("sensor gone"), "liveness unavailable: liveness check raised RuntimeError: sensor gone"),
    ],
)
def test_liveness_anything_but_pass_denies(check_result: LivenessResult | Exception, reason: str) -> None:
    def check(track_id: int, obs: Observation) -> LivenessResult:
        if isinstance(check_result, Exception):
            raise check_result
        return check_result

    out = feed(Decider(CFG, liveness=check), 1, [alice()] * 6)
    assert [(d.outcome, d.reason) for _, d in out] == [("denied", reason)]


def test_liveness_pass_grants_and_carries_the_result() -> None:
    result = LivenessResult("pass", score=0.97, reason="blink")
    calls: list[float] = []

    def live(track_id: int, obs: Observation) -> LivenessResult:
        calls.append(obs.t)
        return result

    decider = Decider(CFG, liveness=live)
    out = feed(decider, 1, [below(), alice(), alice(), alice()])
    assert [(i, d.outcome) for i, d in out] == [(3, "granted")]
    assert out[0][1].liveness is result
    assert calls == [0.75]
    # Liveness is only asked about a grant: a stranger's deny does not run it.
    out = feed(decider, 2, [below()] * 5)
    assert [d.liveness.status for _, d in out] == ["not_checked"]
    assert calls == [0.75]


def test_no_clock_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_clock() -> float:
        raise AssertionError("the decider must take time from the observations")

    for name in ("time", "monotonic", "perf_counter"):
        monkeypatch.setattr(time, name, no_clock)
    decider = Decider(CFG)
    assert [d.t for _, d in feed(decider, 1, [alice()] * 3, t0=1e6)] == [1e6 + 0.5]
    assert decider.end_track(1, 1e6 + 1) is None


def test_embedding_need_follows_the_decision() -> None:
    decider = Decider(CFG)
    assert decider.embedding_need(1) == EVERY_FRAME  # never seen
    feed(decider, 1, [alice()] * 2)
    assert decider.embedding_need(1) == EVERY_FRAME  # undecided: every frame can complete the vote
    feed(decider, 1, [alice()], t0=0.5)
    assert decider.embedding_need(1) == NONE  # granted: its frames are ignored from now on
    assert feed(decider, 1, [alice()] * 10, t0=1.0) == []  # (which is why skipping them changes nothing)
    # A stranger's track, once denied, only needs a refresh; so does a track held by alice's cooldown.
    assert [d.outcome for _, d in feed(decider, 2, [below()] * 5, t0=2.0)] == ["denied"]
    assert decider.embedding_need(2) == REFRESH
    feed(decider, 3, [alice()] * 3, t0=4.0)
    assert decider.embedding_need(3) == REFRESH
    decider.end_track(2, 9.0)
    assert decider.embedding_need(2) == EVERY_FRAME  # forgotten: a new track with that id starts over


def test_embedding_need_is_every_frame_while_a_liveness_challenge_runs() -> None:
    answers = iter([LivenessResult("pending", reason="please blink")] * 3 + [LivenessResult("pass", reason="blink")])
    decider = Decider(CFG, liveness=lambda track_id, obs: next(answers), continuity_allowance=0.05)
    assert feed(decider, 1, [alice()] * 3) == []
    assert decider.embedding_need(1) == EVERY_FRAME  # each frame the challenge judges is identity-checked
    # Frames that are not accepted (closed eyes: lower score) but still alice carry the challenge to its answer.
    out = feed(decider, 1, [below(0.45), below(0.43), alice()], t0=1.0)
    assert [(i, d.outcome, d.name) for i, d in out] == [(2, "granted", "alice")]
    assert decider.embedding_need(1) == NONE
