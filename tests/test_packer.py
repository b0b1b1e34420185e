"""The Packer output and the `bakegen packer` runner (fast; part of the default test run).

What is validated, and how:
- Every distro x arch folder on disk is rendered into tmp_path. Every .hcl file parses with pygohcl (HashiCorp's
  hcl/v2 parser) and the folder is `packer fmt -check` clean.
- `packer validate` with Debian's Packer 1.6.6 runs on a compatibility copy of each folder, with the example
  variables: the copy lacks plugins.pkr.hcl (1.6.6 rejects `packer { required_plugins }`) and the fields named in
  STRIPPED_FOR_PACKER_1_6 below. So Packer itself checks: every variable (type, default, validation), the locals,
  every argument and block of the qemu, googlecompute and azure-arm sources and of amazon-ebs except those
  fields, the build's provisioners and post-processor, and that the install script exists.
- NOT validated by any Packer here: plugins.pkr.hcl (the plugin pins: parsed, and checked field by field below),
  the stripped fields (parsed, and checked by value below), and whether the pinned plugin versions accept every
  field (1.6.6 has its own built-in builders, older than those plugins). A real `packer init && packer validate`
  with Packer >= the templates' required_version is the only check of that; see docs/packer.md.
- The runner against a fake `packer` that records its argv, and for real against Debian's Packer.

A missing `packer` is a failure, not a skip: CI installs it with `apt-get install packer`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pygohcl
import pytest

from generator.model import Cloud, Format
from generator.packer import (
    LEGACY_STRIPPED,
    PACKER_MIN_VERSION,
    PACKER_PLUGINS,
    PACKER_REBOOT_MARKER,
    make_legacy_copy,
    strip_legacy_fields,
)
from generator.plan import Options, make_plan
from generator.render import render
from generator.resolve import descriptor_set, load_distro
from tests.helpers import REPO, matrix, render_files

MATRIX = matrix()
IDS = [f"{distro}-{arch}" for distro, arch in MATRIX]

# Every field the Packer 1.6.6 copy leaves out, with the reason. Adding one here must be argued: the test
# below fails when the runner's table (generator.packer.LEGACY_STRIPPED) and this one differ.
STRIPPED_FOR_PACKER_1_6 = {
    ("amazon-ebs", "metadata_options"): "1.6.6's built-in amazon-ebs has no metadata_options block (IMDSv2 "
    "for the build instance); the amazon plugin has it",
    ("amazon-ebs", "imds_support"): "1.6.6's built-in amazon-ebs has no imds_support (IMDSv2-only AMIs); "
    "the amazon plugin has it",
    ("azure-arm", "public_ip_sku"): "1.6.6's built-in azure-arm has no public_ip_sku; the azure plugin v2.1.7 has "
    "it (builder/azure/arm/config.go:643), and Azure creates no Basic-SKU public IPs, its default before v2.2.0",
    ("qemu", "efi_boot"): "1.6.6's built-in qemu boots BIOS only; the qemu plugin v1.1.0 has UEFI (arm64 guests)",
    ("qemu", "efi_firmware_code"): "the UEFI firmware of an arm64 guest: qemu plugin v1.1.0 only",
    ("qemu", "efi_firmware_vars"): "the UEFI variable store of an arm64 guest: qemu plugin v1.1.0 only",
    ("qemu", "efi_drop_efivars"): "keeps efivars.fd out of the artifact: qemu plugin v1.1.0 only",
}


def packer_binary() -> str:
    path = shutil.which("packer")
    if path is None:
        pytest.fail("packer is not installed: `apt-get install packer` (Debian's 1.6.6); CI installs it")
    return path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every distro x arch Packer folder, written as bakegen writes it."""
    root = tmp_path_factory.mktemp("packer")
    folders = {}
    for (distro, arch), name in zip(MATRIX, IDS, strict=True):
        for file in render_files(distro, Format.PACKER, arch=arch):
            path = root / name / file.path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(file.text)
            path.chmod(file.mode)
        folders[name] = root / name / "packer"
    return folders


def hcl_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.hcl"))


