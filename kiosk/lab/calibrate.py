"""A calibrated P(same person) for a pair of embeddings: logistic regression fitted on one labelled set of pairs and
applied to another (``kiosk eval --calibrate``). Pure numpy: a Newton (IRLS) fit with a small L2 penalty.

Feature sets (:data:`FEATURES`), both built from the two L2-normalised embeddings ``a``, ``b`` of a pair:

- ``cosine`` (the default): the cosine alone, i.e. Platt scaling ``p = σ(w·cos + c)``. With ``w > 0`` (what any
  working recogniser gives) it is monotone in the cosine, so it never changes which pair ranks above which, nor any
  decision made at a cosine threshold: it only says what a cosine *means* as a probability.
- ``embedding``: the element-wise product ``a ⊙ b``, whose plain sum *is* the cosine, so the regression learns one
  weight per dimension (the "classifier over embeddings"). It can rank pairs differently from the cosine, and with
  128 weights it can overfit the fit set: the fit set's own figures are kept next to the applied ones to show it.

The penalty is ``(L2 / 2)·‖w‖²`` on the weights of the *standardised* features (each feature minus its fit-set mean,
over its fit-set standard deviation; the intercept is not penalised), added to the *summed* log-loss (sample weights
rescaled to sum to the number of pairs): a Gaussian prior of standard deviation ``1/√L2 = 10`` on each standardised
weight, whose pull fades as the fit set grows. It keeps the fit finite when the fit set is perfectly separable, where
the unpenalised optimum is at infinity. Coefficients are reported on the raw features (the standardisation is folded
back in).

ECE uses 10 equal-count bins of the predicted probability (pairs sorted by p, split into 10 near-equal groups): a
good recogniser puts most pairs near 0 or 1, where equal-width bins would leave the middle bins empty or with a
handful of pairs each.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from kiosk.errors import InputError
from kiosk.lab import metrics

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
Bools = npt.NDArray[np.bool_]

L2 = 1e-2
MAX_ITER = 100
TOL = 1e-9
MIN_PER_CLASS = 10  # genuine and impostor pairs each: fewer cannot say anything about a probability
ECE_BINS = 10
EPS = 1e-15  # log-loss clips p to [EPS, 1 - EPS], so one confident mistake costs ~34.5 nats, not infinity


@dataclass(frozen=True)
class FeatureSet:
    name: str
    description: str
    build: Callable[[F64, F64], F64]  # (n, d) embeddings a, b -> (n, k) features


def _cosine(a: F64, b: F64) -> F64:
    cos: F64 = np.clip(np.sum(a * b, axis=1, keepdims=True), -1.0, 1.0)
    return cos


def _product(a: F64, b: F64) -> F64:
    return a * b


FEATURES: dict[str, FeatureSet] = {
    "cosine": FeatureSet("cosine", "Platt scaling of the cosine: monotone, never re-ranks pairs", _cosine),
    "embedding": FeatureSet("embedding", "one weight per dimension of a⊙b (whose sum is the cosine)", _product),
}
DEFAULT_FEATURES = "cosine"


def pair_features(features: str, a: npt.ArrayLike, b: npt.ArrayLike) -> F64:
    """The ``features`` feature matrix (n, k) of n pairs of embeddings ``a[i]``, ``b[i]`` (each (n, d))."""
    if features not in FEATURES:
        raise InputError(f"unknown calibration features {features!r}, expected one of {', '.join(FEATURES)}")
    a2, b2 = np.atleast_2d(np.asarray(a, dtype=np.float64)), np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a2.shape != b2.shape:
        raise InputError(f"embeddings of a pair differ in shape: {a2.shape} and {b2.shape}")
    return FEATURES[features].build(a2, b2)


def sigmoid(z: npt.ArrayLike) -> F64:
    """σ(z) without overflow warnings: ``exp(-log(1 + exp(-z)))``."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(z, dtype=np.float64)))


def balanced_weights(y: Bools) -> F64:
    """Sample weights that give both classes the same total weight (``n / (2·n_class)`` each)."""
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    return np.where(y, y.size / (2.0 * max(n_pos, 1)), y.size / (2.0 * max(n_neg, 1)))


@dataclass(frozen=True)
class LogisticFit:
    coefficients: F64  # on the raw features
    intercept: float
    iterations: int


