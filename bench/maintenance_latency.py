"""Search latency while the shard rebuilds its index vs idle (one script, same shard, same queries).

Builds a shard of N x 384 random unit vectors (HNSW32 by default: the index whose rebuild is the most
work), serves it with `python -m shard_server`, and measures search latency (k=10 with documents, from
``--clients`` closed-loop clients) first idle, then while `Rebuild` runs back to back. Rebuilds run on the
shard's maintenance pool with one OpenMP thread, so searches keep the other cores (issue 16, item 7).

    .venv/bin/python bench/maintenance_latency.py [--vectors 20000] [--factory HNSW32] [--seconds 10] [--json]
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from harness import bench_parser, shard_process


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def measure(stub, queries, seconds: float, clients: int, k: int) -> list[float]:
    """Latencies (s) of closed-loop searches from ``clients`` threads for ``seconds``."""
    from ragcluster.convert import matrix_to_pb
    from ragcluster.v1 import shard_pb2

    latencies: list[float] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client(offset: int) -> None:
        i = offset
        while time.monotonic() < end:
            request = shard_pb2.ShardSearchRequest(queries=matrix_to_pb(queries[i % len(queries)][None, :]), k=k,
                                                   include_documents=True)
            t = time.perf_counter()
            stub.Search(request, timeout=30)
            with lock:
                latencies.append(time.perf_counter() - t)
            i += clients

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    return latencies


def main() -> int:
    parser = bench_parser(__doc__, seconds=10.0)
    parser.add_argument("--vectors", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--factory", default="HNSW32")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--clients", type=int, default=2)
    args = parser.parse_args()

    import grpc

    from ragcluster.documents import Document
    from ragcluster.v1 import shard_pb2, shard_pb2_grpc
    from shard_server.config import ShardOptions
    from shard_server.shard import Shard

    rng = np.random.default_rng(0)
    results: dict = {"vectors": args.vectors, "dim": args.dim, "factory": args.factory, "k": args.k,
                     "clients": args.clients}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "shard"
        shard = Shard(ShardOptions(str(data), dim=args.dim, index_factory=args.factory))
        for start in range(0, args.vectors, 4096):
            n = min(4096, args.vectors - start)
            x = rng.standard_normal((n, args.dim)).astype(np.float32)
            shard.upsert([Document(f"v{start + i}", f"document {start + i} " + "lorem ipsum " * 20)
                          for i in range(n)], x)
        shard.close()  # checkpoint: the server opens in seconds
        queries = rng.standard_normal((512, args.dim)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
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
        results[name] = {"searches": len(lat), "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99)}
    results["rebuilds"] = len(rebuilds)
    results["rebuild_seconds"] = float(np.mean(rebuilds)) if rebuilds else float("nan")
    results["p99_ratio"] = results["rebuilding"]["p99_ms"] / results["idle"]["p99_ms"]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{args.vectors} x {args.dim} {args.factory}, k={args.k} with documents, {args.clients} clients; "
          f"{len(rebuilds)} rebuilds of {results['rebuild_seconds']:.1f}s each")
    print(f"{'phase':>11}{'searches':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for name in ("idle", "rebuilding"):
        r = results[name]
        print(f"{name:>11}{r['searches']:>10}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}")
    print(f"p99 during rebuild / idle: {results['p99_ratio']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
