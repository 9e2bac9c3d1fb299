"""Embedding micro-batching with a priority lane for queries.

Queries: one worker takes the first waiting query, gathers more for at most ``max_wait`` (or until
``max_batch``), and encodes them together on a single dedicated thread. While a batch is encoding, new
queries queue up and form the next batch, so under load batches grow by themselves and throughput scales
with concurrency; at low load a query waits at most ``max_wait``. With ``encode_parts`` (the ONNX embedder
encodes a batch in parts of similar token lengths, shortest first) each caller is answered as soon as its
part is done, so a short query does not wait for the long ones it was batched with (parts done while the
event loop was busy are still answered in one turn of it, so their searches still reach the shards as one
batched call: ``router.replicas.SearchBatcher``).

With ``encode_one`` (int8 ONNX: every text is a pass of its own anyway) there are no batches: the worker
starts each query's pass as soon as one of ``passes`` pass threads is free, so a query waits for a free
core, never for the rest of a batch to finish (with batches, a query that arrived while a batch was being
encoded waited for its longest text). A query that finds no other pass in flight runs on every core.

Bulk (documents being ingested) goes through the same worker in a second, lower-priority lane, cut into
chunks of ``bulk_chunk`` texts: the worker encodes a bulk chunk only when no query waits, so during a
bulk ingest a query waits for at most one small chunk, never for a whole ingest batch.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import cast

import numpy as np

from router import metrics

# encode(texts, on_part): calls on_part(rows, vectors) for each part of texts as it is done (Embedder.encode_parts)
EncodeParts = Callable[[list[str], Callable[[list[int], np.ndarray], None]], None]
# encode_one(text, alone): one text's vector; alone = no other pass in flight (Embedder.encode_one)
EncodeOne = Callable[[str, bool], np.ndarray]


class MicroBatcher:
    def __init__(self, encode: Callable[[list[str]], np.ndarray], max_batch: int = 32, max_wait_us: int = 500,
                 executor: ThreadPoolExecutor | None = None, bulk_chunk: int = 16,
                 encode_parts: EncodeParts | None = None, encode_one: EncodeOne | None = None, passes: int = 0,
                 pass_executor: Executor | None = None):
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if bulk_chunk < 1:
            raise ValueError("bulk_chunk must be >= 1")
        self._encode = encode
        self._encode_parts = encode_parts
        self.max_batch = max_batch
        self.max_wait = max_wait_us / 1e6
        self.bulk_chunk = bulk_chunk
        self._owns_executor = executor is None  # a shared executor is shut down by its owner
        self.executor = executor or ThreadPoolExecutor(1, thread_name_prefix="embed")
        self._queue: asyncio.Queue[tuple[str, asyncio.Future, float]] = asyncio.Queue()
        self._bulk: collections.deque[tuple[list[str], asyncio.Future]] = collections.deque()
        self._work = asyncio.Event()  # set whenever either lane has something
        self._worker: asyncio.Task | None = None
        # one-text passes (encode_one): how many may run at once, on which threads, how many are running
        self._encode_one = encode_one if passes >= 1 and pass_executor is not None else None
        self._pass_executor = pass_executor
        self._slots = asyncio.Semaphore(max(passes, 1))
        self._passing = 0
        self._passes_idle = asyncio.Event()
        self._passes_idle.set()

    def _ensure_worker(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._run())

    async def encode(self, text: str) -> np.ndarray:
        """The embedding of one query text (1-d float32); served before any bulk work."""
        self._ensure_worker()
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((text, future, time.perf_counter()))
        self._work.set()
        return await future

    async def encode_bulk(self, texts: list[str]) -> np.ndarray:
        """Embeddings of many texts (e.g. an ingest batch), encoded in small chunks whenever no query
        waits; rows in the order of ``texts``."""
        self._ensure_worker()
        loop = asyncio.get_running_loop()
        futures = []
        for start in range(0, len(texts), self.bulk_chunk):
            future = loop.create_future()
            self._bulk.append((texts[start:start + self.bulk_chunk], future))
            futures.append(future)
        self._work.set()
        try:
            parts = await asyncio.gather(*futures)
        finally:
            for f in futures:
                f.cancel()  # a cancelled caller's remaining chunks are skipped
        if not parts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(parts)

    async def _gather_queries(self, loop: asyncio.AbstractEventLoop) -> list[tuple[str, asyncio.Future, float]]:
        batch = [self._queue.get_nowait()]
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
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._queue.empty() and not self._bulk:
                self._work.clear()
                await self._work.wait()
                continue
            if not self._queue.empty():
                if self._encode_one is not None:
                    await self._start_pass(loop)
                else:
                    await self._run_queries(loop, await self._gather_queries(loop))
            else:
                await self._passes_idle.wait()  # a bulk chunk takes every core: it starts once no pass runs
                if not self._queue.empty():  # a query came meanwhile: it goes first
                    continue
                texts, future = self._bulk.popleft()
                if future.done():  # its caller went away
                    continue
                start = time.perf_counter()
                try:
                    vectors = await loop.run_in_executor(self.executor, self._encode, texts)
                except Exception as exc:
                    if not future.done():
                        future.set_exception(exc)
                    continue
                metrics.EMBED_SECONDS.labels("document").observe(time.perf_counter() - start)
                if not future.done():
                    future.set_result(vectors)

    async def _start_pass(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take the first waiting query once a pass thread is free and start its pass (not awaited: the
        worker goes on to the next query); its caller is answered when the pass ends."""
        assert self._encode_one is not None
        await self._slots.acquire()
        text, future, queued = self._queue.get_nowait()  # only this worker takes from the queue
        if future.done():  # its caller went away while it waited
            self._slots.release()
            return
        alone = self._passing == 0
        self._passing += 1
        self._passes_idle.clear()
        start = time.perf_counter()
        metrics.EMBED_WAIT_SECONDS.observe(start - queued)
        metrics.EMBED_BATCH_SIZE.observe(1)

        def done(outcome: asyncio.Future[np.ndarray]) -> None:
            self._passing -= 1
            if not self._passing:
                self._passes_idle.set()
            self._slots.release()
            if future.done():
                if not outcome.cancelled():
                    outcome.exception()  # retrieved: nobody is waiting for it
                return
            if outcome.cancelled():
                future.cancel()
            elif outcome.exception() is not None:
                future.set_exception(cast(BaseException, outcome.exception()))
            else:
                metrics.EMBED_SECONDS.labels("query").observe(time.perf_counter() - start)
                future.set_result(outcome.result())

        loop.run_in_executor(self._pass_executor, self._encode_one, text, alone).add_done_callback(done)

    async def _run_queries(self, loop: asyncio.AbstractEventLoop, batch: list) -> None:
        live = [(t, f, q) for t, f, q in batch if not f.done()]  # cancelled callers drop out
        if not live:
            return
        start = time.perf_counter()
        for _, _, queued in live:
            metrics.EMBED_WAIT_SECONDS.observe(start - queued)
        metrics.EMBED_BATCH_SIZE.observe(len(live))
        texts = [t for t, _, _ in live]

        def answer(rows: list[int], vectors: np.ndarray) -> None:
            for r, v in zip(rows, vectors):
                if not live[r][1].done():
                    live[r][1].set_result(v)

        try:
            if self._encode_parts is None:
                answer(list(range(len(live))), await loop.run_in_executor(self.executor, self._encode, texts))
            else:  # each part's callers are answered as soon as it is done, not when the whole batch is
                parts = self._encode_parts

                def relay(rows: list[int], vectors: np.ndarray) -> None:  # on an embedding thread
                    loop.call_soon_threadsafe(answer, rows, vectors)

                await loop.run_in_executor(self.executor, parts, texts, relay)
        except Exception as exc:  # every waiter not answered yet learns of the failure
            for _, f, _ in live:
                if not f.done():
                    f.set_exception(exc)
            return
        metrics.EMBED_SECONDS.labels("query").observe(time.perf_counter() - start)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._owns_executor:
            self.executor.shutdown(wait=False)
