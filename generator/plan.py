"""Options a user chose, checked, and the concrete plan they make with a distribution and an arch."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .errors import UsageError
from .model import (
    Arch,
    Cloud,
    Distro,
    DriverSource,
    DriverSourceKind,
    KernelModules,
    Repo,
    RepoSpec,
    Runtime,
    release_placeholders,
)

# NVIDIA Container Toolkit releases below this have CVE-2025-23266 (and the older CVE-2024-0132/0133).
TOOLKIT_FLOOR = (1, 17, 8)
# From this branch on, NVIDIA's open kernel modules are the default (and Blackwell needs them).
OPEN_MODULES_FROM_BRANCH = 560
DEFAULT_CONTAINER_IMAGE = "nvidia/cuda:12.9.1-base-ubuntu24.04"
# packer-plugin-azure#287/#366/#367 ("Creating an image with sourceVirtualMachine source that has CPU Architecture
# 'Arm64' is not supported"); packer audit P3.
AZURE_NO_ARM64 = (
    "Azure cannot capture an Arm64 VM as a managed image (only into an Azure Compute Gallery, "
    "which bakegen does not build yet)"
)
CAPABILITIES = ("all", "compute", "utility", "graphics", "video", "display", "compat32")

_BRANCH_RE = re.compile(r"^[0-9]{3}$")
_DRIVER_VERSION_RE = re.compile(r"^([0-9]{3})\.[0-9]{1,3}(\.[0-9]{1,3})?$")
_TOOLKIT_VERSION_RE = re.compile(r"^([0-9]+)\.([0-9]+)\.([0-9]+)(-[0-9A-Za-z.~]+)?$")
_FINGERPRINT_RE = re.compile(r"^[0-9A-F]{40}$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_URL_PATH_RE = re.compile(r"^[A-Za-z0-9._~/%-]*$")
_CONTROL_OR_SPACE_RE = re.compile(r"[\x00-\x20\x7f]")
_URL_QUERY_RE = re.compile(r"^[A-Za-z0-9._~%=&+/:@,;*-]*$")
_HOST_RE = re.compile(r"^[A-Za-z0-9.-]+$|^\[[0-9A-Fa-f:.]+\]$")
# A container image reference: [registry[:port]/]path[:tag][@digest]; no spaces, quotes or shell characters.
_IMAGE_RE = re.compile(
    r"^(?:[a-z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)
_GPUS_RE = re.compile(
    r"^(all|[1-9][0-9]?|(device=)?[0-9]+(,[0-9]+)*|(device=)?GPU-[0-9a-f-]{36}(,GPU-[0-9a-f-]{36})*)$"
)


@dataclass(frozen=True)
class CheckOptions:
    """The first-boot GPU check's settings (written to /etc/bakegen/gpu-check.json on the target)."""

    container_test: bool = True
    container_image: str = DEFAULT_CONTAINER_IMAGE
    gpus: str = "all"
    capabilities: str = "compute,utility"
    expected_gpus: int = 0
    require_gpu: bool = False


@dataclass(frozen=True)
class Options:
    """What the user asked for, before it meets a distribution. None means the descriptor's default."""

    arch: Arch = Arch.X86_64
    install_driver: bool = True
    driver_source: str | None = None
    driver_branch: str | None = None
    driver_version: str | None = None
    kernel_modules: KernelModules | None = None
    toolkit_version: str | None = None  # None = the newest the repository offers
    runtimes: tuple[Runtime, ...] = (Runtime.DOCKER,)
    cdi: bool = False
    mirrors: dict[str, str] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    check: CheckOptions = field(default_factory=CheckOptions)
    clouds: tuple[Cloud, ...] | None = None  # Packer sources; None = every cloud the descriptor has images for
    fabric_manager: str = "auto"  # auto: installed, started where NVSwitches are; on: started everywhere; off
    user_data_cloud: str = "generic"  # the cloud the cloud-init user-data is written for (its size limit, gzip)
    script_url: str | None = None  # cloud-init: the bootstrap form, which downloads the install script from here


