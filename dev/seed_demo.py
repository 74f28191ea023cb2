#!/usr/bin/env python3
"""Fill a database with the metrics an old TAO telemetry server would hold.

The old server counted jobs in the legacy, comprehensive and time families
only; labeled metrics appear once new jobs are recorded on the new server.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import import_plan
import labeled
import mongo_store
from sample_data import sample_jobs

OLD_BUILDERS = (labeled.LegacyMetricsBuilder(), labeled.ComprehensiveMetricsBuilder())


def old_server_document(jobs: int, seed: int) -> dict[str, object]:
    """Return the document an old server would hold after these jobs."""
    document: dict[str, object] = {}
    seconds = 0.0
    for job in sample_jobs(jobs, seed):
        seconds += job.time_lapsed
        for builder in OLD_BUILDERS:
            for key, value in builder.increments(job):
                document[key] = document.get(key, 0) + value  # type: ignore[operator]
    document[labeled.TIME_KEY] = round(seconds % 86_400, 3)
    document["last_updated"] = datetime.now(UTC).isoformat()
    return document


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uri", default=None, help="env MONGODB_URI")
    parser.add_argument("--db", default="old_server")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    uri = mongo_store.resolve_uri(args.uri)
    location = mongo_store.Location(db=args.db)
    deadline = time.monotonic() + 60
    while True:
        try:
            with mongo_store.MetricsStore(uri, location, timeout=2) as store:
                after = store.replace(old_server_document(args.jobs, args.seed))
            break
        except mongo_store.StoreError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    metrics = import_plan.count_metrics(after)
    print(f"seeded {args.db}: {metrics} metrics from {args.jobs} sample jobs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
