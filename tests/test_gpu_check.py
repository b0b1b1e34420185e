"""Tests of the first-boot GPU check (templates/files/bakegen-gpu-check.py) and its systemd unit.

The program is run end to end against fake `nvidia-smi`, `docker` and `systemctl` scripts that replay
real H200 outputs (tests/fixtures/gpu-check/h200-driver580, device-runs/) or hand-written failure outputs
(see tests/fixtures/gpu-check/README.md), with a fake sysfs PCI tree and /dev, so no test depends on
the machine it runs on.
"""

from __future__ import annotations

import ast
import csv
import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[1]
PROGRAM = ROOT / "templates" / "files" / "bakegen-gpu-check.py"
UNIT = ROOT / "templates" / "files" / "bakegen-gpu-check.service"
FIXTURES = ROOT / "tests" / "fixtures" / "gpu-check"
H200 = FIXTURES / "h200-driver580"
HGX = FIXTURES / "hgx-h100x8"
FAILURES = FIXTURES / "failures"
DEVICE_RUNS = FIXTURES / "device-runs"
RESULT_SCHEMA = json.loads((FIXTURES / "result.schema.json").read_text(encoding="utf-8"))

# Shell `case` patterns for the argument lines the program passes to each tool.
SMI_QUERY = '"--query-gpu="*" --format=csv,noheader,nounits"'
SMI_XML = '"-q -x"'
SMI_TOPO = '"topo -m"'
ANY_ARGS = "*"
DOCKER_INFO = '"info --format {{json .Runtimes}}"'
DOCKER_RUN = '"run --rm "*'
FABRIC_MANAGER = '"is-active nvidia-fabricmanager.service"'

DOCKER_RUNTIMES_WITH_NVIDIA = (
    '{"io.containerd.runc.v2":{"path":"runc","status":{}},'
    '"nvidia":{"path":"nvidia-container-runtime","status":{}},"runc":{"path":"runc","status":{}}}\n'
)
DOCKER_RUNTIMES_WITHOUT_NVIDIA = '{"io.containerd.runc.v2":{"path":"runc"},"runc":{"path":"runc"}}\n'
DOCKER_DAEMON_DOWN = (
    "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?\n"
)
DOCKER_NO_GPU_DRIVER = (
    'docker: Error response from daemon: could not select device driver "" with capabilities: [[gpu]].\n'
)


def load_program() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bakegen_gpu_check", PROGRAM)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = load_program()


def fixture_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# A fake machine: fake tools on PATH, a fake PCI tree and /dev, and the program run against them


@dataclass(frozen=True)
class Reply:
    text: str
    code: int = 0


def write_fake_tool(path: Path, replies: dict[str, Reply]) -> None:
    """A shell script that logs its arguments and answers each `case` pattern with a canned reply."""
    lines = ["#!/bin/sh", f"printf '%s\\n' \"$*\" >> '{path}.log'", 'case "$*" in']
    for number, (pattern, reply) in enumerate(replies.items()):
        answer = path.parent / f".{path.name}.{number}.out"
        answer.write_text(reply.text, encoding="utf-8")
        lines.append(f"  {pattern}) /bin/cat '{answer}'; exit {reply.code};;")
    lines += ["esac", f'echo "fake {path.name}: unexpected arguments: $*" >&2', "exit 97", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    path.chmod(0o755)


def smi_replies(query: str, xml: str, topo: str) -> dict[str, Reply]:
    return {SMI_QUERY: Reply(query), SMI_XML: Reply(xml), SMI_TOPO: Reply(topo)}


def smi_failure(path: Path, code: int) -> dict[str, Reply]:
    """Every nvidia-smi call prints the same error, as the real one does when NVML cannot start."""
    return {ANY_ARGS: Reply(fixture_text(path), code)}


def h200_replies(query_file: str = "query-gpu-noheader.csv", xml: str | None = None) -> dict[str, Reply]:
    return smi_replies(
        fixture_text(H200 / query_file),
        xml or fixture_text(H200 / "nvidia-smi-q.xml"),
        fixture_text(H200 / "topo-m.txt"),
    )


def hgx_replies(gpus: int = 8, fabric_state: str = "Completed") -> dict[str, Reply]:
    """The hand-written 8-GPU HGX outputs, optionally with GPUs missing or the fabric not ready."""
    rows = fixture_text(HGX / "query-gpu.csv").splitlines(keepends=True)[:gpus]
    root = ElementTree.fromstring(fixture_text(HGX / "nvidia-smi-q.xml"))
    for gpu in root.findall("gpu")[gpus:]:
        root.remove(gpu)
    for state in root.iter("state"):
        state.text = fabric_state
    xml = ElementTree.tostring(root, encoding="unicode")
    return smi_replies("".join(rows), xml, fixture_text(HGX / "topo-m.txt"))


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    result: dict[str, Any] | None
    motd: str | None

    def check(self, name: str) -> dict[str, Any]:
        assert self.result is not None
        matches: list[dict[str, Any]] = [check for check in self.result["checks"] if check["name"] == name]
        assert len(matches) == 1, f"check {name} not reported once: {self.result['checks']}"
        return matches[0]


RUNNING_KERNEL = "6.1.0-41-cloud-amd64"
GUARD_FAILED: dict[str, Any] = {
    "kernel": "6.1.0-41-rt-amd64",
    "module": False,
    "time": "2026-12-01T21:40:00Z",
    "message": "no NVIDIA kernel module for kernel 6.1.0-41-rt-amd64 (DKMS could not build it: are "
    "linux-headers-6.1.0-41-rt-amd64 installed?); the kernel is left unconfigured and is not made the boot default",
}


@dataclass
class FakeMachine:
    root: Path
    proc_version: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for folder in ("bin", "pci", "dev", "state", "modules"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def state_file(self) -> Path:
        return self.root / "state" / "gpu-check.json"

    @property
    def motd_file(self) -> Path:
        return self.root / "motd.d" / "90-bakegen-gpu-check"

    def tool(self, name: str, replies: dict[str, Reply]) -> None:
        write_fake_tool(self.bin / name, replies)

    def with_gpus(self, replies: dict[str, Reply], proc_version: Path = H200 / "proc-version.txt") -> None:
        """A working driver: nvidia-smi answering with replies and the kernel module loaded."""
        self.tool("nvidia-smi", replies)
        self.proc_version = proc_version

    def kernel(self, release: str, module: str | None = "updates/dkms/nvidia-current.ko.xz") -> None:
        """An installed kernel's modules folder, with the NVIDIA module file at `module` (None: without)."""
        folder = self.root / "modules" / release / "kernel"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "ext4.ko.xz").write_bytes(b"")
        if module:
            (self.root / "modules" / release / module).parent.mkdir(parents=True, exist_ok=True)
            (self.root / "modules" / release / module).write_bytes(b"")

    def guard_record(self, record: dict[str, Any] | str) -> None:
        text = record if isinstance(record, str) else json.dumps(record)
        (self.root / "state" / "kernel-guard.json").write_text(text, encoding="utf-8")

    def calls(self, name: str) -> list[str]:
        log = self.bin / f"{name}.log"
        return log.read_text(encoding="utf-8").splitlines() if log.exists() else []

    def pci_device(
        self, address: str, device_class: str = "0x030200", driver: str | None = "nvidia", vendor: str = "0x10de"
    ) -> None:
        device = self.root / "pci" / address
        device.mkdir()
        (device / "vendor").write_text(vendor + "\n", encoding="ascii")
        (device / "class").write_text(device_class + "\n", encoding="ascii")
        if driver:
            target = self.root / "drivers" / driver
            target.mkdir(parents=True, exist_ok=True)
            (device / "driver").symlink_to(target)

    def run(
        self,
        *args: str,
        interpreter: str = sys.executable,
        state_dir: Path | None = None,
        motd_file: Path | None = None,
    ) -> Run:
        config_file = self.root / "gpu-check.json"
        config_file.write_text(json.dumps(self.config), encoding="utf-8")
        proc_version = self.proc_version or self.root / "no-such-proc-version"
        argv = [
            interpreter,
            str(PROGRAM),
            "--config",
            str(config_file),
            "--state-dir",
            str(state_dir or self.root / "state"),
            "--motd-file",
            str(motd_file or self.motd_file),
            "--nvidia-smi",
            str(self.bin / "nvidia-smi"),
            "--proc-version",
            str(proc_version),
            "--pci-devices-dir",
            str(self.root / "pci"),
            "--dev-dir",
            str(self.root / "dev"),
            "--modules-dir",
            str(self.root / "modules"),
            "--kernel-release",
            RUNNING_KERNEL,
            *args,
        ]
        env = {"PATH": str(self.bin), "LC_ALL": "C.UTF-8"}
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)
        result = json.loads(self.state_file.read_text(encoding="utf-8")) if self.state_file.exists() else None
        motd = self.motd_file.read_text(encoding="utf-8") if self.motd_file.exists() else None
        return Run(done.returncode, done.stdout, done.stderr, result, motd)


