"""``python -m tools.measure.scale_bench`` on a tiny population: the replay of recorded frames decides exactly as the
live loop does on the same frames, the report's schema, the cache, and clean failures."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiosk.config import parse_config
from kiosk.context import Context
from tools.measure import scale_bench

SMALL = ["--sizes", "4", "10", "--members", "6", "--strangers", "4", "--quiet"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, faces_dir: Path) -> tuple[Path, dict[str, Any]]:
    """One tiny run (recorded, decided, verified against the live loop), shared by the tests below."""
    tmp = tmp_path_factory.mktemp("scale")
    out = tmp / "r.json"
    rc = scale_bench.main(
        ["--data", str(faces_dir), "--cache", str(tmp / "cache"), "--json", str(out), "--verify", *SMALL]
    )
    assert rc == 0
    return tmp / "cache", json.loads(out.read_text())


def test_replay_equals_the_live_loop_and_sizes_are_prefixes(recorded: tuple[Path, dict[str, Any]]) -> None:
    _, r = recorded
    small, large = r["runs"]
    assert small["verified_live"] is True
    assert (small["size"], large["size"]) == (4, 10)
    # Size 4: four members; size 10: all six members and four distractors. Strangers are shown at every size.
    assert (small["members_shown"], large["members_shown"]) == (4, 6)
    assert small["strangers_shown"] == large["strangers_shown"] == 4
    assert small["templates"] < large["templates"]
    for row in r["runs"]:
        photos = row["by_enrol_photos"]
        assert sum(v["shown"] for v in photos.values()) == row["members_shown"]
        assert row["false_grants"] == row["strangers_granted"] + row["members_granted_other"]
        assert 0.0 <= (row["member_rate"] or 0.0) <= 1.0
    assert {"machine", "versions", "git", "config"} <= r.keys()
    assert r["config"]["rule"]


def test_a_replay_that_differs_from_the_live_loop_is_caught(
    recorded: tuple[Path, dict[str, Any]], faces_dir: Path
) -> None:
    """The cross-check can fail: swap two members' recorded embeddings and the replay grants someone else."""
    cache, _ = recorded
    (path,) = cache.glob("*.pkl")
    with path.open("rb") as f:
        rec: scale_bench.Recording = pickle.load(f)
    first_two = rec.population.members[:2]  # both in the size-4 gallery
    members = [n for n, p in enumerate(rec.probes) if p in first_two]
    a, b = (rec.clips[n] for n in members)
    rec.clips[members[0]], rec.clips[members[1]] = b, a
    with Context(dataclasses.replace(parse_config({}), data_dir=cache)) as ctx:
        pipeline = ctx.pipeline
        replayed = scale_bench.decide(rec, pipeline, 4)
        live = scale_bench.decide(rec, pipeline, 4, live=True)
    assert not scale_bench.same_decisions(replayed, live)


def test_the_recording_is_reused_from_the_cache(
    recorded: tuple[Path, dict[str, Any]], faces_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache, first = recorded
    out = tmp_path / "again.json"
    argv = ["--data", str(faces_dir), "--cache", str(cache), "--json", str(out), *SMALL[:-1]]
    assert scale_bench.main(argv) == 0
    assert "recording from" in capsys.readouterr().err
    again = json.loads(out.read_text())
    assert [r["strangers_let_in"] for r in again["runs"]] == [r["strangers_let_in"] for r in first["runs"]]
    assert [r["member_rate"] for r in again["runs"]] == [r["member_rate"] for r in first["runs"]]


def test_config_overrides_reach_the_decision(
    recorded: tuple[Path, dict[str, Any]], faces_dir: Path, tmp_path: Path
) -> None:
    """An impossible threshold lets nobody in: the replay decides with the config it is given."""
    cache, _ = recorded
    out = tmp_path / "strict.json"
    argv = ["--data", str(faces_dir), "--cache", str(cache), "--json", str(out), "--set", "recognition.threshold=0.99"]
    assert scale_bench.main([*argv, *SMALL]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert all(r["members_granted_self"] == 0 and r["false_grants"] == 0 for r in runs)
    assert all(r["threshold"] == 0.99 for r in runs)


def test_bad_override_and_missing_data_fail_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert scale_bench.main(["--data", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no face data" in err and len(err.splitlines()) == 1
    assert scale_bench.main(["--data", str(tmp_path), "--set", "recognition.fpir=high", "--quiet"]) == 2
    with pytest.raises(scale_bench.ScaleBenchError, match="KEY=VALUE"):
        scale_bench._overrides(["recognition.margin"])
    assert scale_bench._overrides(["a.b=1", "a.c=null"]) == {"a": {"b": 1, "c": None}}


def test_prefix_keeps_exactly_the_people_asked() -> None:
    m = scale_bench.GalleryMatrix(
        np.arange(5, dtype=np.int64),
        np.array([1, 1, 2, 3, 3], dtype=np.int64),
        ["a", "a", "b", "c", "c"],
        np.eye(5, 4, dtype=np.float32),
    )
    sub = scale_bench.prefix(m, [1, 3])
    assert sub.person_ids.tolist() == [1, 1, 3, 3] and sub.names == ["a", "a", "c", "c"]
    assert sub.embeddings.shape == (4, 4)


def test_the_lfw_errata_name_real_identities_in_pairs(faces_dir: Path) -> None:
    """Every person the errata list leaves out exists in LFW, and every row names two different people with a kind
    and its evidence."""
    import csv

    with (faces_dir / "lfw" / "labels.csv").open(newline="") as f:
        labels = {row["identity"] for row in csv.DictReader(f)}
    with scale_bench.ERRATA.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["identity_a"] != r["identity_b"] and r["kind"] and r["evidence"] for r in rows)
    assert scale_bench.lfw_errata() <= labels
    assert {r["kind"] for r in rows} <= {"alias", "same_face_image", "swapped_photos"}
