"""Read the metrics document at most once per cache period and keep the response.

Every scrape inside the cache period gets the same rendered bytes, so several
Prometheus replicas cost one MongoDB read between them.  When a read fails,
only the exporter's own metrics are served: nothing older than the cache
period is ever published as if it were current.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import bson
import pymongo
from bson.raw_bson import RawBSONDocument
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

import collector
import exposition
from collector import GAUGE, Build, Builder, Family
from exposition import Exposition
from mongo_store import MAX_DOCUMENT_BYTES, MetricsStore, StoreError
from timestamps import unix_time

log = logging.getLogger("exporter")

PREFIX = "tao_exporter_"
UP = PREFIX + "mongodb_up"
READ_DURATION = PREFIX + "read_duration_seconds"
SERIES = PREFIX + "series"
KEYS_SKIPPED = PREFIX + "keys_skipped"
DOCUMENT_SIZE = PREFIX + "document_size_bytes"
DOCUMENT_MAX = PREFIX + "document_max_bytes"
LAST_UPDATED = PREFIX + "last_updated_timestamp_seconds"

SELF_METRICS = {
    UP: "1 if the latest read of the metrics document succeeded, else 0",
    READ_DURATION: "Seconds the latest read of the metrics document took",
    SERIES: "Stored metric series served in this response",
    KEYS_SKIPPED: "Keys of the metrics document not served, by reason",
    DOCUMENT_SIZE: "BSON size of the metrics document in bytes",
    DOCUMENT_MAX: "Largest BSON document MongoDB stores, in bytes",
    LAST_UPDATED: "The document's last_updated field as a Unix timestamp",
}


@dataclass(frozen=True)
class Read:
    """The outcome of one attempt to read the document: its BSON, or an error."""

    raw: bytes | None
    duration: float
    error: str | None = None

    @property
    def size(self) -> int:
        return len(self.raw) if self.raw else 0


def read_document(store: MetricsStore, timeout: float) -> Read:
    """Read the document as BSON bytes, bounded by timeout in all."""
    raw_options = store.collection.codec_options.with_options(
        document_class=RawBSONDocument
    )
    raw_collection = store.collection.with_options(codec_options=raw_options)
    started = time.perf_counter()
    try:
        with store.errors(f"reading {store.location.describe()}"):
            with pymongo.timeout(timeout):
                found = raw_collection.find_one(store.selector)
    except StoreError as exc:
        return Read(None, time.perf_counter() - started, str(exc))
    raw = found.raw if found is not None else None
    return Read(raw, time.perf_counter() - started)


def gauge(name: str, value: float | int, labels: str = "") -> Family:
    text = collector.format_value(value)
    return Family(name, GAUGE, SELF_METRICS[name], [f"{name}{labels} {text}\n"])


def self_families(
    read: Read, build: Build | None, last_updated: float | None
) -> list[Family]:
    """Describe the read itself; document figures only when the read succeeded."""
    families = [
        gauge(UP, 0 if read.error else 1),
        gauge(READ_DURATION, round(read.duration, 6)),
        gauge(SERIES, build.series if build else 0),
        gauge(DOCUMENT_MAX, MAX_DOCUMENT_BYTES),
    ]
    if read.error:
        return families
    skipped = Family(KEYS_SKIPPED, GAUGE, SELF_METRICS[KEYS_SKIPPED])
    counts = build.skipped_by_reason() if build else {}
    for reason in collector.SKIP_REASONS:
        count = counts.get(reason, 0)
        skipped.lines.append(f'{KEYS_SKIPPED}{{reason="{reason}"}} {count}\n')
    families += [skipped, gauge(DOCUMENT_SIZE, read.size)]
    if last_updated is not None:
        families.append(gauge(LAST_UPDATED, last_updated))
    return families


@dataclass
class Snapshot:
    """What one read produced: the families and the response bodies."""

    read: Read
    own: list[Family]
    build: Build | None
    exposition: Exposition
    taken_at: float

    @property
    def reachable(self) -> bool:
        return self.read.error is None

    @property
    def families(self) -> list[Family]:
        return (self.build.families if self.build else []) + self.own


class DocumentCollector(Collector):
    """A collector that serves the metrics document as it is, cached briefly."""

    def __init__(
        self,
        open_store: Callable[[], MetricsStore],
        cache_seconds: float,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._open_store = open_store
        self._store: MetricsStore | None = None
        self.cache_seconds = cache_seconds
        self.timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._builder = Builder(SELF_METRICS)
        # The BSON of the last document built, its build and last_updated.
        self._built: tuple[bytes, Build, float | None] | None = None
        self._logged_skips: dict[str, str] = {}
        self._state: str | None = None

    def describe(self) -> list[Metric]:
        """Name the exporter's own metrics without reading MongoDB."""
        return [Metric(name, text, "gauge") for name, text in SELF_METRICS.items()]

    def collect(self) -> Iterator[Metric]:
        yield from exposition.to_metrics(self.snapshot().families)

    def snapshot(self) -> Snapshot:
        """Return the response for now: cached, or built from a fresh read."""
        with self._lock:
            current = self._snapshot
            if current and self._clock() - current.taken_at < self.cache_seconds:
                return current
            self._snapshot = self._refresh()
            return self._snapshot

    def expire(self) -> None:
        """Forget the cached response so the next scrape reads again."""
        with self._lock:
            self._snapshot = None

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    def _refresh(self) -> Snapshot:
        read = self._read()
        self._note_reachability(read)
        build, last_updated = None, None
        if read.error is None:
            try:
                build, last_updated = self._build(read.raw)
            except Exception:
                # A fault here is a bug, not bad data; keep serving the
                # exporter's own metrics instead of failing every scrape.
                log.exception("building the exposition failed")
        own = self_families(read, build, last_updated)
        bodies = Exposition(own, build)
        return Snapshot(read, own, build, bodies, self._clock())

    def _build(self, raw: bytes | None) -> tuple[Build, float | None]:
        """Build the families of a document, reusing the last build if unchanged."""
        if raw is None:
            return Build([], []), None
        if self._built is not None and self._built[0] == raw:
            return self._built[1], self._built[2]
        assert self._store is not None
        options = self._store.collection.codec_options
        document = bson.decode(raw, codec_options=options)
        build = self._builder.build(document)
        last_updated = unix_time(document.get("last_updated"))
        self._log_new_skips(build)
        self._built = (raw, build, last_updated)
        return build, last_updated

    def _read(self) -> Read:
        if self._store is None:
            try:
                self._store = self._open_store()
            except StoreError as exc:
                return Read(None, 0.0, str(exc))
        return read_document(self._store, self.timeout)

    def _note_reachability(self, read: Read) -> None:
        """Log a change of state once: unreachable, no document, or serving."""
        if read.error:
            state = read.error
        else:
            state = "serving" if read.raw is not None else "no document"
        if state == self._state:
            return
        if read.error:
            log.warning("mongodb unreachable: %s", read.error)
        elif read.raw is None:
            log.warning("no metrics document found; serving only own metrics")
        elif self._state is not None:
            log.info("mongodb reachable and metrics document found")
        self._state = state

    def _log_new_skips(self, build: Build) -> None:
        current = {item.key: item.detail for item in build.skipped}
        for item in build.skipped:
            if self._logged_skips.get(item.key) != item.detail:
                log.warning(
                    "skipping key %r (%s): %s", item.key, item.reason, item.detail
                )
        self._logged_skips = current
