"""kiosk.lab.calibrate: the numpy logistic fit, its metrics and the Calibration record; ``kiosk eval --calibrate``
with a fake embedder, then end to end on real LFW faces (fit on pairs_dev_train, apply to pairs_dev_test)."""

from __future__ import annotations

import csv
import functools
import json
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiosk.errors import ExitCode, InputError
from kiosk.lab.cache import EmbeddingCache
from kiosk.lab.calibrate import (
    MIN_PER_CLASS,
    Calibration,
    balanced_weights,
    calibration_metrics,
    fit_calibration,
    fit_logistic,
    label_pairs,
    pair_features,
    sigmoid,
)
from kiosk.lab.evaluate import csv_kind, evaluate_pairs, fit_calibration_csv
from tests.helpers import config_file, run_cli

MODELS = {"detector": {"id": "fake-det", "sha256": "0" * 64}, "recognizer": {"id": "fake-rec", "sha256": "1" * 64}}
APPLIED_KEYS = {"log_loss", "brier", "ece", "accuracy_at_0.5", "roc_auc", "reliability", "n_pairs", "n_skipped"}


def logistic_data(n: int, a: float, b: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, n)
    return x, rng.random(n) < sigmoid(a * x + b)


# ------------------------------------------------------------------------------------------------- the fit


def test_fit_recovers_a_known_logistic_model() -> None:
    x, y = logistic_data(20_000, 8.0, -2.0)
    fit = fit_logistic(x, y)
    assert fit.coefficients[0] == pytest.approx(8.0, abs=0.4)
    assert fit.intercept == pytest.approx(-2.0, abs=0.15)
    # several features at once, on different scales (standardisation is folded back into the raw coefficients)
    rng = np.random.default_rng(1)
    xs = rng.normal(size=(20_000, 3)) * np.array([1.0, 0.01, 5.0])
    truth = np.array([1.5, -120.0, 0.2])
    ys = rng.random(20_000) < sigmoid(xs @ truth + 0.5)
    fit = fit_logistic(xs, ys)
    np.testing.assert_allclose(fit.coefficients, truth, rtol=0.08)
    assert fit.intercept == pytest.approx(0.5, abs=0.1)


def test_separable_data_stays_finite_and_the_penalty_is_what_bounds_it() -> None:
    x = np.r_[np.linspace(-1.0, -0.05, 50), np.linspace(0.05, 1.0, 50)]
    y = x > 0
    fit = fit_logistic(x, y)
    assert np.all(np.isfinite(fit.coefficients)) and math.isfinite(fit.intercept)
    p = sigmoid(fit.coefficients[0] * x + fit.intercept)
    assert np.all((p >= 0.5) == y)  # every training pair on its own side
    weaker = fit_logistic(x, y, l2=1e-4)
    assert math.isfinite(weaker.coefficients[0]) and weaker.coefficients[0] > fit.coefficients[0]
    with pytest.raises(InputError, match="l2 must be > 0"):
        fit_logistic(x, y, l2=0.0)


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.linspace(0, 1, 40), np.ones(40, bool), "only genuine pairs"),
        (np.linspace(0, 1, 40), np.zeros(40, bool), "only impostor pairs"),
        (np.linspace(0, 1, 40), np.r_[np.ones(MIN_PER_CLASS - 1, bool), np.zeros(41 - MIN_PER_CLASS, bool)], "too few"),
        (np.r_[np.nan, np.linspace(0, 1, 39)], np.arange(40) % 2 == 0, "NaN or infinity"),
        (np.linspace(0, 1, 40), np.ones(39, bool), "disagree"),
    ],
)
def test_fit_refuses_what_it_cannot_fit(x: np.ndarray, y: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message):
        fit_logistic(x, y)


def test_fit_that_does_not_converge_says_so() -> None:
    x, y = logistic_data(2_000, 8.0, -2.0)
    with pytest.raises(InputError, match="did not converge in 1 iterations"):
        fit_logistic(x, y, max_iter=1)
    with pytest.raises(InputError, match="sample weights"):
        fit_logistic(x, y, sample_weight=-np.ones(x.size))


