"""What the fuzz modules share: the hypothesis profile, per-property example counts ($KIOSK_FUZZ_EXAMPLES) and the
session-wide example counter printed in pytest's summary."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "kiosk-fuzz",
    deadline=None,
    derandomize=True,  # the same examples on every run: a CI failure reproduces locally
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
_EXAMPLES = int(os.environ.get("KIOSK_FUZZ_EXAMPLES", "0") or 0)


def fuzz(default: int, share: float = 1.0) -> settings:
    """Settings for one property: ``default`` examples, or ``share`` of $KIOSK_FUZZ_EXAMPLES when it is set."""
    n = max(1, int(_EXAMPLES * share)) if _EXAMPLES else default
    return settings(settings.get_profile("kiosk-fuzz"), max_examples=n)


class _Counter:
    """Counts the hypothesis examples run by the fuzz modules; prints the total in pytest's terminal summary."""

    def __init__(self) -> None:
        self.by_module: dict[str, int] = {}

    def add(self, module: str) -> None:
        self.by_module[module] = self.by_module.get(module, 0) + 1

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        parts = ", ".join(f"{m}: {n}" for m, n in sorted(self.by_module.items()))
        total = sum(self.by_module.values())
        terminalreporter.write_line(f"fuzz: {total} hypothesis examples ran ({parts})")


@pytest.fixture(scope="module", autouse=True, name="fuzz_counter")
def fuzz_counter_fixture(request: pytest.FixtureRequest) -> _Counter:
    """One counter per session, shared by the fuzz modules (the first one registers it as a plugin)."""
    counter = request.config.pluginmanager.get_plugin("kiosk-fuzz-counter")
    if counter is None:
        counter = _Counter()
        request.config.pluginmanager.register(counter, "kiosk-fuzz-counter")
    return counter
