"""The REAL NVIDIA Container Toolkit (built from NVIDIA's source, tests/support/toolkit/) configuring Debian's Docker
and containerd the way bakegen's script asks, in a bookworm root filesystem, with and without --cdi.

The driver step is left out (--no-driver): what is under test is the toolkit and the runtimes. Whether the runtime
reads what nvidia-ctk wrote is asked of the runtime itself (`containerd config dump` merges the drop-in).
"""

from __future__ import annotations

import json

import pytest

from generator.model import Runtime
from tests.support.mirror import Mirror
from tests.support.rootfs import Chroot
from tests.test_faults import USER_DAEMON_JSON, no_driver_script, prepared
from tests.test_rootfs_e2e import run_script

pytestmark = pytest.mark.rootfs

RUNTIMES = (Runtime.DOCKER, Runtime.CONTAINERD)
NVIDIA_RUNTIME = {"args": [], "path": "nvidia-container-runtime"}
RUNTIME_CONFIG = "/etc/nvidia-container-runtime/config.toml"


@pytest.mark.parametrize("cdi", [False, True], ids=["default", "cdi"])
def test_real_toolkit_configures_docker_and_containerd(
    bookworm_chroot: Chroot, standin_mirror: Mirror, cdi: bool
) -> None:
    script = no_driver_script(standin_mirror, runtimes=RUNTIMES, cdi=cdi)
    chroot = prepared(bookworm_chroot, standin_mirror, script, daemon_json=True)

    first = run_script(chroot, timeout=900)
    assert first.rc == 0, first.output[-4000:]
    assert "NVIDIA Container Toolkit CLI version 1.18.1" in first.output

    # docker: the user's keys kept, nvidia added; with --cdi nvidia is the default runtime (it serves --gpus from
    # the CDI specification) and Docker's own CDI support is on.
    daemon = json.loads(chroot.read_text("/etc/docker/daemon.json"))
    expected = {**USER_DAEMON_JSON, "runtimes": {"nvidia": NVIDIA_RUNTIME}}
    if cdi:
        expected |= {"default-runtime": "nvidia", "features": {"cdi": True}}
    assert daemon == expected

    # containerd: a drop-in that the main config imports, and that containerd itself merges.
    assert chroot.exists("/etc/containerd/conf.d/99-nvidia.toml")
    assert '"/etc/containerd/conf.d/*.toml"' in chroot.read_text("/etc/containerd/config.toml")
    merged = chroot.run(["containerd", "config", "dump"]).stdout
    assert 'BinaryName = "/usr/bin/nvidia-container-runtime"' in merged
    assert ('default_runtime_name = "nvidia"' in merged) == cdi

    # The runtime's own mode: what NVIDIA's postinst wrote, set to cdi only when asked.
    runtime_config = chroot.read_text(RUNTIME_CONFIG)
    assert ('\nmode = "cdi"\n' in runtime_config) == cdi
    if cdi:
        # No driver here: the specification is left to nvidia-cdi-refresh at boot (NVIDIA's units, installed).
        assert "the CDI specification is generated at boot" in first.output
        assert chroot.exists("/etc/systemd/system/nvidia-cdi-refresh.path")
        assert not chroot.exists("/var/run/cdi/nvidia.yaml")

    configs = chroot.snapshot(["/etc/docker", "/etc/containerd", RUNTIME_CONFIG])
    second = run_script(chroot, timeout=600)
    assert second.rc == 0, second.output[-4000:]
    assert chroot.snapshot(["/etc/docker", "/etc/containerd", RUNTIME_CONFIG]) == configs
