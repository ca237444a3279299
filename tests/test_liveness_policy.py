"""Liveness policy without models: the decider holding a grant while a challenge runs, fail-secure outcomes, the
``Liveness`` combination of layers, the config keys, and the APCER/BPCER arithmetic of ``kiosk eval-liveness``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from kiosk.config import DecisionConfig, LivenessConfig, PassiveLivenessConfig, parse_config
from kiosk.door.decide import Decider, LivenessResult, Observation
from kiosk.errors import ConfigError, InputError
from kiosk.lab.liveness_eval import Presentation, Scored, evaluate, rates, read_presentations
from kiosk.liveness import Liveness
from kiosk.recognition.match import MatchResult
from kiosk.types import Face, Image

CFG = DecisionConfig(frames_needed=3, window=5, cooldown_s=10.0, deny_interval_s=5.0)


def alice() -> MatchResult:
    return MatchResult(True, 1, "alice", 0.8, "alice", "carol", 0.3, 0.47, 0.05, "match", candidate_id=1)


def alice_unaccepted() -> MatchResult:
    """alice at a score under the threshold (eyes closed): no vote, but still alice for the running challenge."""
    return MatchResult(False, None, None, 0.45, "alice", "carol", 0.3, 0.47, 0.05, "below", candidate_id=1)


class Script:
    """A liveness check answering from a list: one status per call (the last one repeats)."""

    def __init__(self, *statuses: str) -> None:
        self.statuses = list(statuses)
        self.calls = 0

    def __call__(self, track_id: int, obs: Observation) -> LivenessResult:
        status = self.statuses[min(self.calls, len(self.statuses) - 1)]
        self.calls += 1
        return LivenessResult(status, reason=f"scripted {status}")


def run(decider: Decider, matches: list[MatchResult | None], dt: float = 0.25) -> list[tuple[int, str, str]]:
    out = []
    for i, m in enumerate(matches):
        d = decider.observe(1, Observation(t=i * dt, match=m, quality_ok=True), 0.0)
        if d is not None:
            out.append((i, d.outcome, d.liveness.status))
    return out


def test_pending_holds_the_grant_and_asks_on_every_frame_even_unvoted() -> None:
    check = Script("pending", "pending", "pending", "pass")
    decider = Decider(CFG, liveness=check, continuity_allowance=0.05)
    # Frames 0-2 vote (grant due at 2: pending); 3 and 4 do not vote but still ask; 5 passes.
    out = run(decider, [alice(), alice(), alice(), alice_unaccepted(), alice_unaccepted(), alice_unaccepted()])
    assert out == [(5, "granted", "pass")]
    assert check.calls == 4


@pytest.mark.parametrize("status", ["fail", "unavailable"])
def test_a_failed_or_unavailable_check_denies_the_matched_person(status: str) -> None:
    decider = Decider(CFG, liveness=Script("pending", status), continuity_allowance=0.05)
    out = run(decider, [alice(), alice(), alice(), alice_unaccepted()])
    assert out == [(3, "denied", status)]


def test_a_track_that_leaves_during_a_challenge_is_denied_with_the_reason() -> None:
    decider = Decider(CFG, liveness=Script("pending"))
    assert run(decider, [alice(), alice(), alice(), alice()]) == []
    final = decider.end_track(1, 2.0)
    assert final is not None and final.outcome == "denied" and final.name == "alice"
    assert final.liveness.status == "fail" and "left before" in final.reason


def test_a_check_that_raises_keeps_the_door_shut() -> None:
    def broken(track_id: int, obs: Observation) -> LivenessResult:
        raise RuntimeError("mesh crashed")

    out = run(Decider(CFG, liveness=broken), [alice(), alice(), alice()])
    assert out == [(2, "denied", "unavailable")]


# -- the Liveness policy over fake layers ------------------------------------------------------------------------


class FakePassive:
    def __init__(self, scores: list[float]) -> None:
        self.scores = scores

    def score(self, image: Image, face: Face) -> float:
        return self.scores.pop(0)


class FakeActive:
    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.started: list[int] = []
        self.seen = 0

    def start(self, track_id: int, t: float) -> str:
        self.started.append(track_id)
        return "please blink"

    def observe(self, track_id: int, image: Image, face: Face, t: float) -> None:
        self.seen += 1

    def result(self, track_id: int, t: float) -> LivenessResult:
        return LivenessResult(self.answers.pop(0), score=0.5, reason="blink seen")

    def prompt(self, track_id: int, t: float) -> str | None:
        return "please blink"

    def end(self, track_id: int) -> None:
        pass


IMG = np.zeros((8, 8, 3), np.uint8)
FACE = Face(np.array([0, 0, 4, 4], np.float32), np.zeros((5, 2), np.float32), 0.9)


def obs(t: float = 0.0) -> Observation:
    return Observation(t=t, match=alice(), quality_ok=True)


def test_passive_mode_averages_the_last_frames_against_the_threshold() -> None:
    cfg = LivenessConfig(mode="passive", passive=PassiveLivenessConfig(models=("m",), threshold=0.5, frames=3))
    live = Liveness(cfg, passive=FakePassive([0.9, 0.9, 0.1, 0.2]))
    live.observe(1, IMG, FACE, 0.0)
    assert live(1, obs()).status == "pending"  # 1 of 3 frames scored
    live.observe(1, IMG, FACE, 0.1)
    live.observe(1, IMG, FACE, 0.2)
    r = live(1, obs())
    assert r.status == "pass" and r.score == pytest.approx((0.9 + 0.9 + 0.1) / 3)
    live.observe(1, IMG, FACE, 0.3)  # window is now 0.9, 0.1, 0.2: mean 0.4
    r = live(1, obs())
    assert r.status == "fail" and "below" in r.reason


def test_passive_mode_without_a_model_is_unavailable_not_a_pass() -> None:
    live = Liveness(LivenessConfig(mode="passive"))
    r = live(1, obs())
    assert r.status == "unavailable" and "liveness.passive.models" in r.reason


def test_both_runs_the_challenge_only_after_the_passive_layer_passes() -> None:
    cfg = LivenessConfig(mode="both", passive=PassiveLivenessConfig(models=("m",), frames=1))
    active = FakeActive(["pending", "pass"])
    prompts: list[tuple[int, str]] = []
    live = Liveness(cfg, passive=FakePassive([0.1, 0.9, 0.9]), active=active)
    live.on_prompt = lambda tid, text: prompts.append((tid, text))
    live.observe(1, IMG, FACE, 0.0)
    assert live(1, obs()).status == "fail"  # a photo: no challenge is offered
    assert active.started == [] and prompts == []
    live.observe(1, IMG, FACE, 0.1)
    assert live(1, obs(0.1)).status == "pending"
    assert prompts == [(1, "please blink")]
    live.observe(1, IMG, FACE, 0.2)
    r = live(1, obs(0.2))
    assert r.status == "pass" and r.method == "passive+active"
    assert active.started == [1]  # one challenge per track, prompted once


def test_active_mode_requires_the_active_layer() -> None:
    with pytest.raises(ValueError, match="active"):
        Liveness(LivenessConfig(mode="active"))


def test_config_keys_and_errors() -> None:
    assert parse_config({}).liveness.mode == "active"  # the secure default needs only pip-installed models
    cfg = parse_config({"liveness": {"mode": "both", "passive": {"models": ["a", "b"], "threshold": 0.7}}})
    assert cfg.liveness.passive.models == ("a", "b") and cfg.liveness.passive_required
    # YAML reads a bare `off` as false; it means the choice "off" (and `on` is refused by name).
    assert parse_config(yaml.safe_load("liveness:\n  mode: off\n")).liveness.mode == "off"
    with pytest.raises(ConfigError, match=r"liveness\.mode: must be one of off, passive, active, both, got 'on'"):
        parse_config(yaml.safe_load("liveness:\n  mode: on\n"))
    for bad, message in [
        ({"mode": "sometimes"}, "liveness.mode: must be one of off, passive, active, both"),
        ({"active": {"challenges": ["wink"]}}, "liveness.active.challenges[0]"),
        ({"active": {"challenges": []}}, "liveness.active.challenges: must name at least one"),
        ({"passive": {"threshold": 1.5}}, "liveness.passive.threshold: must be within"),
        ({"passive": {"models": ["a", "a"]}}, "lists a model twice"),
        ({"active": {"timeout_s": 0}}, "liveness.active.timeout_s"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_config({"liveness": bad})


# -- eval-liveness arithmetic ------------------------------------------------------------------------------------


def scored(label: str, kind: str, score: float | None) -> Scored:
    return Scored(Presentation(0, f"{label}-{kind}-{score}", label, kind), score)


def test_apcer_per_type_bpcer_and_failures_to_acquire() -> None:
    items = [
        scored("bona_fide", "", 0.9),
        scored("bona_fide", "", 0.4),  # rejected at 0.5: BPCER 1/2
        scored("bona_fide", "", None),  # no face: not in BPCER, counted as a failure to acquire
        scored("attack", "print", 0.6),  # accepted at 0.5: APCER print 1/2
        scored("attack", "print", 0.1),
        scored("attack", "screen_replay", 0.2),
        scored("attack", "screen_replay", 0.3),
    ]
    r = evaluate(items, 0.5)
    assert r["apcer"] == {"print": 0.5, "screen_replay": 0.0}
    assert r["apcer_max"] == 0.5 and r["bpcer"] == 0.5
    assert r["n"] == {"bona_fide": 2, "attack": 4, "attack_types": {"print": 2, "screen_replay": 2}}
    assert r["failed_to_acquire"] == {"bona_fide": 1, "attack": 0}
    assert len(r["curve"]) == 101 and r["curve"][0]["threshold"] == 0.0
    assert r["curve"][0]["bpcer"] == 0.0 and r["curve"][0]["apcer_max"] == 1.0  # threshold 0 accepts everything
    # APCER <= 5 % needs a threshold above the 0.6 print; from 0.61 to 0.9 the BPCER stays 1/2 (0.4 rejected).
    assert r["bpcer20"] == {"bpcer": 0.5, "threshold": 0.61}
    assert rates(items, 0.95)["bpcer"] == 1.0


def test_no_scored_presentation_is_an_error() -> None:
    with pytest.raises(InputError, match="no presentation could be scored"):
        evaluate([scored("attack", "print", None)], 0.5)


def test_labels_csv_errors_name_the_line(tmp_path: Path) -> None:
    f = tmp_path / "l.csv"
    f.write_text("path,label,attack_type\na.jpg,bona_fide,\nb.jpg,attack,print\nc.mp4,attack,\n")
    items = read_presentations(f)
    assert [(i.label, i.attack_type, i.is_video) for i in items] == [
        ("bona_fide", "", False),
        ("attack", "print", False),
        ("attack", "unspecified", True),
    ]
    for body, message in [
        ("path,label\na.jpg,live\n", ":2: label must be bona_fide or attack"),
        ("path,label,attack_type\na.jpg,bona_fide,print\n", ":2: a bona fide row has attack_type"),
        ("path,label\na.jpg,attack\na.jpg,attack\n", ":3: a.jpg is already listed on line 2"),
        ("path,kind\na.jpg,attack\n", ":1: bad header"),
        ("path,label\n,attack\n", ":2: empty path"),
    ]:
        f.write_text(body)
        with pytest.raises(InputError, match=message):
            read_presentations(f)
