"""The door loop: newest camera frame → detect → track → (embed → match) → decide → relay → record.

Everything it drives is injected (pipeline, gallery, camera, door, notifier, clock), so the same loop runs on a
webcam, on a replayed video in tests, and under systemd. It never opens the door except through ``Decider``'s grant,
and the caller turns the relay off on every exit path (``run_kiosk`` does it in ``finally``).

Every iteration bumps ``heartbeat`` (for ``kiosk.door.watchdog``) and pings systemd's watchdog, with or without a frame.
An unexpected error in one frame is contained: logged (rate-limited), relay off, frame dropped; ``FATAL_ERRORS`` and
``safety.max_frame_errors`` failing frames in a row end the loop.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from kiosk.door.access import AccessPolicy, AccessVerdict
from kiosk.door.camera import Camera, Frame
from kiosk.door.decide import DENIED, GRANTED, NONE, Decider, Decision, Observation, continuity_allowance
from kiosk.door.notify import Notifier
from kiosk.door.osdp import CardReader, CredentialError
from kiosk.door.relay import Door
from kiosk.door.snapshots import SnapshotStore
from kiosk.door.track import Track, Tracker
from kiosk.errors import (
    ConfigError,
    GalleryCorruptError,
    GalleryError,
    HardwareError,
    InsecureStorageError,
    KioskError,
    ModelError,
    TemplateKeyError,
)
from kiosk.gallery import Gallery, GalleryMatrix, utc_now
from kiosk.liveness import Liveness
from kiosk.recognition.detect import select_faces
from kiosk.recognition.match import Matcher
from kiosk.recognition.pipeline import Pipeline
from kiosk.stats import median
from kiosk.types import QualityReport

if TYPE_CHECKING:
    from kiosk.fleet.replica import LiveMatrix

log = logging.getLogger("kiosk.door.loop")

MATRIX_REFRESH_S = 1.0  # how often to look for gallery changes (data_version) and validity windows
VALIDITY_REFRESH_S = 30.0
STATUS_INTERVAL_S = 2.0
EVENT_ERROR_LOG_INTERVAL_S = 60.0
# NOTE: event writes wait this long for another writer, not gallery.busy_timeout_s: the loop must not stall behind
# `kiosk enroll` or a locked/full database. Unwritten events wait in memory (oldest dropped beyond the backlog, and
# counted) and are written, with their own timestamps, as soon as the gallery takes writes again.
EVENT_WRITE_WAIT_S = 0.2
EVENT_BACKLOG = 2000
FRAME_ERROR_LOG_INTERVAL_S = 10.0
SCREEN_ERROR_LOG_INTERVAL_S = 30.0
LATENCY_WINDOW = 1000
# Errors that no retry on the next frame can fix (a broken install, a relay that cannot switch): the loop stops on
# the first one, so the CLI exits with its named code (systemd does not restart CONFIG/MODEL/INSECURE/KEY).
FATAL_ERRORS: tuple[type[KioskError], ...] = (
    ModelError,
    ConfigError,
    TemplateKeyError,
    InsecureStorageError,
    HardwareError,
    GalleryCorruptError,
)


class Screen(Protocol):
    """What the loop tells a screen (``kiosk.screen.loop.LoopScreen``): each call returns at once and never waits
    on a client. ``capturing()`` True: a guided capture runs, the loop hands it its frames and decides nothing."""

    def capturing(self) -> bool: ...
    def capture_frame(self, loop: DoorLoop, frame: Frame) -> None: ...
    def frame(
        self,
        loop: DoorLoop,
        frame: Frame,
        tracks: list[Track],
        quality: dict[int, QualityReport],
        decisions: list[Decision],
    ) -> None: ...
    def prompt(self, track_id: int, prompt: str, t: float) -> None: ...
    def tick(self, loop: DoorLoop, now: float) -> None: ...


class FrameErrorsExceeded(KioskError):
    """``safety.max_frame_errors`` consecutive frames failed: the loop stops (exit 1) and systemd restarts it."""


@dataclass
class LoopStats:
    frames: int = 0
    faces: int = 0
    embeddings: int = 0
    embeddings_skipped: int = 0  # tracked faces not embedded: granted, or decided and not due a refresh
    granted: int = 0
    denied: int = 0
    pulses: int = 0
    started: float = 0.0
    # Recent decisions only: a kiosk runs for months, so nothing here grows with the number of decisions.
    grant_latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))  # seen → pulse
    deny_latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    frame_errors: int = 0  # frames whose processing raised, in total (DoorLoop.frame_errors counts consecutive ones)
    frame_ms: deque[float] = field(default_factory=lambda: deque(maxlen=200))
    last_decision: str = "none yet"

    @property
    def fps(self) -> float:
        """Frames processed per second over the recent window (processing rate, not camera rate)."""
        if not self.frame_ms:
            return 0.0
        return 1000.0 / (sum(self.frame_ms) / len(self.frame_ms))

    def as_dict(self) -> dict[str, Any]:
        grants, denials, frame_ms = self.grant_latency_ms, self.deny_latency_ms, self.frame_ms
        return {
            "frames": self.frames,
            "faces": self.faces,
            "embeddings": self.embeddings,
            "embeddings_skipped": self.embeddings_skipped,
            "granted": self.granted,
            "denied": self.denied,
            "door_pulses": self.pulses,
            "frame_errors": self.frame_errors,
            "fps": round(self.fps, 1),
            "frame_ms_median": round(median(frame_ms), 2) if frame_ms else None,
            "grant_latency_ms_median": round(median(grants), 1) if grants else None,
            "deny_latency_ms_median": round(median(denials), 1) if denials else None,
        }


class DoorLoop:
    def __init__(
        self,
        pipeline: Pipeline,
        gallery: Gallery,
        camera: Camera,
        door: Door,
        *,
        notifier: Notifier | None = None,
        snapshots: SnapshotStore | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_decision: Callable[[Decision, str], None] | None = None,
        door_events: queue.SimpleQueue[tuple[str, dict[str, Any]]] | None = None,
        liveness: Liveness | None = None,
        on_prompt: Callable[[int, str], None] | None = None,
        decider: Decider | None = None,
        on_frame: Callable[[Frame, float], None] | None = None,
        on_event_error: Callable[[GalleryError], None] | None = None,
        screen: Screen | None = None,
        door_id: str = "door",
    ) -> None:
        """``decider`` replaces the ``Decider`` built from ``decision`` config and ``liveness`` (a measuring tool
        passes one that records what it is asked; build it with the same liveness). ``on_frame(frame, ms)`` is called
        after each frame ``process()`` completed, with its processing time in ms (not for a frame whose processing
        raised); an error it raises counts as the frame's. ``on_event_error(exc)`` is called with every failed event
        write (the event stays queued, as without it): the soak counts locked-gallery hits with it. ``screen``
        (optional) is told about every frame, prompt and loop iteration (``Screen``); an error it raises is logged
        (rate-limited) and never stops the loop or fails a frame, except a relay fault of a manual unlock
        (``FATAL_ERRORS``). ``door_id`` is this door's id in the access rules (``kiosk.door.access``)."""
        self.cfg = pipeline.cfg
        self.pipeline = pipeline
        self.gallery = gallery
        self.camera = camera
        self.door = door
        self.notifier = notifier or Notifier(address="")
        self.snapshots = snapshots
        self.clock = clock
        self.on_decision = on_decision
        self.door_events = door_events
        d = self.cfg.decision
        self.tracker = Tracker(iou_threshold=d.track_iou, max_age_s=d.track_max_age_s)
        self.liveness = liveness
        self.on_prompt = on_prompt
        if liveness is not None:
            liveness.on_prompt = self._prompt
        if decider is None:
            # A frame of the person answering a liveness challenge may score this much below the match threshold
            # (closed eyes) and still be that person; see kiosk.door.decide.CLOSED_EYE_SHARE.
            # The passive layer judges the track's last ``liveness.passive.frames`` frames: all must be the person.
            t, live = pipeline.thresholds, self.cfg.liveness
            decider = Decider(
                d,
                liveness=liveness,
                continuity_allowance=continuity_allowance(t.accept, t.likely),
                evidence_frames=live.passive.frames if live.passive_required else 1,
            )
        self.decider = decider
        self.on_frame = on_frame
        self.on_event_error = on_event_error
        self.stats = LoopStats()
        self.stop_event = threading.Event()
        self._matcher: Matcher | None = None
        self._data_version = -1
        self._matrix_checked = -float("inf")
        self._matrix_loaded = -float("inf")
        self._last_status = -float("inf")
        self._event_error_logged = -float("inf")
        self._unwritten: deque[tuple[str, str, dict[str, Any]]] = deque()
        self.events_dropped = 0
        self.max_frame_errors = pipeline.cfg.safety.max_frame_errors
        self.frame_errors = 0  # consecutive frames whose processing raised
        self._frame_error_logged = -float("inf")
        self._frame_errors_unlogged = 0
        # NOTE: the watchdog's heartbeat: time.monotonic() of the start of the latest loop iteration (frame or not).
        # Real monotonic time, whatever ``clock`` is injected: the watchdog measures real progress.
        self.heartbeat = time.monotonic()
        self.screen = screen
        self._frame_t = 0.0  # the time of the frame being processed (a liveness prompt happens inside it)
        self._quality: dict[int, QualityReport] = {}
        self._screen_error_logged = -float("inf")
        self.screen_errors = 0
        self.fleet: Any = None  # kiosk.fleet.service.FleetState when this door is part of a site (fleet.enabled)
        self._live: LiveMatrix | None = None
        self.door_id = door_id
        self._policy: AccessPolicy | None = None
        self._policy_version = -1

    # -- gallery ---------------------------------------------------------------------------------------------

    def matcher(self, now: float) -> Matcher:
        """The gallery matrix, reloaded when another process changed the gallery or validity windows may have."""
        if self._matcher is not None and now - self._matrix_checked < MATRIX_REFRESH_S:
            return self._matcher
        self._matrix_checked = now
        version = self.gallery.data_version()
        if self._matcher is None or version != self._data_version or now - self._matrix_loaded > VALIDITY_REFRESH_S:
            full = self._matcher is None or now - self._matrix_loaded > VALIDITY_REFRESH_S
            m = self._load_matrix(full)
            self._matcher = self.pipeline.matcher(m)
            if version != self._data_version:
                log.info(
                    "gallery loaded: %d templates of %d people, threshold %.3f",
                    len(m),
                    len(set(m.person_ids.tolist())),
                    self._matcher.threshold,
                )
            self._data_version = version
            if full:
                self._matrix_loaded = now
        return self._matcher

    def _load_matrix(self, full: bool) -> GalleryMatrix:
        """The whole matrix from the gallery; at a fleet door (a replica) only the people the last sync changed are
        re-read after the first load (``LiveMatrix.refresh``), so a revocation costs one person, not the gallery."""
        spec = self.pipeline.embedder.spec
        if self.fleet is None:
            return self.gallery.matrix(spec.id, spec.sha256)
        from kiosk.fleet.replica import LiveMatrix

        self.fleet.ensure_site_key()
        if self._live is None:
            self._live = LiveMatrix(self.gallery, spec.id, spec.sha256)
            return self._live.matrix
        return self._live.reload() if full else self._live.refresh()

    def reload(self) -> None:
        """Reload the gallery matrix on the next frame that needs it (``kiosk.screen``'s ``reload`` request; a fleet
        door's agent sends one after each sync: then only what changed is re-read)."""
        if self.fleet is None:
            self._matcher = None
        self._data_version = -1
        self._matrix_checked = -float("inf")
        self._policy = None

    def access(self, person_id: int) -> AccessVerdict:
        """May ``person_id`` open this door now? The access rules are reloaded when the gallery changed (only
        grants ask: one cheap ``data_version`` read each). A gallery that cannot be read keeps the rules last
        loaded; with none loaded yet the answer is no (fail secure)."""
        try:
            version = self.gallery.data_version()
            if self._policy is None or version != self._policy_version:
                self._policy, self._policy_version = AccessPolicy.load(self.gallery), version
        except GalleryError as exc:
            log.error(
                "cannot read the access rules (%s); %s", exc, "using the last ones read" if self._policy else "denying"
            )
            if self._policy is None:
                return AccessVerdict(False, None, f"the access rules cannot be read: {exc}")
        if self.fleet is not None and self.fleet.stale() and (stale := self._stale_refusal(person_id)) is not None:
            return stale
        return self._policy.decide(person_id, self.door_id, utc_now())

    def _stale_refusal(self, person_id: int) -> AccessVerdict | None:
        """A door not confirmed in sync with its hub for ``fleet.stale_after_s`` no longer trusts its old gallery
        (a revocation may not have reached it): ``fleet.stale_policy`` says whom it still lets in."""
        fleet_cfg = self.pipeline.cfg.fleet
        age = self.fleet.stale_for()
        since = "never synced with the hub" if age is None else f"not in sync with the hub for {age / 3600:.1f} h"
        if fleet_cfg.stale_policy == "continue":
            return None
        if fleet_cfg.stale_policy == "staff":
            try:
                groups = {g.casefold() for g in self.gallery.groups_of(person_id)}
            except GalleryError as exc:
                return AccessVerdict(False, None, f"{since}; staff only, and the groups cannot be read: {exc}")
            if fleet_cfg.staff_group.casefold() in groups:
                return None
            return AccessVerdict(False, None, f"{since}: staff only (group {fleet_cfg.staff_group})")
        return AccessVerdict(False, None, f"{since}: no one is let in (fleet.stale_policy: deny)")

    # -- one frame -------------------------------------------------------------------------------------------

    def process(self, frame: Frame) -> list[Decision]:
        """Run one frame through every stage; returns the decisions it produced (already acted on)."""
        t = frame.t
        started = time.perf_counter()
        self._frame_t = t
        if self.screen is not None and self._screen_capturing():
            # NOTE: a guided capture for enrolment owns the camera: no detection, no tracks, no door decisions.
            self._screen_call(self.screen.capture_frame, self, frame)
            self.stats.frames += 1
            return []
        faces = self.pipeline.detect(frame.image)
        faces = select_faces(
            faces, "largest" if self.cfg.decision.multi_face == "largest" else "all", frame.image.shape
        )
        tracks, ended = self.tracker.update(faces, t)
        decisions: list[Decision] = []
        if tracks:
            decisions += self._observe(frame, tracks, t)
        for track in ended:
            if self.liveness is not None:
                self.liveness.end(track.id)
            final = self.decider.end_track(track.id, t)
            if final is not None:
                decisions.append(self._act(final, None, None))
        self.stats.frames += 1
        self.stats.faces += len(faces)
        if self.screen is not None:
            quality, self._quality = self._quality, {}
            self._screen_call(self.screen.frame, self, frame, tracks, quality, decisions)
        frame_ms = (time.perf_counter() - started) * 1000.0
        self.stats.frame_ms.append(frame_ms)
        if self.on_frame is not None:
            self.on_frame(frame, frame_ms)
        return decisions

    def _observe(self, frame: Frame, tracks: list[Track], t: float) -> list[Decision]:
        prepared = self.pipeline.prepare(frame.image, [tr.face for tr in tracks])
        if self.screen is not None:
            self._quality = {tr.id: q for tr, (_, q) in zip(tracks, prepared, strict=True)}
        interval = self.cfg.decision.embed_interval_s
        # Faces that fail quality are still embedded (a stranger turned away is still denied and recorded), except
        # faces too small to mean anything; the decider never counts a quality-failed frame toward a grant.
        min_px = self.cfg.quality.min_face_px
        # A granted track is not embedded again, a denied or cooled-down one only at ``embed_interval_s`` or on a
        # clearly better face: only frames that can change a decision pay for the recogniser.
        needs = [self.decider.embedding_need(tr.id) for tr in tracks]
        todo = [
            i
            for i, (tr, (_, q), need) in enumerate(zip(tracks, prepared, needs, strict=True))
            if q.metrics.get("size_px", 0.0) >= min_px and self.tracker.should_embed(tr, t, q.score, interval, need)
        ]
        self.stats.embeddings_skipped += len(tracks) - len(todo)
        vectors = self.pipeline.embedder.embed([prepared[i][0] for i in todo]) if todo else None
        self.stats.embeddings += len(todo)
        matcher = self.matcher(t) if todo else None
        row_of = {i: row for row, i in enumerate(todo)}
        decisions = []
        for i, (track, (_, quality)) in enumerate(zip(tracks, prepared, strict=True)):
            if self.liveness is not None and needs[i] != NONE:  # a granted track needs no more liveness evidence
                self.liveness.observe(track.id, frame.image, track.face, t)
            match = None
            if vectors is not None and matcher is not None and i in row_of:
                match = matcher.match(vectors[row_of[i]])
                self.tracker.mark_embedded(track, t, quality.score)
            latency = (self.clock() - t) * 1000.0
            obs = Observation(
                t=t, match=match, quality_ok=quality.ok, quality_reasons=quality.reasons, latency_ms=latency
            )
            decision = self.decider.observe(track.id, obs, track.first_seen)
            if self.liveness is not None and self.decider.take_restart(track.id):
                self.liveness.end(track.id)  # the face changed mid-challenge: the next match gets a fresh challenge
            if decision is not None:
                decisions.append(self._act(decision, frame, track))
        return decisions

    def _prompt(self, track_id: int, prompt: str) -> None:
        """A liveness challenge began: tell the person (status line now, a display once one exists)."""
        self.notifier.status(f"track {track_id}: {prompt}")
        self.stats.last_decision = f"challenge: {prompt}"
        if self.on_prompt is not None:
            self.on_prompt(track_id, prompt)
        if self.screen is not None:
            self._screen_call(self.screen.prompt, track_id, prompt, self._frame_t)

    # -- the screen ------------------------------------------------------------------------------------------

    def _screen_capturing(self) -> bool:
        assert self.screen is not None
        try:
            return self.screen.capturing()
        except Exception as exc:
            self._screen_failed(exc)
            return False

    def _screen_call(self, fn: Callable[..., None], *args: Any) -> None:
        """Call the screen; its errors are contained (logged, rate-limited), except ``FATAL_ERRORS`` (a relay that
        cannot switch during a manual unlock is as fatal as during a grant)."""
        try:
            fn(*args)
        except FATAL_ERRORS:
            raise
        except Exception as exc:
            self._screen_failed(exc)

    def _screen_failed(self, exc: Exception) -> None:
        self.screen_errors += 1
        now = time.monotonic()
        if now - self._screen_error_logged >= SCREEN_ERROR_LOG_INTERVAL_S:
            self._screen_error_logged = now
            log.error(
                "screen error (%d so far), the door loop goes on: %s: %s",
                self.screen_errors,
                type(exc).__name__,
                " ".join(str(exc).split())[:200],
            )

    def manual_unlock(self, actor: str, reason: str, peer_uid: int, peer_pid: int) -> float:
        """Pulse the relay for a person who asked for it (the admin app, through ``control.sock``) and record a
        ``door``/``manual-unlock`` event with who, why and the requesting process; returns the pulse length."""
        applied = self.door.pulse()
        self.stats.pulses += 1
        detail = {"actor": actor, "reason": reason, "peer_uid": peer_uid, "peer_pid": peer_pid, "pulse_s": applied}
        log.info("door manual-unlock actor=%r reason=%r peer_uid=%d peer_pid=%d pulse_s=%.1f", actor, reason,
                 peer_uid, peer_pid, applied)  # fmt: skip
        self._store_event("door", "manual-unlock", door_action=f"pulse {applied:.1f}s", detail=detail)
        return applied

    # -- acting on a decision --------------------------------------------------------------------------------

    def _act(self, d: Decision, frame: Frame | None, track: Track | None) -> Decision:
        """Act on a decision and record it; returns the decision acted on: a grant the access rules refuse becomes
        a deny with their reason (the person stays named, so the screen shows ``denied``, not ``unknown``), and so
        does a grant an access panel cannot be asked about (``_open``)."""
        rule = None
        if d.outcome == GRANTED and d.person_id is not None:
            verdict = self.access(d.person_id)
            if verdict.allowed:
                rule = verdict.rule
            else:
                # NOTE: the decider counts this as a grant (the track is done, the person's cooldown runs): the
                # person is not asked for liveness again on every frame, and a refusal is recorded once per cooldown.
                d = replace(d, outcome=DENIED, reason=f"{d.reason}; access refused: {verdict.reason}")
        door_action = "none"
        if d.outcome == "granted":
            d, door_action = self._open(d)
        if d.outcome == "granted":
            self.stats.granted += 1
        else:
            self.stats.denied += 1
        latency_ms = (d.t - d.first_seen) * 1000.0
        (self.stats.grant_latency_ms if d.outcome == "granted" else self.stats.deny_latency_ms).append(latency_ms)
        self.stats.last_decision = f"{d.outcome} {d.name or 'unknown'}"
        # One structured line per decision: who, score, threshold, liveness, latency, outcome. No biometrics.
        log.info(
            "decision outcome=%s track=%d person_id=%s name=%s score=%s runner_up=%s threshold=%s frames=%d "
            "liveness=%s liveness_score=%s latency_ms=%.0f door=%s reason=%r",
            d.outcome,
            d.track_id,
            d.person_id,
            d.name,
            _f(d.score),
            _f(d.runner_up_score),
            _f(d.threshold),
            d.frames_used,
            d.liveness.status,
            _f(d.liveness.score),
            latency_ms,
            door_action,
            d.reason,
        )
        snapshot = None
        if self.snapshots is not None and frame is not None and track is not None:
            snapshot = self.snapshots.save(frame.image, track.face.box, d.outcome)
        self._record(d, latency_ms, door_action, snapshot, rule)
        if self.on_decision is not None:
            self.on_decision(d, door_action)
        return d

    def _open(self, d: Decision) -> tuple[Decision, str]:
        """A grant: pulse the relay; or, at a card reader of an access panel (``door.driver: osdp``), present the
        person's credential and let the panel decide. Without a usable credential the grant becomes a deny: the
        panel cannot be asked, and nothing is unlocked. Returns the decision as recorded and its door_action."""
        if not isinstance(self.door, CardReader):
            applied = self.door.pulse()
            self.stats.pulses += 1
            return d, f"pulse {applied:.1f}s"
        who = f"{d.name!r} (person id {d.person_id})"
        try:
            credential = self.gallery.get_person(d.person_id).credential if d.person_id is not None else None
            if credential is None:
                log.warning("door: %s has no credential to present to the access panel", who)
                reason = "no credential"
                return dataclasses.replace(d, outcome=DENIED, reason=reason), f"osdp nothing sent: {reason}"
            return d, self.door.present(credential, who)
        except CredentialError as exc:
            log.error("door: %s", exc)
            reason = "credential does not fit the card format"
            return dataclasses.replace(d, outcome=DENIED, reason=reason), f"osdp nothing sent: {reason}"
        except GalleryError as exc:
            log.error("door: the credential of %s cannot be read: %s", who, exc)
            reason = "credential could not be read"
            return dataclasses.replace(d, outcome=DENIED, reason=reason), f"osdp nothing sent: {reason}"

    def _record(
        self, d: Decision, latency_ms: float, door_action: str, snapshot: str | None, rule: str | None = None
    ) -> None:
        detail: dict[str, Any] = {"reason": d.reason, "liveness": d.liveness.as_dict()}
        if snapshot:
            detail["snapshot"] = snapshot
        if rule is not None:
            detail["rule"] = rule
        self._store_event(
            "access",
            d.outcome,
            track_id=d.track_id,
            person_id=d.person_id,
            person_name=d.name,
            score=d.score,
            runner_up=d.runner_up_score,
            threshold=d.threshold,
            frames=d.frames_used,
            liveness=d.liveness.status,
            latency_ms=latency_ms,
            door_action=door_action,
            detail=detail,
        )

    def _store_event(self, kind: str, outcome: str, **fields: Any) -> None:
        """Queue an event with its time and write every queued one; a gallery error keeps them queued."""
        if len(self._unwritten) >= EVENT_BACKLOG:
            self._unwritten.popleft()
            self.events_dropped += 1
        # The event keeps its own time even when it is written later.
        self._unwritten.append((kind, outcome, {"ts": utc_now(), **fields}))
        self.flush_events()

    def flush_events(self) -> None:
        """Write queued events, oldest first; on a GalleryError (locked, disk full) stop, log once a minute."""
        while self._unwritten:
            kind, outcome, fields = self._unwritten[0]
            try:
                self.gallery.add_event(kind, outcome, wait_s=EVENT_WRITE_WAIT_S, **fields)
            except GalleryError as exc:
                if self.on_event_error is not None:
                    self.on_event_error(exc)
                # NOTE: a full disk or a locked database must not stop the door from deciding; log once a minute.
                now = self.clock()
                if now - self._event_error_logged > EVENT_ERROR_LOG_INTERVAL_S:
                    self._event_error_logged = now
                    log.error(
                        "cannot record event (%s); decisions continue, %d event(s) waiting, %d dropped",
                        exc,
                        len(self._unwritten),
                        self.events_dropped,
                    )
                return
            self._unwritten.popleft()

    # -- the loop --------------------------------------------------------------------------------------------

    def run(self, *, max_frames: int | None = None, frame_timeout_s: float = 0.25) -> LoopStats:
        """Process the newest frames until stopped, the replay ends, or ``max_frames``."""
        self.stats.started = self.clock()
        self.heartbeat = time.monotonic()
        self.notifier.ready(status="running")
        log.info("door loop running (source %s)", self.camera.status().get("source"))
        while not self.stop_event.is_set():
            self.heartbeat = time.monotonic()
            # NOTE: systemd's watchdog is pinged from here only, never from another thread: a stalled loop stops
            # pinging, and systemd restarts the service even if the internal watchdog could not act.
            self.notifier.watchdog()
            frame = self.camera.latest(timeout=frame_timeout_s)
            now = self.clock()
            if frame is None:
                if self.camera.status().get("state") == "ended":
                    log.info("source ended after %d frames", self.stats.frames)
                    break
            else:
                self.process_contained(frame)
            self.door.check()  # door-held-open alarm on the loop's clock
            self._drain_door_events()
            if self.screen is not None:
                self._screen_call(self.screen.tick, self, now)
            if now - self._last_status >= STATUS_INTERVAL_S:
                self._last_status = now
                if self._unwritten:
                    self.flush_events()
                state = self.camera.status().get("state")
                self.notifier.status(f"{self.stats.fps:.1f} fps, camera {state}, last: {self.stats.last_decision}")
            if max_frames is not None and self.stats.frames >= max_frames:
                break
        # Tracks still open at the end are closed so an undecided stranger is still recorded.
        for track in self.tracker.flush():
            if self.liveness is not None:
                self.liveness.end(track.id)
            final = self.decider.end_track(track.id, self.clock())
            if final is not None:
                self._act(final, None, None)
        self.flush_events()
        if self._unwritten:
            log.error("stopping with %d event(s) that could not be recorded", len(self._unwritten))
        return self.stats

    def process_contained(self, frame: Frame) -> list[Decision]:
        """``process()``, with an unexpected error contained: logged (rate-limited, one line), the relay forced off,
        the frame dropped. Fatal errors (``FATAL_ERRORS``) propagate at once; ``safety.max_frame_errors``
        consecutive failing frames raise ``FrameErrorsExceeded``."""
        try:
            decisions = self.process(frame)
        except FATAL_ERRORS:
            raise
        except Exception as exc:
            self._frame_failed(exc)
            return []
        self.frame_errors = 0
        return decisions

    def _frame_failed(self, exc: Exception) -> None:
        # NOTE: fail secure: whatever the stage was doing (maybe in the middle of a grant), the door locks now.
        self.door.off()
        self.frame_errors += 1
        self.stats.frame_errors += 1
        what = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        if self.frame_errors >= self.max_frame_errors:
            raise FrameErrorsExceeded(
                f"{self.frame_errors} consecutive frames failed (safety.max_frame_errors); last: {what}"
            ) from exc
        now = time.monotonic()
        if now - self._frame_error_logged >= FRAME_ERROR_LOG_INTERVAL_S:
            suppressed = (
                f" ({self._frame_errors_unlogged} more since the last report)" if self._frame_errors_unlogged else ""
            )
            log.error("frame dropped, relay off: %s%s", what, suppressed)
            self._frame_error_logged, self._frame_errors_unlogged = now, 0
        else:
            self._frame_errors_unlogged += 1

    def _drain_door_events(self) -> None:
        """Record door-contact and exit-button events (they arrive from GPIO threads; SQLite is used from here)."""
        while self.door_events is not None:
            try:
                kind, detail = self.door_events.get_nowait()
            except queue.Empty:
                return
            log.info("door event %s %s", kind, detail)
            self._store_event("door", kind, detail=detail)

    def stop(self) -> None:
        self.stop_event.set()


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"
