"""Build the NVIDIA container-toolkit .debs described in packages.toml with dpkg-deb: the real toolkit (built
from NVIDIA's source by tests/support/toolkit/) and the stand-ins for libnvidia-container."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support import toolkit

HERE = Path(__file__).resolve().parent
FILES = HERE / "files"
# Fixed timestamps make the .debs (and so the repository's hashes) reproducible.
SOURCE_DATE_EPOCH = "1735689600"


@dataclass(frozen=True)
class PackageSpec:
    name: str
    summary: str
    depends: tuple[str, ...]
    files: dict[str, str]
    real: bool = False


@dataclass(frozen=True)
class StandinSpec:
    versions: tuple[str, ...]
    architectures: tuple[str, ...]
    maintainer: str
    packages: tuple[PackageSpec, ...]


def load_spec(path: Path = HERE / "packages.toml") -> StandinSpec:
    data = tomllib.loads(path.read_text())
    packages = tuple(
        PackageSpec(
            name=name,
            summary=p["summary"],
            depends=tuple(p["depends"]),
            files=dict(p.get("files", {})),
            real=bool(p.get("real", False)),
        )
        for name, p in data["packages"].items()
    )
    return StandinSpec(
        versions=tuple(data["versions"]),
        architectures=tuple(data["architectures"]),
        maintainer=data["maintainer"],
        packages=packages,
    )


def _substitute(text: str, package: str, version: str) -> str:
    upstream = version.rsplit("-", 1)[0]
    return text.replace("@UPSTREAM_VERSION@", upstream).replace("@VERSION@", version).replace("@PACKAGE@", package)


def _control(spec: StandinSpec, pkg: PackageSpec, version: str, arch: str, installed_kib: int) -> str:
    fields = [
        f"Package: {pkg.name}",
        f"Version: {version}",
        f"Architecture: {arch}",
        f"Maintainer: {spec.maintainer}",
        f"Installed-Size: {installed_kib}",
    ]
    if pkg.depends:
        fields.append("Depends: " + ", ".join(d.format(version=version) for d in pkg.depends))
    fields += ["Section: utils", "Priority: optional"]
    if pkg.real:
        fields += [
            f"Description: {pkg.summary}",
            f" NVIDIA Container Toolkit {toolkit.SOURCE_VERSION} built by bakegen's tests from NVIDIA's public",
            f" source (Apache-2.0) and packaged as NVIDIA's packaging/debian lays it out, as version {version}.",
            " Not a build by NVIDIA.",
        ]
    else:
        fields += [
            f"Description: STAND-IN for NVIDIA's {pkg.name}, built by bakegen's tests; not NVIDIA software",
            f' Imitates "{pkg.summary}" from the NVIDIA container-toolkit apt',
            " repository for bakegen's provisioning tests. Contains no NVIDIA code.",
        ]
    return "\n".join(fields) + "\n"


def _stage_standin(pkg: PackageSpec, version: str, stage: Path) -> int:
    contents: dict[str, tuple[str, int]] = {
        f"usr/share/doc/{pkg.name}/README.standin": ("README.standin", 0o644),
        **{dest: (src, 0o755) for dest, src in pkg.files.items()},
    }
    size = 0
    for dest, (src, mode) in sorted(contents.items()):
        target = stage / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        text = _substitute((FILES / src).read_text(), pkg.name, version)
        target.write_text(text)
        target.chmod(mode)
        size += len(text.encode())
    return size


def _stage_real(pkg: PackageSpec, version: str, arch: str, stage: Path) -> int:
    """NVIDIA's files and maintainer scripts for pkg; /etc files are conffiles, as debhelper marks them."""
    layout = toolkit.layout(pkg.name, version.rsplit("-", 1)[0], arch)
    size = 0
    for dest, (source, mode) in sorted(layout.files.items()):
        target = stage / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        target.chmod(mode)
        size += target.stat().st_size
    for kind, script in layout.scripts.items():
        target = stage / "DEBIAN" / kind
        target.write_text(script.read_text().replace("#DEBHELPER#", ""))
        target.chmod(0o755)
    conffiles = sorted(f"/{dest}" for dest in layout.files if dest.startswith("etc/"))
    if conffiles:
        (stage / "DEBIAN/conffiles").write_text("".join(f"{path}\n" for path in conffiles))
    return size


def build_deb(spec: StandinSpec, pkg: PackageSpec, version: str, arch: str, out_dir: Path) -> Path:
    """Stage one package in a temporary tree and run dpkg-deb --build on it."""
    out = out_dir / f"{pkg.name}_{version}_{arch}.deb"
    with tempfile.TemporaryDirectory(prefix="bakegen-standin-") as tmp:
        stage = Path(tmp)
        stage.chmod(0o755)
        (stage / "DEBIAN").mkdir(mode=0o755)
        size = _stage_real(pkg, version, arch, stage) if pkg.real else _stage_standin(pkg, version, stage)
        for directory in (p for p in stage.rglob("*") if p.is_dir()):
            directory.chmod(0o755)
        (stage / "DEBIAN/control").write_text(_control(spec, pkg, version, arch, max(1, (size + 1023) // 1024)))
        env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(stage), str(out)],
            check=True,
            capture_output=True,
            env=env,
        )
    return out


def build_debs(
    out_dir: Path, *, versions: Sequence[str] | None = None, architectures: Sequence[str] | None = None
) -> list[Path]:
    """Build every package x version x architecture into `out_dir`; return the .deb paths."""
    spec = load_spec()
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        build_deb(spec, pkg, version, arch, out_dir)
        for arch in (architectures or spec.architectures)
        for version in (versions or spec.versions)
        for pkg in spec.packages
    ]
