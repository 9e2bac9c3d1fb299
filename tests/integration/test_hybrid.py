"""Lexical and hybrid search through a real router and real shard servers (in process, ephemeral ports):
3 shards rank exactly like one monolithic index (corpus-wide BM25 statistics), hybrid fuses the global
dense and lexical rankings, filters, coverage and bad input behave as in dense mode."""

from __future__ import annotations

import json
import random
import socket

import grpc
import pytest

from ragcluster.convert import document_to_pb, filter_to_pb, set_retrieval
from ragcluster.corpus import make_documents, sample_corpus_path
from ragcluster.documents import Document
from ragcluster.v1 import common_pb2, router_pb2, router_pb2_grpc
from router.__main__ import build_server as build_router
from router.config import RouterConfig
from router.service import RouterServicer
from shard_server.__main__ import build_server as build_shard
from shard_server.config import ShardConfig


def _corpus() -> list[Document]:
    """The sample corpus plus documents of Zipf-distributed pseudo-words (rare and common terms, varied
    lengths, no two documents alike: BM25 ties would make "the same ranking" ambiguous)."""
    with open(sample_corpus_path(), encoding="utf-8") as f:
        docs = [Document.from_json(json.loads(line)) for line in f]
    rng = random.Random(5)
    vocab = [f"w{n}x" for n in range(3000)]
    weights = [1.0 / (n + 1) for n in range(len(vocab))]
    for i in range(250):
        words = rng.choices(vocab, weights, k=rng.randint(10, 60))
        docs.append(Document(f"z{i}", " ".join(words), title=" ".join(rng.choices(vocab, weights, k=3)),
                             metadata={"topic": "random"}))
    return docs


def _queries(docs: list[Document]) -> list[str]:
    rng = random.Random(9)
    words = [w for d in docs for w in d.text.split()]
    return [d.title for d in docs if d.title][:40] + [" ".join(rng.sample(words, rng.randint(1, 6)))
                                                       for _ in range(60)]


def _dead_address() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"127.0.0.1:{port}"


class Cluster:
    def __init__(self, shards, router, extra_shards: int = 0):
        self.shards, self.router = shards, router
        self.channel = grpc.aio.insecure_channel(router.address)
        self.stub = router_pb2_grpc.RouterServiceStub(self.channel)

    async def search(self, text, k=10, mode="lexical", **kw) -> router_pb2.SearchResponse:
        request = router_pb2.SearchRequest(text=text, k=k)
        where = kw.pop("where", None)
        if where:
            request.filter.CopyFrom(filter_to_pb(where))
        set_retrieval(request, mode, **kw)
        return await self.stub.Search(request, timeout=30)

    async def close(self):
        await self.channel.close()
        await self.router.stop(grace=1)
        for s in self.shards:
            await s.stop(grace=1)


async def _cluster(tmp, n: int, embedder, docs, dead: int = 0, slow: dict[int, float] | None = None,
                   **router_kw) -> Cluster:
    shards = []
    for i in range(n):
        s = build_shard(ShardConfig(port=0, metrics_port=-1, shard_id=i, data_dir=str(tmp / f"n{n}-s{i}"),
                                    checkpoint_interval_seconds=0, search_delay_ms=(slow or {}).get(i, 0.0)))
        await s.start()
        shards.append(s)
    specs = [f"{i}={s.address}" for i, s in enumerate(shards)] + [f"{n + j}={_dead_address()}" for j in range(dead)]
    router = build_router(RouterConfig(port=0, metrics_port=-1, shard=specs, timeout_seconds=10.0, **router_kw))
    router.servicer(RouterServicer).embedder = embedder
    await router.start()
    cluster = Cluster(shards, router)
    if docs:
        batches = [router_pb2.IngestRequest(documents=[document_to_pb(d) for d in docs[i:i + 100]])
                   for i in range(0, len(docs), 100)]
        acks = [r async for r in cluster.stub.Ingest(iter(batches), timeout=900)]
        assert sum(a.acknowledged for a in acks) == len(docs)
    return cluster


