"""Reading gpg's machine-readable listings (`--with-colons`): the one parser of fingerprints in the tests."""

from __future__ import annotations

import itertools


def colon_fingerprints(listing: str, record: str = "pub") -> list[str]:
    """The fingerprints of the `record` keys (pub: primary keys, sub: subkeys) in a `--with-colons` listing, in
    order: gpg prints each key's `fpr:` line right after the key's own line (field 10 holds the fingerprint)."""
    return [
        line.split(":")[9]
        for prev, line in itertools.pairwise(listing.splitlines())
        if prev.startswith(f"{record}:") and line.startswith("fpr:")
    ]
