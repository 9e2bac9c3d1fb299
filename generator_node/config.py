"""Generator node configuration. Our own flags are fields here (each also a RAGCLUSTER_* env var);
vLLM's engine flags (--model, --max-model-len, --enforce-eager, --kv-cache-memory-bytes, ...) are passed
through from ``AsyncEngineArgs.add_cli_args``, and extra ones can come from ``RAGCLUSTER_VLLM_ARGS``."""

from __future__ import annotations

from dataclasses import dataclass

from ragcluster.config import ServerConfig, option


@dataclass
class GeneratorConfig(ServerConfig):
    max_pending: int = option(64, "admission limit: requests in the engine (running + waiting); beyond it "
                                  "RESOURCE_EXHAUSTED at once")
    default_max_tokens: int = option(256, "max_tokens when a request leaves it unset")
    default_stream_interval: int = option(4, "tokens per streamed delta after the first when a request leaves "
                                             "sampling.stream_interval unset (the first token goes out at once; "
                                             "1 = every token; bigger = fewer messages per answer on every hop)")
    engine_check_seconds: float = option(1.0, "how often the engine's health is checked; a dead engine makes the "
                                              "node NOT_SERVING and exit non-zero")
    tls_allowed_callers: list[str] = option(["spiffe://ragcluster/router"], "with mTLS: certificate identities (URI "
                                             "SAN) that may call this node")
