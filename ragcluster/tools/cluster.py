"""A local cluster as separate processes: N shards x R replicas, G generator nodes, one router.

Each process is started with ``--port 0 --metrics-port 0 --ready-file F`` and reports its bound
addresses through F once SERVING, so there are no port races. ``DIR/cluster.json`` records every
process (role, shard, replica, grpc, metrics, pid). Reopening the same data dir reuses the shard data
(the shard count must match: documents are placed by a hash of their id modulo the shard count).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2

from ragcluster.channels import health_stub, sync_channel
from ragcluster.fsutil import atomic_write
from ragcluster.security import ClientTls, TlsFiles, identity

if TYPE_CHECKING:
    from ragcluster.tools.certs import LocalCerts

logger = logging.getLogger(__name__)


@dataclass
class Member:
    role: str  # shard | generator | router
    shard: int | None
    replica: int | None
    grpc: str = ""
    metrics: str = ""
    pid: int = 0
    log: str = ""


@dataclass
class ClusterSpec:
    data_dir: str
    shards: int = 2
    replicas: int = 1
    generators: int = 1
    model: str = "tiny"
    index_factory: str = "Flat"
    metric: str = "ip"
    host: str = "127.0.0.1"
    port: int = 50051
    max_model_len: int = 2048
    kv_cache_bytes: int = 256 * 1024 * 1024
    generator_args: list[str] = field(default_factory=list)
    router_args: list[str] = field(default_factory=list)
    embedding_model: str = "all-MiniLM-L6-v2"
    insecure: bool = False  # no TLS, no API keys (secure by default: DATA_DIR/certs is created on first start)


class ClusterError(RuntimeError):
    pass


def generator_env() -> dict[str, str]:
    """Environment for CPU vLLM engines sharing a small machine with the other processes: OpenMP threads
    that sleep when idle (OMP_WAIT_POLICY=PASSIVE). Spinning ones starved the router beside them for the
    length of a generation (a client's cancel reached it only after the engine had finished: 3 of 48
    cancels in a stress run, 0 of 48 passive), and passive is no slower: 800 tokens of the tiny model in
    2.95-3.21 s against 3.37-5.24 s spinning."""
    env = dict(os.environ)
    env.setdefault("VLLM_HOST_IP", "127.0.0.1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def cores() -> int:
    """CPU cores this process (and the cluster it starts) may run on."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - not Linux
        return max(os.cpu_count() or 1, 1)


