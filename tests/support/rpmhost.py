"""Generated rpm scripts run by the REAL package managers, from Debian's archive, in root filesystems dressed as
the targets (docs/rpm-tests.md): dnf 4 with rpm 4.18 (bookworm tree) for the RHEL family and Amazon Linux 2023, dnf5
with rpm 6.1 (sid tree) for Fedora 43, zypper with rpm 4.20 (trixie tree) for SLES 15.

What is real here: the package managers with their libraries (libdnf/libdnf5 and libsolv, module streams through
libmodulemd, librepo's repo_gpgcheck through gpgme, the versionlock plugin, libzypp), rpm (its database, signature
checks, scriptlets, transaction lock), gpg, curl, systemctl, kernel-install. The repositories are real repositories:
built with rpmbuild, createrepo_c and modifyrepo_c, packages signed with rpmsign and repomd.xml with gpg, exactly
where the vendor evidence says the vendor signs (tests/support/trace.make_world reads it from distros/evidence/).
NVIDIA's Container Toolkit packages are built with NVIDIA's own rpm spec (packaging/rpm/SPECS/
nvidia-container-toolkit.spec of v1.18.1) around its real commands (tests/support/toolkit/).

STAND-INS, each labelled as such in its package Summary and in the files it carries:
- every other package's payload. Which packages each repository publishes for a distribution and arch, their
  names, epochs, versions, module streams and dependencies come from the trace world (tests/fixtures/trace/
  worlds.yaml), which takes what a vendor publishes from the vendor evidence; their commands are small scripts
  (tests/support/standin/rpm/): nvidia-smi answers as on a machine without a loaded driver, dkms "builds" a
  placeholder module where a kernel's build tree exists, everything else does nothing;
- NVIDIA's module metadata (modules.yaml) has the shape of NVIDIA's genmodules.py
  (github.com/NVIDIA/yum-packaging-precompiled-kmod): one modulemd document per stream with its artifacts and a
  default profile, and a modulemd-defaults document;
- the target itself: /etc/os-release, dnf.conf, rpm's database where the target keeps it (Debian's rpm keeps it
  elsewhere), a release package, bash and glibc as rpm sees them, the image's kernel (files under /lib/modules and
  /boot), dracut, and the distribution's own repository (one, for BaseOS/AppStream, Amazon Linux's, Fedora's or
  SUSE's), signed by a throwaway key the image trusts already;
- the signing keys (throwaway, tests/support/trace.KeyRing) and the TLS certificate.
What this cannot show: the vendors' real servers, packages and kernels; the real libnvidia-container; the older
package manager versions the targets ship; aarch64.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from generator.model import Arch
from generator.plan import Options, make_plan
from generator.render import make_environment
from generator.render import render_script as render_script_text
from generator.resolve import descriptor_set, load_distro
from tests.support import toolkit
from tests.support.https import StaticHttps
from tests.support.rootfs import Chroot, Release, build_rootfs, default_cache_dir
from tests.support.trace import KeyRing, Machine, make_world

HERE = Path(__file__).resolve().parent
STANDIN_FILES = HERE / "standin" / "rpm"
CLI_STANDIN = HERE / "standin" / "files" / "nvidia-container-cli"


@dataclass(frozen=True)
class Tooling:
    """A target's real package manager as Debian's archive has it: which Debian release carries it, and where the
    target keeps rpm's database."""

    name: str
    release: Release
    packages: tuple[str, ...]
    dbpath: str
    install: str  # the command line that installs the image's own packages while dressing it


