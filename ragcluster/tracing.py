"""OpenTelemetry tracing across the tiers, with W3C trace context carried in gRPC metadata.

Off unless the standard OpenTelemetry environment asks for it (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_TRACES_EXPORTER``; ``OTEL_SDK_DISABLED=true`` wins); then
each process exports its spans over OTLP (gRPC, or HTTP with ``OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL=
http/protobuf``), sampled as ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` say (default: parent-based,
always on). When off, nothing here touches OpenTelemetry: the server interceptor skips its span, channels get
no client interceptor and ``span``/``traced`` return at once.

One Ask is one trace: the router's server span, ``embed``, ``fan-out`` with one client span per shard call
(hedges and failovers included, ``ragcluster.attempt`` says which), ``prompt`` (its Info/CountTokens calls),
``generate`` (with a ``first_token`` event) and, in the other processes, their server spans.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
from collections.abc import AsyncIterable, Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import grpc

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
Attributes = Mapping[str, str | int | float | bool]

_tracer: Tracer | None = None
_provider: Any = None
# attributes for the next outgoing call's client span (e.g. shard, replica, attempt), set by the caller
_call_attributes: contextvars.ContextVar[Attributes | None] = contextvars.ContextVar("call_attributes", default=None)


def enabled() -> bool:
    return _tracer is not None


def wanted(env: Mapping[str, str] | None = None) -> bool:
    """Whether the standard OTEL_* environment asks for trace export."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(exporter or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def _otlp_exporter(env: Mapping[str, str]) -> SpanExporter:
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if protocol.startswith("http"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # endpoint, headers, TLS and timeout from the OTEL_EXPORTER_OTLP_* variables


def setup(service_name: str, exporter: SpanExporter | None = None, env: Mapping[str, str] | None = None,
          batch: bool = True) -> bool:
    """Turn tracing on for this process when the environment asks for it (or ``exporter`` is given, as in
    tests and benchmarks). Returns whether tracing is on. ``OTEL_SERVICE_NAME`` overrides ``service_name``."""
    global _tracer, _provider
    env = os.environ if env is None else env
    if exporter is None and not wanted(env):
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or service_name})
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER(_ARG)
    exporter = exporter or _otlp_exporter(env)
    provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    _provider = provider
    _tracer = provider.get_tracer("ragcluster")
    logger.info("tracing on: %s (sampler %s)", type(exporter).__name__, provider.sampler.get_description())
    return True


