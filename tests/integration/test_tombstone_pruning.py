"""Tombstone pruning and snapshot catch-up (issue 16). Real shard processes and a real router.

- A versioned delete is forgotten only after a complete anti-entropy pass saw it on every compared replica
  and it is older than --tombstone-grace-seconds. A replica that was down across such a prune still holds the
  deleted document: it must not merge it back. It is restored from a snapshot instead (its last complete
  pass is older than the tombstone horizon plus half the grace period), and the deleted document never
  comes back on any replica.
- An empty replica is restored from a snapshot of a replica that holds data instead of being replayed
  document by document.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import grpc
import numpy as np
from prometheus_client import REGISTRY

from ragcluster.client import RouterClient
from ragcluster.convert import document_to_pb
from ragcluster.documents import Document
from ragcluster.tools.cluster import ServerProcess
from ragcluster.v1 import shard_pb2, shard_pb2_grpc
from router.config import RouterConfig
from tests.helpers import RouterInThread, replica_digest, shard_process


def port_of(process: ServerProcess) -> int:
    return int(process.grpc.rsplit(":", 1)[1])


def wait_until(condition, seconds: float = 90.0, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def catchups() -> float:
    return REGISTRY.get_sample_value("ragcluster_router_catchups_total", {"shard": "0"}) or 0.0


def synced(router: RouterInThread) -> bool:
    return all(r.serving and not r.needs_sync for r in router.servicer.groups[0].replicas)


def run_pass(router: RouterInThread) -> None:
    asyncio.run_coroutine_threadsafe(router.servicer.groups[0].sync(), router.loop).result(120)


def test_replica_down_across_a_prune_is_restored_not_merged(tmp_path, embedder):
    procs = [shard_process(tmp_path, 0, r).wait_ready(120) for r in range(3)]
    config = RouterConfig(port=0, metrics_port=-1, timeout_seconds=10.0, eject_seconds=1.0, anti_entropy_seconds=0,
                          write_quorum="majority", tombstone_grace_seconds=2.0,
                          shard=["0=" + ",".join(p.grpc for p in procs)])
    router = RouterInThread(config, embedder)
    a, b, c = procs
    try:
        wait_until(lambda: synced(router), what="first comparison")
        with RouterClient(router.address) as client:
            assert client.ingest([Document("gone", "a document about rivers that will be deleted")] +
                                 [Document(f"kept{i}", f"kept document {i} about rivers") for i in range(5)]
                                 ).acknowledged == 6
            c.kill()  # C is down while "gone" is deleted and its tombstone pruned
            wait_until(lambda: not next(r for r in router.servicer.groups[0].replicas if r.address == c.grpc).serving,
                       what="C seen down")
            assert client.delete(["gone"]) == 1  # acknowledged by A and B (majority)
            assert replica_digest(a.grpc)["gone"][2] is True  # a tombstone

            def pruned() -> bool:
                run_pass(router)  # A and B are a majority: a complete pass, then the prune
                return all("gone" not in replica_digest(p.grpc) for p in (a, b))

            wait_until(pruned, what="the tombstone pruned on A and B (older than the 2 s grace)")

            restores = catchups()
            procs[2] = c = shard_process(tmp_path, 0, 2, port=port_of(c)).wait_ready(120)  # still holds "gone"
            wait_until(lambda: synced(router), what="C compared")
            run_pass(router)
            assert catchups() == restores + 1  # C was restored from a snapshot, not merged
            digests = [replica_digest(p.grpc) for p in procs]
            assert digests[0] == digests[1] == digests[2]
            assert "gone" not in digests[0] and {f"kept{i}" for i in range(5)} <= set(digests[0])
            assert not client.lookup(["gone"])
            hits = client.search("a document about rivers that will be deleted", k=10).hits
            assert "gone" not in {h.id for h in hits}
    finally:
        router.stop()
        for p in procs:
            if p.proc.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
            p.terminate(30)


def test_no_prune_while_a_replica_is_down_with_quorum_all(tmp_path, embedder):
    procs = [shard_process(tmp_path, 0, r).wait_ready(120) for r in range(2)]
    config = RouterConfig(port=0, metrics_port=-1, timeout_seconds=10.0, eject_seconds=1.0, anti_entropy_seconds=0,
                          tombstone_grace_seconds=0.5, shard=["0=" + ",".join(p.grpc for p in procs)])
    router = RouterInThread(config, embedder)
    a, b = procs
    try:
        wait_until(lambda: synced(router), what="first comparison")
        with RouterClient(router.address) as client:
            client.ingest([Document("x", "deleted while B is down")])
            b.kill()
            wait_until(lambda: not router.servicer.groups[0].replicas[1].serving, what="B seen down")
            assert client.delete(["x"]) == 1  # quorum all: acknowledged by the live replica A
            time.sleep(1.0)  # the tombstone is now older than the grace period (0.5 s): a time, not a sync
            run_pass(router)  # A alone is not a complete pass under quorum all: nothing may be pruned
            assert replica_digest(a.grpc)["x"][2] is True
            procs[1] = b = shard_process(tmp_path, 0, 1, port=port_of(b)).wait_ready(120)
            wait_until(lambda: synced(router), what="B compared")
            run_pass(router)  # complete now: B got the delete, then both pruned it
            assert replica_digest(a.grpc) == replica_digest(b.grpc)
            assert "x" not in replica_digest(b.grpc)
    finally:
        router.stop()
        for p in procs:
            p.terminate(30)


def test_empty_replica_is_restored_from_a_snapshot(tmp_path, embedder):
    a, b = (shard_process(tmp_path, 0, r).wait_ready(120) for r in range(2))
    rng = np.random.default_rng(16)
    with grpc.insecure_channel(a.grpc) as channel:  # 1,200 documents written to A directly (B is empty)
        stub = shard_pb2_grpc.ShardServiceStub(channel)
        for start in range(0, 1200, 400):
            vectors = rng.standard_normal((400, 384)).astype(np.float32)
            batch = [shard_pb2.DocumentVector(document=document_to_pb(Document(f"s{start + i}", f"text {start + i}")),
                                              vector=vectors[i].tolist(), version=(1 << 40) + start + i)
                     for i in range(400)]
            list(stub.Upsert(iter([shard_pb2.UpsertRequest(documents=batch)]), timeout=60))
    restores = catchups()
    config = RouterConfig(port=0, metrics_port=-1, timeout_seconds=10.0, anti_entropy_seconds=0,
                          shard=[f"0={a.grpc},{b.grpc}"])
    router = RouterInThread(config, embedder)
    try:
        wait_until(lambda: synced(router), what="B restored and compared")
        group = router.servicer.groups[0]
        assert catchups() == restores + 1
        before = group.digest_bytes
        assert asyncio.run_coroutine_threadsafe(group.reconcile(group.replicas), router.loop).result(60) == 0
        assert group.digest_bytes - before < 40_000  # identical: only the bucket summaries were read
        da, db = replica_digest(a.grpc), replica_digest(b.grpc)
        assert da == db and len(da) == 1200
    finally:
        router.stop()
        a.terminate(30)
        b.terminate(30)
