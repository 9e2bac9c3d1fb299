"""RouterClient's typed results: protobuf -> frozen dataclasses (ragcluster/convert.py) and the JSON that
`--json` prints from them (whose shapes scripts and tests/deploy/docker_e2e.py parse: pinned here)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from ragcluster.client import RouterClient
from ragcluster.convert import (
    ask_event_from_pb,
    cluster_status_from_pb,
    coverage_from_pb,
    search_result_from_pb,
    switch_result_from_pb,
    to_json,
)
from ragcluster.types import AnswerDelta, AskComplete, AskHits, Coverage, Hit, SearchResult
from ragcluster.v1 import common_pb2, router_pb2


def _hit_pb(doc_id: str, score: float, shard: int, **metadata: Any) -> common_pb2.Hit:
    doc = common_pb2.Document(id=doc_id, text=f"text of {doc_id}", title=f"title {doc_id}")
    for key, value in metadata.items():
        if isinstance(value, int):
            doc.metadata[key].int_value = value
        else:
            doc.metadata[key].string_value = value
    return common_pb2.Hit(document=doc, score=score, shard=shard)


def _coverage_pb() -> common_pb2.Coverage:
    return common_pb2.Coverage(shards_total=3, shards_answered=2, documents_searched=20, documents_total=30,
                               degraded=True, failures=[common_pb2.ShardFailure(
                                   shard=2, reason=common_pb2.ShardFailureReason.Value("SHARD_FAILURE_REASON_TIMEOUT"),
                                   message="deadline")])


COVERAGE_JSON = {"shards_total": 3, "shards_answered": 2, "documents_searched": 20, "documents_total": 30,
                 "degraded": True,
                 "failures": [{"shard": 2, "reason": "SHARD_FAILURE_REASON_TIMEOUT", "message": "deadline"}]}


def _hit_json(doc_id: str, score: float, shard: int, metadata: dict[str, Any], parent_id: str,
              **ranks: Any) -> dict[str, Any]:
    return {"id": doc_id, "score": score, "shard": shard, "title": f"title {doc_id}", "text": f"text of {doc_id}",
            "metadata": metadata, "parent_id": parent_id, "dense_rank": None, "dense_score": None,
            "lexical_rank": None, "lexical_score": None, "fused_score": None, **ranks}


def test_search_result_from_pb_and_its_json_shape() -> None:
    chunk = _hit_pb("doc#1", 0.75, 1, parent_id="doc", chunk=1)
    chunk.dense_rank, chunk.dense_score, chunk.fused_score = 2, 0.5, 0.75
    response = router_pb2.SearchResponse(hits=[_hit_pb("a", 0.5, 0), chunk], coverage=_coverage_pb(),
                                         collection="default", embedding_model="minilm",
                                         mode=router_pb2.RetrievalMode.Value("RETRIEVAL_MODE_HYBRID"),
                                         timings=router_pb2.Timings(embed_seconds=0.25, total_seconds=1.0))
    result = search_result_from_pb(response)
    assert result.mode == "hybrid" and result.collection == "default" and result.embedding_model == "minilm"
    assert [h.id for h in result.hits] == ["a", "doc#1"] and result.hits[1].parent_id == "doc"
    assert result.hits[1].dense_rank == 2 and result.hits[1].lexical_rank is None
    assert result.coverage.failures[0].reason == "SHARD_FAILURE_REASON_TIMEOUT" and result.timings.total_seconds == 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.hits[0].score = 1.0  # type: ignore[misc]
    assert to_json(result) == {
        "hits": [_hit_json("a", 0.5, 0, {}, "a"),
                 _hit_json("doc#1", 0.75, 1, {"parent_id": "doc", "chunk": 1}, "doc", dense_rank=2, dense_score=0.5,
                           fused_score=0.75)],
        "coverage": COVERAGE_JSON, "collection": "default", "embedding_model": "minilm", "mode": "hybrid",
        "timings": {"embed_seconds": 0.25, "retrieve_seconds": 0.0, "prompt_seconds": 0.0,
                    "time_to_first_token_seconds": 0.0, "generate_seconds": 0.0, "total_seconds": 1.0},
    }


def test_coverage_status_and_switch_json_shapes() -> None:
    assert to_json(coverage_from_pb(_coverage_pb())) == COVERAGE_JSON
    status = router_pb2.ClusterStatusResponse(
        collection="default", collections=["default", "v2"], documents=7, embedding_model="minilm", dim=384,
        max_k=100,
        shards=[router_pb2.ShardStatus(shard=0, documents=7, replicas=[router_pb2.ReplicaStatus(
            address="127.0.0.1:1", health="SERVING", documents=7, sequence=3, index_factory="Flat")])],
        generators=[router_pb2.GeneratorStatus(address="127.0.0.1:2", health="SERVING", model="tiny",
                                               max_context_length=2048)])
    typed = cluster_status_from_pb(status)
    assert typed.shards[0].replicas[0].sequence == 3 and typed.generators[0].model == "tiny"
    assert to_json(typed) == {
        "collection": "default", "collections": ["default", "v2"], "documents": 7, "embedding_model": "minilm",
        "dim": 384, "max_k": 100,
        "shards": [{"shard": 0, "documents": 7, "replicas": [{"address": "127.0.0.1:1", "health": "SERVING",
                                                              "documents": 7, "sequence": 3,
                                                              "index_factory": "Flat"}]}],
        "generators": [{"address": "127.0.0.1:2", "health": "SERVING", "model": "tiny", "max_context_length": 2048}],
    }
    switched = switch_result_from_pb(router_pb2.SwitchCollectionResponse(previous="default", active="v2",
                                                                         documents=7, embedding_model="e5"))
    assert to_json(switched) == {"previous": "default", "active": "v2", "documents": 7, "embedding_model": "e5"}
    with pytest.raises(TypeError):
        to_json({"not": "a result"})


def _ask_stream() -> list[router_pb2.AskEvent]:
    return [
        router_pb2.AskEvent(hits=router_pb2.AskHits(hits=[_hit_pb("a", 0.5, 0), _hit_pb("b", 0.25, 1)],
                                                    coverage=_coverage_pb(), collection="default")),
        router_pb2.AskEvent(delta=router_pb2.AnswerDelta(text="Tea ")),
        router_pb2.AskEvent(delta=router_pb2.AnswerDelta(text="is a leaf [1].")),
        router_pb2.AskEvent(complete=router_pb2.AskComplete(
            citations=["a"], finish_reason="stop", prompt_tokens=40, completion_tokens=6, generator="127.0.0.1:3",
            model="tiny", timings=router_pb2.Timings(time_to_first_token_seconds=0.125, total_seconds=0.5))),
        router_pb2.AskEvent(),  # an event kind this client does not know (a newer router): skipped
    ]


class _FakeStub:
    """Only the Ask RPC, answering a fixed stream (the assembly of events into an Answer is pure logic)."""

    def Ask(self, request: router_pb2.AskRequest, timeout: float | None = None) -> Iterator[router_pb2.AskEvent]:
        assert request.question == "What is tea?" and request.k == 2
        return iter(_ask_stream())


def test_ask_events_are_typed_and_add_up_to_an_answer() -> None:
    kinds = [type(ask_event_from_pb(e)) for e in _ask_stream()]
    assert kinds == [AskHits, AnswerDelta, AnswerDelta, AskComplete, type(None)]
    client = RouterClient("127.0.0.1:1")  # no connection is made: the stub is replaced
    try:
        client.stub = _FakeStub()  # type: ignore[assignment]
        events = list(client.ask_events("What is tea?", k=2))
        assert [type(e) for e in events] == [AskHits, AnswerDelta, AnswerDelta, AskComplete]
        pieces: list[str] = []
        answer = client.ask("What is tea?", k=2, on_delta=pieces.append)
    finally:
        client.close()
    assert pieces == ["Tea ", "is a leaf [1]."] and answer.answer == "Tea is a leaf [1]."
    assert answer.citations == ("a",) and [h.id for h in answer.hits] == ["a", "b"]
    assert answer.coverage.shards_answered == 2 and answer.timings.time_to_first_token_seconds == 0.125
    shown = to_json(answer)
    assert list(shown) == ["answer", "citations", "hits", "coverage", "timings", "finish_reason", "prompt_tokens",
                           "completion_tokens", "generator", "model"]
    assert shown["citations"] == ["a"] and shown["hits"][0] == _hit_json("a", 0.5, 0, {}, "a")
    assert (shown["completion_tokens"], shown["model"], shown["finish_reason"]) == (6, "tiny", "stop")
    assert shown["timings"]["total_seconds"] == 0.5 and shown["coverage"] == COVERAGE_JSON


def test_results_are_values() -> None:
    hit = Hit(id="a", score=1.0, shard=0)
    assert SearchResult(hits=(hit,), coverage=Coverage()) == SearchResult(hits=(Hit("a", 1.0, 0),), coverage=Coverage())
    assert to_json(SearchResult(hits=(), coverage=Coverage()))["coverage"]["failures"] == []
