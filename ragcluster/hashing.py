"""Stable assignment of document ids to shards.

The id's UTF-8 bytes are hashed with BLAKE2b (64-bit digest; stable across processes, platforms and
Python versions, unlike ``hash()``), and the key is mapped to a bucket with jump consistent hashing
(Lamping & Veach, 2014): growing from n to n+1 shards moves only ~1/(n+1) of the documents.
"""

from __future__ import annotations

import hashlib

_MASK64 = (1 << 64) - 1


def id_key(doc_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest(), "little")


def jump_hash(key: int, buckets: int) -> int:
    if buckets <= 0:
        raise ValueError("buckets must be positive")
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & _MASK64
        j = int((b + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return b


def shard_for(doc_id: str, num_shards: int) -> int:
    """The shard (0..num_shards-1) that owns ``doc_id``."""
    return jump_hash(id_key(doc_id), num_shards)