def load(folder: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = pygohcl.loads((folder / name).read_text())
    return data


# ---- the files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", IDS)
def test_every_file_parses_with_hashicorps_parser(rendered: dict[str, Path], name: str) -> None:
    folder = rendered[name]
    assert [p.name for p in hcl_files(folder)] == sorted(
        ["build.pkr.hcl", "example.pkrvars.hcl", "plugins.pkr.hcl", "sources.pkr.hcl", "variables.pkr.hcl"]
    )
    for path in hcl_files(folder):
        try:
            pygohcl.loads(path.read_text())
        except pygohcl.HCLParseError as exc:
            pytest.fail(f"{path}: {exc}")
    assert os.access(folder / "scripts" / "bakegen-install.sh", os.X_OK)


@pytest.mark.parametrize("name", IDS)
def test_packer_fmt_check_is_clean(rendered: dict[str, Path], name: str) -> None:
    result = subprocess.run(
        [packer_binary(), "fmt", "-check", "-diff", str(rendered[name])], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"packer fmt would change:\n{result.stdout}{result.stderr}"


@pytest.fixture(scope="module")
def validated(rendered: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Validation]:
    """`packer validate` of every folder's Packer 1.6 copy, run a few at a time (each takes a second or two)."""
    packer = packer_binary()
    root = tmp_path_factory.mktemp("packer-1.6")

    def one(name: str) -> Validation:
        copy = root / name
        removed = make_legacy_copy(rendered[name], copy)
        result = subprocess.run(
            [packer, "validate", "-var-file=example.pkrvars.hcl", "."],
            cwd=copy,
            capture_output=True,
            text=True,
            timeout=300,
        )
        return Validation(copy, {(r.source_type, r.field) for r in removed}, result)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(IDS, pool.map(one, IDS), strict=True))


@dataclasses.dataclass(frozen=True)
class Validation:
    copy: Path
    removed: set[tuple[str, str]]
    result: subprocess.CompletedProcess[str]


@pytest.mark.parametrize("name", IDS)
def test_packer_validate_on_the_packer_1_6_copy(validated: dict[str, Validation], name: str) -> None:
    copy, removed, result = validated[name].copy, validated[name].removed, validated[name].result
    assert not (copy / "plugins.pkr.hcl").exists()
    assert removed <= set(STRIPPED_FOR_PACKER_1_6)
    for path in hcl_files(copy):
        pygohcl.loads(path.read_text())
    assert result.returncode == 0, f"packer validate failed:\n{result.stdout}{result.stderr}"


def test_the_stripped_fields_are_named_and_each_is_really_used(rendered: dict[str, Path]) -> None:
    assert {(r.source_type, r.field) for r in LEGACY_STRIPPED} == set(STRIPPED_FOR_PACKER_1_6)
    used = set()
    for folder in rendered.values():
        _, removed = strip_legacy_fields((folder / "sources.pkr.hcl").read_text())
        used |= {(r.source_type, r.field) for r in removed}
    assert used == set(STRIPPED_FOR_PACKER_1_6), "a stripped field no template has: drop it from the table"


# Between them, these two folders use every stripped field (Azure is x86_64 only; UEFI is for arm64 guests).
STRIP_FOLDERS = ("debian12-x86_64", "debian12-aarch64")


def test_stripping_removes_exactly_those_fields(rendered: dict[str, Path]) -> None:
    seen = set()
    for name in STRIP_FOLDERS:
        text = (rendered[name] / "sources.pkr.hcl").read_text()
        stripped, _ = strip_legacy_fields(text)
        before, after = pygohcl.loads(text)["source"], pygohcl.loads(stripped)["source"]
        expected = {source: dict(blocks["gpu"]) for source, blocks in before.items()}
        for source, field in STRIPPED_FOR_PACKER_1_6:
            if field in expected.get(source, {}):
                del expected[source][field]
                seen.add((source, field))
        assert {source: blocks["gpu"] for source, blocks in after.items()} == expected
    assert seen == set(STRIPPED_FOR_PACKER_1_6)


def test_packer_1_6_rejects_what_the_copy_leaves_out(rendered: dict[str, Path], tmp_path: Path) -> None:
    """Proof that the stripping is needed (and that validate is not vacuous): 1.6.6 fails on the full folder."""
    said = ""
    for name in STRIP_FOLDERS:
        folder = tmp_path / name
        shutil.copytree(rendered[name], folder)
        (folder / "plugins.pkr.hcl").unlink()
        result = subprocess.run(
            [packer_binary(), "validate", "-var-file=example.pkrvars.hcl", "."],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode != 0
        said += result.stdout + result.stderr
    for _, field in STRIPPED_FOR_PACKER_1_6:
        assert f'An argument named "{field}" is not expected here' in said or f'"{field}"' in said, field


# ---- what the templates say -----------------------------------------------------------------------------


def clouds_of(folder: Path) -> set[Cloud]:
    sources = load(folder, "sources.pkr.hcl")["source"]
    return {c for c, p in PACKER_PLUGINS.items() if p.builder in sources}


@pytest.mark.parametrize("name", IDS)
def test_plugins_are_pinned_exactly(rendered: dict[str, Path], name: str) -> None:
    packer = load(rendered[name], "plugins.pkr.hcl")["packer"]
    assert packer["required_version"] == f">= {PACKER_MIN_VERSION}"
    clouds = clouds_of(rendered[name])
    assert Cloud.QEMU in clouds
    assert packer["required_plugins"] == {
        PACKER_PLUGINS[c].name: {"source": PACKER_PLUGINS[c].source, "version": PACKER_PLUGINS[c].version}
        for c in clouds
    }
    for plugin in PACKER_PLUGINS.values():
        assert re.fullmatch(r"= [0-9]+\.[0-9]+\.[0-9]+", plugin.version)


@pytest.mark.parametrize("name", IDS)
def test_variables_are_typed_described_and_secrets_sensitive(rendered: dict[str, Path], name: str) -> None:
    variables = load(rendered[name], "variables.pkr.hcl")["variable"]
    for var, spec in variables.items():
        assert spec.get("type"), var
        assert len(spec.get("description", "")) > 10, var
        secret = any(word in var for word in ("secret", "password", "token"))
        assert spec.get("sensitive", False) is secret, var
    used = set(re.findall(r"var\.([a-z0-9_]+)", "".join(p.read_text() for p in hcl_files(rendered[name]))))
    assert used <= set(variables)
    example = load(rendered[name], "example.pkrvars.hcl")
    assert set(example) <= set(variables)
    assert not any("secret" in key for key in example)


@pytest.mark.parametrize("distro,arch", MATRIX, ids=IDS)
def test_aws_source_is_official_encrypted_and_imdsv2(rendered: dict[str, Path], distro: str, arch: str) -> None:
    sources = load(rendered[f"{distro}-{arch}"], "sources.pkr.hcl")["source"]
    d = load_distro(descriptor_set(), distro)
    if Cloud.AWS not in d.clouds:
        assert "amazon-ebs" not in sources
        return
    aws = sources["amazon-ebs"]["gpu"]
    assert aws["source_ami_filter"]["owners"] == [d.clouds[Cloud.AWS].settings["owner"]]
    assert aws["source_ami_filter"]["most_recent"] is True
    root = aws["launch_block_device_mappings"]
    assert (root["volume_type"], root["encrypted"], root["device_name"]) == (
        "gp3",
        True,
        d.clouds[Cloud.AWS].settings["root_device"],
    )
    assert aws["encrypt_boot"] is True
    assert aws["metadata_options"]["http_tokens"] == "required"
    assert aws["imds_support"] == "v2.0"
    assert aws["instance_type"] == "var.aws_instance_type"


@pytest.mark.parametrize("name", IDS)
def test_qemu_source_emulates_with_cpu_max_and_reads_a_nocloud_seed(rendered: dict[str, Path], name: str) -> None:
    text = (rendered[name] / "sources.pkr.hcl").read_text()
    qemu = load(rendered[name], "sources.pkr.hcl")["source"]["qemu"]["gpu"]
    assert qemu["disk_image"] is True
    assert '["-cpu", "max"]' in qemu["qemuargs"]
    assert "ds=nocloud-net;s=http://{{ .HTTPIP }}:{{ .HTTPPort }}/" in qemu["qemuargs"]
    assert "host" not in re.findall(r'"-cpu", "([^"]+)"', text)
    variables = load(rendered[name], "variables.pkr.hcl")["variable"]
    assert "tcg" in variables["qemu_accelerator"]["validation"]["condition"]


@pytest.mark.parametrize("name", IDS)
def test_build_waits_installs_reboots_verifies_cleans_in_that_order(rendered: dict[str, Path], name: str) -> None:
    build = load(rendered[name], "build.pkr.hcl")["build"]
    shells = build["provisioner"]["shell"]
    wait, install, reboot, verify, clean = shells[:5]
    # Images without cloud-init (GCP's Debian, RHEL, AlmaLinux) skip the wait and the clean (packer audit P8).
    assert wait["inline"][0].startswith("if ! command -v cloud-init >/dev/null;") and "exit 0" in wait["inline"][0]
    assert "cloud-init status --wait" in wait["inline"][1]
    assert any('"$rc" -eq 2' in line and "exit 0" in line for line in wait["inline"])
    assert install["valid_exit_codes"] == [0, 10]
    assert install["script"] == verify["script"]
    assert reboot["expect_disconnect"] is True
    assert reboot["valid_exit_codes"] == [0, 143, 2300218]  # SIGTERM by the reboot, a lost status (P14)
    assert any(f"[ ! -f {PACKER_REBOOT_MARKER} ]" in line and "exit 0" in line for line in reboot["inline"])
    assert verify["valid_exit_codes"] == [0]
    cleanup = "\n".join(clean["inline"])
    assert "if command -v cloud-init >/dev/null; then sudo cloud-init clean" in cleanup
    for needed in (
        "cloud-init clean",
        "/etc/machine-id",
        "/var/lib/bakegen/gpu-check.json",
        "/etc/ssh/ssh_host_",
        "authorized_keys",
        "/var/log",
    ):
        assert needed in cleanup
    assert build["post-processor"]["manifest"]["custom_data"]["distribution"] == name.rsplit("-", 1)[0]
    assert "name" not in build, "a named build makes -only=TYPE.gpu match nothing on Packer 1.6.6"
    script = (rendered[name] / "scripts" / "bakegen-install.sh").read_text()
    assert f"REBOOT_MARKER={PACKER_REBOOT_MARKER}\n" in script
    assert "EX_REBOOT=10" in script


def test_values_reach_hcl_only_through_the_hcl_filter() -> None:
    """A name with quotes, backslashes and HCL template sequences stays a literal string."""
    plan = make_plan(load_distro(descriptor_set(), "debian12"), Options())
    evil = 'Evil "12" ${var.x} %{ if true } \\ end'
    plan = dataclasses.replace(plan, distro=dataclasses.replace(plan.distro, name=evil))
    files = {str(f.path): f.content for f in render(plan, Format.PACKER)}
    local = pygohcl.loads(files["packer/sources.pkr.hcl"])["locals"]
    assert local["image_description"].startswith(f"NVIDIA GPU container host, {evil} x86_64")


# ---- the runner, with a fake packer -----------------------------------------------------------------------

FAKE_PACKER = """#!{python}
import json, os, signal, sys
log = os.environ["FAKE_PACKER_LOG"]
argv = sys.argv[1:]
listing = sorted(os.listdir(argv[-1])) if argv and os.path.isdir(argv[-1]) else None
with open(log, "a") as handle:
    handle.write(json.dumps({{"argv": argv, "listing": listing}}) + "\\n")
if argv == ["version"]:
    print(os.environ.get("FAKE_PACKER_VERSION_OUTPUT", "Packer v1.11.2"))
    sys.exit(0)
print("fake packer output for " + " ".join(argv), flush=True)
code = int(os.environ.get("FAKE_PACKER_EXIT", "0"))
if code < 0:
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


@dataclasses.dataclass
class FakePacker:
    bin_dir: Path
    log: Path
    env: dict[str, str]

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def runs(self) -> list[list[str]]:
        """The calls other than `packer version`."""
        return [c["argv"] for c in self.calls() if c["argv"] != ["version"]]


def tool_dir(tmp_path: Path) -> Path:
    """A PATH folder with what the runner needs besides packer (bash checks the rendered script)."""
    tools = tmp_path / "tools"
    tools.mkdir(exist_ok=True)
    for tool in ("bash",):
        found = shutil.which(tool)
        assert found
        if not (tools / tool).exists():
            (tools / tool).symlink_to(found)
    return tools


@pytest.fixture
def fake_packer(tmp_path: Path) -> FakePacker:
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    exe = bin_dir / "packer"
    exe.write_text(FAKE_PACKER.format(python=sys.executable))
    exe.chmod(0o755)
    log = tmp_path / "packer-calls.jsonl"
    env = {
        "PATH": f"{bin_dir}:{tool_dir(tmp_path)}",
        "FAKE_PACKER_LOG": str(log),
        "PYTHONPATH": str(REPO),
        "HOME": str(tmp_path),
    }
    return FakePacker(bin_dir, log, env)


def bakegen_packer(*args: str, env: dict[str, str], cwd: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "generator", "packer", *args],
        cwd=cwd,
        env={**env, **extra_env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_runner_validates_with_only_and_the_example_values(fake_packer: FakePacker, tmp_path: Path) -> None:
    result = bakegen_packer("debian12", "--cloud", "qemu", "validate", env=fake_packer.env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    folder = "out/debian12/x86_64/packer"
    assert fake_packer.runs() == [["validate", "-only=qemu.gpu", f"-var-file={folder}/example.pkrvars.hcl", folder]]
    assert (tmp_path / folder / "sources.pkr.hcl").is_file()
    assert 'source "amazon-ebs"' not in (tmp_path / folder / "sources.pkr.hcl").read_text()
    assert "fake packer output for validate" in result.stdout, "packer's output is streamed, not swallowed"


def test_runner_build_passes_only_var_files_and_extra_args(fake_packer: FakePacker, tmp_path: Path) -> None:
    (tmp_path / "my.pkrvars.hcl").write_text('image_name = "team-gpu"\n')
    result = bakegen_packer(
        "ubuntu24.04",
        "--arch",
        "aarch64",
        "--cloud",
        "aws,qemu",
        "--driver-branch",
        "570",
        "build",
        "--var-file",
        "my.pkrvars.hcl",
        "--out",
        "gen",
        "--",
        "-on-error=abort",
        "-timestamp-ui",
        env=fake_packer.env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    folder = "gen/ubuntu24.04/aarch64/packer"
    assert fake_packer.runs() == [
        [
            "build",
            "-only=amazon-ebs.gpu,qemu.gpu",
            "-var-file=my.pkrvars.hcl",
            "-on-error=abort",
            "-timestamp-ui",
            folder,
        ]
    ]
    assert "570" in (tmp_path / folder / "scripts" / "bakegen-install.sh").read_text()


def test_runner_without_cloud_builds_every_source_and_init_takes_the_folder(
    fake_packer: FakePacker, tmp_path: Path
) -> None:
    assert bakegen_packer("rocky9", "build", env=fake_packer.env, cwd=tmp_path).returncode == 0
    assert bakegen_packer("rocky9", "init", env=fake_packer.env, cwd=tmp_path).returncode == 0
    folder = "out/rocky9/x86_64/packer"
    assert fake_packer.runs() == [["build", folder], ["init", folder]]


@pytest.mark.parametrize("code,expected", [(0, 0), (1, 1), (3, 3), (-15, 143)])
def test_runner_returns_packers_exit_code(fake_packer: FakePacker, tmp_path: Path, code: int, expected: int) -> None:
    result = bakegen_packer(
        "debian12", "--cloud", "qemu", "build", env=fake_packer.env, cwd=tmp_path, FAKE_PACKER_EXIT=str(code)
    )
    assert result.returncode == expected
    assert f"packer build exited {expected}" in result.stderr


def test_runner_without_packer_says_how_to_install_it(fake_packer: FakePacker, tmp_path: Path) -> None:
    env = {**fake_packer.env, "PATH": str(tool_dir(tmp_path))}
    result = bakegen_packer("debian12", "validate", env=env, cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("bakegen: error: packer was not found on PATH (install HashiCorp Packer >= ")
    assert "https://developer.hashicorp.com/packer/install" in lines[-1]
    assert "Traceback" not in result.stderr


def test_runner_rejects_a_packer_that_is_not_hashicorps(fake_packer: FakePacker, tmp_path: Path) -> None:
    result = bakegen_packer(
        "debian12", "validate", env=fake_packer.env, cwd=tmp_path, FAKE_PACKER_VERSION_OUTPUT="usage: packer dict"
    )
    assert result.returncode == 1
    assert "does not look like HashiCorp Packer" in result.stderr
    assert fake_packer.runs() == []


def test_dry_run_prints_the_exact_commands_and_runs_nothing(fake_packer: FakePacker, tmp_path: Path) -> None:
    result = bakegen_packer(
        "debian12",
        "--cloud",
        "gcp,qemu",
        "build",
        "--dry-run",
        "--var-file",
        "/etc/hostname",
        "--",
        "-var",
        "image_name=a b",
        env=fake_packer.env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert fake_packer.calls() == [], "a dry run runs nothing, not even `packer version`"
    assert result.stdout.splitlines() == [
        f"{fake_packer.bin_dir}/packer build -only=googlecompute.gpu,qemu.gpu -var-file=/etc/hostname -var "
        "'image_name=a b' out/debian12/x86_64/packer"
    ]


@pytest.mark.parametrize(
    "args,message",
    [
        (["all", "validate"], "takes one distribution"),
        (["debian12", "--arch", "all"], "takes one --arch"),
        (["debian12", "--format", "shell"], "--format does not apply"),
        (["debian12", "deploy"], "invalid choice: 'deploy'"),
        (["debian12", "--cloud", "mars"], "--cloud: 'mars' is not one of"),
        (["amzn2023", "--cloud", "gcp"], "has no base image for gcp"),
        (["debian12", "--var-file", "missing.pkrvars.hcl"], "--var-file: missing.pkrvars.hcl is not a file"),
        (["debain12"], "unknown distribution 'debain12'"),
    ],
)
def test_runner_usage_errors_are_one_line_exit_2(
    fake_packer: FakePacker, tmp_path: Path, args: list[str], message: str
) -> None:
    result = bakegen_packer(*args, env=fake_packer.env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert fake_packer.calls() == []


# ---- the runner and an old Packer (< 1.7) -----------------------------------------------------------------


def test_old_packer_validate_runs_on_a_compatibility_copy(fake_packer: FakePacker, tmp_path: Path) -> None:
    result = bakegen_packer(
        "debian12", "validate", env=fake_packer.env, cwd=tmp_path, FAKE_PACKER_VERSION_OUTPUT="Packer v1.6.6"
    )
    assert result.returncode == 0, result.stderr
    (call,) = [c for c in fake_packer.calls() if c["argv"] != ["version"]]
    copy = call["argv"][-1]
    assert call["argv"] == ["validate", f"-var-file={copy}/example.pkrvars.hcl", copy]
    assert "plugins.pkr.hcl" not in call["listing"] and "sources.pkr.hcl" in call["listing"]
    assert "compatibility copy" in result.stderr and "amazon-ebs.imds_support" in result.stderr
    assert not Path(copy).exists(), "the copy is removed after the run"


def test_old_packer_build_needs_the_flag_and_never_drops_security_settings(
    fake_packer: FakePacker, tmp_path: Path
) -> None:
    old = {"FAKE_PACKER_VERSION_OUTPUT": "Packer v1.6.6"}
    plain = bakegen_packer("debian12", "--cloud", "qemu", "build", env=fake_packer.env, cwd=tmp_path, **old)
    assert plain.returncode == 1
    assert "needs Packer >= 1.7" in plain.stderr and "--legacy-packer" in plain.stderr
    aws = bakegen_packer(
        "debian12", "--cloud", "aws,qemu", "build", "--legacy-packer", env=fake_packer.env, cwd=tmp_path, **old
    )
    assert aws.returncode == 1
    assert "amazon-ebs.imds_support, amazon-ebs.metadata_options" in aws.stderr
    every = bakegen_packer("debian12", "build", "--legacy-packer", env=fake_packer.env, cwd=tmp_path, **old)
    assert every.returncode == 1, "without --cloud every source is built, amazon-ebs included"
    init = bakegen_packer("debian12", "init", env=fake_packer.env, cwd=tmp_path, **old)
    assert init.returncode == 1 and "packer init needs Packer >= 1.7" in init.stderr
    assert fake_packer.runs() == []
    qemu = bakegen_packer(
        "debian12", "--cloud", "qemu", "build", "--legacy-packer", env=fake_packer.env, cwd=tmp_path, **old
    )
    assert qemu.returncode == 0, qemu.stderr
    (run,) = fake_packer.runs()
    assert run[:2] == ["build", "-only=qemu.gpu"] and run[-1] != "out/debian12/x86_64/packer"


# ---- the runner and Debian's real Packer ------------------------------------------------------------------


def test_bakegen_packer_validate_works_with_debians_packer(tmp_path: Path) -> None:
    packer_binary()
    env = {**os.environ, "PYTHONPATH": str(REPO), "CHECKPOINT_DISABLE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "generator", "packer", "debian12", "validate"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "packer validate exited 0" in result.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "generator", "packer", "debian12", "validate", "--", "-var", "image_name=Not_Valid"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert bad.returncode == 1, "a failing packer validate fails bakegen"
    assert "image_name must be 3 to 20 characters" in bad.stdout + bad.stderr


# ---- the clouds' rules (packer audit P1, P2, P12) -------------------------------------------------------

# GCP label values: lowercase letters, digits, underscores and dashes, at most 63 characters
# (cloud.google.com/compute/docs/labeling-resources; googlecompute v1.1.6 passes image_labels unchanged to
# images.insert, which refuses others at the end of a build).
GCP_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")


def _gcp_label_values(folder: Path) -> dict[str, str]:
    """The image labels as GCP receives them: the locals' values through the source's own expression, which is
    checked to be exactly the one evaluated here (lower, every other character to -, 63 characters)."""
    text = (folder / "sources.pkr.hcl").read_text()
    expression = 'substr(regex_replace(lower(value), "[^a-z0-9_-]", "-"), 0, 63)'
    rule = f"= {{ for key, value in local.image_labels : key => {expression} }}"
    assert re.search(r"image_labels +" + re.escape(rule), text)
    labels = load(folder, "sources.pkr.hcl")["locals"]["image_labels"]
    return {key: re.sub(r"[^a-z0-9_-]", "-", str(value).lower())[:63] for key, value in labels.items()}


GCP_IDS = [f"{d}-{a}" for d, a in MATRIX if Cloud.GCP in load_distro(descriptor_set(), d).clouds]


@pytest.mark.parametrize("name", GCP_IDS)
def test_gcp_label_values_are_what_gcp_accepts(rendered: dict[str, Path], name: str) -> None:
    values = _gcp_label_values(rendered[name])
    assert values and all(GCP_LABEL_VALUE.fullmatch(v) for v in values.values()), values
    assert " " in str(load(rendered[name], "sources.pkr.hcl")["locals"]["image_labels"]["driver"]), (
        "the driver label has spaces: the rule is exercised"
    )


def test_gcp_gpu_machines_stop_for_host_maintenance(rendered: dict[str, Path]) -> None:
    """GPUs cannot live-migrate: TERMINATE with an attached accelerator or an accelerator-optimized type."""
    gcp = load(rendered["debian12-x86_64"], "sources.pkr.hcl")["source"]["googlecompute"]["gpu"]
    expression = str(gcp["on_host_maintenance"])
    assert 'var.gcp_accelerator_type != ""' in expression and "(a2|a3|a4|g2|g4)-" in expression
    assert expression.rstrip("}").endswith('"TERMINATE" : "MIGRATE"'), expression


@pytest.mark.parametrize("name", IDS)
def test_azure_asks_for_a_standard_public_ip(rendered: dict[str, Path], name: str) -> None:
    sources = load(rendered[name], "sources.pkr.hcl")["source"]
    if "azure-arm" in sources:
        assert sources["azure-arm"]["gpu"]["public_ip_sku"] == "Standard"
