"""Shared fixtures: real models, real photos from KIOSK_TEST_DATA, and the CI rule that a skip is a failure."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from tests.browser import axe_check, browser, live_server, page, viewport  # noqa: F401 (fixtures for browser tests)
from tests.fleet_kit import broker  # noqa: F401 (the fleet tests' nats-server)

if TYPE_CHECKING:
    from gpiozero.pins.mock import MockFactory

    from kiosk.gallery import Gallery

ROOT = Path(__file__).resolve().parents[1]


def test_data_dir() -> Path:
    return Path(os.environ.get("KIOSK_TEST_DATA", ROOT / ".." / "shared" / "data" / "faces")).resolve()


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    d = test_data_dir()
    if not (d / "lfw" / "labels.csv").is_file():
        pytest.skip(f"KIOSK_TEST_DATA not found at {d}: real-photo tests need the shared face data")
    return d


MINIFASNET_FILES = ("2.7_80x80_MiniFASNetV2.pth", "4_0_0_80x80_MiniFASNetV1SE.pth", "reference/expected.json")


@pytest.fixture(scope="session")
def minifasnet_dir() -> Path:
    """The user-supplied MiniFASNet checkpoints ($KIOSK_MINIFASNET_DIR, else ../shared/data/models/minifasnet)."""
    pytest.importorskip("torch", reason="the tools extra (torch) converts the MiniFASNet checkpoints")
    from tools.models.convert.minifasnet import default_checkpoint_dir

    d = default_checkpoint_dir()
    if not all((d / name).is_file() for name in MINIFASNET_FILES):
        pytest.skip(f"MiniFASNet checkpoints not found at {d} (set KIOSK_MINIFASNET_DIR)")
    return d


@pytest.fixture(scope="session")
def minifasnet_models(tmp_path_factory: pytest.TempPathFactory, minifasnet_dir: Path) -> Path:
    """The repository's manifest plus minifasnet_v2 / minifasnet_v1se, converted once into a temporary folder."""
    from tools.models.convert.minifasnet import build_minifasnet_models

    return build_minifasnet_models(tmp_path_factory.mktemp("minifasnet"), minifasnet_dir)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """With KIOSK_FAIL_ON_SKIP=1 (set by .ci/run) a skipped test is reported as a failure."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("KIOSK_FAIL_ON_SKIP") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (KIOSK_FAIL_ON_SKIP=1): {reason}"


@pytest.fixture()
def factory() -> Iterator[MockFactory]:
    """gpiozero's mock pin factory (the dev extra): each pin keeps its whole state history for relay assertions."""
    mock = pytest.importorskip("gpiozero.pins.mock", reason="gpiozero (dev extra) is needed for the mock relay")
    f = mock.MockFactory()
    yield f
    f.close()


@pytest.fixture()
def fresh_db() -> Iterator[Gallery]:
    """An empty, migrated in-memory gallery."""
    from kiosk.gallery import Gallery

    with Gallery(":memory:") as g:
        yield g


@pytest.fixture()
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """``cli(*argv)`` runs ``kiosk argv...`` in-process and returns (exit code, stdout, stderr)."""
    from tests.helpers import run_main

    return functools.partial(run_main, capsys)


@pytest.fixture(scope="session")
def pipeline():
    from kiosk.config import parse_config
    from kiosk.recognition.pipeline import Pipeline

    return Pipeline.from_config(parse_config({}))


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[..., ::-1])


@pytest.fixture(scope="session")
def cameraman() -> np.ndarray:
    import cv2
    from skimage import data

    return np.ascontiguousarray(cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2BGR))