@dataclass(frozen=True)
class DriverPlan:
    source: DriverSource
    branch: str
    version: str | None
    kernel_modules: KernelModules
    packages: tuple[str, ...]
    module_stream: str | None
    repos: tuple[Repo, ...]
    fabric_manager: str | None = None  # the package, when --fabric-manager is auto or on and the source has one


@dataclass(frozen=True)
class Plan:
    """Everything a template needs, concrete: no placeholder, no default left to decide."""

    distro: Distro
    options: Options
    arch: Arch
    driver: DriverPlan | None
    toolkit_repo: Repo
    toolkit_version: str | None
    runtime_repos: dict[Runtime, Repo]
    clouds: tuple[Cloud, ...]

    @property
    def repos(self) -> tuple[Repo, ...]:
        """Every repository the script may add, once each, in a stable order."""
        seen: dict[str, Repo] = {}
        for repo in (*(self.driver.repos if self.driver else ()), self.toolkit_repo, *self.runtime_repos.values()):
            seen.setdefault(repo.name, repo)
        return tuple(seen.values())


# ----- option parsing helpers (used by the CLI; each raises UsageError naming the flag) -----


FABRIC_MANAGER_MODES = ("auto", "on", "off")


def parse_branch(value: str) -> str:
    if not _BRANCH_RE.fullmatch(value):
        raise UsageError(f"--driver-branch: {value!r} is not a driver branch (e.g. 580)")
    return value


def parse_driver_version(value: str) -> str:
    if not _DRIVER_VERSION_RE.fullmatch(value):
        raise UsageError(f"--driver-version: {value!r} is not a driver version (e.g. 580.95.05)")
    return value


def parse_toolkit_version(value: str) -> str:
    match = _TOOLKIT_VERSION_RE.fullmatch(value)
    if not match:
        raise UsageError(f"--toolkit-version: {value!r} is not a toolkit version (e.g. 1.18.1)")
    numbers = tuple(int(match.group(i)) for i in (1, 2, 3))
    if numbers < TOOLKIT_FLOOR:
        floor = ".".join(str(n) for n in TOOLKIT_FLOOR)
        raise UsageError(
            f"--toolkit-version: {value} is below {floor}, the first release without CVE-2025-23266",
            hint=f"use {floor} or newer",
        )
    return value


def parse_fingerprint(flag: str, value: str) -> str:
    cleaned = value.replace(" ", "").upper()
    if not _FINGERPRINT_RE.fullmatch(cleaned):
        raise UsageError(f"{flag}: {value!r} is not a full 40-hex-digit key fingerprint")
    return cleaned


def parse_https_url(flag: str, value: str, query: bool = False) -> str:
    """An https URL with nothing in it that could escape quoting anywhere (no spaces, quotes, $, `).

    `query`: a query is allowed too (a presigned or SAS-token URL of an object store), of URL-safe characters.
    """
    if _CONTROL_OR_SPACE_RE.search(value):  # urlsplit would silently drop tab, CR and LF
        raise UsageError(f"{flag}: {value!r}: spaces and control characters are not allowed in a URL")
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise UsageError(f"{flag}: {value!r} is not a valid URL") from None
    if parts.scheme != "https":
        raise UsageError(f"{flag}: {value!r}: only https:// URLs are allowed")
    host = parts.hostname or ""
    if not host or not _HOST_RE.fullmatch(parts.netloc.rsplit(":", 1)[0] if port else parts.netloc):
        raise UsageError(f"{flag}: {value!r} has no valid host")
    plain_query = query and _URL_QUERY_RE.fullmatch(parts.query)
    if (
        parts.username
        or parts.password
        or (parts.query and not plain_query)
        or parts.fragment
        or not _URL_PATH_RE.fullmatch(parts.path)
    ):
        allowed = "scheme, host, port, a plain path and a query" if query else "scheme, host, port and a plain path"
        raise UsageError(f"{flag}: {value!r}: only {allowed} are allowed")
    return value if query else value.rstrip("/")


def parse_script_url(value: str) -> str:
    """--script-url: where the install script is published; an https URL of a file (a query is allowed)."""
    url = parse_https_url("--script-url", value, query=True)
    path = urlsplit(url).path
    if not path.strip("/") or path.endswith("/"):
        raise UsageError(f"--script-url: {value!r} names a folder: give the URL of the published install.sh")
    return url


