"""A synchronous client for the router, used by the CLI, the demo and tests."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc

from ragcluster.channels import sync_channel
from ragcluster.convert import (
    ask_event_from_pb,
    cluster_status_from_pb,
    coverage_from_pb,
    document_to_pb,
    filter_to_pb,
    search_result_from_pb,
    set_retrieval,
    switch_result_from_pb,
)
from ragcluster.documents import Document
from ragcluster.security import ClientTls
from ragcluster.types import (
    Answer,
    AnswerDelta,
    AskComplete,
    AskEvent,
    AskHits,
    ClusterStatus,
    Condition,
    Coverage,
    Hit,
    IngestResult,
    SearchResult,
    SwitchResult,
)
from ragcluster.v1 import common_pb2, router_pb2, router_pb2_grpc


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
               rrf_k: int | None = None, alpha: float | None = None, window: int | None = None) -> SearchResult:
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
        return search_result_from_pb(self.stub.Search(request, timeout=timeout or self.timeout))

    def ask_events(self, question: str, k: int = 0, max_tokens: int | None = None, temperature: float | None = None,
                   seed: int | None = None, repetition_penalty: float | None = None,
                   stream_interval: int | None = None, timeout: float | None = None,
                   where: list[Condition] | None = None, mode: str = "", fusion: str = "", rrf_k: int | None = None,
                   alpha: float | None = None, window: int | None = None) -> Iterator[AskEvent]:
        """The answer's events as they stream: AskHits first, AnswerDelta pieces, AskComplete last."""
        sampling = common_pb2.SamplingParams()
        if max_tokens is not None:
            sampling.max_tokens = max_tokens
        if temperature is not None:
            sampling.temperature = temperature
        if seed is not None:
            sampling.seed = seed
        if repetition_penalty is not None:
            sampling.repetition_penalty = repetition_penalty
        if stream_interval is not None:  # tokens per delta after the first (unset: the node's default)
            sampling.stream_interval = stream_interval
        request = router_pb2.AskRequest(question=question, k=k, sampling=sampling)
        set_retrieval(request, mode, fusion, rrf_k, alpha, window)
        if where:
            request.filter.CopyFrom(filter_to_pb(where))
        for pb in self.stub.Ask(request, timeout=timeout or self.timeout):
            event = ask_event_from_pb(pb)
            if event is not None:
                yield event

    def ask(self, question: str, on_delta: Callable[[str], object] | None = None, **kwargs: Any) -> Answer:
        """The whole answer (``kwargs`` as for ``ask_events``); ``on_delta`` sees each piece of text as it comes."""
        text: list[str] = []
        hits: tuple[Hit, ...] = ()
        coverage = Coverage()
        complete = AskComplete()
        for event in self.ask_events(question, **kwargs):
            if isinstance(event, AskHits):
                hits, coverage = event.hits, event.coverage
            elif isinstance(event, AnswerDelta):
                text.append(event.text)
                if on_delta:
                    on_delta(event.text)
            else:
                complete = event
        return Answer(answer="".join(text), citations=complete.citations, hits=hits, coverage=coverage,
                      timings=complete.timings, finish_reason=complete.finish_reason,
                      prompt_tokens=complete.prompt_tokens, completion_tokens=complete.completion_tokens,
                      generator=complete.generator, model=complete.model)

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
        acknowledged = sent = unchanged = 0

        def unchanged_dropped(batch: list[Document]) -> list[Document]:
            nonlocal unchanged
            if not resume:
                return batch
            stored = self.lookup([d.id for d in batch], collection)
            fresh = [d for d in batch if stored.get(d.id) != d.content_hash()]
            skipped = len(batch) - len(fresh)
            unchanged += skipped
            if skipped and on_skip:
                on_skip(skipped)
            return fresh

        # consumed by grpc's sender thread while responses stream back: pipelined
        def requests() -> Iterator[router_pb2.IngestRequest]:
            nonlocal sent
            batch: list[Document] = []
            for doc in documents:
                batch.append(doc)
                if len(batch) >= batch_size:
                    fresh = unchanged_dropped(batch)
                    batch = []
                    if fresh:
                        sent += len(fresh)
                        yield router_pb2.IngestRequest(documents=[document_to_pb(d) for d in fresh],
                                                       collection=collection)
            fresh = unchanged_dropped(batch) if batch else []
            if fresh:
                sent += len(fresh)
                yield router_pb2.IngestRequest(documents=[document_to_pb(d) for d in fresh], collection=collection)

        for response in self.stub.Ingest(requests(), timeout=timeout):
            acknowledged += response.acknowledged
            if on_ack:
                on_ack(response.acknowledged)
        return IngestResult(acknowledged=acknowledged, sent=sent, unchanged=unchanged)

    def delete(self, ids: list[str], collection: str = "") -> int:
        return self.stub.Delete(router_pb2.DeleteRequest(ids=ids, collection=collection), timeout=self.timeout).deleted

    def switch(self, collection: str, force: bool = False) -> SwitchResult:
        """Make ``collection`` the active one; ``force`` even if it holds fewer documents than the router's
        --switch-min-documents."""
        return switch_result_from_pb(self.stub.SwitchCollection(
            router_pb2.SwitchCollectionRequest(name=collection, force=force), timeout=self.timeout))

    def status(self, collection: str = "") -> ClusterStatus:
        return cluster_status_from_pb(self.stub.ClusterStatus(router_pb2.ClusterStatusRequest(collection=collection),
                                                              timeout=self.timeout))


def coverage_from_error(error: grpc.RpcError) -> Coverage | None:
    """The Coverage a router put in an error's details (min_coverage not met); else None."""
    from grpc_status import rpc_status

    if not isinstance(error, grpc.Call):
        return None
    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else []:
        coverage = common_pb2.Coverage()
        if detail.Unpack(coverage):
            return coverage_from_pb(coverage)
    return None