def shutdown() -> None:
    """Flush and stop exporting (at process exit); tracing is off afterwards."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


# --- spans in tier code ---------------------------------------------------------------------------
class _NoSpan:
    """What ``span`` yields when tracing is off: every method does nothing."""

    def add_event(self, name: str, attributes: Attributes | None = None) -> None:
        pass

    def set_attribute(self, key: str, value: str | int | float | bool) -> None:
        pass

    def is_recording(self) -> bool:
        return False

    def end(self) -> None:
        pass


NO_SPAN = _NoSpan()


@contextlib.contextmanager
def span(name: str, attributes: Attributes | None = None) -> Iterator[Span | _NoSpan]:
    """A child span of the current one (nothing when tracing is off)."""
    if _tracer is None:
        yield NO_SPAN
        return
    with _tracer.start_as_current_span(name, attributes=attributes) as current:
        yield current


def start_span(name: str, attributes: Attributes | None = None) -> Span | _NoSpan:
    """A child span of the current one that is not made current (for spans that outlive ``yield``s of an
    async generator); end it with ``.end()``, use ``activate`` around the calls that belong under it."""
    if _tracer is None:
        return NO_SPAN
    return _tracer.start_span(name, attributes=attributes)


@contextlib.contextmanager
def activate(current: Span | _NoSpan) -> Iterator[None]:
    """Make ``current`` the parent of the spans and calls started inside (nothing for NO_SPAN)."""
    if _tracer is None or isinstance(current, _NoSpan):
        yield
        return
    from opentelemetry.trace import use_span

    with use_span(current, end_on_exit=False):
        yield


def traced(name: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """Decorate a coroutine function so each call is a span ``name`` (a plain await when tracing is off)."""

    def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if _tracer is None:
                return await fn(*args, **kwargs)
            with _tracer.start_as_current_span(name):
                return await fn(*args, **kwargs)

        return wrapper

    return decorate


def add_event(name: str, attributes: Attributes | None = None) -> None:
    """An event on the current span (e.g. the first token of a stream)."""
    if _tracer is not None:
        from opentelemetry import trace

        trace.get_current_span().add_event(name, attributes)


@contextlib.contextmanager
def call_attributes(**attributes: str | int | float | bool) -> Iterator[None]:
    """Attributes for the client spans of the calls made inside (e.g. ``shard=0, attempt="hedge"``)."""
    if _tracer is None:
        yield
        return
    token = _call_attributes.set({f"ragcluster.{k}": v for k, v in attributes.items()})
    try:
        yield
    finally:
        _call_attributes.reset(token)


# --- server side: one span per RPC, parent from the caller's traceparent ---------------------------
def trace_id_from(metadata: Mapping[str, str]) -> str:
    """The trace id of an incoming W3C ``traceparent`` ('' when there is none or it is malformed)."""
    parts = metadata.get("traceparent", "").split("-")
    if len(parts) >= 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
        return parts[1]
    return ""


class ServerSpan:
    """The server span of one RPC, entered and left by the server interceptor (only when tracing is on)."""

    def __init__(self, service: str, method: str, metadata: Mapping[str, str]):
        from opentelemetry.propagate import extract
        from opentelemetry.trace import SpanKind

        assert _tracer is not None
        parent = extract(metadata)
        self.span = _tracer.start_span(f"{service}/{method}", context=parent, kind=SpanKind.SERVER, attributes={
            "rpc.system": "grpc", "rpc.service": service, "rpc.method": method})
        self._scope: contextlib.AbstractContextManager[Any] | None = None

    @property
    def trace_id(self) -> str:
        return f"{self.span.get_span_context().trace_id:032x}"

    def __enter__(self) -> ServerSpan:
        from opentelemetry.trace import use_span

        self._scope = use_span(self.span, end_on_exit=False)
        self._scope.__enter__()
        return self

    def finish(self, code: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        self.span.set_attribute("rpc.grpc.status_code", _CODE_VALUES.get(code, 2))
        if code != "OK":
            self.span.set_status(Status(StatusCode.ERROR, code))
        if self._scope is not None:
            self._scope.__exit__(None, None, None)
        self.span.end()


_CODE_VALUES = {c.name: c.value[0] for c in grpc.StatusCode}


# --- client side: a span per outgoing call, its context injected as traceparent --------------------
def client_interceptors() -> Sequence[grpc.aio.ClientInterceptor]:
    """Interceptors for a channel: none when tracing is off (zero cost), else one that traces every call."""
    if _tracer is None:
        return []
    # a channel files each interceptor under its first matching kind only: one object per kind
    return [_UnaryUnaryTracing(), _UnaryStreamTracing(), _StreamUnaryTracing(), _StreamStreamTracing()]


def _details_with(details: grpc.aio.ClientCallDetails, carrier: dict[str, str]) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*tuple(details.metadata or ()), *carrier.items())
    return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials,
                                      details.wait_for_ready)


class _ClientTracing:
    """A client span per call (health checks excepted) whose context is injected as ``traceparent``."""

    def _start(self, details: grpc.aio.ClientCallDetails) -> tuple[Span | None, grpc.aio.ClientCallDetails]:
        raw: str | bytes = details.method  # the stubs say str; grpc passes bytes
        method = raw.decode() if isinstance(raw, bytes) else raw
        if _tracer is None or method.startswith("/grpc.health."):
            return None, details  # health watch streams live for ever: not a request
        from opentelemetry.propagate import inject
        from opentelemetry.trace import SpanKind, set_span_in_context

        service, _, name = method.lstrip("/").rpartition("/")
        attributes: dict[str, Any] = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        attributes.update(_call_attributes.get() or {})
        client = _tracer.start_span(f"{service.rsplit('.', 1)[-1]}/{name}", kind=SpanKind.CLIENT,
                                    attributes=attributes)
        carrier: dict[str, str] = {}
        inject(carrier, context=set_span_in_context(client))
        return client, _details_with(details, carrier)

    @staticmethod
    def _finish_when_done(client: Span, call: grpc.aio.Call) -> None:
        async def finish() -> None:
            from opentelemetry.trace import Status, StatusCode

            code = await call.code()
            client.set_attribute("rpc.grpc.status_code", code.value[0])
            if code != grpc.StatusCode.OK:
                client.set_status(Status(StatusCode.ERROR, code.name))
            client.end()

        def done(_: object) -> None:
            with contextlib.suppress(RuntimeError):  # loop closed at shutdown: the span is dropped
                asyncio.get_running_loop().create_task(finish())

        call.add_done_callback(done)

    async def _intercept(self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails,
                         request: Any) -> Any:
        client, details = self._start(details)
        if client is None:
            return await continuation(details, request)
        try:
            call = await continuation(details, request)
        except BaseException:
            client.end()
            raise
        self._finish_when_done(client, call)
        return call


class _UnaryUnaryTracing(_ClientTracing, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Callable[..., Any],
                                    client_call_details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        return await self._intercept(continuation, client_call_details, request)


class _UnaryStreamTracing(_ClientTracing, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Callable[..., Any],
                                     client_call_details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        return await self._intercept(continuation, client_call_details, request)


class _StreamUnaryTracing(_ClientTracing, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Callable[..., Any],
                                     client_call_details: grpc.aio.ClientCallDetails,
                                     request_iterator: AsyncIterable[Any] | Iterable[Any]) -> Any:
        return await self._intercept(continuation, client_call_details, request_iterator)


class _StreamStreamTracing(_ClientTracing, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Callable[..., Any],
                                      client_call_details: grpc.aio.ClientCallDetails,
                                      request_iterator: AsyncIterable[Any] | Iterable[Any]) -> Any:
        return await self._intercept(continuation, client_call_details, request_iterator)
