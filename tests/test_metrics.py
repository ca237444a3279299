"""kiosk.lab.metrics against hand-computed cases and brute-force N x N references."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from kiosk.errors import InputError
from kiosk.lab import metrics
from kiosk.lab.plot import plot

# ------------------------------------------------------------------------------------------------ references


def brute_threshold(negatives: np.ndarray, positives: np.ndarray, rate: float) -> float:
    """The documented definition, written the slow obvious way: the smallest observed score t such that the
    fraction of negatives >= t is <= rate; past the top tied negatives when nothing qualifies."""
    neg = np.sort(negatives)
    candidates = np.unique(np.concatenate([negatives, positives]))
    count_ge = neg.size - np.searchsorted(neg, candidates, side="left")
    ok = candidates[count_ge / neg.size <= rate]
    return float(ok.min()) if ok.size else float(np.nextafter(neg.max(), np.inf))


def brute_all_pairs(emb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sim = emb.astype(np.float64) @ emb.astype(np.float64).T
    iu = np.triu_indices(len(emb), 1)
    same = (labels[:, None] == labels[None, :])[iu]
    return sim[iu][same], sim[iu][~same]


def clustered_integer_embeddings(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """~300 embeddings whose dot products are exact in float32 whatever the summation order (integers / 32, so
    every product is a multiple of 1/1024 well inside float32's 24 bits): block-wise and brute-force scores
    are then bit-identical and thresholds can be compared with ==. Lots of exact ties, on purpose."""
    rng = np.random.default_rng(seed)
    sizes = [1] * 40 + [2] * 30 + [3] * 20 + [5] * 10 + [10] * 7 + [20]  # 300 images, 108 identities
    labels = np.concatenate([[f"id{k:03d}"] * n for k, n in enumerate(sizes)])
    rng.shuffle(labels)
    centers = {lab: rng.integers(-3, 4, size=16) for lab in np.unique(labels)}
    emb = np.stack([centers[lab] + rng.integers(-2, 3, size=16) for lab in labels]).astype(np.float32) / 32
    return emb, labels


def clustered_unit_embeddings(
    n_ids: int, per_id: int, singletons: int, dim: int = 64, noise: float = 0.9, seed: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.array([f"p{k}" for k in range(n_ids) for _ in range(per_id)] + [f"s{k}" for k in range(singletons)])
    rng.shuffle(labels)
    centers = {lab: rng.normal(size=dim) for lab in np.unique(labels)}
    emb = np.stack([centers[lab] + noise * rng.normal(size=dim) for lab in labels])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb.astype(np.float32), labels


# --------------------------------------------------------------------------------------------- pair metrics


def test_rate_key_and_min_negatives() -> None:
    assert [metrics.rate_key(r) for r in (1e-2, 1e-3, 1e-6, 5e-4)] == ["1e-2", "1e-3", "1e-6", "5e-4"]
    assert [metrics.min_negatives(r) for r in (1e-2, 1e-3, 1e-5, 1e-6)] == [100, 1000, 100_000, 1_000_000]


def test_perfectly_separable() -> None:
    genuine, impostor = np.array([0.6, 0.7, 0.9]), np.array([0.1, 0.2, 0.3])
    assert metrics.roc_auc(genuine, impostor) == 1.0
    threshold, accuracy = metrics.best_threshold(genuine, impostor)
    assert accuracy == 1.0
    assert threshold == pytest.approx(0.45)  # midway between the highest impostor and the lowest genuine
    fmr, tpr, thresholds = metrics.roc(genuine, impostor)
    assert (fmr[0], tpr[0], thresholds[0]) == (0.0, 0.0, np.inf)
    assert (fmr[-1], tpr[-1]) == (1.0, 1.0)
    assert tpr[fmr == 0].max() == 1.0  # all genuine accepted before the first false match


def test_fully_overlapping() -> None:
    scores = np.linspace(-0.5, 0.5, 50)
    assert metrics.roc_auc(scores, scores) == 0.5
    _, accuracy = metrics.best_threshold(scores, scores)
    assert accuracy == 0.5  # every split accepts as many impostors as genuine pairs


def test_roc_points_by_hand() -> None:
    fmr, tpr, thresholds = metrics.roc([0.9, 0.5], [0.7, 0.1])
    np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.7, 0.5, 0.1])
    np.testing.assert_array_equal(fmr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_array_equal(tpr, [0, 0.5, 0.5, 1, 1])
    fmr, tpr, thresholds = metrics.roc([0.5, 0.5], [0.5])  # a tie is one point, not a staircase
    np.testing.assert_array_equal(thresholds, [np.inf, 0.5])
    np.testing.assert_array_equal(tpr, [0, 1])


def test_auc_ties_by_hand_and_against_pairwise_count() -> None:
    # (0.5 vs 0.5) counts 1/2, the other three comparisons are wins: 3.5 / 4.
    assert metrics.roc_auc([0.5, 0.7], [0.5, 0.3]) == 0.875
    rng = np.random.default_rng(3)
    g, i = rng.integers(0, 20, 300) / 10, rng.integers(0, 15, 400) / 10  # many ties
    wins = (g[:, None] > i[None, :]).sum() + 0.5 * (g[:, None] == i[None, :]).sum()
    assert metrics.roc_auc(g, i) == pytest.approx(wins / (g.size * i.size), abs=1e-15)
    fmr, tpr, _ = metrics.roc(g, i)
    assert np.trapezoid(tpr, fmr) == pytest.approx(metrics.roc_auc(g, i), abs=1e-12)


def test_best_threshold_tie_goes_to_lowest_and_extremes() -> None:
    # Accepting >= 0.3 and accepting >= 0.9 both get 3 of 4 right; the lower midpoint (0.2) wins.
    assert metrics.best_threshold([0.3, 0.9], [0.5, 0.1]) == (pytest.approx(0.2), 0.75)
    # Every genuine below every impostor: accepting all (threshold below the lowest score) is as good as any.
    threshold, accuracy = metrics.best_threshold([0.1], [0.9])
    assert accuracy == 0.5 and threshold < 0.1
    with pytest.raises(ValueError, match="need genuine and impostor"):
        metrics.best_threshold([], [0.1])


def test_best_threshold_midpoint_of_adjacent_floats_stays_a_valid_split() -> None:
    lo = 0.3
    hi = float(np.nextafter(lo, 1.0))
    threshold, accuracy = metrics.best_threshold([hi], [lo])
    assert accuracy == 1.0 and lo < threshold <= hi


def test_kfold_chooses_each_threshold_on_the_other_folds() -> None:
    # Folds a and b are clean; fold c has a low genuine (0.35) and a high impostor (0.45).
    scores = [0.6, 0.7, 0.1, 0.2] * 2 + [0.35, 0.7, 0.1, 0.45]
    same = [1, 1, 0, 0] * 3
    folds = ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    mean, std, thresholds = metrics.kfold_accuracy(scores, same, folds)
    # a, b: trained on {b or a} + c -> ties between 0.275 and 0.525, lowest wins: 0.275, fold accuracy 1.
    # c: trained on a + b -> 0.4, which misses 0.35 and lets 0.45 through: accuracy 0.5.
    np.testing.assert_allclose(thresholds, [0.275, 0.275, 0.4])
    assert mean == pytest.approx(2.5 / 3)
    assert std == pytest.approx(math.sqrt(1 / 18))  # population std (ddof=0) of [1, 1, 0.5]
    # Choosing the threshold on all pairs (cheating) would give a different, higher figure.
    s, y = np.asarray(scores), np.asarray(same, bool)
    assert metrics.best_threshold(s[y], s[~y])[1] > mean


def test_kfold_needs_two_folds_and_both_classes() -> None:
    with pytest.raises(ValueError, match="at least 2 folds"):
        metrics.kfold_accuracy([0.1, 0.9], [0, 1], [1, 1])
    with pytest.raises(ValueError, match="fold 1"):
        metrics.kfold_accuracy([0.1, 0.9, 0.8], [0, 1, 1], [1, 1, 2])  # fold 1's complement has no impostor


def test_tar_at_far_by_hand() -> None:
    impostor = np.arange(100) / 128  # 0 .. 99/128, exact in binary
    genuine = np.array([98.5, 97.5, 50, 99.5, 128]) / 128
    result = metrics.tar_at_far(genuine, impostor, fars=(1e-2, 1e-3))
    # FAR 1e-2 of 100 impostors allows 1 at or above: 98/128 must be excluded; the smallest observed score
    # above it is the genuine 98.5/128 (the impostor 99/128 is higher). TAR = 3 of 5.
    assert result == {"1e-2": {"tar": 0.6, "threshold": 98.5 / 128}, "1e-3": None}
    assert np.mean(impostor >= 98.5 / 128) <= 1e-2 < np.mean(impostor >= 98 / 128)


def test_tar_at_far_ties_and_nothing_qualifies() -> None:
    impostor = np.concatenate([[0.9, 0.8, 0.8], np.zeros(97)])
    # 1 impostor allowed; 0.8 is tied twice so it must be excluded: smallest observed score above is 0.85.
    assert metrics.tar_at_far([0.85, 0.8], impostor, (1e-2,))["1e-2"] == {"tar": 0.5, "threshold": 0.85}
    tied = np.full(100, 0.9)
    out = metrics.tar_at_far([0.5, 0.9], tied, (1e-2,))["1e-2"]
    assert out is not None and out["tar"] == 0.0 and 0.9 < out["threshold"] < 0.9 + 1e-12
    assert metrics.tar_at_far([0.95], tied, (1e-2,))["1e-2"] == {"tar": 1.0, "threshold": 0.95}


def test_tar_at_far_needs_ceil_one_over_far_impostors() -> None:
    genuine = np.ones(5)
    assert metrics.tar_at_far(genuine, np.zeros(99), (1e-2,))["1e-2"] is None
    assert metrics.tar_at_far(genuine, np.zeros(100), (1e-2,))["1e-2"] is not None
    assert set(metrics.tar_at_far(genuine, np.zeros(10_000))) == {"1e-2", "1e-3", "1e-4"}


def test_tar_at_far_matches_brute_force_definition() -> None:
    rng = np.random.default_rng(7)
    genuine = np.round(rng.normal(0.6, 0.15, 3000), 3)  # rounded: plenty of ties
    impostor = np.round(rng.normal(0.0, 0.15, 20_000), 3)
    for far, got in zip((1e-2, 1e-3, 1e-4), metrics.tar_at_far(genuine, impostor).values(), strict=True):
        assert got is not None
        expected = brute_threshold(impostor, genuine, far)
        assert got["threshold"] == expected
        assert got["tar"] == np.mean(genuine >= expected)


# ----------------------------------------------------------------------------------------------- all pairs


@pytest.mark.parametrize("block", [37, 300, 1024, 1])
def test_all_pairs_equals_brute_force_exactly(block: int) -> None:
    emb, labels = clustered_integer_embeddings()
    genuine, impostor = brute_all_pairs(emb, labels)
    fmrs = (1e-2, 1e-3, 1e-4, 1e-5)
    result = metrics.all_pairs(emb, labels, fmrs=fmrs, block=block)
    assert (result["n_genuine"], result["n_impostor"]) == (genuine.size, impostor.size)
    assert result["n_images"] == 300 and result["n_failed"] == 0 and result["n_identities"] == 108
    np.testing.assert_array_equal(np.sort(result["genuine"]), np.sort(genuine))
    assert set(result["fnmr_at_fmr"]) == {"1e-2", "1e-3", "1e-4", "1e-5"}
    assert result["fnmr_at_fmr"]["1e-5"] is None  # 44,5xx impostor pairs < 100,000
    for fmr in fmrs[:3]:
        expected = brute_threshold(impostor, genuine, fmr)
        got = result["fnmr_at_fmr"][metrics.rate_key(fmr)]
        assert got == {"threshold": expected, "fnmr": float(np.mean(genuine < expected))}
    # Kept impostors are exactly the top of the brute-force list.
    top = result["impostor_top"]
    np.testing.assert_array_equal(top, np.sort(impostor)[::-1][: top.size])
    assert top.size == math.ceil(1e-2 * impostor.size) + 1
    # Histograms: fixed 0.001 bins over [-1, 1], counts add up and match a direct binning.
    assert result["genuine_hist"].total == genuine.size and result["impostor_hist"].total == impostor.size
    direct = np.bincount(np.clip(np.floor((impostor + 1) * 1000), 0, 1999).astype(int), minlength=2000)
    np.testing.assert_array_equal(result["impostor_hist"].counts, direct)


def test_all_pairs_float_embeddings_match_float64_brute_force() -> None:
    emb, labels = clustered_unit_embeddings(n_ids=60, per_id=4, singletons=60, dim=128)
    genuine, impostor = brute_all_pairs(emb, labels)
    result = metrics.all_pairs(emb, labels, fmrs=(1e-3, 1e-4), block=64)
    for fmr in (1e-3, 1e-4):
        got = result["fnmr_at_fmr"][metrics.rate_key(fmr)]
        expected = brute_threshold(impostor, genuine, fmr)
        assert got["threshold"] == pytest.approx(expected, abs=1e-6)
        assert got["fnmr"] == np.mean(genuine < expected)


def test_all_pairs_leaves_failed_images_out() -> None:
    emb, labels = clustered_integer_embeddings(seed=4)
    failed = {0, 5, 17, 299}
    with_none = [None if k in failed else emb[k] for k in range(len(emb))]
    keep = np.array([k not in failed for k in range(len(emb))])
    result = metrics.all_pairs(with_none, labels, block=50, fmrs=(1e-3,))
    reference = metrics.all_pairs(emb[keep], labels[keep], block=50, fmrs=(1e-3,))
    assert result["n_failed"] == 4 and result["n_images"] == 296
    assert result["fnmr_at_fmr"] == reference["fnmr_at_fmr"]
    assert (result["n_genuine"], result["n_impostor"]) == (reference["n_genuine"], reference["n_impostor"])
    assert metrics.rank1(with_none, labels) == metrics.rank1(emb[keep], labels[keep])


def test_all_pairs_degenerate_inputs() -> None:
    nothing = metrics.all_pairs([None, None], ["a", "b"])
    assert nothing["n_failed"] == 2 and nothing["n_impostor"] == 0
    assert all(v is None for v in nothing["fnmr_at_fmr"].values())
    one_identity = metrics.all_pairs(np.eye(3, dtype=np.float32), ["a", "a", "a"])
    assert one_identity["n_genuine"] == 3 and one_identity["n_impostor"] == 0
    with pytest.raises(ValueError, match="labels"):
        metrics.all_pairs(np.eye(3, dtype=np.float32), ["a", "b"])


# ------------------------------------------------------------------------------------------ identification


def brute_identification(emb: np.ndarray, labels: np.ndarray, fpir: float) -> tuple[float, float, float]:
    """(closed-set rank-1, open-set rank-1, DIR) the slow obvious way."""
    sim = emb.astype(np.float64) @ emb.astype(np.float64).T
    first: dict[str, int] = {}
    for k, lab in enumerate(labels):
        first.setdefault(lab, k)
    gallery = sorted(first.values())
    probes = [k for k in range(len(labels)) if k not in set(gallery)]
    closed = np.mean([labels[gallery[int(np.argmax(sim[p, gallery]))]] == labels[p] for p in probes])
    counts = {lab: int((labels == lab).sum()) for lab in first}
    open_gallery = [g for g in gallery if counts[labels[g]] >= 2]
    mated = [p for p in probes]  # every non-first image belongs to an identity with >= 2 images
    nonmated = [g for g in gallery if counts[labels[g]] == 1]
    best = [open_gallery[int(np.argmax(sim[p, open_gallery]))] for p in mated]
    correct = np.array([labels[b] == labels[p] for b, p in zip(best, mated, strict=True)])
    mated_score = np.array([sim[p, b] for b, p in zip(best, mated, strict=True)])
    nonmated_score = np.array([sim[q, open_gallery].max() for q in nonmated])
    threshold = brute_threshold(nonmated_score, mated_score, fpir)
    return float(closed), float(correct.mean()), float(np.mean(correct & (mated_score >= threshold)))


@pytest.mark.parametrize("block", [7, 1024])
def test_rank1_and_dir_match_brute_force(block: int) -> None:
    emb, labels = clustered_unit_embeddings(n_ids=50, per_id=3, singletons=120, dim=32, noise=0.8)
    closed, open_rank1, dir_ = brute_identification(emb, labels, 1e-2)
    assert metrics.rank1(emb, labels, block=block) == pytest.approx(closed, abs=1e-12)
    result = metrics.dir_at_fpir(emb, labels, 1e-2, block=block)
    assert (result["n_gallery"], result["n_mated"], result["n_nonmated"]) == (50, 100, 120)
    assert result["rank1"] == pytest.approx(open_rank1, abs=1e-12)
    assert result["dir"] == pytest.approx(dir_, abs=1e-12)
    assert 0.3 < result["dir"] < result["rank1"] < 1.0  # the data is hard enough for the test to mean something
    assert closed < result["rank1"]  # singletons in the closed-set gallery act as distractors


def test_dir_counts_only_right_identities_above_threshold_by_hand() -> None:
    e1, e2, e3 = np.eye(3)

    def unit(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v)

    # Gallery a1 = e1 (A), b1 = e2 (B). a2 matches A; a3 (an A) looks like B: a wrong top-1 with a high score.
    mated = [e1, e2, unit(e1 + 0.1 * e3), unit(e2 + 0.05 * e3), e2]
    singles = [unit(e3 + 0.001 * k * e1) for k in range(100)]  # top scores 0.000 .. 0.099 against a1
    emb = np.stack(mated + singles).astype(np.float32)
    labels = ["A", "B", "A", "A", "B"] + [f"s{k}" for k in range(100)]
    result = metrics.dir_at_fpir(emb, labels, 1e-2)
    # FPIR 1e-2 of 100 non-mated probes allows one at or above t: t is the top non-mated score (s99's).
    assert result["threshold"] == pytest.approx(float(emb[-1] @ e1))
    assert result["dir"] == pytest.approx(2 / 3) and result["rank1"] == pytest.approx(2 / 3)
    assert (result["n_gallery"], result["n_mated"], result["n_nonmated"]) == (2, 3, 100)


def test_dir_is_none_with_too_few_nonmated_probes() -> None:
    emb, labels = clustered_unit_embeddings(n_ids=20, per_id=3, singletons=99)
    result = metrics.dir_at_fpir(emb, labels, 1e-2)
    assert result["dir"] is None and result["threshold"] is None and result["rank1"] is not None
    assert metrics.rank1(np.eye(2, dtype=np.float32), ["a", "b"]) is None  # no probes at all


# ---------------------------------------------------------------------------------------------------- plot


def test_plot_writes_a_readable_png(tmp_path: Path) -> None:
    emb, labels = clustered_unit_embeddings(n_ids=40, per_id=4, singletons=40, dim=64)
    result = metrics.all_pairs(emb, labels, fmrs=(1e-2, 1e-3))
    marks = {f"FMR {k}": v["threshold"] for k, v in result["fnmr_at_fmr"].items() if v}
    out = tmp_path / "sub" / "all_pairs.png"
    plot(out, result["genuine_hist"], result["impostor_hist"], metrics.all_pairs_roc(result), marks, log_y=True)
    img = cv2.imread(str(out))
    assert img is not None and img.shape == (500, 1200, 3)
    b, g, r = (img[..., c].astype(int) for c in range(3))
    assert ((g > 120) & (r < 90) & (b < 90)).sum() > 200  # genuine histogram outline (green)
    assert ((r > 180) & (g < 90) & (b < 90)).sum() > 200  # impostor histogram outline (red)
    assert ((b > 120) & (r < 60)).sum() > 200  # ROC curve (blue)

    genuine, impostor = brute_all_pairs(emb, labels)
    fmr, tpr, _ = metrics.roc(genuine, impostor)
    raw = tmp_path / "raw.png"
    plot(raw, genuine, impostor, (fmr, tpr), {"best": 0.3})  # raw scores are binned by plot itself
    assert cv2.imread(str(raw)).shape == (500, 1200, 3)


def test_plot_unwritable_path_is_an_input_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="cannot write plot"):
        plot(blocker / "x.png", [0.5], [0.1], ([0, 1], [0, 1]))
