#!/usr/bin/env python3
# bakegen-gpu-check: the first-boot NVIDIA GPU check.
#
# Part of bakegen, which installs it verbatim as /usr/local/sbin/bakegen-gpu-check together with
# bakegen-gpu-check.service (a oneshot unit run at every boot); it can also be run by hand.
# Edit it in bakegen (templates/files/bakegen-gpu-check.py), not on an installed machine.
#
# Standard library only, and it must run on every python3 from 3.6 (RHEL 8's platform python)
# to 3.13: no dataclasses, no walrus, no `from __future__ import annotations`, no
# subprocess.run(capture_output=/text=). Documentation: docs/gpu-check.md in bakegen.
"""Check that this machine's NVIDIA GPUs, driver and container runtime are ready for work."""

import argparse
import contextlib
import csv
import datetime
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

TOOL = "bakegen-gpu-check"
VERSION = "1.0.0"
RESULT_SCHEMA = 1

DEFAULT_CONFIG_PATH = "/etc/bakegen/gpu-check.json"
DEFAULT_STATE_DIR = "/var/lib/bakegen"
RESULT_FILE_NAME = "gpu-check.json"
DEFAULT_MOTD_FILE = "/etc/motd.d/90-bakegen-gpu-check"
DEFAULT_PROC_VERSION = "/proc/driver/nvidia/version"
DEFAULT_PCI_DEVICES_DIR = "/sys/bus/pci/devices"
DEFAULT_DEV_DIR = "/dev"
NVIDIA_SMI_FALLBACK_DIRS = ("/usr/bin", "/usr/local/nvidia/bin")

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2

# Seconds. nvidia-smi can take several seconds on 8 GPUs without persistence mode; a hung driver
# must not hang boot. The container smoke test may have to pull its image first.
NVIDIA_SMI_TIMEOUT = 60
RUNTIME_QUERY_TIMEOUT = 30
SYSTEMCTL_TIMEOUT = 10
CONTAINER_TEST_TIMEOUT = 420

# The fields asked of `nvidia-smi --query-gpu`, in order; parse_query_csv maps them to JSON keys.
QUERY_FIELDS = (
    "index",
    "name",
    "uuid",
    "pci.bus_id",
    "driver_version",
    "vbios_version",
    "memory.total",
    "persistence_mode",
    "compute_mode",
    "mig.mode.current",
    "ecc.mode.current",
    "temperature.gpu",
    "power.draw",
    "power.limit",
)
QUERY_FIELD_KEYS = {
    "index": ("index", "int"),
    "name": ("name", "str"),
    "uuid": ("uuid", "str"),
    "pci.bus_id": ("pci_bus_id", "str"),
    "driver_version": ("driver_version", "str"),
    "vbios_version": ("vbios_version", "str"),
    "memory.total": ("memory_total_mib", "int"),
    "persistence_mode": ("persistence_mode", "str"),
    "compute_mode": ("compute_mode", "str"),
    "mig.mode.current": ("mig_mode", "str"),
    "ecc.mode.current": ("ecc_mode", "str"),
    "temperature.gpu": ("temperature_c", "int"),
    "power.draw": ("power_draw_w", "float"),
    "power.limit": ("power_limit_w", "float"),
}

CONFIG_DEFAULTS: Dict[str, Any] = {
    "schema": 1,
    "driver_branch": None,
    "expected_gpus": 0,
    "require_gpu": False,
    "container_test": True,
    "container_image": "nvidia/cuda:12.9.1-base-ubuntu24.04",
    "gpus": "all",
    "capabilities": "compute,utility",
    "runtimes": ["docker"],
}
KNOWN_RUNTIMES = ("docker", "containerd", "crio")
KNOWN_CAPABILITIES = ("all", "compute", "compat32", "display", "graphics", "utility", "video")

STATUS_PASS = "pass"
STATUS_FAIL = "fail"
STATUS_SKIP = "skip"
OVERALL_NO_GPU = "no-gpu"

# What nvidia-smi prints when it cannot work, and the name this program gives each case.
SMI_OK = "ok"
SMI_NOT_INSTALLED = "not-installed"
SMI_NO_DRIVER = "no-driver"
SMI_VERSION_MISMATCH = "version-mismatch"
SMI_NO_DEVICES = "no-devices"
SMI_TIMEOUT = "timeout"
SMI_ERROR = "error"
SMI_MESSAGES = (
    ("couldn't communicate with the NVIDIA driver", SMI_NO_DRIVER),
    ("Driver/library version mismatch", SMI_VERSION_MISMATCH),
    ("No devices were found", SMI_NO_DEVICES),
)

NOT_AVAILABLE = ("", "N/A", "[N/A]", "Not Supported", "[Not Supported]", "Unknown Error", "[Unknown Error]")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
VERSION_IN_PROC = re.compile(r"NVRM version:.*?\s(\d+\.\d+(?:\.\d+)?)\s")
NVML_LIBRARY_VERSION = re.compile(r"NVML library version:\s*(\d+(?:\.\d+)*)")
GPU_LABEL = re.compile(r"^GPU(\d+)$")
GPU_LIST_LINE = re.compile(r"^GPU \d+: ", re.MULTILINE)
DEV_GPU_NODE = re.compile(r"^nvidia\d+$")


class ConfigError(Exception):
    """A usage or configuration mistake: reported on one line, exit 2."""


class CommandResult:
    """What one external command did: its exit code and output, or why it did not run."""

    def __init__(self, argv: List[str], returncode: Optional[int], stdout: str, stderr: str,
                 error: Optional[str], seconds: float) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.error = error  # "not-found", "timeout" or an OS error text; None when it ran
        self.seconds = seconds

    @property
    def ok(self) -> bool:
        return self.error is None and self.returncode == 0

    @property
    def output(self) -> str:
        return (self.stdout + "\n" + self.stderr).strip()

    def first_line(self) -> str:
        """The line that says what went wrong: stderr's first, else stdout's (nvidia-smi's errors)."""
        for line in (self.stderr + "\n" + self.stdout).splitlines():
            if line.strip():
                return line.strip()
        if self.error:
            return self.error
        return f"exit code {self.returncode}"


