"""Run the generated debian12/debian13 install script for real, in Debian root filesystems: the image-bake case.

Each release gets one root filesystem that looks like a cloud image (systemd, the cloud kernel, only the `main`
archive component in deb822 sources) and a user's /etc/docker/daemon.json. The script generated for it runs with
the default driver source (Debian's non-free DKMS packages) and the toolkit from the stand-in mirror pinned to
1.18.1. In a chroot `uname -r` is the host's kernel: the module must be built for the IMAGE's kernel. Then the
script runs a second time and must change nothing and download nothing.

Nothing is mocked: apt, dpkg, DKMS, update-initramfs and systemctl are Debian's own. The functions here are also
bench/run.py's library; each bake writes its timings to timings_file() for bench to print.

Cost: ~2-3 minutes per release natively (driver download, headers, DKMS build), more on a loaded machine. Debian
.debs downloaded by a bake are kept in <cache>/apt-archives/<release> and copied into the next fresh tree (apt
checks them against the index; set BAKEGEN_APT_ARCHIVES=0 for a cold download). BAKEGEN_ROOTFS_TMPFS=0 puts the
trees on disk instead of a tmpfs (they grow to ~2 GB).
"""

from __future__ import annotations

import calendar
import itertools
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import TOOLKIT_PACKAGES, render_script
from tests.support.mirror import Mirror, key_fingerprints
from tests.support.rootfs import Chroot, Release, build_rootfs, default_cache_dir

pytestmark = pytest.mark.rootfs

RELEASE_DISTRO: dict[Release, str] = {"bookworm": "debian12", "trixie": "debian13"}
# What a Debian cloud image has that the fixtures' bare tree lacks: its kernel (so /boot/vmlinuz-<ver> and
# /lib/modules/<ver> exist) and systemd (systemctl enables units offline in a chroot).
IMAGE_PACKAGES = ("linux-image-cloud-amd64", "systemd")
TOOLKIT_PIN = "1.18.1"
TOOLKIT_DEB_VERSION = "1.18.1-1"
# What each release's own tools write into Signed-By (trixie's keyring is .pgp, with a .gpg symlink).
ARCHIVE_KEYRING: dict[Release, str] = {
    "bookworm": "/usr/share/keyrings/debian-archive-keyring.gpg",
    "trixie": "/usr/share/keyrings/debian-archive-keyring.pgp",
}
SCRIPT = "/root/bakegen-install.sh"
KEYRING = "/etc/apt/keyrings/nvidia-container-toolkit.gpg"
SOURCE_LIST = "/etc/apt/sources.list.d/nvidia-container-toolkit.list"
# A user's own Docker settings, present before bakegen runs: they must survive every run.
USER_DAEMON_JSON = {"log-driver": "journald", "log-opts": {"tag": "{{.Name}}"}}
# Configuration a second run must leave byte for byte as the first left it.
WATCHED = (
    "/etc/apt",
    "/etc/docker",
    "/etc/modprobe.d",
    "/etc/systemd/system",
    "/etc/bakegen",
    "/usr/local/sbin",
)
STEPS = ("preflight", "base", "driver", "toolkit", "runtime-docker", "check", "finish")
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) bakegen\[([a-z-]+)\]: (.*)$")
FIRST_RUN_TIMEOUT = 3600  # download + headers + DKMS: ~3 min idle, 30 min seen on a loaded 2-core machine
SECOND_RUN_TIMEOUT = 300


# ---------------------------------------------------------------------------------------------------------
# library (also used by bench/run.py)


def timings_file() -> Path:
    """Where bakes record their timings: $BAKEGEN_TIMINGS, else <cache>/timings/rootfs-e2e.json."""
    env = os.environ.get("BAKEGEN_TIMINGS")
    return Path(env) if env else default_cache_dir() / "timings" / "rootfs-e2e.json"


