"""The resolved model: enums for fixed sets and frozen dataclasses built from descriptors and options."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Family(enum.Enum):
    APT = "apt"
    DNF = "dnf"
    ZYPPER = "zypper"


class Arch(enum.Enum):
    X86_64 = "x86_64"
    AARCH64 = "aarch64"

    @property
    def deb(self) -> str:
        """Debian's name for the architecture."""
        return {Arch.X86_64: "amd64", Arch.AARCH64: "arm64"}[self]

    @property
    def cuda(self) -> str:
        """The folder name in NVIDIA's CUDA repositories (arm64 servers are `sbsa`)."""
        return {Arch.X86_64: "x86_64", Arch.AARCH64: "sbsa"}[self]


# A repository key whose fingerprint no evidence shows: the generated script refuses it until --key-fingerprint.
UNVERIFIED_FINGERPRINT = "UNVERIFIED"


class Format(enum.Enum):
    CLOUD_INIT = "cloud-init"
    SHELL = "shell"
    PACKER = "packer"


class KernelModules(enum.Enum):
    OPEN = "open"
    PROPRIETARY = "proprietary"


class DriverSourceKind(enum.Enum):
    """How a driver source delivers the kernel module; templates branch on this, never on the distro."""

    DISTRO = "distro"  # the distribution's own packages, DKMS-built
    UBUNTU_DRIVERS = "ubuntu-drivers"  # Canonical-signed precompiled modules
    CUDA_REPO = "cuda-repo"  # NVIDIA's CUDA network repository


class Runtime(enum.Enum):
    DOCKER = "docker"
    CONTAINERD = "containerd"
    CRIO = "crio"


class Cloud(enum.Enum):
    AWS = "aws"
    GCP = "gcp"
    AZURE = "azure"
    QEMU = "qemu"


@dataclass(frozen=True)
class RepoSpec:
    """A package repository as a descriptor states it: paths may hold {placeholders} such as {deb_arch}."""

    name: str
    description: str
    base: str  # https URL that a --mirror replaces
    path: str  # below base: the repository itself
    key: str  # below base: the ASCII-armored signing key
    fingerprint: str  # full 40-hex primary-key fingerprint, upper case, or UNVERIFIED (the script refuses the key)
    suite: str = "/"  # apt only; "/" is a flat repository
    components: tuple[str, ...] = ()  # apt only
    signs_metadata: bool = True  # rpm: repomd.xml is signed (repo_gpgcheck)
    signs_packages: bool = True  # rpm: each package is signed (gpgcheck)


@dataclass(frozen=True)
class Repo:
    """A repository made concrete for one arch, mirror and fingerprint: what the script trusts."""

    name: str
    description: str
    url: str
    key_url: str
    fingerprint: str
    suite: str
    components: tuple[str, ...]
    signs_metadata: bool = True
    signs_packages: bool = True

    @property
    def keyring(self) -> str:
        """apt: one keyring per repository, named in that repository's signed-by."""
        return f"/etc/apt/keyrings/{self.name}.gpg"

    @property
    def rpm_key_path(self) -> str:
        return f"/etc/pki/rpm-gpg/RPM-GPG-KEY-{self.name}"


@dataclass(frozen=True)
class FabricManagerName:
    """The fabric manager's package name from `from_branch` on ("": any branch); {branch} = the branch."""

    package: str
    from_branch: str = ""


@dataclass(frozen=True)
class DriverSource:
    name: str
    kind: DriverSourceKind
    description: str
    branches: tuple[str, ...]  # branches this source can provide; empty = any
    default_branch: str
    kernel_modules: tuple[KernelModules, ...]
    packages: dict[KernelModules, tuple[str, ...]]
    pin_packages: tuple[str, ...]  # globs held at the branch against unattended upgrades
    repos: tuple[str, ...] = ()  # names of the repositories it needs, in order
    apt_components: tuple[str, ...] = ()  # archive components the source needs enabled (e.g. non-free)
    module_stream: dict[KernelModules, str] = field(default_factory=dict)  # dnf module streams
    dkms: bool = True  # builds the module with DKMS (unsigned unless a MOK key is enrolled)
    arches: tuple[Arch, ...] = ()  # the arches it has packages for; empty = all of the distribution's
    fabric_manager: tuple[FabricManagerName, ...] = ()  # empty: the source has no fabric manager

    @property
    def dkms_fallback(self) -> bool:
        """Precompiled modules, and DKMS for a kernel that has none (as ubuntu-drivers does)."""
        return self.kind is DriverSourceKind.UBUNTU_DRIVERS


@dataclass(frozen=True)
class RuntimeSupport:
    runtime: Runtime
    packages: tuple[str, ...]  # installed when the runtime's daemon is missing; empty = must be present
    service: str
    binary: str
    repo: str | None = None  # the repository its packages come from, when not the distribution's own


@dataclass(frozen=True)
class CloudImage:
    cloud: Cloud
    settings: dict[str, Any]  # a value, or one per arch (strings); a few are lists, numbers, flags


@dataclass(frozen=True)
class KernelLine:
    """Kernels whose version starts with `prefix` (e.g. 6.12) have packages named their own way."""

    prefix: str
    headers: str  # package-name pattern with {kernel}
    extra: tuple[str, ...]


@dataclass(frozen=True)
class Distro:
    """A fully resolved, non-abstract distribution descriptor."""

    id: str
    name: str
    source_file: str
    family: Family
    os_id: str
    version_id: str
    codename: str
    arches: tuple[Arch, ...]
    kernel_headers: str  # package-name pattern with {kernel}
    kernel_headers_meta: str | None  # package-name pattern with {flavour} (apt), or None
    kernel_extra: tuple[str, ...]
    kernel_lines: tuple[KernelLine, ...]
    base_packages: tuple[str, ...]
    driver_sources: dict[str, DriverSource]
    default_driver_source: str
    repos: dict[str, RepoSpec]
    retired_keys: tuple[str, ...]  # full fingerprints removed from trust where present
    toolkit_repo: str
    toolkit_packages: tuple[str, ...]
    runtimes: dict[Runtime, RuntimeSupport]
    initramfs_update: str
    ssh_user: str
    clouds: dict[Cloud, CloudImage]
    capabilities: frozenset[str]
    vars: dict[str, str]

    def has(self, capability: str) -> bool:
        return capability in self.capabilities


def release_placeholders(version_id: str, codename: str) -> dict[str, str]:
    """The placeholders a release fills in by itself: {version_id}, {codename}, {version_nodot} (22.04 -> 2204)."""
    return {"version_id": version_id, "codename": codename, "version_nodot": version_id.replace(".", "")}
