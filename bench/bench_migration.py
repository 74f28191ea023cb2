#!/usr/bin/env python3
"""Time the migration scripts against plain pymongo baselines, as whole processes.

Fills a metrics document with realistic keys (the job recorder's labeled,
legacy and comprehensive families, computed with its builders and written in
one replace), then runs each script and a minimal baseline against the same
wire server, and prints wall time and peak memory with their ratios.

At about 200 bytes a key, 100,000 keys of the recorder's mix weigh some
20 MB, more than MongoDB stores in one document; the largest document under
16 MiB (about 84,000 keys) is the top size instead, and sizes over the limit
are skipped.

    python bench/bench_migration.py            # 2,000 / 20,000 keys and the
                                               # largest document under 16 MiB
    python bench/bench_migration.py --quick    # 2,000 and 20,000 keys
    python bench/bench_migration.py --sizes 5000,50000 --repeat 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import bson  # noqa: E402
import pymongo  # noqa: E402

import labeled  # noqa: E402
from mongo_store import MAX_DOCUMENT_BYTES  # noqa: E402
from sample_data import sample_jobs  # noqa: E402
from tests.servers import WireServer  # noqa: E402

LARGEST = "largest"
NOW = datetime.datetime(2025, 6, 1, 12, 0, tzinfo=datetime.UTC)
JOBS_PER_KEY = 0.45  # about how many jobs it takes to add one new key

EXPORT_BASELINE = """
import json, sys, pymongo
from bson import json_util
uri, db, path = sys.argv[1:4]
with pymongo.MongoClient(uri) as client:
    document = client[db].metrics.find_one({"name": "metrics"})
with open(path, "w") as stream:
    json.dump(document, stream, default=json_util.default)
"""
IMPORT_BASELINE = """
import json, sys, pymongo
uri, db, path = sys.argv[1:4]
with open(path) as stream:
    document = json.load(stream)
document.pop("_id", None)
with pymongo.MongoClient(uri) as client:
    client[db].metrics.replace_one({"name": "metrics"}, document, upsert=True)
