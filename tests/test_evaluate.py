"""kiosk.lab.evaluate end to end with a fake embedder over tiny generated images, plus the CSV readers and the cache."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from kiosk.errors import InputError, NoFaceError
from kiosk.lab import metrics
from kiosk.lab.cache import EmbeddingCache, default_cache_path
from kiosk.lab.evaluate import LabeledImage, Pair, evaluate_labels, evaluate_pairs, read_labels, read_pairs

PAIR_KEYS = {
    "n_pairs",
    "n_failed",
    "failed_policy",
    "failed_images",
    "accuracy_mean",
    "accuracy_std",
    "threshold",
    "tar_at_far",
    "roc_auc",
    "seconds",
    "models",
}
LABEL_KEYS = {
    "n_images",
    "n_identities",
    "n_failed",
    "n_genuine",
    "n_impostor",
    "fnmr_at_fmr",
    "rank1",
    "dir_at_fpir_1e-2",
    "seconds",
    "models",
}
MODELS = {"detector": {"id": "fake-det", "sha256": "0" * 64}, "recognizer": {"id": "fake-rec", "sha256": "1" * 64}}
DIM = 32
NO_FACE, RAISES = 1, 2  # flags painted into a fake image


class FakeEmbedder:
    """Decodes identity, image index and a flag painted into the first pixels of a tiny PNG; the embedding is
    the identity's centre plus per-image noise. Records every call, to check de-duplication and caching."""

    def __init__(self, noise: float = 0.5) -> None:
        self.calls: list[Path] = []
        self.noise = noise

    def vector(self, identity: int, index: int) -> np.ndarray:
        center = np.random.default_rng(identity).normal(size=DIM)
        v = center + self.noise * np.random.default_rng(10_000 + 100 * identity + index).normal(size=DIM)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def __call__(self, path: Path) -> tuple[np.ndarray | None, str | None]:
        self.calls.append(path)
        img = cv2.imread(str(path))
        identity, index, flag = (int(v) for v in img[0, 0])
        if flag == NO_FACE:
            return None, "no face found"
        if flag == RAISES:
            raise NoFaceError("detector found nothing")
        return self.vector(identity, index) * 3.0, None  # not normalised: evaluate must normalise


def write_image(path: Path, identity: int, index: int, flag: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros((4, 4, 3), np.uint8)
    img[0, 0] = (identity, index, flag)
    assert cv2.imwrite(str(path), img)


def img_path(identity: int, index: int) -> str:
    return f"images/id{identity:03d}/{index}.png"


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[EmbeddingCache]:
    c = EmbeddingCache(tmp_path / "cache" / "embeddings.sqlite")
    yield c
    c.close()


# -------------------------------------------------------------------------------------------------- readers


def test_read_pairs_accepts_spellings_and_optional_fold(tmp_path: Path) -> None:
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("fold,path1,path2,same\n1,a.png,b.png,1\n\n2,a.png,c.png,FALSE\n2, d.png ,e.png,true\n")
    assert read_pairs(csv_path) == [
        Pair("a.png", "b.png", True, "1"),
        Pair("a.png", "c.png", False, "2"),
        Pair("d.png", "e.png", True, "2"),
    ]
    no_fold = tmp_path / "nofold.csv"
    no_fold.write_text("\ufeffpath1,path2,same\na,b,0\n")  # a BOM from a spreadsheet is fine
    assert read_pairs(no_fold) == [Pair("a", "b", False, None)]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("path1,path2\na,b\n", r"pairs\.csv:1: bad header"),
        ("path1,path2,same,extra\na,b,1,x\n", r"pairs\.csv:1: bad header"),
        ("path1,path2,same\na,b,1\na,c,yes\n", r"pairs\.csv:3: same must be 1, 0, true or false, got 'yes'"),
        ("path1,path2,same\na,b,1\na,c\n", r"pairs\.csv:3: expected 3 fields, got 2"),
        ("path1,path2,same\n,b,1\n", r"pairs\.csv:2: empty path"),
        ("fold,path1,path2,same\n,a,b,1\n", r"pairs\.csv:2: empty fold"),
        ("path1,path2,same\n", r"pairs\.csv: no data rows"),
        ("", r"pairs\.csv: empty file"),
    ],
)
def test_read_pairs_errors_name_file_and_line(tmp_path: Path, text: str, match: str) -> None:
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text(text)
    with pytest.raises(InputError, match=match):
        read_pairs(csv_path)


