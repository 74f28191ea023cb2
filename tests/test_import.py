"""import_metrics.py run as an operator runs it: old server -> file -> new server."""

from __future__ import annotations

import datetime
import gzip
import hashlib
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import bson
import pytest
from bson import json_util
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import export_metrics
import import_metrics
import import_plan
import metrics_file
from metric_keys import BOOKKEEPING_KEYS, format_key
from mongo_store import Location
from tests.conftest import run_script
from tests.helpers import (
    assert_identical,
    assert_refused,
    assert_succeeded,
    database_state,
    history,
    import_,
    rich_document,
    store,
    without_id,
    write,
)
from tests.servers import REPO

RULE = "=" * 80
EARLY = datetime.datetime(2024, 1, 1, 12, 0)


@pytest.mark.parametrize("stamp", ["date", "iso string"])
def test_export_then_import_gives_back_the_identical_document(
    stamp,
    mongo_uri,
    mongo_client,
    location,
    connection_args,
    target,
    target_args,
    tmp_path: Path,
) -> None:
    old = rich_document()
    if stamp == "iso string":
        old["last_updated"] = "2024-05-06T07:08:09.123456+00:00"
    store(mongo_uri, location, old)
    old_stored = mongo_client[location.db]["metrics"].find_one()
    backup = str(tmp_path / "old_server_metrics.json.gz")

    exported = run_script("export_metrics.py", *connection_args, "-o", backup)
    assert_succeeded(exported)
    dry = import_(*target_args, "--input", backup, "--dry-run")
    assert_succeeded(dry)
    assert target.db not in mongo_client.list_database_names()
    result = import_(*target_args, "--input", backup, "--backup-dir", str(tmp_path))
    assert_succeeded(result)

    new_stored = mongo_client[target.db]["metrics"].find_one()
    assert_identical(new_stored, old_stored)
    size = os.path.getsize(backup)
    loading = (
        f"[1/4] Loading metrics from {backup}...\n"
        "   ✓ Loaded 10 metric entries\n"
        f"   ✓ File size: {size:,} bytes ({size / 2**20:.2f} MB)\n"
        "\n"
        "[2/4] Loading current metrics from MongoDB...\n"
        "   \u2139  No existing metrics in MongoDB (will create new)\n"
        "\n"
        "[3/4] Planning import operation...\n"
        "   Mode: MERGE (imported metrics added to existing)\n"
    )
    counts = "   Current metrics: 0\n   Imported metrics: 10\n   Final metrics: 10\n"
    for output in (dry.stdout, result.stdout):
        assert output.startswith(f"TAO Telemetry: Import Metrics to MongoDB\n{RULE}\n")
        assert loading in output and counts in output
    assert (
        "[4/4] DRY RUN - Previewing...\n\n"
        f"DRY RUN MODE - No changes made to MongoDB\n{RULE}\n\n"
        "What will happen:\n"
        "  ✓ 10 total metrics after merge\n"
        "  ✓ 10 new metrics will be added\n"
        "  ✓ 0 existing metrics will be updated\n"
    ) in dry.stdout
    execute = shlex.join(["--input", backup, "--uri", mongo_uri, "--db", target.db])
    assert f"To execute this import, run:\n  python import_metrics.py {execute}\n" in (
        dry.stdout
    )
    assert f"✅ Import Successful!\n{RULE}\n\n" in result.stdout
    assert result.stdout.endswith(
        "Merged metrics:\n  Previous: 0\n  Imported: 10\n  Final: 10\n"
    )
    # Nothing was there before, so there was nothing to back up.
    assert sorted(p.name for p in tmp_path.iterdir() if "pre_import" in p.name) == []


