"""The web app's model worker (kiosk.web.worker): real models in a spawned child, real LFW photos. It judges, exits
when idle and starts again, turns a death mid-request into a WorkerError (HTTP 503), and the web process that
enrolled through it never imported onnxruntime."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiosk.config import Config
from kiosk.enroll import ImageVerdict, enrolment_model
from kiosk.errors import WorkerError
from kiosk.recognition.pipeline import Pipeline
from kiosk.web.app import error_status
from kiosk.web.people import PhotoVerdict
from kiosk.web.worker import ModelWorker
from tests.webapi_support import corrupt, lfw

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return Config(data_dir=tmp_path / "data")


@pytest.fixture
def worker(cfg: Config) -> Iterator[ModelWorker]:
    w = ModelWorker(cfg, idle_s=60.0)
    yield w
    w.close()


def _wait(predicate: object, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_the_worker_decodes_and_judges_real_photos(worker: ModelWorker) -> None:
    ok, refused = worker.judge([("powell.jpg", lfw("Colin_Powell", 1)), ("bad.jpg", corrupt())], {})
    assert isinstance(ok, tuple)
    verdict, boxes = ok
    assert isinstance(verdict, ImageVerdict) and verdict.accepted and verdict.embedding is not None
    assert boxes == []
    assert isinstance(refused, PhotoVerdict) and refused.code == "unreadable"
    assert worker.pid is not None and worker.pid != os.getpid()


def test_the_worker_exits_when_idle_and_the_next_request_starts_another(cfg: Config) -> None:
    w = ModelWorker(cfg, idle_s=0.5)
    try:
        w.judge([("powell.jpg", lfw("Colin_Powell", 1))], {})
        first = w.pid
        assert first is not None
        assert _wait(lambda: w.pid is None), "the worker did not exit after its idle time"
        with pytest.raises(ProcessLookupError):
            os.kill(first, 0)
        ((verdict, _),) = w.judge([("blair.jpg", lfw("Tony_Blair", 4))], {})
        assert verdict.accepted
        assert w.pid not in (None, first)
    finally:
        w.close()
    assert w.pid is None
    with pytest.raises(WorkerError):
        w.checks()  # closed: refused, nothing started


def test_a_worker_killed_mid_request_is_a_clean_error_and_the_next_request_works(worker: ModelWorker) -> None:
    caught: list[BaseException] = []

    def request() -> None:
        try:
            worker.judge([(f"{i}.jpg", lfw("Colin_Powell", i)) for i in range(1, 6)], {})
        except BaseException as exc:
            caught.append(exc)

    thread = threading.Thread(target=request)
    thread.start()
    assert _wait(lambda: worker.pid is not None)
    pid = worker.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # while it loads the models or judges: the request is in flight either way
    thread.join(60)
    assert len(caught) == 1 and isinstance(caught[0], WorkerError), caught
    assert "stopped during the request" in str(caught[0])
    assert error_status(caught[0]) == 503  # kiosk.web.app's error table
    ((verdict, _),) = worker.judge([("powell.jpg", lfw("Colin_Powell", 1))], {})
    assert verdict.accepted and worker.pid not in (None, pid)


def test_the_system_checks_run_in_the_worker(worker: ModelWorker) -> None:
    checks = {c["check"]: c for c in worker.checks()}
    assert checks["model recognizer"]["ok"] and checks["model detector"]["ok"]


def test_the_enrolment_model_matches_the_pipeline_without_loading_it(cfg: Config, pipeline: Pipeline) -> None:
    model = enrolment_model(cfg)
    assert model.embedder.spec.sha256 == pipeline.embedder.spec.sha256
    assert model.thresholds == pipeline.thresholds


SCRIPT = """
import json, sys
from pathlib import Path
from kiosk import authz
from kiosk.web import people
from tests.web_helpers import make_services
from tests.webapi_support import lfw

services = make_services(Path(sys.argv[1]))
authz.set_actor("web:admin from test")
try:
    person, verdicts = people.enrol_photos(
        services, "Colin Powell", [(f"{i}.jpg", lfw("Colin_Powell", i)) for i in (1, 2, 3)]
    )
    checks = services.worker().checks()
    with services.gallery() as g:
        models = sorted({(t["model_id"], t["model_sha256"]) for t in g.templates(person["id"])})
    print(json.dumps({
        "person": person["name"], "verdicts": [v.code for v in verdicts], "checks_ok": all(c["ok"] for c in checks
        if c["check"].startswith("model")), "models": models, "worker": services.worker().pid,
        "onnxruntime": "onnxruntime" in sys.modules,
    }))
finally:
    services.close()
"""


def test_the_web_process_never_loads_a_model_session(tmp_path: Path, pipeline: Pipeline) -> None:
    lfw("Colin_Powell", 1)  # skips without KIOSK_TEST_DATA
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["person"] == "Colin Powell" and out["verdicts"] == ["ok", "ok", "ok"]
    assert out["checks_ok"] and out["worker"] is not None
    spec = pipeline.embedder.spec
    assert out["models"] == [[spec.id, spec.sha256]]
    assert out["onnxruntime"] is False


def test_worker_idle_s_is_checked_against_its_range() -> None:
    from kiosk.config import parse_config
    from kiosk.errors import ConfigError

    assert parse_config({}).web.worker_idle_s == 120.0
    with pytest.raises(ConfigError, match=r"web\.worker_idle_s"):
        parse_config({"web": {"worker_idle_s": 1}})
