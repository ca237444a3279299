"""Matching: cosine similarity against the gallery, 1:N, open-set threshold and a margin to the runner-up person.

Scores are per person (best template). A probe is accepted only when the best person clears the threshold AND
leads the next *different* person by the margin; otherwise it is "unknown" with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .types import FloatArray


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
        # Map every template row to a dense person index, so per-person maxima are one np.maximum.at.
        self._people, self._row_person = np.unique(self.person_ids, return_inverse=True)
        self._person_name = {int(pid): name for pid, name in zip(self.person_ids, self.names, strict=True)}

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def person_scores(self, probe: FloatArray) -> tuple[np.ndarray, np.ndarray]:
        """(person ids, best cosine per person), sorted by score descending."""
        if len(self) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        sims = self.embeddings @ probe.astype(np.float32)
        best = np.full(len(self._people), -np.inf, dtype=np.float32)
        np.maximum.at(best, self._row_person, sims)
        order = np.argsort(-best)
        return self._people[order], best[order]

    def match(self, probe: FloatArray) -> MatchResult:
        ids, scores = self.person_scores(probe)
        if len(ids) == 0:
            return MatchResult(
                False, None, None, None, None, None, None, self.threshold, self.margin, "gallery is empty"
            )
        pid, score = int(ids[0]), float(scores[0])
        name = self._person_name[pid]
        ru_name = self._person_name[int(ids[1])] if len(ids) > 1 else None
        ru_score = float(scores[1]) if len(ids) > 1 else None
        if score < self.threshold:
            reason = f"best score {score:.3f} below threshold {self.threshold:.3f}"
            return MatchResult(False, None, None, score, name, ru_name, ru_score, self.threshold, self.margin, reason)
        if ru_score is not None and score - ru_score < self.margin:
            reason = f"ambiguous: {score - ru_score:.3f} ahead of {ru_name}, margin {self.margin:.3f} needed"
            return MatchResult(False, None, None, score, name, ru_name, ru_score, self.threshold, self.margin, reason)
        return MatchResult(True, pid, name, score, name, ru_name, ru_score, self.threshold, self.margin, "match")
