"""Tracing across real processes: a cluster (2 shards x 2 replicas, a tiny vLLM generator, the router) exports
its spans over OTLP/gRPC to a receiver in this test; one Ask must be one trace with the expected tree, and the
router's JSON access-log line for it carries the trace id as its request id."""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from ragcluster.client import RouterClient
from ragcluster.documents import Document
from ragcluster.tools.cluster import ClusterSpec, LocalCluster

SERVER, CLIENT = trace_pb2.Span.SPAN_KIND_SERVER, trace_pb2.Span.SPAN_KIND_CLIENT


@dataclass
class Received:
    service: str
    span: trace_pb2.Span

    @property
    def attributes(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for kv in self.span.attributes:
            value = kv.value
            kind = value.WhichOneof("value")
            assert kind is not None
            out[kv.key] = getattr(value, kind)
        return out


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A minimal OTLP trace receiver (what a collector's otlp receiver does)."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            for resource_spans in request.resource_spans:
                attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    self.spans.extend(Received(attrs.get("service.name", ""), s) for s in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: bytes) -> list[Received]:
        with self.lock:
            return [r for r in self.spans if r.span.trace_id == trace_id]


@pytest.fixture(scope="module")
def traced_cluster(tmp_path_factory):
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_EXPORTER_OTLP_INSECURE": "true",
           "OTEL_BSP_SCHEDULE_DELAY": "200", "OTEL_TRACES_SAMPLER": "parentbased_always_on"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the launcher passes its environment to every process
    try:
        spec = ClusterSpec(data_dir=str(tmp_path_factory.mktemp("traced")), shards=2, replicas=2, generators=1,
                           model="tiny", port=0, kv_cache_bytes=64 * 1024 * 1024, insecure=True,
                           # hedge at once: every shard search also goes to the second replica
                           router_args=["--hedge-delay-ms", "0.01", "--log-json"])
        cluster = LocalCluster(spec).start(timeout=600)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        yield cluster, receiver
    finally:
        cluster.stop()
        server.stop(0)


def _wait_for(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.1)  # spans arrive in batches every 200 ms; bounded by the deadline
    raise AssertionError("timed out waiting for spans")


def test_one_ask_is_one_trace_across_router_shards_and_generator(traced_cluster):
    cluster, receiver = traced_cluster
    docs = [Document(f"d{i}", f"Note {i} about tea, kites and rivers.") for i in range(20)]
    with RouterClient(cluster.router_address) as client:
        assert client.ingest(docs).acknowledged == len(docs)
        answer = client.ask("What about tea?", k=3, max_tokens=8)
    assert answer.completion_tokens > 0

    def ask_root():
        return next((r for r in list(receiver.spans) if r.span.name == "RouterService/Ask"), None)

    root = _wait_for(ask_root)
    trace_id = root.span.trace_id

    def complete():
        spans = receiver.trace(trace_id)
        services = {r.service for r in spans if r.span.kind == SERVER}
        generator_done = any(r.service == "ragcluster-generator" for r in spans)
        # each process exports its spans on its own schedule: wait for a Search server span from both shards
        ids = {r.span.span_id: r for r in spans}
        served = {ids[r.span.parent_span_id].attributes.get("ragcluster.shard") for r in spans
                  if r.service == "ragcluster-shard" and r.span.name == "ShardService/Search"
                  and r.span.kind == SERVER and r.span.parent_span_id in ids}
        return spans if {"ragcluster-router", "ragcluster-shard", "ragcluster-generator"} <= services and \
            generator_done and any(r.span.name == "generate" for r in spans) and {0, 1} <= served else None

    spans = _wait_for(complete)
    by_id = {r.span.span_id: r for r in spans}

    def children(parent: Received, name: str | None = None) -> list[Received]:
        return [r for r in spans if r.span.parent_span_id == parent.span.span_id
                and (name is None or r.span.name == name)]

    assert root.service == "ragcluster-router" and root.span.kind == SERVER and not root.span.parent_span_id
    # every span of the trace hangs off the root
    for r in spans:
        node = r
        for _ in range(20):
            if not node.span.parent_span_id:
                break
            node = by_id[node.span.parent_span_id]
        assert node is root, f"{r.span.name} is not under the Ask"
    names = sorted(r.span.name for r in children(root))
    for expected in ("embed", "fan-out", "prompt", "generate"):
        assert expected in names, names

    # fan-out: one client span per shard call, hedges included, each answered by a shard's server span
    (fan_out,) = children(root, "fan-out")
    calls = children(fan_out, "ShardService/Search")
    assert all(c.span.kind == CLIENT for c in calls)
    attempts = {(c.attributes["ragcluster.shard"], c.attributes["ragcluster.attempt"]) for c in calls}
    assert {(0, "primary"), (1, "primary")} <= attempts
    assert any(a == "hedge" for _, a in attempts), attempts
    replicas = {c.attributes["ragcluster.replica"] for c in calls}
    assert len(replicas) >= 3, replicas  # primaries and hedges reach different replicas
    for shard in (0, 1):
        served = [s for c in calls if c.attributes["ragcluster.shard"] == shard for s in children(c)]
        assert any(s.service == "ragcluster-shard" and s.span.name == "ShardService/Search" and s.span.kind == SERVER
                   for s in served), f"shard {shard}: no server span under its call"

    # prompt: counted with the generator's tokenizer, cached in the router (no CountTokens round trip);
    # generate: the stream, with the first token as an event on both sides
    (prompt,) = children(root, "prompt")
    assert "GeneratorService/CountTokens" not in {c.span.name for c in children(prompt)}
    (generate,) = children(root, "generate")
    assert "first_token" in {e.name for e in generate.span.events}
    (call,) = children(generate, "GeneratorService/Generate")
    (gen_served,) = children(call)
    assert gen_served.service == "ragcluster-generator" and gen_served.span.kind == SERVER
    assert "first_token" in {e.name for e in gen_served.span.events}
    assert gen_served.span.status.code != trace_pb2.Status.STATUS_CODE_ERROR

    # the router's access-log line for this Ask: JSON, request id = trace id, with coverage and timings
    log = (cluster.dir / "run" / "router.log").read_text()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    access = [r for r in lines if r.get("logger") == "ragcluster.access" and r.get("rpc") == "Ask"]
    assert access, "no access-log line for the Ask"
    line = next(r for r in access if r["request_id"] == trace_id.hex())
    assert line["code"] == "OK" and line["shards"] == "2/2" and line["completion_tokens"] > 0
    assert line["time_to_first_token_ms"] > 0 and line["duration_ms"] > 0