def fit_logistic(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    sample_weight: npt.ArrayLike | None = None,
    l2: float = L2,
    max_iter: int = MAX_ITER,
    tol: float = TOL,
) -> LogisticFit:
    """Minimise ``Σ wᵢ·logloss(yᵢ, σ(x·β + β₀)) + (l2/2)·‖β_std‖²`` (``Σ wᵢ = n``) by Newton's method with step halving.

    Converged when the largest Newton step (standardised scale) is below ``tol``. InputError for a set with one
    class, fewer than :data:`MIN_PER_CLASS` of either, non-finite features, or no convergence in ``max_iter``.
    """
    xs = np.asarray(x, dtype=np.float64)
    xs = xs.reshape(-1, 1) if xs.ndim == 1 else xs
    ys = np.asarray(y, dtype=bool).ravel()
    if xs.ndim != 2 or xs.shape[0] != ys.size:
        raise InputError(f"features and labels disagree: {xs.shape} features for {ys.size} labels")
    n_pos, n_neg = int(ys.sum()), int((~ys).sum())
    if n_pos == 0 or n_neg == 0:
        raise InputError(f"the fit set has only {'genuine' if n_neg == 0 else 'impostor'} pairs: needs both")
    if min(n_pos, n_neg) < MIN_PER_CLASS:
        raise InputError(
            f"too few pairs to fit: {n_pos} genuine and {n_neg} impostor, needs at least {MIN_PER_CLASS} of each"
        )
    if not np.all(np.isfinite(xs)):
        raise InputError("the fit set's features contain NaN or infinity")
    if l2 <= 0:
        raise InputError(f"l2 must be > 0 (it keeps a separable fit finite), got {l2}")
    w = np.ones(ys.size) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64).ravel()
    if w.shape != ys.shape or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise InputError("sample weights must be finite, non-negative, one per pair and not all zero")
    w = w * (ys.size / w.sum())

    mean = xs.mean(axis=0)
    std = xs.std(axis=0)
    std[std == 0] = 1.0
    z = np.hstack([np.ones((ys.size, 1)), (xs - mean) / std])  # column 0: the intercept
    t = ys.astype(np.float64)
    penalty = np.full(z.shape[1], l2)
    penalty[0] = 0.0

    def objective(theta: F64) -> float:
        logits = z @ theta
        return float(w @ (np.logaddexp(0.0, logits) - t * logits) + 0.5 * penalty @ theta**2)

    theta = np.zeros(z.shape[1])
    theta[0] = math.log(float(w @ t) / float(w @ (1.0 - t)))  # start at the weighted base rate
    current = objective(theta)
    for iteration in range(1, max_iter + 1):
        p = sigmoid(z @ theta)
        grad = z.T @ (w * (p - t)) + penalty * theta
        hess = (z * (w * p * (1.0 - p))[:, None]).T @ z + np.diag(penalty)
        hess[0, 0] += 1e-12  # separable data can leave the intercept's curvature at 0.0 in float64
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-10:
            candidate = theta - scale * step
            value = objective(candidate)
            if value <= current + 1e-12 * max(1.0, abs(current)):
                break
            scale /= 2.0
        theta, current = candidate, value
        if float(np.max(np.abs(scale * step))) < tol:
            coef = theta[1:] / std
            return LogisticFit(coef, float(theta[0] - coef @ mean), iteration)
    raise InputError(f"the logistic fit did not converge in {max_iter} iterations")


def calibration_metrics(p: npt.ArrayLike, y: npt.ArrayLike, bins: int = ECE_BINS) -> dict[str, Any]:
    """Log-loss (nats), Brier score, ECE over ``bins`` equal-count bins, accuracy at p ≥ 0.5, ROC AUC of p, and the
    reliability table ``[{p_min, p_max, mean_predicted, observed_rate, count}]`` of those bins."""
    ps = np.asarray(p, dtype=np.float64).ravel()
    ys = np.asarray(y, dtype=bool).ravel()
    if ps.size == 0 or ps.size != ys.size or not np.all((ps >= 0) & (ps <= 1)):
        raise InputError("calibration metrics need one probability in 0..1 per labelled pair")
    t = ys.astype(np.float64)
    clipped = np.clip(ps, EPS, 1.0 - EPS)
    order = np.argsort(ps, kind="stable")
    table, ece = [], 0.0
    for chunk in np.array_split(order, min(bins, ps.size)):
        mean_p, rate = float(ps[chunk].mean()), float(t[chunk].mean())
        ece += chunk.size / ps.size * abs(mean_p - rate)
        table.append(
            {
                "p_min": float(ps[chunk].min()),
                "p_max": float(ps[chunk].max()),
                "mean_predicted": mean_p,
                "observed_rate": rate,
                "count": int(chunk.size),
            }
        )
    auc = metrics.roc_auc(ps[ys], ps[~ys]) if ys.any() and not ys.all() else None
    return {
        "n_pairs": int(ps.size),
        "log_loss": float(-np.mean(t * np.log(clipped) + (1.0 - t) * np.log(1.0 - clipped))),
        "brier": float(np.mean((ps - t) ** 2)),
        "ece": float(ece),
        "ece_bins": f"{len(table)} equal-count",
        "accuracy_at_0.5": float(np.mean((ps >= 0.5) == ys)),
        "roc_auc": auc,
        "reliability": table,
    }


