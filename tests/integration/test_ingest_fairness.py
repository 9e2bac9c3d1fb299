"""Admission and ingest fairness (issue 16, item 10): an idle Ingest stream is closed after
--ingest-idle-timeout-seconds (DEADLINE_EXCEEDED) and gives its admission slot back, and what it sent
before going idle is acknowledged. Real shard server and router on ephemeral ports."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from ragcluster.convert import document_to_pb
from ragcluster.corpus import make_documents
from ragcluster.v1 import router_pb2, router_pb2_grpc
from router.__main__ import build_server as build_router
from router.config import RouterConfig
from router.service import RouterServicer
from shard_server.__main__ import build_server as build_shard
from shard_server.config import ShardConfig


@pytest.fixture(scope="module")
async def one_slot_router(tmp_path_factory, embedder):
    shard = build_shard(ShardConfig(port=0, metrics_port=-1, checkpoint_interval_seconds=0,
                                    data_dir=str(tmp_path_factory.mktemp("fair"))))
    await shard.start()
    router = build_router(RouterConfig(port=0, metrics_port=-1, timeout_seconds=10.0, max_in_flight=1,
                                       ingest_idle_timeout_seconds=1.0, shard=[f"0={shard.address}"]))
    router.servicer(RouterServicer).embedder = embedder
    await router.start()
    channel = grpc.aio.insecure_channel(router.address)
    yield router_pb2_grpc.RouterServiceStub(channel), router.servicer(RouterServicer)
    await channel.close()
    await router.stop(grace=1)
    await shard.stop(grace=1)


async def test_idle_ingest_stream_is_closed_and_frees_its_slot(one_slot_router):
    stub, servicer = one_slot_router
    never = asyncio.Event()
    docs = make_documents(5, seed=61, prefix="idle")

    async def one_batch_then_silence():
        yield router_pb2.IngestRequest(documents=[document_to_pb(d) for d in docs])
        await never.wait()  # the client keeps the stream open and sends nothing more

    call = stub.Ingest(one_batch_then_silence(), timeout=60)
    acks = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for ack in call:
            acks.append(ack.acknowledged)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "no message for 1 s" in (err.value.details() or "")
    assert acks == [5]  # what was sent before the silence is durable and acknowledged
    never.set()
    assert servicer.in_flight == 0
    response = await stub.Search(router_pb2.SearchRequest(text="anything", k=3), timeout=10)  # the slot is free
    assert response.coverage.shards_answered == 1
