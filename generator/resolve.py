"""Turn merged, schema-checked descriptors into the frozen `Distro` model, checking cross-references."""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .descriptors import DescriptorSet, MergedDescriptor, builtin_distros_dir, locate, schema_problems
from .errors import DescriptorError
from .model import (
    Arch,
    Cloud,
    CloudImage,
    Distro,
    DriverSource,
    DriverSourceKind,
    FabricManagerName,
    Family,
    KernelLine,
    KernelModules,
    RepoSpec,
    Runtime,
    RuntimeSupport,
)

# Placeholders every descriptor string may use; a descriptor's `vars:` add more.
# {branch} is filled in when a plan is made, since the branch is chosen then; the rest follow from arch.
BUILTIN_PLACEHOLDERS = frozenset(
    {"arch", "deb_arch", "cuda_arch", "aws_arch", "branch", "codename", "version_id", "version_nodot"}
)
KERNEL_PLACEHOLDER = "kernel"  # filled in by the generated script, per target kernel
FLAVOUR_PLACEHOLDER = "flavour"  # filled in by the generated script, per installed kernel flavour (headers_meta)
AWS_KERNEL_LINE_PLACEHOLDER = "kernel_line"  # filled in by Packer, from the aws_kernel_line variable
# Characters no descriptor string may hold: controls (a newline too), and what some readers take for a line break
# (U+0085, U+2028, U+2029): one reaching a script or user-data could start a line of its own there.
_UNPRINTABLE_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def descriptor_set(user_dir: Path | None = None) -> DescriptorSet:
    dirs = [user_dir] if user_dir is not None else []
    return DescriptorSet([*dirs, builtin_distros_dir()])


def load_distro(descriptors: DescriptorSet, distro_id: str) -> Distro:
    merged = descriptors.merged(distro_id)
    problems = schema_problems(merged)
    if problems:
        raise DescriptorError(problems)
    problems = _reference_problems(merged)
    if problems:
        raise DescriptorError(problems)
    return _build(merged)


def load_all(descriptors: DescriptorSet) -> list[Distro]:
    """Every non-abstract descriptor, with the problems of all of them reported together."""
    distros: list[Distro] = []
    problems: list[str] = []
    for distro_id in descriptors.ids():
        try:
            merged = descriptors.merged(distro_id)
            if merged.abstract:
                continue
            found = schema_problems(merged) or _reference_problems(merged)
            if found:
                problems.extend(found)
            else:
                distros.append(_build(merged))
        except DescriptorError as exc:
            problems.extend(exc.problems)
    if problems:
        raise DescriptorError(problems)
    return distros


def _placeholders(text: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}


