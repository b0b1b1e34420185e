"""The command line as a user meets it: what works, and one clear line for everything that does not."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, run_cli

GOOD_FPR = "C95B321B61E88C1809C4F759DDCAE044F796ECB0"

# (arguments, exit code, text the one error line must contain)
BAD_INPUTS = [
    pytest.param(["debain12"], 2, "unknown distribution 'debain12' (did you mean debian12?)", id="unknown-distro"),
    pytest.param(["debian12", "--arch", "sparc"], 2, "--arch: invalid choice: 'sparc'", id="bad-arch"),
    pytest.param(
        ["amzn2023", "--format", "packer", "--cloud", "gcp"],
        2,
        "amzn2023 has no base image for gcp",
        id="cloud-without-image",
    ),
    pytest.param(
        ["debian12", "--driver-branch", "abc"],
        2,
        "--driver-branch: 'abc' is not a driver branch (e.g. 580)",
        id="driver-branch-abc",
    ),
    pytest.param(
        ["debian12", "--driver-branch", "580"],
        2,
        "debian12's debian-nonfree source provides branch 535 only",
        id="branch-the-source-lacks",
    ),
    # Combinations the vendors do not publish (issue 9): refused naming what exists.
    pytest.param(
        ["ubuntu20.04", "--driver-branch", "580"],
        2,
        "ubuntu20.04's ubuntu-drivers source provides branch 535, 550 only, not 580",
        id="focal-has-no-580-server",
    ),
    pytest.param(
        ["debian13", "--driver-source", "cuda-repo", "--arch", "aarch64"],
        2,
        "debian13's cuda-repo driver source has no aarch64 packages (only x86_64) (sources for aarch64: debian-nonfree",
        id="no-debian13-sbsa-repo",
    ),
    pytest.param(
        ["fedora43", "--arch", "aarch64"],
        2,
        "fedora43 is not available for aarch64 (available: x86_64)",
        id="fedora43-sbsa-has-no-driver",
    ),
    pytest.param(
        ["amzn2023", "--arch", "aarch64"],
        2,
        "amzn2023 is not available for aarch64 (available: x86_64)",
        id="amzn2023-sbsa-dkms-unverified",
    ),
    pytest.param(
        ["packer", "ubuntu20.04", "--cloud", "gcp", "validate"],
        2,
        "ubuntu20.04 has no base image for gcp (it has: aws, azure, qemu)",
        id="focal-left-gcp",
    ),
    pytest.param(
        ["packer", "debian12", "--arch", "aarch64", "--cloud", "azure", "validate"],
        2,
        "--cloud azure: Azure cannot capture an Arm64 VM as a managed image",
        id="azure-arm64-needs-a-gallery",
    ),
    pytest.param(
        ["debian12", "--driver-version", "535.1.2", "--driver-branch", "550", "--driver-source", "cuda-repo"],
        2,
        "--driver-version: 535.1.2 is not on branch 550",
        id="version-off-branch",
    ),
    pytest.param(
        ["debian11", "--kernel-modules", "open"],
        2,
        "debian11's debian-nonfree source has no open kernel modules",
        id="no-open-modules",
    ),
    pytest.param(["debian12", "--toolkit-version", "1.17.7"], 2, "1.17.7 is below 1.17.8", id="toolkit-below-floor"),
    pytest.param(
        ["debian12", "--toolkit-version", "latest"], 2, "is not a toolkit version", id="toolkit-not-a-version"
    ),
    pytest.param(
        ["debian12", "--mirror", "nvidia-container-toolkit=http://mirror.example/nct"],
        2,
        "only https:// URLs are allowed",
        id="http-mirror",
    ),
    pytest.param(["debian12", "--mirror", "nvidia-container-toolkit"], 2, "is not NAME=VALUE", id="mirror-without-url"),
    pytest.param(
        ["debian12", "--mirror", "nope=https://mirror.example/x"],
        2,
        "debian12 has no repository 'nope'",
        id="mirror-unknown-repo",
    ),
    pytest.param(
        ["debian12", "--key-fingerprint", "nvidia-container-toolkit=F796ECB0"],
        2,
        "is not a full 40-hex-digit key fingerprint",
        id="short-fingerprint",
    ),
    pytest.param(
        ["debian12", "--key-fingerprint", f"nvidia-container-toolkit={GOOD_FPR[:-1]}Z"],
        2,
        "is not a full 40-hex-digit key fingerprint",
        id="malformed-fingerprint",
    ),
    # Injection attempts in every free-text value: rejected before anything is rendered.
    pytest.param(
        ["debian12", "--mirror", "nvidia-container-toolkit=https://m.example/$(reboot)"],
        2,
        "only scheme, host, port and a plain path",
        id="shell-injection-mirror",
    ),
    pytest.param(
        ["debian12", "--mirror", "nvidia-container-toolkit=https://m.example/a'b"],
        2,
        "only scheme, host, port and a plain path",
        id="quote-injection-mirror",
    ),
    pytest.param(
        ["debian12", "--mirror", 'nvidia-container-toolkit=https://m.example/"\nruncmd: [x]'],
        2,
        "spaces and control characters are not allowed in a URL",
        id="yaml-injection-mirror",
    ),
    pytest.param(
        ["debian12", "--mirror", "nvidia-container-toolkit=https://m.example/${var.x}"],
        2,
        "only scheme, host, port and a plain path",
        id="hcl-injection-mirror",
    ),
    pytest.param(
        ["debian12", "--container-image", "nvidia/cuda;reboot"],
        2,
        "is not a container image reference",
        id="shell-injection-image",
    ),
    pytest.param(
        ["debian12", "--container-image", 'x"\n  - reboot'],
        2,
        "is not a container image reference",
        id="yaml-injection-image",
    ),
    pytest.param(["debian12", "--gpus", "all; reboot"], 2, "--gpus: 'all; reboot' is not", id="shell-injection-gpus"),
    pytest.param(
        ["debian12", "--capabilities", "compute,$(id)"], 2, "is not a comma list", id="injection-capabilities"
    ),
    pytest.param(
        ["debian12", "--format", "packer", "--stdout"], 2, "--stdout takes one distribution", id="stdout-packer"
    ),
    pytest.param(["all", "--stdout"], 2, "--stdout takes one distribution", id="stdout-all"),
    pytest.param(
        ["debian12", "--no-driver", "--driver-branch", "535"],
        2,
        "--no-driver cannot be combined",
        id="no-driver-and-branch",
    ),
    pytest.param(["debian12", "--expected-gpus", "-1"], 2, "--expected-gpus: must be 0", id="negative-gpus"),
    pytest.param(
        ["show", "ubuntu"],
        2,
        "ubuntu is an abstract parent; show one that extends it: ubuntu20.04",
        id="show-abstract-parent",
    ),
]


@pytest.mark.parametrize(("args", "code", "message"), BAD_INPUTS)
def test_bad_input_gives_one_clear_line_and_writes_nothing(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    out = tmp_path / "out"
    result = run_cli(*args, "--out", str(out)) if args[0] != "show" else run_cli(*args)
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bakegen: error: ")
    assert message in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not out.exists() or not any(out.iterdir())


def test_unwritable_out_is_one_line_and_nothing_half_written(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run_cli("debian12", "--out", str(blocker))
    assert (result.returncode, result.stderr.count("\n")) == (2, 1)
    assert "is not a folder" in result.stderr
    # A folder that cannot be created (its parent is a file; root ignores permission bits).
    result = run_cli("debian12", "--out", str(blocker / "sub"))
    assert (result.returncode, result.stderr.count("\n")) == (1, 1)
    assert "cannot write to" in result.stderr and "Traceback" not in result.stderr
    assert blocker.read_text() == "not a folder"


def test_bad_descriptor_in_distros_dir_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("extends: debian12\nbogus: 1\narches: [sparc]\n")
    result = run_cli("broken", "--distros-dir", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    line = result.stderr.strip()
    assert "\n" not in line and "broken.yaml:2: bogus: unknown key" in line and "broken.yaml:3: arches.0" in line
    assert not (tmp_path / "out").exists()


def test_generate_writes_where_documented_and_prints_the_path(tmp_path: Path) -> None:
    result = run_cli("ubuntu22.04", "--format", "cloud-init", "--out", str(tmp_path), check=True)
    path = tmp_path / "ubuntu22.04" / "x86_64" / "user-data.yaml"
    assert result.stdout.strip() == str(path)
    assert yaml.safe_load(path.read_text())["runcmd"]


def test_shell_to_stdout_is_the_script(tmp_path: Path) -> None:
    result = run_cli("ubuntu22.04", "--format", "shell", "--stdout", check=True)
    assert result.stdout.startswith("#!/usr/bin/env bash\n")
    assert "readonly OS_ID=ubuntu" in result.stdout


def test_packer_for_aarch64_writes_a_folder(tmp_path: Path) -> None:
    run_cli("rhel9", "--format", "packer", "--arch", "aarch64", "--out", str(tmp_path), check=True)
    folder = tmp_path / "rhel9" / "aarch64" / "packer"
    assert (folder / "build.pkr.hcl").is_file() and os.access(folder / "scripts" / "bakegen-install.sh", os.X_OK)


def test_options_reach_the_generated_script() -> None:
    result = run_cli(
        "rhel9",
        "--format",
        "shell",
        "--stdout",
        "--driver-branch",
        "570",
        "--kernel-modules",
        "proprietary",
        "--toolkit-version",
        "1.18.1",
        "--runtime",
        "docker",
        "--runtime",
        "containerd",
        "--cdi",
        "--mirror",
        "nvidia-container-toolkit=https://mirror.example:8443/nct",
        "--key-fingerprint",
        f"nvidia-container-toolkit={GOOD_FPR.lower()}",
        "--container-image",
        "registry.example/cuda:12.9",
        "--gpus",
        "0,1",
        "--capabilities",
        "compute,utility,video",
        check=True,
    )
    script = result.stdout
    assert "readonly DRIVER_BRANCH=570" in script
    assert "readonly DRIVER_MODULE_STREAM=nvidia-driver:570-dkms" in script
    assert "readonly TOOLKIT_VERSION=1.18.1-1" in script
    assert "https://mirror.example:8443/nct/stable/rpm/x86_64" in script and GOOD_FPR in script
    assert "configure_runtime containerd" in script and "--cdi.enabled --set-as-default" in script
    assert '"gpus": "\\"device=0,1\\""' in script and '"registry.example/cuda:12.9"' in script


def test_list_is_a_table_of_every_distribution() -> None:
    result = run_cli("list", check=True)
    header, *rows = result.stdout.splitlines()
    assert header.split()[:3] == ["DISTRO", "NAME", "FAMILY"]
    assert {row.split()[0] for row in rows} >= {"debian12", "ubuntu24.04", "rhel9", "sles15", "amzn2023"}


def test_show_prints_the_resolved_descriptor() -> None:
    result = run_cli("show", "rocky9", check=True)
    assert result.stdout.startswith("# distros/rocky9.yaml, extends: rhel9 -> rhel -> rpm-family -> common\n")
    data = yaml.safe_load(result.stdout)
    assert data["os_release"]["id"] == "rocky" and data["family"] == "dnf" and "cuda-repo" in data["driver"]["sources"]


def test_a_reader_that_stops_early_stops_the_printing_never_the_writing(tmp_path: Path) -> None:
    """`bakegen all | head -1`, and stderr to a reader that is gone: every file is still written and the matrix
    pruned (the printing comes last); before, a closed pipe ended the run with exit 0 and a partial out/."""
    out = tmp_path / "out"
    leftover = out / "retired-distro" / "x86_64" / "install.sh"
    leftover.parent.mkdir(parents=True)
    leftover.write_text("#!/bin/sh\n")
    command = (
        f"{shlex.quote(sys.executable)} -m generator all --format all --out {shlex.quote(str(out))}"
        " 2> >(exit 0) | head -c 1 >/dev/null"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(["bash", "-c", command], cwd=REPO, env=env, check=True, timeout=300)
    assert not leftover.exists()
    check = run_cli("all", "--format", "all", "--out", str(out), "--check")
    assert check.returncode == 0, check.stderr
