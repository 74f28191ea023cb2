"""Build Grafana dashboard JSON from short panel descriptions.

The PromQL helpers spell the queries the TAO dashboards share; Dashboard turns
a list of Panel descriptions into the JSON that Grafana imports, through
grafana-foundation-sdk's typed builders.  Every datasource reference, in
panels, targets and template variables, points at the ``datasource`` template
variable, so the same file works through the import dialog and through file
provisioning, where ``${DS_...}`` inputs are never resolved.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from grafana_foundation_sdk.builders import bargauge, piechart, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models.piechart import PieChartLegendValues
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

SCHEMA_VERSION = 41
Kind = Literal["stat", "bars", "pie", "timeseries", "table"]
DATASOURCE = models.DataSourceRef(type_val="prometheus", uid="${datasource}")

JOBS = "tao_job_total"
DURATION = "tao_job_duration_sum"
GPU_TIME = "tao_job_gpu_time_sum"
GPUS = "tao_job_gpu_total"
PASSED = 'tao_status="pass"'
FAILED = 'tao_status="fail"'

# Template variable name -> the label of the job metrics it filters.
FILTERS = {
    "network": "tao_network",
    "action": "tao_action",
    "version": "tao_version",
    "gpu": "tao_primary_gpu",
    "status": "tao_status",
}
LABELS = {
    "network": "Network",
    "action": "Action",
    "version": "TAO version",
    "gpu": "GPU type",
    "status": "Status",
}

LEGACY_ACTION = r"total_action_.+_(pass|fail)"
LEGACY_VERSION = r"version_.+_action_.+"
LEGACY_NETWORK = r"network_.+_action_.+"
LEGACY_GPU = r"gpu_.+_action_.+"
COMPREHENSIVE = r"network_.+_action_.+_version_.+_status_(pass|fail)_gpu_[0-9]+(_.*)?"


def selector(metric: str, *extra: str, skip: Iterable[str] = ()) -> str:
    """Return metric{...} filtered by every template variable not in skip."""
    matchers = [
        f'{label}=~"${variable}"'
        for variable, label in FILTERS.items()
        if variable not in skip
    ]
    return metric + "{" + ",".join([*matchers, *extra]) + "}"


def in_range(metric: str, *extra: str, skip: Iterable[str] = ()) -> str:
    """Return the increase of a counter over the dashboard's time range."""
    return f"increase({selector(metric, *extra, skip=skip)}[$__range])"


def per_hour(metric: str, *extra: str, skip: Iterable[str] = ()) -> str:
    """Return the per-hour rate of a counter."""
    return f"rate({selector(metric, *extra, skip=skip)}[$__rate_interval]) * 3600"


def ratio(part: str, whole: str, by: str = "") -> str:
    """Return part / whole summed by the same labels, 0 where part has no series."""
    grouping = f"sum by ({by}) " if by else "sum "
    zero = f"({grouping}({whole}) * 0)" if by else "vector(0)"
    return f"({grouping}({part}) or {zero}) / {grouping}({whole})"


def average_duration(by: str = "") -> str:
    """Return seconds per job over label sets that report a duration."""
    grouping = f"sum by ({by}) " if by else "sum "
    durations = in_range(DURATION)
    jobs = f"{in_range(JOBS)} and {selector(DURATION)}"
    return f"{grouping}({durations}) / {grouping}({jobs})"


def legacy(pattern: str, *captures: tuple[str, str], exclude: str = "") -> str:
    """Sum flat legacy gauges whose name matches pattern by parts of the name."""
    series = f'__name__=~"{pattern}"'
    if exclude:
        series += f',__name__!~"{exclude}"'
    expr = "{" + series + "}"
    for label, regex in captures:
        expr = f'label_replace({expr}, "{label}", "$1", "__name__", "{regex}")'
    names = ", ".join(label for label, _ in captures)
    return f"sum by ({names}) ({expr})" if names else f"sum ({expr})"


@dataclass(frozen=True)
class Query:
    """One PromQL target of a panel."""

    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False


@dataclass(frozen=True)
class Panel:
    """What a panel shows; the builder functions below turn it into JSON."""

    kind: Kind
    title: str
    description: str
    queries: tuple[Query, ...]
    width: int
    height: int
    unit: str = "short"
    decimals: int | None = None


def panel(
    kind: Kind,
    title: str,
    description: str,
    *queries: Query,
    width: int = 8,
    height: int = 8,
    unit: str = "short",
    decimals: int | None = None,
) -> Panel:
    """Describe a panel; queries become targets A, B, ... in order."""
    return Panel(kind, title, description, queries, width, height, unit, decimals)


def instant(expr: str, legend: str = "") -> Query:
    """Describe a query evaluated once, at the end of the time range."""
    return Query(expr, legend, instant=True)


