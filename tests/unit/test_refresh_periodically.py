"""router/discovery.py:refresh_periodically, the one timer behind the shard-replica and generator DNS refresh:
a failing refresh is logged and retried at the next tick, and cancelling the task stops it."""

from __future__ import annotations

import asyncio
import logging

import pytest

from router.discovery import refresh_periodically


async def test_a_failed_refresh_is_logged_and_the_next_tick_tries_again(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    third = asyncio.Event()

    async def refresh() -> None:
        calls.append(len(calls))
        if len(calls) >= 3:
            third.set()
        if len(calls) == 1:
            raise OSError("resolver down")

    with caplog.at_level(logging.ERROR, logger="router.discovery"):
        task = refresh_periodically(refresh, 0.01, "shard 7: replica refresh")
        await asyncio.wait_for(third.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    done = len(calls)
    await asyncio.sleep(0.05)
    assert len(calls) == done >= 3  # nothing after the cancel
    assert [r.getMessage() for r in caplog.records] == ["shard 7: replica refresh failed"]
    assert caplog.records[0].exc_info is not None and "resolver down" in str(caplog.records[0].exc_info[1])
