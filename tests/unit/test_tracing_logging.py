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


def test_off_means_no_metadata_no_spans():
    assert not tracing.enabled()
    with tracing.client_call("ShardService/Search", shard=1) as metadata:
        assert metadata is None
    with tracing.span("x") as current:
        assert current is tracing.NO_SPAN
    assert tracing.start_span("y") is tracing.NO_SPAN
    with tracing.activate(tracing.NO_SPAN):
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


def _serve_and_call() -> tuple[list[str], InMemorySpanExporter]:
    """In process, over a real aio channel: a unary call, a server stream under a detached span (as the Ask
    path's ``generate``), and a call that fails; what the server saw as traceparent, and the spans."""
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

        async def Fetch(self, request, context):
            seen.append(dict(context.invocation_metadata()).get("traceparent", ""))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ids: bad")

    async def run() -> None:
        server = grpc.aio.server()
        servicer = Servicer()  # type: ignore[abstract]  # only Info, Snapshot and Fetch are called
        shard_pb2_grpc.add_ShardServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = shard_pb2_grpc.ShardServiceStub(channel)
            with tracing.span("root"):
                with tracing.client_call("ShardService/Info", shard=3, attempt="hedge") as metadata:
                    await stub.Info(shard_pb2.ShardInfoRequest(), metadata=metadata)
                detached = tracing.start_span("generate")
                with tracing.client_call("ShardService/Snapshot", parent=detached) as metadata:
                    assert len([c async for c in stub.Snapshot(shard_pb2.SnapshotRequest(), metadata=metadata)]) == 3
                detached.end()
                with pytest.raises(grpc.aio.AioRpcError), \
                        tracing.client_call("ShardService/Fetch") as metadata:
                    await stub.Fetch(shard_pb2.FetchRequest(), metadata=metadata)
        await server.stop(0)

    exporter = InMemorySpanExporter()
    tracing.setup("unit", exporter=exporter, batch=False)
    try:
        asyncio.run(run())
    finally:
        tracing.shutdown()
    return seen, exporter


def test_client_calls_get_a_span_and_send_their_context():
    """A sampled trace: each call is a CLIENT span under the current (or the given) span, ended with the call's
    status, and the server sees that span as the traceparent's parent id."""
    seen, exporter = _serve_and_call()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"root", "generate", "ShardService/Info", "ShardService/Snapshot", "ShardService/Fetch"}
    info, snapshot, fetch = spans["ShardService/Info"], spans["ShardService/Snapshot"], spans["ShardService/Fetch"]
    assert _parent(info) == spans["root"].context.span_id
    assert _parent(snapshot) == spans["generate"].context.span_id
    assert _parent(fetch) == spans["root"].context.span_id
    assert info.attributes is not None and fetch.attributes is not None
    assert info.attributes["ragcluster.shard"] == 3 and info.attributes["ragcluster.attempt"] == "hedge"
    assert info.attributes["rpc.service"] == "ragcluster.v1.ShardService" and info.attributes["rpc.method"] == "Info"
    assert info.attributes["rpc.grpc.status_code"] == 0
    assert fetch.attributes["rpc.grpc.status_code"] == 3  # INVALID_ARGUMENT
    assert not fetch.status.is_ok
    trace_id = f"{spans['root'].context.trace_id:032x}"
    assert [p.rsplit("-", 1)[0] for p in seen] == [f"00-{trace_id}-{s.context.span_id:016x}"
                                                   for s in (info, snapshot, fetch)]
    assert all(int(p.rsplit("-", 1)[1], 16) & 1 for p in seen)  # the sampled flag


def test_an_unsampled_trace_sends_its_context_without_client_spans(monkeypatch):
    """Sampling says no: not one client span is made, yet every call carries the trace's id (the callee's
    request id) with the not-sampled flag, so the callee records nothing either."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    seen, exporter = _serve_and_call()
    assert exporter.get_finished_spans() == ()
    assert len(seen) == 3 and len({p.split("-")[1] for p in seen}) == 1
    assert all(tracing.trace_id_from({"traceparent": p}) for p in seen)
    assert not any(int(p.rsplit("-", 1)[1], 16) & 1 for p in seen)  # not sampled


UNSAMPLED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
SAMPLED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(("traceparent", "passed_on"), [
    (UNSAMPLED, True),
    (SAMPLED, False),
    ("", False),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra", False),  # version 00 has four fields
    ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", False),
    ("00-00000000000000000000000000000000-00f067aa0ba902b7-00", False),
    ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-00", False),  # upper case is invalid
    ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02-future", True),  # a later version may add fields
])
def test_an_unsampled_caller_costs_the_server_no_span(traceparent, passed_on):
    """Under the default parent-based sampler, an RPC whose caller did not sample makes no span at all, logs
    the caller's trace id and passes its traceparent on to the calls it makes; anything else gets a real
    server span (a malformed traceparent: a new root, as the propagator would make)."""
    exporter = InMemorySpanExporter()
    tracing.setup("unit", exporter=exporter, batch=False)
    try:
        metadata = {"traceparent": traceparent} if traceparent else {}
        server = tracing.server_span("ShardService", "Search", metadata).__enter__()
        with tracing.client_call("ShardService/Fetch") as sent:
            pass
        server.finish("OK")
        with tracing.client_call("ShardService/Fetch") as after:
            assert after is None  # outside any RPC: nothing to pass on
    finally:
        tracing.shutdown()
    spans = exporter.get_finished_spans()
    if passed_on:
        assert isinstance(server, tracing.PassedOn) and spans == ()
        assert sent == (("traceparent", traceparent),)
        assert server.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    else:
        assert isinstance(server, tracing.ServerSpan)
        names = [s.name for s in spans]
        assert "ShardService/Search" in names
        if traceparent == SAMPLED:
            assert server.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736" and "ShardService/Fetch" in names


def test_a_sampler_that_ignores_the_parent_still_gets_server_spans(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    exporter = InMemorySpanExporter()
    tracing.setup("unit", exporter=exporter, batch=False)
    try:
        server = tracing.server_span("ShardService", "Search", {"traceparent": UNSAMPLED}).__enter__()
        server.finish("OK")
    finally:
        tracing.shutdown()
    assert isinstance(server, tracing.ServerSpan)
    assert [s.name for s in exporter.get_finished_spans()] == ["ShardService/Search"]


def test_spans_inside_an_unsampled_trace_are_skipped(monkeypatch):
    """Under a parent-based sampler, a child of an unsampled span would record nothing: span, start_span and
    traced hand out NO_SPAN there (no OpenTelemetry work), as inside an RPC whose caller did not sample; with no
    trace at all they still start a new root, which the sampler decides on its own."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    exporter = InMemorySpanExporter()
    tracing.setup("unit", exporter=exporter, batch=False)
    seen: list[object] = []

    @tracing.traced("decorated")
    async def work() -> None:
        with tracing.span("inner") as inner:
            seen.append(inner)

    try:
        with tracing.span("root") as root:
            assert root is not tracing.NO_SPAN and not root.is_recording()  # the sampler said no
            with tracing.span("child") as child:
                seen.append(child)
            seen.append(tracing.start_span("detached"))
            asyncio.run(work())
        server = tracing.server_span("ShardService", "Search", {"traceparent": UNSAMPLED}).__enter__()
        with tracing.span("in-passed-on") as passed:
            seen.append(passed)
        server.finish("OK")
    finally:
        tracing.shutdown()
    assert seen == [tracing.NO_SPAN] * 4
    assert exporter.get_finished_spans() == ()
