"""Faults during a migration: cut connections, a killed server, full disks, bad files.

Every fault must end in exit status 1 with one line on stderr (or, where the
driver's single retry covers it, in success), and leave the metrics document
exactly as it was before or exactly as the import meant it to be.
"""

from __future__ import annotations

import datetime
import gzip
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pymongo
import pytest
from bson import json_util
from pymongo import uri_parser

import import_metrics
import labeled
import metrics_file
from sample_data import sample_jobs
from tests.conftest import run_script
from tests.helpers import one_error_line
from tests.proxy import DOWN, UP, Fault, Proxy
from tests.servers import REPO, WireServer, free_port

EARLY = datetime.datetime(2025, 3, 1, 12, 0, tzinfo=datetime.UTC)
LATE = datetime.datetime(2025, 4, 1, 12, 0, tzinfo=datetime.UTC)


def canonical(document: dict | None) -> str:
    """Spell a document with every value's BSON type, keys sorted, for comparing."""
    assert document is not None
    return json_util.dumps(
        dict(sorted(document.items())), json_options=json_util.CANONICAL_JSON_OPTIONS
    )


def old_metrics() -> dict:
    return labeled.apply_locally({}, sample_jobs(120, seed=1), EARLY)


def newer_metrics() -> dict:
    """The same server a month later: every counter grew, new keys appeared."""
    return labeled.apply_locally(old_metrics(), sample_jobs(80, seed=2), LATE)


def upstream_port(uri: str) -> int:
    host, port = uri_parser.parse_uri(uri)["nodelist"][0]
    assert host in ("127.0.0.1", "localhost"), "the proxy forwards to this machine"
    return port


def leftovers(folder: Path) -> list[str]:
    """List temporary files an interrupted write left in folder."""
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


@pytest.fixture
def seeded(collection) -> dict:
    """Store the old document; return it as read back."""
    collection.insert_one({"name": "metrics", **old_metrics()})
    return collection.find_one({"name": "metrics"})


@pytest.fixture
def newer_file(tmp_path: Path) -> Path:
    path = tmp_path / "newer.json"
    metrics_file.write_document(str(path), newer_metrics())
    return path


def expected_after(old: dict) -> dict:
    """The document a merge or replace of newer_file over old must leave."""
    return {"_id": old["_id"], "name": "metrics", **newer_metrics()}


def import_through(proxy: Proxy, location, source: Path, backups: Path, *extra: str):
    return run_script(
        "import_metrics.py",
        *("--input", str(source), "--backup-dir", str(backups), *extra),
        *("--uri", proxy.uri, "--db", location.db, "--timeout", "10"),
    )


