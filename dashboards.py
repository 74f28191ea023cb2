"""Generate the Grafana dashboards in grafana_dashboards/ from code.

Run ``python dashboards.py`` after changing a panel to rewrite the JSON files,
or ``python dashboards.py --check`` to fail when they are out of date.  The
dashboards are built with grafana-foundation-sdk, a development dependency
only: the JSON files are what operators import.

Every panel queries the raw metrics, so the dashboards work on a Prometheus
that has not loaded the recording rules in prometheus/.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import cli_support
from cli_support import UsageError
from dashboard_builder import (
    COMPREHENSIVE,
    FAILED,
    FILTERS,
    GPU_TIME,
    GPUS,
    JOBS,
    LEGACY_ACTION,
    LEGACY_GPU,
    LEGACY_NETWORK,
    LEGACY_VERSION,
    PASSED,
    Dashboard,
    Query,
    average_duration,
    in_range,
    instant,
    legacy,
    panel,
    per_hour,
    ratio,
    selector,
)
from metrics_file import atomic_write

OUTPUT_DIR = Path(__file__).resolve().parent / "grafana_dashboards"

NEW_SERIES_NOTE = (
    " A label combination first seen inside the range counts from its second"
    " scrape on, as with every Prometheus increase()."
)
DURATION_NOTE = (
    " tao_job_duration_sum exists only for jobs that reported a duration; label"
    " sets without one are left out, and jobs without a duration inside a label"
    " set that has one count as 0 s."
)
GPU_TIME_NOTE = (
    " tao_job_gpu_time_sum (seconds x GPU count) exists only for jobs that"
    " reported a duration."
)
GPU_TYPE_NOTE = (
    " tao_job_gpu_total carries only the tao_gpu_type label: the GPU variable"
    " filters it by GPU type, the other variables do not apply."
)
ALL_FILTERS = tuple(FILTERS)
GPUS_BY_TYPE = GPUS + '{tao_gpu_type=~"$gpu"}'


def executive() -> Dashboard:
    jobs = in_range(JOBS)
    return Dashboard(
        file_name="tao_executive_dashboard.json",
        uid="tao-executive",
        title="TAO Executive Overview",
        description="TAO training jobs at a glance: volume, pass rate, GPU time.",
        tags=("tao", "telemetry"),
        time_from="now-30d",
        variables=ALL_FILTERS,
        panels=(
            panel(
                "stat",
                "Jobs in range",
                "Jobs finished in the selected time range." + NEW_SERIES_NOTE,
                instant(f"sum({jobs})"),
                width=4,
                height=5,
                decimals=0,
            ),
            panel(
                "stat",
                "Jobs all time",
                "Every job counted since telemetry began (the stored counter).",
                instant(f"sum({selector(JOBS)})"),
                width=4,
                height=5,
                decimals=0,
            ),
            panel(
                "stat",
                "Pass rate",
                "Share of the jobs in range that passed; the status variable is"
                " ignored here." + NEW_SERIES_NOTE,
                instant(
                    ratio(
                        in_range(JOBS, PASSED, skip=["status"]),
                        in_range(JOBS, skip=["status"]),
                    )
                ),
                width=4,
                height=5,
                unit="percentunit",
                decimals=1,
            ),
            panel(
                "stat",
                "Failed jobs in range",
                "Jobs that failed in the selected range; the status variable is"
                " ignored here." + NEW_SERIES_NOTE,
                instant(f"sum({in_range(JOBS, FAILED, skip=['status'])}) or vector(0)"),
                width=4,
                height=5,
                decimals=0,
            ),
            panel(
                "stat",
                "GPU-hours in range",
                "GPU time used by the jobs in range, in hours." + GPU_TIME_NOTE,
                instant(f"sum({in_range(GPU_TIME)}) / 3600"),
                width=4,
                height=5,
                decimals=1,
            ),
            panel(
                "stat",
                "Average job duration",
                "Seconds per job in the selected range." + DURATION_NOTE,
                instant(average_duration()),
                width=4,
                height=5,
                unit="s",
            ),
            panel(
                "timeseries",
                "Jobs per hour by status",
                "How many jobs finish per hour, split into pass and fail.",
                Query(f"sum by (tao_status) ({per_hour(JOBS)})", "{{tao_status}}"),
                width=16,
            ),
            panel(
                "pie",
                "Failures by user error",
                "Failed jobs in range, split by whether the failure was the"
                " user's (tao_user_error)." + NEW_SERIES_NOTE,
                instant(
                    "sum by (tao_user_error) "
                    f"({in_range(JOBS, FAILED, skip=['status'])})",
                    "user error: {{tao_user_error}}",
                ),
            ),
            panel(
                "bars",
                "Top networks",
                "The ten networks with the most jobs in range.",
                instant(f"topk(10, sum by (tao_network) ({jobs}))", "{{tao_network}}"),
            ),
            panel(
                "bars",
                "Top actions",
                "The ten actions with the most jobs in range.",
                instant(f"topk(10, sum by (tao_action) ({jobs}))", "{{tao_action}}"),
            ),
            panel(
                "pie",
                "Jobs by client type",
                "Jobs in range by the client that started them.",
                instant(f"sum by (tao_client_type) ({jobs})", "{{tao_client_type}}"),
            ),
            panel(
                "pie",
                "Jobs with AutoML",
                "Jobs in range by whether AutoML started them.",
                instant(
                    f"sum by (tao_automl_triggered) ({jobs})",
                    "AutoML: {{tao_automl_triggered}}",
                ),
            ),
            panel(
                "timeseries",
                "GPU-hours per hour by network",
                "GPU-hours consumed per hour of wall time." + GPU_TIME_NOTE,
                Query(
                    f"sum by (tao_network) ({per_hour(GPU_TIME)}) / 3600",
                    "{{tao_network}}",
                ),
                width=16,
            ),
        ),
    )


def network_analysis() -> Dashboard:
    jobs = in_range(JOBS)
    return Dashboard(
        file_name="tao_network_analysis.json",
        uid="tao-network-analysis",
        title="TAO Network Analysis",
        description="TAO jobs per network: volume, outcome, duration, GPU time.",
        tags=("tao", "telemetry", "networks"),
        time_from="now-30d",
        variables=ALL_FILTERS,
        panels=(
            panel(
                "bars",
                "Jobs by network (all time)",
                "Every job counted since telemetry began, per network.",
                instant(f"sum by (tao_network) ({selector(JOBS)})", "{{tao_network}}"),
                width=8,
                height=9,
            ),
            panel(
                "bars",
                "Jobs by network in range",
                "Jobs finished in the selected range, per network." + NEW_SERIES_NOTE,
                instant(f"sum by (tao_network) ({jobs})", "{{tao_network}}"),
                width=8,
                height=9,
            ),
            panel(
                "bars",
                "Pass rate by network",
                "Share of each network's jobs in range that passed; the status"
                " variable is ignored here.",
                instant(
                    ratio(
                        in_range(JOBS, PASSED, skip=["status"]),
                        in_range(JOBS, skip=["status"]),
                        by="tao_network",
                    ),
                    "{{tao_network}}",
                ),
                width=8,
                height=9,
                unit="percentunit",
                decimals=1,
            ),
            panel(
                "timeseries",
                "Jobs per hour by network",
                "How many jobs of each network finish per hour.",
                Query(f"sum by (tao_network) ({per_hour(JOBS)})", "{{tao_network}}"),
                width=12,
            ),
            panel(
                "bars",
                "Passed and failed jobs by network",
                "Jobs in range per network and outcome." + NEW_SERIES_NOTE,
                instant(
                    f"sum by (tao_network, tao_status) ({jobs})",
                    "{{tao_network}} {{tao_status}}",
                ),
                width=12,
            ),
            panel(
                "bars",
                "Average duration by network",
                "Seconds per job in range, per network." + DURATION_NOTE,
                instant(average_duration("tao_network"), "{{tao_network}}"),
                width=12,
                unit="s",
            ),
            panel(
                "bars",
                "GPU-hours by network",
                "GPU time used in range per network, in hours." + GPU_TIME_NOTE,
                instant(
                    f"sum by (tao_network) ({in_range(GPU_TIME)}) / 3600",
                    "{{tao_network}}",
                ),
                width=12,
                decimals=1,
            ),
            panel(
                "table",
                "Actions per network",
                "Jobs in range for each network and action.",
                Query(f"sum by (tao_network, tao_action) ({jobs})", table=True),
                width=12,
                height=10,
            ),
            panel(
                "table",
                "TAO versions per network",
                "Jobs in range for each network and TAO version.",
                Query(f"sum by (tao_network, tao_version) ({jobs})", table=True),
                width=12,
                height=10,
            ),
        ),
    )


def gpu_utilization() -> Dashboard:
    multi_gpu = 'tao_gpu_count!~"0|1"'
    return Dashboard(
        file_name="tao_gpu_utilization.json",
        uid="tao-gpu-utilization",
        title="TAO GPU Utilization",
        description="GPUs used by TAO jobs: types, GPU-hours, multi-GPU jobs.",
        tags=("tao", "telemetry", "gpu"),
        time_from="now-30d",
        variables=ALL_FILTERS,
        panels=(
            panel(
                "stat",
                "GPU-hours all time",
                "GPU time recorded since telemetry began, in hours." + GPU_TIME_NOTE,
                instant(f"sum({selector(GPU_TIME)}) / 3600"),
                width=6,
                height=5,
                decimals=1,
            ),
            panel(
                "stat",
                "GPU-hours in range",
                "GPU time used by the jobs in range, in hours." + GPU_TIME_NOTE,
                instant(f"sum({in_range(GPU_TIME)}) / 3600"),
                width=6,
                height=5,
                decimals=1,
            ),
            panel(
                "stat",
                "Multi-GPU share of jobs",
                "Share of the jobs in range that used more than one GPU.",
                instant(ratio(in_range(JOBS, multi_gpu), in_range(JOBS))),
                width=6,
                height=5,
                unit="percentunit",
                decimals=1,
            ),
            panel(
                "stat",
                "Multi-GPU share of GPU-hours",
                "Share of the GPU-hours in range used by jobs with more than one"
                " GPU." + GPU_TIME_NOTE,
                instant(ratio(in_range(GPU_TIME, multi_gpu), in_range(GPU_TIME))),
                width=6,
                height=5,
                unit="percentunit",
                decimals=1,
            ),
            panel(
                "bars",
                "GPUs used by type (all time)",
                "GPUs allocated to jobs since telemetry began, per GPU type."
                + GPU_TYPE_NOTE,
                instant(f"sum by (tao_gpu_type) ({GPUS_BY_TYPE})", "{{tao_gpu_type}}"),
            ),
            panel(
                "bars",
                "GPUs used by type in range",
                "GPUs allocated to the jobs in range, per GPU type." + GPU_TYPE_NOTE,
                instant(
                    f"sum by (tao_gpu_type) (increase({GPUS_BY_TYPE}[$__range]))",
                    "{{tao_gpu_type}}",
                ),
            ),
            panel(
                "timeseries",
                "GPUs allocated per hour by type",
                "GPUs handed to jobs per hour, per GPU type." + GPU_TYPE_NOTE,
                Query(
                    "sum by (tao_gpu_type) "
                    f"(rate({GPUS_BY_TYPE}[$__rate_interval]) * 3600)",
                    "{{tao_gpu_type}}",
                ),
            ),
            panel(
                "bars",
                "GPU-hours by primary GPU",
                "GPU time used in range per primary GPU type, in hours."
                + GPU_TIME_NOTE,
                instant(
                    f"sum by (tao_primary_gpu) ({in_range(GPU_TIME)}) / 3600",
                    "{{tao_primary_gpu}}",
                ),
                width=12,
                decimals=1,
            ),
            panel(
                "bars",
                "GPU-hours by GPU count",
                "GPU time used in range by jobs of each GPU count, in hours."
                + GPU_TIME_NOTE,
                instant(
                    f"sum by (tao_gpu_count) ({in_range(GPU_TIME)}) / 3600",
                    "{{tao_gpu_count}} GPU",
                ),
                width=12,
                decimals=1,
            ),
            panel(
                "timeseries",
                "Average GPUs busy by primary GPU",
                "GPU-seconds used per second of wall time: the average number of"
                " GPUs kept busy by TAO jobs." + GPU_TIME_NOTE,
                Query(
                    "sum by (tao_primary_gpu) "
                    f"(rate({selector(GPU_TIME)}[$__rate_interval]))",
                    "{{tao_primary_gpu}}",
                ),
                width=24,
            ),
        ),
    )


def version_migration() -> Dashboard:
    jobs = in_range(JOBS)
    rate = f"rate({selector(JOBS)}[$__rate_interval])"
    return Dashboard(
        file_name="tao_version_migration.json",
        uid="tao-version-migration",
        title="TAO Version Migration",
        description="Which TAO versions run jobs, and how well each one does.",
        tags=("tao", "telemetry", "versions"),
        time_from="now-90d",
        variables=ALL_FILTERS,
        panels=(
            panel(
                "bars",
                "Jobs by version (all time)",
                "Every job counted since telemetry began, per TAO version.",
                instant(f"sum by (tao_version) ({selector(JOBS)})", "{{tao_version}}"),
            ),
            panel(
                "pie",
                "Version share in range",
                "Each TAO version's share of the jobs in range." + NEW_SERIES_NOTE,
                instant(f"sum by (tao_version) ({jobs})", "{{tao_version}}"),
            ),
            panel(
                "bars",
                "Failure rate by version",
                "Share of each version's jobs in range that failed; the status"
                " variable is ignored here." + NEW_SERIES_NOTE,
                instant(
                    ratio(
                        in_range(JOBS, FAILED, skip=["status"]),
                        in_range(JOBS, skip=["status"]),
                        by="tao_version",
                    ),
                    "{{tao_version}}",
                ),
                unit="percentunit",
                decimals=1,
            ),
            panel(
                "timeseries",
                "Jobs per hour by version",
                "How many jobs each TAO version finishes per hour.",
                Query(f"sum by (tao_version) ({per_hour(JOBS)})", "{{tao_version}}"),
                width=12,
            ),
            panel(
                "timeseries",
                "Adoption share by version",
                "Each version's share of the jobs finishing at each moment.",
                Query(
                    f"sum by (tao_version) ({rate}) / scalar(sum({rate}))",
                    "{{tao_version}}",
                ),
                width=12,
                unit="percentunit",
            ),
            panel(
                "timeseries",
                "Failure rate by version over time",
                "Share of each version's jobs that fail, over time; the status"
                " variable is ignored here.",
                Query(
                    ratio(
                        f"rate({selector(JOBS, FAILED, skip=['status'])}"
                        "[$__rate_interval])",
                        f"rate({selector(JOBS, skip=['status'])}[$__rate_interval])",
                        by="tao_version",
                    ),
                    "{{tao_version}}",
                ),
                width=12,
                unit="percentunit",
            ),
            panel(
                "table",
                "Versions per action",
                "Jobs in range for each TAO version and action.",
                Query(f"sum by (tao_version, tao_action) ({jobs})", table=True),
                width=12,
            ),
        ),
    )


def legacy_metrics() -> Dashboard:
    comprehensive_parts = (
        ("network", "network_(.+?)_action_.+"),
        ("action", "network_.+?_action_(.+?)_version_.+"),
        ("version", ".+_version_(.+?)_status_.+"),
        ("status", ".+_status_(pass|fail)_gpu_.+"),
    )
    not_comprehensive = COMPREHENSIVE
    return Dashboard(
        file_name="tao_legacy_metrics.json",
        uid="tao-legacy-metrics",
        title="TAO Legacy Metrics",
        description=(
            "The flat counters written before labeled metrics existed, kept so"
            " that history from the old telemetry server stays visible."
        ),
        tags=("tao", "telemetry", "legacy"),
        time_from="now-30d",
        variables=(),
        panels=(
            panel(
                "stat",
                "Legacy jobs (pass + fail)",
                "Sum of every total_action_<action>_<pass|fail> counter.",
                instant(legacy(LEGACY_ACTION)),
                width=6,
                height=5,
                decimals=0,
            ),
            panel(
                "stat",
                "Legacy failed jobs",
                "Sum of every total_action_<action>_fail counter.",
                instant(legacy(r"total_action_.+_fail")),
                width=6,
                height=5,
                decimals=0,
            ),
            panel(
                "stat",
                "Comprehensive jobs",
                "Sum of every network_..._status_..._gpu_... counter.",
                instant(legacy(COMPREHENSIVE)),
                width=6,
                height=5,
                decimals=0,
            ),
            panel(
                "stat",
                "time_lapsed_today",
                "The time_lapsed_today value as stored in the metrics document.",
                instant("sum(time_lapsed_today)"),
                width=6,
                height=5,
            ),
            panel(
                "bars",
                "Pass and fail per action",
                "total_action_<action>_<pass|fail>, one bar per action and outcome.",
                instant(
                    legacy(
                        LEGACY_ACTION,
                        ("action", "total_action_(.+)_(?:pass|fail)"),
                        ("status", "total_action_.+_(pass|fail)"),
                    ),
                    "{{action}} {{status}}",
                ),
                width=12,
                height=10,
            ),
            panel(
                "bars",
                "Jobs per version",
                "version_<version>_action_<action>, summed per version.",
                instant(
                    legacy(LEGACY_VERSION, ("version", "version_(.+?)_action_.+")),
                    "{{version}}",
                ),
                width=12,
                height=10,
            ),
            panel(
                "bars",
                "Jobs per network",
                "network_<network>_action_<action>, summed per network"
                " (comprehensive keys excluded).",
                instant(
                    legacy(
                        LEGACY_NETWORK,
                        ("network", "network_(.+?)_action_.+"),
                        exclude=not_comprehensive,
                    ),
                    "{{network}}",
                ),
                width=12,
                height=10,
            ),
            panel(
                "bars",
                "Jobs per GPU",
                "gpu_<gpu>_action_<action>, summed per GPU.",
                instant(
                    legacy(LEGACY_GPU, ("gpu", "gpu_(.+?)_action_.+")),
                    "{{gpu}}",
                ),
                width=12,
                height=10,
            ),
            panel(
                "table",
                "Comprehensive metrics",
                "The comprehensive counters summed per network, action, version and"
                " status; GPU details stay in the metric names.",
                Query(legacy(COMPREHENSIVE, *comprehensive_parts), table=True),
                width=24,
                height=12,
            ),
            panel(
                "timeseries",
                "Legacy counters over time",
                "total_action_<action>_<pass|fail> as Prometheus scraped them.",
                Query(
                    legacy(
                        LEGACY_ACTION,
                        ("action", "total_action_(.+)_(?:pass|fail)"),
                        ("status", "total_action_.+_(pass|fail)"),
                    ),
                    "{{action}} {{status}}",
                ),
                width=24,
            ),
        ),
    )


DASHBOARDS: tuple[Callable[[], Dashboard], ...] = (
    executive,
    network_analysis,
    gpu_utilization,
    version_migration,
    legacy_metrics,
)


def rendered() -> dict[str, str]:
    """Return every dashboard file name with its text."""
    return {spec.file_name: spec.render() for spec in (make() for make in DASHBOARDS)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dashboards.py",
        description="Write the Grafana dashboards in grafana_dashboards/ from code.",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=OUTPUT_DIR,
        help="folder for the JSON files (default: grafana_dashboards/)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when a file differs from the generated one",
    )
    return parser


def generate(args: argparse.Namespace) -> int:
    """Write the dashboards that changed, or with --check report them."""
    stale = []
    for name, text in rendered().items():
        path = args.output_dir / name
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(name)
        if not args.check:
            atomic_write(str(path), text.encode(), overwrite=True)
            print(f"wrote {path}")
    if args.check and stale:
        raise UsageError(
            f"out of date: {', '.join(stale)}; run python dashboards.py to rewrite"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli_support.run(generate, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
