"""A plain local HTTPS server for a folder (throwaway CA), with a log of what was asked of it.

For tests that serve files as they are: the rpm stand-in repositories (tests/support/rpmhost.py) and the bootstrap
form's published script (tests/test_user_data_clouds.py). The toolkit's apt mirror, with its faults and its own
package builds, is tests/support/mirror.py.
"""

from __future__ import annotations

import http.server
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.tls import make_server_cert


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    status: int


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        status = code.value if isinstance(code, http.HTTPStatus) else int(code) if str(code).isdigit() else 0
        with self.server.lock:
            self.server.log.append(Request(self.command, self.path, status))


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, www: Path, context: ssl.SSLContext) -> None:
        self.lock = threading.Lock()
        self.log: list[Request] = []

        def handler(*args: Any) -> _Handler:
            return _Handler(*args, directory=str(www))

        super().__init__(("127.0.0.1", 0), handler)
        self.socket = context.wrap_socket(self.socket, server_side=True)


class StaticHttps:
    """Serves `www` at https://127.0.0.1:PORT/ until closed; `ca_pem` is the CA a client must trust."""

    def __init__(self, workdir: Path) -> None:
        self.www = workdir / "www"
        self.www.mkdir(parents=True, exist_ok=True)
        cert = make_server_cert(workdir / "tls")
        self.ca_pem = cert.ca_pem
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert.cert_pem, cert.key_pem)
        self._server = _Server(self.www, context)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    @property
    def requests(self) -> list[Request]:
        with self._server.lock:
            return list(self._server.log)

    def clear_requests(self) -> None:
        with self._server.lock:
            self._server.log.clear()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> StaticHttps:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
