"""The exact fallback of a filtered approximate search streams the matching vectors in blocks (issue 16,
item 9): its memory stays bounded by the block size, not by the number of matches, and its answer equals
exact search over the matching vectors, for inner product and L2."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from ragcluster.documents import Document
from shard_server.config import ShardOptions
from shard_server.shard import Shard

DIM = 64
N = 40_000


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_exact_fallback_is_exact_and_bounded(tmp_path, metric):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, DIM)).astype(np.float32)
    shard = Shard(ShardOptions(str(tmp_path), dim=DIM, metric=metric))
    for start in range(0, N, 4096):
        n = min(4096, N - start)
        shard.upsert([Document(f"d{start + i}", "", metadata={"g": 1}) for i in range(n)], x[start:start + n])
    allowed = np.sort(shard.store.filter_iids([("key = ?", ["g"])]))[: N - 5]  # nearly everything matches
    queries = shard.index.prepare(rng.standard_normal((3, DIM)).astype(np.float32))
    k = 10
    out_ids = [np.zeros(0, np.int64) for _ in queries]  # the approximate index "found nothing"
    out_scores = [np.zeros(0, np.float32) for _ in queries]
    matrix_bytes = len(allowed) * DIM * 4
    shard.exact_filter_block = 1024  # 1/40 of the matches per block
    tracemalloc.start()
    try:
        shard._exact_fallback(queries, k, allowed, out_ids, out_scores)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < matrix_bytes / 4, f"fallback peaked at {peak} bytes; all matches take {matrix_bytes}"

    iids, vectors = shard.store.vectors_for(allowed)
    vectors = shard.index.prepare(vectors)
    for q, query in enumerate(queries):
        if metric == "ip":
            scores = vectors @ query
            order = np.argsort(-scores, kind="stable")[:k]
        else:
            scores = ((vectors - query) ** 2).sum(axis=1)
            order = np.argsort(scores, kind="stable")[:k]
        assert out_ids[q].tolist() == iids[order].tolist()
        np.testing.assert_allclose(out_scores[q], scores[order], rtol=1e-5, atol=1e-5)
    shard.close(checkpoint=False)
