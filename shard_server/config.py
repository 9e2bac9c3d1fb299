"""Shard server configuration; every field is a flag and a RAGCLUSTER_* env var.

ShardOptions is what the pure core (shard_server/shard.py:Shard) is opened with; ShardConfig adds what the
server process needs around it (ports, TLS, checkpoints, restore, snapshots).
"""

from __future__ import annotations

from dataclasses import dataclass

from ragcluster.config import ServerConfig, option


@dataclass
class ShardOptions:
    """A shard's store, index and limits: ``Shard(options)`` (no grpc, no server settings)."""

    data_dir: str = option("./data/shard-0", "directory of the shard's durable store")
    shard_id: int = option(0, "this shard's number in the cluster (0-based)")
    dim: int = option(384, "vector dimension (384 for all-MiniLM-L6-v2)")
    metric: str = option("ip", "similarity: ip (inner product on normalised vectors = cosine), cosine, l2",
                         choices=["ip", "cosine", "l2"])
    index_factory: str = option("Flat", "FAISS index_factory string, e.g. Flat, IVF256,Flat, HNSW32, IVF256,PQ16")
    embedding_model: str = option("", "embedding model name to record (else taken from the first upsert)")
    max_k: int = option(1000, "largest k a search may ask for")
    max_batch: int = option(1024, "most query vectors in one search call")
    max_upsert_batch: int = option(4096, "most documents in one upsert message")
    nprobe: int = option(16, "default nprobe for IVF indexes")
    ef_search: int = option(64, "default efSearch for HNSW indexes")
    ef_construction: int = option(200, "efConstruction for building HNSW indexes")
    rebuild_tombstone_share: float = option(0.2, "rebuild the index in the background once tombstones (removed ids "
                                                 "an index like HNSW cannot delete) exceed this share")
    max_store_bytes: int = option(0, "refuse writes (RESOURCE_EXHAUSTED) beyond this store size; 0 = no limit")
    lexical_stemmer: str = option("english", "lexical (BM25) index: Snowball stemmer (english, porter, french, "
                                             "german, ... or none); every shard of a collection must use the same")
    lexical_stopwords: str = option("english", "lexical index: stop words removed before indexing: english (Lucene's "
                                               "list), none, or a comma-separated list")
    bm25_k1: float = option(1.5, "BM25 term-frequency saturation k1")
    bm25_b: float = option(0.75, "BM25 length normalisation b (0..1)")
    exact_filter_limit: int = option(200_000, "filtered search on an approximate index (IVF, HNSW) that found fewer "
                                              "than k matches: score the matching vectors exactly when at most this "
                                              "many match")


@dataclass
class ShardConfig(ShardOptions, ServerConfig):
    """The shard server: ShardOptions for its Shard plus the process's own settings."""

    checkpoint_interval_seconds: float = option(60.0, "write an index checkpoint this often when there were writes "
                                                      "(and on shutdown); 0 = only on shutdown")
    restore_from: str = option("", "host:port of a shard replica to copy (Snapshot) when --data-dir holds no store")
    tls_allowed_callers: list[str] = option(["spiffe://ragcluster/router"], "with mTLS: certificate identities (URI "
                                             "SAN) that may call this shard")
    tls_peer_identity: str = option("", "with mTLS: identity of the other replicas of this shard, which may also "
                                        "call Snapshot (default spiffe://ragcluster/shard/<shard-id>)")
    restore_peers: list[str] = option([], "host:port addresses Restore may copy from (the other replicas of this "
                                          "shard); empty = any, when TLS is off")
    restore_peers_file: str = option("", "file of further allowed Restore sources, one host:port per line, re-read "
                                         "when it changes (e.g. a ConfigMap)")
    search_delay_ms: float = option(0.0, "testing only: add this much latency to every Search (a slow replica)")
    maintenance_threads: int = option(2, "threads for background checkpoints and rebuilds (their FAISS work uses one "
                                         "core each); searches and writes never wait for these threads")
    worker_threads: int = option(0, "threads that run searches, writes and reads (FAISS, SQLite; each keeps one "
                                    "SQLite reader connection); all started at startup, so their number never "
                                    "changes; 0 = cores + 4, at most 32 (asyncio's default)")
    malloc_arena_max: int = option(2, "cap glibc's malloc arenas (as MALLOC_ARENA_MAX; default 8 per core): with "
                                      "many, freed memory stays fragmented across them and the RSS creeps up "
                                      "under a steady load; 0 = glibc's default")
    max_concurrent_snapshots: int = option(2, "Snapshot streams served at once (each holds a read transaction on the "
                                              "store); beyond it RESOURCE_EXHAUSTED")
