"""Request-specific errors never eject healthy replicas (issue 16, item 4): an answer too large for the
message limit is refused with INVALID_ARGUMENT naming k, it does not count as a replica failure, and the
replicas keep serving the next (normal) search. Real shard servers and router on ephemeral ports."""

from __future__ import annotations

import grpc
import pytest

from ragcluster.convert import document_to_pb
from ragcluster.documents import Document
from ragcluster.v1 import router_pb2, router_pb2_grpc
from router import metrics
from router.__main__ import build_server as build_router
from router.config import RouterConfig
from router.service import RouterServicer
from shard_server.__main__ import build_server as build_shard
from shard_server.config import ShardConfig

LIMIT = 256 * 1024


@pytest.fixture(scope="module")
async def small_limit_cluster(tmp_path_factory, embedder):
    replicas = [build_shard(ShardConfig(port=0, metrics_port=-1, checkpoint_interval_seconds=0, max_message_bytes=LIMIT,
                                        data_dir=str(tmp_path_factory.mktemp(f"lim{i}")))) for i in range(2)]
    for r in replicas:
        await r.start()
    router = build_router(RouterConfig(port=0, metrics_port=-1, timeout_seconds=10.0, eject_after=2,
                                       eject_seconds=120.0, hedge_delay_ms=-1,
                                       shard=[f"0={replicas[0].address},{replicas[1].address}"]))
    servicer = router.servicer(RouterServicer)
    servicer.embedder = embedder
    await router.start()
    channel = grpc.aio.insecure_channel(router.address)
    yield router_pb2_grpc.RouterServiceStub(channel), servicer
    await channel.close()
    await router.stop(grace=1)
    for r in replicas:
        await r.stop(grace=1)


def ejections() -> float:
    return metrics.EJECTIONS.labels(0)._value.get()


async def test_oversized_answers_are_invalid_argument_and_eject_nothing(small_limit_cluster):
    stub, servicer = small_limit_cluster
    big = [Document(f"big{i}", f"passage {i} about rivers and valleys. " + "x" * 60_000) for i in range(8)]
    batches = [router_pb2.IngestRequest(documents=[document_to_pb(d) for d in big[i:i + 2]]) for i in range(0, 8, 2)]
    acks = [a async for a in stub.Ingest(iter(batches))]  # small batches: each fits the shards' limit
    assert acks[-1].total_acknowledged == len(big)
    before = ejections()
    for _ in range(6):  # three times eject_after on each replica, if these counted
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Search(router_pb2.SearchRequest(text="rivers and valleys", k=8), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "k:" in (err.value.details() or "") and "message limit" in (err.value.details() or "")
    assert ejections() == before
    group = servicer.groups[0]
    assert all(r.ejected_until == 0 and r.consecutive_failures == 0 for r in group.replicas)
    for _ in range(4):  # both replicas still serve
        response = await stub.Search(router_pb2.SearchRequest(text="rivers and valleys", k=2), timeout=10)
        assert len(response.hits) == 2 and response.coverage.shards_answered == 1


async def test_documents_over_the_size_cap_are_refused(small_limit_cluster):
    stub, _ = small_limit_cluster
    huge = Document("huge", "y" * (600 * 1024))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        [a async for a in stub.Ingest(iter([router_pb2.IngestRequest(documents=[document_to_pb(huge)])]))]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "documents[0]" in (err.value.details() or "")
    # every field within its own limit (text < 512 KiB, metadata values < 8 KiB), together over the cap
    meta = Document("meta", "y" * (500 * 1024), metadata={f"k{i}": "z" * 8_000 for i in range(10)})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        [a async for a in stub.Ingest(iter([router_pb2.IngestRequest(documents=[document_to_pb(meta)])]))]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exceeds the maximum" in (err.value.details() or "")
