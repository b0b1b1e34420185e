"""Run a generated install script for real, as root, against a fake root, and record what it does.

How the fake root works (and why this way):
- A directory per machine holds the target's own files: /etc (the target's os-release, apt sources or repo
  files), /var, /run, /tmp, /boot, /root, a writable /usr/local, a writable /usr/lib/modules with the image's
  kernel, and a fake /sys (PCI devices, modules, EFI variables as the scenario wants). Nothing of the host's
  /etc is visible, so the script cannot touch this machine's configuration.
- The host's /usr is bind-mounted READ-ONLY at /.host/usr; the fake /usr/bin holds links to an allowlist of real
  host tools (bash, coreutils, gpg, grep, sed, awk, flock, python3, ...; REAL_TOOLS) and nothing else, and
  /usr/lib links the host's libraries entry by entry. Host tools that must not leak in (the host's apt-get,
  systemctl, docker, systemd-detect-virt) are simply absent: the target sees only what its packages install.
- Package managers and system tools are stubs (tests/support/stubs), first on PATH, that record every call and
  keep the machine's state (installed packages, streams, locks, keys, units) in /bakegen-trace/state.bin, so a
  second run sees what the first did. Packages the stubs install put their commands into /usr/bin (links to the
  stub entry): `have nvidia-ctk` is true only after the toolkit is installed.
- Each run happens in `unshare --mount --pid --fork`: a private mount namespace (the bind mounts, /proc and
  /dev nodes exist only there and vanish with it, so cleanup cannot be forgotten and rmtree can never reach the
  host through a mount) and a PID namespace. In "bake" mode PID 1 stays outside the chroot, which is what the
  script's in_chroot() detects (image build in a chroot); in "booted" mode the script itself is PID 1 inside the
  root and /run/systemd/system exists: a running system with systemd, where services may be restarted.
- What the world's repositories hold comes from the vendor evidence (distros/evidence/, generator/evidence.py:
  offers): a stand-in repository holds exactly the packages and module streams the evidence shows it offering
  that distribution and arch, serves only the key files its folder publishes (any other key URL is a 404) and
  signs its metadata and packages as the vendor does. worlds.yaml only describes how a package behaves when
  installed (versions, commands, units, DKMS), and the image's own base tools (its `installed` packages and the
  descriptor's base_packages), which are hand-written and no vendor fact.
A run takes about a second; a machine is a few hundred small files.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import marshal
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from generator import evidence
from generator.evidence import ARCHIVE, kernel_lines
from generator.model import Arch, Distro, Family
from generator.plan import Options, Plan, make_plan
from generator.render import embedded_files, make_environment
from generator.render import render_script as _render_script_text
from generator.resolve import descriptor_set, load_distro
from tests.support.openpgp import colon_fingerprints

REPO = Path(__file__).resolve().parents[2]
STUBS = REPO / "tests" / "support" / "stubs"
WORLDS = REPO / "tests" / "fixtures" / "trace" / "worlds.yaml"
GPU_OUTPUTS = REPO / "tests" / "fixtures" / "gpu-check" / "h200-driver580"
TRACE = "bakegen-trace"  # /bakegen-trace inside the fake root
SCRIPT = "/opt/bakegen/install.sh"  # readable by everyone: the not-root refusal must come from the script
PATH_INSIDE = f"/{TRACE}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MIRROR_HOST = "mirror.trace.test"

# Real host tools the script (and the GPU check) may use. Anything else is "command not found".
REAL_TOOLS = (
    "bash",
    "sh",
    "env",
    "cat",
    "cp",
    "mv",
    "rm",
    "mkdir",
    "rmdir",
    "mktemp",
    "install",
    "chmod",
    "chown",
    "ln",
    "ls",
    "head",
    "tail",
    "tr",
    "wc",
    "sort",
    "uniq",
    "cut",
    "date",
    "dirname",
    "basename",
    "id",
    "stat",
    "od",
    "cksum",
    "sha256sum",
    "touch",
    "tee",
    "test",
    "[",
    "true",
    "false",
    "readlink",
    "realpath",
    "printf",
    "echo",
    "find",
    "xargs",
    "grep",
    "sed",
    "awk",
    "flock",
    "cmp",
    "diff",
    "gpg",
    "gpgv",
    "python3",
    "timeout",
    "expr",
    "seq",
    "sync",
    "nproc",
    "getent",
    "hostname",
)
STUB_COMMON = ("systemctl", "modprobe", "mokutil", "uname", "sleep", "curl")
STUB_FAMILY = {
    Family.APT: ("apt-get", "apt-cache", "apt-mark", "dpkg", "dpkg-query", "update-initramfs"),
    Family.DNF: ("rpm", "dnf", "dracut"),
    Family.ZYPPER: ("rpm", "zypper", "dracut"),
}
# /usr/lib entries of the host that the target must not see (its own take their place).
HOST_LIB_EXCLUDED = {"modules", "systemd", "udev", "os-release", "sysimage"}
SECURE_BOOT_VAR = "firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
GPU_PCI = "0000:00:06.0"  # the H200 of tests/fixtures/gpu-check/h200-driver580

# Files the script rewrites on every run by design: its log, lock and the GPU check's result. Not configuration.
RUN_RECORDS = (
    "/var/log/bakegen.log",
    "/var/lib/bakegen/.lock",
    "/var/lib/bakegen/gpu-check.json",
    "/etc/motd.d/90-bakegen-gpu-check",
)

# Runs inside the new namespaces, on the host's root: mounts, then the script in the fake root.
_ENTER = r"""
set -eu
root=$1 mode=$2 user=$3; shift 3
mount --bind /usr "$root/.host/usr"
mount -o remount,bind,ro "$root/.host/usr"
for node in null zero random urandom full; do mount --bind "/dev/$node" "$root/dev/$node"; done
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount --bind "$root/.state/proc-driver" "$root/proc/driver"
cmd=(chroot --userspec="$user" "$root" /usr/bin/env -i PATH="$PATH_INSIDE" HOME=/root LANG=C.UTF-8 TERM=dumb
     /bin/bash "$SCRIPT" "$@")
