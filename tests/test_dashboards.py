"""Check the Grafana dashboards: the JSON itself, then every query on real data.

The second half records sample jobs in a real MongoDB-wire server, serves the
document with exporter.py, lets a real Prometheus scrape it every second and
runs every panel, variable and rule expression through Prometheus' HTTP API.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
import yaml

import dashboards
from dashboard_builder import SCHEMA_VERSION
from labeled import record_jobs
from metric_keys import COMPREHENSIVE, LEGACY, classify, parse_key
from mongo_store import Location, MetricsStore
from sample_data import sample_jobs
from snapshots import SELF_METRICS
from tests.servers import (
    REPO,
    PrometheusServer,
    free_port,
    require_binary,
    wait_until,
)

DASHBOARD_DIR = REPO / "grafana_dashboards"
RULE_FILES = (
    REPO / "prometheus" / "tao_alert_rules.yml",
    REPO / "prometheus" / "tao_recording_rules.yml",
)
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SCRAPE_JOB = "tao-metrics-exporter"

# Values Grafana would put in place of its variables in the test: every
# template variable set to All, a range and rate window the data fits in.
SUBSTITUTIONS = {
    "__range": "1h",
    "__rate_interval": "1m",
    "__interval": "15s",
    "network": ".*",
    "action": ".*",
    "version": ".*",
    "gpu": ".*",
    "status": ".*",
}

# Expressions that return nothing on a healthy system, by design: alerts are
# quiet.  Panels have none; each one must show data.
EMPTY_BY_DESIGN = {
    "TaoExporterDown",
    "TaoExporterMongoDBUnreachable",
    "TaoTelemetryStale",
    "TaoJobFailureRateHigh",
    "TaoMetricsDocumentNearLimit",
    "TaoExporterSkippingKeys",
}

# Metric names the queries may use; each one found in a query must exist.
KNOWN_METRICS = (
    "tao_job_total",
    "tao_job_duration_sum",
    "tao_job_gpu_time_sum",
    "tao_job_gpu_total",
    "time_lapsed_today",
    "up",
    *SELF_METRICS,
)

# Metrics that exist only for some jobs or carry other labels: a panel using
# one must say so in its description.
PARTIAL_METRICS = ("tao_job_duration_sum", "tao_job_gpu_time_sum", "tao_job_gpu_total")


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {
        path.name: json.loads(path.read_text())
        for path in sorted(DASHBOARD_DIR.glob("*.json"))
    }


def panel_queries(dashboard: dict[str, Any]) -> Iterator[tuple[dict, dict]]:
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            yield panel, target


def datasource_refs(node: Any) -> Iterator[Any]:
    """Yield every value stored under a "datasource" key, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            yield from datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from datasource_refs(item)


