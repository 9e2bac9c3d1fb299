"""Router configuration; every field is a flag and a RAGCLUSTER_* env var."""

from __future__ import annotations

from dataclasses import dataclass

from ragcluster.config import ServerConfig, option
from ragcluster.errors import InvalidArgument
from router.prompt import DEFAULT_PASSAGE, DEFAULT_SYSTEM, DEFAULT_USER


@dataclass
class RouterConfig(ServerConfig):
    shard: list[str] = option(
        [], "a shard and its replicas: N=host:port[,host:port...] or N=dns:///name:port (every address the name "
            "resolves to is a replica, e.g. a Kubernetes headless service); repeat per shard (env: ';'-separated)",
        metavar="N=ADDR[,ADDR...]",
    )
    access_log: bool = option(True, "log one line per request (RPC, status, request/trace id, coverage, timings), "
                                    "as JSON with --log-json")
    collection: str = option("default", "name of the collection served by the --shard flags")
    collection_shard: list[str] = option(
        [], "another collection's shard: NAME:N=host:port[,host:port...] (e.g. an index re-built with a new "
            "embedding model); repeat per shard", metavar="NAME:N=ADDR[,...]")
    collection_model: list[str] = option([], "embedding model of a collection: NAME=MODEL (default: "
                                             "--embedding-model)", metavar="NAME=MODEL")
    state_file: str = option("", "remember the active collection here across restarts (written on SwitchCollection)")
    generator: list[str] = option([], "a generator node host:port, or dns:///name:port for every address the name "
                                      "resolves to; repeat for several", metavar="ADDR")
    embedding_model: str = option("all-MiniLM-L6-v2", "sentence-transformers model: name or local folder")
    embedding_backend: str = option("onnx", "embedding runtime: onnx (the model exported to ONNX at first use, "
                                            "cached in --embedding-cache-dir, run by ONNX Runtime) or torch "
                                            "(sentence-transformers)", choices=["onnx", "torch"])
    embedding_dtype: str = option("auto", "embedding precision: auto (onnx: int8, torch: float32), float32, "
                                          "int8 (onnx: dynamic quantisation per output channel, one text per "
                                          "pass; ~1.7x float32's speed, nDCG@10 on CISI held) or bfloat16 (torch)",
                                  choices=["auto", "float32", "int8", "bfloat16"])
    embedding_cache_dir: str = option("", "where ONNX exports of embedding models are kept (default: "
                                          "$XDG_CACHE_HOME/ragcluster/onnx or ~/.cache/ragcluster/onnx)")
    embedding_threads: int = option(0, "embedding threads (0 = every core this process may use; idle threads "
                                       "sleep rather than spin, so other processes keep the cores it does not use)")
    embed_max_batch: int = option(32, "query micro-batching: most texts in one encode call (1 = no batching; "
                                      "int8 ONNX with 2+ threads has no batches: each query is a pass of its "
                                      "own, started as soon as a core is free)")
    embed_max_wait_us: int = option(500, "query micro-batching: longest a text waits for others, in microseconds "
                                         "(not used without batches)")
    fanout_max_batch: int = option(64, "batched fan-out: dense searches that reach the fan-out together (e.g. embedded "
                                       "in one batch) go to each shard as one call of up to this many query "
                                       "vectors (1 = a shard call per search)")
    search_mode: str = option("dense", "retrieval mode of requests that leave it unset: dense (embeddings), lexical "
                                       "(BM25 with corpus-wide statistics) or hybrid (both, fused)",
                              choices=["dense", "lexical", "hybrid"])
    fusion: str = option("rrf", "hybrid fusion of requests that leave it unset: rrf (reciprocal rank) or weighted "
                                "(alpha * dense + (1 - alpha) * BM25, min-max normalised)", choices=["rrf", "weighted"])
    rrf_k: int = option(60, "RRF constant: a candidate scores 1 / (rrf_k + rank) per retriever")
    fusion_alpha: float = option(0.5, "weighted fusion: weight of the dense score (0..1)")
    fusion_window: int = option(100, "hybrid: candidates taken from each retriever before fusing (at least k)")
    embed_bulk_chunk: int = option(16, "ingest: documents are embedded in chunks of this many texts, each only when "
                                       "no query waits, so queries keep their latency during a bulk ingest (0 = "
                                       "whole batches, no priority for queries)")
    ingest_idle_timeout_seconds: float = option(60.0, "an Ingest stream that sends no message for this long is "
                                                      "closed (DEADLINE_EXCEEDED), freeing its admission slot")
    default_k: int = option(10, "k when a search request leaves it 0")
    max_k: int = option(100, "largest k a request may ask for")
    ask_k: int = option(5, "passages retrieved for Ask when the request leaves k 0")
    default_max_tokens: int = option(256, "answer length when an Ask leaves sampling.max_tokens unset")
    timeout_seconds: float = option(30.0, "deadline for requests that carry none")
    generate_timeout_seconds: float = option(120.0, "deadline for the generation part of an Ask")
    max_ingest_batch: int = option(1024, "most documents in one Ingest message")
    hedge_delay_ms: float = option(0.0, "send a hedged request to a second replica after this long (0 = the "
                                        "shard's observed p95 latency, -1 = never hedge)")
    eject_after: int = option(3, "eject a shard replica after this many consecutive failed calls")
    eject_seconds: float = option(10.0, "how long an ejected replica gets no reads (it returns at once when its "
                                        "health turns SERVING again)")
    write_quorum: str = option("all", "a write is acknowledged when all live replicas (all) or a majority of all "
                                      "replicas (majority) made it durable", choices=["all", "majority"])
    anti_entropy_seconds: float = option(30.0, "compare shard replicas this often (bucket hashes, then the documents "
                                               "of differing buckets) and copy the newest version of each document "
                                               "to replicas that lack it (0 = only when a replica returns or misses "
                                               "a write)")
    tombstone_grace_seconds: float = option(86400.0, "a versioned delete is forgotten once a complete anti-entropy "
                                                     "pass saw it on every compared replica and it is older than this "
                                                     "(0 = keep every delete forever). Half of it must exceed the "
                                                     "longest write in flight plus the clock skew between routers; a "
                                                     "replica out of complete passes for longer than half of it is "
                                                     "restored from a snapshot instead of merged. Same on every router")
    anti_entropy_buckets: int = option(1024, "anti-entropy compares this many per-bucket hashes of each replica's "
                                             "(id, version) digest, then reads only the buckets that differ")
    dns_refresh_seconds: float = option(30.0, "re-resolve dns:/// shard addresses this often")
    max_in_flight: int = option(512, "admission control: requests served at once; beyond it RESOURCE_EXHAUSTED")
    deadline_margin_ms: float = option(20.0, "answer this long before the caller's deadline (partial results "
                                             "rather than DEADLINE_EXCEEDED)")
    generator_eject_seconds: float = option(5.0, "a generator that failed a call gets no traffic for this long")
    generator_tokenizer: bool = option(True, "count Ask prompt tokens here with each generator's tokenizer (fetched "
                                             "once per model) and send it token ids; off: a CountTokens call per Ask")
    auth_tokens: str = option("", "API keys: a file of 'sha256:HEX ROLE NAME' lines (or a directory, e.g. a mounted "
                                  "Secret, of such files), re-read when it changes; roles read/write/admin. Empty = "
                                  "no authentication (refused on a non-loopback address unless --insecure)")
    switch_min_documents: int = option(1, "SwitchCollection refuses a collection with fewer documents unless the "
                                          "request sets force")
    prompt_system: str = option(DEFAULT_SYSTEM, "Ask prompt: system message ('' for none)")
    prompt_passage: str = option(DEFAULT_PASSAGE, "Ask prompt: one passage; fields {n} {id} {title} {text} {score}")
    prompt_user: str = option(DEFAULT_USER, "Ask prompt: user message; fields {passages} {question}")


def parse_shards(specs: list[str]) -> dict[int, list[str]]:
    """``["0=h:p,h:p", "1=h:p"]`` -> ``{0: ["h:p", "h:p"], 1: ["h:p"]}``; shards must be 0..n-1."""
    shards: dict[int, list[str]] = {}
    for spec in specs:
        for part in spec.split(";"):
            if not part.strip():
                continue
            num, sep, addrs = part.partition("=")
            if not sep or not num.strip().isdigit():
                raise InvalidArgument(f"shard: {part!r} is not N=host:port[,host:port...]")
            replicas = [a.strip() for a in addrs.split(",") if a.strip()]
            if not replicas:
                raise InvalidArgument(f"shard: {part!r} names no address")
            shards.setdefault(int(num), []).extend(replicas)
    if sorted(shards) != list(range(len(shards))):
        raise InvalidArgument(f"shard: shards must be numbered 0..n-1, got {sorted(shards)}")
    return shards
