"""What every command-line script shares: connection options and exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import TypeVar

import mongo_store
from import_plan import InvalidInput
from metrics_file import FileError
from mongo_store import Location, MetricsStore, StoreError

__version__ = "1.0.0"
log = logging.getLogger("cli_support")
T = TypeVar("T")


class UsageError(Exception):
    """A request that cannot be carried out as given."""


# Errors a user can cause; each ends the script with one line and status 1.
EXPECTED_ERRORS = (FileError, InvalidInput, StoreError, UsageError)


def env_default(name: str, default: str | None) -> str | None:
    return os.environ.get(name) or default


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """Add --uri, --db, --collection, --document-name and --timeout."""
    group = parser.add_argument_group("MongoDB connection")
    group.add_argument(
        "--uri",
        help="connection string (env MONGODB_URI; without it, when MONGOSECRET is "
        "set, the TAO pod's URI is built from MONGOSECRET, NAMESPACE, HOST_PLATFORM "
        f"and MONGO_OPERATOR_ENABLED; default {mongo_store.DEFAULT_URI})",
    )
    group.add_argument(
        "--db",
        default=env_default("MONGODB_DB", mongo_store.DEFAULT_DB),
        help="database (env MONGODB_DB; default %(default)s)",
    )
    group.add_argument(
        "--collection",
        default=env_default("MONGODB_COLLECTION", mongo_store.DEFAULT_COLLECTION),
        help="collection (env MONGODB_COLLECTION; default %(default)s)",
    )
    group.add_argument(
        "--document-name",
        default=env_default("MONGODB_DOCUMENT_NAME", mongo_store.DEFAULT_DOCUMENT_NAME),
        help="value of the document's name field (env MONGODB_DOCUMENT_NAME; "
        "default %(default)s)",
    )
    group.add_argument(
        "--timeout",
        type=positive_float,
        default=env_default("MONGODB_TIMEOUT", str(mongo_store.DEFAULT_TIMEOUT)),
        help="seconds to wait for the server (env MONGODB_TIMEOUT; default "
        "%(default)s)",
    )


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0: {text!r}")
    return value


def open_store(args: argparse.Namespace) -> MetricsStore:
    """Open the metrics document named by the connection options."""
    location = Location(args.db, args.collection, args.document_name)
    timeout = float(args.timeout)
    if args.uri and mongo_store.uri_password(args.uri):
        # Any local user can read a process's arguments, not its environment.
        log.warning(
            "the password in --uri is visible to other users in the process "
            "list; pass the URI in MONGODB_URI instead"
        )
    return MetricsStore(mongo_store.resolve_uri(args.uri), location, timeout)


def run(action: Callable[[T], int], argument: T) -> int:
    """Call action, turning an expected error into one line on stderr and status 1."""
    try:
        return action(argument)
    except EXPECTED_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
