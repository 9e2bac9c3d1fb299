"""Cross-cutting server work for every RPC: correlation id, per-RPC metrics, and the one error boundary.

Domain errors (ragcluster.errors) become their status code with the message; an unexpected exception is
logged once with its traceback and answered INTERNAL. The server keeps serving either way.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Generic, TypeVar, cast

import grpc
from prometheus_client import Counter, Gauge, Histogram

from ragcluster import tracing
from ragcluster.errors import InvalidArgument, RagclusterError
from ragcluster.log import log_request, request_fields, request_id
from ragcluster.security import Authorizer

logger = logging.getLogger(__name__)
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
# what grpc.aio calls a handler's behaviour with: the request (or the request stream) and the context
_Unary = Callable[[_Req, grpc.aio.ServicerContext[_Req, _Resp]], Awaitable[_Resp]]
_Streaming = Callable[[_Req, grpc.aio.ServicerContext[_Req, _Resp]], AsyncIterator[_Resp]]

REQUEST_ID_KEY = "x-request-id"

try:  # what grpc.aio's context.write raises when the call ended under the handler (client gone, deadline passed)
    from grpc._cython.cygrpc import ExecuteBatchError as _ExecuteBatchError  # type: ignore[import-not-found]

    _SEND_FAILED: tuple[type[BaseException], ...] = (_ExecuteBatchError,)
except ImportError:  # pragma: no cover - another grpc build
    _SEND_FAILED = ()


class CallEnded(asyncio.CancelledError):
    """A streamed message could not be sent because the call was already over (the client cancelled or its
    deadline passed between two messages): counted CANCELLED like a cancellation grpc delivers itself, not
    INTERNAL, and no status is sent (the call has one)."""

RPC_HANDLED = Counter(
    "ragcluster_grpc_server_handled", "RPCs completed on the server, by service, method and status code",
    ["service", "method", "code"],
)
RPC_SECONDS = Histogram(
    "ragcluster_grpc_server_handling_seconds",
    "RPC latency on the server (for streams: until the stream ends), by service and method",
    ["service", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RPC_IN_FLIGHT = Gauge("ragcluster_grpc_server_in_flight", "RPCs in progress, by service and method",
                      ["service", "method"])


def preinitialise(service: str, methods: Iterable[str]) -> None:
    """Create label children up front so dashboards see zeros rather than missing series.

    ``service`` is the short service name (``RouterService``), as in the ``service`` label."""
    for method in methods:
        RPC_HANDLED.labels(service, method, "OK")
        RPC_SECONDS.labels(service, method)
        RPC_IN_FLIGHT.labels(service, method)


def _code_name(context: grpc.aio.ServicerContext) -> str:
    code = context.code() if hasattr(context, "code") else None
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    try:
        return grpc.StatusCode(code).name  # some versions keep the raw tuple/int
    except (ValueError, TypeError):
        return str(code)


def _rich_status(exc: RagclusterError) -> grpc.Status:
    from google.protobuf import any_pb2
    from google.rpc import status_pb2
    from grpc_status import rpc_status

    details = []
    for message in exc.details:
        packed = any_pb2.Any()
        packed.Pack(message)
        details.append(packed)
    code = getattr(grpc.StatusCode, exc.code)
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=str(exc), details=details))


class _Observed(Generic[_Req, _Resp]):
    """Times one RPC, counts its status code, sets the correlation id and maps exceptions to statuses; with
    tracing on, the RPC's server span (its trace id is the request id); with an access log, one line at the end."""

    def __init__(self, service: str, method: str, metadata: dict[str, str],
                 context: grpc.aio.ServicerContext[_Req, _Resp], access_log: bool = False) -> None:
        self.service, self.method, self.metadata, self.context = service, method, metadata, context
        self.access_log = access_log
        self.span: tracing.ServerSpan | tracing.PassedOn | None = None

    async def __aenter__(self) -> _Observed[_Req, _Resp]:
        if tracing.enabled():
            self.span = tracing.server_span(self.service, self.method, self.metadata).__enter__()
            rid = self.span.trace_id
        else:
            rid = (tracing.trace_id_from(self.metadata) or self.metadata.get(REQUEST_ID_KEY) or uuid.uuid4().hex)
        self.token = request_id.set(rid)
        self.fields_token = request_fields.set({}) if self.access_log else None
        self.start = time.perf_counter()
        RPC_IN_FLIGHT.labels(self.service, self.method).inc()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        """Counts, times and logs the RPC, then sends its error status: a client that has seen the error finds
        it counted already (grpc's abort sends the status before it returns)."""
        code = "OK"
        send: Callable[[], Awaitable[None]] | None = None  # the error status, sent once the RPC is recorded
        try:
            if exc is None:
                code = _code_name(self.context)
            elif isinstance(exc, RagclusterError):
                code = exc.code
                if exc.details:
                    send = functools.partial(self.context.abort_with_status, _rich_status(exc))
                else:
                    send = functools.partial(self.context.abort, getattr(grpc.StatusCode, exc.code), str(exc))
            elif isinstance(exc, grpc.aio.AbortError):
                code = _code_name(self.context)
            elif isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
                code = "CANCELLED"
            else:  # the one place an unexpected error is logged
                code = "INTERNAL"
                logger.error("%s failed", self.method, exc_info=(type(exc), exc, tb))
                # the text of an unexpected error may hold paths, addresses or data: it stays in the log
                send = functools.partial(self.context.abort, grpc.StatusCode.INTERNAL,
                                         f"internal error (request id {request_id.get()}; details are in the "
                                         "server log)")
        finally:
            seconds = time.perf_counter() - self.start
            RPC_IN_FLIGHT.labels(self.service, self.method).dec()
            RPC_HANDLED.labels(self.service, self.method, code).inc()
            RPC_SECONDS.labels(self.service, self.method).observe(seconds)
            if self.span is not None:
                self.span.finish(code)
            if self.fields_token is not None:
                log_request(self.method, code, seconds, request_fields.get() or {})
                request_fields.reset(self.fields_token)
            request_id.reset(self.token)
        if send is not None:
            await send()


