"""Boot a cached Debian image in QEMU with a NoCloud seed, as a cloud would, and read the
results from outside the guest (no SSH). Usage, design and timings: tests/vm_harness.md.

Each guest reboot ends QEMU (-no-reboot); the harness starts it again on the same
overlay, so a run is a sequence of boots. A boot ends in one of BootEnd; the run stops
at the first boot that does not end in a reboot, or at the boot bound, or at the timeout.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import enum
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Literal

from tests.support.vm_image import RESULTS_LABEL, SERIAL_CONSOLE, VmImage

UNTIL_DONE: Literal["until-done"] = "until-done"
DEFAULT_MAX_BOOTS = 6
# Kernel panics before init under QEMU's software emulation (seen once: int3 in sched_clock_cpu at 3.5 s) are booted
# again this many times per run.
EARLY_PANIC_RETRIES = 1
TOOL_TIMEOUT_S = 300
POWERDOWN_GRACE_S = 150  # after a timeout: ACPI power button, then this long before SIGKILL
RESULTS_DISK_SIZE_MB = 512
GUEST_MAC = "52:54:00:12:34:56"
GUEST_NIC = "ens2"  # the NIC is pinned to PCI slot 2, so both releases name it ens2
# cloud-init's fallback, without DHCPv6: cloud-init 25.1 (trixie) falls back to dhcp4 + dhcp6,
# and ifupdown's `inet6 dhcp` then waits minutes for a DHCPv6 server QEMU does not have.
DEFAULT_NETWORK_CONFIG = f"""\
version: 2
ethernets:
  {GUEST_NIC}:
    match:
      macaddress: "{GUEST_MAC}"
    set-name: {GUEST_NIC}
    dhcp4: true
    dhcp6: false
