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


@dataclass(frozen=True, slots=True)
class Entry:
    """What one stored key became: its sample line, or why it has none."""

    value: Any
    name: str
    labeled: bool
    line: str = ""
    reason: str = ""
    detail: str = ""
    # Counters may not hold these values; gauges may.
    negative_or_nan: bool = False


class Memo:
    """Remember what each key became at the last read.

    Parsing and formatting are the costly part of a read, and between two
    reads most keys keep their value; those are reused as they were.  Keys
    gone from the document are forgotten.
    """

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    def entries(self, document: Mapping[str, Any]) -> dict[str, Entry]:
        """Return the entry of every stored key of the document."""
        previous = self._entries
        current = {}
        bookkeeping = metric_keys.BOOKKEEPING_KEYS
        for key, value in document.items():
            if key in bookkeeping:
                continue
            entry = previous.get(key)
            if (
                entry is None
                or entry.value != value
                or type(entry.value) is not type(value)
            ):
                entry = make_entry(key, value, entry)
            current[key] = entry
        self._entries = current
        return current


def make_entry(key: str, value: Any, before: Entry | None = None) -> Entry:
    """Parse a key (unless before already did) and format its value."""
    if before is not None:
        name, labeled = before.name, before.labeled
        if before.reason == INVALID_KEY:
            return Entry(value, name, labeled, "", INVALID_KEY, before.detail)
    else:
        try:
            name = metric_keys.parse_key(key)[0]
        except InvalidKey as exc:
            return Entry(value, "", False, "", INVALID_KEY, str(exc))
        labeled = len(key) > len(name)
    text = format_value(value)
    if text is None:
        detail = f"value {value!r:.60} is a {type(value).__name__}, not a number"
        return Entry(value, name, labeled, "", NON_NUMERIC, detail)
    bad_for_counter = text == "NaN" or (text.startswith("-") and float(text) != 0)
    return Entry(value, name, labeled, f"{key} {text}\n", "", "", bad_for_counter)


@dataclass
class Build:
    """The families made from one document and the keys left out of them."""

    families: list[Family]
    skipped: list[Skipped]
    _rendered: dict[str, bytes] = field(default_factory=dict)

    @property
    def series(self) -> int:
        return sum(len(family.lines) for family in self.families)

    def skipped_by_reason(self) -> dict[str, int]:
        counts = dict.fromkeys(SKIP_REASONS, 0)
        for item in self.skipped:
            counts[item.reason] += 1
        return counts

    def rendered(self, content_type: str) -> bytes:
        """Return the families in one format, rendered once per build."""
        if content_type not in self._rendered:
            render = render_text if content_type == TEXT else render_openmetrics
            self._rendered[content_type] = render(self.families).encode("utf-8")
        return self._rendered[content_type]

    def compressed(self, content_type: str) -> bytes:
        """Return rendered(content_type) as a gzip member, compressed once."""
        key = "gzip " + content_type
        if key not in self._rendered:
            data = self.rendered(content_type)
            self._rendered[key] = gzip.compress(data, compresslevel=1)
        return self._rendered[key]


def build_families(
    document: Mapping[str, Any],
    memo: Memo,
    reserved: Iterable[str] = (),
) -> Build:
    """Group the stored keys into families, setting aside those that cannot be served.

    reserved holds names already taken (the exporter's own metrics).
    """
    skipped: list[Skipped] = []
    grouped: dict[str, list[tuple[str, Entry]]] = {}
    labeled_names: set[str] = set()
    for key, entry in memo.entries(document).items():
        if entry.reason:
            skipped.append(Skipped(key, entry.reason, entry.detail))
            continue
        grouped.setdefault(entry.name, []).append((key, entry))
        if entry.labeled:
            labeled_names.add(entry.name)

    families = []
    for name, entries in grouped.items():
        if name not in labeled_names:
            lines = [entry.line for _, entry in entries]
            families.append(Family(name, GAUGE, _help(name), lines))
            continue
        kind = kind_for(name, True)
        family = Family(name, kind, _help(name))
        for key, entry in entries:
            if kind != GAUGE and not entry.labeled:
                detail = (
                    f"flat key has the name of the labeled {kind} family {name}; "
                    "flat keys are gauges"
                )
                skipped.append(Skipped(key, COLLISION, detail))
            elif kind == COUNTER and entry.negative_or_nan:
                detail = f"counter value {entry.value!r} is negative or NaN"
                skipped.append(Skipped(key, BAD_COUNTER_VALUE, detail))
            else:
                family.lines.append(entry.line)
        families.append(family)
    kept = _drop_collisions(families, set(reserved), labeled_names, skipped)
    return Build(kept, skipped)


def _help(name: str) -> str:
    return f"TAO metric {name} read from MongoDB"


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
    """The response bodies of one snapshot: own metrics, then the stored ones.

    Each body is a list of byte strings.  The stored part is rendered and
    compressed once per build, and a build is reused for as long as the
    document does not change; compressed bodies are gzip members, which
    clients read as one stream.
    """

    def __init__(self, own: list[Family], build: Build | None) -> None:
        self._own = {
            TEXT: render_text(own).encode("utf-8"),
            OPENMETRICS: render_openmetrics(own).encode("utf-8"),
        }
        self._build = build

    def body(self, content_type: str, compressed: bool = False) -> list[bytes]:
        parts = [self._own[content_type]]
        if self._build is not None:
            parts.append(self._build.rendered(content_type))
        if content_type == OPENMETRICS:
            parts.append(b"# EOF\n")
        if not compressed:
            return parts
        own = gzip.compress(b"".join(parts[:1]), compresslevel=1)
        stored = self._build.compressed(content_type) if self._build else b""
        tail = gzip.compress(b"# EOF\n") if content_type == OPENMETRICS else b""
        return [own, stored, tail]
