"""Small helpers tests share: render bakegen's outputs in-process, run the CLI as a user would."""

from __future__ import annotations

import copy
import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from generator.descriptors import MergedDescriptor
from generator.model import Arch, Distro, Format
from generator.plan import Options, make_plan
from generator.render import RenderedFile, render
from generator.resolve import _build, descriptor_set, load_all, load_distro

REPO = Path(__file__).resolve().parents[1]


def all_distro_ids() -> list[str]:
    return [d.id for d in load_all(descriptor_set())]


# The vendor errors of ../shared/notes/vendor-audit.md, each as the descriptor change that puts it back (for
# descriptor_with): the evidence walk and the trace harness must each name every one.
# NVIDIA's Container Toolkit as its packaging names it (packaging/debian, packaging/rpm of v1.18.1): the packages
# every test expects the generated provisioning to install and hold together.
TOOLKIT_PACKAGES = (
    "nvidia-container-toolkit",
    "nvidia-container-toolkit-base",
    "libnvidia-container-tools",
    "libnvidia-container1",
)

AUDITED_ERRORS: dict[str, tuple[str, tuple[tuple[str, Any], ...]]] = {
    # A1: EPEL added as if it signed its metadata (repo_gpgcheck=1): it publishes no repomd.xml.asc.
    "A1": ("rhel9", (("repos.epel.signs", {"metadata": True, "packages": True}),)),
    # A2: fedora43 with the rpm family's key file, which its folder does not publish (only 1940C73E.pub).
    "A2": ("fedora43", (("repos.cuda.key", "{cuda_repo}/{cuda_arch}/D42D0685.pub"),)),
    # A2, aarch64: fedora43/sbsa carries no driver packages.
    "A2-aarch64": ("fedora43", (("arches", ["x86_64", "aarch64"]),)),
    # A3: focal at branch 580, which Canonical publishes for jammy and later only.
    "A3": (
        "ubuntu20.04",
        (("driver.sources.ubuntu-drivers.branches", None), ("driver.sources.ubuntu-drivers.default_branch", "580")),
    ),
    # A5: AL2023 without its kernel lines: kernel 6.12 images asked for kernel-devel-<6.12 release>.
    "A5": ("amzn2023", (("kernel.lines", None),)),
    # A7: debian13 + cuda-repo on aarch64: NVIDIA publishes no debian13/sbsa repository.
    "A7": ("debian13", (("driver.sources.cuda-repo.arches", None),)),
}


def descriptor_with(distro_id: str, *changes: tuple[str, Any]) -> Distro:
    """The distribution with each dotted path of its merged descriptor set to a value (None removes the key):
    a vendor error put back to show that a test names it."""
    merged = descriptor_set().merged(distro_id)
    data = copy.deepcopy(merged.data)
    for path, value in changes:
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return _build(MergedDescriptor(merged.id, merged.display, data, merged.lines, merged.chain))


def matrix() -> list[tuple[str, str]]:
    """(distro id, arch) for every descriptor on disk and every arch it declares."""
    return [(d.id, a.value) for d in load_all(descriptor_set()) for a in d.arches]


def render_files(distro_id: str, fmt: Format = Format.SHELL, **options: Any) -> list[RenderedFile]:
    """Render one distribution in-process; keyword arguments override Options fields (arch as a string too)."""
    if isinstance(options.get("arch"), str):
        options["arch"] = Arch(options["arch"])
    plan = make_plan(load_distro(descriptor_set(), distro_id), dataclasses.replace(Options(), **options))
    return render(plan, fmt)


def render_packer_file(distro_id: str, name: str, **options: Any) -> str:
    """One file of the distribution's Packer folder (e.g. sources.pkr.hcl), rendered in-process."""
    (file,) = [f for f in render_files(distro_id, Format.PACKER, **options) if f.path.name == name]
    return file.text


def render_script(distro_id: str, **options: Any) -> str:
    (script,) = render_files(distro_id, Format.SHELL, **options)
    return script.text


def run_cli(*args: str, cwd: Path | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
    """`bakegen ARGS` in a subprocess, exactly as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "generator", *args],
        cwd=cwd or REPO,
        env=env,
        text=True,
        capture_output=True,
        check=check,
        timeout=120,
    )


def script_functions(distro: str, folder: Path, **options: Any) -> Path:
    """The generated script of `distro` without its last line (`main "$@"`): sourcing it defines the functions."""
    script = render_script(distro, **options)
    body, last = script.rstrip("\n").rsplit("\n", 1)
    assert last == 'main "$@"'
    path = folder / f"{distro}-functions.sh"
    path.write_text(body + "\n")
    return path


def canonical_key(functions: Path, key: Path, fingerprint: str, armor: int, out: Path) -> tuple[int, str]:
    """Run the script's canonical_key; its status and the reason it gives."""
    driver = (
        f'set -euo pipefail; source "$1"; TMP_DIR=$(mktemp -d); trap \'rm -rf "$TMP_DIR"\' EXIT; '
        f'rc=0; canonical_key "$2" "$3" {armor} "$4" || rc=$?; printf "%s" "$KEY_PROBLEM"; exit "$rc"'
    )
    result = subprocess.run(
        ["bash", "-c", driver, "canonical-key", str(functions), str(key), fingerprint, str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, result.stdout
