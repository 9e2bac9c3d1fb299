"""Restore hardening with real shard processes: only allow-listed peers, only snapshots of the same shard,
dimension and model, only whole and untampered streams; a refused, cancelled or timed-out Restore leaves
the shard exactly as it was (same sequence, documents and store checksum) and serving, and a later Restore
succeeds."""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
import numpy as np
import pytest

from ragcluster.convert import matrix_to_pb
from ragcluster.tools.cluster import ServerProcess, wait_all_ready
from ragcluster.v1 import common_pb2, shard_pb2, shard_pb2_grpc

DIM = 4


def shard(run, name: str, shard_id: int = 0, dim: int = DIM, *args: str) -> ServerProcess:
    return ServerProcess("shard_server", ["--port", "0", "--shard-id", str(shard_id), "--dim", str(dim),
                                          "--data-dir", str(run / name), "--checkpoint-interval-seconds", "0",
                                          "--insecure", *args], run, name)


def stub(address: str) -> shard_pb2_grpc.ShardServiceStub:
    return shard_pb2_grpc.ShardServiceStub(grpc.insecure_channel(address))


def upsert(address: str, prefix: str, n: int, dim: int = DIM, model: str = "model-a") -> None:
    x = np.random.default_rng(len(prefix) + n).standard_normal((n, dim)).astype(np.float32)
    request = shard_pb2.UpsertRequest(embedding_model=model, documents=[
        shard_pb2.DocumentVector(document=common_pb2.Document(id=f"{prefix}-{i}", text=f"text {i}"), vector=v.tolist())
        for i, v in enumerate(x)])
    list(stub(address).Upsert(iter([request]), timeout=30))


def fingerprint(address: str) -> tuple[int, int, str]:
    """(sequence, documents, SHA-256 of the whole store) — equal before and after means unchanged."""
    s = stub(address)
    info = s.Info(shard_pb2.ShardInfoRequest(), timeout=30)
    trailer = [c for c in s.Snapshot(shard_pb2.SnapshotRequest(), timeout=60) if c.WhichOneof("kind") == "trailer"]
    return info.sequence, info.documents, trailer[0].trailer.sha256


