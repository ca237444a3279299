"""``kiosk eval-liveness --group-by``: a presentation = several rows (a video's frames) fused as the door fuses a
track's frames; the fusion rule (``kiosk.liveness.passive.fuse``, ``liveness.passive.fusion``); the intervals and
breakdowns; the identity-disjoint cross-validation of ``kiosk.lab.liveness_cv``; and one run of the real command on
a handful of Idiap Replay-Attack videos (skipped without the data or the MiniFASNet checkpoints)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from kiosk.config import LivenessConfig, PassiveLivenessConfig, parse_config
from kiosk.errors import ConfigError, InputError
from kiosk.lab.liveness_cv import Truth, choose, cross_validate, person_folds, threshold_at_bpcer
from kiosk.lab.liveness_eval import (
    Scored,
    breakdown,
    evaluate,
    group_detail,
    group_key,
    group_scored,
    intervals,
    parse_group_by,
    read_detail,
    read_presentations,
    wilson,
)
from kiosk.liveness import Liveness
from kiosk.liveness.passive import FUSIONS, fuse
from kiosk.types import Face
from tests.helpers import config_file, run_cli

# -- grouping arithmetic on a tiny synthetic CSV (no model) --------------------------------------------------------

ROWS = [  # path, label, attack_type, score (None: no face)
    ("v/live_a_controlled/f0.jpg", "bona_fide", "", 0.9),
    ("v/live_a_controlled/f1.jpg", "bona_fide", "", 0.7),
    ("v/live_b_adverse/f0.jpg", "bona_fide", "", 0.2),
    ("v/live_b_adverse/f1.jpg", "bona_fide", "", None),
    ("v/print_a_adverse/f0.jpg", "attack", "print", 0.6),
    ("v/print_a_adverse/f1.jpg", "attack", "print", 0.1),
    ("v/screen_a_controlled/f0.jpg", "attack", "screen", None),
    ("v/screen_a_controlled/f1.jpg", "attack", "screen", None),
]


def _scored(tmp_path: Path, rows: list[tuple[str, str, str, float | None]] = ROWS) -> list[Scored]:
    f = tmp_path / "labels.csv"
    f.write_text("path,label,attack_type\n" + "".join(f"{p},{lab},{k}\n" for p, lab, k, _ in rows))
    items = read_presentations(f)
    return [Scored(it, s, frames=1, faces=int(s is not None)) for it, (*_, s) in zip(items, rows, strict=True)]


def test_rows_of_a_folder_become_one_presentation_with_the_fused_score(tmp_path: Path) -> None:
    groups = group_scored(_scored(tmp_path), "dir", "mean")
    assert [g.item.path for g in groups] == [
        "v/live_a_controlled",
        "v/live_b_adverse",
        "v/print_a_adverse",
        "v/screen_a_controlled",
    ]
    assert [g.score for g in groups[:3]] == pytest.approx([0.8, 0.2, 0.35])  # the frame with no face is left out
    assert groups[3].score is None and "no frame of 2 scored" in groups[3].reason  # failure to acquire
    assert (groups[1].frames, groups[1].faces, groups[1].extra["frame_scores"]) == (2, 1, [0.2, None])
    assert (groups[2].item.label, groups[2].item.attack_type, groups[2].item.line) == ("attack", "print", 6)
    report = evaluate(groups, 0.5)
    assert report["n"] == {"bona_fide": 2, "attack": 1, "attack_types": {"print": 1}}
    assert report["failed_to_acquire"] == {"bona_fide": 0, "attack": 1}
    assert report["apcer"] == {"print": 0.0, "screen": None} and report["bpcer"] == 0.5
    assert group_scored(_scored(tmp_path), "dir", "min")[2].score == pytest.approx(0.1)


def test_group_by_depth_and_its_errors(tmp_path: Path) -> None:
    assert group_key("a/b/c/f.jpg", "dir") == "a/b/c"
    assert group_key("a/b/c/f.jpg", "1") == "a" and group_key("a/b/c/f.jpg", "2") == "a/b"
    groups = group_scored(_scored(tmp_path, ROWS[:4]), "1")
    assert len(groups) == 1 and groups[0].score == pytest.approx((0.9 + 0.7 + 0.2) / 3)
    with pytest.raises(InputError, match="has 3 folder"):
        group_key("a/b/c/f.jpg", "4")
    with pytest.raises(InputError, match="has 0 folder"):
        group_key("f.jpg", "dir")
    for bad in ("0", "-1", "video", ""):
        with pytest.raises(InputError, match="--group-by must be 'dir'"):
            parse_group_by(bad)
    mixed = [*ROWS[:2], ("v/live_a_controlled/f2.jpg", "attack", "print", 0.5)]
    with pytest.raises(InputError, match=r"lines 2 and 4 are in one presentation \(v/live_a_controlled\)"):
        group_scored(_scored(tmp_path, mixed), "dir")


def test_wilson_intervals_and_the_report_intervals(tmp_path: Path) -> None:
    lo, hi = wilson(0, 10) or (0, 0)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 0) is None
    ci = intervals(group_scored(_scored(tmp_path), "dir"), 0.5)
    assert ci["bpcer"]["errors"] == 1 and ci["bpcer"]["n"] == 2
    assert ci["apcer"]["print"] == {"errors": 0, "n": 1, "ci95": [0.0, pytest.approx(0.7935, abs=1e-4)]}
    assert ci["apcer"]["screen"]["ci95"] is None  # nothing acquired


def test_breakdown_by_detail_columns_and_light_from_the_folder_name(tmp_path: Path) -> None:
    f = tmp_path / "detail.csv"
    lines = ["path,identity,label,attack_type,support"]
    for path, label, kind, _ in ROWS:
        lines.append(f"{path},{'p1' if '_a_' in path else 'p2'},{label},{kind},{'hand' if kind == 'print' else ''}")
    f.write_text("\n".join(lines) + "\n")
    detail = read_detail(f)
    assert detail["v/print_a_adverse/f0.jpg"] == {"identity": "p1", "support": "hand", "light": "adverse"}
    groups = group_scored(_scored(tmp_path), "dir")
    by = breakdown(groups, group_detail(detail, "dir"), 0.5)
    assert set(by) == {"light", "support"}, "identity is not broken down"
    assert by["light"]["adverse"]["bpcer"] == 1.0 and by["light"]["controlled"]["bpcer"] == 0.0
    assert by["light"]["adverse"]["apcer"]["print"] == 0.0
    assert by["support"]["hand"]["bpcer"] is None and by["support"]["hand"]["n"] == {"bona_fide": 0, "attack": 1}
    (tmp_path / "bad.csv").write_text("file,support\nx,hand\n")
    with pytest.raises(InputError, match="needs a 'path' column"):
        read_detail(tmp_path / "bad.csv")


# -- the fusion rule and the door ------------------------------------------------------------------------------------


def test_fuse_rules() -> None:
    s = [0.9, 0.5, 0.1]
    assert fuse(s) == fuse(s, "mean") == pytest.approx(0.5)
    assert fuse(s, "median") == 0.5 and fuse(s, "min") == 0.1
    assert fuse(s, "mean_logit") == pytest.approx(0.5)  # log-odds ±2.197 and 0 cancel
    # one confident attack frame weighs more in log-odds than in probability
    assert fuse([0.9, 0.9, 0.001], "mean_logit") < 0.5 < fuse([0.9, 0.9, 0.001], "mean")
    assert fuse([1.0, 1.0], "mean_logit") == pytest.approx(1.0, abs=1e-5)  # clipped, not inf
    assert fuse([0.0], "mean_logit") == pytest.approx(0.0, abs=1e-5)
    assert set(FUSIONS) == {"mean", "mean_logit", "median", "min"}
    with pytest.raises(ValueError, match="no scores"):
        fuse([])
    with pytest.raises(ValueError, match="unknown rule 'max'"):
        fuse(s, "max")


class _Scores:
    def __init__(self, scores: list[float]) -> None:
        self.scores = scores

    def score(self, image: object, face: object) -> float:
        return self.scores.pop(0)


@pytest.mark.parametrize(("fusion", "status"), [("mean", "pass"), ("min", "fail")])
def test_the_door_fuses_a_tracks_frames_with_the_configured_rule(fusion: str, status: str) -> None:
    passive = PassiveLivenessConfig(models=("m",), threshold=0.5, frames=3, fusion=fusion)
    live = Liveness(LivenessConfig(mode="passive", passive=passive), passive=_Scores([0.9, 0.9, 0.3]))
    image = np.zeros((8, 8, 3), np.uint8)
    face = Face(np.array([0, 0, 4, 4], np.float32), np.zeros((5, 2), np.float32), 0.9)
    for t in (0.0, 0.1, 0.2):
        live.observe(1, image, face, t)
    from tests.test_liveness_policy import obs

    r = live(1, obs())
    assert r.status == status and r.score == pytest.approx(fuse([0.9, 0.9, 0.3], fusion))


def test_config_fusion_key_is_checked() -> None:
    assert parse_config({}).liveness.passive.fusion == "mean"
    assert parse_config({"liveness": {"passive": {"fusion": "min"}}}).liveness.passive.fusion == "min"
    with pytest.raises(ConfigError, match=r"liveness\.passive\.fusion: must be one of mean, mean_logit, median, min"):
        parse_config({"liveness": {"passive": {"fusion": "max"}}})
    with pytest.raises(ConfigError, match=r"liveness\.passive\.fusion: must be a string"):
        parse_config({"liveness": {"passive": {"fusion": 3}}})


# -- identity-disjoint cross-validation ------------------------------------------------------------------------------


def test_threshold_at_bpcer_rejects_at_most_the_target() -> None:
    bona = np.arange(1, 41) / 40.0  # 40 scores: 5 % allows 2 below the threshold
    assert threshold_at_bpcer(bona, 0.05) == pytest.approx(3 / 40)
    assert threshold_at_bpcer(bona, 0.0) == pytest.approx(1 / 40)
    assert threshold_at_bpcer([np.nan, 0.7], 0.05) == 0.7
    with pytest.raises(ValueError):
        threshold_at_bpcer([], 0.05)


def test_person_folds_are_disjoint_and_balanced() -> None:
    folds = person_folds([f"c{i:02d}" for i in range(15)] * 2, 5)
    assert len(folds) == 15 and sorted(np.bincount(list(folds.values()))) == [3] * 5
    with pytest.raises(ValueError):
        person_folds(["a", "b"], 3)


def _synthetic(seed: int = 0) -> tuple[dict[str, np.ndarray], Truth]:
    """10 people x (4 bona fide, 4 print): 'good' separates them, 'bad' does not."""
    rng = np.random.default_rng(seed)
    label, kind, person = [], [], []
    for p in range(10):
        for _ in range(4):
            label += ["bona_fide", "attack"]
            kind += ["", "print"]
            person += [f"p{p}", f"p{p}"]
    is_bona = np.array([lab == "bona_fide" for lab in label])
    good = np.where(is_bona, rng.uniform(0.6, 1.0, is_bona.size), rng.uniform(0.0, 0.4, is_bona.size))
    bad = rng.uniform(0.0, 1.0, is_bona.size)
    return {"bad": bad, "good": good}, Truth.of(label, kind, person)


def test_cross_validation_chooses_on_other_people_and_pools_the_held_out() -> None:
    cands, truth = _synthetic()
    name, _, table = choose(cands, truth, np.ones(len(truth), dtype=bool))
    assert name == "good" and set(table) == {"bad", "good"} and table["good"]["bpcer"] <= 0.05
    cv = cross_validate(cands, truth, folds=5, baseline=("bad", 0.5))
    assert [f["chosen"]["candidate"] for f in cv["per_fold"]] == ["good"] * 5
    held = [set(f["held_out_persons"]) for f in cv["per_fold"]]
    assert set().union(*held) == {f"p{i}" for i in range(10)} and sum(len(h) for h in held) == 10
    pooled = cv["pooled_held_out"]
    assert pooled["chosen"]["errors"]["print"][1] == 40 and pooled["chosen"]["apcer"]["print"] == 0.0
    assert pooled["baseline"]["apcer"]["print"] > 0.2  # the uninformative rule, untouched
    assert pooled["chosen"]["ci95_wilson"]["bona_fide"] is not None


# -- the real command on a handful of Replay-Attack videos ------------------------------------------------------------

PER_TYPE = {"bona_fide": 2, "print": 2, "screen_photo": 2, "screen_video": 2}


@pytest.fixture(scope="module")
def replay_attack(faces_dir: Path) -> Path:
    d = faces_dir / "liveness" / "replay-attack"
    if not (d / "labels_detail.csv").is_file():
        pytest.skip(f"Replay-Attack frames not found at {d} (KIOSK_TEST_DATA)")
    return d


def test_eval_liveness_per_video_on_real_replay_attack_frames(
    replay_attack: Path, minifasnet_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with (replay_attack / "labels_detail.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    videos: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        videos.setdefault(group_key(r["path"], "dir"), []).append(r)
    picked: list[dict[str, str]] = []
    taken = dict.fromkeys(PER_TYPE, 0)
    for frames in videos.values():  # the first videos of each type in the CSV
        kind = frames[0]["attack_type"] or "bona_fide"
        if taken[kind] < PER_TYPE[kind]:
            taken[kind] += 1
            picked += frames
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "path,label,attack_type\n" + "".join(f"{r['path']},{r['label']},{r['attack_type']}\n" for r in picked)
    )
    cfg = config_file(
        tmp_path,
        f"models: {{manifest: {minifasnet_models / 'manifest.yaml'}}}\n"
        "liveness: {mode: passive, passive: {models: [minifasnet_v2, minifasnet_v1se]}}\n",
    )
    out = tmp_path / "videos.json"
    argv = ["eval-liveness", "--labels", str(labels), "--root", str(replay_attack), "--group-by", "dir"]
    argv += ["--detail", str(replay_attack / "labels_detail.csv"), "--json", str(out)]
    code, stdout, _ = run_cli(cfg, capsys, *argv)
    assert code == 0
    assert "per image:" in stdout and "per presentation (rows grouped by dir, fusion mean)" in stdout
    report = json.loads(out.read_text())
    n_videos = sum(PER_TYPE.values())
    assert report["group_by"] == "dir" and report["fusion"] == "mean"
    assert len(report["presentations"]) == n_videos
    assert report["per_image"]["n"]["bona_fide"] + report["per_image"]["n"]["attack"] == 4 * n_videos
    assert report["n"]["bona_fide"] == 2 and report["n"]["attack_types"] == {k: 2 for k in PER_TYPE if k != "bona_fide"}
    assert report["failed_to_acquire"] == {"bona_fide": 0, "attack": 0}
    for p in report["presentations"]:
        assert p["frames"] == 4 and len(p["frame_scores"]) == 4
        assert p["score"] == pytest.approx(float(np.mean([s for s in p["frame_scores"] if s is not None])), abs=1e-5)
    # Sane figures: live faces score high, and the rates are fractions with intervals around them.
    bona = [p["score"] for p in report["presentations"] if p["label"] == "bona_fide"]
    assert min(bona) > 0.5
    assert all(v is None or 0.0 <= v <= 1.0 for v in report["apcer"].values())
    assert report["intervals"]["bpcer"]["n"] == 2 and "light" in report["by"] and "support" in report["by"]
    assert math.isclose(report["threshold"], 0.5)
