import asyncio
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