class ForgedSource(shard_pb2_grpc.ShardServiceServicer):
    """A peer that serves a real replica's snapshot, altered (``mode``), or stalls half way."""

    def __init__(self, real: str):
        self.real = real
        self.mode = "tamper"
        self.started = threading.Event()
        self.release = threading.Event()

    def Snapshot(self, request, context):
        chunks = list(stub(self.real).Snapshot(shard_pb2.SnapshotRequest(), timeout=60))
        self.started.set()
        for chunk in chunks:
            kind = chunk.WhichOneof("kind")
            if kind == "data" and self.mode == "tamper":
                data = bytearray(chunk.data)
                data[len(data) // 2] ^= 0xFF
                chunk = shard_pb2.SnapshotChunk(data=bytes(data))
            elif kind == "data" and self.mode == "truncate":
                chunk = shard_pb2.SnapshotChunk(data=chunk.data[: len(chunk.data) // 2])
            elif kind == "data" and self.mode == "stall":
                yield shard_pb2.SnapshotChunk(data=chunk.data[:100])
                self.release.wait(60)  # half way: until the test lets go (bounded)
                return
            elif kind == "trailer" and self.mode == "no-trailer":
                return
            elif kind == "header" and self.mode == "old-format":
                chunk.header.format_version = 0
            yield chunk


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    run = tmp_path_factory.mktemp("restore")
    source = shard(run, "source")
    other_shard = shard(run, "other-shard", 1)
    other_dim = shard(run, "other-dim", 0, 8)
    other_model = shard(run, "other-model")
    procs = [source, other_shard, other_dim, other_model]
    wait_all_ready(procs, 180)
    upsert(source.grpc, "src", 60)
    upsert(other_shard.grpc, "s1", 10)
    upsert(other_dim.grpc, "d8", 10, dim=8)
    upsert(other_model.grpc, "om", 10, model="model-b")

    forged = ForgedSource(source.grpc)  # type: ignore[abstract]  # only Snapshot is served
    server = grpc.server(futures.ThreadPoolExecutor(4))
    shard_pb2_grpc.add_ShardServiceServicer_to_server(forged, server)
    forged_address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()

    peers = run / "peers.txt"  # the allow-list: re-read by the shard when it changes
    peers.write_text("".join(a + "\n" for a in (source.grpc, other_shard.grpc, other_dim.grpc, other_model.grpc,
                                                 forged_address)))
    target = shard(run, "target", 0, DIM, "--restore-peers-file", str(peers)).wait_ready(180)
    upsert(target.grpc, "tgt", 25)
    procs.append(target)
    yield {"target": target.grpc, "source": source.grpc, "other_shard": other_shard.grpc,
           "other_dim": other_dim.grpc, "other_model": other_model.grpc, "forged": forged, "forged_address":
           forged_address, "peers": peers, "run": run}
    forged.release.set()
    server.stop(0)
    for p in procs:
        p.terminate()


def restore(target: str, source: str, timeout: float = 60) -> shard_pb2.RestoreResponse:
    return stub(target).Restore(shard_pb2.RestoreRequest(source=source), timeout=timeout)


def assert_refused_and_unchanged(replicas, source: str, code: grpc.StatusCode, words: str) -> None:
    before = fingerprint(replicas["target"])
    with pytest.raises(grpc.RpcError) as err:
        restore(replicas["target"], source)
    assert err.value.code() == code, err.value.details()
    assert words in (err.value.details() or "")
    assert fingerprint(replicas["target"]) == before
    assert not list((replicas["run"] / "target").glob("*.restore"))  # no temporary copy left behind


def test_refuses_a_source_not_on_the_allow_list(replicas):
    outsider = shard(replicas["run"], "outsider").wait_ready(180)
    try:
        upsert(outsider.grpc, "out", 5)
        assert_refused_and_unchanged(replicas, outsider.grpc, grpc.StatusCode.PERMISSION_DENIED, "not an allowed")
    finally:
        outsider.terminate()


@pytest.mark.parametrize("which,words", [("other_shard", "of shard 1"), ("other_dim", "dimension 8"),
                                         ("other_model", "'model-b'")])
def test_refuses_a_snapshot_of_another_shard_dimension_or_model(replicas, which, words):
    assert_refused_and_unchanged(replicas, replicas[which], grpc.StatusCode.FAILED_PRECONDITION, words)


@pytest.mark.parametrize("mode,words", [("tamper", "SHA-256"), ("truncate", "truncated"),
                                        ("no-trailer", "without a trailer"), ("old-format", "format version")])
def test_refuses_a_damaged_stream(replicas, mode, words):
    replicas["forged"].mode = mode
    assert_refused_and_unchanged(replicas, replicas["forged_address"], grpc.StatusCode.FAILED_PRECONDITION, words)


@pytest.mark.parametrize("how", ["client-cancel", "deadline"])
def test_cancelled_restore_leaves_the_shard_as_it_was_then_a_restore_succeeds(replicas, how):
    target, forged = replicas["target"], replicas["forged"]
    upsert(target, f"again-{how}", 3)  # distinct content per case (the previous case may have restored it)
    before = fingerprint(target)
    forged.mode, forged.started, forged.release = "stall", threading.Event(), threading.Event()
    call = stub(target).Restore.future(shard_pb2.RestoreRequest(source=replicas["forged_address"]),
                                       timeout=3 if how == "deadline" else 60)
    assert forged.started.wait(60)  # the copy is under way, half a chunk received
    if how == "client-cancel":
        call.cancel()
    with pytest.raises((grpc.RpcError, grpc.FutureCancelledError)) as err:
        call.result(60)
    if how == "deadline":
        assert isinstance(err.value, grpc.RpcError) and err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    forged.release.set()
    # serving throughout and afterwards, with exactly the data it had
    s = stub(target)
    s.Search(shard_pb2.ShardSearchRequest(queries=matrix_to_pb(np.ones((1, DIM), np.float32)), k=3), timeout=30)
    assert fingerprint(target) == before
    # a second Restore, from the real replica, then succeeds
    done = restore(target, replicas["source"])
    assert fingerprint(target)[:2] == fingerprint(replicas["source"])[:2]
    assert done.documents == 60
