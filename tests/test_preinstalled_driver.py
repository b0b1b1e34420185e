"""A driver installed outside the package manager is kept, or refused, never doubled (bookworm root filesystem).

The "driver" here is a STAND-IN: a shell script at /usr/local/nvidia/bin/nvidia-smi, as NVIDIA's .run installer or
a cloud vendor's image would leave the real one (no package owns it), answering `--query-gpu=driver_version` with
a fixed version. The real case, on a real H200 with driver 580.159.04 installed outside apt, is in
tests/fixtures/gpu-container/ (the generated ubuntu24.04 script kept it).
"""

from __future__ import annotations

import pytest

from tests.support.mirror import Mirror
from tests.support.rootfs import Chroot
from tests.test_faults import EX_OK, EX_UNSUPPORTED, prepared
from tests.test_rootfs_e2e import render_for_mirror, run_script

pytestmark = pytest.mark.rootfs

FOREIGN_SMI = "/usr/local/nvidia/bin/nvidia-smi"
DRIVER_PACKAGES = ("nvidia-kernel-dkms", "nvidia-open-kernel-dkms", "nvidia-smi", "libcuda1", "nvidia-driver")


def foreign_driver(chroot: Chroot, version: str) -> None:
    chroot.write_text(
        FOREIGN_SMI,
        "#!/bin/sh\n# STAND-IN for an nvidia-smi installed outside apt (bakegen's tests)\n"
        # What bakegen's script asks; anything else (the GPU check): no driver loaded in a root filesystem.
        f'[ "$1" = --query-gpu=driver_version ] && {{ echo {version}; exit 0; }}\n'
        'echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."; exit 9\n',
        mode=0o755,
    )


@pytest.mark.parametrize("version", ["535.247.01"])
def test_a_foreign_driver_of_the_asked_branch_is_kept(
    bookworm_chroot: Chroot, standin_mirror: Mirror, version: str
) -> None:
    chroot = prepared(bookworm_chroot, standin_mirror, render_for_mirror("debian12", standin_mirror))
    foreign_driver(chroot, version)
    before = chroot.package_state()
    run = run_script(chroot, timeout=900)
    assert run.rc == EX_OK, run.output[-4000:]
    assert f"note: keeping NVIDIA driver {version}, installed outside the package manager ({FOREIGN_SMI})" in run.output
    after = chroot.package_state()
    assert not [name for name in DRIVER_PACKAGES if name in after and name not in before]
    assert not chroot.exists("/etc/modprobe.d/bakegen-blacklist-nouveau.conf")
    assert "nvidia-container-toolkit" in after  # the rest of the provisioning went on


def test_a_foreign_driver_of_another_branch_is_refused(bookworm_chroot: Chroot, standin_mirror: Mirror) -> None:
    chroot = prepared(bookworm_chroot, standin_mirror, render_for_mirror("debian12", standin_mirror))
    foreign_driver(chroot, "580.95.05")
    before = chroot.package_state()
    run = run_script(chroot, timeout=900)
    assert run.rc == EX_UNSUPPORTED, run.output[-4000:]
    assert (
        f"ERROR: NVIDIA driver 580.95.05 is installed outside the package manager ({FOREIGN_SMI}), but this script "
        "installs branch 535: remove that driver, or generate the script with --driver-branch 580 or --no-driver"
    ) in run.output
    # Refused in the preflight, like a script for another release: nothing installed, nothing written.
    assert chroot.package_state() == before
    assert not chroot.exists("/var/lib/bakegen") and not chroot.exists(
        "/etc/apt/sources.list.d/nvidia-container-toolkit.list"
    )
