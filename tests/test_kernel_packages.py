"""Kernel header packages per kernel line, with the generated script's own function (vendor audit A5).

Amazon Linux 2023 images run kernel 6.1, 6.12 or 6.18, and name their packages per line: kernel-devel on 6.1,
kernel6.12-devel on 6.12 (distros/evidence: al2023.kernel612.package_names). The trace harness's AL2023 image runs
6.1; this runs the generated function for each line.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import script_functions


def patterns(functions: Path, kernel: str) -> list[str]:
    done = subprocess.run(
        ["bash", "-c", 'source "$1"; kernel_package_patterns "$2"', "k", str(functions), kernel],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.split()


@pytest.mark.parametrize(("distro", "kernel", "expected"), [
    ("amzn2023", "6.1.158-180.294.amzn2023.x86_64",
     ["kernel-devel-{kernel}", "kernel-headers-{kernel}", "kernel-modules-extra-{kernel}"]),
    ("amzn2023", "6.12.53-69.119.amzn2023.x86_64",
     ["kernel6.12-devel-{kernel}", "kernel6.12-headers-{kernel}", "kernel6.12-modules-extra-{kernel}",
      "kernel6.12-modules-extra-common"]),
    ("amzn2023", "6.18.2-1.1.amzn2023.aarch64",
     ["kernel6.18-devel-{kernel}", "kernel6.18-headers-{kernel}", "kernel6.18-modules-extra-{kernel}",
      "kernel6.18-modules-extra-common"]),
    ("amzn2023", "6.120.0-1.amzn2023.x86_64",  # not the 6.12 line: a prefix ends at a dot
     ["kernel-devel-{kernel}", "kernel-headers-{kernel}", "kernel-modules-extra-{kernel}"]),
    ("rhel9", "5.14.0-570.58.1.el9_6.x86_64", ["kernel-devel-{kernel}"]),
    ("debian12", "6.1.0-41-cloud-amd64", ["linux-headers-{kernel}"]),
])  # fmt: skip
def test_kernel_packages_follow_the_kernel_line(distro: str, kernel: str, expected: list[str], tmp_path: Path) -> None:
    assert patterns(script_functions(distro, tmp_path), kernel) == expected
