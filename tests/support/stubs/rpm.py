"""rpm, dnf (dnf4 and dnf5 flavours) and zypper, as far as provisioning scripts use them.

Modelled on real behaviour:
- rpm -q NAME on a package that is not installed prints "package NAME is not installed" on STDOUT, exits 1;
  NAME may be a name or N-V-R(.A); `rpm -q gpg-pubkey` lists imported keys as gpg-pubkey-ID8-CREATED8.
- dnf loads every enabled repository: a repository whose metadata cannot be fetched, or (repo_gpgcheck=1) is not
  signed by a key in its gpgkey= files, fails the whole command (skip_if_unavailable=False, the default since
  RHEL 8). With gpgcheck=1, dnf -y imports the repository's gpgkey into rpm's database before installing.
- dnf4 module streams: a stream package is visible only when its stream is enabled, or when no stream is
  enabled and it is the default stream; installing it enables that stream; switching an enabled stream fails.
- Conflicts (Amazon Linux 2023 installs curl-minimal and gnupg2-minimal: `dnf install curl` fails without
  --allowerasing; amazon-linux-2023 issues #150, #243, #416).
- dnf4 versionlock needs python3-dnf-plugin-versionlock and lists `NAME-EPOCH:VERSION-RELEASE.*`; dnf5 (Fedora 41+)
  has it built in and lists `Package name: NAME` / `evr = ...` stanzas (dnf5 libdnf5/rpm/versionlock_config.cpp).
- zypper trusts a repository key only when it is in rpm's database (non-interactive: an unknown key is rejected).
"""

from __future__ import annotations

import configparser
import fnmatch
import glob
import os
import re

import pkgs
from core import Ctx, Fail, err, full_version, key_created, key_fingerprints, newest, out, split_options, vercmp
from quick import forms, installed_pkgs, query

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~10 ms an import; stubs start on every call
    from typing import Any

DNF_VALUE_OPTS = {"--setopt", "--disablerepo", "--enablerepo", "--repo", "-c", "--releasever"}
ZYPPER_VALUE_OPTS = {"--repo", "-r", "--root", "-R", "--type", "-t"}


# ---------------------------------------------------------------------------------------------------------
# rpm


def rpm(ctx: Ctx) -> int:
    opts, words = split_options(ctx.args, {"--qf", "--queryformat", "-e", "--import"})
    if "--import" in opts:
        for path in opts["--import"] + words:
            created = key_created(path) if os.path.isfile(path) else {}
            if not created:
                raise Fail(1, f"error: {path}: key 1 import failed.")
            keys = ctx.state.setdefault("rpm_keys", {})
            keys.update(created)
            # rpm keeps each key, armored, as its gpg-pubkey package's DESCRIPTION.
            with open(path, encoding="utf-8", errors="replace") as handle:
                text = handle.read()
            ctx.state.setdefault("rpm_key_text", {}).update({fpr: text for fpr in created})
        return 0
    if "-e" in opts:
        for name in opts["-e"] + words:
            # rpm takes gpg-pubkey-ID8 (name-version) as well as gpg-pubkey-ID8-CREATED8
            match = re.match(r"^gpg-pubkey-([0-9a-f]{8})(?:-[0-9a-f]{8})?$", name)
            keys = ctx.state.setdefault("rpm_keys", {})
            if match:
                for fpr in [f for f in keys if f.lower().endswith(match.group(1))]:
                    del keys[fpr]
                    ctx.state.get("rpm_key_text", {}).pop(fpr, None)
            else:
                pkgs.remove(ctx, name)
        return 0
    if "-q" in opts or "--query" in opts:
        fmt = (opts.get("--qf") or opts.get("--queryformat") or [""])[-1]
        return query(ctx, words, fmt)
    raise Fail(1, f"rpm stub: does not model {ctx.args}")


# ---------------------------------------------------------------------------------------------------------
# repositories (dnf and zypper)


def _repo_files(ctx: Ctx) -> list[str]:
    folder = "/etc/zypp/repos.d" if ctx.family == "zypper" else "/etc/yum.repos.d"
    return sorted(glob.glob(f"{folder}/*.repo"))


def repos(ctx: Ctx) -> list[dict[str, str]]:
    found = []
    for path in _repo_files(ctx):
        parser = configparser.RawConfigParser(strict=False)
        try:
            parser.read(path, encoding="utf-8")
        except configparser.Error as exc:
            raise Fail(1, f"Error: Cannot read repository file {path}: {exc}") from None
        for section in parser.sections():
            found.append({"id": section, "file": path, **dict(parser.items(section))})
    return found


