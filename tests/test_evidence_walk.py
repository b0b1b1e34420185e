"""The generated provisioning uses only what the vendors publish (issue 9, part 2).

Walks every distro x arch x driver source x kernel-module flavour at the source's default branch, every branch the
descriptor lists and every branch the README's examples name, and checks what the plan makes the script use
against what distros/evidence/ shows each repository offering (generator/evidence.py: Offer): every repository
exists for that distribution and arch, its key file is the one its folder publishes, its signing settings are the
vendor's (rpm), every package and module stream is published there (at that branch), and a DKMS driver finds
`dkms` and the kernel headers of every kernel line.

The audited errors A1, A2, A3, A5 and A7 (../shared/notes/vendor-audit.md; A4 and A6 are the driver-lifecycle
issue's) are put back into the descriptors one at a time, and the walk must name each: that is what makes this test
able to fail.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from generator.errors import UsageError
from generator.evidence import ARCHIVE, kernel_lines, offers, published, signing
from generator.model import Arch, Distro, DriverSourceKind, KernelModules, Runtime
from generator.plan import Options, Plan, make_plan
from generator.resolve import descriptor_set, load_distro
from tests.helpers import AUDITED_ERRORS, all_distro_ids, descriptor_with

ROOT = Path(__file__).resolve().parent.parent
_README_BRANCH = re.compile(r"^bakegen (\S+) .*--driver-(?:branch|version)[ =]([0-9]{3})")
_README_SOURCE = re.compile(r"--driver-source[ =](\S+)")


def readme_branches() -> dict[tuple[str, str | None], set[str]]:
    """The branches the README's example commands name, by distribution and driver source (None: the default)."""
    found: dict[tuple[str, str | None], set[str]] = {}
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if match := _README_BRANCH.match(line.strip()):
            source = _README_SOURCE.search(line)
            found.setdefault((match.group(1), source.group(1) if source else None), set()).add(match.group(2))
    return found


def combinations(distro: Distro) -> Iterator[tuple[Arch, str, KernelModules, str]]:
    named = readme_branches()
    for arch in distro.arches:
        for name, source in sorted(distro.driver_sources.items()):
            if source.arches and arch not in source.arches:
                continue
            default = name == distro.default_driver_source
            readme = named.get((distro.id, name), set()) | (named.get((distro.id, None), set()) if default else set())
            for modules in source.packages:
                for branch in sorted({source.default_branch, *source.branches, *readme}):
                    yield arch, name, modules, branch


def _plan(distro: Distro, arch: Arch, source: str, modules: KernelModules, branch: str) -> Plan | None:
    runtimes = tuple(r for r in (Runtime.DOCKER, Runtime.CONTAINERD) if r in distro.runtimes)
    options = Options(arch=arch, driver_source=source, kernel_modules=modules, driver_branch=branch, runtimes=runtimes)
    try:
        return make_plan(distro, options)
    except UsageError:
        return None  # refused at generation time: nothing is generated for it


