"""The admin pages in ``python -m tools screenshots``: made-up names and the public-domain astronaut only."""

from __future__ import annotations

import concurrent.futures
import struct
from pathlib import Path

import pytest

from tools.measure import admin_screens, screenshots


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_admin_pages_are_in_the_shot_list() -> None:
    names = {s.name for s in screenshots.PAGES if s.app == "admin"}
    assert {
        "admin-login",
        "admin-people",
        "admin-person",
        "admin-enrol-verdicts",
        "admin-events",
        "admin-system",
    } <= names


def test_the_dataset_uses_no_test_data(tmp_path: Path) -> None:
    """Nothing of KIOSK_TEST_DATA (LFW and the rest) may reach the screenshots: they are committed to the docs."""
    source = Path(admin_screens.__file__).read_text()
    for forbidden in ("KIOSK_TEST_DATA", "shared/data", "lfw", "faces_dir"):
        assert forbidden not in source
    photos = admin_screens.astronaut_photos()
    assert set(photos) == {
        "astronaut.jpg",
        "astronaut-mirrored.jpg",
        "astronaut-blurred.jpg",
        "two-faces.jpg",
        "coffee.jpg",
    }


@pytest.mark.browser
@pytest.mark.slow
def test_renders_the_admin_shots(tmp_path: Path) -> None:
    shots = ["admin-login", "admin-person", "admin-enrol-verdicts"]
    # its own thread: Playwright's sync API refuses to start where another test's browser fixture already runs one
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert pool.submit(screenshots.main, ["--out", str(tmp_path), "--only", *shots]).result() == 0
    assert png_size(tmp_path / "admin-login.png") == (1280, 800)
    assert png_size(tmp_path / "admin-enrol-verdicts.png") == (1280, 1100)
