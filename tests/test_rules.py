"""Check the Prometheus rule files with promtool and their unit tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.servers import REPO, require_binary

RULES_DIR = REPO / "prometheus"
ALERT_RULES = RULES_DIR / "tao_alert_rules.yml"
RECORDING_RULES = RULES_DIR / "tao_recording_rules.yml"
RULE_TESTS = (RULES_DIR / "tao_rules_test.yml", RULES_DIR / "tao_rules_test_daily.yml")


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in load(path)["groups"] for rule in group["rules"]]


def alert_names() -> list[str]:
    return [rule["alert"] for rule in rules(ALERT_RULES)]


def promtool(*args: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    binary = require_binary("promtool")
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )


def test_promtool_accepts_the_rule_files() -> None:
    result = promtool("check", "rules", ALERT_RULES.name, RECORDING_RULES.name)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == 2


def rule_test_cases() -> list[dict[str, Any]]:
    return [case for path in RULE_TESTS for case in load(path)["tests"]]


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", *(path.name for path in RULE_TESTS))

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)


def test_every_alert_is_tested_firing_and_quiet() -> None:
    cases: dict[str, set[bool]] = {name: set() for name in alert_names()}
    for case in rule_test_cases():
        for check in case.get("alert_rule_test", []):
            cases[check["alertname"]].add(bool(check["exp_alerts"]))

    untested = {name: fired for name, fired in cases.items() if fired != {True, False}}
    assert not untested, f"alerts without a firing and a quiet case: {untested}"


def test_every_recording_rule_is_tested() -> None:
    exprs = [
        check["expr"]
        for case in rule_test_cases()
        for check in case.get("promql_expr_test", [])
    ]
    recorded = [rule["record"] for rule in rules(RECORDING_RULES)]

    untested = [name for name in recorded if not any(name in e for e in exprs)]
    assert not untested


def test_alerts_carry_severity_and_summary() -> None:
    for rule in rules(ALERT_RULES):
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]


@pytest.mark.parametrize("alert", alert_names())
def test_unit_tests_catch_an_alert_that_never_fires(alert: str, tmp_path: Path) -> None:
    """Silence one alert in a copy of the rules; its unit tests must then fail."""
    document = load(ALERT_RULES)
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == alert:
                rule["expr"] = "vector(1) > 2"
    (tmp_path / ALERT_RULES.name).write_text(yaml.safe_dump(document))
    shutil.copy(RECORDING_RULES, tmp_path)
    for path in RULE_TESTS:
        tests = load(path)
        tests["tests"] = [
            case
            for case in tests["tests"]
            if any(c["alertname"] == alert for c in case.get("alert_rule_test", []))
        ]
        (tmp_path / path.name).write_text(yaml.safe_dump(tests))

    names = [path.name for path in RULE_TESTS]
    result = promtool("test", "rules", *names, cwd=tmp_path)

    assert result.returncode != 0
    assert f"alertname: {alert}," in result.stdout + result.stderr
