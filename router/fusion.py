"""Hybrid retrieval in the router (pure: no grpc): corpus-wide BM25 statistics from the shards' term
statistics, and fusion of the dense and lexical global rankings.

- Statistics (dfs_query_then_fetch): every shard reports, for the query's analysed terms, its document
  frequencies, document count and total length; their sums are the statistics of one index over the
  whole corpus. Sent back with the query, they make every shard score exactly as that index would, so
  the merged lexical top-k equals the monolithic one.
- Fusion: ``rrf`` sums 1 / (rrf_k + rank) over the retrievers that ranked a candidate; ``weighted``
  min-max normalises each retriever's scores over its candidate list (a candidate missing from a list
  gets 0 there) and combines them as alpha * dense + (1 - alpha) * lexical. Ties: best single rank first,
  then shard and internal id, so results are deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ragcluster.errors import FailedPrecondition
from router.merge import MergedHit

MODES = ("dense", "lexical", "hybrid")
FUSIONS = ("rrf", "weighted")


@dataclass(frozen=True)
class ShardTermStats:
    """One shard's TermStats answer for one query."""

    shard: int
    terms: Sequence[str]
    counts: Sequence[int]
    document_frequencies: Sequence[int]
    documents: int
    total_length: int
    config: str


@dataclass(frozen=True)
class GlobalTerms:
    """A query's terms with corpus-wide document frequencies, document count and total length."""

    terms: list[str]
    counts: list[int]
    document_frequencies: list[int]
    documents: int
    total_length: int


def combine_term_stats(parts: Sequence[ShardTermStats]) -> GlobalTerms:
    """Sum the shards' statistics. Shards must analyse alike (same ``config``), else FAILED_PRECONDITION."""
    configs = {p.config for p in parts}
    if len(configs) > 1:
        detail = "; ".join(f"shard {p.shard}: {p.config}" for p in parts)
        raise FailedPrecondition(f"shards analyse text differently, so BM25 scores cannot be combined "
                                 f"(give every shard the same --lexical-* and --bm25-* flags): {detail}")
    terms: list[str] = []
    counts: dict[str, int] = {}
    dfs: dict[str, int] = {}
    for p in parts:
        for term, count, df in zip(p.terms, p.counts, p.document_frequencies):
            if term not in counts:
                terms.append(term)
                counts[term] = count
                dfs[term] = 0
            dfs[term] += df
    return GlobalTerms(terms, [counts[t] for t in terms], [dfs[t] for t in terms],
                       sum(p.documents for p in parts), sum(p.total_length for p in parts))


@dataclass
class FusedHit:
    shard: int
    id: int
    score: float  # the mode's score: dense, lexical or fused
    dense_rank: int = 0  # 1-based; 0 = not in the dense candidates
    dense_score: float = 0.0
    lexical_rank: int = 0
    lexical_score: float = 0.0
    fused_score: float = 0.0


def single(hits: Sequence[MergedHit], mode: str) -> list[FusedHit]:
    """A single retriever's ranking, with its rank and score filled in."""
    out = []
    for rank, h in enumerate(hits, 1):
        if mode == "dense":
            out.append(FusedHit(h.shard, h.id, h.score, dense_rank=rank, dense_score=h.score))
        else:
            out.append(FusedHit(h.shard, h.id, h.score, lexical_rank=rank, lexical_score=h.score))
    return out


def _candidates(dense: Sequence[MergedHit], lexical: Sequence[MergedHit]) -> dict[tuple[int, int], FusedHit]:
    found: dict[tuple[int, int], FusedHit] = {}
    for rank, h in enumerate(dense, 1):
        found[(h.shard, h.id)] = FusedHit(h.shard, h.id, 0.0, dense_rank=rank, dense_score=h.score)
    for rank, h in enumerate(lexical, 1):
        hit = found.setdefault((h.shard, h.id), FusedHit(h.shard, h.id, 0.0))
        hit.lexical_rank, hit.lexical_score = rank, h.score
    return found


def _ranked(hits: list[FusedHit], k: int) -> list[FusedHit]:
    def best_rank(h: FusedHit) -> int:
        return min(r for r in (h.dense_rank, h.lexical_rank) if r > 0)

    hits.sort(key=lambda h: (-h.fused_score, best_rank(h), h.shard, h.id))
    for h in hits:
        h.score = h.fused_score
    return hits[:k]


def rrf(dense: Sequence[MergedHit], lexical: Sequence[MergedHit], k: int, rrf_k: int = 60) -> list[FusedHit]:
    """Reciprocal rank fusion of two rankings (best first): the top ``k``."""
    hits = list(_candidates(dense, lexical).values())
    for h in hits:
        h.fused_score = sum(1.0 / (rrf_k + r) for r in (h.dense_rank, h.lexical_rank) if r > 0)
    return _ranked(hits, k)


def _normalised(hits: Sequence[MergedHit], higher_is_better: bool) -> dict[tuple[int, int], float]:
    if not hits:
        return {}
    scores = [h.score for h in hits]
    lo, hi = min(scores), max(scores)
    out = {}
    for h in hits:
        span = hi - lo
        if span == 0:
            out[(h.shard, h.id)] = 1.0
        else:
            out[(h.shard, h.id)] = (h.score - lo) / span if higher_is_better else (hi - h.score) / span
    return out


def weighted(dense: Sequence[MergedHit], lexical: Sequence[MergedHit], k: int, alpha: float = 0.5,
             dense_higher_is_better: bool = True) -> list[FusedHit]:
    """alpha * normalised dense score + (1 - alpha) * normalised BM25 score: the top ``k``."""
    d, lx = _normalised(dense, dense_higher_is_better), _normalised(lexical, True)
    hits = list(_candidates(dense, lexical).values())
    for h in hits:
        key = (h.shard, h.id)
        h.fused_score = alpha * d.get(key, 0.0) + (1.0 - alpha) * lx.get(key, 0.0)
    return _ranked(hits, k)