class Facts:
    """Everything read from the machine before any verdict is made."""

    def __init__(self) -> None:
        self.kernel_module: Optional[str] = None
        self.kernel_module_flavor: Optional[str] = None
        self.smi_path: Optional[str] = None
        self.smi_state = SMI_NOT_INSTALLED
        self.smi_detail = ""
        self.nvml_version: Optional[str] = None
        self.cuda_version: Optional[str] = None
        self.gpus: List[Dict[str, Any]] = []
        self.xml_gpus: Optional[List[Dict[str, Any]]] = None
        self.xml_error: Optional[str] = None
        self.topology: Optional[Dict[str, Any]] = None
        self.topology_error: Optional[str] = None
        self.pci_gpus: Optional[List[str]] = None
        self.pci_nvswitches: Optional[int] = None
        self.dev_nodes: List[str] = []
        self.fabric_manager: Optional[str] = None

    @property
    def gpu_present(self) -> bool:
        """Any sign of an NVIDIA GPU: on the PCI bus, a device node, the kernel module or nvidia-smi."""
        return bool(self.gpus or self.pci_gpus or self.dev_nodes or self.kernel_module)

    @property
    def driver_version(self) -> Optional[str]:
        return self.nvml_version or self.kernel_module


# A check looks at the facts and the settings and returns (status, detail).
CheckFunction = Callable[[Facts, Dict[str, Any]], Tuple[str, str]]


# ---------------------------------------------------------------------------------------------
# Small helpers


def run_command(argv: List[str], timeout: float) -> CommandResult:
    """Run argv without a shell; never raises for a missing program, a failure or a timeout."""
    started = time.monotonic()
    try:
        # stdout/stderr=PIPE, not capture_output=True: that is Python 3.7+.
        completed = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,  # noqa: UP022
                                   stderr=subprocess.PIPE, timeout=timeout, check=False)
    except FileNotFoundError:
        return CommandResult(argv, None, "", "", "not-found", time.monotonic() - started)
    except subprocess.TimeoutExpired:
        return CommandResult(argv, None, "", "", "timeout", time.monotonic() - started)
    except OSError as error:
        return CommandResult(argv, None, "", "", str(error), time.monotonic() - started)
    return CommandResult(argv, completed.returncode, decode(completed.stdout), decode(completed.stderr),
                         None, time.monotonic() - started)


