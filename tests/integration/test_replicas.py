"""Router with replicated shards (real shard processes, in-process router): a dead replica costs no
failed request, a dead shard is reported in coverage (or refused with min_coverage), hedging hides a slow
replica, a replica that comes back empty or behind catches up before it serves reads, deadlines hold."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from ragcluster.client import RouterClient, coverage_from_error
from ragcluster.corpus import make_documents, make_queries
from ragcluster.tools.cluster import ServerProcess
from ragcluster.types import Coverage, SearchResult
from ragcluster.v1 import shard_pb2, shard_pb2_grpc
from router.config import RouterConfig
from tests.helpers import RouterInThread, replica_digest, shard_process


def port_of(process: ServerProcess) -> int:
    return int(process.grpc.rsplit(":", 1)[1])


def info(address: str) -> shard_pb2.ShardInfoResponse:
    with grpc.insecure_channel(address) as channel:
        return shard_pb2_grpc.ShardServiceStub(channel).Info(shard_pb2.ShardInfoRequest(), timeout=10)


def caught_up(a: str, b: str) -> bool:
    """The same documents at the same versions, and the same index size, on both replicas."""
    try:
        return replica_digest(a) == replica_digest(b) and info(a).documents == info(b).documents
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE
        return False


def search_ids(address: str, vectors: np.ndarray) -> list[list[str]]:
    from ragcluster.convert import matrix_to_pb

    with grpc.insecure_channel(address) as channel:
        res = shard_pb2_grpc.ShardServiceStub(channel).Search(
            shard_pb2.ShardSearchRequest(queries=matrix_to_pb(vectors), k=5, include_documents=True), timeout=10)
    return [[res.documents[i].id for i in r.ids] for r in res.results]


@pytest.fixture(scope="module")
def replicated(tmp_path_factory, embedder):
    run = tmp_path_factory.mktemp("replicas")
    procs = {(s, r): shard_process(run, s, r) for s in range(2) for r in range(2)}
    for p in procs.values():
        p.wait_ready(120)
    router = RouterInThread(RouterConfig(
        port=0, metrics_port=-1, timeout_seconds=5.0, eject_seconds=2.0,
        shard=[f"{s}={procs[(s, 0)].grpc},{procs[(s, 1)].grpc}" for s in range(2)]), embedder)
    docs = make_documents(300, seed=31, prefix="r")
    with RouterClient(router.address) as client:
        assert client.ingest(docs).acknowledged == 300
    yield run, procs, router, docs
    router.stop()
    for p in procs.values():
        p.terminate(30)


def load(address: str, stop: threading.Event, results: list, errors: list, min_coverage=None):
    queries = make_queries(50, seed=5)
    with RouterClient(address) as client:
        for i in range(5000):  # bounded; stopped by the event long before
            if stop.is_set():
                return
            try:
                r = client.search(queries[i % 50], k=5, timeout=5, min_coverage=min_coverage)
                results.append(r.coverage)
            except grpc.RpcError as exc:
                errors.append(exc)


def test_killing_a_replica_under_load_fails_no_request(replicated):
    _run, procs, router, _ = replicated
    stop = threading.Event()
    results: list[Coverage] = []
    errors: list[grpc.RpcError] = []
    threads = [threading.Thread(target=load, args=(router.address, stop, results, errors)) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(results) < 40 and time.monotonic() < deadline:  # traffic is flowing
        time.sleep(0.01)
    before = len(results)
    procs[(0, 1)].kill()  # kill -9 a replica of shard 0 mid-load
    while len(results) < before + 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]
    assert len(results) >= before + 200
    assert all(c.shards_answered == 2 and not c.degraded for c in results)


def test_replica_back_empty_or_behind_catches_up_before_serving_reads(replicated, embedder):
    run, procs, router, _docs = replicated
    # the replica killed above comes back on its port with an EMPTY data dir
    port = port_of(procs[(0, 1)])
    procs[(0, 1)] = shard_process(run, 0, 1, port=port, data_tag="-empty").wait_ready(120)
    # meanwhile writes go on; the restored replica must end up with them too
    more = make_documents(40, seed=32, prefix="late")
    with RouterClient(router.address) as client:
        assert client.ingest(more).acknowledged == 40
    a, b = procs[(0, 0)].grpc, procs[(0, 1)].grpc
    deadline = time.monotonic() + 60
    while not caught_up(a, b):
        assert time.monotonic() < deadline, "replica did not catch up"
        time.sleep(0.1)
    x = embedder.encode(make_queries(20, seed=6))
    assert search_ids(a, x) == search_ids(b, x)  # identical answers

    # now one that is merely behind: stop it, write, start it again on its own (old) data
    port = port_of(procs[(1, 1)])
    procs[(1, 1)].terminate(30)
    with RouterClient(router.address) as client:
        assert client.ingest(make_documents(40, seed=33, prefix="later")).acknowledged == 40
    assert info(procs[(1, 0)].grpc).sequence > 0
    procs[(1, 1)] = shard_process(run, 1, 1, port=port).wait_ready(120)
    a, b = procs[(1, 0)].grpc, procs[(1, 1)].grpc
    deadline = time.monotonic() + 60
    while not caught_up(a, b):
        assert time.monotonic() < deadline, "replica did not catch up"
        time.sleep(0.1)
    assert search_ids(a, x) == search_ids(b, x)


def test_a_dead_shard_is_flagged_in_coverage_or_refused(replicated):
    run, procs, router, _ = replicated
    for r in range(2):
        procs[(1, r)].kill()
    with RouterClient(router.address) as client:
        start = time.monotonic()
        result = client.search("the night train", k=5, timeout=3)
        assert time.monotonic() - start < 3
        cov = result.coverage
        assert (cov.shards_total, cov.shards_answered, cov.degraded) == (2, 1, True)
        assert cov.failures[0].shard == 1 and cov.failures[0].reason.endswith("UNAVAILABLE")
        assert result.hits and all(h.shard == 0 for h in result.hits)
        with pytest.raises(grpc.RpcError) as err:
            client.search("the night train", k=5, timeout=3, min_coverage=1.0)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "min_coverage" in (err.value.details() or "")
        details = coverage_from_error(err.value)
        assert details is not None
        assert details.shards_answered == 1 and details.shards_total == 2
        assert client.search("the night train", k=5, timeout=3, min_coverage=0.5).hits
    for r in range(2):  # back for later tests
        procs[(1, r)] = shard_process(run, 1, r, port=port_of(procs[(1, r)])).wait_ready(120)


def _retrieve_seconds(address: str, n: int) -> list[float]:
    """The router's retrieve time (fan-out + merge, as it reports it) of ``n`` searches: the query's embedding
    competes for the 2 cores with whatever else runs, and is not what hedging is about."""
    with RouterClient(address) as client:
        return [client.search(q, k=5, timeout=10).timings.retrieve_seconds for q in make_queries(n, seed=8)]


def test_hedging_hides_a_slow_replica(tmp_path, embedder):
    fast = shard_process(tmp_path, 0, 0).wait_ready(120)
    # a delay far above a search's time on a busy 2-core machine (a few hundred ms at worst), so the
    # comparison below holds whatever the load: a hedged search never waits for the slow replica
    slow = shard_process(tmp_path, 0, 1, "--search-delay-ms", "2000").wait_ready(120)
    routers = {}
    try:
        for name, hedge in (("hedged", 100.0), ("unhedged", -1.0)):  # hedge after 100 ms (auto: up to 1 s)
            routers[name] = RouterInThread(RouterConfig(port=0, metrics_port=-1, hedge_delay_ms=hedge,
                                                        shard=[f"0={fast.grpc},{slow.grpc}"]), embedder)
        with RouterClient(routers["hedged"].address) as client:
            assert client.ingest(make_documents(100, seed=41, prefix="h")).acknowledged == 100
        slowest = {name: max(_retrieve_seconds(r.address, 24)) for name, r in routers.items()}
        print(f"\nslowest retrieval with a 2 s replica: hedged {slowest['hedged'] * 1000:.0f} ms, "
              f"unhedged {slowest['unhedged'] * 1000:.0f} ms")
        assert slowest["unhedged"] > 2.0  # some calls land on the slow replica and wait for it
        assert slowest["hedged"] < 1.0  # none does with hedging: the hedge answers from the fast one
    finally:
        for r in routers.values():
            r.stop()
        fast.terminate(30)
        slow.terminate(30)


def test_deadline_is_honoured_end_to_end(tmp_path, embedder):
    ok = shard_process(tmp_path, 0, 0).wait_ready(120)
    stuck = shard_process(tmp_path, 1, 0, "--search-delay-ms", "3000").wait_ready(120)
    router = RouterInThread(RouterConfig(port=0, metrics_port=-1, shard=[f"0={ok.grpc}", f"1={stuck.grpc}"]),
                            embedder)
    try:
        with RouterClient(router.address) as client:
            for timeout in (0.3, 0.8):
                start = time.monotonic()
                result = client.search("glaciers", k=3, timeout=timeout)
                elapsed = time.monotonic() - start
                # answered by the deadline (the stuck shard would take 3 s), with a margin for a busy machine
                assert elapsed < timeout + 0.25, elapsed
                assert result.coverage.shards_answered == 1
                assert result.coverage.failures[0].reason.endswith("TIMEOUT")
    finally:
        router.stop()
        ok.terminate(30)
        stuck.terminate(30)


def test_admission_control_and_graceful_drain(tmp_path, embedder):
    slow = shard_process(tmp_path, 0, 0, "--search-delay-ms", "500").wait_ready(120)
    router = RouterInThread(RouterConfig(port=0, metrics_port=-1, max_in_flight=2, shard=[f"0={slow.grpc}"]),
                            embedder)
    try:
        outcomes: list = []

        def one():
            with RouterClient(router.address) as client:
                start = time.monotonic()
                try:
                    client.search("fresh bread", k=3, timeout=10)
                    outcomes.append(("OK", time.monotonic() - start))
                except grpc.RpcError as exc:
                    outcomes.append((exc.code().name, time.monotonic() - start))

        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        codes = [c for c, _ in outcomes]
        assert codes.count("OK") >= 2 and "RESOURCE_EXHAUSTED" in codes
        # refused at once, not queued behind the 0.5 s searches
        assert all(t < 0.4 for c, t in outcomes if c == "RESOURCE_EXHAUSTED")

        # graceful stop: a request in flight when the router is told to stop still completes
        result: list[SearchResult] = []
        thread = threading.Thread(target=lambda: result.append(
            RouterClient(router.address).search("fresh bread", k=3, timeout=10)))
        thread.start()
        deadline = time.monotonic() + 10
        while router.servicer.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        router.stop()  # grace 1 s > the 0.5 s the request still needs
        thread.join(10)
        assert result and result[0].coverage.shards_answered == 1
    finally:
        slow.terminate(30)
