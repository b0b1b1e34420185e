"""Shared pytest wiring: the fixtures of the test infrastructure, and 'a skip in CI is a failure'."""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

pytest_plugins = ["tests.support.fixtures", "tests.support.vm_fixtures"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    """In CI every validator and tool must be there: a test skipped for a missing one fails instead."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must run everything: {reason}"
