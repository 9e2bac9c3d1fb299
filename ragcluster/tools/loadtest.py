"""Load generation against the router: closed loop (N clients, each sends when its previous request
finished) or open loop (Poisson arrivals at R/s; each request's latency is measured from its scheduled
arrival, so a slow server cannot hide its queueing by slowing the client down — no coordinated omission).
Bounded in time (``duration`` plus one request timeout to drain) and in count (``max_requests``)."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import grpc
import numpy as np

from ragcluster.channels import aio_channel
from ragcluster.convert import set_retrieval
from ragcluster.security import ClientTls
from ragcluster.v1 import common_pb2, router_pb2, router_pb2_grpc

PERCENTILES = (50, 90, 99, 99.9)


@dataclass
class Sample:
    at: float  # seconds since the start (scheduled send time)
    latency: float
    code: str
    ttft: float | None = None


@dataclass
class LoadReport:
    workload: str  # search | ask
    loop: str
    concurrency: int
    rate: float
    duration: float
    samples: list[Sample] = field(default_factory=list)
    dropped: int = 0  # open loop: arrivals not sent because max_outstanding requests were already waiting

    def summary(self) -> dict:
        ok = [s for s in self.samples if s.code == "OK"]
        errors: dict[str, int] = {}
        for s in self.samples:
            if s.code != "OK":
                errors[s.code] = errors.get(s.code, 0) + 1
        if self.dropped:
            errors["CLIENT_DROPPED"] = self.dropped
        out = {
            "workload": self.workload, "mode": self.workload,  # "mode": the same, for scripts written before
            "loop": self.loop, "concurrency": self.concurrency, "rate": self.rate,
            "duration_seconds": self.duration, "requests": len(self.samples), "ok": len(ok), "errors": errors,
            "throughput_per_second": len(ok) / self.duration if self.duration else 0.0,
            "latency_ms": _percentiles([s.latency for s in ok]),
        }
        if self.workload == "ask":
            out["ttft_ms"] = _percentiles([s.ttft for s in ok if s.ttft is not None])
        return out

    def plot(self, path: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ok = [s for s in self.samples if s.code == "OK"]
        bad = [s for s in self.samples if s.code != "OK"]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
        ax1.scatter([s.at for s in ok], [s.latency * 1000 for s in ok], s=6, label="ok")
        if bad:
            ax1.scatter([s.at for s in bad], [s.latency * 1000 for s in bad], s=10, c="red", marker="x",
                        label="error")
        ax1.set_xlabel("time since start (s)")
        ax1.set_ylabel("latency (ms)")
        ax1.set_title(f"{self.workload} latency over time ({self.loop} loop)")
        ax1.legend()
        if ok:
            ax2.hist([s.latency * 1000 for s in ok], bins=50)
            for p, value in _percentiles([s.latency for s in ok]).items():
                if p in ("p50", "p99"):
                    ax2.axvline(value, color="k", linestyle="--", linewidth=0.8)
                    ax2.text(value, ax2.get_ylim()[1] * 0.9, p, rotation=90)
        ax2.set_xlabel("latency (ms)")
        ax2.set_ylabel("requests")
        ax2.set_title("latency histogram")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.array(values) * 1000
    out = {f"p{p:g}": float(np.percentile(a, p)) for p in PERCENTILES}
    out["max"] = float(a.max())
    out["mean"] = float(a.mean())
    return out


async def _one(stub: router_pb2_grpc.RouterServiceAsyncStub, workload: str, text: str, k: int, max_tokens: int,
               timeout: float, scheduled: float, t0: float, retrieval: str = "") -> Sample:
    ttft = None
    try:
        if workload == "search":
            search = router_pb2.SearchRequest(text=text, k=k)
            set_retrieval(search, retrieval)
            await stub.Search(search, timeout=timeout)
        else:
            ask = router_pb2.AskRequest(question=text, k=k, sampling=common_pb2.SamplingParams(
                max_tokens=max_tokens, temperature=0.0))
            set_retrieval(ask, retrieval)
            async for event in stub.Ask(ask, timeout=timeout):
                if ttft is None and event.WhichOneof("event") == "delta":
                    ttft = time.perf_counter() - scheduled
        code = "OK"
    except grpc.aio.AioRpcError as exc:
        code = exc.code().name
    return Sample(scheduled - t0, time.perf_counter() - scheduled, code, ttft)


async def run_load(address: str, workload: str, queries: list[str], duration: float, concurrency: int = 0,
                   rate: float = 0.0, k: int = 10, max_tokens: int = 32, timeout: float = 30.0,
                   max_requests: int = 1_000_000, max_outstanding: int = 1000, seed: int = 0,
                   retrieval: str = "", security: ClientTls | None = None) -> LoadReport:
    """``workload``: search | ask; ``retrieval``: dense | lexical | hybrid ('' = the router's default)."""
    if workload not in ("search", "ask"):
        raise ValueError(f"workload must be search or ask, got {workload!r}")
    if not queries:
        raise ValueError("no queries")
    loop_kind = "open" if rate > 0 else "closed"
    concurrency = concurrency or (0 if rate > 0 else 8)
    report = LoadReport(workload, loop_kind, concurrency, rate, duration)
    async with aio_channel(address, security) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        t0 = time.perf_counter()
        end = t0 + duration
        counter = iter(range(max_requests))

        if loop_kind == "closed":
            async def client(n: int) -> None:
                i = n
                while time.perf_counter() < end and next(counter, None) is not None:
                    report.samples.append(await _one(stub, workload, queries[i % len(queries)], k, max_tokens,
                                                     timeout, time.perf_counter(), t0, retrieval))
                    i += concurrency

            await asyncio.gather(*(client(n) for n in range(concurrency)))
        else:
            rng = random.Random(seed)
            tasks: set[asyncio.Task[Sample]] = set()

            def done(task: asyncio.Task[Sample]) -> None:
                tasks.discard(task)
                report.samples.append(task.result())

            scheduled, i = t0, 0
            while True:
                scheduled += rng.expovariate(rate)
                if scheduled >= end or next(counter, None) is None:
                    break
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)  # the arrival process itself (a schedule, not a sync)
                if len(tasks) >= max_outstanding:
                    report.dropped += 1
                    continue
                task = asyncio.create_task(_one(stub, workload, queries[i % len(queries)], k, max_tokens, timeout,
                                                scheduled, t0, retrieval))
                task.add_done_callback(done)
                tasks.add(task)
                i += 1
            if tasks:
                await asyncio.wait(tasks, timeout=timeout + 5)
        if loop_kind == "closed":
            report.duration = time.perf_counter() - t0  # the arrival window is the duration for the open loop
    report.samples.sort(key=lambda s: s.at)
    return report