def parse_name_value(flag: str, value: str) -> tuple[str, str]:
    name, sep, rest = value.partition("=")
    if not sep or not _NAME_RE.fullmatch(name) or not rest:
        raise UsageError(f"{flag}: {value!r} is not NAME=VALUE (e.g. {flag} nvidia-container-toolkit=...)")
    return name, rest


def parse_container_image(value: str) -> str:
    if not _IMAGE_RE.fullmatch(value):
        raise UsageError(f"--container-image: {value!r} is not a container image reference")
    return value


def parse_gpus(value: str) -> str:
    """`all`, a count, or GPU indexes/UUIDs (`0,1`, `device=0,1`) as the tutorial's `docker run --gpus` takes."""
    if not _GPUS_RE.fullmatch(value):
        raise UsageError(f"--gpus: {value!r} is not 'all', a count, or device indexes such as 0,1")
    if value == "all" or value.isdigit():
        return value
    devices = value.removeprefix("device=")
    return f'"device={devices}"' if "," in devices else f"device={devices}"


def parse_capabilities(value: str) -> str:
    items = value.split(",")
    unknown = [c for c in items if c not in CAPABILITIES]
    if unknown or not value:
        raise UsageError(
            f"--capabilities: {value!r} is not a comma list of {', '.join(CAPABILITIES)}",
        )
    return value


# ----- the plan -----


def _fill(text: str, values: dict[str, str]) -> str:
    return text.format_map(values)


def placeholder_values(distro: Distro, arch: Arch, branch: str = "") -> dict[str, str]:
    """The built-in placeholders, and a descriptor's `vars:` filled with them (`cuda_repo: "rhel{version_id}"`)."""
    builtin = {
        "arch": arch.value,
        "deb_arch": arch.deb,
        "cuda_arch": arch.cuda,
        "aws_arch": {Arch.X86_64: "x86_64", Arch.AARCH64: "arm64"}[arch],
        "branch": branch,
        **release_placeholders(distro.version_id, distro.codename),
    }
    return {**{name: _fill(value, builtin) for name, value in distro.vars.items()}, **builtin}


def make_repo(spec: RepoSpec, values: dict[str, str], options: Options) -> Repo:
    base = options.mirrors.get(spec.name, spec.base)
    return Repo(
        name=spec.name,
        description=spec.description,
        url=f"{base}/{_fill(spec.path, values)}".rstrip("/"),
        key_url=f"{base}/{_fill(spec.key, values)}",
        fingerprint=options.fingerprints.get(spec.name, spec.fingerprint),
        suite=_fill(spec.suite, values),
        components=tuple(_fill(c, values) for c in spec.components),
        signs_metadata=spec.signs_metadata,
        signs_packages=spec.signs_packages,
    )


def make_plan(distro: Distro, options: Options) -> Plan:
    if options.arch not in distro.arches:
        arches = ", ".join(a.value for a in distro.arches)
        raise UsageError(f"--arch: {distro.id} is not available for {options.arch.value} (available: {arches})")
    for flag, names in (("--mirror", options.mirrors), ("--key-fingerprint", options.fingerprints)):
        for name in names:
            if name not in distro.repos:
                known = ", ".join(sorted(distro.repos))
                raise UsageError(f"{flag}: {distro.id} has no repository {name!r} (it has: {known})")
    for runtime in options.runtimes:
        if runtime not in distro.runtimes:
            raise UsageError(f"--runtime: {distro.id} does not support {runtime.value}")
    driver = _driver_plan(distro, options) if options.install_driver else None
    values = placeholder_values(distro, options.arch)
    runtime_repos = {
        runtime: make_repo(distro.repos[support.repo], values, options)
        for runtime in options.runtimes
        if (support := distro.runtimes[runtime]).repo is not None
    }
    available = (*distro.clouds, Cloud.QEMU)  # qemu starts from a base image the user supplies
    if options.arch is Arch.AARCH64:
        if options.clouds and Cloud.AZURE in options.clouds:
            raise UsageError(f"--cloud azure: {AZURE_NO_ARM64}", hint="for aarch64 use --cloud aws, gcp or qemu")
        available = tuple(c for c in available if c is not Cloud.AZURE)
    if options.clouds is None:
        clouds = tuple(c for c in Cloud if c in available)
    else:
        missing = [c.value for c in options.clouds if c not in available]
        if missing:
            offered = ", ".join(c.value for c in Cloud if c in available)
            raise UsageError(f"--cloud: {distro.id} has no base image for {', '.join(missing)} (it has: {offered})")
        clouds = options.clouds
    return Plan(
        clouds=clouds,
        distro=distro,
        options=options,
        arch=options.arch,
        driver=driver,
        toolkit_repo=make_repo(distro.repos[distro.toolkit_repo], values, options),
        toolkit_version=options.toolkit_version,
        runtime_repos=runtime_repos,
    )