MAX_FIT_VALUES = 1 << 22  # feature values per class in a labels fit: 4M cosines, or 32k pairs of 128-D products
LABEL_PAIRS_SEED = 19


def label_pairs(
    codes: npt.NDArray[np.int64], cap: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_], bool]:
    """Index pairs ``(i, j)``, ``i < j``, of a labelled set and whether each is genuine: every pair of each class,
    or a seeded random ``cap`` of a class that has more (then the last value is True)."""
    n = codes.size
    rng = np.random.default_rng(LABEL_PAIRS_SEED)
    order = np.argsort(codes, kind="stable")
    starts = np.flatnonzero(np.r_[True, codes[order][1:] != codes[order][:-1]])
    sizes = np.diff(np.r_[starts, n])
    gi, gj = [], []
    for start, size in zip(starts, sizes, strict=True):
        if size > 1:
            a, b = np.triu_indices(int(size), 1)
            members = np.sort(order[start : start + size])
            gi.append(members[a])
            gj.append(members[b])
    g_i = np.concatenate(gi) if gi else np.empty(0, np.int64)
    g_j = np.concatenate(gj) if gj else np.empty(0, np.int64)
    sampled = False
    if g_i.size > cap:
        keep = rng.choice(g_i.size, cap, replace=False)
        g_i, g_j, sampled = g_i[keep], g_j[keep], True
    n_impostor = n * (n - 1) // 2 - int((sizes * (sizes - 1) // 2).sum())
    if n_impostor <= cap:
        i, j = np.triu_indices(n, 1)
        diff = codes[i] != codes[j]
        i_i, i_j = i[diff], j[diff]
    else:  # draw pairs until ``cap`` distinct impostor pairs are found
        sampled = True
        found = np.empty(0, np.int64)
        while found.size < cap:
            x, y = rng.integers(0, n, size=(2, 2 * cap))
            lo, hi = np.minimum(x, y), np.maximum(x, y)
            keep = (lo != hi) & (codes[lo] != codes[hi])
            found = np.unique(np.r_[found, lo[keep] * n + hi[keep]])
        found = rng.choice(found, cap, replace=False)
        i_i, i_j = found // n, found % n
    same = np.r_[np.ones(g_i.size, bool), np.zeros(i_i.size, bool)]
    return np.r_[g_i, i_i].astype(np.int64), np.r_[g_j, i_j].astype(np.int64), same, sampled


