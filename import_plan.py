"""Check a metrics document and plan how it is written over the current one.

Planning is pure: it reads two documents and computes what the import will
send, what the result will be and what it would lose.  The dry run and the
real run share it, so they report the same counts and the same errors.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import bson
from bson.decimal128 import Decimal128
from bson.int64 import Int64

import metric_keys
import mongo_store
from timestamps import parse_time

MERGE = "merge"
REPLACE = "replace"
OVERWRITE = "overwrite"
SUM = "sum"
MISSING = "missing"
STRATEGIES = (OVERWRITE, SUM, MISSING)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
SHOWN = 5
# Stands for a missing or null field in server-side comparisons.
ABSENT = "\u0000absent"


class InvalidInput(Exception):
    """A document that cannot be imported, with every problem named."""


Number = int | float | Int64 | Decimal128


@dataclass
class Plan:
    """What an import will do."""

    mode: str
    strategy: str
    current: dict[str, Any]
    imported: dict[str, Any]
    final: dict[str, Any]
    pipeline: list[dict[str, Any]]
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    decreases: list[tuple[str, Any, Any]] = field(default_factory=list)
    final_bytes: int = 0

    def summary(self) -> dict[str, Any]:
        """Return the plan's counts as plain JSON-able data."""
        return {
            "mode": self.mode,
            "strategy": self.strategy if self.mode == MERGE else None,
            "current": count_metrics(self.current),
            "imported": count_metrics(self.imported),
            "final": count_metrics(self.final),
            "added": len(self.added),
            "updated": len(self.updated),
            "unchanged": len(self.unchanged),
            "removed": len(self.removed),
            "decreases": [
                {"key": key, "current": to_plain(old), "new": to_plain(new)}
                for key, old, new in self.decreases
            ],
            "final_bytes": self.final_bytes,
        }


def metric_names(document: Mapping[str, Any]) -> list[str]:
    return [key for key in document if key not in metric_keys.BOOKKEEPING_KEYS]


def count_metrics(document: Mapping[str, Any]) -> int:
    """Count the metric keys without listing them."""
    return len(document) - sum(key in document for key in metric_keys.BOOKKEEPING_KEYS)


