"""Health tracking of backends: one grpc.health.v1 Watch stream per backend, reconnected with bounded
backoff. Backends that are not SERVING (loading, draining, dead, unreachable) get no traffic and come
back by themselves once they report SERVING again; a backend that fails calls is ejected for a while."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import health_pb2

from ragcluster.channels import health_stub

logger = logging.getLogger(__name__)


class Backend:
    """A backend's health state; subclasses add their stubs and counters."""

    def __init__(self, address: str, channel: grpc.aio.Channel) -> None:
        self.address = address
        self.channel = channel
        self.serving = False  # from the Watch stream
        self.ejected_until = 0.0
        self.consecutive_failures = 0
        self.outstanding = 0
        self.known = asyncio.Event()  # a first status arrived
        self.on_serving: Callable[[], None] | None = None  # called when it turns SERVING

    def usable(self, now: float | None = None) -> bool:
        return self.serving and self.ejected_until <= (now if now is not None else time.monotonic())

    def eject(self, seconds: float) -> None:
        self.ejected_until = time.monotonic() + seconds

    def record(self, ok: bool, eject_after: int, eject_seconds: float) -> bool:
        """Count a call's outcome; returns True when this failure ejected the backend."""
        if ok:
            self.consecutive_failures = 0
            return False
        self.consecutive_failures += 1
        if self.consecutive_failures >= eject_after and self.ejected_until <= time.monotonic():
            self.eject(eject_seconds)
            self.consecutive_failures = 0
            return True
        return False


async def watch(backend: Backend, kind: str) -> None:
    """Keep ``backend.serving`` current until cancelled."""
    backoff = 0.1
    stub = health_stub(backend.channel)
    while True:
        generation = getattr(backend.channel, "generation", 0)
        try:
            async for response in stub.Watch(health_pb2.HealthCheckRequest()):
                serving = response.status == health_pb2.HealthCheckResponse.SERVING
                if serving and not backend.serving:
                    logger.info("%s %s is SERVING", kind, backend.address)
                    backend.ejected_until = 0.0
                    if backend.on_serving:
                        backend.on_serving()
                backend.serving = serving
                backend.known.set()
                backoff = 0.1
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as exc:
            # a channel rebuilt for rotated certificates closes its old channel, which cancels this stream (as
            # CancelledError): watch again on the new one; a cancellation of this task itself goes on up
            task = asyncio.current_task()
            if getattr(backend.channel, "generation", 0) != generation and not (task and task.cancelling()):
                continue
            if isinstance(exc, asyncio.CancelledError):
                raise
        if backend.serving:
            logger.warning("%s %s unreachable; no traffic until it is SERVING again", kind, backend.address)
        backend.serving = False
        backend.known.set()
        await asyncio.sleep(backoff)  # reconnect backoff (a timer, at most 5 s)
        backoff = min(backoff * 2, 5.0)


class Watchers:
    """The watch tasks of a set of backends."""

    def __init__(self) -> None:
        self._tasks: dict[int, asyncio.Task[None]] = {}  # id(backend) -> its watch task

    async def start(self, backends: Sequence[Backend], kind: str, wait_seconds: float = 5.0) -> None:
        for b in backends:
            self._tasks[id(b)] = asyncio.create_task(watch(b, kind))
        if backends:
            waits = [asyncio.create_task(b.known.wait()) for b in backends]
            await asyncio.wait(waits, timeout=wait_seconds)
            for w in waits:
                w.cancel()

    async def remove(self, backends: Sequence[Backend]) -> None:
        """Stop watching ``backends`` (e.g. gone from DNS); their channels can then be closed."""
        for b in backends:
            task = self._tasks.pop(id(b), None)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
