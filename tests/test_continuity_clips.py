"""Identity continuity through a liveness challenge, end to end: spliced clips through the real door loop (YuNet,
SFace, face mesh + iris, the active blink challenge), built in memory by ``kiosk.lab.splice`` from the shared data.

The live person is the one in the real blink recordings (``liveness/blinks``, a real blink at frame 93 of
``mahie_test_1``); the second person is an LFW photo (Colin Powell), held up as a print or made to blink with
``kiosk.lab.simulate`` (the data has no second live, blinking person). Frames are played at their capture times on
the manual clock, so the outcome does not depend on this machine's speed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from kiosk.config import Config, parse_config
from kiosk.context import Context
from kiosk.door.decide import IDENTITY_CHANGED as CHANGED
from kiosk.door.decide import Decision
from kiosk.enroll import enroll
from kiosk.lab.blinks import BlinkVideo, blinks_dir, load_blink_video
from kiosk.lab.splice import Clip, bona_fide, live_to_other, photo_beside, photo_to_live, run_clip
from kiosk.liveness.mesh import load_face_mesh
from kiosk.recognition.detect import select_faces
from kiosk.recognition.pipeline import runtime_options
from kiosk.types import Image

LIVE = "Mahie"
PHOTO_PERSON = "Colin Powell"
PHOTO = "Colin_Powell/Colin_Powell_0080.jpg"  # frontal; not one of the enrolment photos
SEGMENT = ("mahie_test_1", 0, 130)  # 4.3 s; the real blink is at frames 93-96 (3.0 s)
LEAD = 20  # frames of the first face before the cut (0.67 s: enough for 3 votes and the challenge to start)
ENROL_FRAMES = ("mahie_test_2", (300, 900, 1500))  # open-eye frames of another recording


@dataclass(frozen=True)
class Material:
    faces: Path
    video: BlinkVideo
    live_box: npt.NDArray[np.floating]
    photo: Image
    photo_box: npt.NDArray[np.floating]
    photo_mesh: npt.NDArray[np.floating]
    enrol_frames: list[Image]


def _largest_box(ctx: Context, image: Image) -> npt.NDArray[np.floating]:
    faces = select_faces(ctx.pipeline.detect(image), "largest", image.shape)
    assert faces, "the detector found no face"
    return faces[0].box


@pytest.fixture(scope="module")
def material(faces_dir: Path) -> Material:
    if not (blinks_dir(faces_dir) / f"{SEGMENT[0]}.avi").is_file():
        pytest.skip(f"the blink recordings are not in {blinks_dir(faces_dir)} (KIOSK_TEST_DATA/liveness/blinks)")
    name, start, stop = SEGMENT
    video = load_blink_video(faces_dir, name, start=start, stop=stop)
    photo = np.asarray(cv2.imread(str(faces_dir / "lfw" / "images" / PHOTO)), dtype=np.uint8)
    other, picks = ENROL_FRAMES
    enrol_frames = [load_blink_video(faces_dir, other, start=i, stop=i + 1).frames[0] for i in picks]
    cfg = parse_config({})
    with Context(cfg) as ctx:
        mesh = load_face_mesh(ctx.manifest, "face_mesh", runtime_options(cfg))
        photo_box = _largest_box(ctx, photo)
        face = select_faces(ctx.pipeline.detect(photo), "largest", photo.shape)[0]
        result = mesh.landmarks(photo, face)
        assert result is not None
        live_box = _largest_box(ctx, video.frames[0])
    return Material(faces_dir, video, live_box, photo, photo_box, result.points, enrol_frames)


def _cfg(tmp_path: Path) -> Config:
    return parse_config(
        {
            "data_dir": str(tmp_path / "data"),
            "door": {"driver": "simulated", "pulse_s": 0.2, "max_pulse_s": 1.0},
            "decision": {"frames_needed": 3, "window": 5, "cooldown_s": 0.0, "track_max_age_s": 0.5},
            "liveness": {"mode": "active", "active": {"timeout_s": 6.0, "challenges": ["blink"], "steps": 1}},
        }
    )


@dataclass
class Outcome:
    decisions: list[Decision]
    unlocks: int
    events: list[dict[str, Any]]
    prompts: list[int]

    def granted(self) -> list[str | None]:
        return [d.name for d in self.decisions if d.granted]

    def changed(self) -> list[Decision]:
        return [d for d in self.decisions if not d.granted and CHANGED in d.reason]


def _play(tmp_path: Path, m: Material, clip: Clip, enrolled: tuple[str, ...]) -> Outcome:
    with Context(_cfg(tmp_path)) as ctx:
        if PHOTO_PERSON in enrolled:
            photos = sorted((m.faces / "lfw" / "images" / "Colin_Powell").glob("*.jpg"))[:2]
            assert PHOTO.split("/")[1] not in {p.name for p in photos}
            enroll(ctx.pipeline, ctx.gallery, PHOTO_PERSON, photos)
        if LIVE in enrolled:
            paths = []
            for i, frame in enumerate(m.enrol_frames):  # temporary files only: never kept
                paths.append(tmp_path / f"enrol_{i}.png")
                cv2.imwrite(str(paths[-1]), frame)
            enroll(ctx.pipeline, ctx.gallery, LIVE, paths)
            for p in paths:
                p.unlink()
        liveness = ctx.liveness
        assert liveness is not None
        prompts: list[int] = []
        decisions, unlocks = run_clip(ctx, clip, liveness, lambda track_id, _prompt: prompts.append(track_id))
        events = [e for e in ctx.gallery.events() if e["kind"] == "access"]
    return Outcome(decisions, unlocks, events, prompts)


@pytest.fixture()
def play(tmp_path: Path, material: Material) -> Iterator[Any]:
    yield lambda clip, *enrolled: _play(tmp_path, material, clip, enrolled)


def test_the_live_person_blinking_is_let_in(play: Any, material: Material) -> None:
    out = play(bona_fide(material.video), LIVE)
    assert out.granted() == [LIVE], [d.reason for d in out.decisions]
    grant = next(d for d in out.decisions if d.granted)
    assert grant.liveness.status == "pass" and "blinked" in grant.reason
    assert out.unlocks == 1 and not out.changed()  # the closed-eye frames did not break continuity
    assert out.prompts == [1]  # one challenge


def test_a_photo_pulled_away_from_a_live_blinking_face_is_refused(play: Any, material: Material) -> None:
    """(a) A's photo over B's face makes the match; B's real blink must not open the door for A."""
    m = material
    out = play(photo_to_live(m.video, m.live_box, m.photo, m.photo_box, LEAD), PHOTO_PERSON)
    assert out.granted() == [] and out.unlocks == 0, [d.reason for d in out.decisions]
    (deny,) = out.changed()
    assert deny.name == PHOTO_PERSON and deny.liveness.status == "fail"
    assert deny.t - m.video.times[0] == pytest.approx(m.video.times[LEAD] - m.video.times[0], abs=1e-6)  # 1st frame
    # Recorded in the (hash-chained) event log, with the reason.
    recorded = [e for e in out.events if e["outcome"] == "denied" and CHANGED in e["detail"]["reason"]]
    assert len(recorded) == 1 and recorded[0]["person_name"] == PHOTO_PERSON


