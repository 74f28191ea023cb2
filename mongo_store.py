"""Connect to MongoDB and read or write the one TAO metrics document.

Every write is a single update of that document whose new content the server
computes itself (an aggregation-pipeline update), so a telemetry service that
increments other keys at the same moment loses nothing, and keys holding ``.``
or ``$`` are stored verbatim instead of being read as paths or operators.
"""

from __future__ import annotations

import contextlib
import os
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import bson
import bson.errors
import pymongo
from pymongo import ReturnDocument
from pymongo import errors as mongo_errors

from metric_keys import IDENTITY_KEYS

DEFAULT_URI = "mongodb://localhost:27017"
DEFAULT_DB = "metrics"
DEFAULT_COLLECTION = "metrics"
DEFAULT_DOCUMENT_NAME = "metrics"
DEFAULT_TIMEOUT = 5.0
HISTORY_COLLECTION_SUFFIX = "_import_history"
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
# $getField and field names holding "." or "$" in updates arrived in 5.0.
MIN_WRITE_VERSION = (5, 0)
TAO_USER = "default-user"


class StoreError(Exception):
    """A database fault, described in one line without secrets."""


@dataclass(frozen=True)
class Location:
    """Where the metrics document lives."""

    db: str = DEFAULT_DB
    collection: str = DEFAULT_COLLECTION
    document_name: str = DEFAULT_DOCUMENT_NAME

    def describe(self) -> str:
        return f"{self.db}.{self.collection} name={self.document_name!r}"


def resolve_uri(uri: str | None, environ: Mapping[str, str] | None = None) -> str:
    """Pick the connection string: the argument, MONGODB_URI, a TAO pod's, or local."""
    env = os.environ if environ is None else environ
    if uri:
        return uri
    if env.get("MONGODB_URI"):
        return env["MONGODB_URI"]
    if env.get("MONGOSECRET"):
        return tao_pod_uri(env)
    return DEFAULT_URI


def tao_pod_uri(env: Mapping[str, str]) -> str:
    """Build the URI the TAO services use inside their own deployment."""
    password = urllib.parse.quote_plus(env["MONGOSECRET"])
    credentials = f"{TAO_USER}:{password}@"
    if env.get("HOST_PLATFORM", "") == "local-docker":
        return f"mongodb://{credentials}mongodb:27017/?authSource=admin"
    host = f"mongodb-svc.{env.get('NAMESPACE', 'default')}.svc.cluster.local"
    options = "authSource=admin&replicaSet=mongodb"
    if env.get("MONGO_OPERATOR_ENABLED", "").lower() in ("1", "true", "yes"):
        return f"mongodb+srv://{credentials}{host}/?{options}&tls=false"
    return f"mongodb://{credentials}{host}:27017/?{options}"


def redact_uri(uri: str) -> str:
    """Return the URI with any password replaced by ***."""
    return re.sub(r"(://[^:/@]+:)[^@/]*@", r"\1***@", uri)


def uri_password(uri: str) -> str | None:
    """Return the password embedded in a URI, decoded, if there is one."""
    match = re.search(r"://[^:/@]+:([^@/]*)@", uri)
    return urllib.parse.unquote_plus(match.group(1)) if match else None


