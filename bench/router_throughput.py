"""Text-search throughput at N concurrent clients: query micro-batching on vs off (batch size 1).

Starts a local cluster (2 Flat shards, no generator) with the router's --embed-max-batch set to 32, then
to 1, ingests a synthetic corpus, and runs a closed loop of --concurrency client threads for --seconds.

    .venv/bin/python bench/router_throughput.py [--concurrency 32] [--seconds 10] [--docs 2000] [--json]
"""

from __future__ import annotations

import sys
from argparse import Namespace

from harness import bench_parser, closed_loop, loopback_cluster, report


def main() -> int:
    args = bench_parser(__doc__, concurrency=32, seconds=10.0, docs=2000).parse_args()

    from ragcluster.client import RouterClient
    from ragcluster.corpus import make_documents, make_queries

    docs = make_documents(args.docs, seed=51)
    queries = make_queries(500, seed=52)
    results = {"concurrency": args.concurrency, "seconds": args.seconds}
    for name, batch in (("batched", 32), ("batch1", 1)):
        with loopback_cluster(shards=2, router_args=["--embed-max-batch", str(batch)]) as cluster:
            with RouterClient(cluster.router_address) as client:
                client.ingest(docs)
            closed_loop(cluster.router_address, queries, args.concurrency, 2.0)  # warm-up
            results[name] = closed_loop(cluster.router_address, queries, args.concurrency, args.seconds)
    results["qps_ratio"] = results["batched"]["qps"] / results["batch1"]["qps"]
    return report(args, results, lambda: render(args, results))


def render(args: Namespace, results: dict) -> None:
    print(f"text search, {args.concurrency} concurrent clients, {args.seconds:.0f}s, 2 Flat shards, {args.docs} docs")
    for name in ("batched", "batch1"):
        r = results[name]
        print(f"  {name:<8} {r['qps']:8.1f} q/s   p50 {r['p50_ms']:7.1f} ms   p99 {r['p99_ms']:7.1f} ms   "
              f"errors {r['errors']}")
    print(f"  micro-batching speed-up: {results['qps_ratio']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
