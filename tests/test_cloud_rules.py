"""The clouds' own rules, checked on every generated Packer folder (issue 10; ../shared/notes/packer-audit.md).

Packer validates none of these: a folder that breaks one fails on the real cloud, often at the last step of a
build. Each rule names its source. GCP's label rule and TERMINATE, and Azure's Standard public IP, are in
tests/test_packer.py.
"""

from __future__ import annotations

import fnmatch
import re

import pygohcl
import pytest

from generator.errors import UsageError
from generator.model import Arch, Cloud
from generator.plan import Options, make_plan
from generator.resolve import descriptor_set, load_distro
from tests.helpers import matrix, render_packer_file

MATRIX = matrix()
IDS = [f"{d}-{a}" for d, a in MATRIX]


def sources(distro: str, arch: str) -> dict[str, dict[str, object]]:
    text = render_packer_file(distro, "sources.pkr.hcl", arch=arch)
    parsed: dict[str, dict[str, object]] = {t: b["gpu"] for t, b in pygohcl.loads(text)["source"].items()}
    return parsed


# GCP resource names (images, image families): "[a-z]([-a-z0-9]*[a-z0-9])?", at most 63 characters
# (cloud.google.com/compute/docs/naming-resources). Ours: image_name (3-20, validated) + slug + 14-digit time.
GCP_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


@pytest.mark.parametrize(("distro", "arch"), MATRIX, ids=IDS)
def test_gcp_image_and_family_names(distro: str, arch: str) -> None:
    slug = pygohcl.loads(render_packer_file(distro, "sources.pkr.hcl", arch=arch))["locals"]["image_slug"]
    longest_prefix = "a" * 20  # variables.pkr.hcl: image_name is 3 to 20 of [a-z0-9-], starting with a letter
    assert GCP_NAME.fullmatch(f"{longest_prefix}-{slug}-{'2' * 14}"), slug
    assert GCP_NAME.fullmatch(f"{longest_prefix}-{slug}"), slug


# Azure: an Arm64 VM cannot be captured as a managed image, only into a compute gallery (packer-plugin-azure#287,
# #366, #367); bakegen builds no gallery yet, so aarch64 folders have no Azure source and asking is refused.
@pytest.mark.parametrize(("distro", "arch"), MATRIX, ids=IDS)
def test_azure_only_where_a_managed_image_can_be_captured(distro: str, arch: str) -> None:
    azure = sources(distro, arch).get("azure-arm")
    assert (azure is None) == (arch == "aarch64" or Cloud.AZURE not in load_distro(descriptor_set(), distro).clouds)
    if azure is not None:
        # The plugin's default admin user (`packer`): Azure refuses names such as `admin` and `root` (the Debian
        # AMIs' user is admin), so the source never sets ssh_username.
        assert "ssh_username" not in azure


def test_azure_arm64_is_refused_naming_what_to_do() -> None:
    distro = load_distro(descriptor_set(), "debian12")
    with pytest.raises(UsageError) as refused:
        make_plan(distro, Options(arch=Arch.AARCH64, clouds=(Cloud.AZURE,)))
    assert "cannot capture an Arm64 VM as a managed image" in str(refused.value)
    assert refused.value.hint == "for aarch64 use --cloud aws, gcp or qemu"


# Azure refuses an OS disk smaller than the image's: RHEL's images carry 64 GB ("The specified disk size 32 GB is
# smaller than the size of the corresponding disk in the VM image: 64 GB"; hitachienergy/epiphany#2080).
@pytest.mark.parametrize("distro", ["rhel8", "rhel9"])
def test_azure_rhel_disk_is_at_least_the_images(distro: str) -> None:
    assert sources(distro, "x86_64")["azure-arm"]["os_disk_size_gb"] == "max(var.root_volume_gb, 64)"


# Marketplace images with a plan need plan information ("Creating a virtual machine from Marketplace image ...
# requires Plan information"; mesosphere/konvoy-image-builder#637): Rocky's resf images.
def test_azure_marketplace_plan() -> None:
    azure = sources("rocky9", "x86_64")["azure-arm"]
    plan = azure["plan_info"]
    assert plan == {
        "plan_name": azure["image_sku"],
        "plan_product": azure["image_offer"],
        "plan_publisher": azure["image_publisher"],
    }
    assert "plan_info" not in sources("almalinux9", "x86_64")["azure-arm"]


# AWS: the name pattern picks the distribution's own images and nothing else that its owner publishes. Names as
# published (distros/evidence: al2023.ami_name_patterns; SUSE's, from describe-images outputs quoted in
# docs/evidence-cloud-images.md).
AL2023 = "al2023-ami-2023.{}-kernel-{}-{}"
AWS_NAMES = {
    ("amzn2023", "6.12"): (
        [AL2023.format("9.20251110.1", "6.12", "x86_64")],
        [
            AL2023.format("11.20260526.0", "6.18", "x86_64"),
            AL2023.format("11.20260526.0", "6.1", "x86_64"),
            "al2023-ami-minimal-2023.12.20260930.0-kernel-6.12-x86_64",
            AL2023.format("9.20251110.1", "6.12", "arm64"),
        ],
    ),
    ("amzn2023", "6.1"): (
        [AL2023.format("11.20260526.0", "6.1", "x86_64")],
        [AL2023.format("9.20251110.1", "6.12", "x86_64")],
    ),
    ("sles15", None): (
        ["suse-sles-15-sp6-v20250130-hvm-ssd-x86_64"],
        [
            "suse-sles-15-sp6-byos-v20250130-hvm-ssd-x86_64",
            "suse-sles-15-sp6-chost-byos-v20250130-hvm-ssd-x86_64",
            "suse-sles-15-sp6-v20260101-ecs-hvm-ssd-x86_64",
            "suse-sles-15-sp6-v20250130-hvm-ssd-arm64",
        ],
    ),
}


@pytest.mark.parametrize(("distro", "line"), sorted(AWS_NAMES, key=str))
def test_aws_name_pattern_picks_one_line_and_no_byos(distro: str, line: str | None) -> None:
    aws = sources(distro, "x86_64")["amazon-ebs"]
    pattern = str(aws["source_ami_filter"]["filters"]["name"])  # type: ignore[index]
    if line is not None:  # replace("...kernel-{kernel_line}-x86_64", "{kernel_line}", var.aws_kernel_line)
        match = re.fullmatch(r'replace\("([^"]+)", "\{kernel_line\}", var\.aws_kernel_line\)', pattern)
        assert match, pattern
        pattern = match.group(1).replace("{kernel_line}", line)
    matching, other = AWS_NAMES[(distro, line)]
    assert all(fnmatch.fnmatchcase(name, pattern) for name in matching), pattern
    assert not any(fnmatch.fnmatchcase(name, pattern) for name in other), pattern


def test_al2023_kernel_line_variable_names_each_line() -> None:
    variable = pygohcl.loads(render_packer_file("amzn2023", "variables.pkr.hcl"))["variable"]["aws_kernel_line"]
    assert variable["default"] == "6.12"
    assert 'contains(["6.1", "6.12", "6.18"], var.aws_kernel_line)' in variable["validation"]["condition"]
