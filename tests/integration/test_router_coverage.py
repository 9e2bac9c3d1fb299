"""Router fan-out with one shard dead: partial results flagged in coverage, deadline honoured;
no shard at all -> UNAVAILABLE. Real shard server and router, in process on ephemeral ports."""

from __future__ import annotations

import socket
import time

import grpc
import pytest

from ragcluster.convert import document_to_pb
from ragcluster.corpus import make_documents
from ragcluster.v1 import common_pb2, router_pb2, router_pb2_grpc
from router.__main__ import build_server as build_router
from router.config import RouterConfig
from router.service import RouterServicer
from shard_server.__main__ import build_server as build_shard
from shard_server.config import ShardConfig


def _dead_address() -> str:
    """An address nobody listens on (bound, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
async def half_cluster(tmp_path_factory, embedder):
    shard = build_shard(ShardConfig(port=0, metrics_port=-1, data_dir=str(tmp_path_factory.mktemp("s0"))))
    await shard.start()
    dead = _dead_address()
    router = build_router(RouterConfig(port=0, metrics_port=-1, shard=[f"0={shard.address}", f"1={dead}"],
                                       timeout_seconds=5.0))
    router.servicer(RouterServicer).embedder = embedder  # share the session's model instead of loading another
    await router.start()
    channel = grpc.aio.insecure_channel(router.address)
    stub = router_pb2_grpc.RouterServiceStub(channel)
    yield stub, shard, dead
    await channel.close()
    await router.stop(grace=1)
    await shard.stop(grace=1)


async def test_partial_results_are_flagged(half_cluster):
    stub, _shard, _dead = half_cluster
    from ragcluster.hashing import shard_for

    docs = [d for d in make_documents(60, seed=3) if shard_for(d.id, 2) == 0]
    acks = [r async for r in stub.Ingest(iter([router_pb2.IngestRequest(documents=[document_to_pb(d) for d in docs])]))]
    assert acks[0].acknowledged == len(docs)
    start = time.monotonic()
    response = await stub.Search(router_pb2.SearchRequest(text="the river feeds the valley", k=5), timeout=10)
    assert time.monotonic() - start < 5
    cov = response.coverage
    assert (cov.shards_total, cov.shards_answered, cov.degraded) == (2, 1, True)
    assert cov.documents_searched == len(docs)
    assert [(f.shard, f.reason) for f in cov.failures] == [(1, common_pb2.SHARD_FAILURE_REASON_UNAVAILABLE)]
    assert len(response.hits) == 5 and all(h.shard == 0 for h in response.hits)


async def test_write_to_a_dead_shard_is_not_acknowledged(half_cluster):
    stub, _, _ = half_cluster
    from ragcluster.hashing import shard_for

    doc = next(d for d in make_documents(20, seed=4, prefix="w") if shard_for(d.id, 2) == 1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        [r async for r in stub.Ingest(iter([router_pb2.IngestRequest(documents=[document_to_pb(doc)])]), timeout=10)]
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "shard 1" in (err.value.details() or "")


async def test_deadline_is_honoured(half_cluster):
    stub, _, _ = half_cluster
    start = time.monotonic()
    try:
        await stub.Search(router_pb2.SearchRequest(text="winter crops", k=3), timeout=0.5)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 1.5


async def test_no_shard_answering_is_unavailable(embedder):
    router = build_router(RouterConfig(port=0, metrics_port=-1, shard=[f"0={_dead_address()}"], timeout_seconds=3.0))
    router.servicer(RouterServicer).embedder = embedder
    await router.start()
    async with grpc.aio.insecure_channel(router.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Search(router_pb2.SearchRequest(text="anything", k=3), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "no shard answered" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            [e async for e in stub.Ask(router_pb2.AskRequest(question="anything"), timeout=10)]
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    await router.stop(grace=1)


async def test_no_shard_answering_in_time_is_deadline_exceeded(tmp_path, embedder):
    """A shard that hangs (SIGSTOP): its calls run out of the request's budget (the router's --timeout-seconds;
    the client sets no deadline): DEADLINE_EXCEEDED, not UNAVAILABLE (found by tests/integration/test_fuzz.py)."""
    import signal

    from tests.helpers import shard_process

    shard = shard_process(tmp_path, 0, 0).wait_ready(120)
    router = build_router(RouterConfig(port=0, metrics_port=-1, shard=[f"0={shard.grpc}"], timeout_seconds=1.0))
    router.servicer(RouterServicer).embedder = embedder
    await router.start()
    try:
        async with grpc.aio.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            await stub.Search(router_pb2.SearchRequest(text="anything", k=3))  # the shard answers
            shard.proc.send_signal(signal.SIGSTOP)
            try:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Search(router_pb2.SearchRequest(text="anything", k=3))
            finally:
                shard.proc.send_signal(signal.SIGCONT)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.value.details()
            assert "no shard answered within the request's deadline" in (err.value.details() or "")
    finally:
        await router.stop(grace=1)
        shard.terminate()


async def test_dns_names_expand_to_replicas(half_cluster, embedder):
    _, shard, _ = half_cluster
    port = shard.address.rsplit(":", 1)[1]
    router = build_router(RouterConfig(port=0, metrics_port=-1, shard=[f"0=dns:///localhost:{port}"]))
    router.servicer(RouterServicer).embedder = embedder
    await router.start()
    group = router.servicer(RouterServicer).groups[0]
    assert f"127.0.0.1:{port}" in [r.address for r in group.replicas]  # resolved through DNS
    async with grpc.aio.insecure_channel(router.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        response = await stub.Search(router_pb2.SearchRequest(text="the river feeds the valley", k=3), timeout=10)
        assert len(response.hits) == 3 and response.coverage.shards_answered == 1
    await router.stop(grace=1)
