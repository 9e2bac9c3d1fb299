"""Shard tier metrics (per-RPC metrics come from ragcluster.interceptors)."""

from prometheus_client import Counter, Gauge, Histogram

VECTORS = Gauge("ragcluster_shard_vectors", "Live vectors in the shard's index", ["shard"])
SEQUENCE = Gauge("ragcluster_shard_sequence", "Write sequence number (acknowledged write batches)", ["shard"])
SEARCH_SECONDS = Histogram(
    "ragcluster_shard_search_duration_seconds", "Time in the index for one search call (a batch)", ["shard"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
SEARCH_QUERIES = Counter("ragcluster_shard_search_queries", "Query vectors searched", ["shard"])
WRITE_SECONDS = Histogram(
    "ragcluster_shard_write_duration_seconds", "Durable write latency (commit + index update)", ["shard", "op"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