@pytest.fixture(scope="module")
async def clusters(tmp_path_factory, embedder):
    docs = _corpus()
    tmp = tmp_path_factory.mktemp("hybrid")
    three = await _cluster(tmp, 3, embedder, docs)
    one = await _cluster(tmp, 1, embedder, docs)
    yield three, one, docs
    await three.close()
    await one.close()


def _hits(response):
    return [(h.document.id, h.score) for h in response.hits]


async def test_three_shards_rank_exactly_like_one_index(clusters):
    three, one, docs = clusters
    for text in _queries(docs):
        got, want = _hits(await three.search(text, k=10)), _hits(await one.search(text, k=10))
        assert [i for i, _ in got] == [i for i, _ in want], text
        assert [s for _, s in got] == pytest.approx([s for _, s in want], rel=1e-6), text
    response = await three.search("w7x w2500x", k=3)
    assert response.hits and response.mode == router_pb2.RETRIEVAL_MODE_LEXICAL
    assert all(h.lexical_rank == n and h.lexical_score == h.score and h.dense_rank == 0
               for n, h in enumerate(response.hits, 1))


def _rrf(dense, lexical, k, rrf_k=60):
    scores: dict[str, float] = {}
    for ranking in (dense, lexical):
        for rank, doc_id in enumerate(ranking, 1):
            scores[doc_id] = scores.get(doc_id, 0.0) + 1.0 / (rrf_k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])[:k]


async def test_hybrid_fuses_the_global_dense_and_lexical_rankings(clusters):
    three, _, docs = clusters
    for text in _queries(docs)[::10]:
        dense = [h.document.id for h in (await three.search(text, k=30, mode="dense")).hits]
        lexical = [h.document.id for h in (await three.search(text, k=30, mode="lexical")).hits]
        response = await three.search(text, k=10, mode="hybrid", window=30)
        assert response.mode == router_pb2.RETRIEVAL_MODE_HYBRID
        want = _rrf(dense, lexical, 10)
        got = [(h.document.id, h.fused_score) for h in response.hits]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], rel=1e-6), text
        for h in response.hits:  # every hit reports where each retriever ranked it
            assert h.score == h.fused_score
            assert h.dense_rank == (dense.index(h.document.id) + 1 if h.document.id in dense else 0)
            assert h.lexical_rank == (lexical.index(h.document.id) + 1 if h.document.id in lexical else 0)
            assert h.document.text  # documents beyond a shard's top-k were fetched
    text = "shard servers keep documents durably in a database"
    dense = [h.document.id for h in (await three.search(text, k=10, mode="dense")).hits]
    lexical = [h.document.id for h in (await three.search(text, k=10, mode="lexical")).hits]
    only_dense = await three.search(text, k=10, mode="hybrid", fusion="weighted", alpha=1.0, window=10)
    only_lexical = await three.search(text, k=10, mode="hybrid", fusion="weighted", alpha=0.0, window=10)
    assert [h.document.id for h in only_dense.hits][:5] == dense[:5]
    assert [h.document.id for h in only_lexical.hits][:5] == lexical[:5]
    assert only_dense.hits[0].fused_score == pytest.approx(1.0)


