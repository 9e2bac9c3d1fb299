"""What the benchmarks in bench/ share: their command line, a loopback cluster or shard server started for
the run and stopped after it, and the closed loop of text searches the CLI's loadtest runs.

The scripts run as ``.venv/bin/python bench/NAME.py`` and import this module first (``from harness import
...``): it puts this tree first on ``sys.path``, so a benchmark measures the code beside it, not an installed
copy. Everything else is imported where used, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from ragcluster.security import ClientTls
    from ragcluster.tools.cluster import LocalCluster


def bench_parser(doc: str | None, *, concurrency: int | None = None, seconds: float | None = None,
                 docs: int | None = None, rounds: int | None = None) -> argparse.ArgumentParser:
    """An argument parser with the script's docstring as its help, ``--json``, and the common options whose
    defaults are given (``--concurrency``, ``--seconds``, ``--docs``, ``--rounds``); add the script's own."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
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


@contextlib.contextmanager
def loopback_cluster(shards: int = 2, generators: int = 0, insecure: bool = True, timeout: float = 300.0,
                     **spec: Any) -> Iterator[LocalCluster]:
    """A local cluster (``ragcluster up``'s launcher) on 127.0.0.1 in a temporary directory, SERVING when
    yielded and stopped, with its data removed, on exit. ``spec``: further ClusterSpec fields (router_args,
    model, index_factory, ...). Plaintext unless ``insecure=False`` (then TLS and API keys, as ``up``)."""
    from ragcluster.tools.cluster import ClusterSpec, LocalCluster

    with tempfile.TemporaryDirectory(prefix="ragcluster-bench-") as tmp:
        cluster_spec = ClusterSpec(data_dir=tmp, shards=shards, generators=generators, port=0, insecure=insecure,
                                   **spec)
        with LocalCluster(cluster_spec) as cluster:
            cluster.start(timeout=timeout)
            yield cluster


@contextlib.contextmanager
def shard_process(data_dir: Path, *flags: str, timeout: float = 300.0) -> Iterator[str]:
    """``python -m shard_server`` over ``data_dir`` (plus ``flags``) on a free loopback port, without metrics;
    yields its address once SERVING, terminates it on exit."""
    from ragcluster.tools.cluster import wait_for_serving

    ready = data_dir.parent / f"{data_dir.name}.ready.json"
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "shard_server", "--port", "0", "--metrics-port", "-1",
                             "--data-dir", str(data_dir), "--ready-file", str(ready), "--log-level", "WARNING",
                             *flags])
    try:
        deadline = time.monotonic() + timeout
        while not ready.exists():  # written once the server listens (the launchers' protocol)
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("shard server did not start")
            time.sleep(0.05)
        address: str = json.loads(ready.read_text())["grpc"]
        wait_for_serving(address)
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def closed_loop(address: str, queries: list[str], concurrency: int, seconds: float,
                security: ClientTls | None = None) -> dict[str, float]:
    """Text searches (k 10; the router embeds each query: the end-to-end path) from ``concurrency`` clients
    for ``seconds``, through the CLI's own loadtest loop: queries/s, p50/p99 latency in ms, errors."""
    import asyncio

    from ragcluster.tools.loadtest import run_load

    summary = asyncio.run(run_load(address, "search", queries, seconds, concurrency=concurrency, k=10,
                                   security=security)).summary()
    return {"qps": summary["throughput_per_second"], "p50_ms": summary["latency_ms"]["p50"],
            "p99_ms": summary["latency_ms"]["p99"], "errors": sum(summary["errors"].values())}