TOOLING = {
    # Debian 12: dnf 4.14, libdnf 0.69, rpm 4.18 (RHEL 9: dnf 4.14, rpm 4.16; RHEL 8: dnf 4.7, rpm 4.14).
    "dnf4": Tooling(
        "dnf4",
        "bookworm",
        ("dnf", "dnf-plugins-core", "rpm", "systemd", "kmod", "pciutils"),
        "/var/lib/rpm",
        "dnf -y -q --setopt=install_weak_deps=False install",
    ),
    # sid: dnf5 5.4, rpm 6.1 (Fedora 43: dnf5 5.2, rpm 6.0). Fedora keeps rpm's database in /usr/lib/sysimage/rpm
    # since Fedora 36, with /var/lib/rpm a link to it.
    "dnf5": Tooling(
        "dnf5",
        "sid",
        ("dnf5", "rpm", "systemd", "kmod", "pciutils"),
        "/usr/lib/sysimage/rpm",
        "dnf5 -y -q --setopt=install_weak_deps=False install",
    ),
    # Debian 13: zypper 1.14.89, libzypp 17.36, rpm 4.20 (SLES 15 SP6: zypper 1.14, libzypp 17.35, rpm 4.14);
    # SLES 15 keeps rpm's database in /usr/lib/sysimage/rpm, /var/lib/rpm a link to it.
    "zypper": Tooling(
        "zypper",
        "trixie",
        ("zypper", "rpm", "systemd", "kmod", "pciutils"),
        "/usr/lib/sysimage/rpm",
        "zypper --non-interactive --quiet install --no-recommends",
    ),
}
# The rpm distributions, x86_64 (the arch this machine runs natively), by the package manager that runs them.
DISTROS = {
    "rhel8": "dnf4",
    "rhel9": "dnf4",
    "rocky9": "dnf4",
    "almalinux9": "dnf4",
    "amzn2023": "dnf4",
    "fedora43": "dnf5",
    "sles15": "zypper",
}
ARCHIVE = "archive"  # the world's name for the distribution's own repository
ARCHIVE_REPO_ID = "standin-archive"
ARCHIVE_KEY = "/etc/pki/rpm-gpg/RPM-GPG-KEY-standin-archive"
SCRIPT = "/root/install.sh"
# Debian's dnf-plugins-core ships every plugin; the targets' images have only those of python3-dnf-plugins-core. The
# others are moved aside: versionlock comes with python3-dnf-plugin-versionlock (its stand-in links the real plugin
# from there), and local, post-transaction-actions, leaves and show-leaves are separate packages nobody installs.
NOT_ON_TARGET_PLUGINS = ("versionlock.py", "local.py", "post-transaction-actions.py", "leaves.py", "show_leaves.py")
PLUGIN_DIR = "/usr/lib/python3/dist-packages/dnf-plugins"
STANDIN_PLUGIN_DIR = "/usr/lib/bakegen-standin/dnf-plugins"
VERSIONLOCK_CONF = "[main]\nenabled = 1\nlocklist = /etc/dnf/plugins/versionlock.list\n"
# NVIDIA's rpm spec builds these two from the real commands (operator-extensions is built, never published).
TOOLKIT_SPEC_PACKAGES = ("nvidia-container-toolkit", "nvidia-container-toolkit-base")
# The release package of each os id: it provides system-release(releasever), which dnf reads $releasever from.
RELEASE_PACKAGE = {
    "rhel": "redhat-release",
    "rocky": "rocky-release",
    "almalinux": "almalinux-release",
    "fedora": "fedora-release-common",
    "sles": "sles-release",
}
# RHEL 8/9's /etc/dnf/dnf.conf as installed by the dnf package (Amazon Linux 2023's adds nothing the script reads;
# Fedora's dnf5 has an empty [main]).
DNF_CONF = """[main]
gpgcheck=1
installonly_limit=3
clean_requirements_on_remove=True
best=True
skip_if_unavailable=False
"""
RPMBUILD_DEFINES = (
    "__os_install_post %{nil}",
    "debug_package %{nil}",
    "_build_id_links none",
    "_binary_payload w2.xzdio",
)


class RpmHostError(RuntimeError):
    """The stand-in repositories or the target root filesystem could not be built."""


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise RpmHostError(
            f"{' '.join(cmd[:3])}... failed ({result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}"
        )
    return result


# ---------------------------------------------------------------------------------------------------------
# packages


@dataclass(frozen=True)
class RpmSpec:
    """One stand-in package: what rpmbuild makes of it."""

    name: str
    version: str
    release: str
    arch: str
    repo: str
    epoch: int | None = None
    requires: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    files: Mapping[str, tuple[bytes, int]] = field(default_factory=dict)  # path -> (content, mode)
    links: Mapping[str, str] = field(default_factory=dict)  # path -> target
    post: str = ""
    posttrans: str = ""
    stream: str | None = None

    @property
    def nevra(self) -> str:
        return f"{self.name}-{self.epoch or 0}:{self.version}-{self.release}.{self.arch}"

    def spec_text(self, payload: Path) -> str:
        lines = [
            f"Name: {self.name}",
            *([f"Epoch: {self.epoch}"] if self.epoch is not None else []),
            f"Version: {self.version}",
            f"Release: {self.release}",
            f"Summary: STAND-IN for {self.name}, built by bakegen's tests (not the vendor's package)",
            "License: none",
            f"BuildArch: {self.arch}",
            "AutoReqProv: no",
            *(f"Requires: {r}" for r in self.requires),
            *(f"Conflicts: {c}" for c in self.conflicts),
            *(f"Provides: {p}" for p in self.provides),
            "",
            "%description",
            f"STAND-IN for {self.name} {self.version}-{self.release}: bakegen's tests build it with the name, version,",
            "dependencies and stream the vendor evidence shows; its files are placeholders.",
            "",
            "%install",
            f"cp -a {payload}/. %{{buildroot}}/",
            "",
            "%files",
            # What a package puts under /etc is configuration, as the vendors mark it (rpm -V tells it apart).
            *(f"%config(noreplace) {p}" if p.startswith("/etc/") else p for p in sorted({*self.files, *self.links})),
        ]
        if self.post:
            lines += ["", "%post", self.post]
        if self.posttrans:
            lines += ["", "%posttrans", self.posttrans]
        return "\n".join(lines) + "\n"


