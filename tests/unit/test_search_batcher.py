"""SearchBatcher (router/replicas.py) with fake shard groups: grouping by request shape, the fallback to
one call per search when a batch is refused, per-search deadlines, lexical searches left alone."""

from __future__ import annotations

import asyncio
from typing import cast

import numpy as np
import pytest

from ragcluster.convert import matrix_from_pb, matrix_to_pb
from ragcluster.errors import InvalidArgument
from ragcluster.v1 import common_pb2, shard_pb2
from router.replicas import SearchBatcher, ShardGroup


class FakeGroup:
    """A shard whose answer row i holds the id ``int(first value of query row i)``."""

    def __init__(self, shard: int, max_rows: int = 1000, delay: float = 0.0):
        self.shard, self.max_rows, self.delay = shard, max_rows, delay
        self.calls: list[int] = []  # rows per call

    async def search(self, request, timeout, method="Search"):
        rows = matrix_from_pb(request.queries) if request.queries.rows else np.zeros((0, 2), np.float32)
        self.calls.append(len(rows))
        if self.delay:
            await asyncio.sleep(self.delay)  # a slow shard
        if len(rows) > self.max_rows:
            raise InvalidArgument("k: the answer with documents would be too large")
        response = shard_pb2.ShardSearchResponse(shard=self.shard, vectors_searched=7)
        for row in rows:
            response.results.add(ids=[int(row[0])], scores=[float(row[1])])
        return response


def as_groups(*fakes: FakeGroup) -> list[ShardGroup]:
    """The fakes where the batcher wants shard groups (it only calls ``search`` and reads ``shard``)."""
    return cast("list[ShardGroup]", list(fakes))


def request(value: float, k: int = 5) -> shard_pb2.ShardSearchRequest:
    return shard_pb2.ShardSearchRequest(k=k, include_documents=True,
                                        queries=matrix_to_pb(np.array([[value, value / 10]], np.float32)))


def ids(answers) -> list[int]:
    return [a.response.results[a.row].ids[0] for a in answers]


async def test_searches_of_one_turn_share_a_call_and_read_their_own_rows():
    groups = [FakeGroup(0), FakeGroup(1)]
    batcher = SearchBatcher(64)
    answers = await asyncio.gather(*(batcher.fan_out(as_groups(*groups), request(v), 5.0) for v in (3, 1, 4, 1, 5)))
    assert [ids(a) for a in answers] == [[3, 3], [1, 1], [4, 4], [1, 1], [5, 5]]
    assert [g.calls for g in groups] == [[5], [5]]


async def test_different_shapes_are_not_mixed():
    group = FakeGroup(0)
    batcher = SearchBatcher(64)
    answers = await asyncio.gather(batcher.fan_out(as_groups(group), request(1, k=5), 5.0),
                                   batcher.fan_out(as_groups(group), request(2, k=10), 5.0),
                                   batcher.fan_out(as_groups(group), request(3, k=5), 5.0))
    assert [ids(a) for a in answers] == [[1], [2], [3]]
    assert sorted(group.calls) == [1, 2]


async def test_a_refused_batch_is_retried_one_search_at_a_time():
    group = FakeGroup(0, max_rows=1)
    batcher = SearchBatcher(64)
    answers = await asyncio.gather(*(batcher.fan_out(as_groups(group), request(v), 5.0) for v in (7, 8, 9)))
    assert [ids(a) for a in answers] == [[7], [8], [9]]
    assert sorted(group.calls) == [1, 1, 1, 3]


async def test_a_refused_single_search_is_invalid_argument():
    with pytest.raises(InvalidArgument):
        await SearchBatcher(64).fan_out(as_groups(FakeGroup(0, max_rows=0)), request(1), 5.0)


async def test_each_search_keeps_its_own_deadline():
    group = FakeGroup(0, delay=0.5)
    batcher = SearchBatcher(64)
    short, long = await asyncio.gather(batcher.fan_out(as_groups(group), request(1), 0.05),
                                       batcher.fan_out(as_groups(group), request(2), 5.0))
    failure = short[0].failure
    assert short[0].response is None and failure is not None
    assert failure.reason == common_pb2.SHARD_FAILURE_REASON_TIMEOUT
    assert ids(long) == [2] and group.calls == [2]


async def test_lexical_searches_and_disabled_batching_go_alone():
    group = FakeGroup(0)
    lexical = shard_pb2.ShardSearchRequest(k=5)
    lexical.lexical.add(terms=["a"], counts=[1], document_frequencies=[1], documents=1, total_length=1)
    await asyncio.gather(SearchBatcher(64).fan_out(as_groups(group), lexical, 5.0),
                         SearchBatcher(64).fan_out(as_groups(group), lexical, 5.0))
    assert group.calls == [0, 0]
    group.calls.clear()
    batcher = SearchBatcher(1)
    await asyncio.gather(*(batcher.fan_out(as_groups(group), request(v), 5.0) for v in (1, 2)))
    assert group.calls == [1, 1]
