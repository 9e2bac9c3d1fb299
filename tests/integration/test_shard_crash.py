"""Shard servers as real processes: kill -9 mid-ingest loses nothing acknowledged; snapshots start new
replicas; restart from a checkpoint is fast."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from ragcluster.convert import matrix_to_pb
from ragcluster.tools.cluster import ServerProcess, wait_for_serving
from ragcluster.v1 import common_pb2, shard_pb2, shard_pb2_grpc

DIM = 32


class ShardProcess:
    """A shard server process on ``data_dir`` with a client stub."""

    def __init__(self, data_dir: Path, *args: str):
        self.server = ServerProcess("shard_server", ["--port", "0", "--dim", str(DIM), "--data-dir", str(data_dir),
                                                     *args], data_dir.parent, data_dir.name).wait_ready(120)
        self.address = self.server.grpc
        wait_for_serving(self.address, timeout=30)
        self.channel = grpc.insecure_channel(self.address)
        self.stub = shard_pb2_grpc.ShardServiceStub(self.channel)

    def kill9(self) -> None:
        self.server.kill()
        self.channel.close()

    def stop(self) -> None:
        self.channel.close()
        assert self.server.terminate(60) == 0


def vectors(n, seed):
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def batch(ids, x):
    return shard_pb2.UpsertRequest(documents=[
        shard_pb2.DocumentVector(document=common_pb2.Document(id=i, text=f"text {i}"), vector=v.tolist())
        for i, v in zip(ids, x)])


def check_consistent(stub, acked: dict[str, np.ndarray], unsure: frozenset[str] | set[str] = frozenset()):
    """Every acknowledged document is stored, indexed under the same id, and found by its vector.

    ``unsure``: ids re-sent in batches never acknowledged: their newer version may have been committed."""
    info = stub.Info(shard_pb2.ShardInfoRequest(), timeout=30)
    assert info.documents == info.stored_documents  # index and store agree on the count
    assert info.lexical_documents == info.stored_documents  # so does the lexical index
    stats = stub.TermStats(shard_pb2.TermStatsRequest(texts=["text"]), timeout=30)  # every document says "text"
    assert stats.documents == info.stored_documents and stats.queries[0].document_frequencies == [info.stored_documents]
    ids = list(acked)
    fetched = stub.Fetch(shard_pb2.FetchRequest(ids=ids), timeout=60)
    assert {d.id for d in fetched.documents} == set(ids)  # every acknowledged document survived
    ids = [i for i in ids if i not in unsure]
    x = np.stack([acked[i] for i in ids])
    for start in range(0, len(ids), 500):
        res = stub.Search(shard_pb2.ShardSearchRequest(queries=matrix_to_pb(x[start:start + 500]), k=1,
                                                       include_documents=True), timeout=60)
        assert [res.documents[r.ids[0]].id for r in res.results] == ids[start:start + 500]
    return info


@pytest.mark.slow
@pytest.mark.parametrize("factory", ["Flat", "HNSW16"])
def test_kill9_during_streaming_upserts_loses_nothing_acknowledged(tmp_path, factory):
    data = tmp_path / "shard"
    shard = ShardProcess(data, "--index-factory", factory, "--checkpoint-interval-seconds", "0.3")
    batches: list[dict[str, np.ndarray]] = []  # in send order; response n acknowledges request n
    acked: dict[str, np.ndarray] = {}
    n_acked = 0
    enough = threading.Event()
    errors: list[grpc.RpcError] = []

    def requests():
        for b in range(400):  # bounded; the kill comes long before the end
            ids = [f"b{b}-{i}" for i in range(25)]
            if b % 5 == 4:  # replace earlier documents with new vectors mid-stream
                ids[:5] = [f"b{b - 4}-{i}" for i in range(5)]
            x = vectors(25, b)
            batches.append(dict(zip(ids, x)))
            yield batch(ids, x)

    def client():
        nonlocal n_acked
        try:
            for n, response in enumerate(shard.stub.Upsert(requests(), timeout=120)):
                assert response.upserted == 25
                acked.update(batches[n])
                n_acked = n + 1
                if n_acked == 40:
                    enough.set()
        except grpc.RpcError as exc:
            errors.append(exc)
        finally:
            enough.set()

    thread = threading.Thread(target=client)
    thread.start()
    assert enough.wait(timeout=120)
    shard.kill9()  # while the client is still streaming
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert errors and errors[0].code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert n_acked >= 40
    unsure = {i for b in batches[n_acked:] for i in b}
    print(f"\nkill -9 after {n_acked} acknowledged batches ({len(acked)} documents); "
          f"{len(batches) - n_acked} batches sent unacknowledged")

    restarted = ShardProcess(data, "--index-factory", factory)
    info = check_consistent(restarted.stub, acked, unsure)
    assert info.documents >= len(acked)
    assert info.sequence >= n_acked
    restarted.stop()


def test_snapshot_starts_a_new_replica_that_answers_identically(tmp_path):
    source = ShardProcess(tmp_path / "a", "--index-factory", "HNSW16")
    x = vectors(600, 1)
    ids = [f"s{i}" for i in range(600)]
    list(source.stub.Upsert(iter([batch(ids[i:i + 200], x[i:i + 200]) for i in range(0, 600, 200)]), timeout=60))
    source.stub.Delete(shard_pb2.ShardDeleteRequest(ids=ids[:50]), timeout=30)
    replica = ShardProcess(tmp_path / "b", "--index-factory", "HNSW16", "--restore-from", source.address)
    a = source.stub.Info(shard_pb2.ShardInfoRequest(), timeout=30)
    b = replica.stub.Info(shard_pb2.ShardInfoRequest(), timeout=30)
    expected = (4, 550, 550)
    assert (b.sequence, b.documents, b.stored_documents) == (a.sequence, a.documents, a.stored_documents) == expected
    query = shard_pb2.ShardSearchRequest(queries=matrix_to_pb(x[40:80]), k=5, include_documents=True)
    ra, rb = source.stub.Search(query, timeout=30), replica.stub.Search(query, timeout=30)
    ids_a = [[ra.documents[i].id for i in r.ids] for r in ra.results]
    assert ids_a == [[rb.documents[i].id for i in r.ids] for r in rb.results]
    # restore refuses a data dir that already holds a store: the replica restarts from its own data
    replica.stop()
    again = ShardProcess(tmp_path / "b", "--index-factory", "HNSW16", "--restore-from", "127.0.0.1:1")
    assert again.stub.Info(shard_pb2.ShardInfoRequest(), timeout=30).sequence == 4
    again.stop()
    source.stop()


def test_snapshot_stream_is_self_checking(tmp_path):
    source = ShardProcess(tmp_path / "a")
    list(source.stub.Upsert(iter([batch(["x", "y"], vectors(2, 3))]), timeout=30))
    chunks = list(source.stub.Snapshot(shard_pb2.SnapshotRequest(), timeout=30))
    kinds = [c.WhichOneof("kind") for c in chunks]
    assert kinds[0] == "header" and kinds[-1] == "trailer" and set(kinds[1:-1]) == {"data"}
    import hashlib

    data = b"".join(c.data for c in chunks[1:-1])
    assert len(data) == chunks[0].header.size_bytes and chunks[0].header.sequence == 1
    assert hashlib.sha256(data).hexdigest() == chunks[-1].trailer.sha256
    assert not list((tmp_path / "a").glob(".snapshot-*"))  # the temporary copy is gone
    source.stop()


@pytest.mark.slow
def test_restart_with_100k_vectors_takes_seconds(tmp_path, record_property):
    """Build a 100k x 384 shard, stop it (final checkpoint), restart it and time until SERVING."""
    from ragcluster.documents import Document
    from shard_server.config import ShardOptions
    from shard_server.shard import Shard

    data = tmp_path / "big"
    shard = Shard(ShardOptions(str(data), dim=384))
    rng = np.random.default_rng(0)
    for first in range(0, 100_000, 4000):
        x = rng.standard_normal((4000, 384)).astype(np.float32)
        shard.upsert([Document(f"v{first + i}", "") for i in range(4000)], x)
    shard.close()  # final checkpoint, as a graceful shutdown does
    for label, args in (("checkpoint", ()), ("rebuild", ())):
        if label == "rebuild":
            (data / "index.ckpt").unlink()
        start = time.monotonic()
        proc = ShardProcess(data, "--dim", "384", *args)
        seconds = time.monotonic() - start
        info = proc.stub.Info(shard_pb2.ShardInfoRequest(), timeout=30)
        assert info.documents == 100_000
        record_property(f"restart_{label}_seconds", seconds)
        print(f"\nrestart with 100k x 384 from {label}: {seconds:.1f}s to SERVING")
        proc.stop()
        assert seconds < 60
