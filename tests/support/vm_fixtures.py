"""pytest fixtures for the QEMU harness; tests/conftest.py loads this module as a plugin
(`pytest_plugins = [..., "tests.support.vm_fixtures"]`).

Environment:
  BAKEGEN_CACHE        cache root (default ~/.cache/bakegen); images under vm-images/
  BAKEGEN_VM_RELEASES  comma-separated releases the VM tests run for (default: bookworm; "all" for every one)
  BAKEGEN_VM_ACCEL     QEMU accelerator (default tcg,thread=multi)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.rootfs import default_cache_dir
from tests.support.vm import VmRun, boot, kill_all_vms
from tests.support.vm_image import RELEASES, Release, VmImage, build_image

REQUIRED_TOOLS = (
    "qemu-system-x86_64",
    "qemu-img",
    "genisoimage",
    "mkfs.vfat",
    "mcopy",
    "mdir",
    "mmdebstrap",
    "mkfs.ext4",
    "debugfs",
    "e2fsck",
)

ImageFactory = Callable[..., VmImage]
BootFactory = Callable[..., VmRun]


def vm_missing_requirements() -> list[str]:
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root (mmdebstrap --mode=root)")
    return missing


# What the VM tests boot unless asked for more: one release, the one with the oldest cloud-init (22.4), which every
# path (Azure's form, bootstrap, changed script, wrong release) needs. Trixie doubled CI's VM time (24 -> 51 min on
# the 2-core builder of 2026-12-02, whose QEMU/TCG ran at half its earlier speed); its script runs natively in the
# root-filesystem tests. BAKEGEN_VM_RELEASES=all boots both.
DEFAULT_VM_RELEASES: tuple[Release, ...] = ("bookworm",)


def vm_releases() -> tuple[Release, ...]:
    """Releases selected by BAKEGEN_VM_RELEASES (bookworm by default, `all` for every one), for parametrize."""
    wanted = os.environ.get("BAKEGEN_VM_RELEASES", "")
    if not wanted.strip():
        return DEFAULT_VM_RELEASES
    if wanted.strip() == "all":
        return RELEASES
    chosen = tuple(r for r in RELEASES if r in {w.strip() for w in wanted.split(",")})
    return chosen


@pytest.fixture(scope="session")
def vm_cache_dir() -> Path:
    return default_cache_dir()


@pytest.fixture(scope="session")
def vm_image_factory(vm_cache_dir: Path) -> ImageFactory:
    """`vm_image_factory("bookworm", extra_ca=[...], arch="amd64")` -> VmImage, built once and cached."""
    missing = vm_missing_requirements()
    if missing:
        pytest.skip(f"VM harness needs: {', '.join(missing)}")
    built: dict[tuple[str, tuple[Path, ...], str], VmImage] = {}

    def factory(release: Release, extra_ca: Sequence[Path] = (), arch: str = "amd64") -> VmImage:
        key = (release, tuple(Path(p) for p in extra_ca), arch)
        if key not in built:
            built[key] = build_image(release, vm_cache_dir, extra_ca, arch)
        return built[key]

    return factory


@pytest.fixture
def vm_boot(tmp_path: Path) -> Iterator[BootFactory]:
    """`vm_boot(image, user_data, **boot_kwargs)` -> VmRun, with run files under tmp_path.

    Every QEMU started is killed at teardown, whatever the test did.
    """
    count = 0

    def run(image: VmImage, user_data: str, **kwargs: Any) -> VmRun:
        nonlocal count
        count += 1
        kwargs.setdefault("run_dir", tmp_path / f"vm-{count}")
        return boot(image, user_data, **kwargs)

    try:
        yield run
    finally:
        kill_all_vms()
