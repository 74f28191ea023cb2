"""Turn one TAO job into metric increments and record them in one atomic update.

Every job feeds four families of keys in the metrics document:

* labeled: ``tao_job_total``, ``tao_job_duration_sum``, ``tao_job_gpu_time_sum``
  and ``tao_job_gpu_total`` in the Prometheus sample syntax;
* legacy: ``total_action_<a>_<pass|fail>``, ``version_<v>_action_<a>``,
  ``network_<n>_action_<a>`` and ``gpu_<gpu>_action_<a>``;
* comprehensive: ``network_<n>_action_<a>_version_<v>_status_<s>_gpu_<...>``;
* time: ``time_lapsed_today``, restarted on the first job of a new day.

The legacy, comprehensive and time keys are spelled as the running TAO services
spell them, so dashboards built on them keep counting jobs recorded here.

Usage as a script::

    python labeled.py record --network resnet50 --action train --version 5.3.0 \\
        --gpu "NVIDIA A100" --time-lapsed 3600 --success --dry-run
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import cli_support
import mongo_store
from cli_support import UsageError
from gpu_types import gpu_type, primary_gpu
from metric_keys import TIME_KEY, format_key
from mongo_store import MetricsStore

log = logging.getLogger("labeled")

Number = int | float

JOB_TOTAL = "tao_job_total"
JOB_DURATION_SUM = "tao_job_duration_sum"
JOB_GPU_TIME_SUM = "tao_job_gpu_time_sum"
JOB_GPU_TOTAL = "tao_job_gpu_total"
LAST_UPDATED = "last_updated"

_NOT_ALNUM = re.compile(r"[^a-zA-Z0-9]")


@dataclass(frozen=True)
class Job:
    """The telemetry one finished TAO job reports."""

    network: str
    action: str
    version: str
    success: bool
    user_error: bool = False
    time_lapsed: Number = 0
    gpu: tuple[str, ...] = ()
    client_type: str = "container"
    automl_triggered: bool = False

    def __post_init__(self) -> None:
        for name in ("network", "action", "version", "client_type"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"job {name} must be a non-empty string: {value!r}")
        for name in ("success", "user_error", "automl_triggered"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"job {name} must be true or false")
        lapsed = self.time_lapsed
        if isinstance(lapsed, bool) or not isinstance(lapsed, int | float):
            raise ValueError(f"job time_lapsed must be a number: {lapsed!r}")
        if not lapsed >= 0 or lapsed == float("inf"):
            raise ValueError(f"job time_lapsed must be a finite number >= 0: {lapsed}")
        if isinstance(self.gpu, str) or not all(isinstance(g, str) for g in self.gpu):
            raise ValueError("job gpu must be a list of GPU names")
        object.__setattr__(self, "gpu", tuple(self.gpu))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Job:
        """Build a job from a telemetry payload, filling gaps as the services do."""
        fields = {name: data[name] for name in _JOB_FIELDS if name in data}
        for name in ("network", "action", "version"):
            fields.setdefault(name, "unknown")
        fields.setdefault("success", False)
        # A payload without a GPU list ran on one GPU nobody named.
        fields.setdefault("gpu", ("unknown",))
        return cls(**fields)


_JOB_FIELDS = tuple(Job.__dataclass_fields__)


def normalise(value: str) -> str:
    """Lower-case a value and replace every character outside [a-zA-Z0-9] with _."""
    return _NOT_ALNUM.sub("_", value).lower()


def flag(value: bool) -> str:
    return "true" if value else "false"


def status(job: Job) -> str:
    return "pass" if job.success else "fail"


# The builders: each yields (key, increment) pairs for one job.


class LabeledMetricsBuilder:
    """Spell the labeled keys of one job and what each one gains."""

    def job_labels(self, job: Job) -> dict[str, str]:
        types = [gpu_type(name) for name in job.gpu]
        return {
            "tao_action": normalise(job.action),
            "tao_automl_triggered": flag(job.automl_triggered),
            "tao_client_type": normalise(job.client_type),
            "tao_gpu_count": str(len(job.gpu)),
            "tao_network": normalise(job.network),
            "tao_primary_gpu": primary_gpu(types),
            "tao_status": status(job),
            "tao_user_error": flag(job.user_error),
            "tao_version": normalise(job.version),
        }

    def increments(self, job: Job) -> Iterator[tuple[str, Number]]:
        labels = self.job_labels(job)
        yield format_key(JOB_TOTAL, labels), 1
        if job.time_lapsed > 0:
            yield format_key(JOB_DURATION_SUM, labels), job.time_lapsed
            gpu_time = job.time_lapsed * len(job.gpu)
            yield format_key(JOB_GPU_TIME_SUM, labels), gpu_time
        for gpu, count in sorted(Counter(gpu_type(g) for g in job.gpu).items()):
            yield format_key(JOB_GPU_TOTAL, {"tao_gpu_type": gpu}), count


class LegacyMetricsBuilder:
    """Spell the four oldest counters, lower case as the TAO services write them."""

    def increments(self, job: Job) -> Iterator[tuple[str, Number]]:
        action = normalise(job.action)
        yield f"total_action_{action}_{status(job)}", 1
        yield f"version_{normalise(job.version)}_action_{action}", 1
        yield f"network_{normalise(job.network)}_action_{action}", 1
        # One per GPU in the list, so a job on two A100s adds 2.
        for gpu in job.gpu:
            yield f"gpu_{normalise(gpu)}_action_{action}", 1


def comprehensive_gpu_name(name: str) -> str:
    """Upper-case a GPU name, then replace characters outside [a-zA-Z0-9] with _."""
    return _NOT_ALNUM.sub("_", name.upper())


class ComprehensiveMetricsBuilder:
    """Spell the one key that holds every attribute of a job in its name."""

    def key(self, job: Job) -> str:
        counts = Counter(comprehensive_gpu_name(gpu) for gpu in job.gpu)
        gpus = "_".join(f"{gpu}_{count}" for gpu, count in sorted(counts.items()))
        # With no GPUs the TAO services write "gpu_0_", trailing _ and all.
        return (
            f"network_{normalise(job.network)}_action_{normalise(job.action)}"
            f"_version_{normalise(job.version)}_status_{status(job)}"
            f"_gpu_{len(job.gpu)}_{gpus}"
        )

    def increments(self, job: Job) -> Iterator[tuple[str, Number]]:
        yield self.key(job), 1


BUILDERS = (
    LabeledMetricsBuilder(),
    LegacyMetricsBuilder(),
    ComprehensiveMetricsBuilder(),
)


def counter_increments(jobs: Iterable[Job]) -> dict[str, Number]:
    """Sum the labeled, legacy and comprehensive increments of some jobs."""
    total: dict[str, Number] = {}
    for job in jobs:
        for builder in BUILDERS:
            for key, value in builder.increments(job):
                total[key] = total.get(key, 0) + value
    return total


# Recording


def utc_now() -> datetime:
    return datetime.now(UTC)


def _days(now: datetime) -> tuple[str, str]:
    """Return today as written in now's own zone, and as a UTC date."""
    local = now.date().isoformat()
    if now.tzinfo is None:
        return local, local
    return local, now.astimezone(UTC).date().isoformat()


