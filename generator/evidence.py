"""Vendor evidence behind the facts in descriptors (distros/evidence/*.yaml).

A fact is a descriptor value at a path that names something a vendor publishes (a repository, a key, a package, a
branch, a module stream...), written `PATH=VALUE` with list indices as `*`, e.g.
`repos.cuda.fingerprint=EB693B3035CD5710E231E123A4B469963BF863CC`. Each evidence entry says where the vendor
publishes it, when it was seen, the excerpt, and which facts it `covers` (a cover may be scoped to one
distribution as `DISTRO:PATH=VALUE`). Entries whose status is `unverified` cover a fact without confirming it:
`bakegen show` lists those, and a fact no entry covers is a defect (tests/test_evidence.py).

An entry may also say what its excerpt shows a repository *offers*, per distribution and arch: the packages (and
module streams) it publishes, the key files in its folder, and what it signs. `in` is a repository name of the
descriptors or `archive` (the distribution's own). Package names may hold `{branch}` (expanded for each of the
offer's `branches`), `{kernel}` and `{flavour}` (left as written: they match the descriptors' own patterns). The
evidence walk (tests/test_evidence_walk.py) checks every package, stream, key and signing setting the generated
provisioning uses against these offers, and the trace harness's stand-in repositories hold exactly what they list.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from .model import release_placeholders
from .paths import data_dir

# The descriptor paths that hold vendor facts (list indices written as *).
FACT_PATH = re.compile(
    r"^(repos\.[^.]+\.(base|path|key|fingerprint|suite|signs\.(metadata|packages))"
    r"|retired_keys\.\*|vars\.cuda_repo|kernel\.(headers|headers_meta|extra\.\*|lines\.[0-9]+\.[0-9]+\.(headers|extra\.\*))"
    r"|toolkit\.packages\.\*"
    r"|driver\.sources\.[^.]+\.(packages\.[^.]+\.\*|module_stream\.[^.]+|branches\.\*|default_branch|arches\.\*"
    r"|apt_components\.\*|fabric_manager\.\*\.package)"
    r"|runtimes\.[^.]+\.packages\.\*"
    r"|cloud\.(aws|gcp|azure)\.(ami_name|owner|root_device|kernel_line|kernel_lines\.\*|image_family|image_project"
    r"|publisher|offer|sku|plan|min_os_disk_gb)(\.(x86_64|aarch64))?)$"
)
STATUSES = ("verified", "unverified")
ARCHIVE = "archive"  # an offer's `in` for the distribution's own archive
ARCHES = ("x86_64", "aarch64")
OFFER_KEYS = {"in", "distros", "arches", "branches", "packages", "streams", "keys", "signs", "kernels"}


@dataclass(frozen=True)
class Offer:
    """What one repository publishes for some distributions and arches, as one evidence entry shows it."""

    repo: str  # a descriptor repository name, or ARCHIVE
    distros: tuple[str, ...]
    arches: tuple[str, ...]
    branches: tuple[str, ...] = ()  # the driver branches this offer's {branch} names stand for
    packages: tuple[str, ...] = ()
    streams: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()  # key file names published in the repository's folder
    signs: tuple[tuple[str, bool], ...] = ()  # (metadata|packages, signed)
    kernels: tuple[str, ...] = ()  # the kernel lines (e.g. 6.12) whose packages these are; () = every kernel

    def names(self, field_name: str, branch: str | None = None, kernel: str | None = None) -> set[str]:
        """The offer's packages or streams, {branch} expanded (for `branch`, or every branch of the offer); with
        `kernel`, only an offer for that kernel line (or for every kernel) names any."""
        values: tuple[str, ...] = getattr(self, field_name)
        if kernel is not None and self.kernels and kernel not in self.kernels:
            return set()
        branches = self.branches if branch is None else (branch,) if branch in self.branches else ()
        found: set[str] = set()
        for value in values:
            if "{branch}" in value:
                found.update(value.replace("{branch}", b) for b in branches)
            elif branch is None or not self.branches or branch in self.branches:
                found.add(value)
        return found


@dataclass(frozen=True)
class Evidence:
    fact: str  # the entry's id, e.g. cuda.key.apt.3bf863cc
    status: str  # verified | unverified
    source: str
    seen: str
    excerpt: str
    covers: tuple[str, ...]
    note: str = ""
    offers: tuple[Offer, ...] = ()
    value: str = ""  # what the excerpt shows, in a line


def evidence_dir() -> Path:
    return data_dir("distros") / "evidence"


@cache
def load_evidence() -> tuple[Evidence, ...]:
    entries: list[Evidence] = []
    for path in sorted(evidence_dir().glob("*.yaml")):
        for raw in yaml.safe_load(path.read_text(encoding="utf-8")) or []:
            entries.append(
                Evidence(
                    fact=str(raw["fact"]),
                    status=str(raw["status"]),
                    source=str(raw["source"]),
                    seen=str(raw["seen"]),
                    excerpt=str(raw["excerpt"]),
                    covers=tuple(str(c) for c in raw.get("covers", ())),
                    note=str(raw.get("note", "")),
                    offers=tuple(_offer(raw["fact"], o) for o in raw.get("offers", ())),
                    value=str(raw.get("value", "")),
                )
            )
    return tuple(entries)


def _offer(fact: str, raw: dict[str, Any]) -> Offer:
    unknown = set(raw) - OFFER_KEYS
    if unknown or "in" not in raw or "distros" not in raw:
        raise ValueError(f"distros/evidence: {fact}: an offer needs `in` and `distros` (unknown: {sorted(unknown)})")

    def strings(key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        return tuple(str(v) for v in raw.get(key, default))

    return Offer(
        repo=str(raw["in"]),
        distros=strings("distros"),
        arches=strings("arches", ARCHES),
        branches=strings("branches"),
        packages=strings("packages"),
        streams=strings("streams"),
        keys=strings("keys"),
        signs=tuple((str(k), bool(v)) for k, v in dict(raw.get("signs", {})).items()),
        kernels=strings("kernels"),
    )


def offers(distro_id: str, arch: str, repo: str) -> list[tuple[Offer, Evidence]]:
    """What the evidence shows `repo` offering to `distro_id` on `arch`, with the entry that shows it."""
    return [
        (offer, entry)
        for entry in load_evidence()
        for offer in entry.offers
        if offer.repo == repo and distro_id in offer.distros and arch in offer.arches
    ]


def facts(data: dict[str, Any]) -> Iterator[str]:
    """Every vendor fact of a merged descriptor, as PATH=VALUE."""

    def walk(node: Any, path: tuple[str, ...]) -> Iterator[tuple[str, Any]]:
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, (*path, str(key)))
        elif isinstance(node, list):
            for value in node:
                yield from walk(value, (*path, "*"))
        elif node is not None:
            yield ".".join(path), node

    release = _ReleaseValues(data.get("os_release", {}))
    for path, value in walk(data, ()):
        if FACT_PATH.match(path):
            text = str(value).lower() if isinstance(value, bool) else str(value)
            if path.startswith(PER_RELEASE):
                text = text.format_map(release)
            yield f"{path}={text}"


# Facts the evidence names per release (NVIDIA's folder for it, its cloud images), which parents write once as a
# pattern such as `rhel{version_id}`. Repository layouts keep their placeholders: the vendor publishes the pattern.
PER_RELEASE = ("vars.", "cloud.")


class _ReleaseValues(dict[str, str]):
    """A release's own placeholders filled in as a plan fills them (a parent's `rhel{version_id}` is rhel9's fact
    `rhel9`), every other placeholder left as written."""

    def __init__(self, os_release: dict[str, Any]) -> None:
        super().__init__(
            release_placeholders(str(os_release.get("version_id", "")), str(os_release.get("codename", "")))
        )

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def covering(distro_id: str, fact: str, entries: tuple[Evidence, ...]) -> list[Evidence]:
    return [e for e in entries if fact in e.covers or f"{distro_id}:{fact}" in e.covers]


def unverified_facts(distro_id: str, data: dict[str, Any]) -> list[tuple[str, Evidence]]:
    """The facts of a distribution that only unverified evidence covers (none verified), with that evidence."""
    entries = load_evidence()
    found = []
    for fact in sorted(set(facts(data))):
        cover = covering(distro_id, fact, entries)
        if cover and all(e.status != "verified" for e in cover):
            found.append((fact, cover[0]))
    return found


def published(
    distro_id: str, arch: str, repo: str, field_name: str, branch: str | None = None, kernel: str | None = None
) -> set[str]:
    """The names (packages, streams or keys) the evidence shows `repo` publishing for `distro_id` on `arch`, as
    Offer.names gives them: at `branch`, or every branch; for kernel line `kernel` ("" for a kernel of no line the
    evidence names), or every line."""
    return {n for offer, _ in offers(distro_id, arch, repo) for n in offer.names(field_name, branch, kernel)}


def signing(distro_id: str, arch: str, repo: str) -> dict[str, bool]:
    """What the evidence shows `repo` signing (metadata, packages); an aspect it is silent on is absent."""
    return dict(aspect for offer, _ in offers(distro_id, arch, repo) for aspect in offer.signs)


def kernel_lines(distro_id: str, arch: str) -> list[str]:
    """The kernel lines the evidence names packages for in the distribution's archive (e.g. 6.1, 6.12, 6.18)."""
    return sorted({line for offer, _ in offers(distro_id, arch, ARCHIVE) for line in offer.kernels})


def unverified_offers(distro_id: str) -> list[Evidence]:
    """Unverified entries whose offers the evidence walk relies on for this distribution (e.g. where dkms comes
    from): no descriptor value states them, so unverified_facts cannot list them."""
    return [e for e in load_evidence() if e.status != "verified" and any(distro_id in o.distros for o in e.offers)]
