"""The README's metrics table equals what the code registers, and every metric follows the naming rules
(namespace + tier subsystem, base units, counters exposed with _total, bounded labels)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

import generator_node.metrics
import ragcluster.interceptors
import router.metrics
import shard_server.metrics

README = Path(__file__).resolve().parents[2] / "README.md"
BOUNDED_LABELS = {"service", "method", "code", "shard", "collection", "state", "reason", "kind", "op", "stage",
                  "mode"}
SUBSYSTEMS = ("ragcluster_grpc_server_", "ragcluster_router_", "ragcluster_shard_", "ragcluster_generator_")
# histograms of a quantity without a unit: a share (0..1) and counts of texts and of searches
UNITLESS_HISTOGRAMS = {"ragcluster_router_coverage_ratio", "ragcluster_router_embed_batch_size",
                       "ragcluster_router_shard_search_batch_size"}


def registered() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Exposed name -> (type, labels) of every ragcluster metric the code declares."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for module in (ragcluster.interceptors, router.metrics, shard_server.metrics, generator_node.metrics):
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                name = value._name + ("_total" if value._type == "counter" else "")
                out[name] = (value._type or "", tuple(value._labelnames))
    states = router.metrics.BACKEND_STATES
    saved = states.replicas, states.nodes
    states.replicas, states.nodes = (lambda: [("default", 0, "serving", 1)]), (lambda: [("serving", 1)])
    try:
        for family in states.collect():
            labels = tuple(family.samples[0].labels)
            out[family.name] = (family.type, labels)
    finally:
        states.replicas, states.nodes = saved
    return out


def documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    section = README.read_text().split("## Metrics\n", 1)[1].split("\n## ", 1)[0]
    out = {}
    for line in section.splitlines():
        m = re.match(r"\| `(ragcluster_[a-z_]+)` \| (\w+) \| ([^|]*) \|", line)
        if m:
            out[m[1]] = (m[2], tuple(re.findall(r"`(\w+)`", m[3])))
    return out


def test_readme_table_lists_every_metric_with_its_type_and_labels():
    code, docs = registered(), documented()
    assert sorted(set(code) - set(docs)) == [], "registered but missing from the README metrics table"
    assert sorted(set(docs) - set(code)) == [], "in the README metrics table but not registered"
    for name, (kind, labels) in code.items():
        assert docs[name] == (kind, labels), name


@pytest.mark.parametrize("name", sorted(registered()))
def test_naming_rules(name):
    kind, labels = registered()[name]
    assert name.startswith(SUBSYSTEMS), f"{name}: namespace ragcluster and a tier subsystem"
    assert set(labels) <= BOUNDED_LABELS, f"{name}: unbounded or unexpected labels {set(labels) - BOUNDED_LABELS}"
    if kind == "counter":
        assert name.endswith("_total") and not name.endswith("_total_total")
    if kind == "histogram" and name not in UNITLESS_HISTOGRAMS:
        assert name.endswith(("_seconds", "_bytes")), f"{name}: histograms carry a base unit"
    if kind == "gauge":
        assert not name.endswith("_total"), f"{name}: a gauge is not a counter"
