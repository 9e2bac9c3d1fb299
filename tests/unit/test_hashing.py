from collections import Counter

import pytest

from ragcluster.hashing import id_key, jump_hash, shard_for


def test_stable_known_values():
    # Golden values: a change here would move every stored document to another shard.
    assert id_key("doc-1") == id_key("doc-1")
    assert [shard_for(f"doc{i}", 3) for i in range(10)] == [2, 2, 1, 1, 2, 2, 0, 2, 0, 0]
    assert shard_for("", 1) == 0


def test_range_and_balance():
    counts = Counter(shard_for(f"id-{i}", 8) for i in range(16000))
    assert set(counts) == set(range(8))
    assert max(counts.values()) / min(counts.values()) < 1.15


def test_jump_hash_moves_only_a_fraction_when_growing():
    keys = [id_key(f"k{i}") for i in range(5000)]
    before = [jump_hash(k, 4) for k in keys]
    after = [jump_hash(k, 5) for k in keys]
    moved = [(a, b) for a, b in zip(before, after) if a != b]
    assert all(b == 4 for _, b in moved)  # keys only move to the new bucket
    assert 0.1 < len(moved) / len(keys) < 0.3  # ~1/5


def test_invalid_bucket_count():
    with pytest.raises(ValueError):
        jump_hash(1, 0)
