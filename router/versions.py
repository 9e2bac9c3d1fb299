"""Write versions: a hybrid logical clock (pure: no grpc).

Every write a router sends gets a version = physical milliseconds << 20 | a 12-bit counter << 8 | an 8-bit
node id. Versions of one router strictly increase (the counter carries writes within one millisecond and
a clock that steps back); routers that write at once get distinct versions (node ids differ with high
probability; a tie is still decided the same on every replica, by content hash). Replicas keep the
highest version of each document (last writer wins), so the order in which writes arrive does not matter.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

COUNTER_BITS = 12
NODE_BITS = 8
MS_SHIFT = COUNTER_BITS + NODE_BITS  # a version's milliseconds are version >> MS_SHIFT


def version_span(seconds: float) -> int:
    """A duration in version units (``version - version_span(s)`` is a version ``s`` seconds older)."""
    return int(seconds * 1000) << MS_SHIFT


class HybridClock:
    def __init__(self, node: int | None = None, wall: Callable[[], float] = time.time) -> None:
        self.node = (random.getrandbits(NODE_BITS) if node is None else node) & ((1 << NODE_BITS) - 1)
        self._wall = wall
        self._last_ms = 0
        self._counter = 0
        self._lock = threading.Lock()

    def now(self) -> int:
        """A version above every version this clock issued or observed."""
        with self._lock:
            ms = int(self._wall() * 1000)
            if ms > self._last_ms:
                self._last_ms, self._counter = ms, 0
            else:
                self._counter += 1
                if self._counter >> COUNTER_BITS:  # counter overflow: borrow the next millisecond
                    self._last_ms, self._counter = self._last_ms + 1, 0
            return (self._last_ms << (COUNTER_BITS + NODE_BITS)) | (self._counter << NODE_BITS) | self.node

    def observe(self, version: int) -> None:
        """Move past a version seen elsewhere (another router's write), so later writes here win."""
        ms = version >> (COUNTER_BITS + NODE_BITS)
        counter = (version >> NODE_BITS) & ((1 << COUNTER_BITS) - 1)
        with self._lock:
            if (ms, counter) > (self._last_ms, self._counter):
                self._last_ms, self._counter = ms, counter
