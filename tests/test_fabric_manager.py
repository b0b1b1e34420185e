"""NVIDIA's fabric manager for NVSwitch systems (issue 12, vendor audit A6): the package each driver source names
it by (distros/evidence/fabric-manager.yaml), at the driver's exact version, held with it, started only where the
PCI bus has an NVSwitch (--fabric-manager auto), everywhere (on), or not installed (off).

The runs are the trace harness's (tests/support/trace.py: stub package managers over a fake root, their
repositories shaped by the vendor evidence): whether the real fabric manager starts on a real HGX board cannot be
proven here (no NVSwitch machine is lent), and is said so in the README.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from generator.errors import UsageError
from generator.model import Format
from tests.helpers import render_files, render_script, run_cli
from tests.support.trace import FakeMachine, KeyRing, Machine

DROPIN = "/etc/systemd/system/nvidia-fabricmanager.service.d/bakegen.conf"
UDEV_RULE = "/etc/udev/rules.d/71-bakegen-nvswitch.rules"


@pytest.mark.parametrize(
    ("distro", "options", "package"),
    [
        ("rhel9", {}, "nvidia-fabricmanager"),
        ("rhel9", {"driver_branch": "570"}, "nvidia-fabric-manager"),  # renamed at 580
        ("amzn2023", {}, "nvidia-fabricmanager"),
        ("ubuntu24.04", {}, "nvidia-fabricmanager-580"),  # Canonical's archive: the branch in the name
        ("ubuntu24.04", {"driver_source": "cuda-repo"}, "nvidia-fabricmanager"),
        ("ubuntu24.04", {"driver_source": "cuda-repo", "driver_branch": "570"}, "nvidia-fabricmanager-570"),
        ("debian12", {"driver_source": "cuda-repo"}, "nvidia-fabricmanager"),
        ("debian12", {}, None),  # Debian's own driver: Debian's archive has no fabric manager
        ("sles15", {}, None),  # UNVERIFIED name in the sles15 CUDA repository: none, the safer choice
        ("rhel9", {"fabric_manager": "off"}, None),
    ],
)
def test_the_package_follows_the_source_and_branch(distro: str, options: dict[str, str], package: str | None) -> None:
    script = render_script(distro, **options)
    found = re.search(r"^readonly FABRIC_MANAGER=(\S+) FABRIC_MANAGER_MODE=(\S+)$", script, re.M)
    if package is None:
        assert found is None and "install_fabric_manager" not in script
    else:
        assert found is not None and found.groups() == (package, options.get("fabric_manager", "auto"))
        assert "\n  install_fabric_manager\n" in script


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["debian12", "--fabric-manager", "on"], "debian12's debian-nonfree driver source has no fabric manager"),
        (["sles15", "--fabric-manager", "on"], "sles15's cuda-repo driver source has no fabric manager"),
        (["rhel9", "--no-driver", "--fabric-manager", "off"], "--no-driver cannot be combined"),
        (["rhel9", "--fabric-manager", "maybe"], "invalid choice: 'maybe'"),
    ],
)
def test_impossible_requests_are_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    result = run_cli(*args, "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "out").exists()


def test_on_is_refused_in_process_too() -> None:
    with pytest.raises(UsageError, match="has no fabric manager for branch 535"):
        render_files("debian12", Format.SHELL, fabric_manager="on")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyRing]:
    ring = KeyRing(tmp_path_factory.mktemp("keys"))
    try:
        yield ring
    finally:
        ring.close()


@pytest.fixture
def machine_dir(tmp_path: Path) -> Path:
    return tmp_path


def machine(base: Path, keys: KeyRing, distro: str, spec: Machine, **options: Any) -> FakeMachine:
    return FakeMachine(base, keys, distro, machine=spec, **options)


def test_hgx_gets_it_at_the_drivers_version_and_started(keys: KeyRing, machine_dir: Path) -> None:
    """A running HGX H200 (an H200 and four NVSwitches on the PCI bus): installed at the driver's exact version,
    locked at that version as the driver is (dnf versionlock: NVIDIA's fabric manager is no module stream artifact),
    enabled, started now that the driver is loaded; the second run leaves it running and changes nothing."""
    with machine(machine_dir, keys, "rhel9", Machine(booted=True, gpu=True, nvswitches=4)) as fake:
        first, second = fake.run(), fake.run()
    assert first.rc == 0, first.stderr[-3000:]
    lines = [c.line() for c in first.actions()]
    install = next(i for i, line in enumerate(lines) if line.endswith("install nvidia-fabricmanager-580.159.04"))
    assert lines.index("systemctl restart nvidia-fabricmanager.service") > install, lines
    locks = {lock["name"]: lock["evr"] for lock in first.state_after.get("versionlock", [])}
    assert locks.get("nvidia-fabricmanager", "").startswith("0:580.159.04-"), locks
    assert first.state_after["installed"]["nvidia-fabricmanager"]["version"].startswith("580.159.04-")
    assert "nvidia-fabricmanager.service" in first.state_after.get("active_units", []), first.state_after
    changed = {c.path for c in first.changes}
    assert {DROPIN, UDEV_RULE, "/run/bakegen/nvswitch"} <= changed, sorted(changed)
    assert second.rc == 0 and not [
        c.line() for c in second.actions() if "fabricmanager" in c.line() and "enable" not in c.line()
    ]


def test_without_nvswitches_it_is_installed_but_stays_stopped(keys: KeyRing, machine_dir: Path) -> None:
    with machine(machine_dir, keys, "ubuntu24.04", Machine(booted=True, gpu=True)) as fake:
        run = fake.run()
    assert run.rc == 0, run.stderr[-3000:]
    assert "no NVSwitch on this machine: the fabric manager stays stopped" in run.stderr
    assert "nvidia-fabricmanager-580" in run.state_after["installed"]
    assert not [c for c in run.actions() if "restart nvidia-fabricmanager" in c.line()]
    assert "/run/bakegen/nvswitch" not in {c.path for c in run.changes}


def test_a_repository_without_it_is_a_note_or_with_on_a_failure(keys: KeyRing, machine_dir: Path) -> None:
    """fedora43: the evidence shows no fabric manager in NVIDIA's fedora43 folder, so its stand-in has none."""
    (machine_dir / "auto").mkdir()
    (machine_dir / "on").mkdir()
    with machine(machine_dir / "auto", keys, "fedora43", Machine()) as fake:
        auto = fake.run()
    assert auto.rc == 0, auto.stderr[-3000:]
    assert (
        "note: no nvidia-fabricmanager at the driver's version 580.159.04 in the configured repositories: "
        "no fabric manager (an NVSwitch system needs one)"
    ) in auto.stderr
    with machine(machine_dir / "on", keys, "fedora43", Machine(), fabric_manager="on") as fake:
        on = fake.run()
    assert on.rc == 5, on.stderr[-3000:]
    assert (
        "no nvidia-fabricmanager at the driver's version 580.159.04 in the configured repositories "
        "(--fabric-manager on)"
    ) in on.stderr


def test_on_starts_it_without_the_condition(keys: KeyRing, machine_dir: Path) -> None:
    with machine(machine_dir, keys, "rhel9", Machine(booted=True, gpu=True), fabric_manager="on") as fake:
        run = fake.run()
    assert run.rc == 0, run.stderr[-3000:]
    changed = {c.path for c in run.changes}
    assert DROPIN not in changed and UDEV_RULE not in changed, sorted(changed)
    assert "systemctl restart nvidia-fabricmanager.service" in [c.line() for c in run.actions()]