"""
# What to pull out of the guest's disk when a boot left no results (crash, timeout).
FORENSIC_PATHS = (
    "/var/log/cloud-init.log",
    "/var/log/cloud-init-output.log",
    "/var/log/bakegen.log",
    "/var/lib/bakegen",
    "/var/lib/cloud/data",
    "/var/log/journal",
)


class BootEnd(enum.Enum):
    """How one boot ended, as seen from outside (kernel messages on the serial console)."""

    POWEROFF = "poweroff"  # "reboot: Power down"
    REBOOT = "reboot"  # "reboot: Restarting system": the harness starts the next boot
    PANIC = "panic"  # "Kernel panic" (panic=-1 makes QEMU exit at once)
    TIMEOUT = "timeout"  # the run's deadline passed; the guest was powered down or killed
    QEMU_EXIT = "qemu-exit"  # QEMU ended without any of the above (QEMU error, triple fault)


@dataclass(frozen=True)
class CloudInitStatus:
    """`cloud-init status --long --format json` as recorded at the end of a boot."""

    status: str  # "done", "error", "running", "disabled", ...
    extended_status: str  # cloud-init >= 23.4 ("degraded done", ...); else == status
    errors: tuple[str, ...]
    recoverable_errors: Mapping[str, Sequence[str]]
    detail: str
    raw: Mapping[str, Any]

    @property
    def ok(self) -> bool:
        return self.status == "done" and not self.errors

    @classmethod
    def from_json(cls, text: str) -> CloudInitStatus:
        raw = json.loads(text)
        status = str(raw.get("status", ""))
        return cls(
            status=status,
            extended_status=str(raw.get("extended_status", status)),
            errors=tuple(str(e) for e in raw.get("errors") or ()),
            recoverable_errors=dict(raw.get("recoverable_errors") or {}),
            detail=str(raw.get("detail", "")),
            raw=raw,
        )


@dataclass(frozen=True)
class Boot:
    """One QEMU process: one guest boot, from power-on to reboot/power-off/kill."""

    number: int
    end: BootEnd
    wall_s: float
    serial_log: Path
    results_dir: Path | None  # boot-N/ as the guest wrote it (or from the disk after a crash)
    cloud_init: CloudInitStatus | None
    guest_shutdown: str | None  # what the guest's results unit saw queued: reboot, poweroff, ...
    cloud_init_finished_s: float | None  # guest uptime at cloud-init's final message
    qemu_returncode: int  # negative: QEMU was killed by that signal

    @property
    def serial_text(self) -> str:
        return self.serial_log.read_text(errors="replace") if self.serial_log.is_file() else ""

    def result(self, relpath: str) -> Path:
        if self.results_dir is None:
            raise FileNotFoundError(f"boot {self.number} left no results")
        return self.results_dir / relpath

    def read_result(self, relpath: str) -> str:
        return self.result(relpath).read_text(errors="replace")


@dataclass(frozen=True)
class VmRun:
    """Everything one boot() produced; files live under run_dir."""

    image: VmImage
    run_dir: Path
    overlay: Path
    results_disk: Path | None
    boots: tuple[Boot, ...]
    wall_s: float
    instance_id: str

    @property
    def boot_count(self) -> int:
        return len(self.boots)

    @property
    def last(self) -> Boot:
        return self.boots[-1]

    @property
    def powered_off(self) -> bool:
        """The run ended the normal way: its last boot ended in a guest power-off."""
        return bool(self.boots) and self.last.end is BootEnd.POWEROFF

    @property
    def serial_logs(self) -> list[Path]:
        return [b.serial_log for b in self.boots]

    @property
    def result_dirs(self) -> list[Path | None]:
        return [b.results_dir for b in self.boots]

    @property
    def statuses(self) -> list[CloudInitStatus | None]:
        return [b.cloud_init for b in self.boots]

    def extract_from_disk(self, guest_paths: Sequence[str], dest: Path) -> list[Path]:
        """Copy files/dirs (fnmatch patterns in the last component) out of the overlay."""
        return extract_guest_paths(self.overlay, guest_paths, dest)

    def summary(self) -> str:
        """One line per boot, for assertion messages."""
        lines = [f"run {self.run_dir} ({self.wall_s:.0f} s, {self.boot_count} boots)"]
        for b in self.boots:
            status = b.cloud_init.status if b.cloud_init else "?"
            errors = list(b.cloud_init.errors) if b.cloud_init else []
            lines.append(
                f"  boot {b.number}: {b.end.value} after {b.wall_s:.0f} s (qemu rc {b.qemu_returncode}),"
                f" guest saw {b.guest_shutdown},"
                f" cloud-init {status} {errors}, serial {b.serial_log}"
            )
        return "\n".join(lines)


class VmError(RuntimeError):
    """The harness itself failed (not the guest): a tool or QEMU could not run."""


# ---------------------------------------------------------------------------
# QEMU process bookkeeping: every QEMU we start is killed on exit, whatever happens.
# ---------------------------------------------------------------------------

_LIVE: set[subprocess.Popen[bytes]] = set()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def kill_all_vms() -> None:
    """Kill every QEMU this process started and that still runs."""
    for proc in list(_LIVE):
        if proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        _LIVE.discard(proc)


def live_vm_count() -> int:
    """QEMU processes this process started that still run (0 between boot() calls)."""
    return sum(1 for proc in _LIVE if proc.poll() is None)


atexit.register(kill_all_vms)


# ---------------------------------------------------------------------------
# Host-side helpers
# ---------------------------------------------------------------------------


def _run(
    cmd: Sequence[str | Path],
    step: str,
    *,
    env: Mapping[str, str] | None = None,
    ok_codes: Sequence[int] = (0,),
    timeout_s: float = TOOL_TIMEOUT_S,
) -> str:
    try:
        proc = subprocess.run(
            [str(c) for c in cmd],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            env=None if env is None else {**os.environ, **env},
        )
    except subprocess.TimeoutExpired as exc:
        raise VmError(f"{step}: timed out after {timeout_s:.0f} s") from exc
    if proc.returncode not in ok_codes:
        raise VmError(f"{step}: exit {proc.returncode}: {(proc.stdout + proc.stderr)[-2000:]}")
    return proc.stdout


def _qemu_opt(path: Path) -> str:
    """A path inside a QEMU -drive/-chardev option: commas are doubled."""
    return str(path).replace(",", ",,")


def meta_data(instance_id: str, hostname: str = "bakegen-vm") -> str:
    return f"instance-id: {instance_id}\nlocal-hostname: {hostname}\n"


def make_seed_iso(dest: Path, user_data: str, instance_id: str, network_config: str | None = None) -> Path:
    """NoCloud seed: an ISO 9660 volume labelled cidata with user-data and meta-data."""
    src = dest.with_suffix(".d")
    src.mkdir(parents=True, exist_ok=True)
    (src / "user-data").write_text(user_data)
    (src / "meta-data").write_text(meta_data(instance_id))
    if network_config is not None:
        (src / "network-config").write_text(network_config)
    _run(["genisoimage", "-quiet", "-output", dest, "-volid", "cidata", "-joliet", "-rock", src], "genisoimage")
    return dest


def make_results_disk(dest: Path, size_mb: int = RESULTS_DISK_SIZE_MB) -> Path:
    """An empty vfat disk (no partition table) labelled BAKEGEN."""
    _run(["mkfs.vfat", "-n", RESULTS_LABEL, "-C", dest, str(size_mb * 1024)], "mkfs.vfat")
    return dest


def make_overlay(base: Path, dest: Path, size: str) -> Path:
    _run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, dest, size], "qemu-img create overlay")
    return dest


_MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1"}


def copy_from_results_disk(disk: Path, folder: str, dest: Path) -> Path | None:
    """Copy ::/folder off the vfat disk into dest/folder with mtools (no mount). None if absent."""
    listing = _run(["mdir", "-b", "-i", disk, "::/"], "mdir", env=_MTOOLS_ENV, ok_codes=(0, 1))
    names = {line.strip().rstrip("/").removeprefix("::/") for line in listing.splitlines()}
    if folder not in names:
        return None
    dest.mkdir(parents=True, exist_ok=True)
    _run(["mcopy", "-s", "-n", "-i", disk, f"::/{folder}", f"{dest}/"], "mcopy", env=_MTOOLS_ENV)
    return dest / folder


def extract_guest_paths(disk: Path, guest_paths: Sequence[str], dest: Path) -> list[Path]:
    """Read files out of a guest disk image without booting it (e.g. after a crash).

    Converts to a sparse raw copy, replays the ext4 journal on the copy (e2fsck), then
    `debugfs rdump`. The last path component may be an fnmatch pattern. Returns what
    was copied; missing paths are skipped.
    """
    dest.mkdir(parents=True, exist_ok=True)
    raw = Path(tempfile.mkdtemp(prefix="bakegen-disk-", dir=dest)) / "disk.raw"
    try:
        _run(["qemu-img", "convert", "-O", "raw", disk, raw], "qemu-img convert to raw")
        _run(["e2fsck", "-fy", raw], "e2fsck", ok_codes=(0, 1, 2))
        copied: list[Path] = []
        for guest_path in guest_paths:
            parent, _, pattern = guest_path.rstrip("/").rpartition("/")
            for name in _debugfs_ls(raw, parent or "/"):
                if fnmatch(name, pattern):
                    _run(["debugfs", "-R", f"rdump {parent}/{name} {dest}", raw], "debugfs rdump")
                    if (dest / name).exists():
                        copied.append(dest / name)
        return copied
    finally:
        shutil.rmtree(raw.parent, ignore_errors=True)


def _debugfs_ls(raw: Path, directory: str) -> list[str]:
    # `ls -p` lines: /inode/mode/uid/gid/name/size/
    out = _run(["debugfs", "-R", f"ls -p {directory}", raw], "debugfs ls")
    names = [line.split("/")[5] for line in out.splitlines() if line.count("/") >= 6]
    return [n for n in names if n not in (".", "..")]


# ---------------------------------------------------------------------------
# Reading a finished boot
# ---------------------------------------------------------------------------

_FINISHED = re.compile(r"Cloud-init v\. \S+ finished at .*?Up ([0-9.]+) seconds")


def classify_serial(text: str) -> BootEnd | None:
    """How a boot ended according to the kernel's last words on the console."""
    if "Kernel panic" in text:
        return BootEnd.PANIC
    if "reboot: Power down" in text:
        return BootEnd.POWEROFF
    if "reboot: Restarting system" in text:
        return BootEnd.REBOOT
    return None