async def test_filters_and_bad_input_in_every_mode(clusters):
    three, _, _ = clusters
    for mode in ("dense", "lexical", "hybrid"):
        response = await three.search("shards and the router", k=5, mode=mode,
                                      where=[{"field": "topic", "equals": "ragcluster"}])
        assert response.hits and all(h.document.metadata["topic"].string_value == "ragcluster"
                                     for h in response.hits), mode
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await three.search("x", k=5, mode=mode, where=[{"field": "no_such_field", "equals": 1}])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no_such_field" in (err.value.details() or "")
    request = router_pb2.SearchRequest(vector=router_pb2.Vector(values=[0.1] * 384), k=3,
                                       mode=router_pb2.RETRIEVAL_MODE_LEXICAL)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await three.stub.Search(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and (err.value.details() or "").startswith("text:")
    for kw, field in ((dict(alpha=1.5), "fusion.alpha"), (dict(window=5000), "fusion.window")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await three.search("router", mode="hybrid", **kw)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and (err.value.details() or "").startswith(field)
    # a query whose words are all stop words or unknown finds nothing lexically, and that is not an error
    assert not (await three.search("the of and", mode="lexical")).hits


async def test_dead_shard_is_reported_in_coverage_in_every_mode(tmp_path, embedder):
    from ragcluster.hashing import shard_for

    docs = [d for d in make_documents(80, seed=21) if shard_for(d.id, 2) == 0]
    assert len(docs) > 10
    cluster = await _cluster(tmp_path, 1, embedder, [], dead=1)
    try:
        batch = router_pb2.IngestRequest(documents=[document_to_pb(d) for d in docs])
        acks = [a async for a in cluster.stub.Ingest(iter([batch]), timeout=60)]
        assert acks[0].acknowledged == len(docs)
        from prometheus_client import REGISTRY

        def counts():
            return [REGISTRY.get_sample_value(name, labels) or 0.0 for name, labels in (
                ("ragcluster_router_shard_searches_total", {"shard": "0"}),
                ("ragcluster_router_shard_searches_total", {"shard": "1"}),
                ("ragcluster_router_shard_misses_total", {"shard": "1", "reason": "unavailable"}))]

        for mode in ("lexical", "hybrid"):
            before = counts()
            response = await cluster.search("the river feeds the valley", k=5, mode=mode)
            # one search per shard (the statistics phase is not counted twice); the dead shard missed it
            assert [a - b for a, b in zip(counts(), before)] == [1, 1, 1], mode
            cov = response.coverage
            assert (cov.shards_total, cov.shards_answered, cov.degraded) == (2, 1, True), mode
            assert [(f.shard, f.reason) for f in cov.failures] == [(1, common_pb2.SHARD_FAILURE_REASON_UNAVAILABLE)]
            assert cov.documents_searched == len(docs) and len(response.hits) == 5
            request = router_pb2.SearchRequest(text="river", k=5, min_coverage=1.0)
            set_retrieval(request, mode)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await cluster.stub.Search(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await cluster.close()


async def test_router_default_mode_applies_to_requests_that_leave_it_unset(tmp_path, embedder):
    docs = make_documents(40, seed=2)
    cluster = await _cluster(tmp_path, 2, embedder, docs, search_mode="hybrid", rrf_k=10)
    try:
        response = await cluster.stub.Search(router_pb2.SearchRequest(text="the river", k=5), timeout=30)
        assert response.mode == router_pb2.RETRIEVAL_MODE_HYBRID
        top = response.hits[0]
        assert top.fused_score == pytest.approx(sum(1 / (10 + r) for r in (top.dense_rank, top.lexical_rank) if r))
        dense = await cluster.search("the river", k=5, mode="dense")
        assert dense.mode == router_pb2.RETRIEVAL_MODE_DENSE and dense.hits[0].fused_score == 0
    finally:
        await cluster.close()


async def test_a_slow_shard_becomes_a_timeout_in_every_mode_within_the_deadline(tmp_path, embedder):
    import time

    docs = make_documents(60, seed=8)
    cluster = await _cluster(tmp_path, 2, embedder, docs, slow={1: 8000.0}, deadline_margin_ms=500.0)
    try:
        for mode in ("dense", "lexical", "hybrid"):
            request = router_pb2.SearchRequest(text="the river", k=5)
            set_retrieval(request, mode)
            start = time.monotonic()
            response = await cluster.stub.Search(request, timeout=3.0)
            assert time.monotonic() - start < 3.0, mode  # an answer, not DEADLINE_EXCEEDED
            cov = response.coverage
            assert (cov.shards_answered, cov.degraded) == (1, True), mode
            assert [(f.shard, f.reason) for f in cov.failures] == [(1, common_pb2.SHARD_FAILURE_REASON_TIMEOUT)]
            assert response.hits and all(h.shard == 0 for h in response.hits)
    finally:
        await cluster.close()