def test_read_pairs_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_pairs(tmp_path / "nope.csv")


def test_read_labels(tmp_path: Path) -> None:
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("identity,path\nann,a.png\nbob,b.png\n")
    assert read_labels(csv_path) == [LabeledImage("a.png", "ann"), LabeledImage("b.png", "bob")]
    csv_path.write_text("path,identity\na.png,ann\nb.png,bob\na.png,ann\n")
    with pytest.raises(InputError, match=r"labels\.csv:4: a\.png is already listed on line 2"):
        read_labels(csv_path)
    csv_path.write_text("path,identity\na.png,\n")
    with pytest.raises(InputError, match=r"labels\.csv:2: empty"):
        read_labels(csv_path)


# ---------------------------------------------------------------------------------------------- pairs mode


def make_pairs_set(root: Path) -> tuple[Path, list[tuple[str, str, int, int]], FakeEmbedder]:
    """12 identities x 3 images in 3 folds; id 0 image 0 has no face, id 1 image 0 is missing on disk.
    Returns the CSV, the rows (path1, path2, same, fold) and the embedder."""
    for identity in range(12):
        for index in range(3):
            if (identity, index) != (1, 0):
                write_image(
                    root / img_path(identity, index), identity, index, NO_FACE if (identity, index) == (0, 0) else 0
                )
    rows = []
    for identity in range(12):
        fold = identity % 3 + 1
        rows += [
            (img_path(identity, 0), img_path(identity, 1), 1, fold),
            (img_path(identity, 1), img_path(identity, 2), 1, fold),
        ]
        other = (identity + 1) % 12
        rows += [
            (img_path(identity, 2), img_path(other, 2), 0, fold),
            (img_path(identity, 0), img_path(other, 1), 0, fold),
        ]
    csv_path = root / "pairs.csv"
    csv_path.write_text("fold,path1,path2,same\n" + "".join(f"{f},{a},{b},{s}\n" for a, b, s, f in rows))
    return csv_path, rows, FakeEmbedder(noise=0.9)


def expected_scores(rows: list[tuple[str, str, int, int]], embedder: FakeEmbedder) -> np.ndarray:
    failed = {img_path(0, 0), img_path(1, 0)}

    def vec(p: str) -> np.ndarray:
        parts = p.split("/")
        return embedder.vector(int(parts[1][2:]), int(parts[2].split(".")[0]))

    return np.array([-1.0 if a in failed or b in failed else float(vec(a) @ vec(b)) for a, b, _, _ in rows])


