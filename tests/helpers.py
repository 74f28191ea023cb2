"""Documents and checks shared by the export, import and analysis tests."""

from __future__ import annotations

import datetime
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import bson
from bson.decimal128 import Decimal128
from bson.int64 import Int64

import metrics_file
from mongo_store import HISTORY_COLLECTION_SUFFIX, Location, MetricsStore
from tests.conftest import run_script

LABELED_KEY = 'tao_job_total{tao_action="train",tao_network="resnet50"}'
# Label values may hold "." and "$", which MongoDB reads as paths and operators.
DOTTED_LABELED_KEY = 'tao_job_total{tao_network="v1.2$beta",tao_version="5.3.0"}'
COMPREHENSIVE_KEY = (
    "network_resnet50_action_train_version_5_3_0_status_pass_gpu_1_A100_1"
)


def rich_document() -> dict[str, Any]:
    """Return a metrics document holding every family and every stored type."""
    return {
        "total_action_train_pass": 7,
        "total_action_evaluate_fail": Int64(3),
        "network_resnet50_action_train": Int64(2**40 + 1),
        COMPREHENSIVE_KEY: 12,
        "last_updated": datetime.datetime(2024, 5, 6, 7, 8, 9, 123000),
        "time_lapsed_today": 3600.25,
        LABELED_KEY: 5.0,
        DOTTED_LABELED_KEY: Decimal128("2.50"),
        'tao_gpu_seconds_total{tao_gpu="$A100.80GB"}': 1.5,
        "version_5_3_0_action_train": -(2**31),
        "custom.counter": 4,
    }


def store(uri: str, location: Location, document: Mapping[str, Any]) -> None:
    """Make the stored metrics document exactly this one."""
    with MetricsStore(uri, location) as metrics:
        metrics.replace(document)


def without_id(document: Mapping[str, Any] | None) -> dict[str, Any]:
    assert document is not None, "no metrics document"
    return {key: value for key, value in document.items() if key != "_id"}


def typed(document: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """List each key with its value's type and text, for readable failures."""
    return [(k, type(v).__name__, repr(v)) for k, v in document.items()]


def assert_identical(left: Mapping[str, Any], right: Mapping[str, Any]) -> None:
    """Assert two documents are the same BSON, apart from _id."""
    left, right = without_id(left), without_id(right)
    assert typed(left) == typed(right)
    assert bson.encode(left) == bson.encode(right)


def stored_rich_document() -> dict[str, Any]:
    """Return the rich document with an _id and name, as the server hands it back."""
    document = {"_id": bson.ObjectId(), "name": "metrics", **rich_document()}
    return bson.decode(bson.encode(document))


def write(path: Path, document: dict) -> str:
    """Write a backup file with its checksum; return its path."""
    metrics_file.write_document(str(path), document)
    return str(path)


def import_(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run import_metrics.py as an operator would."""
    return run_script("import_metrics.py", *args, **kwargs)


def assert_succeeded(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def assert_refused(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """Assert the one-line refusal a user must see, and return it."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    for word in words:
        assert word in result.stderr
    return result.stderr


def database_state(client, db: str) -> dict[str, list[bytes]]:
    """Every document of every collection of a database, as raw BSON."""
    database = client[db]
    return {
        name: sorted(bson.encode(doc) for doc in database[name].find())
        for name in database.list_collection_names()
    }


def history(client, location: Location) -> list[dict]:
    """Return the import history of a location, oldest first."""
    name = location.collection + HISTORY_COLLECTION_SUFFIX
    return list(client[location.db][name].find().sort("time", 1))


def one_error_line(result) -> str:
    """Assert a run failed with status 1 and exactly one line on stderr; return it."""
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]
