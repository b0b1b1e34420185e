"""The command line's parsing: the generate parser, option checking into Options, distribution selection.

Shared by the commands (generator/cli.py dispatches; generator/packer_runner.py and generator/validate.py parse
their own arguments with the same Parser). Imports no command module.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import __version__
from .errors import UsageError
from .model import Arch, Cloud, Distro, Format, KernelModules, Runtime
from .plan import (
    FABRIC_MANAGER_MODES,
    CheckOptions,
    Options,
    parse_branch,
    parse_capabilities,
    parse_container_image,
    parse_driver_version,
    parse_fingerprint,
    parse_gpus,
    parse_https_url,
    parse_name_value,
    parse_script_url,
    parse_toolkit_version,
)
from .resolve import descriptor_set, load_all, load_distro, suggest
from .userdata import GENERIC, USER_DATA_CLOUDS

COMMANDS = ("list", "show", "validate", "packer")
ALL = "all"


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors through UsageError: one line, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message, hint=f"see {self.prog} --help")


def _choices(enum_type: type[Arch] | type[KernelModules]) -> list[str]:
    return [member.value for member in enum_type]


def generate_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="bakegen",
        description="Generate NVIDIA GPU container-host provisioning: cloud-init user-data, shell scripts and "
        "Packer HCL2. Other commands: bakegen list | show DISTRO | validate PATH... | packer DISTRO ...",
    )
    parser.add_argument("--version", action="version", version=f"bakegen {__version__}")
    parser.add_argument("distro", help="a distribution id (see `bakegen list`), or `all`")
    parser.add_argument("--format", default="cloud-init", choices=[f.value for f in Format] + [ALL])
    parser.add_argument("--arch", choices=_choices(Arch) + [ALL], help="default: x86_64 (with `all`: every arch)")
    driver = parser.add_argument_group("driver")
    driver.add_argument("--driver-source", help="one of the descriptor's sources (default: the descriptor's)")
    driver.add_argument("--driver-branch", type=parse_branch, help="e.g. 580 (default: the source's)")
    driver.add_argument("--driver-version", type=parse_driver_version, help="an exact version, e.g. 580.95.05")
    driver.add_argument(
        "--kernel-modules",
        choices=_choices(KernelModules),
        help="open (default from branch 560) or proprietary (pre-Turing GPUs)",
    )
    driver.add_argument("--no-driver", action="store_true", help="the image already has a driver")
    driver.add_argument(
        "--fabric-manager",
        choices=FABRIC_MANAGER_MODES,
        help="NVSwitch fabric manager: auto (default: installed with the driver, started where NVSwitches are), "
        "on (started everywhere), off",
    )
    toolkit = parser.add_argument_group("toolkit and runtimes")
    toolkit.add_argument("--toolkit-version", type=parse_toolkit_version, help="default: the newest")
    toolkit.add_argument(
        "--runtime", action="append", choices=[r.value for r in Runtime], help="repeatable (default: docker)"
    )
    toolkit.add_argument("--cdi", action="store_true", help="enable the Container Device Interface")
    toolkit.add_argument(
        "--mirror",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="an https mirror for a repository (see `bakegen show DISTRO`)",
    )
    toolkit.add_argument(
        "--key-fingerprint",
        action="append",
        default=[],
        metavar="NAME=FPR",
        help="the full fingerprint of a mirror's signing key",
    )
    check = parser.add_argument_group("first-boot GPU check")
    check.add_argument("--container-image", type=parse_container_image, help="image for the smoke test")
    check.add_argument("--gpus", type=parse_gpus, help="docker run --gpus value: all, a count, or 0,1")
    check.add_argument("--capabilities", type=parse_capabilities, help="NVIDIA_DRIVER_CAPABILITIES")
    check.add_argument("--expected-gpus", type=int, default=0, help="fail when fewer GPUs are found")
    check.add_argument("--require-gpu", action="store_true", help="no GPU present is a failure")
    check.add_argument("--no-container-test", action="store_true", help="skip the docker run smoke test")
    clouds = parser.add_argument_group("clouds")
    clouds.add_argument(
        "--cloud",
        help=f"cloud-init: the one cloud the user-data is for, {', '.join(USER_DATA_CLOUDS)} (default: generic, no "
        f"size limit); Packer: a comma list of {', '.join(c.value for c in Cloud)} (default: all the distribution "
        "has images for)",
    )
    clouds.add_argument(
        "--script-url",
        type=parse_script_url,
        help="cloud-init: small user-data that downloads the install script (written beside it) from this https "
        "URL and runs it only if its sha256 matches",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, default=Path("out"), help="output folder (default: out/)")
    out.add_argument("--stdout", action="store_true", help="print a single-file format instead of writing it")
    out.add_argument("--check", action="store_true", help="write nothing; fail when out/ differs (golden check)")
    out.add_argument("--distros-dir", type=Path, help="your own descriptors, searched before the built-in ones")
    return parser


def parse_clouds(value: str | None) -> tuple[Cloud, ...] | None:
    """--cloud for Packer: the sources to build, or None for all."""
    if not value or value == ALL:
        return None
    clouds = []
    for item in value.split(","):
        if item == GENERIC:
            raise UsageError("--cloud generic is for cloud-init user-data; Packer builds for aws, gcp, azure or qemu")
        try:
            clouds.append(Cloud(item))
        except ValueError:
            raise UsageError(f"--cloud: {item!r} is not one of {', '.join(c.value for c in Cloud)}") from None
    return tuple(dict.fromkeys(clouds))


def parse_user_data_cloud(value: str | None) -> str:
    """--cloud for cloud-init: the one cloud whose user-data rules (size limit, gzip) the output follows.

    qemu (NoCloud, a Packer source here) has no limit: generic.
    """
    if not value or value in (GENERIC, Cloud.QEMU.value):
        return GENERIC
    if value not in USER_DATA_CLOUDS:
        if "," in value:
            raise UsageError(f"--cloud {value}: cloud-init user-data is written for one cloud at a time")
        raise UsageError(f"--cloud: {value!r} is not one of {', '.join(USER_DATA_CLOUDS)}")
    return value


def options_from(args: argparse.Namespace, arch: Arch, fmt: Format) -> Options:
    """The Options of one job: --cloud means Packer's sources for the Packer format, the user-data's cloud for
    cloud-init (and nothing for the shell format)."""
    mirrors = dict(parse_name_value("--mirror", m) for m in args.mirror)
    mirrors = {name: parse_https_url(f"--mirror {name}", url) for name, url in mirrors.items()}
    fingerprints = dict(parse_name_value("--key-fingerprint", f) for f in args.key_fingerprint)
    fingerprints = {n: parse_fingerprint(f"--key-fingerprint {n}", f) for n, f in fingerprints.items()}
    if args.expected_gpus < 0:
        raise UsageError("--expected-gpus: must be 0 (any) or more")
    defaults = CheckOptions()
    check = CheckOptions(
        container_test=not args.no_container_test,
        container_image=args.container_image or defaults.container_image,
        gpus=args.gpus or defaults.gpus,
        capabilities=args.capabilities or defaults.capabilities,
        expected_gpus=args.expected_gpus,
        require_gpu=args.require_gpu,
    )
    if args.no_driver and (
        args.driver_branch or args.driver_version or args.driver_source or args.kernel_modules or args.fabric_manager
    ):
        raise UsageError(
            "--no-driver cannot be combined with other --driver-*, --kernel-modules or --fabric-manager options"
        )
    return Options(
        arch=arch,
        install_driver=not args.no_driver,
        driver_source=args.driver_source,
        driver_branch=args.driver_branch,
        driver_version=args.driver_version,
        kernel_modules=KernelModules(args.kernel_modules) if args.kernel_modules else None,
        fabric_manager=args.fabric_manager or "auto",
        toolkit_version=args.toolkit_version,
        runtimes=tuple(dict.fromkeys(Runtime(r) for r in (args.runtime or ["docker"]))),
        cdi=args.cdi,
        mirrors=mirrors,
        fingerprints=fingerprints,
        check=check,
        clouds=parse_clouds(args.cloud) if fmt is Format.PACKER else None,
        user_data_cloud=parse_user_data_cloud(args.cloud) if fmt is Format.CLOUD_INIT else GENERIC,
        script_url=args.script_url if fmt is Format.CLOUD_INIT else None,
    )


def select_distros(args: argparse.Namespace) -> list[Distro]:
    descriptors = descriptor_set(args.distros_dir)
    if args.distro == ALL:
        return load_all(descriptors)
    if args.distro not in descriptors or descriptors.merged(args.distro).abstract:
        concrete = [d for d in descriptors.ids() if not descriptors.merged(d).abstract]
        close = suggest(args.distro, concrete)
        hint = f"did you mean {close}?" if close else f"known: {', '.join(concrete)}"
        raise UsageError(f"unknown distribution {args.distro!r}", hint=hint)
    return [load_distro(descriptors, args.distro)]
