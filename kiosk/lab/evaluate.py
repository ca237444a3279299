"""The evaluation runner behind ``kiosk eval``: read a CSV, embed every image once, score, report a JSON dict.

Two protocols (``shared/data/faces/README.md``):

- **pairs** (:func:`evaluate_pairs`, ``path1,path2,same[,fold]``): accuracy (leave-one-fold-out when folds are
  given, as in LFW View-2), TAR at FAR, ROC AUC, and optionally the rates at a given threshold.
- **labels** (:func:`evaluate_labels`, ``path,identity``): all pairs of images, for FNMR at FMR down to 1e-6,
  plus closed-set rank-1 and open-set DIR at FPIR 1e-2.

The face pipeline is injected as an :data:`EmbedFn`, so this module knows nothing about detectors or models;
the ``fingerprint`` string names that pipeline for the embedding cache. Paths in a CSV are relative to
``root`` (default: the CSV's folder) and may not leave it (no absolute path, no ``..`` above it). An image that
cannot be embedded (no face, unreadable, missing file)
never stops a run: it is counted as failed and handled by each protocol's documented policy.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from kiosk.errors import FaceError, InputError
from kiosk.imageio import display
from kiosk.lab import metrics
from kiosk.lab.cache import EmbeddingCache
from kiosk.lab.calibrate import (
    FEATURES,
    MAX_FIT_VALUES,
    MIN_PER_CLASS,
    Calibration,
    calibration_metrics,
    fit_calibration,
    label_pairs,
    pair_features,
)
from kiosk.lab.plot import plot as plot_scores
from kiosk.models.manifest import sha256_file

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
EmbedFn = Callable[[Path], tuple[npt.NDArray[np.float32] | None, str | None]]
"""Image path -> ``(L2-normalised embedding, None)`` or ``(None, reason)`` when no usable face was found."""
Embedded = tuple[F32 | None, str | None]

FILE_NOT_FOUND = "file not found"
MAX_LISTED_FAILURES = 20
PAIR_FARS = (1e-2, 1e-3, 1e-4)
ALL_PAIRS_FMRS = (1e-3, 1e-4, 1e-5, 1e-6)
OPEN_SET_FPIR = 1e-2
# labels.csv conventions of the shared sample sets: not identities, so never part of genuine/impostor pairs.
SPECIAL_IDENTITIES = frozenset({"MULTI", "NO_FACE", "CARTOON", "UNLABELED"})
_TRUE, _FALSE = frozenset({"1", "true"}), frozenset({"0", "false"})


@dataclass(frozen=True)
class Pair:
    path1: str
    path2: str
    same: bool
    fold: str | None = None


@dataclass(frozen=True)
class LabeledImage:
    path: str
    identity: str


# ------------------------------------------------------------------------------------------------ CSV reading


def _short(text: str, limit: int = 80) -> str:
    """A value from a CSV for a one-line message: repr'd (no raw newlines) and cut to ``limit`` characters."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


def _plain(text: str, limit: int = 80) -> str:
    """A CSV path for a message: as written when it is short and printable, else like :func:`_short`."""
    return text if text.isprintable() and len(text) <= limit else _short(text, limit)


def outside_root(rel: str) -> bool:
    """True for a CSV path that is not a plain relative path under the root folder: absolute, or climbing out of
    it with ``..``, or holding a NUL character (checked on the text: the files need not exist)."""
    if not rel or "\0" in rel or os.path.isabs(rel):
        return True
    parts = os.path.normpath(rel).split(os.sep)
    return parts[0] == ".."


def check_path(csv_path: Path, line: int, rel: str) -> None:
    """InputError naming the line for a CSV path that would read a file outside the root folder."""
    if outside_root(rel):
        where = f"{display(csv_path)}:{line}"
        raise InputError(f"{where}: path {_plain(rel)} must be relative and stay inside the root folder")