def _truthy(value: str | None, default: bool) -> bool:
    if value is None:
        return default
    return value.strip().lower() in ("1", "yes", "true", "on")


def _gpgkey_fprs(repo: dict[str, str]) -> list[str]:
    fprs = []
    for url in repo.get("gpgkey", "").split():
        if url.startswith("file://") and os.path.isfile(url[len("file://") :]):
            fprs += key_fingerprints(url[len("file://") :])
    return fprs


def check_repo(ctx: Ctx, repo: dict[str, str]) -> str | None:
    """Why the repository's metadata cannot be used, or None when it can."""
    baseurl = repo.get("baseurl", "").strip().rstrip("/")
    if baseurl in [u.rstrip("/") for u in ctx.world.get("archive_uris", [])]:
        return None
    fault = ctx.world.get("faults", {}).get(baseurl)
    if fault == "unreachable":
        return f"Curl error (7): Couldn't connect to server for {baseurl}/repodata/repomd.xml"
    world_repo = ctx.world.get("repos", {}).get(baseurl)
    if world_repo is None or fault == "404":
        return f"Status code: 404 for {baseurl}/repodata/repomd.xml (IP: 192.0.2.1)"
    repo_check = _truthy(repo.get("repo_gpgcheck"), False)
    if ctx.family == "zypper":
        # zypper: repo_gpgcheck and pkg_gpgcheck, where set, override gpgcheck (which defaults to on).
        override = repo.get("repo_gpgcheck")
        repo_check = _truthy(override, False) if override is not None else _truthy(repo.get("gpgcheck"), True)
        trusted = list(ctx.state.get("rpm_keys", {}))
    else:
        trusted = _gpgkey_fprs(repo)
    if repo_check and not world_repo.get("signs_metadata", True):
        return (
            "GPG verification is enabled, but GPG signature is not available. This may be an error or the "
            f"repository does not support GPG verification: Status code: 404 for {baseurl}/repodata/repomd.xml.asc "
            "(IP: 192.0.2.1)"
        )
    if repo_check and world_repo["signer"] not in trusted:
        return "repomd.xml GPG signature verification error: Bad GPG signature"
    return None


def _select(ctx: Ctx, opts: dict[str, list[str]]) -> list[dict[str, str]]:
    """Enabled repositories after --disablerepo/--enablerepo/--repo, applied in the order dnf applies them."""
    selected = []
    for repo in repos(ctx):
        enabled = _truthy(repo.get("enabled"), True)
        for pattern in opts.get("--disablerepo", []):
            if fnmatch.fnmatch(repo["id"], pattern):
                enabled = False
        for pattern in opts.get("--enablerepo", []):
            if fnmatch.fnmatch(repo["id"], pattern):
                enabled = True
        if opts.get("--repo") or opts.get("-r"):
            enabled = any(fnmatch.fnmatch(repo["id"], p) for p in opts.get("--repo", []) + opts.get("-r", []))
        if enabled:
            selected.append(repo)
    return selected


def _baseurl(repo: dict[str, str]) -> str:
    return repo.get("baseurl", "").strip().rstrip("/")


def pool(ctx: Ctx, loaded: list[dict[str, str]], modular: bool) -> list[dict[str, Any]]:
    """Packages of the loaded repositories (module-filtered for dnf4)."""
    urls = {_baseurl(r) for r in loaded}
    archive = any(u.rstrip("/") in urls for u in ctx.world.get("archive_uris", []))
    found = [p for p in ctx.world["packages"] if (p["repo"] == "archive" and archive) or p["repo"] in urls]
    if not modular:
        return found
    enabled = ctx.state.get("modules", {})
    defaults = ctx.world.get("module_defaults", {})
    visible = []
    for pkg in found:
        stream = pkg.get("stream")
        if not stream:
            visible.append(pkg)
            continue
        module, _, name = stream.partition(":")
        if enabled.get(module, defaults.get(module)) == name:
            visible.append(pkg)
    return visible


def _repo_of(
    loaded: list[dict[str, str]], pkg: dict[str, Any], archive: list[str] | None = None
) -> dict[str, str] | None:
    for repo in loaded:
        if pkg["repo"] == _baseurl(repo) or (pkg["repo"] == "archive" and _baseurl(repo) in (archive or [])):
            return repo
    return None


# ---------------------------------------------------------------------------------------------------------
# dnf