def _split_version(version: str) -> tuple[str, str]:
    upstream, _, release = version.rpartition("-")
    return upstream, release


def _standin_command(name: str, package: str, version: str) -> bytes:
    special = STANDIN_FILES / name
    source = special if special.is_file() else STANDIN_FILES / "command"
    text = source.read_text().replace("@NAME@", name).replace("@PACKAGE@", package).replace("@VERSION@", version)
    return text.encode()


def _unit(name: str, package: str) -> bytes:
    kind = name.rsplit(".", 1)[1]
    section = {
        "service": "[Service]\nExecStart=/usr/bin/false\n",
        "socket": f"[Socket]\nListenStream=/run/{name.rsplit('.', 1)[0]}.sock\n",
        "path": "[Path]\nPathExists=/dev/null\n",
    }[kind]
    wanted = "sockets.target" if kind == "socket" else "multi-user.target"
    return (
        f"# STAND-IN unit from {package}, built by bakegen's tests\n[Unit]\nDescription={name} (stand-in)\n\n"
        f"{section}\n[Install]\nWantedBy={wanted}\n"
    ).encode()


def spec_from_world(pkg: Mapping[str, Any], repo: str, tooling: str = "dnf4") -> RpmSpec:
    """A world package (tests/fixtures/trace/worlds.yaml, filled by make_world) as an rpm stand-in."""
    name = str(pkg["name"])
    version, release = _split_version(str(pkg["version"]))
    files: dict[str, tuple[bytes, int]] = {}
    links: dict[str, str] = {}
    post = ""
    for command in pkg.get("bins", []):
        files[f"/usr/bin/{command}"] = (_standin_command(command, name, version), 0o755)
    for unit in pkg.get("units", []):
        files[f"/usr/lib/systemd/system/{unit}"] = (_unit(unit, name), 0o644)
    if pkg.get("dkms"):
        # As the world models NVIDIA's DKMS packages: the module's source, built at install for the running kernel
        # where its build tree is there (in a chroot it is not: the script builds for the image's kernel).
        files[f"/usr/src/nvidia-{pkg['dkms']}/dkms.conf"] = (
            f'PACKAGE_NAME="nvidia"\nPACKAGE_VERSION="{pkg["dkms"]}"\nAUTOINSTALL="yes"\n'.encode(),
            0o644,
        )
        post = 'dkms autoinstall -k "$(uname -r)" >/dev/null 2>&1 || :'
    if pkg.get("headers"):
        kernel = str(pkg["headers"])
        files[f"/usr/src/kernels/{kernel}/Makefile"] = (f"# STAND-IN kernel build tree for {kernel}\n".encode(), 0o644)
        links[f"/lib/modules/{kernel}/build"] = f"/usr/src/kernels/{kernel}"
    if pkg.get("kmod"):
        kmod = pkg["kmod"]
        files[f"/lib/modules/{kmod['kernel']}/{kmod['path']}"] = (
            f"nvidia {kmod['version']} (precompiled STAND-IN)\n".encode(),
            0o644,
        )
    if (
        name == "python3-dnf-plugin-versionlock" and tooling == "dnf4"
    ):  # the real plugin (Debian's dnf-plugins-core), as RHEL lays it out
        links[f"{PLUGIN_DIR}/versionlock.py"] = f"{STANDIN_PLUGIN_DIR}/versionlock.py"
        files["/etc/dnf/plugins/versionlock.conf"] = (VERSIONLOCK_CONF.encode(), 0o644)
        files["/etc/dnf/plugins/versionlock.list"] = (b"", 0o644)
    if name == "dkms":  # DKMS's kernel-install plugin, as dkms 3.x ships it: build for a kernel being added
        files["/usr/lib/kernel/install.d/40-dkms.install"] = (
            b"#!/bin/sh\n# STAND-IN for dkms's kernel-install plugin (bakegen tests)\n"
            b'[ "$1" = add ] && dkms autoinstall -k "$2"\nexit 0\n',
            0o755,
        )
    if name == "libnvidia-container-tools":
        cli = CLI_STANDIN.read_text().replace("@VERSION@", f"{version}-{release}")
        files["/usr/bin/nvidia-container-cli"] = (cli.encode(), 0o755)
    requires = [str(r) for r in pkg.get("requires", [])]
    if name == "libnvidia-container-tools":  # NVIDIA's spec ties the two at one version (as the deb does)
        requires = [f"libnvidia-container1 = {version}-{release}"]
    return RpmSpec(
        name=name,
        version=version,
        release=release,
        arch=str(pkg["arch"]),
        repo=repo,
        epoch=pkg.get("epoch"),
        requires=tuple(requires),
        conflicts=tuple(str(c) for c in pkg.get("conflicts", [])),
        files=files,
        links=links,
        post=post,
        stream=pkg.get("stream"),
    )


