"""The real NVIDIA Container Toolkit, built from its public source for the tests' mirrors.

nvidia-container-toolkit-1.18.1.tar.gz beside this file is NVIDIA's v1.18.1 source with its Go modules vendored
(Apache-2.0; origin and checksum in ORIGIN.md). It is built offline with Go from Debian's archive (tests/setup.sh
unpacks sid's golang-1.26 into the cache) and packaged as NVIDIA's packaging/debian lays it out: the same
package names, files, dependencies and maintainer scripts. What stays a stand-in is libnvidia-container
(`libnvidia-container1`, `libnvidia-container-tools`): C, and its build downloads other sources.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.rootfs import default_cache_dir

HERE = Path(__file__).resolve().parent
TARBALL = HERE / "nvidia-container-toolkit-1.18.1.tar.gz"
TARBALL_SHA256 = "2fd429f082e80ddba2c8b809cec56ac1aaf96970ded474cc81b9a6158ec8574e"
SOURCE_VERSION = "1.18.1"
GO_PACKAGE = "golang-1.26"
MODULE = "github.com/NVIDIA/nvidia-container-toolkit"
# The commands NVIDIA's two packages ship (packaging/debian/*.install).
COMMANDS = ("nvidia-ctk", "nvidia-container-runtime", "nvidia-cdi-hook", "nvidia-container-runtime-hook")
GOARCH = {"amd64": "amd64", "arm64": "arm64"}


class ToolkitBuildError(RuntimeError):
    """The toolkit could not be built here (no Go toolchain, no C compiler for the architecture...)."""


def go_root() -> Path:
    root = default_cache_dir() / "go-1.26" / "root" / "usr" / "lib" / "go-1.26"
    if not (root / "bin" / "go").is_file():
        raise ToolkitBuildError(f"no Go toolchain at {root}: run tests/setup.sh ({GO_PACKAGE} from Debian sid)")
    return root


def _checked_tarball() -> Path:
    digest = hashlib.sha256(TARBALL.read_bytes()).hexdigest()
    if digest != TARBALL_SHA256:
        raise ToolkitBuildError(f"{TARBALL.name}: sha256 {digest}, expected {TARBALL_SHA256}")
    return TARBALL


def source_tree() -> Path:
    """The unpacked source, once per tarball checksum."""
    tree = default_cache_dir() / "toolkit" / f"src-{TARBALL_SHA256[:16]}"
    top = tree / f"nvidia-container-toolkit-{SOURCE_VERSION}"
    if (top / "go.mod").is_file():
        return top
    tree.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=tree.parent, prefix=".src-"))
    try:
        with tarfile.open(_checked_tarball()) as archive:
            archive.extractall(staging, filter="data")
        shutil.rmtree(tree, ignore_errors=True)
        os.replace(staging, tree)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return top


def _c_compiler(arch: str) -> str:
    native = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine)
    compiler = "gcc" if arch == native else {"arm64": "aarch64-linux-gnu-gcc", "amd64": "x86_64-linux-gnu-gcc"}[arch]
    if shutil.which(compiler) is None:
        raise ToolkitBuildError(f"no C compiler for {arch} ({compiler}): the toolkit needs cgo")
    return compiler


def binaries(version: str, arch: str) -> Path:
    """A folder with the toolkit's commands for `arch`, reporting `version` (the upstream part of a package
    version) in `nvidia-ctk --version`; built once per source, version and architecture."""
    out = default_cache_dir() / "toolkit" / f"bin-{TARBALL_SHA256[:16]}-{version}-{arch}"
    if all((out / name).is_file() for name in COMMANDS):
        return out
    goroot, compiler, src = go_root(), _c_compiler(arch), source_tree()
    env = {
        **os.environ,
        "GOROOT": str(goroot),
        "PATH": f"{goroot / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "GOTOOLCHAIN": "local",
        "GOPROXY": "off",
        "GOFLAGS": "-mod=vendor",
        "GOCACHE": str(default_cache_dir() / "toolkit" / "gocache"),
        "GOPATH": str(default_cache_dir() / "toolkit" / "gopath"),
        "CGO_ENABLED": "1",
        "GOOS": "linux",
        "GOARCH": GOARCH[arch],
        "CC": compiler,
    }
    ldflags = f"-s -w -X {MODULE}/internal/info.version={version} -X {MODULE}/internal/info.gitCommit=v{SOURCE_VERSION}"
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=".bin-"))
    try:
        result = subprocess.run(
            ["go", "build", "-trimpath", "-ldflags", ldflags, "-o", f"{staging}/", *[f"./cmd/{c}" for c in COMMANDS]],
            cwd=src,
            env=env,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise ToolkitBuildError(f"go build failed for {arch}:\n{result.stderr[-3000:]}")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


@dataclass(frozen=True)
class PackageLayout:
    """What NVIDIA's packaging/debian puts in one package: files (destination -> (source, mode)) and the
    maintainer scripts, read from the source tree."""

    files: dict[str, tuple[Path, int]]
    scripts: dict[str, Path]


def layout(package: str, version: str, arch: str) -> PackageLayout:
    """NVIDIA's layout of `package` (nvidia-container-toolkit or nvidia-container-toolkit-base)."""
    src, bin_dir = source_tree(), binaries(version, arch)
    debian = src / "packaging" / "debian"
    locations = {name: bin_dir / name for name in COMMANDS}
    locations.update((p.name, p) for p in (src / "deployments" / "systemd").iterdir())
    files: dict[str, tuple[Path, int]] = {}
    for line in (debian / f"{package}.install").read_text().splitlines():
        if not line.strip():
            continue
        name, folder = line.split()
        source = locations[name]
        executable = folder.rstrip("/") == "/usr/bin"
        files[f"{folder.strip('/')}/{name}"] = (source, 0o755 if executable else 0o644)
    scripts = {kind: debian / f"{package}.{kind}" for kind in ("postinst", "postrm", "prerm", "preinst")}
    return PackageLayout(files, {kind: path for kind, path in scripts.items() if path.is_file()})
