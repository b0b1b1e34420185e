"""The rpm distributions' generated scripts run by their REAL package managers from Debian's archive: dnf 4 with
rpm 4.18 (RHEL family, Amazon Linux 2023), dnf5 with rpm 6.1 (Fedora 43), zypper with rpm 4.20 (SLES 15), against
stand-in repositories that are real, signed repositories shaped by the vendor evidence.

What is real and what stands in: tests/support/rpmhost.py.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.rpmhost import ARCHIVE, DISTROS, RpmSpec, RpmTarget, RpmWorld, kernel_packages
from tests.support.trace import KeyRing

pytestmark = [
    pytest.mark.rootfs,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chroot, mounts)"),
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("mmdebstrap", "rpmbuild", "rpmsign", "createrepo_c", "modifyrepo_c")),
        reason="needs mmdebstrap, rpmbuild, rpmsign, createrepo_c and modifyrepo_c (tests/setup.sh)",
    ),
]

EX_NETWORK = 5
ARCH = "x86_64"
# The places a run writes configuration to: compared byte for byte between the two runs.
CONFIG_DIRS = (
    "/etc/zypp/repos.d",
    "/etc/zypp/locks",
    "/etc/yum.repos.d",
    "/etc/pki/rpm-gpg",
    "/etc/dnf",
    "/etc/docker",
    "/etc/nvidia-container-runtime",
    "/etc/kernel/install.d",
    "/etc/modprobe.d",
    "/etc/systemd/system",
    "/etc/bakegen",
    "/boot",
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    return KeyRing(tmp_path_factory.mktemp("rpm-keys"))


def tree_digest(target: RpmTarget) -> dict[str, str]:
    """path -> sha256 (or link target) of every file under CONFIG_DIRS."""
    found: dict[str, str] = {}
    for folder in CONFIG_DIRS:
        host = target.chroot.host_path(folder)
        if not host.exists():
            continue
        for path in sorted(host.rglob("*")):
            inside = "/" + str(path.relative_to(target.chroot.root))
            if path.is_symlink():
                found[inside] = "-> " + os.readlink(path)
            elif path.is_file():
                found[inside] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def rpm_state(target: RpmTarget) -> str:
    return target.query("rpm -qa --qf '%{NEVRA} %{INSTALLTIME}\\n' | sort")


def changed_files(target: RpmTarget) -> list[str]:
    """`rpm -Va`: files of installed packages that differ from rpm's database (configuration files left out)."""
    result = target.chroot.run("rpm -Va", check=False)
    return [line for line in result.stdout.splitlines() if line[11:12] != "c"]


def assert_consistent(target: RpmTarget) -> None:
    """rpm's database agrees with the files (rpm -Va) and the package manager with its dependencies (dnf check,
    zypper verify)."""
    assert changed_files(target) == []
    tool = "zypper --quiet verify --dry-run" if target.tooling.name == "zypper" else "dnf -q check"
    check = target.chroot.run(tool, check=False)
    assert (check.returncode, check.stdout.strip() + check.stderr.strip()) == (0, ""), tool


def history(target: RpmTarget) -> str:
    """The package manager's transaction history."""
    if target.tooling.name == "zypper":
        return target.query("cat /var/log/zypp/history")
    return target.query("dnf -q history list 2>/dev/null")


def holds(target: RpmTarget) -> str:
    """What the package manager reports as holding packages: enabled module streams, version locks, zypper locks."""
    if target.tooling.name == "zypper":
        return target.query("zypper --quiet locks")
    streams = target.query("dnf -q module list --enabled 2>/dev/null") if target.tooling.name == "dnf4" else ""
    return streams + target.query("dnf -q versionlock list")


def key_imported(target: RpmTarget, fingerprint: str) -> bool:
    """Whether rpm's database has the key: gpg-pubkey-SHORTID-CREATED up to rpm 4.x, the full fingerprint in rpm 6."""
    names = target.chroot.run("rpm -q gpg-pubkey", check=False).stdout.split()
    return any(name.split("-")[2].endswith(fingerprint[-8:].lower()) for name in names if name.count("-") == 3)


@dataclass
class TwoRuns:
    world: RpmWorld
    target: RpmTarget
    first: Any
    second: Any
    requests_in_second: list[Any]
    before_second: tuple[str, dict[str, str], str]
    after_second: tuple[str, dict[str, str], str]


def snapshot(target: RpmTarget) -> tuple[str, dict[str, str], str]:
    return rpm_state(target), tree_digest(target), history(target)


