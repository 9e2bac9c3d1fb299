"""What security costs: search QPS and latency through the router with mTLS + API keys on vs off, same run.

Starts two local clusters side by side (2 Flat shards, no generator, same corpus): one as `ragcluster up`
runs by default (TLS client -> router with an API key, mTLS router -> shards), one with --insecure. Then
alternates closed-loop rounds between them (off, on, off, on, ...) so drift on a shared machine hits both:
text search (embedding included, what users see) and vector search (no embedding: transport + fan-out,
where TLS weighs most).

    .venv/bin/python bench/tls_cost.py [--concurrency 16] [--seconds 5] [--rounds 2] [--docs 2000] [--json]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time

from harness import bench_parser, closed_loop, loopback_cluster


async def vector_loop(address: str, security, vectors, concurrency: int, seconds: float) -> dict:
    """Closed loop of vector searches (k=10) on one channel; returns qps and latency percentiles."""
    from ragcluster.channels import aio_channel
    from ragcluster.v1 import router_pb2, router_pb2_grpc

    latencies: list[float] = []
    errors = 0
    async with aio_channel(address, security) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        end = time.perf_counter() + seconds

        async def client(n: int) -> None:
            nonlocal errors
            i = n
            while time.perf_counter() < end:
                request = router_pb2.SearchRequest(k=10)
                request.vector.values.extend(vectors[i % len(vectors)])
                start = time.perf_counter()
                try:
                    await stub.Search(request, timeout=30)
                    latencies.append(time.perf_counter() - start)
                except Exception:
                    errors += 1
                i += concurrency

        await asyncio.gather(*(client(n) for n in range(concurrency)))
    latencies.sort()
    return {"qps": len(latencies) / seconds, "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))], "errors": errors}


def merge(rounds: list[dict]) -> dict:
    return {"qps": statistics.mean(r["qps"] for r in rounds), "p50_ms": statistics.mean(r["p50_ms"] for r in rounds),
            "p99_ms": statistics.mean(r["p99_ms"] for r in rounds), "errors": sum(r["errors"] for r in rounds),
            "rounds": rounds}


def main() -> int:
    args = bench_parser(__doc__, concurrency=16, seconds=5.0, docs=2000, rounds=2).parse_args()

    import numpy as np

    from ragcluster.client import RouterClient
    from ragcluster.corpus import make_documents, make_queries

    docs = make_documents(args.docs, seed=61)
    queries = make_queries(300, seed=62)
    rng = np.random.default_rng(63)
    vectors = rng.standard_normal((300, 384)).astype(np.float32)
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).tolist()
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
                        r = asyncio.run(vector_loop(address, security, vectors, args.concurrency, args.seconds))
                    else:
                        r = closed_loop(address, queries, args.concurrency, args.seconds, security)
                    rounds[name].append(r)
            off_r, on_r = merge(rounds["off"]), merge(rounds["on"])
            results[kind] = {"off": off_r, "on": on_r, "qps_cost": 1 - on_r["qps"] / off_r["qps"],
                             "p50_cost": on_r["p50_ms"] / off_r["p50_ms"] - 1}
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"search through the router, {args.concurrency} clients, {args.rounds} x {args.seconds:.0f}s per side "
          f"(alternating), 2 Flat shards, {args.docs} docs; on = TLS + API key to the router, mTLS to shards")
    for kind in ("vector", "text"):
        r = results[kind]
        for name in ("off", "on"):
            x = r[name]
            print(f"  {kind:<6} mTLS {name:<3} {x['qps']:8.1f} q/s   p50 {x['p50_ms']:7.2f} ms   "
                  f"p99 {x['p99_ms']:7.2f} ms   errors {x['errors']}")
        print(f"  {kind:<6} cost of mTLS: {100 * r['qps_cost']:+.1f}% q/s, {100 * r['p50_cost']:+.1f}% p50")
    return 0


if __name__ == "__main__":
    sys.exit(main())
