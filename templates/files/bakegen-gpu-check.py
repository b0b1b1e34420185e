#!/usr/bin/python3 -I
# bakegen-gpu-check: the first-boot NVIDIA GPU check.
#
# Part of bakegen, which installs it verbatim as /usr/local/sbin/bakegen-gpu-check, run at every boot by
# bakegen-gpu-check.service; edit it in bakegen. Documentation: docs/gpu-check.md. Standard library only, for
# every python3 from 3.6 (RHEL 8) to 3.13: no dataclasses, walrus, capture_output= or f"{x=}".
"""Check that this machine's NVIDIA GPUs, driver and container runtime are ready for work.

Usage: bakegen-gpu-check [--config PATH] [--expected-gpus N] [--require-gpu] [--json] [--quiet] ... (see --help)
"""

import argparse
import collections
import contextlib
import csv
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree

TOOL, VERSION = "bakegen-gpu-check", "1.0.0"
DEFAULT_CONFIG_PATH = "/etc/bakegen/gpu-check.json"
SMI_DIRS = ("/usr/bin", "/usr/local/nvidia/bin")
# Seconds: a hung driver must not hang boot; the smoke test may have to pull its image first.
# The smoke test never pulls (--pull=never: the install script pulls the image), so it takes seconds.
NVIDIA_SMI_TIMEOUT, RUNTIME_QUERY_TIMEOUT, SYSTEMCTL_TIMEOUT, CONTAINER_TEST_TIMEOUT = 60, 30, 10, 120
# How long a command that ignored its timeout (and SIGKILL: a process stuck in the driver) is waited for.
REAP_TIMEOUT = 5
KNOWN_CAPABILITIES = ("all", "compute", "compat32", "display", "graphics", "utility", "video")
KNOWN_RUNTIMES = ("docker", "containerd", "crio")
RUNTIME_COMMANDS = {  # how nvidia-ctk asks each runtime for its configuration
    "docker": ["docker", "info", "--format", "{{json .Runtimes}}"],
    "containerd": ["containerd", "config", "dump"],
    "crio": ["crio", "status", "config"],
}
SMI_MESSAGES = (("couldn't communicate with the NVIDIA driver", "no-driver"),
                ("Driver/library version mismatch", "version-mismatch"), ("No devices were found", "no-devices"))
NOT_AVAILABLE = ("", "N/A", "[N/A]", "Not Supported", "[Not Supported]", "Unknown Error", "[Unknown Error]")
GPU_LABEL = re.compile(r"^GPU(\d+)$")
# The NVIDIA kernel module's file: nvidia.ko as NVIDIA names it, nvidia-current.ko as Debian's packages do.
MODULE_FILE = re.compile(r"^nvidia(-current)?\.ko(\.[a-z]+)?$")
GPU_LIST_LINE = re.compile(r"^GPU \d+: ", re.MULTILINE)
# Everything but a newline that a terminal may act on (C0, DEL, C1: escape sequences, carriage returns).
CONTROL_CHARACTERS = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
# A container image reference, as bakegen accepts it: [registry[:port]/]path[:tag][@sha256:digest].
IMAGE_REFERENCE = re.compile(
    r"^(?:[a-z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$")
# docker run --gpus: all, a count, or device indexes / UUIDs.
GPUS_SPEC = re.compile(r'^(all|[1-9][0-9]?|"?device=[0-9A-Za-z,-]+"?)$')


class ConfigError(Exception):
    """A usage or config mistake: one line on stderr, exit 2."""


class CommandResult(collections.namedtuple("CommandResult", "argv returncode stdout stderr error seconds")):
    """What a command did; error is "not-found", "timeout" or an OS error text when it did not run."""

    @property
    def ok(self):
        return self.error is None and self.returncode == 0

    @property
    def output(self):
        return (self.stdout + "\n" + self.stderr).strip()

    def first_line(self):
        """stderr's first line, else stdout's (nvidia-smi prints its errors there)."""
        lines = [line.strip() for line in (self.stderr + "\n" + self.stdout).splitlines() if line.strip()]
        return lines[0] if lines else self.error or f"exit code {self.returncode}"


def run_command(argv, timeout):
    """Run argv without a shell; a missing program, an OS error or a timeout is reported, never raised.

    The command runs in a session of its own: on timeout the whole group is killed, and a process that does not
    die (stuck in the kernel) or a descendant holding its output open is left behind after REAP_TIMEOUT seconds
    instead of blocking the check."""
    started, code, out, err, error = time.monotonic(), None, b"", b"", None
    try:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True)
    except FileNotFoundError:
        error = "not-found"
    except OSError as problem:
        error = str(problem)
    else:
        try:
            out, err = process.communicate(timeout=timeout)
            code = process.returncode
        except subprocess.TimeoutExpired:
            error = "timeout"
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                out, err = process.communicate(timeout=REAP_TIMEOUT)
            out, err = out or b"", err or b""
    return CommandResult(argv, code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), error,
                         time.monotonic() - started)


def clean(value):
    """nvidia-smi's text, or None where it says the value is not available."""
    value = (value or "").strip()
    return None if value in NOT_AVAILABLE else value


def to_int(value):
    match = re.match(r"-?\d+", clean(value) or "")
    return int(match.group(0)) if match else None


def to_float(value):
    match = re.match(r"-?\d+(?:\.\d+)?", clean(value) or "")
    return float(match.group(0)) if match else None


def yes_no(value):
    value = clean(value)
    return None if value is None else value.lower() in ("yes", "true", "enabled")


def plural(count, word):
    return f"{count} {word}{'' if count == 1 else 's'}"


def normal_bus_id(bus_id):
    """'00000000:1B:00.0' (nvidia-smi) and '0000:1b:00.0' (sysfs) as one form."""
    domain, _, rest = (bus_id or "").lower().partition(":")
    return f"{int(domain, 16):04x}:{rest}" if rest else domain


