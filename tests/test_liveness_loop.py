"""Liveness in the real door loop: real models (detector, recogniser, face mesh + iris, MiniFASNet), a real gallery
and the mock relay. Frames are fed to ``DoorLoop.process`` with their capture times (10 fps), so challenge
timeouts are exact and independent of this machine's speed; ``kiosk demo`` covers the same through the camera
thread in real time.

A still photo of an enrolled person, held up and shaken like a print, must be refused under ``active`` and
``both`` with the reason in the event; the same person blinking (``kiosk.lab.simulate``) is let in.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from kiosk.cli import main
from kiosk.config import Config, parse_config
from kiosk.context import Context
from kiosk.door.camera import Frame
from kiosk.door.decide import Decision
from kiosk.door.loop import DoorLoop
from kiosk.door.relay import open_door
from kiosk.enroll import enroll
from kiosk.errors import ModelMissingError
from kiosk.lab.simulate import blink_frames, scene, still_frames
from kiosk.types import Image

gpiozero = pytest.importorskip("gpiozero", reason="gpiozero (dev extra) is needed for the mock relay")
from gpiozero.pins.mock import MockFactory  # noqa: E402

FPS = 10.0
RELAY_PIN = 17
TIMEOUT_S = 3.0
PERSON = "Colin_Powell"
PHOTO = "Colin_Powell/Colin_Powell_0080.jpg"  # frontal; not one of the enrolment photos


def _cfg(tmp_path: Path, mode: str, manifest: Path | None = None, **passive: object) -> Config:
    data: dict[str, object] = {
        "data_dir": str(tmp_path / "data"),
        "door": {"driver": "gpiozero", "relay_pin": RELAY_PIN, "pulse_s": 0.2, "max_pulse_s": 1.0},
        # No cooldown: each clip is judged on its own, whatever came before (a photo after a grant included).
        "decision": {"frames_needed": 3, "window": 5, "cooldown_s": 0.0, "track_max_age_s": 0.5},
        "liveness": {
            "mode": mode,
            "active": {"timeout_s": TIMEOUT_S, "challenges": ["blink"], "steps": 1},
            "passive": passive,
        },
    }
    if manifest is not None:
        data["models"] = {"manifest": str(manifest)}
    return parse_config(data)


def _relay_states(factory: MockFactory) -> list[bool]:
    return [bool(s.state) for s in factory.pin(RELAY_PIN).states]


def _photo(faces_dir: Path) -> Image:
    image = cv2.imread(str(faces_dir / "lfw" / "images" / PHOTO))
    assert image is not None
    return scene(np.asarray(image, dtype=np.uint8), 1.6)


def _enrol(ctx: Context, faces_dir: Path) -> None:
    photos = sorted((faces_dir / "lfw" / "images" / PERSON).glob("*.jpg"))[:2]
    assert PHOTO.split("/")[1] not in {p.name for p in photos}
    enroll(ctx.pipeline, ctx.gallery, "Colin Powell", photos)


def _play(loop: DoorLoop, clips: list[list[Image]], gap_s: float = 1.0) -> list[Decision]:
    """Feed each clip at 10 fps, with ``gap_s`` of empty wall between clips (so each clip is a new track)."""
    wall = np.full_like(clips[0][0], 118)
    frames: list[Image] = []
    for clip in clips:
        frames += clip + [wall] * int(gap_s * FPS)
    decisions: list[Decision] = []
    for i, image in enumerate(frames):
        decisions += loop.process(Frame(image=image, index=i, t=100.0 + i / FPS))
    for track in loop.tracker.flush():
        if loop.liveness is not None:
            loop.liveness.end(track.id)
    return decisions


def _run(
    cfg: Config, factory: MockFactory, faces_dir: Path, clips: list[list[Image]]
) -> tuple[list[Decision], list[dict[str, Any]]]:
    with Context(cfg) as ctx:
        _enrol(ctx, faces_dir)
        door = open_door(cfg.door, pin_factory=factory)
        try:
            door.off()
            loop = DoorLoop(ctx.pipeline, ctx.gallery, camera=None, door=door, liveness=ctx.liveness)
            decisions = _play(loop, clips)
            events = [e for e in ctx.gallery.events() if e["kind"] == "access"]
        finally:
            door.off()
            door.close()
    return decisions, events


def _clips(faces_dir: Path, mode_manifest: Path | None = None) -> tuple[list[Image], list[Image]]:
    """(a still photo held up for the timeout + 1.5 s, the same face blinking once after 1.5 s)."""
    photo = _photo(faces_dir)
    cfg = parse_config({} if mode_manifest is None else {"models": {"manifest": str(mode_manifest)}})
    with Context(cfg) as ctx:
        from kiosk.liveness.mesh import load_face_mesh
        from kiosk.recognition.pipeline import runtime_options

        mesh = load_face_mesh(ctx.manifest, "face_mesh", runtime_options(cfg))
        face = max(ctx.pipeline.detect(photo), key=lambda f: f.area)
        result = mesh.landmarks(photo, face)
    assert result is not None
    held = still_frames(photo, int((TIMEOUT_S + 1.5) * FPS), seed=3)
    blinking = blink_frames(photo, result.points, n_open=15, n_closed=3, n_after=15, seed=4)
    return held, blinking


@pytest.mark.parametrize("order", ["photo first", "blink first"])
def test_active_refuses_a_held_photo_and_lets_the_blinking_person_in(
    tmp_path: Path, faces_dir: Path, factory: MockFactory, order: str
) -> None:
    held, blinking = _clips(faces_dir)
    clips = [held, blinking] if order == "photo first" else [blinking, held]
    decisions, events = _run(_cfg(tmp_path, "active"), factory, faces_dir, clips)
    by_outcome = {d.outcome: d for d in decisions}
    assert sorted(d.outcome for d in decisions) == ["denied", "granted"], [d.reason for d in decisions]
    photo = by_outcome["denied"]
    assert photo.name == "Colin Powell"  # recognised, refused for liveness alone
    assert photo.liveness.status == "fail" and "no blink within 3.0 s" in photo.reason
    assert photo.t - photo.first_seen == pytest.approx(TIMEOUT_S, abs=0.5)
    live = by_outcome["granted"]
    assert live.name == "Colin Powell" and live.liveness.status == "pass" and "blinked" in live.reason
    # Exactly one unlock, for the blink; the relay is off at the end.
    states = _relay_states(factory)
    assert states.count(True) == 1 and states[-1] is False
    # Both attempts are recorded with the liveness outcome, method and reason.
    recorded = {e["outcome"]: e for e in events}
    assert recorded["denied"]["liveness"] == "fail"
    assert recorded["denied"]["detail"]["liveness"]["method"] == "active"
    assert "no blink" in recorded["denied"]["detail"]["liveness"]["reason"]
    assert recorded["granted"]["liveness"] == "pass"


def test_off_lets_the_held_photo_in(tmp_path: Path, faces_dir: Path, factory: MockFactory) -> None:
    """The control: without liveness the same still photo opens the door (why the default is ``active``)."""
    held, _ = _clips(faces_dir)
    decisions, _ = _run(_cfg(tmp_path, "off"), factory, faces_dir, [held])
    assert [(d.outcome, d.liveness.status) for d in decisions] == [("granted", "not_required")]
    assert _relay_states(factory).count(True) == 1


@pytest.mark.slow
def test_both_refuses_the_held_photo(
    tmp_path: Path, faces_dir: Path, factory: MockFactory, minifasnet_models: Path
) -> None:
    manifest = minifasnet_models / "manifest.yaml"
    held, blinking = _clips(faces_dir, manifest)
    cfg = _cfg(tmp_path, "both", manifest, models=["minifasnet_v2", "minifasnet_v1se"])
    decisions, events = _run(cfg, factory, faces_dir, [held, blinking])
    photo = [d for d in decisions if d.t - 100.0 < TIMEOUT_S + 2.0]
    assert [d.outcome for d in photo] == ["denied"] and photo[0].liveness.status == "fail"
    granted = [d for d in decisions if d.granted]
    # A printed LFW photo on a simulated wall is what MiniFASNet should call an attack, even blinking: both
    # layers must pass, so whatever the passive layer says about the blinking clip, the held still never opens.
    assert all(d.liveness.status == "pass" and "passive score" in d.reason for d in granted)
    assert _relay_states(factory).count(True) == len(granted)
    assert all(e["detail"]["liveness"]["method"] == "passive+active" for e in events if e["liveness"] != "pass")


def test_a_configured_liveness_model_that_is_missing_stops_the_start(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "passive", models=["minifasnet_nowhere"])
    with Context(cfg) as ctx, pytest.raises(ModelMissingError, match="minifasnet_nowhere"):
        _ = ctx.liveness
    cfg = dataclasses.replace(
        cfg,
        liveness=dataclasses.replace(
            cfg.liveness, mode="active", active=dataclasses.replace(cfg.liveness.active, model="no_mesh")
        ),
    )
    with Context(cfg) as ctx, pytest.raises(ModelMissingError, match="no_mesh"):
        _ = ctx.liveness


@pytest.mark.slow
def test_demo_refuses_the_photo_and_lets_the_blinking_astronaut_in(capsys: pytest.CaptureFixture[str]) -> None:
    """``make demo`` (one of the README's two commands): the real loop, camera thread and simulated door."""
    # Real time, as a user sees it: the camera thread paces the clip at 10 fps and the loop takes the newest frame.
    assert main(["demo", "--json"]) == 0  # run_demo's record, printed by the CLI
    assert '"as_expected": true' in capsys.readouterr().out
