"""Search throughput with tracing off / on (sampling 1.0) / on (sampling 0.01); metrics and the access log on
in all three, as in production.

Starts three local clusters (2 Flat shards, router, no generator) side by side: one without OTEL_* variables
(tracing off), two exporting over OTLP/gRPC to a receiver in this script with
OTEL_TRACES_SAMPLER=parentbased_traceidratio and OTEL_TRACES_SAMPLER_ARG 1.0 / 0.01. Then runs rounds of
closed-loop searches against each in turn — by vector (fan-out + merge only: tracing's share of the work is
largest) and by text (the router embeds each query: the end-to-end path) — rotating the order, and reports the
median q/s of each and the median of the per-round ratios to "off" (configurations of one round run back to
back, so drift in a shared machine's load cancels in their ratio).

    .venv/bin/python bench/tracing_overhead.py [--concurrency 16] [--seconds 4] [--rounds 5] [--json]
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
from argparse import Namespace
from concurrent import futures
from contextlib import ExitStack

import grpc
import numpy as np
from harness import bench_parser, closed_loop, loopback_cluster, report, unit_vectors, vector_loop
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


def cpu_seconds(cluster) -> float:
    """User + system CPU seconds used so far by the cluster's processes (router and shards): a measure of the
    work per request that a busy shared machine disturbs far less than wall-clock throughput."""
    import psutil

    total = 0.0
    for member in cluster.members:
        times = psutil.Process(member.pid).cpu_times()
        total += times.user + times.system
    return total


def main() -> int:
    args = bench_parser(__doc__, concurrency=16, seconds=4.0, docs=2000, rounds=5).parse_args()

    from ragcluster.client import RouterClient
    from ragcluster.corpus import make_documents, make_queries

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
    runs: dict[str, list[dict]] = {}
    with ExitStack() as stack:
        clusters = {}
        for name, env in configs.items():
            saved = dict(os.environ)
            for key in [k for k in os.environ if k.startswith("OTEL_")]:
                del os.environ[key]
            os.environ.update(env)  # the launcher passes its environment to the processes it starts
            try:
                cluster = stack.enter_context(loopback_cluster(shards=2))
            finally:
                os.environ.clear()
                os.environ.update(saved)
            with RouterClient(cluster.router_address) as client:
                client.ingest(docs)
            closed_loop(cluster.router_address, queries, args.concurrency, 2.0)  # warm-up
            clusters[name] = cluster
        names = list(configs)
        vectors = unit_vectors(256, 384, np.random.default_rng(63)).tolist()
        loads = {"vector": lambda addr: vector_loop(addr, vectors, args.concurrency, args.seconds),
                 "text": lambda addr: closed_loop(addr, queries, args.concurrency, args.seconds)}
        for r in range(args.rounds):
            # each round runs the three back to back (order rotated): their ratios within a round are paired
            for load, run in loads.items():
                for name in names[r % len(names):] + names[:r % len(names)]:
                    before = cpu_seconds(clusters[name])
                    result = run(clusters[name].router_address)
                    requests = result["qps"] * args.seconds
                    result["cpu_ms_per_request"] = 1000 * (cpu_seconds(clusters[name]) - before) / max(requests, 1)
                    runs.setdefault(f"{load}/{name}", []).append(result)
    for server in receivers:
        server.stop(0)
    for load in loads:
        out: dict = {}
        for name in configs:
            rs = runs[f"{load}/{name}"]
            out[name] = {"qps_median": statistics.median(r["qps"] for r in rs),
                         "cpu_ms_per_request_median": statistics.median(r["cpu_ms_per_request"] for r in rs),
                         "p50_ms_median": statistics.median(r["p50_ms"] for r in rs),
                         "p99_ms_median": statistics.median(r["p99_ms"] for r in rs),
                         "errors": sum(r["errors"] for r in rs), "runs": [round(r["qps"], 1) for r in rs]}
        for name in ("on_1.0", "on_0.01"):
            paired = [on["qps"] / off["qps"] for on, off in zip(runs[f"{load}/{name}"], runs[f"{load}/off"])]
            out[f"qps_ratio_{name}"] = statistics.median(paired)
            out[f"qps_ratio_{name}_rounds"] = [round(x, 3) for x in paired]
            out[f"cpu_ratio_{name}"] = out[name]["cpu_ms_per_request_median"] / out["off"]["cpu_ms_per_request_median"]
        results[load] = out
    for name, counter in counters.items():
        results[f"spans_exported_{name}"] = counter.spans
    return report(args, results, lambda: render(args, results, list(configs)))


def render(args: Namespace, results: dict, configs: list[str]) -> None:
    print(f"search q/s, {args.concurrency} closed-loop clients, {args.rounds} rounds x {args.seconds:.0f}s per "
          f"configuration, 2 Flat shards, {args.docs} docs; metrics and the access log on in all")
    for load in ("vector", "text"):
        out = results[load]
        print(f"  {load} queries:")
        for name in configs:
            r = out[name]
            print(f"    tracing {name:8s} {r['qps_median']:7.1f} q/s (runs {r['runs']})  "
                  f"p50 {r['p50_ms_median']:.1f} ms  p99 {r['p99_ms_median']:.1f} ms  "
                  f"CPU {r['cpu_ms_per_request_median']:.2f} ms/request (router + shards)")
        print(f"    CPU per request relative to off: sampling 1.0 {out['cpu_ratio_on_1.0']:.3f}, "
              f"sampling 0.01 {out['cpu_ratio_on_0.01']:.3f}")
        print(f"    q/s ratio to off (median of per-round ratios): sampling 1.0 {out['qps_ratio_on_1.0']:.3f} "
              f"{out['qps_ratio_on_1.0_rounds']}, sampling 0.01 {out['qps_ratio_on_0.01']:.3f} "
              f"{out['qps_ratio_on_0.01_rounds']}")
    print(f"  spans exported: sampling 1.0 {results['spans_exported_on_1.0']}, "
          f"sampling 0.01 {results['spans_exported_on_0.01']}")


if __name__ == "__main__":
    sys.exit(main())