def to_plain(value: Any) -> Any:
    if isinstance(value, Decimal128):
        return str(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return int(value) if isinstance(value, Int64) else value


def as_decimal(value: Number) -> Decimal:
    if isinstance(value, Decimal128):
        return value.to_decimal()
    return Decimal(value)


def number_problem(value: Any) -> str | None:
    """Say why value is not a finite number MongoDB can store, or None if it is."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal128):
        return f"not a number ({type(value).__name__} {short(value)})"
    if isinstance(value, float) and not math.isfinite(value):
        return f"not finite ({value})"
    if isinstance(value, Decimal128) and not value.to_decimal().is_finite():
        return f"not finite ({value})"
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        return "an integer beyond 64 bits"
    return None


def short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def key_problem(key: str) -> str | None:
    """Say why a key cannot be stored as a metric name, or None if it can."""
    if key == "":
        return "empty key"
    if "\x00" in key:
        return "key holds a NUL character"
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return "key is not valid Unicode text (lone surrogate)"
    if metric_keys.is_labeled(key):
        try:
            metric_keys.check_key(key)
        except metric_keys.InvalidKey as exc:
            return f"broken labels: {exc}"
    return None


def last_updated_problem(value: Any) -> str | None:
    if isinstance(value, datetime.datetime):
        return None
    if isinstance(value, str):
        try:
            parse_time(value)
        except ValueError:
            return f"last_updated is not an ISO-8601 time: {short(value)}"
        return None
    return f"last_updated is a {type(value).__name__}, not a time"


def validate(document: Mapping[str, Any]) -> dict[str, Any]:
    """Return the document's metrics and last_updated, or raise InvalidInput."""
    problems: dict[str, list[str]] = {}
    for key, value in document.items():
        if key in metric_keys.IDENTITY_KEYS:
            continue
        if key == "last_updated":
            problem = last_updated_problem(value)
        else:
            problem = key_problem(key) or number_problem(value)
        if problem:
            problems.setdefault(problem.split(" (")[0].split(":")[0], []).append(
                f"{short(key)}: {problem}"
            )
    if problems:
        raise InvalidInput(describe_problems(problems))
    return {k: v for k, v in document.items() if k not in metric_keys.IDENTITY_KEYS}


def describe_problems(problems: Mapping[str, list[str]]) -> str:
    total = sum(len(items) for items in problems.values())
    examples = [item for items in problems.values() for item in items][:SHOWN]
    return (
        f"{total} invalid {'entry' if total == 1 else 'entries'}, first: "
        + "; ".join(examples)
        + "; fix the file and run again (nothing was written)"
    )


def plan_import(
    current_document: Mapping[str, Any] | None,
    imported: Mapping[str, Any],
    mode: str,
    strategy: str = OVERWRITE,
    document_name: str = mongo_store.DEFAULT_DOCUMENT_NAME,
) -> Plan:
    """Plan writing the validated imported metrics over the current document."""
    current = {
        key: value
        for key, value in (current_document or {}).items()
        if key not in metric_keys.IDENTITY_KEYS
    }
    pipeline: list[dict[str, Any]]
    mine = current.get("last_updated")
    newer = _newer_last_updated(mine, imported.get("last_updated"))
    # Only an import that moves last_updated forward writes it.
    moment = _last_updated_expression(mine, newer) if newer is not mine else None
    if mode == REPLACE:
        final = dict(imported)
        pipeline = mongo_store.replace_pipeline(document_name, final)
    elif strategy == OVERWRITE:
        final = {**current, **imported}
        # Keys already holding the file's value are not sent again.
        changed = {
            key: value
            for key, value in imported.items()
            if key == "last_updated"
            or key not in current
            or not same(current[key], value)
        }
        if moment is None:
            pipeline = mongo_store.merge_pipeline(_metrics_only(changed))
        else:
            pipeline = mongo_store.merge_pipeline(changed, {"last_updated": moment})
    elif strategy == SUM:
        final = _summed(current, imported)
        pipeline = mongo_store.sum_pipeline(_counters(imported))
        if metric_keys.TIME_KEY in imported:
            # The target's time_lapsed_today is kept; an absent one is added.
            time_lapsed = {metric_keys.TIME_KEY: imported[metric_keys.TIME_KEY]}
            pipeline += mongo_store.add_missing_pipeline(time_lapsed)
    elif strategy == MISSING:
        final = {**imported, **current}
        missing = {k: v for k, v in imported.items() if k not in current}
        pipeline = mongo_store.add_missing_pipeline(missing)
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    if mode == MERGE and newer is not None:
        final["last_updated"] = newer
        if moment is not None and strategy != OVERWRITE:
            pipeline.append(_set_last_updated(moment))
    plan = Plan(mode, strategy, current, dict(imported), final, pipeline)
    _count_changes(plan)
    with_name = {"_id": bson.ObjectId(), "name": document_name, **final}
    plan.final_bytes = len(bson.encode(with_name))
    return plan


def _metrics_only(imported: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in imported.items() if k != "last_updated"}


def _counters(imported: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in imported.items()
        if k not in ("last_updated", metric_keys.TIME_KEY)
    }


def _summed(current: Mapping[str, Any], imported: Mapping[str, Any]) -> dict[str, Any]:
    counters = _counters(imported)
    stored = [
        f"{short(key)}: {number_problem(current[key])}"
        for key in counters
        if key in current and number_problem(current[key])
    ]
    if stored:
        raise InvalidInput(
            f"{len(stored)} stored values cannot be added to, first: "
            + "; ".join(stored[:SHOWN])
            + "; fix them in the database or import without --strategy sum "
            "(nothing was written)"
        )
    final = dict(current)
    for key, value in counters.items():
        final[key] = add(current[key], value) if key in current else value
    if metric_keys.TIME_KEY in imported and metric_keys.TIME_KEY not in current:
        final[metric_keys.TIME_KEY] = imported[metric_keys.TIME_KEY]
    return final


def add(left: Number, right: Number) -> Number:
    """Add two stored numbers the way the server's $add does."""
    if isinstance(left, Decimal128) or isinstance(right, Decimal128):
        return Decimal128(as_decimal(left) + as_decimal(right))
    if isinstance(left, float) or isinstance(right, float):
        return float(left) + float(right)
    total = int(left) + int(right)
    if not INT64_MIN <= total <= INT64_MAX:
        # The server turns a sum beyond 64 bits into a double.
        return float(total)
    if isinstance(left, Int64) or isinstance(right, Int64) or total > 2**31 - 1:
        return Int64(total)
    return total


def _newer_last_updated(mine: Any, theirs: Any) -> Any:
    """Return the newer time; a stored value that is no time counts as older."""
    if theirs is None:
        return mine
    if mine is None or last_updated_problem(mine):
        return theirs
    return theirs if parse_time(theirs) > parse_time(mine) else mine


def _last_updated_expression(mine: Any, newer: Any) -> dict[str, Any]:
    """Give newer, unless another writer changed last_updated since it was read."""
    stored = mongo_store.field("last_updated")
    # A stored value equal to what was read means no other writer changed it.
    seen = {"$literal": mine} if mine is not None else ABSENT
    unchanged = {"$eq": [{"$ifNull": [stored, ABSENT]}, seen]}
    return {"$cond": [unchanged, {"$literal": newer}, stored]}


def _set_last_updated(value: dict[str, Any]) -> dict[str, Any]:
    return {
        "$replaceWith": {
            "$setField": {
                "field": {"$literal": "last_updated"},
                "input": "$$ROOT",
                "value": value,
            }
        }
    }


def _count_changes(plan: Plan) -> None:
    for key in metric_names(plan.final):
        if key not in plan.current:
            plan.added.append(key)
        elif same(plan.current[key], plan.final[key]):
            # Only keys the file names count; the others are merely kept.
            if key in plan.imported:
                plan.unchanged.append(key)
        else:
            plan.updated.append(key)
            old, new = plan.current[key], plan.final[key]
            if key != metric_keys.TIME_KEY and _below(new, old):
                plan.decreases.append((key, old, new))
    plan.removed = [k for k in metric_names(plan.current) if k not in plan.final]


def _below(new: Any, old: Any) -> bool:
    if number_problem(new) or number_problem(old):
        return False
    return as_decimal(new) < as_decimal(old)


def same(left: Any, right: Any) -> bool:
    """Tell whether two stored values are equal in value and BSON type."""
    kind = type(left)
    if kind is type(right) and (kind is int or kind is str):
        # Equal ints take the same BSON width and equal strings the same bytes.
        return left == right
    return bson.encode({"v": left}) == bson.encode({"v": right})


def mismatches(plan: Plan, after: Mapping[str, Any]) -> list[str]:
    """List the keys whose value after the write is not what the plan promised."""
    exact = plan.mode == REPLACE or plan.strategy == OVERWRITE
    summed = plan.mode == MERGE and plan.strategy == SUM
    # A key the merge did not send may only have grown since it was read.
    overwrite = plan.mode == MERGE and plan.strategy == OVERWRITE
    unsent = set(plan.unchanged) if overwrite else set()
    wrong = []
    for key in metric_names(plan.imported):
        if key not in after:
            wrong.append(key)
        elif key in unsent:
            if _below(after[key], plan.imported[key]):
                wrong.append(key)
        elif exact and not same(after[key], plan.imported[key]):
            wrong.append(key)
        elif (
            summed
            and key != metric_keys.TIME_KEY
            and _below(after[key], plan.final[key])
        ):
            # Other writers may only have added to a counter meanwhile.
            wrong.append(key)
    if plan.mode == REPLACE:
        wrong += [k for k in metric_names(after) if k not in plan.imported]
    return wrong
