"""Shard tier metrics (per-RPC metrics come from ragcluster.interceptors)."""

from prometheus_client import Counter, Gauge, Histogram

VECTORS = Gauge("ragcluster_shard_vectors", "Live vectors in the shard's index", ["shard"])
TOMBSTONES = Gauge("ragcluster_shard_tombstones", "Removed ids still inside an index that cannot delete", ["shard"])
SEQUENCE = Gauge("ragcluster_shard_sequence", "Write sequence number (acknowledged write batches)", ["shard"])
INDEX_BYTES = Gauge("ragcluster_shard_index_bytes", "Size of the last index checkpoint", ["shard"])
STORE_BYTES = Gauge("ragcluster_shard_store_bytes", "Size of the document store (database + WAL)", ["shard"])
WAL_BYTES = Gauge("ragcluster_shard_wal_bytes", "Size of the store's write-ahead log (part of store_bytes)", ["shard"])
STORE_QUOTA_BYTES = Gauge("ragcluster_shard_store_quota_bytes", "Store size beyond which writes are refused (0 = none)",
                          ["shard"])
DISK_FREE_BYTES = Gauge("ragcluster_shard_disk_free_bytes", "Free bytes on the data directory's filesystem", ["shard"])
DISK_TOTAL_BYTES = Gauge("ragcluster_shard_disk_size_bytes", "Size of the data directory's filesystem", ["shard"])
CHECKPOINT_AGE = Gauge("ragcluster_shard_checkpoint_age_seconds",
                       "Seconds since the last index checkpoint (since the shard opened when it has none)", ["shard"])
CHECKPOINT_SEQUENCE = Gauge("ragcluster_shard_checkpoint_sequence",
                            "Write sequence covered by the last checkpoint (sequence minus this = writes to replay)",
                            ["shard"])
CHECKPOINT_SECONDS = Histogram(
    "ragcluster_shard_checkpoint_duration_seconds", "Time to write an index checkpoint", ["shard"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
CHECKPOINT_FAILURES = Counter("ragcluster_shard_checkpoint_failures", "Checkpoints unusable or not written",
                              ["shard", "stage"])
REBUILDS = Counter("ragcluster_shard_index_rebuilds", "Index rebuilds from the store", ["shard"])
FILTER_FALLBACKS = Counter("ragcluster_shard_filter_exact_fallbacks",
                           "Filtered queries scored exactly because the index returned fewer than k", ["shard"])
SEARCH_SECONDS = Histogram(
    "ragcluster_shard_search_duration_seconds", "Time in the index for one search call (a batch)", ["shard"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
SEARCH_QUERIES = Counter("ragcluster_shard_search_queries", "Queries searched (vectors and lexical queries)",
                         ["shard"])
WRITE_SECONDS = Histogram(
    "ragcluster_shard_write_duration_seconds", "Durable write latency (commit + index update)", ["shard", "op"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
LEXICAL_DOCUMENTS = Gauge("ragcluster_shard_lexical_documents", "Live documents in the shard's lexical (BM25) index",
                          ["shard"])
LEXICAL_BUILD_SECONDS = Histogram(
    "ragcluster_shard_lexical_build_duration_seconds", "Time to build the lexical index from the store", ["shard"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
