"""``python -m tools screenshots``: renders the door screen's states into PNGs of the shot's size."""

from __future__ import annotations

import concurrent.futures
import struct
from pathlib import Path
from typing import Any

import pytest

from tools.errors import ToolError
from tools.measure import screenshots


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_unknown_shot_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match="unknown shots: nope") as info:
        screenshots.main(["--out", str(tmp_path), "--only", "nope"])
    assert info.value.code == 2


def in_thread(fn: Any, *args: Any) -> Any:
    """Playwright's sync API refuses to start in a thread where the browser tests' session fixture runs one."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


def test_unknown_environment_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match="no environment 'nowhere'"):
        in_thread(screenshots.take, [screenshots.Shot("x", "/", app="nowhere")], tmp_path)


def test_every_shot_has_a_unique_name() -> None:
    names = [s.name for s in screenshots.PAGES]
    assert len(names) == len(set(names)) and {"door-idle", "door-blink", "door-out-of-service"} <= set(names)


@pytest.mark.browser
@pytest.mark.slow
def test_renders_the_chosen_shots_at_their_sizes(tmp_path: Path) -> None:
    shots = ["door-blink-800x480", "door-welcome-zh-Hans"]
    assert in_thread(screenshots.main, ["--out", str(tmp_path), "--only", *shots]) == 0
    assert png_size(tmp_path / "door-blink-800x480.png") == (800, 480)
    assert png_size(tmp_path / "door-welcome-zh-Hans.png") == (1024, 600)