def test_evaluate_pairs_end_to_end(tmp_path: Path, cache: EmbeddingCache) -> None:
    csv_path, rows, embedder = make_pairs_set(tmp_path)
    plot = tmp_path / "out" / "pairs.png"
    out = evaluate_pairs(
        csv_path, root=None, embed=embedder, fingerprint="fp1", cache=cache, models=MODELS, threshold=0.3, plot=plot
    )
    assert set(out) == PAIR_KEYS | {"at_threshold"}
    json.dumps(out, allow_nan=False)  # the contract is JSON: no numpy types, no NaN

    assert out["n_pairs"] == 48
    assert out["n_failed"] == 2
    assert out["failed_images"] == [
        {"path": img_path(0, 0), "reason": "no face found"},
        {"path": img_path(1, 0), "reason": "file not found"},
    ]
    # Failed images appear in 2 genuine pairs (0/0-0/1, 1/0-1/1) and 2 impostor pairs (0/0-1/1, 1/0-2/1).
    assert "-1.0" in out["failed_policy"]
    assert "2 genuine pairs counted as false non-matches, 2 impostor pairs" in out["failed_policy"]
    # Every distinct image that exists is embedded exactly once although most appear in several pairs.
    assert len(embedder.calls) == 35 and len(set(embedder.calls)) == 35

    scores = expected_scores(rows, embedder)
    same = np.array([s for _, _, s, _ in rows], bool)
    folds = np.array([f for _, _, _, f in rows])
    mean, std, _ = metrics.kfold_accuracy(scores, same, folds)
    assert out["accuracy_mean"] == pytest.approx(mean) and out["accuracy_std"] == pytest.approx(std)
    assert out["threshold"] == pytest.approx(metrics.best_threshold(scores[same], scores[~same])[0])
    assert out["roc_auc"] == pytest.approx(metrics.roc_auc(scores[same], scores[~same]))
    assert 0.5 < out["roc_auc"] < 1.0 and 0.5 < out["accuracy_mean"] < 1.0  # imperfect on purpose
    assert out["tar_at_far"] == {"1e-2": None, "1e-3": None, "1e-4": None}  # only 24 impostor pairs
    at = out["at_threshold"]
    assert at["threshold"] == 0.3
    assert at["fmr"] == pytest.approx(np.mean(scores[~same] >= 0.3))
    assert at["fnmr"] == pytest.approx(np.mean(scores[same] < 0.3))
    assert at["fnmr"] >= 2 / 24  # the two genuine pairs with a failed image are false non-matches
    assert at["accuracy"] == pytest.approx(np.mean((scores >= 0.3) == same))
    assert out["models"] == MODELS and out["seconds"] >= 0
    assert cv2.imread(str(plot)).shape == (500, 1200, 3)

    # Second run: everything comes from the cache (failures too), nothing is re-embedded.
    again = evaluate_pairs(csv_path, root=None, embed=embedder, fingerprint="fp1", cache=cache, models=MODELS)
    assert len(embedder.calls) == 35
    assert again["accuracy_mean"] == out["accuracy_mean"] and "at_threshold" not in again
    # A different pipeline fingerprint must not see those vectors.
    evaluate_pairs(csv_path, root=None, embed=embedder, fingerprint="fp2", cache=cache, models=MODELS)
    assert len(embedder.calls) == 70


