"""A throwaway CA and server certificate for the stand-in mirror (made with the openssl CLI)."""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# 127.0.0.1 for the host and chroots, 10.0.2.2 for QEMU user-mode guests, localhost by name.
DEFAULT_SANS: tuple[str, ...] = ("127.0.0.1", "10.0.2.2", "localhost")


@dataclass(frozen=True)
class ServerCert:
    ca_pem: Path
    cert_pem: Path
    key_pem: Path
    sans: tuple[str, ...]


def _san_entry(name: str) -> str:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return f"DNS:{name}"
    return f"IP:{name}"


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def make_server_cert(directory: Path, sans: Sequence[str] = DEFAULT_SANS, days: int = 30) -> ServerCert:
    """Write ca.pem/ca.key and server.pem/server.key (EC P-256) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_pem = directory / "ca.key", directory / "ca.pem"
    key, csr, pem = directory / "server.key", directory / "server.csr", directory / "server.pem"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca_pem),
        "-days",
        str(days),
        "-subj",
        "/O=bakegen tests/CN=bakegen throwaway test CA (stand-in mirror)",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    _openssl(
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        "/O=bakegen tests/CN=localhost",
    )
    ext = directory / "server.ext"
    ext.write_text(
        f"subjectAltName={','.join(_san_entry(s) for s in sans)}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca_pem),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        str(days),
        "-sha256",
        "-extfile",
        str(ext),
        "-out",
        str(pem),
    )
    return ServerCert(ca_pem=ca_pem, cert_pem=pem, key_pem=key, sans=tuple(sans))
