"""The Grafana dashboard: valid JSON with a Prometheus datasource variable used by every panel, three rows
(overview, shards, generation), every PromQL expression parsed by promtool, and every metric it names declared
(README metrics table, vLLM's metrics or our recording rules). tests/integration/test_prometheus_e2e.py checks
the same names against a real scrape of a running cluster."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from tests.helpers import GRAFANA_DASHBOARD, dashboard_queries, promql_metric_names, require_tool

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((ROOT / GRAFANA_DASHBOARD).read_text())


def test_datasource_variable_is_used_by_every_panel():
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in DASHBOARD["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    rows = [p["title"] for p in DASHBOARD["panels"] if p["type"] == "row"]
    assert rows == ["Overview", "Shards", "Generation"]
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))


def test_every_expression_parses(tmp_path):
    promtool = require_tool("promtool")
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": expr} for i, (_, expr) in enumerate(dashboard_queries(DASHBOARD))
    ]}]}
    path = tmp_path / "dashboard.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_is_declared():
    readme = (ROOT / "README.md").read_text().split("## Metrics\n", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `((?:ragcluster_|vllm:)[a-z_:]+)`", readme, re.M))
    recorded = {rule["record"] for path in (ROOT / "deploy/prometheus/rules").glob("*.yml")
                for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"] if "record" in rule}
    for title, expr in dashboard_queries(DASHBOARD):
        names = promql_metric_names(expr)
        assert names, f"{title}: no metric in {expr}"
        for name in names:
            base = re.sub(r"_(bucket|count|sum)$", "", name)
            assert name in documented | recorded or base in documented, f"{title}: {name} is not a known metric"


def test_metric_name_extraction():
    expr = ('histogram_quantile(0.99, sum by (shard, le) (rate(a_b_bucket{shard=~".*", x="y or z"}[5m]))) / '
            'on (shard) group_left (q) vllm:x_y > bool 0.5 and ragcluster:slo:ratio_rate5m offset 5m')
    assert promql_metric_names(expr) == {"a_b_bucket", "vllm:x_y", "ragcluster:slo:ratio_rate5m"}
