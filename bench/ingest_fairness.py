"""Search latency idle vs during a bulk ingest: the priority lane (--embed-bulk-chunk 16) vs none (0).

Starts a local cluster (2 Flat shards, no generator) twice — the router embedding ingest batches in
small low-priority chunks, then as whole batches (the old behaviour) — and for each measures text-search
latency from --concurrency closed-loop clients, first idle, then while one client ingests --docs
documents in batches of 64 (issue 16, item 10).

    .venv/bin/python bench/ingest_fairness.py [--concurrency 4] [--seconds 10] [--docs 3000] [--json]
"""

from __future__ import annotations

import sys
import threading
import time
from argparse import Namespace

from harness import bench_parser, closed_loop, loopback_cluster, report


def bulk_ingest(address: str, docs: list, out: dict) -> None:
    from ragcluster.client import RouterClient

    start = time.perf_counter()
    with RouterClient(address) as client:
        out["acknowledged"] = client.ingest(docs, batch_size=64).acknowledged
    out["docs_per_second"] = out["acknowledged"] / (time.perf_counter() - start)


def main() -> int:
    args = bench_parser(__doc__, concurrency=4, seconds=10.0, docs=3000).parse_args()

    from ragcluster.corpus import make_documents, make_queries

    queries = make_queries(500, seed=72)
    results: dict = {"concurrency": args.concurrency, "seconds": args.seconds, "docs": args.docs}
    for name, chunk in (("priority_lane", 16), ("no_priority", 0)):
        docs = make_documents(args.docs, seed=71, prefix=name)
        with loopback_cluster(shards=2, router_args=["--embed-bulk-chunk", str(chunk)]) as cluster:
            address = cluster.router_address
            closed_loop(address, queries, args.concurrency, 2.0)  # warm-up
            idle = closed_loop(address, queries, args.concurrency, args.seconds)
            ingest: dict = {}
            writer = threading.Thread(target=bulk_ingest, args=(address, docs, ingest))
            writer.start()
            busy = closed_loop(address, queries, args.concurrency, args.seconds)
            writer.join(1800)
            results[name] = {"idle": idle, "ingesting": busy, "ingest": ingest,
                             "p99_ratio": busy["p99_ms"] / idle["p99_ms"]}
    return report(args, results, lambda: render(args, results))


def render(args: Namespace, results: dict) -> None:
    print(f"text search, {args.concurrency} clients, {args.seconds:.0f}s per phase; bulk ingest of {args.docs} docs")
    for name in ("priority_lane", "no_priority"):
        r = results[name]
        print(f"  {name:<14} idle p50 {r['idle']['p50_ms']:7.1f} p99 {r['idle']['p99_ms']:7.1f} ms | during ingest "
              f"p50 {r['ingesting']['p50_ms']:7.1f} p99 {r['ingesting']['p99_ms']:7.1f} ms "
              f"(x{r['p99_ratio']:.2f}) | ingest {r['ingest'].get('docs_per_second', 0):.0f} docs/s")


if __name__ == "__main__":
    sys.exit(main())
