"""Merging per-shard top-k lists into the exact global top-k (pure: no grpc).

Each shard returns its own exact top-k, so the global top-k is contained in their union; sorting the
union by score (best first; ties broken by shard then id, so results are deterministic) and cutting at
k gives the same answer as one index over the whole corpus. Lexical results carry tie-break keys (a hash
of the document id) that every shard also ranks ties by, so even their ties order as one index would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ShardTopK:
    shard: int
    ids: np.ndarray  # int64, best first
    scores: np.ndarray  # float32
    keys: np.ndarray | None = None  # uint64 tie-break keys (lexical results): ties rank by key, not shard/id


@dataclass(frozen=True)
class MergedHit:
    shard: int
    id: int
    score: float


def merge_topk(parts: list[ShardTopK], k: int, higher_is_better: bool = True) -> list[MergedHit]:
    if k <= 0:
        return []
    parts = [p for p in parts if len(p.ids)]
    if not parts:
        return []
    scores = np.concatenate([p.scores.astype(np.float64) for p in parts])
    ids = np.concatenate([p.ids.astype(np.int64) for p in parts])
    shards = np.concatenate([np.full(len(p.ids), p.shard, dtype=np.int64) for p in parts])
    primary = -scores if higher_is_better else scores
    keys = [p.keys for p in parts if p.keys is not None and len(p.keys) == len(p.ids)]
    if len(keys) == len(parts):
        ties = np.concatenate([key.astype(np.uint64) for key in keys])
        order = np.lexsort((ids, shards, ties, primary))[:k]  # last key is primary
    else:
        order = np.lexsort((ids, shards, primary))[:k]
    return [MergedHit(int(shards[i]), int(ids[i]), float(scores[i])) for i in order]
