"""Maintenance never starves searches (issue 16, item 7): rebuilds run on the shard's own bounded
maintenance pool, so even many rebuilds stuck at once leave the search threads free. A real shard server
in process; the rebuild is held on an event so the test does not depend on timing."""

from __future__ import annotations

import asyncio
import threading

import grpc
import numpy as np
import pytest

from ragcluster.convert import document_to_pb, matrix_to_pb
from ragcluster.documents import Document
from ragcluster.v1 import shard_pb2, shard_pb2_grpc
from shard_server.__main__ import build_server as build_shard
from shard_server.config import ShardConfig

DIM = 16


@pytest.fixture
async def shard_server(tmp_path):
    server = build_shard(ShardConfig(port=0, metrics_port=-1, dim=DIM, checkpoint_interval_seconds=0,
                                     data_dir=str(tmp_path)))
    await server.start()
    channel = grpc.aio.insecure_channel(server.address)
    yield server, shard_pb2_grpc.ShardServiceStub(channel)
    await channel.close()
    await server.stop(grace=1)


async def test_stuck_rebuilds_do_not_starve_searches(shard_server):
    server, stub = shard_server
    x = np.random.default_rng(0).standard_normal((50, DIM)).astype(np.float32)
    batch = shard_pb2.UpsertRequest(documents=[
        shard_pb2.DocumentVector(document=document_to_pb(Document(f"d{i}", f"text {i}")), vector=x[i].tolist())
        for i in range(50)])
    assert [r.upserted async for r in stub.Upsert(iter([batch]))] == [50]
    shard = server.services[0].servicer.shard
    release = threading.Event()
    real_rebuild = shard.rebuild

    def slow_rebuild(train: bool = False) -> float:
        assert release.wait(120)  # a rebuild that takes "forever"
        return real_rebuild(train)

    shard.rebuild = slow_rebuild
    rebuilds = [asyncio.ensure_future(stub.Rebuild(shard_pb2.RebuildRequest(), timeout=120)) for _ in range(40)]
    try:
        await asyncio.sleep(0)  # let the calls go out (no synchronisation relies on it)
        request = shard_pb2.ShardSearchRequest(queries=matrix_to_pb(x[:3]), k=5, include_documents=True)
        for _ in range(20):  # far more than the maintenance pool has threads
            response = await stub.Search(request, timeout=10)
            assert [r.ids[0] for r in response.results] == [1, 2, 3]
    finally:
        release.set()
        done = await asyncio.gather(*rebuilds, return_exceptions=True)
    assert all(isinstance(d, shard_pb2.RebuildResponse) for d in done), done[:3]
