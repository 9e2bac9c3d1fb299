"""Search latency while the shard rebuilds its index vs idle (one script, same shard, same queries).

Builds a shard of N x 384 random unit vectors (HNSW32 by default: the index whose rebuild is the most
work), serves it with `python -m shard_server`, and measures search latency (k=10 with documents, from
``--clients`` closed-loop clients) first idle, then while `Rebuild` runs back to back. Rebuilds run on the
shard's maintenance pool with one OpenMP thread, so searches keep the other cores (issue 16, item 7).

    .venv/bin/python bench/maintenance_latency.py [--vectors 20000] [--factory HNSW32] [--seconds 10] [--json]
"""

from __future__ import annotations

import sys
import tempfile
import threading
from argparse import Namespace
from pathlib import Path

import numpy as np
from harness import Table, bench_parser, percentiles_ms, random_shard, report, shard_process, thread_loop, unit_vectors


def measure(stub, queries, seconds: float, clients: int, k: int) -> list[float]:
    """Latencies (s) of closed-loop searches from ``clients`` threads for ``seconds``."""
    from ragcluster.convert import matrix_to_pb
    from ragcluster.v1 import shard_pb2

    def search(i: int) -> None:
        stub.Search(shard_pb2.ShardSearchRequest(queries=matrix_to_pb(queries[i % len(queries)][None, :]), k=k,
                                                 include_documents=True), timeout=30)

    return thread_loop(search, clients, seconds)[0]


def main() -> int:
    parser = bench_parser(__doc__, seconds=10.0, vectors=20_000, factory="HNSW32", k=10)
    parser.add_argument("--clients", type=int, default=2)
    args = parser.parse_args()

    import grpc

    from ragcluster.v1 import shard_pb2, shard_pb2_grpc

    rng = np.random.default_rng(0)
    results: dict = {"vectors": args.vectors, "dim": args.dim, "factory": args.factory, "k": args.k,
                     "clients": args.clients}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "shard"
        random_shard(data, args.vectors, args.dim, args.factory, rng,
                     text=lambda i: f"document {i} " + "lorem ipsum " * 20).close()  # checkpoint: opens in seconds
        queries = unit_vectors(512, args.dim, rng)
        flags = ["--dim", str(args.dim), "--index-factory", args.factory, "--checkpoint-interval-seconds", "0"]
        with shard_process(data, *flags) as address, grpc.insecure_channel(address) as channel:
            stub = shard_pb2_grpc.ShardServiceStub(channel)
            measure(stub, queries, 1.0, args.clients, args.k)  # warm-up
            idle = measure(stub, queries, args.seconds, args.clients, args.k)
            stop, rebuilds = threading.Event(), []

            def rebuild_loop() -> None:
                for _ in range(1000):  # bounded; stopped by the event
                    if stop.is_set():
                        return
                    rebuilds.append(stub.Rebuild(shard_pb2.RebuildRequest(), timeout=600).seconds)

            rebuilder = threading.Thread(target=rebuild_loop)
            rebuilder.start()
            busy = measure(stub, queries, args.seconds, args.clients, args.k)
            stop.set()
            rebuilder.join(600)
    for name, lat in (("idle", idle), ("rebuilding", busy)):
        results[name] = {"searches": len(lat), **percentiles_ms(lat)}
    results["rebuilds"] = len(rebuilds)
    results["rebuild_seconds"] = float(np.mean(rebuilds)) if rebuilds else float("nan")
    results["p99_ratio"] = results["rebuilding"]["p99_ms"] / results["idle"]["p99_ms"]
    return report(args, results, lambda: render(args, results))


def render(args: Namespace, results: dict) -> None:
    print(f"{args.vectors} x {args.dim} {args.factory}, k={args.k} with documents, {args.clients} clients; "
          f"{results['rebuilds']} rebuilds of {results['rebuild_seconds']:.1f}s each")
    table = Table([("phase", ">11"), ("searches", ">10"), ("p50 ms", ">9.2f"), ("p99 ms", ">9.2f")], sep="")
    print(table.header())
    for name in ("idle", "rebuilding"):
        r = results[name]
        print(table.row(name, r["searches"], r["p50_ms"], r["p99_ms"]))
    print(f"p99 during rebuild / idle: {results['p99_ratio']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
