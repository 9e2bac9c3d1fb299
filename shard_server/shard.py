"""A shard: the durable store plus the derived FAISS index, with input guards (pure: no grpc).

Writes go to the store first (durable), then to the index, under one write lock; searches take only
the index lock, held briefly by writers, so reads keep working during ingest. On open, the index is
rebuilt from the store.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ragcluster.documents import Document, validate_batch, validate_id
from ragcluster.errors import FailedPrecondition, InvalidArgument
from shard_server import metrics
from shard_server.index import VectorIndex, parse_metric
from shard_server.store import DocumentStore

logger = logging.getLogger(__name__)


@dataclass
class ShardInfo:
    shard: int
    documents: int
    dim: int
    metric: str
    index_factory: str
    embedding_model: str
    sequence: int
    trained: bool
    max_k: int
    max_batch: int


@dataclass
class SearchResult:
    ids: list[np.ndarray]  # per query, best first, no padding
    scores: list[np.ndarray]
    documents: dict[int, Document]
    vectors_searched: int


class Shard:
    def __init__(self, data_dir: Path, shard_id: int = 0, dim: int = 384, metric: str = "ip",
                 index_factory: str = "Flat", embedding_model: str = "", max_k: int = 1000,
                 max_batch: int = 1024, max_upsert_batch: int = 4096, nprobe: int = 16, ef_search: int = 64):
        self.shard_id = shard_id
        self.max_k, self.max_batch, self.max_upsert_batch = max_k, max_batch, max_upsert_batch
        self.metric = parse_metric(metric)
        self.store = DocumentStore(Path(data_dir) / "shard.sqlite3", dim)
        self._check_layout(dim, self.metric, index_factory)
        self.embedding_model = self.store.get_meta("embedding_model", "") or embedding_model
        self.index = VectorIndex(dim, index_factory, self.metric, nprobe=nprobe, ef_search=ef_search)
        self.dim = dim
        self.index_factory = index_factory
        self._write_lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._rebuild()

    def _check_layout(self, dim: int, metric: str, factory: str) -> None:
        """The store remembers its dim and metric; reopening with others would corrupt results."""
        for key, value in (("dim", str(dim)), ("metric", metric)):
            stored = self.store.get_meta(key)
            if stored is None:
                self.store.set_meta(key, value)
            elif stored != value:
                raise FailedPrecondition(
                    f"{key}: this data dir was created with {key}={stored}, not {value} (use a new --data-dir)"
                )
        if self.store.get_meta("index_factory") != factory:
            self.store.set_meta("index_factory", factory)  # derived: rebuilt below with the new factory

    def _rebuild(self) -> None:
        start = time.perf_counter()
        for iids, vectors in self.store.iter_vectors():
            self.index.add(iids, self.index.prepare(vectors))
        metrics.VECTORS.labels(self.shard_id).set(self.index.ntotal)
        logger.info("index %s rebuilt from store: %d vectors in %.2fs", self.index_factory, self.index.ntotal,
                    time.perf_counter() - start)

    def close(self) -> None:
        self.store.close()

    # --- guards ---------------------------------------------------------------------------------
    def _check_vectors(self, x: np.ndarray, field: str) -> None:
        if x.ndim != 2 or x.shape[1] != self.dim:
            got = x.shape[1] if x.ndim == 2 else x.shape
            raise InvalidArgument(f"{field}: vectors must have dimension {self.dim}, got {got}")
        if not np.isfinite(x).all():
            bad = int(np.argwhere(~np.isfinite(x))[0][0])
            raise InvalidArgument(f"{field}[{bad}]: contains NaN or infinity")

    # --- writes ---------------------------------------------------------------------------------
    def upsert(self, docs: list[Document], vectors: np.ndarray, embedding_model: str = "") -> tuple[int, int]:
        """Durably store and index ``docs``; returns (count, sequence) once durable."""
        validate_batch(docs, self.max_upsert_batch, "documents[{i}].document")
        if vectors.shape[0] != len(docs):
            raise InvalidArgument(f"documents: {len(docs)} documents but {vectors.shape[0]} vectors")
        self._check_vectors(vectors, "documents.vector")
        start = time.perf_counter()
        with self._write_lock:
            if embedding_model:
                if not self.embedding_model:
                    self.store.set_meta("embedding_model", embedding_model)
                    self.embedding_model = embedding_model
                elif embedding_model != self.embedding_model:
                    raise FailedPrecondition(
                        f"embedding_model: this shard holds vectors of {self.embedding_model!r}, "
                        f"not {embedding_model!r}; mixing models is refused"
                    )
            prepared = self.index.prepare(vectors)
            iids, replaced, sequence = self.store.upsert(docs, prepared)
            with self._index_lock:
                self.index.remove(replaced)
                self.index.add(iids, prepared)
                ntotal = self.index.ntotal
        metrics.VECTORS.labels(self.shard_id).set(ntotal)
        metrics.SEQUENCE.labels(self.shard_id).set(sequence)
        metrics.WRITE_SECONDS.labels(self.shard_id, "upsert").observe(time.perf_counter() - start)
        return len(docs), sequence

    def delete(self, ids: list[str]) -> tuple[int, int]:
        if not ids:
            raise InvalidArgument("ids: empty")
        if len(ids) > self.max_upsert_batch:
            raise InvalidArgument(f"ids: {len(ids)} exceeds the maximum {self.max_upsert_batch}")
        for i, doc_id in enumerate(ids):
            validate_id(doc_id, f"ids[{i}]")
        start = time.perf_counter()
        with self._write_lock:
            removed, sequence = self.store.delete(ids)
            with self._index_lock:
                self.index.remove(removed)
                ntotal = self.index.ntotal
        metrics.VECTORS.labels(self.shard_id).set(ntotal)
        metrics.SEQUENCE.labels(self.shard_id).set(sequence)
        metrics.WRITE_SECONDS.labels(self.shard_id, "delete").observe(time.perf_counter() - start)
        return len(removed), sequence

    # --- reads ----------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None, ef_search: int | None = None,
               include_documents: bool = False) -> SearchResult:
        if k <= 0 or k > self.max_k:
            raise InvalidArgument(f"k: must be between 1 and {self.max_k}, got {k}")
        if queries.shape[0] > self.max_batch:
            raise InvalidArgument(f"queries: batch of {queries.shape[0]} exceeds the maximum {self.max_batch}")
        self._check_vectors(queries, "queries")
        if nprobe is not None and not 1 <= nprobe <= 65536:
            raise InvalidArgument(f"params.nprobe: must be between 1 and 65536, got {nprobe}")
        if ef_search is not None and not 1 <= ef_search <= 65536:
            raise InvalidArgument(f"params.ef_search: must be between 1 and 65536, got {ef_search}")
        start = time.perf_counter()
        prepared = self.index.prepare(queries)
        with self._index_lock:
            ntotal = self.index.ntotal
            scores, ids = self.index.search(prepared, min(k, max(ntotal, 1)), nprobe, ef_search)
        out_ids, out_scores = [], []
        for row_ids, row_scores in zip(ids, scores):
            valid = row_ids >= 0
            out_ids.append(row_ids[valid])
            out_scores.append(row_scores[valid])
        documents: dict[int, Document] = {}
        if include_documents:
            documents = self.store.get_by_iids(np.concatenate(out_ids).tolist() if out_ids else [])
        metrics.SEARCH_SECONDS.labels(self.shard_id).observe(time.perf_counter() - start)
        metrics.SEARCH_QUERIES.labels(self.shard_id).inc(len(queries))
        return SearchResult(out_ids, out_scores, documents, ntotal)

    def fetch(self, ids: list[str]) -> list[Document]:
        for i, doc_id in enumerate(ids):
            validate_id(doc_id, f"ids[{i}]")
        found = self.store.get_by_ids(ids)
        return [found[i] for i in ids if i in found]

    def info(self) -> ShardInfo:
        with self._index_lock:
            ntotal, trained = self.index.ntotal, self.index.trained
        return ShardInfo(self.shard_id, ntotal, self.dim, self.metric, self.index_factory, self.embedding_model,
                         self.store.sequence, trained, self.max_k, self.max_batch)
