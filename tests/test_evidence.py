"""Every vendor fact in distros/ is backed by evidence in distros/evidence/ (issue 9), or marked UNVERIFIED there.

A fact is a descriptor value that names something a vendor publishes (generator/evidence.py: FACT_PATH). Each
evidence entry names its source, when it was seen and the excerpt; `bakegen show DISTRO` lists the facts only
unverified evidence covers, and the README's distribution table names them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from generator.cli import main
from generator.evidence import STATUSES, covering, facts, load_evidence, unverified_facts, unverified_offers
from generator.resolve import descriptor_set
from tests.helpers import all_distro_ids

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("distro_id", all_distro_ids())
def test_every_fact_has_evidence(distro_id: str) -> None:
    data = descriptor_set().merged(distro_id).data
    entries = load_evidence()
    missing = [f for f in sorted(set(facts(data))) if not covering(distro_id, f, entries)]
    assert missing == [], f"{distro_id}: facts without evidence (add an entry to distros/evidence/): {missing}"


def test_evidence_entries_are_complete_and_cover_real_facts() -> None:
    entries = load_evidence()
    ids = [e.fact for e in entries]
    assert len(ids) == len(set(ids)), "an evidence id is used twice"
    known = {f for d in all_distro_ids() for f in facts(descriptor_set().merged(d).data)}
    scoped = {f"{d}:{f}" for d in all_distro_ids() for f in facts(descriptor_set().merged(d).data)}
    for entry in entries:
        assert entry.status in STATUSES, entry.fact
        assert entry.source and entry.excerpt.strip() and re.fullmatch(r"\d{4}-\d\d-\d\d", entry.seen), entry.fact
        for cover in entry.covers:
            assert cover in known or cover in scoped, f"{entry.fact}: {cover} is no fact of any descriptor"


def test_show_lists_the_unverified_facts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "fedora43"]) == 0
    out = capsys.readouterr().out
    assert "# UNVERIFIED facts" in out
    assert "repos.cuda.fingerprint=UNVERIFIED  [cuda.key.fedora43:" in out


@pytest.mark.parametrize("distro_id", all_distro_ids())
def test_readme_names_each_distributions_unverified_facts(distro_id: str) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    row = next(
        (line for line in readme.splitlines() if line.startswith("| ") and distro_id in line.split("|")[1]), None
    )
    assert row is not None, f"README's distribution table has no row for {distro_id}"
    for _, evidence in unverified_facts(distro_id, descriptor_set().merged(distro_id).data):
        assert evidence.fact in row, f"README's row for {distro_id} does not name unverified {evidence.fact}"
    for evidence in unverified_offers(distro_id):
        assert evidence.fact in row, f"README's row for {distro_id} does not name unverified {evidence.fact}"


def test_show_lists_the_unverified_offers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "sles15"]) == 0
    assert "(what a repository offers) [sles15.packagehub_for_dkms:" in capsys.readouterr().out
