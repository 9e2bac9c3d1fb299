import asyncio
import contextlib
import threading

import numpy as np
import pytest

from router.batching import MicroBatcher


def fake_encode(calls):
    gate = threading.Event()

    def encode(texts):
        calls.append(list(texts))
        gate.wait(0.05)  # a slow model: concurrent requests pile up meanwhile
        return np.array([[float(len(t)), float(t.count("a"))] for t in texts], dtype=np.float32)

    return encode


async def test_concurrent_texts_are_coalesced_and_answers_match():
    calls: list[list[str]] = []
    batcher = MicroBatcher(fake_encode(calls), max_batch=8, max_wait_us=2000)
    texts = [("a" * i) + "b" * (20 - i) for i in range(20)]
    vectors = await asyncio.gather(*(batcher.encode(t) for t in texts))
    for t, v in zip(texts, vectors):  # every caller gets its own text's vector
        assert v.tolist() == [float(len(t)), float(t.count("a"))]
    assert sum(len(c) for c in calls) == 20
    assert len(calls) < 20 and max(len(c) for c in calls) <= 8
    await batcher.close()


async def test_batch_size_one_disables_batching():
    calls: list[list[str]] = []
    batcher = MicroBatcher(fake_encode(calls), max_batch=1, max_wait_us=2000)
    await asyncio.gather(*(batcher.encode(str(i)) for i in range(5)))
    assert [len(c) for c in calls] == [1] * 5
    await batcher.close()