def dnf(ctx: Ctx) -> int:
    opts, words = split_options(ctx.args, DNF_VALUE_OPTS)
    if not words:
        raise Fail(1, "dnf stub: no command")
    command, rest = words[0], words[1:]
    if command == "makecache":
        _load(ctx, opts)
        if "-q" not in opts:
            out("Metadata cache created.")
        return 0
    if command == "install":
        return _dnf_install(ctx, opts, rest)
    if command == "module":
        return _dnf_module(ctx, opts, rest)
    if command == "versionlock":
        return _dnf_versionlock(ctx, rest)
    if command == "list":
        return _dnf_list(ctx, opts, rest)
    raise Fail(1, f"dnf stub: does not model `{command}`")


def _dnf_list(ctx: Ctx, opts: dict[str, list[str]], specs: list[str]) -> int:
    """`dnf list SPEC...`: installed and available packages matching; exit 1 when none does (as dnf does)."""
    available = pool(ctx, _load(ctx, opts), _modular(ctx))
    shown = False
    for title, found in (("Installed Packages", installed_pkgs(ctx)), ("Available Packages", available)):
        matches = [p for spec in specs for p in _match(found, spec)]
        if matches:
            out(title)
            for pkg in matches:
                out(f"{pkg['name']}.{pkg.get('arch', 'x86_64')}  {full_version(pkg)}")
            shown = True
    if not shown:
        raise Fail(1, "Error: No matching Packages to list")
    return 0


def _load(ctx: Ctx, opts: dict[str, list[str]]) -> list[dict[str, str]]:
    loaded = _select(ctx, opts)
    for repo in loaded:
        problem = check_repo(ctx, repo)
        if problem:
            raise Fail(
                1,
                f"Errors during downloading metadata for repository '{repo['id']}':\n  - {problem}\n"
                f"Error: Failed to download metadata for repo '{repo['id']}': {problem}",
            )
    return loaded


def _modular(ctx: Ctx) -> bool:
    return bool(ctx.world.get("dnf") == "dnf4")


def _match(candidates: list[dict[str, Any]], spec: str) -> list[dict[str, Any]]:
    return [p for p in candidates if any(fnmatch.fnmatchcase(form, spec) for form in forms(p))]


def _dnf_install(ctx: Ctx, opts: dict[str, list[str]], specs: list[str]) -> int:
    loaded = _load(ctx, opts)
    available = pool(ctx, loaded, _modular(ctx))
    wanted: list[dict[str, Any]] = []
    for spec in specs:
        matches = _match(available, spec)
        if not matches:
            if _match(installed_pkgs(ctx), spec):
                out(f"Package {spec} is already installed.")
                continue
            raise Fail(1, f"No match for argument: {spec}\nError: Unable to find a match: {spec}")
        for name in sorted({p["name"] for p in matches}):
            best = newest([p for p in matches if p["name"] == name])
            assert best is not None
            wanted.append(best)
    plan: list[dict[str, Any]] = []
    queue = list(wanted)
    while queue:
        pkg = queue.pop(0)
        if any(p["name"] == pkg["name"] for p in plan):
            continue
        if pkgs.installed_version(ctx, pkg["name"]) == pkg["version"]:
            out(f"Package {pkg['name']}-{full_version(pkg)}.{pkg.get('arch', 'x86_64')} is already installed.")
            continue
        plan.append(pkg)
        for dep in pkg.get("requires", []):
            if pkgs.installed_version(ctx, dep) is None:
                options = [p for p in available if p["name"] == dep]
                if not options:
                    raise Fail(
                        1,
                        f"Error:\n Problem: conflicting requests\n  - nothing provides {dep} needed by "
                        f"{pkg['name']}-{full_version(pkg)}.{pkg.get('arch', 'x86_64')} from "
                        f"{_repo_label(ctx, loaded, pkg)}",
                    )
                best = newest(options)
                assert best is not None
                queue.append(best)
    erase = []
    for pkg in plan:
        for other in pkg.get("conflicts", []):
            if pkgs.installed_version(ctx, other) is not None and other not in [p["name"] for p in plan]:
                if "--allowerasing" not in opts:
                    have = f"{other}-{pkgs.installed_version(ctx, other)}.{pkg.get('arch', 'x86_64')}"
                    raise Fail(
                        1,
                        f"Error:\n Problem: problem with installed package {have}\n"
                        f"  - package {have} from @System conflicts with {pkg['name']} provided by "
                        f"{pkg['name']}-{pkg['version']}.{pkg.get('arch', 'x86_64')} from "
                        f"{_repo_label(ctx, loaded, pkg)}\n  - conflicting requests\n"
                        "(try to add '--allowerasing' "
                        "to command line to replace conflicting packages or '--skip-broken' to skip "
                        "uninstallable packages)",
                    )
                erase.append(other)
    for pkg in plan:
        repo = _repo_of(loaded, pkg)
        if repo is not None and _truthy(repo.get("gpgcheck"), True):
            world_repo = ctx.world.get("repos", {}).get(pkg["repo"], {})
            signer = world_repo.get("signer")
            if signer and not world_repo.get("signs_packages", True):
                raise Fail(
                    1,
                    f"Package {pkg['name']}-{pkg['version']}.{pkg.get('arch', 'x86_64')}.rpm is not signed\n"
                    "Error: GPG check FAILED",
                )
            if signer and signer not in ctx.state.get("rpm_keys", {}):
                if signer not in _gpgkey_fprs(repo):
                    raise Fail(
                        1,
                        f"Public key for {pkg['name']}-{pkg['version']}.rpm is not installed. Failing "
                        f"package is: {pkg['name']}\n GPG Keys are configured as: {repo.get('gpgkey', '')}\n"
                        "Error: GPG check FAILED",
                    )
                for url in repo.get("gpgkey", "").split():
                    path = url[len("file://") :]
                    if url.startswith("file://") and os.path.isfile(path):
                        ctx.state.setdefault("rpm_keys", {}).update(key_created(path))
                err(f"Importing GPG key 0x{signer[-8:]}:\nKey imported successfully")
    for name in erase:
        pkgs.remove(ctx, name)
    for pkg in plan:
        if pkg.get("stream"):
            module, _, stream = pkg["stream"].partition(":")
            ctx.state.setdefault("modules", {}).setdefault(module, stream)
        pkgs.install(ctx, pkg)
    if plan and "-q" not in opts:
        out("Complete!")
    return 0


