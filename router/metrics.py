"""Router tier metrics (per-RPC metrics come from ragcluster.interceptors)."""

from prometheus_client import Counter, Gauge, Histogram

FANOUT_SECONDS = Histogram(
    "ragcluster_router_fanout_duration_seconds", "Time to fan a search out to all shards and merge",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SHARD_CALL_SECONDS = Histogram(
    "ragcluster_router_shard_call_duration_seconds", "Router -> shard search call latency", ["shard"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SHARD_CALLS = Counter("ragcluster_router_shard_calls", "Router -> shard calls by outcome", ["shard", "code"])
EMBED_SECONDS = Histogram(
    "ragcluster_router_embed_duration_seconds", "Time to embed texts (one call)", ["kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
COVERAGE_RATIO = Histogram(
    "ragcluster_router_coverage_ratio", "Share of shards that answered a search",
    buckets=(0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0),
)
TTFT_SECONDS = Histogram(
    "ragcluster_router_time_to_first_token_seconds", "Ask: from request to the first answer token",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
INGESTED = Counter("ragcluster_router_ingested_documents", "Documents acknowledged by shards through Ingest")
EMBED_BATCH_SIZE = Histogram(
    "ragcluster_router_embed_batch_size", "Query texts coalesced into one encode call",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
EMBED_WAIT_SECONDS = Histogram(
    "ragcluster_router_embed_wait_seconds", "Time a query text waited to be batched",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)
HEDGES = Counter("ragcluster_router_hedges_sent", "Hedged requests sent to a second replica", ["shard"])
HEDGES_WON = Counter("ragcluster_router_hedges_won", "Hedged requests that answered first", ["shard"])
FAILOVERS = Counter("ragcluster_router_failovers", "Shard calls retried on another replica", ["shard"])
EJECTIONS = Counter("ragcluster_router_ejections", "Replicas ejected after consecutive failures", ["shard"])
CATCHUPS = Counter("ragcluster_router_catchups", "Lagging replicas restored from a snapshot", ["shard"])
IN_FLIGHT = Gauge("ragcluster_router_in_flight_requests", "Requests being served by the router")
REJECTED = Counter("ragcluster_router_rejected_requests", "Requests refused by admission control")
