"""The stubs called most often (several times a run): package queries, uname, sleep. Only cheap imports here.

rpm -q NAME on a package that is not installed prints "package NAME is not installed" on STDOUT and exits 1;
NAME may be a name or N-V-R(.A); `rpm -q gpg-pubkey` lists imported keys as gpg-pubkey-ID8-CREATED8.
dpkg-query -W on a package dpkg never saw: "dpkg-query: no packages found matching NAME" on stderr, exit 1.
"""

from __future__ import annotations

import fnmatch

import pkgs
from core import Ctx, Fail, err, out, split_options

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~10 ms an import; stubs start on every call
    from typing import Any


def nvr(pkg: dict[str, Any]) -> tuple[str, str]:
    version, _, release = str(pkg["version"]).rpartition("-")
    return version, release


def forms(pkg: dict[str, Any]) -> list[str]:
    """The names dnf and rpm accept for a package: N, N-V, N-V-R, N-V-R.A, with and without the epoch."""
    name = pkg["name"]
    version, release = nvr(pkg)
    arch = pkg.get("arch", "x86_64")
    forms = [name, f"{name}-{version}", f"{name}-{version}-{release}", f"{name}-{version}-{release}.{arch}"]
    if pkg.get("epoch"):
        epoch = pkg["epoch"]
        forms += [
            f"{name}-{epoch}:{version}",
            f"{name}-{epoch}:{version}-{release}",
            f"{name}-{epoch}:{version}-{release}.{arch}",
        ]
    return forms


def installed_pkgs(ctx: Ctx) -> list[dict[str, Any]]:
    return [{"name": n, **r} for n, r in pkgs.installed(ctx).items()]


def _format(fmt: str, name: str, version: str, release: str, epoch: str, arch: str) -> str:
    if not fmt:
        return f"{name}-{version}-{release}.{arch}\n" if arch else f"{name}-{version}-{release}\n"
    text = fmt.replace("%{NAME}", name).replace("%{VERSION}", version).replace("%{RELEASE}", release)
    text = text.replace("%{EPOCH}", epoch or "(none)").replace("%{ARCH}", arch)
    return text.replace("\\n", "\n").replace("\\t", "\t")


def query(ctx: Ctx, names: list[str], fmt: str) -> int:
    rc = 0
    for name in names:
        if name == "gpg-pubkey":
            keys = ctx.state.get("rpm_keys", {})
            if not keys:
                out("package gpg-pubkey is not installed")
                rc = 1
            for fpr, created in sorted(keys.items()):
                out(_format(fmt, "gpg-pubkey", fpr[-8:].lower(), f"{created:08x}", "", "").rstrip("\n"))
            continue
        if name.startswith("gpg-pubkey-"):
            texts = [
                text
                for fpr, text in ctx.state.get("rpm_key_text", {}).items()
                if name == f"gpg-pubkey-{fpr[-8:].lower()}-{ctx.state['rpm_keys'].get(fpr, 0):08x}"
            ]
            if not texts:
                out(f"package {name} is not installed")
                rc = 1
            elif fmt == "%{DESCRIPTION}":
                out(texts[0].rstrip("\n"))
            else:
                raise Fail(1, f"rpm stub: does not model --qf {fmt!r} for keys")
            continue
        found = [p for p in installed_pkgs(ctx) if name in forms(p)]
        if not found:
            out(f"package {name} is not installed")
            rc = 1
            continue
        for pkg in found:
            version, release = nvr(pkg)
            sys_text = _format(fmt, pkg["name"], version, release, str(pkg.get("epoch", "")), pkg.get("arch", "x86_64"))
            out(sys_text.rstrip("\n") if sys_text.endswith("\n") else sys_text)
    return rc


def _owner(ctx: Ctx, path: str) -> str | None:
    """The stub package that installed `path` (the owned-file record of pkgs.install), or None."""
    owner = ctx.state.get("owned", {}).get(path)
    return owner.removeprefix("pkg:") if owner and owner.startswith("pkg:") else None


def dpkg(ctx: Ctx) -> int:
    if ctx.args[:1] != ["-S"] or len(ctx.args) != 2:
        raise Fail(2, f"dpkg stub: models only -S PATH, not {ctx.args}")
    owner = _owner(ctx, ctx.args[1])
    if owner is None:
        raise Fail(1, f"dpkg-query: no path found matching pattern {ctx.args[1]}")
    out(f"{owner}: {ctx.args[1]}")
    return 0


def rpm_owner(ctx: Ctx) -> int:
    path = ctx.args[1] if len(ctx.args) == 2 else ""
    owner = _owner(ctx, path)
    if owner is None:
        out(f"file {path} is not owned by any package")
        return 1
    out(owner)
    return 0


def dpkg_query(ctx: Ctx) -> int:
    opts, names = split_options(ctx.args, {"-f", "--showformat"})
    fmt = (opts.get("-f") or opts.get("--showformat") or ["${Package}\t${Version}\n"])[-1]
    if "-W" not in opts and "--show" not in opts:
        raise Fail(2, "dpkg-query: the stub models only -W/--show")
    rc = 0
    wanted: list[str] = []
    for name in names or sorted(pkgs.installed(ctx)):  # no name: every package dpkg knows
        if any(c in name for c in "*?["):  # a pattern: the packages dpkg knows that match it
            matched = sorted(n for n in pkgs.installed(ctx) if fnmatch.fnmatchcase(n, name))
            wanted += matched or [name]
        else:
            wanted.append(name)
    for name in wanted:
        have = pkgs.installed_version(ctx, name)
        if have is None:
            err(f"dpkg-query: no packages found matching {name}")
            rc = 1
            continue
        text = (
            fmt.replace("${db:Status-Status}", "installed")
            .replace("${Version}", have)
            .replace("${Package}", name)
            .replace("\\n", "\n")
            .replace("\\t", "\t")
        )
        out(text.rstrip("\n"))
    return rc


def uname(ctx: Ctx) -> int:
    opts, _ = split_options(ctx.args, set())
    fields = {"-s": "Linux", "-n": "trace", "-r": str(ctx.world["running_kernel"]), "-m": str(ctx.world["arch"])}
    if "-a" in opts:
        out(f"Linux trace {fields['-r']} #1 SMP {fields['-m']} GNU/Linux")
        return 0
    wanted = [fields[o] for o in ("-s", "-n", "-r", "-m") if o in opts] or ["Linux"]
    out(" ".join(wanted))
    return 0


def sleep(ctx: Ctx) -> int:
    """The script's retry back-off: recorded, not waited for."""
    return 0


def rpm_query(ctx: Ctx) -> int:
    opts, words = split_options(ctx.args, {"--qf", "--queryformat"})
    fmt = (opts.get("--qf") or opts.get("--queryformat") or [""])[-1]
    return query(ctx, words, fmt)
