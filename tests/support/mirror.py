"""A local, throwaway-signed HTTPS STAND-IN for https://nvidia.github.io/libnvidia-container.

Layout under the URL base (https://127.0.0.1:PORT/libnvidia-container), as NVIDIA serves it:
  gpgkey                                  ASCII-armored public key of the signing key
  stable/deb/<arch>/                      flat apt repo: .debs, Packages(.gz), Release, InRelease, Release.gpg
  stable/deb/nvidia-container-toolkit.list  the one-line source NVIDIA's guide curls (host of the request)

The packages are built by tests/support/standin/debs.py: the REAL toolkit commands (built from NVIDIA's source by
tests/support/toolkit/) and stand-ins for libnvidia-container. The repository, its key and its TLS certificate are
throwaway stand-ins: nothing here is signed or built by NVIDIA.
Faults for provisioning tests are switched on the running server with `set_mode()`.
"""

from __future__ import annotations

import enum
import gzip
import http.server
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.openpgp import colon_fingerprints
from tests.support.standin.debs import build_debs, load_spec
from tests.support.tls import DEFAULT_SANS, make_server_cert

URL_PREFIX = "/libnvidia-container"
KEY_PATH = f"{URL_PREFIX}/gpgkey"
LIST_PATH = f"{URL_PREFIX}/stable/deb/nvidia-container-toolkit.list"
HTML_PAGE = b"<html>Unsupported distribution!</html>\n"
DEFAULT_KEYRING = "/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg"


def key_fingerprints(key: bytes) -> list[str]:
    """The primary-key fingerprints of an OpenPGP key or keyring (armored or binary), as gpg reads them."""
    with tempfile.TemporaryDirectory(prefix="bakegen-gpg-") as home:
        out = subprocess.run(
            ["gpg", "--homedir", home, "--batch", "--with-colons", "--show-keys"],
            input=key,
            capture_output=True,
            check=True,
        ).stdout.decode()
    return colon_fingerprints(out)


class Mode(enum.StrEnum):
    NORMAL = "normal"
    DOWN = "down"  # listening socket closed: connections are refused
    ERROR_503 = "error503"  # every request answers 503
    HTML = "html"  # every path answers 200 with an HTML page
    WRONG_KEY = "wrong_key"  # gpgkey is a valid key, but not the one that signed the repo
    EMPTY_KEY = "empty_key"  # gpgkey is an empty 200 response
    SLOW = "slow"  # every response is delayed by `delay` seconds


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    status: int
    mode: str
    host: str


class Gpg:
    """gpg in a private GNUPGHOME (short path: the agent's socket lives there)."""

    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="bakegen-gpg-"))
        self.home.chmod(0o700)
        (self.home / "gpg.conf").write_text(
            "personal-digest-preferences SHA512 SHA384 SHA256\n"
            "cert-digest-algo SHA512\n"
            "digest-algo SHA512\n"
            "default-preference-list SHA512 SHA384 SHA256 AES256 AES192 AES ZLIB BZIP2 ZIP "
            "Uncompressed\n"
        )

    def run(self, *args: str, input: bytes | None = None) -> bytes:
        result = subprocess.run(
            ["gpg", "--homedir", str(self.home), "--batch", *args], input=input, capture_output=True
        )
        if result.returncode != 0:
            raise RuntimeError(f"gpg {' '.join(args)} failed: {result.stderr.decode()[-2000:]}")
        return result.stdout

    def generate(self, name: str) -> str:
        """Create an rsa3072 signing key without passphrase; return its 40-hex fingerprint."""
        params = (
            "%no-protection\nKey-Type: RSA\nKey-Length: 3072\nKey-Usage: sign,cert\n"
            f"Name-Real: {name}\nName-Email: bakegen-tests@invalid\n"
            "Expire-Date: 0\n%commit\n"
        )
        status = self.run("--status-fd", "1", "--gen-key", input=params.encode()).decode()
        for line in status.splitlines():
            if line.startswith("[GNUPG:] KEY_CREATED"):
                return line.split()[3]
        raise RuntimeError(f"gpg did not report a created key: {status}")

    def export(self, fingerprint: str, *, armor: bool) -> bytes:
        return self.run(*(["--armor"] if armor else []), "--export", fingerprint)

    def sign(self, fingerprint: str, source: Path, target: Path, *, clear: bool) -> None:
        mode = "--clearsign" if clear else "--detach-sign"
        self.run("--yes", "--local-user", fingerprint, "--armor", mode, "--output", str(target), str(source))

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"], capture_output=True)
        shutil.rmtree(self.home, ignore_errors=True)


def sign_release(repo: Path, gpg: Gpg, fingerprint: str) -> None:
    """(Re)sign one flat apt repository's Release as InRelease and Release.gpg."""
    gpg.sign(fingerprint, repo / "Release", repo / "InRelease", clear=True)
    gpg.sign(fingerprint, repo / "Release", repo / "Release.gpg", clear=False)


