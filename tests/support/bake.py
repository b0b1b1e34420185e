"""A real local Packer bake: `bakegen packer DISTRO --cloud qemu build` with Debian's Packer and QEMU (TCG).

The base image is the VM harness's cached Debian image (tests/support/vm_image.py): it has no boot loader, so
the bake boots it like the harness does, with -kernel/-initrd/-append (qemu_extra_args). Its cloud-init reads a
NoCloud seed from Packer's own HTTP server (the generated source points the SMBIOS serial number at it); the
seed creates the SSH user with a throwaway key and trusts the stand-in mirror's CA. Used by
tests/test_packer_bake.py; docs/packer.md has the timings.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from generator.quoting import hcl
from tests.support.vm_image import VmImage

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class BakeResult:
    returncode: int
    wall_s: float
    log: Path  # bakegen's and Packer's output, as a user would see it
    image: Path | None  # the built qcow2, when there is one
    manifest: dict[str, Any] | None  # packer-manifest.json

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""


def make_ssh_key(directory: Path) -> tuple[Path, str]:
    """A throwaway ed25519 key pair: (private key file, public key line)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bakegen-bake", "-f", str(key)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return key, (directory / "id_ed25519.pub").read_text().strip()


def seed_user_data(user: str, public_key: str, ca_pems: Sequence[Path] = ()) -> str:
    """NoCloud user-data for the build VM: the SSH user Packer connects as, and extra CAs to trust."""
    lines = [
        "#cloud-config",
        "users:",
        f"  - name: {json.dumps(user)}",
        '    sudo: "ALL=(ALL) NOPASSWD:ALL"',
        "    shell: /bin/bash",
        "    lock_passwd: true",
        f"    ssh_authorized_keys: [{json.dumps(public_key)}]",
        "ssh_pwauth: false",
        "manage_etc_hosts: localhost",
    ]
    if ca_pems:
        lines += ["ca_certs:", "  trusted:"]
        for pem in ca_pems:
            lines.append("    - |")
            lines += [f"      {line}" for line in pem.read_text().strip().splitlines()]
    return "\n".join(lines) + "\n"


def write_http_seed(directory: Path, user_data: str, instance_id: str | None = None) -> Path:
    """The folder Packer serves (qemu_http_directory): user-data and meta-data, as NoCloud's seedfrom reads them."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "user-data").write_text(user_data)
    iid = instance_id or f"iid-bakegen-bake-{uuid.uuid4().hex[:12]}"
    (directory / "meta-data").write_text(f"instance-id: {iid}\nlocal-hostname: bakegen-bake\n")
    return directory


def direct_kernel_boot(image: VmImage) -> list[list[str]]:
    """qemu_extra_args that boot the harness image's kernel (the image has no boot loader)."""
    return [
        ["-kernel", str(image.kernel)],
        ["-initrd", str(image.initrd)],
        ["-append", "root=/dev/vda ro console=ttyS0,115200"],
    ]


def pkrvars(values: Mapping[str, object]) -> str:
    """A .pkrvars.hcl file: strings through the hcl filter, numbers as they are, lists as HCL tuples."""

    def value(item: object) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, int | float):
            return str(item)
        if isinstance(item, list | tuple):
            return "[" + ", ".join(value(v) for v in item) + "]"
        return hcl(item)

    return "".join(f"{key} = {value(item)}\n" for key, item in values.items())


def run_bake(
    bakegen_args: Sequence[str], cwd: Path, log: Path, timeout_s: float, env: Mapping[str, str] | None = None
) -> tuple[int, float]:
    """`bakegen packer ...` in cwd, output to log; on timeout the whole process group (Packer, QEMU) is killed."""
    started = time.monotonic()
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "CHECKPOINT_DISABLE": "1", "PACKER_NO_COLOR": "1", **(env or {})}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "generator", "packer", *bakegen_args],
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
            code = -1
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
    return code, time.monotonic() - started


def read_result(cwd: Path, output_dir: Path, code: int, wall_s: float, log: Path) -> BakeResult:
    images = sorted(output_dir.glob("*.qcow2")) if output_dir.is_dir() else []
    manifest_path = cwd / "packer-manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    return BakeResult(code, wall_s, log, images[0] if images else None, manifest)
