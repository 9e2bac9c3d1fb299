"""Router-side hybrid logic: summing shard term statistics, RRF and weighted fusion (pure)."""

import pytest

from ragcluster.errors import FailedPrecondition
from router.fusion import ShardTermStats, combine_term_stats, rrf, single, weighted
from router.merge import MergedHit


def hits(*pairs, shard=0):
    return [MergedHit(shard, i, s) for i, s in pairs]


def test_term_statistics_are_summed_over_shards():
    a = ShardTermStats(0, ["appl", "pie"], [2, 1], [3, 0], 10, 100, "cfg")
    b = ShardTermStats(1, ["appl", "pie"], [2, 1], [1, 4], 20, 300, "cfg")
    total = combine_term_stats([a, b])
    assert (total.terms, total.counts, total.document_frequencies) == (["appl", "pie"], [2, 1], [4, 4])
    assert (total.documents, total.total_length) == (30, 400)
    with pytest.raises(FailedPrecondition, match="analyse text differently"):
        combine_term_stats([a, ShardTermStats(1, ["appl"], [2], [1], 5, 5, "other")])


def test_rrf_sums_reciprocal_ranks_and_reports_both_ranks():
    dense = hits((1, 0.9), (2, 0.8), (3, 0.7))
    lexical = hits((3, 12.0), (4, 11.0), (1, 3.0))
    fused = rrf(dense, lexical, 3, rrf_k=60)
    by_id = {h.id: h for h in fused}
    assert [h.id for h in fused] == [1, 3, 2]  # 1 and 3 tie (ranks 1 and 3 each): then by id
    assert by_id[1].fused_score == pytest.approx(1 / 61 + 1 / 63)
    assert (by_id[3].dense_rank, by_id[3].lexical_rank, by_id[3].lexical_score) == (3, 1, 12.0)
    assert by_id[2].lexical_rank == 0 and by_id[2].score == by_id[2].fused_score == pytest.approx(1 / 62)


def test_weighted_fusion_normalises_each_list():
    dense = hits((1, 0.9), (2, 0.5))
    lexical = hits((2, 20.0), (3, 10.0))
    fused = weighted(dense, lexical, 3, alpha=0.5)
    scores = {h.id: h.fused_score for h in fused}
    assert scores == pytest.approx({1: 0.5, 2: 0.5, 3: 0.0})
    assert [h.id for h in weighted(dense, lexical, 3, alpha=1.0)][:2] == [1, 2]
    assert [h.id for h in weighted(dense, lexical, 3, alpha=0.0)][:1] == [2]
    # L2 distances: smaller is better
    l2 = weighted(hits((1, 0.1), (2, 0.9)), [], 2, alpha=1.0, dense_higher_is_better=False)
    assert [h.id for h in l2] == [1, 2] and l2[0].fused_score == 1.0


def test_single_mode_fills_its_own_rank():
    out = single(hits((5, 2.0), (6, 1.0)), "lexical")
    assert [(h.lexical_rank, h.dense_rank, h.score) for h in out] == [(1, 0, 2.0), (2, 0, 1.0)]


def test_cli_retrieval_flags_become_request_fields():
    import argparse

    from ragcluster.config import add_config_arguments, config_from_args
    from ragcluster.convert import set_retrieval
    from ragcluster.errors import InvalidArgument
    from ragcluster.tools.cli.common import retrieval_kwargs
    from ragcluster.tools.cli.search import SearchOptions
    from ragcluster.v1 import router_pb2

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, SearchOptions)
    opts = config_from_args(SearchOptions, parser.parse_args(["--mode", "hybrid", "--fusion", "weighted",
                                                              "--alpha", "0.3"]))
    request = router_pb2.SearchRequest(text="q")
    set_retrieval(request, **retrieval_kwargs(opts))
    assert request.mode == router_pb2.RETRIEVAL_MODE_HYBRID
    assert request.fusion.method == router_pb2.FUSION_METHOD_WEIGHTED
    assert request.fusion.alpha == pytest.approx(0.3)
    assert not request.fusion.HasField("rrf_k") and not request.fusion.HasField("window")
    defaults = router_pb2.SearchRequest(text="q")
    set_retrieval(defaults, **retrieval_kwargs(config_from_args(SearchOptions, parser.parse_args([]))))
    assert defaults.mode == router_pb2.RETRIEVAL_MODE_UNSPECIFIED and not defaults.HasField("fusion")
    with pytest.raises(InvalidArgument, match="mode"):
        set_retrieval(defaults, mode="sparse")