"""
STARTUP = "import import_metrics"


@dataclass
class Run:
    seconds: float
    peak_bytes: int


@dataclass
class Row:
    keys: int
    document_bytes: int
    file_bytes: int
    operation: str
    run: Run
    baseline_name: str
    baseline: Run


# Peak memory is read from a small launcher's own fork: a child forked from
# this process would inherit this process's (large) resident size as its peak.
LAUNCHER = """
import os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - start
print(seconds, usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status))
"""


def measure(
    command: Sequence[str],
    repeat: int,
    cwd: Path,
    before: Callable[[], object] | None = None,
) -> Run:
    """Run a command repeat times; return the best wall time and the peak RSS.

    The machine is shared: the best of several runs is the least disturbed.
    """
    times, peaks = [], []
    for _ in range(repeat):
        if before:
            before()
        launched = subprocess.run(
            [sys.executable, "-c", LAUNCHER, *command],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        seconds, peak, code = launched.stdout.split()
        if int(code) != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{launched.stderr}")
        times.append(float(seconds))
        peaks.append(int(peak))
    return Run(min(times), max(peaks))


def best(first: Run, second: Run) -> Run:
    return Run(
        min(first.seconds, second.seconds), max(first.peak_bytes, second.peak_bytes)
    )


def script(name: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / name), *args]


def inline(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


def realistic_metrics(sizes: Sequence[int | str]) -> dict[int | str, dict[str, Any]]:
    """Build one document per size from sample jobs; LARGEST fills up to 16 MiB."""
    wanted = max((size for size in sizes if size != LARGEST), default=0)
    if LARGEST in sizes:
        wanted = max(wanted, 90_000)
    jobs = int(wanted * JOBS_PER_KEY) + 100
    while True:
        full = labeled.apply_locally({}, sample_jobs(jobs, seed=11), NOW)
        bookkeeping = {
            key: full.pop(key) for key in (labeled.LAST_UPDATED, labeled.TIME_KEY)
        }
        if len(full) >= wanted:
            break
        jobs = int(jobs * 1.3)
    keys = list(full)
    documents: dict[int | str, dict[str, Any]] = {}
    for size in sizes:
        count = largest_prefix(full, keys) if size == LARGEST else int(size)
        documents[size] = {
            **{key: full[key] for key in keys[:count]},
            **bookkeeping,
        }
    return documents


def stored_bytes(metrics: dict[str, Any]) -> int:
    return len(bson.encode({"_id": bson.ObjectId(), "name": "metrics", **metrics}))


def largest_prefix(full: dict[str, Any], keys: list[str]) -> int:
    """Return how many keys, in order, still fit under the document limit."""
    low, high = 0, len(keys)
    extra = {labeled.LAST_UPDATED: NOW.isoformat(), labeled.TIME_KEY: 1 << 40}
    while low < high:
        middle = (low + high + 1) // 2
        metrics = {key: full[key] for key in keys[:middle]}
        if stored_bytes({**metrics, **extra}) <= MAX_DOCUMENT_BYTES:
            low = middle
        else:
            high = middle - 1
    return low


def bench_size(
    uri: str, metrics: dict[str, Any], repeat: int, work: Path, index: int
) -> list[Row]:
    db = f"bench_{index}"
    connection = ["--uri", uri, "--db", db]
    client: pymongo.MongoClient = pymongo.MongoClient(uri)
    collection = client[db].metrics
    collection.replace_one({"name": "metrics"}, {"name": "metrics", **metrics}, True)
    stored = collection.find_one({"name": "metrics"})
    size = len(bson.encode(stored))
    exported = work / f"export_{index}.json"

    results: dict[str, Run] = {}
    results["export"] = measure(
        script("export_metrics.py", "--output", str(exported), "--overwrite")
        + connection,
        repeat,
        work,
    )
    baseline_file = work / f"baseline_{index}.json"
    results["export baseline"] = measure(
        inline(EXPORT_BASELINE, uri, db, str(baseline_file)), repeat, work
    )
    results["analysis"] = measure(
        script("convert_to_labeled.py", "--analyze") + connection, repeat, work
    )
    source = ["--input", str(exported)]
    client.drop_database(f"{db}_base")
    results["import baseline"] = measure(
        inline(IMPORT_BASELINE, uri, f"{db}_base", str(exported)), repeat, work
    )
    results["import --dry-run"] = measure(
        script("import_metrics.py", *source, "--dry-run") + connection, repeat, work
    )
    to = f"{db}_empty"
    results["merge into empty"] = measure(
        script("import_metrics.py", *source, "--no-backup", "--uri", uri, "--db", to),
        repeat,
        work,
        before=lambda: client.drop_database(to),
    )
    results["merge into full"] = measure(
        script("import_metrics.py", *source, "--no-backup") + connection,
        repeat,
        work,
    )
    results["replace"] = measure(
        script("import_metrics.py", *source, "--replace", "--yes", "--no-backup")
        + connection,
        repeat,
        work,
    )
    # Baselines run again after the scripts; the better run of each counts.
    client.drop_database(f"{db}_base")
    again = measure(
        inline(IMPORT_BASELINE, uri, f"{db}_base", str(exported)), repeat, work
    )
    results["import baseline"] = best(results["import baseline"], again)
    again = measure(inline(EXPORT_BASELINE, uri, db, str(baseline_file)), repeat, work)
    results["export baseline"] = best(results["export baseline"], again)
    after = collection.find_one({"name": "metrics"})
    assert bson.encode(after) == bson.encode(stored), "replace changed the document"
    client.drop_database(db)
    client.drop_database(f"{db}_empty")
    client.drop_database(f"{db}_base")
    client.close()

    file_bytes = exported.stat().st_size
    rows = []
    for operation, run in results.items():
        if operation.endswith("baseline"):
            continue
        against = (
            "export baseline"
            if operation in ("export", "analysis")
            else ("import baseline")
        )
        rows.append(
            Row(
                len(metrics) - 2,
                size,
                file_bytes,
                operation,
                run,
                against,
                results[against],
            )
        )
    return rows


def mib(value: int) -> str:
    return f"{value / 2**20:.1f}"


def print_table(rows: list[Row], startup: Run) -> None:
    print(
        f"Process start-up alone (python + pymongo + the scripts' imports): "
        f"{startup.seconds:.2f} s, {mib(startup.peak_bytes)} MiB peak"
    )
    print()
    print(
        "| keys | doc MiB | operation | time s | baseline s | time ratio "
        "| peak MiB | baseline MiB | peak / file |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row.keys:,} | {mib(row.document_bytes)} | {row.operation} "
            f"| {row.run.seconds:.2f} | {row.baseline.seconds:.2f} "
            f"| {row.run.seconds / row.baseline.seconds:.2f} "
            f"| {mib(row.run.peak_bytes)} | {mib(row.baseline.peak_bytes)} "
            f"| {row.run.peak_bytes / row.file_bytes:.1f} |"
        )
    print_growth(rows, startup)


def print_growth(rows: list[Row], startup: Run) -> None:
    """Show time per key above start-up, which stays flat when growth is linear."""
    sizes = sorted({row.keys for row in rows})
    if len(sizes) < 2:
        return
    print()
    print("Milliseconds per 1,000 keys, start-up subtracted:")
    print()
    print("| operation | " + " | ".join(f"{size:,} keys" for size in sizes) + " |")
    print("|---|" + "---:|" * len(sizes))
    operations = list(dict.fromkeys(row.operation for row in rows))
    for operation in operations:
        cells = []
        for size in sizes:
            row = next(r for r in rows if r.keys == size and r.operation == operation)
            above = max(row.run.seconds - startup.seconds, 0.0)
            cells.append(f"{above / size * 1e6:.1f}")
        print(f"| {operation} | " + " | ".join(cells) + " |")


def parse_sizes(text: str) -> list[int | str]:
    sizes: list[int | str] = []
    for part in text.split(","):
        part = part.strip()
        sizes.append(LARGEST if part == LARGEST else int(part.replace("_", "")))
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=parse_sizes(f"2000,20000,{LARGEST}"),
        help="comma-separated key counts; 'largest' is the biggest document "
        "under 16 MiB (default 2000,20000,largest)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="only 2,000 and 20,000 keys, one run"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per measurement (the best counts)"
    )
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    sizes = [2000, 20000] if args.quick else args.sizes

    started = time.perf_counter()
    documents = realistic_metrics(sizes)
    print(
        f"built {len(documents)} documents in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    work = Path(tempfile.mkdtemp(prefix="bench-migration-"))
    server = WireServer().start()
    try:
        startup = measure(inline(STARTUP), args.repeat, REPO)
        rows: list[Row] = []
        for index, size in enumerate(sizes):
            weight = stored_bytes(documents[size])
            if weight > MAX_DOCUMENT_BYTES:
                print(
                    f"skipping {size} keys: {weight:,} bytes, over MongoDB's "
                    f"{MAX_DOCUMENT_BYTES:,}-byte document limit",
                    file=sys.stderr,
                )
                continue
            print(f"measuring {size} keys", file=sys.stderr)
            rows += bench_size(server.uri, documents[size], args.repeat, work, index)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print_table(rows, startup)
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(
                [
                    row.__dict__
                    | {"run": row.run.__dict__, "baseline": row.baseline.__dict__}
                    for row in rows
                ],
                stream,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
