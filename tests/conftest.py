"""Shared pytest wiring: the fixtures of the test infrastructure, and 'a skip in CI is a failure'."""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

pytest_plugins = ["tests.support.fixtures", "tests.support.vm_fixtures"]


# Self-tests of the slow test infrastructure (root filesystems, VMs): the end-to-end tests exercise the same
# code on bakegen's real outputs, so CI's time goes to those. Run them with: python3 -m pytest -m infra
INFRA_SELF_TESTS = ("test_support_infra.py", "test_vm_harness.py")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        slow = item.get_closest_marker("rootfs") or item.get_closest_marker("vm")
        if item.path.name in INFRA_SELF_TESTS and slow:
            item.add_marker(pytest.mark.infra)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    """In CI every validator and tool must be there: a test skipped for a missing one fails instead."""
    outcome: Any = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must run everything: {reason}"
