"""Access decisions: K-of-N voting over a track's recent frames, per-person cooldown, rate-limited denies, liveness.

Pure and clock-injected: every time comes from ``Observation.t`` (monotonic seconds), so a wall-clock jump cannot
shorten a cooldown. While a liveness challenge runs, every frame of the track must still be the person whose votes
started it (identity continuity): otherwise the challenge is dropped and the track starts over. The loop logs one
INFO line per decision; this module logs at DEBUG only and never biometrics.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from kiosk.config import DecisionConfig
from kiosk.recognition.match import MatchResult
from kiosk.types import LivenessResult as LivenessResult  # re-exported: the decision API names them
from kiosk.types import Observation as Observation

log = logging.getLogger(__name__)

GRANTED = "granted"
DENIED = "denied"

# How much a track still needs embeddings (``Decider.embedding_need``): every frame while its decision is open or a
# liveness challenge runs (each frame the challenge judges must be identity-checked), a refresh (at
# ``decision.embed_interval_s`` or on a clearly better face) once it was denied or held by a cooldown, none once
# granted (the decider ignores a granted track's frames).
EVERY_FRAME = "every_frame"
REFRESH = "refresh"
NONE = "none"


# During a liveness challenge a frame still counts as the matched person down to its match threshold minus an
# allowance for closed eyes: this share of the way from the recogniser's accept threshold (its FMR 1e-5 point) down to
# its likely threshold (FMR 1e-3), which lands near its FMR 1e-4 point whatever its score scale (SFace: 0.47 - 0.45 x
# 0.11 = 0.42, its LFW 1e-4 point being 0.417; dlib's ResNet: 0.952 - 0.45 x 0.026 = 0.940, its 1e-4 point). On the
# real blink recordings closing the eyes lowered SFace's score by at most 0.038 (median 0.007, p95 0.027) from the
# second before, while other people's frames reached at most 0.370 against 200 LFW people, so the likely threshold
# itself (0.36) was too low (``python -m tools continuity``, docs/liveness.md).
CLOSED_EYE_SHARE = 0.45
IDENTITY_CHANGED = "identity changed during the liveness challenge"  # how a continuity deny's reason begins


def continuity_allowance(accept: float, likely: float) -> float:
    """How far below its match threshold a frame of the challenged person may score (closed eyes), for a recogniser
    with these thresholds: ``CLOSED_EYE_SHARE`` of the gap between them (0 when ``likely`` is not below ``accept``)."""
    return CLOSED_EYE_SHARE * max(accept - likely, 0.0)


LivenessCheck = Callable[[int, Observation], LivenessResult]
NOT_REQUIRED = LivenessResult("not_required")
NOT_CHECKED = LivenessResult("not_checked", reason="no grant was due")


@dataclass(frozen=True)
class Decision:
    """One access decision for a track. ``person_id``/``name`` are set for a grant and for a liveness deny."""

    outcome: str  # GRANTED | DENIED
    track_id: int
    person_id: int | None
    name: str | None
    score: float | None  # best score among the frames used
    runner_up: str | None
    runner_up_score: float | None
    threshold: float | None
    frames_used: int  # agreeing frames for a grant, frames in the window for a deny
    liveness: LivenessResult
    reason: str
    first_seen: float
    t: float

    @property
    def granted(self) -> bool:
        return self.outcome == GRANTED

    @property
    def latency_s(self) -> float:
        """Seconds from the track's first frame to this decision."""
        return self.t - self.first_seen


Frame = tuple[Observation, MatchResult]  # an embedded frame in a track's window, its match pulled out for typing


@dataclass
class _TrackState:
    first_seen: float
    window: deque[Frame]
    granted: bool = False
    denied: bool = False  # at least one deny was emitted
    last_deny: float | None = None
    cooled: bool = False  # recognised while that person was in cooldown: this track never denies
    pending: tuple[int, int] | None = None  # (person_id, votes): a grant waits on a running liveness challenge
    pending_best: MatchResult | None = None  # the best vote when the challenge began (the window moves on)
    restarted: bool = False  # the challenge was dropped (identity changed): the loop ends the track's liveness state
    recent: deque[Observation] = field(default_factory=deque)  # the last ``evidence_frames`` frames, embedded or not
    confirming: bool = False  # a grant is due but the liveness evidence holds unchecked frames: embed every frame


