"""Shard search throughput over gRPC vs the same FAISS index queried in-process (one script, same data).

Builds a shard of N x 384 random unit vectors with the shard core, serves it with `python -m shard_server`,
and measures queries/s for batch 1 and batch 32: sequential calls from one client, against
`VectorIndex.search` on an identical index in this process.

    .venv/bin/python bench/shard_throughput.py [--vectors 100000] [--factory Flat] [--seconds 5] [--json]
"""

from __future__ import annotations

import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
from harness import Table, bench_parser, random_shard, report, shard_process, unit_vectors


def qps(fn, batches, seconds: float) -> float:
    """Queries/s of fn over the batches, cycling until ``seconds`` pass (bounded by time)."""
    for b in batches[:3]:
        fn(b)  # warm-up
    done, start, i = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        b = batches[i % len(batches)]
        fn(b)
        done += len(b)
        i += 1
    return done / (time.perf_counter() - start)


def main() -> int:
    args = bench_parser(__doc__, seconds=5.0, vectors=100_000, factory="Flat", k=10).parse_args()

    import grpc

    from ragcluster.convert import matrix_to_pb
    from ragcluster.v1 import shard_pb2, shard_pb2_grpc

    rng = np.random.default_rng(0)
    results = {"vectors": args.vectors, "dim": args.dim, "factory": args.factory, "k": args.k}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "shard"
        t = time.perf_counter()
        shard = random_shard(data, args.vectors, args.dim, args.factory, rng)
        results["build_seconds"] = time.perf_counter() - t
        local = shard.index  # the very index the server will load from this data dir (via the checkpoint)
        shard.checkpoint()
        queries = unit_vectors(32 * 64, args.dim, rng)

        try:
            with shard_process(data, "--dim", str(args.dim), "--index-factory", args.factory) as address, \
                    grpc.insecure_channel(address) as channel:
                stub = shard_pb2_grpc.ShardServiceStub(channel)
                for bs in (1, 32):
                    batches = [queries[i:i + bs] for i in range(0, len(queries), bs)]
                    grpc_qps = qps(lambda b: stub.Search(shard_pb2.ShardSearchRequest(
                        queries=matrix_to_pb(b), k=args.k), timeout=30), batches, args.seconds)
                    docs_qps = qps(lambda b: stub.Search(shard_pb2.ShardSearchRequest(
                        queries=matrix_to_pb(b), k=args.k, include_documents=True), timeout=30), batches, args.seconds)
                    local_qps = qps(lambda b: local.search(b, args.k), batches, args.seconds)
                    results[f"batch{bs}"] = {"grpc_qps": grpc_qps, "grpc_with_documents_qps": docs_qps,
                                             "in_process_qps": local_qps, "ratio": grpc_qps / local_qps}
        finally:
            shard.close(checkpoint=False)
    return report(args, results, lambda: render(args, results))


def render(args: Namespace, results: dict) -> None:
    print(f"{args.vectors} x {args.dim} {args.factory}, k={args.k}; built in {results['build_seconds']:.1f}s")
    table = Table([("batch", ">6"), ("gRPC q/s", ">12.0f"), ("+docs q/s", ">12.0f"), ("in-proc q/s", ">13.0f"),
                   ("gRPC/in-proc", ">14.2f")], sep="")
    print(table.header())
    for bs in (1, 32):
        r = results[f"batch{bs}"]
        print(table.row(bs, r["grpc_qps"], r["grpc_with_documents_qps"], r["in_process_qps"], r["ratio"]))


if __name__ == "__main__":
    sys.exit(main())