def decode(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def clean(value: Optional[str]) -> Optional[str]:
    """nvidia-smi's text for a value, or None where it says the value is not available."""
    if value is None:
        return None
    value = value.strip()
    if value in NOT_AVAILABLE:
        return None
    return value


def to_int(value: Optional[str]) -> Optional[int]:
    value = clean(value)
    if value is None:
        return None
    match = re.match(r"^-?\d+", value)
    return int(match.group(0)) if match else None


def to_float(value: Optional[str]) -> Optional[float]:
    value = clean(value)
    if value is None:
        return None
    match = re.match(r"^-?\d+(?:\.\d+)?", value)
    return float(match.group(0)) if match else None


def yes_no(value: Optional[str]) -> Optional[bool]:
    value = clean(value)
    if value is None:
        return None
    return value.lower() in ("yes", "true", "enabled")


def branch_of(version: Optional[str]) -> Optional[str]:
    return version.split(".")[0] if version else None


def plural(count: int, word: str) -> str:
    return "{} {}{}".format(count, word, "" if count == 1 else "s")


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def warn(message: str) -> None:
    sys.stderr.write(f"{TOOL}: warning: {message}\n")


# ---------------------------------------------------------------------------------------------
# Configuration


def load_config_file(path: Optional[str]) -> Tuple[Dict[str, Any], Optional[str]]:
    """The config file's settings and its path; a missing default file means all defaults."""
    explicit = path is not None
    path = path or DEFAULT_CONFIG_PATH
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{path}: config file not found") from None
        return {}, None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read config file: {error}") from None
    try:
        data = json.loads(text)
    except ValueError as error:
        raise ConfigError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {json_type(data)}")
    problems = config_problems(data)
    if problems:
        raise ConfigError("{}: {}".format(path, "; ".join(problems)))
    return data, path


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def config_problems(settings: Dict[str, Any]) -> List[str]:
    """Every problem with a set of settings, as sorted 'key: message' texts."""
    problems = []
    for key in sorted(settings):
        if key not in CONFIG_DEFAULTS:
            problems.append("unknown key '{}' (known: {})".format(key, ", ".join(sorted(CONFIG_DEFAULTS))))
            continue
        problem = value_problem(key, settings[key])
        if problem:
            problems.append(f"{key}: {problem}, got {json.dumps(settings[key])}")
    return problems


def value_problem(key: str, value: Any) -> Optional[str]:
    """Why value does not suit key, or None."""
    if key == "schema":
        return None if is_int(value) and value == 1 else "expected 1"
    if key == "driver_branch":
        ok = value is None or (isinstance(value, str) and re.match(r"^\d{3,4}$", value) is not None)
        return None if ok else "expected a driver branch as a string (e.g. \"580\") or null"
    if key == "expected_gpus":
        return None if is_int(value) and value >= 0 else "expected an integer >= 0"
    if key in ("require_gpu", "container_test"):
        return None if isinstance(value, bool) else "expected true or false"
    if key in ("container_image", "gpus"):
        ok = isinstance(value, str) and value.strip() == value and value != "" and " " not in value
        return None if ok else "expected a non-empty string without spaces"
    if key == "capabilities":
        return capabilities_problem(value)
    if key == "runtimes":
        return runtimes_problem(value)
    return None


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def capabilities_problem(value: Any) -> Optional[str]:
    if not isinstance(value, str) or not value:
        return "expected a comma-separated list of {}".format(", ".join(KNOWN_CAPABILITIES))
    unknown = [item for item in value.split(",") if item not in KNOWN_CAPABILITIES]
    if unknown:
        return "unknown capability {} (known: {})".format(unknown[0], ", ".join(KNOWN_CAPABILITIES))
    return None


def runtimes_problem(value: Any) -> Optional[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return "expected a list of runtime names ({})".format(", ".join(KNOWN_RUNTIMES))
    unknown = [item for item in value if item not in KNOWN_RUNTIMES]
    if unknown:
        return "unknown runtime {} (known: {})".format(unknown[0], ", ".join(KNOWN_RUNTIMES))
    if len(set(value)) != len(value):
        return "a runtime is listed twice"
    return None


def command_line_settings(args: argparse.Namespace) -> Dict[str, Any]:
    """The settings given as options, which win over the config file."""
    settings: Dict[str, Any] = {}
    if args.expected_gpus is not None:
        settings["expected_gpus"] = args.expected_gpus
    if args.driver_branch is not None:
        settings["driver_branch"] = args.driver_branch
    if args.require_gpu:
        settings["require_gpu"] = True
    if args.no_container_test:
        settings["container_test"] = False
    for key in ("container_image", "gpus", "capabilities"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    problems = config_problems(settings)
    if problems:
        raise ConfigError("command line: {}".format("; ".join(problems)))
    return settings


def effective_config(args: argparse.Namespace) -> Tuple[Dict[str, Any], Optional[str]]:
    from_file, path = load_config_file(args.config)
    config = dict(CONFIG_DEFAULTS)
    config.update(from_file)
    config.update(command_line_settings(args))
    return config, path


# ---------------------------------------------------------------------------------------------
# Reading the machine


def read_kernel_module(proc_version: str) -> Tuple[Optional[str], Optional[str]]:
    """The loaded kernel module's version and flavour (open or proprietary), or (None, None)."""
    try:
        with open(proc_version, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return None, None
    match = VERSION_IN_PROC.search(text)
    if not match:
        return None, None
    flavor = "open" if "Open Kernel Module" in text else "proprietary"
    return match.group(1), flavor


def scan_pci(devices_dir: str) -> Tuple[Optional[List[str]], Optional[int]]:
    """NVIDIA GPUs (display class) and NVSwitches (bridge class 0x0680) on the PCI bus.

    GPUs handed to another driver (vfio-pci for a VM, say) are left out: they are not ours to use.
    (None, None) when the bus cannot be read (a container, a sandbox).
    """
    try:
        names = sorted(os.listdir(devices_dir))
    except OSError:
        return None, None
    gpus = []
    switches = 0
    for name in names:
        device = os.path.join(devices_dir, name)
        if read_small(os.path.join(device, "vendor")) != "0x10de":
            continue
        device_class = read_small(os.path.join(device, "class")) or ""
        if device_class.startswith(("0x0300", "0x0302")) and bound_driver(device) in (None, "nvidia"):
            gpus.append(name)
        elif device_class.startswith("0x0680"):
            switches += 1
    return gpus, switches


def read_small(path: str) -> Optional[str]:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read().strip().lower()
    except OSError:
        return None


def bound_driver(device: str) -> Optional[str]:
    try:
        return os.path.basename(os.readlink(os.path.join(device, "driver")))
    except OSError:
        return None


def gpu_device_nodes(dev_dir: str) -> List[str]:
    try:
        return sorted(name for name in os.listdir(dev_dir) if DEV_GPU_NODE.match(name))
    except OSError:
        return []


def find_nvidia_smi(explicit: Optional[str]) -> Optional[str]:
    """The nvidia-smi to run: the one named, else on PATH, else in the driver's usual folders."""
    if explicit:
        return explicit
    found = shutil.which("nvidia-smi")
    if found:
        return found
    for folder in NVIDIA_SMI_FALLBACK_DIRS:
        candidate = os.path.join(folder, "nvidia-smi")
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def classify_smi_failure(result: CommandResult) -> Tuple[str, str]:
    """Name why nvidia-smi failed, with the line that says so."""
    if result.error == "not-found":
        return SMI_NOT_INSTALLED, f"nvidia-smi not installed ({result.argv[0]} not found)"
    if result.error == "timeout":
        return SMI_TIMEOUT, f"nvidia-smi did not answer within {NVIDIA_SMI_TIMEOUT} s"
    for message, state in SMI_MESSAGES:
        if message in result.output:
            return state, result.first_line()
    return SMI_ERROR, f"nvidia-smi failed (exit code {result.returncode}): {result.first_line()}"


def query_command(smi: str) -> List[str]:
    return [smi, "--query-gpu=" + ",".join(QUERY_FIELDS), "--format=csv,noheader,nounits"]


def parse_query_csv(text: str) -> List[Dict[str, Any]]:
    """GPUs from `nvidia-smi --query-gpu=QUERY_FIELDS`, with or without header and units."""
    rows = [row for row in csv.reader(text.splitlines(), skipinitialspace=True) if row]
    if not rows:
        return []
    names = list(QUERY_FIELDS)
    units: Dict[str, str] = {}
    if rows[0][0].strip() == QUERY_FIELDS[0]:
        names, units = parse_csv_header(rows[0])
        rows = rows[1:]
    return [gpu_from_row(dict(zip(names, row)), units) for row in rows]


def parse_csv_header(row: List[str]) -> Tuple[List[str], Dict[str, str]]:
    """Field names and their units from a header such as 'memory.total [MiB]'."""
    names = []
    units = {}
    for cell in row:
        match = re.match(r"^(\S+)(?: \[(.+)\])?$", cell.strip())
        name = match.group(1) if match else cell.strip()
        names.append(name)
        if match and match.group(2):
            units[name] = match.group(2)
    return names, units


def gpu_from_row(values: Dict[str, str], units: Dict[str, str]) -> Dict[str, Any]:
    gpu: Dict[str, Any] = {}
    for field in QUERY_FIELDS:
        key, kind = QUERY_FIELD_KEYS[field]
        raw = values.get(field)
        unit = units.get(field)
        if raw is not None and unit and raw.strip().endswith(" " + unit):
            raw = raw.strip()[: -len(unit) - 1]
        if kind == "int":
            gpu[key] = to_int(raw)
        elif kind == "float":
            gpu[key] = to_float(raw)
        else:
            gpu[key] = clean(raw)
    return gpu


def parse_smi_xml(text: str) -> Tuple[Optional[str], Optional[str], List[Dict[str, Any]]]:
    """Driver version, CUDA version and per-GPU health from `nvidia-smi -q -x`."""
    root = ElementTree.fromstring(text)
    gpus = [gpu_from_xml(element) for element in root.findall("gpu")]
    return clean(root.findtext("driver_version")), clean(root.findtext("cuda_version")), gpus


def gpu_from_xml(gpu: ElementTree.Element) -> Dict[str, Any]:
    ecc = gpu.find("ecc_errors")
    return {
        "pci_bus_id": clean(gpu.get("id")) or clean(gpu.findtext("pci/pci_bus_id")),
        "name": clean(gpu.findtext("product_name")),
        "ecc_mode": clean(gpu.findtext("ecc_mode/current_ecc")),
        "ecc_errors": ecc_counts(ecc),
        "sram_threshold_exceeded": yes_no(gpu.findtext("ecc_errors/aggregate/sram_threshold_exceeded")),
        "unrepairable_memory": yes_no(gpu.findtext("ecc_errors/unrepairable_memory")),
        "channel_repair_pending": yes_no(gpu.findtext("ecc_errors/channel_repair_pending")),
        "tpc_repair_pending": yes_no(gpu.findtext("ecc_errors/tpc_repair_pending")),
        "retired_pages": retired_pages(gpu),
        "remapped_rows": remapped_rows(gpu),
        "recovery_action": clean(gpu.findtext("gpu_recovery_action")),
        "fabric": {
            "state": clean(gpu.findtext("fabric/state")),
            "status": clean(gpu.findtext("fabric/status")),
            "clique_id": clean(gpu.findtext("fabric/cliqueId")),
            "cluster_uuid": clean(gpu.findtext("fabric/clusterUuid")),
            "health": clean(gpu.findtext("fabric/health/summary")),
        },
    }


def ecc_counts(ecc: Optional[ElementTree.Element]) -> Dict[str, Optional[int]]:
    """Correctable and uncorrectable ECC counts, since boot (volatile) and over the GPU's life."""
    counts: Dict[str, Optional[int]] = {}
    for period in ("volatile", "aggregate"):
        element = ecc.find(period) if ecc is not None else None
        correctable, uncorrectable = sum_ecc_period(element)
        counts[period + "_correctable"] = correctable
        counts[period + "_uncorrectable"] = uncorrectable
    return counts


def sum_ecc_period(element: Optional[ElementTree.Element]) -> Tuple[Optional[int], Optional[int]]:
    """Sum one period's counters: drivers >= 5xx name them sram_/dram_(un)correctable; older
    ones have single_bit/total and double_bit/total."""
    sums: List[Optional[int]] = [None, None]
    if element is None:
        return None, None
    for child in element:
        if child.tag in ("single_bit", "double_bit"):
            slot, value = (0 if child.tag == "single_bit" else 1), to_int(child.findtext("total"))
        elif "uncorrectable" in child.tag:
            slot, value = 1, to_int(child.text)
        elif "correctable" in child.tag:
            slot, value = 0, to_int(child.text)
        else:
            continue
        if value is not None:
            sums[slot] = (sums[slot] or 0) + value
    return sums[0], sums[1]


def retired_pages(gpu: ElementTree.Element) -> Dict[str, Any]:
    pending = gpu.findtext("retired_pages/pending_retirement")
    if clean(pending) is None:
        pending = gpu.findtext("retired_pages/pending_blacklist")
    return {
        "single_bit": to_int(gpu.findtext("retired_pages/multiple_single_bit_retirement/retired_count")),
        "double_bit": to_int(gpu.findtext("retired_pages/double_bit_retirement/retired_count")),
        "pending": yes_no(pending),
    }


def remapped_rows(gpu: ElementTree.Element) -> Dict[str, Any]:
    return {
        "correctable": to_int(gpu.findtext("remapped_rows/remapped_row_corr")),
        "uncorrectable": to_int(gpu.findtext("remapped_rows/remapped_row_unc")),
        "pending": yes_no(gpu.findtext("remapped_rows/remapped_row_pending")),
        "failure": yes_no(gpu.findtext("remapped_rows/remapped_row_failure")),
    }


def parse_topology(text: str) -> Dict[str, Any]:
    """GPU-to-GPU links and CPU affinity from `nvidia-smi topo -m` (NIC rows and legend ignored)."""
    header: Optional[List[str]] = None
    pairs: List[Dict[str, Any]] = []
    links: Set[str] = set()
    affinity: Dict[str, str] = {}
    for line in ANSI_ESCAPE.sub("", text).splitlines():
        cells = [cell.strip() for cell in line.split("\t")]
        if header is None:
            if any(GPU_LABEL.match(cell) for cell in cells):
                header = cells
            continue
        row = GPU_LABEL.match(cells[0])
        if not line.strip():
            break
        if not row:
            continue
        index = int(row.group(1))
        for column, value in zip(header, cells):
            peer = GPU_LABEL.match(column)
            if peer and int(peer.group(1)) > index:
                pairs.append({"gpus": [index, int(peer.group(1))], "link": value})
                links.add(value)
            elif column == "CPU Affinity":
                affinity[str(index)] = value
    return {"pairs": pairs, "link_types": sorted(links), "cpu_affinity": affinity}


def fabric_manager_state() -> Optional[str]:
    """systemd's word for nvidia-fabricmanager.service, or None without systemctl."""
    result = run_command(["systemctl", "is-active", "nvidia-fabricmanager.service"], SYSTEMCTL_TIMEOUT)
    if result.error:
        return None
    return result.stdout.strip() or None


def gather_nvidia_smi(facts: Facts, smi: Optional[str]) -> None:
    facts.smi_path = smi
    if smi is None:
        facts.smi_state = SMI_NOT_INSTALLED
        facts.smi_detail = "nvidia-smi not installed (not on PATH, nor in {})".format(
            ", ".join(NVIDIA_SMI_FALLBACK_DIRS))
        return
    result = run_command(query_command(smi), NVIDIA_SMI_TIMEOUT)
    if not result.ok:
        facts.smi_state, facts.smi_detail = classify_smi_failure(result)
        match = NVML_LIBRARY_VERSION.search(result.output)
        facts.nvml_version = match.group(1) if match else None
        return
    facts.gpus = parse_query_csv(result.stdout)
    if not facts.gpus:
        facts.smi_state, facts.smi_detail = SMI_NO_DEVICES, "nvidia-smi listed no GPUs"
        return
    facts.smi_state = SMI_OK
    facts.smi_detail = "nvidia-smi listed {} ({:.2f} s)".format(plural(len(facts.gpus), "GPU"), result.seconds)
    facts.nvml_version = facts.gpus[0].get("driver_version")
    gather_xml(facts, smi)
    gather_topology(facts, smi)


def gather_xml(facts: Facts, smi: str) -> None:
    result = run_command([smi, "-q", "-x"], NVIDIA_SMI_TIMEOUT)
    if not result.ok:
        facts.xml_error = f"nvidia-smi -q -x failed: {result.first_line()}"
        return
    try:
        driver, cuda, gpus = parse_smi_xml(result.stdout)
    except ElementTree.ParseError as error:
        facts.xml_error = f"nvidia-smi -q -x printed unreadable XML: {error}"
        return
    facts.xml_gpus = gpus
    facts.cuda_version = cuda
    facts.nvml_version = facts.nvml_version or driver
    if any(gpu["fabric"]["state"] for gpu in gpus):
        facts.fabric_manager = fabric_manager_state()


def gather_topology(facts: Facts, smi: str) -> None:
    result = run_command([smi, "topo", "-m"], NVIDIA_SMI_TIMEOUT)
    if not result.ok:
        facts.topology_error = f"nvidia-smi topo -m failed: {result.first_line()}"
        return
    facts.topology = parse_topology(result.stdout)


def gather_facts(args: argparse.Namespace) -> Facts:
    facts = Facts()
    facts.kernel_module, facts.kernel_module_flavor = read_kernel_module(args.proc_version)
    facts.pci_gpus, facts.pci_nvswitches = scan_pci(args.pci_devices_dir)
    facts.dev_nodes = gpu_device_nodes(args.dev_dir)
    gather_nvidia_smi(facts, find_nvidia_smi(args.nvidia_smi))
    return facts


# ---------------------------------------------------------------------------------------------
# Checks: each returns (status, detail); run_checks adds the name and whether it is required.


def check_gpu_present(facts: Facts, config: Dict[str, Any]) -> Tuple[str, str]:
    if facts.gpu_present:
        return STATUS_PASS, f"NVIDIA GPU present ({presence_evidence(facts)})"
    detail = f"no NVIDIA GPU present: {absence_evidence(facts)}"
    return (STATUS_FAIL if config["require_gpu"] else STATUS_SKIP), detail


def presence_evidence(facts: Facts) -> str:
    evidence = []
    if facts.pci_gpus:
        evidence.append(f"{len(facts.pci_gpus)} on PCI")
    if facts.dev_nodes:
        evidence.append("/dev/" + ",".join(facts.dev_nodes))
    if facts.kernel_module:
        evidence.append("kernel module loaded")
    if facts.gpus:
        evidence.append(f"{len(facts.gpus)} listed by nvidia-smi")
    return ", ".join(evidence)


def absence_evidence(facts: Facts) -> str:
    pci = "PCI bus not readable" if facts.pci_gpus is None else "none on the PCI bus"
    return f"{pci}, no /dev/nvidia[0-9]*, no kernel module; {facts.smi_detail}"


def check_kernel_module(facts: Facts, config: Dict[str, Any]) -> Tuple[str, str]:
    if facts.kernel_module:
        return STATUS_PASS, f"{facts.kernel_module_flavor} kernel module {facts.kernel_module} loaded"
    return STATUS_FAIL, "NVIDIA kernel module not loaded (no readable driver version in /proc)"


def check_nvidia_smi(facts: Facts, config: Dict[str, Any]) -> Tuple[str, str]:
    if facts.smi_state == SMI_OK:
        return STATUS_PASS, facts.smi_detail
    return STATUS_FAIL, f"{facts.smi_state}: {facts.smi_detail}"


def check_driver_version_match(facts: Facts, config: Dict[str, Any]) -> Tuple[str, str]:
    kernel, nvml = facts.kernel_module, facts.nvml_version
    if facts.smi_state == SMI_VERSION_MISMATCH:
        return STATUS_FAIL, ("Driver/library version mismatch: kernel module {}, user-space NVML {}; "
                             "reboot to load the installed driver".format(kernel or "unknown", nvml or "unknown"))
    if not kernel or not nvml:
        missing = "kernel module" if not kernel else "NVML (nvidia-smi)"
        return STATUS_SKIP, f"cannot compare: no version from the {missing}"
    if kernel != nvml:
        return STATUS_FAIL, f"kernel module {kernel} but user-space NVML {nvml}; reboot"
    return STATUS_PASS, f"kernel module and NVML both {kernel}"


def check_driver_branch(facts: Facts, config: Dict[str, Any]) -> Tuple[str, str]:
    wanted = config["driver_branch"]
    if wanted is None:
        return STATUS_SKIP, "no driver_branch configured"
    found = branch_of(facts.driver_version)
    if found is None:
        return STATUS_FAIL, f"driver branch {wanted} expected, but no driver version could be read"
    if found != wanted:
        return STATUS_FAIL, f"driver {facts.driver_version} is branch {found}, expected {wanted}"
    return STATUS_PASS, f"driver {facts.driver_version} is branch {found}"


def check_gpu_count(facts: Facts, config: Dict[str, Any]) -> Tuple[str, str]:
    found = len(facts.gpus)
    expected = config["expected_gpus"]
    wanted = expected if expected > 0 else 1
    unseen = unseen_pci_gpus(facts)
    if found < wanted:
        return STATUS_FAIL, "{} found, {} expected{}".format(
            plural(found, "GPU"), expected if expected else "at least 1", unseen_note(unseen))
    if unseen:
        return STATUS_FAIL, "{} found, but{}".format(plural(found, "GPU"), unseen_note(unseen))
    return STATUS_PASS, "{} found{}".format(
        plural(found, "GPU"), f", {expected} expected" if expected else "")


def unseen_pci_gpus(facts: Facts) -> List[str]:
    """GPUs on the PCI bus (ours to use) that nvidia-smi does not list."""
    if not facts.pci_gpus:
        return []
    listed = set(normal_bus_id(gpu.get("pci_bus_id")) for gpu in facts.gpus)
    return [address for address in facts.pci_gpus if normal_bus_id(address) not in listed]


def normal_bus_id(bus_id: Optional[str]) -> str:
    """'00000000:1B:00.0' (nvidia-smi) and '0000:1b:00.0' (sysfs) as one form."""
    if not bus_id:
        return ""
    domain, _, rest = bus_id.lower().partition(":")
    return f"{int(domain, 16):04x}:{rest}" if rest else bus_id.lower()


def unseen_note(unseen: List[str]) -> str:
    if not unseen:
        return ""
    return " ({} on the PCI bus not seen by nvidia-smi: {})".format(len(unseen), ", ".join(unseen))


def check_persistence_mode(facts: Facts, config: Dict[str, Any]) -> Tuple[str, str]:
    if not facts.gpus:
        return STATUS_SKIP, "no GPU listed by nvidia-smi"
    off = [str(gpu["index"]) for gpu in facts.gpus if gpu.get("persistence_mode") != "Enabled"]
    if off:
        return STATUS_FAIL, ("persistence mode off on GPU {}: is nvidia-persistenced running?"
                             .format(", ".join(off)))
    return STATUS_PASS, "persistence mode on for {}".format(plural(len(facts.gpus), "GPU"))


def check_ecc_health(facts: Facts, config: Dict[str, Any]) -> Tuple[str, str]:
    if facts.xml_gpus is None:
        return STATUS_SKIP, facts.xml_error or "no GPU listed by nvidia-smi"
    problems: List[str] = []
    notes: List[str] = []
    for position, gpu in enumerate(facts.xml_gpus):
        label = f"GPU {gpu_index_for(facts, gpu, position)}"
        problems.extend(f"{label}: {text}" for text in memory_problems(gpu))
        notes.extend(f"{label}: {text}" for text in memory_notes(gpu))
    if problems:
        return STATUS_FAIL, "; ".join(problems + notes)
    summary = "no uncorrectable ECC errors since boot, no pending page retirement or row remapping"
    return STATUS_PASS, "; ".join([summary, *notes])


def gpu_index_for(facts: Facts, xml_gpu: Dict[str, Any], position: int) -> int:
    bus_id = normal_bus_id(xml_gpu.get("pci_bus_id"))
    for gpu in facts.gpus:
        if normal_bus_id(gpu.get("pci_bus_id")) == bus_id and gpu.get("index") is not None:
            return int(gpu["index"])
    return position


def memory_problems(gpu: Dict[str, Any]) -> List[str]:
    """What in -q -x says this GPU's memory needs a reset, a reboot or service."""
    problems = []
    uncorrectable = gpu["ecc_errors"]["volatile_uncorrectable"]
    if uncorrectable:
        problems.append("{} since boot".format(plural(uncorrectable, "uncorrectable ECC error")))
    if gpu["remapped_rows"]["pending"]:
        problems.append("row remapping pending (reset the GPU)")
    if gpu["remapped_rows"]["failure"]:
        problems.append("row remapping failed (the GPU needs service)")
    if gpu["retired_pages"]["pending"]:
        problems.append("page retirement pending (reboot)")
    flags = (("sram_threshold_exceeded", "SRAM uncorrectable error threshold exceeded"),
             ("unrepairable_memory", "unrepairable memory reported"),
             ("channel_repair_pending", "memory channel repair pending (reset the GPU)"),
             ("tpc_repair_pending", "TPC repair pending (reset the GPU)"))
    problems.extend(text for key, text in flags if gpu.get(key))
    action = gpu.get("recovery_action")
    if action and action != "None":
        problems.append(f"driver asks for recovery action '{action}'")
    return problems


def memory_notes(gpu: Dict[str, Any]) -> List[str]:
    """Facts worth showing that are not failures."""
    notes = []
    if gpu.get("ecc_mode") == "Disabled":
        notes.append("ECC disabled")
    counts = gpu["ecc_errors"]
    if counts["volatile_correctable"]:
        notes.append("{} since boot".format(plural(counts["volatile_correctable"], "correctable ECC error")))
    if counts["aggregate_uncorrectable"]:
        notes.append("{} over its life".format(plural(counts["aggregate_uncorrectable"], "uncorrectable ECC error")))
    retired = (gpu["retired_pages"]["single_bit"] or 0) + (gpu["retired_pages"]["double_bit"] or 0)
    if retired:
        notes.append("{} retired".format(plural(retired, "page")))
    remapped = (gpu["remapped_rows"]["correctable"] or 0) + (gpu["remapped_rows"]["uncorrectable"] or 0)
    if remapped:
        notes.append("{} remapped".format(plural(remapped, "row")))
    return notes


def check_fabric(facts: Facts, config: Dict[str, Any]) -> Tuple[str, str]:
    if facts.xml_gpus is None:
        return STATUS_SKIP, facts.xml_error or "no GPU listed by nvidia-smi"
    reporting = [gpu for gpu in facts.xml_gpus if gpu["fabric"]["state"]]
    if not reporting:
        return STATUS_SKIP, "no NVSwitch fabric reported (fabric state N/A)"
    manager = "nvidia-fabricmanager: {}".format(facts.fabric_manager or "state unknown (no systemctl)")
    unready = []
    for position, gpu in enumerate(facts.xml_gpus):
        fabric = gpu["fabric"]
        if fabric["state"] != "Completed" or fabric["status"] not in (None, "Success"):
            unready.append("GPU {} fabric state {}, status {}".format(
                gpu_index_for(facts, gpu, position), fabric["state"] or "N/A", fabric["status"] or "N/A"))
    if unready:
        return STATUS_FAIL, "{}; {}".format("; ".join(unready), manager)
    return STATUS_PASS, "fabric state Completed on {}; {}".format(plural(len(reporting), "GPU"), manager)


def runtime_command(runtime: str) -> List[str]:
    """How to ask each runtime for its configuration (as nvidia-ctk itself does)."""
    if runtime == "docker":
        return ["docker", "info", "--format", "{{json .Runtimes}}"]
    if runtime == "containerd":
        return ["containerd", "config", "dump"]
    return ["crio", "status", "config"]


def runtime_names(runtime: str, output: str) -> List[str]:
    """Runtime handler names found in a runtime's configuration output."""
    if runtime == "docker":
        data = json.loads(output)
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        return sorted(data)
    pattern = r"\.runtimes\.[\"']?([\w.-]+?)[\"']?\]"
    return sorted(set(re.findall(pattern, output)))


def check_runtime(runtime: str, facts: Facts, config: Dict[str, Any]) -> Tuple[str, str]:
    argv = runtime_command(runtime)
    result = run_command(argv, RUNTIME_QUERY_TIMEOUT)
    if result.error == "not-found":
        return STATUS_SKIP, f"{runtime} not installed"
    if not result.ok:
        return STATUS_FAIL, "`{}` failed: {}".format(" ".join(argv[:3]), result.first_line())
    try:
        names = runtime_names(runtime, result.stdout)
    except ValueError as error:
        return STATUS_FAIL, "cannot read `{}` output: {}".format(" ".join(argv[:3]), error)
    if "nvidia" not in names:
        return STATUS_FAIL, ("{} has no 'nvidia' runtime (has: {}); run `nvidia-ctk runtime configure "
                             "--runtime={}` and restart it".format(runtime, ", ".join(names) or "none", runtime))
    return STATUS_PASS, "{} knows the nvidia runtime (runtimes: {})".format(runtime, ", ".join(names))


def check_container(facts: Facts, config: Dict[str, Any]) -> Tuple[str, str]:
    if not config["container_test"]:
        return STATUS_SKIP, "container test disabled"
    if "docker" not in config["runtimes"]:
        return STATUS_SKIP, "the container test uses docker, which is not among the configured runtimes"
    if facts.smi_state != SMI_OK:
        return STATUS_SKIP, "nvidia-smi fails on the host; a container cannot do better"
    argv = ["docker", "run", "--rm", "--gpus", config["gpus"], "-e",
            "NVIDIA_DRIVER_CAPABILITIES=" + config["capabilities"], config["container_image"], "nvidia-smi", "-L"]
    result = run_command(argv, CONTAINER_TEST_TIMEOUT)
    if result.error == "not-found":
        return STATUS_SKIP, "docker not installed"
    if result.error == "timeout":
        return STATUS_FAIL, "`docker run {}` did not finish within {} s".format(
            config["container_image"], CONTAINER_TEST_TIMEOUT)
    if result.returncode != 0:
        return STATUS_FAIL, "`docker run ... {} nvidia-smi -L` failed (exit code {}): {}".format(
            config["container_image"], result.returncode, result.first_line())
    seen = len(GPU_LIST_LINE.findall(result.stdout))
    if seen == 0 or (config["gpus"] == "all" and seen < len(facts.gpus)):
        return STATUS_FAIL, "the container saw {} of the host's {}".format(seen, plural(len(facts.gpus), "GPU"))
    return STATUS_PASS, "a {} container saw {} ({:.1f} s)".format(
        config["container_image"], plural(seen, "GPU"), result.seconds)


# (name, check, required); a "runtime_<name>" check is added per configured runtime, then the smoke test.
CHECKS: Tuple[Tuple[str, CheckFunction, bool], ...] = (
    ("kernel_module", check_kernel_module, True),
    ("nvidia_smi", check_nvidia_smi, True),
    ("driver_version_match", check_driver_version_match, True),
    ("driver_branch", check_driver_branch, True),
    ("gpu_count", check_gpu_count, True),
    ("persistence_mode", check_persistence_mode, False),
    ("ecc_health", check_ecc_health, True),
    ("fabric", check_fabric, True),
)


def make_check(name: str, status: str, required: bool, detail: str) -> Dict[str, Any]:
    return {"name": name, "status": status, "required": required, "detail": detail}


def run_one(name: str, check: CheckFunction, required: bool, facts: Facts, config: Dict[str, Any]) -> Dict[str, Any]:
    """One check's verdict; a bug in a check is reported as that check failing, not as a crash."""
    try:
        status, detail = check(facts, config)
    except Exception as error:
        status, detail = STATUS_FAIL, f"internal error: {type(error).__name__}: {error}"
    return make_check(name, status, required, detail)


def run_checks(facts: Facts, config: Dict[str, Any]) -> List[Dict[str, Any]]:
    status, detail = check_gpu_present(facts, config)
    checks = [make_check("gpu_present", status, bool(config["require_gpu"]), detail)]
    planned: List[Tuple[str, CheckFunction, bool]] = list(CHECKS)
    for runtime in config["runtimes"]:
        planned.append(("runtime_" + runtime, functools.partial(check_runtime, runtime), True))
    planned.append(("container_smoke_test", check_container, True))
    for name, check, required in planned:
        if facts.gpu_present:
            checks.append(run_one(name, check, required, facts, config))
        else:
            checks.append(make_check(name, STATUS_SKIP, required, "no NVIDIA GPU present"))
    return checks


# ---------------------------------------------------------------------------------------------
# The result


def overall_status(facts: Facts, checks: List[Dict[str, Any]]) -> str:
    if not facts.gpu_present:
        return OVERALL_NO_GPU
    if failed_required(checks):
        return STATUS_FAIL
    return STATUS_PASS


def failed_required(checks: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [check for check in checks if check["status"] == STATUS_FAIL and check["required"]]


def exit_code(status: str, config: Dict[str, Any]) -> int:
    if status == STATUS_FAIL or (status == OVERALL_NO_GPU and config["require_gpu"]):
        return EXIT_CHECK_FAILED
    return EXIT_OK


def public_gpus(facts: Facts) -> List[Dict[str, Any]]:
    """The GPUs as nvidia-smi lists them, with their health from -q -x where it matches."""
    health = dict((normal_bus_id(gpu["pci_bus_id"]), gpu) for gpu in facts.xml_gpus or [])
    gpus = []
    for gpu in facts.gpus:
        entry = dict((key, value) for key, value in gpu.items() if key != "driver_version")
        xml_gpu = health.get(normal_bus_id(gpu.get("pci_bus_id")))
        if xml_gpu is not None:
            for key in ("ecc_errors", "retired_pages", "remapped_rows", "recovery_action", "fabric"):
                entry[key] = xml_gpu[key]
        gpus.append(entry)
    return gpus


def interconnect(facts: Facts) -> Dict[str, Any]:
    fabric = []
    for position, gpu in enumerate(facts.xml_gpus or []):
        if gpu["fabric"]["state"]:
            entry = {"index": gpu_index_for(facts, gpu, position), "pci_bus_id": gpu["pci_bus_id"]}
            entry.update(gpu["fabric"])
            fabric.append(entry)
    nvlink: Optional[bool] = None
    if facts.topology is not None and len(facts.gpus) > 1:
        nvlink = any(link.startswith("NV") for link in facts.topology["link_types"])
    return {
        "topology": facts.topology,
        "topology_error": facts.topology_error,
        "nvlink": nvlink,
        "nvswitch_fabric": bool(fabric),
        "fabric": fabric,
        "fabric_manager": facts.fabric_manager,
        "pci_nvswitches": facts.pci_nvswitches,
    }


def build_result(facts: Facts, config: Dict[str, Any], config_path: Optional[str],
                 checks: List[Dict[str, Any]], started_at: str, started: float) -> Dict[str, Any]:
    status = overall_status(facts, checks)
    return {
        "schema": RESULT_SCHEMA,
        "tool": TOOL,
        "version": VERSION,
        "time": started_at,
        "host": socket.gethostname(),
        "status": status,
        "exit_code": exit_code(status, config),
        "duration_s": round(time.monotonic() - started, 3),
        "driver": {
            "kernel_module": facts.kernel_module,
            "kernel_module_flavor": facts.kernel_module_flavor,
            "nvml": facts.nvml_version,
            "branch": branch_of(facts.driver_version),
            "cuda": facts.cuda_version,
        },
        "nvidia_smi": {"path": facts.smi_path, "state": facts.smi_state, "detail": facts.smi_detail},
        "hardware": {"pci_gpus": facts.pci_gpus, "dev_nodes": facts.dev_nodes},
        "gpus": public_gpus(facts),
        "gpu_count": len(facts.gpus),
        "interconnect": interconnect(facts),
        "checks": checks,
        "config": {"path": config_path, "settings": config},
    }


STATUS_LABELS = {STATUS_PASS: "PASS", STATUS_FAIL: "FAIL", STATUS_SKIP: "SKIP"}


def check_label(check: Dict[str, Any]) -> str:
    if check["status"] == STATUS_FAIL and not check["required"]:
        return "WARN"
    return STATUS_LABELS[check["status"]]


def gpu_summary(result: Dict[str, Any]) -> str:
    if not result["gpus"]:
        return "no GPU listed"
    counts: Dict[str, int] = {}
    for gpu in result["gpus"]:
        name = gpu.get("name") or "unknown GPU"
        counts[name] = counts.get(name, 0) + 1
    names = ", ".join(f"{count} x {name}" for name, count in sorted(counts.items()))
    driver = result["driver"]["nvml"] or result["driver"]["kernel_module"]
    return f"{names}, driver {driver}" if driver else names


def overall_line(result: Dict[str, Any]) -> str:
    status = result["status"]
    failed = [check["name"] for check in failed_required(result["checks"])]
    if status == OVERALL_NO_GPU:
        verdict = "NO-GPU (GPU required)" if result["exit_code"] else "NO-GPU"
        return f"overall: {verdict}: no NVIDIA GPU present"
    text = f"overall: {status.upper()}: {gpu_summary(result)}"
    if failed:
        text += "; failed: {}".format(", ".join(failed))
    return text + " ({:.2f} s)".format(result["duration_s"])


def human_summary(result: Dict[str, Any]) -> str:
    width = max(len(check["name"]) for check in result["checks"])
    lines = ["{}  {}  {}".format(check_label(check), check["name"].ljust(width), check["detail"])
             for check in result["checks"]]
    lines.append(overall_line(result))
    return "\n".join(lines) + "\n"


def motd_line(result: Dict[str, Any], result_path: str) -> str:
    status = result["status"]
    head = "bakegen GPU check {} at {}".format(status.upper(), result["time"])
    if status == STATUS_PASS:
        return f"{head}: {gpu_summary(result)}\n"
    if status == OVERALL_NO_GPU:
        return f"{head}: no NVIDIA GPU present\n"
    failed = "; ".join("{}: {}".format(check["name"], check["detail"]) for check in failed_required(result["checks"]))
    return f"{head}: {failed} (details: {result_path} or `journalctl -u bakegen-gpu-check`)\n"


def write_atomically(path: str, text: str) -> None:
    """Write text to path through a temporary file in the same folder, so no reader sees half."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=folder)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def save_outputs(result: Dict[str, Any], state_dir: str, motd_file: str) -> str:
    """Write the result file and the login message; a failure to write is a warning, not a crash."""
    result_path = os.path.join(state_dir, RESULT_FILE_NAME)
    try:
        write_atomically(result_path, json.dumps(result, indent=2, sort_keys=True) + "\n")
    except OSError as error:
        warn(f"cannot write result file {result_path}: {error}")
    try:
        write_atomically(motd_file, motd_line(result, result_path))
    except OSError as error:
        warn(f"cannot write login message {motd_file}: {error}")
    return result_path


# ---------------------------------------------------------------------------------------------
# Command line


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=TOOL, description="Check that this machine's NVIDIA GPUs, driver and container runtime work. "
        "Exit 0: all required checks passed or were skipped (also: no GPU present, unless required); "
        "1: a required check failed; 2: usage or config error.")
    parser.add_argument("--version", action="version", version="%(prog)s " + VERSION)
    parser.add_argument("--config", metavar="PATH",
                        help=f"config file (default {DEFAULT_CONFIG_PATH}; a missing default file means all defaults)")
    parser.add_argument("--state-dir", metavar="DIR", default=DEFAULT_STATE_DIR,
                        help=f"where {RESULT_FILE_NAME} is written (default %(default)s)")
    parser.add_argument("--motd-file", metavar="PATH", default=DEFAULT_MOTD_FILE,
                        help="one-line login message (default %(default)s)")
    overrides = parser.add_argument_group("overrides of the config file")
    overrides.add_argument("--expected-gpus", metavar="N", type=non_negative_int,
                           help="fail with fewer GPUs (0: any count >= 1)")
    overrides.add_argument("--driver-branch", metavar="B", help="fail unless the driver is of this branch (e.g. 580)")
    overrides.add_argument("--require-gpu", action="store_true", help="exit 1 when no GPU is present")
    overrides.add_argument("--no-container-test", action="store_true", help="skip the docker run smoke test")
    overrides.add_argument("--container-image", metavar="IMAGE", help="image for the smoke test")
    overrides.add_argument("--gpus", metavar="SPEC", help="docker run --gpus value (default all)")
    overrides.add_argument("--capabilities", metavar="CAPS", help="NVIDIA_DRIVER_CAPABILITIES for the smoke test")
    output = parser.add_argument_group("output")
    output.add_argument("--json", action="store_true", help="print the JSON result instead of the summary")
    output.add_argument("--quiet", action="store_true", help="print no summary (the files are still written)")
    probes = parser.add_argument_group("where to look (for tests and odd installs)")
    probes.add_argument("--nvidia-smi", metavar="PATH", help="nvidia-smi to run (default: on PATH, else in {})"
                        .format(" or ".join(NVIDIA_SMI_FALLBACK_DIRS)))
    probes.add_argument("--proc-version", metavar="PATH", default=DEFAULT_PROC_VERSION,
                        help="the kernel module's version file (default %(default)s)")
    probes.add_argument("--pci-devices-dir", metavar="DIR", default=DEFAULT_PCI_DEVICES_DIR,
                        help="PCI devices in sysfs (default %(default)s)")
    probes.add_argument("--dev-dir", metavar="DIR", default=DEFAULT_DEV_DIR,
                        help="where /dev/nvidiaN nodes appear (default %(default)s)")
    return parser


def main(argv: Optional[Iterable[str]] = None) -> int:
    started_at, started = utc_now(), time.monotonic()
    args = build_parser().parse_args(None if argv is None else list(argv))
    try:
        config, config_path = effective_config(args)
    except ConfigError as error:
        sys.stderr.write(f"{TOOL}: error: {error}\n")
        return EXIT_USAGE
    facts = gather_facts(args)
    checks = run_checks(facts, config)
    result = build_result(facts, config, config_path, checks, started_at, started)
    save_outputs(result, args.state_dir, args.motd_file)
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
    elif not args.quiet:
        sys.stdout.write(human_summary(result))
    return int(result["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
