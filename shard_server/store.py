"""The shard's source of truth: documents, metadata and vectors in SQLite (WAL, synchronous=FULL).

A write returns only after its transaction is committed and fsynced, so whatever the caller then
acknowledges survives a crash. Every write batch gets the next sequence number; each document row
records the sequence that wrote it and every removed internal id (deleted or replaced) is logged with
the sequence that removed it, so a FAISS checkpoint taken at sequence S is brought up to date by
replaying ``changes_since(S)``.

Internal ids (``iid``) are SQLite AUTOINCREMENT rowids: stable int64s, never reused, so an index entry
can never point at a different document than the one it was built from. Upserting an existing id
deletes the old row and inserts a new one (new iid) in the same transaction.

Metadata is also kept as (iid, key, string | number) rows with indexes, for filters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sqlite3
import threading
import zlib
from collections.abc import Generator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from ragcluster.documents import Document, MetadataValue
from ragcluster.errors import FailedPrecondition, ResourceExhausted

SCHEMA_VERSION = "4"
SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    iid INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    vector BLOB NOT NULL,
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL DEFAULT '',
    version INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tombstones (id TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS docs_seq ON docs(seq);
CREATE TABLE IF NOT EXISTS removed (iid INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS removed_seq ON removed(seq);
CREATE TABLE IF NOT EXISTS meta_kv (iid INTEGER NOT NULL, key TEXT NOT NULL, s TEXT, n REAL);
CREATE INDEX IF NOT EXISTS meta_kv_s ON meta_kv(key, s);
CREATE INDEX IF NOT EXISTS meta_kv_n ON meta_kv(key, n);
CREATE INDEX IF NOT EXISTS meta_kv_iid ON meta_kv(iid);
CREATE TABLE IF NOT EXISTS fields (key TEXT PRIMARY KEY, kind TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _kind(value: MetadataValue) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "string"


def _kv(value: MetadataValue) -> tuple[str | None, float | None]:
    if isinstance(value, bool):
        return None, float(value)
    if isinstance(value, (int, float)):
        return None, float(value)
    return str(value), None


def bucket_of(doc_id: str, buckets: int) -> int:
    """The anti-entropy bucket of an id: CRC-32 of its UTF-8 bytes mod ``buckets`` (the same on every replica)."""
    return zlib.crc32(doc_id.encode()) % buckets


def entry_hash(doc_id: str, version: int, content_hash: str, deleted: bool) -> int:
    """A 64-bit hash of one digest entry; a bucket's hash is the sum (mod 2^64) of its entries'."""
    data = f"{doc_id}\x1f{version}\x1f{content_hash}\x1f{int(deleted)}".encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


@dataclasses.dataclass(frozen=True)
class BucketDigest:
    hashes: list[int]
    counts: list[int]
    max_version: int
    tombstone_horizon: int = 0
    synced_version: int = 0


@contextlib.contextmanager
def _storage_errors(op: str) -> Iterator[None]:
    """SQLite's "full" errors become RESOURCE_EXHAUSTED (nothing was acknowledged)."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        msg = str(exc).lower()
        if "full" in msg or "no space" in msg:
            raise ResourceExhausted(f"{op}: storage full ({exc}); the write was not acknowledged") from exc
        raise