class MetricsStore:
    """The metrics document of one MongoDB deployment."""

    def __init__(
        self,
        uri: str,
        location: Location = Location(),
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.uri = uri
        self.location = location
        self.timeout = timeout
        self._secrets = [s for s in (uri_password(uri),) if s]
        with self.errors("connecting"):
            try:
                self.client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
                    uri,
                    serverSelectionTimeoutMS=int(timeout * 1000),
                    connectTimeoutMS=int(timeout * 1000),
                    socketTimeoutMS=int(max(timeout, 30) * 1000),
                    w="majority",
                    retryWrites=True,
                    retryReads=True,
                    appname="tao-telemetry-migration",
                    tz_aware=False,
                )
            except OSError as exc:
                # A certificate or key file named in the URI cannot be read.
                raise StoreError(
                    f"connecting: invalid connection settings: {exc.strerror or exc}"
                ) from None
        database = self.client[location.db]
        self.collection = database[location.collection]
        self.history = database[location.collection + HISTORY_COLLECTION_SUFFIX]

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> MetricsStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def selector(self) -> dict[str, str]:
        return {"name": self.location.document_name}

    @contextlib.contextmanager
    def errors(self, action: str) -> Iterator[None]:
        """Turn a driver exception into a one-line StoreError naming the action."""
        try:
            yield
        except (mongo_errors.PyMongoError, bson.errors.InvalidDocument) as exc:
            raise StoreError(self._scrub(f"{action}: {describe_error(exc)}")) from None

    def _scrub(self, text: str) -> str:
        text = redact_uri(text)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def read(self) -> dict[str, Any] | None:
        """Return the metrics document with its exact BSON types, or None."""
        with self.errors(f"reading {self.location.describe()}"):
            return self.collection.find_one(self.selector)

    def read_bytes(self) -> int:
        """Return the BSON size of the stored document, 0 when there is none."""
        document = self.read()
        return len(bson.encode(document)) if document else 0

    def count_other_documents(self) -> int:
        """Count the documents in the collection besides the metrics document."""
        # A second document with the metrics document's name counts too: only
        # one of them is ever read or written.
        with self.errors("counting documents"):
            total = self.collection.count_documents({})
            named = self.collection.count_documents(self.selector)
        return total - min(named, 1)

    def server_version(self) -> tuple[int, ...]:
        with self.errors("asking the server its version"):
            info = self.client.server_info()
        return tuple(int(part) for part in info["versionArray"][:2])

    def check_can_write(self) -> None:
        """Refuse, in one line, a server too old for the atomic write path."""
        version = self.server_version()
        if version < MIN_WRITE_VERSION:
            wanted = ".".join(map(str, MIN_WRITE_VERSION))
            found = ".".join(map(str, version))
            raise StoreError(
                f"MongoDB {found} is too old to import into: the atomic update "
                f"needs {wanted} or newer (export still works)"
            )

    def apply(self, pipeline: list[dict[str, Any]], action: str) -> dict[str, Any]:
        """Run one pipeline update (upserting) and return the document after it."""
        with self.errors(action):
            after = self.collection.find_one_and_update(
                self.selector,
                pipeline,
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        if after is None:
            # An upsert always leaves the document, yet SecantusDB answers
            # with none when two upserts race into a new collection, after
            # applying both: read it rather than report a failed write.
            after = self.read()
        if after is None:
            raise StoreError(f"{action}: the server returned no document")
        return after

    def merge(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Set every given key, keeping the others; return the document after."""
        return self.apply(merge_pipeline(metrics), "merging metrics")

    def add(self, increments: Mapping[str, Any]) -> dict[str, Any]:
        """Add each value to the stored one (absent counts as 0)."""
        return self.apply(sum_pipeline(increments), "adding metrics")

    def replace(self, document: Mapping[str, Any]) -> dict[str, Any]:
        """Make the stored document exactly this one, keeping its _id."""
        pipeline = replace_pipeline(self.location.document_name, document)
        return self.apply(pipeline, "replacing metrics")

    def record_history(self, entry: Mapping[str, Any]) -> None:
        with self.errors("recording the import in the history"):
            self.history.insert_one(dict(entry))

    def claim_history(self, claim_id: str, entry: Mapping[str, Any]) -> bool:
        """Insert an entry under a fixed _id; False if one is there already."""
        with self.errors("recording the import in the history"):
            try:
                self.history.insert_one({"_id": claim_id, **entry})
            except mongo_errors.DuplicateKeyError:
                return False
        return True

    def update_history(self, claim_id: str, entry: Mapping[str, Any]) -> None:
        with self.errors("recording the import in the history"):
            self.history.replace_one({"_id": claim_id}, dict(entry))

    def find_history(self, sha256: str) -> list[dict[str, Any]]:
        with self.errors("reading the import history"):
            query = {"document_name": self.location.document_name, "sha256": sha256}
            return list(self.history.find(query).sort("time", 1))


def merge_pipeline(
    metrics: Mapping[str, Any], computed: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """An update pipeline that overwrites the given keys and keeps the rest.

    A key in computed (a plain field name) gets that expression's value
    instead of its literal one.
    New keys are added in the order of metrics, computed ones included, so a
    document imported into an empty target keeps its key order.
    """
    computed = computed or {}
    parts: list[Any] = ["$$ROOT"]
    chunk: dict[str, Any] = {}
    for key, value in metrics.items():
        if key in computed:
            parts += [{"$literal": chunk}, {key: computed[key]}]
            chunk = {}
        else:
            chunk[key] = value
    parts.append({"$literal": chunk})
    return [{"$replaceWith": {"$mergeObjects": parts}}]


def add_missing_pipeline(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """An update pipeline that adds the given keys only where they are absent."""
    # The stored document comes first to keep its key order and last so that
    # its values win, also for keys another writer added meanwhile.
    merged = ["$$ROOT", {"$literal": dict(metrics)}, "$$ROOT"]
    return [{"$replaceWith": {"$mergeObjects": merged}}]


def replace_pipeline(name: str, document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """An update pipeline that makes the document exactly this one, keeping _id."""
    content = {"name": name}
    content.update((k, v) for k, v in document.items() if k not in IDENTITY_KEYS)
    return [{"$replaceWith": {"$literal": content}}]


def field(key: str) -> dict[str, Any]:
    """An expression reading a top-level field by its literal name."""
    return {"$getField": {"field": {"$literal": key}, "input": "$$ROOT"}}


def sum_pipeline(
    increments: Mapping[str, Any], computed: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """An update pipeline that adds each increment to the stored value.

    Each key in computed is set to the value of its expression, evaluated
    against the document as it was before the update.
    """
    pairs = [
        {"k": {"$literal": key}, "v": {"$add": [{"$ifNull": [field(key), 0]}, value]}}
        for key, value in increments.items()
    ]
    pairs += [{"k": {"$literal": k}, "v": v} for k, v in (computed or {}).items()]
    new_values = {"$arrayToObject": [pairs]}
    return [{"$replaceWith": {"$mergeObjects": ["$$ROOT", new_values]}}]


def describe_error(exc: Exception) -> str:
    """Say in one line what went wrong with the database."""
    text = re.split(r", full error:|, Timeout:| \(configured timeouts", str(exc))[0]
    text = text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, mongo_errors.OperationFailure):
        if exc.code == 18:
            return "authentication failed: check the user name and password"
        if exc.code == 13:
            return f"not authorized: {text}"
        return f"the server refused the operation: {text}"
    if isinstance(exc, mongo_errors.ServerSelectionTimeoutError):
        if re.search(r"SSL|TLS|certificate", text, re.IGNORECASE):
            return f"TLS handshake failed: {text}"
        return f"cannot reach MongoDB: {text}"
    if isinstance(exc, mongo_errors.ConfigurationError | mongo_errors.InvalidURI):
        return f"invalid connection settings: {text}"
    if isinstance(exc, mongo_errors.AutoReconnect | mongo_errors.NetworkTimeout):
        return f"connection to MongoDB lost: {text}"
    if isinstance(exc, mongo_errors.DocumentTooLarge):
        return f"document too large for MongoDB: {text}"
    if isinstance(exc, bson.errors.InvalidDocument):
        return f"a value MongoDB cannot store: {text}"
    return text
