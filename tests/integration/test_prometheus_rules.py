"""Alert and recording rules: promtool checks them and runs their unit tests; every alert has a test where it
fires and one where it stays silent, a runbook section and a runbook_url pointing at it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import require_tool

ROOT = Path(__file__).resolve().parents[2]
RULES = sorted((ROOT / "deploy/prometheus/rules").glob("*.yml"))
TESTS = sorted((ROOT / "deploy/prometheus/tests").glob("*.yml"))
RUNBOOK = ROOT / "deploy/prometheus/RUNBOOK.md"


def alert_rules() -> list[dict]:
    return [rule for path in RULES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"] if "alert" in rule]


def test_rules_pass_promtool_check():
    promtool = require_tool("promtool")
    result = subprocess.run([promtool, "check", "rules", *map(str, RULES)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass():
    promtool = require_tool("promtool")
    result = subprocess.run([promtool, "test", "rules", *map(str, TESTS)], capture_output=True, text=True,
                            timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_unit_tests_load_every_rule_file():
    for path in TESTS:
        loaded = {(path.parent / f).resolve() for f in yaml.safe_load(path.read_text())["rule_files"]}
        assert loaded == {p.resolve() for p in RULES}, path


def _cases() -> dict[str, dict[str, set]]:
    """alertname -> {"fires": {severities seen firing}, "silent": {1 per silent case}}."""
    cases: dict[str, dict[str, set]] = {}
    for path in TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                entry = cases.setdefault(case["alertname"], {"fires": set(), "silent": set()})
                if case.get("exp_alerts"):
                    entry["fires"] |= {a["exp_labels"]["severity"] for a in case["exp_alerts"]}
                else:
                    entry["silent"].add(f"{test['name']}@{case['eval_time']}")
    return cases


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: f"{r['alert']}-{r['labels']['severity']}")
def test_every_alert_fires_and_stays_silent_in_a_test(rule):
    case = _cases().get(rule["alert"])
    assert case, f"{rule['alert']}: no promtool test case"
    assert rule["labels"]["severity"] in case["fires"], f"{rule['alert']}: no case where it fires at this severity"
    assert case["silent"], f"{rule['alert']}: no case where it must stay silent"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: f"{r['alert']}-{r['labels']['severity']}")
def test_every_alert_has_a_runbook_section(rule):
    anchors = {_anchor(m) for m in re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), re.M)}
    url = rule["annotations"]["runbook_url"]
    path, _, anchor = url.partition("#")
    assert path == "deploy/prometheus/RUNBOOK.md" and anchor in anchors, url
    for key in ("summary", "description"):
        assert rule["annotations"].get(key), f"{rule['alert']}: {key}"
    assert rule["labels"]["severity"] in ("page", "ticket", "critical", "warning")