@pytest.fixture
def machine(tmp_path: Path) -> FakeMachine:
    return FakeMachine(tmp_path)


def assert_valid_result(result: dict[str, Any] | None) -> dict[str, Any]:
    assert result is not None, "no result file written"
    jsonschema.Draft202012Validator(RESULT_SCHEMA).validate(result)
    assert result["gpu_count"] == len(result["gpus"])
    names = [check["name"] for check in result["checks"]]
    assert len(names) == len(set(names)), names
    return result


# ---------------------------------------------------------------------------------------------
# The real H200 outputs, parsed piece by piece


def test_query_csv_with_header_and_units_parses_like_the_form_the_program_requests() -> None:
    with_header = gpu_check.parse_query_csv(fixture_text(H200 / "query-gpu.csv"))
    requested_form = gpu_check.parse_query_csv(fixture_text(H200 / "query-gpu-noheader.csv"))
    assert with_header == requested_form
    assert with_header == [
        {
            "index": 0,
            "name": "NVIDIA H200",
            "uuid": "GPU-a6ba3f4a-7a8b-ba9b-30e0-c0926f3c2c27",
            "pci_bus_id": "00000000:00:06.0",
            "driver_version": "580.159.04",
            "vbios_version": "96.00.A5.00.1A",
            "memory_total_mib": 143771,
            "persistence_mode": "Enabled",
            "compute_mode": "Default",
            "mig_mode": "Disabled",
            "ecc_mode": "Enabled",
            "temperature_c": 40,
            "power_draw_w": 102.8,
            "power_limit_w": 700.0,
        }
    ]


def test_program_requests_noheader_nounits_with_its_declared_fields() -> None:
    argv = gpu_check.query_command("nvidia-smi")
    assert argv == ["nvidia-smi", "--query-gpu=" + ",".join(gpu_check.QUERY_FIELDS), "--format=csv,noheader,nounits"]
    assert set(gpu_check.QUERY_FIELDS) == set(gpu_check.QUERY_FIELD_KEYS)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        (
            "0, Tesla T4, GPU-1, 00000000:00:1E.0, 535.274.02, 90.04.A7.00.01, 15360, Disabled, Default, [N/A], "
            "Enabled, 31, [N/A], 70.00\n",
            [
                {
                    "index": 0,
                    "name": "Tesla T4",
                    "persistence_mode": "Disabled",
                    "mig_mode": None,
                    "power_draw_w": None,
                    "memory_total_mib": 15360,
                }
            ],
        ),
        (
            "0, NVIDIA GeForce RTX 4090, GPU-2, 00000000:01:00.0, 580.95.05, 95.02.3C.40.E5, 24564, Disabled, Default, "
            "[N/A], [N/A], 45, 30.12, 450.00\n",
            [{"name": "NVIDIA GeForce RTX 4090", "ecc_mode": None, "temperature_c": 45}],
        ),
    ],
)
def test_query_csv_reads_not_available_values_as_null(text: str, expected: list[dict[str, Any]]) -> None:
    gpus = gpu_check.parse_query_csv(text)
    assert len(gpus) == len(expected)
    for gpu, wanted in zip(gpus, expected, strict=True):
        assert {key: gpu[key] for key in wanted} == wanted


def test_real_xml_gives_driver_cuda_and_a_healthy_gpu() -> None:
    driver, cuda, gpus = gpu_check.parse_smi_xml(fixture_text(H200 / "nvidia-smi-q.xml"))
    assert (driver, cuda) == ("580.159.04", "13.0")
    assert len(gpus) == 1
    gpu = gpus[0]
    assert gpu["pci_bus_id"] == "00000000:00:06.0"
    assert gpu["name"] == "NVIDIA H200"
    assert gpu["ecc_mode"] == "Enabled"
    assert gpu["ecc_errors"] == {
        "volatile_correctable": 0,
        "volatile_uncorrectable": 0,
        "aggregate_correctable": 0,
        "aggregate_uncorrectable": 0,
    }
    assert gpu["retired_pages"] == {"single_bit": None, "double_bit": None, "pending": None}
    assert gpu["remapped_rows"] == {"correctable": 0, "uncorrectable": 0, "pending": False, "failure": False}
    assert gpu["fabric"]["state"] is None
    assert gpu["recovery_action"] == "None"
    assert gpu_check.memory_problems(gpu) == []


def test_old_xml_schema_ecc_counters_are_summed() -> None:
    old = ElementTree.fromstring(
        "<ecc_errors><volatile><single_bit><device_memory>3</device_memory><total>3</total></single_bit>"
        "<double_bit><device_memory>1</device_memory><total>1</total></double_bit></volatile>"
        "<aggregate><single_bit><total>N/A</total></single_bit><double_bit><total>4</total></double_bit>"
        "</aggregate></ecc_errors>"
    )
    assert gpu_check.ecc_counts(old) == {
        "volatile_correctable": 3,
        "volatile_uncorrectable": 1,
        "aggregate_correctable": None,
        "aggregate_uncorrectable": 4,
    }


def test_the_four_real_outputs_agree_with_what_the_program_parses() -> None:
    """The plain table and -L list are read here independently and must tell the same story."""
    table = fixture_text(H200 / "nvidia-smi.txt")
    listing = fixture_text(H200 / "nvidia-smi-L.txt")
    gpus = gpu_check.parse_query_csv(fixture_text(H200 / "query-gpu.csv"))
    driver, _, xml_gpus = gpu_check.parse_smi_xml(fixture_text(H200 / "nvidia-smi-q.xml"))
    table_driver = re.search(r"Driver Version: (\S+)", table)
    assert table_driver is not None and table_driver.group(1) == driver == gpus[0]["driver_version"]
    table_rows = re.findall(r"^\|\s+(\d+)\s+(.+?)\s{2,}(On|Off)\s+\|\s+(\S+)", table, re.MULTILINE)
    assert [(int(i), name, mode) for i, name, mode, _ in table_rows] == [
        (gpu["index"], gpu["name"], "On" if gpu["persistence_mode"] == "Enabled" else "Off") for gpu in gpus
    ]
    assert [row[3] for row in table_rows] == [gpu["pci_bus_id"] for gpu in xml_gpus]
    assert re.search(r"0MiB /\s+(\d+)MiB", table).group(1) == str(gpus[0]["memory_total_mib"])  # type: ignore[union-attr]
    assert len(gpu_check.GPU_LIST_LINE.findall(listing)) == len(gpus)
    assert f"(UUID: {gpus[0]['uuid']})" in listing


def test_real_single_gpu_topology_has_affinity_and_no_links() -> None:
    topology = gpu_check.parse_topology(fixture_text(H200 / "topo-m.txt"))
    assert topology == {"pairs": [], "link_types": [], "cpu_affinity": {"0": "0-15"}}


def test_eight_gpu_topology_lists_every_nvlink_pair() -> None:
    topology = gpu_check.parse_topology(fixture_text(HGX / "topo-m.txt"))
    assert len(topology["pairs"]) == 28
    assert topology["link_types"] == ["NV18"]
    assert topology["pairs"][0] == {"gpus": [0, 1], "link": "NV18"}
    assert topology["cpu_affinity"]["7"] == "56-111,168-223"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (H200 / "proc-version.txt", ("580.159.04", "open")),
        (FAILURES / "proc-version-580.95.05.txt", ("580.95.05", "open")),
        (FAILURES / "proc-version-535-proprietary.txt", ("535.274.02", "proprietary")),
        (FIXTURES / "no-such-file", (None, None)),
        (FIXTURES / "README.md", (None, None)),
    ],
)
def test_kernel_module_version_is_read_from_proc(path: Path, expected: tuple[str | None, str | None]) -> None:
    assert gpu_check.read_kernel_module(str(path)) == expected