def kernel_packages(kernel_vr: str, arch: str, *, devel: bool = True) -> list[RpmSpec]:
    """A new kernel as the RHEL family packages it: kernel-core, whose %posttrans runs `kernel-install add` (as
    Fedora's and RHEL's kernel.spec do), and, with DEVEL, its build tree (kernel-devel). Stand-ins: no real kernel."""
    kernel = f"{kernel_vr}.{arch}"
    version, release = _split_version(kernel_vr)
    core = RpmSpec(
        "kernel-core",
        version,
        release,
        arch,
        ARCHIVE,
        files={f"/lib/modules/{kernel}/vmlinuz": (f"STAND-IN kernel image {kernel}\n".encode(), 0o644)},
        provides=("installonlypkg(kernel)",),  # installed beside the others, as dnf does with kernels
        posttrans=f"/bin/kernel-install add {kernel} /lib/modules/{kernel}/vmlinuz || exit $?",
    )
    build_tree = {"name": "kernel-devel", "version": kernel_vr, "arch": arch, "headers": kernel}
    return [core, spec_from_world(build_tree, ARCHIVE)] if devel else [core]


def _cache_put(source: Path, target: Path) -> None:
    """Copy into the shared cache so that a concurrent reader never sees half a file."""
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    shutil.copy2(source, partial)
    os.replace(partial, target)


def build_rpm(spec: RpmSpec, out_dir: Path) -> Path:
    """rpmbuild `spec` into out_dir; cached by content under the test cache."""
    # Keyed by the spec file as written (every field, how it is written) and the payload's bytes and modes.
    digest = hashlib.sha256(
        spec.spec_text(Path("/payload")).encode()
        + json.dumps(sorted(spec.links.items())).encode()
        + b"".join(p.encode() + b"\0" + c + str(m).encode() for p, (c, m) in sorted(spec.files.items()))
        + " ".join(RPMBUILD_DEFINES).encode()
    ).hexdigest()[:16]
    cache = default_cache_dir() / "rpm-standins" / digest
    filename = f"{spec.name}-{spec.version}-{spec.release}.{spec.arch}.rpm"
    if not (cache / filename).is_file():
        with tempfile.TemporaryDirectory(prefix="rpmbuild-") as tmp:
            top = Path(tmp)
            payload = top / "payload"
            for path, (content, mode) in spec.files.items():
                target = payload / path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
                target.chmod(mode)
            for path, link in spec.links.items():
                target = payload / path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(link)
            payload.mkdir(exist_ok=True)
            spec_file = top / f"{spec.name}.spec"
            spec_file.write_text(spec.spec_text(payload))
            _rpmbuild(top, spec_file, spec.arch)
            built = next((top / "RPMS").rglob(filename))
            cache.mkdir(parents=True, exist_ok=True)
            _cache_put(built, cache / filename)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(cache / filename, out_dir / filename)
    return out_dir / filename


def _rpmbuild(top: Path, spec_file: Path, arch: str, defines: Iterable[str] = (), sources: Path | None = None) -> None:
    cmd = ["rpmbuild", "-bb", "--quiet", "--target", arch, "--define", f"_topdir {top}"]
    if sources is not None:
        cmd += ["--define", f"_sourcedir {sources}"]
    for define in (*RPMBUILD_DEFINES, *defines):
        cmd += ["--define", define]
    _run([*cmd, str(spec_file)])