def test_dry_run_writes_nothing(
    mongo_uri, mongo_client, target, target_args, tmp_path: Path
) -> None:
    store(mongo_uri, target, {"a_total": 1, "b_total": 2, "last_updated": EARLY})
    before = database_state(mongo_client, target.db)
    backups = tmp_path / "backups"
    backups.mkdir()
    changes = {"b_total": 3, "c_total": 4, "d.total": 5, "last_updated": EARLY}
    backup = write(tmp_path / "new.json", changes)

    result = import_(
        *target_args, "-i", backup, "--dry-run", "--backup-dir", str(backups)
    )

    assert_succeeded(result)
    assert database_state(mongo_client, target.db) == before
    assert list(backups.iterdir()) == []
    assert "   ✓ Found 2 existing metrics\n" in result.stdout
    assert (
        "What will happen:\n"
        "  ✓ 4 total metrics after merge\n"
        "  ✓ 2 new metrics will be added\n"
        "  ✓ 1 existing metrics will be updated\n"
    ) in result.stdout
    execute = ["--input", backup, *target_args[:4], "--backup-dir", str(backups)]
    command = f"python import_metrics.py {shlex.join(execute)}"
    assert result.stdout.rstrip().endswith(f"To execute this import, run:\n  {command}")


def test_lowering_a_counter_is_shown_then_refused_unless_allowed(
    mongo_uri, mongo_client, target, target_args, tmp_path: Path
) -> None:
    store(mongo_uri, target, {"a_total": 10, "b_total": Int64(5)})
    before = database_state(mongo_client, target.db)
    backup = write(tmp_path / "old.json", {"a_total": 7, "b_total": 6, "c_total": 1})

    dry = import_(*target_args, "-i", backup, "--dry-run", "--json")
    refused = import_(*target_args, "-i", backup, "--no-backup")
    assert database_state(mongo_client, target.db) == before
    allowed = import_(*target_args, "-i", backup, "--no-backup", "--allow-decrease")

    # The dry run fails as the real run would, after showing its plan.
    assert dry.returncode == 1
    plan = json.loads(dry.stdout)
    assert plan["decreases"] == [{"key": "a_total", "current": 10, "new": 7}]
    assert plan["dry_run"] is True and plan["final"] == 3
    assert "1 counters would go down" in dry.stderr
    assert "   ⚠  1 counters would go down (current -> new):\n" in refused.stdout
    assert "      a_total: 10 -> 7\n" in refused.stdout
    assert_refused(refused, "a_total (10 -> 7)", "--allow-decrease")
    assert_succeeded(allowed)
    document = without_id(mongo_client[target.db]["metrics"].find_one())
    assert document == {"name": "metrics", "a_total": 7, "b_total": 6, "c_total": 1}


def test_sum_adds_counts_once_and_records_each_import(
    mongo_uri, mongo_client, target, target_args, tmp_path: Path
) -> None:
    late = "2024-06-01T00:00:00Z"
    store(
        mongo_uri,
        target,
        {"a_total": 1, "time_lapsed_today": 30, "last_updated": EARLY},
    )
    backup = write(
        tmp_path / "old.json",
        {"a_total": 2, "c_total": 3, "time_lapsed_today": 99, "last_updated": late},
    )
    digest = hashlib.sha256(Path(backup).read_bytes()).hexdigest()
    arguments = [*target_args, "-i", backup, "--strategy", "sum", "--no-backup"]

    first = import_(*arguments)
    again = import_(*arguments)
    forced = import_(*arguments, "--force")

    assert_succeeded(first)
    assert_refused(again, "already imported", "--force")
    assert_succeeded(forced)
    document = without_id(mongo_client[target.db]["metrics"].find_one())
    assert document == {
        "name": "metrics",
        "a_total": 5,
        "time_lapsed_today": 30,
        "last_updated": late,
        "c_total": 6,
    }
    entries = history(mongo_client, target)
    assert len(entries) == 2
    assert [entry["sha256"] for entry in entries] == [digest, digest]
    assert entries[0]["mode"] == "merge" and entries[0]["strategy"] == "sum"
    assert entries[0]["counts"]["added"] == 1 and entries[0]["counts"]["final"] == 3
    assert isinstance(entries[0]["time"], datetime.datetime)
    assert sorted(tmp_path.iterdir()) == [Path(backup), Path(backup + ".sha256")]