class Decider:
    """Turns each track's observations into at most one grant, plus rate-limited denies."""

    def __init__(
        self,
        cfg: DecisionConfig,
        *,
        liveness: LivenessCheck | None = None,
        continuity_allowance: float = 0.0,
        evidence_frames: int = 1,
    ) -> None:
        """``continuity_allowance``: during a liveness challenge, how far below its match threshold a frame of the
        challenged person may score and still be that person (the loop passes ``continuity_allowance(accept,
        likely)``); 0: every frame must reach the threshold itself. ``evidence_frames``: how many of a track's latest
        frames the liveness check judges before a challenge (the passive layer's ``liveness.passive.frames``); a
        grant is attempted only when every one of them is the person voted for, by the same continuity rule, so a
        live face shown just before a photo cannot lend the photo its liveness score."""
        self.cfg = cfg
        self.liveness = liveness
        self.continuity_allowance = continuity_allowance
        self.evidence_frames = max(1, int(evidence_frames))
        self._tracks: dict[int, _TrackState] = {}
        self._last_grant: dict[int, float] = {}  # person_id -> time of the last grant, by any track

    def reset(self) -> None:
        """Forget every track and every cooldown."""
        self._tracks.clear()
        self._last_grant.clear()

    def observe(self, track_id: int, obs: Observation, first_seen: float) -> Decision | None:
        """Add one frame of ``track_id``; returns a decision when one is due, else None.

        A grant is attempted only on a frame that itself votes, so liveness always judges a frame of that person.
        """
        st = self._tracks.get(track_id)
        if st is None:
            st = self._tracks[track_id] = _TrackState(
                first_seen, deque(maxlen=self.cfg.window), recent=deque(maxlen=self.evidence_frames)
            )
        m = obs.match
        if st.granted:
            return None
        st.recent.append(obs)
        if m is not None:
            st.window.append((obs, m))
        if st.pending is not None:
            # A grant is due and a liveness challenge is running: ask again on every frame, voted or not, so an
            # answer (a blink) or a timeout is acted on at once; but first check that this frame, which the
            # challenge has just judged, is still the person it was started for.
            pid, count = st.pending
            broken = self._continuity_break(pid, self._best_for(st, pid), obs)
            if broken is not None:
                return self._restart(track_id, st, obs.t, f"{IDENTITY_CHANGED}: {broken}", pid, count)
            return self._try_grant(track_id, st, obs, pid, count)
        if m is None:
            return None
        counts = Counter(pid for pid, _ in _votes(st.window))
        if _votes_for(obs, m) and m.person_id is not None and counts[m.person_id] >= self.cfg.frames_needed:
            if self.liveness is not None and self._evidence_break(st, m.person_id) is not None:
                st.confirming = True  # the evidence holds frames of another face or unchecked ones: wait for more
                return None
            st.confirming = False
            return self._try_grant(track_id, st, obs, m.person_id, counts[m.person_id])
        if len(st.window) < self.cfg.window or st.cooled:
            return None
        if counts and max(counts.values()) >= self.cfg.frames_needed:
            return None  # a grant is held back (cooldown or liveness); that is not a stranger
        if st.last_deny is not None and obs.t - st.last_deny < self.cfg.deny_interval_s:
            return None
        return self._deny(track_id, st, obs.t)

    def embedding_need(self, track_id: int) -> str:
        """``EVERY_FRAME`` for a new or undecided track and while a liveness challenge runs (every frame the challenge
        judges is identity-checked: a face swapped in between two embeddings could otherwise answer it); ``REFRESH``
        for one already denied or held by a cooldown; ``NONE`` for a granted one: its frames can no longer change
        anything.
        """
        st = self._tracks.get(track_id)
        if st is None:
            return EVERY_FRAME
        if st.granted:
            return NONE
        if st.pending is not None or st.confirming:
            return EVERY_FRAME
        if st.denied or st.cooled:
            return REFRESH
        return EVERY_FRAME

    def take_restart(self, track_id: int) -> bool:
        """True once after ``track_id``'s liveness challenge was dropped because the face changed: the caller ends the
        track's liveness state (``Liveness.end``), so the next grant starts a fresh challenge."""
        st = self._tracks.get(track_id)
        if st is None or not st.restarted:
            return False
        st.restarted = False
        return True

    def end_track(self, track_id: int, t: float) -> Decision | None:
        """Forget ``track_id``; a track with votes that was never granted, denied or cooled down gets one deny."""
        st = self._tracks.pop(track_id, None)
        if st is None or st.granted or st.cooled or not st.window:
            return None
        if st.pending is not None:
            pid, count = st.pending
            best = self._best_for(st, pid)
            liveness = LivenessResult("fail", reason="the face left before the liveness challenge was answered")
            reason = f"liveness fail: {liveness.reason}"
            return self._emit(DENIED, track_id, st, t, best, count, liveness, reason, pid, best.name)
        if st.denied:
            return None
        return self._deny(track_id, st, t)

    def _continuity_break(self, pid: int, claimed: MatchResult, obs: Observation) -> str | None:
        """Why ``obs`` is not person ``pid`` (``claimed``: their best vote), for whom the running challenge was
        started, or None when it is.

        Every frame must carry a match whose best candidate is that person, at or above the continuity threshold;
        the match need not be accepted (closed eyes lower the score, and a frame may fail quality)."""
        m = obs.match
        if m is None:
            return f"a frame of the face was not identified ({claimed.name})"
        if m.candidate_id != pid:
            who = f"{m.candidate} ({m.score:.2f})" if m.candidate is not None and m.score is not None else "no one"
            return f"the face became {who}, not {claimed.name}"
        floor = m.threshold - self.continuity_allowance
        if m.score is None or m.score < floor:
            score = "no score" if m.score is None else f"{m.score:.2f}"
            return f"{claimed.name} scored {score}, below the continuity threshold {floor:.2f}"
        return None

    def _evidence_break(self, st: _TrackState, pid: int) -> str | None:
        """Why the frames the liveness check is about to judge are not all person ``pid``, or None when they are
        (fewer frames than ``evidence_frames`` so far: the check itself waits for more)."""
        claimed = self._best_for(st, pid)
        for obs in st.recent:
            broken = self._continuity_break(pid, claimed, obs)
            if broken is not None:
                return broken
        return None

    def _restart(self, track_id: int, st: _TrackState, t: float, reason: str, pid: int, count: int) -> Decision | None:
        """Drop the track's votes and its challenge for ``pid`` (``count`` votes): it must earn a fresh match and a
        fresh challenge. Deny with ``reason``, within the deny rate limit."""
        best = self._best_for(st, pid)
        st.window.clear()
        st.pending = st.pending_best = None
        st.restarted = True
        log.debug("track %d: %s; votes and challenge dropped", track_id, reason)
        if st.last_deny is not None and t - st.last_deny < self.cfg.deny_interval_s:
            return None
        liveness = LivenessResult("fail", reason=reason)
        return self._emit(DENIED, track_id, st, t, best, count, liveness, reason, pid, best.name)

    def _try_grant(self, track_id: int, st: _TrackState, obs: Observation, pid: int, count: int) -> Decision | None:
        last = self._last_grant.get(pid)
        if last is not None and obs.t - last < self.cfg.cooldown_s:
            st.cooled = True
            log.debug("track %d: person %d granted %.1f s ago, in cooldown: no decision", track_id, pid, obs.t - last)
            return None
        best = self._best_for(st, pid)
        if self.liveness is None:
            liveness = NOT_REQUIRED
        else:
            liveness = _check_liveness(self.liveness, track_id, obs)
            if liveness.status == "pending":
                if st.pending is None:
                    st.pending, st.pending_best = (pid, count), best
                return None
            st.pending = None
            if liveness.status != "pass":
                # Fail secure: anything but an explicit pass is a deny. The track stays undecided, so a later frame
                # may still pass; the deny rate limit keeps a failing check from flooding the event log.
                if st.last_deny is not None and obs.t - st.last_deny < self.cfg.deny_interval_s:
                    return None
                reason = f"liveness {liveness.status}" + (f": {liveness.reason}" if liveness.reason else "")
                return self._emit(DENIED, track_id, st, obs.t, best, count, liveness, reason, pid, best.name)
        st.granted = True
        self._last_grant[pid] = obs.t
        reason = f"{count} of {len(st.window)} frames matched {best.name}"
        if liveness.status == "pass" and liveness.reason:
            reason += f"; liveness: {liveness.reason}"
        return self._emit(GRANTED, track_id, st, obs.t, best, count, liveness, reason, pid, best.name)

    @staticmethod
    def _best_for(st: _TrackState, pid: int) -> MatchResult:
        """The best vote for ``pid`` in the window, else the one kept when a liveness challenge began."""
        votes = [m for p, m in _votes(st.window) if p == pid]
        if votes:
            return _best(votes)
        # Only reachable while a challenge is pending (pending_best is set); the window is never empty here.
        return st.pending_best if st.pending_best is not None else _best([m for _, m in st.window])

    def _deny(self, track_id: int, st: _TrackState, t: float) -> Decision:
        best = _best([m for _, m in st.window])
        liveness = NOT_REQUIRED if self.liveness is None else NOT_CHECKED
        return self._emit(DENIED, track_id, st, t, best, len(st.window), liveness, self._deny_reason(st), None, None)

    def _deny_reason(self, st: _TrackState) -> str:
        """Reason of the most common failure in the window (ties: below threshold, ambiguous, split, quality)."""
        groups: dict[str, list[Frame]] = {"below": [], "ambiguous": [], "split": [], "quality": [], "other": []}
        for frame in st.window:
            groups[_failure(*frame)].append(frame)
        kind = max(groups, key=lambda k: len(groups[k]))  # max() keeps the first of equals: dict order breaks ties
        n, w = len(groups[kind]), len(st.window)
        top = _best([m for _, m in groups[kind]])
        if kind == "below":
            return f"unknown face: best score {top.score or 0.0:.2f} below threshold {top.threshold:.2f}"
        if kind == "ambiguous":
            lead = (top.score or 0.0) - (top.runner_up_score or 0.0)
            return (
                f"ambiguous in {n} of {w} frames: {top.candidate} leads {top.runner_up} by {lead:.2f}, "
                f"margin {top.margin:.2f} needed"
            )
        if kind == "split":
            name, agree = Counter(m.name for _, m in groups[kind]).most_common(1)[0]
            return f"only {agree} of {w} frames matched {name}, {self.cfg.frames_needed} needed"
        if kind == "quality":
            why = Counter(r for o, _ in groups[kind] for r in o.quality_reasons).most_common(1)
            return f"poor quality in {n} of {w} frames" + (f": {why[0][0]}" if why else "")
        return f"no match in {n} of {w} frames: {top.reason}"

    def _emit(
        self,
        outcome: str,
        track_id: int,
        st: _TrackState,
        t: float,
        best: MatchResult,
        frames: int,
        liveness: LivenessResult,
        reason: str,
        person_id: int | None,
        name: str | None,
    ) -> Decision:
        if outcome == DENIED:
            st.denied, st.last_deny = True, t
        log.debug("track %d: %s (%s)", track_id, outcome, reason)
        return Decision(
            outcome=outcome,
            track_id=track_id,
            person_id=person_id,
            name=name,
            score=best.score,
            runner_up=best.runner_up,
            runner_up_score=best.runner_up_score,
            threshold=best.threshold,
            frames_used=frames,
            liveness=liveness,
            reason=reason,
            first_seen=st.first_seen,
            t=t,
        )


