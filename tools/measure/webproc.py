"""``kiosk web`` (or any command) as a child process for the measuring tools and the tests: its standard error
collected line by line in a thread, and stopped by its own PID — SIGTERM, then SIGKILL after ``stop_s``."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass


@dataclass
class ChildProcess:
    proc: subprocess.Popen[str]
    lines: list[str]  # its standard error so far, one entry per line

    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout_s: float = 60.0) -> re.Match[str] | None:
        """The first stderr line matching ``pattern``, waiting for it up to ``timeout_s``; None when the time is up
        or the process ended without printing it."""
        deadline = time.monotonic() + timeout_s
        while True:
            for line in list(self.lines):
                if m := re.search(pattern, line):
                    return m
            if time.monotonic() >= deadline or self.proc.poll() is not None:
                # the reader may lag the process's exit: one last look
                time.sleep(0.05)
                return next((m for ln in list(self.lines) if (m := re.search(pattern, ln))), None)
            time.sleep(0.02)


@contextlib.contextmanager
def child_process(argv: Sequence[str], env: Mapping[str, str], stop_s: float = 20.0) -> Iterator[ChildProcess]:
    """Run ``argv`` (stdout discarded, stderr collected) for the ``with`` block; stopped at its end if still running."""
    proc = subprocess.Popen(list(argv), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=dict(env))
    assert proc.stderr is not None
    stderr = proc.stderr
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(stderr.readline, "")), daemon=True)
    reader.start()
    try:
        yield ChildProcess(proc, lines)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=stop_s)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        reader.join(timeout=5)
        stderr.close()
