"""Search latency idle vs during a bulk ingest: the priority lane (--embed-bulk-chunk 16) vs none (0).

Starts a local cluster (2 Flat shards, no generator) twice — the router embedding ingest batches in
small low-priority chunks, then as whole batches (the old behaviour) — and for each measures text-search
latency from --concurrency closed-loop clients, first idle, then while one client ingests --docs
documents in batches of 64 (issue 16, item 10).

    .venv/bin/python bench/ingest_fairness.py [--concurrency 4] [--seconds 10] [--docs 3000] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def closed_loop(address: str, queries: list[str], concurrency: int, seconds: float) -> dict:
    import asyncio

    from ragcluster.tools.loadtest import run_load

    summary = asyncio.run(run_load(address, "search", queries, seconds, concurrency=concurrency, k=10)).summary()
    return {"qps": summary["throughput_per_second"], "p50_ms": summary["latency_ms"]["p50"],
            "p99_ms": summary["latency_ms"]["p99"], "errors": sum(summary["errors"].values())}


def bulk_ingest(address: str, docs: list, out: dict) -> None:
    from ragcluster.client import RouterClient

    start = time.perf_counter()
    with RouterClient(address) as client:
        out["acknowledged"] = client.ingest(docs, batch_size=64).acknowledged
    out["docs_per_second"] = out["acknowledged"] / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--docs", type=int, default=3000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from ragcluster.corpus import make_documents, make_queries
    from ragcluster.tools.cluster import ClusterSpec, LocalCluster

    queries = make_queries(500, seed=72)
    results: dict = {"concurrency": args.concurrency, "seconds": args.seconds, "docs": args.docs}
    for name, chunk in (("priority_lane", 16), ("no_priority", 0)):
        docs = make_documents(args.docs, seed=71, prefix=name)
        with tempfile.TemporaryDirectory() as tmp:
            spec = ClusterSpec(data_dir=tmp, shards=2, generators=0, port=0, insecure=True,
                               router_args=["--embed-bulk-chunk", str(chunk)])
            with LocalCluster(spec) as cluster:
                cluster.start(timeout=300)
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
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"text search, {args.concurrency} clients, {args.seconds:.0f}s per phase; bulk ingest of {args.docs} docs")
    for name in ("priority_lane", "no_priority"):
        r = results[name]
        print(f"  {name:<14} idle p50 {r['idle']['p50_ms']:7.1f} p99 {r['idle']['p99_ms']:7.1f} ms | during ingest "
              f"p50 {r['ingesting']['p50_ms']:7.1f} p99 {r['ingesting']['p99_ms']:7.1f} ms "
              f"(x{r['p99_ratio']:.2f}) | ingest {r['ingest'].get('docs_per_second', 0):.0f} docs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
