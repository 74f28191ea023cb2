"""Measure the exporter against a plain read-and-print loop, in one run.

For documents of 2,000, 20,000 and 100,000 realistic keys it reports, each
as a ratio to a baseline measured here on the same machine:

- start: process start to the first complete /metrics answer, against a
  script that starts, reads the document with pymongo and writes the same
  exposition text in a plain loop;
- cold: a scrape after the cache expired, after ten values changed, after
  ten keys were added, after those keys were removed again, and with the
  document unchanged, against that read-and-write loop in a warm process;
- warm: a scrape answered from the cache, against the same loop;
- peak memory (VmHWM) of the exporter against that of the baseline script.

Usage:  python bench/bench_exporter.py [--sizes 2000,20000,100000]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import metric_keys  # noqa: E402
from mongo_store import Location, MetricsStore  # noqa: E402
from tests.servers import WireServer, free_port, wait_until  # noqa: E402

REPEATS = 5
CACHE_SECONDS = 1.0

BASELINE = r"""
import json, sys, time
started = time.perf_counter()
import pymongo

def scrape(collection):
    document = collection.find_one({"name": "metrics"})
    families = {}
    for key, value in document.items():
        if key in ("_id", "name", "last_updated"):
            continue
        families.setdefault(key.split("{", 1)[0], []).append(f"{key} {value}\n")
    parts = []
    for name, lines in families.items():
        parts.append(f"# HELP {name} TAO metric {name} read from MongoDB\n")
        parts.append(f"# TYPE {name} gauge\n")
        parts.extend(lines)
    return "".join(parts).encode()

client = pymongo.MongoClient(sys.argv[1])
collection = client[sys.argv[2]]["metrics"]
first = scrape(collection)
start_to_first = time.perf_counter() - started
loops = []
for _ in range(int(sys.argv[3])):
    began = time.perf_counter()
    scrape(collection)
    loops.append(time.perf_counter() - began)
peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM")]
print(json.dumps({"start": start_to_first, "loops": loops, "bytes": len(first),
                  "peak_kib": int(peak[0].split()[1])}))
"""


def realistic_document(size: int) -> dict[str, Any]:
    """Return size keys of a migrated server: half flat from old jobs, half labeled.

    The keys are what the TAO services write for sample jobs.  Labeled keys
    alone would not fit: 100,000 of them make a 19 MiB document, beyond
    MongoDB's 16 MiB limit.
    """
    try:
        from labeled import counter_increments
        from sample_data import sample_jobs
    except ImportError:
        return generated_document(size)
    labeled: dict[str, Any] = {}
    flat: dict[str, Any] = {}
    seed = 0
    while len(labeled) < size // 2 or len(flat) < size - size // 2:
        for key, value in counter_increments(sample_jobs(5000, seed)).items():
            found = labeled if metric_keys.is_labeled(key) else flat
            found[key] = found.get(key, 0) + value
        seed += 1
    chosen = [*labeled.items()][: size // 2] + [*flat.items()][: size - size // 2]
    document = dict(chosen)
    document["last_updated"] = "2026-01-02T03:04:05+00:00"
    return document


def generated_document(size: int) -> dict[str, Any]:
    """Return size labeled and flat keys built with the key grammar."""
    document: dict[str, Any] = {}
    for number in range(size):
        labels = {
            "tao_action": ("train", "evaluate", "export")[number % 3],
            "tao_network": f"network_{number % 700}",
            "tao_primary_gpu": ("A100", "H100", "L40S")[number % 5 % 3],
            "tao_status": ("pass", "fail")[number % 2],
            "tao_version": f"5_{number % 9}_0",
            "tao_job": str(number),
        }
        family = ("tao_job_total", "tao_job_duration_sum")[number % 2]
        document[metric_keys.format_key(family, labels)] = number
    return document


def peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1])
    return 0


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as response:
        return response.read()


def series_served(body: bytes) -> int:
    for line in body.decode().splitlines():
        if line.startswith("tao_exporter_series "):
            return int(float(line.split()[1]))
    return -1


def timed_scrape(url: str, wait: float) -> float:
    """Wait (for the cache to expire), then time one complete scrape."""
    time.sleep(wait)
    began = time.perf_counter()
    get(url)
    return time.perf_counter() - began


def measure_exporter(
    uri: str, db: str, expected_series: int, changes: dict[str, Callable[[], object]]
) -> dict[str, Any]:
    """Time the first scrape, then cold scrapes after each change, and warm ones."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    command = [
        sys.executable,
        str(REPO / "exporter.py"),
        "--listen-address=127.0.0.1",
        f"--port={port}",
        f"--uri={uri}",
        f"--db={db}",
        f"--cache-seconds={CACHE_SECONDS}",
        "--timeout=60",
        "--log-level=error",
    ]
    started = time.perf_counter()
    process = subprocess.Popen(command)
    try:

        def complete() -> bool:
            return series_served(get(url)) == expected_series

        wait_until(complete, 300, "the first complete scrape")
        times: dict[str, list[float]] = {"start": [time.perf_counter() - started]}
        for _ in range(REPEATS):
            for name, change in changes.items():
                change()
                times.setdefault(name, []).append(
                    timed_scrape(url, wait=CACHE_SECONDS + 0.1)
                )
            times.setdefault("cold", []).append(
                timed_scrape(url, wait=CACHE_SECONDS + 0.1)
            )
            times.setdefault("warm", []).append(timed_scrape(url, wait=0))
        result: dict[str, Any] = {
            name: statistics.median(values) for name, values in times.items()
        }
        result["peak_kib"] = peak_kib(process.pid)
        return result
    finally:
        process.terminate()
        process.wait(30)


