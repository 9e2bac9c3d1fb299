"""Text-search throughput at N concurrent clients: query micro-batching on vs off (batch size 1).

Starts a local cluster (2 Flat shards, no generator) with the router's --embed-max-batch set to 32, then
to 1, ingests a synthetic corpus, and runs a closed loop of --concurrency client threads for --seconds.

    .venv/bin/python bench/router_throughput.py [--concurrency 32] [--seconds 10] [--docs 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def closed_loop(address: str, queries: list[str], concurrency: int, seconds: float) -> dict:
    """The CLI's own closed loop (ragcluster.tools.loadtest), summarised."""
    import asyncio

    from ragcluster.tools.loadtest import run_load

    summary = asyncio.run(run_load(address, "search", queries, seconds, concurrency=concurrency, k=10)).summary()
    return {"qps": summary["throughput_per_second"], "p50_ms": summary["latency_ms"]["p50"],
            "p99_ms": summary["latency_ms"]["p99"], "errors": sum(summary["errors"].values())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from ragcluster.client import RouterClient
    from ragcluster.corpus import make_documents, make_queries
    from ragcluster.tools.cluster import ClusterSpec, LocalCluster

    docs = make_documents(args.docs, seed=51)
    queries = make_queries(500, seed=52)
    results = {"concurrency": args.concurrency, "seconds": args.seconds}
    for name, batch in (("batched", 32), ("batch1", 1)):
        with tempfile.TemporaryDirectory() as tmp:
            spec = ClusterSpec(data_dir=tmp, shards=2, generators=0, port=0, insecure=True,
                               router_args=["--embed-max-batch", str(batch)])
            with LocalCluster(spec) as cluster:
                cluster.start(timeout=300)
                with RouterClient(cluster.router_address) as client:
                    client.ingest(docs)
                closed_loop(cluster.router_address, queries, args.concurrency, 2.0)  # warm-up
                results[name] = closed_loop(cluster.router_address, queries, args.concurrency, args.seconds)
    results["qps_ratio"] = results["batched"]["qps"] / results["batch1"]["qps"]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"text search, {args.concurrency} concurrent clients, {args.seconds:.0f}s, 2 Flat shards, {args.docs} docs")
    for name in ("batched", "batch1"):
        r = results[name]
        print(f"  {name:<8} {r['qps']:8.1f} q/s   p50 {r['p50_ms']:7.1f} ms   p99 {r['p99_ms']:7.1f} ms   "
              f"errors {r['errors']}")
    print(f"  micro-batching speed-up: {results['qps_ratio']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
