"""Summarise a metrics document: families, totals, odd keys and size."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import bson
import bson.errors

import import_plan
import metric_keys
from mongo_store import MAX_DOCUMENT_BYTES
from timestamps import parse_time

SHOWN = 10


@dataclass
class Analysis:
    """Counts and findings for one metrics document."""

    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(metric_keys.FAMILIES, 0)
    )
    totals: dict[str, Decimal] = field(default_factory=dict)
    bookkeeping: list[str] = field(default_factory=list)
    unclassified: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)
    non_numeric: list[str] = field(default_factory=list)
    size_bytes: int = 0
    last_updated: str | None = None

    @property
    def metric_count(self) -> int:
        return sum(
            n for family, n in self.counts.items() if family != metric_keys.BOOKKEEPING
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "metrics": self.metric_count,
            "families": self.counts,
            "totals": {name: _plain(total) for name, total in self.totals.items()},
            "bookkeeping": self.bookkeeping,
            "unclassified": self.unclassified,
            "broken_labeled": self.broken,
            "ambiguous_comprehensive": self.ambiguous,
            "non_numeric": self.non_numeric,
            "size_bytes": self.size_bytes,
            "size_limit_bytes": MAX_DOCUMENT_BYTES,
            "last_updated": self.last_updated,
        }


def _plain(total: Decimal) -> int | float:
    return int(total) if total == total.to_integral_value() else float(total)


def analyze(document: Mapping[str, Any], check_keys: bool = True) -> Analysis:
    """Count each family, add up its values and list keys that need a look.

    With check_keys off only the families are counted (the size is left at 0):
    all an export reports, and a fraction of the work on a large document.
    """
    result = Analysis()
    if not check_keys:
        for key in document:
            result.counts[metric_keys.classify(key)] += 1
        return result
    result.size_bytes = stored_size(document)
    for key, value in document.items():
        family = metric_keys.classify(key)
        result.counts[family] += 1
        if family == metric_keys.BOOKKEEPING:
            result.bookkeeping.append(key)
            continue
        if family == metric_keys.OTHER:
            result.unclassified.append(key)
        elif family == metric_keys.LABELED:
            _check_labeled(key, result)
        elif family == metric_keys.COMPREHENSIVE:
            _check_comprehensive(key, result)
        if import_plan.number_problem(value):
            result.non_numeric.append(key)
            continue
        total = result.totals.get(family, Decimal(0))
        result.totals[family] = total + import_plan.as_decimal(value)
    stamp = document.get("last_updated")
    if stamp is not None and not import_plan.last_updated_problem(stamp):
        result.last_updated = parse_time(stamp).isoformat()
    return result


def stored_size(document: Mapping[str, Any]) -> int:
    """Return the document's BSON size, or raise InvalidInput if it cannot be."""
    try:
        return len(bson.encode(dict(document)))
    except (bson.errors.InvalidDocument, UnicodeEncodeError, OverflowError) as exc:
        detail = str(exc).splitlines()[0]
        raise import_plan.InvalidInput(
            f"the document cannot be stored in MongoDB ({detail}); list its bad "
            "entries with: python import_metrics.py --input FILE --dry-run"
        ) from None


def _check_labeled(key: str, result: Analysis) -> None:
    try:
        metric_keys.check_key(key)
    except metric_keys.InvalidKey:
        result.broken.append(key)


def _check_comprehensive(key: str, result: Analysis) -> None:
    try:
        metric_keys.parse_comprehensive(key)
    except metric_keys.InvalidKey:
        result.ambiguous.append(key)


def format_report(result: Analysis) -> list[str]:
    """Return the human-readable lines of an analysis."""
    lines = [f"Metrics: {result.metric_count}"]
    for family in metric_keys.FAMILIES:
        if family == metric_keys.BOOKKEEPING:
            continue
        total = result.totals.get(family)
        shown = f" (sum of values {_plain(total):,})" if total is not None else ""
        lines.append(f"  {family:<14} {result.counts[family]:>8}{shown}")
    lines.append(f"Bookkeeping keys: {', '.join(result.bookkeeping) or 'none'}")
    share = result.size_bytes / MAX_DOCUMENT_BYTES * 100
    lines.append(
        f"Document size: {result.size_bytes:,} bytes ({share:.1f}% of the "
        f"{MAX_DOCUMENT_BYTES // 2**20} MiB limit)"
    )
    lines.append(f"Newest last_updated: {result.last_updated or 'not set'}")
    for title, keys in (
        ("Keys that fit no family", result.unclassified),
        ("Labeled keys with broken labels", result.broken),
        ("Comprehensive keys that cannot be read unambiguously", result.ambiguous),
        ("Keys whose value is not a finite number", result.non_numeric),
    ):
        if keys:
            lines.append(f"{title}: {len(keys)}")
            lines.extend(f"  {key}" for key in keys[:SHOWN])
            if len(keys) > SHOWN:
                lines.append(f"  ... and {len(keys) - SHOWN} more")
    return lines
