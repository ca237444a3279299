"""Verification and identification metrics for face embeddings: pure numpy (the plot is in ``kiosk.lab.plot``).

Conventions used throughout:

- Scores are similarities (cosine for L2-normalised embeddings): higher means more alike, and a comparison is
  declared "same" when ``score >= threshold``. Genuine = same identity, impostor = different identities.
- Rates are fractions in 0..1 and are keyed in results by :func:`rate_key` (``1e-3`` -> ``"1e-3"``).
- A false-match-rate operating point is only reported when there are at least ``ceil(1/rate)`` impostor
  comparisons; with fewer, a single impostor moves the estimate by more than the rate itself, so it is
  ``None``.
- Operating-point threshold (:func:`tar_at_far`, :func:`all_pairs`, :func:`dir_at_fpir`): with ``n`` negatives
  and ``k = floor(rate * n)`` of them allowed at or above the threshold, the threshold is the smallest
  *observed* score (genuine or impostor) ``t`` such that ``#{negatives >= t} <= k``. Any smaller observed
  score would let more than ``k`` negatives through, and any larger one could only lose genuine matches, so
  this is the threshold with the highest true-accept rate that meets the rate. When no observed score
  qualifies (the highest scores are tied negatives) the threshold is the next float above the highest negative
  score, accepting nothing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
ArrayLike = npt.ArrayLike
Embeddings = npt.NDArray[np.floating[Any]] | Sequence[npt.NDArray[np.floating[Any]] | None]

FAILED_SCORE = -1.0  # score given to a pair with a failed image: the lowest cosine, i.e. "not the same"
DEFAULT_FARS: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
DEFAULT_FMRS: tuple[float, ...] = (1e-3, 1e-4, 1e-5, 1e-6)
HIST_BINS = 2000  # fixed bins over [-1, 1] for the all-pairs histograms: 0.001 wide


def rate_key(rate: float) -> str:
    """``1e-3`` -> ``"1e-3"``, ``5e-4`` -> ``"5e-4"``: the key used for a rate in result dicts and JSON."""
    mantissa, exponent = f"{rate:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def min_negatives(rate: float) -> int:
    """The fewest negatives needed to report an operating point at ``rate``: ``ceil(1/rate)``."""
    return math.ceil(round(1.0 / rate, 6))


def _check_rate(rate: float) -> None:
    if not 0.0 < rate < 1.0:
        raise ValueError(f"rate must be within (0, 1), got {rate}")


def _scores(values: ArrayLike, what: str) -> F64:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} scores contain NaN or infinity")
    return arr


def _both(genuine: ArrayLike, impostor: ArrayLike) -> tuple[F64, F64]:
    g, i = _scores(genuine, "genuine"), _scores(impostor, "impostor")
    if g.size == 0 or i.size == 0:
        raise ValueError(f"need genuine and impostor scores, got {g.size} genuine and {i.size} impostor")
    return g, i


def roc(genuine: ArrayLike, impostor: ArrayLike) -> tuple[F64, F64, F64]:
    """ROC of similarity scores: ``(fmr, tpr, thresholds)``, one point per distinct score, FMR increasing.

    Point ``j`` is the decision ``score >= thresholds[j]``; ``thresholds[0]`` is ``+inf`` (nothing accepted,
    the (0, 0) corner) and the last threshold is the lowest score (everything accepted, the (1, 1) corner).
    """
    g, i = _both(genuine, impostor)
    scores = np.concatenate([g, i])
    is_genuine = np.concatenate([np.ones(g.size, np.int64), np.zeros(i.size, np.int64)])
    order = np.argsort(-scores, kind="stable")
    s, lab = scores[order], is_genuine[order]
    true_pos = np.cumsum(lab)
    false_pos = np.arange(1, s.size + 1) - true_pos
    # Last index of each run of equal scores: one ROC point per distinct threshold.
    last = np.concatenate([np.flatnonzero(np.diff(s)), [s.size - 1]])
    fmr = np.concatenate([[0.0], false_pos[last] / i.size])
    tpr = np.concatenate([[0.0], true_pos[last] / g.size])
    thresholds = np.concatenate([[np.inf], s[last]])
    return fmr, tpr, thresholds


def roc_auc(genuine: ArrayLike, impostor: ArrayLike) -> float:
    """Exact area under the ROC: P(genuine > impostor) + P(genuine == impostor) / 2 (Mann-Whitney U).

    Counted with integer arithmetic over a sorted impostor array, so ties and large inputs are exact.
    """
    g, i = _both(genuine, impostor)
    i_sorted = np.sort(i)
    below = np.searchsorted(i_sorted, g, side="left")
    below_or_equal = np.searchsorted(i_sorted, g, side="right")
    twice_u = 2 * int(below.sum(dtype=np.int64)) + int((below_or_equal - below).sum(dtype=np.int64))
    return twice_u / (2 * g.size * i.size)


def best_threshold(genuine: ArrayLike, impostor: ArrayLike) -> tuple[float, float]:
    """The threshold that maximises pair accuracy, and that accuracy: ``(threshold, accuracy)``.

    Candidates sit midway between adjacent distinct scores (so they generalise better than a threshold equal
    to an observed score), plus one 1.0 below the lowest score (accept all) and one 1.0 above the highest
    (reject all). Ties between candidates go to the lowest threshold, as in the common LFW evaluation scripts.
    """
    g, i = _both(genuine, impostor)
    unique, inverse = np.unique(np.concatenate([g, i]), return_inverse=True)
    g_count = np.bincount(inverse[: g.size], minlength=unique.size)
    i_count = np.bincount(inverse[g.size :], minlength=unique.size)
    # Candidate k accepts unique[k:] as "same": k = 0 accepts all, k = unique.size accepts none.
    genuine_accepted = np.concatenate([np.cumsum(g_count[::-1])[::-1], [0]])
    impostor_rejected = np.concatenate([[0], np.cumsum(i_count)])
    correct = genuine_accepted + impostor_rejected
    k = int(np.argmax(correct))
    if k == 0:
        threshold = float(unique[0]) - 1.0
    elif k == unique.size:
        threshold = float(unique[-1]) + 1.0
    else:
        lo, hi = float(unique[k - 1]), float(unique[k])
        threshold = lo + (hi - lo) / 2.0
        if not lo < threshold <= hi:  # scores a few ulp apart: the midpoint rounded onto ``lo``
            threshold = hi
    return threshold, int(correct[k]) / (g.size + i.size)


def kfold_accuracy(scores: ArrayLike, same: ArrayLike, folds: ArrayLike) -> tuple[float, float, F64]:
    """Leave-one-fold-out accuracy (LFW View-2 protocol): ``(mean, std, per_fold_thresholds)``.

    For each fold (in sorted fold-id order) the threshold is chosen by :func:`best_threshold` on all *other*
    folds and the accuracy is measured on this fold. ``std`` is the population standard deviation over folds
    (ddof=0), as in the usual LFW scripts. Needs at least two folds, and every fold's complement must hold
    both classes.
    """
    s = _scores(scores, "pair")
    y = np.asarray(same, dtype=bool).ravel()
    f = np.asarray(folds).ravel()
    if not s.size == y.size == f.size:
        raise ValueError(f"scores, same and folds differ in length: {s.size}, {y.size}, {f.size}")
    fold_ids = np.unique(f)
    if fold_ids.size < 2:
        raise ValueError(f"k-fold accuracy needs at least 2 folds, got {fold_ids.size}")
    accuracies, thresholds = [], []
    for fold in fold_ids:
        test = f == fold
        train = ~test
        try:
            threshold, _ = best_threshold(s[train & y], s[train & ~y])
        except ValueError as err:
            raise ValueError(f"cannot choose a threshold for fold {fold!s}: {err}") from err
        accuracies.append(float(np.mean((s[test] >= threshold) == y[test])))
        thresholds.append(threshold)
    acc = np.asarray(accuracies)
    return float(acc.mean()), float(acc.std(ddof=0)), np.asarray(thresholds, dtype=np.float64)


def _rate_threshold(negatives_desc: F64, n_negatives: int, positives: F64, rate: float) -> float:
    """Operating-point threshold (definition in the module docstring).

    ``negatives_desc`` holds the highest negative scores in descending order: at least the top
    ``floor(rate * n_negatives) + 1`` of them (all of them is fine), which is all the definition depends on.
    """
    allowed = math.floor(rate * n_negatives * (1.0 + 1e-12))  # the epsilon guards 0.3 * 10 = 2.9999...
    if allowed >= negatives_desc.size:
        raise ValueError(f"need the top {allowed + 1} negative scores, got {negatives_desc.size}")
    # The (allowed+1)-th highest negative must fall below the threshold.
    excluded = float(negatives_desc[allowed])
    above = [positives[positives > excluded], negatives_desc[:allowed][negatives_desc[:allowed] > excluded]]
    candidates = np.concatenate(above)
    if candidates.size == 0:
        return float(np.nextafter(excluded, np.inf))
    return float(candidates.min())


def tar_at_far(
    genuine: ArrayLike, impostor: ArrayLike, fars: Sequence[float] = DEFAULT_FARS
) -> dict[str, dict[str, float] | None]:
    """True-accept rate at each false-accept rate: ``{"1e-3": {"tar": .., "threshold": ..} | None, ...}``.

    Threshold as defined in the module docstring; TAR = fraction of genuine scores ``>= threshold``. ``None``
    when there are fewer than ``ceil(1/far)`` impostor scores.
    """
    g, i = _both(genuine, impostor)
    impostor_desc = np.sort(i)[::-1]
    out: dict[str, dict[str, float] | None] = {}
    for far in fars:
        _check_rate(far)
        if i.size < min_negatives(far):
            out[rate_key(far)] = None
            continue
        threshold = _rate_threshold(impostor_desc, i.size, g, far)
        out[rate_key(far)] = {"tar": float(np.mean(g >= threshold)), "threshold": threshold}
    return out


@dataclass(frozen=True)
class Histogram:
    """Counts in equal-width bins over ``[lo, hi]``; scores outside the range are counted in the end bins."""

    counts: I64
    lo: float = -1.0
    hi: float = 1.0

    @property
    def edges(self) -> F64:
        return np.linspace(self.lo, self.hi, self.counts.size + 1)

    @property
    def total(self) -> int:
        return int(self.counts.sum())


def _bin_counts(values: npt.NDArray[np.floating[Any]], bins: int, lo: float = -1.0, hi: float = 1.0) -> I64:
    """Histogram counts with clipping into the end bins. Element-wise IEEE arithmetic only, so the same value
    always lands in the same bin: all-pairs mode relies on that to subtract the genuine counts exactly."""
    if values.size == 0:
        return np.zeros(bins, np.int64)
    position = np.floor((values - lo) * (bins / (hi - lo)))
    index = np.clip(position, 0, bins - 1).astype(np.int64)
    return np.bincount(index.ravel(), minlength=bins).astype(np.int64)


def histogram(scores: ArrayLike, bins: int = HIST_BINS, lo: float = -1.0, hi: float = 1.0) -> Histogram:
    """Scores -> :class:`Histogram`: ``bins`` equal bins over ``[lo, hi]``, out-of-range scores clipped."""
    return Histogram(_bin_counts(_scores(scores, "histogram"), bins, lo, hi), lo, hi)


def _valid_embeddings(embeddings: Embeddings, labels: ArrayLike) -> tuple[F32, I64, int]:
    """Usable embeddings as float32 rows, their integer identity codes, and how many were None (failed)."""
    label_arr = np.asarray(labels).ravel()
    if isinstance(embeddings, np.ndarray):
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must be (N, D), got shape {embeddings.shape}")
        valid = np.ones(embeddings.shape[0], dtype=bool)
        matrix = np.ascontiguousarray(embeddings, dtype=np.float32)
    else:
        valid = np.asarray([e is not None for e in embeddings], dtype=bool)
        rows = [np.asarray(e, dtype=np.float32).ravel() for e in embeddings if e is not None]
        dims = {r.size for r in rows}
        if len(dims) > 1:
            raise ValueError(f"embeddings differ in dimension: {sorted(dims)}")
        matrix = np.ascontiguousarray(np.stack(rows) if rows else np.zeros((0, 1), np.float32))
    if label_arr.size != valid.size:
        raise ValueError(f"{valid.size} embeddings but {label_arr.size} labels")
    _, codes = np.unique(label_arr[valid], return_inverse=True)
    return matrix, codes.astype(np.int64).ravel(), int((~valid).sum())


def _merge_top(top: F32, candidates: F32, keep: int) -> F32:
    """The ``keep`` largest values of ``top`` and ``candidates`` together (unordered)."""
    if top.size >= keep:
        candidates = candidates[candidates > top.min()]  # cheap pass: most of a block cannot enter
    if candidates.size > keep:
        candidates = np.partition(candidates, candidates.size - keep)[candidates.size - keep :]
    merged = np.concatenate([top, candidates])
    if merged.size > keep:
        merged = np.partition(merged, merged.size - keep)[merged.size - keep :]
    return merged


def all_pairs(
    embeddings: Embeddings,
    labels: ArrayLike,
    fmrs: Sequence[float] = DEFAULT_FMRS,
    block: int = 1024,
    bins: int = HIST_BINS,
) -> dict[str, Any]:
    """All-pairs verification: every image against every other (i < j), for FNMR at very low FMR.

    ``embeddings`` is an (N, D) array of L2-normalised rows, or a sequence whose ``None`` entries are images
    that failed: those are left out of every comparison and counted in ``n_failed``. Scores are float32 dot
    products computed ``block`` rows at a time over the upper triangle only, never materialising N x N.
    Genuine scores are few and kept; of the ~N²/2 impostor scores only the top
    ``ceil(max(fmrs) * n_impostor) + 1`` are kept (all the thresholds depend on) plus a ``bins``-bin histogram
    over [-1, 1] for plots.

    Returns ``n_images`` (usable), ``n_failed``, ``n_identities`` (among usable images), ``n_genuine``,
    ``n_impostor``, ``fnmr_at_fmr`` (``{"1e-3": {"fnmr": .., "threshold": ..} | None, ...}``: None when
    ``n_impostor < ceil(1/fmr)`` or there are no genuine pairs), ``genuine`` (float64 scores),
    ``impostor_top`` (descending float64), ``genuine_hist`` and ``impostor_hist`` (:class:`Histogram`).
    """
    for fmr in fmrs:
        _check_rate(fmr)
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    emb, codes, n_failed = _valid_embeddings(embeddings, labels)
    n = emb.shape[0]
    per_identity = np.bincount(codes) if n else np.zeros(0, np.int64)
    n_genuine = int((per_identity * (per_identity - 1) // 2).sum())
    n_impostor = n * (n - 1) // 2 - n_genuine
    keep = min(n_impostor, math.ceil(max(fmrs, default=0.0) * n_impostor) + 1)

    upper_full = np.triu(np.ones((block, block), dtype=bool), 1)
    all_counts = np.zeros(bins, np.int64)
    genuine_parts: list[F32] = []
    top = np.empty(0, np.float32)
    for a in range(0, n, block):
        rows, row_codes = emb[a : a + block], codes[a : a + block]
        for b in range(a, n, block):
            sim = rows @ emb[b : b + block].T
            same = row_codes[:, None] == codes[None, b : b + block]
            if a == b:
                upper = upper_full[: sim.shape[0], : sim.shape[1]]
                same &= upper
                all_counts += _bin_counts(sim[upper], bins)
                sim[~upper] = -np.inf
            else:
                all_counts += _bin_counts(sim, bins)
            genuine_parts.append(sim[same])
            if keep:
                sim[same] = -np.inf
                top = _merge_top(top, sim.ravel(), keep)

    genuine32 = np.concatenate(genuine_parts) if genuine_parts else np.empty(0, np.float32)
    genuine_counts = _bin_counts(genuine32, bins)
    genuine = genuine32.astype(np.float64)
    impostor_desc = np.sort(top[np.isfinite(top)].astype(np.float64))[::-1]

    fnmr_at_fmr: dict[str, dict[str, float] | None] = {}
    for fmr in fmrs:
        if n_impostor < min_negatives(fmr) or genuine.size == 0:
            fnmr_at_fmr[rate_key(fmr)] = None
            continue
        threshold = _rate_threshold(impostor_desc, n_impostor, genuine, fmr)
        fnmr_at_fmr[rate_key(fmr)] = {"fnmr": float(np.mean(genuine < threshold)), "threshold": threshold}
    return {
        "n_images": n,
        "n_failed": n_failed,
        "n_identities": int(per_identity.size),
        "n_genuine": n_genuine,
        "n_impostor": n_impostor,
        "fnmr_at_fmr": fnmr_at_fmr,
        "genuine": genuine,
        "impostor_top": impostor_desc,
        "genuine_hist": Histogram(genuine_counts),
        "impostor_hist": Histogram(all_counts - genuine_counts),
    }


def all_pairs_roc(result: Mapping[str, Any]) -> tuple[F64, F64]:
    """``(fmr, tpr)`` for plotting an :func:`all_pairs` result: exact where the kept top impostor scores
    reach, from the histograms below that."""
    genuine: F64 = result["genuine"]
    top: F64 = result["impostor_top"]
    n_impostor: int = result["n_impostor"]
    gen_hist: Histogram = result["genuine_hist"]
    imp_hist: Histogram = result["impostor_hist"]
    if genuine.size == 0 or n_impostor == 0:
        return np.zeros(1), np.zeros(1)
    fmr_exact, tpr_exact, thr = roc(genuine, top)
    exact = thr > top.min()  # below the lowest kept score the impostor counts are incomplete
    fmr_exact, tpr_exact = fmr_exact[exact] * top.size / n_impostor, tpr_exact[exact]
    fmr_hist = np.cumsum(imp_hist.counts[::-1])[::-1] / n_impostor
    tpr_hist = np.cumsum(gen_hist.counts[::-1])[::-1] / genuine.size
    beyond = fmr_hist > fmr_exact.max()
    order = np.argsort(fmr_hist[beyond], kind="stable")
    return (
        np.concatenate([fmr_exact, fmr_hist[beyond][order]]),
        np.concatenate([tpr_exact, tpr_hist[beyond][order]]),
    )


def _top1(probes: F32, gallery: F32, block: int) -> tuple[I64, F64]:
    """Index and score of the best gallery match of each probe (ties: lowest gallery index), block-wise."""
    index = np.empty(probes.shape[0], np.int64)
    score = np.empty(probes.shape[0], np.float64)
    for a in range(0, probes.shape[0], block):
        sim = probes[a : a + block] @ gallery.T
        best = np.argmax(sim, axis=1)
        index[a : a + block] = best
        score[a : a + block] = sim[np.arange(sim.shape[0]), best]
    return index, score


def _first_of_each(codes: I64) -> I64:
    """Index of the first image (input order) of each identity, in identity-code order."""
    _, first = np.unique(codes, return_index=True)
    return first.astype(np.int64)


def rank1(embeddings: Embeddings, labels: ArrayLike, block: int = 1024) -> float | None:
    """Closed-set rank-1 identification rate.

    Gallery = the first usable image (input order) of *every* identity, so single-image identities stay in as
    distractors; probes = every other usable image. A probe is a hit when its highest-cosine gallery entry has
    its identity (ties go to the lowest gallery index). Failed (None) images are in neither. None when no
    probes.
    """
    emb, codes, _ = _valid_embeddings(embeddings, labels)
    gallery = _first_of_each(codes)
    probe_mask = np.ones(codes.size, dtype=bool)
    probe_mask[gallery] = False
    if not probe_mask.any():
        return None
    best, _ = _top1(emb[probe_mask], emb[gallery], block)
    return float(np.mean(codes[gallery][best] == codes[probe_mask]))


def dir_at_fpir(embeddings: Embeddings, labels: ArrayLike, fpir: float = 1e-2, block: int = 1024) -> dict[str, Any]:
    """Open-set identification: DIR (detection and identification rate) at a given FPIR.

    Failed (None) images are left out entirely. Gallery = the first usable image (input order) of each
    identity that has at least two usable images; identities with a single usable image are *removed from the
    gallery* and their images become the non-mated probes (someone not enrolled walking up); mated probes =
    the other images of gallery identities. The threshold ``t`` follows the module's operating-point
    definition with the non-mated probes' top scores as negatives (at most a fraction ``fpir`` of them reach
    ``t``) and the mated probes' top scores as the other observed scores. DIR = fraction of mated probes whose
    top-1 is the right identity *and* scores ``>= t``.

    Returns ``dir`` and ``threshold`` (None when there are fewer than ``ceil(1/fpir)`` non-mated probes or no
    mated probes), ``rank1`` over the mated probes against this reduced gallery, ``n_gallery``, ``n_mated``,
    ``n_nonmated``.
    """
    _check_rate(fpir)
    emb, codes, _ = _valid_embeddings(embeddings, labels)
    per_identity = np.bincount(codes) if codes.size else np.zeros(0, np.int64)
    first = _first_of_each(codes)
    enrolled = first[per_identity[codes[first]] >= 2]
    mated = (per_identity[codes] >= 2) if codes.size else np.zeros(0, dtype=bool)
    mated[enrolled] = False
    nonmated = per_identity[codes] == 1 if codes.size else np.zeros(0, dtype=bool)
    out: dict[str, Any] = {
        "dir": None,
        "threshold": None,
        "rank1": None,
        "n_gallery": int(enrolled.size),
        "n_mated": int(mated.sum()),
        "n_nonmated": int(nonmated.sum()),
    }
    if not mated.any():
        return out
    gallery = emb[enrolled]
    best, mated_score = _top1(emb[mated], gallery, block)
    correct = codes[enrolled][best] == codes[mated]
    out["rank1"] = float(correct.mean())
    if out["n_nonmated"] < min_negatives(fpir):
        return out
    _, nonmated_score = _top1(emb[nonmated], gallery, block)
    threshold = _rate_threshold(np.sort(nonmated_score)[::-1], nonmated_score.size, mated_score, fpir)
    out["threshold"] = threshold
    out["dir"] = float(np.mean(correct & (mated_score >= threshold)))
    return out