def _strings(data: Any, path: tuple[str, ...] = ()) -> Iterable[tuple[tuple[str, ...], str]]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _strings(value, (*path, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _strings(value, (*path, str(i)))
    elif isinstance(data, str):
        yield path, data


def _reference_problems(merged: MergedDescriptor) -> list[str]:
    """What the schema cannot say: names that must refer to each other, placeholders that must exist."""
    data = merged.data
    problems: list[str] = []

    def problem(path: tuple[str, ...], message: str) -> None:
        problems.append(locate(merged, path, message))

    repos = data["repos"]
    if data["toolkit"]["repo"] not in repos:
        problem(("toolkit", "repo"), f"{data['toolkit']['repo']!r} is not one of this descriptor's repos")
    sources = data["driver"]["sources"]
    if data["driver"]["default_source"] not in sources:
        problem(("driver", "default_source"), f"{data['driver']['default_source']!r} is not a driver source here")
    for name, source in sources.items():
        where = ("driver", "sources", name)
        for i, repo in enumerate(source.get("repos", [])):
            if repo not in repos:
                problem((*where, "repos", str(i)), f"{repo!r} is not one of this descriptor's repos")
        if source["kind"] == "cuda-repo" and not source.get("repos"):
            problem((*where, "repos"), "a cuda-repo source needs `repos:` naming the repository it installs from")
        branches = source.get("branches")
        if branches and source["default_branch"] not in branches:
            problem((*where, "default_branch"), f"{source['default_branch']!r} is not among branches {branches}")
        for modules in source.get("module_stream", {}):
            if modules not in source["packages"]:
                problem((*where, "module_stream", modules), "a module stream needs packages of the same kind")
    for name, repo in repos.items():
        signs = repo.get("signs", {})
        if signs and not (signs.get("metadata") or signs.get("packages")):
            never = "a repository is verified through its metadata or its packages: never neither"
            problem(("repos", name, "signs"), never)
    for name, runtime in data["runtimes"].items():
        if runtime.get("repo") is not None and runtime["repo"] not in repos:
            problem(("runtimes", name, "repo"), f"{runtime['repo']!r} is not one of this descriptor's repos")
    aws = data.get("cloud", {}).get("aws", {})
    if "kernel_lines" in aws:
        if aws.get("kernel_line") not in aws["kernel_lines"]:
            problem(("cloud", "aws", "kernel_line"), f"{aws.get('kernel_line')!r} is not among kernel_lines")
        if "{" + AWS_KERNEL_LINE_PLACEHOLDER + "}" not in str(aws["ami_name"]):
            problem(("cloud", "aws", "ami_name"), "kernel_lines needs {kernel_line} in ami_name: one line on purpose")
    known = BUILTIN_PLACEHOLDERS | set(data.get("vars", {}))
    for path, text in _strings(data):
        if _UNPRINTABLE_RE.search(text):
            problem(path, f"{text!r}: control and line-separator characters are not allowed")
            continue
        if path == ("name",) or path[-1] == "description":
            continue  # free text, never formatted
        allowed = known | {KERNEL_PLACEHOLDER} if path[:1] == ("kernel",) else known
        if path[:1] == ("vars",):
            allowed = BUILTIN_PLACEHOLDERS  # a var is filled with the built-in placeholders, not with other vars
        if path[:2] == ("kernel", "headers_meta"):
            allowed = known | {FLAVOUR_PLACEHOLDER}
        if path[:3] == ("cloud", "aws", "ami_name") and "kernel_lines" in aws:
            allowed = allowed | {AWS_KERNEL_LINE_PLACEHOLDER}
        try:
            unknown = _placeholders(text) - allowed
        except ValueError:
            problem(path, f"{text!r} has an unbalanced {{ or }}")
            continue
        for name in sorted(unknown):
            problem(path, f"unknown placeholder {{{name}}} (known: {', '.join(sorted(allowed))})")
    return problems


def _modules_map(raw: dict[str, Any]) -> dict[KernelModules, Any]:
    return {KernelModules(k): v for k, v in raw.items()}


def _build(merged: MergedDescriptor) -> Distro:
    data = merged.data
    os_release = data["os_release"]
    sources = {
        name: DriverSource(
            name=name,
            kind=DriverSourceKind(raw["kind"]),
            description=raw["description"],
            branches=tuple(raw.get("branches", ())),
            default_branch=raw["default_branch"],
            kernel_modules=tuple(KernelModules(k) for k in raw["packages"]),
            packages={k: tuple(v) for k, v in _modules_map(raw["packages"]).items()},
            pin_packages=tuple(raw["pin"]),
            repos=tuple(raw.get("repos", ())),
            apt_components=tuple(raw.get("apt_components", ())),
            module_stream=_modules_map(raw.get("module_stream", {})),
            dkms=raw.get("dkms", True),
            arches=tuple(Arch(a) for a in raw.get("arches", ())),
            fabric_manager=tuple(
                FabricManagerName(f["package"], f.get("from_branch", "")) for f in raw.get("fabric_manager", ())
            ),
        )
        for name, raw in data["driver"]["sources"].items()
    }
    repos = {
        name: RepoSpec(
            name=name,
            description=raw.get("description", name),
            base=raw["base"].rstrip("/"),
            path=raw["path"].strip("/"),
            key=raw["key"].strip("/"),
            fingerprint=raw["fingerprint"],
            suite=raw.get("suite", "/"),
            components=tuple(raw.get("components", ())),
            signs_metadata=raw.get("signs", {}).get("metadata", True),
            signs_packages=raw.get("signs", {}).get("packages", True),
        )
        for name, raw in data["repos"].items()
    }
    runtimes = {
        Runtime(name): RuntimeSupport(
            Runtime(name), tuple(raw["packages"]), raw["service"], raw["binary"], raw.get("repo")
        )
        for name, raw in data["runtimes"].items()
    }
    cloud = data["cloud"]
    clouds = {Cloud(name): CloudImage(Cloud(name), dict(raw)) for name, raw in cloud.items() if name != "ssh_user"}
    return Distro(
        id=merged.id,
        name=data["name"],
        source_file=merged.display,
        family=Family(data["family"]),
        os_id=os_release["id"],
        version_id=os_release["version_id"],
        codename=os_release.get("codename", ""),
        arches=tuple(Arch(a) for a in data["arches"]),
        kernel_headers=data["kernel"]["headers"],
        kernel_headers_meta=data["kernel"].get("headers_meta"),
        kernel_extra=tuple(data["kernel"].get("extra", ())),
        kernel_lines=tuple(
            KernelLine(prefix, raw["headers"], tuple(raw.get("extra", ())))
            for prefix, raw in sorted(data["kernel"].get("lines", {}).items())
        ),
        base_packages=tuple(data["base_packages"]),
        driver_sources=sources,
        default_driver_source=data["driver"]["default_source"],
        repos=repos,
        retired_keys=tuple(data.get("retired_keys", ())),
        toolkit_repo=data["toolkit"]["repo"],
        toolkit_packages=tuple(data["toolkit"]["packages"]),
        runtimes=runtimes,
        initramfs_update=data["kernel"]["initramfs_update"],
        ssh_user=cloud["ssh_user"],
        clouds=clouds,
        capabilities=frozenset(data.get("capabilities", ())),
        vars=dict(data.get("vars", {})),
    )


_SUGGEST_RE = re.compile(r"[^a-z0-9]")


def suggest(name: str, choices: Iterable[str]) -> str | None:
    """The closest known name, for 'did you mean' hints."""
    import difflib

    choices = list(choices)
    matches = difflib.get_close_matches(name.lower(), choices, n=1, cutoff=0.6)
    if matches:
        return matches[0]
    squashed = _SUGGEST_RE.sub("", name.lower())
    for choice in choices:
        if _SUGGEST_RE.sub("", choice) == squashed:
            return choice
    return None