def new_keys() -> Callable[[], dict[str, int]]:
    """Return a function giving ten keys never stored before at each call.

    Half are labeled keys of an existing family, half comprehensive keys,
    each a family of its own: what jobs with new label combinations write.
    """
    calls = iter(range(10**6))

    def make() -> dict[str, int]:
        call = next(calls)
        keys = {}
        for n in range(5):
            labels = {"tao_action": "bench", "tao_run": f"{call}_{n}"}
            keys[metric_keys.format_key("tao_job_total", labels)] = 1
            flat = f"network_bench{call}x{n}_action_train_version_6_0_0"
            keys[flat + "_status_pass_gpu_1_A100_1"] = 1
        return keys

    return make


def measure_baseline(uri: str, db: str) -> dict[str, Any]:
    import json

    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script:
        script.write(BASELINE)
    try:
        completed = subprocess.run(
            [sys.executable, script.name, uri, db, str(REPEATS)],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        os.unlink(script.name)
    result = json.loads(completed.stdout)
    result["loop"] = statistics.median(result["loops"])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,20000,100000")
    sizes = [int(size) for size in parser.parse_args().sizes.split(",")]
    server = WireServer().start()
    rows = []
    try:
        full = realistic_document(max(sizes))
        for size in sizes:
            document = dict(list(full.items())[:size])
            document.setdefault("last_updated", full["last_updated"])
            db = f"bench_{size}"
            with MetricsStore(server.uri, Location(db=db), timeout=120) as store:
                store.replace(document)
                stored_bytes = store.read_bytes()
                # What finished jobs do between two scrapes: increment keys,
                # and now and then store keys never seen before.
                some_keys = [key for key in document if key != "last_updated"][:10]
                increments = dict.fromkeys(some_keys, 1)
                fresh = new_keys()
                changes = {
                    "changed": functools.partial(store.add, increments),
                    "added": lambda: store.merge(fresh()),  # noqa: B023
                    # Back to the document as stored, without the added keys.
                    "removed": functools.partial(store.replace, document),
                }
                keys = len(document) - 1
                ours = measure_exporter(server.uri, db, keys, changes)
            base = measure_baseline(server.uri, db)
            rows.append((keys, stored_bytes, ours, base))
            print(f"measured {keys} keys", file=sys.stderr)
    finally:
        server.stop()
    print(f"machine: {os.cpu_count()} cores, {memory_gib():.0f} GiB; Python {py()}")
    print()
    print(
        "| keys | document | start to first scrape | cold scrape, values "
        "changed | cold scrape, keys added | cold scrape, keys removed "
        "| cold scrape, unchanged | warm scrape | peak memory |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for keys, stored_bytes, ours, base in rows:
        cells = [f"{keys:,}", f"{stored_bytes / 2**20:.1f} MiB"]
        cells.append(f"{ours['start']:.2f} s ({ours['start'] / base['start']:.2f}x)")
        for name in ("changed", "added", "removed", "cold", "warm"):
            ratio = ours[name] / base["loop"]
            cells.append(f"{ours[name] * 1000:.0f} ms ({ratio:.2f}x)")
        ratio = ours["peak_kib"] / base["peak_kib"]
        cells.append(f"{ours['peak_kib'] / 1024:.0f} MiB ({ratio:.2f}x)")
        print("| " + " | ".join(cells) + " |")
    print()
    print("baseline (pymongo read + plain loop writing the text):")
    for keys, _, _, base in rows:
        print(
            f"  {keys:,} keys: start {base['start']:.2f} s, loop "
            f"{base['loop'] * 1000:.0f} ms, peak {base['peak_kib'] / 1024:.0f} MiB"
        )
    return 0


def memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal"):
            return int(line.split()[1]) / 2**20
    return 0.0


def py() -> str:
    return ".".join(map(str, sys.version_info[:3]))


if __name__ == "__main__":
    sys.exit(main())
