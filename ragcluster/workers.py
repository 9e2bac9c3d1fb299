"""Worker threads whose number is fixed from startup, and the allocator setting that goes with them.

A long-running server's memory should reach its steady state by design, not by luck: Python's
``ThreadPoolExecutor`` (and asyncio's default executor behind ``asyncio.to_thread``) starts a thread only when
a task finds no idle one, so under a steady load new threads keep appearing for minutes, each with its own
stack, thread-local state (a shard's SQLite reader connection) and, in glibc, possibly its own malloc arena.
``fixed_pool`` starts every thread at once; ``limit_malloc_arenas`` caps glibc's arenas (default: 8 per core), whose
free-but-fragmented memory grew a shard's RSS while the memory in use stayed flat (issue 16's soak).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

logger = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def default_threads() -> int:
    """asyncio's default executor size: cores + 4, at most 32."""
    return min(32, (os.cpu_count() or 1) + 4)


def fixed_pool(threads: int, name: str, initializer: Callable[..., object] | None = None,
               initargs: tuple[Any, ...] = (), timeout: float = 60.0) -> ThreadPoolExecutor:
    """A thread pool with all ``threads`` threads running when it is returned (the count never changes): one
    task per thread, each waiting at a barrier until all have started, so no thread can take two of them."""
    threads = max(1, threads)
    pool = ThreadPoolExecutor(threads, thread_name_prefix=name, initializer=initializer, initargs=initargs)
    barrier = threading.Barrier(threads)

    def start() -> None:
        try:
            barrier.wait(timeout)
        except threading.BrokenBarrierError:
            raise TimeoutError(f"not all {threads} {name} threads started within {timeout:g}s") from None

    futures = [pool.submit(start) for _ in range(threads)]
    wait(futures, timeout + 5)
    for future in futures:
        future.result(0)
    return pool


def limit_malloc_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas at ``arenas`` (like ``MALLOC_ARENA_MAX``); 0 leaves the default. Threads
    created afterwards share the existing arenas. True when applied (False: not glibc, or 0)."""
    if arenas <= 0:
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(name)
        if libc.mallopt(M_ARENA_MAX, arenas) == 1:  # 1 = success; musl has no such parameter
            return True
    logger.debug("mallopt(M_ARENA_MAX) is not available here; malloc arenas left at their default")
    return False
