"""DNS discovery of shard replicas (issue 16, item 8): names are resolved off the event loop, a failed
lookup keeps the last good addresses (a DNS outage drops no replica), and replicas that leave get their
watch stopped and their channel closed. Real shard servers in process; the DNS answers are scripted."""

from __future__ import annotations

import asyncio
import socket
import threading

import grpc
import numpy as np
import pytest

from ragcluster.convert import document_to_pb, matrix_to_pb
from ragcluster.documents import Document
from ragcluster.v1 import shard_pb2, shard_pb2_grpc
from router.discovery import Resolver
from router.replicas import ShardGroup
from shard_server.__main__ import build_server as build_shard
from shard_server.config import ShardConfig

DIM = 8


class ScriptedDns:
    """getaddrinfo stand-in: every name is 127.0.0.1 until ``failing`` is set (then gaierror)."""

    def __init__(self):
        self.failing = False
        self.calls = 0

    def __call__(self, host: str, port: int) -> list[tuple]:
        self.calls += 1
        if self.failing:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]


async def test_lookup_runs_off_the_event_loop():
    entered, release = threading.Event(), threading.Event()
    loop_thread = threading.get_ident()

    def blocking_lookup(host: str, port: int) -> list[tuple]:
        assert threading.get_ident() != loop_thread
        entered.set()
        assert release.wait(30)  # would deadlock the loop (and time out) if called on it
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    resolver = Resolver(blocking_lookup, timeout=60)
    task = asyncio.create_task(resolver.resolve("dns:///shards:7001"))
    assert await asyncio.to_thread(entered.wait, 30)  # the loop runs while the lookup blocks
    release.set()
    assert await task == ["127.0.0.1:7001"]


async def test_failed_lookup_keeps_last_good_addresses():
    dns = ScriptedDns()
    resolver = Resolver(dns)
    assert await resolver.resolve("dns:///shards:7001") == ["127.0.0.1:7001"]
    dns.failing = True
    assert await resolver.resolve("dns:///shards:7001") == ["127.0.0.1:7001"]
    assert await resolver.resolve("dns:///never-resolved:7001") == []
    assert await resolver.resolve("127.0.0.1:7002") == ["127.0.0.1:7002"]  # not a name: as is


@pytest.fixture
async def two_replicas(tmp_path):
    servers = [build_shard(ShardConfig(port=0, metrics_port=-1, dim=DIM, checkpoint_interval_seconds=0,
                                       data_dir=str(tmp_path / f"r{i}"))) for i in range(2)]
    for s in servers:
        await s.start()
    x = np.random.default_rng(0).standard_normal((20, DIM)).astype(np.float32)
    batch = shard_pb2.UpsertRequest(documents=[
        shard_pb2.DocumentVector(document=document_to_pb(Document(f"d{i}", "t")), vector=x[i].tolist())
        for i in range(20)])
    for s in servers:  # identical data on both
        async with grpc.aio.insecure_channel(s.address) as channel:
            stub = shard_pb2_grpc.ShardServiceStub(channel)
            assert [r.upserted async for r in stub.Upsert(iter([batch]))] == [20]
    yield servers, x
    for s in servers:
        await s.stop(grace=1)


async def test_dns_outage_keeps_replicas_and_leavers_are_closed(two_replicas):
    servers, x = two_replicas
    ports = [s.address.rsplit(":", 1)[1] for s in servers]
    dns = ScriptedDns()
    group = ShardGroup(0, [f"dns:///shard-0-a:{ports[0]}", f"dns:///shard-0-b:{ports[1]}"],
                       resolver=Resolver(dns))
    await group.start(refresh_seconds=3600)
    try:
        assert sorted(r.address for r in group.replicas) == sorted(s.address for s in servers)
        request = shard_pb2.ShardSearchRequest(queries=matrix_to_pb(x[:1]), k=3)
        assert (await group.search(request, 10)).results[0].ids[0] == 1

        dns.failing = True  # DNS outage: nothing is dropped
        await group.refresh()
        assert sorted(r.address for r in group.replicas) == sorted(s.address for s in servers)
        assert len(group.readable()) == 2
        assert (await group.search(request, 10)).results[0].ids[0] == 1

        dns.failing = False  # replica b leaves: its watch stops and its channel is closed
        leaver = next(r for r in group.replicas if r.address.endswith(":" + ports[1]))
        closed = []
        real_close = leaver.channel.close

        async def spy_close(grace=None):
            closed.append(grace)
            await real_close(grace)

        leaver.channel.close = spy_close  # type: ignore[method-assign]  # spy on the channel's close
        group.specs = group.specs[:1]
        await group.refresh()
        assert [r.address for r in group.replicas] == [servers[0].address]
        assert closed, "the channel of a replica that left DNS was not closed"
        assert (await group.search(request, 10)).results[0].ids[0] == 1
    finally:
        await group.close()
