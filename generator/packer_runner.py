"""`bakegen packer DISTRO [init|validate|build]`: render a distribution's Packer folder, then run Packer on it.

Packer's output is streamed, never captured, and its exit code is bakegen's. Packer releases before 1.7 (Debian
ships 1.6.6) do not know `packer { required_plugins }` nor a few newer builder fields: for them bakegen runs
Packer on a compatibility copy of the folder (see LEGACY_STRIPPED and docs/packer.md), automatically for
`validate`, only on request (--legacy-packer) for `build`, and never for a build whose sources would lose a field.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from .args import ALL, generate_parser, options_from, select_distros
from .errors import BakegenError, UsageError
from .model import Arch, Cloud, Format
from .output import Target, ensure_writable, write_atomically
from .packer import (
    INSTALL_HINT,
    PACKER_MIN_VERSION,
    PACKER_PLUGINS,
    PACKER_SOURCE_NAME,
    PLUGINS_FILE,
    LegacyStrip,
    PackerVersion,
    find_packer,
    make_legacy_copy,
    packer_version,
)
from .plan import make_plan
from .render import make_environment, render
from .selfcheck import check_rendered

ACTIONS = ("init", "validate", "build")
DEFAULT_ACTION = "validate"
NOT_FOR_PACKER = ("format", "stdout", "check")  # `bakegen DISTRO` options that `bakegen packer` rejects
EXAMPLE_VARS = "example.pkrvars.hcl"


# `packer { required_plugins }` and `packer init` arrived in Packer 1.7.0.
def packer_parser() -> argparse.ArgumentParser:
    """`bakegen DISTRO`'s options (the same generation code path) plus the runner's own."""
    parser = generate_parser()
    parser.prog = "bakegen packer"
    parser.description = (
        "Render DISTRO's Packer folder (OUT/DISTRO/ARCH/packer) and run `packer ACTION` on it, streaming Packer's "
        f"output and returning its exit code. ACTION: {', '.join(ACTIONS)} (default: {DEFAULT_ACTION}). "
        "Arguments after `--` go to Packer as they are."
    )
    parser.usage = (
        "bakegen packer DISTRO [--arch A] [--cloud aws,gcp,azure,qemu] [generation options] "
        "[init|validate|build] [--var-file F] [--dry-run] [--legacy-packer] [-- packer args]"
    )
    for action in parser._actions:  # argparse has no public way to re-document inherited arguments
        if action.dest in NOT_FOR_PACKER:
            action.help = argparse.SUPPRESS
        elif action.dest == "distro":
            action.help = "a distribution id (see `bakegen list`)"
        elif action.dest == "arch":
            action.help = "default: x86_64"
    runner = parser.add_argument_group("packer runner")
    runner.add_argument(
        "action",
        nargs="?",
        choices=ACTIONS,
        default=DEFAULT_ACTION,
        help=f"the Packer command (default: {DEFAULT_ACTION})",
    )
    runner.add_argument(
        "--var-file",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="passed to Packer as -var-file (repeatable); without one, validate uses example.pkrvars.hcl",
    )
    runner.add_argument(
        "--dry-run",
        action="store_true",
        help="render the folder, print the Packer commands (shell-quoted) and run nothing",
    )
    runner.add_argument(
        "--legacy-packer",
        action="store_true",
        help="run Packer < 1.7 (e.g. Debian's 1.6.6) on a compatibility copy without plugins.pkr.hcl; "
        "builds of sources that would lose a security setting are refused (see docs/packer.md)",
    )
    return parser


def _split_extra(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    argv = list(argv)
    if "--" in argv:
        index = argv.index("--")
        return argv[:index], argv[index + 1 :]
    return argv, []


def _check_args(args: argparse.Namespace) -> None:
    if args.distro == ALL:
        raise UsageError("bakegen packer takes one distribution, not `all`")
    if args.arch == ALL:
        raise UsageError("bakegen packer takes one --arch, not `all`")
    for flag, value, default in (
        ("--format", args.format, "cloud-init"),
        ("--stdout", args.stdout, False),
        ("--check", args.check, False),
    ):
        if value != default:
            raise UsageError(f"{flag} does not apply to bakegen packer (it always renders the Packer format)")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out: {args.out} is not a folder")


def render_folder(args: argparse.Namespace) -> tuple[Path, tuple[Cloud, ...], bool]:
    """Render and write OUT/DISTRO/ARCH/packer: returns the folder, the plan's clouds, whether --cloud chose them."""
    (distro,) = select_distros(args)
    arch = Arch(args.arch or Arch.X86_64.value)
    options = options_from(args, arch, Format.PACKER)
    plan = make_plan(distro, options)
    base = args.out / distro.id / arch.value
    targets = []
    for file in render(plan, Format.PACKER, make_environment()):
        check_rendered(file, f"{distro.id}/{arch.value}/{file.path}")
        targets.append(Target(base / file.path, file.content, file.mode))
    ensure_writable(args.out)
    write_atomically(targets)
    return base / "packer", plan.clouds, options.clouds is not None


