"""Client-certificate rotation on OUTGOING channels (router → shard/generator, shard → shard): when the files
change (cert-manager renews them in place), new connections present the new certificate and trust the new CA
bundle, without a restart and without failing calls in flight.

- in process: a real mTLS server that answers with the serial of the certificate its caller presented, and the
  router's health watch on the same channel: the new certificate is seen after the swap, a half-written pair
  is not used, and the watch moves to the new channel without ever reporting the backend down;
- real processes: a shard and a router under search load; the router's client certificate is replaced by one
  from a new CA, then the shard stops trusting the old CA and recycles its connections
  (--max-connection-age-seconds): 0 failed or degraded searches, and the shard keeps answering the router
  although it now refuses the old certificate. Without the rotation the router's reconnects fail (its
  channel would keep presenting the old certificate).
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ragcluster.channels import ReloadingChannel, aio_channel, sync_channel
from ragcluster.convert import document_to_pb
from ragcluster.corpus import make_documents
from ragcluster.security import ClientTls, ServerTls, TlsFiles, identity
from ragcluster.tools.certs import create_ca, issue
from ragcluster.tools.cluster import ServerProcess
from ragcluster.v1 import router_pb2, router_pb2_grpc, shard_pb2, shard_pb2_grpc
from router.health import Backend, watch
from tests.helpers import Pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def new_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CA that issues the rotated certificates (the old one is being retired)."""
    directory = tmp_path_factory.mktemp("new-ca")
    create_ca(directory, "ragcluster CA, next generation")
    return directory


def bundle(path: Path, *cas: str | Path) -> str:
    path.write_bytes(b"".join(Path(ca).read_bytes() for ca in cas))
    return str(path)


def serial(pem_path: str | Path) -> int:
    return x509.load_pem_x509_certificate(Path(pem_path).read_bytes()).serial_number


def install(cert: str | Path, key: str | Path, live: TlsFiles) -> None:
    """Replace ``live``'s files in place, as a Secret update does (key first: for a moment they disagree)."""
    shutil.copy(key, live.key)
    shutil.copy(cert, live.cert)


# --- in process ------------------------------------------------------------------------------------

def _peer_serial(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    pem = next(iter(context.auth_context()["x509_pem_cert"]))
    return str(x509.load_pem_x509_certificate(pem).serial_number).encode()


class RecordingBackend(Backend):
    """Counts every time the health watch took the backend out of traffic."""

    def __init__(self, address: str, channel: grpc.aio.Channel) -> None:
        self.downs = 0
        self._serving = False
        super().__init__(address, channel)

    @property
    def serving(self) -> bool:
        return self._serving

    @serving.setter
    def serving(self, value: bool) -> None:
        if self._serving and not value:
            self.downs += 1
        self._serving = value


async def _until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def test_channel_presents_the_rotated_certificate(pki: Pki, new_ca: Path, tmp_path: Path) -> None:
    live = TlsFiles(str(tmp_path / "client.crt"), str(tmp_path / "client.key"),
                    bundle(tmp_path / "ca.pem", pki.ca, new_ca / "ca.crt"))
    install(pki.router.cert, pki.router.key, live)
    rotated = issue(new_ca, tmp_path / "rotated", "router", identity("router"))

    async def scenario() -> None:
        server = grpc.aio.server()
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "test.Peer", {"Serial": grpc.unary_unary_rpc_method_handler(_peer_serial)})])
        server_files = TlsFiles(pki.shard0.cert, pki.shard0.key, live.ca)
        port = server.add_secure_port("127.0.0.1:0", ServerTls(server_files, require_client_auth=True).credentials())
        await server.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        channel = aio_channel(f"127.0.0.1:{port}", ClientTls(live))
        assert isinstance(channel, ReloadingChannel)
        channel.check_seconds, channel.drain_seconds = 0.0, 1.0
        peer = channel.unary_unary("/test.Peer/Serial")
        backend = RecordingBackend("test", channel)
        watcher = asyncio.create_task(watch(backend, "test"))
        try:
            await _until(lambda: backend.serving)
            assert int(await peer(b"", timeout=10)) == serial(pki.router.cert)

            # half way through a rotation (new key, old certificate): the old pair stays in use
            shutil.copy(rotated.key, live.key)
            assert int(await peer(b"", timeout=10)) == serial(pki.router.cert)
            assert channel.generation == 0
            shutil.copy(rotated.cert, live.cert)
            assert int(await peer(b"", timeout=10)) == serial(rotated.cert)
            assert channel.generation == 1

            # the old channel drains and closes; the watch follows to the new one without a "down"
            await asyncio.wait_for(channel.retired(), 30)
            await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
            await _until(lambda: not backend.serving)  # the watch is live on the new channel
            assert backend.downs == 1  # only the one caused on purpose
            await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
            await _until(lambda: backend.serving)
            assert int(await peer(b"", timeout=10)) == serial(rotated.cert)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await channel.close()
            await server.stop(None)

    asyncio.run(scenario())


