"""Restore: replace a replica's data with a verified copy of another replica, or leave it exactly as it was.

- Only peers on an allow-list (the other replicas of the same shard) may be copied from.
- The snapshot is streamed into a temporary file while the live shard keeps serving; its header (shard id,
  dimension, metric, embedding model, format version), size, SHA-256 and SQLite integrity are checked
  before anything is replaced. A failure, a cancelled call or an expired deadline removes the temporary
  file and leaves the shard untouched (it was never closed).
- Only then is the shard closed and the files swapped; if the new store does not open, the old files are
  put back and the old shard reopened.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import grpc

from ragcluster import tracing
from ragcluster.channels import aio_channel
from ragcluster.errors import FailedPrecondition, PermissionDenied, ResourceExhausted, Unavailable
from ragcluster.fsutil import fsync_dir, replace_durably
from ragcluster.security import ClientTls
from ragcluster.v1 import common_pb2, shard_pb2, shard_pb2_grpc
from shard_server.shard import CHECKPOINT_FILE, STORE_FILE

logger = logging.getLogger(__name__)


class RestorePeers:
    """Allowed Restore sources: ``peers`` (fixed) plus the lines of ``peers_file`` (re-read when it changes).

    ``open_when_empty``: with nothing configured, any source is allowed (plaintext development clusters);
    with TLS on, an empty allow-list refuses every Restore."""

    def __init__(self, peers: list[str], peers_file: str = "", open_when_empty: bool = False):
        self.fixed = {p.strip() for p in peers if p.strip()}
        self.peers_file = peers_file
        self.open_when_empty = open_when_empty
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._from_file: set[str] = set()

    def _file_peers(self) -> set[str]:
        if not self.peers_file:
            return set()
        try:
            st = os.stat(self.peers_file)
            stamp: tuple | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                text = Path(self.peers_file).read_text() if stamp is not None else ""
                self._from_file = {line.strip() for line in text.splitlines()
                                   if line.strip() and not line.lstrip().startswith("#")}
                self._stamp = stamp
            return set(self._from_file)

    def allowed(self) -> set[str]:
        return self.fixed | self._file_peers()

    def check(self, source: str) -> None:
        allowed = self.allowed()
        if not allowed and self.open_when_empty:
            return
        if source not in allowed:
            # the refused address is the caller's own input; the allow-list itself is not revealed
            raise PermissionDenied("source: not an allowed restore peer of this shard (see --restore-peers)")


FORMAT_VERSION = 1  # data chunks are one SQLite store file (shard.sqlite3)
DISK_MARGIN_BYTES = 16 << 20  # left free beyond a snapshot's size


def metric_pb(metric: str) -> common_pb2.Metric.ValueType:
    """The shard's metric name as the protobuf enum (inner product covers cosine on normalised vectors)."""
    return common_pb2.METRIC_INNER_PRODUCT if metric in ("ip", "cosine") else common_pb2.METRIC_L2


@dataclass
class Expected:
    """What a snapshot must match to replace this shard's data."""

    shard: int
    dim: int
    metric: common_pb2.Metric.ValueType
    embedding_model: str  # "" = this shard holds no vectors yet: any model


@dataclass
class Downloaded:
    path: Path
    sequence: int
    documents: int
    size: int


def check_header(header: shard_pb2.SnapshotHeader, want: Expected) -> None:
    """Refuse a snapshot of another shard, dimension, metric, model or format before any byte is kept."""
    if header.format_version != FORMAT_VERSION:
        raise FailedPrecondition(f"snapshot: format version {header.format_version}, this shard reads "
                                 f"{FORMAT_VERSION}")
    if header.shard != want.shard:
        raise FailedPrecondition(f"snapshot: of shard {header.shard}, this is shard {want.shard}")
    if header.dim != want.dim:
        raise FailedPrecondition(f"snapshot: dimension {header.dim}, this shard holds {want.dim}")
    if header.metric != want.metric:
        raise FailedPrecondition(f"snapshot: metric {header.metric}, this shard uses {want.metric} "
                                 "(1 = inner product, 2 = L2)")
    if want.embedding_model and header.embedding_model and header.embedding_model != want.embedding_model:
        raise FailedPrecondition(f"snapshot: vectors of {header.embedding_model!r}, this shard holds "
                                 f"{want.embedding_model!r}")


