"""Domain types of the client library: what RouterClient takes and returns (no protobuf, no grpc).

Results are frozen dataclasses, so callers use attributes (``result.hits[0].id``) that mypy checks.
Conversions from the wire types, and to the JSON that the CLI's ``--json`` prints, live in
ragcluster/convert.py (``*_from_pb``, ``to_json``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypedDict

from ragcluster.documents import MetadataValue


class Condition(TypedDict, total=False):
    """One metadata filter condition (conditions are ANDed): ``field`` with exactly one of ``equals``,
    ``any_of`` or range bounds (``gte``, ``gt``, ``lte``, ``lt``)."""

    field: str
    equals: MetadataValue
    any_of: list[MetadataValue]
    gte: float
    gt: float
    lte: float
    lt: float


@dataclass(frozen=True)
class ShardFailure:
    """A shard that did not answer: ``reason`` is a ShardFailureReason name (TIMEOUT, UNAVAILABLE, ...)."""

    shard: int
    reason: str
    message: str


@dataclass(frozen=True)
class Coverage:
    """How much of the collection an answer covers; ``degraded`` when some shard did not answer."""

    shards_total: int = 0
    shards_answered: int = 0
    documents_searched: int = 0
    documents_total: int = 0
    degraded: bool = False
    failures: tuple[ShardFailure, ...] = ()


@dataclass(frozen=True)
class Hit:
    """One search hit. ``parent_id``: the document a chunk came from (its own id when not chunked).
    The rank/score of each retriever is set in hybrid mode (None where that retriever did not find it)."""

    id: str
    score: float
    shard: int
    title: str = ""
    text: str = ""
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)
    parent_id: str = ""
    dense_rank: int | None = None
    dense_score: float | None = None
    lexical_rank: int | None = None
    lexical_score: float | None = None
    fused_score: float | None = None


@dataclass(frozen=True)
class Timings:
    """Where a request's time went, in seconds (a search sets embed, retrieve and total)."""

    embed_seconds: float = 0.0
    retrieve_seconds: float = 0.0
    prompt_seconds: float = 0.0
    time_to_first_token_seconds: float = 0.0
    generate_seconds: float = 0.0
    total_seconds: float = 0.0


@dataclass(frozen=True)
class SearchResult:
    """``mode``: dense | lexical | hybrid, as the router ran it."""

    hits: tuple[Hit, ...]
    coverage: Coverage
    collection: str = ""
    embedding_model: str = ""
    mode: str = ""
    timings: Timings = Timings()


# --- ask: the stream's events, and the answer they add up to ----------------------------------------
@dataclass(frozen=True)
class AskHits:
    """First event of an answer: the passages retrieved."""

    hits: tuple[Hit, ...]
    coverage: Coverage
    collection: str = ""
    embedding_model: str = ""


@dataclass(frozen=True)
class AnswerDelta:
    """The next piece of the answer's text."""

    text: str


@dataclass(frozen=True)
class AskComplete:
    """Last event: the citations (ids of the passages given to the model, in score order) and accounting."""

    citations: tuple[str, ...] = ()
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    generator: str = ""
    model: str = ""
    timings: Timings = Timings()


AskEvent = AskHits | AnswerDelta | AskComplete


@dataclass(frozen=True)
class Answer:
    """A whole answer: the streamed text, its hits and what the complete event said."""

    answer: str = ""
    citations: tuple[str, ...] = ()
    hits: tuple[Hit, ...] = ()
    coverage: Coverage = Coverage()
    timings: Timings = Timings()
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    generator: str = ""
    model: str = ""


# --- writes and administration ------------------------------------------------------------------------
@dataclass(frozen=True)
class IngestResult:
    """``acknowledged``: documents durably stored; ``sent``: documents streamed; ``unchanged``: not sent
    because a resumed ingest found them stored with the same content."""

    acknowledged: int = 0
    sent: int = 0
    unchanged: int = 0


@dataclass(frozen=True)
class SwitchResult:
    previous: str
    active: str
    documents: int
    embedding_model: str


@dataclass(frozen=True)
class ReplicaStatus:
    address: str
    health: str  # SERVING, NOT_SERVING, UNKNOWN, ...
    documents: int
    sequence: int
    index_factory: str


@dataclass(frozen=True)
class ShardStatus:
    shard: int
    documents: int
    replicas: tuple[ReplicaStatus, ...]


@dataclass(frozen=True)
class GeneratorStatus:
    address: str
    health: str
    model: str
    max_context_length: int


@dataclass(frozen=True)
class ClusterStatus:
    """A collection's shards (with their replicas) and the generators; ``documents`` over all shards."""

    collection: str
    collections: tuple[str, ...]
    documents: int
    embedding_model: str
    dim: int
    max_k: int
    shards: tuple[ShardStatus, ...]
    generators: tuple[GeneratorStatus, ...]
