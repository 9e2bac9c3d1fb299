"""ShardService servicer: protobuf <-> domain at the edge; the work runs in threads (FAISS and SQLite
release the GIL), so the event loop keeps serving."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from typing import TypeVar, TypeVarTuple

import numpy as np
from grpc.aio import ServicerContext

from ragcluster.convert import document_from_pb, document_to_pb, matrix_from_pb, metadata_from_pb
from ragcluster.errors import InvalidArgument, ResourceExhausted, Unavailable
from ragcluster.v1 import common_pb2, shard_pb2, shard_pb2_grpc
from shard_server.filters import Condition, Filter
from shard_server.lexical import CorpusStats, LexicalQuery
from shard_server.shard import Shard

T = TypeVar("T")
Args = TypeVarTuple("Args")


def filter_from_pb(pb: common_pb2.Filter) -> Filter:
    """A metadata filter for the shard core."""
    conditions: list[Condition] = []
    for c in pb.must:
        cond = Condition(c.field)
        test = c.WhichOneof("test")
        if test == "equals":
            cond.equals = metadata_from_pb(c.equals)
        elif test == "any_of":
            cond.any_of = [metadata_from_pb(v) for v in c.any_of.values]
        elif test == "range":
            r = c.range
            for name in ("gte", "gt", "lte", "lt"):
                if r.HasField(name):
                    setattr(cond, name, getattr(r, name))
            if not cond.is_range:
                raise InvalidArgument(f"filter.must: range on {c.field!r} has no bound")
        conditions.append(cond)
    return Filter(conditions)


def metric_to_pb(metric: str) -> common_pb2.Metric.ValueType:
    return common_pb2.METRIC_INNER_PRODUCT if metric == "ip" else common_pb2.METRIC_L2


def lexical_from_pb(pb: shard_pb2.LexicalQuery) -> LexicalQuery:
    """A BM25 query for the shard core; without corpus statistics (documents = 0) the shard uses its own."""
    if pb.documents:
        return LexicalQuery(list(pb.terms), list(pb.counts), list(pb.document_frequencies),
                            CorpusStats(pb.documents, pb.total_length))
    return LexicalQuery(list(pb.terms), list(pb.counts) or [1] * len(pb.terms))


class ShardServicer(shard_pb2_grpc.ShardServiceServicer):
    def __init__(self, shard: Shard | None = None, after_write: Callable[[], None] = lambda: None,
                 restore: Callable[[str, float], Awaitable[None]] | None = None, search_delay_seconds: float = 0.0,
                 max_message_bytes: int = 64 * 1024 * 1024, maintenance_executor: Executor | None = None,
                 max_snapshots: int = 2, workers: Executor | None = None) -> None:
        self._shard = shard
        # searches, writes and reads: a pool whose threads all exist from startup (None: asyncio's default)
        self.workers = workers
        self.max_snapshots = max(1, max_snapshots)
        self._snapshots = asyncio.Semaphore(self.max_snapshots)
        # rebuilds on demand run with the background checkpoints and rebuilds, never in the searches' threads
        self.maintenance_executor = maintenance_executor
        self.max_message_bytes = max_message_bytes  # an answer larger than this could not be sent
        self.after_write = after_write  # e.g. schedule a background rebuild when tombstones pile up
        self.restore = restore  # async (source) -> None: replaces the shard's data (owned by __main__)
        self.search_delay_seconds = search_delay_seconds  # testing: a slow replica

    def run_in_worker(self, fn: Callable[[*Args], T], *args: *Args) -> Awaitable[T]:
        """``fn(*args)`` on the worker pool, in a copy of this context (as ``asyncio.to_thread``)."""
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        return asyncio.get_running_loop().run_in_executor(self.workers, call)

    @property
    def shard(self) -> Shard:
        if self._shard is None:
            raise Unavailable("shard is still loading its index")
        return self._shard

    @shard.setter
    def shard(self, shard: Shard | None) -> None:
        self._shard = shard

    async def Search(self, request: shard_pb2.ShardSearchRequest,
                     context: ServicerContext) -> shard_pb2.ShardSearchResponse:
        if self.search_delay_seconds:
            await asyncio.sleep(self.search_delay_seconds)
        # parsing, the search and building the answer all run in a worker thread: the event loop only
        # moves bytes, so a large answer never delays other requests
        return await self.run_in_worker(self._search, self.shard, request)

    def _search(self, shard: Shard, request: shard_pb2.ShardSearchRequest) -> shard_pb2.ShardSearchResponse:
        if not request.HasField("queries") and not request.lexical:
            raise InvalidArgument("queries: required (or lexical queries)")
        if request.HasField("queries") and (request.queries.rows or not request.lexical):
            queries = matrix_from_pb(request.queries, "queries")
        else:
            queries = np.zeros((0, shard.dim), np.float32)
        lexical = [lexical_from_pb(q) for q in request.lexical]
        params = request.params
        result = shard.search(
            queries, int(request.k),
            params.nprobe if params.HasField("nprobe") else None,
            params.ef_search if params.HasField("ef_search") else None,
            request.include_documents, filter_from_pb(request.filter) if request.HasField("filter") else None,
            request.unknown_fields_match_nothing, lexical, request.documents_per_list,
        )
        response = shard_pb2.ShardSearchResponse(vectors_searched=result.vectors_searched, shard=shard.shard_id,
                                                 unknown_fields=result.unknown_fields or [],
                                                 metric=metric_to_pb(shard.metric),
                                                 lexical_documents=result.lexical_documents)
        for ids, scores in zip(result.ids, result.scores):
            response.results.add(ids=ids.tolist(), scores=scores.tolist())
        for ids, scores, keys in zip(result.lexical_ids or [], result.lexical_scores or [], result.lexical_keys or []):
            response.lexical_results.add(ids=ids.tolist(), scores=scores.tolist(), keys=keys.tolist())
        for iid, doc in result.documents.items():
            response.documents[iid].CopyFrom(document_to_pb(doc))
        size = response.ByteSize()
        if size > self.max_message_bytes:  # name the request's problem instead of failing in the transport
            raise InvalidArgument(f"k: the answer with documents would be {size} bytes, over the message limit of "
                                  f"{self.max_message_bytes}; ask for fewer hits (k x queries) or without documents")
        return response

    async def Upsert(self, request_iterator: AsyncIterator[shard_pb2.UpsertRequest],
                     context: ServicerContext) -> AsyncIterator[shard_pb2.UpsertResponse]:
        async for request in request_iterator:
            if not request.documents:
                raise InvalidArgument("documents: empty batch")
            docs = [document_from_pb(dv.document) for dv in request.documents]
            dims = {len(dv.vector) for dv in request.documents}
            if len(dims) != 1:
                raise InvalidArgument(f"documents.vector: vectors of different lengths {sorted(dims)} in one batch")
            vectors = np.array([dv.vector for dv in request.documents], dtype=np.float32)
            versions = [dv.version for dv in request.documents]
            count, sequence = await self.run_in_worker(self.shard.upsert, docs, vectors, request.embedding_model,
                                                      versions if any(versions) else None)
            self.after_write()
            yield shard_pb2.UpsertResponse(upserted=count, sequence=sequence)

    async def Delete(self, request: shard_pb2.ShardDeleteRequest,
                     context: ServicerContext) -> shard_pb2.ShardDeleteResponse:
        deleted, sequence = await self.run_in_worker(self.shard.delete, list(request.ids),
                                                    list(request.versions) if request.versions else None)
        self.after_write()
        return shard_pb2.ShardDeleteResponse(deleted=deleted, sequence=sequence)

    async def Fetch(self, request: shard_pb2.FetchRequest, context: ServicerContext) -> shard_pb2.FetchResponse:
        if len(request.ids) > 10_000:
            raise InvalidArgument("ids: at most 10000 per call")
        if request.iids:
            by_iid = await self.run_in_worker(self.shard.fetch_by_iids, list(request.iids))
            response = shard_pb2.FetchResponse()
            for iid, doc in by_iid.items():
                response.documents_by_iid[iid].CopyFrom(document_to_pb(doc))
            if not request.ids:
                return response
        else:
            response = shard_pb2.FetchResponse()
        hashes = await self.run_in_worker(self.shard.content_hashes, list(request.ids))
        found = [i for i in request.ids if i in hashes]
        response.ids.extend(found)
        response.content_hashes.extend(hashes[i] for i in found)
        if not request.hashes_only:
            docs = await self.run_in_worker(self.shard.fetch, found)
            response.documents.extend(document_to_pb(d) for d in docs)
        if request.include_vectors:
            records = await self.run_in_worker(self.shard.records, found)
            response.records.extend(
                shard_pb2.DocumentVector(document=document_to_pb(doc), vector=vector.tolist(), version=version)
                for doc, vector, version in (records[i] for i in found if i in records))
        return response

    async def Digest(self, request: shard_pb2.DigestRequest, context: ServicerContext) -> shard_pb2.DigestResponse:
        entries = await self.run_in_worker(self.shard.digest, request.after_id, request.limit or 10_000,
                                          request.bucket_count, list(request.buckets))
        return shard_pb2.DigestResponse(ids=[e[0] for e in entries], versions=[e[1] for e in entries],
                                        content_hashes=[e[2] for e in entries], deleted=[e[3] for e in entries])

    async def DigestBuckets(self, request: shard_pb2.DigestBucketsRequest,
                            context: ServicerContext) -> shard_pb2.DigestBucketsResponse:
        summary = await self.run_in_worker(self.shard.bucket_digest, request.buckets)
        return shard_pb2.DigestBucketsResponse(hashes=summary.hashes, counts=summary.counts,
                                               tombstone_horizon=summary.tombstone_horizon,
                                               synced_version=summary.synced_version, max_version=summary.max_version)

    async def PruneTombstones(self, request: shard_pb2.PruneTombstonesRequest,
                              context: ServicerContext) -> shard_pb2.PruneTombstonesResponse:
        pruned, horizon = await self.run_in_worker(self.shard.prune_tombstones, request.before_version,
                                                  request.synced_version)
        return shard_pb2.PruneTombstonesResponse(pruned=pruned, tombstone_horizon=horizon)

    async def Info(self, request: shard_pb2.ShardInfoRequest, context: ServicerContext) -> shard_pb2.ShardInfoResponse:
        info = await self.run_in_worker(self.shard.info)
        metric = metric_to_pb(info.metric)
        return shard_pb2.ShardInfoResponse(
            shard=info.shard, documents=info.documents, dim=info.dim, metric=metric,
            index_factory=info.index_factory, embedding_model=info.embedding_model, sequence=info.sequence,
            trained=info.trained, max_k=info.max_k, max_batch=info.max_batch, stored_documents=info.stored_documents,
            tombstones=info.tombstones, checkpoint_sequence=info.checkpoint_sequence, index_bytes=info.index_bytes,
            lexical_documents=info.lexical_documents, lexical_terms=info.lexical_terms,
            lexical_postings=info.lexical_postings, lexical_bytes=info.lexical_bytes,
            lexical_config=info.lexical_config,
        )

    async def TermStats(self, request: shard_pb2.TermStatsRequest,
                        context: ServicerContext) -> shard_pb2.TermStatsResponse:
        if not request.texts:
            raise InvalidArgument("texts: empty")
        result = await self.run_in_worker(self.shard.term_stats, list(request.texts))
        response = shard_pb2.TermStatsResponse(documents=result.stats.documents,
                                               total_length=result.stats.total_length,
                                               shard=self.shard.shard_id, lexical_config=result.config)
        for q in result.queries:
            response.queries.add(terms=q.terms, counts=q.counts, document_frequencies=q.document_frequencies)
        return response

    async def Snapshot(self, request: shard_pb2.SnapshotRequest,
                       context: ServicerContext) -> AsyncIterator[shard_pb2.SnapshotChunk]:
        from shard_server.snapshot import snapshot_chunks

        if self._snapshots.locked():  # each stream holds a read transaction (or a copy): bounded
            raise ResourceExhausted(f"snapshot: {self.max_snapshots} snapshot(s) already streaming; retry later")
        async with self._snapshots:
            chunks = snapshot_chunks(self.shard)
            try:
                while (chunk := await self.run_in_worker(next, chunks, None)) is not None:
                    yield chunk
            finally:
                await self.run_in_worker(chunks.close)  # ends the read transaction (or removes the copy)

    async def Restore(self, request: shard_pb2.RestoreRequest, context: ServicerContext) -> shard_pb2.RestoreResponse:
        if not request.source:
            raise InvalidArgument("source: required (host:port of the replica to copy)")
        if len(request.source) > 256 or ":" not in request.source:
            raise InvalidArgument("source: expected host:port")
        if self.restore is None:
            raise Unavailable("restore is not available on this server")
        start = asyncio.get_running_loop().time()
        remaining: float | None = context.time_remaining()  # None: the caller set no deadline
        await self.restore(request.source, 600.0 if remaining is None else min(remaining, 600.0))
        info = await self.run_in_worker(self.shard.info)
        return shard_pb2.RestoreResponse(sequence=info.sequence, documents=info.documents,
                                         seconds=asyncio.get_running_loop().time() - start)

    async def Rebuild(self, request: shard_pb2.RebuildRequest, context: ServicerContext) -> shard_pb2.RebuildResponse:
        shard = self.shard
        seconds = await asyncio.get_running_loop().run_in_executor(self.maintenance_executor, shard.rebuild, True)
        info = await self.run_in_worker(self.shard.info)
        return shard_pb2.RebuildResponse(documents=info.documents, sequence=info.sequence, seconds=seconds)
