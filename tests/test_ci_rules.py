"""The CI rule that a skipped test is a failure (KIOSK_FAIL_ON_SKIP=1, set by .ci/run) really applies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]


def _project(pytester: pytest.Pytester) -> None:
    shutil.copy(ROOT / "tests" / "conftest.py", pytester.path / "conftest.py")
    pytester.makepyfile(
        test_sample="""
        import pytest

        def test_ok():
            assert True

        def test_needs_data():
            pytest.skip("KIOSK_TEST_DATA not found")
        """
    )


def test_skip_is_a_failure_in_ci(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    _project(pytester)
    monkeypatch.setenv("KIOSK_FAIL_ON_SKIP", "1")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*skipped in CI (KIOSK_FAIL_ON_SKIP=1)*KIOSK_TEST_DATA not found*"])


def test_skip_is_a_skip_for_users(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    _project(pytester)
    monkeypatch.delenv("KIOSK_FAIL_ON_SKIP", raising=False)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=1)


def test_ci_script_sets_the_rule_and_runs_the_readme_command() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "export KIOSK_FAIL_ON_SKIP=1" in script
    assert "make test" in script and "make test" in readme and "make demo" in readme
