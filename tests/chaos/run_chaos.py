"""Chaos run: mixed load from 3 router processes on 2 shards x 3 replicas while replicas are killed (-9),
hung (SIGSTOP) and restarted, one replica's disk fills up and is freed, and one replica is partitioned from
the routers; then a checker reads every replica directly and proves that no acknowledged write was lost
(issue 16).

    python -m tests.chaos.run_chaos --seconds 600          # the full form (make chaos)
    python -m tests.chaos.run_chaos --seconds 40 --clock-skew-ms 200   # the short form CI runs (test_chaos.py)
    python -m tests.chaos.run_chaos --soak --seconds 600   # steady load, no faults (make soak)

Processes: every shard replica and every router is its own OS process (``python -m shard_server``,
``python -m router``; with --clock-skew-ms the router's main behind tests/chaos/skewed_router.py, whose write
clock reads a skewed wall time). The clients are threads of this driver process, two per router, so the
history has one clock (time.monotonic).

Faults, each only where it can be made here (a skipped one is printed with its reason and reported):
- kill -9 + restart on the same port, SIGSTOP + SIGCONT: always;
- partition: root with a working iptables: rules that DROP every packet to and from one replica's loopback
  port (made and removed by the run, also at exit); otherwise a loopback proxy in front of that replica that
  holds every byte while cut;
- disk full: root (mount): one replica's data dir is a small tmpfs the run mounts; the run fills it, checks
  that the replica refuses writes with RESOURCE_EXHAUSTED "storage full" (nothing acknowledged by it), frees
  it, checks that it takes writes again; the final comparison shows it caught up.

History: every operation is recorded with its start and end time and its outcome (acknowledged, failed).
Without skew the routers' clocks are the same host clock, so an operation that started after another was
acknowledged has the higher version. Checker, per document id:
- candidates: every write (acknowledged or failed: a failed write may still have been applied) not
  superseded, i.e. no acknowledged write of that id started after it ended;
- the final state on the replicas must be the effect of one candidate (present with its content hash, or
  absent for a delete), or absent when no acknowledged write exists;
- all replicas of a shard hold identical (id, version, content hash, deleted) sets;
- no search returned a document whose acknowledged delete ended before the search started, unless a write
  of that id started after the delete did.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from ragcluster.client import RouterClient
from ragcluster.documents import Document
from ragcluster.hashing import shard_for
from ragcluster.tools.cluster import ServerProcess, router_env, wait_all_ready
from ragcluster.v1 import shard_pb2, shard_pb2_grpc
from router.versions import MS_SHIFT, HybridClock
from tests.helpers import replica_digest, shard_process

SHARDS, REPLICAS, ROUTERS = 2, 3, 3


ROOT = Path(__file__).resolve().parents[2]  # the repository: router processes import tests.chaos.skewed_router


@dataclass
class Op:
    kind: str  # upsert | delete | search
    ids: list[str]
    hashes: list[str]
    start: float
    end: float = 0.0
    ok: bool = False
    hits: list[str] = field(default_factory=list)
    error: str = ""  # a failed operation's status code and details
    wall: float = field(default_factory=time.time)  # the host clock at the start (for the routers' clock offsets)


def server_codes(metrics_address: str) -> dict[tuple[str, str], float]:
    """(method, code) -> count of RPCs a server completed (its ragcluster_grpc_server_handled_total)."""
    return {(labels["method"], labels["code"]): value
            for labels, value in metric_samples(metrics_address, "ragcluster_grpc_server_handled_total")}


def metric_samples(metrics_address: str, name: str) -> list[tuple[dict[str, str], float]]:
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=30) as response:
        text = response.read().decode()
    return [(s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


class Proxy:
    """A loopback TCP proxy to one replica that the driver can cut (a partition: nothing gets through while
    it is cut, connections stay open, like a silent network; bytes are held back, never dropped, since TCP
    never loses bytes inside a connection: dropping them corrupted the HTTP/2 streams after the cut). The
    partition of a run that cannot make iptables rules (not root)."""

    kind = "proxy"

    def __init__(self, target: str):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.flowing = threading.Event()  # cleared while cut
        self.flowing.set()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def front(self, replica_address: str) -> str:
        """The address the routers use for the partitioned replica."""
        return self.address

    def retarget(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))

    def cut(self) -> None:
        self.flowing.clear()

    def heal(self) -> None:
        self.flowing.set()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self.flowing.wait()  # cut: hold the bytes (the sender's TCP window fills up) until it heals
                if self.stopped.is_set():
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.stopped.set()
        self.flowing.set()
        self.server.close()


class PortBlackhole:
    """A partition made in the kernel (root): iptables rules that DROP every TCP packet to and from one
    replica's port on the loopback interface, so the routers' connections to it go silent (no reset, no
    refusal), as across a cut network; the routers reach the replica directly, not through a proxy. The rules
    carry a comment naming this run and port; heal() removes exactly those and also runs at exit, so no rule
    outlives the run. Only 127.0.0.1 and the replica's own port are matched."""

    kind = "iptables"

    def __init__(self, port: int):
        self.port = port
        self.tag = f"ragcluster-chaos-{os.getpid()}-{port}"
        self.made = False
        atexit.register(self.heal)

    @staticmethod
    def unavailable() -> str:
        """Why the rules cannot be made here ('' when they can)."""
        if os.geteuid() != 0:
            return "not root"
        try:
            done = subprocess.run(["iptables", "-w", "10", "-S", "INPUT"], capture_output=True, text=True,
                                  timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"iptables cannot run ({exc})"
        return "" if done.returncode == 0 else f"iptables -S INPUT failed: {' '.join(done.stderr.split())[:200]}"

    def front(self, replica_address: str) -> str:
        return replica_address

    def retarget(self, target: str) -> None:
        assert int(target.rsplit(":", 1)[1]) == self.port, "a restarted replica keeps its port"

    def _rules(self) -> list[list[str]]:
        port = str(self.port)
        return [["-i", "lo", "-d", "127.0.0.1", "-p", "tcp", "--dport", port],
                ["-i", "lo", "-s", "127.0.0.1", "-p", "tcp", "--sport", port]]

    def _iptables(self, action: str, rule: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(["iptables", "-w", "10", action, "INPUT", *rule, "-m", "comment", "--comment",
                               self.tag, "-j", "DROP"], capture_output=True, text=True, timeout=60)

    def cut(self) -> None:
        self.made = True  # first: heal() removes whatever part of the rules exists
        for rule in self._rules():
            done = self._iptables("-I", rule)
            if done.returncode != 0:
                raise RuntimeError(f"iptables -I INPUT {' '.join(rule)} failed: {done.stderr.strip()[:300]}")
        try:  # the rules work: a new connection to the port goes unanswered (no accept, no reset)
            socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
        except TimeoutError:
            return
        except OSError as exc:
            raise RuntimeError(f"port {self.port} answered {exc!r} under the DROP rules") from exc
        raise RuntimeError(f"port {self.port} still accepts connections under the DROP rules")

    def heal(self) -> None:
        if not self.made:
            return
        for rule in self._rules():
            for _ in range(10):  # bounded: a rule inserted twice is removed twice
                if self._iptables("-C", rule).returncode != 0:
                    break
                self._iptables("-D", rule)
        self.made = False

    def close(self) -> None:
        self.heal()


class SmallDisk:
    """A small filesystem (a tmpfs the run mounts: root) as one replica's data dir; the run fills it with a
    file and frees it again. Unmounted at the end of the run and at exit."""

    FILLER = ".chaos-filler"

    def __init__(self, path: Path, size_mb: int):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                                  capture_output=True, text=True, timeout=60)
            error = " ".join(done.stderr.split())[:200] if done.returncode else ""
        except (OSError, subprocess.TimeoutExpired) as exc:
            error = str(exc)
        self.mounted = not error
        self.reason = f"cannot mount a tmpfs here ({error or 'mount failed'}; needs root)" if error else ""
        if self.mounted:
            atexit.register(self.unmount)

    def fill(self) -> int:
        """Write a file until the filesystem is full (ENOSPC); returns the bytes written."""
        written = 0
        with open(self.path / self.FILLER, "ab", buffering=0) as f:
            for size in (1 << 20, 1 << 16, 1 << 12):  # big blocks, then smaller ones for the last partial MiB
                block = b"\0" * size
                for _ in range(1 << 16):  # bounded: 64 GiB of the biggest blocks
                    try:
                        n = f.write(block)
                    except OSError:  # ENOSPC: full
                        break
                    written += n or 0
                    if n != size:
                        break
        return written

    def free(self) -> None:
        (self.path / self.FILLER).unlink(missing_ok=True)

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, timeout=60)
            self.mounted = False


