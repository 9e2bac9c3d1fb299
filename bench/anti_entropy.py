"""Incremental anti-entropy vs the full comparison, same script (issue 16).

Two shard replica processes hold --docs documents (written directly, random vectors). Each round first
makes --diffs differences on replica A only (new documents, newer versions of existing ones, versioned
deletes), then runs one anti-entropy pass of the router's ShardGroup: ``full`` reads every (id, version,
hash) entry of both replicas (the comparison before buckets), ``buckets`` reads --buckets per-bucket hashes
and then the entries of the differing buckets only. Rounds alternate between the two. The same is measured
on identical replicas (the steady state of a periodic pass). Reported: bytes of digest answers read by the
router, seconds per pass (median and spread), repairs sent.

    .venv/bin/python bench/anti_entropy.py [--docs 10000] [--diffs 10] [--rounds 3] [--buckets 1024] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from harness import Table, bench_parser, report, shard_process, spread


async def write(stub, docs: list[tuple[str, str]], versions: list[int], rng: np.random.Generator) -> None:
    from ragcluster.convert import document_to_pb
    from ragcluster.documents import Document
    from ragcluster.v1 import shard_pb2

    for start in range(0, len(docs), 500):
        chunk = docs[start:start + 500]
        vectors = rng.standard_normal((len(chunk), 384)).astype(np.float32)
        request = shard_pb2.UpsertRequest(documents=[
            shard_pb2.DocumentVector(document=document_to_pb(Document(i, text)), vector=v.tolist(), version=ver)
            for (i, text), v, ver in zip(chunk, vectors, versions[start:start + 500])])
        async for _ in stub.Upsert(iter([request]), timeout=120):
            break


async def run(args: argparse.Namespace, a_address: str, b_address: str) -> dict:
    from ragcluster.v1 import shard_pb2
    from router.replicas import ReplicaPolicy, ShardGroup
    from router.versions import HybridClock

    clock = HybridClock(node=1)
    rng = np.random.default_rng(16)
    group = ShardGroup(0, [a_address, b_address], ReplicaPolicy(anti_entropy_seconds=0, tombstone_grace_seconds=0,
                                                                digest_buckets=args.buckets), clock=clock)
    a, b = group.replicas
    docs = [(f"doc-{i:06d}", f"document {i} about rivers and lakes") for i in range(args.docs)]
    versions = [clock.now() for _ in docs]
    await asyncio.gather(write(a.stub, docs, versions, rng), write(b.stub, docs, versions, rng))

    async def differences(round_no: int) -> None:
        """--diffs differences on A only: half new documents, a quarter newer versions, a quarter deletes."""
        new = max(args.diffs // 2, 1)
        changed = max(args.diffs // 4, 1)
        deleted = max(args.diffs - new - changed, 1)
        picks = rng.choice(args.docs, changed + deleted, replace=False)
        fresh = [(f"new-{round_no}-{i}", f"new document {i} of round {round_no}") for i in range(new)]
        fresh += [(docs[p][0], f"changed in round {round_no}") for p in picks[:changed]]
        await write(a.stub, fresh, [clock.now() for _ in fresh], rng)
        ids = [docs[p][0] for p in picks[changed:]]
        await a.stub.Delete(shard_pb2.ShardDeleteRequest(ids=ids, versions=[clock.now() for _ in ids]), timeout=60)

    async def one_pass(full: bool) -> dict:
        before = group.digest_bytes
        start = time.perf_counter()
        repairs = await group.reconcile(group.replicas, full=full)
        return {"seconds": time.perf_counter() - start, "bytes": group.digest_bytes - before, "repairs": repairs}

    results: dict[str, dict[str, list[dict]]] = {"few_differences": {"full": [], "buckets": []},
                                                  "identical": {"full": [], "buckets": []}}
    await group.reconcile(group.replicas, full=True)  # warm both replicas up (caches, connections)
    round_no = 0
    for _ in range(args.rounds):
        for method in ("full", "buckets"):
            round_no += 1
            await differences(round_no)
            results["few_differences"][method].append(await one_pass(method == "full"))
    for _ in range(args.rounds):
        for method in ("full", "buckets"):
            results["identical"][method].append(await one_pass(method == "full"))
    await group.close()

    summary: dict = {"docs": args.docs, "diffs_per_round": args.diffs, "rounds": args.rounds,
                     "buckets": args.buckets}
    for case, methods in results.items():
        out = {}
        for method, runs in methods.items():
            seconds = spread([r["seconds"] for r in runs])
            out[method] = {"bytes": int(statistics.median(r["bytes"] for r in runs)),
                           "seconds_median": round(seconds["median"], 4),
                           "seconds_min": round(seconds["min"], 4), "seconds_max": round(seconds["max"], 4),
                           "repairs": [r["repairs"] for r in runs]}
        out["bytes_ratio"] = round(out["buckets"]["bytes"] / max(out["full"]["bytes"], 1), 4)
        out["time_ratio"] = round(out["buckets"]["seconds_median"] / max(out["full"]["seconds_median"], 1e-9), 3)
        summary[case] = out
    return summary


def main() -> int:
    parser = bench_parser(__doc__, docs=10_000, rounds=3)
    parser.add_argument("--diffs", type=int, default=10)
    parser.add_argument("--buckets", type=int, default=1024)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="anti-entropy-") as tmp, ExitStack() as stack:
        flags = ["--shard-id", "0", "--insecure", "--checkpoint-interval-seconds", "0"]
        a, b = (stack.enter_context(shard_process(Path(tmp) / f"r{r}", *flags, timeout=180)) for r in range(2))
        summary = asyncio.run(run(args, a, b))

    def render() -> None:
        print(f"{args.docs} documents on 2 replicas, {args.buckets} buckets, {args.rounds} rounds per method")
        table = Table([("case", "<16"), ("method", "<8"), ("bytes", ">10"), ("s median", ">9"), ("s min", ">8"),
                       ("s max", ">8"), ("repairs", "")])
        print(table.header())
        for case in ("few_differences", "identical"):
            for method in ("full", "buckets"):
                m = summary[case][method]
                print(table.row(case, method, m["bytes"], m["seconds_median"], m["seconds_min"], m["seconds_max"],
                                str(m["repairs"])))
            print(f"{case:<16} buckets/full: bytes {summary[case]['bytes_ratio']}, time {summary[case]['time_ratio']}")

    return report(args, summary, render)


if __name__ == "__main__":
    sys.exit(main())