@pytest.mark.parametrize(
    ("stdout", "error", "code", "state"),
    [
        (fixture_text(FAILURES / "no-driver.txt"), None, 9, "no-driver"),
        (fixture_text(FAILURES / "version-mismatch.txt"), None, 18, "version-mismatch"),
        (fixture_text(FAILURES / "no-devices.txt"), None, 6, "no-devices"),
        ("", "not-found", None, "not-installed"),
        ("", "timeout", None, "timeout"),
        ('Field "bogus" is not a valid field to query.\n', None, 2, "error"),
    ],
)
def test_nvidia_smi_failures_are_classified(stdout: str, error: str | None, code: int | None, state: str) -> None:
    result = gpu_check.CommandResult(["nvidia-smi"], code, stdout, "", error, 0.1)
    assert gpu_check.classify_smi_failure(result)[0] == state


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """A valid key, a revoked one and an expired one, as files with their pinned fingerprints (real gpg)."""
    from tests.support.hostile_keys import build_corpus
    from tests.support.mirror import Gpg

    folder = tmp_path_factory.mktemp("keys")
    gpg = Gpg()
    try:
        pinned = gpg.generate("bakegen PINNED key (throwaway)")
        corpus = {k.name: k for k in build_corpus(gpg, pinned, gpg.generate("bakegen OTHER key (throwaway)"))}
    finally:
        gpg.close()
    files = {}
    for name in ("armored", "revoked", "expired"):
        (folder / name).write_bytes(corpus[name].data)
        files[name] = (folder / name, corpus[name].pinned)
    return files


@pytest.mark.parametrize(("names", "status", "words"), [
    (("armored",), "pass", "1 repository key valid"),
    (("armored", "revoked"), "fail", "is revoked (rerun bakegen's install script"),
    (("expired",), "fail", "has expired"),
    ((), "skip", "none of bakegen's repository keys is on this machine"),
])  # fmt: skip
def test_repository_keys_revoked_or_expired_are_reported_with_or_without_a_gpu(
    machine: FakeMachine, key_files: dict[str, tuple[Path, str]], names: tuple[str, ...], status: str, words: str
) -> None:
    """Issue 16, F13: the stored keys' expiry and revocation, reported by the check (not required: a warning)."""
    machine.config = {
        "repository_keys": [{"path": str(key_files[n][0]), "fingerprint": key_files[n][1]} for n in names]
        + [{"path": "/nonexistent/key", "fingerprint": "A" * 40}]
    }
    gpg = shutil.which("gpg")
    assert gpg is not None
    (machine.bin / "gpg").symlink_to(gpg)  # the real gpg, on the machine's PATH
    run = machine.run()
    check = run.check("repository_keys")
    assert (check["status"], check["required"]) == (status, False)
    assert words in check["detail"]
    assert run.result is not None and run.result["status"] == "no-gpu" and run.returncode == 0


def test_a_command_past_its_timeout_never_blocks_the_check(tmp_path: Path) -> None:
    """A command that outlives its timeout and leaves a descendant holding its output open (as a process stuck in
    the driver holds it) is killed with its whole session, and the check goes on within the reap bound."""
    marker = tmp_path / "grandchild-alive"
    script = f"(trap '' TERM; touch {marker}; sleep 30) & sleep 30"
    started = time.monotonic()
    result = gpu_check.run_command(["sh", "-c", script], 1)
    elapsed = time.monotonic() - started
    assert result.error == "timeout"
    assert elapsed < 1 + gpu_check.REAP_TIMEOUT + 2, elapsed
    assert marker.exists()


def test_smoke_test_never_pulls_and_names_a_missing_image(machine: FakeMachine) -> None:
    missing = "docker: Error response from daemon: No such image: nvidia/cuda:12.9.1-base-ubuntu24.04\n"
    machine.with_gpus(h200_replies())
    machine.tool("docker", {DOCKER_INFO: Reply(DOCKER_RUNTIMES_WITH_NVIDIA), DOCKER_RUN: Reply(missing, 125)})
    run = machine.run()
    assert "--pull=never" in machine.calls("docker")[1]
    check = run.check("container_smoke_test")
    assert check["status"] == "fail"
    assert "is not on this machine (the check never pulls at boot)" in check["detail"]


@pytest.mark.parametrize(
    ("bus_id", "normal"),
    [
        ("00000000:1B:00.0", "0000:1b:00.0"),
        ("0000:1b:00.0", "0000:1b:00.0"),
        ("00000001:00:06.0", "0001:00:06.0"),
        (None, ""),
    ],
)
def test_bus_ids_of_nvidia_smi_and_sysfs_compare_equal(bus_id: str | None, normal: str) -> None:
    assert gpu_check.normal_bus_id(bus_id) == normal


def test_pci_scan_counts_our_gpus_and_nvswitches_only(machine: FakeMachine) -> None:
    machine.pci_device("0000:18:00.0")
    machine.pci_device("0000:2a:00.0", driver=None)
    machine.pci_device("0000:3a:00.0", driver="vfio-pci")
    machine.pci_device("0000:05:00.0", device_class="0x068000", driver=None)
    machine.pci_device("0000:00:01.0", vendor="0x8086", device_class="0x030000")
    assert gpu_check.scan_pci(str(machine.root / "pci")) == (["0000:18:00.0", "0000:2a:00.0"], 1)
    assert gpu_check.scan_pci(str(machine.root / "no-sysfs")) == (None, None)


# ---------------------------------------------------------------------------------------------
# The whole program against fake machines


@dataclass(frozen=True)
class Scenario:
    name: str
    smi: dict[str, Reply] | None
    proc_version: Path | None
    pci_gpus: tuple[str, ...]
    args: tuple[str, ...]
    exit_code: int
    status: str
    verdicts: dict[str, str]
    gpu_count: int = 0


SCENARIOS = [
    Scenario(
        "h200 passes",
        h200_replies(),
        H200 / "proc-version.txt",
        ("0000:00:06.0",),
        (),
        0,
        "pass",
        {
            "gpu_present": "pass",
            "kernel_module": "pass",
            "nvidia_smi": "pass",
            "driver_version_match": "pass",
            "driver_branch": "skip",
            "gpu_count": "pass",
            "persistence_mode": "pass",
            "ecc_health": "pass",
            "fabric": "skip",
            "kernel_guard": "skip",
            "runtime_docker": "skip",
            "container_smoke_test": "skip",
            "repository_keys": "skip",
        },
        1,
    ),
    Scenario(
        "h200 with the header form of the csv",
        h200_replies("query-gpu.csv"),
        H200 / "proc-version.txt",
        (),
        (),
        0,
        "pass",
        {"gpu_count": "pass"},
        1,
    ),
    Scenario(
        "h200 right branch",
        h200_replies(),
        H200 / "proc-version.txt",
        (),
        ("--driver-branch", "580"),
        0,
        "pass",
        {"driver_branch": "pass"},
        1,
    ),
    Scenario(
        "h200 wrong branch",
        h200_replies(),
        H200 / "proc-version.txt",
        (),
        ("--driver-branch", "570"),
        1,
        "fail",
        {"driver_branch": "fail", "gpu_count": "pass"},
        1,
    ),
    Scenario(
        "h200 fewer gpus than expected",
        h200_replies(),
        H200 / "proc-version.txt",
        (),
        ("--expected-gpus", "2"),
        1,
        "fail",
        {"gpu_count": "fail", "nvidia_smi": "pass"},
        1,
    ),
    Scenario(
        "h200 with require-gpu",
        h200_replies(),
        H200 / "proc-version.txt",
        (),
        ("--require-gpu",),
        0,
        "pass",
        {"gpu_present": "pass"},
        1,
    ),
    Scenario(
        "nothing at all",
        None,
        None,
        (),
        (),
        0,
        "no-gpu",
        {"gpu_present": "skip", "kernel_module": "skip", "nvidia_smi": "skip", "gpu_count": "skip"},
    ),
    Scenario(
        "nothing at all, gpu required",
        None,
        None,
        (),
        ("--require-gpu",),
        1,
        "no-gpu",
        {"gpu_present": "fail", "nvidia_smi": "skip"},
    ),
    Scenario(
        "driver installed, baked without a gpu",
        smi_failure(FAILURES / "no-driver.txt", 9),
        None,
        (),
        (),
        0,
        "no-gpu",
        {"gpu_present": "skip", "nvidia_smi": "skip"},
    ),
    Scenario(
        "gpu on pci but driver not loaded",
        smi_failure(FAILURES / "no-driver.txt", 9),
        None,
        ("0000:00:06.0",),
        (),
        1,
        "fail",
        {
            "gpu_present": "pass",
            "kernel_module": "fail",
            "nvidia_smi": "fail",
            "gpu_count": "fail",
            "driver_version_match": "skip",
            "container_smoke_test": "skip",
        },
    ),
    Scenario(
        "gpu on pci, nvidia-smi not installed",
        None,
        H200 / "proc-version.txt",
        ("0000:00:06.0",),
        (),
        1,
        "fail",
        {"kernel_module": "pass", "nvidia_smi": "fail", "gpu_count": "fail"},
    ),
    Scenario(
        "driver/library version mismatch",
        smi_failure(FAILURES / "version-mismatch.txt", 18),
        FAILURES / "proc-version-580.95.05.txt",
        ("0000:00:06.0",),
        (),
        1,
        "fail",
        {"kernel_module": "pass", "nvidia_smi": "fail", "driver_version_match": "fail", "gpu_count": "fail"},
    ),
    Scenario(
        "no devices and no gpu",
        smi_failure(FAILURES / "no-devices.txt", 6),
        None,
        (),
        (),
        0,
        "no-gpu",
        {"gpu_present": "skip"},
    ),
    Scenario(
        "no devices although the module is loaded",
        smi_failure(FAILURES / "no-devices.txt", 6),
        H200 / "proc-version.txt",
        (),
        (),
        1,
        "fail",
        {"nvidia_smi": "fail", "gpu_count": "fail"},
    ),
    Scenario(
        "hgx 8 gpus",
        hgx_replies(),
        H200 / "proc-version.txt",
        (),
        ("--expected-gpus", "8"),
        0,
        "pass",
        {"gpu_count": "pass", "fabric": "pass", "ecc_health": "pass"},
        8,
    ),
    Scenario(
        "hgx fabric not ready",
        hgx_replies(fabric_state="In Progress"),
        H200 / "proc-version.txt",
        (),
        ("--expected-gpus", "8"),
        1,
        "fail",
        {"gpu_count": "pass", "fabric": "fail"},
        8,
    ),
    Scenario(
        "hgx one gpu fell off the bus",
        hgx_replies(gpus=7),
        H200 / "proc-version.txt",
        tuple(f"0000:{bus}:00.0" for bus in ("18", "2a", "3a", "5d", "9a", "ab", "ba", "db")),
        ("--expected-gpus", "8"),
        1,
        "fail",
        {"gpu_count": "fail", "fabric": "pass"},
        7,
    ),
    Scenario(
        "hgx one gpu missing on pci, any count expected",
        hgx_replies(gpus=7),
        H200 / "proc-version.txt",
        tuple(f"0000:{bus}:00.0" for bus in ("18", "2a", "3a", "5d", "9a", "ab", "ba", "db")),
        (),
        1,
        "fail",
        {"gpu_count": "fail"},
        7,
    ),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[scenario.name for scenario in SCENARIOS])
