"""A streaming handler that wraps an inner async generator closes it the moment it is closed itself.

grpc's write API (see ragcluster.interceptors) closes the handler's generator when the client cancels while
it sits at a ``yield``. The inner generator's cleanup must then run at once (the router's Ask cancels the
generation it started; the node's Generate aborts the engine request), not whenever the event loop's
async-generator finalizer gets to it after garbage collection: meanwhile the generation ran to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

from generator_node.service import GeneratorServicer
from ragcluster.v1 import common_pb2, generator_pb2, router_pb2
from router.service import RouterServicer


class Inner:
    """An inner stream that records whether its cleanup ran."""

    def __init__(self, items: list[object]) -> None:
        self.items = items
        self.closed = False

    async def stream(self, *args: object, **kwargs: object) -> AsyncIterator[object]:
        try:
            for item in self.items:
                yield item
                await asyncio.sleep(0)  # the rest of the stream would take time
        finally:
            self.closed = True


async def close_after_first(outer: AsyncIterator[Any]) -> Any:
    first = await anext(outer)
    await outer.aclose()  # type: ignore[attr-defined]  # what the interceptor does when the client cancels
    return first


async def test_router_ask_closes_its_inner_stream_at_once() -> None:
    inner = Inner([router_pb2.AskEvent(hits=router_pb2.AskHits()), router_pb2.AskEvent()])
    servicer = SimpleNamespace(_admit=contextlib.nullcontext, _ask=inner.stream)
    first = await close_after_first(RouterServicer.Ask(servicer, router_pb2.AskRequest(), None))  # type: ignore[arg-type]
    assert first.WhichOneof("event") == "hits"
    assert inner.closed  # no event-loop turn in between: closed by Ask itself, not by the GC finalizer


async def test_router_ingest_closes_its_inner_stream_at_once() -> None:
    inner = Inner([router_pb2.IngestResponse(), router_pb2.IngestResponse()])
    servicer = SimpleNamespace(_admit=contextlib.nullcontext, _ingest=inner.stream)
    await close_after_first(RouterServicer.Ingest(servicer, None, None))  # type: ignore[arg-type]
    assert inner.closed


async def test_generator_node_closes_the_engine_stream_at_once() -> None:
    inner = Inner([SimpleNamespace(finished=False, text="a"), SimpleNamespace(finished=False, text="b")])
    engine = SimpleNamespace(llm=object(), tokenizer=object(), check_token_ids=lambda ids: None,
                             generate=inner.stream)
    servicer = GeneratorServicer(engine)  # type: ignore[arg-type]
    request = generator_pb2.GenerateRequest(token_ids=generator_pb2.TokenIds(ids=[1, 2]),
                                            sampling=common_pb2.SamplingParams(max_tokens=4))
    first = await close_after_first(servicer.Generate(request, None))  # type: ignore[arg-type]
    assert first.delta.text == "a"
    assert inner.closed  # so the engine's own finally (abort the request) runs now


class EndedCall:
    """A servicer context whose call is already over: grpc.aio's write fails the way it does then."""

    def __init__(self) -> None:
        self.aborted: list[object] = []

    async def write(self, message: object) -> None:
        from grpc._cython import cygrpc

        raise cygrpc.ExecuteBatchError('Failed "execute_batch"')

    def code(self) -> None:
        return None

    def time_remaining(self) -> float:
        return 0.0

    async def abort(self, *args: object) -> None:
        self.aborted.append(args)

    async def abort_with_status(self, *args: object) -> None:
        self.aborted.append(args)


async def test_a_message_the_ended_call_cannot_take_counts_cancelled_not_internal() -> None:
    """The client's deadline passes (or it cancels) between two messages: grpc's write fails; that is the
    call ending, not a server fault (the fuzz test counts any INTERNAL as a bug)."""
    import grpc
    import pytest

    from ragcluster.interceptors import RPC_HANDLED, CallEnded, ServerInterceptor

    closed: list[bool] = []

    async def stream(request: object, context: object) -> AsyncIterator[str]:
        try:
            yield "hits"
            yield "more"
        finally:
            closed.append(True)

    async def continuation(details: object) -> grpc.RpcMethodHandler:
        return grpc.unary_stream_rpc_method_handler(stream)

    details = SimpleNamespace(method="/ragcluster.v1.Probe/Stream", invocation_metadata=())
    handler = await ServerInterceptor().intercept_service(continuation, details)
    assert handler is not None and handler.unary_stream is not None
    counted = {code: RPC_HANDLED.labels("Probe", "Stream", code)._value.get() for code in ("CANCELLED", "INTERNAL")}
    context = EndedCall()
    with pytest.raises(CallEnded):  # a CancelledError: grpc ends the call quietly
        await cast(Any, handler.unary_stream)(object(), context)  # a coroutine under grpc.aio
    assert RPC_HANDLED.labels("Probe", "Stream", "CANCELLED")._value.get() == counted["CANCELLED"] + 1
    assert RPC_HANDLED.labels("Probe", "Stream", "INTERNAL")._value.get() == counted["INTERNAL"]
    assert context.aborted == []  # no second status on a call that has one
    assert closed == [True]  # the handler's cleanup ran