def _repo_label(ctx: Ctx, loaded: list[dict[str, str]], pkg: dict[str, Any]) -> str:
    repo = _repo_of(loaded, pkg, [u.rstrip("/") for u in ctx.world.get("archive_uris", [])])
    return repo["id"] if repo else "@System"


def _dnf_module(ctx: Ctx, opts: dict[str, list[str]], rest: list[str]) -> int:
    if not _modular(ctx):
        raise Fail(2, "dnf stub: this dnf has no module streams")
    sub_opts, words = split_options(rest, set())
    if words[:1] == ["enable"]:
        loaded = _load(ctx, opts)
        every = [p for p in ctx.world["packages"] if _repo_of(loaded, p) or p["repo"] == "archive"]
        for spec in words[1:]:
            module, _, stream = spec.partition(":")
            if not any(p.get("stream") == spec for p in every):
                raise Fail(1, f"Error: Problems in request:\nmissing groups or modules: {spec}")
            current = ctx.state.get("modules", {}).get(module)
            if current and current != stream:
                raise Fail(
                    1,
                    f"The operation would result in switching of module '{module}' stream '{current}' to "
                    f"stream '{stream}'\nError: It is not possible to switch enabled streams of a module "
                    "unless explicitly enabled via configuration option module_stream_switch.",
                )
            ctx.state.setdefault("modules", {})[module] = stream
        return 0
    if words[:1] == ["list"]:
        enabled = ctx.state.get("modules", {})
        names = words[1:] or sorted(enabled)
        only_enabled = "--enabled" in sub_opts or "--enabled" in opts
        rows = [(n, enabled[n]) for n in names if n in enabled] if only_enabled else []
        if not rows:
            raise Fail(1, "Error: No matching Modules to list")
        out("Name            Stream           Profiles            Summary")
        for name, stream in rows:
            out(f"{name:<15} {stream + ' [e]':<16} default [d], src   NVIDIA driver")
        out("\nHint: [d]efault, [e]nabled, [x]disabled, [i]nstalled")
        return 0
    raise Fail(1, f"dnf stub: does not model `module {' '.join(words[:1])}`")