def roll_back(mongo_uri: str, location, backups: Path, capsys) -> None:
    """Restore the pre-import backup the way an operator would."""
    found = sorted(backups.glob("pre_import_backup_*.json"))
    assert len(found) == 1, found
    assert (backups / (found[0].name + ".sha256")).exists()
    code = import_metrics.main(
        [
            *("--input", str(found[0]), "--replace", "--yes", "--no-backup"),
            *("--uri", mongo_uri, "--db", location.db, "--timeout", "5"),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err


MODES = {"merge": (), "replace": ("--replace", "--yes")}


@pytest.mark.parametrize(
    ("mode", "direction", "cut_at", "outcome"),
    [
        ("merge", UP, 64, "old"),
        ("merge", UP, -1, "old"),
        ("merge", DOWN, 0.5, "new"),
        ("replace", UP, 0.5, "old"),
        ("replace", DOWN, 0.5, "new"),
    ],
    ids=[
        "merge-request-byte-64",
        "merge-request-last-byte",
        "merge-reply-half",
        "replace-request-half",
        "replace-reply-half",
    ],
)
def test_write_cut_on_every_try_fails_cleanly(
    mongo_uri, location, collection, seeded, newer_file, tmp_path, capsys,
    mode, direction, cut_at, outcome,
):  # fmt: skip
    fault = Fault("findAndModify", direction, cut_at, times=None)
    with Proxy(upstream_port(mongo_uri), fault) as proxy:
        result = import_through(proxy, location, newer_file, tmp_path, *MODES[mode])

    line = one_error_line(result)
    assert "connection to MongoDB lost" in line
    assert fault.cuts == 2, "the driver retries a write once"
    after = collection.find_one({"name": "metrics"})
    wanted = seeded if outcome == "old" else expected_after(seeded)
    assert canonical(after) == canonical(wanted)
    assert leftovers(tmp_path) == []
    roll_back(mongo_uri, location, tmp_path, capsys)
    assert canonical(collection.find_one({"name": "metrics"})) == canonical(seeded)


@pytest.mark.parametrize(
    ("mode", "direction"), [("merge", UP), ("replace", DOWN)], ids=["merge", "replace"]
)
def test_write_cut_once_is_retried(
    mongo_uri, location, collection, seeded, newer_file, tmp_path, mode, direction
):
    fault = Fault("findAndModify", direction, 0.5, times=1)
    with Proxy(upstream_port(mongo_uri), fault) as proxy:
        result = import_through(proxy, location, newer_file, tmp_path, *MODES[mode])

    assert result.returncode == 0, result.stderr
    assert fault.cuts == 1
    after = collection.find_one({"name": "metrics"})
    assert canonical(after) == canonical(expected_after(seeded))


def test_sum_retried_after_a_lost_reply_adds_once(
    mongo_uri, location, collection, seeded, tmp_path
):
    increments = {"total_action_train_pass": 3, "total_action_export_fail": 2}
    source = tmp_path / "increments.json"
    metrics_file.write_document(str(source), increments)
    fault = Fault("findAndModify", DOWN, 0.5, times=1)
    with Proxy(upstream_port(mongo_uri), fault) as proxy:
        result = import_through(
            proxy, location, source, tmp_path, "--strategy", "sum", "--no-backup"
        )

    assert result.returncode == 0, result.stderr
    assert fault.cuts == 1
    after = collection.find_one({"name": "metrics"})
    for key, value in increments.items():
        assert after[key] == seeded.get(key, 0) + value


def test_export_cut_while_reading_leaves_no_file(mongo_uri, location, seeded, tmp_path):
    output = tmp_path / "export.json"
    fault = Fault("find", DOWN, 0.5, times=None)
    with Proxy(upstream_port(mongo_uri), fault) as proxy:
        result = run_script(
            "export_metrics.py",
            *("--output", str(output)),
            *("--uri", proxy.uri, "--db", location.db, "--timeout", "10"),
        )

    assert "connection to MongoDB lost" in one_error_line(result)
    assert fault.cuts == 2, "the driver retries a read once"
    assert sorted(os.listdir(tmp_path)) == []


def test_export_cut_once_is_retried(mongo_uri, location, seeded, tmp_path):
    output = tmp_path / "export.json"
    fault = Fault("find", DOWN, 0.5, times=1)
    with Proxy(upstream_port(mongo_uri), fault) as proxy:
        result = run_script(
            "export_metrics.py",
            *("--output", str(output)),
            *("--uri", proxy.uri, "--db", location.db, "--timeout", "10"),
        )

    assert result.returncode == 0, result.stderr
    assert fault.cuts == 1
    loaded = metrics_file.read_document(str(output)).document
    assert canonical(loaded) == canonical(seeded)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("direction", "outcomes"),
    [(UP, ("old",)), (DOWN, ("old", "new"))],
    ids=["before-the-write-arrives", "after-the-write-arrives"],
)
def test_server_killed_during_import(tmp_path, newer_file, capsys, direction, outcomes):
    storage = tmp_path / "storage"
    backups = tmp_path / "backups"
    backups.mkdir()
    server = WireServer(storage_path=str(storage)).start()
    try:
        with pymongo.MongoClient(server.uri) as client:
            client.metrics.metrics.insert_one({"name": "metrics", **old_metrics()})
            old = client.metrics.metrics.find_one({"name": "metrics"})
        fault = Fault("findAndModify", direction, 0, times=1, hold=True)
        with Proxy(server.port, fault) as proxy:
            env = {"PYTHONDONTWRITEBYTECODE": "1"}
            command = [
                *("--input", str(newer_file), "--backup-dir", str(backups)),
                *("--uri", proxy.uri, "--timeout", "30"),
            ]
            child = subprocess.Popen(
                [sys.executable, str(REPO / "import_metrics.py"), *command],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, **env},
            )
            try:
                assert fault.seen.wait(60), "the import never sent its write"
                server.stop(kill=True)
                server = WireServer(storage_path=str(storage), port=server.port)
                server.start()
                fault.release.set()
                stdout, stderr = child.communicate(timeout=90)
            finally:
                fault.release.set()
                if child.poll() is None:
                    child.kill()
                    child.wait()
        with pymongo.MongoClient(server.uri) as client:
            after = client.metrics.metrics.find_one({"name": "metrics"})
        new = {"_id": old["_id"], "name": "metrics", **newer_metrics()}
        states = {"old": canonical(old), "new": canonical(new)}
        if child.returncode == 0:
            assert canonical(after) == states["new"]
        else:
            assert child.returncode == 1, stdout + stderr
            assert len(stderr.strip().splitlines()) == 1, stderr
            assert canonical(after) in [states[name] for name in outcomes]
        uri = server.uri
        found = sorted(backups.glob("pre_import_backup_*.json"))
        assert len(found) == 1
        code = import_metrics.main(
            [
                *("--input", str(found[0]), "--replace", "--yes", "--no-backup"),
                *("--uri", uri, "--timeout", "5"),
            ]
        )
        assert code == 0, capsys.readouterr().err
        with pymongo.MongoClient(uri) as client:
            restored = client.metrics.metrics.find_one({"name": "metrics"})
        assert canonical(restored) == canonical(old)
    finally:
        server.stop()


