"""OpenTelemetry tracing across the tiers, with W3C trace context carried in gRPC metadata.

Off unless the standard OpenTelemetry environment asks for it (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_TRACES_EXPORTER``; ``OTEL_SDK_DISABLED=true`` wins); then
each process exports its spans over OTLP (gRPC, or HTTP with ``OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL=
http/protobuf``), sampled as ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` say (default: parent-based,
always on). When off, nothing here touches OpenTelemetry: the server interceptor skips its span,
``client_call`` sends no metadata and ``span``/``traced`` return at once. When on, a trace that is not sampled
costs no span objects beyond the server's own: outgoing calls only carry its ``traceparent``.

One Ask is one trace: the router's server span, ``embed``, ``fan-out`` with one client span per shard call
(hedges and failovers included, ``ragcluster.attempt`` says which; each call site wraps its call in
``client_call``), ``prompt`` (its Info/CountTokens calls),
``generate`` (with a ``first_token`` event) and, in the other processes, their server spans.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import re
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import grpc

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
Attributes = Mapping[str, str | int | float | bool]
Metadata = tuple[tuple[str, str], ...]  # gRPC metadata for an outgoing call

_tracer: Tracer | None = None
_provider: Any = None
_parent_based = False  # the sampler follows a caller's decision (OTEL_TRACES_SAMPLER=parentbased_*, the default)


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
    global _tracer, _provider, _parent_based
    env = os.environ if env is None else env
    if exporter is None and not wanted(env):
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased

    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or service_name})
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER(_ARG)
    exporter = exporter or _otlp_exporter(env)
    provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    _provider = provider
    _tracer = provider.get_tracer("ragcluster")
    _parent_based = isinstance(provider.sampler, ParentBased)
    logger.info("tracing on: %s (sampler %s)", type(exporter).__name__, provider.sampler.get_description())
    return True


def shutdown() -> None:
    """Flush and stop exporting (at process exit); tracing is off afterwards."""
    global _tracer, _provider, _parent_based
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None
    _parent_based = False


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


def _unsampled_here() -> bool:
    """Inside a trace that is not sampled (under a parent-based sampler a child would record nothing): a new
    span can be skipped. No current trace at all is not that: a span there is a new root, sampled on its own."""
    if not _parent_based:
        return False
    if _passed_on.get() is not None:
        return True  # an RPC whose caller did not sample
    from opentelemetry import trace

    current = trace.get_current_span()
    return not current.is_recording() and current.get_span_context().is_valid


@contextlib.contextmanager
def span(name: str, attributes: Attributes | None = None) -> Iterator[Span | _NoSpan]:
    """A child span of the current one (nothing when tracing is off or the trace is not sampled)."""
    if _tracer is None or _unsampled_here():
        yield NO_SPAN
        return
    with _tracer.start_as_current_span(name, attributes=attributes) as current:
        yield current


def start_span(name: str, attributes: Attributes | None = None) -> Span | _NoSpan:
    """A child span of the current one that is not made current (for spans that outlive ``yield``s of an
    async generator); end it with ``.end()``, use ``activate`` around the calls that belong under it."""
    if _tracer is None or _unsampled_here():
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
            if _tracer is None or _unsampled_here():
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


# --- server side: one span per RPC, parent from the caller's traceparent ---------------------------
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
# an incoming traceparent that says "not sampled", passed on by client_call (no span in this process)
_passed_on: contextvars.ContextVar[Metadata | None] = contextvars.ContextVar("passed_on", default=None)


def _parse(traceparent: str) -> re.Match[str] | None:
    """A well-formed W3C ``traceparent`` (groups: version, trace id, parent id, flags, a later version's
    extra fields), or None."""
    match = _TRACEPARENT.match(traceparent)
    if match is None or match.group(1) == "ff" or match.group(2) == "0" * 32 or match.group(3) == "0" * 16:
        return None
    if match.group(1) == "00" and match.group(5) is not None:
        return None  # version 00 has exactly four fields
    return match


def trace_id_from(metadata: Mapping[str, str]) -> str:
    """The trace id of an incoming W3C ``traceparent`` ('' when there is none or it is malformed)."""
    match = _parse(metadata.get("traceparent", ""))
    return match.group(2) if match is not None else ""


def _unsampled(traceparent: str) -> bool:
    """Whether a well-formed W3C ``traceparent`` has its sampled flag clear (a malformed one: False)."""
    match = _parse(traceparent)
    return match is not None and not int(match.group(4), 16) & 1


def server_span(service: str, method: str, metadata: Mapping[str, str]) -> ServerSpan | PassedOn:
    """What the server interceptor enters around one RPC (tracing on). A caller's trace that is not sampled,
    under a sampler that follows its parent (every standard ``parentbased_*`` one), would only give a span that
    records nothing: it is skipped without any OpenTelemetry work, and its traceparent passed on as it came."""
    traceparent = metadata.get("traceparent", "")
    if traceparent and _parent_based and _unsampled(traceparent):
        return PassedOn(traceparent)
    return ServerSpan(service, method, metadata)


class PassedOn:
    """An RPC of a trace that is not sampled: its trace id for the logs, its traceparent for outgoing calls."""

    def __init__(self, traceparent: str) -> None:
        self.traceparent = traceparent
        self._token: contextvars.Token[Metadata | None] | None = None

    @property
    def trace_id(self) -> str:
        return self.traceparent[3:35]

    def __enter__(self) -> PassedOn:
        self._token = _passed_on.set((("traceparent", self.traceparent),))
        return self

    def finish(self, code: str) -> None:
        if self._token is not None:
            _passed_on.reset(self._token)


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


# --- client side: the caller's trace context as traceparent, a client span only when sampled -------


@contextlib.contextmanager
def client_call(method: str, parent: Span | _NoSpan | None = None,
                **attributes: str | int | float | bool) -> Iterator[Metadata | None]:
    """Around one outgoing call (for a stream: its whole iteration): yields the metadata to send with it.

    ``method`` is ``Service/Method`` (e.g. ``ShardService/Search``); ``attributes`` go on the client span as
    ``ragcluster.<name>`` (shard, replica, attempt...). ``parent``: the span to call under instead of the current
    one (for a stream inside an async generator, where a span cannot stay current across ``yield``).

    Tracing off: yields None, nothing else happens. Tracing on and the current trace sampled: a client span
    for the call, ended (with the call's status) when the block exits, and its context as ``traceparent``.
    Not sampled: no span at all, only the current context as ``traceparent`` (sampled flag clear), so the
    callee records nothing either yet logs the same trace id as its request id.

    Explicit per call rather than a channel interceptor: grpc.aio's intercepted calls cost a task and a
    wrapper per call even when nothing is recorded, a fifth of a small RPC's CPU."""
    if _tracer is None:
        yield None
        return
    from opentelemetry import trace

    if parent is None or isinstance(parent, _NoSpan):
        parent = trace.get_current_span()
    if not parent.is_recording():
        context = parent.get_span_context()
        if context.is_valid:
            yield _traceparent(context.trace_id, context.span_id, int(context.trace_flags))
        else:
            yield _passed_on.get()  # within an RPC of an unsampled trace: its traceparent, else nothing
        return
    from opentelemetry.propagate import inject
    from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

    service, _, name = method.rpartition("/")
    client = _tracer.start_span(method, context=set_span_in_context(parent), kind=SpanKind.CLIENT, attributes={
        "rpc.system": "grpc", "rpc.service": f"ragcluster.v1.{service}", "rpc.method": name,
        **{f"ragcluster.{k}": v for k, v in attributes.items()}})
    carrier: dict[str, str] = {}
    inject(carrier, context=set_span_in_context(client))
    code = grpc.StatusCode.OK
    try:
        yield tuple(carrier.items())
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, (grpc.aio.AioRpcError, grpc.Call)) else grpc.StatusCode.UNKNOWN
        raise
    except (asyncio.CancelledError, GeneratorExit):
        code = grpc.StatusCode.CANCELLED
        raise
    except BaseException:
        code = grpc.StatusCode.UNKNOWN
        raise
    finally:
        client.set_attribute("rpc.grpc.status_code", code.value[0])
        if code != grpc.StatusCode.OK:
            client.set_status(Status(StatusCode.ERROR, code.name))
        client.end()


def _traceparent(trace_id: int, span_id: int, flags: int) -> Metadata:
    return (("traceparent", f"00-{trace_id:032x}-{span_id:016x}-{flags & 0xFF:02x}"),)
