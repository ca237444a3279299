"""A test-sized soak: thousands of frames through the real door loop with camera drops, stalls and unplugs, a gallery
locked by another writer and exceptions inside the models — and ``python -m tools soak``'s child/restart machinery.

The in-process soak runs lockstep on a media clock (``tools.measure.soak.SoakClock``), so the faults and what the loop
does with them are the same on every run whatever the machine's speed; only the gallery locks are timed by the real
clock (another writer does not wait for our frames), and their effect is counted, not assumed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest

from kiosk.config import Config, parse_config
from kiosk.context import Context
from kiosk.enroll import enroll
from tools.measure import replay_bench as rb
from tools.measure.soak import FaultPlan, InProcessSoak, parse_faults, soak_inprocess

ROOT = Path(__file__).resolve().parents[1]
MEMBER = "Colin Powell"
STRANGERS = (
    "Abel_Pacheco/Abel_Pacheco_0001.jpg",
    "Amber_Tamblyn/Amber_Tamblyn_0001.jpg",
    "Jerry_Seinfeld/Jerry_Seinfeld_0001.jpg",
    "Edina_Batar/Edina_Batar_0001.jpg",
)
CLIPS = 146  # x 22 frames = 3212 frames; minus ~1 % dropped and ~2 % failed frames, still above 3000 processed
FPS = 10.0
PULSE_S, MAX_PULSE_S = 0.2, 1.0
# Locks: 0.3 episodes/s of 0.5 s each, longer than both the busy timeout and the loop's own 0.2 s event-write wait.
FAULTS = FaultPlan(drop=0.01, stall=0.003, unplug=0.003, exception=0.015, lock=0.3, lock_hold_s=0.5)
# NOTE: the bounds, justified.
# RSS: after warm-up (models' arenas, the gallery matrix, the first tracks) the loop should hold nothing per frame or
# per fault. One 640x480 frame is 0.9 MB: keeping one per fault (~100 of them) or one per decision (~150) would
# grow RSS by 90-140 MB, one per frame by ~2.8 GB. 30 MB leaves room for allocator noise (onnxruntime's and
# numpy's arenas settle over the first minutes) and still catches any of those.
RSS_GROWTH_MAX_MB = 30.0
# fds: counted before the camera, door and locker exist and after all are closed. Every reconnect opens the fake
# device again (~25 reconnects) and every lock episode a fresh sqlite connection (~50): a leak per fault shows as
# tens. One fd of slack, by design of SQLite: the locker's connection lives in this process, and while the kiosk's
# gallery connection holds its WAL read lock SQLite does not close() a closed connection's file descriptor (that
# would drop this process's POSIX locks) but keeps it for reuse — one fd, reused by every later episode.
FD_SLACK = 1


def _cfg(tmp_path: Path) -> Config:
    return parse_config(
        {
            "data_dir": str(tmp_path / "data"),
            # Small detector input and embeddings at most every 0.3 s of a track: about 100 frames/s on 2 cores.
            "detection": {"input_size": 160},
            "runtime": {"intra_op_threads": 1},
            "decision": {"frames_needed": 3, "window": 5, "cooldown_s": 1.0, "embed_interval_s": 0.3},
            "camera": {
                "fps": FPS,
                "replay_realtime": False,
                "stall_timeout_s": 0.1,
                "reconnect_min_s": 0.01,
                "reconnect_max_s": 0.05,
            },
            "door": {"driver": "simulated", "pulse_s": PULSE_S, "max_pulse_s": MAX_PULSE_S},
            "gallery": {"busy_timeout_s": 0.05},
            "liveness": {"mode": "off"},  # still photos: liveness has its own tests
        }
    )


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory, faces_dir: Path) -> tuple[InProcessSoak, rb.ReplaySource]:
    tmp_path = tmp_path_factory.mktemp("soak")
    lfw = faces_dir / "lfw" / "images"
    colin = sorted((lfw / "Colin_Powell").glob("*.jpg"))
    cfg = _cfg(tmp_path)
    members = [rb.Probe(rb.MEMBER, MEMBER, p) for p in colin[3:7]]  # photos enrolment never saw
    strangers = [rb.Probe(rb.STRANGER, Path(s).parent.name, lfw / s) for s in STRANGERS]
    probes = [(members if i % 2 == 0 else strangers)[i // 2 % 4] for i in range(CLIPS)]  # alternating
    with Context(cfg) as ctx:
        enroll(ctx.pipeline, ctx.gallery, MEMBER, colin[:2])
        ctx.pipeline.warmup()
        source = rb.ReplaySource(probes, rb.load_photos(probes), rb.ClipSpec(fps=FPS), seed=3)
        result = soak_inprocess(
            ctx.pipeline,
            ctx.gallery,
            cfg,
            source,
            FAULTS,
            seed=3,
            warmup_frames=400,
            window=(50, source.total - 50),  # clean start and end: every fault has frames after it to recover on
            guard_s=300.0,
        )
    return result, source


@pytest.mark.slow
def test_soak_runs_every_frame_to_the_end(soak: tuple[InProcessSoak, rb.ReplaySource]) -> None:
    r, source = soak
    assert not r.stopped_by_guard, "the loop never reached the end of the replay"
    assert r.source_ended and r.source_reads == source.total, "every frame of the replay was read"
    assert r.camera["state"] == "ended"
    assert r.stats.frames >= 3000


@pytest.mark.slow
def test_every_injected_fault_is_counted_and_survived(soak: tuple[InProcessSoak, rb.ReplaySource]) -> None:
    r, _ = soak
    f = r.faults
    for kind in ("drop", "stall", "unplug", "exception_detect", "exception_embed", "lock", "lock_hit"):
        assert f.get(kind, 0) >= 1, f"no {kind} fault was injected: {f}"
    # Each stall and each unplug is one loss the camera noticed and one reconnect.
    assert r.camera["reconnects"] == f["stall"] + f["unplug"]
    # Dropped frames never reached the camera; every frame the camera published was either processed by the loop,
    # or failed with an injected exception (and only those), or was superseded by a camera loss while pending.
    assert r.camera["frames"] == r.source_reads - f["drop"]
    assert r.stats.frames + r.exceptions_raised == r.camera["frames"] - r.camera["dropped"]
    assert r.exceptions_raised == f["exception_detect"] + f["exception_embed"]
    # Writes that met a lock were queued and written later: every decision is in the events table, none lost.
    assert r.events_dropped == 0 and f.get("event_write_failed", 0) == 0
    assert r.events_recorded == len(r.decisions)


@pytest.mark.slow
def test_grants_still_happen_and_only_for_the_member(soak: tuple[InProcessSoak, rb.ReplaySource]) -> None:
    r, source = soak
    grants = [d for d, _ in r.decisions if d.granted]
    member_clips = sum(p.kind == rb.MEMBER for p in source.probes)
    assert len(grants) >= member_clips // 2, f"{len(grants)} grants in {member_clips} member clips"
    assert {d.name for d in grants} == {MEMBER}
    granted_clips = []
    for d in grants:
        where = source.clip_of(r.stamps[d.first_seen])  # the clip on screen when the granted track began
        assert where is not None, "a track that began on the empty wall was granted"
        granted_clips.append(where[0])
        assert source.probes[where[0]].kind == rb.MEMBER, "a stranger was let in"
    assert len(set(granted_clips)) == len(granted_clips), "one clip, one grant"
    assert any(d.outcome == "denied" for d, _ in r.decisions), "strangers were denied"
    assert r.stats.pulses == len(grants)


@pytest.mark.slow
def test_the_relay_is_never_left_on(soak: tuple[InProcessSoak, rb.ReplaySource]) -> None:
    r, _ = soak
    unlocks = [i for i, (_, what, _) in enumerate(r.timeline) if what == "unlock"]
    assert len(unlocks) == r.stats.pulses >= 1
    for i in unlocks:
        later = [t for t, what, _ in r.timeline[i + 1 :] if what == "lock"]
        assert later, "an unlock was never followed by a lock"
        assert later[0] - r.timeline[i][0] <= MAX_PULSE_S, "the relay stayed on longer than door.max_pulse_s"
    assert r.timeline[-1][1] == "lock" and not r.unlocked_at_end
    assert all(b[0] >= a[0] for a, b in pairwise(r.timeline))


@pytest.mark.slow
def test_memory_stays_flat(soak: tuple[InProcessSoak, rb.ReplaySource]) -> None:
    r, _ = soak
    warm, end = r.rss_kb["warm"], r.rss_kb["end"]
    assert warm is not None and end is not None, "RSS is read from /proc/self/status (Linux)"
    assert (end - warm) / 1024.0 < RSS_GROWTH_MAX_MB, f"RSS grew {(end - warm) / 1024:.1f} MB after warm-up"


@pytest.mark.slow
def test_no_file_descriptor_leak(soak: tuple[InProcessSoak, rb.ReplaySource]) -> None:
    r, _ = soak
    before, after = r.fds["before"], r.fds["after"]
    assert before is not None and after is not None
    assert abs(after - before) <= FD_SLACK, f"open fds {before} before, {after} after"


def test_parse_faults_names_the_bad_key() -> None:
    assert parse_faults("none") == FaultPlan()
    assert parse_faults("drop=0.5, lock=2, lock_hold_s=1.5") == FaultPlan(drop=0.5, lock=2.0, lock_hold_s=1.5)
    for bad, words in (("drop", "kind=value"), ("jitter=1", "jitter"), ("stall=2", "0..1"), ("drop=x", "number")):
        with pytest.raises(ValueError, match=words):
            parse_faults(bad)


@pytest.mark.slow
def test_soak_command_restarts_a_failed_child_and_reports(tmp_path: Path, faces_dir: Path) -> None:
    """The soak of hours, shortened: a burst of failing frames makes the child exit (safety.max_frame_errors),
    the parent restarts it and counts it, samples the child's RSS and fds, and writes the JSON report."""
    out = tmp_path / "soak.json"
    cfg = tmp_path / "kiosk.yaml"
    cfg.write_text(
        "detection: {input_size: 160}\ndecision: {embed_interval_s: 0.3}\nsafety: {max_frame_errors: 5}\n"
        "camera: {stall_timeout_s: 0.5, reconnect_min_s: 0.05, reconnect_max_s: 0.2}\n",
        encoding="utf-8",
    )
    cmd = [sys.executable, "-m", "tools", "soak", "--minutes", "0.5", "--interval", "5", "--fps", "20"]
    cmd += ["--members", "1", "--strangers", "1", "--config", str(cfg), "--data", str(faces_dir), "--json", str(out)]
    # A burst every ~100 frames (seeded): the first child exits within seconds and must be restarted.
    cmd += ["--faults", "drop=0.02,stall=0.005,exception=0.01,burst=0.01,burst_len=5", "--restart-delay", "0.2"]
    cmd += ["--start-limit-burst", "100"]  # children die every few seconds here, on purpose: not a crash loop
    cmd += ["--workdir", str(tmp_path / "work")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["restarts"] >= 1 and report["restarts"] == len(report["exits"])
    assert all(e["exit_code"] == 1 and "consecutive frames failed" in e["last_error"] for e in report["exits"])
    assert report["faults"]["burst"] >= report["restarts"]
    assert report["frames"] > 0 and report["samples"], report
    running = [x for x in report["samples"] if x["child_running"]]  # a child still loading its models is small
    assert running, report["samples"]
    first = running[0]
    assert first["rss_mb"] > 50 and first["fds"] > 3, "the child's memory and fds are read from /proc/<pid>"
    lines = [ln for ln in done.stdout.splitlines() if "| frames" in ln]
    assert len(lines) == len(report["samples"]) >= 3
    assert "child RSS" in done.stdout and "restart(s)" in done.stdout
