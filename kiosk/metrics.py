"""Verification and identification metrics for face embeddings: pure numpy, plus one OpenCV plot.

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
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from .errors import InputError

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


# --------------------------------------------------------------------------------------------------- plotting

_WHITE = (255, 255, 255)
_BLACK = (0, 0, 0)
_GREY = (225, 225, 225)
_GREEN = (40, 150, 40)
_RED = (40, 40, 210)
_MARK_COLOURS = ((160, 70, 0), (0, 110, 200), (150, 0, 150), (90, 90, 90), (0, 140, 140))
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text(
    img: npt.NDArray[np.uint8],
    text: str,
    org: tuple[int, int],
    scale: float = 0.45,
    *,
    colour: tuple[int, int, int] = _BLACK,
    anchor: str = "left",
) -> None:
    (w, _), _ = cv2.getTextSize(text, _FONT, scale, 1)
    x, y = org
    if anchor == "center":
        x -= w // 2
    elif anchor == "right":
        x -= w
    cv2.putText(img, text, (int(x), int(y)), _FONT, scale, colour, 1, cv2.LINE_AA)


def _nice_ticks(lo: float, hi: float, target: int = 6) -> F64:
    span = hi - lo if hi > lo else 1.0
    raw = span / target
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return np.arange(math.ceil(lo / step - 1e-9) * step, hi + step * 1e-6, step)


def _fmt_tick(value: float) -> str:
    return f"{value:.3g}" if abs(value) >= 1e-9 else "0"


def _as_histogram(data: Histogram | ArrayLike) -> Histogram:
    return data if isinstance(data, Histogram) else histogram(data)


def _display_bins(hist: Histogram, lo: float, hi: float, n_bins: int) -> tuple[F64, F64]:
    """Regroup a fine histogram into about ``n_bins`` bins over ``[lo, hi]``; returns (edges, density)."""
    edges = hist.edges
    first = int(np.searchsorted(edges, lo, side="right")) - 1
    last = int(np.searchsorted(edges, hi, side="left"))
    first, last = max(first, 0), min(max(last, first + 1), hist.counts.size)
    group = max(1, math.ceil((last - first) / n_bins))
    counts = hist.counts[first:last]
    pad = (-counts.size) % group
    grouped = np.concatenate([counts, np.zeros(pad, np.int64)]).reshape(-1, group).sum(axis=1)
    width = (edges[1] - edges[0]) * group
    new_edges = edges[first] + width * np.arange(grouped.size + 1)
    total = max(hist.total, 1)
    return new_edges, grouped / (total * width)


def plot(
    path: Path,
    genuine: Histogram | ArrayLike,
    impostor: Histogram | ArrayLike,
    roc_curve: tuple[ArrayLike, ArrayLike],
    marks: Mapping[str, float] | None = None,
    *,
    log_y: bool = False,
    title: str = "",
) -> None:
    """Write a 1200x500 PNG: score histograms (left) and ROC as TAR vs FAR on a log axis (right).

    ``genuine``/``impostor`` are raw scores or :class:`Histogram`; histograms are density-normalised (each has
    area 1), genuine in green, impostor in red. ``roc_curve`` is ``(fmr, tpr)``. ``marks`` maps a label to a
    threshold drawn as a vertical line on the histograms. Raises InputError when the file cannot be written.
    """
    width, height = 1200, 500
    img = np.full((height, width, 3), 255, np.uint8)
    if title:
        _text(img, title, (width // 2, 22), 0.55, anchor="center")
    gen_hist, imp_hist = _as_histogram(genuine), _as_histogram(impostor)
    _plot_histograms(img, (70, 50, 570, 440), gen_hist, imp_hist, marks or {}, log_y)
    fmr, tpr = (np.asarray(v, dtype=np.float64).ravel() for v in roc_curve)
    _plot_roc(img, (690, 50, 1170, 440), fmr, tpr)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        ok = cv2.imwrite(str(path), img)
    except (OSError, cv2.error) as err:
        raise InputError(f"cannot write plot {path}: {err}") from err
    if not ok:
        raise InputError(f"cannot write plot {path} (is the extension .png and the folder writable?)")
    log.info("wrote plot %s", path)


def _plot_histograms(
    img: npt.NDArray[np.uint8],
    box: tuple[int, int, int, int],
    gen: Histogram,
    imp: Histogram,
    marks: Mapping[str, float],
    log_y: bool,
) -> None:
    x0, y0, x1, y1 = box
    occupied = [float(v) for v in marks.values() if np.isfinite(v)]
    for h in (gen, imp):
        nonzero = np.flatnonzero(h.counts)
        if nonzero.size:
            occupied += [float(h.edges[nonzero[0]]), float(h.edges[nonzero[-1] + 1])]
    lo = max(-1.0, min(occupied, default=-1.0))
    hi = min(1.0, max(occupied, default=1.0))
    pad = max(0.02, (hi - lo) * 0.03)
    lo, hi = max(-1.0, lo - pad), min(1.0, hi + pad)
    if hi <= lo:
        lo, hi = -1.0, 1.0
    series = [(_display_bins(h, lo, hi, 90), colour) for h, colour in ((imp, _RED), (gen, _GREEN)) if h.total]
    peak = max((float(d.max()) for (_, d), _ in series), default=1.0) or 1.0
    floor = min((float(d[d > 0].min()) for (_, d), _ in series if (d > 0).any()), default=peak / 1e3)
    shown_marks = [(k, v) for k, v in sorted(marks.items(), key=lambda kv: kv[1]) if np.isfinite(v) and lo <= v <= hi]
    legend_lines = [f"genuine (n={gen.total:,})", f"impostor (n={imp.total:,})"]
    legend_lines += [f"{label}: {value:.3f}" for label, value in shown_marks]
    legend_w = max(cv2.getTextSize(t, _FONT, 0.45, 1)[0][0] for t in legend_lines) + 40
    legend_h = 8 + 18 * 2 + 17 * len(shown_marks)
    # Headroom so the tallest bar stays below the legend box instead of hiding behind it.
    free = max(0.3, 1.0 - (legend_h + 12) / (y1 - y0))
    if log_y:
        y_lo = math.log10(floor) - 0.1
        y_hi = y_lo + (math.log10(peak) - y_lo) / free
    else:
        y_lo, y_hi = 0.0, peak / free

    def px(v: float) -> int:
        return round(x0 + (v - lo) / (hi - lo) * (x1 - x0))

    def py(d: float) -> int:
        v = (math.log10(d) if d > 0 else y_lo) if log_y else d
        v = min(max(v, y_lo), y_hi)
        return round(y1 - (v - y_lo) / (y_hi - y_lo) * (y1 - y0))

    for t in _nice_ticks(lo, hi, 8):
        cv2.line(img, (px(t), y0), (px(t), y1), _GREY, 1)
        cv2.line(img, (px(t), y1), (px(t), y1 + 5), _BLACK, 1)
        _text(img, _fmt_tick(float(t)), (px(t), y1 + 20), anchor="center")
    if log_y:
        y_ticks = [10.0**e for e in range(math.ceil(y_lo), math.floor(y_hi) + 1)]
    else:
        y_ticks = [float(t) for t in _nice_ticks(0.0, y_hi, 5)]
    for t in y_ticks:
        cv2.line(img, (x0, py(t)), (x1, py(t)), _GREY, 1)
        cv2.line(img, (x0 - 5, py(t)), (x0, py(t)), _BLACK, 1)
        label = f"1e{round(math.log10(t))}" if log_y else _fmt_tick(t)
        _text(img, label, (x0 - 8, py(t) + 5), anchor="right")

    overlay = img.copy()
    for (edges, density), colour in series:
        for k, d in enumerate(density):
            if d > 0:
                cv2.rectangle(overlay, (px(edges[k]), py(float(d))), (px(edges[k + 1]), y1), colour, -1)
    cv2.addWeighted(overlay, 0.35, img, 0.65, 0, dst=img)
    for (edges, density), colour in series:
        points = [(px(lo), y1)]
        for k, d in enumerate(density):
            points += [(px(edges[k]), py(float(d))), (px(edges[k + 1]), py(float(d)))]
        points.append((px(float(edges[-1])), y1))
        cv2.polylines(img, [np.asarray(points, np.int32)], False, colour, 2, cv2.LINE_AA)

    for n, (_, value) in enumerate(shown_marks):
        colour = _MARK_COLOURS[n % len(_MARK_COLOURS)]
        for y in range(y0, y1, 10):  # dashed
            cv2.line(img, (px(value), y), (px(value), min(y + 5, y1)), colour, 1)
    cv2.rectangle(img, (x0 + 3, y0 + 3), (x0 + 3 + legend_w, y0 + 3 + legend_h), _WHITE, -1)
    cv2.rectangle(img, (x0 + 3, y0 + 3), (x0 + 3 + legend_w, y0 + 3 + legend_h), _GREY, 1)
    for n, (label, value) in enumerate(shown_marks):
        colour = _MARK_COLOURS[n % len(_MARK_COLOURS)]
        cv2.line(img, (x0 + 8, y0 + 54 + 17 * n), (x0 + 26, y0 + 54 + 17 * n), colour, 2)
        _text(img, f"{label}: {value:.3f}", (x0 + 32, y0 + 58 + 17 * n), colour=colour)

    cv2.rectangle(img, (x0, y0), (x1, y1), _BLACK, 1)
    for n, (name, h, colour) in enumerate((("genuine", gen, _GREEN), ("impostor", imp, _RED))):
        y = y0 + 16 + 18 * n
        cv2.rectangle(img, (x0 + 8, y - 10), (x0 + 26, y), colour, -1)
        _text(img, f"{name} (n={h.total:,})", (x0 + 32, y), colour=colour)
    _text(img, "similarity score", ((x0 + x1) // 2, y1 + 42), 0.5, anchor="center")
    _text(img, "density (log)" if log_y else "density", (x0 - 60, y0 - 12), 0.5)
    _text(img, "score distributions", ((x0 + x1) // 2, y0 - 12), 0.5, anchor="center")


def _plot_roc(img: npt.NDArray[np.uint8], box: tuple[int, int, int, int], fmr: F64, tpr: F64) -> None:
    x0, y0, x1, y1 = box
    decades = (-6, 0)
    shown = fmr >= 10.0 ** decades[0]
    tar_floor = float(tpr[shown].min()) if shown.any() else 0.0
    # Zoom the TAR axis onto where the curve is (good models live above 0.99), with a little margin below.
    y_lo = max(c for c in (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999) if 1 - c >= 1.25 * (1 - tar_floor))

    def px(f: float) -> int:
        v = math.log10(max(f, 10.0 ** decades[0]))
        return round(x0 + (v - decades[0]) / (decades[1] - decades[0]) * (x1 - x0))

    def py(t: float) -> int:
        return round(y1 - (max(t, y_lo) - y_lo) / (1.0 - y_lo) * (y1 - y0))

    for e in range(decades[0], decades[1] + 1):
        cv2.line(img, (px(10.0**e), y0), (px(10.0**e), y1), _GREY, 1)
        cv2.line(img, (px(10.0**e), y1), (px(10.0**e), y1 + 6), _BLACK, 1)
        _text(img, f"1e{e}" if e else "1", (px(10.0**e), y1 + 20), anchor="center")
        if e < decades[1]:
            for m in range(2, 10):
                cv2.line(img, (px(m * 10.0**e), y1), (px(m * 10.0**e), y1 + 3), _BLACK, 1)
    for t in _nice_ticks(y_lo, 1.0, 5):
        cv2.line(img, (x0, py(float(t))), (x1, py(float(t))), _GREY, 1)
        cv2.line(img, (x0 - 5, py(float(t))), (x0, py(float(t))), _BLACK, 1)
        _text(img, _fmt_tick(float(t)), (x0 - 8, py(float(t)) + 5), anchor="right")
    measured = fmr[fmr > 0]
    if measured.size and measured.min() > 10.0 ** decades[0]:
        # Below one impostor in n the FAR cannot be measured: grey that part out instead of implying a curve.
        edge = px(float(measured.min()))
        overlay = img.copy()
        cv2.rectangle(overlay, (x0, y0), (edge, y1), (200, 200, 200), -1)
        cv2.addWeighted(overlay, 0.35, img, 0.65, 0, dst=img)
        if edge - x0 > 90:
            _text(img, "too few impostors", ((x0 + edge) // 2, y1 - 24), 0.4, colour=(90, 90, 90), anchor="center")
            _text(img, "to measure", ((x0 + edge) // 2, y1 - 10), 0.4, colour=(90, 90, 90), anchor="center")
    if fmr.size:
        order = np.lexsort((tpr, fmr))
        points = [(px(float(f)), py(float(t))) for f, t in zip(fmr[order], tpr[order], strict=True)]
        # Step shape: TAR only changes where FAR does, so draw horizontal-then-vertical segments.
        steps = [points[0]]
        for p in points[1:]:
            steps += [(p[0], steps[-1][1]), p]
        cv2.polylines(img, [np.asarray(steps, np.int32)], False, (150, 60, 0), 2, cv2.LINE_AA)
    cv2.rectangle(img, (x0, y0), (x1, y1), _BLACK, 1)
    _text(img, "FAR (false match rate, log scale)", ((x0 + x1) // 2, y1 + 42), 0.5, anchor="center")
    _text(img, "TAR", (x0 - 55, y0 - 12), 0.5)
    _text(img, "ROC", ((x0 + x1) // 2, y0 - 12), 0.5, anchor="center")