def substitute(expr: str) -> str:
    """Replace Grafana variables as a dashboard with every variable at All does."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name.isdigit():
            return match.group(0)
        if name not in SUBSTITUTIONS:
            raise AssertionError(f"unknown variable ${name} in {expr}")
        return SUBSTITUTIONS[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, expr)


def metrics_in(expr: str) -> set[str]:
    return {
        name
        for name in KNOWN_METRICS
        if re.search(rf"(?<![\w:]){re.escape(name)}(?![\w:])", expr)
    }


DASHBOARDS = load_dashboards()


# The JSON, as Grafana's import and file provisioning read it


def test_committed_files_are_the_generators_output() -> None:
    generated = dashboards.rendered()

    assert sorted(generated) == sorted(DASHBOARDS)
    for name, text in generated.items():
        assert (DASHBOARD_DIR / name).read_text() == text, (
            f"{name} is out of date; run python dashboards.py"
        )


def test_check_mode_reports_a_stale_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, text in dashboards.rendered().items():
        (tmp_path / name).write_text(text)
    assert dashboards.main(["--output-dir", str(tmp_path), "--check"]) == 0

    stale = tmp_path / "tao_gpu_utilization.json"
    stale.write_text(stale.read_text().replace("GPU", "gpu"))
    capsys.readouterr()

    assert dashboards.main(["--output-dir", str(tmp_path), "--check"]) == 1
    assert capsys.readouterr().err == (
        "error: out of date: tao_gpu_utilization.json;"
        " run python dashboards.py to rewrite\n"
    )
    assert dashboards.main(["--output-dir", str(tmp_path)]) == 0
    assert stale.read_text() == dashboards.rendered()[stale.name]
    assert capsys.readouterr().out == f"wrote {stale}\n"


def test_the_five_dashboards_exist() -> None:
    assert sorted(DASHBOARDS) == sorted(
        [
            "tao_executive_dashboard.json",
            "tao_network_analysis.json",
            "tao_gpu_utilization.json",
            "tao_version_migration.json",
            "tao_legacy_metrics.json",
        ]
    )


def test_uids_are_unique_and_stable() -> None:
    uids = [dashboard["uid"] for dashboard in DASHBOARDS.values()]

    assert len(set(uids)) == len(uids)
    for uid in uids:
        assert re.fullmatch(r"[a-z0-9-]{1,40}", uid), uid


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_top_level_fields_for_import_and_provisioning(name: str) -> None:
    dashboard = DASHBOARDS[name]

    assert dashboard["id"] is None
    assert dashboard["title"]
    assert dashboard["tags"] and "tao" in dashboard["tags"]
    assert dashboard["schemaVersion"] == SCHEMA_VERSION
    assert re.fullmatch(r"now-\d+[dh]", dashboard["time"]["from"])
    assert dashboard["time"]["to"] == "now"
    assert re.fullmatch(r"\d+[sm]", dashboard["refresh"])
    assert "__inputs" not in dashboard
    assert "${DS_" not in json.dumps(dashboard)
    assert isinstance(dashboard["annotations"]["list"], list)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_datasource_is_the_template_variable(name: str) -> None:
    dashboard = DASHBOARDS[name]
    variables = dashboard["templating"]["list"]
    chooser = [v for v in variables if v["type"] == "datasource"]

    assert [(v["name"], v["query"]) for v in chooser] == [("datasource", "prometheus")]
    refs = list(datasource_refs(dashboard))
    # One per panel, one per target, one per query variable.
    targets = sum(len(panel["targets"]) for panel in dashboard["panels"])
    queries = [v for v in variables if v["type"] == "query"]
    assert len(refs) == len(dashboard["panels"]) + targets + len(queries)
    assert all(ref == DATASOURCE for ref in refs), refs


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_template_variables_offer_all(name: str) -> None:
    variables = DASHBOARDS[name]["templating"]["list"]
    names = [variable["name"] for variable in variables]

    assert len(set(names)) == len(names)
    for variable in variables:
        if variable["type"] != "query":
            continue
        assert variable["multi"] is True
        assert variable["includeAll"] is True
        assert variable["allValue"] == ".*"
        assert re.fullmatch(
            r"label_values\(tao_job_total, tao_\w+\)", variable["query"]
        )


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panels_have_ids_positions_and_queries(name: str) -> None:
    dashboard = DASHBOARDS[name]
    defined = {variable["name"] for variable in dashboard["templating"]["list"]}
    ids = [panel["id"] for panel in dashboard["panels"]]
    cells: set[tuple[int, int]] = set()

    assert len(set(ids)) == len(ids)
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        assert panel["title"] and panel["description"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids and len(set(ref_ids)) == len(ref_ids)
        for target in panel["targets"]:
            assert target["expr"].strip()
            used = set(re.findall(r"\$(?!__)([a-z]\w*)", target["expr"]))
            assert used <= defined, f"{panel['title']}: undefined {used - defined}"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_partial_metrics_are_explained(name: str) -> None:
    for panel, target in panel_queries(DASHBOARDS[name]):
        for metric in PARTIAL_METRICS:
            if metric in target["expr"]:
                assert metric in panel["description"], panel["title"]


# Every query against a real Prometheus scraping the real exporter


class Stack:
    """The document, the exporter serving it and Prometheus scraping it."""

    def __init__(self, store: MetricsStore, prometheus: PrometheusServer) -> None:
        self.store = store
        self.prometheus = prometheus

    def document(self) -> dict[str, Any]:
        document = self.store.read()
        assert document is not None
        return document

    def query_range(self, expr: str) -> list[dict]:
        end = time.time()
        data = self.prometheus.api(
            "query_range", query=expr, start=str(end - 20), end=str(end), step="2"
        )
        assert isinstance(data, dict)
        return data["result"]


def start_exporter(uri: str, db: str, log_path: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [
        sys.executable,
        str(REPO / "exporter.py"),
        *("--listen-address", "127.0.0.1", "--port", str(port)),
        *("--uri", uri, "--db", db, "--timeout", "5", "--cache-seconds", "1"),
    ]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=log)

    def serving() -> bool:
        if process.poll() is not None:
            raise RuntimeError("exporter exited:\n" + log_path.read_text())
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return b"tao_job_total{" in response.read()

    try:
        wait_until(serving, 30, "the exporter to serve the document")
    except TimeoutError:
        process.terminate()
        raise RuntimeError("exporter did not serve:\n" + log_path.read_text()) from None
    return process, port


def wait_for_value(prometheus: PrometheusServer, expr: str, value: float) -> None:
    def scraped() -> bool:
        result = prometheus.query(expr)
        return bool(result) and float(result[0]["value"][1]) == pytest.approx(value)

    wait_until(scraped, 30, f"prometheus to see {expr} == {value}")


def total(document: dict[str, Any], name: str) -> float:
    return sum(value for key, value in document.items() if key.startswith(name + "{"))


@pytest.fixture(scope="module")
def stack(mongo_uri: str) -> Iterator[Stack]:
    """Record jobs, serve them, scrape them; record more so counters move."""
    require_binary("prometheus")
    db = f"test_dashboards_{uuid.uuid4().hex[:8]}"
    folder = Path(tempfile.mkdtemp(prefix="dashboards-"))
    store = MetricsStore(mongo_uri, Location(db=db), 10)
    record_jobs(store, sample_jobs(300, seed=11))
    exporter, port = start_exporter(mongo_uri, db, folder / "exporter.log")
    prometheus = PrometheusServer(
        folder / "prometheus",
        [f"127.0.0.1:{port}"],
        rule_files=tuple(str(path) for path in RULE_FILES),
        job_options={"job_name": SCRAPE_JOB},
    )
    try:
        prometheus.start()
        prometheus.wait_for("tao_exporter_mongodb_up == 1")
        # Two batches repeating earlier jobs, so existing series increase.
        for seed in (11, 12):
            time.sleep(2)
            document = record_jobs(store, sample_jobs(40, seed=seed))
            wait_for_value(
                prometheus, "sum(tao_job_total)", total(document, "tao_job_total")
            )
        time.sleep(2)
        yield Stack(store, prometheus)
    except BaseException:
        print("exporter log:\n" + (folder / "exporter.log").read_text())
        print("prometheus log:\n" + prometheus.log())
        raise
    finally:
        prometheus.stop()
        exporter.terminate()
        exporter.wait(timeout=30)
        store.close()
        with pymongo.MongoClient(mongo_uri) as client:
            client.drop_database(db)


def all_queries() -> list[tuple[str, str, bool]]:
    """Return (where, expression, instant) for every panel target."""
    return [
        (
            f"{name}: {panel['title']} {target['refId']}",
            target["expr"],
            target["instant"],
        )
        for name, dashboard in DASHBOARDS.items()
        for panel, target in panel_queries(dashboard)
    ]


def rule_expressions() -> list[tuple[str, str]]:
    found = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                found.append((rule.get("alert") or rule["record"], rule["expr"]))
    return found


def test_every_panel_query_returns_data(stack: Stack) -> None:
    failures = []
    for where, expr, instant in all_queries():
        promql = substitute(expr)
        try:
            if instant:
                result = stack.prometheus.query(promql)
            else:
                result = stack.query_range(promql)
        except Exception as exc:
            failures.append(f"{where}: {exc}")
            continue
        if not result:
            failures.append(f"{where}: no data for {promql}")
    assert not failures, "\n".join(failures)


def test_range_panels_see_the_jobs_recorded_while_scraping(stack: Stack) -> None:
    name = "tao_executive_dashboard.json"
    jobs = one_value(stack, panel_expr("Jobs in range", name))
    pass_rate = one_value(stack, panel_expr("Pass rate", name))
    gpu_hours = one_value(stack, panel_expr("GPU-hours in range", name))

    # 80 jobs were recorded after the first scrape; most repeat earlier label
    # sets, and increase() only sees those.
    assert 20 < jobs < 200
    assert 0 < pass_rate <= 1
    assert gpu_hours > 0


def test_every_metric_a_query_names_exists(stack: Stack) -> None:
    expressions = [expr for _, expr, _ in all_queries()]
    expressions += [expr for _, expr in rule_expressions()]
    names = set().union(*(metrics_in(expr) for expr in expressions))

    assert "tao_exporter_mongodb_up" in names
    for name in sorted(names):
        assert stack.prometheus.query(f"count({{__name__={name!r}}})"), name


def test_every_rule_expression_runs(stack: Stack) -> None:
    failures = []
    for name, expr in rule_expressions():
        result = stack.prometheus.query(expr)
        if name in EMPTY_BY_DESIGN:
            continue
        if not result:
            failures.append(f"{name}: no data")
    assert not failures, "\n".join(failures)
    quiet = [name for name in EMPTY_BY_DESIGN if name != "TaoJobFailureRateHigh"]
    firing = stack.prometheus.api("alerts")
    assert isinstance(firing, dict)
    assert not {alert["labels"]["alertname"] for alert in firing["alerts"]} & set(quiet)


def test_rules_loaded_without_errors(stack: Stack) -> None:
    data = stack.prometheus.api("rules")
    assert isinstance(data, dict)
    rules = [rule for group in data["groups"] for rule in group["rules"]]

    assert len(rules) == len(rule_expressions())
    assert not [rule["name"] for rule in rules if rule.get("health") == "err"]


def test_template_variables_list_values(stack: Stack) -> None:
    for dashboard in DASHBOARDS.values():
        for variable in dashboard["templating"]["list"]:
            if variable["type"] != "query":
                continue
            metric, label = re.fullmatch(
                r"label_values\((\w+), (\w+)\)", variable["query"]
            ).groups()
            values = stack.prometheus.api(
                f"label/{label}/values", **{"match[]": metric}
            )
            assert values, variable["name"]


# Headline numbers against the document itself


def panel_expr(title: str, dashboard: str) -> str:
    panels = [p for p in DASHBOARDS[dashboard]["panels"] if p["title"] == title]
    assert len(panels) == 1, title
    return panels[0]["targets"][0]["expr"]


def by_label(stack: Stack, expr: str, label: str) -> dict[str, float]:
    result = stack.prometheus.query(substitute(expr))
    return {sample["metric"][label]: float(sample["value"][1]) for sample in result}


def one_value(stack: Stack, expr: str) -> float:
    result = stack.prometheus.query(substitute(expr))
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def labeled_sums(document: dict[str, Any], name: str, label: str) -> dict[str, float]:
    sums: dict[str, float] = defaultdict(float)
    for key, value in document.items():
        if key.startswith(name + "{"):
            sums[parse_key(key)[1][label]] += value
    return dict(sums)


def test_executive_jobs_all_time_match_the_document(stack: Stack) -> None:
    expr = panel_expr("Jobs all time", "tao_executive_dashboard.json")

    assert one_value(stack, expr) == total(stack.document(), "tao_job_total")


def test_network_jobs_match_the_document(stack: Stack) -> None:
    expr = panel_expr("Jobs by network (all time)", "tao_network_analysis.json")
    want = labeled_sums(stack.document(), "tao_job_total", "tao_network")

    assert by_label(stack, expr, "tao_network") == want
    assert len(want) > 10


def test_gpu_hours_and_types_match_the_document(stack: Stack) -> None:
    document = stack.document()
    hours = panel_expr("GPU-hours all time", "tao_gpu_utilization.json")
    types = panel_expr("GPUs used by type (all time)", "tao_gpu_utilization.json")

    want = total(document, "tao_job_gpu_time_sum") / 3600
    assert one_value(stack, hours) == pytest.approx(want, rel=1e-12)
    assert by_label(stack, types, "tao_gpu_type") == labeled_sums(
        document, "tao_job_gpu_total", "tao_gpu_type"
    )


def test_version_jobs_match_the_document(stack: Stack) -> None:
    expr = panel_expr("Jobs by version (all time)", "tao_version_migration.json")
    want = labeled_sums(stack.document(), "tao_job_total", "tao_version")

    assert by_label(stack, expr, "tao_version") == want
    assert set(want) >= {"5_3_0", "6_0_0"}


def test_legacy_counts_match_the_document(stack: Stack) -> None:
    document = stack.document()
    name = "tao_legacy_metrics.json"
    legacy = sum(v for k, v in document.items() if k.startswith("total_action_"))
    comprehensive = sum(v for k, v in document.items() if classify(k) == COMPREHENSIVE)
    networks: dict[str, float] = defaultdict(float)
    for key, value in document.items():
        match = re.fullmatch(r"network_(.+?)_action_.+", key)
        if match and classify(key) == LEGACY:
            networks[match.group(1)] += value

    assert one_value(stack, panel_expr("Legacy jobs (pass + fail)", name)) == legacy
    assert one_value(stack, panel_expr("Comprehensive jobs", name)) == comprehensive
    assert legacy == comprehensive == total(document, "tao_job_total")
    expr = panel_expr("Jobs per network", name)
    assert by_label(stack, expr, "network") == networks
    assert (
        one_value(stack, panel_expr("time_lapsed_today", name))
        == (document["time_lapsed_today"])
    )
