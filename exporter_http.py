"""The exporter's HTTP side: endpoints, content negotiation, basic auth and TLS."""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import socket
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client.exposition import ThreadingWSGIServer

from exposition import OPENMETRICS, TEXT
from snapshots import DocumentCollector

log = logging.getLogger("exporter")

StartResponse = Callable[..., Any]
REALM = "tao-metrics-exporter"
INDEX = b"TAO metrics exporter: see /metrics, /healthz and /readyz\n"


@dataclass(frozen=True)
class Credentials:
    """The one user name and password allowed to read /metrics."""

    user: str
    password: str

    def accept(self, header: str) -> bool:
        """Tell whether an Authorization header carries these credentials."""
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, _, password = decoded.partition(b":")
        # Compare both parts every time so timing reveals neither.
        user_ok = hmac.compare_digest(user, self.user.encode("utf-8"))
        password_ok = hmac.compare_digest(password, self.password.encode("utf-8"))
        return user_ok and password_ok


class ExporterApp:
    """A WSGI application serving /metrics, /healthz and /readyz."""

    def __init__(
        self, collector: DocumentCollector, credentials: Credentials | None = None
    ) -> None:
        self.collector = collector
        self.credentials = credentials

    def __call__(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/")
        if method not in ("GET", "HEAD"):
            allow = [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")]
            status = "405 Method Not Allowed"
            return self._reply(start_response, status, b"", method, allow)
        if path == "/healthz":
            return self._reply(start_response, "200 OK", b"ok\n", method)
        if path == "/readyz":
            if self.collector.snapshot().reachable:
                return self._reply(start_response, "200 OK", b"ok\n", method)
            body = b"mongodb unreachable\n"
            return self._reply(start_response, "503 Service Unavailable", body, method)
        if path == "/":
            return self._reply(start_response, "200 OK", INDEX, method)
        if path != "/metrics":
            return self._reply(start_response, "404 Not Found", b"not found\n", method)
        if self.credentials and not self.credentials.accept(
            environ.get("HTTP_AUTHORIZATION", "")
        ):
            headers = [("WWW-Authenticate", f'Basic realm="{REALM}"')]
            body = b"authentication required\n"
            return self._reply(
                start_response, "401 Unauthorized", body, method, headers
            )
        return self._metrics(environ, start_response, method)

    def _metrics(
        self, environ: dict[str, Any], start_response: StartResponse, method: str
    ) -> Iterable[bytes]:
        accept = environ.get("HTTP_ACCEPT", "")
        content_type = OPENMETRICS if "application/openmetrics-text" in accept else TEXT
        compressed = "gzip" in environ.get("HTTP_ACCEPT_ENCODING", "")
        parts = self.collector.snapshot().exposition.body(content_type, compressed)
        headers = [("Content-Type", content_type)]
        if compressed:
            headers.append(("Content-Encoding", "gzip"))
        return self._reply(start_response, "200 OK", parts, method, headers)

    @staticmethod
    def _reply(
        start_response: StartResponse,
        status: str,
        body: bytes | list[bytes],
        method: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> list[bytes]:
        parts = [body] if isinstance(body, bytes) else body
        length = sum(len(part) for part in parts)
        headers = headers or [("Content-Type", "text/plain; charset=utf-8")]
        start_response(status, [*headers, ("Content-Length", str(length))])
        return [] if method == "HEAD" else parts


class _RequestHandler(WSGIRequestHandler):
    """Log requests at debug level and give up on silent clients."""

    timeout = 30

    def setup(self) -> None:
        super().setup()
        if isinstance(self.request, ssl.SSLSocket):
            # The handshake runs here, in the request's own thread, so a
            # slow client never holds up the accepting loop.
            self.request.do_handshake()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("request %s", format % args)


class _Server(ThreadingWSGIServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address[0])


def tls_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """Load a server certificate and key, TLS 1.2 or newer."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    return context


def make_http_server(
    address: str, port: int, app: ExporterApp, tls: ssl.SSLContext | None = None
) -> _Server:
    """Bind the server (IPv4 or IPv6 by the address given), wrapping it in TLS."""

    class Server(_Server):
        address_family = socket.AF_INET6 if ":" in address else socket.AF_INET

    server = make_server(address, port, app, Server, handler_class=_RequestHandler)
    if tls is not None:
        server.socket = tls.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    return server
