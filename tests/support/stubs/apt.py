"""apt-get, apt-cache, apt-mark, dpkg-query and ubuntu-drivers, as far as provisioning scripts use them.

Modelled on real behaviour (checked against apt 2.6 on Debian 12 where noted):
- sources: one-line .list and deb822 .sources; Dir::Etc::sourcelist / sourceparts ("-" = none) are honoured.
- entries for one URI and suite must agree on Signed-By, or every apt command fails with
  "E: Conflicting values set for option Signed-By regarding source URI SUITE: A != B" (exit 100; apt 2.6).
- `update` fetches every source: a third-party repository's InRelease must be signed by a key in its signed-by
  keyring (NO_PUBKEY and "is not signed" otherwise, exit 100); an unreachable host is only a warning (exit 0).
- `indextargets` lists only targets already fetched, unless --no-release-info (apt 2.6).
- `install` takes the candidate by /etc/apt/preferences.d pins (Pin: version GLOB, priority 1001), else the
  newest; NAME=VERSION must exist exactly.
- dpkg-query -W on a package dpkg never saw: "no packages found matching", exit 1.
- ubuntu-drivers install --gpgpu nvidia:BRANCH-server[-open] installs, through apt-get, the
  nvidia-headless-no-dkms metapackage and the linux-modules-nvidia meta of the image's kernel flavour, and
  only for NVIDIA hardware it detects through /sys/devices modaliases (canonical/ubuntu-drivers-common,
  UbuntuDrivers/detect.py system_gpgpu_driver_packages): without one it prints "No drivers found for
  installation." and exits 1.
"""

from __future__ import annotations

import functools
import glob
import os
import re

import pkgs
from core import Ctx, Fail, err, full_version, glob_to_re, key_fingerprints, out, split_options, vercmp

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~10 ms an import; stubs start on every call
    from typing import Any

APT_VALUE_OPTS = {"-o", "-c", "-t", "--target-release", "--format"}


# ---------------------------------------------------------------------------------------------------------
# sources


class Source:
    """One (URI, suite) of a sources entry; `entry` is apt's $(SOURCESENTRY): FILE:LINE for one-line files,
    FILE:STANZA for deb822 .sources (both counted from 1; checked with apt 2.6)."""

    def __init__(self, uri: str, suite: str, components: list[str], signed_by: str | None, entry: str) -> None:
        self.uri = uri if uri.endswith("/") else uri + "/"
        self.suite = suite
        self.components = components
        self.signed_by = signed_by
        self.entry = entry

    def targets(self) -> list[str]:
        if self.suite.endswith("/"):
            return [f"{self.uri}|{self.suite}|"]
        return [f"{self.uri}|{self.suite}|{c}" for c in self.components]


def _config(opts: dict[str, list[str]]) -> dict[str, str]:
    config = {}
    for item in opts.get("-o", []):
        key, _, value = item.partition("=")
        config[key.lower()] = value
    return config


def _source_files(config: dict[str, str]) -> list[str]:
    files = []
    main = config.get("dir::etc::sourcelist", "/etc/apt/sources.list")
    if main and os.path.isfile(main):
        files.append(main)
    parts = config.get("dir::etc::sourceparts", "/etc/apt/sources.list.d")
    if parts and parts != "-" and os.path.isdir(parts):
        files += sorted(glob.glob(f"{parts}/*.list") + glob.glob(f"{parts}/*.sources"))
    return files