async def download(source: str, data_dir: Path, want: Expected, security: ClientTls | None,
                   timeout: float) -> Downloaded:
    """Stream ``source``'s Snapshot into a temporary file next to the store and verify it (header, size,
    SHA-256, SQLite integrity). Nothing of the live shard is touched; on failure or cancellation the
    temporary file is removed and the error raised."""
    tmp = Path(data_dir) / (STORE_FILE + ".restore")
    digest = hashlib.sha256()
    header: shard_pb2.SnapshotHeader | None = None
    received = 0
    try:
        async with aio_channel(source, security) as channel:
            with tracing.client_call("ShardService/Snapshot", source=source) as metadata:
                call = shard_pb2_grpc.ShardServiceStub(channel).Snapshot(
                    shard_pb2.SnapshotRequest(), timeout=timeout, metadata=metadata)
                with open(tmp, "wb") as f:
                    async for chunk in call:
                        kind = chunk.WhichOneof("kind")
                        if kind == "header":
                            if header is not None:
                                raise FailedPrecondition("snapshot: a second header")
                            check_header(chunk.header, want)
                            header = chunk.header
                            free = shutil.disk_usage(data_dir).free
                            if free < header.size_bytes + DISK_MARGIN_BYTES:  # refuse before filling the disk
                                raise ResourceExhausted(
                                    f"restore: the snapshot is {header.size_bytes} bytes, {free} are free on the data "
                                    "dir; free disk space first (this replica keeps its own data)")
                        elif header is None:
                            raise FailedPrecondition("snapshot: data before the header")
                        elif kind == "data":
                            received += len(chunk.data)
                            if received > header.size_bytes:
                                raise FailedPrecondition("snapshot: longer than its header announced")
                            digest.update(chunk.data)
                            await asyncio.to_thread(f.write, chunk.data)
                        elif kind == "trailer":
                            if received != header.size_bytes:
                                raise FailedPrecondition(
                                    f"snapshot: truncated ({received} of {header.size_bytes} bytes)")
                            if not hmac.compare_digest(chunk.trailer.sha256, digest.hexdigest()):
                                raise FailedPrecondition("snapshot: SHA-256 mismatch (corrupt or tampered)")
                            await asyncio.to_thread(_fsync, f)
                            await asyncio.to_thread(_check_store, tmp)
                            return Downloaded(tmp, header.sequence, header.documents, received)
        raise FailedPrecondition("snapshot: the stream ended without a trailer (truncated)")
    except grpc.aio.AioRpcError as exc:
        tmp.unlink(missing_ok=True)
        raise Unavailable(f"snapshot from the source failed: {exc.code().name}") from None
    except BaseException:  # including cancellation: nothing is left behind
        tmp.unlink(missing_ok=True)
        raise


def _fsync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


def _check_store(path: Path) -> None:
    """The copy is a whole SQLite database (checked before it may replace anything)."""
    import sqlite3

    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            ok = conn.execute("PRAGMA quick_check").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        ok = None
    if not ok or ok[0] != "ok":
        raise FailedPrecondition("snapshot: not a sound store file")


LIVE_FILES = (STORE_FILE, STORE_FILE + "-wal", STORE_FILE + "-shm", CHECKPOINT_FILE)


def swap_in(data_dir: Path, new_store: Path) -> Path:
    """Move the live files aside (into a fresh ``.restore-old`` folder) and ``new_store`` into place; returns
    the folder so the caller can ``roll_back`` if the new store does not open. The shard must be closed."""
    data_dir = Path(data_dir)
    old = data_dir / ".restore-old"
    if old.exists():
        shutil.rmtree(old)
    old.mkdir()
    for name in LIVE_FILES:
        if (data_dir / name).exists():
            os.replace(data_dir / name, old / name)
    replace_durably(new_store, data_dir / STORE_FILE)
    fsync_dir(old)
    return old


def roll_back(data_dir: Path, old: Path) -> None:
    """Put the files ``swap_in`` moved aside back (the live shard exactly as it was)."""
    data_dir = Path(data_dir)
    for name in LIVE_FILES:
        (data_dir / name).unlink(missing_ok=True)
        if (old / name).exists():
            os.replace(old / name, data_dir / name)
    fsync_dir(data_dir)
    shutil.rmtree(old, ignore_errors=True)


def discard(old: Path) -> None:
    shutil.rmtree(old, ignore_errors=True)
