"""What every trace stub shares: the trace record, the world (read-only) and the state (read-write).

The stubs run INSIDE the fake root that tests/support/trace.py builds, with the host's python3. They see:
  /bakegen-trace/world.bin    what exists out there: packages of every repository, keys served by URL, the
                              machine (arch, kernels, GPU, booted or chroot). Written by the harness, never here.
  /bakegen-trace/state.bin    what this machine holds: installed packages, enabled streams, locks, rpm keys,
                              units. Survives between runs of the script, so a second run sees the first's work.
  /bakegen-trace/trace.log    one line per call: repr((pid, tool, argv, kind, time)), then repr((pid, rc, time)).
Standard library only; no imports from the project (the fake root has no repository checkout). A stub starts on
every call of every tool: world and state are marshal files and heavy modules (json, re) are imported only where
needed, which halves the cost of a call (most of it is the interpreter's start).
"""

from __future__ import annotations

import fcntl
import marshal
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~10 ms an import; stubs start on every call
    from typing import Any

TRACE_DIR = "/bakegen-trace"
WORLD_FILE = f"{TRACE_DIR}/world.bin"
STATE_FILE = f"{TRACE_DIR}/state.bin"
TRACE_FILE = f"{TRACE_DIR}/trace.log"
LOCK_FILE = f"{TRACE_DIR}/state.lock"
STUB_ENTRY = f"{TRACE_DIR}/stubs/stub.py"
GNUPG_HOME = f"{TRACE_DIR}/gnupg"

# What a call does, for the harness: queries are left out of the fixtures' command sequences.
QUERY, DOWNLOAD, INSTALL, LOCK, TRUST, BUILD, CONFIGURE, SERVICE, WAIT, OTHER = (
    "query",
    "download",
    "install",
    "lock",
    "trust",
    "build",
    "configure",
    "service",
    "wait",
    "other",
)