if [ "$mode" = booted ]; then exec "${cmd[@]}"; fi
"${cmd[@]}" && rc=0 || rc=$?
exit "$rc"
"""


# ---------------------------------------------------------------------------------------------------------
# keys


@dataclass(frozen=True)
class Key:
    label: str
    fingerprint: str
    armored: bytes


class KeyRing:
    """Throwaway OpenPGP keys, made once per session in a private GNUPGHOME (ed25519: milliseconds each).

    The toolkit's stand-in has the shape of NVIDIA's real key: a primary without expiry created 2017-09-28 and
    a signing subkey that expired (2021), whose "expired" noise the script must tolerate.
    """

    def __init__(self, workdir: Path) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="gpg-", dir=workdir))
        self.home.chmod(0o700)
        self._keys: dict[str, Key] = {}

    def _gpg(self, *args: str) -> str:
        result = subprocess.run(
            ["gpg", "--homedir", str(self.home), "--batch", "--passphrase", "", *args],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"gpg {' '.join(args)}: {result.stderr[-1500:]}")
        return result.stdout

    def key(self, label: str) -> Key:
        if label not in self._keys:
            uid = f"bakegen trace {label} <{label}@trace.invalid>"
            past = label == "nvidia-container-toolkit"
            self._gpg(
                *(["--faked-system-time", "20170928T000000"] if past else []),
                "--quick-gen-key",
                uid,
                "ed25519",
                "sign",
                "never",
            )
            listing = self._gpg("--with-colons", "--list-keys", uid)
            fpr = colon_fingerprints(listing)[0]
            if past:
                self._gpg("--faked-system-time", "20200616T000000", "--quick-add-key", fpr, "ed25519", "sign", "1y")
            armored = self._gpg("--armor", "--export", fpr).encode()
            self._keys[label] = Key(label, fpr, armored)
        return self._keys[label]

    def detach_sign(self, fingerprint: str, source: Path, target: Path) -> None:
        """An armored detached signature of `source` by `fingerprint`, written to `target` (e.g. repomd.xml.asc)."""
        self._gpg(
            "--yes", "--armor", "--local-user", fingerprint, "--detach-sign", "--output", str(target), str(source)
        )

    def labels(self) -> dict[str, str]:
        """fingerprint -> label, for making traces readable and stable."""
        return {k.fingerprint: k.label for k in self._keys.values()}

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"], capture_output=True, check=False)
        shutil.rmtree(self.home, ignore_errors=True)


def describe_keys(data: bytes, home: Path) -> list[str]:
    """Primary fingerprints in key material, read with the host's gpg."""
    result = subprocess.run(
        [
            "gpg",
            "--homedir",
            str(home),
            "--batch",
            "--no-autostart",
            "--with-colons",
            "--import-options",
            "show-only",
            "--import",
        ],
        input=data,
        capture_output=True,
        check=False,
    )
    return colon_fingerprints(result.stdout.decode(errors="replace"))


# ---------------------------------------------------------------------------------------------------------
# scenario


@dataclass(frozen=True)
class Machine:
    """What the fake machine is like. Defaults: an image being baked in a chroot, no GPU."""

    booted: bool = False  # systemd is PID 1 (a running instance, e.g. cloud-init), not a chroot
    gpu: bool = False  # one NVIDIA H200 on the PCI bus (nvidia-smi answers with real H200 outputs)
    nvswitches: int = 0  # NVSwitches on the PCI bus (an HGX H100/H200 board has four: device 22a3, class 0680)
    # Ubuntu: the archive has the image kernel and its headers but not yet Canonical's precompiled NVIDIA modules
    # for it (they are published after the kernel): no linux-modules-nvidia-* package at all.
    modules_lag: bool = False
    arch: str | None = None  # what `uname -m` says; default: the script's target arch
    os_id: str | None = None  # /etc/os-release ID; default: the descriptor's
    version_id: str | None = None  # /etc/os-release VERSION_ID; default: the descriptor's
    secure_boot: bool = False
    files: Mapping[str, str | None] = field(default_factory=dict)  # extra files (None deletes the world's)
    kernel_vr: str | None = None  # the image's kernel (rpm version-release); default: the world profile's