class DocumentStore:
    def __init__(self, path: Path, dim: int, max_bytes: int = 0):
        self.path = Path(path)
        self.dim = dim
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write = self._connect()
        version = self._write.execute("PRAGMA user_version").fetchone()[0]
        has_docs = self._write.execute("SELECT 1 FROM sqlite_master WHERE name = 'docs'").fetchone()
        if has_docs and str(version) == "2":  # v2 -> v3: content hashes (empty: re-sent once by resumable ingest)
            self._write.execute("ALTER TABLE docs ADD COLUMN hash TEXT NOT NULL DEFAULT ''")
            version = 3
        if has_docs and str(version) == "3":  # v3 -> v4: document versions (0 = written before versions)
            self._write.execute("ALTER TABLE docs ADD COLUMN version INTEGER NOT NULL DEFAULT 0")
        elif has_docs and str(version) != SCHEMA_VERSION:
            raise FailedPrecondition(f"{self.path}: store schema {version}, this version needs {SCHEMA_VERSION}")
        self._write.executescript(SCHEMA)
        self._write.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        if max_bytes > 0:
            page = self._write.execute("PRAGMA page_size").fetchone()[0]
            self._write.execute(f"PRAGMA max_page_count = {max(1, max_bytes // page)}")
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        # versioned writes below this are refused: deletes older than it were pruned (prune_tombstones)
        self.tombstone_horizon = int(self.get_meta("tombstone_horizon", "0") or 0)
        self._generation = 0  # bumped after every committed change of the digest (cache key of bucket_digest)
        self._bucket_cache: tuple[int, int, BucketDigest] | None = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.create_function("bucket_of", 2, bucket_of, deterministic=True)
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
            self._readers.append(conn)
        return conn

    def close(self) -> None:
        for conn in self._readers:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._write.close()

    # --- metadata -------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self._reader().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self._write_lock, _storage_errors("meta"):
            self._write.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    @property
    def sequence(self) -> int:
        return int(self.get_meta("sequence", "0") or 0)

    @staticmethod
    def sequence_in(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key = 'sequence'").fetchone()
        return int(row[0]) if row else 0

    def fields(self) -> dict[str, str]:
        """Metadata keys seen so far and their kind: string | number | bool | mixed."""
        return dict(self._reader().execute("SELECT key, kind FROM fields").fetchall())

    # --- writes ---------------------------------------------------------------------------------
    def upsert(self, docs: Sequence[Document], vectors: np.ndarray,
               versions: Sequence[int] | None = None) -> tuple[np.ndarray, list[int], int]:
        """Store ``docs`` with their ``vectors`` durably. Returns (new iids, replaced iids, sequence).

        With ``versions`` (one per document, > 0) a document is written only when its (version, content
        hash) is above the stored one and above the version of a delete of that id (last writer wins, the
        same decision on every replica whatever the order the writes arrive in); a document not written
        gets iid -1. Version 0 writes unconditionally (callers without versions)."""
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        new_iids = np.full(len(docs), -1, dtype=np.int64)
        replaced: list[int] = []
        with self._write_lock, _storage_errors("upsert"):
            self._check_horizon(versions, "documents.version")  # under the lock: a prune may raise the horizon
            cur = self._write.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                sequence = self._next_sequence(cur)
                known = dict(cur.execute("SELECT key, kind FROM fields").fetchall())
                for i, doc in enumerate(docs):
                    version, content_hash = (int(versions[i]) if versions is not None else 0), doc.content_hash()
                    row = cur.execute("SELECT iid, version, hash FROM docs WHERE id = ?", (doc.id,)).fetchone()
                    if version:
                        if row and (row[1], row[2]) >= (version, content_hash):
                            continue  # the stored version is newer (or this very write again)
                        tomb = cur.execute("SELECT version FROM tombstones WHERE id = ?", (doc.id,)).fetchone()
                        if tomb and tomb[0] >= version:
                            continue  # deleted by a later write
                    cur.execute("DELETE FROM tombstones WHERE id = ?", (doc.id,))
                    if row:
                        replaced.append(row[0])
                        self._remove_row(cur, row[0], sequence)
                    cur.execute(
                        "INSERT INTO docs(id, title, text, metadata, vector, seq, hash, version) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (doc.id, doc.title, doc.text, json.dumps(doc.metadata), vectors[i].tobytes(), sequence,
                         content_hash, version),
                    )
                    iid = new_iids[i] = cast(int, cur.lastrowid)  # set by every INSERT
                    for key, value in doc.metadata.items():
                        cur.execute("INSERT INTO meta_kv(iid, key, s, n) VALUES (?, ?, ?, ?)", (iid, key, *_kv(value)))
                        kind = _kind(value)
                        if key not in known or known[key] not in (kind, "mixed"):
                            new_kind = kind if key not in known else "mixed"
                            cur.execute("INSERT OR REPLACE INTO fields(key, kind) VALUES (?, ?)", (key, new_kind))
                            known[key] = new_kind
                cur.execute("COMMIT")
            except BaseException:
                if self._write.in_transaction:  # SQLite may already have rolled back (e.g. SQLITE_FULL)
                    cur.execute("ROLLBACK")
                raise
            self._generation += 1
        return new_iids, replaced, sequence

    def delete(self, ids: Sequence[str], versions: Sequence[int] | None = None) -> tuple[list[int], int]:
        """Delete documents by id durably. Returns (removed iids, sequence).

        With ``versions`` (> 0) the delete is itself versioned: it removes only an older document and
        leaves a tombstone, so an older upsert arriving later (another router, a repair) cannot bring the
        document back."""
        removed: list[int] = []
        with self._write_lock, _storage_errors("delete"):
            cur = self._write.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                sequence = self._next_sequence(cur)
                for j, doc_id in enumerate(ids):
                    version = int(versions[j]) if versions is not None else 0
                    row = cur.execute("SELECT iid, version FROM docs WHERE id = ?", (doc_id,)).fetchone()
                    if version:
                        if row and row[1] >= version:
                            continue  # written after this delete
                        if version >= self.tombstone_horizon:  # below it: no write that old is accepted anyway
                            cur.execute("INSERT INTO tombstones(id, version) VALUES (?, ?) ON CONFLICT(id) DO "
                                        "UPDATE SET version = max(version, excluded.version)", (doc_id, version))
                    if row:
                        removed.append(row[0])
                        self._remove_row(cur, row[0], sequence)
                cur.execute("COMMIT")
            except BaseException:
                if self._write.in_transaction:  # SQLite may already have rolled back (e.g. SQLITE_FULL)
                    cur.execute("ROLLBACK")
                raise
            self._generation += 1
        return removed, sequence

    def _check_horizon(self, versions: Sequence[int] | None, field: str) -> None:
        """A versioned upsert older than the tombstone horizon may be a document whose delete was pruned:
        refused, so a pruned delete can never be undone (the writer's clock is far behind, or the write
        comes from a replica that missed the prune: it must be restored from a snapshot instead)."""
        if versions is None or not self.tombstone_horizon:
            return
        old = [int(v) for v in versions if v and int(v) < self.tombstone_horizon]
        if old:
            raise FailedPrecondition(f"{field}: version {min(old)} is older than this replica's tombstone horizon "
                                     f"{self.tombstone_horizon} (deletes before it were pruned); refused")

    def prune_tombstones(self, before_version: int, synced_version: int = 0) -> tuple[int, int]:
        """Forget versioned deletes older than ``before_version`` (the caller knows every replica holds
        them) and raise the tombstone horizon to it; record ``synced_version`` (the caller's complete
        anti-entropy pass). Returns (tombstones pruned, horizon)."""
        with self._write_lock, _storage_errors("prune"):
            cur = self._write.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                horizon = max(self.tombstone_horizon, int(before_version))
                pruned = cur.execute("DELETE FROM tombstones WHERE version < ?", (horizon,)).rowcount
                synced = max(int(self.get_meta("synced_version", "0") or 0), int(synced_version))
                cur.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                                [("tombstone_horizon", str(horizon)), ("synced_version", str(synced))])
                cur.execute("COMMIT")
            except BaseException:
                if self._write.in_transaction:
                    cur.execute("ROLLBACK")
                raise
            self.tombstone_horizon = horizon
            if pruned:
                self._generation += 1
        return pruned, horizon

    @property
    def synced_version(self) -> int:
        return int(self.get_meta("synced_version", "0") or 0)

    def tombstone_count(self) -> int:
        return self._reader().execute("SELECT COUNT(*) FROM tombstones").fetchone()[0]

    @staticmethod
    def _remove_row(cur: sqlite3.Cursor, iid: int, sequence: int) -> None:
        cur.execute("DELETE FROM docs WHERE iid = ?", (iid,))
        cur.execute("DELETE FROM meta_kv WHERE iid = ?", (iid,))
        cur.execute("INSERT OR REPLACE INTO removed(iid, seq) VALUES (?, ?)", (iid, sequence))

    @staticmethod
    def _next_sequence(cur: sqlite3.Cursor) -> int:
        row = cur.execute("SELECT value FROM meta WHERE key = 'sequence'").fetchone()
        sequence = (int(row[0]) if row else 0) + 1
        cur.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('sequence', ?)", (str(sequence),))
        return sequence

    def prune_removed(self, upto_sequence: int) -> None:
        """Forget removals a checkpoint already covers."""
        with self._write_lock, contextlib.suppress(sqlite3.OperationalError):
            self._write.execute("DELETE FROM removed WHERE seq <= ?", (upto_sequence,))

    # --- reads ----------------------------------------------------------------------------------
    def count(self) -> int:
        return self._reader().execute("SELECT COUNT(*) FROM docs").fetchone()[0]

    @staticmethod
    def _doc(row: Sequence[str]) -> Document:  # id, title, text, metadata (JSON)
        return Document(row[0], row[2], row[1], json.loads(row[3]))

    def _chunked(self, sql: str, keys: Sequence) -> Iterator[tuple]:
        conn = self._reader()
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            yield from conn.execute(sql.format(marks=",".join("?" * len(chunk))), chunk)

    def get_by_iids(self, iids: Sequence[int]) -> dict[int, Document]:
        unique = list(dict.fromkeys(int(i) for i in iids))
        sql = "SELECT iid, id, title, text, metadata FROM docs WHERE iid IN ({marks})"
        return {row[0]: self._doc(row[1:]) for row in self._chunked(sql, unique)}

    def get_by_ids(self, ids: Sequence[str]) -> dict[str, Document]:
        sql = "SELECT id, title, text, metadata FROM docs WHERE id IN ({marks})"
        return {row[0]: self._doc(row) for row in self._chunked(sql, list(dict.fromkeys(ids)))}

    def hashes_by_ids(self, ids: Sequence[str]) -> dict[str, str]:
        sql = "SELECT id, hash FROM docs WHERE id IN ({marks})"
        return {row[0]: row[1] for row in self._chunked(sql, list(dict.fromkeys(ids)))}

    def iter_vectors_for(self, iids: Sequence[int] | np.ndarray,
                         block: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(iids, vectors) of ``iids`` in blocks of at most ``block`` rows: memory stays bounded whatever
        the number of ids."""
        sql = "SELECT iid, vector FROM docs WHERE iid IN ({marks})"
        keys = np.asarray(iids, dtype=np.int64)
        for start in range(0, len(keys), block):
            rows = list(self._chunked(sql, keys[start:start + block].tolist()))
            if rows:
                yield self._rows_to_arrays(rows)

    def digest(self, after_id: str = "", limit: int = 10_000, bucket_count: int = 0,
               buckets: Sequence[int] = ()) -> list[tuple[str, int, str, bool]]:
        """(id, version, content hash, deleted) of documents and tombstones with id > ``after_id``, in id
        order: what replicas compare to find and repair differences (anti-entropy). With ``bucket_count``,
        only the entries of ``buckets`` (see ``bucket_of``)."""
        where = "id > ?"
        params: list[str | int] = [after_id]
        if bucket_count:
            where += f" AND bucket_of(id, ?) IN ({','.join('?' * len(buckets))})"
            params += [bucket_count, *buckets]
        sql = (f"SELECT id, version, hash, 0 FROM docs WHERE {where} UNION ALL "
               f"SELECT id, version, '', 1 FROM tombstones WHERE {where} ORDER BY 1 LIMIT ?")
        rows = self._reader().execute(sql, (*params, *params, limit)).fetchall()
        return [(r[0], int(r[1]), r[2], bool(r[3])) for r in rows]

    def bucket_digest(self, buckets: int) -> BucketDigest:
        """Per bucket, the sum of the entry hashes and the number of entries (documents and tombstones), and
        the highest version held. Reads every entry once (cached until the next write)."""
        horizon, synced = self.tombstone_horizon, self.synced_version
        generation = self._generation
        cached = self._bucket_cache
        if cached is not None and cached[:2] == (generation, buckets):
            return dataclasses.replace(cached[2], tombstone_horizon=horizon, synced_version=synced)
        hashes, counts, top = [0] * buckets, [0] * buckets, 0
        mask = (1 << 64) - 1
        with self.consistent_read() as conn:
            cursor = conn.execute("SELECT id, version, hash, 0 FROM docs UNION ALL "
                                  "SELECT id, version, '', 1 FROM tombstones")
            while rows := cursor.fetchmany(10_000):
                for doc_id, version, content_hash, deleted in rows:
                    b = bucket_of(doc_id, buckets)
                    hashes[b] = (hashes[b] + entry_hash(doc_id, int(version), content_hash, bool(deleted))) & mask
                    counts[b] += 1
                    top = max(top, int(version))
        result = BucketDigest(hashes, counts, top, horizon, synced)
        if self._generation == generation:  # no write committed meanwhile: the result is that generation's
            self._bucket_cache = (generation, buckets, result)
        return result

    def records(self, ids: Sequence[str]) -> dict[str, tuple[Document, np.ndarray, int]]:
        """id -> (document, stored vector, version), for copying documents between replicas."""
        sql = "SELECT id, title, text, metadata, vector, version FROM docs WHERE id IN ({marks})"
        out = {}
        for row in self._chunked(sql, list(dict.fromkeys(ids))):
            out[row[0]] = (self._doc(row[:4]), np.frombuffer(row[4], dtype="<f4").astype(np.float32), int(row[5]))
        return out

    def vectors_for(self, iids: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        sql = "SELECT iid, vector FROM docs WHERE iid IN ({marks})"
        rows = list(self._chunked(sql, [int(i) for i in iids]))
        return self._rows_to_arrays(rows)

    def _rows_to_arrays(self, rows: Sequence[tuple[int, bytes]]) -> tuple[np.ndarray, np.ndarray]:
        iids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        if not rows:
            return iids, np.zeros((0, self.dim), dtype=np.float32)
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), self.dim)
        return iids, vecs.astype(np.float32)

    def filter_iids(self, clauses: list[tuple[str, list]]) -> np.ndarray:
        """Internal ids matching every (sql_where, params) clause over ``meta_kv`` (AND)."""
        sql = " INTERSECT ".join(f"SELECT iid FROM meta_kv WHERE {where}" for where, _ in clauses)
        params = [p for _, ps in clauses for p in ps]
        rows = self._reader().execute(sql, params).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    @contextlib.contextmanager
    def consistent_read(self) -> Iterator[sqlite3.Connection]:
        """A connection holding one read transaction: every query sees the same snapshot."""
        conn = self._connect()
        try:
            conn.execute("BEGIN")
            conn.execute("SELECT 1 FROM meta LIMIT 1").fetchall()  # the snapshot starts at the first read
            yield conn
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("COMMIT")
            conn.close()

    def _iter_live(self, columns: str, conn: sqlite3.Connection | None, since_sequence: int,
                   batch: int) -> Generator[list[tuple[Any, ...]], None, None]:
        """Rows (``iid`` first, then ``columns``) of live documents written after ``since_sequence``, in
        iid order, ``batch`` at a time; on ``conn`` (a consistent snapshot) or a connection of its own."""
        own = conn is None
        conn = conn or self._connect()
        try:
            last = -1
            while True:
                rows = conn.execute(
                    f"SELECT iid, {columns} FROM docs WHERE iid > ? AND seq > ? ORDER BY iid LIMIT ?",
                    (last, since_sequence, batch),
                ).fetchall()
                if not rows:
                    return
                yield rows
                last = int(rows[-1][0])
        finally:
            if own:
                conn.close()

    def iter_vectors(self, conn: sqlite3.Connection | None = None, since_sequence: int = 0,
                     batch: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(iids, vectors) of live documents written after ``since_sequence``, in iid order."""
        with contextlib.closing(self._iter_live("vector", conn, since_sequence, batch)) as pages:
            for rows in pages:
                yield self._rows_to_arrays(rows)

    def iter_texts(self, conn: sqlite3.Connection | None = None, since_sequence: int = 0,
                   batch: int = 10_000) -> Iterator[tuple[list[int], list[tuple[str, str, str]]]]:
        """(iids, [(id, title, text)]) of live documents written after ``since_sequence``, in iid order:
        what the lexical index is built from."""
        with contextlib.closing(self._iter_live("id, title, text", conn, since_sequence, batch)) as pages:
            for rows in pages:
                yield [r[0] for r in rows], [(r[1], r[2], r[3]) for r in rows]

    def live_iids(self, upto_iid: int, conn: sqlite3.Connection | None = None) -> np.ndarray:
        """Internal ids of live documents up to ``upto_iid`` (ascending)."""
        conn = conn or self._reader()
        rows = conn.execute("SELECT iid FROM docs WHERE iid <= ? ORDER BY iid", (upto_iid,)).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def removed_since(self, since_sequence: int, conn: sqlite3.Connection | None = None) -> list[int]:
        conn = conn or self._reader()
        return [r[0] for r in conn.execute("SELECT iid FROM removed WHERE seq > ?", (since_sequence,))]

    @contextlib.contextmanager
    def frozen_file(self) -> Iterator[tuple[Path, int, int] | None]:
        """The store's own file, unchanged while the context is open: ``(path, size, sequence)``, or None
        when that cannot be had right now (then copy with ``backup_to``).

        Under the write lock, a passive WAL checkpoint moves every committed page into the main file;
        then a read transaction starts. SQLite never writes WAL frames newer than an open reader's
        snapshot back into the main file, so its first ``size`` bytes stay exactly this snapshot until
        the context closes, while writes go on into the WAL. No copy of the store is made."""
        conn = self._connect()
        try:
            frozen = None
            with self._write_lock:
                busy, log, done = self._write.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if not busy and log == done:  # else another reader holds back part of the WAL
                    conn.execute("BEGIN")
                    sequence = self.sequence_in(conn)  # the snapshot starts at this first read
                    pages = conn.execute("PRAGMA page_count").fetchone()[0]
                    frozen = self.path, pages * conn.execute("PRAGMA page_size").fetchone()[0], sequence
            yield frozen
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("COMMIT")
            conn.close()

    def backup_to(self, path: Path) -> int:
        """A consistent copy of the whole store at ``path``; returns its sequence number."""
        dest = sqlite3.connect(path)
        try:
            with self._write_lock:  # no write in the middle: the copy is one sequence number
                self._write.backup(dest)
            sequence = self.sequence_in(dest)
        finally:
            dest.close()
        return sequence

    def wal_bytes(self) -> int:
        wal = Path(str(self.path) + "-wal")
        try:
            return wal.stat().st_size
        except FileNotFoundError:
            return 0

    def size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                total += p.stat().st_size
        return total
