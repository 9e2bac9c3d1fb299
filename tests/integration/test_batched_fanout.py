"""Batched fan-out (router/replicas.py SearchBatcher): dense searches that reach the fan-out together go to
each shard as one ShardSearch call with a query row per search, and every search still gets exactly the
answer it gets alone (hits, scores, documents, coverage). Real shard processes, the real embedding model."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from ragcluster.client import RouterClient
from ragcluster.corpus import make_documents, make_queries
from ragcluster.v1 import router_pb2, router_pb2_grpc
from router import metrics
from router.config import RouterConfig
from tests.helpers import RouterInThread, shard_process


@pytest.fixture(scope="module")
def router(tmp_path_factory, embedder):
    run = tmp_path_factory.mktemp("batched")
    procs = [shard_process(run, s, 0) for s in range(2)]
    for p in procs:
        p.wait_ready(120)
    r = RouterInThread(RouterConfig(port=0, metrics_port=-1, timeout_seconds=20.0,
                                    shard=[f"{s}={p.grpc}" for s, p in enumerate(procs)]), embedder)
    with RouterClient(r.address) as client:
        assert client.ingest(make_documents(200, seed=61, prefix="b")).acknowledged == 200
    yield r
    r.stop()
    for p in procs:
        p.terminate(30)


def batch_histogram() -> tuple[float, float]:
    """(calls, searches) observed by ragcluster_router_shard_search_batch_size."""
    samples = {s.name: s.value for s in next(iter(metrics.SHARD_SEARCH_BATCH.collect())).samples}
    return samples["ragcluster_router_shard_search_batch_size_count"], \
        samples["ragcluster_router_shard_search_batch_size_sum"]


def run(router: RouterInThread, coro, timeout: float = 60):
    return asyncio.run_coroutine_threadsafe(coro, router.loop).result(timeout)


async def together(servicer, col, vectors, k: int) -> list:
    """Searches started in the same event-loop turn (as those resumed by one embedding batch are)."""
    return await asyncio.gather(*(servicer.retrieve(col, v.reshape(1, -1), k, None, 20.0) for v in vectors))


def summary(hits) -> list[tuple]:
    return [(h.document.id, h.document.text, h.shard) for h in hits]


def test_concurrent_searches_share_one_call_per_shard_and_keep_their_answers(router, embedder):
    servicer = router.servicer
    col = servicer.collections[servicer.active]
    vectors = embedder.encode(make_queries(20, seed=62))

    async def alone():
        return [await servicer.retrieve(col, v.reshape(1, -1), 5, None, 20.0) for v in vectors]

    expected = run(router, alone())
    calls, searches = batch_histogram()
    got = run(router, together(servicer, col, vectors, 5))
    calls_after, searches_after = batch_histogram()
    assert calls_after - calls == 1 and searches_after - searches == 20  # one call per shard carried all 20
    for (hits, coverage), (want, want_coverage) in zip(got, expected):
        assert len(hits) == 5
        assert summary(hits) == summary(want)
        # FAISS scores a batch with BLAS, a single query without: the same up to float rounding
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in want], rtol=1e-5, atol=1e-6)
        assert coverage == want_coverage and coverage.shards_answered == 2


def test_batches_are_capped_at_fanout_max_batch(router, embedder):
    servicer = router.servicer
    col = servicer.collections[servicer.active]
    vectors = embedder.encode(make_queries(10, seed=63))
    saved, servicer.search_batcher.max_rows = servicer.search_batcher.max_rows, 4
    try:
        calls, searches = batch_histogram()
        got = run(router, together(servicer, col, vectors, 3))
        calls_after, searches_after = batch_histogram()
    finally:
        servicer.search_batcher.max_rows = saved
    assert (calls_after - calls, searches_after - searches) == (3, 10)  # 4 + 4 + 2
    assert all(len(hits) == 3 for hits, _ in got)


def test_text_searches_through_grpc_under_concurrency_match_sequential(router):
    queries = make_queries(32, seed=64)
    with grpc.insecure_channel(router.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)

        def search(text: str) -> router_pb2.SearchResponse:
            return stub.Search(router_pb2.SearchRequest(text=text, k=5), timeout=60)

        sequential = [search(q) for q in queries]
        calls, searches = batch_histogram()
        with ThreadPoolExecutor(32) as pool:
            concurrent = list(pool.map(search, queries))
    calls_after, searches_after = batch_histogram()
    assert searches_after - searches == 32
    assert calls_after - calls <= 32  # never more calls than searches (fewer when they were embedded together)
    for got, want in zip(concurrent, sequential):
        assert [h.document.id for h in got.hits] == [h.document.id for h in want.hits]
        # a query embedded in a batch may differ from itself embedded alone in the last float bits
        np.testing.assert_allclose([h.score for h in got.hits], [h.score for h in want.hits], atol=1e-4)
        assert got.coverage.shards_answered == 2 and not got.coverage.degraded
