"""export_metrics.py run as an operator runs it, against a real server."""

from __future__ import annotations

import collections
import json
import re
import stat
import subprocess
from pathlib import Path

from metric_keys import BOOKKEEPING, classify
from metrics_file import parse_text, read_document
from tests.conftest import run_script
from tests.helpers import assert_identical, rich_document, store


def family_counts(document: dict) -> dict[str, int]:
    counts = collections.Counter(classify(key) for key in document)
    counts.pop(BOOKKEEPING, None)
    return dict(counts)


def test_export_writes_an_exact_checksummed_file_and_reports_it(
    mongo_uri, location, collection, connection_args, tmp_path: Path
) -> None:
    store(mongo_uri, location, rich_document())
    collection.insert_many([{"name": "other"}, {"unrelated": True}])
    stored = collection.find_one({"name": "metrics"})
    # Only one of two documents with the metrics name can be exported.
    collection.insert_one({"name": "metrics", "total_action_train_pass": 99})
    output = tmp_path / "old_server_metrics.json"

    result = run_script(
        "export_metrics.py", *connection_args, "--output", str(output), "--pretty"
    )

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    loaded = read_document(str(output))
    assert_identical(loaded.document, stored)
    assert loaded.document["_id"] == stored["_id"]
    assert output.read_text().startswith('{\n  "_id"')
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    checked = subprocess.run(
        ["sha256sum", "-c", output.name + ".sha256"], cwd=tmp_path, capture_output=True
    )
    assert checked.returncode == 0
    report = result.stdout
    counts = family_counts(rich_document())
    assert f"Exported {sum(counts.values())} metrics" in report
    for family, count in counts.items():
        assert re.search(rf"^\s+{family}\s+{count}$", report, re.MULTILINE), family
    size = output.stat().st_size
    assert f"File size: {size:,} bytes ({size / 2**20:.2f} MB)" in report
    assert f"python import_metrics.py --input {output} --dry-run" in report
    assert "holds 3 other documents" in report


def test_export_to_stdout_keeps_the_report_on_stderr(
    mongo_uri, location, connection_args, tmp_path: Path
) -> None:
    store(mongo_uri, location, rich_document())

    result = run_script("export_metrics.py", *connection_args, "-o", "-", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    document, _ = parse_text(result.stdout)
    assert_identical(document, {"name": "metrics", **rich_document()})
    assert "Exported 10 metrics" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_export_names_its_file_by_time_and_compresses_gz(
    mongo_uri, location, connection_args, tmp_path: Path
) -> None:
    store(mongo_uri, location, rich_document())

    default = run_script("export_metrics.py", *connection_args, cwd=tmp_path)
    compressed = run_script(
        "export_metrics.py", *connection_args, "-o", "m.json.gz", cwd=tmp_path
    )

    assert default.returncode == 0, default.stderr
    assert compressed.returncode == 0, compressed.stderr
    names = sorted(path.name for path in tmp_path.iterdir())
    assert len(names) == 4
    assert re.fullmatch(r"metrics_backup_\d{8}_\d{6}\.json", names[2]), names
    assert names[3] == names[2] + ".sha256"
    assert names[:2] == ["m.json.gz", "m.json.gz.sha256"]
    assert (tmp_path / "m.json.gz").read_bytes()[:2] == b"\x1f\x8b"
    plain = read_document(str(tmp_path / names[2])).document
    assert_identical(read_document(str(tmp_path / "m.json.gz")).document, plain)


def test_export_refuses_to_overwrite_unless_asked(
    mongo_uri, location, connection_args, tmp_path: Path
) -> None:
    store(mongo_uri, location, {"total_action_train_pass": 1})
    output = tmp_path / "backup.json"
    output.write_text("keep me\n")

    refused = run_script("export_metrics.py", *connection_args, "-o", str(output))
    forced = run_script(
        "export_metrics.py",
        *connection_args,
        "-o",
        str(output),
        "--overwrite",
        "--json",
    )

    assert refused.returncode == 1
    assert refused.stderr == (
        f"error: {output} already exists; choose another name or pass --overwrite\n"
    )
    assert forced.returncode == 0, forced.stderr
    summary = json.loads(forced.stdout)
    assert summary["metrics"] == 1 and summary["families"]["legacy"] == 1
    assert summary["bytes"] == output.stat().st_size
    assert read_document(str(output)).document["total_action_train_pass"] == 1


def test_export_without_a_document_fails_in_one_line(
    connection_args, tmp_path: Path
) -> None:
    output = tmp_path / "backup.json"

    result = run_script("export_metrics.py", *connection_args, "-o", str(output))

    assert result.returncode == 1
    assert result.stderr.startswith("error: no metrics document in ")
    assert result.stderr.count("\n") == 1
    assert "--db" in result.stderr
    assert list(tmp_path.iterdir()) == []
