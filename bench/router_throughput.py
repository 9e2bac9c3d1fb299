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
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def closed_loop(address: str, queries: list[str], concurrency: int, seconds: float) -> dict:
    from ragcluster.client import RouterClient

    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker(offset: int) -> None:
        with RouterClient(address) as client:
            i = offset
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                try:
                    client.search(queries[i % len(queries)], k=10, timeout=30)
                    with lock:
                        latencies.append(time.perf_counter() - start)
                except Exception:
                    with lock:
                        errors[0] += 1
                i += concurrency

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {"qps": len(latencies) / wall, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "errors": errors[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from ragcluster.client import RouterClient
    from ragcluster.cluster import ClusterSpec, LocalCluster
    from ragcluster.corpus import make_documents, make_queries

    docs = make_documents(args.docs, seed=51)
    queries = make_queries(500, seed=52)
    results = {"concurrency": args.concurrency, "seconds": args.seconds}
    for name, batch in (("batched", 32), ("batch1", 1)):
        with tempfile.TemporaryDirectory() as tmp:
            spec = ClusterSpec(data_dir=tmp, shards=2, generators=0, port=0,
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
