"""Disk full on one replica (issue 16): its writes fail with a clear error (RESOURCE_EXHAUSTED "storage
full" on the replica, so the write is not acknowledged under quorum all), nothing acknowledged is lost,
the replica keeps serving, and once space returns anti-entropy brings it level with the other replica.
Real shard processes; the small filesystem is a tmpfs the test mounts (skipped where it cannot)."""

from __future__ import annotations

import subprocess
import time

import grpc
import pytest

from ragcluster.client import RouterClient
from ragcluster.documents import Document
from router.config import RouterConfig
from tests.helpers import RouterInThread, replica_digest, shard_process


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_replica_fails_writes_clearly_and_recovers(tmp_path, small_disk, embedder):
    healthy = shard_process(tmp_path, 0, 0).wait_ready(120)
    full = shard_process(small_disk, 0, 1).wait_ready(120)  # its data dir is on the 4 MB filesystem
    router = RouterInThread(RouterConfig(port=0, metrics_port=-1, timeout_seconds=10.0, anti_entropy_seconds=1.0,
                                         shard=[f"0={healthy.grpc},{full.grpc}"]), embedder)
    acked: set[str] = set()
    try:
        with RouterClient(router.address) as client:
            failure = None
            for n in range(400):  # bounded: 4 MB fill up long before
                batch = [Document(f"f{n}-{i}", f"page {n}.{i} " + "words about rivers " * 400) for i in range(16)]
                try:
                    client.ingest(batch, batch_size=16)
                    acked.update(d.id for d in batch)
                except grpc.RpcError as exc:
                    failure = exc
                    break
            assert failure is not None, "the small filesystem never filled"
            assert failure.code() == grpc.StatusCode.UNAVAILABLE
            details = failure.details() or ""
            assert "RESOURCE_EXHAUSTED" in details and "storage full" in details
            assert acked, "nothing was written before the disk filled"
            for address in (healthy.grpc, full.grpc):  # every acknowledged write is on both replicas
                present = {i for i, (_, _, deleted) in replica_digest(address).items() if not deleted}
                assert acked <= present
            # space returns: the replica is repaired without any client action
            subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)
            deadline = time.monotonic() + 120
            while replica_digest(healthy.grpc) != replica_digest(full.grpc):
                assert time.monotonic() < deadline, "the replica was not repaired after space returned"
                time.sleep(0.2)
            client.ingest([Document("after", "written once space returned")])
            assert "after" in client.lookup(["after"])
    finally:
        router.stop()
        for p in (healthy, full):
            p.terminate(30)
