"""Fault injection: the generated debian12 script, run for real in a bookworm root filesystem, meets a broken
repository, a wrong key, a held dpkg lock, an interruption, a non-root user and the wrong OS.

Each case ends with the exit code the script's header documents (0 done, 1 failure, 2 usage, 3 unsupported,
4 verification failed, 5 network/repository failure, 10 reboot required) and leaves nothing half-done behind.
The driver is irrelevant here: scripts are generated with --no-driver (Options(install_driver=False)) to keep
each case to seconds. Nothing is mocked: apt, dpkg and curl are Debian's; the faults come from the stand-in
mirror's modes and from real processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import TOOLKIT_PACKAGES
from tests.support.mirror import Mirror
from tests.support.rootfs import CHROOT_PATH, Chroot
from tests.test_rootfs_e2e import (
    KEYRING,
    SCRIPT,
    SOURCE_LIST,
    TOOLKIT_DEB_VERSION,
    ScriptRun,
    render_for_mirror,
    run_script,
)

pytestmark = pytest.mark.rootfs

EX_OK, EX_UNSUPPORTED, EX_VERIFY, EX_NETWORK = 0, 3, 4, 5
USER_DAEMON_JSON = {"log-driver": "journald", "registry-mirrors": ["https://registry.example.invalid"]}
TRUST = (
    "/etc/apt/keyrings",
    "/etc/apt/trusted.gpg.d",
    "/etc/apt/sources.list.d",
    "/etc/apt/preferences.d",
    "/usr/share/keyrings",
)
TIMEOUT = 600


def prepared(chroot: Chroot, mirror: Mirror, script: str, *, daemon_json: bool = False) -> Chroot:
    chroot.install_ca(mirror.ca_pem)
    chroot.write_text(SCRIPT, script, mode=0o755)
    if daemon_json:
        chroot.write_text("/etc/docker/daemon.json", json.dumps(USER_DAEMON_JSON, indent=2) + "\n")
    return chroot


def no_driver_script(mirror: Mirror, **options: object) -> str:
    return render_for_mirror("debian12", mirror, install_driver=False, **options)


def assert_nothing_trusted(chroot: Chroot, before: dict[str, str | None]) -> None:
    assert not chroot.exists(SOURCE_LIST)
    assert not chroot.exists(KEYRING)
    assert chroot.snapshot(TRUST) == before


# ---------------------------------------------------------------------------------------------------------
# the repository and its key


@pytest.mark.parametrize(
    ("mode", "fingerprint", "code", "message"),
    [
        pytest.param("down", None, EX_NETWORK, "could not download", id="mirror-down"),
        pytest.param("error503", None, EX_NETWORK, "could not download", id="mirror-503"),
        pytest.param("normal", "wrong", EX_VERIFY, "is pinned; nothing was trusted", id="wrong-fingerprint"),
        pytest.param("html", None, EX_VERIFY, "returned a web page, not a key", id="html-instead-of-key"),
        pytest.param("empty_key", None, EX_VERIFY, "is empty; nothing was trusted", id="empty-key"),
        # The key is the one pinned, but the repository is signed by another: apt refuses it, and what this
        # run added (list and keyring) is taken away again.
        pytest.param("wrong_key", "wrong", EX_NETWORK, "removed what this run added", id="repo-not-signed-by-key"),
    ],
)
def test_bad_repository_or_key_ends_with_its_code_and_trusts_nothing(
    mode: str, fingerprint: str | None, code: int, message: str, bookworm_chroot: Chroot, standin_mirror: Mirror
) -> None:
    fpr = standin_mirror.wrong_fingerprint if fingerprint == "wrong" else standin_mirror.fingerprint
    chroot = prepared(bookworm_chroot, standin_mirror, no_driver_script(standin_mirror, fingerprint=fpr))
    before = chroot.snapshot(TRUST)
    standin_mirror.set_mode(mode)
    run = run_script(chroot, timeout=TIMEOUT)
    assert run.rc == code, run.output[-4000:]
    assert message in run.output
    assert "ERROR:" in chroot.read_text("/var/log/bakegen.log")
    assert_nothing_trusted(chroot, before)
    for name in TOOLKIT_PACKAGES:
        assert name not in chroot.package_state()


# ---------------------------------------------------------------------------------------------------------
# the dpkg lock


LOCK_HOLDER = r"""
import fcntl, sys, time
f = open("/var/lib/dpkg/lock-frontend", "w")
fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
time.sleep(float(sys.argv[1]))
"""
HOLD_SECONDS = 20


def test_held_dpkg_lock_is_waited_for(bookworm_chroot: Chroot, standin_mirror: Mirror) -> None:
    chroot = prepared(bookworm_chroot, standin_mirror, no_driver_script(standin_mirror))
    # Another package manager holds the frontend lock, as apt and unattended-upgrades take it (fcntl).
    holder = subprocess.Popen(
        ["chroot", str(chroot.root), "python3", "-c", LOCK_HOLDER, str(HOLD_SECONDS)],
        env={"PATH": CHROOT_PATH},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        locked_at = time.monotonic()
        run = run_script(chroot, timeout=TIMEOUT)
        released_after = holder.wait(timeout=HOLD_SECONDS + 10) == 0 and time.monotonic() - locked_at
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert run.rc == EX_OK, run.output[-4000:]
    assert released_after and released_after >= HOLD_SECONDS
    assert run.seconds >= HOLD_SECONDS - 5  # it waited for the lock rather than failing on it
    assert "Could not get lock /var/lib/dpkg/lock-frontend" in chroot.read_text("/var/log/bakegen.log") + run.output
    for name in TOOLKIT_PACKAGES:
        assert chroot.package_state().get(name) == TOOLKIT_DEB_VERSION


# ---------------------------------------------------------------------------------------------------------
# interrupted half-way


def _processes_in(chroot: Chroot) -> dict[int, str]:
    """pid -> command name of every process whose root is the chroot."""
    found = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.readlink(proc / "root") == str(chroot.root):
                    found[int(proc.name)] = (proc / "comm").read_text().strip()
            except OSError:
                continue
    return found


def _dpkg_installing(chroot: Chroot) -> bool:
    """dpkg is unpacking or configuring packages for apt (not a quick query such as --print-architecture)."""
    for pid, name in _processes_in(chroot).items():
        if name == "dpkg":
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--unpack" in argv or b"--configure" in argv:
                return True
    return False


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def test_interrupted_run_is_completed_by_the_next(bookworm_chroot: Chroot, standin_mirror: Mirror) -> None:
    chroot = prepared(bookworm_chroot, standin_mirror, no_driver_script(standin_mirror), daemon_json=True)
    packages_before = chroot.package_state()
    script = subprocess.Popen(
        ["chroot", str(chroot.root), "bash", SCRIPT],
        env={"PATH": CHROOT_PATH, "HOME": "/root", "LANG": "C.UTF-8"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # Kill everything (script, apt, dpkg) while dpkg unpacks or configures Docker: a power cut during
        # the package install step.
        _wait_for(
            lambda: (
                script.poll() is not None
                or ("docker.io" in _read(chroot, "/var/log/bakegen.log") and _dpkg_installing(chroot))
            ),
            600,
            "dpkg to install docker.io",
        )
        assert script.poll() is None, "the script ended before it could be interrupted"
        time.sleep(0.5)
        for pid in _processes_in(chroot):
            os.kill(pid, signal.SIGKILL)
        script.wait(timeout=30)
    finally:
        if script.poll() is None:
            os.killpg(script.pid, signal.SIGKILL)
            script.wait()
    interrupted = chroot.package_state()
    half_done = chroot.run(["dpkg", "--audit"], check=False).stdout

    assert half_done.strip(), "the kill did not catch dpkg half-way"

    run = run_script(chroot, timeout=TIMEOUT)
    assert run.rc == EX_OK, f"dpkg --audit after the kill:\n{half_done}\n{run.output[-4000:]}"
    assert "dpkg was interrupted; completing its work" in run.output
    after = chroot.package_state()
    assert set(packages_before) <= set(after), "packages were removed"
    assert set(interrupted) <= set(after), "packages were removed"
    assert chroot.run(["dpkg", "--audit"], check=False).stdout == ""
    assert "docker.io" in after
    for name in TOOLKIT_PACKAGES:
        assert after.get(name) == TOOLKIT_DEB_VERSION
    config = json.loads(chroot.read_text("/etc/docker/daemon.json"))
    assert {k: config[k] for k in USER_DAEMON_JSON} == USER_DAEMON_JSON
    assert "nvidia" in config["runtimes"]
    # No half-written files: every file the script manages is complete and nothing temporary is left.
    leftovers = chroot.run("find /etc /usr/local -name '*.bakegen-new'", check=False).stdout
    assert leftovers == ""
    source = chroot.read_text(SOURCE_LIST)
    assert source.endswith(" /\n") and source.count("\n") == 2


def _read(chroot: Chroot, path: str) -> str:
    try:
        return chroot.read_text(path)
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------------------
# the wrong caller, the wrong system


def test_not_root_is_refused(bookworm_chroot: Chroot, standin_mirror: Mirror) -> None:
    chroot = prepared(bookworm_chroot, standin_mirror, no_driver_script(standin_mirror))
    chroot.write_text("/tmp/bakegen-install.sh", chroot.read_text(SCRIPT), mode=0o755)
    packages, files = chroot.package_state(), chroot.snapshot(["/etc", "/var/lib/bakegen"])
    result = chroot.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", "/tmp/bakegen-install.sh"],
        check=False,
        timeout=60,
    )
    assert result.returncode == EX_UNSUPPORTED, result.stderr
    assert "must run as root" in result.stderr
    assert chroot.package_state() == packages
    assert chroot.snapshot(["/etc", "/var/lib/bakegen"]) == files


def test_script_for_another_release_is_refused_naming_both(bookworm_chroot: Chroot, standin_mirror: Mirror) -> None:
    script = render_for_mirror("debian13", standin_mirror, install_driver=False)
    chroot = prepared(bookworm_chroot, standin_mirror, script)
    packages, files = chroot.package_state(), chroot.snapshot(["/etc"])
    run: ScriptRun = run_script(chroot, timeout=60)
    assert run.rc == EX_UNSUPPORTED, run.output
    assert "generated for debian 13" in run.output
    assert "but this is debian 12" in run.output
    assert chroot.package_state() == packages
    assert chroot.snapshot(["/etc"]) == files
