"""An L2 cluster (two real shard servers with --metric l2, a real router) returns exactly what brute force
over the whole corpus returns: the nearest documents, in increasing distance (issue 16, item 5)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from ragcluster.convert import document_to_pb
from ragcluster.corpus import make_documents, make_queries
from ragcluster.v1 import router_pb2, router_pb2_grpc
from router.__main__ import build_server as build_router
from router.config import RouterConfig
from router.service import RouterServicer, embedding_text
from shard_server.__main__ import build_server as build_shard
from shard_server.config import ShardConfig


@pytest.fixture(scope="module")
async def l2_cluster(tmp_path_factory, embedder):
    shards = [build_shard(ShardConfig(port=0, metrics_port=-1, metric="l2", checkpoint_interval_seconds=0,
                                      data_dir=str(tmp_path_factory.mktemp(f"l2s{i}")))) for i in range(2)]
    for shard in shards:
        await shard.start()
    router = build_router(RouterConfig(port=0, metrics_port=-1, timeout_seconds=10.0,
                                       shard=[f"{i}={s.address}" for i, s in enumerate(shards)]))
    router.servicer(RouterServicer).embedder = embedder
    await router.start()
    channel = grpc.aio.insecure_channel(router.address)
    yield router_pb2_grpc.RouterServiceStub(channel)
    await channel.close()
    await router.stop(grace=1)
    for shard in shards:
        await shard.stop(grace=1)


async def test_l2_cluster_equals_brute_force(l2_cluster, embedder):
    stub = l2_cluster
    docs = make_documents(200, seed=51, prefix="l2")
    # one Ingest message = one encode call over the same texts as below: bit-identical vectors
    acks = [a async for a in stub.Ingest(iter([router_pb2.IngestRequest(documents=[document_to_pb(d) for d in docs])]))]
    assert acks[-1].total_acknowledged == len(docs)
    corpus = embedder.encode([embedding_text(d.title, d.text) for d in docs])
    queries = embedder.encode(make_queries(12, seed=52))
    k = 10
    for q in queries:
        distances = ((corpus - q) ** 2).sum(axis=1)
        expected = np.argsort(distances, kind="stable")[:k]
        response = await stub.Search(router_pb2.SearchRequest(vector=router_pb2.Vector(values=q.tolist()), k=k),
                                     timeout=10)
        assert [h.document.id for h in response.hits] == [docs[i].id for i in expected]
        scores = [h.score for h in response.hits]
        assert scores == sorted(scores)  # increasing distance
        np.testing.assert_allclose(scores, distances[expected], rtol=1e-4, atol=1e-5)
