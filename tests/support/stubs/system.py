"""The machine around the package managers: systemd, kernel modules, DKMS, initramfs, firmware, the network
(curl), the NVIDIA Container Toolkit CLI, nvidia-smi and docker.

- systemctl works offline in a chroot for enable/disable (links under /etc/systemd/system), and refuses
  everything that needs the manager ("System has not been booted with systemd as init system (PID 1)") unless the
  world says the machine is booted. list-unit-files PATTERN exits 1 when nothing matches.
- modprobe in a chroot never touches the host: the module is "not found" for the build host's kernel.
- nvidia-ctk runtime configure merges into the runtime's config (docker: /etc/docker/daemon.json) and keeps
  every other setting, as the real one does; it writes the file on every call.
- curl serves the world's `www` map by URL: a file, a 404 (exit 22 with --fail) or an unreachable host (exit 7).
"""

from __future__ import annotations

import os

import pkgs
from core import TRACE_DIR, Ctx, Fail, err, key_fingerprints, out, split_options

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~10 ms an import; stubs start on every call
    from typing import Any

PROC_VERSION = "/proc/driver/nvidia/version"
GPU_DIR = f"{TRACE_DIR}/gpu"
NOT_BOOTED = (
    "System has not been booted with systemd as init system (PID 1). Can't operate.\n"
    "Failed to connect to bus: Host is down"
)


# ---------------------------------------------------------------------------------------------------------
# systemctl


def _unit_path(unit: str) -> str | None:
    for folder in ("/etc/systemd/system", "/usr/lib/systemd/system"):
        path = f"{folder}/{unit}"
        if os.path.isfile(path):
            return path
    return None


UNIT_SUFFIXES = (".service", ".socket", ".path", ".timer", ".target")


def _listdir(folder: str) -> list[str]:
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def _all_units() -> list[str]:
    names = set()
    for folder in ("/etc/systemd/system", "/usr/lib/systemd/system"):
        for name in _listdir(folder):
            if name.endswith(UNIT_SUFFIXES) and os.path.isfile(f"{folder}/{name}"):
                names.add(name)
    return sorted(names)