def build_repository(www: Path, debs: list[Path], gpg: Gpg, fingerprint: str) -> list[str]:
    """Lay out one flat, signed repo per architecture under www/libnvidia-container."""
    arches = sorted({deb.stem.rsplit("_", 1)[1] for deb in debs})
    for arch in arches:
        repo = www / URL_PREFIX.strip("/") / "stable" / "deb" / arch
        repo.mkdir(parents=True, exist_ok=True)
        for deb in debs:
            if deb.stem.endswith(f"_{arch}"):
                shutil.copy2(deb, repo / deb.name)
        packages = subprocess.run(["apt-ftparchive", "packages", "."], cwd=repo, check=True, capture_output=True).stdout
        (repo / "Packages").write_bytes(packages)
        with gzip.GzipFile(repo / "Packages.gz", "wb", mtime=0) as gz:
            gz.write(packages)
        release = subprocess.run(
            [
                "apt-ftparchive",
                "-o",
                "APT::FTPArchive::Release::Origin=bakegen STAND-IN for nvidia.github.io/libnvidia-container",
                "-o",
                "APT::FTPArchive::Release::Label=STAND-IN libnvidia-container (not NVIDIA)",
                "-o",
                f"APT::FTPArchive::Release::Architectures={arch}",
                "release",
                ".",
            ],
            cwd=repo,
            check=True,
            capture_output=True,
        ).stdout
        (repo / "Release").write_bytes(release)
        sign_release(repo, gpg, fingerprint)
    return arches


