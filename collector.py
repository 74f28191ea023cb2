"""Turn the metrics document into typed Prometheus families.

Each stored key becomes exactly one sample under its stored name and labels.
Keys that cannot be served are set aside with a reason instead of breaking
the rest of the exposition.  Successive documents are built incrementally:
a key keeps its parsed name and sample line while its value stays the same.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bson.decimal128 import Decimal128

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


@dataclass(frozen=True)
class Skipped:
    """A stored key that is not served, and why."""

    key: str
    reason: str
    detail: str


@dataclass(eq=False)
class Family:
    """The samples of one metric name, typed for the exposition.

    keys[i] is the stored key whose sample line is lines[i].  chunks caches
    the family rendered in each format; a family is never changed once built.
    """

    name: str
    kind: str
    help: str
    lines: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    chunks: dict[str, bytes] = field(default_factory=dict, repr=False)

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


def help_for(name: str) -> str:
    return f"TAO metric {name} read from MongoDB"


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
    # Where each served key's line is: (index in families, index in lines).
    placement: dict[str, tuple[int, int]] = field(default_factory=dict)
    # The index in families of each family's name.
    positions: dict[str, int] = field(default_factory=dict)
    # Every name a served family claims (see Family.claimed_names), and the
    # names of all families grouped, served or not.
    owners: dict[str, str] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)
    # The families rendered, by format; filled by the exposition module.
    rendered: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def series(self) -> int:
        return len(self.placement)

    def skipped_by_reason(self) -> dict[str, int]:
        counts = dict.fromkeys(SKIP_REASONS, 0)
        for item in self.skipped:
            counts[item.reason] += 1
        return counts


class Builder:
    """Build the families of successive documents, redoing only what changed.

    When a new document only changes values of served keys, adds keys or
    families or removes keys, the last build is copied with those lines
    replaced, added or dropped; anything else (a family emptied, a key
    becoming unservable, a name collision) builds afresh.
    """

    def __init__(self, reserved: Iterable[str] = ()) -> None:
        self.reserved = frozenset(reserved)
        self._entries: dict[str, Entry] = {}
        self._last: Build | None = None

    def build(self, document: Mapping[str, Any]) -> Build:
        # Building allocates an object or more per key; with 100,000 keys
        # the cyclic collector would run many times over all of them.
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._build(document)
        finally:
            if collecting:
                gc.enable()

    def _build(self, document: Mapping[str, Any]) -> Build:
        previous = self._entries
        entries: dict[str, Entry] = {}
        changed = []
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
                changed.append(key)
            entries[key] = entry
        self._entries = entries
        added = sum(1 for key in changed if key not in previous)
        removed = []
        if len(entries) - added != len(previous):
            removed = [key for key in previous if key not in entries]
        build = None
        if self._last is not None:
            build = _patched(self._last, entries, changed, previous, removed)
        if build is None:
            build = _full_build(entries, self.reserved, self._last)
        self._last = build
        return build


def build_families(document: Mapping[str, Any], reserved: Iterable[str] = ()) -> Build:
    """Build the families of one document from scratch."""
    return Builder(reserved).build(document)


def _patched(
    last: Build,
    entries: dict[str, Entry],
    changed: list[str],
    previous: dict[str, Entry],
    removed: list[str],
) -> Build | None:
    """Copy last with the lines of changed keys replaced, added or removed.

    Return None when that would not give what a full build gives: a changed
    key not served, a key that would change its family's type, a new family
    claiming a name already taken, or a family left empty.
    """
    families = list(last.families)
    copies: dict[int, Family] = {}
    placement = last.placement
    skipped = last.skipped
    positions, owners, names = last.positions, last.owners, last.names
    if removed:
        # Removing a key never changes which families are served, unless it
        # empties one: skipped keys only lose their place in the list.
        gone = set(removed)
        placement = dict(placement)
        skipped = [item for item in skipped if item.key not in gone]
        touched = {placement.pop(key)[0] for key in removed if key in placement}
        for family_at in touched:
            original = families[family_at]
            keys = [key for key in original.keys if key not in gone]
            if not keys:
                return None
            lines = [entries[key].line for key in keys]
            copies[family_at] = Family(
                original.name, original.kind, original.help, lines, keys
            )
            for line_at, key in enumerate(keys):
                placement[key] = (family_at, line_at)
    for key in changed:
        entry = entries[key]
        if entry.reason:
            return None
        where = placement.get(key)
        if where is None:
            if key in previous:
                return None
            family_at = positions.get(entry.name, -1)
            if family_at < 0:
                # A new family: appended unless a name it claims is taken.
                if entry.name in names:
                    return None
                kind = kind_for(entry.name, entry.labeled)
                new = Family(entry.name, kind, help_for(entry.name))
                claims = new.claimed_names()
                if any(claim in owners or claim in names for claim in claims):
                    return None
                if positions is last.positions:
                    positions, owners = dict(positions), dict(owners)
                    names = set(names)
                owners.update(dict.fromkeys(claims, f"family {entry.name}"))
                names.add(entry.name)
                family_at = positions[entry.name] = len(families)
                families.append(new)
                copies[family_at] = new
            kind = families[family_at].kind
            fits = kind_for(entry.name, True) if entry.labeled else GAUGE
            if fits != kind:
                return None
        else:
            family_at = where[0]
        family = copies.get(family_at)
        if family is None:
            original = families[family_at]
            family = Family(
                original.name,
                original.kind,
                original.help,
                list(original.lines),
                list(original.keys),
            )
            copies[family_at] = family
        if family.kind == COUNTER and entry.negative_or_nan:
            return None
        if where is None:
            if placement is last.placement:
                placement = dict(placement)
            placement[key] = (family_at, len(family.lines))
            family.lines.append(entry.line)
            family.keys.append(key)
        else:
            family.lines[where[1]] = entry.line
    for family_at, family in copies.items():
        families[family_at] = family
    return Build(families, skipped, placement, positions, owners, names)


def _full_build(
    entries: dict[str, Entry], reserved: frozenset[str], last: Build | None = None
) -> Build:
    """Group entries into families, reusing each family of last left as it was."""
    before = {family.name: family for family in last.families} if last else {}
    skipped: list[Skipped] = []
    grouped: dict[str, list[tuple[str, Entry]]] = {}
    labeled_names: set[str] = set()
    for key, entry in entries.items():
        if entry.reason:
            skipped.append(Skipped(key, entry.reason, entry.detail))
            continue
        grouped.setdefault(entry.name, []).append((key, entry))
        if entry.labeled:
            labeled_names.add(entry.name)

    families = []
    for name, members in grouped.items():
        help_text = help_for(name)
        if name not in labeled_names:
            lines = [entry.line for _, entry in members]
            family = before.get(name)
            if family is None or family.kind != GAUGE or family.lines != lines:
                keys = [key for key, _ in members]
                family = Family(name, GAUGE, help_text, lines, keys)
            families.append(family)
            continue
        kind = kind_for(name, True)
        family = Family(name, kind, help_text)
        for key, entry in members:
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
                family.keys.append(key)
        unchanged = before.get(name)
        if unchanged and unchanged.kind == kind and unchanged.lines == family.lines:
            family = unchanged
        families.append(family)
    kept, owners = _drop_collisions(families, reserved, labeled_names, skipped)
    placement = {
        key: (family_at, line_at)
        for family_at, family in enumerate(kept)
        for line_at, key in enumerate(family.keys)
    }
    positions = {family.name: family_at for family_at, family in enumerate(kept)}
    return Build(kept, skipped, placement, positions, owners, set(grouped))


def _drop_collisions(
    families: list[Family],
    taken: Iterable[str],
    labeled_names: set[str],
    skipped: list[Skipped],
) -> tuple[list[Family], dict[str, str]]:
    """Keep the families whose names no earlier family claims; return the claims.

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
        if family.kind == COUNTER:
            claims = family.claimed_names()
            clash = sorted(claims & owners.keys())
        else:
            claims = {family.name}
            clash = [family.name] if family.name in owners else []
        if clash:
            detail = f"name {clash[0]} is already served by {owners[clash[0]]}"
            skipped.extend(Skipped(key, COLLISION, detail) for key in family.keys)
            continue
        if not family.lines:
            continue
        for claim in claims:
            owners[claim] = f"family {family.name}"
        kept.append(family)
    return kept, owners
