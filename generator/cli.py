"""bakegen's command line. User errors end as one line on stderr and exit 1 (or 2 for usage), never a traceback."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .args import ALL, Parser, generate_parser, options_from, select_distros
from .descriptors import in_schema_order, schema_reference
from .errors import BakegenError, UsageError
from .evidence import unverified_facts, unverified_offers
from .model import UNVERIFIED_FINGERPRINT, Arch, Distro, Format
from .output import Target, ensure_writable, prune, stale, write_atomically
from .packer_runner import run_packer
from .plan import make_plan
from .render import FileKind, RenderedFile, make_environment, render
from .resolve import descriptor_set, load_all, load_distro, suggest
from .selfcheck import check_all
from .userdata import GENERIC, USER_DATA_FORMS
from .validate import run_validate

# The smallest user-data limit of the clouds bakegen knows (AWS's): generic user-data above it gets a note.
USER_DATA_WARN_BYTES = min(f.limit for f in USER_DATA_FORMS.values() if f.limit)
USER_DATA_SIZE_HINT = (
    "for a cloud that limits user-data, generate with --cloud aws|azure|gcp (README: User-data per cloud)"
)


@dataclass(frozen=True)
class Job:
    distro: Distro
    arch: Arch
    fmt: Format


def _jobs(args: argparse.Namespace, distros: list[Distro]) -> list[Job]:
    formats = list(Format) if args.format == ALL else [Format(args.format)]
    jobs: list[Job] = []
    for distro in distros:
        if args.arch == ALL or (args.arch is None and args.distro == ALL):
            arches = list(distro.arches)
        else:
            arches = [Arch(args.arch or Arch.X86_64.value)]
        jobs.extend(Job(distro, arch, fmt) for arch in arches for fmt in formats)
    return jobs


def run_generate(argv: Sequence[str]) -> int:
    args = generate_parser().parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out: {args.out} is not a folder")
    distros = select_distros(args)
    jobs = _jobs(args, distros)
    if args.stdout and (len(jobs) != 1 or jobs[0].fmt is Format.PACKER):
        raise UsageError("--stdout takes one distribution, one arch and a single-file format (cloud-init or shell)")
    env = make_environment()
    notes: list[str] = []
    rendered_for_stdout: RenderedFile | None = None
    unverified: dict[str, str] = {}
    if args.script_url and args.format not in (Format.CLOUD_INIT.value, ALL):
        raise UsageError("--script-url is for cloud-init user-data (--format cloud-init)")
    written: dict[Path, Target] = {}
    rendered: list[tuple[RenderedFile, str]] = []
    for job in jobs:
        plan = make_plan(job.distro, options_from(args, job.arch, job.fmt))
        for repo in plan.repos:
            if repo.fingerprint == UNVERIFIED_FINGERPRINT:
                unverified.setdefault(f"{job.distro.id}'s {repo.name}", repo.name)
        files = render(plan, job.fmt, env)
        if args.stdout and len(files) > 1:
            raise UsageError("--stdout prints one file; --script-url writes two (user-data and install.sh): use --out")
        for file in files:
            label = f"{job.distro.id}/{job.arch.value}/{file.path}"
            rendered.append((file, label))
            rendered_for_stdout = file
            target = Target(args.out / job.distro.id / job.arch.value / file.path, file.content, file.mode)
            # --format all --script-url: the shell format and the bootstrap form both write install.sh, the same.
            if target.path in written:
                assert written[target.path] == target, target.path
                continue
            written[target.path] = target
            if file.kind == FileKind.CLOUD_CONFIG and plan.options.user_data_cloud == GENERIC:
                note = user_data_size_note(label, target.data)
                if note:
                    notes.append(note)
    check_all(rendered)
    targets = list(written.values())
    whole_matrix = args.distro == ALL and args.format == ALL and args.arch in (None, ALL)
    if args.check:
        problems = stale(targets, args.out if whole_matrix else None)
        if problems:
            for problem in problems:
                print(f"bakegen: {problem}", file=sys.stderr)
            raise BakegenError(
                f"{len(problems)} generated file(s) differ from {args.out}/",
                hint="run `bakegen all --format all` and commit out/",
            )
        print(f"bakegen: {len(targets)} generated files match {args.out}/")
        return 0
    notes = [
        f"{label} repository key has no verified fingerprint: the script refuses it until generated with "
        f"--key-fingerprint {name}=<40 hex digits> (see `bakegen show`)"
        for label, name in unverified.items()
    ] + notes
    if args.stdout:
        assert rendered_for_stdout is not None
        content = rendered_for_stdout.content
        if isinstance(content, bytes):
            sys.stdout.flush()
            sys.stdout.buffer.write(content)
        else:
            sys.stdout.write(content)
        _print_notes(notes)
        return 0
    ensure_writable(args.out)  # after every job rendered: a bad option or an oversized file leaves no trace
    # Everything is written (and pruned) before anything is printed: a reader that closes the pipe early
    # (`bakegen all | head`) ends the printing, never the writing.
    paths = write_atomically(targets)
    removed = prune(targets, args.out) if whole_matrix else []
    for path in paths:
        print(path)
    for path in removed:
        print(f"removed {path}", file=sys.stderr)
    _print_notes(notes)
    return 0


def _print_notes(notes: list[str]) -> None:
    """Notes on stderr; several about generic user-data sizes are summed up in one."""
    sizes = [note for note in notes if note.endswith(USER_DATA_SIZE_HINT)]
    for note in notes:
        if note not in sizes:
            print(f"bakegen: note: {note}", file=sys.stderr)
    if len(sizes) == 1:
        print(f"bakegen: note: {sizes[0]}", file=sys.stderr)
    elif sizes:
        print(
            f"bakegen: note: {len(sizes)} generic user-data files are above {USER_DATA_WARN_BYTES:,} bytes: "
            + USER_DATA_SIZE_HINT,
            file=sys.stderr,
        )


def user_data_size_note(label: str, data: bytes) -> str | None:
    """Generic user-data has no limit; say which option fits it to a cloud that has one."""
    if len(data) <= USER_DATA_WARN_BYTES:
        return None
    return f"{label} is {len(data):,} bytes, no limit applied (--cloud generic): {USER_DATA_SIZE_HINT}"


def run_list(argv: Sequence[str]) -> int:
    parser = Parser(prog="bakegen list", description="The distributions bakegen knows, as a table.")
    parser.add_argument("--distros-dir", type=Path)
    args = parser.parse_args(argv)
    distros = load_all(descriptor_set(args.distros_dir))
    rows = [("DISTRO", "NAME", "FAMILY", "ARCHES", "DRIVER SOURCES (default first)", "FORMATS")]
    formats = ",".join(f.value for f in Format)
    for distro in distros:
        sources = [distro.default_driver_source] + sorted(
            s for s in distro.driver_sources if s != distro.default_driver_source
        )
        rows.append(
            (
                distro.id,
                distro.name,
                distro.family.value,
                ",".join(a.value for a in distro.arches),
                ",".join(sources),
                formats,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def run_show(argv: Sequence[str]) -> int:
    import yaml

    parser = Parser(prog="bakegen show", description="A distribution's descriptor after `extends:` is resolved.")
    parser.add_argument("distro", nargs="?")
    parser.add_argument("--distros-dir", type=Path)
    parser.add_argument("--schema", action="store_true", help="print the descriptor reference instead")
    args = parser.parse_args(argv)
    if args.schema:
        if args.distro:
            raise UsageError("--schema takes no distribution")
        print(schema_reference(), end="")
        return 0
    if not args.distro:
        raise UsageError("show: name a distribution (or --schema)", hint="see bakegen show --help")
    descriptors = descriptor_set(args.distros_dir)
    if args.distro not in descriptors:
        close = suggest(args.distro, descriptors.ids())
        raise UsageError(f"unknown distribution {args.distro!r}", hint=f"did you mean {close}?" if close else None)
    merged = descriptors.merged(args.distro)
    if merged.abstract:
        children = [d for d in descriptors.ids() if descriptors.merged(d).chain[1:2] == (args.distro,)]
        raise UsageError(f"{args.distro} is an abstract parent; show one that extends it: {', '.join(children)}")
    load_distro(descriptors, args.distro)  # reports schema problems
    print(f"# {merged.display}, extends: {' -> '.join(merged.chain[1:]) or 'nothing'}")
    print(yaml.safe_dump(in_schema_order(merged.data), sort_keys=False, default_flow_style=False, width=120), end="")
    unverified = unverified_facts(args.distro, merged.data)
    print(f"# UNVERIFIED facts (no vendor evidence confirms them; see distros/evidence/): {len(unverified) or 'none'}")
    for fact, evidence in unverified:
        why = " ".join((evidence.note or evidence.source).split())  # one comment line, whatever the entry holds
        print(f"#   {fact}  [{evidence.fact}: {why}]")
    listed = {evidence.fact for _, evidence in unverified}
    for evidence in unverified_offers(args.distro):
        if evidence.fact not in listed:
            print(f"#   (what a repository offers) [{evidence.fact}: {' '.join(evidence.value.split())}]")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "list":
            return run_list(argv[1:])
        if argv and argv[0] == "show":
            return run_show(argv[1:])
        if argv and argv[0] == "validate":
            return run_validate(argv[1:])
        if argv and argv[0] == "packer":
            return run_packer(argv[1:])
        return run_generate(argv)
    except BakegenError as exc:
        print(f"bakegen: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, BrokenPipeError) as exc:
        if isinstance(exc, BrokenPipeError):
            return 0
        print("bakegen: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line for the user, the traceback on request
        if os.environ.get("BAKEGEN_DEBUG"):
            raise
        print(
            f"bakegen: internal error: {type(exc).__name__}: {exc} (set BAKEGEN_DEBUG=1 for details)", file=sys.stderr
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
