"""Background upkeep of a shard: periodic index checkpoints and tombstone-triggered rebuilds, off the
request path (in threads), stopped cleanly on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from shard_server.shard import Shard

logger = logging.getLogger(__name__)


class Maintenance:
    def __init__(self, shard: Shard, checkpoint_interval: float):
        self.shard = shard
        self.interval = checkpoint_interval
        self._stop = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._rebuild_task: asyncio.Task | None = None

    def start(self) -> None:
        if self.interval > 0:
            self._loop_task = asyncio.create_task(self._checkpoints())

    async def _checkpoints(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.interval)
            if self._stop.is_set():
                return
            try:
                await asyncio.to_thread(self.shard.checkpoint)
            except Exception:  # keep checkpointing later; the store stays the source of truth
                logger.exception("periodic checkpoint failed")

    def after_write(self) -> None:
        """Called after each acknowledged write: start a background rebuild when tombstones pile up."""
        if (self._rebuild_task is None or self._rebuild_task.done()) and self.shard.needs_rebuild():
            self._rebuild_task = asyncio.create_task(self._rebuild())

    async def _rebuild(self) -> None:
        try:
            await asyncio.to_thread(self.shard.rebuild)
        except Exception:
            logger.exception("background rebuild failed; searches keep filtering tombstones")

    async def stop(self) -> None:
        self._stop.set()
        for task in (self._loop_task, self._rebuild_task):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