# `nvidia-smi --query-gpu` fields in the order asked: (field, JSON key, converter).
QUERY_COLUMNS = (
    ("index", "index", to_int), ("name", "name", clean), ("uuid", "uuid", clean),
    ("pci.bus_id", "pci_bus_id", clean), ("driver_version", "driver_version", clean),
    ("vbios_version", "vbios_version", clean), ("memory.total", "memory_total_mib", to_int),
    ("persistence_mode", "persistence_mode", clean), ("compute_mode", "compute_mode", clean),
    ("mig.mode.current", "mig_mode", clean), ("ecc.mode.current", "ecc_mode", clean),
    ("temperature.gpu", "temperature_c", to_int), ("power.draw", "power_draw_w", to_float),
    ("power.limit", "power_limit_w", to_float),
)
QUERY_FIELDS = tuple(column[0] for column in QUERY_COLUMNS)
QUERY_FIELD_KEYS = {field: (key, convert) for field, key, convert in QUERY_COLUMNS}
# `nvidia-smi -q -x` flags that fail ecc_health, and what they mean.
MEMORY_FLAGS = (
    ("ecc_errors/aggregate/sram_threshold_exceeded", "SRAM uncorrectable error threshold exceeded"),
    ("ecc_errors/unrepairable_memory", "unrepairable memory reported"),
    ("ecc_errors/channel_repair_pending", "memory channel repair pending (reset the GPU)"),
    ("ecc_errors/tpc_repair_pending", "TPC repair pending (reset the GPU)"),
)
FABRIC_FIELDS = (("state", "state"), ("status", "status"), ("clique_id", "cliqueId"),
                 ("cluster_uuid", "clusterUuid"), ("health", "health/summary"))


# Configuration


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def is_bool(value):
    return isinstance(value, bool)


# Every config key: (default, is a value valid?, what is expected). Names in capabilities/runtimes must be known.
CONFIG_KEYS = {
    "schema": (1, lambda value: is_int(value) and value == 1, "expected 1"),
    "driver_branch": (None, lambda value: value is None or (isinstance(value, str) and re.match(r"^\d{3,4}$", value)),
                      'expected a driver branch as a string (e.g. "580") or null'),
    "expected_gpus": (0, lambda value: is_int(value) and value >= 0, "expected an integer >= 0"),
    "require_gpu": (False, is_bool, "expected true or false"),
    "container_test": (True, is_bool, "expected true or false"),
    "container_image": ("nvidia/cuda:12.9.1-base-ubuntu24.04",
                        lambda value: isinstance(value, str) and IMAGE_REFERENCE.match(value) is not None,
                        "expected a container image reference (name[:tag][@sha256:digest])"),
    "gpus": ("all", lambda value: isinstance(value, str) and GPUS_SPEC.match(value) is not None,
             "expected all, a count, or device=0,1"),
    "capabilities": ("compute,utility", lambda value: isinstance(value, str) and value != "",
                     "expected a comma-separated list of " + ", ".join(KNOWN_CAPABILITIES)),
    "runtimes": (["docker"], lambda value: isinstance(value, list) and all(isinstance(item, str) for item in value),
                 f"expected a list of runtime names ({', '.join(KNOWN_RUNTIMES)})"),
    "repository_keys": ([], lambda value: isinstance(value, list) and all(
        isinstance(item, dict) and sorted(item) == ["fingerprint", "path"] and isinstance(item["path"], str)
        and item["path"].startswith("/") and isinstance(item["fingerprint"], str)
        and re.match(r"^[0-9A-F]{40}$", item["fingerprint"]) for item in value),
        'expected a list of {"path": "/absolute/path", "fingerprint": "<40 hex digits>"}'),
}
# A repository key that expires within this many days is reported.
KEY_EXPIRY_WARNING_DAYS = 30
CONFIG_DEFAULTS = {key: rule[0] for key, rule in CONFIG_KEYS.items()}


def value_problem(key, value):
    """Why value does not suit key, or None."""
    _, valid, expected = CONFIG_KEYS[key]
    if not valid(value):
        return expected
    if key not in ("capabilities", "runtimes"):
        return None
    word, known = ("capability", KNOWN_CAPABILITIES) if key == "capabilities" else ("runtime", KNOWN_RUNTIMES)
    items = value.split(",") if key == "capabilities" else value
    unknown = [item for item in items if item not in known]
    if unknown:
        return f"unknown {word} {unknown[0]} (known: {', '.join(known)})"
    return "a runtime is listed twice" if key == "runtimes" and len(set(items)) != len(items) else None


def check_settings(settings, source):
    """Raise ConfigError naming every problem, sorted, on one line."""
    problems = []
    for key in sorted(settings):
        problem = value_problem(key, settings[key]) if key in CONFIG_KEYS else None
        if key not in CONFIG_KEYS:
            problems.append(f"unknown key '{key}' (known: {', '.join(sorted(CONFIG_KEYS))})")
        elif problem:
            problems.append(f"{key}: {problem}, got {json.dumps(settings[key])}")
    if problems:
        raise ConfigError(f"{source}: {'; '.join(problems)}")


def load_config_file(path):
    """The config file's settings and its path; a missing default file means all defaults."""
    explicit, path = path is not None, path or DEFAULT_CONFIG_PATH
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
        kinds = ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"), (list, "a list"))
        kind = next((name for kind, name in kinds if isinstance(data, kind)), "null")
        raise ConfigError(f"{path}: expected a JSON object, got {kind}")
    check_settings(data, path)
    return data, path


# Reading the machine


