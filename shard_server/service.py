"""ShardService servicer: protobuf <-> domain at the edge; the work runs in threads (FAISS and SQLite
release the GIL), so the event loop keeps serving."""

from __future__ import annotations

import asyncio

import numpy as np

from ragcluster.convert import document_from_pb, document_to_pb, matrix_from_pb
from ragcluster.errors import InvalidArgument, Unavailable
from ragcluster.v1 import common_pb2, shard_pb2, shard_pb2_grpc
from shard_server.shard import Shard


class ShardServicer(shard_pb2_grpc.ShardServiceServicer):
    def __init__(self, shard: Shard | None = None):
        self._shard = shard

    @property
    def shard(self) -> Shard:
        if self._shard is None:
            raise Unavailable("shard is still loading its index")
        return self._shard

    @shard.setter
    def shard(self, shard: Shard) -> None:
        self._shard = shard

    async def Search(self, request: shard_pb2.ShardSearchRequest, context) -> shard_pb2.ShardSearchResponse:
        if not request.HasField("queries"):
            raise InvalidArgument("queries: required")
        queries = matrix_from_pb(request.queries, "queries")
        params = request.params
        result = await asyncio.to_thread(
            self.shard.search, queries, int(request.k),
            params.nprobe if params.HasField("nprobe") else None,
            params.ef_search if params.HasField("ef_search") else None,
            request.include_documents,
        )
        response = shard_pb2.ShardSearchResponse(vectors_searched=result.vectors_searched, shard=self.shard.shard_id)
        for ids, scores in zip(result.ids, result.scores):
            response.results.add(ids=ids.tolist(), scores=scores.tolist())
        for iid, doc in result.documents.items():
            response.documents[iid].CopyFrom(document_to_pb(doc))
        return response

    async def Upsert(self, request_iterator, context):
        async for request in request_iterator:
            if not request.documents:
                raise InvalidArgument("documents: empty batch")
            docs = [document_from_pb(dv.document) for dv in request.documents]
            dims = {len(dv.vector) for dv in request.documents}
            if len(dims) != 1:
                raise InvalidArgument(f"documents.vector: vectors of different lengths {sorted(dims)} in one batch")
            vectors = np.array([dv.vector for dv in request.documents], dtype=np.float32)
            count, sequence = await asyncio.to_thread(self.shard.upsert, docs, vectors, request.embedding_model)
            yield shard_pb2.UpsertResponse(upserted=count, sequence=sequence)

    async def Delete(self, request, context):
        deleted, sequence = await asyncio.to_thread(self.shard.delete, list(request.ids))
        return shard_pb2.ShardDeleteResponse(deleted=deleted, sequence=sequence)

    async def Fetch(self, request, context):
        docs = await asyncio.to_thread(self.shard.fetch, list(request.ids))
        return shard_pb2.FetchResponse(documents=[document_to_pb(d) for d in docs])

    async def Info(self, request, context):
        info = await asyncio.to_thread(self.shard.info)
        metric = common_pb2.METRIC_INNER_PRODUCT if info.metric == "ip" else common_pb2.METRIC_L2
        return shard_pb2.ShardInfoResponse(
            shard=info.shard, documents=info.documents, dim=info.dim, metric=metric,
            index_factory=info.index_factory, embedding_model=info.embedding_model, sequence=info.sequence,
            trained=info.trained, max_k=info.max_k, max_batch=info.max_batch,
        )
