"""Search throughput with tracing off / on (sampling 1.0) / on (sampling 0.01); metrics and the access log on
in all three, as in production.

Starts three local clusters (2 Flat shards, router, no generator) side by side: one without OTEL_* variables
(tracing off), two exporting over OTLP/gRPC to a receiver in this script with
OTEL_TRACES_SAMPLER=parentbased_traceidratio and OTEL_TRACES_SAMPLER_ARG 1.0 / 0.01. Then runs rounds of a
closed loop of text searches against each in turn (rotating the order, so drift in the machine's load hits all
three alike) and reports the median q/s of each and the ratios to "off".

    .venv/bin/python bench/tracing_overhead.py [--concurrency 16] [--seconds 8] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
from concurrent import futures
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class SpanCounter(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver that counts what it gets."""

    def __init__(self) -> None:
        self.spans = 0
        self.lock = threading.Lock()

    def Export(self, request, context):
        n = sum(len(s.spans) for rs in request.resource_spans for s in rs.scope_spans)
        with self.lock:
            self.spans += n
        return trace_service_pb2.ExportTraceServiceResponse()


def closed_loop(address: str, queries: list[str], concurrency: int, seconds: float) -> dict:
    from ragcluster.tools.loadtest import run_load

    summary = asyncio.run(run_load(address, "search", queries, seconds, concurrency=concurrency, k=10)).summary()
    return {"qps": summary["throughput_per_second"], "p50_ms": summary["latency_ms"]["p50"],
            "p99_ms": summary["latency_ms"]["p99"], "errors": sum(summary["errors"].values())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from ragcluster.client import RouterClient
    from ragcluster.corpus import make_documents, make_queries
    from ragcluster.tools.cluster import ClusterSpec, LocalCluster

    docs = make_documents(args.docs, seed=61)
    queries = make_queries(500, seed=62)
    counters = {"on_1.0": SpanCounter(), "on_0.01": SpanCounter()}
    receivers = []
    configs: dict[str, dict[str, str]] = {"off": {}}
    for name, counter in counters.items():
        server = grpc.server(futures.ThreadPoolExecutor(2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(counter, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        receivers.append(server)
        configs[name] = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                         "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                         "OTEL_TRACES_SAMPLER_ARG": name.split("_")[1]}
    results: dict = {"concurrency": args.concurrency, "seconds": args.seconds, "rounds": args.rounds}
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    with ExitStack() as stack:
        clusters = {}
        for name, env in configs.items():
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            saved = dict(os.environ)
            for key in [k for k in os.environ if k.startswith("OTEL_")]:
                del os.environ[key]
            os.environ.update(env)  # the launcher passes its environment to the processes it starts
            try:
                cluster = stack.enter_context(LocalCluster(ClusterSpec(data_dir=tmp, shards=2, generators=0, port=0)))
                cluster.start(timeout=300)
            finally:
                os.environ.clear()
                os.environ.update(saved)
            with RouterClient(cluster.router_address) as client:
                client.ingest(docs)
            closed_loop(cluster.router_address, queries, args.concurrency, 2.0)  # warm-up
            clusters[name] = cluster
        names = list(configs)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                runs[name].append(closed_loop(clusters[name].router_address, queries, args.concurrency, args.seconds))
    for server in receivers:
        server.stop(0)
    for name, rs in runs.items():
        results[name] = {"qps_median": statistics.median(r["qps"] for r in rs),
                         "p50_ms_median": statistics.median(r["p50_ms"] for r in rs),
                         "p99_ms_median": statistics.median(r["p99_ms"] for r in rs),
                         "errors": sum(r["errors"] for r in rs), "runs": [round(r["qps"], 1) for r in rs]}
    for name, counter in counters.items():
        results[name]["spans_exported"] = counter.spans
    off = results["off"]["qps_median"]
    results["qps_ratio_on_1.0"] = results["on_1.0"]["qps_median"] / off
    results["qps_ratio_on_0.01"] = results["on_0.01"]["qps_median"] / off
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"text search, {args.concurrency} clients, {args.rounds} rounds x {args.seconds:.0f}s, 2 Flat shards, "
          f"{args.docs} docs; metrics and access log on in all")
    for name in configs:
        r = results[name]
        spans = f", {r['spans_exported']} spans exported" if "spans_exported" in r else ""
        print(f"  tracing {name:8s} {r['qps_median']:7.1f} q/s (runs {r['runs']})  p50 {r['p50_ms_median']:.1f} ms  "
              f"p99 {r['p99_ms_median']:.1f} ms{spans}")
    print(f"  ratio to off: sampling 1.0 {results['qps_ratio_on_1.0']:.3f}, sampling 0.01 "
          f"{results['qps_ratio_on_0.01']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
