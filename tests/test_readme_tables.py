"""The measured tables (docs/performance.md, the README's headline figures) are generated from docs/results, and
--check keeps them from drifting."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tools.measure.readme_tables import (
    ACCURACY,
    BENCH,
    BLOCKS,
    END,
    HEADLINE_BLOCK,
    START,
    TIMING,
    Sources,
    headline,
    main,
    render,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def _d(median: float | None, p95: float | None, n: int) -> dict[str, Any]:
    return {"median": median, "p95": p95, "n": n}


def synthetic_bench() -> dict[str, Any]:
    """The keys of ``kiosk bench --json`` as they were before face_embedded / recognizer_floor were added."""
    return {
        "started_utc": "2030-01-02T03:04:05+00:00",
        "end_to_end_ms_by_frame": {"all": _d(9.0, 50.0, 10), "face": _d(41.25, 52.5, 4), "empty": _d(6.125, 7.5, 6)},
        "end_to_end_ms_liveness_off": {"all": _d(8.0, 30.0, 10), "face": _d(23.25, 31.5, 4), "empty": _d(6.0, 7.0, 6)},
        "stages_ms": {
            "decode": _d(1.111, 2.222, 10),
            "detect": _d(3.333, 4.444, 10),
            "quality": _d(0.2, 0.3, 4),
            "align": _d(0.4, 0.6, 4),
            "embed": _d(12.34, 15.67, 4),
            "match": _d(0.05, 0.06, 4),
            "liveness": _d(17.25, 19.75, 4),
        },
        "decision_latency_ms": _d(240.4, 251.6, 2),
        "match_ms": {"1000": _d(0.031, 0.04, 5), "10000": _d(0.16, 0.2, 5), "100000": _d(3.21, 3.5, 5)},
        "cold_start_s": 1.234,
        "cold_start": {"since_launch_s": {"models_warm": 0.987, "first_decision": 1.234}, "peak_rss_mb": 150.5},
        "peak_rss_mb": 210.4,
        "loop": {"liveness": "active", "frames_with_face": 4},
        "frames": {"origin": "LFW /somewhere/lfw", "count": 10, "fps": 10.0, "size": [640, 480], "members_enrolled": 3},
        "config": {
            "config_file": None,
            "models": {"detector": {"id": "yunet", "format": "onnx"}, "recognizer": {"id": "sface", "format": "onnx"}},
            "runtime": {"intra_op_threads": 4, "inter_op_threads": 1, "tflite_threads": 4, "allow_spinning": False},
            "detection": {"input_size": 256},
            "decision": {"frames_needed": 2, "window": 4},
            "liveness": "active",
        },
        "machine": {
            "cpu": "Test CPU @ 1.00GHz",
            "cores": 4,
            "flags": ["neon"],
            "loadavg_start": [0.5, 0.4, 0.3],
            "loadavg_end": [0.75, 0.5, 0.3],
        },
        "versions": {"python": "3.11.0", "onnxruntime": "1.2.3", "opencv": "4.5.6"},
    }


def synthetic_timing() -> dict[str, Any]:
    return {
        "command": "python -m tools vs-face-recognition --frames 12 --runs 2 --seed 7 --pairs 0",
        "started_utc": "2030-01-03T00:00:00+00:00",
        "machine": {"cpu": "Test CPU @ 1.00GHz", "cores": 4, "loadavg": [0.25, 0.2, 0.1]},
        "loadavg_after": [0.5, 0.2, 0.1],
        "frames": {"n": 12, "width": 640, "height": 480},
        "runs_per_library": 2,
        "libraries": {"face_recognition": {"versions": {"face_recognition": "1.3.0", "dlib": "20.0.1"}}},
        "summary": {
            "face_recognition": {
                "ms": {"median": 310.46, "p95": 400.04},
                "fps": 3.14,
                "frames_with_face": 11,
                "frames": 12,
            },
            "face_kiosk": {"ms": {"median": 20.5, "p95": 25.25}, "fps": 48.75, "frames_with_face": 12, "frames": 12},
            "ratio": {"median_ms": 15.14, "p95_ms": 15.84, "fps": 15.53},
        },
    }


def synthetic_accuracy() -> dict[str, Any]:
    return {
        "command": "python -m tools vs-face-recognition --frames 12 --runs 1 --seed 7",
        "accuracy": {
            "n_pairs": 600,
            "face_recognition": {
                "tolerance": 0.6,
                "accuracy_at_tolerance": 0.975,
                "far_at_tolerance": 0.005,
                "accuracy_10fold": 0.98,
                "accuracy_10fold_std": 0.006,
                "tar_at_far": {"1e-3": {"tar": 0.92}},
                "seconds": 180.0,
            },
            "face_kiosk": {
                "accept_threshold": 0.47,
                "accuracy_at_threshold": 0.97,
                "far_at_threshold": 0.0,
                "accuracy_10fold": 0.99,
                "accuracy_10fold_std": 0.004,
                "tar_at_far": {"1e-3": {"tar": 0.985}},
            },
        },
    }


def rows(markdown: str) -> dict[str, list[str]]:
    """Table rows by their first cell (bold markers dropped)."""
    out = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            cells = [c.strip().replace("**", "") for c in line.strip("|").split("|")]
            out[cells[0]] = cells[1:]
    return out


def test_the_committed_readme_is_up_to_date_with_the_committed_results(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check"]) == 0, capsys.readouterr().out


def test_a_synthetic_bench_puts_each_figure_in_its_row() -> None:
    text = render(Sources(synthetic_bench(), synthetic_timing(), synthetic_accuracy()))
    r = rows(text)
    assert "Measured 2030-01-02 on Test CPU @ 1.00GHz, 4 cores (neon), load 0.50 → 0.75" in " ".join(text.split())
    assert "10 640x480 frames (4 with a face) of LFW photos at 10 fps, 3 people enrolled" in " ".join(text.split())
    assert "YuNet (onnx) at 256 → SFace (onnx), 4 intra-op threads, `runtime.allow_spinning: false`" in " ".join(
        text.split()
    )
    assert r["decode (JPEG)"] == ["1.11", "2.22"]
    assert r["detect (YuNet, 256)"] == ["3.33", "4.44"]
    assert r["quality / align"] == ["0.20 / 0.40", "0.30 / 0.60"]
    assert r["embed (SFace, 1 face)"] == ["12.3", "15.7"]
    assert r["match (3 people)"] == ["0.050", "0.060"]
    assert r["end to end, frame with a face, real door loop, liveness off"] == ["23.3", "31.5"]
    assert r["end to end, frame with a face, liveness active"] == ["41.3", "52.5"]
    assert r["end to end, empty frame"] == ["6.13", "7.50"]
    assert r["face appears → door pulse (10 fps camera, 2-of-4 vote)"] == ["240", "252"]
    assert r["1:N match over 1k / 10k / 100k templates"] == ["0.031 ms / 0.16 ms / 3.21 ms"]
    assert r["cold start: process start → models warm → first decision"] == ["1.23 s (models warm at 0.99 s)"]
    assert r["peak RSS: door loop process / cold-start process"] == ["210 MB / 151 MB"]
    assert r["median / p95 ms"] == ["310 / 400", "20.5 / 25.3", "15.1x / 15.8x"]
    assert r["frames per second"] == ["3.1", "48.8", "15.5x"]
    assert r["faces found"] == ["11 / 12", "12 / 12", ""]
    assert r["LFW pairs (600), 10-fold accuracy"] == ["98.00 % ± 0.60", "99.00 % ± 0.40", ""]
    assert r["TAR at FAR 0.1 %"] == ["92.00 %", "98.50 %", ""]
    assert r["LFW pairs, at the default threshold (FR tolerance 0.6 / kiosk 0.47)"][:2] == [
        "97.50 % (0.50 % false accepts)",
        "97.00 % (0 false accepts)",
    ]
    # No new keys: no split rows, no floor row.
    assert not any(k.startswith("↳") for k in r)
    assert not any("compute floor" in k for k in r)
    # The commands that regenerate each JSON, with --json pointing at the committed file.
    assert "kiosk bench --json docs/results/bench/bench.json" in text
    assert f"{synthetic_timing()['command']} --json docs/results/{TIMING}" in text
    assert f"{synthetic_accuracy()['command']} --json docs/results/{ACCURACY}" in text
    for rel in (BENCH, TIMING, ACCURACY):  # linked from docs/performance.md, beside docs/results
        assert f"[`docs/results/{rel}`](results/{rel})" in text


def test_the_new_bench_keys_add_split_rows_and_the_floor_row() -> None:
    bench = synthetic_bench()
    bench["end_to_end_ms_by_frame"] |= {"face_embedded": _d(45.5, 52.5, 3), "face_not_embedded": _d(8.25, 9.5, 1)}
    bench["end_to_end_ms_liveness_off"] |= {
        "face_embedded": _d(30.25, 31.5, 1),
        "face_not_embedded": _d(None, None, 0),
    }
    bench["recognizer_floor"] = {
        "model": "sface",
        "gflop_per_face": 1.14,
        "core_peak_gflops": 78.0,
        "threads": 4,
        "floor_ms": 3.654,
        "embed_ms_median": 12.34,
        "ratio": 3.377,
    }
    bench["cold_start"], bench["cold_start_s"] = None, None
    text = render(Sources(bench, synthetic_timing(), {"command": "x", "accuracy": None}))
    lines = text.splitlines()
    r = rows(text)
    off = lines.index("| **end to end, frame with a face, real door loop, liveness off** | **23.3** | 31.5 |")
    assert lines[off + 1] == "| ↳ recogniser ran (1 of 4 frames) | 30.3 | 31.5 |"
    assert lines[off + 2] == "| ↳ tracked, not embedded (0 of 4 frames) | – | – |"
    assert lines[off + 3] == "| end to end, frame with a face, liveness active | 41.3 | 52.5 |"
    assert lines[off + 4] == "| ↳ recogniser ran (3 of 4 frames) | 45.5 | 52.5 |"
    assert lines[off + 5] == "| ↳ tracked, not embedded (1 of 4 frames) | 8.25 | 9.50 |"
    floor = [v for k, v in r.items() if "compute floor" in k]
    assert floor == [["12.3 ms vs 3.65 ms = 3.38x"]]
    assert r["cold start"] == ["not measured (`--skip-cold-start`)"]
    assert not any(k.startswith("LFW") for k in r)  # a speed-only run has no accuracy rows


def test_the_headline_figures_come_from_the_same_json_each_with_its_command() -> None:
    text = headline(Sources(synthetic_bench(), synthetic_timing(), synthetic_accuracy()))
    r = rows(text)
    prose = " ".join(text.split())
    assert "Measured 2030-01-02 and 2030-01-03 on Test CPU @ 1.00GHz, 4 cores, default configuration" in prose
    assert "[docs/performance.md](docs/performance.md)" in prose
    assert r["face appears → door pulse (10 fps camera, 2-of-4 vote, liveness active), median"] == [
        "240 ms",
        "`kiosk bench`",
    ]
    assert r["frame with a face, end to end in the real door loop (liveness off), median"] == [
        "23.3 ms (41.3 ms with liveness active)",
        "`kiosk bench`",
    ]
    assert r["ms per 640x480 frame, median: face-kiosk vs `face_recognition` 1.3.0"] == [
        "20.5 vs 310 (15.1x)",
        f"`{synthetic_timing()['command']}`",
    ]
    assert r["LFW pairs (600), 10-fold accuracy: face-kiosk vs `face_recognition`"] == [
        "99.00 % vs 98.00 %",
        f"`{synthetic_accuracy()['command']}`",
    ]
    assert len(r) == 5  # the header and four figures
    # The same figures as the performance tables, by the same rules.
    bench_rows = rows(render(Sources(synthetic_bench(), synthetic_timing(), synthetic_accuracy())))
    assert bench_rows["face appears → door pulse (10 fps camera, 2-of-4 vote)"][0] == "240"
    assert bench_rows["end to end, frame with a face, real door loop, liveness off"][0] == "23.3"
    # No liveness-off run and no accuracy: the configured mode is named and the accuracy row is left out.
    bench = synthetic_bench()
    bench["end_to_end_ms_liveness_off"] = None
    r = rows(headline(Sources(bench, synthetic_timing(), {"command": "x", "accuracy": None})))
    assert r["frame with a face, end to end in the real door loop (liveness active), median"][0] == "41.3 ms"
    assert not any(k.startswith("LFW") for k in r)


def test_the_blocks_live_in_the_readme_and_docs_performance() -> None:
    assert {(b.name, b.path) for b in BLOCKS} == {("bench", "docs/performance.md"), ("headline", "README.md")}
    for block in BLOCKS:
        text = (ROOT / block.path).read_text(encoding="utf-8")
        assert text.count(block.start) == 1 and text.count(block.end) == 1


def _copy_repo(tmp_path: Path) -> tuple[Path, Path, Path]:
    """README.md, docs/performance.md and the results they are rendered from, copied under tmp_path."""
    root, results = tmp_path / "repo", tmp_path / "results"
    for block in BLOCKS:
        (root / block.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / block.path, root / block.path)
    for rel in (BENCH, TIMING, ACCURACY):
        (results / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(RESULTS / rel, results / rel)
    return root, root / "docs" / "performance.md", results


def _outside(text: str, start: str, end: str) -> tuple[str, str]:
    return text.split(start)[0], text.split(end)[1]


def test_a_changed_figure_fails_the_check_and_a_rewrite_fixes_only_the_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, performance, results = _copy_repo(tmp_path)
    readme = root / "README.md"
    args = ["--root", str(root), "--results", str(results)]
    assert main([*args, "--check"]) == 0
    bench_path = results / BENCH
    bench = json.loads(bench_path.read_text(encoding="utf-8"))
    changed = copy.deepcopy(bench)
    changed["stages_ms"]["embed"]["median"] = 98.76  # only in docs/performance.md
    bench_path.write_text(json.dumps(changed), encoding="utf-8")
    before, readme_before = performance.read_text(encoding="utf-8"), readme.read_text(encoding="utf-8")
    capsys.readouterr()
    assert main([*args, "--check"]) == 1
    out = capsys.readouterr().out
    assert "out of date" in out and len(out.strip().splitlines()) == 1 and "performance.md" in out
    assert performance.read_text(encoding="utf-8") == before  # --check writes nothing
    assert main(args) == 0
    after = performance.read_text(encoding="utf-8")
    assert "| embed (SFace, 1 face) | 98.8 |" in after
    head, tail = _outside(before, START, END)
    assert after.startswith(head) and after.endswith(tail)  # nothing outside the markers changed
    assert readme.read_text(encoding="utf-8") == readme_before  # nor the README, whose figures did not change
    assert main([*args, "--check"]) == 0
    # A figure the README shows too: both files are out of date, one line each, and both are rewritten.
    changed["decision_latency_ms"]["median"] = 987.6
    bench_path.write_text(json.dumps(changed), encoding="utf-8")
    before = performance.read_text(encoding="utf-8")
    capsys.readouterr()
    assert main([*args, "--check"]) == 1
    stale = capsys.readouterr().out.strip().splitlines()
    assert len(stale) == 2 and all("out of date" in line for line in stale)
    assert main(args) == 0
    after = performance.read_text(encoding="utf-8")
    assert "| face appears → door pulse (10 fps camera, 3-of-5 vote) | 988 |" in after
    head, tail = _outside(before, START, END)
    assert after.startswith(head) and after.endswith(tail)
    readme_after = readme.read_text(encoding="utf-8")
    assert "| **988 ms** | `kiosk bench` |" in readme_after
    start, end = HEADLINE_BLOCK.start, HEADLINE_BLOCK.end
    head, tail = _outside(readme_before, start, end)
    assert readme_after.startswith(head) and readme_after.endswith(tail)
    assert main([*args, "--check"]) == 0


def test_missing_markers_or_json_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, performance, results = _copy_repo(tmp_path)
    readme = root / "README.md"
    args = ["--root", str(root), "--results", str(results)]
    performance.write_text("# no markers here\n", encoding="utf-8")
    readme_before = readme.read_text(encoding="utf-8")
    assert main([*args]) == 2
    err = capsys.readouterr().err
    assert "marker" in err and "performance.md" in err and len(err.strip().splitlines()) == 1
    assert readme.read_text(encoding="utf-8") == readme_before  # nothing written when one file fails
    performance.write_text(f"a\n{START}\n{END}\nb\n", encoding="utf-8")
    readme.write_text("# the headline markers are gone\n", encoding="utf-8")
    assert main([*args, "--check"]) == 2
    err = capsys.readouterr().err
    assert "marker" in err and "README.md" in err and len(err.strip().splitlines()) == 1
    readme.write_text(readme_before, encoding="utf-8")
    (results / TIMING).unlink()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "timing.json" in err and len(err.strip().splitlines()) == 1
    assert performance.read_text(encoding="utf-8") == f"a\n{START}\n{END}\nb\n"
    (root / "README.md").unlink()
    shutil.copy(RESULTS / TIMING, results / TIMING)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "README.md" in err and len(err.strip().splitlines()) == 1
