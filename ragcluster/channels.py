"""Client channel settings shared by every caller (router → shard/generator, shard → shard, CLI → router).

Kept apart from the server bootstrap so that clients and tools import no server code.
"""

from __future__ import annotations

from typing import Protocol, cast, overload

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def channel_options(max_message_bytes: int = 64 * 1024 * 1024) -> list[tuple[str, int]]:
    """Options for every client channel (router → shard/generator, CLI → router)."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        *KEEPALIVE_OPTIONS,
    ]


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