class Chaos:
    def __init__(self, run: Path, seconds: float, seed: int, faults: bool = True, fixed_ids: int = 0,
                 clock_skew_ms: float = 0.0, partition: str = "auto", disk_full: bool = True,
                 disk_mb: int = 128):
        self.run, self.seconds, self.rng = run, seconds, random.Random(seed)
        # > 0: each router writes with its own hybrid clock, the second one ahead by this much and the third
        # behind by it; the checker then only orders two writes when one started more than the largest
        # difference between two clocks after the other ended (else either may carry the higher version)
        self.clock_skew_ms = clock_skew_ms
        self.order_margin = 2 * clock_skew_ms / 1000 + (0.05 if clock_skew_ms else 0.0)
        self.fixed_ids = fixed_ids  # > 0: upserts only replace ids from a pool of this size (a steady corpus)
        self.inject = faults  # False: a soak at steady load (errors, memory, fds and threads are measured)
        self.procs: dict[tuple[int, int], ServerProcess] = {}
        self.ports: dict[tuple[int, int], int] = {}
        self.routers: list[ServerProcess] = []
        self.history: list[Op] = []
        self.lock = threading.Lock()
        self.faults: dict[str, int] = {"kill9": 0, "sigstop": 0, "partition": 0, "disk_full": 0, "restart": 0}
        self.stop = threading.Event()
        self.partitioned = (1, 2)  # the replica the driver cuts off from the routers
        self.partition_mode = partition  # auto (iptables where it can, else the proxy) | iptables | proxy
        self.skipped: dict[str, str] = {}  # fault -> why it was not injected here
        self.disk_key = (0, 1)  # the replica whose data dir is a small filesystem
        self.disk: SmallDisk | None = None
        self.disk_wanted, self.disk_mb = disk_full and faults, disk_mb
        self.disk_report: dict = {}
        self.partition: Proxy | PortBlackhole | None = None
        # seconds: shards_ready and routers_ready since the start, then load (with faults), converge, stop
        self.phases: dict[str, float] = {}
        self.began = time.monotonic()
        self.unexpected_exits: list[dict] = []  # processes found dead that the driver had not killed
        self.probe_clock = HybridClock(node=255)  # versions of the disk-full probe (a reserved id, no client's)
        self.probe_id = next(f"chaos-disk-probe-{n}" for n in range(10_000)
                             if shard_for(f"chaos-disk-probe-{n}", SHARDS) == self.disk_key[0])

    # --- cluster ------------------------------------------------------------------------------
    def start(self) -> None:
        if self.inject and not self.disk_wanted:
            self.skipped["disk_full"] = "--no-disk-full"
        if self.disk_wanted:
            self.disk = SmallDisk(self.run / "s{}r{}".format(*self.disk_key), self.disk_mb)
            if not self.disk.mounted:
                self.skipped["disk_full"] = self.disk.reason
                print(f"chaos: disk-full fault skipped: {self.disk.reason}", file=sys.stderr)
        for key in [(s, r) for s in range(SHARDS) for r in range(REPLICAS)]:
            self.procs[key] = shard_process(self.run, *key)
        wait_all_ready(list(self.procs.values()), 180)
        self.phases["shards_ready"] = time.monotonic() - self.began
        for key, p in self.procs.items():
            self.ports[key] = int(p.grpc.rsplit(":", 1)[1])
        why = PortBlackhole.unavailable() if self.partition_mode != "proxy" else "--partition proxy"
        if self.partition_mode == "iptables" and why:
            raise SystemExit(f"chaos: --partition iptables: {why}")
        if why:
            self.skipped["partition_iptables"] = f"{why}: the loopback proxy partitions instead"
            if self.inject and self.partition_mode == "auto":
                print(f"chaos: iptables partition not possible ({why}); using the loopback proxy", file=sys.stderr)
            self.partition = Proxy(self.procs[self.partitioned].grpc)
        else:
            self.partition = PortBlackhole(self.ports[self.partitioned])

        partition = self.partition

        def address(key: tuple[int, int]) -> str:
            grpc_address = self.procs[key].grpc
            return partition.front(grpc_address) if key == self.partitioned else grpc_address

        shard_flags = [x for s in range(SHARDS)
                       for x in ("--shard", f"{s}=" + ",".join(address((s, r)) for r in range(REPLICAS)))]
        # the torch embedding backend starts sooner than onnx (no model digest, no ONNX session): the run is
        # about writes, not embedding speed
        flags = ["--port", "0", "--insecure", "--timeout-seconds", "4", "--write-quorum", "majority",
                 "--eject-seconds", "1", "--anti-entropy-seconds", "5", "--embedding-threads", "1",
                 "--embedding-backend", "torch",
                 # tombstones are pruned during the run: half the grace exceeds the write timeout
                 "--tombstone-grace-seconds", "10", *shard_flags]
        env = router_env()
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        for n in range(ROUTERS):
            if self.clock_skew_ms:  # a clock per router process, skewed: 0, ahead, behind
                skew = (0.0, self.clock_skew_ms, -self.clock_skew_ms)[n % 3]
                module, extra = "tests.chaos.skewed_router", ["--clock-skew-ms", str(skew), "--clock-node", str(n + 1)]
            else:
                module, extra = "router", []
            self.routers.append(ServerProcess(module, extra + flags, self.run, f"router{n}", env))
        wait_all_ready(self.routers, 300)
        self.phases["routers_ready"] = time.monotonic() - self.began

    def stop_all(self) -> None:
        """SIGTERM the routers (all at once: each drains), then the shards; SIGKILL what outlives 30 s."""
        stopping = time.monotonic()
        for group in (self.routers, list(self.procs.values())):
            for p in group:
                if p.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p.pid, signal.SIGCONT)  # a hung (SIGSTOPped) one must see the SIGTERM
                        p.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
            for p in group:
                try:
                    p.proc.wait(max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    p.kill()
        if self.partition is not None:
            self.partition.close()
        if self.disk is not None:
            self.disk.unmount()
        self.phases["stop"] = time.monotonic() - stopping

    def restart(self, key: tuple[int, int]) -> None:
        self.procs[key] = shard_process(self.run, *key, port=self.ports[key]).wait_ready(180)
        self.faults["restart"] += 1
        if key == self.partitioned and self.partition is not None:
            self.partition.retarget(self.procs[key].grpc)

    # --- load ---------------------------------------------------------------------------------
    def record(self, op: Op) -> None:
        with self.lock:
            self.history.append(op)

    def client_loop(self, router: ServerProcess, n: int) -> None:
        rng = random.Random(n)
        with RouterClient(router.grpc, timeout=6.0) as client:
            for i in range(1_000_000):  # bounded; stopped by the event
                if self.stop.is_set():
                    return
                roll = rng.random()
                try:
                    if roll < 0.5:  # upsert: unique ids and repeated ids from a small pool
                        if self.fixed_ids:
                            ids = [f"f{rng.randrange(self.fixed_ids)}" for _ in range(2)] + [f"hot{rng.randrange(30)}"]
                        else:
                            ids = [f"u{n}-{i}-{j}" for j in range(2)] + [f"hot{rng.randrange(30)}"]
                        ids = list(dict.fromkeys(ids))
                        docs = [Document(d, f"{d} written by client {n} op {i} about rivers") for d in ids]
                        op = Op("upsert", ids, [d.content_hash() for d in docs], time.monotonic())
                        client.ingest(docs, batch_size=len(docs), timeout=6.0)
                    elif roll < 0.65:
                        ids = [f"hot{rng.randrange(30)}"]
                        op = Op("delete", ids, [""], time.monotonic())
                        client.delete(ids)
                    else:
                        op = Op("search", [], [], time.monotonic())
                        result = client.search(f"rivers client {rng.randrange(3)} hot", k=10, timeout=6.0)
                        op.hits = [h.id for h in result.hits]
                    op.ok = True
                except grpc.RpcError as exc:
                    op.error = f"{exc.code().name}: {(exc.details() or '')[:300]}"
                op.end = time.monotonic()
                self.record(op)

    # --- faults -------------------------------------------------------------------------------
    def fault_loop(self) -> None:
        rng = self.rng
        partitioned_once = False
        disk_filled = self.disk is None or not self.disk.mounted
        end = time.monotonic() + self.seconds
        while time.monotonic() < end and not self.stop.is_set():
            shard = rng.randrange(SHARDS)
            victim, hung = rng.sample(range(REPLICAS), 2)
            if not disk_filled and time.monotonic() > end - self.seconds * 0.85:
                disk_filled = True
                self.disk_full_fault()
                continue
            if not partitioned_once and time.monotonic() > end - self.seconds / 2:
                partitioned_once = True
                assert self.partition is not None
                self.faults["partition"] += 1
                try:
                    self.partition.cut()
                    self.stop.wait(min(5.0, self.seconds / 8))
                finally:
                    self.partition.heal()
                continue
            kind = rng.choice(["kill9", "sigstop"])
            key = (shard, victim if kind == "kill9" else hung)
            if kind == "kill9":
                self.procs[key].kill()
                self.faults["kill9"] += 1
                self.stop.wait(rng.uniform(1.0, 3.0))
                self.restart(key)
            else:
                os.kill(self.procs[key].pid, signal.SIGSTOP)
                self.faults["sigstop"] += 1
                self.stop.wait(rng.uniform(1.0, 3.0))
                os.kill(self.procs[key].pid, signal.SIGCONT)
            self.stop.wait(rng.uniform(0.5, 2.0))

    def probe(self, key: tuple[int, int]) -> grpc.RpcError | None:
        """A versioned delete of a reserved id (no client writes it), sent straight to one replica: None
        when the replica took it, else its error."""
        request = shard_pb2.ShardDeleteRequest(ids=[self.probe_id], versions=[self.probe_clock.now()])
        with grpc.insecure_channel(self.procs[key].grpc) as channel:
            try:
                shard_pb2_grpc.ShardServiceStub(channel).Delete(request, timeout=10)
            except grpc.RpcError as exc:
                return exc
        return None

    def disk_full_fault(self) -> None:
        """Fill the small filesystem under load; the replica must refuse writes (the routers' and a probe)
        with RESOURCE_EXHAUSTED "storage full"; free it; the replica must take writes again. The other
        replicas acknowledge meanwhile (majority); the final comparison shows the replica caught up."""
        assert self.disk is not None
        key, report = self.disk_key, self.disk_report
        self.faults["disk_full"] += 1
        codes = server_codes(self.procs[key].metrics)
        started = time.monotonic()
        report["filler_mb"] = round(self.disk.fill() / 2**20, 1)
        refusal, report["probes_taken_while_full"] = None, 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not self.stop.is_set():  # bounded: the replica's writes must fail
            error = self.probe(key)
            if error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                refusal = error
                break
            if error is None:  # durable all the same: space the store had already allocated (its WAL)
                report["probes_taken_while_full"] += 1
            else:
                report["probe_error"] = f"{error.code().name}: {error.details()}"
            self.stop.wait(0.2)
        report["refused_after_seconds"] = round(time.monotonic() - started, 1)
        report["refusal"] = f"{refusal.code().name}: {refusal.details()}" if refusal else ""
        self.stop.wait(min(5.0, self.seconds / 10))  # full for a while under load: the routers' writes fail here
        after = server_codes(self.procs[key].metrics)
        refused = {m: after.get((m, "RESOURCE_EXHAUSTED"), 0) - codes.get((m, "RESOURCE_EXHAUSTED"), 0)
                   for m in ("Upsert", "Delete")}
        refused["Delete"] -= 1 if refusal else 0  # the probe's
        report["writes_refused_by_replica"] = int(sum(refused.values()))
        self.disk.free()
        freed = time.monotonic()
        report["full_seconds"] = round(freed - started, 1)
        report["recovered"] = False
        deadline = freed + 60
        while time.monotonic() < deadline:  # bounded: the replica takes writes again once space returns
            error = self.probe(key)
            if error is None:
                report["recovered"] = True
                break
            report["probe_error_after_freeing"] = f"{error.code().name}: {error.details()}"
            time.sleep(0.2)  # polled, bounded by the deadline
        report["recovered_after_seconds"] = round(time.monotonic() - freed, 1)

    # --- the run ------------------------------------------------------------------------------
    def restart_exited(self) -> None:
        """Restart replicas that exited by themselves (the driver restarts those it kills): noted with their
        exit code and the end of their log. A router that exited is noted (the run then fails)."""
        for name, p in [*((f"s{k[0]}r{k[1]}", p) for k, p in self.procs.items()),
                        *((r.name, r) for r in self.routers)]:
            if p.proc.poll() is not None and not any(e["process"] == name and e["pid"] == p.pid
                                                     for e in self.unexpected_exits):
                tail = p.log.read_text(errors="replace")[-3000:] if p.log.exists() else ""
                self.unexpected_exits.append({"process": name, "pid": p.pid, "code": p.proc.returncode,
                                              "log_tail": tail})
        for key, p in list(self.procs.items()):
            if p.proc.poll() is not None:
                self.restart(key)

    def converge(self, timeout: float = 180.0) -> dict[int, dict]:
        """Wait until all replicas of each shard are identical: the routers' anti-entropy (every 5 s, in each
        router process) compares and repairs them."""
        deadline = time.monotonic() + timeout
        for _ in range(100_000):  # bounded by the deadline
            self.restart_exited()
            try:
                digests = {s: [replica_digest(self.procs[(s, r)].grpc) for r in range(REPLICAS)]
                           for s in range(SHARDS)}
            except grpc.RpcError:  # a replica restoring from a snapshot answers UNAVAILABLE for a moment
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)  # bounded by the deadline: try the comparison again
                continue
            if all(all(d == ds[0] for d in ds) for ds in digests.values()):
                return {s: ds[0] for s, ds in digests.items()}
            if time.monotonic() > deadline:
                raise AssertionError("replicas did not converge")
            time.sleep(0.5)  # polled, bounded by the deadline
        raise AssertionError("replicas did not converge")

    def check(self, finals: dict[int, dict]) -> dict:
        state = {i: e for d in finals.values() for i, e in d.items()}
        writes: dict[str, list[tuple[Op, str]]] = {}
        for op in self.history:
            if op.kind in ("upsert", "delete"):
                for doc_id, h in zip(op.ids, op.hashes):
                    writes.setdefault(doc_id, []).append((op, h))
        lost, checked = [], 0
        for doc_id, ops in writes.items():
            acked = [(op, h) for op, h in ops if op.ok]
            checked += len(acked)
            candidates = [(op, h) for op, h in ops if not any(q.start > op.end + self.order_margin for q, _ in acked)]
            entry = state.get(doc_id)
            present = entry is not None and not entry[2]
            allowed = {h for op, h in candidates if op.kind == "upsert"}
            absent_ok = not acked or any(op.kind == "delete" for op, _ in candidates)
            if (entry is not None and present and entry[1] not in allowed) or (not present and not absent_ok):
                lost.append(doc_id)
        ghosts = 0
        for search in (op for op in self.history if op.kind == "search" and op.ok):
            for doc_id in search.hits:
                ops = writes.get(doc_id, [])
                for d in (op for op, _ in ops if op.kind == "delete" and op.ok and op.end < search.start):
                    # a write that ended after the delete started may carry the higher version
                    if not any(op.kind == "upsert" and op.end > d.start - self.order_margin for op, _ in ops):
                        ghosts += 1
                        break
        for doc_id in state:
            assert shard_for(doc_id, SHARDS) in finals
        return {"acknowledged_writes_checked": checked, "lost": len(lost), "lost_ids": lost[:10],
                "ghost_hits": ghosts}

    def clock_offsets(self, finals: dict[int, dict]) -> dict[str, float]:
        """Per router: the median of (version's milliseconds - host clock at the write's start) over its
        acknowledged upserts of unique ids (written once; client n writes through router n % 3): the router's
        skew plus the time until it took the version (embedding first). Their differences show each router
        process writing with its own clock (with --clock-skew-ms S: router1 S ahead of router0, router2 S
        behind)."""
        state = {i: e for d in finals.values() for i, e in d.items()}
        offsets: dict[str, list[float]] = {}
        for op in self.history:
            if op.kind == "upsert" and op.ok:
                for doc_id in op.ids:
                    if doc_id.startswith("u") and doc_id in state:
                        router = int(doc_id[1:].split("-", 1)[0]) % ROUTERS
                        ms = state[doc_id][0] >> MS_SHIFT
                        offsets.setdefault(f"router{router}", []).append(ms - op.wall * 1000)
        return {k: round(sorted(v)[len(v) // 2], 1) for k, v in sorted(offsets.items())}

    def router_counter(self, name: str) -> int:
        """A counter summed over the router processes (and their shards)."""
        return int(sum(value for r in self.routers for _, value in metric_samples(r.metrics, name)))

    def run_all(self) -> dict:
        started = self.began = time.monotonic()
        try:
            self.start()
            clients = [threading.Thread(target=self.client_loop, args=(self.routers[n % ROUTERS], n))
                       for n in range(ROUTERS * 2)]
            for t in clients:
                t.start()
            if self.inject:
                self.fault_loop()
            else:
                self.stop.wait(self.seconds * 0.2)  # warm-up, then the baseline sample
                before = self.resources()
                self.stop.wait(self.seconds * 0.8)
                after = self.resources()
            self.stop.set()
            for t in clients:
                t.join(120)
            self.restart_exited()  # everything back up (the driver restarts what it kills itself)
            converging = time.monotonic()
            self.phases["load"] = converging - started - self.phases["routers_ready"]
            finals = self.finals = self.converge()
            self.phases["converge"] = time.monotonic() - converging
            result = self.check(finals)
            result["clock_offsets_ms"] = self.clock_offsets(finals)
            counters = {"tombstones_pruned": self.router_counter("ragcluster_router_tombstones_pruned_total"),
                        "snapshot_restores": self.router_counter("ragcluster_router_catchups_total")}
        finally:
            self.stop.set()
            if self.routers or self.procs:
                self.stop_all()
        ops = [op for op in self.history]
        failed = [op for op in ops if not op.ok]
        result.update({
            "seconds": round(time.monotonic() - started, 1),
            "phase_seconds": {k: round(v, 1) for k, v in self.phases.items()}, "operations": len(ops),
            "acknowledged": len(ops) - len(failed), "failed": len(failed),
            "by_kind": {k: sum(op.kind == k for op in ops) for k in ("upsert", "delete", "search")},
            "failed_by_code": {c: sum(op.error.split(":", 1)[0] == c for op in failed)
                               for c in sorted({op.error.split(":", 1)[0] for op in failed})},
            "failure_examples": {op.error.split(":", 1)[0]: op.error[:200] for op in reversed(failed)},
            "client_storage_full_errors": sum("storage full" in op.error for op in failed),
            "faults": dict(self.faults), "partition_kind": self.partition.kind if self.partition else "",
            "skipped": dict(self.skipped),
            "disk_full": dict(self.disk_report), "replicas_identical": True, **counters,
            "documents": sum(1 for d in finals.values() for e in d.values() if not e[2]),
            "unexpected_exits": self.unexpected_exits, "clock_skew_ms": self.clock_skew_ms,
            "router_processes": [r.pid for r in self.routers],
        })
        if not self.inject:
            result["resources"] = {"before": before, "after": after, "rss_growth": {
                k: round(after[k]["rss_kb"] / before[k]["rss_kb"] - 1, 4) for k in before}}
        return result

    def resources(self, samples: int = 5) -> dict[str, dict[str, int]]:
        """RSS, open fds and threads of the driver process (the clients), every router and every shard: the
        median of ``samples`` readings 1 s apart (one reading would count the buffers of whatever request
        happens to be in flight as growth)."""
        pids = {"driver": os.getpid(), **{r.name: r.pid for r in self.routers},
                **{f"s{s}r{r}": p.pid for (s, r), p in self.procs.items()}}
        readings: dict[str, list[dict[str, int]]] = {name: [] for name in pids}
        for n in range(samples):
            if n:
                time.sleep(1.0)
            for name, pid in pids.items():
                status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                              if ":" in line)
                readings[name].append({"rss_kb": int(status["VmRSS"].split()[0]), "threads": int(status["Threads"]),
                                       "fds": len(os.listdir(f"/proc/{pid}/fd"))})
        return {name: {key: int(statistics.median(r[key] for r in rows)) for key in rows[0]}
                for name, rows in readings.items()}


def summary(result: dict) -> str:
    """The run as a table: the figures a closing note or the README reports."""
    faults = result["faults"]
    kinds = [f"{faults['kill9']} kill -9 + restart", f"{faults['sigstop']} SIGSTOP",
             f"{faults['partition']} partition ({result['partition_kind']})"]
    if faults["disk_full"]:
        kinds.append(f"{faults['disk_full']} disk full")
    by = result["by_kind"]
    rows = [("seconds", f"{result['seconds']} (" + ", ".join(f"{k} {v}" for k, v in result["phase_seconds"].items())
             + ")"),
            ("operations", f"{result['operations']:,} ({by['upsert']:,} upserts, {by['delete']:,} deletes, "
                           f"{by['search']:,} searches; {result['failed']} failed"
                           + "".join(f", {c} {n}" for c, n in result["failed_by_code"].items()) + ")"),
            ("faults injected", ", ".join(kinds)),
            ("skipped", "; ".join(f"{k}: {v}" for k, v in result["skipped"].items()) or "none"),
            ("acknowledged writes checked", f"{result['acknowledged_writes_checked']:,}"),
            ("lost", result["lost"]), ("ghost hits", result["ghost_hits"]),
            ("replicas identical", "yes" if result["replicas_identical"] else "no"),
            ("tombstones pruned", result["tombstones_pruned"]), ("snapshot restores", result["snapshot_restores"]),
            ("documents at the end", f"{result['documents']:,}"),
            ("unexpected exits", len(result["unexpected_exits"])),
            ("router clock offsets (ms)", ", ".join(f"{k} {v:+.0f}" for k, v in result["clock_offsets_ms"].items()))]
    disk = result["disk_full"]
    if disk:
        rows.append(("disk full", f"refused after {disk['refused_after_seconds']} s ({disk['refusal'][:90]}); "
                                  f"{disk['writes_refused_by_replica']} router writes refused by the replica; "
                                  f"full {disk['full_seconds']} s; takes writes again after "
                                  f"{disk['recovered_after_seconds']} s: {'yes' if disk['recovered'] else 'NO'}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--soak", action="store_true", help="no faults: steady load; report errors and the growth "
                                                              "of memory, open fds and threads")
    parser.add_argument("--fixed-ids", type=int, default=0, help="upserts replace ids from a pool of this size "
                                                                     "(a corpus of steady size, for the soak)")
    parser.add_argument("--clock-skew-ms", type=float, default=0.0, help="each router its own clock: one ahead and "
                                                                         "one behind by this much")
    parser.add_argument("--partition", choices=["auto", "iptables", "proxy"], default="auto",
                        help="how a replica is cut off: iptables DROP rules on its loopback port (root), the "
                             "loopback proxy, or auto (iptables where possible)")
    parser.add_argument("--no-disk-full", action="store_true", help="do not fill a replica's disk")
    parser.add_argument("--disk-mb", type=int, default=128, help="size of the small filesystem (disk-full fault)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    # SIGTERM ends the run through its finally blocks and atexit (iptables rules removed, tmpfs unmounted)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        result = Chaos(Path(tmp), args.seconds, args.seed, faults=not args.soak, fixed_ids=args.fixed_ids,
                       clock_skew_ms=args.clock_skew_ms, partition=args.partition,
                       disk_full=not args.no_disk_full, disk_mb=args.disk_mb).run_all()
    print(json.dumps(result, indent=None if args.json else 2))
    if not args.json:
        print(summary(result), file=sys.stderr)
    return 0 if result["lost"] == 0 and result["ghost_hits"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