def _reduce_last() -> common_builders.ReduceDataOptions:
    return common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False)


def _stat() -> stat.Panel:
    return (
        stat.Panel()
        .reduce_options(_reduce_last())
        .graph_mode(common.BigValueGraphMode.NONE)
    )


def _bars() -> bargauge.Panel:
    return (
        bargauge.Panel()
        .reduce_options(_reduce_last())
        .orientation(common.VizOrientation.HORIZONTAL)
        .display_mode(common.BarGaugeDisplayMode.GRADIENT)
    )


def _pie() -> piechart.Panel:
    values = [PieChartLegendValues.VALUE, PieChartLegendValues.PERCENT]
    legend = (
        piechart.PieChartLegendOptions()
        .show_legend(True)
        .display_mode(common.LegendDisplayMode.TABLE)
        .placement(common.LegendPlacement.RIGHT)
        .values(values)
    )
    return piechart.Panel().reduce_options(_reduce_last()).legend(legend)


def _timeseries() -> timeseries.Panel:
    return timeseries.Panel().fill_opacity(10).line_width(1)


def _table() -> table.Panel:
    # Every table counts jobs: hide the evaluation time, name the value column.
    organize = models.DataTransformerConfig(
        id_val="organize",
        options={
            "excludeByName": {"Time": True},
            "renameByName": {"Value": "Jobs"},
        },
    )
    return table.Panel().with_transformation(organize)


KINDS: dict[Kind, Callable[[], Any]] = {
    "stat": _stat,
    "bars": _bars,
    "pie": _pie,
    "timeseries": _timeseries,
    "table": _table,
}


def _target(query: Query, ref_id: str) -> prom.Dataquery:
    target = prom.Dataquery().expr(query.expr).ref_id(ref_id).datasource(DATASOURCE)
    if query.legend:
        target.legend_format(query.legend)
    if query.table:
        target.format(PromQueryFormat.TABLE)
    return target.instant() if query.instant or query.table else target.range()


@dataclass
class Layout:
    """Place panels left to right in rows 24 columns wide, numbering them."""

    x: int = 0
    y: int = 0
    row_height: int = 0
    built: list[Any] = field(default_factory=list)

    def add(self, spec: Panel) -> Any:
        if self.x + spec.width > 24:
            self.x, self.y, self.row_height = 0, self.y + self.row_height, 0
        builder = KINDS[spec.kind]()
        builder.id(len(self.built) + 1).title(spec.title)
        builder.description(spec.description).datasource(DATASOURCE).unit(spec.unit)
        if spec.decimals is not None:
            builder.decimals(spec.decimals)
        builder.grid_pos(
            models.GridPos(h=spec.height, w=spec.width, x=self.x, y=self.y)
        )
        for index, query in enumerate(spec.queries):
            builder.with_target(_target(query, chr(ord("A") + index)))
        self.built.append(builder)
        self.x += spec.width
        self.row_height = max(self.row_height, spec.height)
        return builder


def datasource_variable() -> builders.DatasourceVariable:
    return (
        builders.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
    )


def filter_variable(name: str) -> builders.QueryVariable:
    """Return a multi-value variable listing the values of one job label."""
    query = f"label_values({JOBS}, {FILTERS[name]})"
    return (
        builders.QueryVariable(name)
        .label(LABELS[name])
        .datasource(DATASOURCE)
        .query(query)
        .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(models.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(models.VariableOption(selected=True, text="All", value="$__all"))
    )


@dataclass(frozen=True)
class Dashboard:
    """The fixed parts of one dashboard and its panels."""

    file_name: str
    uid: str
    title: str
    description: str
    tags: tuple[str, ...]
    time_from: str
    variables: tuple[str, ...]
    panels: tuple[Panel, ...]
    refresh: str = "5m"

    def build(self) -> dict[str, Any]:
        """Return the dashboard as the JSON object Grafana imports."""
        builder = (
            builders.Dashboard(self.title)
            .uid(self.uid)
            .description(self.description)
            .tags(list(self.tags))
            .time(self.time_from, "now")
            .refresh(self.refresh)
            .timezone("browser")
            .tooltip(models.DashboardCursorSync.CROSSHAIR)
            .annotations([])
            .with_variable(datasource_variable())
        )
        for name in self.variables:
            builder.with_variable(filter_variable(name))
        layout = Layout()
        for spec in self.panels:
            builder.with_panel(layout.add(spec))
        document = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
        # Import and provisioning both assign their own id; a fixed one clashes.
        document["id"] = None
        document["schemaVersion"] = SCHEMA_VERSION
        return document

    def render(self) -> str:
        """Return the file text: sorted keys, two-space indent, trailing newline."""
        return json.dumps(self.build(), indent=2, sort_keys=True) + "\n"