def test_balanced_weights_give_even_prior_odds() -> None:
    rng = np.random.default_rng(2)
    y = np.r_[np.ones(200, bool), np.zeros(1800, bool)]
    x = np.where(y, rng.normal(1.0, 1.0, y.size), rng.normal(-1.0, 1.0, y.size))  # true log-likelihood ratio: 2x
    w = balanced_weights(y)
    assert w[y].sum() == pytest.approx(w[~y].sum())
    plain, balanced = fit_logistic(x, y), fit_logistic(x, y, sample_weight=w)
    assert plain.intercept == pytest.approx(math.log(200 / 1800), abs=0.35)  # the set's own prior odds
    assert balanced.intercept == pytest.approx(0.0, abs=0.3)  # even odds
    assert balanced.coefficients[0] == pytest.approx(2.0, abs=0.35)


# ------------------------------------------------------------------------------------------ features, metrics


def test_embedding_features_sum_to_the_cosine() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(2, 7, 16))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    product, cosine = pair_features("embedding", a, b), pair_features("cosine", a, b)
    assert product.shape == (7, 16) and cosine.shape == (7, 1)
    np.testing.assert_allclose(product.sum(axis=1), cosine[:, 0])
    with pytest.raises(InputError, match="unknown calibration features 'pixels'"):
        pair_features("pixels", a, b)
    with pytest.raises(InputError, match="differ in shape"):
        pair_features("cosine", a, b[:, :8])


def test_metrics_on_known_predictions() -> None:
    y = np.arange(100) % 2 == 0
    even = calibration_metrics(np.full(100, 0.5), y)
    assert even["log_loss"] == pytest.approx(math.log(2)) and even["brier"] == pytest.approx(0.25)
    assert even["ece"] == pytest.approx(0.0) and even["accuracy_at_0.5"] == 0.5 and even["roc_auc"] == 0.5
    overconfident = calibration_metrics(np.full(100, 0.9), y)
    assert overconfident["ece"] == pytest.approx(0.4)
    table = overconfident["reliability"]
    assert len(table) == 10 and sum(row["count"] for row in table) == 100
    perfect = calibration_metrics(y.astype(float), y)
    assert perfect["log_loss"] < 1e-12 and perfect["brier"] == 0.0 and perfect["roc_auc"] == 1.0
    assert perfect["accuracy_at_0.5"] == 1.0
    wrong = calibration_metrics((~y).astype(float), y)  # confidently wrong: clipped, not infinite
    assert wrong["log_loss"] == pytest.approx(-math.log(1e-15), rel=1e-4)
    assert calibration_metrics(np.full(4, 0.7), np.ones(4, bool))["roc_auc"] is None  # one class: no AUC
    with pytest.raises(InputError):
        calibration_metrics(np.array([1.5]), np.array([True]))


