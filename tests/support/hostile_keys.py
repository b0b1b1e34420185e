"""A corpus of key files for the pinned-fingerprint check: the pinned key as a vendor would publish it, and files
that carry it together with something an attacker wants trusted (issue 16, F1).

Every file is made with gpg from two throwaway keys of a `Gpg` home: PINNED (the key the script is generated
with) and ATTACKER. Nothing here is a vendor's key. Each entry says whether the generated script must accept it
(and then store the pinned key alone) or refuse it, with the words of its refusal.
"""

from __future__ import annotations

import shutil
import struct
import time
from dataclasses import dataclass

from tests.support.mirror import Gpg
from tests.support.openpgp import colon_fingerprints

LOOPBACK = ("--pinentry-mode", "loopback", "--passphrase", "")


@dataclass(frozen=True)
class KeyFile:
    name: str
    data: bytes
    pinned: str  # the fingerprint the script is generated with
    refusal: str | None  # the reason the script gives (None: accepted, the pinned key alone is stored)
    carries_attacker: bool  # the attacker's key is in the bytes in a form some verifier may take as a certificate


def _clone(gpg: Gpg) -> Gpg:
    """A copy of a gpg home (keys and revocation certificates), to change keys without touching the original."""
    copy = Gpg()
    for name in ("pubring.kbx", "trustdb.gpg", "gpg.conf"):
        if (gpg.home / name).exists():
            shutil.copy2(gpg.home / name, copy.home / name)
    for folder in ("private-keys-v1.d", "openpgp-revocs.d"):
        if (gpg.home / folder).is_dir():
            shutil.copytree(gpg.home / folder, copy.home / folder, dirs_exist_ok=True)
    return copy


def _created(gpg: Gpg, fingerprint: str) -> int:
    for line in gpg.run("--with-colons", "--list-keys", fingerprint).decode().splitlines():
        if line.startswith("pub:"):
            return int(line.split(":")[5])
    raise RuntimeError(f"no key {fingerprint}")


def _subkey_fingerprint(gpg: Gpg, fingerprint: str) -> str:
    listing = gpg.run("--with-colons", "--with-subkey-fingerprints", "--list-keys", fingerprint).decode()
    subkeys = colon_fingerprints(listing, "sub")
    if not subkeys:
        raise RuntimeError(f"{fingerprint} has no subkey")
    return subkeys[0]


def _packet(tag: int, body: bytes) -> bytes:
    """An OpenPGP packet in the new format (one-octet length: bodies under 192 bytes)."""
    assert len(body) < 192
    return bytes([0xC0 | tag, len(body)]) + body


def _corrupt_checksum(armored: bytes) -> bytes:
    lines = armored.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith(b"=") and len(line.strip()) == 5:
            lines[i] = b"=AAAA\n" if line.strip() != b"=AAAA" else b"=BBBB\n"
            return b"".join(lines)
    raise RuntimeError("no armor checksum line")


