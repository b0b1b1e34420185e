"""Installing and removing packages of the world, whatever package manager asks: the files they bring.

A world package (see core.py) may carry:
  bins      commands it installs: /usr/bin/NAME, a link to the stub entry (so `have nvidia-ctk` tells the truth)
  units     systemd unit files under /usr/lib/systemd/system
  headers   a kernel version: a build tree /usr/src/NAME and /lib/modules/KERNEL/build (what DKMS needs)
  dkms      a DKMS module version (nvidia): its source under /usr/src; built at install for the RUNNING kernel
            when that kernel's headers are present, as the packages' postinst does
  kmod      a precompiled module {"kernel", "path", "version"} under /lib/modules/KERNEL
  requires  names installed with it; conflicts: names that must not be installed
"""

from __future__ import annotations

import os

from core import STUB_ENTRY, Ctx, link_owned, remove_owned, write_owned

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~10 ms an import; stubs start on every call
    from typing import Any

UNIT_DIR = "/usr/lib/systemd/system"


def installed(ctx: Ctx) -> dict[str, dict[str, Any]]:
    packages: dict[str, dict[str, Any]] = ctx.state.setdefault("installed", {})
    return packages


def installed_version(ctx: Ctx, name: str) -> str | None:
    rec = installed(ctx).get(name)
    return None if rec is None else str(rec["version"])


def install(ctx: Ctx, pkg: dict[str, Any]) -> None:
    name = pkg["name"]
    remove(ctx, name)
    installed(ctx)[name] = {k: pkg[k] for k in ("version", "epoch", "repo", "arch") if k in pkg}
    owner = f"pkg:{name}"
    for binary in pkg.get("bins", []):
        link_owned(ctx, owner, f"/usr/bin/{binary}", STUB_ENTRY)
    for unit in pkg.get("units", []):
        write_owned(
            ctx,
            owner,
            f"{UNIT_DIR}/{unit}",
            f"[Unit]\nDescription={unit} (from {name})\n\n[Service]\nExecStart=/usr/bin/true\n\n"
            "[Install]\nWantedBy=multi-user.target\n",
        )
    if pkg.get("headers"):
        kernel = pkg["headers"]
        write_owned(ctx, owner, f"/usr/src/{name}/Makefile", f"# kernel build tree for {kernel}\n")
        link_owned(ctx, owner, f"/lib/modules/{kernel}/build", f"/usr/src/{name}")
    if pkg.get("dkms"):
        write_owned(
            ctx,
            owner,
            f"/usr/src/nvidia-{pkg['dkms']}/dkms.conf",
            f'PACKAGE_NAME="nvidia"\nPACKAGE_VERSION="{pkg["dkms"]}"\nAUTOINSTALL="yes"\n',
        )
        dkms_build(ctx, str(ctx.world["running_kernel"]))
    if pkg.get("kmod"):
        kmod = pkg["kmod"]
        write_owned(
            ctx,
            owner,
            f"/lib/modules/{kmod['kernel']}/{kmod['path']}",
            f"nvidia {kmod['version']} (precompiled, signed)\n",
        )


def remove(ctx: Ctx, name: str) -> None:
    if name in installed(ctx):
        remove_owned(ctx, f"pkg:{name}")
        del installed(ctx)[name]


def dkms_sources(ctx: Ctx) -> list[str]:
    """Versions of the DKMS modules installed (from any installed package that carries one)."""
    found = []
    for pkg in ctx.world["packages"]:
        rec = installed(ctx).get(pkg["name"])
        if pkg.get("dkms") and rec and rec["version"] == pkg["version"]:
            found.append(str(pkg["dkms"]))
    return sorted(set(found))


def dkms_module_dir(ctx: Ctx) -> str:
    return "updates/dkms" if ctx.family == "apt" else "extra"


def dkms_build(ctx: Ctx, kernel: str) -> bool:
    """Build every installed DKMS module for KERNEL; False when its headers are missing."""
    versions = dkms_sources(ctx)
    if not versions:
        return True
    if not os.path.exists(f"/lib/modules/{kernel}/build"):
        return False
    for version in versions:
        write_owned(
            ctx,
            f"dkms:{kernel}",
            f"/lib/modules/{kernel}/{dkms_module_dir(ctx)}/nvidia.ko",
            f"nvidia {version} built by DKMS for {kernel}\n",
        )
    return True


def by_name(packages: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [p for p in packages if p["name"] == name]