def test_missing_adds_only_absent_keys_and_prints_json(
    mongo_uri, mongo_client, target, target_args, tmp_path: Path
) -> None:
    store(mongo_uri, target, {"a_total": 1})
    backup = write(tmp_path / "old.json", {"a_total": 50, "b_total": 2})

    result = import_(
        *target_args, "-i", backup, "--strategy", "missing", "--json", "--no-backup"
    )

    assert_succeeded(result)
    summary = json.loads(result.stdout)
    assert summary["strategy"] == "missing" and summary["backup"] is None
    assert (summary["added"], summary["final"]) == (1, 2)
    document = without_id(mongo_client[target.db]["metrics"].find_one())
    assert document == {"name": "metrics", "a_total": 1, "b_total": 2}


def run_on_terminal(args: list[str], answer: str) -> subprocess.CompletedProcess:
    """Run the import with a pseudo-terminal as stdin and type an answer."""
    controller, terminal = os.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "import_metrics.py"), *args],
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.close(terminal)
        os.write(controller, answer.encode())
        out, err = process.communicate(timeout=60)
    finally:
        os.close(controller)
    return subprocess.CompletedProcess(args, process.returncode, out, err)


def test_replace_asks_for_yes_on_a_terminal_and_keeps_name_and_id(
    mongo_uri, mongo_client, target, target_args, tmp_path: Path
) -> None:
    store(mongo_uri, target, {"a_total": 1, "b_total": 2})
    collection = mongo_client[target.db]["metrics"]
    original = collection.find_one()
    file_document = {"_id": bson.ObjectId(), "name": "old", "c_total": Int64(3)}
    backup = write(tmp_path / "old.json", file_document)
    arguments = [*target_args, "-i", backup, "--replace", "--no-backup"]

    without_terminal = import_(*arguments)
    declined = run_on_terminal(arguments, "no\n")
    ended = run_on_terminal(arguments, "\x04")
    assert collection.find_one() == original
    confirmed = run_on_terminal([*arguments, "--json"], "YES\n")

    assert_refused(without_terminal, "--yes")
    assert declined.stderr.startswith(
        "This deletes all 2 current metrics and writes 1 from the file. "
        "Type YES to continue: error: replace cancelled"
    )
    assert declined.returncode == ended.returncode == 1
    assert "replace cancelled; nothing was written" in ended.stderr
    assert "Traceback" not in ended.stderr
    assert_succeeded(confirmed)
    summary = json.loads(confirmed.stdout)
    assert (summary["mode"], summary["removed"], summary["final"]) == ("replace", 2, 1)
    after = collection.find_one()
    assert after == {"_id": original["_id"], "name": "metrics", "c_total": 3}
    assert type(after["c_total"]) is Int64


def test_backup_before_writing_rolls_the_import_back(
    mongo_uri, mongo_client, target, target_args, tmp_path: Path
) -> None:
    store(mongo_uri, target, rich_document())
    collection = mongo_client[target.db]["metrics"]
    before = collection.find_one()
    changes = {"total_action_train_pass": 1, "new_total": 2, "x.y$z": 3.5}
    incoming = write(tmp_path / "incoming.json", changes)
    backups = tmp_path / "backups"
    backups.mkdir()

    merged = import_(
        *target_args, "-i", incoming, "--allow-decrease", "--backup-dir", str(backups)
    )
    assert_succeeded(merged)
    assert collection.find_one()["x.y$z"] == 3.5
    saved = re.search(r"Backup of the previous document: (\S+)", merged.stdout)
    undo = re.search(r"\(undo with: python import_metrics\.py (.+)\)\n", merged.stdout)
    assert saved and undo, merged.stdout
    backup = saved.group(1)
    assert Path(backup).parent == backups
    assert stat.S_IMODE(os.stat(backup).st_mode) == 0o600
    assert_identical(metrics_file.read_document(backup).document, before)

    # The operator copies the printed command and confirms on the command line.
    undo_args = shlex.split(undo.group(1))
    assert undo_args == ["--input", backup, "--replace", *target_args[:4]]
    rollback = import_(*undo_args, "--yes", "--backup-dir", str(backups))

    assert_succeeded(rollback)
    assert_identical(collection.find_one(), before)
    assert [entry["mode"] for entry in history(mongo_client, target)] == [
        "merge",
        "replace",
    ]
    # The rollback itself kept the merged document, with its checksum.
    assert len(list(backups.iterdir())) == 4


