"""Turn the metrics document into Prometheus families and expositions.

The document is read as a whole and each stored key becomes exactly one
sample under its stored name and labels.  Keys that cannot be served are
set aside with a reason instead of breaking the rest of the exposition.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from bson.decimal128 import Decimal128
from prometheus_client.metrics_core import Metric

import metric_keys
from metric_keys import InvalidKey

COUNTER = "counter"
GAUGE = "gauge"
UNTYPED = "untyped"

# Reasons a key is not served; each is a value of the keys_skipped label.
INVALID_KEY = "invalid_key"
NON_NUMERIC = "non_numeric"
BAD_COUNTER_VALUE = "bad_counter_value"
COLLISION = "collision"
SKIP_REASONS = (INVALID_KEY, NON_NUMERIC, BAD_COUNTER_VALUE, COLLISION)

TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@dataclass(frozen=True)
class Skipped:
    """A stored key that is not served, and why."""

    key: str
    reason: str
    detail: str


@dataclass
class Family:
    """The samples of one metric name, typed for the exposition."""

    name: str
    kind: str
    help: str
    lines: list[str] = field(default_factory=list)

    def openmetrics_name(self) -> str:
        """Return the family name OpenMetrics uses: a counter drops its _total."""
        if self.kind == COUNTER:
            return self.name[: -len("_total")]
        return self.name

    def claimed_names(self) -> set[str]:
        """Return every name a parser may read this family's samples under."""
        if self.kind == COUNTER:
            base = self.openmetrics_name()
            return {base, self.name, base + "_created"}
        return {self.name}


def kind_for(name: str, labeled: bool) -> str:
    """Type a family by its name: flat keys are gauges, labeled ones by suffix.

    A labeled ``*_total`` family is a counter.  ``*_sum`` and ``*_count`` are
    counters too, but no format lets a counter keep such a name (the text
    format's parsers append _total, OpenMetrics forbids it), so they are
    published untyped under their stored names.
    """
    if not labeled:
        return GAUGE
    if name.endswith("_total"):
        return COUNTER
    if name.endswith(("_sum", "_count")):
        return UNTYPED
    return GAUGE


