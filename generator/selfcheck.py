"""Check each rendered file by its kind before it is written: a broken file never reaches out/."""

from __future__ import annotations

import subprocess

import yaml

from .errors import BakegenError
from .render import FileKind, RenderedFile


def check_rendered(file: RenderedFile, label: str) -> None:
    """Raise BakegenError when `file` does not parse as its kind. `label` names it in the message."""
    problem = _problem(file)
    if problem:
        raise BakegenError(f"generated {label} is broken: {problem} (a bakegen bug or a bad descriptor)")


def _problem(file: RenderedFile) -> str | None:
    if file.kind == FileKind.CLOUD_CONFIG:
        if not file.content.startswith("#cloud-config\n"):
            return "does not start with #cloud-config"
        try:
            data = yaml.safe_load(file.content)
        except yaml.YAMLError as exc:
            return f"not valid YAML: {str(exc).splitlines()[0]}"
        return None if isinstance(data, dict) else "not a YAML mapping"
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
