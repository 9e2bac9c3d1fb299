"""Chaos run: mixed load from 3 routers on 2 shards x 3 replicas while replicas are killed (-9),
hung (SIGSTOP) and restarted and one replica is partitioned from the routers; then a checker reads every
replica directly and proves that no acknowledged write was lost (issue 16).

    python -m tests.chaos.run_chaos --seconds 600          # the full form (make chaos)
    python -m tests.chaos.run_chaos --seconds 40 --json    # the short form CI runs (tests/integration/test_chaos.py)
    python -m tests.chaos.run_chaos --soak --seconds 600   # steady load, no faults (make soak)

History: every operation is recorded with its start and end time and its outcome (acknowledged, failed).
The routers share one hybrid clock (one process), so an operation that started after another was
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
import asyncio
import contextlib
import functools
import json
import os
import random
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from ragcluster.client import RouterClient
from ragcluster.documents import Document
from ragcluster.hashing import shard_for
from ragcluster.tools.cluster import ServerProcess
from router.config import RouterConfig
from router.versions import HybridClock
from tests.helpers import RouterInThread, replica_digest, shard_process

SHARDS, REPLICAS, ROUTERS = 2, 3, 3


def skewed_time(skew: float) -> float:
    return time.time() + skew


@dataclass
class Op:
    kind: str  # upsert | delete | search
    ids: list[str]
    hashes: list[str]
    start: float
    end: float = 0.0
    ok: bool = False
    hits: list[str] = field(default_factory=list)


class Proxy:
    """A loopback TCP proxy to one replica that the driver can cut (a partition: nothing gets through while
    it is cut, connections stay open, like a silent network; bytes are held back, never dropped, since TCP
    never loses bytes inside a connection: dropping them corrupted the HTTP/2 streams after the cut)."""

    def __init__(self, target: str):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.flowing = threading.Event()  # cleared while cut
        self.flowing.set()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def retarget(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))

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


class Chaos:
    def __init__(self, run: Path, seconds: float, seed: int, embedder, faults: bool = True, fixed_ids: int = 0,
                 clock_skew_ms: float = 0.0):
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
        self.history: list[Op] = []
        self.lock = threading.Lock()
        self.faults: dict[str, int] = {"kill9": 0, "sigstop": 0, "partition": 0, "restart": 0}
        self.stop = threading.Event()
        self.embedder = embedder
        self.partitioned = (1, 2)  # the replica reached through a proxy the driver can cut
        self.unexpected_exits: list[dict] = []  # replicas found dead that the driver had not killed

    # --- cluster ------------------------------------------------------------------------------
    def start(self) -> None:
        for key in [(s, r) for s in range(SHARDS) for r in range(REPLICAS)]:
            self.procs[key] = shard_process(self.run, *key)
        for key, p in self.procs.items():
            p.wait_ready(180)
            self.ports[key] = int(p.grpc.rsplit(":", 1)[1])
        self.proxy = Proxy(self.procs[self.partitioned].grpc)

        def address(key: tuple[int, int]) -> str:
            return self.proxy.address if key == self.partitioned else self.procs[key].grpc

        specs = [f"{s}=" + ",".join(address((s, r)) for r in range(REPLICAS)) for s in range(SHARDS)]
        config = RouterConfig(port=0, metrics_port=-1, timeout_seconds=4.0, write_quorum="majority",
                              eject_seconds=1.0, anti_entropy_seconds=5.0, shard=specs,
                              # tombstones are pruned during the run: half the grace exceeds the write timeout
                              tombstone_grace_seconds=10.0)
        self.routers = [RouterInThread(config, self.embedder) for _ in range(ROUTERS)]
        if self.clock_skew_ms:  # a clock per router (they share this process), skewed: 0, ahead, behind
            for n, router in enumerate(self.routers):
                skew = (0.0, self.clock_skew_ms, -self.clock_skew_ms)[n % 3] / 1000
                clock = HybridClock(node=n + 1, wall=functools.partial(skewed_time, skew))
                for group in router.servicer.groups:
                    group.clock = clock

    def stop_all(self) -> None:
        for r in self.routers:
            r.stop()
        self.proxy.close()
        for p in self.procs.values():
            if p.proc.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
            p.terminate(30)

    def restart(self, key: tuple[int, int]) -> None:
        self.procs[key] = shard_process(self.run, *key, port=self.ports[key]).wait_ready(180)
        self.faults["restart"] += 1

    # --- load ---------------------------------------------------------------------------------
    def record(self, op: Op) -> None:
        with self.lock:
            self.history.append(op)

    def client_loop(self, router: RouterInThread, n: int) -> None:
        rng = random.Random(n)
        with RouterClient(router.address, timeout=6.0) as client:
            for i in range(1_000_000):  # bounded; stopped by the event
                if self.stop.is_set():
                    return
                roll = rng.random()
                if roll < 0.5:  # upsert: unique ids and repeated ids from a small pool
                    if self.fixed_ids:
                        ids = [f"f{rng.randrange(self.fixed_ids)}" for _ in range(2)] + [f"hot{rng.randrange(30)}"]
                    else:
                        ids = [f"u{n}-{i}-{j}" for j in range(2)] + [f"hot{rng.randrange(30)}"]
                    ids = list(dict.fromkeys(ids))
                    docs = [Document(d, f"{d} written by client {n} op {i} about rivers") for d in ids]
                    op = Op("upsert", ids, [d.content_hash() for d in docs], time.monotonic())
                    try:
                        client.ingest(docs, batch_size=len(docs), timeout=6.0)
                        op.ok = True
                    except grpc.RpcError:
                        pass
                elif roll < 0.65:
                    ids = [f"hot{rng.randrange(30)}"]
                    op = Op("delete", ids, [""], time.monotonic())
                    try:
                        client.delete(ids)
                        op.ok = True
                    except grpc.RpcError:
                        pass
                else:
                    op = Op("search", [], [], time.monotonic())
                    try:
                        result = client.search(f"rivers client {rng.randrange(3)} hot", k=10, timeout=6.0)
                        op.hits = [h.id for h in result.hits]
                        op.ok = True
                    except grpc.RpcError:
                        pass
                op.end = time.monotonic()
                self.record(op)

    # --- faults -------------------------------------------------------------------------------
    def fault_loop(self) -> None:
        rng = self.rng
        partitioned_once = False
        end = time.monotonic() + self.seconds
        while time.monotonic() < end and not self.stop.is_set():
            shard = rng.randrange(SHARDS)
            victim, hung = rng.sample(range(REPLICAS), 2)
            if not partitioned_once and time.monotonic() > end - self.seconds / 2:
                partitioned_once = True
                self.faults["partition"] += 1
                self.proxy.flowing.clear()
                self.stop.wait(min(5.0, self.seconds / 8))
                self.proxy.flowing.set()
                continue
            kind = rng.choice(["kill9", "sigstop"])
            key = (shard, victim if kind == "kill9" else hung)
            if kind == "kill9":
                self.procs[key].kill()
                self.faults["kill9"] += 1
                self.stop.wait(rng.uniform(1.0, 3.0))
                self.restart(key)
                if key == self.partitioned:
                    self.proxy.retarget(self.procs[key].grpc)
            else:
                os.kill(self.procs[key].pid, signal.SIGSTOP)
                self.faults["sigstop"] += 1
                self.stop.wait(rng.uniform(1.0, 3.0))
                os.kill(self.procs[key].pid, signal.SIGCONT)
            self.stop.wait(rng.uniform(0.5, 2.0))

    # --- the run ------------------------------------------------------------------------------
    def restart_exited(self) -> None:
        """Restart replicas that exited by themselves (the driver restarts those it kills): noted with their
        exit code and the end of their log."""
        for key, p in list(self.procs.items()):
            if p.proc.poll() is not None:
                tail = p.log.read_text(errors="replace")[-3000:] if p.log.exists() else ""
                self.unexpected_exits.append({"replica": f"s{key[0]}r{key[1]}", "code": p.proc.returncode,
                                              "log_tail": tail})
                self.restart(key)
                if key == self.partitioned:
                    self.proxy.retarget(self.procs[key].grpc)

    def converge(self, timeout: float = 180.0) -> dict[int, dict]:
        """Ask every router to compare replicas until all replicas of each shard are identical."""
        deadline = time.monotonic() + timeout
        for _ in range(10_000):  # bounded by the deadline
            self.restart_exited()
            for router in self.routers:
                for group in router.servicer.groups:
                    asyncio.run_coroutine_threadsafe(group.sync(), router.loop).result(120)
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
            time.sleep(0.5)
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

    def run_all(self) -> dict:
        self.start()
        started = time.monotonic()
        try:
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
            finals = self.finals = self.converge()
            result = self.check(finals)
        finally:
            self.stop.set()
            self.stop_all()
        ops = [op for op in self.history]
        result.update({
            "seconds": round(time.monotonic() - started, 1), "operations": len(ops),
            "acknowledged": sum(op.ok for op in ops), "failed": sum(not op.ok for op in ops),
            "by_kind": {k: sum(op.kind == k for op in ops) for k in ("upsert", "delete", "search")},
            "faults": dict(self.faults), "replicas_identical": True,
            "tombstones_pruned": sum(g.tombstones_pruned for r in self.routers for g in r.servicer.groups),
            "snapshot_restores": sum(g.snapshot_restores for r in self.routers for g in r.servicer.groups),
            "documents": sum(1 for d in finals.values() for e in d.values() if not e[2]),
            "unexpected_exits": self.unexpected_exits, "clock_skew_ms": self.clock_skew_ms,
        })
        if not self.inject:
            result["resources"] = {"before": before, "after": after, "rss_growth": {
                k: round(after[k]["rss_kb"] / before[k]["rss_kb"] - 1, 4) for k in before}}
        return result

    def resources(self) -> dict[str, dict[str, int]]:
        """RSS, open fds and threads of the driver process (routers and clients) and every shard process."""
        pids = {"routers": os.getpid(), **{f"s{s}r{r}": p.pid for (s, r), p in self.procs.items()}}
        out = {}
        for name, pid in pids.items():
            status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                          if ":" in line)
            out[name] = {"rss_kb": int(status["VmRSS"].split()[0]), "threads": int(status["Threads"]),
                         "fds": len(os.listdir(f"/proc/{pid}/fd"))}
        return out


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
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from router.embedding import Embedder

    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        result = Chaos(Path(tmp), args.seconds, args.seed, Embedder(threads=1), faults=not args.soak,
                       fixed_ids=args.fixed_ids, clock_skew_ms=args.clock_skew_ms).run_all()
    print(json.dumps(result, indent=None if args.json else 2))
    return 0 if result["lost"] == 0 and result["ghost_hits"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