def _parse_one_line(path: str, text: str) -> list[Source]:
    sources = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        options: dict[str, str] = {}
        match = re.match(r"^(deb|deb-src)\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
        if not match:
            raise Fail(
                100, f"E: Malformed entry 1 in list file {path} (Component)\nE: The list of sources could not be read."
            )
        if match.group(1) != "deb":
            continue
        for item in (match.group(2) or "").strip(" []\t").split():
            key, _, value = item.partition("=")
            options[key] = value
        sources.append(
            Source(match.group(3), match.group(4), match.group(5).split(), options.get("signed-by"), f"{path}:{number}")
        )
    return sources


def _parse_deb822(path: str, text: str) -> list[Source]:
    sources = []
    number = 0
    for stanza in re.split(r"\n\s*\n", text):
        if stanza.strip():
            number += 1
        fields: dict[str, str] = {}
        key = ""
        for raw in stanza.splitlines():
            if raw.startswith("#"):
                continue
            if raw[:1] in (" ", "\t") and key:
                fields[key] += "\n" + raw.strip()
                continue
            key, _, value = raw.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if not fields or fields.get("enabled", "yes").lower() == "no" or "deb" not in fields.get("types", "").split():
            continue
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                sources.append(
                    Source(
                        uri, suite, fields.get("components", "").split(), fields.get("signed-by"), f"{path}:{number}"
                    )
                )
    return sources


def read_sources(config: dict[str, str]) -> list[Source]:
    sources: list[Source] = []
    for path in _source_files(config):
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        sources += _parse_deb822(path, text) if path.endswith(".sources") else _parse_one_line(path, text)
    signed: dict[tuple[str, str], str | None] = {}
    for source in sources:
        key = (source.uri, source.suite)
        if key in signed and signed[key] != source.signed_by:
            raise Fail(
                100,
                f"E: Conflicting values set for option Signed-By regarding source {source.uri} "
                f"{source.suite}: {signed[key] or ''} != {source.signed_by or ''}\n"
                "E: The list of sources could not be read.",
            )
        signed[key] = source.signed_by
    return sources


def _archive(ctx: Ctx, source: Source) -> bool:
    return source.uri.rstrip("/") in [u.rstrip("/") for u in ctx.world.get("archive_uris", [])]


def _repo(ctx: Ctx, source: Source) -> dict[str, Any] | None:
    repos: dict[str, dict[str, Any]] = ctx.world.get("repos", {})
    return repos.get(source.uri.rstrip("/"))


def _fault(ctx: Ctx, source: Source) -> str | None:
    faults: dict[str, str] = ctx.world.get("faults", {})
    return faults.get(source.uri.rstrip("/"))


def _trusted_keys(source: Source) -> list[str]:
    rings = (
        [source.signed_by]
        if source.signed_by
        else sorted(
            glob.glob("/etc/apt/trusted.gpg.d/*.gpg")
            + glob.glob("/etc/apt/trusted.gpg.d/*.asc")
            + (["/etc/apt/trusted.gpg"] if os.path.exists("/etc/apt/trusted.gpg") else [])
        )
    )
    fprs: list[str] = []
    for ring in rings:
        if ring and os.path.isfile(ring):
            fprs += key_fingerprints(ring)
    return fprs


# ---------------------------------------------------------------------------------------------------------
# apt-get


def apt_get(ctx: Ctx) -> int:
    opts, words = split_options(ctx.args, APT_VALUE_OPTS)
    config = _config(opts)
    if not words:
        raise Fail(100, "E: Invalid operation")
    command, rest = words[0], words[1:]
    if command == "update":
        return _update(ctx, config)
    if command == "install":
        return install(ctx, config, rest, allow_downgrades="--allow-downgrades" in opts)
    if command == "indextargets":
        return _indextargets(ctx, config, opts, rest)
    raise Fail(100, f"E: the apt-get stub does not model `{command}`")


def _update(ctx: Ctx, config: dict[str, str]) -> int:
    sources = read_sources(config)
    fetched = set(ctx.state.setdefault("apt_lists", []))
    errors, warnings, n = [], [], 0
    for source in sources:
        n += 1
        where = f"{source.uri} {source.suite}"
        if _archive(ctx, source):
            out(f"Hit:{n} {where} InRelease")
            fetched.update(source.targets())
            continue
        fault = _fault(ctx, source)
        if fault == "unreachable":
            host = source.uri.split("/")[2]
            out(
                f"Err:{n} {where} InRelease\n  Could not connect to {host}:443 (192.0.2.1). - connect "
                "(111: Connection refused)"
            )
            warnings.append(
                f"W: Failed to fetch {source.uri}{source.suite.strip('/')}/InRelease  Could not connect to {host}:443"
            )
            continue
        repo = _repo(ctx, source)
        if repo is None or fault == "404":
            out(f"Ign:{n} {where} InRelease\nErr:{n} {where} Release\n  404  Not Found [IP: 192.0.2.1 443]")
            errors.append(f"E: The repository '{where} Release' does not have a Release file.")
            continue
        if repo["signer"] not in _trusted_keys(source):
            short = repo["signer"][-16:]
            out(
                f"Get:{n} {where} InRelease [1581 B]\nErr:{n} {where} InRelease\n  The following signatures couldn't "
                f"be verified because the public key is not available: NO_PUBKEY {short}"
            )
            warnings.append(
                f"W: GPG error: {where} InRelease: The following signatures couldn't be verified because "
                f"the public key is not available: NO_PUBKEY {short}"
            )
            errors.append(f"E: The repository '{where} InRelease' is not signed.")
            continue
        out(f"Get:{n} {where} InRelease [1581 B]")
        fetched.update(source.targets())
    ctx.state["apt_lists"] = sorted(fetched)
    if config.get("apt::get::list-cleanup", "1").lower() not in ("0", "false", "no"):
        current = {t for s in sources for t in s.targets()}
        ctx.state["apt_lists"] = sorted(t for t in fetched if t in current)
    out("Reading package lists...")
    for line in warnings + (
        ["W: Some index files failed to download. They have been ignored, or old ones used instead."]
        if warnings and not errors
        else []
    ):
        err(line)
    if errors:
        err("\n".join(errors))
        return 100
    return 0


def _indextargets(ctx: Ctx, config: dict[str, str], opts: dict[str, list[str]], filters: list[str]) -> int:
    sources = read_sources(config)
    fetched = set(ctx.state.get("apt_lists", []))
    fmt = (opts.get("--format") or ["$(URI)"])[-1]
    if any(f != "Identifier: Packages" for f in filters):
        raise Fail(100, f"E: the apt-get stub models only the filter 'Identifier: Packages', not {filters}")
    for source in sources:
        for target in source.targets():
            if "--no-release-info" not in opts and target not in fetched:
                continue
            uri, suite, component = target.split("|")
            out(
                fmt.replace("$(REPO_URI)", uri)
                .replace("$(RELEASE)", suite)
                .replace("$(COMPONENT)", component)
                .replace("$(SOURCESENTRY)", source.entry)
            )
    return 0


def available(ctx: Ctx, config: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Packages of the sources configured now whose lists were fetched."""
    sources = read_sources(config or {})
    fetched = set(ctx.state.get("apt_lists", []))
    live = {t for s in sources for t in s.targets() if t in fetched}
    archive_components = {
        t.split("|")[2]
        for t in live
        if t.split("|")[0].rstrip("/") in [u.rstrip("/") for u in ctx.world.get("archive_uris", [])]
    }
    repo_uris = {t.split("|")[0].rstrip("/") for t in live}
    found = []
    for pkg in ctx.world["packages"]:
        if pkg["repo"] == "archive":
            if pkg.get("component", "main") in archive_components:
                found.append(pkg)
        elif pkg["repo"] in repo_uris:
            found.append(pkg)
    return found


def _pins() -> list[tuple[list[re.Pattern[str]], re.Pattern[str], int]]:
    pins = []
    for path in sorted(glob.glob("/etc/apt/preferences.d/*")):
        base = os.path.basename(path)
        if not re.match(r"^[A-Za-z0-9_.-]+$", base) or ("." in base and not base.endswith(".pref")):
            continue
        with open(path, encoding="utf-8") as handle:
            for stanza in re.split(r"\n\s*\n", handle.read()):
                fields = dict(
                    (k.strip().lower(), v.strip())
                    for k, _, v in (line.partition(":") for line in stanza.splitlines() if ":" in line)
                )
                pin = fields.get("pin", "")
                if "package" in fields and pin.startswith("version "):
                    names = [glob_to_re(g) for g in fields["package"].split()]
                    pins.append((names, glob_to_re(pin.split(None, 1)[1]), int(fields.get("pin-priority", "500"))))
    return pins


def candidate(ctx: Ctx, versions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """apt's candidate: the highest pin priority (a matching `Pin: version` record), then the newest version."""
    pins = _pins()

    def priority(pkg: dict[str, Any]) -> int:
        values = [
            value
            for names, version, value in pins
            if any(n.match(pkg["name"]) for n in names) and version.match(pkg["version"])
        ]
        return max(values) if values else 500

    by_version = functools.cmp_to_key(vercmp)
    return max(versions, key=lambda p: (priority(p), by_version(full_version(p))), default=None)


def install(ctx: Ctx, config: dict[str, str], specs: list[str], allow_downgrades: bool = False) -> int:
    pool = available(ctx, config)
    chosen: list[dict[str, Any]] = []
    for spec in specs:
        name, _, version = spec.partition("=")
        versions = pkgs.by_name(pool, name)
        if not versions:
            raise Fail(100, f"E: Unable to locate package {name}")
        if version:
            exact = [p for p in versions if p["version"] == version]
            if not exact:
                raise Fail(100, f"E: Version '{version}' for '{name}' was not found")
            chosen.append(exact[0])
        else:
            pick = candidate(ctx, versions)
            assert pick is not None
            chosen.append(pick)
    todo: list[dict[str, Any]] = []
    queue = list(chosen)
    while queue:
        pkg = queue.pop(0)
        if any(p["name"] == pkg["name"] for p in todo):
            continue
        if pkgs.installed_version(ctx, pkg["name"]) == pkg["version"] and pkg not in chosen:
            continue
        todo.append(pkg)
        for dep in pkg.get("requires", []):
            if pkgs.installed_version(ctx, dep) is None:
                options = pkgs.by_name(pool, dep)
                if not options:
                    raise Fail(
                        100,
                        f"E: Unable to correct problems, you have held broken packages.\n"
                        f"  {pkg['name']} : Depends: {dep} but it is not installable",
                    )
                pick = candidate(ctx, options)
                assert pick is not None
                queue.append(pick)
    for pkg in todo:
        have = pkgs.installed_version(ctx, pkg["name"])
        if have == pkg["version"]:
            out(f"{pkg['name']} is already the newest version ({have}).")
            continue
        out(f"Setting up {pkg['name']} ({pkg['version']}) ...")
        pkgs.install(ctx, pkg)
    return 0


# ---------------------------------------------------------------------------------------------------------
# dpkg-query, apt-cache, apt-mark


def apt_cache(ctx: Ctx) -> int:
    _, words = split_options(ctx.args, APT_VALUE_OPTS)
    if words[:1] == ["policy"]:
        pool = available(ctx)
        for name in words[1:]:
            best = candidate(ctx, pkgs.by_name(pool, name))
            out(
                f"{name}:\n  Installed: {pkgs.installed_version(ctx, name) or '(none)'}\n"
                f"  Candidate: {best['version'] if best else '(none)'}"
            )
        return 0
    raise Fail(100, f"E: the apt-cache stub does not model {words[:1]}")


def apt_mark(ctx: Ctx) -> int:
    _, words = split_options(ctx.args, set())
    holds = set(ctx.state.setdefault("apt_holds", []))
    if words[:1] == ["hold"]:
        holds.update(words[1:])
    elif words[:1] == ["unhold"]:
        holds.difference_update(words[1:])
    elif words[:1] == ["showhold"]:
        for name in sorted(holds):
            out(name)
    ctx.state["apt_holds"] = sorted(holds)
    return 0


# ---------------------------------------------------------------------------------------------------------
# ubuntu-drivers


def _nvidia_modalias() -> bool:
    for path in glob.glob("/sys/devices/**/modalias", recursive=True):
        with open(path, encoding="ascii") as handle:
            if handle.read().lower().startswith("pci:v000010de"):
                return True
    return False


def ubuntu_drivers(ctx: Ctx) -> int:
    opts, words = split_options(ctx.args, {"--gpgpu"})
    if words[:1] != ["install"]:
        raise Fail(2, f"the ubuntu-drivers stub models only `install --gpgpu`, not {ctx.args}")
    spec = (opts.get("--gpgpu") or [""])[-1] or (words[1] if len(words) > 1 else "")
    match = re.match(r"^nvidia:(\d+)(-server)?(-open)?$", spec)
    if not match:
        raise Fail(1, f"ubuntu-drivers stub: cannot read driver string {spec!r}")
    if not _nvidia_modalias():
        out("No drivers found for installation.")
        return 1
    branch, server, open_ = match.group(1), match.group(2) or "", match.group(3) or ""
    flavour = str(ctx.world["kernel_flavour"])
    wanted = [
        f"nvidia-headless-no-dkms-{branch}{server}{open_}",
        f"linux-modules-nvidia-{branch}{server}{open_}-{flavour}",
    ]
    import subprocess

    ctx.release()
    try:
        rc = subprocess.call(
            ["apt-get", "install", "-o", "DPkg::options::=--force-confnew", "--no-install-recommends", "-y", *wanted]
        )
    finally:
        ctx.reacquire()
    return rc
