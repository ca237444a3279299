"""Helpers several test modules share: ``from tests.helpers import ...``."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kiosk.cli import main


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``cond`` every 5 ms until it holds (True) or ``timeout`` seconds pass (False)."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True


@contextmanager
def no_new_threads(join_timeout: float) -> Iterator[None]:
    """Fail unless every thread started inside the block has ended (each is given ``join_timeout`` s to)."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before]
    for t in leaked:
        t.join(timeout=join_timeout)
    assert not [t for t in leaked if t.is_alive()], f"threads left running: {leaked}"


def config_file(tmp_path: Path, text: str = "") -> Path:
    """A kiosk.yaml with ``data_dir`` in ``tmp_path`` and ``text`` appended."""
    f = tmp_path / "kiosk.yaml"
    f.write_text(f"data_dir: {tmp_path / 'data'}\n{text}")
    return f


def run_main(capsys: pytest.CaptureFixture[str], *argv: str, catch_exit: bool = False) -> tuple[int, str, str]:
    """``kiosk argv...`` in-process: exit code, stdout, stderr.

    With ``catch_exit`` argparse's own exit (``--help``: 0, a usage error: 2) is returned as the exit code; without it
    the SystemExit propagates and fails the test.

    ``main`` runs in a copy of the context: the actor an admin command sets (``kiosk.authz.set_actor``, for the
    process's life in the real CLI) must not follow the test into later ones, whose gallery writes would be audited."""
    try:
        code = contextvars.copy_context().run(main, list(argv))
    except SystemExit as exc:
        if not catch_exit:
            raise
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def run_cli(cfg: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``kiosk --config cfg argv...`` in-process: exit code, stdout, stderr."""
    return run_main(capsys, "--config", str(cfg), *argv)
