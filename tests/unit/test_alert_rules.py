"""The alert rules shipped with the collection (monitoring/prometheus/alerts.yml): valid for Prometheus
(``promtool check rules``), each alert firing and silent where its cases in alerts_test.yml say (``promtool test
rules``), and written against metric names the exposition produces.

promtool comes with Debian's ``prometheus`` package, which the testbed installs (role testbed, without starting
its server): under CI (``CI=1``, as ``make test`` runs) a missing promtool fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import replace

import pytest
import yaml

from han_worker.observe.exposition import exposition
from tests.conftest import REPO
from tests.unit.test_observe import snapshot
from tests.unit.test_observe_tallies import pool, switches

RULES_DIR = REPO / "monitoring" / "prometheus"
RULES, RULE_TESTS = RULES_DIR / "alerts.yml", RULES_DIR / "alerts_test.yml"
ALERTS = (
    "HanWorkerGone",
    "HanOldestWaitingJobTooOld",
    "HanFailureRatioHigh",
    "HanControlPlaneOnMac",
    "HanControlPlaneWalltimeEndsWithoutSuccessor",
    "HanScalerPaused",
)
METRIC = re.compile(r"\bhan_[a-z_]+\b")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is missing: install Debian's prometheus package (make testbed does)"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=RULES_DIR, capture_output=True, text=True, timeout=60, check=False
    )


def rules() -> list[dict[str, object]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_promtool_finds_the_rules_valid() -> None:
    result = run_promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_every_alert_fires_and_stays_silent_where_its_cases_say() -> None:
    result = run_promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    cases = [
        case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]
    ]
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    silent = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert sorted(rule["alert"] for rule in rules()) == sorted(ALERTS)  # type: ignore[type-var]
    assert firing == set(ALERTS)
    assert silent == set(ALERTS)


def test_the_rules_name_only_metrics_the_exposition_produces() -> None:
    everything = replace(snapshot(), pools=(pool(),), switches=switches())
    produced = {name.removesuffix("_total") for name in METRIC.findall(exposition(everything))}
    produced |= {f"{name}_total" for name in produced}
    named = {name for rule in rules() for name in METRIC.findall(str(rule["expr"]))}
    assert named, "no metric named in the rules"
    assert named <= produced, named - produced
