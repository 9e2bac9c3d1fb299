"""Protobuf <-> domain conversions used at the edge of every service, and the client's results as JSON.

The one place that knows both the wire types (ragcluster/v1) and the domain types (ragcluster/documents.py,
ragcluster/types.py): servicers and RouterClient convert here, at their edge.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ragcluster.documents import Document, MetadataValue
from ragcluster.errors import InvalidArgument
from ragcluster.types import (
    AnswerDelta,
    AskComplete,
    AskEvent,
    AskHits,
    ClusterStatus,
    Condition,
    Coverage,
    GeneratorStatus,
    Hit,
    ReplicaStatus,
    SearchResult,
    ShardFailure,
    ShardStatus,
    SwitchResult,
    Timings,
)
from ragcluster.v1 import common_pb2, router_pb2


def metadata_to_pb(value: MetadataValue) -> common_pb2.MetadataValue:
    if isinstance(value, bool):
        return common_pb2.MetadataValue(bool_value=value)
    if isinstance(value, int):
        return common_pb2.MetadataValue(int_value=value)
    if isinstance(value, float):
        return common_pb2.MetadataValue(double_value=value)
    return common_pb2.MetadataValue(string_value=str(value))


def metadata_from_pb(value: common_pb2.MetadataValue) -> MetadataValue:
    kind = value.WhichOneof("kind")
    return getattr(value, kind) if kind else ""


def document_to_pb(doc: Document) -> common_pb2.Document:
    return common_pb2.Document(
        id=doc.id, text=doc.text, title=doc.title, metadata={k: metadata_to_pb(v) for k, v in doc.metadata.items()}
    )


def document_from_pb(pb: common_pb2.Document) -> Document:
    return Document(pb.id, pb.text, pb.title, {k: metadata_from_pb(v) for k, v in pb.metadata.items()})


def matrix_to_pb(x: np.ndarray) -> common_pb2.FloatMatrix:
    x = np.ascontiguousarray(x, dtype="<f4")
    if x.ndim != 2:
        raise ValueError("matrix must be 2-d")
    return common_pb2.FloatMatrix(rows=x.shape[0], cols=x.shape[1], data=x.tobytes())


def matrix_from_pb(pb: common_pb2.FloatMatrix, field: str = "queries") -> np.ndarray:
    if pb.rows == 0 or pb.cols == 0:
        raise InvalidArgument(f"{field}: empty matrix ({pb.rows} x {pb.cols})")
    if len(pb.data) != pb.rows * pb.cols * 4:
        raise InvalidArgument(
            f"{field}: data holds {len(pb.data)} bytes, expected rows*cols*4 = {pb.rows * pb.cols * 4}"
        )
    return np.frombuffer(pb.data, dtype="<f4").reshape(pb.rows, pb.cols).astype(np.float32, copy=True)


def coverage_from_pb(cov: common_pb2.Coverage) -> Coverage:
    return Coverage(
        shards_total=cov.shards_total, shards_answered=cov.shards_answered,
        documents_searched=cov.documents_searched, documents_total=cov.documents_total, degraded=cov.degraded,
        failures=tuple(ShardFailure(f.shard, common_pb2.ShardFailureReason.Name(f.reason), f.message)
                       for f in cov.failures),
    )


def hit_from_pb(hit: common_pb2.Hit) -> Hit:
    doc = document_from_pb(hit.document)
    return Hit(
        id=doc.id, score=float(hit.score), shard=hit.shard, title=doc.title, text=doc.text, metadata=doc.metadata,
        parent_id=str(doc.metadata.get("parent_id", doc.id)),
        dense_rank=hit.dense_rank or None, dense_score=float(hit.dense_score) if hit.dense_rank else None,
        lexical_rank=hit.lexical_rank or None,
        lexical_score=float(hit.lexical_score) if hit.lexical_rank else None,
        fused_score=float(hit.fused_score) if hit.fused_score else None,
    )


def timings_from_pb(t: router_pb2.Timings) -> Timings:
    return Timings(embed_seconds=t.embed_seconds, retrieve_seconds=t.retrieve_seconds,
                   prompt_seconds=t.prompt_seconds, time_to_first_token_seconds=t.time_to_first_token_seconds,
                   generate_seconds=t.generate_seconds, total_seconds=t.total_seconds)


def search_result_from_pb(r: router_pb2.SearchResponse) -> SearchResult:
    return SearchResult(hits=tuple(hit_from_pb(h) for h in r.hits), coverage=coverage_from_pb(r.coverage),
                        collection=r.collection, embedding_model=r.embedding_model,
                        mode=_MODE_NAMES.get(r.mode, ""), timings=timings_from_pb(r.timings))


def ask_event_from_pb(event: router_pb2.AskEvent) -> AskEvent | None:
    """The event's domain type; None for an event kind this client does not know (a newer router)."""
    kind = event.WhichOneof("event")
    if kind == "hits":
        h = event.hits
        return AskHits(hits=tuple(hit_from_pb(x) for x in h.hits), coverage=coverage_from_pb(h.coverage),
                       collection=h.collection, embedding_model=h.embedding_model)
    if kind == "delta":
        return AnswerDelta(event.delta.text)
    if kind == "complete":
        c = event.complete
        return AskComplete(citations=tuple(c.citations), finish_reason=c.finish_reason,
                           prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
                           generator=c.generator, model=c.model, timings=timings_from_pb(c.timings))
    return None


