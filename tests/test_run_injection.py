"""``run_kiosk``'s injection points (``open_source=``, ``wrap_pipeline=``, ``on_event_error=``), the seams the soak
child uses instead of patching ``kiosk.door.service``, the running pipeline or the gallery: real models, a
``ScriptedSource`` camera, a gallery held locked by another writer."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from kiosk.config import CameraConfig, parse_config
from kiosk.door.camera import FrameSource
from kiosk.door.decide import Decision
from kiosk.door.loop import DoorLoop
from kiosk.door.service import run_kiosk
from kiosk.errors import GalleryError, GalleryLockedError
from kiosk.recognition.detect import Detector
from kiosk.recognition.pipeline import Pipeline
from kiosk.testing import FlakyStage, ScriptedSource

FACE_FRAMES = 8


def test_run_kiosk_uses_the_injected_source_pipeline_and_event_hook(tmp_path: Path, astronaut: np.ndarray) -> None:
    cfg = parse_config(
        {
            "data_dir": str(tmp_path / "data"),
            "door": {"driver": "simulated", "pulse_s": 0.05},
            "decision": {"frames_needed": 3, "window": 5},
            "liveness": {"mode": "off"},
        }
    )
    source = ScriptedSource([astronaut] * FACE_FRAMES)  # a replay: ends after its frames, and so does the loop
    opened: list[tuple[str, CameraConfig]] = []

    def open_scripted(spec: str, cam_cfg: CameraConfig) -> FrameSource:
        opened.append((spec, cam_cfg))
        return source

    flaky: list[FlakyStage[Detector]] = []

    def wrap(pipeline: Pipeline) -> Pipeline:
        detector = FlakyStage(pipeline.detector, "detect", ())  # never fails: counts the loop's calls
        flaky.append(detector)
        return Pipeline(pipeline.cfg, detector.as_stage(), pipeline.embedder, pipeline.template)

    lock: list[sqlite3.Connection] = []
    loops: list[DoorLoop] = []

    def started(loop: DoorLoop) -> None:
        # Another writer holds the gallery from here on: every event write of the loop fails (and stays queued).
        conn = sqlite3.connect(str(loop.gallery.path), timeout=2.0, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        lock.append(conn)
        loops.append(loop)

    errors: list[GalleryError] = []
    decisions: list[Decision] = []
    try:
        stats = run_kiosk(
            cfg,
            realtime=False,
            started=started,
            on_decision=lambda d, _action: decisions.append(d),
            open_source=open_scripted,
            wrap_pipeline=wrap,
            on_event_error=errors.append,
        )
    finally:
        for conn in lock:
            conn.execute("ROLLBACK")
            conn.close()
    # open_source: called once, with camera.source and the camera config run_kiosk built (realtime=False applied).
    assert [spec for spec, _ in opened] == [cfg.camera.source]
    assert opened[0][1].replay_realtime is False
    assert source.open_calls >= 1 and source.ended and stats.frames == source.frames == FACE_FRAMES
    # wrap_pipeline: given the warmed-up pipeline once; the loop ran the one it returned, on every frame.
    assert len(flaky) == 1 and loops[0].pipeline.detector is flaky[0]
    assert flaky[0].calls == FACE_FRAMES and stats.faces >= FACE_FRAMES
    # on_event_error: every write of the (denied: the gallery is empty) decisions failed on the lock.
    assert decisions and all(d.outcome == "denied" for d in decisions)
    assert errors and all(isinstance(e, GalleryLockedError) for e in errors)
    assert len(errors) >= len(decisions)
