"""Cached, bootable Debian VM images for the QEMU test harness (see tests/vm_harness.md).

An image is an mmdebstrap tree made into an ext4 file system without loop devices
(`mkfs.ext4 -d`), stored as a qcow2 base, plus the kernel and initrd copied out of the
tree for direct kernel boot. Runs never write to the base: tests/support/vm.py boots
per-run qcow2 overlays on top of it.

The image carries two harness units (files under GUEST_FILES):
- bakegen-results.service records each boot onto the results disk at shutdown;
- bakegen-autopoweroff.path/.service power off once cloud-init is done, when the kernel
  command line has bakegen.autopoweroff=1 and cloud-init did not schedule a reboot.
Both do nothing unless the kernel command line has bakegen.boot=N, so a later Packer
bake that starts from this base behaves like a plain cloud image.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from tests.support.rootfs import default_cache_dir

Release = Literal["bookworm", "trixie"]
RELEASES: tuple[Release, ...] = get_args(Release)

# Bump when the build recipe changes in a way the cache key does not see.
RECIPE_VERSION = 1

MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
COMPONENTS = ("main", "contrib", "non-free", "non-free-firmware")
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
ROOT_LABEL = "bakegen-root"
RESULTS_LABEL = "BAKEGEN"
IMAGE_SIZE = "4G"  # cloud-init's resizefs grows the file system to the overlay's size

# What a Debian cloud image has that matters here. Recommends are not installed.
PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "cloud-init",
    "cloud-guest-utils",
    "linux-image-cloud-{arch}",
    "initramfs-tools",
    "ifupdown",
    "isc-dhcp-client",
    "netbase",
    "iproute2",
    "ca-certificates",
    "curl",
    "gnupg",
    "python3",
    "openssh-server",
    "sudo",
    "procps",
    "less",
    "kmod",
    "e2fsprogs",
    "lsb-release",
)

# Debian's architecture name -> the serial console its QEMU machine gives the kernel.
SERIAL_CONSOLE = {"amd64": "ttyS0", "arm64": "ttyAMA0"}


def packages(arch: str) -> tuple[str, ...]:
    return tuple(p.format(arch=arch) for p in PACKAGES)


BUILD_TIMEOUT_S = 1800
TOOL_TIMEOUT_S = 600

# ---------------------------------------------------------------------------
# Files the image ships (path in the guest -> content). Part of the cache key.
# ---------------------------------------------------------------------------

_RESULTS_SH = r"""#!/bin/sh
# bakegen test harness: record this boot (installed by tests/support/vm_image.py).
#   results.sh start  - mark boot N as started (boot-N/started.txt)
#   results.sh stop   - at shutdown: copy this boot's evidence into boot-N/
# N comes from bakegen.boot=N on the kernel command line; without it, do nothing.
# Target: the vfat disk labelled BAKEGEN, else /var/lib/bakegen-harness/results/.
set -u
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
boot=$(sed -n 's/.*bakegen\.boot=\([0-9][0-9]*\).*/\1/p' /proc/cmdline)
[ -n "$boot" ] || exit 0
mnt=/run/bakegen-results
dev=$(blkid -L BAKEGEN 2>/dev/null || true)
if [ -n "$dev" ]; then
    mkdir -p "$mnt"
    mountpoint -q "$mnt" || mount -t vfat -o rw,utf8 "$dev" "$mnt" || exit 0
    out="$mnt/boot-$boot"
else
    out="/var/lib/bakegen-harness/results/boot-$boot"
fi
mkdir -p "$out"
case "${1:-}" in
start)
    {
        echo "boot=$boot"
        echo "boot_id=$(cat /proc/sys/kernel/random/boot_id)"
        echo "kernel=$(uname -r)"
        echo "uptime_s=$(cut -d' ' -f1 /proc/uptime)"
    } > "$out/started.txt"
    ;;