def image_tarball(release: Release) -> Path:
    """The cached tree of a cloud-image-like `release` (built on first use: ~1-3 minutes)."""
    return build_rootfs(release, extra_packages=IMAGE_PACKAGES)


def render_for_mirror(distro: str, mirror: Mirror, **options: Any) -> str:
    """The shell script for `distro`, its toolkit repository being the stand-in mirror, pinned to 1.18.1."""
    options.setdefault("toolkit_version", TOOLKIT_PIN)
    return render_script(
        distro,
        mirrors={"nvidia-container-toolkit": mirror.base_url},
        fingerprints={"nvidia-container-toolkit": options.pop("fingerprint", mirror.fingerprint)},
        **options,
    )


def cloud_image_sources(chroot: Chroot, release: Release) -> None:
    """Sources as Debian's cloud images ship them: deb822, the `main` component only."""
    keyring = ARCHIVE_KEYRING[release]
    text = (
        f"Types: deb\nURIs: http://deb.debian.org/debian\nSuites: {release} {release}-updates\n"
        f"Components: main\nSigned-By: {keyring}\n\n"
        f"Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: {release}-security\n"
        f"Components: main\nSigned-By: {keyring}\n"
    )
    chroot.host_path("/etc/apt/sources.list").unlink(missing_ok=True)
    chroot.write_text("/etc/apt/sources.list.d/debian.sources", text)


def prepare(chroot: Chroot, release: Release, mirror: Mirror, script: str) -> None:
    """Trust the mirror's CA, make the tree look like a cloud image with a user's daemon.json, add the script."""
    chroot.install_ca(mirror.ca_pem)
    cloud_image_sources(chroot, release)
    chroot.write_text("/etc/docker/daemon.json", json.dumps(USER_DAEMON_JSON, indent=2) + "\n")
    chroot.write_text(SCRIPT, script, mode=0o755)


@dataclass
class ScriptRun:
    rc: int
    output: str
    seconds: float


def run_script(chroot: Chroot, *args: str, timeout: float = FIRST_RUN_TIMEOUT, script: str = SCRIPT) -> ScriptRun:
    started = time.monotonic()
    result = chroot.run(["bash", script, *args], check=False, timeout=timeout)
    return ScriptRun(result.returncode, result.stdout + result.stderr, round(time.monotonic() - started, 1))


def image_kernel(chroot: Chroot) -> str:
    """The version of the kernel installed in the tree (exactly one)."""
    kernels = sorted(p.name.removeprefix("vmlinuz-") for p in chroot.host_path("/boot").glob("vmlinuz-*"))
    assert len(kernels) == 1, f"expected one image kernel in /boot, found {kernels}"
    return kernels[0]


def nvidia_modules(chroot: Chroot, kernel: str) -> list[str]:
    """The NVIDIA kernel module under /lib/modules/<kernel>, as paths inside the tree: nvidia.ko as NVIDIA names
    it, nvidia-current.ko as Debian's packages rename it (its modprobe.d maps `nvidia` to it)."""
    base = chroot.host_path(f"/lib/modules/{kernel}")
    if not base.is_dir():
        return []
    found = [*base.rglob("nvidia.ko*"), *base.rglob("nvidia-current.ko*")]
    return sorted("/" + str(p.relative_to(chroot.root)) for p in found)


def dkms_build_seconds(chroot: Chroot, kernel: str) -> float | None:
    """How long DKMS took to build the NVIDIA module for `kernel`: its make.log starts with the `date` the build
    began (DKMS 3.0) and was last written when make ended."""
    for log in chroot.host_path("/var/lib/dkms").glob(f"nvidia*/*/{kernel}/*/log/make.log"):
        lines = log.read_text(errors="replace").splitlines()
        if len(lines) < 2:
            continue
        began = chroot.run(["date", "-d", lines[1], "+%s"], check=False).stdout.strip()
        if began.isdigit():
            return float(round(log.stat().st_mtime - int(began)))
    return None


