"""A shard: the durable store plus the derived FAISS index, with input guards (pure: no grpc).

- Writes go to the store first (durable, acknowledged after commit), then to the index, one at a time.
- Searches and checkpoint serialisation share a read lock on the index; index mutations take it
  exclusively for the moment of the update, so reads keep working during ingest and checkpoints.
- The index is checkpointed (atomically, with the sequence it covers); on open the checkpoint is loaded
  and the writes after it replayed from the store. A missing, corrupt or incompatible checkpoint is
  rebuilt from the store (never trusted).
- The lexical (BM25) index (``lexical.py``) is derived the same way: updated with the FAISS index after
  each durable write, under the same locks, and built from the store on open (never persisted), so after a
  crash the dense and lexical views hold exactly the documents of the store.
- Indexes that cannot delete (HNSW) keep tombstones; past ``rebuild_tombstone_share`` the index is rebuilt
  from a consistent snapshot of the store, in the background, then brought up to date and swapped in.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np

from ragcluster.documents import Document, validate_batch, validate_id
from ragcluster.errors import FailedPrecondition, InvalidArgument, Unavailable
from ragcluster.hashing import id_key
from shard_server import metrics
from shard_server.checkpoint import CorruptCheckpoint, read_checkpoint, write_checkpoint
from shard_server.config import ShardOptions
from shard_server.filters import Filter, compile_filter
from shard_server.index import VectorIndex, parse_metric
from shard_server.lexical import (
    Analyzer,
    AnalyzerConfig,
    CorpusStats,
    LexicalIndex,
    LexicalQuery,
    QueryTerms,
    document_text,
)
from shard_server.store import BucketDigest, DocumentStore

logger = logging.getLogger(__name__)

STORE_FILE = "shard.sqlite3"
CHECKPOINT_FILE = "index.ckpt"


class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers (no writer starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    def read(self) -> _Guard:
        return _Guard(self._acquire_read, self._release_read)

    def write(self) -> _Guard:
        return _Guard(self._acquire_write, self._release_write)

    def _acquire_read(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer and not self._waiting_writers)
            self._readers += 1

    def _release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    def _acquire_write(self) -> None:
        with self._cond:
            self._waiting_writers += 1
            self._cond.wait_for(lambda: not self._writer and not self._readers)
            self._waiting_writers -= 1
            self._writer = True

    def _release_write(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()


class _Guard:
    def __init__(self, acquire: Callable[[], None], release: Callable[[], None]) -> None:
        self._acquire, self._release = acquire, release

    def __enter__(self) -> None:
        self._acquire()

    def __exit__(self, *exc: object) -> None:
        self._release()


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
    stored_documents: int = 0
    tombstones: int = 0
    checkpoint_sequence: int = 0
    index_bytes: int = 0
    lexical_documents: int = 0
    lexical_terms: int = 0
    lexical_postings: int = 0
    lexical_bytes: int = 0
    lexical_config: str = ""


@dataclass
class SearchResult:
    ids: list[np.ndarray]  # per query, best first, no padding
    scores: list[np.ndarray]
    documents: dict[int, Document]
    vectors_searched: int
    unknown_fields: list[str] = field(default_factory=list)  # filter fields this shard has never seen
    lexical_ids: list[np.ndarray] = field(default_factory=list)  # per lexical query, best first
    lexical_scores: list[np.ndarray] = field(default_factory=list)
    lexical_keys: list[np.ndarray] = field(default_factory=list)  # tie-break keys (id_key of the document id)
    lexical_documents: int = 0  # documents in the lexical index when it answered


@dataclass
class TermStats:
    queries: list[QueryTerms]
    stats: CorpusStats
    config: str


MAX_VERSION = 2**63 - 1  # versions are stored as SQLite INTEGER (signed 64-bit)


def _check_version(version: int, field: str) -> None:
    if version > MAX_VERSION:
        raise InvalidArgument(f"{field}: {version} is above the largest version {MAX_VERSION}")


def _check_versions(versions: list[int] | None, where: str) -> None:
    for i, version in enumerate(versions or ()):
        _check_version(version, f"{where}[{i}]")


_F = TypeVar("_F", bound=Callable[..., Any])


def _in_use(method: _F) -> _F:
    """The call uses the shard's store and indexes: ``close`` waits for it to finish, and a call after
    ``close`` is refused (UNAVAILABLE). A restore replaces the shard while requests that already took it
    may still run in worker threads; closing SQLite connections under them crashed the process."""

    @functools.wraps(method)
    def wrapper(self: Shard, *args: Any, **kwargs: Any) -> Any:
        with self._users:
            if self._closed:
                raise Unavailable("shard is being replaced or shut down; retry")
            self._active += 1
        try:
            return method(self, *args, **kwargs)
        finally:
            with self._users:
                self._active -= 1
                if not self._active:
                    self._users.notify_all()

    return cast(_F, wrapper)


def _check_buckets(n: int, field: str) -> None:
    if not 1 <= n <= 65536:
        raise InvalidArgument(f"{field}: must be between 1 and 65536, got {n}")


class Shard:
    def __init__(self, options: ShardOptions):
        self.options = options
        self.data_dir = Path(options.data_dir)
        self.shard_id = shard_id = options.shard_id
        self.max_k, self.max_batch, self.max_upsert_batch = options.max_k, options.max_batch, options.max_upsert_batch
        self.metric = parse_metric(options.metric)
        self.dim = dim = options.dim
        self.index_factory = options.index_factory
        self.nprobe, self.ef_search, self.ef_construction = options.nprobe, options.ef_search, options.ef_construction
        self.rebuild_tombstone_share = options.rebuild_tombstone_share
        self.exact_filter_limit = options.exact_filter_limit
        max_store_bytes, embedding_model = options.max_store_bytes, options.embedding_model
        bm25_k1, bm25_b = options.bm25_k1, options.bm25_b
        self.exact_filter_block = 4096  # vectors scored at once by the filtered exact fallback
        self.store = DocumentStore(self.data_dir / STORE_FILE, dim, max_store_bytes)
        self._check_layout(dim, self.metric)
        self.embedding_model = self.store.get_meta("embedding_model", "") or embedding_model
        self._write_lock = threading.Lock()  # one writer at a time: store commit + index update
        self._index_lock = RWLock()
        self._rebuild_lock = threading.Lock()
        self._users, self._active, self._closed = threading.Condition(), 0, False  # see _in_use
        self._rebuild_since: int | None = None  # a running rebuild replays removals after this sequence
        self.checkpoint_sequence = 0
        self.checkpoint_time = 0.0
        self.index_bytes = 0
        self.index = self._open_index()
        self.analyzer = Analyzer(AnalyzerConfig(options.lexical_stemmer, options.lexical_stopwords))
        if bm25_k1 < 0 or not 0 <= bm25_b <= 1:
            raise InvalidArgument(f"bm25: k1 must be >= 0 and b in [0, 1], got k1={bm25_k1} b={bm25_b}")
        self.bm25_k1, self.bm25_b = bm25_k1, bm25_b
        self.lexical = self._build_lexical()
        opened = time.time()
        metrics.CHECKPOINT_AGE.labels(shard_id).set_function(lambda: time.time() - (self.checkpoint_time or opened))
        metrics.STORE_BYTES.labels(shard_id).set_function(self.store.size_bytes)
        metrics.WAL_BYTES.labels(shard_id).set_function(self.store.wal_bytes)
        metrics.STORE_QUOTA_BYTES.labels(shard_id).set(max_store_bytes)
        metrics.DISK_FREE_BYTES.labels(shard_id).set_function(lambda: shutil.disk_usage(self.data_dir).free)
        metrics.DISK_TOTAL_BYTES.labels(shard_id).set_function(lambda: shutil.disk_usage(self.data_dir).total)
        for stage in ("load", "write"):
            metrics.CHECKPOINT_FAILURES.labels(shard_id, stage)
        for op in ("upsert", "delete"):
            metrics.WRITE_SECONDS.labels(shard_id, op)
        metrics.REBUILDS.labels(shard_id)
        metrics.FILTER_FALLBACKS.labels(shard_id)
        metrics.SEARCH_QUERIES.labels(shard_id)
        metrics.SEARCH_SECONDS.labels(shard_id)
        metrics.CHECKPOINT_SECONDS.labels(shard_id)
        self._publish()

    def _new_index(self) -> VectorIndex:
        return VectorIndex(self.dim, self.index_factory, self.metric, nprobe=self.nprobe, ef_search=self.ef_search,
                           ef_construction=self.ef_construction)

    def _check_layout(self, dim: int, metric: str) -> None:
        """The store remembers its dim and metric; reopening with others would corrupt results."""
        for key, value in (("dim", str(dim)), ("metric", metric)):
            stored = self.store.get_meta(key)
            if stored is None:
                self.store.set_meta(key, value)
            elif stored != value:
                raise FailedPrecondition(
                    f"{key}: this data dir was created with {key}={stored}, not {value} (use a new --data-dir)"
                )

    # --- open: checkpoint + replay, or rebuild ------------------------------------------------------
    def _open_index(self) -> VectorIndex:
        start = time.perf_counter()
        path = self.data_dir / CHECKPOINT_FILE
        index = self._new_index()
        if path.exists():
            try:
                header, index_bytes, tombstones = read_checkpoint(path)
                if not index.compatible(header):
                    raise CorruptCheckpoint(f"built for {header.get('factory')}/{header.get('metric')}/"
                                            f"{header.get('dim')}, not {self.index_factory}/{self.metric}/{self.dim}")
                if header["sequence"] > self.store.sequence:
                    raise CorruptCheckpoint(f"covers sequence {header['sequence']}, ahead of the store's "
                                            f"{self.store.sequence}")
                index.load_state(header, index_bytes, tombstones)
                self._replay(index, header["sequence"])
                self.checkpoint_sequence = header["sequence"]
                self.checkpoint_time = path.stat().st_mtime
                self.index_bytes = path.stat().st_size
                logger.info("index loaded from checkpoint (sequence %d) + replay to %d: %d vectors in %.2fs",
                            header["sequence"], self.store.sequence, index.ntotal, time.perf_counter() - start)
                return index
            except (CorruptCheckpoint, RuntimeError, KeyError, ValueError) as exc:
                metrics.CHECKPOINT_FAILURES.labels(self.shard_id, "load").inc()
                logger.warning("checkpoint %s unusable (%s); rebuilding the index from the store", path, exc)
                index = self._new_index()
        with self.store.consistent_read() as conn:
            for iids, vectors in self.store.iter_vectors(conn):
                index.add(iids, index.prepare(vectors))
        logger.info("index %s rebuilt from store: %d vectors in %.2fs", self.index_factory, index.ntotal,
                    time.perf_counter() - start)
        return index

    def _new_lexical(self) -> LexicalIndex:
        return LexicalIndex(self.analyzer, self.bm25_k1, self.bm25_b)

    def _build_lexical(self, conn: sqlite3.Connection | None = None) -> LexicalIndex:
        """The lexical index of every live document in the store (or in ``conn``'s snapshot)."""
        start = time.perf_counter()
        lexical = self._new_lexical()
        for iids, texts in self.store.iter_texts(conn):
            lexical.add(iids, lexical.analyze(document_text(title, text) for _, title, text in texts),
                        [id_key(doc_id) for doc_id, _, _ in texts])
        seconds = time.perf_counter() - start
        metrics.LEXICAL_BUILD_SECONDS.labels(self.shard_id).observe(seconds)
        logger.info("lexical index built from store: %d documents, %d terms in %.2fs", lexical.documents,
                    lexical.terms, seconds)
        return lexical

    def _replay_lexical(self, lexical: LexicalIndex, since: int) -> None:
        """Bring ``lexical`` (built from the store at sequence ``since``) up to date: drop what is no longer
        live, add what was written after ``since``. Called under the write lock."""
        present = lexical.live_iids()
        if len(present):
            live = self.store.live_iids(int(present[-1]))
            lexical.remove(present[~np.isin(present, live)].tolist())
        for iids, texts in self.store.iter_texts(since_sequence=since):
            lexical.add(iids, lexical.analyze(document_text(title, text) for _, title, text in texts),
                        [id_key(doc_id) for doc_id, _, _ in texts])

    def _replay(self, index: VectorIndex, since: int) -> None:
        """Bring ``index`` (which covers sequence ``since``) up to date with the store."""
        index.remove(self.store.removed_since(since))
        for iids, vectors in self.store.iter_vectors(since_sequence=since):
            index.add(iids, index.prepare(vectors))

    def _publish(self) -> None:
        metrics.VECTORS.labels(self.shard_id).set(self.index.ntotal)
        metrics.TOMBSTONES.labels(self.shard_id).set(self.index.tombstones)
        metrics.SEQUENCE.labels(self.shard_id).set(self.store.sequence)
        metrics.INDEX_BYTES.labels(self.shard_id).set(self.index_bytes)
        metrics.LEXICAL_DOCUMENTS.labels(self.shard_id).set(self.lexical.documents)
        metrics.CHECKPOINT_SEQUENCE.labels(self.shard_id).set(self.checkpoint_sequence)

    # --- checkpoints and rebuilds -----------------------------------------------------------------
    def checkpoint(self) -> bool:
        """Write the index with the sequence it covers; False when nothing changed since the last one."""
        start = time.perf_counter()
        with self._write_lock:  # freeze writes so the index matches exactly one sequence number
            sequence = self.store.sequence
            if sequence == self.checkpoint_sequence and (self.data_dir / CHECKPOINT_FILE).exists():
                return False
            with self._index_lock.read():  # searches go on meanwhile
                header, index_bytes, tombstones = self.index.state()
        header["sequence"] = sequence
        try:
            size = write_checkpoint(self.data_dir / CHECKPOINT_FILE, header, index_bytes, tombstones)
        except OSError as exc:
            metrics.CHECKPOINT_FAILURES.labels(self.shard_id, "write").inc()
            logger.error("checkpoint failed: %s (the store is intact; will retry)", exc)
            return False
        with self._write_lock:  # a rebuild that started meanwhile registers under this lock
            needed = self._rebuild_since
            # a running rebuild still replays the removals after its snapshot: keep those, or the ids it
            # copied from the snapshot would come back ("ghosts") once it is swapped in
            self.store.prune_removed(sequence if needed is None else min(sequence, needed))
        self.checkpoint_sequence, self.checkpoint_time, self.index_bytes = sequence, time.time(), size
        seconds = time.perf_counter() - start
        metrics.CHECKPOINT_SECONDS.labels(self.shard_id).observe(seconds)
        self._publish()
        logger.info("checkpoint at sequence %d: %d bytes in %.2fs", sequence, size, seconds)
        return True

    def needs_rebuild(self) -> bool:
        if self.lexical.dead > 0 and self.lexical.dead_share >= self.rebuild_tombstone_share:
            return True
        return self.index.tombstones > 0 and self.index.tombstone_share >= self.rebuild_tombstone_share

    @_in_use
    def rebuild(self, train: bool = False) -> float:
        """Rebuild the vector and lexical indexes from the store (dropping tombstones and removed documents'
        postings; ``train`` forces training now).

        Built from a consistent snapshot without blocking anything, then brought up to date and swapped
        in under the write lock."""
        with self._rebuild_lock:
            start = time.perf_counter()
            index = self._new_index()
            try:
                with contextlib.ExitStack() as snapshot:
                    with self._write_lock:  # the snapshot and the registration see the same store state
                        conn = snapshot.enter_context(self.store.consistent_read())
                        since = self.store.sequence_in(conn)
                        self._rebuild_since = since  # checkpoints keep the removal records after it
                    for iids, vectors in self.store.iter_vectors(conn):
                        index.add(iids, index.prepare(vectors))
                    lexical = self._build_lexical(conn)
                if train:
                    index.train_now()
                with self._write_lock:
                    self._replay(index, since)
                    self._replay_lexical(lexical, since)
                    with self._index_lock.write():
                        self.index, self.lexical = index, lexical
            finally:
                with self._write_lock:
                    self._rebuild_since = None
            seconds = time.perf_counter() - start
            metrics.REBUILDS.labels(self.shard_id).inc()
            self._publish()
            logger.info("index rebuilt from store: %d vectors in %.2fs", index.ntotal, seconds)
            return seconds

    def close(self, checkpoint: bool = True) -> None:
        with self._users:  # refuse new calls, let running ones finish (bounded) before the store closes
            self._closed = True
            if not self._users.wait_for(lambda: self._active == 0, timeout=120):
                logger.warning("closing the shard with %d call(s) still running", self._active)
        if checkpoint:
            self.checkpoint()
        self.store.close()

    # --- guards -----------------------------------------------------------------------------------
    def _check_vectors(self, x: np.ndarray, field: str) -> None:
        if x.ndim != 2 or x.shape[1] != self.dim:
            got = x.shape[1] if x.ndim == 2 else x.shape
            raise InvalidArgument(f"{field}: vectors must have dimension {self.dim}, got {got}")
        if not np.isfinite(x).all():
            bad = int(np.argwhere(~np.isfinite(x))[0][0])
            raise InvalidArgument(f"{field}[{bad}]: contains NaN or infinity")

    # --- writes -----------------------------------------------------------------------------------
    @_in_use
    def upsert(self, docs: list[Document], vectors: np.ndarray, embedding_model: str = "",
               versions: list[int] | None = None) -> tuple[int, int]:
        """Durably store and index ``docs``; returns (count, sequence) once durable. With ``versions``,
        documents older than the stored version (or a versioned delete) are skipped (store.upsert)."""
        validate_batch(docs, self.max_upsert_batch, "documents[{i}].document")
        if vectors.shape[0] != len(docs):
            raise InvalidArgument(f"documents: {len(docs)} documents but {vectors.shape[0]} vectors")
        self._check_vectors(vectors, "documents.vector")
        start = time.perf_counter()
        analyzed = self.analyze_documents(docs)  # before any lock: the slow part of lexical indexing
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
            if versions is not None and len(versions) != len(docs):
                raise InvalidArgument(f"documents.version: {len(versions)} versions for {len(docs)} documents")
            _check_versions(versions, "documents.version")
            prepared = self.index.prepare(vectors)
            iids, replaced, sequence = self.store.upsert(docs, prepared, versions)
            written = iids >= 0  # older versions were skipped
            with self._index_lock.write():
                self.index.remove(replaced)
                self.index.add(iids[written], prepared[written])
                self.lexical.remove(replaced)
                self.lexical.add(iids[written], [a for a, w in zip(analyzed, written) if w],
                                 [id_key(d.id) for d, w in zip(docs, written) if w])
        self._publish()
        metrics.WRITE_SECONDS.labels(self.shard_id, "upsert").observe(time.perf_counter() - start)
        return len(docs), sequence

    @_in_use
    def delete(self, ids: list[str], versions: list[int] | None = None) -> tuple[int, int]:
        if not ids:
            raise InvalidArgument("ids: empty")
        if len(ids) > self.max_upsert_batch:
            raise InvalidArgument(f"ids: {len(ids)} exceeds the maximum {self.max_upsert_batch}")
        for i, doc_id in enumerate(ids):
            validate_id(doc_id, f"ids[{i}]")
        if versions is not None and len(versions) != len(ids):
            raise InvalidArgument(f"versions: {len(versions)} versions for {len(ids)} ids")
        _check_versions(versions, "versions")
        start = time.perf_counter()
        with self._write_lock:
            removed, sequence = self.store.delete(ids, versions)
            with self._index_lock.write():
                self.index.remove(removed)
                self.lexical.remove(removed)
        self._publish()
        metrics.WRITE_SECONDS.labels(self.shard_id, "delete").observe(time.perf_counter() - start)
        return len(removed), sequence

    def analyze_documents(self, docs: list[Document]) -> list[Counter[str]]:
        return self.lexical.analyze(document_text(d.title, d.text) for d in docs)

    # --- reads ------------------------------------------------------------------------------------
    @_in_use
    def term_stats(self, texts: list[str]) -> TermStats:
        """Each text's analysed terms with their local document frequencies, and this shard's corpus
        statistics: what the router sums over all shards for corpus-wide BM25."""
        if len(texts) > self.max_batch:
            raise InvalidArgument(f"texts: batch of {len(texts)} exceeds the maximum {self.max_batch}")
        with self._index_lock.read():
            return TermStats([self.lexical.query_terms(t) for t in texts], self.lexical.stats(),
                             self.lexical.describe())

    def _check_lexical(self, lexical: list[LexicalQuery]) -> None:
        if len(lexical) > self.max_batch:
            raise InvalidArgument(f"lexical: batch of {len(lexical)} exceeds the maximum {self.max_batch}")
        for i, q in enumerate(lexical):
            if len(q.counts) != len(q.terms):
                raise InvalidArgument(f"lexical[{i}].counts: {len(q.counts)} counts for {len(q.terms)} terms")
            if q.document_frequencies is not None and len(q.document_frequencies) != len(q.terms):
                raise InvalidArgument(f"lexical[{i}].document_frequencies: {len(q.document_frequencies)} for "
                                      f"{len(q.terms)} terms")
            if q.stats is not None and q.stats.total_length < 0:
                raise InvalidArgument(f"lexical[{i}].total_length: negative")

    @_in_use
    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None, ef_search: int | None = None,
               include_documents: bool = False, flt: Filter | None = None,
               unknown_fields_match_nothing: bool = False, lexical: list[LexicalQuery] | None = None,
               documents_per_list: int = 0) -> SearchResult:
        """Dense top-k of each query vector and/or BM25 top-k of each lexical query, under one filter."""
        if k <= 0 or k > self.max_k:
            raise InvalidArgument(f"k: must be between 1 and {self.max_k}, got {k}")
        if queries.shape[0] > self.max_batch:
            raise InvalidArgument(f"queries: batch of {queries.shape[0]} exceeds the maximum {self.max_batch}")
        lexical = lexical or []
        self._check_lexical(lexical)
        if queries.shape[0] == 0 and not lexical:
            raise InvalidArgument("queries: give query vectors and/or lexical queries")
        if queries.shape[0]:
            self._check_vectors(queries, "queries")
        if nprobe is not None and not 1 <= nprobe <= 65536:
            raise InvalidArgument(f"params.nprobe: must be between 1 and 65536, got {nprobe}")
        if ef_search is not None and not 1 <= ef_search <= 65536:
            raise InvalidArgument(f"params.ef_search: must be between 1 and 65536, got {ef_search}")
        allowed, unknown = None, []
        if flt is not None and flt.must:
            fields = self.store.fields()
            unknown = sorted({c.field for c in flt.must if c.field and c.field not in fields})
            if unknown and unknown_fields_match_nothing:
                allowed = np.zeros(0, np.int64)
            else:
                allowed = self.store.filter_iids(compile_filter(flt, fields))
        start = time.perf_counter()
        nq = queries.shape[0]
        prepared = self.index.prepare(queries) if nq else queries
        if allowed is not None and len(allowed) == 0:
            empty = [np.zeros(0, np.int64)] * nq, [np.zeros(0, np.float32)] * nq
            nl = len(lexical)
            lex_empty = [np.zeros(0, np.int64)] * nl, [np.zeros(0, np.float32)] * nl, [np.zeros(0, np.uint64)] * nl
            return SearchResult(*empty, {}, self.index.ntotal, unknown, *lex_empty, self.lexical.documents)
        out_ids, out_scores, lex_ids, lex_scores, lex_keys = [], [], [], [], []
        with self._index_lock.read():
            ntotal = self.index.ntotal
            if nq:
                kk = min(k, max(ntotal, 1))
                scores, ids = self.index.search(prepared, kk, nprobe, ef_search, allowed)
            lexical_documents = self.lexical.documents
            for q in lexical:
                row_ids, row_scores = self.lexical.search(q, k, allowed)
                lex_ids.append(row_ids)
                lex_scores.append(row_scores.astype(np.float32))
                lex_keys.append(self.lexical.keys_for(row_ids))
        if nq:
            for row_ids, row_scores in zip(ids, scores):
                valid = row_ids >= 0
                out_ids.append(row_ids[valid])
                out_scores.append(row_scores[valid])
            if allowed is not None:
                self._exact_fallback(prepared, min(k, len(allowed)), allowed, out_ids, out_scores)
        documents: dict[int, Document] = {}
        if include_documents:
            every = [row[:documents_per_list] if documents_per_list else row for row in out_ids + lex_ids]
            documents = self.store.get_by_iids(np.concatenate(every).tolist() if every else [])
        metrics.SEARCH_SECONDS.labels(self.shard_id).observe(time.perf_counter() - start)
        metrics.SEARCH_QUERIES.labels(self.shard_id).inc(nq + len(lexical))
        return SearchResult(out_ids, out_scores, documents, ntotal, unknown, lex_ids, lex_scores, lex_keys,
                            lexical_documents)

    def _exact_fallback(self, queries: np.ndarray, want: int, allowed: np.ndarray, out_ids: list[np.ndarray],
                        out_scores: list[np.ndarray]) -> None:
        """An approximate index may miss matches of a selective filter (e.g. IVF lists not probed): score
        those queries exactly over the matching vectors, so k hits come back when k documents match.
        The matching vectors are read and scored in blocks, keeping a running top-k: memory is bounded by
        the block size, not by the number of matches."""
        short = [q for q in range(len(queries)) if len(out_ids[q]) < want]
        if not short or len(allowed) > self.exact_filter_limit:
            return
        metrics.FILTER_FALLBACKS.labels(self.shard_id).inc(len(short))
        sign = -1.0 if self.metric == "ip" else 1.0  # sort key: lower is better
        qs = np.ascontiguousarray(queries[short], dtype=np.float32)
        best_ids = [np.zeros(0, np.int64) for _ in short]
        best_keys = [np.zeros(0, np.float64) for _ in short]
        for iids, vectors in self.store.iter_vectors_for(allowed, self.exact_filter_block):
            vectors = self.index.prepare(vectors)
            ip_scores = qs @ vectors.T if self.metric == "ip" else None  # (queries, block)
            for j in range(len(short)):
                scores = ip_scores[j] if ip_scores is not None else ((vectors - qs[j]) ** 2).sum(axis=1)
                keys = np.concatenate([best_keys[j], sign * scores.astype(np.float64)])
                ids = np.concatenate([best_ids[j], iids])
                order = np.argsort(keys, kind="stable")[:want]  # ties: earlier blocks first
                best_keys[j], best_ids[j] = keys[order], ids[order]
        for j, q in enumerate(short):
            out_ids[q], out_scores[q] = best_ids[j], (sign * best_keys[j]).astype(np.float32)

    @_in_use
    def fetch(self, ids: list[str]) -> list[Document]:
        for i, doc_id in enumerate(ids):
            validate_id(doc_id, f"ids[{i}]")
        found = self.store.get_by_ids(ids)
        return [found[i] for i in ids if i in found]

    @_in_use
    def fetch_by_iids(self, iids: list[int]) -> dict[int, Document]:
        if len(iids) > self.max_k:
            raise InvalidArgument(f"iids: at most {self.max_k} per call")
        return self.store.get_by_iids(iids)

    @_in_use
    def digest(self, after_id: str = "", limit: int = 10_000, bucket_count: int = 0,
               buckets: list[int] | None = None) -> list[tuple[str, int, str, bool]]:
        if not 1 <= limit <= 100_000:
            raise InvalidArgument(f"limit: must be between 1 and 100000, got {limit}")
        if bucket_count:
            _check_buckets(bucket_count, "bucket_count")
            if not buckets or any(b >= bucket_count for b in buckets) or len(buckets) > 4096:
                raise InvalidArgument(f"buckets: 1 to 4096 bucket numbers below bucket_count {bucket_count}")
        return self.store.digest(after_id, limit, bucket_count, buckets or [])

    @_in_use
    def bucket_digest(self, buckets: int) -> BucketDigest:
        """Per-bucket hashes of the digest (incremental anti-entropy: only differing buckets are compared)."""
        _check_buckets(buckets, "buckets")
        return self.store.bucket_digest(buckets)

    @_in_use
    def prune_tombstones(self, before_version: int, synced_version: int) -> tuple[int, int]:
        """Forget versioned deletes below ``before_version`` (every replica holds them); (pruned, horizon)."""
        _check_version(before_version, "before_version")
        _check_version(synced_version, "synced_version")
        return self.store.prune_tombstones(before_version, synced_version)

    @_in_use
    def records(self, ids: list[str]) -> dict[str, tuple[Document, np.ndarray, int]]:
        for i, doc_id in enumerate(ids):
            validate_id(doc_id, f"ids[{i}]")
        return self.store.records(ids)

    @_in_use
    def content_hashes(self, ids: list[str]) -> dict[str, str]:
        for i, doc_id in enumerate(ids):
            validate_id(doc_id, f"ids[{i}]")
        return self.store.hashes_by_ids(ids)

    @_in_use
    def info(self) -> ShardInfo:
        with self._index_lock.read():
            ntotal, trained, tombstones = self.index.ntotal, self.index.trained, self.index.tombstones
            lex = self.lexical
            lexical = (lex.documents, lex.terms, lex.postings, lex.memory_bytes(), lex.describe())
        return ShardInfo(self.shard_id, ntotal, self.dim, self.metric, self.index_factory, self.embedding_model,
                         self.store.sequence, trained, self.max_k, self.max_batch, self.store.count(), tombstones,
                         self.checkpoint_sequence, self.index_bytes, *lexical)