def _votes_for(obs: Observation, m: MatchResult) -> bool:
    """A frame votes for a person only when it passed quality and the matcher accepted it."""
    return obs.quality_ok and m.accepted and m.person_id is not None


def _votes(window: deque[Frame]) -> list[tuple[int, MatchResult]]:
    return [(m.person_id, m) for o, m in window if m.person_id is not None and _votes_for(o, m)]


def _best(matches: list[MatchResult]) -> MatchResult:
    """The highest-scoring match (a match without a score ranks last); ``matches`` is never empty here."""
    return max(matches, key=lambda m: float("-inf") if m.score is None else m.score)


def _check_liveness(check: LivenessCheck, track_id: int, obs: Observation) -> LivenessResult:
    try:
        return check(track_id, obs)
    except Exception as exc:  # a broken check must keep the door shut, not crash the loop
        log.warning("liveness check raised %s: treating it as unavailable", type(exc).__name__, exc_info=True)
        return LivenessResult("unavailable", reason=f"liveness check raised {type(exc).__name__}: {exc}")


def _failure(o: Observation, m: MatchResult) -> str:
    """Why a frame did not help a grant: quality, split (accepted, too few agree), below threshold, ambiguous."""
    if not o.quality_ok:
        return "quality"
    if m.accepted:
        return "split"
    if m.score is None:
        return "other"  # e.g. an empty gallery
    return "below" if m.score < m.threshold else "ambiguous"