def log_steps(text: str) -> list[tuple[str, str]]:
    """(timestamp, step) of each step's opening line in a bakegen log."""
    steps = []
    for line in text.splitlines():
        match = LOG_LINE.match(line)
        if match and match.group(3).startswith("---- "):
            steps.append((match.group(1), match.group(2)))
    return steps


def step_seconds(text: str, step: str) -> float | None:
    """Seconds from the opening line of `step` to the next step's, in the LAST run recorded in the log."""
    steps = log_steps(text)
    last_start = max(i for i, (_, name) in enumerate(steps) if name == "preflight")
    steps = steps[last_start:]
    for (stamp, name), (next_stamp, _) in itertools.pairwise(steps):
        if name == step:
            fmt = "%Y-%m-%dT%H:%M:%SZ"
            return float(calendar.timegm(time.strptime(next_stamp, fmt)) - calendar.timegm(time.strptime(stamp, fmt)))
    return None


def _apt_archive_cache(release: Release) -> Path | None:
    if os.environ.get("BAKEGEN_APT_ARCHIVES", "1") == "0":
        return None
    return default_cache_dir() / "apt-archives" / release


def _is_standin(deb: Path) -> bool:
    return deb.name.startswith(("nvidia-container-toolkit", "libnvidia-container"))


def seed_apt_archives(chroot: Chroot, release: Release) -> int:
    """Copy Debian .debs kept from earlier bakes into the tree's apt cache; returns how many."""
    cache = _apt_archive_cache(release)
    if cache is None or not cache.is_dir():
        return 0
    target = chroot.host_path("/var/cache/apt/archives")
    target.mkdir(parents=True, exist_ok=True)
    debs = [deb for deb in cache.glob("*.deb") if not _is_standin(deb)]
    for deb in debs:
        shutil.copy2(deb, target / deb.name)
    return len(debs)


def keep_apt_archives(chroot: Chroot, release: Release) -> None:
    """Keep the Debian .debs this bake used (not the stand-in mirror's) for the next fresh tree."""
    cache = _apt_archive_cache(release)
    if cache is None:
        return
    cache.mkdir(parents=True, exist_ok=True)
    used = {deb.name: deb for deb in chroot.host_path("/var/cache/apt/archives").glob("*.deb") if not _is_standin(deb)}
    for name, deb in used.items():
        if not (cache / name).exists():
            shutil.copy2(deb, cache / f".{name}.part")
            os.replace(cache / f".{name}.part", cache / name)
    for old in cache.glob("*.deb"):
        if old.name not in used:
            old.unlink()


