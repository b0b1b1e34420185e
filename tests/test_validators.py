"""The real validators on every generated file, and proof that each one catches what it is there for.

Validators: cloud-init's schema (Debian's cloud-init, run by the system Python), the newest cloud-init schema
from Debian's archive (fetched by tests/setup.sh), yamllint, shellcheck (warning level), bash -n, HashiCorp's
HCL parser (pygohcl), `packer fmt -check` and `packer validate` (Debian's Packer 1.6.6: see generator/validate.py
for what it is given). A missing validator is an error here, never a skip.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from generator import validate as v
from tests.helpers import REPO, run_cli


def test_every_committed_generated_file_passes_every_validator() -> None:
    problems, counts = v.validate([REPO / "out"])
    assert problems == []
    assert counts["cloud-config"] > 0 and counts["shell"] > 0 and counts["hcl"] > 0


def test_bakegen_validate_command_reports_all_valid() -> None:
    result = run_cli("validate", "out/debian12")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all valid: 2 cloud-config, 4 shell, 10 hcl" in result.stdout


BROKEN_CLOUD_CONFIG = [
    pytest.param("#cloud-config\nruncmds:\n  - [ls]\n", "cloud-init newest schema", id="unknown-top-level-key"),
    pytest.param("#cloud-config\npower_state:\n  mode: explode\n", "cloud-init schema", id="bad-enum"),
    pytest.param("#cloud-config\nruncmd: [ls]\nruncmd: [pwd]\n", "yamllint", id="duplicate-key"),
    pytest.param("#cloud-config\npackage_update: yes\n", "yamllint", id="truthy-yes"),
]


@pytest.mark.parametrize(("text", "validator"), BROKEN_CLOUD_CONFIG)
def test_cloud_config_validators_catch(tmp_path: Path, text: str, validator: str) -> None:
    path = tmp_path / "user-data.yaml"
    path.write_text(text)
    problems, _ = v.validate([path])
    assert validator in {p.validator for p in problems}, problems


def test_shellcheck_catches_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "install.sh"
    path.write_text("#!/usr/bin/env bash\nfor f in $(ls /etc); do rm $f; done\n")
    problems, _ = v.validate([path])
    assert "shellcheck" in {p.validator for p in problems}


def test_packer_validators_catch_syntax_format_and_unknown_fields(tmp_path: Path) -> None:
    folder = tmp_path / "packer"
    shutil.copytree(REPO / "out" / "debian12" / "x86_64" / "packer", folder)
    build = folder / "build.pkr.hcl"
    build.write_text(build.read_text().replace("build {", "build {\n  no_such_field = 1", 1))
    (folder / "broken.pkr.hcl").write_text('variable "x" {\n  type = string\n')
    problems, _ = v.validate([folder])
    found = {p.validator for p in problems}
    assert {"HCL parser", "packer fmt", "packer validate"} <= found, problems