class _State:
    """What the handler threads read: mode, delay, keys, request log."""

    def __init__(self, good_key: bytes, wrong_key: bytes) -> None:
        self.lock = threading.Lock()
        self.mode = Mode.NORMAL
        self.delay = 3.0
        self.good_key = good_key
        self.wrong_key = wrong_key
        self.served_key: bytes | None = None  # set_key(): these bytes at gpgkey, whatever the mode
        self.requests: list[Request] = []
        self.errors: list[str] = []  # failed connections (TLS handshake refused, client gone)


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: _Server
    timeout = 60

    def setup(self) -> None:
        super().setup()
        self.request.do_handshake()  # in this thread, so a slow client blocks no one else

    def finish(self) -> None:
        super().finish()
        # Send TLS close_notify before closing: OpenSSL 3 clients (trixie's apt) treat a bare
        # TCP close as "unexpected eof while reading" and fail the download.
        try:
            self.request.settimeout(2.0)
            self.request.unwrap()
        except (OSError, ValueError):
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        state = self.server.state
        status = int(code) if isinstance(code, int) else 0
        with state.lock:
            state.requests.append(
                Request(
                    self.command, self.path.split("?", 1)[0], status, state.mode.value, self.headers.get("Host", "")
                )
            )

    def _send_bytes(self, body: bytes, content_type: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _special(self) -> bool:
        state = self.server.state
        with state.lock:
            mode, delay = state.mode, state.delay
        if mode is Mode.SLOW:
            time.sleep(delay)
        path = self.path.split("?", 1)[0]
        with state.lock:
            served_key = state.served_key
        if path == KEY_PATH and served_key is not None and mode is not Mode.ERROR_503:
            self._send_bytes(served_key, "application/octet-stream")
        elif mode is Mode.ERROR_503:
            self.send_error(503, "Service Unavailable (stand-in fault)")
        elif mode is Mode.HTML:
            self._send_bytes(HTML_PAGE, "text/html")
        elif path == KEY_PATH and mode is Mode.WRONG_KEY:
            self._send_bytes(state.wrong_key, "application/octet-stream")
        elif path == KEY_PATH and mode is Mode.EMPTY_KEY:
            self._send_bytes(b"", "application/octet-stream")
        elif path == LIST_PATH:
            host = self.headers.get("Host", "127.0.0.1")
            base = f"https://{host}{URL_PREFIX}"
            self._send_bytes(
                f"deb {base}/stable/deb/$(ARCH) /\n#deb {base}/experimental/deb/$(ARCH) /\n".encode(), "text/plain"
            )
        else:
            return False
        return True

    def do_GET(self) -> None:
        if not self._special():
            super().do_GET()

    def do_HEAD(self) -> None:
        if not self._special():
            super().do_HEAD()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, www: Path, context: ssl.SSLContext, state: _State) -> None:
        self.context = context
        self.state = state

        def handler(*args: Any) -> _Handler:
            return _Handler(*args, directory=str(www))

        super().__init__(("127.0.0.1", port), handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that reject the certificate or hang up are expected in fault tests: record them
        # instead of printing a traceback into the test output.
        error = sys.exc_info()[1]
        with self.state.lock:
            self.state.errors.append(f"{client_address}: {error!r}")


class Mirror:
    """The running stand-in repository. Use `Mirror.start(workdir)` or `with Mirror.start(...)`."""

    def __init__(self, workdir: Path, *, port: int = 0, sans: tuple[str, ...] = DEFAULT_SANS) -> None:
        started = time.monotonic()
        self.workdir = workdir
        self.www = workdir / "www"
        for ours in (self.www, workdir / "debs", workdir / "tls"):
            shutil.rmtree(ours, ignore_errors=True)  # a reused workdir starts clean
        # Kept until stop(): tests that play an attacker sign with the WRONG key and build hostile key files.
        self.gpg = gpg = Gpg()
        try:
            self.fingerprint = gpg.generate(
                "bakegen STAND-IN container-toolkit repo key (throwaway test key, not NVIDIA)"
            )
            self.wrong_fingerprint = gpg.generate("bakegen WRONG key (throwaway test key)")
            armored = gpg.export(self.fingerprint, armor=True)
            wrong_armored = gpg.export(self.wrong_fingerprint, armor=True)
            self.keyring = workdir / "keyring.gpg"
            self.keyring.write_bytes(gpg.export(self.fingerprint, armor=False))
            self.debs = build_debs(workdir / "debs")
            self.architectures = build_repository(self.www, self.debs, gpg, self.fingerprint)
        except BaseException:
            gpg.close()
            raise
        self.signer = self.fingerprint
        self.key_asc = workdir / "gpgkey.asc"
        self.key_asc.write_bytes(armored)
        self.versions = load_spec().versions
        key_file = self.www / KEY_PATH.lstrip("/")
        key_file.write_bytes(armored)
        self.cert = make_server_cert(workdir / "tls", sans)
        self.ca_pem = self.cert.ca_pem
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(self.cert.cert_pem, self.cert.key_pem)
        self._state = _State(armored, wrong_armored)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = port
        self._serve()
        self.build_seconds = time.monotonic() - started

    @classmethod
    def start(cls, workdir: Path, *, port: int = 0, sans: tuple[str, ...] = DEFAULT_SANS) -> Mirror:
        workdir.mkdir(parents=True, exist_ok=True)
        return cls(workdir, port=port, sans=sans)

    def _serve(self) -> None:
        self._server = _Server(self.port, self.www, self._context, self._state)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"standin-mirror-{self.port}", daemon=True
        )
        self._thread.start()

    def _halt(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    @property
    def base_url(self) -> str:
        """https://127.0.0.1:PORT/libnvidia-container"""
        return self.base_url_for("127.0.0.1")

    def base_url_for(self, host: str) -> str:
        """The URL base as seen from elsewhere, e.g. 10.0.2.2 from a QEMU guest."""
        return f"https://{host}:{self.port}{URL_PREFIX}"

    @property
    def key_url(self) -> str:
        return f"{self.base_url}/gpgkey"

    def apt_source(self, keyring: str = DEFAULT_KEYRING, arch: str = "amd64", host: str = "127.0.0.1") -> str:
        """The one-line apt source NVIDIA documents, pointing here."""
        return f"deb [signed-by={keyring}] {self.base_url_for(host)}/stable/deb/{arch} /"

    @property
    def mode(self) -> Mode:
        with self._state.lock:
            return self._state.mode

    def set_mode(self, mode: Mode | str, *, delay: float | None = None) -> None:
        """Switch the fault mode of the running server (`delay` is for Mode.SLOW)."""
        new = Mode(mode)
        with self._state.lock:
            old = self._state.mode
            self._state.mode = new
            if delay is not None:
                self._state.delay = delay
        if new is Mode.DOWN and old is not Mode.DOWN:
            self._halt()
        elif new is not Mode.DOWN and old is Mode.DOWN:
            self._serve()

    def set_key(self, key: bytes | None) -> None:
        """Serve these bytes as the repository key (None: the mode's key again)."""
        with self._state.lock:
            self._state.served_key = key

    def sign_with(self, fingerprint: str) -> None:
        """Re-sign every architecture's Release with another key of `self.gpg` (the attacker's, in tests)."""
        if fingerprint == self.signer:
            return
        for arch in self.architectures:
            sign_release(self.www / URL_PREFIX.strip("/") / "stable" / "deb" / arch, self.gpg, fingerprint)
        self.signer = fingerprint

    def reset(self) -> None:
        """Normal mode, the real key served, the repository signed by it, an empty request log."""
        self.set_mode(Mode.NORMAL)
        self.set_key(None)
        self.sign_with(self.fingerprint)
        self.clear_requests()

    @property
    def requests(self) -> list[Request]:
        with self._state.lock:
            return list(self._state.requests)

    @property
    def errors(self) -> list[str]:
        """Connections that failed server-side, e.g. a client that did not trust the CA."""
        with self._state.lock:
            return list(self._state.errors)

    def clear_requests(self) -> None:
        """Empty the request log (and the error log)."""
        with self._state.lock:
            self._state.requests.clear()
            self._state.errors.clear()

    def downloads(self) -> list[str]:
        """Paths answered 200 to a GET (a 304 or a HEAD is not a download)."""
        return [r.path for r in self.requests if r.method == "GET" and r.status == 200]

    def client_ssl_context(self) -> ssl.SSLContext:
        """An SSL context for host-side clients (urllib) that trusts the mirror's CA."""
        return ssl.create_default_context(cafile=str(self.ca_pem))

    def stop(self) -> None:
        self._halt()
        self.gpg.close()

    def __enter__(self) -> Mirror:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
