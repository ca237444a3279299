"""Choosing a passive-liveness rule (models, crop scale, frame fusion, threshold) without fooling ourselves.

The only labelled attack data is one small split of 15 people, so anything chosen on it is chosen by
**identity-disjoint cross-validation**: the people are split into folds; for each fold the rule is chosen on the
other folds' presentations and measured on the held-out fold's; the held-out decisions are pooled. A person is never
in both the choosing and the measuring set, so the pooled figure is not the choosing set's own.

The choice on a tuning set: each candidate gets the **highest threshold whose BPCER on the tuning set is at most**
``bpcer_target`` (5 %: a bona fide person turned away once in 20 presentations); among the candidates, the one
with the lowest worst-attack-type APCER at its threshold wins (ties: lowest mean APCER, then the earlier candidate,
so the door's current rule is kept unless another is strictly better).

Scores are arrays: one presentation per element, NaN for a failure to acquire (no face), which is left out of both
rates as ``kiosk eval-liveness`` does. Pure numpy: the scoring is the caller's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from kiosk.lab.liveness_eval import ATTACK, BONA_FIDE, wilson

F64 = npt.NDArray[np.float64]
BPCER_TARGET = 0.05


@dataclass(frozen=True)
class Truth:
    """What each presentation is: label (bona_fide/attack), attack type ("" for bona fide) and person."""

    label: npt.NDArray[np.str_]
    kind: npt.NDArray[np.str_]
    person: npt.NDArray[np.str_]

    @classmethod
    def of(cls, label: Sequence[str], kind: Sequence[str], person: Sequence[str]) -> Truth:
        if not len(label) == len(kind) == len(person):
            raise ValueError("label, kind and person must have one entry per presentation")
        return cls(np.asarray(label, dtype=str), np.asarray(kind, dtype=str), np.asarray(person, dtype=str))

    @property
    def kinds(self) -> list[str]:
        return sorted(set(self.kind[self.label == ATTACK].tolist()))

    def __len__(self) -> int:
        return int(self.label.size)


def threshold_at_bpcer(bona: npt.ArrayLike, target: float = BPCER_TARGET) -> float:
    """The highest threshold t (pass: score >= t) at which at most ``target`` of ``bona`` fall below t.

    With n bona fide scores sorted, k = floor(target·n) may be rejected, so t is the (k+1)-th smallest score.
    """
    b = np.sort(np.asarray(bona, dtype=np.float64))
    b = b[np.isfinite(b)]
    if not b.size:
        raise ValueError("no bona fide score to set a threshold on")
    k = math.floor(target * b.size + 1e-9)
    return float(b[min(k, b.size - 1)])


def error_rates(
    scores: F64, truth: Truth, threshold: float, mask: npt.NDArray[np.bool_] | None = None
) -> dict[str, Any]:
    """APCER per attack type (and counts), the worst and mean of them, BPCER, at ``threshold`` over ``mask``."""
    m = np.isfinite(scores) if mask is None else (mask & np.isfinite(scores))
    apcer: dict[str, float | None] = {}
    counts: dict[str, list[int]] = {}
    for kind in truth.kinds:
        sel = m & (truth.label == ATTACK) & (truth.kind == kind)
        n = int(sel.sum())
        k = int((scores[sel] >= threshold).sum())
        apcer[kind] = k / n if n else None
        counts[kind] = [k, n]
    sel = m & (truth.label == BONA_FIDE)
    n_b = int(sel.sum())
    k_b = int((scores[sel] < threshold).sum())
    known = [v for v in apcer.values() if v is not None]
    return {
        "threshold": threshold,
        "apcer": apcer,
        "apcer_max": max(known) if known else None,
        "apcer_mean": float(np.mean(known)) if known else None,
        "bpcer": k_b / n_b if n_b else None,
        "errors": {**counts, BONA_FIDE: [k_b, n_b]},
    }


def with_wilson(rates: dict[str, Any]) -> dict[str, Any]:
    """``rates`` plus a Wilson 95 % interval for each [errors, n] pair."""
    ci = {}
    for key, (k, n) in rates["errors"].items():
        w = wilson(k, n)
        ci[key] = None if w is None else [round(w[0], 4), round(w[1], 4)]
    return {**rates, "ci95_wilson": ci}


def person_folds(persons: Sequence[str], k: int) -> dict[str, int]:
    """Person -> fold (0..k-1): the sorted distinct persons dealt round-robin, so folds differ in size by one."""
    people = sorted(set(persons))
    if not 2 <= k <= len(people):
        raise ValueError(f"need 2..{len(people)} folds for {len(people)} persons, got {k}")
    return {p: i % k for i, p in enumerate(people)}


def choose(
    candidates: Mapping[str, F64], truth: Truth, mask: npt.NDArray[np.bool_], bpcer_target: float = BPCER_TARGET
) -> tuple[str, float, dict[str, Any]]:
    """The winning candidate on the presentations in ``mask``, its threshold, and every candidate's tuning rates."""
    table: dict[str, Any] = {}
    best: tuple[float, float, int] | None = None
    winner = ""
    for i, (name, scores) in enumerate(candidates.items()):
        bona = scores[mask & (truth.label == BONA_FIDE)]
        thr = threshold_at_bpcer(bona, bpcer_target)
        r = error_rates(scores, truth, thr, mask)
        table[name] = r
        key = (r["apcer_max"], r["apcer_mean"], i)
        if best is None or key < best:
            best, winner = key, name
    return winner, table[winner]["threshold"], table


