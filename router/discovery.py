"""Backend discovery: turn configured addresses into the addresses of every backend behind them.

``dns:///host:port`` resolves to every address the name has (a Kubernetes headless service lists one per
pod); anything else is taken as one host:port. Names are resolved off the event loop (in a thread, with a
timeout), and a failed or empty lookup keeps the last good answer: a DNS outage must not drop every
replica behind the name.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

Lookup = Callable[[str, int], list[tuple]]  # socket.getaddrinfo-like: (host, port) -> address infos


def _getaddrinfo(host: str, port: int) -> list[tuple]:
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


def _split(spec: str) -> tuple[str, str]:
    target = spec.split("///", 1)[-1] if "///" in spec else spec[4:]
    host, _, port = target.rpartition(":")
    return host, port


class Resolver:
    """Resolves address specs, remembering the last good answer of each name."""

    def __init__(self, lookup: Lookup = _getaddrinfo, timeout: float = 5.0):
        self._lookup = lookup
        self.timeout = timeout
        self.last_good: dict[str, list[str]] = {}

    async def resolve(self, spec: str) -> list[str]:
        """Every address behind ``spec``; on a failed or empty lookup, the last good answer (or [])."""
        if not spec.startswith("dns:"):
            return [spec]
        host, port = _split(spec)
        try:
            infos = await asyncio.wait_for(asyncio.to_thread(self._lookup, host, int(port)), self.timeout)
        except (OSError, ValueError, TimeoutError) as exc:
            kept = self.last_good.get(spec, [])
            logger.warning("cannot resolve %s (%s); keeping the last good addresses %s", spec, str(exc) or
                           type(exc).__name__, kept)
            return list(kept)
        out = sorted({f"[{info[4][0]}]:{port}" if info[0] == socket.AF_INET6 else f"{info[4][0]}:{port}"
                      for info in infos})
        if not out:
            kept = self.last_good.get(spec, [])
            logger.warning("%s resolved to no address; keeping the last good addresses %s", spec, kept)
            return list(kept)
        self.last_good[spec] = out
        return out

    async def resolve_all(self, specs: list[str]) -> list[str]:
        """The union of every spec's addresses, sorted."""
        parts = await asyncio.gather(*(self.resolve(s) for s in specs))
        return sorted({a for part in parts for a in part})


def refresh_periodically(refresh: Callable[[], Awaitable[None]], every: float, what: str) -> asyncio.Task[None]:
    """A task that awaits ``refresh`` every ``every`` seconds until cancelled (its owner cancels it on close).
    A failed refresh is logged (as ``what``) and keeps what the last one found; the next tick tries again."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(every)  # periodic re-resolution (a timer)
            try:
                await refresh()
            except Exception:
                logger.exception("%s failed", what)

    return asyncio.create_task(loop())