@dataclass(frozen=True)
class Calibration:
    """A fitted P(same) over ``features``: ``σ(coefficients · features(a, b) + intercept)``."""

    features: str
    coefficients: tuple[float, ...]
    intercept: float
    n_genuine: int
    n_impostor: int
    fit_file: str
    fit_sha256: str
    fit_kind: str = "pairs"  # "pairs" or "labels" (every genuine and impostor pair of a labelled set)
    balanced: bool = False
    n_skipped: int = 0  # fit-set pairs left out: an image without a usable face
    sampled: bool = False  # a labelled set with more pairs than the cap: a seeded random subset was fitted
    l2: float = L2
    iterations: int = 0
    fit_metrics: Mapping[str, Any] | None = None  # log_loss, brier, ece, accuracy on the fit set itself

    def predict(self, a: npt.ArrayLike, b: npt.ArrayLike) -> F64:
        """P(same) for n pairs of L2-normalised embeddings (each (n, d))."""
        x = pair_features(self.features, a, b)
        if x.shape[1] != len(self.coefficients):
            raise InputError(
                f"calibration fitted on {len(self.coefficients)} {self.features} features, got {x.shape[1]}: "
                "fit it with the same recogniser"
            )
        return sigmoid(x @ np.asarray(self.coefficients) + self.intercept)

    def p_same_at(self, cosines: Mapping[str, float]) -> dict[str, dict[str, float]]:
        """``{name: {"cosine", "p_same"}}`` at named cosines (cosine features only: otherwise P(same) is not a
        function of the cosine and the answer is empty)."""
        if self.features != "cosine":
            return {}
        return {
            name: {"cosine": float(c), "p_same": float(sigmoid(self.coefficients[0] * c + self.intercept))}
            for name, c in cosines.items()
        }

    def to_json(self) -> dict[str, Any]:
        coef = np.asarray(self.coefficients)
        return {
            "features": self.features,
            "coefficients": [float(c) for c in coef],
            "intercept": float(self.intercept),
            "n_coefficients": int(coef.size),
            "coefficient_norm": float(np.linalg.norm(coef)),
            "fitted_on": {
                "file": self.fit_file,
                "sha256": self.fit_sha256,
                "kind": self.fit_kind,
                "n_genuine": self.n_genuine,
                "n_impostor": self.n_impostor,
                "n_skipped": self.n_skipped,
                "sampled": self.sampled,
                "weights": "balanced" if self.balanced else "none",
            },
            "fit": {"l2": self.l2, "iterations": self.iterations, "metrics": dict(self.fit_metrics or {})},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Calibration:
        """Inverse of :meth:`to_json`; InputError naming what is missing or wrong."""
        try:
            fitted, fit = data["fitted_on"], data["fit"]
            cal = cls(
                features=str(data["features"]),
                coefficients=tuple(float(c) for c in data["coefficients"]),
                intercept=float(data["intercept"]),
                n_genuine=int(fitted["n_genuine"]),
                n_impostor=int(fitted["n_impostor"]),
                fit_file=str(fitted["file"]),
                fit_sha256=str(fitted["sha256"]),
                fit_kind=str(fitted["kind"]),
                balanced=fitted["weights"] == "balanced",
                n_skipped=int(fitted["n_skipped"]),
                sampled=bool(fitted["sampled"]),
                l2=float(fit["l2"]),
                iterations=int(fit["iterations"]),
                fit_metrics=dict(fit["metrics"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"not a calibration: {type(err).__name__} {err}") from err
        if cal.features not in FEATURES or not cal.coefficients:
            raise InputError(f"not a calibration: features {cal.features!r} with {len(cal.coefficients)} weights")
        if not all(math.isfinite(v) for v in (*cal.coefficients, cal.intercept)):
            raise InputError("not a calibration: non-finite coefficients")
        return cal


def fit_calibration(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    same: npt.ArrayLike,
    *,
    features: str = DEFAULT_FEATURES,
    balanced: bool = False,
    l2: float = L2,
    fit_file: str = "",
    fit_sha256: str = "",
    fit_kind: str = "pairs",
    n_skipped: int = 0,
    sampled: bool = False,
) -> Calibration:
    """Fit a :class:`Calibration` on pairs of embeddings ``a[i]``, ``b[i]`` labelled ``same[i]`` (``balanced``:
    class-balanced weights); the ``fit_*``, ``n_skipped`` and ``sampled`` arguments only describe the fit set."""
    y = np.asarray(same, dtype=bool).ravel()
    x = pair_features(features, a, b)
    fit = fit_logistic(x, y, sample_weight=balanced_weights(y) if balanced else None, l2=l2)
    p = sigmoid(x @ fit.coefficients + fit.intercept)
    on_fit = calibration_metrics(p, y)
    return Calibration(
        features=features,
        coefficients=tuple(float(c) for c in fit.coefficients),
        intercept=fit.intercept,
        n_genuine=int(y.sum()),
        n_impostor=int((~y).sum()),
        balanced=balanced,
        l2=l2,
        iterations=fit.iterations,
        fit_metrics={k: on_fit[k] for k in ("log_loss", "brier", "ece", "accuracy_at_0.5", "roc_auc")},
        fit_file=fit_file,
        fit_sha256=fit_sha256,
        fit_kind=fit_kind,
        n_skipped=n_skipped,
        sampled=sampled,
    )