def build_toolkit_rpms(version: str, release: str, arch: str, out_dir: Path) -> dict[str, Path]:
    """NVIDIA's Container Toolkit rpms, built with NVIDIA's own spec around the real commands: name -> file."""
    cache = default_cache_dir() / "rpm-standins" / f"toolkit-{toolkit.TARBALL_SHA256[:16]}-{version}-{release}-{arch}"
    names = {name: f"{name}-{version}-{release}.{arch}.rpm" for name in TOOLKIT_SPEC_PACKAGES}
    if not all((cache / f).is_file() for f in names.values()):
        goarch = {"x86_64": "amd64", "aarch64": "arm64"}[arch]
        src, binaries = toolkit.source_tree(), toolkit.binaries(version, goarch)
        with tempfile.TemporaryDirectory(prefix="rpmbuild-toolkit-") as tmp:
            top, sources = Path(tmp), Path(tmp) / "SOURCES"
            sources.mkdir()
            for command in toolkit.COMMANDS:
                shutil.copy2(binaries / command, sources / command)
            # Only in operator-extensions, which NVIDIA does not publish: placeholders so that the spec builds.
            for name in ("nvidia-container-runtime.cdi", "nvidia-container-runtime.legacy"):
                (sources / name).write_text("#!/bin/sh\n# placeholder (operator-extensions is not published)\nexit 1\n")
            shutil.copy2(src / "LICENSE", sources / "LICENSE")
            for unit in (src / "deployments" / "systemd").iterdir():
                shutil.copy2(unit, sources / unit.name)
            spec_file = src / "packaging" / "rpm" / "SPECS" / "nvidia-container-toolkit.spec"
            defines = (
                f"version {version}",
                f"release {release}",
                "release_date Thu Nov 13 2025",
                f"git_commit v{toolkit.SOURCE_VERSION}",
            )
            _rpmbuild(top, spec_file, arch, defines, sources)
            cache.mkdir(parents=True, exist_ok=True)
            for filename in names.values():
                _cache_put(next((top / "RPMS").rglob(filename)), cache / filename)
    out_dir.mkdir(parents=True, exist_ok=True)
    found = {}
    for name, filename in names.items():
        shutil.copy2(cache / filename, out_dir / filename)
        found[name] = out_dir / filename
    return found


# ---------------------------------------------------------------------------------------------------------
# repositories


def modules_yaml(specs: Iterable[RpmSpec], defaults: Mapping[str, str]) -> str:
    """modulemd v2 documents in the shape of NVIDIA's genmodules.py: per stream, a default profile of its first
    package and every package of the stream as an artifact; then modulemd-defaults."""
    streams: dict[str, list[RpmSpec]] = {}
    for spec in specs:
        if spec.stream:
            streams.setdefault(spec.stream, []).append(spec)
    documents: list[dict[str, Any]] = []
    for stream_id, members in sorted(streams.items()):
        module, stream = stream_id.split(":")
        documents.append(
            {
                "document": "modulemd",
                "version": 2,
                "data": {
                    "name": module,
                    "stream": stream,
                    "version": 20251009011129,
                    "context": "standin0",
                    "arch": members[0].arch,
                    "summary": f"Nvidia driver for {stream} branch (STAND-IN)",
                    "description": "STAND-IN module metadata built by bakegen's tests.",
                    "license": {"module": ["MIT"]},
                    "profiles": {"default": {"description": "Default installation", "rpms": [members[0].name]}},
                    "artifacts": {"rpms": sorted(m.nevra for m in members)},
                },
            }
        )
    for module, stream in sorted(defaults.items()):
        if any(s.startswith(f"{module}:") for s in streams):
            modules_streams = sorted(s.split(":")[1] for s in streams if s.startswith(f"{module}:"))
            documents.append(
                {
                    "document": "modulemd-defaults",
                    "version": 1,
                    "data": {
                        "module": module,
                        "stream": stream,
                        "profiles": {s: ["default"] for s in modules_streams},
                    },
                }
            )
    return yaml.safe_dump_all(documents, sort_keys=False, explicit_start=True, explicit_end=True)


@dataclass
class RepoBuild:
    """One repository as served: where, signed how, with which packages."""

    name: str
    path: str  # URL path under the server
    key_path: str | None  # URL path of its key file
    signer: str  # fingerprint
    signs_metadata: bool
    signs_packages: bool
    specs: list[RpmSpec] = field(default_factory=list)


