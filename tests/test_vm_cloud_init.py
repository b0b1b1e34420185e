"""bakegen's cloud-init output booted for real: Debian 12 and 13 virtual machines under QEMU (docs/vm-tests.md).

Per release (bookworm -> debian12, trixie -> debian13), with the toolkit from the stand-in mirror pinned to 1.18.1
and the driver left out (`--no-driver`: Debian's DKMS build takes ~49 min under TCG; tests/test_rootfs_e2e.py builds
it natively):

- the cloud-init path: bakegen's user-data for Azure (`--cloud azure`: a MIME message whose one part is the
  gzip-compressed user-data, which cloud-init unpacks itself; the same YAML as `--cloud generic`, byte for byte,
  tests/test_user_data_clouds.py), unchanged, booted on the release's image. Boot 1 runs the install (no GPU, no
  nouveau: nothing needs a reboot, so power_state must not reboot); boot 2, started by the harness on the same disk
  and instance, runs the GPU check unit, which records "no-gpu".
- the bootstrap path (`--script-url`, the form that fits AWS): the user-data downloads the shell script (the
  `--format shell` script itself) from the stand-in HTTPS server, checks its sha256 and runs it; it must end in the
  state the cloud-init path ended in after its first boot. A published script changed after generation stops
  before anything runs (bookworm).
- a user-data generated for debian13 booted on debian12 refuses cleanly (exit 3, both versions named) and installs
  nothing from the mirror.

Everything is read from outside the guest: the serial console, the harness's results disk (cloud-init status,
logs, /var/lib/bakegen, `dpkg-query -W`, `docker info`) and files read off the guest's disk after the run.
Each run records its timings in timings_file() for bench/vm_boot.py. Minutes per boot under TCG.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from generator.model import Format
from generator.plan import CheckOptions
from generator.render import embedded_files
from tests.helpers import REPO, TOOLKIT_PACKAGES, render_files
from tests.support.mirror import Mirror, Request, key_fingerprints
from tests.support.rootfs import default_cache_dir
from tests.support.vm import BootEnd, VmRun, boot, kill_all_vms
from tests.support.vm_fixtures import ImageFactory, vm_releases
from tests.support.vm_image import Release, VmImage

RELEASE_DISTRO: dict[Release, str] = {"bookworm": "debian12", "trixie": "debian13"}
DISTRO_VERSION = {"debian12": "12", "debian13": "13"}
GUEST_HOST = "10.0.2.2"  # the host's loopback as QEMU's user network shows it to the guest
REPO_NAME = "nvidia-container-toolkit"
TOOLKIT_VERSION = "1.18.1"
TOOLKIT_DEB_VERSION = "1.18.1-1"
KEYRING = f"/etc/apt/keyrings/{REPO_NAME}.gpg"
SOURCE_LIST = f"/etc/apt/sources.list.d/{REPO_NAME}.list"
PIN_FILE = f"/etc/apt/preferences.d/bakegen-{REPO_NAME}"
# Where the bootstrap path's script is published on the stand-in server (under the mirror's web root).
PUBLISHED_SCRIPT = "bakegen/{name}/install.sh"
# What the install leaves behind, read off the guest's disk after the run (folders are read whole).
STATE_PATHS = (
    "/etc/apt/keyrings",
    "/etc/apt/sources.list.d",
    "/etc/apt/preferences.d",
    "/etc/docker",
    "/etc/bakegen",
    "/etc/udev/rules.d",
    "/etc/systemd/system/bakegen-gpu-check.service",
    "/etc/systemd/system/multi-user.target.wants",
    "/usr/local/sbin/bakegen-gpu-check",
)
# Files of STATE_PATHS the two paths must leave identical (relative to the extraction folder).
SAME_STATE_FILES = (
    f"keyrings/{REPO_NAME}.gpg",
    f"sources.list.d/{REPO_NAME}.list",
    f"preferences.d/bakegen-{REPO_NAME}",
    "docker/daemon.json",
    "bakegen/gpu-check.json",
    "rules.d/71-nvidia-dev-char.rules",
)
# Files the user-data's copy of the script writes without comments (generator/embed.py): the bootstrap path's
# script writes them as templates/files/ has them. (extraction name, templates/files name, embedded_files key)
EMBEDDED_STATE_FILES = (
    ("bakegen-gpu-check", "bakegen-gpu-check.py", "gpu_check_program"),
    ("bakegen-gpu-check.service", "bakegen-gpu-check.service", "gpu_check_unit"),
)
# Result fields that differ from run to run by nature.
VOLATILE_RESULT_KEYS = ("time", "duration_s")

FIRST_BOOT_TIMEOUT_S = 2700  # apt update, docker.io and the toolkit under TCG, on a shared 2-core machine
LATER_BOOT_TIMEOUT_S = 1200
WRONG_RELEASE_TIMEOUT_S = 1200


# ---------------------------------------------------------------------------------------------------------
# library (also used by bench/vm_boot.py)


def timings_file() -> Path:
    """Where runs record their timings: $BAKEGEN_VM_TIMINGS, else <cache>/timings/vm-cloud-init.json."""
    env = os.environ.get("BAKEGEN_VM_TIMINGS")
    return Path(env) if env else default_cache_dir() / "timings" / "vm-cloud-init.json"


def record_timings(key: str, entry: dict[str, Any]) -> None:
    """Merge one run's timings into timings_file() under `key` (e.g. "cloud-init/bookworm")."""
    path = timings_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.with_suffix(".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test sessions (one per release) may finish together
        data = json.loads(path.read_text()) if path.exists() else {}
        data[key] = entry
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)