# --- real processes --------------------------------------------------------------------------------

def test_router_rotates_its_client_certificate_under_load(pki: Pki, new_ca: Path, tmp_path: Path) -> None:
    ca_both = bundle(tmp_path / "both.pem", pki.ca, new_ca / "ca.crt")
    shard_ca = tmp_path / "shard-ca.pem"
    bundle(shard_ca, pki.ca, new_ca / "ca.crt")  # the shard trusts both CAs while the router's cert moves
    live = TlsFiles(str(tmp_path / "router.crt"), str(tmp_path / "router.key"), ca_both)
    install(pki.router.cert, pki.router.key, live)
    rotated = issue(new_ca, tmp_path / "rotated", "router", identity("router"))
    shard = ServerProcess("shard_server", [
        "--port", "0", "--shard-id", "0", "--dim", "384", "--data-dir", str(tmp_path / "s0"),
        "--checkpoint-interval-seconds", "0", "--max-connection-age-seconds", "1",
        *Pki.args(TlsFiles(pki.shard0.cert, pki.shard0.key, str(shard_ca)))], tmp_path, "s0")
    router: ServerProcess | None = None
    try:
        shard.wait_ready(120)
        router = ServerProcess("router", ["--port", "0", "--shard", f"0={shard.grpc}", "--embedding-threads", "1",
                                          *Pki.args(live)], tmp_path, "router")
        router.wait_ready(300)
        client = ClientTls(TlsFiles(ca=ca_both))
        with sync_channel(router.grpc, client) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            docs = [document_to_pb(d) for d in make_documents(20, seed=3, prefix="r")]
            batch = router_pb2.IngestRequest(documents=docs)
            assert sum(r.acknowledged for r in stub.Ingest(iter([batch]), timeout=120)) == 20

        failures: list[str] = []
        ok_after: list[float] = []  # when each successful search ended
        stop = threading.Event()

        def load() -> None:
            with sync_channel(router.grpc, client) as channel:
                stub = router_pb2_grpc.RouterServiceStub(channel)
                deadline = time.monotonic() + 180
                while not stop.is_set() and time.monotonic() < deadline:
                    try:
                        answer = stub.Search(router_pb2.SearchRequest(text="fresh bread", k=3), timeout=30)
                    except grpc.RpcError as exc:
                        failures.append(f"{exc.code().name}: {exc.details()}")
                        continue
                    if answer.coverage.degraded or not answer.hits:
                        failures.append(f"degraded: {answer.coverage}")
                    else:
                        ok_after.append(time.monotonic())

        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            assert _wait(lambda: len(ok_after) > 10, 60), failures[:3]
            install(rotated.cert, rotated.key, live)  # cert-manager renews the router's certificate, from the new CA
            log = Path(router.log)
            # the router logs the swap (an event to wait for, not an assertion: the searches below decide)
            _wait(lambda: "new connections to" in log.read_text(errors="replace"), 30)
            shard_ca.write_bytes((new_ca / "ca.crt").read_bytes())  # the old CA is retired at the shard
            assert _wait(lambda: shard_info(shard.grpc, pki.router) == grpc.StatusCode.UNAVAILABLE, 60), \
                "the shard still accepts the old CA"
            assert shard_info(shard.grpc, TlsFiles(str(rotated.cert), str(rotated.key), ca_both)) == grpc.StatusCode.OK
            retired = time.monotonic()
            # connections older than that are recycled after 1 s: searches keep working past a few ages
            _wait(lambda: failures or sum(t > retired + 5 for t in ok_after) > 20, 60)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert failures == [], f"{len(failures)} failed searches, e.g. {failures[:3]}"
        assert sum(t > retired + 5 for t in ok_after) > 20
        assert shard.proc.poll() is None and router.proc.poll() is None
    finally:
        if router is not None:
            router.terminate()
        shard.terminate()


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def shard_info(address: str, files: TlsFiles) -> grpc.StatusCode:
    with sync_channel(address, ClientTls(files)) as channel:
        try:
            shard_pb2_grpc.ShardServiceStub(channel).Info(shard_pb2.ShardInfoRequest(), timeout=10)
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()
