"""What the benchmarks in bench/ share: their command line and report (a table, or ``--json``), a loopback
cluster or shard server started for the run and stopped after it (also when the run is killed with SIGTERM),
the closed and open loops of text searches the CLI's loadtest runs, a closed loop of searches by vector, a
closed loop of any call from client threads, random data (unit vectors, a shard of random vectors), and the
figures made of the samples (latency percentiles, the spread of a figure over rounds).

The scripts run as ``.venv/bin/python bench/NAME.py`` and import this module first (``from harness import
...``): it puts this tree first on ``sys.path``, so a benchmark measures the code beside it, not an installed
copy. Everything else is imported where used, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    import numpy as np

    from ragcluster.security import ClientTls
    from ragcluster.tools.cluster import LocalCluster
    from shard_server.shard import Shard

T = TypeVar("T")


# --- command line and report ---------------------------------------------------------------------------------
def bench_parser(doc: str | None, *, concurrency: int | None = None, seconds: float | None = None,
                 docs: int | None = None, rounds: int | None = None, vectors: int | None = None,
                 factory: str | None = None, k: int | None = None) -> argparse.ArgumentParser:
    """An argument parser with the script's docstring as its help, ``--json``, and the common options whose
    defaults are given (``--concurrency``, ``--seconds``, ``--docs``, ``--rounds``; for a shard of random
    vectors ``--vectors`` with ``--dim`` 384, ``--factory``; ``--k``); add the script's own."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if vectors is not None:
        parser.add_argument("--vectors", type=int, default=vectors, help="random unit vectors in the shard")
        parser.add_argument("--dim", type=int, default=384, help="their dimension")
    if factory is not None:
        parser.add_argument("--factory", default=factory, help="the shard's FAISS index factory string")
    if k is not None:
        parser.add_argument("--k", type=int, default=k, help="hits per search")
    if concurrency is not None:
        parser.add_argument("--concurrency", type=int, default=concurrency, help="closed-loop clients")
    if seconds is not None:
        parser.add_argument("--seconds", type=float, default=seconds, help="seconds of load per measurement")
    if docs is not None:
        parser.add_argument("--docs", type=int, default=docs, help="documents in the synthetic corpus")
    if rounds is not None:
        parser.add_argument("--rounds", type=int, default=rounds, help="measurements per side, alternating")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    return parser


def report(args: argparse.Namespace, results: Any, render: Callable[[], None]) -> int:
    """The end of a benchmark: ``results`` as JSON with ``--json``, else ``render()`` prints them for a reader.
    Returns the exit status (0)."""
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        render()
    return 0


def log(text: str) -> None:
    """Progress for the person waiting (stderr, so that stdout stays the report)."""
    print(text, file=sys.stderr, flush=True)


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages as /proc/loadavg writes them ("3.12 2.80 2.41"): what a shared
    machine was doing while a figure was taken."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class Table:
    """A fixed-width text table: ``columns`` are (title, format spec) pairs such as ("p50 ms", ">8.2f") or
    ("engine", "<11"); titles take the spec's alignment and width. Cells are joined with ``sep``."""

    def __init__(self, columns: Sequence[tuple[str, str]], sep: str = " ") -> None:
        self.columns = list(columns)
        self.sep = sep

    def header(self) -> str:
        titles = []
        for title, spec in self.columns:
            align = spec[0] if spec[:1] in ("<", ">", "^") else "<"
            width = "".join(itertools.takewhile(str.isdigit, spec.lstrip("<>^")))
            titles.append(f"{title:{align}{width}}")
        return self.sep.join(titles).rstrip()

    def row(self, *values: Any) -> str:
        if len(values) != len(self.columns):
            raise ValueError(f"{len(values)} values for {len(self.columns)} columns")
        return self.sep.join(f"{v:{spec}}" for v, (_, spec) in zip(values, self.columns)).rstrip()


# --- figures -------------------------------------------------------------------------------------------------
def percentiles_ms(seconds: Sequence[float], qs: Iterable[float] = (50, 99), mean: bool = False) -> dict[str, float]:
    """Latency percentiles in milliseconds of samples in seconds, numpy's linear interpolation (the loadtest's
    own): {"p50_ms": ..., "p99_ms": ...} (+ "mean_ms"); 0.0 for each when there are no samples."""
    import numpy as np

    a = np.asarray(seconds, dtype=np.float64) * 1000
    out = {f"p{q:g}_ms": float(np.percentile(a, q)) if len(a) else 0.0 for q in qs}
    if mean:
        out["mean_ms"] = float(a.mean()) if len(a) else 0.0
    return out