def render_options(mirror: Mirror) -> dict[str, Any]:
    """`bakegen DISTRO --no-driver --toolkit-version 1.18.1 --mirror ...=URL --key-fingerprint ...=FPR
    --no-container-test`: no registry is reachable from the guest, so the install would only try to pull the
    smoke test's image in vain (the pull is traced in tests/test_trace.py)."""
    return {
        "mirrors": {REPO_NAME: mirror.base_url_for(GUEST_HOST)},
        "fingerprints": {REPO_NAME: mirror.fingerprint},
        "install_driver": False,
        "toolkit_version": TOOLKIT_VERSION,
        "check": CheckOptions(container_test=False),
    }


def cloud_init_user_data(distro: str, mirror: Mirror, arch: str = "x86_64", cloud: str = "generic") -> str:
    """bakegen's cloud-init output for `cloud`, exactly as a user gets it (text: generic, gcp or azure)."""
    (user_data,) = render_files(distro, Format.CLOUD_INIT, arch=arch, user_data_cloud=cloud, **render_options(mirror))
    assert isinstance(user_data.content, str), "a binary form: the NoCloud seed takes text here"
    return user_data.content


def published_path(url: str) -> str:
    """The path the stand-in server serves `url` at (under its web root)."""
    return urlsplit(url).path


def bootstrap_user_data(distro: str, mirror: Mirror, name: str, change: str = "") -> tuple[str, str, str]:
    """bakegen's bootstrap form (`--cloud aws --script-url`), its script published on the stand-in server under
    PUBLISHED_SCRIPT with `change` appended (a change after generation). Returns (user-data, URL, the script)."""
    url = f"{mirror.base_url_for(GUEST_HOST)}/{PUBLISHED_SCRIPT.format(name=name)}"
    user_data, script = render_files(
        distro, Format.CLOUD_INIT, user_data_cloud="aws", script_url=url, **render_options(mirror)
    )
    assert str(script.path) == "install.sh" and isinstance(script.content, str) and isinstance(user_data.content, str)
    published = mirror.www / published_path(url).lstrip("/")
    published.parent.mkdir(parents=True, exist_ok=True)
    published.write_text(script.content + change)
    return user_data.content, url, script.content


def again(previous: VmRun) -> VmImage:
    """An image whose disk is `previous`'s disk as it was left: booting it is the next boot of that machine."""
    return dataclasses.replace(previous.image, base=previous.overlay)


