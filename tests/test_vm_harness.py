"""The QEMU harness (tests/support/vm.py): fast checks of its pieces, and real boots (`vm`)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.vm import (
    DEFAULT_NETWORK_CONFIG,
    GUEST_MAC,
    GUEST_NIC,
    BootEnd,
    CloudInitStatus,
    QemuConfig,
    classify_serial,
    cloud_init_finished_uptime,
    copy_from_results_disk,
    extract_guest_paths,
    kernel_command_line,
    live_vm_count,
    make_results_disk,
    make_seed_iso,
    panicked_before_init,
    qemu_command,
    read_status,
)
from tests.support.vm_fixtures import BootFactory, ImageFactory, vm_releases
from tests.support.vm_image import GUEST_FILES, VmImage, cache_key, sources_deb822


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


# ---------------------------------------------------------------------------
# Fast checks (no VM)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("serial", "end"),
    [
        ("...\n[   93.1] reboot: Power down\n", BootEnd.POWEROFF),
        ("...\n[   61.0] reboot: Restarting system\n", BootEnd.REBOOT),
        ("[    2.0] Kernel panic - not syncing: VFS: Unable to mount root fs\n", BootEnd.PANIC),
        ("[    5.0] Run /init as init process\n", None),
    ],
)
def test_classify_serial(serial: str, end: BootEnd | None) -> None:
    assert classify_serial(serial) is end


@pytest.mark.parametrize(
    ("serial", "early"),
    [
        # The CI run of 2026-12-01: a trixie guest under TCG died in sched_init_debug, before init.
        ("[    3.565205]  </TASK>\n[    3.566128] Kernel panic - not syncing: Fatal exception in interrupt\n", True),
        ("[    1.9] Run /init as init process\n[   40.1] Kernel panic - not syncing: Attempted to kill init!\n", False),
        ("[    1.9] Run /init as init process\n[   40.1] reboot: Power down\n", False),
    ],
    ids=["before-init", "after-init", "no-panic"],
)
def test_only_a_panic_before_init_is_booted_again(tmp_path: Path, serial: str, early: bool) -> None:
    log = tmp_path / "boot-1.serial.log"
    log.write_text(serial)
    assert panicked_before_init(log) is early


def test_cloud_init_finished_uptime() -> None:
    line = (
        "Cloud-init v. 22.4.2 finished at Sat, 29 Nov 2026 00:10:01 +0000."
        " Datasource DataSourceNoCloud [seed=/dev/vdb][dsmode=net].  Up 104.52 seconds"
    )
    assert cloud_init_finished_uptime(f"x\n{line}\n") == pytest.approx(104.52)
    assert cloud_init_finished_uptime("nothing") is None


def test_kernel_command_line() -> None:
    assert kernel_command_line(2, autopoweroff=True, extra=["quiet"]) == (
        "root=/dev/vda ro console=ttyS0,115200 panic=-1 bakegen.boot=2 bakegen.autopoweroff=1 quiet"
    )
    assert "autopoweroff" not in kernel_command_line(1, autopoweroff=False)
    assert "console=ttyAMA0,115200" in kernel_command_line(1, autopoweroff=False, console="ttyAMA0")


@pytest.mark.parametrize(("arch", "binary", "machine"), [
    ("amd64", "qemu-system-x86_64", []),
    ("arm64", "qemu-system-aarch64", ["-machine", "virt"]),  # not the emulator's default board
])  # fmt: skip
def test_qemu_command_boots_the_images_arch(arch: str, binary: str, machine: list[str], tmp_path: Path) -> None:
    files = (tmp_path / "base.qcow2", tmp_path / "vmlinuz", tmp_path / "initrd.img")
    image = VmImage("bookworm", "k", *files, "6.1", arch)
    cmd = qemu_command(image, tmp_path / "o", tmp_path / "s", None, tmp_path / "l", tmp_path / "q", "x", QemuConfig())
    assert cmd[: 1 + len(machine)] == [binary, *machine]
    assert cmd[cmd.index("-cpu") + 1] == "max"


@pytest.mark.parametrize(
    ("raw", "status", "ok"),
    [
        ('{"status": "done", "errors": [], "detail": "DataSourceNoCloud"}', "done", True),
        ('{"status": "error", "errors": ["(\'scripts_user\', RuntimeError(...))"]}', "error", False),
        (
            '{"status": "done", "extended_status": "degraded done", "errors": [],'
            ' "recoverable_errors": {"WARNING": ["x"]}}',
            "done",
            True,
        ),
    ],
)
def test_cloud_init_status_from_json(raw: str, status: str, ok: bool) -> None:
    parsed = CloudInitStatus.from_json(raw)
    assert (parsed.status, parsed.ok) == (status, ok)


def test_default_network_config_is_dhcp4_only_on_the_pinned_nic() -> None:
    config = yaml.safe_load(DEFAULT_NETWORK_CONFIG)
    nic = config["ethernets"][GUEST_NIC]
    assert (config["version"], nic["dhcp4"], nic["dhcp6"]) == (2, True, False)
    assert nic["match"]["macaddress"] == GUEST_MAC


def test_read_status_falls_back_to_result_json(tmp_path: Path) -> None:
    (tmp_path / "result.json").write_text('{"v1": {"datasource": "nocloud", "errors": ["boom"]}}')
    status = read_status(tmp_path)
    assert status is not None
    assert (status.status, status.errors) == ("error", ("boom",))
    assert read_status(tmp_path / "missing") is None


def test_cache_key_depends_on_ca_contents(tmp_path: Path) -> None:
    ca = tmp_path / "mirror.crt"
    ca.write_text("one")
    first = cache_key("bookworm", [ca])
    assert cache_key("bookworm", [ca]) == first
    ca.write_text("two")
    assert cache_key("bookworm", [ca]) != first
    assert cache_key("trixie", [ca]) != cache_key("bookworm", [ca])


def test_sources_enable_non_free() -> None:
    text = sources_deb822("trixie")
    assert "Components: main contrib non-free non-free-firmware" in text
    assert "Suites: trixie-security" in text
    assert "https://" not in text


@pytest.mark.parametrize("path", sorted(p for p in GUEST_FILES if p.endswith(".sh")))
def test_guest_scripts_pass_shellcheck(path: str) -> None:
    _need("shellcheck")
    text, _mode = GUEST_FILES[path]
    proc = subprocess.run(["shellcheck", "-s", "sh", "-"], input=text, text=True, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stdout


def test_guest_units_verify(tmp_path: Path) -> None:
    _need("systemd-analyze")
    for path, (text, _mode) in GUEST_FILES.items():
        if path.endswith((".service", ".path")):
            unit = tmp_path / Path(path).name
            # the scripts do not exist on the host: check the units, not their targets
            unit.write_text(re.sub(r"^(Exec\w+=)\S+", r"\1/bin/true", text, flags=re.M))
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(str(u) for u in tmp_path.iterdir())],
        text=True,
        capture_output=True,
        check=False,
    )
    assert "bakegen" not in proc.stderr, proc.stderr


def test_seed_iso_is_labelled_cidata(tmp_path: Path) -> None:
    _need("genisoimage", "isoinfo")
    iso = make_seed_iso(tmp_path / "seed.iso", "#cloud-config\n{}\n", "iid-test")
    info = subprocess.run(["isoinfo", "-d", "-i", str(iso)], text=True, capture_output=True, check=True)
    assert "Volume id: cidata" in info.stdout
    listing = subprocess.run(
        ["isoinfo", "-R", "-f", "-i", str(iso)], text=True, capture_output=True, check=True
    ).stdout.split()
    assert {"/user-data", "/meta-data"} <= set(listing)


def test_results_disk_roundtrip_with_mtools(tmp_path: Path) -> None:
    _need("mkfs.vfat", "mcopy", "mmd", "mdir")
    disk = make_results_disk(tmp_path / "results.img", size_mb=16)
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    (tmp_path / "status.json").write_text('{"status": "done"}')
    subprocess.run(["mmd", "-i", str(disk), "::/boot-1"], env=env, check=True)
    subprocess.run(["mcopy", "-i", str(disk), str(tmp_path / "status.json"), "::/boot-1/"], env=env, check=True)
    copied = copy_from_results_disk(disk, "boot-1", tmp_path / "out")
    assert copied is not None
    assert (copied / "status.json").read_text() == '{"status": "done"}'
    assert copy_from_results_disk(disk, "boot-2", tmp_path / "out") is None


def test_extract_guest_paths_from_qcow2(tmp_path: Path) -> None:
    _need("mkfs.ext4", "qemu-img", "debugfs", "e2fsck")
    tree = tmp_path / "tree"
    (tree / "var/log").mkdir(parents=True)
    (tree / "var/log/cloud-init.log").write_text("init\n")
    (tree / "var/log/cloud-init-output.log").write_text("output\n")
    (tree / "var/log/other.log").write_text("no\n")
    (tree / "var/lib/bakegen").mkdir(parents=True)
    (tree / "var/lib/bakegen/state").write_text("s\n")
    raw = tmp_path / "fs.raw"
    subprocess.run(["truncate", "-s", "32M", str(raw)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(raw)], check=True)
    qcow = tmp_path / "fs.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow)], check=True)
    got = extract_guest_paths(qcow, ["/var/log/cloud-init*.log", "/var/lib/bakegen", "/nope"], tmp_path / "out")
    assert sorted(p.name for p in got) == ["bakegen", "cloud-init-output.log", "cloud-init.log"]
    assert (tmp_path / "out/bakegen/state").read_text() == "s\n"
    assert not (tmp_path / "out/other.log").exists()


# ---------------------------------------------------------------------------
# Real boots (minutes each under TCG)
# ---------------------------------------------------------------------------

REBOOT_ONCE = """\
#cloud-config
bootcmd:
  - [sh, -c, 'mkdir -p /var/lib/bakegen && cat /proc/sys/kernel/random/boot_id >> /var/lib/bakegen/boots']