def cloud_init_finished_uptime(text: str) -> float | None:
    found = _FINISHED.findall(text)
    return float(found[-1]) if found else None


def read_status(results_dir: Path | None) -> CloudInitStatus | None:
    """`cloud-init status` as recorded; else derived from /run/cloud-init/result.json."""
    if results_dir is None:
        return None
    path = results_dir / "cloud-init-status.json"
    if path.is_file() and path.read_text().strip():
        return CloudInitStatus.from_json(path.read_text())
    result = results_dir / "result.json"
    if result.is_file():
        v1 = json.loads(result.read_text()).get("v1", {})
        errors = list(v1.get("errors") or [])
        derived = {"status": "error" if errors else "done", "errors": errors, "detail": "from result.json"}
        return CloudInitStatus.from_json(json.dumps(derived))
    return None


# ---------------------------------------------------------------------------
# QEMU
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class QemuConfig:
    """Machine shape. BAKEGEN_VM_ACCEL overrides the accelerator (e.g. kvm where it works)."""

    memory_mb: int = 4096
    cpus: int = 2
    accel: str = field(default_factory=lambda: os.environ.get("BAKEGEN_VM_ACCEL", "tcg,thread=multi"))
    cpu: str = "max"  # never plain `host`: QEMU aborts under this machine's KVM


