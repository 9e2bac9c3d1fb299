"""Query-embedding micro-batching: concurrent texts are coalesced into one encode call.

One worker takes the first waiting text, gathers more for at most ``max_wait`` (or until ``max_batch``),
and encodes them together on a single dedicated thread. While a batch is encoding, new requests queue up
and form the next batch, so under load batches grow by themselves and throughput scales with
concurrency; at low load a request waits at most ``max_wait``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from router import metrics


class MicroBatcher:
    def __init__(self, encode: Callable[[list[str]], np.ndarray], max_batch: int = 32, max_wait_us: int = 500,
                 executor: ThreadPoolExecutor | None = None):
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._encode = encode
        self.max_batch = max_batch
        self.max_wait = max_wait_us / 1e6
        self._owns_executor = executor is None  # a shared executor is shut down by its owner
        self.executor = executor or ThreadPoolExecutor(1, thread_name_prefix="embed")
        self._queue: asyncio.Queue[tuple[str, asyncio.Future, float]] = asyncio.Queue()
        self._worker: asyncio.Task | None = None

    async def encode(self, text: str) -> np.ndarray:
        """The embedding of one text (1-d float32)."""
        if self._worker is None:
            self._worker = asyncio.create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((text, future, time.perf_counter()))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            live = [(t, f, q) for t, f, q in batch if not f.done()]  # cancelled callers drop out
            if not live:
                continue
            start = time.perf_counter()
            for _, _, queued in live:
                metrics.EMBED_WAIT_SECONDS.observe(start - queued)
            metrics.EMBED_BATCH_SIZE.observe(len(live))
            try:
                vectors = await loop.run_in_executor(self.executor, self._encode, [t for t, _, _ in live])
            except Exception as exc:  # every waiter learns of the failure
                for _, f, _ in live:
                    if not f.done():
                        f.set_exception(exc)
                continue
            metrics.EMBED_SECONDS.labels("query").observe(time.perf_counter() - start)
            for (_, f, _), v in zip(live, vectors):
                if not f.done():
                    f.set_result(v)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._owns_executor:
            self.executor.shutdown(wait=False)