write_files:
  - path: /var/lib/bakegen/written-on-boot-1
    content: |
      hello from boot 1
runcmd:
  - [sh, -c, 'echo "runcmd ran on boot $(wc -l < /var/lib/bakegen/boots)" >> /var/log/bakegen.log']
power_state:
  mode: reboot
  message: bakegen harness test reboot
  # power_state is per-instance anyway; the condition makes "only boot 1" explicit
  condition: test "$(wc -l < /var/lib/bakegen/boots)" -eq 1
"""

FAILING_RUNCMD = """\
#cloud-config
runcmd:
  - [sh, -c, 'echo "failing on purpose"; exit 3']
power_state:
  mode: poweroff
"""


@pytest.mark.vm
@pytest.mark.parametrize("release", vm_releases())
def test_reboot_once_then_done(
    release: str,
    vm_image_factory: ImageFactory,
    vm_boot: BootFactory,
) -> None:
    image = vm_image_factory(release)
    run = vm_boot(image, REBOOT_ONCE, boots="until-done", timeout_s=2400)
    summary = run.summary()
    print(summary)

    assert run.boot_count == 2, summary
    first, second = run.boots
    assert (first.end, second.end) == (BootEnd.REBOOT, BootEnd.POWEROFF), summary
    assert (first.guest_shutdown, second.guest_shutdown) == ("reboot", "poweroff"), summary
    for b in run.boots:
        assert b.cloud_init is not None, summary
        assert b.cloud_init.ok, (summary, b.cloud_init.raw)
        assert "ordering cycle" not in b.read_result("journal.txt")
        assert b.read_result("failed-units.txt") == "", summary
    assert second.read_result("var-lib-bakegen/written-on-boot-1") == "hello from boot 1\n"
    assert len(second.read_result("var-lib-bakegen/boots").split()) == 2
    assert second.read_result("bakegen.log") == "runcmd ran on boot 1\n"
    assert "bakegen-autopoweroff: no reboot scheduled" in second.serial_text


@pytest.mark.vm
@pytest.mark.parametrize("release", vm_releases())
def test_failing_runcmd_shows_error(
    release: str,
    vm_image_factory: ImageFactory,
    vm_boot: BootFactory,
) -> None:
    image = vm_image_factory(release)
    run = vm_boot(image, FAILING_RUNCMD, boots=1, timeout_s=1500)
    summary = run.summary()
    print(summary)

    assert run.boot_count == 1, summary
    assert run.last.end is BootEnd.POWEROFF, summary
    status = run.last.cloud_init
    assert status is not None, summary
    assert status.status == "error", (summary, status.raw)
    assert status.errors, status.raw
    assert "failing on purpose" in run.last.read_result("cloud-init-output.log")


@pytest.mark.vm
@pytest.mark.parametrize("release", vm_releases())
def test_timeout_kills_qemu_and_reads_the_disk(
    release: str, vm_image_factory: ImageFactory, vm_boot: BootFactory
) -> None:
    image = vm_image_factory(release)
    # Killed during early boot: no results record, so the harness reads the overlay.
    run = vm_boot(image, FAILING_RUNCMD, boots=1, timeout_s=40, powerdown_grace_s=0)
    summary = run.summary()
    print(summary)

    assert run.boot_count == 1, summary
    assert run.last.end is BootEnd.TIMEOUT, summary
    assert run.last.qemu_returncode == -signal.SIGKILL, summary
    assert run.last.cloud_init is None, summary
    assert run.last.result("from-disk").is_dir(), summary
    assert live_vm_count() == 0
    found = run.extract_from_disk(["/etc/default/locale"], run.run_dir / "peek")
    assert [p.read_text() for p in found] == ["LANG=C.UTF-8\n"]
