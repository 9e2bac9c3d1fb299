"""A synchronous client for the router, used by the CLI, the demo and tests."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from ragcluster.channels import sync_channel
from ragcluster.convert import coverage_to_json, document_to_pb, filter_to_pb, hit_to_json, set_retrieval
from ragcluster.documents import Document
from ragcluster.security import ClientTls
from ragcluster.types import Condition
from ragcluster.v1 import common_pb2, router_pb2, router_pb2_grpc


@dataclass
class IngestResult:
    acknowledged: int = 0
    sent: int = 0
    unchanged: int = 0  # resume: already stored with the same content, not sent


class RouterClient:
    def __init__(self, address: str, timeout: float = 60.0, security: ClientTls | None = None):
        """``security``: TLS with the cluster's CA and an API key (None: plaintext, for --insecure clusters)."""
        self.address = address
        self.timeout = timeout
        self.channel = sync_channel(address, security)
        self.stub = router_pb2_grpc.RouterServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> RouterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def search(self, text: str | None = None, k: int = 10, vector: list[float] | None = None,
               timeout: float | None = None, where: list[Condition] | None = None,
               min_coverage: float | None = None, collection: str = "", mode: str = "", fusion: str = "",
               rrf_k: int | None = None, alpha: float | None = None, window: int | None = None) -> dict:
        """``where``: filter conditions, e.g. ``[{"field": "topic", "equals": "science"}, {"field": "n", "gte": 3}]``.
        ``min_coverage``: fail (UNAVAILABLE, see ``coverage_from_error``) below this share of shards.
        ``mode``: dense | lexical | hybrid ('' = the router's default); ``fusion`` (rrf | weighted), ``rrf_k``,
        ``alpha``, ``window``: how hybrid fuses."""
        request = router_pb2.SearchRequest(k=k, collection=collection)
        set_retrieval(request, mode, fusion, rrf_k, alpha, window)
        if min_coverage is not None:
            request.min_coverage = min_coverage
        if where:
            request.filter.CopyFrom(filter_to_pb(where))
        if vector is not None:
            request.vector.values.extend(vector)
        else:
            request.text = text or ""
        response = self.stub.Search(request, timeout=timeout or self.timeout)
        return {
            "hits": [hit_to_json(h) for h in response.hits],
            "coverage": coverage_to_json(response.coverage),
            "collection": response.collection,
            "embedding_model": response.embedding_model,
            "mode": {1: "dense", 2: "lexical", 3: "hybrid"}.get(response.mode, ""),
            "timings": {"embed_seconds": response.timings.embed_seconds,
                        "retrieve_seconds": response.timings.retrieve_seconds,
                        "total_seconds": response.timings.total_seconds},
        }

    def ask_events(self, question: str, k: int = 0, max_tokens: int | None = None, temperature: float | None = None,
                   seed: int | None = None, repetition_penalty: float | None = None,
                   timeout: float | None = None, where: list[Condition] | None = None, mode: str = "",
                   fusion: str = "", rrf_k: int | None = None, alpha: float | None = None,
                   window: int | None = None) -> Iterator[router_pb2.AskEvent]:
        sampling = common_pb2.SamplingParams()
        if max_tokens is not None:
            sampling.max_tokens = max_tokens
        if temperature is not None:
            sampling.temperature = temperature
        if seed is not None:
            sampling.seed = seed
        if repetition_penalty is not None:
            sampling.repetition_penalty = repetition_penalty
        request = router_pb2.AskRequest(question=question, k=k, sampling=sampling)
        set_retrieval(request, mode, fusion, rrf_k, alpha, window)
        if where:
            request.filter.CopyFrom(filter_to_pb(where))
        yield from self.stub.Ask(request, timeout=timeout or self.timeout)

    def ask(self, question: str, on_delta: Callable[[str], object] | None = None, **kwargs: Any) -> dict[str, Any]:
        result: dict[str, Any] = {"answer": "", "citations": [], "hits": [], "coverage": {}, "timings": {}}
        for event in self.ask_events(question, **kwargs):
            kind = event.WhichOneof("event")
            if kind == "hits":
                result["hits"] = [hit_to_json(h) for h in event.hits.hits]
                result["coverage"] = coverage_to_json(event.hits.coverage)
            elif kind == "delta":
                result["answer"] += event.delta.text
                if on_delta:
                    on_delta(event.delta.text)
            elif kind == "complete":
                c = event.complete
                result.update(
                    citations=list(c.citations), finish_reason=c.finish_reason, prompt_tokens=c.prompt_tokens,
                    completion_tokens=c.completion_tokens, generator=c.generator, model=c.model,
                    timings={f.name: getattr(c.timings, f.name) for f in c.timings.DESCRIPTOR.fields},
                )
        return result

    def lookup(self, ids: list[str], collection: str = "") -> dict[str, str]:
        """Stored ids among ``ids`` -> their content hashes."""
        response = self.stub.Lookup(router_pb2.LookupRequest(ids=ids, collection=collection), timeout=self.timeout)
        return dict(zip(response.ids, response.content_hashes))

    def ingest(self, documents: Iterable[Document], batch_size: int = 64,
               on_ack: Callable[[int], object] | None = None, timeout: float | None = None,
               resume: bool = False, on_skip: Callable[[int], object] | None = None,
               collection: str = "") -> IngestResult:
        """Stream documents in batches; returns once every sent batch was acknowledged (durable).

        ``resume``: documents already stored with the same content hash are not sent again."""
        result = IngestResult()

        def unchanged_dropped(batch: list[Document]) -> list[Document]:
            if not resume:
                return batch
            stored = self.lookup([d.id for d in batch], collection)
            fresh = [d for d in batch if stored.get(d.id) != d.content_hash()]
            skipped = len(batch) - len(fresh)
            result.unchanged += skipped
            if skipped and on_skip:
                on_skip(skipped)
            return fresh

        # consumed by grpc's sender thread while responses stream back: pipelined
        def requests() -> Iterator[router_pb2.IngestRequest]:
            batch: list[Document] = []
            for doc in documents:
                batch.append(doc)
                if len(batch) >= batch_size:
                    fresh = unchanged_dropped(batch)
                    batch = []
                    if fresh:
                        result.sent += len(fresh)
                        yield router_pb2.IngestRequest(documents=[document_to_pb(d) for d in fresh],
                                                       collection=collection)
            fresh = unchanged_dropped(batch) if batch else []
            if fresh:
                result.sent += len(fresh)
                yield router_pb2.IngestRequest(documents=[document_to_pb(d) for d in fresh], collection=collection)

        for response in self.stub.Ingest(requests(), timeout=timeout):
            result.acknowledged += response.acknowledged
            if on_ack:
                on_ack(response.acknowledged)
        return result

    def delete(self, ids: list[str], collection: str = "") -> int:
        return self.stub.Delete(router_pb2.DeleteRequest(ids=ids, collection=collection), timeout=self.timeout).deleted

    def switch(self, collection: str, force: bool = False) -> dict:
        """Make ``collection`` the active one; ``force`` even if it holds fewer documents than the router's
        --switch-min-documents."""
        r = self.stub.SwitchCollection(router_pb2.SwitchCollectionRequest(name=collection, force=force),
                                       timeout=self.timeout)
        return {"previous": r.previous, "active": r.active, "documents": r.documents,
                "embedding_model": r.embedding_model}

    def status(self, collection: str = "") -> dict:
        r = self.stub.ClusterStatus(router_pb2.ClusterStatusRequest(collection=collection), timeout=self.timeout)
        return {
            "collection": r.collection,
            "collections": list(r.collections),
            "documents": r.documents,
            "embedding_model": r.embedding_model,
            "dim": r.dim,
            "max_k": r.max_k,
            "shards": [
                {"shard": s.shard, "documents": s.documents, "replicas": [
                    {"address": x.address, "health": x.health, "documents": x.documents, "sequence": x.sequence,
                     "index_factory": x.index_factory} for x in s.replicas]}
                for s in r.shards
            ],
            "generators": [
                {"address": g.address, "health": g.health, "model": g.model,
                 "max_context_length": g.max_context_length} for g in r.generators
            ],
        }


def coverage_from_error(error: grpc.RpcError) -> dict | None:
    """The Coverage a router put in an error's details (min_coverage not met), as JSON; else None."""
    from grpc_status import rpc_status

    if not isinstance(error, grpc.Call):
        return None
    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else []:
        coverage = common_pb2.Coverage()
        if detail.Unpack(coverage):
            return coverage_to_json(coverage)
    return None