stop)
    jobs=$(systemctl list-jobs --no-legend 2>/dev/null || true)
    case "$jobs" in
        *reboot.target*) kind=reboot ;;
        *poweroff.target*) kind=poweroff ;;
        *halt.target*) kind=halt ;;
        *kexec.target*) kind=kexec ;;
        *) kind=unknown ;;
    esac
    echo "$kind" > "$out/shutdown.txt"
    cloud-init status --long --format json > "$out/cloud-init-status.json" 2> "$out/cloud-init-status.err"
    echo "$?" > "$out/cloud-init-status.rc"
    for f in /var/log/cloud-init.log /var/log/cloud-init-output.log /var/log/bakegen.log \
             /run/cloud-init/result.json /run/cloud-init/status.json; do
        [ -f "$f" ] && cp "$f" "$out/"
    done
    [ -d /var/lib/bakegen ] && cp -rL /var/lib/bakegen "$out/var-lib-bakegen" 2> "$out/var-lib-bakegen.err"
    systemctl --failed --no-legend --plain > "$out/failed-units.txt" 2>&1
    # What is installed, and what Docker (if any) runs with: the unit is ordered after
    # docker.service, so dockerd still answers here. Without the docker CLI (trixie splits
    # it out as docker-cli), ask dockerd's Engine API for the same information.
    dpkg-query -W -f='${Package}\t${Version}\t${db:Status-Status}\n' > "$out/packages.tsv" 2>&1
    if command -v docker > /dev/null; then
        echo cli > "$out/docker-info.source"
        timeout 60 docker info --format '{{json .}}' > "$out/docker-info.json" 2> "$out/docker-info.err"
        echo "$?" > "$out/docker-info.rc"
    elif [ -S /run/docker.sock ]; then
        echo engine-api > "$out/docker-info.source"
        curl -sS --fail --max-time 60 --unix-socket /run/docker.sock http://localhost/info \
            > "$out/docker-info.json" 2> "$out/docker-info.err"
        echo "$?" > "$out/docker-info.rc"
    fi
    journalctl -b --no-pager -o short-monotonic > "$out/journal.txt" 2>&1
    echo "uptime_s=$(cut -d' ' -f1 /proc/uptime)" > "$out/complete.txt"
    ;;
esac
sync
if [ -n "$dev" ]; then umount "$mnt" || true; fi
exit 0
"""

_AUTOPOWEROFF_SH = r"""#!/bin/sh
# bakegen test harness: power off once cloud-init is done on a boot that does not reboot.
# Runs only with bakegen.autopoweroff=1 (the unit's condition). cloud-init's power_state
# forks a cloud-init process that waits for the final stage to exit and then runs
# shutdown, so "done" alone does not say whether a reboot is coming: wait until no
# cloud-init stage process is left (or a shutdown is queued or scheduled).
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
grace=$(sed -n 's/.*bakegen\.autopoweroff_grace=\([0-9][0-9]*\).*/\1/p' /proc/cmdline)
grace=${grace:-180}
say() { echo "bakegen-autopoweroff: $*"; }
shutdown_pending() {
    [ -e /run/systemd/shutdown/scheduled ] && return 0
    systemctl list-jobs --no-legend 2>/dev/null | grep -Eq '(reboot|poweroff|halt|kexec)\.target'
}
cloud_init_busy() {
    # a stage (or its power_state child, a fork with the same command line) is alive
    pgrep -f '^(/usr/bin/python3[.0-9]* )?/usr/bin/cloud-init (init|modules|--all-stages)' > /dev/null
}
# Started by bakegen-autopoweroff.path once /run/cloud-init/result.json exists, i.e. the
# final stage has ended (no polling: polling costs a TCG guest dearly).
say "cloud-init's final stage ended: $(tr -d ' \n' < /run/cloud-init/result.json 2>/dev/null | cut -c1-300)"
i=0
while [ "$i" -lt "$grace" ] && cloud_init_busy; do
    shutdown_pending && break
    sleep 1
    i=$((i + 1))
