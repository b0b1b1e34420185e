"""Vendor evidence behind the facts in descriptors (distros/evidence/*.yaml).

A fact is a descriptor value at a path that names something a vendor publishes (a repository, a key, a package, a
branch, a module stream...), written `PATH=VALUE` with list indices as `*`, e.g.
`repos.cuda.fingerprint=EB693B3035CD5710E231E123A4B469963BF863CC`. Each evidence entry says where the vendor
publishes it, when it was seen, the excerpt, and which facts it `covers` (a cover may be scoped to one
distribution as `DISTRO:PATH=VALUE`). Entries whose status is `unverified` cover a fact without confirming it:
`bakegen show` lists those, and a fact no entry covers is a defect (tests/test_evidence.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from .paths import data_dir

# The descriptor paths that hold vendor facts (list indices written as *).
FACT_PATH = re.compile(
    r"^(repos\.[^.]+\.(base|path|key|fingerprint|suite|signs\.(metadata|packages))"
    r"|retired_keys\.\*|vars\.cuda_repo|kernel\.(headers|extra\.\*|lines\.[0-9]+\.[0-9]+\.(headers|extra\.\*))"
    r"|toolkit\.packages\.\*"
    r"|driver\.sources\.[^.]+\.(packages\.[^.]+\.\*|module_stream\.[^.]+|branches\.\*|default_branch|arches\.\*"
    r"|apt_components\.\*)"
    r"|runtimes\.[^.]+\.packages\.\*)$"
)
STATUSES = ("verified", "unverified")


@dataclass(frozen=True)
class Evidence:
    fact: str  # the entry's id, e.g. cuda.key.apt.3bf863cc
    status: str  # verified | unverified
    source: str
    seen: str
    excerpt: str
    covers: tuple[str, ...]
    note: str = ""


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
                )
            )
    return tuple(entries)


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

    for path, value in walk(data, ()):
        if FACT_PATH.match(path):
            text = str(value).lower() if isinstance(value, bool) else str(value)
            yield f"{path}={text}"


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