@pytest.fixture(scope="module", params=list(DISTROS))
def two_runs(
    request: pytest.FixtureRequest, keys: KeyRing, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TwoRuns]:
    distro = request.param
    work = tmp_path_factory.mktemp(f"rpm-{distro}")
    with RpmWorld(distro, ARCH, keys, work) as world, RpmTarget(world, work) as target:
        first = target.run_script()
        before = snapshot(target)
        world.server.clear_requests()
        second = target.run_script()
        yield TwoRuns(world, target, first, second, world.server.requests, before, snapshot(target))


def test_first_run_ends_configured_as_the_real_tools_report(two_runs: TwoRuns) -> None:
    world, target, run = two_runs.world, two_runs.target, two_runs.first
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    plan, installed = world.plan, target.installed()
    driver = plan.driver
    assert driver is not None
    # The driver: the branch's newest version, held as the package manager reports it: NVIDIA's module stream
    # where the evidence shows streams (dnf 4), else a version lock (dnf5) or a zypper lock.
    for package in driver.packages:
        assert package in installed and installed[package].split(":")[1].startswith(f"{driver.branch}."), package
    held = holds(target)
    if driver.module_stream:
        module, stream = driver.module_stream.split(":")
        assert re.search(rf"^{module} +{stream} \[e\]", held, re.M), held
    else:
        for package in driver.packages:
            assert package in held, held
    # DKMS built the module for the image's kernel (the dkms stand-in), the initramfs was rebuilt after it.
    kernel = world.image_kernel
    assert target.chroot.exists(f"/lib/modules/{kernel}/extra/nvidia.ko")
    # The kernel-install guard where kernel-install runs plugins (not on SLES: docs/evidence-kernel-updates.md).
    guard = target.chroot.exists("/etc/kernel/install.d/95-bakegen-nvidia.install")
    assert guard == (target.tooling.name != "zypper")
    # The toolkit: NVIDIA's packages (built with NVIDIA's spec) at the newest version the repository publishes.
    newest = max(s.version for s in world.repos["nvidia-container-toolkit"].specs)
    for package in plan.distro.toolkit_packages:
        assert installed.get(package) == f"0:{newest}-1", (package, installed.get(package))
    # NVIDIA's %post of nvidia-container-toolkit-base ran the real nvidia-ctk: its config exists; the real
    # nvidia-ctk configured Docker.
    config = target.query("nvidia-ctk config --config-file=/etc/nvidia-container-runtime/config.toml")
    assert "[nvidia-container-runtime]" in config
    daemon = json.loads(target.chroot.read_text("/etc/docker/daemon.json"))
    assert daemon["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    # Every repository key the script trusted is in rpm's database, verified by its full fingerprint first.
    for repo in plan.repos:
        assert key_imported(target, repo.fingerprint), repo.name
    # rpm's database and the files agree.
    assert_consistent(target)


def test_second_run_changes_nothing_and_downloads_nothing(two_runs: TwoRuns) -> None:
    run = two_runs.second
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert two_runs.requests_in_second == []
    before_rpms, before_files, before_history = two_runs.before_second
    after_rpms, after_files, after_history = two_runs.after_second
    assert after_rpms == before_rpms
    assert after_files == before_files
    assert after_history == before_history


# ---------------------------------------------------------------------------------------------------------
# pins: what dnf itself keeps from changing


def test_dnf_upgrade_keeps_a_pinned_toolkit_and_the_drivers_branch(keys: KeyRing, tmp_path: Path) -> None:
    with (
        RpmWorld("rhel9", ARCH, keys, tmp_path, toolkit_version="1.17.8") as world,
        RpmTarget(world, tmp_path) as target,
    ):
        run = target.run_script()
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        locks = target.query("dnf -q versionlock list").splitlines()
        for package in world.plan.distro.toolkit_packages:
            assert f"{package}-0:1.17.8-1.*" in locks, locks
        # Newer releases appear upstream: the toolkit (1.18.1 is published already) and a new driver branch in
        # its own module stream (a stand-in the evidence does not show for rhel9: this test's addition).
        (driver,) = [s for s in world.repos["cuda"].specs if s.name == "nvidia-open"]
        world.publish_more("cuda", [dataclasses.replace(driver, version="590.44.01", stream="nvidia-driver:590-open")])
        # What an unattended `dnf upgrade` does: the real versionlock keeps the toolkit, the stream the branch.
        target.chroot.run("dnf -y -q upgrade --refresh")
        installed = target.installed()
        for package in world.plan.distro.toolkit_packages:
            assert installed[package] == "0:1.17.8-1", (package, installed[package])
        assert installed["nvidia-open"] == f"3:{driver.version}-{driver.release}"
        assert "590" in target.query("dnf -q module list nvidia-driver")  # it was there to be taken
        # The control: without the locks, the same upgrade takes the newer toolkit.
        target.chroot.run("dnf -q versionlock clear && dnf -y -q upgrade")
        assert target.installed()["nvidia-container-toolkit"] == "0:1.18.1-1"


def newer_driver_release(world: RpmWorld, version: str) -> list[RpmSpec]:
    """The branch's driver and fabric manager at a newer VERSION, as NVIDIA would publish them (in the stream)."""
    return [
        dataclasses.replace(spec, version=version)
        for spec in world.repos["cuda"].specs
        if spec.name in {"nvidia-open", "nvidia-fabricmanager"} and spec.version.startswith("580.")
    ]


def test_the_driver_is_held_at_its_version_until_a_rerun_asks_for_another(keys: KeyRing, tmp_path: Path) -> None:
    with RpmWorld("rhel9", ARCH, keys, tmp_path) as world, RpmTarget(world, tmp_path) as target:
        assert target.run_script().returncode == 0
        first = target.installed()
        assert first["nvidia-fabricmanager"].endswith(first["nvidia-open"].split(":")[1].split("-")[0] + "-1.el9")
        # NVIDIA publishes a newer release of the branch, in the branch's module stream.
        world.publish_more("cuda", newer_driver_release(world, "580.200.01"))
        target.chroot.run("dnf -y -q upgrade --refresh")
        held = target.installed()
        assert (held["nvidia-open"], held["nvidia-fabricmanager"]) == (
            first["nvidia-open"],
            first["nvidia-fabricmanager"],
        )

        # The deliberate way: the script generated with the new --driver-version releases the locks, installs it
        # (with its fabric manager) and locks that.
        script = world.render(driver_version="580.200.01")
        rerun = target.run_script(script=script)
        assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
        assert "another version of nvidia-open asked for: releasing the version locks of" in rerun.stderr
        after = target.installed()
        assert after["nvidia-open"] == "3:580.200.01-1.el9" and after["nvidia-fabricmanager"] == "0:580.200.01-1.el9"
        locks = target.query("dnf -q versionlock list")
        assert "nvidia-open-3:580.200.01-1.el9.*" in locks and "580.159.04" not in locks, locks
        assert_consistent(target)
        world.server.clear_requests()
        again = target.run_script(script=script)
        assert again.returncode == 0 and world.server.requests == []

        # The control: without the locks, the stream alone lets an upgrade change the driver under the module.
        world.publish_more("cuda", newer_driver_release(world, "580.210.05"))
        target.chroot.run("dnf -q versionlock clear && dnf -y -q upgrade --refresh")
        assert target.installed()["nvidia-open"] == "3:580.210.05-1.el9"


def test_sles_keeps_the_locked_driver_until_a_rerun_asks_for_another(keys: KeyRing, tmp_path: Path) -> None:
    with RpmWorld("sles15", ARCH, keys, tmp_path) as world, RpmTarget(world, tmp_path) as target:
        assert target.run_script().returncode == 0
        first = target.installed()["nvidia-open"]
        world.publish_more("cuda", newer_driver_release(world, "580.200.01"))
        target.chroot.run("zypper --non-interactive --quiet refresh && zypper --non-interactive update")
        assert target.installed()["nvidia-open"] == first
        rerun = target.run_script(script=world.render(driver_version="580.200.01"))
        assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
        assert target.installed()["nvidia-open"] == "3:580.200.01-1.sles15"
        assert "nvidia-open" in target.query("zypper --quiet locks")
        assert_consistent(target)


def test_fedoras_dnf_automatic_leaves_the_locked_driver_alone(keys: KeyRing, tmp_path: Path) -> None:
    # dnf5's own `dnf automatic` (Fedora's dnf5-plugin-automatic), as its timer runs it: install the updates.
    with RpmWorld("fedora43", ARCH, keys, tmp_path) as world, RpmTarget(world, tmp_path) as target:
        assert target.run_script().returncode == 0
        first = target.installed()["nvidia-open"]
        world.publish_more("cuda", newer_driver_release(world, "580.200.01"))
        target.chroot.run("dnf -q automatic --installupdates --refresh")
        assert target.installed()["nvidia-open"] == first
        target.chroot.run("dnf -q versionlock clear && dnf -q automatic --installupdates")
        assert target.installed()["nvidia-open"] != first  # the control: without the lock it moves


def test_a_kernel_update_gets_its_module_or_is_recorded_without_one(keys: KeyRing, tmp_path: Path) -> None:
    """A new kernel installed by dnf: its %posttrans runs the real kernel-install (systemd's, in the bookworm tree),
    whose plugins are DKMS's (stand-in: it builds where the build tree is) and bakegen's guard."""
    with RpmWorld("rhel9", ARCH, keys, tmp_path) as world, RpmTarget(world, tmp_path) as target:
        assert target.run_script().returncode == 0
        with_devel, without = "5.14.0-570.62.1.el9_6", "5.14.0-570.70.1.el9_6"
        world.publish_more(ARCHIVE, [*kernel_packages(with_devel, ARCH), *kernel_packages(without, ARCH, devel=False)])
        target.chroot.run(f"dnf -y -q --refresh install kernel-core-{with_devel} kernel-devel-{with_devel}")
        assert target.chroot.exists(f"/lib/modules/{with_devel}.{ARCH}/extra/nvidia.ko")
        state = json.loads(target.chroot.read_text("/var/lib/bakegen/kernel-guard.json"))
        assert (state["kernel"], state["module"]) == (f"{with_devel}.{ARCH}", True), state

        # No build tree can be had for this one: the guard records it and lets the kernel's transaction finish.
        done = target.chroot.run(f"dnf -y -q install kernel-core-{without}", check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        log = target.chroot.read_text("/var/log/bakegen.log")
        assert f"bakegen-kernel-guard: ERROR: no NVIDIA kernel module for kernel {without}.{ARCH}" in log
        state = json.loads(target.chroot.read_text("/var/lib/bakegen/kernel-guard.json"))
        assert (state["kernel"], state["module"]) == (f"{without}.{ARCH}", False), state
        assert not target.chroot.exists(f"/lib/modules/{without}.{ARCH}/extra/nvidia.ko")
        kernels = target.query("rpm -q kernel-core").split()
        assert kernels == [f"kernel-core-{with_devel}.{ARCH}", f"kernel-core-{without}.{ARCH}"], kernels
        assert_consistent(target)


# ---------------------------------------------------------------------------------------------------------
# faults: each on a fresh target (rhel9 unless named), set up by FAULT(world, target) before the first run


Fault = Callable[[RpmWorld, RpmTarget], None]


@pytest.fixture
def run_with(keys: KeyRing, tmp_path: Path) -> Iterator[Callable[[Fault], tuple[RpmWorld, RpmTarget, Any]]]:
    with ExitStack() as stack:

        def start(fault: Fault, distro: str = "rhel9") -> tuple[RpmWorld, RpmTarget, Any]:
            world = stack.enter_context(RpmWorld(distro, ARCH, keys, tmp_path))
            target = stack.enter_context(RpmTarget(world, tmp_path))
            fault(world, target)
            return world, target, target.run_script()

        yield start


def assert_repository_removed(target: RpmTarget, world: RpmWorld, name: str) -> None:
    repo = next(r for r in world.plan.repos if r.name == name)
    assert not target.chroot.exists(f"/etc/yum.repos.d/{name}.repo")
    assert not target.chroot.exists(f"/etc/zypp/repos.d/{name}.repo")
    assert not target.chroot.exists(repo.rpm_key_path)
    assert not key_imported(target, repo.fingerprint)
    assert_consistent(target)


@pytest.mark.parametrize(
    ("distro", "repo"),
    [
        ("rhel9", "cuda"),
        ("rhel9", "nvidia-container-toolkit"),
        # rpm 6 names imported keys by their full fingerprint: the key must be found to be removed.
        ("fedora43", "nvidia-container-toolkit"),
        ("sles15", "nvidia-container-toolkit"),
    ],
)
def test_metadata_signed_by_another_key_is_refused_and_the_repository_removed(
    run_with: Any, keys: KeyRing, distro: str, repo: str
) -> None:
    world, target, run = run_with(lambda w, t: w.sign_metadata(repo, keys.key("stranger").fingerprint), distro)
    assert run.returncode == EX_NETWORK, run.stdout[-2000:] + run.stderr[-2000:]
    assert f"repository {repo} at " in run.stderr and "removed what this run added" in run.stderr
    assert_repository_removed(target, world, repo)
    packages = world.plan.driver.packages if repo == "cuda" else world.plan.distro.toolkit_packages
    assert not set(packages) & set(target.installed())


def test_metadata_without_its_signature_is_refused(run_with: Any) -> None:
    def unsign(world: RpmWorld, target: RpmTarget) -> None:
        (world.server.www / world.repos["cuda"].path.lstrip("/") / "repodata/repomd.xml.asc").unlink()

    world, target, run = run_with(unsign)
    assert run.returncode == EX_NETWORK, run.stdout[-2000:] + run.stderr[-2000:]
    assert_repository_removed(target, world, "cuda")


def test_a_package_signed_by_another_key_is_not_installed(run_with: Any, keys: KeyRing) -> None:
    # EPEL signs its packages, not its metadata: dkms (which nvidia-open needs) signed by a stranger.
    _, target, run = run_with(lambda w, t: w.resign_packages("epel", keys.key("stranger").fingerprint))
    assert run.returncode == EX_NETWORK, run.stdout[-2000:] + run.stderr[-2000:]
    assert "could not install nvidia-open" in run.stderr
    installed = target.installed()
    assert "dkms" not in installed and "nvidia-open" not in installed
    assert target.query("dnf -q history list nvidia-open dkms 2>/dev/null").strip() == ""  # no transaction began
    assert_consistent(target)


def test_a_module_stream_that_does_not_exist_stops_the_driver_step(run_with: Any) -> None:
    def drop_stream(world: RpmWorld, target: RpmTarget) -> None:
        assert world.plan.driver is not None
        stream = world.plan.driver.module_stream
        world.republish_modules(lambda spec: spec.stream != stream)

    world, target, run = run_with(drop_stream)
    assert run.returncode == EX_NETWORK, run.stdout[-2000:] + run.stderr[-2000:]
    assert world.plan.driver is not None
    assert f"could not enable module stream {world.plan.driver.module_stream}" in run.stderr
    assert not [name for name in target.installed() if name.startswith("nvidia-")]
    assert target.query("dnf -q history list nvidia-open 2>/dev/null").strip() == ""
    assert_consistent(target)


def test_an_rpm_transaction_in_progress_is_waited_for(run_with: Any) -> None:
    # rpm itself waits for its lock only when stdin is a terminal (lib/rpmlock.c): under cloud-init or Packer, dnf
    # failed at once with "can't create transaction lock" before the script waited for it.
    held = 10.0
    holder: list[threading.Thread] = []

    def lock(world: RpmWorld, target: RpmTarget) -> None:
        # Another rpm transaction: rpm's own lock (fcntl on /var/lib/rpm/.rpm.lock), held for `held` seconds.
        path = target.chroot.host_path("/var/lib/rpm/.rpm.lock")
        locked = threading.Event()

        def hold() -> None:
            with open(path, "a+") as handle:
                fcntl.lockf(handle, fcntl.LOCK_EX)
                locked.set()
                time.sleep(held)

        holder.append(threading.Thread(target=hold))
        holder[0].start()
        assert locked.wait(30)

    _, target, run = run_with(lock)
    holder[0].join()
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert run.elapsed >= held
    assert "waiting for another rpm transaction to finish (it holds /var/lib/rpm/.rpm.lock)" in run.stderr
    assert_consistent(target)


def test_a_transaction_killed_in_a_scriptlet_is_finished_by_the_next_run(keys: KeyRing, tmp_path: Path) -> None:
    with RpmWorld("rhel9", ARCH, keys, tmp_path) as world, RpmTarget(world, tmp_path) as target:
        # nvidia-open's %post runs dkms (the stand-in waits there while hold-dkms exists): kill everything then.
        target.chroot.write_text("/run/bakegen-test/hold-dkms", "")
        script = target.start_script()
        held = target.chroot.host_path("/run/bakegen-test/dkms-held")
        deadline = time.monotonic() + 300
        while not held.exists() and script.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert held.exists(), (script.poll(), script.stdout.read() if script.stdout else "")
        os.killpg(script.pid, signal.SIGKILL)
        script.wait()
        (target.chroot.host_path("/run/bakegen-test/hold-dkms")).unlink()
        assert "nvidia-open" in target.installed()  # rpm's database has it: killed after its files, in %post
        assert not target.chroot.exists(f"/lib/modules/{world.image_kernel}/extra/nvidia.ko")

        rerun = target.run_script()
        assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
        assert target.chroot.exists(f"/lib/modules/{world.image_kernel}/extra/nvidia.ko")
        assert_consistent(target)
        again = target.run_script()
        assert again.returncode == 0