def walk_problems(distro: Distro, plan: Plan) -> list[str]:
    """What `plan` uses that no evidence shows its repository offering."""
    arch = plan.arch.value
    where = f"{distro.id}/{arch}"
    problems: list[str] = []

    def offered(repos: list[str], field: str, name: str, branch: str | None = None, kernel: str | None = None) -> bool:
        return any(name in published(distro.id, arch, repo, field, branch, kernel) for repo in repos)

    for repo in plan.repos:
        found = offers(distro.id, arch, repo.name)
        if not found:
            problems.append(f"{where}: no evidence that repository {repo.name} exists for it ({repo.url})")
            continue
        key_file = repo.key_url.rsplit("/", 1)[1]
        key_files = published(distro.id, arch, repo.name, "keys")
        if key_file not in key_files:
            problems.append(
                f"{where}: {repo.name} key {key_file} is not what its folder publishes "
                f"({', '.join(sorted(key_files)) or 'no key file shown'})"
            )
        if plan.distro.family.value != "apt":
            signs = signing(distro.id, arch, repo.name)
            for aspect, used in (("metadata", repo.signs_metadata), ("packages", repo.signs_packages)):
                if aspect not in signs:
                    problems.append(f"{where}: no evidence whether {repo.name} signs its {aspect}")
                elif signs[aspect] != used:
                    problems.append(
                        f"{where}: {repo.name} is checked for signed {aspect}={used}, "
                        f"the vendor signs {aspect}={signs[aspect]}"
                    )
            if not (repo.signs_metadata or repo.signs_packages):
                problems.append(f"{where}: {repo.name} is verified neither through metadata nor packages")

    driver = plan.driver
    if driver is not None:
        source = driver.source
        homes = [*source.repos] if source.repos else [ARCHIVE]
        tag = f"{where} {source.name} {driver.kernel_modules.value} {driver.branch}"
        names = list(driver.packages)
        if source.kind is DriverSourceKind.UBUNTU_DRIVERS:
            # pm/apt.sh.j2: the modules metapackage of each kernel flavour, and the modules of each kernel
            flavour = f"{driver.branch}-server" + ("-open" if driver.kernel_modules is KernelModules.OPEN else "")
            names += [f"linux-modules-nvidia-{flavour}-{{flavour}}", f"linux-modules-nvidia-{flavour}-{{kernel}}"]
        for name in names:
            if not offered(
                [*homes, ARCHIVE] if source.kind is DriverSourceKind.UBUNTU_DRIVERS else homes,
                "packages",
                name,
                driver.branch,
            ):
                problems.append(f"{tag}: package {name} is not published in {', '.join(homes)}")
        if driver.module_stream and not offered(homes, "streams", driver.module_stream, driver.branch):
            problems.append(f"{tag}: module stream {driver.module_stream} is not published in {', '.join(homes)}")
        if source.dkms:
            if not offered([*homes, ARCHIVE], "packages", "dkms"):
                problems.append(f"{tag}: DKMS driver, but no repository it uses publishes dkms")
            # Each kernel line the evidence names (or one line, where it names none) with the packages the
            # script asks that line's kernels for (install.sh.j2: kernel_package_patterns).
            lines_named: list[str | None] = [*kernel_lines(distro.id, arch)] or [None]
            for kernel in lines_named:
                line = next((x for x in distro.kernel_lines if kernel and kernel.startswith(x.prefix)), None)
                patterns = [line.headers, *line.extra] if line else [distro.kernel_headers, *distro.kernel_extra]
                for pattern in patterns:
                    if not offered([ARCHIVE], "packages", pattern, kernel=kernel):
                        on = f" on kernel {kernel}" if kernel else ""
                        problems.append(f"{where}: kernel package {pattern}{on} is not published in its archive")

    for package in plan.distro.toolkit_packages:
        if not offered([plan.toolkit_repo.name], "packages", package):
            problems.append(f"{where}: toolkit package {package} is not published in {plan.toolkit_repo.name}")
    for runtime in plan.options.runtimes:
        support = distro.runtimes[runtime]
        home = support.repo or ARCHIVE
        for package in support.packages:
            if not offered([home], "packages", package):
                problems.append(f"{where}: {runtime.value} package {package} is not published in {home}")
    return sorted(set(problems))


def distro_problems(distro: Distro) -> list[str]:
    problems: list[str] = []
    for arch, source, modules, branch in combinations(distro):
        plan = _plan(distro, arch, source, modules, branch)
        if plan is not None:
            problems += walk_problems(distro, plan)
    return sorted(set(problems))


@pytest.mark.parametrize("distro_id", all_distro_ids())
def test_every_combination_uses_only_published_things(distro_id: str) -> None:
    distro = load_distro(descriptor_set(), distro_id)
    walked = [c for c in combinations(distro) if _plan(distro, *c) is not None]
    assert walked, f"{distro_id}: no combination generates"
    assert distro_problems(distro) == []


def test_the_readme_examples_branches_are_walked() -> None:
    assert readme_branches(), "the README's examples name no --driver-branch/--driver-version: the walk parses them"


# ----- the audited errors, put back one at a time: the walk must name each -----


# What the walk says for each audited error (tests/helpers.py: AUDITED_ERRORS).
AUDITED = {
    "A1": "epel is checked for signed metadata=True, the vendor signs metadata=False",
    "A2": "cuda key D42D0685.pub is not what its folder publishes (1940C73E.pub)",
    "A2-aarch64": "fedora43/aarch64 cuda-repo open 580: package nvidia-open is not published in cuda",
    "A3": "package nvidia-headless-no-dkms-580-server-open is not published in archive",
    "A5": "amzn2023/x86_64: kernel package kernel-devel-{kernel} on kernel 6.12 is not published in its archive",
    "A7": "debian13/aarch64: no evidence that repository cuda exists for it",
}


@pytest.mark.parametrize("name", sorted(AUDITED))
def test_the_walk_names_each_audited_error(name: str) -> None:
    (distro_id, changes), expected = AUDITED_ERRORS[name], AUDITED[name]
    assert distro_problems(load_distro(descriptor_set(), distro_id)) == [], "the fixed descriptor must walk clean"
    broken = descriptor_with(distro_id, *changes)
    problems = distro_problems(broken)
    assert any(expected in p for p in problems), f"{name}: the walk did not name it: {problems}"


def test_the_walk_is_shown_every_audited_error() -> None:
    assert sorted(AUDITED) == sorted(AUDITED_ERRORS)
