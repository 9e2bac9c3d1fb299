"""mTLS between the tiers (real processes): who may call shards and generators, refused plaintext, a server
that will not bind a public address without TLS, and certificate rotation under load without a restart."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2

from ragcluster.channels import health_stub, sync_channel
from ragcluster.security import ClientTls, TlsFiles, identity
from ragcluster.tools.certs import issue
from ragcluster.tools.cluster import ServerProcess, generator_env
from ragcluster.v1 import generator_pb2, generator_pb2_grpc, shard_pb2, shard_pb2_grpc
from tests.helpers import Pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def shard_and_files(pki, tmp_path_factory):
    run = tmp_path_factory.mktemp("shard")
    # the shard's files are copies, so the rotation test can replace them
    for ext in ("crt", "key"):
        shutil.copy(pki.dir / f"shard-0.{ext}", run / f"live.{ext}")
    live = TlsFiles(str(run / "live.crt"), str(run / "live.key"), pki.ca)
    proc = ServerProcess("shard_server", ["--port", "0", "--shard-id", "0", "--dim", "4", "--data-dir", str(run / "d"),
                                          "--checkpoint-interval-seconds", "0", *Pki.args(live)], run, "s0")
    proc.wait_ready(120)
    yield proc, live
    proc.terminate()


def shard_info(address: str, files: TlsFiles | None, timeout: float = 10) -> grpc.StatusCode:
    security = ClientTls(files) if files is not None else None
    with sync_channel(address, security) as channel:
        try:
            shard_pb2_grpc.ShardServiceStub(channel).Info(shard_pb2.ShardInfoRequest(), timeout=timeout)
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()


def test_shard_accepts_only_the_router_identity_over_mtls(pki, shard_and_files):
    shard, _ = shard_and_files
    assert shard_info(shard.grpc, pki.router) == grpc.StatusCode.OK
    assert shard_info(shard.grpc, None) == grpc.StatusCode.UNAVAILABLE  # plaintext: no handshake
    assert shard_info(shard.grpc, TlsFiles(ca=pki.ca)) == grpc.StatusCode.UNAVAILABLE  # no client certificate
    assert shard_info(shard.grpc, pki.foreign) == grpc.StatusCode.UNAVAILABLE  # another CA
    assert shard_info(shard.grpc, pki.expired) == grpc.StatusCode.UNAVAILABLE  # expired
    assert shard_info(shard.grpc, pki.stranger) == grpc.StatusCode.PERMISSION_DENIED  # valid cert, wrong identity
    assert shard_info(shard.grpc, pki.shard1) == grpc.StatusCode.PERMISSION_DENIED  # another shard
    # the other replicas of shard 0 may copy it (Snapshot), nothing else
    with sync_channel(shard.grpc, ClientTls(pki.shard0)) as channel:
        stub = shard_pb2_grpc.ShardServiceStub(channel)
        chunks = list(stub.Snapshot(shard_pb2.SnapshotRequest(), timeout=30))
        assert chunks[0].WhichOneof("kind") == "header"
        with pytest.raises(grpc.RpcError) as err:
            stub.Delete(shard_pb2.ShardDeleteRequest(ids=["x"]), timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with sync_channel(shard.grpc, ClientTls(pki.shard1)) as channel:
        with pytest.raises(grpc.RpcError) as err:
            list(shard_pb2_grpc.ShardServiceStub(channel).Snapshot(shard_pb2.SnapshotRequest(), timeout=30))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # health stays open to any certificate of the CA (probes)
    with sync_channel(shard.grpc, ClientTls(pki.stranger)) as channel:
        check = health_stub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert check.status == health_pb2.HealthCheckResponse.SERVING


def test_public_address_without_tls_is_refused(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "shard_server", "--host", "0.0.0.0", "--port", "0", "--metrics-port", "-1",
         "--data-dir", str(tmp_path / "d")], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "refusing to serve plaintext on 0.0.0.0" in result.stderr and "--insecure" in result.stderr


def served_serial(address: str, client: TlsFiles) -> int:
    """The serial number of the certificate a new TLS connection to ``address`` is shown."""
    host, port = address.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=client.ca)
    ctx.load_cert_chain(client.cert, client.key)
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_certificate_rotation_under_load(pki, shard_and_files, tmp_path):
    shard, live = shard_and_files
    before = served_serial(shard.grpc, pki.router)
    failures: list[str] = []
    calls = [0]
    stop = threading.Event()

    def load(new_channels: bool) -> None:
        channel = sync_channel(shard.grpc, ClientTls(pki.router))
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            if new_channels:  # a fresh connection (handshake) per call: sees the swap
                channel.close()
                channel = sync_channel(shard.grpc, ClientTls(pki.router))
            try:
                shard_pb2_grpc.ShardServiceStub(channel).Info(shard_pb2.ShardInfoRequest(), timeout=10)
                calls[0] += 1
            except grpc.RpcError as exc:
                failures.append(exc.code().name)
        channel.close()

    threads = [threading.Thread(target=load, args=(n % 2 == 0,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)  # load running on the old certificate
        fresh = issue(pki.dir, tmp_path, "rotated", identity("shard", 0))
        # as cert-manager does: the new files replace the old ones in place
        shutil.copy(fresh.key, live.key)
        shutil.copy(fresh.cert, live.cert)
        want = x509.load_pem_x509_certificate(Path(fresh.cert).read_bytes()).serial_number
        deadline = time.monotonic() + 30
        while served_serial(shard.grpc, pki.router) != want:
            assert time.monotonic() < deadline, "the new certificate was never served"
            time.sleep(0.2)
        time.sleep(1.0)  # load keeps running on the new certificate
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert want != before
    assert failures == []
    assert calls[0] > 20


@pytest.mark.vllm
def test_generator_accepts_only_the_router(pki, tmp_path):
    node = ServerProcess("generator_node", ["--port", "0", "--model", "tiny", "--enforce-eager",
                                            "--kv-cache-memory-bytes", str(64 << 20), "--max-model-len", "512",
                                            *Pki.args(pki.generator)], tmp_path, "gen", env=generator_env())
    try:
        node.wait_ready(300)

        def info(files: TlsFiles | None) -> grpc.StatusCode:
            with sync_channel(node.grpc, ClientTls(files) if files else None) as channel:
                try:
                    generator_pb2_grpc.GeneratorServiceStub(channel).Info(generator_pb2.GeneratorInfoRequest(),
                                                                           timeout=10)
                    return grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    return exc.code()

        assert info(pki.router) == grpc.StatusCode.OK
        assert info(None) == grpc.StatusCode.UNAVAILABLE
        assert info(TlsFiles(ca=pki.ca)) == grpc.StatusCode.UNAVAILABLE
        assert info(pki.foreign) == grpc.StatusCode.UNAVAILABLE
        assert info(pki.expired) == grpc.StatusCode.UNAVAILABLE
        assert info(pki.stranger) == grpc.StatusCode.PERMISSION_DENIED
        assert info(pki.shard0) == grpc.StatusCode.PERMISSION_DENIED
    finally:
        node.terminate()


def test_health_port_answers_probes_in_plaintext(pki, tmp_path):
    """--health-port: the kubelet's grpc probe speaks no TLS; the health service alone answers it in plaintext,
    while the TLS port still refuses plaintext."""
    import asyncio

    from ragcluster.config import ServerConfig
    from ragcluster.serving import GrpcServer

    async def scenario() -> None:
        config = ServerConfig(port=0, metrics_port=-1, health_port=0, tls_cert=pki.shard0.cert,
                              tls_key=pki.shard0.key, tls_ca=pki.ca)
        server = GrpcServer(config, [])
        await server.start()
        try:
            assert server.health_port not in (0, server.port)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.health_port}") as channel:
                check = await health_stub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert check.status == health_pb2.HealthCheckResponse.SERVING
                await server.set_serving(False)
                check = await health_stub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
                with pytest.raises(grpc.aio.AioRpcError) as err:  # nothing but health on that port
                    await shard_pb2_grpc.ShardServiceStub(channel).Info(shard_pb2.ShardInfoRequest(), timeout=10)
                assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
            async with grpc.aio.insecure_channel(server.address) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await health_stub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await server.stop(0)

    asyncio.run(scenario())
