"""The kernel-install guard on rpm distributions, run by the real kernel-install (issue 12).

On the RHEL family, Fedora and Amazon Linux a new kernel's %posttrans runs `kernel-install add`, which runs the
plugins of /usr/lib/kernel/install.d and /etc/kernel/install.d in name order (docs/evidence-kernel-updates.md).
bakegen installs its guard there as 95-bakegen-nvidia.install (after DKMS's 40-dkms.install). Here the real
kernel-install of Debian 13's systemd 257 (the C rewrite, which stops at the first failing plugin, as Fedora 43's
does) runs it in a trixie root filesystem, with a marker plugin after it: the guard records the kernel, says so,
and never stops the plugins after it. The kernel is a stand-in (an empty module folder and a one-line image).
"""

from __future__ import annotations

import json

import pytest

from generator.model import Format
from tests.helpers import render_files
from tests.support.rootfs import Chroot

pytestmark = pytest.mark.rootfs

PLUGIN = "/etc/kernel/install.d/95-bakegen-nvidia.install"
MARKER = "/etc/kernel/install.d/99-bakegen-test-marker.install"
STATE = "/var/lib/bakegen/kernel-guard.json"
KERNEL = "6.99.0-1.bakegen-test.x86_64"


def installed_guard() -> str:
    """The plugin exactly as the generated rhel9 script writes it (its heredoc)."""
    (script,) = render_files("rhel9", Format.SHELL)
    head = f"put_file 0755 {PLUGIN} <<'BAKEGEN_EMBEDDED_FILE_END'\n"
    assert isinstance(script.content, str) and head in script.content
    return script.content.split(head, 1)[1].split("BAKEGEN_EMBEDDED_FILE_END\n", 1)[0]


@pytest.fixture
def kernel_install(trixie_chroot: Chroot) -> Chroot:
    chroot = trixie_chroot
    done = chroot.run(
        "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends systemd",
        check=False,
        timeout=900,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    chroot.write_text(PLUGIN, installed_guard(), mode=0o755)
    chroot.write_text(MARKER, '#!/bin/sh\necho "$@" >>/tmp/marker\n', mode=0o755)
    chroot.run(["mkdir", "-p", f"/lib/modules/{KERNEL}"])
    chroot.write_text(f"/boot/vmlinuz-{KERNEL}", "stand-in kernel image\n")
    return chroot


def add(chroot: Chroot) -> tuple[int, str]:
    done = chroot.run(["kernel-install", "add", KERNEL, f"/boot/vmlinuz-{KERNEL}"], check=False, timeout=300)
    return done.returncode, done.stdout + done.stderr


def test_a_kernel_without_a_module_is_recorded_and_the_install_goes_on(kernel_install: Chroot) -> None:
    chroot = kernel_install
    rc, output = add(chroot)
    assert rc == 0, output
    message = f"no NVIDIA kernel module for kernel {KERNEL} (DKMS could not build it: is its kernel-devel package"
    assert f"bakegen-kernel-guard: {message}" in output, output
    state = json.loads(chroot.read_text(STATE))
    assert (state["kernel"], state["module"]) == (KERNEL, False) and state["message"].startswith(message)
    assert f"bakegen-kernel-guard: ERROR: {message}" in chroot.read_text("/var/log/bakegen.log")
    # The plugins after it ran: the initramfs and boot entry plugins of a real system are not held up.
    assert chroot.read_text("/tmp/marker").split()[:2] == ["add", KERNEL]


def test_a_kernel_with_its_module_is_recorded_as_such(kernel_install: Chroot) -> None:
    chroot = kernel_install
    chroot.write_text(f"/lib/modules/{KERNEL}/extra/nvidia.ko.xz", "stand-in module\n")
    rc, output = add(chroot)
    assert rc == 0 and "bakegen-kernel-guard" not in output, output
    state = json.loads(chroot.read_text(STATE))
    assert (state["kernel"], state["module"]) == (KERNEL, True)
    removed = chroot.run(["kernel-install", "remove", KERNEL], check=False, timeout=300)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert json.loads(chroot.read_text(STATE)) == state, "remove records nothing"