@dataclass
class Bake:
    """One release's tree and what its runs did."""

    release: Release
    distro: str
    chroot: Chroot
    mirror: Mirror
    kernel: str
    seeded_debs: int
    first: ScriptRun | None = None
    first_driver_step_s: float | None = None
    second: ScriptRun | None = None
    first_downloads: list[str] = field(default_factory=list)
    second_downloads: list[str] = field(default_factory=list)
    packages_after_first: dict[str, str] = field(default_factory=dict)
    snapshot_after_first: dict[str, str | None] = field(default_factory=dict)
    packages_after_second: dict[str, str] = field(default_factory=dict)
    snapshot_after_second: dict[str, str | None] = field(default_factory=dict)

    def first_run(self) -> ScriptRun:
        self.mirror.clear_requests()
        self.first = run_script(self.chroot, timeout=FIRST_RUN_TIMEOUT)
        self.first_downloads = self.mirror.downloads()
        self.packages_after_first = self.chroot.package_state()
        self.snapshot_after_first = self.chroot.snapshot(WATCHED)
        if self.chroot.exists("/var/log/bakegen.log"):
            self.first_driver_step_s = step_seconds(self.chroot.read_text("/var/log/bakegen.log"), "driver")
        if self.first.rc == 0:
            keep_apt_archives(self.chroot, self.release)
        return self.first

    def second_run(self) -> ScriptRun:
        self.mirror.clear_requests()
        self.second = run_script(self.chroot, timeout=SECOND_RUN_TIMEOUT)
        self.second_downloads = self.mirror.downloads()
        self.packages_after_second = self.chroot.package_state()
        self.snapshot_after_second = self.chroot.snapshot(WATCHED)
        return self.second

    def timings(self) -> dict[str, Any]:
        return {
            "release": self.release,
            "distro": self.distro,
            "image_kernel": self.kernel,
            "first_run_s": self.first.seconds if self.first else None,
            "first_run_rc": self.first.rc if self.first else None,
            "second_run_s": self.second.seconds if self.second else None,
            "second_run_rc": self.second.rc if self.second else None,
            "dkms_build_s": dkms_build_seconds(self.chroot, self.kernel),
            "driver_step_s": self.first_driver_step_s,
            "debian_debs_cached_before_first_run": self.seeded_debs,
            "loadavg_1min_at_end": round(os.getloadavg()[0], 1),
            "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


def record_timings(entry: dict[str, Any]) -> None:
    """Merge one release's timings into timings_file() (keyed by release)."""
    path = timings_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.exists() else {}
    data[entry["release"]] = entry
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def tmpfs_trees() -> bool:
    return os.environ.get("BAKEGEN_ROOTFS_TMPFS", "1") != "0"


@contextmanager
def baking(release: Release, mirror: Mirror) -> Iterator[Bake]:
    """A fresh cloud-image tree for `release`, prepared, with the generated script in it (not yet run)."""
    distro = RELEASE_DISTRO[release]
    script = render_for_mirror(distro, mirror)
    with Chroot(image_tarball(release), tmpfs=tmpfs_trees()) as chroot:
        prepare(chroot, release, mirror, script)
        yield Bake(release, distro, chroot, mirror, image_kernel(chroot), seed_apt_archives(chroot, release))


# ---------------------------------------------------------------------------------------------------------
# tests


def _skip_unless_possible() -> None:
    if os.geteuid() != 0:
        pytest.skip("root filesystems and chroots need root")
    for tool in ("mmdebstrap", "chroot", "mount"):
        if shutil.which(tool) is None:
            pytest.skip(f"missing: {tool}")


@pytest.fixture(scope="module", params=list(RELEASE_DISTRO))
def baked(request: pytest.FixtureRequest, standin_mirror_session: Mirror) -> Iterator[Bake]:
    """The release's tree after the first run of its script (one tree per release for the whole module)."""
    _skip_unless_possible()
    standin_mirror_session.set_mode("normal")
    with baking(request.param, standin_mirror_session) as bake:
        bake.first_run()
        yield bake
        record_timings(bake.timings())


@pytest.fixture(scope="module")
def rerun(baked: Bake) -> Bake:
    """The same tree after the second run."""
    if baked.first is None or baked.first.rc != 0:
        pytest.skip("the first run failed")
    baked.second_run()
    return baked


def test_first_run_succeeds_without_reboot(baked: Bake) -> None:
    # In a chroot nothing is loaded or restarted, and there is no running system to reboot: the image loads the
    # driver when it boots. Exit 10 would make an image build reboot its build machine for nothing.
    assert baked.first is not None
    assert baked.first.rc == 0, baked.first.output[-6000:]
    assert "not loading kernel modules here" in baked.first.output
    assert not baked.chroot.exists("/run/bakegen/reboot-required")


def test_dkms_module_is_built_for_the_image_kernel(baked: Bake) -> None:
    host_kernel = os.uname().release
    assert baked.kernel != host_kernel
    modules = nvidia_modules(baked.chroot, baked.kernel)
    assert modules, f"no nvidia.ko* under /lib/modules/{baked.kernel}"
    assert any("/updates/dkms/" in m for m in modules), modules
    assert not nvidia_modules(baked.chroot, host_kernel), "a module was built for the host's kernel"
    vermagic = baked.chroot.run(["modinfo", "-F", "vermagic", modules[0]]).stdout.split()[0]
    assert vermagic == baked.kernel
    assert baked.chroot.run(["dpkg-query", "-W", "-f=${Status}", f"linux-headers-{baked.kernel}"]).stdout == (
        "install ok installed"
    )


def test_driver_comes_from_debian_nonfree_held_to_its_branch(baked: Bake) -> None:
    packages = baked.packages_after_first
    branch = {"bookworm": "535", "trixie": "550"}[baked.release]
    for name in ("nvidia-kernel-dkms", "nvidia-smi", "libcuda1", "nvidia-persistenced", "firmware-nvidia-gsp"):
        assert name in packages, name
    assert packages["nvidia-kernel-dkms"].startswith(f"{branch}.")
    pin = baked.chroot.read_text("/etc/apt/preferences.d/bakegen-nvidia-driver")
    assert f"Pin: version {branch}.*" in pin
    assert "Pin-Priority: 1001" in pin
    # The image enables only `main`: bakegen adds the rest next to each suite, signed by the same key as the
    # entry it extends (apt refuses two entries for one suite whose Signed-By differs).
    components = baked.chroot.read_text("/etc/apt/sources.list.d/bakegen-components.sources")
    for suite, uri in (
        (baked.release, "debian/"),
        (f"{baked.release}-updates", "debian/"),
        (f"{baked.release}-security", "debian-security/"),
    ):
        assert (
            f"URIs: http://deb.debian.org/{uri}\nSuites: {suite}\nComponents: contrib non-free non-free-firmware\n"
            f"Signed-By: {ARCHIVE_KEYRING[baked.release]}\n"
        ) in components
    assert baked.first is not None
    assert "configured multiple times" not in baked.first.output
    assert "Conflicting values set for option Signed-By" not in baked.first.output
    blacklist = baked.chroot.read_text("/etc/modprobe.d/bakegen-blacklist-nouveau.conf")
    assert "blacklist nouveau" in blacklist
    lsinitramfs = baked.chroot.run(["lsinitramfs", f"/boot/initrd.img-{baked.kernel}"]).stdout
    assert "etc/modprobe.d/bakegen-blacklist-nouveau.conf" in lsinitramfs


def test_toolkit_repository_is_pinned_and_verified(baked: Bake) -> None:
    chroot = baked.chroot
    assert key_fingerprints(chroot.host_path(KEYRING).read_bytes()) == [baked.mirror.fingerprint]
    source = chroot.read_text(SOURCE_LIST)
    assert f"deb [signed-by={KEYRING}] {baked.mirror.base_url}/stable/deb/amd64 /" in source.splitlines()
    pin = chroot.read_text("/etc/apt/preferences.d/bakegen-nvidia-container-toolkit")
    assert f"Package: {' '.join(TOOLKIT_PACKAGES)}" in pin
    assert f"Pin: version {TOOLKIT_DEB_VERSION}" in pin


def test_toolkit_pin_picks_1_18_1_not_the_newest(baked: Bake) -> None:
    assert "1.19.0-1" in baked.mirror.versions  # the newest, what apt would pick unpinned
    for name in TOOLKIT_PACKAGES:
        assert baked.packages_after_first.get(name) == TOOLKIT_DEB_VERSION, name
    downloaded = [p for p in baked.first_downloads if p.endswith(".deb")]
    assert downloaded and all(f"_{TOOLKIT_DEB_VERSION}_" in p for p in downloaded), downloaded
    policy = baked.chroot.run(["apt-cache", "policy", "nvidia-container-toolkit"]).stdout
    assert f"Candidate: {TOOLKIT_DEB_VERSION}" in policy


def test_docker_is_installed_and_configured_keeping_the_users_keys(baked: Bake) -> None:
    assert "docker.io" in baked.packages_after_first
    config = json.loads(baked.chroot.read_text("/etc/docker/daemon.json"))
    assert config["runtimes"]["nvidia"]["path"].endswith("nvidia-container-runtime")
    for key, value in USER_DAEMON_JSON.items():
        assert config[key] == value
    backup = json.loads(baked.chroot.read_text("/etc/docker/daemon.json.bakegen-backup"))
    assert backup == USER_DAEMON_JSON
    assert baked.chroot.exists("/etc/systemd/system/multi-user.target.wants/docker.service")


def test_gpu_check_is_installed_enabled_and_finds_no_gpu(baked: Bake) -> None:
    chroot = baked.chroot
    program = chroot.host_path("/usr/local/sbin/bakegen-gpu-check")
    assert program.is_file() and os.access(program, os.X_OK)
    wants = Path(str(chroot.root) + "/etc/systemd/system/multi-user.target.wants/bakegen-gpu-check.service")
    assert wants.is_symlink()
    assert os.readlink(wants) == "/etc/systemd/system/bakegen-gpu-check.service"
    config = json.loads(chroot.read_text("/etc/bakegen/gpu-check.json"))
    assert config["driver_branch"] == {"bookworm": "535", "trixie": "550"}[baked.release]
    result = json.loads(chroot.read_text("/var/lib/bakegen/gpu-check.json"))
    assert result["status"] == "no-gpu"


def test_log_has_timestamped_step_lines(baked: Bake) -> None:
    log = baked.chroot.read_text("/var/log/bakegen.log")
    steps = [name for _, name in log_steps(log)]
    assert steps == list(STEPS), steps
    assert re.search(r"^\S+Z bakegen\[finish\]: done$", log, re.M)


def test_second_run_changes_nothing_and_downloads_nothing(rerun: Bake) -> None:
    assert rerun.second is not None
    assert rerun.second.rc == 0, rerun.second.output[-6000:]
    assert rerun.packages_after_second == rerun.packages_after_first
    assert rerun.snapshot_after_second == rerun.snapshot_after_first
    fetched = [p for p in rerun.second_downloads if p.endswith((".deb", "/gpgkey"))]
    assert fetched == [], fetched
    assert "wrote /" not in rerun.second.output
    assert "apt-get install" not in rerun.second.output
    assert "dkms autoinstall" not in rerun.second.output
    # Well under the first run: nothing to download, build or install.
    assert rerun.first is not None
    assert rerun.second.seconds < rerun.first.seconds / 3


def test_user_keys_survive_the_second_run(rerun: Bake) -> None:
    config = json.loads(rerun.chroot.read_text("/etc/docker/daemon.json"))
    for key, value in USER_DAEMON_JSON.items():
        assert config[key] == value
    assert "nvidia" in config["runtimes"]


GUARD = "/etc/kernel/postinst.d/zz-bakegen-nvidia"
GUARD_STATE = "/var/lib/bakegen/kernel-guard.json"
# Second kernels from the release's own archive: another flavour of its kernel is a new kernel to the system.
SECOND_KERNEL = {"bookworm": "amd64"}
UNBUILDABLE_KERNEL = {"bookworm": "rt-amd64", "trixie": "rt-amd64"}


def _installed_kernel(chroot: Chroot, flavour: str) -> str:
    names = [p.name.removeprefix("vmlinuz-") for p in chroot.host_path("/boot").glob("vmlinuz-*")]
    # 6.1.0-41-amd64 (bookworm), 6.12.118+deb13-rt-amd64 (trixie); not 6.1.0-41-cloud-amd64 for amd64
    (kernel,) = [n for n in names if re.fullmatch(rf"[0-9][0-9.]*(-[0-9]+|\+deb[0-9]+)-{re.escape(flavour)}", n)]
    return kernel


UU_CONFIG = "/etc/apt/apt.conf.d/51bakegen-nvidia"


def _standin_deb(chroot: Chroot, name: str, version: str) -> str:
    """A STAND-IN package (no files, no dependencies) built inside the tree; its path there."""
    root = f"/tmp/uu-{name}-{version}"
    chroot.run(["mkdir", "-p", f"{root}/DEBIAN"])
    chroot.write_text(
        f"{root}/DEBIAN/control",
        f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: bakegen tests <t@invalid>\n"
        f"Description: STAND-IN built by bakegen's tests (unattended-upgrades proof); not vendor software\n",
    )
    chroot.run(["dpkg-deb", "--build", root, f"/srv/uu/{name}_{version}_all.deb"])
    return f"/srv/uu/{name}_{version}_all.deb"


def test_unattended_upgrades_leave_nvidia_packages_alone(rerun: Bake) -> None:
    """Debian's unattended-upgrades, offered a newer nvidia-smi (a stand-in, in the driver's pinned branch) and a
    newer unrelated package from an origin it may upgrade from: it upgrades the unrelated one only, and would have
    upgraded nvidia-smi too without bakegen's Package-Blacklist (the control)."""
    chroot = rerun.chroot
    assert chroot.exists(UU_CONFIG)
    chroot.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "unattended-upgrades"], timeout=900)
    chroot.run(["mkdir", "-p", "/srv/uu"])
    installed = chroot.package_state()["nvidia-smi"]
    branch = installed.split(".")[0]
    chroot.run(["dpkg", "-i", _standin_deb(chroot, "bakegen-uu-control", "1.0")])
    chroot.run(["rm", "/srv/uu/bakegen-uu-control_1.0_all.deb"])
    _standin_deb(chroot, "bakegen-uu-control", "2.0")
    _standin_deb(chroot, "nvidia-smi", f"{branch}.999-1")
    repo = chroot.host_path("/srv/uu")  # indexed with the host's apt-ftparchive (apt-utils is not in the image)
    packages = subprocess.run(["apt-ftparchive", "packages", "."], cwd=repo, check=True, capture_output=True).stdout
    (repo / "Packages").write_bytes(packages)
    release = subprocess.run(
        ["apt-ftparchive", "-o", "APT::FTPArchive::Release::Origin=bakegen-uu-test", "release", "."],
        cwd=repo,
        check=True,
        capture_output=True,
    ).stdout
    (repo / "Release").write_bytes(release)
    chroot.write_text("/etc/apt/sources.list.d/uu-test.list", "deb [trusted=yes] file:/srv/uu ./\n")
    chroot.write_text(
        "/etc/apt/apt.conf.d/52uu-test", 'Unattended-Upgrade::Origins-Pattern { "origin=bakegen-uu-test"; };\n'
    )
    chroot.run(["apt-get", "update", "-q"], timeout=600)
    assert f"Candidate: {branch}.999-1" in chroot.run(["apt-cache", "policy", "nvidia-smi"]).stdout

    def dry_run() -> str:
        done = chroot.run(["unattended-upgrade", "--dry-run", "--debug"], check=False, timeout=900)
        return done.stdout + done.stderr

    held = dry_run()
    assert "Packages that will be upgraded: bakegen-uu-control" in held, held[-3000:]
    assert "nvidia-smi" not in held.split("Packages that will be upgraded:")[1].splitlines()[0]
    assert "skipping blacklisted package nvidia-smi" in held, held[-3000:]

    chroot.run(["mv", UU_CONFIG, "/tmp/51bakegen-nvidia"])  # the control: without bakegen's blacklist
    try:
        free = dry_run()
    finally:
        chroot.run(["mv", "/tmp/51bakegen-nvidia", UU_CONFIG])
    upgraded = free.split("Packages that will be upgraded:")[1].splitlines()[0]
    assert "nvidia-smi" in upgraded and "bakegen-uu-control" in upgraded, free[-3000:]
    assert chroot.package_state()["nvidia-smi"] == installed  # a dry run changes nothing
    chroot.run(["rm", "-f", "/etc/apt/sources.list.d/uu-test.list", "/etc/apt/apt.conf.d/52uu-test"])