def test_end_to_end(machine: FakeMachine, scenario: Scenario) -> None:
    if scenario.smi is not None:
        machine.tool("nvidia-smi", scenario.smi)
    machine.tool("systemctl", {FABRIC_MANAGER: Reply("active\n")})
    for address in scenario.pci_gpus:
        machine.pci_device(address)
    machine.proc_version = scenario.proc_version
    run = machine.run("--json", *scenario.args)
    assert run.returncode == scenario.exit_code, run.stderr
    result = assert_valid_result(run.result)
    assert json.loads(run.stdout) == result
    assert result["status"] == scenario.status
    assert result["exit_code"] == scenario.exit_code
    assert result["gpu_count"] == scenario.gpu_count
    assert {name: run.check(name)["status"] for name in scenario.verdicts} == scenario.verdicts
    assert "Traceback" not in run.stderr


def test_version_mismatch_names_both_versions(machine: FakeMachine) -> None:
    machine.tool("nvidia-smi", smi_failure(FAILURES / "version-mismatch.txt", 18))
    machine.proc_version = FAILURES / "proc-version-580.95.05.txt"
    run = machine.run()
    assert run.result is not None
    assert run.result["driver"] == {
        "kernel_module": "580.95.05",
        "kernel_module_flavor": "open",
        "nvml": "580.159",
        "branch": "580",
        "cuda": None,
    }
    assert run.result["nvidia_smi"]["state"] == "version-mismatch"
    detail = run.check("driver_version_match")["detail"]
    assert "580.95.05" in detail and "580.159" in detail


def test_missing_gpus_are_named_by_their_pci_address(machine: FakeMachine) -> None:
    machine.with_gpus(hgx_replies(gpus=7))
    for bus in ("18", "2a", "3a", "5d", "9a", "ab", "ba", "db"):
        machine.pci_device(f"0000:{bus}:00.0")
    run = machine.run("--expected-gpus", "8")
    assert run.check("gpu_count")["detail"] == (
        "7 GPUs found, 8 expected (1 on the PCI bus not seen by nvidia-smi: 0000:db:00.0)"
    )


def test_hgx_interconnect_and_fabric_manager_are_reported(machine: FakeMachine) -> None:
    machine.with_gpus(hgx_replies())
    machine.tool("systemctl", {FABRIC_MANAGER: Reply("active\n")})
    machine.pci_device("0000:05:00.0", device_class="0x068000", driver=None)
    machine.proc_version = H200 / "proc-version.txt"
    run = machine.run()
    result = assert_valid_result(run.result)
    link = result["interconnect"]
    assert link["nvlink"] is True
    assert link["nvswitch_fabric"] is True
    assert link["fabric_manager"] == "active"
    assert link["pci_nvswitches"] == 1
    assert len(link["topology"]["pairs"]) == 28
    assert [entry["index"] for entry in link["fabric"]] == list(range(8))
    assert {entry["state"] for entry in link["fabric"]} == {"Completed"}
    assert "nvidia-fabricmanager: active" in run.check("fabric")["detail"]


def test_fabric_failure_says_the_fabric_manager_is_down(machine: FakeMachine) -> None:
    machine.with_gpus(hgx_replies(fabric_state="Not Started"))
    machine.tool("systemctl", {FABRIC_MANAGER: Reply("inactive\n", 3)})
    run = machine.run()
    assert run.returncode == 1
    assert run.check("fabric")["detail"].endswith("nvidia-fabricmanager: inactive")
    assert "GPU 7 fabric state Not Started" in run.check("fabric")["detail"]


def test_single_gpu_reports_no_fabric_and_unknown_nvlink(machine: FakeMachine) -> None:
    machine.with_gpus(h200_replies())
    run = machine.run()
    result = assert_valid_result(run.result)
    assert result["interconnect"]["nvlink"] is None
    assert result["interconnect"]["nvswitch_fabric"] is False
    assert result["interconnect"]["fabric_manager"] is None
    assert machine.calls("systemctl") == []


def edited_h200_xml(old: str, new: str, count: int = 1) -> str:
    xml = fixture_text(H200 / "nvidia-smi-q.xml")
    assert xml.count(old) == count, old
    return xml.replace(old, new)


@pytest.mark.parametrize(
    ("old", "new", "status", "words"),
    [
        (
            "<remapped_row_pending>No</remapped_row_pending>",
            "<remapped_row_pending>Yes</remapped_row_pending>",
            "fail",
            "row remapping pending",
        ),
        (
            "<remapped_row_failure>No</remapped_row_failure>",
            "<remapped_row_failure>Yes</remapped_row_failure>",
            "fail",
            "row remapping failed",
        ),
        (
            "<pending_retirement>N/A</pending_retirement>",
            "<pending_retirement>Yes</pending_retirement>",
            "fail",
            "page retirement pending",
        ),
        (
            "<gpu_recovery_action>None</gpu_recovery_action>",
            "<gpu_recovery_action>Reset</gpu_recovery_action>",
            "fail",
            "driver asks for recovery action 'Reset'",
        ),
        (
            "<unrepairable_memory>No</unrepairable_memory>",
            "<unrepairable_memory>Yes</unrepairable_memory>",
            "fail",
            "unrepairable memory",
        ),
        (
            "<volatile>\n\t\t\t\t<sram_correctable>0</sram_correctable>\n\t\t\t\t<sram_uncorrectable_parity>0<",
            "<volatile>\n\t\t\t\t<sram_correctable>0</sram_correctable>\n\t\t\t\t<sram_uncorrectable_parity>2<",
            "fail",
            "2 uncorrectable ECC errors since boot",
        ),
        (
            "<aggregate>\n\t\t\t\t<sram_correctable>0</sram_correctable>\n\t\t\t\t<sram_uncorrectable_parity>0<",
            "<aggregate>\n\t\t\t\t<sram_correctable>0</sram_correctable>\n\t\t\t\t<sram_uncorrectable_parity>1<",
            "pass",
            "1 uncorrectable ECC error over its life",
        ),
        ("<current_ecc>Enabled</current_ecc>", "<current_ecc>Disabled</current_ecc>", "pass", "ECC disabled"),
    ],
    ids=[
        "remap-pending",
        "remap-failed",
        "retirement-pending",
        "recovery-action",
        "unrepairable",
        "uncorrectable-since-boot",
        "uncorrectable-lifetime",
        "ecc-disabled",
    ],
)
def test_memory_health_from_xml(machine: FakeMachine, old: str, new: str, status: str, words: str) -> None:
    machine.with_gpus(h200_replies(xml=edited_h200_xml(old, new)))
    run = machine.run()
    check = run.check("ecc_health")
    assert (check["status"], check["required"]) == (status, True)
    assert f"GPU 0: {words}" in check["detail"]
    assert run.returncode == (1 if status == "fail" else 0)