# Debian's architecture name -> the QEMU system emulator and machine (arm64: the generic virt board).
QEMU_SYSTEM = {"amd64": ("qemu-system-x86_64", ()), "arm64": ("qemu-system-aarch64", ("-machine", "virt"))}


def kernel_command_line(boot_number: int, autopoweroff: bool, extra: Sequence[str] = (), console: str = "ttyS0") -> str:
    args = ["root=/dev/vda", "ro", f"console={console},115200", "panic=-1", f"bakegen.boot={boot_number}"]
    if autopoweroff:
        args.append("bakegen.autopoweroff=1")
    return " ".join([*args, *extra])


def qemu_command(
    image: VmImage,
    overlay: Path,
    seed: Path,
    results: Path | None,
    serial_log: Path,
    qmp_socket: Path,
    cmdline: str,
    config: QemuConfig,
) -> list[str]:
    binary, machine = QEMU_SYSTEM[image.arch]
    cmd = [
        binary,
        *machine,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-accel",
        config.accel,
        "-cpu",
        config.cpu,
        "-smp",
        str(config.cpus),
        "-m",
        str(config.memory_mb),
        "-kernel",
        str(image.kernel),
        "-initrd",
        str(image.initrd),
        "-append",
        cmdline,
        # order fixes the names: vda root, vdb seed, vdc results
        "-drive",
        f"file={_qemu_opt(overlay)},if=virtio,format=qcow2,discard=unmap",
        "-drive",
        f"file={_qemu_opt(seed)},if=virtio,format=raw,readonly=on",
    ]
    if results is not None:
        cmd += ["-drive", f"file={_qemu_opt(results)},if=virtio,format=raw"]
    cmd += [
        "-netdev",
        "user,id=net0",
        "-device",
        f"virtio-net-pci,netdev=net0,mac={GUEST_MAC},addr=0x2",
        "-device",
        "virtio-rng-pci",
        "-chardev",
        f"file,id=serial0,path={_qemu_opt(serial_log)}",
        "-serial",
        "chardev:serial0",
        "-qmp",
        f"unix:{_qemu_opt(qmp_socket)},server=on,wait=off",
    ]
    return cmd


