"""Cached Debian root filesystems and a chroot to run generated provisioning in.

`build_rootfs()` runs mmdebstrap once per (release, package list, sources, host CAs) and keeps the
result as a tarball; `Chroot` unpacks a fresh copy per use and tears it down afterwards.

Inside a chroot PID 1 is not systemd (there is no /run/systemd/system) and `uname -r` is the host's
kernel: that is the image-bake case the generated scripts must handle, not a defect of the fixture.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Literal, get_args

Release = Literal["bookworm", "trixie", "sid"]
RELEASES: tuple[Release, ...] = get_args(Release)

BASE_PACKAGES: tuple[str, ...] = ("ca-certificates", "curl", "gnupg", "python3")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY = "http://deb.debian.org/debian-security"
COMPONENTS = "main contrib non-free non-free-firmware"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
# Bump when the way a tree is built changes, so stale caches are not reused.
FORMAT_VERSION = 1

CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_BIND_MOUNTS = ("proc", "sys", "dev", "dev/pts", "dev/shm")


class RootfsError(Exception):
    """A root filesystem could not be built, entered or cleaned up."""


def _argv(cmd: Sequence[str] | str) -> list[str]:
    return ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)


def _clean_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """What a command inside a root filesystem sees: nothing of the host's environment."""
    return {
        "PATH": CHROOT_PATH,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
        "TERM": "dumb",
        **(env or {}),
    }


class ChrootCommandError(subprocess.CalledProcessError):
    """A command inside the chroot failed; str() includes the tail of its output."""

    def __str__(self) -> str:
        tail = ((self.stdout or "") + (self.stderr or ""))[-4000:]
        return f"{super().__str__()}\n--- output (tail) ---\n{tail}"


def default_cache_dir() -> Path:
    """`$BAKEGEN_CACHE`, else `~/.cache/bakegen`."""
    env = os.environ.get("BAKEGEN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "bakegen"


def _reachable(url: str, timeout: float = 10.0) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except (urllib.error.URLError, OSError):
        return False


def apt_sources(release: Release, *, probe: bool = True) -> list[str]:
    """One-line apt sources for `release`; -updates and -security only if they answer."""
    lines = [f"deb {DEBIAN_MIRROR} {release} {COMPONENTS}"]
    optional = [
        (DEBIAN_MIRROR, f"{release}-updates"),
        (DEBIAN_SECURITY, f"{release}-security"),
    ]
    for base, suite in optional:
        if not probe or _reachable(f"{base}/dists/{suite}/InRelease"):
            lines.append(f"deb {base} {suite} {COMPONENTS}")
    return lines


def host_ca_certs() -> list[Path]:
    """The host's extra CA certificates (the intercepting proxy's among them)."""
    return sorted(HOST_CA_DIR.glob("*.crt")) if HOST_CA_DIR.is_dir() else []


def rootfs_key(release: Release, packages: Sequence[str], sources: Sequence[str], cas: Sequence[Path]) -> str:
    """Cache key: everything that changes the built tree."""
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "format": FORMAT_VERSION,
                "release": release,
                "packages": sorted(set(packages)),
                "sources": list(sources),
            },
            sort_keys=True,
        ).encode()
    )
    for ca in cas:
        h.update(ca.name.encode() + b"\0" + ca.read_bytes())
    return h.hexdigest()[:16]