def test_unreadable_xml_skips_the_xml_checks_without_crashing(machine: FakeMachine) -> None:
    machine.with_gpus(h200_replies(xml="<nvidia_smi_log><gpu>"))
    run = machine.run()
    assert run.returncode == 0
    assert run.check("ecc_health")["status"] == "skip"
    assert "unreadable XML" in run.check("ecc_health")["detail"]


def test_persistence_mode_off_is_a_warning_not_a_failure(machine: FakeMachine) -> None:
    query = fixture_text(H200 / "query-gpu-noheader.csv").replace("Enabled, Default", "Disabled, Default")
    machine.with_gpus(smi_replies(query, fixture_text(H200 / "nvidia-smi-q.xml"), fixture_text(H200 / "topo-m.txt")))
    run = machine.run()
    assert run.returncode == 0
    assert run.check("persistence_mode") == {
        "name": "persistence_mode",
        "status": "fail",
        "required": False,
        "detail": "persistence mode off on GPU 0: is nvidia-persistenced running?",
    }
    assert re.search(r"^WARN  persistence_mode ", run.stdout, re.MULTILINE)


# ---------------------------------------------------------------------------------------------
# Container runtimes and the smoke test


@pytest.mark.parametrize(
    ("docker", "args", "runtime", "smoke"),
    [
        (
            {
                DOCKER_INFO: Reply(DOCKER_RUNTIMES_WITH_NVIDIA),
                DOCKER_RUN: Reply(fixture_text(H200 / "nvidia-smi-L.txt")),
            },
            (),
            "pass",
            "pass",
        ),
        ({DOCKER_INFO: Reply(DOCKER_RUNTIMES_WITH_NVIDIA)}, ("--no-container-test",), "pass", "skip"),
        (
            {DOCKER_INFO: Reply(DOCKER_RUNTIMES_WITHOUT_NVIDIA), DOCKER_RUN: Reply(DOCKER_NO_GPU_DRIVER, 125)},
            (),
            "fail",
            "fail",
        ),
        ({DOCKER_INFO: Reply(DOCKER_DAEMON_DOWN, 1), DOCKER_RUN: Reply(DOCKER_DAEMON_DOWN, 125)}, (), "fail", "fail"),
        ({DOCKER_INFO: Reply("not json\n")}, ("--no-container-test",), "fail", "skip"),
        ({DOCKER_INFO: Reply(DOCKER_RUNTIMES_WITH_NVIDIA), DOCKER_RUN: Reply("")}, (), "pass", "fail"),
    ],
    ids=["ready", "test-disabled", "no-nvidia-runtime", "daemon-down", "unreadable-info", "container-sees-none"],
)
def test_docker(
    machine: FakeMachine, docker: dict[str, Reply], args: tuple[str, ...], runtime: str, smoke: str
) -> None:
    machine.with_gpus(h200_replies())
    machine.tool("docker", docker)
    run = machine.run(*args)
    assert (run.check("runtime_docker")["status"], run.check("container_smoke_test")["status"]) == (runtime, smoke)
    assert run.returncode == (0 if "fail" not in (runtime, smoke) else 1)


def test_smoke_test_runs_the_configured_image_with_gpus_and_capabilities(machine: FakeMachine) -> None:
    machine.with_gpus(h200_replies())
    machine.tool(
        "docker",
        {DOCKER_INFO: Reply(DOCKER_RUNTIMES_WITH_NVIDIA), DOCKER_RUN: Reply(fixture_text(H200 / "nvidia-smi-L.txt"))},
    )
    machine.config = {"container_image": "nvidia/cuda:12.9.1-base-ubi9", "capabilities": "compute,utility,video"}
    run = machine.run("--gpus", "device=0")
    assert machine.calls("docker") == [
        "info --format {{json .Runtimes}}",
        "run --rm --pull=never --gpus device=0 -e NVIDIA_DRIVER_CAPABILITIES=compute,utility,video "
        "-- nvidia/cuda:12.9.1-base-ubi9 nvidia-smi -L",
    ]
    assert run.check("container_smoke_test")["detail"].startswith("a nvidia/cuda:12.9.1-base-ubi9 container saw 1 GPU")


def test_terminal_escapes_in_docker_output_reach_neither_console_nor_login_message(machine: FakeMachine) -> None:
    """docker's (and an image's) output is not trusted: control characters are replaced where a terminal shows
    them (issue 16, F5); the JSON result keeps the text, escaped by JSON itself."""
    hostile = "\x1b]0;owned\x07\x1b[2Jdocker: Error response from daemon\x9b31m: boom\n"
    machine.with_gpus(h200_replies())
    machine.tool("docker", {DOCKER_INFO: Reply(DOCKER_RUNTIMES_WITH_NVIDIA), DOCKER_RUN: Reply(hostile, 125)})
    run = machine.run()
    assert run.check("container_smoke_test")["status"] == "fail"
    assert "\x1b" in run.check("container_smoke_test")["detail"]
    for shown in (run.stdout, run.motd or ""):
        assert "Error response from daemon" in shown
        assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]", shown), repr(shown)
    assert run.motd is not None and "?]0;owned??[2Jdocker: Error response from daemon?31m: boom" in run.motd


@pytest.mark.parametrize(
    ("runtime", "pattern", "output", "status"),
    [
        (
            "containerd",
            '"config dump"',
            '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]\n'
            '  runtime_type = "io.containerd.runc.v2"\n',
            "pass",
        ),
        (
            "containerd",
            '"config dump"',
            "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.nvidia]\n",
            "pass",
        ),
        ("containerd", '"config dump"', '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]\n', "fail"),
        (
            "crio",
            '"status config"',
            '[crio.runtime.runtimes.nvidia]\nruntime_path = "/usr/bin/nvidia-container-runtime"\n',
            "pass",
        ),
        ("crio", '"status config"', "[crio.runtime.runtimes.crun]\n", "fail"),
    ],
)
def test_other_runtimes(machine: FakeMachine, runtime: str, pattern: str, output: str, status: str) -> None:
    machine.with_gpus(h200_replies())
    machine.tool(runtime, {pattern: Reply(output)})
    machine.config = {"runtimes": [runtime]}
    run = machine.run()
    assert run.check(f"runtime_{runtime}")["status"] == status
    smoke = run.check("container_smoke_test")
    assert (smoke["status"], "docker" in smoke["detail"]) == ("skip", True)


def test_configured_runtime_that_is_not_installed_is_skipped(machine: FakeMachine) -> None:
    machine.with_gpus(h200_replies())
    machine.config = {"runtimes": ["docker", "containerd"]}
    run = machine.run()
    assert run.returncode == 0
    assert run.check("runtime_docker")["detail"] == "docker not installed"
    assert run.check("runtime_containerd")["detail"] == "containerd not installed"


# ---------------------------------------------------------------------------------------------
# Configuration and command line