def _qmp(sock_path: Path, command: str) -> bool:
    """Send one QMP command; False if QEMU is not listening (any more)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(sock_path))
            reader = sock.makefile("rb")
            reader.readline()  # greeting
            for cmd in ("qmp_capabilities", command):
                sock.sendall(json.dumps({"execute": cmd}).encode() + b"\n")
                while b'"return"' not in (line := reader.readline()) and b'"error"' not in line:
                    if not line:
                        return False
        return True
    except OSError:
        return False


@dataclass(frozen=True)
class QemuExit:
    timed_out: bool  # the deadline passed (the guest was then powered down or killed)
    returncode: int  # negative: killed by that signal


def _run_qemu(
    cmd: Sequence[str], qmp_socket: Path, deadline: float, stderr_log: Path, powerdown_grace_s: float
) -> QemuExit:
    """Run QEMU until it exits or the deadline. QEMU is gone when this returns or raises."""
    with stderr_log.open("wb") as err:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True, preexec_fn=_die_with_parent
        )
    _LIVE.add(proc)
    timed_out = False
    try:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
            # Ask nicely first (ACPI power button): the results unit still records the boot.
            if _qmp(qmp_socket, "system_powerdown"):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=powerdown_grace_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
        _LIVE.discard(proc)
    return QemuExit(timed_out=timed_out, returncode=proc.returncode)


# ---------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------


def boot(
    image: VmImage,
    user_data: str,
    *,
    meta_data_instance_id: str | None = None,
    results_disk: bool = True,
    timeout_s: float = 900,
    boots: int | Literal["until-done"] = UNTIL_DONE,
    autopoweroff: bool | None = None,
    max_boots: int = DEFAULT_MAX_BOOTS,
    run_dir: Path | None = None,
    disk_size: str = "16G",
    network_config: str | None = DEFAULT_NETWORK_CONFIG,
    kernel_args: Sequence[str] = (),
    qemu: QemuConfig | None = None,
    powerdown_grace_s: float = POWERDOWN_GRACE_S,
) -> VmRun:
    """Boot `image` with a NoCloud seed holding `user_data` until the guest stops rebooting.

    boots: an int is the most boots to run (the user-data must power off by itself, e.g.
      `power_state: {mode: poweroff}`); "until-done" runs up to `max_boots` boots with
      bakegen.autopoweroff=1: the guest powers off once cloud-init is done on a boot
      that did not schedule a reboot.
    autopoweroff: override the default (True exactly for "until-done").
    network_config: the seed's network-config (default: DHCPv4 on the one NIC); None
      leaves it out, so cloud-init falls back to its own (slow on trixie, see above).
    timeout_s: the deadline for the whole run (all boots). At the deadline the guest
      gets an ACPI power-down (so it can still record results), and SIGKILL
      `powerdown_grace_s` later.
    The run stops at the first boot that does not end in a reboot. Nothing is left
    running when this returns or raises.
    """
    limit = max_boots if boots == UNTIL_DONE else int(boots)
    if limit < 1:
        raise ValueError(f"boots must be >= 1, not {boots!r}")
    if autopoweroff is None:
        autopoweroff = boots == UNTIL_DONE
    for needed in (image.base, image.kernel, image.initrd):
        if not needed.is_file():
            raise VmError(f"image file {needed} is missing: rebuild with build_image()")
    config = qemu or QemuConfig()
    run_dir = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="bakegen-vm-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    instance_id = meta_data_instance_id or f"iid-bakegen-{uuid.uuid4().hex[:12]}"

    overlay = make_overlay(image.base, run_dir / "disk.qcow2", disk_size)
    seed = make_seed_iso(run_dir / "seed.iso", user_data, instance_id, network_config)
    results = make_results_disk(run_dir / "results.img") if results_disk else None
    results_root = run_dir / "results"
    # unix socket paths are limited to 107 bytes: keep it short
    sock_dir = Path(tempfile.mkdtemp(prefix="bkg-", dir="/tmp"))

    started = time.monotonic()
    deadline = started + timeout_s
    done: list[Boot] = []
    retries_left = EARLY_PANIC_RETRIES
    try:
        number = 0
        while number < limit:
            number += 1
            if time.monotonic() >= deadline:
                break
            boot_started = time.monotonic()
            serial_log = run_dir / f"boot-{number}.serial.log"
            cmd = qemu_command(
                image,
                overlay,
                seed,
                results,
                serial_log,
                sock_dir / "qmp.sock",
                kernel_command_line(number, autopoweroff, kernel_args, SERIAL_CONSOLE[image.arch]),
                config,
            )
            (run_dir / f"boot-{number}.qemu-cmd").write_text(" ".join(cmd) + "\n")
            qemu_exit = _run_qemu(
                cmd, sock_dir / "qmp.sock", deadline, run_dir / f"boot-{number}.qemu-stderr.log", powerdown_grace_s
            )
            record = _finish_boot(
                number, time.monotonic() - boot_started, qemu_exit, serial_log, results, overlay, results_root
            )
            if record.end is BootEnd.PANIC and retries_left and panicked_before_init(serial_log):
                # The kernel died before running anything of the image (no init, so no cloud-init and no disk
                # write): QEMU's software emulation, not a result. Kept as a log and tried once more.
                retries_left -= 1
                serial_log.rename(run_dir / f"boot-{number}.early-panic.serial.log")
                with (run_dir / "early-panics.txt").open("a") as notes:
                    notes.write(f"boot {number}: kernel panic before init after {record.wall_s:.1f} s; booted again\n")
                shutil.rmtree(results_root / f"boot-{number}", ignore_errors=True)
                number -= 1  # the same boot again
                continue
            done.append(record)
            if record.end is not BootEnd.REBOOT:
                break
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)
    return VmRun(
        image=image,
        run_dir=run_dir,
        overlay=overlay,
        results_disk=results,
        boots=tuple(done),
        wall_s=time.monotonic() - started,
        instance_id=instance_id,
    )


def panicked_before_init(serial_log: Path) -> bool:
    """A kernel panic printed before the kernel ran the initramfs' /init: nothing of the image has run."""
    serial = serial_log.read_text(errors="replace") if serial_log.is_file() else ""
    return "Kernel panic" in serial and "Run /init as init process" not in serial