def build_rootfs(release: Release, cache_dir: Path | None = None, *, extra_packages: Sequence[str] = ()) -> Path:
    """Return the tarball of a `release` tree, building it with mmdebstrap on a cache miss.

    Needs root and mmdebstrap. Concurrent callers for the same key wait on a lock file.
    """
    if release not in RELEASES:
        raise RootfsError(f"{release!r} is not a supported release (one of {', '.join(RELEASES)})")
    cache = cache_dir or default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    packages = sorted(set(BASE_PACKAGES) | set(extra_packages))
    sources = apt_sources(release)
    cas = host_ca_certs()
    name = f"rootfs-{release}-{rootfs_key(release, packages, sources, cas)}"
    tarball = cache / f"{name}.tar"
    with open(cache / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists():
            return tarball
        if shutil.which("mmdebstrap") is None:
            raise RootfsError("mmdebstrap is not installed (apt-get install mmdebstrap)")
        partial = cache / f"{name}.partial.tar"
        started = time.monotonic()
        _run_mmdebstrap(release, packages, sources, cas, partial)
        os.replace(partial, tarball)
        manifest = {
            "release": release,
            "packages": packages,
            "sources": sources,
            "host_cas": [ca.name for ca in cas],
            "build_seconds": round(time.monotonic() - started, 1),
        }
        (cache / f"{name}.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return tarball


def _run_mmdebstrap(
    release: Release, packages: Sequence[str], sources: Sequence[str], cas: Sequence[Path], target: Path
) -> None:
    hooks = [
        'mkdir -p "$1/usr/local/share/ca-certificates"',
        *([f"copy-in {' '.join(str(c) for c in cas)} /usr/local/share/ca-certificates/"] if cas else []),
        'chroot "$1" update-ca-certificates --fresh >/dev/null',
        'echo LANG=C.UTF-8 > "$1/etc/default/locale"',
    ]
    cmd = [
        "mmdebstrap",
        "--mode=root",
        "--variant=apt",
        "--quiet",
        f"--include={','.join(packages)}",
        '--aptopt=Acquire::Retries "3"',
        # sid's Release files as this archive serves them can be older than their Valid-Until (seen: 25 days).
        *(['--aptopt=Acquire::Check-Valid-Until "false"'] if release == "sid" else []),
        *(f"--customize-hook={hook}" for hook in hooks),
        release,
        str(target),
        *sources,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        target.unlink(missing_ok=True)
        raise RootfsError(f"mmdebstrap failed for {release} (exit {result.returncode}):\n{result.stderr[-4000:]}")


def _mount_points() -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            raw = line.split()[4]
            points.append(raw.encode().decode("unicode_escape"))
    return points


class Chroot:
    """A throwaway copy of a cached tree with /proc, /sys, /dev, /dev/pts and /dev/shm bound in.

    The copy lives on a tmpfs by default (unpacking ~230 MB takes ~0.5 s there, ~5-10 s on this
    machine's disk); pass `tmpfs=False` for work that needs more room than RAM allows.
    `block_services` installs a policy-rc.d that returns 101, so maintainer scripts do not start
    daemons (dockerd, containerd) on the host through invoke-rc.d; remove it to test otherwise.
    """

    def __init__(
        self, tarball: Path, *, workdir: Path | None = None, block_services: bool = True, tmpfs: bool = True
    ) -> None:
        self.tarball = tarball
        self._workdir = workdir
        self._block_services = block_services
        self._tmpfs = tmpfs
        self._tmp: Path | None = None
        self._mounted: list[Path] = []

    @property
    def root(self) -> Path:
        if self._tmp is None:
            raise RootfsError("chroot is not entered")
        return self._tmp / "root"

    def __enter__(self) -> Chroot:
        self._tmp = Path(tempfile.mkdtemp(prefix="bakegen-chroot-", dir=self._workdir))
        try:
            self.root.mkdir()
            if self._tmpfs:
                subprocess.run(
                    ["mount", "-t", "tmpfs", "-o", "mode=0755", "bakegen-chroot", str(self.root)],
                    check=True,
                    capture_output=True,
                )
                self._mounted.append(self.root)
            subprocess.run(
                ["tar", "-xpf", str(self.tarball), "-C", str(self.root), "--numeric-owner"],
                check=True,
                capture_output=True,
            )
            for rel in _BIND_MOUNTS:
                point = self.root / rel
                point.mkdir(parents=True, exist_ok=True)
                subprocess.run(["mount", "--bind", f"/{rel}", str(point)], check=True, capture_output=True)
                self._mounted.append(point)
            resolv = self.root / "etc/resolv.conf"
            if resolv.is_symlink() or resolv.exists():
                resolv.unlink()
            resolv.write_bytes(Path("/etc/resolv.conf").read_bytes())
            if self._block_services:
                self.write_text("/usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", mode=0o755)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Kill what still runs inside, unmount (lazily if busy), then delete the tree.

        Safe to call twice; raises (and deletes nothing) if something stays mounted."""
        if self._tmp is None:
            return
        root = self.root
        self._kill_processes_inside()
        for point in reversed(self._mounted):
            if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(point)], capture_output=True)
        self._mounted.clear()
        prefix = str(root) + "/"
        left = [p for p in _mount_points() if p == str(root) or p.startswith(prefix)]
        if left:
            # Never rmtree across a mount: that would delete the host's /dev or /sys contents.
            raise RootfsError(f"still mounted under {root}, not deleting it: {left}")
        shutil.rmtree(self._tmp)
        self._tmp = None

    def _kill_processes_inside(self) -> None:
        root = str(self.root)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            victims = []
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    if os.readlink(proc / "root") == root:
                        victims.append(int(proc.name))
                except OSError:
                    continue
            for pid in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            if not victims:
                return
            time.sleep(0.5)

    def run(
        self,
        cmd: Sequence[str] | str,
        *,
        env: Mapping[str, str] | None = None,
        timeout: float | None = 900,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` inside (a string goes through /bin/sh -c) with a clean environment."""
        argv = _argv(cmd)
        result = subprocess.run(
            ["chroot", str(self.root), *argv],
            env=_clean_env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and result.returncode != 0:
            raise ChrootCommandError(result.returncode, argv, result.stdout, result.stderr)
        return result

    def start(self, cmd: Sequence[str] | str, *, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
        """`cmd` started inside as `run` would run it, in the background and in a process group of its own (to
        interrupt it), its output and errors together on one pipe."""
        return subprocess.Popen(
            ["chroot", str(self.root), *_argv(cmd)],
            env=_clean_env(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def host_path(self, path: str) -> Path:
        """Where `path` (as seen inside) lives on the host, resolving symlinks inside the root."""
        root = self.root
        parts = list(PurePosixPath(path).parts[1:])
        current = root
        hops = 0
        while parts:
            part = parts.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                current = current.parent if current != root else root
                continue
            candidate = current / part
            if candidate.is_symlink():
                hops += 1
                if hops > 40:
                    raise RootfsError(f"too many symlinks resolving {path}")
                target = PurePosixPath(os.readlink(candidate))
                if target.is_absolute():
                    current = root
                    parts = list(target.parts[1:]) + parts
                else:
                    parts = list(target.parts) + parts
                continue
            current = candidate
        return current

    def exists(self, path: str) -> bool:
        return self.host_path(path).exists()

    def read_text(self, path: str) -> str:
        return self.host_path(path).read_text()

    def write_text(self, path: str, text: str, *, mode: int = 0o644) -> None:
        target = self.host_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def install_ca(self, pem_path: Path, name: str = "bakegen-test-ca") -> None:
        """Trust a CA inside: copy to /usr/local/share/ca-certificates and update-ca-certificates."""
        self.write_text(f"/usr/local/share/ca-certificates/{name}.crt", pem_path.read_text())
        self.run(["update-ca-certificates"])

    def package_state(self) -> dict[str, str]:
        """Installed packages (dpkg status 'installed') mapped to their versions."""
        out = self.run(["dpkg-query", "-W", "-f=${Package}\t${Version}\t${db:Status-Status}\n"])
        state: dict[str, str] = {}
        for line in out.stdout.splitlines():
            name, version, status = line.split("\t")
            if status == "installed":
                state[name] = version
        return state

    def snapshot(self, paths: Iterable[str]) -> dict[str, str | None]:
        """sha256 of each file (a directory contributes every file under it); None if missing."""
        digests: dict[str, str | None] = {}
        for path in paths:
            target = self.host_path(path)
            if target.is_dir():
                inside_dir = "/" + str(target.relative_to(self.root))
                for dirpath, _dirs, files in os.walk(target):
                    rel = os.path.relpath(dirpath, target)
                    for name in files:
                        inside = os.path.normpath(os.path.join(inside_dir, rel, name))
                        digests.update(self.snapshot([inside]))
                digests = dict(sorted(digests.items()))
            elif target.is_file():
                digests[path] = hashlib.sha256(target.read_bytes()).hexdigest()
            else:
                digests[path] = None
        return digests
