"""Overload at 3x capacity (issue 16): are rejections fast, and does admitted latency stay bounded?

A router process (--max-in-flight N) in front of one shard process that adds --delay-ms to every search, so
the capacity is set by the admission limit (about N / delay), not by how busy the shared machine is. Each
round measures, in the same script:

1. capacity: N closed-loop clients (exactly the admission limit) for --seconds: throughput C and admitted p99;
2. overload: open-loop Poisson arrivals at --factor x C for --seconds (latency measured from each scheduled
   arrival, so a queueing server cannot hide behind a slowed client): latency of the RESOURCE_EXHAUSTED answers
   (p50 / p99 / max), admitted throughput and admitted p99, and their ratio to the capacity run's p99. Meanwhile
   a health check (grpc.health.v1, which none of the router's own code handles) goes to the same router every
   100 ms: the floor of what this machine, at this moment, lets any answer from that process take; the
   refusals' p50 and p99 are also given as multiples of the health check's.

    .venv/bin/python bench/overload.py [--slots 4] [--delay-ms 100] [--seconds 10] [--rounds 2] [--json]
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import bench_parser, router_process, shard_process


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values) * 1000
    return {"p50": round(float(np.percentile(a, 50)), 2), "p99": round(float(np.percentile(a, 99)), 2),
            "max": round(float(a.max()), 2)}


async def health_probes(address: str, seconds: float, every: float = 0.1) -> list[float]:
    """Latency of a grpc.health.v1 Check every ``every`` seconds for ``seconds``."""
    from grpc_health.v1 import health_pb2

    from ragcluster.channels import aio_channel, health_stub

    latencies: list[float] = []
    async with aio_channel(address) as channel:
        stub = health_stub(channel)
        end = time.perf_counter() + seconds
        for _ in range(int(seconds / every) + 1):  # bounded
            if time.perf_counter() >= end:
                break
            start = time.perf_counter()
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
            latencies.append(time.perf_counter() - start)
            await asyncio.sleep(max(0.0, every - (time.perf_counter() - start)))  # the probe's schedule
    return latencies


def measure(address: str, queries: list[str], seconds: float, concurrency: int = 0, rate: float = 0.0,
            probe: bool = False) -> dict:
    from ragcluster.tools.loadtest import run_load

    async def run() -> tuple:
        load = run_load(address, "search", queries, seconds, concurrency=concurrency, rate=rate, k=5, timeout=10.0,
                        max_outstanding=5000)
        if not probe:
            return await load, []
        return tuple(await asyncio.gather(load, health_probes(address, seconds)))

    report, probes = asyncio.run(run())
    ok = [s.latency for s in report.samples if s.code == "OK"]
    rejected = [s.latency for s in report.samples if s.code == "RESOURCE_EXHAUSTED"]
    other: dict[str, int] = {}
    for s in report.samples:
        if s.code not in ("OK", "RESOURCE_EXHAUSTED"):
            other[s.code] = other.get(s.code, 0) + 1
    out = {"requests": len(report.samples), "admitted": len(ok), "rejected": len(rejected), "other_errors": other,
           "admitted_per_second": round(len(ok) / report.duration, 1), "admitted_ms": percentiles(ok),
           "rejected_ms": percentiles(rejected),
           "rejected_under_10ms": round(sum(r < 0.010 for r in rejected) / len(rejected), 4) if rejected else None}
    if probe:
        out["health_check_ms"] = hc = percentiles(probes)
        rej = out["rejected_ms"]
        out["rejected_vs_health_check"] = {q: round(rej[q] / hc[q], 2) for q in ("p50", "p99") if rej and hc[q]}
    return out


def main() -> int:
    parser = bench_parser(__doc__, seconds=10.0, rounds=2)
    parser.add_argument("--slots", type=int, default=4, help="the router's --max-in-flight")
    parser.add_argument("--delay-ms", type=float, default=100.0, help="the shard's added search latency")
    parser.add_argument("--factor", type=float, default=3.0, help="offered load / measured capacity")
    args = parser.parse_args()

    from ragcluster.client import RouterClient
    from ragcluster.corpus import make_documents, make_queries

    queries = make_queries(300, seed=16)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="overload-") as tmp:
        run = Path(tmp)
        with shard_process(run / "s0", "--shard-id", "0", "--insecure", "--search-delay-ms", str(args.delay_ms),
                           timeout=180) as shard, \
                router_process(run, [shard], "--max-in-flight", str(args.slots), "--embedding-threads", "1",
                               "--no-access-log") as router:
            with RouterClient(router, timeout=60) as client:
                client.ingest(make_documents(200, seed=16), batch_size=100)
            measure(router, queries, 3.0, concurrency=args.slots)  # warm-up (not reported)
            for n in range(args.rounds):
                capacity = measure(router, queries, args.seconds, concurrency=args.slots)
                rate = args.factor * capacity["admitted_per_second"]
                overload = measure(router, queries, args.seconds, rate=rate, probe=True)
                p99_1x, p99_3x = capacity["admitted_ms"].get("p99"), overload["admitted_ms"].get("p99")
                rounds.append({"round": n + 1, "capacity": capacity, "offered_per_second": round(rate, 1),
                               "overload": overload,
                               "admitted_p99_ratio": round(p99_3x / p99_1x, 2) if p99_1x and p99_3x else None})

    result = {"load_average": [round(x, 1) for x in os.getloadavg()], "slots": args.slots,
              "delay_ms": args.delay_ms, "seconds": args.seconds, "factor": args.factor, "rounds": rounds}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"router --max-in-flight {args.slots}, shard search delay {args.delay_ms:g} ms, "
          f"{args.seconds:g} s per phase, load average {result['load_average']}; latencies in ms")
    print(f"{'round':>5} {'cap q/s':>8} {'p99 1x':>8} {'offered':>8} {'adm q/s':>8} {'p99 3x':>8} {'ratio':>6} "
          f"{'rejected':>8} {'rej p50':>8} {'rej p99':>8} {'rej max':>8} {'<10ms':>6} {'hc p50':>7} {'hc p99':>7} "
          f"{'rej/hc':>11}")
    for r in rounds:
        c, o = r["capacity"], r["overload"]
        print(f"{r['round']:>5} {c['admitted_per_second']:>8} {c['admitted_ms'].get('p99', 0):>8} "
              f"{r['offered_per_second']:>8} {o['admitted_per_second']:>8} {o['admitted_ms'].get('p99', 0):>8} "
              f"{r['admitted_p99_ratio'] or 0:>6} {o['rejected']:>8} {o['rejected_ms'].get('p50', 0):>8} "
              f"{o['rejected_ms'].get('p99', 0):>8} {o['rejected_ms'].get('max', 0):>8} "
              f"{o['rejected_under_10ms'] or 0:>6} {o['health_check_ms'].get('p50', 0):>7} "
              f"{o['health_check_ms'].get('p99', 0):>7} "
              f"{o['rejected_vs_health_check'].get('p50', 0):>5}/{o['rejected_vs_health_check'].get('p99', 0):<5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
