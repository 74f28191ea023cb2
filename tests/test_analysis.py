"""The --analyze report: families, totals, odd keys, size and last update."""

from __future__ import annotations

import collections
import datetime
import json
from decimal import Decimal
from pathlib import Path

import bson

import analysis
import metrics_file
from metric_keys import BOOKKEEPING, FAMILIES, classify
from mongo_store import MAX_DOCUMENT_BYTES
from tests.conftest import run_script
from tests.helpers import rich_document, store, stored_rich_document

BROKEN = 'tao_job_total{tao_action="train"'


def odd_document() -> dict:
    """The rich document plus a broken labeled key and a non-numeric value."""
    return {**stored_rich_document(), BROKEN: 1, "comment": "hello"}


def test_counts_and_totals_follow_the_key_grammar() -> None:
    document = odd_document()
    result = analysis.analyze(document)
    expected = collections.Counter(classify(key) for key in document)
    assert result.counts == {family: expected[family] for family in FAMILIES}
    assert result.metric_count == len(document) - expected[BOOKKEEPING]
    assert result.bookkeeping == ["_id", "name", "last_updated"]
    assert result.unclassified == ["custom.counter", "comment"]
    assert result.broken == [BROKEN]
    assert result.non_numeric == ["comment"]
    assert result.totals["time"] == Decimal("3600.25")
    labeled_values = ("5.0", "2.50", "1.5", "1")
    assert result.totals["labeled"] == sum(Decimal(v) for v in labeled_values)
    assert result.size_bytes == len(bson.encode(document))
    assert result.last_updated == "2024-05-06T07:08:09.123000"


def test_iso_string_last_updated_is_read_as_utc() -> None:
    result = analysis.analyze({"last_updated": "2024-06-01T02:00:00+02:00"})
    assert result.last_updated == "2024-06-01T00:00:00"
    assert analysis.analyze({"last_updated": "soon"}).last_updated is None


def test_report_lines_name_families_size_and_odd_keys() -> None:
    lines = analysis.format_report(analysis.analyze(odd_document()))
    text = "\n".join(lines)
    assert lines[0] == "Metrics: 12"
    assert "  time                  1 (sum of values 3,600.25)" in lines
    assert "Bookkeeping keys: _id, name, last_updated" in lines
    assert "% of the 16 MiB limit)" in text
    assert "Newest last_updated: 2024-05-06T07:08:09.123000" in lines
    assert "Labeled keys with broken labels: 1" in lines
    assert f"  {BROKEN}" in lines
    assert "Keys whose value is not a finite number: 1" in lines


def test_long_lists_are_cut_short() -> None:
    document = {f"odd_{n}": 1 for n in range(25)}
    lines = analysis.format_report(analysis.analyze(document))
    assert "Keys that fit no family: 25" in lines
    assert "  ... and 15 more" in lines


def test_analyze_live_database(mongo_uri, location, connection_args) -> None:
    store(mongo_uri, location, rich_document())

    result = run_script("convert_to_labeled.py", "--analyze", *connection_args)

    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"TAO Telemetry: analysis of {location.db}.metrics")
    assert "Metrics: 10\n" in out
    for family, count in (("labeled", 3), ("legacy", 4), ("comprehensive", 1)):
        assert f"  {family:<14} {count:>8}" in out
    assert "Keys that fit no family: 1\n  custom.counter\n" in out
    assert "Newest last_updated: 2024-05-06T07:08:09.123000" in out


def test_analyze_file_as_json(tmp_path: Path) -> None:
    path = tmp_path / "backup.json"
    document = {**rich_document(), "last_updated": datetime.datetime(2025, 1, 2)}
    metrics_file.write_document(str(path), document)

    result = run_script("convert_to_labeled.py", "--input", str(path), "--json")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["source"] == str(path)
    assert report["metrics"] == 10
    assert report["families"]["time"] == 1
    assert report["totals"]["time"] == 3600.25
    assert report["last_updated"] == "2025-01-02T00:00:00"
    assert report["size_limit_bytes"] == MAX_DOCUMENT_BYTES
    assert report["size_bytes"] == len(bson.encode(document))


def test_analyze_without_a_document_fails_in_one_line(connection_args) -> None:
    result = run_script("convert_to_labeled.py", "--analyze", *connection_args)
    assert result.returncode == 1
    assert result.stderr.startswith("error: no metrics document in ")
    assert result.stderr.count("\n") == 1
