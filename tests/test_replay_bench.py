"""``python -m tools.measure.replay_bench`` on a tiny configuration: the JSON schema and sane values, not the figures.

The benchmark's numbers are for a person to read; what is pinned here is that it measures what it claims — the real
loop on media time (stamps 0.1 s apart, no frame dropped), every probe shown once, the door pulsing once per grant —
and that its command line fails cleanly without the face data.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tools.measure import replay_bench

TOP_KEYS = {
    "false_grants",
    "genuine_grant_rate",
    "mode",
    "selection",
    "enrolment",
    "members",
    "strangers",
    "decisions",
    "door",
    "latency",
    "loop",
    "per_frame",
    "clip",
    "frames",
    "media_s",
    "wall_s",
    "timings_s",
    "config",
    "machine",
    "versions",
    "git",
    "failures",
    "probes",
}


def _run(tmp_path: Path, faces_dir: Path, *extra: str) -> dict[str, Any]:
    out = tmp_path / "bench.json"
    rc = replay_bench.main(["--data", str(faces_dir), "--json", str(out), "--quiet", *extra])
    assert rc == 0
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def _common_checks(r: dict[str, Any], members: int, shown: int) -> None:
    assert r.keys() >= TOP_KEYS
    assert r["false_grants"] == 0
    assert r["members"]["granted_other"] == 0 and r["strangers"]["granted"] == 0
    grants = r["decisions"]["granted"]
    assert r["door"]["pulses"] == grants == r["members"]["granted_self"] and r["door"]["pulses_equal_grants"]
    assert r["decisions"]["not_attributable"] == 0
    assert r["selection"]["members"] == members and r["selection"]["probes_shown"] == shown
    # Every probe on screen exactly once; members are shown a photo enrolment never saw.
    ids = [p["identity"] for p in r["probes"]]
    assert len(ids) == len(set(ids)) == shown
    assert r["members"]["shown"] + r["strangers"]["shown"] == shown
    m = r["members"]
    assert m["granted_self"] + m["granted_other"] + m["denied"] + m["no_decision"] == m["shown"]
    assert r["genuine_grant_rate"] == pytest.approx(m["granted_self"] / m["shown"])
    assert grants >= 1, "a member shown a clear, scaled-up photo of themselves is let in"
    lat = r["latency"]["first_seen_to_grant_s"]
    assert lat["n"] == grants and 0 < lat["min"] <= lat["median"] <= lat["p95"] <= 1.0
    # Configuration, models, machine and versions are recorded with the figures.
    assert re.fullmatch(r"[0-9a-f]{64}", r["config"]["models"]["recognizer"]["sha256"])
    assert r["config"]["decision"]["frames_needed"] == 3 and r["config"]["recognition"]["threshold"] > 0
    assert r["machine"]["cores"] >= 1 and r["machine"]["cpu"]
    assert {"python", "onnxruntime", "opencv", "numpy"} <= r["versions"].keys()
    assert r["loop"]["fps_all_frames"] > 0 and r["loop"]["frames_processed"] > 0


def test_lockstep_replay_runs_the_real_loop_on_media_time(tmp_path: Path, faces_dir: Path) -> None:
    r = _run(tmp_path, faces_dir, "--members", "3", "--strangers", "3", "--seed", "0")
    _common_checks(r, members=3, shown=6)
    assert r["mode"] == "lockstep"
    assert r["selection"]["enrol_photos"] == {"1": 2, "2": 1}
    per_clip = r["clip"]["face_frames"] + r["clip"]["gap_frames"]
    assert r["frames"] == 6 * per_clip and r["loop"]["frames_dropped"] == 0
    mt = r["media_time"]
    assert mt["every_frame_once_in_order"] and mt["frames_checked"] == r["frames"]
    assert mt["max_stamp_error_s"] < 1e-9
    stamps = [t for _, t in mt["first_stamps"]]
    assert stamps[0] == 0.0
    assert all(b - a == pytest.approx(0.1) for a, b in itertools.pairwise(stamps))
    # In media time a grant needs frames_needed frames: 3 frames = 0.2 s after the first.
    assert r["latency"]["first_seen_to_grant_s"]["min"] == pytest.approx(0.2)
    assert r["latency"]["clip_start_to_grant_s"]["n"] == r["members"]["granted_self"]
    every_member = [p for p in r["probes"] if p["kind"] == "member"]
    assert len(every_member) == 3


@pytest.mark.slow
def test_realtime_replay_reports_wall_clock_latency(tmp_path: Path, faces_dir: Path) -> None:
    r = _run(tmp_path, faces_dir, "--realtime", "--members", "2", "--strangers", "2", "--probes", "2")
    _common_checks(r, members=2, shown=2)
    assert r["mode"] == "realtime" and "media_time" not in r
    assert isinstance(r["loop"]["frames_dropped"], int)
    pulse = r["latency"]["appear_to_pulse_s"]
    assert pulse["n"] == r["members"]["granted_self"] and 0.1 < pulse["min"] <= pulse["max"] < 2.2


def test_missing_face_data_is_one_line_and_nonzero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert replay_bench.main(["--data", str(tmp_path / "nowhere")]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "KIOSK_TEST_DATA" in err


def test_help_lists_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        replay_bench.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--members", "--strangers", "--seed", "--json", "--realtime", "--probes", "--data", "--jitter"):
        assert option in text
