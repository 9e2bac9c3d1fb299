"""What security costs: search QPS and latency through the router with mTLS + API keys on vs off, same run.

Starts two local clusters side by side (2 Flat shards, no generator, same corpus): one as `ragcluster up`
runs by default (TLS client -> router with an API key, mTLS router -> shards), one with --insecure. Then
alternates closed-loop rounds between them (off, on, off, on, ...) so drift on a shared machine hits both:
text search (embedding included, what users see) and vector search (no embedding: transport + fan-out,
where TLS weighs most).

    .venv/bin/python bench/tls_cost.py [--concurrency 16] [--seconds 5] [--rounds 2] [--docs 2000] [--json]
"""

from __future__ import annotations

import statistics
import sys
from argparse import Namespace

import numpy as np
from harness import bench_parser, closed_loop, loopback_cluster, report, unit_vectors, vector_loop


def merge(rounds: list[dict]) -> dict:
    return {"qps": statistics.mean(r["qps"] for r in rounds), "p50_ms": statistics.mean(r["p50_ms"] for r in rounds),
            "p99_ms": statistics.mean(r["p99_ms"] for r in rounds), "errors": sum(r["errors"] for r in rounds),
            "rounds": rounds}


def main() -> int:
    args = bench_parser(__doc__, concurrency=16, seconds=5.0, docs=2000, rounds=2).parse_args()

    from ragcluster.client import RouterClient
    from ragcluster.corpus import make_documents, make_queries

    docs = make_documents(args.docs, seed=61)
    queries = make_queries(300, seed=62)
    vectors = unit_vectors(300, 384, np.random.default_rng(63)).tolist()
    results: dict = {"concurrency": args.concurrency, "seconds": args.seconds, "rounds": args.rounds}
    with loopback_cluster(shards=2) as off, loopback_cluster(shards=2, insecure=False) as on:
        clusters = {"off": (off.router_address, None), "on": (on.router_address, on.client_tls())}
        for address, security in clusters.values():
            with RouterClient(address, security=security) as client:
                client.ingest(docs)
            closed_loop(address, queries, args.concurrency, 1.0, security)  # warm-up
        for kind in ("vector", "text"):
            rounds: dict[str, list[dict]] = {"off": [], "on": []}
            for _ in range(args.rounds):
                for name, (address, security) in clusters.items():  # alternate: drift hits both
                    if kind == "vector":
                        r = vector_loop(address, vectors, args.concurrency, args.seconds, security)
                    else:
                        r = closed_loop(address, queries, args.concurrency, args.seconds, security)
                    rounds[name].append(r)
            off_r, on_r = merge(rounds["off"]), merge(rounds["on"])
            results[kind] = {"off": off_r, "on": on_r, "qps_cost": 1 - on_r["qps"] / off_r["qps"],
                             "p50_cost": on_r["p50_ms"] / off_r["p50_ms"] - 1}
    return report(args, results, lambda: render(args, results))


def render(args: Namespace, results: dict) -> None:
    print(f"search through the router, {args.concurrency} clients, {args.rounds} x {args.seconds:.0f}s per side "
          f"(alternating), 2 Flat shards, {args.docs} docs; on = TLS + API key to the router, mTLS to shards")
    for kind in ("vector", "text"):
        r = results[kind]
        for name in ("off", "on"):
            x = r[name]
            print(f"  {kind:<6} mTLS {name:<3} {x['qps']:8.1f} q/s   p50 {x['p50_ms']:7.2f} ms   "
                  f"p99 {x['p99_ms']:7.2f} ms   errors {x['errors']}")
        print(f"  {kind:<6} cost of mTLS: {100 * r['qps_cost']:+.1f}% q/s, {100 * r['p50_cost']:+.1f}% p50")


if __name__ == "__main__":
    sys.exit(main())