def same_day_expression(now: datetime) -> dict[str, Any]:
    """An expression telling whether the stored last_updated falls on now's day.

    An ISO string is compared by its first ten characters, the date it was
    written with; a BSON date by its UTC date.  A missing or null value counts
    as today, so the first job adds to what is there; anything else as another day.
    """
    local, utc = _days(now)
    stored_day = {
        "$switch": {
            "branches": [
                {
                    "case": {"$eq": [{"$type": "$$stored"}, "string"]},
                    "then": {"$substrCP": ["$$stored", 0, 10]},
                },
                {
                    "case": {"$eq": [{"$type": "$$stored"}, "date"]},
                    "then": {
                        "$cond": [
                            {
                                "$eq": [
                                    {
                                        "$dateToString": {
                                            "date": "$$stored",
                                            "format": "%Y-%m-%d",
                                        }
                                    },
                                    utc,
                                ]
                            },
                            local,
                            "",
                        ]
                    },
                },
            ],
            "default": "",
        }
    }
    return {
        "$let": {
            # $ifNull, not a "missing" branch on $type: it is the one test
            # of absence that MongoDB and SecantusDB agree on.
            "vars": {"stored": {"$ifNull": [mongo_store.field(LAST_UPDATED), local]}},
            "in": {"$eq": [stored_day, {"$literal": local}]},
        }
    }