def build_corpus(gpg: Gpg, pinned: str, attacker: str) -> list[KeyFile]:
    """The key files, made from PINNED and ATTACKER in `gpg` (which is left unchanged)."""
    pinned_asc = gpg.export(pinned, armor=True)
    pinned_bin = gpg.export(pinned, armor=False)
    attacker_asc = gpg.export(attacker, armor=True)
    attacker_bin = gpg.export(attacker, armor=False)
    attacker_stub = gpg.run(*LOOPBACK, "--armor", "--export-secret-subkeys", attacker)  # GNU-dummy primary
    attacker_stub_bin = gpg.run(*LOOPBACK, "--export-secret-subkeys", attacker)
    attacker_secret = gpg.run(*LOOPBACK, "--armor", "--export-secret-keys", attacker)
    pinned_secret = gpg.run(*LOOPBACK, "--armor", "--export-secret-keys", pinned)
    # A version-6 key packet (RFC 9580, Ed25519): gpg 2.2 and 2.4 stop reading at it.
    v6_key = _packet(6, bytes([6]) + struct.pack(">I", 1700000000) + bytes([27]) + struct.pack(">I", 32) + bytes(32))
    unsigned_uid = _packet(13, b"Attacker <attacker@invalid>")

    work = _clone(gpg)
    try:
        # The attacker certifies the pinned key's user ID: a third-party signature that is no part of the key.
        work.run(*LOOPBACK, "--local-user", attacker, "--quick-sign-key", pinned)
        certified = work.export(pinned, armor=True)
        # An expired signing subkey, as NVIDIA's toolkit key carries one (expired 2021): still the pinned key.
        work.run(
            *LOOPBACK,
            "--faked-system-time",
            str(_created(gpg, pinned) + 1),
            "--quick-add-key",
            pinned,
            "rsa2048",
            "sign",
            "seconds=1",
        )
        time.sleep(2)  # the subkey's one second of life is over
        expired_subkey = work.export(pinned, armor=True)
        # A subkey on the attacker's key: its fingerprint pinned, the primary is another key.
        work.run(*LOOPBACK, "--quick-add-key", attacker, "rsa2048", "sign", "never")
        subkey = _subkey_fingerprint(work, attacker)
        attacker_with_subkey = work.export(attacker, armor=True)
        # The pinned key revoked with the revocation certificate gpg made when it was created.
        revocation = (work.home / "openpgp-revocs.d" / f"{pinned}.rev").read_bytes().replace(b":-----", b"-----")
        work.run("--import", input=revocation)
        revoked = work.export(pinned, armor=True)
        # A key that expired before today.
        expired = work.run(
            *LOOPBACK,
            "--faked-system-time",
            "20200101T000000",
            "--status-fd",
            "1",
            "--quick-gen-key",
            "bakegen EXPIRED key (throwaway test key)",
            "rsa2048",
            "sign",
            "2020-06-01",
        ).decode()
        expired_fpr = next(line.split()[3] for line in expired.splitlines() if "KEY_CREATED" in line)
        expired_key = work.export(expired_fpr, armor=True)
    finally:
        work.close()

    accepted = [
        ("armored", pinned_asc),
        ("binary", pinned_bin),
        ("foreign-certification", certified),
        ("unsigned-extra-user-id", pinned_bin + unsigned_uid),
        ("expired-subkey", expired_subkey),
    ]
    refused = [
        ("secret-stub-appended", pinned_asc + attacker_stub, "it holds secret-key material", True),
        # Binary: the old script's `gpg --dearmor` failed on it and it was stored as downloaded (`cp` fallback).
        ("secret-stub-appended-binary", pinned_bin + attacker_stub_bin, "it holds secret-key material", True),
        ("secret-key-appended", pinned_asc + attacker_secret, "it holds secret-key material", True),
        ("pinned-as-secret-key", pinned_secret, "it holds secret-key material", False),
        ("second-armor-block", pinned_asc + attacker_asc, "it holds 2 primary keys, not one", True),
        ("second-key-binary", pinned_bin + attacker_bin, "it holds 2 primary keys, not one", True),
        ("same-key-twice", pinned_asc + pinned_asc, "it holds 2 primary keys, not one", False),
        ("bad-checksum-block", pinned_asc + _corrupt_checksum(attacker_asc), "gpg cannot read all of it", True),
        ("v6-key-appended", pinned_bin + v6_key, "gpg cannot read all of it", False),
        ("other-key", attacker_asc, f"it has fingerprint {attacker} but {pinned} is pinned", True),
        ("revoked", revoked, f"the key {pinned} is revoked", False),
    ]
    corpus = [KeyFile(name, data, pinned, None, False) for name, data in accepted]
    corpus += [KeyFile(name, data, pinned, why, carries) for name, data, why, carries in refused]
    corpus += [
        KeyFile(
            "pinned-only-as-subkey",
            attacker_with_subkey,
            subkey,
            f"it has fingerprint {attacker} but {subkey} is pinned",
            True,
        ),
        KeyFile("expired", expired_key, expired_fpr, f"the key {expired_fpr} has expired", False),
    ]
    return corpus


def packets(data: bytes) -> str:
    """gpg's --list-packets of a key file: what a stored keyring holds, packet by packet."""
    gpg = Gpg()
    try:
        return gpg.run("--list-packets", input=data).decode()
    finally:
        gpg.close()
