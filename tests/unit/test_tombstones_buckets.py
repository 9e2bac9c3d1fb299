"""The store's side of anti-entropy and tombstone pruning (issue 16): per-bucket digests that differ exactly
where the replicas differ, Digest pages restricted to buckets, and pruning that can never let a deleted
document come back (versioned writes below the tombstone horizon are refused)."""

from __future__ import annotations

import numpy as np
import pytest

from ragcluster.documents import Document
from ragcluster.errors import FailedPrecondition
from shard_server.config import ShardOptions
from shard_server.shard import Shard
from shard_server.store import bucket_of

DIM = 8
BUCKETS = 64


def _vecs(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _docs(n: int, text: str = "text") -> list[Document]:
    return [Document(f"d{i}", f"{text} {i}") for i in range(n)]


def _pair(tmp_path, n: int = 300) -> tuple[Shard, Shard]:
    a, b = Shard(ShardOptions(str(tmp_path / "a"), dim=DIM)), Shard(ShardOptions(str(tmp_path / "b"), dim=DIM))
    for s in (a, b):
        s.upsert(_docs(n), _vecs(n), versions=[100 + i for i in range(n)])
    return a, b


def test_bucket_digests_differ_exactly_where_replicas_differ(tmp_path):
    a, b = _pair(tmp_path)
    da, db = a.bucket_digest(BUCKETS), b.bucket_digest(BUCKETS)
    assert da.hashes == db.hashes and da.counts == db.counts and sum(da.counts) == 300
    assert da.max_version == 399

    b.upsert([Document("d7", "changed")], _vecs(1, 1), versions=[1000])  # newer content on b
    b.delete(["d42"], versions=[1001])  # a versioned delete on b (a tombstone replaces the document)
    b.upsert([Document("extra", "only on b")], _vecs(1, 2), versions=[1002])
    db = b.bucket_digest(BUCKETS)  # the cache was invalidated by the writes
    differing = {i for i in range(BUCKETS) if (da.hashes[i], da.counts[i]) != (db.hashes[i], db.counts[i])}
    assert differing == {bucket_of(i, BUCKETS) for i in ("d7", "d42", "extra")}
    assert db.max_version == 1002

    # a Digest page of the differing buckets holds exactly their entries
    page = b.digest("", 10_000, BUCKETS, sorted(differing))
    assert {e[0] for e in page} == {d for d in [f"d{i}" for i in range(300)] + ["extra"]
                                    if bucket_of(d, BUCKETS) in differing}
    assert next(e for e in page if e[0] == "d42")[3] is True  # the tombstone is listed


def test_pruned_delete_cannot_come_back(tmp_path):
    shard = Shard(ShardOptions(str(tmp_path), dim=DIM))
    shard.upsert(_docs(3), _vecs(3), versions=[10, 11, 12])
    shard.delete(["d1"], versions=[20])
    assert [e for e in shard.digest() if e[0] == "d1"] == [("d1", 20, "", True)]

    pruned, horizon = shard.prune_tombstones(before_version=30, synced_version=99)
    assert (pruned, horizon) == (1, 30)
    assert not [e for e in shard.digest() if e[0] == "d1"]  # the tombstone is gone
    summary = shard.bucket_digest(BUCKETS)
    assert (summary.tombstone_horizon, summary.synced_version) == (30, 99)

    # the old upsert of d1 (version 11 < 20, e.g. from a replica that missed the delete) is refused, not applied
    with pytest.raises(FailedPrecondition, match="tombstone horizon"):
        shard.upsert([Document("d1", "text 1")], _vecs(1), versions=[11])
    assert shard.fetch(["d1"]) == []
    # a late delete below the horizon removes but leaves no tombstone (none would be kept for it anyway)
    shard.delete(["d0"], versions=[25])
    assert [e[0] for e in shard.digest()] == ["d2"]
    # writes above the horizon behave as before
    shard.upsert([Document("d1", "back, newer")], _vecs(1), versions=[40])
    assert shard.fetch(["d1"])[0].text == "back, newer"
    shard.close()

    reopened = Shard(ShardOptions(str(tmp_path), dim=DIM))  # the horizon is durable
    with pytest.raises(FailedPrecondition):
        reopened.upsert([Document("d0", "text 0")], _vecs(1), versions=[10])
    assert reopened.prune_tombstones(before_version=5, synced_version=0) == (0, 30)  # never moves back
    reopened.close()