async def test_encode_errors_reach_every_waiter_and_the_worker_survives():
    state = {"fail": True}

    def encode(texts):
        if state["fail"]:
            raise RuntimeError("model broke")
        return np.zeros((len(texts), 2), np.float32)

    batcher = MicroBatcher(encode, max_batch=4, max_wait_us=1000)
    results = await asyncio.gather(*(batcher.encode("x") for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    state["fail"] = False
    assert (await batcher.encode("y")).shape == (2,)
    await batcher.close()


async def test_cancelled_waiter_does_not_break_the_batch():
    calls: list[list[str]] = []
    batcher = MicroBatcher(fake_encode(calls), max_batch=4, max_wait_us=20000)
    doomed = asyncio.create_task(batcher.encode("doomed"))
    kept = asyncio.create_task(batcher.encode("kept"))
    await asyncio.sleep(0)
    doomed.cancel()
    assert (await kept).tolist() == [4.0, 0.0]
    with pytest.raises(asyncio.CancelledError):
        await doomed
    await batcher.close()


async def test_queries_overtake_bulk_work():
    """During a bulk encode (an ingest), a query waits for at most the chunk in progress (issue 16, item 10)."""
    calls, started, release = [], threading.Event(), threading.Event()

    def encode(texts):
        calls.append(list(texts))
        if len(calls) == 1:  # the first bulk chunk is encoding when the query arrives
            started.set()
            assert release.wait(30)
        return np.array([[float(len(t)), float(t.count("a"))] for t in texts], dtype=np.float32)

    batcher = MicroBatcher(encode, max_batch=8, max_wait_us=100, bulk_chunk=2)
    docs = ["a" * i for i in range(1, 11)]
    bulk = asyncio.create_task(batcher.encode_bulk(docs))
    assert await asyncio.to_thread(started.wait, 30)
    query = asyncio.create_task(batcher.encode("query"))
    for _ in range(100):  # bounded: the task enqueues its text at its first step
        if not batcher._queue.empty():
            break
        await asyncio.sleep(0)
    release.set()
    assert (await query).tolist() == [5.0, 0.0]
    vectors = await bulk
    assert calls[0] == docs[:2] and calls[1] == ["query"]  # before the 4 remaining bulk chunks
    assert [c for c in calls if c != ["query"]] == [docs[i:i + 2] for i in range(0, 10, 2)]
    assert vectors[:, 0].tolist() == [float(len(d)) for d in docs]  # rows in order
    await batcher.close()


async def test_cancelled_bulk_skips_its_remaining_chunks():
    calls: list[list[str]] = []
    batcher = MicroBatcher(fake_encode(calls), max_batch=4, max_wait_us=100, bulk_chunk=1)
    bulk = asyncio.create_task(batcher.encode_bulk([str(i) for i in range(50)]))
    for _ in range(1000):  # bounded: wait until the first chunk was taken
        if calls:
            break
        await asyncio.sleep(0.001)
    bulk.cancel()
    with pytest.raises(asyncio.CancelledError):
        await bulk
    assert (await batcher.encode("after")).tolist() == [5.0, 1.0]
    assert len(calls) < 50
    await batcher.close()


async def test_each_part_is_answered_as_soon_as_it_is_encoded():
    """With encode_parts, a caller whose part is done gets its vector while later parts are still encoding."""
    first_part_answered = threading.Event()
    parts_run: list[list[int]] = []

    def encode_parts(texts, on_part):
        rows = list(range(len(texts)))
        for part in (rows[:1], rows[1:]):
            if len(parts_run) == 1:  # the second part waits until the first part's caller has its answer
                assert first_part_answered.wait(10), "the first part's caller was not answered before the batch ended"
            parts_run.append(part)
            on_part(part, np.array([[float(len(texts[r])), 0.0] for r in part], dtype=np.float32))

    batcher = MicroBatcher(lambda texts: pytest.fail("encode_parts is used for queries"), max_batch=4,
                           max_wait_us=20000, encode_parts=encode_parts)
    first = asyncio.create_task(batcher.encode("a"))
    rest = [asyncio.create_task(batcher.encode("b" * n)) for n in (2, 3)]
    assert (await asyncio.wait_for(first, 10)).tolist() == [1.0, 0.0]
    first_part_answered.set()
    assert [(await asyncio.wait_for(t, 10)).tolist() for t in rest] == [[2.0, 0.0], [3.0, 0.0]]
    assert parts_run == [[0], [1, 2]]
    await batcher.close()


async def test_an_error_in_a_later_part_reaches_only_the_callers_not_yet_answered():
    def encode_parts(texts, on_part):
        on_part([0], np.zeros((1, 2), np.float32))
        raise RuntimeError("model broke")

    batcher = MicroBatcher(lambda texts: np.zeros((len(texts), 2), np.float32), max_batch=4, max_wait_us=20000,
                           encode_parts=encode_parts)
    results = await asyncio.gather(*(batcher.encode(t) for t in ("x", "y", "z")), return_exceptions=True)
    assert isinstance(results[0], np.ndarray) and results[0].tolist() == [0.0, 0.0]
    assert all(isinstance(r, RuntimeError) for r in results[1:])
    await batcher.close()


class Passes:
    """A fake encode_one: each pass blocks until its text is released; records concurrency and ``alone``."""

    def __init__(self) -> None:
        self.release: dict[str, threading.Event] = {}
        self.started: list[tuple[str, bool]] = []
        self.running = 0
        self.most = 0
        self.lock = threading.Lock()

    def gate(self, text: str) -> threading.Event:
        with self.lock:
            return self.release.setdefault(text, threading.Event())

    def __call__(self, text: str, alone: bool) -> np.ndarray:
        with self.lock:
            self.started.append((text, alone))
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            assert self.gate(text).wait(10), f"{text} never released"
            if text.startswith("bad"):
                raise RuntimeError("model broke")
            return np.array([float(len(text)), 0.0], dtype=np.float32)
        finally:
            with self.lock:
                self.running -= 1


async def wait_until(predicate, seconds: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


@contextlib.asynccontextmanager
async def pass_batcher(passes: Passes, n: int = 2, **kwargs):
    """A MicroBatcher running one-text passes on ``n`` threads; yields it and the bulk encode's calls."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(n)
    bulk_calls: list[list[str]] = []
    batcher = MicroBatcher(fake_encode(bulk_calls), max_batch=32, max_wait_us=500, encode_one=passes, passes=n,
                           pass_executor=pool, **kwargs)
    try:
        yield batcher, bulk_calls
    finally:
        for gate in list(passes.release.values()):
            gate.set()  # a failed test leaves no pass blocked
        await batcher.close()
        pool.shutdown()


async def test_one_text_passes_start_as_soon_as_a_thread_is_free_not_after_a_batch():
    passes = Passes()
    async with pass_batcher(passes) as (batcher, _):
        await one_pass_per_free_thread(passes, batcher)


async def one_pass_per_free_thread(passes: Passes, batcher: MicroBatcher) -> None:
    slow = asyncio.create_task(batcher.encode("slow text"))
    await wait_until(lambda: len(passes.started) == 1)
    quick = asyncio.create_task(batcher.encode("quick"))  # arrives while "slow" is in its pass
    await wait_until(lambda: len(passes.started) == 2)
    passes.gate("quick").set()
    assert (await asyncio.wait_for(quick, 5)).tolist() == [5.0, 0.0]  # answered while "slow" still runs
    assert not slow.done()
    third = asyncio.create_task(batcher.encode("third"))
    fourth = asyncio.create_task(batcher.encode("fourth"))
    await wait_until(lambda: len(passes.started) == 3)
    await asyncio.sleep(0.02)
    assert len(passes.started) == 3 and passes.running == 2  # never more passes than threads
    for text in ("slow text", "third", "fourth"):
        passes.gate(text).set()
    await asyncio.gather(slow, third, fourth)
    assert passes.most == 2
    assert passes.started[0] == ("slow text", True)  # nothing else in flight: every core
    assert passes.started[1] == ("quick", False)  # beside another pass: its own core


async def test_a_failed_pass_reaches_its_caller_only_and_a_cancelled_query_is_skipped():
    passes = Passes()
    async with pass_batcher(passes, n=1) as (batcher, _):
        first = asyncio.create_task(batcher.encode("bad one"))
        await wait_until(lambda: len(passes.started) == 1)
        doomed = asyncio.create_task(batcher.encode("doomed"))  # waits for the only thread
        kept = asyncio.create_task(batcher.encode("kept"))
        await wait_until(lambda: batcher._queue.qsize() == 2)
        doomed.cancel()
        passes.gate("bad one").set()
        passes.gate("kept").set()
        with pytest.raises(RuntimeError, match="model broke"):
            await first
        assert (await kept).tolist() == [4.0, 0.0]
        assert [t for t, _ in passes.started] == ["bad one", "kept"]  # the cancelled query never ran


async def test_bulk_waits_for_passes_in_flight_and_queries_still_go_first():
    passes = Passes()
    async with pass_batcher(passes, bulk_chunk=2) as (batcher, bulk_calls):
        query = asyncio.create_task(batcher.encode("query one"))
        await wait_until(lambda: len(passes.started) == 1)
        bulk = asyncio.create_task(batcher.encode_bulk(["d1", "d2", "d3"]))
        await asyncio.sleep(0.02)  # a check that nothing happens: bounded, not a synchronisation
        assert bulk_calls == []  # a bulk chunk takes every core: not while a pass runs
        passes.gate("query one").set()
        await query
        vectors = await asyncio.wait_for(bulk, 5)
        assert vectors.shape == (3, 2) and bulk_calls == [["d1", "d2"], ["d3"]]
