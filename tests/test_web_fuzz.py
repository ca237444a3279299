"""Fuzz the JSON API from its own OpenAPI document with schemathesis, logged in as an admin: no request may get a
500, and every response must match what the document says (status code, content type, body schema).

The app is a hub's (two doors in its tables, a scripted ``send_command``), so the Doors routes are fuzzed too.
Bounded and deterministic: a few examples per operation (positive and negative data), hypothesis derandomised,
no example database. Left out: the SSE stream (it never ends by design; tests/test_web_events.py covers it) and the
session routes (a fuzzed DELETE /api/session would log the fuzzer out; tests/test_web_security.py covers them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import checks
from schemathesis.generation import GenerationMode

from kiosk.errors import DoorNoAnswerError
from kiosk.web.app import create_app
from tests.doors_helpers import ScriptedCommands, make_hub
from tests.web_helpers import PASSWORD, make_services
from tests.webapi_support import api_config, client_for, powell

EXAMPLES = 8
SKIP = {"/api/events/stream", "/api/session"}
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


@pytest.mark.slow
def test_api_fuzzed_from_its_openapi_document(tmp_path: Path, pipeline: Any) -> None:
    services = make_services(tmp_path, api_config(tmp_path))
    services.use_pipeline(pipeline)
    services.accounts.add("ada", "admin", PASSWORD)
    make_hub(services)  # a hub's admin app: the Doors routes answer with doors (door "back" does not answer)
    services.fleet_command = commands = ScriptedCommands()
    commands.replies["back"] = DoorNoAnswerError("door back did not answer (offline, or not this site's)")
    app = create_app(services)
    with client_for(services, "ada") as admin:
        # Something to find: a person with templates, events, a backup.
        admin.post("/api/people", data={"name": "Colin Powell"}, files=[("photos", p) for p in powell(1, 2)])
        admin.post("/api/backups")
        cookie = admin.cookies.get("kiosk_session")
        headers = {"Cookie": f"kiosk_session={cookie}", "X-CSRF-Token": admin.headers["X-CSRF-Token"]}
    assert cookie
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    tried = 0
    for operation in operations:
        if operation.path in SKIP:
            continue
        strategy = st.one_of(
            operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
            operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
        )

        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: Any) -> None:
            nonlocal tried
            tried += 1
            case.call_and_validate(headers=headers, checks=CHECKS)

        run()
    assert tried >= 15 * 2
    services.close()