class Fail(Exception):
    """A stub's failure: message to stderr, exit code."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def record(entry: tuple[Any, ...]) -> None:
    line = repr(entry) + "\n"
    fd = os.open(TRACE_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class Ctx:
    """One stub call: its argv, the world, and the state under an exclusive lock (saved on success)."""

    def __init__(self, tool: str, args: list[str]) -> None:
        self.tool = tool
        self.args = args
        with open(WORLD_FILE, "rb") as handle:
            self.world: dict[str, Any] = marshal.load(handle)
        self._lock = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        with open(STATE_FILE, "rb") as handle:
            self.state: dict[str, Any] = marshal.load(handle)

    def save(self) -> None:
        tmp = STATE_FILE + ".new"
        with open(tmp, "wb") as handle:
            marshal.dump(self.state, handle)
        os.replace(tmp, STATE_FILE)

    def release(self) -> None:
        """Let nested stub calls (ubuntu-drivers runs apt-get) take the lock; reload the state after."""
        self.save()
        fcntl.flock(self._lock, fcntl.LOCK_UN)

    def reacquire(self) -> None:
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        with open(STATE_FILE, "rb") as handle:
            self.state = marshal.load(handle)

    # ---- the machine ----
    @property
    def booted(self) -> bool:
        """systemd is PID 1 (the harness made /run/systemd/system and ran the script as PID 1)."""
        return bool(self.world.get("booted"))

    @property
    def family(self) -> str:
        return str(self.world["family"])


def out(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")


def err(text: str) -> None:
    sys.stderr.write(text if text.endswith("\n") or not text else text + "\n")


# ---- files the stubs write into the fake root: owned by a package (or by "dkms") ----


def write_owned(ctx: Ctx, owner: str, path: str, text: str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, mode)
    ctx.state.setdefault("owned", {})[path] = owner


def link_owned(ctx: Ctx, owner: str, path: str, target: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.lexists(path):
        os.unlink(path)
    os.symlink(target, path)
    ctx.state.setdefault("owned", {})[path] = owner


def remove_owned(ctx: Ctx, owner: str) -> None:
    owned = ctx.state.setdefault("owned", {})
    for path in [p for p, o in owned.items() if o == owner]:
        if os.path.lexists(path):
            os.unlink(path)
        del owned[path]


# ---- OpenPGP: the real gpg reads keys (the point of the harness is that verification is real) ----


def _show_keys(path: str) -> list[str]:
    """gpg's colon listing of the keys in a file, cached by content (gpg takes ~30 ms a call)."""
    import hashlib
    import subprocess

    with open(path, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    cache = f"{GNUPG_HOME}/cache-{digest}"
    if os.path.exists(cache):
        with open(cache, encoding="utf-8") as handle:
            return handle.read().splitlines()
    os.makedirs(GNUPG_HOME, mode=0o700, exist_ok=True)
    result = subprocess.run(
        [
            "gpg",
            "--homedir",
            GNUPG_HOME,
            "--batch",
            "--no-autostart",
            "--with-colons",
            "--import-options",
            "show-only",
            "--import",
            path,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    with open(cache, "w", encoding="utf-8") as handle:
        handle.write(result.stdout)
    return result.stdout.splitlines()


def key_fingerprints(path: str) -> list[str]:
    """Primary-key fingerprints in a key file or keyring (armored or binary); [] when it holds none."""
    fprs, want = [], False
    for line in _show_keys(path):
        fields = line.split(":")
        if fields[0] == "pub":
            want = True
        elif fields[0] == "fpr" and want:
            fprs.append(fields[9])
            want = False
    return fprs


def key_created(path: str) -> dict[str, int]:
    """Creation time of each primary key in a file, by fingerprint (rpm names keys gpg-pubkey-ID-CREATED)."""
    created, pending = {}, None
    for line in _show_keys(path):
        fields = line.split(":")
        if fields[0] == "pub":
            pending = int(fields[5] or 0)
        elif fields[0] == "fpr" and pending is not None:
            created[fields[9]] = pending
            pending = None
    return created


# ---- versions: dpkg's comparison (rpm's differs only in corners these worlds do not use) ----


def _order(ch: str) -> int:
    if ch == "~":
        return -1
    if ch.isdigit():
        return 0
    if ch.isalpha():
        return ord(ch)
    return ord(ch) + 256


def _compare_part(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            bc = _order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not diff:
                diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if diff:
            return diff
    return 0


def vercmp(a: str, b: str) -> int:
    ea, _, ra = a.rpartition(":") if ":" in a else ("0", "", a)
    eb, _, rb = b.rpartition(":") if ":" in b else ("0", "", b)
    if int(ea or 0) != int(eb or 0):
        return int(ea or 0) - int(eb or 0)
    va, _, rela = ra.rpartition("-") if "-" in ra else (ra, "", "")
    vb, _, relb = rb.rpartition("-") if "-" in rb else (rb, "", "")
    return _compare_part(va, vb) or _compare_part(rela, relb)


def newest(packages: list[dict[str, Any]]) -> dict[str, Any] | None:
    best = None
    for pkg in packages:
        if best is None or vercmp(full_version(pkg), full_version(best)) > 0:
            best = pkg
    return best


def full_version(pkg: dict[str, Any]) -> str:
    return f"{pkg['epoch']}:{pkg['version']}" if pkg.get("epoch") else str(pkg["version"])


def split_options(args: list[str], with_value: set[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Options (--x=v, --x v for those in with_value, -o v) and the remaining words, in order."""
    opts: dict[str, list[str]] = {}
    words: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if arg in with_value and i + 1 < len(args):
            opts.setdefault(arg, []).append(args[i + 1])
            i += 1
        elif eq and (arg.startswith("--") or (arg.startswith("-") and name in with_value)):
            opts.setdefault(name, []).append(value)
        elif arg in with_value and i + 1 < len(args):
            opts.setdefault(arg, []).append(args[i + 1])
            i += 1
        elif arg.startswith("-") and arg != "-":
            opts.setdefault(arg, []).append("")
        else:
            words.append(arg)
        i += 1
    return opts, words


def glob_to_re(glob: str) -> Any:
    import re

    return re.compile("^" + re.escape(glob).replace(r"\*", ".*").replace(r"\?", ".") + "$")