class RpmWorld:
    """Stand-in repositories for one distribution and arch, served over HTTPS, and the script generated for them."""

    def __init__(self, distro_id: str, arch: str, keys: KeyRing, workdir: Path, **options: Any) -> None:
        self.distro_id = distro_id
        self.arch = arch
        self.keys = keys
        self.workdir = workdir
        self.server = StaticHttps(workdir / "https")
        try:
            self.distro = load_distro(descriptor_set(), distro_id)
            mirrors = {name: f"{self.server.base_url}/{name}" for name in self.distro.repos}
            fingerprints = {name: keys.key(name).fingerprint for name in self.distro.repos}
            self.options = dataclasses.replace(
                Options(), arch=Arch(arch), mirrors=mirrors, fingerprints=fingerprints, **options
            )
            self.plan = make_plan(self.distro, self.options)
            self.tooling = TOOLING[DISTROS[distro_id]]
            self.script = render_script_text(make_environment(), self.plan)
            self.world = make_world(distro_id, self.distro, self.plan, Machine(), {}, keys)
            self.repos = self._repos()
            self._publish()
        except BaseException:
            self.server.close()
            raise

    def close(self) -> None:
        self.server.close()

    def render(self, **options: Any) -> str:
        """The script generated for these repositories with other options (e.g. a new --driver-version)."""
        changed = dataclasses.replace(self.options, **options)
        return render_script_text(make_environment(), make_plan(self.distro, changed))

    def __enter__(self) -> RpmWorld:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def image_kernel(self) -> str:
        return str(self.world["image_kernel"])

    def _repos(self) -> dict[str, RepoBuild]:
        archive_key = self.keys.key(ARCHIVE)
        repos = {
            # The distribution signs its packages, and SUSE its metadata too (zypper refuses unsigned repomd.xml).
            ARCHIVE: RepoBuild(
                ARCHIVE, f"/{ARCHIVE}", None, archive_key.fingerprint, self.tooling.name == "zypper", True
            ),
        }
        by_url = {url: info for url, info in self.world["repos"].items()}
        for repo in self.plan.repos:
            info = by_url[repo.url.rstrip("/")]
            repos[repo.url.rstrip("/")] = RepoBuild(
                info["name"],
                urlsplit(repo.url).path.rstrip("/"),
                urlsplit(repo.key_url).path if repo.key_url in self.world["www"] else None,
                info["signer"],
                bool(info["signs_metadata"]),
                bool(info["signs_packages"]),
            )
        for pkg in self.world["packages"]:
            target = repos[pkg["repo"]]
            target.specs.append(spec_from_world(pkg, target.name, self.tooling.name))
        os_id = self.distro.os_id
        major = self.distro.version_id.split(".")[0]
        release_name = RELEASE_PACKAGE.get(os_id, "system-release")
        version, release = _split_version(str(self.world["_os_version_id"]) + "-1.standin")
        repos[ARCHIVE].specs.append(
            RpmSpec(
                release_name,
                version,
                release,
                "noarch",
                ARCHIVE,
                provides=("system-release", f"system-release(releasever) = {major}"),
            )
        )
        # What every image has: bash (rpm adds Requires(post): /bin/sh to scriptlets) and glibc. The glibc stand-in
        # provides the symbol versions the toolkit's commands ask for: built here against Debian 12's glibc, they
        # need newer ones than NVIDIA's builds do (rpm's automatic dependencies name them either way).
        repos[ARCHIVE].specs.append(RpmSpec("bash", "5.1.8", "9.standin", "noarch", ARCHIVE, provides=("/bin/sh",)))
        repos[ARCHIVE].specs.append(
            RpmSpec(
                "glibc", "2.34", "1.standin", self.arch, ARCHIVE, provides=tuple(sorted(self._toolkit_library_needs()))
            )
        )
        return {r.name: r for r in repos.values()}

    def _toolkit_versions(self) -> list[str]:
        return sorted(
            {
                str(p["version"])
                for p in self.world["packages"]
                if p["name"] in TOOLKIT_SPEC_PACKAGES and p["repo"] != ARCHIVE
            }
        )

    def _toolkit_library_needs(self) -> set[str]:
        """What rpm's automatic dependencies of the toolkit rpms ask of the C library."""
        needs: set[str] = set()
        for full in self._toolkit_versions():
            version, release = _split_version(full)
            built = build_toolkit_rpms(version, release, self.arch, self.workdir / "toolkit-rpms")
            for path in built.values():
                out = _run(["rpm", "-qp", "--requires", str(path)]).stdout
                needs.update(line.strip() for line in out.splitlines() if ".so" in line or line.startswith("rtld("))
        return needs

    def _publish(self) -> None:
        www = self.server.www
        for repo in self.repos.values():
            folder = www / repo.path.lstrip("/")
            packages = folder / "Packages"
            for spec in repo.specs:
                if spec.name in TOOLKIT_SPEC_PACKAGES:
                    continue
                build_rpm(spec, packages)
            if repo.name == "nvidia-container-toolkit":
                for full in self._toolkit_versions():
                    version, release = _split_version(full)
                    built = build_toolkit_rpms(version, release, self.arch, packages)
                    published = {s.name for s in repo.specs if f"{s.version}-{s.release}" == full}
                    for name, path in built.items():
                        if name not in published:
                            path.unlink()
            rpms = sorted(packages.glob("*.rpm")) if packages.is_dir() else []
            if repo.signs_packages and rpms:
                self._sign_rpms(rpms, repo.signer)
            self._index(repo.name)
            if repo.key_path:
                key_file = www / repo.key_path.lstrip("/")
                key_file.parent.mkdir(parents=True, exist_ok=True)
                key_file.write_bytes(self.keys.key(repo.name).armored)

    def _index(self, repo: str, keep: Callable[[RpmSpec], bool] = lambda spec: True) -> None:
        """(Re)build a repository's metadata from its packages: createrepo_c; where the repository has module streams,
        NVIDIA's modules.yaml (of the packages `keep` accepts) added with modifyrepo_c; repomd.xml signed where the
        vendor signs metadata."""
        build = self.repos[repo]
        folder = self.server.www / build.path.lstrip("/")
        _run(["createrepo_c", "--quiet", "--no-database", str(folder)])
        if any(s.stream for s in build.specs):
            modules = self.workdir / f"{repo}-modules.yaml"
            modules.write_text(
                modules_yaml([s for s in build.specs if s.stream and keep(s)], self.world["module_defaults"])
            )
            _run(["modifyrepo_c", "--mdtype=modules", str(modules), str(folder / "repodata")])
        if build.signs_metadata:
            self.sign_metadata(repo, build.signer)

    def _sign_rpms(self, rpms: list[Path], fingerprint: str) -> None:
        _run(
            [
                "rpmsign",
                "--addsign",
                "--define",
                f"_gpg_name {fingerprint}",
                "--define",
                f"_gpg_path {self.keys.home}",
                "--define",
                "__gpg /usr/bin/gpg",  # Debian's rpm names gpg2, which Debian does not ship
                "--define",
                "_gpg_sign_cmd_extra_args --batch --pinentry-mode loopback --passphrase ''",
                *map(str, rpms),
            ],
            stdin=subprocess.DEVNULL,
        )

    def sign_metadata(self, repo: str, fingerprint: str) -> None:
        """(Re)write the repository's repomd.xml.asc, signed by `fingerprint`."""
        repomd = self.server.www / self.repos[repo].path.lstrip("/") / "repodata" / "repomd.xml"
        asc = repomd.with_name("repomd.xml.asc")
        asc.unlink(missing_ok=True)
        self.keys.detach_sign(fingerprint, repomd, asc)

    def publish_more(self, repo: str, specs: Iterable[RpmSpec]) -> None:
        """Add stand-ins to a published repository (a newer release appearing upstream), signed and indexed as the
        rest of it."""
        build = self.repos[repo]
        folder = self.server.www / build.path.lstrip("/")
        new = [build_rpm(spec, folder / "Packages") for spec in specs]
        build.specs.extend(specs)
        if build.signs_packages:
            self._sign_rpms(new, build.signer)
        self._index(repo)

    def republish_modules(self, keep: Callable[[RpmSpec], bool]) -> None:
        """Rewrite the CUDA repository's module metadata with only the streams of the packages `keep` accepts."""
        self._index("cuda", keep)

    def resign_packages(self, repo: str, fingerprint: str) -> None:
        """Sign the repository's packages with another key and rebuild its metadata (a package signed by a key the
        script did not pin)."""
        build = self.repos[repo]
        folder = self.server.www / build.path.lstrip("/")
        rpms = sorted((folder / "Packages").glob("*.rpm"))
        _run(["rpmsign", "--delsign", *map(str, rpms)])
        self._sign_rpms(rpms, fingerprint)
        self._index(repo)

    def archive_repo_file(self) -> tuple[str, str]:
        """(path, text) of the repository file for the distribution's own (stand-in) repository."""
        text = (
            "# STAND-IN for the distribution's own repositories, written by bakegen's tests\n"
            f"[{ARCHIVE_REPO_ID}]\nname=Distribution packages (stand-in)\n"
            f"baseurl={self.server.base_url}/{ARCHIVE}\nenabled=1\ngpgcheck=1\ngpgkey=file://{ARCHIVE_KEY}\n"
        )
        if self.tooling.name == "zypper":
            return f"/etc/zypp/repos.d/{ARCHIVE_REPO_ID}.repo", text + "autorefresh=1\ntype=rpm-md\n"
        return f"/etc/yum.repos.d/{ARCHIVE_REPO_ID}.repo", text

    def os_release(self) -> str:
        version = str(self.world["_os_version_id"])
        os_id = self.distro.os_id
        major = version.split(".")[0]
        platform = {"amzn": "al2023", "fedora": f"f{major}", "sles": ""}.get(os_id, f"el{major}")
        return (
            f'NAME="{self.distro.name}"\nID="{os_id}"\nVERSION_ID="{version}"\n'
            + (f'PLATFORM_ID="platform:{platform}"\n' if platform else "")
            + f'PRETTY_NAME="{self.distro.name} (bakegen STAND-IN root filesystem)"\n'
        )


