"""Shard snapshots: a consistent copy of the store streamed in chunks, and the client that starts a new
replica from one. The receiving side writes to a temporary file, checks size and SHA-256, then renames
it into place, so a broken transfer never leaves a half store behind."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path

import grpc

from ragcluster.channels import channel_options
from ragcluster.errors import ResourceExhausted, Unavailable
from ragcluster.fsutil import replace_durably
from ragcluster.v1 import shard_pb2, shard_pb2_grpc
from shard_server.restore import FORMAT_VERSION, metric_pb
from shard_server.shard import CHECKPOINT_FILE, STORE_FILE, Shard, ShardInfo

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
DISK_MARGIN_BYTES = 16 << 20  # left free beyond a snapshot's size


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


def restore_from(address: str, data_dir: Path, timeout: float = 600.0, replace: bool = False) -> int:
    """Copy a peer's store into ``data_dir``; returns the sequence copied. (A plain blocking copy; the shard
    server itself restores through shard_server/restore.py: allow-list, header checks, cancel-safe.)

    Without ``replace`` the data dir must not hold a store. With it, the current store and index
    checkpoint are replaced only once the copy is complete and verified (the shard must be closed)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    target = data_dir / STORE_FILE
    if target.exists() and not replace:
        raise FileExistsError(f"{target} exists; restore only starts empty replicas")
    tmp = data_dir / (STORE_FILE + ".restore")
    header = None
    digest = hashlib.sha256()
    received = 0
    try:
        with grpc.insecure_channel(address, options=channel_options()) as channel, open(tmp, "wb") as f:
            stub = shard_pb2_grpc.ShardServiceStub(channel)
            for chunk in stub.Snapshot(shard_pb2.SnapshotRequest(), timeout=timeout):
                kind = chunk.WhichOneof("kind")
                if kind == "header":
                    header = chunk.header
                    free = shutil.disk_usage(data_dir).free
                    if free < header.size_bytes + DISK_MARGIN_BYTES:  # refuse before filling the disk
                        raise ResourceExhausted(
                            f"restore: the snapshot from {address} is {header.size_bytes} bytes, {free} are free "
                            f"on {data_dir}; free disk space first (this replica keeps its own data)")
                elif kind == "data":
                    f.write(chunk.data)
                    digest.update(chunk.data)
                    received += len(chunk.data)
                elif kind == "trailer":
                    if header is None or received != header.size_bytes or chunk.trailer.sha256 != digest.hexdigest():
                        raise Unavailable(f"snapshot from {address} is incomplete or corrupt")
                    f.flush()
                    os.fsync(f.fileno())
                    for stale in (CHECKPOINT_FILE, STORE_FILE + "-wal", STORE_FILE + "-shm"):
                        (data_dir / stale).unlink(missing_ok=True)
                    replace_durably(tmp, target)
                    logger.info("restored %d bytes (sequence %d, %d documents) from %s", received,
                                header.sequence, header.documents, address)
                    return header.sequence
        raise Unavailable(f"snapshot stream from {address} ended without a trailer")
    except grpc.RpcError as exc:
        raise Unavailable(f"snapshot from {address} failed: {exc.code().name}: {exc.details()}") from exc
    finally:
        tmp.unlink(missing_ok=True)