def test_evaluate_pairs_without_folds_and_with_enough_impostors(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    embedder = FakeEmbedder(noise=0.4)
    for identity in range(40):
        for index in range(3):
            write_image(tmp_path / "data" / img_path(identity, index), identity, index)
    write_image(tmp_path / "data" / img_path(99, 0), 99, 0, RAISES)  # the pipeline raises: a failure, not a crash
    (tmp_path / "data" / "copy.png").write_bytes((tmp_path / "data" / img_path(3, 1)).read_bytes())
    lines = [f"{img_path(i, 0)},{img_path(i, k)},1" for i in range(40) for k in (1, 2)]
    for _ in range(120):
        a, b = rng.choice(40, 2, replace=False)
        lines.append(f"{img_path(a, rng.integers(3))},{img_path(b, rng.integers(3))},0")
    lines.append(f"{img_path(99, 0)},{img_path(3, 1)},0")
    lines.append(f"copy.png,{img_path(3, 2)},1")  # same bytes as 3/1 under another name: embedded once
    csv_path = tmp_path / "lists" / "pairs.csv"
    csv_path.parent.mkdir()
    csv_path.write_text("path1,path2,same\n" + "\n".join(lines) + "\n")
    out = evaluate_pairs(
        csv_path,
        root=tmp_path / "data",
        embed=embedder,
        fingerprint="fp",
        cache=EmbeddingCache(None),
        models={},
        progress=False,
    )
    assert set(out) == PAIR_KEYS
    assert len(embedder.calls) == 40 * 3 + 1  # every distinct file content once; the copy is not re-embedded
    assert out["accuracy_std"] is None
    assert out["n_failed"] == 1 and out["failed_images"][0]["reason"] == "detector found nothing"
    assert "0 genuine pairs counted as false non-matches, 1 impostor pairs" in out["failed_policy"]
    assert out["accuracy_mean"] == 1.0 and out["roc_auc"] == 1.0  # low noise: separable
    tar = out["tar_at_far"]
    assert tar["1e-2"] is not None and tar["1e-2"]["tar"] == 1.0
    assert tar["1e-3"] is None and tar["1e-4"] is None


def test_evaluate_pairs_input_errors(tmp_path: Path) -> None:
    common: dict[str, Any] = {
        "root": None,
        "embed": FakeEmbedder(),
        "fingerprint": "fp",
        "cache": EmbeddingCache(None),
        "models": {},
    }
    with pytest.raises(InputError, match="no such file"):
        evaluate_pairs(tmp_path / "missing.csv", **common)
    only_same = tmp_path / "same.csv"
    only_same.write_text("path1,path2,same\na,b,1\n")
    with pytest.raises(InputError, match="both same"):
        evaluate_pairs(only_same, **common)


def test_progress_bar_only_when_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv_path, _, embedder = make_pairs_set(tmp_path)
    common: dict[str, Any] = {
        "root": None,
        "embed": embedder,
        "fingerprint": "fp",
        "cache": EmbeddingCache(None),
        "models": {},
    }
    evaluate_pairs(csv_path, progress=True, **common)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "\rembedding 36/36" in captured.err and "img/s" in captured.err and "ETA" in captured.err
    evaluate_pairs(csv_path, progress=None, **common)  # stderr is not a TTY under pytest
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------------------------- labels mode


def test_evaluate_labels_end_to_end(tmp_path: Path, cache: EmbeddingCache) -> None:
    embedder = FakeEmbedder(noise=0.6)
    rows = []
    for identity in range(30):  # 30 people with 3 images each
        for index in range(3):
            rows.append((img_path(identity, index), f"person{identity}"))
            write_image(
                tmp_path / img_path(identity, index), identity, index, NO_FACE if (identity, index) == (0, 1) else 0
            )
    for identity in range(100, 205):  # 105 people with one image: the non-mated probes of the open-set test
        rows.append((img_path(identity, 0), f"single{identity}"))
        write_image(tmp_path / img_path(identity, 0), identity % 256, 0)
    rows.append(("images/missing.png", "person5"))
    rows.append(("images/group.png", "MULTI"))  # sample-set marker: skipped, not an identity
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,identity\n" + "".join(f"{p},{i}\n" for p, i in rows))
    plot = tmp_path / "all.png"

    out = evaluate_labels(csv_path, root=None, embed=embedder, fingerprint="fp", cache=cache, models=MODELS, plot=plot)
    assert set(out) == LABEL_KEYS
    json.dumps(out, allow_nan=False)
    assert out["n_images"] == 90 + 105 + 1
    assert out["n_identities"] == 135
    assert out["n_failed"] == 2  # the no-face image and the missing file
    # Usable: person0 has 2 images, person5 3 (its 4th is missing), 28 others 3; 105 singletons.
    n_usable = 2 + 29 * 3 + 105
    n_genuine = 1 + 29 * 3
    assert out["n_genuine"] == n_genuine
    assert out["n_impostor"] == n_usable * (n_usable - 1) // 2 - n_genuine
    assert set(out["fnmr_at_fmr"]) == {"1e-3", "1e-4", "1e-5", "1e-6"}
    assert out["fnmr_at_fmr"]["1e-5"] is None and out["fnmr_at_fmr"]["1e-6"] is None  # 18,633 impostor pairs

    # Same figures straight from kiosk.lab.metrics on the fake vectors (failed ones as None).
    vectors: list[np.ndarray | None] = []
    labels = []
    for path, identity in rows:
        if identity == "MULTI":
            continue
        labels.append(identity)
        parts = path.split("/")
        ok = path != "images/missing.png" and path != img_path(0, 1)
        vectors.append(embedder.vector(int(parts[1][2:]) % 256, int(parts[2][0])) if ok else None)
    reference = metrics.all_pairs(vectors, labels, (1e-3, 1e-4, 1e-5, 1e-6))
    for key, value in reference["fnmr_at_fmr"].items():
        if value is None:
            assert out["fnmr_at_fmr"][key] is None
        else:
            assert out["fnmr_at_fmr"][key] == {"fnmr": value["fnmr"], "threshold": pytest.approx(value["threshold"])}
    assert out["rank1"] == pytest.approx(metrics.rank1(vectors, labels))
    assert out["dir_at_fpir_1e-2"] == pytest.approx(metrics.dir_at_fpir(vectors, labels, 1e-2)["dir"])
    assert 0.5 < out["dir_at_fpir_1e-2"] <= out["rank1"] <= 1.0
    assert cv2.imread(str(plot)).shape == (500, 1200, 3)


# ---------------------------------------------------------------------------------------------------- cache


def test_cache_round_trip_and_persistence(tmp_path: Path) -> None:
    path = tmp_path / "c" / "e.sqlite"
    vector = np.arange(8, dtype=np.float32) / 10
    with EmbeddingCache(path) as cache:
        assert cache.get("aa", "fp") == (False, None, None)
        cache.put("aa", "fp", vector)
        cache.put("bb", "fp", None, "no face found")
    with EmbeddingCache(path) as cache:  # reopened: what was put is on disk
        found, got, reason = cache.get("aa", "fp")
        assert found and reason is None and got is not None
        np.testing.assert_array_equal(got, vector)
        assert got.dtype == np.float32
        assert cache.get("bb", "fp") == (True, None, "no face found")
        assert cache.get("aa", "other-pipeline") == (False, None, None)
        assert (cache.hits, cache.misses) == (2, 1)
    cache.close()  # twice is fine


def test_disabled_cache_is_a_no_op() -> None:
    cache = EmbeddingCache(None)
    cache.put("aa", "fp", np.ones(3, np.float32))
    assert cache.get("aa", "fp") == (False, None, None) and not cache.enabled
    cache.close()


def test_corrupt_cache_is_moved_aside_and_recreated(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "e.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.WARNING, logger="kiosk.lab.cache"), EmbeddingCache(path) as cache:
        assert cache.enabled
        cache.put("aa", "fp", np.ones(4, np.float32))
        assert cache.get("aa", "fp")[0]
    assert "unreadable" in caplog.text
    aside = list(tmp_path.glob("e.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not a database")
    with sqlite3.connect(path) as db:  # the new file is a real database again
        assert db.execute("SELECT count(*) FROM embeddings").fetchone() == (1,)
    db.close()


def test_cache_corrupted_while_open_recovers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "e.sqlite"
    with EmbeddingCache(path) as cache:
        for k in range(300):
            cache.put(f"{k:064x}", "fp", np.full(128, k, np.float32))
        cache.commit()
        path.write_bytes(b"\0garbage" * 4096)  # someone overwrote it under our feet
        with caplog.at_level(logging.WARNING, logger="kiosk.lab.cache"):
            assert cache.get(f"{5:064x}", "fp") == (False, None, None)  # a miss, never an exception
        assert "unreadable" in caplog.text and cache.enabled
        cache.put("new", "fp", np.ones(2, np.float32))
        assert cache.get("new", "fp")[0]
    assert len(list(tmp_path.glob("e.sqlite.corrupt-*"))) == 1


def test_default_cache_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KIOSK_CACHE_DIR", str(tmp_path / "k"))
    assert default_cache_path() == tmp_path / "k" / "embeddings.sqlite"
    monkeypatch.delenv("KIOSK_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_path() == tmp_path / "x" / "face-kiosk" / "embeddings.sqlite"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert default_cache_path() == tmp_path / "h" / ".cache" / "face-kiosk" / "embeddings.sqlite"
