"""Serve the TAO metrics document to Prometheus at /metrics."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import ssl
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry

import cli_support
from cli_support import UsageError, env_default, positive_float
from exporter_http import Credentials, ExporterApp, make_http_server, tls_context
from snapshots import DocumentCollector

log = logging.getLogger("exporter")

DEFAULT_PORT = 9877
DEFAULT_CACHE_SECONDS = 5.0
# Well inside Prometheus' default 10 s scrape timeout.
DEFAULT_MONGODB_TIMEOUT = 3.0


def port_number(text: str) -> int:
    """Read a TCP port number for argparse."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0-65535: {port}")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tao-metrics-exporter",
        description="Serve the TAO metrics document to Prometheus: flat keys as "
        "gauges, labeled keys typed by name, and the exporter's own health.",
    )
    parser.add_argument(
        "--listen-address",
        default=env_default("EXPORTER_LISTEN_ADDRESS", "0.0.0.0"),
        help="address to listen on (env EXPORTER_LISTEN_ADDRESS; default %(default)s)",
    )
    parser.add_argument(
        "--port",
        type=port_number,
        default=env_default("EXPORTER_PORT", str(DEFAULT_PORT)),
        help="port to listen on (env EXPORTER_PORT; default %(default)s)",
    )
    parser.add_argument(
        "--cache-seconds",
        type=positive_float,
        default=env_default(
            "EXPORTER_CACHE_SECONDS",
            env_default("POLLING_INTERVAL_SECONDS", str(DEFAULT_CACHE_SECONDS)),
        ),
        help="seconds a read of the document serves scrapes before the next "
        "read (env EXPORTER_CACHE_SECONDS or POLLING_INTERVAL_SECONDS; default "
        "%(default)s)",
    )
    parser.add_argument(
        "--tls-cert",
        default=env_default("EXPORTER_TLS_CERT", None),
        help="PEM certificate to serve HTTPS with (env EXPORTER_TLS_CERT)",
    )
    parser.add_argument(
        "--tls-key",
        default=env_default("EXPORTER_TLS_KEY", None),
        help="PEM private key of --tls-cert (env EXPORTER_TLS_KEY)",
    )
    parser.add_argument(
        "--basic-auth-file",
        default=env_default("EXPORTER_BASIC_AUTH_FILE", None),
        help="file holding one line USER:PASSWORD required on /metrics (env "
        "EXPORTER_BASIC_AUTH_FILE; or set EXPORTER_BASIC_AUTH_USER and "
        "EXPORTER_BASIC_AUTH_PASSWORD)",
    )
    parser.add_argument(
        "--log-level",
        default=env_default("LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        type=str.lower,
        help="logging level (env LOG_LEVEL; default %(default)s)",
    )
    cli_support.add_connection_options(parser)
    parser.set_defaults(
        timeout=env_default("MONGODB_TIMEOUT", str(DEFAULT_MONGODB_TIMEOUT))
    )
    cli_support.add_version(parser)
    return parser


def load_credentials(path: str | None) -> Credentials | None:
    """Read basic-auth credentials from a file or the environment, if any."""
    if path:
        try:
            line = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            message = f"cannot read --basic-auth-file {path}: {exc.strerror}"
            raise UsageError(message) from None
        user, colon, password = line.partition(":")
        if not colon or not user or not password or "\n" in line:
            raise UsageError(
                f"--basic-auth-file {path} must hold one line USER:PASSWORD"
            )
        return Credentials(user, password)
    user = os.environ.get("EXPORTER_BASIC_AUTH_USER", "")
    password = os.environ.get("EXPORTER_BASIC_AUTH_PASSWORD", "")
    if bool(user) != bool(password):
        raise UsageError(
            "set both EXPORTER_BASIC_AUTH_USER and EXPORTER_BASIC_AUTH_PASSWORD, "
            "or neither"
        )
    return Credentials(user, password) if user else None


def load_tls(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if not cert and not key:
        return None
    if not cert or not key:
        raise UsageError("--tls-cert and --tls-key go together; give both or neither")
    try:
        return tls_context(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load the TLS certificate or key: {exc}") from None


def serve(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    cli_support.setup_logging(args.log_level)
    credentials = load_credentials(args.basic_auth_file)
    tls = load_tls(args.tls_cert, args.tls_key)
    collector = DocumentCollector(
        lambda: cli_support.open_store(args), args.cache_seconds, float(args.timeout)
    )
    # The registry serves prometheus_client's own tools (generate_latest);
    # /metrics sends the collector's pre-rendered bodies, which is faster.
    registry = CollectorRegistry()
    registry.register(collector)
    server = listen(args, ExporterApp(collector, credentials), tls)
    stopping = stop_on_signals()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # Read once now so the first scrape finds the response ready.
    threading.Thread(target=collector.snapshot, daemon=True).start()
    log.info(
        "serving %s://%s:%d/metrics (cache %gs, mongodb timeout %gs%s)",
        "https" if tls else "http",
        args.listen_address,
        server.server_port,
        args.cache_seconds,
        float(args.timeout),
        ", basic auth" if credentials else "",
    )
    while not stopping.wait(3600):
        pass
    server.shutdown()
    server.server_close()
    collector.close()
    log.info("stopped")
    return 0


def listen(
    args: argparse.Namespace, app: ExporterApp, tls: ssl.SSLContext | None
) -> WSGIServer:
    try:
        return make_http_server(args.listen_address, args.port, app, tls)
    except OSError as exc:
        raise UsageError(
            f"cannot listen on {args.listen_address}:{args.port}: {exc.strerror}"
        ) from None


def stop_on_signals() -> threading.Event:
    """Return an event that SIGTERM or SIGINT sets."""
    stopping = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        log.info("stopping on %s", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return stopping


def main(argv: Sequence[str] | None = None) -> int:
    return cli_support.run(serve, argv)


if __name__ == "__main__":
    sys.exit(main())