def _read_csv(
    csv_path: Path, required: Sequence[str], optional: Sequence[str] = ()
) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV with a header naming exactly ``required`` plus any of ``optional`` columns (any order),
    as ``(line number, {column: stripped value})``. Blank lines are skipped; anything else malformed is an
    InputError naming the file and line."""
    expected = ",".join(required) + "".join(f"[,{c}]" for c in optional)
    name = display(csv_path)
    try:
        with Path(csv_path).open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise InputError(f"{name}: empty file, expected a header line {expected}")
            columns = [c.strip() for c in header]
            missing = [c for c in required if c not in columns]
            unknown = [c for c in columns if c not in required and c not in optional]
            if missing or unknown or len(set(columns)) != len(columns):
                raise InputError(f"{name}:1: bad header {_short(','.join(columns))}, expected columns {expected}")
            rows = []
            for record in reader:
                if not record or all(not v.strip() for v in record):
                    continue
                if len(record) != len(columns):
                    raise InputError(f"{name}:{reader.line_num}: expected {len(columns)} fields, got {len(record)}")
                rows.append((reader.line_num, dict(zip(columns, (v.strip() for v in record), strict=True))))
    except FileNotFoundError as err:
        raise InputError(f"{name}: no such file") from err
    except IsADirectoryError as err:
        raise InputError(f"{name}: is a directory, not a CSV file") from err
    except OSError as err:
        raise InputError(f"{name}: cannot read: {err.strerror or err}") from err
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{name}: cannot read: {' '.join(str(err).split())}") from err
    if not rows:
        raise InputError(f"{name}: no data rows")
    return rows


def read_pairs(csv_path: Path) -> list[Pair]:
    """Read a pairs CSV: columns ``path1,path2,same`` and optionally ``fold``; ``same`` is 1/0/true/false.

    Raises InputError naming the file and line for a missing file, bad header, empty path or bad ``same``.
    """
    pairs = []
    for line, row in _read_csv(csv_path, ("path1", "path2", "same"), ("fold",)):
        same = row["same"].lower()
        if same not in _TRUE | _FALSE:
            raise InputError(f"{display(csv_path)}:{line}: same must be 1, 0, true or false, got {_short(row['same'])}")
        if not row["path1"] or not row["path2"]:
            raise InputError(f"{display(csv_path)}:{line}: empty path")
        check_path(csv_path, line, row["path1"])
        check_path(csv_path, line, row["path2"])
        fold = row.get("fold")
        if fold is not None and not fold:
            raise InputError(f"{display(csv_path)}:{line}: empty fold")
        pairs.append(Pair(row["path1"], row["path2"], same in _TRUE, fold))
    return pairs


def read_labels(csv_path: Path) -> list[LabeledImage]:
    """Read a labels CSV (columns ``path,identity``). An empty field or a path listed twice is an InputError
    naming the file and line (a repeated image would make a perfect genuine pair with itself)."""
    images: list[LabeledImage] = []
    seen: dict[str, int] = {}
    for line, row in _read_csv(csv_path, ("path", "identity")):
        if not row["path"] or not row["identity"]:
            raise InputError(f"{display(csv_path)}:{line}: empty path or identity")
        check_path(csv_path, line, row["path"])
        if row["path"] in seen:
            where = f"{display(csv_path)}:{line}"
            raise InputError(f"{where}: {_plain(row['path'])} is already listed on line {seen[row['path']]}")
        seen[row["path"]] = line
        images.append(LabeledImage(row["path"], row["identity"]))
    return images


# ------------------------------------------------------------------------------------------------- embedding


class _Progress:
    """``\\r``-redrawn one-line progress on stderr: count, rate, ETA. Redraws at most 10 times a second."""

    def __init__(self, total: int, enabled: bool, label: str = "embedding") -> None:
        self.total, self.enabled, self.label = total, enabled, label
        self.done = 0
        self.start = self._last = time.monotonic()
        self.stream: TextIO = sys.stderr

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if not self.enabled or (now - self._last < 0.1 and self.done < self.total):
            return
        self._last = now
        rate = self.done / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else math.inf
        eta_text = "--" if not math.isfinite(eta) else f"{int(eta) // 60}m{int(eta) % 60:02d}s"
        self.stream.write(f"\r{self.label} {self.done}/{self.total}  {rate:.1f} img/s  ETA {eta_text}   ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.done:
            self.stream.write("\n")
            self.stream.flush()


def _run_embed(embed: EmbedFn, path: Path) -> tuple[Embedded, bool]:
    """Call ``embed``; returns ``((vector, reason), cacheable)``. Face and input errors raised by the pipeline
    count as failures (the image's fault); anything else (a missing model, a bug) propagates."""
    try:
        vector, reason = embed(path)
    except (FaceError, InputError) as err:
        return (None, str(err) or type(err).__name__), True
    if vector is None:
        return (None, reason or "no usable face"), True
    v = np.asarray(vector, dtype=np.float32).ravel()
    norm = float(np.linalg.norm(v)) if v.size else 0.0
    if not (np.all(np.isfinite(v)) and norm > 0.0):
        log.warning("embed returned an unusable vector for %s (size %d, norm %s)", path, v.size, norm)
        return (None, "invalid embedding"), False
    return ((v / norm).astype(np.float32), None), True  # re-normalised: cosine = dot product downstream


def embed_images(
    paths: Sequence[str],
    *,
    root: Path,
    embed: EmbedFn,
    fingerprint: str,
    cache: EmbeddingCache,
    progress: bool | None = None,
) -> dict[str, Embedded]:
    """Embed each distinct path once (and each distinct file content once): ``{path: (vector, reason)}``.

    The cache key is the sha256 of the file bytes plus ``fingerprint``. A missing file is a failure with
    reason ``"file not found"``. Progress goes to stderr when it is a TTY, or when ``progress`` is True.
    """
    unique = list(dict.fromkeys(paths))
    by_sha: dict[str, Embedded] = {}
    out: dict[str, Embedded] = {}
    bar = _Progress(len(unique), sys.stderr.isatty() if progress is None else progress)
    embedded = cached = duplicates = 0
    try:
        for rel in unique:
            full = root / rel
            try:
                if full.exists() and not full.is_file() and not full.is_dir():
                    raise OSError(0, "not a regular file")  # a FIFO or a device would block or never end
                sha = sha256_file(full)
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                out[rel] = (None, FILE_NOT_FOUND)
            except OSError as err:
                out[rel] = (None, f"unreadable file: {err.strerror or err}")
            else:
                if sha in by_sha:
                    duplicates += 1
                else:
                    found, vector, reason = cache.get(sha, fingerprint)
                    if found:
                        cached += 1
                    else:
                        (vector, reason), cacheable = _run_embed(embed, full)
                        embedded += 1
                        if cacheable:
                            cache.put(sha, fingerprint, vector, reason)
                    by_sha[sha] = (vector, reason)
                out[rel] = by_sha[sha]
            bar.update()
    finally:
        bar.close()
        cache.commit()
    log.info(
        "%d images: %d embedded, %d from cache, %d same bytes as another, %d missing or unreadable",
        len(unique),
        embedded,
        cached,
        duplicates,
        len(unique) - embedded - cached - duplicates,
    )
    return out


def _failures(results: Mapping[str, Embedded]) -> list[tuple[str, str]]:
    return sorted((path, reason or "failed") for path, (vector, reason) in results.items() if vector is None)


# ------------------------------------------------------------------------------------------------- protocols


def evaluate_pairs(
    pairs_csv: Path,
    *,
    root: Path | None,
    embed: EmbedFn,
    fingerprint: str,
    cache: EmbeddingCache,
    models: Mapping[str, Any],
    threshold: float | None = None,
    plot: Path | None = None,
    progress: bool | None = None,
    calibration: Calibration | None = None,
    scores_csv: Path | None = None,
) -> dict[str, Any]:
    """Pair verification on a ``path1,path2,same[,fold]`` CSV; returns the JSON-ready result dict.

    Keys: ``n_pairs``, ``n_failed``, ``failed_policy``, ``failed_images`` (up to 20 ``{"path", "reason"}``),
    ``accuracy_mean``, ``accuracy_std``, ``threshold``, ``tar_at_far``, ``roc_auc``, ``seconds``, ``models``,
    ``at_threshold`` when ``threshold`` is given, and ``calibration`` (:meth:`Calibration.to_json` plus
    ``applied``: :func:`kiosk.lab.calibrate.calibration_metrics` on this set) when ``calibration`` is given.
    ``scores_csv`` gets one row per pair: ``path1,path2,same,cosine,p_same``.

    Calibration leaves out pairs with a failed image (they have no embedding to compute P(same) from): they are
    counted in ``applied.n_skipped`` and their ``cosine`` and ``p_same`` are empty in ``scores_csv``.

    Protocol: a pair with a failed image scores -1.0 (the lowest cosine) and so counts as "different": a
    genuine pair is a false non-match, an impostor pair a correct rejection. Other scores are cosines clipped
    to [-1, 1]. With a ``fold`` column (at least two folds), accuracy is leave-one-fold-out (each fold's
    threshold chosen on the other folds; std = population std over folds); without folds it is the accuracy at
    the best threshold on all pairs (optimistic) and ``accuracy_std`` is None. ``threshold`` is always the
    accuracy-optimal one on all pairs. Needs at least one genuine and one impostor pair.
    """
    started = time.perf_counter()
    pairs_csv = Path(pairs_csv)
    pairs = read_pairs(pairs_csv)
    same = np.asarray([p.same for p in pairs], dtype=bool)
    if same.all() or not same.any():
        raise InputError(f"{display(pairs_csv)}: needs both same (1) and different (0) pairs to measure anything")
    base = root if root is not None else pairs_csv.parent
    results = embed_images(
        [p for pair in pairs for p in (pair.path1, pair.path2)],
        root=base,
        embed=embed,
        fingerprint=fingerprint,
        cache=cache,
        progress=progress,
    )

    scores = np.empty(len(pairs), dtype=np.float64)
    hit_failure = np.zeros(len(pairs), dtype=bool)
    for k, pair in enumerate(pairs):
        a, b = results[pair.path1][0], results[pair.path2][0]
        if a is None or b is None:
            scores[k], hit_failure[k] = metrics.FAILED_SCORE, True
        else:
            scores[k] = min(max(float(np.dot(a, b)), -1.0), 1.0)
    genuine, impostor = scores[same], scores[~same]

    folds = [p.fold for p in pairs]
    fold_ids = {f for f in folds if f is not None}
    best, best_accuracy = metrics.best_threshold(genuine, impostor)
    accuracy_std: float | None = None
    if len(fold_ids) >= 2:
        try:
            accuracy_mean, accuracy_std, _ = metrics.kfold_accuracy(scores, same, np.asarray(folds))
        except ValueError as err:
            raise InputError(f"{pairs_csv}: {err}") from err
    else:
        if fold_ids:
            log.warning("%s has a single fold: reporting best-threshold accuracy, no std", pairs_csv)
        accuracy_mean = best_accuracy

    failures = _failures(results)
    n_genuine_hit, n_impostor_hit = int((hit_failure & same).sum()), int((hit_failure & ~same).sum())
    tar = metrics.tar_at_far(genuine, impostor, PAIR_FARS)
    out: dict[str, Any] = {
        "n_pairs": len(pairs),
        "n_failed": len(failures),
        "failed_policy": (
            f"pairs with an image that has no usable face were scored {metrics.FAILED_SCORE} "
            f"(the lowest cosine) and so declared 'different': {n_genuine_hit} genuine pairs counted as "
            f"false non-matches, {n_impostor_hit} impostor pairs as correct rejections"
        ),
        "failed_images": [{"path": p, "reason": r} for p, r in failures[:MAX_LISTED_FAILURES]],
        "accuracy_mean": float(accuracy_mean),
        "accuracy_std": accuracy_std,
        "threshold": float(best),
        "tar_at_far": tar,
        "roc_auc": metrics.roc_auc(genuine, impostor),
        "seconds": 0.0,
        "models": dict(models),
    }
    marks = {"best accuracy": best} | {f"FAR {k}": v["threshold"] for k, v in tar.items() if v is not None}
    if threshold is not None:
        out["at_threshold"] = {
            "threshold": float(threshold),
            "accuracy": float(np.mean((scores >= threshold) == same)),
            "fmr": float(np.mean(impostor >= threshold)),
            "fnmr": float(np.mean(genuine < threshold)),
        }
        marks["given"] = float(threshold)
    p_same = np.full(len(pairs), np.nan)
    if calibration is not None:
        a, b, ok = _usable_pairs(pairs, results)
        if ok.any():
            p_same[ok] = calibration.predict(a, b)
        applied = calibration_metrics(p_same[ok], same[ok]) if ok.any() else {"n_pairs": 0}
        out["calibration"] = calibration.to_json() | {"applied": applied | {"n_skipped": int((~ok).sum())}}
    if scores_csv is not None:
        _write_scores(scores_csv, pairs, np.where(hit_failure, np.nan, scores), p_same)
    if plot is not None:
        fmr, tpr, _ = metrics.roc(genuine, impostor)
        plot_scores(plot, genuine, impostor, (fmr, tpr), marks, title=f"pairs: {pairs_csv.name}")
    out["seconds"] = round(time.perf_counter() - started, 3)
    return out


def evaluate_labels(
    labels_csv: Path,
    *,
    root: Path | None,
    embed: EmbedFn,
    fingerprint: str,
    cache: EmbeddingCache,
    models: Mapping[str, Any],
    plot: Path | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """All-pairs verification and identification on a ``path,identity`` CSV; returns the JSON-ready dict.

    Keys: ``n_images``, ``n_identities``, ``n_failed``, ``n_genuine``, ``n_impostor``, ``fnmr_at_fmr`` (for
    1e-3 … 1e-6, each ``{"fnmr", "threshold"}`` or None when ``n_impostor < 1/fmr``), ``rank1``,
    ``dir_at_fpir_1e-2``, ``seconds``, ``models``.

    Protocol: rows whose identity is one of :data:`SPECIAL_IDENTITIES` (sample-set markers such as MULTI or
    NO_FACE) are skipped. ``n_images``/``n_identities`` count the remaining rows; images that fail are
    excluded from every comparison, gallery and probe set (``n_failed``), so ``n_genuine``/``n_impostor``
    count pairs of usable images. Rank-1 and DIR follow :func:`kiosk.lab.metrics.rank1` and
    :func:`kiosk.lab.metrics.dir_at_fpir` (gallery = first usable image of each identity, in CSV order).
    """
    started = time.perf_counter()
    labels_csv = Path(labels_csv)
    rows = read_labels(labels_csv)
    kept = [r for r in rows if r.identity not in SPECIAL_IDENTITIES]
    if len(kept) < len(rows):
        log.info("skipped %d rows labelled %s", len(rows) - len(kept), "/".join(sorted(SPECIAL_IDENTITIES)))
    if not kept:
        raise InputError(f"{labels_csv}: no labelled images (only {'/'.join(sorted(SPECIAL_IDENTITIES))} rows)")
    base = root if root is not None else labels_csv.parent
    results = embed_images(
        [r.path for r in kept],
        root=base,
        embed=embed,
        fingerprint=fingerprint,
        cache=cache,
        progress=progress,
    )
    vectors = [results[r.path][0] for r in kept]
    identities = [r.identity for r in kept]
    failures = _failures(results)
    for path, reason in failures[:MAX_LISTED_FAILURES]:
        log.info("no embedding for %s: %s", path, reason)

    pairs = metrics.all_pairs(vectors, identities, ALL_PAIRS_FMRS)
    open_set = metrics.dir_at_fpir(vectors, identities, OPEN_SET_FPIR)
    out: dict[str, Any] = {
        "n_images": len(kept),
        "n_identities": len(set(identities)),
        "n_failed": len(failures),
        "n_genuine": pairs["n_genuine"],
        "n_impostor": pairs["n_impostor"],
        "fnmr_at_fmr": pairs["fnmr_at_fmr"],
        "rank1": metrics.rank1(vectors, identities),
        f"dir_at_fpir_{metrics.rate_key(OPEN_SET_FPIR)}": open_set["dir"],
        "seconds": 0.0,
        "models": dict(models),
    }
    if plot is not None:
        marks = {f"FMR {k}": v["threshold"] for k, v in pairs["fnmr_at_fmr"].items() if v is not None}
        plot_scores(
            plot,
            pairs["genuine_hist"],
            pairs["impostor_hist"],
            metrics.all_pairs_roc(pairs),
            marks,
            log_y=True,
            title=f"all pairs: {labels_csv.name}",
        )
    out["seconds"] = round(time.perf_counter() - started, 3)
    return out


# ------------------------------------------------------------------------------------------------ calibration


def _usable_pairs(pairs: Sequence[Pair], results: Mapping[str, Embedded]) -> tuple[F32, F32, npt.NDArray[np.bool_]]:
    """The stacked embeddings of the pairs whose two images both have one, and a mask of which pairs those are."""
    a: list[F32] = []
    b: list[F32] = []
    ok = np.zeros(len(pairs), dtype=bool)
    for k, pair in enumerate(pairs):
        u, v = results[pair.path1][0], results[pair.path2][0]
        if u is not None and v is not None:
            a.append(u)
            b.append(v)
            ok[k] = True
    if not a:
        return np.empty((0, 0), np.float32), np.empty((0, 0), np.float32), ok
    return np.stack(a), np.stack(b), ok


def _write_scores(
    out: Path, pairs: Sequence[Pair], cosines: npt.NDArray[np.float64], p_same: npt.NDArray[np.float64]
) -> None:
    """``path1,path2,same,cosine,p_same`` per pair; an empty field where there is no value (a failed image, or no
    calibration)."""

    def cell(v: float) -> str:
        return "" if math.isnan(v) else f"{v:.6f}"

    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path1", "path2", "same", "cosine", "p_same"])
            for pair, c, p in zip(pairs, cosines, p_same, strict=True):
                writer.writerow([pair.path1, pair.path2, int(pair.same), cell(float(c)), cell(float(p))])
    except OSError as err:
        raise InputError(f"{display(out)}: cannot write the scores: {err.strerror or err}") from err


def csv_kind(csv_path: Path) -> str:
    """``"pairs"`` or ``"labels"`` from a CSV's header line; InputError for anything else."""
    name = display(csv_path)
    try:
        with Path(csv_path).open(encoding="utf-8-sig", newline="") as f:
            header = next(csv.reader(f), None)
    except FileNotFoundError as err:
        raise InputError(f"{name}: no such file") from err
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{name}: cannot read: {' '.join(str(err).split())}") from err
    columns = {c.strip() for c in header or ()}
    if {"path1", "path2", "same"} <= columns:
        return "pairs"
    if {"path", "identity"} <= columns:
        return "labels"
    raise InputError(f"{name}: expected a pairs CSV (path1,path2,same[,fold]) or a labels CSV (path,identity)")


def fit_calibration_csv(
    fit_csv: Path,
    *,
    features: str,
    root: Path | None,
    embed: EmbedFn,
    fingerprint: str,
    cache: EmbeddingCache,
    progress: bool | None = None,
) -> Calibration:
    """Fit a :class:`Calibration` on a pairs CSV (its pairs, unweighted) or a labels CSV (every genuine and every
    impostor pair of its usable images, class-balanced weights; a seeded sample when a class has more than
    :data:`MAX_FIT_VALUES` feature values), embedding the images with the same ``embed``/``cache`` as an evaluation.

    Pairs with an image that has no usable face are left out (``n_skipped``: pairs of a pairs CSV, images of a
    labels CSV). Too few pairs of either class is an
    InputError, raised before any image is embedded when the CSV alone shows it.
    """
    fit_csv = Path(fit_csv)
    if features not in FEATURES:
        raise InputError(f"unknown calibration features {features!r}, expected one of {', '.join(FEATURES)}")
    kind = csv_kind(fit_csv)
    base = root if root is not None else fit_csv.parent
    name = display(fit_csv)
    common: dict[str, Any] = dict(root=base, embed=embed, fingerprint=fingerprint, cache=cache, progress=progress)
    if kind == "pairs":
        pairs = read_pairs(fit_csv)
        n_genuine = sum(p.same for p in pairs)
        if min(n_genuine, len(pairs) - n_genuine) < MIN_PER_CLASS:
            raise InputError(
                f"{name}: {n_genuine} genuine and {len(pairs) - n_genuine} impostor pairs, "
                f"needs at least {MIN_PER_CLASS} of each to fit a calibration"
            )
        results = embed_images([p for pair in pairs for p in (pair.path1, pair.path2)], **common)
        a, b, ok = _usable_pairs(pairs, results)
        y = np.asarray([p.same for p in pairs], dtype=bool)[ok]
        skipped, sampled, balanced = len(pairs) - len(y), False, False
    else:
        rows = [r for r in read_labels(fit_csv) if r.identity not in SPECIAL_IDENTITIES]
        results = embed_images([r.path for r in rows], **common)
        usable = [r for r in rows if results[r.path][0] is not None]
        names = sorted({r.identity for r in usable})
        codes = np.asarray([names.index(r.identity) for r in usable], dtype=np.int64)
        if len(usable) < 2:
            raise InputError(f"{name}: fewer than two images with a usable face, nothing to fit a calibration on")
        vectors = np.stack([np.asarray(results[r.path][0]) for r in usable])
        width = pair_features(features, vectors[:1], vectors[:1]).shape[1]  # 1 for cosine, d for embedding
        i, j, same, sampled = label_pairs(codes, max(MIN_PER_CLASS, MAX_FIT_VALUES // width))
        a, b, y = vectors[i], vectors[j], same
        skipped = len(rows) - len(usable)
        balanced = True
        log.info(
            "calibration fit on %s: %d genuine, %d impostor pairs%s",
            name,
            int(y.sum()),
            int((~y).sum()),
            " (sampled)" if sampled else "",
        )
    if not len(y):
        raise InputError(f"{name}: no pair with two usable faces to fit a calibration on")
    try:
        return fit_calibration(
            a,
            b,
            y,
            features=features,
            balanced=balanced,
            fit_file=name,
            fit_sha256=sha256_file(fit_csv),
            fit_kind=kind,
            n_skipped=skipped,
            sampled=sampled,
        )
    except InputError as err:
        raise InputError(f"{name}: {err}") from err