def _wanted_by(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [t for line in handle if line.startswith("WantedBy=") for t in line.split("=", 1)[1].split()]


def _enabled(unit: str) -> bool:
    return any(
        os.path.lexists(f"/etc/systemd/system/{d}/{unit}")
        for d in _listdir("/etc/systemd/system")
        if d.endswith(".wants")
    )


def _matches(pattern: str, name: str) -> bool:
    """systemctl's unit patterns as the script uses them: literal names, `*` wildcards."""
    head, *rest = pattern.split("*")
    if not rest:
        return name == pattern
    if not name.startswith(head) or not name.endswith(rest[-1]):
        return False
    position = len(head)
    for part in rest[:-1]:
        found = name.find(part, position)
        if found < 0:
            return False
        position = found + len(part)
    return position <= len(name) - len(rest[-1])


def systemctl(ctx: Ctx) -> int:
    _, words = split_options(ctx.args, set())
    if not words:
        raise Fail(1, "systemctl stub: no verb")
    verb, units = words[0], words[1:]
    if verb == "list-unit-files":
        matches = [u for u in _all_units() if not units or any(_matches(p, u) for p in units)]
        out("UNIT FILE                               STATE    PRESET")
        for unit in matches:
            out(f"{unit:<39} {'enabled' if _enabled(unit) else 'disabled':<8} enabled")
        out(f"\n{len(matches)} unit files listed.")
        return 0 if matches else 1
    if verb in ("enable", "disable"):
        rc = 0
        for unit in units:
            path = _unit_path(unit)
            if path is None:
                err(f"Failed to {verb} unit: Unit file {unit} does not exist.")
                rc = 1
                continue
            for target in _wanted_by(path):
                link = f"/etc/systemd/system/{target}.wants/{unit}"
                if verb == "enable" and not os.path.lexists(link):
                    os.makedirs(os.path.dirname(link), exist_ok=True)
                    os.symlink(path, link)
                    err(f"Created symlink {link} \u2192 {path}.")
                elif verb == "disable" and os.path.lexists(link):
                    os.unlink(link)
                    err(f'Removed "{link}".')
        return rc
    if verb in ("is-enabled",):
        state = "enabled" if units and _enabled(units[0]) else "disabled"
        out(state)
        return 0 if state == "enabled" else 1
    if not ctx.booted:
        raise Fail(1, NOT_BOOTED)
    if verb == "daemon-reload":
        return 0
    active = ctx.state.setdefault("active_units", [])
    if verb in ("start", "restart", "reload-or-restart", "try-restart"):
        for unit in units:
            if _unit_path(unit) is None:
                raise Fail(5, f"Failed to {verb} {unit}: Unit {unit} not found.")
            if unit not in active:
                active.append(unit)
            if unit == "docker.service":
                ctx.state["docker_runtimes"] = sorted(_daemon_json().get("runtimes", {}))
        return 0
    if verb == "stop":
        ctx.state["active_units"] = [u for u in active if u not in units]
        return 0
    if verb == "is-active":
        state = "active" if units and units[0] in active else "inactive"
        out(state)
        return 0 if state == "active" else 3
    raise Fail(1, f"systemctl stub: does not model `{verb}`")


def _daemon_json(path: str = "/etc/docker/daemon.json") -> dict[str, Any]:
    import json

    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return {}
    with open(path, encoding="utf-8") as handle:
        loaded: dict[str, Any] = json.load(handle)
    return loaded


# ---------------------------------------------------------------------------------------------------------
# kernel: modprobe, dkms, initramfs, Secure Boot


def _module_file(kernel: str) -> str | None:
    import glob

    found = sorted(glob.glob(f"/lib/modules/{kernel}/**/nvidia.ko*", recursive=True))
    return found[0] if found else None


def modprobe(ctx: Ctx) -> int:
    opts, words = split_options(ctx.args, set())
    kernel = str(ctx.world["running_kernel"])
    if "-r" in opts:
        ctx.state.pop("loaded", None)
        return 0
    for name in words:
        if name != "nvidia":
            continue
        module = _module_file(kernel) if ctx.booted else None
        if module is None:
            raise Fail(1, f"modprobe: FATAL: Module {name} not found in directory /lib/modules/{kernel}")
        if not ctx.world.get("gpu"):
            raise Fail(1, f"modprobe: ERROR: could not insert '{name}': No such device")
        with open(module, encoding="utf-8") as handle:
            version = handle.read().split()[1]
        with open(PROC_VERSION, "w", encoding="ascii") as handle:
            handle.write(
                f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {version}  Release Build  "
                "(dvs-builder@U22-I3-AF03-09-1)  Thu Oct  2 00:00:00 UTC 2025\n"
                "GCC version:  gcc version 13.3.0 (Ubuntu 13.3.0-6ubuntu2~24.04)\n"
            )
        ctx.state["loaded"] = version
    return 0


def dkms(ctx: Ctx) -> int:
    import glob

    opts, words = split_options(ctx.args, {"-k"})
    kernel = (opts.get("-k") or [str(ctx.world["running_kernel"])])[-1]
    if words[:1] in (["autoinstall"], ["install"], ["build"]):
        if not pkgs.dkms_build(ctx, kernel):
            raise Fail(
                1,
                f"Error! Your kernel headers for kernel {kernel} cannot be found at "
                f"/lib/modules/{kernel}/build or /lib/modules/{kernel}/source.",
            )
        return 0
    if words[:1] == ["status"]:
        built = glob.glob("/lib/modules/*/updates/dkms/nvidia.ko*") + glob.glob("/lib/modules/*/extra/nvidia.ko*")
        for path in sorted(built):
            out(f"nvidia, {path.split('/')[3]}, {ctx.world['arch']}: installed")
        return 0
    raise Fail(1, f"dkms stub: does not model {ctx.args}")


def _initramfs(path: str, kernel: str) -> None:
    import glob

    parts = [f"initramfs for {kernel}"]
    for conf in sorted(glob.glob("/etc/modprobe.d/*.conf")):
        with open(conf, encoding="utf-8") as handle:
            parts.append(f"{conf}: {handle.read()!r}")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(parts) + "\n")


def _boot_kernels() -> list[str]:
    import glob

    return sorted(os.path.basename(p)[len("vmlinuz-") :] for p in glob.glob("/boot/vmlinuz-*"))


def update_initramfs(ctx: Ctx) -> int:
    for kernel in _boot_kernels():
        _initramfs(f"/boot/initrd.img-{kernel}", kernel)
    return 0


