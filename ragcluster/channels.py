"""Client channels for every caller (router → shard/generator, shard → shard, CLI → router): one place that
turns an address and a ``ClientTls`` (or None: plaintext) into a channel with the shared options.

Kept apart from the server bootstrap so that clients and tools import no server code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, cast, overload

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ragcluster.security import ClientTls

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
    """An asyncio channel to ``address``: TLS (mTLS with a client certificate) when ``security`` is enabled."""
    options = channel_options(max_message_bytes, security)
    creds = security.credentials() if security is not None else None
    if creds is None:
        return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(address, creds, options=options, interceptors=interceptors)


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
