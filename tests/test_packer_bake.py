"""A real local bake (`pytest -m bake tests/test_packer_bake.py`): many minutes, see docs/packer.md for timings.

`bakegen packer debian12 --cloud qemu ... build --legacy-packer` renders the Packer folder and runs Debian's
Packer 1.6.6 on it: the generated qemu source starts from the VM harness's bookworm image (a local qcow2, booted
directly with its kernel and initrd, QEMU under TCG with -cpu max), cloud-init reads its NoCloud seed from
Packer's HTTP server, and the build runs the generated install script (--no-driver: the DKMS build under TCG
takes ~49 min; tests elsewhere prove it natively) against Debian's archive and the signed HTTPS stand-in for
NVIDIA's toolkit repository. Then the baked image is booted like a new instance, and its first-boot GPU check
result is read back: no GPU here, so status "no-gpu".
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from generator.resolve import descriptor_set, load_distro
from tests.support.bake import (
    direct_kernel_boot,
    make_ssh_key,
    pkrvars,
    read_result,
    run_bake,
    seed_user_data,
    write_http_seed,
)
from tests.support.mirror import Mirror
from tests.support.vm import BootEnd
from tests.support.vm_fixtures import BootFactory, ImageFactory
from tests.support.vm_image import VmImage

pytestmark = pytest.mark.bake

DISTRO = "debian12"
RELEASE = "bookworm"
ROOT_GB = 20
BAKE_TIMEOUT_S = 45 * 60  # measured 24.5 min with the 2 shared cores at load ~10 (docs/packer.md)
BOOT_TIMEOUT_S = 25 * 60


def tail(path: Path, lines: int = 60) -> str:
    if not path.is_file():
        return f"({path} missing)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def test_bake_debian12_with_packer_and_qemu_then_boot_the_image(
    tmp_path: Path, vm_image_factory: ImageFactory, vm_boot: BootFactory, standin_mirror: Mirror
) -> None:
    for tool in ("packer", "ssh-keygen", "qemu-system-x86_64", "qemu-img"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing (tests/setup.sh installs it)")
    base = vm_image_factory(RELEASE)
    user = load_distro(descriptor_set(), DISTRO).ssh_user

    key, public_key = make_ssh_key(tmp_path / "ssh")
    http = write_http_seed(tmp_path / "http", seed_user_data(user, public_key, [standin_mirror.ca_pem]))
    serial = tmp_path / "bake-serial.log"
    output = tmp_path / "output"
    (tmp_path / "bake.pkrvars.hcl").write_text(
        pkrvars(
            {
                "qemu_base_image": str(base.base),
                "qemu_base_image_checksum": "none",
                "qemu_accelerator": "tcg",
                "qemu_ssh_private_key_file": str(key),
                "qemu_http_directory": str(http),
                "qemu_output_directory": str(output),
                "qemu_extra_args": [*direct_kernel_boot(base), ["-serial", f"file:{serial}"]],
                "root_volume_gb": ROOT_GB,
            }
        )
    )
    log = tmp_path / "bake.log"
    code, bake_s = run_bake(
        [
            DISTRO,
            "--cloud",
            "qemu",
            "--no-driver",
            "--mirror",
            f"nvidia-container-toolkit={standin_mirror.base_url_for('10.0.2.2')}",
            "--key-fingerprint",
            f"nvidia-container-toolkit={standin_mirror.fingerprint}",
            "--out",
            str(tmp_path / "gen"),
            "build",
            "--legacy-packer",
            "--var-file",
            str(tmp_path / "bake.pkrvars.hcl"),
        ],
        cwd=tmp_path,
        log=log,
        timeout_s=BAKE_TIMEOUT_S,
    )
    result = read_result(tmp_path, output, code, bake_s, log)
    context = f"bake exit {code} after {bake_s:.0f} s\n--- bake log:\n{tail(log)}\n--- serial:\n{tail(serial, 30)}"
    assert code == 0, context
    text = result.log_text()
    assert "Connected to SSH!" in text, context
    assert "bakegen: no reboot required" in text, context
    # Both runs of the install script end with the GPU check; without a GPU it records "no GPU present".
    assert text.count("overall: NO-GPU: no NVIDIA GPU present") == 2, context
    assert any(p.endswith(".deb") for p in standin_mirror.downloads()), "the toolkit came from the stand-in mirror"
    assert result.image is not None and result.manifest is not None, context
    (build,) = result.manifest["builds"]
    assert build["builder_type"] == "qemu"
    assert build["custom_data"]["distribution"] == DISTRO and build["custom_data"]["driver"] == "none"

    # A new instance from the image: cloud-init runs afresh and the first-boot check writes its result.
    baked = VmImage(
        release=base.release,
        key="baked",
        base=result.image,
        kernel=base.kernel,
        initrd=base.initrd,
        kernel_version=base.kernel_version,
    )
    run = vm_boot(baked, "#cloud-config\n{}\n", boots="until-done", timeout_s=BOOT_TIMEOUT_S, disk_size=f"{ROOT_GB}G")
    assert run.last.end is BootEnd.POWEROFF, run.summary()
    assert run.last.cloud_init is not None and run.last.cloud_init.status == "done", run.summary()
    check = json.loads(run.last.read_result("var-lib-bakegen/gpu-check.json"))
    assert check["status"] == "no-gpu", check
    assert check["exit_code"] == 0

    found = run.extract_from_disk(
        ["/etc/machine-id", "/etc/ssh/ssh_host_ed25519_key.pub", f"/home/{user}/.ssh/authorized_keys"],
        tmp_path / "from-disk",
    )
    names = {p.name for p in found}
    assert "ssh_host_ed25519_key.pub" in names, "cloud-init made the instance its own host keys"
    assert "authorized_keys" not in names, "the build's SSH key was left in the image"
    machine_id = (tmp_path / "from-disk" / "machine-id").read_text().strip()
    assert len(machine_id) == 32, "the instance got its own machine-id"
    print(f"\nbake: {bake_s:.0f} s; first boot of the image: {run.wall_s:.0f} s; total {bake_s + run.wall_s:.0f} s")