def fitted(features: str = "cosine", dim: int = 8, seed: int = 4) -> tuple[Calibration, np.ndarray, np.ndarray]:
    """A calibration fitted on synthetic identities: genuine pairs share a centre, impostors do not."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(60, dim))
    ids_a = np.arange(120) % 60
    ids_b = np.where(np.arange(120) < 60, ids_a, (ids_a + 7) % 60)
    a = centres[ids_a] + rng.normal(scale=0.8, size=(120, dim))
    b = centres[ids_b] + rng.normal(scale=0.8, size=(120, dim))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    cal = fit_calibration(a, b, ids_a == ids_b, features=features, fit_file="fit.csv", fit_sha256="ab" * 32)
    return cal, a, b


def test_calibration_round_trips_through_json_and_is_monotone_in_the_cosine() -> None:
    cal, a, b = fitted()
    data = json.loads(json.dumps(cal.to_json()))
    assert Calibration.from_json(data) == cal
    assert data["fitted_on"] | {"sha256": ""} == {
        "file": "fit.csv", "sha256": "", "kind": "pairs", "n_genuine": 60, "n_impostor": 60, "n_skipped": 0,
        "sampled": False, "weights": "none",
    }  # fmt: skip
    assert cal.coefficients[0] > 0
    cosines = np.linspace(-1, 1, 50)
    at = cal.p_same_at({f"c{k}": float(c) for k, c in enumerate(cosines)})
    p = [at[f"c{k}"]["p_same"] for k in range(50)]
    assert np.all(np.diff(p) > 0)
    np.testing.assert_allclose(cal.predict(a, b), sigmoid(cal.coefficients[0] * np.sum(a * b, axis=1) + cal.intercept))
    broken_cases: list[dict[str, Any]] = [
        {},
        data | {"features": "pixels"},
        data | {"coefficients": [float("nan")]},
        data | {"fit": 3},
    ]
    for broken in broken_cases:
        with pytest.raises(InputError, match="not a calibration"):
            Calibration.from_json(broken)


def test_embedding_calibration_has_one_weight_per_dimension() -> None:
    cal, a, b = fitted("embedding", dim=8)
    assert len(cal.coefficients) == 8 and cal.to_json()["n_coefficients"] == 8
    assert cal.p_same_at({"accept": 0.5}) == {}  # not a function of the cosine
    assert cal.predict(a, b).shape == (120,)
    with pytest.raises(InputError, match="fitted on 8 embedding features, got 4"):
        cal.predict(a[:, :4], b[:, :4])


def test_label_pairs_enumerates_every_pair_or_a_seeded_sample() -> None:
    codes = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3], dtype=np.int64)
    i, j, same, sampled = label_pairs(codes, cap=1000)
    assert not sampled and i.size == 45 and np.all(i < j)
    assert same.sum() == 3 + 1 + 6 and np.array_equal(same, codes[i] == codes[j])
    assert len({(int(u), int(v)) for u, v in zip(i, j, strict=True)}) == 45
    i, j, same, sampled = label_pairs(np.arange(200, dtype=np.int64) // 4, cap=100)  # 300 genuine, 19,600 impostor
    assert sampled and same.sum() == 100 and (~same).sum() == 100
    assert np.array_equal(same, (i // 4) == (j // 4)) and np.all(i < j)
    assert len({(int(u), int(v)) for u, v in zip(i, j, strict=True)}) == 200
    again = label_pairs(np.arange(200, dtype=np.int64) // 4, cap=100)
    assert np.array_equal(again[0], i) and np.array_equal(again[1], j)  # seeded: the same sample every run


# ------------------------------------------------------------------------------------- runner, fake embedder


@pytest.fixture()
def fake_set(tmp_path: Path) -> tuple[Path, Callable[[Path], tuple[np.ndarray | None, str | None]]]:
    """40 identities x 3 tiny files; the fake embedder reads identity and image from the bytes. ``bad.bin`` has
    no face."""
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(40, 16))
    for person in range(40):
        for k in range(3):
            (tmp_path / f"p{person}_{k}.bin").write_bytes(f"{person},{k}".encode())
    (tmp_path / "bad.bin").write_bytes(b"no face")

    def embed(path: Path) -> tuple[np.ndarray | None, str | None]:
        text = path.read_bytes().decode()
        if "," not in text:
            return None, "no face found"
        person, k = (int(v) for v in text.split(","))
        noise = np.random.default_rng(1000 * person + k).normal(scale=0.9, size=16)
        return (centres[person] + noise).astype(np.float32), None

    return tmp_path, embed


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def test_runner_fits_on_labels_and_applies_to_pairs(fake_set, tmp_path: Path) -> None:
    root, embed = fake_set
    labels = write_csv(
        root / "fit_labels.csv",
        ["path", "identity"],
        [[f"p{person}_{k}.bin", f"id{person}"] for person in range(20) for k in range(3)] + [["bad.bin", "id0"]],
    )
    pairs_rows = [[f"p{p}_0.bin", f"p{p}_1.bin", 1] for p in range(20, 40)]
    pairs_rows += [[f"p{p}_0.bin", f"p{p + 1}_2.bin", 0] for p in range(20, 39)] + [["bad.bin", "p21_1.bin", 1]]
    pairs = write_csv(root / "test_pairs.csv", ["path1", "path2", "same"], pairs_rows)
    common: dict[str, Any] = dict(root=None, embed=embed, fingerprint="fake", cache=EmbeddingCache(None))
    assert csv_kind(labels) == "labels" and csv_kind(pairs) == "pairs"
    cal = fit_calibration_csv(labels, features="cosine", **common)
    assert cal.fit_kind == "labels" and cal.balanced and cal.n_skipped == 1  # bad.bin: no face
    assert (cal.n_genuine, cal.n_impostor) == (20 * 3, 60 * 59 // 2 - 60)
    scores = tmp_path / "out" / "scores.csv"
    report = evaluate_pairs(pairs, models=MODELS, calibration=cal, scores_csv=scores, **common)
    applied = report["calibration"]["applied"]
    assert set(applied) >= APPLIED_KEYS and applied["n_pairs"] == 39 and applied["n_skipped"] == 1
    rows = list(csv.DictReader(scores.read_text().splitlines()))
    assert len(rows) == 40 and list(rows[0]) == ["path1", "path2", "same", "cosine", "p_same"]
    assert rows[-1]["cosine"] == "" and rows[-1]["p_same"] == ""  # the pair with no face
    p = np.array([float(r["p_same"]) for r in rows[:-1]])
    same = np.array([r["same"] == "1" for r in rows[:-1]])
    assert p[same].mean() > p[~same].mean()
    # without a calibration the scores file still has every cosine, and an empty p_same
    evaluate_pairs(pairs, models=MODELS, scores_csv=scores, **common)
    rows = list(csv.DictReader(scores.read_text().splitlines()))
    assert all(r["p_same"] == "" for r in rows) and all(r["cosine"] for r in rows[:-1])
    with pytest.raises(InputError, match="cannot write the scores"):
        evaluate_pairs(pairs, models=MODELS, scores_csv=tmp_path / "out", **common)  # a folder


def test_runner_refuses_unusable_fit_files(fake_set) -> None:
    root, embed = fake_set
    common: dict[str, Any] = dict(root=None, embed=embed, fingerprint="fake", cache=EmbeddingCache(None))
    other = write_csv(root / "other.csv", ["name", "score"], [["a", 1]])
    with pytest.raises(InputError, match=r"expected a pairs CSV .* or a labels CSV"):
        fit_calibration_csv(other, features="cosine", **common)
    with pytest.raises(InputError, match="no such file"):
        fit_calibration_csv(root / "missing.csv", features="cosine", **common)
    few = write_csv(
        root / "few.csv", ["path1", "path2", "same"], [["p0_0.bin", "p0_1.bin", 1], ["p0_0.bin", "p1_0.bin", 0]]
    )
    with pytest.raises(InputError, match="1 genuine and 1 impostor pairs, needs at least 10"):
        fit_calibration_csv(few, features="cosine", **common)
    no_faces = write_csv(
        root / "no_faces.csv", ["path1", "path2", "same"], [["bad.bin", f"p{k}_0.bin", k % 2] for k in range(30)]
    )
    with pytest.raises(InputError, match="no pair with two usable faces"):
        fit_calibration_csv(no_faces, features="cosine", **common)
    one_person = write_csv(root / "one.csv", ["path", "identity"], [[f"p0_{k}.bin", "id0"] for k in range(3)])
    with pytest.raises(InputError, match=r"one\.csv: the fit set has only genuine pairs"):
        fit_calibration_csv(one_person, features="cosine", **common)
    with pytest.raises(InputError, match="unknown calibration features"):
        fit_calibration_csv(one_person, features="pixels", **common)


# ------------------------------------------------------------------------------------------ CLI, real faces


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One embedding cache for this module's CLI runs: the dev pairs' ~3,400 LFW images are embedded once."""
    path = tmp_path_factory.mktemp("embedding-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KIOSK_CACHE_DIR", str(path))
        yield path