def test_after_the_restart_the_live_person_earns_a_fresh_match_and_challenge(play: Any, material: Material) -> None:
    """The same splice with B enrolled too: the restart ends the challenge, B's own frames make a fresh match and
    B's blink answers a fresh challenge, which lets B in as B, never as A."""
    m = material
    out = play(photo_to_live(m.video, m.live_box, m.photo, m.photo_box, LEAD), PHOTO_PERSON, LIVE)
    assert [d.name for d in out.changed()] == [PHOTO_PERSON]
    assert out.granted() == [LIVE] and out.unlocks == 1, [d.reason for d in out.decisions]
    assert out.prompts == [1, 1]  # the same track, a second challenge after Liveness.end


def test_a_live_person_replaced_by_another_blinking_face_is_refused(play: Any, material: Material) -> None:
    """(b) live A makes the match; B (an LFW photo made to blink, not enrolled) takes A's place and blinks."""
    m = material
    out = play(live_to_other(m.video, m.live_box, m.photo, m.photo_box, m.photo_mesh, LEAD), LIVE)
    assert out.granted() == [] and out.unlocks == 0, [d.reason for d in out.decisions]
    (deny,) = out.changed()
    assert deny.name == LIVE and "below the continuity threshold" in deny.reason


def test_a_photo_beside_a_live_blinking_face_is_refused(play: Any, material: Material) -> None:
    """(c) A's photo, the largest face, beside B who blinks: B's blink is not A's answer."""
    m = material
    out = play(photo_beside(m.video, m.live_box, m.photo, m.photo_box), PHOTO_PERSON)
    assert out.granted() == [] and out.unlocks == 0, [d.reason for d in out.decisions]
    assert [d.name for d in out.decisions] == [PHOTO_PERSON]
    assert out.decisions[0].liveness.status == "fail"  # the photo's challenge was never answered