class _Undecodable:
    """Stands in for a request whose bytes do not parse (bad UTF-8 in a string, corrupt wire format), so the
    handler answers INVALID_ARGUMENT instead of grpc's UNKNOWN with the parser's text."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name


def _tolerant(deserializer: Callable[[bytes], object] | None) -> Callable[[bytes], object] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> object:
        try:
            return deserializer(data)
        except Exception:  # google.protobuf.message.DecodeError and friends
            owner = getattr(deserializer, "__self__", None)
            name = owner.DESCRIPTOR.name if owner is not None and hasattr(owner, "DESCRIPTOR") else "message"
            return _Undecodable(name)

    return parse


def _check_decoded(request: object) -> None:
    if isinstance(request, _Undecodable):
        raise InvalidArgument(f"request: not a valid {request.type_name} (a string field that is not UTF-8, or "
                              "corrupt bytes)")


async def aclose(iterator: AsyncIterator[object]) -> None:
    """Close an async generator now (its finally blocks run); other async iterators have nothing to close."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


async def _checked_stream(requests: AsyncIterator[object]) -> AsyncIterator[object]:
    async for request in requests:
        _check_decoded(request)
        yield request


def _text_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> dict[str, str]:
    """Text keys only ("-bin" keys carry bytes): traceparent, x-request-id, authorization."""
    return {k: v for k, v in metadata or () if isinstance(v, str)}


Shed = Callable[[str], str | None]
"""(method) -> None to go on, or the message of a RESOURCE_EXHAUSTED refusal (admission control)."""