def _dnf_versionlock(ctx: Ctx, rest: list[str]) -> int:
    dnf5 = ctx.world.get("dnf") == "dnf5"
    if not dnf5 and pkgs.installed_version(ctx, "python3-dnf-plugin-versionlock") is None:
        raise Fail(
            1,
            "No such command: versionlock. Please use /usr/bin/dnf --help\nIt could be a DNF plugin "
            "command, try: \"dnf install 'dnf-command(versionlock)'\"",
        )
    locks: list[dict[str, str]] = ctx.state.setdefault("versionlock", [])
    _, words = split_options(rest, set())
    if words[:1] == ["list"] or not words:
        if dnf5:
            out(
                "\n".join(
                    f"# Added by 'versionlock add' command on 2026-01-01 00:00:00\nPackage name: {lock['name']}"
                    f"\nevr = {lock['evr']}\n"
                    for lock in locks
                ).rstrip("\n")
            )
        else:
            for lock in locks:
                out(f"{lock['name']}-{lock['evr']}.*")
        return 0
    if words[0] == "add":
        for spec in words[1:]:
            # dnf 4 (versionlock.py, _search_locklist): a pattern that an existing entry matches adds nothing, even
            # for installed packages that entry does not cover (seen with the real dnf 4.14 in the rpm harness).
            entries = [f"{lock['name']}-{lock['evr']}.*" for lock in locks]
            covered = [
                e for e, lock in zip(entries, locks, strict=True) if fnmatch.fnmatch(e, spec) or lock["name"] == spec
            ]
            if covered and not dnf5:
                for entry in covered:
                    err(f"Package already locked in equivalent form: {entry}")
                continue
            found = _match(installed_pkgs(ctx), spec)
            if not found:
                err(f'No package found for "{spec}".')
                continue
            for pkg in found:  # a glob locks every installed package it matches
                evr = f"{pkg.get('epoch') or 0}:{pkg['version']}"
                if any(lock["name"] == pkg["name"] and lock["evr"] == evr for lock in locks):
                    err(
                        f'Package "{spec}" is already locked.'
                        if dnf5
                        else f"Package already locked in equivalent form: {pkg['name']}-{evr}.*"
                    )
                    continue
                locks.append({"name": pkg["name"], "evr": evr})
                out(
                    f'Adding versionlock on "{pkg["name"]} = {evr}".'
                    if dnf5
                    else f"Adding versionlock on: {pkg['name']}-{evr}.*"
                )
        return 0
    raise Fail(1, f"dnf stub: does not model `versionlock {words[0]}`")


# ---------------------------------------------------------------------------------------------------------
# zypper


def zypper(ctx: Ctx) -> int:
    opts, words = split_options(ctx.args, ZYPPER_VALUE_OPTS)
    if not words:
        raise Fail(1, "zypper stub: no command")
    command, rest = words[0], words[1:]
    if command in ("refresh", "ref"):
        return _zypper_refresh(ctx, opts, rest)
    if command in ("install", "in"):
        return _zypper_install(ctx, opts, rest)
    if command in ("search", "se"):
        return _zypper_search(ctx, rest)
    if command in ("addlock", "al"):
        locks = ctx.state.setdefault("zypper_locks", [])
        for name in rest:
            if name not in locks:
                locks.append(name)
        out("Specified lock has been successfully added.")
        return 0
    if command in ("locks", "ll"):
        locks = ctx.state.get("zypper_locks", [])
        if not locks:
            out("There are no package locks defined.")
            return 0
        width = max(len(n) for n in locks)
        out(f"# | {'Name':<{width}} | Type    | Repository\n--+-{'-' * width}-+---------+-----------")
        for i, name in enumerate(locks, 1):
            out(f"{i} | {name:<{width}} | package | (any)")
        return 0
    raise Fail(1, f"zypper stub: does not model `{command}`")


def _zypper_repos(ctx: Ctx, names: list[str]) -> list[dict[str, str]]:
    chosen = [r for r in repos(ctx) if _truthy(r.get("enabled"), True)]
    if names:
        chosen = [r for r in repos(ctx) if r["id"] in names]
        missing = set(names) - {r["id"] for r in chosen}
        if missing:
            raise Fail(3, f"Repository '{sorted(missing)[0]}' not found by its alias, number, or URI.")
    return chosen


def _zypper_refresh(ctx: Ctx, opts: dict[str, list[str]], names: list[str]) -> int:
    failed = []
    for repo in _zypper_repos(ctx, names + opts.get("--repo", []) + opts.get("-r", [])):
        problem = check_repo(ctx, repo)
        if problem:
            err(
                f"Signature verification failed for file 'repomd.xml' from repository '{repo['id']}'."
                if "GPG" in problem
                else f"Download (curl) error for '{_baseurl(repo)}/repodata/repomd.xml': {problem}"
            )
            err(f"Skipping repository '{repo['id']}' because of the above error.")
            failed.append(repo["id"])
        elif "--quiet" not in opts and "-q" not in opts:
            out(f"Retrieving repository '{repo['id']}' metadata ...[done]")
    if failed:
        err("Some of the repositories have not been refreshed because of an error.")
        return 4
    return 0


