"""Run the generated install script for real against fake machines, for every distribution on disk.

The harness (tests/support/trace.py) runs the script as root in a fake root whose package managers and system
tools are recording stubs (tests/support/stubs); keys are throwaway OpenPGP keys that the script verifies with
the real gpg. Each scenario runs the script twice on the same machine:
  - the first run is compared with a readable fixture, tests/fixtures/trace/<scenario>.txt (commands that change
    or fetch something, package and machine state, files), and checked against NVIDIA's documented steps
    (/work/shared/notes/nvidia-facts.md, cited as "fact:" below);
  - the second run must download nothing, install nothing, change no configuration and exit 0.
Refusal paths (not root, another system, another arch, bad keys, network failures, --dry-run) follow.

Regenerate the fixtures after a deliberate template change with
    BAKEGEN_TRACE_REGEN=1 python -m pytest tests/test_trace.py
and review the diff. A bug this suite finds is fixed in the templates, with the scenario that shows it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from generator.model import Family
from generator.render import make_environment, render_script
from tests.helpers import AUDITED_ERRORS, TOOLKIT_PACKAGES, all_distro_ids, descriptor_with
from tests.support.trace import (
    EMBEDDED_MARK,
    FakeMachine,
    KeyRing,
    Machine,
    Run,
    describe_keys,
    describe_run,
    normalizer,
)

FIXTURES = Path(__file__).parent / "fixtures" / "trace"
REGEN = os.environ.get("BAKEGEN_TRACE_REGEN") == "1"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the trace harness runs scripts as root in mount namespaces"),
    pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("gpg") is None, reason="needs unshare, gpg"),
]


# Found by this suite and fixed in the templates since: Fedora/SLES installed the repository's newest driver
# branch, not the requested one (R1: now nvidia-open-580.* / 'nvidia-open<581'); RHEL/AL2023 did not hold a
# pinned toolkit (R2: now dnf versionlock); ubuntu-drivers' hardware detection (U1/U2: the packages
# are installed with apt), AL2023's minimal curl/gnupg2 and kernel-headers (A1/A2), dnf5's versionlock list
# format (F1), the rpm key left after a failed refresh (R3); pm_install died at the first package not installed
# (pkg_version failed under set -e/pipefail); config_sum died on a missing runtime config; `printf | put_file`
# lost CHANGED in a subshell (no initramfs after the nouveau blacklist); the second run backed up bakegen's own
# daemon.json; Debian's second run always ran `apt-get update`; --dry-run died for want of dkms; on bullseye's
# one-line sources.list (no Signed-By) the added components conflicted with the existing entries' Signed-By and
# left apt unusable.


# ---------------------------------------------------------------------------------------------------------
# scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    distro: str
    options: dict[str, Any] = field(default_factory=dict)
    machine: Machine = field(default_factory=Machine)
    mirrors: bool = False
    note: str = "an image baked in a chroot: no systemd, no GPU, the build host's kernel running"


SCENARIOS = [Scenario(d, d) for d in all_distro_ids()] + [
    Scenario("ubuntu24.04-cuda-repo", "ubuntu24.04", {"driver_source": "cuda-repo"}),
    Scenario(
        "ubuntu24.04-booted-gpu",
        "ubuntu24.04",
        machine=Machine(booted=True, gpu=True),
        note="a running instance with systemd and one H200 (cloud-init's case)",
    ),
    Scenario(
        "ubuntu24.04-modules-lag",
        "ubuntu24.04",
        machine=Machine(modules_lag=True),
        note="an image whose kernel has no precompiled NVIDIA modules in the archive yet: DKMS builds them",
    ),
    Scenario(
        "rhel9-hgx",
        "rhel9",
        machine=Machine(booted=True, gpu=True, nvswitches=4),
        note="a running HGX H200 instance with systemd: an H200 and four NVSwitches on the PCI bus",
    ),
    Scenario(
        "rhel9-booted",
        "rhel9",
        machine=Machine(booted=True, files={"/etc/docker/daemon.json": '{\n    "log-driver": "journald"\n}\n'}),
        note="a running instance with systemd, no GPU, a daemon.json of its own",
    ),
    Scenario(
        "ubuntu24.04-pinned",
        "ubuntu24.04",
        {"toolkit_version": "1.17.8", "install_driver": False},
        mirrors=True,
        note="--no-driver --toolkit-version 1.17.8, every repository through --mirror",
    ),
    Scenario(
        "rhel9-pinned",
        "rhel9",
        {"toolkit_version": "1.17.8", "install_driver": False},
        mirrors=True,
        note="--no-driver --toolkit-version 1.17.8, every repository through --mirror",
    ),
    Scenario(
        "fedora43-pinned",
        "fedora43",
        {"toolkit_version": "1.17.8", "install_driver": False},
        mirrors=True,
        note="--no-driver --toolkit-version 1.17.8, every repository through --mirror",
    ),
    Scenario(
        "sles15-pinned",
        "sles15",
        {"toolkit_version": "1.17.8", "install_driver": False},
        mirrors=True,
        note="--no-driver --toolkit-version 1.17.8, every repository through --mirror",
    ),
]


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


# ---------------------------------------------------------------------------------------------------------
# the two runs of every scenario


@pytest.mark.parametrize("scenario", [pytest.param(s, id=s.name) for s in SCENARIOS])
def test_first_and_second_run(scenario: Scenario, keys: KeyRing, machine_dir: Path) -> None:
    with FakeMachine(
        machine_dir,
        keys,
        scenario.distro,
        machine=scenario.machine,
        mirrors=scenario.mirrors,
        **scenario.options,
    ) as fake:
        first = fake.run()
        second = fake.run()
        text = _fixture_text(scenario, fake, first, second, keys)
        fixture = FIXTURES / f"{scenario.name}.txt"
        if REGEN:
            fixture.write_text(text)
        _healthy(first)
        _healthy(second)
        assert fixture.exists(), f"no fixture {fixture.name}: run with BAKEGEN_TRACE_REGEN=1 and review it"
        assert text == fixture.read_text(), f"the trace differs from {fixture.name} (BAKEGEN_TRACE_REGEN=1 to update)"
        check_first_run(scenario, fake, first)
        check_second_run(fake, first, second)


def _fixture_text(scenario: Scenario, fake: FakeMachine, first: Run, second: Run, keys: KeyRing) -> str:
    options = ", ".join(f"{k}={v!r}" for k, v in sorted(scenario.options.items())) or "defaults"
    header = [
        f"# bakegen trace: {scenario.distro} {fake.plan.arch.value}; options: {options}"
        f"{'; every repository through --mirror' if scenario.mirrors else ''}",
        f"# machine: {scenario.note}",
        "# keys: throwaway keys passed with --key-fingerprint (<FPR:repository>), verified by the script with gpg",
        "# regenerate: BAKEGEN_TRACE_REGEN=1 python -m pytest tests/test_trace.py (then review the diff)",
        "",
    ]
    return "\n".join(header) + describe_run(first, "run 1", keys.home) + "\n" + describe_run(second, "run 2", keys.home)


def _healthy(run: Run) -> None:
    """No stub crashed, no command was missing, no shell error: whatever the exit code, the run was honest."""
    crashed = [c.line() for c in run.calls if c.rc == 99]
    assert not crashed, f"stub crash (a bug in tests/support/stubs): {crashed}\n{run.stderr[-3000:]}"
    for problem in ("command not found", "unbound variable", "syntax error", "STUB CRASH"):
        assert problem not in run.stderr, f"{problem!r} in the run's output:\n{run.stderr[-3000:]}"


def _index(run: Run, pattern: str) -> int:
    """Position of the first call whose command line matches the regular expression; -1 if none."""
    for i, call in enumerate(run.calls):
        if re.search(pattern, call.line()):
            return i
    return -1


def check_first_run(scenario: Scenario, fake: FakeMachine, run: Run) -> None:
    plan, family = fake.plan, fake.distro.family
    assert run.rc == 0, f"first run exited {run.rc}:\n{run.stderr[-3000:]}"

    for repo in plan.repos:
        # fact (Container Toolkit / CUDA repositories): the key comes from the repository's own URL, over https,
        # with --fail (an error page is never taken for a key), and it is verified against the pinned fingerprint.
        download = _index(run, r"^curl .*--proto =https .*--fail .*" + re.escape(repo.key_url) + "$")
        assert download >= 0, f"{repo.name}: key not downloaded from {repo.key_url}"
        if family is Family.APT:
            keyring, listing = f"/etc/apt/keyrings/{repo.name}.gpg", f"/etc/apt/sources.list.d/{repo.name}.list"
            assert describe_keys(fake.read(keyring), keys_home(fake)) == [repo.fingerprint], keyring
            # fact (apt): `deb [signed-by=KEYRING] URL /`: one keyring per repository, nothing in trusted.gpg.d.
            lines = [line for line in fake.read(listing).decode().splitlines() if not line.startswith("#")]
            assert lines == [f"deb [signed-by={keyring}] {repo.url} {repo.suite}"], lines
        else:
            key = f"/etc/pki/rpm-gpg/RPM-GPG-KEY-{repo.name}"
            assert describe_keys(fake.read(key), keys_home(fake)) == [repo.fingerprint], key
            folder = "/etc/zypp/repos.d" if family is Family.ZYPPER else "/etc/yum.repos.d"
            settings = _ini(fake.read(f"{folder}/{repo.name}.repo").decode())
            # fact (rpm): baseurl .../stable/rpm/$basearch; what is checked is what the vendor signs (the
            # descriptor's `signs:`, from distros/evidence/; the stand-in repositories sign as the evidence shows,
            # so a setting the vendor cannot satisfy fails the run), and never neither.
            checks = (settings["gpgcheck"], settings["repo_gpgcheck"])
            assert settings["baseurl"] == repo.url
            assert checks == (str(int(repo.signs_packages)), str(int(repo.signs_metadata))) and "1" in checks
            if family is Family.ZYPPER:
                assert settings["pkg_gpgcheck"] == settings["gpgcheck"]
            assert settings["gpgkey"] == f"file://{key}"
            imported = _index(run, r"^rpm --import " + re.escape(key) + "$")
            refreshed = _index(run, r"(makecache .*--enablerepo=|refresh --repo )" + re.escape(repo.name) + "$")
            assert download < imported < refreshed, f"{repo.name}: key verified, imported, then refreshed"

    # fact (Container Toolkit packages): all four, from NVIDIA's repository.
    installed = run.installed()
    toolkit_repo = plan.toolkit_repo.url.rstrip("/")
    for name in TOOLKIT_PACKAGES:
        assert run.state_after["installed"][name]["repo"] == toolkit_repo, name
    if plan.toolkit_version:
        # fact: pin all four to one version (and hold them against upgrades).
        assert {installed[n] for n in TOOLKIT_PACKAGES} == {f"{plan.toolkit_version}-1"}
        _assert_held(run, family, TOOLKIT_PACKAGES, plan.toolkit_version)

    # fact (runtime configuration): `nvidia-ctk runtime configure --runtime=docker`, after the toolkit and docker
    # are installed; it merges into daemon.json (what was there stays).
    configure = _index(run, r"^nvidia-ctk runtime configure --runtime=docker$")
    assert configure > _index(run, r" install .*nvidia-container-toolkit") >= 0
    daemon = json.loads(fake.read("/etc/docker/daemon.json"))
    assert daemon["runtimes"]["nvidia"] == {"args": [], "path": "nvidia-container-runtime"}
    for key, value in json.loads(scenario.machine.files.get("/etc/docker/daemon.json") or "{}").items():
        assert daemon[key] == value, f"nvidia-ctk must merge: {key} lost"
    restarts = [c.line() for c in run.calls if re.match(r"systemctl (restart|start|daemon-reload)", c.line())]
    if fake.machine.booted:
        # fact: "Then restart the daemon" (only where one runs).
        assert _index(run, r"^systemctl restart docker\.service$") > configure
    else:
        assert restarts == [], "no service is started or restarted where systemd is not running"
        assert _index(run, "^modprobe ") < 0, "no kernel module is loaded into the build host's kernel"

    if plan.driver:
        _check_driver(scenario, fake, run)


def _check_driver(scenario: Scenario, fake: FakeMachine, run: Run) -> None:
    plan, family, driver = fake.plan, fake.distro.family, fake.plan.driver
    assert driver is not None
    installed = run.installed()
    image_kernel = fake.world["image_kernel"]
    # The nouveau blacklist reaches the initramfs (else nouveau still claims the GPU at boot).
    blacklist = "/etc/modprobe.d/bakegen-blacklist-nouveau.conf"
    assert fake.exists(blacklist)
    assert _index(run, r"^(update-initramfs -u|dracut -f)") >= 0, "initramfs not regenerated after the blacklist"
    if driver.module_stream:
        # fact: RHEL 8/9 and Amazon Linux 2023 select the branch with the module stream nvidia-driver:<branch>-open,
        # enabled before the driver is installed.
        enable = _index(run, rf"module enable {re.escape(driver.module_stream)}$")
        assert 0 <= enable < _index(run, r" install .*\b" + re.escape(driver.packages[0]) + r"\b")
        assert run.state_after["modules"]["nvidia-driver"] == driver.module_stream.split(":")[1]
    if family is Family.APT and driver.source.pin_packages:
        pin = "/etc/apt/preferences.d/bakegen-nvidia-driver"
        assert f"Pin: version {driver.branch}.*" in fake.read(pin).decode()
        assert _index(run, r"^apt-get .* install .*" + re.escape(driver.packages[0])) >= 0
    if family is not Family.APT and not driver.module_stream:
        # Without streams the branch is held by a lock after install (fact: Fedora locks with dnf versionlock;
        # SLES: zypper addlock).
        _assert_held(run, family, driver.packages[:1], None)
    # The installed driver is of the branch the script was generated for.
    driver_pkgs = [p for p in run.added_packages() if p in driver.packages or p.startswith("nvidia-headless")]
    for name in driver_pkgs:
        assert installed[name].startswith(f"{driver.branch}."), f"{name} {installed[name]}: not branch {driver.branch}"
    lag = fake.machine.modules_lag
    if fake.world["family"] == "apt" and driver.source.kind.value == "ubuntu-drivers" and lag:
        # No precompiled modules for the image's kernel: as ubuntu-drivers falls back (evidence ubuntu.dkms_fallback),
        # the DKMS package of the same flavour, the kernel's headers first, the module built for it, the guard set.
        assert "nvidia-dkms-580-server-open" in installed and "linux-modules-nvidia" not in " ".join(installed)
        headers = _index(run, r" install .*linux-headers-" + re.escape(image_kernel))
        assert 0 <= headers < _index(run, r"^dkms autoinstall -k " + re.escape(image_kernel))
        assert any(
            p.startswith(f"/lib/modules/{image_kernel}/") and p.endswith("nvidia.ko") for p in run.state_after["owned"]
        )
        assert fake.exists("/etc/kernel/postinst.d/zz-bakegen-nvidia")
    elif fake.world["family"] == "apt" and driver.source.kind.value == "ubuntu-drivers":
        # Canonical's precompiled, signed modules for the image's kernel: no DKMS build (fact: ubuntu-drivers route).
        assert fake.exists(f"/lib/modules/{image_kernel}/kernel/nvidia-{driver.branch}srv/nvidia.ko")
        assert _index(run, r"^dkms ") < 0
        for name in driver.packages:  # the driver's own packages, nvidia-smi among them
            assert name in installed, f"{name} not installed"
    elif driver.source.dkms:
        # DKMS built the module for the IMAGE's kernel, not the build host's (running) one.
        assert any(
            p.startswith(f"/lib/modules/{image_kernel}/") and p.endswith("nvidia.ko") for p in run.state_after["owned"]
        ), "no nvidia.ko built for the image's kernel"
        # Headers first: the package's own DKMS build (running kernel) or the script's `dkms autoinstall -k`.
        headers = _index(run, r" install .*" + re.escape(plan.distro.kernel_headers.replace("{kernel}", image_kernel)))
        built = _index(run, r"^dkms autoinstall -k " + re.escape(image_kernel))
        assert 0 <= headers < (built if built >= 0 else _index(run, r" install .*" + re.escape(driver.packages[0])))
    if plan.distro.os_id == "amzn":
        # fact: AL2023 kernel prep: kernel-devel, kernel-headers and kernel-modules-extra for the kernel.
        for name in ("kernel-devel", "kernel-headers", "kernel-modules-extra"):
            assert name in installed, f"{name} not installed"


def _assert_held(run: Run, family: Family, names: tuple[str, ...], version: str | None) -> None:
    state = run.state_after
    if family is Family.APT:
        pins = [c for c in run.machine.snapshot() if c.startswith("/etc/apt/preferences.d/")]
        text = "".join(run.machine.read(p).decode() for p in pins)
        assert all(n in text for n in names) and (version is None or f"Pin: version {version}" in text), text
    elif family is Family.ZYPPER:
        assert set(names) <= set(state.get("zypper_locks", [])), state.get("zypper_locks")
    else:
        locked = {lock["name"] for lock in state.get("versionlock", [])}
        assert set(names) <= locked, f"not held by dnf versionlock: {set(names) - locked}"


def check_second_run(fake: FakeMachine, first: Run, second: Run) -> None:
    assert second.rc == 0, f"second run exited {second.rc}:\n{second.stderr[-3000:]}"
    busy = [f"{c.kind}: {c.line()}" for c in second.of("download", "install", "lock", "trust", "build")]
    if fake.machine.modules_lag:
        # One exception: while a kernel's precompiled modules are missing, each run looks again (apt's lists).
        refresh = [b for b in busy if b.startswith("download: apt-get ") and b.endswith(" update")]
        assert len(refresh) == 1, busy
        busy.remove(refresh[0])
    assert busy == [], "the second run must fetch, install, lock and build nothing"
    assert [c.line() for c in second.calls if re.match(r"systemctl (restart|start|daemon-reload)", c.line())] == []
    assert second.config_changes() == [], "the second run must change no file but its log and the check's result"
    assert second.state_after == second.state_before


def keys_home(fake: FakeMachine) -> Path:
    return fake.keys.home


def _ini(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


# ---------------------------------------------------------------------------------------------------------
# refusals: nothing may change, and the exit code says why (3 unsupported, 4 verification, 5 network)

FAMILY_REPRESENTATIVES = ("ubuntu24.04", "rhel9", "sles15")


def _untouched(run: Run) -> None:
    assert [f"{c.kind}: {c.line()}" for c in run.actions()] == [], "a refused run must change or fetch nothing"
    assert run.config_changes() == [], "a refused run must change no file"
    assert run.state_after == run.state_before


@pytest.mark.parametrize("distro", FAMILY_REPRESENTATIVES)
def test_not_root_is_refused(distro: str, keys: KeyRing, machine_dir: Path) -> None:
    with FakeMachine(machine_dir, keys, distro) as fake:
        run = fake.run(user="65534:65534")
    assert run.rc == 3, run.stderr
    assert "must run as root" in run.stderr
    _untouched(run)


@pytest.mark.parametrize(
    ("distro", "os_id", "version"),
    [
        ("rhel9", "rocky", "9.6"),  # a rebuild is another system: its own descriptor, its own script
        ("ubuntu24.04", "ubuntu", "22.04"),
        ("sles15", "sles", "12.5"),
        ("debian12", "debian", "13"),
        ("amzn2023", "fedora", "43"),
    ],
)
def test_other_system_is_refused(distro: str, os_id: str, version: str, keys: KeyRing, machine_dir: Path) -> None:
    with FakeMachine(machine_dir, keys, distro, machine=Machine(os_id=os_id, version_id=version)) as fake:
        run = fake.run()
        expected = f"{fake.distro.os_id} {fake.distro.version_id} ({fake.distro.source_file})"
    assert run.rc == 3, run.stderr
    assert f"generated for {expected}, but this is {os_id} {version}" in run.stderr
    _untouched(run)


@pytest.mark.parametrize("distro", FAMILY_REPRESENTATIVES)
def test_other_arch_is_refused(distro: str, keys: KeyRing, machine_dir: Path) -> None:
    with FakeMachine(machine_dir, keys, distro, machine=Machine(arch="aarch64")) as fake:
        run = fake.run()
    assert run.rc == 3, run.stderr
    assert "generated for x86_64, but this machine is aarch64" in run.stderr
    _untouched(run)


# Ubuntu: the modules metapackage of the image's kernel flavour (linux-image-aws -> ...-aws), as ubuntu-drivers
# installs it, so that the next kernel of that flavour comes with its NVIDIA modules (vendor audit A4).
@pytest.mark.parametrize(("distro", "meta"), [
    ("ubuntu24.04", "linux-modules-nvidia-580-server-open-aws"),
    ("ubuntu20.04", "linux-modules-nvidia-550-server-aws"),
])  # fmt: skip
def test_ubuntu_installs_the_kernel_flavours_modules_metapackage(
    distro: str, meta: str, keys: KeyRing, machine_dir: Path
) -> None:
    with FakeMachine(machine_dir, keys, distro) as fake:
        run = fake.run()
    assert run.rc == 0, run.stderr
    assert meta in run.state_after["installed"], sorted(run.state_after["installed"])
    assert "will not follow" not in run.stdout + run.stderr


# The stand-ins believe the vendor evidence (distros/evidence/ offers): each audited vendor error
# (../shared/notes/vendor-audit.md), put back into its descriptor, fails the run where the real distribution
# would, and the fixed descriptor on the same machine succeeds. (tests/test_evidence_walk.py names each in the
# generated plan; this runs the generated script.)
# Per audited error (tests/helpers.py: AUDITED_ERRORS): the script's options, the machine, what the failure names.
# A2-aarch64 is a generation-time refusal (fedora43 has no aarch64): the walk and tests/test_cli.py name it.
AUDITED_RUNS: dict[str, tuple[dict[str, Any], Machine, str]] = {
    # EPEL added with repo_gpgcheck=1: it publishes no repomd.xml.asc, so the refresh fails.
    "A1": ({}, Machine(), "repomd.xml.asc"),
    # fedora43 with D42D0685.pub: its folder publishes only 1940C73E.pub (404).
    "A2": ({}, Machine(), "D42D0685.pub"),
    # focal at 580: Canonical publishes 580-server for jammy and later only.
    "A3": ({}, Machine(), "nvidia-headless-no-dkms-580-server-open"),
    # An AL2023 image on kernel 6.12 asked for kernel-devel-<6.12 release> (its packages are kernel6.12-devel).
    "A5": ({}, Machine(kernel_vr="6.12.53-69.119.amzn2023"), "kernel-devel-6.12.53-69.119.amzn2023.x86_64"),
    # debian13 + cuda-repo on aarch64: no debian13/sbsa repository (its key URL is a 404).
    "A7": ({"arch": "aarch64", "driver_source": "cuda-repo"}, Machine(), "debian13/sbsa"),
}


@pytest.mark.parametrize("name", sorted(AUDITED_RUNS))
def test_each_audited_error_fails_against_the_evidence(name: str, keys: KeyRing, machine_dir: Path) -> None:
    (distro_id, changes), (options, machine, says) = AUDITED_ERRORS[name], AUDITED_RUNS[name]
    with FakeMachine(
        machine_dir, keys, distro_id, machine=machine, descriptor=descriptor_with(distro_id, *changes), **options
    ) as fake:
        broken = fake.run()
    assert broken.rc == 5, f"{name}: {broken.rc}\n{broken.stderr[-2000:]}"
    assert says in broken.stdout + broken.stderr, f"{name}: the failure does not name {says}"
    if name == "A7":
        return  # the fixed descriptor refuses this combination at generation time (tests/test_cli.py)
    with FakeMachine(machine_dir, keys, distro_id, machine=machine, **options) as fake:
        fixed = fake.run()
    assert fixed.rc == 0, f"{name} fixed: {fixed.rc}\n{fixed.stderr[-2000:]}"


# (distro, fault on the toolkit repository, exit code, what the message says). --no-driver: the toolkit's
# repository is then the first one added, reached before anything is installed.
FAULTS = [
    # (the message lacks a space: "has fingerprint <FPR>but <FPR> is pinned"; cosmetic, see verify_key)
    ("ubuntu24.04", "wrong-key", 4, "has fingerprint <FPR:stranger>"),
    ("rhel9", "wrong-key", 4, "has fingerprint <FPR:stranger>"),
    ("sles15", "wrong-key", 4, "has fingerprint <FPR:stranger>"),
    ("ubuntu24.04", "html", 4, "returned a web page, not a key; nothing was trusted"),
    ("rhel9", "html", 4, "returned a web page, not a key; nothing was trusted"),
    ("ubuntu24.04", "empty", 4, "is empty; nothing was trusted"),
    ("sles15", "empty", 4, "is empty; nothing was trusted"),
    ("ubuntu24.04", "key-404", 5, "could not download"),
    ("rhel9", "key-unreachable", 5, "could not download"),
    ("ubuntu24.04", "repo-other-signer", 5, "cannot be used (unreachable, or not signed by"),
    ("ubuntu24.04", "repo-unreachable", 5, "cannot be used (unreachable, or not signed by"),
    ("rhel9", "repo-other-signer", 5, "cannot be used (unreachable, or not signed by"),
    ("sles15", "repo-unreachable", 5, "cannot be used (unreachable, or not signed by"),
]


@pytest.mark.parametrize(
    ("distro", "fault", "code", "message"), [pytest.param(*f, id=f"{f[0]}-{f[1]}") for f in FAULTS]
)
def test_bad_key_or_repository_leaves_nothing(
    distro: str, fault: str, code: int, message: str, keys: KeyRing, machine_dir: Path
) -> None:
    name = "nvidia-container-toolkit"
    with FakeMachine(machine_dir, keys, distro, faults={name: fault}, install_driver=False) as fake:
        keys.key("stranger")
        run = fake.run()
        family = fake.distro.family
        repo = next(r for r in fake.plan.repos if r.name == name)
        left = [
            p
            for p in (
                f"/etc/apt/keyrings/{name}.gpg",
                f"/etc/apt/sources.list.d/{name}.list",
                f"/etc/pki/rpm-gpg/RPM-GPG-KEY-{name}",
                f"/etc/yum.repos.d/{name}.repo",
                f"/etc/zypp/repos.d/{name}.repo",
            )
            if fake.exists(p)
        ]
    assert run.rc == code, run.stderr[-2000:]
    assert message in normalizer(run)(run.stderr), run.stderr[-2000:]
    assert repo.key_url in run.stderr
    if fault == "wrong-key":
        assert re.search(
            r"has fingerprint [^ ,]+ but <FPR:nvidia-container-toolkit> is pinned; nothing was trusted",
            normalizer(run)(run.stderr),
        ), run.stderr[-2000:]
    # Nothing half-configured: no keyring, key file, list or .repo of that repository; nothing trusted by rpm.
    assert left == []
    assert run.state_after.get("rpm_keys", {}) == run.state_before.get("rpm_keys", {})
    # No package removed or changed; the only new ones are the base packages installed before the repository step.
    before, after = run.state_before.get("installed", {}), run.state_after.get("installed", {})
    assert {n: after.get(n) for n in before} == before
    assert set(after) - set(before) <= set(fake.distro.base_packages)
    if code == 4 or fault.startswith("key-"):
        # The key never got near a package manager: no import, no repository refresh.
        assert run.of("trust") == [] and [c for c in run.of("download") if c.tool != "curl"] == [], family


# The copy of the script that cloud-init user-data carries has no comments (generator/embed.py): it must do
# exactly what the script does. One scenario per package manager and driver source, against the same fixtures.
EMBEDDED_COPY = ("debian12", "ubuntu22.04", "ubuntu24.04-cuda-repo", "rhel9", "amzn2023", "fedora43", "sles15")


@pytest.mark.parametrize("name", EMBEDDED_COPY)
def test_the_user_data_copy_does_what_the_script_does(name: str, keys: KeyRing, machine_dir: Path) -> None:
    scenario = next(s for s in SCENARIOS if s.name == name)
    with FakeMachine(
        machine_dir, keys, scenario.distro, machine=scenario.machine, mirrors=scenario.mirrors, **scenario.options
    ) as fake:
        script = fake.script
        fake.set_script(render_script(make_environment(), fake.plan, embedded=True))
        assert len(fake.script) < len(script) * 0.9, "nothing was left out of the copy"
        first = fake.run()
        second = fake.run()
        text = _fixture_text(scenario, fake, first, second, keys)
    assert EMBEDDED_MARK in text, "the copy did not write the files as user-data carries them"
    assert text.replace(EMBEDDED_MARK, "") == (FIXTURES / f"{name}.txt").read_text()


DRY_RUN = ("ubuntu24.04", "ubuntu24.04-cuda-repo", "debian12", "rhel9", "sles15")


@pytest.mark.parametrize("name", DRY_RUN)
def test_dry_run_changes_nothing(name: str, keys: KeyRing, machine_dir: Path) -> None:
    scenario = next(s for s in SCENARIOS if s.name == name)
    with FakeMachine(machine_dir, keys, scenario.distro, **scenario.options) as fake:
        run = fake.run("--dry-run")
    assert run.rc == 0, run.stderr[-3000:]
    assert "dry run done: nothing was changed" in run.stderr
    _healthy(run)
    assert [f"{c.kind}: {c.line()}" for c in run.actions()] == []
    assert run.changes == [], "a dry run writes nothing, not even its log"
    assert run.state_after == run.state_before


# ---------------------------------------------------------------------------------------------------------
# what the script trusts by default, against NVIDIA's documented repositories and keys (no run needed)


@pytest.mark.parametrize("distro", all_distro_ids())
def test_default_repositories_are_nvidias(distro: str) -> None:
    from generator.plan import Options, make_plan
    from generator.resolve import descriptor_set, load_distro

    loaded = load_distro(descriptor_set(), distro)
    for arch in loaded.arches:
        plan = make_plan(loaded, Options(arch=arch))
        toolkit = plan.toolkit_repo
        # fact: Container Toolkit key https://nvidia.github.io/libnvidia-container/gpgkey, primary C95B321B...
        assert toolkit.key_url == "https://nvidia.github.io/libnvidia-container/gpgkey"
        assert toolkit.fingerprint == "C95B321B61E88C1809C4F759DDCAE044F796ECB0"
        if loaded.family is Family.APT:
            # fact: one apt repo for every Debian/Ubuntu release: stable/deb/$(ARCH), flat (suite "/").
            assert (toolkit.url, toolkit.suite) == (
                f"https://nvidia.github.io/libnvidia-container/stable/deb/{arch.deb}",
                "/",
            )
        else:
            assert toolkit.url == f"https://nvidia.github.io/libnvidia-container/stable/rpm/{arch.value}"
        cuda = [r for r in plan.repos if r.name == "cuda"]
        for repo in cuda:
            # fact: https://developer.download.nvidia.com/compute/cuda/repos/<dir>/<x86_64|sbsa>/
            match = re.fullmatch(
                r"https://developer\.download\.nvidia\.com/compute/cuda/repos/([a-z0-9]+)/"
                r"(x86_64|sbsa)",
                repo.url,
            )
            assert match and match.group(2) == arch.cuda, repo.url
            key_file = repo.key_url.rsplit("/", 1)[1]
            expected = {
                "3bf863cc.pub": "EB693B3035CD5710E231E123A4B469963BF863CC",
                "D42D0685.pub": "610C7B14E068A878070DA4E99CD0A493D42D0685",
                "8793F200.pub": "02182E60104FCDC26EAE1B8597A5D4CB8793F200",  # debian13: UNVERIFIED fact
                "1940C73E.pub": "UNVERIFIED",
            }  # fedora43: no evidence of its fingerprint
            assert expected.get(key_file) == repo.fingerprint, (key_file, repo.fingerprint)
            # fact: the retired key 7fa2af80 is never trusted.
            assert "7FA2AF80" not in repo.fingerprint.upper()
        if plan.driver and plan.driver.module_stream:
            # fact: module streams nvidia-driver:<branch>-open (or -dkms for the proprietary modules).
            assert re.fullmatch(rf"nvidia-driver:{plan.driver.branch}-(open|dkms)", plan.driver.module_stream)
