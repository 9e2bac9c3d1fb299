"""Shard replicas as the router sees them, and the fan-out.

Reads: each shard call gets the caller's remaining budget; a replica is chosen by least outstanding
requests among those SERVING (health-watched) and not ejected; on UNAVAILABLE the call fails over to the
next replica; when the first replica has not answered after the hedge delay (default: the shard's observed
p95), a hedged request goes to a second replica, the first answer wins and the other call is cancelled.
A replica is ejected after consecutive failures and comes back when its health says SERVING again.
One shard failing never fails a search: it is reported in the coverage.

Writes go to every live replica of the owning shard, one batch at a time per shard (so replicas apply
the same batches in the same order and their sequence numbers are comparable), and are acknowledged
when all live replicas (policy ``all``) or a majority of all replicas (policy ``majority``) made them
durable. A replica that comes back behind (lower sequence than the most advanced live replica), or that
missed a write, is taken out of reads and restored from a snapshot of an up-to-date replica first.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar, overload

import grpc
import numpy as np

from ragcluster import tracing
from ragcluster.channels import aio_channel
from ragcluster.errors import FailedPrecondition, InvalidArgument, Unavailable
from ragcluster.security import ClientTls
from ragcluster.v1 import common_pb2, shard_pb2, shard_pb2_grpc
from router import metrics
from router.discovery import Resolver, refresh_periodically
from router.health import Backend, Watchers
from router.versions import HybridClock, version_span

logger = logging.getLogger(__name__)
_Ack = TypeVar("_Ack")
# the reads that fan out: a vector/lexical Search, or TermStats (corpus statistics for lexical scoring)
ReadRequest = shard_pb2.ShardSearchRequest | shard_pb2.TermStatsRequest
ReadResponse = shard_pb2.ShardSearchResponse | shard_pb2.TermStatsResponse

_FAILOVER_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL,
                   grpc.StatusCode.RESOURCE_EXHAUSTED}
# Only these say something about the replica itself (transport down, server not serving). An answer too
# large for the message limit (RESOURCE_EXHAUSTED), a bad request, an expired caller budget or an error
# raised by one request's content would come back from any replica: they never count toward ejection.
_EJECT_CODES = {grpc.StatusCode.UNAVAILABLE}


@dataclass
class ReplicaPolicy:
    hedge_delay_ms: float = 0.0  # 0 = auto (observed p95), < 0 = no hedging
    eject_after: int = 3  # consecutive failures
    eject_seconds: float = 10.0
    write_quorum: str = "all"  # all (live replicas) | majority (of all replicas)
    anti_entropy_seconds: float = 30.0  # compare replicas this often (0 = only on events)
    tombstone_grace_seconds: float = 86400.0  # prune versioned deletes older than this after a complete pass (0: never)
    digest_buckets: int = 1024  # anti-entropy compares per-bucket hashes, then only the buckets that differ
    # an empty replica is restored from a snapshot (not merged document by document) when another holds at
    # least this many entries; below it the merge is as cheap and never replaces a store under a write
    snapshot_min_entries: int = 1000


_CLOCK: HybridClock | None = None


def default_clock() -> HybridClock:
    """The process's write clock (one per router, shared by every shard group)."""
    global _CLOCK
    if _CLOCK is None:
        _CLOCK = HybridClock()
    return _CLOCK


class Replica(Backend):
    def __init__(self, address: str, security: ClientTls | None = None) -> None:
        super().__init__(address, aio_channel(address, security))
        self.stub = shard_pb2_grpc.ShardServiceStub(self.channel)
        self.catching_up = False
        self.needs_sync = True  # check its sequence before it serves reads


@dataclass
class ShardAnswer:
    shard: int
    response: shard_pb2.ShardSearchResponse | shard_pb2.TermStatsResponse | None
    failure: common_pb2.ShardFailure | None = None
    row: int = 0  # this search's row in a batched response (results[row]); 0 for a call of its own


