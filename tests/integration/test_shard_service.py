"""ShardService over gRPC, in process on an ephemeral port: real FAISS, real SQLite."""

from __future__ import annotations

import asyncio
import os
import platform
import threading

import grpc
import numpy as np
import pytest

from ragcluster.convert import matrix_to_pb
from ragcluster.v1 import common_pb2, shard_pb2, shard_pb2_grpc
from ragcluster.workers import limit_malloc_arenas
from shard_server.__main__ import build_server
from shard_server.config import ShardConfig
from shard_server.service import ShardServicer

DIM = 8


def _vecs(n, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _upsert_request(ids, x):
    return shard_pb2.UpsertRequest(documents=[
        shard_pb2.DocumentVector(document=common_pb2.Document(id=i, text=f"text of {i}", metadata={
            "n": common_pb2.MetadataValue(int_value=n)}), vector=v.tolist())
        for n, (i, v) in enumerate(zip(ids, x))
    ], embedding_model="test-model")


async def _start(data_dir, **kw):
    server = build_server(ShardConfig(port=0, metrics_port=-1, data_dir=str(data_dir), dim=DIM, shard_id=4, **kw))
    await server.start()
    channel = grpc.aio.insecure_channel(server.address)
    return server, channel, shard_pb2_grpc.ShardServiceStub(channel)


async def test_upsert_search_fetch_delete_and_restart(tmp_path):
    server, channel, stub = await _start(tmp_path)
    x = _vecs(40)
    ids = [f"doc-{i}" for i in range(40)]
    acks = [r async for r in stub.Upsert(iter([_upsert_request(ids[:20], x[:20]), _upsert_request(ids[20:], x[20:])]))]
    assert [a.upserted for a in acks] == [20, 20] and [a.sequence for a in acks] == [1, 2]
    response = await stub.Search(shard_pb2.ShardSearchRequest(queries=matrix_to_pb(x[:5]), k=3, include_documents=True))
    assert response.shard == 4 and response.vectors_searched == 40 and len(response.results) == 5
    for q, top in enumerate(response.results):
        assert response.documents[top.ids[0]].id == ids[q]  # batch search: each query finds itself first
        assert list(top.scores) == sorted(top.scores, reverse=True)
        assert response.documents[top.ids[0]].metadata["n"].int_value == q
    fetched = await stub.Fetch(shard_pb2.FetchRequest(ids=["doc-3", "nope", "doc-1"]))
    assert [d.id for d in fetched.documents] == ["doc-3", "doc-1"]
    deleted = await stub.Delete(shard_pb2.ShardDeleteRequest(ids=["doc-0", "doc-1", "nope"]))
    assert deleted.deleted == 2 and deleted.sequence == 3
    info = await stub.Info(shard_pb2.ShardInfoRequest())
    assert (info.documents, info.dim, info.metric, info.index_factory, info.embedding_model, info.sequence) == (
        38, DIM, common_pb2.METRIC_INNER_PRODUCT, "Flat", "test-model", 3)
    before = await stub.Search(shard_pb2.ShardSearchRequest(queries=matrix_to_pb(x), k=5))
    await channel.close()
    await server.stop(grace=1)

    server, channel, stub = await _start(tmp_path)  # reopen: everything acknowledged is there
    after = await stub.Search(shard_pb2.ShardSearchRequest(queries=matrix_to_pb(x), k=5))
    assert [list(r.ids) for r in after.results] == [list(r.ids) for r in before.results]
    info = await stub.Info(shard_pb2.ShardInfoRequest())
    assert info.documents == 38 and info.sequence == 3 and info.embedding_model == "test-model"
    await channel.close()
    await server.stop(grace=1)


@pytest.mark.parametrize("make_request,field", [
    (lambda x: shard_pb2.ShardSearchRequest(queries=matrix_to_pb(x[:, :4]), k=3), "dimension 8"),
    (lambda x: shard_pb2.ShardSearchRequest(queries=matrix_to_pb(x), k=0), "k:"),
    (lambda x: shard_pb2.ShardSearchRequest(queries=matrix_to_pb(x), k=100000), "k:"),
    (lambda x: shard_pb2.ShardSearchRequest(queries=matrix_to_pb(np.full_like(x, np.nan)), k=3), "NaN"),
    (lambda x: shard_pb2.ShardSearchRequest(k=3), "queries"),
    (lambda x: shard_pb2.ShardSearchRequest(queries=common_pb2.FloatMatrix(rows=2, cols=8, data=b"123"), k=3),
     "queries: data holds 3 bytes"),
    (lambda x: shard_pb2.ShardSearchRequest(queries=matrix_to_pb(x), k=3, params=common_pb2.SearchParams(nprobe=0)),
     "nprobe"),
])
async def test_bad_search_input_is_invalid_argument(tmp_path, make_request, field):
    from prometheus_client import REGISTRY

    def rejected():
        labels = {"service": "ShardService", "method": "Search", "code": "INVALID_ARGUMENT"}
        return REGISTRY.get_sample_value("ragcluster_grpc_server_handled_total", labels) or 0

    server, channel, stub = await _start(tmp_path)
    try:
        x = _vecs(2)
        before = rejected()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Search(make_request(x))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (err.value.details() or "")
        assert rejected() == before + 1  # counted under its status code, before the client saw the status
        assert (await stub.Info(shard_pb2.ShardInfoRequest())).dim == DIM  # still serving
    finally:  # a failure must not leave this server's worker threads to the next test
        await channel.close()
        await server.stop(grace=1)


async def test_bad_upserts_are_invalid_argument_and_write_nothing(tmp_path):
    server, channel, stub = await _start(tmp_path)
    x = _vecs(3)
    bad_requests = [
        (_upsert_request(["a", "a"], x[:2]), "duplicate id"),
        (_upsert_request(["", "b"], x[:2]), "id: must not be empty"),
        (_upsert_request(["a"], x[:1, :4]), "dimension 8"),
        (_upsert_request(["a"], np.full((1, DIM), np.inf, np.float32)), "NaN or infinity"),
        (shard_pb2.UpsertRequest(), "empty batch"),
    ]
    for request, field in bad_requests:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.Upsert(iter([request])):
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Delete(shard_pb2.ShardDeleteRequest(ids=[]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = await stub.Info(shard_pb2.ShardInfoRequest())
    assert info.documents == 0 and info.sequence == 0
    # a good batch after the bad ones is accepted
    assert [r.upserted async for r in stub.Upsert(iter([_upsert_request(["ok"], x[:1])]))] == [1]
    await channel.close()
    await server.stop(grace=1)


async def test_model_mixing_is_refused(tmp_path):
    server, channel, stub = await _start(tmp_path)
    x = _vecs(2)
    [r async for r in stub.Upsert(iter([_upsert_request(["a"], x[:1])]))]
    other = _upsert_request(["b"], x[1:])
    other.embedding_model = "another-model"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        [r async for r in stub.Upsert(iter([other]))]
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "mixing models" in (err.value.details() or "")
    await channel.close()
    await server.stop(grace=1)


async def test_rebuild_retrains_on_demand(tmp_path):
    server, channel, stub = await _start(tmp_path, index_factory="IVF4,Flat")
    x = _vecs(60)
    ids = [f"doc-{i}" for i in range(60)]
    [r async for r in stub.Upsert(iter([_upsert_request(ids, x)]))]
    assert not (await stub.Info(shard_pb2.ShardInfoRequest())).trained  # too few vectors: exact search for now
    done = await stub.Rebuild(shard_pb2.RebuildRequest())
    assert done.documents == 60 and done.sequence == 1
    info = await stub.Info(shard_pb2.ShardInfoRequest())
    assert info.trained and info.documents == info.stored_documents == 60
    response = await stub.Search(shard_pb2.ShardSearchRequest(
        queries=matrix_to_pb(x[:3]), k=1, include_documents=True, params=common_pb2.SearchParams(nprobe=4)))
    assert [response.documents[r.ids[0]].id for r in response.results] == ids[:3]
    await channel.close()
    await server.stop(grace=1)


async def test_worker_threads_are_fixed_from_startup(tmp_path):
    """Issue 16's soak: threads that appeared under a steady load (asyncio's default executor starts one only when
    a task finds none idle), each with its own SQLite reader, made a shard's RSS creep up. Every thread that runs
    searches, writes and reads now exists from startup: a burst of three times more concurrent calls than
    workers starts none, and the store keeps at most one reader per worker and upkeep thread."""
    earlier = set(threading.enumerate())  # other tests' servers may still be winding down: not counted
    server, channel, stub = await _start(tmp_path, worker_threads=3, maintenance_threads=1)
    try:
        started = {t.name for t in threading.enumerate()}
        own = [t.name for t in set(threading.enumerate()) - earlier]
        assert sum(name.startswith("shard-worker") for name in own) == 3
        assert sum(name.startswith("maintenance") for name in own) == 1
        x = _vecs(30)
        ids = [f"doc-{i}" for i in range(30)]
        [ack] = [a async for a in stub.Upsert(iter([_upsert_request(ids, x)]))]
        assert ack.upserted == 30
        calls = [stub.Search(shard_pb2.ShardSearchRequest(queries=matrix_to_pb(x[i : i + 1]), k=5,
                                                          include_documents=True)) for i in range(5)]
        calls += [stub.Fetch(shard_pb2.FetchRequest(ids=ids[i : i + 3])) for i in range(0, 12, 3)]
        calls += [stub.Info(shard_pb2.ShardInfoRequest()) for _ in range(3)]
        answers = await asyncio.gather(*calls)  # 12 calls at once on 3 workers
        assert all(len(a.results) == 1 for a in answers[:5]) and all(len(a.documents) == 3 for a in answers[5:9])
        assert {t.name for t in threading.enumerate()} - started == set()  # no thread started under load
        shard = server.servicer(ShardServicer).shard
        assert len(shard.store._readers) <= 3 + 1
    finally:
        await channel.close()
        await server.stop(grace=1)


def test_malloc_arenas_can_be_capped():
    """--malloc-arena-max: glibc takes the cap (on this Linux build machine); 0 leaves the default alone."""
    assert limit_malloc_arenas(0) is False
    assert limit_malloc_arenas(8 * (os.cpu_count() or 1)) is (platform.libc_ver()[0] == "glibc")  # glibc's default
