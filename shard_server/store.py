"""The shard's source of truth: documents, metadata and vectors in SQLite (WAL, synchronous=FULL).

A write returns only after its transaction is committed and fsynced, so whatever the caller then
acknowledges survives a crash. Internal ids (``iid``) are SQLite AUTOINCREMENT rowids: stable int64s,
never reused, so an index entry can never point at a different document than the one it was built from.
Upserting an existing id deletes the old row and inserts a new one (new iid) in the same transaction.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ragcluster.documents import Document

SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    iid INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class DocumentStore:
    def __init__(self, path: Path, dim: int):
        self.path = Path(path)
        self.dim = dim
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write = self._connect()
        self._write.executescript(SCHEMA)
        self._write_lock = threading.Lock()
        self._local = threading.local()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def close(self) -> None:
        self._write.close()

    # --- metadata -------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self._reader().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self._write_lock:
            self._write.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    @property
    def sequence(self) -> int:
        return int(self.get_meta("sequence", "0") or 0)

    # --- writes ---------------------------------------------------------------------------------
    def upsert(self, docs: Sequence[Document], vectors: np.ndarray) -> tuple[np.ndarray, list[int], int]:
        """Store ``docs`` with their ``vectors`` durably. Returns (new iids, replaced iids, sequence)."""
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        new_iids = np.empty(len(docs), dtype=np.int64)
        replaced: list[int] = []
        with self._write_lock:
            cur = self._write.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                for i, doc in enumerate(docs):
                    row = cur.execute("SELECT iid FROM docs WHERE id = ?", (doc.id,)).fetchone()
                    if row:
                        replaced.append(row[0])
                        cur.execute("DELETE FROM docs WHERE iid = ?", (row[0],))
                    cur.execute(
                        "INSERT INTO docs(id, title, text, metadata, vector) VALUES (?, ?, ?, ?, ?)",
                        (doc.id, doc.title, doc.text, json.dumps(doc.metadata), vectors[i].tobytes()),
                    )
                    new_iids[i] = cur.lastrowid
                sequence = self._bump_sequence(cur)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return new_iids, replaced, sequence

    def delete(self, ids: Sequence[str]) -> tuple[list[int], int]:
        """Delete documents by id durably. Returns (removed iids, sequence)."""
        removed: list[int] = []
        with self._write_lock:
            cur = self._write.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                for doc_id in ids:
                    row = cur.execute("SELECT iid FROM docs WHERE id = ?", (doc_id,)).fetchone()
                    if row:
                        removed.append(row[0])
                        cur.execute("DELETE FROM docs WHERE iid = ?", (row[0],))
                sequence = self._bump_sequence(cur)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return removed, sequence

    @staticmethod
    def _bump_sequence(cur: sqlite3.Cursor) -> int:
        row = cur.execute("SELECT value FROM meta WHERE key = 'sequence'").fetchone()
        sequence = (int(row[0]) if row else 0) + 1
        cur.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('sequence', ?)", (str(sequence),))
        return sequence

    # --- reads ----------------------------------------------------------------------------------
    def count(self) -> int:
        return self._reader().execute("SELECT COUNT(*) FROM docs").fetchone()[0]

    @staticmethod
    def _doc(row) -> Document:
        return Document(row[0], row[2], row[1], json.loads(row[3]))

    def get_by_iids(self, iids: Sequence[int]) -> dict[int, Document]:
        out: dict[int, Document] = {}
        conn = self._reader()
        unique = list(dict.fromkeys(int(i) for i in iids))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(f"SELECT iid, id, title, text, metadata FROM docs WHERE iid IN ({marks})", chunk):
                out[row[0]] = self._doc(row[1:])
        return out

    def get_by_ids(self, ids: Sequence[str]) -> dict[str, Document]:
        out: dict[str, Document] = {}
        conn = self._reader()
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(f"SELECT id, title, text, metadata FROM docs WHERE id IN ({marks})", chunk):
                out[row[0]] = self._doc(row)
        return out

    def iter_vectors(self, batch: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All (iids, vectors) in iid order, ``batch`` rows at a time."""
        conn = self._connect()
        try:
            last = -1
            while True:
                rows = conn.execute(
                    "SELECT iid, vector FROM docs WHERE iid > ? ORDER BY iid LIMIT ?", (last, batch)
                ).fetchall()
                if not rows:
                    return
                iids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), self.dim)
                yield iids, vecs.astype(np.float32)
                last = int(iids[-1])
        finally:
            conn.close()