class ShardGroup:
    """One shard and its replicas."""

    def __init__(self, shard: int, addresses: list[str], policy: ReplicaPolicy | None = None,
                 resolver: Resolver | None = None, clock: HybridClock | None = None,
                 security: ClientTls | None = None):
        self.shard = shard
        self.security = security  # TLS for the channels to the replicas (None: plaintext)
        self.specs = list(addresses)
        self.resolver = resolver or Resolver()
        self.policy = policy or ReplicaPolicy()
        self.replicas: list[Replica] = []
        self._watchers = Watchers()
        self.write_lock = asyncio.Lock()
        self._latencies: collections.deque[float] = collections.deque(maxlen=512)
        self._rotation = itertools.count()
        self.last_documents = 0
        self._sync_task: asyncio.Task | None = None
        self._sync_wanted = False
        self._sync_lock = asyncio.Lock()  # one pass at a time (the background task, converge calls, start)
        self._refresh_task: asyncio.Task | None = None
        self._anti_entropy_task: asyncio.Task | None = None
        self.clock = clock or default_clock()
        self.digest_bytes = 0  # bytes of Digest and DigestBuckets answers read by anti-entropy (for measurements)
        self.tombstones_pruned = 0  # by this router's passes (for measurements; logged too)
        self.snapshot_restores = 0  # replicas this router restored from a snapshot (also ragcluster_router_catchups)
        metrics.preinitialise_shard(shard)
        for spec in self.specs:
            if not spec.startswith("dns:"):
                self.replicas.append(self._new_replica(spec))

    def _new_replica(self, address: str) -> Replica:
        replica = Replica(address, self.security)
        replica.on_serving = lambda r=replica: self._mark_for_sync(r)
        return replica

    async def start(self, refresh_seconds: float = 30.0) -> None:
        await self._add(await self.resolver.resolve_all([s for s in self.specs if s.startswith("dns:")]))
        await self._watchers.start(self.replicas, f"shard {self.shard} replica")
        await self.sync()  # compare the replicas before the first read
        if any(s.startswith("dns:") for s in self.specs):
            self._refresh_task = refresh_periodically(self.refresh, refresh_seconds,
                                                      f"shard {self.shard}: replica refresh")
        if self.policy.anti_entropy_seconds > 0:  # catches what other routers' failed writes left behind
            self._anti_entropy_task = asyncio.create_task(self._anti_entropy_loop(self.policy.anti_entropy_seconds))

    async def _add(self, addresses: list[str]) -> list[Replica]:
        known = {r.address for r in self.replicas}
        added = [self._new_replica(a) for a in addresses if a not in known]
        self.replicas.extend(added)
        return added

    async def refresh(self) -> None:
        """Re-resolve the replica addresses: watch new ones, stop watching and close the channels of
        those that left. A failed lookup keeps the last good addresses (router/discovery.py)."""
        wanted = set(await self.resolver.resolve_all(self.specs))
        async with self.write_lock:  # no write is in flight on a channel about to close
            added = await self._add(sorted(wanted))
            gone = [r for r in self.replicas if r.address not in wanted]
            self.replicas = [r for r in self.replicas if r.address in wanted]
        if added:
            logger.info("shard %d: new replicas %s", self.shard, [r.address for r in added])
            await self._watchers.start(added, f"shard {self.shard} replica")
        if gone:
            logger.info("shard %d: replicas %s left DNS", self.shard, [r.address for r in gone])
            await self._watchers.remove(gone)
            await asyncio.gather(*(r.channel.close(grace=2.0) for r in gone))  # in-flight reads may finish

    # --- reads ----------------------------------------------------------------------------------
    def readable(self) -> list[Replica]:
        """Replicas to read from, least outstanding first."""
        now = time.monotonic()
        ok = [r for r in self.replicas if r.usable(now) and not r.catching_up and not r.needs_sync]
        start = next(self._rotation) % max(len(ok), 1)  # equals take turns
        return sorted(ok[start:] + ok[:start], key=lambda r: r.outstanding)

    def hedge_delay(self) -> float | None:
        if self.policy.hedge_delay_ms < 0:
            return None
        if self.policy.hedge_delay_ms > 0:
            return self.policy.hedge_delay_ms / 1000
        if len(self._latencies) < 20:
            return 0.02  # until the shard's own latencies are known
        return min(max(float(np.percentile(self._latencies, 95)), 0.001), 1.0)

    async def _call(self, replica: Replica, request: ReadRequest, deadline: float, method: str = "Search",
                    attempt: str = "primary") -> ReadResponse:
        replica.outstanding += 1
        start = time.perf_counter()
        try:
            call = getattr(replica.stub, method)  # Search or TermStats: request and response types match it
            with tracing.client_call(f"ShardService/{method}", shard=self.shard, replica=replica.address,
                                     attempt=attempt) as metadata:
                response: ReadResponse = await call(request, timeout=max(deadline - time.monotonic(), 0.001),
                                                    metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            metrics.SHARD_CALLS.labels(self.shard, exc.code().name).inc()
            if exc.code() in _EJECT_CODES and replica.record(False, self.policy.eject_after,
                                                             self.policy.eject_seconds):
                metrics.EJECTIONS.labels(self.shard).inc()
                logger.warning("shard %d replica %s ejected after %d failures", self.shard, replica.address,
                               self.policy.eject_after)
            raise
        finally:
            replica.outstanding -= 1
        elapsed = time.perf_counter() - start
        replica.record(True, self.policy.eject_after, self.policy.eject_seconds)
        self._latencies.append(elapsed)
        metrics.SHARD_CALLS.labels(self.shard, "OK").inc()
        metrics.SHARD_CALL_SECONDS.labels(self.shard).observe(elapsed)
        return response

    def _note(self, response: ReadResponse) -> None:
        if isinstance(response, shard_pb2.ShardSearchResponse):
            self.last_documents = response.vectors_searched

    @overload
    async def search(self, request: shard_pb2.ShardSearchRequest, timeout: float,
                     method: str = "Search") -> shard_pb2.ShardSearchResponse: ...
    @overload
    async def search(self, request: shard_pb2.TermStatsRequest, timeout: float,
                     method: str = "TermStats") -> shard_pb2.TermStatsResponse: ...
    async def search(self, request: ReadRequest, timeout: float, method: str = "Search") -> ReadResponse:
        """A read call (``Search``, or ``TermStats``) with failover and hedging across the replicas."""
        deadline = time.monotonic() + timeout
        candidates = self.readable()
        if not candidates:
            raise Unavailable(f"no SERVING replica of shard {self.shard}")
        if len(candidates) == 1:  # nothing to hedge or fail over to: call directly
            try:
                response = await self._call(candidates[0], request, deadline, method)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise InvalidArgument(exc.details() or "") from exc
                raise
            self._note(response)
            return response
        pending: dict[asyncio.Task[ReadResponse], Replica] = {}
        hedged: set[asyncio.Task[ReadResponse]] = set()
        launched = 0
        last_error: BaseException | None = None

        def launch(attempt: str = "primary") -> asyncio.Task[ReadResponse]:
            nonlocal launched
            task = asyncio.create_task(self._call(candidates[launched], request, deadline, method, attempt))
            pending[task] = candidates[launched]
            launched += 1
            return task

        launch()
        delay = self.hedge_delay()
        hedge_at = time.monotonic() + delay if delay is not None and len(candidates) > 1 else None
        try:
            while pending:
                now = time.monotonic()
                if now >= deadline:
                    break
                wake = min(deadline, hedge_at) if hedge_at is not None else deadline
                done, _ = await asyncio.wait(pending, timeout=max(wake - now, 0), return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    if hedge_at is not None and time.monotonic() >= hedge_at and launched < len(candidates):
                        hedged.add(launch("hedge"))
                        metrics.HEDGES.labels(self.shard).inc()
                        hedge_at = None
                    continue
                for task in done:
                    pending.pop(task)
                    error = task.exception()
                    if error is None:
                        if task in hedged:
                            metrics.HEDGES_WON.labels(self.shard).inc()
                        response = task.result()
                        self._note(response)
                        return response
                    last_error = error
                    if isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                        raise InvalidArgument(error.details() or "") from error
                    code = error.code() if isinstance(error, grpc.aio.AioRpcError) else None
                    if code is not None and code in _FAILOVER_CODES and launched < len(candidates) and not pending:
                        metrics.FAILOVERS.labels(self.shard).inc()
                        logger.warning("shard %d: %s failed (%s); failing over", self.shard,
                                       candidates[launched - 1].address, code.name)
                        launch("failover")
        finally:
            for task in pending:
                task.cancel()  # the losing hedge, or calls past the deadline
        if last_error is not None:
            raise last_error
        raise TimeoutError()

    async def fetch_hashes(self, ids: list[str], timeout: float) -> dict[str, str]:
        """Stored content hashes of ``ids`` from one readable replica (failing over on UNAVAILABLE)."""
        response = await self._fetch(shard_pb2.FetchRequest(ids=ids, hashes_only=True), timeout, "lookup")
        return dict(zip(response.ids, response.content_hashes))

    async def fetch_by_iids(self, iids: list[int], timeout: float) -> dict[int, common_pb2.Document]:
        """Documents by internal id from one readable replica (failing over on UNAVAILABLE)."""
        response = await self._fetch(shard_pb2.FetchRequest(iids=iids), timeout, "fetch")
        return dict(response.documents_by_iid)

    async def _fetch(self, request: shard_pb2.FetchRequest, timeout: float, what: str) -> shard_pb2.FetchResponse:
        """``Fetch`` on the first readable replica that answers; a bad request is INVALID_ARGUMENT at once."""
        last: BaseException | None = None
        for replica in self.readable():
            try:
                with tracing.client_call("ShardService/Fetch", shard=self.shard, replica=replica.address) as metadata:
                    return await replica.stub.Fetch(request, timeout=timeout, metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise InvalidArgument(exc.details() or "") from exc
                last = exc
        raise Unavailable(f"shard {self.shard}: no replica answered a {what}"
                          + (f": {last.details()}" if isinstance(last, grpc.aio.AioRpcError) else ""))

    # --- writes ---------------------------------------------------------------------------------
    def _write_targets(self) -> list[Replica]:
        now = time.monotonic()
        return [r for r in self.replicas if r.usable(now) and not r.catching_up]

    def _coverage_complete(self, replicas: list[Replica]) -> bool:
        """Whether comparing ``replicas`` is enough to know every acknowledged write: all replicas
        (quorum ``all``: a write may be on any live subset), or a majority (quorum ``majority``: every
        acknowledged write is on a majority, and two majorities share a replica)."""
        if self.policy.write_quorum == "all":
            return len(replicas) == len(self.replicas)
        return len(replicas) >= len(self.replicas) // 2 + 1

    async def _write(self, op: str, call: Callable[[Replica], Awaitable[_Ack]]) -> list[_Ack]:
        async with self.write_lock:
            targets = self._write_targets()
            needed = len(targets) if self.policy.write_quorum == "all" else len(self.replicas) // 2 + 1
            if not targets or len(targets) < needed:
                raise Unavailable(f"shard {self.shard}: {len(targets)} live replica(s), {op} needs {max(needed, 1)} "
                                  f"({self.policy.write_quorum})")
            if all(r.needs_sync for r in targets):  # none known to hold every acknowledged write
                self._request_sync()
                raise Unavailable(f"shard {self.shard}: no live replica is known to be up to date yet (replicas are "
                                  "being compared); retry shortly")
            # The fan-out runs to its end even when the caller goes away (cancel, deadline): a batch is never
            # left half-sent unnoticed; replicas that failed or missed it are marked and repaired.
            fan = asyncio.ensure_future(self._fan_out_write(targets, call))
            results = await asyncio.shield(fan)
        ok, failures = [], []
        for replica, result in zip(targets, results):
            if isinstance(result, grpc.aio.AioRpcError) and result.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(result.details() or "")
            if isinstance(result, grpc.aio.AioRpcError) and result.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise FailedPrecondition(f"shard {self.shard}: {result.details()}")
            if isinstance(result, BaseException):
                failures.append((replica, result))
            else:
                ok.append(result)
        if len(ok) < needed:
            detail = "; ".join(f"{r.address}: {_describe(e)}" for r, e in failures)
            raise Unavailable(f"shard {self.shard}: {op} acknowledged by {len(ok)} of {needed} replicas: {detail}")
        return ok

    async def _fan_out_write(self, targets: list[Replica],
                             call: Callable[[Replica], Awaitable[_Ack]]) -> list[_Ack | BaseException]:
        results = await asyncio.gather(*(call(r) for r in targets), return_exceptions=True)
        for replica, result in zip(targets, results):
            if isinstance(result, BaseException):
                self._mark_for_sync(replica)  # it may have missed this write: repair before it serves reads
        return results

    async def upsert(self, request: shard_pb2.UpsertRequest, timeout: float) -> int:
        version = self.clock.now()  # one version for the batch (its ids are distinct)
        for entry in request.documents:
            entry.version = version

        async def one(replica: Replica) -> int:
            with tracing.client_call("ShardService/Upsert", shard=self.shard, replica=replica.address) as metadata:
                async for response in replica.stub.Upsert(iter([request]), timeout=timeout, metadata=metadata):
                    return response.upserted
            raise Unavailable(f"shard {self.shard} replica {replica.address}: upsert stream ended without an ack")

        return max(await self._write("upsert", one))

    async def delete(self, ids: list[str], timeout: float) -> int:
        version = self.clock.now()
        request = shard_pb2.ShardDeleteRequest(ids=ids, versions=[version] * len(ids))
        async def one(replica: Replica) -> shard_pb2.ShardDeleteResponse:
            with tracing.client_call("ShardService/Delete", shard=self.shard, replica=replica.address) as metadata:
                return await replica.stub.Delete(request, timeout=timeout, metadata=metadata)

        results = await self._write("delete", one)
        return max(r.deleted for r in results)

    # --- anti-entropy ---------------------------------------------------------------------------
    def _mark_for_sync(self, replica: Replica) -> None:
        replica.needs_sync = True
        self._request_sync()

    def _request_sync(self) -> None:
        self._sync_wanted = True
        if self._sync_task is None or self._sync_task.done():
            self._sync_task = asyncio.get_running_loop().create_task(self.sync())

    async def sync(self, attempts: int = 5) -> None:
        """Compare the live replicas document by document (versions from ``Digest``, only for the buckets
        whose ``DigestBuckets`` hashes differ) and copy each document's newest version, or its versioned
        delete, to the replicas that lack it. Replicas marked as possibly behind serve reads again only once
        compared with enough others to have seen every acknowledged write (``_coverage_complete``); until
        then they take writes but no reads. An empty replica, or one that missed tombstone pruning (see
        ``_restore_from_snapshot``), is first restored from a snapshot of an up-to-date replica. After a
        complete pass, versioned deletes older than the grace period are pruned on every compared replica."""
        self._sync_wanted = True
        async with self._sync_lock:
            await self._sync(attempts)

    async def _sync(self, attempts: int) -> None:
        for _ in range(attempts):
            if not self._sync_wanted:
                return
            self._sync_wanted = False
            live = [r for r in self.replicas if r.serving]
            if not live:
                return
            started = self.clock.now()  # the pass's version: writes older than this (and in flight) are compared
            try:
                summaries = await self._summaries(live)
                live, summaries = await self._restore_from_snapshot(live, summaries)
                repaired = await self.reconcile(live, summaries=summaries)
            except (grpc.aio.AioRpcError, Unavailable) as exc:
                logger.warning("shard %d: comparing replicas failed (%s); will retry", self.shard, _describe(exc))
                self._sync_wanted = True
                continue
            if repaired:
                logger.debug("shard %d: %d repair(s)", self.shard, repaired)
            if self._coverage_complete(live):
                for r in live:
                    r.needs_sync = False
                await self._prune(live, started)
            else:
                waiting = [r.address for r in live if r.needs_sync]
                if waiting:
                    logger.warning("shard %d: %s wait for more replicas before serving reads (%d of %d live, "
                                   "quorum %s)", self.shard, waiting, len(live), len(self.replicas),
                                   self.policy.write_quorum)

    async def _summaries(self, replicas: list[Replica],
                         timeout: float = 60.0) -> dict[Replica, shard_pb2.DigestBucketsResponse]:
        request = shard_pb2.DigestBucketsRequest(buckets=self.policy.digest_buckets)
        answers = await asyncio.gather(*(r.stub.DigestBuckets(request, timeout=timeout) for r in replicas))
        for a in answers:
            self.digest_bytes += a.ByteSize()
            self.clock.observe(a.max_version)  # later writes of this router win over what it has seen
        return dict(zip(replicas, answers))

    async def _restore_from_snapshot(
        self, live: list[Replica], summaries: dict[Replica, shard_pb2.DigestBucketsResponse],
    ) -> tuple[list[Replica], dict[Replica, shard_pb2.DigestBucketsResponse]]:
        """Restore from a snapshot (instead of merging document by document) a live replica that is

        - **stale**: it holds entries and its last complete pass is older than the newest tombstone horizon
          plus half the grace period. Deletes it may have missed could have been pruned elsewhere, so merging
          it could bring deleted documents back; it must not merge. It cannot hold an acknowledged write the
          others lack: a prune needs a complete pass (every replica with quorum ``all``, so none can miss one;
          a majority with ``majority``, which holds every acknowledged write) and it took no writes while away;
        - **empty** (no document, no tombstone) while another replica holds at least
          ``snapshot_min_entries``: a snapshot is one stream instead of a replay document by document.

        The source is the live replica with the most recent complete pass. A stale replica whose restore
        fails is left out of the comparison (it serves no reads) and tried again at the next pass; an empty
        one falls back to the merge. Returns the replicas to compare and their (refreshed) summaries."""
        entries = {r: sum(s.counts) for r, s in summaries.items()}
        horizon = max(s.tombstone_horizon for s in summaries.values())
        half_grace = version_span(self.policy.tombstone_grace_seconds / 2)
        # an empty replica holds nothing that could come back: it is never stale (e.g. a new replica)
        stale = [r for r in live if horizon and entries[r] and summaries[r].synced_version < horizon + half_grace]
        big = max(entries.values()) >= max(self.policy.snapshot_min_entries, 1)
        empty = [r for r in live if entries[r] == 0] if big else []
        sources = [r for r in live if r not in stale and r not in empty]
        if not (stale or empty) or not sources:
            return [r for r in live if r not in stale], summaries
        source = max(sources, key=lambda r: (not r.needs_sync, summaries[r].synced_version, entries[r]))
        excluded: list[Replica] = []
        for replica in stale + empty:
            why = "empty" if replica in empty else "out longer than half the tombstone grace period (stale)"
            logger.warning("shard %d: replica %s is %s: restoring it from a snapshot of %s", self.shard,
                           replica.address, why, source.address)
            replica.catching_up = True  # no reads, no writes from this router while its store is replaced
            try:
                await replica.stub.Restore(shard_pb2.RestoreRequest(source=source.address), timeout=600.0)
                metrics.CATCHUPS.labels(self.shard).inc()
                self.snapshot_restores += 1
            except grpc.aio.AioRpcError as exc:
                metrics.CATCHUP_FAILURES.labels(self.shard).inc()
                if replica in stale:
                    logger.error("shard %d: restoring stale replica %s failed (%s); it serves no reads and is not "
                                 "merged until a restore succeeds", self.shard, replica.address, _describe(exc))
                    excluded.append(replica)
                else:
                    logger.warning("shard %d: restoring empty replica %s failed (%s); merging it document by "
                                   "document instead", self.shard, replica.address, _describe(exc))
            finally:
                replica.catching_up = False
                replica.needs_sync = True
        compare = [r for r in live if r not in excluded]
        return compare, await self._summaries(compare)

    async def _prune(self, replicas: list[Replica], started: int) -> None:
        """After a complete pass that began at version ``started``: every compared replica holds every
        versioned delete any of them held, so deletes older than the grace period are forgotten; each
        replica records the pass (``synced_version``) and its new tombstone horizon."""
        grace = self.policy.tombstone_grace_seconds
        before = started - version_span(grace)
        if grace <= 0 or before <= 0:
            return
        request = shard_pb2.PruneTombstonesRequest(before_version=before, synced_version=started)
        results = await asyncio.gather(*(r.stub.PruneTombstones(request, timeout=60.0) for r in replicas),
                                       return_exceptions=True)
        pruned = 0
        for replica, result in zip(replicas, results):
            if isinstance(result, BaseException):
                logger.warning("shard %d: pruning tombstones on %s failed (%s)", self.shard, replica.address,
                               _describe(result))
            else:
                pruned += result.pruned
        self.tombstones_pruned += pruned
        metrics.TOMBSTONES_PRUNED.labels(self.shard).inc(pruned)
        if pruned:
            logger.info("shard %d: pruned %d tombstone(s) older than %g s", self.shard, pruned, grace)

    async def reconcile(self, replicas: list[Replica], page: int = 5000, timeout: float = 60.0, full: bool = False,
                        summaries: dict[Replica, shard_pb2.DigestBucketsResponse] | None = None) -> int:
        """One anti-entropy pass over ``replicas``; returns the number of repairs sent. Incremental: the
        replicas' per-bucket hashes are compared and only the entries of differing buckets are read and
        compared (``full``: every entry, the comparison before buckets, kept as the benchmark's baseline)."""
        if len(replicas) < 2:
            return 0
        if full:
            return await self._compare(replicas, page, timeout)
        buckets = self.policy.digest_buckets
        if summaries is None or any(r not in summaries for r in replicas):
            summaries = await self._summaries(replicas, timeout)
        answers = [summaries[r] for r in replicas]
        if any(len(a.hashes) != buckets or len(a.counts) != buckets for a in answers):
            return await self._compare(replicas, page, timeout)  # not summarised as asked: compare everything
        differing = [b for b in range(buckets) if len({(a.hashes[b], a.counts[b]) for a in answers}) > 1]
        repairs = 0
        for start in range(0, len(differing), 4096):
            repairs += await self._compare(replicas, page, timeout, buckets, differing[start:start + 4096])
        return repairs

    async def _compare(self, replicas: list[Replica], page: int, timeout: float, bucket_count: int = 0,
                       buckets: list[int] | None = None) -> int:
        """Read the Digest of ``replicas`` page by page (of ``buckets`` only, if given) and repair."""
        after, repairs = "", 0
        for _ in range(1_000_000):  # bounded: one page per round
            request = shard_pb2.DigestRequest(after_id=after, limit=page, bucket_count=bucket_count,
                                              buckets=buckets or [])
            pages = await asyncio.gather(*(r.stub.Digest(request, timeout=timeout) for r in replicas))
            full = [p.ids[-1] for p in pages if len(p.ids) >= page]
            boundary = min(full) if full else None  # ids up to here are complete on every replica
            entries = []
            for p in pages:
                self.digest_bytes += p.ByteSize()
                entries.append({i: (v, h, d) for i, v, h, d in zip(p.ids, p.versions, p.content_hashes, p.deleted)
                                if boundary is None or i <= boundary})
            for p in pages:
                for v in p.versions:
                    self.clock.observe(v)  # later writes of this router win over what it has seen
            repairs += await self._repair(replicas, entries, timeout)
            if boundary is None:
                return repairs
            after = boundary
        return repairs

    async def _repair(self, replicas: list[Replica], entries: list[dict], timeout: float) -> int:
        winners: dict[str, tuple[int, str, bool, int]] = {}  # id -> (version, hash, deleted, holder index)
        for index, entry in enumerate(entries):
            for doc_id, (version, content_hash, deleted) in entry.items():
                best = winners.get(doc_id)
                if best is None or (version, content_hash) > (best[0], best[1]):
                    winners[doc_id] = (version, content_hash, deleted, index)
        upserts: dict[int, list[str]] = collections.defaultdict(list)  # replica index -> ids to copy to it
        deletes: dict[int, list[str]] = collections.defaultdict(list)
        for doc_id, (version, content_hash, deleted, _) in winners.items():
            for index, entry in enumerate(entries):
                have = entry.get(doc_id)
                if have is None or (have[0], have[1]) != (version, content_hash):
                    (deletes if deleted else upserts)[index].append(doc_id)
        sent = 0
        for index, ids in deletes.items():
            for start in range(0, len(ids), 1000):
                chunk = ids[start:start + 1000]
                await replicas[index].stub.Delete(shard_pb2.ShardDeleteRequest(
                    ids=chunk, versions=[winners[i][0] for i in chunk]), timeout=timeout)
                sent += len(chunk)
        by_holder: dict[int, set[str]] = collections.defaultdict(set)
        for ids in upserts.values():
            for doc_id in ids:
                by_holder[winners[doc_id][3]].add(doc_id)
        records: dict[str, shard_pb2.DocumentVector] = {}
        for holder, held in by_holder.items():
            wanted_ids = sorted(held)
            for start in range(0, len(wanted_ids), 256):
                got = await replicas[holder].stub.Fetch(shard_pb2.FetchRequest(
                    ids=wanted_ids[start:start + 256], hashes_only=True, include_vectors=True), timeout=timeout)
                records.update((r.document.id, r) for r in got.records)
        for index, ids in upserts.items():
            batch = [records[i] for i in ids if i in records]  # a document deleted meanwhile is left out
            for start in range(0, len(batch), 256):
                request = shard_pb2.UpsertRequest(documents=batch[start:start + 256])
                async for _ in replicas[index].stub.Upsert(iter([request]), timeout=timeout):
                    break
            sent += len(batch)
        if sent:
            logger.info("shard %d: anti-entropy repaired %d document(s) across %s", self.shard, sent,
                        [r.address for r in replicas])
        return sent

    async def _anti_entropy_loop(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)  # periodic comparison of replicas (a timer)
            if sum(1 for r in self.replicas if r.serving) >= 2:
                self._request_sync()

    async def close(self) -> None:
        for task in (self._sync_task, self._refresh_task, self._anti_entropy_task):
            if task is not None:
                task.cancel()
        await self._watchers.stop()
        await asyncio.gather(*(r.channel.close() for r in self.replicas))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name} {exc.details()}"
    return str(exc) or type(exc).__name__


_MISS_REASONS = {common_pb2.SHARD_FAILURE_REASON_TIMEOUT: "timeout",
                 common_pb2.SHARD_FAILURE_REASON_UNAVAILABLE: "unavailable",
                 common_pb2.SHARD_FAILURE_REASON_ERROR: "error"}


def replica_state(replica: Replica, now: float) -> str:
    """One word for a replica's state, as exported in ragcluster_router_shard_replicas{state}."""
    if not replica.serving:
        return "not_serving"
    if replica.catching_up or replica.needs_sync:
        return "catching_up"
    if replica.ejected_until > now:
        return "ejected"
    return "serving"


def failure_from_exception(shard: int, exc: BaseException) -> common_pb2.ShardFailure:
    if isinstance(exc, asyncio.TimeoutError) or (
        isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    ):
        reason = common_pb2.SHARD_FAILURE_REASON_TIMEOUT
    elif isinstance(exc, Unavailable) or (
        isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE
    ):
        reason = common_pb2.SHARD_FAILURE_REASON_UNAVAILABLE
    else:
        reason = common_pb2.SHARD_FAILURE_REASON_ERROR
    message = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else (str(exc) or type(exc).__name__)
    return common_pb2.ShardFailure(shard=shard, reason=reason, message=message or "")


def count_search(shard: int, failure: common_pb2.ShardFailure | None = None) -> None:
    """One search fanned out to ``shard`` (per-shard coverage = 1 - misses / searches), missed if ``failure``."""
    metrics.SHARD_SEARCHES.labels(shard).inc()
    if failure is not None:
        metrics.SHARD_MISSES.labels(shard, _MISS_REASONS[failure.reason]).inc()


async def _fan_out(groups: list[ShardGroup], request: ReadRequest, timeout: float,
                   method: str = "Search", count: bool = True) -> list[ShardAnswer]:
    """Call ``method`` (Search, or TermStats) on every shard concurrently within ``timeout``, with the same
    replica choice, failover and hedging; failures become ShardAnswer.failure. Search calls are counted per
    shard (a lexical search's TermStats phase is not a search of its own: a shard failing it is counted as
    missing the search by the caller; a batched call is counted per search it carries, by its caller)."""

    async def one(group: ShardGroup) -> ShardAnswer:
        try:
            answer = ShardAnswer(group.shard, await group.search(request, timeout, method))
        except InvalidArgument:
            raise
        except (TimeoutError, grpc.aio.AioRpcError, Unavailable) as exc:
            answer = ShardAnswer(group.shard, None, failure_from_exception(group.shard, exc))
        if method == "Search" and count:
            count_search(group.shard, answer.failure)
        return answer

    return list(await asyncio.gather(*(one(g) for g in groups)))


fan_out = tracing.traced("fan-out")(_fan_out)


@dataclass
class _Batch:
    groups: list[ShardGroup]
    template: shard_pb2.ShardSearchRequest  # the shared fields, no query rows
    rows: list[np.ndarray]
    waiters: list[asyncio.Future[list[ShardAnswer]]]
    deadline: float
    sent: bool = False
    arrived: dict[int, ShardAnswer] = field(default_factory=dict)  # by group index, as each shard answers


class SearchBatcher:
    """Batched fan-out: dense searches that reach the fan-out in the same event-loop turn with the same
    shape (collection, k, params, filter, dimension) go to each shard as ONE ShardSearch whose query matrix
    has a row per search; every search gets its own row of the answer (``ShardAnswer.row``).

    Queries embedded together (router/batching.py) resume in the same turn, so under load one shard call
    carries a whole embedding batch and the RPCs per query drop with the load; a lone search is flushed at
    the end of its turn and sent as it is (no added wait). The batched call gets the longest budget of its
    searches; each search still stops waiting at its own deadline (that shard then counts as timed out).
    """

    def __init__(self, max_rows: int = 64) -> None:
        self.max_rows = max(1, max_rows)
        self._open: dict[tuple, _Batch] = {}
        self._tasks: set[asyncio.Task] = set()

    @tracing.traced("fan-out")  # one span per search; a batch's shard calls hang under its first search's
    async def fan_out(self, groups: list[ShardGroup], request: shard_pb2.ShardSearchRequest,
                      timeout: float) -> list[ShardAnswer]:
        if self.max_rows == 1 or request.lexical or request.queries.rows != 1:
            return await _fan_out(groups, request, timeout)
        loop = asyncio.get_running_loop()
        template = shard_pb2.ShardSearchRequest()
        template.CopyFrom(request)
        template.ClearField("queries")
        key = (tuple(id(g) for g in groups), request.queries.cols, template.SerializeToString(deterministic=True))
        batch = self._open.get(key)
        if batch is None:
            batch = self._open[key] = _Batch(groups, template, [], [], 0.0)
            loop.call_soon(self._flush, key, batch)  # after every search resumed in this turn has joined
        future: asyncio.Future[list[ShardAnswer]] = loop.create_future()
        row = len(batch.rows)
        batch.rows.append(np.frombuffer(request.queries.data, dtype="<f4"))
        batch.waiters.append(future)
        batch.deadline = max(batch.deadline, time.monotonic() + timeout)
        if len(batch.rows) >= self.max_rows:
            self._open.pop(key, None)
            self._flush(key, batch)
        try:
            answers = await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:  # what has arrived by this search's deadline; the shards still out timed out
            answers = []
            for i, g in enumerate(groups):
                got = batch.arrived.get(i)
                answers.append(ShardAnswer(got.shard, got.response, got.failure, row) if got is not None else
                               ShardAnswer(g.shard, None, failure_from_exception(g.shard, TimeoutError())))
        for answer in answers:
            count_search(answer.shard, answer.failure)
        return answers

    def _flush(self, key: tuple, batch: _Batch) -> None:
        """Send ``batch`` (once: a batch filled up is sent at once, before its end-of-turn flush runs)."""
        if self._open.get(key) is batch:
            del self._open[key]
        if batch.rows and not batch.sent:
            batch.sent = True
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: _Batch) -> None:
        from ragcluster.convert import matrix_to_pb

        request = shard_pb2.ShardSearchRequest()
        request.CopyFrom(batch.template)
        request.queries.CopyFrom(matrix_to_pb(np.stack(batch.rows)))
        metrics.SHARD_SEARCH_BATCH.observe(len(batch.rows))
        budget = max(batch.deadline - time.monotonic(), 0.001)

        async def one(index: int, group: ShardGroup) -> ShardAnswer:
            (answer,) = await _fan_out([group], request, budget, count=False)
            batch.arrived[index] = answer  # a search whose deadline comes first still gets this shard
            return answer

        try:
            answers = list(await asyncio.gather(*(one(i, g) for i, g in enumerate(batch.groups))))
        except InvalidArgument as exc:
            if len(batch.rows) == 1:
                _fail(batch.waiters, exc)
                return
            # e.g. the batch's answer would exceed the message limit: each search on its own
            await asyncio.gather(*(self._send(_Batch(batch.groups, batch.template, [row], [waiter], batch.deadline))
                                   for row, waiter in zip(batch.rows, batch.waiters)))
            return
        except BaseException as exc:
            _fail(batch.waiters, exc)
            raise
        for row, waiter in enumerate(batch.waiters):
            if not waiter.done():
                waiter.set_result([ShardAnswer(a.shard, a.response, a.failure, row) for a in answers])

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


def _fail(waiters: list[asyncio.Future[list[ShardAnswer]]], exc: BaseException) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_exception(exc if isinstance(exc, Exception) else Unavailable("search cancelled"))
