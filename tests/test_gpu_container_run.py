"""The tutorial's `docker run --gpus` on a real H200, through bakegen's provisioning and the real NVIDIA Container
Toolkit (tests/fixtures/gpu-container/: what the GPU machine printed, committed unchanged; README there)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import jsonschema
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
RUN = FIXTURES / "gpu-container" / "nvidia-h200"
SCHEMA = json.loads((FIXTURES / "gpu-check" / "result.schema.json").read_text())
GPU_LINE = re.compile(r"^GPU 0: NVIDIA H200 \(UUID: GPU-[0-9a-f-]{36}\)$", re.M)


def console() -> str:
    return (RUN / "console.txt").read_text()


def command_output(command: str) -> tuple[str, int]:
    """What `$ command` printed, and its exit code, from the console."""
    start = console().index(f"$ {command}\n") + len(command) + 3
    match = re.match(r"(.*?)^\[exit (\d+)\]$", console()[start:], re.S | re.M)
    assert match, f"no exit code after $ {command}"
    return match.group(1), int(match.group(2))


def checks(name: str) -> dict[str, str]:
    result = json.loads((RUN / name).read_text())
    jsonschema.validate(result, SCHEMA)
    return {check["name"]: check["status"] for check in result["checks"]} | {"status": result["status"]}


def test_the_script_that_ran_is_the_committed_one() -> None:
    digest = hashlib.sha256((RUN / "install.sh").read_bytes()).hexdigest()
    assert f"{digest}  gpu-bundle/run/install.sh" in console()
    script = (RUN / "install.sh").read_text()
    assert "readonly OS_VERSION_ID=24.04" in script and "--cdi.enabled --set-as-default" in script
    assert "readonly DRIVER_SOURCE=ubuntu-drivers" in script and "readonly DRIVER_BRANCH=580" in script


def test_the_real_toolkit_was_installed_from_the_local_mirror() -> None:
    text = console()
    assert (
        "Get:3 https://127.0.0.1:8443/libnvidia-container/stable/deb/amd64  nvidia-container-toolkit-base 1.18.1-1"
        in text
    )
    assert "NVIDIA Container Toolkit CLI version 1.18.1\ncommit: v1.18.1" in text
    assert json.loads((RUN / "daemon.json").read_text()) == {
        "default-runtime": "nvidia",
        "features": {"cdi": True},
        "runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}},
    }
    assert '\nmode = "cdi"\n' in (RUN / "nvidia-container-runtime-config.toml").read_text()
    spec = (RUN / "cdi-nvidia.yaml").read_text()
    assert "kind: nvidia.com/gpu" in spec and "name: all" in spec and "/usr/local/nvidia/bin/nvidia-smi" in spec


def test_the_image_has_no_nvidia_file() -> None:
    block, code = command_output(
        """docker run --rm local/nvidia-smoke:busybox-glibc sh -c find / -xdev -iname "*nvidia*" | head; """
        "cat /etc/bakegen-smoke-image"
    )
    assert code == 0 and block == "busybox + Debian 12 glibc, built by bakegen's tests; no NVIDIA file\n"


@pytest.mark.parametrize(
    "command",
    [
        "docker run --rm --gpus all local/nvidia-smoke:busybox-glibc nvidia-smi -L",
        'docker run --rm --gpus "device=0" local/nvidia-smoke:busybox-glibc nvidia-smi -L',
    ],
)
def test_docker_run_gpus_lists_the_h200(command: str) -> None:
    block, code = command_output(command)
    assert code == 0 and GPU_LINE.fullmatch(block.strip())


@pytest.mark.parametrize(
    "command",
    [
        "docker run --rm --gpus all local/nvidia-smoke:busybox-glibc nvidia-smi",
        "docker run --rm -e NVIDIA_VISIBLE_DEVICES=0 -e NVIDIA_DRIVER_CAPABILITIES=compute,utility "
        "local/nvidia-smoke:busybox-glibc nvidia-smi",
    ],
)
def test_nvidia_smi_table_in_a_container(command: str) -> None:
    block, code = command_output(command)
    assert code == 0
    assert "Driver Version: 580.159.04" in block and "NVIDIA H200" in block


@pytest.mark.parametrize(
    ("command", "code", "message"),
    [
        # docker reads `--gpus 0` as a count of zero GPUs; devices are `--gpus '"device=0"'`.
        ("docker run --rm --gpus 0 local/nvidia-smoke:busybox-glibc nvidia-smi -L", 127, "not found"),
        ("docker run --rm local/nvidia-smoke:busybox-glibc nvidia-smi -L", 127, "not found"),
        # cdi mode: docker's own --gpus hook path needs the NVIDIA runtime (or the real libnvidia-container).
        (
            "docker run --rm --runtime=runc --gpus all local/nvidia-smoke:busybox-glibc nvidia-smi -L",
            125,
            "invoking the NVIDIA Container Runtime Hook directly",
        ),
    ],
)
def test_without_a_gpu_request_the_container_has_no_gpu(command: str, code: int, message: str) -> None:
    assert command_output(command)[1] == code
    assert message in console()


def test_check_fails_by_name_until_docker_restarts_then_passes() -> None:
    first = checks("gpu-check-run1.json")
    assert first["status"] == "fail"
    assert (first["runtime_docker"], first["container_smoke_test"]) == ("fail", "fail")
    assert "[install.sh exit 4]" in console()  # the first run: no systemd to restart docker, and it says so
    assert "note: docker configured; it picks up the nvidia runtime when it starts" in console()
    for name in ("gpu-check.json", "gpu-check-run2.json"):
        result = checks(name)
        assert result["status"] == "pass"
        assert (result["runtime_docker"], result["container_smoke_test"]) == ("pass", "pass")
    assert console().rstrip().count("[install.sh exit 0]") == 1  # the second run


def test_the_driver_installed_outside_apt_was_kept() -> None:
    """Default driver options (ubuntu-drivers, branch 580) on a machine whose 580.159.04 lives under
    /usr/local/nvidia: kept, in the dry run and in both runs; nothing driver-related came from apt."""
    text = console()
    keep = (
        "note: keeping NVIDIA driver 580.159.04, installed outside the package manager "
        "(/usr/local/nvidia/bin/nvidia-smi): it is the branch asked for; nothing driver-related is installed"
    )
    assert text.count(f"bakegen[preflight]: {keep}") == 3  # dry run, run 1, run 2
    assert "[install.sh --dry-run exit 0]" in text
    runs = text.split("== run 1")[1]
    assert runs.count("nothing to do: the driver installed outside the package manager is kept") == 2
    assert "ubuntu-drivers install" not in runs and "linux-modules-nvidia" not in runs
    packages = text.split("== nothing driver-related from apt")[1].split("\n==")[0].splitlines()
    names = [line.split()[0] for line in packages if line and not line.startswith(("ls:", "580."))]
    assert not [n for n in names if n.startswith(("nvidia-driver", "nvidia-headless", "nvidia-utils", "linux-modules"))]
    assert not [n for n in names if n.startswith("libnvidia-") and not n.startswith("libnvidia-container")]
    assert "cannot access '/etc/modprobe.d/bakegen-blacklist-nouveau.conf'" in text


def test_the_udev_rules_command_creates_the_device_links() -> None:
    """What 71-nvidia-dev-char.rules runs when the driver binds: /dev/char links for every NVIDIA device node, so
    a systemctl daemon-reload does not take containers' GPUs away."""
    assert command_output("nvidia-ctk system create-dev-char-symlinks --create-all")[1] == 0
    text = console().split("$ nvidia-ctk system create-dev-char-symlinks --create-all")[1]
    links = dict(line.split(" -> ") for line in text.split("\n==")[0].splitlines() if " -> " in line)
    assert links["195:0"] == "/dev/nvidia0" and links["195:255"] == "/dev/nvidiactl"
    assert links["238:0"] == "/dev/nvidia-uvm"
