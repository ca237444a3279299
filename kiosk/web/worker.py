"""The web app's model worker: a child process that holds the detector and the recogniser, so ``kiosk web`` itself
never loads an onnxruntime session (about 100 MB resident, issue #16) nor decodes an uploaded photo.

Started on first use (a photo enrolment, the System page), it answers one request at a time over a pipe and is
stopped after ``web.worker_idle_s`` without requests; the next request starts a fresh one. A worker that dies
during a request (killed, out of memory, a crash in a native decoder) is a ``WorkerError`` (HTTP 503) for that
request only.

NOTE: ``multiprocessing`` with the "spawn" context, not fork: the web process has threads (uvicorn, the door link,
the thread pool) and an asyncio loop, which a forked child would inherit half-copied. Spawn starts a fresh
interpreter, and its ``Connection`` pickles requests and replies (numpy embeddings included) with no framing code
of our own, where ``subprocess`` + ``python -m`` would need both by hand. The idle timer lives in the web process,
under the request lock, so a worker never exits between a request being sent and being read.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from multiprocessing import get_context
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from kiosk.config import Config
from kiosk.errors import KioskError, WorkerError

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 600.0  # a request longer than this (20 large photos on a Pi take well under a minute) is hung
STOP_TIMEOUT_S = 5.0


# -- the child ------------------------------------------------------------------------------------------------------


def _pipeline(cfg: Config, held: dict[str, Any]) -> Any:
    if "pipeline" not in held:
        from kiosk.recognition.pipeline import Pipeline

        held["pipeline"] = Pipeline.from_config(cfg)
    return held["pipeline"]


def _handle(cfg: Config, held: dict[str, Any], request: tuple[Any, ...]) -> Any:
    op = request[0]
    if op == "judge":
        from kiosk.web.people import judge_photo

        _, photos, faces = request
        pipeline = _pipeline(cfg, held)
        return [judge_photo(pipeline, cfg, data, name, faces.get(i)) for i, (name, data) in enumerate(photos)]
    if op == "checks":
        from kiosk.checks import check_results

        try:
            pipeline = _pipeline(cfg, held)
        except KioskError:
            pipeline = None  # check_results loads the models itself and reports what is wrong with them
        return check_results(cfg, pipeline=pipeline)
    raise WorkerError(f"model worker: unknown request {op!r}")


def serve(conn: Connection, cfg: Config) -> None:
    """The worker's loop: one request, one reply, until told to stop or the web process is gone."""
    # NOTE: Ctrl-C reaches the whole process group; the web process stops this worker itself (WebServices.close).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    held: dict[str, Any] = {}
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return  # the web process went away
        if request[0] == "stop":
            return
        try:
            reply: tuple[str, Any] = ("ok", _handle(cfg, held, request))
        except KioskError as exc:
            reply = ("error", exc)
        except Exception as exc:  # a bug or a library failure: the web process answers 503, the worker lives on
            log.exception("model worker: %s failed", request[0])
            reply = ("error", WorkerError(f"the model worker failed: {type(exc).__name__}: {exc}"))
        conn.send(reply)


# -- the web process's side -----------------------------------------------------------------------------------------


class ModelWorker:
    """The web process's handle on its worker: ``judge`` and ``checks`` start it when needed; ``close`` stops it."""

    def __init__(self, cfg: Config, *, idle_s: float | None = None) -> None:
        self.cfg = cfg
        self.idle_s = cfg.web.worker_idle_s if idle_s is None else idle_s
        self._lock = threading.Lock()
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._timer: threading.Timer | None = None
        self._last = 0.0
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The running worker's process id; None when there is none."""
        process = self._process
        return process.pid if process is not None and process.is_alive() else None

    def judge(self, photos: list[tuple[str, bytes]], faces: dict[int, int]) -> list[Any]:
        """Per ``(filename, bytes)``: ``kiosk.web.people.judge_photo``'s result (``faces`` picks among several)."""
        result: list[Any] = self._call(("judge", photos, faces))
        return result

    def checks(self) -> list[dict[str, Any]]:
        """``kiosk.checks.check_results`` run in the worker, with its loaded models."""
        result: list[dict[str, Any]] = self._call(("checks",))
        return result

    def _call(self, request: tuple[Any, ...]) -> Any:
        with self._lock:
            if self._closed:
                raise WorkerError("the model worker is stopped: the web app is shutting down")
            if self._timer is not None:
                self._timer.cancel()
            if self._process is None or not self._process.is_alive():
                self._start()
            assert self._conn is not None and self._process is not None
            try:
                self._conn.send(request)
                if not self._conn.poll(REQUEST_TIMEOUT_S):
                    self._process.kill()
                    raise EOFError
                status, value = self._conn.recv()
            except (EOFError, OSError):
                self._process.join(STOP_TIMEOUT_S)
                code = self._process.exitcode
                self._discard()
                log.error("model worker stopped during a %s request (exit code %s)", request[0], code)
                raise WorkerError(
                    f"the model worker stopped during the request (exit code {code}); try again"
                ) from None
            self._last = time.monotonic()
            self._arm()
        if status == "error":
            raise value
        return value

    def _start(self) -> None:
        context = get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(target=serve, args=(child, self.cfg), name="kiosk-web-worker", daemon=True)
        process.start()
        child.close()
        self._process, self._conn = process, parent
        log.info("model worker started (pid %s)", process.pid)

    def _arm(self) -> None:
        self._timer = threading.Timer(self.idle_s, self._idle)
        self._timer.daemon = True
        self._timer.start()

    def _idle(self) -> None:
        with self._lock:
            if self._process is not None and time.monotonic() - self._last >= self.idle_s * 0.99:
                log.info("model worker idle for %gs: stopped", self.idle_s)
                self._stop()

    def _stop(self) -> None:
        if self._conn is not None and self._process is not None and self._process.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send(("stop",))
            self._process.join(STOP_TIMEOUT_S)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(STOP_TIMEOUT_S)
        self._discard()

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._process, self._conn = None, None

    def close(self) -> None:
        """Stop the worker (if running) and refuse further requests; safe to call twice."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
            self._stop()


class InlineWorker:
    """The same answers as ``ModelWorker``, computed in this process with a pipeline already loaded: for tests and
    tools that hold one anyway (the models then *are* in this process)."""

    def __init__(self, cfg: Config, pipeline: Any) -> None:
        self.cfg = cfg
        self._held: dict[str, Any] = {"pipeline": pipeline}
        self.pid: int | None = None

    def judge(self, photos: list[tuple[str, bytes]], faces: dict[int, int]) -> list[Any]:
        result: list[Any] = _handle(self.cfg, self._held, ("judge", photos, faces))
        return result

    def checks(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = _handle(self.cfg, self._held, ("checks",))
        return result

    def close(self) -> None:
        """Nothing to stop."""