done
sleep 2
if shutdown_pending; then
    say "a shutdown is already queued or scheduled: leaving it to cloud-init"
    exit 0
fi
say "no reboot scheduled: powering off"
exec systemctl poweroff --no-block
"""

_RESULTS_UNIT = """[Unit]
Description=bakegen test harness: record this boot on the results disk at shutdown
Documentation=file:/usr/local/lib/bakegen-harness/results.sh
# Started early in multi-user.target and never ordered after cloud-final (that is an
# ordering cycle): being stopped late is what matters. Its ExecStop runs during
# shutdown, after cloud-init's power_state has fired, before file systems go away.
After=local-fs.target systemd-journald.service docker.service containerd.service
ConditionKernelCommandLine=bakegen.boot

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/lib/bakegen-harness/results.sh start
ExecStop=/usr/local/lib/bakegen-harness/results.sh stop
TimeoutStartSec=120
TimeoutStopSec=300

[Install]
WantedBy=multi-user.target
"""

_AUTOPOWEROFF_PATH = """[Unit]
Description=bakegen test harness: power off once cloud-init is done (bakegen.autopoweroff=1)
Documentation=file:/usr/local/lib/bakegen-harness/autopoweroff.sh
ConditionKernelCommandLine=bakegen.autopoweroff=1

[Path]
# cloud-init writes result.json when its final stage ends (22.4 and 25.1 alike)
PathExists=/run/cloud-init/result.json
Unit=bakegen-autopoweroff.service

[Install]
WantedBy=paths.target
"""

_AUTOPOWEROFF_UNIT = """[Unit]
Description=bakegen test harness: power off unless cloud-init scheduled a reboot
Documentation=file:/usr/local/lib/bakegen-harness/autopoweroff.sh
ConditionKernelCommandLine=bakegen.autopoweroff=1