def test_kernel_installed_later_gets_its_module_or_fails_loudly(rerun: Bake) -> None:
    """After provisioning, a kernel installed the normal way (apt) gets the NVIDIA module through DKMS's hook and
    bakegen's guard, and the guard records it; a kernel whose headers are not there cannot have one: its
    installation fails loudly, the guard records it, and the kernel stays unconfigured (no boot entry).
    The success path costs a DKMS build (minutes): bookworm proves it, both releases prove the failure path."""
    chroot = rerun.chroot
    assert chroot.exists(GUARD)
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends"]
    if rerun.release in SECOND_KERNEL:
        flavour = SECOND_KERNEL[rerun.release]
        added = chroot.run([*install, f"linux-image-{flavour}", f"linux-headers-{flavour}"], check=False, timeout=1500)
        assert added.returncode == 0, (added.stdout + added.stderr)[-4000:]
        kernel = _installed_kernel(chroot, flavour)
        assert kernel != rerun.kernel
        found = chroot.run(f"find /lib/modules/{kernel} -name 'nvidia-current.ko*' -o -name 'nvidia.ko*'").stdout
        assert found.strip(), f"no NVIDIA module for {kernel}"
        state = json.loads(chroot.read_text(GUARD_STATE))
        assert (state["kernel"], state["module"]) == (kernel, True)

    flavour = UNBUILDABLE_KERNEL[rerun.release]
    failed = chroot.run([*install, f"linux-image-{flavour}"], check=False, timeout=1500)
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0, output[-4000:]
    kernel = _installed_kernel(chroot, flavour)
    assert f"bakegen-kernel-guard: no NVIDIA kernel module for kernel {kernel}" in output
    state = json.loads(chroot.read_text(GUARD_STATE))
    assert (state["kernel"], state["module"]) == (kernel, False)
    assert "is not made the boot default" in state["message"]
    status = chroot.run(["dpkg-query", "-W", "-f=${db:Status-Status}", f"linux-image-{kernel}"]).stdout
    assert status != "installed", status  # left unconfigured: update-grub after the guard never ran for it
    assert f"bakegen-kernel-guard: ERROR: no NVIDIA kernel module for kernel {kernel}" in chroot.read_text(
        "/var/log/bakegen.log"
    )
    # The way out the guard names: remove that kernel (or install its headers and `dpkg --configure -a`).
    chroot.run(["apt-get", "purge", "-y", "-q", f"linux-image-{kernel}", f"linux-image-{flavour}"], timeout=900)
    assert chroot.run(["dpkg", "--audit"]).stdout == ""


def _state_outside_tmp(chroot: Chroot) -> dict[str, str | None]:
    return chroot.snapshot(["/etc", "/usr/local", "/var/lib/bakegen", "/var/log", "/boot", "/lib/modules", "/run"])


@pytest.mark.parametrize("release", list(RELEASE_DISTRO))
def test_dry_run_changes_nothing(release: Release, standin_mirror: Mirror) -> None:
    _skip_unless_possible()
    script = render_for_mirror(RELEASE_DISTRO[release], standin_mirror)
    with Chroot(image_tarball(release), tmpfs=tmpfs_trees()) as chroot:
        prepare(chroot, release, standin_mirror, script)
        packages, files = chroot.package_state(), _state_outside_tmp(chroot)
        standin_mirror.clear_requests()
        run = run_script(chroot, "--dry-run", timeout=300)
        assert run.rc == 0, run.output[-4000:]
        assert "dry run done: nothing was changed" in run.output
        assert "dry-run: would run: apt-get" in run.output
        assert chroot.package_state() == packages
        assert _state_outside_tmp(chroot) == files
        assert standin_mirror.downloads() == []