@pytest.mark.parametrize(
    ("config_text", "message"),
    [
        ('{"expected_gpu": 2}', "unknown key 'expected_gpu'"),
        ('{"expected_gpus": "2"}', 'expected_gpus: expected an integer >= 0, got "2"'),
        ('{"expected_gpus": true}', "expected_gpus: expected an integer >= 0, got true"),
        ('{"expected_gpus": -1}', "expected_gpus: expected an integer >= 0, got -1"),
        ('{"driver_branch": 580}', "driver_branch: expected a driver branch as a string"),
        ('{"driver_branch": "latest"}', "driver_branch: expected a driver branch"),
        ('{"require_gpu": "yes"}', "require_gpu: expected true or false"),
        ('{"container_test": 1}', "container_test: expected true or false"),
        ('{"container_image": ""}', "container_image: expected a container image reference"),
        # An option in the image's place would reach docker as an option (issue 16, F6).
        ('{"container_image": "--privileged"}', "container_image: expected a container image reference"),
        ('{"container_image": "-v/:/host alpine"}', "container_image: expected a container image reference"),
        ('{"gpus": null}', "gpus: expected all, a count, or device=0,1"),
        ('{"gpus": "all --privileged"}', "gpus: expected all, a count, or device=0,1"),
        ('{"capabilities": "compute,bogus"}', "capabilities: unknown capability bogus"),
        ('{"runtimes": "docker"}', "runtimes: expected a list of runtime names"),
        ('{"runtimes": ["podman"]}', "runtimes: unknown runtime podman"),
        ('{"runtimes": ["docker", "docker"]}', "runtimes: a runtime is listed twice"),
        ('{"schema": 2}', "schema: expected 1, got 2"),
        ('{"schema": 1,', "not valid JSON"),
        ("[]", "expected a JSON object, got a list"),
        ('{"b": 1, "a": 2}', "unknown key 'a' (known: "),
    ],
)
def test_config_errors_exit_2_with_one_line(tmp_path: Path, config_text: str, message: str) -> None:
    config = tmp_path / "gpu-check.json"
    config.write_text(config_text, encoding="utf-8")
    done = run_program("--config", str(config), "--state-dir", str(tmp_path / "state"))
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"bakegen-gpu-check: error: {config}: ")
    assert message in lines[0]
    assert not (tmp_path / "state").exists()


def test_all_config_problems_are_reported_together(tmp_path: Path) -> None:
    config = tmp_path / "gpu-check.json"
    config.write_text('{"zeta": 1, "expected_gpus": "x", "alpha": 2}', encoding="utf-8")
    done = run_program("--config", str(config))
    assert done.returncode == 2
    assert re.search(r"unknown key 'alpha'.*expected_gpus: .*unknown key 'zeta'", done.stderr)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--driver-branch", "abc"), "command line: driver_branch: expected a driver branch"),
        (("--gpus", ""), "command line: gpus: expected all, a count, or device=0,1"),
        (("--capabilities", "compute,gpu"), "command line: capabilities: unknown capability gpu"),
        (("--expected-gpus", "-1"), "argument --expected-gpus: expected an integer >= 0, got -1"),
        (("--expected-gpus", "two"), "argument --expected-gpus: expected an integer >= 0, got 'two'"),
        (("--config", "/nonexistent/gpu-check.json"), "/nonexistent/gpu-check.json: config file not found"),
        (("--bogus",), "unrecognized arguments: --bogus"),
    ],
)
def test_bad_command_lines_exit_2(args: tuple[str, ...], message: str) -> None:
    done = run_program(*args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def run_program(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PROGRAM), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/nonexistent"},
        check=False,
    )


def test_the_documented_example_config_is_accepted_and_the_command_line_wins(machine: FakeMachine) -> None:
    machine.config = {
        "schema": 1,
        "driver_branch": "580",
        "expected_gpus": 0,
        "require_gpu": False,
        "container_test": True,
        "container_image": "nvidia/cuda:12.9.1-base-ubuntu24.04",
        "gpus": "all",
        "capabilities": "compute,utility",
        "runtimes": ["docker"],
    }
    machine.with_gpus(h200_replies())
    run = machine.run("--expected-gpus", "1", "--no-container-test")
    result = assert_valid_result(run.result)
    settings = result["config"]["settings"]
    assert (settings["expected_gpus"], settings["container_test"], settings["driver_branch"]) == (1, False, "580")
    assert result["config"]["path"] == str(machine.root / "gpu-check.json")
    assert run.check("driver_branch")["status"] == "pass"


def test_missing_default_config_means_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_check, "DEFAULT_CONFIG_PATH", str(tmp_path / "absent.json"))
    assert gpu_check.load_config_file(None) == ({}, None)
    present = tmp_path / "present.json"
    present.write_text('{"expected_gpus": 4}', encoding="utf-8")
    monkeypatch.setattr(gpu_check, "DEFAULT_CONFIG_PATH", str(present))
    assert gpu_check.load_config_file(None) == ({"expected_gpus": 4}, str(present))
    assert gpu_check.CONFIG_DEFAULTS == {
        "schema": 1,
        "driver_branch": None,
        "expected_gpus": 0,
        "require_gpu": False,
        "container_test": True,
        "container_image": "nvidia/cuda:12.9.1-base-ubuntu24.04",
        "gpus": "all",
        "capabilities": "compute,utility",
        "runtimes": ["docker"],
        "repository_keys": [],
    }


# ---------------------------------------------------------------------------------------------
# Output: summary, JSON, result file, login message


def test_human_summary_has_one_line_per_check_then_the_overall_line(machine: FakeMachine) -> None:
    machine.with_gpus(h200_replies())
    machine.proc_version = H200 / "proc-version.txt"
    run = machine.run("--expected-gpus", "2")
    assert run.result is not None
    lines = run.stdout.splitlines()
    assert len(lines) == len(run.result["checks"]) + 1
    for line, check in zip(lines, run.result["checks"], strict=False):
        assert re.match(rf"^(PASS|FAIL|SKIP|WARN)  {check['name']} +{re.escape(check['detail'])}$", line)
    assert lines[-1].startswith("overall: FAIL: 1 x NVIDIA H200, driver 580.159.04; failed: gpu_count (")
    assert run.motd is not None and run.motd.count("\n") == 1
    assert run.motd.startswith("bakegen GPU check FAIL at ")
    assert "gpu_count: 1 GPU found, 2 expected" in run.motd


@pytest.mark.parametrize(
    ("args", "status", "motd_words"),
    [
        ((), "pass", "PASS at "),
        (("--require-gpu",), "no-gpu", "NO-GPU at "),
    ],
)
def test_login_message_is_one_line(machine: FakeMachine, args: tuple[str, ...], status: str, motd_words: str) -> None:
    if status == "pass":
        machine.with_gpus(h200_replies())
    run = machine.run(*args)
    assert run.result is not None and run.result["status"] == status
    assert run.motd is not None and run.motd.count("\n") == 1 and motd_words in run.motd


def test_quiet_prints_nothing_but_still_writes_the_files(machine: FakeMachine) -> None:
    machine.with_gpus(h200_replies())
    run = machine.run("--quiet")
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")
    assert run.result is not None and run.motd is not None


def test_unwritable_login_message_and_result_are_warnings(machine: FakeMachine, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("", encoding="utf-8")
    machine.with_gpus(h200_replies())
    run = machine.run("--json", state_dir=blocker / "state", motd_file=blocker / "motd")
    assert run.returncode == 0
    assert json.loads(run.stdout)["status"] == "pass"
    warnings = run.stderr.splitlines()
    assert len(warnings) == 2
    assert warnings[0].startswith(f"bakegen-gpu-check: warning: cannot write result file {blocker}/state/")
    assert warnings[1].startswith(f"bakegen-gpu-check: warning: cannot write login message {blocker}/motd")


def test_repeated_runs_replace_the_result_and_leave_no_temporary_files(machine: FakeMachine) -> None:
    machine.with_gpus(h200_replies())
    first = machine.run("--quiet")
    second = machine.run("--quiet", "--expected-gpus", "3")
    assert first.result is not None and second.result is not None
    assert (first.result["status"], second.result["status"]) == ("pass", "fail")
    assert sorted(path.name for path in (machine.root / "state").iterdir()) == ["gpu-check.json"]
    assert sorted(path.name for path in machine.motd_file.parent.iterdir()) == [machine.motd_file.name]
    assert oct(machine.state_file.stat().st_mode & 0o777) == "0o644"


def test_the_check_is_fast_without_the_container_test(machine: FakeMachine) -> None:
    machine.with_gpus(hgx_replies())
    run = machine.run("--no-container-test")
    assert run.result is not None
    assert run.result["duration_s"] < 3.0
    assert machine.calls("nvidia-smi") == [" ".join(gpu_check.query_command("x")[1:]), "-q -x", "topo -m"]


# ---------------------------------------------------------------------------------------------
# The program must stay a Python 3.6 standard-library script


def test_program_is_an_executable_script_with_the_bakegen_banner() -> None:
    lines = PROGRAM.read_text(encoding="utf-8").splitlines()
    # -I: the check, run as root at boot, reads no PYTHON* variable and no module beside it (issue 16, F14).
    assert lines[0] == "#!/usr/bin/python3 -I"
    assert "Part of bakegen" in lines[3] and "installs it" in lines[3]
    assert os.access(PROGRAM, os.X_OK)


def python_3_6_violations(source: str) -> list[str]:
    """Constructs that parse on the running Python but break on 3.6."""
    try:
        tree = ast.parse(source, feature_version=(3, 6))
    except SyntaxError as error:
        return [f"line {error.lineno}: {error.msg}"]
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("__future__", "dataclasses"):
            problems.append(f"line {node.lineno}: from {node.module} import")
        if isinstance(node, ast.Import) and any(alias.name == "dataclasses" for alias in node.names):
            problems.append(f"line {node.lineno}: import dataclasses")
        if isinstance(node, ast.keyword) and node.arg in ("capture_output", "text"):
            problems.append(f"line {node.lineno}: keyword {node.arg}= (Python 3.7+)")
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("list", "dict", "tuple", "set", "type", "frozenset")
        ):
            problems.append(f"line {node.lineno}: {node.value.id}[...] (Python 3.9+)")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and _is_annotation_part(node, tree):
            problems.append(f"line {node.lineno}: X | Y annotation (Python 3.10+)")
    return problems