def _zypper_loaded(ctx: Ctx) -> list[dict[str, str]]:
    loaded = []
    for repo in _zypper_repos(ctx, []):
        if check_repo(ctx, repo):
            err(f"Repository '{repo['id']}' is invalid; skipping it.")
        else:
            loaded.append(repo)
    return loaded


def _zypper_search(ctx: Ctx, names: list[str]) -> int:
    """`zypper search --details --match-exact NAME`: every version of NAME, E:V-R as zypper writes it."""
    rows = []
    for pkg in pool(ctx, _zypper_loaded(ctx), modular=False):
        if pkg["name"] in names:
            status = "i+" if pkgs.installed_version(ctx, pkg["name"]) == pkg["version"] else ""
            rows.append((status, pkg["name"], full_version(pkg), pkg.get("arch", "x86_64"), pkg["repo"]))
    if not rows:
        err("No matching items found.")
        return 104
    out("\nS  | Name | Type    | Version | Arch   | Repository\n---+------+---------+---------+--------+-----------")
    for status, name, version, arch, repo in rows:
        out(f"{status:<2} | {name} | package | {version} | {arch} | {repo}")
    return 0


def _edition_matches(pkg: dict[str, Any], want: str) -> bool:
    """NAME=WANT as libsolv matches it for zypper: a version written without an epoch is epoch 0 (the real zypper
    finds no 'nvidia-open=580.159.04' for NVIDIA's epoch-3 packages), and one without a release matches any."""
    have = full_version(pkg)
    have_epoch, _, have_rest = have.rpartition(":") if ":" in have else ("0", "", have)
    want_epoch, _, want_rest = want.rpartition(":") if ":" in want else ("0", "", want)
    return int(have_epoch) == int(want_epoch) and (have_rest == want_rest or have_rest.startswith(want_rest + "-"))


def _zypper_install(ctx: Ctx, opts: dict[str, list[str]], specs: list[str]) -> int:
    loaded = _zypper_loaded(ctx)
    available = pool(ctx, loaded, modular=False)
    todo = []
    for spec in specs:
        below = ""
        if "<" in spec:  # NAME<VERSION: the newest version below it
            name, _, below = spec.partition("<")
            version = ""
        else:
            name, _, version = spec.partition("=")
        matches = [
            p
            for p in available
            if p["name"] == name
            and (not version or _edition_matches(p, version))
            and (not below or vercmp(full_version(p), below) < 0)  # epoch 0 where `below` has none, as libsolv
        ]
        if not matches:
            if pkgs.installed_version(ctx, name) and not version:
                out(f"'{name}' is already installed.")
                continue
            raise Fail(104, f"No provider of '{spec}' found.")
        best = newest(matches)
        assert best is not None
        if pkgs.installed_version(ctx, name) == best["version"]:
            out(f"'{name}' is already installed.")
            continue
        if name in ctx.state.get("zypper_locks", []):
            raise Fail(
                4,
                f"Problem: the to be installed {name}-{best['version']} conflicts with '{name}' "
                "which is locked (zypper addlock)",
            )
        todo.append(best)
        for dep in best.get("requires", []):
            if pkgs.installed_version(ctx, dep) is None:
                options = [p for p in available if p["name"] == dep]
                if not options:
                    raise Fail(4, f"Problem: nothing provides '{dep}' needed by the to be installed {name}")
                dep_best = newest(options)
                assert dep_best is not None
                todo.append(dep_best)
    for pkg in todo:
        repo = _repo_of(loaded, pkg)
        check = (
            _truthy(repo["pkg_gpgcheck"], False)
            if repo and "pkg_gpgcheck" in repo
            else _truthy((repo or {}).get("gpgcheck"), True)
        )
        if repo is not None and check:
            world_repo = ctx.world.get("repos", {}).get(pkg["repo"], {})
            signer = world_repo.get("signer")
            if signer and not world_repo.get("signs_packages", True):
                raise Fail(8, f"{pkg['name']}-{pkg['version']}.rpm: Signature verification failed [6-No signature]")
            if signer and signer not in ctx.state.get("rpm_keys", {}):
                raise Fail(
                    8,
                    f"{pkg['name']}-{pkg['version']}.rpm: Signature verification failed [4-Signatures "
                    "public key is not available]",
                )
        pkgs.install(ctx, pkg)
    return 0
