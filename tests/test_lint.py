"""bakegen's own code stays ruff- and mypy-clean: the package, the tests, the benchmarks and the GPU check it ships
(mkosi's tests/test_linters.py does the same)."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO


def test_ruff() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "generator", "tests", "bench", "templates/files/bakegen-gpu-check.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "generator", "tests", "bench"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    """generator/, tests/ and bench/ (pyproject's [tool.mypy] files)."""
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_on_the_trace_stubs() -> None:
    """The trace stubs import each other as top-level modules (they run as scripts): checked from their folder."""
    stubs = REPO / "tests" / "support" / "stubs"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(REPO / "pyproject.toml"),
            "--explicit-package-bases",
            "--cache-dir",
            str(REPO / ".mypy_cache" / "stubs"),
            *sorted(p.name for p in stubs.glob("*.py")),
        ],
        cwd=stubs,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
