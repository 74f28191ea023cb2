"""Validating an imported document and planning its write, without a server."""

from __future__ import annotations

import datetime

import pytest
from bson.decimal128 import Decimal128
from bson.int64 import Int64

import import_plan
from import_plan import MERGE, MISSING, REPLACE, SUM, InvalidInput, plan_import
from metrics_file import parse_text
from mongo_store import MAX_DOCUMENT_BYTES
from tests.helpers import rich_document

EARLY = datetime.datetime(2024, 1, 1)
LATE = datetime.datetime(2024, 6, 1)


def test_valid_document_loses_only_id_and_name() -> None:
    document = {"_id": 1, "name": "other", **rich_document()}
    assert import_plan.validate(document) == rich_document()


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('{"total_a": "5"}', "'total_a': not a number (str '5')"),
        ('{"total_a": true}', "'total_a': not a number (bool True)"),
        ('{"total_a": null}', "'total_a': not a number (NoneType None)"),
        ('{"total_a": [1]}', "'total_a': not a number (list [1])"),
        ('{"total_a": {"x": 1}}', "'total_a': not a number (dict"),
        ('{"total_a": {"$numberDouble": "NaN"}}', "'total_a': not finite (nan)"),
        ('{"total_a": {"$numberDouble": "-Infinity"}}', "not finite (-inf)"),
        ('{"total_a": {"$numberDecimal": "NaN"}}', "not finite (NaN)"),
        ('{"total_a": 99999999999999999999}', "an integer beyond 64 bits"),
        ('{"": 1}', "'': empty key"),
        ('{"a\\u0000b": 1}', "key holds a NUL character"),
        ('{"a\\ud800": 1}', "lone surrogate"),
        ('{"tao_job_total{tao_action=\\"train\\"": 1}', "broken labels"),
        ('{"tao_job_total{1x=\\"a\\"}": 1}', "broken labels"),
        ('{"last_updated": "yesterday"}', "not an ISO-8601 time: 'yesterday'"),
        ('{"last_updated": 5}', "last_updated is a int, not a time"),
    ],
)
def test_invalid_entries_are_named(text: str, named: str) -> None:
    document, _ = parse_text(text)
    with pytest.raises(InvalidInput) as raised:
        import_plan.validate(document)
    message = str(raised.value)
    assert named in message
    assert "\n" not in message
    assert "nothing was written" in message


def test_many_invalid_entries_are_counted_and_the_first_shown() -> None:
    document = {f"total_{n}": "x" for n in range(12)} | {"ok": 1}
    with pytest.raises(InvalidInput) as raised:
        import_plan.validate(document)
    message = str(raised.value)
    assert message.startswith("12 invalid entries, first: 'total_0':")
    assert "'total_4'" in message and "'total_5'" not in message


def test_merge_counts_added_updated_unchanged() -> None:
    current = {"_id": 1, "name": "metrics", "a": 1, "b": 2, "c": 3}
    plan = plan_import(current, {"b": 5, "c": 3, "d": 4}, MERGE)
    assert plan.final == {"a": 1, "b": 5, "c": 3, "d": 4}
    assert (plan.added, plan.updated, plan.unchanged) == (["d"], ["b"], ["c"])
    assert plan.summary()["current"] == 3 and plan.summary()["final"] == 4
    assert plan.decreases == []


def test_same_value_of_another_type_is_an_update() -> None:
    plan = plan_import({"a": 5}, {"a": Int64(5), "b": 5.0}, MERGE)
    assert plan.updated == ["a"] and plan.unchanged == []
    assert plan.decreases == []


def test_merge_lists_each_counter_it_would_lower() -> None:
    current = {"a": 10, "b": Int64(2**40), "c": 1, "time_lapsed_today": 50}
    imported = {"a": 9, "b": Decimal128("1.5"), "c": 2, "time_lapsed_today": 1}
    plan = plan_import(current, imported, MERGE)
    assert plan.decreases == [("a", 10, 9), ("b", 2**40, Decimal128("1.5"))]
    assert plan.summary()["decreases"][1] == {
        "key": "b",
        "current": 2**40,
        "new": "1.5",
    }


def test_replace_drops_every_metric_the_file_lacks() -> None:
    current = {"a": 10, "b": 2, "last_updated": LATE}
    plan = plan_import(current, {"b": 1, "c": 3, "last_updated": EARLY}, REPLACE)
    assert plan.final == {"b": 1, "c": 3, "last_updated": EARLY}
    assert plan.removed == ["a"] and plan.added == ["c"] and plan.updated == ["b"]
    # A replace is meant to lower counts; it lists them without refusing.
    assert plan.decreases == [("b", 2, 1)]
    assert plan.pipeline[0]["$replaceWith"]["$literal"]["name"] == "metrics"


