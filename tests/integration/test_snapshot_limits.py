"""Snapshots (issue 16, item 6): a Snapshot streams the store's own file frozen by a read transaction (no
copy on disk, writes go on meanwhile, the stream is still one consistent state), concurrent snapshots are
bounded (RESOURCE_EXHAUSTED beyond the limit), and a restore onto a disk too small is refused clearly
before anything is written (shard_server/restore.py's download, the one path a Restore and --restore-from
take). Real shard servers in process."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess

import grpc
import numpy as np
import pytest

from ragcluster.convert import document_to_pb
from ragcluster.documents import Document
from ragcluster.errors import ResourceExhausted
from ragcluster.v1 import shard_pb2, shard_pb2_grpc
from shard_server.__main__ import build_server as build_shard
from shard_server.config import ShardConfig
from shard_server.restore import Expected, download, metric_pb
from shard_server.store import DocumentStore

DIM = 32


def batch(start: int, n: int, words: int = 200) -> shard_pb2.UpsertRequest:
    x = np.random.default_rng(start).standard_normal((n, DIM)).astype(np.float32)
    return shard_pb2.UpsertRequest(documents=[
        shard_pb2.DocumentVector(document=document_to_pb(Document(f"d{start + i}", f"text{i} " * words)),
                                 vector=x[i].tolist()) for i in range(n)])


@pytest.fixture
async def shard(tmp_path):
    server = build_shard(ShardConfig(port=0, metrics_port=-1, dim=DIM, checkpoint_interval_seconds=0,
                                     max_concurrent_snapshots=1, data_dir=str(tmp_path / "src")))
    await server.start()
    channel = grpc.aio.insecure_channel(server.address)
    stub = shard_pb2_grpc.ShardServiceStub(channel)
    assert [r.upserted async for r in stub.Upsert(iter([batch(0, 300)]))] == [300]
    yield server, stub, tmp_path
    await channel.close()
    await server.stop(grace=1)


async def test_snapshot_streams_without_a_copy_and_stays_consistent(shard):
    _server, stub, tmp = shard
    stream = stub.Snapshot(shard_pb2.SnapshotRequest(), timeout=60)
    header = (await stream.read()).header
    assert header.documents == 300
    assert not list((tmp / "src").glob(".snapshot-*")), "the snapshot made a copy of the store"
    # writes go on while the stream is open, and are not part of it
    assert [r.upserted async for r in stub.Upsert(iter([batch(300, 200)]))] == [200]
    data, digest = bytearray(), hashlib.sha256()
    for _ in range(100_000):  # bounded: until the end of the stream
        chunk = await stream.read()
        if chunk is grpc.aio.EOF:
            break
        if chunk.WhichOneof("kind") == "data":
            data += chunk.data
            digest.update(chunk.data)
        else:
            assert chunk.trailer.sha256 == digest.hexdigest()
    assert len(data) == header.size_bytes
    copy = tmp / "copy" / "shard.sqlite3"
    copy.parent.mkdir()
    copy.write_bytes(bytes(data))
    store = DocumentStore(copy, DIM)
    assert store.count() == 300 and store.sequence == header.sequence
    store.close()
    info = await stub.Info(shard_pb2.ShardInfoRequest(), timeout=10)
    assert info.stored_documents == 500 and info.sequence == header.sequence + 1


async def test_concurrent_snapshots_are_bounded(shard):
    server, stub, _tmp = shard
    for start in range(1000, 5000, 1000):  # 40 MB: far more than the transport buffers of one stream
        assert [r.upserted async for r in stub.Upsert(iter([batch(start, 1000, 1000)]))] == [1000]
    first = stub.Snapshot(shard_pb2.SnapshotRequest(), timeout=60)
    assert (await first.read()).WhichOneof("kind") == "header"  # the first stream holds its slot
    with pytest.raises(grpc.aio.AioRpcError) as err:
        [c async for c in stub.Snapshot(shard_pb2.SnapshotRequest(), timeout=60)]
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "already streaming" in (err.value.details() or "")
    first.cancel()
    servicer = server.services[0].servicer
    for _ in range(3000):  # bounded: the server sees the cancellation and gives the slot back
        if not servicer._snapshots.locked():
            break
        await asyncio.sleep(0.01)
    again = [c async for c in stub.Snapshot(shard_pb2.SnapshotRequest(), timeout=60)]  # the slot came back
    assert again[-1].WhichOneof("kind") == "trailer"


async def test_restore_onto_a_short_disk_is_refused_before_writing(shard):
    server, _stub, tmp = shard
    small = tmp / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        want = Expected(shard=0, dim=DIM, metric=metric_pb("ip"), embedding_model="")
        with pytest.raises(ResourceExhausted, match="free disk space first"):
            await download(server.address, small, want, None, 60.0)
        assert not list(small.iterdir()), "a partial copy was left behind"
    finally:
        subprocess.run(["umount", str(small)], check=True)
