"""Generator tier metrics. vLLM's own ``vllm:*`` metrics live in the same default registry and are
served from the same /metrics endpoint."""

from prometheus_client import Counter, Gauge, Histogram

TTFT_SECONDS = Histogram(
    "ragcluster_generator_time_to_first_token_seconds", "From request arrival to the first streamed token",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ACTIVE = Gauge("ragcluster_generator_active_requests", "Requests in the engine (running + waiting)")
MAX_PENDING = Gauge("ragcluster_generator_max_pending_requests", "Admission limit (--max-pending)")
REJECTED = Counter("ragcluster_generator_rejected_requests", "Requests refused by admission control")
TOKENS = Counter("ragcluster_generator_generated_tokens", "Completion tokens streamed")
ABORTED = Counter("ragcluster_generator_aborted_requests", "Requests aborted by cancellation or deadline")
QUEUE_SECONDS = Histogram(
    "ragcluster_generator_queue_duration_seconds", "Time a request waited in the engine before being scheduled",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
