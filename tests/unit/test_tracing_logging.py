"""Tracing switches (off unless the OTEL_* environment asks; nothing of OpenTelemetry runs when off), spans in
process with the SDK's in-memory exporter, and the access-log line as JSON and as text."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ragcluster import tracing
from ragcluster.log import annotate, log_request, request_fields, request_id, setup_logging


@pytest.mark.parametrize(("env", "on"), [
    ({}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317/v1/traces"}, True),
    ({"OTEL_TRACES_EXPORTER": "console"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317", "OTEL_TRACES_EXPORTER": "none"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317", "OTEL_SDK_DISABLED": "true"}, False),
    ({"OTEL_SERVICE_NAME": "x"}, False),
])
def test_tracing_is_on_only_when_the_environment_asks(env, on):
    assert tracing.wanted(env) is on
    assert tracing.setup("t", env=env) is on
    assert tracing.enabled() is on
    tracing.shutdown()
    assert not tracing.enabled()


def test_off_means_no_interceptors_no_spans():
    assert not tracing.enabled()
    assert tracing.client_interceptors() == []
    with tracing.span("x") as current:
        assert current is tracing.NO_SPAN
    assert tracing.start_span("y") is tracing.NO_SPAN
    with tracing.activate(tracing.NO_SPAN), tracing.call_attributes(shard=1):
        pass

    @tracing.traced("z")
    async def work() -> int:
        return 7

    assert asyncio.run(work()) == 7


def _parent(span: ReadableSpan) -> int:
    assert span.parent is not None
    return span.parent.span_id


def test_spans_nest_and_carry_events_and_call_attributes():
    exporter = InMemorySpanExporter()
    assert tracing.setup("unit", exporter=exporter, batch=False)
    try:
        assert len(tracing.client_interceptors()) == 4  # one per call kind

        @tracing.traced("outer")
        async def outer() -> None:
            with tracing.span("inner", {"k": 1}):
                tracing.add_event("first_token")
            detached = tracing.start_span("detached")
            with tracing.activate(detached), tracing.span("under-detached"):
                pass
            detached.end()

        asyncio.run(outer())
    finally:
        tracing.shutdown()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"outer", "inner", "detached", "under-detached"}
    assert _parent(spans["inner"]) == spans["outer"].context.span_id
    assert _parent(spans["detached"]) == spans["outer"].context.span_id
    assert _parent(spans["under-detached"]) == spans["detached"].context.span_id
    assert [e.name for e in spans["inner"].events] == ["first_token"]
    assert spans["inner"].resource.attributes["service.name"] == "unit"
    assert len({s.context.trace_id for s in spans.values()}) == 1


def test_trace_id_from_traceparent():
    tid = "4bf92f3577b34da6a3ce929d0e0e4736"
    assert tracing.trace_id_from({"traceparent": f"00-{tid}-00f067aa0ba902b7-01"}) == tid
    assert tracing.trace_id_from({"traceparent": "garbage"}) == ""
    assert tracing.trace_id_from({}) == ""


@pytest.mark.parametrize("json_lines", [True, False])
def test_access_log_line(capsys, json_lines):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    setup_logging("INFO", json_lines=json_lines, name="router")
    token_rid, token_fields = request_id.set("abc123"), request_fields.set({})
    try:
        annotate(shards="2/3", time_to_first_token_ms=12.5)
        log_request("Ask", "OK", 0.0421, request_fields.get() or {})
    finally:
        request_fields.reset(token_fields)
        request_id.reset(token_rid)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    if json_lines:
        line = json.loads(err)
        assert line["logger"] == "ragcluster.access" and line["request_id"] == "abc123"
        assert line["rpc"] == "Ask" and line["code"] == "OK" and line["duration_ms"] == 42.1
        assert line["shards"] == "2/3" and line["time_to_first_token_ms"] == 12.5
    else:
        assert "[abc123]" in err and "rpc=Ask code=OK duration_ms=42.1 shards=2/3" in err


def test_annotate_without_an_access_log_is_a_no_op():
    assert request_fields.get() is None
    annotate(anything=1)  # nothing to add to, nothing raised


def test_client_calls_of_every_kind_get_a_span_and_send_their_context():
    """In process, over a real aio channel: unary and server-streaming calls each get a CLIENT span under the
    current span, and the server sees its traceparent; health checks get none."""
    import grpc

    from ragcluster.v1 import shard_pb2, shard_pb2_grpc

    seen: list[str] = []

    class Servicer(shard_pb2_grpc.ShardServiceServicer):
        async def Info(self, request, context):
            seen.append(dict(context.invocation_metadata()).get("traceparent", ""))
            return shard_pb2.ShardInfoResponse()

        async def Snapshot(self, request, context):
            seen.append(dict(context.invocation_metadata()).get("traceparent", ""))
            for _ in range(3):
                yield shard_pb2.SnapshotChunk()

    async def run() -> None:
        server = grpc.aio.server()
        servicer = Servicer()  # type: ignore[abstract]  # only Info and Snapshot are called
        shard_pb2_grpc.add_ShardServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                             interceptors=tracing.client_interceptors()) as channel:
            stub = shard_pb2_grpc.ShardServiceStub(channel)
            with tracing.span("root"):
                with tracing.call_attributes(shard=3, attempt="hedge"):
                    await stub.Info(shard_pb2.ShardInfoRequest())
                detached = tracing.start_span("generate")
                with tracing.activate(detached):
                    call = stub.Snapshot(shard_pb2.SnapshotRequest())
                assert len([c async for c in call]) == 3
                detached.end()
            for _ in range(100):  # client spans end from a done callback: give it its turn
                if len(exporter.get_finished_spans()) == 4:
                    break
                await asyncio.sleep(0.01)
        await server.stop(0)

    exporter = InMemorySpanExporter()
    tracing.setup("unit", exporter=exporter, batch=False)
    try:
        asyncio.run(run())
    finally:
        tracing.shutdown()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"root", "generate", "ShardService/Info", "ShardService/Snapshot"}
    info, snapshot = spans["ShardService/Info"], spans["ShardService/Snapshot"]
    assert _parent(info) == spans["root"].context.span_id
    assert _parent(snapshot) == spans["generate"].context.span_id
    assert info.attributes is not None
    assert info.attributes["ragcluster.shard"] == 3 and info.attributes["ragcluster.attempt"] == "hedge"
    assert info.attributes["rpc.grpc.status_code"] == 0
    assert [p.split("-")[2] for p in seen] == [f"{info.context.span_id:016x}", f"{snapshot.context.span_id:016x}"]
