"""Check each rendered file by its kind before it is written: a broken file never reaches out/."""

from __future__ import annotations

import subprocess

import yaml

from .errors import BakegenError
from .render import FileKind, RenderedFile
from .userdata import unpack


def check_rendered(file: RenderedFile, label: str) -> None:
    """Raise BakegenError when `file` does not parse as its kind. `label` names it in the message."""
    problem = _problem(file)
    if problem:
        raise BakegenError(f"generated {label} is broken: {problem} (a bakegen bug or a bad descriptor)")


def _problem(file: RenderedFile) -> str | None:
    if file.kind == FileKind.CLOUD_CONFIG_PACKED:
        data = file.content if isinstance(file.content, bytes) else file.content.encode()
        return _cloud_config_problem(unpack(data))
    if isinstance(file.content, bytes):
        return f"binary content for kind {file.kind}"
    if file.kind == FileKind.CLOUD_CONFIG:
        return _cloud_config_problem(file.content)
    if file.kind == FileKind.SHELL:
        result = subprocess.run(["bash", "-n"], input=file.content, text=True, capture_output=True, check=False)
        return result.stderr.strip().splitlines()[0] if result.returncode else None
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
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return f"not valid YAML: {str(exc).splitlines()[0]}"
    return None if isinstance(data, dict) else "not a YAML mapping"