[Service]
# Started by bakegen-autopoweroff.path, never ordered against cloud-init (no cycle can
# form). RemainAfterExit: once run it stays active, so the path unit does not re-trigger it.
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/lib/bakegen-harness/autopoweroff.sh
TimeoutStartSec=600
# Stopped by the reboot it was waiting for: not a failure (oneshot is strict by default).
SuccessExitStatus=SIGTERM
StandardOutput=journal+console
"""

GUEST_FILES: dict[str, tuple[str, int]] = {
    "/usr/local/lib/bakegen-harness/results.sh": (_RESULTS_SH, 0o755),
    "/usr/local/lib/bakegen-harness/autopoweroff.sh": (_AUTOPOWEROFF_SH, 0o755),
    "/etc/systemd/system/bakegen-results.service": (_RESULTS_UNIT, 0o644),
    "/etc/systemd/system/bakegen-autopoweroff.path": (_AUTOPOWEROFF_PATH, 0o644),
    "/etc/systemd/system/bakegen-autopoweroff.service": (_AUTOPOWEROFF_UNIT, 0o644),
    "/etc/cloud/cloud.cfg.d/01_bakegen_harness.cfg": (
        "# bakegen test harness: only the NoCloud seed, no metadata probes\ndatasource_list: [ NoCloud, None ]\n",
        0o644,
    ),
    "/etc/default/locale": ("LANG=C.UTF-8\n", 0o644),
    "/etc/fstab": (f"LABEL={ROOT_LABEL} / ext4 rw,discard,errors=remount-ro 0 1\n", 0o644),
    "/etc/hostname": ("debian\n", 0o644),
    "/etc/network/interfaces": (
        "# interfaces(5); cloud-init writes the NIC's stanza under interfaces.d\n"
        "source /etc/network/interfaces.d/*\n\n"
        "auto lo\niface lo inet loopback\n",
        0o644,
    ),
}

# Run inside the tree (mmdebstrap customize hook, with /proc and /dev mounted).
_CUSTOMIZE_SH = """set -eu
rm -f /etc/apt/sources.list
update-ca-certificates
systemctl enable "serial-getty@$1.service" bakegen-results.service bakegen-autopoweroff.path
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id /etc/resolv.conf /etc/ssh/ssh_host_*
apt-get clean
rm -rf /var/lib/apt/lists/*
"""


def sources_deb822(release: Release) -> str:
    components = " ".join(COMPONENTS)
    return (
        f"Types: deb\nURIs: {MIRROR}\nSuites: {release} {release}-updates\n"
        f"Components: {components}\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        f"Types: deb\nURIs: {SECURITY_MIRROR}\nSuites: {release}-security\n"
        f"Components: {components}\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )


@dataclass(frozen=True)
class VmImage:
    """A cached base image: never boot `base` directly, boot an overlay on it."""

    release: Release
    key: str
    base: Path
    kernel: Path
    initrd: Path
    kernel_version: str
    arch: str = "amd64"  # Debian's name

    @property
    def directory(self) -> Path:
        return self.base.parent


class VmImageError(RuntimeError):
    """The image could not be built (the message names the failing step)."""


def host_ca_certs() -> list[Path]:
    return sorted(HOST_CA_DIR.rglob("*.crt")) if HOST_CA_DIR.is_dir() else []


def cache_key(release: Release, ca_certs: Sequence[Path], arch: str = "amd64") -> str:
    """Release + arch + package list + CA contents + the files and recipe the image ships."""
    digest = hashlib.sha256()
    recipe = {
        "recipe": RECIPE_VERSION,
        "release": release,
        "packages": sorted(packages(arch)),
        "components": COMPONENTS,
        "guest_files": {path: [text, mode] for path, (text, mode) in sorted(GUEST_FILES.items())},
        "customize": _CUSTOMIZE_SH,
        "size": IMAGE_SIZE,
    }
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    for cert in ca_certs:
        digest.update(b"\0ca\0" + cert.read_bytes())
    return f"{release}-{digest.hexdigest()[:16]}" if arch == "amd64" else f"{release}-{arch}-{digest.hexdigest()[:16]}"


def build_image(
    release: Release,
    cache_dir: Path | None = None,
    extra_ca: Sequence[Path] = (),
    arch: str = "amd64",
) -> VmImage:
    """Return the cached image for `release`, building it first if needed (a few minutes).

    The host's /usr/local/share/ca-certificates/*.crt and `extra_ca` (PEM files) are
    trusted in the guest. Concurrent callers wait on a lock instead of building twice.
    """
    if release not in RELEASES:
        raise VmImageError(f"{release!r} is not a supported release (one of {', '.join(RELEASES)})")
    if arch not in SERIAL_CONSOLE:
        raise VmImageError(f"{arch!r} is not a supported architecture (one of {', '.join(SERIAL_CONSOLE)})")
    certs = host_ca_certs() + [Path(p) for p in extra_ca]
    for cert in certs:
        if not cert.is_file():
            raise VmImageError(f"extra CA certificate {cert} does not exist")
    root = (cache_dir or default_cache_dir()) / "vm-images"
    root.mkdir(parents=True, exist_ok=True)
    key = cache_key(release, certs, arch)
    final = root / key
    with _locked(root / f".{key}.lock"):
        if not (final / "manifest.json").is_file():
            _build(release, certs, final, arch)
    return load_image(final)


def load_image(directory: Path) -> VmImage:
    manifest = json.loads((directory / "manifest.json").read_text())
    return VmImage(
        release=manifest["release"],
        key=manifest["key"],
        base=directory / "base.qcow2",
        kernel=directory / "vmlinuz",
        initrd=directory / "initrd.img",
        kernel_version=manifest["kernel_version"],
        arch=manifest.get("arch", "amd64"),
    )


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(cmd: Sequence[str | Path], step: str, timeout_s: float = TOOL_TIMEOUT_S) -> None:
    try:
        proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise VmImageError(f"{step}: timed out after {timeout_s:.0f} s") from exc
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise VmImageError(f"{step}: exit {proc.returncode}\n{tail}")


def _build(release: Release, certs: Sequence[Path], final: Path, arch: str = "amd64") -> None:
    if os.geteuid() != 0:
        raise VmImageError("building a VM image needs root (mmdebstrap --mode=root, mkfs.ext4 -d)")
    work = Path(tempfile.mkdtemp(prefix=f".build-{final.name}-", dir=final.parent))
    try:
        stage = work / "stage"
        _stage_files(stage, release, certs)
        tree = work / "tree"
        _mmdebstrap(release, stage, tree, work / "customize.sh", arch)
        out = work / "out"
        out.mkdir()
        kernel_version = _copy_boot_files(tree, out)
        raw = work / "root.raw"
        _run(["truncate", "-s", IMAGE_SIZE, raw], "truncate")
        _run(
            ["mkfs.ext4", "-F", "-q", "-L", ROOT_LABEL, "-d", tree, "-E", "root_owner=0:0", raw],
            "mkfs.ext4 -d",
        )
        _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, out / "base.qcow2"], "qemu-img convert")
        manifest = {
            "release": release,
            "arch": arch,
            "key": final.name,
            "kernel_version": kernel_version,
            "packages": list(packages(arch)),
            "ca_certs": [str(c) for c in certs],
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        out.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _stage_files(stage: Path, release: Release, certs: Sequence[Path]) -> None:
    files = dict(GUEST_FILES)
    files["/etc/apt/sources.list.d/debian.sources"] = (sources_deb822(release), 0o644)
    for guest_path, (text, mode) in files.items():
        target = stage / guest_path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)
    ca_dir = stage / "usr/local/share/ca-certificates/bakegen"
    ca_dir.mkdir(parents=True, exist_ok=True)
    for index, cert in enumerate(certs):
        # update-ca-certificates only picks up *.crt; the index keeps equal names apart
        (ca_dir / f"{index:02d}-{cert.stem}.crt").write_bytes(cert.read_bytes())


def _mmdebstrap(release: Release, stage: Path, tree: Path, customize: Path, arch: str = "amd64") -> None:
    customize.write_text(_CUSTOMIZE_SH)
    components = " ".join(COMPONENTS)
    _run(
        [
            "mmdebstrap",
            "--variant=apt",
            "--mode=root",
            "--format=directory",
            f"--architectures={arch}",  # another arch's maintainer scripts run through qemu-user (binfmt_misc)
            '--aptopt=APT::Install-Recommends "false"',
            f"--include={','.join(packages(arch))}",
            f"--customize-hook=sync-in {stage} /",
            f"--customize-hook=upload {customize} /tmp/bakegen-customize.sh",
            f'--customize-hook=chroot "$1" sh /tmp/bakegen-customize.sh {SERIAL_CONSOLE[arch]}',
            '--customize-hook=rm -f "$1/tmp/bakegen-customize.sh"',
            release,
            tree,
            f"deb {MIRROR} {release} {components}",
            f"deb {MIRROR} {release}-updates {components}",
            f"deb {SECURITY_MIRROR} {release}-security {components}",
        ],
        f"mmdebstrap {release}",
        timeout_s=BUILD_TIMEOUT_S,
    )


def _copy_boot_files(tree: Path, out: Path) -> str:
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise VmImageError(f"no kernel under {tree / 'boot'}")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    initrd = tree / "boot" / f"initrd.img-{version}"
    if not initrd.is_file():
        raise VmImageError(f"no initrd for kernel {version}")
    shutil.copyfile(kernels[-1], out / "vmlinuz")
    shutil.copyfile(initrd, out / "initrd.img")
    return version