def _driver_plan(distro: Distro, options: Options) -> DriverPlan:
    name = options.driver_source or distro.default_driver_source
    if name not in distro.driver_sources:
        known = ", ".join(sorted(distro.driver_sources))
        raise UsageError(f"--driver-source: {distro.id} has no driver source {name!r} (it has: {known})")
    source = distro.driver_sources[name]
    if source.arches and options.arch not in source.arches:
        usable = [s for s, src in sorted(distro.driver_sources.items()) if not src.arches or options.arch in src.arches]
        raise UsageError(
            f"--arch: {distro.id}'s {name} driver source has no {options.arch.value} packages "
            f"(only {', '.join(a.value for a in source.arches)})",
            hint=f"sources for {options.arch.value}: {', '.join(usable)}" if usable else "use --no-driver",
        )
    version = options.driver_version
    branch = options.driver_branch or (version.split(".")[0] if version else source.default_branch)
    if version and not version.startswith(f"{branch}."):
        raise UsageError(f"--driver-version: {version} is not on branch {branch}")
    if source.branches and branch not in source.branches:
        offered = ", ".join(source.branches)
        others = ", ".join(s for s in sorted(distro.driver_sources) if s != name) or "none"
        raise UsageError(
            f"--driver-branch: {distro.id}'s {name} source provides branch {offered} only, not {branch}",
            hint=f"other sources: {others}",
        )
    if version and source.kind is DriverSourceKind.UBUNTU_DRIVERS:
        raise UsageError("--driver-version: the ubuntu-drivers source installs a branch, not an exact version")
    modules = options.kernel_modules or (
        KernelModules.OPEN if int(branch) >= OPEN_MODULES_FROM_BRANCH else KernelModules.PROPRIETARY
    )
    if modules not in source.packages:
        fallback = [m for m in source.kernel_modules]
        if options.kernel_modules is None and fallback:
            modules = fallback[0]
        else:
            raise UsageError(f"--kernel-modules: {distro.id}'s {name} source has no {modules.value} kernel modules")
    values = placeholder_values(distro, options.arch, branch)
    stream = source.module_stream.get(modules)
    fabric_manager = _fabric_manager(distro, name, source, branch, options.fabric_manager)
    return DriverPlan(
        source=source,
        branch=branch,
        version=version,
        kernel_modules=modules,
        packages=tuple(_fill(p, values) for p in source.packages[modules]),
        module_stream=_fill(stream, values) if stream else None,
        repos=tuple(make_repo(distro.repos[r], values, options) for r in source.repos),
        fabric_manager=_fill(fabric_manager, values) if fabric_manager else None,
    )


def _fabric_manager(distro: Distro, name: str, source: DriverSource, branch: str, mode: str) -> str | None:
    """The fabric manager's package for `branch` (its name changed at 580), or None: off, or none to be had."""
    if mode == "off":
        return None
    for entry in source.fabric_manager:
        if not entry.from_branch or int(branch) >= int(entry.from_branch):
            return entry.package
    if mode == "on":
        raise UsageError(
            f"--fabric-manager on: {distro.id}'s {name} driver source has no fabric manager for branch {branch}",
            hint="see `bakegen show` for the sources, or --fabric-manager auto (none where there is none)",
        )
    return None
