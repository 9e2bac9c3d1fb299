"""Background upkeep of a shard: periodic index checkpoints and tombstone-triggered rebuilds, off the
request path, stopped cleanly on shutdown.

Upkeep runs on its own small thread pool (``maintenance_executor``), never on the threads that serve
searches and writes, so a long rebuild cannot starve them; its FAISS work is limited to one OpenMP thread
(the OpenMP setting is per calling thread), leaving the other cores to searches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar, TypeVarTuple

from ragcluster.workers import fixed_pool
from shard_server.shard import Shard

logger = logging.getLogger(__name__)
T = TypeVar("T")
Args = TypeVarTuple("Args")


def _limit_openmp(threads: int) -> None:
    import faiss

    faiss.omp_set_num_threads(threads)  # this thread's parallel regions only


def maintenance_executor(threads: int = 2, openmp_threads: int = 1) -> ThreadPoolExecutor:
    """The bounded pool for checkpoints, rebuilds and snapshots (shared by a shard's successive opens); its
    threads all start now, so their number is fixed from startup."""
    return fixed_pool(threads, "maintenance", initializer=_limit_openmp, initargs=(max(1, openmp_threads),))


class Maintenance:
    def __init__(self, shard: Shard, checkpoint_interval: float, executor: ThreadPoolExecutor | None = None):
        self.shard = shard
        self.interval = checkpoint_interval
        self._owns_executor = executor is None
        self.executor = executor or maintenance_executor()
        self._stop = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._rebuild_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.interval > 0:
            self._loop_task = asyncio.create_task(self._checkpoints())

    async def run(self, fn: Callable[[*Args], T], *args: *Args) -> T:
        """Run ``fn(*args)`` on the maintenance pool."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _checkpoints(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.interval)
            if self._stop.is_set():
                return
            try:
                await self.run(self.shard.checkpoint)
            except Exception:  # keep checkpointing later; the store stays the source of truth
                logger.exception("periodic checkpoint failed")

    def after_write(self) -> None:
        """Called after each acknowledged write: start a background rebuild when tombstones pile up."""
        if (self._rebuild_task is None or self._rebuild_task.done()) and self.shard.needs_rebuild():
            self._rebuild_task = asyncio.create_task(self._rebuild())

    async def _rebuild(self) -> None:
        try:
            await self.run(self.shard.rebuild)
        except Exception:
            logger.exception("background rebuild failed; searches keep filtering tombstones")

    async def stop(self) -> None:
        self._stop.set()
        for task in (self._loop_task, self._rebuild_task):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._owns_executor:
            self.executor.shutdown(wait=False)
