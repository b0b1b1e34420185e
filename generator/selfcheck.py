"""Check each rendered file by its kind before it is written: a broken file never reaches out/."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterable

import yaml

from .errors import BakegenError
from .paths import found_valid, remember_valid
from .render import FileKind, RenderedFile
from .userdata import unpack

# libyaml's loader where PyYAML has it (50x faster on a 90 KB user-data); the validators use cloud-init's own.
FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def check_rendered(file: RenderedFile, label: str) -> None:
    """Raise BakegenError when `file` does not parse as its kind. `label` names it in the message."""
    check_all([(file, label)])


def check_all(files: Iterable[tuple[RenderedFile, str]]) -> None:
    """check_rendered for many files: each distinct script is parsed once, the `bash -n` runs side by side."""
    files = list(files)
    scripts = {f.content for f, _ in files if f.kind == FileKind.SHELL and isinstance(f.content, str)}
    shell = _bash_syntax(sorted(scripts))
    for file, label in files:
        problem = shell[file.content] if file.content in shell else _problem(file)
        if problem:
            raise BakegenError(f"generated {label} is broken: {problem} (a bakegen bug or a bad descriptor)")


def _bash_syntax(scripts: list[str]) -> dict[str | bytes, str | None]:
    """`bash -n` of each script, a few processes at a time: the first error line, or None. A script this bash
    found valid before is not parsed again (remembered by a hash of the script and of the bash binary)."""
    found: dict[str | bytes, str | None] = {}
    bash = _bash_identity()
    found.update((script, None) for script in scripts if found_valid(VALID_SCRIPTS, _script_key(bash, script)))
    scripts = [script for script in scripts if script not in found]
    width = max(2, os.cpu_count() or 2)
    for start in range(0, len(scripts), width):
        batch = scripts[start : start + width]
        running = [
            subprocess.Popen(
                ["bash", "-n"],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in batch
        ]
        for script, process in zip(batch, running, strict=True):
            _, stderr = process.communicate(script)
            found[script] = (stderr.strip().splitlines() or ["bash -n failed"])[0] if process.returncode else None
            if not process.returncode:
                remember_valid(VALID_SCRIPTS, _script_key(bash, script))
    return found


VALID_SCRIPTS = "valid-scripts"  # the cache folder of scripts bash -n accepted


def _script_key(bash: str, script: str) -> str:
    """A name for `script` as `bash` (_bash_identity) parses it: another bash or another byte is another name."""
    return hashlib.sha256(f"{bash}\0{script}".encode()).hexdigest()


def _bash_identity() -> str:
    """The bash binary that parses: its path, size and modification time."""
    bash = shutil.which("bash") or "bash"
    try:
        stat = os.stat(bash)
    except OSError:
        return bash
    return f"{os.path.realpath(bash)}\0{stat.st_size}\0{stat.st_mtime_ns}"


def _problem(file: RenderedFile) -> str | None:
    if file.kind == FileKind.CLOUD_CONFIG_PACKED:
        return _cloud_config_problem(unpack(file.data))
    if isinstance(file.content, bytes):
        return f"binary content for kind {file.kind}"
    if file.kind == FileKind.CLOUD_CONFIG:
        return _cloud_config_problem(file.content)
    if file.kind == FileKind.SHELL:
        return _bash_syntax([file.content])[file.content]
    if file.kind == FileKind.HCL:
        import pygohcl

        try:
            pygohcl.loads(file.content)
        except pygohcl.HCLParseError as exc:
            return f"not valid HCL: {exc}"
        return None
    return f"unknown kind {file.kind}"


def _cloud_config_problem(text: str) -> str | None:
    if not text.startswith("#cloud-config\n"):
        return "does not start with #cloud-config"
    try:
        data = yaml.load(text, Loader=FAST_LOADER)
    except yaml.YAMLError as exc:
        return f"not valid YAML: {str(exc).splitlines()[0]}"
    return None if isinstance(data, dict) else "not a YAML mapping"