# ---------------------------------------------------------------------------------------------------------
# the target


def rootfs_tarball(tooling: Tooling) -> Path:
    return build_rootfs(tooling.release, extra_packages=tooling.packages)


class RpmTarget:
    """A fresh root filesystem dressed as the world's distribution, with its image's packages installed by dnf."""

    def __init__(self, world: RpmWorld, workdir: Path) -> None:
        self.world = world
        self.tooling = world.tooling
        self.chroot = Chroot(rootfs_tarball(world.tooling), workdir=workdir)

    def __enter__(self) -> RpmTarget:
        self.chroot.__enter__()
        try:
            self._dress()
        except BaseException:
            self.chroot.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.chroot.close()

    def _dress(self) -> None:
        c, world, tooling = self.chroot, self.world, self.tooling
        for path in ("etc/os-release", "usr/lib/os-release"):  # Debian's is a link to usr/lib/os-release
            (c.root / path).unlink(missing_ok=True)
        c.write_text("/etc/os-release", world.os_release())
        c.write_text("/etc/rpm/macros", f"# the target's rpm database (not Debian's)\n%_dbpath {tooling.dbpath}\n")
        if tooling.dbpath != "/var/lib/rpm":
            (c.root / "var/lib/rpm").mkdir(parents=True, exist_ok=True)
            (c.root / "var/lib/rpm").rmdir()
            (c.root / "var/lib/rpm").symlink_to("../../usr/lib/sysimage/rpm")
        c.write_text(ARCHIVE_KEY, world.keys.key(ARCHIVE).armored.decode())
        c.write_text(*world.archive_repo_file())
        c.write_text("/usr/bin/dracut", (STANDIN_FILES / "dracut").read_text(), mode=0o755)
        c.install_ca(world.server.ca_pem, "bakegen-standin")
        kernel = world.image_kernel
        c.write_text(f"/boot/vmlinuz-{kernel}", f"STAND-IN kernel image {kernel}\n")
        c.write_text(f"/boot/initramfs-{kernel}.img", f"STAND-IN initramfs for {kernel}\n")
        (c.root / "usr/lib/modules" / kernel).mkdir(parents=True, exist_ok=True)
        past = 1_600_000_000  # the image was built long before this run
        for path in (f"/boot/vmlinuz-{kernel}", f"/boot/initramfs-{kernel}.img"):
            os.utime(c.host_path(path), (past, past))
        steps = [f"mkdir -p {tooling.dbpath} && rpm --initdb"]
        if tooling.name == "dnf4":
            c.write_text("/etc/dnf/dnf.conf", DNF_CONF)
            steps.append(
                f"mkdir -p {STANDIN_PLUGIN_DIR} && cd {PLUGIN_DIR}"
                f" && mv {' '.join(NOT_ON_TARGET_PLUGINS)} {STANDIN_PLUGIN_DIR}/ && cd /"
                " && rm -f /etc/dnf/plugins/versionlock.* /etc/dnf/plugins/local.conf"
                " /etc/dnf/plugins/post-transaction-actions.conf"
            )
        elif tooling.name == "dnf5":
            c.write_text("/etc/dnf/dnf.conf", "[main]\n")
            # Debian's libdnf5 ships the local plugin, a package of its own on Fedora that images do not have.
            c.write_text("/etc/dnf/libdnf5-plugins/local.conf", "[main]\nname = local\nenabled = 0\n")
            (c.root / "usr/bin/dnf").symlink_to("dnf5")  # as Fedora's dnf5 package links it
        image_packages = [
            *sorted(world.world["_installed"]),
            RELEASE_PACKAGE.get(world.distro.os_id, "system-release"),
            "bash",
        ]
        steps += [f"rpm --import {ARCHIVE_KEY}", f"{tooling.install} {' '.join(image_packages)}"]
        c.run(" && ".join(steps))
        c.run("zypper --quiet clean --all" if tooling.name == "zypper" else f"{tooling.name.rstrip('4')} -q clean all")

    def run_script(
        self, *args: str, script: str | None = None, timeout: float = 900
    ) -> subprocess.CompletedProcess[str]:
        """Run the world's script (or SCRIPT, another one generated for it) with ARGS."""
        c = self.chroot
        c.write_text(SCRIPT, script or self.world.script, mode=0o755)
        started = time.monotonic()
        result = c.run(["/bin/bash", SCRIPT, *args], check=False, timeout=timeout)
        result.elapsed = time.monotonic() - started  # type: ignore[attr-defined]
        return result

    def start_script(self) -> subprocess.Popen[str]:
        """The script started in the background, in a process group of its own (for interrupting it)."""
        self.chroot.write_text(SCRIPT, self.world.script, mode=0o755)
        return self.chroot.start(["/bin/bash", SCRIPT])

    def query(self, cmd: str) -> str:
        return self.chroot.run(cmd).stdout

    def installed(self) -> dict[str, str]:
        """name -> EPOCH:VERSION-RELEASE of every package in rpm's database (keys included)."""
        out = self.query("rpm -qa --qf '%{NAME} %{EPOCHNUM}:%{VERSION}-%{RELEASE}\\n'")
        return dict(line.split(" ", 1) for line in out.splitlines() if line)