def shard_env(shard_processes: int) -> dict[str, str]:
    """Environment for shard servers: FAISS's OpenMP threads split the cores between the shard processes
    (a shard searches one batch at a time; more threads than its share only contend with the others), and
    idle threads sleep instead of spinning."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores() // max(shard_processes, 1))))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def router_env() -> dict[str, str]:
    """Environment for the router: every core for embedding (it is the router's heavy work), with idle
    threads sleeping (OMP_WAIT_POLICY=PASSIVE; ONNX Runtime without spinning), so engines and shards on the
    same machine get the cores whenever the router is not encoding."""
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


class ServerProcess:
    """One server as a child process (``python -m MODULE --ready-file F ...``), started and waited for."""

    def __init__(self, module: str, args: list[str], run_dir: Path, name: str, env: dict | None = None,
                 host: str = "127.0.0.1"):
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.ready_file = run_dir / f"{name}.json"
        self.ready_file.unlink(missing_ok=True)
        self.log = run_dir / f"{name}.log"
        self.grpc = self.metrics = ""
        with open(self.log, "ab") as log:
            cmd = [sys.executable, "-m", module, "--ready-file", str(self.ready_file), "--host", host,
                   "--metrics-port", "0", *args]
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env or dict(os.environ),
                                         start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll_ready(self) -> bool:
        """True once the ready file exists (the server is SERVING); raises if the process died."""
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise ClusterError(f"{self.name} (pid {self.proc.pid}) exited with {self.proc.returncode}:\n{tail}")
        if not self.ready_file.exists():
            return False
        data = json.loads(self.ready_file.read_text())
        self.grpc, self.metrics = data["grpc"], data["metrics"]
        return True

    def wait_ready(self, timeout: float = 300.0) -> ServerProcess:
        wait_all_ready([self], timeout)
        return self

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful), SIGKILL after ``timeout``; returns the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.warning("%s (pid %d) did not stop in %.0fs; killing", self.name, self.proc.pid, timeout)
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the process group (the server and any children, e.g. vLLM's engine core)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def wait_all_ready(processes: list[ServerProcess], timeout: float,
                   progress: Callable[[ServerProcess], None] | None = None) -> None:
    deadline = time.monotonic() + timeout
    pending = list(processes)
    while pending:
        for p in list(pending):
            if p.poll_ready():
                pending.remove(p)
                if progress:
                    progress(p)
        if pending:
            if time.monotonic() > deadline:
                raise ClusterError(f"not ready after {timeout:.0f}s: {', '.join(p.name for p in pending)}")
            time.sleep(0.05)  # waiting on the ready files (an event), bounded by the deadline


class LocalCluster:
    def __init__(self, spec: ClusterSpec):
        self.spec = spec
        self.dir = Path(spec.data_dir).resolve()
        self.members: list[Member] = []
        self._procs: list[ServerProcess] = []
        self.certs: LocalCerts | None = None  # once started securely

    # --- security -------------------------------------------------------------------------------
    def _tls_args(self, name: str, uri: str) -> list[str]:
        """Flags giving process ``name`` its own certificate (issued on first start), the CA, mTLS."""
        if self.spec.insecure or self.certs is None:
            return ["--insecure"]
        pair = self.certs.ensure(name, uri, _cert_hosts(self.spec.host))
        return ["--tls-cert", str(pair.cert), "--tls-key", str(pair.key), "--tls-ca", str(self.certs.ca)]

    def client_tls(self, token: bool = True, cert: bool = False) -> ClientTls | None:
        """How a client reaches this cluster: TLS with the local CA and the admin API key (None when insecure).
        ``cert``: also present the local client certificate (health checks against mTLS shards)."""
        if self.spec.insecure or self.certs is None:
            return None
        pair = self.certs.pair("client")
        files = TlsFiles(str(pair.cert), str(pair.key), str(self.certs.ca)) if cert else TlsFiles(ca=str(self.certs.ca))
        return ClientTls(files, token=self.certs.admin_token.read_text().strip() if token else "")

    def _peers_file(self, shard: int) -> Path:
        return self.dir / "run" / f"shard-{shard}-peers.txt"

    def _write_peer_files(self) -> None:
        """Each shard may Restore only from its own replicas: their addresses, once known (ports are 0)."""
        for s in range(self.spec.shards):
            addrs = [m.grpc for m in self.members if m.role == "shard" and m.shard == s]
            atomic_write(self._peers_file(s), "".join(a + "\n" for a in addrs))

    # --- layout ---------------------------------------------------------------------------------
    def _check_layout(self) -> None:
        layout = self.dir / "layout.json"
        wanted = {"shards": self.spec.shards, "metric": self.spec.metric}
        if layout.exists():
            have = json.loads(layout.read_text())
            if have.get("shards") != self.spec.shards:
                raise ClusterError(
                    f"{self.dir} holds a {have.get('shards')}-shard cluster; documents are placed by hashing their "
                    f"id over the shard count, so it must be reopened with --shards {have.get('shards')}"
                )
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            layout.write_text(json.dumps(wanted))

    @property
    def router_address(self) -> str:
        return next(m.grpc for m in self.members if m.role == "router")

    # --- start / stop ---------------------------------------------------------------------------
    def _spawn(self, member: Member, module: str, args: list[str], env: dict | None = None) -> ServerProcess:
        name = member.role + (f"-{member.shard}" if member.shard is not None else "") + (
            f"-r{member.replica}" if member.replica is not None else "")
        process = ServerProcess(module, args, self.dir / "run", name, env, host=self.spec.host)
        member.pid, member.log = process.pid, str(process.log)
        self.members.append(member)
        self._procs.append(process)
        return process

    def _wait_ready(self, processes: list[ServerProcess], timeout: float,
                    progress: Callable[[Member], None] | None = None) -> None:
        by_process = {id(p): m for m, p in zip(self.members, self._procs)}

        def ready(p: ServerProcess) -> None:
            member = by_process[id(p)]
            member.grpc, member.metrics = p.grpc, p.metrics
            if progress:
                progress(member)

        wait_all_ready(processes, timeout, ready)

    def start(self, timeout: float = 600.0, progress: Callable[[Member], None] | None = None) -> LocalCluster:
        spec = self.spec
        self._check_layout()
        if not spec.insecure:
            from ragcluster.tools.certs import ensure_local_certs

            self.certs = ensure_local_certs(self.dir, _cert_hosts(spec.host))
        (self.dir / "run").mkdir(parents=True, exist_ok=True)
        for s in range(spec.shards):
            self._peers_file(s).unlink(missing_ok=True)  # addresses of an earlier run are stale
        try:
            waiting = []
            for s in range(spec.shards):
                for r in range(spec.replicas):
                    data = self.dir / f"shard-{s}" / f"replica-{r}"
                    waiting.append(self._spawn(Member("shard", s, r), "shard_server", [
                        "--port", "0", "--shard-id", str(s), "--data-dir", str(data),
                        "--index-factory", spec.index_factory, "--metric", spec.metric,
                        "--embedding-model", spec.embedding_model, "--restore-peers-file", str(self._peers_file(s)),
                        *self._tls_args(f"shard-{s}-r{r}", identity("shard", s)),
                    ], env=shard_env(spec.shards * spec.replicas)))
            for g in range(spec.generators):
                waiting.append(self._spawn(Member("generator", None, g), "generator_node", [
                    "--port", "0", "--model", spec.model, "--enforce-eager",
                    "--max-model-len", str(spec.max_model_len), "--kv-cache-memory-bytes", str(spec.kv_cache_bytes),
                    *self._tls_args(f"generator-{g}", identity("generator")), *spec.generator_args,
                ], env=generator_env()))
            self._wait_ready(waiting, timeout, progress)
            self._write_peer_files()
            router_args = ["--port", str(spec.port), "--embedding-model", spec.embedding_model,
                           *self._tls_args("router", identity("router"))]
            if self.certs is not None:
                router_args += ["--auth-tokens", str(self.certs.tokens)]
            for s in range(spec.shards):
                addrs = ",".join(m.grpc for m in self.members if m.role == "shard" and m.shard == s)
                router_args += ["--shard", f"{s}={addrs}"]
            for m in self.members:
                if m.role == "generator":
                    router_args += ["--generator", m.grpc]
            # no embedding-thread pin beside vLLM engines: the router's threads sleep when idle (router_env), so
            # they no longer spin against the engines' threads (that made encodes 10x slower with one pinned)
            router = self._spawn(Member("router", None, None), "router", router_args + spec.router_args,
                                 env=router_env())
            self._wait_ready([router], timeout, progress)
            health_tls = self.client_tls(token=False, cert=True)
            for m in self.members:
                wait_for_serving(m.grpc, timeout=30, security=health_tls)
            self._write_manifest()
        except BaseException:
            self.stop()
            raise
        return self

    def _write_manifest(self) -> None:
        data = {"router": self.router_address, "data_dir": str(self.dir), "spec": asdict(self.spec),
                "certs": str(self.certs.dir) if self.certs else "",
                "processes": [asdict(m) for m in self.members]}
        atomic_write(self.dir / "cluster.json", json.dumps(data, indent=2))
        # Prometheus file_sd targets (deploy/prometheus/prometheus.yml reads this file)
        targets = [{"targets": [m.metrics], "labels": {"role": m.role, "shard": "" if m.shard is None else str(m.shard),
                                                         "replica": "" if m.replica is None else str(m.replica)}}
                   for m in self.members if m.metrics]
        atomic_write(self.dir / "prometheus-targets.json", json.dumps(targets, indent=2))

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the router first (it drains), then generators, then shards; SIGKILL what outlives ``timeout``."""
        for group in ("router", "generator", "shard"):
            for member, process in zip(self.members, self._procs):
                if member.role == group:
                    process.terminate(timeout)
        self._procs.clear()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _cert_hosts(host: str) -> list[str]:
    """Names a local cluster's certificates are valid for: loopback, plus the bind address if it is another."""
    hosts = ["127.0.0.1", "localhost", "::1"]
    if host not in hosts and host not in ("0.0.0.0", "::"):
        hosts.append(host)
    return hosts


def wait_for_serving(address: str, timeout: float = 30.0, service: str = "", security: ClientTls | None = None) -> None:
    """Block until ``address`` reports SERVING on grpc.health.v1 (Watch: no polling), or raise."""
    with sync_channel(address, security) as channel:
        stub = health_stub(channel)
        try:
            for response in stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=timeout):
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError as exc:
            raise ClusterError(f"{address} not SERVING within {timeout:.0f}s: {exc.code().name}") from exc
    raise ClusterError(f"{address}: health watch ended before SERVING")