@pytest.fixture()
def kiosk(tmp_path: Path, capsys: pytest.CaptureFixture[str], shared_cache: Path):
    return functools.partial(run_cli, config_file(tmp_path), capsys)


def test_cli_refuses_bad_calibration_inputs_with_one_line(
    kiosk, faces_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lfw = faces_dir / "lfw"
    test_rows = (lfw / "pairs_dev_test.csv").read_text().splitlines()
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("\n".join(test_rows[:11] + test_rows[-10:]) + "\n")
    one_class = tmp_path / "one_class.csv"
    one_class.write_text("\n".join((lfw / "pairs_dev_train.csv").read_text().splitlines()[:40]) + "\n")
    copy = tmp_path / "copy.csv"
    shutil.copyfile(pairs, copy)
    base = ("eval", "--pairs", str(pairs), "--root", str(lfw), "--calibration-root", str(lfw))
    cases = [
        (("--calibrate", str(tmp_path / "missing.csv")), "missing.csv: file not found"),
        (("--calibrate", str(one_class)), "39 genuine and 0 impostor pairs, needs at least 10 of each"),
        (("--calibrate", str(pairs)), "same content as the evaluated"),
        (("--calibrate", str(copy)), "same content as the evaluated"),
        (("--calibrate", str(lfw / "pairs_dev_train.csv"), "--calibration-features", "pixels"), None),
    ]
    for extra, message in cases:
        if message is None:  # argparse's own usage error
            with pytest.raises(SystemExit) as exc:
                kiosk(*base, *extra)
            assert exc.value.code == ExitCode.USAGE and "invalid choice: 'pixels'" in capsys.readouterr().err
            continue
        code, out, err = kiosk(*base, *extra)
        assert code == ExitCode.INPUT and message in err and len(err.strip().splitlines()) == 1, err
        assert out == ""
    for extra in (("--calibrate", str(lfw / "pairs_dev_train.csv")), ("--scores", str(tmp_path / "s.csv"))):
        code, _, err = kiosk("eval", "--labels", str(lfw / "labels.csv"), *extra)
        assert code == ExitCode.INPUT and "work on a --pairs evaluation" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.slow
def test_cli_calibrates_on_real_faces(kiosk, faces_dir: Path, tmp_path: Path) -> None:
    lfw = faces_dir / "lfw"
    fit_csv, test_csv = lfw / "pairs_dev_train.csv", lfw / "pairs_dev_test.csv"
    out_json, scores = tmp_path / "eval.json", tmp_path / "scores.csv"
    code, out, err = kiosk(
        "eval", "--pairs", str(test_csv), "--calibrate", str(fit_csv), "--json", str(out_json), "--scores", str(scores)
    )  # fmt: skip
    assert code == 0, err
    assert "calibration: P(same) = σ(" in out and "P(same | accept 0.470)" in out
    r = json.loads(out_json.read_text())
    c = r["calibration"]
    assert {"features", "coefficients", "intercept", "fitted_on", "fit", "applied", "p_same_at"} <= set(c)
    assert c["features"] == "cosine" and c["coefficients"][0] > 0
    fit_rows = list(csv.DictReader(fit_csv.read_text().splitlines()))
    genuine = sum(row["same"] == "1" for row in fit_rows)
    fitted_on = c["fitted_on"]
    assert fitted_on["kind"] == "pairs" and fitted_on["weights"] == "none"
    assert fitted_on["n_genuine"] + fitted_on["n_impostor"] + fitted_on["n_skipped"] == len(fit_rows)
    assert fitted_on["n_genuine"] <= genuine and fitted_on["n_genuine"] >= genuine - fitted_on["n_skipped"]
    assert fitted_on["sha256"] != "" and fitted_on["file"].endswith("pairs_dev_train.csv")
    applied = c["applied"]
    assert set(applied) >= APPLIED_KEYS and len(applied["reliability"]) == 10
    assert applied["ece"] < 0.05 and applied["accuracy_at_0.5"] > 0.95
    # Platt scaling is monotone: the AUC of P(same) is the AUC of the cosine.
    assert applied["roc_auc"] == pytest.approx(r["roc_auc"], abs=1e-3)
    at = c["p_same_at"]
    assert set(at) >= {"accept", "likely", "fmr_1e-3", "fmr_1e-5"}
    assert at["likely"]["p_same"] < at["accept"]["p_same"]

    rows = list(csv.DictReader(scores.read_text().splitlines()))
    assert len(rows) == r["n_pairs"]
    usable = [row for row in rows if row["cosine"]]
    cos = np.array([float(row["cosine"]) for row in usable])
    p = np.array([float(row["p_same"]) for row in usable])
    same = np.array([row["same"] == "1" for row in usable])
    order = np.argsort(cos, kind="stable")
    assert np.all(np.diff(p[order]) >= 0)  # P(same) never decreases as the cosine grows
    assert p[same].mean() > 0.8 and p[~same].mean() < 0.2

    # a⊙b features: embeddings come from the shared cache, 128 weights, honest about fitting its own set better
    code, out, err = kiosk(
        "eval", "--pairs", str(test_csv), "--calibrate", str(fit_csv), "--calibration-features", "embedding",
        "--json", str(out_json),
    )  # fmt: skip
    assert code == 0, err
    c = json.loads(out_json.read_text())["calibration"]
    assert c["features"] == "embedding" and c["n_coefficients"] == len(c["coefficients"]) == 128
    assert c["p_same_at"] == {} and "P(same) over a⊙b: 128 weights" in out
    assert c["applied"]["roc_auc"] > 0.95
    assert c["fit"]["metrics"]["log_loss"] < c["applied"]["log_loss"]
