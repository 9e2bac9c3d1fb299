"""`ragcluster up`: a local cluster (shards, generators, router) in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import threading
import time
from dataclasses import dataclass

from ragcluster.config import option
from ragcluster.tools.cli.common import console, fail


@dataclass
class UpOptions:
    shards: int = option(2, "number of shards")
    replicas: int = option(1, "replicas per shard")
    generators: int = option(1, "generator nodes (0 = search only)")
    model: str = option("tiny", "generator model: tiny, smollm2 or a local HF model folder")
    data_dir: str = option("./data", "where shards keep their data, logs and cluster.json")
    port: int = option(50051, "router gRPC port")
    index_factory: str = option("Flat", "FAISS index_factory string for every shard")
    max_model_len: int = option(2048, "generator context length (vLLM --max-model-len)")
    kv_cache_bytes: int = option(256 * 1024 * 1024, "generator KV cache size (vLLM --kv-cache-memory-bytes)")
    timeout: float = option(600.0, "seconds to wait for every process to be SERVING")
    json: bool = option(False, "print cluster.json once ready instead of a table")
    insecure: bool = option(False, "no TLS and no API keys (default: a local CA, a certificate per process and an "
                                   "admin API key in DATA_DIR/certs, created on first start)")


def cmd_up(opts: UpOptions, ns: argparse.Namespace) -> int:
    from ragcluster.tools.cluster import ClusterError, ClusterSpec, LocalCluster

    spec = ClusterSpec(
        data_dir=opts.data_dir, shards=opts.shards, replicas=opts.replicas, generators=opts.generators,
        model=opts.model, index_factory=opts.index_factory, port=opts.port, max_model_len=opts.max_model_len,
        kv_cache_bytes=opts.kv_cache_bytes, insecure=opts.insecure,
    )
    if opts.shards < 1 or opts.replicas < 1 or opts.generators < 0:
        return fail("--shards and --replicas must be >= 1, --generators >= 0")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    err = console(stderr=True)
    cluster = LocalCluster(spec)
    start = time.monotonic()
    try:
        cluster.start(timeout=opts.timeout, progress=lambda m: err.print(
            f"  [green]ready[/] {m.role}{'' if m.shard is None else f' {m.shard}'}"
            f"{'' if m.replica is None else f' r{m.replica}'} at {m.grpc} (metrics {m.metrics})"))
    except ClusterError as exc:
        return fail(str(exc))
    try:
        elapsed = time.monotonic() - start
        if opts.json:
            print((cluster.dir / "cluster.json").read_text(), flush=True)
        else:
            err.print(f"cluster up in {elapsed:.1f}s — router at [bold]{cluster.router_address}[/]; "
                      f"{cluster.dir / 'cluster.json'}; Ctrl-C to stop")
            if cluster.certs is not None:
                err.print(f"TLS + API keys: CA {cluster.certs.ca}, admin key {cluster.certs.admin_token}; other "
                          f"commands find them with --data-dir {opts.data_dir}")
            print(cluster.router_address, flush=True)
        while not stop.wait(timeout=3600):
            pass
    finally:
        err.print("stopping cluster…")
        cluster.stop()
        err.print("stopped")
    return 0
