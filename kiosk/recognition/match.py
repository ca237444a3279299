"""Matching: cosine similarity against the gallery, 1:N, open-set threshold and a margin to the runner-up person.

Scores are per person (best template). A probe is accepted only when the best person clears the threshold AND
leads the next *different* person by the margin; otherwise it is "unknown" with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kiosk.types import FloatArray


@dataclass(frozen=True)
class MatchResult:
    accepted: bool
    person_id: int | None  # set only when accepted
    name: str | None  # set only when accepted
    score: float | None  # best person's score, accepted or not
    candidate: str | None  # best person's name, accepted or not (for logs and `identify`)
    runner_up: str | None
    runner_up_score: float | None
    threshold: float
    margin: float
    reason: str
    # The best person's id, accepted or not: during a liveness challenge the decider tells "still the same person at a
    # lower score" (eyes closed) from "someone else" with it. None only for an empty gallery.
    candidate_id: int | None = None


def cosine(a: FloatArray, b: FloatArray) -> float:
    """Cosine similarity of two vectors (normalises them; safe for unnormalised input)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return -1.0
    return float(np.dot(a, b) / (na * nb))


class Matcher:
    """Holds the gallery matrix for one recogniser; ``match`` is a single matrix-vector product."""

    def __init__(
        self,
        embeddings: FloatArray,
        person_ids: np.ndarray,
        names: list[str],
        *,
        threshold: float,
        margin: float,
    ) -> None:
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.person_ids = np.asarray(person_ids, dtype=np.int64)
        self.names = list(names)
        self.threshold = float(threshold)
        self.margin = float(margin)
        # Map every template row to a dense person index (people in ascending id order). Per-person maxima are then
        # one np.maximum.reduceat over rows grouped by person: ``_order`` groups them (None when the rows already are,
        # as the gallery returns them), ``_starts`` is where each person's rows begin. With one template per person
        # there is nothing to reduce: the scores are scattered (or, rows in id order, taken) as they are.
        self._people, row_person = np.unique(self.person_ids, return_inverse=True)
        row_person = row_person.reshape(-1)
        self._row_person = row_person
        self._order: np.ndarray | None = None
        self._starts: np.ndarray | None = None
        self._identity = False
        if len(self._people) == len(row_person):
            self._identity = bool(np.all(row_person[1:] > row_person[:-1]))
        elif len(row_person):
            if not np.all(row_person[1:] >= row_person[:-1]):
                self._order = np.argsort(row_person, kind="stable")
                row_person = row_person[self._order]
            self._starts = np.flatnonzero(np.r_[True, row_person[1:] != row_person[:-1]])
        self._person_name = {int(pid): name for pid, name in zip(self.person_ids, self.names, strict=True)}

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def _best_per_person(self, probe: FloatArray) -> np.ndarray:
        """Best cosine of each person (dense index, ascending person id): one sgemv and one reduction."""
        sims = self.embeddings @ np.asarray(probe, dtype=np.float32).reshape(-1)
        if self._identity:
            return sims
        if self._starts is None:  # one template per person, rows not in id order
            best = np.empty(len(self._people), dtype=np.float32)
            best[self._row_person] = sims
            return best
        grouped = sims if self._order is None else sims[self._order]
        return np.maximum.reduceat(grouped, self._starts)

    def person_scores(self, probe: FloatArray) -> tuple[np.ndarray, np.ndarray]:
        """(person ids, best cosine per person), sorted by score descending."""
        if len(self) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        best = self._best_per_person(probe)
        order = np.argsort(-best, kind="stable")
        return self._people[order], best[order]

    def _top_two(self, probe: FloatArray) -> tuple[tuple[int, float], tuple[int, float] | None]:
        """The best person and the runner-up (id, score) without sorting every person; ties go to the lower id."""
        best = self._best_per_person(probe)
        first = int(np.argmax(best))
        top = (int(self._people[first]), float(best[first]))
        if len(best) < 2:
            return top, None
        score = best[first]
        best[first] = -np.inf  # ``best`` is a fresh array: sgemv or reduction output, never the gallery
        second = int(np.argmax(best))
        best[first] = score
        return top, (int(self._people[second]), float(best[second]))

    def match(self, probe: FloatArray) -> MatchResult:
        if len(self) == 0:
            return MatchResult(
                False, None, None, None, None, None, None, self.threshold, self.margin, "gallery is empty"
            )
        (pid, score), runner_up = self._top_two(probe)
        name = self._person_name[pid]
        ru_name = self._person_name[runner_up[0]] if runner_up is not None else None
        ru_score = runner_up[1] if runner_up is not None else None

        def result(accepted: bool, reason: str) -> MatchResult:
            """The outcome: person id and name only when accepted; the candidate (best person) always."""
            return MatchResult(
                accepted,
                pid if accepted else None,
                name if accepted else None,
                score,
                name,
                ru_name,
                ru_score,
                self.threshold,
                self.margin,
                reason,
                candidate_id=pid,
            )

        if score < self.threshold:
            return result(False, f"best score {score:.3f} below threshold {self.threshold:.3f}")
        if ru_score is not None and score - ru_score < self.margin:
            return result(
                False, f"ambiguous: {score - ru_score:.3f} ahead of {ru_name}, margin {self.margin:.3f} needed"
            )
        return result(True, "match")
