"""``kiosk eval-liveness --blinks``: the scoring arithmetic, the CSV errors, and one run on a real recording.

The real-data test runs the whole command (YuNet, tracker, face mesh with the iris model) once per session on
mahie_test_2, a recording the detector was NOT tuned on (tuning used mahie_test_1 only), at every 2nd frame (~15 fps,
both phases), and checks the goals loosely: >= 90 % of the visible labelled blinks, <= 1 false blink per minute.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kiosk.errors import InputError
from kiosk.lab.blink_eval import (
    LabelledBlink,
    VideoTrace,
    match,
    read_blinks,
    read_timestamps,
    score_video,
    summarise,
    visible,
)
from kiosk.lab.blinks import blinks_dir
from kiosk.liveness.blink import BlinkDetector

HEADER = "video,start_frame,end_frame,start_s,end_s\n"


def test_match_uses_the_tolerance_and_each_label_once() -> None:
    labels = [(1.0, 1.2), (3.0, 3.1)]
    # 0.95 and 1.29 are inside [0.9, 1.3]; the second detection of the same blink is a false one.
    assert match([0.95, 1.29], labels) == [0, None]
    assert match([0.89, 1.31, 2.95, 3.2], labels) == [None, None, 1, None]
    assert match([], labels) == []
    # Overlapping windows: each detection takes the earliest-ending label that holds it, so both are matched.
    assert match([1.25, 1.28], [(1.0, 1.2), (1.2, 1.4)]) == [0, 1]


def _blink(a: int, b: int) -> LabelledBlink:
    return LabelledBlink("v.avi", a, b, a / 30, b / 30)


def test_a_blink_is_visible_at_a_lower_rate_only_when_a_closed_frame_is_sampled() -> None:
    b = _blink(10, 12)  # frames 10, 11, 12; phase p samples p, p + 4, ...: phase 1 (9, 13) misses it
    assert [visible(b, 4, p) for p in range(4)] == [True, False, True, True]
    assert all(visible(b, 3, p) for p in range(3))
    assert visible(b, 1, 0)
    assert [visible(_blink(5, 5), 2, p) for p in range(2)] == [False, True]


def _trace(values: list[float], fps: float = 30.0) -> VideoTrace:
    return VideoTrace([i / fps for i in range(len(values))], values)


def test_score_video_counts_found_false_and_false_per_minute() -> None:
    values = [0.3] * 1800  # 60 s at 30 fps
    values[300:303] = [0.1] * 3  # a labelled blink at 10.0 s
    values[900:903] = [0.1] * 3  # an unlabelled one at 30.0 s: a false blink
    labels = [_blink(300, 302), _blink(1500, 1502)]  # the second is never seen
    r = score_video(_trace(values), labels, 1, BlinkDetector, "v.avi")
    assert (r["n_blinks"], r["visible"], r["found"], r["false_blinks"]) == (2, 2, 1, 1)
    assert r["blink_recall"] == 0.5
    assert r["duration_s"] == pytest.approx(60.0)
    assert r["false_blinks_per_min"] == pytest.approx(1.0)
    assert r["phases"][0]["first_blink_s"] == pytest.approx(10.0)
    assert r["phases"][0]["missed_start_s"] == [pytest.approx(50.0)]
    # Every 2nd frame: both phases run, the minutes double, the labels are visible in both.
    r2 = score_video(_trace(values), labels, 2, BlinkDetector, "v.avi")
    assert (r2["visible"], r2["found"], r2["false_blinks"], r2["minutes"]) == (4, 2, 2, pytest.approx(2.0))
    total = summarise([r, r2])
    assert (total["n_blinks"], total["visible"], total["found"]) == (4, 6, 3)
    assert total["false_blinks_per_min"] == pytest.approx(1.0)


def test_no_face_frames_are_skipped() -> None:
    values = [0.3] * 60 + [math.nan] * 10 + [0.3] * 5 + [0.1, 0.3, 0.3]
    r = score_video(_trace(values), [_blink(75, 75)], 1, BlinkDetector, "v.avi")
    assert (r["found"], r["false_blinks"]) == (1, 0)


def _csv(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "blinks.csv"
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        ("video,start,end\nv.avi,1,2\n", "bad header"),
        (HEADER, "no data rows"),
        (HEADER + "v.avi,1,2,0.1\n", "expected 5 fields"),
        (HEADER + "v.avi,one,2,0.1,0.2\n", "whole numbers"),
        (HEADER + "v.avi,1,2,a,0.2\n", "numbers of seconds"),
        (HEADER + "v.avi,3,2,0.1,0.2\n", "start_frame <= end_frame"),
        (HEADER + "../v.avi,1,2,0.1,0.2\n", "stay inside the root"),
        (HEADER + ",1,2,0.1,0.2\n", "empty video path"),
    ],
)
def test_bad_csv_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        read_blinks(_csv(tmp_path, text))


def test_missing_csv_and_timestamps(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_blinks(tmp_path / "nope.csv")
    assert read_timestamps(tmp_path / "none.txt") is None
    bad = tmp_path / "v_timestamps.txt"
    bad.write_text("[1, 2", encoding="utf-8")
    with pytest.raises(InputError, match="not a JSON list of timestamps"):
        read_timestamps(bad)
    bad.write_text('["2025-02-17 04:30:23.50", "2025-02-17 04:30:23.75"]', encoding="utf-8")
    assert read_timestamps(bad) == [0.0, 0.25]


def test_cli_missing_video_and_conflicting_options(tmp_path: Path, cli: Callable[..., tuple[int, str, str]]) -> None:
    p = _csv(tmp_path, HEADER + "gone.avi,1,2,0.1,0.2\n")
    code, _, err = cli("eval-liveness", "--blinks", str(p))
    assert code != 0 and "video not found" in err and "gone.avi" in err
    code, _, err = cli("eval-liveness", "--blinks", str(p), "--splice")
    assert code != 0 and "leave out --labels and --splice" in err
    code, _, err = cli("eval-liveness", "--blinks", str(tmp_path / "missing.csv"))
    assert code != 0 and "no such file" in err


# -- the real recording ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def held_out_report(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``kiosk eval-liveness --blinks`` on mahie_test_2 at every 2nd frame, once per session (~1 min)."""
    from kiosk.cli import main

    d = blinks_dir(faces_dir)
    if not (d / "mahie_test_2.avi").is_file():
        pytest.skip(f"the blink recordings are not in {d} (KIOSK_TEST_DATA/liveness/blinks)")
    rows = [line for line in (d / "blinks.csv").read_text().splitlines()[1:] if line.startswith("mahie_test_2.avi,")]
    tmp = tmp_path_factory.mktemp("blinks")
    (tmp / "held_out.csv").write_text(HEADER + "\n".join(rows) + "\n", encoding="utf-8")
    out = tmp / "report.json"
    argv = ["eval-liveness", "--blinks", str(tmp / "held_out.csv"), "--root", str(d), "--every", "2"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*argv, "--json", str(out)]) == 0
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def test_held_out_recording_meets_the_goals(held_out_report: dict[str, Any]) -> None:
    r = held_out_report
    assert r["n_blinks"] == 11 and r["every"] == 2
    (video,) = r["videos"]
    assert video["video"] == "mahie_test_2.avi" and len(video["phases"]) == 2
    assert r["visible"] >= 20  # 11 blinks of 3+ closed frames: nearly all are seen in both phases
    assert r["blink_recall"] >= 0.9
    assert r["false_blinks_per_min"] <= 1.0
    for key in ("n_blinks", "blink_recall", "false_blinks_per_min", "videos", "models", "detector", "machine"):
        assert key in r
