"""The pinned-fingerprint check against hostile key files (issue 16, F1), with the generated script's own code.

The functions are those of the generated debian12 (apt: binary keyring) and rhel9 (rpm: armored key) scripts,
sourced without running `main`, and the real gpg of this machine. Every file of tests/support/hostile_keys.py
is either refused with its reason, or accepted with gpg's minimal export of the pinned key alone stored: no second
primary key, no secret material, no signature or user ID the pinned key did not make. The same corpus meets the
real verifiers (apt with sqv and gpgv in Debian root filesystems, dnf) in tests/test_key_verification_e2e.py.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import canonical_key, render_script, script_functions
from tests.support.hostile_keys import KeyFile, build_corpus, packets
from tests.support.mirror import Gpg, key_fingerprints
from tests.test_policy import _repo_add_calls

FORMS = {"apt": ("debian12", 0), "rpm": ("rhel9", 1)}  # distribution, ARMOR argument of canonical_key


@pytest.fixture(scope="module")
def corpus() -> Iterator[list[KeyFile]]:
    gpg = Gpg()
    try:
        pinned = gpg.generate("bakegen PINNED key (throwaway test key)")
        attacker = gpg.generate("bakegen ATTACKER key (throwaway test key)")
        yield build_corpus(gpg, pinned, attacker)
    finally:
        gpg.close()


CASE_NAMES = [
    "armored", "binary", "foreign-certification", "unsigned-extra-user-id", "expired-subkey",
    "secret-stub-appended", "secret-stub-appended-binary", "secret-key-appended", "pinned-as-secret-key",
    "second-armor-block", "second-key-binary", "same-key-twice", "bad-checksum-block", "v6-key-appended",
    "other-key", "revoked", "pinned-only-as-subkey", "expired",
]  # fmt: skip


def test_corpus_names_are_the_tested_ones(corpus: list[KeyFile]) -> None:
    assert [k.name for k in corpus] == CASE_NAMES


def signer_key_ids(listing: str) -> set[str]:
    return set(re.findall(r"^:signature packet: algo \d+, keyid ([0-9A-F]{16})", listing, re.M))


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("name", CASE_NAMES)
def test_key_file_is_refused_or_stored_as_the_pinned_key_alone(
    name: str, form: str, corpus: list[KeyFile], tmp_path: Path
) -> None:
    case = next(k for k in corpus if k.name == name)
    distro, armor = FORMS[form]
    key = tmp_path / "downloaded-key"
    key.write_bytes(case.data)
    out = tmp_path / "stored-key"
    rc, reason = canonical_key(script_functions(distro, tmp_path), key, case.pinned, armor, out)
    if case.refusal is not None:
        assert (rc, reason) == (1, case.refusal)
        return
    assert (rc, reason) == (0, "")
    stored = out.read_bytes()
    assert stored.startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----") == bool(armor)
    assert key_fingerprints(stored) == [case.pinned]
    listing = packets(stored)
    assert listing.count(":public key packet:") == 1
    assert ":secret" not in listing
    assert "Attacker" not in listing
    # Only the pinned key's own signatures (self-signatures and subkey bindings) are kept.
    assert signer_key_ids(listing) == {case.pinned[-16:]}
    # And what is stored passes the same check unchanged: a rerun keeps it and downloads nothing.
    again = tmp_path / "stored-again"
    assert canonical_key(script_functions(distro, tmp_path), out, case.pinned, armor, again) == (0, "")
    assert again.read_bytes() == stored


def test_a_key_without_a_verified_fingerprint_is_refused_before_it_is_downloaded(tmp_path: Path) -> None:
    """fedora43's CUDA key has no fingerprint that evidence shows (distros/fedora43.yaml: UNVERIFIED): the script
    refuses it, downloading nothing, until it is generated with --key-fingerprint cuda=..."""
    script = render_script("fedora43")
    assert [call[5] for call in _repo_add_calls(script) if call[1] == "cuda"] == ["UNVERIFIED"]
    functions = script_functions("fedora43", tmp_path)
    driver = (
        'source "$1"; TMP_DIR=$(mktemp -d); LOG_FILE=/dev/null; '
        'curl() { echo "curl must not run" >&2; exit 99; }; '
        "install_key https://developer.download.nvidia.com/compute/cuda/repos/fedora43/x86_64/1940C73E.pub "
        'UNVERIFIED "$2" 1'
    )
    result = subprocess.run(
        ["bash", "-c", driver, "unverified", str(functions), str(tmp_path / "key")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 4, result.stderr
    assert "knows no verified fingerprint" in result.stderr and "--key-fingerprint NAME=" in result.stderr
    assert not (tmp_path / "key").exists()
    pinned = render_script("fedora43", fingerprints={"cuda": "0" * 40})
    assert [call[5] for call in _repo_add_calls(pinned) if call[1] == "cuda"] == ["0" * 40]