def _refusal(handler: grpc.RpcMethodHandler[_Req, _Resp], service: str, method: str, message: str,
             authorize: Authorizer | None,
             metadata: Iterable[tuple[str, str | bytes]] | None) -> grpc.RpcMethodHandler[_Req, _Resp]:
    """A handler that answers RESOURCE_EXHAUSTED at once: the request is not parsed (raw bytes, never read for a
    streaming request), no request id, span or log context is made; the caller is still authorized first (an
    unauthenticated caller learns nothing about the load) and the call is counted in the RPC metrics."""
    start = time.perf_counter()

    async def refuse(request: object, context: grpc.aio.ServicerContext[_Req, _Resp]) -> None:
        code, text = grpc.StatusCode.RESOURCE_EXHAUSTED, message
        if authorize is not None:
            try:
                authorize(method, _text_metadata(metadata), context)
            except RagclusterError as exc:
                code, text = getattr(grpc.StatusCode, exc.code), str(exc)
        RPC_HANDLED.labels(service, method, code.name).inc()
        RPC_SECONDS.labels(service, method).observe(time.perf_counter() - start)
        await context.abort(code, text)

    # registered as taking a request stream whatever the method's kind, so grpc does not wait for the request
    # message before calling ``refuse`` (the bytes on the wire are the same; the message is never read)
    behavior = cast("_Unary[_Req, _Resp]", refuse)
    encode = handler.response_serializer
    if handler.unary_unary or handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(behavior, None, encode)
    return grpc.stream_stream_rpc_method_handler(behavior, None, encode)  # with grpc.aio's write API


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """``authorize(method, metadata, context)``: runs first inside every RPC's boundary (so a refused call is
    counted like any other); health and reflection stay open for probes. ``shed(method)``: admission control,
    asked before any per-request work; a message means RESOURCE_EXHAUSTED at once (see ``_refusal``)."""

    def __init__(self, access_log: bool = False, authorize: Authorizer | None = None,
                 shed: Shed | None = None) -> None:
        self.access_log = access_log  # one log line per request (logger ragcluster.access)
        self.authorize = authorize
        self.shed = shed

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Req, _Resp] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Req, _Resp] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        full = handler_call_details.method
        if full.startswith(("/grpc.health.", "/grpc.reflection.")):
            return handler  # probes and reflection stay out of the metrics and the error boundary
        path, _, method = full.rpartition("/")
        service = path.rsplit(".", 1)[-1]  # /ragcluster.v1.RouterService/Search -> RouterService, Search
        if self.shed is not None:
            refused = self.shed(method)
            if refused is not None:
                return _refusal(handler, service, method, refused, self.authorize,
                                handler_call_details.invocation_metadata)
        metadata = _text_metadata(handler_call_details.invocation_metadata)
        access_log = self.access_log
        authorize = self.authorize

        def admit(request: _Req, context: grpc.aio.ServicerContext[_Req, _Resp], stream_in: bool) -> _Req:
            if authorize is not None:
                authorize(method, metadata, context)
            if stream_in:
                return cast("_Req", _checked_stream(cast("AsyncIterator[object]", request)))
            _check_decoded(request)
            return request

        # grpc's stubs type a handler's behaviours as synchronous callables; under grpc.aio they are
        # coroutine functions (unary response) or async generator functions (streaming response): cast to that
        def unary(behavior: object, stream_in: bool) -> _Unary[_Req, _Resp]:
            call = cast("_Unary[_Req, _Resp]", behavior)

            async def wrapper(request: _Req, context: grpc.aio.ServicerContext[_Req, _Resp]) -> _Resp:
                async with _Observed(service, method, metadata, context, access_log):
                    return await call(admit(request, context, stream_in), context)

            return wrapper

        def streaming(behavior: object, stream_in: bool) -> _Streaming[_Req, _Resp]:
            call = cast("_Streaming[_Req, _Resp]", behavior)

            # a coroutine writing with context.write (grpc's write API), not an async generator: a client that
            # cancels while the handler sits at a ``yield`` cancels this task at the write, and the finally
            # below closes the handler's generator at once (its cleanup runs: the router's Ask cancels the
            # generation it started); an async generator would be left suspended until garbage collection
            async def wrapper(request: _Req, context: grpc.aio.ServicerContext[_Req, _Resp]) -> None:
                async with _Observed(service, method, metadata, context, access_log):
                    responses = call(admit(request, context, stream_in), context)
                    try:
                        async for item in responses:
                            try:
                                await context.write(item)
                            except _SEND_FAILED as exc:
                                raise CallEnded(f"{method}: the call ended before a message was sent") from exc
                    finally:
                        await aclose(responses)

            return wrapper  # type: ignore[return-value]  # grpc.aio runs a coroutine stream handler with the write API

        decode = cast("Callable[[bytes], _Req] | None", _tolerant(handler.request_deserializer))
        encode = handler.response_serializer
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary, False), decode, encode)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary, True), decode, encode)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream, False), decode, encode)
        return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream, True), decode, encode)
