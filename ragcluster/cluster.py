"""A local cluster as separate processes: N shards x R replicas, G generator nodes, one router.

Each process is started with ``--port 0 --metrics-port 0 --ready-file F`` and reports its bound
addresses through F once SERVING, so there are no port races. ``DIR/cluster.json`` records every
process (role, shard, replica, grpc, metrics, pid). Reopening the same data dir reuses the shard data
(the shard count must match: documents are placed by a hash of their id modulo the shard count).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

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


class ClusterError(RuntimeError):
    pass


def generator_env() -> dict[str, str]:
    """Environment for CPU vLLM engines sharing a small machine with the other processes."""
    env = dict(os.environ)
    env.setdefault("VLLM_HOST_IP", "127.0.0.1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


class LocalCluster:
    def __init__(self, spec: ClusterSpec):
        self.spec = spec
        self.dir = Path(spec.data_dir).resolve()
        self.members: list[Member] = []
        self._procs: list[subprocess.Popen] = []

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
    def _spawn(self, member: Member, module: str, args: list[str], env: dict | None = None) -> tuple:
        run = self.dir / "run"
        logs = self.dir / "logs"
        run.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        name = member.role + (f"-{member.shard}" if member.shard is not None else "") + (
            f"-r{member.replica}" if member.replica is not None else "")
        ready = run / f"{name}.json"
        ready.unlink(missing_ok=True)
        log_path = logs / f"{name}.log"
        member.log = str(log_path)
        log = open(log_path, "ab")
        cmd = [sys.executable, "-m", module, "--ready-file", str(ready), "--host", self.spec.host,
               "--metrics-port", "0", *args]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env or dict(os.environ),
                                start_new_session=True)
        log.close()
        member.pid = proc.pid
        self._procs.append(proc)
        self.members.append(member)
        return member, proc, ready

    def _wait_ready(self, pending: list[tuple], timeout: float, progress=None) -> None:
        deadline = time.monotonic() + timeout
        pending = list(pending)
        while pending:
            for item in list(pending):
                member, proc, ready = item
                if proc.poll() is not None:
                    tail = Path(member.log).read_text(errors="replace")[-3000:]
                    raise ClusterError(f"{member.role} (pid {proc.pid}) exited with {proc.returncode}:\n{tail}")
                if ready.exists():
                    data = json.loads(ready.read_text())
                    member.grpc, member.metrics = data["grpc"], data["metrics"]
                    pending.remove(item)
                    if progress:
                        progress(member)
            if pending:
                if time.monotonic() > deadline:
                    names = ", ".join(m.role for m, _, _ in pending)
                    raise ClusterError(f"not ready after {timeout:.0f}s: {names} (see {self.dir / 'logs'})")
                time.sleep(0.05)  # waiting on the ready files (an event), bounded by the deadline

    def start(self, timeout: float = 600.0, progress=None) -> "LocalCluster":
        spec = self.spec
        self._check_layout()
        try:
            waiting = []
            for s in range(spec.shards):
                for r in range(spec.replicas):
                    waiting.append(self._spawn(Member("shard", s, r), "shard_server", [
                        "--port", "0", "--shard-id", str(s), "--data-dir", str(self.dir / f"shard-{s}" / f"replica-{r}"),
                        "--index-factory", spec.index_factory, "--metric", spec.metric,
                        "--embedding-model", spec.embedding_model,
                    ]))
            for g in range(spec.generators):
                waiting.append(self._spawn(Member("generator", None, g), "generator_node", [
                    "--port", "0", "--model", spec.model, "--enforce-eager",
                    "--max-model-len", str(spec.max_model_len), "--kv-cache-memory-bytes", str(spec.kv_cache_bytes),
                    *spec.generator_args,
                ], env=generator_env()))
            self._wait_ready(waiting, timeout, progress)
            router_args = ["--port", str(spec.port), "--embedding-model", spec.embedding_model]
            for s in range(spec.shards):
                addrs = ",".join(m.grpc for m in self.members if m.role == "shard" and m.shard == s)
                router_args += ["--shard", f"{s}={addrs}"]
            for m in self.members:
                if m.role == "generator":
                    router_args += ["--generator", m.grpc]
            router = self._spawn(Member("router", None, None), "router", router_args + spec.router_args)
            self._wait_ready([router], timeout, progress)
            for m in self.members:
                wait_for_serving(m.grpc, timeout=30)
            self._write_manifest()
        except BaseException:
            self.stop()
            raise
        return self

    def _write_manifest(self) -> None:
        data = {"router": self.router_address, "data_dir": str(self.dir), "spec": asdict(self.spec),
                "processes": [asdict(m) for m in self.members]}
        _atomic_write(self.dir / "cluster.json", json.dumps(data, indent=2))
        # Prometheus file_sd targets (deploy/prometheus/prometheus.yml reads this file)
        targets = [{"targets": [m.metrics], "labels": {"role": m.role, "shard": "" if m.shard is None else str(m.shard),
                                                         "replica": "" if m.replica is None else str(m.replica)}}
                   for m in self.members if m.metrics]
        _atomic_write(self.dir / "prometheus-targets.json", json.dumps(targets, indent=2))

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the router first (it drains), then the rest; SIGKILL whatever outlives ``timeout``."""
        order = sorted(zip(self.members, self._procs), key=lambda mp: {"router": 0, "generator": 1, "shard": 2}[mp[0].role])
        for group in ("router", "generator", "shard"):
            procs = [p for m, p in order if m.role == group and p.poll() is None]
            for p in procs:
                try:
                    p.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
            for p in procs:
                try:
                    p.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    logger.warning("pid %d did not stop in %.0fs; killing", p.pid, timeout)
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(timeout=10)
        self._procs.clear()

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def wait_for_serving(address: str, timeout: float = 30.0, service: str = "") -> None:
    """Block until ``address`` reports SERVING on grpc.health.v1 (Watch: no polling), or raise."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            for response in stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=timeout):
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError as exc:
            raise ClusterError(f"{address} not SERVING within {timeout:.0f}s: {exc.code().name}") from exc
    raise ClusterError(f"{address}: health watch ended before SERVING")