def record_pipeline(
    increments: Mapping[str, Number], time_lapsed: Number, now: datetime
) -> list[dict[str, Any]]:
    """One pipeline update adding the increments, the day's time and last_updated.

    Keys are written through $literal, so keys holding '.' or '$' are stored
    verbatim.  time_lapsed_today restarts from time_lapsed when the stored
    last_updated is of another day; the server decides, in the same update.
    """
    counters = {
        key: value
        for key, value in increments.items()
        if key not in (TIME_KEY, LAST_UPDATED)
    }
    stored_time = {"$ifNull": [mongo_store.field(TIME_KEY), 0]}
    day_time = {
        "$cond": [
            same_day_expression(now),
            {"$add": [stored_time, time_lapsed]},
            time_lapsed,
        ]
    }
    computed = {TIME_KEY: day_time, LAST_UPDATED: {"$literal": now.isoformat()}}
    return mongo_store.sum_pipeline(counters, computed)


def record_jobs(
    store: MetricsStore,
    jobs: Iterable[Job],
    now: datetime | None = None,
    max_keys: int | None = None,
) -> dict[str, Any]:
    """Record jobs finished at now; return the document after.

    Jobs go in as few updates as keep each one under MongoDB's command size
    limit: one update per max_keys (default MAX_KEYS_PER_UPDATE) distinct keys,
    each atomic.
    The result equals recording the jobs one after another with the same now.
    """
    now = now or utc_now()
    after: dict[str, Any] = {}
    recorded = 0
    for chunk in _chunks(jobs, max_keys or MAX_KEYS_PER_UPDATE):
        increments = counter_increments(chunk)
        time_lapsed = sum(job.time_lapsed for job in chunk)
        pipeline = record_pipeline(increments, time_lapsed, now)
        action = f"recording {len(chunk)} job(s) in {store.location.describe()}"
        try:
            after = store.apply(pipeline, action)
        except mongo_store.StoreError as exc:
            if recorded:
                raise mongo_store.StoreError(
                    f"{exc} ({recorded} earlier jobs were recorded)"
                ) from None
            raise
        recorded += len(chunk)
        log.info("recorded jobs=%d keys=%d", len(chunk), len(increments))
    return after


# A key costs a few hundred bytes in the update command; 4000 keep it near
# 3 MB, far from the 16 MB a command may take.
MAX_KEYS_PER_UPDATE = 4000


def _chunks(jobs: Iterable[Job], max_keys: int) -> Iterator[list[Job]]:
    """Split jobs into runs whose increments touch at most max_keys keys."""
    chunk: list[Job] = []
    keys: set[str] = set()
    for job in jobs:
        new = {key for builder in BUILDERS for key, _ in builder.increments(job)}
        if chunk and len(keys) + len(new - keys) > max_keys:
            yield chunk
            chunk, keys = [], set()
        chunk.append(job)
        keys |= new
    # Even no jobs make one update: it still stamps last_updated.
    yield chunk


def record_job(
    store: MetricsStore, job: Job, now: datetime | None = None
) -> dict[str, Any]:
    """Record one finished job in one atomic update; return the document after."""
    return record_jobs(store, [job], now)


