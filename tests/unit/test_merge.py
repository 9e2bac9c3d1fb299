import faiss
import numpy as np
import pytest

from router.merge import ShardTopK, merge_topk


def _split_search(xb, xq, k, n_chunks, metric):
    """Search each chunk with its own flat index, merge, and return (ids, scores) per query."""
    chunks = np.array_split(np.arange(len(xb)), n_chunks)
    per_query: list[list[ShardTopK]] = [[] for _ in range(len(xq))]
    for c, ids in enumerate(chunks):
        index = faiss.IndexIDMap2(faiss.IndexFlat(xb.shape[1], metric))
        index.add_with_ids(xb[ids], ids.astype(np.int64))
        scores, found = index.search(xq, k)
        for q in range(len(xq)):
            valid = found[q] >= 0
            per_query[q].append(ShardTopK(c, found[q][valid], scores[q][valid]))
    higher = metric == faiss.METRIC_INNER_PRODUCT
    return [merge_topk(parts, k, higher) for parts in per_query]


@pytest.mark.parametrize("metric", [faiss.METRIC_INNER_PRODUCT, faiss.METRIC_L2])
@pytest.mark.parametrize("n_chunks", [1, 3, 7])
def test_merge_equals_single_index(metric, n_chunks):
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((2000, 32)).astype(np.float32)
    xq = rng.standard_normal((50, 32)).astype(np.float32)
    k = 10
    single = faiss.IndexFlat(32, metric)
    single.add(xb)
    ref_scores, ref_ids = single.search(xq, k)
    merged = _split_search(xb, xq, k, n_chunks, metric)
    for q in range(len(xq)):
        assert [h.id for h in merged[q]] == ref_ids[q].tolist()
        np.testing.assert_allclose([h.score for h in merged[q]], ref_scores[q], rtol=1e-5, atol=1e-5)


def test_merge_keeps_best_for_metric_direction():
    parts = [ShardTopK(0, np.array([1, 2]), np.array([0.9, 0.1], np.float32)),
             ShardTopK(1, np.array([7]), np.array([0.5], np.float32))]
    assert [(h.shard, h.id) for h in merge_topk(parts, 2, True)] == [(0, 1), (1, 7)]
    assert [(h.shard, h.id) for h in merge_topk(parts, 2, False)] == [(0, 2), (1, 7)]


def test_merge_fewer_than_k_and_empty_parts():
    parts = [ShardTopK(0, np.array([], np.int64), np.array([], np.float32)),
             ShardTopK(2, np.array([4]), np.array([1.0], np.float32))]
    assert [(h.shard, h.id) for h in merge_topk(parts, 10)] == [(2, 4)]
    assert merge_topk([], 5) == []
    assert merge_topk(parts, 0) == []


def test_merge_ties_are_deterministic_by_shard_then_id():
    parts = [ShardTopK(1, np.array([5, 3]), np.array([0.5, 0.5], np.float32)),
             ShardTopK(0, np.array([9]), np.array([0.5], np.float32))]
    assert [(h.shard, h.id) for h in merge_topk(parts, 3)] == [(0, 9), (1, 3), (1, 5)]