def test_sum_adds_counters_keeps_target_time_and_newer_last_updated() -> None:
    current = {"a": 1, "b": Int64(2), "time_lapsed_today": 30, "last_updated": EARLY}
    imported = {
        "a": 2,
        "c": 1.5,
        "b": 2**31 - 1,
        "time_lapsed_today": 99,
        "last_updated": "2024-06-01T00:00:00Z",
    }
    plan = plan_import(current, imported, MERGE, SUM)
    assert plan.final["a"] == 3 and type(plan.final["a"]) is int
    assert plan.final["b"] == 2**31 + 1 and type(plan.final["b"]) is Int64
    assert plan.final["c"] == 1.5
    assert plan.final["time_lapsed_today"] == 30
    assert plan.final["last_updated"] == "2024-06-01T00:00:00Z"


def test_sum_overflowing_int32_becomes_int64() -> None:
    plan = plan_import({"a": 2**31 - 1}, {"a": 1}, MERGE, SUM)
    assert type(plan.final["a"]) is Int64


def test_sum_adds_time_lapsed_today_only_when_absent() -> None:
    plan = plan_import({"a": 1}, {"time_lapsed_today": 7}, MERGE, SUM)
    assert plan.final == {"a": 1, "time_lapsed_today": 7}
    assert plan.added == ["time_lapsed_today"]


def test_missing_adds_only_absent_keys() -> None:
    plan = plan_import({"a": 1, "b": 2}, {"a": 50, "c": 3}, MERGE, MISSING)
    assert plan.final == {"a": 1, "b": 2, "c": 3}
    assert plan.added == ["c"] and plan.updated == []


@pytest.mark.parametrize(
    ("mine", "theirs", "kept"),
    [
        (EARLY, LATE, LATE),
        (LATE, EARLY, LATE),
        ("2024-06-01T00:00:00+02:00", "2024-05-31T23:00:00Z", "2024-05-31T23:00:00Z"),
        (None, EARLY, EARLY),
        (EARLY, None, EARLY),
        ("not a time", EARLY, EARLY),
    ],
)
def test_merge_keeps_the_newer_last_updated(mine, theirs, kept) -> None:
    current = {"a": 1} if mine is None else {"a": 1, "last_updated": mine}
    imported = {"a": 1} if theirs is None else {"a": 1, "last_updated": theirs}
    for strategy in import_plan.STRATEGIES:
        plan = plan_import(current, imported, MERGE, strategy)
        assert plan.final["last_updated"] == kept


def test_size_counts_the_whole_resulting_document() -> None:
    current = {f"k{n}": 1 for n in range(10)}
    plan = plan_import(current, {"x" * 1000: 1}, MERGE)
    assert 1000 < plan.final_bytes < 1300
    huge = {f"{n:08d}" + "k" * 2000: 1 for n in range(8500)}
    assert plan_import(current, huge, MERGE).final_bytes > MAX_DOCUMENT_BYTES


def test_mismatches_find_keys_the_write_did_not_set() -> None:
    plan = plan_import({"a": 1}, {"a": 2, "b": 3}, MERGE)
    assert import_plan.mismatches(plan, {"a": 2, "b": 3}) == []
    assert import_plan.mismatches(plan, {"a": 2}) == ["b"]
    assert import_plan.mismatches(plan, {"a": 2.0, "b": 3}) == ["a"]
    summed = plan_import({"a": 1}, {"a": 2}, MERGE, SUM)
    # Another writer may have added to a summed counter meanwhile.
    assert import_plan.mismatches(summed, {"a": 7}) == []
    assert import_plan.mismatches(summed, {"a": 2}) == ["a"]
    replaced = plan_import({"a": 1}, {"b": 2}, REPLACE)
    assert import_plan.mismatches(replaced, {"a": 1, "b": 2}) == ["a"]


def test_sum_refuses_stored_values_that_are_not_numbers() -> None:
    current = {"a": "12", "b": None, "c": 1}
    with pytest.raises(InvalidInput) as raised:
        plan_import(current, {"a": 1, "b": 1, "c": 1}, MERGE, SUM)
    message = str(raised.value)
    assert message.startswith("2 stored values cannot be added to, first: 'a':")
    assert "'b': not a number (NoneType None)" in message
    # The default merge simply overwrites them.
    assert plan_import(current, {"a": 1, "b": 1}, MERGE).final["a"] == 1


def test_sum_beyond_64_bits_becomes_a_double() -> None:
    plan = plan_import({"a": Int64(2**63 - 1)}, {"a": 1}, MERGE, SUM)
    assert plan.final["a"] == float(2**63) and type(plan.final["a"]) is float