def test_reads_shell_output_from_stdin(mongo_client, target, target_args) -> None:
    shell_output = (
        "MongoDB shell version v4.4.29\n"
        "connecting to: mongodb://127.0.0.1:27017/tao\n"
        "MongoDB server version: 4.4.29\n"
        '{\n\t"_id" : ObjectId("65a1b2c3d4e5f60718293a4b"),\n'
        '\t"name" : "metrics",\n'
        '\t"total_action_train_pass" : NumberLong("12"),\n'
        '\t"total_action_train_fail" : NumberInt(2),\n'
        '\t"last_updated" : ISODate("2024-03-04T05:06:07.890Z")\n}\n'
    )

    result = import_(*target_args, "--input", "-", input=shell_output)

    assert_succeeded(result)
    document = mongo_client[target.db]["metrics"].find_one()
    assert without_id(document) == {
        "name": "metrics",
        "total_action_train_pass": 12,
        "total_action_train_fail": 2,
        "last_updated": datetime.datetime(2024, 3, 4, 5, 6, 7, 890000),
    }
    assert type(document["total_action_train_pass"]) is Int64
    assert document["_id"] != bson.ObjectId("65a1b2c3d4e5f60718293a4b")


def test_changed_file_stops_before_the_database(
    mongo_client, target, target_args, tmp_path: Path
) -> None:
    backup = write(tmp_path / "old.json", {"a_total": 1})
    Path(backup).write_text('{"a_total": 1000}\n')

    result = import_(*target_args, "-i", backup)

    assert_refused(result, "checksum mismatch", backup)
    assert target.db not in mongo_client.list_database_names()


def test_document_over_the_size_limit_is_refused_before_sending(
    mongo_uri, mongo_client, target, target_args, tmp_path: Path
) -> None:
    store(mongo_uri, target, {"a_total": 1})
    before = database_state(mongo_client, target.db)
    # About 17 MB of long keys, each a valid metric name.
    huge = {f"total_{n:06d}_" + "k" * 2000: 1 for n in range(8600)}
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(huge))

    result = import_(*target_args, "-i", str(path), "--no-backup")

    assert_refused(result, "over MongoDB's 16,777,216-byte limit")
    assert database_state(mongo_client, target.db) == before


TRUNCATED = metrics_file.dumps_document(rich_document(), pretty=True)[:-40]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "does not exist"),
        ("", "is empty"),
        ('{"a_total": 1,, "b": 2}', "invalid JSON at line 1 column 15"),
        (TRUNCATED, "the file looks truncated"),
        ('[{"a_total": 1}]', "the top level is a list, not one document"),
        ('{"a_total": 1}\n{"a_total": 2}\n', "holds 2 documents"),
        ('{"a_total": 1, "a_total": 2}', "duplicate keys: 'a_total'"),
        ('{"ok": 1, "a_total": "3"}', "'a_total': not a number (str '3')"),
        ('{"a_total": false}', "'a_total': not a number (bool False)"),
        ('{"a_total": null}', "'a_total': not a number (NoneType None)"),
        ('{"a_total": {"$numberDouble": "NaN"}}', "'a_total': not finite (nan)"),
        ('{"a_total": NaN}', "NaN is not valid JSON"),
        ('{"": 1}', "'': empty key"),
        ('{"a\\u0000": 1}', "'a\\x00': key holds a NUL character"),
        ('{"tao_job_total{tao_action=train}": 1}', "broken labels"),
        ('{"name": "metrics", "_id": 1}', "holds no metrics"),
    ],
)
def test_bad_input_is_one_line_and_touches_nothing(
    content, problem, mongo_client, target, target_args, tmp_path: Path, capsys
) -> None:
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)

    status = import_metrics.main([*target_args, "-i", str(path)])

    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("error: ") and err.count("\n") == 1
    assert problem in err
    assert target.db not in mongo_client.list_database_names()