def spread(values: Sequence[float]) -> dict[str, Any]:
    """A figure over repeated rounds: its median, min, max and the rounds' values in order."""
    if not values:
        raise ValueError("spread of no values")
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": list(values)}


def timed(fn: Callable[[T], object], items: Iterable[T], seconds: float | None = None,
          min_samples: int = 1) -> list[float]:
    """Seconds each ``fn(item)`` took, one after another; with ``seconds``, stops once that budget is spent and
    at least ``min_samples`` were taken (or the items run out)."""
    out: list[float] = []
    stop = time.perf_counter() + seconds if seconds is not None else None
    for item in items:
        start = time.perf_counter()
        fn(item)
        out.append(time.perf_counter() - start)
        if stop is not None and start >= stop and len(out) >= min_samples:
            break
    return out


def thread_loop(call: Callable[[int], object], clients: int, seconds: float,
                max_calls: int = 10_000_000) -> tuple[list[float], float]:
    """A closed loop of ``call(i)`` from ``clients`` threads for ``seconds`` (client n makes calls n,
    n + clients, ...; ``max_calls`` in all at most): the latencies in seconds and the loop's wall time. An
    exception in a call ends that client's loop."""
    latencies: list[float] = []
    lock = threading.Lock()
    start = time.perf_counter()
    end = start + seconds

    def client(n: int) -> None:
        for i in range(n, max_calls, clients):
            if time.perf_counter() >= end:
                return
            t = time.perf_counter()
            call(i)
            with lock:
                latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 300)
    return latencies, time.perf_counter() - start


# --- data ----------------------------------------------------------------------------------------------------
def unit_vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random float32 vectors of length 1 (queries for an inner-product index)."""
    import numpy as np

    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def random_shard(data_dir: Path, vectors: int, dim: int, factory: str, rng: np.random.Generator,
                 text: Callable[[int], str] = lambda i: "") -> Shard:
    """A shard (the shard core, in this process) at ``data_dir`` holding ``vectors`` random vectors, written
    in batches of 4096; document i has id ``v{i}`` and text ``text(i)``. Returned open: close or checkpoint it
    before a shard server opens the directory (the server then loads the index from the checkpoint)."""
    import numpy as np

    from ragcluster.documents import Document
    from shard_server.config import ShardOptions
    from shard_server.shard import Shard

    shard = Shard(ShardOptions(str(data_dir), dim=dim, index_factory=factory))
    for start in range(0, vectors, 4096):
        n = min(4096, vectors - start)
        x = rng.standard_normal((n, dim)).astype(np.float32)
        shard.upsert([Document(f"v{start + i}", text(start + i)) for i in range(n)], x)
    return shard


# --- servers for the run -------------------------------------------------------------------------------------
def stop_on_sigterm() -> None:
    """Turn SIGTERM (``timeout``, ``kill``) into SystemExit(143) in the main thread, so that the ``with`` blocks
    holding the run's servers unwind and stop them instead of leaving them behind. No-op outside the main
    thread (signal handlers can only be set there)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


@contextlib.contextmanager
def loopback_cluster(shards: int = 2, generators: int = 0, insecure: bool = True, timeout: float = 300.0,
                     data_dir: str | Path | None = None, **spec: Any) -> Iterator[LocalCluster]:
    """A local cluster (``ragcluster up``'s launcher) on 127.0.0.1, SERVING when yielded and stopped on exit.
    Its data lives in a temporary directory removed on exit, or in ``data_dir`` (kept: a later cluster can
    serve the same data). ``spec``: further ClusterSpec fields (router_args, model, kv_cache_bytes, ...).
    Plaintext unless ``insecure=False`` (then TLS and API keys, as ``up``)."""
    from ragcluster.tools.cluster import ClusterSpec, LocalCluster

    stop_on_sigterm()
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="ragcluster-bench-"))
        cluster_spec = ClusterSpec(data_dir=str(data_dir), shards=shards, generators=generators, port=0,
                                   insecure=insecure, **spec)
        with LocalCluster(cluster_spec) as cluster:
            cluster.start(timeout=timeout)
            yield cluster


