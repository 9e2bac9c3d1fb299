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