def _finish_boot(
    number: int,
    wall_s: float,
    qemu_exit: QemuExit,
    serial_log: Path,
    results: Path | None,
    overlay: Path,
    results_root: Path,
) -> Boot:
    serial = serial_log.read_text(errors="replace") if serial_log.is_file() else ""
    end = classify_serial(serial) or BootEnd.QEMU_EXIT
    if qemu_exit.timed_out and end is not BootEnd.PANIC:
        end = BootEnd.TIMEOUT
    folder = f"boot-{number}"
    results_dir: Path | None = None
    if results is not None:
        results_dir = copy_from_results_disk(results, folder, results_root)
    else:
        extract_guest_paths(overlay, [f"/var/lib/bakegen-harness/results/{folder}"], results_root)
        results_dir = results_root / folder if (results_root / folder).is_dir() else None
    if results_dir is None or not (results_dir / "complete.txt").is_file():
        # The guest did not record this boot (crash, hang, kill): read its disk instead.
        forensic = results_root / folder / "from-disk"
        extract_guest_paths(overlay, FORENSIC_PATHS, forensic)
        results_dir = results_root / folder
    shutdown_file = results_dir / "shutdown.txt"
    return Boot(
        number=number,
        end=end,
        wall_s=wall_s,
        serial_log=serial_log,
        results_dir=results_dir,
        cloud_init=read_status(results_dir),
        guest_shutdown=shutdown_file.read_text().strip() if shutdown_file.is_file() else None,
        cloud_init_finished_s=cloud_init_finished_uptime(serial),
        qemu_returncode=qemu_exit.returncode,
    )
