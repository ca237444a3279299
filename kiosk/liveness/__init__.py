"""Liveness policy: which layers must pass before the door opens, and the per-track state that feeds them.

Two independent layers:

- **passive** (``passive.py``): MiniFASNet models on scaled crops around the face, scored on every frame of a track;
  the decision uses the mean live-face probability over the track's last ``liveness.passive.frames`` frames.
- **active** (``active.py``): after a match, a random sequence of ``liveness.active.steps`` prompts (blink, or a head
  turn to a random side), each answered within ``liveness.active.timeout_s`` and no sooner than
  ``liveness.active.min_reaction_s`` after it was shown; the 468-point face mesh runs only while a challenge runs.
  Every prompt of the sequence (and the "hold still" between two) goes to ``on_prompt`` once, when it is issued.

``Liveness`` is the decider's liveness check (``kiosk.door.decide.LivenessCheck``). It fails secure: anything but an
explicit pass keeps the door shut, a layer the mode requires but that cannot run reports "unavailable" (a deny), and
a liveness model named in the config that is missing from the manifest is a startup error.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from kiosk.config import LivenessConfig
from kiosk.types import Face, Image, LivenessResult, Observation

if TYPE_CHECKING:
    from kiosk.liveness.active import ActiveLiveness
    from kiosk.liveness.passive import PassiveLiveness
    from kiosk.models.backends import RuntimeOptions
    from kiosk.models.manifest import Manifest

log = logging.getLogger(__name__)

Prompt = Callable[[int, str], None]


class Liveness:
    """The configured policy (``liveness.mode``) over the passive and active layers; one instance per door loop."""

    def __init__(
        self,
        cfg: LivenessConfig,
        *,
        passive: PassiveLiveness | None = None,
        active: ActiveLiveness | None = None,
        on_prompt: Prompt | None = None,
    ) -> None:
        if cfg.active_required and active is None:
            raise ValueError("liveness.mode needs the active layer but none was given")
        self.cfg = cfg
        self.passive = passive
        self.active = active
        self.on_prompt = on_prompt
        self._scores: dict[int, deque[float]] = {}
        self._prompted: dict[int, str] = {}  # track id → the prompt last shown

    @classmethod
    def from_config(cls, cfg: LivenessConfig, manifest: Manifest, options: RuntimeOptions) -> Liveness | None:
        """Load the layers ``cfg.mode`` needs (hash-checked); None when liveness is off.

        A configured model that is missing or altered raises (a startup error); a passive layer with no model
        configured is allowed but reports "unavailable" on every attempt, so the door stays shut.
        """
        if cfg.mode == "off":
            return None
        passive = active = None
        if cfg.passive_required:
            if cfg.passive.models:
                from kiosk.liveness.passive import PassiveLiveness

                passive = PassiveLiveness.from_manifest(manifest, list(cfg.passive.models), options)
            else:
                log.warning(
                    "liveness.mode is %s but liveness.passive.models is empty: the passive layer is unavailable and "
                    "every grant will be refused (convert MiniFASNet checkpoints with `python -m tools minifasnet`)",
                    cfg.mode,
                )
        if cfg.active_required:
            from kiosk.liveness.active import ActiveLiveness
            from kiosk.liveness.mesh import load_face_mesh

            mesh = load_face_mesh(manifest, cfg.active.model, options)
            active = ActiveLiveness(
                mesh,
                challenges=cfg.active.challenges,
                steps=cfg.active.steps,
                timeout_s=cfg.active.timeout_s,
                turn_deg=cfg.active.turn_deg,
                min_reaction_s=cfg.active.min_reaction_s,
                pause_s=cfg.active.pause_s,
            )
        log.info(
            "liveness: mode %s (passive: %s; active: %s)",
            cfg.mode,
            (", ".join(cfg.passive.models) or "no model") if cfg.passive_required else "off",
            f"{cfg.active.steps} x {'/'.join(cfg.active.challenges)}" if cfg.active_required else "off",
        )
        return cls(cfg, passive=passive, active=active)

    @property
    def method(self) -> str:
        return {"passive": "passive", "active": "active", "both": "passive+active"}.get(self.cfg.mode, "off")

    # -- per frame -------------------------------------------------------------------------------------------

    def observe(self, track_id: int, image: Image, face: Face, t: float) -> None:
        """Feed one frame of a track: the passive score is kept; a running challenge sees the frame."""
        if self.passive is not None:
            window = self._scores.get(track_id)
            if window is None:
                window = self._scores[track_id] = deque(maxlen=self.cfg.passive.frames)
            window.append(self.passive.score(image, face))
        if self.active is not None:
            self.active.observe(track_id, image, face, t)

    def end(self, track_id: int) -> None:
        """Forget a track that left."""
        self._scores.pop(track_id, None)
        self._prompted.pop(track_id, None)
        if self.active is not None:
            self.active.end(track_id)

    def reset(self) -> None:
        """Forget every track: a measuring tool runs a fresh loop (track ids from 1 again) on the same instance."""
        self._scores.clear()
        self._prompted.clear()
        if self.active is not None:
            self.active.reset()

    # -- the decider's check ---------------------------------------------------------------------------------

    def __call__(self, track_id: int, obs: Observation) -> LivenessResult:
        passive = self._passive(track_id) if self.cfg.passive_required else None
        if passive is not None and passive.status != "pass":
            return passive
        if not self.cfg.active_required:
            assert passive is not None  # mode is passive
            return passive
        active = self._active(track_id, obs.t)
        if active.status != "pass" or passive is None:
            return active
        return LivenessResult(
            "pass", score=passive.score, reason=f"{passive.reason}; {active.reason}", method=self.method
        )

    def _passive(self, track_id: int) -> LivenessResult:
        if self.passive is None:
            reason = "no passive liveness model configured (liveness.passive.models)"
            return LivenessResult("unavailable", reason=reason, method=self.method)
        scores = self._scores.get(track_id)
        need = self.cfg.passive.frames
        if not scores or len(scores) < need:
            have = len(scores) if scores else 0
            return LivenessResult("pending", reason=f"{have} of {need} frames scored", method=self.method)
        from kiosk.liveness.passive import fuse  # already loaded with the passive layer

        score = fuse(list(scores), self.cfg.passive.fusion)
        thr = self.cfg.passive.threshold
        if score < thr:
            reason = f"passive score {score:.2f} below {thr:.2f} (photo or screen suspected)"
            return LivenessResult("fail", score=score, reason=reason, method=self.method)
        return LivenessResult("pass", score=score, reason=f"passive score {score:.2f}", method=self.method)

    def _active(self, track_id: int, t: float) -> LivenessResult:
        assert self.active is not None  # required by __init__ when the mode needs it
        if track_id not in self._prompted:
            self._show(track_id, self.active.start(track_id, t))
        r = self.active.result(track_id, t)
        if r.status == "pending":
            now = self.active.prompt(track_id, t)
            if now is not None and now != self._prompted.get(track_id):
                self._show(track_id, now)  # the next prompt of the sequence, or the hold before it
        return LivenessResult(r.status, score=r.score, reason=r.reason, method=self.method)

    def _show(self, track_id: int, prompt: str) -> None:
        self._prompted[track_id] = prompt
        log.info("liveness challenge track=%d: %s", track_id, prompt)
        if self.on_prompt is not None:
            self.on_prompt(track_id, prompt)