def _is_annotation_part(node: ast.AST, tree: ast.AST) -> bool:
    annotations: list[ast.AST] = []
    for parent in ast.walk(tree):
        if isinstance(parent, ast.arg | ast.AnnAssign) and parent.annotation is not None:
            annotations.append(parent.annotation)
        if isinstance(parent, ast.FunctionDef) and parent.returns is not None:
            annotations.append(parent.returns)
    return any(node is inner for annotation in annotations for inner in ast.walk(annotation))


def test_program_uses_nothing_newer_than_python_3_6() -> None:
    assert python_3_6_violations(PROGRAM.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    ("snippet", "problem"),
    [
        ("from __future__ import annotations\n", "from __future__"),
        ("import dataclasses\n", "import dataclasses"),
        ("import subprocess\nsubprocess.run(['x'], capture_output=True)\n", "capture_output="),
        ("def f(x: list[str]) -> None: pass\n", "list[...]"),
        ("def f(x: 'int | None') -> int | None: pass\n", "X | Y annotation"),
        ("x = 1\nprint(f'{x=}')\n", "only supported in Python 3.8"),
        ("if (n := 3) > 2: pass\n", "only supported in Python 3.8"),
    ],
)
def test_the_python_3_6_guard_catches_newer_constructs(snippet: str, problem: str) -> None:
    assert any(problem in text for text in python_3_6_violations(snippet)), python_3_6_violations(snippet)


def old_interpreters() -> Iterator[str]:
    """python3.6 and python3.7 where this machine has them (on PATH or under pyenv)."""
    for version in ("3.6", "3.7"):
        found = shutil.which(f"python{version}")
        pyenv = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))
        candidate = pyenv[-1] if pyenv else found
        if candidate:
            yield candidate


@pytest.mark.parametrize("interpreter", list(old_interpreters()) or ["none found"])
def test_program_runs_on_old_pythons(machine: FakeMachine, interpreter: str) -> None:
    if interpreter == "none found":
        pytest.skip("no python3.6 or python3.7 on this machine; the AST guard above still runs")
    machine.with_gpus(h200_replies())
    machine.proc_version = H200 / "proc-version.txt"
    run = machine.run("--json", "--expected-gpus", "2", interpreter=interpreter)
    assert run.returncode == 1, run.stderr
    result = assert_valid_result(run.result)
    assert result["gpu_count"] == 1
    assert run.check("gpu_count")["status"] == "fail"


# ---------------------------------------------------------------------------------------------
# The systemd unit


def unit_settings(text: str) -> dict[str, list[str]]:
    """'Section.Key' -> values, in order (systemd keys such as After= may repeat)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key}", []).append(value)
    return settings


def test_unit_is_a_oneshot_after_the_gpu_and_container_services() -> None:
    settings = unit_settings(UNIT.read_text(encoding="utf-8"))
    after = " ".join(settings["Unit.After"]).split()
    assert set(after) == {
        "network-online.target",
        "nvidia-persistenced.service",
        "nvidia-fabricmanager.service",
        "docker.service",
        "containerd.service",
        "crio.service",
    }
    assert settings["Unit.Wants"] == ["network-online.target"]
    assert settings["Service.Type"] == ["oneshot"]
    assert settings["Service.RemainAfterExit"] == ["yes"]
    assert settings["Service.ExecStart"] == ["/usr/local/sbin/bakegen-gpu-check"]
    assert settings["Install.WantedBy"] == ["multi-user.target"]
    ordering = " ".join(
        value for key in ("Unit.After", "Unit.Before", "Unit.Requires", "Unit.Wants") for value in settings.get(key, [])
    )
    assert "cloud-final" not in ordering


def systemd_seconds(value: str) -> int:
    units = {"min": 60, "s": 1, "h": 3600}
    match = re.fullmatch(r"(\d+)(min|s|h)?", value)
    assert match, value
    return int(match.group(1)) * units[match.group(2) or "s"]


def test_unit_timeout_outlasts_the_programs_own_worst_case() -> None:
    settings = unit_settings(UNIT.read_text(encoding="utf-8"))
    worst = (
        3 * gpu_check.NVIDIA_SMI_TIMEOUT
        + len(gpu_check.KNOWN_RUNTIMES) * gpu_check.RUNTIME_QUERY_TIMEOUT
        + gpu_check.SYSTEMCTL_TIMEOUT
        + gpu_check.CONTAINER_TEST_TIMEOUT
    )
    assert systemd_seconds(settings["Service.TimeoutStartSec"][0]) > worst


@pytest.fixture(scope="module")
def systemd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throw-away root with the stock units, for systemd-analyze verify --root."""
    root = tmp_path_factory.mktemp("systemd-root")
    stock = next((Path(p) for p in ("/usr/lib/systemd/system", "/lib/systemd/system") if Path(p).is_dir()), None)
    assert stock is not None, "no stock systemd units on this machine"
    shutil.copytree(stock, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    return root


def verify_unit(root: Path, unit_text: str, with_stub: bool = True) -> str:
    systemd_analyze = shutil.which("systemd-analyze")
    assert systemd_analyze is not None, "systemd-analyze is needed to verify the unit"
    stub = root / "usr/local/sbin/bakegen-gpu-check"
    if with_stub:
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
        stub.chmod(0o755)
    elif stub.exists():
        stub.unlink()
    installed = root / "etc/systemd/system/bakegen-gpu-check.service"
    installed.write_text(unit_text, encoding="utf-8")
    argv = [systemd_analyze, "verify", f"--root={root}", "/etc/systemd/system/bakegen-gpu-check.service"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    return (done.stdout + done.stderr).strip() + ("" if done.returncode == 0 else f"\nexit code {done.returncode}")


def test_unit_passes_systemd_analyze_verify(systemd_root: Path) -> None:
    assert verify_unit(systemd_root, UNIT.read_text(encoding="utf-8")) == ""


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("Type=oneshot", "Type=oneshoot"),
        ("RemainAfterExit=yes", "RemainAfterExt=yes"),
        ("TimeoutStartSec=10min", "TimeoutStartSec=ten"),
    ],
)
def test_verify_catches_a_broken_unit(systemd_root: Path, old: str, new: str) -> None:
    text = UNIT.read_text(encoding="utf-8")
    assert old in text
    assert verify_unit(systemd_root, text.replace(old, new)) != ""


def test_verify_catches_a_missing_executable(systemd_root: Path) -> None:
    assert "bakegen-gpu-check" in verify_unit(systemd_root, UNIT.read_text(encoding="utf-8"), with_stub=False)


# ---------------------------------------------------------------------------------------------
# Outputs brought back from real GPU machines (tests/fixtures/gpu-check/device-runs/<kind>/)


def device_runs() -> list[Path]:
    return sorted(path for path in DEVICE_RUNS.iterdir() if path.is_dir()) if DEVICE_RUNS.is_dir() else []


def read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_device_runs_exist() -> None:
    assert [path.name for path in device_runs()], "no real device run committed"


