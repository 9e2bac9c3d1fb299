"""Client channels for every caller (router → shard/generator, shard → shard, CLI → router): one place that
turns an address and a ``ClientTls`` (or None: plaintext) into a channel with the shared options.

Kept apart from the server bootstrap so that clients and tools import no server code.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Literal, Protocol, cast, overload

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ragcluster.security import ClientTls

logger = logging.getLogger(__name__)

KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                    security: ClientTls | None = None) -> list[tuple[str, int | str]]:
    """Options for every client channel (router → shard/generator, CLI → router)."""
    options: list[tuple[str, int | str]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        *KEEPALIVE_OPTIONS,
    ]
    if security is not None and security.server_name:
        options.append(("grpc.ssl_target_name_override", security.server_name))
    return options


def aio_channel(address: str, security: ClientTls | None = None,
                max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None) -> grpc.aio.Channel:
    """An asyncio channel to ``address``: TLS (mTLS with a client certificate) when ``security`` is enabled,
    following its files (``ReloadingChannel``): a rotated certificate is presented on the next connection."""
    options = channel_options(max_message_bytes, security)
    if security is not None and security.enabled:
        return ReloadingChannel(address, security, options, interceptors)
    return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)


_Kind = Literal["unary_unary", "unary_stream", "stream_unary", "stream_stream"]


class _Switching:
    """A multicallable bound to a ``ReloadingChannel``: each call goes to the channel current at that moment
    (stubs are built once, over the long-lived channel)."""

    def __init__(self, owner: ReloadingChannel, kind: _Kind, method: str, kwargs: dict[str, Any]) -> None:
        self._owner, self._kind, self._method, self._kwargs = owner, kind, method, kwargs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._owner._callable(self._kind, self._method, self._kwargs)(*args, **kwargs)


class ReloadingChannel(grpc.aio.Channel):
    """An asyncio TLS channel that follows its certificate files (cert-manager rotates them in place).

    grpc Python fixes a channel's credentials when it is created (grpc/grpc#41779: no client-side certificate
    provider; servers have dynamic_ssl_server_credentials). So: before a call, at most every
    ``check_seconds``, the files are stat'ed; when they changed and form a consistent set (certificate and
    key belong together), a new channel is built with them and takes every new call — its connections
    present the new certificate and trust the new CA — while the old channel closes with a grace of
    ``drain_seconds``: calls in flight on it finish (long streams, such as health watches, are cancelled at
    the end of the grace and re-opened by their owner on the new channel: see ``generation``). A half-written
    or mismatched set keeps the current channel until it is whole."""

    def __init__(self, address: str, security: ClientTls, options: Sequence[tuple[str, Any]],
                 interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None, check_seconds: float = 1.0,
                 drain_seconds: float = 30.0) -> None:
        self.address = address
        self.security = security
        self.check_seconds = check_seconds
        self.drain_seconds = drain_seconds
        self.generation = 0  # +1 on every rotation
        self._options = list(options)
        self._interceptors = interceptors
        self._stamp = security.stamp()
        self._checked = time.monotonic()
        self._channel = self._build()
        self._callables: dict[tuple[str, str], Any] = {}
        self._retiring: dict[asyncio.Task[None], grpc.aio.Channel] = {}

    def _build(self) -> grpc.aio.Channel:
        creds = self.security.credentials()
        assert creds is not None
        return grpc.aio.secure_channel(self.address, creds, options=self._options, interceptors=self._interceptors)

    def reload_if_changed(self) -> bool:
        """Rebuild the channel when the files changed (checked at most every ``check_seconds``); True if it was."""
        now = time.monotonic()
        if now - self._checked < self.check_seconds:
            return False
        try:
            loop = asyncio.get_running_loop()  # the old channel closes on it
        except RuntimeError:
            return False  # outside the channel's loop (e.g. get_state from another thread): next call
        self._checked = now
        stamp = self.security.stamp()
        if stamp == self._stamp:
            return False
        try:
            fresh = self._build()
        except Exception as exc:  # half-written or mismatched: keep the current channel, look again later
            logger.warning("TLS files for %s changed but are not usable yet (%s); keeping the current ones",
                           self.address, type(exc).__name__)
            return False
        old, self._channel, self._stamp = self._channel, fresh, stamp
        self._callables.clear()
        self.generation += 1
        logger.info("TLS files changed: new connections to %s use the new certificate", self.address)
        task = loop.create_task(old.close(grace=self.drain_seconds))
        self._retiring[task] = old
        task.add_done_callback(lambda t: self._retiring.pop(t, None))
        return True

    @property
    def current(self) -> grpc.aio.Channel:
        self.reload_if_changed()
        return self._channel

    def _callable(self, kind: _Kind, method: str, kwargs: dict[str, Any]) -> Any:
        channel = self.current
        key = (kind, method)
        made = self._callables.get(key)
        if made is None:
            made = self._callables[key] = getattr(channel, kind)(method, **kwargs)
        return made

    def unary_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                    **kwargs: Any) -> Any:
        return _Switching(self, "unary_unary", method, dict(
            request_serializer=request_serializer, response_deserializer=response_deserializer, **kwargs))

    def unary_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     **kwargs: Any) -> Any:
        return _Switching(self, "unary_stream", method, dict(
            request_serializer=request_serializer, response_deserializer=response_deserializer, **kwargs))

    def stream_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     **kwargs: Any) -> Any:
        return _Switching(self, "stream_unary", method, dict(
            request_serializer=request_serializer, response_deserializer=response_deserializer, **kwargs))

    def stream_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                      **kwargs: Any) -> Any:
        return _Switching(self, "stream_stream", method, dict(
            request_serializer=request_serializer, response_deserializer=response_deserializer, **kwargs))

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self.current.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self.current.channel_ready()

    async def retired(self) -> None:
        """Returns once every channel replaced by a rotation has closed."""
        await asyncio.gather(*self._retiring, return_exceptions=True)

    async def close(self, grace: float | None = None) -> None:
        """Close the channel and any old one still draining (within the same ``grace``)."""
        retiring = dict(self._retiring)
        await asyncio.gather(self._channel.close(grace), *(old.close(grace) for old in retiring.values()))
        await asyncio.gather(*retiring, return_exceptions=True)

    async def __aenter__(self) -> ReloadingChannel:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc_val: BaseException | None,
                        exc_tb: TracebackType | None) -> None:
        await self.close(None)


def sync_channel(address: str, security: ClientTls | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> grpc.Channel:
    """A blocking channel to ``address`` (CLI, tools, snapshots), with the same security as ``aio_channel``."""
    options = channel_options(max_message_bytes, security)
    creds = security.credentials() if security is not None else None
    if creds is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, creds, options=options)


class HealthClient(Protocol):
    """grpc.health.v1 on a blocking channel."""

    Check: grpc.UnaryUnaryMultiCallable[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]
    Watch: grpc.UnaryStreamMultiCallable[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]


class AioHealthClient(Protocol):
    """grpc.health.v1 on a grpc.aio channel."""

    Check: grpc.aio.UnaryUnaryMultiCallable[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]
    Watch: grpc.aio.UnaryStreamMultiCallable[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]


@overload
def health_stub(channel: grpc.aio.Channel) -> AioHealthClient: ...
@overload
def health_stub(channel: grpc.Channel) -> HealthClient: ...
def health_stub(channel: grpc.Channel | grpc.aio.Channel) -> HealthClient | AioHealthClient:
    """The health stub of ``channel``, typed (types-grpcio-health-checking declares HealthStub without methods)."""
    return cast("HealthClient | AioHealthClient", health_pb2_grpc.HealthStub(channel))