@contextlib.contextmanager
def shard_process(data_dir: Path, *flags: str, timeout: float = 300.0) -> Iterator[str]:
    """``python -m shard_server`` over ``data_dir`` (plus ``flags``) on a free loopback port, without metrics
    (the launcher's ServerProcess: its log is ``DATA_DIR.log`` beside the data); yields its address once
    SERVING, stops it on exit (SIGTERM, SIGKILL after 60 s)."""
    from ragcluster.tools.cluster import ServerProcess

    stop_on_sigterm()
    process = ServerProcess("shard_server", ["--port", "0", "--metrics-port", "-1", "--data-dir", str(data_dir),
                                             "--log-level", "WARNING", *flags], data_dir.parent, data_dir.name)
    try:
        process.wait_ready(timeout)
        yield process.grpc
    finally:
        process.terminate(60)


# --- load through the router ---------------------------------------------------------------------------------
def _search_load(address: str, queries: list[str], seconds: float, security: ClientTls | None,
                 **loop: Any) -> dict[str, float]:
    import asyncio

    from ragcluster.tools.loadtest import run_load

    summary = asyncio.run(run_load(address, "search", queries, seconds, k=10, security=security,
                                   **loop)).summary()
    latency = summary["latency_ms"]  # empty when no search succeeded
    return {"qps": summary["throughput_per_second"], "p50_ms": latency.get("p50", 0.0),
            "p99_ms": latency.get("p99", 0.0), "errors": sum(summary["errors"].values())}


def vector_loop(address: str, vectors: Sequence[Sequence[float]], concurrency: int, seconds: float,
                security: ClientTls | None = None, max_requests: int = 1_000_000) -> dict[str, float]:
    """Searches by vector (k 10; no embedding: transport, fan-out and merge only) from ``concurrency`` asyncio
    clients on one channel for ``seconds`` (``max_requests`` at most): queries/s, p50/p99 latency in ms,
    errors (failed RPCs)."""
    import asyncio

    import grpc

    from ragcluster.channels import aio_channel
    from ragcluster.v1 import router_pb2, router_pb2_grpc

    async def run() -> tuple[list[float], int]:
        latencies: list[float] = []
        errors = 0
        async with aio_channel(address, security) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            end = time.perf_counter() + seconds
            budget = iter(range(max_requests))

            async def client(n: int) -> None:
                nonlocal errors
                i = n
                while time.perf_counter() < end and next(budget, None) is not None:
                    request = router_pb2.SearchRequest(vector=router_pb2.Vector(values=vectors[i % len(vectors)]),
                                                       k=10)
                    start = time.perf_counter()
                    try:
                        await stub.Search(request, timeout=30)
                        latencies.append(time.perf_counter() - start)
                    except grpc.RpcError:
                        errors += 1
                    i += concurrency

            await asyncio.gather(*(client(n) for n in range(concurrency)))
        return latencies, errors

    latencies, errors = asyncio.run(run())
    return {"qps": len(latencies) / seconds, **percentiles_ms(latencies), "errors": errors}


@contextlib.contextmanager
def router_process(run_dir: Path, shards: list[str], *flags: str, env: dict[str, str] | None = None,
                   timeout: float = 300.0) -> Iterator[str]:
    """``python -m router`` (plaintext, loopback, metrics on a free port) over ``shards`` (``host:port`` of
    shard 0, 1, ...) plus ``flags``; yields its address once SERVING (its embedding model loaded), stops it
    on exit. Its log is ``run_dir/router.log``."""
    from ragcluster.tools.cluster import ServerProcess, router_env, wait_for_serving

    shard_flags = [arg for n, address in enumerate(shards) for arg in ("--shard", f"{n}={address}")]
    router = ServerProcess("router", ["--port", "0", "--insecure", *shard_flags, *flags], run_dir, "router",
                           env={**router_env(), **(env or {})})
    try:
        router.wait_ready(timeout)
        wait_for_serving(router.grpc, timeout=60)
        yield router.grpc
    finally:
        router.terminate(30)


def closed_loop(address: str, queries: list[str], concurrency: int, seconds: float,
                security: ClientTls | None = None) -> dict[str, float]:
    """Text searches (k 10; the router embeds each query: the end-to-end path) from ``concurrency`` clients
    for ``seconds``, through the CLI's own loadtest loop: queries/s, p50/p99 latency in ms, errors."""
    return _search_load(address, queries, seconds, security, concurrency=concurrency)


def open_loop(address: str, queries: list[str], rate: float, seconds: float,
              security: ClientTls | None = None) -> dict[str, float]:
    """The same text searches arriving at ``rate`` per second (Poisson, the loadtest's open loop) for
    ``seconds``: the rate, queries/s served, p50/p99 latency in ms, errors."""
    return {"rate": rate, **_search_load(address, queries, seconds, security, rate=rate)}
