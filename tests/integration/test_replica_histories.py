"""Replicated writes are safe by design (issue 16, items 1, 2, 11): per-document versions (the routers'
hybrid logical clocks), last writer wins on every replica, versioned deletes, and anti-entropy by
document instead of comparing sequence numbers. Real shard processes (kill -9, SIGSTOP, restarts) and
real routers; every check reads the replicas directly."""

from __future__ import annotations

import os
import signal
import threading
import time

import grpc
import pytest

from ragcluster.client import RouterClient
from ragcluster.documents import Document
from ragcluster.tools.cluster import ServerProcess
from router.config import RouterConfig
from tests.helpers import RouterInThread, shard_process
from tests.helpers import replica_digest as digest


def port_of(process: ServerProcess) -> int:
    return int(process.grpc.rsplit(":", 1)[1])


def live(entries: dict[str, tuple[int, str, bool]]) -> dict[str, str]:
    return {i: h for i, (_, h, deleted) in entries.items() if not deleted}


def wait_until(condition, seconds: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def docs(prefix: str, n: int, text: str = "") -> list[Document]:
    return [Document(f"{prefix}{i}", text or f"{prefix} document {i} about rivers") for i in range(n)]


@pytest.fixture
def pair(tmp_path, embedder):
    """Shard 0 with replicas A and B (separate processes), one router (quorum all, no periodic pass)."""
    procs = [shard_process(tmp_path, 0, r) for r in range(2)]
    for p in procs:
        p.wait_ready(120)
    config = RouterConfig(port=0, metrics_port=-1, timeout_seconds=10.0, eject_seconds=1.0, anti_entropy_seconds=0,
                          shard=[f"0={procs[0].grpc},{procs[1].grpc}"])
    router = RouterInThread(config, embedder)
    # the router compares the replicas once both are seen SERVING (a write before that is refused)
    wait_until(lambda: all(r.serving and not r.needs_sync for r in group_of(router).replicas), what="first sync")
    yield tmp_path, procs, router, config
    router.stop()
    for p in procs:
        with_cont(p)
        p.terminate(30)


def with_cont(p: ServerProcess) -> None:
    if p.proc.poll() is None:
        os.kill(p.pid, signal.SIGCONT)


def group_of(router: RouterInThread):
    return router.servicer.groups[0]


def replica(router: RouterInThread, address: str):
    return next(r for r in group_of(router).replicas if r.address == address)


def test_overlapping_outages_lose_no_acknowledged_write(pair):
    run, procs, router, _ = pair
    a, b = procs
    with RouterClient(router.address) as client:
        assert client.ingest(docs("base", 10)).acknowledged == 10
        a.kill()  # A down
        wait_until(lambda: not replica(router, a.grpc).serving, what="A seen down")
        assert client.ingest(docs("x", 5)).acknowledged == 5  # acknowledged by B alone (quorum all: live)
        b.kill()  # B down, then A back alone
        procs[0] = a = shard_process(run, 0, 0, port=port_of(a)).wait_ready(120)
        wait_until(lambda: replica(router, a.grpc).serving, what="A seen back")
        # A may be behind (it is): it must neither serve reads nor take writes alone
        with pytest.raises(grpc.RpcError) as err:
            client.lookup(["x0", "base0"])
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as err:
            client.ingest(docs("y", 3))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        procs[1] = b = shard_process(run, 0, 1, port=port_of(b)).wait_ready(120)  # B back: histories compared
        wait_until(lambda: all(r.serving and not r.needs_sync for r in group_of(router).replicas), what="repair")
        assert sorted(client.lookup([f"x{i}" for i in range(5)])) == [f"x{i}" for i in range(5)]
    da, db = digest(a.grpc), digest(b.grpc)
    assert da == db  # identical replicas
    assert {f"x{i}" for i in range(5)} | {f"base{i}" for i in range(10)} <= set(live(da))


def test_concurrent_routers_leave_identical_replicas(pair, embedder):
    _run, procs, router, config = pair
    second = RouterInThread(config, embedder)  # another router pod writing the same shard
    acked: dict[str, set[str]] = {f"c{i}": set() for i in range(8)}
    errors: list = []

    def writer(address: str, tag: str) -> None:
        with RouterClient(address) as client:
            for n in range(25):
                batch = [Document(f"c{i}", f"{tag} round {n} about rivers {i}") for i in range(8)]
                try:
                    client.ingest(batch, batch_size=8)
                    for d in batch:
                        acked[d.id].add(d.content_hash())
                except grpc.RpcError as exc:
                    errors.append(exc)

    try:
        threads = [threading.Thread(target=writer, args=(r.address, tag))
                   for r, tag in ((router, "one"), (second, "two"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not errors, errors[:2]
    finally:
        second.stop()
    da, db = digest(procs[0].grpc), digest(procs[1].grpc)
    assert da == db, "replicas diverged"
    for doc_id, hashes in acked.items():
        assert da[doc_id][1] in hashes  # the content of an acknowledged write (the last writer's)


def test_write_abandoned_by_its_client_is_repaired(pair):
    _run, procs, router, _ = pair
    a, b = procs
    os.kill(b.pid, signal.SIGSTOP)  # B hangs (not a crash: its health stream stays open)
    try:
        with RouterClient(router.address) as client, pytest.raises(grpc.RpcError):
            client.ingest([Document("z0", "written while B hangs")], timeout=2.0)  # the client gives up
    finally:
        os.kill(b.pid, signal.SIGCONT)
    assert "z0" in live(digest(a.grpc))  # A applied it
    # B missed it: the router noticed and repairs it (no client action, no periodic pass configured)
    wait_until(lambda: "z0" in live(digest(b.grpc)), seconds=120, what="repair of B")
    assert digest(a.grpc) == digest(b.grpc)
