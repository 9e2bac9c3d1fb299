"""Router tier metrics (per-RPC metrics come from ragcluster.interceptors)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ragcluster.v1 import router_pb2

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

FANOUT_SECONDS = Histogram(
    "ragcluster_router_fanout_duration_seconds", "Time to fan a search out to all shards and merge",
    buckets=LATENCY_BUCKETS,
)
SHARD_CALL_SECONDS = Histogram(
    "ragcluster_router_shard_call_duration_seconds", "Router -> shard search call latency (answered calls)", ["shard"],
    buckets=LATENCY_BUCKETS,
)
SHARD_CALLS = Counter("ragcluster_router_shard_calls", "Router -> shard search calls (hedges and failovers included) "
                      "by status code", ["shard", "code"])
SHARD_SEARCHES = Counter("ragcluster_router_shard_searches", "Searches fanned out to a shard", ["shard"])
SHARD_MISSES = Counter("ragcluster_router_shard_misses", "Searches a shard was missing from, by reason "
                       "(timeout, unavailable, error); per-shard coverage = 1 - misses / searches", ["shard", "reason"])
EMBED_SECONDS = Histogram(
    "ragcluster_router_embed_duration_seconds", "Time to embed texts (one encode call)", ["kind"],
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
TPOT_SECONDS = Histogram(
    "ragcluster_router_time_per_output_token_seconds", "Ask: generation time after the first token per further token",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
COMPLETION_TOKENS = Counter("ragcluster_router_completion_tokens", "Answer tokens streamed by Ask")
INGESTED = Counter("ragcluster_router_ingested_documents", "Documents acknowledged by shards through Ingest")
EMBED_BATCH_SIZE = Histogram(
    "ragcluster_router_embed_batch_size", "Query texts coalesced into one encode call (1 with int8: a pass per query)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
SHARD_SEARCH_BATCH = Histogram(
    "ragcluster_router_shard_search_batch_size", "Dense searches carried by one batched shard search call",
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
CATCHUP_FAILURES = Counter("ragcluster_router_catchup_failures", "Restores of a lagging replica that failed", ["shard"])
TOMBSTONES_PRUNED = Counter("ragcluster_router_tombstones_pruned", "Versioned deletes forgotten after complete "
                            "anti-entropy passes (summed over the compared replicas)", ["shard"])
GENERATOR_FAILOVERS = Counter("ragcluster_router_generator_failovers",
                              "Ask generations moved to another node before the first token, by status code", ["code"])
for _code in ("UNAVAILABLE", "RESOURCE_EXHAUSTED"):  # the codes that fail over
    GENERATOR_FAILOVERS.labels(_code)
IN_FLIGHT = Gauge("ragcluster_router_in_flight_requests", "Requests being served by the router")
MAX_IN_FLIGHT = Gauge("ragcluster_router_max_in_flight_requests", "Admission limit (--max-in-flight)")
REJECTED = Counter("ragcluster_router_rejected_requests", "Requests refused by admission control")


def preinitialise_shard(shard: int) -> None:
    """Zero-valued children for one shard, so rates and ratios exist before the first event."""
    for metric in (SHARD_SEARCHES, HEDGES, HEDGES_WON, FAILOVERS, EJECTIONS, CATCHUPS, CATCHUP_FAILURES,
                   TOMBSTONES_PRUNED):
        metric.labels(shard)
    SHARD_CALLS.labels(shard, "OK")
    SHARD_CALL_SECONDS.labels(shard)
    for reason in ("timeout", "unavailable", "error"):
        SHARD_MISSES.labels(shard, reason)


# (collection, shard, state) -> replicas, and state -> generator nodes, read at scrape time
ReplicaCounts = Callable[[], Iterable[tuple[str, int, str, int]]]
NodeCounts = Callable[[], Iterable[tuple[str, int]]]


class _BackendStates(Collector):
    """``ragcluster_router_shard_replicas{collection,shard,state}`` and ``ragcluster_router_generator_nodes{state}``,
    computed from the router's live view at scrape time (states: serving, ejected, catching_up, not_serving)."""

    def __init__(self) -> None:
        self.replicas: ReplicaCounts | None = None
        self.nodes: NodeCounts | None = None

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # collected on demand; nothing to check at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        replicas = GaugeMetricFamily("ragcluster_router_shard_replicas", "Replicas of a shard as the router sees them, "
                                     "by state (serving, ejected, catching_up, not_serving)",
                                     labels=["collection", "shard", "state"])
        for collection, shard, state, count in (self.replicas() if self.replicas else ()):
            replicas.add_metric([collection, str(shard), state], count)
        yield replicas
        nodes = GaugeMetricFamily("ragcluster_router_generator_nodes", "Generator nodes as the router sees them, by "
                                  "state (serving, ejected, not_serving)", labels=["state"])
        for state, count in (self.nodes() if self.nodes else ()):
            nodes.add_metric([state], count)
        yield nodes


BACKEND_STATES = _BackendStates()
REGISTRY.register(BACKEND_STATES)


def observe_completion(completion_tokens: int, timings: router_pb2.Timings) -> None:
    """Tokens and time per output token of one finished Ask."""
    COMPLETION_TOKENS.inc(completion_tokens)
    ttft = timings.time_to_first_token_seconds
    decode = timings.total_seconds - ttft
    if completion_tokens > 1 and ttft and decode > 0:
        TPOT_SECONDS.observe(decode / (completion_tokens - 1))


SEARCHES = Counter("ragcluster_router_searches",
                   "Searches and asks retrieved, by retrieval mode (dense, lexical, hybrid)", ["mode"])
for _mode in ("dense", "lexical", "hybrid"):
    SEARCHES.labels(_mode)
