"""Calls to shard replicas: one long-lived channel per replica, per-call timeouts from the caller's
budget, failover to another replica on UNAVAILABLE, and a fan-out that never lets one shard fail the
whole search (failures are reported as coverage)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass

import grpc

from ragcluster.errors import InvalidArgument, Unavailable
from ragcluster.serving import channel_options
from ragcluster.v1 import common_pb2, shard_pb2, shard_pb2_grpc
from router import metrics

logger = logging.getLogger(__name__)

_FAILOVER_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN}


@dataclass
class Replica:
    address: str
    channel: grpc.aio.Channel
    stub: shard_pb2_grpc.ShardServiceStub
    outstanding: int = 0


@dataclass
class ShardAnswer:
    shard: int
    response: shard_pb2.ShardSearchResponse | None
    failure: common_pb2.ShardFailure | None = None


class ShardGroup:
    """One shard and its replicas."""

    def __init__(self, shard: int, addresses: list[str]):
        self.shard = shard
        self.replicas = []
        for address in addresses:
            channel = grpc.aio.insecure_channel(address, options=channel_options())
            self.replicas.append(Replica(address, channel, shard_pb2_grpc.ShardServiceStub(channel)))
        self._rr = itertools.count()
        self.last_documents = 0

    def ordered(self) -> list[Replica]:
        """Replicas to try, least outstanding first (round-robin among equals)."""
        start = next(self._rr) % len(self.replicas)
        rotated = self.replicas[start:] + self.replicas[:start]
        return sorted(rotated, key=lambda r: r.outstanding)

    async def search(self, request: shard_pb2.ShardSearchRequest, timeout: float) -> shard_pb2.ShardSearchResponse:
        deadline = time.monotonic() + timeout
        last: grpc.aio.AioRpcError | None = None
        for replica in self.ordered():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            replica.outstanding += 1
            start = time.perf_counter()
            try:
                response = await replica.stub.Search(request, timeout=remaining)
                metrics.SHARD_CALLS.labels(self.shard, "OK").inc()
                metrics.SHARD_CALL_SECONDS.labels(self.shard).observe(time.perf_counter() - start)
                self.last_documents = response.vectors_searched
                return response
            except grpc.aio.AioRpcError as exc:
                metrics.SHARD_CALLS.labels(self.shard, exc.code().name).inc()
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise InvalidArgument(exc.details()) from exc
                last = exc
                if exc.code() not in _FAILOVER_CODES:
                    raise
                logger.warning("shard %d replica %s: %s; trying another", self.shard, replica.address, exc.code().name)
            finally:
                replica.outstanding -= 1
        if last is not None:
            raise last
        raise asyncio.TimeoutError()

    async def upsert(self, request: shard_pb2.UpsertRequest, timeout: float) -> int:
        """Write to every replica; acknowledged when all have made it durable."""

        async def one(replica: Replica) -> int:
            async for response in replica.stub.Upsert(iter([request]), timeout=timeout):
                return response.upserted
            raise Unavailable(f"shard {self.shard} replica {replica.address}: upsert stream ended without an ack")

        results = await asyncio.gather(*(one(r) for r in self.replicas), return_exceptions=True)
        return _all_acknowledged(self.shard, "upsert", self.replicas, results)

    async def delete(self, ids: list[str], timeout: float) -> int:
        request = shard_pb2.ShardDeleteRequest(ids=ids)
        results = await asyncio.gather(
            *(r.stub.Delete(request, timeout=timeout) for r in self.replicas), return_exceptions=True
        )
        return _all_acknowledged(self.shard, "delete", self.replicas, results, lambda r: r.deleted)

    async def close(self) -> None:
        await asyncio.gather(*(r.channel.close() for r in self.replicas))


def _all_acknowledged(shard, op, replicas, results, value=lambda r: r) -> int:
    for replica, result in zip(replicas, results):
        if isinstance(result, grpc.aio.AioRpcError):
            if result.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(result.details())
            raise Unavailable(f"shard {shard} replica {replica.address}: {op} failed: {result.code().name}: "
                              f"{result.details()}")
        if isinstance(result, BaseException):
            raise result
    return max(value(r) for r in results)


def failure_from_exception(shard: int, exc: BaseException) -> common_pb2.ShardFailure:
    if isinstance(exc, asyncio.TimeoutError) or (
        isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    ):
        reason = common_pb2.SHARD_FAILURE_REASON_TIMEOUT
    elif isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE:
        reason = common_pb2.SHARD_FAILURE_REASON_UNAVAILABLE
    else:
        reason = common_pb2.SHARD_FAILURE_REASON_ERROR
    message = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else (str(exc) or type(exc).__name__)
    return common_pb2.ShardFailure(shard=shard, reason=reason, message=message or "")


async def fan_out(groups: list[ShardGroup], request: shard_pb2.ShardSearchRequest, timeout: float) -> list[ShardAnswer]:
    """Search every shard concurrently within ``timeout``; failures become ShardAnswer.failure."""

    async def one(group: ShardGroup) -> ShardAnswer:
        try:
            return ShardAnswer(group.shard, await group.search(request, timeout))
        except InvalidArgument:
            raise
        except (grpc.aio.AioRpcError, asyncio.TimeoutError) as exc:
            return ShardAnswer(group.shard, None, failure_from_exception(group.shard, exc))

    return list(await asyncio.gather(*(one(g) for g in groups)))