def dracut(ctx: Ctx) -> int:
    for kernel in _boot_kernels():
        _initramfs(f"/boot/initramfs-{kernel}.img", kernel)
    return 0


def mokutil(ctx: Ctx) -> int:
    opts, _ = split_options(ctx.args, {"--test-key", "-t"})
    if "--sb-state" in opts:
        out("SecureBoot enabled" if ctx.world.get("secure_boot") else "SecureBoot disabled")
        return 0
    for path in opts.get("--test-key", []) + opts.get("-t", []):
        enrolled = set(ctx.world.get("mok_enrolled", []))
        if os.path.isfile(path) and set(key_fingerprints(path)) & enrolled:
            out(f"{path} is already enrolled")
            return 1
        out(f"{path} is not enrolled")
        return 0
    raise Fail(1, f"mokutil stub: does not model {ctx.args}")


# ---------------------------------------------------------------------------------------------------------
# curl


def curl(ctx: Ctx) -> int:
    opts, words = split_options(
        ctx.args,
        {
            "--proto",
            "--retry",
            "--retry-delay",
            "--connect-timeout",
            "--max-time",
            "--max-filesize",
            "--output",
            "-o",
            "-H",
            "--header",
        },
    )
    if len(words) != 1:
        raise Fail(2, f"curl stub: expected one URL, got {words}")
    url = words[0]
    if "=https" in opts.get("--proto", []) and not url.startswith("https://"):
        raise Fail(1, f'curl: (1) Protocol "{url.split(":", 1)[0]}" not supported or disabled in libcurl')
    entry = ctx.world.get("www", {}).get(url)
    host = url.split("/")[2] if "//" in url else url
    if entry is None or entry.get("status") == 404:
        if "--fail" in opts or "-f" in opts:
            raise Fail(22, "curl: (22) The requested URL returned error: 404")
        body = b"<html><body><h1>404 Not Found</h1></body></html>\n"
    elif entry.get("fault") == "unreachable":
        raise Fail(7, f"curl: (7) Failed to connect to {host} port 443 after 0 ms: Couldn't connect to server")
    else:
        with open(f"{TRACE_DIR}/{entry['file']}", "rb") as handle:
            body = handle.read()
    limit = (opts.get("--max-filesize") or [""])[-1]
    if limit and len(body) > int(limit):
        raise Fail(63, "curl: (63) Maximum file size exceeded")
    dest = (opts.get("--output") or opts.get("-o") or [""])[-1]
    if dest:
        with open(dest, "wb") as handle:
            handle.write(body)
    else:
        os.write(1, body)
    return 0


# ---------------------------------------------------------------------------------------------------------
# the NVIDIA Container Toolkit CLI, nvidia-smi, docker


def _toolkit_version(ctx: Ctx) -> str:
    return (pkgs.installed_version(ctx, "nvidia-container-toolkit-base") or "0.0.0-0").rsplit("-", 1)[0]


def nvidia_ctk(ctx: Ctx) -> int:
    import json

    opts, words = split_options(ctx.args, {"--runtime", "--config", "--output", "--set", "--config-file"})
    if "--version" in opts or words[:1] == ["--version"]:
        out(f"NVIDIA Container Toolkit CLI version {_toolkit_version(ctx)}\ncommit: 0123456789abcdef")
        return 0
    if words[:1] == ["config"] and "--in-place" in opts and opts.get("--set") == ["nvidia-container-runtime.mode=cdi"]:
        path = (opts.get("--config-file") or ["/etc/nvidia-container-runtime/config.toml"])[-1]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write('[nvidia-container-runtime]\nmode = "cdi"\n')
        return 0
    if words[:2] == ["runtime", "configure"]:
        runtime = (opts.get("--runtime") or ["docker"])[-1]
        if runtime == "docker":
            path = (opts.get("--config") or ["/etc/docker/daemon.json"])[-1]
            try:
                config = _daemon_json(path)
            except json.JSONDecodeError as exc:
                raise Fail(1, f'level=error msg="unable to load config for runtime docker: {exc}"') from None
            config.setdefault("runtimes", {})["nvidia"] = {"args": [], "path": "nvidia-container-runtime"}
            if "--cdi.enabled" in opts:
                config.setdefault("features", {})["cdi"] = True
            if "--set-as-default" in opts:
                config["default-runtime"] = "nvidia"
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(config, indent=4) + "\n")
        else:
            path = {"containerd": "/etc/containerd/conf.d/99-nvidia.toml", "crio": "/etc/crio/conf.d/99-nvidia.toml"}[
                runtime
            ]
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(
                    f'# nvidia runtime for {runtime}\n[nvidia]\nruntime_path = "/usr/bin/nvidia-container-runtime"\n'
                )
        err(
            f'level=info msg="Wrote updated config to {path}"\n'
            f'level=info msg="It is recommended that {runtime} daemon be restarted."'
        )
        return 0
    if words[:2] == ["cdi", "generate"]:
        if "loaded" not in ctx.state:
            raise Fail(
                1, 'level=error msg="failed to generate CDI spec: failed to initialize NVML: ERROR_LIBRARY_NOT_FOUND"'
            )
        path = (opts.get("--output") or ["/var/run/cdi/nvidia.yaml"])[-1]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: all\n")
        return 0
    raise Fail(1, f"nvidia-ctk stub: does not model {ctx.args}")