@pytest.mark.parametrize("run_dir", device_runs(), ids=lambda path: path.name)
def test_device_run_passed_and_matches_the_captured_nvidia_smi(run_dir: Path) -> None:
    result = assert_valid_result(read_json(run_dir / "result.json"))
    assert (result["status"], result["exit_code"]) == ("pass", 0)
    rows = list(csv.reader(fixture_text(run_dir / "query-gpu.csv").splitlines(), skipinitialspace=True))
    assert rows and all(len(row) == len(gpu_check.QUERY_FIELDS) for row in rows)
    listed = gpu_check.GPU_LIST_LINE.findall(fixture_text(run_dir / "nvidia-smi-L.txt"))
    assert result["gpu_count"] == len(rows) == len(listed)
    root = ElementTree.fromstring(fixture_text(run_dir / "nvidia-smi-q.xml"))
    assert int(root.findtext("attached_gpus") or "-1") == result["gpu_count"]
    assert result["driver"]["kernel_module"] == result["driver"]["nvml"] == root.findtext("driver_version")
    assert [gpu["uuid"] for gpu in result["gpus"]] == [row[2] for row in rows]
    assert {check["name"]: check["status"] for check in result["checks"]}["nvidia_smi"] == "pass"


@pytest.mark.parametrize("run_dir", device_runs(), ids=lambda path: path.name)
def test_device_run_failure_paths(run_dir: Path) -> None:
    too_many = read_json(run_dir / "result-expected-too-many.json")
    assert_valid_result(too_many)
    assert (too_many["status"], too_many["exit_code"]) == ("fail", 1)
    failed = [check["name"] for check in too_many["checks"] if check["status"] == "fail" and check["required"]]
    assert failed == ["gpu_count"]
    required = read_json(run_dir / "result-require-gpu.json")
    assert_valid_result(required)
    assert (required["status"], required["exit_code"]) == ("pass", 0)
    exit_codes = dict(line.split("=") for line in fixture_text(run_dir / "exit-codes.txt").split())
    assert exit_codes == {"json": "0", "human": "0", "expected_too_many": "1", "require_gpu": "0"}
    assert read_json(run_dir / "state-file.json") == read_json(run_dir / "result.json")
    assert all((run_dir / f"{name}.stderr.txt").read_text(encoding="utf-8") == "" for name in exit_codes)


@pytest.mark.parametrize("run_dir", device_runs(), ids=lambda path: path.name)
def test_device_run_human_summary(run_dir: Path) -> None:
    result = read_json(run_dir / "result.json")
    lines = fixture_text(run_dir / "human.txt").splitlines()
    assert len(lines) == len(result["checks"]) + 1
    assert lines[-1].startswith(f"overall: PASS: {result['gpu_count']} x NVIDIA H200, driver ")


def steady(gpus: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The GPUs without the readings that change between two calls (the captures came after the check)."""
    return [{key: value for key, value in gpu.items() if key not in ("temperature_c", "power_draw_w")} for gpu in gpus]


@pytest.mark.parametrize("run_dir", device_runs(), ids=lambda path: path.name)
def test_device_captures_replayed_here_give_the_same_result(machine: FakeMachine, run_dir: Path) -> None:
    """Feed the real captures back through a fake nvidia-smi: the program must reach the same verdicts."""
    original = read_json(run_dir / "result.json")
    machine.with_gpus(
        smi_replies(
            fixture_text(run_dir / "query-gpu.csv"),
            fixture_text(run_dir / "nvidia-smi-q.xml"),
            fixture_text(run_dir / "topo-m.txt"),
        )
    )
    machine.proc_version = run_dir / "proc-version.txt"
    machine.config = {key: original["config"]["settings"][key] for key in ("expected_gpus", "driver_branch")}
    run = machine.run()
    replay = assert_valid_result(run.result)
    assert steady(replay["gpus"]) == steady(original["gpus"])
    assert replay["driver"] == original["driver"]
    assert replay["interconnect"]["topology"] == original["interconnect"]["topology"]
    wanted = {check["name"]: check["status"] for check in original["checks"]}
    # repository_keys and kernel_guard came after the captures (2026-11-29); the device machine holds no bakegen key
    # and no guard record: skip.
    assert {check["name"]: check["status"] for check in replay["checks"]} == {
        **wanted,
        "repository_keys": "skip",
        "kernel_guard": "skip",
    }


def test_two_gpu_device_run_shows_nvlink_and_a_completed_fabric() -> None:
    result = read_json(DEVICE_RUNS / "nvidia-h200-x2" / "result.json")
    assert result["gpu_count"] == 2
    assert [gpu["pci_bus_id"] for gpu in result["gpus"]] == ["00000000:00:06.0", "00000000:00:07.0"]
    link = result["interconnect"]
    assert (link["nvlink"], link["nvswitch_fabric"]) == (True, True)
    assert link["topology"]["pairs"] == [{"gpus": [0, 1], "link": "NV18"}]
    assert [(entry["index"], entry["state"], entry["status"]) for entry in link["fabric"]] == [
        (0, "Completed", "Success"),
        (1, "Completed", "Success"),
    ]
    fabric = next(check for check in result["checks"] if check["name"] == "fabric")
    assert (fabric["status"], fabric["required"]) == ("pass", True)


# Kernel lifecycle: a kernel without the module, and the kernel-install guard's record


def test_running_kernel_without_a_module_is_named_with_the_kernels_that_have_one(machine: FakeMachine) -> None:
    """A kernel update without a module: the GPU is on PCI, nothing is loaded, and the check says why."""
    machine.tool("nvidia-smi", smi_failure(FAILURES / "no-driver.txt", 9))
    machine.pci_device("0000:00:06.0")
    machine.kernel(RUNNING_KERNEL, module=None)
    machine.kernel("6.1.0-40-cloud-amd64")
    run = machine.run()
    assert run.returncode == 1
    assert run.check("kernel_module") == {
        "name": "kernel_module",
        "status": "fail",
        "required": True,
        "detail": f"no NVIDIA kernel module for the running kernel {RUNNING_KERNEL} (kernels with one: "
        "6.1.0-40-cloud-amd64): boot one of those, or install this kernel's headers and rebuild (dkms autoinstall)",
    }


def test_module_on_disk_but_not_loaded_keeps_the_plain_message(machine: FakeMachine) -> None:
    machine.tool("nvidia-smi", smi_failure(FAILURES / "no-driver.txt", 9))
    machine.pci_device("0000:00:06.0")
    machine.kernel(RUNNING_KERNEL, module="kernel/nvidia-580srv/nvidia.ko")
    run = machine.run()
    assert (
        run.check("kernel_module")["detail"] == "NVIDIA kernel module not loaded (no readable driver version in /proc)"
    )


@pytest.mark.parametrize(
    ("record", "kernels", "status", "detail"),
    [
        (None, {}, "skip", "no kernel installed since provisioning (no kernel-install guard record)"),
        (
            {"kernel": "6.1.0-41-amd64", "module": True, "time": "2026-12-01T21:30:00Z"},
            {"6.1.0-41-amd64": "updates/dkms/nvidia-current.ko.xz"},
            "pass",
            "the last kernel installed, 6.1.0-41-amd64, got its NVIDIA module (2026-12-01T21:30:00Z)",
        ),
        (
            GUARD_FAILED,
            {"6.1.0-41-rt-amd64": None},
            "fail",
            "kernel 6.1.0-41-rt-amd64 has no NVIDIA module (kernel-install guard, 2026-12-01T21:40:00Z): "
            + GUARD_FAILED["message"],
        ),
        (
            GUARD_FAILED,
            {"6.1.0-41-rt-amd64": "updates/dkms/nvidia-current.ko.xz"},
            "pass",
            "kernel 6.1.0-41-rt-amd64 has its NVIDIA module now (the kernel-install guard found none at "
            "2026-12-01T21:40:00Z)",
        ),
        (
            GUARD_FAILED,
            {},
            "skip",
            "kernel 6.1.0-41-rt-amd64, installed at 2026-12-01T21:40:00Z without an NVIDIA module, is gone",
        ),
        ("{not json", {}, "fail", "unreadable kernel-install guard record"),
    ],
    ids=["no-record", "module", "no-module", "fixed-since", "removed-since", "unreadable"],
)
def test_kernel_guard_record_is_reported_without_failing_a_working_host(
    machine: FakeMachine, record: dict[str, Any] | str | None, kernels: dict[str, str | None], status: str, detail: str
) -> None:
    """The running kernel has its module and the GPU works: a kernel the guard found without one is named (the
    next boot must not pick it), but the check is not required and the host still passes."""
    machine.with_gpus(h200_replies())
    machine.pci_device("0000:00:06.0")
    machine.kernel(RUNNING_KERNEL)
    for release, module in kernels.items():
        machine.kernel(release, module=module)
    if record is not None:
        machine.guard_record(record)
    run = machine.run()
    assert run.returncode == 0, run.stdout
    check = run.check("kernel_guard")
    assert (check["status"], check["required"]) == (status, False)
    assert check["detail"].startswith(detail)
    assert assert_valid_result(run.result)["status"] == "pass"
