"""The README's first set-up command works on a stock Debian 12 (issue 14), not only where Python is not the system's.

Debian 12, Debian 13 and Ubuntu 24.04 refuse `pip install` into the system Python (PEP 668) and ship no pip; the
README's command makes a virtual environment instead. This runs that line, as the README writes it, as root in a
clean Debian 12 root filesystem (Debian's python3 and nothing of pip or venv; the archive and PyPI reachable), on
a copy of the project without out/, and checks that the matrix it writes is byte for byte the committed out/.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.rootfs import Chroot

pytestmark = pytest.mark.rootfs

REPO = Path(__file__).resolve().parent.parent


def readme_setup_command() -> str:
    """The first command of the README's Set-up block (the one that installs and generates)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("## Set-up", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    first = block.splitlines()[0]
    return first.split("  #", 1)[0].strip()


def test_the_readme_names_a_virtual_environment() -> None:
    command = readme_setup_command()
    assert "python3 -m venv" in command and "bakegen all --format all" in command, command
    assert not command.startswith("pip install"), "pip install into Debian's Python fails (PEP 668)"


def test_readme_setup_on_stock_debian12(bookworm_chroot: Chroot) -> None:
    chroot = bookworm_chroot
    assert chroot.run("python3 -m pip --version", check=False).returncode != 0, "the image must have no pip"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout
    project = [f for f in files.decode().split("\0") if f and not f.startswith("out/")]
    target = chroot.host_path("/src")
    target.mkdir()
    archive = subprocess.run(
        ["tar", "-C", str(REPO), "-cf", "-", "--", *project], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-C", str(target), "-xf", "-"], input=archive, check=True, capture_output=True)
    command = readme_setup_command()
    done = chroot.run(f"cd /src && {command}", timeout=1200, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    written = sorted(p.relative_to(target / "out") for p in (target / "out").rglob("*") if p.is_file())
    committed = sorted(p.relative_to(REPO / "out") for p in (REPO / "out").rglob("*") if p.is_file())
    assert written == committed
    different = [str(p) for p in written if (target / "out" / p).read_bytes() != (REPO / "out" / p).read_bytes()]
    assert different == [], different
