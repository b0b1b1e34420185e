"""pytest fixtures for running generated provisioning for real (see tests/conftest_support.md).

Import them into tests/conftest.py; none is autouse.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.mirror import Mirror
from tests.support.rootfs import Chroot, Release, build_rootfs, default_cache_dir

MIRROR_TOOLS = {
    "gpg": "gnupg",
    "gpgconf": "gnupg",
    "openssl": "openssl",
    "dpkg-deb": "dpkg",
    "apt-ftparchive": "apt-utils",
}
ROOTFS_TOOLS = {"mmdebstrap": "mmdebstrap", "chroot": "coreutils", "mount": "mount", "tar": "tar"}


def _skip_unless_tools(tools: dict[str, str]) -> None:
    missing = [f"{tool} (apt-get install {package})" for tool, package in tools.items() if shutil.which(tool) is None]
    if missing:
        pytest.skip("missing: " + ", ".join(missing))


def _skip_unless_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("root filesystems and chroots need root")
    _skip_unless_tools(ROOTFS_TOOLS)


@pytest.fixture(scope="session")
def bakegen_cache_dir() -> Path:
    """$BAKEGEN_CACHE or ~/.cache/bakegen (root filesystem tarballs live here)."""
    return default_cache_dir()


@pytest.fixture(scope="session")
def rootfs_tarball(bakegen_cache_dir: Path) -> Callable[[Release], Path]:
    """Factory: release -> cached tarball (built on first use, ~50 s; then ~0.1 s)."""
    _skip_unless_root()
    built: dict[Release, Path] = {}

    def get(release: Release) -> Path:
        if release not in built:
            built[release] = build_rootfs(release, bakegen_cache_dir)
        return built[release]

    return get


@pytest.fixture(scope="session")
def bookworm_rootfs(rootfs_tarball: Callable[[Release], Path]) -> Path:
    return rootfs_tarball("bookworm")


@pytest.fixture(scope="session")
def trixie_rootfs(rootfs_tarball: Callable[[Release], Path]) -> Path:
    return rootfs_tarball("trixie")


@pytest.fixture
def make_chroot(rootfs_tarball: Callable[[Release], Path]) -> Iterator[Callable[..., Chroot]]:
    """Factory: make_chroot("bookworm", block_services=True) -> an entered Chroot.

    Every chroot made is torn down (unmounted, deleted) when the test ends, pass or fail.
    """
    with ExitStack() as stack:

        def make(release: Release, *, block_services: bool = True) -> Chroot:
            return stack.enter_context(Chroot(rootfs_tarball(release), block_services=block_services))

        yield make


@pytest.fixture
def bookworm_chroot(make_chroot: Callable[..., Chroot]) -> Chroot:
    return make_chroot("bookworm")


@pytest.fixture
def trixie_chroot(make_chroot: Callable[..., Chroot]) -> Chroot:
    return make_chroot("trixie")


@pytest.fixture(scope="session")
def standin_mirror_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    """One stand-in mirror (keys, packages, server) for the whole session; prefer `standin_mirror`."""
    _skip_unless_tools(MIRROR_TOOLS)
    mirror = Mirror.start(tmp_path_factory.mktemp("standin-mirror"))
    try:
        yield mirror
    finally:
        mirror.stop()


@pytest.fixture
def standin_mirror(standin_mirror_session: Mirror) -> Iterator[Mirror]:
    """The session's mirror, in `normal` mode with an empty request log, reset after the test."""
    standin_mirror_session.reset()
    yield standin_mirror_session
    standin_mirror_session.reset()