def only_flag(clouds: Iterable[Cloud]) -> str:
    return "-only=" + ",".join(f"{PACKER_PLUGINS[c].builder}.{PACKER_SOURCE_NAME}" for c in clouds)


def packer_command(
    packer: str, action: str, folder: Path, only: str | None, var_files: Sequence[Path], extra: Sequence[str]
) -> list[str]:
    if action == "init":
        return [packer, "init", *extra, str(folder)]
    return [
        packer,
        action,
        *([only] if only else []),
        *(f"-var-file={path}" for path in var_files),
        *extra,
        str(folder),
    ]


def _note(message: str) -> None:
    print(f"bakegen: {message}", file=sys.stderr, flush=True)


def _refuse_legacy_build(removed: Sequence[LegacyStrip], built: Sequence[Cloud], version: str) -> None:
    types = {PACKER_PLUGINS[c].builder for c in built}
    lost = sorted({f"{r.source_type}.{r.field}" for r in removed if r.source_type in types})
    if lost:
        raise BakegenError(
            f"refusing to build with Packer {version}: it does not know {', '.join(lost)}, so the image would be "
            "built without these security settings",
            hint=f"install Packer >= {PACKER_MIN_VERSION}, or build only other clouds, e.g. --cloud qemu",
        )


def run_packer(argv: Sequence[str]) -> int:
    own, extra = _split_extra(argv)
    args = packer_parser().parse_intermixed_args(own)
    _check_args(args)
    for path in args.var_file:
        if not path.is_file():
            raise UsageError(f"--var-file: {path} is not a file")
    folder, clouds, chosen = render_folder(args)
    _note(f"rendered {folder}")
    only = only_flag(clouds) if chosen else None

    if args.dry_run:
        packer = shutil.which("packer") or "packer"
        version: PackerVersion | None = None
    else:
        packer = find_packer()
        version = packer_version(packer)
    legacy = args.legacy_packer or (version is not None and version.legacy)
    version_text = version.text if version else "< 1.7"

    if legacy and args.action == "init":
        raise BakegenError(
            f"packer init needs Packer >= 1.7 (found {version_text}): older releases have their builders "
            "built in and nothing to install",
            hint=INSTALL_HINT,
        )
    if version is not None and version.legacy and args.action == "build" and not args.legacy_packer:
        raise BakegenError(
            f"Packer {version.text} is too old for these templates: "
            "`packer { required_plugins }` needs Packer >= 1.7",
            hint=f"install Packer >= {PACKER_MIN_VERSION} (https://developer.hashicorp.com/packer/install), or pass "
            "--legacy-packer to build a compatibility copy (qemu only; see docs/packer.md)",
        )

    run_folder = folder
    keep: Path | None = None
    workdir: tempfile.TemporaryDirectory[str] | None = None
    var_files = list(args.var_file)
    try:
        if legacy:
            if args.dry_run:
                keep = Path(tempfile.mkdtemp(prefix="bakegen-packer-legacy-"))
                run_folder = keep
            else:
                workdir = tempfile.TemporaryDirectory(prefix="bakegen-packer-legacy-")
                run_folder = Path(workdir.name)
            removed = make_legacy_copy(folder, run_folder)
            if args.action == "build":
                _refuse_legacy_build(removed, clouds, version_text)
            left_out = [PLUGINS_FILE, *sorted({f"{r.source_type}.{r.field}" for r in removed})]
            _note(
                f"Packer {version_text} does not know `packer {{ required_plugins }}`: running it on a compatibility "
                f"copy, {run_folder}, without {', '.join(left_out)} (these are parsed as HCL only, not checked by "
                "Packer; see docs/packer.md)"
            )
        if args.action == "validate" and not var_files:
            var_files = [run_folder / EXAMPLE_VARS]
            _note(f"validating with the example values in {EXAMPLE_VARS} (no --var-file given)")
        command = packer_command(packer, args.action, run_folder, only, var_files, extra)
        if args.dry_run:
            print(shlex.join(command), flush=True)
            if keep is not None:
                _note(f"dry run: nothing was run; the compatibility copy stays in {keep} for inspection")
            return 0
        _note(f"running: {shlex.join(command)}")
        code = _exit_code(subprocess.run(command, check=False).returncode)
        _note(f"packer {args.action} exited {code}")
        return code
    finally:
        if workdir is not None:
            workdir.cleanup()


def _exit_code(returncode: int) -> int:
    """Packer's exit code; killed by a signal N becomes 128 + N, as a shell reports it."""
    return 128 - returncode if returncode < 0 else returncode