def result_time(result: dict[str, Any]) -> float:
    """When the GPU check's result was ready, as a Unix time (start of the run + its duration)."""
    started = datetime.datetime.strptime(result["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    return started.timestamp() + float(result["duration_s"])


def read_check_result(run: VmRun) -> dict[str, Any] | None:
    path = run.last.results_dir and run.last.results_dir / "var-lib-bakegen" / "gpu-check.json"
    return json.loads(path.read_text()) if path and path.is_file() else None


def installed_packages(run: VmRun) -> dict[str, str]:
    """`dpkg-query -W` as the guest printed it at the end of the run's last boot: installed package -> version."""
    packages = {}
    for line in run.last.read_result("packages.tsv").splitlines():
        name, version, status = (line.split("\t") + ["", ""])[:3]
        if status == "installed":
            packages[name] = version
    return packages


def docker_runtimes(run: VmRun) -> dict[str, Any]:
    """`docker info`'s Runtimes as the guest's docker printed them at the end of the run's last boot."""
    info = json.loads(run.last.read_result("docker-info.json"))
    runtimes: dict[str, Any] = info["Runtimes"]
    return runtimes


def load_average() -> float:
    return round(os.getloadavg()[0], 1)


@dataclass
class Outcome:
    """What one VM run of a user-data left: its boots, the mirror's request log, the guest's files, timings."""

    release: Release
    kind: str  # "cloud-init", "shell" or "wrong-release"
    user_data: str
    runs: list[VmRun]
    requests: list[Request]
    state: Path  # STATE_PATHS read off the disk after the last boot
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def first(self) -> VmRun:
        return self.runs[0]

    @property
    def last(self) -> VmRun:
        return self.runs[-1]

    def summary(self) -> str:
        return "\n".join(run.summary() for run in self.runs)


def boot_user_data(
    image: VmImage,
    user_data: str,
    mirror: Mirror,
    workdir: Path,
    *,
    release: Release,
    kind: str,
    boots: int,
) -> Outcome:
    """Boot `user_data` on a fresh disk of `image`; with boots=2, boot that disk a second time (the same instance,
    started by the harness: nothing in the guest asked for it). Records the timings."""
    started = time.monotonic()
    load_start = load_average()
    mirror.clear_requests()
    runs: list[VmRun] = []
    power_on: list[float] = []
    try:
        power_on.append(time.time())
        runs.append(
            boot(
                image,
                user_data,
                boots="until-done",
                max_boots=2,
                timeout_s=FIRST_BOOT_TIMEOUT_S,
                run_dir=workdir / "boot-1",
            )
        )
        requests = mirror.requests
        if boots > 1 and runs[0].powered_off:
            power_on.append(time.time())
            runs.append(
                boot(
                    again(runs[0]),
                    user_data,
                    meta_data_instance_id=runs[0].instance_id,
                    boots="until-done",
                    max_boots=1,
                    timeout_s=LATER_BOOT_TIMEOUT_S,
                    run_dir=workdir / "boot-2",
                )
            )
    finally:
        kill_all_vms()
    state = workdir / "state"
    runs[-1].extract_from_disk(STATE_PATHS, state)
    outcome = Outcome(release, kind, user_data, runs, requests, state)
    timings: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%MZ"),
        "release": release,
        "kind": kind,
        "image_kernel": image.kernel_version,
        "cpus": os.cpu_count(),
        "loadavg_1min_at_start": load_start,
        "loadavg_1min_at_end": load_average(),
    }
    for number, (run, at) in enumerate(zip(runs, power_on, strict=True), start=1):
        result = read_check_result(run)
        timings[f"boot{number}_wall_s"] = round(run.wall_s, 1)
        timings[f"boot{number}_cloud_init_done_uptime_s"] = run.last.cloud_init_finished_s
        timings[f"boot{number}_power_on_to_check_result_s"] = round(result_time(result) - at, 1) if result else None
    timings["total_s"] = round(time.monotonic() - started, 1)
    outcome.timings = timings
    record_timings(f"{kind}/{release}", timings)
    return outcome


# ---------------------------------------------------------------------------------------------------------
# fixtures: one VM run per release and path, shared by the tests that read it


@pytest.fixture(scope="module", params=vm_releases())
def release(request: pytest.FixtureRequest) -> Release:
    chosen: Release = request.param
    return chosen


@pytest.fixture(scope="module")
def mirror_image(release: Release, standin_mirror_session: Mirror, vm_image_factory: ImageFactory) -> VmImage:
    """The release's image, trusting the stand-in mirror's CA (built once per session: the CA is per session)."""
    started = time.monotonic()
    image = vm_image_factory(release, extra_ca=[standin_mirror_session.ca_pem])
    record_timings(f"image/{release}", {"seconds": round(time.monotonic() - started, 1), "key": image.key})
    return image


@pytest.fixture(scope="module")
def cloud_init_outcome(
    release: Release, mirror_image: VmImage, standin_mirror_session: Mirror, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Outcome]:
    mirror = standin_mirror_session
    mirror.set_mode("normal")
    user_data = cloud_init_user_data(RELEASE_DISTRO[release], mirror, cloud="azure")
    yield boot_user_data(
        mirror_image,
        user_data,
        mirror,
        tmp_path_factory.mktemp(f"cloud-init-{release}"),
        release=release,
        kind="cloud-init",
        boots=2,
    )


@pytest.fixture(scope="module")
def bootstrap_outcome(
    release: Release, mirror_image: VmImage, standin_mirror_session: Mirror, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Outcome]:
    mirror = standin_mirror_session
    mirror.set_mode("normal")
    user_data, _, _ = bootstrap_user_data(RELEASE_DISTRO[release], mirror, release)
    yield boot_user_data(
        mirror_image,
        user_data,
        mirror,
        tmp_path_factory.mktemp(f"bootstrap-{release}"),
        release=release,
        kind="bootstrap",
        boots=1,
    )


# ---------------------------------------------------------------------------------------------------------
# assertions shared by the paths


def assert_clean_boot(outcome: Outcome, run: VmRun) -> None:
    """cloud-init done without errors, the boot ended in the harness's power-off, no unit cycle or crash."""
    summary = outcome.summary()
    assert run.boot_count == 1, f"a boot that nothing should reboot rebooted:\n{summary}"
    only = run.last
    assert only.end is BootEnd.POWEROFF, summary
    assert only.guest_shutdown == "poweroff", summary
    assert "bakegen-autopoweroff: no reboot scheduled" in only.serial_text, summary
    assert only.cloud_init is not None, summary
    assert only.cloud_init.status == "done", (summary, only.cloud_init.raw)
    assert not only.cloud_init.errors, (summary, only.cloud_init.raw)
    assert not only.cloud_init.recoverable_errors, (summary, only.cloud_init.raw)
    journal = only.read_result("journal.txt")
    assert "ordering cycle" not in journal, summary
    assert "bakegen-gpu-check" not in only.read_result("failed-units.txt"), summary


def assert_toolkit_installed(outcome: Outcome, mirror: Mirror, deb_arch: str = "amd64") -> None:
    """The repository and its key verified and installed, the four packages at the pin, docker knows nvidia."""
    summary = outcome.summary()
    run = outcome.first
    base_url = mirror.base_url_for(GUEST_HOST)
    log = run.last.read_result("bakegen.log")

    # the key: fetched from the mirror, verified against the pinned fingerprint, stored as a binary keyring
    assert f"key from {base_url}/gpgkey verified: {mirror.fingerprint}" in log, log[-3000:]
    assert key_fingerprints((outcome.state / "keyrings" / f"{REPO_NAME}.gpg").read_bytes()) == [mirror.fingerprint]
    # the source: signed-by that keyring only
    source = (outcome.state / "sources.list.d" / f"{REPO_NAME}.list").read_text()
    assert f"deb [signed-by={KEYRING}] {base_url}/stable/deb/{deb_arch} /" in source.splitlines(), source
    pin = (outcome.state / "preferences.d" / f"bakegen-{REPO_NAME}").read_text()
    assert f"Pin: version {TOOLKIT_DEB_VERSION}" in pin, pin

    # the packages, as dpkg-query in the guest printed them
    packages = installed_packages(run)
    assert {p: packages.get(p) for p in TOOLKIT_PACKAGES} == dict.fromkeys(TOOLKIT_PACKAGES, TOOLKIT_DEB_VERSION)
    assert "docker.io" in packages, sorted(packages)
    # ... downloaded from the mirror by the guest, at the pinned version only
    guest_requests = [r for r in outcome.requests if r.host == f"{GUEST_HOST}:{mirror.port}"]
    assert guest_requests and len(guest_requests) == len(outcome.requests), outcome.requests
    debs = sorted(p.rsplit("/", 1)[1] for p in mirror_downloads(outcome) if p.endswith(".deb"))
    assert debs == sorted(f"{p}_{TOOLKIT_DEB_VERSION}_{deb_arch}.deb" for p in TOOLKIT_PACKAGES), debs

    # the runtime: nvidia-ctk configured docker, bakegen restarted Debian's docker.io, dockerd knows nvidia
    daemon = json.loads((outcome.state / "docker" / "daemon.json").read_text())
    assert "nvidia" in daemon.get("runtimes", {}), daemon
    assert "run: nvidia-ctk runtime configure --runtime=docker" in log, log[-3000:]
    assert "run: systemctl restart docker.service" in log, log[-3000:]
    assert run.last.read_result("docker-info.rc").strip() == "0", run.last.read_result("docker-info.err")
    assert "nvidia" in docker_runtimes(run), (summary, docker_runtimes(run))


def mirror_downloads(outcome: Outcome) -> list[str]:
    return [r.path for r in outcome.requests if r.method == "GET" and r.status == 200]


def comparable(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in VOLATILE_RESULT_KEYS}


# ---------------------------------------------------------------------------------------------------------
# 1. the cloud-init path


@pytest.mark.vm
def test_cloud_init_first_boot_installs_without_reboot(
    cloud_init_outcome: Outcome, standin_mirror_session: Mirror
) -> None:
    outcome = cloud_init_outcome
    run = outcome.first
    assert_clean_boot(outcome, run)
    assert_toolkit_installed(outcome, standin_mirror_session)

    boot1 = run.last
    log = boot1.read_result("bakegen.log")
    # The script ran once, to the end, and asked for no reboot: no GPU, no driver to load, no nouveau.
    assert log.count("---- checking this is") == 1, log[-3000:]
    assert re.search(r"bakegen\[finish\]: done$", log, re.M), log[-3000:]
    assert "reboot required" not in log, log[-3000:]
    # power_state evaluated its condition and left the machine alone; the harness powered it off.
    cloud_init_log = boot1.read_result("cloud-init.log")
    assert "(test -f /run/bakegen/reboot-required): exited 1. condition not met" in cloud_init_log
    assert "condition met." not in cloud_init_log.replace("condition not met.", "")
    assert "rebooting to load the NVIDIA driver" not in boot1.serial_text
    # The install ended with the GPU check, which found no GPU and says so without failing.
    result = read_check_result(run)
    assert result is not None, outcome.summary()
    assert (result["status"], result["exit_code"]) == ("no-gpu", 0), result


@pytest.mark.vm
def test_cloud_init_second_boot_runs_the_gpu_check(cloud_init_outcome: Outcome) -> None:
    outcome = cloud_init_outcome
    assert len(outcome.runs) == 2, f"no second boot: the first did not end cleanly\n{outcome.summary()}"
    first, second = outcome.runs
    assert_clean_boot(outcome, second)
    boot2 = second.last

    # Same machine, same instance: cloud-init did not run the install again.
    assert boot2.read_result("bakegen.log") == first.last.read_result("bakegen.log")
    assert boot2.read_result("cloud-init-output.log").count("---- checking this is") == 1
    # The check ran as a unit on this boot and recorded "no-gpu".
    journal = boot2.read_result("journal.txt")
    assert re.search(r"Finished bakegen-gpu-check\.service", journal), journal[-4000:]
    assert "overall: NO-GPU: no NVIDIA GPU present" in journal, journal[-4000:]
    before, after = read_check_result(first), read_check_result(second)
    assert before is not None and after is not None, outcome.summary()
    assert result_time(after) > result_time(before) + 1, (before["time"], after["time"])
    assert (after["status"], after["exit_code"]) == ("no-gpu", 0), after
    checks = {c["name"]: c["status"] for c in after["checks"]}
    assert checks["gpu_present"] == "skip", checks
    # The stored pinned key is read with the guest's gpg, inside the unit's sandbox, GPU or not.
    assert checks.pop("repository_keys") == "pass", after["checks"]
    assert set(checks.values()) == {"skip"}, checks
    assert after["config"]["settings"]["runtimes"] == ["docker"], after["config"]
    # Docker came back up with the nvidia runtime registered.
    assert "nvidia" in docker_runtimes(second), docker_runtimes(second)


# Found by these boots and fixed since: trixie's docker.io only Recommends docker-cli (no `docker` command; now
# distros/debian13.yaml installs docker-cli too).
@pytest.mark.vm
def test_docker_cli_is_installed(cloud_init_outcome: Outcome) -> None:
    """The host has the `docker` command users (and the GPU check) run containers with."""
    run = cloud_init_outcome.first
    source = run.last.read_result("docker-info.source").strip()
    assert source == "cli", (
        f"no docker command (docker-info from {source}); packages: {sorted(installed_packages(run))}"
    )


# ---------------------------------------------------------------------------------------------------------
# 2. the bootstrap path (--script-url): the shell script downloaded, verified and run


@pytest.mark.vm
def test_bootstrap_path_ends_in_the_same_state(
    bootstrap_outcome: Outcome, cloud_init_outcome: Outcome, standin_mirror_session: Mirror
) -> None:
    boot, cloud = bootstrap_outcome, cloud_init_outcome
    assert "put_file" not in boot.user_data and len(boot.user_data.encode()) <= 16384, "not the small form"
    assert_clean_boot(boot, boot.first)
    assert_toolkit_installed(boot, standin_mirror_session)
    log = boot.first.last.read_result("bakegen.log")
    assert re.search(r"bakegen\[finish\]: done$", log, re.M), log[-3000:]
    # The script was fetched once from where it was published, and verified before it ran.
    path = published_path(
        f"{standin_mirror_session.base_url_for(GUEST_HOST)}/{PUBLISHED_SCRIPT.format(name=boot.release)}"
    )
    assert [r.status for r in boot.requests if r.path == path] == [200], boot.requests
    output = boot.first.last.read_result("cloud-init-output.log")
    assert re.search(rf"bakegen-bootstrap: downloaded https://\S+{path}, sha256 [0-9a-f]{{64}} verified", output), (
        output
    )
    assert output.index("verified, installed as /usr/local/sbin/bakegen-install") < output.index(
        "---- checking this is"
    )

    # Same packages (every one, not only the toolkit's), same configuration, same check result.
    assert installed_packages(boot.first) == installed_packages(cloud.first)
    assert docker_runtimes(boot.first) == docker_runtimes(cloud.first)
    differ = [
        name for name in SAME_STATE_FILES if (boot.state / name).read_bytes() != (cloud.state / name).read_bytes()
    ]
    assert not differ, differ
    # The check program and its unit: as templates/files/ has them here, without comments from the user-data copy.
    embedded = embedded_files()
    for name, source, key in EMBEDDED_STATE_FILES:
        assert (boot.state / name).read_bytes() == (REPO / "templates" / "files" / source).read_bytes(), name
        assert (cloud.state / name).read_text() == embedded[key], name
    enabled = sorted(p.name for p in (boot.state / "multi-user.target.wants").iterdir())
    assert enabled == sorted(p.name for p in (cloud.state / "multi-user.target.wants").iterdir())
    assert "bakegen-gpu-check.service" in enabled and "docker.service" in enabled, enabled
    boot_result, cloud_result = read_check_result(boot.first), read_check_result(cloud.first)
    assert boot_result is not None and cloud_result is not None
    assert comparable(boot_result) == comparable(cloud_result)


@pytest.mark.vm
def test_bootstrap_refuses_a_script_changed_after_generation(
    vm_image_factory: ImageFactory, standin_mirror: Mirror, tmp_path: Path
) -> None:
    """The published script differs from the generated one by a line: nothing runs, and cloud-init says so."""
    if "bookworm" not in vm_releases():
        pytest.skip("needs the bookworm image (BAKEGEN_VM_RELEASES excludes it)")
    mirror = standin_mirror
    image = vm_image_factory("bookworm", extra_ca=[mirror.ca_pem])
    user_data, url, script = bootstrap_user_data("debian12", mirror, "changed", change="touch /tmp/owned\n")
    outcome = boot_user_data(image, user_data, mirror, tmp_path, release="bookworm", kind="changed-script", boots=1)
    summary = outcome.summary()
    only = outcome.first.last
    assert outcome.first.boot_count == 1 and only.end is BootEnd.POWEROFF, summary

    output = only.read_result("cloud-init-output.log")
    changed = hashlib.sha256((script + "touch /tmp/owned\n").encode()).hexdigest()
    want = hashlib.sha256(script.encode()).hexdigest()
    assert (
        f"bakegen-bootstrap: {url} has sha256 {changed}, but this user-data was generated for {want}: not running it"
        in output
    ), output[-3000:]
    assert "---- checking this is" not in output, "the install script ran"
    cloud_init_log = only.read_result("cloud-init.log")
    assert re.search(r"Command: \['/var/lib/cloud/instance/scripts/runcmd'\]\nExit code: 4\n", cloud_init_log), summary
    assert only.cloud_init is not None and only.cloud_init.status == "error", summary
    assert any(re.search(r"scripts[-_]user.*runcmd", e) for e in only.cloud_init.errors), only.cloud_init.raw
    # One request, for the script; nothing installed, configured or written by the install.
    assert [r.path for r in outcome.requests] == [published_path(url)], outcome.requests
    packages = installed_packages(outcome.first)
    assert not [p for p in packages if p in TOOLKIT_PACKAGES or p == "docker.io"], sorted(packages)
    assert not (outcome.state / "keyrings" / f"{REPO_NAME}.gpg").exists()
    assert not (outcome.state / "bakegen").exists() and not (outcome.state / "bakegen-gpu-check").exists()


# ---------------------------------------------------------------------------------------------------------
# 3. the wrong release refuses cleanly


@pytest.mark.vm
def test_debian13_user_data_on_debian12_refuses(
    vm_image_factory: ImageFactory, standin_mirror: Mirror, tmp_path: Path
) -> None:
    if "bookworm" not in vm_releases():
        pytest.skip("needs the bookworm image (BAKEGEN_VM_RELEASES excludes it)")
    mirror = standin_mirror
    image = vm_image_factory("bookworm", extra_ca=[mirror.ca_pem])
    user_data = cloud_init_user_data("debian13", mirror)
    outcome = boot_user_data(image, user_data, mirror, tmp_path, release="bookworm", kind="wrong-release", boots=1)
    summary = outcome.summary()
    run = outcome.first
    only = run.last

    assert run.boot_count == 1 and only.end is BootEnd.POWEROFF, summary
    # The script says why, naming both versions, and exits 3 (unsupported system)...
    output = only.read_result("cloud-init-output.log")
    refusal = (
        "bakegen[preflight]: ERROR: generated for debian 13 (distros/debian13.yaml), but this is debian 12;"
        " generate a script for this system with bakegen"
    )
    assert refusal in output, output[-3000:]
    cloud_init_log = only.read_result("cloud-init.log")
    assert re.search(r"Command: \['/var/lib/cloud/instance/scripts/runcmd'\]\nExit code: 3\n", cloud_init_log), summary
    # ... which cloud-init reports as the runcmd failure.
    assert only.cloud_init is not None, summary
    assert only.cloud_init.status == "error", only.cloud_init.raw
    assert any(re.search(r"scripts[-_]user.*runcmd", e) for e in only.cloud_init.errors), only.cloud_init.raw
    # Nothing was asked of the mirror, nothing installed, nothing configured, no reboot.
    assert outcome.requests == [], outcome.requests
    packages = installed_packages(run)
    assert not [p for p in packages if p in TOOLKIT_PACKAGES or p == "docker.io"], sorted(packages)
    assert not (outcome.state / "keyrings" / f"{REPO_NAME}.gpg").exists()
    assert not (outcome.state / "sources.list.d" / f"{REPO_NAME}.list").exists()
    assert not (outcome.state / "bakegen").exists()
    assert "rebooting to load the NVIDIA driver" not in only.serial_text


# ---------------------------------------------------------------------------------------------------------
# the reboot path (power_state reboots exactly once when the script exits 10)


def test_no_driver_script_has_no_reboot_trigger() -> None:
    """Why no VM here reboots through power_state: with --no-driver nothing in the script can require it.

    The reboot triggers (nouveau loaded, a driver to load or reload) live in the driver step, which --no-driver
    leaves out; and the images' kernel (linux-image-cloud-amd64) is built without DRM, so there is no nouveau to
    load with modules-load=nouveau either. A driver run (where nouveau would trigger it) costs the ~49 min DKMS
    build under TCG. If this test fails, the script gained a --no-driver reboot trigger: boot it for real.
    """
    options: dict[str, Any] = {
        "mirrors": {REPO_NAME: f"https://{GUEST_HOST}:8443/libnvidia-container"},
        "fingerprints": {REPO_NAME: "0123456789ABCDEF0123456789ABCDEF01234567"},
        "toolkit_version": TOOLKIT_VERSION,
    }
    for distro in RELEASE_DISTRO.values():
        for install_driver in (False, True):
            (script,) = render_files(distro, Format.SHELL, install_driver=install_driver, **options)
            lines = script.text.splitlines()
            calls = [line.strip() for line in lines if re.match(r"\s*[^#]*\brequire_reboot ", line)]
            if install_driver:
                assert any('require_reboot "the nouveau driver is loaded"' in call for call in calls), calls
            else:
                assert calls == [], calls


# ---------------------------------------------------------------------------------------------------------
# 4. arm64 under full emulation (on request: `pytest -m emulated`; see docs/vm-tests.md for the host set-up)


@pytest.fixture(scope="module")
def arm64_outcome(
    standin_mirror_session: Mirror, vm_image_factory: ImageFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Outcome]:
    """bakegen's debian12 aarch64 user-data on an arm64 Debian 12 image, qemu-system-aarch64 (virt, TCG)."""
    if shutil.which("qemu-system-aarch64") is None or not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        pytest.fail(
            "the arm64 boot needs: apt-get install qemu-system-arm qemu-user-static binfmt-support arch-test, "
            "and binfmt_misc mounted (mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc)"
        )
    started = time.monotonic()
    image = vm_image_factory("bookworm", extra_ca=[standin_mirror_session.ca_pem], arch="arm64")
    record_timings("image/bookworm-arm64", {"seconds": round(time.monotonic() - started, 1), "key": image.key})
    mirror = standin_mirror_session
    mirror.set_mode("normal")
    user_data = cloud_init_user_data("debian12", mirror, arch="aarch64")
    yield boot_user_data(
        image,
        user_data,
        mirror,
        tmp_path_factory.mktemp("cloud-init-arm64"),
        release="bookworm",
        kind="cloud-init-arm64",
        boots=1,
    )


@pytest.mark.emulated
def test_arm64_cloud_init_installs_under_emulation(arm64_outcome: Outcome, standin_mirror_session: Mirror) -> None:
    assert_clean_boot(arm64_outcome, arm64_outcome.first)
    assert_toolkit_installed(arm64_outcome, standin_mirror_session, deb_arch="arm64")
    result = read_check_result(arm64_outcome.first)
    assert result is not None and (result["status"], result["exit_code"]) == ("no-gpu", 0), result