def limit_file_size(limit: int):
    """Return a preexec_fn capping file size, with SIGXFSZ ignored so writes fail."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def run_limited(script: str, limit: int, *args: str):
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        preexec_fn=limit_file_size(limit),
        timeout=120,
    )


@pytest.mark.parametrize("name", ["export.json", "export.json.gz"])
def test_export_with_the_file_size_limit_hit(connection_args, seeded, tmp_path, name):
    output = tmp_path / name
    result = run_limited(
        "export_metrics.py", 2048, "--output", str(output), *connection_args
    )

    line = one_error_line(result)
    assert "File too large" in line and str(output) in line
    assert os.listdir(tmp_path) == []


def test_import_aborts_when_the_backup_cannot_be_written(
    connection_args, collection, seeded, newer_file, tmp_path
):
    backups = tmp_path / "backups"
    backups.mkdir()
    result = run_limited(
        "import_metrics.py",
        4096,
        *("--input", str(newer_file), "--backup-dir", str(backups)),
        *connection_args,
    )

    line = one_error_line(result)
    assert "File too large" in line and "nothing was written to MongoDB" in line
    assert os.listdir(backups) == []
    after = collection.find_one({"name": "metrics"})
    assert canonical(after) == canonical(seeded)


# Damaged backup files: truncated, or one byte inverted.


def damaged_versions(data: bytes) -> list[tuple[str, bytes]]:
    versions = []
    for step in range(20):
        cut = len(data) * step // 20
        versions.append((f"truncated to {cut} of {len(data)} bytes", data[:cut]))
    positions = {0, len(data) - 1, *(len(data) * step // 20 for step in range(20))}
    for position in sorted(positions):
        flipped = bytearray(data)
        flipped[position] ^= 0xFF
        versions.append((f"byte {position} inverted", bytes(flipped)))
    return versions


PARSE_WORDS = ("truncated", "invalid JSON", "not UTF-8", "gzip", "is empty")


@pytest.mark.parametrize("compressed", [False, True], ids=["json", "gz"])
@pytest.mark.parametrize("checksum", [True, False], ids=["sha256", "no-sha256"])
def test_damaged_backup_refused_before_the_database(
    tmp_path, capsys, compressed, checksum
):
    original = old_metrics()
    good = tmp_path / ("good.json.gz" if compressed else "good.json")
    metrics_file.write_document(str(good), original, pretty=True)
    data = good.read_bytes()
    target = tmp_path / ("damaged.json.gz" if compressed else "damaged.json")
    # Nothing listens here: reaching the database would fail with another message.
    dead_uri = f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"

    for what, damaged in damaged_versions(data):
        target.write_bytes(damaged)
        sidecar = Path(str(target) + ".sha256")
        if checksum:
            sidecar.write_text((tmp_path / (good.name + ".sha256")).read_text())
        elif sidecar.exists():
            sidecar.unlink()
        try:
            loaded = metrics_file.read_document(str(target))
        except metrics_file.FileError as exc:
            message = str(exc)
        else:
            # Only gzip header bytes outside its CRC can change without harm.
            assert compressed and not checksum, what
            assert canonical(loaded.document) == canonical(original), what
            assert gzip.decompress(damaged) == gzip.decompress(data)
            continue
        if checksum:
            assert "checksum mismatch" in message, (what, message)
        else:
            assert any(word in message for word in PARSE_WORDS), (what, message)
        code = import_metrics.main(
            ["--input", str(target), "--uri", dead_uri, "--timeout", "0.5"]
        )
        err = capsys.readouterr().err
        assert code == 1, what
        assert err.strip().splitlines() == [f"error: {message}"], what


def test_damaged_file_without_checksum_names_the_problem(tmp_path):
    path = tmp_path / "cut.json"
    text = json.dumps(old_metrics())
    path.write_text(text[: len(text) // 2])
    with pytest.raises(metrics_file.FileError, match="truncated"):
        metrics_file.read_document(str(path))