SMI_FAILED = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the "
    "latest NVIDIA driver is installed and running."
)


def _gpu_output(name: str) -> str:
    with open(f"{GPU_DIR}/{name}", encoding="utf-8") as handle:
        return handle.read()


def nvidia_smi(ctx: Ctx) -> int:
    if "loaded" not in ctx.state or not ctx.world.get("gpu"):
        out(SMI_FAILED)
        return 9
    args = ctx.args
    version = str(ctx.state["loaded"])
    if "--version" in args:
        out(
            f"NVIDIA-SMI version  : {version}\nNVML version        : {version}\nDRIVER version      : {version}\n"
            "CUDA Version        : 13.0"
        )
    elif any(a.startswith("--query-gpu=") for a in args):
        out(_gpu_output("query-gpu-noheader.csv").replace("580.159.04", version))
    elif args[:2] == ["-q", "-x"]:
        out(_gpu_output("nvidia-smi-q.xml").replace("580.159.04", version))
    elif args[:2] == ["topo", "-m"]:
        out(_gpu_output("topo-m.txt"))
    elif args[:1] == ["-L"]:
        out(_gpu_output("nvidia-smi-L.txt"))
    else:
        out(_gpu_output("nvidia-smi.txt"))
    return 0


def docker(ctx: Ctx) -> int:
    import json

    running = "docker.service" in ctx.state.get("active_units", [])
    if not running:
        raise Fail(
            1, "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"
        )
    runtimes = ctx.state.get("docker_runtimes", [])
    if ctx.args[:1] == ["info"]:
        known = {"io.containerd.runc.v2": {"path": "runc"}, "runc": {"path": "runc"}}
        for name in runtimes:
            known[name] = {"path": "nvidia-container-runtime"}
        out(json.dumps(dict(sorted(known.items())), separators=(",", ":")))
        return 0
    images = ctx.state.setdefault("docker_images", [])
    if ctx.args[:2] == ["image", "inspect"]:
        missing = [name for name in ctx.args[2:] if name not in images]
        if missing:
            raise Fail(1, f"Error response from daemon: No such image: {missing[0]}")
        out("[]")
        return 0
    if ctx.args[:1] == ["pull"]:
        # The stand-in registry has every image it is asked for (a world with a registry; none models a refusal).
        images.append(ctx.args[-1])
        return 0
    if ctx.args[:1] == ["run"]:
        image = ctx.args[ctx.args.index("--") + 1] if "--" in ctx.args else None
        if "--pull=never" in ctx.args and image is not None and image not in images:
            raise Fail(125, f"docker: Error response from daemon: No such image: {image}")
        if "--gpus" in ctx.args and ("nvidia" not in runtimes or "loaded" not in ctx.state):
            raise Fail(
                125, 'docker: Error response from daemon: could not select device driver "" with capabilities: [[gpu]].'
            )
        out(_gpu_output("nvidia-smi-L.txt"))
        return 0
    raise Fail(1, f"docker stub: does not model {ctx.args}")


def present(ctx: Ctx) -> int:
    """Commands that only need to exist (dockerd, containerd): record and succeed."""
    return 0
