"""Dispatch for the trace stubs (see stub.py): which handler serves which command, and what kind of call it is."""

from __future__ import annotations

import os
import sys
import time

from core import (
    BUILD,
    CONFIGURE,
    DOWNLOAD,
    INSTALL,
    LOCK,
    OTHER,
    QUERY,
    SERVICE,
    TRUST,
    WAIT,
    Ctx,
    Fail,
    err,
    record,
)

HANDLERS = {
    "apt-get": ("apt", "apt_get"),
    "apt-cache": ("apt", "apt_cache"),
    "apt-mark": ("apt", "apt_mark"),
    "dpkg": ("quick", "dpkg"),  # only -S (which package owns a file)
    "dpkg-query": ("quick", "dpkg_query"),
    "ubuntu-drivers": ("apt", "ubuntu_drivers"),
    "rpm": ("rpm", "rpm"),  # `rpm -q` is served by quick.py (see main)
    "dnf": ("rpm", "dnf"),
    "zypper": ("rpm", "zypper"),
    "systemctl": ("system", "systemctl"),
    "modprobe": ("system", "modprobe"),
    "dkms": ("system", "dkms"),
    "update-initramfs": ("system", "update_initramfs"),
    "dracut": ("system", "dracut"),
    "mokutil": ("system", "mokutil"),
    "uname": ("quick", "uname"),
    "sleep": ("quick", "sleep"),
    "curl": ("system", "curl"),
    "nvidia-ctk": ("system", "nvidia_ctk"),
    "nvidia-smi": ("system", "nvidia_smi"),
    "docker": ("system", "docker"),
    "dockerd": ("system", "present"),
    "containerd": ("system", "present"),
    "crio": ("system", "present"),
}


def _words(args: list[str], with_value: tuple[str, ...]) -> list[str]:
    words, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in with_value:
            skip = True
        elif not arg.startswith("-"):
            words.append(arg)
    return words


def classify(tool: str, args: list[str]) -> str:
    words = _words(args, ("-o", "-c", "-t", "-k", "--repo", "-r", "--setopt", "--runtime", "--output", "-f"))
    first = words[0] if words else ""
    if tool in ("curl",):
        return DOWNLOAD
    if tool == "sleep":
        return WAIT
    if tool == "apt-get":
        return {"update": DOWNLOAD, "install": INSTALL}.get(first, QUERY)
    if tool == "dnf":
        if first == "makecache":
            return DOWNLOAD
        if first == "install" or words[:2] == ["module", "enable"]:
            return INSTALL
        if words[:2] == ["versionlock", "add"]:
            return LOCK
        return QUERY
    if tool == "zypper":
        return {
            "refresh": DOWNLOAD,
            "ref": DOWNLOAD,
            "install": INSTALL,
            "in": INSTALL,
            "addlock": LOCK,
            "al": LOCK,
        }.get(first, QUERY)
    if tool == "rpm":
        return TRUST if ("--import" in args or "-e" in args) else QUERY
    if tool == "ubuntu-drivers":
        return INSTALL if first == "install" else QUERY
    if tool == "apt-mark":
        return LOCK if first in ("hold", "unhold") else QUERY
    if tool in ("update-initramfs", "dracut"):
        return BUILD
    if tool == "dkms":
        return QUERY if first == "status" else BUILD
    if tool == "nvidia-ctk":
        return CONFIGURE if first in ("runtime", "cdi") else QUERY
    if tool == "systemctl":
        return (
            SERVICE
            if first
            in ("enable", "disable", "start", "stop", "restart", "daemon-reload", "reload-or-restart", "try-restart")
            else QUERY
        )
    if tool == "modprobe":
        return SERVICE
    if tool in ("dpkg", "dpkg-query", "apt-cache", "uname", "mokutil", "nvidia-smi"):
        return QUERY
    if tool == "docker":
        return QUERY if first == "info" else OTHER
    return OTHER


def main() -> int:
    tool = os.path.basename(sys.argv[0])
    args = sys.argv[1:]
    pid = os.getpid()
    record((pid, tool, [tool, *args], classify(tool, args), time.time()))
    rc = 0
    try:
        module, name = HANDLERS[tool]
        if tool == "rpm" and args[:1] == ["-qf"]:
            module, name = "quick", "rpm_owner"
        elif tool == "rpm" and ("-q" in args or "--query" in args) and "-e" not in args and "--import" not in args:
            module, name = "quick", "rpm_query"
        ctx = Ctx(tool, args)
        rc = getattr(__import__(module), name)(ctx)
        ctx.save()
    except Fail as failure:
        if failure.message:
            err(failure.message)
        rc = failure.code
    except Exception:  # a bug in the stub, not a behaviour of the tool
        import traceback

        err(f"STUB CRASH in {tool}:\n{traceback.format_exc()}")
        rc = 99
    sys.stdout.flush()
    record((pid, rc, time.time()))
    return rc
