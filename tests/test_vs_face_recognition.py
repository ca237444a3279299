"""``python -m tools vs-face-recognition``: the harness with FAKE libraries (workers speaking the same JSON protocol),
so no venv and no dlib are needed. Pinned: runs alternate A B A B, the ratios are computed from the workers' own
per-frame times, the JSON has its schema, pair distances turn into the documented accuracy figures, and a venv that
cannot be created is one line and exit 1. The real comparison is the command, not a test."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tools.measure import vs_face_recognition as vs

FAKE = textwrap.dedent(
    """
    import hashlib, json, os, sys
    name, base, log = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    def note(text):
        with open(log, "a") as f:
            f.write(text + "\\n")
    for line in sys.stdin:
        req = json.loads(line)
        op = req["op"]
        note(f"{name} {op} {len(req.get('paths', []))}")
        if op == "quit":
            break
        if op == "hello":
            out = {"ok": True, "library": name, "versions": {name: "9.9"}, "pipeline": "fake"}
        elif op == "time":
            n = len(req["paths"])
            out = {"ok": True, "ms": [base * (i % 3 + 1) for i in range(n)], "faces": [1] * n,
                   "stages_ms": {"all": [base * (i % 3 + 1) for i in range(n)]}}
        elif op == "encode":
            items = []
            for p in req["paths"]:
                if "noface" in p:
                    items.append({"vector": None, "reason": "no face found"})
                    continue
                ident = os.path.basename(os.path.dirname(p))
                seed = int(hashlib.sha256(ident.encode()).hexdigest()[:8], 16)
                v = [((seed >> k) & 1) * 1.0 for k in range(16)]
                items.append({"vector": v, "reason": None})
            out = {"ok": True, "items": items}
        elif op == "boom":
            out = {"ok": False, "error": "fake failure"}
        else:
            sys.stderr.write("fake worker: dying on purpose\\n")
            sys.exit(3)
        sys.stdout.write(json.dumps(out) + "\\n")
        sys.stdout.flush()
    """
)


@pytest.fixture
def fake(tmp_path: Path) -> tuple[Path, Path]:
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE)
    return script, tmp_path / "calls.log"


def _cmd(fake: tuple[Path, Path], name: str, base: float) -> list[str]:
    script, log = fake
    return [sys.executable, str(script), name, str(base), str(log)]


def test_runs_alternate_and_ratios_come_from_worker_times(fake: tuple[Path, Path]) -> None:
    paths = [f"f{i}.jpg" for i in range(3)]
    with vs.Worker(vs.FR, _cmd(fake, vs.FR, 10.0)) as a, vs.Worker(vs.FK, _cmd(fake, vs.FK, 5.0)) as b:
        rows = vs.timing_runs([a, b], paths, 3, warmup=2, log=lambda _: None)
    assert [r["library"] for r in rows] == [vs.FR, vs.FK] * 3
    assert [r["round"] for r in rows] == [1, 1, 2, 2, 3, 3]
    calls = fake[1].read_text().split("\n")
    assert calls[:8] == [f"{vs.FR} time 2", f"{vs.FK} time 2"] + [f"{vs.FR} time 3", f"{vs.FK} time 3"] * 3
    assert rows[0]["ms"] == {"median": 20.0, "p95": 30.0, "mean": 20.0}  # [10, 20, 30]: p95 = rank ceil(.95*3) = 3
    assert rows[0]["fps"] == pytest.approx(1000 * 3 / 60)
    s = vs.summarise(rows)
    assert s[vs.FR]["ms"]["median"] == 20.0 and s[vs.FR]["ms"]["p95"] == 30.0  # 9 pooled samples: rank 9
    assert s[vs.FK]["ms"]["median"] == 10.0 and s[vs.FK]["frames_timed"] == 9
    assert s["ratio"]["median_ms"] == 2.0 and s["ratio"]["p95_ms"] == 2.0 and s["ratio"]["fps"] == 2.0
    assert s["ratio"]["per_round_median_ms"] == [2.0, 2.0, 2.0]


def test_worker_errors_are_one_line(fake: tuple[Path, Path]) -> None:
    with vs.Worker("x", _cmd(fake, "x", 1.0)) as w:
        with pytest.raises(vs.VsError, match=r"^fake failure$"):
            w.request({"op": "boom"})
        with pytest.raises(vs.VsError, match=r"^x worker exited: fake worker: dying on purpose$"):
            w.request({"op": "die"})


def test_distance_metrics_at_tolerance_and_far() -> None:
    genuine, impostor = [0.3, 0.5, 0.7], [0.8, 0.55, 0.9]
    r = vs.distance_metrics(genuine + impostor, [True] * 3 + [False] * 3, ["1", "1", "2", "2", "1", "2"])
    assert r["accuracy_at_tolerance"] == pytest.approx(4 / 6)
    assert r["far_at_tolerance"] == pytest.approx(1 / 3) and r["frr_at_tolerance"] == pytest.approx(1 / 3)
    assert r["tar_at_far"] == {"1e-2": None, "1e-3": None}  # 3 impostors: too few for either rate
    rng = np.random.default_rng(0)
    g, i = rng.uniform(0.2, 0.5, 100), rng.uniform(0.45, 1.0, 1000)
    r = vs.distance_metrics(np.r_[g, i], [True] * 100 + [False] * 1000, [None] * 1100)
    point = r["tar_at_far"]["1e-3"]
    assert point is not None and r["accuracy_10fold"] is None
    assert np.sum(i <= point["max_distance"]) <= 1  # FAR 1e-3 of 1000 impostors: at most one accepted
    assert point["tar"] == pytest.approx(np.mean(g <= point["max_distance"]))


def test_fr_accuracy_encodes_each_image_once_and_fails_as_different(fake: tuple[Path, Path], tmp_path: Path) -> None:
    rows = [
        ("1", "a/1.jpg", "a/2.jpg", 1),
        ("1", "a/1.jpg", "b/1.jpg", 0),
        ("2", "b/1.jpg", "b/2.jpg", 1),
        ("2", "c/1.jpg", "a/2.jpg", 0),
        ("2", "c/1.jpg", "noface/1.jpg", 1),
    ]
    csv = tmp_path / "pairs.csv"
    csv.write_text("fold,path1,path2,same\n" + "".join(f"{f},{p},{q},{s}\n" for f, p, q, s in rows))
    with vs.Worker(vs.FR, _cmd(fake, vs.FR, 1.0)) as w:
        r = vs.fr_accuracy(w, csv, tmp_path, vs.pair_subset(5, 5), log=lambda _: None)
    assert r["n_pairs"] == 5 and r["n_images"] == 6 and r["n_failed"] == 1
    assert r["failed_images"] == [{"path": "noface/1.jpg", "reason": "no face found"}]
    assert r["accuracy_at_tolerance"] == pytest.approx(4 / 5)  # the genuine pair with no face counts as different
    assert fake[1].read_text().count(f"{vs.FR} encode 6") == 1


def test_pair_subset_is_evenly_spaced() -> None:
    assert vs.pair_subset(10, 100) == list(range(10))
    assert vs.pair_subset(4200, 4) == [0, 1050, 2100, 3150]


def test_main_writes_the_report_schema(fake: tuple[Path, Path], tmp_path: Path, faces_dir: Path) -> None:
    out = tmp_path / "vs.json"
    fr_cmd, fk_cmd = (" ".join(_cmd(fake, lib, base)) for lib, base in ((vs.FR, 30.0), (vs.FK, 3.0)))
    argv = ["--frames", "3", "--runs", "2", "--pairs", "0", "--data", str(faces_dir), "--json", str(out), "--quiet"]
    assert vs.main([*argv, "--fr-worker", fr_cmd, "--kiosk-worker", fk_cmd]) == 0
    r: dict[str, Any] = json.loads(out.read_text())
    assert r.keys() >= {"command", "machine", "versions", "frames", "libraries", "runs", "summary", "accuracy", "order"}
    assert r["order"] == [vs.FR, vs.FK, vs.FR, vs.FK] and len(r["runs"]) == 4
    assert r["frames"]["n"] == 3 and len(r["frames"]["photos"]) == 3 and r["frames"]["width"] == 640
    assert r["runs"][0].keys() >= {"run", "round", "library", "ms", "fps", "frames_with_face", "loadavg", "samples_ms"}
    assert r["summary"]["ratio"]["median_ms"] == 10.0 and r["accuracy"] is None
    assert r["libraries"][vs.FR]["versions"] == {vs.FR: "9.9"}
    assert isinstance(r["machine"]["cores"], int) and r["command"].endswith("--pairs 0")


def test_venv_that_cannot_be_created_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "faces" / "lfw").mkdir(parents=True)
    for name in ("labels.csv", "pairs.csv"):
        (tmp_path / "faces" / "lfw" / name).write_text("")
    (tmp_path / "file").write_text("not a folder")
    venv = tmp_path / "file" / "venv"
    assert vs.main(["--venv", str(venv), "--data", str(tmp_path / "faces"), "--quiet", "--pairs", "0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{vs.PROG}: error: cannot create a venv at {venv}: ")
    with pytest.raises(vs.VsError, match=r"project's \.venv"):
        vs.ensure_venv(vs.ROOT / ".venv" / "sub")