# Faults, by repository name: what the network answers for its key or its metadata.
KEY_FAULTS = ("wrong-key", "html", "empty", "key-404", "key-unreachable")
REPO_FAULTS = ("repo-404", "repo-unreachable", "repo-other-signer")


@dataclass(frozen=True)
class Call:
    tool: str
    argv: tuple[str, ...]
    kind: str
    rc: int | None

    def line(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class Change:
    op: str  # + created, ~ changed, - removed
    path: str
    before: tuple[Any, ...] | None
    after: tuple[Any, ...] | None
    data: bytes | None = None  # the file's content right after the run (files only)


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    calls: list[Call]
    changes: list[Change]
    state_before: dict[str, Any]
    state_after: dict[str, Any]
    machine: FakeMachine

    def actions(self) -> list[Call]:
        return [c for c in self.calls if c.kind != "query"]

    def of(self, *kinds: str) -> list[Call]:
        return [c for c in self.calls if c.kind in kinds]

    def config_changes(self) -> list[Change]:
        return [c for c in self.changes if c.path not in RUN_RECORDS]

    def installed(self) -> dict[str, str]:
        return {n: r["version"] for n, r in self.state_after.get("installed", {}).items()}

    def added_packages(self) -> dict[str, str]:
        before = self.state_before.get("installed", {})
        return {
            n: r["version"]
            for n, r in self.state_after.get("installed", {}).items()
            if before.get(n, {}).get("version") != r["version"]
        }


def _expand(value: Any, values: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return value.format_map(values)
    if isinstance(value, list):
        return [_expand(v, values) for v in value]
    if isinstance(value, dict):
        return {_expand(k, values): _expand(v, values) for k, v in value.items()}
    return value


def load_worlds() -> dict[str, Any]:
    with WORLDS.open(encoding="utf-8") as handle:
        worlds: dict[str, Any] = yaml.safe_load(handle)
    return worlds


def _world_values(distro: Distro, plan: Plan, machine: Machine, profile: dict[str, Any]) -> dict[str, str]:
    arch = plan.arch
    kernel_vr = str(machine.kernel_vr or profile.get("image_kernel_vr", ""))
    kernel = str(profile.get("image_kernel") or f"{kernel_vr}.{arch.value}")
    return {
        "kernel": kernel,
        "kernel_vr": kernel_vr,
        "arch": arch.value,
        "deb_arch": arch.deb,
        "codename": distro.codename,
        "version_id": distro.version_id,
        "dist": str(profile.get("dist", "")),
        "flavour": str(profile.get("flavour", "")),
        "debian_driver": str(profile.get("debian_driver", "")),
    }


def make_world(
    distro_id: str, distro: Distro, plan: Plan, machine: Machine, faults: Mapping[str, str], keys: KeyRing
) -> dict[str, Any]:
    """The world one machine lives in: what its image holds, what each repository publishes (from the vendor
    evidence) and signs, what the network answers. The trace harness simulates it; tests/support/rpmhost.py builds
    it with real rpm packages and repositories."""
    worlds = load_worlds()
    os_id = distro.os_id
    if os_id not in worlds["profile_for"]:
        raise AssertionError(f"tests/fixtures/trace/worlds.yaml has no profile for os id {os_id!r}: add one")
    profile = dict(worlds["profiles"][worlds["profile_for"][os_id]])
    overrides = worlds["distros"].get(distro_id, {})
    files = {**profile.get("files", {}), **overrides.get("files", {})}
    profile.update({k: v for k, v in overrides.items() if k != "files"})
    values = _world_values(distro, plan, machine, profile)
    family = distro.family
    kind = "apt" if family is Family.APT else "rpm"
    packages: list[dict[str, Any]] = []
    arch = values["arch"]

    # Packages of a kernel line (offer.kernels) are published where the image runs a kernel of that line.
    line = next((k for k in kernel_lines(distro_id, arch) if values["kernel"].startswith(f"{k}.")), "")

    def published(repo: str, field_name: str) -> set[str]:
        """What the evidence shows `repo` offering this distribution and arch, placeholders filled. On rpm
        systems `NAME-{kernel}` is package NAME at the kernel's version (the name the world gives it)."""
        names = evidence.published(distro_id, arch, repo, field_name, kernel=line)
        if kind == "rpm":
            names = {n.removesuffix("-{kernel}") for n in names}
        return {_expand(n, values) for n in names}

    streams = published("cuda", "streams")  # NVIDIA's module streams (modular worlds only)

    def add(name: str, spec: dict[str, Any], repo: str, allowed: set[str]) -> None:
        if name not in allowed:
            return  # the evidence does not show this repository publishing it: it cannot be installed
        if machine.modules_lag and name.startswith("linux-modules-nvidia-"):
            return
        for version in spec["versions"]:
            stream = spec.get("streams", {}).get(version)
            if profile.get("modular") and stream is not None and stream not in streams:
                continue  # a module stream the evidence does not show: its packages are not published either
            pkg: dict[str, Any] = {"name": name, "version": version, "repo": repo, "arch": arch}
            for key in ("component", "epoch", "requires", "conflicts", "bins", "units"):
                if key in spec:
                    pkg[key] = spec[key]
            if spec.get("dkms"):
                pkg["dkms"] = version.split("-")[0]
            if spec.get("headers"):
                pkg["headers"] = values["kernel"]
            if spec.get("kmod"):
                pkg["kmod"] = {**spec["kmod"], "kernel": values["kernel"]}
            if profile.get("modular") and stream is not None:
                pkg["stream"] = stream
            packages.append(pkg)

    # The image's base tools (hand-written, no vendor fact) and what the evidence shows its archive publishing.
    base = set(_expand([*profile.get("installed", []), *distro.base_packages], values))
    archive = dict(profile.get("archive", {}))
    archive.update(overrides.get("archive_extra", {}))
    for name, spec in _expand(archive, values).items():
        add(name, spec, "archive", base | published(ARCHIVE, "packages"))
    repos: dict[str, dict[str, Any]] = {}
    www: dict[str, dict[str, Any]] = {}
    network_faults: dict[str, str] = {}
    for repo in plan.repos:
        url = repo.url.rstrip("/")
        signer = keys.key("stranger" if faults.get(repo.name) == "repo-other-signer" else repo.name)
        # What the vendor signs, as the evidence shows it; where it is silent, the least (apt repositories
        # always sign their metadata, InRelease).
        signs = evidence.signing(distro_id, arch, repo.name)
        if kind == "apt":
            signs = {"metadata": True, "packages": False}
        repos[url] = {
            "name": repo.name,
            "signer": signer.fingerprint,
            "signs_metadata": signs.get("metadata", False),
            "signs_packages": signs.get("packages", False),
        }
        behaviour = _expand(worlds["repos"].get(repo.name, {}).get(kind, {}), values)
        for name, spec in behaviour.items():
            add(name, spec, url, published(repo.name, "packages"))
        fault = faults.get(repo.name)
        if repo.key_url.rsplit("/", 1)[1] in published(repo.name, "keys"):  # any other key file: 404
            www[repo.key_url] = _key_answer(repo.name, fault)
        if fault in ("repo-404", "repo-unreachable"):
            network_faults[url] = fault.removeprefix("repo-")
    installed = {}
    for name in _expand(profile.get("installed", []), values):
        pkg = next(p for p in packages if p["name"] == name and p["repo"] == "archive")
        installed[name] = {k: pkg[k] for k in ("version", "epoch", "repo", "arch") if k in pkg}
    return {
        "distro": distro_id,
        "family": family.value,
        "dnf": profile.get("dnf", ""),
        "arch": machine.arch or values["arch"],
        "running_kernel": values["kernel"] if machine.booted else worlds["host_kernel"],
        "image_kernel": values["kernel"],
        "kernel_flavour": values["flavour"],
        "booted": machine.booted,
        "gpu": machine.gpu,
        "secure_boot": machine.secure_boot,
        "archive_uris": _expand(profile["archive_uris"], values),
        "module_defaults": profile.get("module_defaults", {}),
        "packages": packages,
        "repos": repos,
        "www": www,
        "faults": network_faults,
        "labels": {url: r["name"] for url, r in repos.items()},
        "_os_version_id": str(profile.get("os_version_id") or distro.version_id),
        "_files": {
            **{path: (None if text is None else _expand(text, values)) for path, text in files.items()},
            **machine.files,
        },
        "_installed": installed,
    }


def _key_answer(name: str, fault: str | None) -> dict[str, Any]:
    if fault == "key-404":
        return {"status": 404}
    if fault == "key-unreachable":
        return {"fault": "unreachable"}
    return {"file": f"www/{name}.key"}


class FakeMachine:
    """One target machine: its root, its world, its script. Use as a context manager (removes everything)."""

    def __init__(
        self,
        base: Path,
        keys: KeyRing,
        distro_id: str,
        machine: Machine | None = None,
        faults: Mapping[str, str] | None = None,
        mirrors: bool = False,
        descriptor: Distro | None = None,
        **options: Any,
    ) -> None:
        self.distro_id = distro_id
        self.machine = machine or Machine()
        self.faults = dict(faults or {})
        self.keys = keys
        self.root = Path(tempfile.mkdtemp(prefix=f"{distro_id}-", dir=base))
        self.root.chmod(0o755)  # it becomes "/": everyone must be able to traverse it
        distro = descriptor or load_distro(descriptor_set(), distro_id)  # a changed descriptor, or distros/'s
        if isinstance(options.get("arch"), str):
            options["arch"] = Arch(options["arch"])
        self.distro = distro
        fingerprints = {name: keys.key(name).fingerprint for name in distro.repos}
        self.mirrors = {name: f"https://{MIRROR_HOST}/{name}" for name in distro.repos} if mirrors else {}
        self.options = dataclasses.replace(Options(), mirrors=self.mirrors, fingerprints=fingerprints, **options)
        self.plan: Plan = make_plan(distro, self.options)
        self.script = _render_script_text(make_environment(), self.plan)
        self.world = self._world()
        self._build()

    def set_script(self, text: str) -> None:
        """Replace the script the next runs execute (e.g. the rendered one with a fix applied)."""
        self.script = text
        (self.root / SCRIPT.lstrip("/")).write_text(text)

    def __enter__(self) -> FakeMachine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the world ----
    def _world(self) -> dict[str, Any]:
        return make_world(self.distro_id, self.distro, self.plan, self.machine, self.faults, self.keys)

    def _key_body(self, name: str) -> bytes:
        fault = self.faults.get(name)
        if fault == "wrong-key":
            return self.keys.key("stranger").armored
        if fault == "html":
            return b"<!DOCTYPE html>\n<html><head><title>Page not found</title></head><body>404</body></html>\n"
        if fault == "empty":
            return b""
        return self.keys.key(name).armored

    # ---- the tree ----
    def _build(self) -> None:
        root = self.root
        for folder in (
            "etc",
            "var/lib",
            "var/log",
            "var/cache",
            "var/tmp",
            "run",
            "root",
            "boot",
            "opt",
            "srv",
            "usr/bin",
            "usr/sbin",
            "usr/local/bin",
            "usr/local/sbin",
            "usr/lib/modules",
            "usr/src",
            "usr/lib/systemd/system",
            "etc/systemd/system",
            ".host/usr",
            "dev",
            "proc",
            "sys/bus/pci/devices",
            "sys/devices",
            "sys/module",
            ".state/proc-driver/nvidia",
            f"{TRACE}/bin",
            f"{TRACE}/stubs",
            f"{TRACE}/www",
            f"{TRACE}/gnupg",
        ):
            (root / folder).mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(mode=0o1777)
        (root / "tmp").chmod(0o1777)
        (root / "var/tmp").chmod(0o1777)
        (root / f"{TRACE}/gnupg").chmod(0o700)
        for name, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
            (root / name).symlink_to(target)
        (root / "usr/lib64").symlink_to("/.host/usr/lib64")
        for name in ("share", "libexec", "include"):
            if Path(f"/usr/{name}").exists():
                (root / "usr" / name).symlink_to(f"/.host/usr/{name}")
        for entry in sorted(os.listdir("/usr/lib")):
            if entry not in HOST_LIB_EXCLUDED and not (root / "usr/lib" / entry).exists():
                (root / "usr/lib" / entry).symlink_to(f"/.host/usr/lib/{entry}")
        for tool in REAL_TOOLS:
            found = shutil.which(tool, path="/usr/bin:/bin:/usr/sbin:/sbin")
            if found is None:
                raise RuntimeError(f"the host has no {tool}; the trace harness needs it")
            real = os.path.realpath(found)
            (root / "usr/bin" / tool).symlink_to(f"/.host{real}")
        for node in ("null", "zero", "random", "urandom", "full"):
            (root / "dev" / node).touch()
        for name, target in (
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ):
            (root / "dev" / name).symlink_to(target)
        self._etc()
        self._sys()
        kernel = self.world["image_kernel"]
        (root / f"usr/lib/modules/{kernel}").mkdir(parents=True)
        (root / f"boot/vmlinuz-{kernel}").write_text(f"kernel {kernel}\n")
        # Every image boots with an initramfs (initramfs-tools' name on apt systems, dracut's elsewhere).
        initrd = f"boot/initrd.img-{kernel}" if self.distro.family is Family.APT else f"boot/initramfs-{kernel}.img"
        (root / initrd).write_text(f"initramfs for {kernel}\n")
        past = 1_600_000_000  # 2020: the image was built long before this run
        for path in (root / f"boot/vmlinuz-{kernel}", root / initrd):
            os.utime(path, (past, past))
        if self.machine.booted:
            (root / "run/systemd/system").mkdir(parents=True)
        for path, text in self.world["_files"].items():
            target = root / path.lstrip("/")
            if text is None:
                target.unlink(missing_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
        # the trace's own machinery
        trace = root / TRACE
        for source in sorted(STUBS.glob("*.py")):
            shutil.copy2(source, trace / "stubs" / source.name)
        (trace / "stubs/stub.py").chmod(0o755)
        for tool in STUB_COMMON + STUB_FAMILY[self.distro.family]:
            (trace / "bin" / tool).symlink_to(f"/{TRACE}/stubs/stub.py")
        for repo in self.plan.repos:
            (trace / "www" / f"{repo.name}.key").write_bytes(self._key_body(repo.name))
        if self.machine.gpu:
            shutil.copytree(GPU_OUTPUTS, trace / "gpu")
        world = {k: v for k, v in self.world.items() if not k.startswith("_")}
        (trace / "world.bin").write_bytes(marshal.dumps(world))
        state = {"installed": self.world["_installed"], "owned": {}}
        (trace / "state.bin").write_bytes(marshal.dumps(state))
        # what the world installed at birth: put their files in place through the stubs' own code path
        self._install_initial()
        script = root / SCRIPT.lstrip("/")
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(self.script)
        script.chmod(0o755)

    def _etc(self) -> None:
        etc = self.root / "etc"
        os_id = self.machine.os_id or self.distro.os_id
        version = self.machine.version_id or self.world["_os_version_id"]
        lines = [
            f'NAME="{self.distro.name}"',
            f"ID={os_id}",
            f'VERSION_ID="{version}"',
            f'PRETTY_NAME="{self.distro.name}"',
        ]
        if self.distro.codename:
            lines.append(f"VERSION_CODENAME={self.distro.codename}")
        (etc / "os-release").write_text("\n".join(lines) + "\n")
        (etc / "passwd").write_text(
            "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        )
        (etc / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
        (etc / "nsswitch.conf").write_text("passwd: files\ngroup: files\nhosts: files\n")
        (etc / "hostname").write_text("trace\n")
        (etc / "hosts").write_text("127.0.0.1 localhost trace\n")
        shutil.copy2("/etc/ld.so.cache", etc / "ld.so.cache")
        if self.distro.family is Family.APT:
            for sub in ("sources.list.d", "preferences.d", "trusted.gpg.d", "apt.conf.d", "keyrings"):
                (etc / "apt" / sub).mkdir(parents=True, exist_ok=True)
        elif self.distro.family is Family.DNF:
            (etc / "yum.repos.d").mkdir()
            (etc / "pki/rpm-gpg").mkdir(parents=True)
            (etc / "dnf").mkdir()
        else:
            (etc / "zypp/repos.d").mkdir(parents=True)
            (etc / "pki/rpm-gpg").mkdir(parents=True)

    def _sys(self) -> None:
        sys_dir = self.root / "sys"
        if self.machine.gpu:
            device = sys_dir / "devices/pci0000:00" / GPU_PCI
            device.mkdir(parents=True)
            (device / "vendor").write_text("0x10de\n")
            (device / "device").write_text("0x2335\n")
            (device / "class").write_text("0x030200\n")
            (device / "modalias").write_text("pci:v000010DEd00002335sv000010DEsd000018BEbc03sc02i00\n")
            (sys_dir / "bus/pci/devices" / GPU_PCI).symlink_to(f"../../../devices/pci0000:00/{GPU_PCI}")
        for number in range(self.machine.nvswitches):
            name = f"0000:{0x05 + number:02x}:00.0"
            device = sys_dir / "devices/pci0000:00" / name
            device.mkdir(parents=True)
            (device / "vendor").write_text("0x10de\n")
            (device / "device").write_text("0x22a3\n")
            (device / "class").write_text("0x068000\n")
            (device / "modalias").write_text("pci:v000010DEd000022A3sv000010DEsd00001796bc06sc80i00\n")
            (sys_dir / "bus/pci/devices").mkdir(parents=True, exist_ok=True)
            (sys_dir / "bus/pci/devices" / name).symlink_to(f"../../../devices/pci0000:00/{name}")
        if self.machine.secure_boot:
            var = sys_dir / SECURE_BOOT_VAR
            var.parent.mkdir(parents=True)
            var.write_bytes(b"\x06\x00\x00\x00\x01")

    def _install_initial(self) -> None:
        """Files of the packages the image starts with (their commands, units) come from the stubs' code."""
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]); import core, pkgs\n"
            "ctx = core.Ctx('harness', [])\n"
            "for name, rec in list(ctx.state['installed'].items()):\n"
            "    pkg = next(p for p in ctx.world['packages']\n"
            "               if p['name'] == name and p['version'] == rec['version'])\n"
            "    pkgs.install(ctx, pkg)\n"
            "ctx.save()\n"
        )
        self._inside(["/usr/bin/python3", "-S", "-c", code, f"/{TRACE}/stubs"])

    def _inside(self, argv: list[str]) -> None:
        """Run a helper command inside the fake root (same namespaces as a run, not recorded)."""
        enter = _ENTER.replace('/bin/bash "$SCRIPT" "$@"', '"$@"')
        result = subprocess.run(
            [
                "unshare",
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
                "--propagation",
                "private",
                "/bin/bash",
                "-c",
                enter,
                "enter",
                str(self.root),
                "bake",
                "0:0",
                *argv,
            ],
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PATH_INSIDE": PATH_INSIDE, "SCRIPT": SCRIPT},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"inside the fake root, {argv[:3]} failed:\n{result.stdout}{result.stderr}")

    # ---- running ----
    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = marshal.loads((self.root / TRACE / "state.bin").read_bytes())
        return state

    def snapshot(self) -> dict[str, tuple[Any, ...]]:
        owned = set(self.state().get("owned", {}))
        found: dict[str, tuple[Any, ...]] = {}
        for top in (
            "etc",
            "var",
            "run",
            "tmp",
            "root",
            "boot",
            "opt",
            "srv",
            "usr/local",
            "usr/bin",
            "usr/sbin",
            "usr/lib/modules",
            "usr/lib/systemd",
            "usr/src",
        ):
            for dirpath, dirnames, filenames in os.walk(self.root / top):
                for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
                    path = Path(dirpath) / name
                    inside = "/" + str(path.relative_to(self.root))
                    if inside.startswith("/usr/lib/modules"):
                        inside = inside.replace("/usr/lib/modules", "/lib/modules", 1)
                    if inside in owned or inside == SCRIPT:
                        continue
                    if path.is_symlink():
                        found[inside] = ("link", os.readlink(path))
                    else:
                        data = path.read_bytes()
                        found[inside] = (
                            "file",
                            f"{path.stat().st_mode & 0o7777:04o}",
                            hashlib.sha256(data).hexdigest(),
                            len(data),
                        )
        return found

    def _content(self, path: str, state: tuple[Any, ...]) -> bytes | None:
        if state[0] != "file" or path in RUN_RECORDS:
            return None
        return self.read(path.replace("/lib/modules", "/usr/lib/modules", 1) if path.startswith("/lib/") else path)

    def read(self, path: str) -> bytes:
        return (self.root / path.lstrip("/")).read_bytes()

    def exists(self, path: str) -> bool:
        return os.path.lexists(self.root / path.lstrip("/"))

    def run(self, *args: str, user: str = "0:0", timeout: int = 120) -> Run:
        trace_file = self.root / TRACE / "trace.log"
        trace_file.unlink(missing_ok=True)
        before, state_before = self.snapshot(), self.state()
        result = subprocess.run(
            [
                "unshare",
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
                "--propagation",
                "private",
                "/bin/bash",
                "-c",
                _ENTER,
                "enter",
                str(self.root),
                "booted" if self.machine.booted else "bake",
                user,
                *args,
            ],
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PATH_INSIDE": PATH_INSIDE, "SCRIPT": SCRIPT},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        after, state_after = self.snapshot(), self.state()
        changes = []
        for path in sorted(set(before) | set(after)):
            if path not in after:
                changes.append(Change("-", path, before[path], None))
            elif path not in before:
                changes.append(Change("+", path, None, after[path], self._content(path, after[path])))
            elif before[path] != after[path]:
                changes.append(Change("~", path, before[path], after[path], self._content(path, after[path])))
        return Run(
            result.returncode,
            result.stdout,
            result.stderr,
            _read_calls(trace_file),
            changes,
            state_before,
            state_after,
            self,
        )

    def close(self) -> None:
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            mounted = [line.split()[4] for line in handle if line.split()[4].startswith(str(self.root))]
        if mounted:  # impossible by construction (mounts live in the run's namespace), but never rmtree through one
            raise RuntimeError(f"refusing to remove {self.root}: still mounted: {mounted}")
        shutil.rmtree(self.root, ignore_errors=True)


def _read_calls(path: Path) -> list[Call]:
    if not path.exists():
        return []
    starts: dict[int, tuple[Any, ...]] = {}
    order: list[int] = []
    rcs: dict[int, int] = {}
    for line in path.read_text().splitlines():
        entry = ast.literal_eval(line)
        if len(entry) == 3:  # (pid, rc, time)
            rcs[entry[0]] = entry[1]
        else:  # (pid, tool, argv, kind, time)
            starts[entry[0]] = entry
            order.append(entry[0])
    return [Call(starts[p][1], tuple(starts[p][2]), starts[p][3], rcs.get(p)) for p in order]


@contextmanager
def machines(base: Path) -> Iterator[KeyRing]:
    keys = KeyRing(base)
    try:
        yield keys
    finally:
        keys.close()


# ---------------------------------------------------------------------------------------------------------
# readable, stable text of a run: what the fixtures under tests/fixtures/trace/ hold


def normalizer(run: Run) -> Any:
    labels = run.machine.keys.labels()

    def norm(text: str) -> str:
        for fpr, label in labels.items():
            text = text.replace(fpr, f"<FPR:{label}>").replace(fpr[-16:], f"<KEYID:{label}>")
        text = re.sub(r"/tmp/tmp\.[A-Za-z0-9]+", "<TMP>", text)
        return re.sub(r"(key|gnupg)\.[A-Za-z0-9]{6}(?![A-Za-z0-9])", r"\1.<N>", text)

    return norm


TEXT_PREFIXES = ("/etc/", "/boot/initr", "/run/bakegen/")
EMBEDDED = {
    "/usr/local/sbin/bakegen-gpu-check": "templates/files/bakegen-gpu-check.py",
    "/etc/systemd/system/bakegen-gpu-check.service": "templates/files/bakegen-gpu-check.service",
    "/etc/kernel/postinst.d/zz-bakegen-nvidia": "templates/files/bakegen-kernel-guard",
    "/etc/kernel/install.d/95-bakegen-nvidia.install": "templates/files/bakegen-kernel-guard",
}
# How the copy of the install script inside user-data writes the same files (generator/embed.py).
EMBEDDED_MARK = " (the user-data copy: no comments)"


def _embedded_forms() -> dict[str, bytes]:
    files = embedded_files()
    forms = {
        "templates/files/bakegen-gpu-check.py": files["gpu_check_program"],
        "templates/files/bakegen-gpu-check.service": files["gpu_check_unit"],
        "templates/files/bakegen-kernel-guard": files["kernel_guard"],
    }
    return {name: text.encode() for name, text in forms.items()}


def describe_change(run: Run, change: Change, norm: Any, home: Path) -> list[str]:
    state = change.after or change.before
    assert state is not None
    if state[0] == "link":
        return [f"{change.op} {change.path} -> {state[1]}"]
    head = f"{change.op} {change.path} {state[1]}"
    if change.path in RUN_RECORDS:
        # Created or removed is part of the trace; rewritten is timing (a run within the same second as the
        # last one leaves the check's result byte for byte the same), so it is left out.
        return [f"{head} (run record)"] if change.op != "~" else []
    if change.op == "-":
        return [f"- {change.path}"]
    data = change.data or b""
    if change.path in EMBEDDED:
        source = EMBEDDED[change.path]
        if data == (REPO / source).read_bytes():
            return [f"{head}: = {source}"]
        if data == _embedded_forms()[source]:
            return [f"{head}: = {source}{EMBEDDED_MARK}"]
        return [f"{head}: DIFFERS FROM {source}"]
    fprs = describe_keys(data, home) if (data and not _is_text(data)) or b"BEGIN PGP" in data else []
    if fprs:
        return [f"{head}: OpenPGP key {' '.join(norm(f) for f in fprs)}"]
    if change.path.startswith(TEXT_PREFIXES) and _is_text(data):
        return [f"{head}:"] + [f"    {norm(line)}".rstrip() for line in data.decode().splitlines()]
    return [f"{head}: {len(data)} bytes"]


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\0" not in data


def describe_state(run: Run, norm: Any) -> list[str]:
    before, after = run.state_before, run.state_after
    labels = run.machine.world["labels"]
    lines = []
    old, new = before.get("installed", {}), after.get("installed", {})
    for name in sorted(set(old) | set(new)):
        if name not in new:
            lines.append(f"- package {name} {old[name]['version']}")
        elif old.get(name, {}).get("version") != new[name]["version"]:
            origin = labels.get(new[name].get("repo", ""), new[name].get("repo", "archive"))
            epoch = f"{new[name]['epoch']}:" if new[name].get("epoch") else ""
            lines.append(f"{'~' if name in old else '+'} package {name} {epoch}{new[name]['version']} ({origin})")
    for key, label in (
        ("modules", "module stream"),
        ("apt_holds", "apt hold"),
        ("zypper_locks", "zypper lock"),
        ("versionlock", "versionlock"),
        ("rpm_keys", "rpm key"),
        ("active_units", "running unit"),
        ("docker_runtimes", "docker runtime (running daemon)"),
        ("loaded", "kernel module loaded"),
    ):
        old_v, new_v = before.get(key), after.get(key)
        if old_v == new_v:
            continue
        lines += sorted(f"+ {label} {norm(item)}" for item in _items(new_v) if item not in _items(old_v))
        lines += sorted(f"- {label} {norm(item)}" for item in _items(old_v) if item not in _items(new_v))
    return lines


def _items(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, dict):
        return [f"{k}:{v}" if not isinstance(v, int) else str(k) for k, v in sorted(value.items())]
    if isinstance(value, list):
        return [" ".join(f"{v}" for v in item.values()) if isinstance(item, dict) else str(item) for item in value]
    return [str(value)]


def describe_run(run: Run, title: str, home: Path) -> str:
    norm = normalizer(run)
    lines = [f"== {title}: exit {run.rc}", "-- commands that change or fetch something (queries left out)"]
    actions = run.actions()
    lines += [f"{c.kind:<9} {norm(c.line())}{'' if c.rc in (0, None) else f'   => exit {c.rc}'}" for c in actions] or [
        "(none)"
    ]
    lines.append("-- packages and machine state")
    lines += describe_state(run, norm) or ["(no change)"]
    lines.append("-- files (+ new, ~ changed, - removed)")
    described = [line for change in run.changes for line in describe_change(run, change, norm, home)]
    lines += described or ["(no change)"]
    return "\n".join(lines) + "\n"
