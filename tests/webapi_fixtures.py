"""The web API tests' fixtures (a pytest plugin: ``pytest_plugins = ("tests.webapi_fixtures",)``): real services on
tmp_path with the session's pipeline, and clients logged in as the admin "ada" and the viewer "vera"."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from kiosk.web.services import WebServices
from tests.web_helpers import PASSWORD, make_services
from tests.webapi_support import api_config, client_for


@pytest.fixture
def services(tmp_path: Path, pipeline: Any) -> Iterator[WebServices]:
    """Real services on tmp_path: gallery, accounts ("ada" admin, "vera" viewer), the session's pipeline, a scripted
    door link with the loop up (``kiosk.web.scripted.ScriptedLink``)."""
    services = make_services(tmp_path, api_config(tmp_path))
    services.use_pipeline(pipeline)
    services.accounts.add("ada", "admin", PASSWORD)
    services.accounts.add("vera", "viewer", PASSWORD)
    yield services
    services.close()


@pytest.fixture
def admin(services: WebServices) -> Iterator[TestClient]:
    with client_for(services, "ada") as c:
        yield c


@pytest.fixture
def viewer(services: WebServices) -> Iterator[TestClient]:
    with client_for(services, "vera") as c:
        yield c
