"""Shard snapshots: a consistent copy of the store streamed in chunks (header, data, SHA-256 trailer). The
receiving side (a Restore, or a new replica started with --restore-from) is shard_server/restore.py."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path

from ragcluster.errors import ResourceExhausted
from ragcluster.v1 import shard_pb2
from shard_server.restore import DISK_MARGIN_BYTES, FORMAT_VERSION, metric_pb
from shard_server.shard import STORE_FILE, Shard, ShardInfo

CHUNK_BYTES = 1 << 20


def snapshot_chunks(shard: Shard) -> Generator[shard_pb2.SnapshotChunk, None, None]:
    """Header, data chunks, trailer. Blocking: run it in a thread.

    Streams the store's own file, frozen by a read transaction (no copy, writes go on meanwhile); only
    when SQLite cannot freeze it right now is a consistent copy made, and refused when the disk is short."""
    info = shard.info()
    with shard.store.frozen_file() as frozen:
        if frozen is not None:
            path, size, sequence = frozen
            yield from _stream(info, path, size, sequence)
            return
    free = shutil.disk_usage(shard.data_dir).free
    needed = shard.store.size_bytes() + DISK_MARGIN_BYTES
    if free < needed:
        raise ResourceExhausted(f"snapshot: a copy of the store needs {needed} bytes, {free} are free on "
                                f"{shard.data_dir}; free disk space or retry when other snapshots finished")
    with tempfile.TemporaryDirectory(dir=shard.data_dir, prefix=".snapshot-") as tmp:
        path = Path(tmp) / STORE_FILE
        sequence = shard.store.backup_to(path)
        yield from _stream(info, path, path.stat().st_size, sequence)


def _stream(info: ShardInfo, path: Path, size: int, sequence: int) -> Iterator[shard_pb2.SnapshotChunk]:
    yield shard_pb2.SnapshotChunk(header=shard_pb2.SnapshotHeader(
        shard=info.shard, sequence=sequence, size_bytes=size, dim=info.dim, index_factory=info.index_factory,
        embedding_model=info.embedding_model, documents=info.stored_documents, metric=metric_pb(info.metric),
        format_version=FORMAT_VERSION,
    ))
    digest = hashlib.sha256()
    left = size
    with open(path, "rb") as f:
        while left > 0 and (chunk := f.read(min(CHUNK_BYTES, left))):
            left -= len(chunk)
            digest.update(chunk)
            yield shard_pb2.SnapshotChunk(data=chunk)
    yield shard_pb2.SnapshotChunk(trailer=shard_pb2.SnapshotTrailer(sha256=digest.hexdigest()))