def _stored_day(value: Any, now: datetime) -> str:
    local, utc = _days(now)
    if value is None:
        return local
    if isinstance(value, str):
        return value[:10]
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return local if value.date().isoformat() == utc else ""
    if isinstance(value, date):
        return value.isoformat()
    return ""


def apply_locally(
    document: dict[str, Any], jobs: Iterable[Job], now: datetime | None = None
) -> dict[str, Any]:
    """Record jobs into a document in memory, as record_jobs does on the server."""
    jobs = list(jobs)
    now = now or utc_now()
    for key, value in counter_increments(jobs).items():
        document[key] = document.get(key, 0) + value
    time_lapsed = sum(job.time_lapsed for job in jobs)
    if _stored_day(document.get(LAST_UPDATED), now) == _days(now)[0]:
        document[TIME_KEY] = document.get(TIME_KEY, 0) + time_lapsed
    else:
        document[TIME_KEY] = time_lapsed
    document[LAST_UPDATED] = now.isoformat()
    return document


# Command line


ENVIRONMENT_HELP = """\
environment variables (an option given on the command line wins):
  MONGODB_URI            connection string (inside a TAO pod, built from
                         MONGOSECRET and NAMESPACE when unset)
  MONGODB_DB             database (default metrics)
  MONGODB_COLLECTION     collection (default metrics)
  MONGODB_DOCUMENT_NAME  the metrics document's name field (default metrics)
  MONGODB_TIMEOUT        seconds to wait for the server (default 5)
  LOG_LEVEL              diagnostics on stderr (default warning)

examples:
  labeled.py record --network resnet50 --action train --version 5.3.0 \\
      --gpu "NVIDIA A100" --gpu "NVIDIA A100" --time-lapsed 3600 --success --dry-run
  labeled.py sample --jobs 500 --seed 7
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labeled.py",
        description="Record a TAO job's metrics (labeled, legacy, comprehensive and "
        "time) in the metrics document in one atomic update, or show them with "
        "--dry-run.",
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cli_support.add_version(parser)
    parser.add_argument(
        "--log-level",
        default=cli_support.env_default("LOG_LEVEL", "warning"),
        choices=["debug", "info", "warning", "error"],
        help="diagnostics on stderr (env LOG_LEVEL; default %(default)s)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    record = commands.add_parser(
        "record",
        help="record one job",
        description="Record one job's metric increments in one atomic update.",
    )
    job = record.add_argument_group("the job")
    job.add_argument("--network", required=True, help="network, e.g. resnet50")
    job.add_argument("--action", required=True, help="action, e.g. train")
    job.add_argument("--version", required=True, help="TAO version, e.g. 5.3.0")
    job.add_argument(
        "--gpu",
        action="append",
        default=[],
        metavar="NAME",
        help="a GPU the job ran on, once per GPU (e.g. --gpu 'NVIDIA A100' twice)",
    )
    job.add_argument(
        "--time-lapsed",
        default="0",
        metavar="SECONDS",
        help="how long the job ran (default 0)",
    )
    outcome = job.add_mutually_exclusive_group(required=True)
    outcome.add_argument("--success", action="store_true", help="the job passed")
    outcome.add_argument("--fail", action="store_true", help="the job failed")
    job.add_argument(
        "--user-error", action="store_true", help="the failure was the user's"
    )
    job.add_argument("--client-type", default="container", help="default %(default)s")
    job.add_argument(
        "--automl-triggered", action="store_true", help="AutoML started the job"
    )
    add_output_options(
        record, "print the keys and increments without contacting the database"
    )
    sample = commands.add_parser(
        "sample",
        help="record realistic made-up jobs, for demos and load tests",
        description="Record N realistic jobs, the same ones for the same seed, "
        "in as few atomic updates as MongoDB's command size allows.",
    )
    sample.add_argument(
        "--jobs", default="100", help="how many jobs (default %(default)s)"
    )
    sample.add_argument(
        "--seed", type=int, default=0, help="picks the jobs (default %(default)s)"
    )
    add_output_options(
        sample, "count the keys the jobs would change without contacting the database"
    )
    return parser


def add_output_options(command: argparse.ArgumentParser, dry_run_help: str) -> None:
    """Add --dry-run, --json and the connection options to a subcommand."""
    command.add_argument("--dry-run", action="store_true", help=dry_run_help)
    command.add_argument("--json", action="store_true", help="print JSON on stdout")
    cli_support.add_connection_options(command)


def job_count(text: str) -> int:
    """Read the --jobs value: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--jobs: not a whole number: {text!r}") from None
    if value < 1:
        raise UsageError(f"--jobs: must be at least 1: {text!r}")
    return value