def switch_result_from_pb(r: router_pb2.SwitchCollectionResponse) -> SwitchResult:
    return SwitchResult(previous=r.previous, active=r.active, documents=r.documents,
                        embedding_model=r.embedding_model)


def cluster_status_from_pb(r: router_pb2.ClusterStatusResponse) -> ClusterStatus:
    return ClusterStatus(
        collection=r.collection, collections=tuple(r.collections), documents=r.documents,
        embedding_model=r.embedding_model, dim=r.dim, max_k=r.max_k,
        shards=tuple(
            ShardStatus(shard=s.shard, documents=s.documents, replicas=tuple(
                ReplicaStatus(address=x.address, health=x.health, documents=x.documents, sequence=x.sequence,
                              index_factory=x.index_factory) for x in s.replicas))
            for s in r.shards),
        generators=tuple(GeneratorStatus(address=g.address, health=g.health, model=g.model,
                                         max_context_length=g.max_context_length) for g in r.generators),
    )


def to_json(result: object) -> dict[str, Any]:
    """A client result (any dataclass of ragcluster/types.py) as the JSON object ``--json`` prints: field
    names as keys, nested results as objects, tuples as lists."""
    if not dataclasses.is_dataclass(result) or isinstance(result, type):
        raise TypeError(f"to_json takes a result dataclass, not {type(result).__name__}")
    out: dict[str, Any] = _jsonable(dataclasses.asdict(result))
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


MODES = {"dense": 1, "lexical": 2, "hybrid": 3}  # router_pb2.RetrievalMode values
FUSIONS = {"rrf": 1, "weighted": 2}  # router_pb2.FusionMethod values
_MODE_NAMES = {number: name for name, number in MODES.items()}


def set_retrieval(request: router_pb2.SearchRequest | router_pb2.AskRequest, mode: str = "", fusion: str = "",
                  rrf_k: int | None = None, alpha: float | None = None, window: int | None = None) -> None:
    """Fill ``mode`` and ``fusion`` of a router SearchRequest/AskRequest ('' / None = the router's default)."""
    if mode:
        if mode not in MODES:
            raise InvalidArgument(f"mode: {mode!r} is not one of {', '.join(MODES)}")
        request.mode = router_pb2.RetrievalMode.ValueType(MODES[mode])
    if fusion:
        if fusion not in FUSIONS:
            raise InvalidArgument(f"fusion: {fusion!r} is not one of {', '.join(FUSIONS)}")
        request.fusion.method = router_pb2.FusionMethod.ValueType(FUSIONS[fusion])
    if rrf_k is not None:
        request.fusion.rrf_k = rrf_k
    if alpha is not None:
        request.fusion.alpha = alpha
    if window is not None:
        request.fusion.window = window


def filter_to_pb(conditions: list[Condition]) -> common_pb2.Filter:
    """From JSON-like conditions: ``{"field": f, "equals": v}`` | ``{"field", "any_of": [...]}`` |
    ``{"field", "gte"/"gt"/"lte"/"lt": number}``."""
    pb = common_pb2.Filter()
    for i, c in enumerate(conditions):
        cond = pb.must.add(field=str(c.get("field", "")))
        if "equals" in c:
            cond.equals.CopyFrom(metadata_to_pb(c["equals"]))
        elif "any_of" in c:
            cond.any_of.values.extend(metadata_to_pb(v) for v in c["any_of"])
        else:
            bounds = {k: float(c[k]) for k in ("gte", "gt", "lte", "lt") if k in c}
            if not bounds:
                raise InvalidArgument(f"filter[{i}]: needs equals, any_of or a range bound (gte, gt, lte, lt)")
            cond.range.CopyFrom(common_pb2.Range(**bounds))
    return pb