def importable(key: str) -> bool:
    # The test server evaluates a key spelled exactly like an operator
    # ("$ifNull") even inside $literal, so such keys are left out here.
    operator_like = re.fullmatch(r"\$[A-Za-z]+", key) is not None
    return (
        key not in BOOKKEEPING_KEYS
        and import_plan.key_problem(key) is None
        and not operator_like
    )


label_values = st.text(alphabet=st.sampled_from('a.$_{}",=\\\n é'), max_size=8)
metric_keys_drawn = st.one_of(
    st.text(min_size=1, max_size=20).filter(importable),
    st.dictionaries(st.sampled_from(["tao_action", "tao_gpu"]), label_values).map(
        lambda labels: format_key("tao_job_total", labels)
    ),
)
metric_values = st.one_of(
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**63), 2**63 - 1).map(Int64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.decimals(-(10**30), 10**30, allow_nan=False, allow_infinity=False, places=2).map(
        lambda number: Decimal128(str(number))
    ),
)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    metrics=st.dictionaries(metric_keys_drawn, metric_values, min_size=1, max_size=12)
)
def test_any_document_survives_export_and_import(
    metrics, mongo_uri, mongo_client, tmp_path_factory, capsys
) -> None:
    old, new = (Location(db=f"rt_{uuid.uuid4().hex[:10]}") for _ in range(2))
    path = str(tmp_path_factory.mktemp("round_trip") / "backup.json")
    try:
        store(mongo_uri, old, metrics)
        uri = ["--uri", mongo_uri, "--timeout", "5"]
        assert export_metrics.main([*uri, "--db", old.db, "-o", path]) == 0
        assert import_metrics.main([*uri, "--db", new.db, "-i", path]) == 0
        assert_identical(
            mongo_client[new.db]["metrics"].find_one(),
            mongo_client[old.db]["metrics"].find_one(),
        )
    finally:
        capsys.readouterr()
        mongo_client.drop_database(old.db)
        mongo_client.drop_database(new.db)


def test_location_and_backup_folder_come_from_the_environment(
    mongo_uri, mongo_client, location, target, tmp_path: Path
) -> None:
    source = Location(location.db, "telemetry", "tao")
    destination = Location(target.db, "stats", "tao_metrics")
    store(mongo_uri, source, rich_document())
    store(mongo_uri, destination, {"total_action_train_pass": 1})
    backups = tmp_path / "backups"
    backups.mkdir()
    backup = str(tmp_path / "backup.json")

    def env(where: Location) -> dict[str, str]:
        return {
            "MONGODB_URI": mongo_uri,
            "MONGODB_DB": where.db,
            "MONGODB_COLLECTION": where.collection,
            "MONGODB_DOCUMENT_NAME": where.document_name,
            "MONGODB_TIMEOUT": "5",
            "TAO_BACKUP_DIR": str(backups),
        }

    exported = run_script("export_metrics.py", "-o", backup, env=env(source))
    imported = import_("-i", backup, "--allow-decrease", env=env(destination))

    assert_succeeded(exported)
    assert_succeeded(imported)
    stats = mongo_client[target.db]["stats"]
    document = stats.find_one({"name": "tao_metrics"})
    assert_identical(document, {"name": "tao_metrics", **rich_document()})
    assert len(list(backups.glob("pre_import_backup_*.json"))) == 1
    assert len(history(mongo_client, destination)) == 1
    assert mongo_client[target.db]["metrics"].count_documents({}) == 0


def test_reads_mongoexport_output(
    mongo_uri, mongo_client, location, target, target_args, tmp_path: Path
) -> None:
    store(mongo_uri, location, rich_document())
    source = mongo_client[location.db]["metrics"].find_one()
    # mongoexport writes one canonical Extended JSON document per line.
    line = json_util.dumps(
        source, json_options=json_util.CANONICAL_JSON_OPTIONS, separators=(",", ":")
    )
    path = tmp_path / "metrics.json.gz"
    path.write_bytes(gzip.compress(line.encode() + b"\n"))

    result = import_(*target_args, "--input", str(path))

    assert_succeeded(result)
    assert_identical(mongo_client[target.db]["metrics"].find_one(), source)
