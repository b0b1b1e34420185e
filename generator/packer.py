"""Packer's constants and version handling: the plugin pins, the build machines, finding Packer and its version,
and the compatibility copy of a folder for Packer releases before 1.7 (Debian's 1.6.6).

Used by the renderer (generator/render.py), `bakegen packer` (generator/packer_runner.py) and `bakegen validate`
(generator/validate.py); imports none of them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import BakegenError
from .model import Cloud


@dataclass(frozen=True)
class PackerPlugin:
    name: str
    source: str
    version: str
    builder: str  # the source type the plugin provides


# Pinned Packer plugins, one per cloud (versions published on releases.hashicorp.com).
PACKER_PLUGINS = {
    Cloud.AWS: PackerPlugin("amazon", "github.com/hashicorp/amazon", "= 1.3.3", "amazon-ebs"),
    Cloud.GCP: PackerPlugin("googlecompute", "github.com/hashicorp/googlecompute", "= 1.1.6", "googlecompute"),
    Cloud.AZURE: PackerPlugin("azure", "github.com/hashicorp/azure", "= 2.1.7", "azure-arm"),
    Cloud.QEMU: PackerPlugin("qemu", "github.com/hashicorp/qemu", "= 1.1.0", "qemu"),
}
# The oldest Packer the templates declare (required_version): plugins come from `packer init` since 1.7 and
# are no longer bundled since 1.10.
PACKER_MIN_VERSION = "1.10.0"
PACKER_SOURCE_NAME = "gpu"
PACKER_FILES = ("plugins.pkr.hcl", "variables.pkr.hcl", "sources.pkr.hcl", "build.pkr.hcl", "example.pkrvars.hcl")
PACKER_SCRIPT = PurePosixPath("scripts") / "bakegen-install.sh"
# What the install script and the GPU check leave on the build machine (see templates/shell/lib.sh.j2 and
# templates/files/bakegen-gpu-check.py): the build reboots on the marker and removes the check's results.
PACKER_REBOOT_MARKER = "/run/bakegen/reboot-required"
PACKER_GPU_CHECK_RESULTS = ("/var/lib/bakegen/gpu-check.json", "/etc/motd.d/90-bakegen-gpu-check")
# Build machines by arch: a default without a GPU, and the GPU machine the example variables suggest
# ("" where the cloud has no GPU machine for the arch).
PACKER_BUILD_MACHINES = {
    "x86_64": {
        "aws": "m6i.large",
        "aws_gpu": "g5.xlarge",
        "gcp": "n2-standard-4",
        "gcp_gpu_machine": "n1-standard-4",
        "gcp_gpu": "nvidia-tesla-t4",
        "azure": "Standard_D4s_v5",
        "azure_gpu": "Standard_NC4as_T4_v3",
    },
    "aarch64": {
        "aws": "m7g.large",
        "aws_gpu": "g5g.xlarge",
        "gcp": "t2a-standard-4",
        "gcp_gpu_machine": "",
        "gcp_gpu": "",
        "azure": "Standard_D4ps_v5",
        "azure_gpu": "",
    },
}

PLUGINS_FILE = "plugins.pkr.hcl"
PLUGINS_SINCE = (1, 7, 0)
INSTALL_HINT = (
    f"install HashiCorp Packer >= {PACKER_MIN_VERSION}: https://developer.hashicorp.com/packer/install; "
    "Debian's `apt-get install packer` gives 1.6.6, enough for validate and for qemu builds with --legacy-packer"
)
VERSION_TIMEOUT_S = 60
_VERSION_RE = re.compile(r"Packer v?([0-9]+)\.([0-9]+)\.([0-9]+)")
_SOURCE_RE = re.compile(r'^source "([^"]+)" "([^"]+)" \{$')


@dataclass(frozen=True)
class LegacyStrip:
    """A field Packer < 1.7 rejects, removed from the compatibility copy: the source type it lives in, why."""

    source_type: str
    field: str
    reason: str


# What the compatibility copy for Packer < 1.7 leaves out, besides plugins.pkr.hcl. A build of a source that
# would lose one of these is refused: they are security settings, or what the cloud requires.
LEGACY_STRIPPED = (
    LegacyStrip(
        "amazon-ebs",
        "metadata_options",
        "IMDSv2 (http_tokens = required) on the build instance: Packer 1.6.6's built-in amazon-ebs does not know it",
    ),
    LegacyStrip(
        "amazon-ebs",
        "imds_support",
        "IMDSv2-only instances from the AMI: added to the amazon plugin after Packer 1.6.6",
    ),
    LegacyStrip(
        "azure-arm",
        "public_ip_sku",
        "a Standard-SKU public IP (Azure creates no Basic ones): Packer 1.6.6's built-in azure-arm does not know it",
    ),
    *(
        LegacyStrip("qemu", field, "UEFI for an arm64 guest: Packer 1.6.6's built-in qemu boots BIOS only")
        for field in ("efi_boot", "efi_firmware_code", "efi_firmware_vars", "efi_drop_efivars")
    ),
)


@dataclass(frozen=True)
class PackerVersion:
    path: str
    version: tuple[int, int, int]

    @property
    def text(self) -> str:
        return ".".join(str(n) for n in self.version)

    @property
    def legacy(self) -> bool:
        return self.version < PLUGINS_SINCE


def find_packer() -> str:
    path = shutil.which("packer")
    if path is None:
        raise BakegenError("packer was not found on PATH", hint=INSTALL_HINT)
    return path


def packer_version(path: str) -> PackerVersion:
    """`packer version`, parsed; a program named packer that is not HashiCorp's (cracklib has one) is an error."""
    try:
        result = subprocess.run(
            [path, "version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BakegenError(f"could not run `{path} version`: {exc}", hint=INSTALL_HINT) from None
    match = _VERSION_RE.search(result.stdout)
    if result.returncode != 0 or not match:
        first = (result.stdout + result.stderr).strip().splitlines()[:1]
        raise BakegenError(
            f"{path} does not look like HashiCorp Packer (`packer version` said: {first[0] if first else 'nothing'})",
            hint=INSTALL_HINT,
        )
    major, minor, patch = (int(n) for n in match.groups())
    return PackerVersion(path, (major, minor, patch))


def strip_legacy_fields(text: str) -> tuple[str, list[LegacyStrip]]:
    """Remove LEGACY_STRIPPED fields from one rendered HCL file: single-line attributes and whole blocks, only
    inside a `source` block of the rule's type. Returns the new text and the rules that removed something."""
    lines = text.split("\n")
    kept: list[str] = []
    removed: list[LegacyStrip] = []
    source_type: str | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        opened = _SOURCE_RE.match(line)
        if opened:
            source_type = opened.group(1)
        elif line == "}":
            source_type = None
        rule = next((r for r in LEGACY_STRIPPED if r.source_type == source_type and _opens_field(line, r.field)), None)
        if rule is None:
            kept.append(line)
            index += 1
            continue
        removed.append(rule)
        if line.rstrip().endswith("{"):  # a block: skip to the brace that closes it, at the same indent
            indent = line[: len(line) - len(line.lstrip())]
            index += 1
            while index < len(lines) and lines[index] != f"{indent}}}":
                index += 1
        index += 1
    return "\n".join(kept), removed


def _opens_field(line: str, field: str) -> bool:
    return re.match(rf"^\s+{re.escape(field)}\s*(=|\{{)", line) is not None


def make_legacy_copy(folder: Path, dest: Path) -> list[LegacyStrip]:
    """Copy the generated files of `folder` to `dest` for Packer < 1.7: no plugins.pkr.hcl, LEGACY_STRIPPED removed."""
    removed: list[LegacyStrip] = []
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(folder.glob("*.pkr*.hcl")):
        if path.name == PLUGINS_FILE:
            continue
        text, stripped = strip_legacy_fields(path.read_text(encoding="utf-8"))
        (dest / path.name).write_text(text, encoding="utf-8")
        removed.extend(stripped)
    if (folder / "scripts").is_dir():
        shutil.copytree(folder / "scripts", dest / "scripts", dirs_exist_ok=True)
    return removed
