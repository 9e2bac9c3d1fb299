"""A real Prometheus (Debian's `prometheus`, on 127.0.0.1) with the repo's scrape config and rules, scraping a
cluster started by the `ragcluster up` launcher through the file_sd targets it writes. After some traffic, the
HTTP API must show every target up, key series with sane values, every rule evaluating without error, the
recording rules producing values, no alert firing on a healthy cluster (latency SLOs aside: they depend on the
machine), and every metric the Grafana dashboard names present in the scrape."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from ragcluster.client import RouterClient
from tests.helpers import GRAFANA_DASHBOARD, dashboard_queries, promql_metric_names, require_tool

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    def __init__(self, binary: str, config: Path, data: Path, log: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
                                          f"--web.listen-address=127.0.0.1:{self.port}"],
                                         stdout=out, stderr=subprocess.STDOUT)

    def get(self, path: str, **params: str) -> dict:
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        with urllib.request.urlopen(self.url + path + query, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]

    def wait(self, what: str, predicate, timeout: float = 90.0):
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.log.read_text()[-2000:]}")
            try:
                last = predicate()
                if last:
                    return last
            except (OSError, AssertionError) as exc:  # not listening yet, or not ready
                last = exc
            time.sleep(0.5)  # scrapes and rule evaluations run every second; bounded by the deadline
        raise AssertionError(f"timed out waiting for {what}: {last}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def prometheus(cluster, tmp_path_factory):
    binary = require_tool("prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    # the repo's config, pointed at this cluster's file_sd targets and the repo's rules; 1 s intervals for speed
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(ROOT / "deploy/prometheus" / f) for f in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job["file_sd_configs"][0]["files"] = [str(cluster.dir / "prometheus-targets.json")]
    job["file_sd_configs"][0]["refresh_interval"] = "1s"
    path = work / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    server = Prometheus(binary, path, work / "data", work / "prometheus.log")
    try:
        server.wait("ready", lambda: urllib.request.urlopen(server.url + "/-/ready", timeout=5).status == 200)
        yield server
    finally:
        server.stop()


def _value(result: list[dict]) -> float:
    assert len(result) == 1, result
    return float(result[0]["value"][1])


@pytest.fixture()
def client(cluster):
    with RouterClient(cluster.router_address) as c:
        yield c


def test_real_prometheus_scrapes_the_cluster_and_evaluates_the_rules(cluster, ingested, prometheus, client):
    members = [m for m in cluster.members if m.metrics]

    def all_up():
        targets = prometheus.get("/api/v1/targets")["activeTargets"]
        return targets if len(targets) == len(members) and all(t["health"] == "up" for t in targets) else None

    # scraped before the traffic, so that counters rise between scrapes (rates are positive)
    targets = prometheus.wait("every target up", all_up)
    assert {t["labels"]["role"] for t in targets} == {"shard", "router", "generator"}
    assert _value(prometheus.query('count(up{job="ragcluster"} == 1)')) == len(members)

    for i in range(30):
        assert client.search(f"tea leaves {i}", k=3).hits
    for question in ("What is tea?", "Where do kites fly?"):
        assert client.ask(question, max_tokens=4).completion_tokens > 0

    # the traffic shows up once every process has been scraped again
    counted = {
        'sum(ragcluster_grpc_server_handled_total{service="RouterService",method="Search",code="OK"})': 30,
        'sum(ragcluster_grpc_server_handling_seconds_count{service="RouterService",method="Search"})': 30,
        'sum(ragcluster_grpc_server_handled_total{service="ShardService",method="Search",code="OK"})': 30,
        'sum(ragcluster_grpc_server_handled_total{service="GeneratorService",method="Generate",code="OK"})': 2,
        "sum(ragcluster_router_completion_tokens_total)": 2,
        "sum(ragcluster_generator_generated_tokens_total)": 2,
        "sum(ragcluster_shard_vectors)": len(ingested),
    }
    for expr, least in counted.items():
        prometheus.wait(expr, lambda e=expr, n=least: _value(prometheus.query(e)) >= n)
    serving = prometheus.query('ragcluster_router_shard_replicas{state="serving"}')
    assert sorted((r["metric"]["shard"], r["value"][1]) for r in serving) == [("0", "1"), ("1", "1"), ("2", "1")]
    assert _value(prometheus.query('ragcluster_router_generator_nodes{state="serving"}')) == 1
    kv = _value(prometheus.query("max(vllm:kv_cache_usage_perc)"))
    assert 0 <= kv <= 1
    for r in prometheus.query("ragcluster_shard_disk_free_bytes / ragcluster_shard_disk_size_bytes"):
        assert 0 < float(r["value"][1]) < 1
    # a rate needs the searches between two of the router's scrapes inside its window. The session's cluster
    # served other tests' searches before this Prometheus started, and on a loaded machine a scrape can fail
    # or land after the burst above: all bucket rates are then 0 and the quantile NaN. So each poll sends
    # one more search, and waits for a finite quantile.
    p50_expr = ('histogram_quantile(0.5, sum by (le) (rate(ragcluster_grpc_server_handling_seconds_'
                'bucket{service="RouterService",method="Search"}[5m])))')

    def p50_after_one_more_search() -> float | None:
        assert client.search("tea leaves", k=3).hits
        value = _value(prometheus.query(p50_expr))
        return value if math.isfinite(value) else None

    p50 = prometheus.wait(p50_expr, p50_after_one_more_search)
    assert 0 < p50 < 10

    # the recording rules evaluate on real data: no errors so far, every shard answered every search
    def sli():
        result = prometheus.query('ragcluster:slo_errors_per_request:ratio_rate5m{slo="search-availability"}')
        return result or None

    assert _value(prometheus.wait("the search availability SLI", sli)) == 0
    coverage = prometheus.wait("per-shard coverage", lambda: prometheus.query("ragcluster:shard_coverage:ratio_rate5m"))
    assert sorted(float(r["value"][1]) for r in coverage) == [1.0, 1.0, 1.0]
    groups = prometheus.get("/api/v1/rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) >= 50
    assert [r["name"] for r in rules if r["health"] not in ("ok", "unknown")] == []
    prometheus.wait("every rule evaluated", lambda: all(
        r["health"] == "ok" for g in prometheus.get("/api/v1/rules")["groups"] for r in g["rules"]))
    # nothing is wrong with this cluster; only the latency SLOs depend on how fast (or loaded) this machine is
    firing = [a for a in prometheus.get("/api/v1/alerts")["alerts"]
              if a["state"] == "firing" and not a["labels"].get("slo", "").endswith("-latency")]
    assert firing == [], firing

    # the dashboard: every query runs, and every metric it names is in this scrape
    names = set(prometheus.get("/api/v1/label/__name__/values"))
    dashboard = json.loads((ROOT / GRAFANA_DASHBOARD).read_text())
    for title, expr in dashboard_queries(dashboard):
        prometheus.query(expr)  # parses and evaluates on the server
        missing = promql_metric_names(expr) - names
        assert not missing, f"dashboard panel {title!r} names metrics the cluster does not export: {missing}"