class Facts:
    """Everything read from the machine before any verdict; the class values mean "nothing found"."""

    kernel_module = kernel_module_flavor = smi_path = nvml_version = cuda_version = fabric_manager = None
    pci_gpus = pci_nvswitches = xml_gpus = topology = topology_error = None
    running_kernel = installed_kernels = module_kernels = kernel_guard = None
    smi_state, smi_detail, xml_error = "not-installed", "", "no GPU listed by nvidia-smi"
    gpus = dev_nodes = ()

    @property
    def gpu_present(self):
        return bool(self.gpus or self.pci_gpus or self.dev_nodes or self.kernel_module)

    @property
    def driver_version(self):
        return self.nvml_version or self.kernel_module


def read_kernel_module(proc_version):
    """The loaded kernel module's version and flavour (open or proprietary), or (None, None)."""
    try:
        with open(proc_version, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return None, None
    match = re.search(r"NVRM version:.*?\s(\d+\.\d+(?:\.\d+)?)\s", text)
    if not match:
        return None, None
    return match.group(1), "open" if "Open Kernel Module" in text else "proprietary"


def read_small(path):
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read().strip().lower()
    except OSError:
        return None


def scan_pci(devices_dir):
    """NVIDIA GPUs and the count of NVSwitches on the PCI bus; (None, None) if unreadable (a container).

    GPUs bound to another driver than nvidia (vfio-pci for a VM, say) are not ours to use."""
    try:
        names = sorted(os.listdir(devices_dir))
    except OSError:
        return None, None
    gpus, switches = [], 0
    for name in names:
        device = os.path.join(devices_dir, name)
        if read_small(os.path.join(device, "vendor")) != "0x10de":
            continue
        device_class = read_small(os.path.join(device, "class")) or ""
        try:
            driver = os.path.basename(os.readlink(os.path.join(device, "driver")))
        except OSError:
            driver = None
        if device_class.startswith(("0x0300", "0x0302")) and driver in (None, "nvidia"):
            gpus.append(name)
        elif device_class.startswith("0x0680"):  # bridge: NVSwitch
            switches += 1
    return gpus, switches


def classify_smi_failure(result):
    """Name why nvidia-smi failed, with the line that says so."""
    if result.error == "not-found":
        return "not-installed", f"nvidia-smi not installed ({result.argv[0]} not found)"
    if result.error == "timeout":
        return "timeout", f"nvidia-smi did not answer within {NVIDIA_SMI_TIMEOUT} s"
    for message, state in SMI_MESSAGES:
        if message in result.output:
            return state, result.first_line()
    return "error", f"nvidia-smi failed (exit code {result.returncode}): {result.first_line()}"


def query_command(smi):
    return [smi, "--query-gpu=" + ",".join(QUERY_FIELDS), "--format=csv,noheader,nounits"]


def parse_query_csv(text):
    """GPUs from `nvidia-smi --query-gpu=QUERY_FIELDS`, with or without header and units.

    Only numeric fields have units ('memory.total [MiB]': '143771 MiB'), and to_int/to_float read the number."""
    rows = [row for row in csv.reader(text.splitlines(), skipinitialspace=True) if row]
    names = QUERY_FIELDS
    if rows and rows[0][0].strip() == QUERY_FIELDS[0]:
        names = [re.sub(r" \[.*\]$", "", cell.strip()) for cell in rows.pop(0)]
    values = [dict(zip(names, row)) for row in rows]
    return [{key: convert(gpu.get(field)) for field, key, convert in QUERY_COLUMNS} for gpu in values]


def parse_smi_xml(text):
    """Driver version, CUDA version and per-GPU health from `nvidia-smi -q -x`."""
    root = ElementTree.fromstring(text)
    gpus = [gpu_from_xml(gpu) for gpu in root.findall("gpu")]
    return clean(root.findtext("driver_version")), clean(root.findtext("cuda_version")), gpus


def gpu_from_xml(gpu):
    def read(path, convert=clean):
        return convert(gpu.findtext(path))

    pending = "pending_retirement" if read("retired_pages/pending_retirement") else "pending_blacklist"
    rows = "remapped_rows/remapped_row_"
    return {
        "pci_bus_id": clean(gpu.get("id")) or read("pci/pci_bus_id"),
        "name": read("product_name"),
        "ecc_mode": read("ecc_mode/current_ecc"),
        "ecc_errors": ecc_counts(gpu.find("ecc_errors")),
        "memory_flags": [text for path, text in MEMORY_FLAGS if read(path, yes_no)],
        "retired_pages": {"single_bit": read("retired_pages/multiple_single_bit_retirement/retired_count", to_int),
                          "double_bit": read("retired_pages/double_bit_retirement/retired_count", to_int),
                          "pending": read("retired_pages/" + pending, yes_no)},
        "remapped_rows": {"correctable": read(rows + "corr", to_int), "uncorrectable": read(rows + "unc", to_int),
                          "pending": read(rows + "pending", yes_no), "failure": read(rows + "failure", yes_no)},
        "recovery_action": read("gpu_recovery_action"),
        "fabric": {key: read("fabric/" + path) for key, path in FABRIC_FIELDS},
    }


def ecc_counts(ecc):
    """(Un)correctable ECC counts since boot (volatile) and over the GPU's life (aggregate). Drivers >= 5xx name
    the counters sram_/dram_(un)correctable...; older ones single_bit/double_bit, each with a total."""
    counts = {}
    for period in ("volatile", "aggregate"):
        element = ecc.find(period) if ecc is not None else None
        sums = {"correctable": None, "uncorrectable": None}
        for child in element if element is not None else ():
            if child.tag in ("single_bit", "double_bit"):
                kind = "correctable" if child.tag == "single_bit" else "uncorrectable"
                value = to_int(child.findtext("total"))
            elif "correctable" in child.tag:
                kind, value = "uncorrectable" if "uncorrectable" in child.tag else "correctable", to_int(child.text)
            else:
                continue
            if value is not None:
                sums[kind] = (sums[kind] or 0) + value
        counts.update((f"{period}_{kind}", value) for kind, value in sums.items())
    return counts


def parse_topology(text):
    """GPU-to-GPU links and CPU affinity from `nvidia-smi topo -m` (NIC rows and the legend ignored)."""
    header, pairs, affinity = None, [], {}
    for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines():
        cells = [cell.strip() for cell in line.split("\t")]
        if header is None:
            header = cells if any(GPU_LABEL.match(cell) for cell in cells) else None
            continue
        if not line.strip():
            break
        row = GPU_LABEL.match(cells[0])
        if not row:
            continue
        index = int(row.group(1))
        for column, value in zip(header, cells):
            peer = GPU_LABEL.match(column)
            if peer and int(peer.group(1)) > index:
                pairs.append({"gpus": [index, int(peer.group(1))], "link": value})
            elif column == "CPU Affinity":
                affinity[str(index)] = value
    return {"pairs": pairs, "link_types": sorted(set(pair["link"] for pair in pairs)), "cpu_affinity": affinity}


def scan_kernels(modules_dir):
    """(installed kernels, those with an NVIDIA module file) under modules_dir; (None, None) if unreadable."""
    try:
        kernels = sorted(name for name in os.listdir(modules_dir) if os.path.isdir(os.path.join(modules_dir, name)))
    except OSError:
        return None, None
    with_module = []
    for kernel in kernels:
        for _, _, files in os.walk(os.path.join(modules_dir, kernel)):
            if any(MODULE_FILE.match(name) for name in files):
                with_module.append(kernel)
                break
    return kernels, with_module


def read_kernel_guard(path):
    """bakegen-kernel-guard's record of the last kernel installed: a dict, None without one, a text if unreadable."""
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        return f"unreadable kernel-install guard record {path}: {error}"
    if not isinstance(record, dict) or not isinstance(record.get("kernel"), str):
        return f"unreadable kernel-install guard record {path}: no kernel named"
    return record


def gather_facts(args):
    facts = Facts()
    facts.kernel_module, facts.kernel_module_flavor = read_kernel_module(args.proc_version)
    facts.running_kernel = args.kernel_release
    facts.installed_kernels, facts.module_kernels = scan_kernels(args.modules_dir)
    facts.kernel_guard = read_kernel_guard(os.path.join(args.state_dir, "kernel-guard.json"))
    facts.pci_gpus, facts.pci_nvswitches = scan_pci(args.pci_devices_dir)
    try:
        facts.dev_nodes = sorted(name for name in os.listdir(args.dev_dir) if re.match(r"^nvidia\d+$", name))
    except OSError:
        facts.dev_nodes = []
    usual = (os.path.join(folder, "nvidia-smi") for folder in SMI_DIRS)
    smi = facts.smi_path = (args.nvidia_smi or shutil.which("nvidia-smi")
                            or next((path for path in usual if os.access(path, os.X_OK)), None))
    if smi is None:
        facts.smi_detail = f"nvidia-smi not installed (not on PATH, nor in {', '.join(SMI_DIRS)})"
        return facts
    result = run_command(query_command(smi), NVIDIA_SMI_TIMEOUT)
    if not result.ok:
        facts.smi_state, facts.smi_detail = classify_smi_failure(result)
        match = re.search(r"NVML library version:\s*(\d+(?:\.\d+)*)", result.output)  # in a version mismatch
        facts.nvml_version = match.group(1) if match else None
        return facts
    facts.gpus = parse_query_csv(result.stdout)
    if not facts.gpus:
        facts.smi_state, facts.smi_detail = "no-devices", "nvidia-smi listed no GPUs"
        return facts
    facts.smi_state = "ok"
    facts.smi_detail = f"nvidia-smi listed {plural(len(facts.gpus), 'GPU')} ({result.seconds:.2f} s)"
    facts.nvml_version = facts.gpus[0]["driver_version"]
    result = run_command([smi, "-q", "-x"], NVIDIA_SMI_TIMEOUT)
    try:
        if not result.ok:
            facts.xml_error = f"nvidia-smi -q -x failed: {result.first_line()}"
        else:
            driver, facts.cuda_version, facts.xml_gpus = parse_smi_xml(result.stdout)
            facts.nvml_version = facts.nvml_version or driver
    except ElementTree.ParseError as error:
        facts.xml_error = f"nvidia-smi -q -x printed unreadable XML: {error}"
    # -q -x's GPUs take nvidia-smi's index where the bus ids match, else their position.
    indexes = {normal_bus_id(gpu["pci_bus_id"]): gpu["index"] for gpu in facts.gpus[::-1] if gpu["index"] is not None}
    for position, gpu in enumerate(facts.xml_gpus or []):
        gpu["index"] = indexes.get(normal_bus_id(gpu["pci_bus_id"]), position)
    if any(gpu["fabric"]["state"] for gpu in facts.xml_gpus or []):
        manager = run_command(["systemctl", "is-active", "nvidia-fabricmanager.service"], SYSTEMCTL_TIMEOUT)
        facts.fabric_manager = None if manager.error else manager.stdout.strip() or None
    result = run_command([smi, "topo", "-m"], NVIDIA_SMI_TIMEOUT)
    if result.ok:
        facts.topology = parse_topology(result.stdout)
    else:
        facts.topology_error = f"nvidia-smi topo -m failed: {result.first_line()}"
    return facts


# Checks: each returns (status, detail)


def check_gpu_present(facts, config):
    if facts.gpu_present:
        evidence = [f"{len(facts.pci_gpus)} on PCI" if facts.pci_gpus else "",
                    "/dev/" + ",".join(facts.dev_nodes) if facts.dev_nodes else "",
                    "kernel module loaded" if facts.kernel_module else "",
                    f"{len(facts.gpus)} listed by nvidia-smi" if facts.gpus else ""]
        return "pass", f"NVIDIA GPU present ({', '.join(filter(None, evidence))})"
    pci = "PCI bus not readable" if facts.pci_gpus is None else "none on the PCI bus"
    return ("fail" if config["require_gpu"] else "skip",
            f"no NVIDIA GPU present: {pci}, no /dev/nvidia[0-9]*, no kernel module; {facts.smi_detail}")


def check_kernel_module(facts, config):
    if facts.kernel_module:
        return "pass", f"{facts.kernel_module_flavor} kernel module {facts.kernel_module} loaded"
    if facts.module_kernels is not None and facts.running_kernel not in facts.module_kernels:
        others = ", ".join(facts.module_kernels) or "none"
        return "fail", (f"no NVIDIA kernel module for the running kernel {facts.running_kernel} (kernels with one: "
                        f"{others}): boot one of those, or install this kernel's headers and rebuild "
                        "(dkms autoinstall)")
    return "fail", "NVIDIA kernel module not loaded (no readable driver version in /proc)"


def check_kernel_guard(facts, config):
    guard = facts.kernel_guard
    if guard is None:
        return "skip", "no kernel installed since provisioning (no kernel-install guard record)"
    if isinstance(guard, str):
        return "fail", guard
    kernel, when = guard["kernel"], guard.get("time", "?")
    if guard.get("module") is True:
        return "pass", f"the last kernel installed, {kernel}, got its NVIDIA module ({when})"
    if facts.module_kernels is not None and kernel in facts.module_kernels:
        return "pass", f"kernel {kernel} has its NVIDIA module now (the kernel-install guard found none at {when})"
    if facts.installed_kernels is not None and kernel not in facts.installed_kernels:
        return "skip", f"kernel {kernel}, installed at {when} without an NVIDIA module, is gone"
    return "fail", f"kernel {kernel} has no NVIDIA module (kernel-install guard, {when}): {guard.get('message', '')}"


def check_nvidia_smi(facts, config):
    if facts.smi_state == "ok":
        return "pass", facts.smi_detail
    return "fail", f"{facts.smi_state}: {facts.smi_detail}"


def check_driver_version_match(facts, config):
    kernel, nvml = facts.kernel_module, facts.nvml_version
    if facts.smi_state == "version-mismatch":
        return "fail", (f"Driver/library version mismatch: kernel module {kernel or 'unknown'}, user-space NVML "
                        f"{nvml or 'unknown'}; reboot to load the installed driver")
    if not kernel or not nvml:
        return "skip", "cannot compare: no version from the " + ("NVML (nvidia-smi)" if kernel else "kernel module")
    if kernel != nvml:
        return "fail", f"kernel module {kernel} but user-space NVML {nvml}; reboot"
    return "pass", f"kernel module and NVML both {kernel}"


def check_driver_branch(facts, config):
    wanted, version = config["driver_branch"], facts.driver_version
    found = version.split(".")[0] if version else None
    if wanted is None:
        return "skip", "no driver_branch configured"
    if found is None:
        return "fail", f"driver branch {wanted} expected, but no driver version could be read"
    if found != wanted:
        return "fail", f"driver {version} is branch {found}, expected {wanted}"
    return "pass", f"driver {version} is branch {found}"


def check_gpu_count(facts, config):
    found, expected = plural(len(facts.gpus), "GPU"), config["expected_gpus"]
    listed = {normal_bus_id(gpu["pci_bus_id"]) for gpu in facts.gpus}
    unseen = [address for address in facts.pci_gpus or [] if normal_bus_id(address) not in listed]
    note = f" ({len(unseen)} on the PCI bus not seen by nvidia-smi: {', '.join(unseen)})" if unseen else ""
    if len(facts.gpus) < max(expected, 1):
        return "fail", f"{found} found, {expected or 'at least 1'} expected{note}"
    if unseen:
        return "fail", f"{found} found, but{note}"
    return "pass", found + " found" + (f", {expected} expected" if expected else "")


def check_persistence_mode(facts, config):
    if not facts.gpus:
        return "skip", "no GPU listed by nvidia-smi"
    off = [str(gpu["index"]) for gpu in facts.gpus if gpu["persistence_mode"] != "Enabled"]
    if off:
        return "fail", f"persistence mode off on GPU {', '.join(off)}: is nvidia-persistenced running?"
    return "pass", "persistence mode on for " + plural(len(facts.gpus), "GPU")


def memory_problems(gpu):
    """What in -q -x says this GPU's memory needs a reset, a reboot or service."""
    uncorrectable, rows = gpu["ecc_errors"]["volatile_uncorrectable"], gpu["remapped_rows"]
    problems = [plural(uncorrectable, "uncorrectable ECC error") + " since boot"] if uncorrectable else []
    for flag, text in ((rows["pending"], "row remapping pending (reset the GPU)"),
                       (rows["failure"], "row remapping failed (the GPU needs service)"),
                       (gpu["retired_pages"]["pending"], "page retirement pending (reboot)")):
        if flag:
            problems.append(text)
    problems += gpu["memory_flags"]
    if gpu["recovery_action"] not in (None, "None"):
        problems.append(f"driver asks for recovery action '{gpu['recovery_action']}'")
    return problems


def memory_notes(gpu):
    """What is worth showing but no failure."""
    counts, pages, rows = gpu["ecc_errors"], gpu["retired_pages"], gpu["remapped_rows"]
    notes = ["ECC disabled"] if gpu["ecc_mode"] == "Disabled" else []
    for count, word, when in ((counts["volatile_correctable"], "correctable ECC error", "since boot"),
                              (counts["aggregate_uncorrectable"], "uncorrectable ECC error", "over its life"),
                              ((pages["single_bit"] or 0) + (pages["double_bit"] or 0), "page", "retired"),
                              ((rows["correctable"] or 0) + (rows["uncorrectable"] or 0), "row", "remapped")):
        if count:
            notes.append(f"{plural(count, word)} {when}")
    return notes


def check_ecc_health(facts, config):
    if facts.xml_gpus is None:
        return "skip", facts.xml_error
    problems = [f"GPU {gpu['index']}: {text}" for gpu in facts.xml_gpus for text in memory_problems(gpu)]
    notes = [f"GPU {gpu['index']}: {text}" for gpu in facts.xml_gpus for text in memory_notes(gpu)]
    if problems:
        return "fail", "; ".join(problems + notes)
    summary = "no uncorrectable ECC errors since boot, no pending page retirement or row remapping"
    return "pass", "; ".join([summary, *notes])


def check_fabric(facts, config):
    if facts.xml_gpus is None:
        return "skip", facts.xml_error
    reporting = [gpu for gpu in facts.xml_gpus if gpu["fabric"]["state"]]
    if not reporting:
        return "skip", "no NVSwitch fabric reported (fabric state N/A)"
    manager = "nvidia-fabricmanager: " + (facts.fabric_manager or "state unknown (no systemctl)")
    unready = [f"GPU {gpu['index']} fabric state {gpu['fabric']['state'] or 'N/A'}, status "
               f"{gpu['fabric']['status'] or 'N/A'}" for gpu in facts.xml_gpus
               if gpu["fabric"]["state"] != "Completed" or gpu["fabric"]["status"] not in (None, "Success")]
    if unready:
        return "fail", "; ".join([*unready, manager])
    return "pass", f"fabric state Completed on {plural(len(reporting), 'GPU')}; {manager}"


def check_runtime(runtime, facts, config):
    argv = RUNTIME_COMMANDS[runtime]
    result, command = run_command(argv, RUNTIME_QUERY_TIMEOUT), " ".join(argv[:3])
    if result.error == "not-found":
        return "skip", f"{runtime} not installed"
    if not result.ok:
        return "fail", f"`{command}` failed: {result.first_line()}"
    try:
        if runtime == "docker":
            names = json.loads(result.stdout)
            if not isinstance(names, dict):
                raise ValueError("expected a JSON object")
        else:  # TOML tables such as [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]
            names = set(re.findall(r"\.runtimes\.[\"']?([\w.-]+?)[\"']?\]", result.stdout))
    except ValueError as error:
        return "fail", f"cannot read `{command}` output: {error}"
    names = sorted(names)
    if "nvidia" not in names:
        return "fail", (f"{runtime} has no 'nvidia' runtime (has: {', '.join(names) or 'none'}); run "
                        f"`nvidia-ctk runtime configure --runtime={runtime}` and restart it")
    return "pass", f"{runtime} knows the nvidia runtime (runtimes: {', '.join(names)})"


def check_container(facts, config):
    image = config["container_image"]
    if not config["container_test"]:
        return "skip", "container test disabled"
    if "docker" not in config["runtimes"]:
        return "skip", "the container test uses docker, which is not among the configured runtimes"
    if facts.smi_state != "ok":
        return "skip", "nvidia-smi fails on the host; a container cannot do better"
    result = run_command(["docker", "run", "--rm", "--pull=never", "--gpus", config["gpus"], "-e",
                          "NVIDIA_DRIVER_CAPABILITIES=" + config["capabilities"], "--", image, "nvidia-smi", "-L"],
                         CONTAINER_TEST_TIMEOUT)
    if result.error == "not-found":
        return "skip", "docker not installed"
    if result.error == "timeout":
        return "fail", f"`docker run {image}` did not finish within {CONTAINER_TEST_TIMEOUT} s"
    if result.returncode != 0 and "No such image" in result.output:
        return "fail", (f"{image} is not on this machine (the check never pulls at boot): bakegen's install script "
                        f"pulls it; or run `docker pull {image}`")
    if result.returncode != 0:
        return "fail", (f"`docker run ... {image} nvidia-smi -L` failed (exit code {result.returncode}): "
                        + result.first_line())
    seen = len(GPU_LIST_LINE.findall(result.stdout))
    if seen == 0 or (config["gpus"] == "all" and seen < len(facts.gpus)):
        return "fail", f"the container saw {seen} of the host's {plural(len(facts.gpus), 'GPU')}"
    return "pass", f"a {image} container saw {plural(seen, 'GPU')} ({result.seconds:.1f} s)"


def read_key(path, fingerprint):
    """(validity, expiry) of the primary key FINGERPRINT in the key file PATH, as gpg lists it: validity r
    (revoked), e (expired) or another letter, expiry a Unix time or None; None when the file holds no such key."""
    home = tempfile.mkdtemp(prefix="bakegen-gpu-check-gpg-")
    try:
        result = run_command(["gpg", "--homedir", home, "--batch", "--quiet", "--no-autostart", "--with-colons",
                              "--import-options", "show-only", "--import", path], RUNTIME_QUERY_TIMEOUT)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if result.error:
        raise OSError(result.error)
    pending = None
    for line in result.stdout.splitlines():
        fields = line.split(":")
        if fields[0] == "pub":
            pending = (fields[1], int(fields[6]) if len(fields) > 6 and fields[6].isdigit() else None)
        elif fields[0] == "fpr" and pending is not None:
            if len(fields) > 9 and fields[9] == fingerprint:
                return pending
            pending = None
    return None


def check_repository_keys(facts, config):
    """The pinned keys bakegen stored for its repositories: present, not revoked, not expired or expiring soon."""
    keys = [key for key in config["repository_keys"] if os.path.exists(key["path"])]
    if not keys:
        return "skip", "none of bakegen's repository keys is on this machine"
    now, problems = time.time(), []
    for key in keys:
        try:
            found = read_key(key["path"], key["fingerprint"])
        except OSError as error:
            if str(error) == "not-found":
                return "skip", "gpg is not installed"
            problems.append(f"{key['path']}: cannot read it ({error})")
            continue
        if found is None:
            problems.append(f"{key['path']} does not hold the pinned key {key['fingerprint']}")
            continue
        validity, expiry = found
        if validity == "r":
            problems.append(f"{key['path']}: key {key['fingerprint']} is revoked")
        elif validity == "e" or (expiry is not None and expiry <= now):
            problems.append(f"{key['path']}: key {key['fingerprint']} has expired")
        elif expiry is not None and expiry - now < KEY_EXPIRY_WARNING_DAYS * 86400:
            day = time.strftime("%Y-%m-%d", time.gmtime(expiry))
            problems.append(f"{key['path']}: key {key['fingerprint']} expires on {day}")
    if problems:
        return "fail", "; ".join(problems) + " (rerun bakegen's install script to fetch the key again)"
    return "pass", f"{plural(len(keys), 'repository key')} valid, none expiring within {KEY_EXPIRY_WARNING_DAYS} days"


# (name, check, required) after gpu_present; then one runtime_<name> per configured runtime and the smoke test.
CHECKS = (
    ("kernel_module", check_kernel_module, True), ("nvidia_smi", check_nvidia_smi, True),
    ("driver_version_match", check_driver_version_match, True), ("driver_branch", check_driver_branch, True),
    ("gpu_count", check_gpu_count, True), ("persistence_mode", check_persistence_mode, False),
    ("ecc_health", check_ecc_health, True), ("fabric", check_fabric, True),
    ("kernel_guard", check_kernel_guard, False),
)


def run_checks(facts, config):
    checks = [("gpu_present", check_gpu_present, config["require_gpu"]), *CHECKS]
    checks += [(f"runtime_{name}", functools.partial(check_runtime, name), True) for name in config["runtimes"]]
    verdicts = []
    # The repository keys are checked with or without a GPU: a host without one still updates its packages.
    always = ("gpu_present", "repository_keys")
    for name, check, required in [*checks, ("container_smoke_test", check_container, True),
                                  ("repository_keys", check_repository_keys, False)]:
        if name not in always and not facts.gpu_present:
            status, detail = "skip", "no NVIDIA GPU present"
        else:
            try:
                status, detail = check(facts, config)
            except Exception as error:  # a bug in one check fails that check, not the whole run
                status, detail = "fail", f"internal error: {type(error).__name__}: {error}"
        verdicts.append({"name": name, "status": status, "required": required, "detail": detail})
    return verdicts


# The result and its outputs


def failed_required(checks):
    return [check for check in checks if check["status"] == "fail" and check["required"]]


def build_result(facts, config, config_path, checks, started_at, started):
    status = ("fail" if failed_required(checks) else "pass") if facts.gpu_present else "no-gpu"
    health = {normal_bus_id(gpu["pci_bus_id"]): gpu for gpu in facts.xml_gpus or []}
    gpus = []
    for gpu in facts.gpus:  # as nvidia-smi lists them, with their health from -q -x where the bus id matches
        entry = {key: value for key, value in gpu.items() if key != "driver_version"}
        xml_gpu = health.get(normal_bus_id(gpu["pci_bus_id"]))
        if xml_gpu:
            entry.update((key, xml_gpu[key])
                         for key in ("ecc_errors", "retired_pages", "remapped_rows", "recovery_action", "fabric"))
        gpus.append(entry)
    fabric = [dict(gpu["fabric"], index=gpu["index"], pci_bus_id=gpu["pci_bus_id"])
              for gpu in facts.xml_gpus or [] if gpu["fabric"]["state"]]
    nvlink = None
    if facts.topology is not None and len(facts.gpus) > 1:
        nvlink = any(link.startswith("NV") for link in facts.topology["link_types"])
    version = facts.driver_version
    return {
        "schema": 1, "tool": TOOL, "version": VERSION, "time": started_at, "host": socket.gethostname(),
        "status": status, "exit_code": int(status == "fail" or (status == "no-gpu" and config["require_gpu"])),
        "duration_s": round(time.monotonic() - started, 3),
        "driver": {"kernel_module": facts.kernel_module, "kernel_module_flavor": facts.kernel_module_flavor,
                   "nvml": facts.nvml_version, "branch": version.split(".")[0] if version else None,
                   "cuda": facts.cuda_version},
        "nvidia_smi": {"path": facts.smi_path, "state": facts.smi_state, "detail": facts.smi_detail},
        "hardware": {"pci_gpus": facts.pci_gpus, "dev_nodes": facts.dev_nodes},
        "gpus": gpus, "gpu_count": len(gpus),
        "interconnect": {"topology": facts.topology, "topology_error": facts.topology_error, "nvlink": nvlink,
                         "nvswitch_fabric": bool(fabric), "fabric": fabric, "fabric_manager": facts.fabric_manager,
                         "pci_nvswitches": facts.pci_nvswitches},
        "checks": checks,
        "config": {"path": config_path, "settings": config},
    }


def gpu_summary(result):
    if not result["gpus"]:
        return "no GPU listed"
    counts = collections.Counter(gpu["name"] or "unknown GPU" for gpu in result["gpus"])
    names = ", ".join(f"{count} x {name}" for name, count in sorted(counts.items()))
    driver = result["driver"]["nvml"] or result["driver"]["kernel_module"]
    return f"{names}, driver {driver}" if driver else names


def human_summary(result):
    """PASS|FAIL|WARN|SKIP  name  detail per check (WARN: a check that is not required failed), then the verdict."""
    width = max(len(check["name"]) for check in result["checks"])
    lines = [f"{'WARN' if check['status'] == 'fail' and not check['required'] else check['status'].upper()}  "
             f"{check['name'].ljust(width)}  {check['detail']}" for check in result["checks"]]
    if result["status"] == "no-gpu":
        lines.append(f"overall: NO-GPU{' (GPU required)' if result['exit_code'] else ''}: no NVIDIA GPU present")
    else:
        failed = ", ".join(check["name"] for check in failed_required(result["checks"]))
        lines.append(f"overall: {result['status'].upper()}: {gpu_summary(result)}"
                     f"{'; failed: ' + failed if failed else ''} ({result['duration_s']:.2f} s)")
    return "\n".join(lines) + "\n"


def printable(text):
    """Text with every control character but newlines replaced: docker's and nvidia-smi's output is not trusted."""
    return CONTROL_CHARACTERS.sub("?", text)


def motd_line(result, result_path):
    return printable(_motd_line(result, result_path))


def _motd_line(result, result_path):
    head = f"bakegen GPU check {result['status'].upper()} at {result['time']}: "
    if result["status"] == "pass":
        return head + gpu_summary(result) + "\n"
    if result["status"] == "no-gpu":
        return head + "no NVIDIA GPU present\n"
    failed = "; ".join(f"{check['name']}: {check['detail']}" for check in failed_required(result["checks"]))
    return f"{head}{failed} (details: {result_path} or `journalctl -u bakegen-gpu-check`)\n"


def write_atomically(path, text):
    """Write a temporary file in the same folder, fsync it, then rename it: no reader ever sees half a file."""
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


# Command line


def non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


# (option, metavar or the value a flag sets, default, help), under --help headings. An option named like a
# config key overrides it; --no-X sets X.
OPTIONS = (
    ("--config", "PATH", None, f"config file (default {DEFAULT_CONFIG_PATH}; a missing default file means all "
     "defaults)"),
    ("--state-dir", "DIR", "/var/lib/bakegen", "where gpu-check.json is written"),
    ("--motd-file", "PATH", "/etc/motd.d/90-bakegen-gpu-check", "one-line login message"),
    "overrides of the config file",
    ("--expected-gpus", "N", None, "fail with fewer GPUs (0: any count >= 1)"),
    ("--driver-branch", "B", None, "fail unless the driver is of this branch (e.g. 580)"),
    ("--require-gpu", True, None, "exit 1 when no GPU is present"),
    ("--no-container-test", False, None, "skip the docker run smoke test"),
    ("--container-image", "IMAGE", None, "image for the smoke test"),
    ("--gpus", "SPEC", None, "docker run --gpus value (default all)"),
    ("--capabilities", "CAPS", None, "NVIDIA_DRIVER_CAPABILITIES for the smoke test"),
    "output",
    ("--json", True, None, "print the JSON result instead of the summary"),
    ("--quiet", True, None, "print no summary (the files are still written)"),
    "where to look (for tests and odd installs)",
    ("--nvidia-smi", "PATH", None, f"nvidia-smi to run (default: on PATH, else in {' or '.join(SMI_DIRS)})"),
    ("--proc-version", "PATH", "/proc/driver/nvidia/version", "the kernel module's version file"),
    ("--pci-devices-dir", "DIR", "/sys/bus/pci/devices", "PCI devices in sysfs"),
    ("--dev-dir", "DIR", "/dev", "where /dev/nvidiaN nodes appear"),
    ("--modules-dir", "DIR", "/lib/modules", "the installed kernels' modules"),
    ("--kernel-release", "RELEASE", os.uname().release, "the running kernel"),
)


def main(argv=None):
    started_at, started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), time.monotonic()
    parser = argparse.ArgumentParser(
        prog=TOOL, description="Check that this machine's NVIDIA GPUs, driver and container runtime work. "
        "Exit 0: all required checks passed or were skipped (also: no GPU present, unless required); "
        "1: a required check failed; 2: usage or config error.")
    parser.add_argument("--version", action="version", version="%(prog)s " + VERSION)
    group = parser
    for row in OPTIONS:
        if isinstance(row, str):
            group = parser.add_argument_group(row)
            continue
        option, metavar, default, text = row
        dest = re.sub(r"^--(no-)?", "", option).replace("-", "_")
        if isinstance(metavar, bool):
            group.add_argument(option, dest=dest, action="store_const", const=metavar, help=text)
        else:
            group.add_argument(option, dest=dest, metavar=metavar, default=default,
                               type=non_negative_int if option == "--expected-gpus" else str,
                               help=text + (" (default %(default)s)" if default else ""))
    args = parser.parse_args(argv)
    try:
        from_file, config_path = load_config_file(args.config)
        from_command_line = {key: value for key, value in vars(args).items()
                             if key in CONFIG_KEYS and value is not None}
        check_settings(from_command_line, "command line")
    except ConfigError as error:
        sys.stderr.write(f"{TOOL}: error: {error}\n")
        return 2
    config = dict(CONFIG_DEFAULTS, **from_file)
    config.update(from_command_line)
    facts = gather_facts(args)
    result = build_result(facts, config, config_path, run_checks(facts, config), started_at, started)
    result_path = os.path.join(args.state_dir, "gpu-check.json")
    for path, text, what in ((result_path, json.dumps(result, indent=2, sort_keys=True) + "\n", "result file"),
                             (args.motd_file, motd_line(result, result_path), "login message")):
        try:
            write_atomically(path, text)
        except OSError as error:  # a warning, never a crash, and the exit code stays
            sys.stderr.write(f"{TOOL}: warning: cannot write {what} {path}: {error}\n")
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
    elif not args.quiet:
        sys.stdout.write(printable(human_summary(result)))
    return result["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