def seconds(text: str) -> Number:
    """Read a duration in seconds, an integer when it is one."""
    try:
        value: Number = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise UsageError(f"--time-lapsed: not a number: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise UsageError(f"--time-lapsed: must be a finite number >= 0: {text!r}")
    return value


def job_from_args(args: argparse.Namespace) -> Job:
    try:
        return Job(
            network=args.network,
            action=args.action,
            version=args.version,
            success=args.success,
            user_error=args.user_error,
            time_lapsed=seconds(args.time_lapsed),
            gpu=tuple(args.gpu),
            client_type=args.client_type,
            automl_triggered=args.automl_triggered,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def report(
    job: Job, now: datetime, after: Mapping[str, Any] | None, as_json: bool
) -> str:
    """Describe what a job adds and, once written, each key's value after."""
    increments = counter_increments([job])
    if as_json:
        body: dict[str, Any] = {
            "dry_run": after is None,
            "increments": {**increments, TIME_KEY: job.time_lapsed},
            LAST_UPDATED: now.isoformat(),
        }
        if after is not None:
            keys = [*increments, TIME_KEY, LAST_UPDATED]
            body["values"] = {key: after.get(key) for key in keys}
        return json.dumps(body, indent=2, default=str)
    rows = [(f"+{value}", key) for key, value in increments.items()]
    rows.append((f"+{job.time_lapsed}", TIME_KEY))
    if after is None:
        lines = ["dry run: nothing written; the job would add"]
        lines += [f"{change:>12}  {key}" for change, key in rows]
        lines[-1] += f" (restarts from {job.time_lapsed} on a new day)"
    else:
        lines = ["recorded the job: increment, value after, key"]
        lines += [f"{change:>12} {after.get(key)!s:>12}  {key}" for change, key in rows]
    lines.append(f"{'':>12}  {LAST_UPDATED} = {now.isoformat()}")
    return "\n".join(lines)


def record_command(args: argparse.Namespace) -> int:
    job = job_from_args(args)
    now = utc_now()
    if args.dry_run:
        print(report(job, now, None, args.json))
        return 0
    with cli_support.open_store(args) as store:
        store.check_can_write()
        after = record_job(store, job, now)
    print(report(job, now, after, args.json))
    return 0


def sample_command(args: argparse.Namespace) -> int:
    # Imported here: sample_data builds on this module's Job.
    from sample_data import sample_jobs

    jobs = list(sample_jobs(job_count(args.jobs), args.seed))
    keys = len(counter_increments(jobs)) + 2
    summary: dict[str, Any] = {"jobs": len(jobs), "seed": args.seed, "keys": keys}
    if not args.dry_run:
        with cli_support.open_store(args) as store:
            store.check_can_write()
            after = record_jobs(store, jobs)
        summary["document_keys"] = len(after)
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, **summary}, indent=2))
    elif args.dry_run:
        print(
            f"dry run: {len(jobs)} sample jobs (seed {args.seed}) would change "
            f"{keys} keys"
        )
    else:
        print(
            f"recorded {len(jobs)} sample jobs (seed {args.seed}): {keys} keys "
            f"changed, {summary['document_keys']} keys in the document"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli_support.setup_logging(args.log_level)
    command = sample_command if args.command == "sample" else record_command
    return cli_support.run(command, args)


if __name__ == "__main__":
    sys.exit(main())
