"""Imports beside other writers: no increment or newer time may be lost."""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

import pytest
from bson.decimal128 import Decimal128
from bson.int64 import Int64

import import_metrics
import import_plan
from cli_support import UsageError
from metric_keys import BOOKKEEPING_KEYS
from mongo_store import Location, MetricsStore
from tests.helpers import assert_succeeded, import_, store, write

EARLY = datetime.datetime(2024, 1, 1, 12, 0)


# Increments the given keys one by one until the stop file appears, then
# prints how many increments of each key the server acknowledged.
WRITER = """
import json, os, sys, pymongo
uri, db, stop, *keys = sys.argv[1:]
metrics = pymongo.MongoClient(uri)[db]["metrics"]
done = dict.fromkeys(keys, 0)
print("ready", flush=True)
while not os.path.exists(stop):
    for key in keys:
        if metrics.update_one({"name": "metrics"}, {"$inc": {key: 1}}).modified_count:
            done[key] += 1
print(json.dumps(done))
"""


def run_beside_writer(
    mongo_uri: str, target: Location, keys: list[str], args: list[str], stop: Path
) -> tuple[subprocess.CompletedProcess[str], dict[str, int]]:
    """Run an import while another process keeps incrementing keys."""
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, mongo_uri, target.db, str(stop), *keys],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == "ready\n"
        result = import_(*args)
    finally:
        stop.touch()
        out, _ = writer.communicate(timeout=60)
    stop.unlink()
    return result, json.loads(out)


def test_imports_lose_no_increment_made_meanwhile(
    mongo_uri, mongo_client, target, target_args, tmp_path: Path
) -> None:
    live = "total_action_live_pass"
    current = {f"total_action_job{n}_pass": n for n in range(20000)}
    store(mongo_uri, target, {**current, live: 0})
    imported = {key: 2 * value for key, value in current.items()}
    big = write(tmp_path / "big.json", imported)
    # Summing is the strategy for keys that others increment too.
    shared = ["total_action_job5_pass", "total_action_job1999_pass"]
    few = write(tmp_path / "few.json", dict(list(imported.items())[:2000]))
    stop = tmp_path / "stop"

    merged, first = run_beside_writer(
        mongo_uri, target, [live], [*target_args, "-i", big, "--no-backup"], stop
    )
    summed, second = run_beside_writer(
        mongo_uri,
        target,
        [live, *shared],
        [*target_args, "-i", few, "--strategy", "sum", "--no-backup"],
        stop,
    )

    assert_succeeded(merged)
    assert_succeeded(summed)
    assert first[live] > 0 and second[live] > 0
    after = mongo_client[target.db]["metrics"].find_one()
    assert after[live] == first[live] + second[live]
    for key in shared:
        assert after[key] == 2 * imported[key] + second[key]
    summed_keys = set(list(imported)[:2000])
    for key in imported:
        if key not in shared:
            times = 2 if key in summed_keys else 1
            assert after[key] == times * imported[key], key


@pytest.mark.parametrize("strategy", ["overwrite", "sum", "missing"])
def test_planned_write_keeps_what_another_writer_changed_meanwhile(
    strategy, mongo_uri, mongo_client, target
) -> None:
    store(mongo_uri, target, {"a_total": 1, "last_updated": EARLY})
    with MetricsStore(mongo_uri, target) as metrics:
        current = metrics.read()
        imported = {"a_total": 5, "b_total": 2, "last_updated": "2024-02-01T00:00:00"}
        plan = import_plan.plan_import(current, imported, "merge", strategy)
        # Between the import's read and its write, the service records a job.
        later = datetime.datetime(2024, 3, 1)
        mongo_client[target.db]["metrics"].update_one(
            {"name": "metrics"},
            {"$inc": {"a_total": 10, "b_total": 1}, "$set": {"last_updated": later}},
        )
        after = metrics.apply(plan.pipeline, "test write")

    assert after["last_updated"] == later
    expected = {"overwrite": (5, 2), "sum": (16, 3), "missing": (11, 1)}[strategy]
    assert (after["a_total"], after["b_total"]) == expected


def test_planned_sums_have_the_servers_types(mongo_uri, target) -> None:
    stored = {
        "a": Int64(2**63 - 1),
        "b": 2**31 - 1,
        "c": 5,
        "d": Decimal128("1.25"),
        "e": Int64(7),
    }
    store(mongo_uri, target, stored)
    imported = {"a": 5, "b": 1, "c": 2.5, "d": 1, "e": 1, "f": Int64(3)}
    with MetricsStore(mongo_uri, target) as metrics:
        plan = import_plan.plan_import(metrics.read(), imported, "merge", "sum")
        after = metrics.apply(plan.pipeline, "test write")

    assert typed_values(after) == typed_values(plan.final)
    assert import_plan.mismatches(plan, after) == []


def typed_values(document: dict) -> dict[str, tuple[str, str]]:
    return {
        key: (type(value).__name__, repr(value))
        for key, value in document.items()
        if key not in BOOKKEEPING_KEYS
    }


def test_merge_sends_only_changed_keys_and_keeps_increments_to_the_others(
    mongo_uri, mongo_client, target
) -> None:
    store(mongo_uri, target, {"a_total": 5, "b_total": 1})
    with MetricsStore(mongo_uri, target) as metrics:
        imported = {"a_total": 5, "b_total": 2}
        plan = import_plan.plan_import(metrics.read(), imported, "merge")
        assert "a_total" not in str(plan.pipeline)
        # A job counted after the read raises a key the file already matched.
        mongo_client[target.db]["metrics"].update_one(
            {"name": "metrics"}, {"$inc": {"a_total": 1}}
        )
        after = metrics.apply(plan.pipeline, "test write")

    assert (after["a_total"], after["b_total"]) == (6, 2)
    assert import_plan.mismatches(plan, after) == []
    assert import_plan.mismatches(plan, {**after, "a_total": 4}) == ["a_total"]


def test_two_sums_of_one_file_planned_at_once_add_it_once(mongo_uri, target) -> None:
    store(mongo_uri, target, {"a_total": 100})
    args = argparse.Namespace(document_name="metrics", force=False)
    imported = {"a_total": 7}
    with MetricsStore(mongo_uri, target) as metrics:
        # Both runs read and plan before either writes: both pass the history check.
        plans = [
            import_plan.plan_import(metrics.read(), imported, "merge", "sum")
            for _ in range(2)
        ]
        assert not metrics.find_history("f" * 64)
        claim = import_metrics.claim_id(plans[0], args, "f" * 64)
        entry = {"document_name": "metrics", "sha256": "f" * 64, "time": EARLY}
        import_metrics.write(metrics, plans[0], entry, claim)
        with pytest.raises(UsageError, match="twice"):
            import_metrics.write(metrics, plans[1], entry, claim)
        after = metrics.read()
        history = metrics.find_history("f" * 64)

    assert after is not None and after["a_total"] == 107
    assert [entry["status"] for entry in history] == ["done"]