def format_value(value: Any) -> str | None:
    """Spell a stored value as an exposition value, or None if it is not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, Decimal128):
        value = float(value.to_decimal())
    if isinstance(value, float):
        if math.isfinite(value):
            return repr(value)
        if math.isnan(value):
            return "NaN"
        return "+Inf" if value > 0 else "-Inf"
    return None


def counter_value_ok(text: str) -> bool:
    """Tell whether a counter may hold this value: not negative, not NaN."""
    if text == "NaN":
        return False
    return not text.startswith("-") or float(text) == 0


class KeyNames:
    """Remember the metric name (or the fault) of every key seen at the last read.

    Parsing is the costly part of a read; keys rarely change between reads,
    so each is parsed once while it stays in the document.
    """

    def __init__(self) -> None:
        self._known: dict[str, str | InvalidKey] = {}

    def lookup(self, keys: Iterable[str]) -> dict[str, str | InvalidKey]:
        """Return the name or the fault of each key, forgetting keys gone since."""
        known = self._known
        current: dict[str, str | InvalidKey] = {}
        for key in keys:
            found = known.get(key)
            if found is None:
                try:
                    found = metric_keys.parse_key(key)[0]
                except InvalidKey as exc:
                    found = exc
            current[key] = found
        self._known = current
        return current


@dataclass
class Build:
    """The families made from one document and the keys left out of them."""

    families: list[Family]
    skipped: list[Skipped]

    @property
    def series(self) -> int:
        return sum(len(family.lines) for family in self.families)

    def skipped_by_reason(self) -> dict[str, int]:
        counts = dict.fromkeys(SKIP_REASONS, 0)
        for item in self.skipped:
            counts[item.reason] += 1
        return counts


def build_families(
    document: Mapping[str, Any],
    names: KeyNames,
    reserved: Iterable[str] = (),
) -> Build:
    """Group the stored keys into families, setting aside those that cannot be served.

    reserved holds names already taken (the exporter's own metrics).
    """
    keys = [key for key in document if key not in metric_keys.BOOKKEEPING_KEYS]
    looked_up = names.lookup(keys)
    skipped: list[Skipped] = []
    grouped: dict[str, list[tuple[str, str]]] = {}
    labeled_names: set[str] = set()
    for key in keys:
        name = looked_up[key]
        if isinstance(name, InvalidKey):
            skipped.append(Skipped(key, INVALID_KEY, str(name)))
            continue
        text = format_value(document[key])
        if text is None:
            kind = type(document[key]).__name__
            detail = f"value {document[key]!r:.60} is a {kind}, not a number"
            skipped.append(Skipped(key, NON_NUMERIC, detail))
            continue
        grouped.setdefault(name, []).append((key, text))
        if len(key) > len(name):
            labeled_names.add(name)

    families = []
    for name, samples in grouped.items():
        labeled = name in labeled_names
        kind = kind_for(name, labeled)
        family = Family(name, kind, f"TAO metric {name} read from MongoDB")
        for key, text in samples:
            if kind != GAUGE and len(key) == len(name):
                detail = (
                    f"flat key has the name of the labeled {kind} family {name}; "
                    "flat keys are gauges"
                )
                skipped.append(Skipped(key, COLLISION, detail))
                continue
            if kind == COUNTER and not counter_value_ok(text):
                detail = f"counter value {text} is negative or NaN"
                skipped.append(Skipped(key, BAD_COUNTER_VALUE, detail))
                continue
            family.lines.append(f"{key} {text}\n")
        families.append(family)
    kept = _drop_collisions(families, set(reserved), labeled_names, skipped)
    return Build(kept, skipped)


def _drop_collisions(
    families: list[Family],
    taken: set[str],
    labeled_names: set[str],
    skipped: list[Skipped],
) -> list[Family]:
    """Keep the families whose names no earlier family claims.

    Counters come first, then other labeled families, then flat ones, each
    by name, so the outcome never depends on the order of the document.
    """

    def rank(family: Family) -> tuple[int, str]:
        if family.kind == COUNTER:
            return 0, family.name
        return (1 if family.name in labeled_names else 2), family.name

    owners = dict.fromkeys(taken, "the exporter's own metrics")
    kept = []
    for family in sorted(families, key=rank):
        claims = family.claimed_names()
        clash = sorted(claims & owners.keys())
        if clash:
            detail = f"name {clash[0]} is already served by {owners[clash[0]]}"
            for line in family.lines:
                skipped.append(Skipped(line.rsplit(" ", 1)[0], COLLISION, detail))
            continue
        if not family.lines:
            continue
        owners.update(dict.fromkeys(claims, f"family {family.name}"))
        kept.append(family)
    return kept


def render_text(families: Iterable[Family]) -> str:
    """Write families in the Prometheus text format, version 0.0.4."""
    parts = []
    for family in families:
        parts.append(f"# HELP {family.name} {family.help}\n")
        parts.append(f"# TYPE {family.name} {family.kind}\n")
        parts.extend(family.lines)
    return "".join(parts)


def render_openmetrics(families: Iterable[Family]) -> str:
    """Write families in OpenMetrics 1.0, without the closing # EOF line."""
    parts = []
    for family in families:
        name = family.openmetrics_name()
        kind = "unknown" if family.kind == UNTYPED else family.kind
        parts.append(f"# TYPE {name} {kind}\n")
        parts.append(f"# HELP {name} {family.help}\n")
        parts.extend(family.lines)
    return "".join(parts)


def to_metrics(families: Iterable[Family]) -> Iterator[Metric]:
    """Build prometheus_client Metric objects holding the same samples."""
    for family in families:
        kind = "unknown" if family.kind == UNTYPED else family.kind
        metric = Metric(family.openmetrics_name(), family.help, kind)
        for line in family.lines:
            key, text = line[:-1].rsplit(" ", 1)
            name, labels = metric_keys.parse_key(key)
            metric.add_sample(name, labels, float(text))
        yield metric


class Exposition:
    """One rendered response body per format, compressed on first demand."""

    def __init__(self, text: str, openmetrics: str) -> None:
        self._bodies = {
            TEXT: text.encode("utf-8"),
            OPENMETRICS: (openmetrics + "# EOF\n").encode("utf-8"),
        }
        self._gzipped: dict[str, bytes] = {}

    def body(self, content_type: str, compressed: bool = False) -> bytes:
        if not compressed:
            return self._bodies[content_type]
        if content_type not in self._gzipped:
            self._gzipped[content_type] = gzip.compress(
                self._bodies[content_type], compresslevel=1
            )
        return self._gzipped[content_type]