def pooled(decisions: Sequence[tuple[F64, float, npt.NDArray[np.bool_]]], truth: Truth) -> dict[str, Any]:
    """Rates over the union of held-out sets, each judged with its own scores and threshold."""
    passed = np.zeros(len(truth), dtype=bool)
    scored = np.zeros(len(truth), dtype=bool)
    for scores, thr, mask in decisions:
        ok = mask & np.isfinite(scores)
        passed[ok] = scores[ok] >= thr
        scored |= ok
    # Rates of the pooled pass/fail decisions: a score of 1 for a pass, 0 for a fail, threshold 0.5.
    as_scores = np.where(scored, passed.astype(np.float64), np.nan)
    r = error_rates(as_scores, truth, 0.5)
    r.pop("threshold")
    return {**with_wilson(r), "ci95_person_bootstrap": cluster_bootstrap(as_scores, truth, 0.5)}


def cross_validate(
    candidates: Mapping[str, F64],
    truth: Truth,
    folds: int = 5,
    bpcer_target: float = BPCER_TARGET,
    baseline: tuple[str, float] | None = None,
) -> dict[str, Any]:
    """Identity-disjoint CV of ``choose``: per fold the choice made on the other folds and its held-out rates;
    pooled held-out rates; with ``baseline`` (candidate, fixed threshold) its held-out rates untouched, and the
    baseline's candidate with only its threshold chosen by CV (to tell the threshold's gain from the rule's)."""
    fold_of = person_folds(truth.person.tolist(), folds)
    fold = np.array([fold_of[p] for p in truth.person])
    per_fold = []
    chosen_dec, base_dec, base_cv_dec = [], [], []
    for f in range(folds):
        held, tune = fold == f, fold != f
        name, thr, table = choose(candidates, truth, tune, bpcer_target)
        entry: dict[str, Any] = {
            "fold": f,
            "held_out_persons": sorted(set(truth.person[held].tolist())),
            "chosen": {"candidate": name, "threshold": thr},
            # every candidate on the tuning folds: [its threshold, worst-type APCER, BPCER] there
            "tuning": {k: [v["threshold"], v["apcer_max"], v["bpcer"]] for k, v in table.items()},
            "tuning_of_chosen": _brief(table[name]),
            "held_out": error_rates(candidates[name], truth, thr, held),
        }
        chosen_dec.append((candidates[name], thr, held))
        if baseline is not None:
            b_name, b_thr = baseline
            entry["baseline_held_out"] = error_rates(candidates[b_name], truth, b_thr, held)
            b_cv_thr = table[b_name]["threshold"]
            entry["baseline_rule_cv_threshold"] = {
                "threshold": b_cv_thr,
                "held_out": error_rates(candidates[b_name], truth, b_cv_thr, held),
            }
            base_dec.append((candidates[b_name], b_thr, held))
            base_cv_dec.append((candidates[b_name], b_cv_thr, held))
        per_fold.append(entry)
    out: dict[str, Any] = {
        "folds": folds,
        "bpcer_target": bpcer_target,
        "per_fold": per_fold,
        "pooled_held_out": {"chosen": pooled(chosen_dec, truth)},
    }
    if baseline is not None:
        out["baseline"] = {"candidate": baseline[0], "threshold": baseline[1]}
        out["pooled_held_out"]["baseline"] = pooled(base_dec, truth)
        out["pooled_held_out"]["baseline_rule_cv_threshold"] = pooled(base_cv_dec, truth)
    return out


def _brief(r: dict[str, Any]) -> dict[str, Any]:
    return {k: r[k] for k in ("threshold", "apcer", "apcer_max", "bpcer")}


def cluster_bootstrap(
    scores: F64, truth: Truth, threshold: float, n: int = 2000, seed: int = 0
) -> dict[str, list[float] | None]:
    """95 % percentile intervals of APCER per type and BPCER, resampling **persons** with replacement (a person's
    presentations are not independent; Wilson treats them as if they were)."""
    rng = np.random.default_rng(seed)
    people = sorted(set(truth.person.tolist()))
    index = {p: np.flatnonzero(truth.person == p) for p in people}
    draws: dict[str, list[float]] = {k: [] for k in [*truth.kinds, BONA_FIDE]}
    for _ in range(n):
        rows = np.concatenate([index[people[i]] for i in rng.integers(0, len(people), len(people))])
        sub = Truth(truth.label[rows], truth.kind[rows], truth.person[rows])
        r = error_rates(scores[rows], sub, threshold)
        for k in truth.kinds:
            if r["apcer"].get(k) is not None:
                draws[k].append(r["apcer"][k])
        if r["bpcer"] is not None:
            draws[BONA_FIDE].append(r["bpcer"])
    return {
        k: ([round(float(np.percentile(v, 2.5)), 4), round(float(np.percentile(v, 97.5)), 4)] if v else None)
        for k, v in draws.items()
    }
