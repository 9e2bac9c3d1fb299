"""Protobuf <-> domain conversions used at the edge of every service."""

from __future__ import annotations

import numpy as np

from ragcluster.documents import Document, MetadataValue
from ragcluster.errors import InvalidArgument
from ragcluster.types import Condition
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


def coverage_to_json(cov: common_pb2.Coverage) -> dict:
    return {
        "shards_total": cov.shards_total,
        "shards_answered": cov.shards_answered,
        "documents_searched": cov.documents_searched,
        "documents_total": cov.documents_total,
        "degraded": cov.degraded,
        "failures": [
            {"shard": f.shard, "reason": common_pb2.ShardFailureReason.Name(f.reason), "message": f.message}
            for f in cov.failures
        ],
    }


def hit_to_json(hit: common_pb2.Hit) -> dict:
    doc = document_from_pb(hit.document)
    return {
        "id": doc.id, "score": float(hit.score), "shard": hit.shard, "title": doc.title, "text": doc.text,
        "metadata": doc.metadata, "parent_id": str(doc.metadata.get("parent_id", doc.id)),
        "dense_rank": hit.dense_rank or None, "dense_score": float(hit.dense_score) if hit.dense_rank else None,
        "lexical_rank": hit.lexical_rank or None,
        "lexical_score": float(hit.lexical_score) if hit.lexical_rank else None,
        "fused_score": float(hit.fused_score) if hit.fused_score else None,
    }


MODES = {"dense": 1, "lexical": 2, "hybrid": 3}  # router_pb2.RetrievalMode values
FUSIONS = {"rrf": 1, "weighted": 2}  # router_pb2.FusionMethod values


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
